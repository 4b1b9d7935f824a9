// train_device.h — where a training run's steps run: gan_step on the CPU, or gan_cuda_step on the
// GPU (a CUDA build with a usable GPU and a run that the GPU step covers, generator/gan_cuda.h).
// `steer train --device` and a worker's spec key "device" pick it (kernels/device.h).
//
// While on the GPU the device holds the training state; train_device_sync brings it back into the
// GanTrainer before anything reads it (a checkpoint, samples, FD). One thread uses it.
#ifndef GENERATOR_TRAIN_DEVICE_H
#define GENERATOR_TRAIN_DEVICE_H

#include <stddef.h>

#include "generator/gan.h"
#include "kernels/device.h"

typedef struct {
    int on_gpu;
    void *gc; // the GanCuda while on the GPU (CUDA builds)
    void *dc; // data parallel on GPUs: the DistCuda (generator/dist_cuda.h)
} TrainDevice;

// Chooses the device for t's run (want: DEVICE_AUTO, _CPU or _CUDA) and, for the GPU, copies t's
// state there. Never fails: anything that keeps the run off the GPU (no CUDA build, no GPU, a
// switch the GPU step does not do, no memory) leaves it on the CPU, and line (len bytes) says
// where it runs and why. Data parallel (t->dp_size > 1, t->reduce_ctx the Dist of dist.h): every
// process must call it; they agree (all on their GPUs, averaging through dist_cuda.h, or all on
// the CPU).
void train_device_init(TrainDevice *td, Device want, GanTrainer *t, char *line, size_t len);
// One step where the run is. Returns gan_step's or gan_cuda_step's code.
int train_device_step(TrainDevice *td, GanTrainer *t, const Dataset *data);
// Makes t's parameters, optimizer and SN state the run's (a no-op on the CPU). 0 or a KERNELS_E*.
int train_device_sync(TrainDevice *td, GanTrainer *t);
// Moves a run on the GPU back to the CPU (its state downloaded into t, the device copy freed), for
// a caller that cannot go on there. 0, or a KERNELS_E* code (the download failed; td is freed
// and t may be partly updated). A no-op on the CPU.
int train_device_to_cpu(TrainDevice *td, GanTrainer *t);
void train_device_free(TrainDevice *td);

#endif
