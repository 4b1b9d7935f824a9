// learn.h — the learning thread: every stored feedback reaches its user's learner
// (policy/policy.h), which refits the user's reward ensemble and policy and publishes the new
// policy to the loop thread, which draws that user's next frames from it.
//
// At open, a pool of prior frames is drawn and its reward features computed (policy/features.h),
// and every learner is rebuilt from the store (the feedback table, in id order): a policy is a
// deterministic function of its user's comparisons, so the same user is steered the same way
// after a restart. Then the thread starts.
//
// Threads: learn_submit and learn_take are called by the loop thread; the learning thread owns the
// learners, its own G (to turn a stored latent back into a frame) and D (features), and runs with
// one OpenMP thread so that it does not fight the generation thread for the cores. Feedback is
// drained in batches: several events of one user cost one update.
#ifndef SERVER_LEARN_H
#define SERVER_LEARN_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "generator/sagan.h"
#include "policy/features.h"
#include "policy/frame_reward.h"
#include "policy/policy.h"
#include "server/store.h"

#define LEARN_PAIRS 4 // actively chosen pairs a snapshot carries for pair mode
#define LEARN_MODELS 4 // generators of other model versions kept to redraw their frames

// A published policy of one user, for the loop thread; user "" is the population's, which users
// without feedback of their own draw from.
typedef struct LearnSnap {
    struct LearnSnap *next;
    char user[65];
    PolicyParams params;
    int n_pairs;
    long pairs[2 * LEARN_PAIRS]; // pool indices (a, b) of the pairs the ensemble is least sure of
    double t_first;              // receipt time (clock_now_s) of the oldest feedback it includes
    double update_s;             // seconds the update itself took
} LearnSnap;

typedef struct LearnUser {
    char user[65];
    Learner learner;
    double t_first; // oldest feedback not yet in a published update (0: none)
    int dirty;
} LearnUser;

typedef struct {
    PolicyConfig pc;
    PolicyPool pool; // immutable once open: the loop reads pool.z / pool.y for active pairs
    Features feat;
    Generator g;
    PolicyScratch scratch;
    long max_comparisons;
    float *phi;   // (LEARN_CHUNK, F) features of a chunk of feedback frames
    float *z;     // (LEARN_CHUNK, Z) their latents
    int32_t *cls; // (LEARN_CHUNK) their classes
    uint64_t *ver; // (LEARN_CHUNK) the model version that drew each
    float *img;   // (LEARN_CHUNK, C, H, W) the frames, drawn again
    // generators of other model versions (a hot swap's), loaded from the registry when their
    // frames come back in feedback; base_version is the one learning opened with
    uint64_t base_version;
    char db_path[4096];
    Generator *models[LEARN_MODELS];
    uint64_t model_version[LEARN_MODELS];
    int n_models, warned_version;
    LearnUser **users;
    int n_users, cap_users;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    StoreItem *in_head, *in_tail;
    LearnSnap *out_head, *out_tail;
    uv_async_t *async;
    int stop, started, locks_ready;
    // the population model: one learner on every user's comparisons, refitted every pop_every
    // stored feedback (0: off); its mean weights (w0, once have_w0) are every user's prior
    Learner pop;
    long pop_every, pop_seen;
    double *w0;
    int pop_ready, have_w0;
    // figures for /metrics (under lock)
    uint64_t updates, events, failures, pop_refits;
    long pop_comparisons;
    double pop_accuracy;
    double rebuild_s;
    long rebuilt_events, rebuild_failures;
} Learn;

// Builds the pool (pool_n frames, seeded) with G and D of ckpt (model version `version`; frames of
// other versions are redrawn with their own G, found in the store's registry), rebuilds every
// user's learner (and
// the population model, refitted every pop_every feedback; 0 = none) from the store at db_path (if
// it exists), queues their policies for learn_take, and starts the thread. Returns 0 or -1 with err
// set (nothing left running; learn_close is still safe).
int learn_open(Learn *l, const char *ckpt, uint64_t version, const char *db_path, long pool_n,
               long pop_every, uv_async_t *async, char *err, size_t errlen);
// What learn_open does before it starts the thread: the pool, and every learner (and the
// population, which holds every user's latest comparisons) rebuilt from the store. For a tool that
// needs the learned reward without serving (the fine-tuning worker); learn_close frees it.
int learn_load(Learn *l, const char *ckpt, uint64_t version, const char *db_path, long pool_n,
               long pop_every, char *err, size_t errlen);
// Hands a stored (not duplicate) feedback item to the thread, which frees it.
void learn_submit(Learn *l, StoreItem *item);
// Takes every published policy, oldest first; free each with learn_snap_free.
LearnSnap *learn_take(Learn *l);
void learn_snap_free(LearnSnap *s);
// Stops the thread and frees everything. Safe on a half-opened Learn.
void learn_close(Learn *l);

// The users' reward a finetune job pulls G toward: the population model rebuilt from the store
// at db_path (learn_load, with the features of ckpt's D: the same pool and calibration as the
// server's learning thread), refitted once on every comparison it holds; its mean weights w give
// reward(x, y) = sigma(w . phi(x, y) - w . phi(average pool frame)) (policy/frame_reward.h).
typedef struct {
    Learn learn;
    FrameReward reward;
    long comparisons;
    double accuracy; // held-out accuracy of the population's reward model
} LearnReward;

// Fails (-1, err) when the store holds no feedback. learn_reward_free is safe after a failure.
int learn_reward_init(LearnReward *r, const char *ckpt, const char *db_path, char *err,
                      size_t errlen);
void learn_reward_free(LearnReward *r);

#endif
