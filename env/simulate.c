// simulate.c — in-process simulated users against the policy learner and two baselines
// (simulate.h).
#include "env/simulate.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "generator/gan.h"
#include "kernels/kernels.h"
#include "util/clock.h"

#define SIM_MAX_B 64

static const char *const sim_names[SIM_METHODS] = {"policy", "random", "evolution"};

const char *sim_method_name(SimMethod m) { return m >= 0 && m < SIM_METHODS ? sim_names[m] : "?"; }

int sim_method_parse(const char *s, SimMethod *m) {
    for (int i = 0; i < SIM_METHODS; i++)
        if (!strcmp(s, sim_names[i])) {
            *m = (SimMethod)i;
            return 0;
        }
    return -1;
}

void sim_config_default(SimConfig *c, SimMethod m) {
    memset(c, 0, sizeof *c);
    c->method = m;
    c->budget = 100;
    c->check_n = 50;
    c->satisfied_frac = 0.8;
    c->population = 8;
    c->mutation = 0.3f;
    c->class_mutation = 0.1f;
    c->seed = 1;
}

int sim_render(SimWorld *w, const float *z, const int32_t *y, int n, float *phi) {
    if (n < 1 || n > w->max_B) return KERNELS_EINVAL;
    int conditional = w->g.cfg.n_classes > 0;
    int rc = generator_forward(&w->g, z, conditional ? y : NULL, n);
    if (rc) return rc;
    long img = (long)w->g.cfg.channels * w->g.cfg.img * w->g.cfg.img;
    memcpy(w->img, w->g.img, (size_t)n * img * sizeof(float));
    return phi ? features_compute(&w->feat, w->img, conditional ? y : NULL, n, phi) : 0;
}

int sim_world_init(SimWorld *w, const char *gen_ckpt, const char *eval_ckpt, long pool_n,
                   uint64_t seed, char *err, size_t errlen) {
    memset(w, 0, sizeof *w);
    w->max_B = SIM_MAX_B;
    int rc = generator_load(&w->g, gen_ckpt, w->max_B, err, errlen);
    if (!rc) rc = features_init(&w->feat, gen_ckpt, w->max_B, err, errlen);
    if (!rc) rc = classifier_load(&w->eval, eval_ckpt, w->max_B, NULL, err, errlen);
    if (rc) return rc;
    const SaganConfig *cfg = &w->g.cfg;
    if (cfg->channels != 1 || cfg->img != CLASSIFIER_IMG) {
        snprintf(err, errlen, "%s: simulated users judge 1x32x32 frames, not %dx%dx%d", gen_ckpt,
                 cfg->channels, cfg->img, cfg->img);
        return KERNELS_EINVAL;
    }
    int Z = cfg->z_dim, F = w->feat.F;
    long img = (long)cfg->img * cfg->img;
    w->max_comparisons = 4096;
    policy_config_default(&w->pc, F);
    w->img = malloc((size_t)w->max_B * img * sizeof(float));
    w->z = malloc((size_t)w->max_B * Z * sizeof(float));
    w->y = calloc((size_t)w->max_B, sizeof(int32_t));
    w->phi = malloc((size_t)w->max_B * F * sizeof(float));
    w->pool_img = malloc((size_t)pool_n * img * sizeof(float));
    if (!w->img || !w->z || !w->y || !w->phi || !w->pool_img ||
        policy_pool_alloc(&w->pool, pool_n, Z, cfg->n_classes, F)) {
        snprintf(err, errlen, "out of memory");
        return KERNELS_ENOMEM;
    }
    PolicyPool *p = &w->pool;
    gan_sample_latents(cfg, seed, pool_n, -1, p->z, cfg->n_classes ? p->y : NULL);
    for (long i = 0; i < pool_n; i += w->max_B) {
        int B = (int)(pool_n - i < w->max_B ? pool_n - i : w->max_B);
        if ((rc = sim_render(w, p->z + i * Z, p->y + i, B, NULL))) break;
        memcpy(w->pool_img + i * img, w->img, (size_t)B * img * sizeof(float));
    }
    if (!rc) rc = features_calibrate(&w->feat, w->pool_img, cfg->n_classes ? p->y : NULL, pool_n);
    if (!rc) rc = features_compute(&w->feat, w->pool_img, cfg->n_classes ? p->y : NULL, pool_n, p->phi);
    if (!rc) policy_pool_finish(p);
    if (!rc) rc = policy_scratch_init(&w->scratch, &w->pc, p, w->max_comparisons);
    if (rc) snprintf(err, errlen, "building the policy pool: %s", kernels_strerror(rc));
    return rc;
}

void sim_world_free(SimWorld *w) {
    generator_free(&w->g);
    features_free(&w->feat);
    classifier_free(&w->eval);
    policy_scratch_free(&w->scratch);
    policy_pool_free(&w->pool);
    free(w->pool_img);
    free(w->img);
    free(w->z);
    free(w->y);
    free(w->phi);
    memset(w, 0, sizeof *w);
}

// A method's distribution, for drawing the frames of a satisfaction check.
typedef struct {
    SimMethod m;
    const PolicyParams *params;      // policy
    const float *par_z;              // evolution parents (n_par, Z)
    const int32_t *par_y;
    int n_par;
    const SimConfig *c;
} SimDist;

static void draw_prior(const SaganConfig *cfg, Rng *r, float *z, int32_t *y) {
    rng_normal(r, z, cfg->z_dim);
    *y = cfg->n_classes ? (int32_t)rng_below(r, (uint32_t)cfg->n_classes) : 0;
}

// A child of two random parents: uniform crossover, Gaussian mutation, a parent's class.
static void draw_child(const SimDist *d, const SaganConfig *cfg, Rng *r, float *z, int32_t *y) {
    int Z = cfg->z_dim;
    int a = (int)rng_below(r, (uint32_t)d->n_par), b = (int)rng_below(r, (uint32_t)d->n_par);
    rng_normal(r, z, Z);
    for (int k = 0; k < Z; k++) {
        const float *src = rng_uniform(r) < 0.5f ? d->par_z + (long)a * Z : d->par_z + (long)b * Z;
        z[k] = src[k] + d->c->mutation * z[k];
    }
    *y = rng_uniform(r) < 0.5f ? d->par_y[a] : d->par_y[b];
    if (cfg->n_classes && rng_uniform(r) < d->c->class_mutation)
        *y = (int32_t)rng_below(r, (uint32_t)cfg->n_classes);
}

static void draw(const SimDist *d, const SaganConfig *cfg, Rng *r, float *z, int32_t *y) {
    if (d->m == SIM_POLICY) {
        int c = policy_sample(d->params, r, z);
        *y = c < 0 ? 0 : c;
    } else if (d->m == SIM_EVOLUTION && d->n_par > 0) {
        draw_child(d, cfg, r, z, y);
    } else {
        draw_prior(cfg, r, z, y);
    }
}

// Draws c->check_n frames of d and returns the fraction u likes (or a negative code).
static double check(SimWorld *w, SimUser *u, const SimDist *d, Rng *r) {
    const SaganConfig *cfg = &w->g.cfg;
    int n = d->c->check_n, liked = 0;
    for (int i = 0; i < n; i += w->max_B) {
        int B = n - i < w->max_B ? n - i : w->max_B;
        for (int b = 0; b < B; b++) draw(d, cfg, r, w->z + (long)b * cfg->z_dim, w->y + b);
        int lk[SIM_MAX_B];
        int rc = sim_render(w, w->z, w->y, B, NULL);
        if (!rc) rc = simuser_likes(u, w->img, B, lk);
        if (rc) return rc;
        for (int b = 0; b < B; b++) liked += lk[b];
    }
    return (double)liked / n;
}

// Shows one frame (z, y) and returns the user's rating, its features in w->phi.
static int show(SimWorld *w, SimUser *u, const float *z, int32_t y, int *rating) {
    int rc = sim_render(w, z, &y, 1, w->phi);
    return rc ? rc : simuser_rate(u, w->img, 1, rating);
}

static int run_policy(SimWorld *w, SimUser *u, const SimConfig *c, SimResult *out) {
    Learner L;
    int rc = learner_init(&L, &w->pc, &w->pool, c->seed, w->max_comparisons);
    if (rc) return rc;
    Rng r, rchk;
    rng_seed(&r, c->seed);
    rng_seed(&rchk, c->seed ^ 0x9e3779b97f4a7c15ull);
    SimDist d = {SIM_POLICY, &L.params, NULL, NULL, 0, c};
    int Z = w->g.cfg.z_dim;
    float z[Z];
    double ms = 0;
    double frac = check(w, u, &d, &rchk);
    while (frac >= 0 && frac < c->satisfied_frac && out->events < c->budget) {
        int32_t y;
        int rating;
        draw(&d, &w->g.cfg, &r, z, &y);
        if ((rc = show(w, u, z, y, &rating))) break;
        if ((rc = learner_rate(&L, w->phi, rating))) break;
        double t0 = 1e3 * clock_now_s();
        if ((rc = learner_update(&L, &w->scratch, NULL))) break;
        ms += 1e3 * clock_now_s() - t0;
        out->events++;
        frac = check(w, u, &d, &rchk);
    }
    if (frac < 0 && !rc) rc = (int)frac;
    out->liked_frac = frac;
    out->satisfied = frac >= c->satisfied_frac;
    out->update_ms = out->events ? ms / out->events : 0;
    learner_free(&L);
    return rc;
}

static int run_random(SimWorld *w, SimUser *u, const SimConfig *c, SimResult *out) {
    Rng r, rchk;
    rng_seed(&r, c->seed);
    rng_seed(&rchk, c->seed ^ 0x9e3779b97f4a7c15ull);
    SimDist d = {SIM_RANDOM, NULL, NULL, NULL, 0, c};
    float z[w->g.cfg.z_dim];
    double frac = check(w, u, &d, &rchk);
    int rc = 0;
    while (frac >= 0 && frac < c->satisfied_frac && out->events < c->budget) {
        int32_t y;
        int rating;
        draw(&d, &w->g.cfg, &r, z, &y);
        if ((rc = show(w, u, z, y, &rating))) break;
        out->events++;
        if (out->events % 10 == 0) frac = check(w, u, &d, &rchk); // nothing changes in between
    }
    if (frac < 0 && !rc) rc = (int)frac;
    out->liked_frac = frac;
    out->satisfied = frac >= c->satisfied_frac;
    return rc;
}

static int run_evolution(SimWorld *w, SimUser *u, const SimConfig *c, SimResult *out) {
    const SaganConfig *cfg = &w->g.cfg;
    int Z = cfg->z_dim, P = c->population, max_par = P / 2 > 0 ? P / 2 : 1;
    float *gz = malloc((size_t)P * Z * sizeof(float)), *pz = malloc((size_t)max_par * Z * sizeof(float));
    int32_t gy[P], py[max_par];
    if (!gz || !pz) {
        free(gz);
        free(pz);
        return KERNELS_ENOMEM;
    }
    Rng r, rchk;
    rng_seed(&r, c->seed);
    rng_seed(&rchk, c->seed ^ 0x9e3779b97f4a7c15ull);
    SimDist d = {SIM_EVOLUTION, NULL, pz, py, 0, c};
    int rc = 0, n_new = P;
    for (int i = 0; i < P; i++) draw_prior(cfg, &r, gz + (long)i * Z, gy + i);
    double frac = check(w, u, &d, &rchk);
    while (frac >= 0 && frac < c->satisfied_frac && out->events < c->budget) {
        // rate the generation's new members; the liked join the parents (the oldest leave)
        for (int i = 0; i < n_new && out->events < c->budget; i++) {
            int rating;
            if ((rc = show(w, u, gz + (long)i * Z, gy[i], &rating))) goto done;
            out->events++;
            if (rating > 0) {
                if (d.n_par == max_par) {
                    memmove(pz, pz + Z, (size_t)(max_par - 1) * Z * sizeof(float));
                    memmove(py, py + 1, (size_t)(max_par - 1) * sizeof(int32_t));
                    d.n_par--;
                }
                memcpy(pz + (long)d.n_par * Z, gz + (long)i * Z, (size_t)Z * sizeof(float));
                py[d.n_par++] = gy[i];
            }
        }
        frac = check(w, u, &d, &rchk);
        // the next generation: the parents stay on screen (not rated again), children fill it
        n_new = d.n_par ? P - d.n_par : P;
        for (int i = 0; i < n_new; i++) draw(&d, cfg, &r, gz + (long)i * Z, gy + i);
    }
done:
    if (frac < 0 && !rc) rc = (int)frac;
    out->liked_frac = frac;
    out->satisfied = frac >= c->satisfied_frac;
    free(gz);
    free(pz);
    return rc;
}

int sim_run(SimWorld *w, SimUser *u, const SimConfig *c, SimResult *out) {
    memset(out, 0, sizeof *out);
    switch (c->method) {
    case SIM_POLICY: return run_policy(w, u, c, out);
    case SIM_RANDOM: return run_random(w, u, c, out);
    case SIM_EVOLUTION: return run_evolution(w, u, c, out);
    default: return KERNELS_EINVAL;
    }
}

