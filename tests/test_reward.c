// test_reward.c — unit tests of policy/reward.c, the Bradley–Terry reward ensemble.
//
// Three kinds of check: (1) the loss against a naive reference written from the definition
// (-y log sigma(s) - (1 - y) log sigma(-s)) and its gradient against central differences, in
// double on tiny shapes; (2) the fit itself: every member ends at a stationary point of its loss,
// the primal and dual Newton solvers agree, fits are deterministic, and ties and the prior do
// what they should; (3) the model's behaviour on synthetic users with a hidden weight w* who
// answer with Bradley–Terry noise: held-out accuracy is high and grows with the number of
// comparisons, the ensemble is less sure with less data and away from the data, and the pairs it
// disagrees on most are the ones it cannot call. The fit's cost at the server's sizes is printed
// as a TAP comment, not asserted.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/rng.h"
#include "policy/reward.h"
#include "tests/check.h"

#define FD_ATOL 1e-7
#define FD_RTOL 1e-6
#define FD_H 1e-5

// --- synthetic users ------------------------------------------------------------------------

// n comparisons between frames with N(0, I) features (F); on the first `span` coordinates only
// when span < F (the rest zero), to make data that leaves part of feature space unseen. The user
// prefers a with probability sigma(w* . (phi(a) - phi(b))) when noisy, or always the higher
// utility when not.
typedef struct {
    long n;
    int F;
    float *winner, *loser; // (n, F)
    RewardComparisons view;
} Synth;

static void synth_make(Synth *s, Rng *r, const double *wstar, long n, int F, int span, int noisy) {
    s->n = n;
    s->F = F;
    s->winner = CHECK_ALLOC(float, n *F);
    s->loser = CHECK_ALLOC(float, n *F);
    float *a = CHECK_ALLOC(float, F), *b = CHECK_ALLOC(float, F);
    for (long i = 0; i < n; i++) {
        rng_normal(r, a, span);
        rng_normal(r, b, span);
        double u = 0.0;
        for (int j = 0; j < F; j++)
            u += wstar[j] * ((double)a[j] - (double)b[j]);
        int a_wins = noisy ? rng_uniform(r) < 1.0 / (1.0 + exp(-u)) : u > 0.0;
        memcpy(s->winner + i * F, a_wins ? a : b, sizeof(float) * F);
        memcpy(s->loser + i * F, a_wins ? b : a, sizeof(float) * F);
    }
    free(a);
    free(b);
    s->view = (RewardComparisons){.n = n, .winner = s->winner, .loser = s->loser};
}

static void synth_free(Synth *s) {
    free(s->winner);
    free(s->loser);
}

// A hidden preference of norm `norm` in a random direction.
static double *wstar_make(Rng *r, int F, double norm) {
    float *z = CHECK_ALLOC(float, F);
    double *w = CHECK_ALLOC(double, F), ss = 0.0;
    rng_normal(r, z, F);
    for (int j = 0; j < F; j++)
        ss += (double)z[j] * z[j];
    for (int j = 0; j < F; j++)
        w[j] = norm * z[j] / sqrt(ss);
    free(z);
    return w;
}

// A model and a workspace for F features and up to n comparisons, or the test fails.
static void model_make(RewardModel *m, RewardWorkspace *ws, const RewardConfig *c, long n) {
    assert_int_equal(reward_init(m, c), 0);
    assert_int_equal(reward_workspace_init(ws, c->features, n), 0);
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

// --- the loss and its gradient --------------------------------------------------------------

typedef struct {
    const double *diff, *target, *mweight, *anchor;
    double lambda;
    long n;
    int F;
    double *score;
} LossCtx;

static double loss_of(const double *w, long F, void *p) {
    LossCtx *c = p;
    (void)F;
    return reward_loss_forward(c->score, w, c->diff, c->target, c->mweight, c->anchor, c->lambda,
                               c->n, c->F);
}

// The loss from its definition, with log sigma taken literally (fine at these small scores).
static double loss_ref(const double *w, const LossCtx *c) {
    double L = 0.0;
    for (long i = 0; i < c->n; i++) {
        double s = 0.0;
        for (int j = 0; j < c->F; j++)
            s += w[j] * c->diff[i * c->F + j];
        double y = c->target[i];
        L -= c->mweight[i] *
             (y * log(1.0 / (1.0 + exp(-s))) + (1.0 - y) * log(1.0 / (1.0 + exp(s))));
    }
    for (int j = 0; j < c->F; j++)
        L += 0.5 * c->lambda * (w[j] - c->anchor[j]) * (w[j] - c->anchor[j]);
    return L;
}

static void test_loss_reference_and_fd(void **state) {
    (void)state;
    enum { N = 9, F = 6 };
    Rng r;
    rng_seed(&r, 11);
    double diff[N * F], target[N], mweight[N], anchor[F], w[F], score[N], dw[F];
    check_fill_uniform(&r, NULL, diff, N * F, -1.5, 1.5);
    check_fill_uniform(&r, NULL, anchor, F, -1.0, 1.0);
    check_fill_uniform(&r, NULL, w, F, -1.0, 1.0);
    check_fill_uniform(&r, NULL, mweight, N, 0.2, 3.0);
    mweight[2] = 0.0; // a row a resample left out
    for (int i = 0; i < N; i++)
        target[i] = i % 3 == 0 ? 0.5 : 1.0;
    LossCtx c = {diff, target, mweight, anchor, 0.7, N, F, score};
    double got = loss_of(w, F, &c), want = loss_ref(w, &c);
    printf("# loss %.12f reference %.12f\n", got, want);
    assert_int_equal(check_compare_d("loss", &got, &want, 1, 1e-12, 1e-12), 0);

    memset(dw, 0, sizeof dw);
    loss_of(w, F, &c); // scores for backward
    reward_loss_backward(dw, score, w, diff, target, mweight, anchor, c.lambda, N, F);
    assert_int_equal(check_compare_fd("dL/dw", dw, w, F, FD_H, loss_of, &c, FD_ATOL, FD_RTOL), 0);

    // Accumulates: a second backward doubles dw.
    double twice[F];
    memcpy(twice, dw, sizeof dw);
    for (int j = 0; j < F; j++)
        twice[j] *= 2.0;
    loss_of(w, F, &c);
    reward_loss_backward(dw, score, w, diff, target, mweight, anchor, c.lambda, N, F);
    assert_int_equal(check_compare_d("dw accumulated", dw, twice, F, 1e-14, 1e-12), 0);
}

// A planted error in the gradient is caught: the check above can fail.
static void test_fd_can_fail(void **state) {
    (void)state;
    enum { N = 4, F = 3 };
    Rng r;
    rng_seed(&r, 12);
    double diff[N * F], target[N] = {1, 1, 0.5, 1}, mweight[N] = {1, 2, 1, 1}, anchor[F] = {0},
                        w[F], score[N], dw[F] = {0};
    check_fill_uniform(&r, NULL, diff, N * F, -1.0, 1.0);
    check_fill_uniform(&r, NULL, w, F, -1.0, 1.0);
    LossCtx c = {diff, target, mweight, anchor, 0.5, N, F, score};
    loss_of(w, F, &c);
    reward_loss_backward(dw, score, w, diff, target, mweight, anchor, c.lambda, N, F);
    dw[1] += 1e-3;
    assert_int_equal(check_compare_fd("planted", dw, w, F, FD_H, loss_of, &c, FD_ATOL, FD_RTOL), 1);
}

// --- the fit --------------------------------------------------------------------------------

// Every member's gradient at the fitted weights, recomputed from the outside (no bootstrap, so
// each member's weights are the caller's). Returns the largest |g_j|.
static double fit_gradient_max(const RewardModel *m, const double *w0, const Synth *s,
                               const float *weight, const uint8_t *tie) {
    int F = m->config.features, K = m->config.members;
    long n = s->n;
    double *diff = CHECK_ALLOC(double, n *F), *target = CHECK_ALLOC(double, n);
    double *mw = CHECK_ALLOC(double, n), *score = CHECK_ALLOC(double, n);
    double *anchor = CHECK_ALLOC(double, F), *g = CHECK_ALLOC(double, F), worst = 0.0;
    for (long i = 0; i < n; i++) {
        for (int j = 0; j < F; j++)
            diff[i * F + j] = (double)s->winner[i * F + j] - (double)s->loser[i * F + j];
        target[i] = tie && tie[i] ? 0.5 : 1.0;
        mw[i] = weight ? weight[i] : 1.0;
    }
    for (int k = 0; k < K; k++) {
        const double *w = m->weights + (long)k * F;
        for (int j = 0; j < F; j++)
            anchor[j] = w0[j] + m->config.anchor_scale * m->anchor_noise[(long)k * F + j];
        reward_loss_forward(score, w, diff, target, mw, anchor, m->config.prior_strength, n, F);
        memset(g, 0, sizeof(double) * F);
        reward_loss_backward(g, score, w, diff, target, mw, anchor, m->config.prior_strength, n, F);
        for (int j = 0; j < F; j++)
            worst = fmax(worst, fabs(g[j]));
    }
    free(diff), free(target), free(mw), free(score), free(anchor), free(g);
    return worst;
}

// Both solvers reach the same stationary point, with weights, ties and a nonzero prior, on both
// sides of N = F.
static void test_fit_stationary_solvers_agree(void **state) {
    (void)state;
    enum { F = 16 };
    const long sizes[] = {10, 16, 40};
    Rng r;
    rng_seed(&r, 21);
    double *wstar = wstar_make(&r, F, 3.0), *w0 = wstar_make(&r, F, 1.0);
    for (int t = 0; t < 3; t++) {
        long n = sizes[t];
        Synth s;
        synth_make(&s, &r, wstar, n, F, F, 1);
        float *weight = CHECK_ALLOC(float, n);
        uint8_t *tie = CHECK_ALLOC(uint8_t, n);
        for (long i = 0; i < n; i++) {
            weight[i] = 0.5f + rng_uniform(&r);
            tie[i] = i % 5 == 0;
        }
        s.view.weight = weight;
        s.view.tie = tie;
        RewardConfig c;
        reward_config_default(&c, F);
        c.bootstrap = 0;
        c.anchor_scale = 0.3;
        c.prior_strength = 0.2;
        RewardModel primal, dual;
        RewardWorkspace ws;
        c.solver = REWARD_SOLVER_PRIMAL;
        model_make(&primal, &ws, &c, n);
        c.solver = REWARD_SOLVER_DUAL;
        assert_int_equal(reward_init(&dual, &c), 0);
        assert_int_equal(reward_fit(&primal, &ws, w0, &s.view), 0);
        assert_int_equal(reward_fit(&dual, &ws, w0, &s.view), 0);
        double gp = fit_gradient_max(&primal, w0, &s, weight, tie);
        double gd = fit_gradient_max(&dual, w0, &s, weight, tie);
        printf("# n %ld F %d: max |grad| primal %.2e dual %.2e\n", n, F, gp, gd);
        assert_true(gp < 1e-8);
        assert_true(gd < 1e-8);
        long KF = (long)c.members * F;
        assert_int_equal(
            check_compare_d("dual vs primal", dual.weights, primal.weights, KF, 1e-8, 1e-8), 0);
        reward_free(&primal);
        reward_free(&dual);
        reward_workspace_free(&ws);
        free(weight);
        free(tie);
        synth_free(&s);
    }
    free(wstar);
    free(w0);
}

// The same inputs give bit-identical models (a restart rebuilds the same user), and the
// bootstrap really varies the members.
static void test_fit_deterministic(void **state) {
    (void)state;
    enum { F = 24, N = 60 };
    Rng r;
    rng_seed(&r, 31);
    double *wstar = wstar_make(&r, F, 3.0);
    Synth s;
    synth_make(&s, &r, wstar, N, F, F, 1);
    RewardConfig c;
    reward_config_default(&c, F);
    c.anchor_scale = 0.0; // members differ by their resample alone
    RewardModel a, b;
    RewardWorkspace ws;
    model_make(&a, &ws, &c, N);
    assert_int_equal(reward_init(&b, &c), 0);
    assert_int_equal(reward_fit(&a, &ws, NULL, &s.view), 0);
    assert_int_equal(reward_fit(&b, &ws, NULL, &s.view), 0);
    assert_memory_equal(a.weights, b.weights, sizeof(double) * c.members * F);
    assert_memory_not_equal(a.weights, a.weights + F, sizeof(double) * F);
    assert_int_equal(a.comparisons, N);
    reward_free(&a);
    reward_free(&b);
    reward_workspace_free(&ws);
    synth_free(&s);
    free(wstar);
}

// With no data every member sits on its anchor: exactly w0 when anchor_scale = 0, and around
// it otherwise. With a few comparisons a strong prior keeps w near w0 and a weak one lets go.
// A good population prior (w0 = w*) beats none when data are few.
static void test_prior_pull(void **state) {
    (void)state;
    enum { F = 32 };
    Rng r;
    rng_seed(&r, 41);
    double *wstar = wstar_make(&r, F, 3.0), *w0 = wstar_make(&r, F, 2.0);
    Synth none = {.view = {.n = 0}};
    RewardConfig c;
    reward_config_default(&c, F);
    c.anchor_scale = 0.0;
    RewardModel m;
    RewardWorkspace ws;
    model_make(&m, &ws, &c, 200);
    assert_int_equal(reward_fit(&m, &ws, w0, &none.view), 0);
    for (int k = 0; k < c.members; k++)
        assert_memory_equal(m.weights + (long)k * F, w0, sizeof(double) * F);
    assert_int_equal(check_compare_d("mean w", m.mean_weights, w0, F, 1e-15, 1e-15), 0);
    reward_free(&m);

    // Anchored: members spread by anchor_scale = 1 per coordinate around w0; the anchors are
    // centred over the members, so their mean is w0 itself.
    reward_config_default(&c, F);
    assert_int_equal(reward_init(&m, &c), 0);
    assert_int_equal(reward_fit(&m, &ws, w0, &none.view), 0);
    double off = 0.0, spread = 0.0;
    for (int j = 0; j < F; j++) {
        off += (m.mean_weights[j] - w0[j]) * (m.mean_weights[j] - w0[j]);
        for (int k = 0; k < c.members; k++) {
            double d = m.weights[(long)k * F + j] - w0[j];
            spread += d * d;
        }
    }
    off = sqrt(off / F);
    spread = sqrt(spread / ((double)F * (c.members - 1)));
    printf("# no data: rms(mean w - w0) %.2e, member spread %.3f (expected ~1)\n", off, spread);
    assert_true(off < 1e-9);
    assert_true(spread > 0.7 && spread < 1.3);
    reward_free(&m);

    // Few data, strong versus weak prior: distance of the mean weight from w0.
    Synth s;
    synth_make(&s, &r, wstar, 8, F, F, 1);
    double dist[2];
    const double lambdas[2] = {100.0, 0.01};
    for (int t = 0; t < 2; t++) {
        reward_config_default(&c, F);
        c.anchor_scale = 0.0;
        c.prior_strength = lambdas[t];
        assert_int_equal(reward_init(&m, &c), 0);
        assert_int_equal(reward_fit(&m, &ws, w0, &s.view), 0);
        dist[t] = 0.0;
        for (int j = 0; j < F; j++)
            dist[t] += (m.mean_weights[j] - w0[j]) * (m.mean_weights[j] - w0[j]);
        dist[t] = sqrt(dist[t]);
        reward_free(&m);
    }
    printf("# 8 comparisons: |mean w - w0| lambda 100: %.4f, lambda 0.01: %.4f\n", dist[0],
           dist[1]);
    assert_true(dist[0] < 0.2);
    assert_true(dist[1] > 10.0 * dist[0]);
    synth_free(&s);

    // A population prior at the truth helps a new user with 10 comparisons.
    Synth train, held;
    synth_make(&train, &r, wstar, 10, F, F, 1);
    synth_make(&held, &r, wstar, 2000, F, F, 0);
    reward_config_default(&c, F);
    double acc[2];
    for (int t = 0; t < 2; t++) {
        assert_int_equal(reward_init(&m, &c), 0);
        assert_int_equal(reward_fit(&m, &ws, t ? wstar : NULL, &train.view), 0);
        acc[t] = reward_accuracy(&m, &held.view);
        reward_free(&m);
    }
    printf("# 10 comparisons: held-out accuracy with w0 = 0 %.3f, with w0 = w* %.3f\n", acc[0],
           acc[1]);
    assert_true(acc[1] > acc[0] + 0.05);
    synth_free(&train);
    synth_free(&held);
    reward_workspace_free(&ws);
    free(wstar);
    free(w0);
}

// Only ties along a direction the prior favours: the fit pulls the reward difference along it
// toward zero (a tie is a half win each way).
static void test_ties_pull_to_even(void **state) {
    (void)state;
    enum { F = 4, N = 50 };
    float winner[N * F], loser[N * F];
    uint8_t tie[N];
    memset(winner, 0, sizeof winner);
    memset(loser, 0, sizeof loser);
    for (int i = 0; i < N; i++) {
        winner[i * F + 0] = 1.0f; // the frames differ only in feature 0
        tie[i] = 1;
    }
    double w0[F] = {2.0, 1.0, -1.0, 0.5};
    RewardConfig c;
    reward_config_default(&c, F);
    c.anchor_scale = 0.0;
    RewardModel m;
    RewardWorkspace ws;
    model_make(&m, &ws, &c, N);
    RewardComparisons data = {.n = N, .winner = winner, .loser = loser, .tie = tie};
    assert_int_equal(reward_fit(&m, &ws, w0, &data), 0);
    printf("# ties only: w[0] %.4f from w0[0] %.1f; w[1..3] %.3f %.3f %.3f\n", m.mean_weights[0],
           w0[0], m.mean_weights[1], m.mean_weights[2], m.mean_weights[3]);
    assert_true(fabs(m.mean_weights[0]) < 0.3);
    for (int j = 1; j < F; j++)
        assert_true(fabs(m.mean_weights[j] - w0[j]) < 1e-12);
    // Accuracy counts decisive comparisons only: none here.
    assert_true(isnan(reward_accuracy(&m, &data)));
    reward_free(&m);
    reward_workspace_free(&ws);
}

// --- synthetic users ------------------------------------------------------------------------

// Held-out accuracy (against the user's noise-free ordering) grows with the comparisons seen and
// is high at 300 for F = 32.
static void test_accuracy_grows_with_data(void **state) {
    (void)state;
    enum { F = 32 };
    const long sizes[] = {20, 100, 300, 1000};
    double acc[4], noisy_acc[4];
    Rng r;
    rng_seed(&r, 51);
    double *wstar = wstar_make(&r, F, 3.0);
    Synth held, held_noisy;
    synth_make(&held, &r, wstar, 4000, F, F, 0);
    synth_make(&held_noisy, &r, wstar, 4000, F, F, 1);
    // The best any model can do against noisy answers: the user's own utility.
    double bayes = 0.0;
    for (long i = 0; i < held_noisy.n; i++) {
        double u = 0.0;
        for (int j = 0; j < F; j++)
            u += wstar[j] * (held_noisy.winner[i * F + j] - held_noisy.loser[i * F + j]);
        bayes += u > 0.0;
    }
    bayes /= held_noisy.n;
    RewardConfig c;
    reward_config_default(&c, F);
    RewardModel m;
    RewardWorkspace ws;
    model_make(&m, &ws, &c, 1000);
    for (int t = 0; t < 4; t++) {
        Synth s;
        synth_make(&s, &r, wstar, sizes[t], F, F, 1);
        assert_int_equal(reward_fit(&m, &ws, NULL, &s.view), 0);
        acc[t] = reward_accuracy(&m, &held.view);
        noisy_acc[t] = reward_accuracy(&m, &held_noisy.view);
        printf("# N %4ld: held-out accuracy %.3f (against noisy answers %.3f; w* itself %.3f)\n",
               sizes[t], acc[t], noisy_acc[t], bayes);
        synth_free(&s);
    }
    assert_true(acc[2] > 0.85);
    assert_true(acc[0] < acc[1] && acc[1] < acc[2] && acc[2] < acc[3]);
    reward_free(&m);
    reward_workspace_free(&ws);
    synth_free(&held);
    synth_free(&held_noisy);
    free(wstar);
}

// Mean ensemble std of r(x) over random frames.
static double mean_std(const RewardModel *m, const float *x, long n) {
    float *sd = CHECK_ALLOC(float, n);
    reward_predict(m, x, n, NULL, sd);
    double s = 0.0;
    for (long i = 0; i < n; i++)
        s += sd[i];
    free(sd);
    return s / n;
}

// The ensemble is less sure with 10 comparisons than with 500, and less sure away from the data
// (features the data never varied) than along it.
static void test_std_tracks_data(void **state) {
    (void)state;
    enum { F = 32, T = 500 };
    Rng r;
    rng_seed(&r, 61);
    double *wstar = wstar_make(&r, F, 3.0);
    float *x = CHECK_ALLOC(float, T *F);
    rng_normal(&r, x, T * F);
    RewardConfig c;
    reward_config_default(&c, F);
    RewardModel m;
    RewardWorkspace ws;
    model_make(&m, &ws, &c, 500);

    Synth few, many;
    synth_make(&few, &r, wstar, 10, F, F, 1);
    synth_make(&many, &r, wstar, 500, F, F, 1);
    assert_int_equal(reward_fit(&m, &ws, NULL, &few.view), 0);
    double sd_few = mean_std(&m, x, T);
    assert_int_equal(reward_fit(&m, &ws, NULL, &many.view), 0);
    double sd_many = mean_std(&m, x, T);
    printf("# mean ensemble std of r(x): 10 comparisons %.3f, 500 comparisons %.3f\n", sd_few,
           sd_many);
    assert_true(sd_few > 2.0 * sd_many);

    // Data on the first half of the features only; test frames on one half or the other.
    Synth half;
    synth_make(&half, &r, wstar, 300, F, F / 2, 1);
    assert_int_equal(reward_fit(&m, &ws, NULL, &half.view), 0);
    float *near = CHECK_ALLOC(float, T *F), *far = CHECK_ALLOC(float, T *F);
    for (long i = 0; i < T; i++)
        for (int j = 0; j < F; j++) {
            near[i * F + j] = j < F / 2 ? x[i * F + j] : 0.0f;
            far[i * F + j] = j < F / 2 ? 0.0f : x[i * F + j];
        }
    double sd_near = mean_std(&m, near, T), sd_far = mean_std(&m, far, T);
    printf("# data on half the features: std near the data %.3f, away from it %.3f\n", sd_near,
           sd_far);
    assert_true(sd_far > 2.0 * sd_near);

    free(near);
    free(far);
    free(x);
    synth_free(&few);
    synth_free(&many);
    synth_free(&half);
    reward_free(&m);
    reward_workspace_free(&ws);
    free(wstar);
}

// Among candidate pairs, the ones the members disagree on most are the ones the model cannot
// call: their ensemble P(a > b) is closer to 1/2 than a random candidate's. That is what makes
// them worth asking.
static void test_disagreement_picks_informative_pairs(void **state) {
    (void)state;
    enum { F = 32, P = 400, TOP = 20 };
    Rng r;
    rng_seed(&r, 71);
    double *wstar = wstar_make(&r, F, 3.0);
    Synth s;
    synth_make(&s, &r, wstar, 40, F, F, 1);
    RewardConfig c;
    reward_config_default(&c, F);
    RewardModel m;
    RewardWorkspace ws;
    model_make(&m, &ws, &c, 40);
    assert_int_equal(reward_fit(&m, &ws, NULL, &s.view), 0);

    float *a = CHECK_ALLOC(float, P *F), *b = CHECK_ALLOC(float, P *F);
    double *dis = CHECK_ALLOC(double, P), *margin = CHECK_ALLOC(double, P);
    rng_normal(&r, a, P * F);
    rng_normal(&r, b, P * F);
    double all = 0.0;
    for (int i = 0; i < P; i++) {
        double p;
        dis[i] = reward_disagreement(&m, a + i * F, b + i * F, &p);
        margin[i] = fabs(p - 0.5);
        all += margin[i];
    }
    // The TOP largest disagreements by selection (P is small).
    double top = 0.0;
    for (int t = 0; t < TOP; t++) {
        int best = -1;
        for (int i = 0; i < P; i++)
            if (dis[i] >= 0.0 && (best < 0 || dis[i] > dis[best]))
                best = i;
        top += margin[best];
        dis[best] = -1.0;
    }
    top /= TOP;
    all /= P;
    printf("# mean |P(a>b) - 1/2|: %d most disputed pairs %.3f, all %d pairs %.3f\n", TOP, top, P,
           all);
    assert_true(top < 0.65 * all);

    // A pair of identical frames: every member says 1/2, no disagreement at all.
    double p;
    assert_true(reward_disagreement(&m, a, a, &p) == 0.0);
    assert_true(p == 0.5);

    free(a), free(b), free(dis), free(margin);
    synth_free(&s);
    reward_free(&m);
    reward_workspace_free(&ws);
    free(wstar);
}

// Predict's mean and std against the members' rewards computed here.
static void test_predict_reference(void **state) {
    (void)state;
    enum { F = 8, T = 5 };
    Rng r;
    rng_seed(&r, 81);
    RewardConfig c;
    reward_config_default(&c, F);
    c.members = 3;
    RewardModel m;
    assert_int_equal(reward_init(&m, &c), 0);
    float x[T * F], mean[T], sd[T];
    rng_normal(&r, x, T * F);
    reward_predict(&m, x, T, mean, sd);
    double want_mean[T], want_sd[T], got_mean[T], got_sd[T];
    for (int i = 0; i < T; i++) {
        double rk[3], mu = 0.0, v = 0.0;
        for (int k = 0; k < 3; k++) {
            rk[k] = 0.0;
            for (int j = 0; j < F; j++)
                rk[k] += m.weights[k * F + j] * x[i * F + j];
            mu += rk[k] / 3;
        }
        for (int k = 0; k < 3; k++)
            v += (rk[k] - mu) * (rk[k] - mu) / 2;
        want_mean[i] = mu, want_sd[i] = sqrt(v);
        got_mean[i] = mean[i], got_sd[i] = sd[i];
    }
    assert_int_equal(check_compare_d("mean", got_mean, want_mean, T, 1e-5, 1e-5), 0);
    assert_int_equal(check_compare_d("std", got_sd, want_sd, T, 1e-4, 1e-4), 0);
    reward_free(&m);
}

// --- errors and cost ------------------------------------------------------------------------

static void test_errors(void **state) {
    (void)state;
    enum { F = 4 };
    RewardConfig c;
    RewardModel m;
    RewardWorkspace ws;
    reward_config_default(&c, 0);
    assert_int_equal(reward_init(&m, &c), REWARD_EINVAL);
    reward_free(&m); // safe on what a failed init left
    reward_config_default(&c, F);
    c.prior_strength = 0.0;
    assert_int_equal(reward_init(&m, &c), REWARD_EINVAL);
    reward_config_default(&c, F);
    c.members = 0;
    assert_int_equal(reward_init(&m, &c), REWARD_EINVAL);
    assert_int_equal(reward_workspace_init(&ws, 0, 10), REWARD_EINVAL);
    reward_workspace_free(&ws);

    reward_config_default(&c, F);
    model_make(&m, &ws, &c, 2);
    float win[3 * F] = {1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0}, lose[3 * F] = {0};
    RewardComparisons d = {.n = 3, .winner = win, .loser = lose};
    assert_int_equal(reward_fit(&m, &ws, NULL, &d), REWARD_ETOOMANY);
    d.n = 2;
    float weight[2] = {1.0f, 0.0f};
    d.weight = weight;
    assert_int_equal(reward_fit(&m, &ws, NULL, &d), REWARD_EINVAL);
    d.weight = NULL;
    win[1] = NAN;
    assert_int_equal(reward_fit(&m, &ws, NULL, &d), REWARD_ENONFINITE);
    win[1] = 0.0f;
    double w0[F] = {0, INFINITY, 0, 0};
    assert_int_equal(reward_fit(&m, &ws, w0, &d), REWARD_ENONFINITE);
    d.winner = NULL;
    assert_int_equal(reward_fit(&m, &ws, NULL, &d), REWARD_EINVAL);
    d.winner = win;
    assert_int_equal(reward_fit(&m, &ws, NULL, &d), 0);
    RewardConfig big;
    reward_config_default(&big, 2 * F);
    RewardModel wide;
    assert_int_equal(reward_init(&wide, &big), 0);
    assert_int_equal(reward_fit(&wide, &ws, NULL, &(RewardComparisons){.n = 0}), REWARD_ETOOMANY);
    reward_free(&wide);

    assert_string_equal(reward_strerror(REWARD_ETOOMANY),
                        "more comparisons or features than the workspace was sized for");
    assert_string_equal(reward_strerror(0), "success");
    reward_free(&m);
    reward_free(&m); // twice is safe
    reward_workspace_free(&ws);
    reward_workspace_free(&ws);
}

// Cost of a refit at the server's sizes, printed (no assertion: machines differ).
static void test_fit_cost(void **state) {
    (void)state;
    const int Fs[] = {256, 256, 256, 512};
    const long Ns[] = {200, 200, 2000, 1000};
    const RewardSolver solvers[] = {REWARD_SOLVER_AUTO, REWARD_SOLVER_PRIMAL, REWARD_SOLVER_AUTO,
                                    REWARD_SOLVER_AUTO};
    const char *names[] = {"auto (dual)", "primal", "auto (primal)", "auto (primal)"};
    Rng r;
    rng_seed(&r, 91);
    for (int t = 0; t < 4; t++) {
        int F = Fs[t];
        long N = Ns[t];
        double *wstar = wstar_make(&r, F, 3.0);
        Synth s;
        synth_make(&s, &r, wstar, N, F, F, 1);
        // Features of a real D are not unit normal; scale down so scores stay O(1).
        for (long i = 0; i < N * F; i++)
            s.winner[i] *= 0.25f, s.loser[i] *= 0.25f;
        RewardConfig c;
        reward_config_default(&c, F);
        c.solver = solvers[t];
        RewardModel m;
        RewardWorkspace ws;
        model_make(&m, &ws, &c, N);
        assert_int_equal(reward_fit(&m, &ws, NULL, &s.view), 0); // warm up
        int reps = N * F > 300000 ? 2 : 5;
        double t0 = now_s();
        for (int i = 0; i < reps; i++)
            assert_int_equal(reward_fit(&m, &ws, NULL, &s.view), 0);
        double ms = 1e3 * (now_s() - t0) / reps;
        printf("# reward_fit F %d N %ld K %d %s: %.2f ms\n", F, N, c.members, names[t], ms);
        reward_free(&m);
        reward_workspace_free(&ws);
        synth_free(&s);
        free(wstar);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_loss_reference_and_fd),
        cmocka_unit_test(test_fd_can_fail),
        cmocka_unit_test(test_fit_stationary_solvers_agree),
        cmocka_unit_test(test_fit_deterministic),
        cmocka_unit_test(test_prior_pull),
        cmocka_unit_test(test_ties_pull_to_even),
        cmocka_unit_test(test_accuracy_grows_with_data),
        cmocka_unit_test(test_std_tracks_data),
        cmocka_unit_test(test_disagreement_picks_informative_pairs),
        cmocka_unit_test(test_predict_reference),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_fit_cost),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
