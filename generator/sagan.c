// sagan.c — G and D of the self-attention SN-GAN (DESIGN.md "Models"), forward and backward.
//
// This file wires kernels into networks: it owns no math of its own beyond the projection
// discriminator's inner product. It is not a training loop (gan.c) and not a checkpoint format
// (checkpoint.c). Activations are carved from one buffer per network sized for max_B at init.
//
// B batch, C channels, H, W spatial, N = H*W, Z latent, F = 16 * 4ch flattened 4x4 features.
#include "generator/sagan.h"

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/conv.h"
#include "kernels/gemm.h"
#include "kernels/kernels.h"
#include "kernels/ops.h"
#include "kernels/regularize.h"

#define G_SLOPE 0.2f
#define D_SLOPE 0.1f

// ---------------------------------------------------------------------------------------------
// configs

static const SaganConfig CONFIGS[] = {
    {"fmnist32", 32, 128, 32, 1, 0, 16, 0},
    {"fmnist32c", 32, 128, 32, 1, 10, 16, 0},
    {"tiny", 8, 16, 32, 1, 0, 16, 0},
    {"tinyc", 8, 16, 32, 1, 10, 16, 0},
    {"tiny64", 16, 16, 64, 3, 4, 16, 0},
    {"rgb32", 32, 128, 32, 3, 0, 16, 0},
    {"rgb64", 32, 128, 64, 3, 0, 16, 0},
};

int sagan_config_lookup(SaganConfig *c, const char *name) {
    for (size_t i = 0; i < sizeof CONFIGS / sizeof CONFIGS[0]; i++)
        if (!strcmp(CONFIGS[i].name, name)) {
            *c = CONFIGS[i];
            return 0;
        }
    return -1;
}

int sagan_stages(const SaganConfig *c) {
    int n = 0;
    for (int r = 4; r < c->img; r *= 2) n++;
    return n;
}

int sagan_config_check(const SaganConfig *c, char *err, size_t errlen) {
    if (c->img != 32 && c->img != 64)
        return snprintf(err, errlen, "image size %d: must be 32 or 64", c->img), -1;
    if (c->channels != 1 && c->channels != 3)
        return snprintf(err, errlen, "image channels %d: must be 1 or 3", c->channels), -1;
    int stages = sagan_stages(c);
    // The narrowest layer is 4ch >> stages channels and attention needs C divisible by 8.
    if (c->ch < 8 || c->ch > 1024 || (c->ch & (c->ch - 1)) || (4 * c->ch >> stages) < 1)
        return snprintf(err, errlen, "base width %d: must be a power of two in [8, 1024]", c->ch),
               -1;
    if (c->z_dim < 1 || c->z_dim > 4096)
        return snprintf(err, errlen, "z size %d: must be in [1, 4096]", c->z_dim), -1;
    if (c->n_classes < 0 || c->n_classes > 1000)
        return snprintf(err, errlen, "classes %d: must be in [0, 1000]", c->n_classes), -1;
    if (c->attn_res) {
        int ok = 0;
        for (int r = 8; r <= c->img; r *= 2) ok |= r == c->attn_res;
        if (!ok)
            return snprintf(err, errlen, "attention resolution %d: must be a power of two in [8, %d]",
                            c->attn_res, c->img), -1;
    }
    return 0;
}

// ---------------------------------------------------------------------------------------------
// activation buffers: one pass to count, one to carve

typedef ParamsCarver Carver;

static float *carve(Carver *cv, long n) { return params_carve(cv, n, 16); } // 64-byte slices

static float *alloc_floats(long n) { return params_zalloc(sizeof(float) * (size_t)n); }

// The gradient twin of activation pointer p, at the same offset in dacts.
#define GRAD(net, p) ((net)->dacts + ((p) - (net)->acts))

// Declares weight "<name>.weight_orig" (spectral-normalized, PyTorch's spectral_norm naming) or
// "<name>.weight", and with idx_b its bias "<name>.bias", both with PyTorch's default init.
static void decl(ParamSet *ps, int *idx_w, int *idx_b, const char *name, int ndim,
                 const int *shape, int sn, int fan_in) {
    char nm[PARAMS_NAME_MAX];
    snprintf(nm, sizeof nm, "%s.%s", name, sn ? "weight_orig" : "weight");
    *idx_w = paramset_add(ps, nm, ndim, shape, sn, PARAMS_INIT_UNIFORM_FANIN, fan_in, 0);
    if (idx_b) {
        int bshape[1] = {shape[0]};
        snprintf(nm, sizeof nm, "%s.bias", name);
        *idx_b = paramset_add(ps, nm, 1, bshape, 0, PARAMS_INIT_UNIFORM_FANIN, fan_in, 1);
    }
}

static void decl_attention(ParamSet *ps, int C, int *f, int *g, int *h, int *o, int *gamma) {
    int sf[4] = {C / 8, C, 1, 1}, sh[4] = {C / 2, C, 1, 1}, so[4] = {C, C / 2, 1, 1};
    decl(ps, f, NULL, "attn.f", 4, sf, 1, C);
    decl(ps, g, NULL, "attn.g", 4, sf, 1, C);
    decl(ps, h, NULL, "attn.h", 4, sh, 1, C);
    decl(ps, o, NULL, "attn.o", 4, so, 1, C / 2);
    int one[1] = {1};
    *gamma = paramset_add(ps, "attn.gamma", 1, one, 0, PARAMS_INIT_ZERO, 1, 1);
}

// ---------------------------------------------------------------------------------------------
// G

static void generator_carve(Generator *g, Carver *cv) {
    const SaganConfig *c = &g->cfg;
    long B = g->max_B;
    int r = 4;
    g->zc = carve(cv, B * c->z_dim);
    g->fc_pre = carve(cv, B * g->chan[0] * 16);
    g->fc = carve(cv, B * g->chan[0] * 16);
    g->pn0 = carve(cv, B * g->chan[0] * 16);
    g->rn0 = carve(cv, B * 16);
    for (int s = 0; s < g->n_stages; s++) {
        r *= 2;
        g->up[s] = carve(cv, B * g->chan[s] * r * r);
        g->conv[s] = carve(cv, B * g->chan[s + 1] * r * r);
        g->act[s] = carve(cv, B * g->chan[s + 1] * r * r);
        g->pn[s] = carve(cv, B * g->chan[s + 1] * r * r);
        g->rn[s] = carve(cv, B * r * r);
        if (s == g->attn_stage) {
            int C = g->chan[s + 1], N = r * r;
            g->att = carve(cv, B * C * N);
            g->att_saved_buf = carve(cv, attention_saved_floats(g->max_B, C, N));
            g->att_scratch = carve(cv, attention_scratch_floats(g->max_B, C, N));
        }
    }
    g->pre = carve(cv, B * c->channels * r * r);
    g->img = carve(cv, B * c->channels * r * r);
    if (c->prog) {
        long full = B * c->channels * r * r;
        g->img_lo = carve(cv, full / 4);
        g->pre_old = carve(cv, full / 4);
        g->pre_old_up = carve(cv, full);
        g->pre_mix = carve(cv, full);
    }
}

int generator_init(Generator *g, const SaganConfig *cfg, int max_B, uint64_t seed) {
    memset(g, 0, sizeof *g);
    g->cfg = *cfg;
    g->max_B = max_B;
    g->n_stages = sagan_stages(cfg);
    g->attn_stage = -1;
    g->chan[0] = 4 * cfg->ch;
    for (int s = 0; s < g->n_stages; s++) {
        g->chan[s + 1] = g->chan[s] / 2;
        if (cfg->attn_res == (4 << (s + 1))) g->attn_stage = s;
    }
    ParamSet *ps = &g->ps;
    int Z = cfg->z_dim, F = g->chan[0] * 16;
    g->p_embed = -1;
    if (cfg->n_classes) {
        int se[2] = {cfg->n_classes, Z};
        g->p_embed = paramset_add(ps, "embed.weight", 2, se, 0, PARAMS_INIT_NORMAL, 1, 0);
    }
    int sfc[2] = {F, Z};
    decl(ps, &g->p_fc_w, &g->p_fc_b, "fc", 2, sfc, 1, Z);
    for (int s = 0; s < g->n_stages; s++) {
        char nm[32];
        snprintf(nm, sizeof nm, "blocks.%d.conv", s);
        int sc[4] = {g->chan[s + 1], g->chan[s], 3, 3};
        decl(ps, &g->p_conv_w[s], &g->p_conv_b[s], nm, 4, sc, 1, g->chan[s] * 9);
    }
    g->p_f = g->p_g = g->p_h = g->p_o = g->p_gamma = -1;
    if (g->attn_stage >= 0)
        decl_attention(ps, g->chan[g->attn_stage + 1], &g->p_f, &g->p_g, &g->p_h, &g->p_o,
                       &g->p_gamma);
    int so[4] = {cfg->channels, g->chan[g->n_stages], 3, 3};
    decl(ps, &g->p_out_w, &g->p_out_b, "out", 4, so, 1, g->chan[g->n_stages] * 9);
    // progressive growing: toRGB of each level below the last, declared last so that the other
    // parameters draw the same initial values as without them
    for (int L = 0; L < SAGAN_MAX_STAGES; L++) g->p_rgb_w[L] = g->p_rgb_b[L] = -1;
    if (cfg->prog)
        for (int L = 1; L < g->n_stages; L++) {
            char nm[32];
            snprintf(nm, sizeof nm, "torgb.%d", 4 << L);
            int sr[4] = {cfg->channels, g->chan[L], 1, 1};
            decl(ps, &g->p_rgb_w[L], &g->p_rgb_b[L], nm, 4, sr, 1, g->chan[L]);
        }
    g->level = g->n_stages;
    g->alpha = 1.0f;
    if (paramset_alloc(ps)) return -1;
    Rng rng;
    rng_seed(&rng, seed);
    paramset_init(ps, &rng);

    Carver cv = {0};
    generator_carve(g, &cv);
    g->acts_total = cv.used;
    g->acts = alloc_floats(cv.used);
    g->dacts = alloc_floats(cv.used);
    if (!g->acts || !g->dacts) return -1;
    cv = (Carver){g->acts, 0};
    generator_carve(g, &cv);
    if (g->attn_stage >= 0) {
        int r = 4 << (g->attn_stage + 1);
        attention_saved_carve(&g->att_saved, g->att_saved_buf, max_B, g->chan[g->attn_stage + 1],
                              r * r);
    }
    return 0;
}

void generator_free(Generator *g) {
    paramset_free(&g->ps);
    free(g->acts);
    free(g->dacts);
    g->acts = g->dacts = NULL;
}

#define W(net, i) paramset_w(&(net)->ps, (i))
#define DW(net, i) paramset_dw(&(net)->ps, (i))
#define CHECK(x)                                                                                   \
    do {                                                                                           \
        int rc_ = (x);                                                                             \
        if (rc_) return rc_;                                                                       \
    } while (0)

// The tensor that feeds stage s (s == n_stages: the output conv).
static const float *generator_stage_input(const Generator *g, int s) {
    if (s == 0) return g->pn0;
    return (s - 1 == g->attn_stage) ? g->att : g->pn[s - 1];
}

// Elements of generator_stage_input(g, s) for a batch of B: block s's output, (B, chan[s], r, r).
static long generator_block_numel(const Generator *g, int s, int B) {
    long r = 4L << s;
    return (long)B * g->chan[s] * r * r;
}

// The L1 activation penalty's gradient on block output s: l1_act * sign(a) / numel.
static void generator_l1_backward(Generator *g, int s, int B) {
    if (g->l1_act <= 0.0f) return;
    const float *a = generator_stage_input(g, s);
    long n = generator_block_numel(g, s, B);
    l1_backward(GRAD(g, a), a, (float)(g->l1_act / (double)n), n);
}

// Levels: see sagan.h. A level is valid for a network with n stages when it is in [1, n], alpha
// in (0, 1] (1 at level 1: there is no level 0 to fade from), and a level below n or a fade has
// the layers of progressive growing.
static int level_ok(const SaganConfig *c, int n, int level, float alpha) {
    if (level < 1 || level > n || !(alpha > 0.0f && alpha <= 1.0f)) return 0;
    if (alpha < 1.0f && level < 2) return 0;
    return c->prog || (level == n && alpha == 1.0f);
}

int generator_set_level(Generator *g, int level, float alpha) {
    if (!level_ok(&g->cfg, g->n_stages, level, alpha)) return -1;
    g->level = level;
    g->alpha = alpha;
    return 0;
}

int generator_resolution(const Generator *g) { return 4 << g->level; }

const float *generator_output(const Generator *g) {
    return g->level < g->n_stages ? g->img_lo : g->img;
}

// The image layer of level L: the `out` conv (3x3) at the last level, toRGB L (1x1) below it.
static int generator_rgb_forward(Generator *g, float *pre, int L, int B) {
    const SaganConfig *c = &g->cfg;
    int r = 4 << L, last = L == g->n_stages;
    const float *x = generator_stage_input(g, L);
    return conv2d_forward(pre, x, W(g, last ? g->p_out_w : g->p_rgb_w[L]),
                          W(g, last ? g->p_out_b : g->p_rgb_b[L]), B, g->chan[L], r, r,
                          c->channels, last ? 3 : 1, 1, last ? 1 : 0);
}

static int generator_rgb_backward(Generator *g, const float *dpre, int L, int B) {
    const SaganConfig *c = &g->cfg;
    int r = 4 << L, last = L == g->n_stages;
    const float *x = generator_stage_input(g, L);
    int w = last ? g->p_out_w : g->p_rgb_w[L], b = last ? g->p_out_b : g->p_rgb_b[L];
    return conv2d_backward(GRAD(g, x), DW(g, w), DW(g, b), dpre, x, W(g, w), B, g->chan[L], r, r,
                           c->channels, last ? 3 : 1, 1, last ? 1 : 0);
}

// The pre-tanh image of the last forward (the blend while fading in).
static float *generator_pre_out(const Generator *g) { return g->alpha < 1.0f ? g->pre_mix : g->pre; }

static int generator_forward_threads(Generator *g, const float *z, const int32_t *y, int B) {
    const SaganConfig *c = &g->cfg;
    if (B < 1 || B > g->max_B) return KERNELS_EINVAL;
    if (!level_ok(c, g->n_stages, g->level, g->alpha)) return KERNELS_EINVAL;
    int Z = c->z_dim, C0 = g->chan[0], L = g->level;
    g->zin = z;
    g->labels = y;
    if (c->n_classes) {
        if (!y) return KERNELS_EINVAL;
        for (int b = 0; b < B; b++)
            if (y[b] < 0 || y[b] >= c->n_classes) return KERNELS_EINVAL;
        embedding_forward(g->zc, W(g, g->p_embed), y, B, Z);
        add_inplace(g->zc, z, (long)B * Z);
        g->zin = g->zc;
    }
    CHECK(linear_forward(g->fc_pre, g->zin, W(g, g->p_fc_w), W(g, g->p_fc_b), B, Z, C0 * 16));
    leaky_relu_forward(g->fc, g->fc_pre, G_SLOPE, (long)B * C0 * 16);
    pixelnorm_forward(g->pn0, g->rn0, g->fc, B, C0, 16);
    const float *x = g->pn0;
    int r = 4;
    for (int s = 0; s < L; s++) {
        int Ci = g->chan[s], Co = g->chan[s + 1];
        upsample2x_forward(g->up[s], x, B, Ci, r, r);
        r *= 2;
        long n = (long)B * Co * r * r;
        CHECK(conv2d_forward(g->conv[s], g->up[s], W(g, g->p_conv_w[s]), W(g, g->p_conv_b[s]), B,
                             Ci, r, r, Co, 3, 1, 1));
        leaky_relu_forward(g->act[s], g->conv[s], G_SLOPE, n);
        pixelnorm_forward(g->pn[s], g->rn[s], g->act[s], B, Co, r * r);
        x = g->pn[s];
        if (s == g->attn_stage) {
            CHECK(attention_forward(g->att, &g->att_saved, x, W(g, g->p_f), W(g, g->p_g),
                                    W(g, g->p_h), W(g, g->p_o), W(g, g->p_gamma)[0], B, Co, r * r));
            x = g->att;
        }
    }
    long n_img = (long)B * c->channels * r * r;
    CHECK(generator_rgb_forward(g, g->pre, L, B));
    if (g->alpha < 1.0f) { // PGGAN's fade-in: the previous level's image, upsampled, blended
        CHECK(generator_rgb_forward(g, g->pre_old, L - 1, B));
        upsample2x_forward(g->pre_old_up, g->pre_old, B, c->channels, r / 2, r / 2);
        lerp_forward(g->pre_mix, g->pre, g->pre_old_up, g->alpha, n_img);
    }
    float *out = (float *)generator_output(g);
    tanh_forward(out, generator_pre_out(g), n_img);
    if (L < g->n_stages) upsample_nearest_forward(g->img, out, B, c->channels, r, r, c->img / r);
    g->l1_value = 0.0;
    if (g->l1_act > 0.0f)
        for (int s = 0; s <= L; s++) {
            long n = generator_block_numel(g, s, B);
            g->l1_value += g->l1_act * l1_forward(generator_stage_input(g, s), n) / (double)n;
        }
    return 0;
}

// A batch of one or two images is too little work to split across threads: waking the OpenMP
// team for every small layer cost more than it saved (steer bench, 2 cores: batch-1 generation
// 402 images/s on 2 threads, 2,076 on one). Larger batches use every thread. The setting is the calling
// thread's own and is restored on return.
int generator_forward(Generator *g, const float *z, const int32_t *y, int B) {
    int threads = omp_get_max_threads();
    if (B <= 2 && threads > 1) omp_set_num_threads(1);
    int rc = generator_forward_threads(g, z, y, B);
    if (B <= 2 && threads > 1) omp_set_num_threads(threads);
    return rc;
}

int generator_draw(Generator *g, const float *z, const int32_t *y, long n, int batch, float *img) {
    if (batch < 1 || batch > g->max_B) return KERNELS_EINVAL;
    const SaganConfig *c = &g->cfg;
    long P = (long)c->channels * c->img * c->img;
    for (long i = 0; i < n; i += batch) {
        int b = (int)(n - i < batch ? n - i : batch);
        int rc = generator_forward(g, z + i * c->z_dim, y ? y + i : NULL, b);
        if (rc) return rc;
        memcpy(img + i * P, g->img, sizeof(float) * b * P);
    }
    return 0;
}

int generator_backward(Generator *g, const float *dimg, int B) {
    const SaganConfig *c = &g->cfg;
    if (B < 1 || B > g->max_B) return KERNELS_EINVAL;
    int Z = c->z_dim, C0 = g->chan[0], L = g->level, r = generator_resolution(g);
    long n_img = (long)B * c->channels * r * r;
    memset(g->dacts, 0, g->acts_total * sizeof(float));
    float *pre = generator_pre_out(g);
    tanh_backward(GRAD(g, pre), dimg, generator_output(g), n_img);
    if (g->alpha < 1.0f) {
        lerp_backward(GRAD(g, g->pre), GRAD(g, g->pre_old_up), GRAD(g, g->pre_mix), g->alpha,
                      n_img);
        upsample2x_backward(GRAD(g, g->pre_old), GRAD(g, g->pre_old_up), B, c->channels, r / 2,
                            r / 2);
        CHECK(generator_rgb_backward(g, GRAD(g, g->pre_old), L - 1, B));
    }
    CHECK(generator_rgb_backward(g, GRAD(g, g->pre), L, B));
    generator_l1_backward(g, L, B);
    for (int s = L - 1; s >= 0; s--) {
        int Ci = g->chan[s], Co = g->chan[s + 1];
        long n = (long)B * Co * r * r;
        if (s == g->attn_stage)
            CHECK(attention_backward(GRAD(g, g->pn[s]), DW(g, g->p_f), DW(g, g->p_g), DW(g, g->p_h),
                                     DW(g, g->p_o), DW(g, g->p_gamma), GRAD(g, g->att),
                                     &g->att_saved, g->pn[s], W(g, g->p_f), W(g, g->p_g),
                                     W(g, g->p_h), W(g, g->p_o), W(g, g->p_gamma)[0],
                                     g->att_scratch, B, Co, r * r));
        pixelnorm_backward(GRAD(g, g->act[s]), GRAD(g, g->pn[s]), g->pn[s], g->rn[s], B, Co, r * r);
        leaky_relu_backward(GRAD(g, g->conv[s]), GRAD(g, g->act[s]), g->conv[s], G_SLOPE, n);
        CHECK(conv2d_backward(GRAD(g, g->up[s]), DW(g, g->p_conv_w[s]), DW(g, g->p_conv_b[s]),
                              GRAD(g, g->conv[s]), g->up[s], W(g, g->p_conv_w[s]), B, Ci, r, r, Co,
                              3, 1, 1));
        r /= 2;
        upsample2x_backward(GRAD(g, generator_stage_input(g, s)), GRAD(g, g->up[s]), B, Ci, r, r);
        generator_l1_backward(g, s, B);
    }
    pixelnorm_backward(GRAD(g, g->fc), GRAD(g, g->pn0), g->pn0, g->rn0, B, C0, 16);
    leaky_relu_backward(GRAD(g, g->fc_pre), GRAD(g, g->fc), g->fc_pre, G_SLOPE, (long)B * C0 * 16);
    CHECK(linear_backward(c->n_classes ? GRAD(g, g->zc) : NULL, DW(g, g->p_fc_w), DW(g, g->p_fc_b),
                          GRAD(g, g->fc_pre), g->zin, W(g, g->p_fc_w), B, Z, C0 * 16));
    if (c->n_classes) embedding_backward(DW(g, g->p_embed), GRAD(g, g->zc), g->labels, B, Z);
    return 0;
}

// ---------------------------------------------------------------------------------------------
// D

static void discriminator_carve(Discriminator *d, Carver *cv) {
    long B = d->max_B;
    int r = d->cfg.img;
    d->c0 = carve(cv, B * d->chan[0] * r * r);
    d->a0 = carve(cv, B * d->chan[0] * r * r);
    for (int k = 0; k < d->n_stages; k++) {
        r /= 2;
        d->conv[k] = carve(cv, B * d->chan[k + 1] * r * r);
        d->act[k] = carve(cv, B * d->chan[k + 1] * r * r);
        if (k == d->attn_stage) {
            int C = d->chan[k + 1], N = r * r;
            d->att = carve(cv, B * C * N);
            d->att_saved_buf = carve(cv, attention_saved_floats(d->max_B, C, N));
            d->att_scratch = carve(cv, attention_scratch_floats(d->max_B, C, N));
        }
    }
    if (d->cfg.prog) {
        // the old path of a fade into level L reads x pooled to R/2 (at most img/2) and makes
        // chan[k0 + 1] maps there (k0 = n_stages - L >= 0): largest at k0 = 0
        int h = d->cfg.img / 2;
        d->xpool = carve(cv, B * d->cfg.channels * h * h);
        d->old_pre = carve(cv, B * d->chan[1] * h * h);
        d->old_act = carve(cv, B * d->chan[1] * h * h);
        d->blend = carve(cv, B * d->chan[1] * h * h);
    }
    d->out = carve(cv, B);
    d->feat_drop = carve(cv, B * d->chan[d->n_stages] * 16);
    d->drop_mask = carve(cv, B * d->chan[d->n_stages] * 16);
}

int discriminator_init(Discriminator *d, const SaganConfig *cfg, int max_B, uint64_t seed) {
    memset(d, 0, sizeof *d);
    d->cfg = *cfg;
    d->max_B = max_B;
    d->n_stages = sagan_stages(cfg);
    d->attn_stage = -1;
    // D mirrors G: its first conv has G's last width, each stage doubles it.
    d->chan[0] = (4 * cfg->ch) >> d->n_stages;
    for (int k = 0; k < d->n_stages; k++) {
        d->chan[k + 1] = d->chan[k] * 2;
        if (cfg->attn_res == (cfg->img >> (k + 1))) d->attn_stage = k;
    }
    ParamSet *ps = &d->ps;
    int si[4] = {d->chan[0], cfg->channels, 3, 3};
    decl(ps, &d->p_in_w, &d->p_in_b, "conv0", 4, si, 1, cfg->channels * 9);
    for (int k = 0; k < d->n_stages; k++) {
        char nm[32];
        snprintf(nm, sizeof nm, "blocks.%d.conv", k);
        int sc[4] = {d->chan[k + 1], d->chan[k], 4, 4};
        decl(ps, &d->p_conv_w[k], &d->p_conv_b[k], nm, 4, sc, 1, d->chan[k] * 16);
        if (k == d->attn_stage)
            decl_attention(ps, d->chan[k + 1], &d->p_f, &d->p_g, &d->p_h, &d->p_o, &d->p_gamma);
    }
    if (d->attn_stage < 0) d->p_f = d->p_g = d->p_h = d->p_o = d->p_gamma = -1;
    int F = d->chan[d->n_stages] * 16;
    int sfc[2] = {1, F};
    decl(ps, &d->p_fc_w, &d->p_fc_b, "fc", 2, sfc, 1, F);
    d->p_embed = -1;
    if (cfg->n_classes) {
        int se[2] = {cfg->n_classes, F};
        d->p_embed = paramset_add(ps, "embed.weight_orig", 2, se, 1, PARAMS_INIT_NORMAL, 1, 0);
    }
    for (int L = 0; L < SAGAN_MAX_STAGES; L++) d->p_rgb_w[L] = d->p_rgb_b[L] = -1;
    if (cfg->prog)
        for (int L = 1; L < d->n_stages; L++) {
            char nm[32];
            snprintf(nm, sizeof nm, "fromrgb.%d", 4 << L);
            int sr[4] = {d->chan[d->n_stages - L], cfg->channels, 1, 1};
            decl(ps, &d->p_rgb_w[L], &d->p_rgb_b[L], nm, 4, sr, 1, cfg->channels);
        }
    d->level = d->n_stages;
    d->alpha = 1.0f;
    if (paramset_alloc(ps)) return -1;
    Rng rng;
    rng_seed(&rng, seed);
    paramset_init(ps, &rng);

    Carver cv = {0};
    discriminator_carve(d, &cv);
    d->acts_total = cv.used;
    d->acts = alloc_floats(cv.used);
    d->dacts = alloc_floats(cv.used);
    if (!d->acts || !d->dacts) return -1;
    cv = (Carver){d->acts, 0};
    discriminator_carve(d, &cv);
    if (d->attn_stage >= 0) {
        int r = cfg->img >> (d->attn_stage + 1);
        attention_saved_carve(&d->att_saved, d->att_saved_buf, max_B, d->chan[d->attn_stage + 1],
                              r * r);
    }
    return 0;
}

void discriminator_free(Discriminator *d) {
    paramset_free(&d->ps);
    free(d->acts);
    free(d->dacts);
    d->acts = d->dacts = NULL;
}

// The first stage D runs at its level: n_stages - level (0 at the last level).
static int discriminator_first_stage(const Discriminator *d) { return d->n_stages - d->level; }

// The output of stage k (after its attention block, if any).
static const float *discriminator_stage_output(const Discriminator *d, int k) {
    return k == d->attn_stage ? d->att : d->act[k];
}

// The tensor that feeds stage k (k == n_stages: the flattened features). Below the last level the
// first stage k0 reads fromRGB's output, kept in act[k0 - 1] (stage k0 - 1 does not run); while a
// level fades in, stage k0 + 1 reads the blend.
static const float *discriminator_stage_input(const Discriminator *d, int k) {
    int k0 = discriminator_first_stage(d);
    if (k == 0) return d->a0;
    if (k == k0) return d->act[k - 1];
    if (k == k0 + 1 && d->alpha < 1.0f) return d->blend;
    return discriminator_stage_output(d, k - 1);
}

int discriminator_set_level(Discriminator *d, int level, float alpha) {
    if (!level_ok(&d->cfg, d->n_stages, level, alpha)) return -1;
    d->level = level;
    d->alpha = alpha;
    return 0;
}

const float *discriminator_features(const Discriminator *d, int *F) {
    if (F) *F = d->chan[d->n_stages] * 16;
    return discriminator_stage_input(d, d->n_stages);
}

// D's LReLU layers: c0 -> a0 (layer 0) and conv[k] -> act[k] (layer k + 1). Elements per image
// of layer l, and its offset in one image's pattern.
static long discriminator_lrelu_numel(const Discriminator *d, int l) {
    long r = d->cfg.img >> l;
    return (long)d->chan[l] * r * r;
}

static long discriminator_lrelu_offset(const Discriminator *d, int l) {
    long off = 0;
    for (int i = 0; i < l; i++) off += discriminator_lrelu_numel(d, i);
    return off;
}

long discriminator_pattern_floats(const Discriminator *d) {
    return discriminator_lrelu_offset(d, d->n_stages + 1);
}

void discriminator_pattern_save(const Discriminator *d, float *pattern, int B) {
    long S = discriminator_pattern_floats(d);
    for (int l = 0; l <= d->n_stages; l++) {
        long n = discriminator_lrelu_numel(d, l), off = discriminator_lrelu_offset(d, l);
        const float *pre = l == 0 ? d->c0 : d->conv[l - 1];
        for (int b = 0; b < B; b++)
            memcpy(pattern + b * S + off, pre + b * n, n * sizeof(float));
    }
}

// LReLU layer l of D over B images, with its own slopes or the saved pattern's.
static void discriminator_lrelu_forward(const Discriminator *d, int l, float *out,
                                        const float *inp, int B) {
    long n = discriminator_lrelu_numel(d, l);
    if (!d->lrelu_ref) {
        leaky_relu_forward(out, inp, D_SLOPE, B * n);
        return;
    }
    long S = discriminator_pattern_floats(d), off = discriminator_lrelu_offset(d, l);
    for (int b = 0; b < B; b++)
        leaky_relu_pattern_forward(out + b * n, inp + b * n, d->lrelu_ref + b * S + off, D_SLOPE,
                                   n);
}

static void discriminator_lrelu_backward(const Discriminator *d, int l, float *dinp,
                                         const float *dout, const float *inp, int B) {
    long n = discriminator_lrelu_numel(d, l);
    if (!d->lrelu_ref) {
        leaky_relu_backward(dinp, dout, inp, D_SLOPE, B * n);
        return;
    }
    long S = discriminator_pattern_floats(d), off = discriminator_lrelu_offset(d, l);
    for (int b = 0; b < B; b++)
        leaky_relu_backward(dinp + b * n, dout + b * n, d->lrelu_ref + b * S + off, D_SLOPE, n);
}

// D's image layer at its level: conv0 (3x3) at the last level, else fromRGB of the level (1x1)
// into act[k0 - 1], with its LReLU (pattern layer k0: the same shape).
static int discriminator_rgb_forward(Discriminator *d, const float *x, int B) {
    const SaganConfig *c = &d->cfg;
    int k0 = discriminator_first_stage(d), r = c->img >> k0, L = d->level;
    if (k0 == 0) {
        CHECK(conv2d_forward(d->c0, x, W(d, d->p_in_w), W(d, d->p_in_b), B, c->channels, r, r,
                             d->chan[0], 3, 1, 1));
        discriminator_lrelu_forward(d, 0, d->a0, d->c0, B);
        return 0;
    }
    CHECK(conv2d_forward(d->conv[k0 - 1], x, W(d, d->p_rgb_w[L]), W(d, d->p_rgb_b[L]), B,
                         c->channels, r, r, d->chan[k0], 1, 1, 0));
    discriminator_lrelu_forward(d, k0, d->act[k0 - 1], d->conv[k0 - 1], B);
    return 0;
}

// The fade-in's old path: x pooled to R/2, through fromRGB of level L - 1 and its LReLU, blended
// with stage k0's output into d->blend.
static int discriminator_fade_forward(Discriminator *d, const float *x, int B) {
    const SaganConfig *c = &d->cfg;
    int k0 = discriminator_first_stage(d), r = c->img >> k0, L = d->level, Co = d->chan[k0 + 1];
    long n = (long)B * Co * (r / 2) * (r / 2);
    avgpool2x_forward(d->xpool, x, B, c->channels, r, r);
    CHECK(conv2d_forward(d->old_pre, d->xpool, W(d, d->p_rgb_w[L - 1]), W(d, d->p_rgb_b[L - 1]), B,
                         c->channels, r / 2, r / 2, Co, 1, 1, 0));
    discriminator_lrelu_forward(d, k0 + 1, d->old_act, d->old_pre, B);
    lerp_forward(d->blend, discriminator_stage_output(d, k0), d->old_act, d->alpha, n);
    return 0;
}

int discriminator_forward(Discriminator *d, const float *x, const int32_t *y, int B) {
    const SaganConfig *c = &d->cfg;
    if (B < 1 || B > d->max_B) return KERNELS_EINVAL;
    if (!level_ok(c, d->n_stages, d->level, d->alpha)) return KERNELS_EINVAL;
    if (c->n_classes) {
        if (!y) return KERNELS_EINVAL;
        for (int b = 0; b < B; b++)
            if (y[b] < 0 || y[b] >= c->n_classes) return KERNELS_EINVAL;
    }
    d->x = x;
    d->labels = y;
    int k0 = discriminator_first_stage(d), r = c->img >> k0;
    CHECK(discriminator_rgb_forward(d, x, B));
    for (int k = k0; k < d->n_stages; k++) {
        const float *in = discriminator_stage_input(d, k);
        int Ci = d->chan[k], Co = d->chan[k + 1];
        CHECK(conv2d_forward(d->conv[k], in, W(d, d->p_conv_w[k]), W(d, d->p_conv_b[k]), B, Ci, r,
                             r, Co, 4, 2, 1));
        r /= 2;
        discriminator_lrelu_forward(d, k + 1, d->act[k], d->conv[k], B);
        if (k == d->attn_stage)
            CHECK(attention_forward(d->att, &d->att_saved, d->act[k], W(d, d->p_f), W(d, d->p_g),
                                    W(d, d->p_h), W(d, d->p_o), W(d, d->p_gamma)[0], B, Co, r * r));
        if (k == k0 && d->alpha < 1.0f) CHECK(discriminator_fade_forward(d, x, B));
    }
    const float *feat = discriminator_stage_input(d, d->n_stages);
    int F = d->chan[d->n_stages] * 16;
    d->dropped = d->train && d->dropout > 0.0f;
    if (d->dropped) {
        dropout_forward(d->feat_drop, d->drop_mask, feat, d->dropout, &d->dropout_seed,
                        (long)B * F);
        feat = d->feat_drop;
    }
    CHECK(linear_forward(d->out, feat, W(d, d->p_fc_w), W(d, d->p_fc_b), B, F, 1));
    if (c->n_classes) {
        // Projection discriminator (Miyato & Koyama 2018): logit += <embed(y), features>.
        projection_forward(d->out, W(d, d->p_embed), y, feat, B, F);
    }
    return 0;
}

// From the gradient of the last stage's map (in its GRAD slot) back through every stage of the
// level to the image: parameter gradients when pg, and dx (accumulated) when not NULL.
static int backward_stages(Discriminator *d, int B, int pg, float *dx) {
    const SaganConfig *c = &d->cfg;
    int n_st = d->n_stages, k0 = discriminator_first_stage(d), L = d->level;
    int r = c->img >> n_st;
    for (int k = n_st - 1; k >= k0; k--) {
        int Ci = d->chan[k], Co = d->chan[k + 1];
        if (k == k0 && d->alpha < 1.0f) { // the blend's gradient to stage k0 and the old path
            long n = (long)B * Co * r * r;
            lerp_backward(GRAD(d, discriminator_stage_output(d, k0)), GRAD(d, d->old_act),
                          GRAD(d, d->blend), d->alpha, n);
            discriminator_lrelu_backward(d, k0 + 1, GRAD(d, d->old_pre), GRAD(d, d->old_act),
                                         d->old_pre, B);
            CHECK(conv2d_backward(dx ? GRAD(d, d->xpool) : NULL, pg ? DW(d, d->p_rgb_w[L - 1]) : NULL,
                                  pg ? DW(d, d->p_rgb_b[L - 1]) : NULL, GRAD(d, d->old_pre),
                                  d->xpool, W(d, d->p_rgb_w[L - 1]), B, c->channels, r, r, Co, 1,
                                  1, 0));
            if (dx) avgpool2x_backward(dx, GRAD(d, d->xpool), B, c->channels, 2 * r, 2 * r);
        }
        if (k == d->attn_stage)
            CHECK(attention_backward(GRAD(d, d->act[k]), pg ? DW(d, d->p_f) : NULL,
                                     pg ? DW(d, d->p_g) : NULL, pg ? DW(d, d->p_h) : NULL,
                                     pg ? DW(d, d->p_o) : NULL, pg ? DW(d, d->p_gamma) : NULL,
                                     GRAD(d, d->att), &d->att_saved, d->act[k], W(d, d->p_f),
                                     W(d, d->p_g), W(d, d->p_h), W(d, d->p_o),
                                     W(d, d->p_gamma)[0], d->att_scratch, B, Co, r * r));
        discriminator_lrelu_backward(d, k + 1, GRAD(d, d->conv[k]), GRAD(d, d->act[k]),
                                     d->conv[k], B);
        const float *in = discriminator_stage_input(d, k);
        CHECK(conv2d_backward(GRAD(d, in), pg ? DW(d, d->p_conv_w[k]) : NULL,
                              pg ? DW(d, d->p_conv_b[k]) : NULL, GRAD(d, d->conv[k]), in,
                              W(d, d->p_conv_w[k]), B, Ci, r * 2, r * 2, Co, 4, 2, 1));
        r *= 2;
    }
    if (k0 == 0) {
        discriminator_lrelu_backward(d, 0, GRAD(d, d->c0), GRAD(d, d->a0), d->c0, B);
        if (dx || pg)
            CHECK(conv2d_backward(dx, pg ? DW(d, d->p_in_w) : NULL, pg ? DW(d, d->p_in_b) : NULL,
                                  GRAD(d, d->c0), d->x, W(d, d->p_in_w), B, c->channels, r, r,
                                  d->chan[0], 3, 1, 1));
        return 0;
    }
    discriminator_lrelu_backward(d, k0, GRAD(d, d->conv[k0 - 1]), GRAD(d, d->act[k0 - 1]),
                                 d->conv[k0 - 1], B);
    if (dx || pg)
        CHECK(conv2d_backward(dx, pg ? DW(d, d->p_rgb_w[L]) : NULL, pg ? DW(d, d->p_rgb_b[L]) : NULL,
                              GRAD(d, d->conv[k0 - 1]), d->x, W(d, d->p_rgb_w[L]), B, c->channels,
                              r, r, d->chan[k0], 1, 1, 0));
    return 0;
}

int discriminator_backward(Discriminator *d, const float *dout, int B, int param_grads, float *dx) {
    const SaganConfig *c = &d->cfg;
    if (B < 1 || B > d->max_B) return KERNELS_EINVAL;
    int pg = param_grads != 0, n_st = d->n_stages, F = d->chan[n_st] * 16;
    memset(d->dacts, 0, d->acts_total * sizeof(float));
    const float *feat = d->dropped ? d->feat_drop : discriminator_stage_input(d, n_st);
    float *dfeat = GRAD(d, feat);
    CHECK(linear_backward(dfeat, pg ? DW(d, d->p_fc_w) : NULL, pg ? DW(d, d->p_fc_b) : NULL, dout,
                          feat, W(d, d->p_fc_w), B, F, 1));
    if (c->n_classes)
        projection_backward(dfeat, pg ? DW(d, d->p_embed) : NULL, dout, W(d, d->p_embed),
                            d->labels, feat, B, F);
    if (d->dropped)
        dropout_backward(GRAD(d, discriminator_stage_input(d, n_st)), dfeat, d->drop_mask,
                         (long)B * F);
    return backward_stages(d, B, pg, dx);
}

int discriminator_backward_features(Discriminator *d, const float *dfeat, int B, float *dx) {
    if (B < 1 || B > d->max_B) return KERNELS_EINVAL;
    int n_st = d->n_stages, F = d->chan[n_st] * 16;
    memset(d->dacts, 0, d->acts_total * sizeof(float));
    memcpy(GRAD(d, discriminator_stage_input(d, n_st)), dfeat, (size_t)B * F * sizeof(float));
    return backward_stages(d, B, 0, dx);
}

// ---------------------------------------------------------------------------------------------
// cost model, for GFLOP/s figures: multiply-accumulates of convolutions, linears and attention.

static double attention_macs(int C, int N) {
    return (double)N * C * (C / 8 + C / 8 + C / 2) + (double)N * C / 2 * C // f, g, h, o
           + (double)N * N * (C / 8 + C / 2);                            // scores, weighted sum
}

double generator_macs(const SaganConfig *cfg) {
    int n = sagan_stages(cfg);
    double m = (double)cfg->z_dim * 4 * cfg->ch * 16;
    int r = 4, C = 4 * cfg->ch;
    for (int s = 0; s < n; s++) {
        r *= 2;
        m += (double)r * r * C * (C / 2) * 9;
        C /= 2;
        if (cfg->attn_res == r) m += attention_macs(C, r * r);
    }
    return m + (double)r * r * C * cfg->channels * 9;
}

double discriminator_macs(const SaganConfig *cfg) {
    int n = sagan_stages(cfg), r = cfg->img, C = (4 * cfg->ch) >> n;
    double m = (double)r * r * cfg->channels * C * 9;
    for (int k = 0; k < n; k++) {
        r /= 2;
        m += (double)r * r * C * (2 * C) * 16;
        C *= 2;
        if (cfg->attn_res == r) m += attention_macs(C, r * r);
    }
    return m + (double)C * 16 * (1 + (cfg->n_classes ? 1 : 0));
}
