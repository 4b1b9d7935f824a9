// finetune.c — fine-tuning G toward the users' reward (finetune.h).
#include "server/finetune.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "generator/gan_cuda.h"
#include "kernels/kernels.h"
#include "kernels/ops.h"

#define FINETUNE_POOL 2048 // the learning thread's pool size: the same calibration of features

int finetune_reward_init(FinetuneReward *r, const char *ckpt, const char *db_path, char *err,
                         size_t errlen) {
    memset(r, 0, sizeof *r);
    // never refitted on its own (every 2^40 feedback): refitted once below on all it holds
    // frames of every model version are redrawn with their own G (found in the registry); the
    // version of ckpt itself is not known here, so its frames too come from the registry's file
    if (learn_load(&r->learn, ckpt, UINT64_MAX, db_path, FINETUNE_POOL, 1L << 40, err, errlen))
        return -1;
    Learner *pop = &r->learn.pop;
    if (pop->n == 0) {
        snprintf(err, errlen, "%s holds no feedback to fine-tune on", db_path);
        return -1;
    }
    int rc = learner_update(pop, &r->learn.scratch, NULL);
    if (rc) {
        snprintf(err, errlen, "fitting the users' reward model: %s", reward_strerror(rc));
        return -1;
    }
    Features *f = &r->learn.feat;
    int Fd;
    discriminator_features(&f->d, &Fd);
    r->w = malloc((size_t)f->F * sizeof(double));
    r->phi = malloc((size_t)f->max_B * f->F * sizeof(float));
    r->dfeat = malloc((size_t)f->max_B * Fd * sizeof(float));
    if (!r->w || !r->phi || !r->dfeat) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    memcpy(r->w, pop->rm.mean_weights, (size_t)f->F * sizeof(double));
    r->r0 = 0;
    for (int k = 0; k < f->F; k++) r->r0 += r->w[k] * r->learn.pool.neutral[k];
    r->comparisons = pop->n;
    r->accuracy = pop->params.accuracy;
    return 0;
}

void finetune_reward_free(FinetuneReward *r) {
    learn_close(&r->learn);
    free(r->w);
    free(r->phi);
    free(r->dfeat);
    memset(r, 0, sizeof *r);
}

// The rewards of B frames whose features are in r->phi, into out (B): the Bradley-Terry
// probability that the users prefer each frame to the average frame, sigma(w . phi(x) - w .
// neutral).
static void rewards_of_phi(const FinetuneReward *r, int B, double *out) {
    const Features *f = &r->learn.feat;
    for (int b = 0; b < B; b++) {
        double s = -r->r0;
        for (int k = 0; k < f->F; k++) s += r->w[k] * r->phi[(long)b * f->F + k];
        out[b] = 1.0 / (1.0 + exp(-s));
    }
}

// Rewards of B <= max_B frames (img, classes y) into out (B); D's last forward is then theirs.
static int rewards(FinetuneReward *r, const float *img, const int32_t *y, int B, double *out) {
    int rc = features_compute(&r->learn.feat, img, y, B, r->phi);
    if (rc) return rc;
    rewards_of_phi(r, B, out);
    return 0;
}

// The reward term's gradient w.r.t. the reward D's last maps, dfeat (B, D's feature size), from
// the frames' rewards rb (B): L_r = -beta mean log p, p = sigma(s), with s = sum_c w_c ds istd_c
// (mean_k map_ck - mean_c) + class term - r0, so dL_r/dmap_ck = -beta / B (1 - p) w_c ds istd_c /
// hw: a frame already clearly liked stops pulling (no runaway).
static void reward_dfeat(const FinetuneReward *r, const FinetuneConfig *c, const double *rb, int B,
                         float *dfeat) {
    const Features *f = &r->learn.feat;
    int Fd, Dc = f->d_ch;
    discriminator_features(&f->d, &Fd);
    int hw = Fd / Dc;
    float ds = f->d_scale / sqrtf((float)Dc);
    for (int b = 0; b < B; b++)
        for (int ch = 0; ch < Dc; ch++) {
            float g = (float)(-c->beta / B * (1.0 - rb[b]) * r->w[ch]) * ds * f->istd[ch] / (float)hw;
            for (int k = 0; k < hw; k++) dfeat[(long)b * Fd + (long)ch * hw + k] = g;
        }
}

int finetune_measure(FinetuneReward *r, Generator *g, long n, double *mean_reward) {
    const SaganConfig *c = &g->cfg;
    int B = r->learn.feat.max_B < g->max_B ? r->learn.feat.max_B : g->max_B;
    float *z = malloc((size_t)n * c->z_dim * sizeof(float));
    int32_t *y = malloc((size_t)n * sizeof(int32_t));
    double *rb = malloc((size_t)B * sizeof(double)), sum = 0;
    int rc = z && y && rb ? 0 : KERNELS_ENOMEM;
    if (!rc) gan_sample_latents(c, 7, n, -1, z, c->n_classes ? y : NULL);
    if (!rc && !c->n_classes) memset(y, 0, (size_t)n * sizeof(int32_t));
    for (long i = 0; !rc && i < n; i += B) {
        int b = (int)(n - i < B ? n - i : B);
        rc = generator_forward(g, z + i * c->z_dim, c->n_classes ? y + i : NULL, b);
        if (!rc) rc = rewards(r, g->img, c->n_classes ? y + i : NULL, b, rb);
        for (int k = 0; !rc && k < b; k++) sum += rb[k];
    }
    *mean_reward = sum / (double)n;
    free(z);
    free(y);
    free(rb);
    return rc;
}

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        int rc_ = (x);                                                                             \
        if (rc_) return rc_;                                                                       \
    } while (0)

int finetune_step(GanTrainer *t, FinetuneReward *r, const FinetuneConfig *c, const float *theta0,
                  const Dataset *data, double *reward) {
    const SaganConfig *cfg = &t->cfg;
    Features *f = &r->learn.feat;
    int B = t->hp.batch, Z = cfg->z_dim;
    if (B > f->max_B) return KERNELS_EINVAL;
    long img = (long)cfg->channels * cfg->img * cfg->img;
    CHECK(gan_d_step(t, data)); // D keeps judging realism as G moves

    // G: fresh latents and classes from the trainer's RNG
    rng_normal(&t->rng, t->z, (long)B * Z);
    for (int b = 0; b < B; b++) t->y[B + b] = cfg->n_classes ? (int32_t)rng_below(&t->rng, (uint32_t)cfg->n_classes) : 0;
    const int32_t *y = cfg->n_classes ? t->y + B : NULL;
    paramset_sn_forward(&t->G.ps, 1);
    CHECK(generator_forward(&t->G, t->z, y, B));
    // the adversarial term against the training D
    paramset_sn_forward(&t->D.ps, 1);
    CHECK(discriminator_forward(&t->D, t->G.img, y, B));
    t->loss_g = hinge_g_loss(t->dlogits, t->D.out, B);
    memset(t->dimg, 0, (size_t)B * img * sizeof(float));
    CHECK(discriminator_backward(&t->D, t->dlogits, B, 0, t->dimg));
    // the reward term through the frozen reward D (reward_dfeat)
    double rb[B], sum = 0;
    CHECK(rewards(r, t->G.img, y, B, rb));
    for (int b = 0; b < B; b++) sum += rb[b];
    *reward = sum / B;
    reward_dfeat(r, c, rb, B, r->dfeat);
    CHECK(discriminator_backward_features(&f->d, r->dfeat, B, t->dimg));
    // G's gradient, plus the anchor lambda (theta - theta0) on the raw parameters
    paramset_zero_grad(&t->G.ps);
    CHECK(generator_backward(&t->G, t->dimg, B));
    paramset_sn_backward(&t->G.ps);
    float lam = (float)c->lambda;
    for (long i = 0; i < t->G.ps.total; i++) t->G.ps.grads[i] += lam * (t->G.ps.params[i] - theta0[i]);
    paramset_adam(&t->G.ps, t->hp.lr_g, t->hp.beta1, t->hp.beta2, t->hp.eps, t->hp.weight_decay_g);
    gan_g_step_done(t);
    return 0;
}

// ---------------------------------------------------------------------------------------------
// on the GPU

#ifdef STEER_CUDA
// gan_cuda_tune_step's loss: the reward term of finetune_step, from the reward D's maps of the
// frames (computed on the device).
static int reward_loss(void *ctx, const float *feat, const int32_t *y, int B, float *dfeat) {
    FinetuneDevice *fd = ctx;
    FinetuneReward *r = fd->r;
    if (B > r->learn.feat.max_B) return KERNELS_EINVAL;
    features_from_maps(&r->learn.feat, feat, y, B, r->phi);
    double rb[B], sum = 0;
    rewards_of_phi(r, B, rb);
    for (int b = 0; b < B; b++) sum += rb[b];
    fd->reward = sum / B;
    reward_dfeat(r, &fd->c, rb, B, dfeat);
    return 0;
}
#endif

int finetune_device_init(FinetuneDevice *fd, TrainDevice *td, GanTrainer *t, FinetuneReward *r,
                         const FinetuneConfig *c, const float *theta0, char *line, size_t len) {
    memset(fd, 0, sizeof *fd);
    fd->r = r;
    fd->c = *c;
    snprintf(line, len, "fine-tuning on the CPU");
    if (!td->on_gpu) return 0;
#ifdef STEER_CUDA
    char err[400] = "out of memory";
    GanCudaTune *tu = t->hp.prog_stable > 0 ? NULL : calloc(1, sizeof *tu);
    if (t->hp.prog_stable > 0) snprintf(err, sizeof err, "a progressive schedule");
    if (tu && t->hp.batch <= r->learn.feat.max_B &&
        !gan_cuda_tune_init(tu, td->gc, &r->learn.feat.d, theta0, err, sizeof err)) {
        tu->loss = reward_loss;
        tu->ctx = fd;
        tu->lambda = (float)c->lambda;
        fd->tu = tu;
        snprintf(line, len, "fine-tuning on the GPU (the reward on the host)");
        return 0;
    }
    if (tu && t->hp.batch > r->learn.feat.max_B) snprintf(err, sizeof err, "batch too large");
    free(tu);
    snprintf(line, len, "fine-tuning on the CPU (the reward D cannot go on the GPU: %s)", err);
    return train_device_to_cpu(td, t);
#else
    (void)t, (void)theta0;
    return 0;
#endif
}

int finetune_device_step(FinetuneDevice *fd, TrainDevice *td, GanTrainer *t, const float *theta0,
                         const Dataset *data, double *reward) {
#ifdef STEER_CUDA
    if (fd->tu && td->on_gpu) {
        int rc = gan_cuda_tune_step(td->gc, fd->tu, t, data);
        if (!rc) *reward = fd->reward;
        return rc;
    }
#endif
    (void)td;
    return finetune_step(t, fd->r, &fd->c, theta0, data, reward);
}

void finetune_device_free(FinetuneDevice *fd, TrainDevice *td) {
#ifdef STEER_CUDA
    if (fd->tu && td->gc) gan_cuda_tune_free(fd->tu, td->gc);
    free(fd->tu);
#endif
    (void)td;
    memset(fd, 0, sizeof *fd);
}
