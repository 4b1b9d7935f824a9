// sagan_cuda.c — G's forward on the GPU (sagan_cuda.h): the latents and classes up, gan_cuda.c's
// G forward (GanCudaSampler, the training step's), the images down. Not here: the layers
// themselves (gan_cuda.c, on kernels/cuda/), D, training, progressive levels below the last
// (serving draws at the model's size). Compiled only in the CUDA build.
//
// B batch, Z latent, C channels.
#ifdef STEER_CUDA

#include "generator/sagan_cuda.h"

#include <stdio.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "kernels/kernels.h"

#define CUDA_OK(x) ((x) == cudaSuccess ? 0 : KERNELS_ECUDA)

// Whether g is at its last level, the only one drawn here (a hot swap may bring a progressive
// model at a lower one).
static int at_last_level(const Generator *g) {
    return g->level == g->n_stages && g->alpha == 1.0f;
}

int generator_cuda_upload(GeneratorCuda *gc, const Generator *g) {
    if (!at_last_level(g)) return KERNELS_EINVAL;
    return gan_cuda_sampler_upload(&gc->sp, g);
}

int generator_cuda_init(GeneratorCuda *gc, const Generator *g, int max_B, char *err,
                        size_t errlen) {
    memset(gc, 0, sizeof *gc);
    if (!at_last_level(g)) {
        snprintf(err, errlen, "the GPU draws at the model's last level only (this one is at %dx%d)",
                 4 << g->level, 4 << g->level);
        return KERNELS_EINVAL;
    }
    int rc = gan_cuda_sampler_init(&gc->sp, g, max_B, err, errlen);
    if (rc) return rc;
    gc->max_B = max_B;
    if (cudaMalloc((void **)&gc->z, sizeof(float) * (size_t)max_B * g->cfg.z_dim) != cudaSuccess ||
        cudaMalloc((void **)&gc->y, sizeof(int32_t) * (size_t)max_B) != cudaSuccess) {
        snprintf(err, errlen, "cannot set up G on the GPU: %s", kernels_strerror(KERNELS_ENOMEM));
        generator_cuda_free(gc);
        return KERNELS_ENOMEM;
    }
    return 0;
}

void generator_cuda_free(GeneratorCuda *gc) {
    gan_cuda_sampler_free(&gc->sp); // waits for its stream first
    cudaFree(gc->z);
    cudaFree(gc->y);
    memset(gc, 0, sizeof *gc);
}

int generator_cuda_forward(GeneratorCuda *gc, const float *z, const int32_t *y, int B, float *img) {
    const SaganConfig *c = &gc->sp.gc.cfg;
    if (B < 1 || B > gc->max_B || (c->n_classes && !y)) return KERNELS_EINVAL;
    if (c->n_classes) // the kernels index the embedding by them: checked here, as sagan.c does
        for (int b = 0; b < B; b++)
            if (y[b] < 0 || y[b] >= c->n_classes) return KERNELS_EINVAL;
    cudaStream_t st = gc->sp.gc.stream;
    // pageable sources: each copy is staged before the call returns
    if (cudaMemcpyAsync(gc->z, z, sizeof(float) * (size_t)B * c->z_dim, cudaMemcpyHostToDevice,
                        st) != cudaSuccess ||
        (c->n_classes && cudaMemcpyAsync(gc->y, y, sizeof(int32_t) * (size_t)B,
                                         cudaMemcpyHostToDevice, st) != cudaSuccess))
        return KERNELS_ECUDA;
    const float *out;
    int rc = gan_cuda_sampler_forward(&gc->sp, gc->z, c->n_classes ? gc->y : NULL, B, &out);
    if (rc) return rc;
    long n_img = (long)B * c->channels * c->img * c->img;
    if (cudaMemcpyAsync(img, out, sizeof(float) * n_img, cudaMemcpyDeviceToHost, st) !=
            cudaSuccess ||
        cudaStreamSynchronize(st) != cudaSuccess)
        return KERNELS_ECUDA;
    return 0;
}

#endif
