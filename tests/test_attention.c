// test_attention.c — unit tests of the SAGAN attention block: kernels/attention.c against its
// double reference in kernels/reference_conv.c.
//
// (1) Central finite differences in double against every gradient of the reference (x, the four
// weights and gamma), with pre-filled gradient buffers so the accumulate (+=) contract is checked
// too. (2) The fast float kernel, forward and backward, against the reference: at the model's
// shape (C = 32, N = 16x16) at batch 1 (no parallel region) and batch > 1, at small odd shapes,
// with the weight gradients left out, twice over the same buffers (the second call must add as
// much again), and with scores large enough that a softmax without the max subtraction would
// overflow. No timings here.
//
// Every comparison prints its worst pairs and fails the test; test_compare_can_fail shows that
// the comparison rejects a planted error.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/attention.h"
#include "kernels/kernels.h"
#include "kernels/reference.h"
#include "kernels/rng.h"
#include "tests/check.h"

#define ATOL 1e-4
#define RTOL 1e-3
#define FD_ATOL 1e-6
#define FD_RTOL 1e-5
#define FD_H 1e-5

#define ASSERT_CLOSE(what, gotf, want, n)                                                          \
    assert_int_equal(check_compare_f(what, gotf, want, n, ATOL, RTOL), 0)

static Rng test_rng;

// x (n) uniform in [-scale, scale), in both precisions (either may be NULL); the float values
// are the doubles rounded, so the reference sees exactly the kernel's inputs.
static void fill(float *xf, double *xd, long n, double scale) {
    check_fill_uniform(&test_rng, xf, xd, n, -scale, scale);
}

static int setup(void **state) {
    (void)state;
    rng_seed(&test_rng, 20240612);
    return 0;
}

// --- finite differences in double ---------------------------------------------------------------

typedef struct {
    double *x, *wf, *wg, *wh, *wo, gamma;
    int B, C, N;
    double *out;        // (B, C, N) scratch
    const double *dout; // (B, C, N)
} AttnCtx;

// L = <attention_forward_ref(ctx), dout>, a CheckLossFn that reads the perturbed input through ctx.
static double attn_loss(const double *p, long n, void *ctx) {
    (void)p, (void)n;
    AttnCtx *c = ctx;
    attention_forward_ref(c->out, c->x, c->wf, c->wg, c->wh, c->wo, c->gamma, c->B, c->C, c->N);
    double l = 0;
    for (long k = 0; k < (long)c->B * c->C * c->N; k++)
        l += c->out[k] * c->dout[k];
    return l;
}

// Checks the added part of grad (grad - init, n) against central differences in p (n).
static void fd_check(const char *what, AttnCtx *c, double *p, const double *grad,
                     const double *init, long n) {
    double *analytic = CHECK_ALLOC(double, n);
    for (long i = 0; i < n; i++)
        analytic[i] = grad[i] - init[i];
    int bad = check_compare_fd(what, analytic, p, n, FD_H, attn_loss, c, FD_ATOL, FD_RTOL);
    free(analytic);
    assert_int_equal(bad, 0);
}

static void test_attention_ref_fd(void **state) {
    (void)state;
    int B = 2, C = 8, N = 5, C8 = C / 8, C2 = C / 2;
    long nx = (long)B * C * N, nf = (long)C8 * C, nh = (long)C2 * C;
    AttnCtx c = {.gamma = 0.7, .B = B, .C = C, .N = N};
    c.x = CHECK_ALLOC(double, nx), c.wf = CHECK_ALLOC(double, nf), c.wg = CHECK_ALLOC(double, nf);
    c.wh = CHECK_ALLOC(double, nh), c.wo = CHECK_ALLOC(double, nh);
    fill(NULL, c.x, nx, 1.0);
    fill(NULL, c.wf, nf, 1.0);
    fill(NULL, c.wg, nf, 1.0);
    fill(NULL, c.wh, nh, 1.0);
    fill(NULL, c.wo, nh, 1.0);
    double *dout = CHECK_ALLOC(double, nx), *out = CHECK_ALLOC(double, nx);
    fill(NULL, dout, nx, 1.0);
    c.out = out, c.dout = dout;
    // Gradient buffers start from random values; init keeps them to take the added part out.
    double *init = CHECK_ALLOC(double, nx + 2 * nf + 2 * nh + 1);
    fill(NULL, init, nx + 2 * nf + 2 * nh + 1, 1.0);
    double *g = CHECK_ALLOC(double, nx + 2 * nf + 2 * nh + 1);
    memcpy(g, init, sizeof(double) * (nx + 2 * nf + 2 * nh + 1));
    double *dx = g, *dwf = dx + nx, *dwg = dwf + nf, *dwh = dwg + nf, *dwo = dwh + nh,
           *dgamma = dwo + nh;
    attention_backward_ref(dx, dwf, dwg, dwh, dwo, dgamma, dout, c.x, c.wf, c.wg, c.wh, c.wo,
                           c.gamma, B, C, N);
    fd_check("attention_ref dx", &c, c.x, dx, init, nx);
    fd_check("attention_ref dwf", &c, c.wf, dwf, init + nx, nf);
    fd_check("attention_ref dwg", &c, c.wg, dwg, init + nx + nf, nf);
    fd_check("attention_ref dwh", &c, c.wh, dwh, init + nx + 2 * nf, nh);
    fd_check("attention_ref dwo", &c, c.wo, dwo, init + nx + 2 * nf + nh, nh);
    fd_check("attention_ref dgamma", &c, &c.gamma, dgamma, init + nx + 2 * nf + 2 * nh, 1);
    free(c.x), free(c.wf), free(c.wg), free(c.wh), free(c.wo), free(dout), free(out), free(init);
    free(g);
}

// --- the fast kernel against the reference -------------------------------------------------------

// One shape: forward, then backward twice into pre-filled gradients (each must end as
// init + 2 * reference). weights = 0 leaves the weight and gamma gradients out. wscale scales
// wf and wg, and so the attention scores.
static void attention_case(int B, int C, int N, float gamma, int weights, double wscale) {
    int C8 = C / 8, C2 = C / 2;
    long nx = (long)B * C * N, nf = (long)C8 * C, nh = (long)C2 * C;
    char what[120], part[160];
    snprintf(what, sizeof(what), "attention B%d C%d N%d gamma %g%s", B, C, N, gamma,
             weights ? "" : " (no weight grads)");
    float *x = CHECK_ALLOC(float, nx), *wf = CHECK_ALLOC(float, nf), *wg = CHECK_ALLOC(float, nf);
    float *wh = CHECK_ALLOC(float, nh), *wo = CHECK_ALLOC(float, nh), *out = CHECK_ALLOC(float, nx);
    float *dout = CHECK_ALLOC(float, nx);
    double *x_d = CHECK_ALLOC(double, nx), *wf_d = CHECK_ALLOC(double, nf),
           *wg_d = CHECK_ALLOC(double, nf);
    double *wh_d = CHECK_ALLOC(double, nh), *wo_d = CHECK_ALLOC(double, nh),
           *dout_d = CHECK_ALLOC(double, nx);
    double *out_ref = CHECK_ALLOC(double, nx);
    double ws = 1.0 / sqrt(C); // projections of O(1) size, as spectral normalization gives
    fill(x, x_d, nx, 1.0);
    fill(wf, wf_d, nf, ws * wscale);
    fill(wg, wg_d, nf, ws * wscale);
    fill(wh, wh_d, nh, ws);
    fill(wo, wo_d, nh, 1.0 / sqrt(C2));
    fill(dout, dout_d, nx, 1.0);
    fill(out, NULL, nx, 1.0);

    AttentionSaved s;
    float *saved = CHECK_ALLOC(float, attention_saved_floats(B, C, N));
    attention_saved_carve(&s, saved, B, C, N);
    assert_int_equal(attention_forward(out, &s, x, wf, wg, wh, wo, gamma, B, C, N), 0);
    attention_forward_ref(out_ref, x_d, wf_d, wg_d, wh_d, wo_d, gamma, B, C, N);
    snprintf(part, sizeof(part), "%s forward", what);
    ASSERT_CLOSE(part, out, out_ref, nx);

    long ng = nx + 2 * nf + 2 * nh + 1;
    float *g = CHECK_ALLOC(float, ng);
    fill(g, NULL, ng, 1.0);
    double *g_ref = check_to_double(g, ng);
    float *dx = g, *dwf = dx + nx, *dwg = dwf + nf, *dwh = dwg + nf, *dwo = dwh + nh;
    float *dgamma = dwo + nh;
    double *rdx = g_ref, *rdwf = rdx + nx, *rdwg = rdwf + nf, *rdwh = rdwg + nf,
           *rdwo = rdwh + nh, *rdgamma = rdwo + nh;
    float *scratch = CHECK_ALLOC(float, attention_scratch_floats(B, C, N));
    for (int rep = 0; rep < 2; rep++) {
        if (weights)
            assert_int_equal(attention_backward(dx, dwf, dwg, dwh, dwo, dgamma, dout, &s, x, wf,
                                                wg, wh, wo, gamma, scratch, B, C, N),
                             0);
        else
            assert_int_equal(attention_backward(dx, NULL, NULL, NULL, NULL, NULL, dout, &s, x, wf,
                                                wg, wh, wo, gamma, scratch, B, C, N),
                             0);
        attention_backward_ref(rdx, weights ? rdwf : NULL, weights ? rdwg : NULL,
                               weights ? rdwh : NULL, weights ? rdwo : NULL,
                               weights ? rdgamma : NULL, dout_d, x_d, wf_d, wg_d, wh_d, wo_d,
                               gamma, B, C, N);
    }
    const char *names[] = {"dx", "dwf", "dwg", "dwh", "dwo", "dgamma"};
    long sizes[] = {nx, nf, nf, nh, nh, 1}, off = 0;
    for (int k = 0; k < 6; k++) {
        snprintf(part, sizeof(part), "%s %s", what, names[k]);
        ASSERT_CLOSE(part, g + off, g_ref + off, sizes[k]);
        off += sizes[k];
    }
    free(x), free(wf), free(wg), free(wh), free(wo), free(out), free(dout), free(x_d), free(wf_d);
    free(wg_d), free(wh_d), free(wo_d), free(dout_d), free(out_ref), free(saved), free(g);
    free(g_ref), free(scratch);
}

static void test_attention_small(void **state) {
    (void)state;
    attention_case(3, 16, 12, 0.5f, 1, 1.0);
    attention_case(2, 8, 7, -1.3f, 1, 1.0);
}

static void test_attention_model_shape(void **state) {
    (void)state;
    attention_case(1, 32, 256, 0.8f, 1, 1.0); // serving: one item, the GEMMs thread themselves
    attention_case(4, 32, 256, 0.8f, 1, 1.0); // training: items spread over threads
}

static void test_attention_no_weight_grads(void **state) {
    (void)state;
    attention_case(3, 16, 64, 0.6f, 0, 1.0);
    attention_case(1, 32, 64, 0.6f, 0, 1.0);
}

// gamma = 0, as the block is initialised: out is x, yet the weight gradients (through gamma)
// and dgamma must still be right.
static void test_attention_gamma_zero(void **state) {
    (void)state;
    attention_case(2, 16, 16, 0.0f, 1, 1.0);
}

// Scores in the hundreds: e^s overflows float beyond 88, so only a max-subtracted softmax
// survives. The scale is checked, so the test cannot quietly become a mild one.
static void test_attention_large_scores(void **state) {
    (void)state;
    int C = 16, N = 32;
    double wscale = 12.0;
    // Probe the score range the case below will see, with the same draws.
    Rng keep = test_rng;
    long nx = (long)C * N, nf = (long)C / 8 * C;
    double *x = CHECK_ALLOC(double, nx), *wf = CHECK_ALLOC(double, nf),
           *wg = CHECK_ALLOC(double, nf);
    fill(NULL, x, nx, 1.0);
    fill(NULL, wf, nf, wscale / sqrt(C));
    fill(NULL, wg, nf, wscale / sqrt(C));
    double smax = 0;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) {
            double sc = 0;
            for (int r = 0; r < C / 8; r++) {
                double fi = 0, gj = 0;
                for (int c = 0; c < C; c++) {
                    fi += wf[r * C + c] * x[(long)c * N + i];
                    gj += wg[r * C + c] * x[(long)c * N + j];
                }
                sc += fi * gj;
            }
            smax = fmax(smax, fabs(sc));
        }
    free(x), free(wf), free(wg);
    fprintf(stderr, "largest |score| %.1f\n", smax);
    assert_true(smax > 100.0);
    test_rng = keep;
    attention_case(1, C, N, 0.9f, 1, wscale);
}

static void test_attention_layout_and_errors(void **state) {
    (void)state;
    int B = 3, C = 16, N = 10;
    long total = attention_saved_floats(B, C, N);
    float *buf = CHECK_ALLOC(float, total);
    AttentionSaved s;
    attention_saved_carve(&s, buf, B, C, N);
    // Carved in the documented order, back to back, ending exactly at the end of the buffer.
    assert_ptr_equal(s.f, buf);
    assert_ptr_equal(s.g, s.f + (long)B * C / 8 * N);
    assert_ptr_equal(s.h, s.g + (long)B * C / 8 * N);
    assert_ptr_equal(s.attn, s.h + (long)B * C / 2 * N);
    assert_ptr_equal(s.o, s.attn + (long)B * N * N);
    assert_ptr_equal(s.y, s.o + (long)B * C / 2 * N);
    assert_ptr_equal(s.y + (long)B * C * N, buf + total);
    float x[64] = {0}, out[64];
    assert_int_equal(attention_forward(out, &s, x, x, x, x, x, 1.0f, 1, 12, 4), KERNELS_EINVAL);
    assert_int_equal(attention_forward(out, &s, x, x, x, x, x, 1.0f, 0, 8, 4), KERNELS_EINVAL);
    assert_int_equal(attention_backward(out, NULL, NULL, NULL, NULL, NULL, x, &s, x, x, x, x, x,
                                        1.0f, buf, 1, 8, 0),
                     KERNELS_EINVAL);
    free(buf);
}

static void test_compare_can_fail(void **state) {
    (void)state;
    float got[3] = {1.0f, 2.5f, NAN};
    double want[3] = {1.0, 2.0, 3.0};
    fprintf(stderr, "(two planted errors follow)\n");
    assert_int_equal(check_compare_f("planted", got, want, 3, ATOL, RTOL), 2);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_compare_can_fail),
        cmocka_unit_test(test_attention_ref_fd),
        cmocka_unit_test(test_attention_small),
        cmocka_unit_test(test_attention_model_shape),
        cmocka_unit_test(test_attention_no_weight_grads),
        cmocka_unit_test(test_attention_gamma_zero),
        cmocka_unit_test(test_attention_large_scores),
        cmocka_unit_test(test_attention_layout_and_errors),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
