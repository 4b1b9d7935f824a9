// ops.c — the element-wise and small layers of G and D (activations, PixelNorm, upsampling, the
// losses, embedding, dropout, the optimizer) on raw float buffers.
//
// Shapes: B batch, C channels, H, W spatial, N = H*W, K classes, D embedding width, n a flat
// element count; tensors are NCHW. Loops are written contiguous and marked `omp simd` (GCC's -O2
// cost model would otherwise leave loops of unknown trip count scalar); they go parallel over
// threads only past OPS_PARALLEL_MIN elements, below which the fork costs more than it saves
// (batch-1 generation lives there). Nothing here allocates, fails or keeps state; the matrix
// layers (gemm.c, conv, attention) and spectral norm (specnorm.c) live elsewhere.
#include "kernels/ops.h"

#include <math.h>
#include <string.h>

#include "kernels/rng.h"

// Elements of work below which a loop stays on the calling thread. 32k floats is 128 KiB: about
// 10 us of streaming on one core, the same order as waking an OpenMP team on 2-16 cores.
#define OPS_PARALLEL_MIN 32768L

// PixelNorm and its backward work on tiles of this many pixels of one image, so the per-pixel
// sums over channels sit in a stack array (no allocation) and every channel row is read as one
// contiguous, vectorizable run.
#define OPS_PIXEL_TILE 256

void leaky_relu_forward(float *out, const float *inp, float alpha, long n) {
#pragma omp parallel for simd schedule(static) if (parallel : n >= OPS_PARALLEL_MIN)
    for (long i = 0; i < n; i++) {
        float x = inp[i];
        out[i] = x > 0.0f ? x : alpha * x;
    }
}

void leaky_relu_backward(float *dinp, const float *dout, const float *inp, float alpha, long n) {
#pragma omp parallel for simd schedule(static) if (parallel : n >= OPS_PARALLEL_MIN)
    for (long i = 0; i < n; i++)
        dinp[i] += inp[i] > 0.0f ? dout[i] : alpha * dout[i];
}

void leaky_relu_pattern_forward(float *out, const float *inp, const float *ref, float alpha,
                                long n) {
#pragma omp parallel for simd schedule(static) if (parallel : n >= OPS_PARALLEL_MIN)
    for (long i = 0; i < n; i++)
        out[i] = ref[i] > 0.0f ? inp[i] : alpha * inp[i];
}

// tanhf has no vector variant without -ffast-math, so this loop stays scalar; at ~10x the cost of
// a multiply per element, it pays for threads from a quarter of the usual size. It runs once per
// G forward, on the 1-3 output channels only.
void tanh_forward(float *out, const float *inp, long n) {
#pragma omp parallel for schedule(static) if (n >= OPS_PARALLEL_MIN / 4)
    for (long i = 0; i < n; i++)
        out[i] = tanhf(inp[i]);
}

// d tanh(x)/dx = 1 - tanh(x)^2, from the saved output.
void tanh_backward(float *dinp, const float *dout, const float *out, long n) {
#pragma omp parallel for simd schedule(static) if (parallel : n >= OPS_PARALLEL_MIN)
    for (long i = 0; i < n; i++)
        dinp[i] += dout[i] * (1.0f - out[i] * out[i]);
}

// One tile: pixels [p0, p0 + len) of image b. r = (mean_c x^2 + eps)^-1/2, out = x * r.
static void pixelnorm_tile(float *out, float *rnorm, const float *inp, int C, int N, int len) {
    float acc[OPS_PIXEL_TILE];
    for (int p = 0; p < len; p++)
        acc[p] = 0.0f;
    for (int c = 0; c < C; c++) {
        const float *x = inp + (long)c * N;
#pragma omp simd
        for (int p = 0; p < len; p++)
            acc[p] += x[p] * x[p];
    }
    const float inv_c = 1.0f / (float)C;
#pragma omp simd
    for (int p = 0; p < len; p++)
        rnorm[p] = 1.0f / sqrtf(acc[p] * inv_c + PIXELNORM_EPS);
    for (int c = 0; c < C; c++) {
        const float *x = inp + (long)c * N;
        float *o = out + (long)c * N;
#pragma omp simd
        for (int p = 0; p < len; p++)
            o[p] = x[p] * rnorm[p];
    }
}

void pixelnorm_forward(float *out, float *rnorm, const float *inp, int B, int C, int N) {
    int tiles = (N + OPS_PIXEL_TILE - 1) / OPS_PIXEL_TILE;
    long total = (long)B * C * N;
#pragma omp parallel for schedule(static) if (total >= OPS_PARALLEL_MIN)
    for (long t = 0; t < (long)B * tiles; t++) {
        int b = (int)(t / tiles);
        int p0 = (int)(t % tiles) * OPS_PIXEL_TILE;
        int len = N - p0 < OPS_PIXEL_TILE ? N - p0 : OPS_PIXEL_TILE;
        long base = (long)b * C * N + p0;
        pixelnorm_tile(out + base, rnorm + (long)b * N + p0, inp + base, C, N, len);
    }
}

// With y = x r and r = (mean_c x^2 + eps)^-1/2, dr/dx_j = -r^3 x_j / C, so
// dx_j = r (dy_j - y_j * mean_c(dy_c y_c)): the same per-pixel-sum-then-scale shape as forward.
static void pixelnorm_backward_tile(float *dinp, const float *dout, const float *out,
                                    const float *rnorm, int C, int N, int len) {
    float acc[OPS_PIXEL_TILE];
    for (int p = 0; p < len; p++)
        acc[p] = 0.0f;
    for (int c = 0; c < C; c++) {
        const float *dy = dout + (long)c * N;
        const float *y = out + (long)c * N;
#pragma omp simd
        for (int p = 0; p < len; p++)
            acc[p] += dy[p] * y[p];
    }
    const float inv_c = 1.0f / (float)C;
#pragma omp simd
    for (int p = 0; p < len; p++)
        acc[p] *= inv_c;
    for (int c = 0; c < C; c++) {
        const float *dy = dout + (long)c * N;
        const float *y = out + (long)c * N;
        float *dx = dinp + (long)c * N;
#pragma omp simd
        for (int p = 0; p < len; p++)
            dx[p] += rnorm[p] * (dy[p] - y[p] * acc[p]);
    }
}

void pixelnorm_backward(float *dinp, const float *dout, const float *out, const float *rnorm, int B,
                        int C, int N) {
    int tiles = (N + OPS_PIXEL_TILE - 1) / OPS_PIXEL_TILE;
    long total = (long)B * C * N;
#pragma omp parallel for schedule(static) if (total >= OPS_PARALLEL_MIN)
    for (long t = 0; t < (long)B * tiles; t++) {
        int b = (int)(t / tiles);
        int p0 = (int)(t % tiles) * OPS_PIXEL_TILE;
        int len = N - p0 < OPS_PIXEL_TILE ? N - p0 : OPS_PIXEL_TILE;
        long base = (long)b * C * N + p0;
        pixelnorm_backward_tile(dinp + base, dout + base, out + base, rnorm + (long)b * N + p0, C,
                                N, len);
    }
}

// out[2i + a][2j + e] = inp[i][j] for a, e in {0, 1}: build each even row, copy it to the odd.
void upsample2x_forward(float *out, const float *inp, int B, int C, int H, int W) {
    long planes = (long)B * C;
    long total = planes * H * W * 4;
    int W2 = 2 * W;
#pragma omp parallel for schedule(static) if (total >= OPS_PARALLEL_MIN)
    for (long pl = 0; pl < planes; pl++) {
        const float *x = inp + pl * H * W;
        float *o = out + pl * H * W * 4;
        for (int i = 0; i < H; i++) {
            const float *xr = x + (long)i * W;
            float *o0 = o + (long)(2 * i) * W2;
#pragma omp simd
            for (int j = 0; j < W; j++) {
                o0[2 * j] = xr[j];
                o0[2 * j + 1] = xr[j];
            }
            memcpy(o0 + W2, o0, sizeof(float) * W2);
        }
    }
}

void upsample_nearest_forward(float *out, const float *inp, int B, int C, int H, int W, int f) {
    long planes = (long)B * C;
    long OW = (long)W * f;
#pragma omp parallel for schedule(static) if (planes * H * W * f * f >= OPS_PARALLEL_MIN)
    for (long pl = 0; pl < planes; pl++) {
        const float *x = inp + pl * H * W;
        float *o = out + pl * H * W * f * f;
        for (int i = 0; i < H; i++) {
            float *row = o + (long)i * f * OW;
            for (long j = 0; j < OW; j++) row[j] = x[(long)i * W + j / f];
            for (int k = 1; k < f; k++) memcpy(row + k * OW, row, sizeof(float) * OW);
        }
    }
}

void avgpool2x_forward(float *out, const float *inp, int B, int C, int H, int W) {
    long planes = (long)B * C;
    int H2 = H / 2, W2 = W / 2;
#pragma omp parallel for schedule(static) if (planes * H * W >= OPS_PARALLEL_MIN)
    for (long pl = 0; pl < planes; pl++) {
        const float *x = inp + pl * H * W;
        float *o = out + pl * H2 * W2;
        for (int i = 0; i < H2; i++) {
            const float *x0 = x + (long)(2 * i) * W, *x1 = x0 + W;
            float *orow = o + (long)i * W2;
#pragma omp simd
            for (int j = 0; j < W2; j++)
                orow[j] = 0.25f * ((x0[2 * j] + x0[2 * j + 1]) + (x1[2 * j] + x1[2 * j + 1]));
        }
    }
}

// Each output averaged four inputs: each input gets a quarter of its output's gradient.
void avgpool2x_backward(float *dinp, const float *dout, int B, int C, int H, int W) {
    long planes = (long)B * C;
    int H2 = H / 2, W2 = W / 2;
#pragma omp parallel for schedule(static) if (planes * H * W >= OPS_PARALLEL_MIN)
    for (long pl = 0; pl < planes; pl++) {
        float *dx = dinp + pl * H * W;
        const float *d = dout + pl * H2 * W2;
        for (int i = 0; i < H2; i++) {
            float *d0 = dx + (long)(2 * i) * W, *d1 = d0 + W;
            const float *drow = d + (long)i * W2;
#pragma omp simd
            for (int j = 0; j < W2; j++) {
                float g = 0.25f * drow[j];
                d0[2 * j] += g;
                d0[2 * j + 1] += g;
                d1[2 * j] += g;
                d1[2 * j + 1] += g;
            }
        }
    }
}

void lerp_forward(float *out, const float *a, const float *b, float alpha, long n) {
    float beta = 1.0f - alpha;
#pragma omp parallel for simd schedule(static) if (parallel : n >= OPS_PARALLEL_MIN)
    for (long i = 0; i < n; i++)
        out[i] = alpha * a[i] + beta * b[i];
}

void lerp_backward(float *da, float *db, const float *dout, float alpha, long n) {
    float beta = 1.0f - alpha;
    if (da)
#pragma omp parallel for simd schedule(static) if (parallel : n >= OPS_PARALLEL_MIN)
        for (long i = 0; i < n; i++)
            da[i] += alpha * dout[i];
    if (db)
#pragma omp parallel for simd schedule(static) if (parallel : n >= OPS_PARALLEL_MIN)
        for (long i = 0; i < n; i++)
            db[i] += beta * dout[i];
}

// Each input pixel fed four outputs, so its gradient is their sum.
void upsample2x_backward(float *dinp, const float *dout, int B, int C, int H, int W) {
    long planes = (long)B * C;
    long total = planes * H * W * 4;
    int W2 = 2 * W;
#pragma omp parallel for schedule(static) if (total >= OPS_PARALLEL_MIN)
    for (long pl = 0; pl < planes; pl++) {
        float *dx = dinp + pl * H * W;
        const float *d = dout + pl * H * W * 4;
        for (int i = 0; i < H; i++) {
            float *dxr = dx + (long)i * W;
            const float *d0 = d + (long)(2 * i) * W2;
            const float *d1 = d0 + W2;
#pragma omp simd
            for (int j = 0; j < W; j++)
                dxr[j] += (d0[2 * j] + d0[2 * j + 1]) + (d1[2 * j] + d1[2 * j + 1]);
        }
    }
}

// The hinge losses run on B logits (B = 64 at most in practice); sums are in double so the mean
// does not depend on summation order. At the kink (margin exactly 0) the subgradient 0 is used,
// as torch.relu's backward does.
float hinge_d_real_loss(float *dlogits, const float *logits, int B) {
    double sum = 0.0;
    for (int b = 0; b < B; b++) {
        float margin = 1.0f - logits[b];
        sum += margin > 0.0f ? margin : 0.0f;
        if (dlogits)
            dlogits[b] = margin > 0.0f ? -1.0f / (float)B : 0.0f;
    }
    return (float)(sum / B);
}

float hinge_d_fake_loss(float *dlogits, const float *logits, int B) {
    double sum = 0.0;
    for (int b = 0; b < B; b++) {
        float margin = 1.0f + logits[b];
        sum += margin > 0.0f ? margin : 0.0f;
        if (dlogits)
            dlogits[b] = margin > 0.0f ? 1.0f / (float)B : 0.0f;
    }
    return (float)(sum / B);
}

float hinge_g_loss(float *dlogits, const float *logits, int B) {
    double sum = 0.0;
    for (int b = 0; b < B; b++) {
        sum += logits[b];
        if (dlogits)
            dlogits[b] = -1.0f / (float)B;
    }
    return (float)(-sum / B);
}

// Per row: loss = logsumexp(l) - l[y] with the max subtracted first (no overflow);
// d loss / d l = softmax(l) - onehot(y), divided by B for the mean.
float softmax_xent_forward_backward(float *dlogits, float *probs, const float *logits,
                                    const int32_t *labels, int B, int K) {
    double total = 0.0;
    for (int b = 0; b < B; b++) {
        const float *l = logits + (long)b * K;
        float mx = l[0];
        for (int k = 1; k < K; k++)
            mx = l[k] > mx ? l[k] : mx;
        double sum = 0.0;
        for (int k = 0; k < K; k++)
            sum += exp((double)(l[k] - mx));
        int y = labels[b];
        total += log(sum) + (double)mx - (double)l[y];
        if (!dlogits && !probs)
            continue;
        float inv = (float)(1.0 / sum);
        for (int k = 0; k < K; k++) {
            float p = expf(l[k] - mx) * inv;
            if (probs)
                probs[(long)b * K + k] = p;
            if (dlogits)
                dlogits[(long)b * K + k] = (p - (k == y ? 1.0f : 0.0f)) / (float)B;
        }
    }
    return (float)(total / B);
}

void embedding_forward(float *out, const float *table, const int32_t *labels, int B, int D) {
    for (int b = 0; b < B; b++)
        memcpy(out + (long)b * D, table + (long)labels[b] * D, sizeof(float) * D);
}

// Serial over b: two rows of a batch may share a label and so a table row.
void embedding_backward(float *dtable, const float *dout, const int32_t *labels, int B, int D) {
    for (int b = 0; b < B; b++) {
        float *dt = dtable + (long)labels[b] * D;
        const float *d = dout + (long)b * D;
#pragma omp simd
        for (int i = 0; i < D; i++)
            dt[i] += d[i];
    }
}

void projection_forward(float *out, const float *table, const int32_t *labels, const float *feat,
                        int B, int F) {
    for (int b = 0; b < B; b++) {
        const float *e = table + (long)labels[b] * F, *h = feat + (long)b * F;
        float s = 0;
        for (int i = 0; i < F; i++) s += e[i] * h[i];
        out[b] += s;
    }
}

void projection_backward(float *dfeat, float *dtable, const float *dout, const float *table,
                         const int32_t *labels, const float *feat, int B, int F) {
    for (int b = 0; b < B; b++) {
        const float *e = table + (long)labels[b] * F, *h = feat + (long)b * F;
        float g = dout[b];
        if (dfeat)
            for (int i = 0; i < F; i++) dfeat[(long)b * F + i] += g * e[i];
        if (dtable) {
            float *de = dtable + (long)labels[b] * F;
            for (int i = 0; i < F; i++) de[i] += g * h[i];
        }
    }
}

// Keep an element when u >= p (probability 1 - p) and scale kept ones by 1/(1 - p), so the
// expected output equals the input (inverted dropout, as torch.nn.Dropout). From *seed, two
// words are drawn: the key for this call's chunk streams and the next *seed, so successive calls
// get fresh masks. p <= 0 copies with mask 1 and leaves *seed alone; p >= 1 drops everything.
void dropout_forward(float *out, float *mask, const float *inp, float p, uint64_t *seed, long n) {
    if (p <= 0.0f) {
        for (long i = 0; i < n; i++) {
            mask[i] = 1.0f;
            out[i] = inp[i];
        }
        return;
    }
    Rng base;
    rng_seed(&base, *seed);
    uint64_t key = rng_u64(&base);
    *seed = rng_u64(&base);
    float scale = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
    long chunks = (n + OPS_DROPOUT_CHUNK - 1) / OPS_DROPOUT_CHUNK;
#pragma omp parallel for schedule(static) if (n >= OPS_PARALLEL_MIN)
    for (long k = 0; k < chunks; k++) {
        Rng r;
        rng_seed(&r, key + (uint64_t)k);
        long end = (k + 1) * OPS_DROPOUT_CHUNK < n ? (k + 1) * OPS_DROPOUT_CHUNK : n;
        for (long i = k * OPS_DROPOUT_CHUNK; i < end; i++) {
            float m = rng_uniform(&r) >= p ? scale : 0.0f;
            mask[i] = m;
            out[i] = inp[i] * m;
        }
    }
}

void dropout_backward(float *dinp, const float *dout, const float *mask, long n) {
#pragma omp parallel for simd schedule(static) if (parallel : n >= OPS_PARALLEL_MIN)
    for (long i = 0; i < n; i++)
        dinp[i] += dout[i] * mask[i];
}

void add_inplace(float *out, const float *inp, long n) {
#pragma omp parallel for simd schedule(static) if (parallel : n >= OPS_PARALLEL_MIN)
    for (long i = 0; i < n; i++)
        out[i] += inp[i];
}

// AdamW (Loshchilov & Hutter 2019, alg. 2, with the schedule multiplier 1):
//   m = b1 m + (1 - b1) g,  v = b2 v + (1 - b2) g^2,
//   p -= lr * (m / (1 - b1^t) / (sqrt(v / (1 - b2^t)) + eps) + wd * p)
// which is torch.optim.AdamW's update (decay applied to the pre-step p). The bias corrections are
// formed once in double: for b2 = 0.9 they are far from 1 only in the first few dozen steps.
// This loop (and PixelNorm's rsqrt) vectorizes only under -fno-math-errno: sqrtf's errno branch
// otherwise keeps it scalar, about 3x slower (3.4 vs 1.1 ms for 2M parameters on 2 cores).
void adamw_update(float *params, const float *grads, float *m, float *v, long n, float lr,
                  float beta1, float beta2, float eps, float weight_decay, long t) {
    float rbc1 = (float)(1.0 / (1.0 - pow((double)beta1, (double)t)));
    float rbc2 = (float)(1.0 / (1.0 - pow((double)beta2, (double)t)));
    float decay = lr * weight_decay;
#pragma omp parallel for simd schedule(static) if (parallel : n >= OPS_PARALLEL_MIN)
    for (long i = 0; i < n; i++) {
        float g = grads[i];
        float mi = beta1 * m[i] + (1.0f - beta1) * g;
        float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        float step = (mi * rbc1) / (sqrtf(vi * rbc2) + eps);
        params[i] -= lr * step + decay * params[i];
    }
}
