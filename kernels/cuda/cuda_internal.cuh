// cuda_internal.cuh — what the CUDA backend's .cu files share and nobody else sees: status
// mapping to KERNELS_E* codes, launch sizes, block reductions, and the per-(device, stream)
// context that holds the cuBLAS and cuDNN handles and the convolution workspace.
//
// C++ (nvcc) only. Not a public header: callers use kernels/cuda/cuda_ops.h.
#ifndef KERNELS_CUDA_CUDA_INTERNAL_CUH
#define KERNELS_CUDA_CUDA_INTERNAL_CUH

#include <math.h>
#include <pthread.h>
#include <stddef.h>

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include "kernels/kernels.h"

// --- status codes -------------------------------------------------------------------------------

static inline int cuda_code(cudaError_t e) {
    if (e == cudaSuccess)
        return 0;
    return e == cudaErrorMemoryAllocation ? KERNELS_ENOMEM : KERNELS_ECUDA;
}

static inline int cublas_code(cublasStatus_t s) {
    if (s == CUBLAS_STATUS_SUCCESS)
        return 0;
    return s == CUBLAS_STATUS_ALLOC_FAILED ? KERNELS_ENOMEM : KERNELS_ECUDA;
}

static inline int cudnn_code(cudnnStatus_t s) {
    if (s == CUDNN_STATUS_SUCCESS)
        return 0;
    if (s == CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED ||
        s == CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED)
        return KERNELS_ENOMEM;
    return KERNELS_ECUDA;
}

// Returns x's KERNELS_E* code from the enclosing function when it is not 0.
#define CHECK(x)                                                                                   \
    do {                                                                                           \
        int rc_ = (x);                                                                             \
        if (rc_)                                                                                   \
            return rc_;                                                                            \
    } while (0)

// Checks a flat count, and launches nothing for n = 0 (a grid of 0 blocks is an error).
#define CHECK_COUNT(n)                                                                             \
    do {                                                                                           \
        if ((n) < 0)                                                                               \
            return KERNELS_EINVAL;                                                                 \
        if ((n) == 0)                                                                              \
            return 0;                                                                              \
    } while (0)

// The code for the launch just made: a bad configuration or a missing kernel image shows here;
// faults while the kernel runs show at the caller's next synchronization instead.
static inline int cuda_launch_code(void) { return cuda_code(cudaGetLastError()); }

// --- launch sizes -------------------------------------------------------------------------------

// Threads per block of the element-wise kernels, and the most blocks one launch gets: kernels
// loop grid-stride, so past 65535 blocks (16M threads, ~60x what an H200 holds at once) more
// blocks only add scheduling.
#define CUDA_THREADS 256
#define CUDA_MAX_BLOCKS 65535

static inline unsigned cuda_blocks(long n) {
    long b = (n + CUDA_THREADS - 1) / CUDA_THREADS;
    return (unsigned)(b < 1 ? 1 : b > CUDA_MAX_BLOCKS ? CUDA_MAX_BLOCKS : b);
}

// for (long i = ...) over [0, n), grid-stride: each thread takes every (grid size)-th index, so
// any grid covers any n and neighbouring threads touch neighbouring elements (coalesced).
#define CUDA_FOR(i, n)                                                                             \
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < (n);                            \
         i += (long)gridDim.x * blockDim.x)

// --- block reductions ---------------------------------------------------------------------------

// The sum of v over the block, returned to every thread; blockDim.x a multiple of 32, at most
// 1024. scratch holds 32 T in shared memory. The order of the additions is fixed by the block
// size alone, so the result does not vary from run to run. Every thread of the block must call it.
template <typename T> __device__ T block_sum(T v, T *scratch) {
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    __syncthreads(); // the previous call's readers of scratch[0] are done
    if (lane == 0)
        scratch[warp] = v;
    __syncthreads();
    if (warp == 0) {
        T t = lane < warps ? scratch[lane] : T(0);
        for (int o = 16; o > 0; o >>= 1)
            t += __shfl_xor_sync(0xffffffffu, t, o);
        if (lane == 0)
            scratch[0] = t;
    }
    __syncthreads();
    return scratch[0];
}

// The maximum of v over the block, with block_sum's contract.
__device__ inline float block_max(float v, float *scratch) {
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0)
        scratch[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float t = lane < warps ? scratch[lane] : -INFINITY;
        for (int o = 16; o > 0; o >>= 1)
            t = fmaxf(t, __shfl_xor_sync(0xffffffffu, t, o));
        if (lane == 0)
            scratch[0] = t;
    }
    __syncthreads();
    return scratch[0];
}

// --- per-stream context -------------------------------------------------------------------------

// What the library calls need per (device, stream): handles bound to that stream once, at
// creation (so no call changes a shared handle's stream), and one workspace that only work on
// that stream uses, so stream order alone keeps its users apart. Created on the first call that
// names the pair, kept until cuda_cache_clear.
typedef struct {
    int device;
    cudaStream_t stream;
    pthread_mutex_t lock;  // held from cuda_ctx_acquire to cuda_ctx_release
    cublasHandle_t cublas; // NULL until the first gemm on this stream
    int cublas_tf32;       // the math mode last set on cublas: 1 TF32, 0 FP32
    cudnnHandle_t cudnn;   // NULL until the first convolution on this stream
    void *workspace;       // (workspace_bytes) device bytes for cuDNN, or NULL
    size_t workspace_bytes;
} CudaCtx;

// The context of (current device, stream), locked. Returns 0 or a KERNELS_E* code (then *out is
// untouched and nothing is locked).
int cuda_ctx_acquire(CudaCtx **out, cudaStream_t stream);
void cuda_ctx_release(CudaCtx *ctx);
// The context's cuBLAS handle with its math mode set from cuda_tf32_get(); created on first use.
int cuda_ctx_cublas(CudaCtx *ctx, cublasHandle_t *out);
// The context's cuDNN handle; created on first use.
int cuda_ctx_cudnn(CudaCtx *ctx, cudnnHandle_t *out);
// The context's workspace, grown to at least bytes (waiting for the stream's queued work before
// the old one is freed); *out is NULL when bytes is 0.
int cuda_ctx_workspace(CudaCtx *ctx, size_t bytes, void **out);

// Whether this host thread holds FP32 (cuda_fp32_hold).
int cuda_fp32_held_here(void);

// conv_cudnn.cu's part of cuda_cache_clear: drops the cached convolution shapes.
void conv2d_cache_clear_cuda(void);

#endif
