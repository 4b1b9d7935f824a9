// finetune.c — fine-tuning G toward the users' reward (finetune.h).
#include "generator/finetune.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "generator/gan_cuda.h"
#include "kernels/kernels.h"
#include "kernels/ops.h"

// rewards rb (B) of B <= r->max_B frames img with classes y (NULL: unconditional) from a forward
// of the reward D; with dmaps, their gradient too (FinetuneReward.score). D's last forward is then
// theirs, for the backward to the frames.
static int rewards(FinetuneReward *r, const float *img, const int32_t *y, int B, double beta,
                   double *rb, float *dmaps) {
    int32_t zeros[B];
    const int32_t *yd = y; // a conditional reward D asked about unconditional frames: class 0
    if (!y && r->d->cfg.n_classes) {
        memset(zeros, 0, sizeof zeros);
        yd = zeros;
    }
    int rc = discriminator_forward(r->d, img, r->d->cfg.n_classes ? yd : NULL, B);
    if (rc) return rc;
    int Fd;
    const float *maps = discriminator_features(r->d, &Fd);
    return r->score(r->ctx, maps, y, B, beta, rb, dmaps);
}

int finetune_measure(FinetuneReward *r, Generator *g, long n, double *mean_reward) {
    const SaganConfig *c = &g->cfg;
    int B = r->max_B < g->max_B ? r->max_B : g->max_B;
    float *z = malloc((size_t)n * c->z_dim * sizeof(float));
    int32_t *y = malloc((size_t)n * sizeof(int32_t));
    double *rb = malloc((size_t)B * sizeof(double)), sum = 0;
    int rc = z && y && rb ? 0 : KERNELS_ENOMEM;
    if (!rc) gan_sample_latents(c, 7, n, -1, z, c->n_classes ? y : NULL);
    if (!rc && !c->n_classes) memset(y, 0, (size_t)n * sizeof(int32_t));
    for (long i = 0; !rc && i < n; i += B) {
        int b = (int)(n - i < B ? n - i : B);
        rc = generator_forward(g, z + i * c->z_dim, c->n_classes ? y + i : NULL, b);
        if (!rc) rc = rewards(r, g->img, c->n_classes ? y + i : NULL, b, 0, rb, NULL);
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
    int B = t->hp.batch, Z = cfg->z_dim;
    if (B > r->max_B) return KERNELS_EINVAL;
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
    // the reward term through the frozen reward D
    double rb[B], sum = 0;
    CHECK(rewards(r, t->G.img, y, B, c->beta, rb, r->dmaps));
    for (int b = 0; b < B; b++) sum += rb[b];
    *reward = sum / B;
    CHECK(discriminator_backward_features(r->d, r->dmaps, B, t->dimg));
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
    if (B > r->max_B) return KERNELS_EINVAL;
    double rb[B], sum = 0;
    int rc = r->score(r->ctx, feat, y, B, fd->c.beta, rb, dfeat);
    if (rc) return rc;
    for (int b = 0; b < B; b++) sum += rb[b];
    fd->reward = sum / B;
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
    if (tu && t->hp.batch <= r->max_B &&
        !gan_cuda_tune_init(tu, td->gc, r->d, theta0, err, sizeof err)) {
        tu->loss = reward_loss;
        tu->ctx = fd;
        tu->lambda = (float)c->lambda;
        fd->tu = tu;
        snprintf(line, len, "fine-tuning on the GPU (the reward on the host)");
        return 0;
    }
    if (tu && t->hp.batch > r->max_B) snprintf(err, sizeof err, "batch too large");
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
