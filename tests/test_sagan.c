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

// Double forward of G; returns <img, R>. img_out (B*C*H*W) receives the image when not NULL.
static double ref_generator(const Generator *g, const double *params, const float *z,
                            const int32_t *y, int B, const double *R, double *img_out) {
    const SaganConfig *c = &g->cfg;
    const ParamSet *ps = &g->ps;
    double *we = dalloc(ps->total);
    int Z = c->z_dim, C0 = g->chan[0];
    double *zc = dalloc((long)B * Z);
    for (long i = 0; i < (long)B * Z; i++) zc[i] = z[i];
    if (c->n_classes) {
        const double *e = ref_w(ps, params, we, g->p_embed);
        for (int b = 0; b < B; b++)
            for (int k = 0; k < Z; k++) zc[b * Z + k] += e[y[b] * Z + k];
    }
    long n = (long)B * C0 * 16;
    double *x = dalloc(n), *t = dalloc(n), *rn = dalloc((long)B * 16 * 64);
    linear_forward_ref(t, zc, ref_w(ps, params, we, g->p_fc_w), ref_w(ps, params, we, g->p_fc_b),
                       B, Z, C0 * 16);
    lrelu(t, n, 0.2);
    pixelnorm_forward_ref(x, rn, t, B, C0, 16);
    free(t);
    int r = 4;
    for (int s = 0; s < g->n_stages; s++) {
        int Ci = g->chan[s], Co = g->chan[s + 1];
        double *up = dalloc((long)B * Ci * 4 * r * r);
        upsample2x_forward_ref(up, x, B, Ci, r, r);
        r *= 2;
        n = (long)B * Co * r * r;
        double *cv = dalloc(n), *pn = dalloc(n);
        conv2d_forward_ref(cv, up, ref_w(ps, params, we, g->p_conv_w[s]),
                           ref_w(ps, params, we, g->p_conv_b[s]), B, Ci, r, r, Co, 3, 1, 1);
        lrelu(cv, n, 0.2);
        free(rn);
        rn = dalloc((long)B * r * r);
        pixelnorm_forward_ref(pn, rn, cv, B, Co, r * r);
        free(up);
        free(cv);
        free(x);
        x = pn;
        if (s == g->attn_stage) {
            double *at = dalloc(n);
            attention_forward_ref(at, x, ref_w(ps, params, we, g->p_f),
                                  ref_w(ps, params, we, g->p_g), ref_w(ps, params, we, g->p_h),
                                  ref_w(ps, params, we, g->p_o),
                                  ref_w(ps, params, we, g->p_gamma)[0], B, Co, r * r);
            free(x);
            x = at;
        }
    }
    n = (long)B * c->channels * r * r;
    double *img = dalloc(n);
    conv2d_forward_ref(img, x, ref_w(ps, params, we, g->p_out_w),
                       ref_w(ps, params, we, g->p_out_b), B, g->chan[g->n_stages], r, r,
                       c->channels, 3, 1, 1);
    double L = 0;
    for (long i = 0; i < n; i++) {
        img[i] = tanh(img[i]);
        L += img[i] * R[i];
        if (img_out) img_out[i] = img[i];
    }
    free(img);
    free(x);
    free(rn);
    free(zc);
    free(we);
    return L;
}

// Double forward of D; returns <logits, R>; logits_out (B) when not NULL.
static double ref_discriminator(const Discriminator *d, const double *params, const double *xin,
                                const int32_t *y, int B, const double *R, double *logits_out) {
    const SaganConfig *c = &d->cfg;
    const ParamSet *ps = &d->ps;
    double *we = dalloc(ps->total);
    int r = c->img;
    long n = (long)B * d->chan[0] * r * r;
    double *x = dalloc(n);
    conv2d_forward_ref(x, xin, ref_w(ps, params, we, d->p_in_w), ref_w(ps, params, we, d->p_in_b),
                       B, c->channels, r, r, d->chan[0], 3, 1, 1);
    lrelu(x, n, 0.1);
    for (int k = 0; k < d->n_stages; k++) {
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
    double L = 0;
    for (int b = 0; b < B; b++) {
        L += out[b] * R[b];
        if (logits_out) logits_out[b] = out[b];
    }
    free(out);
    free(x);
    free(we);
    return L;
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

static void check_generator(const char *config) {
    SaganConfig cfg;
    assert_int_equal(sagan_config_lookup(&cfg, config), 0);
    enum { B = 2 };
    Generator g;
    assert_int_equal(generator_init(&g, &cfg, B, 7), 0);
    set_gamma(&g.ps, g.p_gamma, 0.7f);
    Rng rng;
    rng_seed(&rng, 99);
    long n_img = (long)B * cfg.channels * cfg.img * cfg.img;
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
    for (long i = 0; i < n_img; i++)
        if (fabs(g.img[i] - img_ref[i]) > 1e-4 + 1e-3 * fabs(img_ref[i])) {
            if (bad++ < 5)
                fprintf(stderr, "  G img[%ld]: %.7g vs reference %.7g\n", i, g.img[i], img_ref[i]);
        }
    Ctx c = {.g = &g, .z = z, .y = cfg.n_classes ? y : NULL, .B = B, .R = R};
    bad += fd_params(&c, &g.ps, params, NULL, &rng);
    if (bad) fprintf(stderr, "%s G: %d mismatches\n", config, bad);
    assert_int_equal(bad, 0);
    free(z);
    free(Rf);
    free(R);
    free(img_ref);
    free(params);
    generator_free(&g);
}

static void check_discriminator(const char *config) {
    SaganConfig cfg;
    assert_int_equal(sagan_config_lookup(&cfg, config), 0);
    enum { B = 2 };
    Discriminator d;
    assert_int_equal(discriminator_init(&d, &cfg, B, 11), 0);
    set_gamma(&d.ps, d.p_gamma, -0.6f);
    Rng rng;
    rng_seed(&rng, 5);
    long n_img = (long)B * cfg.channels * cfg.img * cfg.img;
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
    if (bad) fprintf(stderr, "%s D: %d mismatches\n", config, bad);
    assert_int_equal(bad, 0);
    free(x);
    free(dx);
    free(xin);
    free(params);
    discriminator_free(&d);
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
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
