// frame_reward.h — a fitted linear Bradley–Terry score over frame features (policy/features.h)
// turned into a reward a generator can be trained toward: the probability that users prefer a
// frame to the average one,
//
//   reward(x, y) = sigma(w . phi(x, y) - r0),   r0 = w . phi(average frame),
//
// with its gradient back to D's last maps (phi is linear in their pooled, standardized channels),
// so dreward/dx is one backward pass through the frozen D. It is what fine-tuning G on the users'
// feedback pulls toward (generator/finetune.h): frame_reward_finetune hands it over through that
// small interface. The weights come from whoever fitted them (the server's population model,
// server/learn.h, learn_reward_init; a test's own). One thread uses a FrameReward at a time.
#ifndef POLICY_FRAME_REWARD_H
#define POLICY_FRAME_REWARD_H

#include <stddef.h>
#include <stdint.h>

#include "generator/finetune.h"
#include "policy/features.h"

typedef struct {
    Features *f;  // the features (and their D); not owned
    double *w;    // (F) the score's weights, zero until the owner sets them
    double r0;    // w . the average frame's features
    float *phi;   // scratch (max_B, F)
    float *dmaps; // scratch (max_B, D's feature size) for the gradient
} FrameReward;

// Sizes the weights and scratch for f (its max_B). Returns 0 or KERNELS_ENOMEM (then safe to
// free).
int frame_reward_init(FrameReward *r, Features *f);
void frame_reward_free(FrameReward *r);

// rewards (B <= max_B) of frames whose D maps are maps (B, D's feature size) and classes y (B, or
// NULL when unconditional); with dmaps, dmaps receives d(-beta mean_b log reward_b) / d maps.
// Returns 0 or KERNELS_EINVAL (B too large).
int frame_reward_score(FrameReward *r, const float *maps, const int32_t *y, int B, double beta,
                       double *reward, float *dmaps);

// The interface fine-tuning takes (generator/finetune.h), backed by r (which must outlive it).
FinetuneReward frame_reward_finetune(FrameReward *r);

#endif
