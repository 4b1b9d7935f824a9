// train_device.c — the CPU or the GPU for a training run (train_device.h). Not here: the steps
// themselves (gan.c, gan_cuda.c) and the device query (kernels/device.c).
#include "generator/train_device.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef STEER_CUDA
#include "generator/gan_cuda.h"
#endif

void train_device_init(TrainDevice *td, Device want, GanTrainer *t, char *line, size_t len) {
    memset(td, 0, sizeof *td);
    char why[300];
    Device d = device_choose(want, why, sizeof why);
    if (d != DEVICE_CUDA) {
        snprintf(line, len, "training on the CPU (%s%s)", want == DEVICE_CUDA ? "asked for cuda; " : "",
                 why);
        return;
    }
#ifdef STEER_CUDA
    GanCuda *gc = calloc(1, sizeof *gc);
    char err[512] = "out of memory";
    if (gc && !gan_cuda_init(gc, t, err, sizeof err)) {
        td->gc = gc;
        td->on_gpu = 1;
        snprintf(line, len, "training on the GPU (%s)", why);
        return;
    }
    if (gc) gan_cuda_free(gc);
    free(gc);
    snprintf(line, len, "training on the CPU (the GPU step cannot take this run: %s)", err);
#else
    (void)t;
#endif
}

int train_device_step(TrainDevice *td, GanTrainer *t, const Dataset *data) {
#ifdef STEER_CUDA
    if (td->on_gpu) return gan_cuda_step(td->gc, t, data);
#endif
    (void)td;
    return gan_step(t, data);
}

int train_device_sync(TrainDevice *td, GanTrainer *t) {
#ifdef STEER_CUDA
    if (td->on_gpu) return gan_cuda_download(td->gc, t);
#endif
    (void)td;
    (void)t;
    return 0;
}

void train_device_free(TrainDevice *td) {
#ifdef STEER_CUDA
    if (td->gc) gan_cuda_free(td->gc);
#endif
    free(td->gc);
    memset(td, 0, sizeof *td);
}
