// test_ops.c — unit tests of kernels/ops.c and kernels/rng.c.
//
// Three kinds of check: (1) finite differences in double against every reference backward in
// reference.c (the references are the ground truth, so they are checked first); (2) every fast
// float op, forward and backward, against its reference at sizes on both sides of the OpenMP
// threshold, including the accumulate (+=) contract; (3) the RNG against published test vectors,
// for determinism and for its moments. Not covered here: spectral norm (test_specnorm.c) and the
// matrix layers, conv, linear and attention, which have tests of their own.
//
// Every comparison (check.c) prints its worst pairs and fails the test; test_compare_can_fail
// shows that the comparison itself rejects a planted error.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ops.h"
#include "kernels/reference.h"
#include "kernels/rng.h"
#include "tests/check.h"

// Sizes: SMALL stays under ops.c's OpenMP threshold (32k elements), LARGE is a full activation
// of the fmnist32 D at batch 64 (64 x 32 x 32 x 32), well over it. SMALL is odd: vector tails run.
#define SMALL 1001L
#define LARGE (64L * 32 * 32 * 32)

// Tolerances: float kernel vs double reference, and finite differences vs analytic gradients.
#define ATOL 1e-5
#define RTOL 1e-4
#define FD_ATOL 1e-6
#define FD_RTOL 1e-5
#define FD_H 1e-5

// --- data -----------------------------------------------------------------------------------

// Uniform magnitude in [0.1, 1) with random sign: keeps inputs away from kinks at 0.
static void fill_away_from_zero(Rng *r, double *d, long n) {
    for (long i = 0; i < n; i++) {
        double mag = 0.1 + 0.9 * rng_uniform(r);
        d[i] = rng_uniform(r) < 0.5f ? -mag : mag;
    }
}

// --- finite differences on the references -----------------------------------------------------

// Every loss below is a CheckLossFn (check.h): L(x) = loss or L(x) = <R, op(x)> with a fixed
// random R.

// Shapes and the fixed cotangent R of an elementwise or layer op L(x) = <R, op(x)>.
typedef struct {
    const double *weights; // R, the size of op's output
    long out_n;
    double *scratch; // op's output (out_n) and any saved buffer after it
    int B, C, H, W, N, K, D;
    double alpha;
    const int32_t *labels;
} OpCtx;

static double dot_d(const double *a, const double *b, long n) {
    double s = 0.0;
    for (long i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

static double leaky_relu_loss(const double *x, long n, void *p) {
    OpCtx *c = p;
    leaky_relu_forward_ref(c->scratch, x, c->alpha, n);
    return dot_d(c->weights, c->scratch, n);
}

static double tanh_loss(const double *x, long n, void *p) {
    OpCtx *c = p;
    tanh_forward_ref(c->scratch, x, n);
    return dot_d(c->weights, c->scratch, n);
}

static double pixelnorm_loss(const double *x, long n, void *p) {
    OpCtx *c = p;
    pixelnorm_forward_ref(c->scratch, c->scratch + n, x, c->B, c->C, c->N);
    return dot_d(c->weights, c->scratch, n);
}

static double upsample_loss(const double *x, long n, void *p) {
    (void)n;
    OpCtx *c = p;
    upsample2x_forward_ref(c->scratch, x, c->B, c->C, c->H, c->W);
    return dot_d(c->weights, c->scratch, c->out_n);
}

static double avgpool_loss(const double *x, long n, void *p) {
    (void)n;
    OpCtx *c = p;
    avgpool2x_forward_ref(c->scratch, x, c->B, c->C, c->H, c->W);
    return dot_d(c->weights, c->scratch, c->out_n);
}

static double embedding_loss(const double *table, long n, void *p) {
    (void)n;
    OpCtx *c = p;
    embedding_forward_ref(c->scratch, table, c->labels, c->B, c->D);
    return dot_d(c->weights, c->scratch, c->out_n);
}

static double hinge_real_loss(const double *x, long n, void *p) {
    (void)p;
    return hinge_d_real_loss_ref(NULL, x, (int)n);
}
static double hinge_fake_loss(const double *x, long n, void *p) {
    (void)p;
    return hinge_d_fake_loss_ref(NULL, x, (int)n);
}
static double hinge_gen_loss(const double *x, long n, void *p) {
    (void)p;
    return hinge_g_loss_ref(NULL, x, (int)n);
}
static double xent_loss(const double *x, long n, void *p) {
    (void)n;
    OpCtx *c = p;
    return softmax_xent_ref(NULL, x, c->labels, c->B, c->K);
}

// The FD check of an op given its analytic gradient; returns the mismatch count.
static int fd_check(const char *what, const double *analytic, CheckLossFn fn, double *x, long n,
                    void *ctx) {
    return check_compare_fd(what, analytic, x, n, FD_H, fn, ctx, FD_ATOL, FD_RTOL);
}

static void test_fd_leaky_relu_tanh(void **state) {
    (void)state;
    Rng r;
    rng_seed(&r, 1);
    long n = 24;
    double x[24], R[24], out[24], dx[24];
    fill_away_from_zero(&r, x, n);
    check_fill_uniform(&r, NULL, R, n, -1, 1);
    OpCtx c = {.weights = R, .out_n = n, .scratch = out, .alpha = 0.2};

    memset(dx, 0, sizeof dx);
    leaky_relu_backward_ref(dx, R, x, c.alpha, n);
    int bad = fd_check("leaky_relu_backward_ref", dx, leaky_relu_loss, x, n, &c);

    tanh_forward_ref(out, x, n);
    memset(dx, 0, sizeof dx);
    tanh_backward_ref(dx, R, out, n);
    bad += fd_check("tanh_backward_ref", dx, tanh_loss, x, n, &c);
    assert_int_equal(bad, 0);
}

static void test_fd_pixelnorm(void **state) {
    (void)state;
    Rng r;
    rng_seed(&r, 2);
    int B = 2, C = 3, N = 5;
    long n = (long)B * C * N;
    double *x = CHECK_ALLOC(double, n), *R = CHECK_ALLOC(double, n), *dx = CHECK_ALLOC(double, n);
    double *scratch = CHECK_ALLOC(double, n + (long)B * N);
    check_fill_uniform(&r, NULL, x, n, -2, 2);
    check_fill_uniform(&r, NULL, R, n, -1, 1);
    OpCtx c = {.weights = R, .out_n = n, .scratch = scratch, .B = B, .C = C, .N = N};

    pixelnorm_forward_ref(scratch, scratch + n, x, B, C, N);
    memset(dx, 0, sizeof(double) * n);
    pixelnorm_backward_ref(dx, R, scratch, scratch + n, B, C, N);
    int bad = fd_check("pixelnorm_backward_ref", dx, pixelnorm_loss, x, n, &c);
    free(x), free(R), free(dx), free(scratch);
    assert_int_equal(bad, 0);
}

static void test_fd_upsample(void **state) {
    (void)state;
    Rng r;
    rng_seed(&r, 3);
    int B = 2, C = 2, H = 2, W = 3;
    long n = (long)B * C * H * W, out_n = 4 * n;
    double *x = CHECK_ALLOC(double, n), *R = CHECK_ALLOC(double, out_n),
           *dx = CHECK_ALLOC(double, n);
    double *scratch = CHECK_ALLOC(double, out_n);
    check_fill_uniform(&r, NULL, x, n, -1, 1);
    check_fill_uniform(&r, NULL, R, out_n, -1, 1);
    OpCtx c = {.weights = R, .out_n = out_n, .scratch = scratch, .B = B, .C = C, .H = H, .W = W};

    memset(dx, 0, sizeof(double) * n);
    upsample2x_backward_ref(dx, R, B, C, H, W);
    int bad = fd_check("upsample2x_backward_ref", dx, upsample_loss, x, n, &c);
    free(x), free(R), free(dx), free(scratch);
    assert_int_equal(bad, 0);
}

static void test_fd_avgpool(void **state) {
    (void)state;
    Rng r;
    rng_seed(&r, 31);
    int B = 2, C = 2, H = 4, W = 6;
    long n = (long)B * C * H * W, out_n = n / 4;
    double *x = CHECK_ALLOC(double, n), *R = CHECK_ALLOC(double, out_n),
           *dx = CHECK_ALLOC(double, n);
    double *scratch = CHECK_ALLOC(double, out_n);
    check_fill_uniform(&r, NULL, x, n, -1, 1);
    check_fill_uniform(&r, NULL, R, out_n, -1, 1);
    OpCtx c = {.weights = R, .out_n = out_n, .scratch = scratch, .B = B, .C = C, .H = H, .W = W};
    memset(dx, 0, sizeof(double) * n);
    avgpool2x_backward_ref(dx, R, B, C, H, W);
    int bad = fd_check("avgpool2x_backward_ref", dx, avgpool_loss, x, n, &c);
    free(x), free(R), free(dx), free(scratch);
    assert_int_equal(bad, 0);
}

static void test_fd_losses(void **state) {
    (void)state;
    Rng r;
    rng_seed(&r, 4);
    // Logits spread over [-3, 3] but kept 0.1 away from the hinge kinks at -1 and +1, so both
    // sides of each hinge are exercised and no difference straddles a kink.
    int B = 12;
    double logits[12], dl[12];
    for (int b = 0; b < B; b++) {
        double x;
        do
            x = -3.0 + 6.0 * rng_uniform(&r);
        while (fabs(fabs(x) - 1.0) < 0.1);
        logits[b] = x;
    }
    int bad = 0;
    hinge_d_real_loss_ref(dl, logits, B);
    bad += fd_check("hinge_d_real_loss_ref", dl, hinge_real_loss, logits, B, NULL);
    hinge_d_fake_loss_ref(dl, logits, B);
    bad += fd_check("hinge_d_fake_loss_ref", dl, hinge_fake_loss, logits, B, NULL);
    hinge_g_loss_ref(dl, logits, B);
    bad += fd_check("hinge_g_loss_ref", dl, hinge_gen_loss, logits, B, NULL);

    int K = 5;
    int Bx = 4;
    double xl[20], dxl[20];
    int32_t labels[4] = {0, 4, 2, 2};
    check_fill_uniform(&r, NULL, xl, Bx * K, -3, 3);
    OpCtx c = {.B = Bx, .K = K, .labels = labels};
    softmax_xent_ref(dxl, xl, labels, Bx, K);
    bad += fd_check("softmax_xent_ref", dxl, xent_loss, xl, Bx * K, &c);
    assert_int_equal(bad, 0);
}

static void test_fd_embedding(void **state) {
    (void)state;
    Rng r;
    rng_seed(&r, 5);
    int K = 4, D = 3, B = 5;
    int32_t labels[5] = {1, 3, 1, 0, 1}; // repeats: their gradients must add up; row 2 gets none
    double table[12], dtable[12], R[15], out[15];
    check_fill_uniform(&r, NULL, table, K * D, -1, 1);
    check_fill_uniform(&r, NULL, R, B * D, -1, 1);
    OpCtx c = {.weights = R, .out_n = B * D, .scratch = out, .B = B, .D = D, .labels = labels};
    memset(dtable, 0, sizeof dtable);
    embedding_backward_ref(dtable, R, labels, B, D);
    assert_int_equal(fd_check("embedding_backward_ref", dtable, embedding_loss, table, K * D, &c),
                     0);
}

// --- the comparison catches an error ----------------------------------------------------------

static void test_compare_can_fail(void **state) {
    (void)state;
    double want[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    float got[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    assert_int_equal(check_compare_f("identical", got, want, 8, ATOL, RTOL), 0);
    got[5] += 1e-3f;
    got[2] = NAN;
    printf("# (two planted mismatches expected below)\n");
    assert_int_equal(check_compare_f("planted", got, want, 8, ATOL, RTOL), 2);
}

// --- fast float ops against the references ----------------------------------------------------

// Buffers for an elementwise op of n: float input/output/gradients and their double twins.
typedef struct {
    long n;
    float *x, *out, *dout, *dx;
    double *xd, *outd, *doutd, *dxd;
} Elementwise;

static void elementwise_init(Elementwise *e, long n, uint64_t seed) {
    Rng r;
    rng_seed(&r, seed);
    e->n = n;
    e->x = CHECK_ALLOC(float, n), e->out = CHECK_ALLOC(float, n), e->dout = CHECK_ALLOC(float, n);
    e->dx = CHECK_ALLOC(float, n);
    e->xd = CHECK_ALLOC(double, n), e->outd = CHECK_ALLOC(double, n),
    e->doutd = CHECK_ALLOC(double, n);
    e->dxd = CHECK_ALLOC(double, n);
    check_fill_uniform(&r, e->x, e->xd, n, -3, 3);
    check_fill_uniform(&r, e->dout, e->doutd, n, -1, 1);
}

static void elementwise_free(Elementwise *e) {
    free(e->x), free(e->out), free(e->dout), free(e->dx);
    free(e->xd), free(e->outd), free(e->doutd), free(e->dxd);
}

static void scale_d(double *x, double s, long n) {
    for (long i = 0; i < n; i++)
        x[i] *= s;
}

// Backward is called twice on a zeroed buffer and compared with twice the reference: a kernel
// that wrote (=) instead of accumulating (+=) would come out at half.
static int check_leaky_relu(long n) {
    Elementwise e;
    elementwise_init(&e, n, 10 + n);
    float alpha = 0.2f;
    leaky_relu_forward(e.out, e.x, alpha, n);
    leaky_relu_forward_ref(e.outd, e.xd, alpha, n);
    int bad = check_compare_f("leaky_relu_forward", e.out, e.outd, n, ATOL, RTOL);
    memset(e.dx, 0, sizeof(float) * n), memset(e.dxd, 0, sizeof(double) * n);
    leaky_relu_backward(e.dx, e.dout, e.x, alpha, n);
    leaky_relu_backward(e.dx, e.dout, e.x, alpha, n);
    leaky_relu_backward_ref(e.dxd, e.doutd, e.xd, alpha, n);
    scale_d(e.dxd, 2.0, n);
    bad += check_compare_f("leaky_relu_backward x2", e.dx, e.dxd, n, ATOL, RTOL);
    // In place, as G and D call it: out aliases inp.
    memcpy(e.out, e.x, sizeof(float) * n);
    leaky_relu_forward(e.out, e.out, alpha, n);
    bad += check_compare_f("leaky_relu_forward in place", e.out, e.outd, n, ATOL, RTOL);
    elementwise_free(&e);
    return bad;
}

static int check_tanh(long n) {
    Elementwise e;
    elementwise_init(&e, n, 20 + n);
    tanh_forward(e.out, e.x, n);
    tanh_forward_ref(e.outd, e.xd, n);
    int bad = check_compare_f("tanh_forward", e.out, e.outd, n, ATOL, RTOL);
    memset(e.dx, 0, sizeof(float) * n), memset(e.dxd, 0, sizeof(double) * n);
    tanh_backward(e.dx, e.dout, e.out, n);
    tanh_backward(e.dx, e.dout, e.out, n);
    tanh_backward_ref(e.dxd, e.doutd, e.outd, n);
    scale_d(e.dxd, 2.0, n);
    bad += check_compare_f("tanh_backward x2", e.dx, e.dxd, n, ATOL, RTOL);
    memcpy(e.out, e.x, sizeof(float) * n);
    tanh_forward(e.out, e.out, n);
    bad += check_compare_f("tanh_forward in place", e.out, e.outd, n, ATOL, RTOL);
    elementwise_free(&e);
    return bad;
}

static int check_dropout_backward_add(long n) {
    Elementwise e;
    elementwise_init(&e, n, 30 + n);
    // add_inplace: out = dout + x, twice.
    memcpy(e.out, e.dout, sizeof(float) * n);
    add_inplace(e.out, e.x, n);
    add_inplace(e.out, e.x, n);
    for (long i = 0; i < n; i++)
        e.outd[i] = e.doutd[i] + 2.0 * e.xd[i];
    int bad = check_compare_f("add_inplace x2", e.out, e.outd, n, ATOL, RTOL);
    // dropout_backward with x standing in for a mask: dx += dout * mask.
    memset(e.dx, 0, sizeof(float) * n);
    dropout_backward(e.dx, e.dout, e.x, n);
    dropout_backward(e.dx, e.dout, e.x, n);
    for (long i = 0; i < n; i++)
        e.dxd[i] = 2.0 * e.doutd[i] * e.xd[i];
    bad += check_compare_f("dropout_backward x2", e.dx, e.dxd, n, ATOL, RTOL);
    elementwise_free(&e);
    return bad;
}

static void test_elementwise_small(void **state) {
    (void)state;
    assert_int_equal(
        check_leaky_relu(SMALL) + check_tanh(SMALL) + check_dropout_backward_add(SMALL), 0);
}

static void test_elementwise_large(void **state) {
    (void)state;
    assert_int_equal(
        check_leaky_relu(LARGE) + check_tanh(LARGE) + check_dropout_backward_add(LARGE), 0);
}

static int check_pixelnorm(int B, int C, int N) {
    long n = (long)B * C * N, pix = (long)B * N;
    Elementwise e;
    elementwise_init(&e, n, 40 + n);
    float *rn = CHECK_ALLOC(float, pix);
    double *rnd = CHECK_ALLOC(double, pix);
    pixelnorm_forward(e.out, rn, e.x, B, C, N);
    pixelnorm_forward_ref(e.outd, rnd, e.xd, B, C, N);
    int bad = check_compare_f("pixelnorm_forward out", e.out, e.outd, n, ATOL, RTOL);
    bad += check_compare_f("pixelnorm_forward rnorm", rn, rnd, pix, ATOL, RTOL);
    memset(e.dx, 0, sizeof(float) * n), memset(e.dxd, 0, sizeof(double) * n);
    pixelnorm_backward(e.dx, e.dout, e.out, rn, B, C, N);
    pixelnorm_backward(e.dx, e.dout, e.out, rn, B, C, N);
    pixelnorm_backward_ref(e.dxd, e.doutd, e.outd, rnd, B, C, N);
    scale_d(e.dxd, 2.0, n);
    bad += check_compare_f("pixelnorm_backward x2", e.dx, e.dxd, n, ATOL, RTOL);
    if (bad)
        printf("# pixelnorm B=%d C=%d N=%d\n", B, C, N);
    free(rn), free(rnd);
    elementwise_free(&e);
    return bad;
}

static void test_pixelnorm(void **state) {
    (void)state;
    int bad = check_pixelnorm(2, 5, 37);     // serial, one partial tile
    bad += check_pixelnorm(1, 128, 16);      // batch-1 generation, the 4x4 stage
    bad += check_pixelnorm(1, 64, 1000);     // threaded over tiles of one image, partial last
    bad += check_pixelnorm(64, 32, 32 * 32); // training batch, threaded
    assert_int_equal(bad, 0);
}

static int check_upsample(int B, int C, int H, int W) {
    long n = (long)B * C * H * W, out_n = 4 * n;
    Rng r;
    rng_seed(&r, 50 + n);
    float *x = CHECK_ALLOC(float, n), *out = CHECK_ALLOC(float, out_n),
          *dout = CHECK_ALLOC(float, out_n);
    float *dx = CHECK_ALLOC(float, n);
    double *xd = CHECK_ALLOC(double, n), *outd = CHECK_ALLOC(double, out_n),
           *doutd = CHECK_ALLOC(double, out_n);
    double *dxd = CHECK_ALLOC(double, n);
    check_fill_uniform(&r, x, xd, n, -1, 1);
    check_fill_uniform(&r, dout, doutd, out_n, -1, 1);
    upsample2x_forward(out, x, B, C, H, W);
    upsample2x_forward_ref(outd, xd, B, C, H, W);
    int bad = check_compare_f("upsample2x_forward", out, outd, out_n, ATOL, RTOL);
    memset(dx, 0, sizeof(float) * n), memset(dxd, 0, sizeof(double) * n);
    upsample2x_backward(dx, dout, B, C, H, W);
    upsample2x_backward(dx, dout, B, C, H, W);
    upsample2x_backward_ref(dxd, doutd, B, C, H, W);
    scale_d(dxd, 2.0, n);
    bad += check_compare_f("upsample2x_backward x2", dx, dxd, n, ATOL, RTOL);
    if (bad)
        printf("# upsample2x B=%d C=%d H=%d W=%d\n", B, C, H, W);
    free(x), free(out), free(dout), free(dx), free(xd), free(outd), free(doutd), free(dxd);
    return bad;
}

static void test_upsample(void **state) {
    (void)state;
    int bad = check_upsample(2, 3, 4, 5);
    bad += check_upsample(1, 128, 4, 4);
    bad += check_upsample(64, 32, 16, 16);
    assert_int_equal(bad, 0);
}

static int check_avgpool(int B, int C, int H, int W) {
    long n = (long)B * C * H * W, out_n = n / 4;
    Rng r;
    rng_seed(&r, 70 + n);
    float *x = CHECK_ALLOC(float, n), *out = CHECK_ALLOC(float, out_n),
          *dout = CHECK_ALLOC(float, out_n), *dx = CHECK_ALLOC(float, n);
    double *xd = CHECK_ALLOC(double, n), *outd = CHECK_ALLOC(double, out_n),
           *doutd = CHECK_ALLOC(double, out_n), *dxd = CHECK_ALLOC(double, n);
    check_fill_uniform(&r, x, xd, n, -1, 1);
    check_fill_uniform(&r, dout, doutd, out_n, -1, 1);
    avgpool2x_forward(out, x, B, C, H, W);
    avgpool2x_forward_ref(outd, xd, B, C, H, W);
    int bad = check_compare_f("avgpool2x_forward", out, outd, out_n, ATOL, RTOL);
    memset(dx, 0, sizeof(float) * n), memset(dxd, 0, sizeof(double) * n);
    avgpool2x_backward(dx, dout, B, C, H, W); // twice: it accumulates
    avgpool2x_backward(dx, dout, B, C, H, W);
    avgpool2x_backward_ref(dxd, doutd, B, C, H, W);
    scale_d(dxd, 2.0, n);
    bad += check_compare_f("avgpool2x_backward x2", dx, dxd, n, ATOL, RTOL);
    if (bad) printf("# avgpool2x B=%d C=%d H=%d W=%d\n", B, C, H, W);
    free(x), free(out), free(dout), free(dx), free(xd), free(outd), free(doutd), free(dxd);
    return bad;
}

static void test_avgpool_lerp(void **state) {
    (void)state;
    int bad = check_avgpool(2, 3, 4, 6);
    bad += check_avgpool(64, 3, 64, 64); // threaded
    // lerp: out = a a + (1 - a) b; the backward accumulates a dout and (1 - a) dout
    enum { N = 70000 };
    float *a = CHECK_ALLOC(float, N), *b = CHECK_ALLOC(float, N), *o = CHECK_ALLOC(float, N),
          *da = CHECK_ALLOC(float, N), *db = CHECK_ALLOC(float, N);
    for (long i = 0; i < N; i++) a[i] = (float)(i % 7) - 3.0f, b[i] = (float)(i % 5), da[i] = 1.0f;
    lerp_forward(o, a, b, 0.25f, N);
    lerp_backward(da, db, b, 0.25f, N);
    for (long i = 0; i < N; i++) {
        bad += fabsf(o[i] - (0.25f * a[i] + 0.75f * b[i])) > 1e-6f;
        bad += fabsf(da[i] - (1.0f + 0.25f * b[i])) > 1e-6f || fabsf(db[i] - 0.75f * b[i]) > 1e-6f;
    }
    free(a), free(b), free(o), free(da), free(db);
    // upsample_nearest by 2 is upsample2x; by 4 it is upsample2x twice
    enum { UB = 3, UC = 2, UH = 5, UW = 6 };
    long un = UB * UC * UH * UW;
    float *u = CHECK_ALLOC(float, un), *u2 = CHECK_ALLOC(float, 4 * un),
          *u4 = CHECK_ALLOC(float, 16 * un), *w2 = CHECK_ALLOC(float, 4 * un),
          *w4 = CHECK_ALLOC(float, 16 * un);
    for (long i = 0; i < un; i++) u[i] = (float)i;
    upsample2x_forward(u2, u, UB, UC, UH, UW);
    upsample2x_forward(u4, u2, UB, UC, 2 * UH, 2 * UW);
    upsample_nearest_forward(w2, u, UB, UC, UH, UW, 2);
    upsample_nearest_forward(w4, u, UB, UC, UH, UW, 4);
    bad += memcmp(u2, w2, sizeof(float) * 4 * un) != 0;
    bad += memcmp(u4, w4, sizeof(float) * 16 * un) != 0;
    free(u), free(u2), free(u4), free(w2), free(w4);
    assert_int_equal(bad, 0);
}

static void test_losses(void **state) {
    (void)state;
    Rng r;
    rng_seed(&r, 60);
    int B = 64, K = 10;
    float logits[64], dl[64], xl[640], dxl[640], probs[640];
    double logitsd[64], dld[64], xld[640], dxld[640], want_probs[640];
    int32_t labels[64];
    check_fill_uniform(&r, logits, logitsd, B, -3, 3);
    check_fill_uniform(&r, xl, xld, B * K, -8, 8);
    for (int b = 0; b < B; b++)
        labels[b] = (int32_t)rng_below(&r, (uint32_t)K);

    int bad = 0;
    double loss, want;
    struct {
        const char *name;
        float (*fast)(float *, const float *, int);
        double (*ref)(double *, const double *, int);
    } hinges[3] = {{"hinge_d_real_loss", hinge_d_real_loss, hinge_d_real_loss_ref},
                   {"hinge_d_fake_loss", hinge_d_fake_loss, hinge_d_fake_loss_ref},
                   {"hinge_g_loss", hinge_g_loss, hinge_g_loss_ref}};
    for (int h = 0; h < 3; h++) {
        loss = hinges[h].fast(dl, logits, B);
        want = hinges[h].ref(dld, logitsd, B);
        bad += check_compare_f(hinges[h].name, dl, dld, B, ATOL, RTOL);
        bad += check_compare_d(hinges[h].name, &loss, &want, 1, ATOL, RTOL);
        loss = hinges[h].fast(NULL, logits, B); // the loss alone, no gradient buffer
        bad += check_compare_d(hinges[h].name, &loss, &want, 1, ATOL, RTOL);
    }

    loss = softmax_xent_forward_backward(dxl, probs, xl, labels, B, K);
    want = softmax_xent_ref(dxld, xld, labels, B, K);
    bad += check_compare_d("softmax_xent loss", &loss, &want, 1, ATOL, RTOL);
    bad += check_compare_f("softmax_xent dlogits", dxl, dxld, B * K, ATOL, RTOL);
    for (int b = 0; b < B; b++) // softmax = B * dlogits + onehot, from the reference's gradient
        for (int k = 0; k < K; k++)
            want_probs[b * K + k] = B * dxld[b * K + k] + (k == labels[b]);
    bad += check_compare_f("softmax_xent probs", probs, want_probs, B * K, ATOL, RTOL);
    loss = softmax_xent_forward_backward(NULL, NULL, xl, labels, B, K);
    bad += check_compare_d("softmax_xent loss only", &loss, &want, 1, ATOL, RTOL);
    assert_int_equal(bad, 0);
}

static void test_embedding(void **state) {
    (void)state;
    Rng r;
    rng_seed(&r, 70);
    int K = 10, D = 128, B = 64;
    float *table = CHECK_ALLOC(float, K *D), *out = CHECK_ALLOC(float, B *D),
          *dout = CHECK_ALLOC(float, B *D);
    float *dtable = CHECK_ALLOC(float, K *D);
    double *tabled = CHECK_ALLOC(double, K *D), *outd = CHECK_ALLOC(double, B *D);
    double *doutd = CHECK_ALLOC(double, B *D), *dtabled = CHECK_ALLOC(double, K *D);
    int32_t labels[64];
    for (int b = 0; b < B; b++)
        labels[b] = (int32_t)rng_below(&r, (uint32_t)K);
    check_fill_uniform(&r, table, tabled, K * D, -1, 1);
    check_fill_uniform(&r, dout, doutd, B * D, -1, 1);
    embedding_forward(out, table, labels, B, D);
    embedding_forward_ref(outd, tabled, labels, B, D);
    int bad = check_compare_f("embedding_forward", out, outd, B * D, ATOL, RTOL);
    memset(dtable, 0, sizeof(float) * K * D), memset(dtabled, 0, sizeof(double) * K * D);
    embedding_backward(dtable, dout, labels, B, D);
    embedding_backward(dtable, dout, labels, B, D);
    embedding_backward_ref(dtabled, doutd, labels, B, D);
    scale_d(dtabled, 2.0, K * D);
    bad += check_compare_f("embedding_backward x2", dtable, dtabled, K * D, ATOL, RTOL);
    free(table), free(out), free(dout), free(dtable), free(tabled), free(outd), free(doutd);
    free(dtabled);
    assert_int_equal(bad, 0);
}

static int check_adamw(long n, float beta1, float weight_decay) {
    Rng r;
    rng_seed(&r, 80 + n);
    float *p = CHECK_ALLOC(float, n), *g = CHECK_ALLOC(float, n), *m = CHECK_ALLOC(float, n),
          *v = CHECK_ALLOC(float, n);
    double *pd = CHECK_ALLOC(double, n), *gd = CHECK_ALLOC(double, n), *md = CHECK_ALLOC(double, n);
    double *vd = CHECK_ALLOC(double, n);
    check_fill_uniform(&r, p, pd, n, -1, 1);
    memset(m, 0, sizeof(float) * n), memset(v, 0, sizeof(float) * n);
    memset(md, 0, sizeof(double) * n), memset(vd, 0, sizeof(double) * n);
    int bad = 0;
    for (long t = 1; t <= 5; t++) {
        check_fill_uniform(&r, g, gd, n, -1, 1);
        adamw_update(p, g, m, v, n, 1e-2f, beta1, 0.9f, 1e-8f, weight_decay, t);
        adamw_update_ref(pd, gd, md, vd, n, 1e-2, beta1, 0.9, 1e-8, weight_decay, t);
    }
    bad += check_compare_f("adamw params", p, pd, n, ATOL, RTOL);
    bad += check_compare_f("adamw m", m, md, n, ATOL, RTOL);
    bad += check_compare_f("adamw v", v, vd, n, ATOL, RTOL);
    if (bad)
        printf("# adamw n=%ld beta1=%g wd=%g\n", n, beta1, weight_decay);
    free(p), free(g), free(m), free(v), free(pd), free(gd), free(md), free(vd);
    return bad;
}

static void test_adamw(void **state) {
    (void)state;
    int bad = check_adamw(SMALL, 0.0f, 0.0f); // the GAN's Adam, beta = (0, 0.9)
    bad += check_adamw(SMALL, 0.9f, 0.1f);
    bad += check_adamw(LARGE / 4, 0.0f, 0.0f);
    bad += check_adamw(LARGE / 4, 0.9f, 0.1f);
    assert_int_equal(bad, 0);
}

static void test_adamw_weight_decay_alone(void **state) {
    (void)state;
    // With zero gradients the Adam step is 0 and only decay acts: p <- p (1 - lr wd).
    float p[4] = {1.0f, -2.0f, 0.5f, 0.0f}, g[4] = {0}, m[4] = {0}, v[4] = {0};
    double want[4] = {1.0 * 0.999, -2.0 * 0.999, 0.5 * 0.999, 0.0};
    adamw_update(p, g, m, v, 4, 0.01f, 0.9f, 0.999f, 1e-8f, 0.1f, 1);
    assert_int_equal(check_compare_f("adamw decay only", p, want, 4, 1e-7, 1e-6), 0);
}

// --- dropout ------------------------------------------------------------------------------

static void test_dropout(void **state) {
    (void)state;
    long n = 100000; // over the threshold: chunks are filled in parallel
    float p = 0.3f;
    float *x = CHECK_ALLOC(float, n), *out = CHECK_ALLOC(float, n), *mask = CHECK_ALLOC(float, n);
    float *out1 = CHECK_ALLOC(float, n), *mask1 = CHECK_ALLOC(float, n);
    Rng r;
    rng_seed(&r, 90);
    check_fill_uniform(&r, x, NULL, n, -1, 1);

    uint64_t seed = 1234;
    dropout_forward(out, mask, x, p, &seed, n);
    assert_true(seed != 1234); // advanced, so the next call draws a fresh mask
    long kept = 0, wrong = 0;
    for (long i = 0; i < n; i++) {
        if (mask[i] != 0.0f) {
            kept++;
            wrong += fabsf(mask[i] - 1.0f / (1.0f - p)) > 1e-6f;
        }
        wrong += out[i] != x[i] * mask[i];
    }
    double keep_frac = (double)kept / n; // binomial: sd sqrt(0.21 / 1e5) = 0.0015
    printf("# dropout p=%.2f kept %.4f\n", p, keep_frac);
    assert_int_equal(wrong, 0);
    assert_true(fabs(keep_frac - (1.0 - p)) < 0.01);

    // Same seed on one thread: the same mask (chunks do not depend on the thread count).
    int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    uint64_t seed1 = 1234;
    dropout_forward(out1, mask1, x, p, &seed1, n);
    omp_set_num_threads(threads);
    assert_true(seed1 == seed);
    assert_memory_equal(mask, mask1, sizeof(float) * n);

    // Below the OpenMP threshold, the same seed gives the same leading mask: chunk k's stream
    // does not depend on n or on whether the chunks ran in parallel.
    uint64_t seed_small = 1234;
    dropout_forward(out1, mask1, x, p, &seed_small, SMALL);
    assert_memory_equal(mask, mask1, sizeof(float) * SMALL);

    // The advanced seed gives a different mask.
    dropout_forward(out1, mask1, x, p, &seed1, n);
    assert_memory_not_equal(mask, mask1, sizeof(float) * n);

    // p = 0 copies, mask 1, seed untouched.
    uint64_t seed0 = 77;
    dropout_forward(out1, mask1, x, 0.0f, &seed0, n);
    assert_true(seed0 == 77);
    assert_memory_equal(out1, x, sizeof(float) * n);
    for (long i = 0; i < n; i++)
        wrong += mask1[i] != 1.0f;
    assert_int_equal(wrong, 0);
    free(x), free(out), free(mask), free(out1), free(mask1);
}

// --- rng ----------------------------------------------------------------------------------

static void test_rng_known_answers(void **state) {
    (void)state;
    // splitmix64 from 0 (Vigna's splitmix64.c): the first four outputs are the seeded state.
    Rng r;
    rng_seed(&r, 0);
    assert_true(r.s[0] == 0xe220a8397b1dcdafull);
    assert_true(r.s[1] == 0x6e789e6aa1b965f4ull);
    assert_true(r.s[2] == 0x06c45d188009454full);
    assert_true(r.s[3] == 0xf88bb8a8724c81ecull);
    // xoshiro256** from state {1, 2, 3, 4}: 11520, 0, 1509978240, 1215971899390074240.
    Rng k = {{1, 2, 3, 4}};
    assert_true(rng_u64(&k) == 11520ull);
    assert_true(rng_u64(&k) == 0ull);
    assert_true(rng_u64(&k) == 1509978240ull);
    assert_true(rng_u64(&k) == 1215971899390074240ull);
    // And through the seeding, from an independent transcription (Python) of both algorithms.
    rng_seed(&r, 42);
    assert_true(rng_u64(&r) == 0x15780b2e0c2ec716ull);
    assert_true(rng_u64(&r) == 0x6104d9866d113a7eull);
}

static void test_rng_determinism(void **state) {
    (void)state;
    Rng a, b, c;
    rng_seed(&a, 7);
    rng_seed(&b, 7);
    rng_seed(&c, 8);
    int same_c = 0;
    for (int i = 0; i < 1000; i++) {
        uint64_t x = rng_u64(&a);
        assert_true(x == rng_u64(&b));
        same_c += x == rng_u64(&c);
    }
    assert_int_equal(same_c, 0); // a neighbouring seed is an unrelated stream

    // Saving s[] resumes the stream exactly, through normals with an odd count (the spare of the
    // last pair is dropped, not kept, so there is no hidden state).
    float z1[7], z2[8], z3[5], z4[5];
    rng_seed(&a, 9);
    b = a;
    rng_normal(&a, z1, 7);
    rng_normal(&b, z2, 8);
    assert_memory_equal(z1, z2, sizeof z1);
    assert_memory_equal(a.s, b.s, sizeof a.s); // 7 and 8 normals consume the same 8 draws
    Rng saved = a;
    rng_normal(&a, z3, 5);
    rng_normal(&saved, z4, 5);
    assert_memory_equal(z3, z4, sizeof z3);
}

static void test_rng_uniform_below(void **state) {
    (void)state;
    Rng r;
    rng_seed(&r, 11);
    long n = 100000;
    double sum = 0.0;
    for (long i = 0; i < n; i++) {
        float u = rng_uniform(&r);
        assert_true(u >= 0.0f && u < 1.0f);
        sum += u;
    }
    assert_true(fabs(sum / n - 0.5) < 0.005); // sd of the mean: sqrt(1/12 / 1e5) = 0.0009

    // rng_below: in range, and each of 10 buckets near n/10 (sd sqrt(1e5 * 0.09) ~ 95).
    long counts[10] = {0};
    for (long i = 0; i < n; i++) {
        uint32_t k = rng_below(&r, 10);
        assert_true(k < 10);
        counts[k]++;
    }
    for (int k = 0; k < 10; k++)
        assert_true(labs(counts[k] - n / 10) < 600);
    for (int i = 0; i < 1000; i++) {
        assert_int_equal(rng_below(&r, 1), 0);
        assert_true(rng_below(&r, 3000000001u) < 3000000001u);
    }
    // A bound just over 2^31 is where modulo reduction is most biased (values below 2^32 - n
    // would come twice as often); Lemire's method keeps the lower half at 1/2.
    long low = 0;
    uint32_t big = 0x80000001u;
    for (long i = 0; i < n; i++)
        low += rng_below(&r, big) < big / 2;
    assert_true(fabs((double)low / n - 0.5) < 0.01);
}

static void test_rng_normal_moments(void **state) {
    (void)state;
    Rng r;
    rng_seed(&r, 12);
    long n = 100000;
    float *z = CHECK_ALLOC(float, n);
    rng_normal(&r, z, n);
    double sum = 0.0, sumsq = 0.0, sum4 = 0.0;
    for (long i = 0; i < n; i++) {
        sum += z[i];
        sumsq += (double)z[i] * z[i];
        sum4 += (double)z[i] * z[i] * z[i] * z[i];
    }
    double mean = sum / n, var = sumsq / n - mean * mean, kurt = sum4 / n;
    printf("# normal: mean %.4f var %.4f E[z^4] %.3f\n", mean, var, kurt);
    free(z);
    // sd of the mean 0.0032, of the variance sqrt(2/n) = 0.0045, of E[z^4] sqrt(96/n) = 0.031.
    assert_true(fabs(mean) < 0.02);
    assert_true(fabs(var - 1.0) < 0.025);
    assert_true(fabs(kurt - 3.0) < 0.2);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_compare_can_fail),
        cmocka_unit_test(test_fd_leaky_relu_tanh),
        cmocka_unit_test(test_fd_pixelnorm),
        cmocka_unit_test(test_fd_upsample),
        cmocka_unit_test(test_fd_losses),
        cmocka_unit_test(test_fd_embedding),
        cmocka_unit_test(test_elementwise_small),
        cmocka_unit_test(test_elementwise_large),
        cmocka_unit_test(test_pixelnorm),
        cmocka_unit_test(test_upsample),
        cmocka_unit_test(test_fd_avgpool),
        cmocka_unit_test(test_avgpool_lerp),
        cmocka_unit_test(test_losses),
        cmocka_unit_test(test_embedding),
        cmocka_unit_test(test_adamw),
        cmocka_unit_test(test_adamw_weight_decay_alone),
        cmocka_unit_test(test_dropout),
        cmocka_unit_test(test_rng_known_answers),
        cmocka_unit_test(test_rng_determinism),
        cmocka_unit_test(test_rng_uniform_below),
        cmocka_unit_test(test_rng_normal_moments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
