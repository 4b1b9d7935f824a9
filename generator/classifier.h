// classifier.h — the evaluator: a small CNN trained by steer on Fashion-MNIST, whose penultimate
// features give the Fréchet distance (fid.h) and whose predictions give class histograms.
//
// B batch; images are (B, 1, 32, 32) in [-1, 1], the form fmnist_load and the fmnist32 generators
// produce. The net (LReLU slope 0.1 everywhere):
//   conv3x3 1->32 (32x32) -> conv4x4/2 32->64 (16x16) -> conv4x4/2 64->128 (8x8)
//   -> conv4x4/2 128->128 (4x4) -> flatten 2048 -> linear 256 + LReLU = the FEATURES
//   -> dropout 0.3 (training only) -> linear 10 = the logits.
// A Classifier owns its ParamSet (no spectral norm) and one activation buffer with its gradient
// twin, sized at init for max_B: forward, backward and a training step never allocate. One thread
// uses a Classifier at a time. The file format is documented in docs/eval.md.
#ifndef GENERATOR_CLASSIFIER_H
#define GENERATOR_CLASSIFIER_H

#include <stddef.h>
#include <stdint.h>

#include "generator/params.h"

#define CLASSIFIER_FORMAT "steer.eval.v1"
#define CLASSIFIER_IMG 32       // input side
#define CLASSIFIER_FEATURES 256 // width of the penultimate layer, the FD features
#define CLASSIFIER_CLASSES 10
#define CLASSIFIER_DROPOUT 0.3f
#define CLASSIFIER_SLOPE 0.1f
#define CLASSIFIER_CONVS 4

typedef struct {
    int max_B;
    int chan[CLASSIFIER_CONVS + 1]; // 1, 32, 64, 128, 128
    int side[CLASSIFIER_CONVS];     // output side of each conv: 32, 16, 8, 4
    ParamSet ps;
    int p_conv_w[CLASSIFIER_CONVS], p_conv_b[CLASSIFIER_CONVS];
    int p_fc1_w, p_fc1_b, p_fc2_w, p_fc2_b;
    uint64_t dropout_seed; // advanced by every training forward (tests pin it to repeat a mask)
    // Activations, carved from one buffer; the gradient twins from `dacts` at the same offsets.
    float *acts, *dacts;
    long acts_total;
    // act[3] (B, 128, 4, 4) is also the flattened (B, 2048) input of fc1.
    float *conv[CLASSIFIER_CONVS]; // (B, chan[k+1], side[k], side[k]) conv output
    float *act[CLASSIFIER_CONVS];  // (B, chan[k+1], side[k], side[k]) after LReLU
    float *fc1;                    // (B, 256) linear output
    float *feat;                   // (B, 256) after LReLU: the features
    float *drop;                   // (B, 256) after dropout (training forward only)
    float *mask;                   // (B, 256) dropout mask
    float *logits;                 // (B, 10)
    float *dlogits;                // (B, 10) scratch of classifier_train_step
    const float *x;                // borrowed: input of the last forward
    int train;                     // whether the last forward used dropout
} Classifier;

// Builds the net for batches up to max_B, initialized from seed: He-uniform weights for the
// layers LReLU follows (kaiming_uniform_, a = 0.1), PyTorch's defaults for fc2 and the biases.
// Returns 0, or -1 out of memory (the struct is then safe to classifier_free).
int classifier_init(Classifier *c, int max_B, uint64_t seed);
// Releases what c owns; safe on a zeroed, half-built or already freed struct.
void classifier_free(Classifier *c);

// x (B, 1, 32, 32), borrowed until backward. train != 0 applies dropout (mask drawn from
// c->dropout_seed). Logits land in c->logits, features in c->feat. Returns 0 or a KERNELS_E* code.
int classifier_forward(Classifier *c, const float *x, int B, int train);
// Backpropagates dlogits (B, 10) through the last forward, accumulating (+=) into c->ps.grads
// (the caller zeroes). No input gradient is formed. Returns 0 or a KERNELS_E* code.
int classifier_backward(Classifier *c, const float *dlogits, int B);

// One Adam step (beta 0.9/0.999, eps 1e-8, no weight decay) on the softmax cross-entropy of a
// training forward of x (B, 1, 32, 32) with labels y (B) in [0, 10). *loss gets the batch's mean
// loss before the step, *correct (if not NULL) how many of the B it classified right. Returns 0 or
// a KERNELS_E* code (KERNELS_EINVAL for a label out of range).
int classifier_train_step(Classifier *c, const float *x, const int32_t *y, int B, float lr,
                          float *loss, int *correct);

// log sum_k exp(logits[k]) over one image's CLASSIFIER_CLASSES logits, max-shifted and in double,
// with the arg-max class in *best. log p_k = logits[k] - the result.
double classifier_log_sum_exp(const float *logits, int *best);

// Runs n images (n, 1, 32, 32) through the net in evaluation mode, max_B at a time, and writes
// whichever outputs are not NULL: feat (n, 256), pred (n) the arg-max class, conf (n) its softmax
// probability. Returns 0 or a KERNELS_E* code.
int classifier_apply(Classifier *c, const float *images, long n, float *feat, int32_t *pred,
                     float *conf);

// Writes the parameters to path (durably, see safetensors_write) with metadata "format" =
// CLASSIFIER_FORMAT plus extra_meta (NULL or a NULL-terminated key, value, ... list). Returns 0 or
// a negative SAFETENSORS_E* code with err naming the file and the problem.
int classifier_save(const Classifier *c, const char *path, const char *const *extra_meta, char *err,
                    size_t errlen);
// Builds c for batches up to max_B from a file classifier_save wrote: the format, every tensor's
// presence, dtype and shape, the tensor count and finiteness of every value are checked. Returns 0
// or a negative code with err naming the file and the problem (c is then safe to classifier_free).
// meta_acc, if not NULL, gets the file's "test_accuracy" metadata (or -1 when absent).
int classifier_load(Classifier *c, const char *path, int max_B, double *meta_acc, char *err,
                    size_t errlen);

#endif
