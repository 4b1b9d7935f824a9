// policy.c — per-user policies of policy.h: comparisons from feedback, the reward ensemble fitted
// on them, and the KL-regularized policy gradient over the prior pool.
#include "policy/policy.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"

void policy_config_default(PolicyConfig *c, int features) {
    memset(c, 0, sizeof *c);
    c->lambda_z = 0.5;
    c->lambda_c = 0.2;
    c->steps = 60;
    c->lr = 0.1;
    c->lr_z = 0.2;
    c->min_ess = 0.02;
    c->optimism = 0.5;
    c->sigma_min = 0.4f;
    c->sigma_max = 1.0f;
    reward_config_default(&c->reward, features);
}

int policy_pool_alloc(PolicyPool *p, long n, int z_dim, int classes, int F) {
    memset(p, 0, sizeof *p);
    p->n = n;
    p->z_dim = z_dim;
    p->classes = classes;
    p->F = F;
    p->z = malloc((size_t)n * z_dim * sizeof(float));
    p->y = calloc((size_t)n, sizeof(int32_t));
    p->phi = malloc((size_t)n * F * sizeof(float));
    p->neutral = calloc((size_t)F, sizeof(float));
    p->lp0 = malloc((size_t)n * sizeof(float));
    if (!p->z || !p->y || !p->phi || !p->neutral || !p->lp0) {
        policy_pool_free(p);
        return KERNELS_ENOMEM;
    }
    return 0;
}

void policy_pool_finish(PolicyPool *p) {
    memset(p->neutral, 0, (size_t)p->F * sizeof(float));
    for (long i = 0; i < p->n; i++) {
        const float *z = p->z + i * p->z_dim;
        double s = 0;
        for (int d = 0; d < p->z_dim; d++) s += (double)z[d] * z[d];
        p->lp0[i] = (float)(-0.5 * s);
        for (int f = 0; f < p->F; f++) p->neutral[f] += p->phi[i * p->F + f];
    }
    for (int f = 0; f < p->F; f++) p->neutral[f] /= (float)p->n;
}

void policy_pool_free(PolicyPool *p) {
    free(p->z);
    free(p->y);
    free(p->phi);
    free(p->neutral);
    free(p->lp0);
    memset(p, 0, sizeof *p);
}

int policy_params_alloc(PolicyParams *p, int z_dim, int classes) {
    memset(p, 0, sizeof *p);
    if (classes < 0 || classes > POLICY_MAX_CLASSES) return KERNELS_EINVAL;
    p->z_dim = z_dim;
    p->classes = classes;
    p->mu = calloc((size_t)z_dim, sizeof(float));
    p->probs = calloc((size_t)(classes ? classes : 1), sizeof(float));
    if (!p->mu || !p->probs) {
        policy_params_free(p);
        return KERNELS_ENOMEM;
    }
    policy_params_prior(p);
    return 0;
}

void policy_params_free(PolicyParams *p) {
    free(p->mu);
    free(p->probs);
    memset(p, 0, sizeof *p);
}

void policy_params_prior(PolicyParams *p) {
    p->version = 0;
    p->feedback = p->comparisons = 0;
    p->accuracy = NAN;
    p->kl = 0;
    p->ess = 1;
    p->sigma = 1;
    memset(p->mu, 0, (size_t)p->z_dim * sizeof(float));
    for (int c = 0; c < p->classes; c++) p->probs[c] = 1.0f / (float)p->classes;
}

void policy_params_copy(PolicyParams *dst, const PolicyParams *src) {
    float *mu = dst->mu, *probs = dst->probs;
    *dst = *src;
    dst->mu = mu;
    dst->probs = probs;
    memcpy(mu, src->mu, (size_t)src->z_dim * sizeof(float));
    memcpy(probs, src->probs, (size_t)src->classes * sizeof(float));
}

int policy_sample_class(const PolicyParams *p, Rng *r) {
    if (!p->classes) return -1;
    float u = rng_uniform(r), acc = 0;
    for (int c = 0; c < p->classes; c++) {
        acc += p->probs[c];
        if (u < acc) return c;
    }
    return p->classes - 1;
}

int policy_sample(const PolicyParams *p, Rng *r, float *z) {
    rng_normal(r, z, p->z_dim);
    for (int d = 0; d < p->z_dim; d++) z[d] = p->mu[d] + p->sigma * z[d];
    return policy_sample_class(p, r);
}

int policy_scratch_init(PolicyScratch *s, const PolicyConfig *c, const PolicyPool *pool,
                        long max_comparisons) {
    memset(s, 0, sizeof *s);
    s->max_comparisons = max_comparisons;
    s->pool_n = pool->n;
    int rc = reward_workspace_init(&s->ws, c->reward.features, max_comparisons);
    s->r = malloc((size_t)pool->n * sizeof(float));
    s->rstd = malloc((size_t)pool->n * sizeof(float));
    s->lw = malloc((size_t)pool->n * sizeof(double));
    if (rc || !s->r || !s->rstd || !s->lw) {
        policy_scratch_free(s);
        return KERNELS_ENOMEM;
    }
    return 0;
}

void policy_scratch_free(PolicyScratch *s) {
    reward_workspace_free(&s->ws);
    free(s->r);
    free(s->rstd);
    free(s->lw);
    memset(s, 0, sizeof *s);
}

int learner_init(Learner *l, const PolicyConfig *c, const PolicyPool *pool, uint64_t seed,
                 long max_comparisons) {
    memset(l, 0, sizeof *l);
    l->cfg = c;
    l->pool = pool;
    l->seed = seed;
    l->max_comparisons = max_comparisons;
    RewardConfig rc = c->reward;
    rc.seed = seed;
    int e = reward_init(&l->rm, &rc);
    if (!e) e = policy_params_alloc(&l->params, pool->z_dim, pool->classes);
    if (e) {
        learner_free(l);
        return e == REWARD_ENOMEM ? KERNELS_ENOMEM : e;
    }
    return 0;
}

void learner_free(Learner *l) {
    free(l->win);
    free(l->lose);
    free(l->weight);
    free(l->tie);
    reward_free(&l->rm);
    policy_params_free(&l->params);
    memset(l, 0, sizeof *l);
}

// Appends one comparison (dropping the oldest past max_comparisons).
static int learner_push(Learner *l, const float *win, const float *lose, float weight, int tie) {
    int F = l->pool->F;
    if (l->n == l->max_comparisons) { // forget the oldest
        long m = l->n - 1;
        memmove(l->win, l->win + F, (size_t)m * F * sizeof(float));
        memmove(l->lose, l->lose + F, (size_t)m * F * sizeof(float));
        memmove(l->weight, l->weight + 1, (size_t)m * sizeof(float));
        memmove(l->tie, l->tie + 1, (size_t)m);
        l->n = m;
    }
    if (l->n == l->cap) {
        long cap = l->cap ? l->cap * 2 : 16;
        if (cap > l->max_comparisons) cap = l->max_comparisons;
        float *w = realloc(l->win, (size_t)cap * F * sizeof(float));
        if (w) l->win = w;
        float *lo = realloc(l->lose, (size_t)cap * F * sizeof(float));
        if (lo) l->lose = lo;
        float *wt = realloc(l->weight, (size_t)cap * sizeof(float));
        if (wt) l->weight = wt;
        uint8_t *t = realloc(l->tie, (size_t)cap);
        if (t) l->tie = t;
        if (!w || !lo || !wt || !t) return KERNELS_ENOMEM;
        l->cap = cap;
    }
    memcpy(l->win + l->n * F, win, (size_t)F * sizeof(float));
    memcpy(l->lose + l->n * F, lose, (size_t)F * sizeof(float));
    l->weight[l->n] = weight;
    l->tie[l->n] = (uint8_t)(tie != 0);
    l->n++;
    return 0;
}

int learner_rate(Learner *l, const float *phi, double value) {
    if (!(value >= -1 && value <= 1)) return KERNELS_EINVAL;
    const float *ref = l->pool->neutral;
    int rc = value > 0   ? learner_push(l, phi, ref, (float)value, 0)
             : value < 0 ? learner_push(l, ref, phi, (float)-value, 0)
                         : learner_push(l, phi, ref, 1.0f, 1);
    if (!rc) l->params.feedback++;
    return rc;
}

int learner_pair(Learner *l, const float *winner, const float *loser, int tie) {
    int rc = learner_push(l, winner, loser, 1.0f, tie);
    if (!rc) l->params.feedback++;
    return rc;
}

int learner_choose(Learner *l, const float *chosen, const float *others, long n_others) {
    for (long i = 0; i < n_others; i++) {
        int rc = learner_push(l, chosen, others + i * l->pool->F, 1.0f, 0);
        if (rc) return rc;
    }
    l->params.feedback++;
    return 0;
}

// p (C) = softmax(a) and logp its log, stably.
static void softmax(const double *a, int C, double *logp, double *p) {
    double mx = -INFINITY, se = 0;
    for (int k = 0; k < C; k++) mx = a[k] > mx ? a[k] : mx;
    for (int k = 0; k < C; k++) se += exp(a[k] - mx);
    for (int k = 0; k < C; k++) {
        logp[k] = a[k] - mx - log(se);
        p[k] = exp(logp[k]);
    }
}

// The latent part's density ratio to the prior at every pool sample, as weights in lw (summing to
// one); returns the effective sample size fraction. zmu (n) holds z_i . mu.
static double pool_weights(const PolicyPool *pool, const float *zmu, double mu2, double rho,
                           double *lw) {
    int Z = pool->z_dim;
    double is2 = exp(-2 * rho), mx = -INFINITY;
    for (long i = 0; i < pool->n; i++) {
        double dist = -2.0 * pool->lp0[i] - 2.0 * zmu[i] + mu2;
        lw[i] = -0.5 * dist * is2 - Z * rho - pool->lp0[i];
        if (lw[i] > mx) mx = lw[i];
    }
    double s = 0, s2 = 0;
    for (long i = 0; i < pool->n; i++) {
        lw[i] = exp(lw[i] - mx);
        s += lw[i];
    }
    for (long i = 0; i < pool->n; i++) {
        lw[i] /= s;
        s2 += lw[i] * lw[i];
    }
    return 1.0 / s2 / (double)pool->n;
}

// Maximizes J over theta = (mu, rho = log sigma, a) from the prior by Adam ascent; fills
// l->params. The class part's expectation is exact (a sum over the classes of p_c R_c, R_c the
// self-normalized estimate of E[r | c] under the latent part on the pool's frames of class c);
// the latent part's gradient is the importance-sampled REINFORCE one. When a step would take the
// pool's ESS under min_ess the latent part stays where it was and only the classes move on.
static void policy_optimize(Learner *l, PolicyScratch *s) {
    const PolicyConfig *c = l->cfg;
    const PolicyPool *pool = l->pool;
    int Z = pool->z_dim, C = pool->classes, CC = C ? C : 1, P = Z + 1 + C;
    long M = pool->n;
    double th[P], prev[P], g[P], m1[P], m2[P], logp[CC], p[CC], R[CC], Wc[CC];
    float mu[Z], zmu[M], A[M], gmu[Z];
    double rho_lo = log(c->sigma_min), rho_hi = log(c->sigma_max), logC = C ? log((double)C) : 0;
    memset(th, 0, sizeof th);
    th[Z] = rho_hi < 0 ? rho_hi : 0;
    memset(m1, 0, sizeof m1);
    memset(m2, 0, sizeof m2);
    double ess = 1;
    int z_frozen = 0;
    for (int t = 0; t < c->steps; t++) {
        double e = 0, mu2 = 0;
        for (int pass = 0; pass < 2; pass++) { // a second pass only to undo a latent step
            mu2 = 0;
            for (int d = 0; d < Z; d++) {
                mu[d] = (float)th[d];
                mu2 += (double)mu[d] * mu[d];
            }
            cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)M, Z, 1.0f, pool->z, Z, mu, 1, 0.0f, zmu,
                        1);
            e = pool_weights(pool, zmu, mu2, th[Z], s->lw);
            if (t == 0 || z_frozen || e >= c->min_ess) break;
            memcpy(th, prev, (size_t)(Z + 1) * sizeof(double)); // back to the last good latent
            z_frozen = 1;
        }
        ess = e;
        memcpy(prev, th, sizeof th);
        double sig2 = exp(2 * th[Z]);
        if (C) {
            softmax(th + Z + 1, C, logp, p);
        } else {
            p[0] = 1;
            logp[0] = 0;
        }
        memset(R, 0, sizeof R);
        memset(Wc, 0, sizeof Wc);
        for (long i = 0; i < M; i++) {
            int k = C ? pool->y[i] : 0;
            R[k] += s->lw[i] * s->r[i];
            Wc[k] += s->lw[i];
        }
        double J = 0;
        for (int k = 0; k < CC; k++) {
            R[k] = Wc[k] > 0 ? R[k] / Wc[k] : 0;
            J += p[k] * R[k];
        }
        double grho = 0;
        for (long i = 0; i < M; i++) {
            int k = C ? pool->y[i] : 0;
            double a = Wc[k] > 0 ? p[k] * s->lw[i] / Wc[k] * (s->r[i] - R[k]) : 0;
            A[i] = (float)a;
            double dist = -2.0 * pool->lp0[i] - 2.0 * zmu[i] + mu2;
            grho += a * dist / sig2; // the -Z term vanishes: A sums to zero within each class
        }
        if (z_frozen) {
            memset(g, 0, (size_t)(Z + 1) * sizeof(double));
        } else {
            cblas_sgemv(CblasRowMajor, CblasTrans, (int)M, Z, 1.0f, pool->z, Z, A, 1, 0.0f, gmu, 1);
            for (int d = 0; d < Z; d++) g[d] = gmu[d] / sig2 - c->lambda_z * th[d];
            g[Z] = grho - c->lambda_z * Z * (sig2 - 1);
        }
        double klc = 0;
        for (int k = 0; k < C; k++) klc += p[k] * (logp[k] + logC);
        for (int k = 0; k < C; k++)
            g[Z + 1 + k] = p[k] * (R[k] - J) - c->lambda_c * p[k] * (logp[k] + logC - klc);
        // The latent part climbs its plain gradient: Adam's per-coordinate scaling would move the
        // mean as fast along directions where the pool's gradient is only sampling noise as along
        // the ones the reward speaks for. The scale's gradient sums over Z dimensions.
        if (!z_frozen) {
            for (int q = 0; q < Z; q++) th[q] += c->lr_z * g[q];
            th[Z] += c->lr_z / Z * g[Z];
        }
        for (int q = Z + 1; q < P; q++) { // the class logits: Adam, ascent
            m1[q] = 0.9 * m1[q] + 0.1 * g[q];
            m2[q] = 0.999 * m2[q] + 0.001 * g[q] * g[q];
            double mh = m1[q] / (1 - pow(0.9, t + 1)), vh = m2[q] / (1 - pow(0.999, t + 1));
            th[q] += c->lr * mh / (sqrt(vh) + 1e-8);
        }
        if (th[Z] < rho_lo) th[Z] = rho_lo;
        if (th[Z] > rho_hi) th[Z] = rho_hi;
    }
    PolicyParams *out = &l->params;
    double mu2 = 0, sig2 = exp(2 * th[Z]);
    for (int d = 0; d < Z; d++) {
        out->mu[d] = (float)th[d];
        mu2 += th[d] * th[d];
    }
    out->sigma = (float)exp(th[Z]);
    double klz = 0.5 * (Z * sig2 + mu2 - Z) - Z * th[Z], klc = 0;
    if (C) {
        softmax(th + Z + 1, C, logp, p);
        for (int k = 0; k < C; k++) {
            out->probs[k] = (float)p[k];
            klc += p[k] * (logp[k] + logC);
        }
    }
    out->kl = klz + klc;
    out->ess = ess;
}

int learner_update(Learner *l, PolicyScratch *s, const double *w0) {
    if (l->n > s->max_comparisons || l->pool->n != s->pool_n) return REWARD_ETOOMANY;
    RewardComparisons data = {l->n, l->win, l->lose, l->weight, l->tie};
    int rc = reward_fit(&l->rm, &s->ws, w0, &data);
    if (rc) return rc;
    reward_predict(&l->rm, l->pool->phi, l->pool->n, s->r, s->rstd);
    for (long i = 0; i < l->pool->n; i++) s->r[i] += (float)(l->cfg->optimism * s->rstd[i]);
    policy_optimize(l, s);
    l->params.version = (uint32_t)l->params.feedback;
    l->params.comparisons = l->n;
    l->params.accuracy = l->rm.oob_accuracy;
    return 0;
}

void learner_pick_pair(const Learner *l, const long *cand, int n, long *a, long *b) {
    int F = l->pool->F;
    double best = -1;
    *a = cand[0];
    *b = cand[1];
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++) {
            if (cand[i] == cand[j]) continue;
            double d = reward_disagreement(&l->rm, l->pool->phi + cand[i] * F,
                                           l->pool->phi + cand[j] * F, NULL);
            if (d > best) {
                best = d;
                *a = cand[i];
                *b = cand[j];
            }
        }
}
