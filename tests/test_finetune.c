// test_finetune.c — what fine-tuning on users and distillation rest on: the gradient of a loss on
// D's features back to D's input (discriminator_backward_features) equals the one D's own backward
// gives when that loss is D's last linear layer; and a distillation step teaches the student the
// teacher's frames (pixel loss falls). The fine-tuning job itself runs end to end through a server
// in tests/server/test_jobs.py.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "generator/gan.h"
#include "kernels/kernels.h"
#include "generator/distill.h"
#include "tests/check.h"

static char tmpdir[256];

static int group_setup(void **state) {
    (void)state;
    return check_tmpdir_make(tmpdir, sizeof(tmpdir), "steer_test_finetune");
}

static int group_teardown(void **state) {
    (void)state;
    return check_tmpdir_remove(tmpdir);
}

// For an unconditional D, logit = fc . feat + b: backward from dout = 1 and backward from
// dfeat = fc's effective weights must give the same dx.
static void test_backward_features(void **state) {
    (void)state;
    SaganConfig cfg;
    assert_int_equal(sagan_config_lookup(&cfg, "tiny"), 0);
    enum { B = 3 };
    Discriminator d;
    assert_int_equal(discriminator_init(&d, &cfg, B, 21), 0);
    Rng rng;
    rng_seed(&rng, 4);
    long n = (long)B * cfg.channels * cfg.img * cfg.img;
    float *x = malloc(n * sizeof(float)), *dx1 = calloc(n, sizeof(float)),
          *dx2 = calloc(n, sizeof(float));
    for (long i = 0; i < n; i++) x[i] = 2 * rng_uniform(&rng) - 1;
    paramset_sn_forward(&d.ps, 0);
    assert_int_equal(discriminator_forward(&d, x, NULL, B), 0);
    float ones[B] = {1, 1, 1};
    assert_int_equal(discriminator_backward(&d, ones, B, 0, dx1), 0);
    int F;
    discriminator_features(&d, &F);
    const Param *p = &d.ps.p[d.p_fc_w];
    const float *wfc = (p->sn ? d.ps.w_eff : d.ps.params) + p->offset;
    assert_int_equal((long)F, p->numel);
    float *dfeat = malloc((size_t)B * F * sizeof(float));
    for (int b = 0; b < B; b++) memcpy(dfeat + (long)b * F, wfc, (size_t)F * sizeof(float));
    assert_int_equal(discriminator_forward(&d, x, NULL, B), 0);
    assert_int_equal(discriminator_backward_features(&d, dfeat, B, dx2), 0);
    double worst = 0, scale = 0;
    for (long i = 0; i < n; i++) {
        double e = fabs((double)dx1[i] - dx2[i]);
        if (e > worst) worst = e;
        if (fabs(dx1[i]) > scale) scale = fabs(dx1[i]);
    }
    assert_true(scale > 0);
    assert_true(worst <= 1e-5 * scale);
    assert_int_equal(discriminator_backward_features(&d, dfeat, B + 10, dx2), KERNELS_EINVAL);
    free(x);
    free(dx1);
    free(dx2);
    free(dfeat);
    discriminator_free(&d);
}

// A student distilled on pixels alone comes to draw the teacher's frames.
static void test_distill_pixels(void **state) {
    (void)state;
    SaganConfig cfg;
    assert_int_equal(sagan_config_lookup(&cfg, "tiny"), 0);
    GanHparams hp;
    gan_hparams_default(&hp);
    hp.batch = 8;
    GanTrainer teacher, student;
    assert_int_equal(gan_init(&teacher, &cfg, &hp, 1), 0);
    char path[512], err[256];
    snprintf(path, sizeof path, "%s/teacher.safetensors", tmpdir);
    assert_int_equal(gan_save(&teacher, path, err, sizeof err), 0);
    gan_free(&teacher);
    hp.lr_g = 2e-3f;
    assert_int_equal(gan_init(&student, &cfg, &hp, 99), 0);
    Distiller dist;
    assert_int_equal(distill_init(&dist, path, hp.batch, err, sizeof err), 0);
    // a small dataset of noise for the student's D step
    Dataset data = {.n = 16, .c = 1, .h = 32, .w = 32};
    data.images = malloc(16L * 1024 * sizeof(float));
    Rng rng;
    rng_seed(&rng, 3);
    for (long i = 0; i < 16L * 1024; i++) data.images[i] = 2 * rng_uniform(&rng) - 1;
    DistillConfig dc = {.w_pix = 1, .w_feat = 0, .w_adv = 0};
    double first = 0, last = 0, feat;
    for (int s = 0; s < 40; s++) {
        double pix;
        assert_int_equal(distill_step(&student, &dist, &dc, &data, &pix, &feat), 0);
        assert_true(isfinite(pix) && isfinite(feat));
        if (s < 3) first += pix / 3;
        if (s >= 37) last += pix / 3;
    }
    assert_int_equal(student.step, 40);
    assert_true(last < 0.75 * first);
    distill_free(&dist);
    gan_free(&student);
    free(data.images);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_backward_features),
                                       cmocka_unit_test(test_distill_pixels)};
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
