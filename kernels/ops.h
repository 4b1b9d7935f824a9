// ops.h — the element-wise and small layers, in our own C (OpenMP over the batch where it pays).
//
// B batch, C channels, H, W spatial, N = H*W, n a flat element count. NCHW float32.
// Forward functions write their outputs; backward functions ACCUMULATE (+=) into d* buffers,
// the caller zeroes them (llm.c's convention). None allocate; none fail.
#ifndef KERNELS_OPS_H
#define KERNELS_OPS_H

#include <stdint.h>

// Leaky ReLU: out = x > 0 ? x : alpha*x. out may alias inp.
void leaky_relu_forward(float *out, const float *inp, float alpha, long n);
// inp is the forward input (or its output: the sign is the same for alpha > 0).
void leaky_relu_backward(float *dinp, const float *dout, const float *inp, float alpha, long n);
// Leaky ReLU with the slopes of another input: out = ref > 0 ? x : alpha*x, a linear map (the
// activation pattern of ref held fixed). Its backward is leaky_relu_backward with ref as inp.
void leaky_relu_pattern_forward(float *out, const float *inp, const float *ref, float alpha,
                                long n);

// tanh. out may alias inp. Backward uses the forward output.
void tanh_forward(float *out, const float *inp, long n);
void tanh_backward(float *dinp, const float *dout, const float *out, long n);

// PixelNorm (Karras et al. 2018, eq. in sec. 4.2): out = x / sqrt(mean_c x^2 + eps), per pixel.
// out, inp: (B, C, N); rnorm: (B, N) saved for backward = 1/sqrt(mean_c x^2 + eps).
#define PIXELNORM_EPS 1e-8f
void pixelnorm_forward(float *out, float *rnorm, const float *inp, int B, int C, int N);
void pixelnorm_backward(float *dinp, const float *dout, const float *out, const float *rnorm,
                        int B, int C, int N);

// Nearest-neighbour upsample x2: out (B, C, 2H, 2W), inp (B, C, H, W).
void upsample2x_forward(float *out, const float *inp, int B, int C, int H, int W);
void upsample2x_backward(float *dinp, const float *dout, int B, int C, int H, int W);

// Nearest-neighbour upsample by an integer factor f: out (B, C, f H, f W). Forward only (shows
// a progressive G's low-resolution image at the model's full size).
void upsample_nearest_forward(float *out, const float *inp, int B, int C, int H, int W, int f);

// 2x2 average pool (stride 2): out (B, C, H/2, W/2), inp (B, C, H, W), H and W even. PGGAN's
// downsampling of images and of D's faded-in input (Karras et al. 2018).
void avgpool2x_forward(float *out, const float *inp, int B, int C, int H, int W);
void avgpool2x_backward(float *dinp, const float *dout, int B, int C, int H, int W);

// Fade-in blend (PGGAN): out = alpha * a + (1 - alpha) * b. Backward accumulates alpha * dout
// into da and (1 - alpha) * dout into db (either may be NULL).
void lerp_forward(float *out, const float *a, const float *b, float alpha, long n);
void lerp_backward(float *da, float *db, const float *dout, float alpha, long n);

// Hinge losses (Lim & Ye 2017; Miyato et al. 2018). Logits are (B). Each returns the mean loss and
// writes (not accumulates) the gradient of that mean into dlogits (B) when dlogits is not NULL.
// D: mean(relu(1 - real)) over the real batch, mean(relu(1 + fake)) over the fake batch.
float hinge_d_real_loss(float *dlogits, const float *logits, int B);
float hinge_d_fake_loss(float *dlogits, const float *logits, int B);
// G: -mean(fake).
float hinge_g_loss(float *dlogits, const float *logits, int B);

// Softmax cross-entropy with integer labels: logits (B, K), labels (B) in [0, K).
// Returns the mean loss; writes the gradient of the mean into dlogits (B, K) when not NULL;
// probs (B, K) receives the softmax when not NULL.
float softmax_xent_forward_backward(float *dlogits, float *probs, const float *logits,
                                    const int32_t *labels, int B, int K);

// Embedding lookup: out (B, D) = table[labels[b]], table (K, D). Backward accumulates into dtable.
void embedding_forward(float *out, const float *table, const int32_t *labels, int B, int D);
void embedding_backward(float *dtable, const float *dout, const int32_t *labels, int B, int D);

// The projection discriminator's class term (Miyato & Koyama 2018): out (B) += <table[labels[b]],
// feat[b]>, table (K, F), feat (B, F), one float sum per item in index order. Backward: dfeat (B,
// F) += dout[b] table[labels[b]] (skipped when NULL) and dtable[labels[b]] += dout[b] feat[b]
// (skipped when NULL), serial over b. The CUDA build's stand-in (tests/cuda/shim) calls these
// very functions, so its sums round as the CPU's do whatever the compiler makes of the loops.
void projection_forward(float *out, const float *table, const int32_t *labels, const float *feat,
                        int B, int F);
void projection_backward(float *dfeat, float *dtable, const float *dout, const float *table,
                         const int32_t *labels, const float *feat, int B, int F);

// Inverted dropout with keep mask: mask (n) gets 0 or 1/(1-p) from rng state *seed (advanced).
// p = 0 copies. out may alias inp. Chunk k of OPS_DROPOUT_CHUNK elements draws from its own
// xoshiro stream seeded with key + k (splitmix64 seeding makes neighbouring seeds unrelated), so
// the mask is the same whatever the thread count (or on the GPU: dropout_forward_cuda).
#define OPS_DROPOUT_CHUNK 4096L
void dropout_forward(float *out, float *mask, const float *inp, float p, uint64_t *seed, long n);
void dropout_backward(float *dinp, const float *dout, const float *mask, long n);

// out += inp (n elements); the residual adds and the gradient fan-in use it.
void add_inplace(float *out, const float *inp, long n);

// Adam / AdamW (Kingma & Ba 2015; Loshchilov & Hutter 2019, decoupled weight decay).
// t is the 1-based step count after this update. m, v (n) are the moment buffers.
// weight_decay = 0 gives plain Adam.
void adamw_update(float *params, const float *grads, float *m, float *v, long n, float lr,
                  float beta1, float beta2, float eps, float weight_decay, long t);

#endif
