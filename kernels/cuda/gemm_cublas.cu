// gemm_cublas.cu — the CUDA twins of kernels/gemm.c: row-major SGEMM on cuBLAS and the
// fully-connected layer on top of it.
//
// cuBLAS is column-major. A row-major C (M, N) with row stride ldc is, read column-major, C^T
// (N, M) with leading dimension ldc, and C^T = op(B)^T op(A)^T: so cuBLAS gets the operands
// swapped (B first), the transposes kept as given, and M and N swapped. No data moves. The handle
// is the stream's own (cuda_ctx_cublas), its math mode follows the TF32 switch. Both functions
// go through cublasSgemmStridedBatched (gemm_cuda with one item): many products of one shape in
// one launch, which is what the attention block's per-item products need
// (hundreds of items, each product far too small to fill a GPU alone). The bias add and the bias
// gradient are small kernels of ours. Nothing here allocates (cuBLAS keeps its own workspace per
// handle). Not here: pointer-array batched products, other data types.
//
// B batch, IN input features, OUT output features.
#include "kernels/cuda/cuda_ops.h"

#include "kernels/cuda/cuda_internal.cuh"

static cublasOperation_t cublas_op(int transposed) {
    return transposed ? CUBLAS_OP_T : CUBLAS_OP_N;
}

// gemm_cuda's swap, item by item: item i's row-major C_i^T = op(B_i)^T op(A_i)^T, so B and its
// stride go first. A shared output (stride_c 0) is refused: the items would write one C at once.
int gemm_strided_batched_cuda(int ta, int tb, int M, int N, int K, float alpha, const float *A,
                              int lda, long stride_a, const float *B, int ldb, long stride_b,
                              float beta, float *C, int ldc, long stride_c, int batch,
                              cudaStream_t stream) {
    if (M < 0 || N < 0 || K < 0 || batch < 0 || stride_a < 0 || stride_b < 0 || stride_c < 0)
        return KERNELS_EINVAL;
    if (M == 0 || N == 0 || batch == 0)
        return 0;
    if (stride_c == 0 && batch > 1)
        return KERNELS_EINVAL;
    CudaCtx *ctx;
    int rc = cuda_ctx_acquire(&ctx, stream);
    if (rc)
        return rc;
    cublasHandle_t h;
    rc = cuda_ctx_cublas(ctx, &h);
    if (!rc)
        rc = cublas_code(cublasSgemmStridedBatched(h, cublas_op(tb), cublas_op(ta), N, M, K, &alpha,
                                                   B, ldb, stride_b, A, lda, stride_a, &beta, C,
                                                   ldc, stride_c, batch));
    cuda_ctx_release(ctx);
    return rc;
}

// One product: the batched call with one item (cuBLAS takes batch 1 as a plain GEMM).
int gemm_cuda(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
              const float *B, int ldb, float beta, float *C, int ldc, cudaStream_t stream) {
    return gemm_strided_batched_cuda(ta, tb, M, N, K, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0,
                                     1, stream);
}

// out (B, OUT) rows = bias (OUT).
__global__ void linear_bias_fill_kernel(float *out, const float *bias, int B, int OUT) {
    long n = (long)B * OUT;
    CUDA_FOR(k, n) out[k] = bias[k % OUT];
}

// dbias (OUT) += sum_b dout (B, OUT): one thread per feature, adding the rows in order as
// gemm.c does (neighbouring threads read neighbouring floats of a row).
__global__ void linear_bias_grad_kernel(float *dbias, const float *dout, int B, int OUT) {
    CUDA_FOR(o, OUT) {
        float acc = dbias[o];
        for (int b = 0; b < B; b++)
            acc += dout[(long)b * OUT + o];
        dbias[o] = acc;
    }
}

// out = inp w^T + bias: the bias rows are written first and the product added with beta = 1.
int linear_forward_cuda(float *out, const float *inp, const float *w, const float *bias, int B,
                        int IN, int OUT, cudaStream_t stream) {
    if (B <= 0 || IN <= 0 || OUT <= 0)
        return KERNELS_EINVAL;
    if (bias) {
        linear_bias_fill_kernel<<<cuda_blocks((long)B * OUT), CUDA_THREADS, 0, stream>>>(out, bias,
                                                                                         B, OUT);
        int rc = cuda_launch_code();
        if (rc)
            return rc;
    }
    return gemm_cuda(0, 1, B, OUT, IN, 1.0f, inp, IN, w, IN, bias ? 1.0f : 0.0f, out, OUT, stream);
}

// dinp (B, IN) += dout (B, OUT) w (OUT, IN); dw (OUT, IN) += dout^T inp; dbias (OUT) += sum_b dout.
int linear_backward_cuda(float *dinp, float *dw, float *dbias, const float *dout, const float *inp,
                         const float *w, int B, int IN, int OUT, cudaStream_t stream) {
    if (B <= 0 || IN <= 0 || OUT <= 0)
        return KERNELS_EINVAL;
    int rc = 0;
    if (dinp)
        rc = gemm_cuda(0, 0, B, IN, OUT, 1.0f, dout, OUT, w, IN, 1.0f, dinp, IN, stream);
    if (rc == 0 && dw)
        rc = gemm_cuda(1, 0, OUT, IN, B, 1.0f, dout, OUT, inp, IN, 1.0f, dw, IN, stream);
    if (rc == 0 && dbias) {
        linear_bias_grad_kernel<<<cuda_blocks(OUT), CUDA_THREADS, 0, stream>>>(dbias, dout, B, OUT);
        rc = cuda_launch_code();
    }
    return rc;
}
