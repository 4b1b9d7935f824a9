// attention.h — the SAGAN self-attention block (Zhang et al. 2019), forward and backward.
//
// B batch, C channels (divisible by 8), N = H*W positions. x (B, C, N).
//   f = Wf x (C/8), g = Wg x (C/8), h = Wh x (C/2)            (1x1 convs without bias)
//   s[j][i] = f_i . g_j, attn[j][.] = softmax_i(s[j][.])      (each position j attends over i)
//   o_j = sum_i attn[j][i] h_i                                 (C/2, N)
//   out = x + gamma * Wo o                                     (Wo: C/2 -> C, no bias)
// Weights are the already spectral-normalized matrices: wf, wg (C/8, C), wh (C/2, C), wo (C, C/2).
#ifndef KERNELS_ATTENTION_H
#define KERNELS_ATTENTION_H

// Activations saved by forward for backward, each sized for B: the caller owns the memory
// (attention_saved_floats() says how many floats one batch of B needs, carved in this order).
typedef struct {
    float *f;    // (B, C/8, N)
    float *g;    // (B, C/8, N)
    float *h;    // (B, C/2, N)
    float *attn; // (B, N, N)  row j is a softmax over i
    float *o;    // (B, C/2, N)
    float *y;    // (B, C, N)   Wo o, before gamma
} AttentionSaved;

long attention_saved_floats(int B, int C, int N);
// Points the fields of *s into buf (attention_saved_floats(B, C, N) floats).
void attention_saved_carve(AttentionSaved *s, float *buf, int B, int C, int N);

// out (B, C, N) written; out must not alias x. Returns 0 or a KERNELS_E* code.
int attention_forward(float *out, AttentionSaved *s, const float *x, const float *wf,
                      const float *wg, const float *wh, const float *wo, float gamma, int B,
                      int C, int N);

// Accumulates into dx (B, C, N), dwf, dwg, dwh, dwo and *dgamma; dw* may be NULL to skip the
// weight gradients. scratch must hold attention_scratch_floats(B, C, N) floats.
long attention_scratch_floats(int B, int C, int N);
int attention_backward(float *dx, float *dwf, float *dwg, float *dwh, float *dwo, float *dgamma,
                       const float *dout, const AttentionSaved *s, const float *x,
                       const float *wf, const float *wg, const float *wh, const float *wo,
                       float gamma, float *scratch, int B, int C, int N);

#endif
