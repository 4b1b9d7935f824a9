// train.h — one training run: the loop that `steer train` and `steer worker` both run.
//
// A run builds its trainer (resumed from a checkpoint of its own, started from another run's
// whole state, a fresh student of a teacher, or a fresh model of a config), reads its data
// (Fashion-MNIST or a folder of PNGs, optionally some classes and a number of images), chooses
// where its steps run (generator/train_device.h: the GPU when it can take them, else the CPU),
// and steps until its steps are done, its time is up or it is asked to stop: plain GAN steps
// (gan.h, every technique of GanHparams), fine-tuning toward the users' reward (finetune.h) or
// distillation (distill.h). On the way it writes checkpoints and sample grids, measures FD
// (quality.h) and reports each of these as a TrainEvent; at the end it writes the last state,
// and for a finished run the final checkpoint, FD beside the parent's, and what the kind is for
// (the reward before and after; the student's speed beside the teacher's).
//
// Data parallel over MPI (dist.h): every process of the Dist runs train_run with the same spec;
// each takes its slice of every batch, gradients are averaged, rank 0 alone writes files and
// reports (the others report only failures). Not here: what the commands print or send (they
// turn TrainEvents into progress lines, cmd/train.c, or msgpack messages, cmd/worker.c), reading
// options or job specs, and where the users' reward comes from (server/learn.h).
#ifndef GENERATOR_TRAIN_H
#define GENERATOR_TRAIN_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "generator/dist.h"
#include "generator/distill.h"
#include "generator/finetune.h"
#include "generator/gan.h"
#include "kernels/device.h"

#define TRAIN_MAX_CLASSES 16 // labels a run may keep of its data
#define TRAIN_EVAL_BATCH 64  // G's batch for FD samples and speed (their rounding stays fixed)

typedef enum { TRAIN_GAN, TRAIN_FINETUNE, TRAIN_DISTILL } TrainKind;

typedef struct {
    TrainKind kind;
    // The model, the first that applies: resume (this run's own checkpoint: its whole state, its
    // step); init (another run's whole state, step reset to 0; finetune: the model to tune, whose
    // weights the anchor pulls toward); distill: a fresh student of the teacher's shape and width
    // ch (0: half the teacher's); else a fresh `config` (width ch, latent size z_dim when not 0)
    // initialized from seed.
    const char *resume, *init, *teacher, *config;
    int ch, z_dim;
    uint64_t seed;
    GanHparams hp; // every switch, the batch included (gan_hparams_check'ed by the caller)
    // The data (dataset_load): Fashion-MNIST's folder or a folder of PNGs, the labels to keep
    // (n_classes of classes; 0: all), the first limit training images (0: all).
    const char *data;
    int classes[TRAIN_MAX_CLASSES], n_classes;
    long limit;
    // The schedule. Every *_every is in steps, 0 = never (log_every >= 1).
    long steps;        // stop at this step
    long log_every;    // a TRAIN_EVENT_PROGRESS, and at the last step
    long save_every;   // dir/latest.safetensors (not at the last step: the end saves it)
    long sample_every; // dir/samples_STEP.png, 100 frames (a class per row, conditional)
    long eval_every;   // FD of the model as it is (needs eval_n > 0; not at the last step)
    long eval_n;       // FD samples, during and at the end (0: no FD)
    double seconds;    // wall-clock budget of training, evaluations not counted (0: none)
    long fail_at;      // tests: abort() at this step (-1: never)
    // Where the steps run (device.h): the device wanted, TF32 and BF16 switches.
    Device device;
    int tf32, bf16;
    // Files: dir gets latest.safetensors, samples_*.png and eval.safetensors (NULL: runs/CONFIG,
    // created if missing); final_path, when set, gets the finished run's checkpoint too, and
    // with final_when_stopped also a stopped run's (steer train --out).
    const char *dir, *final_path;
    int final_when_stopped;
    // FD: the evaluator, and the model the result is measured beside (NULL: none).
    const char *eval_model, *parent;
    // finetune: the reward (the caller's, outliving the run), its weights, frames it is measured
    // on at the end; distill: the losses' weights.
    FinetuneReward *reward;
    FinetuneConfig finetune;
    DistillConfig distill;
    Dist *dist; // data parallel (NULL: this process alone)
} TrainSpec;

// spec's defaults: a plain GAN run of config "tiny", GanHparams' defaults, seed 1, Fashion-MNIST
// from FMNIST_DIR, 1000 steps logged every 10, saved every 100, no samples, no FD, no budget,
// device auto, evaluator models/fmnist-eval.safetensors, finetune beta 1, lambda 1e-3, reward
// measured on 1000 frames, distill weights 1, 1, 0.1. Each command sets its own on top.
void train_spec_default(TrainSpec *spec);

typedef enum {
    TRAIN_EVENT_NOTE,       // text: a line for the log (the device, the reward, a non-fatal fault)
    TRAIN_EVENT_STARTED,    // the model and data are ready: step, steps, resumed, config, batch
    TRAIN_EVENT_PROGRESS,   // step: losses, images/s since the last one, eta_s, the kind's figures
    TRAIN_EVENT_EVAL,       // step: fd (NaN with text when it could not be measured), seconds
    TRAIN_EVENT_CHECKPOINT, // path: dir/latest.safetensors at step
    TRAIN_EVENT_SAMPLES,    // path: a sample grid of step
    TRAIN_EVENT_STOPPED,    // asked to stop at step: path holds the state
    TRAIN_EVENT_DONE,       // finished at step: path, fd, parent_fd, the kind's results, seconds
} TrainEventKind;

typedef struct {
    TrainEventKind kind;
    long step, steps;
    const char *text;          // NOTE; EVAL: why there is no FD ("" otherwise)
    const char *path;          // CHECKPOINT, SAMPLES, STOPPED, DONE
    const char *config;        // STARTED: the model's config name
    int resumed, batch;        // STARTED
    int ch, z_dim, classes;    // STARTED: the model's width, latent size, classes (0: none)
    double loss_d, loss_g;     // PROGRESS: of the step just done
    double penalty_d, reg_g;   // PROGRESS: weighted R1/GP and G's regularizers (0 when off)
    double images_per_s;       // PROGRESS
    double eta_s;              // PROGRESS: seconds left at the run's rate so far
    int prog, resolution;      // PROGRESS: progressive growing on; the step's resolution
    double alpha;              // PROGRESS: its fade-in
    double reward;             // PROGRESS (finetune): the batch's mean reward; DONE: the result's
    double pixel_loss, feature_loss; // PROGRESS (distill)
    double fd, parent_fd;      // EVAL, DONE (NaN: not measured)
    long eval_n;               // DONE
    double seconds;            // EVAL, DONE: training time so far, evaluations not counted
    double parent_reward;      // DONE (finetune), NaN otherwise
    double gen_images_per_s, parent_gen_images_per_s; // DONE (distill): student and teacher, batch 64
} TrainEvent;

// Receives the run's events, on the calling thread, in order.
typedef void (*TrainReport)(void *ctx, const TrainEvent *e);

// Runs spec to its end. stop (may be NULL) is polled after every step: when set (a signal),
// the run saves its state and ends with TRAIN_EVENT_STOPPED. Returns 0 when the run is done or
// stopped, or -1 with err (errlen bytes) saying why it failed: 2 when the spec itself is wrong
// (a config, a batch that does not split over the processes, data of another shape). Every
// allocation is freed before it returns.
int train_run(const TrainSpec *spec, TrainReport report, void *ctx,
              volatile sig_atomic_t *stop, char *err, size_t errlen);

#endif
