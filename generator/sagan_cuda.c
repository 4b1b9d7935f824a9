// sagan_cuda.c — G's forward on the GPU (sagan_cuda.h): generator_forward's layers, in its order,
// on the CUDA kernels. Not here: the kernels (kernels/cuda/), D, training, progressive levels below
// the last (serving draws at the model's size). Compiled only in the CUDA build.
//
// B batch, Z latent, C channels, N = H*W.
#ifdef STEER_CUDA

#include "generator/sagan_cuda.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "kernels/cuda/cuda_ops.h"
#include "kernels/kernels.h"

#define G_SLOPE 0.2f // sagan.c's

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        int rc_ = (x);                                                                             \
        if (rc_) return rc_;                                                                       \
    } while (0)
#define CUDA_OK(x) ((x) == cudaSuccess ? 0 : KERNELS_ECUDA)

typedef ParamsCarver Carver;

static float *carve(Carver *cv, long n) { return params_carve(cv, n, 64); } // 256-byte slices

static void carve_all(GeneratorCuda *gc, Carver *cv) {
    const SaganConfig *c = &gc->cfg;
    long B = gc->max_B;
    gc->zc = carve(cv, B * c->z_dim);
    gc->fc = carve(cv, B * gc->chan[0] * 16);
    gc->pn0 = carve(cv, B * gc->chan[0] * 16);
    gc->rn0 = carve(cv, B * 16);
    int r = 4;
    for (int s = 0; s < gc->n_stages; s++) {
        r *= 2;
        gc->up[s] = carve(cv, B * gc->chan[s] * r * r);
        gc->conv[s] = carve(cv, B * gc->chan[s + 1] * r * r);
        gc->pn[s] = carve(cv, B * gc->chan[s + 1] * r * r);
        gc->rn[s] = carve(cv, B * r * r);
        if (s == gc->attn_stage) {
            int C = gc->chan[s + 1], N = r * r;
            gc->att = carve(cv, B * C * N);
            float *saved = carve(cv, attention_saved_floats(gc->max_B, C, N));
            if (saved) attention_saved_carve(&gc->att_saved, saved, gc->max_B, C, N);
        }
    }
    gc->pre = carve(cv, B * c->channels * r * r);
}

// Whether g is laid out as the Generator gc was built from (the config fixes every parameter's
// offset, which gc keeps) and is at its last level, the only one drawn here. A hot swap may bring
// a model of another config, or a progressive one at a lower level, with the same total.
static int generator_cuda_fits(const GeneratorCuda *gc, const Generator *g) {
    const SaganConfig *a = &gc->cfg, *b = &g->cfg;
    return a->ch == b->ch && a->z_dim == b->z_dim && a->img == b->img &&
           a->channels == b->channels && a->n_classes == b->n_classes &&
           a->attn_res == b->attn_res && a->prog == b->prog && g->ps.total == gc->total &&
           g->level == g->n_stages && g->alpha == 1.0f;
}

int generator_cuda_upload(GeneratorCuda *gc, const Generator *g) {
    const ParamSet *ps = &g->ps;
    if (!generator_cuda_fits(gc, g)) return KERNELS_EINVAL;
    float *host = malloc(sizeof(float) * (size_t)ps->total);
    if (!host) return KERNELS_ENOMEM;
    for (int i = 0; i < ps->n; i++)
        memcpy(host + ps->p[i].offset, paramset_w(ps, i), sizeof(float) * ps->p[i].numel);
    // On gc's own stream, then waited for: a plain cudaMemcpy runs on the legacy default stream,
    // which a non-blocking stream does not wait for, and may return from pageable memory before
    // the copy has landed; work a failed forward left queued may still be reading gc->w.
    int rc = CUDA_OK(cudaMemcpyAsync(gc->w, host, sizeof(float) * ps->total,
                                     cudaMemcpyHostToDevice, gc->stream));
    if (!rc) rc = CUDA_OK(cudaStreamSynchronize(gc->stream));
    if (!rc && gc->embed_host)
        memcpy(gc->embed_host, paramset_w(ps, g->p_embed),
               sizeof(float) * g->cfg.n_classes * g->cfg.z_dim);
    free(host);
    return rc;
}

int generator_cuda_init(GeneratorCuda *gc, const Generator *g, int max_B, char *err,
                        size_t errlen) {
    memset(gc, 0, sizeof *gc);
    char why[256];
    if (!cuda_device_available(why, sizeof why)) {
        snprintf(err, errlen, "no GPU: %s", why);
        return KERNELS_ECUDA;
    }
    if (g->level != g->n_stages || g->alpha != 1.0f) {
        snprintf(err, errlen, "the GPU draws at the model's last level only (this one is at %dx%d)",
                 4 << g->level, 4 << g->level);
        return KERNELS_EINVAL;
    }
    gc->cfg = g->cfg;
    gc->max_B = max_B;
    gc->n_stages = g->n_stages;
    gc->attn_stage = g->attn_stage;
    memcpy(gc->chan, g->chan, sizeof gc->chan);
    const ParamSet *ps = &g->ps;
    gc->total = ps->total;
    gc->off_fc_w = ps->p[g->p_fc_w].offset;
    gc->off_fc_b = ps->p[g->p_fc_b].offset;
    for (int s = 0; s < g->n_stages; s++) {
        gc->off_conv_w[s] = ps->p[g->p_conv_w[s]].offset;
        gc->off_conv_b[s] = ps->p[g->p_conv_b[s]].offset;
    }
    if (g->attn_stage >= 0) {
        gc->off_f = ps->p[g->p_f].offset;
        gc->off_g = ps->p[g->p_g].offset;
        gc->off_h = ps->p[g->p_h].offset;
        gc->off_o = ps->p[g->p_o].offset;
        gc->off_gamma = ps->p[g->p_gamma].offset;
    }
    gc->off_out_w = ps->p[g->p_out_w].offset;
    gc->off_out_b = ps->p[g->p_out_b].offset;
    gc->zc_host = malloc(sizeof(float) * (size_t)max_B * g->cfg.z_dim);
    if (g->cfg.n_classes)
        gc->embed_host = malloc(sizeof(float) * (size_t)g->cfg.n_classes * g->cfg.z_dim);
    Carver cv = {0};
    carve_all(gc, &cv);
    int rc = 0;
    if (!gc->zc_host || (g->cfg.n_classes && !gc->embed_host)) rc = KERNELS_ENOMEM;
    if (!rc && (cudaStreamCreateWithFlags(&gc->stream, cudaStreamNonBlocking) != cudaSuccess ||
                cudaMalloc((void **)&gc->w, sizeof(float) * ps->total) != cudaSuccess ||
                cudaMalloc((void **)&gc->act, sizeof(float) * cv.used) != cudaSuccess))
        rc = KERNELS_ECUDA;
    if (!rc) {
        cv = (Carver){gc->act, 0};
        carve_all(gc, &cv);
        rc = generator_cuda_upload(gc, g);
    }
    if (rc) {
        snprintf(err, errlen, "cannot set up G on the GPU: %s (%.1f MB of activations)",
                 kernels_strerror(rc), cv.used * 4.0 / 1e6);
        generator_cuda_free(gc); // the stream and buffers made so far; gc stays safe to free
    }
    return rc;
}

void generator_cuda_free(GeneratorCuda *gc) {
    if (gc->stream) cudaStreamSynchronize(gc->stream);
    cudaFree(gc->w);
    cudaFree(gc->act);
    if (gc->stream) {
        cuda_stream_forget(gc->stream);
        cudaStreamDestroy(gc->stream);
    }
    free(gc->zc_host);
    free(gc->embed_host);
    memset(gc, 0, sizeof *gc);
}

int generator_cuda_forward(GeneratorCuda *gc, const float *z, const int32_t *y, int B, float *img) {
    const SaganConfig *c = &gc->cfg;
    if (B < 1 || B > gc->max_B || (c->n_classes && !y)) return KERNELS_EINVAL;
    int Z = c->z_dim, C0 = gc->chan[0];
    cudaStream_t st = gc->stream;
    // z plus the class embedding, on the host (B x Z floats), then one copy up
    memcpy(gc->zc_host, z, sizeof(float) * (size_t)B * Z);
    if (c->n_classes)
        for (int b = 0; b < B; b++) {
            if (y[b] < 0 || y[b] >= c->n_classes) return KERNELS_EINVAL;
            const float *e = gc->embed_host + (long)y[b] * Z;
            for (int k = 0; k < Z; k++) gc->zc_host[(long)b * Z + k] += e[k];
        }
    if (cudaMemcpyAsync(gc->zc, gc->zc_host, sizeof(float) * (size_t)B * Z, cudaMemcpyHostToDevice,
                        st) != cudaSuccess)
        return KERNELS_ECUDA;
    CHECK(linear_forward_cuda(gc->fc, gc->zc, gc->w + gc->off_fc_w, gc->w + gc->off_fc_b, B, Z,
                              C0 * 16, st));
    CHECK(leaky_relu_forward_cuda(gc->fc, gc->fc, G_SLOPE, (long)B * C0 * 16, st));
    CHECK(pixelnorm_forward_cuda(gc->pn0, gc->rn0, gc->fc, B, C0, 16, st));
    const float *x = gc->pn0;
    int r = 4;
    for (int s = 0; s < gc->n_stages; s++) {
        int Ci = gc->chan[s], Co = gc->chan[s + 1];
        CHECK(upsample2x_forward_cuda(gc->up[s], x, B, Ci, r, r, st));
        r *= 2;
        long n = (long)B * Co * r * r;
        CHECK(conv2d_forward_cuda(gc->conv[s], gc->up[s], gc->w + gc->off_conv_w[s],
                                  gc->w + gc->off_conv_b[s], B, Ci, r, r, Co, 3, 1, 1, st));
        CHECK(leaky_relu_forward_cuda(gc->conv[s], gc->conv[s], G_SLOPE, n, st));
        CHECK(pixelnorm_forward_cuda(gc->pn[s], gc->rn[s], gc->conv[s], B, Co, r * r, st));
        x = gc->pn[s];
        if (s == gc->attn_stage) {
            // gamma: a device float, in the weight copy at its offset
            CHECK(attention_forward_cuda(gc->att, &gc->att_saved, x, gc->w + gc->off_f,
                                         gc->w + gc->off_g, gc->w + gc->off_h, gc->w + gc->off_o,
                                         gc->w + gc->off_gamma, B, Co, r * r, st));
            x = gc->att;
        }
    }
    long n_img = (long)B * c->channels * r * r;
    CHECK(conv2d_forward_cuda(gc->pre, x, gc->w + gc->off_out_w, gc->w + gc->off_out_b, B,
                              gc->chan[gc->n_stages], r, r, c->channels, 3, 1, 1, st));
    CHECK(tanh_forward_cuda(gc->pre, gc->pre, n_img, st));
    if (cudaMemcpyAsync(img, gc->pre, sizeof(float) * n_img, cudaMemcpyDeviceToHost, st) !=
            cudaSuccess ||
        cudaStreamSynchronize(st) != cudaSuccess)
        return KERNELS_ECUDA;
    return 0;
}

#endif
