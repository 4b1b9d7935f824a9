// test_gen.c — the generation thread on a real libuv loop with a small generator: every request
// comes back once as a well-formed frame message whose pixels are the generator's for its latent
// and class (whatever batch it rode in), cancelled requests never come back, and the pool's frames
// all return.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <msgpack.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "generator/data/imageio.h"
#include "util/clock.h"
#include "generator/gan.h"
#include "server/gen.h"
#include "server/proto.h"
#include "tests/check.h"

enum { N_REQ = 40, PAD = 16 };

typedef struct {
    Gen gen;
    uv_async_t async;
    int got, seen[N_REQ], cancelled_seen;
    uint8_t *raw[N_REQ]; // raw8 payloads by request index
    uint64_t frame_of[N_REQ];
} Ctx;

static const msgpack_object *field(const msgpack_object *map, const char *key) {
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object_kv *kv = &map->via.map.ptr[i];
        if (kv->key.via.str.size == strlen(key) && !memcmp(kv->key.via.str.ptr, key, strlen(key)))
            return &kv->val;
    }
    return NULL;
}

static void on_done(uv_async_t *a) {
    Ctx *c = a->data;
    for (FrameOut *f = gen_take_done(&c->gen), *next; f; f = next) {
        next = f->next;
        assert_true(f->len > 0);
        msgpack_unpacked u;
        msgpack_unpacked_init(&u);
        size_t off = 0;
        assert_int_equal(msgpack_unpack_next(&u, (const char *)f->msg, f->len, &off),
                         MSGPACK_UNPACK_SUCCESS);
        assert_int_equal(off, f->len);
        uint64_t id = field(&u.data, "frame")->via.u64;
        int i = (int)(id - 1000);
        if (i >= N_REQ) c->cancelled_seen++;
        else {
            assert_true(i >= 0);
            c->seen[i]++;
            assert_int_equal(field(&u.data, "seq")->via.u64, (uint64_t)i);
            const msgpack_object *data = field(&u.data, "data");
            assert_int_equal(data->type, MSGPACK_OBJECT_BIN);
            c->raw[i] = malloc(data->via.bin.size);
            memcpy(c->raw[i], data->via.bin.ptr, data->via.bin.size);
        }
        msgpack_unpacked_destroy(&u);
        gen_release(&c->gen, f);
        c->got++;
    }
    if (c->got >= N_REQ) uv_close((uv_handle_t *)a, NULL);
}

static void test_gen_batches_and_pixels(void **state) {
    (void)state;
    SaganConfig cfg;
    assert_int_equal(sagan_config_lookup(&cfg, "tinyc"), 0);
    Generator *g = calloc(1, sizeof *g);
    assert_int_equal(generator_init(g, &cfg, 16, 3), 0);
    Metrics metrics;
    assert_int_equal(metrics_init(&metrics), 0);
    uv_loop_t loop;
    uv_loop_init(&loop);
    Ctx *c = calloc(1, sizeof *c);
    uv_async_init(&loop, &c->async, on_done);
    c->async.data = c;
    GenOptions go = {.batch_max = 16, .deadline_s = 0.002, .capacity = 64, .pad = PAD,
                     .model_version = 3};
    char err[256];
    assert_int_equal(gen_init(&c->gen, g, &go, &metrics, &c->async, err, sizeof err), 0);
    // Latents and classes for every request, and 8 more that get cancelled.
    int Z = cfg.z_dim;
    float *z = CHECK_ALLOC(float, (N_REQ + 8) * Z);
    int32_t y[N_REQ + 8];
    gan_sample_latents(&cfg, 11, N_REQ + 8, -1, z, y);
    for (int i = 0; i < N_REQ + 8; i++) {
        // Requests 40..47 belong to session slot 9, which is cancelled before the thread starts.
        FrameRequest r = {.slot = i < N_REQ ? 1 : 9, .session_serial = 1, .stream_id = 5,
                          .stream_serial = 1, .seq = (uint32_t)i, .frame_id = 1000 + (uint64_t)i,
                          .cls = y[i], .format = PROTO_FORMAT_RAW8, .side = -1,
                          .t_submit = clock_now_s()};
        assert_int_equal(gen_submit(&c->gen, &r, z + (size_t)i * Z), 0);
    }
    assert_int_equal(gen_cancel(&c->gen, 9, 1, UINT32_MAX), 8);
    assert_int_equal(gen_queue_depth(&c->gen), N_REQ);
    assert_int_equal(gen_start(&c->gen), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(c->got, N_REQ);
    assert_int_equal(c->cancelled_seen, 0);
    // Pixels: the same latent drawn alone, within one 8-bit level (batch size changes rounding).
    Generator *ref = calloc(1, sizeof *ref);
    assert_int_equal(generator_init(ref, &cfg, 1, 3), 0);
    int P = cfg.channels * cfg.img * cfg.img, off_by_more = 0, off_by_one = 0;
    uint8_t *want = CHECK_ALLOC(uint8_t, P);
    for (int i = 0; i < N_REQ; i++) {
        assert_int_equal(c->seen[i], 1);
        assert_int_equal(generator_forward(ref, z + (size_t)i * Z, &y[i], 1), 0);
        image_to_u8(want, ref->img, cfg.channels, cfg.img, cfg.img);
        for (int p = 0; p < P; p++) {
            int d = abs((int)want[p] - (int)c->raw[i][p]);
            off_by_more += d > 1;
            off_by_one += d == 1;
        }
        free(c->raw[i]);
    }
    assert_int_equal(off_by_more, 0);
    assert_true(off_by_one < N_REQ * P / 1000);
    // Every frame went back to the pool.
    assert_int_equal(c->gen.n_free, go.capacity);
    assert_true(metrics.batch_size.total >= (uint64_t)(N_REQ / 16));
    gen_stop(&c->gen);
    gen_free(&c->gen);
    assert_int_equal(uv_loop_close(&loop), 0);
    generator_free(ref);
    free(ref);
    free(want);
    free(z);
    free(c);
    metrics_free(&metrics);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_gen_batches_and_pixels)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
