// check.c — the helpers shared by the test files (see check.h): allocation, the comparison with a
// reference that prints its worst pairs, uniform fills, central differences, temporary folders
// and whole-file reads and writes.
//
// It holds no test of its own and no knowledge of any module under test; the Makefile links it
// into every test binary.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "tests/check.h"

void *check_alloc(size_t bytes, const char *file, int line) {
    void *p = calloc(1, bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "%s:%d: out of memory (%zu bytes)\n", file, line, bytes);
        exit(1);
    }
    return p;
}

double *check_to_double(const float *x, long n) {
    double *d = CHECK_ALLOC(double, n);
    for (long i = 0; i < n; i++)
        d[i] = x[i];
    return d;
}

// --- comparison ---------------------------------------------------------------------------------

// got[i] is read as a double from gotf (float) or, when gotf is NULL, from gotd.
static int compare(const char *what, const float *gotf, const double *gotd, const double *want,
                   long n, double atol, double rtol) {
    long worst_i[CHECK_WORST];
    double worst_excess[CHECK_WORST];
    int nworst = 0;
    long bad = 0;
    for (long i = 0; i < n; i++) {
        double got = gotf ? (double)gotf[i] : gotd[i];
        double err = fabs(got - want[i]);
        double tol = atol + rtol * fabs(want[i]);
        if (err <= tol) // NaN compares false, so it lands below as a failure
            continue;
        bad++;
        double excess = isnan(err) ? INFINITY : err / tol;
        // Keep the CHECK_WORST largest excesses, sorted descending.
        int pos;
        if (nworst < CHECK_WORST)
            pos = nworst++;
        else if (excess > worst_excess[CHECK_WORST - 1])
            pos = CHECK_WORST - 1;
        else
            continue;
        for (; pos > 0 && worst_excess[pos - 1] < excess; pos--) {
            worst_excess[pos] = worst_excess[pos - 1];
            worst_i[pos] = worst_i[pos - 1];
        }
        worst_excess[pos] = excess;
        worst_i[pos] = i;
    }
    if (bad) {
        printf("# %s: %ld of %ld outside %.1e + %.1e|ref|; worst:\n", what, bad, n, atol, rtol);
        for (int k = 0; k < nworst; k++) {
            long i = worst_i[k];
            double got = gotf ? (double)gotf[i] : gotd[i];
            printf("#   [%ld] got %.9g want %.9g (|diff| %.3g)\n", i, got, want[i],
                   fabs(got - want[i]));
        }
    }
    return bad > INT_MAX ? INT_MAX : (int)bad;
}

int check_compare_f(const char *what, const float *got, const double *want, long n, double atol,
                    double rtol) {
    return compare(what, got, NULL, want, n, atol, rtol);
}

int check_compare_d(const char *what, const double *got, const double *want, long n, double atol,
                    double rtol) {
    return compare(what, NULL, got, want, n, atol, rtol);
}

// --- data and finite differences ----------------------------------------------------------------

void check_fill_uniform(Rng *r, float *f, double *d, long n, double lo, double hi) {
    for (long i = 0; i < n; i++) {
        // fma: one rounding whether or not the compiler contracts, so the values do not depend
        // on the build flags.
        float x = (float)fma(hi - lo, (double)rng_uniform(r), lo);
        if (f)
            f[i] = x;
        if (d)
            d[i] = x;
    }
}

void check_central_diff(double *numeric, double *x, long n, double h, CheckLossFn loss, void *ctx) {
    for (long i = 0; i < n; i++) {
        double saved = x[i];
        x[i] = saved + h;
        double up = loss(x, n, ctx);
        x[i] = saved - h;
        double down = loss(x, n, ctx);
        x[i] = saved;
        numeric[i] = (up - down) / (2.0 * h);
    }
}

int check_compare_fd(const char *what, const double *analytic, double *x, long n, double h,
                     CheckLossFn loss, void *ctx, double atol, double rtol) {
    double *numeric = CHECK_ALLOC(double, n);
    check_central_diff(numeric, x, n, h, loss, ctx);
    int bad = check_compare_d(what, analytic, numeric, n, atol, rtol);
    free(numeric);
    return bad;
}

// --- temporary folders and files ----------------------------------------------------------------

int check_tmpdir_make(char *dir, size_t len, const char *prefix) {
    int k = snprintf(dir, len, "/tmp/%s_XXXXXX", prefix);
    if (k < 0 || (size_t)k >= len) {
        errno = ENAMETOOLONG;
        return -1;
    }
    return mkdtemp(dir) ? 0 : -1;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

int check_tmpdir_remove(const char *dir) {
    return nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

void check_write_file(const char *path, const void *buf, size_t n) {
    FILE *fp = fopen(path, "wb");
    if (!fp)
        fail_msg("cannot create %s: %s", path, strerror(errno));
    if (n)
        assert_int_equal(fwrite(buf, 1, n, fp), n);
    assert_int_equal(fclose(fp), 0);
}

uint8_t *check_read_file(const char *path, size_t *n) {
    FILE *fp = fopen(path, "rb");
    if (!fp)
        fail_msg("cannot open %s: %s", path, strerror(errno));
    assert_int_equal(fseek(fp, 0, SEEK_END), 0);
    long size = ftell(fp);
    assert_true(size >= 0);
    assert_int_equal(fseek(fp, 0, SEEK_SET), 0);
    uint8_t *buf = check_alloc((size_t)size + 1, __FILE__, __LINE__);
    assert_int_equal(fread(buf, 1, (size_t)size, fp), (size_t)size);
    fclose(fp);
    *n = (size_t)size;
    return buf;
}

double check_bf16_round(double x) {
    float f = (float)x;
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    u &= 0xffff0000u;
    memcpy(&f, &u, 4);
    return f;
}

double *check_bf16_copy(const double *x, long n) {
    double *r = CHECK_ALLOC(double, n);
    for (long i = 0; i < n; i++)
        r[i] = check_bf16_round(x[i]);
    return r;
}

int check_fmnist_setup(Dataset *data, char *dir, size_t len, const char *prefix) {
    char err[512];
    if (fmnist_load(data, FMNIST_DIR, 0, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    return check_tmpdir_make(dir, len, prefix);
}

int check_fmnist_teardown(Dataset *data, const char *dir) {
    dataset_free(data);
    return check_tmpdir_remove(dir);
}

int check_sh(char *out, size_t len, const char *fmt, ...) {
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd - 8, fmt, ap);
    va_end(ap);
    strcat(cmd, " 2>&1");
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    size_t n = fread(out, 1, len - 1, p);
    out[n] = 0;
    char sink[4096]; // the rest, so the command never blocks on a full pipe
    while (fread(sink, 1, sizeof sink, p) > 0) {}
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

const char *check_steer_bin(void) {
    const char *b = getenv("STEER_BIN");
    return b && *b ? b : "build/steer";
}
