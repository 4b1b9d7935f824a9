// distill.h — distillation of a teacher G into a smaller student (issue 5): the worker's "distill"
// job, for faster serving.
//
// Student and teacher see the same latent and class. Each step: one usual D step for the student's
// own D (real data against the student's frames), then the student's G step on
//
//   L = w_pix * mean |S(z) - T(z)|^2  +  w_feat * mean |f(S(z)) - f(T(z))|^2  +  w_adv * hinge G loss
//
// where T is the teacher, S the student, f the teacher D's last feature map (frozen; gradient by one
// backward pass through it) and the hinge loss is against the student's D (Hinton et al. 2015 for
// the idea; pixel plus feature matching as in Aguinaldo et al. 2019, "Compressing GANs using
// knowledge distillation"). The student has the teacher's z, classes and image shape and a smaller
// width (`ch`), so it can be served in the teacher's place.
#ifndef GENERATOR_DISTILL_H
#define GENERATOR_DISTILL_H

#include "generator/data/fmnist.h"
#include "generator/gan.h"
#include "generator/train_device.h"

typedef struct {
    double w_pix, w_feat, w_adv; // defaults 1, 1, 0.1
} DistillConfig;

typedef struct {
    Generator teacher;
    Discriminator td; // the teacher's D: its features are matched
    float *timg;      // (B, C, H, W) the teacher's frames of the step
    float *tfeat;     // (B, Fd) their features
    float *dfeat;     // (B, Fd)
} Distiller;

int distill_init(Distiller *d, const char *teacher_ckpt, int B, char *err, size_t errlen);
void distill_free(Distiller *d);

// One iteration on the student trainer t. *pix and *feat receive the batch's two matching losses.
int distill_step(GanTrainer *t, Distiller *d, const DistillConfig *c, const Dataset *data,
                 double *pix, double *feat);

// distill_step where a TrainDevice (generator/train_device.h) put the run: on the GPU (a CUDA
// build), the teacher's G and D, the student's step and all three terms run on the device
// (generator/gan_cuda.h, gan_cuda_tune_step); on the CPU, distill_step. The two draw the same
// random numbers and compute the same step.
typedef struct {
    void *tu; // the GanCudaTune while on the GPU
    Distiller *d;
    DistillConfig c;
} DistillDevice;

// After train_device_init: on the GPU, puts the teacher there beside the student; if that fails,
// moves the run back to the CPU (train_device_to_cpu). line (len bytes) says where the steps run.
// Returns 0, or a KERNELS_E* code when even the move back failed.
int distill_device_init(DistillDevice *dd, TrainDevice *td, GanTrainer *t, Distiller *d,
                        const DistillConfig *c, char *line, size_t len);
// One distillation iteration where the run is; *pix and *feat the two matching losses.
int distill_device_step(DistillDevice *dd, TrainDevice *td, GanTrainer *t, const Dataset *data,
                        double *pix, double *feat);
void distill_device_free(DistillDevice *dd, TrainDevice *td);

#endif
