// features.h — what the reward model sees of a frame: the discriminator's last feature map,
// averaged over its 4 x 4 positions (one value per channel), standardized on the population pool
// and scaled, followed by the frame's class as a one-hot (conditional models).
//
// D was trained to tell real Fashion-MNIST from G's frames, so its last features carry shape,
// brightness, texture and class evidence: a linear Bradley–Terry score over them (policy/reward.h)
// can express "likes dark", "likes class k" or "likes things like this" without another network.
// The class one-hot is there because for a conditional model the class is half of what the policy
// chooses: a reward term per class lets one comparison speak for every frame of that class.
//
// phi(x, y) = [ d_scale / sqrt(Dc) * (pool(D_feat(x)) - mean) / std  (Dc values),
//               class_scale * onehot(y)                               (classes values) ]
// mean and std come from features_calibrate (the policy's pool of prior samples), so over random
// frames the image part has unit variance per channel and norm about d_scale.
//
// A Features owns its discriminator (loaded from the serving checkpoint) and scratch for max_B
// frames; one thread uses it at a time. Errors are KERNELS_E* codes.
#ifndef POLICY_FEATURES_H
#define POLICY_FEATURES_H

#include <stddef.h>
#include <stdint.h>

#include "generator/sagan.h"

#define FEATURES_D_SCALE 2.0f
#define FEATURES_CLASS_SCALE 2.0f

typedef struct {
    Discriminator d;
    int max_B;
    int d_ch;          // Dc: channels of D's last map
    int classes;       // 0 for an unconditional model
    int F;             // Dc + classes
    float d_scale, class_scale;
    float *mean, *istd; // (Dc) standardization (0 and 1 until calibrated)
} Features;

// Loads D from a checkpoint for batches up to max_B. Returns 0 or a negative code with err set
// (f is then safe to features_free).
int features_init(Features *f, const char *ckpt, int max_B, char *err, size_t errlen);
void features_free(Features *f);

// phi (n, F) of images (n, C, H, W) in [-1, 1] with classes y (n; NULL when unconditional).
int features_compute(Features *f, const float *images, const int32_t *y, long n, float *phi);

// phi (B, F) from D's last maps feat (B, D's feature size; what discriminator_features returns
// after a forward of the frames, computed elsewhere: the GPU) and their classes y (B) or NULL.
void features_from_maps(const Features *f, const float *feat, const int32_t *y, int B,
                        float *phi);

// Sets mean and std of the pooled channels from n images (n >= 2). Returns 0 or a code.
int features_calibrate(Features *f, const float *images, const int32_t *y, long n);

#endif
