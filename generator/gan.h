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

#include "generator/data/fmnist.h"
#include "generator/sagan.h"
#include "kernels/rng.h"

// Hyperparameters and training techniques of a run. Every field has a key of gan_hparams_set
// (the same name), is written to the checkpoint metadata under that key, and is read back on
// resume; docs/training.md ("Techniques") lists them with the papers. The defaults reproduce the
// plain SN-GAN of DESIGN.md bit for bit.
typedef struct {
    float lr_g, lr_d;   // 1e-4, 4e-4 (TTUR, Heusel et al. 2017)
    float beta1, beta2; // 0, 0.9
    float eps;          // 1e-8
    float weight_decay_g, weight_decay_d; // 0: plain Adam; else AdamW's decoupled decay
    int batch;          // 64
    int sn_g, sn_d;     // 1: spectral norm on G's / D's weights; 0: raw weights
    float r1_gamma;     // 0: off; R1 penalty gamma/2 E||grad_x D(x)||^2 at real x
    float gp_lambda;    // 0: off; WGAN-GP lambda E(||grad_x D(x_hat)|| - 1)^2 at interpolates
    int penalty_every;  // 1: R1/GP every step; N: every N steps with weight x N (lazy)
    float penalty_fd_step; // 0.1: image-space length of the finite-difference step of R1/GP
    float ortho_beta;   // 0: off; BigGAN orthogonal regularization on G's weights
    float l1_act;       // 0: off; lambda * mean|a| on each of G's block outputs
    float d_dropout;    // 0: off; dropout rate on D's features before its last layer
    float ema_decay;    // 0: off; EMA of G's weights (e.g. 0.999)
    long ema_start;     // 0: the EMA copies G until this many steps are done, then averages
    int freeze_d;       // 0: off; k: D's first k layers are not updated (FreezeD)
    // Progressive growing (PGGAN, Karras et al. 2018), off while prog_stable is 0: training starts
    // at resolution prog_from (8) for prog_stable steps, then each next resolution fades in over
    // prog_fade steps and trains prog_stable steps, up to the model's; the model then needs its
    // progressive layers (SaganConfig.prog: gan_init adds them). gan_prog_level says where a step is.
    long prog_stable;   // 0: off
    long prog_fade;     // steps of each fade-in (0: a new resolution starts at once)
    int prog_from;      // 8: first resolution (a power of two in [8, img])
} GanHparams;

void gan_hparams_default(GanHparams *hp);

// Sets one hyperparameter from strings (a worker's spec, `steer train --set key=value`, a
// checkpoint's metadata). Keys are gan_hparams_key's; booleans take 1/0/true/false/on/off/yes/no;
// "weight_decay" sets both networks'. Returns 0, or -1 with a message in err for an unknown key
// or a value that does not parse or is out of range (hp is then unchanged).
int gan_hparams_set(GanHparams *hp, const char *key, const char *value, char *err, size_t errlen);
// Formats hp's value for key into buf (as the checkpoint stores it). Returns 0 or -1 (unknown).
int gan_hparams_get(const GanHparams *hp, const char *key, char *buf, size_t len);
// The i-th key gan_hparams_set knows (aliases excluded), with a one-line description in *help
// (if not NULL); NULL past the last.
const char *gan_hparams_key(int i, const char **help);
// Checks the switches against each other: progressive growing does not go with R1/WGAN-GP (their
// double backward holds D's full-resolution pattern) or FreezeD (which counts full-size layers).
// Returns 0, or -1 with a message in err.
int gan_hparams_check(const GanHparams *hp, char *err, size_t errlen);
// The progressive level (1..n_stages, resolution 4 << level) and fade-in alpha in (0, 1] of a
// model with n_stages stages after step steps; level n_stages, alpha 1 when growing is off.
void gan_prog_level(const GanHparams *hp, int n_stages, long step, int *level, float *alpha);
// Steps until the schedule reaches the full resolution (0 when off).
long gan_prog_steps(const GanHparams *hp, int n_stages);
// Reads the hyperparameters recorded in a checkpoint's metadata (keys absent from older
// checkpoints keep their defaults). Returns 0 or a negative code with a message in err.
int gan_hparams_load(GanHparams *hp, const char *path, char *err, size_t errlen);

// Scratch of the gradient penalties for batches up to B (see gan_penalty_backward).
typedef struct {
    float *grad;  // (B, C, H, W) grad_x D at the penalty points
    float *x2;    // (2B, C, H, W) the points moved forward, then backward, along grad
    float *x_hat; // (B, C, H, W) WGAN-GP's interpolates
    float *dout;  // (2B)
    int32_t *y2;  // (2B)
    float *pattern; // (2B, discriminator_pattern_floats) D's LReLU pattern at the points, twice
    int max_B;
} GanPenaltyBuffers;

typedef struct {
    SaganConfig cfg;
    GanHparams hp;
    Generator G;
    Discriminator D;
    Rng rng;       // every random draw of training: data indices, z, fake labels, GP's mixes
    long step;     // iterations done
    float loss_d, loss_g; // of the last step: the hinge losses alone
    float penalty_d;      // of the last step: weighted R1 + GP (0 when off or not due)
    float reg_g;          // of the last step: weighted orthogonal + L1 activation terms of G
    float *z;      // (B, Z)
    int32_t *y;    // (2B) real labels then fake labels
    float *x;      // (2B, C, H, W) real batch then fake batch: D sees both in one pass
    float *dlogits; // (2B)
    float *dimg;   // (B, C, H, W)
    GanPenaltyBuffers pen;
    float *ortho_scratch; // the largest ortho_scratch_floats of G's weights
    // EMA of G (Yazici et al. 2019), in G's parameter layout: raw weights, and for SN weights
    // their own power-iteration vectors (one iteration per update on the averaged weights).
    float *ema;        // (G.ps.total)
    float *ema_u, *ema_v; // (G.ps.u_total), (G.ps.v_total)
    float *ema_w_sn;   // (G.ps.total) scratch for the power iteration
    int ema_live;      // the EMA buffers follow G (0 after a step with the EMA off: restart)
    // Progressive growing: the real batch at full size and two scratch buffers for pooling it
    // (only with cfg.prog); the level and fade-in of the last step.
    float *real, *pool_a, *pool_b;
    int level;
    float alpha;
    // Data parallel (generator/dist.h): dp_size processes share each step's batch of hp.batch;
    // this one takes images [dp_rank * b, (dp_rank + 1) * b) with b = hp.batch / dp_size. Every
    // process draws the whole batch's random numbers (so the RNGs stay equal) and keeps its slice;
    // grad_reduce(reduce_ctx, grads, n) replaces each network's gradient by the mean over the
    // processes before the optimizer step. dp_size 1 (gan_init's): one process, no reduce. The
    // losses reported are this process's, averaged by grad_reduce too.
    int dp_rank, dp_size;
    int (*grad_reduce)(void *ctx, float *grads, long n);
    void *reduce_ctx;
} GanTrainer;

// A fresh trainer: G and D initialized from seed, Adam state zero, step 0. With progressive
// growing on in hp, the model gets its progressive layers (t->cfg.prog = 1).
// Returns 0 or -1 (out of memory; safe to gan_free).
int gan_init(GanTrainer *t, const SaganConfig *cfg, const GanHparams *hp, uint64_t seed);
void gan_free(GanTrainer *t);

// One iteration: a D step on a real batch from data and a fake batch (plus R1/GP when on), then
// a G step (plus the orthogonal and L1 terms when on), then the EMA update when on. The
// techniques are read from t->hp at each step. data must match the config's image shape (and
// have labels for a conditional config).
// Returns 0, or a negative KERNELS_E* code from a kernel (the trainer is then unchanged only
// up to that kernel: treat as fatal for this run).
int gan_step(GanTrainer *t, const Dataset *data);
// Pushes the switches of t->hp into the networks: SN on or off, G's L1 penalty, D's dropout, and
// which D parameters FreezeD freezes (Param.frozen). Every step calls it (gan_cuda_step too).
void gan_apply_switches(GanTrainer *t);
// Progressive growing: the real batch in t->real (B, C, img, img) brought down to resolution R
// into out: 2x2 average pools, and while R fades in the blend alpha x_R + (1 - alpha)
// upsample(avgpool(x_R)), what G makes at that point (PGGAN fades the real images in as it fades
// in G's layer). Uses t's pooling scratch.
void gan_real_at_level(GanTrainer *t, float *out, int B, int R, float alpha);
// Whether G's parameter i is one orthogonal regularization acts on: its convolutions and linear
// layers (not biases, gamma or the class embedding).
int generator_is_ortho(const Generator *g, int i);

// The two halves of gan_step, for training loops with their own G step (fine-tuning on users,
// distillation: generator/finetune.h, generator/distill.h): gan_d_step is gan_step's D step (with R1/GP
// when on; it draws from t->rng exactly as gan_step does); after its own G update the caller calls
// gan_g_step_done, which counts the step and updates the EMA of G when on.
int gan_d_step(GanTrainer *t, const Dataset *data);
void gan_g_step_done(GanTrainer *t);

// Writes the whole training state to path (atomically: temp file, fsync, rename).
// Returns 0 or a negative code with a message in err.
int gan_save(const GanTrainer *t, const char *path, char *err, size_t errlen);

// Builds a trainer from a checkpoint written by gan_save: config and hyperparameters from its
// metadata (hp, if not NULL, replaces all of them: start it from gan_hparams_load to change only
// some). Every tensor is checked for presence, dtype and shape. The EMA weights are restored when
// the file has them, else started from G. Returns 0 or a negative code with a message in err (t
// is then safe to gan_free).
int gan_load(GanTrainer *t, const char *path, const GanHparams *hp, char *err, size_t errlen);

// Loads only G (for sampling, evaluation and serving) at batch up to max_B, with its effective
// weights computed. Works on a training checkpoint; takes the EMA weights (G_ema.*) when the file
// has them. Returns 0 or a negative code with err set.
int generator_load(Generator *g, const char *path, int max_B, char *err, size_t errlen);

// The same with a choice of weights: GAN_WEIGHTS_AUTO (generator_load's), GAN_WEIGHTS_RAW (the
// trained G.* even when an EMA is present) or GAN_WEIGHTS_EMA (an error if the file has none).
enum { GAN_WEIGHTS_AUTO, GAN_WEIGHTS_RAW, GAN_WEIGHTS_EMA };
int generator_load_weights(Generator *g, const char *path, int max_B, int which, char *err,
                           size_t errlen);

// The same for D alone (the server's reward features, policy/features.h).
int discriminator_load(Discriminator *d, const char *path, int max_B, char *err, size_t errlen);

// Gradient penalties on D (finite-difference double backward). kind GAN_PENALTY_R1:
// P = 1/2 mean_b ||g_b||^2 with g_b = grad_x D(x_b) (Mescheder et al. 2018, eq. 9, weight gamma);
// GAN_PENALTY_GP: P = mean_b (||g_b|| - 1)^2 (Gulrajani et al. 2017, eq. 3, weight lambda), x then
// being the interpolates. Adds weight * grad_theta P to D's gradient slots (where
// discriminator_backward accumulates: call paramset_sn_backward after) and sets *value to
// weight * P. grad_theta (1/2 ||g_b||^2) = grad_theta (g_b . grad_x D(x_b)) with g_b held fixed,
// the directional derivative of grad_theta D along g_b, is taken as a central difference of two
// passes of D at x_b +- (fd_step / ||g_b||) g_b (one batch of 2B: D needs max_B >= 2B) with D's
// LReLU slopes held at those of x_b, which gives the gradient autograd's double backward gives
// (LReLU's second derivative taken as 0) up to O(fd_step^2) from attention's curvature and float
// rounding. D runs without dropout here. x (B, C, H, W), y (B) or NULL; pb from
// gan_penalty_buffers_init for this D and at least B. Returns 0 or a KERNELS_E* code.
typedef enum { GAN_PENALTY_R1, GAN_PENALTY_GP } GanPenaltyKind;
// Returns 0 or -1 (out of memory; safe to free).
int gan_penalty_buffers_init(GanPenaltyBuffers *pb, const Discriminator *d, int B);
void gan_penalty_buffers_free(GanPenaltyBuffers *pb);
int gan_penalty_backward(Discriminator *d, GanPenaltyBuffers *pb, GanPenaltyKind kind,
                         float weight, float fd_step, const float *x, const int32_t *y, int B,
                         double *value);

// Fills z (n, Z) and, for a conditional model, y (n) from a seed: classes uniform, or all equal
// to fixed_class when it is >= 0. The draw is the same for a given seed whatever the batch size.
void gan_sample_latents(const SaganConfig *cfg, uint64_t seed, long n, int fixed_class, float *z,
                        int32_t *y);

#endif
