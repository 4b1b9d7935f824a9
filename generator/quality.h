// quality.h — how good a generator is, as users would see it: the Fréchet distance (fid.h) of its
// frames to the Fashion-MNIST test images (of some classes, or all) in the features of the
// evaluator classifier (classifier.h). What training runs measure during and after a run
// (train.h) and what promotion compares. The test set's features are computed once per Quality;
// each measurement loads a checkpoint, draws its frames in FP32 (an FD measures the model, not
// the mode of the run measuring it: conv2d_fp32_hold) and fits them. One thread uses a Quality.
// Not here: `steer eval`'s report (cmd/eval.c), which prints more than the distance.
#ifndef GENERATOR_QUALITY_H
#define GENERATOR_QUALITY_H

#include <stddef.h>

#include "generator/classifier.h"
#include "generator/fid.h"

typedef struct {
    Classifier c;
    FidStats ref; // the test images' Gaussian in the evaluator's features
} Quality;

// Loads the evaluator eval_model and fits the test images of data_dir (Fashion-MNIST only) whose
// label is in classes (n_cls of them; 0: all). Returns 0, or -1 with err set (q is then safe to
// free).
int quality_init(Quality *q, const char *eval_model, const char *data_dir, const int *classes,
                 int n_cls, char *err, size_t errlen);
void quality_free(Quality *q);

// FD of n frames (latents of seed 1; every frame of class fixed_class when it is >= 0 and the
// model is conditional) of the checkpoint at path, drawn 64 at a time.
// Returns the distance, or NaN with err set (not a 1x32x32 Fashion-MNIST model, or a failure).
double quality_fd(Quality *q, const char *path, long n, int fixed_class, char *err, size_t errlen);

#endif
