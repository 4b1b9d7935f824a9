// test_specnorm.c — unit tests of kernels/specnorm.c (spectral normalization, Miyato et al. 2018).
//
// (1) Finite differences of the double reference's forward against its backward (eq. 12);
// (2) the float kernel against the reference, forward (both update modes) and backward (+=);
// (3) the power iteration against a matrix of known singular values, built as
//     W = Q1 diag(s) Q2^T with Q1, Q2 orthogonal from LAPACK's QR of random matrices, and the
//     normalized weight's top singular value from LAPACK's SVD.
// Not covered: how params.c wires u and v through a training step (its own tests).
//
// About the finite differences. Eq. 12 differentiates W / sigma with u and v held constant, and
// sigma = u^T W v. With update = 0, forward computes v = W^T u / ||W^T u|| from the stored u, so
// sigma(W) = ||W^T u|| exactly, and d sigma / dW = u v^T exactly: the analytic gradient is the
// true gradient of forward(update = 0) as a function of W with the stored u fixed, at any u. So
// the main FD test uses update = 0, and since update = 0 leaves u untouched, every FD evaluation
// sees the same u. With update = 1, u' = normalize(W v) also moves with W, and eq. 12 (which
// ignores that, as PyTorch does) matches the true derivative only once u has converged to the
// top singular vector, where sigma is stationary in u and v; the second FD test checks that,
// restoring u before every evaluation so each one starts from the same converged u.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/reference.h"
#include "kernels/rng.h"
#include "kernels/specnorm.h"
#include "tests/check.h"

#define ATOL 1e-5
#define RTOL 1e-4
#define FD_ATOL 1e-6
#define FD_RTOL 1e-5
#define FD_H 1e-5

static void normalize_d(double *x, int n) {
    double s = 0.0;
    for (int i = 0; i < n; i++)
        s += x[i] * x[i];
    for (int i = 0; i < n; i++)
        x[i] /= sqrt(s);
}

// --- finite differences on the reference ------------------------------------------------------

typedef struct {
    int OUT, IN, update;
    const double *u0; // u before forward (OUT)
    double *u;        // scratch copy that forward may overwrite (OUT)
    double *v, *w_sn; // scratch (IN), (OUT * IN)
    const double *R;  // fixed cotangent of w_sn (OUT * IN)
} SnCtx;

// L(W) = <R, w_sn(W)>, with u reset to u0 before each forward.
static double sn_loss(const double *w, long n, void *ctx) {
    (void)n;
    SnCtx *c = ctx;
    memcpy(c->u, c->u0, sizeof(double) * c->OUT);
    specnorm_forward_ref(c->w_sn, c->v, c->u, w, c->OUT, c->IN, c->update);
    double s = 0.0;
    for (long k = 0; k < (long)c->OUT * c->IN; k++)
        s += c->R[k] * c->w_sn[k];
    return s;
}

// Analytic gradient from the backward at the base point and central differences of sn_loss;
// returns the mismatch count.
static int sn_fd_check(const char *what, double *w, const double *u0, const double *R, int OUT,
                       int IN, int update) {
    long n = (long)OUT * IN;
    double *u = CHECK_ALLOC(double, OUT), *v = CHECK_ALLOC(double, IN),
           *w_sn = CHECK_ALLOC(double, n);
    double *analytic = CHECK_ALLOC(double, n);
    SnCtx c = {OUT, IN, update, u0, u, v, w_sn, R};

    memcpy(u, u0, sizeof(double) * OUT);
    double sigma = specnorm_forward_ref(w_sn, v, u, w, OUT, IN, update);
    memset(analytic, 0, sizeof(double) * n);
    specnorm_backward_ref(analytic, R, w_sn, u, v, sigma, OUT, IN);

    int bad = check_compare_fd(what, analytic, w, n, FD_H, sn_loss, &c, FD_ATOL, FD_RTOL);
    free(u), free(v), free(w_sn), free(analytic);
    return bad;
}

static void test_fd_update0(void **state) {
    (void)state;
    Rng r;
    rng_seed(&r, 1);
    int bad = 0;
    int shapes[3][2] = {{3, 5}, {6, 2}, {1, 4}}; // wide, tall, and a linear layer to one logit
    for (int s = 0; s < 3; s++) {
        int OUT = shapes[s][0], IN = shapes[s][1];
        long n = (long)OUT * IN;
        double *w = CHECK_ALLOC(double, n), *R = CHECK_ALLOC(double, n),
               *u0 = CHECK_ALLOC(double, OUT);
        check_fill_uniform(&r, NULL, w, n, -1, 1);
        check_fill_uniform(&r, NULL, R, n, -1, 1);
        check_fill_uniform(&r, NULL, u0, OUT, -1, 1); // any u, not converged, not even unit
        bad += sn_fd_check("specnorm_backward_ref, update=0", w, u0, R, OUT, IN, 0);
        free(w), free(R), free(u0);
    }
    assert_int_equal(bad, 0);
}

static void test_fd_update1_converged(void **state) {
    (void)state;
    Rng r;
    rng_seed(&r, 2);
    int OUT = 4, IN = 6;
    long n = (long)OUT * IN;
    double *w = CHECK_ALLOC(double, n), *R = CHECK_ALLOC(double, n), *u0 = CHECK_ALLOC(double, OUT);
    double *w_sn = CHECK_ALLOC(double, n), *v = CHECK_ALLOC(double, IN);
    check_fill_uniform(&r, NULL, w, n, -1, 1);
    check_fill_uniform(&r, NULL, R, n, -1, 1);
    check_fill_uniform(&r, NULL, u0, OUT, -1, 1);
    // Converge u: each iteration shrinks the error by (s2/s1)^2, so 2000 iterations reach double
    // precision for any ratio below ~0.99 (a random 4x6 matrix is far from that).
    for (int it = 0; it < 2000; it++)
        specnorm_forward_ref(w_sn, v, u0, w, OUT, IN, 1);
    int bad = sn_fd_check("specnorm_backward_ref, update=1 at convergence", w, u0, R, OUT, IN, 1);
    free(w), free(R), free(u0), free(w_sn), free(v);
    assert_int_equal(bad, 0);
}

// --- the float kernel against the reference ---------------------------------------------------

static int check_fast(int OUT, int IN, uint64_t seed) {
    Rng r;
    rng_seed(&r, seed);
    long n = (long)OUT * IN;
    float *w = CHECK_ALLOC(float, n), *w_sn = CHECK_ALLOC(float, n), *dw_sn = CHECK_ALLOC(float, n);
    float *dw = CHECK_ALLOC(float, n), *u = CHECK_ALLOC(float, OUT), *v = CHECK_ALLOC(float, IN);
    double *wd = CHECK_ALLOC(double, n), *w_snd = CHECK_ALLOC(double, n),
           *dw_snd = CHECK_ALLOC(double, n);
    double *dwd = CHECK_ALLOC(double, n), *ud = CHECK_ALLOC(double, OUT),
           *vd = CHECK_ALLOC(double, IN);
    double *u0 = CHECK_ALLOC(double, OUT);
    check_fill_uniform(&r, w, wd, n, -0.1f, 0.1f);
    check_fill_uniform(&r, dw_sn, dw_snd, n, -1, 1);
    for (int i = 0; i < OUT; i++)
        u0[i] = rng_uniform(&r) - 0.5;
    normalize_d(u0, OUT);

    int bad = 0;
    for (int update = 0; update <= 1; update++) {
        for (int i = 0; i < OUT; i++)
            u[i] = (float)u0[i], ud[i] = (float)u0[i];
        double sigma_f = specnorm_forward(w_sn, v, u, w, OUT, IN, update);
        double sigma_d = specnorm_forward_ref(w_snd, vd, ud, wd, OUT, IN, update);
        const char *mode = update ? "update=1" : "update=0";
        int b = check_compare_d("sigma", &sigma_f, &sigma_d, 1, ATOL, RTOL);
        b += check_compare_f("w_sn", w_sn, w_snd, n, ATOL, RTOL);
        b += check_compare_f("v", v, vd, IN, ATOL, RTOL);
        b += check_compare_f("u", u, ud, OUT, ATOL, RTOL);
        if (!update) // update = 0 must leave u exactly as it was
            for (int i = 0; i < OUT; i++)
                b += u[i] != (float)u0[i];

        // On return sigma = u^T W v with u as now stored (the contract backward relies on).
        double utwv = 0.0;
        for (int i = 0; i < OUT; i++)
            for (int j = 0; j < IN; j++)
                utwv += (double)u[i] * w[(long)i * IN + j] * v[j];
        b += check_compare_d("sigma = u^T W v", &sigma_f, &utwv, 1, ATOL, RTOL);

        memset(dw, 0, sizeof(float) * n), memset(dwd, 0, sizeof(double) * n);
        specnorm_backward(dw, dw_sn, w_sn, u, v, (float)sigma_f, OUT, IN);
        specnorm_backward(dw, dw_sn, w_sn, u, v, (float)sigma_f, OUT, IN);
        specnorm_backward_ref(dwd, dw_snd, w_snd, ud, vd, sigma_d, OUT, IN);
        for (long k = 0; k < n; k++)
            dwd[k] *= 2.0;
        b += check_compare_f("dw x2", dw, dwd, n, ATOL, RTOL);
        if (b)
            printf("# specnorm OUT=%d IN=%d %s\n", OUT, IN, mode);
        bad += b;
    }
    free(w), free(w_sn), free(dw_sn), free(dw), free(u), free(v), free(wd), free(w_snd);
    free(dw_snd), free(dwd), free(ud), free(vd), free(u0);
    return bad;
}

static void test_fast_vs_reference(void **state) {
    (void)state;
    int bad = check_fast(5, 7, 10);
    bad += check_fast(64, 128 * 9, 11); // the 4ch -> 2ch 3x3 conv of fmnist32's G
    bad += check_fast(4, 32, 12);       // attention's f/g 1x1 convs at ch = 32
    bad += check_fast(1, 128 * 16, 13); // D's final linear to one logit
    bad += check_fast(200, 3, 14);      // taller than wide
    assert_int_equal(bad, 0);
}

// --- the power iteration against known singular values ----------------------------------------

// Q (n, n) row-major orthogonal: the Q factor of a random matrix (dgeqrf, then dorgqr).
static void random_orthogonal(double *q, int n, Rng *r) {
    double *tau = CHECK_ALLOC(double, n);
    check_fill_uniform(r, NULL, q, (long)n * n, -1, 1);
    assert_int_equal(LAPACKE_dgeqrf(LAPACK_ROW_MAJOR, n, n, q, n, tau), 0);
    assert_int_equal(LAPACKE_dorgqr(LAPACK_ROW_MAJOR, n, n, n, q, n, tau), 0);
    free(tau);
}

// Largest singular value of a float (m, n) matrix, by LAPACK's dgesvd in double.
static double top_singular_value(const float *a, int m, int n) {
    int k = m < n ? m : n;
    long mn = (long)m * n;
    double *ad = CHECK_ALLOC(double, mn), *s = CHECK_ALLOC(double, k);
    double *superb = CHECK_ALLOC(double, k);
    for (long i = 0; i < mn; i++)
        ad[i] = a[i];
    assert_int_equal(
        LAPACKE_dgesvd(LAPACK_ROW_MAJOR, 'N', 'N', m, n, ad, n, s, NULL, 1, NULL, 1, superb), 0);
    double top = s[0]; // dgesvd returns them in descending order
    free(ad), free(s), free(superb);
    return top;
}

static int check_power_iteration(int OUT, int IN, uint64_t seed) {
    Rng r;
    rng_seed(&r, seed);
    int k = OUT < IN ? OUT : IN;
    double *q1 = CHECK_ALLOC(double, (long)OUT *OUT), *q2 = CHECK_ALLOC(double, (long)IN *IN);
    double *s = CHECK_ALLOC(double, k);
    random_orthogonal(q1, OUT, &r);
    random_orthogonal(q2, IN, &r);
    // s = 2.5, 2.0, then down to 0.1: a gap of 0.8, so 50 iterations shrink the error in u by
    // 0.8^100 ~ 2e-10 from a random start; sigma's error is its square.
    for (int i = 0; i < k; i++)
        s[i] = i == 0 ? 2.5 : 2.0 - 1.9 * (i - 1) / (k > 2 ? k - 2 : 1);

    // W = Q1[:, :k] diag(s) Q2[:, :k]^T.
    long n = (long)OUT * IN;
    float *w = CHECK_ALLOC(float, n), *w_sn = CHECK_ALLOC(float, n), *u = CHECK_ALLOC(float, OUT);
    float *v = CHECK_ALLOC(float, IN);
    for (int i = 0; i < OUT; i++)
        for (int j = 0; j < IN; j++) {
            double acc = 0.0;
            for (int t = 0; t < k; t++)
                acc += q1[(long)i * OUT + t] * s[t] * q2[(long)j * IN + t];
            w[(long)i * IN + j] = (float)acc;
        }
    for (int i = 0; i < OUT; i++)
        u[i] = rng_uniform(&r) - 0.5f;

    float sigma = 0.0f;
    for (int it = 0; it < 50; it++)
        sigma = specnorm_forward(w_sn, v, u, w, OUT, IN, 1);
    double want = 2.5, one = 1.0;
    double sigma_d = sigma, top_sn = top_singular_value(w_sn, OUT, IN);
    double top_w = top_singular_value(w, OUT, IN); // the float W itself, rounding included
    printf("# OUT=%d IN=%d: sigma %.7f (svd of W %.7f), top singular value of w_sn %.7f\n", OUT, IN,
           sigma_d, top_w, top_sn);
    int bad = check_compare_d("sigma vs max(s)", &sigma_d, &want, 1, 0.0, 1e-4);
    bad += check_compare_d("top singular value of w_sn", &top_sn, &one, 1, 0.0, 1e-4);
    free(q1), free(q2), free(s), free(w), free(w_sn), free(u), free(v);
    return bad;
}

static void test_power_iteration(void **state) {
    (void)state;
    int bad = check_power_iteration(48, 72, 20);
    bad += check_power_iteration(72, 48, 21);
    bad += check_power_iteration(2, 9, 22);
    assert_int_equal(bad, 0);
}

// One iteration is not enough from a random start: sigma is then well below max(s). This keeps
// the test above honest (it measures convergence, not a lucky start).
static void test_one_iteration_underestimates(void **state) {
    (void)state;
    Rng r;
    rng_seed(&r, 30);
    int OUT = 48, IN = 72;
    long n = (long)OUT * IN;
    float *w = CHECK_ALLOC(float, n), *w_sn = CHECK_ALLOC(float, n), *u = CHECK_ALLOC(float, OUT);
    float *v = CHECK_ALLOC(float, IN);
    check_fill_uniform(&r, w, NULL, n, -1, 1);
    for (int i = 0; i < OUT; i++)
        u[i] = rng_uniform(&r) - 0.5f;
    float first = specnorm_forward(w_sn, v, u, w, OUT, IN, 1);
    float sigma = first;
    for (int it = 0; it < 200; it++) {
        float next = specnorm_forward(w_sn, v, u, w, OUT, IN, 1);
        assert_true(next >= sigma * (1.0f - 1e-6f)); // the power iteration never decreases sigma
        sigma = next;
    }
    double top = top_singular_value(w, OUT, IN);
    printf("# random 48x72: first sigma %.5f, after 200 %.5f, svd %.5f\n", first, sigma, top);
    assert_true(first < 0.99 * top);
    assert_true(fabs(sigma - top) <= 1e-3 * top);
    free(w), free(w_sn), free(u), free(v);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fd_update0),
        cmocka_unit_test(test_fd_update1_converged),
        cmocka_unit_test(test_fast_vs_reference),
        cmocka_unit_test(test_power_iteration),
        cmocka_unit_test(test_one_iteration_underestimates),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
