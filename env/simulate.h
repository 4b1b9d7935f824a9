// simulate.h — simulated users steering generation in-process: the project's policy learner
// (policy/policy.h) against two baselines, counting the feedback events until the user is
// satisfied (at least satisfied_frac of the next check_n frames the method would show are liked,
// simuser_likes), as issue 4 measures it.
//
// Every method shows one frame at a time and gets one rating (+1 / -1, simuser_rate) per frame,
// the thumbs up/down of the browser's gallery: one feedback event each.
//   policy     the server's learner: each rating refits the user's reward ensemble and policy,
//              and the next frame is drawn from the new policy.
//   random     frames from the prior, whatever the answers (a floor: it never learns).
//   evolution  interactive evolution in the manner of Deep Interactive Evolution (Bontrager et al.
//              2018): a population of `population` frames is rated; the liked become parents
//              (kept, not re-rated), the rest of the next generation are their children (uniform
//              crossover of two parents' latents, Gaussian mutation, the class of one parent,
//              re-drawn with probability class_mutation); with no parent the generation is drawn
//              afresh. Its "next frames" for satisfaction are children of the current parents.
// Satisfaction is checked after every event (evolution: after every generation) on fresh draws of
// the method's distribution, which the user does not rate and which are not counted.
#ifndef ENV_SIMULATE_H
#define ENV_SIMULATE_H

#include <stddef.h>
#include <stdint.h>

#include "env/simuser.h"
#include "generator/classifier.h"
#include "generator/sagan.h"
#include "policy/features.h"
#include "policy/policy.h"

typedef enum { SIM_POLICY, SIM_RANDOM, SIM_EVOLUTION, SIM_METHODS } SimMethod;

typedef struct {
    SimMethod method;
    long budget;          // most feedback events (default 100)
    int check_n;          // frames of a satisfaction check (default 50)
    double satisfied_frac;  // default 0.8
    int population;       // evolution (default 8)
    float mutation;       // evolution: std of the latent mutation (default 0.3)
    float class_mutation; // evolution: chance a child's class is re-drawn (default 0.1)
    uint64_t seed;        // of the method's draws
} SimConfig;

void sim_config_default(SimConfig *c, SimMethod m);
const char *sim_method_name(SimMethod m);
int sim_method_parse(const char *s, SimMethod *m);

typedef struct {
    int satisfied;
    long events;       // feedback events given (to satisfaction, or the budget)
    double liked_frac; // of the last satisfaction check
    double update_ms;  // policy: mean time of one learner update
} SimResult;

// What every simulated user shares: G, D features, the evaluator, the prior pool, the policy
// configuration and update scratch. One thread.
typedef struct {
    Generator g;
    Features feat;
    Classifier eval;
    PolicyConfig pc;
    PolicyPool pool;
    PolicyScratch scratch;
    float *pool_img;  // (pool_n, 1, 32, 32) the pool's frames (calibration of users)
    long max_comparisons;
    int max_B;
    float *img;       // (max_B, ...) scratch frames
    float *z;         // (max_B, Z)
    int32_t *y;       // (max_B)
    float *phi;       // (max_B, F)
} SimWorld;

// Loads G and D from gen_ckpt, the evaluator from eval_ckpt, and builds a pool of pool_n prior
// frames (seeded). Returns 0 or a negative code with err set (w then safe to sim_world_free).
int sim_world_init(SimWorld *w, const char *gen_ckpt, const char *eval_ckpt, long pool_n,
                   uint64_t seed, char *err, size_t errlen);
void sim_world_free(SimWorld *w);

// Renders n (z, y) into w->img and, when phi is not NULL, their features. n <= w->max_B.
int sim_render(SimWorld *w, const float *z, const int32_t *y, int n, float *phi);

// Runs one simulated user u with method c->method. Returns 0 or a negative code.
int sim_run(SimWorld *w, SimUser *u, const SimConfig *c, SimResult *out);

// The same through a running steer server at url (ws://host:port/): a WebSocket session as the
// user c->seed, a gallery stream, a `rate` feedback per frame; the server's policy does the
// learning and satisfaction is judged on the next check_n frames it streams (not rated).
// Returns 0 or -1 with err set.
int sim_run_server(SimWorld *w, SimUser *u, const SimConfig *c, const char *url, SimResult *out,
                   char *err, size_t errlen);

#endif
