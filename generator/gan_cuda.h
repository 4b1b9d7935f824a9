// gan_cuda.h — gan_step on a GPU: the whole SN-GAN training step with its techniques (the CUDA
// build: make CUDA=1).
//
// A GanCuda holds a device copy of a GanTrainer's training state (G's and D's raw parameters,
// gradients, Adam moments, spectral-norm vectors and effective weights, in the ParamSet layout of
// the host trainer, so each buffer moves with one copy) and the device activations of G (forward
// and backward on B images) and D (forward and backward on 2B), for the trainer's batch B. Between
// gan_cuda_init and gan_cuda_download the device copy is the truth; the host trainer keeps what
// the GPU does not need (its RNG, step count and losses, which gan_cuda_step updates on the host;
// the batch's random draws are made there, exactly as gan_step makes them). One thread uses a
// GanCuda at a time.
//
// Covered: every switch of GanHparams, as gan.c does it: any learning rates, betas, epsilon and
// batch, hinge loss and Adam, SN on or off on either network, AdamW's weight decay, FreezeD, G's
// EMA, R1 and WGAN-GP (the finite-difference double backward, lazily every penalty_every steps),
// orthogonal regularization, the L1 activation penalty, dropout in D (the CPU's masks, drawn on
// the device from the same seeds) and progressive growing (each step at the schedule's level and
// fade, the real batch pooled and blended on the host), with or without classes, in one process
// or data parallel (dp_size > 1: this process's slice of each batch, gradients and losses
// averaged by GanCuda.reduce, as gan.c does with grad_reduce). Refused (KERNELS_EINVAL): a
// data-parallel split that does not divide the batch. B batch, Z latent, C channels, R = img (or
// the level's resolution, 4 << level). Host pointers are marked host; the rest is device memory.
#ifndef GENERATOR_GAN_CUDA_H
#define GENERATOR_GAN_CUDA_H

#ifdef STEER_CUDA

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#include "generator/gan.h"
#include "kernels/attention.h"

// A ParamSet's buffers on the device: the host table (offsets, SN shapes) copied at init, and the
// device twins of its buffers at the same offsets. sigma holds each SN parameter's sigma from the
// last power iteration (the host keeps it in Param.sigma).
typedef struct {
    int n;
    Param p[PARAMS_MAX];    // the host ParamSet's table (p[i].sigma unused here)
    long total, u_total, v_total;
    long adam_t;            // Adam steps taken (host)
    int sn_off;             // the host set's sn_off at the step (w_eff = params, sigma 1)
    int frozen;             // 1: a frozen network's: grads, m, v and dw_eff are NULL
    float *buf;             // the one device allocation carved into the buffers below
    float *params, *grads, *m, *v, *w_eff, *dw_eff; // (total)
    float *sn_u;            // (u_total)
    float *sn_v;            // (v_total)
    float *sigma;           // (n) sigma of param i at [i] (SN params only)
} GanCudaParams;

// G on the device: the Generator's parameter indices and widths, its parameters, and its
// activations and their gradient twins (dacts, at the same offsets), as sagan.c carves them.
typedef struct {
    int n_stages, attn_stage;
    int chan[SAGAN_MAX_STAGES + 1];
    int p_embed, p_fc_w, p_fc_b, p_conv_w[SAGAN_MAX_STAGES], p_conv_b[SAGAN_MAX_STAGES];
    int p_f, p_g, p_h, p_o, p_gamma, p_out_w, p_out_b;
    int p_rgb_w[SAGAN_MAX_STAGES], p_rgb_b[SAGAN_MAX_STAGES]; // toRGB of level L (cfg.prog)
    int level;                      // progressive level (n_stages: full), as the host G's
    float alpha;                    // its fade-in, (0, 1]
    GanCudaParams ps;
    float *acts, *dacts;
    long acts_total;
    float *zc;                      // (B, Z) z plus the class embedding
    float *fc_pre, *fc;             // (B, chan0, 16) linear output, after LReLU
    float *pn0, *rn0;               // (B, chan0, 16), (B, 16)
    float *up[SAGAN_MAX_STAGES];    // (B, chan[s], r, r) upsampled input of stage s
    float *conv[SAGAN_MAX_STAGES];  // (B, chan[s+1], r, r)
    float *act[SAGAN_MAX_STAGES];   // (B, chan[s+1], r, r) after LReLU
    float *pn[SAGAN_MAX_STAGES];    // (B, chan[s+1], r, r) PixelNorm out
    float *rn[SAGAN_MAX_STAGES];    // (B, r*r)
    float *att;                     // (B, chan[attn_stage+1], N) attention output
    AttentionSaved att_saved;       // its intermediates
    float *att_scratch;             // attention_scratch_floats_cuda
    float *pre, *img;               // (B, channels, R, R) before and after tanh
    // progressive growing only (cfg.prog), sagan.c's: the image below the last level, the
    // previous level's toRGB output and its 2x upsample, and the faded-in blend
    float *img_lo, *pre_old, *pre_old_up, *pre_mix;
    const float *zin;               // the linear layer's input of the last forward (z or zc)
    const int32_t *labels;          // (B) labels of the last forward, or NULL
} GanCudaGen;

// D on the device, likewise (activations for 2B images).
typedef struct {
    int n_stages, attn_stage;
    int chan[SAGAN_MAX_STAGES + 1];
    int p_in_w, p_in_b, p_conv_w[SAGAN_MAX_STAGES], p_conv_b[SAGAN_MAX_STAGES];
    int p_f, p_g, p_h, p_o, p_gamma, p_fc_w, p_fc_b, p_embed;
    int p_rgb_w[SAGAN_MAX_STAGES], p_rgb_b[SAGAN_MAX_STAGES]; // fromRGB of level L (cfg.prog)
    int level;                      // progressive level (n_stages: full), as the host D's
    float alpha;                    // its fade-in, (0, 1]
    GanCudaParams ps;
    float *acts, *dacts;
    long acts_total;
    float *c0, *a0;                 // (2B, chan0, R, R) first conv, after LReLU
    float *conv[SAGAN_MAX_STAGES];  // (2B, chan[k+1], r, r)
    float *act[SAGAN_MAX_STAGES];   // (2B, chan[k+1], r, r) after LReLU
    float *att;                     // attention output
    AttentionSaved att_saved;
    float *att_scratch;
    float *out;                     // (2B) logits
    float *feat_drop, *drop_mask;   // (2B, F) the features after dropout, and its mask
    // progressive growing only, sagan.c's: the fading level's old path (the image pooled, through
    // the previous level's fromRGB) and the blend that feeds the next stage
    float *xpool, *old_pre, *old_act, *blend;
    int dropped;                    // 1: the last forward applied dropout
    // The gradient penalties' LReLU pattern: layer l's pre-activations at the B images the
    // penalty is taken at, twice over (2B, n_l; carved in GanCuda.pen_buf); used instead of each
    // layer's own input when ref_on.
    float *pat[SAGAN_MAX_STAGES + 1];
    int ref_on;
    const float *x;                 // input of the last forward
    const int32_t *labels;          // (2B) labels of the last forward, or NULL
} GanCudaDisc;

typedef struct {
    SaganConfig cfg;
    int B;                  // this process's batch: hp.batch / dp_size at init
    int B_all, dp_rank, dp_size; // the trainer's hp.batch and data-parallel split at init
    // Data parallel (dp_size > 1): replaces n floats of device memory by their mean over the
    // processes, queued on stream (dist_cuda_mean; set by the caller before the first step).
    int (*reduce)(void *ctx, float *dev, long n, cudaStream_t stream);
    void *reduce_ctx;
    cudaStream_t stream;
    GanCudaGen G;
    GanCudaDisc D;
    float *batch;           // one device allocation carved into the step's buffers below
    float *x;               // (2B, C, R, R) D step's input: the real batch, then G's images (at
                            // the level's R: the first 2B C R R floats)
    float *z;               // (2, B, Z) the D step's latents, then the G step's
    float *dlogits;         // (2B)
    float *dimg;            // (B, C, R, R) D's gradient w.r.t. G's images (at the level's R)
    float *losses;          // (5) D real, D fake (hinge), D's penalties, G (hinge), G's L1 value
    int32_t *y;             // (3B) real labels, the D step's fake labels, the G step's
    // The step's draws on the host (pinned), copied up in one go: x_host (B, C, R, R) the real
    // batch, z_host (2, B, Z), y_host (3B) laid out as z and y.
    float *x_host, *z_host;
    int32_t *y_host;
    // The gradient penalties (gan.c's GanPenaltyBuffers), one allocation pen_buf: D's input
    // gradient (B, C, R, R), the two-sided batch x2 (2B, ...) and its output gradients (2B), the
    // interpolates (B, ...), B ones, the interpolation weights (B; alpha_host pinned, drawn on the
    // host), D's LReLU pattern (GanCudaDisc.pat); y2 (2B) the labels twice.
    float *pen_buf, *pen_grad, *pen_x2, *pen_dout, *pen_x_hat, *pen_ones, *pen_alpha;
    float *alpha_host;
    int32_t *y2;
    // Device doubles (dv): the L1 penalty's per-block sums, each orthogonal term's value (by G's
    // parameter index), the penalties' values and their per-image terms (B).
    double *dv, *dv_l1, *dv_ortho, *dv_pen, *dv_terms;
    float *ortho_scratch;   // the largest ortho_scratch_floats_cuda of G's weights
    // G's EMA (hp.ema_decay > 0), gan.c's t->ema, ema_u, ema_v on the device, plus the power
    // iteration's scratch (w_sn, one sigma): one allocation, ema_buf.
    float *ema_buf, *ema, *ema_u, *ema_v, *ema_w_sn, *ema_sigma;
} GanCuda;

// Builds the device copy of t (its whole training state as it is now; sizes from t->hp.batch).
// Returns 0, or a negative KERNELS_E* code with a message in err: KERNELS_EINVAL for a switch of
// t->hp this step does not do (named in err), KERNELS_ECUDA or KERNELS_ENOMEM when there is no GPU or not enough device memory. gc is then
// safe to gan_cuda_free. t is only read.
int gan_cuda_init(GanCuda *gc, const GanTrainer *t, char *err, size_t errlen);
// Copies t's training state to the device again (after t changed on the host: a CPU step, a
// load). KERNELS_EINVAL when t no longer fits gc (another config or batch); waits for the GPU.
int gan_cuda_upload(GanCuda *gc, const GanTrainer *t);
// One training iteration on the GPU, gan_step's: a D step on a real batch from data and a fake
// batch, then a G step, drawing every random number from t->rng on the host as gan_step does.
// Updates t->rng, t->step, t->D.dropout_seed, t->loss_d, t->loss_g, t->penalty_d and t->reg_g,
// and t->z, t->y and the real half of t->x as gan_step leaves them; waits for the GPU once at
// the end. The parameters in t are not touched: gan_cuda_download brings them back. Returns 0,
// or a negative KERNELS_E* code: KERNELS_EINVAL, before anything is queued, for data of another
// shape, labels out of range (the step's draws are then made) or a switch of t->hp this step
// refuses (turned on after init; nothing drawn); after a kernel's failure the device state is
// part-updated: treat it as fatal for the run.
int gan_cuda_step(GanCuda *gc, GanTrainer *t, const Dataset *data);
// Copies the device state into t (parameters, gradients, Adam moments and step count, SN vectors,
// sigmas and effective weights, G's EMA and its SN vectors), so that t is what gan_step would
// have left and gan_save works.
// Waits for the GPU. Returns 0 or KERNELS_ECUDA (t is then partly updated).
int gan_cuda_download(GanCuda *gc, GanTrainer *t);
// Frees the device copy; safe on a zeroed or half-built gc.
void gan_cuda_free(GanCuda *gc);

// --- G alone: serving and sampling (generator/sagan_cuda.c) -------------------------------------

// A frozen G on the device (its parameters and effective weights as given) with activations for
// max_B images, run by the training step's own forward at the Generator's level; the GanCuda
// holds only what that forward reads (the config, the batch, the stream).
typedef struct {
    GanCuda gc;
    GanCudaGen G;
} GanCudaSampler;

// 0, or a KERNELS_E* code with err set (no GPU, no memory); sp is then freed.
int gan_cuda_sampler_init(GanCudaSampler *sp, const Generator *g, int max_B, char *err,
                          size_t errlen);
// g's weights (and level) again, after a hot swap; KERNELS_EINVAL when g no longer fits (another
// config or layout: build a new sampler). Waits for the GPU.
int gan_cuda_sampler_upload(GanCudaSampler *sp, const Generator *g);
// z (B, Z), y (B; NULL when unconditional): DEVICE, labels checked by the caller. *img receives
// the device image (B, C, R, R) at G's level, valid until the next forward. Queued on sp->gc.stream
// without waiting.
int gan_cuda_sampler_forward(GanCudaSampler *sp, const float *z, const int32_t *y, int B,
                             const float **img);
void gan_cuda_sampler_free(GanCudaSampler *sp);

// --- tune steps: G trained on losses through frozen networks (generator/finetune.h, distill.h) ----

// The caller's loss on the frozen D's last maps (sagan.c's discriminator_features) of G's frames:
// feat (B, F, host) with the frames' classes y (B, host; NULL for an unconditional model); writes
// dfeat (B, F, host), the loss's gradient w.r.t. feat. Returns 0 or a KERNELS_E* code.
typedef int (*GanCudaFeatureLoss)(void *ctx, const float *feat, const int32_t *y, int B,
                                  float *dfeat);

typedef enum { GAN_CUDA_FINETUNE = 1, GAN_CUDA_DISTILL } GanCudaTuneKind;

// Frozen networks on the device beside a GanCuda (their parameters and effective weights as
// given, never updated, no power iteration), with activations for the trainer's batch:
//   finetune: the reward D, the anchor theta0 (G's starting raw parameters), pinned host buffers
//     for the reward D's maps and their gradient, and the caller's loss on them;
//   distill: the teacher's G and D (the teacher's widths; the student's z, classes and image),
//     the teacher's frames and their maps of the step, and the three weights.
typedef struct {
    GanCudaTuneKind kind;
    GanCudaDisc D;                 // the reward D, or the teacher's D
    GanCudaGen T;                  // distill: the teacher G
    // finetune
    float *theta0;
    float *feat_host, *dfeat_host; // (B, F)
    GanCudaFeatureLoss loss;       // set by the caller before a step
    void *ctx;
    float lambda;                  // the anchor's weight
    // distill
    float *timg, *tfeat;           // (B, C, R, R), (B, F) device
    double *sums;                  // (2) device: the step's pixel and feature squared errors
    double w_pix, w_feat, w_adv;   // set by the caller
    double pix, feat;              // the last step's mean squared errors (host)
} GanCudaTune;

// Builds a finetune tu for gc (one process; frozen of the trainer's image shape, latent size and
// classes, any width), copying frozen
// (host) and theta0 (G's total floats, host) to the device. 0, or a KERNELS_E* code with err set
// (tu is then freed). gan_cuda_tune_free before gan_cuda_free.
int gan_cuda_tune_init(GanCudaTune *tu, GanCuda *gc, const Discriminator *frozen,
                       const float *theta0, char *err, size_t errlen);
// Builds a distill tu: the teacher's G and D (one checkpoint's; another width is fine, the image
// shape, latent size and classes must be the student's). Errors as gan_cuda_tune_init.
int gan_cuda_distill_init(GanCudaTune *tu, GanCuda *gc, const Generator *teacher,
                          const Discriminator *teacher_d, char *err, size_t errlen);
void gan_cuda_tune_free(GanCudaTune *tu, GanCuda *gc);
// A tune step on the device: gan_cuda_step's D step and draws (the G step's latents and classes
// are finetune.c's and distill.c's, the same draws), then G's step (after one more power
// iteration, as those files do), its gradient from
//   finetune (generator/finetune.c's finetune_step): the hinge G loss against the training D, plus
//     tu->loss through the frozen D's maps (the host computes it between the frozen D's forward
//     and backward: one more wait for the GPU), plus tu->lambda (theta - theta0);
//   distill (generator/distill.c's distill_step): w_adv times the hinge G loss, plus w_pix times the
//     mean squared difference from the teacher's frames, plus w_feat times that of the teacher
//     D's maps of both; tu->pix and tu->feat get the two means;
// then Adam, the step counted, the EMA. Leaves t->reg_g as it was. Returns 0, KERNELS_EINVAL as
// gan_cuda_step (or for a finetune tu without a loss), the loss's code, or a kernel's.
int gan_cuda_tune_step(GanCuda *gc, GanCudaTune *tu, GanTrainer *t, const Dataset *data);

#endif
#endif
