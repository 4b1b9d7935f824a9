// specnorm_cuda.cu — the CUDA twin of kernels/specnorm.c: spectral normalization (Miyato et al.
// 2018) of a weight viewed as W (OUT, IN) by one power iteration, and its gradient through sigma.
//
// Same contract and arithmetic as the CPU version (norms, sigma and <dW_sn, W_sn> in double;
// eps as torch.nn.utils.spectral_norm), except that sigma goes to a device float rather than
// being returned, so nothing waits on the GPU. Forward is three launches: W^T u over many blocks
// (one thread per column, coalesced), then one block that normalizes v, forms W v a warp per row,
// sigma and the new u, then W / sigma over many blocks. The reductions run inside one block in a
// fixed order, so sigma is the same on every run, and no scratch memory is needed. The price is
// that those steps use one SM: for fmnist32's weights (at most ~74k floats) that is a few
// microseconds; a model with multi-million-float weights would want a multi-block reduction and a
// scratch argument. Not here: a full SVD, more than one iteration per call.
//
// OUT rows, IN columns; w, w_sn, dw, dw_sn (OUT, IN); u (OUT); v (IN).
#include "kernels/cuda/cuda_ops.h"

#include "kernels/cuda/cuda_internal.cuh"
#include "kernels/specnorm.h" // SPECNORM_EPS

// Threads of the single-block kernels: the most a block may have, 32 warps.
#define SPECNORM_THREADS 1024

// v (IN) = W^T u, unnormalized: thread j sums column j over the rows in order, as specnorm.c does.
__global__ void specnorm_wtu_kernel(float *v, const float *w, const float *u, int OUT, int IN) {
    CUDA_FOR(j, IN) {
        float acc = 0.0f;
        for (int i = 0; i < OUT; i++)
            acc += u[i] * w[(long)i * IN + j];
        v[j] = acc;
    }
}

// One block. v (IN) becomes normalize(v); then each warp takes rows i of W v in turn. With update,
// u (OUT) becomes normalize(W v) and sigma = ||W v||^2 / max(||W v||, eps); without, sigma =
// u^T W v with u as stored. *sigma (1) written.
__global__ void specnorm_sigma_kernel(float *v, float *u, float *sigma, const float *w, int OUT,
                                      int IN, int update) {
    __shared__ double scratch[32];
    int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, warps = blockDim.x >> 5;
    double vv = 0.0;
    for (int j = tid; j < IN; j += blockDim.x)
        vv += (double)v[j] * (double)v[j];
    vv = block_sum(vv, scratch);
    float vscale = (float)(1.0 / fmax(sqrt(vv), SPECNORM_EPS));
    for (int j = tid; j < IN; j += blockDim.x)
        v[j] *= vscale;
    __syncthreads(); // every v[j] scaled before any warp reads the whole of v

    double acc = 0.0; // lane 0 of each warp: its rows' share of ||W v||^2 or u^T W v
    for (int i = warp; i < OUT; i += warps) {
        const float *row = w + (long)i * IN;
        double d = 0.0;
        for (int j = lane; j < IN; j += 32)
            d += (double)row[j] * (double)v[j];
        for (int o = 16; o > 0; o >>= 1)
            d += __shfl_xor_sync(0xffffffffu, d, o);
        if (lane == 0) {
            if (update) {
                float ui = (float)d; // W v is formed in u itself, as specnorm.c does
                u[i] = ui;
                acc += (double)ui * ui;
            } else {
                acc += (double)u[i] * d;
            }
        }
    }
    double total = block_sum(acc, scratch); // ends in __syncthreads: every u[i] is written
    double s = total;
    if (update) {
        double unorm = sqrt(total);
        double denom = fmax(unorm, SPECNORM_EPS);
        s = unorm * unorm / denom;
        float uscale = (float)(1.0 / denom);
        for (int i = tid; i < OUT; i += blockDim.x)
            u[i] *= uscale;
    }
    if (tid == 0)
        *sigma = (float)s;
}

// w_sn (n) = w / sigma. sigma 0 (W = 0) gives inf or NaN, as on the CPU and in PyTorch.
__global__ void specnorm_scale_kernel(float *w_sn, const float *w, const float *sigma, long n) {
    float inv_sigma = (float)(1.0 / (double)*sigma);
    CUDA_FOR(k, n) w_sn[k] = w[k] * inv_sigma;
}

int specnorm_forward_cuda(float *w_sn, float *v_out, float *u, float *sigma, const float *w,
                          int OUT, int IN, int update, cudaStream_t stream) {
    if (OUT <= 0 || IN <= 0 || !sigma || w_sn == w)
        return KERNELS_EINVAL;
    long n = (long)OUT * IN;
    specnorm_wtu_kernel<<<cuda_blocks(IN), CUDA_THREADS, 0, stream>>>(v_out, w, u, OUT, IN);
    int rc = cuda_launch_code();
    if (rc)
        return rc;
    specnorm_sigma_kernel<<<1, SPECNORM_THREADS, 0, stream>>>(v_out, u, sigma, w, OUT, IN, update);
    rc = cuda_launch_code();
    if (rc)
        return rc;
    specnorm_scale_kernel<<<cuda_blocks(n), CUDA_THREADS, 0, stream>>>(w_sn, w, sigma, n);
    return cuda_launch_code();
}

// One block: <dW_sn, W_sn> in double, then dW += (dW_sn - <dW_sn, W_sn> u v^T) / sigma
// (Miyato et al. 2018, eq. 12), as specnorm.c.
__global__ void specnorm_backward_kernel(float *dw, const float *dw_sn, const float *w_sn,
                                         const float *u, const float *v, const float *sigma,
                                         int OUT, int IN) {
    __shared__ double scratch[32];
    long n = (long)OUT * IN;
    double inner = 0.0;
    for (long k = threadIdx.x; k < n; k += blockDim.x)
        inner += (double)dw_sn[k] * (double)w_sn[k];
    inner = block_sum(inner, scratch);
    float inv_sigma = 1.0f / *sigma;
    for (long k = threadIdx.x; k < n; k += blockDim.x) {
        long i = k / IN, j = k % IN;
        float coef = (float)(inner * u[i]);
        dw[k] += (dw_sn[k] - coef * v[j]) * inv_sigma;
    }
}

int specnorm_backward_cuda(float *dw, const float *dw_sn, const float *w_sn, const float *u,
                           const float *v, const float *sigma, int OUT, int IN,
                           cudaStream_t stream) {
    if (OUT <= 0 || IN <= 0 || !sigma)
        return KERNELS_EINVAL;
    specnorm_backward_kernel<<<1, SPECNORM_THREADS, 0, stream>>>(dw, dw_sn, w_sn, u, v, sigma, OUT,
                                                                 IN);
    return cuda_launch_code();
}
