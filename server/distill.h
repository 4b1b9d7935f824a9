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
#ifndef SERVER_DISTILL_H
#define SERVER_DISTILL_H

#include "env/fmnist.h"
#include "generator/gan.h"

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

#endif
