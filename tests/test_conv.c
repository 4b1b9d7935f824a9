// test_conv.c — unit tests of the matrix layers: kernels/conv.c (oneDNN convolution),
// kernels/gemm.c (gemm, linear) and their double references in kernels/reference_conv.c.
//
// Two kinds of check: (1) central finite differences in double against every gradient of the
// references (the ground truth is checked first), with the gradient buffers pre-filled so the
// accumulate (+=) contract is checked too; (2) the fast float kernels, forward and backward,
// against the references on the shapes the models use (3x3 pad 1, 4x4 stride 2 pad 1, 1x1) and
// on odd ones, with and without bias, with NULL gradients, twice over the same buffers (the second
// call must add as much again), and from several threads at once on one cached shape; and the
// BF16 mode (conv2d_bf16_set) against references on bf16-rounded inputs.
// Attention has its own file (test_attention.c). No timings here.
//
// Every comparison prints its worst pairs and fails the test; test_compare_can_fail shows that
// the comparison rejects a planted error.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/conv.h"
#include "kernels/gemm.h"
#include "kernels/kernels.h"
#include "kernels/reference.h"
#include "kernels/rng.h"
#include "tests/check.h"

// Float kernel vs double reference, and finite differences vs analytic gradients.
#define ATOL 1e-4
#define RTOL 1e-3
#define FD_ATOL 1e-6
#define FD_RTOL 1e-5
#define FD_H 1e-5

#define ASSERT_CLOSE(what, gotf, want, n)                                                          \
    assert_int_equal(check_compare_f(what, gotf, want, n, ATOL, RTOL), 0)

// --- data -------------------------------------------------------------------------------------

static Rng test_rng;

// x (n) uniform in [-scale, scale), in both precisions (either may be NULL); the float values
// are the doubles rounded, so references see exactly the kernels' inputs.
static void fill(float *xf, double *xd, long n, double scale) {
    check_fill_uniform(&test_rng, xf, xd, n, -scale, scale);
}

static double *dup_double(const double *x, long n) {
    double *d = CHECK_ALLOC(double, n);
    memcpy(d, x, sizeof(double) * n);
    return d;
}

static int setup(void **state) {
    (void)state;
    rng_seed(&test_rng, 20240611);
    return 0;
}

// --- finite differences in double ---------------------------------------------------------------

// A forward pass of the op under test with every input but one held fixed: fills out.
typedef void (*FdForward)(double *out, void *ctx);

// L = <forward(ctx), dout> as a CheckLossFn: forward reads the perturbed input through ctx.
typedef struct {
    FdForward fwd;
    void *ctx;
    double *out;        // (nout) scratch
    const double *dout; // (nout)
    long nout;
} FdLoss;

static double fd_loss(const double *x, long n, void *p) {
    (void)x, (void)n;
    FdLoss *l = p;
    l->fwd(l->out, l->ctx);
    double sum = 0;
    for (long k = 0; k < l->nout; k++)
        sum += l->out[k] * l->dout[k];
    return sum;
}

// Checks analytic (n) against central differences of L = <forward(ctx), dout> in x (n), which
// forward reads through ctx. analytic holds the gradient alone (accumulation removed).
static void fd_check(const char *what, double *x, long n, const double *analytic, FdForward fwd,
                     void *ctx, const double *dout, long nout) {
    FdLoss loss = {fwd, ctx, CHECK_ALLOC(double, nout), dout, nout};
    int bad = check_compare_fd(what, analytic, x, n, FD_H, fd_loss, &loss, FD_ATOL, FD_RTOL);
    free(loss.out);
    assert_int_equal(bad, 0);
}

// Backward references are called on gradient buffers holding `init`; this gives back the part
// they added.
static void subtract(double *g, const double *init, long n) {
    for (long i = 0; i < n; i++)
        g[i] -= init[i];
}

typedef struct {
    double *inp, *w, *bias;
    int B, C, H, W, OC, K, S, P;
} ConvCtx;

static void conv_fd_forward(double *out, void *ctx) {
    ConvCtx *c = ctx;
    conv2d_forward_ref(out, c->inp, c->w, c->bias, c->B, c->C, c->H, c->W, c->OC, c->K, c->S,
                       c->P);
}

static void conv_fd_case(int B, int C, int H, int W, int OC, int K, int S, int P) {
    int OH = (H + 2 * P - K) / S + 1, OW = (W + 2 * P - K) / S + 1;
    long ni = (long)B * C * H * W, nw = (long)OC * C * K * K, no = (long)B * OC * OH * OW;
    ConvCtx c = {.B = B, .C = C, .H = H, .W = W, .OC = OC, .K = K, .S = S, .P = P};
    c.inp = CHECK_ALLOC(double, ni), c.w = CHECK_ALLOC(double, nw);
    c.bias = CHECK_ALLOC(double, OC);
    double *dout = CHECK_ALLOC(double, no), *init_i = CHECK_ALLOC(double, ni),
           *init_w = CHECK_ALLOC(double, nw), *init_b = CHECK_ALLOC(double, OC);
    fill(NULL, c.inp, ni, 1.0);
    fill(NULL, c.w, nw, 1.0);
    fill(NULL, c.bias, OC, 1.0);
    fill(NULL, dout, no, 1.0);
    fill(NULL, init_i, ni, 1.0);
    fill(NULL, init_w, nw, 1.0);
    fill(NULL, init_b, OC, 1.0);
    double *di = dup_double(init_i, ni), *dw = dup_double(init_w, nw), *db = dup_double(init_b, OC);
    conv2d_backward_ref(di, dw, db, dout, c.inp, c.w, B, C, H, W, OC, K, S, P);
    subtract(di, init_i, ni);
    subtract(dw, init_w, nw);
    subtract(db, init_b, OC);
    fd_check("conv2d_ref dinp", c.inp, ni, di, conv_fd_forward, &c, dout, no);
    fd_check("conv2d_ref dw", c.w, nw, dw, conv_fd_forward, &c, dout, no);
    fd_check("conv2d_ref dbias", c.bias, OC, db, conv_fd_forward, &c, dout, no);
    free(c.inp), free(c.w), free(c.bias), free(dout), free(init_i), free(init_w), free(init_b);
    free(di), free(dw), free(db);
}

static void test_conv_ref_fd(void **state) {
    (void)state;
    conv_fd_case(2, 2, 5, 4, 3, 3, 1, 1); // 3x3 pad 1
    conv_fd_case(2, 2, 6, 7, 3, 4, 2, 1); // 4x4 stride 2 pad 1, an odd width the stride skips
    conv_fd_case(2, 3, 3, 4, 2, 1, 1, 0); // 1x1
}

typedef struct {
    double *inp, *w, *bias;
    int B, IN, OUT;
} LinearCtx;

static void linear_fd_forward(double *out, void *ctx) {
    LinearCtx *c = ctx;
    linear_forward_ref(out, c->inp, c->w, c->bias, c->B, c->IN, c->OUT);
}

static void test_linear_ref_fd(void **state) {
    (void)state;
    int B = 3, IN = 5, OUT = 4;
    long ni = (long)B * IN, nw = (long)OUT * IN, no = (long)B * OUT;
    LinearCtx c = {.B = B, .IN = IN, .OUT = OUT};
    c.inp = CHECK_ALLOC(double, ni), c.w = CHECK_ALLOC(double, nw);
    c.bias = CHECK_ALLOC(double, OUT);
    double *dout = CHECK_ALLOC(double, no), *init_i = CHECK_ALLOC(double, ni),
           *init_w = CHECK_ALLOC(double, nw), *init_b = CHECK_ALLOC(double, OUT);
    fill(NULL, c.inp, ni, 1.0);
    fill(NULL, c.w, nw, 1.0);
    fill(NULL, c.bias, OUT, 1.0);
    fill(NULL, dout, no, 1.0);
    fill(NULL, init_i, ni, 1.0);
    fill(NULL, init_w, nw, 1.0);
    fill(NULL, init_b, OUT, 1.0);
    double *di = dup_double(init_i, ni), *dw = dup_double(init_w, nw);
    double *db = dup_double(init_b, OUT);
    linear_backward_ref(di, dw, db, dout, c.inp, c.w, B, IN, OUT);
    subtract(di, init_i, ni);
    subtract(dw, init_w, nw);
    subtract(db, init_b, OUT);
    fd_check("linear_ref dinp", c.inp, ni, di, linear_fd_forward, &c, dout, no);
    fd_check("linear_ref dw", c.w, nw, dw, linear_fd_forward, &c, dout, no);
    fd_check("linear_ref dbias", c.bias, OUT, db, linear_fd_forward, &c, dout, no);
    free(c.inp), free(c.w), free(c.bias), free(dout), free(init_i), free(init_w), free(init_b);
    free(di), free(dw), free(db);
}

// --- the fast convolution against the reference -------------------------------------------------

enum { WITH_BIAS = 1, NO_DINP = 2, NO_DW = 4, NO_DBIAS = 8, BF16 = 16 };

// One shape: forward, then backward twice into pre-filled gradients (each gradient must end as
// init + 2 * reference), with the parts named by flags left out (and their buffers untouched).
// With BF16 the kernels run in BF16 mode and the references read the inputs each pass reads in
// bf16 rounded as the mode rounds them (forward: input and weights; data gradient: dout and
// weights; weight and bias gradients: input and dout), with the FP32 tolerances: the products of
// bf16 values are exact in FP32 and accumulate there. The bias gradient alone (no dw) is summed
// from the float dout (conv.c's loop, no primitive).
static void conv_case(int B, int C, int H, int W, int OC, int K, int S, int P, int flags) {
    char what[160];
    int OH = (H + 2 * P - K) / S + 1, OW = (W + 2 * P - K) / S + 1;
    long ni = (long)B * C * H * W, nw = (long)OC * C * K * K, no = (long)B * OC * OH * OW;
    int bias = flags & WITH_BIAS;
    float *inp = CHECK_ALLOC(float, ni), *w = CHECK_ALLOC(float, nw), *b = CHECK_ALLOC(float, OC);
    float *out = CHECK_ALLOC(float, no), *dout = CHECK_ALLOC(float, no);
    double *inp_d = CHECK_ALLOC(double, ni), *w_d = CHECK_ALLOC(double, nw),
           *b_d = CHECK_ALLOC(double, OC);
    double *dout_d = CHECK_ALLOC(double, no), *out_ref = CHECK_ALLOC(double, no);
    double wscale = 1.0 / sqrt((double)C * K * K); // keeps outputs O(1), as a trained net's are
    fill(inp, inp_d, ni, 1.0);
    fill(w, w_d, nw, wscale);
    fill(b, b_d, OC, 1.0);
    fill(dout, dout_d, no, 1.0);

    snprintf(what, sizeof(what), "conv2d B%d C%d %dx%d OC%d K%d S%d P%d flags %d", B, C, H, W, OC,
             K, S, P, flags);
    int bf16 = flags & BF16;
    if (bf16)
        assert_int_equal(conv2d_bf16_set(1, NULL, 0), 0);
    double *inp_r = bf16 ? check_bf16_copy(inp_d, ni) : inp_d;
    double *w_r = bf16 ? check_bf16_copy(w_d, nw) : w_d;
    double *dout_r = bf16 ? check_bf16_copy(dout_d, no) : dout_d;
    fill(out, NULL, no, 1.0); // forward writes: stale contents must not leak through
    assert_int_equal(conv2d_forward(out, inp, w, bias ? b : NULL, B, C, H, W, OC, K, S, P), 0);
    conv2d_forward_ref(out_ref, inp_r, w_r, bias ? b_d : NULL, B, C, H, W, OC, K, S, P);
    char part[200];
    snprintf(part, sizeof(part), "%s forward", what);
    ASSERT_CLOSE(part, out, out_ref, no);

    float *di = CHECK_ALLOC(float, ni), *dw = CHECK_ALLOC(float, nw), *db = CHECK_ALLOC(float, OC);
    fill(di, NULL, ni, 1.0);
    fill(dw, NULL, nw, 1.0);
    fill(db, NULL, OC, 1.0);
    double *di_ref = check_to_double(di, ni), *dw_ref = check_to_double(dw, nw),
           *db_ref = check_to_double(db, OC);
    float *pdi = flags & NO_DINP ? NULL : di, *pdw = flags & NO_DW ? NULL : dw;
    float *pdb = flags & NO_DBIAS ? NULL : db;
    for (int rep = 0; rep < 2; rep++) {
        assert_int_equal(conv2d_backward(pdi, pdw, pdb, dout, inp, w, B, C, H, W, OC, K, S, P), 0);
        if (pdi)
            conv2d_backward_ref(di_ref, NULL, NULL, dout_r, inp_d, w_r, B, C, H, W, OC, K, S, P);
        if (pdw || pdb)
            conv2d_backward_ref(NULL, pdw ? dw_ref : NULL, pdb ? db_ref : NULL,
                                pdw ? dout_r : dout_d, inp_r, w_d, B, C, H, W, OC, K, S, P);
    }
    snprintf(part, sizeof(part), "%s dinp", what);
    ASSERT_CLOSE(part, di, di_ref, ni);
    snprintf(part, sizeof(part), "%s dw", what);
    ASSERT_CLOSE(part, dw, dw_ref, nw);
    snprintf(part, sizeof(part), "%s dbias", what);
    ASSERT_CLOSE(part, db, db_ref, OC);

    if (bf16) {
        assert_int_equal(conv2d_bf16_set(0, NULL, 0), 0);
        free(inp_r), free(w_r), free(dout_r);
    }
    free(inp), free(w), free(b), free(out), free(dout), free(inp_d), free(w_d), free(b_d);
    free(dout_d), free(out_ref), free(di), free(dw), free(db), free(di_ref), free(dw_ref);
    free(db_ref);
}

static void test_conv_3x3(void **state) {
    (void)state;
    conv_case(3, 5, 8, 7, 6, 3, 1, 1, WITH_BIAS);
    conv_case(2, 4, 6, 6, 3, 3, 1, 1, 0);
    conv_case(1, 16, 8, 8, 32, 3, 1, 1, WITH_BIAS);
}

static void test_conv_4x4_stride2(void **state) {
    (void)state;
    conv_case(2, 4, 8, 8, 8, 4, 2, 1, WITH_BIAS);
    conv_case(3, 3, 7, 9, 5, 4, 2, 1, WITH_BIAS); // odd sizes: the stride leaves a row unused
    conv_case(1, 16, 32, 32, 32, 4, 2, 1, 0);
}

static void test_conv_1x1(void **state) {
    (void)state;
    conv_case(2, 32, 16, 16, 4, 1, 1, 0, 0);
    conv_case(3, 16, 5, 5, 32, 1, 1, 0, WITH_BIAS);
}

// Leaving out gradients: each NULL one is skipped and the others still come out right.
static void test_conv_null_grads(void **state) {
    (void)state;
    conv_case(2, 1, 12, 12, 16, 3, 1, 1, WITH_BIAS | NO_DINP); // the first layer of D
    conv_case(2, 4, 8, 8, 6, 3, 1, 1, WITH_BIAS | NO_DW | NO_DBIAS);
    conv_case(2, 4, 8, 8, 6, 4, 2, 1, WITH_BIAS | NO_DW);
    conv_case(2, 4, 8, 8, 6, 4, 2, 1, WITH_BIAS | NO_DINP | NO_DW); // bias gradient alone
    conv_case(2, 4, 8, 8, 6, 3, 1, 1, WITH_BIAS | NO_DBIAS);
}

// The layers of G and D at batch 2 (the cache is keyed by batch too, so these are the shapes'
// own primitives at a small batch).
static void test_conv_model_shapes(void **state) {
    (void)state;
    conv_case(2, 128, 8, 8, 64, 3, 1, 1, WITH_BIAS);
    conv_case(2, 64, 16, 16, 32, 3, 1, 1, WITH_BIAS);
    conv_case(2, 32, 32, 32, 16, 3, 1, 1, WITH_BIAS);
    conv_case(2, 16, 32, 32, 1, 3, 1, 1, WITH_BIAS);
    conv_case(2, 1, 32, 32, 16, 3, 1, 1, WITH_BIAS | NO_DINP);
    conv_case(2, 32, 16, 16, 64, 4, 2, 1, WITH_BIAS);
    conv_case(2, 64, 8, 8, 128, 4, 2, 1, WITH_BIAS);
}

// At training batch sizes the 3x3 stride-1 layers with channels in multiples of 16 run
// Winograd (all but the smallest forward): the same checks, at batch 8.
static void test_conv_winograd(void **state) {
    (void)state;
    conv_case(8, 32, 8, 8, 16, 3, 1, 1, WITH_BIAS);   // 8x8: direct forward, Winograd backward
    conv_case(8, 32, 16, 16, 16, 3, 1, 1, WITH_BIAS); // Winograd throughout
    conv_case(8, 16, 32, 32, 16, 3, 1, 1, WITH_BIAS);
    conv_case(8, 16, 16, 16, 16, 3, 1, 1, 0);
    conv_case(8, 16, 16, 16, 32, 3, 1, 1, WITH_BIAS | NO_DINP);
    conv_case(8, 16, 16, 16, 32, 3, 1, 1, WITH_BIAS | NO_DW);
}

// A cached shape called again with other buffers must use them (the pointers are rebound per
// call), and conv2d_cache_clear must leave the kernel working.
static void test_conv_rebind_and_clear(void **state) {
    (void)state;
    conv_case(2, 8, 6, 6, 4, 3, 1, 1, WITH_BIAS);
    conv_case(2, 8, 6, 6, 4, 3, 1, 1, WITH_BIAS);
    conv2d_cache_clear();
    conv_case(2, 8, 6, 6, 4, 3, 1, 1, WITH_BIAS);
}

// Several threads on one shape at once: each must get its own result.
typedef struct {
    float *out, *inp, *w;
    int rc;
} ThreadJob;

#define TB 2
#define TC 16
#define TH 16
#define TOC 16

static void *conv_thread(void *arg) {
    ThreadJob *j = arg;
    for (int rep = 0; rep < 20 && j->rc == 0; rep++)
        j->rc = conv2d_forward(j->out, j->inp, j->w, NULL, TB, TC, TH, TH, TOC, 3, 1, 1);
    return NULL;
}

static void test_conv_threads(void **state) {
    (void)state;
    enum { NT = 4 };
    long ni = (long)TB * TC * TH * TH, nw = (long)TOC * TC * 9, no = (long)TB * TOC * TH * TH;
    ThreadJob jobs[NT];
    pthread_t tid[NT];
    double *inp_d = CHECK_ALLOC(double, ni), *w_d = CHECK_ALLOC(double, nw),
           *ref = CHECK_ALLOC(double, no);
    for (int t = 0; t < NT; t++) {
        jobs[t] =
            (ThreadJob){CHECK_ALLOC(float, no), CHECK_ALLOC(float, ni), CHECK_ALLOC(float, nw), 0};
        fill(jobs[t].inp, NULL, ni, 1.0);
        fill(jobs[t].w, NULL, nw, 0.1);
    }
    for (int t = 0; t < NT; t++)
        assert_int_equal(pthread_create(&tid[t], NULL, conv_thread, &jobs[t]), 0);
    for (int t = 0; t < NT; t++)
        pthread_join(tid[t], NULL);
    for (int t = 0; t < NT; t++) {
        assert_int_equal(jobs[t].rc, 0);
        for (long i = 0; i < ni; i++)
            inp_d[i] = jobs[t].inp[i];
        for (long i = 0; i < nw; i++)
            w_d[i] = jobs[t].w[i];
        conv2d_forward_ref(ref, inp_d, w_d, NULL, TB, TC, TH, TH, TOC, 3, 1, 1);
        ASSERT_CLOSE("conv2d from threads", jobs[t].out, ref, no);
        free(jobs[t].out), free(jobs[t].inp), free(jobs[t].w);
    }
    free(inp_d), free(w_d), free(ref);
}

static void test_conv_errors(void **state) {
    (void)state;
    float x[16] = {0}, w[16] = {0}, y[16] = {0};
    assert_int_equal(conv2d_forward(y, x, w, NULL, 0, 1, 4, 4, 1, 1, 1, 0), KERNELS_EINVAL);
    assert_int_equal(conv2d_forward(y, x, w, NULL, 1, 1, 2, 2, 1, 5, 1, 0), KERNELS_EINVAL);
    assert_int_equal(conv2d_forward(y, x, w, NULL, 1, 1, 4, 4, 1, 1, 0, 0), KERNELS_EINVAL);
    assert_int_equal(conv2d_backward(x, w, NULL, y, x, w, 1, -1, 4, 4, 1, 1, 1, 0),
                     KERNELS_EINVAL);
    // Every code has its own message, and unknown codes still get a string.
    assert_string_equal(kernels_strerror(0), "success");
    assert_string_not_equal(kernels_strerror(KERNELS_EDNN), kernels_strerror(KERNELS_ENOMEM));
    assert_string_not_equal(kernels_strerror(KERNELS_EINVAL), kernels_strerror(KERNELS_ENOMEM));
    assert_non_null(kernels_strerror(-1000));
}

// --- BF16 mode --------------------------------------------------------------------------------

static int bf16_here(void) {
    char why[200];
    if (conv2d_bf16_supported(why, sizeof why))
        return 1;
    // Where the CPU cannot, the switch must refuse, say why and leave FP32 on.
    assert_int_equal(conv2d_bf16_set(1, why, sizeof why), -1);
    assert_non_null(strstr(why, "BF16"));
    assert_int_equal(conv2d_bf16_get(), 0);
    return 0;
}

// A failed check leaves a BF16 test early: the mode goes back to FP32 for the tests after it.
static int bf16_off(void **state) {
    (void)state;
    conv2d_bf16_set(0, NULL, 0);
    conv2d_fp32_hold(0);
    return 0;
}

// Every pass against references on bf16-rounded inputs (conv_case's BF16): the model's layers at
// batch 2 and at a training batch (where FP32 would take Winograd), odd shapes, NULL gradients.
static void test_conv_bf16(void **state) {
    (void)state;
    if (!bf16_here())
        skip();
    conv_case(2, 128, 8, 8, 64, 3, 1, 1, WITH_BIAS | BF16);
    conv_case(8, 64, 16, 16, 32, 3, 1, 1, WITH_BIAS | BF16);
    conv_case(8, 32, 32, 32, 16, 3, 1, 1, WITH_BIAS | BF16);
    conv_case(2, 16, 32, 32, 1, 3, 1, 1, WITH_BIAS | BF16); // nhwc (fewer than 16 outputs)
    conv_case(2, 1, 32, 32, 16, 3, 1, 1, WITH_BIAS | NO_DINP | BF16);
    conv_case(4, 32, 16, 16, 64, 4, 2, 1, WITH_BIAS | BF16);
    conv_case(3, 3, 7, 9, 5, 4, 2, 1, WITH_BIAS | BF16);
    conv_case(2, 32, 16, 16, 4, 1, 1, 0, BF16);
    conv_case(2, 4, 8, 8, 6, 3, 1, 1, WITH_BIAS | NO_DW | NO_DBIAS | BF16);
    conv_case(2, 4, 8, 8, 6, 4, 2, 1, WITH_BIAS | NO_DINP | NO_DW | BF16);
    conv_case(2, 4, 8, 8, 6, 3, 1, 1, WITH_BIAS | NO_DBIAS | BF16);
}

// The mode really rounds (the forward differs from FP32 by about bf16's precision, more than
// FP32's tolerance), a thread holding FP32 gets FP32's bits in BF16 mode, and switching back
// gives FP32's bits again (the mode is part of the cache key).
static void test_conv_bf16_mode(void **state) {
    (void)state;
    if (!bf16_here())
        skip();
    enum { B = 4, C = 32, H = 16, OC = 32 };
    long ni = (long)B * C * H * H, nw = (long)OC * C * 9, no = (long)B * OC * H * H;
    float *inp = CHECK_ALLOC(float, ni), *w = CHECK_ALLOC(float, nw);
    float *fp32 = CHECK_ALLOC(float, no), *bf = CHECK_ALLOC(float, no);
    float *held = CHECK_ALLOC(float, no), *again = CHECK_ALLOC(float, no);
    fill(inp, NULL, ni, 1.0);
    fill(w, NULL, nw, 1.0 / sqrt(C * 9.0));
    assert_int_equal(conv2d_forward(fp32, inp, w, NULL, B, C, H, H, OC, 3, 1, 1), 0);
    assert_int_equal(conv2d_bf16_set(1, NULL, 0), 0);
    assert_int_equal(conv2d_bf16_get(), 1);
    assert_int_equal(conv2d_forward(bf, inp, w, NULL, B, C, H, H, OC, 3, 1, 1), 0);
    assert_int_equal(conv2d_fp32_hold(1), 0);
    assert_int_equal(conv2d_forward(held, inp, w, NULL, B, C, H, H, OC, 3, 1, 1), 0);
    assert_int_equal(conv2d_fp32_hold(0), 1);
    assert_int_equal(conv2d_bf16_set(0, NULL, 0), 0);
    assert_int_equal(conv2d_forward(again, inp, w, NULL, B, C, H, H, OC, 3, 1, 1), 0);
    double worst = 0, rms = 0;
    for (long i = 0; i < no; i++) {
        double d = fabs((double)bf[i] - fp32[i]);
        worst = d > worst ? d : worst;
        rms += (double)fp32[i] * fp32[i];
    }
    rms = sqrt(rms / no);
    fprintf(stderr, "bf16 forward vs fp32: worst %.3g, output rms %.3g\n", worst, rms);
    assert_true(worst > 10 * ATOL);   // rounded: FP32's tolerance would not pass it
    assert_true(worst < 0.05 * rms);  // but only by bf16's precision
    assert_memory_equal(held, fp32, sizeof(float) * no);
    assert_memory_equal(again, fp32, sizeof(float) * no);
    free(inp), free(w), free(fp32), free(bf), free(held), free(again);
}

// --- gemm and linear -----------------------------------------------------------------------------

static void gemm_case(int ta, int tb, int M, int N, int K, float alpha, float beta) {
    int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 1, ldc = N + 2; // strides wider than rows
    long na = (long)(ta ? K : M) * lda, nb = (long)(tb ? N : K) * ldb, nc = (long)M * ldc;
    float *A = CHECK_ALLOC(float, na), *Bm = CHECK_ALLOC(float, nb), *Cm = CHECK_ALLOC(float, nc);
    fill(A, NULL, na, 1.0);
    fill(Bm, NULL, nb, 1.0);
    fill(Cm, NULL, nc, 1.0);
    double *ref = check_to_double(Cm, nc);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0;
            for (int k = 0; k < K; k++)
                s += (double)(ta ? A[(long)k * lda + i] : A[(long)i * lda + k]) *
                     (tb ? Bm[(long)j * ldb + k] : Bm[(long)k * ldb + j]);
            ref[(long)i * ldc + j] = alpha * s + beta * ref[(long)i * ldc + j];
        }
    assert_int_equal(gemm(ta, tb, M, N, K, alpha, A, lda, Bm, ldb, beta, Cm, ldc), 0);
    char what[80];
    snprintf(what, sizeof(what), "gemm ta %d tb %d %dx%dx%d", ta, tb, M, N, K);
    ASSERT_CLOSE(what, Cm, ref, nc); // the padding columns must be untouched too
    free(A), free(Bm), free(Cm), free(ref);
}

static void test_gemm(void **state) {
    (void)state;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            gemm_case(ta, tb, 7, 5, 3, 1.0f, 0.0f);
            gemm_case(ta, tb, 33, 65, 17, 0.5f, 1.0f);
            gemm_case(ta, tb, 256, 256, 4, 1.0f, 0.0f);
        }
}

static void linear_case(int B, int IN, int OUT, int bias, int skip_dinp) {
    long ni = (long)B * IN, nw = (long)OUT * IN, no = (long)B * OUT;
    float *inp = CHECK_ALLOC(float, ni), *w = CHECK_ALLOC(float, nw), *b = CHECK_ALLOC(float, OUT);
    float *out = CHECK_ALLOC(float, no), *dout = CHECK_ALLOC(float, no);
    double *inp_d = CHECK_ALLOC(double, ni), *w_d = CHECK_ALLOC(double, nw),
           *b_d = CHECK_ALLOC(double, OUT);
    double *dout_d = CHECK_ALLOC(double, no), *ref = CHECK_ALLOC(double, no);
    fill(inp, inp_d, ni, 1.0);
    fill(w, w_d, nw, 1.0 / sqrt(IN));
    fill(b, b_d, OUT, 1.0);
    fill(dout, dout_d, no, 1.0);
    fill(out, NULL, no, 1.0);
    assert_int_equal(linear_forward(out, inp, w, bias ? b : NULL, B, IN, OUT), 0);
    linear_forward_ref(ref, inp_d, w_d, bias ? b_d : NULL, B, IN, OUT);
    ASSERT_CLOSE("linear forward", out, ref, no);

    float *di = CHECK_ALLOC(float, ni), *dw = CHECK_ALLOC(float, nw), *db = CHECK_ALLOC(float, OUT);
    fill(di, NULL, ni, 1.0);
    fill(dw, NULL, nw, 1.0);
    fill(db, NULL, OUT, 1.0);
    double *di_ref = check_to_double(di, ni), *dw_ref = check_to_double(dw, nw),
           *db_ref = check_to_double(db, OUT);
    for (int rep = 0; rep < 2; rep++) {
        assert_int_equal(linear_backward(skip_dinp ? NULL : di, dw, bias ? db : NULL, dout, inp, w,
                                         B, IN, OUT),
                         0);
        linear_backward_ref(skip_dinp ? NULL : di_ref, dw_ref, bias ? db_ref : NULL, dout_d, inp_d,
                            w_d, B, IN, OUT);
    }
    ASSERT_CLOSE("linear dinp", di, di_ref, ni);
    ASSERT_CLOSE("linear dw", dw, dw_ref, nw);
    ASSERT_CLOSE("linear dbias", db, db_ref, OUT);
    free(inp), free(w), free(b), free(out), free(dout), free(inp_d), free(w_d), free(b_d);
    free(dout_d), free(ref), free(di), free(dw), free(db), free(di_ref), free(dw_ref), free(db_ref);
}

static void test_linear(void **state) {
    (void)state;
    linear_case(3, 7, 5, 1, 0);
    linear_case(64, 128, 512, 1, 0); // G's z -> 4x4x4ch at ch = 32
    linear_case(64, 2048, 1, 1, 1);  // D's head; its input gradient still wanted below
    linear_case(64, 2048, 1, 0, 0);
}

// --- the comparison itself -----------------------------------------------------------------------

static void test_compare_can_fail(void **state) {
    (void)state;
    float got[4] = {1.0f, 2.0f, 3.0f, NAN};
    double want[4] = {1.0, 2.0, 3.01, 4.0};
    fprintf(stderr, "(two planted errors follow)\n");
    assert_int_equal(check_compare_f("planted", got, want, 4, ATOL, RTOL), 2);
    assert_int_equal(check_compare_f("planted", got, want, 3, ATOL, 0.01), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_compare_can_fail),
        cmocka_unit_test(test_conv_ref_fd),
        cmocka_unit_test(test_linear_ref_fd),
        cmocka_unit_test(test_conv_3x3),
        cmocka_unit_test(test_conv_4x4_stride2),
        cmocka_unit_test(test_conv_1x1),
        cmocka_unit_test(test_conv_null_grads),
        cmocka_unit_test(test_conv_model_shapes),
        cmocka_unit_test(test_conv_winograd),
        cmocka_unit_test(test_conv_rebind_and_clear),
        cmocka_unit_test(test_conv_threads),
        cmocka_unit_test(test_conv_errors),
        cmocka_unit_test_teardown(test_conv_bf16, bf16_off),
        cmocka_unit_test_teardown(test_conv_bf16_mode, bf16_off),
        cmocka_unit_test(test_gemm),
        cmocka_unit_test(test_linear),
    };
    int failed = cmocka_run_group_tests(tests, setup, NULL);
    conv2d_cache_clear();
    return failed;
}
