// reward.c — the Bradley–Terry reward ensemble of reward.h: a linear score on caller features,
// K anchored, bootstrapped members, each fitted by damped Newton in double.
//
// The loss of one member is convex (logistic loss of w . diff plus a strictly convex L2 term), so
// Newton from the anchor with an Armijo backtracking line search reaches the minimum in a handful
// of steps; the Newton decrement g^T H^-1 g / 2 (an estimate of the distance to the optimum in
// loss) stops it. The step solves H p = g either in the primal, H = lambda I + D^T S D (F x F,
// built by dsyrk on sqrt(S) D, Cholesky), or, while N <= F, through the Woodbury identity
//   H^-1 g = (g - D^T U (lambda I + U G U)^-1 U D g) / lambda,  U = sqrt(S), G = D D^T,
// an N x N Cholesky on a Gram matrix formed once per fit and shared by every member and step.
//
// It is deliberately not a neural head (linear is fast, convex and enough over good features),
// not online (every fit starts over from the data, so a restart rebuilds the same model), and not
// thread-parallel itself (OpenBLAS may use its own threads inside a call).
#include "policy/reward.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/rng.h"

// Newton stops when the decrement g^T H^-1 g / 2 falls under this (absolute, in nats of loss):
// the loss is then within about that of its minimum, and the one full step taken on the way out
// squares that again (quadratic convergence), far below anything predictions can show.
#define REWARD_DECREMENT_TOL 1e-10
// Armijo constant and the most halvings of a step before giving up on it.
#define REWARD_ARMIJO 0.25
#define REWARD_MAX_HALVINGS 40

const char *reward_strerror(int code) {
    switch (code) {
#define X(name, c, msg)                                                                            \
    case c:                                                                                        \
        return msg;
        REWARD_ERRNO_MAP(X)
#undef X
    case 0:
        return "success";
    }
    return "unknown error";
}

void reward_config_default(RewardConfig *c, int features) {
    memset(c, 0, sizeof *c);
    c->features = features;
    c->members = 5;
    c->prior_strength = 1.0;
    c->anchor_scale = 1.0;
    c->bootstrap = 1;
    c->newton_steps = 20;
    c->solver = REWARD_SOLVER_AUTO;
    c->seed = 0x5eed;
}

// --- model ----------------------------------------------------------------------------------

void reward_free(RewardModel *m) {
    free(m->weights);
    free(m->mean_weights);
    free(m->anchor_noise);
    memset(m, 0, sizeof *m);
}

int reward_init(RewardModel *m, const RewardConfig *c) {
    memset(m, 0, sizeof *m);
    if (!c || c->features < 1 || c->features > REWARD_MAX_FEATURES || c->members < 1 ||
        c->members > REWARD_MAX_MEMBERS || !(c->prior_strength > 0.0) ||
        !isfinite(c->prior_strength) || !(c->anchor_scale >= 0.0) || !isfinite(c->anchor_scale) ||
        c->newton_steps < 0 || (unsigned)c->solver > REWARD_SOLVER_DUAL)
        return REWARD_EINVAL;
    m->config = *c;
    m->oob_accuracy = NAN;
    int F = c->features, K = c->members;
    m->weights = malloc(sizeof(double) * (size_t)K * F);
    m->mean_weights = calloc((size_t)F, sizeof(double));
    m->anchor_noise = malloc(sizeof(double) * (size_t)K * F);
    float *noise = malloc(sizeof(float) * (size_t)K * F);
    if (!m->weights || !m->mean_weights || !m->anchor_noise || !noise)
        goto fail;
    Rng r;
    rng_seed(&r, c->seed);
    rng_normal(&r, noise, (long)K * F);
    // Centred over the members (and rescaled to keep unit variance): the anchors' mean is exactly
    // w0, so with no data the ensemble-mean reward is the prior's and only the spread says
    // "unknown" (a finite K would otherwise give the mean a random tilt of std 1 / sqrt(K)).
    double rescale = K > 1 ? sqrt((double)K / (K - 1)) : 1.0;
    for (int j = 0; j < F; j++) {
        double mean = 0;
        for (int k = 0; k < K; k++) mean += noise[(long)k * F + j];
        mean = K > 1 ? mean / K : 0.0;
        for (int k = 0; k < K; k++) {
            long i = (long)k * F + j;
            m->anchor_noise[i] = (noise[i] - mean) * rescale;
            m->weights[i] = c->anchor_scale * m->anchor_noise[i];
        }
    }
    for (int k = 0; k < K; k++)
        for (int j = 0; j < F; j++)
            m->mean_weights[j] += m->weights[(long)k * F + j] / K;
    free(noise);
    return 0;
fail:
    free(noise);
    reward_free(m);
    return REWARD_ENOMEM;
}

// --- workspace ------------------------------------------------------------------------------

void reward_workspace_free(RewardWorkspace *ws) {
    free(ws->diff);
    free(ws->target);
    free(ws->cweight);
    free(ws->mweight);
    free(ws->score);
    free(ws->curv);
    free(ws->rows);
    free(ws->hess);
    free(ws->gram);
    free(ws->vec);
    free(ws->anchor);
    free(ws->grad);
    free(ws->step);
    free(ws->trial);
    free(ws->count);
    free(ws->oob_score);
    free(ws->oob_n);
    memset(ws, 0, sizeof *ws);
}

int reward_workspace_init(RewardWorkspace *ws, int max_features, long max_comparisons) {
    memset(ws, 0, sizeof *ws);
    if (max_features < 1 || max_features > REWARD_MAX_FEATURES || max_comparisons < 0 ||
        max_comparisons > (1L << 24))
        return REWARD_EINVAL;
    ws->max_features = max_features;
    ws->max_comparisons = max_comparisons;
    size_t F = (size_t)max_features, N = (size_t)max_comparisons + 1; // +1: never malloc(0)
    size_t small = N < F ? N : F, big = N > F ? N : F;
    ws->diff = malloc(sizeof(double) * N * F);
    ws->target = malloc(sizeof(double) * N);
    ws->cweight = malloc(sizeof(double) * N);
    ws->mweight = malloc(sizeof(double) * N);
    ws->score = malloc(sizeof(double) * N);
    ws->curv = malloc(sizeof(double) * N);
    ws->rows = malloc(sizeof(double) * N * F);
    ws->hess = malloc(sizeof(double) * F * F);
    ws->gram = malloc(sizeof(double) * small * small);
    ws->vec = malloc(sizeof(double) * big);
    ws->anchor = malloc(sizeof(double) * F);
    ws->grad = malloc(sizeof(double) * F);
    ws->step = malloc(sizeof(double) * F);
    ws->trial = malloc(sizeof(double) * F);
    ws->count = malloc(sizeof(int) * N);
    ws->oob_score = malloc(sizeof(double) * N);
    ws->oob_n = malloc(sizeof(int) * N);
    if (!ws->oob_score || !ws->oob_n || !ws->diff || !ws->target || !ws->cweight || !ws->mweight || !ws->score || !ws->curv ||
        !ws->rows || !ws->hess || !ws->gram || !ws->vec || !ws->anchor || !ws->grad || !ws->step ||
        !ws->trial || !ws->count) {
        reward_workspace_free(ws);
        return REWARD_ENOMEM;
    }
    return 0;
}

// --- loss -----------------------------------------------------------------------------------

// log(1 + e^s) without overflow for large |s|.
static double softplus(double s) { return s > 0.0 ? s + log1p(exp(-s)) : log1p(exp(s)); }

static double sigmoid(double s) {
    if (s >= 0.0)
        return 1.0 / (1.0 + exp(-s));
    double e = exp(s);
    return e / (1.0 + e);
}

double reward_loss_forward(double *score, const double *w, const double *diff, const double *target,
                           const double *mweight, const double *anchor, double lambda, long n,
                           int F) {
    if (n > 0)
        cblas_dgemv(CblasRowMajor, CblasNoTrans, (int)n, F, 1.0, diff, F, w, 1, 0.0, score, 1);
    double loss = 0.0;
    for (long i = 0; i < n; i++)
        if (mweight[i] != 0.0)
            loss += mweight[i] * (softplus(score[i]) - target[i] * score[i]);
    double prior = 0.0;
    for (int j = 0; j < F; j++)
        prior += (w[j] - anchor[j]) * (w[j] - anchor[j]);
    return loss + 0.5 * lambda * prior;
}

// dL/ds_i = mweight_i (sigma(s_i) - target_i), scattered row by row (daxpy) so the function needs
// no scratch; rows a resample left out (mweight 0) cost nothing.
void reward_loss_backward(double *dw, const double *score, const double *w, const double *diff,
                          const double *target, const double *mweight, const double *anchor,
                          double lambda, long n, int F) {
    for (long i = 0; i < n; i++) {
        if (mweight[i] == 0.0)
            continue;
        double g = mweight[i] * (sigmoid(score[i]) - target[i]);
        cblas_daxpy(F, g, diff + i * F, 1, dw, 1);
    }
    for (int j = 0; j < F; j++)
        dw[j] += lambda * (w[j] - anchor[j]);
}

// --- fit ------------------------------------------------------------------------------------

// Solves A x = b in place for a symmetric positive definite A (n, n) of which the upper triangle
// is filled (row-major): that is the lower triangle column-major, which LAPACK reads directly. The
// _work entry points skip LAPACKE's transposed copy (an allocation) and its NaN scan.
static int cholesky_solve(double *a, double *b, int n) {
    if (LAPACKE_dpotrf_work(LAPACK_COL_MAJOR, 'L', n, a, n) != 0)
        return REWARD_ELAPACK;
    if (LAPACKE_dpotrs_work(LAPACK_COL_MAJOR, 'L', n, 1, a, n, b, n) != 0)
        return REWARD_ELAPACK;
    return 0;
}

// step = H^-1 grad in the primal: hess = lambda I + (sqrt(curv) D)^T (sqrt(curv) D), Cholesky.
static int newton_step_primal(RewardWorkspace *ws, double lambda, long n, int F) {
    for (long i = 0; i < n; i++) {
        double u = sqrt(ws->curv[i]);
        for (int j = 0; j < F; j++)
            ws->rows[i * F + j] = u * ws->diff[i * F + j];
    }
    memset(ws->hess, 0, sizeof(double) * (size_t)F * F);
    for (int j = 0; j < F; j++)
        ws->hess[(long)j * F + j] = lambda;
    if (n > 0)
        cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, F, (int)n, 1.0, ws->rows, F, 1.0,
                    ws->hess, F);
    memcpy(ws->step, ws->grad, sizeof(double) * (size_t)F);
    return cholesky_solve(ws->hess, ws->step, F);
}

// step = H^-1 grad by Woodbury (see the top of the file): M = lambda I + U G U (N x N, upper),
// v = U D g, z = M^-1 v, step = (g - D^T U z) / lambda. Needs ws->gram = D D^T (upper).
static int newton_step_dual(RewardWorkspace *ws, double lambda, long n, int F) {
    double *M = ws->hess, *v = ws->vec, *u = ws->rows; // rows is spare in the dual
    for (long i = 0; i < n; i++)
        u[i] = sqrt(ws->curv[i]);
    for (long i = 0; i < n; i++) {
        for (long j = i; j < n; j++)
            M[i * n + j] = u[i] * u[j] * ws->gram[i * n + j];
        M[i * n + i] += lambda;
    }
    cblas_dgemv(CblasRowMajor, CblasNoTrans, (int)n, F, 1.0, ws->diff, F, ws->grad, 1, 0.0, v, 1);
    for (long i = 0; i < n; i++)
        v[i] *= u[i];
    int rc = cholesky_solve(M, v, (int)n);
    if (rc)
        return rc;
    for (long i = 0; i < n; i++)
        v[i] *= u[i];
    memcpy(ws->step, ws->grad, sizeof(double) * (size_t)F);
    cblas_dgemv(CblasRowMajor, CblasTrans, (int)n, F, -1.0, ws->diff, F, v, 1, 1.0, ws->step, 1);
    for (int j = 0; j < F; j++)
        ws->step[j] /= lambda;
    return 0;
}

// Minimizes one member's loss from the start w (F) holds; w receives the minimizer.
static int fit_member(double *w, RewardWorkspace *ws, const RewardConfig *c, long n, int dual) {
    int F = c->features;
    double lambda = c->prior_strength;
    double loss = reward_loss_forward(ws->score, w, ws->diff, ws->target, ws->mweight, ws->anchor,
                                      lambda, n, F);
    for (int it = 0; it < c->newton_steps; it++) {
        memset(ws->grad, 0, sizeof(double) * (size_t)F);
        reward_loss_backward(ws->grad, ws->score, w, ws->diff, ws->target, ws->mweight, ws->anchor,
                             lambda, n, F);
        for (long i = 0; i < n; i++) {
            double p = sigmoid(ws->score[i]);
            ws->curv[i] = ws->mweight[i] * p * (1.0 - p);
        }
        int rc = dual ? newton_step_dual(ws, lambda, n, F) : newton_step_primal(ws, lambda, n, F);
        if (rc)
            return rc;
        double decrement = cblas_ddot(F, ws->grad, 1, ws->step, 1); // g^T H^-1 g >= 0
        if (!(decrement > 2.0 * REWARD_DECREMENT_TOL)) {
            // Inside the quadratic region one full step squares the error again, for the price
            // of a vector update: the gradient ends near rounding, not near the tolerance.
            for (int j = 0; j < F; j++)
                w[j] -= ws->step[j];
            break;
        }
        double t = 1.0, trial_loss = loss;
        int accepted = 0;
        for (int h = 0; h < REWARD_MAX_HALVINGS; h++, t *= 0.5) {
            for (int j = 0; j < F; j++)
                ws->trial[j] = w[j] - t * ws->step[j];
            trial_loss = reward_loss_forward(ws->score, ws->trial, ws->diff, ws->target,
                                             ws->mweight, ws->anchor, lambda, n, F);
            if (trial_loss <= loss - REWARD_ARMIJO * t * decrement) {
                accepted = 1;
                break;
            }
        }
        if (!accepted) // rounding floor: w is as good as double can tell
            break;
        memcpy(w, ws->trial, sizeof(double) * (size_t)F);
        loss = trial_loss; // ws->score holds w's scores again
    }
    return 0;
}

int reward_fit(RewardModel *m, RewardWorkspace *ws, const double *w0,
               const RewardComparisons *data) {
    if (!m || !m->weights || !ws || !ws->diff || !data || data->n < 0 ||
        (data->n > 0 && (!data->winner || !data->loser)))
        return REWARD_EINVAL;
    const RewardConfig *c = &m->config;
    int F = c->features, K = c->members;
    long n = data->n;
    if (F > ws->max_features || n > ws->max_comparisons)
        return REWARD_ETOOMANY;
    for (long i = 0; i < n; i++) {
        double cw = data->weight ? data->weight[i] : 1.0;
        if (!isfinite(cw))
            return REWARD_ENONFINITE;
        if (!(cw > 0.0))
            return REWARD_EINVAL;
        ws->cweight[i] = cw;
        ws->target[i] = data->tie && data->tie[i] ? 0.5 : 1.0;
        const float *a = data->winner + i * F, *b = data->loser + i * F;
        for (int j = 0; j < F; j++) {
            double d = (double)a[j] - (double)b[j];
            if (!isfinite(d))
                return REWARD_ENONFINITE;
            ws->diff[i * F + j] = d;
        }
    }
    if (w0)
        for (int j = 0; j < F; j++)
            if (!isfinite(w0[j]))
                return REWARD_ENONFINITE;

    int dual = n > 0 && n <= F && c->solver != REWARD_SOLVER_PRIMAL;
    if (dual) // the Gram matrix, upper triangle, packed (n, n) at the front of ws->gram
        cblas_dsyrk(CblasRowMajor, CblasUpper, CblasNoTrans, (int)n, F, 1.0, ws->diff, F, 0.0,
                    ws->gram, (int)n);

    // Resamples come from their own stream, reseeded every fit, so a fit depends only on its
    // inputs; anchors came from config.seed itself at init.
    Rng r;
    rng_seed(&r, c->seed ^ 0x9e3779b97f4a7c15ULL);
    memset(ws->oob_score, 0, sizeof(double) * (size_t)(n + 1));
    memset(ws->oob_n, 0, sizeof(int) * (size_t)(n + 1));
    for (int k = 0; k < K; k++) {
        for (int j = 0; j < F; j++)
            ws->anchor[j] = (w0 ? w0[j] : 0.0) + c->anchor_scale * m->anchor_noise[(long)k * F + j];
        if (c->bootstrap && n > 0) {
            memset(ws->count, 0, sizeof(int) * (size_t)n);
            for (long i = 0; i < n; i++)
                ws->count[rng_below(&r, (uint32_t)n)]++;
            for (long i = 0; i < n; i++)
                ws->mweight[i] = ws->cweight[i] * ws->count[i];
        } else {
            memcpy(ws->mweight, ws->cweight, sizeof(double) * (size_t)n);
        }
        // Start member 0 at its anchor, and each later one where the previous member ended,
        // shifted by the difference of their anchors: the members differ by resample and
        // anchor only, so that is close to the optimum and saves about half the Newton steps.
        double *w = m->weights + (long)k * F;
        for (int j = 0; j < F; j++)
            w[j] = k == 0 ? ws->anchor[j]
                          : w[j - F] + c->anchor_scale * (m->anchor_noise[(long)k * F + j] -
                                                          m->anchor_noise[(long)(k - 1) * F + j]);
        int rc = fit_member(w, ws, c, n, dual);
        if (rc)
            return rc;
        if (c->bootstrap) // the comparisons this member never saw score it out of bag
            for (long i = 0; i < n; i++)
                if (!ws->count[i]) {
                    double sc = 0.0;
                    for (int j = 0; j < F; j++)
                        sc += w[j] * ws->diff[i * F + j];
                    ws->oob_score[i] += sc;
                    ws->oob_n[i]++;
                }
    }
    double right = 0.0, seen = 0.0;
    for (long i = 0; i < n; i++)
        if (ws->oob_n[i] && ws->target[i] == 1.0) {
            right += ws->oob_score[i] > 0 ? 1.0 : ws->oob_score[i] == 0 ? 0.5 : 0.0;
            seen += 1.0;
        }
    m->oob_accuracy = seen > 0 ? right / seen : NAN;
    m->oob_comparisons = (long)seen;
    for (int j = 0; j < F; j++) {
        double s = 0.0;
        for (int k = 0; k < K; k++)
            s += m->weights[(long)k * F + j];
        m->mean_weights[j] = s / K;
    }
    m->comparisons = n;
    return 0;
}

// --- reading --------------------------------------------------------------------------------

static double dot_df(const double *w, const float *x, int F) {
    double s = 0.0;
    for (int j = 0; j < F; j++)
        s += w[j] * (double)x[j];
    return s;
}

void reward_predict(const RewardModel *m, const float *x, long n, float *mean, float *std) {
    int F = m->config.features, K = m->config.members;
    for (long i = 0; i < n; i++) {
        const float *xi = x + i * F;
        double s = 0.0, ss = 0.0;
        for (int k = 0; k < K; k++) {
            double r = dot_df(m->weights + (long)k * F, xi, F);
            s += r;
            ss += r * r;
        }
        double mu = s / K;
        if (mean)
            mean[i] = (float)mu;
        if (std)
            std[i] = K > 1 ? (float)sqrt(fmax(0.0, (ss - K * mu * mu) / (K - 1))) : 0.0f;
    }
}

double reward_disagreement(const RewardModel *m, const float *a, const float *b, double *p_mean) {
    int F = m->config.features, K = m->config.members;
    double s = 0.0, ss = 0.0;
    for (int k = 0; k < K; k++) {
        const double *w = m->weights + (long)k * F;
        double p = sigmoid(dot_df(w, a, F) - dot_df(w, b, F));
        s += p;
        ss += p * p;
    }
    double mu = s / K;
    if (p_mean)
        *p_mean = mu;
    return K > 1 ? sqrt(fmax(0.0, (ss - K * mu * mu) / (K - 1))) : 0.0;
}

double reward_accuracy(const RewardModel *m, const RewardComparisons *data) {
    int F = m->config.features;
    double right = 0.0;
    long decisive = 0;
    for (long i = 0; i < data->n; i++) {
        if (data->tie && data->tie[i])
            continue;
        double ra = dot_df(m->mean_weights, data->winner + i * F, F);
        double rb = dot_df(m->mean_weights, data->loser + i * F, F);
        right += ra > rb ? 1.0 : ra == rb ? 0.5 : 0.0;
        decisive++;
    }
    return decisive ? right / decisive : NAN;
}
