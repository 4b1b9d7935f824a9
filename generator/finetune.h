// finetune.h — fine-tuning the generator itself toward what users like (issue 5, item 4): the
// "finetune" kind of training run (generator/train.h).
//
// The reward comes through FinetuneReward, a small interface: a frozen discriminator whose last
// maps the reward reads, and a function giving each frame's reward in (0, 1) from those maps with
// its gradient. The server's population model provides it (a Bradley–Terry ensemble fitted on
// every user's stored comparisons over features of the served D: policy/frame_reward.h,
// server/learn.h's learn_reward_init); this module knows nothing of users or stores. Each step
// updates G on
//
//   L_G = -beta * mean log p(G(z), y)  +  hinge G loss against the training D  +  lambda/2 |theta - theta0|^2
//
// where p is the reward: the probability that users prefer the frame to the average one (bounded:
// a frame already liked stops pulling, so G does not run off to features no real frame has)
//
// (gradient through G; the anchor keeps it near the served weights theta0, the adversarial term
// keeps its frames realistic), after one usual D step (real data against G's frames) so that the
// training D keeps judging realism as G moves. Reward and FD are measured before and after on the
// same latents: the result is promoted only if its reward beats the served model's and its FD does
// not regress past the job's margin (server/registry.c).
#ifndef GENERATOR_FINETUNE_H
#define GENERATOR_FINETUNE_H

#include "generator/data/fmnist.h"
#include "generator/gan.h"
#include "generator/train_device.h"

// The reward fine-tuning pulls toward. Its provider owns d and dmaps and outlives every use.
typedef struct {
    Discriminator *d; // frozen: forwards and backwards to the image, never a step
    int max_B;        // largest batch score takes (d's max_B)
    float *dmaps;     // (max_B, d's feature size) scratch for the step's gradient
    void *ctx;
    // rewards (B) of frames whose maps of d are maps (B, feature size) and classes y (B, or NULL
    // when unconditional); with dmaps, dmaps (B, feature size) receives d(-beta mean_b log
    // reward_b) / d maps. Returns 0 or a KERNELS_E* code.
    int (*score)(void *ctx, const float *maps, const int32_t *y, int B, double beta,
                 double *reward, float *dmaps);
} FinetuneReward;

typedef struct {
    double beta;   // reward weight (default 1)
    double lambda; // anchor weight (default 1e-3 per parameter)
    long eval_n;   // frames the reward is measured on (fixed latents; default 1000)
} FinetuneConfig;

// Mean reward of G's frames for n fixed latents (seed 7; the same for every model, so two models
// are compared frame for frame). Returns 0 or a negative code.
int finetune_measure(FinetuneReward *r, Generator *g, long n, double *mean_reward);

// One fine-tuning iteration on trainer t (a D step, then the G step above); theta0: G's starting
// raw parameters (t->G.ps.total floats). *reward receives the batch's mean reward.
int finetune_step(GanTrainer *t, FinetuneReward *r, const FinetuneConfig *c, const float *theta0,
                  const Dataset *data, double *reward);

// finetune_step where a TrainDevice (generator/train_device.h) put the run: on the GPU (a CUDA
// build), G, both of its losses' passes through the training D and the frozen reward D, the
// anchor and Adam run on the device (generator/gan_cuda.h, gan_cuda_tune_step), and only the
// reward itself, a few floats per frame from the reward D's pooled maps, on the host; on the CPU,
// finetune_step. The two draw the same random numbers and compute the same step.
typedef struct {
    void *tu;             // the GanCudaTune while on the GPU
    FinetuneReward *r;
    FinetuneConfig c;
    double reward;        // the last GPU step's mean reward
} FinetuneDevice;

// After train_device_init: on the GPU, builds the frozen reward D and the anchor there; if that
// fails, moves the run back to the CPU (train_device_to_cpu). line (len bytes) says where the
// steps run. Returns 0, or a KERNELS_E* code when even the move back failed.
int finetune_device_init(FinetuneDevice *fd, TrainDevice *td, GanTrainer *t, FinetuneReward *r,
                         const FinetuneConfig *c, const float *theta0, char *line, size_t len);
// One fine-tuning iteration where the run is; *reward the batch's mean reward.
int finetune_device_step(FinetuneDevice *fd, TrainDevice *td, GanTrainer *t, const float *theta0,
                         const Dataset *data, double *reward);
void finetune_device_free(FinetuneDevice *fd, TrainDevice *td);

#endif
