// reward.h — a per-user reward model learned from pairwise choices: Bradley–Terry (Bradley and
// Terry 1952) on a linear score r(x) = w . phi(x) of a feature vector phi(x) (F) the caller
// supplies (discriminator or evaluator features of a frame), as an ensemble of K members so that
// it knows what it does not know.
//
// Each member minimizes the weighted BT negative log-likelihood of its own bootstrap resample of
// the comparisons plus (lambda / 2) |w - a_k|^2, where the anchor a_k = w0 + anchor_scale eps_k is
// the caller's prior (population) weight w0 plus fixed member noise ("anchored ensembles", Pearce
// et al. 2018; randomized priors, Osband et al. 2018). With no data the members spread around w0;
// data pull them together where it speaks, so the ensemble std of r(x) and the members'
// disagreement on P(a > b) shrink near the data and stay wide away from it.
//
// Two structs, kept apart as llama2.c keeps weights from run state: a RewardModel (K x F weights,
// what predict reads; one per user) and a RewardWorkspace (the fit's scratch, sized once for the
// largest F and comparison count; one per fitting thread, shared by every user it fits). Nothing
// allocates after init. Readers (predict, disagreement, accuracy) take a const model and may run
// on any number of threads at once; reward_fit writes the model and the workspace, so the caller
// keeps readers off a model while it is being fitted (fit into a second model and swap).
#ifndef POLICY_REWARD_H
#define POLICY_REWARD_H

#include <stdint.h>

#define REWARD_ERRNO_MAP(X)                                                                        \
    X(EINVAL, -1, "invalid argument")                                                              \
    X(ENOMEM, -2, "out of memory")                                                                 \
    X(ETOOMANY, -3, "more comparisons or features than the workspace was sized for")               \
    X(ENONFINITE, -4, "features, weights or prior hold a NaN or infinity")                         \
    X(ELAPACK, -5, "Cholesky factorization failed")

enum {
#define X(name, code, msg) REWARD_##name = code,
    REWARD_ERRNO_MAP(X)
#undef X
};

// A static string for a REWARD_E* code (never NULL).
const char *reward_strerror(int code);

// Which linear system a Newton step solves: the F x F primal Hessian, or the N x N dual one
// (Woodbury), cheaper while there are fewer comparisons than features. AUTO picks dual while
// N <= F; DUAL falls back to primal when N > F.
typedef enum { REWARD_SOLVER_AUTO, REWARD_SOLVER_PRIMAL, REWARD_SOLVER_DUAL } RewardSolver;

// The blueprint; reward_config_default fills the defaults named here.
typedef struct {
    int features;          // F, 1..REWARD_MAX_FEATURES
    int members;           // K ensemble members, 1..REWARD_MAX_MEMBERS (default 5)
    double prior_strength; // lambda > 0: L2 pull toward each member's anchor (default 1)
    double anchor_scale;   // std of the member anchors around w0, >= 0 (default 1, the prior's own
                           // std 1 / sqrt(lambda) at the default lambda; 0 makes every anchor w0)
    int bootstrap;         // nonzero: each member fits a bootstrap resample (default 1)
    int newton_steps;      // most damped Newton steps per member (default 20; 5 to 8 are typical)
    RewardSolver solver;   // default AUTO
    uint64_t seed;         // anchors and resamples; the same seed and data give the same model
} RewardConfig;

#define REWARD_MAX_FEATURES 4096
#define REWARD_MAX_MEMBERS 64

void reward_config_default(RewardConfig *c, int features);

// A per-user model. Owned by the caller; released by reward_free.
typedef struct {
    RewardConfig config;
    double *weights;      // (K, F) member weights
    double *mean_weights; // (F) their mean: the ensemble-mean reward is mean_weights . phi
    double *anchor_noise; // (K, F) eps_k, drawn once at init from config.seed, centred over k
    long comparisons;     // how many the last fit saw (0 before any fit)
    // Held-out accuracy of the last fit: each decisive comparison scored by the mean of the
    // members whose bootstrap resample left it out (out of bag, Breiman 1996), the fraction
    // scored right; NaN when none was left out (or bootstrap is off). oob_comparisons: how many.
    double oob_accuracy;
    long oob_comparisons;
} RewardModel;

// Allocates m for c (copied) and sets every member to w = w0 = 0 plus its anchor noise, i.e. what
// reward_fit gives with no data and no prior. Returns 0, or REWARD_EINVAL / REWARD_ENOMEM with m
// left safe to free.
int reward_init(RewardModel *m, const RewardConfig *c);
// Releases what m owns and zeroes it; safe on a zeroed, half-built or already freed model.
void reward_free(RewardModel *m);

// Fit scratch for up to max_comparisons comparisons of up to max_features features.
typedef struct {
    int max_features;
    long max_comparisons;
    double *diff;    // (N, F) phi(winner) - phi(loser)
    double *target;  // (N) 1 for a win, 1/2 for a tie
    double *cweight; // (N) the caller's weight of each comparison
    double *mweight; // (N) cweight times this member's bootstrap count
    double *score;   // (N) w . diff
    double *curv;    // (N) mweight sigma (1 - sigma), the Hessian's diagonal weights
    double *rows;    // (N, F) primal: sqrt(curv) diff
    double *hess;    // (F, F) primal Hessian, or (N, N) dual system (dual runs only while N <= F)
    double *gram;    // (min(N, F), min(N, F)) dual: diff diff^T
    double *vec;     // (max(N, F)) scratch
    double *anchor;  // (F) this member's anchor
    double *grad;    // (F)
    double *step;    // (F)
    double *trial;   // (F) w + t step during the line search
    int *count;      // (N) bootstrap counts
    double *oob_score; // (N) summed scores of the members that left each comparison out
    int *oob_n;        // (N) how many members did
} RewardWorkspace;

// Allocates ws. Returns 0, or REWARD_EINVAL / REWARD_ENOMEM with ws left safe to free.
int reward_workspace_init(RewardWorkspace *ws, int max_features, long max_comparisons);
// Releases what ws owns and zeroes it; safe on a zeroed, half-built or already freed workspace.
void reward_workspace_free(RewardWorkspace *ws);

// Comparisons in the caller's memory; nothing here is kept after a call returns.
typedef struct {
    long n;              // number of comparisons
    const float *winner; // (n, F) phi of the frame chosen (of either frame, for a tie)
    const float *loser;  // (n, F) phi of the other
    const float *weight; // (n) each > 0, or NULL for all 1
    const uint8_t *tie;  // (n) nonzero = "can't tell", half a win each way; NULL for no ties
} RewardComparisons;

// Retrains every member of m from scratch on data, each toward its anchor w0 + anchor_scale eps_k
// (w0 (F) is the caller's prior or population weight, NULL for zero). Deterministic in
// (m->config, w0, data). Allocates nothing: ws must fit F and data->n. Cost, damped Newton in
// double through OpenBLAS and LAPACK (5 to 10 steps a member): per step O(N F^2 + F^3) primal or
// O(N^3 + N F) dual, plus O(N^2 F) once. Measured by test_reward on one shared core: about 8 ms
// for F = 256, N = 200, K = 5 (dual); 0.15 to 0.4 s at N = 1000 to 2000 (primal), so the server
// fits on a worker, never on the loop thread. Returns 0, or REWARD_EINVAL, REWARD_ETOOMANY,
// REWARD_ENONFINITE (m unchanged) or REWARD_ELAPACK (m partly refitted: refit or discard it).
// Single-threaded in m and ws.
int reward_fit(RewardModel *m, RewardWorkspace *ws, const double *w0,
               const RewardComparisons *data);

// For each of n feature rows x (n, F): mean[i] and std[i] (sample std, K - 1; 0 when K = 1) of the
// members' rewards. Either output may be NULL.
void reward_predict(const RewardModel *m, const float *x, long n, float *mean, float *std);

// How much the members disagree on P(a > b): the sample std over members of
// sigma(r_k(a) - r_k(b)). a and b are (F). If p_mean is not NULL it receives the ensemble-mean
// probability. Active queries ask the pair where this is largest.
double reward_disagreement(const RewardModel *m, const float *a, const float *b, double *p_mean);

// The fraction of data's decisive (non-tie) comparisons whose winner gets the higher
// ensemble-mean reward (an exact tie in reward counts half). NaN when there are none.
double reward_accuracy(const RewardModel *m, const RewardComparisons *data);

// The objective one member minimizes, exposed for its finite-difference test, on raw arrays in
// llm.c's argument order: with s_i = w . diff_i,
//   L(w) = sum_i mweight_i [softplus(s_i) - target_i s_i] + (lambda / 2) |w - anchor|^2
// (softplus(s) - y s = -y log sigma(s) - (1 - y) log sigma(-s)). diff (n, F), target, mweight (n),
// w, anchor (F). score (n) receives s (saved for backward).
double reward_loss_forward(double *score, const double *w, const double *diff, const double *target,
                           const double *mweight, const double *anchor, double lambda, long n,
                           int F);
// dw (F) += dL/dw at the w whose scores forward saved. The caller zeroes dw.
void reward_loss_backward(double *dw, const double *score, const double *w, const double *diff,
                          const double *target, const double *mweight, const double *anchor,
                          double lambda, long n, int F);

#endif
