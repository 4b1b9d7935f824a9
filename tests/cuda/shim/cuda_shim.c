// cuda_shim.c — a CPU stand-in for the CUDA runtime calls and the kernels/cuda/cuda_ops.h
// functions that generator/gan_cuda.c and generator/sagan_cuda.c make, each one built on its CPU
// twin, so that those two files (the GPU training step and G's forward for serving) can be run
// and checked where there is no GPU: their buffer carving, layer order, spectral norm, Adam and
// host RNG draws. With every op the CPU's own, gan_cuda_step must equal gan_step bit for bit
// (tests/cuda/shim/test_shim_exact.c, `make cuda-shim`).
//
// What it is not: a model of the GPU. "Device" memory is host memory, streams are tokens and
// every call finishes before it returns, so it cannot find a missing synchronize, a host read of
// device memory, or anything wrong inside the kernels of kernels/cuda/*.cu (tests/cuda/
// test_cuda_ops.c checks those on a GPU). It covers only the calls those two files make. It is
// test code, linked only into the shim's test program: never into libsteer.a or steer, and never
// beside the real CUDA backend (the same symbols).
//
// B batch, C channels, H, W spatial, N = H*W, n a flat element count, F feature length, D an
// embedding row's length. Every pointer named device memory in cuda_ops.h is host memory here.
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "kernels/attention.h"
#include "kernels/conv.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/gemm.h"
#include "kernels/kernels.h"
#include "kernels/ops.h"
#include "kernels/regularize.h"
#include "kernels/specnorm.h"

// --- the runtime: host memory, and streams on which everything has already run -----------------

cudaError_t cudaMalloc(void **ptr, size_t bytes) {
    // Zeroed, and at least one byte, so that a read of memory the code never wrote shows up as
    // the same zeros on every run instead of as noise.
    *ptr = calloc(1, bytes ? bytes : 1);
    return *ptr ? cudaSuccess : cudaErrorMemoryAllocation;
}

cudaError_t cudaMallocHost(void **ptr, size_t bytes) { return cudaMalloc(ptr, bytes); }

cudaError_t cudaFree(void *ptr) {
    free(ptr);
    return cudaSuccess;
}

cudaError_t cudaFreeHost(void *ptr) {
    free(ptr);
    return cudaSuccess;
}

// memmove, not memcpy: the real call makes no promise for overlap either, but a copy that
// overlaps should not turn into undefined behaviour of the stand-in.
cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind) {
    (void)kind;
    memmove(dst, src, bytes);
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind,
                            cudaStream_t stream) {
    (void)stream;
    return cudaMemcpy(dst, src, bytes, kind);
}

cudaError_t cudaMemsetAsync(void *dst, int value, size_t bytes, cudaStream_t stream) {
    (void)stream;
    memset(dst, value, bytes);
    return cudaSuccess;
}

// A stream is a distinct one-byte allocation, so that two streams compare unequal and a stream
// not destroyed shows up in a leak checker.
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned int flags) {
    (void)flags;
    *stream = malloc(1);
    return *stream ? cudaSuccess : cudaErrorMemoryAllocation;
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
    free(stream);
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
    (void)stream;
    return cudaSuccess;
}

// --- the backend (cuda_ops.h), each op its CPU twin --------------------------------------------

// No handles are cached here.
int cuda_stream_forget(cudaStream_t stream) {
    (void)stream;
    return 0;
}

// The stand-in's convolutions are the CPU's: its hold.
int cuda_fp32_hold(int hold) { return conv2d_fp32_hold(hold); }

int cuda_device_available(char *why, size_t len) {
    if (len > 0) {
        strncpy(why, "the CPU stand-in for the CUDA backend (tests/cuda/shim)", len - 1);
        why[len - 1] = '\0';
    }
    return 1;
}

int leaky_relu_forward_cuda(float *out, const float *inp, float alpha, long n,
                            cudaStream_t stream) {
    (void)stream;
    leaky_relu_forward(out, inp, alpha, n);
    return 0;
}

int leaky_relu_backward_cuda(float *dinp, const float *dout, const float *inp, float alpha, long n,
                             cudaStream_t stream) {
    (void)stream;
    leaky_relu_backward(dinp, dout, inp, alpha, n);
    return 0;
}

int leaky_relu_pattern_forward_cuda(float *out, const float *inp, const float *ref, float alpha,
                                    long n, cudaStream_t stream) {
    (void)stream;
    leaky_relu_pattern_forward(out, inp, ref, alpha, n);
    return 0;
}

int tanh_forward_cuda(float *out, const float *inp, long n, cudaStream_t stream) {
    (void)stream;
    tanh_forward(out, inp, n);
    return 0;
}

int tanh_backward_cuda(float *dinp, const float *dout, const float *out, long n,
                       cudaStream_t stream) {
    (void)stream;
    tanh_backward(dinp, dout, out, n);
    return 0;
}

int pixelnorm_forward_cuda(float *out, float *rnorm, const float *inp, int B, int C, int N,
                           cudaStream_t stream) {
    (void)stream;
    pixelnorm_forward(out, rnorm, inp, B, C, N);
    return 0;
}

int pixelnorm_backward_cuda(float *dinp, const float *dout, const float *out, const float *rnorm,
                            int B, int C, int N, cudaStream_t stream) {
    (void)stream;
    pixelnorm_backward(dinp, dout, out, rnorm, B, C, N);
    return 0;
}

int upsample2x_forward_cuda(float *out, const float *inp, int B, int C, int H, int W,
                            cudaStream_t stream) {
    (void)stream;
    upsample2x_forward(out, inp, B, C, H, W);
    return 0;
}

int upsample2x_backward_cuda(float *dinp, const float *dout, int B, int C, int H, int W,
                             cudaStream_t stream) {
    (void)stream;
    upsample2x_backward(dinp, dout, B, C, H, W);
    return 0;
}

// The CUDA losses write into a device scalar what the CPU ones return.
int hinge_d_real_loss_cuda(float *loss, float *dlogits, const float *logits, int B,
                           cudaStream_t stream) {
    (void)stream;
    *loss = hinge_d_real_loss(dlogits, logits, B);
    return 0;
}

int hinge_d_fake_loss_cuda(float *loss, float *dlogits, const float *logits, int B,
                           cudaStream_t stream) {
    (void)stream;
    *loss = hinge_d_fake_loss(dlogits, logits, B);
    return 0;
}

int hinge_g_loss_cuda(float *loss, float *dlogits, const float *logits, int B,
                      cudaStream_t stream) {
    (void)stream;
    *loss = hinge_g_loss(dlogits, logits, B);
    return 0;
}

// *seed is a host word on both sides.
int dropout_forward_cuda(float *out, float *mask, const float *inp, float p, uint64_t *seed,
                         long n, cudaStream_t stream) {
    (void)stream;
    dropout_forward(out, mask, inp, p, seed, n);
    return 0;
}

int dropout_backward_cuda(float *dinp, const float *dout, const float *mask, long n,
                          cudaStream_t stream) {
    (void)stream;
    dropout_backward(dinp, dout, mask, n);
    return 0;
}

// gan.c's interpolates loop (no CPU function of its own): the same expression.
int lerp_items_cuda(float *out, const float *a, const float *b, const float *alpha, int B, long n,
                    cudaStream_t stream) {
    (void)stream;
    for (int k = 0; k < B; k++) {
        float t = alpha[k];
        for (long i = 0; i < n; i++) out[k * n + i] = t * a[k * n + i] + (1.0f - t) * b[k * n + i];
    }
    return 0;
}

// The regularizers: the device doubles are host doubles here.
int l1_forward_cuda(double *sum, const float *inp, long n, cudaStream_t stream) {
    (void)stream;
    *sum = l1_forward(inp, n);
    return 0;
}

int l1_backward_cuda(float *dinp, const float *inp, float scale, long n, cudaStream_t stream) {
    (void)stream;
    l1_backward(dinp, inp, scale, n);
    return 0;
}

long ortho_scratch_floats_cuda(int OUT, int IN) { return ortho_scratch_floats(OUT, IN); }

int ortho_reg_backward_cuda(float *dw, double *value, const float *w, float beta, float *scratch,
                            int OUT, int IN, cudaStream_t stream) {
    (void)stream;
    return ortho_reg_backward(dw, value, w, beta, scratch, OUT, IN);
}

int grad_penalty_fd_prepare_cuda(float *x2, float *dout2, double *value, double *terms,
                                 const float *grad, const float *x, int r1, float weight,
                                 float fd_step, int B, long n, cudaStream_t stream) {
    (void)stream, (void)terms;
    *value = grad_penalty_fd_prepare(x2, dout2, grad, x, r1, weight, fd_step, B, n);
    return 0;
}

// sagan.c's l1_value and gan.c's float sum of penalties: the same expressions.
int l1_value_cuda(float *out, const double *terms, const long *n, int k, float lambda,
                  cudaStream_t stream) {
    (void)stream;
    double v = 0.0;
    for (int i = 0; i < k; i++) v += lambda * terms[i] / (double)n[i];
    *out = (float)v;
    return 0;
}

// finetune.c's anchor loop: the same expression.
int anchor_grad_cuda(float *grads, const float *params, const float *theta0, float lambda, long n,
                     cudaStream_t stream) {
    (void)stream;
    for (long i = 0; i < n; i++) grads[i] += lambda * (params[i] - theta0[i]);
    return 0;
}

int scale_inplace_cuda(float *x, float a, long n, cudaStream_t stream) {
    (void)stream;
    for (long i = 0; i < n; i++) x[i] *= a;
    return 0;
}

// distill.c's loops: the same expressions.
int sq_diff_cuda(double *sum, float *grad, const float *a, const float *b, float scale, long n,
                 int accumulate, cudaStream_t stream) {
    (void)stream;
    double s = 0.0;
    for (long i = 0; i < n; i++) {
        float e = a[i] - b[i];
        s += (double)e * e;
        grad[i] = accumulate ? grad[i] + scale * e : scale * e;
    }
    *sum = s;
    return 0;
}

int float_sum_cuda(float *out, const double *vals, int k, cudaStream_t stream) {
    (void)stream;
    float s = 0.0f;
    for (int i = 0; i < k; i++) s += (float)vals[i];
    *out = s;
    return 0;
}

int adamw_update_cuda(float *params, const float *grads, float *m, float *v, long n, float lr,
                      float beta1, float beta2, float eps, float weight_decay, long t,
                      cudaStream_t stream) {
    (void)stream;
    adamw_update(params, grads, m, v, n, lr, beta1, beta2, eps, weight_decay, t);
    return 0;
}

// sigma is a device scalar on the CUDA side, a return value (forward) or argument (backward) on
// the CPU's.
int lerp_forward_cuda(float *out, const float *a, const float *b, float alpha, long n,
                      cudaStream_t stream) {
    (void)stream;
    lerp_forward(out, a, b, alpha, n);
    return 0;
}

int lerp_backward_cuda(float *da, float *db, const float *dout, float alpha, long n,
                       cudaStream_t stream) {
    (void)stream;
    lerp_backward(da, db, dout, alpha, n);
    return 0;
}

int avgpool2x_forward_cuda(float *out, const float *inp, int B, int C, int H, int W,
                           cudaStream_t stream) {
    (void)stream;
    avgpool2x_forward(out, inp, B, C, H, W);
    return 0;
}

int avgpool2x_backward_cuda(float *dinp, const float *dout, int B, int C, int H, int W,
                            cudaStream_t stream) {
    (void)stream;
    avgpool2x_backward(dinp, dout, B, C, H, W);
    return 0;
}

int specnorm_forward_cuda(float *w_sn, float *v_out, float *u, float *sigma, const float *w,
                          int OUT, int IN, int update, cudaStream_t stream) {
    (void)stream;
    *sigma = specnorm_forward(w_sn, v_out, u, w, OUT, IN, update);
    return 0;
}

int specnorm_backward_cuda(float *dw, const float *dw_sn, const float *w_sn, const float *u,
                           const float *v, const float *sigma, int OUT, int IN,
                           cudaStream_t stream) {
    (void)stream;
    specnorm_backward(dw, dw_sn, w_sn, u, v, *sigma, OUT, IN);
    return 0;
}

int linear_forward_cuda(float *out, const float *inp, const float *w, const float *bias, int B,
                        int IN, int OUT, cudaStream_t stream) {
    (void)stream;
    return linear_forward(out, inp, w, bias, B, IN, OUT);
}

int linear_backward_cuda(float *dinp, float *dw, float *dbias, const float *dout, const float *inp,
                         const float *w, int B, int IN, int OUT, cudaStream_t stream) {
    (void)stream;
    return linear_backward(dinp, dw, dbias, dout, inp, w, B, IN, OUT);
}

int conv2d_forward_cuda(float *out, const float *inp, const float *w, const float *bias, int B,
                        int C, int H, int W, int OC, int K, int S, int P, cudaStream_t stream) {
    (void)stream;
    return conv2d_forward(out, inp, w, bias, B, C, H, W, OC, K, S, P);
}

int conv2d_backward_cuda(float *dinp, float *dw, float *dbias, const float *dout, const float *inp,
                         const float *w, int B, int C, int H, int W, int OC, int K, int S, int P,
                         cudaStream_t stream) {
    (void)stream;
    return conv2d_backward(dinp, dw, dbias, dout, inp, w, B, C, H, W, OC, K, S, P);
}

// --- model_cuda.cu's layers ---------------------------------------------------------------------

int add_inplace_cuda(float *out, const float *inp, long n, cudaStream_t stream) {
    (void)stream;
    add_inplace(out, inp, n);
    return 0;
}

int embedding_forward_cuda(float *out, const float *table, const int32_t *labels, int B, int D,
                           cudaStream_t stream) {
    (void)stream;
    embedding_forward(out, table, labels, B, D);
    return 0;
}

int embedding_backward_cuda(float *dtable, const float *dout, const int32_t *labels, int B, int D,
                            cudaStream_t stream) {
    (void)stream;
    embedding_backward(dtable, dout, labels, B, D);
    return 0;
}

// The projection is kernels/ops.c's, as discriminator_forward and discriminator_backward call it.
int projection_forward_cuda(float *out, const float *table, const int32_t *labels,
                            const float *feat, int B, int F, cudaStream_t stream) {
    (void)stream;
    projection_forward(out, table, labels, feat, B, F);
    return 0;
}

int projection_backward_cuda(float *dfeat, float *dtable, const float *dout, const float *table,
                             const int32_t *labels, const float *feat, int B, int F,
                             cudaStream_t stream) {
    (void)stream;
    projection_backward(dfeat, dtable, dout, table, labels, feat, B, F);
    return 0;
}

// The attention block is attention.c itself, not a port of model_cuda.cu's composition of it on
// gemm_cuda: that composition sums the weight gradients in another order, and the point here is
// that every op is the CPU's, so that any difference left is the orchestration's. gamma and
// dgamma are "device" scalars, so host floats here.
int attention_forward_cuda(float *out, AttentionSaved *s, const float *x, const float *wf,
                           const float *wg, const float *wh, const float *wo, const float *gamma,
                           int B, int C, int N, cudaStream_t stream) {
    (void)stream;
    return attention_forward(out, s, x, wf, wg, wh, wo, *gamma, B, C, N);
}

// Both scratches hold every item's intermediates, so gan_cuda.c's carving (sized for its largest
// batch) can hold the CPU's: this size is the CPU's and the backward below uses it as given.
long attention_scratch_floats_cuda(int B, int C, int N) {
    return attention_scratch_floats(B, C, N);
}

int attention_backward_cuda(float *dx, float *dwf, float *dwg, float *dwh, float *dwo,
                            float *dgamma, const float *dout, const AttentionSaved *s,
                            const float *x, const float *wf, const float *wg, const float *wh,
                            const float *wo, const float *gamma, float *scratch, int B, int C,
                            int N, cudaStream_t stream) {
    (void)stream;
    return attention_backward(dx, dwf, dwg, dwh, dwo, dgamma, dout, s, x, wf, wg, wh, wo, *gamma,
                              scratch, B, C, N);
}
