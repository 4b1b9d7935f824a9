// test_cli.c — the `steer` binary as a user runs it: train, sample, bench's device choice, and
// their errors.
//
// Runs build/steer (STEER_BIN overrides) in a shell and checks exit codes, messages and files:
// a tiny training run writes a checkpoint and a grid; sampling is deterministic for a seed and
// writes the documented npy shape; each misuse exits non-zero with a message that says why.
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
#include <sys/wait.h>

#include "generator/data/imageio.h"
#include "kernels/conv.h"
#include "tests/check.h"

static char dir[64];
static char out[8192];

// Runs `steer ARGS` with stdout and stderr captured into `out`; returns the exit status.
static int run(const char *fmt, ...) {
    char args[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    return check_sh(out, sizeof out, "%s %s", check_steer_bin(), args);
}

static int setup(void **state) {
    (void)state;
    if (check_tmpdir_make(dir, sizeof dir, "steer_test_cli")) return -1;
    // One tiny conditional run that every test samples from.
    int rc = run("train --config tinyc --iters 4 --batch 8 --seed 3 --ckpt-dir %s/run "
                 "--sample-every 2 --save-every 2 --log-every 2 --out %s/tiny.safetensors",
                 dir, dir);
    if (rc) fprintf(stderr, "train failed (%d):\n%s\n", rc, out);
    return rc ? -1 : 0;
}

static int teardown(void **state) {
    (void)state;
    return check_tmpdir_remove(dir);
}

static long file_size(const char *path) {
    struct stat st;
    return stat(path, &st) ? -1 : (long)st.st_size;
}

// --device cuda where the GPU cannot be used (a CPU build, or no GPU) trains on the CPU and says
// why; a GPU machine says it trains there.
static void test_train_device(void **state) {
    (void)state;
    int rc = run("train --config tiny --iters 2 --batch 8 --device cuda --sample-every 0 "
                 "--ckpt-dir %s/dev%.0s", dir, dir);
    assert_int_equal(rc, 0);
    if (!strstr(out, "training on the GPU (")) {
        CHECK_ASSERT_HAS(out, "training on the CPU (asked for cuda; ");
        assert_true(strstr(out, "no CUDA backend") || strstr(out, "no usable GPU"));
    }
    // --tf32: on the GPU it says TF32 is on; on the CPU that it does not apply there
    rc = run("train --config tiny --iters 1 --batch 8 --tf32 --sample-every 0 "
             "--ckpt-dir %s/tf32%.0s", dir, dir);
    assert_int_equal(rc, 0);
    CHECK_ASSERT_HAS(out, strstr(out, "training on the GPU (")
                              ? "; TF32 tensor cores on)"
                              : "; TF32 asked for, but the CPU computes in FP32)");
    // --bf16: on the CPU, BF16 convolutions where the CPU has BF16 instructions, else FP32 and
    // why; on the GPU, that it is the CPU's setting
    rc = run("train --config tiny --iters 1 --batch 8 --bf16 --device cpu --sample-every 0 "
             "--ckpt-dir %s/bf16%.0s", dir, dir);
    assert_int_equal(rc, 0);
    char why[200];
    CHECK_ASSERT_HAS(out, conv2d_bf16_supported(why, sizeof why)
                              ? "; BF16 convolutions on "
                              : "; BF16 asked for, but this CPU has no BF16");
}

// steer bench --device: cuda where the GPU cannot be used fails and says why (a benchmark asked
// for the GPU must not report the CPU's figures); auto measures on the CPU and says why. On a GPU
// machine both print the GPU's cuda_* lines instead. Only the lines are checked, never a speed.
static void test_bench_device(void **state) {
    (void)state;
    const char *fig = "--config tiny --batch 8 --seconds 0.05";
    int rc = run("bench --device cuda %s", fig);
    if (rc == 0) {
        CHECK_ASSERT_HAS(out, "cuda_device ");
        CHECK_ASSERT_HAS(out, "cuda_train_b8_images_per_s ");
        CHECK_ASSERT_HAS(out, "cuda_train_b8_peak_fraction ");
        CHECK_ASSERT_HAS(out, "cuda_gen_b8_images_per_s ");
    } else {
        assert_int_equal(rc, 1);
        CHECK_ASSERT_HAS(out, "steer bench: --device cuda: ");
        assert_true(strstr(out, "no CUDA backend") || strstr(out, "no usable GPU"));
        assert_null(strstr(out, "images_per_s"));
    }
    assert_int_equal(run("bench --device auto %s", fig), 0);
    if (!strstr(out, "cuda_train_b8_images_per_s ")) {
        CHECK_ASSERT_HAS(out, "steer bench: --device auto: measuring on the CPU (");
        const char *line = strstr(out, "\ntrain_images_per_s ");
        assert_non_null(line);
        assert_true(strtod(line + strlen("\ntrain_images_per_s "), NULL) > 0);
        CHECK_ASSERT_HAS(out, "gen_b64_images_per_s ");
    }
    // --bf16 on the CPU: the BF16 figures and their ratios, or that this CPU cannot
    assert_int_equal(run("bench --bf16 %s", fig), 0);
    char why[200];
    if (conv2d_bf16_supported(why, sizeof why)) {
        CHECK_ASSERT_HAS(out, "bf16_supported 1");
        CHECK_ASSERT_HAS(out, "bf16_train_images_per_s ");
        CHECK_ASSERT_HAS(out, "ratio_bf16_vs_fp32_gen_b64 ");
    } else {
        CHECK_ASSERT_HAS(out, "bf16_supported 0");
        CHECK_ASSERT_HAS(out, "--bf16: not measured: this CPU has no BF16");
    }
}

static void test_train_outputs(void **state) {
    (void)state;
    char p[256];
    snprintf(p, sizeof p, "%s/run/latest.safetensors", dir);
    assert_true(file_size(p) > 0);
    snprintf(p, sizeof p, "%s/run/samples_0000004.png", dir);
    assert_true(file_size(p) > 0);
    // Resume past the end: nothing to do, exits 0 and says where it is.
    assert_int_equal(run("train --resume %s/tiny.safetensors --iters 5 --ckpt-dir %s/run2 "
                         "--sample-every 0 --log-every 1", dir, dir), 0);
    assert_non_null(strstr(out, "resumed"));
    assert_non_null(strstr(out, "step 5/5"));
}

// steer train runs the same loop as a job (generator/train.h): any folder of PNGs is data, a
// class filter and a limit cut Fashion-MNIST, and FD is measured during and at the end.
static void test_train_data_and_fd(void **state) {
    (void)state;
    // four 32x32 gray PNGs: a folder of images is a dataset (no FD: that needs Fashion-MNIST)
    char png[512];
    float img[32 * 32];
    snprintf(png, sizeof png, "mkdir -p %s/pngs", dir);
    assert_int_equal(check_sh(out, sizeof out, "%s", png), 0);
    for (int k = 0; k < 4; k++) {
        for (int i = 0; i < 32 * 32; i++) img[i] = (float)((i * (k + 1)) % 64) / 32.0f - 1;
        char err[256];
        snprintf(png, sizeof png, "%s/pngs/%d.png", dir, k);
        assert_int_equal(image_grid_write_png(png, img, 1, 1, 32, 32, 1, err, sizeof err), 0);
    }
    int rc = run("train --config tiny --data %s/pngs --iters 3 --batch 4 --sample-every 0 "
                 "--eval-n 50 --ckpt-dir %s/png", dir, dir);
    if (rc) fail_msg("train on PNGs: exit %d:\n%s", rc, out);
    CHECK_ASSERT_HAS(out, "step 3/3");
    CHECK_ASSERT_HAS(out, "no FD: FD is measured on Fashion-MNIST only");
    // one class of Fashion-MNIST, 40 images, FD of that class every 2 steps and at the end
    rc = run("train --config tiny --classes 7 --limit 40 --iters 4 --batch 4 --log-every 2 "
             "--sample-every 0 --eval-n 64 --eval-every 2 --ckpt-dir %s/class7%.0s", dir, dir);
    if (rc) fail_msg("train --classes: exit %d:\n%s", rc, out);
    CHECK_ASSERT_HAS(out, "eval step 2  fd ");
    CHECK_ASSERT_HAS(out, "fd ");
    CHECK_ASSERT_HAS(out, "(n 64)");
    // --seconds ends the run as done, at the step it reached
    rc = run("train --config tiny --iters 100000 --batch 4 --seconds 0.5 --sample-every 0 "
             "--save-every 0 --ckpt-dir %s/budget%.0s", dir, dir);
    if (rc) fail_msg("train --seconds: exit %d:\n%s", rc, out);
    CHECK_ASSERT_HAS(out, "done at step ");
    // bad values are refused before anything trains
    assert_int_equal(run("train --classes 7,x --ckpt-dir %s/bad%.0s", dir, dir), 2);
    CHECK_ASSERT_HAS(out, "--classes 'x'");
    assert_int_equal(run("train --eval-every 5 --ckpt-dir %s/bad%.0s", dir, dir), 2);
    CHECK_ASSERT_HAS(out, "--eval-every needs --eval-n");
    assert_int_equal(run("train --finetune-store x.db --ckpt-dir %s/bad%.0s", dir, dir), 2);
    CHECK_ASSERT_HAS(out, "--finetune-store needs --init");
    assert_int_equal(run("train --data %s/nothing-here --ckpt-dir %s/bad", dir, dir), 1);
    CHECK_ASSERT_HAS(out, "no such folder");
}

// A distillation run from the command line: the student, its speed beside the teacher's.
static void test_train_distill(void **state) {
    (void)state;
    int rc = run("train --teacher %s/tiny.safetensors --ch 8 --iters 2 --batch 8 --sample-every 0 "
                 "--ckpt-dir %s/student", dir, dir);
    if (rc) fail_msg("train --teacher: exit %d:\n%s", rc, out);
    CHECK_ASSERT_HAS(out, "training tinyc (ch 8,");
    CHECK_ASSERT_HAS(out, "student ");
    CHECK_ASSERT_HAS(out, " images/s, teacher ");
}

static void test_sample_deterministic(void **state) {
    (void)state;
    char a[256], b[256];
    snprintf(a, sizeof a, "%s/a.npy", dir);
    snprintf(b, sizeof b, "%s/b.npy", dir);
    assert_int_equal(run("sample --ckpt %s/tiny.safetensors --n 70 --out %s --seed 9", dir, a), 0);
    assert_int_equal(run("sample --ckpt %s/tiny.safetensors --n 70 --out %s --seed 9", dir, b), 0);
    float *x = NULL, *y = NULL;
    int nd;
    int64_t shape[NPY_MAX_DIMS];
    char err[512];
    assert_int_equal(npy_read_f32(a, &x, &nd, shape, err, sizeof err), 0);
    assert_int_equal(nd, 4);
    assert_true(shape[0] == 70 && shape[1] == 1 && shape[2] == 32 && shape[3] == 32);
    assert_int_equal(npy_read_f32(b, &y, &nd, shape, err, sizeof err), 0);
    assert_memory_equal(x, y, sizeof(float) * 70 * 1024);
    for (long i = 0; i < 70 * 1024; i++) assert_true(x[i] >= -1.0f && x[i] <= 1.0f);
    free(y);
    // Another seed gives other samples.
    assert_int_equal(run("sample --ckpt %s/tiny.safetensors --n 70 --out %s --seed 10", dir, b), 0);
    assert_int_equal(npy_read_f32(b, &y, &nd, shape, err, sizeof err), 0);
    assert_true(memcmp(x, y, sizeof(float) * 70 * 1024) != 0);
    free(y);
    // --bf16: where the CPU has BF16 instructions, the same frames up to bf16's rounding (not the
    // same bits); elsewhere FP32's bits and the reason on stderr.
    assert_int_equal(
        run("sample --ckpt %s/tiny.safetensors --n 70 --out %s --seed 9 --bf16", dir, b), 0);
    assert_int_equal(npy_read_f32(b, &y, &nd, shape, err, sizeof err), 0);
    char why[200];
    if (conv2d_bf16_supported(why, sizeof why)) {
        double worst = 0, mean = 0;
        for (long i = 0; i < 70 * 1024; i++) {
            worst = fmax(worst, fabs((double)x[i] - y[i]));
            mean += fabs((double)x[i] - y[i]) / (70 * 1024);
        }
        fprintf(stderr, "# sample --bf16 against FP32: mean difference %.3g, largest %.3g\n", mean,
                worst);
        assert_true(worst > 0 && mean < 0.01);
    } else {
        CHECK_ASSERT_HAS(out, "--bf16: this CPU has no BF16 instructions");
        assert_memory_equal(x, y, sizeof(float) * 70 * 1024);
    }
    free(x);
    free(y);
    snprintf(a, sizeof a, "%s/grid.png", dir);
    assert_int_equal(run("sample --ckpt %s/tiny.safetensors --n 20 --out %s --class 3", dir, a), 0);
    assert_true(file_size(a) > 0);
    assert_int_equal(run("sample --ckpt %s/tiny.safetensors --n 20 --out %s --by-class", dir, a), 0);
}

// Each misuse: non-zero exit and a message containing `needle`.
static void expect_error(const char *needle, const char *fmt, const char *arg) {
    char args[1024];
    snprintf(args, sizeof args, fmt, arg, arg);
    int rc = run("%s", args);
    if (rc == 0 || !strstr(out, needle))
        fprintf(stderr, "steer %s: exit %d, output:\n%s\n(expected '%s')\n", args, rc, out, needle);
    assert_true(rc != 0);
    assert_non_null(strstr(out, needle));
}

static void test_errors(void **state) {
    (void)state;
    expect_error("unknown command", "frobnicate%.0s%.0s", "");
    expect_error("No such file", "sample --ckpt %s/missing.safetensors --n 2 --out %s/x.npy", dir);
    expect_error("must end in .npy or .png", "sample --ckpt %s/tiny.safetensors --n 2 --out %s/x.jpg",
                 dir);
    expect_error("--n", "sample --ckpt %s/tiny.safetensors --n -3 --out %s/x.npy", dir);
    expect_error("--class", "sample --ckpt %s/tiny.safetensors --n 2 --class 12 --out %s/x.npy",
                 dir);
    expect_error("usage", "sample --n 2%.0s%.0s", "");
    expect_error("unknown config", "train --config nope --ckpt-dir %s/r%.0s", dir);
    expect_error("--iters", "train --iters many --ckpt-dir %s/r%.0s", dir);
    expect_error("not a regular file", "train --resume /dev/null --ckpt-dir %s/r%.0s", dir);
    expect_error("dataset-fashion-mnist", "train --data %s/nodata --ckpt-dir %s/r", dir);
    expect_error("expected auto, cpu or cuda", "train --device tpu --ckpt-dir %s/r%.0s", dir);
    expect_error("expected auto, cpu or cuda", "bench --device tpu%.0s%.0s", "");
    expect_error("--batch '0': expected an integer in [1, 4096]", "bench --batch 0%.0s%.0s", "");
    expect_error("--batch '5000'", "bench --device cuda --batch 5000%.0s%.0s", "");
    expect_error("--batch 'x'", "bench --device auto --batch x%.0s%.0s", "");
    expect_error("--tf32 is a GPU setting", "bench --tf32%.0s%.0s", "");
    expect_error("--bf16 on the CPU is a training/generation figure",
                 "bench --bf16 --ckpt models/fmnist32c.safetensors%.0s%.0s", "");
    expect_error("unknown config", "bench --device cuda --config nope%.0s%.0s", "");
    // A folder that does not exist: the output cannot be written.
    expect_error("steer sample", "sample --ckpt %s/tiny.safetensors --n 2 --out %s/no/dir/x.npy",
                 dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_train_outputs),
        cmocka_unit_test(test_train_device),
        cmocka_unit_test(test_bench_device),
        cmocka_unit_test(test_train_data_and_fd),
        cmocka_unit_test(test_train_distill),
        cmocka_unit_test(test_sample_deterministic),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
