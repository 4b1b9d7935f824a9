// attention.c — the SAGAN self-attention block (Zhang et al. 2019), forward and backward, as
// small per-batch-item products.
//
// At the fmnist32 shapes (C = 32, N = 16x16 = 256) every product of the block is small (the
// largest is 16 x 256 x 256), far too small to thread well inside one GEMM. So the batch is spread
// over OpenMP threads and each item runs its whole chain (projections, scores, softmax, mixing)
// while its tensors are hot in cache; dnnl_sgemm runs single-threaded inside the parallel region
// (nested OpenMP regions get one thread). With one item (serving, B = 1) there is no parallel
// region and the GEMMs thread themselves. The products with a small inner dimension (the 1x1
// projections of the forward, and the scores, whose rows go straight into the softmax) are our
// own loops, which measured faster than dnnl_sgemm there; the rest are GEMMs. The weight
// gradients are summed per item into scratch and reduced over the batch in a fixed order
// afterwards: no atomics, and a result that does not depend on the thread count.
//
// Not here: masking, multiple heads, a CUDA path, the spectral normalization of the weights
// (specnorm.c does that before they reach us).
//
// B batch, C channels (divisible by 8), C8 = C/8, C2 = C/2, N = H*W positions. x (B, C, N).
#include "kernels/attention.h"

#include <stdint.h>
#include <string.h>

#include "kernels/gemm.h"
#include "kernels/kernels.h"

long attention_saved_floats(int B, int C, int N) {
    long C8 = C / 8, C2 = C / 2;
    return (long)B * N * (C8 + C8 + C2 + N + C2 + C);
}

void attention_saved_carve(AttentionSaved *s, float *buf, int B, int C, int N) {
    long C8 = C / 8, C2 = C / 2, BN = (long)B * N;
    s->f = buf;
    s->g = s->f + BN * C8;
    s->h = s->g + BN * C8;
    s->attn = s->h + BN * C2;
    s->o = s->attn + BN * N;
    s->y = s->o + BN * C2;
}

static int attention_shape_ok(int B, int C, int N) {
    return B > 0 && C >= 8 && C % 8 == 0 && N > 0;
}

// e^x for x <= 0, in a form GCC vectorizes (glibc's expf is not, without -ffast-math; floorf
// is not either, with trapping math). Range reduction x = n ln2 + r, |r| <= ln2/2, with n rounded
// by adding 1.5 * 2^23, which leaves n in the low mantissa bits of t; then Cephes' degree-6
// polynomial for e^r, scaled by 2^n made in the exponent bits. Measured relative error below 1e-7.
// Below -40 the result is 0: e^-40 ~ 4e-18 is far below a float's precision next to the row's
// largest term (1), and values down at 1e-38 would make the products that follow denormal.
static inline float exp_nonpositive(float x) {
    const float log2e = 1.44269504088896341f, ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
    const float round = 12582912.0f; // 1.5 * 2^23, whose bit pattern is 0x4B400000
    float xc = x > -40.0f ? x : -40.0f;
    float t = xc * log2e + round;
    float n = t - round;
    float r = xc - n * ln2_hi - n * ln2_lo;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t tbits, bits;
    float scale;
    memcpy(&tbits, &t, sizeof(tbits));
    bits = (tbits - 0x4B400000 + 127) * (1 << 23);
    memcpy(&scale, &bits, sizeof(scale));
    float e = p * scale;
    return x > -40.0f ? e : 0.0f;
}

// 16 floats as one value (GCC/Clang vector extension): one AVX-512 register here, split into
// narrower registers by the compiler on machines without it. Loaded and stored with memcpy, so
// the floats need no particular alignment.
typedef float Vec16 __attribute__((vector_size(64)));

static inline Vec16 vec16_load(const float *p) {
    Vec16 v;
    memcpy(&v, p, sizeof(v));
    return v;
}

static inline void vec16_store(float *p, Vec16 v) {
    memcpy(p, &v, sizeof(v));
}

// out (R, N) = w (R, K) x (K, N) for small K, where w's element (r, k) is w[r * w_row +
// k * w_col]: the 1x1 projections (K = C) and a row of scores (K = C/8). dnnl_sgemm spends more
// time packing than multiplying at these sizes (the projections measured 2.8x faster here), and
// for the scores it would write the N x N matrix that the softmax then reads again. Each sum
// stays in a register; four independent ones per 64 outputs hide the latency of the adds. (They
// are not fused into FMAs: -std=c11 turns that contraction off. On Zen 4 a multiply and an add
// issue together, so it costs little there.)
static void small_k_product(float *restrict out, const float *restrict w, long w_row, long w_col,
                            const float *restrict x, int R, int K, int N) {
    for (int r = 0; r < R; r++) {
        const float *wr = w + r * w_row;
        float *o = out + (long)r * N;
        int n = 0;
        for (; n + 64 <= N; n += 64) {
            Vec16 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
            for (int k = 0; k < K; k++) {
                float wk = wr[k * w_col];
                const float *xk = x + (long)k * N + n;
                a0 += wk * vec16_load(xk);
                a1 += wk * vec16_load(xk + 16);
                a2 += wk * vec16_load(xk + 32);
                a3 += wk * vec16_load(xk + 48);
            }
            vec16_store(o + n, a0);
            vec16_store(o + n + 16, a1);
            vec16_store(o + n + 32, a2);
            vec16_store(o + n + 48, a3);
        }
        for (; n + 16 <= N; n += 16) {
            Vec16 a0 = {0};
            for (int k = 0; k < K; k++)
                a0 += wr[k * w_col] * vec16_load(x + (long)k * N + n);
            vec16_store(o + n, a0);
        }
        for (; n < N; n++) {
            float sum = 0;
            for (int k = 0; k < K; k++)
                sum += wr[k * w_col] * x[(long)k * N + n];
            o[n] = sum;
        }
    }
}

// row (N) becomes its softmax, max-subtracted for stability.
static void softmax_row(float *row, int N) {
    float mx = row[0];
#pragma omp simd reduction(max : mx)
    for (int i = 0; i < N; i++)
        mx = row[i] > mx ? row[i] : mx;
    float sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int i = 0; i < N; i++) {
        row[i] = exp_nonpositive(row[i] - mx);
        sum += row[i];
    }
    float inv = 1.0f / sum;
#pragma omp simd
    for (int i = 0; i < N; i++)
        row[i] *= inv;
}

// The forward of one item: x, f, g, h, o, y (channels, N), attn (N, N); out (C, N).
static int attention_item_forward(float *out, float *f, float *g, float *h, float *attn, float *o,
                                  float *y, const float *x, const float *wf, const float *wg,
                                  const float *wh, const float *wo, float gamma, int C, int N) {
    int C8 = C / 8, C2 = C / 2;
    small_k_product(f, wf, C, 1, x, C8, C, N);
    small_k_product(g, wg, C, 1, x, C8, C, N);
    small_k_product(h, wh, C, 1, x, C2, C, N);
    // Row j of the scores, s[j][i] = g_j . f_i, is made and turned into its softmax while it is
    // in L1.
    for (int j = 0; j < N; j++) {
        float *row = attn + (long)j * N;
        small_k_product(row, g + j, 0, N, f, 1, C8, N);
        softmax_row(row, N);
    }
    // o[c][j] = sum_i h[c][i] attn[j][i]: o = h attn^T, then y = wo o (K = N and C/2: GEMMs).
    int rc = gemm(0, 1, C2, N, N, 1.0f, h, N, attn, N, 0.0f, o, N);
    rc = rc ? rc : gemm(0, 0, C, N, C2, 1.0f, wo, C2, o, N, 0.0f, y, N);
    if (rc)
        return rc;
    long CN = (long)C * N;
#pragma omp simd
    for (long k = 0; k < CN; k++)
        out[k] = x[k] + gamma * y[k];
    return 0;
}

int attention_forward(float *out, AttentionSaved *s, const float *x, const float *wf,
                      const float *wg, const float *wh, const float *wo, float gamma, int B,
                      int C, int N) {
    if (!attention_shape_ok(B, C, N))
        return KERNELS_EINVAL;
    long C8 = C / 8, C2 = C / 2, CN = (long)C * N;
    int rc = 0;
#pragma omp parallel for schedule(static) reduction(min : rc) if (B > 1)
    for (int b = 0; b < B; b++) {
        int r = attention_item_forward(out + b * CN, s->f + b * C8 * N, s->g + b * C8 * N,
                                       s->h + b * C2 * N, s->attn + (long)b * N * N,
                                       s->o + b * C2 * N, s->y + b * CN, x + b * CN, wf, wg, wh,
                                       wo, gamma, C, N);
        rc = r < rc ? r : rc;
    }
    return rc;
}

// ---------------------------------------------------------------------------------------------
// Backward. Per item, the scratch holds (in this order):
//   dO (C2, N), dh (C2, N), df (C8, N), dg (C8, N), ds (N, N),
//   dwf, dwg (C8, C), dwh (C2, C), dwo (C, C2) this item's weight gradients, dgamma (1).

static long item_scratch_floats(int C, int N) {
    long C8 = C / 8, C2 = C / 2;
    return N * (C2 + C2 + C8 + C8 + (long)N) + 2 * C8 * C + 2 * C2 * C + 1;
}

long attention_scratch_floats(int B, int C, int N) {
    return (long)B * item_scratch_floats(C, N);
}

// The backward of one item. Writes its weight gradients (and dgamma) into its own scratch, adds
// its data gradient into dx (C, N). weights says whether to form the weight gradients at all.
static int attention_item_backward(float *dx, float *scratch, int weights, const float *dout,
                                   const float *f, const float *g, const float *h,
                                   const float *attn, const float *o, const float *y,
                                   const float *x, const float *wf, const float *wg,
                                   const float *wh, const float *wo, float gamma, int C, int N) {
    int C8 = C / 8, C2 = C / 2, rc = 0;
    long CN = (long)C * N;
    float *dO = scratch, *dh = dO + (long)C2 * N, *df = dh + (long)C2 * N, *dg = df + (long)C8 * N;
    float *ds = dg + (long)C8 * N, *dwf = ds + (long)N * N, *dwg = dwf + C8 * C,
          *dwh = dwg + C8 * C, *dwo = dwh + C2 * C, *dgamma = dwo + C * C2;

    // out = x + gamma y, y = wo o: dx += dout, dgamma = <dout, y>, dO = gamma wo^T dout.
    float dot = 0;
#pragma omp simd reduction(+ : dot)
    for (long k = 0; k < CN; k++) {
        dx[k] += dout[k];
        dot += dout[k] * y[k];
    }
    *dgamma = dot;
    rc = rc ? rc : gemm(1, 0, C2, N, C, gamma, wo, C2, dout, N, 0.0f, dO, N);
    if (weights)
        rc = rc ? rc : gemm(0, 1, C, C2, N, gamma, dout, N, o, N, 0.0f, dwo, C2);
    // o = h attn^T: dattn[j][i] = sum_c dO[c][j] h[c][i] (into ds), dh = dO attn.
    rc = rc ? rc : gemm(1, 0, N, N, C2, 1.0f, dO, N, h, N, 0.0f, ds, N);
    rc = rc ? rc : gemm(0, 0, C2, N, N, 1.0f, dO, N, attn, N, 0.0f, dh, N);
    if (rc)
        return rc;
    // Softmax over each row j: ds = attn * (dattn - <attn, dattn>).
    for (int j = 0; j < N; j++) {
        float *r = ds + (long)j * N;
        const float *p = attn + (long)j * N;
        float pd = 0;
#pragma omp simd reduction(+ : pd)
        for (int i = 0; i < N; i++)
            pd += p[i] * r[i];
#pragma omp simd
        for (int i = 0; i < N; i++)
            r[i] = p[i] * (r[i] - pd);
    }
    // s = g^T f: df = g ds, dg = f ds^T.
    rc = rc ? rc : gemm(0, 0, C8, N, N, 1.0f, g, N, ds, N, 0.0f, df, N);
    rc = rc ? rc : gemm(0, 1, C8, N, N, 1.0f, f, N, ds, N, 0.0f, dg, N);
    // The projections: dx += w^T d(proj), dw = d(proj) x^T.
    rc = rc ? rc : gemm(1, 0, C, N, C8, 1.0f, wf, C, df, N, 1.0f, dx, N);
    rc = rc ? rc : gemm(1, 0, C, N, C8, 1.0f, wg, C, dg, N, 1.0f, dx, N);
    rc = rc ? rc : gemm(1, 0, C, N, C2, 1.0f, wh, C, dh, N, 1.0f, dx, N);
    if (weights) {
        rc = rc ? rc : gemm(0, 1, C8, C, N, 1.0f, df, N, x, N, 0.0f, dwf, C);
        rc = rc ? rc : gemm(0, 1, C8, C, N, 1.0f, dg, N, x, N, 0.0f, dwg, C);
        rc = rc ? rc : gemm(0, 1, C2, C, N, 1.0f, dh, N, x, N, 0.0f, dwh, C);
    }
    return rc;
}

// dst (n) += the sum over B items of the n floats at src + b * stride, in item order.
static void reduce_items(float *dst, const float *src, long stride, int B, long n) {
    for (long k = 0; k < n; k++) {
        float sum = 0;
        for (int b = 0; b < B; b++)
            sum += src[b * stride + k];
        dst[k] += sum;
    }
}

int attention_backward(float *dx, float *dwf, float *dwg, float *dwh, float *dwo, float *dgamma,
                       const float *dout, const AttentionSaved *s, const float *x,
                       const float *wf, const float *wg, const float *wh, const float *wo,
                       float gamma, float *scratch, int B, int C, int N) {
    if (!attention_shape_ok(B, C, N))
        return KERNELS_EINVAL;
    long C8 = C / 8, C2 = C / 2, CN = (long)C * N, per = item_scratch_floats(C, N);
    int weights = dwf || dwg || dwh || dwo;
    int rc = 0;
#pragma omp parallel for schedule(static) reduction(min : rc) if (B > 1)
    for (int b = 0; b < B; b++) {
        int r = attention_item_backward(
            dx + b * CN, scratch + b * per, weights, dout + b * CN, s->f + b * C8 * N,
            s->g + b * C8 * N, s->h + b * C2 * N, s->attn + (long)b * N * N, s->o + b * C2 * N,
            s->y + b * CN, x + b * CN, wf, wg, wh, wo, gamma, C, N);
        rc = r < rc ? r : rc;
    }
    if (rc)
        return rc;
    // The per-item weight gradients sit at the same offsets of every item's scratch.
    const float *w0 = scratch + N * (2 * C2 + 2 * C8 + (long)N);
    if (dwf)
        reduce_items(dwf, w0, per, B, C8 * C);
    if (dwg)
        reduce_items(dwg, w0 + C8 * C, per, B, C8 * C);
    if (dwh)
        reduce_items(dwh, w0 + 2 * C8 * C, per, B, C2 * C);
    if (dwo)
        reduce_items(dwo, w0 + 2 * C8 * C + C2 * C, per, B, C * C2);
    if (dgamma)
        reduce_items(dgamma, w0 + 2 * C8 * C + 2 * C2 * C, per, B, 1);
    return 0;
}
