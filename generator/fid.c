// fid.c — Gaussian fits of feature sets and the Fréchet distance between them; see fid.h.
//
// Everything is double: the trace terms are differences of numbers of similar size, and a float
// covariance of 10,000 samples would lose the small FDs (under 1) that separate good generators.
// The matrix square root goes through symmetric eigendecompositions (LAPACKE_dsyevd), which unlike
// scipy's sqrtm never yields complex parts on near-singular covariances. Not here: the features
// themselves (classifier.c) and any notion of images.
//
// D feature dimension, n samples.
#include "generator/fid.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

const char *fid_strerror(int code) {
    switch (code) {
#define X(name, c, msg)                                                                            \
    case c:                                                                                        \
        return msg;
        FID_ERRNO_MAP(X)
#undef X
    case 0:
        return "success";
    }
    return "unknown error";
}

void fid_stats_free(FidStats *s) {
    free(s->mu);
    free(s->cov);
    memset(s, 0, sizeof *s);
}

int fid_stats_compute(FidStats *s, const float *feat, long n, int d) {
    memset(s, 0, sizeof *s);
    if (!feat || n < 2 || d < 1)
        return FID_EINVAL;
    int rc = FID_ENOMEM;
    double *centered = malloc(sizeof(double) * n * d); // (n, D)
    s->mu = calloc(d, sizeof(double));
    s->cov = malloc(sizeof(double) * d * d);
    if (!centered || !s->mu || !s->cov)
        goto fail;
    for (long i = 0; i < n; i++)
        for (int j = 0; j < d; j++) {
            double v = feat[i * d + j];
            if (!isfinite(v)) {
                rc = FID_ENONFINITE;
                goto fail;
            }
            s->mu[j] += v;
        }
    for (int j = 0; j < d; j++)
        s->mu[j] /= (double)n;
    for (long i = 0; i < n; i++)
        for (int j = 0; j < d; j++)
            centered[i * d + j] = feat[i * d + j] - s->mu[j];
    // cov = X^T X / (n - 1) on the upper triangle, then mirrored.
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, d, (int)n, 1.0 / (double)(n - 1), centered,
                d, 0.0, s->cov, d);
    for (int i = 0; i < d; i++)
        for (int j = 0; j < i; j++)
            s->cov[i * d + j] = s->cov[j * d + i];
    s->d = d;
    s->n = n;
    free(centered);
    return 0;
fail:
    free(centered);
    fid_stats_free(s);
    return rc;
}

int fid_frechet_distance(double *fd, const double *mu1, const double *cov1, const double *mu2,
                         const double *cov2, int d) {
    if (!fd || !mu1 || !cov1 || !mu2 || !cov2 || d < 1)
        return FID_EINVAL;
    int rc = FID_ENOMEM;
    size_t dd = (size_t)d * d;
    double *v = malloc(sizeof(double) * dd);  // (D, D) eigenvectors of S1, then V diag(sqrt(l))
    double *t = malloc(sizeof(double) * dd);  // (D, D) S2 W
    double *m = malloc(sizeof(double) * dd);  // (D, D) W^T S2 W
    double *eig = malloc(sizeof(double) * d); // (D)
    if (!v || !t || !m || !eig)
        goto done;

    // S1 = V diag(l) V^T. With W = V diag(sqrt(max(l, 0))), sqrt(S1) = W V^T, and
    // M = sqrt(S1) S2 sqrt(S1) = V (W^T S2 W) V^T: the same eigenvalues as W^T S2 W, which is
    // cheaper to form (two products instead of four) and symmetric PSD.
    memcpy(v, cov1, sizeof(double) * dd);
    rc = FID_ELAPACK;
    if (LAPACKE_dsyevd(LAPACK_ROW_MAJOR, 'V', 'U', d, v, d, eig) != 0)
        goto done;
    for (int j = 0; j < d; j++) {
        double r = sqrt(eig[j] > 0.0 ? eig[j] : 0.0);
        for (int i = 0; i < d; i++)
            v[(size_t)i * d + j] *= r; // scale column j
    }
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, d, d, d, 1.0, cov2, d, v, d, 0.0, t, d);
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, d, d, d, 1.0, v, d, t, d, 0.0, m, d);
    // Rounding leaves M a hair off symmetric; dsyevd reads one triangle, so average them first.
    for (int i = 0; i < d; i++)
        for (int j = 0; j < i; j++) {
            double a = 0.5 * (m[(size_t)i * d + j] + m[(size_t)j * d + i]);
            m[(size_t)i * d + j] = m[(size_t)j * d + i] = a;
        }
    if (LAPACKE_dsyevd(LAPACK_ROW_MAJOR, 'N', 'U', d, m, d, eig) != 0)
        goto done;
    double tr_sqrt = 0.0, tr1 = 0.0, tr2 = 0.0, dmu = 0.0;
    for (int j = 0; j < d; j++)
        tr_sqrt += sqrt(eig[j] > 0.0 ? eig[j] : 0.0);
    for (int j = 0; j < d; j++) {
        tr1 += cov1[(size_t)j * d + j];
        tr2 += cov2[(size_t)j * d + j];
        dmu += (mu1[j] - mu2[j]) * (mu1[j] - mu2[j]);
    }
    *fd = dmu + tr1 + tr2 - 2.0 * tr_sqrt;
    rc = 0;
done:
    free(v);
    free(t);
    free(m);
    free(eig);
    return rc;
}

int fid_stats_distance(double *fd, const FidStats *a, const FidStats *b) {
    if (!a || !b || a->d != b->d || !a->mu || !b->mu)
        return FID_EINVAL;
    return fid_frechet_distance(fd, a->mu, a->cov, b->mu, b->cov, a->d);
}
