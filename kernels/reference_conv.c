// reference_conv.c — naive double-precision loops for convolution, the linear layer and SAGAN
// attention, forward and backward (the conv2d_*_ref, linear_*_ref, attention_*_ref of
// reference.h).
//
// Test-only ground truth: written to be obviously right, one output element at a time, with no
// blocking, threads or caching. Gradients accumulate (+=) like the fast kernels. The rest of
// reference.h lives in reference.c.
//
// B batch, C input channels, H, W input spatial, OC output channels, K kernel, S stride, P pad,
// OH, OW output spatial, N = H*W positions, IN/OUT features.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/reference.h"

// out (B, OC, OH, OW); inp (B, C, H, W); w (OC, C, K, K); bias (OC) or NULL.
void conv2d_forward_ref(double *out, const double *inp, const double *w, const double *bias, int B,
                        int C, int H, int W, int OC, int K, int S, int P) {
    int OH = (H + 2 * P - K) / S + 1, OW = (W + 2 * P - K) / S + 1;
    for (int b = 0; b < B; b++)
        for (int oc = 0; oc < OC; oc++)
            for (int oy = 0; oy < OH; oy++)
                for (int ox = 0; ox < OW; ox++) {
                    double sum = bias ? bias[oc] : 0.0;
                    for (int c = 0; c < C; c++)
                        for (int ky = 0; ky < K; ky++)
                            for (int kx = 0; kx < K; kx++) {
                                int y = oy * S - P + ky, x = ox * S - P + kx;
                                if (y < 0 || y >= H || x < 0 || x >= W)
                                    continue;
                                sum += inp[((long)(b * C + c) * H + y) * W + x] *
                                       w[((long)(oc * C + c) * K + ky) * K + kx];
                            }
                    out[((long)(b * OC + oc) * OH + oy) * OW + ox] = sum;
                }
}

// Accumulates into dinp (B, C, H, W), dw (OC, C, K, K), dbias (OC); each may be NULL.
void conv2d_backward_ref(double *dinp, double *dw, double *dbias, const double *dout,
                         const double *inp, const double *w, int B, int C, int H, int W, int OC,
                         int K, int S, int P) {
    int OH = (H + 2 * P - K) / S + 1, OW = (W + 2 * P - K) / S + 1;
    for (int b = 0; b < B; b++)
        for (int oc = 0; oc < OC; oc++)
            for (int oy = 0; oy < OH; oy++)
                for (int ox = 0; ox < OW; ox++) {
                    double d = dout[((long)(b * OC + oc) * OH + oy) * OW + ox];
                    if (dbias)
                        dbias[oc] += d;
                    for (int c = 0; c < C; c++)
                        for (int ky = 0; ky < K; ky++)
                            for (int kx = 0; kx < K; kx++) {
                                int y = oy * S - P + ky, x = ox * S - P + kx;
                                if (y < 0 || y >= H || x < 0 || x >= W)
                                    continue;
                                long ii = ((long)(b * C + c) * H + y) * W + x;
                                long wi = ((long)(oc * C + c) * K + ky) * K + kx;
                                if (dinp)
                                    dinp[ii] += d * w[wi];
                                if (dw)
                                    dw[wi] += d * inp[ii];
                            }
                }
}

// out (B, OUT) = inp (B, IN) w^T + bias; w (OUT, IN); bias (OUT) or NULL.
void linear_forward_ref(double *out, const double *inp, const double *w, const double *bias, int B,
                        int IN, int OUT) {
    for (int b = 0; b < B; b++)
        for (int o = 0; o < OUT; o++) {
            double sum = bias ? bias[o] : 0.0;
            for (int i = 0; i < IN; i++)
                sum += inp[(long)b * IN + i] * w[(long)o * IN + i];
            out[(long)b * OUT + o] = sum;
        }
}

// Accumulates into dinp (B, IN), dw (OUT, IN), dbias (OUT); each may be NULL.
void linear_backward_ref(double *dinp, double *dw, double *dbias, const double *dout,
                         const double *inp, const double *w, int B, int IN, int OUT) {
    for (int b = 0; b < B; b++)
        for (int o = 0; o < OUT; o++) {
            double d = dout[(long)b * OUT + o];
            if (dbias)
                dbias[o] += d;
            for (int i = 0; i < IN; i++) {
                if (dinp)
                    dinp[(long)b * IN + i] += d * w[(long)o * IN + i];
                if (dw)
                    dw[(long)o * IN + i] += d * inp[(long)b * IN + i];
            }
        }
}

// ---------------------------------------------------------------------------------------------
// SAGAN attention for one batch item; the math of attention.h. x (C, N).

// The forward intermediates of one item, all (rows, N) except attn (N, N).
typedef struct {
    double *f, *g, *h; // (C/8, N), (C/8, N), (C/2, N)
    double *attn;      // (N, N) row j: softmax over i of f_i . g_j
    double *o;         // (C/2, N)
    double *y;         // (C, N)
} AttnRefActs;

static double *ref_alloc(long n) {
    double *p = calloc((size_t)n, sizeof(double));
    if (!p)
        abort(); // test-only code: running out of memory here is a broken test machine
    return p;
}

static void attn_ref_alloc(AttnRefActs *a, int C, int N) {
    a->f = ref_alloc((long)C / 8 * N);
    a->g = ref_alloc((long)C / 8 * N);
    a->h = ref_alloc((long)C / 2 * N);
    a->attn = ref_alloc((long)N * N);
    a->o = ref_alloc((long)C / 2 * N);
    a->y = ref_alloc((long)C * N);
}

static void attn_ref_free(AttnRefActs *a) {
    free(a->f);
    free(a->g);
    free(a->h);
    free(a->attn);
    free(a->o);
    free(a->y);
}

// out (R, N) = w (R, C) x (C, N): a 1x1 convolution without bias.
static void proj_ref(double *out, const double *w, const double *x, int R, int C, int N) {
    for (int r = 0; r < R; r++)
        for (int n = 0; n < N; n++) {
            double sum = 0;
            for (int c = 0; c < C; c++)
                sum += w[(long)r * C + c] * x[(long)c * N + n];
            out[(long)r * N + n] = sum;
        }
}

// dx (C, N) += w^T dout; dw (R, C) += dout x^T (when dw is not NULL); dout (R, N).
static void proj_backward_ref(double *dx, double *dw, const double *dout, const double *w,
                              const double *x, int R, int C, int N) {
    for (int r = 0; r < R; r++)
        for (int n = 0; n < N; n++) {
            double d = dout[(long)r * N + n];
            for (int c = 0; c < C; c++) {
                dx[(long)c * N + n] += w[(long)r * C + c] * d;
                if (dw)
                    dw[(long)r * C + c] += d * x[(long)c * N + n];
            }
        }
}

static void attn_ref_item(AttnRefActs *a, const double *x, const double *wf, const double *wg,
                          const double *wh, const double *wo, int C, int N) {
    int C8 = C / 8, C2 = C / 2;
    proj_ref(a->f, wf, x, C8, C, N);
    proj_ref(a->g, wg, x, C8, C, N);
    proj_ref(a->h, wh, x, C2, C, N);
    for (int j = 0; j < N; j++) {
        double *row = a->attn + (long)j * N, mx = -INFINITY, sum = 0;
        for (int i = 0; i < N; i++) {
            double s = 0;
            for (int c = 0; c < C8; c++)
                s += a->f[(long)c * N + i] * a->g[(long)c * N + j];
            row[i] = s;
            mx = fmax(mx, s);
        }
        for (int i = 0; i < N; i++)
            sum += (row[i] = exp(row[i] - mx));
        for (int i = 0; i < N; i++)
            row[i] /= sum;
    }
    for (int c = 0; c < C2; c++)
        for (int j = 0; j < N; j++) {
            double s = 0;
            for (int i = 0; i < N; i++)
                s += a->h[(long)c * N + i] * a->attn[(long)j * N + i];
            a->o[(long)c * N + j] = s;
        }
    proj_ref(a->y, wo, a->o, C, C2, N);
}

// out (B, C, N); x (B, C, N); wf, wg (C/8, C); wh (C/2, C); wo (C, C/2).
void attention_forward_ref(double *out, const double *x, const double *wf, const double *wg,
                           const double *wh, const double *wo, double gamma, int B, int C, int N) {
    AttnRefActs a;
    attn_ref_alloc(&a, C, N);
    for (int b = 0; b < B; b++) {
        const double *xb = x + (long)b * C * N;
        attn_ref_item(&a, xb, wf, wg, wh, wo, C, N);
        for (long k = 0; k < (long)C * N; k++)
            out[(long)b * C * N + k] = xb[k] + gamma * a.y[k];
    }
    attn_ref_free(&a);
}

// Accumulates into dx (B, C, N), dwf, dwg, dwh, dwo and *dgamma (each may be NULL but dx).
// The forward is recomputed per item.
void attention_backward_ref(double *dx, double *dwf, double *dwg, double *dwh, double *dwo,
                            double *dgamma, const double *dout, const double *x, const double *wf,
                            const double *wg, const double *wh, const double *wo, double gamma,
                            int B, int C, int N) {
    int C8 = C / 8, C2 = C / 2;
    AttnRefActs a;
    attn_ref_alloc(&a, C, N);
    double *dy = ref_alloc((long)C * N), *dO = ref_alloc((long)C2 * N);
    double *dh = ref_alloc((long)C2 * N), *df = ref_alloc((long)C8 * N);
    double *dg = ref_alloc((long)C8 * N), *ds = ref_alloc((long)N * N);
    for (int b = 0; b < B; b++) {
        const double *xb = x + (long)b * C * N, *db = dout + (long)b * C * N;
        double *dxb = dx + (long)b * C * N;
        attn_ref_item(&a, xb, wf, wg, wh, wo, C, N);
        // out = x + gamma y
        for (long k = 0; k < (long)C * N; k++) {
            dxb[k] += db[k];
            if (dgamma)
                *dgamma += db[k] * a.y[k];
            dy[k] = gamma * db[k];
        }
        // y = wo o
        memset(dO, 0, sizeof(double) * C2 * N);
        proj_backward_ref(dO, dwo, dy, wo, a.o, C, C2, N);
        // o[c][j] = sum_i h[c][i] attn[j][i]
        memset(dh, 0, sizeof(double) * C2 * N);
        for (int j = 0; j < N; j++)
            for (int i = 0; i < N; i++) {
                double da = 0;
                for (int c = 0; c < C2; c++) {
                    da += dO[(long)c * N + j] * a.h[(long)c * N + i];
                    dh[(long)c * N + i] += dO[(long)c * N + j] * a.attn[(long)j * N + i];
                }
                ds[(long)j * N + i] = da;
            }
        // softmax over i of row j: ds = attn * (dattn - sum_k attn dattn)
        for (int j = 0; j < N; j++) {
            double *r = ds + (long)j * N, dot = 0;
            const double *p = a.attn + (long)j * N;
            for (int i = 0; i < N; i++)
                dot += p[i] * r[i];
            for (int i = 0; i < N; i++)
                r[i] = p[i] * (r[i] - dot);
        }
        // s[j][i] = sum_c f[c][i] g[c][j]
        memset(df, 0, sizeof(double) * C8 * N);
        memset(dg, 0, sizeof(double) * C8 * N);
        for (int j = 0; j < N; j++)
            for (int i = 0; i < N; i++) {
                double d = ds[(long)j * N + i];
                for (int c = 0; c < C8; c++) {
                    df[(long)c * N + i] += d * a.g[(long)c * N + j];
                    dg[(long)c * N + j] += d * a.f[(long)c * N + i];
                }
            }
        proj_backward_ref(dxb, dwf, df, wf, xb, C8, C, N);
        proj_backward_ref(dxb, dwg, dg, wg, xb, C8, C, N);
        proj_backward_ref(dxb, dwh, dh, wh, xb, C2, C, N);
    }
    free(dy);
    free(dO);
    free(dh);
    free(df);
    free(dg);
    free(ds);
    attn_ref_free(&a);
}
