// test_sagan.c — whole G and D against finite differences computed in double.
//
// The networks are rebuilt here from the double reference kernels (reference.h), spectral norm
// included, as plain forward passes. For a scalar loss L = <output, R> with a fixed random R, the
// gradient of every parameter tensor (a few sampled entries of each) and of D's input is taken by
// central differences of that double forward, and compared with the float analytic gradient of
// the real G and D (sagan.c: forward, backward, paramset_sn_backward). The forward outputs are
// compared too. Tiny configs keep it fast; gamma is set non-zero so attention gets gradients.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "generator/sagan.h"
#include "kernels/reference.h"
#include "kernels/rng.h"

#define FD_H 1e-6 // small: PixelNorm over few channels curves sharply; 1e-5 already shows it at 64x64
#define ATOL 2e-4
#define RTOL 2e-3

static double *dalloc(long n) {
    double *p = calloc((size_t)(n > 0 ? n : 1), sizeof(double));
    if (!p) {
        fprintf(stderr, "%s:%d: out of memory\n", __FILE__, __LINE__);
        exit(1);
    }
    return p;
}

// Effective weight of parameter i in double: W/sigma for SN params (stored u, no update).
static const double *ref_w(const ParamSet *ps, const double *params, double *w_eff, int i) {
    const Param *p = &ps->p[i];
    if (!p->sn) return params + p->offset;
    double *u = dalloc(p->rows), *v = dalloc(p->cols);
    for (int k = 0; k < p->rows; k++) u[k] = ps->sn_u[p->u_offset + k];
    specnorm_forward_ref(w_eff + p->offset, v, u, params + p->offset, p->rows, p->cols, 0);
    free(u);
    free(v);
    return w_eff + p->offset;
}

static void lrelu(double *x, long n, double a) {
    for (long i = 0; i < n; i++) x[i] = x[i] > 0 ? x[i] : a * x[i];
}

// The image layer of level L in double: `out` (3x3) at the last level, toRGB L (1x1) below it.
static void ref_rgb(const Generator *g, const double *params, double *we, double *out,
                    const double *x, int L, int B) {
    int last = L == g->n_stages, r = 4 << L;
    conv2d_forward_ref(out, x, ref_w(&g->ps, params, we, last ? g->p_out_w : g->p_rgb_w[L]),
                       ref_w(&g->ps, params, we, last ? g->p_out_b : g->p_rgb_b[L]), B, g->chan[L],
                       r, r, g->cfg.channels, last ? 3 : 1, 1, last ? 1 : 0);
}

// Double forward of G at its level and fade-in (sagan.h); returns <img, R> for the image at that
// level's resolution. img_out (B*C*R*R) receives the image when not NULL.
static double ref_generator(const Generator *g, const double *params, const float *z,
                            const int32_t *y, int B, const double *R, double *img_out) {
    const SaganConfig *c = &g->cfg;
    const ParamSet *ps = &g->ps;
    double *we = dalloc(ps->total);
    int Z = c->z_dim, C0 = g->chan[0], L = g->level;
    double *zc = dalloc((long)B * Z);
    for (long i = 0; i < (long)B * Z; i++) zc[i] = z[i];
    if (c->n_classes) {
        const double *e = ref_w(ps, params, we, g->p_embed);
        for (int b = 0; b < B; b++)
            for (int k = 0; k < Z; k++) zc[b * Z + k] += e[y[b] * Z + k];
    }
    double *xs[SAGAN_MAX_STAGES + 1] = {0}; // the input of every stage, and of the image layer
    long n = (long)B * C0 * 16;
    double *t = dalloc(n), *rn = dalloc((long)B * 64 * 64);
    xs[0] = dalloc(n);
    linear_forward_ref(t, zc, ref_w(ps, params, we, g->p_fc_w), ref_w(ps, params, we, g->p_fc_b),
                       B, Z, C0 * 16);
    lrelu(t, n, 0.2);
    pixelnorm_forward_ref(xs[0], rn, t, B, C0, 16);
    free(t);
    int r = 4;
    for (int s = 0; s < L; s++) {
        int Ci = g->chan[s], Co = g->chan[s + 1];
        double *up = dalloc((long)B * Ci * 4 * r * r);
        upsample2x_forward_ref(up, xs[s], B, Ci, r, r);
        r *= 2;
        n = (long)B * Co * r * r;
        double *cv = dalloc(n), *pn = dalloc(n);
        conv2d_forward_ref(cv, up, ref_w(ps, params, we, g->p_conv_w[s]),
                           ref_w(ps, params, we, g->p_conv_b[s]), B, Ci, r, r, Co, 3, 1, 1);
        lrelu(cv, n, 0.2);
        pixelnorm_forward_ref(pn, rn, cv, B, Co, r * r);
        free(up);
        free(cv);
        xs[s + 1] = pn;
        if (s == g->attn_stage) {
            double *at = dalloc(n);
            attention_forward_ref(at, pn, ref_w(ps, params, we, g->p_f),
                                  ref_w(ps, params, we, g->p_g), ref_w(ps, params, we, g->p_h),
                                  ref_w(ps, params, we, g->p_o),
                                  ref_w(ps, params, we, g->p_gamma)[0], B, Co, r * r);
            free(pn);
            xs[s + 1] = at;
        }
    }
    n = (long)B * c->channels * r * r;
    double *img = dalloc(n);
    ref_rgb(g, params, we, img, xs[L], L, B);
    if (g->alpha < 1.0f) { // fade-in: the previous level's image, upsampled, blended
        double *old = dalloc(n / 4), *up = dalloc(n), a = g->alpha;
        ref_rgb(g, params, we, old, xs[L - 1], L - 1, B);
        upsample2x_forward_ref(up, old, B, c->channels, r / 2, r / 2);
        for (long i = 0; i < n; i++) img[i] = a * img[i] + (1 - a) * up[i];
        free(old);
        free(up);
    }
    double loss = 0;
    for (long i = 0; i < n; i++) {
        img[i] = tanh(img[i]);
        loss += img[i] * R[i];
        if (img_out) img_out[i] = img[i];
    }
    free(img);
    for (int s = 0; s <= L; s++) free(xs[s]);
    free(rn);
    free(zc);
    free(we);
    return loss;
}

// Double forward of D at its level and fade-in; xin is (B, C, R, R) for the level's R. Returns
// <logits, R>; logits_out (B) when not NULL.
static double ref_discriminator(const Discriminator *d, const double *params, const double *xin,
                                const int32_t *y, int B, const double *R, double *logits_out) {
    const SaganConfig *c = &d->cfg;
    const ParamSet *ps = &d->ps;
    double *we = dalloc(ps->total);
    int L = d->level, k0 = d->n_stages - L, r = c->img >> k0;
    long n = (long)B * d->chan[k0] * r * r;
    double *x = dalloc(n);
    if (k0 == 0)
        conv2d_forward_ref(x, xin, ref_w(ps, params, we, d->p_in_w),
                           ref_w(ps, params, we, d->p_in_b), B, c->channels, r, r, d->chan[0], 3,
                           1, 1);
    else
        conv2d_forward_ref(x, xin, ref_w(ps, params, we, d->p_rgb_w[L]),
                           ref_w(ps, params, we, d->p_rgb_b[L]), B, c->channels, r, r, d->chan[k0],
                           1, 1, 0);
    lrelu(x, n, 0.1);
    for (int k = k0; k < d->n_stages; k++) {
        int Ci = d->chan[k], Co = d->chan[k + 1];
        n = (long)B * Co * (r / 2) * (r / 2);
        double *o = dalloc(n);
        conv2d_forward_ref(o, x, ref_w(ps, params, we, d->p_conv_w[k]),
                           ref_w(ps, params, we, d->p_conv_b[k]), B, Ci, r, r, Co, 4, 2, 1);
        r /= 2;
        lrelu(o, n, 0.1);
        free(x);
        x = o;
        if (k == d->attn_stage) {
            double *at = dalloc(n);
            attention_forward_ref(at, x, ref_w(ps, params, we, d->p_f),
                                  ref_w(ps, params, we, d->p_g), ref_w(ps, params, we, d->p_h),
                                  ref_w(ps, params, we, d->p_o),
                                  ref_w(ps, params, we, d->p_gamma)[0], B, Co, r * r);
            free(x);
            x = at;
        }
        if (k == k0 && d->alpha < 1.0f) { // fade-in: the pooled image through fromRGB L - 1
            double *pool = dalloc((long)B * c->channels * r * r), *old = dalloc(n), a = d->alpha;
            avgpool2x_forward_ref(pool, xin, B, c->channels, 2 * r, 2 * r);
            conv2d_forward_ref(old, pool, ref_w(ps, params, we, d->p_rgb_w[L - 1]),
                               ref_w(ps, params, we, d->p_rgb_b[L - 1]), B, c->channels, r, r, Co,
                               1, 1, 0);
            lrelu(old, n, 0.1);
            for (long i = 0; i < n; i++) x[i] = a * x[i] + (1 - a) * old[i];
            free(pool);
            free(old);
        }
    }
    int F = d->chan[d->n_stages] * 16;
    double *out = dalloc(B);
    linear_forward_ref(out, x, ref_w(ps, params, we, d->p_fc_w), ref_w(ps, params, we, d->p_fc_b),
                       B, F, 1);
    if (c->n_classes) {
        const double *e = ref_w(ps, params, we, d->p_embed);
        for (int b = 0; b < B; b++)
            for (int i = 0; i < F; i++) out[b] += e[(long)y[b] * F + i] * x[(long)b * F + i];
    }
    double loss = 0;
    for (int b = 0; b < B; b++) {
        loss += out[b] * R[b];
        if (logits_out) logits_out[b] = out[b];
    }
    free(out);
    free(x);
    free(we);
    return loss;
}

typedef struct {
    const Generator *g;
    const Discriminator *d;
    const float *z;
    const double *xin;
    const int32_t *y;
    int B;
    const double *R;
} Ctx;

static double loss_of(const Ctx *c, const double *params, const double *xin) {
    return c->g ? ref_generator(c->g, params, c->z, c->y, c->B, c->R, NULL)
                : ref_discriminator(c->d, params, xin, c->y, c->B, c->R, NULL);
}

// Compares analytic[i] with the central difference of the double loss in params[i] (or xin[i]).
static int fd_entry(const Ctx *c, double *params, double *xin, double *slot, double analytic,
                    const char *what, long idx) {
    double keep = *slot;
    *slot = keep + FD_H;
    double lp = loss_of(c, params, xin);
    *slot = keep - FD_H;
    double lm = loss_of(c, params, xin);
    *slot = keep;
    double fd = (lp - lm) / (2 * FD_H);
    if (fabs(fd - analytic) > ATOL + RTOL * fabs(fd)) {
        fprintf(stderr, "  %s[%ld]: analytic %.8g, finite difference %.8g\n", what, idx, analytic,
                fd);
        return 1;
    }
    return 0;
}

// Checks a few entries of every parameter tensor; returns the number of mismatches.
static int fd_params(const Ctx *c, const ParamSet *ps, double *params, double *xin, Rng *rng) {
    int bad = 0;
    for (int i = 0; i < ps->n; i++) {
        const Param *p = &ps->p[i];
        int k_max = p->numel < 4 ? (int)p->numel : 4;
        for (int k = 0; k < k_max; k++) {
            long j = (long)rng_below(rng, (uint32_t)p->numel);
            bad += fd_entry(c, params, xin, params + p->offset + j, ps->grads[p->offset + j],
                            p->name, j);
        }
    }
    return bad;
}

static void set_gamma(ParamSet *ps, int i, float v) {
    if (i >= 0) ps->params[ps->p[i].offset] = v;
}

// level 0: the full network of a config without progressive layers; else that level and fade-in
// of the config with them (cfg.prog).
static void check_generator_at(const char *config, int level, float alpha) {
    SaganConfig cfg;
    assert_int_equal(sagan_config_lookup(&cfg, config), 0);
    cfg.prog = level > 0;
    enum { B = 2 };
    Generator g;
    assert_int_equal(generator_init(&g, &cfg, B, 7), 0);
    set_gamma(&g.ps, g.p_gamma, 0.7f);
    if (level) assert_int_equal(generator_set_level(&g, level, alpha), 0);
    for (int L = 1; L < g.n_stages && level; L++) // toRGB biases off zero: their gradients show
        g.ps.params[g.ps.p[g.p_rgb_b[L]].offset] = 0.05f * L;
    Rng rng;
    rng_seed(&rng, 99);
    int res = generator_resolution(&g);
    long n_img = (long)B * cfg.channels * res * res;
    float *z = calloc((size_t)B * cfg.z_dim, sizeof(float)), *Rf = calloc(n_img, sizeof(float));
    double *R = dalloc(n_img), *img_ref = dalloc(n_img), *params = dalloc(g.ps.total);
    int32_t y[B] = {3, 8};
    for (int b = 0; b < B; b++) y[b] %= cfg.n_classes ? cfg.n_classes : 1;
    rng_normal(&rng, z, (long)B * cfg.z_dim);
    // R in [0.5, 1.5]: a loss of one sign keeps the float gradient sums (over up to B*64*64
    // terms) from cancelling, so float rounding stays well under the tolerance.
    for (long i = 0; i < n_img; i++) Rf[i] = 0.5f + rng_uniform(&rng);
    for (long i = 0; i < n_img; i++) R[i] = Rf[i];
    for (long i = 0; i < g.ps.total; i++) params[i] = g.ps.params[i];

    paramset_sn_forward(&g.ps, 0);
    assert_int_equal(generator_forward(&g, z, cfg.n_classes ? y : NULL, B), 0);
    paramset_zero_grad(&g.ps);
    assert_int_equal(generator_backward(&g, Rf, B), 0);
    paramset_sn_backward(&g.ps);

    ref_generator(&g, params, z, cfg.n_classes ? y : NULL, B, R, img_ref);
    int bad = 0;
    const float *out = generator_output(&g);
    for (long i = 0; i < n_img; i++)
        if (fabs(out[i] - img_ref[i]) > 1e-4 + 1e-3 * fabs(img_ref[i])) {
            if (bad++ < 5)
                fprintf(stderr, "  G img[%ld]: %.7g vs reference %.7g\n", i, out[i], img_ref[i]);
        }
    // below the last level g.img holds the image upsampled to full size
    int f = cfg.img / res;
    for (long i = 0; i < (long)B * cfg.channels * cfg.img * cfg.img && f > 1; i++) {
        long plane = i / ((long)cfg.img * cfg.img), p = i % ((long)cfg.img * cfg.img);
        long yy = p / cfg.img / f, xx = p % cfg.img / f;
        bad += g.img[i] != out[plane * res * res + yy * res + xx];
    }
    Ctx c = {.g = &g, .z = z, .y = cfg.n_classes ? y : NULL, .B = B, .R = R};
    bad += fd_params(&c, &g.ps, params, NULL, &rng);
    if (bad) fprintf(stderr, "%s G level %d alpha %g: %d mismatches\n", config, level, alpha, bad);
    assert_int_equal(bad, 0);
    free(z);
    free(Rf);
    free(R);
    free(img_ref);
    free(params);
    generator_free(&g);
}

static void check_discriminator_at(const char *config, int level, float alpha) {
    SaganConfig cfg;
    assert_int_equal(sagan_config_lookup(&cfg, config), 0);
    cfg.prog = level > 0;
    enum { B = 2 };
    Discriminator d;
    assert_int_equal(discriminator_init(&d, &cfg, B, 11), 0);
    set_gamma(&d.ps, d.p_gamma, -0.6f);
    if (level) assert_int_equal(discriminator_set_level(&d, level, alpha), 0);
    Rng rng;
    rng_seed(&rng, 5);
    int res = 4 << d.level;
    long n_img = (long)B * cfg.channels * res * res;
    float *x = calloc(n_img, sizeof(float)), *dx = calloc(n_img, sizeof(float));
    float Rf[B];
    double R[B], logits_ref[B], *xin = dalloc(n_img), *params = dalloc(d.ps.total);
    int32_t y[B] = {1, 6};
    for (int b = 0; b < B; b++) y[b] %= cfg.n_classes ? cfg.n_classes : 1;
    for (long i = 0; i < n_img; i++) x[i] = xin[i] = 2 * rng_uniform(&rng) - 1;
    rng_normal(&rng, Rf, B);
    for (int b = 0; b < B; b++) R[b] = Rf[b];
    for (long i = 0; i < d.ps.total; i++) params[i] = d.ps.params[i];

    paramset_sn_forward(&d.ps, 0);
    assert_int_equal(discriminator_forward(&d, x, cfg.n_classes ? y : NULL, B), 0);
    paramset_zero_grad(&d.ps);
    assert_int_equal(discriminator_backward(&d, Rf, B, 1, dx), 0);
    paramset_sn_backward(&d.ps);

    ref_discriminator(&d, params, xin, cfg.n_classes ? y : NULL, B, R, logits_ref);
    int bad = 0;
    for (int b = 0; b < B; b++)
        if (fabs(d.out[b] - logits_ref[b]) > 1e-4 + 1e-3 * fabs(logits_ref[b])) {
            fprintf(stderr, "  D logit[%d]: %.7g vs reference %.7g\n", b, d.out[b], logits_ref[b]);
            bad++;
        }
    Ctx c = {.d = &d, .xin = xin, .y = cfg.n_classes ? y : NULL, .B = B, .R = R};
    bad += fd_params(&c, &d.ps, params, xin, &rng);
    for (int k = 0; k < 12; k++) {
        long j = (long)rng_below(&rng, (uint32_t)n_img);
        bad += fd_entry(&c, params, xin, xin + j, dx[j], "D input", j);
    }
    if (bad) fprintf(stderr, "%s D level %d alpha %g: %d mismatches\n", config, level, alpha, bad);
    assert_int_equal(bad, 0);
    free(x);
    free(dx);
    free(xin);
    free(params);
    discriminator_free(&d);
}

static void check_generator(const char *config) { check_generator_at(config, 0, 1.0f); }
static void check_discriminator(const char *config) { check_discriminator_at(config, 0, 1.0f); }

// Progressive growing: every level, stable and fading in, of 32x32 (3 levels) and 64x64 RGB (4).
static void test_generator_progressive(void **state) {
    (void)state;
    check_generator_at("tinyc", 1, 1.0f);  // 8x8, no attention yet
    check_generator_at("tinyc", 2, 0.3f);  // fading into 16x16 (attention's stage)
    check_generator_at("tinyc", 2, 1.0f);
    check_generator_at("tinyc", 3, 0.6f);  // fading into the last level: `out` against toRGB 16
    check_generator_at("tinyc", 3, 1.0f);  // the last level: the ordinary network
    check_generator_at("tiny64", 3, 0.5f);
    check_generator_at("tiny64", 4, 0.25f);
}
static void test_discriminator_progressive(void **state) {
    (void)state;
    check_discriminator_at("tinyc", 1, 1.0f);
    check_discriminator_at("tinyc", 2, 0.3f);
    check_discriminator_at("tinyc", 2, 1.0f);
    check_discriminator_at("tinyc", 3, 0.6f); // conv0 against fromRGB 16 of the pooled image
    check_discriminator_at("tinyc", 3, 1.0f);
    check_discriminator_at("tiny64", 3, 0.5f);
    check_discriminator_at("tiny64", 4, 0.25f);
    check_discriminator_at("tiny", 2, 0.7f);
}

// Levels a network without the progressive layers, or out of range, refuses.
static void test_level_checks(void **state) {
    (void)state;
    SaganConfig cfg;
    assert_int_equal(sagan_config_lookup(&cfg, "tiny"), 0);
    Generator g;
    Discriminator d;
    assert_int_equal(generator_init(&g, &cfg, 1, 1), 0);
    assert_int_equal(discriminator_init(&d, &cfg, 1, 1), 0);
    assert_int_equal(generator_set_level(&g, 3, 1.0f), 0);
    assert_int_equal(generator_set_level(&g, 2, 1.0f), -1); // no toRGB 16 without cfg.prog
    assert_int_equal(generator_set_level(&g, 3, 0.5f), -1);
    assert_int_equal(discriminator_set_level(&d, 1, 1.0f), -1);
    generator_free(&g);
    discriminator_free(&d);
    cfg.prog = 1;
    assert_int_equal(generator_init(&g, &cfg, 1, 1), 0);
    assert_int_equal(generator_set_level(&g, 0, 1.0f), -1);
    assert_int_equal(generator_set_level(&g, 4, 1.0f), -1);
    assert_int_equal(generator_set_level(&g, 1, 0.5f), -1); // nothing to fade from
    assert_int_equal(generator_set_level(&g, 2, 0.0f), -1);
    assert_int_equal(generator_set_level(&g, 2, 1.5f), -1);
    assert_int_equal(g.level, 3); // unchanged by the refusals
    assert_int_equal(generator_set_level(&g, 2, 0.5f), 0);
    assert_int_equal(generator_resolution(&g), 16);
    generator_free(&g);
}

static void test_generator_unconditional(void **state) {
    (void)state;
    check_generator("tiny");
}
static void test_generator_conditional(void **state) {
    (void)state;
    check_generator("tinyc");
}
// 64x64 RGB with four classes: one more stage in each network, attention deeper in G.
static void test_generator_rgb64(void **state) {
    (void)state;
    check_generator("tiny64");
}
static void test_discriminator_rgb64(void **state) {
    (void)state;
    check_discriminator("tiny64");
}
static void test_discriminator_unconditional(void **state) {
    (void)state;
    check_discriminator("tiny");
}
static void test_discriminator_conditional(void **state) {
    (void)state;
    check_discriminator("tinyc");
}

// The fmnist32 shapes of DESIGN.md: parameter counts equal those of the PyTorch twin
// (bench/torch_sagan.py: G 362,498 and D 175,746; conditional 363,778 and 196,226).
static void test_parameter_counts(void **state) {
    (void)state;
    const char *names[2] = {"fmnist32", "fmnist32c"};
    long want_g[2] = {362498, 363778}, want_d[2] = {175746, 196226};
    for (int k = 0; k < 2; k++) {
        SaganConfig cfg;
        assert_int_equal(sagan_config_lookup(&cfg, names[k]), 0);
        Generator g;
        Discriminator d;
        assert_int_equal(generator_init(&g, &cfg, 1, 1), 0);
        assert_int_equal(discriminator_init(&d, &cfg, 1, 1), 0);
        long ng = 0, nd = 0;
        for (int i = 0; i < g.ps.n; i++) ng += g.ps.p[i].numel;
        for (int i = 0; i < d.ps.n; i++) nd += d.ps.p[i].numel;
        fprintf(stderr, "%s: G %ld, D %ld parameters\n", names[k], ng, nd);
        assert_int_equal(ng, want_g[k]);
        assert_int_equal(nd, want_d[k]);
        generator_free(&g);
        discriminator_free(&d);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parameter_counts),
        cmocka_unit_test(test_generator_unconditional),
        cmocka_unit_test(test_generator_conditional),
        cmocka_unit_test(test_discriminator_unconditional),
        cmocka_unit_test(test_discriminator_conditional),
        cmocka_unit_test(test_generator_rgb64),
        cmocka_unit_test(test_discriminator_rgb64),
        cmocka_unit_test(test_generator_progressive),
        cmocka_unit_test(test_discriminator_progressive),
        cmocka_unit_test(test_level_checks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
