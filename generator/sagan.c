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
    {"fmnist32", 32, 128, 32, 1, 0, 16},
    {"fmnist32c", 32, 128, 32, 1, 10, 16},
    {"tiny", 8, 16, 32, 1, 0, 16},
    {"tinyc", 8, 16, 32, 1, 10, 16},
    {"tiny64", 16, 16, 64, 3, 4, 16},
    {"rgb32", 32, 128, 32, 3, 0, 16},
    {"rgb64", 32, 128, 64, 3, 0, 16},
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

typedef struct {
    float *base; // NULL while counting
    long used;
} Carver;

static float *carve(Carver *cv, long n) {
    float *p = cv->base ? cv->base + cv->used : NULL;
    cv->used += (n + 15) & ~15L; // 64-byte aligned slices
    return p;
}

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

static int generator_forward_threads(Generator *g, const float *z, const int32_t *y, int B) {
    const SaganConfig *c = &g->cfg;
    if (B < 1 || B > g->max_B) return KERNELS_EINVAL;
    int Z = c->z_dim, C0 = g->chan[0];
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
    for (int s = 0; s < g->n_stages; s++) {
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
    CHECK(conv2d_forward(g->pre, x, W(g, g->p_out_w), W(g, g->p_out_b), B, g->chan[g->n_stages], r,
                         r, c->channels, 3, 1, 1));
    tanh_forward(g->img, g->pre, (long)B * c->channels * r * r);
    g->l1_value = 0.0;
    if (g->l1_act > 0.0f)
        for (int s = 0; s <= g->n_stages; s++) {
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

int generator_backward(Generator *g, const float *dimg, int B) {
    const SaganConfig *c = &g->cfg;
    if (B < 1 || B > g->max_B) return KERNELS_EINVAL;
    int Z = c->z_dim, C0 = g->chan[0], n_st = g->n_stages, r = c->img;
    memset(g->dacts, 0, g->acts_total * sizeof(float));
    tanh_backward(GRAD(g, g->pre), dimg, g->img, (long)B * c->channels * r * r);
    const float *x = generator_stage_input(g, n_st);
    CHECK(conv2d_backward(GRAD(g, x), DW(g, g->p_out_w), DW(g, g->p_out_b), GRAD(g, g->pre), x,
                          W(g, g->p_out_w), B, g->chan[n_st], r, r, c->channels, 3, 1, 1));
    generator_l1_backward(g, n_st, B);
    for (int s = n_st - 1; s >= 0; s--) {
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
    d->out = carve(cv, B);
    d->proj = carve(cv, B * d->chan[d->n_stages] * 16);
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

// The tensor that feeds stage k (k == n_stages: the flattened features).
static const float *discriminator_stage_input(const Discriminator *d, int k) {
    if (k == 0) return d->a0;
    return (k - 1 == d->attn_stage) ? d->att : d->act[k - 1];
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

int discriminator_forward(Discriminator *d, const float *x, const int32_t *y, int B) {
    const SaganConfig *c = &d->cfg;
    if (B < 1 || B > d->max_B) return KERNELS_EINVAL;
    if (c->n_classes) {
        if (!y) return KERNELS_EINVAL;
        for (int b = 0; b < B; b++)
            if (y[b] < 0 || y[b] >= c->n_classes) return KERNELS_EINVAL;
    }
    d->x = x;
    d->labels = y;
    int r = c->img;
    CHECK(conv2d_forward(d->c0, x, W(d, d->p_in_w), W(d, d->p_in_b), B, c->channels, r, r,
                         d->chan[0], 3, 1, 1));
    discriminator_lrelu_forward(d, 0, d->a0, d->c0, B);
    for (int k = 0; k < d->n_stages; k++) {
        const float *in = discriminator_stage_input(d, k);
        int Ci = d->chan[k], Co = d->chan[k + 1];
        CHECK(conv2d_forward(d->conv[k], in, W(d, d->p_conv_w[k]), W(d, d->p_conv_b[k]), B, Ci, r,
                             r, Co, 4, 2, 1));
        r /= 2;
        discriminator_lrelu_forward(d, k + 1, d->act[k], d->conv[k], B);
        if (k == d->attn_stage)
            CHECK(attention_forward(d->att, &d->att_saved, d->act[k], W(d, d->p_f), W(d, d->p_g),
                                    W(d, d->p_h), W(d, d->p_o), W(d, d->p_gamma)[0], B, Co, r * r));
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
        embedding_forward(d->proj, W(d, d->p_embed), y, B, F);
        for (int b = 0; b < B; b++) {
            const float *e = d->proj + (long)b * F, *h = feat + (long)b * F;
            float s = 0;
            for (int i = 0; i < F; i++) s += e[i] * h[i];
            d->out[b] += s;
        }
    }
    return 0;
}

// From the gradient of the last stage's map (in its GRAD slot) back through every stage to the
// image: parameter gradients when pg, and dx (accumulated) when not NULL.
static int backward_stages(Discriminator *d, int B, int pg, float *dx) {
    const SaganConfig *c = &d->cfg;
    int n_st = d->n_stages;
    int r = c->img >> n_st;
    for (int k = n_st - 1; k >= 0; k--) {
        int Ci = d->chan[k], Co = d->chan[k + 1];
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
    discriminator_lrelu_backward(d, 0, GRAD(d, d->c0), GRAD(d, d->a0), d->c0, B);
    if (dx || pg)
        CHECK(conv2d_backward(dx, pg ? DW(d, d->p_in_w) : NULL, pg ? DW(d, d->p_in_b) : NULL,
                              GRAD(d, d->c0), d->x, W(d, d->p_in_w), B, c->channels, r, r,
                              d->chan[0], 3, 1, 1));
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
    if (c->n_classes) {
        float *demb = DW(d, d->p_embed);
        for (int b = 0; b < B; b++) {
            const float *e = d->proj + (long)b * F, *h = feat + (long)b * F;
            float *dh = dfeat + (long)b * F, g = dout[b];
            for (int i = 0; i < F; i++) dh[i] += g * e[i];
            if (pg) {
                float *de = demb + (long)d->labels[b] * F;
                for (int i = 0; i < F; i++) de[i] += g * h[i];
            }
        }
    }
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
