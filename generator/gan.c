// gan.c — SN-GAN training iteration and the checkpoint format of a training run.
//
// The iteration mirrors bench/torch_sagan.py step for step (so the speed comparison is fair):
// D step on a real and a fake batch with the hinge loss, then a G step on fresh latents. The real
// and fake batches go through D in one pass of 2B images (same weights, bigger GEMMs). The
// training techniques of docs/training.md are switches of GanHparams, all off by default, so a
// default run is the plain SN-GAN above bit for bit. Not here: the networks (sagan.c), the file
// format itself (safetensors.c), the command line (cli.c).
#include "generator/gan.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "generator/safetensors.h"
#include "kernels/conv.h"
#include "kernels/kernels.h"
#include "kernels/ops.h"
#include "kernels/regularize.h"
#include "kernels/specnorm.h"

#define GAN_FORMAT "steer.sagan.v1"

void gan_hparams_default(GanHparams *hp) {
    *hp = (GanHparams){.lr_g = 1e-4f, .lr_d = 4e-4f, .beta1 = 0.0f, .beta2 = 0.9f, .eps = 1e-8f,
                       .batch = 64, .sn_g = 1, .sn_d = 1, .penalty_every = 1,
                       .penalty_fd_step = 0.1f, .prog_from = 8};
}

// ---------------------------------------------------------------------------------------------
// hyperparameters as strings: one table for gan_hparams_set, the checkpoint metadata and help

typedef enum { HP_FLOAT, HP_INT, HP_LONG, HP_BOOL } HpType;

typedef struct {
    const char *key;
    HpType type;
    size_t off;
    double lo, hi;     // accepted range, inclusive
    int required;      // must be in a checkpoint's metadata (older checkpoints lack the others)
    int alias;         // "weight_decay": sets both networks' decay, not stored itself
    const char *help;
} HpKey;

#define HP(field) offsetof(GanHparams, field)
static const HpKey HP_KEYS[] = {
    {"lr_g", HP_FLOAT, HP(lr_g), 0, 10, 1, 0, "G's Adam learning rate"},
    {"lr_d", HP_FLOAT, HP(lr_d), 0, 10, 1, 0, "D's Adam learning rate"},
    {"beta1", HP_FLOAT, HP(beta1), 0, 0.9999, 1, 0, "Adam beta1 (both networks)"},
    {"beta2", HP_FLOAT, HP(beta2), 0, 0.9999, 1, 0, "Adam beta2 (both networks)"},
    {"eps", HP_FLOAT, HP(eps), 0, 1, 1, 0, "Adam epsilon"},
    {"batch", HP_INT, HP(batch), 1, 65536, 1, 0, "batch size (real and fake images per step)"},
    {"weight_decay", HP_FLOAT, HP(weight_decay_g), 0, 1, 0, 1, "sets weight_decay_g and _d"},
    {"weight_decay_g", HP_FLOAT, HP(weight_decay_g), 0, 1, 0, 0,
     "G's AdamW decoupled decay (weight_decay sets both)"},
    {"weight_decay_d", HP_FLOAT, HP(weight_decay_d), 0, 1, 0, 0, "D's AdamW decoupled decay"},
    {"sn_g", HP_BOOL, HP(sn_g), 0, 1, 0, 0, "spectral norm on G's weights"},
    {"sn_d", HP_BOOL, HP(sn_d), 0, 1, 0, 0, "spectral norm on D's weights"},
    {"r1_gamma", HP_FLOAT, HP(r1_gamma), 0, 1e6, 0, 0, "R1 penalty weight gamma (0: off)"},
    {"gp_lambda", HP_FLOAT, HP(gp_lambda), 0, 1e6, 0, 0, "WGAN-GP penalty weight (0: off)"},
    {"penalty_every", HP_INT, HP(penalty_every), 1, 1e6, 0, 0,
     "R1/GP every N steps, weight x N (lazy regularization)"},
    {"penalty_fd_step", HP_FLOAT, HP(penalty_fd_step), 1e-6, 1, 0, 0,
     "image-space length of R1/GP's finite-difference step"},
    {"ortho_beta", HP_FLOAT, HP(ortho_beta), 0, 1e3, 0, 0,
     "orthogonal regularization weight on G (0: off)"},
    {"l1_act", HP_FLOAT, HP(l1_act), 0, 1e3, 0, 0, "L1 weight on G's block outputs (0: off)"},
    {"d_dropout", HP_FLOAT, HP(d_dropout), 0, 0.99, 0, 0,
     "dropout rate on D's last features (0: off)"},
    {"ema_decay", HP_FLOAT, HP(ema_decay), 0, 0.999999, 0, 0, "EMA decay of G (0: off)"},
    {"ema_start", HP_LONG, HP(ema_start), 0, 1e15, 0, 0, "steps before the EMA starts averaging"},
    {"prog_stable", HP_LONG, HP(prog_stable), 0, 1e15, 0, 0,
     "progressive growing: steps at each resolution (0: off)"},
    {"prog_fade", HP_LONG, HP(prog_fade), 0, 1e15, 0, 0,
     "progressive growing: steps of each fade-in"},
    {"prog_from", HP_INT, HP(prog_from), 8, 1024, 0, 0,
     "progressive growing: the first resolution (8, 16, ...)"},
    {"freeze_d", HP_INT, HP(freeze_d), 0, SAGAN_MAX_STAGES + 2, 0, 0,
     "D layers frozen from the input side (FreezeD)"},
};
#define HP_NKEYS ((int)(sizeof HP_KEYS / sizeof HP_KEYS[0]))

static const HpKey *hp_find(const char *key) {
    for (int i = 0; i < HP_NKEYS; i++)
        if (!strcmp(HP_KEYS[i].key, key)) return &HP_KEYS[i];
    return NULL;
}

const char *gan_hparams_key(int i, const char **help) {
    for (int k = 0; k < HP_NKEYS; k++) {
        if (HP_KEYS[k].alias) continue;
        if (i-- == 0) {
            if (help) *help = HP_KEYS[k].help;
            return HP_KEYS[k].key;
        }
    }
    return NULL;
}

int gan_hparams_set(GanHparams *hp, const char *key, const char *value, char *err, size_t errlen) {
    const HpKey *k = key ? hp_find(key) : NULL;
    if (!k) {
        snprintf(err, errlen, "unknown training switch '%s' (known: lr_g, lr_d, beta1, beta2, eps, "
                 "batch, weight_decay[_g|_d], sn_g, sn_d, r1_gamma, gp_lambda, penalty_every, "
                 "penalty_fd_step, ortho_beta, l1_act, d_dropout, ema_decay, ema_start, freeze_d, "
                 "prog_stable, prog_fade, prog_from)",
                 key ? key : "(null)");
        return -1;
    }
    if (!value) value = "";
    char *end;
    void *dst = (char *)hp + k->off;
    if (k->type == HP_BOOL) {
        static const char *yes[] = {"1", "true", "on", "yes"}, *no[] = {"0", "false", "off", "no"};
        for (int i = 0; i < 4; i++) {
            if (!strcasecmp(value, yes[i])) return *(int *)dst = 1, 0;
            if (!strcasecmp(value, no[i])) return *(int *)dst = 0, 0;
        }
        snprintf(err, errlen, "training switch %s = '%s': expected 1/0, true/false, on/off", key,
                 value);
        return -1;
    }
    if (k->type == HP_FLOAT) {
        errno = 0;
        float v = strtof(value, &end); // strtof: the "%.9g" of a float reads back exactly
        if (errno || end == value || *end || !(v >= k->lo && v <= k->hi)) {
            snprintf(err, errlen, "training switch %s = '%s': expected a number in [%g, %g]", key,
                     value, k->lo, k->hi);
            return -1;
        }
        *(float *)dst = v;
        if (k->alias) hp->weight_decay_d = v;
        return 0;
    }
    errno = 0;
    long long v = strtoll(value, &end, 10);
    if (errno || end == value || *end || v < (long long)k->lo || v > (long long)k->hi) {
        snprintf(err, errlen, "training switch %s = '%s': expected an integer in [%.0f, %.0f]", key,
                 value, k->lo, k->hi);
        return -1;
    }
    if (k->type == HP_INT)
        *(int *)dst = (int)v;
    else
        *(long *)dst = (long)v;
    return 0;
}

int gan_hparams_get(const GanHparams *hp, const char *key, char *buf, size_t len) {
    const HpKey *k = hp_find(key);
    if (!k) return -1;
    const void *src = (const char *)hp + k->off;
    switch (k->type) {
    case HP_FLOAT: snprintf(buf, len, "%.9g", *(const float *)src); break;
    case HP_INT:
    case HP_BOOL: snprintf(buf, len, "%d", *(const int *)src); break;
    case HP_LONG: snprintf(buf, len, "%ld", *(const long *)src); break;
    }
    return 0;
}

// Hyperparameters from a checkpoint's metadata: the required keys must be there, the others
// (added with the techniques; "weight_decay" alone in older files) keep their defaults.
static int hparams_from_meta(const StFile *f, GanHparams *h, char *err, size_t errlen) {
    gan_hparams_default(h);
    char why[512];
    // a weights-only file (no training state, e.g. from PyTorch) may leave every key out
    int whole = safetensors_find(f, "train.step") != NULL;
    for (int i = 0; i < HP_NKEYS; i++) {
        const HpKey *k = &HP_KEYS[i];
        const char *s = safetensors_meta(f, k->key);
        if (!s) {
            if (k->required && whole)
                return snprintf(err, errlen, "%s: metadata has no '%s'", f->path, k->key), -1;
            continue;
        }
        if (gan_hparams_set(h, k->key, s, why, sizeof why))
            return snprintf(err, errlen, "%s: metadata: %s", f->path, why), -1;
    }
    return 0;
}

int gan_hparams_check(const GanHparams *hp, char *err, size_t errlen) {
    if (hp->prog_stable > 0 && (hp->r1_gamma > 0.0f || hp->gp_lambda > 0.0f || hp->freeze_d > 0)) {
        snprintf(err, errlen, "progressive growing (prog_stable) does not go with %s",
                 hp->freeze_d > 0 ? "freeze_d" : "r1_gamma or gp_lambda");
        return -1;
    }
    if (hp->prog_stable > 0 && (hp->prog_from & (hp->prog_from - 1))) {
        snprintf(err, errlen, "prog_from %d: must be a power of two (8, 16, ...)", hp->prog_from);
        return -1;
    }
    return 0;
}

// The schedule: prog_stable steps at the first level, then for each next level prog_fade steps
// of fade-in (alpha = (i + 1) / prog_fade at its i-th step) and prog_stable steps at it; the last
// level lasts for ever.
void gan_prog_level(const GanHparams *hp, int n_stages, long step, int *level, float *alpha) {
    *level = n_stages;
    *alpha = 1.0f;
    if (hp->prog_stable <= 0) return;
    int L = 1;
    while (L < n_stages && (4 << L) < hp->prog_from) L++;
    long t = step;
    for (;; L++) {
        if (L >= n_stages) return;
        if (t < hp->prog_stable) {
            *level = L;
            return;
        }
        t -= hp->prog_stable;
        if (t < hp->prog_fade) {
            *level = L + 1;
            *alpha = (float)((double)(t + 1) / (double)hp->prog_fade);
            return;
        }
        t -= hp->prog_fade;
    }
}

long gan_prog_steps(const GanHparams *hp, int n_stages) {
    if (hp->prog_stable <= 0) return 0;
    int L = 1;
    while (L < n_stages && (4 << L) < hp->prog_from) L++;
    return (long)(n_stages - L) * (hp->prog_stable + hp->prog_fade);
}

int gan_hparams_load(GanHparams *hp, const char *path, char *err, size_t errlen) {
    StFile f = {0};
    int rc = safetensors_read(&f, path, err, errlen);
    if (!rc) rc = hparams_from_meta(&f, hp, err, errlen);
    safetensors_free(&f);
    return rc;
}

// ---------------------------------------------------------------------------------------------
// the trainer

// D's layers from the input side, as FreezeD counts them: 0 conv0, k + 1 blocks.k (with the
// attention block that follows it), n_stages + 1 the head (fc and the projection embedding).
static int discriminator_layer_of(const Discriminator *d, int i) {
    if (i == d->p_in_w || i == d->p_in_b) return 0;
    for (int k = 0; k < d->n_stages; k++)
        if (i == d->p_conv_w[k] || i == d->p_conv_b[k]) return k + 1;
    if (i == d->p_f || i == d->p_g || i == d->p_h || i == d->p_o || i == d->p_gamma)
        return d->attn_stage + 1;
    return d->n_stages + 1;
}

int generator_is_ortho(const Generator *g, int i) {
    const Param *p = &g->ps.p[i];
    return !p->is_bias && p->ndim >= 2 && i != g->p_embed;
}

// Pushes the switches of t->hp into the networks (cheap; gan_step calls it every step, so a
// caller may change t->hp between steps).
void gan_apply_switches(GanTrainer *t) {
    const GanHparams *h = &t->hp;
    if (t->G.ps.sn_off != !h->sn_g) {
        t->G.ps.sn_off = !h->sn_g;
        paramset_sn_forward(&t->G.ps, 0);
    }
    if (t->D.ps.sn_off != !h->sn_d) {
        t->D.ps.sn_off = !h->sn_d;
        paramset_sn_forward(&t->D.ps, 0);
    }
    t->G.l1_act = h->l1_act;
    t->D.dropout = h->d_dropout;
    for (int i = 0; i < t->D.ps.n; i++)
        t->D.ps.p[i].frozen = discriminator_layer_of(&t->D, i) < h->freeze_d;
}

// The EMA starts as a copy of G (and restarts as one until ema_start steps are done).
static void gan_ema_copy(GanTrainer *t) {
    const ParamSet *ps = &t->G.ps;
    memcpy(t->ema, ps->params, ps->total * sizeof(float));
    memcpy(t->ema_u, ps->sn_u, ps->u_total * sizeof(float));
    memcpy(t->ema_v, ps->sn_v, ps->v_total * sizeof(float));
    t->ema_live = 1;
}

int gan_penalty_buffers_init(GanPenaltyBuffers *pb, const Discriminator *d, int B) {
    const SaganConfig *cfg = &d->cfg;
    long img = (long)cfg->channels * cfg->img * cfg->img;
    memset(pb, 0, sizeof *pb);
    pb->max_B = B;
    pb->pattern = params_zalloc(sizeof(float) * 2 * B * discriminator_pattern_floats(d));
    pb->grad = params_zalloc(sizeof(float) * B * img);
    pb->x2 = params_zalloc(sizeof(float) * 2 * B * img);
    pb->x_hat = params_zalloc(sizeof(float) * B * img);
    pb->dout = params_zalloc(sizeof(float) * 2 * B);
    pb->y2 = params_zalloc(sizeof(int32_t) * 2 * B);
    return pb->grad && pb->x2 && pb->x_hat && pb->dout && pb->y2 && pb->pattern ? 0 : -1;
}

void gan_penalty_buffers_free(GanPenaltyBuffers *pb) {
    free(pb->grad);
    free(pb->x2);
    free(pb->x_hat);
    free(pb->dout);
    free(pb->y2);
    free(pb->pattern);
    memset(pb, 0, sizeof *pb);
}

int gan_init(GanTrainer *t, const SaganConfig *cfg_in, const GanHparams *hp, uint64_t seed) {
    memset(t, 0, sizeof *t);
    t->cfg = *cfg_in;
    if (hp->prog_stable > 0) t->cfg.prog = 1;
    const SaganConfig *cfg = &t->cfg;
    t->hp = *hp;
    int B = hp->batch;
    long img = (long)cfg->channels * cfg->img * cfg->img;
    t->level = sagan_stages(cfg);
    t->alpha = 1.0f;
    t->dp_size = 1;
    // Three independent streams from one seed: G's init, D's init, and training's draws.
    if (generator_init(&t->G, cfg, B, seed * 3 + 1)) return -1;
    if (discriminator_init(&t->D, cfg, 2 * B, seed * 3 + 2)) return -1;
    rng_seed(&t->rng, seed * 3 + 3);
    // D's dropout masks have a stream of their own, so switching dropout on leaves every other
    // draw of the run where it was.
    Rng r;
    rng_seed(&r, seed ^ 0x64726f706f7574ULL);
    t->D.dropout_seed = rng_u64(&r);
    t->z = params_zalloc(sizeof(float) * B * cfg->z_dim);
    t->y = params_zalloc(sizeof(int32_t) * 2 * B);
    t->x = params_zalloc(sizeof(float) * 2 * B * img);
    t->dlogits = params_zalloc(sizeof(float) * 2 * B);
    t->dimg = params_zalloc(sizeof(float) * B * img);
    if (!t->z || !t->y || !t->x || !t->dlogits || !t->dimg) return -1;
    if (cfg->prog) {
        t->real = params_zalloc(sizeof(float) * B * img);
        t->pool_a = params_zalloc(sizeof(float) * B * img);
        t->pool_b = params_zalloc(sizeof(float) * B * img);
        if (!t->real || !t->pool_a || !t->pool_b) return -1;
    }
    if (gan_penalty_buffers_init(&t->pen, &t->D, B)) return -1;
    // The techniques' buffers are small beside the activations, so they exist whatever the
    // switches say and a switch can be turned on at any step.
    const ParamSet *gps = &t->G.ps;
    long ortho = 1;
    for (int i = 0; i < gps->n; i++)
        if (generator_is_ortho(&t->G, i)) {
            long k = ortho_scratch_floats(gps->p[i].shape[0],
                                          (int)(gps->p[i].numel / gps->p[i].shape[0]));
            if (k > ortho) ortho = k;
        }
    t->ortho_scratch = params_zalloc(sizeof(float) * ortho);
    t->ema = params_zalloc(sizeof(float) * gps->total);
    t->ema_u = params_zalloc(sizeof(float) * gps->u_total);
    t->ema_v = params_zalloc(sizeof(float) * gps->v_total);
    t->ema_w_sn = params_zalloc(sizeof(float) * gps->total);
    if (!t->ortho_scratch || !t->ema || !t->ema_u || !t->ema_v || !t->ema_w_sn) return -1;
    gan_apply_switches(t);
    gan_ema_copy(t);
    return 0;
}

void gan_free(GanTrainer *t) {
    generator_free(&t->G);
    discriminator_free(&t->D);
    free(t->z);
    free(t->y);
    free(t->x);
    free(t->dlogits);
    free(t->dimg);
    gan_penalty_buffers_free(&t->pen);
    free(t->ortho_scratch);
    free(t->ema);
    free(t->ema_u);
    free(t->ema_v);
    free(t->ema_w_sn);
    free(t->real);
    free(t->pool_a);
    free(t->pool_b);
    t->real = t->pool_a = t->pool_b = NULL;
    t->z = t->x = t->dlogits = t->dimg = NULL;
    t->y = NULL;
    t->ortho_scratch = t->ema = t->ema_u = t->ema_v = t->ema_w_sn = NULL;
}

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        int rc_ = (x);                                                                             \
        if (rc_) return rc_;                                                                       \
    } while (0)

// This process's share of a step's batch (data parallel: hp.batch / dp_size), and where its slice
// starts in the whole batch.
static int gan_local_batch(const GanTrainer *t) { return t->hp.batch / t->dp_size; }
static int gan_local_first(const GanTrainer *t) { return t->dp_rank * gan_local_batch(t); }

// Latents and (conditional) labels for the whole batch's fakes, from the trainer's stream; y gets
// this process's slice of the labels. Returns this process's slice of the latents (in t->z).
static const float *draw_fakes(GanTrainer *t, int32_t *y) {
    int B_all = t->hp.batch, first = gan_local_first(t), B = gan_local_batch(t);
    rng_normal(&t->rng, t->z, (long)B_all * t->cfg.z_dim);
    if (t->cfg.n_classes)
        for (int b = 0; b < B_all; b++) {
            int32_t k = (int32_t)rng_below(&t->rng, t->cfg.n_classes);
            if (b >= first && b < first + B) y[b - first] = k;
        }
    return t->z + (long)first * t->cfg.z_dim;
}

// Averages a network's gradient (and the step's losses) over the data-parallel processes.
static int gan_reduce(GanTrainer *t, ParamSet *ps, float *losses, int n_losses) {
    if (t->dp_size <= 1 || !t->grad_reduce) return 0;
    if (t->grad_reduce(t->reduce_ctx, ps->grads, ps->total) ||
        (n_losses && t->grad_reduce(t->reduce_ctx, losses, n_losses)))
        return KERNELS_EINVAL;
    return 0;
}

// The finite-difference double backward. With g_b = grad_x D(x_b) held fixed,
// grad_theta (g_b . grad_x D(x_b)) = J_b^T g_b (J_b = d g_b / d theta), which is the gradient of
// 1/2 ||g_b||^2; and g_b . grad_x D(x_b) is the directional derivative of D along g_b, so
// J_b^T g_b ~ [grad_theta D(x_b + e_b g_b) - grad_theta D(x_b - e_b g_b)] / (2 e_b), error O(e^2)
// where D is smooth. e_b = fd_step / ||g_b|| makes every step the same length in image space.
// Both sides go through D as one batch of 2B with output gradients +-c_b / (2 e_b), so the two
// passes' parameter gradients cancel inside one GEMM reduction.
// In FP32 whatever the BF16 mode (conv2d_fp32_hold): the difference quotient divides the two
// sides' difference by 2e, and bf16's rounding of inputs is about as large as the step (measured
// on fmnist32: R1's gradient 15% off FP32's in BF16, against 1.9% for D's plain gradient).
static int penalty_backward_fp32(Discriminator *d, GanPenaltyBuffers *pb, GanPenaltyKind kind,
                                 float weight, float fd_step, const float *x, const int32_t *y,
                                 int B, double *value);

int gan_penalty_backward(Discriminator *d, GanPenaltyBuffers *pb, GanPenaltyKind kind,
                         float weight, float fd_step, const float *x, const int32_t *y, int B,
                         double *value) {
    int held = conv2d_fp32_hold(1);
    int rc = penalty_backward_fp32(d, pb, kind, weight, fd_step, x, y, B, value);
    conv2d_fp32_hold(held);
    return rc;
}

static int penalty_backward_fp32(Discriminator *d, GanPenaltyBuffers *pb, GanPenaltyKind kind,
                                 float weight, float fd_step, const float *x, const int32_t *y,
                                 int B, double *value) {
    const SaganConfig *c = &d->cfg;
    long img = (long)c->channels * c->img * c->img;
    if (B < 1 || 2 * B > d->max_B || B > pb->max_B || !(fd_step > 0.0f)) return KERNELS_EINVAL;
    int train = d->train, rc;
    d->train = 0;
    // D's output for one image depends on that image alone, so one backward of sum_b D(x_b)
    // gives every g_b.
    for (int b = 0; b < B; b++) pb->dout[b] = 1.0f;
    memset(pb->grad, 0, B * img * sizeof(float));
    if ((rc = discriminator_forward(d, x, y, B)) ||
        (rc = discriminator_backward(d, pb->dout, B, 0, pb->grad)))
        goto done;
    double v = grad_penalty_fd_prepare(pb->x2, pb->dout, pb->grad, x, kind == GAN_PENALTY_R1,
                                       weight, fd_step, B, img);
    if (y)
        for (int b = 0; b < B; b++) pb->y2[b] = pb->y2[B + b] = y[b];
    // Both halves take the LReLU slopes of x: D is then smooth along the segment (where the
    // slopes of x +- e g could differ from x's at a few units, and each such kink would add
    // O(1 / e) to the difference quotient).
    long S = discriminator_pattern_floats(d);
    discriminator_pattern_save(d, pb->pattern, B);
    memcpy(pb->pattern + B * S, pb->pattern, B * S * sizeof(float));
    d->lrelu_ref = pb->pattern;
    if ((rc = discriminator_forward(d, pb->x2, y ? pb->y2 : NULL, 2 * B)) ||
        (rc = discriminator_backward(d, pb->dout, 2 * B, 1, NULL)))
        goto done;
    if (value) *value = v;
done:
    d->lrelu_ref = NULL;
    d->train = train;
    return rc;
}

// R1 at the real half of t->x and WGAN-GP at interpolates of it with the fake half (detached:
// G gets nothing from the penalty), with the real labels. Lazy regularization (Karras et al.
// 2020, sec. 3.1 of StyleGAN2) runs them every penalty_every steps with the weight scaled up to
// match.
static int gan_d_penalties(GanTrainer *t) {
    const GanHparams *h = &t->hp;
    int B = gan_local_batch(t), first = gan_local_first(t);
    long img = (long)t->cfg.channels * t->cfg.img * t->cfg.img;
    const int32_t *y = t->cfg.n_classes ? t->y : NULL;
    float scale = (float)h->penalty_every;
    double v;
    t->penalty_d = 0.0f;
    if (h->r1_gamma > 0.0f) {
        CHECK(gan_penalty_backward(&t->D, &t->pen, GAN_PENALTY_R1, h->r1_gamma * scale,
                                   h->penalty_fd_step, t->x, y, B, &v));
        t->penalty_d += (float)v;
    }
    if (h->gp_lambda > 0.0f) {
        for (int bb = 0; bb < h->batch; bb++) { // the whole batch's mixes: the RNGs stay equal
            float a = rng_uniform(&t->rng);
            int b = bb - first;
            if (b < 0 || b >= B) continue;
            const float *xr = t->x + b * img, *xf = t->x + (B + b) * img;
            float *xh = t->pen.x_hat + b * img;
            for (long i = 0; i < img; i++) xh[i] = a * xr[i] + (1.0f - a) * xf[i];
        }
        CHECK(gan_penalty_backward(&t->D, &t->pen, GAN_PENALTY_GP, h->gp_lambda * scale,
                                   h->penalty_fd_step, t->pen.x_hat, y, B, &v));
        t->penalty_d += (float)v;
    }
    return 0;
}

// Orthogonal regularization of G's raw weights (after SN's fold, so it acts on the trained W).
static int gan_ortho(GanTrainer *t) {
    ParamSet *ps = &t->G.ps;
    for (int i = 0; i < ps->n; i++) {
        if (!generator_is_ortho(&t->G, i)) continue;
        const Param *p = &ps->p[i];
        int rows = p->shape[0], cols = (int)(p->numel / rows);
        double v;
        CHECK(ortho_reg_backward(ps->grads + p->offset, &v, ps->params + p->offset,
                                 t->hp.ortho_beta, t->ortho_scratch, rows, cols));
        t->reg_g += (float)v;
    }
    return 0;
}

// ema = decay ema + (1 - decay) W after each step past ema_start (a copy of W before), then one
// power iteration of the EMA's own SN vectors on the averaged weights, as G's get one per step.
static void gan_ema_update(GanTrainer *t) {
    const ParamSet *ps = &t->G.ps;
    if (!t->ema_live || t->step <= t->hp.ema_start) {
        gan_ema_copy(t);
        t->ema_live = 1;
        return;
    }
    float a = t->hp.ema_decay, b = 1.0f - a;
    float *e = t->ema;
    const float *w = ps->params;
#pragma omp parallel for simd schedule(static) if (parallel : ps->total >= 65536)
    for (long i = 0; i < ps->total; i++)
        e[i] = a * e[i] + b * w[i];
    if (ps->sn_off) return;
    for (int i = 0; i < ps->n; i++) {
        const Param *p = &ps->p[i];
        if (!p->sn) continue;
        specnorm_forward(t->ema_w_sn + p->offset, t->ema_v + p->v_offset, t->ema_u + p->u_offset,
                         t->ema + p->offset, p->rows, p->cols, 1);
    }
}

// Sets G's and D's level for the current step (progressive growing; the full networks else).
static int gan_set_level(GanTrainer *t) {
    gan_prog_level(&t->hp, t->G.n_stages, t->step, &t->level, &t->alpha);
    if (generator_set_level(&t->G, t->level, t->alpha) ||
        discriminator_set_level(&t->D, t->level, t->alpha))
        return KERNELS_EINVAL; // a schedule without the progressive layers (cfg.prog)
    return 0;
}

void gan_real_at_level(GanTrainer *t, float *out, int B, int R, float alpha) {
    int C = t->cfg.channels, r = t->cfg.img;
    const float *src = t->real;
    float *bufs[2] = {t->pool_a, t->pool_b};
    int w = 0;
    while (r > R) {
        float *dst = r / 2 == R ? out : bufs[w];
        avgpool2x_forward(dst, src, B, C, r, r);
        src = dst;
        r /= 2;
        w ^= 1;
    }
    long n = (long)B * C * R * R;
    if (src != out) memcpy(out, src, n * sizeof(float));
    if (alpha < 1.0f) {
        avgpool2x_forward(t->pool_a, out, B, C, R, R);
        upsample2x_forward(t->pool_b, t->pool_a, B, C, R / 2, R / 2);
        lerp_forward(out, out, t->pool_b, alpha, n);
    }
}

int gan_d_step(GanTrainer *t, const Dataset *data) {
    const SaganConfig *c = &t->cfg;
    const GanHparams *h = &t->hp;
    int B_all = h->batch, B = gan_local_batch(t), first = gan_local_first(t);
    long img = (long)c->channels * c->img * c->img;
    if (data->c != c->channels || data->h != c->img || data->w != c->img || data->n < 1)
        return KERNELS_EINVAL;
    if (c->n_classes && !data->labels) return KERNELS_EINVAL;
    if (B_all > t->G.max_B || h->penalty_every < 1) return KERNELS_EINVAL;
    if (t->dp_size < 1 || t->dp_rank < 0 || t->dp_rank >= t->dp_size || B_all % t->dp_size)
        return KERNELS_EINVAL;
    char why[160];
    if (gan_hparams_check(h, why, sizeof why)) return KERNELS_EINVAL;
    CHECK(gan_set_level(t));
    int R = generator_resolution(&t->G), grow = c->prog && (R < c->img || t->alpha < 1.0f);
    long imgR = (long)c->channels * R * R;
    const int32_t *ycond = c->n_classes ? t->y : NULL;
    gan_apply_switches(t);

    // D step: real batch (uniform draws with replacement, so the RNG is the whole data state;
    // data parallel: every process draws the whole batch and copies its slice).
    float *real = grow ? t->real : t->x;
    for (int bb = 0; bb < B_all; bb++) {
        uint32_t i = rng_below(&t->rng, (uint32_t)data->n);
        int b = bb - first;
        if (b < 0 || b >= B) continue;
        memcpy(real + b * img, data->images + (long)i * img, img * sizeof(float));
        t->y[b] = data->labels ? data->labels[i] : 0;
    }
    if (grow) gan_real_at_level(t, t->x, B, R, t->alpha);
    const float *z = draw_fakes(t, t->y + B);
    paramset_sn_forward(&t->G.ps, 1);
    CHECK(generator_forward(&t->G, z, c->n_classes ? t->y + B : NULL, B));
    memcpy(t->x + B * imgR, generator_output(&t->G), B * imgR * sizeof(float));
    paramset_sn_forward(&t->D.ps, 1);
    t->D.train = 1;
    CHECK(discriminator_forward(&t->D, t->x, ycond, 2 * B));
    float lr = hinge_d_real_loss(t->dlogits, t->D.out, B);
    float lf = hinge_d_fake_loss(t->dlogits + B, t->D.out + B, B);
    t->loss_d = lr + lf;
    paramset_zero_grad(&t->D.ps);
    CHECK(discriminator_backward(&t->D, t->dlogits, 2 * B, 1, NULL));
    t->penalty_d = 0.0f;
    if ((h->r1_gamma > 0.0f || h->gp_lambda > 0.0f) && t->step % h->penalty_every == 0)
        CHECK(gan_d_penalties(t));
    paramset_sn_backward(&t->D.ps);
    float losses[2] = {t->loss_d, t->penalty_d};
    CHECK(gan_reduce(t, &t->D.ps, losses, 2));
    t->loss_d = losses[0];
    t->penalty_d = losses[1];
    paramset_adam(&t->D.ps, h->lr_d, h->beta1, h->beta2, h->eps, h->weight_decay_d);
    return 0;
}

void gan_g_step_done(GanTrainer *t) {
    t->D.train = 0;
    t->step++;
    if (t->hp.ema_decay > 0.0f)
        gan_ema_update(t);
    else
        t->ema_live = 0;
}

int gan_step(GanTrainer *t, const Dataset *data) {
    const SaganConfig *c = &t->cfg;
    const GanHparams *h = &t->hp;
    CHECK(gan_d_step(t, data));
    int B = gan_local_batch(t), R = generator_resolution(&t->G);
    long imgR = (long)c->channels * R * R;

    // G step: fresh latents; D's parameters get no gradient, only its input does.
    const float *z = draw_fakes(t, t->y + B);
    CHECK(generator_forward(&t->G, z, c->n_classes ? t->y + B : NULL, B));
    paramset_sn_forward(&t->D.ps, 1);
    CHECK(discriminator_forward(&t->D, generator_output(&t->G), c->n_classes ? t->y + B : NULL, B));
    t->loss_g = hinge_g_loss(t->dlogits, t->D.out, B);
    memset(t->dimg, 0, B * imgR * sizeof(float));
    CHECK(discriminator_backward(&t->D, t->dlogits, B, 0, t->dimg));
    t->D.train = 0;
    paramset_zero_grad(&t->G.ps);
    CHECK(generator_backward(&t->G, t->dimg, B));
    paramset_sn_backward(&t->G.ps);
    float losses[2] = {t->loss_g, (float)t->G.l1_value};
    CHECK(gan_reduce(t, &t->G.ps, losses, 2));
    t->loss_g = losses[0];
    t->reg_g = losses[1];
    if (h->ortho_beta > 0.0f) CHECK(gan_ortho(t)); // on the weights: the same in every process
    paramset_adam(&t->G.ps, h->lr_g, h->beta1, h->beta2, h->eps, h->weight_decay_g);
    gan_g_step_done(t);
    return 0;
}

// ---------------------------------------------------------------------------------------------
// checkpoints

// Up to 5 tensors per parameter (value, u, v, Adam m, v) of G and D, 3 per parameter of G's EMA
// (value, u, v), plus a few scalars per run.
#define MAX_TENSORS (2 * PARAMS_MAX * 5 + PARAMS_MAX * 3 + 8)
#define NAME_LEN 128

typedef struct {
    StTensor t[MAX_TENSORS];
    int n;
} TensorList;

static void list_add(TensorList *l, const char *prefix, const char *name, const char *suffix,
                     StDtype dt, int ndim, const int64_t *shape, const void *data) {
    StTensor *t = &l->t[l->n++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s%s%s", prefix, name, suffix);
    t->dtype = dt;
    t->ndim = ndim;
    size_t n = safetensors_dtype_size(dt);
    for (int d = 0; d < ndim; d++) {
        t->shape[d] = shape[d];
        n *= (size_t)shape[d];
    }
    t->data = data;
    t->nbytes = n;
}

// The SN vector name for a weight "x.weight_orig": "x.weight_u" / "x.weight_v".
static void sn_name(char *out, size_t len, const char *prefix, const char *name, char which) {
    const char *cut = strstr(name, "_orig");
    int base = cut ? (int)(cut - name) : (int)strlen(name);
    snprintf(out, len, "%s%.*s_%c", prefix, base, name, which);
}

static void list_paramset(TensorList *l, const char *prefix, const ParamSet *ps, int with_opt,
                          const int64_t *adam_t) {
    for (int i = 0; i < ps->n; i++) {
        const Param *p = &ps->p[i];
        int64_t shape[4];
        for (int d = 0; d < p->ndim; d++) shape[d] = p->shape[d];
        list_add(l, prefix, p->name, "", ST_F32, p->ndim, shape, ps->params + p->offset);
        if (p->sn) {
            char nm[NAME_LEN];
            int64_t r = p->rows, c = p->cols;
            sn_name(nm, sizeof nm, "", p->name, 'u');
            list_add(l, prefix, nm, "", ST_F32, 1, &r, ps->sn_u + p->u_offset);
            sn_name(nm, sizeof nm, "", p->name, 'v');
            list_add(l, prefix, nm, "", ST_F32, 1, &c, ps->sn_v + p->v_offset);
        }
        if (with_opt) {
            list_add(l, prefix, p->name, ".adam_m", ST_F32, p->ndim, shape, ps->m + p->offset);
            list_add(l, prefix, p->name, ".adam_v", ST_F32, p->ndim, shape, ps->v + p->offset);
        }
    }
    if (with_opt) {
        int64_t one = 1;
        list_add(l, prefix, "adam_step", "", ST_I64, 1, &one, adam_t);
    }
}

// G's parameter table pointing at the EMA buffers instead of G's own (a view: no ownership).
static ParamSet ema_view(const GanTrainer *t) {
    ParamSet e = t->G.ps;
    e.params = t->ema;
    e.sn_u = t->ema_u;
    e.sn_v = t->ema_v;
    return e;
}

#define EMA_PREFIX "G_ema."

int gan_save(const GanTrainer *t, const char *path, char *err, size_t errlen) {
    static TensorList l; // large; gan_save is not reentrant (one trainer saves at a time)
    static ParamSet ema; // likewise
    l.n = 0;
    int64_t g_t = t->G.ps.adam_t, d_t = t->D.ps.adam_t, step = t->step, one = 1, four = 4;
    list_paramset(&l, "G.", &t->G.ps, 1, &g_t);
    list_paramset(&l, "D.", &t->D.ps, 1, &d_t);
    if (t->hp.ema_decay > 0.0f) {
        ema = ema_view(t);
        list_paramset(&l, EMA_PREFIX, &ema, 0, NULL);
    }
    list_add(&l, "", "train.step", "", ST_I64, 1, &one, &step);
    list_add(&l, "", "train.rng", "", ST_U64, 1, &four, t->rng.s);
    list_add(&l, "", "train.dropout_seed", "", ST_U64, 1, &one, &t->D.dropout_seed);
    const SaganConfig *c = &t->cfg;
    enum { NV = 12 + HP_NKEYS };
    char v[NV][32];
    const char *meta[2 * NV + 8];
    int nm = 0, nv = 0;
#define META(key, ...) (snprintf(v[nv], 32, __VA_ARGS__), meta[nm++] = (key), meta[nm++] = v[nv++])
    meta[nm++] = "format";
    meta[nm++] = GAN_FORMAT;
    meta[nm++] = "config";
    meta[nm++] = c->name;
    META("ch", "%d", c->ch);
    META("z_dim", "%d", c->z_dim);
    META("img", "%d", c->img);
    META("channels", "%d", c->channels);
    META("n_classes", "%d", c->n_classes);
    META("attn_res", "%d", c->attn_res);
    if (c->prog) {
        // the layers' flag, and (for people reading the file) where the schedule stands
        int level;
        float alpha;
        gan_prog_level(&t->hp, sagan_stages(c), t->step, &level, &alpha);
        META("prog", "%d", c->prog);
        META("prog_resolution", "%d", 4 << level);
        META("prog_alpha", "%.9g", alpha);
    }
#undef META
    for (int i = 0; i < HP_NKEYS; i++) {
        if (HP_KEYS[i].alias) continue;
        gan_hparams_get(&t->hp, HP_KEYS[i].key, v[nv], sizeof v[nv]);
        meta[nm++] = HP_KEYS[i].key;
        meta[nm++] = v[nv++];
    }
    snprintf(v[nv], 32, "%ld", t->step);
    meta[nm++] = "step";
    meta[nm++] = v[nv++];
    meta[nm] = NULL;
    return safetensors_write(path, l.t, l.n, meta, err, errlen);
}

static int meta_int(const StFile *f, const char *key, int lo, int hi, int *out, char *err,
                    size_t errlen) {
    const char *s = safetensors_meta(f, key);
    char *end;
    if (!s) return snprintf(err, errlen, "%s: metadata has no '%s'", f->path, key), -1;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi)
        return snprintf(err, errlen, "%s: metadata '%s' = '%s' is not an integer in [%d, %d]",
                        f->path, key, s, lo, hi), -1;
    *out = (int)v;
    return 0;
}

static int read_config(const StFile *f, SaganConfig *c, char *err, size_t errlen) {
    memset(c, 0, sizeof *c);
    const char *fmt = safetensors_meta(f, "format");
    if (!fmt || strcmp(fmt, GAN_FORMAT))
        return snprintf(err, errlen, "%s: not a steer model (metadata format is '%s', expected '%s')",
                        f->path, fmt ? fmt : "(none)", GAN_FORMAT), -1;
    const char *name = safetensors_meta(f, "config");
    snprintf(c->name, sizeof c->name, "%s", name ? name : "custom");
    if (meta_int(f, "ch", 1, 1 << 20, &c->ch, err, errlen) ||
        meta_int(f, "z_dim", 1, 1 << 20, &c->z_dim, err, errlen) ||
        meta_int(f, "img", 1, 1 << 20, &c->img, err, errlen) ||
        meta_int(f, "channels", 1, 1 << 20, &c->channels, err, errlen) ||
        meta_int(f, "n_classes", 0, 1 << 20, &c->n_classes, err, errlen) ||
        meta_int(f, "attn_res", 0, 1 << 20, &c->attn_res, err, errlen))
        return -1;
    // optional: files without progressive layers (all older ones) leave it out
    if (safetensors_meta(f, "prog") && meta_int(f, "prog", 0, 1, &c->prog, err, errlen)) return -1;
    char why[256];
    if (sagan_config_check(c, why, sizeof why))
        return snprintf(err, errlen, "%s: bad model config: %s", f->path, why), -1;
    return 0;
}

static int load_tensor(const StFile *f, const char *name, StDtype dt, int ndim,
                       const int64_t *shape, void *dst, char *err, size_t errlen) {
    const StTensor *t;
    int rc = safetensors_expect(f, name, dt, ndim, shape, &t, err, errlen);
    if (rc) return rc;
    memcpy(dst, t->data, t->nbytes);
    return 0;
}

static int load_paramset(const StFile *f, const char *prefix, ParamSet *ps, int with_opt,
                         char *err, size_t errlen) {
    char nm[NAME_LEN];
    int rc;
    for (int i = 0; i < ps->n; i++) {
        const Param *p = &ps->p[i];
        int64_t shape[4];
        for (int d = 0; d < p->ndim; d++) shape[d] = p->shape[d];
        snprintf(nm, sizeof nm, "%s%s", prefix, p->name);
        if ((rc = load_tensor(f, nm, ST_F32, p->ndim, shape, ps->params + p->offset, err, errlen)))
            return rc;
        if (p->sn) {
            int64_t r = p->rows, c = p->cols;
            sn_name(nm, sizeof nm, prefix, p->name, 'u');
            // a weights-only file (another framework's) may leave out the power-iteration vectors:
            // the initial ones then converge within the first steps
            if (!with_opt && !safetensors_find(f, nm)) continue;
            if ((rc = load_tensor(f, nm, ST_F32, 1, &r, ps->sn_u + p->u_offset, err, errlen)))
                return rc;
            sn_name(nm, sizeof nm, prefix, p->name, 'v');
            if ((rc = load_tensor(f, nm, ST_F32, 1, &c, ps->sn_v + p->v_offset, err, errlen)))
                return rc;
        }
        if (with_opt) {
            snprintf(nm, sizeof nm, "%s%s.adam_m", prefix, p->name);
            if ((rc = load_tensor(f, nm, ST_F32, p->ndim, shape, ps->m + p->offset, err, errlen)))
                return rc;
            snprintf(nm, sizeof nm, "%s%s.adam_v", prefix, p->name);
            if ((rc = load_tensor(f, nm, ST_F32, p->ndim, shape, ps->v + p->offset, err, errlen)))
                return rc;
        }
    }
    if (with_opt) {
        int64_t one = 1, t;
        snprintf(nm, sizeof nm, "%sadam_step", prefix);
        if ((rc = load_tensor(f, nm, ST_I64, 1, &one, &t, err, errlen))) return rc;
        if (t < 0) return snprintf(err, errlen, "%s: %s is negative", f->path, nm), -1;
        ps->adam_t = (long)t;
    }
    return 0;
}

// Whether f holds an EMA of G (its first tensor is there).
static int has_ema(const StFile *f, const ParamSet *g) {
    char nm[NAME_LEN];
    snprintf(nm, sizeof nm, EMA_PREFIX "%s", g->p[0].name);
    return safetensors_find(f, nm) != NULL;
}

int gan_load(GanTrainer *t, const char *path, const GanHparams *hp, char *err, size_t errlen) {
    StFile f = {0};
    SaganConfig cfg;
    GanHparams h;
    int rc = safetensors_read(&f, path, err, errlen);
    memset(t, 0, sizeof *t);
    if (rc) goto fail;
    if ((rc = read_config(&f, &cfg, err, errlen))) goto fail;
    if ((rc = hparams_from_meta(&f, &h, err, errlen))) goto fail;
    if (hp) h = *hp;
    if ((rc = gan_hparams_check(&h, err, errlen))) goto fail;
    if (h.prog_stable > 0 && !cfg.prog) {
        rc = -1;
        snprintf(err, errlen, "%s: progressive growing needs the model's progressive layers, and "
                 "this checkpoint has none: start a progressive run from scratch", path);
        goto fail;
    }
    if ((rc = gan_init(t, &cfg, &h, 0))) {
        snprintf(err, errlen, "%s: out of memory building the model", path);
        goto fail;
    }
    int64_t one = 1, four = 4, step = 0;
    // A file without train.step holds weights only (e.g. exported from PyTorch with the names of
    // docs/checkpoint.md): Adam starts from zero, the step from 0, the draws from gan_init's seed.
    int whole = safetensors_find(&f, "train.step") != NULL;
    if ((rc = load_paramset(&f, "G.", &t->G.ps, whole, err, errlen)) ||
        (rc = load_paramset(&f, "D.", &t->D.ps, whole, err, errlen)) ||
        (whole && (rc = load_tensor(&f, "train.step", ST_I64, 1, &one, &step, err, errlen))) ||
        (whole && (rc = load_tensor(&f, "train.rng", ST_U64, 1, &four, t->rng.s, err, errlen))))
        goto fail;
    if (!whole) // power iterations from the initial vectors, so that sigma is right at step 1
        for (int k = 0; k < 20; k++) {
            paramset_sn_forward(&t->G.ps, 1);
            paramset_sn_forward(&t->D.ps, 1);
        }
    if (step < 0) {
        rc = -1;
        snprintf(err, errlen, "%s: train.step is negative", path);
        goto fail;
    }
    t->step = (long)step;
    // Older checkpoints have no dropout stream; the one gan_init made serves then.
    if (safetensors_find(&f, "train.dropout_seed") &&
        (rc = load_tensor(&f, "train.dropout_seed", ST_U64, 1, &one, &t->D.dropout_seed, err,
                          errlen)))
        goto fail;
    // The EMA comes back when the file has one (an EMA switched on at resume starts from G).
    if (has_ema(&f, &t->G.ps)) {
        ParamSet e = ema_view(t);
        if ((rc = load_paramset(&f, EMA_PREFIX, &e, 0, err, errlen))) goto fail;
        t->ema_live = 1;
    } else {
        gan_ema_copy(t);
    }
    paramset_sn_forward(&t->G.ps, 0);
    paramset_sn_forward(&t->D.ps, 0);
    safetensors_free(&f);
    return 0;
fail:
    safetensors_free(&f);
    return rc ? rc : -1;
}

// Loads one network (G when g is set, else D) of a checkpoint, effective weights computed with
// spectral norm as the run had it.
static int network_load(const char *path, int which, int max_B, Generator *g, Discriminator *d,
                        char *err, size_t errlen) {
    StFile f = {0};
    SaganConfig cfg;
    GanHparams h;
    int rc = safetensors_read(&f, path, err, errlen);
    if (g) memset(g, 0, sizeof *g);
    if (d) memset(d, 0, sizeof *d);
    if (rc) goto fail;
    if ((rc = read_config(&f, &cfg, err, errlen))) goto fail;
    // Only spectral norm matters here (a file from another tool may lack the training keys).
    gan_hparams_default(&h);
    const char *sn_key = g ? "sn_g" : "sn_d", *sn = safetensors_meta(&f, sn_key);
    char why[256];
    if (sn && gan_hparams_set(&h, sn_key, sn, why, sizeof why)) {
        rc = -1;
        snprintf(err, errlen, "%s: metadata: %s", path, why);
        goto fail;
    }
    // and a progressive run's schedule, to load the networks at the level the run had reached
    static const char *const prog_keys[] = {"prog_stable", "prog_fade", "prog_from"};
    for (int i = 0; i < 3; i++) {
        const char *v = safetensors_meta(&f, prog_keys[i]);
        if (v && gan_hparams_set(&h, prog_keys[i], v, why, sizeof why)) {
            rc = -1;
            snprintf(err, errlen, "%s: metadata: %s", path, why);
            goto fail;
        }
    }
    int64_t one = 1, step = 0;
    if (cfg.prog && safetensors_find(&f, "train.step") &&
        (rc = load_tensor(&f, "train.step", ST_I64, 1, &one, &step, err, errlen)))
        goto fail;
    if ((rc = g ? generator_init(g, &cfg, max_B, 0) : discriminator_init(d, &cfg, max_B, 0))) {
        snprintf(err, errlen, "%s: out of memory building the model", path);
        goto fail;
    }
    if (cfg.prog) {
        int level;
        float alpha;
        gan_prog_level(&h, sagan_stages(&cfg), (long)step, &level, &alpha);
        if (g ? generator_set_level(g, level, alpha) : discriminator_set_level(d, level, alpha)) {
            rc = -1;
            snprintf(err, errlen, "%s: progressive schedule at a level the model cannot take", path);
            goto fail;
        }
    }
    ParamSet *ps = g ? &g->ps : &d->ps;
    const char *prefix = g ? "G." : "D.";
    if (g && which != GAN_WEIGHTS_RAW) {
        if (has_ema(&f, ps))
            prefix = EMA_PREFIX;
        else if (which == GAN_WEIGHTS_EMA) {
            rc = -1;
            snprintf(err, errlen, "%s: the checkpoint has no EMA weights (" EMA_PREFIX "*)", path);
            goto fail;
        }
    }
    if ((rc = load_paramset(&f, prefix, ps, 0, err, errlen))) goto fail;
    ps->sn_off = g ? !h.sn_g : !h.sn_d;
    char first_u[NAME_LEN];
    int missing_u = 0; // a weights-only file without power-iteration vectors: converge them here
    for (int i = 0; i < ps->n && !missing_u; i++)
        if (ps->p[i].sn) {
            sn_name(first_u, sizeof first_u, prefix, ps->p[i].name, 'u');
            missing_u = !safetensors_find(&f, first_u);
        }
    for (int k = 0; missing_u && k < 20; k++) paramset_sn_forward(ps, 1);
    paramset_sn_forward(ps, 0);
    safetensors_free(&f);
    return 0;
fail:
    safetensors_free(&f);
    return rc ? rc : -1;
}

int generator_load(Generator *g, const char *path, int max_B, char *err, size_t errlen) {
    return network_load(path, GAN_WEIGHTS_AUTO, max_B, g, NULL, err, errlen);
}

int generator_load_weights(Generator *g, const char *path, int max_B, int which, char *err,
                           size_t errlen) {
    return network_load(path, which, max_B, g, NULL, err, errlen);
}

int discriminator_load(Discriminator *d, const char *path, int max_B, char *err, size_t errlen) {
    return network_load(path, GAN_WEIGHTS_RAW, max_B, NULL, d, err, errlen);
}

void gan_sample_latents(const SaganConfig *cfg, uint64_t seed, long n, int fixed_class, float *z,
                        int32_t *y) {
    Rng r;
    rng_seed(&r, seed);
    rng_normal(&r, z, n * cfg->z_dim);
    if (cfg->n_classes && y)
        for (long i = 0; i < n; i++)
            y[i] = fixed_class >= 0 ? fixed_class : (int32_t)rng_below(&r, cfg->n_classes);
}
