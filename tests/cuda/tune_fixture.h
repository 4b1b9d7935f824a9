// tune_fixture.h — what the CUDA training tests (tests/cuda/test_cuda_train.c on a GPU or cuemu,
// tests/cuda/shim/test_shim_exact.c on the CPU stand-in) build alike: their hyperparameters, a
// made-up users' reward for the finetune step, a teacher checkpoint for the distill step. Static
// functions for those two programs only; include after <cmocka.h> and tests/check.h.
#ifndef TESTS_CUDA_TUNE_FIXTURE_H
#define TESTS_CUDA_TUNE_FIXTURE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "generator/gan.h"
#include "kernels/rng.h"
#include "generator/finetune.h"
#include "policy/frame_reward.h"

// GanHparams' defaults at batch B, with G's EMA (when a test switches it on) copied on step 1
// and averaged after.
static GanHparams fixture_hparams(int B) {
    GanHparams hp;
    gan_hparams_default(&hp);
    hp.batch = B;
    hp.ema_start = 1;
    return hp;
}

// A temporary folder (dir holds at least 32 bytes) and the path of file name in it (path: 96).
static void fixture_tmp(char *dir, char *path, const char *name) {
    strcpy(dir, "/tmp/steer-cuda-XXXXXX");
    assert_non_null(mkdtemp(dir));
    snprintf(path, 96, "%s/%s", dir, name);
}

static void fixture_tmp_remove(const char *dir, const char *path) {
    unlink(path);
    rmdir(dir);
}

// A users' reward over the features of ckpt's D for batches up to B, as learn_reward_init leaves
// one but with made-up weights and standardization (drawn from rng) instead of a model fitted on
// stored feedback: what the finetune step does with it is what is checked. Steps take &x->r.
typedef struct {
    Features f;
    FrameReward fr;
    FinetuneReward r;
} FixtureReward;

static void fixture_reward(FixtureReward *x, const char *ckpt, int B, Rng *rng) {
    char err[512];
    memset(x, 0, sizeof *x);
    if (features_init(&x->f, ckpt, B, err, sizeof err)) fail_msg("%s", err);
    assert_int_equal(frame_reward_init(&x->fr, &x->f), 0);
    for (int k = 0; k < x->f.F; k++) x->fr.w[k] = 0.5 * (rng_uniform(rng) - 0.5);
    for (int k = 0; k < x->f.d_ch; k++) x->f.istd[k] = 0.5f + rng_uniform(rng); // as if calibrated
    x->fr.r0 = 0.1;
    x->r = frame_reward_finetune(&x->fr);
}

static void fixture_reward_free(FixtureReward *x) {
    frame_reward_free(&x->fr);
    features_free(&x->f);
    memset(x, 0, sizeof *x);
}

// A teacher for a student of config cfg: the same config at twice the width (seed 3, attention's
// gamma 0.5 in both networks, where at its initial 0 the block's weights would learn nothing),
// saved to ckpt.
static void fixture_teacher(const SaganConfig *cfg, const GanHparams *hp, const char *ckpt) {
    SaganConfig tcfg = *cfg;
    tcfg.ch *= 2;
    GanTrainer t;
    char err[512];
    assert_int_equal(gan_init(&t, &tcfg, hp, 3), 0);
    if (t.G.p_gamma >= 0) t.G.ps.params[t.G.ps.p[t.G.p_gamma].offset] = 0.5f;
    if (t.D.p_gamma >= 0) t.D.ps.params[t.D.ps.p[t.D.p_gamma].offset] = 0.5f;
    if (gan_save(&t, ckpt, err, sizeof err)) fail_msg("%s", err);
    gan_free(&t);
}

#endif
