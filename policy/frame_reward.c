// frame_reward.c — the users' reward of a frame and its gradient to D's maps (frame_reward.h).
#include "policy/frame_reward.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"

int frame_reward_init(FrameReward *r, Features *f) {
    memset(r, 0, sizeof *r);
    r->f = f;
    int Fd;
    discriminator_features(&f->d, &Fd);
    r->w = calloc((size_t)f->F, sizeof(double));
    r->phi = malloc((size_t)f->max_B * f->F * sizeof(float));
    r->dmaps = malloc((size_t)f->max_B * Fd * sizeof(float));
    return r->w && r->phi && r->dmaps ? 0 : KERNELS_ENOMEM;
}

void frame_reward_free(FrameReward *r) {
    free(r->w);
    free(r->phi);
    free(r->dmaps);
    memset(r, 0, sizeof *r);
}

// The reward term's gradient w.r.t. D's last maps from the frames' rewards rb (B): L_r = -beta
// mean log p, p = sigma(s), with s = sum_c w_c ds istd_c (mean_k map_ck - mean_c) + class term -
// r0, so dL_r/dmap_ck = -beta / B (1 - p) w_c ds istd_c / hw: a frame already clearly liked stops
// pulling (no runaway toward features no real frame has).
static void reward_dmaps(const FrameReward *r, double beta, const double *rb, int B, float *dmaps) {
    const Features *f = r->f;
    int Fd, Dc = f->d_ch;
    discriminator_features(&f->d, &Fd);
    int hw = Fd / Dc;
    float ds = f->d_scale / sqrtf((float)Dc);
    for (int b = 0; b < B; b++)
        for (int ch = 0; ch < Dc; ch++) {
            float g = (float)(-beta / B * (1.0 - rb[b]) * r->w[ch]) * ds * f->istd[ch] / (float)hw;
            for (int k = 0; k < hw; k++) dmaps[(long)b * Fd + (long)ch * hw + k] = g;
        }
}

int frame_reward_score(FrameReward *r, const float *maps, const int32_t *y, int B, double beta,
                       double *reward, float *dmaps) {
    const Features *f = r->f;
    if (B > f->max_B) return KERNELS_EINVAL;
    features_from_maps(f, maps, y, B, r->phi);
    for (int b = 0; b < B; b++) {
        double s = -r->r0;
        for (int k = 0; k < f->F; k++) s += r->w[k] * r->phi[(long)b * f->F + k];
        reward[b] = 1.0 / (1.0 + exp(-s));
    }
    if (dmaps) reward_dmaps(r, beta, reward, B, dmaps);
    return 0;
}

static int score(void *ctx, const float *maps, const int32_t *y, int B, double beta,
                 double *reward, float *dmaps) {
    return frame_reward_score(ctx, maps, y, B, beta, reward, dmaps);
}

FinetuneReward frame_reward_finetune(FrameReward *r) {
    return (FinetuneReward){.d = &r->f->d, .max_B = r->f->max_B, .dmaps = r->dmaps, .ctx = r,
                            .score = score};
}
