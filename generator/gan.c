// gan.c — SN-GAN training iteration and the checkpoint format of a training run.
//
// The iteration mirrors bench/torch_sagan.py step for step (so the speed comparison is fair):
// D step on a real and a fake batch with the hinge loss, then a G step on fresh latents. The real
// and fake batches go through D in one pass of 2B images (same weights, bigger GEMMs). Not here:
// the networks (sagan.c), the file format itself (safetensors.c), the command line (cli_train.c).
#include "generator/gan.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "generator/safetensors.h"
#include "kernels/kernels.h"
#include "kernels/ops.h"

#define GAN_FORMAT "steer.sagan.v1"

void gan_hparams_default(GanHparams *hp) {
    *hp = (GanHparams){.lr_g = 1e-4f, .lr_d = 4e-4f, .beta1 = 0.0f, .beta2 = 0.9f, .eps = 1e-8f,
                       .weight_decay = 0.0f, .batch = 64};
}

int gan_init(GanTrainer *t, const SaganConfig *cfg, const GanHparams *hp, uint64_t seed) {
    memset(t, 0, sizeof *t);
    t->cfg = *cfg;
    t->hp = *hp;
    int B = hp->batch;
    long img = (long)cfg->channels * cfg->img * cfg->img;
    // Three independent streams from one seed: G's init, D's init, and training's draws.
    if (generator_init(&t->G, cfg, B, seed * 3 + 1)) return -1;
    if (discriminator_init(&t->D, cfg, 2 * B, seed * 3 + 2)) return -1;
    rng_seed(&t->rng, seed * 3 + 3);
    t->z = params_zalloc(sizeof(float) * B * cfg->z_dim);
    t->y = params_zalloc(sizeof(int32_t) * 2 * B);
    t->x = params_zalloc(sizeof(float) * 2 * B * img);
    t->dlogits = params_zalloc(sizeof(float) * 2 * B);
    t->dimg = params_zalloc(sizeof(float) * B * img);
    if (!t->z || !t->y || !t->x || !t->dlogits || !t->dimg) return -1;
    return 0;
}

void gan_free(GanTrainer *t) {
    generator_free(&t->G);
    discriminator_free(&t->D);
    free(t->z);
    free(t->y);
    free(t->x);
    free(t->dlogits);
    free(t->dimg);
    t->z = t->x = t->dlogits = t->dimg = NULL;
    t->y = NULL;
}

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        int rc_ = (x);                                                                             \
        if (rc_) return rc_;                                                                       \
    } while (0)

// Latents and (conditional) labels for B fakes, from the trainer's stream.
static void draw_fakes(GanTrainer *t, int32_t *y, int B) {
    rng_normal(&t->rng, t->z, (long)B * t->cfg.z_dim);
    if (t->cfg.n_classes)
        for (int b = 0; b < B; b++) y[b] = (int32_t)rng_below(&t->rng, t->cfg.n_classes);
}

int gan_step(GanTrainer *t, const Dataset *data) {
    const SaganConfig *c = &t->cfg;
    int B = t->hp.batch;
    long img = (long)c->channels * c->img * c->img;
    if (data->c != c->channels || data->h != c->img || data->w != c->img || data->n < 1)
        return KERNELS_EINVAL;
    if (c->n_classes && !data->labels) return KERNELS_EINVAL;
    const int32_t *ycond = c->n_classes ? t->y : NULL;

    // D step: real batch (uniform draws with replacement, so the RNG is the whole data state).
    for (int b = 0; b < B; b++) {
        uint32_t i = rng_below(&t->rng, (uint32_t)data->n);
        memcpy(t->x + b * img, data->images + (long)i * img, img * sizeof(float));
        t->y[b] = data->labels ? data->labels[i] : 0;
    }
    draw_fakes(t, t->y + B, B);
    paramset_sn_forward(&t->G.ps, 1);
    CHECK(generator_forward(&t->G, t->z, c->n_classes ? t->y + B : NULL, B));
    memcpy(t->x + B * img, t->G.img, B * img * sizeof(float));
    paramset_sn_forward(&t->D.ps, 1);
    CHECK(discriminator_forward(&t->D, t->x, ycond, 2 * B));
    float lr = hinge_d_real_loss(t->dlogits, t->D.out, B);
    float lf = hinge_d_fake_loss(t->dlogits + B, t->D.out + B, B);
    t->loss_d = lr + lf;
    paramset_zero_grad(&t->D.ps);
    CHECK(discriminator_backward(&t->D, t->dlogits, 2 * B, 1, NULL));
    paramset_sn_backward(&t->D.ps);
    paramset_adam(&t->D.ps, t->hp.lr_d, t->hp.beta1, t->hp.beta2, t->hp.eps, t->hp.weight_decay);

    // G step: fresh latents; D's parameters get no gradient, only its input does.
    draw_fakes(t, t->y + B, B);
    CHECK(generator_forward(&t->G, t->z, c->n_classes ? t->y + B : NULL, B));
    paramset_sn_forward(&t->D.ps, 1);
    CHECK(discriminator_forward(&t->D, t->G.img, c->n_classes ? t->y + B : NULL, B));
    t->loss_g = hinge_g_loss(t->dlogits, t->D.out, B);
    memset(t->dimg, 0, B * img * sizeof(float));
    CHECK(discriminator_backward(&t->D, t->dlogits, B, 0, t->dimg));
    paramset_zero_grad(&t->G.ps);
    CHECK(generator_backward(&t->G, t->dimg, B));
    paramset_sn_backward(&t->G.ps);
    paramset_adam(&t->G.ps, t->hp.lr_g, t->hp.beta1, t->hp.beta2, t->hp.eps, t->hp.weight_decay);
    t->step++;
    return 0;
}

// ---------------------------------------------------------------------------------------------
// checkpoints

// Up to 8 tensors per parameter (value, u, v, m, v) plus a few scalars per run.
#define MAX_TENSORS (2 * PARAMS_MAX * 5 + 8)
#define NAME_LEN 128

typedef struct {
    StTensor t[MAX_TENSORS];
    int n;
} TensorList;

static void list_add(TensorList *l, const char *prefix, const char *name, const char *suffix,
                     StDtype dt, int ndim, const int64_t *shape, const void *data) {
    StTensor *t = &l->t[l->n++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s%s%s", prefix, name, suffix);
    t->dtype = dt;
    t->ndim = ndim;
    size_t n = safetensors_dtype_size(dt);
    for (int d = 0; d < ndim; d++) {
        t->shape[d] = shape[d];
        n *= (size_t)shape[d];
    }
    t->data = data;
    t->nbytes = n;
}

// The SN vector name for a weight "x.weight_orig": "x.weight_u" / "x.weight_v".
static void sn_name(char *out, size_t len, const char *prefix, const char *name, char which) {
    const char *cut = strstr(name, "_orig");
    int base = cut ? (int)(cut - name) : (int)strlen(name);
    snprintf(out, len, "%s%.*s_%c", prefix, base, name, which);
}

static void list_paramset(TensorList *l, const char *prefix, const ParamSet *ps, int with_opt,
                          const int64_t *adam_t) {
    for (int i = 0; i < ps->n; i++) {
        const Param *p = &ps->p[i];
        int64_t shape[4];
        for (int d = 0; d < p->ndim; d++) shape[d] = p->shape[d];
        list_add(l, prefix, p->name, "", ST_F32, p->ndim, shape, ps->params + p->offset);
        if (p->sn) {
            char nm[NAME_LEN];
            int64_t r = p->rows, c = p->cols;
            sn_name(nm, sizeof nm, "", p->name, 'u');
            list_add(l, prefix, nm, "", ST_F32, 1, &r, ps->sn_u + p->u_offset);
            sn_name(nm, sizeof nm, "", p->name, 'v');
            list_add(l, prefix, nm, "", ST_F32, 1, &c, ps->sn_v + p->v_offset);
        }
        if (with_opt) {
            list_add(l, prefix, p->name, ".adam_m", ST_F32, p->ndim, shape, ps->m + p->offset);
            list_add(l, prefix, p->name, ".adam_v", ST_F32, p->ndim, shape, ps->v + p->offset);
        }
    }
    if (with_opt) {
        int64_t one = 1;
        list_add(l, prefix, "adam_step", "", ST_I64, 1, &one, adam_t);
    }
}

int gan_save(const GanTrainer *t, const char *path, char *err, size_t errlen) {
    static TensorList l; // large; gan_save is not reentrant (one trainer saves at a time)
    l.n = 0;
    int64_t g_t = t->G.ps.adam_t, d_t = t->D.ps.adam_t, step = t->step, one = 1, four = 4;
    list_paramset(&l, "G.", &t->G.ps, 1, &g_t);
    list_paramset(&l, "D.", &t->D.ps, 1, &d_t);
    list_add(&l, "", "train.step", "", ST_I64, 1, &one, &step);
    list_add(&l, "", "train.rng", "", ST_U64, 1, &four, t->rng.s);
    const SaganConfig *c = &t->cfg;
    const GanHparams *h = &t->hp;
    char v[16][32];
    snprintf(v[0], 32, "%d", c->ch);
    snprintf(v[1], 32, "%d", c->z_dim);
    snprintf(v[2], 32, "%d", c->img);
    snprintf(v[3], 32, "%d", c->channels);
    snprintf(v[4], 32, "%d", c->n_classes);
    snprintf(v[5], 32, "%d", c->attn_res);
    snprintf(v[6], 32, "%.9g", h->lr_g);
    snprintf(v[7], 32, "%.9g", h->lr_d);
    snprintf(v[8], 32, "%.9g", h->beta1);
    snprintf(v[9], 32, "%.9g", h->beta2);
    snprintf(v[10], 32, "%.9g", h->eps);
    snprintf(v[11], 32, "%.9g", h->weight_decay);
    snprintf(v[12], 32, "%d", h->batch);
    snprintf(v[13], 32, "%ld", t->step);
    const char *meta[] = {"format", GAN_FORMAT, "config", c->name, "ch", v[0], "z_dim", v[1],
                          "img", v[2], "channels", v[3], "n_classes", v[4], "attn_res", v[5],
                          "lr_g", v[6], "lr_d", v[7], "beta1", v[8], "beta2", v[9], "eps", v[10],
                          "weight_decay", v[11], "batch", v[12], "step", v[13], NULL};
    return safetensors_write(path, l.t, l.n, meta, err, errlen);
}

static int meta_int(const StFile *f, const char *key, int lo, int hi, int *out, char *err,
                    size_t errlen) {
    const char *s = safetensors_meta(f, key);
    char *end;
    if (!s) return snprintf(err, errlen, "%s: metadata has no '%s'", f->path, key), -1;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi)
        return snprintf(err, errlen, "%s: metadata '%s' = '%s' is not an integer in [%d, %d]",
                        f->path, key, s, lo, hi), -1;
    *out = (int)v;
    return 0;
}

static int meta_float(const StFile *f, const char *key, float *out, char *err, size_t errlen) {
    const char *s = safetensors_meta(f, key);
    char *end;
    if (!s) return snprintf(err, errlen, "%s: metadata has no '%s'", f->path, key), -1;
    float v = strtof(s, &end);
    if (*end || end == s || v != v)
        return snprintf(err, errlen, "%s: metadata '%s' = '%s' is not a number", f->path, key, s),
               -1;
    *out = v;
    return 0;
}

static int read_config(const StFile *f, SaganConfig *c, char *err, size_t errlen) {
    memset(c, 0, sizeof *c);
    const char *fmt = safetensors_meta(f, "format");
    if (!fmt || strcmp(fmt, GAN_FORMAT))
        return snprintf(err, errlen, "%s: not a steer model (metadata format is '%s', expected '%s')",
                        f->path, fmt ? fmt : "(none)", GAN_FORMAT), -1;
    const char *name = safetensors_meta(f, "config");
    snprintf(c->name, sizeof c->name, "%s", name ? name : "custom");
    if (meta_int(f, "ch", 1, 1 << 20, &c->ch, err, errlen) ||
        meta_int(f, "z_dim", 1, 1 << 20, &c->z_dim, err, errlen) ||
        meta_int(f, "img", 1, 1 << 20, &c->img, err, errlen) ||
        meta_int(f, "channels", 1, 1 << 20, &c->channels, err, errlen) ||
        meta_int(f, "n_classes", 0, 1 << 20, &c->n_classes, err, errlen) ||
        meta_int(f, "attn_res", 0, 1 << 20, &c->attn_res, err, errlen))
        return -1;
    char why[256];
    if (sagan_config_check(c, why, sizeof why))
        return snprintf(err, errlen, "%s: bad model config: %s", f->path, why), -1;
    return 0;
}

static int load_tensor(const StFile *f, const char *name, StDtype dt, int ndim,
                       const int64_t *shape, void *dst, char *err, size_t errlen) {
    const StTensor *t;
    int rc = safetensors_expect(f, name, dt, ndim, shape, &t, err, errlen);
    if (rc) return rc;
    memcpy(dst, t->data, t->nbytes);
    return 0;
}

static int load_paramset(const StFile *f, const char *prefix, ParamSet *ps, int with_opt,
                         char *err, size_t errlen) {
    char nm[NAME_LEN];
    int rc;
    for (int i = 0; i < ps->n; i++) {
        const Param *p = &ps->p[i];
        int64_t shape[4];
        for (int d = 0; d < p->ndim; d++) shape[d] = p->shape[d];
        snprintf(nm, sizeof nm, "%s%s", prefix, p->name);
        if ((rc = load_tensor(f, nm, ST_F32, p->ndim, shape, ps->params + p->offset, err, errlen)))
            return rc;
        if (p->sn) {
            int64_t r = p->rows, c = p->cols;
            sn_name(nm, sizeof nm, prefix, p->name, 'u');
            if ((rc = load_tensor(f, nm, ST_F32, 1, &r, ps->sn_u + p->u_offset, err, errlen)))
                return rc;
            sn_name(nm, sizeof nm, prefix, p->name, 'v');
            if ((rc = load_tensor(f, nm, ST_F32, 1, &c, ps->sn_v + p->v_offset, err, errlen)))
                return rc;
        }
        if (with_opt) {
            snprintf(nm, sizeof nm, "%s%s.adam_m", prefix, p->name);
            if ((rc = load_tensor(f, nm, ST_F32, p->ndim, shape, ps->m + p->offset, err, errlen)))
                return rc;
            snprintf(nm, sizeof nm, "%s%s.adam_v", prefix, p->name);
            if ((rc = load_tensor(f, nm, ST_F32, p->ndim, shape, ps->v + p->offset, err, errlen)))
                return rc;
        }
    }
    if (with_opt) {
        int64_t one = 1, t;
        snprintf(nm, sizeof nm, "%sadam_step", prefix);
        if ((rc = load_tensor(f, nm, ST_I64, 1, &one, &t, err, errlen))) return rc;
        if (t < 0) return snprintf(err, errlen, "%s: %s is negative", f->path, nm), -1;
        ps->adam_t = (long)t;
    }
    return 0;
}

int gan_load(GanTrainer *t, const char *path, const GanHparams *hp, char *err, size_t errlen) {
    StFile f = {0};
    SaganConfig cfg;
    GanHparams h;
    int rc = safetensors_read(&f, path, err, errlen);
    memset(t, 0, sizeof *t);
    if (rc) goto fail;
    if ((rc = read_config(&f, &cfg, err, errlen))) goto fail;
    gan_hparams_default(&h);
    if ((rc = meta_float(&f, "lr_g", &h.lr_g, err, errlen)) ||
        (rc = meta_float(&f, "lr_d", &h.lr_d, err, errlen)) ||
        (rc = meta_float(&f, "beta1", &h.beta1, err, errlen)) ||
        (rc = meta_float(&f, "beta2", &h.beta2, err, errlen)) ||
        (rc = meta_float(&f, "eps", &h.eps, err, errlen)) ||
        (rc = meta_float(&f, "weight_decay", &h.weight_decay, err, errlen)) ||
        (rc = meta_int(&f, "batch", 1, 1 << 16, &h.batch, err, errlen)))
        goto fail;
    if (hp) h = *hp;
    if ((rc = gan_init(t, &cfg, &h, 0))) {
        snprintf(err, errlen, "%s: out of memory building the model", path);
        goto fail;
    }
    int64_t one = 1, four = 4, step;
    if ((rc = load_paramset(&f, "G.", &t->G.ps, 1, err, errlen)) ||
        (rc = load_paramset(&f, "D.", &t->D.ps, 1, err, errlen)) ||
        (rc = load_tensor(&f, "train.step", ST_I64, 1, &one, &step, err, errlen)) ||
        (rc = load_tensor(&f, "train.rng", ST_U64, 1, &four, t->rng.s, err, errlen)))
        goto fail;
    if (step < 0) {
        rc = -1;
        snprintf(err, errlen, "%s: train.step is negative", path);
        goto fail;
    }
    t->step = (long)step;
    paramset_sn_forward(&t->G.ps, 0);
    paramset_sn_forward(&t->D.ps, 0);
    safetensors_free(&f);
    return 0;
fail:
    safetensors_free(&f);
    return rc ? rc : -1;
}

// Loads one network (G when g is set, else D) of a checkpoint, effective weights computed.
static int network_load(const char *path, const char *prefix, int max_B, Generator *g,
                        Discriminator *d, char *err, size_t errlen) {
    StFile f = {0};
    SaganConfig cfg;
    int rc = safetensors_read(&f, path, err, errlen);
    if (g) memset(g, 0, sizeof *g);
    if (d) memset(d, 0, sizeof *d);
    if (rc) goto fail;
    if ((rc = read_config(&f, &cfg, err, errlen))) goto fail;
    if ((rc = g ? generator_init(g, &cfg, max_B, 0) : discriminator_init(d, &cfg, max_B, 0))) {
        snprintf(err, errlen, "%s: out of memory building the model", path);
        goto fail;
    }
    ParamSet *ps = g ? &g->ps : &d->ps;
    if ((rc = load_paramset(&f, prefix, ps, 0, err, errlen))) goto fail;
    paramset_sn_forward(ps, 0);
    safetensors_free(&f);
    return 0;
fail:
    safetensors_free(&f);
    return rc ? rc : -1;
}

int generator_load(Generator *g, const char *path, int max_B, char *err, size_t errlen) {
    return network_load(path, "G.", max_B, g, NULL, err, errlen);
}

int discriminator_load(Discriminator *d, const char *path, int max_B, char *err, size_t errlen) {
    return network_load(path, "D.", max_B, NULL, d, err, errlen);
}

void gan_sample_latents(const SaganConfig *cfg, uint64_t seed, long n, int fixed_class, float *z,
                        int32_t *y) {
    Rng r;
    rng_seed(&r, seed);
    rng_normal(&r, z, n * cfg->z_dim);
    if (cfg->n_classes && y)
        for (long i = 0; i < n; i++)
            y[i] = fixed_class >= 0 ? fixed_class : (int32_t)rng_below(&r, cfg->n_classes);
}
