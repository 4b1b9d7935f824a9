// device.h — which device a command computes on: `--device cpu|cuda|auto`.
//
// The CUDA backend exists only in a CUDA build (make CUDA=1) and runs only where a GPU is usable;
// anything else falls back to the CPU, and the reason is said (llama.cpp's way: the same binary
// serves on both). Allocates nothing; the math switches are process-wide, set at start.
#ifndef KERNELS_DEVICE_H
#define KERNELS_DEVICE_H

#include <stddef.h>

typedef enum { DEVICE_AUTO, DEVICE_CPU, DEVICE_CUDA } Device;

// "auto", "cpu" or "cuda" into *out. Returns 0, or -1 for another word.
int device_parse(const char *s, Device *out);
const char *device_name(Device d);
// The device to use when asked for want: DEVICE_CUDA when it is asked (or auto) and usable here,
// else DEVICE_CPU. why (len bytes) says what was found: the GPU's name, or why not (a build
// without CUDA, no driver, no device). Never fails.
Device device_choose(Device want, char *why, size_t len);
// TF32 tensor-core math for the GPU's convolutions and matrix products (cuda_tf32_set): off (0,
// the default) keeps them in full FP32, on (1) lets cuBLAS and cuDNN round their inputs to TF32
// (a 10-bit mantissa, about 1e-3 relative error per product; several times faster on Ampere and
// Hopper). Process-wide. Without a CUDA build it is only remembered (the CPU computes in FP32).
void device_tf32_set(int on);
int device_tf32_get(void);
// BF16 convolutions: off (0, the default) keeps them in FP32; on (1) they read bfloat16 copies of
// their inputs (8-bit mantissa, ~4e-3 relative rounding per element) and accumulate in FP32. On
// the CPU (conv2d_bf16_set, kernels/conv.h) they write FP32, and only where the CPU has BF16
// instructions (AVX512-BF16, AMX): elsewhere it returns -1, the CPU's stay FP32, and why (len
// bytes) says so; device_math_note then says it was asked for. On the GPU of a CUDA build
// (cuda_bf16_set) cuDNN's BF16 convolutions, whose results are bf16 too, on any CPU.
// Process-wide.
int device_bf16_set(int on, char *why, size_t len);
// What the math switches mean where d computes, for a device line: "" when both are off, else
// e.g. "; TF32 tensor cores on" or "; BF16 convolutions on AVX512-BF16" or the reason a switch
// does not apply there ("; BF16 asked for, but ..."). The text is the calling thread's, valid
// until its next call; set the switches before threads that call this start.
const char *device_math_note(Device d);

#endif
