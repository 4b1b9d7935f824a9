// params.h — a network's parameters as one contiguous buffer carved by a table (llm.c style),
// with their gradients, Adam moments and spectral-norm state in twin buffers of the same layout.
//
// A parameter marked spectral-normalized (SN) keeps its raw weight W in `params` and the
// normalized W/sigma in `w_eff`; layers read the effective weight and write its gradient into
// `dw_eff`, which paramset_sn_backward folds into `grads` through sigma. Not thread-safe: one
// training or sampling thread owns a ParamSet at a time.
#ifndef GENERATOR_PARAMS_H
#define GENERATOR_PARAMS_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/rng.h"

#define PARAMS_MAX 48
#define PARAMS_NAME_MAX 64

typedef enum { PARAMS_INIT_ZERO, PARAMS_INIT_UNIFORM_FANIN, PARAMS_INIT_NORMAL } ParamInit;

typedef struct {
    char name[PARAMS_NAME_MAX]; // checkpoint name: "fc.weight_orig", "fc.bias", "attn.gamma"
    int ndim;
    int shape[4];
    long numel;
    long offset;   // into params / grads / m / v / w_eff / dw_eff
    int sn;        // spectral-normalized?
    int rows, cols;   // SN matrix view: rows = shape[0], cols = numel / rows
    long u_offset;    // into sn_u (rows floats)
    long v_offset;    // into sn_v (cols floats)
    float sigma;      // from the last paramset_sn_forward
    ParamInit init;
    int fan_in;       // for PARAMS_INIT_UNIFORM_FANIN: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's default
    int is_bias;      // a bias or scalar: named ".bias" or as is in checkpoints
    int frozen;       // 1: paramset_adam leaves it and its Adam moments alone (FreezeD)
} Param;

typedef struct {
    int n;
    Param p[PARAMS_MAX];
    long total;        // floats in each of params, grads, m, v, w_eff, dw_eff
    long u_total, v_total;
    float *params;     // (total) raw trainable values
    float *grads;      // (total) d loss / d params, accumulated; caller zeroes
    float *m, *v;      // (total) Adam moments
    float *w_eff;      // (total) W / sigma for SN params (other slots unused)
    float *dw_eff;     // (total) gradient w.r.t. w_eff for SN params
    float *sn_u;       // (u_total) persistent left singular vectors
    float *sn_v;       // (v_total) right vectors of the last power iteration
    long adam_t;       // Adam steps taken
    int sn_off;        // 1: spectral norm switched off: w_eff = params (sigma = 1), same layout
} ParamSet;

// One activation buffer carved into slices (llm.c's pointer table): a first pass with base NULL
// counts the floats a network needs (used), a second with base set hands out the same slices.
// Each slice is rounded up to align floats (a power of two), so with an aligned base every slice
// starts aligned.
typedef struct {
    float *base; // NULL while counting
    long used;
} ParamsCarver;
float *params_carve(ParamsCarver *cv, long n, long align);

// 64-byte aligned, zeroed memory for parameter and activation buffers (at least 1 byte);
// NULL when out of memory; freed with free().
void *params_zalloc(size_t bytes);

// Declares a parameter before paramset_alloc; returns its index. shape has ndim (1..4) dims.
// Dies with a message on a programming error (too many, bad shape): declarations are static.
int paramset_add(ParamSet *ps, const char *name, int ndim, const int *shape, int sn, ParamInit init,
                 int fan_in, int is_bias);
// Allocates every buffer (zeroed) after the declarations. Returns 0 or -1 (out of memory).
int paramset_alloc(ParamSet *ps);
// Initializes params and the SN u/v vectors from rng (PyTorch's default inits).
void paramset_init(ParamSet *ps, Rng *rng);
void paramset_free(ParamSet *ps);

// Effective weight a layer reads (w_eff for SN params, params otherwise) and the gradient slot a
// layer accumulates into (dw_eff for SN params, grads otherwise).
float *paramset_w(const ParamSet *ps, int i);
float *paramset_dw(const ParamSet *ps, int i);

// Recomputes w_eff = W/sigma for every SN param by one power iteration; update != 0 advances u.
// With sn_off set, w_eff = W for them (u and v untouched, sigma = 1).
void paramset_sn_forward(ParamSet *ps, int update);
// Folds dw_eff into grads through sigma for every SN param (grads += dw_eff when sn_off), then
// zeroes dw_eff.
void paramset_sn_backward(ParamSet *ps);
void paramset_zero_grad(ParamSet *ps);
// One Adam/AdamW step over the whole buffer. weight decay is skipped for biases and scalars;
// frozen params (and their moments) are skipped altogether, though adam_t still advances.
void paramset_adam(ParamSet *ps, float lr, float beta1, float beta2, float eps, float weight_decay);

#endif
