// conv.h — 2-D convolution (forward and backward) on oneDNN, CPU.
//
// B batch, C input channels, H, W input spatial, OC output channels, K kernel size,
// S stride, P zero padding, OH = (H + 2P - K)/S + 1, OW likewise. All tensors NCHW float32.
// Primitives are created once per shape (first call) and cached for the life of the process;
// the cache is guarded by a mutex so several threads may call these concurrently.
#ifndef KERNELS_CONV_H
#define KERNELS_CONV_H

#include <stddef.h>

// out:  (B, OC, OH, OW), written (not accumulated)
// inp:  (B, C, H, W)
// w:    (OC, C, K, K)
// bias: (OC) or NULL for no bias
// Returns 0, or a negative KERNELS_E* code if oneDNN refused the shape or ran out of memory.
int conv2d_forward(float *out, const float *inp, const float *w, const float *bias, int B, int C,
                   int H, int W, int OC, int K, int S, int P);

// Gradients are ACCUMULATED (+=) into dinp, dw, dbias (the caller zeroes them).
// dinp: (B, C, H, W) or NULL to skip the data gradient (first layer)
// dw:   (OC, C, K, K) or NULL to skip the weight gradient (e.g. a frozen net in the G step)
// dbias:(OC) or NULL
// dout: (B, OC, OH, OW); inp and w as in forward.
int conv2d_backward(float *dinp, float *dw, float *dbias, const float *dout, const float *inp,
                    const float *w, int B, int C, int H, int W, int OC, int K, int S, int P);

// BF16 convolutions, process-wide, off by default: every pass then reads bfloat16 copies of its
// inputs (8-bit mantissa; about 4e-3 relative rounding per element) and accumulates and writes in
// FP32; the tensors stay FP32. Only where the CPU has BF16 instructions (AVX512-BF16 or AMX):
// conv2d_bf16_supported says whether (why: which, or why not); conv2d_bf16_set(1) elsewhere returns
// -1 with the reason and leaves the mode off. Applies to calls that start after it.
int conv2d_bf16_supported(char *why, size_t len);
int conv2d_bf16_set(int on, char *why, size_t len);
int conv2d_bf16_get(void);
// Keeps this thread's convolutions in FP32 whatever the mode (hold 1) or lets them follow it again
// (0); returns the previous hold, for nesting. For measuring instruments (the FD evaluator) whose
// figures must not depend on the mode.
int conv2d_fp32_hold(int hold);

// Drops every cached primitive (tests and leak checkers call it at exit).
void conv2d_cache_clear(void);

#endif
