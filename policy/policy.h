// policy.h — per-user policies over the generator's input, learned from feedback.
//
// A user's policy is pi(z, c) = N(z; mu, sigma^2 I) x Cat(c; softmax(a)): a Gaussian over the
// latent (one mean per dimension, one shared scale) and, for a conditional model, a distribution
// over classes. It maximizes the KL-regularized expected reward
//   J = E_pi[r(z, c)] - lambda_z KL(N(mu, sigma^2 I) || N(0, I)) - lambda_c KL(Cat(a) || uniform)
// where r is the user's Bradley–Terry ensemble (policy/reward.h) on the frame's features
// (policy/features.h): the KL terms keep it on the image manifold the generator was trained on.
//
// The gradient is REINFORCE (Williams 1992) with a baseline, estimated off-policy by self-normalized
// importance sampling over a fixed pool of M frames drawn from the prior (z ~ N(0, I), c uniform)
// whose features were computed once: w_i ~ pi(z_i, c_i) / p0(z_i, c_i),
//   grad J = sum_i wbar_i (r_i - J) grad log pi(z_i, c_i) - grad KL terms,
// so an update runs no network at all (M x Z work per step). The latent part climbs its plain
// gradient, the class logits take Adam steps; the latent part stops early when the
// pool's effective sample size 1 / sum wbar^2 falls under min_ess of M (a trust region: past it
// the pool no longer speaks for the policy). Every update starts from the prior and runs a fixed
// number of steps, so a policy is a deterministic function of its user's comparisons and the
// population prior: the server rebuilds the same policy from the store after a restart.
//
// Feedback becomes comparisons (learner_rate / learner_pair / learner_choose): a pair is one, a
// choice among n is n - 1 (the chosen over each other), a rating v is a comparison against the
// pool's mean frame ("neutral"): v > 0 wins it with weight v, v < 0 loses it, v = 0 ties.
//
// Held-out accuracy is the reward ensemble's out-of-bag accuracy (reward.h): like the policy, a
// function of the comparisons alone, so it too is the same after a rebuild.
#ifndef POLICY_POLICY_H
#define POLICY_POLICY_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/rng.h"
#include "policy/reward.h"

#define POLICY_MAX_CLASSES 64

typedef struct {
    double lambda_z;  // KL weight on the latent part (default 0.5)
    double lambda_c;  // KL weight on the class part (default 0.2)
    int steps;        // Adam steps per update (default 60)
    double lr;        // Adam step size of the class logits (default 0.1)
    double lr_z;      // gradient-ascent step of the latent mean (scale: lr_z / Z) (default 0.2)
    double min_ess;   // stop when the pool's ESS / M falls under this (default 0.02)
    double optimism;  // reward = mean + optimism * ensemble std (default 0.5)
    float sigma_min, sigma_max; // bounds of the latent scale (default 0.4, 1.0)
    RewardConfig reward;        // the per-user ensemble (features filled by policy_config_default)
} PolicyConfig;

void policy_config_default(PolicyConfig *c, int features);

// The prior sample pool every learner's gradient is estimated on; immutable once built, shared.
typedef struct {
    long n;
    int z_dim, classes, F;
    float *z;       // (n, Z)
    int32_t *y;     // (n) classes (0 when unconditional)
    float *phi;     // (n, F) features
    float *neutral; // (F) their mean: the "neutral frame" ratings compare against
    float *lp0;     // (n) log prior density of each z up to a constant: -|z|^2 / 2
} PolicyPool;

// Allocates a pool for n samples; the caller fills z, y, phi then calls policy_pool_finish.
int policy_pool_alloc(PolicyPool *p, long n, int z_dim, int classes, int F);
void policy_pool_finish(PolicyPool *p);
void policy_pool_free(PolicyPool *p);

// What sampling reads: a policy's parameters and the learning figures. Plain data; copyable by
// policy_params_copy between buffers of the same shape.
typedef struct {
    int z_dim, classes;
    uint32_t version; // feedback events learned from at the last update (0: the prior)
    long feedback;    // feedback events
    long comparisons;
    double accuracy;  // held-out (out-of-bag) accuracy of the reward model, NaN when unknown
    double kl;        // KL of the policy to the prior (latent + class parts), nats
    double ess;       // effective pool fraction at the last update
    float sigma;
    float *mu;        // (Z)
    float *probs;     // (classes)
} PolicyParams;

int policy_params_alloc(PolicyParams *p, int z_dim, int classes);
void policy_params_free(PolicyParams *p);
// Resets to the prior: mu 0, sigma 1, uniform classes, counters 0, accuracy NaN.
void policy_params_prior(PolicyParams *p);
void policy_params_copy(PolicyParams *dst, const PolicyParams *src);
// Draws z (Z) and returns a class (-1 for an unconditional policy).
int policy_sample(const PolicyParams *p, Rng *r, float *z);
// Draws only the class (-1 for an unconditional policy): one uniform from r.
int policy_sample_class(const PolicyParams *p, Rng *r);

// Scratch for updates: one per thread, shared by every learner that thread updates.
typedef struct {
    RewardWorkspace ws;
    long max_comparisons, pool_n;
    float *r, *rstd; // (pool_n) rewards of the pool
    double *lw;      // (pool_n) log weights
} PolicyScratch;

int policy_scratch_init(PolicyScratch *s, const PolicyConfig *c, const PolicyPool *pool,
                        long max_comparisons);
void policy_scratch_free(PolicyScratch *s);

// One user's learner: comparisons (features), reward ensemble, policy.
typedef struct {
    const PolicyConfig *cfg;
    const PolicyPool *pool;
    uint64_t seed;
    long n, cap;        // comparisons held
    long max_comparisons; // the oldest are dropped past this
    float *win, *lose, *weight;
    uint8_t *tie;
    RewardModel rm;
    PolicyParams params;
} Learner;

int learner_init(Learner *l, const PolicyConfig *c, const PolicyPool *pool, uint64_t seed,
                 long max_comparisons);
void learner_free(Learner *l);

// Feedback on frames given by their features (F each). Each adds comparisons and counts one
// feedback event; call learner_update after (one update may follow several events).
int learner_rate(Learner *l, const float *phi, double value);
int learner_pair(Learner *l, const float *winner, const float *loser, int tie);
int learner_choose(Learner *l, const float *chosen, const float *others, long n_others);

// Refits the reward ensemble (w0: the population's weights, or NULL) and re-optimizes the policy
// from the prior; version becomes the feedback count. Returns 0 or a REWARD_E* code (the policy is then unchanged).
int learner_update(Learner *l, PolicyScratch *s, const double *w0);

// The pair among the n candidate pool indices whose outcome the ensemble is least sure of
// (reward_disagreement); writes pool indices to *a and *b. n >= 2.
void learner_pick_pair(const Learner *l, const long *cand, int n, long *a, long *b);

#endif
