// test_eval.c — unit tests of the evaluator: generator/fid.c (Fréchet distance against closed
// forms) and generator/classifier.c (forward and backward against the same net composed of the
// double reference ops, that composition against central finite differences, training reduces
// the loss, file round trip and refusals, and the shipped models/fmnist-eval.safetensors
// classifying real test images).
//
// Not covered: the `steer eval` command line itself (a tool; docs/eval.md shows its runs) and the
// kernels the classifier is made of (test_ops.c and the conv / linear tests check them).
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "generator/data/fmnist.h"
#include "generator/classifier.h"
#include "generator/fid.h"
#include "generator/safetensors.h"
#include "kernels/ops.h"
#include "kernels/reference.h"
#include "kernels/rng.h"
#include "tests/check.h"

#define SHIPPED_MODEL "models/fmnist-eval.safetensors"
#define SHIPPED_MIN_ACC 0.88 // on the first 1000 test images

static Dataset test_set; // the Fashion-MNIST test set, loaded once
static char tmpdir[256];

static int group_setup(void **state) {
    (void)state;
    char err[1024];
    if (fmnist_load(&test_set, FMNIST_DIR, 0, err, sizeof err)) {
        fprintf(stderr, "test_eval: %s\n", err);
        return -1;
    }
    return check_tmpdir_make(tmpdir, sizeof tmpdir, "steer_test_eval");
}

static int group_teardown(void **state) {
    (void)state;
    dataset_free(&test_set);
    return check_tmpdir_remove(tmpdir);
}

// ---------------------------------------------------------------------------------------------
// Fréchet distance

// A random orthogonal (d, d) matrix: Gram-Schmidt on normal draws.
static void random_rotation(double *q, int d, Rng *rng) {
    float *g = CHECK_ALLOC(float, d *d);
    rng_normal(rng, g, d * d);
    for (int i = 0; i < d; i++) {
        double *r = q + i * d;
        for (int j = 0; j < d; j++)
            r[j] = g[i * d + j];
        for (int k = 0; k < i; k++) {
            double dot = 0;
            for (int j = 0; j < d; j++)
                dot += r[j] * q[k * d + j];
            for (int j = 0; j < d; j++)
                r[j] -= dot * q[k * d + j];
        }
        double nrm = 0;
        for (int j = 0; j < d; j++)
            nrm += r[j] * r[j];
        for (int j = 0; j < d; j++)
            r[j] /= sqrt(nrm);
    }
    free(g);
}

// S = Q^T diag(e) Q for the rows of Q as eigenvectors.
static void rotated_diag(double *s, const double *q, const double *e, int d) {
    for (int i = 0; i < d; i++)
        for (int j = 0; j < d; j++) {
            double v = 0;
            for (int k = 0; k < d; k++)
                v += q[k * d + i] * e[k] * q[k * d + j];
            s[i * d + j] = v;
        }
}

// Same rotation, different spectra: S1 and S2 commute, so tr sqrt(S1 S2) = sum sqrt(a_k b_k) and
// FD = |mu1 - mu2|^2 + sum (sqrt(a_k) - sqrt(b_k))^2. One eigenvalue of S1 is exactly 0 (a
// rank-deficient covariance, as with fewer samples than features).
static void test_fd_rotated_closed_form(void **state) {
    (void)state;
    enum { D = 12 };
    Rng rng;
    rng_seed(&rng, 7);
    double q[D * D], s1[D * D], s2[D * D], a[D], b[D], mu1[D], mu2[D], want = 0;
    random_rotation(q, D, &rng);
    for (int k = 0; k < D; k++) {
        a[k] = k == 0 ? 0.0 : 0.1 + 3.0 * rng_uniform(&rng);
        b[k] = 0.05 + 2.0 * rng_uniform(&rng);
        mu1[k] = rng_uniform(&rng) - 0.5;
        mu2[k] = 2.0 * rng_uniform(&rng) - 1.0;
        want += (sqrt(a[k]) - sqrt(b[k])) * (sqrt(a[k]) - sqrt(b[k])) +
                (mu1[k] - mu2[k]) * (mu1[k] - mu2[k]);
    }
    rotated_diag(s1, q, a, D);
    rotated_diag(s2, q, b, D);
    // sqrt is steep at 0: the zero eigenvalue, computed as ~1e-16, costs ~1e-8 of accuracy.
    double fd;
    assert_int_equal(fid_frechet_distance(&fd, mu1, s1, mu2, s2, D), 0);
    if (fabs(fd - want) > 1e-7 * (1 + want))
        fail_msg("FD %.15g, closed form %.15g", fd, want);
    // Symmetric in its arguments.
    assert_int_equal(fid_frechet_distance(&fd, mu2, s2, mu1, s1, D), 0);
    if (fabs(fd - want) > 1e-7 * (1 + want))
        fail_msg("FD (swapped) %.15g, want %.15g", fd, want);
}

// Non-commuting 2x2 covariances. For 2x2 PSD M, tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)), and
// M = S1^(1/2) S2 S1^(1/2) has tr M = tr(S1 S2), det M = det S1 det S2.
static void test_fd_noncommuting_2x2(void **state) {
    (void)state;
    double s1[4] = {2.0, 0.7, 0.7, 0.5}, s2[4] = {0.3, -0.2, -0.2, 1.7};
    double mu1[2] = {0.1, -0.4}, mu2[2] = {1.0, 0.2};
    double tr12 = s1[0] * s2[0] + s1[1] * s2[2] + s1[2] * s2[1] + s1[3] * s2[3];
    double det = (s1[0] * s1[3] - s1[1] * s1[2]) * (s2[0] * s2[3] - s2[1] * s2[2]);
    double want = 0.81 + 0.36 + (s1[0] + s1[3]) + (s2[0] + s2[3]) - 2 * sqrt(tr12 + 2 * sqrt(det));
    double fd;
    assert_int_equal(fid_frechet_distance(&fd, mu1, s1, mu2, s2, 2), 0);
    if (fabs(fd - want) > 1e-12 * (1 + want))
        fail_msg("FD %.15g, closed form %.15g", fd, want);
}

// Samples x = A z + m with a dense A: FD of the fitted set with itself is 0, the mean and the
// covariance match a naive two-pass computation, and a shifted copy is at |shift|^2.
static void test_fd_sample_stats(void **state) {
    (void)state;
    enum { N = 3000, D = 24 };
    Rng rng;
    rng_seed(&rng, 11);
    float *z = CHECK_ALLOC(float, N *D), *x = CHECK_ALLOC(float, N *D),
          *xs = CHECK_ALLOC(float, N *D);
    float a[D * D], m[D], shift[D];
    rng_normal(&rng, z, N * D);
    rng_normal(&rng, a, D * D);
    rng_normal(&rng, m, D);
    rng_normal(&rng, shift, D);
    double shift2 = 0;
    for (int j = 0; j < D; j++)
        shift2 += (double)shift[j] * shift[j];
    for (int i = 0; i < N; i++)
        for (int j = 0; j < D; j++) {
            float v = m[j];
            for (int k = 0; k < D; k++)
                v += a[j * D + k] * z[i * D + k];
            x[i * D + j] = v;
            xs[i * D + j] = v + shift[j];
        }
    FidStats s = {0}, t = {0};
    assert_int_equal(fid_stats_compute(&s, x, N, D), 0);
    assert_int_equal(s.d, D);
    assert_int_equal(s.n, N);
    double worst = 0;
    for (int j = 0; j < D; j++) {
        double mu = 0;
        for (int i = 0; i < N; i++)
            mu += x[i * D + j];
        mu /= N;
        worst = fmax(worst, fabs(mu - s.mu[j]));
        for (int k = 0; k < D; k++) {
            double c = 0;
            double muk = 0;
            for (int i = 0; i < N; i++)
                muk += x[i * D + k];
            muk /= N;
            for (int i = 0; i < N; i++)
                c += (x[i * D + j] - mu) * (x[i * D + k] - muk);
            c /= N - 1;
            worst = fmax(worst, fabs(c - s.cov[j * D + k]) / (1 + fabs(c)));
        }
    }
    if (worst > 1e-9)
        fail_msg("mean/covariance off a naive computation by %g", worst);
    double fd;
    assert_int_equal(fid_stats_distance(&fd, &s, &s), 0);
    double tr = 0;
    for (int j = 0; j < D; j++)
        tr += s.cov[j * D + j];
    if (fabs(fd) > 1e-9 * tr)
        fail_msg("FD of a set with itself is %g (trace %g)", fd, tr);
    assert_int_equal(fid_stats_compute(&t, xs, N, D), 0);
    assert_int_equal(fid_stats_distance(&fd, &s, &t), 0);
    // Float rounding of the shifted copy moves the covariance a hair: 1e-6 relative.
    if (fabs(fd - shift2) > 1e-6 * (shift2 + tr))
        fail_msg("FD %.10g, want |shift|^2 %.10g", fd, shift2);
    fid_stats_free(&s);
    fid_stats_free(&t);
    fid_stats_free(&t); // safe twice
    free(z);
    free(x);
    free(xs);
}

static void test_fd_refusals(void **state) {
    (void)state;
    float x[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    FidStats s = {0}, t = {0};
    assert_int_equal(fid_stats_compute(&s, x, 1, 8), FID_EINVAL); // one sample has no covariance
    assert_null(s.mu);
    x[5] = NAN;
    assert_int_equal(fid_stats_compute(&s, x, 4, 2), FID_ENONFINITE);
    assert_null(s.mu);
    x[5] = 6;
    assert_int_equal(fid_stats_compute(&s, x, 4, 2), 0);
    assert_int_equal(fid_stats_compute(&t, x, 2, 4), 0);
    double fd;
    assert_int_equal(fid_stats_distance(&fd, &s, &t), FID_EINVAL); // dimensions differ
    assert_string_equal(fid_strerror(FID_ELAPACK), "eigendecomposition did not converge");
    fid_stats_free(&s);
    fid_stats_free(&t);
}

// ---------------------------------------------------------------------------------------------
// classifier

// The classifier again, in double, composed of the reference ops of kernels/reference.h (each
// checked against finite differences in test_ops.c and test_conv.c): the ground truth the fast
// float forward and backward are compared with. Parameters are indexed like the Classifier's
// ParamSet (same offsets); the dropout mask is taken from the fast net's last training forward.
typedef struct {
    const Classifier *c; // shapes and parameter table
    int B;
    double *w, *dw; // (ps.total) parameters and their gradients
    double *x;      // (B, 1, 32, 32)
    double *conv[CLASSIFIER_CONVS], *act[CLASSIFIER_CONVS], *dconv[CLASSIFIER_CONVS],
        *dact[CLASSIFIER_CONVS];
    double *fc1, *feat, *drop, *logits;     // (B, 256) x3, (B, 10)
    double *dfc1, *dfeat, *ddrop, *dlogits; // their gradients
    double *mask;                           // (B, 256)
} RefNet;

#define RW(r, i) ((r)->w + (r)->c->ps.p[i].offset)
#define RDW(r, i) ((r)->dw + (r)->c->ps.p[i].offset)
static const int REF_K[CLASSIFIER_CONVS] = {3, 4, 4, 4}, REF_S[CLASSIFIER_CONVS] = {1, 2, 2, 2};

static void ref_build(RefNet *r, const Classifier *c, const float *x, int B) {
    memset(r, 0, sizeof *r);
    r->c = c;
    r->B = B;
    r->w = CHECK_ALLOC(double, c->ps.total);
    r->dw = CHECK_ALLOC(double, c->ps.total);
    for (long i = 0; i < c->ps.total; i++)
        r->w[i] = c->ps.params[i];
    r->x = CHECK_ALLOC(double, B * 1024L);
    for (long i = 0; i < B * 1024L; i++)
        r->x[i] = x[i];
    for (int k = 0; k < CLASSIFIER_CONVS; k++) {
        long n = (long)B * c->chan[k + 1] * c->side[k] * c->side[k];
        r->conv[k] = CHECK_ALLOC(double, n);
        r->act[k] = CHECK_ALLOC(double, n);
        r->dconv[k] = CHECK_ALLOC(double, n);
        r->dact[k] = CHECK_ALLOC(double, n);
    }
    long nf = (long)B * CLASSIFIER_FEATURES, nl = (long)B * CLASSIFIER_CLASSES;
    r->fc1 = CHECK_ALLOC(double, nf), r->feat = CHECK_ALLOC(double, nf);
    r->drop = CHECK_ALLOC(double, nf), r->mask = CHECK_ALLOC(double, nf);
    r->dfc1 = CHECK_ALLOC(double, nf), r->dfeat = CHECK_ALLOC(double, nf);
    r->ddrop = CHECK_ALLOC(double, nf);
    r->logits = CHECK_ALLOC(double, nl), r->dlogits = CHECK_ALLOC(double, nl);
    for (long i = 0; i < nf; i++)
        r->mask[i] = c->mask[i];
}

static void ref_free(RefNet *r) {
    free(r->w), free(r->dw), free(r->x);
    for (int k = 0; k < CLASSIFIER_CONVS; k++)
        free(r->conv[k]), free(r->act[k]), free(r->dconv[k]), free(r->dact[k]);
    free(r->fc1), free(r->feat), free(r->drop), free(r->mask);
    free(r->dfc1), free(r->dfeat), free(r->ddrop), free(r->logits), free(r->dlogits);
}

// Training forward (with r->mask) and the mean cross-entropy; dlogits gets its gradient.
static double ref_forward(RefNet *r, const int32_t *y) {
    const Classifier *c = r->c;
    int B = r->B, side = CLASSIFIER_IMG;
    const double *in = r->x;
    for (int k = 0; k < CLASSIFIER_CONVS; k++) {
        conv2d_forward_ref(r->conv[k], in, RW(r, c->p_conv_w[k]), RW(r, c->p_conv_b[k]), B,
                           c->chan[k], side, side, c->chan[k + 1], REF_K[k], REF_S[k], 1);
        side = c->side[k];
        leaky_relu_forward_ref(r->act[k], r->conv[k], 0.1, (long)B * c->chan[k + 1] * side * side);
        in = r->act[k];
    }
    long nf = (long)B * CLASSIFIER_FEATURES;
    linear_forward_ref(r->fc1, in, RW(r, c->p_fc1_w), RW(r, c->p_fc1_b), B, 2048,
                       CLASSIFIER_FEATURES);
    leaky_relu_forward_ref(r->feat, r->fc1, 0.1, nf);
    for (long i = 0; i < nf; i++)
        r->drop[i] = r->feat[i] * r->mask[i];
    linear_forward_ref(r->logits, r->drop, RW(r, c->p_fc2_w), RW(r, c->p_fc2_b), B,
                       CLASSIFIER_FEATURES, CLASSIFIER_CLASSES);
    return softmax_xent_ref(r->dlogits, r->logits, y, B, CLASSIFIER_CLASSES);
}

// Backward of the last ref_forward into r->dw (zeroed here).
static void ref_backward(RefNet *r) {
    const Classifier *c = r->c;
    int B = r->B;
    long nf = (long)B * CLASSIFIER_FEATURES;
    memset(r->dw, 0, sizeof(double) * c->ps.total);
    memset(r->ddrop, 0, sizeof(double) * nf);
    memset(r->dfeat, 0, sizeof(double) * nf);
    memset(r->dfc1, 0, sizeof(double) * nf);
    linear_backward_ref(r->ddrop, RDW(r, c->p_fc2_w), RDW(r, c->p_fc2_b), r->dlogits, r->drop,
                        RW(r, c->p_fc2_w), B, CLASSIFIER_FEATURES, CLASSIFIER_CLASSES);
    for (long i = 0; i < nf; i++)
        r->dfeat[i] = r->ddrop[i] * r->mask[i];
    leaky_relu_backward_ref(r->dfc1, r->dfeat, r->fc1, 0.1, nf);
    const int last = CLASSIFIER_CONVS - 1;
    long nl = (long)B * 2048;
    memset(r->dact[last], 0, sizeof(double) * nl);
    linear_backward_ref(r->dact[last], RDW(r, c->p_fc1_w), RDW(r, c->p_fc1_b), r->dfc1,
                        r->act[last], RW(r, c->p_fc1_w), B, 2048, CLASSIFIER_FEATURES);
    for (int k = last; k >= 0; k--) {
        int side = c->side[k], in_side = k ? c->side[k - 1] : CLASSIFIER_IMG;
        long n = (long)B * c->chan[k + 1] * side * side;
        memset(r->dconv[k], 0, sizeof(double) * n);
        leaky_relu_backward_ref(r->dconv[k], r->dact[k], r->conv[k], 0.1, n);
        if (k)
            memset(r->dact[k - 1], 0, sizeof(double) * B * c->chan[k] * in_side * in_side);
        conv2d_backward_ref(k ? r->dact[k - 1] : NULL, RDW(r, c->p_conv_w[k]),
                            RDW(r, c->p_conv_b[k]), r->dconv[k], k ? r->act[k - 1] : r->x,
                            RW(r, c->p_conv_w[k]), B, c->chan[k], in_side, in_side, c->chan[k + 1],
                            REF_K[k], REF_S[k], 1);
    }
}

// The loss of ref_forward as a CheckLossFn; the parameters it reads are r->w.
typedef struct {
    RefNet *r;
    const int32_t *y;
} RefLoss;

static double ref_loss(const double *w, long n, void *ctx) {
    (void)w, (void)n;
    RefLoss *l = ctx;
    return ref_forward(l->r, l->y);
}

// Random inputs (no flat background, so no ties among pre-activations) and labels.
static void fd_batch(float *x, int32_t *y, int B) {
    Rng rng;
    rng_seed(&rng, 3);
    for (long i = 0; i < B * 1024L; i++)
        x[i] = 2.0f * rng_uniform(&rng) - 1.0f;
    for (int b = 0; b < B; b++)
        y[b] = (int32_t)rng_below(&rng, CLASSIFIER_CLASSES);
}

// The fast float forward and backward (dropout on) against the double reference composition:
// logits and every parameter gradient entry.
static void test_classifier_backward_vs_reference(void **state) {
    (void)state;
    enum { B = 2 };
    Classifier c;
    assert_int_equal(classifier_init(&c, B, 5), 0);
    float x[B * 1024];
    int32_t y[B];
    fd_batch(x, y, B);
    assert_int_equal(classifier_forward(&c, x, B, 1), 0);
    float dlogits[B * CLASSIFIER_CLASSES];
    softmax_xent_forward_backward(dlogits, NULL, c.logits, y, B, CLASSIFIER_CLASSES);
    paramset_zero_grad(&c.ps);
    assert_int_equal(classifier_backward(&c, dlogits, B), 0);
    RefNet r;
    ref_build(&r, &c, x, B);
    ref_forward(&r, y);
    ref_backward(&r);
    int bad = check_compare_f("logits", c.logits, r.logits, B * CLASSIFIER_CLASSES, 1e-5, 1e-4);
    for (int i = 0; i < c.ps.n; i++) {
        const Param *p = &c.ps.p[i];
        double scale = 0;
        for (long k = 0; k < p->numel; k++)
            scale = fmax(scale, fabs(r.dw[p->offset + k]));
        // Float sums of up to 2048 * B terms: 1e-4 relative, and 1e-4 of the tensor's largest
        // gradient for entries that are sums of cancelling terms.
        bad += check_compare_f(p->name, c.ps.grads + p->offset, r.dw + p->offset, p->numel,
                               1e-4 * scale, 1e-3);
    }
    if (bad)
        fail_msg("%d values differ from the double reference", bad);
    ref_free(&r);
    classifier_free(&c);
}

// The reference composition itself against central differences of its loss, in double, on every
// parameter tensor's largest-gradient entry and two random ones (so the comparison above is
// against the true gradient, not a shared mistake such as a missing dropout mask).
static void test_classifier_reference_fd(void **state) {
    (void)state;
    enum { B = 2, PICKS = 3 };
    Classifier c;
    assert_int_equal(classifier_init(&c, B, 5), 0);
    float x[B * 1024];
    int32_t y[B];
    fd_batch(x, y, B);
    assert_int_equal(classifier_forward(&c, x, B, 1), 0); // draws the mask the reference uses
    RefNet r;
    ref_build(&r, &c, x, B);
    ref_forward(&r, y);
    ref_backward(&r);
    RefLoss loss = {&r, y};
    Rng rng;
    rng_seed(&rng, 17);
    int bad = 0;
    for (int i = 0; i < c.ps.n; i++) {
        const Param *p = &c.ps.p[i];
        double *w = r.w + p->offset, *g = r.dw + p->offset;
        long idx[PICKS] = {0};
        for (long k = 1; k < p->numel; k++)
            if (fabs(g[k]) > fabs(g[idx[0]]))
                idx[0] = k;
        for (int j = 1; j < PICKS; j++)
            idx[j] = rng_below(&rng, (uint32_t)p->numel);
        for (int j = 0; j < PICKS; j++) {
            double fd;
            check_central_diff(&fd, w + idx[j], 1, 1e-6, ref_loss, &loss);
            if (fabs(fd - g[idx[j]]) > 1e-8 + 1e-5 * fabs(g[idx[j]])) {
                bad++;
                fprintf(stderr, "  %s[%ld]: analytic %.10g, finite difference %.10g\n", p->name,
                        idx[j], g[idx[j]], fd);
            }
        }
    }
    if (bad)
        fail_msg("%d reference gradient entries disagree with finite differences", bad);
    ref_free(&r);
    classifier_free(&c);
}

// Cross-entropy (evaluation mode) of the current parameters on (x, y), in double.
static double eval_loss(Classifier *c, const float *x, const int32_t *y, int B) {
    assert_int_equal(classifier_forward(c, x, B, 0), 0);
    double total = 0;
    for (int b = 0; b < B; b++) {
        const float *l = c->logits + b * CLASSIFIER_CLASSES;
        double mx = l[0], s = 0;
        for (int k = 1; k < CLASSIFIER_CLASSES; k++)
            mx = fmax(mx, l[k]);
        for (int k = 0; k < CLASSIFIER_CLASSES; k++)
            s += exp(l[k] - mx);
        total += log(s) + mx - l[y[b]];
    }
    return total / B;
}

// Twenty training steps on one fixed batch of real images cut its (evaluation-mode) loss by more
// than half; the step's reported loss and correct count are those of the forward it ran.
static void test_classifier_training_reduces_loss(void **state) {
    (void)state;
    enum { B = 32 };
    Classifier c;
    assert_int_equal(classifier_init(&c, B, 1), 0);
    const float *x = test_set.images + 5000L * 1024;
    const int32_t *y = test_set.labels + 5000;
    double before = eval_loss(&c, x, y, B);
    float loss = 0;
    int right = -1;
    for (int s = 0; s < 20; s++) {
        assert_int_equal(classifier_train_step(&c, x, y, B, 1e-3f, &loss, &right), 0);
        assert_true(right >= 0 && right <= B);
    }
    double after = eval_loss(&c, x, y, B);
    if (!(after < 0.5 * before))
        fail_msg("loss %.4f -> %.4f after 20 steps", before, after);
    // A label out of range is refused before anything changes.
    int32_t bad[B];
    memcpy(bad, y, sizeof bad);
    bad[3] = CLASSIFIER_CLASSES;
    long t = c.ps.adam_t;
    assert_int_not_equal(classifier_train_step(&c, x, bad, B, 1e-3f, &loss, NULL), 0);
    assert_int_equal(c.ps.adam_t, t);
    classifier_free(&c);
}

// Save, load, same outputs bit for bit (at another batch size); a file of another format and a
// file with a wrong shape are refused with the file and the fault named.
static void test_classifier_file(void **state) {
    (void)state;
    char path[512], bad_path[512], err[1024];
    snprintf(path, sizeof path, "%s/clf.safetensors", tmpdir);
    snprintf(bad_path, sizeof bad_path, "%s/bad.safetensors", tmpdir);
    Classifier a, b;
    assert_int_equal(classifier_init(&a, 16, 42), 0);
    const char *meta[] = {"test_accuracy", "0.5", NULL};
    assert_int_equal(classifier_save(&a, path, meta, err, sizeof err), 0);
    double acc = 0;
    if (classifier_load(&b, path, 7, &acc, err, sizeof err))
        fail_msg("%s", err);
    assert_true(acc == 0.5);
    enum { N = 20 };
    float fa[N * CLASSIFIER_FEATURES], fb[N * CLASSIFIER_FEATURES], ca[N], cb[N];
    int32_t pa[N], pb[N];
    assert_int_equal(classifier_apply(&a, test_set.images, N, fa, pa, ca), 0);
    assert_int_equal(classifier_apply(&b, test_set.images, N, fb, pb, cb), 0);
    assert_memory_equal(pa, pb, sizeof pa);
    for (int i = 0; i < N * CLASSIFIER_FEATURES; i++)
        if (fabsf(fa[i] - fb[i]) > 1e-5f * (1 + fabsf(fa[i])))
            fail_msg("feature %d: %g before saving, %g after loading", i, fa[i], fb[i]);
    for (int i = 0; i < N; i++)
        assert_true(cb[i] >= 0.1f - 1e-6f && cb[i] <= 1.0f);
    classifier_free(&b);

    // Another format: a steer checkpoint is not an evaluator.
    StTensor t = {.name = "x", .dtype = ST_F32, .ndim = 1, .shape = {2}, .data = fa, .nbytes = 8};
    const char *other[] = {"format", "steer.sagan.v1", NULL};
    assert_int_equal(safetensors_write(bad_path, &t, 1, other, err, sizeof err), 0);
    assert_int_not_equal(classifier_load(&b, bad_path, 4, NULL, err, sizeof err), 0);
    CHECK_ASSERT_HAS(err, bad_path);
    CHECK_ASSERT_HAS(err, "steer.sagan.v1");
    classifier_free(&b);

    // The right format with fc2.weight of the wrong shape.
    StTensor ts[PARAMS_MAX];
    for (int i = 0; i < a.ps.n; i++) {
        const Param *p = &a.ps.p[i];
        ts[i] = (StTensor){.dtype = ST_F32,
                           .ndim = p->ndim,
                           .data = a.ps.params + p->offset,
                           .nbytes = p->numel * sizeof(float)};
        snprintf(ts[i].name, sizeof ts[i].name, "%s", p->name);
        for (int d = 0; d < p->ndim; d++)
            ts[i].shape[d] = p->shape[d];
        if (!strcmp(p->name, "fc2.weight"))
            ts[i].shape[0] = 5, ts[i].nbytes /= 2;
    }
    const char *fmt[] = {"format", CLASSIFIER_FORMAT, NULL};
    assert_int_equal(safetensors_write(bad_path, ts, a.ps.n, fmt, err, sizeof err), 0);
    assert_int_not_equal(classifier_load(&b, bad_path, 4, NULL, err, sizeof err), 0);
    CHECK_ASSERT_HAS(err, bad_path);
    CHECK_ASSERT_HAS(err, "fc2.weight");
    classifier_free(&b);

    // A missing file.
    assert_int_not_equal(
        classifier_load(&b, "/nonexistent/eval.safetensors", 4, NULL, err, sizeof err), 0);
    CHECK_ASSERT_HAS(err, "/nonexistent/eval.safetensors");
    classifier_free(&b);
    classifier_free(&b); // safe twice
    classifier_free(&a);
}

// The evaluator that ships in the repo loads and labels the first 1000 test images well.
static void test_shipped_model(void **state) {
    (void)state;
    char err[1024];
    Classifier c;
    double meta_acc;
    if (classifier_load(&c, SHIPPED_MODEL, 100, &meta_acc, err, sizeof err))
        fail_msg("%s (the evaluator must ship in the repo; make it with steer train-eval)", err);
    enum { N = 1000 };
    int32_t *pred = CHECK_ALLOC(int32_t, N);
    assert_int_equal(classifier_apply(&c, test_set.images, N, NULL, pred, NULL), 0);
    int right = 0;
    for (int i = 0; i < N; i++)
        right += pred[i] == test_set.labels[i];
    fprintf(stderr, "# shipped evaluator: %d / %d right (metadata test_accuracy %.4f)\n", right, N,
            meta_acc);
    if (right < SHIPPED_MIN_ACC * N)
        fail_msg("accuracy %.3f on the first %d test images, need %.2f", (double)right / N, N,
                 SHIPPED_MIN_ACC);
    free(pred);
    classifier_free(&c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fd_rotated_closed_form),
        cmocka_unit_test(test_fd_noncommuting_2x2),
        cmocka_unit_test(test_fd_sample_stats),
        cmocka_unit_test(test_fd_refusals),
        cmocka_unit_test(test_classifier_backward_vs_reference),
        cmocka_unit_test(test_classifier_reference_fd),
        cmocka_unit_test(test_classifier_training_reduces_loss),
        cmocka_unit_test(test_classifier_file),
        cmocka_unit_test(test_shipped_model),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
