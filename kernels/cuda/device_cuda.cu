// device_cuda.cu — the CUDA backend's process state: the device query, the TF32 and BF16
// switches, and the per-(device, stream) contexts that hold the cuBLAS and cuDNN handles and the
// cuDNN workspace.
//
// Not here: any kernel (ops_cuda.cu and its siblings), choosing a device (the caller's
// cudaSetDevice decides; every call works on the current device) or creating streams (the
// caller owns its streams; a context only remembers the stream's handle value). A context lives
// until its stream is forgotten (cuda_stream_forget, before the stream is destroyed) or the cache
// is cleared.
#include "kernels/cuda/cuda_ops.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/cuda_internal.cuh"

// --- the TF32 switch ----------------------------------------------------------------------------

static int cuda_tf32_flag; // 0 or 1, read and written atomically

void cuda_tf32_set(int on) { __atomic_store_n(&cuda_tf32_flag, on ? 1 : 0, __ATOMIC_RELAXED); }

int cuda_tf32_get(void) { return __atomic_load_n(&cuda_tf32_flag, __ATOMIC_RELAXED); }

// --- the BF16 switch ----------------------------------------------------------------------------

static int cuda_bf16_flag; // 0 or 1, read and written atomically

void cuda_bf16_set(int on) { __atomic_store_n(&cuda_bf16_flag, on ? 1 : 0, __ATOMIC_RELAXED); }

int cuda_bf16_get(void) { return __atomic_load_n(&cuda_bf16_flag, __ATOMIC_RELAXED); }

static thread_local int cuda_fp32_held; // cuda_fp32_hold: this host thread's convolutions stay FP32

int cuda_fp32_hold(int hold) {
    int was = cuda_fp32_held;
    cuda_fp32_held = hold != 0;
    return was;
}

int cuda_fp32_held_here(void) { return cuda_fp32_held; }

// --- the device query ---------------------------------------------------------------------------

// Does nothing. cuda_device_available asks the runtime for its attributes, which fails when this
// build holds no code (SASS or PTX) that the current device can run.
__global__ void cuda_probe_kernel(void) {}

int cuda_device_available(char *why, size_t len) {
    char unused[1];
    if (!why || len == 0) {
        why = unused;
        len = sizeof unused;
    }
    int runtime = 0, driver = 0, count = 0, device = 0;
    cudaRuntimeGetVersion(&runtime);
    // The runtime reports driver version 0 when libcuda.so.1 cannot be loaded.
    cudaError_t e = cudaDriverGetVersion(&driver);
    if (e != cudaSuccess || driver == 0) {
        snprintf(why, len,
                 "no NVIDIA driver (libcuda.so.1 not found); this build needs one for CUDA %d.x",
                 runtime / 1000);
        cudaGetLastError();
        return 0;
    }
    // Within one major version a newer runtime runs on an older driver (minor version
    // compatibility); across majors it does not.
    if (driver / 1000 < runtime / 1000) {
        snprintf(why, len, "the NVIDIA driver supports CUDA %d.%d, older than this build's %d.%d",
                 driver / 1000, driver % 1000 / 10, runtime / 1000, runtime % 1000 / 10);
        return 0;
    }
    e = cudaGetDeviceCount(&count);
    if (e == cudaErrorNoDevice || (e == cudaSuccess && count == 0)) {
        const char *visible = getenv("CUDA_VISIBLE_DEVICES");
        snprintf(why, len, "no CUDA device%s%s%s", visible ? " (CUDA_VISIBLE_DEVICES=" : "",
                 visible ? visible : "", visible ? ")" : "");
        cudaGetLastError();
        return 0;
    }
    cudaDeviceProp prop;
    if (e == cudaSuccess)
        e = cudaGetDevice(&device);
    if (e == cudaSuccess)
        e = cudaGetDeviceProperties(&prop, device);
    if (e != cudaSuccess) {
        snprintf(why, len, "CUDA cannot start: %s", cudaGetErrorString(e));
        cudaGetLastError();
        return 0;
    }
    cudaFuncAttributes attr;
    e = cudaFuncGetAttributes(&attr, cuda_probe_kernel);
    if (e != cudaSuccess) {
        snprintf(why, len,
                 "device %d, %s (sm_%d%d), has no code in this build (%s); add its "
                 "architecture to CUDA_ARCH",
                 device, prop.name, prop.major, prop.minor, cudaGetErrorString(e));
        cudaGetLastError();
        return 0;
    }
    snprintf(why, len, "device %d of %d: %s, sm_%d%d, %.0f GiB, driver for CUDA %d.%d", device,
             count, prop.name, prop.major, prop.minor, (double)prop.totalGlobalMem / (1 << 30),
             driver / 1000, driver % 1000 / 10);
    return 1;
}

// --- per-stream contexts ------------------------------------------------------------------------

static pthread_mutex_t ctx_table_lock = PTHREAD_MUTEX_INITIALIZER;
static CudaCtx **ctx_table; // (ctx_len) contexts, each allocated once
static int ctx_len, ctx_cap;

int cuda_ctx_acquire(CudaCtx **out, cudaStream_t stream) {
    int device;
    int rc = cuda_code(cudaGetDevice(&device));
    if (rc)
        return rc;
    CudaCtx *ctx = NULL;
    pthread_mutex_lock(&ctx_table_lock);
    for (int i = 0; i < ctx_len && !ctx; i++)
        if (ctx_table[i]->device == device && ctx_table[i]->stream == stream)
            ctx = ctx_table[i];
    if (!ctx) {
        if (ctx_len == ctx_cap) {
            int cap = ctx_cap ? 2 * ctx_cap : 8;
            CudaCtx **grown = (CudaCtx **)realloc(ctx_table, sizeof(*grown) * cap);
            if (grown) {
                ctx_table = grown;
                ctx_cap = cap;
            }
        }
        if (ctx_len < ctx_cap)
            ctx = (CudaCtx *)calloc(1, sizeof(*ctx));
        if (ctx) {
            ctx->device = device;
            ctx->stream = stream;
            pthread_mutex_init(&ctx->lock, NULL);
            ctx_table[ctx_len++] = ctx;
        }
    }
    pthread_mutex_unlock(&ctx_table_lock);
    if (!ctx)
        return KERNELS_ENOMEM;
    // The context is locked after the table is released, so a thread waiting for a busy stream
    // does not hold up the others; contexts are freed by cuda_stream_forget and cuda_cache_clear.
    pthread_mutex_lock(&ctx->lock);
    *out = ctx;
    return 0;
}

void cuda_ctx_release(CudaCtx *ctx) { pthread_mutex_unlock(&ctx->lock); }

int cuda_ctx_cublas(CudaCtx *ctx, cublasHandle_t *out) {
    int rc;
    if (!ctx->cublas) {
        cublasHandle_t h;
        rc = cublas_code(cublasCreate(&h));
        if (rc)
            return rc;
        rc = cublas_code(cublasSetStream(h, ctx->stream));
        if (rc) {
            cublasDestroy(h);
            return rc;
        }
        ctx->cublas = h;
        ctx->cublas_tf32 = -1;
    }
    int tf32 = cuda_tf32_get();
    if (tf32 != ctx->cublas_tf32) {
        // CUBLAS_DEFAULT_MATH never rounds FP32 inputs to a narrower type; TF32 mode does.
        rc = cublas_code(cublasSetMathMode(ctx->cublas, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH
                                                             : CUBLAS_DEFAULT_MATH));
        if (rc)
            return rc;
        ctx->cublas_tf32 = tf32;
    }
    *out = ctx->cublas;
    return 0;
}

int cuda_ctx_cudnn(CudaCtx *ctx, cudnnHandle_t *out) {
    if (!ctx->cudnn) {
        cudnnHandle_t h;
        int rc = cudnn_code(cudnnCreate(&h));
        if (rc)
            return rc;
        rc = cudnn_code(cudnnSetStream(h, ctx->stream));
        if (rc) {
            cudnnDestroy(h);
            return rc;
        }
        ctx->cudnn = h;
    }
    *out = ctx->cudnn;
    return 0;
}

// Grown in whole MiB so a run of slightly larger shapes does not reallocate each time.
int cuda_ctx_workspace(CudaCtx *ctx, size_t bytes, void **out) {
    if (bytes > ctx->workspace_bytes) {
        if (ctx->workspace) {
            // Work already queued on this stream may still read the old workspace.
            int rc = cuda_code(cudaStreamSynchronize(ctx->stream));
            if (rc)
                return rc;
            cudaFree(ctx->workspace);
            ctx->workspace = NULL;
            ctx->workspace_bytes = 0;
        }
        size_t mib = (size_t)1 << 20;
        size_t want = (bytes + mib - 1) / mib * mib;
        int rc = cuda_code(cudaMalloc(&ctx->workspace, want));
        if (rc) {
            ctx->workspace = NULL;
            return rc;
        }
        ctx->workspace_bytes = want;
    }
    *out = bytes ? ctx->workspace : NULL;
    return 0;
}

static void ctx_free(CudaCtx *ctx) {
    if (ctx->cublas)
        cublasDestroy(ctx->cublas);
    if (ctx->cudnn)
        cudnnDestroy(ctx->cudnn);
    if (ctx->workspace)
        cudaFree(ctx->workspace);
    pthread_mutex_destroy(&ctx->lock);
    free(ctx);
}

int cuda_stream_forget(cudaStream_t stream) {
    int device;
    if (cudaGetDevice(&device) != cudaSuccess || cudaStreamSynchronize(stream) != cudaSuccess) {
        cudaGetLastError();
        return KERNELS_ECUDA;
    }
    CudaCtx *ctx = NULL;
    pthread_mutex_lock(&ctx_table_lock);
    for (int i = 0; i < ctx_len && !ctx; i++)
        if (ctx_table[i]->device == device && ctx_table[i]->stream == stream) {
            ctx = ctx_table[i];
            ctx_table[i] = ctx_table[--ctx_len]; // order does not matter
        }
    pthread_mutex_unlock(&ctx_table_lock);
    if (ctx) {
        // Out of the table, so nobody new finds it; a caller still inside one of our functions
        // on this stream (the caller's bug) is waited for.
        pthread_mutex_lock(&ctx->lock);
        pthread_mutex_unlock(&ctx->lock);
        ctx_free(ctx);
    }
    return 0;
}

int cuda_stream_contexts(void) {
    pthread_mutex_lock(&ctx_table_lock);
    int n = ctx_len;
    pthread_mutex_unlock(&ctx_table_lock);
    return n;
}

void cuda_cache_clear(void) {
    conv2d_cache_clear_cuda();
    pthread_mutex_lock(&ctx_table_lock);
    // Each context's objects are freed with its own device current, then the caller's restored.
    int current = 0;
    if (ctx_len)
        cudaGetDevice(&current);
    for (int i = 0; i < ctx_len; i++) {
        CudaCtx *ctx = ctx_table[i];
        cudaSetDevice(ctx->device);
        ctx_free(ctx);
    }
    if (ctx_len)
        cudaSetDevice(current);
    free(ctx_table);
    ctx_table = NULL;
    ctx_len = ctx_cap = 0;
    cudaGetLastError();
    pthread_mutex_unlock(&ctx_table_lock);
}
