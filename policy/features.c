// features.c — the reward features of features.h: D's last map, pooled, standardized, plus the
// class one-hot.
#include "policy/features.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "generator/gan.h"
#include "kernels/kernels.h"

int features_init(Features *f, const char *ckpt, int max_B, char *err, size_t errlen) {
    memset(f, 0, sizeof *f);
    int rc = discriminator_load(&f->d, ckpt, max_B, err, errlen);
    if (rc) return rc;
    f->max_B = max_B;
    f->d_ch = f->d.chan[f->d.n_stages];
    f->classes = f->d.cfg.n_classes;
    f->F = f->d_ch + f->classes;
    f->d_scale = FEATURES_D_SCALE;
    f->class_scale = FEATURES_CLASS_SCALE;
    f->mean = calloc((size_t)f->d_ch, sizeof(float));
    f->istd = malloc((size_t)f->d_ch * sizeof(float));
    if (!f->mean || !f->istd) {
        snprintf(err, errlen, "out of memory");
        features_free(f);
        return KERNELS_ENOMEM;
    }
    for (int c = 0; c < f->d_ch; c++) f->istd[c] = 1;
    return 0;
}

void features_free(Features *f) {
    discriminator_free(&f->d);
    free(f->mean);
    free(f->istd);
    memset(f, 0, sizeof *f);
}

// pooled (B, Dc): D's last maps feat (B, Fd) averaged over their positions.
static void pool_maps(const Features *f, const float *feat, int Fd, int B, float *pooled) {
    int hw = Fd / f->d_ch;
    for (int b = 0; b < B; b++)
        for (int ch = 0; ch < f->d_ch; ch++) {
            const float *p = feat + (long)b * Fd + (long)ch * hw;
            float s = 0;
            for (int k = 0; k < hw; k++) s += p[k];
            pooled[b * f->d_ch + ch] = s / (float)hw;
        }
}

// pooled (n, Dc): D's last map averaged over its 16 positions, max_B frames at a time.
static int features_pooled(Features *f, const float *images, const int32_t *y, long n,
                           float *pooled) {
    const SaganConfig *c = &f->d.cfg;
    long img = (long)c->channels * c->img * c->img;
    int32_t zeros[f->max_B];
    memset(zeros, 0, sizeof zeros);
    for (long i = 0; i < n; i += f->max_B) {
        int B = (int)(n - i < f->max_B ? n - i : f->max_B);
        const int32_t *yb = f->classes ? (y ? y + i : zeros) : NULL;
        int rc = discriminator_forward(&f->d, images + i * img, yb, B);
        if (rc) return rc;
        int Fd;
        const float *feat = discriminator_features(&f->d, &Fd);
        pool_maps(f, feat, Fd, B, pooled + i * f->d_ch);
    }
    return 0;
}

// phi (B, F) from pooled (B, Dc) and the classes y (B) or NULL.
static void standardize(const Features *f, const float *pooled, const int32_t *y, long B,
                        float *phi) {
    float ds = f->d_scale / sqrtf((float)f->d_ch);
    for (long b = 0; b < B; b++) {
        float *row = phi + b * f->F;
        for (int ch = 0; ch < f->d_ch; ch++)
            row[ch] = ds * (pooled[b * f->d_ch + ch] - f->mean[ch]) * f->istd[ch];
        for (int k = 0; k < f->classes; k++) row[f->d_ch + k] = 0;
        if (f->classes && y) row[f->d_ch + y[b]] = f->class_scale;
    }
}

int features_compute(Features *f, const float *images, const int32_t *y, long n, float *phi) {
    for (long i = 0; i < n; i += f->max_B) {
        long B = n - i < f->max_B ? n - i : f->max_B;
        float pooled[B * f->d_ch];
        const SaganConfig *c = &f->d.cfg;
        long img = (long)c->channels * c->img * c->img;
        int rc = features_pooled(f, images + i * img, y ? y + i : NULL, B, pooled);
        if (rc) return rc;
        standardize(f, pooled, y ? y + i : NULL, B, phi + i * f->F);
    }
    return 0;
}

void features_from_maps(const Features *f, const float *feat, const int32_t *y, int B,
                        float *phi) {
    int Fd;
    discriminator_features(&f->d, &Fd);
    for (int i = 0; i < B; i += f->max_B) {
        int b = B - i < f->max_B ? B - i : f->max_B;
        float pooled[b * f->d_ch];
        pool_maps(f, feat + (long)i * Fd, Fd, b, pooled);
        standardize(f, pooled, y ? y + i : NULL, b, phi + (long)i * f->F);
    }
}

int features_calibrate(Features *f, const float *images, const int32_t *y, long n) {
    if (n < 2) return KERNELS_EINVAL;
    float *pooled = malloc((size_t)n * f->d_ch * sizeof(float));
    if (!pooled) return KERNELS_ENOMEM;
    int rc = features_pooled(f, images, y, n, pooled);
    if (!rc)
        for (int ch = 0; ch < f->d_ch; ch++) {
            double s = 0, s2 = 0;
            for (long i = 0; i < n; i++) s += pooled[i * f->d_ch + ch];
            double m = s / (double)n;
            for (long i = 0; i < n; i++) {
                double d = pooled[i * f->d_ch + ch] - m;
                s2 += d * d;
            }
            double sd = sqrt(s2 / (double)(n - 1));
            f->mean[ch] = (float)m;
            f->istd[ch] = sd > 1e-6 ? (float)(1.0 / sd) : 0.0f;
        }
    free(pooled);
    return rc;
}
