// test_data.c — unit tests of generator/data/fmnist and generator/data/imageio: the real Fashion-MNIST sets load with
// the right shapes, values, padding and labels (checked against the raw IDX bytes read
// independently); missing and damaged files give errors, not crashes; PNG grids and frames decode
// back to the expected pixels with libpng; NPY round trips are exact and damaged NPY is refused.
//
// It needs Debian's dataset-fashion-mnist installed (`make deps`); without it the load tests fail
// with the loader's own message, which says so.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "generator/data/fmnist.h"
#include "generator/data/imageio.h"
#include "tests/check.h"

static char tmpdir[256];
static Dataset train_set, test_set; // loaded once for the group; each ~250 / 40 MB
static char load_err[2][512];
static int load_rc[2];

static int group_setup(void **state) {
    (void)state;
    if (check_tmpdir_make(tmpdir, sizeof(tmpdir), "steer_test_data"))
        return -1;
    // A failed load is reported by the tests that need the data, with the loader's message.
    load_rc[0] = fmnist_load(&train_set, FMNIST_DIR, 1, load_err[0], sizeof(load_err[0]));
    load_rc[1] = fmnist_load(&test_set, FMNIST_DIR, 0, load_err[1], sizeof(load_err[1]));
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    dataset_free(&train_set);
    dataset_free(&test_set);
    return check_tmpdir_remove(tmpdir);
}

static void tmp_path(char *out, size_t n, const char *name) {
    snprintf(out, n, "%s/%s", tmpdir, name);
}

// The raw decompressed bytes of a gzip file, read with zlib directly (the reference for fmnist).
static uint8_t *gz_slurp(const char *path, size_t *n) {
    gzFile gz = gzopen(path, "rb");
    if (!gz)
        fail_msg("cannot open %s", path);
    size_t cap = 1 << 20, len = 0;
    uint8_t *buf = malloc(cap);
    for (;;) {
        if (len == cap)
            buf = realloc(buf, cap *= 2);
        int k = gzread(gz, buf + len, (unsigned)(cap - len));
        assert_true(k >= 0);
        if (k == 0)
            break;
        len += (size_t)k;
    }
    gzclose(gz);
    *n = len;
    return buf;
}

static void gz_write(const char *path, const void *buf, size_t n) {
    gzFile gz = gzopen(path, "wb");
    assert_non_null(gz);
    if (n)
        assert_int_equal(gzwrite(gz, buf, (unsigned)n), (int)n);
    assert_int_equal(gzclose(gz), Z_OK);
}

static void be32_put(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

// ---------------------------------------------------------------------------------------------
// Fashion-MNIST

// Shapes, range, the -1 border, the label histogram, and pixels against the raw IDX bytes.
static void check_split(const Dataset *d, int rc, const char *err, int train) {
    if (rc != 0)
        fail_msg("fmnist_load failed: %s", err);
    const int n = train ? FMNIST_TRAIN_N : FMNIST_TEST_N;
    assert_int_equal(d->n, n);
    assert_int_equal(d->c, 1);
    assert_int_equal(d->h, 32);
    assert_int_equal(d->w, 32);
    assert_int_equal(d->n_classes, 10);
    assert_string_equal(d->class_names[0], "T-shirt/top");
    assert_string_equal(d->class_names[9], "Ankle boot");

    float lo = INFINITY, hi = -INFINITY;
    long border_bad = 0;
    for (long i = 0; i < (long)n; i++) {
        const float *img = d->images + i * 32 * 32;
        for (int y = 0; y < 32; y++) {
            for (int x = 0; x < 32; x++) {
                float v = img[y * 32 + x];
                lo = v < lo ? v : lo;
                hi = v > hi ? v : hi;
                if ((y < 2 || y >= 30 || x < 2 || x >= 30) && v != -1.0f)
                    border_bad++;
            }
        }
    }
    assert_true(lo == -1.0f);
    assert_true(hi == 1.0f);
    assert_int_equal(border_bad, 0);

    long counts[10] = {0};
    for (int i = 0; i < n; i++) {
        assert_in_range(d->labels[i], 0, 9);
        counts[d->labels[i]]++;
    }
    for (int k = 0; k < 10; k++)
        assert_int_equal(counts[k], n / 10); // balanced: 6000 / 1000

    // Every pixel and label against the files' own bytes.
    char path[512];
    size_t len;
    snprintf(path, sizeof(path), "%s/%s-images-idx3-ubyte.gz", FMNIST_DIR,
             train ? "train" : "t10k");
    uint8_t *raw = gz_slurp(path, &len);
    assert_int_equal(len, 16 + (size_t)n * 784);
    long mismatched = 0;
    for (long i = 0; i < (long)n; i++) {
        for (int y = 0; y < 28; y++) {
            for (int x = 0; x < 28; x++) {
                float want = raw[16 + i * 784 + y * 28 + x] / 127.5f - 1.0f;
                if (d->images[i * 1024 + (y + 2) * 32 + x + 2] != want)
                    mismatched++;
            }
        }
    }
    free(raw);
    assert_int_equal(mismatched, 0);
    snprintf(path, sizeof(path), "%s/%s-labels-idx1-ubyte.gz", FMNIST_DIR,
             train ? "train" : "t10k");
    raw = gz_slurp(path, &len);
    assert_int_equal(len, 8 + (size_t)n);
    for (int i = 0; i < n; i++)
        assert_int_equal(d->labels[i], raw[8 + i]);
    free(raw);
}

static void test_fmnist_train(void **state) {
    (void)state;
    check_split(&train_set, load_rc[0], load_err[0], 1);
    assert_int_equal(train_set.labels[0], 9); // the first training image is an ankle boot
}

static void test_fmnist_test(void **state) {
    (void)state;
    check_split(&test_set, load_rc[1], load_err[1], 0);
}

static void test_fmnist_missing(void **state) {
    (void)state;
    char dir[512], err[512] = "";
    tmp_path(dir, sizeof(dir), "empty");
    assert_int_equal(mkdir(dir, 0755), 0);
    Dataset d;
    memset(&d, 0xff, sizeof(d));
    assert_int_equal(fmnist_load(&d, dir, 1, err, sizeof(err)), FMNIST_ENOENT);
    CHECK_ASSERT_HAS(err, "train-labels-idx1-ubyte.gz: not found");
    CHECK_ASSERT_HAS(err, dir);
    CHECK_ASSERT_HAS(err, "apt-get install dataset-fashion-mnist");
    CHECK_ASSERT_HAS(err, "make deps");
    assert_null(d.images);
    assert_null(d.labels);
    assert_int_equal(d.n, 0);
    dataset_free(&d);
    dataset_free(&d);
}

typedef struct {
    const char *what;
    const char *expect;
} CorruptCase;

// Builds a t10k split in dir from `labels` / `images` bytes: each is written gzip-compressed, or
// raw (not gzip at all) when the matching *_raw flag is set.
static void split_write(const char *dir, const uint8_t *labels, size_t nl, int labels_raw,
                        const uint8_t *images, size_t ni, int images_raw) {
    char path[600];
    snprintf(path, sizeof(path), "%s/t10k-labels-idx1-ubyte.gz", dir);
    if (labels_raw)
        check_write_file(path, labels, nl);
    else
        gz_write(path, labels, nl);
    snprintf(path, sizeof(path), "%s/t10k-images-idx3-ubyte.gz", dir);
    if (images_raw)
        check_write_file(path, images, ni);
    else
        gz_write(path, images, ni);
}

static void expect_refused(const char *dir, const char *what, const char *expect) {
    char err[512] = "";
    Dataset d;
    int rc = fmnist_load(&d, dir, 0, err, sizeof(err));
    if (rc >= 0 || !strstr(err, expect))
        fail_msg("case '%s': rc %d, message \"%s\" (wanted \"%s\")", what, rc, err, expect);
    assert_null(d.images);
    assert_null(d.labels);
    dataset_free(&d);
}

static void test_fmnist_corrupt(void **state) {
    (void)state;
    char dir[512];
    tmp_path(dir, sizeof(dir), "corrupt");
    assert_int_equal(mkdir(dir, 0755), 0);

    // A small valid split: 5 images of 28x28, labels 0..4.
    enum { N = 5 };
    uint8_t labels[8 + N], images[16 + N * 784];
    be32_put(labels, 0x801);
    be32_put(labels + 4, N);
    for (int i = 0; i < N; i++)
        labels[8 + i] = (uint8_t)i;
    be32_put(images, 0x803);
    be32_put(images + 4, N);
    be32_put(images + 8, 28);
    be32_put(images + 12, 28);
    for (int i = 0; i < N * 784; i++)
        images[16 + i] = (uint8_t)(i * 7);

    // The positive control: this split loads, so each failure below is the damage's doing.
    split_write(dir, labels, sizeof(labels), 0, images, sizeof(images), 0);
    char err[512];
    Dataset d;
    if (fmnist_load(&d, dir, 0, err, sizeof(err)) != 0)
        fail_msg("valid split refused: %s", err);
    assert_int_equal(d.n, N);
    assert_int_equal(d.labels[4], 4);
    assert_true(d.images[2 * 32 + 2] == 0 / 127.5f - 1.0f);
    assert_true(d.images[2 * 32 + 3] == 7 / 127.5f - 1.0f);
    dataset_free(&d);

    uint8_t bad_l[sizeof(labels)], bad_i[sizeof(images)];

    memcpy(bad_l, labels, sizeof(labels));
    be32_put(bad_l, 0x802);
    split_write(dir, bad_l, sizeof(bad_l), 0, images, sizeof(images), 0);
    expect_refused(dir, "bad label magic", "bad IDX magic 0x00000802, expected 0x00000801");

    memcpy(bad_i, images, sizeof(images));
    be32_put(bad_i, 0x08030000);
    split_write(dir, labels, sizeof(labels), 0, bad_i, sizeof(bad_i), 0);
    expect_refused(dir, "bad image magic", "bad IDX magic");

    split_write(dir, labels, sizeof(labels) - 2, 0, images, sizeof(images), 0);
    expect_refused(dir, "labels truncated", "truncated: reading the labels");

    split_write(dir, labels, sizeof(labels), 0, images, sizeof(images) - 100, 0);
    expect_refused(dir, "images truncated", "truncated: reading the images");

    split_write(dir, labels, 6, 0, images, sizeof(images), 0);
    expect_refused(dir, "header truncated", "truncated: reading the IDX header");

    memcpy(bad_l, labels, sizeof(labels));
    bad_l[8 + 3] = 10;
    split_write(dir, bad_l, sizeof(bad_l), 0, images, sizeof(images), 0);
    expect_refused(dir, "label out of range", "label 10 of image 3 is not in 0..9");

    memcpy(bad_l, labels, sizeof(labels));
    be32_put(bad_l + 4, N - 1);
    split_write(dir, bad_l, sizeof(bad_l) - 1, 0, images, sizeof(images), 0);
    expect_refused(dir, "counts differ", "holds 5 images but");

    memcpy(bad_i, images, sizeof(images));
    be32_put(bad_i + 12, 27);
    split_write(dir, labels, sizeof(labels), 0, bad_i, sizeof(bad_i), 0);
    expect_refused(dir, "27 columns", "images are 28x27, expected 28x28");

    memcpy(bad_l, labels, sizeof(labels));
    be32_put(bad_l + 4, 0xffffffffu);
    split_write(dir, bad_l, sizeof(bad_l), 0, images, sizeof(images), 0);
    expect_refused(dir, "huge count", "implausible label count");

    uint8_t longer[sizeof(labels) + 3];
    memcpy(longer, labels, sizeof(labels));
    memset(longer + sizeof(labels), 0, 3);
    split_write(dir, longer, sizeof(longer), 0, images, sizeof(images), 0);
    expect_refused(dir, "trailing bytes", "trailing bytes");

    // Not gzip at all: zlib passes plain bytes through, so the IDX checks still decide.
    split_write(dir, (const uint8_t *)"hello, world", 12, 1, images, sizeof(images), 0);
    expect_refused(dir, "plain text", "bad IDX magic");

    // A real gzip file, cut short and with its compressed bytes damaged.
    char path[600];
    snprintf(path, sizeof(path), "%s/t10k-images-idx3-ubyte.gz", FMNIST_DIR);
    size_t len;
    uint8_t *gz = check_read_file(path, &len);
    char lpath[600];
    snprintf(lpath, sizeof(lpath), "%s/t10k-labels-idx1-ubyte.gz", FMNIST_DIR);
    size_t llen;
    uint8_t *lgz = check_read_file(lpath, &llen);
    split_write(dir, lgz, llen, 1, gz, len / 2, 1);
    expect_refused(dir, "real gzip cut in half", "t10k-images-idx3-ubyte.gz");
    for (size_t k = len / 3; k < len / 3 + 64; k++)
        gz[k] ^= 0xa5;
    split_write(dir, lgz, llen, 1, gz, len, 1);
    expect_refused(dir, "real gzip with damaged bytes", "t10k-images-idx3-ubyte.gz: damaged");
    split_write(dir, lgz, llen / 2, 1, gz, 0, 1);
    expect_refused(dir, "real labels gzip cut in half", "t10k-labels-idx1-ubyte.gz");
    free(gz);
    free(lgz);
}

// ---------------------------------------------------------------------------------------------
// PNG

typedef struct {
    png_image image;
    uint8_t *pixels;
} Decoded;

// Decodes a PNG (file or memory) with libpng's simplified API into its own format.
static void png_decode(Decoded *out, const char *path, const uint8_t *mem, size_t len) {
    memset(out, 0, sizeof(*out));
    out->image.version = PNG_IMAGE_VERSION;
    int ok = path ? png_image_begin_read_from_file(&out->image, path)
                  : png_image_begin_read_from_memory(&out->image, mem, len);
    if (!ok)
        fail_msg("libpng cannot read it: %s", out->image.message);
    out->pixels = malloc(PNG_IMAGE_SIZE(out->image));
    assert_non_null(out->pixels);
    if (!png_image_finish_read(&out->image, NULL, out->pixels, 0, NULL))
        fail_msg("libpng cannot decode it: %s", out->image.message);
}

static uint8_t to_u8_ref(float v) {
    double x = round((v + 1.0) * 127.5);
    return (uint8_t)(x < 0 ? 0 : x > 255 ? 255 : x);
}

static void test_png_grid_gray(void **state) {
    (void)state;
    if (load_rc[1] != 0)
        fail_msg("%s", load_err[1]);
    char path[512], err[512];
    tmp_path(path, sizeof(path), "grid.png");
    // 10 tiles, 4 a row: 3 rows, width 4*32 + 3*2, height 3*32 + 2*2.
    int rc = image_grid_write_png(path, test_set.images, 10, 1, 32, 32, 4, err, sizeof(err));
    if (rc != 0)
        fail_msg("%s", err);
    Decoded dec;
    png_decode(&dec, path, NULL, 0);
    assert_int_equal(dec.image.width, 134);
    assert_int_equal(dec.image.height, 100);
    assert_int_equal(dec.image.format, PNG_FORMAT_GRAY);
    const uint8_t *px = dec.pixels;
    int lo = 255, hi = 0;
    for (size_t i = 0; i < (size_t)134 * 100; i++) {
        lo = px[i] < lo ? px[i] : lo;
        hi = px[i] > hi ? px[i] : hi;
    }
    assert_true(hi - lo > 200); // real images, not a constant
    // Tile 5 (row 1, column 1) pixel (y, x) against its source value; the gaps are gray.
    for (int y = 0; y < 32; y++) {
        for (int x = 0; x < 32; x++) {
            uint8_t want = to_u8_ref(test_set.images[5 * 1024 + y * 32 + x]);
            assert_int_equal(px[(34 + y) * 134 + 34 + x], want);
        }
    }
    assert_int_equal(px[10 * 134 + 32], IMAGEIO_GRID_GAP_VALUE);
    assert_int_equal(px[33 * 134 + 10], IMAGEIO_GRID_GAP_VALUE);
    assert_int_equal(px[80 * 134 + 120], IMAGEIO_GRID_GAP_VALUE); // the unused 12th tile
    free(dec.pixels);

    assert_int_equal(
        image_grid_write_png(path, test_set.images, 10, 2, 32, 32, 4, err, sizeof(err)),
        IMAGEIO_EINVAL);
    CHECK_ASSERT_HAS(err, "2 channels");
    assert_int_equal(image_grid_write_png(path, test_set.images, 0, 1, 32, 32, 4, err, sizeof(err)),
                     IMAGEIO_EINVAL);
    assert_int_equal(image_grid_write_png("/nonexistent/dir/g.png", test_set.images, 1, 1, 32, 32,
                                          1, err, sizeof(err)),
                     IMAGEIO_EIO);
    CHECK_ASSERT_HAS(err, "/nonexistent/dir/g.png: cannot create");
}

static void test_png_grid_rgb_clamped(void **state) {
    (void)state;
    // 3 RGB images 2x3 with out-of-range values and a NaN: clamped, never wrapped.
    float img[3][3][2][3];
    for (int i = 0; i < 3; i++)
        for (int c = 0; c < 3; c++)
            for (int y = 0; y < 2; y++)
                for (int x = 0; x < 3; x++)
                    img[i][c][y][x] = (c == i) ? 5.0f : -7.0f;
    img[0][0][1][2] = NAN;
    img[2][0][0][0] = 0.0f;
    char path[512], err[512];
    tmp_path(path, sizeof(path), "rgb.png");
    int rc = image_grid_write_png(path, &img[0][0][0][0], 3, 3, 2, 3, 2, err, sizeof(err));
    if (rc != 0)
        fail_msg("%s", err);
    Decoded dec;
    png_decode(&dec, path, NULL, 0);
    assert_int_equal(dec.image.width, 2 * 3 + 2);
    assert_int_equal(dec.image.height, 2 * 2 + 2);
    assert_int_equal(dec.image.format, PNG_FORMAT_RGB);
    const uint8_t *px = dec.pixels;
    const int W = 8;
    // Image 0 top-left: red.
    assert_int_equal(px[0], 255);
    assert_int_equal(px[1], 0);
    assert_int_equal(px[2], 0);
    // Image 1 at x0 = 5: green.
    assert_int_equal(px[(0 * W + 5) * 3 + 0], 0);
    assert_int_equal(px[(0 * W + 5) * 3 + 1], 255);
    // Image 2 at row 1 (y0 = 4): blue, its first red value 0.0 -> 128.
    assert_int_equal(px[(4 * W + 0) * 3 + 0], 128);
    assert_int_equal(px[(4 * W + 1) * 3 + 2], 255);
    // The NaN (in image 0's otherwise saturated red) became 0.
    assert_int_equal(px[(1 * W + 1) * 3 + 0], 255);
    assert_int_equal(px[(1 * W + 2) * 3 + 0], 0);
    free(dec.pixels);
}

static void test_png_encode_memory(void **state) {
    (void)state;
    if (load_rc[1] != 0)
        fail_msg("%s", load_err[1]);
    size_t cap = image_png_bound(1, 32, 32);
    uint8_t *buf = malloc(cap);
    size_t len = 0;
    char err[512];
    const float *img = test_set.images + 42 * 1024;
    int rc = image_encode_png(buf, cap, &len, img, 1, 32, 32, err, sizeof(err));
    if (rc != 0)
        fail_msg("%s", err);
    assert_true(len > 8 && len <= cap);
    assert_memory_equal(buf, "\x89PNG\r\n\x1a\n", 8);
    Decoded dec;
    png_decode(&dec, NULL, buf, len);
    assert_int_equal(dec.image.width, 32);
    assert_int_equal(dec.image.height, 32);
    uint8_t raw8[32 * 32];
    image_to_u8(raw8, img, 1, 32, 32);
    for (int i = 0; i < 32 * 32; i++) {
        assert_int_equal(dec.pixels[i], to_u8_ref(img[i]));
        assert_int_equal(raw8[i], dec.pixels[i]);
    }
    free(dec.pixels);

    // Too small a buffer: refused cleanly, for every size up to what was needed.
    const size_t need = len;
    for (size_t small = 0; small < need; small += 7) {
        rc = image_encode_png(buf, small, &len, img, 1, 32, 32, err, sizeof(err));
        assert_int_equal(rc, IMAGEIO_ETOOSMALL);
        assert_int_equal(len, 0);
    }
    rc = image_encode_png(buf, need, &len, img, 1, 32, 32, err, sizeof(err));
    assert_int_equal(rc, 0); // exactly enough is enough
    assert_int_equal(len, need);
    CHECK_ASSERT_HAS(err, "too small");

    // Worst case for the bound: noise that does not compress, RGB 64x64.
    enum { S = 64 };
    float *noise = malloc(sizeof(float) * 3 * S * S);
    uint32_t x = 2463534242u;
    for (int i = 0; i < 3 * S * S; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        noise[i] = (float)(x % 256) / 127.5f - 1.0f;
    }
    size_t ncap = image_png_bound(3, S, S);
    uint8_t *nbuf = malloc(ncap);
    rc = image_encode_png(nbuf, ncap, &len, noise, 3, S, S, err, sizeof(err));
    if (rc != 0)
        fail_msg("%s", err);
    png_decode(&dec, NULL, nbuf, len);
    assert_int_equal(dec.image.format, PNG_FORMAT_RGB);
    for (int i = 0; i < 3 * S * S; i++) {
        int c = i / (S * S), p = i % (S * S);
        assert_int_equal(dec.pixels[p * 3 + c], to_u8_ref(noise[i]));
    }
    free(dec.pixels);
    free(nbuf);
    free(noise);
    free(buf);
}

// ---------------------------------------------------------------------------------------------
// NPY

static void test_npy_roundtrip(void **state) {
    (void)state;
    char path[512], err[512];
    tmp_path(path, sizeof(path), "a.npy");
    float src[24];
    for (int i = 0; i < 24; i++)
        src[i] = (float)i * 0.37f - 3.0f;
    src[5] = NAN;
    src[6] = -0.0f;
    const struct {
        int ndim;
        int64_t shape[4];
        size_t count;
        const char *text;
    } cases[] = {
        {3, {2, 3, 4}, 24, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 4), }"},
        {1, {24}, 24, "{'descr': '<f4', 'fortran_order': False, 'shape': (24,), }"},
        {0, {0}, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (), }"},
        {2, {0, 5}, 0, "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 5), }"},
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        int rc = npy_write_f32(path, src, cases[c].ndim, cases[c].shape, err, sizeof(err));
        if (rc != 0)
            fail_msg("%s", err);
        // The file as numpy writes it: v1.0, the dict text, data 64-byte aligned after a '\n'.
        size_t size;
        uint8_t *raw = check_read_file(path, &size);
        assert_memory_equal(raw, "\x93NUMPY\x01\x00", 8);
        size_t hlen = raw[8] | (size_t)raw[9] << 8;
        assert_int_equal((10 + hlen) % 64, 0);
        assert_int_equal(raw[10 + hlen - 1], '\n');
        assert_memory_equal(raw + 10, cases[c].text, strlen(cases[c].text));
        assert_int_equal(size, 10 + hlen + 4 * cases[c].count);
        free(raw);

        float *back = NULL;
        int ndim = -1;
        int64_t shape[NPY_MAX_DIMS];
        rc = npy_read_f32(path, &back, &ndim, shape, err, sizeof(err));
        if (rc != 0)
            fail_msg("%s", err);
        assert_int_equal(ndim, cases[c].ndim);
        for (int d = 0; d < ndim; d++)
            assert_int_equal(shape[d], cases[c].shape[d]);
        if (cases[c].count)
            assert_memory_equal(back, src, 4 * cases[c].count);
        free(back);
    }
}

// One NPY file from its header text and data length: "\x93NUMPY", version, u16 length, text.
static void npy_raw_write(const char *path, int major, const char *text, size_t ndata) {
    size_t hlen = strlen(text);
    size_t pre = major == 1 ? 10 : 12;
    uint8_t *buf = calloc(1, pre + hlen + ndata + 1);
    memcpy(buf, "\x93NUMPY", 6);
    buf[6] = (uint8_t)major;
    buf[8] = (uint8_t)hlen;
    buf[9] = (uint8_t)(hlen >> 8);
    memcpy(buf + pre, text, hlen);
    check_write_file(path, buf, pre + hlen + ndata);
    free(buf);
}

static void test_npy_damaged(void **state) {
    (void)state;
    char path[512], err[512];
    tmp_path(path, sizeof(path), "bad.npy");
    const char *good = "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }     \n";
    // Controls: numpy's layout, another key order and quoting, version 2.0, all accepted.
    struct {
        int major;
        const char *text;
        size_t ndata;
    } fine[] = {
        {1, good, 12},
        {1, "{\"shape\": (1, 3), \"fortran_order\": False, \"descr\": \"<f4\"}\n", 12},
        {2, good, 12},
    };
    for (size_t c = 0; c < sizeof(fine) / sizeof(fine[0]); c++) {
        npy_raw_write(path, fine[c].major, fine[c].text, fine[c].ndata);
        float *data = NULL;
        int ndim;
        int64_t shape[NPY_MAX_DIMS];
        int rc = npy_read_f32(path, &data, &ndim, shape, err, sizeof(err));
        if (rc != 0)
            fail_msg("control %zu refused: %s", c, err);
        assert_int_equal(shape[ndim - 1], 3);
        free(data);
    }

    struct {
        const char *what;
        int major;
        const char *text;
        size_t ndata;
        const char *expect;
    } cases[] = {
        {"version 9", 9, good, 12, "unsupported NPY version 9.0"},
        {"truncated data", 1, good, 8, "truncated"},
        {"trailing bytes", 1, good, 16, "trailing bytes"},
        {"float64", 1, "{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }\n", 24,
         "dtype is '<f8'"},
        {"big-endian", 1, "{'descr': '>f4', 'fortran_order': False, 'shape': (3,), }\n", 12,
         "dtype is '>f4'"},
        {"fortran order", 1, "{'descr': '<f4', 'fortran_order': True, 'shape': (3,), }\n", 12,
         "Fortran order"},
        {"(3) is not a tuple", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3), }\n", 12,
         "'shape' is not a tuple"},
        {"negative dim", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (-3,), }\n", 12,
         "'shape' is not a tuple"},
        {"nine dims", 1,
         "{'descr': '<f4', 'fortran_order': False, 'shape': (1,1,1,1,1,1,1,1,3), }\n", 12,
         "'shape' is not a tuple"},
        {"huge dim", 1,
         "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }\n", 12,
         "'shape' is not a tuple"},
        {"overflowing shape", 1,
         "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296), }\n", 12,
         "overflows"},
        {"missing shape", 1, "{'descr': '<f4', 'fortran_order': False, }\n", 12, "lacks 'shape'"},
        {"unknown key", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), 'x': 1}\n", 12,
         "unexpected or repeated key 'x'"},
        {"repeated key", 1, "{'descr': '<f4', 'descr': '<f4', 'shape': (3,), }\n", 12,
         "repeated key 'descr'"},
        {"not a dict", 1, "['<f4', False, (3,)]\n", 12, "not a dict"},
        {"unterminated", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3,", 12,
         "'shape' is not a tuple"},
        {"junk after", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), } xx\n", 12,
         "bytes after the dict"},
        {"empty header", 1, "", 12, "not a dict"},
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        npy_raw_write(path, cases[c].major, cases[c].text, cases[c].ndata);
        float *data = (float *)&err; // must come back NULL
        int ndim;
        int64_t shape[NPY_MAX_DIMS];
        err[0] = '\0';
        int rc = npy_read_f32(path, &data, &ndim, shape, err, sizeof(err));
        if (rc != IMAGEIO_EFORMAT || !strstr(err, cases[c].expect))
            fail_msg("case '%s': rc %d, message \"%s\" (wanted \"%s\")", cases[c].what, rc, err,
                     cases[c].expect);
        CHECK_ASSERT_HAS(err, path);
        assert_null(data);
    }

    // Raw damage: an empty file, bad magic, a header length past the end.
    float *data;
    int ndim;
    int64_t shape[NPY_MAX_DIMS];
    check_write_file(path, "", 0);
    assert_int_equal(npy_read_f32(path, &data, &ndim, shape, err, sizeof(err)), IMAGEIO_EFORMAT);
    CHECK_ASSERT_HAS(err, "bad magic");
    check_write_file(path, "\x93NUMPZ\x01\x00\x00\x00", 10);
    assert_int_equal(npy_read_f32(path, &data, &ndim, shape, err, sizeof(err)), IMAGEIO_EFORMAT);
    CHECK_ASSERT_HAS(err, "bad magic");
    check_write_file(path, "\x93NUMPY\x01\x00\xff\x00{}", 12);
    assert_int_equal(npy_read_f32(path, &data, &ndim, shape, err, sizeof(err)), IMAGEIO_EFORMAT);
    CHECK_ASSERT_HAS(err, "runs past the end");
    check_write_file(path, "\x93NUMPY\x02\x00\x01", 9);
    assert_int_equal(npy_read_f32(path, &data, &ndim, shape, err, sizeof(err)), IMAGEIO_EFORMAT);
    assert_int_equal(npy_read_f32("/nonexistent.npy", &data, &ndim, shape, err, sizeof(err)),
                     IMAGEIO_EIO);
    CHECK_ASSERT_HAS(err, "/nonexistent.npy: cannot open");
    assert_null(data);

    // Every truncation of a valid file is refused, never read past.
    int64_t dims[2] = {3, 5};
    float src[15] = {0};
    assert_int_equal(npy_write_f32(path, src, 2, dims, err, sizeof(err)), 0);
    size_t size;
    uint8_t *whole = check_read_file(path, &size);
    for (size_t cut = 0; cut < size; cut++) {
        check_write_file(path, whole, cut);
        int rc = npy_read_f32(path, &data, &ndim, shape, err, sizeof(err));
        if (rc != IMAGEIO_EFORMAT)
            fail_msg("cut at %zu: rc %d (%s)", cut, rc, err);
    }
    free(whole);
    assert_int_equal(npy_write_f32(path, src, 9, dims, err, sizeof(err)), IMAGEIO_EINVAL);
    assert_string_equal(imageio_strerror(IMAGEIO_ETOOSMALL), "output buffer too small");
    assert_string_equal(fmnist_strerror(FMNIST_ENOENT), "dataset file not found");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fmnist_train),      cmocka_unit_test(test_fmnist_test),
        cmocka_unit_test(test_fmnist_missing),    cmocka_unit_test(test_fmnist_corrupt),
        cmocka_unit_test(test_png_grid_gray),     cmocka_unit_test(test_png_grid_rgb_clamped),
        cmocka_unit_test(test_png_encode_memory), cmocka_unit_test(test_npy_roundtrip),
        cmocka_unit_test(test_npy_damaged),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
