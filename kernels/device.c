// device.c — the device choice (device.h). Not here: the CUDA query itself
// (kernels/cuda/device_cuda.cu, cuda_device_available).
#include "kernels/device.h"

#include <stdio.h>
#include <string.h>

#include "kernels/conv.h"

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

static int bf16_asked;        // device_bf16_set(1) was called, whether or not the CPU could
static char bf16_what[200];   // which instructions, or why not (conv2d_bf16_set)

int device_bf16_set(int on, char *why, size_t len) {
    char what[200];
#ifdef STEER_CUDA
    cuda_bf16_set(on != 0); // cuDNN's BF16 needs no particular CPU
#endif
    if (on) conv2d_bf16_supported(what, sizeof what); // which instructions, or why not
    int rc = conv2d_bf16_set(on, NULL, 0);
    bf16_asked = on != 0;
    snprintf(bf16_what, sizeof bf16_what, "%s", on ? what : "");
    if (rc && why) snprintf(why, len, "%s", what);
    return rc;
}


const char *device_math_note(Device d) {
    static _Thread_local char note[400];
    const char *tf32 = "", *bf16 = "";
    char b[260] = "";
    if (device_tf32_get())
        tf32 = d == DEVICE_CUDA ? "; TF32 tensor cores on"
                                : "; TF32 asked for, but the CPU computes in FP32";
    if (bf16_asked) {
        if (d == DEVICE_CUDA)
            bf16 = "; BF16 convolutions (cuDNN)";
        else if (conv2d_bf16_get())
            snprintf(b, sizeof b, "; BF16 convolutions on %s", bf16_what), bf16 = b;
        else
            snprintf(b, sizeof b, "; BF16 asked for, but %s: FP32", bf16_what), bf16 = b;
    }
    snprintf(note, sizeof note, "%s%s", tf32, bf16);
    return note;
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
