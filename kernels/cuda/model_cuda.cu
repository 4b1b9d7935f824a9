// model_cuda.cu — the layers of G and D that are not generic kernels, on the GPU: the class
// embedding (G), the projection discriminator's inner product (D), an in-place add, and the SAGAN
// attention block composed from gemm_cuda and the row softmax of attention_cuda.cu. They are the
// CUDA twins of ops.c's embedding_forward/backward and add_inplace, of the projection loop in
// sagan.c, and of attention.c, with the same arguments plus the stream.
//
// Written for clarity first. Embedding and projection gradients are summed by one thread per table
// column over the batch in order (rows may share a label), so no atomics and the same bits on every
// run. The attention block runs item by item, as attention.c does, with the products on cuBLAS:
// about 15 small launches per item in the backward. A strided-batched GEMM would fold the items
// together; that is a speed question for later, not a correctness one. Not here: dropout, the
// regularizers, anything with a host-side loop over the data.
//
// B batch, C channels, C8 = C/8, C2 = C/2, N = H*W positions, K classes, D or F a row's length.
#include "kernels/cuda/cuda_ops.h"

#include "kernels/cuda/cuda_internal.cuh"

// Checks a flat count, and launches nothing for n = 0 (a grid of 0 blocks is an error).
#define CHECK_COUNT(n)                                                                             \
    do {                                                                                           \
        if ((n) < 0)                                                                               \
            return KERNELS_EINVAL;                                                                 \
        if ((n) == 0)                                                                              \
            return 0;                                                                              \
    } while (0)

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        int rc_ = (x);                                                                             \
        if (rc_)                                                                                   \
            return rc_;                                                                            \
    } while (0)

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

// out (n) = x (n) + *alpha y (n), alpha a device float; out may alias x.
__global__ void add_scaled_kernel(float *out, const float *x, const float *alpha, const float *y,
                                  long n) {
    float a = *alpha;
    CUDA_FOR(i, n) out[i] = x[i] + a * y[i];
}

// out (n) = *alpha inp (n), alpha a device float.
__global__ void scale_kernel(float *out, const float *alpha, const float *inp, long n) {
    float a = *alpha;
    CUDA_FOR(i, n) out[i] = a * inp[i];
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

static int attention_shape_ok(int B, int C, int N) {
    return B > 0 && C >= 8 && C % 8 == 0 && N > 0;
}

// attention.c's attention_item_forward per item, its products as GEMMs (the same ones sagan_cuda.c
// used): f = Wf x, g = Wg x, h = Wh x; s[j][i] = g_j . f_i (into attn), the row softmax over the
// whole batch at once; o = h attn^T, y = Wo o; out = x + gamma y.
int attention_forward_cuda(float *out, AttentionSaved *s, const float *x, const float *wf,
                           const float *wg, const float *wh, const float *wo, const float *gamma,
                           int B, int C, int N, cudaStream_t stream) {
    if (!attention_shape_ok(B, C, N) || !gamma || out == x)
        return KERNELS_EINVAL;
    int C8 = C / 8, C2 = C / 2;
    long CN = (long)C * N, NN = (long)N * N;
    for (int b = 0; b < B; b++) {
        const float *xb = x + b * CN;
        float *f = s->f + (long)b * C8 * N, *g = s->g + (long)b * C8 * N;
        float *h = s->h + (long)b * C2 * N, *attn = s->attn + b * NN;
        CHECK(gemm_cuda(0, 0, C8, N, C, 1.0f, wf, C, xb, N, 0.0f, f, N, stream));
        CHECK(gemm_cuda(0, 0, C8, N, C, 1.0f, wg, C, xb, N, 0.0f, g, N, stream));
        CHECK(gemm_cuda(0, 0, C2, N, C, 1.0f, wh, C, xb, N, 0.0f, h, N, stream));
        CHECK(gemm_cuda(1, 0, N, N, C8, 1.0f, g, N, f, N, 0.0f, attn, N, stream));
    }
    CHECK(attention_softmax_forward_cuda(s->attn, s->attn, B * N, N, stream));
    for (int b = 0; b < B; b++) {
        const float *h = s->h + (long)b * C2 * N, *attn = s->attn + b * NN;
        float *o = s->o + (long)b * C2 * N, *y = s->y + b * CN;
        CHECK(gemm_cuda(0, 1, C2, N, N, 1.0f, h, N, attn, N, 0.0f, o, N, stream));
        CHECK(gemm_cuda(0, 0, C, N, C2, 1.0f, wo, C2, o, N, 0.0f, y, N, stream));
    }
    long n = (long)B * CN;
    add_scaled_kernel<<<cuda_blocks(n), CUDA_THREADS, 0, stream>>>(out, x, gamma, s->y, n);
    return cuda_launch_code();
}

// One item's scratch, in this order: dy (C, N) = gamma dout, dO, dh (C2, N), df, dg (C8, N),
// dattn, ds (N, N).
long attention_scratch_floats_cuda(int C, int N) {
    long C8 = C / 8, C2 = C / 2;
    return (long)N * (C + 2 * C2 + 2 * C8) + 2L * N * N;
}

// attention.c's attention_item_backward per item. Its GEMMs with alpha = gamma take gamma dout
// (dy, made by a kernel that reads gamma on the device) with alpha 1 instead; the weight gradients
// are accumulated item after item by the GEMMs' beta = 1 (attention.c sums them per item and then
// over the items: the same sums in another order).
int attention_backward_cuda(float *dx, float *dwf, float *dwg, float *dwh, float *dwo,
                            float *dgamma, const float *dout, const AttentionSaved *s,
                            const float *x, const float *wf, const float *wg, const float *wh,
                            const float *wo, const float *gamma, float *scratch, int B, int C,
                            int N, cudaStream_t stream) {
    if (!attention_shape_ok(B, C, N) || !gamma)
        return KERNELS_EINVAL;
    int C8 = C / 8, C2 = C / 2;
    long CN = (long)C * N, NN = (long)N * N, n = (long)B * CN;
    float *dy = scratch, *dO = dy + CN, *dh = dO + (long)C2 * N, *df = dh + (long)C2 * N;
    float *dg = df + (long)C8 * N, *dattn = dg + (long)C8 * N, *ds = dattn + NN;

    // out = x + gamma y: dx += dout, dgamma += <dout, y>.
    CHECK(add_inplace_cuda(dx, dout, n, stream));
    if (dgamma) {
        dot_accumulate_kernel<<<1, 1024, 0, stream>>>(dgamma, dout, s->y, n);
        CHECK(cuda_launch_code());
    }
    for (int b = 0; b < B; b++) {
        const float *xb = x + b * CN, *f = s->f + (long)b * C8 * N, *g = s->g + (long)b * C8 * N;
        const float *h = s->h + (long)b * C2 * N, *attn = s->attn + b * NN;
        const float *o = s->o + (long)b * C2 * N;
        float *dxb = dx + b * CN;
        // y = Wo o: dy = gamma dout, dO = Wo^T dy, dWo += dy o^T.
        scale_kernel<<<cuda_blocks(CN), CUDA_THREADS, 0, stream>>>(dy, gamma, dout + b * CN, CN);
        CHECK(cuda_launch_code());
        CHECK(gemm_cuda(1, 0, C2, N, C, 1.0f, wo, C2, dy, N, 0.0f, dO, N, stream));
        if (dwo)
            CHECK(gemm_cuda(0, 1, C, C2, N, 1.0f, dy, N, o, N, 1.0f, dwo, C2, stream));
        // o = h attn^T: dattn[j][i] = sum_c dO[c][j] h[c][i], dh = dO attn.
        CHECK(gemm_cuda(1, 0, N, N, C2, 1.0f, dO, N, h, N, 0.0f, dattn, N, stream));
        CHECK(gemm_cuda(0, 0, C2, N, N, 1.0f, dO, N, attn, N, 0.0f, dh, N, stream));
        // the row softmax: ds = attn * (dattn - <attn, dattn>) (the kernel accumulates)
        if (cudaMemsetAsync(ds, 0, sizeof(float) * (size_t)NN, stream) != cudaSuccess)
            return KERNELS_ECUDA;
        CHECK(attention_softmax_backward_cuda(ds, dattn, attn, N, N, stream));
        // s = g^T f: df = g ds, dg = f ds^T.
        CHECK(gemm_cuda(0, 0, C8, N, N, 1.0f, g, N, ds, N, 0.0f, df, N, stream));
        CHECK(gemm_cuda(0, 1, C8, N, N, 1.0f, f, N, ds, N, 0.0f, dg, N, stream));
        // the projections: dx += W^T d(proj), dW += d(proj) x^T.
        CHECK(gemm_cuda(1, 0, C, N, C8, 1.0f, wf, C, df, N, 1.0f, dxb, N, stream));
        CHECK(gemm_cuda(1, 0, C, N, C8, 1.0f, wg, C, dg, N, 1.0f, dxb, N, stream));
        CHECK(gemm_cuda(1, 0, C, N, C2, 1.0f, wh, C, dh, N, 1.0f, dxb, N, stream));
        if (dwf)
            CHECK(gemm_cuda(0, 1, C8, C, N, 1.0f, df, N, xb, N, 1.0f, dwf, C, stream));
        if (dwg)
            CHECK(gemm_cuda(0, 1, C8, C, N, 1.0f, dg, N, xb, N, 1.0f, dwg, C, stream));
        if (dwh)
            CHECK(gemm_cuda(0, 1, C2, C, N, 1.0f, dh, N, xb, N, 1.0f, dwh, C, stream));
    }
    return 0;
}
