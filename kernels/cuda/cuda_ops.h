// cuda_ops.h — the CUDA backend's face: the device query, the TF32 switch, and the CUDA twins of
// the CPU kernels in kernels/ops.h, specnorm.h, gemm.h, conv.h and attention.h (its row softmax,
// and the whole block), plus the projection discriminator's product of generator/sagan.c.
// C-callable; built only with `make CUDA=1` (see docs/gpu.md).
//
// B batch, C channels, H, W spatial, N = H*W (or a softmax row's length), n a flat element count,
// OC output channels, K kernel size, S stride, P padding, IN / OUT feature counts. NCHW float32.
//
// Every tensor pointer is DEVICE memory. Each `x_cuda` takes the arguments of its CPU twin `x`
// in the same order with the same shapes and meaning, plus the stream last; forward functions
// write their outputs, backward functions ACCUMULATE (+=) into d* buffers and the caller zeroes
// them. Work is queued on the stream and the call returns without waiting: 0 means the work was
// queued, and a fault met while it runs (a bad pointer, say) shows up at the caller's next
// synchronizing call. On failure a negative KERNELS_E* code (kernels/kernels.h) is returned:
// KERNELS_EINVAL for a bad shape, found before anything is queued; KERNELS_ECUDA or
// KERNELS_ENOMEM when the runtime, cuBLAS or cuDNN refuses, in which case an op of several steps
// may already have queued its earlier ones. Nothing here calls exit() or abort(), GPU or not.
// Where a CPU twin returns a float (the hinge losses, sigma), the CUDA one writes it into a
// device scalar instead, so no call waits on the GPU. Any thread may call any function; calls
// that use cuBLAS or cuDNN on one stream take turns (a lock per stream), other streams proceed.
// The first gemm or convolution on a stream creates its library handles, and the first use of a
// convolution shape times the candidate algorithms, waiting for the stream (milliseconds to a
// second or so, once per shape; warm up before timing anything).
#ifndef KERNELS_CUDA_CUDA_OPS_H
#define KERNELS_CUDA_CUDA_OPS_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#include "kernels/attention.h" // AttentionSaved (a plain struct; no CPU function is called here)

#ifdef __cplusplus
extern "C" {
#endif

// --- the device ---------------------------------------------------------------------------------

// 1 when this process can run the kernels here on its current CUDA device, with a line naming
// the device written into why (len bytes, always NUL-terminated when len > 0); 0 when it cannot,
// with the reason in why (no NVIDIA driver, a driver older than the runtime, no device, a device
// this build has no code for). Safe to call from any thread, any number of times; allocates
// nothing of the caller's.
int cuda_device_available(char *why, size_t len);

// TF32 tensor-core math for the cuBLAS and cuDNN calls (gemm, linear, conv2d): off (0, the
// default) keeps them in full FP32 (cuBLAS default math, cuDNN FMA-only kernels), on (1) lets
// them round inputs to TF32 (10-bit mantissa, ~1e-3 relative error; several times faster on
// Ampere and Hopper). Process-wide; applies to calls made after it. The tests leave it off except
// where they check TF32 itself.
void cuda_tf32_set(int on);
int cuda_tf32_get(void);

// BF16 convolutions (conv2d_*_cuda only): off (0, the default) as above; on (1) each pass converts
// the operands it reads to bfloat16 (round to nearest even), runs cuDNN's BF16 convolution (FP32
// accumulation; cuDNN's legacy API writes BF16 too) and converts the result back, adding it into
// the FP32 gradient for the backward passes; the bias stays FP32. Outputs and gradients are thus
// rounded to bf16 once more than on the CPU (kernels/conv.h, whose BF16 writes FP32). Takes
// precedence over TF32 for the convolutions; cuBLAS is not affected. Process-wide; applies to
// calls made after it.
void cuda_bf16_set(int on);
int cuda_bf16_get(void);
// Keeps this host thread's convolutions in FP32 whatever cuda_bf16_get says (hold 1), or lets them
// follow it again (0); returns the previous hold, for nesting (kernels/conv.h's conv2d_fp32_hold).
int cuda_fp32_hold(int hold);

// Frees everything cached: the cuBLAS and cuDNN handles and convolution workspace kept per
// (device, stream), and the convolution algorithms chosen per shape. Call only when no work of
// ours is queued or running on any stream (after a synchronize), e.g. at exit so leak checkers
// stay quiet. The next call builds them again.
void cuda_cache_clear(void);
// Before a stream that went through these functions is destroyed: waits for it, then frees the
// cuBLAS and cuDNN handles and the workspace kept for (current device, stream), so that a
// destroyed stream leaves nothing behind and a new stream at the same address starts clean.
// Other streams' contexts and the cached convolution algorithms stay. No call of ours may be
// running on that stream meanwhile. 0 or KERNELS_ECUDA (the wait failed; nothing freed).
int cuda_stream_forget(cudaStream_t stream);
// How many (device, stream) contexts are cached (for tests).
int cuda_stream_contexts(void);

// --- element-wise and small layers (kernels/ops.h) ---------------------------------------------

// out = x > 0 ? x : alpha*x; out may alias inp. Backward reads the forward input (or output).
int leaky_relu_forward_cuda(float *out, const float *inp, float alpha, long n, cudaStream_t stream);
int leaky_relu_backward_cuda(float *dinp, const float *dout, const float *inp, float alpha, long n,
                             cudaStream_t stream);

// out = ref > 0 ? x : alpha*x: the slopes of another input's pattern (ops.h's
// leaky_relu_pattern_forward; the gradient penalties hold D's slopes at x). Its backward is
// leaky_relu_backward_cuda with inp = ref.
int leaky_relu_pattern_forward_cuda(float *out, const float *inp, const float *ref, float alpha,
                                    long n, cudaStream_t stream);

// out = tanh(x); out may alias inp. Backward reads the forward output.
int tanh_forward_cuda(float *out, const float *inp, long n, cudaStream_t stream);
int tanh_backward_cuda(float *dinp, const float *dout, const float *out, long n,
                       cudaStream_t stream);

// PixelNorm: out, inp (B, C, N); rnorm (B, N) = 1/sqrt(mean_c x^2 + PIXELNORM_EPS).
int pixelnorm_forward_cuda(float *out, float *rnorm, const float *inp, int B, int C, int N,
                           cudaStream_t stream);
int pixelnorm_backward_cuda(float *dinp, const float *dout, const float *out, const float *rnorm,
                            int B, int C, int N, cudaStream_t stream);

// Nearest upsample x2: out (B, C, 2H, 2W), inp (B, C, H, W).
int upsample2x_forward_cuda(float *out, const float *inp, int B, int C, int H, int W,
                            cudaStream_t stream);
int upsample2x_backward_cuda(float *dinp, const float *dout, int B, int C, int H, int W,
                             cudaStream_t stream);

// 2x2 average pool: out (B, C, H/2, W/2), inp (B, C, H, W), H and W even.
int avgpool2x_forward_cuda(float *out, const float *inp, int B, int C, int H, int W,
                           cudaStream_t stream);
int avgpool2x_backward_cuda(float *dinp, const float *dout, int B, int C, int H, int W,
                            cudaStream_t stream);

// out = alpha a + (1 - alpha) b (n). Backward: da += alpha dout, db += (1 - alpha) dout; da or db
// may be NULL.
int lerp_forward_cuda(float *out, const float *a, const float *b, float alpha, long n,
                      cudaStream_t stream);
int lerp_backward_cuda(float *da, float *db, const float *dout, float alpha, long n,
                       cudaStream_t stream);

// Hinge losses on logits (B): *loss (one device float) receives the mean loss, and dlogits (B)
// the gradient of that mean (written, not accumulated) when not NULL.
int hinge_d_real_loss_cuda(float *loss, float *dlogits, const float *logits, int B,
                           cudaStream_t stream);
int hinge_d_fake_loss_cuda(float *loss, float *dlogits, const float *logits, int B,
                           cudaStream_t stream);
int hinge_g_loss_cuda(float *loss, float *dlogits, const float *logits, int B, cudaStream_t stream);

// AdamW on params, grads, m, v (n); t is the 1-based step count after this update.
int adamw_update_cuda(float *params, const float *grads, float *m, float *v, long n, float lr,
                      float beta1, float beta2, float eps, float weight_decay, long t,
                      cudaStream_t stream);

// Inverted dropout (ops.h's dropout_forward, the same masks bit for bit): *seed is a HOST u64,
// advanced on the host as the CPU twin advances it; each OPS_DROPOUT_CHUNK elements draw from
// their own stream, one GPU thread per chunk. mask (n) gets 0 or 1/(1-p); out may alias inp.
int dropout_forward_cuda(float *out, float *mask, const float *inp, float p, uint64_t *seed,
                         long n, cudaStream_t stream);
// dinp (n) += dout * mask.
int dropout_backward_cuda(float *dinp, const float *dout, const float *mask, long n,
                          cudaStream_t stream);

// Per-item blend: out (B, n) item b = alpha[b] a_b + (1 - alpha[b]) b_b, alpha (B) DEVICE floats
// (the interpolates of WGAN-GP, gan.c's loop).
int lerp_items_cuda(float *out, const float *a, const float *b, const float *alpha, int B, long n,
                    cudaStream_t stream);

// --- regularizers (kernels/regularize.h) --------------------------------------------------------

// *sum (one DEVICE double) = sum_i |inp[i]|, accumulated in double in a fixed order.
int l1_forward_cuda(double *sum, const float *inp, long n, cudaStream_t stream);
// dinp += scale * sign(inp) (sign(0) = 0).
int l1_backward_cuda(float *dinp, const float *inp, float scale, long n, cudaStream_t stream);
// Orthogonal regularization, regularize.h's ortho_reg_backward: dw (OUT, IN) += 4 beta (W W^T (.)
// (1 - I)) W, *value (one DEVICE double, or NULL) = beta ||W W^T (.) (1 - I)||_F^2, formed
// through W^T W for a tall W as there. scratch holds ortho_scratch_floats_cuda(OUT, IN) device
// floats, 8-byte aligned (the Gram matrix, then doubles: one per row).
long ortho_scratch_floats_cuda(int OUT, int IN);
int ortho_reg_backward_cuda(float *dw, double *value, const float *w, float beta, float *scratch,
                            int OUT, int IN, cudaStream_t stream);
// The gradient penalties' finite-difference set-up (regularize.h's grad_penalty_fd_prepare, the
// same formulas): from D's input gradients grad (B, n) at x (B, n), writes x2 (2B, n) = x +- e_b
// g_b and dout2 (2B) = +-c_b, and *value (one DEVICE double) = weight * P. r1: 1 for R1, 0 for
// WGAN-GP. terms holds B device doubles (each image's share of P, summed in order).
int grad_penalty_fd_prepare_cuda(float *x2, float *dout2, double *value, double *terms,
                                 const float *grad, const float *x, int r1, float weight,
                                 float fd_step, int B, long n, cudaStream_t stream);
// *out (one DEVICE float) = (float)(sum_k lambda terms[k] / n[k]) summed in double over k in
// order (sagan.c's l1_value from the per-block sums l1_forward_cuda left in terms, k device
// doubles); n (k) is a HOST array, k <= 16.
int l1_value_cuda(float *out, const double *terms, const long *n, int k, float lambda,
                  cudaStream_t stream);
// *out (one DEVICE float) = 0.0f + (float)vals[0] + ... + (float)vals[k - 1], in float, in order
// (how gan.c adds its penalties' double values into a float loss); vals k device doubles.
int float_sum_cuda(float *out, const double *vals, int k, cudaStream_t stream);

// --- spectral norm (kernels/specnorm.h) ---------------------------------------------------------

// One power iteration (update != 0) or none (update == 0), as specnorm_forward: w_sn (OUT, IN)
// written, v_out (IN) the right vector saved for backward, u (OUT) the persistent left vector
// (overwritten when update), *sigma (one device float) receives sigma. w_sn must not alias w.
int specnorm_forward_cuda(float *w_sn, float *v_out, float *u, float *sigma, const float *w,
                          int OUT, int IN, int update, cudaStream_t stream);
// dw (OUT, IN) += (dw_sn - <dw_sn, w_sn> u v^T) / sigma, with u, v and *sigma as forward left them.
int specnorm_backward_cuda(float *dw, const float *dw_sn, const float *w_sn, const float *u,
                           const float *v, const float *sigma, int OUT, int IN,
                           cudaStream_t stream);

// --- the attention softmax (attention.c's row softmax) ----------------------------------------

// attn (rows, N) = softmax of each row of scores (rows, N), max-subtracted; attn may alias
// scores. In the SAGAN block rows = B*N and row j holds the scores of position j over all i.
int attention_softmax_forward_cuda(float *attn, const float *scores, int rows, int N,
                                   cudaStream_t stream);
// dscores (rows, N) += attn * (dattn - <attn, dattn>) per row. dscores must not alias dattn.
int attention_softmax_backward_cuda(float *dscores, const float *dattn, const float *attn, int rows,
                                    int N, cudaStream_t stream);

// --- matrix products on cuBLAS (kernels/gemm.h) -------------------------------------------------

// Row-major C (M, N) = alpha op(A) op(B) + beta C, exactly gemm()'s contract.
int gemm_cuda(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
              const float *B, int ldb, float beta, float *C, int ldc, cudaStream_t stream);
// gemm_cuda on batch items in one launch: for i in [0, batch), row-major C_i = alpha op(A_i)
// op(B_i) + beta C_i with A_i = A + i stride_a, B_i = B + i stride_b, C_i = C + i stride_c
// (strides in floats). An input stride may be 0 (one matrix shared by every item, a weight);
// items may interleave (C_i the i-th column block of a wide matrix: ldc = batch N, stride_c = N),
// but no two items may write one element, so stride_c 0 with batch > 1 is KERNELS_EINVAL; so are
// negative sizes or strides. beta 0 never reads C.
int gemm_strided_batched_cuda(int ta, int tb, int M, int N, int K, float alpha, const float *A,
                              int lda, long stride_a, const float *B, int ldb, long stride_b,
                              float beta, float *C, int ldc, long stride_c, int batch,
                              cudaStream_t stream);
// out (B, OUT) = inp (B, IN) w^T + bias; w (OUT, IN); bias (OUT) or NULL.
int linear_forward_cuda(float *out, const float *inp, const float *w, const float *bias, int B,
                        int IN, int OUT, cudaStream_t stream);
// Accumulates into dinp (B, IN), dw (OUT, IN), dbias (OUT); any may be NULL to skip it.
int linear_backward_cuda(float *dinp, float *dw, float *dbias, const float *dout, const float *inp,
                         const float *w, int B, int IN, int OUT, cudaStream_t stream);

// --- convolution on cuDNN (kernels/conv.h) ------------------------------------------------------

// out (B, OC, OH, OW) written; inp (B, C, H, W); w (OC, C, K, K); bias (OC) or NULL.
// OH = (H + 2P - K)/S + 1, OW likewise. The algorithm of each pass is chosen once per shape
// (cuDNN's measured search, the first time the shape is seen) and cached.
int conv2d_forward_cuda(float *out, const float *inp, const float *w, const float *bias, int B,
                        int C, int H, int W, int OC, int K, int S, int P, cudaStream_t stream);
// Accumulates into dinp (B, C, H, W), dw (OC, C, K, K), dbias (OC); any may be NULL to skip it.
int conv2d_backward_cuda(float *dinp, float *dw, float *dbias, const float *dout, const float *inp,
                         const float *w, int B, int C, int H, int W, int OC, int K, int S, int P,
                         cudaStream_t stream);

// --- the networks' own small layers and the attention block (model_cuda.cu) --------------------
//
// K classes (rows of an embedding table), D or F an embedding row's length. labels are DEVICE
// int32 arrays whose values the caller has checked (each in [0, K)); nothing here reads them on
// the host. Where a table row can receive the gradients of several batch items (two items with one
// label), one thread owns a column of the table and adds the items in batch order, as the CPU's
// serial loop does: no atomics, the same bits on every run.

// out (n) += inp (n) (ops.h's add_inplace).
int add_inplace_cuda(float *out, const float *inp, long n, cudaStream_t stream);

// out (B, D) row b = table (K, D) row labels[b] (ops.h's embedding_forward).
int embedding_forward_cuda(float *out, const float *table, const int32_t *labels, int B, int D,
                           cudaStream_t stream);
// dtable (K, D) row labels[b] += dout (B, D) row b, for b in order (ops.h's embedding_backward).
int embedding_backward_cuda(float *dtable, const float *dout, const int32_t *labels, int B, int D,
                            cudaStream_t stream);

// The projection discriminator's inner product (Miyato & Koyama 2018; sagan.c's loop):
// out (B) += <table (K, F) row labels[b], feat (B, F) row b>.
int projection_forward_cuda(float *out, const float *table, const int32_t *labels,
                            const float *feat, int B, int F, cudaStream_t stream);
// dfeat (B, F) row b += dout[b] table row labels[b]; dtable (K, F) row labels[b] += dout[b] feat
// row b (b in order). dout (B). dfeat or dtable may be NULL to skip it.
int projection_backward_cuda(float *dfeat, float *dtable, const float *dout, const float *table,
                             const int32_t *labels, const float *feat, int B, int F,
                             cudaStream_t stream);

// grads (n) += lambda (params - theta0): the fine-tuning anchor's gradient (generator/finetune.c).
int anchor_grad_cuda(float *grads, const float *params, const float *theta0, float lambda, long n,
                     cudaStream_t stream);

// x (n) *= a.
int scale_inplace_cuda(float *x, float a, long n, cudaStream_t stream);
// A squared-error term (generator/distill.c's): e = a - b per element, *sum (one DEVICE double) =
// sum e^2 in double (one block, a fixed order), grad (n) gets scale e, written (accumulate = 0)
// or added (accumulate = 1).
int sq_diff_cuda(double *sum, float *grad, const float *a, const float *b, float scale, long n,
                 int accumulate, cudaStream_t stream);

// The SAGAN block (kernels/attention.h: the same math, the same saved tensors, carved by
// attention_saved_carve from device memory), as strided-batched products over the items around
// the row softmax: a fixed number of launches whatever B is. One difference from the CPU twins:
// gamma is a DEVICE float (it is trained on the device, and reading it on the host would wait for
// the stream). x, out, dx, dout (B, C, N), C divisible by 8; out must not alias x.
int attention_forward_cuda(float *out, AttentionSaved *s, const float *x, const float *wf,
                           const float *wg, const float *wh, const float *wo, const float *gamma,
                           int B, int C, int N, cudaStream_t stream);
// Floats of the backward's scratch for B items: every item's intermediate gradients at once (the
// items run together), B N (2 N + 15 C/4) floats. Size it for the largest batch; a smaller B
// uses a prefix.
long attention_scratch_floats_cuda(int B, int C, int N);
// Accumulates into dx (B, C, N), dwf, dwg (C/8, C), dwh (C/2, C), dwo (C, C/2) and *dgamma (one
// device float); any of the weight gradients and dgamma may be NULL to skip it. scratch holds
// attention_scratch_floats_cuda(B, C, N) device floats.
int attention_backward_cuda(float *dx, float *dwf, float *dwg, float *dwh, float *dwo,
                            float *dgamma, const float *dout, const AttentionSaved *s,
                            const float *x, const float *wf, const float *wg, const float *wh,
                            const float *wo, const float *gamma, float *scratch, int B, int C,
                            int N, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
