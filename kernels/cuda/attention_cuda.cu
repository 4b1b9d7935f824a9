// attention_cuda.cu — the row softmax of the SAGAN attention block (attention.c's softmax_row and
// the softmax step of its backward) on the GPU.
//
// One block per row: the row's max and sum are block reductions in a fixed order (the same
// result on every run), and each thread owns the same elements in every pass, so the forward may
// write over its input. The exponential is the device's expf; attention.c's vectorizable
// exp_nonpositive differs from it by under 1e-7 relative, and flushes below e^-40 to 0 where expf
// returns a value under 4e-18, which nothing downstream can tell apart. Not here (yet): the
// projections and mixing products of the block, which become cuBLAS calls (gemm_cuda) when the
// attention forward and backward move to the GPU.
//
// rows independent softmaxes of length N; in the block rows = B*N (row j: position j over all i).
#include "kernels/cuda/cuda_ops.h"

#include "kernels/cuda/cuda_internal.cuh"

// Threads per row: a multiple of 32 covering short rows, at most 256 (N = 256 at fmnist32's
// 16x16 attention: one element per thread).
static int softmax_threads(int N) {
    int t = (N + 31) / 32 * 32;
    return t < CUDA_THREADS ? t : CUDA_THREADS;
}

// attn, scores (rows, N); one block per row; attn may alias scores.
__global__ void attention_softmax_forward_kernel(float *attn, const float *scores, int N) {
    __shared__ float scratch[32];
    const float *s = scores + (long)blockIdx.x * N;
    float *a = attn + (long)blockIdx.x * N;
    float mx = -INFINITY;
    for (int i = threadIdx.x; i < N; i += blockDim.x)
        mx = fmaxf(mx, s[i]);
    mx = block_max(mx, scratch); // ends in __syncthreads: every read of the row is done
    float sum = 0.0f;
    for (int i = threadIdx.x; i < N; i += blockDim.x) {
        float e = expf(s[i] - mx);
        a[i] = e;
        sum += e;
    }
    sum = block_sum(sum, scratch);
    float inv = 1.0f / sum;
    for (int i = threadIdx.x; i < N; i += blockDim.x)
        a[i] *= inv;
}

// dscores += attn * (dattn - <attn, dattn>) per row. dscores, dattn, attn (rows, N).
__global__ void attention_softmax_backward_kernel(float *dscores, const float *dattn,
                                                  const float *attn, int N) {
    __shared__ float scratch[32];
    long base = (long)blockIdx.x * N;
    float pd = 0.0f;
    for (int i = threadIdx.x; i < N; i += blockDim.x)
        pd += attn[base + i] * dattn[base + i];
    pd = block_sum(pd, scratch);
    for (int i = threadIdx.x; i < N; i += blockDim.x)
        dscores[base + i] += attn[base + i] * (dattn[base + i] - pd);
}

int attention_softmax_forward_cuda(float *attn, const float *scores, int rows, int N,
                                   cudaStream_t stream) {
    if (rows < 0 || N <= 0)
        return KERNELS_EINVAL;
    if (rows == 0)
        return 0;
    attention_softmax_forward_kernel<<<rows, softmax_threads(N), 0, stream>>>(attn, scores, N);
    return cuda_launch_code();
}

int attention_softmax_backward_cuda(float *dscores, const float *dattn, const float *attn, int rows,
                                    int N, cudaStream_t stream) {
    if (rows < 0 || N <= 0 || dscores == dattn)
        return KERNELS_EINVAL;
    if (rows == 0)
        return 0;
    attention_softmax_backward_kernel<<<rows, softmax_threads(N), 0, stream>>>(dscores, dattn, attn,
                                                                               N);
    return cuda_launch_code();
}
