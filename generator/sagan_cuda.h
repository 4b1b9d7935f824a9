// sagan_cuda.h — G's forward on a GPU, for serving and sampling (the CUDA build: make CUDA=1).
//
// A GeneratorCuda is a device copy of a Generator (its effective weights, W / sigma, as the CPU
// forward reads them) and device activations sized for max_B, run by the GPU training step's own
// G forward (generator/gan_cuda.h, GanCudaSampler: the same layers in the same order as
// generator_forward, sagan.c) on one stream, at the network's last level; z and the classes go up,
// the images come down. One thread uses a GeneratorCuda at a time.
//
// B batch, Z latent size, C channels, R = img. Host pointers are marked host; the rest is device.
#ifndef GENERATOR_SAGAN_CUDA_H
#define GENERATOR_SAGAN_CUDA_H

#ifdef STEER_CUDA

#include <stddef.h>
#include <stdint.h>

#include "generator/gan_cuda.h"
#include "generator/sagan.h"

typedef struct {
    GanCudaSampler sp;     // G on the device, and its stream
    int max_B;
    float *z;              // (max_B, Z) the batch's latents
    int32_t *y;            // (max_B) its classes (conditional models)
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
