// session.c — per-client state (see session.h): streams and their latents, the reply ring and the
// frame history. No sockets here; serve.c drives it from the loop thread.
#include "server/session.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static size_t ctrl_pad; // the libwebsockets pad, the same for every session

int session_alloc(Session *s, int z_dim, int history, size_t pad) {
    if (s->ctrl) return 0; // slot already sized
    ctrl_pad = pad;
    s->z_dim = z_dim;
    s->history = history;
    s->ctrl = malloc((size_t)SESSION_CTRL_SLOTS * SESSION_CTRL_BYTES);
    s->hist_id = calloc((size_t)history, sizeof *s->hist_id);
    s->hist_cls = calloc((size_t)history, sizeof *s->hist_cls);
    s->hist_pv = calloc((size_t)history, sizeof *s->hist_pv);
    s->hist_z = calloc((size_t)history * z_dim, sizeof(float));
    s->walk_mem = calloc((size_t)SESSION_MAX_STREAMS * 2 * z_dim, sizeof(float));
    if (!s->ctrl || !s->hist_id || !s->hist_cls || !s->hist_pv || !s->hist_z || !s->walk_mem) {
        session_free(s);
        return -1;
    }
    for (int i = 0; i < SESSION_MAX_STREAMS; i++) {
        s->streams[i].walk_a = s->walk_mem + (size_t)(2 * i) * z_dim;
        s->streams[i].walk_b = s->walk_mem + (size_t)(2 * i + 1) * z_dim;
    }
    return 0;
}

void session_free(Session *s) {
    free(s->ctrl);
    free(s->hist_id);
    free(s->hist_cls);
    free(s->hist_pv);
    free(s->hist_z);
    free(s->walk_mem);
    free(s->rx);
    s->ctrl = NULL;
    s->hist_id = NULL;
    s->hist_cls = NULL;
    s->hist_pv = NULL;
    s->hist_z = NULL;
    s->walk_mem = NULL;
    s->rx = NULL;
}

Stream *session_stream_find(Session *s, uint32_t id) {
    for (int i = 0; i < SESSION_MAX_STREAMS; i++)
        if (s->streams[i].open && s->streams[i].id == id) return &s->streams[i];
    return NULL;
}

Stream *session_stream_open(Session *s, const ProtoMsg *m, uint32_t serial, uint64_t seed,
                            int classes, double now) {
    for (int i = 0; i < SESSION_MAX_STREAMS; i++) {
        Stream *st = &s->streams[i];
        if (st->open) continue;
        float *a = st->walk_a, *b = st->walk_b;
        memset(st, 0, sizeof *st);
        st->walk_a = a;
        st->walk_b = b;
        st->open = 1;
        st->id = m->id;
        st->serial = serial;
        st->mode = m->mode;
        st->format = m->format;
        st->cls = m->cls;
        st->credit = m->n;
        st->fps = m->fps;
        st->next_due = now;
        st->step = m->step;
        rng_seed(&st->rng, seed);
        if (st->mode == PROTO_MODE_WALK) {
            rng_normal(&st->rng, st->walk_a, s->z_dim);
            rng_normal(&st->rng, st->walk_b, s->z_dim);
            st->walk_cls = st->cls >= 0 ? st->cls : (classes ? (int)rng_below(&st->rng, classes) : -1);
        }
        s->n_streams++;
        return st;
    }
    return NULL;
}

// A latent (and class) of the user's policy, or of the prior without one; a fixed class stays.
static int stream_draw(Stream *st, float *z, int z_dim, int classes, const PolicyParams *pol) {
    int cls;
    if (pol) {
        cls = policy_sample(pol, &st->rng, z);
    } else {
        rng_normal(&st->rng, z, z_dim);
        cls = classes ? (int)rng_below(&st->rng, (uint32_t)classes) : -1;
    }
    return classes && st->cls >= 0 ? st->cls : cls;
}

void stream_steer(Stream *st, int z_dim, int classes, const PolicyParams *pol) {
    if (st->mode != PROTO_MODE_WALK) return;
    st->walk_cls = stream_draw(st, st->walk_b, z_dim, classes, pol);
}

int stream_next_latent(Stream *st, float *z, int z_dim, int classes, const PolicyParams *pol) {
    if (st->mode != PROTO_MODE_WALK) return stream_draw(st, z, z_dim, classes, pol);
    const float *a = st->walk_a, *b = st->walk_b;
    double dot = 0, na = 0, nb = 0;
    for (int i = 0; i < z_dim; i++) {
        dot += (double)a[i] * b[i];
        na += (double)a[i] * a[i];
        nb += (double)b[i] * b[i];
    }
    double cosv = dot / (sqrt(na * nb) + 1e-30);
    if (cosv > 1) cosv = 1;
    if (cosv < -1) cosv = -1;
    double theta = acos(cosv), t = st->walk_t, wa, wb;
    if (theta < 1e-6) {
        wa = 1 - t;
        wb = t;
    } else {
        wa = sin((1 - t) * theta) / sin(theta);
        wb = sin(t * theta) / sin(theta);
    }
    for (int i = 0; i < z_dim; i++) z[i] = (float)(wa * a[i] + wb * b[i]);
    st->walk_t += st->step;
    if (st->walk_t >= 1.0) { // reached b: it becomes the start, draw the next anchor
        st->walk_t -= 1.0;
        memcpy(st->walk_a, st->walk_b, (size_t)z_dim * sizeof(float));
        if (pol) // the policy picks the next anchor's class too (a cut, at an anchor only)
            st->walk_cls = stream_draw(st, st->walk_b, z_dim, classes, pol);
        else
            rng_normal(&st->rng, st->walk_b, z_dim);
    }
    return st->walk_cls;
}

int session_history_put(Session *s, uint64_t frame_id) {
    int k = s->hist_next;
    s->hist_id[k] = frame_id;
    s->hist_cls[k] = -1;
    s->hist_pv[k] = 0;
    s->hist_next = (k + 1) % s->history;
    if (s->hist_count < s->history) s->hist_count++;
    return k;
}

const float *session_history_find(const Session *s, uint64_t frame_id, int *cls, uint32_t *pv) {
    for (int i = 0; i < s->hist_count; i++)
        if (s->hist_id[i] == frame_id) {
            *cls = s->hist_cls[i];
            if (pv) *pv = s->hist_pv[i];
            return s->hist_z + (size_t)i * s->z_dim;
        }
    return NULL;
}

uint8_t *session_ctrl_slot(Session *s, size_t *cap) {
    if (s->ctrl_count == SESSION_CTRL_SLOTS) return NULL;
    int k = (s->ctrl_head + s->ctrl_count) % SESSION_CTRL_SLOTS;
    *cap = SESSION_CTRL_BYTES - ctrl_pad;
    return s->ctrl + (size_t)k * SESSION_CTRL_BYTES + ctrl_pad;
}

void session_ctrl_commit(Session *s, size_t len) {
    int k = (s->ctrl_head + s->ctrl_count) % SESSION_CTRL_SLOTS;
    s->ctrl_len[k] = len;
    s->ctrl_count++;
}

const uint8_t *session_ctrl_peek(const Session *s, size_t *len) {
    if (!s->ctrl_count) return NULL;
    *len = s->ctrl_len[s->ctrl_head];
    return s->ctrl + (size_t)s->ctrl_head * SESSION_CTRL_BYTES + ctrl_pad;
}

void session_ctrl_pop(Session *s) {
    s->ctrl_head = (s->ctrl_head + 1) % SESSION_CTRL_SLOTS;
    s->ctrl_count--;
}
