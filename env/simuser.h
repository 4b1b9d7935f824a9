// simuser.h — simulated users: a hidden preference over frames, judged by the project's evaluator
// classifier (generator/classifier.h), answered with Bradley–Terry noise, so that the learning
// loop (reward model, policy, baselines) can be tested and measured without people.
//
// Three preferences, each a raw utility r(x) of an image x (1, 32, 32) in [-1, 1]:
//   SIMUSER_LIKES_CLASS   r = log(p_k(x) + 0.01), p_k the evaluator's softmax probability of class
//                         k (the 0.01 floor keeps "clearly not k" frames from differing by tens of
//                         nats over nothing); likes x when the evaluator's arg-max is k, rates
//                         it up (noise aside) when p_k > 0.1: midway, in r, between a frame
//                         surely of class k (r = log 1.01) and one surely not (r = log 0.01).
//   SIMUSER_LIKES_DARK    r = -(mean pixel of x); likes x when r is above the calibration median,
//                         i.e. x is darker than half of the generator's random frames.
//   SIMUSER_LIKES_SAMPLE  r = -|f(x) - f(t)|, f the evaluator's 256 features and t a target image;
//                         likes x when r is above the calibration's (1 - like_quantile) quantile,
//                         i.e. x is nearer t than all but like_quantile of the random frames.
// Scale: at init the raw utilities of n calibration frames (the caller's random samples of the
// generator) give a mean and a standard deviation, and the utility is u = (r - mean) / std: over
// random frames u has mean 0 and std 1, so two random frames differ by about 1.4 (RMS) whatever
// the preference. beta is then a temperature in those units: simuser_compare prefers a with
// P = sigmoid(beta (u(a) - u(b))) (Bradley and Terry 1952), so at the default beta = 2 a pair
// one standard deviation apart is answered "right" 88% of the time.
//
// B batch; images (n, 1, 32, 32) in [-1, 1] as generator_forward writes them. A SimUser borrows a
// loaded Classifier (the caller owns it; many users may share one, NULL is allowed for LIKES_DARK)
// and owns its Rng (seeded by the config: the same seed gives the same answers) and scratch for a
// batch of the classifier's max_B: no call after init allocates. Every call that runs images
// uses the shared classifier, so one thread uses the users of one classifier at a time.
// Errors are KERNELS_E* codes (kernels/kernels.h); nothing exits.
#ifndef ENV_SIMUSER_H
#define ENV_SIMUSER_H

#include <stddef.h>
#include <stdint.h>

#include "generator/classifier.h"
#include "kernels/rng.h"

#define SIMUSER_IMG (CLASSIFIER_IMG * CLASSIFIER_IMG) // pixels of one frame (one channel)
#define SIMUSER_BETA_DEFAULT 2.0f
#define SIMUSER_CLASS_FLOOR 0.01 // added to p_k before the log (LIKES_CLASS)
#define SIMUSER_CLASS_RATE_P 0.1 // p_k at the rating boundary (LIKES_CLASS)
#define SIMUSER_CALIB_MIN 16     // fewest calibration frames init accepts
#define SIMUSER_CALIB_N 512      // what callers are advised to use

typedef enum {
    SIMUSER_LIKES_CLASS,
    SIMUSER_LIKES_DARK,
    SIMUSER_LIKES_SAMPLE,
    SIMUSER_KINDS
} SimUserKind;

typedef struct {
    SimUserKind kind;
    int target_class;          // LIKES_CLASS: k in [0, 10)
    const float *target_image; // LIKES_SAMPLE: (1, 32, 32), read at init only
    float beta;                // > 0, temperature of the noisy answers (in std units of u)
    // LIKES_DARK and LIKES_SAMPLE: the fraction of calibration frames liked, in (0, 1);
    // 0 picks the kind's default (0.5 for dark, 0.1 for sample: about one class in ten).
    float like_quantile;
    uint64_t seed; // of the user's Rng
} SimUserConfig;

typedef struct {
    SimUserConfig cfg; // as given, except target_image (NULL after init) and like_quantile resolved
    Classifier *eval;  // borrowed evaluator (NULL only for LIKES_DARK)
    Rng rng;           // every noisy answer draws from it, one uniform per answer
    float target_feat[CLASSIFIER_FEATURES]; // f(t) (LIKES_SAMPLE)
    double raw_mean, raw_std;               // of r over the calibration frames
    double like_raw;  // r at the like boundary (LIKES_CLASS: at the rating boundary, rate only)
    float like_u;     // the same boundary in units of u: the threshold of simuser_rate
    int max_B;        // scratch size: the classifier's max_B (64 without one)
    double *raw;      // (max_B) scratch raw utilities
    float *u_a, *u_b; // (max_B) scratch utilities of simuser_compare and simuser_rate
} SimUser;

// Fills *cfg with the defaults for kind: target_class 0, no target image, beta
// SIMUSER_BETA_DEFAULT, the kind's like_quantile, seed 1.
void simuser_config_default(SimUserConfig *cfg, SimUserKind kind);

// Builds a user from cfg, calibrating its utility scale and like threshold on calib (n_calib, 1,
// 32, 32), the caller's random generator frames (SIMUSER_CALIB_N advised; at least
// SIMUSER_CALIB_MIN), which are read during init only. eval is borrowed for the user's life.
// Returns 0, KERNELS_EINVAL (bad config, too few or constant calibration frames) or
// KERNELS_ENOMEM with a message in err, or a kernel's code; u is then safe to simuser_free.
int simuser_init(SimUser *u, const SimUserConfig *cfg, Classifier *eval, const float *calib,
                 long n_calib, char *err, size_t errlen);
// Releases what u owns (not the classifier); safe on a zeroed, half-built or already freed struct.
void simuser_free(SimUser *u);

// Writes the utilities u (n) of images (n, 1, 32, 32), max_B at a time through the classifier;
// liked (n, 1 or 0), if not NULL, gets the deterministic "would like it" judgement of each.
// Either output may be NULL. No randomness. Returns 0 or a KERNELS_E* code.
int simuser_utility(SimUser *u, const float *images, long n, float *util, int *liked);
// The deterministic judgement alone (what "satisfied" is counted with): liked (n) gets 1 or 0.
int simuser_likes(SimUser *u, const float *images, long n, int *liked);

// The Bradley–Terry draw on a utility difference du = u(a) - u(b): returns 0 (a preferred) with
// probability sigmoid(beta du), else 1. One uniform from the user's Rng.
int simuser_choice_draw(SimUser *u, double du);
// Answers n pairs: choice[i] = 0 if the user prefers a[i], 1 if b[i] (a, b each (n, 1, 32, 32)),
// one simuser_choice_draw per pair in order. Returns 0 or a KERNELS_E* code (no draw is then
// made for the pairs of the chunk that failed, nor after it).
int simuser_compare(SimUser *u, const float *a, const float *b, long n, int *choice);
// Rates n images: rating[i] = +1 with probability sigmoid(beta (u(x) - like_u)), else -1 (a
// Bradley–Terry comparison against an imaginary frame on the like boundary). Returns 0 or a
// KERNELS_E* code.
int simuser_rate(SimUser *u, const float *images, long n, int *rating);

// The preference's name ("class", "dark", "sample"), or "?" for a value out of range.
const char *simuser_kind_name(SimUserKind kind);

#endif
