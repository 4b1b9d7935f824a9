// test_proto.c — steer.v1 message handling without a socket: the bounds scan against lying
// lengths and random bytes, decoding of every client message and its errors, packing of server
// messages read back by msgpack-c, and the session's latents (walk frames close, gallery frames
// independent, same seed same frames).
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/proto.h"
#include "server/session.h"
#include "tests/check.h"

static const ProtoLimits LIM = {.max_credit = 1024, .classes = 10};

// Packs a map from alternating keys and values given as a tiny format: "s" string, "i" int64,
// "u" uint64, "f" double, "b" bool.
static size_t pack(uint8_t *out, size_t cap, const char *fmt, ...) {
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, strlen(fmt));
    va_list ap;
    va_start(ap, fmt);
    for (const char *f = fmt; *f; f++) {
        const char *k = va_arg(ap, const char *);
        msgpack_pack_str_with_body(&pk, k, strlen(k));
        switch (*f) {
        case 's': {
            const char *v = va_arg(ap, const char *);
            msgpack_pack_str_with_body(&pk, v, strlen(v));
            break;
        }
        case 'i': msgpack_pack_int64(&pk, va_arg(ap, int64_t)); break;
        case 'u': msgpack_pack_uint64(&pk, va_arg(ap, uint64_t)); break;
        case 'f': msgpack_pack_double(&pk, va_arg(ap, double)); break;
        default: msgpack_pack_true(&pk); (void)va_arg(ap, int); break;
        }
    }
    va_end(ap);
    assert_true(sb.size <= cap);
    memcpy(out, sb.data, sb.size);
    size_t n = sb.size;
    msgpack_sbuffer_destroy(&sb);
    return n;
}

static int decode(ProtoMsg *m, const uint8_t *b, size_t n, char *err, int64_t *ref) {
    return proto_decode(m, b, n, &LIM, err, 160, ref);
}

static void test_scan_refuses_lying_lengths(void **state) {
    (void)state;
    char err[160];
    // Each declares more than it carries; msgpack-c would reserve memory for the count.
    static const struct {
        const char *what;
        uint8_t bytes[8];
        size_t n;
    } cases[] = {
        {"map32 of 2^32-1 pairs", {0xdf, 0xff, 0xff, 0xff, 0xff}, 5},
        {"array32 of 2^32-1", {0xdd, 0xff, 0xff, 0xff, 0xff}, 5},
        {"array16 of 65535", {0xdc, 0xff, 0xff}, 3},
        {"str32 of 4 GiB", {0xdb, 0xff, 0xff, 0xff, 0xff, 'a'}, 6},
        {"bin32 of 4 GiB", {0xc6, 0xff, 0xff, 0xff, 0xff}, 5},
        {"ext32", {0xc9, 0x00, 0x00, 0x01, 0x00, 0x01}, 6},
        {"fixmap of 3 with one key", {0x83, 0xa1, 't'}, 3},
        {"uint64 cut short", {0xcf, 0x00, 0x01}, 3},
        {"never-used type byte", {0xc1}, 1},
        {"empty", {0}, 0},
        {"two objects", {0x80, 0x80}, 2},
        {"str8 length field missing", {0xd9}, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int rc = proto_scan(cases[i].bytes, cases[i].n, err, sizeof err);
        if (rc != PROTO_EBAD_MESSAGE) fail_msg("%s: scan returned %d", cases[i].what, rc);
        assert_true(strlen(err) > 0);
    }
    // Nesting past the limit, then just inside it.
    uint8_t deep[PROTO_MAX_DEPTH + 2];
    memset(deep, 0x91, sizeof deep);
    deep[sizeof deep - 1] = 0xc0;
    assert_int_equal(proto_scan(deep, sizeof deep, err, sizeof err), PROTO_EBAD_MESSAGE);
    CHECK_ASSERT_HAS(err, "nesting");
    assert_int_equal(proto_scan(deep + 2, sizeof deep - 2, err, sizeof err), 0);
}

// Random and mutated bytes: the scan and the decoder answer every one without crashing, and
// whatever the scan accepts msgpack-c unpacks in full.
static void test_scan_fuzz(void **state) {
    (void)state;
    Rng r;
    rng_seed(&r, 7);
    uint8_t good[128], buf[256];
    size_t n_good = pack(good, sizeof good, "sui", "t", "credit", "id", (uint64_t)3, "n", (int64_t)2);
    char err[160];
    int accepted = 0;
    for (int it = 0; it < 20000; it++) {
        size_t n;
        if (it % 2) { // mutate a valid message
            n = n_good;
            memcpy(buf, good, n);
            int flips = 1 + (int)rng_below(&r, 4);
            for (int k = 0; k < flips; k++) buf[rng_below(&r, (uint32_t)n)] = (uint8_t)rng_u64(&r);
            if (rng_below(&r, 4) == 0) n = rng_below(&r, (uint32_t)n + 1);
        } else {
            n = rng_below(&r, sizeof buf);
            for (size_t i = 0; i < n; i++) buf[i] = (uint8_t)rng_u64(&r);
        }
        if (proto_scan(buf, n, err, sizeof err) == 0) {
            accepted++;
            msgpack_unpacked u;
            msgpack_unpacked_init(&u);
            size_t off = 0;
            int ur = msgpack_unpack_next(&u, (const char *)buf, n, &off);
            msgpack_unpacked_destroy(&u);
            if (ur != MSGPACK_UNPACK_SUCCESS || off != n)
                fail_msg("scan accepted %zu bytes msgpack-c does not unpack whole (%d, %zu)", n, ur,
                         off);
        }
        ProtoMsg m;
        int64_t ref;
        int rc = decode(&m, buf, n, err, &ref);
        assert_true(rc >= 0 && rc < PROTO_NCODES);
    }
    assert_true(accepted > 100); // the mutations keep some messages well-formed
}

static void test_decode_messages(void **state) {
    (void)state;
    uint8_t b[512];
    char err[160];
    ProtoMsg m;
    int64_t ref;
    size_t n = pack(b, sizeof b, "sss", "t", "hello", "user", "ada.l@x-1", "token", "s3cret");
    assert_int_equal(decode(&m, b, n, err, &ref), 0);
    assert_int_equal(m.type, PROTO_HELLO);
    assert_string_equal(m.user, "ada.l@x-1");
    assert_string_equal(m.token, "s3cret");

    n = pack(b, sizeof b, "suss" "ifiuf", "t", "stream", "id", (uint64_t)7, "mode", "walk", "format",
             "raw8", "n", (int64_t)5, "fps", 12.5, "class", (int64_t)3, "seed", (uint64_t)99, "step",
             0.25);
    assert_int_equal(decode(&m, b, n, err, &ref), 0);
    assert_int_equal(m.type, PROTO_STREAM);
    assert_int_equal(m.id, 7);
    assert_int_equal(ref, 7);
    assert_int_equal(m.mode, PROTO_MODE_WALK);
    assert_int_equal(m.format, PROTO_FORMAT_RAW8);
    assert_int_equal(m.n, 5);
    assert_int_equal(m.cls, 3);
    assert_true(m.has_seed && m.seed == 99);
    assert_true(fabs(m.fps - 12.5) < 1e-12 && fabs(m.step - 0.25) < 1e-12);

    n = pack(b, sizeof b, "su", "t", "stream", "id", (uint64_t)1); // defaults
    assert_int_equal(decode(&m, b, n, err, &ref), 0);
    assert_int_equal(m.mode, PROTO_MODE_GALLERY);
    assert_int_equal(m.format, PROTO_FORMAT_PNG);
    assert_int_equal(m.cls, -1);
    assert_int_equal(m.n, 0);
    assert_false(m.has_seed);

    n = pack(b, sizeof b, "sui", "t", "credit", "id", (uint64_t)4, "n", (int64_t)1024);
    assert_int_equal(decode(&m, b, n, err, &ref), 0);
    assert_int_equal(m.type, PROTO_CREDIT);
    assert_int_equal(m.n, 1024);

    n = pack(b, sizeof b, "sub", "t", "stop", "id", (uint64_t)4, "extra", 1); // unknown keys ignored
    assert_int_equal(decode(&m, b, n, err, &ref), 0);
    assert_int_equal(m.type, PROTO_STOP);
}

static void test_decode_errors(void **state) {
    (void)state;
    uint8_t b[512];
    char err[160];
    ProtoMsg m;
    int64_t ref;
    static const uint8_t not_map[] = {0x93, 1, 2, 3};
    assert_int_equal(decode(&m, not_map, sizeof not_map, err, &ref), PROTO_EBAD_MESSAGE);
    size_t n = pack(b, sizeof b, "i", "t", (int64_t)5);
    assert_int_equal(decode(&m, b, n, err, &ref), PROTO_EBAD_TYPE);
    n = pack(b, sizeof b, "s", "t", "crdit");
    assert_int_equal(decode(&m, b, n, err, &ref), PROTO_EUNKNOWN_TYPE);
    CHECK_ASSERT_HAS(err, "crdit");
    typedef struct {
        const char *what, *has;
        size_t n;
    } Case;
    Case cases[8];
    int k = 0;
    uint8_t bufs[8][256];
    cases[k] = (Case){"credit without n", "'n'",
        pack(bufs[k], 256, "su", "t", "credit", "id", (uint64_t)1)}; k++;
    cases[k] = (Case){"credit n = 0", "'n'",
        pack(bufs[k], 256, "sui", "t", "credit", "id", (uint64_t)1, "n", (int64_t)0)}; k++;
    cases[k] = (Case){"credit n negative", "'n'",
        pack(bufs[k], 256, "sui", "t", "credit", "id", (uint64_t)1, "n", (int64_t)-3)}; k++;
    cases[k] = (Case){"id too big", "'id'",
        pack(bufs[k], 256, "su", "t", "stop", "id", (uint64_t)1 << 40)}; k++;
    cases[k] = (Case){"mode unknown", "mode",
        pack(bufs[k], 256, "sus", "t", "stream", "id", (uint64_t)1, "mode", "dance")}; k++;
    cases[k] = (Case){"class out of range", "class",
        pack(bufs[k], 256, "sui", "t", "stream", "id", (uint64_t)1, "class", (int64_t)10)}; k++;
    cases[k] = (Case){"fps NaN", "fps",
        pack(bufs[k], 256, "suf", "t", "stream", "id", (uint64_t)1, "fps", NAN)}; k++;
    cases[k] = (Case){"user with a space", "user",
        pack(bufs[k], 256, "ss", "t", "hello", "user", "a b")}; k++;
    for (int i = 0; i < k; i++) {
        int rc = decode(&m, bufs[i], cases[i].n, err, &ref);
        if (rc != PROTO_EBAD_FIELD) fail_msg("%s: got %s (%s)", cases[i].what, proto_code_name(rc), err);
        CHECK_ASSERT_HAS(err, cases[i].has);
    }
}

// What the server packs, msgpack-c reads back with the documented fields.
static void test_pack_roundtrip(void **state) {
    (void)state;
    uint8_t b[1024];
    ProtoBuf out = {b, sizeof b, 0, 0};
    ProtoFrame f = {.stream = 3, .seq = 9, .frame = (UINT64_C(1) << 52) + 5, .model_version = 2,
                    .policy_version = 0, .pair = 77, .cls = 4, .w = 32, .h = 32, .c = 1,
                    .format = PROTO_FORMAT_RAW8, .side = 1};
    uint8_t data[1024 - PROTO_FRAME_HEADER_MAX];
    memset(data, 0xab, sizeof data);
    assert_int_equal(proto_pack_frame(&out, &f, data, 600), 0);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    assert_int_equal(msgpack_unpack_next(&u, (const char *)b, out.len, &off), MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(off, out.len);
    assert_int_equal(u.data.type, MSGPACK_OBJECT_MAP);
    int seen = 0;
    for (uint32_t i = 0; i < u.data.via.map.size; i++) {
        msgpack_object_kv *kv = &u.data.via.map.ptr[i];
        char key[32] = {0};
        memcpy(key, kv->key.via.str.ptr, kv->key.via.str.size);
        if (!strcmp(key, "frame")) assert_true(kv->val.via.u64 == f.frame), seen++;
        if (!strcmp(key, "side")) assert_true(kv->val.via.u64 == 1), seen++;
        if (!strcmp(key, "pair")) assert_true(kv->val.via.u64 == 77), seen++;
        if (!strcmp(key, "data")) {
            assert_int_equal(kv->val.type, MSGPACK_OBJECT_BIN);
            assert_int_equal(kv->val.via.bin.size, 600);
            seen++;
        }
    }
    assert_int_equal(seen, 4);
    msgpack_unpacked_destroy(&u);
    // A frame that does not fit reports it rather than writing past the buffer.
    ProtoBuf small = {b, 100, 0, 0};
    assert_int_equal(proto_pack_frame(&small, &f, data, 600), -1);
    ProtoBuf e = {b, sizeof b, 0, 0};
    assert_int_equal(proto_pack_error(&e, PROTO_EUNKNOWN_STREAM, "no such stream", 5), 0);
    assert_true(memmem(b, e.len, "unknown_stream", 14) != NULL);
}

static double dist(const float *a, const float *b, int n) {
    double s = 0;
    for (int i = 0; i < n; i++) s += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
    return sqrt(s);
}

static void test_stream_latents(void **state) {
    (void)state;
    enum { Z = 128 };
    Session s;
    memset(&s, 0, sizeof s);
    assert_int_equal(session_alloc(&s, Z, 8, 16), 0);
    ProtoMsg walk = {.type = PROTO_STREAM, .id = 1, .mode = PROTO_MODE_WALK, .cls = -1, .step = 0.05};
    ProtoMsg gal = {.type = PROTO_STREAM, .id = 2, .mode = PROTO_MODE_GALLERY, .cls = -1, .step = 0.05};
    Stream *w = session_stream_open(&s, &walk, 1, 42, 10, 0);
    Stream *g = session_stream_open(&s, &gal, 2, 42, 10, 0);
    assert_non_null(w);
    assert_non_null(g);
    assert_ptr_equal(session_stream_find(&s, 2), g);
    float prev_w[Z], prev_g[Z], z[Z];
    int wc = stream_next_latent(w, prev_w, Z, 10, NULL);
    stream_next_latent(g, prev_g, Z, 10, NULL);
    double walk_max = 0, gal_min = 1e30, norm_min = 1e30, norm_max = 0;
    for (int i = 0; i < 100; i++) { // 100 frames: five anchors passed
        assert_int_equal(stream_next_latent(w, z, Z, 10, NULL), wc); // a walk keeps its class
        double d = dist(z, prev_w, Z), nz = dist(z, (float[Z]){0}, Z);
        walk_max = fmax(walk_max, d);
        norm_min = fmin(norm_min, nz);
        norm_max = fmax(norm_max, nz);
        memcpy(prev_w, z, sizeof z);
        int c = stream_next_latent(g, z, Z, 10, NULL);
        assert_true(c >= 0 && c < 10);
        gal_min = fmin(gal_min, dist(z, prev_g, Z));
        memcpy(prev_g, z, sizeof z);
    }
    // Gallery neighbours are independent draws, about sqrt(2 Z) = 16 apart; walk steps of 1/20 of
    // an anchor-to-anchor distance about 0.05 * 16 * pi / 2 (slerp arc).
    assert_true(walk_max < 2.0);
    assert_true(gal_min > 10.0);
    assert_true(norm_min > 8.0 && norm_max < 14.0); // slerp keeps |z| near sqrt(Z) = 11.3
    // The same seed gives the same frames.
    Stream *g2 = session_stream_open(&s, &(ProtoMsg){.id = 3, .mode = PROTO_MODE_GALLERY, .cls = -1,
                                                      .step = 0.05}, 3, 42, 10, 0);
    Stream *g3 = session_stream_open(&s, &(ProtoMsg){.id = 4, .mode = PROTO_MODE_GALLERY, .cls = -1,
                                                      .step = 0.05}, 4, 42, 10, 0);
    float a[Z], b2[Z];
    assert_int_equal(stream_next_latent(g2, a, Z, 10, NULL), stream_next_latent(g3, b2, Z, 10, NULL));
    assert_memory_equal(a, b2, sizeof a);
    // History: the newest `history` frames are found, older ones are not.
    for (uint64_t id = 100; id < 120; id++) {
        int k = session_history_put(&s, id);
        s.hist_cls[k] = (int)(id % 10);
        s.hist_z[(size_t)k * Z] = (float)id;
    }
    int cls;
    const float *hz = session_history_find(&s, 119, &cls, NULL);
    assert_non_null(hz);
    assert_int_equal(cls, 9);
    assert_true(hz[0] == 119.0f);
    assert_non_null(session_history_find(&s, 112, &cls, NULL));
    assert_null(session_history_find(&s, 111, &cls, NULL));
    session_free(&s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scan_refuses_lying_lengths),
        cmocka_unit_test(test_scan_fuzz),
        cmocka_unit_test(test_decode_messages),
        cmocka_unit_test(test_decode_errors),
        cmocka_unit_test(test_pack_roundtrip),
        cmocka_unit_test(test_stream_latents),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
