// test_cuda_ops.c — every op of the CUDA backend (kernels/cuda/cuda_ops.h), forward and backward,
// run on the GPU and compared with the CPU side's ground truth; built by `make CUDA=1`.
//
// Without a usable GPU (no driver, no device, no code for the device) it prints one TAP line,
// "ok 1 - test_cuda_ops # SKIP skipped: <reason>", and exits 0: a CUDA build on a machine
// without a GPU is expected, and the reason says which case it is.
//
// The ground truth is the double reference of kernels/reference*.c where one exists (conv,
// linear, activations, PixelNorm, up- and down-sampling, hinge losses, spectral norm, AdamW),
// which the CPU tests check by finite differences, and a double loop here where none does (gemm
// and its strided-batched form with transposes, the fade-in blend and its per-item form, the row
// softmax, L1, orthogonal regularization from its definition). Where the GPU must reproduce the
// CPU twin itself (dropout's masks, the gradient penalties' set-up, the scalar combiners), that
// twin is the ground truth. Each backward starts from random gradient buffers, so the accumulate
// (+=) contract is checked with the values. Shapes: tiny odd ones (tails, partial warps) and the
// fmnist32 training shapes at batch 64.
//
// Tolerances, |gpu - ref| <= atol + rtol |ref| per element (check.c prints the worst pairs):
//   element-wise, PixelNorm, softmax, losses, spectral norm, AdamW, the gradient penalties' x2 and
//     dout2: atol 1e-5, rtol 1e-4 (the CPU kernels' own tests use the same against the same
//     references)
//   products (gemm, linear, conv, the orthogonal gradient) in FP32: atol 1e-5 sqrt(k), rtol 1e-3,
//     k the length of the sums behind the element: float rounding grows about as sqrt(k) over k
//     terms of size O(1)
//   products with TF32 on: atol 2e-3 sqrt(k), rtol 1e-2 (inputs rounded to a 10-bit mantissa)
//   sums kept in device doubles (the L1 sum, the gradient penalty's value): rtol 1e-12, atol 0
//     (double sums of floats, only the order differs: about sqrt(n) 1e-16)
//   the orthogonal value (a double sum of squares of an FP32 Gram matrix): rtol 1e-5, atol 0
//     (each Gram entry carries FP32 rounding of about 1e-7 sqrt(k) relative; TF32: rtol 1e-2)
//   exact, bit for bit: dropout's masks and outputs against dropout_forward (the same generator
//     and one float product), and the scalar combiners l1_value_cuda and float_sum_cuda against
//     their expression evaluated here (one thread, the same operations in the same order)
// FP32 results that had silently used TF32 fail the FP32 tolerance at every training shape.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "kernels/cuda/cuda_ops.h"
#include "kernels/kernels.h"
#include "kernels/ops.h"
#include "kernels/reference.h"
#include "kernels/regularize.h"
#include "kernels/rng.h"
#include "tests/check.h"
#include "tests/cuda/cuda_check.h"

#define ATOL 1e-5
#define RTOL 1e-4
#define PROD_ATOL 1e-5
#define PROD_RTOL 1e-3
#define TF32_ATOL 2e-3
#define TF32_RTOL 1e-2
#define SUM_RTOL 1e-12
#define ORTHO_RTOL 1e-5

// A full activation of the fmnist32 D at batch 64 (64 x 32 x 32 x 32), and an odd small count.
#define SMALL 1001L
#define LARGE (64L * 32 * 32 * 32)

static Rng test_rng;
static cudaStream_t stream; // every op runs on this one except in test_default_stream

// --- device helpers -----------------------------------------------------------------------------

// A device copy of host (n floats); the caller frees it with dev_free.
static float *dev_copy(const float *host, long n) {
    float *d = NULL;
    CUDA_OK(cudaMalloc((void **)&d, sizeof(float) * (size_t)(n ? n : 1)));
    if (n)
        CUDA_OK(cudaMemcpy(d, host, sizeof(float) * (size_t)n, cudaMemcpyHostToDevice));
    return d;
}

static void dev_free(float *dev) { CUDA_OK(cudaFree(dev)); }

// Waits for the stream, then copies n floats of dev into host.
static void dev_read(float *host, const float *dev, long n) {
    CUDA_OK(cudaStreamSynchronize(stream));
    CUDA_OK(cudaMemcpy(host, dev, sizeof(float) * (size_t)n, cudaMemcpyDeviceToHost));
}

// bytes of device memory filled with 0xFF bytes (NaN as float or double), so an output left
// unwritten, or scratch read before it is written, shows; the caller frees it with cudaFree.
static void *dev_nan(size_t bytes) {
    void *d = NULL;
    CUDA_OK(cudaMalloc(&d, bytes ? bytes : 1));
    CUDA_OK(cudaMemset(d, 0xFF, bytes ? bytes : 1));
    return d;
}

// Waits for the stream, then returns the device double at dev.
static double dev_read_double(const double *dev) {
    double v;
    CUDA_OK(cudaStreamSynchronize(stream));
    CUDA_OK(cudaMemcpy(&v, dev, sizeof v, cudaMemcpyDeviceToHost));
    return v;
}

// Counts the i < n where got and want differ in any bit, and prints the first CHECK_WORST of them
// under the label what, as check.c prints its pairs: for results that must be the CPU's exactly.
static int compare_bits(const char *what, const float *got, const float *want, long n) {
    long bad = 0;
    for (long i = 0; i < n; i++)
        if (memcmp(&got[i], &want[i], sizeof(float)) != 0 && bad++ < CHECK_WORST)
            printf("#   %s [%ld] got %.9g want %.9g\n", what, i, got[i], want[i]);
    if (bad)
        printf("# %s: %ld of %ld differ in their bits\n", what, bad, n);
    return bad > 1000000 ? 1000000 : (int)bad;
}

// Uniform [lo, hi) into a new float array and its double twin (the same values).
static float *fill(double **d, long n, double lo, double hi) {
    float *f = CHECK_ALLOC(float, n);
    *d = CHECK_ALLOC(double, n);
    check_fill_uniform(&test_rng, f, *d, n, lo, hi);
    return f;
}

static double *dup_double(const double *x, long n) {
    double *d = CHECK_ALLOC(double, n);
    memcpy(d, x, sizeof(double) * (size_t)n);
    return d;
}

// Downloads dev (n) and compares it with want; returns the number of elements out of tolerance.
static int compare_dev(const char *what, const float *dev, const double *want, long n, double atol,
                       double rtol) {
    float *got = CHECK_ALLOC(float, n);
    dev_read(got, dev, n);
    int bad = check_compare_f(what, got, want, n, atol, rtol);
    free(got);
    return bad;
}

#define ASSERT_CLOSE(what, dev, want, n)                                                           \
    assert_int_equal(compare_dev(what, dev, want, n, ATOL, RTOL), 0)

// The FP32 (or TF32) tolerance for products whose elements are sums of k terms.
static double prod_atol(long k) {
    return (cuda_tf32_get() ? TF32_ATOL : PROD_ATOL) * sqrt((double)k);
}

static double prod_rtol(void) { return cuda_tf32_get() ? TF32_RTOL : PROD_RTOL; }

#define ASSERT_PROD_CLOSE(what, dev, want, n, k)                                                   \
    assert_int_equal(compare_dev(what, dev, want, n, prod_atol(k), prod_rtol()), 0)

static int group_setup(void **state) {
    (void)state;
    rng_seed(&test_rng, 20250606);
    return cudaStreamCreate(&stream) == cudaSuccess ? 0 : -1;
}

static int group_teardown(void **state) {
    (void)state;
    cudaStreamSynchronize(stream);
    cuda_cache_clear();
    return cudaStreamDestroy(stream) == cudaSuccess ? 0 : -1;
}

// --- the checks themselves ----------------------------------------------------------------------

// A planted error is found, and a bad shape is refused before anything is queued.
static void test_compare_can_fail(void **state) {
    (void)state;
    double *xd;
    float *x = fill(&xd, 64, -1, 1);
    float *dx = dev_copy(x, 64);
    assert_int_equal(leaky_relu_forward_cuda(dx, dx, 0.2f, 64, stream), 0);
    double *want = CHECK_ALLOC(double, 64);
    leaky_relu_forward_ref(want, xd, 0.2, 64);
    want[7] += 0.5;
    assert_int_equal(compare_dev("planted", dx, want, 64, ATOL, RTOL), 1);

    assert_int_equal(pixelnorm_forward_cuda(dx, dx, dx, 2, 0, 4, stream), KERNELS_EINVAL);
    assert_int_equal(avgpool2x_forward_cuda(dx, dx, 1, 1, 3, 4, stream), KERNELS_EINVAL);
    assert_int_equal(conv2d_forward_cuda(dx, dx, dx, NULL, 1, 1, 2, 2, 1, 5, 1, 0, stream),
                     KERNELS_EINVAL);
    assert_int_equal(linear_forward_cuda(dx, dx, dx, NULL, 0, 4, 4, stream), KERNELS_EINVAL);
    assert_int_equal(specnorm_forward_cuda(dx, dx, dx, NULL, dx, 2, 2, 1, stream), KERNELS_EINVAL);
    CUDA_OK(cudaStreamSynchronize(stream));
    dev_free(dx);
    free(x), free(xd), free(want);
}

// The device query names the device when it answers yes (main only runs the tests then).
static void test_device_available(void **state) {
    (void)state;
    char why[256];
    assert_int_equal(cuda_device_available(why, sizeof why), 1);
    CHECK_ASSERT_HAS(why, "sm_");
    assert_int_equal(cuda_device_available(NULL, 0), 1);
}

// leaky ReLU, tanh and lerp, forward and backward, on n elements.
static void elementwise_case(long n, cudaStream_t s) {
    double *xd, *yd, *gd, *d0d, *d1d;
    float *x = fill(&xd, n, -2, 2), *y = fill(&yd, n, -2, 2), *g = fill(&gd, n, -1, 1);
    float *d0 = fill(&d0d, n, -1, 1), *d1 = fill(&d1d, n, -1, 1);
    float *dx = dev_copy(x, n), *dy = dev_copy(y, n), *dg = dev_copy(g, n);
    float *dout = dev_copy(x, n), *dd0 = dev_copy(d0, n), *dd1 = dev_copy(d1, n);
    double *want = CHECK_ALLOC(double, n), *want1 = CHECK_ALLOC(double, n);

    assert_int_equal(leaky_relu_forward_cuda(dout, dx, 0.2f, n, s), 0);
    leaky_relu_forward_ref(want, xd, 0.2, n);
    ASSERT_CLOSE("leaky_relu forward", dout, want, n);
    assert_int_equal(leaky_relu_backward_cuda(dd0, dg, dx, 0.2f, n, s), 0);
    memcpy(want, d0d, sizeof(double) * n);
    leaky_relu_backward_ref(want, gd, xd, 0.2, n);
    ASSERT_CLOSE("leaky_relu backward", dd0, want, n);

    assert_int_equal(tanh_forward_cuda(dout, dx, n, s), 0);
    tanh_forward_ref(want, xd, n);
    ASSERT_CLOSE("tanh forward", dout, want, n);
    // The backward reads the forward output: give both sides the reference's, rounded to float.
    float *t = CHECK_ALLOC(float, n);
    for (long i = 0; i < n; i++)
        t[i] = (float)want[i];
    double *td = check_to_double(t, n);
    float *dt = dev_copy(t, n);
    assert_int_equal(tanh_backward_cuda(dd1, dg, dt, n, s), 0);
    memcpy(want, d1d, sizeof(double) * n);
    tanh_backward_ref(want, gd, td, n);
    ASSERT_CLOSE("tanh backward", dd1, want, n);

    // lerp: out = a x + (1 - a) y; da += a g, db += (1 - a) g; then db alone (da NULL).
    const float alpha = 0.3f;
    assert_int_equal(lerp_forward_cuda(dout, dx, dy, alpha, n, s), 0);
    for (long i = 0; i < n; i++)
        want[i] = (double)alpha * xd[i] + (1.0 - (double)alpha) * yd[i];
    ASSERT_CLOSE("lerp forward", dout, want, n);
    CUDA_OK(cudaMemcpy(dd0, d0, sizeof(float) * n, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(dd1, d1, sizeof(float) * n, cudaMemcpyHostToDevice));
    assert_int_equal(lerp_backward_cuda(dd0, dd1, dg, alpha, n, s), 0);
    assert_int_equal(lerp_backward_cuda(NULL, dd1, dg, alpha, n, s), 0);
    for (long i = 0; i < n; i++) {
        want[i] = d0d[i] + (double)alpha * gd[i];
        want1[i] = d1d[i] + 2.0 * (1.0 - (double)alpha) * gd[i];
    }
    ASSERT_CLOSE("lerp backward da", dd0, want, n);
    ASSERT_CLOSE("lerp backward db", dd1, want1, n);

    float *bufs[] = {dx, dy, dg, dout, dd0, dd1, dt};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        dev_free(bufs[i]);
    free(x), free(y), free(g), free(d0), free(d1), free(t);
    free(xd), free(yd), free(gd), free(d0d), free(d1d), free(td), free(want), free(want1);
}

static void test_elementwise(void **state) {
    (void)state;
    elementwise_case(1, stream);
    elementwise_case(SMALL, stream);
    elementwise_case(LARGE, stream);
}

static void gemm_case(int M, int N, int K, int pad);
static void conv_case(int B, int C, int H, int W, int OC, int K, int S, int P);

// The legacy default stream (0) works like any other, its cuBLAS and cuDNN handles its own.
static void test_default_stream(void **state) {
    (void)state;
    cudaStream_t created = stream;
    stream = 0;
    elementwise_case(SMALL, stream);
    gemm_case(3, 5, 7, 2);
    conv_case(2, 3, 7, 6, 4, 3, 1, 1);
    CUDA_OK(cudaDeviceSynchronize());
    stream = created;
}

// A stream's cached handles and workspace go with cuda_stream_forget, and a new stream (which may
// get the old one's address) computes right from a clean context.
static void test_stream_forget(void **state) {
    (void)state;
    cudaStream_t kept = stream;
    int base = cuda_stream_contexts();
    for (int round = 0; round < 3; round++) {
        CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
        gemm_case(3, 5, 7, 2);
        conv_case(2, 3, 7, 6, 4, 3, 1, 1);
        assert_int_equal(cuda_stream_contexts(), base + 1);
        assert_int_equal(cuda_stream_forget(stream), 0);
        assert_int_equal(cuda_stream_contexts(), base);
        assert_int_equal(cuda_stream_forget(stream), 0); // nothing left: a no-op
        CUDA_OK(cudaStreamDestroy(stream));
    }
    stream = kept;
}

static void pixelnorm_case(int B, int C, int N) {
    long n = (long)B * C * N, p = (long)B * N;
    double *xd, *gd, *d0d;
    float *x = fill(&xd, n, -2, 2), *g = fill(&gd, n, -1, 1), *d0 = fill(&d0d, n, -1, 1);
    float *dx = dev_copy(x, n), *dg = dev_copy(g, n), *dd = dev_copy(d0, n);
    float *dout = dev_copy(x, n), *dr = dev_copy(x, p);
    double *out = CHECK_ALLOC(double, n), *r = CHECK_ALLOC(double, p);
    assert_int_equal(pixelnorm_forward_cuda(dout, dr, dx, B, C, N, stream), 0);
    pixelnorm_forward_ref(out, r, xd, B, C, N);
    ASSERT_CLOSE("pixelnorm out", dout, out, n);
    ASSERT_CLOSE("pixelnorm rnorm", dr, r, p);
    assert_int_equal(pixelnorm_backward_cuda(dd, dg, dout, dr, B, C, N, stream), 0);
    double *want = dup_double(d0d, n);
    pixelnorm_backward_ref(want, gd, out, r, B, C, N);
    ASSERT_CLOSE("pixelnorm backward", dd, want, n);
    // In place (out = inp), as G runs it.
    assert_int_equal(pixelnorm_forward_cuda(dx, dr, dx, B, C, N, stream), 0);
    ASSERT_CLOSE("pixelnorm in place", dx, out, n);
    dev_free(dx), dev_free(dg), dev_free(dd);
    dev_free(dout), dev_free(dr);
    free(x), free(g), free(d0), free(xd), free(gd), free(d0d), free(out), free(r), free(want);
}

static void test_pixelnorm(void **state) {
    (void)state;
    pixelnorm_case(2, 3, 5);
    pixelnorm_case(64, 128, 16); // G after its linear layer: 4ch at 4x4
    pixelnorm_case(64, 32, 256); // G at 16x16
    pixelnorm_case(3, 16, 1024); // G at 32x32
}

static void resample_case(int B, int C, int H, int W) {
    long n = (long)B * C * H * W, n_up = 4 * n, n_down = n / 4;
    double *xd, *gud, *d0d, *gdd;
    float *x = fill(&xd, n, -1, 1), *gu = fill(&gud, n_up, -1, 1), *d0 = fill(&d0d, n, -1, 1);
    float *gdn = fill(&gdd, n_down ? n_down : 1, -1, 1);
    float *dx = dev_copy(x, n), *dgu = dev_copy(gu, n_up), *dd = dev_copy(d0, n);
    float *dgd = dev_copy(gdn, n_down), *dout = dev_copy(gu, n_up);
    double *want = CHECK_ALLOC(double, n_up);

    assert_int_equal(upsample2x_forward_cuda(dout, dx, B, C, H, W, stream), 0);
    upsample2x_forward_ref(want, xd, B, C, H, W);
    ASSERT_CLOSE("upsample2x forward", dout, want, n_up);
    assert_int_equal(upsample2x_backward_cuda(dd, dgu, B, C, H, W, stream), 0);
    memcpy(want, d0d, sizeof(double) * n);
    upsample2x_backward_ref(want, gud, B, C, H, W);
    ASSERT_CLOSE("upsample2x backward", dd, want, n);

    if (H % 2 == 0 && W % 2 == 0) {
        assert_int_equal(avgpool2x_forward_cuda(dout, dx, B, C, H, W, stream), 0);
        avgpool2x_forward_ref(want, xd, B, C, H, W);
        ASSERT_CLOSE("avgpool2x forward", dout, want, n_down);
        CUDA_OK(cudaMemcpy(dd, d0, sizeof(float) * n, cudaMemcpyHostToDevice));
        assert_int_equal(avgpool2x_backward_cuda(dd, dgd, B, C, H, W, stream), 0);
        memcpy(want, d0d, sizeof(double) * n);
        avgpool2x_backward_ref(want, gdd, B, C, H, W);
        ASSERT_CLOSE("avgpool2x backward", dd, want, n);
    }
    dev_free(dx), dev_free(dgu), dev_free(dd);
    dev_free(dgd), dev_free(dout);
    free(x), free(gu), free(d0), free(gdn), free(xd), free(gud), free(d0d), free(gdd), free(want);
}

static void test_upsample_avgpool(void **state) {
    (void)state;
    resample_case(2, 3, 3, 5);
    resample_case(2, 3, 4, 6);
    resample_case(64, 64, 8, 8);   // G's 8x8 stage
    resample_case(64, 16, 32, 32); // a 32x32 image batch, PGGAN's downsampling
}

typedef int (*HingeCuda)(float *, float *, const float *, int, cudaStream_t);
typedef double (*HingeRef)(double *, const double *, int);

static void hinge_case(int B) {
    static const struct {
        const char *name;
        HingeCuda gpu;
        HingeRef ref;
    } losses[] = {{"hinge_d_real", hinge_d_real_loss_cuda, hinge_d_real_loss_ref},
                  {"hinge_d_fake", hinge_d_fake_loss_cuda, hinge_d_fake_loss_ref},
                  {"hinge_g", hinge_g_loss_cuda, hinge_g_loss_ref}};
    double *ld;
    float *l = fill(&ld, B, -2, 2);
    // The kinks: margins of exactly 0 take the subgradient 0 on both sides.
    l[0] = 1.0f, ld[0] = 1.0;
    if (B > 1)
        l[1] = -1.0f, ld[1] = -1.0;
    float *dl = dev_copy(l, B), *dgrad = dev_copy(l, B), *dloss = dev_copy(l, 1);
    double *grad = CHECK_ALLOC(double, B);
    for (int k = 0; k < 3; k++) {
        double loss = losses[k].ref(grad, ld, B);
        assert_int_equal(losses[k].gpu(dloss, dgrad, dl, B, stream), 0);
        assert_int_equal(compare_dev(losses[k].name, dloss, &loss, 1, ATOL, RTOL), 0);
        ASSERT_CLOSE(losses[k].name, dgrad, grad, B);
        assert_int_equal(losses[k].gpu(dloss, NULL, dl, B, stream), 0);
        assert_int_equal(compare_dev(losses[k].name, dloss, &loss, 1, ATOL, RTOL), 0);
    }
    dev_free(dl), dev_free(dgrad), dev_free(dloss);
    free(l), free(ld), free(grad);
}

static void test_hinge_losses(void **state) {
    (void)state;
    hinge_case(1);
    hinge_case(7);
    hinge_case(64);
    hinge_case(1000);
}

// Three steps of AdamW from zero moments, each with fresh gradients.
static void adamw_case(long n, float beta1, float beta2, float wd) {
    const float lr = 1e-3f, eps = 1e-8f;
    double *pd, *gd;
    float *p = fill(&pd, n, -1, 1);
    float *zeros = CHECK_ALLOC(float, n);
    double *md = CHECK_ALLOC(double, n), *vd = CHECK_ALLOC(double, n);
    float *dp = dev_copy(p, n), *dm = dev_copy(zeros, n), *dv = dev_copy(zeros, n);
    for (long t = 1; t <= 3; t++) {
        float *g = fill(&gd, n, -1, 1);
        float *dg = dev_copy(g, n);
        assert_int_equal(adamw_update_cuda(dp, dg, dm, dv, n, lr, beta1, beta2, eps, wd, t, stream),
                         0);
        adamw_update_ref(pd, gd, md, vd, n, lr, beta1, beta2, eps, wd, t);
        ASSERT_CLOSE("adamw params", dp, pd, n);
        ASSERT_CLOSE("adamw m", dm, md, n);
        ASSERT_CLOSE("adamw v", dv, vd, n);
        dev_free(dg);
        free(g), free(gd);
    }
    dev_free(dp), dev_free(dm), dev_free(dv);
    free(p), free(pd), free(zeros), free(md), free(vd);
}

static void test_adamw(void **state) {
    (void)state;
    adamw_case(SMALL, 0.0f, 0.9f, 0.0f); // the GAN's Adam (DESIGN.md: beta = (0, 0.9))
    adamw_case(SMALL, 0.9f, 0.999f, 0.01f);
    adamw_case(LARGE, 0.0f, 0.9f, 0.0f);
}

// Two training forwards (update), a sampling forward (no update), then the backward.
static void specnorm_case(int OUT, int IN) {
    long n = (long)OUT * IN;
    double *wd, *ud, *gd, *d0d;
    float *w = fill(&wd, n, -1, 1), *u = fill(&ud, OUT, -1, 1), *g = fill(&gd, n, -1, 1);
    float *d0 = fill(&d0d, n, -1, 1);
    float *dw = dev_copy(w, n), *du = dev_copy(u, OUT), *dg = dev_copy(g, n), *dd = dev_copy(d0, n);
    float *dwsn = dev_copy(w, n), *dv = dev_copy(w, IN), *dsigma = dev_copy(w, 1);
    double *wsn = CHECK_ALLOC(double, n), *v = CHECK_ALLOC(double, IN), sigma = 0;
    const int updates[] = {1, 1, 0};
    for (int k = 0; k < 3; k++) {
        assert_int_equal(
            specnorm_forward_cuda(dwsn, dv, du, dsigma, dw, OUT, IN, updates[k], stream), 0);
        sigma = specnorm_forward_ref(wsn, v, ud, wd, OUT, IN, updates[k]);
        assert_int_equal(compare_dev("specnorm sigma", dsigma, &sigma, 1, ATOL, RTOL), 0);
        ASSERT_CLOSE("specnorm w_sn", dwsn, wsn, n);
        ASSERT_CLOSE("specnorm v", dv, v, IN);
        ASSERT_CLOSE("specnorm u", du, ud, OUT);
    }
    assert_int_equal(specnorm_backward_cuda(dd, dg, dwsn, du, dv, dsigma, OUT, IN, stream), 0);
    specnorm_backward_ref(d0d, gd, wsn, ud, v, sigma, OUT, IN);
    ASSERT_CLOSE("specnorm backward", dd, d0d, n);
    float *bufs[] = {dw, du, dg, dd, dwsn, dv, dsigma};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        dev_free(bufs[i]);
    free(w), free(u), free(g), free(d0), free(wd), free(ud), free(gd), free(d0d), free(wsn),
        free(v);
}

static void test_specnorm(void **state) {
    (void)state;
    specnorm_case(3, 5);
    specnorm_case(4, 32);     // attention f, g: C/8 x C at C = 32
    specnorm_case(16, 9);     // D's first conv, 1 -> 16, 3x3
    specnorm_case(32, 256);   // D, 16 -> 32, 4x4
    specnorm_case(64, 1152);  // G, 128 -> 64, 3x3
    specnorm_case(2048, 128); // G's linear, z 128 -> 4x4x128
    specnorm_case(1, 2048);   // D's linear, 4x4x128 -> 1
}

// softmax of each row of s (rows, N) into p, in double.
static void softmax_ref(double *p, const double *s, int rows, int N) {
    for (int r = 0; r < rows; r++) {
        const double *x = s + (long)r * N;
        double *y = p + (long)r * N, mx = x[0], sum = 0;
        for (int i = 1; i < N; i++)
            mx = x[i] > mx ? x[i] : mx;
        for (int i = 0; i < N; i++)
            sum += y[i] = exp(x[i] - mx);
        for (int i = 0; i < N; i++)
            y[i] /= sum;
    }
}

static void softmax_case(int rows, int N, double scale) {
    long n = (long)rows * N;
    double *sd, *gd, *d0d;
    float *s = fill(&sd, n, -scale, scale), *g = fill(&gd, n, -1, 1), *d0 = fill(&d0d, n, -1, 1);
    float *ds = dev_copy(s, n), *dg = dev_copy(g, n), *dd = dev_copy(d0, n), *dp = dev_copy(s, n);
    double *p = CHECK_ALLOC(double, n);
    softmax_ref(p, sd, rows, N);
    assert_int_equal(attention_softmax_forward_cuda(dp, ds, rows, N, stream), 0);
    ASSERT_CLOSE("softmax forward", dp, p, n);
    // dscores += p (g - <p, g>) per row.
    assert_int_equal(attention_softmax_backward_cuda(dd, dg, dp, rows, N, stream), 0);
    for (int r = 0; r < rows; r++) {
        const double *pr = p + (long)r * N, *gr = gd + (long)r * N;
        double pg = 0;
        for (int i = 0; i < N; i++)
            pg += pr[i] * gr[i];
        for (int i = 0; i < N; i++)
            d0d[(long)r * N + i] += pr[i] * (gr[i] - pg);
    }
    ASSERT_CLOSE("softmax backward", dd, d0d, n);
    assert_int_equal(attention_softmax_forward_cuda(ds, ds, rows, N, stream), 0);
    ASSERT_CLOSE("softmax in place", ds, p, n);
    dev_free(ds), dev_free(dg), dev_free(dd), dev_free(dp);
    free(s), free(g), free(d0), free(sd), free(gd), free(d0d), free(p);
}

static void test_attention_softmax(void **state) {
    (void)state;
    softmax_case(3, 5, 4);
    softmax_case(1, 33, 4);
    softmax_case(4 * 256, 256, 8); // 4 items of the 16x16 attention: rows = B*N
    softmax_case(64, 1024, 8);     // a 32x32 attention's rows
    softmax_case(16, 256, 80);     // scores far beyond expf's range unless the max is subtracted
}

// Row-major C (M, N) = alpha op(A) op(B) + beta C in double; beta 0 never reads C (BLAS's rule).
static void gemm_ref(int ta, int tb, int M, int N, int K, double alpha, const double *A, int lda,
                     const double *B, int ldb, double beta, double *C, int ldc) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double sum = 0;
            for (int k = 0; k < K; k++)
                sum += (ta ? A[(long)k * lda + i] : A[(long)i * lda + k]) *
                       (tb ? B[(long)j * ldb + k] : B[(long)k * ldb + j]);
            double *c = &C[(long)i * ldc + j];
            *c = alpha * sum + (beta == 0 ? 0.0 : beta * *c);
        }
}

// pad widens every row stride beyond the matrix, so lda, ldb, ldc are honoured, not assumed.
static void gemm_case(int M, int N, int K, int pad) {
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            int lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
            long na = (long)(ta ? K : M) * lda, nb = (long)(tb ? N : K) * ldb, nc = (long)M * ldc;
            double *ad, *bd, *cd;
            float *a = fill(&ad, na, -1, 1), *b = fill(&bd, nb, -1, 1), *c = fill(&cd, nc, -1, 1);
            float *da = dev_copy(a, na), *db = dev_copy(b, nb), *dc = dev_copy(c, nc);
            assert_int_equal(
                gemm_cuda(ta, tb, M, N, K, 0.5f, da, lda, db, ldb, 1.5f, dc, ldc, stream), 0);
            gemm_ref(ta, tb, M, N, K, 0.5, ad, lda, bd, ldb, 1.5, cd, ldc);
            char what[64];
            snprintf(what, sizeof what, "gemm ta=%d tb=%d %dx%dx%d", ta, tb, M, N, K);
            ASSERT_PROD_CLOSE(what, dc, cd, nc, K);
            dev_free(da), dev_free(db), dev_free(dc);
            free(a), free(b), free(c), free(ad), free(bd), free(cd);
        }
}

static void test_gemm(void **state) {
    (void)state;
    gemm_case(3, 5, 7, 2);
    gemm_case(64, 2048, 128, 0); // G's linear at batch 64
    gemm_case(256, 256, 16, 0);  // attention scores: N x N over C/2
}

// One strided-batched layout: each operand's leading dimension and item stride (floats).
typedef struct {
    int lda, ldb, ldc;
    long sa, sb, sc;
} BatchLayout;

// Floats spanned by batch items of a row-major (rows, cols) matrix with leading dimension ld and
// item stride st: the last item's last element, plus one.
static long batch_extent(int rows, int cols, int ld, long st, int batch) {
    return (batch - 1) * st + (long)(rows - 1) * ld + cols;
}

// gemm_strided_batched_cuda against gemm_ref item by item, at alpha 0.5 and the given beta. The
// buffers hold random values between and around the items (which must come back untouched); with
// beta 0 every element of C's items starts as NaN, so a product that reads C fails.
static void gemm_batched_case(int ta, int tb, int M, int N, int K, int batch, BatchLayout l,
                              float beta) {
    int arows = ta ? K : M, acols = ta ? M : K, brows = tb ? N : K, bcols = tb ? K : N;
    long na = batch_extent(arows, acols, l.lda, l.sa, batch);
    long nb = batch_extent(brows, bcols, l.ldb, l.sb, batch);
    long nc = batch_extent(M, N, l.ldc, l.sc, batch);
    double *ad, *bd, *cd;
    float *a = fill(&ad, na, -1, 1), *b = fill(&bd, nb, -1, 1), *c = fill(&cd, nc, -1, 1);
    for (int i = 0; beta == 0 && i < batch; i++)
        for (int r = 0; r < M; r++)
            for (int k = 0; k < N; k++)
                c[i * l.sc + (long)r * l.ldc + k] = cd[i * l.sc + (long)r * l.ldc + k] = NAN;
    float *da = dev_copy(a, na), *db = dev_copy(b, nb), *dc = dev_copy(c, nc);
    assert_int_equal(gemm_strided_batched_cuda(ta, tb, M, N, K, 0.5f, da, l.lda, l.sa, db, l.ldb,
                                               l.sb, beta, dc, l.ldc, l.sc, batch, stream),
                     0);
    for (int i = 0; i < batch; i++)
        gemm_ref(ta, tb, M, N, K, 0.5, ad + i * l.sa, l.lda, bd + i * l.sb, l.ldb, beta,
                 cd + i * l.sc, l.ldc);
    char what[96];
    snprintf(what, sizeof what, "gemm batched ta=%d tb=%d %dx%dx%d x%d beta=%g", ta, tb, M, N, K,
             batch, beta);
    ASSERT_PROD_CLOSE(what, dc, cd, nc, K);
    dev_free(da), dev_free(db), dev_free(dc);
    free(a), free(b), free(c), free(ad), free(bd), free(cd);
}

// Items apart (with a gap of 3 floats after each, and rows padded by pad), every transpose,
// beta 0 and 1; then with A or B shared by every item (stride 0).
static void gemm_batched_apart(int M, int N, int K, int batch, int pad) {
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++)
            for (int beta = 0; beta < 2; beta++) {
                BatchLayout l = {(ta ? M : K) + pad, (tb ? K : N) + pad, N + pad, 0, 0, 0};
                l.sa = (long)(ta ? K : M) * l.lda + 3;
                l.sb = (long)(tb ? N : K) * l.ldb + 3;
                l.sc = (long)M * l.ldc + 3;
                gemm_batched_case(ta, tb, M, N, K, batch, l, (float)beta);
                long sa = l.sa;
                l.sa = 0;
                gemm_batched_case(ta, tb, M, N, K, batch, l, (float)beta);
                l.sa = sa, l.sb = 0;
                gemm_batched_case(ta, tb, M, N, K, batch, l, (float)beta);
            }
}

static void test_gemm_strided_batched(void **state) {
    (void)state;
    gemm_batched_apart(3, 5, 7, 4, 2);
    gemm_batched_apart(1, 1, 1, 1, 0);
    // The attention block's uses at fmnist32's 16x16 (C 32, N 256), 6 items. Projections: a
    // weight (stride 0) times each item's x (C, N).
    int B = 6, C = 32, N = 256, BN = B * N;
    gemm_batched_case(0, 0, C / 8, N, C, B, (BatchLayout){C, N, N, 0, (long)C * N, C / 8 * N}, 0);
    // dattn_b = dO_b^T h_b with dO wide (C/2, B N): item b is columns [b N, (b+1) N).
    gemm_batched_case(1, 0, N, N, C / 2, B,
                      (BatchLayout){BN, N, N, N, (long)C / 2 * N, (long)N * N}, 0);
    // dh_b = dO_b attn_b written into the wide dh, and dx_b += Wf^T df_b (beta 1, df wide).
    gemm_batched_case(0, 0, C / 2, N, N, B, (BatchLayout){BN, N, BN, N, (long)N * N, N}, 0);
    gemm_batched_case(1, 0, C, N, C / 8, B, (BatchLayout){C, BN, N, 0, N, (long)C * N}, 1);
    // Sizes and a shared output are refused before anything is queued; empty products queue
    // nothing.
    float *x = dev_copy(NULL, 0);
    assert_int_equal(
        gemm_strided_batched_cuda(0, 0, 2, 2, 2, 1, x, 2, 0, x, 2, 0, 0, x, 2, 0, 2, stream),
        KERNELS_EINVAL);
    assert_int_equal(
        gemm_strided_batched_cuda(0, 0, 2, 2, 2, 1, x, 2, -4, x, 2, 0, 0, x, 2, 4, 2, stream),
        KERNELS_EINVAL);
    assert_int_equal(
        gemm_strided_batched_cuda(0, 0, 2, 2, 2, 1, x, 2, 0, x, 2, 0, 0, x, 2, 4, -1, stream),
        KERNELS_EINVAL);
    assert_int_equal(
        gemm_strided_batched_cuda(0, 0, 2, 2, 2, 1, x, 2, 0, x, 2, 0, 0, x, 2, 4, 0, stream), 0);
    dev_free(x);
}

static void linear_case(int B, int IN, int OUT, int bias, int skip_dinp) {
    long ni = (long)B * IN, nw = (long)OUT * IN, no = (long)B * OUT;
    double *xd, *wd, *bd, *gd, *dxd, *dwd, *dbd;
    float *x = fill(&xd, ni, -1, 1), *w = fill(&wd, nw, -1, 1), *b = fill(&bd, OUT, -1, 1);
    float *g = fill(&gd, no, -1, 1), *dx0 = fill(&dxd, ni, -1, 1), *dw0 = fill(&dwd, nw, -1, 1);
    float *db0 = fill(&dbd, OUT, -1, 1);
    float *dx = dev_copy(x, ni), *dw = dev_copy(w, nw), *db = dev_copy(b, OUT),
          *dg = dev_copy(g, no);
    float *ddx = dev_copy(dx0, ni), *ddw = dev_copy(dw0, nw), *ddb = dev_copy(db0, OUT);
    float *dout = dev_copy(g, no);
    double *out = CHECK_ALLOC(double, no);
    assert_int_equal(linear_forward_cuda(dout, dx, dw, bias ? db : NULL, B, IN, OUT, stream), 0);
    linear_forward_ref(out, xd, wd, bias ? bd : NULL, B, IN, OUT);
    ASSERT_PROD_CLOSE("linear forward", dout, out, no, IN);
    assert_int_equal(linear_backward_cuda(skip_dinp ? NULL : ddx, ddw, bias ? ddb : NULL, dg, dx,
                                          dw, B, IN, OUT, stream),
                     0);
    linear_backward_ref(skip_dinp ? NULL : dxd, dwd, bias ? dbd : NULL, gd, xd, wd, B, IN, OUT);
    ASSERT_PROD_CLOSE("linear dinp", ddx, dxd, ni, OUT); // untouched when skipped
    ASSERT_PROD_CLOSE("linear dw", ddw, dwd, nw, B);
    ASSERT_PROD_CLOSE("linear dbias", ddb, dbd, OUT, B);
    float *bufs[] = {dx, dw, db, dg, ddx, ddw, ddb, dout};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        dev_free(bufs[i]);
    free(x), free(w), free(b), free(g), free(dx0), free(dw0), free(db0), free(out);
    free(xd), free(wd), free(bd), free(gd), free(dxd), free(dwd), free(dbd);
}

static void test_linear(void **state) {
    (void)state;
    linear_case(3, 5, 7, 1, 0);
    linear_case(3, 5, 7, 0, 1);
    linear_case(64, 128, 2048, 1, 1); // G's linear (z has no gradient)
    linear_case(64, 2048, 1, 1, 0);   // D's linear
}

// One convolution forward (with and without bias) and backward (every gradient, then dinp
// skipped as for a first layer), against the double reference.
static void conv_case(int B, int C, int H, int W, int OC, int K, int S, int P) {
    int OH = (H + 2 * P - K) / S + 1, OW = (W + 2 * P - K) / S + 1;
    long ni = (long)B * C * H * W, nw = (long)OC * C * K * K, no = (long)B * OC * OH * OW;
    double *xd, *wd, *bd, *gd, *dxd, *dwd, *dbd;
    float *x = fill(&xd, ni, -1, 1), *w = fill(&wd, nw, -1, 1), *b = fill(&bd, OC, -1, 1);
    float *g = fill(&gd, no, -1, 1), *dx0 = fill(&dxd, ni, -1, 1), *dw0 = fill(&dwd, nw, -1, 1);
    float *db0 = fill(&dbd, OC, -1, 1);
    float *dx = dev_copy(x, ni), *dw = dev_copy(w, nw), *db = dev_copy(b, OC),
          *dg = dev_copy(g, no);
    float *ddx = dev_copy(dx0, ni), *ddw = dev_copy(dw0, nw), *ddb = dev_copy(db0, OC);
    float *dout = dev_copy(g, no);
    double *out = CHECK_ALLOC(double, no);
    long k_fwd = (long)C * K * K, k_data = (long)OC * K * K, k_w = (long)B * OH * OW;
    char what[96];
    snprintf(what, sizeof what, "conv %dx%dx%dx%d -> %d k%d s%d p%d", B, C, H, W, OC, K, S, P);

    for (int bias = 0; bias < 2; bias++) {
        assert_int_equal(
            conv2d_forward_cuda(dout, dx, dw, bias ? db : NULL, B, C, H, W, OC, K, S, P, stream),
            0);
        conv2d_forward_ref(out, xd, wd, bias ? bd : NULL, B, C, H, W, OC, K, S, P);
        ASSERT_PROD_CLOSE(what, dout, out, no, k_fwd);
    }
    assert_int_equal(
        conv2d_backward_cuda(ddx, ddw, ddb, dg, dx, dw, B, C, H, W, OC, K, S, P, stream), 0);
    conv2d_backward_ref(dxd, dwd, dbd, gd, xd, wd, B, C, H, W, OC, K, S, P);
    ASSERT_PROD_CLOSE("conv dinp", ddx, dxd, ni, k_data);
    ASSERT_PROD_CLOSE("conv dw", ddw, dwd, nw, k_w);
    ASSERT_PROD_CLOSE("conv dbias", ddb, dbd, OC, k_w);
    // Again without dinp and dbias: dw accumulates a second time, the others stay.
    assert_int_equal(
        conv2d_backward_cuda(NULL, ddw, NULL, dg, dx, dw, B, C, H, W, OC, K, S, P, stream), 0);
    conv2d_backward_ref(NULL, dwd, NULL, gd, xd, wd, B, C, H, W, OC, K, S, P);
    ASSERT_PROD_CLOSE("conv dw x2", ddw, dwd, nw, 2 * k_w);
    ASSERT_PROD_CLOSE("conv dinp kept", ddx, dxd, ni, k_data);
    ASSERT_PROD_CLOSE("conv dbias kept", ddb, dbd, OC, k_w);

    float *bufs[] = {dx, dw, db, dg, ddx, ddw, ddb, dout};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        dev_free(bufs[i]);
    free(x), free(w), free(b), free(g), free(dx0), free(dw0), free(db0), free(out);
    free(xd), free(wd), free(bd), free(gd), free(dxd), free(dwd), free(dbd);
}

static void test_conv_tiny(void **state) {
    (void)state;
    conv_case(2, 3, 7, 6, 4, 3, 1, 1);
    conv_case(2, 2, 6, 7, 3, 4, 2, 1); // 4x4 stride 2 with an odd width the stride skips
    conv_case(2, 8, 5, 5, 4, 1, 1, 0); // 1x1
    conv_case(1, 1, 4, 4, 1, 3, 1, 0); // no padding, one channel
}

// The fmnist32 layers at batch 64 (DESIGN.md, Models).
static void test_conv_fmnist32(void **state) {
    (void)state;
    conv_case(64, 128, 8, 8, 64, 3, 1, 1);  // G 8x8
    conv_case(64, 64, 16, 16, 32, 3, 1, 1); // G 16x16
    conv_case(64, 32, 32, 32, 16, 3, 1, 1); // G 32x32
    conv_case(64, 16, 32, 32, 1, 3, 1, 1);  // G to the image
    conv_case(64, 1, 32, 32, 16, 3, 1, 1);  // D from the image
    conv_case(64, 16, 32, 32, 32, 4, 2, 1); // D 32 -> 16
    conv_case(64, 32, 16, 16, 64, 4, 2, 1); // D 16 -> 8
    conv_case(64, 64, 8, 8, 128, 4, 2, 1);  // D 8 -> 4
    conv_case(64, 32, 16, 16, 4, 1, 1, 0);  // attention f, g projections
}

// With TF32 on, the products stay within TF32's tolerance; the switch then goes back off.
static void test_tf32(void **state) {
    (void)state;
    cuda_tf32_set(1);
    assert_int_equal(cuda_tf32_get(), 1);
    gemm_case(64, 2048, 128, 0);
    conv_case(64, 128, 8, 8, 64, 3, 1, 1);
    conv_case(64, 16, 32, 32, 32, 4, 2, 1);
    cuda_tf32_set(0);
    assert_int_equal(cuda_tf32_get(), 0);
}

// --- BF16 convolutions ---------------------------------------------------------------------------

// Downloads dev (n) and compares it with base + bf16(term) (base may be NULL: 0): cuDNN's BF16
// result is its FP32 sum rounded to bf16, so it may sit one bf16 step (at most 2^-7 relative)
// from the reference's rounding when the two sums fall on either side of a rounding boundary,
// plus the FP32 tolerance of a k-term sum. Returns the elements out of tolerance.
static int compare_bf16(const char *what, const float *dev, const double *base,
                        const double *term, long n, long k) {
    float *got = CHECK_ALLOC(float, n);
    dev_read(got, dev, n);
    long bad = 0;
    double atol = PROD_ATOL * sqrt((double)k);
    for (long i = 0; i < n; i++) {
        double want = (base ? base[i] : 0) + check_bf16_round(term[i]);
        double tol = atol + ldexp(fabs(term[i]), -7) + 1e-6 * fabs(want);
        if (!(fabs(got[i] - want) <= tol) && bad++ < CHECK_WORST)
            printf("#   %s [%ld] got %.9g want %.9g (tolerance %.3g)\n", what, i, got[i], want,
                   tol);
    }
    if (bad)
        printf("# %s: %ld of %ld outside the BF16 tolerance\n", what, bad, n);
    free(got);
    return bad > 1000000 ? 1000000 : (int)bad;
}

// base (n) += bf16(term): what one more accumulation of a BF16 gradient adds.
static void add_bf16(double *base, const double *term, long n) {
    for (long i = 0; i < n; i++)
        base[i] += check_bf16_round(term[i]);
}

// One convolution with cuda_bf16_set(1): each pass against the double reference on the inputs it
// reads rounded to bf16, its result rounded to bf16 (compare_bf16), the bias and its gradient in
// FP32; the gradients are added into random buffers. The forward must also differ from the FP32
// reference by more than FP32's tolerance somewhere (the mode really rounds).
static void conv_bf16_case(int B, int C, int H, int W, int OC, int K, int S, int P) {
    int OH = (H + 2 * P - K) / S + 1, OW = (W + 2 * P - K) / S + 1;
    long ni = (long)B * C * H * W, nw = (long)OC * C * K * K, no = (long)B * OC * OH * OW;
    double *xd, *wd, *bd, *gd, *dxd, *dwd, *dbd;
    float *x = fill(&xd, ni, -1, 1), *w = fill(&wd, nw, -1, 1), *b = fill(&bd, OC, -1, 1);
    float *g = fill(&gd, no, -1, 1), *dx0 = fill(&dxd, ni, -1, 1), *dw0 = fill(&dwd, nw, -1, 1);
    float *db0 = fill(&dbd, OC, -1, 1);
    double *xr = check_bf16_copy(xd, ni), *wr = check_bf16_copy(wd, nw);
    double *gr = check_bf16_copy(gd, no);
    float *dx = dev_copy(x, ni), *dw = dev_copy(w, nw), *db = dev_copy(b, OC);
    float *dg = dev_copy(g, no), *ddx = dev_copy(dx0, ni), *ddw = dev_copy(dw0, nw);
    float *ddb = dev_copy(db0, OC), *dout = dev_copy(g, no);
    double *term = CHECK_ALLOC(double, no > ni ? (no > nw ? no : nw) : (ni > nw ? ni : nw));
    double *fp32 = CHECK_ALLOC(double, no);
    long k_fwd = (long)C * K * K, k_data = (long)OC * K * K, k_w = (long)B * OH * OW;
    char what[96];
    snprintf(what, sizeof what, "bf16 conv %dx%dx%dx%d -> %d k%d s%d p%d", B, C, H, W, OC, K, S, P);

    cuda_bf16_set(1);
    assert_int_equal(cuda_bf16_get(), 1);
    assert_int_equal(conv2d_forward_cuda(dout, dx, dw, db, B, C, H, W, OC, K, S, P, stream), 0);
    conv2d_forward_ref(term, xr, wr, NULL, B, C, H, W, OC, K, S, P);
    // the bias goes on in FP32 after the rounding: the reference is bias + bf16(sum)
    {
        float *got = CHECK_ALLOC(float, no);
        double *base = CHECK_ALLOC(double, no);
        dev_read(got, dout, no);
        for (long i = 0; i < no; i++)
            base[i] = bd[(i / ((long)OH * OW)) % OC];
        float *dgot = dev_copy(got, no);
        assert_int_equal(compare_bf16(what, dgot, base, term, no, k_fwd), 0);
        dev_free(dgot);
        conv2d_forward_ref(fp32, xd, wd, bd, B, C, H, W, OC, K, S, P);
        assert_true(check_compare_f("(expected to differ) bf16 against fp32", got, fp32, no,
                                    prod_atol(k_fwd), PROD_RTOL) > 0);
        free(got), free(base);
    }
    assert_int_equal(
        conv2d_backward_cuda(ddx, ddw, ddb, dg, dx, dw, B, C, H, W, OC, K, S, P, stream), 0);
    memset(term, 0, sizeof(double) * ni);
    conv2d_backward_ref(term, NULL, NULL, gr, xd, wr, B, C, H, W, OC, K, S, P);
    assert_int_equal(compare_bf16("bf16 conv dinp", ddx, dxd, term, ni, k_data), 0);
    // the data gradient alone (D's weight gradients not wanted): added once more
    add_bf16(dxd, term, ni);
    assert_int_equal(
        conv2d_backward_cuda(ddx, NULL, NULL, dg, dx, dw, B, C, H, W, OC, K, S, P, stream), 0);
    assert_int_equal(compare_bf16("bf16 conv dinp alone", ddx, dxd, term, ni, k_data), 0);
    memset(term, 0, sizeof(double) * nw);
    conv2d_backward_ref(NULL, term, NULL, gr, xr, wd, B, C, H, W, OC, K, S, P);
    assert_int_equal(compare_bf16("bf16 conv dw", ddw, dwd, term, nw, k_w), 0);
    // the weight gradient alone (a first layer): added once more
    add_bf16(dwd, term, nw);
    assert_int_equal(
        conv2d_backward_cuda(NULL, ddw, NULL, dg, dx, dw, B, C, H, W, OC, K, S, P, stream), 0);
    assert_int_equal(compare_bf16("bf16 conv dw alone", ddw, dwd, term, nw, k_w), 0);
    conv2d_backward_ref(NULL, NULL, dbd, gd, xd, wd, B, C, H, W, OC, K, S, P);
    ASSERT_PROD_CLOSE("bf16 conv dbias (FP32)", ddb, dbd, OC, k_w);
    cuda_bf16_set(0);
    assert_int_equal(cuda_bf16_get(), 0);

    float *bufs[] = {dx, dw, db, dg, ddx, ddw, ddb, dout};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        dev_free(bufs[i]);
    free(x), free(w), free(b), free(g), free(dx0), free(dw0), free(db0), free(term), free(fp32);
    free(xd), free(wd), free(bd), free(gd), free(dxd), free(dwd), free(dbd), free(xr), free(wr);
    free(gr);
}

// The fmnist32 layers with BF16 convolutions, at batch 8 (cuemu's reference loops are slow), and
// odd shapes; then FP32 again: the mode is part of the cache key, so the FP32 entries of these
// shapes come back (conv_case checks them at FP32's tolerance).
// A failed check leaves the test early: the mode goes back to FP32 for the tests after it.
static int bf16_off(void **state) {
    (void)state;
    cuda_bf16_set(0);
    return 0;
}

static void test_conv_bf16(void **state) {
    (void)state;
    conv_bf16_case(2, 3, 7, 6, 4, 3, 1, 1);
    conv_bf16_case(2, 2, 6, 7, 3, 4, 2, 1);
    conv_bf16_case(8, 128, 8, 8, 64, 3, 1, 1);
    conv_bf16_case(8, 32, 32, 32, 16, 3, 1, 1);
    conv_bf16_case(8, 16, 32, 32, 1, 3, 1, 1);
    conv_bf16_case(8, 1, 32, 32, 16, 3, 1, 1);
    conv_bf16_case(8, 32, 16, 16, 64, 4, 2, 1);
    conv_case(8, 128, 8, 8, 64, 3, 1, 1);
    conv_case(8, 32, 16, 16, 64, 4, 2, 1);
}

// --- the training techniques' ops (dropout, WGAN-GP's blend, the regularizers) ------------------

// out = ref > 0 ? x : alpha x, ref with exact zeros (which take the slope alpha, as x = 0 does in
// leaky_relu_forward).
static void pattern_case(long n) {
    double *xd, *rd;
    float *x = fill(&xd, n, -2, 2), *r = fill(&rd, n, -2, 2);
    for (long i = 0; i < n; i += 5)
        r[i] = 0.0f, rd[i] = 0.0;
    float *dx = dev_copy(x, n), *dr = dev_copy(r, n), *dout = dev_nan(sizeof(float) * n);
    double *want = CHECK_ALLOC(double, n);
    assert_int_equal(leaky_relu_pattern_forward_cuda(dout, dx, dr, 0.2f, n, stream), 0);
    for (long i = 0; i < n; i++)
        want[i] = rd[i] > 0 ? xd[i] : (double)0.2f * xd[i];
    ASSERT_CLOSE("leaky_relu_pattern forward", dout, want, n);
    dev_free(dx), dev_free(dr), dev_free(dout);
    free(x), free(r), free(xd), free(rd), free(want);
}

static void test_leaky_relu_pattern(void **state) {
    (void)state;
    pattern_case(1);
    pattern_case(SMALL);
    pattern_case(64L * 64 * 8 * 8); // D's features at 8x8
}

// Two dropout forwards from one seed on each side (the second in place on the device), then the
// backward. Each mask and output must be dropout_forward's bit for bit, each call must advance the
// host seed as the CPU's does, and the two calls' masks must differ.
static void dropout_case(long n, float p) {
    double *xd, *gd, *d0d;
    float *x = fill(&xd, n, -2, 2), *g = fill(&gd, n, -1, 1), *d0 = fill(&d0d, n, -1, 1);
    float *out = CHECK_ALLOC(float, n), *mask = CHECK_ALLOC(float, n);
    float *got = CHECK_ALLOC(float, n), *first = CHECK_ALLOC(float, n);
    float *dx = dev_copy(x, n), *dy = dev_copy(x, n), *dg = dev_copy(g, n), *dd = dev_copy(d0, n);
    float *dout = dev_nan(sizeof(float) * n), *dmask = dev_nan(sizeof(float) * n);
    uint64_t seed0 = 0x243f6a8885a308d3ull, seed_cpu = seed0, seed_gpu = seed0;
    char what[64];
    for (int call = 0; call < 2; call++) {
        dropout_forward(out, mask, x, p, &seed_cpu, n);
        float *dst = call ? dy : dout; // the second call writes over its input
        assert_int_equal(dropout_forward_cuda(dst, dmask, call ? dy : dx, p, &seed_gpu, n, stream),
                         0);
        assert_true(seed_gpu == seed_cpu);
        assert_true(seed_gpu != seed0);
        snprintf(what, sizeof what, "dropout n=%ld p=%g call %d mask", n, p, call);
        dev_read(got, dmask, n);
        assert_int_equal(compare_bits(what, got, mask, n), 0);
        long dropped = 0;
        for (long i = 0; i < n; i++)
            dropped += got[i] == 0.0f;
        assert_true(dropped > 0 && dropped < n);
        if (call)
            assert_true(memcmp(got, first, sizeof(float) * n) != 0);
        memcpy(first, got, sizeof(float) * n);
        snprintf(what, sizeof what, "dropout n=%ld p=%g call %d out", n, p, call);
        dev_read(got, dst, n);
        assert_int_equal(compare_bits(what, got, out, n), 0);
    }
    // dinp += dout * mask, with the second call's mask.
    assert_int_equal(dropout_backward_cuda(dd, dg, dmask, n, stream), 0);
    for (long i = 0; i < n; i++)
        d0d[i] += gd[i] * (double)mask[i];
    ASSERT_CLOSE("dropout backward", dd, d0d, n);
    dev_free(dx), dev_free(dy), dev_free(dg), dev_free(dd), dev_free(dout), dev_free(dmask);
    free(x), free(g), free(d0), free(out), free(mask), free(got), free(first);
    free(xd), free(gd), free(d0d);
}

// p = 0 copies with mask 1 and leaves the seed alone; p = 1 drops everything and advances it.
static void test_dropout_ends(void **state) {
    (void)state;
    const long n = OPS_DROPOUT_CHUNK + 3;
    double *xd;
    float *x = fill(&xd, n, -2, 2), *ones = CHECK_ALLOC(float, n), *zeros = CHECK_ALLOC(float, n);
    float *out = CHECK_ALLOC(float, n), *mask = CHECK_ALLOC(float, n), *got = CHECK_ALLOC(float, n);
    for (long i = 0; i < n; i++)
        ones[i] = 1.0f;
    float *dx = dev_copy(x, n), *dout = dev_nan(sizeof(float) * n);
    float *dmask = dev_nan(sizeof(float) * n);
    uint64_t seed0 = 77, seed_cpu = seed0, seed_gpu = seed0;
    assert_int_equal(dropout_forward_cuda(dout, dmask, dx, 0.0f, &seed_gpu, n, stream), 0);
    assert_true(seed_gpu == seed0);
    dev_read(got, dmask, n);
    assert_int_equal(compare_bits("dropout p=0 mask", got, ones, n), 0);
    dev_read(got, dout, n);
    assert_int_equal(compare_bits("dropout p=0 out", got, x, n), 0);

    dropout_forward(out, mask, x, 1.0f, &seed_cpu, n);
    assert_int_equal(dropout_forward_cuda(dout, dmask, dx, 1.0f, &seed_gpu, n, stream), 0);
    assert_true(seed_gpu == seed_cpu && seed_gpu != seed0);
    dev_read(got, dmask, n);
    assert_int_equal(compare_bits("dropout p=1 mask", got, mask, n), 0);
    assert_int_equal(compare_bits("dropout p=1 mask zero", got, zeros, n), 0);
    // n = 0 with p > 0: nothing to mask, but the seed moves as the CPU's does
    dropout_forward(out, mask, x, 0.5f, &seed_cpu, 0);
    assert_int_equal(dropout_forward_cuda(dout, dmask, dx, 0.5f, &seed_gpu, 0, stream), 0);
    assert_true(seed_gpu == seed_cpu);
    dev_free(dx), dev_free(dout), dev_free(dmask);
    free(x), free(xd), free(ones), free(zeros), free(out), free(mask), free(got);
}

static void test_dropout(void **state) {
    (void)state;
    dropout_case(SMALL, 0.3f);                       // one partial chunk
    dropout_case(2 * OPS_DROPOUT_CHUNK, 0.1f);       // two whole chunks
    dropout_case(3 * OPS_DROPOUT_CHUNK + 517, 0.5f); // four chunks, the last partial
}

// out (B, n) item b = alpha[b] a_b + (1 - alpha[b]) b_b; the first alpha 0 and the last 1.
static void lerp_items_case(int B, long n) {
    long total = (long)B * n;
    double *ad, *bd, *td;
    float *a = fill(&ad, total, -2, 2), *b = fill(&bd, total, -2, 2), *t = fill(&td, B, 0, 1);
    t[0] = 0.0f, td[0] = 0.0;
    if (B > 1)
        t[B - 1] = 1.0f, td[B - 1] = 1.0;
    float *da = dev_copy(a, total), *db = dev_copy(b, total), *dt = dev_copy(t, B);
    float *dout = dev_nan(sizeof(float) * total);
    double *want = CHECK_ALLOC(double, total);
    assert_int_equal(lerp_items_cuda(dout, da, db, dt, B, n, stream), 0);
    for (long k = 0; k < total; k++)
        want[k] = td[k / n] * ad[k] + (1.0 - td[k / n]) * bd[k];
    ASSERT_CLOSE("lerp_items", dout, want, total);
    dev_free(da), dev_free(db), dev_free(dt), dev_free(dout);
    free(a), free(b), free(t), free(ad), free(bd), free(td), free(want);
}

static void test_lerp_items(void **state) {
    (void)state;
    lerp_items_case(1, 1);
    lerp_items_case(5, 203);
    lerp_items_case(64, 32 * 32); // WGAN-GP's interpolates of fmnist32 images at batch 64
}

// The L1 sum in a device double against a double loop, and dinp += scale sign(inp) with exact
// zeros (both signs) in inp, whose sign is 0.
static void l1_case(long n) {
    const float scale = 0.37f;
    double *xd, *d0d;
    float *x = fill(&xd, n, -2, 2), *d0 = fill(&d0d, n, -1, 1);
    for (long i = 0; i < n; i += 7)
        x[i] = (i / 7) % 2 ? -0.0f : 0.0f, xd[i] = 0.0;
    float *dx = dev_copy(x, n), *dd = dev_copy(d0, n);
    double *dsum = dev_nan(sizeof(double)), want = 0;
    assert_int_equal(l1_forward_cuda(dsum, dx, n, stream), 0);
    for (long i = 0; i < n; i++)
        want += fabs(xd[i]);
    double got = dev_read_double(dsum);
    assert_int_equal(check_compare_d("l1 forward", &got, &want, 1, 0, SUM_RTOL), 0);
    assert_int_equal(l1_backward_cuda(dd, dx, scale, n, stream), 0);
    for (long i = 0; i < n; i++)
        d0d[i] += xd[i] > 0 ? (double)scale : xd[i] < 0 ? -(double)scale : 0.0;
    ASSERT_CLOSE("l1 backward", dd, d0d, n);
    dev_free(dx), dev_free(dd);
    CUDA_OK(cudaFree(dsum));
    free(x), free(d0), free(xd), free(d0d);
}

static void test_l1(void **state) {
    (void)state;
    l1_case(1);
    l1_case(SMALL);
    l1_case(64L * 64 * 8 * 8 + 5); // G's 8x8 stage at batch 64, and a tail
    // n = 0 still writes the sum: 0.
    double *dsum = dev_nan(sizeof(double));
    assert_int_equal(l1_forward_cuda(dsum, NULL, 0, stream), 0);
    assert_true(dev_read_double(dsum) == 0.0);
    CUDA_OK(cudaFree(dsum));
}

// Orthogonal regularization from its definition, in double, whatever the shape (so the tall
// case's route through W^T W is checked against W W^T): M = W W^T with a zero diagonal,
// dw (OUT, IN) += 4 beta M W; returns beta sum M^2.
static double ortho_ref(double *dw, const double *w, double beta, int OUT, int IN) {
    long nm = (long)OUT * OUT;
    double *M = CHECK_ALLOC(double, nm), r = 0;
    for (int i = 0; i < OUT; i++)
        for (int j = 0; j < OUT; j++) {
            double s = 0;
            for (int k = 0; i != j && k < IN; k++)
                s += w[(long)i * IN + k] * w[(long)j * IN + k];
            M[(long)i * OUT + j] = s;
            r += s * s;
        }
    for (int i = 0; i < OUT; i++)
        for (int c = 0; c < IN; c++) {
            double s = 0;
            for (int j = 0; j < OUT; j++)
                s += M[(long)i * OUT + j] * w[(long)j * IN + c];
            dw[(long)i * IN + c] += 4 * beta * s;
        }
    free(M);
    return beta * r;
}

// Value and gradient, then the gradient again without the value: dw holds the gradient twice.
// The scratch starts as NaN, so any of it read before it is written shows.
static void ortho_case(int OUT, int IN) {
    const float beta = 0.05f;
    long n = (long)OUT * IN;
    double *wd, *d0d;
    float *w = fill(&wd, n, -1, 1), *d0 = fill(&d0d, n, -1, 1);
    float *dw = dev_copy(w, n), *dd = dev_copy(d0, n);
    float *scratch = dev_nan(sizeof(float) * ortho_scratch_floats_cuda(OUT, IN));
    double *dvalue = dev_nan(sizeof(double));
    double *g = CHECK_ALLOC(double, n);
    double value = ortho_ref(g, wd, beta, OUT, IN); // g: the gradient alone, from zero
    assert_int_equal(ortho_reg_backward_cuda(dd, dvalue, dw, beta, scratch, OUT, IN, stream), 0);
    double got = dev_read_double(dvalue);
    char what[64];
    snprintf(what, sizeof what, "ortho %dx%d value", OUT, IN);
    assert_int_equal(
        check_compare_d(what, &got, &value, 1, 0, cuda_tf32_get() ? TF32_RTOL : ORTHO_RTOL), 0);
    // Each element: a Gram matrix over IN terms, then a product over OUT (wide) or IN (tall).
    long k = IN + (OUT <= IN ? OUT : IN);
    for (long i = 0; i < n; i++)
        d0d[i] += g[i];
    snprintf(what, sizeof what, "ortho %dx%d dw", OUT, IN);
    ASSERT_PROD_CLOSE(what, dd, d0d, n, k);
    assert_int_equal(ortho_reg_backward_cuda(dd, NULL, dw, beta, scratch, OUT, IN, stream), 0);
    for (long i = 0; i < n; i++)
        d0d[i] += g[i];
    snprintf(what, sizeof what, "ortho %dx%d dw x2", OUT, IN);
    ASSERT_PROD_CLOSE(what, dd, d0d, n, 2 * k);
    dev_free(dw), dev_free(dd), dev_free(scratch);
    CUDA_OK(cudaFree(dvalue));
    free(w), free(d0), free(wd), free(d0d), free(g);
}

static void test_ortho_reg(void **state) {
    (void)state;
    ortho_case(24, 40); // wide: through W W^T
    ortho_case(96, 16); // tall: through W^T W and the rows' |w_k|^4
    ortho_case(1, 7);   // one row: nothing off the diagonal, the value 0
    ortho_case(16, 16); // square: the wide route
}

// grad_penalty_fd_prepare_cuda against grad_penalty_fd_prepare on B images of n elements. Image 0
// has a gradient of norm about 0.4 (WGAN-GP's coefficient changes sign below 1), image 2 one of
// exactly 0: no direction, so its x2 items are x bit for bit and its dout2 entries 0.
static void grad_penalty_case(int r1, int B, long n) {
    const float weight = 10.0f, fd_step = 0.1f;
    long nx = (long)B * n;
    double *gd, *xd;
    float *g = fill(&gd, nx, -1, 1), *x = fill(&xd, nx, -1, 1);
    for (long i = 0; i < n; i++)
        g[i] *= 0.05f, g[2 * n + i] = 0.0f;
    float *x2 = CHECK_ALLOC(float, 2 * nx), *dout2 = CHECK_ALLOC(float, 2 * B);
    double value = grad_penalty_fd_prepare(x2, dout2, g, x, r1, weight, fd_step, B, n);
    double *x2d = check_to_double(x2, 2 * nx), *dout2d = check_to_double(dout2, 2 * B);
    float *dg = dev_copy(g, nx), *dx = dev_copy(x, nx);
    float *dx2 = dev_nan(sizeof(float) * 2 * nx), *ddout2 = dev_nan(sizeof(float) * 2 * B);
    double *dvalue = dev_nan(sizeof(double)), *dterms = dev_nan(sizeof(double) * B);
    assert_int_equal(grad_penalty_fd_prepare_cuda(dx2, ddout2, dvalue, dterms, dg, dx, r1, weight,
                                                  fd_step, B, n, stream),
                     0);
    char what[64];
    snprintf(what, sizeof what, "grad penalty r1=%d B=%d x2", r1, B);
    ASSERT_CLOSE(what, dx2, x2d, 2 * nx);
    snprintf(what, sizeof what, "grad penalty r1=%d B=%d dout2", r1, B);
    ASSERT_CLOSE(what, ddout2, dout2d, 2 * B);
    double got = dev_read_double(dvalue);
    snprintf(what, sizeof what, "grad penalty r1=%d B=%d value", r1, B);
    assert_int_equal(check_compare_d(what, &got, &value, 1, 0, SUM_RTOL), 0);
    // The zero image: x2 = x in both items, dout2 0 (the CPU agrees: checked above).
    float *got2 = CHECK_ALLOC(float, 2 * nx), *gotd = CHECK_ALLOC(float, 2 * B);
    dev_read(got2, dx2, 2 * nx);
    dev_read(gotd, ddout2, 2 * B);
    assert_int_equal(compare_bits("grad penalty zero image x2+", got2 + 2 * n, x + 2 * n, n), 0);
    assert_int_equal(compare_bits("grad penalty zero image x2-", got2 + (B + 2) * n, x + 2 * n, n),
                     0);
    assert_true(gotd[2] == 0.0f && gotd[B + 2] == 0.0f);
    dev_free(dg), dev_free(dx), dev_free(dx2), dev_free(ddout2);
    CUDA_OK(cudaFree(dvalue));
    CUDA_OK(cudaFree(dterms));
    free(g), free(x), free(gd), free(xd), free(x2), free(dout2), free(x2d), free(dout2d);
    free(got2), free(gotd);
}

static void test_grad_penalty_fd_prepare(void **state) {
    (void)state;
    for (int r1 = 0; r1 < 2; r1++) {
        grad_penalty_case(r1, 4, 203);
        grad_penalty_case(r1, 8, 32 * 32); // fmnist32 images
    }
}

// l1_value_cuda and float_sum_cuda: one thread each, so exactly the expression of their contract
// evaluated here in C. The values are picked so float rounding matters (1e8 + 0.3 is not a
// float, and the order of float_sum's additions changes its result).
static void test_scalar_combiners(void **state) {
    (void)state;
    const double vals[] = {123.456789, 98765.4321, 1e8 + 0.3, -1e8, 2.5e-3, 1.0 / 3};
    const long counts[] = {1001, 64, 2048, 7, 3, 262144};
    const int k = sizeof vals / sizeof vals[0];
    const float lambda = 0.01f;
    double *dvals = dev_nan(sizeof vals);
    CUDA_OK(cudaMemcpy(dvals, vals, sizeof vals, cudaMemcpyHostToDevice));
    float *dout = dev_nan(sizeof(float)), got;
    for (int m = 0; m <= k; m++) {
        double v = 0.0;
        float s = 0.0f;
        for (int i = 0; i < m; i++) {
            v += lambda * vals[i] / (double)counts[i];
            s += (float)vals[i];
        }
        assert_int_equal(l1_value_cuda(dout, dvals, counts, m, lambda, stream), 0);
        dev_read(&got, dout, 1);
        float want = (float)v;
        assert_int_equal(compare_bits("l1_value", &got, &want, 1), 0);
        assert_int_equal(float_sum_cuda(dout, dvals, m, stream), 0);
        dev_read(&got, dout, 1);
        assert_int_equal(compare_bits("float_sum", &got, &s, 1), 0);
    }
    long many[17] = {0};
    assert_int_equal(l1_value_cuda(dout, dvals, many, 17, lambda, stream), KERNELS_EINVAL);
    assert_int_equal(l1_value_cuda(dout, dvals, many, -1, lambda, stream), KERNELS_EINVAL);
    assert_int_equal(float_sum_cuda(dout, dvals, -1, stream), KERNELS_EINVAL);
    CUDA_OK(cudaStreamSynchronize(stream));
    CUDA_OK(cudaFree(dvals));
    CUDA_OK(cudaFree(dout));
}

// The tune steps' small ops (model_cuda.cu): the finetune anchor grads += lambda (params - theta0),
// an in-place scale, and distill's squared-difference term (its sum in double, SUM_RTOL; its
// gradient scale (a - b), written or added), against double loops; n spans several blocks' worth
// and one element.
static void tune_ops_case(long n) {
    double *gd, *pd, *td, *ad, *bd;
    float *g = fill(&gd, n, -1, 1), *p = fill(&pd, n, -2, 2), *t = fill(&td, n, -2, 2);
    float *a = fill(&ad, n, -1, 1), *b = fill(&bd, n, -1, 1);
    float *dg = dev_copy(g, n), *dp = dev_copy(p, n), *dt = dev_copy(t, n), *da = dev_copy(a, n),
          *db = dev_copy(b, n);
    const float lambda = 1e-3f, scale = -0.75f, sq = 0.125f;
    double *want = CHECK_ALLOC(double, n);
    assert_int_equal(anchor_grad_cuda(dg, dp, dt, lambda, n, stream), 0);
    for (long i = 0; i < n; i++) want[i] = gd[i] + (double)lambda * (pd[i] - td[i]);
    ASSERT_CLOSE("anchor_grad", dg, want, n);
    assert_int_equal(scale_inplace_cuda(dg, scale, n, stream), 0);
    for (long i = 0; i < n; i++) want[i] *= scale;
    ASSERT_CLOSE("scale_inplace", dg, want, n);
    // written: grad = sq (a - b); then added onto it: twice that
    double *dsum = dev_nan(sizeof(double)), s = 0.0;
    float *dgrad = dev_nan(sizeof(float) * (size_t)n);
    for (long i = 0; i < n; i++) {
        double e = (double)a[i] - b[i];
        s += e * e;
        want[i] = sq * e;
    }
    for (int acc = 0; acc < 2; acc++) {
        assert_int_equal(sq_diff_cuda(dsum, dgrad, da, db, sq, n, acc, stream), 0);
        double got = dev_read_double(dsum);
        assert_int_equal(check_compare_d("sq_diff sum", &got, &s, 1, 0, SUM_RTOL), 0);
        ASSERT_CLOSE(acc ? "sq_diff grad added" : "sq_diff grad written", dgrad, want, n);
        for (long i = 0; i < n; i++) want[i] *= 2.0;
    }
    assert_int_equal(sq_diff_cuda(NULL, dgrad, da, db, sq, n, 0, stream), KERNELS_EINVAL);
    CUDA_OK(cudaStreamSynchronize(stream));
    dev_free(dg), dev_free(dp), dev_free(dt), dev_free(da), dev_free(db), dev_free(dgrad);
    CUDA_OK(cudaFree(dsum));
    free(g), free(p), free(t), free(a), free(b), free(gd), free(pd), free(td), free(ad), free(bd);
    free(want);
}

static void test_tune_ops(void **state) {
    (void)state;
    tune_ops_case(1);
    tune_ops_case(5003);
    tune_ops_case(262147);
}

// Without a driver or a device, the entry points return KERNELS_ECUDA; none crashes or exits.
// The pointers (host memory) are never touched: each call fails before anything reaches a GPU.
// Returns 1 when all do.
static int no_device_calls_fail(void) {
    static float x[64], y[64], s[1];
    static double sums[4];
    uint64_t seed = 1;
    int rc[] = {
        leaky_relu_forward_cuda(y, x, 0.2f, 16, 0),
        leaky_relu_pattern_forward_cuda(y, x, x + 16, 0.2f, 16, 0),
        dropout_forward_cuda(y, y + 16, x, 0.5f, &seed, 16, 0),
        l1_forward_cuda(sums, x, 16, 0),
        ortho_reg_backward_cuda(y, sums, x, 0.1f, y + 32, 4, 4, 0),
        grad_penalty_fd_prepare_cuda(y, s, sums, sums + 1, x, x + 16, 1, 1.0f, 0.1f, 2, 8, 0),
        float_sum_cuda(s, sums, 2, 0),
        pixelnorm_forward_cuda(y, s, x, 1, 4, 4, 0),
        specnorm_forward_cuda(y, x + 32, x + 48, s, x, 4, 4, 1, 0),
        attention_softmax_forward_cuda(y, x, 4, 4, 0),
        gemm_cuda(0, 0, 4, 4, 4, 1.0f, x, 4, x + 16, 4, 0.0f, y, 4, 0),
        gemm_strided_batched_cuda(0, 0, 4, 4, 4, 1.0f, x, 4, 0, x + 16, 4, 0, 0.0f, y, 4, 16, 2, 0),
        conv2d_forward_cuda(y, x, x + 16, NULL, 1, 1, 4, 4, 1, 3, 1, 1, 0),
    };
    int ok = 1;
    for (size_t i = 0; i < sizeof rc / sizeof rc[0]; i++)
        if (rc[i] != KERNELS_ECUDA) {
            printf("# call %zu returned %d without a device\n", i, rc[i]);
            ok = 0;
        }
    cuda_cache_clear();
    return ok;
}

int main(void) {
    char why[256];
    if (!cuda_device_available(why, sizeof why)) {
        printf("1..2\nok 1 - test_cuda_ops # SKIP skipped: %s\n", why);
        // Where a device exists but cannot be used (say, no code for it), calls could reach it
        // with these null pointers, so this check runs only where none is seen at all.
        int count = 0;
        if (cudaGetDeviceCount(&count) == cudaSuccess && count > 0) {
            printf("ok 2 - no_device_calls_fail # SKIP a device is present\n");
            return 0;
        }
        int ok = no_device_calls_fail();
        printf("%s 2 - no_device_calls_fail\n", ok ? "ok" : "not ok");
        return ok ? 0 : 1;
    }
    printf("# %s\n", why);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_compare_can_fail),
        cmocka_unit_test(test_device_available),
        cmocka_unit_test(test_elementwise),
        cmocka_unit_test(test_default_stream),
        cmocka_unit_test(test_stream_forget),
        cmocka_unit_test(test_pixelnorm),
        cmocka_unit_test(test_upsample_avgpool),
        cmocka_unit_test(test_hinge_losses),
        cmocka_unit_test(test_adamw),
        cmocka_unit_test(test_specnorm),
        cmocka_unit_test(test_attention_softmax),
        cmocka_unit_test(test_gemm),
        cmocka_unit_test(test_gemm_strided_batched),
        cmocka_unit_test(test_linear),
        cmocka_unit_test(test_conv_tiny),
        cmocka_unit_test(test_conv_fmnist32),
        cmocka_unit_test(test_tf32),
        cmocka_unit_test_teardown(test_conv_bf16, bf16_off),
        cmocka_unit_test(test_leaky_relu_pattern),
        cmocka_unit_test(test_dropout),
        cmocka_unit_test(test_dropout_ends),
        cmocka_unit_test(test_lerp_items),
        cmocka_unit_test(test_l1),
        cmocka_unit_test(test_ortho_reg),
        cmocka_unit_test(test_grad_penalty_fd_prepare),
        cmocka_unit_test(test_scalar_combiners),
        cmocka_unit_test(test_tune_ops),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
