// simuser.c — the simulated users of simuser.h: raw utilities from the evaluator's logits,
// features or the pixels, a scale and a like threshold calibrated once on random generator frames,
// and Bradley–Terry draws from the user's own Rng.
//
// It is not a client (it sees pixels, never the wire or frame ids), not a reward model (it never
// learns: its preference is fixed at init) and not a sampler (the caller makes the frames, so
// that many users can share one calibration set and the same code serves in-process and
// through-the-server runs). Costs: one evaluator forward per max_B images; LIKES_DARK none.
//
// B batch, P = 1024 pixels of a 32x32 frame, D = 256 features, K = 10 classes.
#include "env/simuser.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"

#define SCRATCH_B_NO_EVAL 64 // scratch batch of a LIKES_DARK user without a classifier

static const char *const KIND_NAME[SIMUSER_KINDS] = {"class", "dark", "sample"};

const char *simuser_kind_name(SimUserKind kind) {
    return (unsigned)kind < SIMUSER_KINDS ? KIND_NAME[kind] : "?";
}

void simuser_config_default(SimUserConfig *cfg, SimUserKind kind) {
    memset(cfg, 0, sizeof *cfg);
    cfg->kind = kind;
    cfg->beta = SIMUSER_BETA_DEFAULT;
    cfg->like_quantile = kind == SIMUSER_LIKES_DARK     ? 0.5f
                         : kind == SIMUSER_LIKES_SAMPLE ? 0.1f
                                                        : 0;
    cfg->seed = 1;
}

// ---------------------------------------------------------------------------------------------
// raw utilities

// r (B) and liked (B, may be NULL) of B <= max_B images; liked is judged against like_raw
// except for LIKES_CLASS, whose judgement is the arg-max. For the classifier kinds the images
// go through one evaluation forward.
static int raw_batch(SimUser *u, const float *images, int B, double *r, int *liked) {
    const SimUserConfig *c = &u->cfg;
    if (c->kind == SIMUSER_LIKES_DARK) {
        for (int b = 0; b < B; b++) {
            const float *x = images + (long)b * SIMUSER_IMG;
            double s = 0;
            for (int p = 0; p < SIMUSER_IMG; p++)
                s += x[p];
            r[b] = -s / SIMUSER_IMG;
            if (liked)
                liked[b] = r[b] > u->like_raw;
        }
        return 0;
    }
    int rc = classifier_forward(u->eval, images, B, 0);
    if (rc)
        return rc;
    for (int b = 0; b < B; b++) {
        if (c->kind == SIMUSER_LIKES_CLASS) {
            const float *l = u->eval->logits + (long)b * CLASSIFIER_CLASSES;
            int best;
            double logp = (double)l[c->target_class] - classifier_log_sum_exp(l, &best);
            r[b] = log(exp(logp) + SIMUSER_CLASS_FLOOR);
            if (liked)
                liked[b] = best == c->target_class;
        } else {
            const float *f = u->eval->feat + (long)b * CLASSIFIER_FEATURES;
            double d2 = 0;
            for (int j = 0; j < CLASSIFIER_FEATURES; j++) {
                double d = (double)f[j] - u->target_feat[j];
                d2 += d * d;
            }
            r[b] = -sqrt(d2);
            if (liked)
                liked[b] = r[b] > u->like_raw;
        }
    }
    return 0;
}

static int compare_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

// ---------------------------------------------------------------------------------------------
// init and free

int simuser_init(SimUser *u, const SimUserConfig *cfg, Classifier *eval, const float *calib,
                 long n_calib, char *err, size_t errlen) {
    memset(u, 0, sizeof *u);
    double *calib_raw = NULL; // (n_calib)
    int rc = KERNELS_EINVAL;
    if ((unsigned)cfg->kind >= SIMUSER_KINDS) {
        snprintf(err, errlen, "simuser: unknown preference kind %d", (int)cfg->kind);
        goto fail;
    }
    if (!(cfg->beta > 0) || !isfinite(cfg->beta)) {
        snprintf(err, errlen, "simuser: beta must be positive and finite, got %g", cfg->beta);
        goto fail;
    }
    if (!eval && cfg->kind != SIMUSER_LIKES_DARK) {
        snprintf(err, errlen, "simuser: a %s user needs the evaluator", KIND_NAME[cfg->kind]);
        goto fail;
    }
    if (cfg->kind == SIMUSER_LIKES_CLASS &&
        (cfg->target_class < 0 || cfg->target_class >= CLASSIFIER_CLASSES)) {
        snprintf(err, errlen, "simuser: target class %d out of [0, %d)", cfg->target_class,
                 CLASSIFIER_CLASSES);
        goto fail;
    }
    if (cfg->kind == SIMUSER_LIKES_SAMPLE && !cfg->target_image) {
        snprintf(err, errlen, "simuser: a sample user needs a target image");
        goto fail;
    }
    if (cfg->kind != SIMUSER_LIKES_CLASS && cfg->like_quantile != 0 &&
        !(cfg->like_quantile > 0 && cfg->like_quantile < 1)) {
        snprintf(err, errlen, "simuser: like_quantile %g out of (0, 1)", cfg->like_quantile);
        goto fail;
    }
    if (!calib || n_calib < SIMUSER_CALIB_MIN) {
        snprintf(err, errlen, "simuser: %ld calibration frames, need at least %d", n_calib,
                 SIMUSER_CALIB_MIN);
        goto fail;
    }
    u->cfg = *cfg;
    u->cfg.target_image = NULL;
    if (u->cfg.kind != SIMUSER_LIKES_CLASS && u->cfg.like_quantile == 0)
        u->cfg.like_quantile = u->cfg.kind == SIMUSER_LIKES_DARK ? 0.5f : 0.1f;
    u->eval = eval;
    rng_seed(&u->rng, cfg->seed);
    u->max_B = eval ? eval->max_B : SCRATCH_B_NO_EVAL;

    rc = KERNELS_ENOMEM;
    u->u_a = malloc(sizeof(float) * u->max_B);
    u->u_b = malloc(sizeof(float) * u->max_B);
    u->raw = malloc(sizeof(double) * u->max_B);
    calib_raw = malloc(sizeof(double) * n_calib);
    if (!u->u_a || !u->u_b || !u->raw || !calib_raw) {
        snprintf(err, errlen, "simuser: out of memory");
        goto fail;
    }
    if (cfg->kind == SIMUSER_LIKES_SAMPLE) {
        if ((rc = classifier_forward(eval, cfg->target_image, 1, 0))) {
            snprintf(err, errlen, "simuser: evaluator on the target: %s", kernels_strerror(rc));
            goto fail;
        }
        memcpy(u->target_feat, eval->feat, sizeof u->target_feat);
    }

    // Calibration: the raw utilities of the random frames give the scale and the like boundary.
    for (long i = 0; i < n_calib; i += u->max_B) {
        int B = (int)(n_calib - i < u->max_B ? n_calib - i : u->max_B);
        if ((rc = raw_batch(u, calib + i * SIMUSER_IMG, B, calib_raw + i, NULL))) {
            snprintf(err, errlen, "simuser: evaluator on the calibration: %s",
                     kernels_strerror(rc));
            goto fail;
        }
    }
    double mean = 0, var = 0;
    for (long i = 0; i < n_calib; i++)
        mean += calib_raw[i];
    mean /= n_calib;
    for (long i = 0; i < n_calib; i++)
        var += (calib_raw[i] - mean) * (calib_raw[i] - mean);
    var /= n_calib - 1;
    if (!(var > 1e-12) || !isfinite(var)) {
        rc = KERNELS_EINVAL;
        snprintf(err, errlen, "simuser: the calibration frames all have the same %s utility",
                 KIND_NAME[cfg->kind]);
        goto fail;
    }
    u->raw_mean = mean;
    u->raw_std = sqrt(var);
    if (cfg->kind == SIMUSER_LIKES_CLASS) {
        u->like_raw = log(SIMUSER_CLASS_RATE_P + SIMUSER_CLASS_FLOOR);
    } else {
        // Liked: strictly above the (1 - q) quantile, the sorted value at that rank.
        qsort(calib_raw, (size_t)n_calib, sizeof *calib_raw, compare_double);
        long rank = (long)floor((1.0 - u->cfg.like_quantile) * (double)(n_calib - 1));
        u->like_raw = calib_raw[rank];
    }
    u->like_u = (float)((u->like_raw - u->raw_mean) / u->raw_std);
    free(calib_raw);
    return 0;
fail:
    free(calib_raw);
    simuser_free(u);
    return rc;
}

void simuser_free(SimUser *u) {
    free(u->u_a);
    free(u->u_b);
    free(u->raw);
    u->u_a = u->u_b = NULL;
    u->raw = NULL;
    u->eval = NULL;
}

// ---------------------------------------------------------------------------------------------
// queries

int simuser_utility(SimUser *u, const float *images, long n, float *util, int *liked) {
    double *raw = u->raw;
    for (long i = 0; i < n; i += u->max_B) {
        int B = (int)(n - i < u->max_B ? n - i : u->max_B);
        int rc = raw_batch(u, images + i * SIMUSER_IMG, B, raw, liked ? liked + i : NULL);
        if (rc)
            return rc;
        for (int b = 0; b < B && util; b++)
            util[i + b] = (float)((raw[b] - u->raw_mean) / u->raw_std);
    }
    return 0;
}

int simuser_likes(SimUser *u, const float *images, long n, int *liked) {
    return simuser_utility(u, images, n, NULL, liked);
}

int simuser_choice_draw(SimUser *u, double du) {
    double p_a = 1.0 / (1.0 + exp(-(double)u->cfg.beta * du));
    return rng_uniform(&u->rng) < p_a ? 0 : 1;
}

int simuser_compare(SimUser *u, const float *a, const float *b, long n, int *choice) {
    for (long i = 0; i < n; i += u->max_B) {
        int B = (int)(n - i < u->max_B ? n - i : u->max_B);
        int rc = simuser_utility(u, a + i * SIMUSER_IMG, B, u->u_a, NULL);
        if (!rc)
            rc = simuser_utility(u, b + i * SIMUSER_IMG, B, u->u_b, NULL);
        if (rc)
            return rc;
        for (int k = 0; k < B; k++)
            choice[i + k] = simuser_choice_draw(u, (double)u->u_a[k] - u->u_b[k]);
    }
    return 0;
}

int simuser_rate(SimUser *u, const float *images, long n, int *rating) {
    for (long i = 0; i < n; i += u->max_B) {
        int B = (int)(n - i < u->max_B ? n - i : u->max_B);
        int rc = simuser_utility(u, images + i * SIMUSER_IMG, B, u->u_a, NULL);
        if (rc)
            return rc;
        for (int k = 0; k < B; k++)
            rating[i + k] = simuser_choice_draw(u, (double)u->u_a[k] - u->like_u) == 0 ? 1 : -1;
    }
    return 0;
}
