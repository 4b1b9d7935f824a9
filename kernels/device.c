// device.c — the device choice (device.h). Not here: the CUDA query itself
// (kernels/cuda/device_cuda.cu, cuda_device_available).
#include "kernels/device.h"

#include <stdio.h>
#include <string.h>

#ifdef STEER_CUDA
#include "kernels/cuda/cuda_ops.h"
#endif

int device_parse(const char *s, Device *out) {
    static const char *const names[] = {"auto", "cpu", "cuda"};
    for (int i = 0; i < 3; i++)
        if (s && !strcmp(s, names[i])) {
            *out = (Device)i;
            return 0;
        }
    return -1;
}

const char *device_name(Device d) {
    return d == DEVICE_CUDA ? "cuda" : d == DEVICE_CPU ? "cpu" : "auto";
}

#ifndef STEER_CUDA
static int tf32_on; // remembered only: nothing computes in TF32 without CUDA
#endif

void device_tf32_set(int on) {
#ifdef STEER_CUDA
    cuda_tf32_set(on != 0);
#else
    tf32_on = on != 0;
#endif
}

int device_tf32_get(void) {
#ifdef STEER_CUDA
    return cuda_tf32_get();
#else
    return tf32_on;
#endif
}

const char *device_tf32_note(Device d) {
    if (!device_tf32_get()) return "";
    return d == DEVICE_CUDA ? "; TF32 tensor cores on" : "; TF32 asked for, but the CPU computes in FP32";
}

Device device_choose(Device want, char *why, size_t len) {
    if (want == DEVICE_CPU) {
        snprintf(why, len, "asked for the CPU");
        return DEVICE_CPU;
    }
#ifdef STEER_CUDA
    char what[256];
    if (cuda_device_available(what, sizeof what)) {
        snprintf(why, len, "%s", what);
        return DEVICE_CUDA;
    }
    snprintf(why, len, "no usable GPU: %s", what);
#else
    snprintf(why, len, "this build has no CUDA backend (build it with make CUDA=1)");
#endif
    return DEVICE_CPU;
}
