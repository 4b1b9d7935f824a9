// test_techniques.c — the training techniques of docs/training.md, each switched on for a short
// run on tiny configs with real Fashion-MNIST, and their math against references.
//
// For each switch: it really acts (changes what it should, leaves what it should not), and its
// gradient is right: R1 and WGAN-GP (a finite-difference double backward) against a central
// difference, in double, of the penalty computed by a double D with an exact input gradient
// built from the reference kernels; orthogonal regularization and the L1 activation term
// against central differences. Then: the defaults are the plain run bit for bit, a checkpoint
// records every switch, a run resumed with all of them on is bit-exact, and gan_hparams_set
// refuses what it should. Everything is seeded; nothing is timed.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "generator/data/fmnist.h"
#include "generator/gan.h"
#include "generator/safetensors.h"
#include "kernels/ops.h"
#include "kernels/reference.h"
#include "kernels/regularize.h"
#include "tests/check.h"

static Dataset data;
static char dir[64];

static int setup(void **state) {
    (void)state;
    return check_fmnist_setup(&data, dir, sizeof dir, "steer_test_techniques");
}

static int teardown(void **state) {
    (void)state;
    return check_fmnist_teardown(&data, dir);
}

static GanHparams tiny_hp(void) {
    GanHparams hp;
    gan_hparams_default(&hp);
    hp.batch = 4;
    return hp;
}

static void set(GanHparams *hp, const char *key, const char *value) {
    char err[512];
    if (gan_hparams_set(hp, key, value, err, sizeof err))
        fail_msg("set %s=%s: %s", key, value, err);
}

static void path_of(char *out, size_t len, const char *name) {
    snprintf(out, len, "%s/%s", dir, name);
}

static void trainer(GanTrainer *t, const char *config, const GanHparams *hp, int steps) {
    SaganConfig cfg;
    assert_int_equal(sagan_config_lookup(&cfg, config), 0);
    assert_int_equal(gan_init(t, &cfg, hp, 5), 0);
    for (int i = 0; i < steps; i++) {
        assert_int_equal(gan_step(t, &data), 0);
        assert_true(isfinite(t->loss_d) && isfinite(t->loss_g));
        assert_true(isfinite(t->penalty_d) && isfinite(t->reg_g));
    }
}

static void expect_meta(const char *path, const char *key, const char *want);
static int same(const float *a, const float *b, long n) { return !memcmp(a, b, n * sizeof(float)); }

// The state a run carries (and a checkpoint holds); with outputs set, also what the last step
// computed (effective weights, losses).
static int paramsets_equal(const ParamSet *a, const ParamSet *b, int outputs) {
    return a->total == b->total && a->adam_t == b->adam_t && same(a->params, b->params, a->total) &&
           same(a->m, b->m, a->total) && same(a->v, b->v, a->total) &&
           same(a->sn_u, b->sn_u, a->u_total) && (!outputs || same(a->w_eff, b->w_eff, a->total));
}

static int trainers_equal_as(const GanTrainer *a, const GanTrainer *b, int outputs) {
    const ParamSet *g = &a->G.ps;
    return paramsets_equal(&a->G.ps, &b->G.ps, outputs) &&
           paramsets_equal(&a->D.ps, &b->D.ps, outputs) && a->step == b->step &&
           !memcmp(a->rng.s, b->rng.s, sizeof a->rng.s) &&
           a->D.dropout_seed == b->D.dropout_seed && same(a->ema, b->ema, g->total) &&
           same(a->ema_u, b->ema_u, g->u_total) &&
           (!outputs || (a->loss_d == b->loss_d && a->loss_g == b->loss_g &&
                         a->penalty_d == b->penalty_d && a->reg_g == b->reg_g));
}

static int trainers_equal(const GanTrainer *a, const GanTrainer *b) {
    return trainers_equal_as(a, b, 1);
}

static double max_abs_diff(const float *a, const float *b, long n) {
    double m = 0;
    for (long i = 0; i < n; i++) m = fmax(m, fabs((double)a[i] - b[i]));
    return m;
}

// ---------------------------------------------------------------------------------------------
// gan_hparams_set

static void test_hparams_set(void **state) {
    (void)state;
    GanHparams hp, before;
    gan_hparams_default(&hp);
    char err[512], buf[64];
    // Every key reads back what was set, as text, and the table lists the keys exactly once.
    const char *key;
    int n = 0;
    for (int i = 0; (key = gan_hparams_key(i, NULL)); i++, n++) {
        assert_int_equal(gan_hparams_get(&hp, key, buf, sizeof buf), 0);
        assert_int_equal(gan_hparams_set(&hp, key, buf, err, sizeof err), 0);
    }
    assert_true(n >= 20);
    set(&hp, "lr_g", "2e-4");
    set(&hp, "lr_d", "0.0003");
    set(&hp, "beta1", "0.5");
    set(&hp, "beta2", "0.99");
    set(&hp, "batch", "32");
    set(&hp, "r1_gamma", "10");
    set(&hp, "gp_lambda", "1");
    set(&hp, "penalty_every", "16");
    set(&hp, "ortho_beta", "1e-4");
    set(&hp, "l1_act", "0.01");
    set(&hp, "d_dropout", "0.3");
    set(&hp, "ema_decay", "0.999");
    set(&hp, "ema_start", "1000");
    set(&hp, "freeze_d", "2");
    set(&hp, "sn_g", "off");
    set(&hp, "sn_d", "false");
    assert_true(hp.lr_g == 2e-4f && hp.lr_d == 3e-4f && hp.beta1 == 0.5f && hp.beta2 == 0.99f);
    assert_true(hp.batch == 32 && hp.r1_gamma == 10.0f && hp.gp_lambda == 1.0f);
    assert_true(hp.penalty_every == 16 && hp.ortho_beta == 1e-4f && hp.l1_act == 0.01f);
    assert_true(hp.d_dropout == 0.3f && hp.ema_decay == 0.999f && hp.ema_start == 1000);
    assert_true(hp.freeze_d == 2 && hp.sn_g == 0 && hp.sn_d == 0);
    set(&hp, "sn_g", "1");
    set(&hp, "sn_d", "TRUE");
    assert_true(hp.sn_g == 1 && hp.sn_d == 1);
    // weight_decay sets both networks; the per-network keys set one.
    set(&hp, "weight_decay", "0.01");
    assert_true(hp.weight_decay_g == 0.01f && hp.weight_decay_d == 0.01f);
    set(&hp, "weight_decay_d", "0");
    assert_true(hp.weight_decay_g == 0.01f && hp.weight_decay_d == 0.0f);

    // Refusals leave hp as it was and say which key and why.
    static const char *bad[][3] = {
        {"no_such_key", "1", "unknown training switch 'no_such_key'"},
        {"", "1", "unknown"},
        {"r1_gamma", "abc", "r1_gamma"},
        {"r1_gamma", "-1", "[0, "},
        {"r1_gamma", "nan", "r1_gamma"},
        {"r1_gamma", "inf", "r1_gamma"},
        {"r1_gamma", "1x", "r1_gamma"},
        {"r1_gamma", "", "r1_gamma"},
        {"lr_g", "11", "lr_g"},
        {"beta2", "1", "beta2"},
        {"batch", "0", "batch"},
        {"batch", "1.5", "integer"},
        {"penalty_every", "0", "penalty_every"},
        {"penalty_fd_step", "0", "penalty_fd_step"},
        {"d_dropout", "1", "d_dropout"},
        {"ema_decay", "1", "ema_decay"},
        {"ema_start", "-3", "ema_start"},
        {"freeze_d", "99", "freeze_d"},
        {"sn_g", "maybe", "sn_g"},
        {"sn_d", "2", "sn_d"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        before = hp;
        err[0] = 0;
        assert_int_not_equal(gan_hparams_set(&hp, bad[i][0], bad[i][1], err, sizeof err), 0);
        CHECK_ASSERT_HAS(err, bad[i][2]);
        assert_memory_equal(&hp, &before, sizeof hp);
    }
    assert_int_not_equal(gan_hparams_get(&hp, "no_such_key", buf, sizeof buf), 0);
}

// ---------------------------------------------------------------------------------------------
// defaults, metadata

// Every switch set to its off value by name trains exactly like the defaults, and a default run
// is what the plain SN-GAN computes (tests/test_gan.c checks its resume; golden values measured
// before the techniques existed matched on the machine they were added on).
static void test_defaults_unchanged(void **state) {
    (void)state;
    GanHparams a = tiny_hp(), b = tiny_hp();
    set(&b, "sn_g", "1");
    set(&b, "sn_d", "1");
    set(&b, "r1_gamma", "0");
    set(&b, "gp_lambda", "0");
    set(&b, "ortho_beta", "0");
    set(&b, "l1_act", "0");
    set(&b, "d_dropout", "0");
    set(&b, "ema_decay", "0");
    set(&b, "freeze_d", "0");
    set(&b, "weight_decay", "0");
    assert_memory_equal(&a, &b, sizeof a);
    GanTrainer ta, tb;
    trainer(&ta, "tinyc", &a, 3);
    trainer(&tb, "tinyc", &b, 3);
    assert_true(trainers_equal(&ta, &tb));
    assert_true(ta.penalty_d == 0.0f && ta.reg_g == 0.0f);
    // The checkpoint records every switch; a default run stores no EMA.
    char path[256], err[512], buf[64];
    path_of(path, sizeof path, "defaults.safetensors");
    assert_int_equal(gan_save(&ta, path, err, sizeof err), 0);
    StFile f = {0};
    assert_int_equal(safetensors_read(&f, path, err, sizeof err), 0);
    const char *key;
    for (int i = 0; (key = gan_hparams_key(i, NULL)); i++) {
        const char *v = safetensors_meta(&f, key);
        if (!v) fail_msg("metadata lacks %s", key);
        gan_hparams_get(&a, key, buf, sizeof buf);
        assert_string_equal(v, buf);
    }
    assert_null(safetensors_find(&f, "G_ema.fc.weight_orig"));
    safetensors_free(&f);
    gan_free(&ta);
    gan_free(&tb);
}

// A checkpoint from before the techniques (metadata without their keys, "weight_decay" alone)
// loads with every technique at its default.
static void test_old_checkpoint_metadata(void **state) {
    (void)state;
    GanHparams hp = tiny_hp();
    GanTrainer t;
    trainer(&t, "tinyc", &hp, 1);
    char path[256], old[256], err[512];
    path_of(path, sizeof path, "new.safetensors");
    path_of(old, sizeof old, "old.safetensors");
    assert_int_equal(gan_save(&t, path, err, sizeof err), 0);
    StFile f = {0};
    assert_int_equal(safetensors_read(&f, path, err, sizeof err), 0);
    const char *meta[] = {"format", "steer.sagan.v1", "config", "tinyc", "ch", "8", "z_dim", "16",
                          "img", "32", "channels", "1", "n_classes", "10", "attn_res", "16",
                          "lr_g", "1e-4", "lr_d", "4e-4", "beta1", "0", "beta2", "0.9", "eps",
                          "1e-8", "weight_decay", "0.5", "batch", "4", "step", "1", NULL};
    // Without train.dropout_seed too, as older files were.
    StTensor *ts = calloc(f.n, sizeof *ts);
    int n = 0;
    for (int i = 0; i < f.n; i++)
        if (strcmp(f.tensors[i].name, "train.dropout_seed")) ts[n++] = f.tensors[i];
    assert_int_equal(safetensors_write(old, ts, n, meta, err, sizeof err), 0);
    free(ts);
    safetensors_free(&f);
    GanTrainer u;
    assert_int_equal(gan_load(&u, old, NULL, err, sizeof err), 0);
    assert_true(u.hp.weight_decay_g == 0.5f && u.hp.weight_decay_d == 0.5f);
    assert_true(u.hp.sn_g == 1 && u.hp.sn_d == 1 && u.hp.r1_gamma == 0 && u.hp.ema_decay == 0);
    assert_true(u.hp.penalty_every == 1 && u.hp.penalty_fd_step == 0.1f && u.hp.freeze_d == 0);
    assert_int_equal(gan_step(&u, &data), 0);
    GanHparams h2;
    assert_int_equal(gan_hparams_load(&h2, old, err, sizeof err), 0);
    assert_true(h2.weight_decay_d == 0.5f && h2.batch == 4);
    gan_free(&u);
    gan_free(&t);
}

// ---------------------------------------------------------------------------------------------
// 1. spectral norm on or off

static void test_sn_off(void **state) {
    (void)state;
    SaganConfig cfg;
    sagan_config_lookup(&cfg, "tiny");
    enum { B = 2 };
    Generator g;
    Discriminator d;
    assert_int_equal(generator_init(&g, &cfg, B, 1), 0);
    assert_int_equal(discriminator_init(&d, &cfg, B, 2), 0);
    float z[B * 16];
    Rng r;
    rng_seed(&r, 3);
    rng_normal(&r, z, B * 16);
    long img = 32 * 32;
    float *on = malloc(sizeof(float) * B * img), x[B * 32 * 32];
    for (long i = 0; i < B * img; i++) x[i] = 2 * rng_uniform(&r) - 1;
    assert_int_equal(generator_forward(&g, z, NULL, B), 0);
    memcpy(on, g.img, sizeof(float) * B * img);
    assert_int_equal(discriminator_forward(&d, x, NULL, B), 0);
    float d_on[B] = {d.out[0], d.out[1]};
    // Off: the effective weights are the raw ones, and the outputs change.
    g.ps.sn_off = d.ps.sn_off = 1;
    paramset_sn_forward(&g.ps, 1);
    paramset_sn_forward(&d.ps, 1);
    for (int i = 0; i < g.ps.n; i++)
        if (g.ps.p[i].sn)
            assert_true(same(g.ps.w_eff + g.ps.p[i].offset, g.ps.params + g.ps.p[i].offset,
                             g.ps.p[i].numel));
    for (int i = 0; i < d.ps.n; i++)
        if (d.ps.p[i].sn)
            assert_true(same(d.ps.w_eff + d.ps.p[i].offset, d.ps.params + d.ps.p[i].offset,
                             d.ps.p[i].numel));
    assert_int_equal(generator_forward(&g, z, NULL, B), 0);
    assert_int_equal(discriminator_forward(&d, x, NULL, B), 0);
    double dg = max_abs_diff(on, g.img, B * img);
    fprintf(stderr, "SN off: max |G(z) change| %.4f, D logits %.4f %.4f -> %.4f %.4f\n", dg,
            d_on[0], d_on[1], d.out[0], d.out[1]);
    assert_true(dg > 1e-3);
    assert_true(fabsf(d_on[0] - d.out[0]) > 1e-4f);
    // And the gradient folds straight through: grads = dw_eff.
    float dout[B] = {1.0f, -0.5f};
    paramset_zero_grad(&d.ps);
    assert_int_equal(discriminator_backward(&d, dout, B, 1, NULL), 0);
    float *keep = malloc(sizeof(float) * d.ps.total);
    memcpy(keep, d.ps.dw_eff, sizeof(float) * d.ps.total);
    paramset_sn_backward(&d.ps);
    for (int i = 0; i < d.ps.n; i++)
        if (d.ps.p[i].sn)
            assert_true(same(d.ps.grads + d.ps.p[i].offset, keep + d.ps.p[i].offset,
                             d.ps.p[i].numel));
    free(keep);
    free(on);
    generator_free(&g);
    discriminator_free(&d);

    // A training run with SN off: u never moves, and generator_load serves it without SN too.
    GanHparams hp = tiny_hp();
    set(&hp, "sn_g", "0");
    set(&hp, "sn_d", "0");
    GanTrainer t;
    SaganConfig tc;
    sagan_config_lookup(&tc, "tiny");
    assert_int_equal(gan_init(&t, &tc, &hp, 5), 0);
    float *u0 = malloc(sizeof(float) * t.G.ps.u_total);
    memcpy(u0, t.G.ps.sn_u, sizeof(float) * t.G.ps.u_total);
    for (int i = 0; i < 3; i++) assert_int_equal(gan_step(&t, &data), 0);
    assert_true(same(u0, t.G.ps.sn_u, t.G.ps.u_total));
    free(u0);
    char path[256], err[512];
    path_of(path, sizeof path, "sn_off.safetensors");
    assert_int_equal(gan_save(&t, path, err, sizeof err), 0);
    Generator lg;
    assert_int_equal(generator_load(&lg, path, B, err, sizeof err), 0);
    assert_int_equal(lg.ps.sn_off, 1);
    for (int i = 0; i < lg.ps.n; i++)
        if (lg.ps.p[i].sn)
            assert_true(same(lg.ps.w_eff + lg.ps.p[i].offset, t.G.ps.params + lg.ps.p[i].offset,
                             lg.ps.p[i].numel));
    generator_free(&lg);
    gan_free(&t);
}

// ---------------------------------------------------------------------------------------------
// 2. R1 and WGAN-GP: a double D with an exact input gradient, and the penalty's FD in double

static double *dalloc(long n) { return CHECK_ALLOC(double, n); }

// Effective weight i in double: raw for non-SN params or with SN off, else W / sigma with the
// stored u (no power iteration), as paramset_sn_forward(ps, 0) computes it.
static const double *ref_w(const ParamSet *ps, const double *params, double *w_eff, int i) {
    const Param *p = &ps->p[i];
    if (!p->sn || ps->sn_off) return params + p->offset;
    double *u = dalloc(p->rows), *v = dalloc(p->cols);
    for (int k = 0; k < p->rows; k++) u[k] = ps->sn_u[p->u_offset + k];
    specnorm_forward_ref(w_eff + p->offset, v, u, params + p->offset, p->rows, p->cols, 0);
    free(u);
    free(v);
    return w_eff + p->offset;
}

// D's pre-activations at every LReLU (layer 0: conv0, layer k + 1: stage k), in double.
typedef struct {
    double *pre[SAGAN_MAX_STAGES + 1];
} RefPattern;

static void ref_pattern_free(RefPattern *p) {
    for (int l = 0; l <= SAGAN_MAX_STAGES; l++) free(p->pre[l]), p->pre[l] = NULL;
}

// LReLU with the slopes of ref (its own input when ref is the input itself).
static void ref_lrelu(double *out, const double *inp, const double *ref, long n) {
    for (long i = 0; i < n; i++) out[i] = ref[i] > 0 ? inp[i] : 0.1 * inp[i];
}

// gx (B, C, H, W) = grad_x of sum_b D(x_b), in double, by a forward that keeps its activations
// and a backward through the reference kernels. With hold set, every LReLU takes its slopes
// from hold's pre-activations (the activation pattern at another parameter point); with keep
// set, this forward's pre-activations are stored there.
static void ref_d_input_grad(const Discriminator *d, const double *params, const double *xin,
                             const int32_t *y, int B, double *gx, const RefPattern *hold,
                             RefPattern *keep) {
    const SaganConfig *c = &d->cfg;
    const ParamSet *ps = &d->ps;
    double *we = dalloc(ps->total);
    const double *w[PARAMS_MAX];
    for (int i = 0; i < ps->n; i++) w[i] = ref_w(ps, params, we, i);
    int r = c->img, S = d->n_stages;
    long n0 = (long)B * d->chan[0] * r * r;
    double *c0 = dalloc(n0), *a0 = dalloc(n0);
    conv2d_forward_ref(c0, xin, w[d->p_in_w], w[d->p_in_b], B, c->channels, r, r, d->chan[0], 3, 1,
                       1);
    const double *slope0 = hold ? hold->pre[0] : c0;
    ref_lrelu(a0, c0, slope0, n0);
    if (keep) keep->pre[0] = c0;
    double *in[SAGAN_MAX_STAGES + 1], *conv[SAGAN_MAX_STAGES], *act[SAGAN_MAX_STAGES];
    double *att = NULL;
    in[0] = a0;
    for (int k = 0; k < S; k++) {
        int Ci = d->chan[k], Co = d->chan[k + 1];
        long n = (long)B * Co * (r / 2) * (r / 2);
        conv[k] = dalloc(n);
        act[k] = dalloc(n);
        conv2d_forward_ref(conv[k], in[k], w[d->p_conv_w[k]], w[d->p_conv_b[k]], B, Ci, r, r, Co,
                           4, 2, 1);
        r /= 2;
        ref_lrelu(act[k], conv[k], hold ? hold->pre[k + 1] : conv[k], n);
        in[k + 1] = act[k];
        if (k == d->attn_stage) {
            att = dalloc(n);
            attention_forward_ref(att, act[k], w[d->p_f], w[d->p_g], w[d->p_h], w[d->p_o],
                                  w[d->p_gamma][0], B, Co, r * r);
            in[k + 1] = att;
        }
    }
    // d logit_b / d features = fc weight (+ the class's embedding row for the projection).
    int F = d->chan[S] * 16;
    double *dcur = dalloc((long)B * F);
    for (int b = 0; b < B; b++)
        for (int i = 0; i < F; i++)
            dcur[(long)b * F + i] =
                w[d->p_fc_w][i] + (c->n_classes ? w[d->p_embed][(long)y[b] * F + i] : 0.0);
    for (int k = S - 1; k >= 0; k--) {
        int Ci = d->chan[k], Co = d->chan[k + 1];
        long n = (long)B * Co * r * r;
        if (k == d->attn_stage) {
            double *da = dalloc(n);
            attention_backward_ref(da, NULL, NULL, NULL, NULL, NULL, dcur, act[k], w[d->p_f],
                                   w[d->p_g], w[d->p_h], w[d->p_o], w[d->p_gamma][0], B, Co,
                                   r * r);
            free(dcur);
            dcur = da;
        }
        double *dc = dalloc(n), *din = dalloc((long)B * Ci * 4 * r * r);
        leaky_relu_backward_ref(dc, dcur, hold ? hold->pre[k + 1] : conv[k], 0.1, n);
        conv2d_backward_ref(din, NULL, NULL, dc, in[k], w[d->p_conv_w[k]], B, Ci, 2 * r, 2 * r,
                            Co, 4, 2, 1);
        free(dc);
        free(dcur);
        dcur = din;
        r *= 2;
    }
    double *dc0 = dalloc(n0);
    leaky_relu_backward_ref(dc0, dcur, slope0, 0.1, n0);
    memset(gx, 0, sizeof(double) * B * c->channels * r * r);
    conv2d_backward_ref(gx, NULL, NULL, dc0, xin, w[d->p_in_w], B, c->channels, r, r, d->chan[0],
                        3, 1, 1);
    free(dc0);
    free(dcur);
    for (int k = 0; k < S; k++) {
        if (keep)
            keep->pre[k + 1] = conv[k];
        else
            free(conv[k]);
        free(act[k]);
    }
    free(att);
    if (!keep) free(c0);
    free(a0);
    free(we);
}

typedef struct {
    const Discriminator *d;
    const double *x;
    const int32_t *y;
    int B;
    GanPenaltyKind kind;
    const RefPattern *hold;
} PenaltyCtx;

// The penalty itself in double: R1 1/2 mean ||g_b||^2, GP mean (||g_b|| - 1)^2.
static double ref_penalty(const PenaltyCtx *c, const double *params) {
    long img = (long)c->d->cfg.channels * c->d->cfg.img * c->d->cfg.img;
    double *gx = dalloc(c->B * img), P = 0;
    ref_d_input_grad(c->d, params, c->x, c->y, c->B, gx, c->hold, NULL);
    for (int b = 0; b < c->B; b++) {
        double n2 = 0;
        for (long i = 0; i < img; i++) n2 += gx[b * img + i] * gx[b * img + i];
        P += c->kind == GAN_PENALTY_R1 ? 0.5 * n2 : (sqrt(n2) - 1) * (sqrt(n2) - 1);
    }
    free(gx);
    return P / c->B;
}

static double penalty_loss(const double *x, long n, void *ctx) {
    (void)n;
    return ref_penalty(ctx, x);
}

// The reference is the gradient autograd's double backward computes: P's central difference in
// the parameters (h = 1e-6, double) with D's LReLU pattern held at the unperturbed parameters
// (so no difference straddles a kink; LReLU's second derivative counts as 0).
// Tolerance of the finite-difference double backward against it, per checked entry:
// |analytic - reference| <= PEN_ATOL * max|reference over all checked entries| + PEN_RTOL |ref|.
// Measured (tinyc, B = 2): worst error 2e-5 of the largest gradient at fd_step 0.1 (the
// default), 1e-4 at 1e-2, 2e-3 at 1e-3 (float rounding of the two opposite passes grows as the
// step shrinks), 3e-4 at 1 (attention's curvature).
#define PEN_ATOL 2e-3
#define PEN_RTOL 1e-2

static void check_penalty(GanPenaltyKind kind, int sn_off, float fd_step) {
    SaganConfig cfg;
    assert_int_equal(sagan_config_lookup(&cfg, "tinyc"), 0);
    enum { B = 2 };
    Discriminator d;
    assert_int_equal(discriminator_init(&d, &cfg, 2 * B, 11), 0);
    d.ps.params[d.ps.p[d.p_gamma].offset] = -0.6f; // attention on, so it gets gradients too
    d.ps.sn_off = sn_off;
    Rng rng;
    rng_seed(&rng, 17);
    long img = 32 * 32;
    float *x = CHECK_ALLOC(float, B * img);
    double *xd = dalloc(B * img), *params = dalloc(d.ps.total);
    for (long i = 0; i < B * img; i++) x[i] = 2 * rng_uniform(&rng) - 1, xd[i] = x[i];
    for (long i = 0; i < d.ps.total; i++) params[i] = d.ps.params[i];
    int32_t y[B] = {1, 6};

    GanPenaltyBuffers pb;
    assert_int_equal(gan_penalty_buffers_init(&pb, &d, B), 0);
    paramset_sn_forward(&d.ps, 0);
    paramset_zero_grad(&d.ps);
    double value;
    GanHparams def;
    gan_hparams_default(&def);
    assert_int_equal(
        gan_penalty_backward(&d, &pb, kind, 1.0f, fd_step ? fd_step : def.penalty_fd_step, x, y,
                             B, &value),
        0);
    paramset_sn_backward(&d.ps);

    RefPattern pat = {0};
    double *gx0 = dalloc(B * img);
    ref_d_input_grad(&d, params, xd, y, B, gx0, NULL, &pat);
    free(gx0);
    PenaltyCtx c = {&d, xd, y, B, kind, &pat};
    double P = ref_penalty(&c, params);
    fprintf(stderr, "%s%s, fd_step %g: penalty %.6g, reference %.6g\n",
            kind == GAN_PENALTY_R1 ? "R1" : "GP", sn_off ? " (SN off)" : "",
            fd_step ? fd_step : def.penalty_fd_step, value, P);
    assert_true(fabs(value - P) <= 1e-4 * fabs(P) + 1e-7);
    assert_true(P > 0);

    // Three entries of every tensor, central differences in double (h = 1e-6).
    enum { K = 3 };
    double got[PARAMS_MAX][K], want[PARAMS_MAX][K], scale = 0;
    long idx[PARAMS_MAX][K];
    for (int i = 0; i < d.ps.n; i++) {
        const Param *p = &d.ps.p[i];
        for (int k = 0; k < K; k++) {
            idx[i][k] = (long)rng_below(&rng, (uint32_t)p->numel);
            double *slot = params + p->offset + idx[i][k], keep = *slot;
            *slot = keep + 1e-6;
            double lp = penalty_loss(params, 0, &c);
            *slot = keep - 1e-6;
            double lm = penalty_loss(params, 0, &c);
            *slot = keep;
            want[i][k] = (lp - lm) / 2e-6;
            got[i][k] = d.ps.grads[p->offset + idx[i][k]];
            scale = fmax(scale, fabs(want[i][k]));
        }
    }
    int bad = 0;
    double worst = 0;
    for (int i = 0; i < d.ps.n; i++)
        for (int k = 0; k < K; k++) {
            double e = fabs(got[i][k] - want[i][k]);
            worst = fmax(worst, e / scale);
            if (e > PEN_ATOL * scale + PEN_RTOL * fabs(want[i][k])) {
                fprintf(stderr, "  %s[%ld]: FD double backward %.7g, reference %.7g\n",
                        d.ps.p[i].name, idx[i][k], got[i][k], want[i][k]);
                bad++;
            }
        }
    fprintf(stderr, "  worst |error| / max|reference| = %.2e over %d entries\n", worst,
            d.ps.n * K);
    assert_int_equal(bad, 0);
    ref_pattern_free(&pat);
    gan_penalty_buffers_free(&pb);
    discriminator_free(&d);
    free(x);
    free(xd);
    free(params);
}

static void test_r1_gradient(void **state) {
    (void)state;
    check_penalty(GAN_PENALTY_R1, 0, 0);
    check_penalty(GAN_PENALTY_R1, 1, 0);
    check_penalty(GAN_PENALTY_R1, 0, 1e-2f);
}

static void test_gp_gradient(void **state) {
    (void)state;
    check_penalty(GAN_PENALTY_GP, 0, 0);
    check_penalty(GAN_PENALTY_GP, 1, 1e-2f);
}

// In training: R1 (or GP) changes D's update but not the first D forward, and reports a penalty;
// lazy regularization applies it every N-th step only.
static void test_penalties_in_training(void **state) {
    (void)state;
    GanHparams off = tiny_hp(), r1 = tiny_hp(), gp = tiny_hp(), lazy = tiny_hp();
    set(&r1, "r1_gamma", "10");
    set(&gp, "gp_lambda", "10");
    set(&lazy, "r1_gamma", "10");
    set(&lazy, "penalty_every", "2");
    GanTrainer a, b, c, e;
    trainer(&a, "tinyc", &off, 1);
    trainer(&b, "tinyc", &r1, 1);
    trainer(&c, "tinyc", &gp, 1);
    trainer(&e, "tinyc", &lazy, 1);
    assert_true(a.loss_d == b.loss_d && a.loss_d == c.loss_d); // same D before its update
    assert_true(b.penalty_d > 0 && c.penalty_d > 0 && a.penalty_d == 0);
    assert_false(same(a.D.ps.params, b.D.ps.params, a.D.ps.total));
    assert_false(same(a.D.ps.params, c.D.ps.params, a.D.ps.total));
    assert_false(same(b.D.ps.params, c.D.ps.params, a.D.ps.total));
    // Lazy, step 0: applied with weight x 2 (so twice R1's penalty on the same batch).
    fprintf(stderr, "R1 %.6g, lazy R1 %.6g, GP %.6g\n", b.penalty_d, e.penalty_d, c.penalty_d);
    assert_true(fabsf(e.penalty_d - 2 * b.penalty_d) <= 1e-5f * b.penalty_d);
    assert_int_equal(gan_step(&e, &data), 0); // step 1: not due
    assert_true(e.penalty_d == 0.0f);
    assert_int_equal(gan_step(&e, &data), 0); // step 2: due
    assert_true(e.penalty_d > 0.0f);
    for (int i = 0; i < 2; i++) assert_int_equal(gan_step(&c, &data), 0);
    gan_free(&a);
    gan_free(&b);
    gan_free(&c);
    gan_free(&e);
}

// ---------------------------------------------------------------------------------------------
// 3. orthogonal regularization

typedef struct {
    int OUT, IN;
    double beta;
} OrthoCtx;

static double ortho_ref(const double *w, long n, void *ctx) {
    (void)n;
    const OrthoCtx *c = ctx;
    double r = 0;
    for (int i = 0; i < c->OUT; i++)
        for (int j = 0; j < c->OUT; j++) {
            if (i == j) continue;
            double dot = 0;
            for (int k = 0; k < c->IN; k++) dot += w[i * c->IN + k] * w[j * c->IN + k];
            r += dot * dot;
        }
    return c->beta * r;
}

static void test_ortho_gradient(void **state) {
    (void)state;
    // Wide (Gram of rows), tall (through W^T W), square, and one row (no pairs: zero).
    const int shapes[][2] = {{3, 7}, {9, 4}, {5, 5}, {1, 6}, {16, 72}};
    Rng rng;
    rng_seed(&rng, 23);
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        OrthoCtx c = {shapes[s][0], shapes[s][1], 0.37};
        long n = (long)c.OUT * c.IN;
        float *w = CHECK_ALLOC(float, n), *dw = CHECK_ALLOC(float, n);
        float *scratch = CHECK_ALLOC(float, ortho_scratch_floats(c.OUT, c.IN));
        double *wd = CHECK_ALLOC(double, n);
        check_fill_uniform(&rng, w, wd, n, -0.5, 0.5);
        for (long i = 0; i < n; i++) dw[i] = 0.25f; // accumulates onto what is there
        double value;
        assert_int_equal(ortho_reg_backward(dw, &value, w, (float)c.beta, scratch, c.OUT, c.IN),
                         0);
        double want = ortho_ref(wd, n, &c);
        assert_true(fabs(value - want) <= 1e-5 * fabs(want) + 1e-6);
        double *analytic = CHECK_ALLOC(double, n);
        for (long i = 0; i < n; i++) analytic[i] = (double)dw[i] - 0.25;
        char what[64];
        snprintf(what, sizeof what, "ortho (%d, %d)", c.OUT, c.IN);
        // float GEMMs of O(1) entries: 1e-5 absolute, 1e-4 relative.
        assert_int_equal(check_compare_fd(what, analytic, wd, n, 1e-6, ortho_ref, &c, 1e-5, 1e-4),
                         0);
        if (c.OUT == 1) assert_true(value == 0.0);
        free(w);
        free(dw);
        free(scratch);
        free(wd);
        free(analytic);
    }
    // In training: G's update changes and reg_g reports the term.
    GanHparams off = tiny_hp(), on = tiny_hp();
    set(&on, "ortho_beta", "0.1");
    GanTrainer a, b;
    trainer(&a, "tiny", &off, 1);
    trainer(&b, "tiny", &on, 1);
    assert_true(same(a.D.ps.params, b.D.ps.params, a.D.ps.total)); // D's step came first
    assert_false(same(a.G.ps.params, b.G.ps.params, a.G.ps.total));
    assert_true(b.reg_g > 0 && a.reg_g == 0);
    gan_free(&a);
    gan_free(&b);
}

// ---------------------------------------------------------------------------------------------
// 4. weight decay per network

static void test_weight_decay(void **state) {
    (void)state;
    GanHparams off = tiny_hp(), wg = tiny_hp(), wd = tiny_hp();
    set(&wg, "weight_decay_g", "0.5");
    set(&wd, "weight_decay_d", "0.5");
    SaganConfig cfg;
    sagan_config_lookup(&cfg, "tiny");
    GanTrainer a, b, c;
    assert_int_equal(gan_init(&a, &cfg, &off, 5), 0);
    float *g0 = malloc(sizeof(float) * a.G.ps.total);
    memcpy(g0, a.G.ps.params, sizeof(float) * a.G.ps.total);
    assert_int_equal(gan_step(&a, &data), 0);
    trainer(&b, "tiny", &wg, 1);
    trainer(&c, "tiny", &wd, 1);
    // G's decay: D untouched; G's weights are the plain update minus lr * wd * W (decoupled,
    // AdamW), its biases and gamma are the plain update.
    assert_true(same(a.D.ps.params, b.D.ps.params, a.D.ps.total));
    const ParamSet *pa = &a.G.ps, *pb = &b.G.ps;
    float decay = wg.lr_g * 0.5f;
    for (int i = 0; i < pa->n; i++) {
        const Param *p = &pa->p[i];
        for (long k = 0; k < p->numel; k++) {
            long j = p->offset + k;
            double want = pa->params[j] - (p->is_bias ? 0.0 : (double)decay * g0[j]);
            if (fabs(pb->params[j] - want) > 1e-7 + 1e-6 * fabs(want))
                fail_msg("%s[%ld]: decayed %.9g, want %.9g", p->name, k, pb->params[j], want);
        }
    }
    // D's decay: D differs from the plain run.
    assert_false(same(a.D.ps.params, c.D.ps.params, a.D.ps.total));
    free(g0);
    gan_free(&a);
    gan_free(&b);
    gan_free(&c);
}

// ---------------------------------------------------------------------------------------------
// 5. L1 activation sparsity

static void test_kernels(void **state) {
    (void)state;
    // The pattern-held LReLU of the penalty passes: the slope comes from ref, not from the input.
    float in[4] = {1.0f, -1.0f, 2.0f, -2.0f}, ref[4] = {1.0f, 1.0f, -1.0f, 0.0f}, out[4];
    leaky_relu_pattern_forward(out, in, ref, 0.1f, 4);
    float want_out[4] = {1.0f, -1.0f, 0.2f, -0.2f};
    assert_memory_equal(out, want_out, sizeof out);
    float x[7] = {-2.0f, -0.5f, 0.0f, 0.25f, 3.0f, -0.0f, 1e-30f};
    float d[7] = {1, 1, 1, 1, 1, 1, 1};
    assert_true(fabs(l1_forward(x, 7) - (2 + 0.5 + 0.25 + 3 + 1e-30)) < 1e-12);
    l1_backward(d, x, 0.5f, 7);
    float want[7] = {0.5f, 0.5f, 1.0f, 1.5f, 1.5f, 1.0f, 1.5f};
    assert_memory_equal(d, want, sizeof d);
}

// G's L1 term in double: lambda * sum over the block outputs a of mean|a|, by G's forward rebuilt
// from the reference kernels (unconditional G; stops at the last block output).
static double ref_generator_l1(const Generator *g, const double *params, const float *z, int B,
                               double lambda) {
    const SaganConfig *c = &g->cfg;
    const ParamSet *ps = &g->ps;
    double *we = dalloc(ps->total);
    int Z = c->z_dim, C0 = g->chan[0];
    double *zd = dalloc((long)B * Z);
    for (long i = 0; i < (long)B * Z; i++) zd[i] = z[i];
    long n = (long)B * C0 * 16;
    double *x = dalloc(n), *t = dalloc(n), *rn = dalloc((long)B * 64 * 64);
    linear_forward_ref(t, zd, ref_w(ps, params, we, g->p_fc_w), ref_w(ps, params, we, g->p_fc_b),
                       B, Z, C0 * 16);
    leaky_relu_forward_ref(t, t, 0.2, n);
    pixelnorm_forward_ref(x, rn, t, B, C0, 16);
    free(t);
    double L = 0;
    for (long i = 0; i < n; i++) L += fabs(x[i]) / n;
    int r = 4;
    for (int s = 0; s < g->n_stages; s++) {
        int Ci = g->chan[s], Co = g->chan[s + 1];
        double *up = dalloc((long)B * Ci * 4 * r * r);
        upsample2x_forward_ref(up, x, B, Ci, r, r);
        r *= 2;
        n = (long)B * Co * r * r;
        double *cv = dalloc(n), *pn = dalloc(n);
        conv2d_forward_ref(cv, up, ref_w(ps, params, we, g->p_conv_w[s]),
                           ref_w(ps, params, we, g->p_conv_b[s]), B, Ci, r, r, Co, 3, 1, 1);
        leaky_relu_forward_ref(cv, cv, 0.2, n);
        pixelnorm_forward_ref(pn, rn, cv, B, Co, r * r);
        free(up);
        free(cv);
        free(x);
        x = pn;
        if (s == g->attn_stage) {
            double *at = dalloc(n);
            attention_forward_ref(at, x, ref_w(ps, params, we, g->p_f),
                                  ref_w(ps, params, we, g->p_g), ref_w(ps, params, we, g->p_h),
                                  ref_w(ps, params, we, g->p_o),
                                  ref_w(ps, params, we, g->p_gamma)[0], B, Co, r * r);
            free(x);
            x = at;
        }
        for (long i = 0; i < n; i++) L += fabs(x[i]) / n;
    }
    free(x);
    free(rn);
    free(zd);
    free(we);
    return lambda * L;
}

// G's L1 term alone (dimg = 0): the float parameter gradient against central differences
// (h = 1e-6) of the double reference; tolerance 1e-6 + 1e-3 |ref| (float backward of O(1e-2)
// gradients). The term's value against the reference too.
static void test_l1_gradient(void **state) {
    (void)state;
    SaganConfig cfg;
    sagan_config_lookup(&cfg, "tiny");
    enum { B = 2 };
    Generator g;
    assert_int_equal(generator_init(&g, &cfg, B, 4), 0);
    g.ps.params[g.ps.p[g.p_gamma].offset] = 0.5f;
    g.l1_act = 0.7f;
    float z[B * 16];
    Rng r;
    rng_seed(&r, 8);
    rng_normal(&r, z, B * 16);
    float *dimg = CHECK_ALLOC(float, B * 32 * 32);
    double *params = dalloc(g.ps.total);
    for (long i = 0; i < g.ps.total; i++) params[i] = g.ps.params[i];
    paramset_sn_forward(&g.ps, 0);
    assert_int_equal(generator_forward(&g, z, NULL, B), 0);
    double want_v = ref_generator_l1(&g, params, z, B, 0.7);
    fprintf(stderr, "L1 term %.7g, reference %.7g\n", g.l1_value, want_v);
    assert_true(fabs(g.l1_value - want_v) <= 1e-5 * want_v);
    paramset_zero_grad(&g.ps);
    assert_int_equal(generator_backward(&g, dimg, B), 0);
    paramset_sn_backward(&g.ps);
    int bad = 0;
    for (int i = 0; i < g.ps.n; i++) {
        const Param *p = &g.ps.p[i];
        for (int k = 0; k < 3; k++) {
            long j = (long)rng_below(&r, (uint32_t)p->numel);
            double *slot = params + p->offset + j, keep = *slot;
            *slot = keep + 1e-6;
            double lp = ref_generator_l1(&g, params, z, B, 0.7);
            *slot = keep - 1e-6;
            double lm = ref_generator_l1(&g, params, z, B, 0.7);
            *slot = keep;
            double want = (lp - lm) / 2e-6, got = g.ps.grads[p->offset + j];
            if (fabs(got - want) > 1e-6 + 1e-3 * fabs(want)) {
                fprintf(stderr, "  %s[%ld]: analytic %.7g, finite difference %.7g\n", p->name, j,
                        got, want);
                bad++;
            }
        }
    }
    assert_int_equal(bad, 0);
    free(params);
    free(dimg);
    generator_free(&g);

    // In training: G's update changes, D's first update does not; reg_g reports the term.
    GanHparams off = tiny_hp(), on = tiny_hp();
    set(&on, "l1_act", "0.5");
    GanTrainer a, b;
    trainer(&a, "tiny", &off, 1);
    trainer(&b, "tiny", &on, 1);
    assert_true(same(a.D.ps.params, b.D.ps.params, a.D.ps.total));
    assert_false(same(a.G.ps.params, b.G.ps.params, a.G.ps.total));
    assert_true(b.reg_g > 0);
    gan_free(&a);
    gan_free(&b);
}

// ---------------------------------------------------------------------------------------------
// 6. dropout in D

static void test_dropout(void **state) {
    (void)state;
    SaganConfig cfg;
    sagan_config_lookup(&cfg, "tinyc");
    enum { B = 3 };
    Discriminator d;
    assert_int_equal(discriminator_init(&d, &cfg, B, 9), 0);
    long img = 32 * 32;
    float *x = CHECK_ALLOC(float, B * img);
    Rng r;
    rng_seed(&r, 2);
    for (long i = 0; i < B * img; i++) x[i] = 2 * rng_uniform(&r) - 1;
    int32_t y[B] = {0, 4, 9};
    float eval[B], t1[B], t2[B];
    d.dropout = 0.5f;
    assert_int_equal(discriminator_forward(&d, x, y, B), 0); // train = 0: eval, no dropout
    memcpy(eval, d.out, sizeof eval);
    assert_int_equal(discriminator_forward(&d, x, y, B), 0);
    assert_memory_equal(eval, d.out, sizeof eval);
    d.dropout = 0.0f;
    d.train = 1;
    assert_int_equal(discriminator_forward(&d, x, y, B), 0); // rate 0: no dropout either
    assert_memory_equal(eval, d.out, sizeof eval);
    d.dropout = 0.5f;
    uint64_t s0 = d.dropout_seed;
    assert_int_equal(discriminator_forward(&d, x, y, B), 0);
    memcpy(t1, d.out, sizeof t1);
    assert_int_equal(discriminator_forward(&d, x, y, B), 0);
    memcpy(t2, d.out, sizeof t2);
    fprintf(stderr, "dropout: eval %.5f, train %.5f then %.5f\n", eval[0], t1[0], t2[0]);
    assert_true(d.dropout_seed != s0);
    assert_true(memcmp(t1, eval, sizeof t1) && memcmp(t1, t2, sizeof t1));
    // Backward goes through the same mask: fc's weight gradient is sum_b dout_b * dropped
    // features, and the features' gradient is zero where the mask dropped them.
    int F;
    discriminator_features(&d, &F);
    float dout[B] = {1.0f, -2.0f, 0.5f};
    paramset_zero_grad(&d.ps);
    assert_int_equal(discriminator_backward(&d, dout, B, 1, NULL), 0);
    const float *dw = paramset_dw(&d.ps, d.p_fc_w);
    for (int i = 0; i < F; i++) {
        double want = 0;
        for (int b = 0; b < B; b++) want += dout[b] * d.feat_drop[(long)b * F + i];
        assert_true(fabs(dw[i] - want) <= 1e-5 + 1e-5 * fabs(want));
    }
    const float *feat = discriminator_features(&d, NULL);
    const float *dfeat = d.dacts + (feat - d.acts);
    long dropped = 0;
    for (long i = 0; i < (long)B * F; i++)
        if (d.drop_mask[i] == 0.0f) dropped++, assert_true(dfeat[i] == 0.0f);
    assert_true(dropped > B * F / 4 && dropped < 3 * B * F / 4);
    free(x);
    discriminator_free(&d);

    // In training: the run differs from the plain one, and D is back in eval mode after a step.
    GanHparams off = tiny_hp(), on = tiny_hp();
    set(&on, "d_dropout", "0.3");
    GanTrainer a, b;
    trainer(&a, "tinyc", &off, 2);
    trainer(&b, "tinyc", &on, 2);
    assert_true(a.loss_d != b.loss_d);
    assert_int_equal(b.D.train, 0);
    gan_free(&a);
    gan_free(&b);
}

// ---------------------------------------------------------------------------------------------
// 7. EMA of G

static double dist(const float *a, const float *b, long n) {
    double s = 0;
    for (long i = 0; i < n; i++) s += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
    return sqrt(s);
}

static void test_ema(void **state) {
    (void)state;
    GanHparams hp = tiny_hp();
    set(&hp, "ema_decay", "0.9");
    GanTrainer t;
    trainer(&t, "tiny", &hp, 4);
    const ParamSet *ps = &t.G.ps;
    double d0 = dist(t.ema, ps->params, ps->total);
    fprintf(stderr, "EMA: |ema - G| %.5f after 4 steps\n", d0);
    assert_true(d0 > 0);
    // With G frozen (learning rates 0), the EMA closes in on it by the decay at each step.
    t.hp.lr_g = t.hp.lr_d = 0.0f;
    for (int i = 0; i < 5; i++) {
        double before = dist(t.ema, ps->params, ps->total);
        assert_int_equal(gan_step(&t, &data), 0);
        double after = dist(t.ema, ps->params, ps->total);
        assert_true(fabs(after - 0.9 * before) <= 1e-4 * before + 1e-7);
    }

    // The checkpoint holds it (G_ema.*); generator_load serves it, the raw G on request.
    char path[256], plain[256], err[512];
    path_of(path, sizeof path, "ema.safetensors");
    assert_int_equal(gan_save(&t, path, err, sizeof err), 0);
    Generator g;
    assert_int_equal(generator_load(&g, path, 2, err, sizeof err), 0);
    assert_true(same(g.ps.params, t.ema, ps->total));
    assert_true(same(g.ps.sn_u, t.ema_u, ps->u_total));
    generator_free(&g);
    assert_int_equal(generator_load_weights(&g, path, 2, GAN_WEIGHTS_RAW, err, sizeof err), 0);
    assert_true(same(g.ps.params, ps->params, ps->total));
    generator_free(&g);
    assert_int_equal(generator_load_weights(&g, path, 2, GAN_WEIGHTS_EMA, err, sizeof err), 0);
    generator_free(&g);
    GanHparams off = tiny_hp();
    GanTrainer p;
    trainer(&p, "tiny", &off, 1);
    path_of(plain, sizeof plain, "plain.safetensors");
    assert_int_equal(gan_save(&p, plain, err, sizeof err), 0);
    assert_int_not_equal(
        generator_load_weights(&g, plain, 2, GAN_WEIGHTS_EMA, err, sizeof err), 0);
    CHECK_ASSERT_HAS(err, "no EMA");
    generator_free(&g);
    gan_free(&p);
    gan_free(&t);

    // ema_start: a copy of G until that many steps are done, an average after.
    set(&hp, "ema_start", "2");
    trainer(&t, "tiny", &hp, 2);
    assert_true(same(t.ema, t.G.ps.params, t.G.ps.total));
    assert_int_equal(gan_step(&t, &data), 0);
    assert_false(same(t.ema, t.G.ps.params, t.G.ps.total));
    gan_free(&t);
}

// ---------------------------------------------------------------------------------------------
// 8. FreezeD

static void test_freeze_d(void **state) {
    (void)state;
    GanHparams hp = tiny_hp();
    set(&hp, "freeze_d", "2"); // conv0, and blocks.0 with the attention block after it
    SaganConfig cfg;
    sagan_config_lookup(&cfg, "tinyc");
    GanTrainer t;
    assert_int_equal(gan_init(&t, &cfg, &hp, 5), 0);
    ParamSet *ps = &t.D.ps;
    float *p0 = malloc(sizeof(float) * ps->total);
    memcpy(p0, ps->params, sizeof(float) * ps->total);
    for (int i = 0; i < 3; i++) assert_int_equal(gan_step(&t, &data), 0);
    int frozen = 0, moved = 0;
    for (int i = 0; i < ps->n; i++) {
        const Param *p = &ps->p[i];
        int first2 = !strncmp(p->name, "conv0.", 6) || !strncmp(p->name, "blocks.0.", 9) ||
                     !strncmp(p->name, "attn.", 5);
        assert_int_equal(p->frozen, first2);
        float zero[1] = {0};
        int unchanged = same(ps->params + p->offset, p0 + p->offset, p->numel);
        if (first2) {
            // Bit for bit, and Adam's moments never touched.
            assert_true(unchanged);
            for (long k = 0; k < p->numel; k++)
                assert_true(!memcmp(ps->m + p->offset + k, zero, 4) &&
                            !memcmp(ps->v + p->offset + k, zero, 4));
            frozen++;
        } else if (!unchanged) {
            moved++;
        }
    }
    assert_int_equal(frozen, 9);
    assert_true(moved >= 6);
    // G still trains.
    gan_free(&t);
    // freeze_d past the last layer freezes all of D.
    set(&hp, "freeze_d", "7");
    assert_int_equal(gan_init(&t, &cfg, &hp, 5), 0);
    memcpy(p0, t.D.ps.params, sizeof(float) * t.D.ps.total);
    assert_int_equal(gan_step(&t, &data), 0);
    assert_true(same(p0, t.D.ps.params, t.D.ps.total));
    free(p0);
    gan_free(&t);
}

// ---------------------------------------------------------------------------------------------
// resume with every switch on

static void all_on(GanHparams *hp) {
    set(hp, "sn_g", "0");
    set(hp, "r1_gamma", "1");
    set(hp, "gp_lambda", "2");
    set(hp, "penalty_every", "2");
    set(hp, "penalty_fd_step", "0.002");
    set(hp, "ortho_beta", "0.01");
    set(hp, "l1_act", "0.05");
    set(hp, "d_dropout", "0.2");
    set(hp, "ema_decay", "0.95");
    set(hp, "ema_start", "1");
    set(hp, "freeze_d", "1");
    set(hp, "weight_decay_g", "0.01");
    set(hp, "weight_decay_d", "0.02");
    set(hp, "beta1", "0.1");
}

static void test_resume_all_switches(void **state) {
    (void)state;
    GanHparams hp = tiny_hp();
    all_on(&hp);
    char path[256], err[512];
    path_of(path, sizeof path, "all.safetensors");
    GanTrainer a, b;
    trainer(&a, "tinyc", &hp, 3);
    assert_int_equal(gan_save(&a, path, err, sizeof err), 0);
    // The switches come back from the metadata alone.
    assert_int_equal(gan_load(&b, path, NULL, err, sizeof err), 0);
    assert_memory_equal(&a.hp, &b.hp, sizeof a.hp);
    GanHparams read;
    assert_int_equal(gan_hparams_load(&read, path, err, sizeof err), 0);
    assert_memory_equal(&read, &hp, sizeof hp);
    assert_true(trainers_equal_as(&a, &b, 0));
    for (int i = 0; i < 4; i++) {
        assert_int_equal(gan_step(&a, &data), 0);
        assert_int_equal(gan_step(&b, &data), 0);
        assert_true(trainers_equal(&a, &b));
    }
    assert_true(a.penalty_d > 0 && a.reg_g > 0);
    gan_free(&a);
    gan_free(&b);
}

// ---------------------------------------------------------------------------------------------
// progressive growing

static void expect_level(const GanHparams *hp, int n, long step, int level, float alpha) {
    int l;
    float a;
    gan_prog_level(hp, n, step, &l, &a);
    if (l != level || fabsf(a - alpha) > 1e-6f)
        fail_msg("step %ld: level %d alpha %g, want %d %g", step, l, a, level, alpha);
}

// The schedule: stable at prog_from, then per resolution a fade of prog_fade steps and
// prog_stable steps; the switches that do not go with it are refused.
static void test_prog_schedule(void **state) {
    (void)state;
    GanHparams hp = tiny_hp();
    expect_level(&hp, 3, 0, 3, 1.0f); // off: the full network
    assert_int_equal(gan_prog_steps(&hp, 3), 0);
    set(&hp, "prog_stable", "3");
    set(&hp, "prog_fade", "2");
    for (long s = 0; s < 3; s++) expect_level(&hp, 3, s, 1, 1.0f);
    expect_level(&hp, 3, 3, 2, 0.5f);
    expect_level(&hp, 3, 4, 2, 1.0f);
    for (long s = 5; s < 8; s++) expect_level(&hp, 3, s, 2, 1.0f);
    expect_level(&hp, 3, 8, 3, 0.5f);
    expect_level(&hp, 3, 9, 3, 1.0f);
    expect_level(&hp, 3, 1000, 3, 1.0f);
    assert_int_equal(gan_prog_steps(&hp, 3), 10);
    expect_level(&hp, 4, 13, 4, 0.5f); // 64x64: one more resolution
    set(&hp, "prog_from", "16");
    expect_level(&hp, 3, 0, 2, 1.0f);
    expect_level(&hp, 3, 3, 3, 0.5f);
    assert_int_equal(gan_prog_steps(&hp, 3), 5);
    set(&hp, "prog_fade", "0"); // no fade: the next resolution at once
    expect_level(&hp, 3, 3, 3, 1.0f);
    char err[256];
    assert_int_equal(gan_hparams_check(&hp, err, sizeof err), 0);
    GanHparams bad = hp;
    set(&bad, "r1_gamma", "1");
    assert_int_equal(gan_hparams_check(&bad, err, sizeof err), -1);
    assert_non_null(strstr(err, "r1_gamma"));
    bad = hp;
    set(&bad, "freeze_d", "1");
    assert_int_equal(gan_hparams_check(&bad, err, sizeof err), -1);
    bad = hp;
    set(&bad, "prog_from", "24");
    assert_int_equal(gan_hparams_check(&bad, err, sizeof err), -1);
}

// One parameter's values differ between two copies of a ParamSet's parameters.
static int param_moved(const ParamSet *ps, const float *before, const char *name) {
    for (int i = 0; i < ps->n; i++)
        if (!strcmp(ps->p[i].name, name))
            return !same(ps->params + ps->p[i].offset, before + ps->p[i].offset, ps->p[i].numel);
    fail_msg("no parameter %s", name);
    return 0;
}

// A progressive run: each step at the level the schedule says, the real images pooled (and faded)
// to it, only the layers of that level trained; a checkpoint mid-fade resumes bit for bit and
// loads for sampling at its level, shown at full size.
static void test_progressive_training(void **state) {
    (void)state;
    GanHparams hp = tiny_hp();
    set(&hp, "prog_stable", "3");
    set(&hp, "prog_fade", "2");
    set(&hp, "ema_decay", "0.9"); // the EMA averages the progressive layers too
    SaganConfig cfg;
    assert_int_equal(sagan_config_lookup(&cfg, "tinyc"), 0);
    GanTrainer a, b;
    assert_int_equal(gan_init(&a, &cfg, &hp, 5), 0);
    assert_int_equal(a.cfg.prog, 1); // the progressive layers came with the schedule
    float *g0 = malloc(sizeof(float) * a.G.ps.total), *d0 = malloc(sizeof(float) * a.D.ps.total);
    memcpy(g0, a.G.ps.params, sizeof(float) * a.G.ps.total);
    memcpy(d0, a.D.ps.params, sizeof(float) * a.D.ps.total);
    int B = hp.batch;
    for (int s = 0; s < 3; s++) { // 8x8
        assert_int_equal(gan_step(&a, &data), 0);
        assert_true(a.level == 1 && a.alpha == 1.0f && generator_resolution(&a.G) == 8);
        // the real half of D's batch: the full-size real images pooled twice
        double *full = malloc(sizeof(double) * B * 32 * 32), *half = malloc(sizeof(double) * B * 256),
               *q = malloc(sizeof(double) * B * 64);
        for (long i = 0; i < (long)B * 1024; i++) full[i] = a.real[i];
        avgpool2x_forward_ref(half, full, B, 1, 32, 32);
        avgpool2x_forward_ref(q, half, B, 1, 16, 16);
        assert_true(check_compare_f("real at 8x8", a.x, q, (long)B * 64, 1e-6, 1e-5) == 0);
        free(full), free(half), free(q);
    }
    assert_true(param_moved(&a.G.ps, g0, "torgb.8.weight_orig"));
    assert_true(param_moved(&a.D.ps, d0, "fromrgb.8.weight_orig"));
    assert_false(param_moved(&a.G.ps, g0, "blocks.1.conv.weight_orig")); // 16x16: not yet
    assert_false(param_moved(&a.G.ps, g0, "out.weight_orig"));
    assert_false(param_moved(&a.D.ps, d0, "conv0.weight_orig"));
    assert_false(param_moved(&a.D.ps, d0, "blocks.0.conv.weight_orig"));
    assert_int_equal(gan_step(&a, &data), 0); // step 3: fading into 16x16
    assert_true(a.level == 2 && a.alpha == 0.5f);
    {   // real: 0.5 x_16 + 0.5 upsample(x_8)
        double *full = malloc(sizeof(double) * B * 1024), *x16 = malloc(sizeof(double) * B * 256),
               *x8 = malloc(sizeof(double) * B * 64), *up = malloc(sizeof(double) * B * 256);
        for (long i = 0; i < (long)B * 1024; i++) full[i] = a.real[i];
        avgpool2x_forward_ref(x16, full, B, 1, 32, 32);
        avgpool2x_forward_ref(x8, x16, B, 1, 16, 16);
        upsample2x_forward_ref(up, x8, B, 1, 8, 8);
        for (long i = 0; i < (long)B * 256; i++) x16[i] = 0.5 * x16[i] + 0.5 * up[i];
        assert_true(check_compare_f("real fading into 16x16", a.x, x16, (long)B * 256, 1e-6, 1e-5) ==
                    0);
        free(full), free(x16), free(x8), free(up);
    }
    assert_true(param_moved(&a.G.ps, g0, "blocks.1.conv.weight_orig"));
    assert_true(param_moved(&a.G.ps, g0, "torgb.16.weight_orig"));
    // a checkpoint mid-fade (step 4 comes next: alpha 1 at 16x16) resumes bit for bit
    char path[256], err[512];
    path_of(path, sizeof path, "prog.safetensors");
    assert_int_equal(gan_save(&a, path, err, sizeof err), 0);
    expect_meta(path, "prog", "1");
    expect_meta(path, "prog_resolution", "16");
    assert_int_equal(gan_load(&b, path, NULL, err, sizeof err), 0);
    assert_int_equal(b.cfg.prog, 1);
    assert_true(trainers_equal_as(&a, &b, 0));
    Generator g;
    assert_int_equal(generator_load(&g, path, 2, err, sizeof err), 0);
    float z[2 * 16];
    int32_t y[2] = {1, 7};
    gan_sample_latents(&g.cfg, 3, 2, -1, z, NULL);
    assert_int_equal(generator_forward(&g, z, y, 2), 0);
    // the level the run had reached after step 3 (the schedule at step 4: 16x16, alpha 1)
    assert_true(g.level == 2 && g.alpha == 1.0f);
    const float *lo = generator_output(&g);
    int blocks = 1;
    for (int i = 0; i < 2 * 32 * 32; i++) {
        int img = i / 1024, p = i % 1024, yy = p / 32, xx = p % 32;
        blocks &= g.img[i] == lo[img * 256 + (yy / 2) * 16 + xx / 2];
    }
    assert_true(blocks);
    generator_free(&g);
    for (int s = 4; s < 12; s++) { // on through the fade into 32x32 and past it
        assert_int_equal(gan_step(&a, &data), 0);
        assert_int_equal(gan_step(&b, &data), 0);
        assert_true(trainers_equal(&a, &b));
    }
    assert_true(a.level == 3 && a.alpha == 1.0f);
    assert_true(param_moved(&a.G.ps, g0, "out.weight_orig"));
    assert_true(param_moved(&a.D.ps, d0, "conv0.weight_orig"));
    // a checkpoint without progressive layers cannot start a progressive run
    GanHparams plain = tiny_hp();
    GanTrainer c;
    trainer(&c, "tinyc", &plain, 1);
    path_of(path, sizeof path, "plain.safetensors");
    assert_int_equal(gan_save(&c, path, err, sizeof err), 0);
    gan_free(&c);
    assert_int_not_equal(gan_load(&c, path, &hp, err, sizeof err), 0);
    assert_non_null(strstr(err, "progressive layers"));
    gan_free(&c);
    free(g0), free(d0);
    gan_free(&a);
    gan_free(&b);
}

// 64x64 RGB grows 8 -> 16 -> 32 -> 64 (tiny64, conditional, on colour images made here: the
// Fashion-MNIST digits of this file are gray 32x32), every level and fade in turn.
static void test_progressive_rgb64(void **state) {
    (void)state;
    enum { N = 24 };
    Dataset rgb = {.n = N, .c = 3, .h = 64, .w = 64, .n_classes = 4};
    rgb.images = CHECK_ALLOC(float, (long)N * 3 * 64 * 64);
    rgb.labels = CHECK_ALLOC(int32_t, N);
    for (int i = 0; i < N; i++) { // a disc of one colour per class on a dark ground
        rgb.labels[i] = i % 4;
        for (int ch = 0; ch < 3; ch++)
            for (int y = 0; y < 64; y++)
                for (int x = 0; x < 64; x++) {
                    int in = (x - 32) * (x - 32) + (y - 32) * (y - 32) < (10 + i) * (10 + i);
                    rgb.images[(((long)i * 3 + ch) * 64 + y) * 64 + x] =
                        in ? (ch == rgb.labels[i] % 3 ? 0.9f : -0.2f) : -1.0f;
                }
    }
    GanHparams hp = tiny_hp();
    set(&hp, "prog_stable", "2");
    set(&hp, "prog_fade", "2");
    SaganConfig cfg;
    assert_int_equal(sagan_config_lookup(&cfg, "tiny64"), 0);
    GanTrainer t;
    assert_int_equal(gan_init(&t, &cfg, &hp, 3), 0);
    int want_level[14] = {1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4};
    for (int s = 0; s < 14; s++) {
        assert_int_equal(gan_step(&t, &rgb), 0);
        assert_true(isfinite(t.loss_d) && isfinite(t.loss_g));
        if (t.level != want_level[s]) fail_msg("step %d: level %d, want %d", s, t.level, want_level[s]);
    }
    assert_true(t.level == 4 && t.alpha == 1.0f && generator_resolution(&t.G) == 64);
    gan_free(&t);
    free(rgb.images);
    free(rgb.labels);
}

// ---------------------------------------------------------------------------------------------
// steer train --set

static int run(char *out, size_t len, const char *fmt, ...) {
    char args[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    return check_sh(out, len, "%s %s", check_steer_bin(), args);
}

static void expect_meta(const char *path, const char *key, const char *want) {
    StFile f = {0};
    char err[512];
    assert_int_equal(safetensors_read(&f, path, err, sizeof err), 0);
    const char *v = safetensors_meta(&f, key);
    if (!v || strcmp(v, want)) fail_msg("%s: %s = %s, want %s", path, key, v ? v : "(none)", want);
    safetensors_free(&f);
}

static void test_cli_set(void **state) {
    (void)state;
    static char out[16384];
    int rc = run(out, sizeof out,
                 "train --config tiny --iters 2 --batch 4 --sample-every 0 --log-every 1 "
                 "--ckpt-dir %s/cli --set r1_gamma=5 --set penalty_every=2 --ema 0.99 "
                 "--no-sn-d --freeze-d 1",
                 dir);
    if (rc) fail_msg("steer train failed (%d):\n%s", rc, out);
    CHECK_ASSERT_HAS(out, "r1_gamma=5");
    CHECK_ASSERT_HAS(out, "penalty_d");
    char path[256];
    snprintf(path, sizeof path, "%s/cli/latest.safetensors", dir);
    expect_meta(path, "r1_gamma", "5");
    expect_meta(path, "ema_decay", "0.99000001");
    expect_meta(path, "sn_d", "0");
    expect_meta(path, "freeze_d", "1");
    // Resumed with one more flag: the recorded switches stay, the new one is added.
    rc = run(out, sizeof out,
             "train --resume %s --iters 3 --sample-every 0 --ckpt-dir %s/cli2 --set l1_act=0.1",
             path, dir);
    if (rc) fail_msg("steer train --resume failed (%d):\n%s", rc, out);
    snprintf(path, sizeof path, "%s/cli2/latest.safetensors", dir);
    expect_meta(path, "r1_gamma", "5");
    expect_meta(path, "sn_d", "0");
    expect_meta(path, "l1_act", "0.100000001");
    expect_meta(path, "step", "3");
    // Misuse is refused with the reason.
    assert_int_equal(run(out, sizeof out, "train --set bogus=1 --ckpt-dir %s/x", dir), 2);
    CHECK_ASSERT_HAS(out, "unknown training switch 'bogus'");
    assert_int_equal(run(out, sizeof out, "train --set r1_gamma --ckpt-dir %s/x", dir), 2);
    CHECK_ASSERT_HAS(out, "KEY=VALUE");
    assert_int_equal(run(out, sizeof out, "train --ema 2 --ckpt-dir %s/x", dir), 2);
    CHECK_ASSERT_HAS(out, "ema_decay");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hparams_set),
        cmocka_unit_test(test_defaults_unchanged),
        cmocka_unit_test(test_old_checkpoint_metadata),
        cmocka_unit_test(test_sn_off),
        cmocka_unit_test(test_r1_gradient),
        cmocka_unit_test(test_gp_gradient),
        cmocka_unit_test(test_penalties_in_training),
        cmocka_unit_test(test_ortho_gradient),
        cmocka_unit_test(test_weight_decay),
        cmocka_unit_test(test_kernels),
        cmocka_unit_test(test_l1_gradient),
        cmocka_unit_test(test_dropout),
        cmocka_unit_test(test_ema),
        cmocka_unit_test(test_freeze_d),
        cmocka_unit_test(test_resume_all_switches),
        cmocka_unit_test(test_prog_schedule),
        cmocka_unit_test(test_progressive_training),
        cmocka_unit_test(test_progressive_rgb64),
        cmocka_unit_test(test_cli_set),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
