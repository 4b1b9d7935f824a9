// test_cuda_gen.c — G's forward on the GPU (generator/sagan_cuda.c) against the CPU's
// generator_forward: the shipped fmnist32c (conditional, attention at 16x16) and the tiny64 shape
// (64x64 RGB, four classes, attention deeper), at batches 1, 7 and 64, TF32 off.
//
// Tolerance |gpu - cpu| <= 1e-4 + 1e-3 |cpu| per pixel: both are FP32, the sums differ in order
// (cuDNN and cuBLAS against oneDNN), and tanh squashes the differences of the last layer. Without
// a GPU the test prints "ok 1 - test_cuda_gen # SKIP skipped: <reason>" and exits 0.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "generator/gan.h"
#include "generator/sagan_cuda.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/kernels.h"
#include "kernels/rng.h"
#include "tests/check.h"

static int compare(const char *what, Generator *g, GeneratorCuda *gc, int B, uint64_t seed) {
    const SaganConfig *c = &g->cfg;
    long n = (long)B * c->channels * c->img * c->img;
    float *z = CHECK_ALLOC(float, (long)B * c->z_dim), *img = CHECK_ALLOC(float, n);
    int32_t *y = CHECK_ALLOC(int32_t, B);
    gan_sample_latents(c, seed, B, -1, z, c->n_classes ? y : NULL);
    assert_int_equal(generator_forward(g, z, c->n_classes ? y : NULL, B), 0);
    assert_int_equal(generator_cuda_forward(gc, z, c->n_classes ? y : NULL, B, img), 0);
    double *want = check_to_double(g->img, n);
    char label[128];
    snprintf(label, sizeof label, "%s, batch %d", what, B);
    int bad = check_compare_f(label, img, want, n, 1e-4, 1e-3);
    free(want), free(z), free(img), free(y);
    return bad;
}

static void test_shipped_model(void **state) {
    (void)state;
    Generator g;
    char err[512];
    assert_int_equal(generator_load(&g, "models/fmnist32c.safetensors", 64, err, sizeof err), 0);
    GeneratorCuda gc;
    if (generator_cuda_init(&gc, &g, 64, err, sizeof err)) fail_msg("%s", err);
    int bad = 0;
    const int batches[3] = {1, 7, 64};
    for (int k = 0; k < 3; k++) bad += compare("fmnist32c", &g, &gc, batches[k], 5 + k);
    assert_int_equal(bad, 0);
    generator_cuda_free(&gc);
    generator_free(&g);
}

static void test_rgb64(void **state) {
    (void)state;
    SaganConfig cfg;
    assert_int_equal(sagan_config_lookup(&cfg, "tiny64"), 0);
    Generator g;
    assert_int_equal(generator_init(&g, &cfg, 16, 3), 0);
    g.ps.params[g.ps.p[g.p_gamma].offset] = 0.5f; // attention's path on (gamma is 0 at init)
    paramset_sn_forward(&g.ps, 0);
    GeneratorCuda gc;
    char err[512];
    if (generator_cuda_init(&gc, &g, 16, err, sizeof err)) fail_msg("%s", err);
    assert_int_equal(compare("tiny64", &g, &gc, 16, 11), 0);
    // new weights reach the GPU with an upload (a hot swap)
    for (long i = 0; i < g.ps.total; i++) g.ps.params[i] *= 0.9f;
    paramset_sn_forward(&g.ps, 0);
    assert_int_equal(generator_cuda_upload(&gc, &g), 0);
    assert_int_equal(compare("tiny64 after an upload", &g, &gc, 16, 12), 0);
    // a model not at the level the copy draws (a progressive swap, say) is refused, not drawn
    g.level--;
    assert_int_equal(generator_cuda_upload(&gc, &g), KERNELS_EINVAL);
    g.level++;
    generator_cuda_free(&gc);
    generator_free(&g);
}

int main(void) {
    char why[256];
    if (!cuda_device_available(why, sizeof why)) {
        printf("1..1\nok 1 - test_cuda_gen # SKIP skipped: %s\n", why);
        return 0;
    }
    printf("# %s\n", why);
    cuda_tf32_set(0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shipped_model),
        cmocka_unit_test(test_rgb64),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
