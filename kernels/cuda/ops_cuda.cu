// ops_cuda.cu — the CUDA twins of kernels/ops.c: activations, PixelNorm, upsampling, pooling,
// the fade-in blend, the hinge losses and AdamW, on device float buffers.
//
// Shapes: B batch, C channels, H, W spatial, N = H*W, n a flat element count; NCHW. Each op is
// one kernel launch written for clarity first: grid-stride loops with one thread per output
// element (or, for the backward of upsampling and pooling, one thread per input element, so the
// gradient is summed by one thread in the CPU's order and no atomics are needed). The element
// formulas are the CPU's, so results differ from it only by rounding (the device fuses
// multiply-adds; tanhf differs by an ulp or two). Dropout draws its masks on the device from the
// key the host draws, the CPU's masks exactly. Not here: embeddings (model_cuda.cu), softmax
// cross-entropy (not on the GPU yet), spectral norm (specnorm_cuda.cu), the matrix layers.
#include "kernels/cuda/cuda_ops.h"

#include "kernels/cuda/cuda_internal.cuh"
#include "kernels/ops.h" // PIXELNORM_EPS, OPS_DROPOUT_CHUNK
extern "C" {
#include "kernels/rng.h" // the dropout key, drawn on the host as ops.c draws it (C linkage)
}

// --- activations --------------------------------------------------------------------------------

// out, inp (n).
__global__ void leaky_relu_forward_kernel(float *out, const float *inp, float alpha, long n) {
    CUDA_FOR(i, n) {
        float x = inp[i];
        out[i] = x > 0.0f ? x : alpha * x;
    }
}

// dinp, dout, inp (n).
__global__ void leaky_relu_backward_kernel(float *dinp, const float *dout, const float *inp,
                                           float alpha, long n) {
    CUDA_FOR(i, n) dinp[i] += inp[i] > 0.0f ? dout[i] : alpha * dout[i];
}

int leaky_relu_forward_cuda(float *out, const float *inp, float alpha, long n,
                            cudaStream_t stream) {
    CHECK_COUNT(n);
    leaky_relu_forward_kernel<<<cuda_blocks(n), CUDA_THREADS, 0, stream>>>(out, inp, alpha, n);
    return cuda_launch_code();
}

int leaky_relu_backward_cuda(float *dinp, const float *dout, const float *inp, float alpha, long n,
                             cudaStream_t stream) {
    CHECK_COUNT(n);
    leaky_relu_backward_kernel<<<cuda_blocks(n), CUDA_THREADS, 0, stream>>>(dinp, dout, inp, alpha,
                                                                            n);
    return cuda_launch_code();
}

// out, inp, ref (n): inp with the slopes of ref.
__global__ void leaky_relu_pattern_forward_kernel(float *out, const float *inp, const float *ref,
                                                  float alpha, long n) {
    CUDA_FOR(i, n) out[i] = ref[i] > 0.0f ? inp[i] : alpha * inp[i];
}

int leaky_relu_pattern_forward_cuda(float *out, const float *inp, const float *ref, float alpha,
                                    long n, cudaStream_t stream) {
    CHECK_COUNT(n);
    leaky_relu_pattern_forward_kernel<<<cuda_blocks(n), CUDA_THREADS, 0, stream>>>(out, inp, ref,
                                                                                   alpha, n);
    return cuda_launch_code();
}

// out, inp (n).
__global__ void tanh_forward_kernel(float *out, const float *inp, long n) {
    CUDA_FOR(i, n) out[i] = tanhf(inp[i]);
}

// d tanh(x)/dx = 1 - tanh(x)^2 from the saved output. dinp, dout, out (n).
__global__ void tanh_backward_kernel(float *dinp, const float *dout, const float *out, long n) {
    CUDA_FOR(i, n) dinp[i] += dout[i] * (1.0f - out[i] * out[i]);
}

int tanh_forward_cuda(float *out, const float *inp, long n, cudaStream_t stream) {
    CHECK_COUNT(n);
    tanh_forward_kernel<<<cuda_blocks(n), CUDA_THREADS, 0, stream>>>(out, inp, n);
    return cuda_launch_code();
}

int tanh_backward_cuda(float *dinp, const float *dout, const float *out, long n,
                       cudaStream_t stream) {
    CHECK_COUNT(n);
    tanh_backward_kernel<<<cuda_blocks(n), CUDA_THREADS, 0, stream>>>(dinp, dout, out, n);
    return cuda_launch_code();
}

// --- PixelNorm ----------------------------------------------------------------------------------

// One thread per pixel (b, p), looping over the C channels: neighbouring threads read
// neighbouring pixels of a channel row (coalesced), and the per-pixel sum needs no
// communication. C is 16 to 512 in our models, a short serial loop. out may alias inp: each
// thread reads its pixel's channels before it writes them.
// out, inp (B, C, N); rnorm (B, N).
__global__ void pixelnorm_forward_kernel(float *out, float *rnorm, const float *inp, int B, int C,
                                         int N) {
    long pixels = (long)B * N;
    float inv_c = 1.0f / (float)C;
    CUDA_FOR(t, pixels) {
        long b = t / N, p = t % N;
        const float *x = inp + b * C * N + p;
        float *o = out + b * C * N + p;
        float acc = 0.0f;
        for (int c = 0; c < C; c++) {
            float v = x[(long)c * N];
            acc += v * v;
        }
        float r = 1.0f / sqrtf(acc * inv_c + PIXELNORM_EPS);
        rnorm[t] = r;
        for (int c = 0; c < C; c++)
            o[(long)c * N] = x[(long)c * N] * r;
    }
}

// dx_c = r (dy_c - y_c mean_c'(dy_c' y_c')), as in ops.c. dinp, dout, out (B, C, N); rnorm (B, N).
__global__ void pixelnorm_backward_kernel(float *dinp, const float *dout, const float *out,
                                          const float *rnorm, int B, int C, int N) {
    long pixels = (long)B * N;
    float inv_c = 1.0f / (float)C;
    CUDA_FOR(t, pixels) {
        long b = t / N, p = t % N, base = b * C * N + p;
        float acc = 0.0f;
        for (int c = 0; c < C; c++)
            acc += dout[base + (long)c * N] * out[base + (long)c * N];
        acc *= inv_c;
        float r = rnorm[t];
        for (int c = 0; c < C; c++) {
            long k = base + (long)c * N;
            dinp[k] += r * (dout[k] - out[k] * acc);
        }
    }
}

static int pixel_shape_ok(int B, int C, int N) { return B >= 0 && C > 0 && N >= 0; }

int pixelnorm_forward_cuda(float *out, float *rnorm, const float *inp, int B, int C, int N,
                           cudaStream_t stream) {
    if (!pixel_shape_ok(B, C, N))
        return KERNELS_EINVAL;
    long pixels = (long)B * N;
    CHECK_COUNT(pixels);
    pixelnorm_forward_kernel<<<cuda_blocks(pixels), CUDA_THREADS, 0, stream>>>(out, rnorm, inp, B,
                                                                               C, N);
    return cuda_launch_code();
}

int pixelnorm_backward_cuda(float *dinp, const float *dout, const float *out, const float *rnorm,
                            int B, int C, int N, cudaStream_t stream) {
    if (!pixel_shape_ok(B, C, N))
        return KERNELS_EINVAL;
    long pixels = (long)B * N;
    CHECK_COUNT(pixels);
    pixelnorm_backward_kernel<<<cuda_blocks(pixels), CUDA_THREADS, 0, stream>>>(dinp, dout, out,
                                                                                rnorm, B, C, N);
    return cuda_launch_code();
}

// --- upsampling and pooling ---------------------------------------------------------------------

// One thread per output element: out[pl][y][x] = inp[pl][y/2][x/2].
// out (B*C planes, 2H, 2W), inp (B*C planes, H, W).
__global__ void upsample2x_forward_kernel(float *out, const float *inp, long planes, int H, int W) {
    long W2 = 2L * W, plane_out = 4L * H * W, total = planes * plane_out;
    CUDA_FOR(k, total) {
        long pl = k / plane_out, r = k % plane_out, y = r / W2, x = r % W2;
        out[k] = inp[pl * H * W + (y / 2) * W + x / 2];
    }
}

// One thread per input element, summing its four outputs' gradients in ops.c's order.
// dinp (planes, H, W), dout (planes, 2H, 2W).
__global__ void upsample2x_backward_kernel(float *dinp, const float *dout, long planes, int H,
                                           int W) {
    long W2 = 2L * W, plane_in = (long)H * W, total = planes * plane_in;
    CUDA_FOR(k, total) {
        long pl = k / plane_in, r = k % plane_in, y = r / W, x = r % W;
        const float *d0 = dout + pl * 4 * plane_in + (2 * y) * W2 + 2 * x, *d1 = d0 + W2;
        dinp[k] += (d0[0] + d0[1]) + (d1[0] + d1[1]);
    }
}

// One thread per output element. out (planes, H/2, W/2), inp (planes, H, W).
__global__ void avgpool2x_forward_kernel(float *out, const float *inp, long planes, int H, int W) {
    long H2 = H / 2, W2 = W / 2, plane_out = H2 * W2, total = planes * plane_out;
    CUDA_FOR(k, total) {
        long pl = k / plane_out, r = k % plane_out, i = r / W2, j = r % W2;
        const float *x0 = inp + pl * H * W + (2 * i) * W + 2 * j, *x1 = x0 + W;
        out[k] = 0.25f * ((x0[0] + x0[1]) + (x1[0] + x1[1]));
    }
}

// One thread per input element: a quarter of its output's gradient.
// dinp (planes, H, W), dout (planes, H/2, W/2).
__global__ void avgpool2x_backward_kernel(float *dinp, const float *dout, long planes, int H,
                                          int W) {
    long W2 = W / 2, plane_in = (long)H * W, total = planes * plane_in;
    CUDA_FOR(k, total) {
        long pl = k / plane_in, r = k % plane_in, y = r / W, x = r % W;
        dinp[k] += 0.25f * dout[pl * (H / 2) * W2 + (y / 2) * W2 + x / 2];
    }
}

static int plane_shape_ok(int B, int C, int H, int W) {
    return B >= 0 && C >= 0 && H >= 0 && W >= 0;
}

int upsample2x_forward_cuda(float *out, const float *inp, int B, int C, int H, int W,
                            cudaStream_t stream) {
    if (!plane_shape_ok(B, C, H, W))
        return KERNELS_EINVAL;
    long planes = (long)B * C, total = planes * H * W * 4;
    CHECK_COUNT(total);
    upsample2x_forward_kernel<<<cuda_blocks(total), CUDA_THREADS, 0, stream>>>(out, inp, planes, H,
                                                                               W);
    return cuda_launch_code();
}

int upsample2x_backward_cuda(float *dinp, const float *dout, int B, int C, int H, int W,
                             cudaStream_t stream) {
    if (!plane_shape_ok(B, C, H, W))
        return KERNELS_EINVAL;
    long planes = (long)B * C, total = planes * H * W;
    CHECK_COUNT(total);
    upsample2x_backward_kernel<<<cuda_blocks(total), CUDA_THREADS, 0, stream>>>(dinp, dout, planes,
                                                                                H, W);
    return cuda_launch_code();
}

int avgpool2x_forward_cuda(float *out, const float *inp, int B, int C, int H, int W,
                           cudaStream_t stream) {
    if (!plane_shape_ok(B, C, H, W) || H % 2 || W % 2)
        return KERNELS_EINVAL;
    long planes = (long)B * C, total = planes * (H / 2) * (W / 2);
    CHECK_COUNT(total);
    avgpool2x_forward_kernel<<<cuda_blocks(total), CUDA_THREADS, 0, stream>>>(out, inp, planes, H,
                                                                              W);
    return cuda_launch_code();
}

int avgpool2x_backward_cuda(float *dinp, const float *dout, int B, int C, int H, int W,
                            cudaStream_t stream) {
    if (!plane_shape_ok(B, C, H, W) || H % 2 || W % 2)
        return KERNELS_EINVAL;
    long planes = (long)B * C, total = planes * H * W;
    CHECK_COUNT(total);
    avgpool2x_backward_kernel<<<cuda_blocks(total), CUDA_THREADS, 0, stream>>>(dinp, dout, planes,
                                                                               H, W);
    return cuda_launch_code();
}

// --- fade-in blend ------------------------------------------------------------------------------

// out, a, b (n).
__global__ void lerp_forward_kernel(float *out, const float *a, const float *b, float alpha,
                                    long n) {
    float beta = 1.0f - alpha;
    CUDA_FOR(i, n) out[i] = alpha * a[i] + beta * b[i];
}

// da, db (n) or NULL; dout (n).
__global__ void lerp_backward_kernel(float *da, float *db, const float *dout, float alpha, long n) {
    float beta = 1.0f - alpha;
    CUDA_FOR(i, n) {
        float g = dout[i];
        if (da)
            da[i] += alpha * g;
        if (db)
            db[i] += beta * g;
    }
}

int lerp_forward_cuda(float *out, const float *a, const float *b, float alpha, long n,
                      cudaStream_t stream) {
    CHECK_COUNT(n);
    lerp_forward_kernel<<<cuda_blocks(n), CUDA_THREADS, 0, stream>>>(out, a, b, alpha, n);
    return cuda_launch_code();
}

int lerp_backward_cuda(float *da, float *db, const float *dout, float alpha, long n,
                       cudaStream_t stream) {
    CHECK_COUNT(n);
    if (!da && !db)
        return 0;
    lerp_backward_kernel<<<cuda_blocks(n), CUDA_THREADS, 0, stream>>>(da, db, dout, alpha, n);
    return cuda_launch_code();
}

// --- dropout ------------------------------------------------------------------------------------

// rng.c's generator on the device: splitmix64 seeding, xoshiro256** (Blackman & Vigna 2018) and
// the top 24 bits as a uniform float, the same bits as the host's.
struct DevRng {
    unsigned long long s[4];
};

__device__ unsigned long long dev_splitmix64(unsigned long long *x) {
    unsigned long long z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

__device__ unsigned long long dev_rotl(unsigned long long x, int k) {
    return (x << k) | (x >> (64 - k));
}

__device__ unsigned long long dev_rng_u64(DevRng *r) {
    unsigned long long *s = r->s;
    unsigned long long result = dev_rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = dev_rotl(s[3], 45);
    return result;
}

// One thread per chunk of OPS_DROPOUT_CHUNK elements, seeded with key + chunk as ops.c seeds it
// (a chunk's draws are sequential: the mask is ops.c's bit for bit). out, mask, inp (n).
__global__ void dropout_forward_kernel(float *out, float *mask, const float *inp, float p,
                                       float scale, unsigned long long key, long n) {
    long chunks = (n + OPS_DROPOUT_CHUNK - 1) / OPS_DROPOUT_CHUNK;
    CUDA_FOR(k, chunks) {
        DevRng r;
        unsigned long long x = key + (unsigned long long)k;
        for (int i = 0; i < 4; i++)
            r.s[i] = dev_splitmix64(&x);
        long end = (k + 1) * OPS_DROPOUT_CHUNK < n ? (k + 1) * OPS_DROPOUT_CHUNK : n;
        for (long i = k * OPS_DROPOUT_CHUNK; i < end; i++) {
            float u = (float)(dev_rng_u64(&r) >> 40) * 0x1.0p-24f;
            float m = u >= p ? scale : 0.0f;
            mask[i] = m;
            out[i] = inp[i] * m;
        }
    }
}

// dinp, dout, mask (n).
__global__ void dropout_backward_kernel(float *dinp, const float *dout, const float *mask, long n) {
    CUDA_FOR(i, n) dinp[i] += dout[i] * mask[i];
}

__global__ void dropout_copy_kernel(float *out, float *mask, const float *inp, long n) {
    CUDA_FOR(i, n) {
        mask[i] = 1.0f;
        out[i] = inp[i];
    }
}

int dropout_forward_cuda(float *out, float *mask, const float *inp, float p, uint64_t *seed,
                         long n, cudaStream_t stream) {
    if (n < 0)
        return KERNELS_EINVAL;
    if (p <= 0.0f) { // ops.c: a copy with mask 1, *seed untouched
        CHECK_COUNT(n);
        dropout_copy_kernel<<<cuda_blocks(n), CUDA_THREADS, 0, stream>>>(out, mask, inp, n);
        return cuda_launch_code();
    }
    // ops.c's two draws from *seed, whatever n: this call's key and the next seed
    Rng base;
    rng_seed(&base, *seed);
    uint64_t key = rng_u64(&base);
    *seed = rng_u64(&base);
    CHECK_COUNT(n);
    float scale = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
    long chunks = (n + OPS_DROPOUT_CHUNK - 1) / OPS_DROPOUT_CHUNK;
    dropout_forward_kernel<<<cuda_blocks(chunks), CUDA_THREADS, 0, stream>>>(out, mask, inp, p,
                                                                             scale, key, n);
    return cuda_launch_code();
}

int dropout_backward_cuda(float *dinp, const float *dout, const float *mask, long n,
                          cudaStream_t stream) {
    CHECK_COUNT(n);
    dropout_backward_kernel<<<cuda_blocks(n), CUDA_THREADS, 0, stream>>>(dinp, dout, mask, n);
    return cuda_launch_code();
}

// out, a, b (B, n); alpha (B).
__global__ void lerp_items_kernel(float *out, const float *a, const float *b, const float *alpha,
                                  long n, long total) {
    CUDA_FOR(k, total) {
        float t = alpha[k / n];
        out[k] = t * a[k] + (1.0f - t) * b[k];
    }
}

int lerp_items_cuda(float *out, const float *a, const float *b, const float *alpha, int B, long n,
                    cudaStream_t stream) {
    if (B < 0 || n < 0)
        return KERNELS_EINVAL;
    long total = (long)B * n;
    CHECK_COUNT(total);
    lerp_items_kernel<<<cuda_blocks(total), CUDA_THREADS, 0, stream>>>(out, a, b, alpha, n, total);
    return cuda_launch_code();
}

// --- hinge losses -------------------------------------------------------------------------------

enum { HINGE_D_REAL, HINGE_D_FAKE, HINGE_G };

// One block for the whole batch (B is 64 to a few thousand logits): the sum is in double, as in
// ops.c, and reduced in a fixed order. At the kink (margin exactly 0) the subgradient is 0.
// loss (1), dlogits (B) or NULL, logits (B).
__global__ void hinge_kernel(float *loss, float *dlogits, const float *logits, int B, int kind) {
    __shared__ double scratch[32];
    float inv_b = 1.0f / (float)B;
    double sum = 0.0;
    for (int b = threadIdx.x; b < B; b += blockDim.x) {
        float x = logits[b];
        float grad;
        if (kind == HINGE_G) {
            sum += x;
            grad = -inv_b;
        } else {
            float margin = kind == HINGE_D_REAL ? 1.0f - x : 1.0f + x;
            sum += margin > 0.0f ? margin : 0.0f;
            grad = margin > 0.0f ? (kind == HINGE_D_REAL ? -inv_b : inv_b) : 0.0f;
        }
        if (dlogits)
            dlogits[b] = grad;
    }
    sum = block_sum(sum, scratch);
    if (threadIdx.x == 0)
        *loss = (float)((kind == HINGE_G ? -sum : sum) / B);
}

static int hinge_launch(float *loss, float *dlogits, const float *logits, int B, int kind,
                        cudaStream_t stream) {
    if (B <= 0 || !loss)
        return KERNELS_EINVAL;
    hinge_kernel<<<1, CUDA_THREADS, 0, stream>>>(loss, dlogits, logits, B, kind);
    return cuda_launch_code();
}

int hinge_d_real_loss_cuda(float *loss, float *dlogits, const float *logits, int B,
                           cudaStream_t stream) {
    return hinge_launch(loss, dlogits, logits, B, HINGE_D_REAL, stream);
}

int hinge_d_fake_loss_cuda(float *loss, float *dlogits, const float *logits, int B,
                           cudaStream_t stream) {
    return hinge_launch(loss, dlogits, logits, B, HINGE_D_FAKE, stream);
}

int hinge_g_loss_cuda(float *loss, float *dlogits, const float *logits, int B,
                      cudaStream_t stream) {
    return hinge_launch(loss, dlogits, logits, B, HINGE_G, stream);
}

// --- AdamW --------------------------------------------------------------------------------------

// ops.c's update (Loshchilov & Hutter 2019, alg. 2; torch.optim.AdamW), with the bias
// corrections rbc1 = 1/(1 - b1^t), rbc2 = 1/(1 - b2^t) formed on the host in double as there.
// params, grads, m, v (n).
__global__ void adamw_kernel(float *params, const float *grads, float *m, float *v, long n,
                             float lr, float beta1, float beta2, float eps, float decay, float rbc1,
                             float rbc2) {
    CUDA_FOR(i, n) {
        float g = grads[i];
        float mi = beta1 * m[i] + (1.0f - beta1) * g;
        float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        float step = (mi * rbc1) / (sqrtf(vi * rbc2) + eps);
        params[i] -= lr * step + decay * params[i];
    }
}

int adamw_update_cuda(float *params, const float *grads, float *m, float *v, long n, float lr,
                      float beta1, float beta2, float eps, float weight_decay, long t,
                      cudaStream_t stream) {
    if (t < 1)
        return KERNELS_EINVAL;
    CHECK_COUNT(n);
    float rbc1 = (float)(1.0 / (1.0 - pow((double)beta1, (double)t)));
    float rbc2 = (float)(1.0 / (1.0 - pow((double)beta2, (double)t)));
    adamw_kernel<<<cuda_blocks(n), CUDA_THREADS, 0, stream>>>(
        params, grads, m, v, n, lr, beta1, beta2, eps, lr * weight_decay, rbc1, rbc2);
    return cuda_launch_code();
}
