// model_cuda.cu — the layers of G and D that are not generic kernels, on the GPU: the class
// embedding (G), the projection discriminator's inner product (D), an in-place add, and the SAGAN
// attention block composed from cuBLAS products and the row softmax of attention_cuda.cu. They
// are the CUDA twins of ops.c's embedding_forward/backward and add_inplace, of the projection loop
// in sagan.c, and of attention.c, with the same arguments plus the stream.
//
// Written for clarity first. Embedding and projection gradients are summed by one thread per table
// column over the batch in order (rows may share a label), so no atomics and the same bits on every
// run. The attention block does not loop over the items as attention.c does: each of its products
// runs for the whole batch in one strided-batched GEMM (a weight shared with stride 0), and each
// weight gradient, a sum over items and positions, as one GEMM whose inner dimension is B N. So a
// forward and backward issue 18 cuBLAS calls and 9 other launches (our kernels, one memset)
// whatever B is; item by item it was 18 B GEMMs, thousands per training step at batch 256. Not
// here: dropout, the regularizers, anything with a host-side loop over the data.
//
// B batch, C channels, C8 = C/8, C2 = C/2, N = H*W positions, K classes, D or F a row's length.
#include "kernels/cuda/cuda_ops.h"

#include "kernels/cuda/cuda_internal.cuh"

// --- element-wise helpers -----------------------------------------------------------------------

// out (n) += inp (n).
__global__ void add_inplace_kernel(float *out, const float *inp, long n) {
    CUDA_FOR(i, n) out[i] += inp[i];
}

int add_inplace_cuda(float *out, const float *inp, long n, cudaStream_t stream) {
    CHECK_COUNT(n);
    add_inplace_kernel<<<cuda_blocks(n), CUDA_THREADS, 0, stream>>>(out, inp, n);
    return cuda_launch_code();
}

// grads, params, theta0 (n).
__global__ void anchor_grad_kernel(float *grads, const float *params, const float *theta0,
                                   float lambda, long n) {
    CUDA_FOR(i, n) grads[i] += lambda * (params[i] - theta0[i]);
}

int anchor_grad_cuda(float *grads, const float *params, const float *theta0, float lambda, long n,
                     cudaStream_t stream) {
    CHECK_COUNT(n);
    anchor_grad_kernel<<<cuda_blocks(n), CUDA_THREADS, 0, stream>>>(grads, params, theta0, lambda,
                                                                     n);
    return cuda_launch_code();
}

// x (n).
__global__ void scale_inplace_kernel(float *x, float a, long n) {
    CUDA_FOR(i, n) x[i] *= a;
}

int scale_inplace_cuda(float *x, float a, long n, cudaStream_t stream) {
    CHECK_COUNT(n);
    scale_inplace_kernel<<<cuda_blocks(n), CUDA_THREADS, 0, stream>>>(x, a, n);
    return cuda_launch_code();
}

// One block: sum (1) = sum (a - b)^2 in double; grad (n) = or += scale (a - b).
__global__ void sq_diff_kernel(double *sum, float *grad, const float *a, const float *b,
                               float scale, long n, int accumulate) {
    __shared__ double scratch[32];
    double s = 0.0;
    for (long i = threadIdx.x; i < n; i += blockDim.x) {
        float e = a[i] - b[i];
        s += (double)e * e;
        grad[i] = accumulate ? grad[i] + scale * e : scale * e;
    }
    s = block_sum(s, scratch);
    if (threadIdx.x == 0)
        *sum = s;
}

int sq_diff_cuda(double *sum, float *grad, const float *a, const float *b, float scale, long n,
                 int accumulate, cudaStream_t stream) {
    if (n < 0 || !sum)
        return KERNELS_EINVAL;
    sq_diff_kernel<<<1, 1024, 0, stream>>>(sum, grad, a, b, scale, n, accumulate);
    return cuda_launch_code();
}

// out (n) = x (n) + *alpha y (n), alpha a device float; out may alias x.
__global__ void add_scaled_kernel(float *out, const float *x, const float *alpha, const float *y,
                                  long n) {
    float a = *alpha;
    CUDA_FOR(i, n) out[i] = x[i] + a * y[i];
}

// One block: *acc += sum_k a[k] b[k] over n, summed in double in a fixed order (attention.c sums
// each item's <dout, y> in float, then the items; the difference is rounding).
__global__ void dot_accumulate_kernel(float *acc, const float *a, const float *b, long n) {
    __shared__ double scratch[32];
    double s = 0.0;
    for (long k = threadIdx.x; k < n; k += blockDim.x)
        s += (double)a[k] * (double)b[k];
    s = block_sum(s, scratch);
    if (threadIdx.x == 0)
        *acc = (float)((double)*acc + s);
}

// --- class embedding ----------------------------------------------------------------------------

// out (B, D) row b = table row labels[b].
__global__ void embedding_forward_kernel(float *out, const float *table, const int32_t *labels,
                                         int B, int D) {
    long n = (long)B * D;
    CUDA_FOR(k, n) {
        long b = k / D, i = k % D;
        out[k] = table[(long)labels[b] * D + i];
    }
}

// Thread i owns column i of the table: dtable row labels[b] += dout row b, b in order.
__global__ void embedding_backward_kernel(float *dtable, const float *dout, const int32_t *labels,
                                          int B, int D) {
    CUDA_FOR(i, D) {
        for (int b = 0; b < B; b++)
            dtable[(long)labels[b] * D + i] += dout[(long)b * D + i];
    }
}

int embedding_forward_cuda(float *out, const float *table, const int32_t *labels, int B, int D,
                           cudaStream_t stream) {
    if (B < 0 || D < 0)
        return KERNELS_EINVAL;
    long n = (long)B * D;
    CHECK_COUNT(n);
    embedding_forward_kernel<<<cuda_blocks(n), CUDA_THREADS, 0, stream>>>(out, table, labels, B, D);
    return cuda_launch_code();
}

int embedding_backward_cuda(float *dtable, const float *dout, const int32_t *labels, int B, int D,
                            cudaStream_t stream) {
    if (B < 0 || D < 0)
        return KERNELS_EINVAL;
    if (B == 0 || D == 0)
        return 0;
    embedding_backward_kernel<<<cuda_blocks(D), CUDA_THREADS, 0, stream>>>(dtable, dout, labels, B,
                                                                           D);
    return cuda_launch_code();
}

// --- the projection discriminator ---------------------------------------------------------------

// One block per item b: out[b] += <table row labels[b], feat row b>, a block sum in float (the
// CPU's loop sums in float too, in another order).
__global__ void projection_forward_kernel(float *out, const float *table, const int32_t *labels,
                                          const float *feat, int F) {
    __shared__ float scratch[32];
    int b = blockIdx.x;
    const float *e = table + (long)labels[b] * F, *h = feat + (long)b * F;
    float s = 0.0f;
    for (int i = threadIdx.x; i < F; i += blockDim.x)
        s += e[i] * h[i];
    s = block_sum(s, scratch);
    if (threadIdx.x == 0)
        out[b] += s;
}

// dfeat (B, F) row b += dout[b] table row labels[b].
__global__ void projection_dfeat_kernel(float *dfeat, const float *dout, const float *table,
                                        const int32_t *labels, int B, int F) {
    long n = (long)B * F;
    CUDA_FOR(k, n) {
        long b = k / F, i = k % F;
        dfeat[k] += dout[b] * table[(long)labels[b] * F + i];
    }
}

// Thread i owns column i: dtable row labels[b] += dout[b] feat row b, b in order.
__global__ void projection_dtable_kernel(float *dtable, const float *dout, const int32_t *labels,
                                         const float *feat, int B, int F) {
    CUDA_FOR(i, F) {
        for (int b = 0; b < B; b++)
            dtable[(long)labels[b] * F + i] += dout[b] * feat[(long)b * F + i];
    }
}

int projection_forward_cuda(float *out, const float *table, const int32_t *labels,
                            const float *feat, int B, int F, cudaStream_t stream) {
    if (B < 0 || F <= 0)
        return KERNELS_EINVAL;
    if (B == 0)
        return 0;
    projection_forward_kernel<<<B, CUDA_THREADS, 0, stream>>>(out, table, labels, feat, F);
    return cuda_launch_code();
}

int projection_backward_cuda(float *dfeat, float *dtable, const float *dout, const float *table,
                             const int32_t *labels, const float *feat, int B, int F,
                             cudaStream_t stream) {
    if (B < 0 || F <= 0)
        return KERNELS_EINVAL;
    if (B == 0)
        return 0;
    if (dfeat) {
        long n = (long)B * F;
        projection_dfeat_kernel<<<cuda_blocks(n), CUDA_THREADS, 0, stream>>>(dfeat, dout, table,
                                                                             labels, B, F);
        CHECK(cuda_launch_code());
    }
    if (dtable) {
        projection_dtable_kernel<<<cuda_blocks(F), CUDA_THREADS, 0, stream>>>(dtable, dout, labels,
                                                                              feat, B, F);
        CHECK(cuda_launch_code());
    }
    return 0;
}

// --- the attention block ------------------------------------------------------------------------
//
// Each item's matrices are (rows, N) blocks: the saved tensors hold them item after item, (B, C',
// N), as attention.c does. The backward also lays some out "wide", (C', B N): item b's block is
// columns [b N, (b + 1) N) of one matrix. A product over one item's block then reads or writes
// those columns (leading dimension B N, item stride N), and a sum over every item and position
// (a weight gradient) is one product with inner dimension B N.

static int attention_shape_ok(int B, int C, int N) {
    return B > 0 && C >= 8 && C % 8 == 0 && N > 0;
}

// dst (C, B N) = *alpha src (B, C, N), alpha a device float or NULL for 1: item b's (C, N) block
// becomes columns [b N, (b + 1) N). Runs of N floats move together, so reads and writes are both
// coalesced.
__global__ void items_to_wide_kernel(float *dst, const float *alpha, const float *src, int B, int C,
                                     int N) {
    float a = alpha ? *alpha : 1.0f;
    long n = (long)B * C * N;
    CUDA_FOR(k, n) {
        long i = k % N, row = k / N, c = row % C, b = row / C;
        dst[(c * B + b) * N + i] = a * src[k];
    }
}

static int items_to_wide(float *dst, const float *alpha, const float *src, int B, int C, int N,
                         cudaStream_t stream) {
    long n = (long)B * C * N;
    items_to_wide_kernel<<<cuda_blocks(n), CUDA_THREADS, 0, stream>>>(dst, alpha, src, B, C, N);
    return cuda_launch_code();
}

// attention.c's attention_item_forward for every item at once, its products as strided-batched
// GEMMs: f = Wf x, g = Wg x, h = Wh x (the weights shared, stride 0); s[j][i] = g_j . f_i (into
// attn), the row softmax over all B N rows; o = h attn^T, y = Wo o; out = x + gamma y.
int attention_forward_cuda(float *out, AttentionSaved *s, const float *x, const float *wf,
                           const float *wg, const float *wh, const float *wo, const float *gamma,
                           int B, int C, int N, cudaStream_t stream) {
    if (!attention_shape_ok(B, C, N) || !gamma || out == x)
        return KERNELS_EINVAL;
    int C8 = C / 8, C2 = C / 2;
    long CN = (long)C * N, C8N = (long)C8 * N, C2N = (long)C2 * N, NN = (long)N * N;
    CHECK(gemm_strided_batched_cuda(0, 0, C8, N, C, 1.0f, wf, C, 0, x, N, CN, 0.0f, s->f, N, C8N, B,
                                    stream));
    CHECK(gemm_strided_batched_cuda(0, 0, C8, N, C, 1.0f, wg, C, 0, x, N, CN, 0.0f, s->g, N, C8N, B,
                                    stream));
    CHECK(gemm_strided_batched_cuda(0, 0, C2, N, C, 1.0f, wh, C, 0, x, N, CN, 0.0f, s->h, N, C2N, B,
                                    stream));
    CHECK(gemm_strided_batched_cuda(1, 0, N, N, C8, 1.0f, s->g, N, C8N, s->f, N, C8N, 0.0f, s->attn,
                                    N, NN, B, stream));
    CHECK(attention_softmax_forward_cuda(s->attn, s->attn, B * N, N, stream));
    CHECK(gemm_strided_batched_cuda(0, 1, C2, N, N, 1.0f, s->h, N, C2N, s->attn, N, NN, 0.0f, s->o,
                                    N, C2N, B, stream));
    CHECK(gemm_strided_batched_cuda(0, 0, C, N, C2, 1.0f, wo, C2, 0, s->o, N, C2N, 0.0f, s->y, N,
                                    CN, B, stream));
    long n = (long)B * CN;
    add_scaled_kernel<<<cuda_blocks(n), CUDA_THREADS, 0, stream>>>(out, x, gamma, s->y, n);
    return cuda_launch_code();
}

// The backward's intermediate gradients for B items, carved from the scratch in this order. The
// wide ones are (rows, B N); x and o are copied wide only when a weight gradient needs them.
typedef struct {
    float *dy;    // (C, B N)  gamma dout
    float *xw;    // (C, B N)  x
    float *ow;    // (C2, B N) o
    float *dO;    // (C2, B N)
    float *dh;    // (C2, B N)
    float *df;    // (C8, B N)
    float *dg;    // (C8, B N)
    float *dattn; // (B, N, N)
    float *ds;    // (B, N, N) the scores' gradient
} AttentionGrads;

long attention_scratch_floats_cuda(int B, int C, int N) {
    long C8 = C / 8, C2 = C / 2, BN = (long)B * N;
    return BN * (2 * C + 3 * C2 + 2 * C8) + 2 * BN * N;
}

static AttentionGrads attention_grads_carve(float *scratch, int B, int C, int N) {
    long C8 = C / 8, C2 = C / 2, BN = (long)B * N;
    AttentionGrads d;
    d.dy = scratch;
    d.xw = d.dy + C * BN;
    d.ow = d.xw + C * BN;
    d.dO = d.ow + C2 * BN;
    d.dh = d.dO + C2 * BN;
    d.df = d.dh + C2 * BN;
    d.dg = d.df + C8 * BN;
    d.dattn = d.dg + C8 * BN;
    d.ds = d.dattn + BN * N;
    return d;
}

// y = Wo o: dy = gamma dout (wide), dO = Wo^T dy and dWo += dy o^T, each one GEMM over all B N
// columns.
static int attention_backward_output(AttentionGrads *d, float *dwo, const float *dout,
                                     const AttentionSaved *s, const float *wo, const float *gamma,
                                     int B, int C, int N, cudaStream_t stream) {
    int C2 = C / 2, BN = B * N;
    CHECK(items_to_wide(d->dy, gamma, dout, B, C, N, stream));
    CHECK(gemm_cuda(1, 0, C2, BN, C, 1.0f, wo, C2, d->dy, BN, 0.0f, d->dO, BN, stream));
    if (!dwo)
        return 0;
    CHECK(items_to_wide(d->ow, NULL, s->o, B, C2, N, stream));
    return gemm_cuda(0, 1, C, C2, BN, 1.0f, d->dy, BN, d->ow, BN, 1.0f, dwo, C2, stream);
}

// o = h attn^T: dattn[j][i] = sum_c dO[c][j] h[c][i], dh = dO attn; the row softmax over all B N
// rows, ds = attn * (dattn - <attn, dattn>) (the kernel accumulates, so ds is zeroed first);
// s = g^T f: df = g ds, dg = f ds^T. Item b's dO, dh, df, dg are its columns of the wide matrices.
static int attention_backward_scores(AttentionGrads *d, const AttentionSaved *s, int B, int C,
                                     int N, cudaStream_t stream) {
    int C8 = C / 8, C2 = C / 2, BN = B * N;
    long C8N = (long)C8 * N, C2N = (long)C2 * N, NN = (long)N * N;
    CHECK(gemm_strided_batched_cuda(1, 0, N, N, C2, 1.0f, d->dO, BN, N, s->h, N, C2N, 0.0f,
                                    d->dattn, N, NN, B, stream));
    CHECK(gemm_strided_batched_cuda(0, 0, C2, N, N, 1.0f, d->dO, BN, N, s->attn, N, NN, 0.0f, d->dh,
                                    BN, N, B, stream));
    if (cudaMemsetAsync(d->ds, 0, sizeof(float) * (size_t)(B * NN), stream) != cudaSuccess)
        return KERNELS_ECUDA;
    CHECK(attention_softmax_backward_cuda(d->ds, d->dattn, s->attn, BN, N, stream));
    CHECK(gemm_strided_batched_cuda(0, 0, C8, N, N, 1.0f, s->g, N, C8N, d->ds, N, NN, 0.0f, d->df,
                                    BN, N, B, stream));
    return gemm_strided_batched_cuda(0, 1, C8, N, N, 1.0f, s->f, N, C8N, d->ds, N, NN, 0.0f, d->dg,
                                     BN, N, B, stream);
}

// The projections p = W x (p one of f, g, h with R rows): dx_b += W^T dp_b (W shared, dx item
// after item, beta 1 keeps the +=), and dW += dp x^T (x wide), one GEMM over all B N columns.
static int attention_backward_projection(float *dx, float *dw, const float *dp, const float *xw,
                                         const float *w, int R, int B, int C, int N,
                                         cudaStream_t stream) {
    int BN = B * N;
    CHECK(gemm_strided_batched_cuda(1, 0, C, N, R, 1.0f, w, C, 0, dp, BN, N, 1.0f, dx, N,
                                    (long)C * N, B, stream));
    if (!dw)
        return 0;
    return gemm_cuda(0, 1, R, C, BN, 1.0f, dp, BN, xw, BN, 1.0f, dw, C, stream);
}

// attention.c's attention_backward for every item at once. Its GEMMs with alpha = gamma take
// gamma dout (dy, made by a kernel that reads gamma on the device) with alpha 1 instead. The weight
// gradients are summed over items and positions inside one GEMM each (attention.c sums per item
// and then over the items: the same sums in another order); no atomics, so the same bits on every
// run.
int attention_backward_cuda(float *dx, float *dwf, float *dwg, float *dwh, float *dwo,
                            float *dgamma, const float *dout, const AttentionSaved *s,
                            const float *x, const float *wf, const float *wg, const float *wh,
                            const float *wo, const float *gamma, float *scratch, int B, int C,
                            int N, cudaStream_t stream) {
    if (!attention_shape_ok(B, C, N) || !gamma)
        return KERNELS_EINVAL;
    int C8 = C / 8, C2 = C / 2;
    long n = (long)B * C * N;
    AttentionGrads d = attention_grads_carve(scratch, B, C, N);

    // out = x + gamma y: dx += dout, dgamma += <dout, y>.
    CHECK(add_inplace_cuda(dx, dout, n, stream));
    if (dgamma) {
        dot_accumulate_kernel<<<1, 1024, 0, stream>>>(dgamma, dout, s->y, n);
        CHECK(cuda_launch_code());
    }
    CHECK(attention_backward_output(&d, dwo, dout, s, wo, gamma, B, C, N, stream));
    CHECK(attention_backward_scores(&d, s, B, C, N, stream));
    if (dwf || dwg || dwh)
        CHECK(items_to_wide(d.xw, NULL, x, B, C, N, stream));
    CHECK(attention_backward_projection(dx, dwf, d.df, d.xw, wf, C8, B, C, N, stream));
    CHECK(attention_backward_projection(dx, dwg, d.dg, d.xw, wg, C8, B, C, N, stream));
    return attention_backward_projection(dx, dwh, d.dh, d.xw, wh, C2, B, C, N, stream);
}
