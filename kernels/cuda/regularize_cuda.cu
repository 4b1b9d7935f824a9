// regularize_cuda.cu — the CUDA twins of kernels/regularize.c (the L1 activation penalty, BigGAN's
// orthogonal regularization, the gradient penalties' finite-difference set-up) and two scalar
// combiners the GPU training step uses to form its reported losses as gan.c does.
//
// Sums that are reported as values (an L1 sum, a penalty, ||W W^T||^2) are accumulated in double,
// as the CPU does, by one block or one thread in a fixed order: the same bits on every run, no
// atomics. Gradients are element-wise or cuBLAS products (gemm_cuda). n a flat element count; a
// weight is a matrix W (OUT, IN) as spectral norm views it; B images of n elements each.
#include "kernels/cuda/cuda_ops.h"

#include "kernels/cuda/cuda_internal.cuh"

// --- L1 activation penalty ----------------------------------------------------------------------

// One block: *sum = sum |inp| over n, in double.
__global__ void l1_forward_kernel(double *sum, const float *inp, long n) {
    __shared__ double scratch[32];
    double s = 0.0;
    for (long i = threadIdx.x; i < n; i += blockDim.x)
        s += fabs((double)inp[i]);
    s = block_sum(s, scratch);
    if (threadIdx.x == 0)
        *sum = s;
}

// dinp, inp (n).
__global__ void l1_backward_kernel(float *dinp, const float *inp, float scale, long n) {
    CUDA_FOR(i, n) {
        float x = inp[i];
        dinp[i] += x > 0.0f ? scale : (x < 0.0f ? -scale : 0.0f);
    }
}

int l1_forward_cuda(double *sum, const float *inp, long n, cudaStream_t stream) {
    if (n < 0 || !sum)
        return KERNELS_EINVAL;
    // n = 0 still launches: the sum is 0 and must be written
    l1_forward_kernel<<<1, 1024, 0, stream>>>(sum, inp, n);
    return cuda_launch_code();
}

int l1_backward_cuda(float *dinp, const float *inp, float scale, long n, cudaStream_t stream) {
    CHECK_COUNT(n);
    l1_backward_kernel<<<cuda_blocks(n), CUDA_THREADS, 0, stream>>>(dinp, inp, scale, n);
    return cuda_launch_code();
}

// (float)(sum_k lambda terms[k] / n[k]) in double, k in order: sagan.c's l1_value.
typedef struct {
    long n[16];
} L1Counts;

__global__ void l1_value_kernel(float *out, const double *terms, L1Counts c, int k, float lambda) {
    double v = 0.0;
    for (int i = 0; i < k; i++)
        v += lambda * terms[i] / (double)c.n[i];
    *out = (float)v;
}

int l1_value_cuda(float *out, const double *terms, const long *n, int k, float lambda,
                  cudaStream_t stream) {
    if (k < 0 || k > 16 || !out)
        return KERNELS_EINVAL;
    L1Counts c = {{0}};
    for (int i = 0; i < k; i++)
        c.n[i] = n[i];
    l1_value_kernel<<<1, 1, 0, stream>>>(out, terms, c, k, lambda);
    return cuda_launch_code();
}

__global__ void float_sum_kernel(float *out, const double *vals, int k) {
    float s = 0.0f;
    for (int i = 0; i < k; i++)
        s += (float)vals[i];
    *out = s;
}

int float_sum_cuda(float *out, const double *vals, int k, cudaStream_t stream) {
    if (k < 0 || !out)
        return KERNELS_EINVAL;
    float_sum_kernel<<<1, 1, 0, stream>>>(out, vals, k);
    return cuda_launch_code();
}

// --- orthogonal regularization ------------------------------------------------------------------
//
// regularize.c's math: wide W (OUT <= IN): M = W W^T with its diagonal zeroed, R = beta sum M^2,
// dw += 4 beta M W. Tall W: G = W^T W, R = beta (sum G^2 - sum_k |w_k|^4), dw += 4 beta W G -
// 4 beta |w_k|^2 w_k per row. Scratch: the Gram matrix (k^2 floats, k = min(OUT, IN)), then
// (8-byte aligned) OUT doubles for the rows' |w_k|^4 and one for sum G^2.

static long ortho_gram_floats(int OUT, int IN) {
    long k = OUT < IN ? OUT : IN;
    return (k * k + 1) & ~1L; // even, so the doubles after it are aligned
}

long ortho_scratch_floats_cuda(int OUT, int IN) {
    return ortho_gram_floats(OUT, IN) + 2L * (OUT + 1);
}

// One block over the k x k Gram matrix M: zero its diagonal when wide, and *sq = sum M^2 (after).
__global__ void ortho_gram_kernel(float *M, int k, int wide, double *sq) {
    __shared__ double scratch[32];
    long n = (long)k * k;
    double s = 0.0;
    for (long i = threadIdx.x; i < n; i += blockDim.x) {
        float m = M[i];
        if (wide && i / k == i % k) {
            m = 0.0f;
            M[i] = 0.0f;
        }
        s += (double)m * m;
    }
    s = block_sum(s, scratch);
    if (threadIdx.x == 0)
        *sq = s;
}

// Tall W: one block per row k: n2 = |w_k|^2 in double, dw_k -= (float)(4 beta n2) w_k, and
// row4[k] = n2^2.
__global__ void ortho_rows_kernel(float *dw, double *row4, const float *w, float beta, int IN) {
    __shared__ double scratch[32];
    const float *row = w + (long)blockIdx.x * IN;
    float *d = dw + (long)blockIdx.x * IN;
    double n2 = 0.0;
    for (int j = threadIdx.x; j < IN; j += blockDim.x)
        n2 += (double)row[j] * row[j];
    n2 = block_sum(n2, scratch);
    float c = (float)(4.0 * beta * n2);
    for (int j = threadIdx.x; j < IN; j += blockDim.x)
        d[j] -= c * row[j];
    if (threadIdx.x == 0)
        row4[blockIdx.x] = n2 * n2;
}

// *value = beta (sq - sum_k row4[k]), rows in order (rows = 0 for a wide W).
__global__ void ortho_value_kernel(double *value, const double *sq, const double *row4, int rows,
                                   float beta) {
    double r = *sq;
    for (int k = 0; k < rows; k++)
        r -= row4[k];
    *value = beta * r;
}

int ortho_reg_backward_cuda(float *dw, double *value, const float *w, float beta, float *scratch,
                            int OUT, int IN, cudaStream_t stream) {
    if (OUT < 1 || IN < 1 || !scratch)
        return KERNELS_EINVAL;
    float *M = scratch;
    double *row4 = (double *)(scratch + ortho_gram_floats(OUT, IN)), *sq = row4 + OUT;
    int wide = OUT <= IN, k = wide ? OUT : IN;
    if (wide)
        CHECK(gemm_cuda(0, 1, OUT, OUT, IN, 1.0f, w, IN, w, IN, 0.0f, M, OUT, stream));
    else
        CHECK(gemm_cuda(1, 0, IN, IN, OUT, 1.0f, w, IN, w, IN, 0.0f, M, IN, stream));
    ortho_gram_kernel<<<1, 1024, 0, stream>>>(M, k, wide, sq);
    CHECK(cuda_launch_code());
    if (wide) {
        CHECK(gemm_cuda(0, 0, OUT, IN, OUT, 4.0f * beta, M, OUT, w, IN, 1.0f, dw, IN, stream));
    } else {
        CHECK(gemm_cuda(0, 0, OUT, IN, IN, 4.0f * beta, w, IN, M, IN, 1.0f, dw, IN, stream));
        ortho_rows_kernel<<<OUT, CUDA_THREADS, 0, stream>>>(dw, row4, w, beta, IN);
        CHECK(cuda_launch_code());
    }
    if (value) {
        ortho_value_kernel<<<1, 1, 0, stream>>>(value, sq, row4, wide ? 0 : OUT, beta);
        CHECK(cuda_launch_code());
    }
    return 0;
}

// --- gradient penalties' finite-difference set-up -----------------------------------------------

// One block per image b: regularize.c's loop body for that image (see grad_penalty_fd_prepare),
// its share of P into terms[b].
__global__ void grad_penalty_fd_kernel(float *x2, float *dout2, double *terms, const float *grad,
                                       const float *x, int r1, float weight, float fd_step, int B,
                                       long n) {
    __shared__ double scratch[32];
    int b = blockIdx.x;
    const float *g = grad + b * n, *xb = x + b * n;
    float *xp = x2 + b * n, *xm = x2 + (B + b) * n;
    double n2 = 0.0;
    for (long i = threadIdx.x; i < n; i += blockDim.x)
        n2 += (double)g[i] * g[i];
    n2 = block_sum(n2, scratch);
    double norm = sqrt(n2), coef, term;
    if (r1) {
        term = 0.5 * n2 / B;
        coef = 1.0 / B;
    } else {
        term = (norm - 1.0) * (norm - 1.0) / B;
        coef = norm > 0.0 ? 2.0 * (norm - 1.0) / (norm * B) : 0.0;
    }
    if (!(norm > 0.0) || !isfinite(norm))
        coef = 0.0;
    float e = coef != 0.0 ? (float)(fd_step / norm) : 0.0f;
    for (long i = threadIdx.x; i < n; i += blockDim.x) {
        xp[i] = xb[i] + e * g[i];
        xm[i] = xb[i] - e * g[i];
    }
    if (threadIdx.x == 0) {
        float o = coef != 0.0 ? (float)(weight * coef / (2.0 * e)) : 0.0f;
        dout2[b] = o;
        dout2[B + b] = -o;
        terms[b] = term;
    }
}

// *value = weight sum_b terms[b], b in order.
__global__ void grad_penalty_value_kernel(double *value, const double *terms, int B, float weight) {
    double P = 0.0;
    for (int b = 0; b < B; b++)
        P += terms[b];
    *value = weight * P;
}

int grad_penalty_fd_prepare_cuda(float *x2, float *dout2, double *value, double *terms,
                                 const float *grad, const float *x, int r1, float weight,
                                 float fd_step, int B, long n, cudaStream_t stream) {
    if (B < 1 || n < 1 || !value || !terms)
        return KERNELS_EINVAL;
    grad_penalty_fd_kernel<<<B, CUDA_THREADS, 0, stream>>>(x2, dout2, terms, grad, x, r1, weight,
                                                           fd_step, B, n);
    CHECK(cuda_launch_code());
    grad_penalty_value_kernel<<<1, 1, 0, stream>>>(value, terms, B, weight);
    return cuda_launch_code();
}
