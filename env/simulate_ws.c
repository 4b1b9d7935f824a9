// simulate_ws.c — sim_run_server (simulate.h): a simulated user steering a running steer server
// over a real WebSocket (libwebsockets client, its own poll loop: one connection, one thread, so a
// blocking send/receive pair is all the simulation needs), speaking steer.v1 in msgpack-c.
#include <libwebsockets.h>
#include <math.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "env/simulate.h"
#include "util/clock.h"
#include "env/wsclient.h"

static void pk_str(msgpack_packer *pk, const char *s) {
    msgpack_pack_str(pk, strlen(s));
    msgpack_pack_str_body(pk, s, strlen(s));
}

// A decoded server message: its type and the fields the simulation reads.
typedef struct {
    char t[16];
    uint64_t frame, version;
    int w, h, ch;
    const unsigned char *data;
    size_t data_len;
    char code[48];
} SimFields;

static int parse(const WscMsg *m, msgpack_unpacked *u, SimFields *f) {
    memset(f, 0, sizeof *f);
    if (msgpack_unpack_next(u, (const char *)m->data, m->len, NULL) != MSGPACK_UNPACK_SUCCESS ||
        u->data.type != MSGPACK_OBJECT_MAP)
        return -1;
    const msgpack_object_map *map = &u->data.via.map;
    for (uint32_t i = 0; i < map->size; i++) {
        const msgpack_object *k = &map->ptr[i].key, *v = &map->ptr[i].val;
        if (k->type != MSGPACK_OBJECT_STR) continue;
        char key[24];
        snprintf(key, sizeof key, "%.*s", (int)k->via.str.size, k->via.str.ptr);
        if (v->type == MSGPACK_OBJECT_STR) {
            if (!strcmp(key, "t")) snprintf(f->t, sizeof f->t, "%.*s", (int)v->via.str.size, v->via.str.ptr);
            if (!strcmp(key, "code")) snprintf(f->code, sizeof f->code, "%.*s", (int)v->via.str.size, v->via.str.ptr);
        } else if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
            uint64_t x = v->via.u64;
            if (!strcmp(key, "frame")) f->frame = x;
            else if (!strcmp(key, "version")) f->version = x;
            else if (!strcmp(key, "w")) f->w = (int)x;
            else if (!strcmp(key, "h")) f->h = (int)x;
            else if (!strcmp(key, "c")) f->ch = (int)x;
        } else if (v->type == MSGPACK_OBJECT_BIN && !strcmp(key, "data")) {
            f->data = (const unsigned char *)v->via.bin.ptr;
            f->data_len = v->via.bin.size;
        }
    }
    return 0;
}

// Waits for `want` frames (raw8) into w->img slots from index 0 (at most w->max_B at a time is
// the caller's affair), their ids into ids; also tracks the newest policy version seen.
static int recv_until(Wsc *c, const char *type, uint64_t min_version, SimWorld *w, int want,
                      float *img, uint64_t *ids, uint64_t *policy_version, char *err, size_t errlen) {
    int got = 0, done = 0;
    long px = (long)w->g.cfg.channels * w->g.cfg.img * w->g.cfg.img;
    while (!done) {
        WscMsg *m = wsc_recv(c);
        if (!m) {
            snprintf(err, errlen, "the server went quiet or closed the connection (waiting for %s)", type);
            return -1;
        }
        msgpack_unpacked u;
        msgpack_unpacked_init(&u);
        SimFields f;
        int rc = parse(m, &u, &f);
        if (!rc && !strcmp(f.t, "error")) {
            snprintf(err, errlen, "the server answered error %s", f.code);
            rc = -1;
        } else if (!rc && !strcmp(f.t, "policy")) {
            if (f.version > *policy_version) *policy_version = f.version;
            if (!strcmp(type, "policy") && f.version >= min_version) done = 1;
        } else if (!rc && !strcmp(f.t, "frame") && want > 0) {
            if ((long)f.data_len != px) {
                snprintf(err, errlen, "a frame of %zu bytes, not %ld (raw8)", f.data_len, px);
                rc = -1;
            } else {
                for (long i = 0; i < px; i++) img[got * px + i] = f.data[i] / 127.5f - 1.0f;
                ids[got++] = f.frame;
                if (got == want && !strcmp(type, "frame")) done = 1;
            }
        } else if (!rc && !strcmp(f.t, type) && strcmp(type, "frame")) {
            done = 1;
        }
        msgpack_unpacked_destroy(&u);
        free(m);
        if (rc) return -1;
    }
    return 0;
}

int sim_run_server(SimWorld *w, SimUser *u, const SimConfig *c, const char *url, SimResult *out,
                   char *err, size_t errlen) {
    memset(out, 0, sizeof *out);
    Wsc ws;
    if (wsc_open(&ws, url, 30.0, err, errlen)) {
        wsc_close(&ws);
        return -1;
    }
    msgpack_packer pk;
    msgpack_packer_init(&pk, &ws, wsc_write);
    char user[64];
    snprintf(user, sizeof user, "sim-%llu", (unsigned long long)c->seed);
    long px = (long)w->g.cfg.channels * w->g.cfg.img * w->g.cfg.img;
    int n_check = c->check_n, rc = -1;
    float *img = malloc((size_t)(n_check + 1) * px * sizeof(float));
    uint64_t *ids = malloc((size_t)(n_check + 1) * sizeof(uint64_t)), pv = 0;
    int *liked = malloc((size_t)n_check * sizeof(int));
    double t_update = 0;
    if (!img || !ids || !liked) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    msgpack_pack_map(&pk, 2);
    pk_str(&pk, "t"), pk_str(&pk, "hello");
    pk_str(&pk, "user"), pk_str(&pk, user);
    if (wsc_flush(&ws) || recv_until(&ws, "welcome", 0, w, 0, img, ids, &pv, err, errlen)) goto done;
    // one gallery stream of raw8 frames, credited as the simulation goes
    msgpack_pack_map(&pk, 6);
    pk_str(&pk, "t"), pk_str(&pk, "stream");
    pk_str(&pk, "seed"), msgpack_pack_uint64(&pk, c->seed);
    pk_str(&pk, "id"), msgpack_pack_uint32(&pk, 1);
    pk_str(&pk, "mode"), pk_str(&pk, "gallery");
    pk_str(&pk, "format"), pk_str(&pk, "raw8");
    pk_str(&pk, "n"), msgpack_pack_uint32(&pk, (uint32_t)n_check);
    if (wsc_flush(&ws)) goto done;
    for (;;) {
        // the satisfaction check: n_check frames drawn from the policy as it stands, unrated
        if (recv_until(&ws, "frame", 0, w, n_check, img, ids, &pv, err, errlen)) goto done;
        int n_liked = 0;
        for (int i = 0; i < n_check; i += w->max_B) {
            int B = n_check - i < w->max_B ? n_check - i : w->max_B;
            if (simuser_likes(u, img + (long)i * px, B, liked + i)) goto done;
        }
        for (int i = 0; i < n_check; i++) n_liked += liked[i];
        out->liked_frac = (double)n_liked / n_check;
        if (out->liked_frac >= c->satisfied_frac || out->events >= c->budget) break;
        // one frame, rated; then wait for the policy that learned from it
        msgpack_pack_map(&pk, 3);
        pk_str(&pk, "t"), pk_str(&pk, "credit");
        pk_str(&pk, "id"), msgpack_pack_uint32(&pk, 1);
        pk_str(&pk, "n"), msgpack_pack_uint32(&pk, 1);
        if (wsc_flush(&ws) || recv_until(&ws, "frame", 0, w, 1, img, ids, &pv, err, errlen)) goto done;
        int rating;
        if (simuser_rate(u, img, 1, &rating)) goto done;
        double t0 = clock_now_s();
        msgpack_pack_map(&pk, 5);
        pk_str(&pk, "t"), pk_str(&pk, "feedback");
        pk_str(&pk, "id"), msgpack_pack_uint64(&pk, (uint64_t)out->events + 1);
        pk_str(&pk, "kind"), pk_str(&pk, "rate");
        pk_str(&pk, "frame"), msgpack_pack_uint64(&pk, ids[0]);
        pk_str(&pk, "value"), msgpack_pack_int(&pk, rating);
        if (wsc_flush(&ws)) goto done;
        out->events++;
        if (recv_until(&ws, "policy", pv + 1, w, 0, img, ids, &pv, err, errlen)) goto done;
        t_update += clock_now_s() - t0;
        msgpack_pack_map(&pk, 3);
        pk_str(&pk, "t"), pk_str(&pk, "credit");
        pk_str(&pk, "id"), msgpack_pack_uint32(&pk, 1);
        pk_str(&pk, "n"), msgpack_pack_uint32(&pk, (uint32_t)n_check);
        if (wsc_flush(&ws)) goto done;
    }
    out->satisfied = out->liked_frac >= c->satisfied_frac;
    out->update_ms = out->events ? 1e3 * t_update / out->events : 0;
    rc = 0;
done:
    free(img);
    free(ids);
    free(liked);
    wsc_close(&ws);
    return rc;
}
