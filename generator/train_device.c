// train_device.c — the CPU or the GPU for a training run (train_device.h). Not here: the steps
// themselves (gan.c, gan_cuda.c) and the device query (kernels/device.c).
#include "generator/train_device.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "generator/dist.h"

#ifdef STEER_CUDA
#include "generator/dist_cuda.h"
#include "generator/gan_cuda.h"
#endif

#ifdef STEER_CUDA
// The GPU for t's run, or 0 with the reason in err. Data parallel: this process's GPU and the
// all-reduce first (dist_cuda_init chooses the device), then the device copy.
static int gpu_init(TrainDevice *td, GanTrainer *t, Dist *dist, char *how, size_t hlen, char *err,
                    size_t elen) {
    if (dist && dist->size > 1) {
        DistCuda *dc = calloc(1, sizeof *dc);
        if (!dc) {
            snprintf(err, elen, "out of memory");
            return 0;
        }
        td->dc = dc;
        if (dist_cuda_init(dc, dist, how, hlen, err, elen))
            return 0;
    }
    GanCuda *gc = calloc(1, sizeof *gc);
    if (!gc) {
        snprintf(err, elen, "out of memory");
        return 0;
    }
    td->gc = gc;
    if (gan_cuda_init(gc, t, err, elen))
        return 0;
    if (td->dc) {
        gc->reduce = dist_cuda_mean;
        gc->reduce_ctx = td->dc;
    }
    return 1;
}

static void gpu_free(TrainDevice *td) {
    if (td->gc)
        gan_cuda_free(td->gc);
    if (td->dc)
        dist_cuda_free(td->dc);
    free(td->gc);
    free(td->dc);
    td->gc = td->dc = NULL;
}
#endif

void train_device_init(TrainDevice *td, Device want, GanTrainer *t, char *line, size_t len) {
    memset(td, 0, sizeof *td);
    char why[300];
    Device d = device_choose(want, why, sizeof why);
    // Data parallel: the processes' MPI (set by steer train); without it a split run stays on
    // the CPU, whose gan_step reduces through t->grad_reduce.
    Dist *dist = t->dp_size > 1 && t->grad_reduce == dist_grad_reduce ? t->reduce_ctx : NULL;
#ifdef STEER_CUDA
    char err[512] = "", how[200] = "";
    int ok = 0, go = d == DEVICE_CUDA && (t->dp_size == 1 || dist);
    if (d == DEVICE_CUDA && !go)
        snprintf(err, sizeof err, "data parallel without MPI");
    // Every process on its GPU, or all on the CPU: they agree before the collective set-up
    // (dist_cuda_init) and again after each built its device copy.
    if (dist && dist_any(dist, !go)) {
        if (go)
            snprintf(err, sizeof err, "another process cannot train on a GPU");
        go = 0;
    }
    if (go)
        ok = gpu_init(td, t, dist, how, sizeof how, err, sizeof err);
    int refused_somewhere = dist ? dist_any(dist, !ok) : !ok;
    if (ok && refused_somewhere) {
        ok = 0;
        snprintf(err, sizeof err, "another process cannot train on its GPU");
    }
    if (ok) {
        td->on_gpu = 1;
        snprintf(line, len, "training on the GPU (%s%s%s%s)", why, how[0] ? "; " : "", how,
                 device_math_note(DEVICE_CUDA));
        return;
    }
    gpu_free(td);
    if (d == DEVICE_CUDA) {
        snprintf(line, len, "training on the CPU (the GPU step cannot take this run: %s%s)", err,
                 device_math_note(DEVICE_CPU));
        return;
    }
#else
    (void)t;
    (void)dist;
    (void)d;
#endif
    snprintf(line, len, "training on the CPU (%s%s%s)", want == DEVICE_CUDA ? "asked for cuda; " : "",
             why, device_math_note(DEVICE_CPU));
}

int train_device_step(TrainDevice *td, GanTrainer *t, const Dataset *data) {
#ifdef STEER_CUDA
    if (td->on_gpu)
        return gan_cuda_step(td->gc, t, data);
#endif
    (void)td;
    return gan_step(t, data);
}

int train_device_sync(TrainDevice *td, GanTrainer *t) {
#ifdef STEER_CUDA
    if (td->on_gpu)
        return gan_cuda_download(td->gc, t);
#endif
    (void)td;
    (void)t;
    return 0;
}

int train_device_to_cpu(TrainDevice *td, GanTrainer *t) {
    int rc = train_device_sync(td, t);
    train_device_free(td);
    return rc;
}

void train_device_free(TrainDevice *td) {
#ifdef STEER_CUDA
    gpu_free(td);
#endif
    memset(td, 0, sizeof *td);
}
