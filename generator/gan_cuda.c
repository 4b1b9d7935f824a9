// gan_cuda.c — gan_step on the GPU (gan_cuda.h): the D step and the G step of gan.c, with its
// techniques (SN on or off, R1 and WGAN-GP, orthogonal and L1 terms, dropout in D, weight decay,
// FreezeD, G's EMA, progressive growing), G's and D's forward and backward as sagan.c runs them
// at their level, on the kernels of kernels/cuda/cuda_ops.h and one stream; the finetune and
// distill jobs' steps (tune steps), with frozen networks beside the trainer; and G alone for
// serving and sampling (GanCudaSampler): the one G forward on the GPU.
//
// What stays on the host: every random draw (the real batch's indices, the latents and the fake
// labels come from t->rng in gan_step's order, so a run on the GPU draws what a run on the CPU
// draws, and WGAN-GP's interpolation weights where gan_step draws them), the copy of the real
// images out of the dataset (pooled to the level's resolution there when growing), the step
// counter, the level and the losses; dropout's masks are drawn on the device from keys the host
// draws from t->D.dropout_seed, as ops.c draws them. Each step copies the batch up (B images, 2B
// labels, twice B x Z latents) and the losses down, and waits for the GPU once. Not here:
// checkpoints (download, then gan_save), serving's copies up and down (sagan_cuda.c), the
// data-parallel all-reduce itself (GanCuda.reduce: dist_cuda.c).
// Compiled only in the CUDA build.
//
// B batch, Z latent, C channels, R = img, N = H*W, F = D's flattened 4x4 features.
#ifdef STEER_CUDA

#include "generator/gan_cuda.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "kernels/cuda/cuda_ops.h"
#include "kernels/kernels.h"

#define G_SLOPE 0.2f // sagan.c's
#define D_SLOPE 0.1f

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        int rc_ = (x);                                                                             \
        if (rc_) return rc_;                                                                       \
    } while (0)
#define CUDA_OK(x) ((x) == cudaSuccess ? 0 : KERNELS_ECUDA)

// The gradient twin of activation pointer p, at the same offset in dacts (sagan.c's GRAD).
#define GRAD(net, p) ((net)->dacts + ((p) - (net)->acts))
#define W(net, i) params_cuda_w(&(net)->ps, (i))
#define DW(net, i) params_cuda_dw(&(net)->ps, (i))

typedef ParamsCarver Carver;

static float *carve(Carver *cv, long n) { return params_carve(cv, n, 64); } // 256-byte slices

// ---------------------------------------------------------------------------------------------
// parameters: params.c's paramset_* on the device

// The weight a layer reads (w_eff for SN params, params otherwise) and the slot its gradient goes
// to (dw_eff, grads), as paramset_w / paramset_dw.
static float *params_cuda_w(const GanCudaParams *pc, int i) {
    const Param *p = &pc->p[i];
    return (p->sn ? pc->w_eff : pc->params) + p->offset;
}

static float *params_cuda_dw(const GanCudaParams *pc, int i) {
    const Param *p = &pc->p[i];
    return (p->sn ? pc->dw_eff : pc->grads) + p->offset;
}

static void params_cuda_layout(GanCudaParams *pc, const ParamSet *ps) {
    pc->n = ps->n;
    memcpy(pc->p, ps->p, sizeof pc->p);
    pc->total = ps->total;
    pc->u_total = ps->u_total;
    pc->v_total = ps->v_total;
}

// A frozen set (pc->frozen: never trained, no gradients reach it) has no gradient, Adam or
// dw_eff buffers: those stay NULL and are neither allocated nor copied.
static void params_cuda_carve(GanCudaParams *pc, Carver *cv) {
    pc->params = carve(cv, pc->total);
    pc->w_eff = carve(cv, pc->total);
    if (!pc->frozen) {
        pc->grads = carve(cv, pc->total);
        pc->m = carve(cv, pc->total);
        pc->v = carve(cv, pc->total);
        pc->dw_eff = carve(cv, pc->total);
    }
    pc->sn_u = carve(cv, pc->u_total);
    pc->sn_v = carve(cv, pc->v_total);
    pc->sigma = carve(cv, pc->n);
}

static int params_cuda_alloc(GanCudaParams *pc) {
    Carver cv = {0};
    params_cuda_carve(pc, &cv);
    if (cudaMalloc((void **)&pc->buf, sizeof(float) * (size_t)cv.used) != cudaSuccess)
        return KERNELS_ENOMEM;
    cv = (Carver){pc->buf, 0};
    params_cuda_carve(pc, &cv);
    return 0;
}

// Whether ps has the layout pc was built from.
static int params_cuda_fits(const GanCudaParams *pc, const ParamSet *ps) {
    if (ps->n != pc->n || ps->total != pc->total || ps->u_total != pc->u_total ||
        ps->v_total != pc->v_total)
        return 0;
    for (int i = 0; i < ps->n; i++)
        if (ps->p[i].offset != pc->p[i].offset || ps->p[i].numel != pc->p[i].numel ||
            ps->p[i].sn != pc->p[i].sn)
            return 0;
    return 1;
}

// Host to device, one copy per buffer, then waits for st (the sources are pageable host memory,
// one of them on this function's stack).
static int params_cuda_upload(GanCudaParams *pc, const ParamSet *ps, cudaStream_t st) {
    size_t t = sizeof(float) * (size_t)ps->total;
    float sigma[PARAMS_MAX];
    for (int i = 0; i < ps->n; i++) sigma[i] = ps->p[i].sigma;
    const struct {
        float *dev;
        const float *host;
        size_t bytes;
    } copies[] = {
        {pc->params, ps->params, t},
        {pc->grads, ps->grads, t},
        {pc->m, ps->m, t},
        {pc->v, ps->v, t},
        {pc->w_eff, ps->w_eff, t},
        {pc->dw_eff, ps->dw_eff, t},
        {pc->sn_u, ps->sn_u, sizeof(float) * (size_t)ps->u_total},
        {pc->sn_v, ps->sn_v, sizeof(float) * (size_t)ps->v_total},
        {pc->sigma, sigma, sizeof(float) * (size_t)ps->n},
    };
    for (size_t k = 0; k < sizeof copies / sizeof copies[0]; k++)
        if (copies[k].bytes && copies[k].dev) // (a frozen set has no gradient or Adam buffers)
            CHECK(CUDA_OK(cudaMemcpyAsync(copies[k].dev, copies[k].host, copies[k].bytes,
                                          cudaMemcpyHostToDevice, st)));
    pc->adam_t = ps->adam_t;
    pc->sn_off = ps->sn_off;
    return CUDA_OK(cudaStreamSynchronize(st));
}

// Device to host, every buffer, then waits for st.
static int params_cuda_download(const GanCudaParams *pc, ParamSet *ps, cudaStream_t st) {
    size_t t = sizeof(float) * (size_t)ps->total;
    float sigma[PARAMS_MAX];
    const struct {
        float *host;
        const float *dev;
        size_t bytes;
    } copies[] = {
        {ps->params, pc->params, t},
        {ps->grads, pc->grads, t},
        {ps->m, pc->m, t},
        {ps->v, pc->v, t},
        {ps->w_eff, pc->w_eff, t},
        {ps->dw_eff, pc->dw_eff, t},
        {ps->sn_u, pc->sn_u, sizeof(float) * (size_t)ps->u_total},
        {ps->sn_v, pc->sn_v, sizeof(float) * (size_t)ps->v_total},
        {sigma, pc->sigma, sizeof(float) * (size_t)ps->n},
    };
    for (size_t k = 0; k < sizeof copies / sizeof copies[0]; k++)
        if (copies[k].bytes)
            CHECK(CUDA_OK(cudaMemcpyAsync(copies[k].host, copies[k].dev, copies[k].bytes,
                                          cudaMemcpyDeviceToHost, st)));
    CHECK(CUDA_OK(cudaStreamSynchronize(st)));
    for (int i = 0; i < ps->n; i++)
        if (ps->p[i].sn) ps->p[i].sigma = ps->sn_off ? 1.0f : sigma[i];
    ps->adam_t = pc->adam_t;
    return 0;
}

// paramset_sn_forward: one power iteration per SN parameter (update != 0 advances u), w_eff =
// W / sigma, sigma kept on the device for the backward; with SN off (sn_off), w_eff = W (sigma 1
// is set on the host at download).
static int params_cuda_sn_forward(GanCudaParams *pc, int update, cudaStream_t st) {
    for (int i = 0; i < pc->n; i++) {
        const Param *p = &pc->p[i];
        if (!p->sn) continue;
        if (pc->sn_off) {
            CHECK(CUDA_OK(cudaMemcpyAsync(pc->w_eff + p->offset, pc->params + p->offset,
                                          sizeof(float) * (size_t)p->numel,
                                          cudaMemcpyDeviceToDevice, st)));
            continue;
        }
        CHECK(specnorm_forward_cuda(pc->w_eff + p->offset, pc->sn_v + p->v_offset,
                                    pc->sn_u + p->u_offset, pc->sigma + i, pc->params + p->offset,
                                    p->rows, p->cols, update, st));
    }
    return 0;
}

// paramset_sn_backward: folds dw_eff into grads through sigma (adds it with SN off), then
// zeroes dw_eff.
static int params_cuda_sn_backward(GanCudaParams *pc, cudaStream_t st) {
    for (int i = 0; i < pc->n; i++) {
        const Param *p = &pc->p[i];
        if (!p->sn) continue;
        float *dw_eff = pc->dw_eff + p->offset;
        if (pc->sn_off)
            CHECK(add_inplace_cuda(pc->grads + p->offset, dw_eff, p->numel, st));
        else
            CHECK(specnorm_backward_cuda(pc->grads + p->offset, dw_eff, pc->w_eff + p->offset,
                                     pc->sn_u + p->u_offset, pc->sn_v + p->v_offset, pc->sigma + i,
                                     p->rows, p->cols, st));
        CHECK(CUDA_OK(cudaMemsetAsync(dw_eff, 0, sizeof(float) * (size_t)p->numel, st)));
    }
    return 0;
}

static int params_cuda_zero_grad(GanCudaParams *pc, cudaStream_t st) {
    size_t t = sizeof(float) * (size_t)pc->total;
    CHECK(CUDA_OK(cudaMemsetAsync(pc->grads, 0, t, st)));
    return CUDA_OK(cudaMemsetAsync(pc->dw_eff, 0, t, st));
}

// paramset_adam's update: one launch over the whole set, or, with weight decay or frozen
// parameters (FreezeD), one per parameter, skipping the frozen and decaying all but biases. The
// flags come from the host set (gan_apply_switches keeps them), whose table matches pc's.
static int params_cuda_adam(GanCudaParams *pc, const ParamSet *host, float lr, float beta1,
                            float beta2, float eps, float weight_decay, cudaStream_t st) {
    pc->adam_t++;
    int frozen = 0;
    for (int i = 0; i < host->n; i++) frozen |= host->p[i].frozen;
    if (weight_decay == 0.0f && !frozen)
        return adamw_update_cuda(pc->params, pc->grads, pc->m, pc->v, pc->total, lr, beta1, beta2,
                                 eps, 0.0f, pc->adam_t, st);
    for (int i = 0; i < host->n; i++) {
        const Param *p = &host->p[i];
        if (p->frozen) continue;
        long o = p->offset;
        CHECK(adamw_update_cuda(pc->params + o, pc->grads + o, pc->m + o, pc->v + o, p->numel, lr,
                                beta1, beta2, eps, p->is_bias ? 0.0f : weight_decay, pc->adam_t,
                                st));
    }
    return 0;
}

// ---------------------------------------------------------------------------------------------
// activations: sagan.c's carving (the full level's sizes, which every level fits), for G at B
// and D at 2B

static void gen_carve(GanCudaGen *g, const SaganConfig *c, long B, Carver *cv) {
    int r = 4;
    g->zc = carve(cv, B * c->z_dim);
    g->fc_pre = carve(cv, B * g->chan[0] * 16);
    g->fc = carve(cv, B * g->chan[0] * 16);
    g->pn0 = carve(cv, B * g->chan[0] * 16);
    g->rn0 = carve(cv, B * 16);
    for (int s = 0; s < g->n_stages; s++) {
        r *= 2;
        g->up[s] = carve(cv, B * g->chan[s] * r * r);
        g->conv[s] = carve(cv, B * g->chan[s + 1] * r * r);
        g->act[s] = carve(cv, B * g->chan[s + 1] * r * r);
        g->pn[s] = carve(cv, B * g->chan[s + 1] * r * r);
        g->rn[s] = carve(cv, B * r * r);
        if (s == g->attn_stage) {
            int C = g->chan[s + 1], N = r * r;
            g->att = carve(cv, B * C * N);
            float *saved = carve(cv, attention_saved_floats((int)B, C, N));
            if (saved) attention_saved_carve(&g->att_saved, saved, (int)B, C, N);
            g->att_scratch = carve(cv, attention_scratch_floats_cuda((int)B, C, N));
        }
    }
    g->pre = carve(cv, B * c->channels * r * r);
    g->img = carve(cv, B * c->channels * r * r);
    if (c->prog) { // sagan.c's: below the last level, and the fade-in's old path and blend
        long full = B * c->channels * r * r;
        g->img_lo = carve(cv, full / 4);
        g->pre_old = carve(cv, full / 4);
        g->pre_old_up = carve(cv, full);
        g->pre_mix = carve(cv, full);
    }
}

static void disc_carve(GanCudaDisc *d, const SaganConfig *c, long B, Carver *cv) {
    int r = c->img;
    d->c0 = carve(cv, B * d->chan[0] * r * r);
    d->a0 = carve(cv, B * d->chan[0] * r * r);
    for (int k = 0; k < d->n_stages; k++) {
        r /= 2;
        d->conv[k] = carve(cv, B * d->chan[k + 1] * r * r);
        d->act[k] = carve(cv, B * d->chan[k + 1] * r * r);
        if (k == d->attn_stage) {
            int C = d->chan[k + 1], N = r * r;
            d->att = carve(cv, B * C * N);
            float *saved = carve(cv, attention_saved_floats((int)B, C, N));
            if (saved) attention_saved_carve(&d->att_saved, saved, (int)B, C, N);
            d->att_scratch = carve(cv, attention_scratch_floats_cuda((int)B, C, N));
        }
    }
    d->out = carve(cv, B);
    long F = (long)d->chan[d->n_stages] * 16;
    d->feat_drop = carve(cv, B * F);
    d->drop_mask = carve(cv, B * F);
    if (c->prog) { // sagan.c's: the fade's old path reads x pooled to at most img/2
        int h = c->img / 2;
        d->xpool = carve(cv, B * c->channels * h * h);
        d->old_pre = carve(cv, B * d->chan[1] * h * h);
        d->old_act = carve(cv, B * d->chan[1] * h * h);
        d->blend = carve(cv, B * d->chan[1] * h * h);
    }
}

// D's LReLU layer l (0: c0 -> a0, k + 1: conv[k] -> act[k]): elements per image (sagan.c's
// discriminator_lrelu_numel).
static long disc_lrelu_numel(const GanCudaDisc *d, const SaganConfig *c, int l) {
    long r = c->img >> l;
    return (long)d->chan[l] * r * r;
}

// The penalties' buffers for batch B (the pattern for 2B images).
static void pen_carve(GanCuda *gc, Carver *cv) {
    const SaganConfig *c = &gc->cfg;
    long B = gc->B, img = (long)c->channels * c->img * c->img;
    gc->pen_grad = carve(cv, B * img);
    gc->pen_x2 = carve(cv, 2 * B * img);
    gc->pen_x_hat = carve(cv, B * img);
    gc->pen_dout = carve(cv, 2 * B);
    gc->pen_ones = carve(cv, B);
    gc->pen_alpha = carve(cv, B);
    for (int l = 0; l <= gc->D.n_stages; l++)
        gc->D.pat[l] = carve(cv, 2 * B * disc_lrelu_numel(&gc->D, c, l));
}

static void batch_carve(GanCuda *gc, Carver *cv) {
    const SaganConfig *c = &gc->cfg;
    long B = gc->B, img = (long)c->channels * c->img * c->img;
    gc->x = carve(cv, 2 * B * img);
    gc->z = carve(cv, 2 * B * c->z_dim);
    gc->dlogits = carve(cv, 2 * B);
    gc->dimg = carve(cv, B * img);
    gc->losses = carve(cv, 5);
}

// The device doubles: the L1 sums (a block each), the orthogonal values (a G parameter each), the
// two penalties' values, B per-image terms.
enum { DV_L1 = 0, DV_ORTHO = DV_L1 + SAGAN_MAX_STAGES + 1, DV_PEN = DV_ORTHO + PARAMS_MAX,
       DV_TERMS = DV_PEN + 2 };

// ---------------------------------------------------------------------------------------------
// G: generator_forward / generator_backward at its level (sagan.h's progressive growing)

// The tensor that feeds stage s (s == n_stages: the output conv).
static const float *gen_stage_input(const GanCudaGen *g, int s) {
    if (s == 0) return g->pn0;
    return (s - 1 == g->attn_stage) ? g->att : g->pn[s - 1];
}

// Elements of stage input s for B images: block s's output, (B, chan[s], r, r).
static long gen_block_numel(const GanCudaGen *g, int s, int B) {
    long r = 4L << s;
    return (long)B * g->chan[s] * r * r;
}

// G's output at its level: img at the last, img_lo (B, C, R, R) below it.
static float *gen_output(const GanCudaGen *g) {
    return g->level < g->n_stages ? g->img_lo : g->img;
}

// The pre-tanh image of the last forward (the blend while a level fades in).
static float *gen_pre_out(const GanCudaGen *g) { return g->alpha < 1.0f ? g->pre_mix : g->pre; }

// The image layer of level L into pre: the out conv (3x3) at the last level, toRGB L (1x1) below.
static int gen_rgb_forward(GanCuda *gc, GanCudaGen *g, float *pre, int L, int B) {
    int r = 4 << L, last = L == g->n_stages;
    return conv2d_forward_cuda(pre, gen_stage_input(g, L),
                               W(g, last ? g->p_out_w : g->p_rgb_w[L]),
                               W(g, last ? g->p_out_b : g->p_rgb_b[L]), B, g->chan[L], r, r,
                               gc->cfg.channels, last ? 3 : 1, 1, last ? 1 : 0, gc->stream);
}

static int gen_rgb_backward(GanCuda *gc, GanCudaGen *g, const float *dpre, int L, int B) {
    int r = 4 << L, last = L == g->n_stages;
    int w = last ? g->p_out_w : g->p_rgb_w[L], b = last ? g->p_out_b : g->p_rgb_b[L];
    const float *x = gen_stage_input(g, L);
    return conv2d_backward_cuda(GRAD(g, x), DW(g, w), DW(g, b), dpre, x, W(g, w), B, g->chan[L],
                                r, r, gc->cfg.channels, last ? 3 : 1, 1, last ? 1 : 0, gc->stream);
}

// G (gc->G, or another G of the same z, classes and image: a teacher) at its level on z (B, Z),
// y (B) or NULL: device. The image in gen_output(g). l1 > 0: also G's L1 activation value
// (sagan.c's l1_value, l1 times the mean |a| of each block output, summed) into gc->losses[4].
static int gen_forward(GanCuda *gc, GanCudaGen *g, const float *z, const int32_t *y, int B,
                       float l1) {
    const SaganConfig *c = &gc->cfg;
    cudaStream_t st = gc->stream;
    int Z = c->z_dim, C0 = g->chan[0];
    g->zin = z;
    g->labels = y;
    if (c->n_classes) {
        CHECK(embedding_forward_cuda(g->zc, W(g, g->p_embed), y, B, Z, st));
        CHECK(add_inplace_cuda(g->zc, z, (long)B * Z, st));
        g->zin = g->zc;
    }
    CHECK(linear_forward_cuda(g->fc_pre, g->zin, W(g, g->p_fc_w), W(g, g->p_fc_b), B, Z, C0 * 16,
                              st));
    CHECK(leaky_relu_forward_cuda(g->fc, g->fc_pre, G_SLOPE, (long)B * C0 * 16, st));
    CHECK(pixelnorm_forward_cuda(g->pn0, g->rn0, g->fc, B, C0, 16, st));
    const float *x = g->pn0;
    int r = 4, L = g->level;
    for (int s = 0; s < L; s++) {
        int Ci = g->chan[s], Co = g->chan[s + 1];
        CHECK(upsample2x_forward_cuda(g->up[s], x, B, Ci, r, r, st));
        r *= 2;
        long n = (long)B * Co * r * r;
        CHECK(conv2d_forward_cuda(g->conv[s], g->up[s], W(g, g->p_conv_w[s]), W(g, g->p_conv_b[s]),
                                  B, Ci, r, r, Co, 3, 1, 1, st));
        CHECK(leaky_relu_forward_cuda(g->act[s], g->conv[s], G_SLOPE, n, st));
        CHECK(pixelnorm_forward_cuda(g->pn[s], g->rn[s], g->act[s], B, Co, r * r, st));
        x = g->pn[s];
        if (s == g->attn_stage) {
            CHECK(attention_forward_cuda(g->att, &g->att_saved, x, W(g, g->p_f), W(g, g->p_g),
                                         W(g, g->p_h), W(g, g->p_o), W(g, g->p_gamma), B, Co,
                                         r * r, st));
            x = g->att;
        }
    }
    long n_img = (long)B * c->channels * r * r;
    CHECK(gen_rgb_forward(gc, g, g->pre, L, B));
    if (g->alpha < 1.0f) { // PGGAN's fade-in: the previous level's image, upsampled, blended
        CHECK(gen_rgb_forward(gc, g, g->pre_old, L - 1, B));
        CHECK(upsample2x_forward_cuda(g->pre_old_up, g->pre_old, B, c->channels, r / 2, r / 2, st));
        CHECK(lerp_forward_cuda(g->pre_mix, g->pre, g->pre_old_up, g->alpha, n_img, st));
    }
    CHECK(tanh_forward_cuda(gen_output(g), gen_pre_out(g), n_img, st));
    if (l1 <= 0.0f) return 0;
    long n[SAGAN_MAX_STAGES + 1];
    for (int s = 0; s <= L; s++) {
        n[s] = gen_block_numel(g, s, B);
        CHECK(l1_forward_cuda(gc->dv_l1 + s, gen_stage_input(g, s), n[s], st));
    }
    return l1_value_cuda(gc->losses + 4, gc->dv_l1, n, L + 1, l1, st);
}

// The L1 penalty's gradient on block output s: l1 sign(a) / numel (sagan.c's).
static int gen_l1_backward(GanCudaGen *g, int s, int B, float l1, cudaStream_t st) {
    if (l1 <= 0.0f) return 0;
    const float *a = gen_stage_input(g, s);
    long n = gen_block_numel(g, s, B);
    return l1_backward_cuda(GRAD(g, a), a, (float)(l1 / (double)n), n, st);
}

// dimg (B, C, R, R): the loss's gradient w.r.t. the last forward's image. Accumulates into G's
// gradient slots (grads, and dw_eff for SN params). l1 > 0: with the L1 penalty's gradient.
static int gen_backward(GanCuda *gc, const float *dimg, int B, float l1) {
    const SaganConfig *c = &gc->cfg;
    GanCudaGen *g = &gc->G;
    cudaStream_t st = gc->stream;
    int Z = c->z_dim, C0 = g->chan[0], L = g->level, r = 4 << L;
    long n_img = (long)B * c->channels * r * r;
    CHECK(CUDA_OK(cudaMemsetAsync(g->dacts, 0, sizeof(float) * (size_t)g->acts_total, st)));
    float *pre = gen_pre_out(g);
    CHECK(tanh_backward_cuda(GRAD(g, pre), dimg, gen_output(g), n_img, st));
    if (g->alpha < 1.0f) {
        CHECK(lerp_backward_cuda(GRAD(g, g->pre), GRAD(g, g->pre_old_up), GRAD(g, g->pre_mix),
                                 g->alpha, n_img, st));
        CHECK(upsample2x_backward_cuda(GRAD(g, g->pre_old), GRAD(g, g->pre_old_up), B,
                                       c->channels, r / 2, r / 2, st));
        CHECK(gen_rgb_backward(gc, g, GRAD(g, g->pre_old), L - 1, B));
    }
    CHECK(gen_rgb_backward(gc, g, GRAD(g, g->pre), L, B));
    CHECK(gen_l1_backward(g, L, B, l1, st));
    for (int s = L - 1; s >= 0; s--) {
        int Ci = g->chan[s], Co = g->chan[s + 1];
        long n = (long)B * Co * r * r;
        if (s == g->attn_stage)
            CHECK(attention_backward_cuda(GRAD(g, g->pn[s]), DW(g, g->p_f), DW(g, g->p_g),
                                          DW(g, g->p_h), DW(g, g->p_o), DW(g, g->p_gamma),
                                          GRAD(g, g->att), &g->att_saved, g->pn[s], W(g, g->p_f),
                                          W(g, g->p_g), W(g, g->p_h), W(g, g->p_o),
                                          W(g, g->p_gamma), g->att_scratch, B, Co, r * r, st));
        CHECK(pixelnorm_backward_cuda(GRAD(g, g->act[s]), GRAD(g, g->pn[s]), g->pn[s], g->rn[s], B,
                                      Co, r * r, st));
        CHECK(leaky_relu_backward_cuda(GRAD(g, g->conv[s]), GRAD(g, g->act[s]), g->conv[s],
                                       G_SLOPE, n, st));
        CHECK(conv2d_backward_cuda(GRAD(g, g->up[s]), DW(g, g->p_conv_w[s]), DW(g, g->p_conv_b[s]),
                                   GRAD(g, g->conv[s]), g->up[s], W(g, g->p_conv_w[s]), B, Ci, r,
                                   r, Co, 3, 1, 1, st));
        r /= 2;
        CHECK(upsample2x_backward_cuda(GRAD(g, gen_stage_input(g, s)), GRAD(g, g->up[s]), B, Ci, r,
                                       r, st));
        CHECK(gen_l1_backward(g, s, B, l1, st));
    }
    CHECK(pixelnorm_backward_cuda(GRAD(g, g->fc), GRAD(g, g->pn0), g->pn0, g->rn0, B, C0, 16, st));
    CHECK(leaky_relu_backward_cuda(GRAD(g, g->fc_pre), GRAD(g, g->fc), g->fc_pre, G_SLOPE,
                                   (long)B * C0 * 16, st));
    CHECK(linear_backward_cuda(c->n_classes ? GRAD(g, g->zc) : NULL, DW(g, g->p_fc_w),
                               DW(g, g->p_fc_b), GRAD(g, g->fc_pre), g->zin, W(g, g->p_fc_w), B, Z,
                               C0 * 16, st));
    if (c->n_classes)
        CHECK(embedding_backward_cuda(DW(g, g->p_embed), GRAD(g, g->zc), g->labels, B, Z, st));
    return 0;
}

// ---------------------------------------------------------------------------------------------
// D: discriminator_forward / discriminator_backward at the last level

// The first stage D runs at its level.
static int disc_first_stage(const GanCudaDisc *d) { return d->n_stages - d->level; }

// The output of stage k (after its attention block, if any).
static const float *disc_stage_output(const GanCudaDisc *d, int k) {
    return k == d->attn_stage ? d->att : d->act[k];
}

// The tensor that feeds stage k (k == n_stages: the flattened features), sagan.c's: below the
// last level the first stage k0 reads fromRGB's output, kept in act[k0 - 1]; while a level fades
// in, stage k0 + 1 reads the blend.
static const float *disc_stage_input(const GanCudaDisc *d, int k) {
    int k0 = disc_first_stage(d);
    if (k == 0) return d->a0;
    if (k == k0) return d->act[k - 1];
    if (k == k0 + 1 && d->alpha < 1.0f) return d->blend;
    return disc_stage_output(d, k - 1);
}

// LReLU layer l of D over B images, with its own slopes or (ref_on) the penalty's pattern.
static int disc_lrelu_forward(GanCuda *gc, GanCudaDisc *d, int l, float *out, const float *inp,
                              int B) {
    long n = (long)B * disc_lrelu_numel(d, &gc->cfg, l);
    if (d->ref_on)
        return leaky_relu_pattern_forward_cuda(out, inp, d->pat[l], D_SLOPE, n, gc->stream);
    return leaky_relu_forward_cuda(out, inp, D_SLOPE, n, gc->stream);
}

static int disc_lrelu_backward(GanCuda *gc, GanCudaDisc *d, int l, float *dinp, const float *dout,
                               const float *inp, int B) {
    long n = (long)B * disc_lrelu_numel(d, &gc->cfg, l);
    return leaky_relu_backward_cuda(dinp, dout, d->ref_on ? d->pat[l] : inp, D_SLOPE, n,
                                    gc->stream);
}

// D's image layer at its level: conv0 (3x3) at the last level, else fromRGB of the level (1x1)
// into act[k0 - 1], with its LReLU.
static int disc_rgb_forward(GanCuda *gc, GanCudaDisc *d, const float *x, int B) {
    const SaganConfig *c = &gc->cfg;
    int k0 = disc_first_stage(d), r = c->img >> k0, L = d->level;
    if (k0 == 0) {
        CHECK(conv2d_forward_cuda(d->c0, x, W(d, d->p_in_w), W(d, d->p_in_b), B, c->channels, r,
                                  r, d->chan[0], 3, 1, 1, gc->stream));
        return disc_lrelu_forward(gc, d, 0, d->a0, d->c0, B);
    }
    CHECK(conv2d_forward_cuda(d->conv[k0 - 1], x, W(d, d->p_rgb_w[L]), W(d, d->p_rgb_b[L]), B,
                              c->channels, r, r, d->chan[k0], 1, 1, 0, gc->stream));
    return disc_lrelu_forward(gc, d, k0, d->act[k0 - 1], d->conv[k0 - 1], B);
}

// The fade-in's old path: x pooled to R/2, through fromRGB of level L - 1 and its LReLU, blended
// with stage k0's output into d->blend.
static int disc_fade_forward(GanCuda *gc, GanCudaDisc *d, const float *x, int B) {
    const SaganConfig *c = &gc->cfg;
    int k0 = disc_first_stage(d), r = c->img >> k0, L = d->level, Co = d->chan[k0 + 1];
    long n = (long)B * Co * (r / 2) * (r / 2);
    CHECK(avgpool2x_forward_cuda(d->xpool, x, B, c->channels, r, r, gc->stream));
    CHECK(conv2d_forward_cuda(d->old_pre, d->xpool, W(d, d->p_rgb_w[L - 1]),
                              W(d, d->p_rgb_b[L - 1]), B, c->channels, r / 2, r / 2, Co, 1, 1, 0,
                              gc->stream));
    CHECK(disc_lrelu_forward(gc, d, k0 + 1, d->old_act, d->old_pre, B));
    return lerp_forward_cuda(d->blend, disc_stage_output(d, k0), d->old_act, d->alpha, n,
                             gc->stream);
}

// D's layers up to its last map (disc_stage_input(d, n_stages), sagan.c's
// discriminator_features), at its level, on x (B, C, R, R), R = 4 << level (device, kept for
// the backward).
static int disc_forward_stages(GanCuda *gc, GanCudaDisc *d, const float *x, int B) {
    const SaganConfig *c = &gc->cfg;
    cudaStream_t st = gc->stream;
    int k0 = disc_first_stage(d), r = c->img >> k0;
    d->x = x;
    CHECK(disc_rgb_forward(gc, d, x, B));
    for (int k = k0; k < d->n_stages; k++) {
        const float *in = disc_stage_input(d, k);
        int Ci = d->chan[k], Co = d->chan[k + 1];
        CHECK(conv2d_forward_cuda(d->conv[k], in, W(d, d->p_conv_w[k]), W(d, d->p_conv_b[k]), B,
                                  Ci, r, r, Co, 4, 2, 1, st));
        r /= 2;
        CHECK(disc_lrelu_forward(gc, d, k + 1, d->act[k], d->conv[k], B));
        if (k == d->attn_stage)
            CHECK(attention_forward_cuda(d->att, &d->att_saved, d->act[k], W(d, d->p_f),
                                         W(d, d->p_g), W(d, d->p_h), W(d, d->p_o),
                                         W(d, d->p_gamma), B, Co, r * r, st));
        if (k == k0 && d->alpha < 1.0f) CHECK(disc_fade_forward(gc, d, x, B));
    }
    return 0;
}

// x (B, C, R, R), y (B) or NULL: device, kept for the backward. Logits in d->out. drop > 0:
// dropout at that rate on the features before the last layer, its key drawn from *seed (host).
static int disc_forward(GanCuda *gc, GanCudaDisc *d, const float *x, const int32_t *y, int B,
                        float drop, uint64_t *seed) {
    const SaganConfig *c = &gc->cfg;
    cudaStream_t st = gc->stream;
    int F = d->chan[d->n_stages] * 16;
    d->labels = y;
    CHECK(disc_forward_stages(gc, d, x, B));
    const float *feat = disc_stage_input(d, d->n_stages);
    d->dropped = drop > 0.0f;
    if (d->dropped) {
        CHECK(dropout_forward_cuda(d->feat_drop, d->drop_mask, feat, drop, seed, (long)B * F, st));
        feat = d->feat_drop;
    }
    CHECK(linear_forward_cuda(d->out, feat, W(d, d->p_fc_w), W(d, d->p_fc_b), B, F, 1, st));
    if (c->n_classes) // the projection: logit += <embed(y), features>
        CHECK(projection_forward_cuda(d->out, W(d, d->p_embed), y, feat, B, F, st));
    return 0;
}

// From the gradient in GRAD(d, last map) down to the input: parameter gradients when pg; dx (B,
// C, R, R), if not NULL, accumulated (sagan.c's backward_stages).
static int disc_backward_stages(GanCuda *gc, GanCudaDisc *d, int B, int pg, float *dx) {
    const SaganConfig *c = &gc->cfg;
    cudaStream_t st = gc->stream;
    int k0 = disc_first_stage(d), L = d->level, r = c->img >> d->n_stages;
    for (int k = d->n_stages - 1; k >= k0; k--) {
        int Ci = d->chan[k], Co = d->chan[k + 1];
        if (k == k0 && d->alpha < 1.0f) { // the blend's gradient to stage k0 and the old path
            long n = (long)B * Co * r * r;
            CHECK(lerp_backward_cuda(GRAD(d, disc_stage_output(d, k0)), GRAD(d, d->old_act),
                                     GRAD(d, d->blend), d->alpha, n, st));
            CHECK(disc_lrelu_backward(gc, d, k0 + 1, GRAD(d, d->old_pre), GRAD(d, d->old_act),
                                      d->old_pre, B));
            CHECK(conv2d_backward_cuda(dx ? GRAD(d, d->xpool) : NULL,
                                       pg ? DW(d, d->p_rgb_w[L - 1]) : NULL,
                                       pg ? DW(d, d->p_rgb_b[L - 1]) : NULL, GRAD(d, d->old_pre),
                                       d->xpool, W(d, d->p_rgb_w[L - 1]), B, c->channels, r, r,
                                       Co, 1, 1, 0, st));
            if (dx)
                CHECK(avgpool2x_backward_cuda(dx, GRAD(d, d->xpool), B, c->channels, 2 * r,
                                              2 * r, st));
        }
        if (k == d->attn_stage)
            CHECK(attention_backward_cuda(
                GRAD(d, d->act[k]), pg ? DW(d, d->p_f) : NULL, pg ? DW(d, d->p_g) : NULL,
                pg ? DW(d, d->p_h) : NULL, pg ? DW(d, d->p_o) : NULL,
                pg ? DW(d, d->p_gamma) : NULL, GRAD(d, d->att), &d->att_saved, d->act[k],
                W(d, d->p_f), W(d, d->p_g), W(d, d->p_h), W(d, d->p_o), W(d, d->p_gamma),
                d->att_scratch, B, Co, r * r, st));
        CHECK(disc_lrelu_backward(gc, d, k + 1, GRAD(d, d->conv[k]), GRAD(d, d->act[k]),
                                  d->conv[k], B));
        const float *in = disc_stage_input(d, k);
        CHECK(conv2d_backward_cuda(GRAD(d, in), pg ? DW(d, d->p_conv_w[k]) : NULL,
                                   pg ? DW(d, d->p_conv_b[k]) : NULL, GRAD(d, d->conv[k]), in,
                                   W(d, d->p_conv_w[k]), B, Ci, r * 2, r * 2, Co, 4, 2, 1, st));
        r *= 2;
    }
    if (k0 == 0) {
        CHECK(disc_lrelu_backward(gc, d, 0, GRAD(d, d->c0), GRAD(d, d->a0), d->c0, B));
        if (dx || pg)
            CHECK(conv2d_backward_cuda(dx, pg ? DW(d, d->p_in_w) : NULL,
                                       pg ? DW(d, d->p_in_b) : NULL, GRAD(d, d->c0), d->x,
                                       W(d, d->p_in_w), B, c->channels, r, r, d->chan[0], 3, 1, 1,
                                       st));
        return 0;
    }
    CHECK(disc_lrelu_backward(gc, d, k0, GRAD(d, d->conv[k0 - 1]), GRAD(d, d->act[k0 - 1]),
                              d->conv[k0 - 1], B));
    if (dx || pg)
        CHECK(conv2d_backward_cuda(dx, pg ? DW(d, d->p_rgb_w[L]) : NULL,
                                   pg ? DW(d, d->p_rgb_b[L]) : NULL, GRAD(d, d->conv[k0 - 1]),
                                   d->x, W(d, d->p_rgb_w[L]), B, c->channels, r, r, d->chan[k0], 1,
                                   1, 0, st));
    return 0;
}

// dout (B): the loss's gradient w.r.t. the logits. Parameter gradients when pg; dx (B, C, R, R),
// if not NULL, accumulated.
static int disc_backward(GanCuda *gc, GanCudaDisc *d, const float *dout, int B, int pg,
                         float *dx) {
    const SaganConfig *c = &gc->cfg;
    cudaStream_t st = gc->stream;
    int n_st = d->n_stages, F = d->chan[n_st] * 16;
    CHECK(CUDA_OK(cudaMemsetAsync(d->dacts, 0, sizeof(float) * (size_t)d->acts_total, st)));
    const float *feat = d->dropped ? d->feat_drop : disc_stage_input(d, n_st);
    float *dfeat = GRAD(d, feat);
    CHECK(linear_backward_cuda(dfeat, pg ? DW(d, d->p_fc_w) : NULL, pg ? DW(d, d->p_fc_b) : NULL,
                               dout, feat, W(d, d->p_fc_w), B, F, 1, st));
    if (c->n_classes)
        CHECK(projection_backward_cuda(dfeat, pg ? DW(d, d->p_embed) : NULL, dout,
                                       W(d, d->p_embed), d->labels, feat, B, F, st));
    if (d->dropped)
        CHECK(dropout_backward_cuda(GRAD(d, disc_stage_input(d, n_st)), dfeat, d->drop_mask,
                                    (long)B * F, st));
    return disc_backward_stages(gc, d, B, pg, dx);
}

// ---------------------------------------------------------------------------------------------
// the trainer

// Whether this step cannot do what gan_step would do with t: a data-parallel split that does not
// divide the batch. Returns 1 with the reason in why, or 0.
static int gan_cuda_refuses(const GanTrainer *t, char *why, size_t len) {
    const GanHparams *h = &t->hp;
    const char *no = NULL;
    if (t->dp_size < 1 || t->dp_rank < 0 || t->dp_rank >= t->dp_size ||
             h->batch % t->dp_size)
        no = "this data-parallel split of the batch";
    if (!no) return 0;
    snprintf(why, len, "the GPU training step does not do %s: train on the CPU", no);
    return 1;
}

// Whether t is the trainer gc was built for: the same config (so the same parameter layout) and
// batch.
// Whether two configs build networks of one layout.
static int cfg_same(const SaganConfig *a, const SaganConfig *b) {
    return a->ch == b->ch && a->z_dim == b->z_dim && a->img == b->img &&
           a->channels == b->channels && a->n_classes == b->n_classes &&
           a->attn_res == b->attn_res && a->prog == b->prog;
}

static int gan_cuda_fits(const GanCuda *gc, const GanTrainer *t) {
    return cfg_same(&gc->cfg, &t->cfg) && t->hp.batch == gc->B_all &&
           t->dp_size == gc->dp_size && t->dp_rank == gc->dp_rank &&
           params_cuda_fits(&gc->G.ps, &t->G.ps) && params_cuda_fits(&gc->D.ps, &t->D.ps);
}

static void gen_indices(GanCudaGen *g, const Generator *h) {
    g->n_stages = h->n_stages;
    g->attn_stage = h->attn_stage;
    memcpy(g->chan, h->chan, sizeof g->chan);
    g->p_embed = h->p_embed;
    g->p_fc_w = h->p_fc_w;
    g->p_fc_b = h->p_fc_b;
    memcpy(g->p_conv_w, h->p_conv_w, sizeof g->p_conv_w);
    memcpy(g->p_conv_b, h->p_conv_b, sizeof g->p_conv_b);
    g->p_f = h->p_f;
    g->p_g = h->p_g;
    g->p_h = h->p_h;
    g->p_o = h->p_o;
    g->p_gamma = h->p_gamma;
    g->p_out_w = h->p_out_w;
    g->p_out_b = h->p_out_b;
    memcpy(g->p_rgb_w, h->p_rgb_w, sizeof g->p_rgb_w);
    memcpy(g->p_rgb_b, h->p_rgb_b, sizeof g->p_rgb_b);
    g->level = h->level;
    g->alpha = h->alpha;
}

static void disc_indices(GanCudaDisc *d, const Discriminator *h) {
    d->n_stages = h->n_stages;
    d->attn_stage = h->attn_stage;
    memcpy(d->chan, h->chan, sizeof d->chan);
    d->p_in_w = h->p_in_w;
    d->p_in_b = h->p_in_b;
    memcpy(d->p_conv_w, h->p_conv_w, sizeof d->p_conv_w);
    memcpy(d->p_conv_b, h->p_conv_b, sizeof d->p_conv_b);
    d->p_f = h->p_f;
    d->p_g = h->p_g;
    d->p_h = h->p_h;
    d->p_o = h->p_o;
    d->p_gamma = h->p_gamma;
    d->p_fc_w = h->p_fc_w;
    d->p_fc_b = h->p_fc_b;
    d->p_embed = h->p_embed;
    memcpy(d->p_rgb_w, h->p_rgb_w, sizeof d->p_rgb_w);
    memcpy(d->p_rgb_b, h->p_rgb_b, sizeof d->p_rgb_b);
    d->level = h->level;
    d->alpha = h->alpha;
}

// G's EMA buffers: ema and w_sn (G total each), u, v, one sigma.
static int ema_alloc(GanCuda *gc) {
    const GanCudaParams *g = &gc->G.ps;
    long n = 2 * g->total + g->u_total + g->v_total + 1;
    if (cudaMalloc((void **)&gc->ema_buf, sizeof(float) * (size_t)n) != cudaSuccess)
        return KERNELS_ENOMEM;
    gc->ema = gc->ema_buf;
    gc->ema_w_sn = gc->ema + g->total;
    gc->ema_u = gc->ema_w_sn + g->total;
    gc->ema_v = gc->ema_u + g->u_total;
    gc->ema_sigma = gc->ema_v + g->v_total;
    return 0;
}

// t's EMA (ema, ema_u, ema_v; pageable host memory) to or from the device, then waits. (t's
// buffers are written on the way down; the trainer itself is not.)
static int ema_copy(GanCuda *gc, const GanTrainer *t, int up) {
    const GanCudaParams *g = &gc->G.ps;
    struct {
        float *dev, *host;
        long n;
    } b[] = {{gc->ema, t->ema, g->total}, {gc->ema_u, t->ema_u, g->u_total},
             {gc->ema_v, t->ema_v, g->v_total}};
    for (int k = 0; k < 3; k++) {
        size_t bytes = sizeof(float) * (size_t)b[k].n;
        if (!bytes) continue;
        CHECK(CUDA_OK(up ? cudaMemcpyAsync(b[k].dev, b[k].host, bytes, cudaMemcpyHostToDevice,
                                           gc->stream)
                         : cudaMemcpyAsync(b[k].host, b[k].dev, bytes, cudaMemcpyDeviceToHost,
                                           gc->stream)));
    }
    return CUDA_OK(cudaStreamSynchronize(gc->stream));
}

// gan.c's gan_ema_update after a step (t->step already counted): a copy of G until ema_start
// steps are done (or after a step without the EMA), else ema = decay ema + (1 - decay) G (lerp's
// formula is that expression) and one power iteration on the EMA's SN weights.
static int ema_update(GanCuda *gc, GanTrainer *t) {
    const GanCudaParams *g = &gc->G.ps;
    cudaStream_t st = gc->stream;
    if (!t->ema_live || t->step <= t->hp.ema_start) {
        CHECK(CUDA_OK(cudaMemcpyAsync(gc->ema, g->params, sizeof(float) * (size_t)g->total,
                                      cudaMemcpyDeviceToDevice, st)));
        if (g->u_total)
            CHECK(CUDA_OK(cudaMemcpyAsync(gc->ema_u, g->sn_u, sizeof(float) * (size_t)g->u_total,
                                          cudaMemcpyDeviceToDevice, st)));
        if (g->v_total)
            CHECK(CUDA_OK(cudaMemcpyAsync(gc->ema_v, g->sn_v, sizeof(float) * (size_t)g->v_total,
                                          cudaMemcpyDeviceToDevice, st)));
        t->ema_live = 1;
        return 0;
    }
    CHECK(lerp_forward_cuda(gc->ema, gc->ema, g->params, t->hp.ema_decay, g->total, st));
    if (g->sn_off) return 0;
    for (int i = 0; i < g->n; i++) {
        const Param *p = &g->p[i];
        if (!p->sn) continue;
        CHECK(specnorm_forward_cuda(gc->ema_w_sn + p->offset, gc->ema_v + p->v_offset,
                                    gc->ema_u + p->u_offset, gc->ema_sigma, gc->ema + p->offset,
                                    p->rows, p->cols, 1, st));
    }
    return 0;
}

int gan_cuda_upload(GanCuda *gc, const GanTrainer *t) {
    if (!gan_cuda_fits(gc, t)) return KERNELS_EINVAL;
    CHECK(CUDA_OK(cudaStreamSynchronize(gc->stream))); // nothing of ours still reads the copy
    CHECK(params_cuda_upload(&gc->G.ps, &t->G.ps, gc->stream));
    CHECK(params_cuda_upload(&gc->D.ps, &t->D.ps, gc->stream));
    return ema_copy(gc, t, 1);
}

// Device memory for a net's activations and their gradient twins (the same size each).
static int acts_alloc(float **acts, float **dacts, long n) {
    if (cudaMalloc((void **)acts, sizeof(float) * (size_t)n) != cudaSuccess ||
        cudaMalloc((void **)dacts, sizeof(float) * (size_t)n) != cudaSuccess)
        return KERNELS_ENOMEM;
    return 0;
}

int gan_cuda_init(GanCuda *gc, const GanTrainer *t, char *err, size_t errlen) {
    memset(gc, 0, sizeof *gc);
    char why[256];
    if (gan_cuda_refuses(t, why, sizeof why)) {
        snprintf(err, errlen, "%s", why);
        return KERNELS_EINVAL;
    }
    if (!cuda_device_available(why, sizeof why)) {
        snprintf(err, errlen, "no GPU: %s", why);
        return KERNELS_ECUDA;
    }
    gc->cfg = t->cfg;
    // Data parallel: the device holds this process's share of the batch (gan.c's slices).
    gc->B_all = t->hp.batch;
    gc->dp_size = t->dp_size;
    gc->dp_rank = t->dp_rank;
    gc->B = gc->B_all / gc->dp_size;
    gen_indices(&gc->G, &t->G);
    disc_indices(&gc->D, &t->D);
    params_cuda_layout(&gc->G.ps, &t->G.ps);
    params_cuda_layout(&gc->D.ps, &t->D.ps);
    Carver gcv = {0}, dcv = {0}, bcv = {0};
    gen_carve(&gc->G, &gc->cfg, gc->B, &gcv);
    disc_carve(&gc->D, &gc->cfg, 2L * gc->B, &dcv);
    batch_carve(gc, &bcv);
    gc->G.acts_total = gcv.used;
    gc->D.acts_total = dcv.used;
    int rc = CUDA_OK(cudaStreamCreateWithFlags(&gc->stream, cudaStreamNonBlocking));
    if (!rc) rc = params_cuda_alloc(&gc->G.ps);
    if (!rc) rc = params_cuda_alloc(&gc->D.ps);
    if (!rc) rc = acts_alloc(&gc->G.acts, &gc->G.dacts, gcv.used);
    if (!rc) rc = acts_alloc(&gc->D.acts, &gc->D.dacts, dcv.used);
    long img = (long)gc->cfg.channels * gc->cfg.img * gc->cfg.img;
    size_t B = (size_t)gc->B, Z = (size_t)gc->cfg.z_dim;
    if (!rc && (cudaMalloc((void **)&gc->batch, sizeof(float) * (size_t)bcv.used) != cudaSuccess ||
                cudaMalloc((void **)&gc->y, sizeof(int32_t) * 3 * B) != cudaSuccess ||
                cudaMallocHost((void **)&gc->x_host, sizeof(float) * B * img) != cudaSuccess ||
                cudaMallocHost((void **)&gc->z_host, sizeof(float) * 2 * B * Z) != cudaSuccess ||
                cudaMallocHost((void **)&gc->y_host, sizeof(int32_t) * 3 * B) != cudaSuccess))
        rc = KERNELS_ENOMEM;
    if (!rc) { // labels stay 0 where an unconditional step draws none (finetune.c's)
        memset(gc->y_host, 0, sizeof(int32_t) * 3 * B);
        rc = ema_alloc(gc);
    }
    // the penalties' buffers, the device doubles, the orthogonal term's scratch
    Carver pcv = {0};
    pen_carve(gc, &pcv);
    long ortho = 1;
    for (int i = 0; i < t->G.ps.n; i++)
        if (generator_is_ortho(&t->G, i)) {
            const Param *p = &t->G.ps.p[i];
            long k = ortho_scratch_floats_cuda(p->shape[0], (int)(p->numel / p->shape[0]));
            if (k > ortho) ortho = k;
        }
    if (!rc && (cudaMalloc((void **)&gc->pen_buf, sizeof(float) * (size_t)pcv.used) != cudaSuccess ||
                cudaMalloc((void **)&gc->y2, sizeof(int32_t) * 2 * B) != cudaSuccess ||
                cudaMalloc((void **)&gc->dv, sizeof(double) * (DV_TERMS + B)) != cudaSuccess ||
                cudaMalloc((void **)&gc->ortho_scratch, sizeof(float) * (size_t)ortho) !=
                    cudaSuccess ||
                cudaMallocHost((void **)&gc->alpha_host, sizeof(float) * B) != cudaSuccess))
        rc = KERNELS_ENOMEM;
    if (!rc) {
        gcv = (Carver){gc->G.acts, 0};
        dcv = (Carver){gc->D.acts, 0};
        bcv = (Carver){gc->batch, 0};
        pcv = (Carver){gc->pen_buf, 0};
        gen_carve(&gc->G, &gc->cfg, gc->B, &gcv);
        disc_carve(&gc->D, &gc->cfg, 2L * gc->B, &dcv);
        batch_carve(gc, &bcv);
        pen_carve(gc, &pcv);
        gc->dv_l1 = gc->dv + DV_L1;
        gc->dv_ortho = gc->dv + DV_ORTHO;
        gc->dv_pen = gc->dv + DV_PEN;
        gc->dv_terms = gc->dv + DV_TERMS;
        // the penalties' output gradients of D's first pass: ones (alpha_host is free until a
        // step draws into it; gan_cuda_upload waits for the copy)
        for (size_t b = 0; b < B; b++) gc->alpha_host[b] = 1.0f;
        rc = CUDA_OK(cudaMemcpyAsync(gc->pen_ones, gc->alpha_host, sizeof(float) * B,
                                     cudaMemcpyHostToDevice, gc->stream));
        if (!rc) rc = gan_cuda_upload(gc, t);
    }
    if (rc) {
        double mb = 4.0 * (2.0 * (gcv.used + dcv.used) + bcv.used + pcv.used + ortho +
                           6.0 * (t->G.ps.total + t->D.ps.total)) / 1e6;
        snprintf(err, errlen,
                 "cannot set up training on the GPU: %s (about %.0f MB of device memory)",
                 kernels_strerror(rc), mb);
        gan_cuda_free(gc);
    }
    return rc;
}

void gan_cuda_free(GanCuda *gc) {
    if (gc->stream) cudaStreamSynchronize(gc->stream);
    cudaFree(gc->G.ps.buf);
    cudaFree(gc->D.ps.buf);
    cudaFree(gc->G.acts);
    cudaFree(gc->G.dacts);
    cudaFree(gc->D.acts);
    cudaFree(gc->D.dacts);
    cudaFree(gc->batch);
    cudaFree(gc->y);
    cudaFree(gc->ema_buf);
    cudaFree(gc->pen_buf);
    cudaFree(gc->y2);
    cudaFree(gc->dv);
    cudaFree(gc->ortho_scratch);
    cudaFreeHost(gc->alpha_host);
    cudaFreeHost(gc->x_host);
    cudaFreeHost(gc->z_host);
    cudaFreeHost(gc->y_host);
    if (gc->stream) {
        cuda_stream_forget(gc->stream);
        cudaStreamDestroy(gc->stream);
    }
    memset(gc, 0, sizeof *gc);
}

int gan_cuda_download(GanCuda *gc, GanTrainer *t) {
    if (!gan_cuda_fits(gc, t)) return KERNELS_EINVAL;
    CHECK(params_cuda_download(&gc->G.ps, &t->G.ps, gc->stream));
    CHECK(params_cuda_download(&gc->D.ps, &t->D.ps, gc->stream));
    return ema_copy(gc, t, 0);
}

// gan.c's draw_fakes: the whole batch's latents into t->z (as gan.c leaves them) and its labels
// drawn; this process's slice of both into z and y (B latents, B labels).
static void draw_fakes(GanCuda *gc, GanTrainer *t, float *z, int32_t *y) {
    int B_all = gc->B_all, B = gc->B, first = gc->dp_rank * gc->B, Z = t->cfg.z_dim;
    rng_normal(&t->rng, t->z, (long)B_all * Z);
    memcpy(z, t->z + (long)first * Z, sizeof(float) * (size_t)B * Z);
    if (t->cfg.n_classes)
        for (int b = 0; b < B_all; b++) {
            int32_t k = (int32_t)rng_below(&t->rng, t->cfg.n_classes);
            if (b >= first && b < first + B) y[b - first] = k;
        }
}

// Data parallel: replaces a device buffer by its mean over the processes (GanCuda.reduce).
static int dp_mean(GanCuda *gc, float *dev, long n) {
    if (gc->dp_size <= 1) return 0;
    return gc->reduce(gc->reduce_ctx, dev, n, gc->stream);
}

// gan.c's gan_penalty_backward on the device: R1 (r1 = 1) or WGAN-GP (r1 = 0) at x (B images,
// device), labels y (B) or NULL, with weight; its value into gc->dv_pen[slot]. D's gradient slots
// accumulate weight grad_theta P (SN's fold comes after). D runs without dropout here; its
// activations are left as the two-sided pass leaves them. FP32 convolutions whatever the BF16
// switch (cuda_fp32_hold), as gan.c's penalty holds them.
static int pen_backward_fp32(GanCuda *gc, int r1, float weight, float fd_step, const float *x,
                             const int32_t *y, int slot);

static int pen_backward(GanCuda *gc, int r1, float weight, float fd_step, const float *x,
                        const int32_t *y, int slot) {
    int held = cuda_fp32_hold(1);
    int rc = pen_backward_fp32(gc, r1, weight, fd_step, x, y, slot);
    cuda_fp32_hold(held);
    return rc;
}

static int pen_backward_fp32(GanCuda *gc, int r1, float weight, float fd_step, const float *x,
                             const int32_t *y, int slot) {
    const SaganConfig *c = &gc->cfg;
    GanCudaDisc *d = &gc->D;
    cudaStream_t st = gc->stream;
    int B = gc->B;
    long img = (long)c->channels * c->img * c->img;
    // every g_b from one backward of sum_b D(x_b)
    CHECK(CUDA_OK(cudaMemsetAsync(gc->pen_grad, 0, sizeof(float) * (size_t)(B * img), st)));
    CHECK(disc_forward(gc, d, x, y, B, 0.0f, NULL));
    CHECK(disc_backward(gc, d, gc->pen_ones, B, 0, gc->pen_grad));
    CHECK(grad_penalty_fd_prepare_cuda(gc->pen_x2, gc->pen_dout, gc->dv_pen + slot, gc->dv_terms,
                                       gc->pen_grad, x, r1, weight, fd_step, B, img, st));
    for (int half = 0; half < 2; half++) {
        if (y)
            CHECK(CUDA_OK(cudaMemcpyAsync(gc->y2 + half * B, y, sizeof(int32_t) * (size_t)B,
                                          cudaMemcpyDeviceToDevice, st)));
        // both halves take the LReLU slopes of x (see gan.c)
        for (int l = 0; l <= d->n_stages; l++) {
            long n = (long)B * disc_lrelu_numel(d, c, l);
            CHECK(CUDA_OK(cudaMemcpyAsync(d->pat[l] + half * n, l ? d->conv[l - 1] : d->c0,
                                          sizeof(float) * (size_t)n, cudaMemcpyDeviceToDevice,
                                          st)));
        }
    }
    d->ref_on = 1;
    int rc = disc_forward(gc, d, gc->pen_x2, y ? gc->y2 : NULL, 2 * B, 0.0f, NULL);
    if (!rc) rc = disc_backward(gc, d, gc->pen_dout, 2 * B, 1, NULL);
    d->ref_on = 0;
    return rc;
}

// Host to device on the step's stream, from gc's pinned buffers (which nothing writes again
// before the step's final wait).
static int upload(GanCuda *gc, void *dev, const void *host, size_t bytes) {
    return CUDA_OK(cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice, gc->stream));
}

// The frozen D's term of a tune step (gan_cuda_tune_step): its last maps of G's frames (device
// gc->G.img, classes y_host) down to the host, the caller's loss there, its gradient up and back
// through the frozen D into gc->dimg (sagan.c's discriminator_backward_features). Waits for the
// GPU (the loss runs on the host).
static int tune_term(GanCuda *gc, GanCudaTune *tu, const int32_t *y_host) {
    GanCudaDisc *d = &tu->D;
    cudaStream_t st = gc->stream;
    int B = gc->B;
    size_t bytes = sizeof(float) * (size_t)B * d->chan[d->n_stages] * 16;
    CHECK(disc_forward_stages(gc, d, gc->G.img, B));
    const float *map = disc_stage_input(d, d->n_stages);
    CHECK(CUDA_OK(cudaMemcpyAsync(tu->feat_host, map, bytes, cudaMemcpyDeviceToHost, st)));
    CHECK(CUDA_OK(cudaStreamSynchronize(st)));
    CHECK(tu->loss(tu->ctx, tu->feat_host, y_host, B, tu->dfeat_host));
    CHECK(CUDA_OK(cudaMemsetAsync(d->dacts, 0, sizeof(float) * (size_t)d->acts_total, st)));
    CHECK(CUDA_OK(cudaMemcpyAsync(GRAD(d, map), tu->dfeat_host, bytes, cudaMemcpyHostToDevice, st)));
    return disc_backward_stages(gc, d, B, 0, gc->dimg);
}

// distill.c's teacher half of a step: the teacher's frames of the G step's latents and classes
// (device) and the teacher D's maps of them, kept in tu->timg (the teacher G's image buffer) and
// tu->tfeat.
static int distill_teacher(GanCuda *gc, GanCudaTune *tu, const float *z, const int32_t *y) {
    GanCudaDisc *d = &tu->D;
    int B = gc->B;
    CHECK(gen_forward(gc, &tu->T, z, y, B, 0.0f));
    const SaganConfig *c = &gc->cfg;
    size_t img = sizeof(float) * (size_t)B * c->channels * c->img * c->img;
    CHECK(CUDA_OK(cudaMemcpyAsync(tu->timg, tu->T.img, img, cudaMemcpyDeviceToDevice, gc->stream)));
    CHECK(disc_forward_stages(gc, d, tu->timg, B));
    size_t map = sizeof(float) * (size_t)B * d->chan[d->n_stages] * 16;
    return CUDA_OK(cudaMemcpyAsync(tu->tfeat, disc_stage_input(d, d->n_stages), map,
                                   cudaMemcpyDeviceToDevice, gc->stream));
}

// distill.c's matching terms, added to gc->dimg: w_pix times the mean squared difference of G's
// frames from the teacher's, and w_feat times that of the teacher D's maps of both (backward
// through the teacher D); their sums into tu->sums.
static int distill_terms(GanCuda *gc, GanCudaTune *tu) {
    const SaganConfig *c = &gc->cfg;
    GanCudaDisc *d = &tu->D;
    cudaStream_t st = gc->stream;
    int B = gc->B;
    long n = (long)B * c->channels * c->img * c->img, nf = (long)B * d->chan[d->n_stages] * 16;
    CHECK(sq_diff_cuda(tu->sums, gc->dimg, gc->G.img, tu->timg, (float)(2.0 * tu->w_pix / n), n,
                       1, st));
    CHECK(disc_forward_stages(gc, d, gc->G.img, B));
    const float *map = disc_stage_input(d, d->n_stages);
    CHECK(CUDA_OK(cudaMemsetAsync(d->dacts, 0, sizeof(float) * (size_t)d->acts_total, st)));
    CHECK(sq_diff_cuda(tu->sums + 1, GRAD(d, map), map, tu->tfeat, (float)(2.0 * tu->w_feat / nf),
                       nf, 0, st));
    return disc_backward_stages(gc, d, B, 0, gc->dimg);
}

// gan_cuda_step, or with tu a tune step (gan_cuda_tune_step): the same D step and draws; its G
// step takes one more power iteration, adds tu's terms (finetune: the frozen D's, and the anchor
// on G's gradient; distill: the adversarial term scaled, the teacher's two matching terms), and
// neither averages over processes nor adds the orthogonal term (finetune.c's and distill.c's G
// steps).
static int step(GanCuda *gc, GanTrainer *t, const Dataset *data, GanCudaTune *tu) {
    const SaganConfig *c = &gc->cfg;
    const GanHparams *h = &t->hp;
    int B = gc->B, Z = c->z_dim, cond = c->n_classes > 0;
    long img = (long)c->channels * c->img * c->img;
    cudaStream_t st = gc->stream;
    char why[256];
    if (gan_cuda_refuses(t, why, sizeof why) || !gan_cuda_fits(gc, t)) return KERNELS_EINVAL;
    if (gc->dp_size > 1 && !gc->reduce) return KERNELS_EINVAL;
    if (h->penalty_every < 1 || gan_hparams_check(h, why, sizeof why)) return KERNELS_EINVAL;
    gan_apply_switches(t); // SN on or off, and FreezeD's flags, read by params_cuda_adam
    gc->G.ps.sn_off = t->G.ps.sn_off;
    gc->D.ps.sn_off = t->D.ps.sn_off;
    int r1 = h->r1_gamma > 0.0f, gp = h->gp_lambda > 0.0f;
    int pen_step = (r1 || gp) && t->step % h->penalty_every == 0;
    // progressive growing: this step's level on the host networks and their device twins (gan.c's
    // gan_set_level); the D step's batch (B, C, R, R) at its resolution
    int level;
    float alpha;
    gan_prog_level(h, t->G.n_stages, t->step, &level, &alpha);
    if (generator_set_level(&t->G, level, alpha) || discriminator_set_level(&t->D, level, alpha))
        return KERNELS_EINVAL; // a schedule without the progressive layers (cfg.prog)
    t->level = gc->G.level = gc->D.level = level;
    t->alpha = gc->G.alpha = gc->D.alpha = alpha;
    int R = 4 << level, grow = c->prog && (R < c->img || alpha < 1.0f);
    long imgR = (long)c->channels * R * R;
    if (tu && grow) return KERNELS_EINVAL; // (their G steps are at the full level only)
    if (data->c != c->channels || data->h != c->img || data->w != c->img || data->n < 1)
        return KERNELS_EINVAL;
    if (cond && !data->labels) return KERNELS_EINVAL;
    // A step that failed part-way may have left copies from the pinned buffers queued.
    CHECK(CUDA_OK(cudaStreamSynchronize(st)));

    // Every draw of the step, in gan_step's order: the D step's real batch (uniform with
    // replacement) and fakes, then the G step's fakes (nothing draws from t->rng in between).
    // They go to pinned host buffers that only the step writes, and up in one copy each.
    float *zd = gc->z_host, *zg = gc->z_host + (long)B * Z;
    int32_t *yreal = gc->y_host, *yd = gc->y_host + B, *yg = gc->y_host + 2 * B;
    // Data parallel: every process draws the whole batch and keeps its slice, as gan.c does.
    int first = gc->dp_rank * B;
    for (int bb = 0; bb < gc->B_all; bb++) {
        uint32_t i = rng_below(&t->rng, (uint32_t)data->n);
        int b = bb - first;
        if (b < 0 || b >= B) continue;
        memcpy((grow ? t->real : gc->x_host) + b * img, data->images + (long)i * img,
               img * sizeof(float));
        yreal[b] = data->labels ? data->labels[i] : 0;
    }
    if (grow) gan_real_at_level(t, gc->x_host, B, R, alpha);
    draw_fakes(gc, t, zd, yd);
    if (pen_step && gp) // WGAN-GP's interpolation weights, the whole batch's (gan_d_penalties)
        for (int bb = 0; bb < gc->B_all; bb++) {
            float a = rng_uniform(&t->rng);
            int b = bb - first;
            if (b >= 0 && b < B) gc->alpha_host[b] = a;
        }
    draw_fakes(gc, t, zg, yg);
    if (cond) // the kernels index tables by the labels: check them here, as sagan.c's forward does
        for (int b = 0; b < 3 * B; b++)
            if (gc->y_host[b] < 0 || gc->y_host[b] >= c->n_classes) return KERNELS_EINVAL;
    CHECK(upload(gc, gc->x, gc->x_host, sizeof(float) * (size_t)(B * imgR)));
    CHECK(upload(gc, gc->z, gc->z_host, sizeof(float) * 2 * (size_t)B * Z));
    CHECK(upload(gc, gc->y, gc->y_host, sizeof(int32_t) * 3 * (size_t)B));
    if (pen_step && gp) CHECK(upload(gc, gc->pen_alpha, gc->alpha_host, sizeof(float) * (size_t)B));

    // D step (gan_d_step)
    CHECK(params_cuda_sn_forward(&gc->G.ps, 1, st));
    CHECK(gen_forward(gc, &gc->G, gc->z, cond ? gc->y + B : NULL, B, 0.0f));
    CHECK(CUDA_OK(cudaMemcpyAsync(gc->x + B * imgR, gen_output(&gc->G),
                                  sizeof(float) * (size_t)(B * imgR), cudaMemcpyDeviceToDevice,
                                  st)));
    CHECK(params_cuda_sn_forward(&gc->D.ps, 1, st));
    CHECK(disc_forward(gc, &gc->D, gc->x, cond ? gc->y : NULL, 2 * B, h->d_dropout, &t->D.dropout_seed));
    CHECK(hinge_d_real_loss_cuda(gc->losses, gc->dlogits, gc->D.out, B, st));
    CHECK(hinge_d_fake_loss_cuda(gc->losses + 1, gc->dlogits + B, gc->D.out + B, B, st));
    CHECK(params_cuda_zero_grad(&gc->D.ps, st));
    CHECK(disc_backward(gc, &gc->D, gc->dlogits, 2 * B, 1, NULL));
    // R1 at the real half, WGAN-GP at interpolates of it with the fake half (gan_d_penalties),
    // their values added into losses[2] as gan.c adds them into penalty_d
    if (pen_step) {
        float scale = (float)h->penalty_every;
        const int32_t *yr = cond ? gc->y : NULL;
        int k = 0;
        if (r1)
            CHECK(pen_backward(gc, 1, h->r1_gamma * scale, h->penalty_fd_step, gc->x, yr, k++));
        if (gp) {
            CHECK(lerp_items_cuda(gc->pen_x_hat, gc->x, gc->x + B * imgR, gc->pen_alpha, B, imgR,
                                  st));
            CHECK(pen_backward(gc, 0, h->gp_lambda * scale, h->penalty_fd_step, gc->pen_x_hat, yr,
                               k++));
        }
        CHECK(float_sum_cuda(gc->losses + 2, gc->dv_pen, k, st));
    } else {
        CHECK(CUDA_OK(cudaMemsetAsync(gc->losses + 2, 0, sizeof(float), st)));
    }
    CHECK(params_cuda_sn_backward(&gc->D.ps, st));
    // data parallel: D's gradient (after SN's fold) and the D losses averaged, as gan.c's
    // gan_reduce, before the identical Adam steps
    CHECK(dp_mean(gc, gc->D.ps.grads, gc->D.ps.total));
    CHECK(dp_mean(gc, gc->losses, 3));
    CHECK(params_cuda_adam(&gc->D.ps, &t->D.ps, h->lr_d, h->beta1, h->beta2, h->eps,
                           h->weight_decay_d, st));

    // G step (gan_step): fresh latents and labels; D (after one more power iteration on its new
    // weights) passes the gradient to its input only; G keeps the D step's effective weights.
    // (D stays in training mode: dropout on, as gan_step leaves D.train until the step ends)
    CHECK(CUDA_OK(cudaMemsetAsync(gc->losses + 4, 0, sizeof(float), st))); // L1's, when off
    int tune = tu && tu->kind == GAN_CUDA_FINETUNE, distill = tu && tu->kind == GAN_CUDA_DISTILL;
    const float *zg_dev = gc->z + (long)B * Z;
    const int32_t *yg_dev = cond ? gc->y + 2 * B : NULL;
    if (distill) CHECK(distill_teacher(gc, tu, zg_dev, yg_dev));
    if (tu) CHECK(params_cuda_sn_forward(&gc->G.ps, 1, st)); // their G steps iterate again
    CHECK(gen_forward(gc, &gc->G, zg_dev, yg_dev, B, h->l1_act));
    CHECK(params_cuda_sn_forward(&gc->D.ps, 1, st));
    CHECK(disc_forward(gc, &gc->D, gen_output(&gc->G), cond ? gc->y + 2 * B : NULL, B, h->d_dropout,
                       &t->D.dropout_seed));
    CHECK(hinge_g_loss_cuda(gc->losses + 3, gc->dlogits, gc->D.out, B, st));
    if (distill) CHECK(scale_inplace_cuda(gc->dlogits, (float)tu->w_adv, B, st));
    CHECK(CUDA_OK(cudaMemsetAsync(gc->dimg, 0, sizeof(float) * (size_t)(B * imgR), st)));
    CHECK(disc_backward(gc, &gc->D, gc->dlogits, B, 0, gc->dimg));
    if (tune) CHECK(tune_term(gc, tu, cond ? yg : NULL));
    if (distill) CHECK(distill_terms(gc, tu));
    CHECK(params_cuda_zero_grad(&gc->G.ps, st));
    CHECK(gen_backward(gc, gc->dimg, B, h->l1_act));
    CHECK(params_cuda_sn_backward(&gc->G.ps, st));
    GanCudaParams *gps = &gc->G.ps;
    if (tune) // the anchor lambda (theta - theta0) on the raw parameters
        CHECK(anchor_grad_cuda(gps->grads, gps->params, tu->theta0, tu->lambda, gps->total, st));
    else
        CHECK(dp_mean(gc, gps->grads, gps->total));
    CHECK(dp_mean(gc, gc->losses + 3, 2));
    // orthogonal regularization on G's raw weights (the same in every process: after the mean)
    int ortho = !tu && h->ortho_beta > 0.0f;
    for (int i = 0; ortho && i < gps->n; i++) {
        if (!generator_is_ortho(&t->G, i)) continue;
        const Param *p = &gps->p[i];
        int rows = p->shape[0], cols = (int)(p->numel / rows);
        CHECK(ortho_reg_backward_cuda(gps->grads + p->offset, gc->dv_ortho + i,
                                      gps->params + p->offset, h->ortho_beta, gc->ortho_scratch,
                                      rows, cols, st));
    }
    CHECK(params_cuda_adam(&gc->G.ps, &t->G.ps, h->lr_g, h->beta1, h->beta2, h->eps,
                           h->weight_decay_g, st));

    float losses[5];
    double ortho_v[PARAMS_MAX];
    CHECK(CUDA_OK(cudaMemcpyAsync(losses, gc->losses, sizeof losses, cudaMemcpyDeviceToHost, st)));
    if (ortho)
        CHECK(CUDA_OK(cudaMemcpyAsync(ortho_v, gc->dv_ortho, sizeof(double) * (size_t)gps->n,
                                      cudaMemcpyDeviceToHost, st)));
    double sums[2];
    if (distill)
        CHECK(CUDA_OK(cudaMemcpyAsync(sums, tu->sums, sizeof sums, cudaMemcpyDeviceToHost, st)));
    CHECK(CUDA_OK(cudaStreamSynchronize(st)));
    // what gan_step leaves: the hinge losses (loss_d = real + fake, added in float as there), the
    // penalties, G's regularizers (L1's value, then each orthogonal term added in float), D out
    // of training mode, the step counted (the EMA below)
    t->loss_d = losses[0] + losses[1];
    t->penalty_d = losses[2];
    t->loss_g = losses[3];
    if (!tu) t->reg_g = losses[4]; // (finetune.c's and distill.c's steps leave reg_g as it was)
    if (distill) {
        int Fd = tu->D.chan[tu->D.n_stages] * 16;
        tu->pix = sums[0] / (double)(B * img);
        tu->feat = sums[1] / (double)((long)B * Fd);
    }
    for (int i = 0; ortho && i < gps->n; i++)
        if (generator_is_ortho(&t->G, i)) t->reg_g += (float)ortho_v[i];
    t->D.train = 0;
    t->step++;
    // and the host batch buffers as gan_step leaves them (but for D's fake half of t->x)
    memcpy(t->x, gc->x_host, sizeof(float) * (size_t)(B * imgR));
    // (t->z already holds the G step's latents, the whole batch's, from draw_fakes)
    memcpy(t->y, yreal, sizeof(int32_t) * (size_t)B);
    memcpy(t->y + B, yg, sizeof(int32_t) * (size_t)B);
    // gan_g_step_done's EMA, queued after the wait: the next step's wait or a download orders it
    if (h->ema_decay > 0.0f) return ema_update(gc, t);
    t->ema_live = 0;
    return 0;
}

int gan_cuda_step(GanCuda *gc, GanTrainer *t, const Dataset *data) {
    return step(gc, t, data, NULL);
}

// ---------------------------------------------------------------------------------------------
// tune steps: a loss on a frozen D's maps (the finetune job)

// A frozen copy of D h (its weights as they are: effective weights included, no power iteration
// here) for gc's batch: its parameters and activations on the device.
static int frozen_disc_init(GanCudaDisc *d, GanCuda *gc, const Discriminator *h) {
    disc_indices(d, h);
    params_cuda_layout(&d->ps, &h->ps);
    d->ps.frozen = 1;
    Carver cv = {0};
    disc_carve(d, &gc->cfg, gc->B, &cv);
    d->acts_total = cv.used;
    CHECK(params_cuda_alloc(&d->ps));
    CHECK(acts_alloc(&d->acts, &d->dacts, cv.used));
    cv = (Carver){d->acts, 0};
    disc_carve(d, &gc->cfg, gc->B, &cv);
    return params_cuda_upload(&d->ps, &h->ps, gc->stream);
}

// Likewise for a G that only runs forward (no gradient twins of its activations).
static int frozen_gen_init(GanCudaGen *g, GanCuda *gc, const Generator *h) {
    gen_indices(g, h);
    params_cuda_layout(&g->ps, &h->ps);
    g->ps.frozen = 1;
    Carver cv = {0};
    gen_carve(g, &gc->cfg, gc->B, &cv);
    g->acts_total = cv.used;
    CHECK(params_cuda_alloc(&g->ps));
    if (cudaMalloc((void **)&g->acts, sizeof(float) * (size_t)cv.used) != cudaSuccess)
        return KERNELS_ENOMEM;
    cv = (Carver){g->acts, 0};
    gen_carve(g, &gc->cfg, gc->B, &cv);
    return params_cuda_upload(&g->ps, &h->ps, gc->stream);
}

// Whether a frozen network of config b can run beside gc: the same image, latent and classes
// (widths may differ), in one process.
static int tune_fits(const GanCuda *gc, const SaganConfig *b, char *err, size_t errlen) {
    const SaganConfig *a = &gc->cfg;
    if (a->img != b->img || a->channels != b->channels || a->z_dim != b->z_dim ||
        a->n_classes != b->n_classes) {
        snprintf(err, errlen, "the frozen network's config (%s) does not fit the trainer's (%s)",
                 b->name, a->name);
        return 0;
    }
    if (gc->dp_size != 1) {
        snprintf(err, errlen, "a data-parallel run");
        return 0;
    }
    return 1;
}

int gan_cuda_tune_init(GanCudaTune *tu, GanCuda *gc, const Discriminator *frozen,
                       const float *theta0, char *err, size_t errlen) {
    memset(tu, 0, sizeof *tu);
    if (!tune_fits(gc, &frozen->cfg, err, errlen)) return KERNELS_EINVAL;
    tu->kind = GAN_CUDA_FINETUNE;
    size_t map = sizeof(float) * (size_t)gc->B * frozen->chan[frozen->n_stages] * 16;
    size_t g = sizeof(float) * (size_t)gc->G.ps.total;
    int rc = frozen_disc_init(&tu->D, gc, frozen);
    if (!rc && (cudaMalloc((void **)&tu->theta0, g) != cudaSuccess ||
                cudaMallocHost((void **)&tu->feat_host, map) != cudaSuccess ||
                cudaMallocHost((void **)&tu->dfeat_host, map) != cudaSuccess))
        rc = KERNELS_ENOMEM;
    if (!rc) rc = CUDA_OK(cudaMemcpyAsync(tu->theta0, theta0, g, cudaMemcpyHostToDevice, gc->stream));
    if (!rc) rc = CUDA_OK(cudaStreamSynchronize(gc->stream));
    if (rc) {
        snprintf(err, errlen, "cannot set up the frozen D on the GPU: %s", kernels_strerror(rc));
        gan_cuda_tune_free(tu, gc);
    }
    return rc;
}

int gan_cuda_distill_init(GanCudaTune *tu, GanCuda *gc, const Generator *teacher,
                          const Discriminator *teacher_d, char *err, size_t errlen) {
    memset(tu, 0, sizeof *tu);
    if (!tune_fits(gc, &teacher->cfg, err, errlen) ||
        !tune_fits(gc, &teacher_d->cfg, err, errlen))
        return KERNELS_EINVAL;
    tu->kind = GAN_CUDA_DISTILL;
    const SaganConfig *c = &gc->cfg;
    size_t img = (size_t)gc->B * c->channels * c->img * c->img;
    size_t map = (size_t)gc->B * teacher_d->chan[teacher_d->n_stages] * 16;
    int rc = frozen_gen_init(&tu->T, gc, teacher);
    if (!rc) rc = frozen_disc_init(&tu->D, gc, teacher_d);
    if (!rc && (cudaMalloc((void **)&tu->timg, sizeof(float) * (img + map)) != cudaSuccess ||
                cudaMalloc((void **)&tu->sums, sizeof(double) * 2) != cudaSuccess))
        rc = KERNELS_ENOMEM;
    if (!rc) {
        tu->tfeat = tu->timg + img;
        rc = CUDA_OK(cudaStreamSynchronize(gc->stream));
    }
    if (rc) {
        snprintf(err, errlen, "cannot set up the teacher on the GPU: %s", kernels_strerror(rc));
        gan_cuda_tune_free(tu, gc);
    }
    return rc;
}

void gan_cuda_tune_free(GanCudaTune *tu, GanCuda *gc) {
    if (gc->stream) cudaStreamSynchronize(gc->stream);
    cudaFree(tu->D.ps.buf);
    cudaFree(tu->D.acts);
    cudaFree(tu->D.dacts);
    cudaFree(tu->T.ps.buf);
    cudaFree(tu->T.acts);
    cudaFree(tu->T.dacts);
    cudaFree(tu->theta0);
    cudaFree(tu->timg);
    cudaFree(tu->sums);
    cudaFreeHost(tu->feat_host);
    cudaFreeHost(tu->dfeat_host);
    memset(tu, 0, sizeof *tu);
}

int gan_cuda_tune_step(GanCuda *gc, GanCudaTune *tu, GanTrainer *t, const Dataset *data) {
    if ((tu->kind == GAN_CUDA_FINETUNE && !tu->loss) || !tu->kind || gc->dp_size != 1)
        return KERNELS_EINVAL;
    return step(gc, t, data, tu);
}

// ---------------------------------------------------------------------------------------------
// G alone: serving and sampling (generator/sagan_cuda.c)

int gan_cuda_sampler_init(GanCudaSampler *sp, const Generator *g, int max_B, char *err,
                          size_t errlen) {
    memset(sp, 0, sizeof *sp);
    char why[256];
    if (max_B < 1) {
        snprintf(err, errlen, "batch %d: must be at least 1", max_B);
        return KERNELS_EINVAL;
    }
    if (!cuda_device_available(why, sizeof why)) {
        snprintf(err, errlen, "no GPU: %s", why);
        return KERNELS_ECUDA;
    }
    GanCuda *gc = &sp->gc; // the context gen_forward runs in: config, batch and stream only
    gc->cfg = g->cfg;
    gc->B = gc->B_all = max_B;
    gc->dp_size = 1;
    int rc = CUDA_OK(cudaStreamCreateWithFlags(&gc->stream, cudaStreamNonBlocking));
    if (!rc) rc = frozen_gen_init(&sp->G, gc, g);
    if (!rc) rc = CUDA_OK(cudaStreamSynchronize(gc->stream));
    if (rc) {
        snprintf(err, errlen, "cannot set up G on the GPU: %s (%.1f MB of activations)",
                 kernels_strerror(rc), sp->G.acts_total * 4.0 / 1e6);
        gan_cuda_sampler_free(sp);
    }
    return rc;
}

int gan_cuda_sampler_upload(GanCudaSampler *sp, const Generator *g) {
    if (!cfg_same(&sp->gc.cfg, &g->cfg) || !params_cuda_fits(&sp->G.ps, &g->ps))
        return KERNELS_EINVAL;
    // (on the sampler's stream and waited for: work a failed forward left queued may still read
    // the weights; the sources are pageable)
    CHECK(CUDA_OK(cudaStreamSynchronize(sp->gc.stream)));
    CHECK(params_cuda_upload(&sp->G.ps, &g->ps, sp->gc.stream));
    sp->G.level = g->level;
    sp->G.alpha = g->alpha;
    return 0;
}

int gan_cuda_sampler_forward(GanCudaSampler *sp, const float *z, const int32_t *y, int B,
                             const float **img) {
    if (B < 1 || B > sp->gc.B || (sp->gc.cfg.n_classes && !y)) return KERNELS_EINVAL;
    CHECK(gen_forward(&sp->gc, &sp->G, z, sp->gc.cfg.n_classes ? y : NULL, B, 0.0f));
    *img = gen_output(&sp->G);
    return 0;
}

void gan_cuda_sampler_free(GanCudaSampler *sp) {
    if (sp->gc.stream) cudaStreamSynchronize(sp->gc.stream);
    cudaFree(sp->G.ps.buf);
    cudaFree(sp->G.acts);
    if (sp->gc.stream) {
        cuda_stream_forget(sp->gc.stream);
        cudaStreamDestroy(sp->gc.stream);
    }
    memset(sp, 0, sizeof *sp);
}

#endif
