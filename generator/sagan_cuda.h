// sagan_cuda.h — G's forward on a GPU, for serving and sampling (the CUDA build: make CUDA=1).
//
// A GeneratorCuda is a device copy of a Generator's effective weights (W / sigma, as the CPU
// forward reads them) and device activations sized for max_B, run with the kernels of
// kernels/cuda/cuda_ops.h on one stream: the same layers in the same order as
// generator_forward (sagan.c), at the network's last level. Training stays on the CPU for now
// (docs/gpu.md). One thread uses a GeneratorCuda at a time.
//
// B batch, Z latent size, C channels, R = img. Host pointers are marked host; the rest is device.
#ifndef GENERATOR_SAGAN_CUDA_H
#define GENERATOR_SAGAN_CUDA_H

#ifdef STEER_CUDA

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#include "generator/sagan.h"

typedef struct {
    SaganConfig cfg;
    int max_B, n_stages, attn_stage;
    int chan[SAGAN_MAX_STAGES + 1];
    cudaStream_t stream;
    long total;            // floats of the weight copy (the Generator's ParamSet layout)
    float *w;              // (total) effective weights
    long off_fc_w, off_fc_b, off_conv_w[SAGAN_MAX_STAGES], off_conv_b[SAGAN_MAX_STAGES];
    long off_f, off_g, off_h, off_o, off_gamma, off_out_w, off_out_b;
    float *embed_host;     // host (n_classes, Z): the class embedding, added to z on the host
    float *zc_host;        // host (max_B, Z)
    float *act;            // one device buffer carved into the activations below
    float *zc;             // (B, Z)
    float *fc;             // (B, chan0 * 16)
    float *pn0, *rn0;      // (B, chan0, 16), (B, 16)
    float *up[SAGAN_MAX_STAGES], *conv[SAGAN_MAX_STAGES], *pn[SAGAN_MAX_STAGES];
    float *rn[SAGAN_MAX_STAGES];
    float *att;            // (B, C, N) the attention block's output
    AttentionSaved att_saved; // its intermediates (kernels/attention.h), carved from act
    float *pre;            // (B, channels, R, R) before tanh; the image after it, in place
} GeneratorCuda;

// Builds the device copy of g (its effective weights as they are now) for batches up to max_B.
// Returns 0, or a negative KERNELS_E* code with a message in err (no GPU, out of device memory,
// g not at its last level); gc is then safe to free.
int generator_cuda_init(GeneratorCuda *gc, const Generator *g, int max_B, char *err, size_t errlen);
// Copies g's effective weights again: after a hot swap or a training step. KERNELS_EINVAL when g
// no longer fits this copy (another config or width, or a level below the last): build a new one.
int generator_cuda_upload(GeneratorCuda *gc, const Generator *g);
// z host (B, Z), y host (B) or NULL (unconditional); img host (B, channels, R, R) receives the
// images. Waits for the GPU. Returns 0 or a negative KERNELS_E* code.
int generator_cuda_forward(GeneratorCuda *gc, const float *z, const int32_t *y, int B, float *img);
void generator_cuda_free(GeneratorCuda *gc);

#endif
#endif
