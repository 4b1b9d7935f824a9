// test_pngdir.c — generator/data/pngdir: a folder of PNGs as a dataset (sorted, limit, RGB and gray, area
// resampling 8 -> 4 and 8 -> 3, non-PNG files skipped, a damaged PNG refused with its name, an
// empty folder refused) and dataset_subset (classes, limit, nothing left).
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "generator/data/imageio.h"
#include "generator/data/pngdir.h"
#include "tests/check.h"

static char tmpdir[256];

static int group_setup(void **state) {
    (void)state;
    return check_tmpdir_make(tmpdir, sizeof(tmpdir), "steer_test_pngdir");
}

static int group_teardown(void **state) {
    (void)state;
    return check_tmpdir_remove(tmpdir);
}

// An 8x8 RGB image whose pixels are 2x2 blocks of constant colour (so 8 -> 4 is exact): channel k of
// block (by, bx) is v(k, by, bx) in [-1, 1], on the 8-bit grid.
static float block_value(int seed, int k, int by, int bx) {
    int q = (seed * 37 + k * 91 + by * 13 + bx * 7) % 256;
    return (float)(q / 127.5 - 1.0);
}

static void write_image(const char *dir, const char *name, int seed) {
    float img[3 * 8 * 8];
    for (int k = 0; k < 3; k++)
        for (int y = 0; y < 8; y++)
            for (int x = 0; x < 8; x++) img[(k * 8 + y) * 8 + x] = block_value(seed, k, y / 2, x / 2);
    char path[512], err[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    assert_int_equal(image_grid_write_png(path, img, 1, 3, 8, 8, 1, err, sizeof err), 0);
}

static void test_folder(void **state) {
    (void)state;
    char dir[300], path[400], err[256];
    snprintf(dir, sizeof dir, "%s/imgs", tmpdir);
    mkdir(dir, 0755);
    write_image(dir, "b.png", 2);
    write_image(dir, "a.png", 1);
    write_image(dir, "c.PNG", 3);
    snprintf(path, sizeof path, "%s/notes.txt", dir);
    FILE *f = fopen(path, "w");
    fputs("not an image", f);
    fclose(f);
    Dataset d;
    assert_int_equal(pngdir_load(&d, dir, 3, 4, 4, 0, err, sizeof err), 0);
    assert_int_equal(d.n, 3);
    assert_int_equal(d.c, 3);
    assert_int_equal(d.h, 4);
    assert_int_equal(d.n_classes, 0);
    // sorted by name: a (seed 1), b (2), c (3); 8 -> 4 averages each 2x2 block exactly
    double worst = 0;
    for (int i = 0; i < 3; i++)
        for (int k = 0; k < 3; k++)
            for (int y = 0; y < 4; y++)
                for (int x = 0; x < 4; x++) {
                    double got = d.images[((i * 3 + k) * 4 + y) * 4 + x];
                    double e = fabs(got - block_value(i + 1, k, y, x));
                    if (e > worst) worst = e;
                }
    assert_true(worst < 1e-5);
    dataset_free(&d);
    // limit, gray, and a non-integer factor stays within the source's range
    assert_int_equal(pngdir_load(&d, dir, 1, 3, 3, 2, err, sizeof err), 0);
    assert_int_equal(d.n, 2);
    for (long i = 0; i < 2L * 9; i++) assert_true(d.images[i] >= -1.0f && d.images[i] <= 1.0f);
    dataset_free(&d);
    // a damaged PNG is refused, naming it
    snprintf(path, sizeof path, "%s/d.png", dir);
    f = fopen(path, "w");
    fputs("\x89PNG\r\n\x1a\nbroken", f);
    fclose(f);
    assert_int_not_equal(pngdir_load(&d, dir, 3, 4, 4, 0, err, sizeof err), 0);
    assert_non_null(strstr(err, "d.png"));
    // an empty folder
    snprintf(path, sizeof path, "%s/empty", tmpdir);
    mkdir(path, 0755);
    assert_int_not_equal(pngdir_load(&d, path, 1, 4, 4, 0, err, sizeof err), 0);
    assert_non_null(strstr(err, "no .png"));
    assert_int_not_equal(pngdir_load(&d, "/nonexistent/steer", 1, 4, 4, 0, err, sizeof err), 0);
}

static void test_subset(void **state) {
    (void)state;
    Dataset d = {.n = 6, .c = 1, .h = 1, .w = 2, .n_classes = 3};
    d.images = malloc(12 * sizeof(float));
    d.labels = malloc(6 * sizeof(int32_t));
    for (int i = 0; i < 6; i++) {
        d.labels[i] = i % 3;
        d.images[2 * i] = d.images[2 * i + 1] = (float)i;
    }
    char err[128];
    int keep[] = {2, 0};
    assert_int_equal(dataset_subset(&d, keep, 2, 3, err, sizeof err), 0);
    assert_int_equal(d.n, 3); // labels 0, 2, 0 of images 0, 2, 3
    assert_int_equal(d.labels[0], 0);
    assert_int_equal(d.labels[1], 2);
    assert_int_equal(d.labels[2], 0);
    assert_true(d.images[2] == 2.0f && d.images[4] == 3.0f && d.images[5] == 3.0f);
    int none[] = {1};
    assert_int_not_equal(dataset_subset(&d, none, 1, 0, err, sizeof err), 0);
    dataset_free(&d);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_folder), cmocka_unit_test(test_subset)};
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
