// fid.h — the Fréchet distance between two Gaussians fitted to feature sets (Heusel et al. 2017,
// "GANs trained by a two time-scale update rule converge to a local Nash equilibrium", eq. 6):
//
//   FD = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr( (S1 S2)^(1/2) )
//
// computed in double with LAPACK (dsyevd) and OpenBLAS. With the Inception network's features it
// is the FID; steer uses its own Fashion-MNIST evaluator's features (classifier.h), so its values
// are comparable only with each other, never with published FIDs. Functions keep no state and are
// thread-safe; they allocate their own scratch (this is a tool path, not a request path).
#ifndef GENERATOR_FID_H
#define GENERATOR_FID_H

#define FID_ERRNO_MAP(X)                                                                           \
    X(EINVAL, -1, "invalid argument")                                                              \
    X(ENOMEM, -2, "out of memory")                                                                 \
    X(ELAPACK, -3, "eigendecomposition did not converge")                                          \
    X(ENONFINITE, -4, "features hold a NaN or infinity")

enum {
#define X(name, code, msg) FID_##name = code,
    FID_ERRNO_MAP(X)
#undef X
};

// A static string for a FID_E* code (never NULL).
const char *fid_strerror(int code);

// A fitted Gaussian. Owned by the caller's struct, released by fid_stats_free.
typedef struct {
    int d;       // feature dimension D
    long n;      // number of samples it was fitted to
    double *mu;  // (D) mean
    double *cov; // (D, D) unbiased covariance (divided by n - 1, as numpy.cov), symmetric
} FidStats;

// Fits s to feat (n, d) row-major: mean and unbiased covariance, accumulated in double. n >= 2.
// Returns 0, or FID_EINVAL / FID_ENOMEM / FID_ENONFINITE with s left empty (safe to free).
int fid_stats_compute(FidStats *s, const float *feat, long n, int d);
// Releases what s owns and zeroes it; safe on a zeroed or already freed struct.
void fid_stats_free(FidStats *s);

// *fd = the Fréchet distance between N(mu1, cov1) and N(mu2, cov2), all (d) and (d, d) row-major
// symmetric positive semi-definite (tiny negative eigenvalues from rounding are clamped to 0).
// tr sqrt(S1 S2) is taken as tr sqrt(M), M = S1^(1/2) S2 S1^(1/2), which is symmetric PSD and has
// the same eigenvalues as S1 S2. Returns 0 or FID_EINVAL / ENOMEM / ELAPACK.
int fid_frechet_distance(double *fd, const double *mu1, const double *cov1, const double *mu2,
                         const double *cov2, int d);
// The same for two fitted sets (their d must agree).
int fid_stats_distance(double *fd, const FidStats *a, const FidStats *b);

#endif
