// check.h — the helpers the test files share: allocation that cannot fail, the comparison of a
// result with its reference (count, print the worst pairs, return the count), random fills,
// central finite differences, and temporary folders and files.
//
// Test code only, linked into every tests/test_* binary: a helper that meets a fault exits (out
// of memory) or fails the running cmocka test (files) instead of returning an error code. Nothing
// here asserts a comparison's result: each test asserts the counts it is given, so a failure
// points at the test's own line. No global state. The file helpers and CHECK_ASSERT_HAS fail the
// running test, so they belong on the test's own thread; the includer brings <cmocka.h> and
// <string.h>.
#ifndef TESTS_CHECK_H
#define TESTS_CHECK_H

#include <stddef.h>
#include <stdint.h>

#include "generator/data/fmnist.h"
#include "kernels/rng.h"

// Zeroed memory for bytes (at least one byte, so n = 0 is a valid pointer too); the caller frees
// it. Exits with a message naming file and line when memory runs out.
void *check_alloc(size_t bytes, const char *file, int line);
#define CHECK_ALLOC(type, n) ((type *)check_alloc(sizeof(type) * (size_t)(n), __FILE__, __LINE__))

// A new double copy of x (n); the caller frees it.
double *check_to_double(const float *x, long n);

// How many of the worst pairs a failed comparison prints.
#define CHECK_WORST 5

// Counts the i < n with |got[i] - want[i]| > atol + rtol |want[i]| (a NaN on either side counts),
// and when there are any prints the count and the CHECK_WORST worst pairs (largest error over
// tolerance) under the label what, as TAP comments on stdout. want is the reference. Returns the
// count, capped at INT_MAX.
int check_compare_f(const char *what, const float *got, const double *want, long n, double atol,
                    double rtol);
int check_compare_d(const char *what, const double *got, const double *want, long n, double atol,
                    double rtol);

// Fills f and d (n each; either may be NULL) with the same n draws from r, uniform in [lo, hi):
// lo + (hi - lo) u with one rounding in double, then rounded to float, so a double reference
// sees exactly the float kernel's inputs.
void check_fill_uniform(Rng *r, float *f, double *d, long n, double lo, double hi);

// x rounded to bfloat16 (the top 16 bits of its float), to nearest, ties to even: what the BF16
// convolutions (oneDNN's reorders, to_bf16_kernel) do to their inputs. No NaNs.
double check_bf16_round(double x);
// A new array of x (n) each rounded so.
double *check_bf16_copy(const double *x, long n);

// A scalar function of x (n doubles); a loss may also read x through ctx and ignore its arguments.
typedef double (*CheckLossFn)(const double *x, long n, void *ctx);

// Central differences: numeric[i] = (L(x + h e_i) - L(x - h e_i)) / 2h for i < n, each x[i]
// restored exactly afterwards. Truncation error O(h^2 L'''), rounding O(eps L / h): at h = 1e-5
// about 1e-10 and 1e-11 for losses of O(1).
void check_central_diff(double *numeric, double *x, long n, double h, CheckLossFn loss, void *ctx);

// check_central_diff into scratch, then check_compare_d(what, analytic, numeric, ...): the
// analytic gradient is the one under test, the numeric one the reference. Returns the count.
int check_compare_fd(const char *what, const double *analytic, double *x, long n, double h,
                     CheckLossFn loss, void *ctx, double atol, double rtol);

// Makes a fresh folder /tmp/<prefix>_XXXXXX and writes its path into dir (len bytes). Returns 0,
// or -1 with errno set.
int check_tmpdir_make(char *dir, size_t len, const char *prefix);
// Removes dir and everything below it (links are removed, not followed). Returns 0 or -1.
int check_tmpdir_remove(const char *dir);

// The fixture of the training tests: Fashion-MNIST's test split into *data (10,000 images, enough
// for short runs and quick to load) and a fresh temporary folder as check_tmpdir_make makes it.
// Returns 0, or -1 after printing why (cmocka then skips the group). The teardown frees both.
int check_fmnist_setup(Dataset *data, char *dir, size_t len, const char *prefix);
int check_fmnist_teardown(Dataset *data, const char *dir);

// Runs the shell command made of fmt (stderr joined to stdout, which is captured into out, len
// bytes, NUL-terminated and cut when longer). Returns its exit status (128 after a signal).
int check_sh(char *out, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
// The steer binary the tests run: $STEER_BIN, else build/steer.
const char *check_steer_bin(void);

// Writes n bytes of buf to path, created or truncated; fails the running test on any error.
void check_write_file(const char *path, const void *buf, size_t n);
// The whole of path in a new buffer of *n bytes plus a NUL the count leaves out; the caller frees
// it. Fails the running test if the file cannot be read.
uint8_t *check_read_file(const char *path, size_t *n);

// Fails the running test, at the caller's line, unless the message text contains sub.
#define CHECK_ASSERT_HAS(text, sub)                                                                \
    do {                                                                                           \
        if (!strstr((text), (sub)))                                                                \
            fail_msg("message \"%s\" lacks \"%s\"", (text), (sub));                                \
    } while (0)

#endif
