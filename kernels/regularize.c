// regularize.c — L1 activation penalty and orthogonal regularization; see regularize.h.
//
// Plain loops and two GEMMs: these run once per training step on weights and block outputs, a
// small cost beside the convolutions. Not a loss of the GAN itself (ops.c has the hinge losses).
#include "kernels/regularize.h"

#include <math.h>

#include "kernels/gemm.h"

double l1_forward(const float *inp, long n) {
    double s = 0.0;
#pragma omp parallel for simd reduction(+ : s) schedule(static) if (parallel : n >= (1L << 16))
    for (long i = 0; i < n; i++)
        s += fabs((double)inp[i]);
    return s;
}

void l1_backward(float *dinp, const float *inp, float scale, long n) {
#pragma omp parallel for simd schedule(static) if (parallel : n >= (1L << 16))
    for (long i = 0; i < n; i++)
        dinp[i] += inp[i] > 0.0f ? scale : (inp[i] < 0.0f ? -scale : 0.0f);
}

long ortho_scratch_floats(int OUT, int IN) {
    long k = OUT < IN ? OUT : IN;
    return k * k;
}

// With M = W W^T and M' = M (.) (1 - I): R = beta sum_{i != j} M_ij^2, and since row k appears in
// M_kj and M_jk, dR/dw_k = 4 beta sum_{j != k} M_kj w_j = 4 beta (M' W)_k.
// Tall W (OUT > IN): sum_ij M_ij^2 = ||W^T W||_F^2 and M' W = W (W^T W) - diag(|w_k|^2) W.
int ortho_reg_backward(float *dw, double *value, const float *w, float beta, float *scratch,
                       int OUT, int IN) {
    double r = 0.0;
    if (OUT <= IN) {
        float *M = scratch; // (OUT, OUT)
        int rc = gemm(0, 1, OUT, OUT, IN, 1.0f, w, IN, w, IN, 0.0f, M, OUT);
        if (rc) return rc;
        for (int i = 0; i < OUT; i++) M[(long)i * OUT + i] = 0.0f;
        for (long k = 0; k < (long)OUT * OUT; k++) r += (double)M[k] * M[k];
        if ((rc = gemm(0, 0, OUT, IN, OUT, 4.0f * beta, M, OUT, w, IN, 1.0f, dw, IN))) return rc;
    } else {
        float *G = scratch; // (IN, IN)
        int rc = gemm(1, 0, IN, IN, OUT, 1.0f, w, IN, w, IN, 0.0f, G, IN);
        if (rc) return rc;
        for (long k = 0; k < (long)IN * IN; k++) r += (double)G[k] * G[k];
        if ((rc = gemm(0, 0, OUT, IN, IN, 4.0f * beta, w, IN, G, IN, 1.0f, dw, IN))) return rc;
        for (int i = 0; i < OUT; i++) {
            const float *row = w + (long)i * IN;
            float *d = dw + (long)i * IN;
            double n2 = 0.0;
            for (int j = 0; j < IN; j++) n2 += (double)row[j] * row[j];
            r -= n2 * n2;
            float c = (float)(4.0 * beta * n2);
            for (int j = 0; j < IN; j++) d[j] -= c * row[j];
        }
    }
    if (value) *value = beta * r;
    return 0;
}

double grad_penalty_fd_prepare(float *x2, float *dout2, const float *grad, const float *x, int r1,
                               float weight, float fd_step, int B, long n) {
    double P = 0.0;
    for (int b = 0; b < B; b++) {
        const float *g = grad + b * n, *xb = x + b * n;
        float *xp = x2 + b * n, *xm = x2 + (B + b) * n;
        double n2 = 0.0;
        for (long i = 0; i < n; i++) n2 += (double)g[i] * g[i];
        double norm = sqrt(n2), coef; // d P / d (1/2 ||g_b||^2)
        if (r1) {
            P += 0.5 * n2 / B;
            coef = 1.0 / B;
        } else {
            P += (norm - 1.0) * (norm - 1.0) / B;
            coef = norm > 0.0 ? 2.0 * (norm - 1.0) / (norm * B) : 0.0; // no direction at g = 0
        }
        if (!(norm > 0.0) || !isfinite(norm)) coef = 0.0;
        float e = coef != 0.0 ? (float)(fd_step / norm) : 0.0f;
        for (long i = 0; i < n; i++) {
            xp[i] = xb[i] + e * g[i];
            xm[i] = xb[i] - e * g[i];
        }
        float o = coef != 0.0 ? (float)(weight * coef / (2.0 * e)) : 0.0f;
        dout2[b] = o;
        dout2[B + b] = -o;
    }
    return weight * P;
}
