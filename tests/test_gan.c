// test_gan.c — the training loop and its checkpoints, on real Fashion-MNIST with tiny configs.
//
// A short run keeps finite losses and makes non-constant samples; a checkpoint round trip is
// bit-exact; damaged checkpoints (truncated, bad JSON, offsets out of range, wrong shape or
// dtype, wrong config) are refused with a message; a run resumed from a checkpoint reproduces
// the uninterrupted run bit for bit.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "generator/data/fmnist.h"
#include "generator/gan.h"
#include "generator/safetensors.h"
#include "tests/check.h"

static Dataset data;
static char dir[64];

static int setup(void **state) {
    (void)state;
    return check_fmnist_setup(&data, dir, sizeof dir, "steer_test_gan");
}

static int teardown(void **state) {
    (void)state;
    return check_fmnist_teardown(&data, dir);
}

static GanHparams tiny_hp(void) {
    GanHparams hp;
    gan_hparams_default(&hp);
    hp.batch = 8;
    return hp;
}

static void path_of(char *out, size_t len, const char *name) { snprintf(out, len, "%s/%s", dir, name); }

static void test_short_run(void **state) {
    (void)state;
    SaganConfig cfg;
    sagan_config_lookup(&cfg, "tinyc");
    GanHparams hp = tiny_hp();
    GanTrainer t;
    assert_int_equal(gan_init(&t, &cfg, &hp, 3), 0);
    for (int i = 0; i < 20; i++) {
        assert_int_equal(gan_step(&t, &data), 0);
        assert_true(isfinite(t.loss_d) && isfinite(t.loss_g));
    }
    assert_int_equal(t.step, 20);
    // gamma moved off its zero init: gradients reach attention.
    assert_true(t.G.ps.params[t.G.ps.p[t.G.p_gamma].offset] != 0.0f);
    // Samples vary across the batch and across pixels, and stay in [-1, 1].
    int32_t y[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    assert_int_equal(generator_forward(&t.G, t.z, y, 8), 0);
    long n = 8L * 32 * 32;
    double mean = 0, var = 0;
    for (long i = 0; i < n; i++) {
        assert_true(t.G.img[i] >= -1.0f && t.G.img[i] <= 1.0f);
        mean += t.G.img[i];
    }
    mean /= n;
    for (long i = 0; i < n; i++) var += (t.G.img[i] - mean) * (t.G.img[i] - mean);
    var /= n;
    double diff = 0;
    for (long i = 0; i < 1024; i++) diff += fabs(t.G.img[i] - t.G.img[1024 + i]);
    fprintf(stderr, "sample variance %.4f, mean |img0 - img1| %.4f\n", var, diff / 1024);
    assert_true(var > 1e-4);
    assert_true(diff / 1024 > 1e-3);
    gan_free(&t);
}

static int buffers_equal(const ParamSet *a, const ParamSet *b) {
    return a->total == b->total && a->adam_t == b->adam_t &&
           !memcmp(a->params, b->params, a->total * sizeof(float)) &&
           !memcmp(a->m, b->m, a->total * sizeof(float)) &&
           !memcmp(a->v, b->v, a->total * sizeof(float)) &&
           !memcmp(a->sn_u, b->sn_u, a->u_total * sizeof(float));
}

static void test_round_trip_and_resume(void **state) {
    (void)state;
    SaganConfig cfg;
    sagan_config_lookup(&cfg, "tinyc");
    GanHparams hp = tiny_hp();
    char err[1024], path[256];
    path_of(path, sizeof path, "mid.safetensors");

    GanTrainer a, b;
    assert_int_equal(gan_init(&a, &cfg, &hp, 42), 0);
    for (int i = 0; i < 3; i++) assert_int_equal(gan_step(&a, &data), 0);
    assert_int_equal(gan_save(&a, path, err, sizeof err), 0);

    // Round trip: everything the run carries comes back bit for bit.
    assert_int_equal(gan_load(&b, path, NULL, err, sizeof err), 0);
    assert_true(buffers_equal(&a.G.ps, &b.G.ps));
    assert_true(buffers_equal(&a.D.ps, &b.D.ps));
    assert_int_equal(b.step, 3);
    assert_memory_equal(a.rng.s, b.rng.s, sizeof a.rng.s);
    assert_int_equal(b.hp.batch, hp.batch);
    assert_true(b.hp.lr_d == hp.lr_d && b.hp.beta2 == hp.beta2);

    // Resume: 3 more steps from the checkpoint equal 3 more steps of the uninterrupted run.
    for (int i = 0; i < 3; i++) {
        assert_int_equal(gan_step(&a, &data), 0);
        assert_int_equal(gan_step(&b, &data), 0);
    }
    assert_true(buffers_equal(&a.G.ps, &b.G.ps));
    assert_true(buffers_equal(&a.D.ps, &b.D.ps));
    assert_true(a.loss_d == b.loss_d && a.loss_g == b.loss_g);

    // generator_load reads G alone from the same file and samples like the trainer's G.
    Generator g;
    assert_int_equal(generator_load(&g, path, 4, err, sizeof err), 0);
    GanTrainer mid;
    assert_int_equal(gan_load(&mid, path, NULL, err, sizeof err), 0);
    assert_memory_equal(g.ps.params, mid.G.ps.params, g.ps.total * sizeof(float));
    gan_free(&mid);
    generator_free(&g);
    gan_free(&a);
    gan_free(&b);
}

// Writes a copy of src with bytes [at, at+len) replaced (or the file cut at `at` if bytes NULL).
static void damage(const char *src, const char *dst, long at, const char *bytes, long len) {
    size_t n;
    uint8_t *buf = check_read_file(src, &n);
    if (bytes) memcpy(buf + at, bytes, len);
    check_write_file(dst, buf, bytes ? n : (size_t)at);
    free(buf);
}

static void expect_refused(const char *path, const char *needle) {
    char err[1024] = "";
    GanTrainer t;
    Generator g;
    assert_true(gan_load(&t, path, NULL, err, sizeof err) != 0);
    fprintf(stderr, "refused: %s\n", err);
    assert_non_null(strstr(err, needle));
    gan_free(&t);
    err[0] = 0;
    assert_true(generator_load(&g, path, 2, err, sizeof err) != 0);
    assert_true(err[0] != 0);
    generator_free(&g);
}

// Rewrites the checkpoint with one tensor changed by `edit`.
typedef void (*Edit)(StTensor *t, int n);
static void rewrite(const char *src, const char *dst, Edit edit, const char *const *meta) {
    StFile f = {0};
    char err[512];
    assert_int_equal(safetensors_read(&f, src, err, sizeof err), 0);
    StTensor *ts = calloc(f.n, sizeof *ts);
    memcpy(ts, f.tensors, f.n * sizeof *ts);
    if (edit) edit(ts, f.n);
    const char **kv = calloc(2 * f.n_meta + 1, sizeof *kv);
    for (int i = 0; i < 2 * f.n_meta; i++) kv[i] = f.meta_kv[i];
    assert_int_equal(safetensors_write(dst, ts, f.n, meta ? meta : kv, err, sizeof err), 0);
    free(kv);
    free(ts);
    safetensors_free(&f);
}

static StTensor *find(StTensor *ts, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (!strcmp(ts[i].name, name)) return &ts[i];
    fail_msg("no tensor %s", name);
    return NULL;
}
static void edit_shape(StTensor *ts, int n) {
    StTensor *t = find(ts, n, "G.fc.weight_orig");
    int64_t s0 = t->shape[0];
    t->shape[0] = t->shape[1];
    t->shape[1] = s0;
    if (t->shape[0] == t->shape[1]) t->ndim = 1, t->shape[0] *= t->shape[0];
}
static void edit_dtype(StTensor *ts, int n) {
    StTensor *t = find(ts, n, "G.out.bias");
    t->dtype = ST_I32;
}
static void edit_drop(StTensor *ts, int n) {
    StTensor *t = find(ts, n, "G.attn.gamma");
    strcpy(t->name, "G.attn.gamma_renamed");
}

static void test_damaged_checkpoints(void **state) {
    (void)state;
    SaganConfig cfg;
    sagan_config_lookup(&cfg, "tinyc");
    GanHparams hp = tiny_hp();
    char err[1024], good[256], bad[256];
    path_of(good, sizeof good, "good.safetensors");
    path_of(bad, sizeof bad, "bad.safetensors");
    GanTrainer t;
    assert_int_equal(gan_init(&t, &cfg, &hp, 1), 0);
    assert_int_equal(gan_save(&t, good, err, sizeof err), 0);
    gan_free(&t);
    FILE *f = fopen(good, "rb");
    uint64_t hlen;
    assert_int_equal(fread(&hlen, 8, 1, f), 1);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fclose(f);

    damage(good, bad, size - 100, NULL, 0); // truncated data
    expect_refused(bad, "bad.safetensors");
    damage(good, bad, 5, NULL, 0); // truncated inside the length
    expect_refused(bad, "bad.safetensors");
    damage(good, bad, 8, "[", 1); // header not a JSON object
    expect_refused(bad, "bad.safetensors");
    damage(good, bad, 8 + 20, "\x01\x02garbage", 9); // bad JSON
    expect_refused(bad, "bad.safetensors");
    uint64_t huge = (uint64_t)size * 4;
    damage(good, bad, 0, (const char *)&huge, 8); // header length past the end
    expect_refused(bad, "bad.safetensors");

    // Offsets out of range: the first data_offsets end becomes enormous (same digit count
    // would need care; rewrite by text edit of the header).
    {
        FILE *g = fopen(good, "rb");
        char *buf = malloc(size + 1);
        assert_int_equal(fread(buf, 1, size, g), (size_t)size);
        buf[size] = 0;
        fclose(g);
        // The last tensor's end offset is the largest: all nines of its width is past the end.
        char *p = NULL;
        for (char *q = strstr(buf + 8, "\"data_offsets\":["); q && q < buf + 8 + hlen;
             q = strstr(q + 1, "\"data_offsets\":["))
            p = q;
        assert_non_null(p);
        p += strlen("\"data_offsets\":[");
        char *comma = strchr(p, ',');
        char *close = strchr(comma, ']');
        long width = close - comma - 1;
        memset(comma + 1, '9', width); // end offset of the same width, all nines: out of range
        g = fopen(bad, "wb");
        fwrite(buf, 1, size, g);
        fclose(g);
        free(buf);
        expect_refused(bad, "bad.safetensors");
    }
    rewrite(good, bad, edit_shape, NULL);
    expect_refused(bad, "G.fc.weight_orig");
    rewrite(good, bad, edit_dtype, NULL);
    expect_refused(bad, "G.out.bias");
    rewrite(good, bad, edit_drop, NULL);
    expect_refused(bad, "G.attn.gamma");
    // A model of another size than its metadata claims: shapes mismatch.
    const char *meta[] = {"format", "steer.sagan.v1", "config", "tinyc", "ch", "16", "z_dim", "16",
                          "img", "32", "channels", "1", "n_classes", "10", "attn_res", "16",
                          "lr_g", "1e-4", "lr_d", "4e-4", "beta1", "0", "beta2", "0.9", "eps",
                          "1e-8", "weight_decay", "0", "batch", "8", "step", "0", NULL};
    rewrite(good, bad, NULL, meta);
    expect_refused(bad, "shape");
    const char *meta_bad[] = {"format", "steer.sagan.v1", "ch", "banana", NULL};
    rewrite(good, bad, NULL, meta_bad);
    expect_refused(bad, "ch");
    const char *meta_other[] = {"format", "something.else", NULL};
    rewrite(good, bad, NULL, meta_other);
    expect_refused(bad, "not a steer model");
    // A missing file.
    expect_refused("/nonexistent/steer.safetensors", "/nonexistent/steer.safetensors");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_short_run),
        cmocka_unit_test(test_round_trip_and_resume),
        cmocka_unit_test(test_damaged_checkpoints),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
