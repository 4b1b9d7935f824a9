// test_shim_exact.c — generator/gan_cuda.c and generator/sagan_cuda.c run on the CPU stand-in
// for the CUDA backend (cuda_shim.c beside this file), against the CPU's gan_step and
// generator_forward, bit for bit. Built and run by `make cuda-shim`; needs the CUDA headers, not a
// GPU or the CUDA libraries.
//
// Every op of the stand-in is the CPU's own function on the same shapes, so any bit that differs
// is the orchestration's: a buffer carved wrong or not zeroed, a layer skipped, reordered or fed
// the wrong tensor, spectral norm or Adam applied to the wrong slice or with the wrong step, an
// RNG draw lost, added or moved. It cannot see a bug inside a CUDA kernel (test_cuda_ops.c does,
// on a GPU), nor one that only a real device shows: a missing synchronize, a host read of device
// memory, a race between streams.
//
// The step: two trainers built alike (config, seed 7, batch 16), attention's gamma set to 0.5 on
// both networks (at its initial 0 the block's weights get no gradient), one stepped by gan_step and
// the other by gan_cuda_step for STEPS steps of free running on the Fashion-MNIST test set (tinyc,
// tiny, fmnist32c, fmnist32) or made-up 64x64 colour images (tiny64). After every step the CUDA
// side is downloaded and every float of both networks' parameter sets (values, gradients, Adam
// moments, SN weights and vectors and sigmas), Adam's step counts, the losses, the RNG state and
// the host's z and labels must have the same bits. G's forward: the shipped fmnist32c at batches
// 1, 7 and 64, and tiny64 (gamma 0.5) at 16, the images bit for bit.
//
// Each difference prints its tensor, how many elements differ and the first of them; any makes
// the test fail and the program exit non-zero. The Fashion-MNIST files are read from
// $STEER_FMNIST_DIR when set, else from FMNIST_DIR.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "generator/data/fmnist.h"
#include "generator/gan.h"
#include "generator/gan_cuda.h"
#include "generator/sagan_cuda.h"
#include "kernels/rng.h"
#include "generator/distill.h"
#include "generator/finetune.h"
#include "tests/check.h"
#include "tests/cuda/tune_fixture.h"

#define STEPS 3
#define BATCH 16

static Dataset fmnist;
static Dataset rgb; // made-up 64x64 colour images, four classes, for tiny64

// The elements of got and want (n) whose bits differ (so -0 against 0 counts, and a NaN equals
// only itself); when there are any, prints how many and the first under the label what.
static long bits_differ(const char *what, const float *got, const float *want, long n) {
    long count = 0, first = -1;
    for (long i = 0; i < n; i++) {
        if (memcmp(&got[i], &want[i], sizeof(float)) != 0) {
            if (first < 0)
                first = i;
            count++;
        }
    }
    if (count)
        printf("#   %s: %ld of %ld differ, first [%ld] %.9g (cuda) vs %.9g (cpu)\n", what, count, n,
               first, got[first], want[first]);
    return count;
}

// Every buffer of a parameter set, tensor by tensor; net names the network in the labels.
static long paramset_differ(const char *net, const ParamSet *got, const ParamSet *want) {
    long count = 0;
    char label[160];
    for (int i = 0; i < want->n; i++) {
        const Param *p = &want->p[i];
        long o = p->offset;
        const struct {
            const char *name;
            const float *got, *want;
        } bufs[] = {
            {"params", got->params + o, want->params + o},
            {"grads", got->grads + o, want->grads + o},
            {"m", got->m + o, want->m + o},
            {"v", got->v + o, want->v + o},
            {"w_eff", got->w_eff + o, want->w_eff + o},
            {"dw_eff", got->dw_eff + o, want->dw_eff + o},
        };
        for (size_t k = 0; k < sizeof bufs / sizeof bufs[0]; k++) {
            snprintf(label, sizeof label, "%s %s %s", net, p->name, bufs[k].name);
            count += bits_differ(label, bufs[k].got, bufs[k].want, p->numel);
        }
        if (!p->sn)
            continue;
        snprintf(label, sizeof label, "%s %s sn_u", net, p->name);
        count += bits_differ(label, got->sn_u + p->u_offset, want->sn_u + p->u_offset, p->rows);
        snprintf(label, sizeof label, "%s %s sn_v", net, p->name);
        count += bits_differ(label, got->sn_v + p->v_offset, want->sn_v + p->v_offset, p->cols);
        snprintf(label, sizeof label, "%s %s sigma", net, p->name);
        count += bits_differ(label, &got->p[i].sigma, &p->sigma, 1);
    }
    if (got->adam_t != want->adam_t) {
        printf("#   %s adam_t: %ld (cuda) vs %ld (cpu)\n", net, got->adam_t, want->adam_t);
        count++;
    }
    return count;
}

static void gamma_set(ParamSet *ps, int p_gamma, float value) {
    ps->params[ps->p[p_gamma].offset] = value;
}

// The tests' hyperparameters: the defaults at batch BATCH, with G's EMA (when switched on) copied
// on step 1 and averaged after.
static GanHparams hparams(void) { return fixture_hparams(BATCH); }

// AdamW's weight decay (both networks), FreezeD's frozen D layers and G's EMA decay (0: off).
static GanHparams hparams_wd_freezed_ema(float wd, int freeze_d, float ema) {
    GanHparams hp = hparams();
    hp.weight_decay_g = hp.weight_decay_d = wd;
    hp.freeze_d = freeze_d;
    hp.ema_decay = ema;
    return hp;
}

// Everything a step leaves in a trainer, cuda against cpu: every buffer of both networks, G's EMA,
// the losses, penalties and regularizers, the draws. Returns the number of differences.
static long trainer_differ(const GanTrainer *cuda, const GanTrainer *cpu) {
    const SaganConfig *c = &cpu->cfg;
    long k = paramset_differ("G", &cuda->G.ps, &cpu->G.ps) +
             paramset_differ("D", &cuda->D.ps, &cpu->D.ps);
    k += bits_differ("EMA", cuda->ema, cpu->ema, cpu->G.ps.total);
    k += bits_differ("EMA u", cuda->ema_u, cpu->ema_u, cpu->G.ps.u_total);
    k += bits_differ("EMA v", cuda->ema_v, cpu->ema_v, cpu->G.ps.v_total);
    if (cuda->ema_live != cpu->ema_live) {
        printf("#   ema_live %d (cuda) vs %d (cpu)\n", cuda->ema_live, cpu->ema_live);
        k++;
    }
    k += bits_differ("loss_d", &cuda->loss_d, &cpu->loss_d, 1);
    k += bits_differ("loss_g", &cuda->loss_g, &cpu->loss_g, 1);
    k += bits_differ("penalty_d", &cuda->penalty_d, &cpu->penalty_d, 1);
    k += bits_differ("reg_g", &cuda->reg_g, &cpu->reg_g, 1);
    if (cuda->D.dropout_seed != cpu->D.dropout_seed) {
        printf("#   D's dropout seed differs (a mask drawn more or less often)\n");
        k++;
    }
    k += bits_differ("z", cuda->z, cpu->z, (long)BATCH * c->z_dim);
    if (memcmp(cuda->y, cpu->y, sizeof(int32_t) * 2 * BATCH) != 0) {
        printf("#   labels y differ\n");
        k++;
    }
    if (memcmp(&cuda->rng, &cpu->rng, sizeof cpu->rng) != 0) {
        printf("#   RNG state differs (a draw lost, added or moved)\n");
        k++;
    }
    if (cuda->step != cpu->step) {
        printf("#   step %ld (cuda) vs %ld (cpu)\n", cuda->step, cpu->step);
        k++;
    }
    if (cuda->level != cpu->level || cuda->alpha != cpu->alpha || cuda->G.level != cpu->G.level ||
        cuda->D.level != cpu->D.level || cuda->G.alpha != cpu->G.alpha ||
        cuda->D.alpha != cpu->D.alpha) {
        printf("#   progressive level %d alpha %g (cuda) vs %d %g (cpu)\n", cuda->level,
               cuda->alpha, cpu->level, cpu->alpha);
        k++;
    }
    return k;
}

// steps steps of config on data with hp, both ways; returns the number of differences.
static long train_differ_steps(const char *config, const Dataset *data, GanHparams hp, int steps) {
    SaganConfig cfg;
    assert_int_equal(sagan_config_lookup(&cfg, config), 0);
    GanTrainer cpu, cuda;
    assert_int_equal(gan_init(&cpu, &cfg, &hp, 7), 0);
    assert_int_equal(gan_init(&cuda, &cfg, &hp, 7), 0);
    GanTrainer *both[2] = {&cpu, &cuda};
    for (int k = 0; k < 2; k++) {
        gamma_set(&both[k]->G.ps, both[k]->G.p_gamma, 0.5f);
        gamma_set(&both[k]->D.ps, both[k]->D.p_gamma, 0.5f);
    }
    GanCuda gc;
    char err[512];
    if (gan_cuda_init(&gc, &cuda, err, sizeof err))
        fail_msg("%s: gan_cuda_init: %s", config, err);

    long total = 0;
    for (int s = 1; s <= steps; s++) {
        assert_int_equal(gan_step(&cpu, data), 0);
        assert_int_equal(gan_cuda_step(&gc, &cuda, data), 0);
        assert_int_equal(gan_cuda_download(&gc, &cuda), 0);
        long k = trainer_differ(&cuda, &cpu);
        printf("# %s step %d: %ld differences (loss_d %.6f, loss_g %.6f, penalty_d %.6g, "
               "reg_g %.6g)\n",
               config, s, k, cpu.loss_d, cpu.loss_g, cpu.penalty_d, cpu.reg_g);
        total += k;
    }
    gan_cuda_free(&gc);
    gan_free(&cuda);
    gan_free(&cpu);
    return total;
}

static long train_differ(const char *config, const Dataset *data, GanHparams hp) {
    return train_differ_steps(config, data, hp, STEPS);
}

static void test_train_tinyc(void **state) {
    (void)state;
    assert_int_equal(train_differ("tinyc", &fmnist, hparams()), 0);
}

static void test_train_tiny(void **state) {
    (void)state;
    assert_int_equal(train_differ("tiny", &fmnist, hparams()), 0);
}

static void test_train_fmnist32c(void **state) {
    (void)state;
    assert_int_equal(train_differ("fmnist32c", &fmnist, hparams()), 0);
}

static void test_train_fmnist32(void **state) {
    (void)state;
    assert_int_equal(train_differ("fmnist32", &fmnist, hparams()), 0);
}

static void test_train_tiny64(void **state) {
    (void)state;
    assert_int_equal(train_differ("tiny64", &rgb, hparams()), 0);
}

// AdamW's weight decay and FreezeD (params_cuda_adam's per-parameter path) and G's EMA.
static void test_train_wd_freezed_ema(void **state) {
    (void)state;
    assert_int_equal(train_differ("tinyc", &fmnist, hparams_wd_freezed_ema(0.05f, 2, 0.0f)), 0);
    assert_int_equal(train_differ("fmnist32c", &fmnist, hparams_wd_freezed_ema(0.01f, 1, 0.0f)), 0);
    assert_int_equal(train_differ("tinyc", &fmnist, hparams_wd_freezed_ema(0.0f, 0, 0.9f)), 0);
    assert_int_equal(train_differ("fmnist32c", &fmnist, hparams_wd_freezed_ema(0.01f, 1, 0.99f)), 0);
}

// The techniques the GPU step took over from the CPU's: SN off on either network, R1 and WGAN-GP
// (every step and lazily, every 2nd: steps 1 and 3 of 3 take it), orthogonal regularization, the
// L1 activation penalty, dropout in D; all together on a conditional config (lazily, every 2nd
// step).
static void test_train_techniques(void **state) {
    (void)state;
    GanHparams hp = hparams();
    hp.sn_g = 0;
    assert_int_equal(train_differ("tinyc", &fmnist, hp), 0);
    hp = hparams();
    hp.sn_d = 0;
    hp.ema_decay = 0.9f;
    assert_int_equal(train_differ("tiny", &fmnist, hp), 0);
    hp = hparams();
    hp.r1_gamma = 1.0f;
    assert_int_equal(train_differ("tinyc", &fmnist, hp), 0);
    hp = hparams();
    hp.gp_lambda = 10.0f;
    hp.penalty_every = 2;
    assert_int_equal(train_differ("tiny", &fmnist, hp), 0);
    hp = hparams();
    hp.ortho_beta = 1e-3f;
    assert_int_equal(train_differ("fmnist32c", &fmnist, hp), 0);
    hp = hparams();
    hp.l1_act = 0.01f;
    assert_int_equal(train_differ("tinyc", &fmnist, hp), 0);
    hp = hparams();
    hp.d_dropout = 0.3f;
    assert_int_equal(train_differ("tiny64", &rgb, hp), 0);
    hp = hparams_wd_freezed_ema(0.01f, 1, 0.99f);
    hp.r1_gamma = 0.5f;
    hp.gp_lambda = 1.0f;
    hp.penalty_every = 2;
    hp.ortho_beta = 1e-4f;
    hp.l1_act = 0.01f;
    hp.d_dropout = 0.2f;
    hp.sn_g = 0;
    assert_int_equal(train_differ("fmnist32c", &fmnist, hp), 0);
}

// Progressive growing: a schedule of one stable step per level and two-step fades from 8x8
// (tinyc: 8 stable, 16 fading in at alpha 0.5 and 1, 16 stable, 32 fading in, 32 stable; the
// real batch pooled and blended on the host, G's toRGB and D's fromRGB layers, both fades' old
// paths), plain and with the L1 penalty, dropout and the EMA; tiny64 from 16x16.
static void test_train_progressive(void **state) {
    (void)state;
    GanHparams hp = hparams();
    hp.prog_stable = 1;
    hp.prog_fade = 2;
    hp.prog_from = 8;
    assert_int_equal(train_differ_steps("tinyc", &fmnist, hp, 8), 0);
    hp.l1_act = 0.01f;
    hp.d_dropout = 0.2f;
    hp.ema_decay = 0.9f;
    assert_int_equal(train_differ_steps("tiny", &fmnist, hp, 8), 0);
    hp = hparams();
    hp.prog_stable = 1;
    hp.prog_fade = 1;
    hp.prog_from = 16;
    assert_int_equal(train_differ_steps("tiny64", &rgb, hp, 5), 0);
}

// A job's own step both ways (finetune: finetune_step against finetune_device_step; distill:
// distill_step against distill_device_step), STEPS steps of free running from trainers built alike
// (seed 11), every difference counted: trainer_differ's, and the job's outputs (the reward, or
// the pixel and feature losses) bit for bit.
typedef struct {
    int distill;
    FinetuneReward *r;
    FinetuneConfig fc;
    const float *theta0;
    Distiller *dist;
    DistillConfig dc;
} Job;

static long job_differ(const char *config, const Job *job, GanTrainer *cuda, GanTrainer *cpu) {
    char err[512], line[600];
    GanCuda gc;
    if (gan_cuda_init(&gc, cuda, err, sizeof err)) fail_msg("%s: gan_cuda_init: %s", config, err);
    TrainDevice td = {.on_gpu = 1, .gc = &gc};
    FinetuneDevice fd;
    DistillDevice dd;
    memset(&fd, 0, sizeof fd);
    memset(&dd, 0, sizeof dd);
    if (job->distill)
        assert_int_equal(distill_device_init(&dd, &td, cuda, job->dist, &job->dc, line, sizeof line),
                         0);
    else
        assert_int_equal(
            finetune_device_init(&fd, &td, cuda, job->r, &job->fc, job->theta0, line, sizeof line),
            0);
    printf("# %s: %s\n", config, line);
    assert_non_null(job->distill ? dd.tu : fd.tu);
    long total = 0;
    for (int s = 1; s <= STEPS; s++) {
        double out_cpu[2] = {0}, out_cuda[2] = {0}; // reward; or pixel and feature losses
        if (job->distill) {
            assert_int_equal(
                distill_step(cpu, job->dist, &job->dc, &fmnist, out_cpu, out_cpu + 1), 0);
            assert_int_equal(distill_device_step(&dd, &td, cuda, &fmnist, out_cuda, out_cuda + 1),
                             0);
        } else {
            assert_int_equal(finetune_step(cpu, job->r, &job->fc, job->theta0, &fmnist, out_cpu), 0);
            assert_int_equal(
                finetune_device_step(&fd, &td, cuda, job->theta0, &fmnist, out_cuda), 0);
        }
        assert_int_equal(gan_cuda_download(&gc, cuda), 0);
        long k = trainer_differ(cuda, cpu);
        if (memcmp(out_cuda, out_cpu, sizeof out_cpu) != 0) {
            printf("#   the job's outputs %.17g, %.17g (cuda) vs %.17g, %.17g (cpu)\n", out_cuda[0],
                   out_cuda[1], out_cpu[0], out_cpu[1]);
            k++;
        }
        printf("# %s %s step %d: %ld differences (%s %.6f, %.6f, loss_g %.6f)\n",
               job->distill ? "distill" : "finetune", config, s, k,
               job->distill ? "pixel, feature" : "reward", out_cpu[0], out_cpu[1], cpu->loss_g);
        total += k;
    }
    finetune_device_free(&fd, &td);
    distill_device_free(&dd, &td);
    gan_cuda_free(&gc);
    return total;
}

// generator/finetune.c's step on the GPU path (finetune_device_step: gan_cuda_tune_step with the
// reward computed on the host from the reward D's maps): the reward D is the starting trainer's
// checkpoint's D, the reward weights made up (the users' fitted model is not what is checked
// here), theta0 the starting G.
static long finetune_differ(const char *config, GanHparams hp) {
    SaganConfig cfg;
    assert_int_equal(sagan_config_lookup(&cfg, config), 0);
    GanTrainer cpu, cuda;
    assert_int_equal(gan_init(&cpu, &cfg, &hp, 11), 0);
    assert_int_equal(gan_init(&cuda, &cfg, &hp, 11), 0);
    char dir[32], ckpt[96], err[512];
    fixture_tmp(dir, ckpt, "reward.safetensors");
    if (gan_save(&cpu, ckpt, err, sizeof err)) fail_msg("%s", err);
    FixtureReward fx;
    Rng wr;
    rng_seed(&wr, 5);
    fixture_reward(&fx, ckpt, BATCH, &wr);
    float *theta0 = CHECK_ALLOC(float, cpu.G.ps.total);
    memcpy(theta0, cpu.G.ps.params, sizeof(float) * cpu.G.ps.total);
    Job job = {.r = &fx.r, .fc = {.beta = 1.0, .lambda = 1e-3}, .theta0 = theta0};
    long total = job_differ(config, &job, &cuda, &cpu);
    fixture_reward_free(&fx);
    free(theta0);
    fixture_tmp_remove(dir, ckpt);
    gan_free(&cuda);
    gan_free(&cpu);
    return total;
}

static void test_finetune(void **state) {
    (void)state;
    assert_int_equal(finetune_differ("tinyc", hparams()), 0);
    assert_int_equal(finetune_differ("tiny", hparams()), 0);
    GanHparams hp = hparams_wd_freezed_ema(0.01f, 1, 0.9f);
    hp.r1_gamma = 1.0f;
    hp.d_dropout = 0.2f;
    hp.l1_act = 0.01f;
    assert_int_equal(finetune_differ("fmnist32c", hp), 0);
}

// generator/distill.c's step on the GPU path (distill_device_step: gan_cuda_tune_step with the
// teacher's G and D on the device): a teacher of twice the student's width, saved and loaded as
// the job loads it.
static long distill_differ(const char *config, GanHparams hp) {
    SaganConfig cfg;
    assert_int_equal(sagan_config_lookup(&cfg, config), 0);
    char dir[32], ckpt[96], err[512];
    fixture_tmp(dir, ckpt, "teacher.safetensors");
    fixture_teacher(&cfg, &hp, ckpt);
    Distiller dist;
    if (distill_init(&dist, ckpt, BATCH, err, sizeof err)) fail_msg("%s", err);
    GanTrainer cpu, cuda;
    assert_int_equal(gan_init(&cpu, &cfg, &hp, 11), 0);
    assert_int_equal(gan_init(&cuda, &cfg, &hp, 11), 0);
    // the three weights apart, so that one used for another shows
    Job job = {.distill = 1, .dist = &dist, .dc = {.w_pix = 1.0, .w_feat = 0.5, .w_adv = 0.1}};
    long total = job_differ(config, &job, &cuda, &cpu);
    distill_free(&dist);
    fixture_tmp_remove(dir, ckpt);
    gan_free(&cuda);
    gan_free(&cpu);
    return total;
}

static void test_distill(void **state) {
    (void)state;
    assert_int_equal(distill_differ("tinyc", hparams()), 0);
    GanHparams hp = hparams_wd_freezed_ema(0.0f, 0, 0.9f);
    hp.d_dropout = 0.2f;
    assert_int_equal(distill_differ("tiny", hp), 0);
}

// G's forward at batch B, latents and labels drawn from seed, both ways; returns the number of
// differing pixels.
static long forward_differ(const char *what, Generator *g, GeneratorCuda *gc, int B,
                           uint64_t seed) {
    const SaganConfig *c = &g->cfg;
    long n = (long)B * c->channels * c->img * c->img;
    float *z = CHECK_ALLOC(float, (long)B * c->z_dim), *img = CHECK_ALLOC(float, n);
    int32_t *y = c->n_classes ? CHECK_ALLOC(int32_t, B) : NULL;
    gan_sample_latents(c, seed, B, -1, z, y);
    assert_int_equal(generator_forward(g, z, y, B), 0);
    assert_int_equal(generator_cuda_forward(gc, z, y, B, img), 0);
    char label[128];
    snprintf(label, sizeof label, "%s G forward, batch %d", what, B);
    long count = bits_differ(label, img, g->img, n);
    free(z), free(img), free(y);
    return count;
}

static void test_forward_shipped(void **state) {
    (void)state;
    Generator g;
    char err[512];
    if (generator_load(&g, "models/fmnist32c.safetensors", 64, err, sizeof err))
        fail_msg("%s", err);
    GeneratorCuda gc;
    if (generator_cuda_init(&gc, &g, 64, err, sizeof err))
        fail_msg("%s", err);
    const int batches[3] = {1, 7, 64};
    long count = 0;
    for (int k = 0; k < 3; k++)
        count += forward_differ("fmnist32c", &g, &gc, batches[k], 5 + k);
    assert_int_equal(count, 0);
    generator_cuda_free(&gc);
    generator_free(&g);
}

static void test_forward_tiny64(void **state) {
    (void)state;
    SaganConfig cfg;
    assert_int_equal(sagan_config_lookup(&cfg, "tiny64"), 0);
    Generator g;
    assert_int_equal(generator_init(&g, &cfg, BATCH, 3), 0);
    gamma_set(&g.ps, g.p_gamma, 0.5f);
    paramset_sn_forward(&g.ps, 0);
    GeneratorCuda gc;
    char err[512];
    if (generator_cuda_init(&gc, &g, BATCH, err, sizeof err))
        fail_msg("%s", err);
    assert_int_equal(forward_differ("tiny64", &g, &gc, BATCH, 11), 0);
    generator_cuda_free(&gc);
    generator_free(&g);
}

static int group_setup(void **state) {
    (void)state;
    const char *dir = getenv("STEER_FMNIST_DIR");
    char err[512];
    if (fmnist_load(&fmnist, dir ? dir : FMNIST_DIR, 0, err, sizeof err)) {
        printf("# %s\n", err);
        return -1;
    }
    // 24 images of a fixed pattern in [-1, 1): enough for a batch of 16 with every class.
    const long per = 3L * 64 * 64;
    rgb = (Dataset){.n = 24, .c = 3, .h = 64, .w = 64, .n_classes = 4};
    rgb.images = CHECK_ALLOC(float, (long)rgb.n *per);
    rgb.labels = CHECK_ALLOC(int32_t, rgb.n);
    for (int i = 0; i < rgb.n; i++) {
        rgb.labels[i] = i % 4;
        for (long k = 0; k < per; k++)
            rgb.images[i * per + k] = (float)((k * 7 + i * 13) % 100) / 50.0f - 1.0f;
    }
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    dataset_free(&fmnist);
    dataset_free(&rgb);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_train_tinyc),     cmocka_unit_test(test_train_tiny),
        cmocka_unit_test(test_train_fmnist32c), cmocka_unit_test(test_train_fmnist32),
        cmocka_unit_test(test_train_tiny64),    cmocka_unit_test(test_train_wd_freezed_ema),
        cmocka_unit_test(test_train_techniques), cmocka_unit_test(test_finetune),
        cmocka_unit_test(test_distill),          cmocka_unit_test(test_train_progressive),
        cmocka_unit_test(test_forward_shipped),
        cmocka_unit_test(test_forward_tiny64),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
