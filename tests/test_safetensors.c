// test_safetensors.c — unit tests of generator/safetensors: bit-exact round trips, every kind of
// damaged file refused with a message naming the file and the fault, safetensors_expect's
// messages, and a fuzz loop over mutated files (reading may fail but must never crash or read out
// of bounds; run under `make asan` to make that last part strict).
//
// It does not test checkpoints of real networks: that is the generator's tests' job.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "generator/safetensors.h"
#include "tests/check.h"

static char tmpdir[256];

static int group_setup(void **state) {
    (void)state;
    return check_tmpdir_make(tmpdir, sizeof(tmpdir), "steer_test_st");
}

static int group_teardown(void **state) {
    (void)state;
    return check_tmpdir_remove(tmpdir);
}

static void tmp_path(char *out, size_t n, const char *name) {
    snprintf(out, n, "%s/%s", tmpdir, name);
}

// A raw file: u64 header length, header text, then ndata bytes of data (0x5a...).
static void raw_write(const char *path, const char *header, size_t ndata) {
    size_t hlen = strlen(header);
    uint8_t *buf = malloc(8 + hlen + ndata + 1);
    for (int b = 0; b < 8; b++)
        buf[b] = (uint8_t)((uint64_t)hlen >> (8 * b));
    memcpy(buf + 8, header, hlen);
    for (size_t i = 0; i < ndata; i++)
        buf[8 + hlen + i] = (uint8_t)(0x5a + i);
    check_write_file(path, buf, 8 + hlen + ndata);
    free(buf);
}

static void tensor_set(StTensor *t, const char *name, StDtype dtype, int ndim, const int64_t *shape,
                       const void *data) {
    memset(t, 0, sizeof(*t));
    snprintf(t->name, sizeof(t->name), "%s", name);
    t->dtype = dtype;
    t->ndim = ndim;
    size_t n = 1;
    for (int i = 0; i < ndim; i++) {
        t->shape[i] = shape[i];
        n *= (size_t)shape[i];
    }
    t->data = data;
    t->nbytes = n * safetensors_dtype_size(dtype);
}

// The fixture every round-trip test writes: one tensor of each dtype, an empty one, a scalar.
static float f32[6];
static double f64[4] = {1.0 / 3.0, -2.5e300, 4.9e-324, 0.0};
static int32_t i32[4] = {INT32_MIN, -1, 0, INT32_MAX};
static int64_t i64[1] = {INT64_MIN + 7};
static uint64_t u64[3] = {0, 1, UINT64_MAX};
static uint8_t u8[5] = {0, 1, 127, 128, 255};

static int fixture_fill(StTensor *ts) {
    f32[0] = 1.5f;
    f32[1] = -0.0f;
    f32[2] = NAN;
    f32[3] = 1e-45f; // a denormal
    f32[4] = INFINITY;
    f32[5] = -3.25f;
    // U8 first and an odd size: the writer must still align the wider ones by reordering.
    tensor_set(&ts[0], "u8.bytes", ST_U8, 1, (int64_t[]){5}, u8);
    tensor_set(&ts[1], "g.conv1.w", ST_F32, 2, (int64_t[]){2, 3}, f32);
    tensor_set(&ts[2], "f64", ST_F64, 1, (int64_t[]){4}, f64);
    tensor_set(&ts[3], "i32", ST_I32, 2, (int64_t[]){2, 2}, i32);
    tensor_set(&ts[4], "step", ST_I64, 0, NULL, i64);
    tensor_set(&ts[5], "rng.state", ST_U64, 1, (int64_t[]){3}, u64);
    tensor_set(&ts[6], "empty", ST_F32, 2, (int64_t[]){0, 3}, NULL);
    return 7;
}

static void test_roundtrip(void **state) {
    (void)state;
    StTensor ts[8];
    int n = fixture_fill(ts);
    char path[512], err[512] = "";
    tmp_path(path, sizeof(path), "rt.safetensors");
    const char *meta[] = {"format", "pt", "steer.config", "fmnist32", NULL};
    // Twice: the second write must replace the first atomically.
    for (int pass = 0; pass < 2; pass++)
        assert_int_equal(safetensors_write(path, ts, n, meta, err, sizeof(err)), 0);
    char tmp[600];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    assert_int_not_equal(access(tmp, F_OK), 0);

    StFile f;
    int rc = safetensors_read(&f, path, err, sizeof(err));
    if (rc != 0)
        fail_msg("read failed: %s", err);
    assert_int_equal(f.n, n);
    for (int i = 0; i < n; i++) {
        const StTensor *t = safetensors_find(&f, ts[i].name);
        assert_non_null(t);
        assert_int_equal(t->dtype, ts[i].dtype);
        assert_int_equal(t->ndim, ts[i].ndim);
        for (int d = 0; d < t->ndim; d++)
            assert_int_equal(t->shape[d], ts[i].shape[d]);
        assert_int_equal(t->nbytes, ts[i].nbytes);
        if (t->nbytes)
            assert_memory_equal(t->data, ts[i].data, t->nbytes);
        // Aligned in memory to its element size, so callers may read it as float/double/...
        assert_int_equal((uintptr_t)t->data % safetensors_dtype_size(t->dtype), 0);
    }
    assert_null(safetensors_find(&f, "nope"));
    assert_string_equal(safetensors_meta(&f, "format"), "pt");
    assert_string_equal(safetensors_meta(&f, "steer.config"), "fmnist32");
    assert_null(safetensors_meta(&f, "absent"));
    safetensors_free(&f);
    safetensors_free(&f); // twice is safe

    // The on-disk layout: header padded with spaces to an 8-byte aligned data start.
    size_t size;
    uint8_t *raw = check_read_file(path, &size);
    uint64_t hlen = 0;
    for (int b = 0; b < 8; b++)
        hlen |= (uint64_t)raw[b] << (8 * b);
    assert_int_equal((8 + hlen) % 8, 0);
    assert_true(raw[8] == '{');
    free(raw);
}

static void test_no_tensors(void **state) {
    (void)state;
    char path[512], err[512] = "";
    tmp_path(path, sizeof(path), "none.safetensors");
    assert_int_equal(safetensors_write(path, NULL, 0, NULL, err, sizeof(err)), 0);
    StFile f;
    assert_int_equal(safetensors_read(&f, path, err, sizeof(err)), 0);
    assert_int_equal(f.n, 0);
    assert_int_equal(f.n_meta, 0);
    safetensors_free(&f);
}

// A header that is valid but not 8-aligned and padded with trailing spaces, as other writers may
// produce: accepted, and the data still aligned in memory.
static void test_foreign_header(void **state) {
    (void)state;
    char path[512], err[512] = "";
    tmp_path(path, sizeof(path), "foreign.safetensors");
    raw_write(path,
              "{\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[16,18]},"
              "\"a\":{\"dtype\":\"F32\",\"shape\":[2, 2],\"data_offsets\":[0,16]}}   ",
              18);
    StFile f;
    int rc = safetensors_read(&f, path, err, sizeof(err));
    if (rc != 0)
        fail_msg("%s", err);
    const StTensor *a = safetensors_find(&f, "a");
    assert_non_null(a);
    assert_int_equal((uintptr_t)a->data % 64, 0);
    assert_int_equal(((const uint8_t *)a->data)[0], 0x5a);
    assert_int_equal(((const uint8_t *)safetensors_find(&f, "b")->data)[1], 0x5a + 17);
    safetensors_free(&f);
}

static void test_write_rejects(void **state) {
    (void)state;
    StTensor ts[8];
    int n = fixture_fill(ts);
    char path[512], err[512];
    tmp_path(path, sizeof(path), "rejected.safetensors");

    StTensor bad[8];
    memcpy(bad, ts, sizeof(ts));
    memcpy(bad[1].name, bad[0].name, sizeof(bad[1].name));
    assert_int_equal(safetensors_write(path, bad, n, NULL, err, sizeof(err)), SAFETENSORS_EINVAL);
    CHECK_ASSERT_HAS(err, "appears twice");

    memcpy(bad, ts, sizeof(ts));
    bad[2].nbytes -= 8;
    assert_int_equal(safetensors_write(path, bad, n, NULL, err, sizeof(err)), SAFETENSORS_EINVAL);
    CHECK_ASSERT_HAS(err, "'f64' has nbytes");

    memcpy(bad, ts, sizeof(ts));
    bad[3].dtype = (StDtype)42;
    assert_int_equal(safetensors_write(path, bad, n, NULL, err, sizeof(err)), SAFETENSORS_EINVAL);
    CHECK_ASSERT_HAS(err, "invalid dtype");

    memcpy(bad, ts, sizeof(ts));
    snprintf(bad[0].name, sizeof(bad[0].name), "__metadata__");
    assert_int_equal(safetensors_write(path, bad, n, NULL, err, sizeof(err)), SAFETENSORS_EINVAL);

    const char *odd[] = {"key", NULL};
    assert_int_equal(safetensors_write(path, ts, n, odd, err, sizeof(err)), SAFETENSORS_EINVAL);
    CHECK_ASSERT_HAS(err, "'key' has no value");

    assert_int_not_equal(access(path, F_OK), 0); // nothing was written

    char nodir[512];
    tmp_path(nodir, sizeof(nodir), "no/such/dir/x.safetensors");
    assert_int_equal(safetensors_write(nodir, ts, n, NULL, err, sizeof(err)), SAFETENSORS_EIO);
    CHECK_ASSERT_HAS(err, "cannot create");
}

typedef struct {
    const char *what;   // the case, for failure messages
    const char *header; // NULL: use raw/raw_len instead
    size_t ndata;
    const uint8_t *raw; // the whole file, when header is NULL
    size_t raw_len;
    const char *expect; // a substring of the message
} Damaged;

static void test_damaged(void **state) {
    (void)state;
    static const uint8_t short5[5] = {1, 0, 0, 0, 0};
    static const uint8_t hlen_big[16] = {0xe8, 0x03, 0,   0,   0,   0,   0,   0,
                                         '{',  '}',  ' ', ' ', ' ', ' ', ' ', ' '};
    static const uint8_t hlen_huge[16] = {0,   0,   0,   0,   0,   0,   0,   0x80,
                                          '{', '}', ' ', ' ', ' ', ' ', ' ', ' '};
    static const uint8_t nul_in_header[16] = {8,   0,   0,   0, 0,   0,   0,   0,
                                              '{', '}', ' ', 0, ' ', ' ', ' ', ' '};
    char longname[300];
    snprintf(longname, sizeof(longname),
             "{\"%0200d\":{\"dtype\":\"U8\",\"shape\":[0],"
             "\"data_offsets\":[0,0]}}",
             7);
    const Damaged cases[] = {
        {"empty file", NULL, 0, (const uint8_t *)"", 0, "too short"},
        {"truncated header length", NULL, 0, short5, 5, "too short"},
        {"header length past the end", NULL, 0, hlen_big, 16, "runs past the end of the file"},
        {"header length 2^63", NULL, 0, hlen_huge, 16, "runs past the end of the file"},
        {"NUL inside the header", NULL, 0, nul_in_header, 16, "not valid JSON"},
        {"bad JSON", "{\"a\": ", 0, NULL, 0, "not valid JSON"},
        {"JSON not an object", "[1, 2]", 0, NULL, 0, "not an object"},
        {"entry not an object", "{\"a\": 3}", 0, NULL, 0, "entry 'a' is not an object"},
        {"missing dtype", "{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, NULL, 0,
         "no \"dtype\""},
        {"unknown dtype", "{\"a\":{\"dtype\":\"BF16\",\"shape\":[1],\"data_offsets\":[0,2]}}", 2,
         NULL, 0, "unsupported dtype 'BF16'"},
        {"negative shape", "{\"a\":{\"dtype\":\"U8\",\"shape\":[-1],\"data_offsets\":[0,0]}}", 0,
         NULL, 0, "not a non-negative integer"},
        {"float shape", "{\"a\":{\"dtype\":\"U8\",\"shape\":[2.0],\"data_offsets\":[0,2]}}", 2,
         NULL, 0, "not a non-negative integer"},
        {"string shape", "{\"a\":{\"dtype\":\"U8\",\"shape\":\"2\",\"data_offsets\":[0,2]}}", 2,
         NULL, 0, "no \"shape\" array"},
        {"nine dims",
         "{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 1, NULL,
         0, "9 dimensions"},
        {"shape overflow",
         "{\"a\":{\"dtype\":\"F64\",\"shape\":[4294967296,4294967296,4294967296],"
         "\"data_offsets\":[0,8]}}",
         8, NULL, 0, "overflows"},
        {"one offset", "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0]}}", 2, NULL, 0,
         "two integers"},
        {"negative offset", "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[-2,0]}}", 2,
         NULL, 0, "bad data_offsets"},
        {"offsets reversed", "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[2,0]}}", 2,
         NULL, 0, "bad data_offsets"},
        {"offsets past the end",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8, NULL, 0,
         "runs past the end of the data section (8 bytes)"},
        {"offsets out of range",
         "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],"
         "\"data_offsets\":[1000,1004]}}",
         4, NULL, 0, "runs past the end"},
        {"offsets not shape*dtype",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],"
         "\"data_offsets\":[0,12]}}",
         12, NULL, 0, "F32 [4] needs 16"},
        {"overlapping tensors",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
         12, NULL, 0, "overlaps"},
        {"same offsets twice",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
         8, NULL, 0, "overlaps"},
        {"gap between tensors",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
         12, NULL, 0, "gap"},
        {"trailing bytes", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8,
         NULL, 0, "oversized"},
        {"data without tensors", "{}", 4, NULL, 0, "oversized"},
        {"duplicate names",
         "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
         "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
         2, NULL, 0, "duplicate"},
        {"metadata not an object", "{\"__metadata__\": [1]}", 0, NULL, 0,
         "\"__metadata__\" is not an object"},
        {"metadata not strings", "{\"__metadata__\": {\"epoch\": 3}}", 0, NULL, 0,
         "metadata 'epoch' is not a string"},
        {"name too long", longname, 0, NULL, 0, "longer than 127 bytes"},
    };
    char path[512], err[512];
    tmp_path(path, sizeof(path), "damaged.safetensors");
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const Damaged *c = &cases[i];
        if (c->header)
            raw_write(path, c->header, c->ndata);
        else
            check_write_file(path, c->raw, c->raw_len);
        StFile f;
        memset(&f, 0xff, sizeof(f)); // read must not rely on a zeroed struct
        err[0] = '\0';
        int rc = safetensors_read(&f, path, err, sizeof(err));
        if (rc != SAFETENSORS_EFORMAT)
            fail_msg("case '%s': rc %d (%s), expected EFORMAT; message \"%s\"", c->what, rc,
                     safetensors_strerror(rc), err);
        if (getenv("ST_SHOW"))
            print_message("# %-28s %s\n", c->what, err);
        if (!strstr(err, c->expect))
            fail_msg("case '%s': message \"%s\" lacks \"%s\"", c->what, err, c->expect);
        CHECK_ASSERT_HAS(err, path);
        assert_null(f.buf);
        assert_null(f.tensors);
        assert_int_equal(f.n, 0);
        safetensors_free(&f);
    }

    // A header length over the sanity limit, in a (sparse) file large enough to hold it.
    uint64_t insane = SAFETENSORS_HEADER_MAX + 8ull;
    uint8_t prefix[8];
    for (int b = 0; b < 8; b++)
        prefix[b] = (uint8_t)(insane >> (8 * b));
    check_write_file(path, prefix, 8);
    assert_int_equal(truncate(path, (off_t)(8 + insane + 16)), 0);
    StFile f;
    assert_int_equal(safetensors_read(&f, path, err, sizeof(err)), SAFETENSORS_EFORMAT);
    CHECK_ASSERT_HAS(err, "is larger than the 104857600 bytes allowed");

    assert_int_equal(safetensors_read(&f, "/nonexistent/x.safetensors", err, sizeof(err)),
                     SAFETENSORS_EIO);
    CHECK_ASSERT_HAS(err, "/nonexistent/x.safetensors: cannot open");
    assert_int_equal(safetensors_read(&f, tmpdir, err, sizeof(err)), SAFETENSORS_EIO);
    CHECK_ASSERT_HAS(err, "not a regular file");
}

static void test_expect(void **state) {
    (void)state;
    StTensor ts[8];
    int n = fixture_fill(ts);
    char path[512], err[512];
    tmp_path(path, sizeof(path), "expect.safetensors");
    assert_int_equal(safetensors_write(path, ts, n, NULL, err, sizeof(err)), 0);
    StFile f;
    assert_int_equal(safetensors_read(&f, path, err, sizeof(err)), 0);

    const StTensor *t = NULL;
    assert_int_equal(
        safetensors_expect(&f, "g.conv1.w", ST_F32, 2, (int64_t[]){2, 3}, &t, err, sizeof(err)), 0);
    assert_non_null(t);
    assert_string_equal(t->name, "g.conv1.w");
    assert_int_equal(safetensors_expect(&f, "step", ST_I64, 0, NULL, NULL, err, sizeof(err)), 0);

    assert_int_equal(
        safetensors_expect(&f, "g.conv1.w", ST_F32, 2, (int64_t[]){2, 4}, &t, err, sizeof(err)),
        SAFETENSORS_EMISMATCH);
    assert_null(t);
    CHECK_ASSERT_HAS(err, "tensor 'g.conv1.w' has shape [2, 3], expected [2, 4]");
    CHECK_ASSERT_HAS(err, path);
    assert_int_equal(
        safetensors_expect(&f, "g.conv1.w", ST_F32, 3, (int64_t[]){2, 3, 1}, &t, err, sizeof(err)),
        SAFETENSORS_EMISMATCH);
    CHECK_ASSERT_HAS(err, "has shape [2, 3], expected [2, 3, 1]");
    assert_int_equal(
        safetensors_expect(&f, "step", ST_I64, 1, (int64_t[]){1}, &t, err, sizeof(err)),
        SAFETENSORS_EMISMATCH);
    CHECK_ASSERT_HAS(err, "has shape [], expected [1]");
    assert_int_equal(safetensors_expect(&f, "f64", ST_F32, 1, (int64_t[]){4}, &t, err, sizeof(err)),
                     SAFETENSORS_EMISMATCH);
    CHECK_ASSERT_HAS(err, "tensor 'f64' has dtype F64, expected F32");
    assert_int_equal(
        safetensors_expect(&f, "d.conv9.w", ST_F32, 1, (int64_t[]){4}, &t, err, sizeof(err)),
        SAFETENSORS_ENOTFOUND);
    CHECK_ASSERT_HAS(err, "missing tensor 'd.conv9.w'");
    safetensors_free(&f);
}

static uint64_t fuzz_next(uint64_t *s) {
    // splitmix64: a self-contained stream, so this test depends on nothing but the module.
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void test_fuzz(void **state) {
    (void)state;
    StTensor ts[8];
    int n = fixture_fill(ts);
    const char *meta[] = {"format", "pt", NULL};
    char path[512], fuzz[512], err[512];
    tmp_path(path, sizeof(path), "valid.safetensors");
    tmp_path(fuzz, sizeof(fuzz), "fuzz.safetensors");
    assert_int_equal(safetensors_write(path, ts, n, meta, err, sizeof(err)), 0);
    size_t size;
    uint8_t *orig = check_read_file(path, &size);
    uint8_t *buf = malloc(size + 64);
    uint64_t hlen = 0;
    for (int b = 0; b < 8; b++)
        hlen |= (uint64_t)orig[b] << (8 * b);

    uint64_t seed = 12345;
    int ok = 0, refused = 0;
    const int iters = 4000;
    for (int it = 0; it < iters; it++) {
        memcpy(buf, orig, size);
        size_t len = size;
        int kind = (int)(fuzz_next(&seed) % 5);
        if (kind == 0) {
            len = fuzz_next(&seed) % (size + 1); // truncate anywhere
        } else if (kind == 1) {
            // Flip a few bytes in the header, where the structure lives.
            int flips = 1 + (int)(fuzz_next(&seed) % 4);
            for (int k = 0; k < flips; k++)
                buf[8 + fuzz_next(&seed) % hlen] ^= (uint8_t)(1 + fuzz_next(&seed) % 255);
        } else if (kind == 2) {
            // Replace a header byte with a digit or structural character: offsets and shapes
            // change while staying JSON more often than random bytes would.
            static const char pick[] = "0123456789-,[]{}\": .e";
            int flips = 1 + (int)(fuzz_next(&seed) % 3);
            for (int k = 0; k < flips; k++)
                buf[8 + fuzz_next(&seed) % hlen] =
                    (uint8_t)pick[fuzz_next(&seed) % (sizeof(pick) - 1)];
        } else if (kind == 3) {
            buf[fuzz_next(&seed) % 8] ^= (uint8_t)(1 + fuzz_next(&seed) % 255); // header length
        } else {
            // Flip anywhere, and sometimes append bytes.
            buf[fuzz_next(&seed) % size] ^= (uint8_t)(1 + fuzz_next(&seed) % 255);
            if (fuzz_next(&seed) % 2)
                len += fuzz_next(&seed) % 64;
        }
        check_write_file(fuzz, buf, len);
        StFile f;
        int rc = safetensors_read(&f, fuzz, err, sizeof(err));
        if (rc == 0) {
            ok++;
            // Whatever was accepted must be self-consistent and inside the file: the tensors
            // tile one contiguous span no longer than the file's data. Touch every byte (under
            // `make asan` an overread is then caught: the buffer ends where the file does).
            unsigned sum = 0;
            const uint8_t *lo = NULL, *hi = NULL;
            size_t total = 0;
            for (int i = 0; i < f.n; i++) {
                const StTensor *t = &f.tensors[i];
                assert_true(t->ndim >= 0 && t->ndim <= SAFETENSORS_MAX_DIMS);
                const uint8_t *p = t->data;
                assert_true(p >= f.buf);
                if (!lo || p < lo)
                    lo = p;
                if (!hi || p + t->nbytes > hi)
                    hi = p + t->nbytes;
                total += t->nbytes;
                for (size_t k = 0; k < t->nbytes; k++)
                    sum += p[k];
            }
            assert_true(total <= len - 8);
            if (f.n)
                assert_int_equal(hi - lo, total);
            for (int i = 0; i < 2 * f.n_meta; i++)
                sum += (unsigned)strlen(f.meta_kv[i]);
            (void)sum;
        } else {
            refused++;
            assert_true(rc < 0);
            assert_true(err[0] != '\0');
        }
        safetensors_free(&f);
    }
    print_message("# fuzz: %d mutated files, %d accepted, %d refused\n", iters, ok, refused);
    assert_true(refused > iters / 2); // most mutations must be caught
    assert_true(ok > 0);              // and harmless ones (e.g. a name's letter) still read
    free(buf);
    free(orig);
}

static void test_free_zeroed(void **state) {
    (void)state;
    StFile f = {0};
    safetensors_free(&f);
    safetensors_free(NULL);
    assert_string_equal(safetensors_strerror(SAFETENSORS_EFORMAT), "not a valid safetensors file");
    assert_int_equal(safetensors_dtype_size(ST_F64), 8);
    assert_int_equal(safetensors_dtype_size((StDtype)99), 0);
    assert_string_equal(safetensors_dtype_name(ST_U8), "U8");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),      cmocka_unit_test(test_no_tensors),
        cmocka_unit_test(test_foreign_header), cmocka_unit_test(test_write_rejects),
        cmocka_unit_test(test_damaged),        cmocka_unit_test(test_expect),
        cmocka_unit_test(test_fuzz),           cmocka_unit_test(test_free_zeroed),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
