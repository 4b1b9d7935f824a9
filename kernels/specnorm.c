// specnorm.c — spectral normalization (Miyato et al. 2018) of a weight viewed as a matrix
// W (OUT, IN), by one power iteration per call, and its gradient through sigma.
//
// Matches torch.nn.utils.spectral_norm: vectors are normalized as x / max(||x||, eps) with
// eps = 1e-12, sigma = u^T W v, and the backward holds u and v constant. It is not a full SVD
// (sigma is exact only once u has converged over many training steps) and it is serial: the
// largest weight in fmnist32 is ~74k floats, a few microseconds of work, not worth a thread team.
#include "kernels/specnorm.h"

#include <math.h>

// sum_j a[j] * b[j] in double, so sigma and the norms do not lose digits over long rows.
static double dot_f(const float *a, const float *b, int n) {
    double acc = 0.0;
#pragma omp simd reduction(+ : acc)
    for (int j = 0; j < n; j++)
        acc += (double)a[j] * (double)b[j];
    return acc;
}

// v = normalize(W^T u) and then either u' = normalize(W v) with sigma = u'^T W v (update), or
// sigma = u^T W v with u as stored. W^T u is accumulated row by row (contiguous, vectorized) in
// v_out itself, and W v is formed in u itself when u is about to be replaced, so no scratch is
// needed. sigma >= 0 always; it is 0 only for W = 0 (or u orthogonal to W's column space), where
// w_sn becomes NaN as it does in PyTorch.
float specnorm_forward(float *w_sn, float *v_out, float *u, const float *w, int OUT, int IN,
                       int update) {
    float *v = v_out;
    for (int j = 0; j < IN; j++)
        v[j] = 0.0f;
    for (int i = 0; i < OUT; i++) {
        const float *row = w + (long)i * IN;
        float ui = u[i];
#pragma omp simd
        for (int j = 0; j < IN; j++)
            v[j] += ui * row[j];
    }
    double vnorm = sqrt(dot_f(v, v, IN));
    float vscale = (float)(1.0 / fmax(vnorm, SPECNORM_EPS));
    for (int j = 0; j < IN; j++)
        v[j] *= vscale;

    double sigma;
    if (update) {
        // u <- W v, then sigma = u'^T W v = ||W v||^2 / max(||W v||, eps) and u <- u'.
        for (int i = 0; i < OUT; i++)
            u[i] = (float)dot_f(w + (long)i * IN, v, IN);
        double unorm = sqrt(dot_f(u, u, OUT));
        double denom = fmax(unorm, SPECNORM_EPS);
        sigma = unorm * unorm / denom;
        float uscale = (float)(1.0 / denom);
        for (int i = 0; i < OUT; i++)
            u[i] *= uscale;
    } else {
        sigma = 0.0;
        for (int i = 0; i < OUT; i++)
            sigma += (double)u[i] * dot_f(w + (long)i * IN, v, IN);
    }

    float inv_sigma = (float)(1.0 / sigma);
    long n = (long)OUT * IN;
#pragma omp simd
    for (long k = 0; k < n; k++)
        w_sn[k] = w[k] * inv_sigma;
    return (float)sigma;
}

// W_sn = W / sigma with sigma = u^T W v and u, v constant, so d sigma / dW = u v^T and
// dL/dW = dW_sn / sigma - <dW_sn, W> / sigma^2 u v^T = (dW_sn - <dW_sn, W_sn> u v^T) / sigma
// (Miyato et al. 2018, eq. 12).
void specnorm_backward(float *dw, const float *dw_sn, const float *w_sn, const float *u,
                       const float *v, float sigma, int OUT, int IN) {
    double inner = 0.0;
    for (int i = 0; i < OUT; i++)
        inner += dot_f(dw_sn + (long)i * IN, w_sn + (long)i * IN, IN);
    float inv_sigma = 1.0f / sigma;
    for (int i = 0; i < OUT; i++) {
        float coef = (float)(inner * u[i]);
        const float *g = dw_sn + (long)i * IN;
        float *d = dw + (long)i * IN;
#pragma omp simd
        for (int j = 0; j < IN; j++)
            d[j] += (g[j] - coef * v[j]) * inv_sigma;
    }
}
