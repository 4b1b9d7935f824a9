// gan.h — the SN-GAN training loop (hinge loss, TTUR Adam) and its checkpoints.
//
// One GanTrainer owns a G, a D, their optimizer state, the RNG and the batch buffers, all sized at
// init: gan_step never allocates. Checkpoints hold everything a resumed run needs to continue
// exactly as an uninterrupted one (params, spectral-norm vectors, Adam moments, step, RNG); the
// tensor names are documented in docs/checkpoint.md. One thread uses a trainer at a time.
#ifndef GENERATOR_GAN_H
#define GENERATOR_GAN_H

#include <stddef.h>
#include <stdint.h>

#include "env/fmnist.h"
#include "generator/sagan.h"
#include "kernels/rng.h"

typedef struct {
    float lr_g, lr_d;   // 1e-4, 4e-4 (TTUR, Heusel et al. 2017)
    float beta1, beta2; // 0, 0.9
    float eps;          // 1e-8
    float weight_decay; // 0: plain Adam
    int batch;          // 64
} GanHparams;

void gan_hparams_default(GanHparams *hp);

typedef struct {
    SaganConfig cfg;
    GanHparams hp;
    Generator G;
    Discriminator D;
    Rng rng;       // every random draw of training: data indices, z, fake labels
    long step;     // iterations done
    float loss_d, loss_g; // of the last step
    float *z;      // (B, Z)
    int32_t *y;    // (2B) real labels then fake labels
    float *x;      // (2B, C, H, W) real batch then fake batch: D sees both in one pass
    float *dlogits; // (2B)
    float *dimg;   // (B, C, H, W)
} GanTrainer;

// A fresh trainer: G and D initialized from seed, Adam state zero, step 0.
// Returns 0 or -1 (out of memory; safe to gan_free).
int gan_init(GanTrainer *t, const SaganConfig *cfg, const GanHparams *hp, uint64_t seed);
void gan_free(GanTrainer *t);

// One iteration: a D step on a real batch from data and a fake batch, then a G step.
// data must match the config's image shape (and have labels for a conditional config).
// Returns 0, or a negative KERNELS_E* code from a kernel (the trainer is then unchanged only
// up to that kernel: treat as fatal for this run).
int gan_step(GanTrainer *t, const Dataset *data);

// Writes the whole training state to path (atomically: temp file, fsync, rename).
// Returns 0 or a negative code with a message in err.
int gan_save(const GanTrainer *t, const char *path, char *err, size_t errlen);

// Builds a trainer from a checkpoint written by gan_save: config and hyperparameters from its
// metadata (hp, if not NULL, overrides the learning rates and batch). Every tensor is checked for
// presence, dtype and shape. Returns 0 or a negative code with a message in err (t is then safe
// to gan_free).
int gan_load(GanTrainer *t, const char *path, const GanHparams *hp, char *err, size_t errlen);

// Loads only G (for sampling, evaluation and serving) at batch up to max_B, with its effective
// weights computed. Works on a training checkpoint. Returns 0 or a negative code with err set.
int generator_load(Generator *g, const char *path, int max_B, char *err, size_t errlen);

// The same for D alone (the server's reward features, policy/features.h).
int discriminator_load(Discriminator *d, const char *path, int max_B, char *err, size_t errlen);

// Fills z (n, Z) and, for a conditional model, y (n) from a seed: classes uniform, or all equal
// to fixed_class when it is >= 0. The draw is the same for a given seed whatever the batch size.
void gan_sample_latents(const SaganConfig *cfg, uint64_t seed, long n, int fixed_class, float *z,
                        int32_t *y);

#endif
