// conv_cudnn.cu — the CUDA twin of kernels/conv.c: 2-D convolution forward, backward-data,
// backward-filter and the bias gradient on cuDNN 9's convolution API, with a cache per shape.
//
// Every distinct (device, TF32 switch, BF16 switch, shape) gets one cache entry the first time it
// is seen: the tensor, filter and convolution descriptors (host objects, cheap). The algorithm of each
// pass (forward, backward-data, backward-filter) is chosen the first time that pass runs, by
// cudnnFind*Algorithm, which times the candidates on the device, and is kept for the life of the
// process, as conv.c keeps its oneDNN primitives. Entries are never evicted: a process sees a
// handful of shapes (one per layer per batch size).
//
// Which algorithms may be chosen: only deterministic ones (the same bits on every run, so a
// training run can be replayed), only those needing at most CONV_WORKSPACE_MAX bytes of
// workspace, and with TF32 off only FP32 ones (the pass's descriptor is set to CUDNN_FMA_MATH,
// and candidates that report tensor-op math are skipped). With TF32 on, cuDNN may pick
// tensor-core kernels that round inputs to TF32. Each pass has its own convolution descriptor,
// because the math type lives there and may differ between passes.
//
// Gradients are accumulated (+=) as every kernel here does: cuDNN blends into the output with
// beta = 1. The forward writes (beta = 0), then adds the bias broadcast over (B, OH, OW).
// The workspace is the stream's (cuda_ctx_workspace), so concurrent calls on different streams
// never share one.
//
// BF16 (cuda_bf16_set): the entry's x, y and w descriptors are BF16 (cuDNN's BF16 configuration:
// all three BF16, FP32 compute) and each pass converts what it reads into bf16 copies at the end
// of the stream's workspace (to_bf16_kernel, round to nearest even), lets cuDNN write its result
// there in bf16 (beta = 0), and converts that back: written for the forward, added for the
// gradients (from_bf16_kernel). The bias and its gradient stay FP32 (the f32 descriptor y32).
//
// Not here: grouped or dilated convolution, FP16, other layouts, fused bias + activation, cuDNN's
// graph (backend) API.
//
// B batch, C input channels, H, W input spatial, OC output channels, K kernel, S stride, P pad,
// OH, OW output spatial. All tensors NCHW float32; weights OIHW.
#include "kernels/cuda/cuda_ops.h"

#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/cuda_internal.cuh"

// The most workspace one pass may ask for. The fmnist32 layers need far less; this only keeps
// the FFT-style algorithms, which want hundreds of MiB on large shapes, from being picked.
#define CONV_WORKSPACE_MAX ((size_t)256 << 20)

typedef struct {
    int device, tf32, bf16;
    int B, C, H, W, OC, K, S, P, OH, OW;
} ConvKey;

enum { PASS_FWD, PASS_BWD_DATA, PASS_BWD_FILTER, PASS_COUNT };

typedef struct {
    int found;                         // 0 until the algorithm is chosen
    int algo;                          // a cudnnConvolution{Fwd,BwdData,BwdFilter}Algo_t
    size_t workspace;                  // bytes the algorithm needs
    cudnnConvolutionDescriptor_t conv; // this pass's own, carrying its math type
} ConvPass;

typedef struct {
    ConvKey key;
    pthread_mutex_t lock;         // held while a pass's algorithm is searched for
    cudnnTensorDescriptor_t x;    // (B, C, H, W), BF16 in a BF16 entry
    cudnnTensorDescriptor_t y;    // (B, OC, OH, OW), likewise
    cudnnTensorDescriptor_t y32;  // (B, OC, OH, OW) FP32: the bias and its gradient
    cudnnTensorDescriptor_t bias; // (1, OC, 1, 1)
    cudnnFilterDescriptor_t w;    // (OC, C, K, K), BF16 in a BF16 entry
    ConvPass pass[PASS_COUNT];
} ConvEntry;

static pthread_mutex_t conv_cache_lock = PTHREAD_MUTEX_INITIALIZER;
static ConvEntry **conv_cache; // (conv_cache_len) entries, each allocated once
static int conv_cache_len, conv_cache_cap;

static int key_make(ConvKey *k, int B, int C, int H, int W, int OC, int K, int S, int P) {
    if (B <= 0 || C <= 0 || H <= 0 || W <= 0 || OC <= 0 || K <= 0 || S <= 0 || P < 0 ||
        H + 2 * P < K || W + 2 * P < K)
        return KERNELS_EINVAL;
    memset(k, 0, sizeof(*k)); // the key is compared with memcmp
    int rc = cuda_code(cudaGetDevice(&k->device));
    if (rc)
        return rc;
    k->tf32 = cuda_tf32_get();
    k->bf16 = cuda_bf16_get() && !cuda_fp32_held_here();
    k->B = B, k->C = C, k->H = H, k->W = W, k->OC = OC, k->K = K, k->S = S, k->P = P;
    k->OH = (H + 2 * P - K) / S + 1;
    k->OW = (W + 2 * P - K) / S + 1;
    return 0;
}

// Safe on a half-built entry: descriptors not yet created are NULL.
static void entry_free(ConvEntry *e) {
    for (int i = 0; i < PASS_COUNT; i++)
        if (e->pass[i].conv)
            cudnnDestroyConvolutionDescriptor(e->pass[i].conv);
    if (e->x)
        cudnnDestroyTensorDescriptor(e->x);
    if (e->y)
        cudnnDestroyTensorDescriptor(e->y);
    if (e->y32)
        cudnnDestroyTensorDescriptor(e->y32);
    if (e->bias)
        cudnnDestroyTensorDescriptor(e->bias);
    if (e->w)
        cudnnDestroyFilterDescriptor(e->w);
    pthread_mutex_destroy(&e->lock);
    free(e);
}

#define CUDNN_TRY(call)                                                                            \
    do {                                                                                           \
        rc = cudnn_code(call);                                                                     \
        if (rc)                                                                                    \
            goto fail;                                                                             \
    } while (0)

// A new entry for key k, its descriptors set; NULL-free on failure.
static int entry_create(ConvEntry **out, const ConvKey *k) {
    ConvEntry *e = (ConvEntry *)calloc(1, sizeof(*e));
    if (!e)
        return KERNELS_ENOMEM;
    int rc = 0, n, c, h, w;
    cudnnDataType_t io = k->bf16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_FLOAT;
    e->key = *k;
    pthread_mutex_init(&e->lock, NULL);
    CUDNN_TRY(cudnnCreateTensorDescriptor(&e->x));
    CUDNN_TRY(cudnnCreateTensorDescriptor(&e->y));
    CUDNN_TRY(cudnnCreateTensorDescriptor(&e->y32));
    CUDNN_TRY(cudnnCreateTensorDescriptor(&e->bias));
    CUDNN_TRY(cudnnCreateFilterDescriptor(&e->w));
    CUDNN_TRY(cudnnSetTensor4dDescriptor(e->x, CUDNN_TENSOR_NCHW, io, k->B, k->C, k->H, k->W));
    CUDNN_TRY(cudnnSetTensor4dDescriptor(e->y, CUDNN_TENSOR_NCHW, io, k->B, k->OC, k->OH, k->OW));
    CUDNN_TRY(cudnnSetTensor4dDescriptor(e->y32, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, k->B, k->OC,
                                         k->OH, k->OW));
    CUDNN_TRY(
        cudnnSetTensor4dDescriptor(e->bias, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 1, k->OC, 1, 1));
    CUDNN_TRY(cudnnSetFilter4dDescriptor(e->w, io, CUDNN_TENSOR_NCHW, k->OC, k->C, k->K, k->K));
    for (int i = 0; i < PASS_COUNT; i++) {
        cudnnConvolutionDescriptor_t conv;
        CUDNN_TRY(cudnnCreateConvolutionDescriptor(&conv));
        e->pass[i].conv = conv;
        // Cross-correlation, as conv.c (oneDNN) and PyTorch compute it.
        CUDNN_TRY(cudnnSetConvolution2dDescriptor(conv, k->P, k->P, k->S, k->S, 1, 1,
                                                  CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
        CUDNN_TRY(cudnnSetConvolutionMathType(
            conv, k->tf32 || k->bf16 ? CUDNN_TENSOR_OP_MATH : CUDNN_FMA_MATH));
    }
    // cuDNN's idea of the output shape must be ours, or the y descriptor lies.
    CUDNN_TRY(
        cudnnGetConvolution2dForwardOutputDim(e->pass[PASS_FWD].conv, e->x, e->w, &n, &c, &h, &w));
    if (n != k->B || c != k->OC || h != k->OH || w != k->OW) {
        rc = KERNELS_EINVAL;
        goto fail;
    }
    *out = e;
    return 0;
fail:
    entry_free(e);
    return rc;
}

// Finds or makes the entry for key k (not locked: its descriptors never change after creation).
static int entry_get(ConvEntry **out, const ConvKey *k) {
    int rc = 0;
    ConvEntry *e = NULL;
    pthread_mutex_lock(&conv_cache_lock);
    for (int i = 0; i < conv_cache_len && !e; i++)
        if (!memcmp(&conv_cache[i]->key, k, sizeof(*k)))
            e = conv_cache[i];
    if (!e) {
        if (conv_cache_len == conv_cache_cap) {
            int cap = conv_cache_cap ? 2 * conv_cache_cap : 16;
            ConvEntry **grown = (ConvEntry **)realloc(conv_cache, sizeof(*grown) * cap);
            if (grown) {
                conv_cache = grown;
                conv_cache_cap = cap;
            }
        }
        if (conv_cache_len < conv_cache_cap)
            rc = entry_create(&e, k);
        else
            rc = KERNELS_ENOMEM;
        if (!rc)
            conv_cache[conv_cache_len++] = e;
    }
    pthread_mutex_unlock(&conv_cache_lock);
    if (!rc)
        *out = e;
    return rc;
}

// The first acceptable candidate of a Find* result (sorted fastest first) into p; see the file
// comment for what is acceptable. The three passes' result types have the same fields.
template <typename Perf> static int pass_pick(ConvPass *p, const Perf *perf, int n, int tf32) {
    for (int i = 0; i < n; i++) {
        const Perf *c = &perf[i];
        int tensor_op = c->mathType == CUDNN_TENSOR_OP_MATH ||
                        c->mathType == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION;
        if (c->status != CUDNN_STATUS_SUCCESS || c->determinism != CUDNN_DETERMINISTIC ||
            c->memory > CONV_WORKSPACE_MAX || (tensor_op && !tf32))
            continue;
        int rc =
            cudnn_code(cudnnSetConvolutionMathType(p->conv, tf32 ? c->mathType : CUDNN_FMA_MATH));
        if (rc)
            return rc;
        p->algo = (int)c->algo;
        p->workspace = c->memory;
        p->found = 1;
        return 0;
    }
    return KERNELS_ECUDA;
}

// Chooses the algorithm of pass which on first use, with handle h (its stream's). The search
// runs the candidates on the device, on h's stream, into buffers cuDNN allocates itself.
static int entry_pass(ConvEntry *e, int which, cudnnHandle_t h) {
    ConvPass *p = &e->pass[which];
    int rc = 0, n = 0;
    pthread_mutex_lock(&e->lock);
    if (!p->found) {
        int tf32 = e->key.tf32 || e->key.bf16; // tensor-core kernels allowed
        if (which == PASS_FWD) {
            cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
            rc = cudnn_code(cudnnFindConvolutionForwardAlgorithm(
                h, e->x, e->w, p->conv, e->y, CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &n, perf));
            if (!rc)
                rc = pass_pick(p, perf, n, tf32);
        } else if (which == PASS_BWD_DATA) {
            cudnnConvolutionBwdDataAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
            rc = cudnn_code(cudnnFindConvolutionBackwardDataAlgorithm(
                h, e->w, e->y, p->conv, e->x, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &n, perf));
            if (!rc)
                rc = pass_pick(p, perf, n, tf32);
        } else {
            cudnnConvolutionBwdFilterAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
            rc = cudnn_code(cudnnFindConvolutionBackwardFilterAlgorithm(
                h, e->x, e->y, p->conv, e->w, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &n, perf));
            if (!rc)
                rc = pass_pick(p, perf, n, tf32);
        }
    }
    pthread_mutex_unlock(&e->lock);
    return rc;
}

// The stream's context (locked), its cuDNN handle and the entry for this shape.
static int conv_begin(CudaCtx **ctx, cudnnHandle_t *h, ConvEntry **e, int B, int C, int H, int W,
                      int OC, int K, int S, int P, cudaStream_t stream) {
    ConvKey k;
    int rc = key_make(&k, B, C, H, W, OC, K, S, P);
    if (rc)
        return rc;
    rc = cuda_ctx_acquire(ctx, stream);
    if (rc)
        return rc;
    rc = cuda_ctx_cudnn(*ctx, h);
    if (!rc)
        rc = entry_get(e, &k);
    if (rc)
        cuda_ctx_release(*ctx);
    return rc;
}

// Pass which of entry e, ready to run on ctx's stream: its algorithm chosen (first use) and the
// stream's workspace grown to what the algorithm needs (*ws).
static int pass_ready(CudaCtx *ctx, ConvEntry *e, int which, cudnnHandle_t h, const ConvPass **p,
                      void **ws) {
    *p = &e->pass[which];
    int rc = entry_pass(e, which, h);
    return rc ? rc : cuda_ctx_workspace(ctx, (*p)->workspace, ws);
}

// --- BF16 ----------------------------------------------------------------------------------------

// bf16 bits of x, rounded to nearest, ties to even (NaN stays a quiet NaN): what kernels/conv.c's
// oneDNN reorders and the tests' bf16_round do.
__device__ inline unsigned short bf16_bits(float x) {
    unsigned u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (unsigned short)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}

__global__ void to_bf16_kernel(unsigned short *dst, const float *src, long n) {
    CUDA_FOR(i, n) dst[i] = bf16_bits(src[i]);
}

// dst = src (add 0) or dst += src (add 1), src in bf16.
__global__ void from_bf16_kernel(float *dst, const unsigned short *src, long n, int add) {
    CUDA_FOR(i, n) {
        float v = __uint_as_float((unsigned)src[i] << 16);
        dst[i] = add ? dst[i] + v : v;
    }
}

static int to_bf16(unsigned short *dst, const float *src, long n, cudaStream_t stream) {
    to_bf16_kernel<<<cuda_blocks(n), CUDA_THREADS, 0, stream>>>(dst, src, n);
    return cuda_launch_code();
}

static int from_bf16(float *dst, const unsigned short *src, long n, int add, cudaStream_t stream) {
    from_bf16_kernel<<<cuda_blocks(n), CUDA_THREADS, 0, stream>>>(dst, src, n, add);
    return cuda_launch_code();
}

// Bytes of n bf16 values, rounded up so the next buffer stays 256-byte aligned.
static size_t bf16_bytes(long n) { return ((size_t)n * 2 + 255) & ~(size_t)255; }

// A BF16 entry's buffers, carved from the stream's workspace after cuDNN's own part (ws, `used`
// bytes rounded up): x, w and y in bf16, and g, the pass's bf16 result when it is a gradient.
typedef struct {
    void *ws;
    unsigned short *x, *w, *y, *g;
} Bf16Bufs;

static int bf16_bufs(CudaCtx *ctx, const ConvKey *k, size_t used, Bf16Bufs *b) {
    long nx = (long)k->B * k->C * k->H * k->W, nw = (long)k->OC * k->C * k->K * k->K,
         ny = (long)k->B * k->OC * k->OH * k->OW;
    size_t base = (used + 255) & ~(size_t)255;
    size_t total = base + bf16_bytes(nx) + bf16_bytes(nw) + bf16_bytes(ny) +
                   bf16_bytes(nx > nw ? nx : nw);
    int rc = cuda_ctx_workspace(ctx, total, &b->ws);
    if (rc)
        return rc;
    char *p = (char *)b->ws + base;
    b->x = (unsigned short *)p;
    b->w = (unsigned short *)(p += bf16_bytes(nx));
    b->y = (unsigned short *)(p += bf16_bytes(nw));
    b->g = (unsigned short *)(p + bf16_bytes(ny));
    return 0;
}

static int conv_forward_bf16(CudaCtx *ctx, cudnnHandle_t h, ConvEntry *e, float *out,
                             const float *inp, const float *w, cudaStream_t stream) {
    const ConvKey *k = &e->key;
    const ConvPass *p = &e->pass[PASS_FWD];
    const float one = 1.0f, zero = 0.0f;
    Bf16Bufs b;
    int rc = entry_pass(e, PASS_FWD, h);
    if (!rc)
        rc = bf16_bufs(ctx, k, p->workspace, &b);
    if (!rc)
        rc = to_bf16(b.x, inp, (long)k->B * k->C * k->H * k->W, stream);
    if (!rc)
        rc = to_bf16(b.w, w, (long)k->OC * k->C * k->K * k->K, stream);
    if (!rc)
        rc = cudnn_code(cudnnConvolutionForward(h, &one, e->x, b.x, e->w, b.w, p->conv,
                                                (cudnnConvolutionFwdAlgo_t)p->algo, b.ws,
                                                p->workspace, &zero, e->y, b.y));
    if (!rc)
        rc = from_bf16(out, b.y, (long)k->B * k->OC * k->OH * k->OW, 0, stream);
    return rc;
}

// Both gradients' passes are made ready before the workspace is sized, so it grows (and moves) at
// most once, before anything is converted into it.
static int conv_backward_bf16(CudaCtx *ctx, cudnnHandle_t h, ConvEntry *e, float *dinp, float *dw,
                              const float *dout, const float *inp, const float *w,
                              cudaStream_t stream) {
    const ConvKey *k = &e->key;
    const ConvPass *pd = &e->pass[PASS_BWD_DATA], *pf = &e->pass[PASS_BWD_FILTER];
    long nx = (long)k->B * k->C * k->H * k->W, nw = (long)k->OC * k->C * k->K * k->K;
    const float one = 1.0f, zero = 0.0f;
    size_t used = 0;
    int rc = 0;
    if (dinp && !(rc = entry_pass(e, PASS_BWD_DATA, h)))
        used = pd->workspace;
    if (!rc && dw && !(rc = entry_pass(e, PASS_BWD_FILTER, h)) && pf->workspace > used)
        used = pf->workspace;
    Bf16Bufs b;
    if (!rc)
        rc = bf16_bufs(ctx, k, used, &b);
    if (!rc)
        rc = to_bf16(b.y, dout, (long)k->B * k->OC * k->OH * k->OW, stream);
    if (!rc && dinp) {
        rc = to_bf16(b.w, w, nw, stream);
        if (!rc)
            rc = cudnn_code(cudnnConvolutionBackwardData(h, &one, e->w, b.w, e->y, b.y, pd->conv,
                                                         (cudnnConvolutionBwdDataAlgo_t)pd->algo,
                                                         b.ws, pd->workspace, &zero, e->x, b.g));
        if (!rc)
            rc = from_bf16(dinp, b.g, nx, 1, stream);
    }
    if (!rc && dw) {
        rc = to_bf16(b.x, inp, nx, stream);
        if (!rc)
            rc = cudnn_code(cudnnConvolutionBackwardFilter(
                h, &one, e->x, b.x, e->y, b.y, pf->conv, (cudnnConvolutionBwdFilterAlgo_t)pf->algo,
                b.ws, pf->workspace, &zero, e->w, b.g));
        if (!rc)
            rc = from_bf16(dw, b.g, nw, 1, stream);
    }
    return rc;
}

// --- the API -------------------------------------------------------------------------------------

int conv2d_forward_cuda(float *out, const float *inp, const float *w, const float *bias, int B,
                        int C, int H, int W, int OC, int K, int S, int P, cudaStream_t stream) {
    CudaCtx *ctx;
    cudnnHandle_t h;
    ConvEntry *e;
    int rc = conv_begin(&ctx, &h, &e, B, C, H, W, OC, K, S, P, stream);
    if (rc)
        return rc;
    const float one = 1.0f, zero = 0.0f;
    const ConvPass *p;
    void *ws = NULL;
    if (e->key.bf16) {
        rc = conv_forward_bf16(ctx, h, e, out, inp, w, stream);
    } else {
        rc = pass_ready(ctx, e, PASS_FWD, h, &p, &ws);
        if (!rc)
            rc = cudnn_code(cudnnConvolutionForward(h, &one, e->x, inp, e->w, w, p->conv,
                                                    (cudnnConvolutionFwdAlgo_t)p->algo, ws,
                                                    p->workspace, &zero, e->y, out));
    }
    if (!rc && bias)
        rc = cudnn_code(cudnnAddTensor(h, &one, e->bias, bias, &one, e->y32, out));
    cuda_ctx_release(ctx);
    return rc;
}

int conv2d_backward_cuda(float *dinp, float *dw, float *dbias, const float *dout, const float *inp,
                         const float *w, int B, int C, int H, int W, int OC, int K, int S, int P,
                         cudaStream_t stream) {
    CudaCtx *ctx;
    cudnnHandle_t h;
    ConvEntry *e;
    int rc = conv_begin(&ctx, &h, &e, B, C, H, W, OC, K, S, P, stream);
    if (rc)
        return rc;
    const float one = 1.0f;
    void *ws = NULL;
    const ConvPass *p;
    if (e->key.bf16 && (dinp || dw)) {
        rc = conv_backward_bf16(ctx, h, e, dinp, dw, dout, inp, w, stream);
        dinp = dw = NULL; // done
    }
    if (!rc && dinp) {
        rc = pass_ready(ctx, e, PASS_BWD_DATA, h, &p, &ws);
        if (!rc)
            rc = cudnn_code(cudnnConvolutionBackwardData(h, &one, e->w, w, e->y, dout, p->conv,
                                                         (cudnnConvolutionBwdDataAlgo_t)p->algo, ws,
                                                         p->workspace, &one, e->x, dinp));
    }
    if (!rc && dw) {
        rc = pass_ready(ctx, e, PASS_BWD_FILTER, h, &p, &ws);
        if (!rc)
            rc = cudnn_code(cudnnConvolutionBackwardFilter(h, &one, e->x, inp, e->y, dout, p->conv,
                                                           (cudnnConvolutionBwdFilterAlgo_t)p->algo,
                                                           ws, p->workspace, &one, e->w, dw));
    }
    if (!rc && dbias)
        rc = cudnn_code(cudnnConvolutionBackwardBias(h, &one, e->y32, dout, &one, e->bias, dbias));
    cuda_ctx_release(ctx);
    return rc;
}

void conv2d_cache_clear_cuda(void) {
    pthread_mutex_lock(&conv_cache_lock);
    for (int i = 0; i < conv_cache_len; i++)
        entry_free(conv_cache[i]);
    free(conv_cache);
    conv_cache = NULL;
    conv_cache_len = conv_cache_cap = 0;
    pthread_mutex_unlock(&conv_cache_lock);
}
