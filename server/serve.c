// serve.c — `steer serve` (see serve.h and docs/protocol.md). The loop thread owns libuv, every
// libwebsockets object and every Session; it never runs the generator and never blocks. Frame
// requests go to the generation thread (gen.c) through a locked queue; drawn frames come back
// through uv_async_send and are written as the sockets take them.
//
// Flow control, in one place: a stream's frames are requested only while the client has credit
// on it and its session has fewer than queue_frames frames requested or waiting to be written. A
// client that stops reading therefore holds at most queue_frames frames of memory, and costs the
// generator nothing more. Not here: TLS (run behind a proxy), HTTP/2, feedback and jobs (issues 4-5).
#include "server/serve.h"

#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <getopt.h>
#include <libwebsockets.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <uv.h>

#include "util/clock.h"
#include "generator/gan.h"
#include "server/gen.h"
#include "server/metrics.h"
#include "server/proto.h"
#include "server/session.h"
#include "server/jobs.h"
#include "server/learn.h"
#include "server/store.h"

#define SERVE_MAX_ORIGINS 16
#define SERVE_RX_CHUNK 16384           // bytes libwebsockets hands over per receive callback
#define SERVE_WRITES_PER_CALLBACK 32   // messages written per writable callback at most
#define SERVE_SHUTDOWN_DRAIN_S 5.0     // longest wait for frames in flight at shutdown
#define SERVE_SHUTDOWN_WORKERS_S 60.0  // longest wait for workers to checkpoint at shutdown
#define SERVE_JOB_LIST_MAX 48          // most recent jobs a `list` answers with
#define SERVE_SHUTDOWN_CLOSE_S 2.0     // longest wait for clients to answer the close
#define SERVE_WRITE_CLOSE 4
#define SERVE_CLOSE_WAIT_S 10          // longest wait for a client to answer our close frame
#define SERVE_PING_MAGIC "steerRd1"    // first 8 bytes of our ping payloads (then a u64 count)
#define SERVE_VENDOR_MSGPACK "node_modules/@msgpack/msgpack/dist.umd/msgpack.min.js"

// A user's policy as the loop thread draws from it: the learning thread's latest, and the pairs
// its reward ensemble is least sure of (pool indices) for pair mode to ask next.
typedef struct UserPolicy {
    char user[PROTO_USER_MAX + 1];
    PolicyParams params;
    long pairs[2 * LEARN_PAIRS];
    int n_pairs, pair_next;
    int own; // learned from the user's own feedback; else the population's policy (or the prior)
} UserPolicy;

typedef struct {
    ServeOptions opt;
    uv_loop_t loop;
    struct lws_context *ctx;
    uv_signal_t sigint, sigterm;
    uv_async_t async, store_async, learn_async;
    Store store;
    Learn learn;
    int learning; // a learning thread runs (--policy-pool > 0)
    UserPolicy **users; // every user seen since start, with the policy its frames are drawn from
    int n_users, cap_users;
    UserPolicy population; // what users without feedback draw from, once the population refitted
    int have_population;
    Jobs jobs; // background training and the model registry (jobs_on: opened)
    int jobs_on;
    char admin_token[PROTO_TOKEN_MAX + 1];
    int has_admin_token;
    char serve_path[PATH_MAX];
    Histogram policy_latency; // feedback received -> its user's new policy installed (seconds)
    uint64_t store_pending, feedback_acked, feedback_duplicates, feedback_refused;
    uv_timer_t lag_timer, tick_timer, pace_timer, stop_timer;
    Gen gen;
    Metrics metrics;
    Session *sessions; // (max_connections)
    uint32_t *free_slots;
    int n_free;
    ProtoModelInfo model;
    char model_name[64];
    ProtoLimits limits;
    ProtoServerLimits wire_limits;
    uint64_t next_frame_id, next_session_id;
    uint32_t next_stream_serial;
    Rng seeds; // seeds of streams opened without one
    double t_start, lag_expected, stop_started, close_sent;
    int stopping, paced_timer_on;
    char token[PROTO_TOKEN_MAX + 1];
    int has_token;
    char origin_buf[1024];
    char *origin_list[SERVE_MAX_ORIGINS];
    int n_origins;
} Server;

// Per-connection user data libwebsockets allocates for each protocol.
typedef struct {
    Session *s;
} WsConn;
typedef struct {
    uint8_t *body; // LWS_PRE pad, then the response body
    size_t len;
} HttpConn;

static Server *server_of(struct lws *wsi) { return lws_context_user(lws_get_context(wsi)); }

// ---- replies and closing ---------------------------------------------------------------------

static void session_close_with(Session *s, int code, const char *why) {
    if (s->closing) return;
    s->closing = 1;
    s->close_code = code;
    snprintf(s->close_reason, sizeof s->close_reason, "%s", why);
    lws_callback_on_writable(s->wsi);
}

// Ends a connection the WebSocket way without losing the close frame: writes it (2-byte code and
// the reason) and keeps reading (and discarding) until the client answers with its own close, when
// libwebsockets closes the socket, or SERVE_CLOSE_WAIT_S pass. Closing at once would leave the
// client's unread messages in our socket, the kernel would answer with a reset, and the client
// would lose the close frame and see 1006. (Half-closing after the frame loses it too: some clients
// read the FIN before the frame.) Write type 4 is the close opcode (libwebsockets keeps LWS_WRITE_CLOSE out of its
// public header; its own lws_close_reason() path loses the frame when called from a writable
// callback).
static void session_send_close(Server *sv, Session *s, struct lws *wsi, int code, const char *why) {
    uint8_t frame[LWS_PRE + 2 + 123], *payload = frame + LWS_PRE;
    size_t n = strlen(why);
    if (n > 123) n = 123;
    payload[0] = (uint8_t)(code >> 8);
    payload[1] = (uint8_t)(code & 0xff);
    memcpy(payload + 2, why, n);
    lws_write(wsi, payload, 2 + n, (enum lws_write_protocol)SERVE_WRITE_CLOSE);
    s->closing = 1;
    s->close_sent = 1;
    if (code == 1001) sv->metrics.closed_1001++;
    else if (code == 1008) sv->metrics.closed_1008++;
    else if (code == 1009) sv->metrics.closed_1009++;
    if (s->rx_paused) {
        lws_rx_flow_control(wsi, 1);
        s->rx_paused = 0;
    }
    lws_set_timeout(wsi, PENDING_TIMEOUT_CLOSE_ACK, SERVE_CLOSE_WAIT_S);
}

// Reading from a client pauses while its replies pile up: those queued plus the feedback at the
// store, whose acks will come back in a burst after one COMMIT. It resumes at half that.
static void session_rx_update(Session *s) {
    int owed = s->ctrl_count + s->fb_pending;
    if (!s->rx_paused && owed >= SESSION_CTRL_PAUSE && !s->close_sent) {
        lws_rx_flow_control(s->wsi, 0);
        s->rx_paused = 1;
    } else if (s->rx_paused && owed < SESSION_CTRL_PAUSE / 2 && !s->close_sent) {
        lws_rx_flow_control(s->wsi, 1);
        s->rx_paused = 0;
    }
}

// Queues a reply packed by the caller through the ProtoBuf; pauses reading when replies pile up.
static ProtoBuf reply_begin(Session *s) {
    size_t cap = 0;
    uint8_t *p = session_ctrl_slot(s, &cap);
    ProtoBuf b = {p, p ? cap : 0, 0, p ? 0 : 1};
    return b;
}

static void reply_end(Server *sv, Session *s, ProtoBuf *b) {
    if (b->overflow) {
        // All reply slots pending means the client sends faster than it reads, past the pause.
        session_close_with(s, LWS_CLOSE_STATUS_POLICY_VIOLATION, "replies not read");
        return;
    }
    session_ctrl_commit(s, b->len);
    session_rx_update(s);
    (void)sv;
    lws_callback_on_writable(s->wsi);
}

static void reply_error(Server *sv, Session *s, int code, const char *msg, int64_t ref) {
    ProtoBuf b = reply_begin(s);
    if (!b.overflow) proto_pack_error(&b, code, msg, ref);
    sv->metrics.errors_sent++;
    reply_end(sv, s, &b);
}

// ---- users' policies --------------------------------------------------------------------------

// The user's entry, made (with the prior) on first sight; NULL only when memory runs out.
static UserPolicy *user_policy_get(Server *sv, const char *user) {
    for (int i = 0; i < sv->n_users; i++)
        if (!strcmp(sv->users[i]->user, user)) return sv->users[i];
    if (sv->n_users == sv->cap_users) {
        int cap = sv->cap_users ? 2 * sv->cap_users : 64;
        UserPolicy **u = realloc(sv->users, (size_t)cap * sizeof *u);
        if (!u) return NULL;
        sv->users = u;
        sv->cap_users = cap;
    }
    UserPolicy *u = calloc(1, sizeof *u);
    if (!u || policy_params_alloc(&u->params, sv->model.z_dim, sv->model.classes)) {
        free(u);
        return NULL;
    }
    snprintf(u->user, sizeof u->user, "%s", user);
    if (sv->have_population) policy_params_copy(&u->params, &sv->population.params);
    sv->users[sv->n_users++] = u;
    return u;
}

static void reply_policy(Server *sv, Session *s) {
    const PolicyParams *p = &s->pu->params;
    ProtoPolicy m = {p->version, (uint64_t)p->feedback, (uint64_t)p->comparisons, p->accuracy,
                     p->kl, p->probs, p->classes};
    ProtoBuf b = reply_begin(s);
    if (!b.overflow) proto_pack_policy(&b, &m);
    reply_end(sv, s, &b);
}

// ---- jobs and models (admin) -------------------------------------------------------------------

static ProtoJob proto_job_of(const Job *j) {
    return (ProtoJob){.id = j->id, .step = j->step, .steps = j->steps,
                      .model_version = j->model_version, .state = job_state_name(j->state),
                      .message = j->message, .loss_d = j->loss_d, .loss_g = j->loss_g,
                      .images_per_s = j->images_per_s, .fd = j->fd, .parent_fd = j->parent_fd,
                      .resolution = j->resolution, .alpha = j->alpha};
}

static void reply_job(Server *sv, Session *s, const char *op, const Job *j) {
    ProtoJob pj = proto_job_of(j);
    ProtoBuf b = reply_begin(s);
    if (!b.overflow) proto_pack_job(&b, op, &pj);
    reply_end(sv, s, &b);
}

static void reply_job_end(Server *sv, Session *s, const char *op, long count) {
    ProtoBuf b = reply_begin(s);
    if (!b.overflow) proto_pack_job_end(&b, op, count, sv->jobs.served);
    reply_end(sv, s, &b);
}

static void session_job(Server *sv, Session *s, const ProtoMsg *m) {
    if (!s->admin) {
        reply_error(sv, s, PROTO_EUNAUTHORIZED,
                    sv->has_admin_token ? "job messages need hello with the admin token"
                                        : "this server takes no job messages (no --admin-token-file)",
                    -1);
        return;
    }
    if (!sv->jobs_on) {
        reply_error(sv, s, PROTO_ENOT_IMPLEMENTED, "background jobs are off (--workers 0)", -1);
        return;
    }
    if (sv->stopping) {
        reply_error(sv, s, PROTO_ESHUTTING_DOWN, "the server is shutting down", -1);
        return;
    }
    Jobs *js = &sv->jobs;
    char err[512] = "";
    int rc = 0;
    switch (m->job_op) {
    case PROTO_JOB_SUBMIT: {
        Job *j = jobs_submit(js, m->job_spec, s->slot, s->serial, err, sizeof err);
        if (!j) rc = -1; // answered after COMMIT otherwise (on_job_submitted)
        break;
    }
    case PROTO_JOB_LIST: {
        int first = js->n > SERVE_JOB_LIST_MAX ? js->n - SERVE_JOB_LIST_MAX : 0;
        for (int i = first; i < js->n; i++) reply_job(sv, s, "list", js->v[i]);
        reply_job_end(sv, s, "list", js->n - first);
        return;
    }
    case PROTO_JOB_MODELS: {
        int first = js->n_models > SERVE_JOB_LIST_MAX ? js->n_models - SERVE_JOB_LIST_MAX : 0;
        for (int i = first; i < js->n_models; i++) {
            const ModelEntry *e = &js->models[i];
            ProtoModelEntry pm = {e->version, e->parent, e->job, e->path, e->sha256, e->fd};
            ProtoBuf b = reply_begin(s);
            if (!b.overflow) proto_pack_model_entry(&b, &pm);
            reply_end(sv, s, &b);
        }
        reply_job_end(sv, s, "models", js->n_models - first);
        return;
    }
    case PROTO_JOB_CANCEL: rc = jobs_cancel(js, (long)m->job_id, err, sizeof err); break;
    case PROTO_JOB_PAUSE: rc = jobs_pause(js, (long)m->job_id, err, sizeof err); break;
    case PROTO_JOB_RESUME: rc = jobs_resume(js, (long)m->job_id, err, sizeof err); break;
    case PROTO_JOB_PROMOTE: rc = jobs_promote(js, (long)m->job_id, err, sizeof err); break;
    case PROTO_JOB_ROLLBACK:
        rc = jobs_rollback(js, (long)m->job_version, err, sizeof err);
        if (!rc) reply_job_end(sv, s, "rollback", 0); // the `model` message follows the swap
        break;
    }
    if (rc) reply_error(sv, s, PROTO_EBAD_FIELD, err, -1);
}

static void each_admin(Server *sv, void (*fn)(Server *, Session *, const void *), const void *arg) {
    for (int i = 0; i < sv->opt.max_connections; i++) {
        Session *s = &sv->sessions[i];
        if (s->active && s->hello && s->admin && !s->closing) fn(sv, s, arg);
    }
}

static void send_update(Server *sv, Session *s, const void *j) { reply_job(sv, s, "update", j); }

static void on_job_changed(void *ctx, const Job *j) { each_admin(ctx, send_update, j); }

static void on_job_submitted(void *ctx, uint32_t slot, uint32_t serial, const Job *j,
                             const char *error) {
    Server *sv = ctx;
    if (slot >= (uint32_t)sv->opt.max_connections) return;
    Session *s = &sv->sessions[slot];
    if (!s->active || s->serial != serial || s->closing) return;
    if (error || !j) reply_error(sv, s, PROTO_EINTERNAL, error ? error : "job lost", -1);
    else reply_job(sv, s, "submit", j);
}

static void on_model_swap(void *ctx, void *g, const ModelEntry *m) {
    Server *sv = ctx;
    gen_swap(&sv->gen, g, (uint64_t)m->version);
    sv->model.version = (uint64_t)m->version;
    snprintf(sv->serve_path, sizeof sv->serve_path, "%s", m->path);
    for (int i = 0; i < sv->opt.max_connections; i++) {
        Session *s = &sv->sessions[i];
        if (!s->active || !s->hello || s->closing) continue;
        ProtoBuf b = reply_begin(s);
        if (!b.overflow) proto_pack_model(&b, (uint64_t)m->version);
        reply_end(sv, s, &b);
    }
}

static void send_swap_failed(Server *sv, Session *s, const void *why) {
    reply_error(sv, s, PROTO_EINTERNAL, why, -1);
}

static void on_model_swap_failed(void *ctx, long version, const char *why) {
    char msg[400];
    snprintf(msg, sizeof msg, "model version %ld not served: %s", version, why);
    each_admin(ctx, send_swap_failed, msg);
}

// ---- frame requests --------------------------------------------------------------------------

static int stream_due(const Stream *st, double now) { return st->fps <= 0 || now >= st->next_due; }

// Requests the stream's next frame: latent z_in and class cls_in when z_in is set (an actively
// chosen pair), else the stream's next draw from the user's policy.
static int stream_request(Server *sv, Session *s, Stream *st, int side, uint64_t pair, double now,
                          const float *z_in, int cls_in) {
    uint64_t frame_id = sv->next_frame_id++;
    int classes = sv->model.classes;
    int k = session_history_put(s, frame_id);
    float *z = s->hist_z + (size_t)k * s->z_dim;
    const PolicyParams *pol = s->pu && sv->learning ? &s->pu->params : NULL;
    int cls;
    if (z_in) {
        memcpy(z, z_in, (size_t)s->z_dim * sizeof(float));
        cls = cls_in;
    } else {
        cls = stream_next_latent(st, z, sv->model.z_dim, classes, pol);
    }
    s->hist_cls[k] = cls;
    s->hist_pv[k] = pol ? pol->version : 0;
    FrameRequest r = {.slot = s->slot,
                      .session_serial = s->serial,
                      .stream_id = st->id,
                      .stream_serial = st->serial,
                      .seq = st->seq,
                      .frame_id = frame_id,
                      .pair = side == 0 ? frame_id : pair,
                      .cls = cls,
                      .policy_version = s->hist_pv[k],
                      .format = st->format,
                      .side = side,
                      .t_submit = now};
    if (gen_submit(&sv->gen, &r, z)) return -1;
    st->credit--;
    st->seq++;
    s->inflight++;
    sv->metrics.frames_in_flight++;
    if (st->fps > 0) {
        double period = 1.0 / st->fps;
        st->next_due = (st->next_due > now - period ? st->next_due : now) + period;
    }
    return 0;
}

// Requests frames for every stream of s that has credit, is due and fits in the session's queue,
// one stream after another so that streams share the queue.
static void session_pump(Server *sv, Session *s) {
    if (!s->active || !s->hello || s->closing || sv->stopping) return;
    // The kernel's send buffer is full (libwebsockets holds the rest of a message): draw nothing
    // more until the client reads. A stalled reader so costs at most its socket buffers.
    if (lws_partial_buffered(s->wsi)) {
        lws_callback_on_writable(s->wsi);
        return;
    }
    double now = clock_now_s();
    int progress = 1;
    while (progress) {
        progress = 0;
        for (int k = 0; k < SESSION_MAX_STREAMS; k++) {
            int room = sv->opt.queue_frames - s->inflight - s->queued;
            // Frames written but not yet confirmed read (see session_ping) count against the
            // client too: one that stops reading stops costing after max_unread frames.
            int64_t unread = (int64_t)(s->written - s->confirmed) + s->inflight + s->queued;
            if (sv->opt.max_unread - unread < room) room = (int)(sv->opt.max_unread - unread);
            if (room <= 0) return;
            Stream *st = &s->streams[(s->rr + k) % SESSION_MAX_STREAMS];
            if (!st->open || !st->credit || !stream_due(st, now)) continue;
            if (st->mode == PROTO_MODE_PAIR) {
                if (st->credit < 2 || room < 2) continue;
                uint64_t a = sv->next_frame_id;
                const float *za = NULL, *zb = NULL;
                int ca = -1, cb = -1;
                UserPolicy *u = sv->learning ? s->pu : NULL;
                if (u && st->cls < 0 && u->pair_next < u->n_pairs) { // the ensemble's question
                    const PolicyPool *pool = &sv->learn.pool;
                    long ia = u->pairs[2 * u->pair_next], ib = u->pairs[2 * u->pair_next + 1];
                    u->pair_next++;
                    za = pool->z + ia * pool->z_dim;
                    zb = pool->z + ib * pool->z_dim;
                    ca = sv->model.classes ? pool->y[ia] : -1;
                    cb = sv->model.classes ? pool->y[ib] : -1;
                }
                if (stream_request(sv, s, st, 0, 0, now, za, ca) ||
                    stream_request(sv, s, st, 1, a, now, zb, cb))
                    return;
            } else if (stream_request(sv, s, st, -1, 0, now, NULL, -1)) {
                return;
            }
            progress = 1;
        }
        s->rr = (s->rr + 1) % SESSION_MAX_STREAMS;
    }
}

// Drops every queued frame of stream id (UINT32_MAX: of all streams), counting them as dropped.
static void session_drop_frames(Server *sv, Session *s, uint32_t id, uint64_t *dropped) {
    FrameOut **pp = &s->fq_head, *last = NULL;
    while (*pp) {
        FrameOut *f = *pp;
        if (id == UINT32_MAX || f->req.stream_id == id) {
            *pp = f->next;
            s->queued--;
            sv->metrics.frames_queued--;
            (*dropped)++;
            gen_release(&sv->gen, f);
        } else {
            last = f;
            pp = &f->next;
        }
    }
    s->fq_tail = last;
}

static void stream_close(Server *sv, Session *s, Stream *st) {
    size_t removed = gen_cancel(&sv->gen, s->slot, s->serial, st->id);
    s->inflight -= (int)removed;
    sv->metrics.frames_in_flight -= removed;
    session_drop_frames(sv, s, st->id, &sv->metrics.dropped_stop);
    st->open = 0;
    s->n_streams--;
    sv->metrics.streams--;
}

// ---- messages --------------------------------------------------------------------------------

static int tokens_equal(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    unsigned diff = (unsigned)(la ^ lb);
    for (size_t i = 0; i < la && i < lb; i++) diff |= (unsigned char)(a[i] ^ b[i]);
    return diff == 0;
}

static void pace_start(Server *sv);

// A feedback goes to the store thread with the latent and class of every frame it names, as the
// session remembers them; `ack` (or an error) comes back after COMMIT. A frame the session does
// not remember is passed as unknown: the store acknowledges a retry of an already stored id and
// refuses anything else with unknown_frame, storing nothing.
static void session_feedback(Server *sv, Session *s, const ProtoMsg *m) {
    static const int roles[3][2] = {{STORE_ROLE_RATED, STORE_ROLE_RATED},
                                    {STORE_ROLE_WINNER, STORE_ROLE_LOSER},
                                    {STORE_ROLE_CHOSEN, STORE_ROLE_AMONG}};
    int Z = sv->model.z_dim;
    StoreItem *it = store_item_new(m->fb_n, Z);
    if (!it) {
        reply_error(sv, s, PROTO_EINTERNAL, "out of memory", -1);
        return;
    }
    it->slot = s->slot;
    it->session_serial = s->serial;
    memcpy(it->client_id, m->fb_id, sizeof it->client_id);
    it->id_is_int = m->fb_id_is_int;
    memcpy(it->user, s->user, sizeof it->user);
    it->kind = m->fb_kind;
    it->value = m->fb_value;
    it->tie = m->fb_tie;
    it->t_recv = clock_now_s();
    for (int i = 0; i < m->fb_n; i++) {
        StoreFrame *f = &it->frames[i];
        f->frame = m->fb_frames[i];
        f->role = roles[m->fb_kind][i ? 1 : 0];
        int cls;
        uint32_t pv = 0;
        const float *z = session_history_find(s, f->frame, &cls, &pv);
        f->known = z != NULL;
        f->cls = z ? cls : -1;
        f->model_version = sv->model.version;
        f->policy_version = pv;
        if (z) memcpy(it->latents + (size_t)i * Z, z, sizeof(float) * (size_t)Z);
    }
    sv->store_pending++;
    s->fb_pending++;
    session_rx_update(s);
    store_submit(&sv->store, it);
}

static void on_message(Server *sv, Session *s, const uint8_t *buf, size_t len, int binary) {
    double now = clock_now_s();
    sv->metrics.messages_received++;
    s->last_activity = now;
    if (!binary) {
        reply_error(sv, s, PROTO_EBAD_MESSAGE,
                    "text messages are not part of steer.v1: send msgpack in binary messages", -1);
        return;
    }
    ProtoMsg m;
    char err[160];
    int64_t ref;
    int rc = proto_decode(&m, buf, len, &sv->limits, err, sizeof err, &ref);
    if (rc) {
        reply_error(sv, s, rc, err, ref);
        return;
    }
    if (m.type != PROTO_HELLO && !s->hello) {
        reply_error(sv, s, PROTO_ENO_HELLO, "send hello first", ref);
        return;
    }
    switch (m.type) {
    case PROTO_HELLO: {
        if (s->hello) {
            reply_error(sv, s, PROTO_EALREADY_HELLO, "this session already said hello", -1);
            return;
        }
        int admin = sv->has_admin_token && m.has_token && tokens_equal(m.token, sv->admin_token);
        if (sv->has_token && !admin && (!m.has_token || !tokens_equal(m.token, sv->token))) {
            reply_error(sv, s, PROTO_EUNAUTHORIZED, "hello needs the server's token", -1);
            session_close_with(s, LWS_CLOSE_STATUS_POLICY_VIOLATION, "unauthorized");
            return;
        }
        s->hello = 1;
        s->admin = admin;
        s->id = ++sv->next_session_id;
        if (m.has_user) snprintf(s->user, sizeof s->user, "%s", m.user);
        else snprintf(s->user, sizeof s->user, "anon-%llu", (unsigned long long)s->id);
        sv->metrics.sessions++;
        ProtoBuf b = reply_begin(s);
        if (!b.overflow) proto_pack_welcome(&b, s->id, s->user, &sv->model, &sv->wire_limits);
        reply_end(sv, s, &b);
        s->pu = user_policy_get(sv, s->user);
        if (sv->learning && s->pu) reply_policy(sv, s);
        return;
    }
    case PROTO_STREAM: {
        if (sv->stopping) {
            reply_error(sv, s, PROTO_ESHUTTING_DOWN, "the server is shutting down", ref);
            return;
        }
        if (session_stream_find(s, m.id)) {
            reply_error(sv, s, PROTO_ESTREAM_EXISTS, "a stream with this id is open", ref);
            return;
        }
        uint64_t seed = m.has_seed ? m.seed : rng_u64(&sv->seeds);
        Stream *st = session_stream_open(s, &m, ++sv->next_stream_serial, seed, sv->model.classes,
                                         now);
        if (!st) {
            char msg[64];
            snprintf(msg, sizeof msg, "at most %d open streams", SESSION_MAX_STREAMS);
            reply_error(sv, s, PROTO_ETOO_MANY_STREAMS, msg, ref);
            return;
        }
        sv->metrics.streams++;
        if (sv->learning && s->pu) // a walk heads for the user's policy from its first step
            stream_steer(st, sv->model.z_dim, sv->model.classes, &s->pu->params);
        if (st->fps > 0) pace_start(sv);
        session_pump(sv, s);
        return;
    }
    case PROTO_CREDIT: {
        Stream *st = session_stream_find(s, m.id);
        if (!st) {
            reply_error(sv, s, PROTO_EUNKNOWN_STREAM, "no open stream has this id", ref);
            return;
        }
        if ((uint64_t)st->credit + m.n > sv->limits.max_credit) {
            char msg[96];
            snprintf(msg, sizeof msg, "granted credit would pass %u (now %u)", sv->limits.max_credit,
                     st->credit);
            reply_error(sv, s, PROTO_ECREDIT_OVERFLOW, msg, ref);
            return;
        }
        st->credit += m.n;
        if (st->fps > 0) pace_start(sv);
        session_pump(sv, s);
        return;
    }
    case PROTO_STOP: {
        Stream *st = session_stream_find(s, m.id);
        if (!st) {
            reply_error(sv, s, PROTO_EUNKNOWN_STREAM, "no open stream has this id", ref);
            return;
        }
        uint64_t sent = st->sent;
        stream_close(sv, s, st);
        ProtoBuf b = reply_begin(s);
        if (!b.overflow) proto_pack_stopped(&b, m.id, sent);
        reply_end(sv, s, &b);
        session_pump(sv, s);
        return;
    }
    case PROTO_FEEDBACK:
        session_feedback(sv, s, &m);
        return;
    case PROTO_JOB:
        session_job(sv, s, &m);
        return;
    }
}

// ---- sessions --------------------------------------------------------------------------------

static Session *session_open(Server *sv, struct lws *wsi) {
    if (!sv->n_free) return NULL;
    uint32_t slot = sv->free_slots[--sv->n_free];
    Session *s = &sv->sessions[slot];
    if (session_alloc(s, sv->model.z_dim, sv->opt.history, LWS_PRE)) {
        sv->free_slots[sv->n_free++] = slot;
        return NULL;
    }
    s->wsi = wsi;
    s->slot = slot;
    s->serial++;
    s->active = 1;
    s->hello = 0;
    s->n_streams = 0;
    s->rr = 0;
    s->inflight = s->queued = 0;
    s->fq_head = s->fq_tail = NULL;
    s->ctrl_head = s->ctrl_count = 0;
    s->hist_next = s->hist_count = 0;
    s->rx_len = 0;
    s->rx_in_message = 0;
    s->tokens = 2 * sv->opt.max_rate;
    s->last_refill = s->last_activity = clock_now_s();
    s->rx_paused = s->closing = s->close_sent = 0;
    s->fb_pending = 0;
    s->written = s->pinged = s->confirmed = 0;
    s->close_code = 0;
    for (int i = 0; i < SESSION_MAX_STREAMS; i++) s->streams[i].open = 0;
    sv->metrics.connections++;
    sv->metrics.connections_total++;
    return s;
}

// Ends a session: cancels its queued requests, drops its drawn frames, frees its slot. Frames of it
// still being drawn are dropped when they come back (the serial no longer matches).
static void session_end(Server *sv, Session *s) {
    if (!s->active) return;
    size_t removed = gen_cancel(&sv->gen, s->slot, s->serial, UINT32_MAX);
    sv->metrics.frames_in_flight -= removed;
    session_drop_frames(sv, s, UINT32_MAX, &sv->metrics.dropped_disconnect);
    for (int i = 0; i < SESSION_MAX_STREAMS; i++)
        if (s->streams[i].open) {
            s->streams[i].open = 0;
            sv->metrics.streams--;
        }
    if (s->hello) sv->metrics.sessions--;
    sv->metrics.connections--;
    free(s->rx);
    s->rx = NULL;
    s->active = 0;
    s->serial++;
    s->wsi = NULL;
    sv->free_slots[sv->n_free++] = s->slot;
}

// Read confirmation. TCP tells the server only that bytes reached the client's socket buffers,
// which on loopback hold hundreds of frames; a client that stops reading would go on costing
// generation until they fill. So every SERVE_PING_EVERY frames the server sends a WebSocket ping
// carrying the count of frames written so far; a client's WebSocket stack answers it with a pong
// only once it has read everything before it. The echoed count is what the client has read.
static int session_ping(Session *s) {
    uint8_t buf[LWS_PRE + 16], *p = buf + LWS_PRE;
    memcpy(p, SERVE_PING_MAGIC, 8);
    for (int i = 0; i < 8; i++) p[8 + i] = (uint8_t)(s->written >> (56 - 8 * i));
    if (lws_write(s->wsi, p, 16, LWS_WRITE_PING) < 16) return -1;
    s->pinged = s->written;
    return 0;
}

static void session_pong(Server *sv, Session *s, const uint8_t *in, size_t len) {
    if (len != 16 || memcmp(in, SERVE_PING_MAGIC, 8)) return; // libwebsockets' own keep-alive
    uint64_t n = 0;
    for (int i = 0; i < 8; i++) n = (n << 8) | in[8 + i];
    if (n > s->confirmed && n <= s->written) {
        s->confirmed = n;
        session_pump(sv, s);
    }
}

// Writes what s has pending, replies first. Returns -1 when the connection must close.
static int session_write(Server *sv, Session *s) {
    for (int k = 0; k < SERVE_WRITES_PER_CALLBACK; k++) {
        size_t len;
        const uint8_t *msg = session_ctrl_peek(s, &len);
        if (msg) {
            if (lws_write(s->wsi, (unsigned char *)msg, len, LWS_WRITE_BINARY) < (int)len) return -1;
            session_ctrl_pop(s);
        } else if (s->fq_head) {
            FrameOut *f = s->fq_head;
            s->fq_head = f->next;
            if (!s->fq_head) s->fq_tail = NULL;
            s->queued--;
            sv->metrics.frames_queued--;
            Stream *st = session_stream_find(s, f->req.stream_id);
            int rc = lws_write(s->wsi, f->msg, f->len, LWS_WRITE_BINARY);
            if (rc < (int)f->len) {
                gen_release(&sv->gen, f);
                return -1;
            }
            if (st) st->sent++;
            s->written++;
            sv->metrics.frames_sent++;
            sv->metrics.frame_bytes_sent += f->len;
            s->last_activity = clock_now_s();
            gen_release(&sv->gen, f);
            session_pump(sv, s);
        } else {
            break;
        }
        if (lws_partial_buffered(s->wsi)) break;
    }
    if (s->written - s->pinged >= SERVE_PING_EVERY && !lws_partial_buffered(s->wsi)) {
        if (session_ping(s)) return -1;
    }
    session_pump(sv, s);
    session_rx_update(s);
    // Abuse closes at once; a shutdown or idle close first sends what is queued.
    int drained = !s->ctrl_count && (!s->fq_head || s->close_code != LWS_CLOSE_STATUS_GOINGAWAY);
    if (s->closing && drained) {
        session_send_close(sv, s, s->wsi, s->close_code, s->close_reason);
        return 0;
    }
    if (s->ctrl_count || s->fq_head || s->written - s->pinged >= SERVE_PING_EVERY)
        lws_callback_on_writable(s->wsi);
    return 0;
}

// Token bucket of max_rate messages per second, bursts of twice that. Returns 0, or -1 with the
// close reason set on wsi when the client floods.
static int session_rate_check(Server *sv, Session *s, struct lws *wsi) {
    double now = clock_now_s();
    s->tokens += (now - s->last_refill) * sv->opt.max_rate;
    if (s->tokens > 2 * sv->opt.max_rate) s->tokens = 2 * sv->opt.max_rate;
    s->last_refill = now;
    if ((s->tokens -= 1.0) >= 0) return 0;
    session_send_close(sv, s, wsi, LWS_CLOSE_STATUS_POLICY_VIOLATION, "message rate limit exceeded");
    return -1;
}

// Receives one piece of a message; messages larger than max_message close the connection.
static int session_receive(Server *sv, Session *s, struct lws *wsi, const uint8_t *in, size_t len) {
    size_t remaining = lws_remaining_packet_payload(wsi);
    int final = lws_is_final_fragment(wsi) && remaining == 0;
    if (!s->rx_in_message) {
        s->rx_in_message = 1;
        s->rx_len = 0;
        s->rx_binary = lws_frame_is_binary(wsi);
    }
    if (s->rx_len + len + remaining > (size_t)sv->opt.max_message) {
        char why[80];
        snprintf(why, sizeof why, "message larger than %ld bytes", sv->opt.max_message);
        session_send_close(sv, s, wsi, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE, why);
        return 0;
    }
    if (final && s->rx_len == 0) { // the whole message in one piece: no copy
        s->rx_in_message = 0;
        if (session_rate_check(sv, s, wsi)) return 0;
        on_message(sv, s, in, len, s->rx_binary);
        return 0;
    }
    if (!s->rx && !(s->rx = malloc((size_t)sv->opt.max_message))) {
        lws_close_reason(wsi, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, (unsigned char *)"out of memory",
                         13);
        return -1;
    }
    memcpy(s->rx + s->rx_len, in, len);
    s->rx_len += len;
    if (final) {
        s->rx_in_message = 0;
        if (session_rate_check(sv, s, wsi)) return 0;
        on_message(sv, s, s->rx, s->rx_len, s->rx_binary);
    }
    return 0;
}

static int callback_ws(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                       size_t len) {
    Server *sv = server_of(wsi);
    WsConn *c = user;
    switch (reason) {
    case LWS_CALLBACK_ESTABLISHED: {
        // A small, fixed send buffer (no autotuning up to megabytes) bounds what a client that
        // stops reading holds, and the latency of the frames queued for one that reads slowly.
        int fd = (int)lws_get_socket_fd(wsi), sndbuf = sv->opt.sndbuf;
        if (fd >= 0 && sndbuf > 0) setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
        c->s = session_open(sv, wsi);
        if (!c->s) {
            lws_close_reason(wsi, (enum lws_close_status)1013, (unsigned char *)"server full", 11);
            return -1;
        }
        return 0;
    }
    case LWS_CALLBACK_RECEIVE:
        if (!c->s || c->s->closing) return 0;
        return session_receive(sv, c->s, wsi, in, len);
    case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
        // The client answers our close frame: libwebsockets did not write that frame (we did), so
        // returning 0 would make it echo a second one, which browsers treat as a broken connection.
        return c->s && c->s->close_sent ? -1 : 0;
    case LWS_CALLBACK_RECEIVE_PONG:
        if (c->s) session_pong(sv, c->s, in, len);
        return 0;
    case LWS_CALLBACK_SERVER_WRITEABLE:
        if (!c->s) return -1;
        if (c->s->close_sent) return 0; // waiting for the client's close
        return session_write(sv, c->s);
    case LWS_CALLBACK_CLOSED:
        if (c->s) session_end(sv, c->s);
        c->s = NULL;
        return 0;
    default:
        return 0;
    }
}

// ---- HTTP ------------------------------------------------------------------------------------

static const char *mime_of(const char *path) {
    const char *dot = strrchr(path, '.');
    if (!dot) return "application/octet-stream";
    static const char *const map[][2] = {
        {".html", "text/html; charset=utf-8"}, {".js", "text/javascript; charset=utf-8"},
        {".css", "text/css; charset=utf-8"},   {".png", "image/png"},
        {".svg", "image/svg+xml"},             {".json", "application/json"},
        {".ico", "image/x-icon"},              {".map", "application/json"},
        {".txt", "text/plain; charset=utf-8"}};
    for (size_t i = 0; i < sizeof map / sizeof *map; i++)
        if (!strcmp(dot, map[i][0])) return map[i][1];
    return "application/octet-stream";
}

// Starts a response whose body the next writable callback sends. Returns 0 or -1.
static int http_respond(struct lws *wsi, HttpConn *h, unsigned status, const char *type,
                        const char *body, size_t len) {
    h->body = malloc(LWS_PRE + len + 1);
    if (!h->body) return -1;
    memcpy(h->body + LWS_PRE, body, len);
    h->len = len;
    uint8_t hdr[LWS_PRE + 512], *start = hdr + LWS_PRE, *p = start, *end = hdr + sizeof hdr - 1;
    if (lws_add_http_common_headers(wsi, status, type, len, &p, end)) return -1;
    if (lws_add_http_header_by_token(wsi, WSI_TOKEN_HTTP_CACHE_CONTROL, (unsigned char *)"no-store",
                                     8, &p, end))
        return -1;
    if (lws_finalize_write_http_header(wsi, start, &p, end)) return -1;
    lws_callback_on_writable(wsi);
    return 0;
}

static int http_healthz(Server *sv, struct lws *wsi, HttpConn *h) {
    char body[512];
    int n = snprintf(body, sizeof body,
                     "{\"status\":\"%s\",\"protocol\":\"" PROTO_NAME "\",\"model\":{\"version\":%llu,"
                     "\"name\":\"%s\"},\"connections\":%llu,\"streams\":%llu,\"queue_depth\":%zu,"
                     "\"uptime_s\":%.3f}\n",
                     sv->stopping ? "stopping" : "ok", (unsigned long long)sv->model.version,
                     sv->model.name, (unsigned long long)sv->metrics.connections,
                     (unsigned long long)sv->metrics.streams, gen_queue_depth(&sv->gen),
                     clock_now_s() - sv->t_start);
    return http_respond(wsi, h, sv->stopping ? 503 : 200, "application/json", body, (size_t)n);
}

static int http_metrics(Server *sv, struct lws *wsi, HttpConn *h) {
    static char text[32768];
    MetricsExtra x = {.queue_depth = gen_queue_depth(&sv->gen),
                      .model_version = sv->model.version,
                      .uptime_s = clock_now_s() - sv->t_start,
                      .feedback_stored = sv->feedback_acked,
                      .feedback_duplicates = sv->feedback_duplicates,
                      .feedback_refused = sv->feedback_refused,
                      .feedback_pending = sv->store_pending};
    if (sv->learning) {
        x.learning = 1;
        x.policy_latency = &sv->policy_latency;
        double acc = 0, kl = 0;
        uint64_t n_acc = 0;
        for (int i = 0; i < sv->n_users; i++) {
            const PolicyParams *p = &sv->users[i]->params;
            if (!p->version) continue;
            x.policy_users++;
            x.policy_comparisons += (uint64_t)p->comparisons;
            kl += p->kl;
            if (p->kl > x.policy_kl_max) x.policy_kl_max = p->kl;
            if (!isnan(p->accuracy)) {
                acc += p->accuracy;
                n_acc++;
            }
        }
        x.policy_accuracy_mean = n_acc ? acc / n_acc : NAN;
        x.policy_kl_mean = x.policy_users ? kl / x.policy_users : 0;
        pthread_mutex_lock(&sv->learn.lock);
        x.policy_updates = sv->learn.updates;
        x.policy_events = sv->learn.events;
        x.policy_failures = sv->learn.failures;
        x.population_refits = sv->learn.pop_refits;
        x.population_comparisons = (uint64_t)sv->learn.pop_comparisons;
        x.population_accuracy = sv->learn.pop_accuracy;
        pthread_mutex_unlock(&sv->learn.lock);
    }
    if (sv->jobs_on) {
        x.jobs_on = 1;
        for (int i = 0; i < sv->jobs.n; i++)
            if ((unsigned)sv->jobs.v[i]->state < 6) x.jobs_by_state[sv->jobs.v[i]->state]++;
        x.models_registered = (uint64_t)sv->jobs.n_models;
        pthread_mutex_lock(&sv->gen.lock);
        x.model_swaps = sv->gen.swaps;
        pthread_mutex_unlock(&sv->gen.lock);
    }
    pthread_mutex_lock(&sv->store.lock);
    x.store_commits = sv->store.commits;
    x.store_commit_s = sv->store.commit_s_total;
    pthread_mutex_unlock(&sv->store.lock);
    long n = metrics_render(&sv->metrics, &x, text, sizeof text);
    if (n < 0) return -1;
    return http_respond(wsi, h, 200, "text/plain; version=0.0.4; charset=utf-8", text, (size_t)n);
}

// Serves a file of the web client; the path is checked to stay inside web_dir.
static int http_file(Server *sv, struct lws *wsi, const char *uri) {
    char path[PATH_MAX];
    if (!strcmp(uri, "/vendor/msgpack.min.js")) {
        snprintf(path, sizeof path, "%s", SERVE_VENDOR_MSGPACK);
    } else {
        const char *rel = strcmp(uri, "/") ? uri + 1 : "index.html";
        for (const char *p = rel; *p; p++) {
            char ch = *p;
            int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                     ch == '-' || ch == '_' || ch == '.' || ch == '/';
            if (!ok) return 1;
        }
        if (strstr(rel, "..") || rel[0] == '/' || !rel[0]) return 1;
        snprintf(path, sizeof path, "%s/%s", sv->opt.web_dir, rel);
    }
    struct stat st;
    if (stat(path, &st) || !S_ISREG(st.st_mode)) return 1;
    int n = lws_serve_http_file(wsi, path, mime_of(path), NULL, 0);
    if (n < 0 || (n > 0 && lws_http_transaction_completed(wsi))) return -1;
    return 0;
}

// Reads a header into buf; returns its length or -1 when absent.
static int header(struct lws *wsi, enum lws_token_indexes h, char *buf, int cap) {
    int n = lws_hdr_total_length(wsi, h);
    if (n <= 0 || n >= cap) return -1;
    return lws_hdr_copy(wsi, buf, cap, h);
}

static int has_subprotocol(const char *list) {
    const char *p = list;
    while (*p) {
        while (*p == ' ' || *p == ',') p++;
        const char *e = p;
        while (*e && *e != ',' && *e != ' ') e++;
        if ((size_t)(e - p) == strlen(PROTO_NAME) && !memcmp(p, PROTO_NAME, (size_t)(e - p))) return 1;
        p = e;
    }
    return 0;
}

// Refuses an upgrade with a status and a plain reason. The response is written whole here:
// libwebsockets' header helpers answer HTTP/1.0 at this point of the handshake (the request's
// version is not recorded yet), which WebSocket clients refuse to read. Returns what
// CONFIRM_UPGRADE must return.
static int refuse(struct lws *wsi, unsigned status, const char *why) {
    const char *text = status == 503 ? "Service Unavailable"
                       : status == 403 ? "Forbidden"
                       : status == 404 ? "Not Found"
                                       : "Bad Request";
    uint8_t buf[LWS_PRE + 512];
    char *p = (char *)buf + LWS_PRE;
    int n = snprintf(p, sizeof buf - LWS_PRE,
                     "HTTP/1.1 %u %s\r\nServer: steer\r\nContent-Type: text/plain; charset=utf-8\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
                     status, text, strlen(why), why);
    if (n < 0 || (size_t)n >= sizeof buf - LWS_PRE) return -1;
    if (lws_write(wsi, (unsigned char *)p, (size_t)n, LWS_WRITE_HTTP_HEADERS) < n) return -1;
    return 1;
}

static int confirm_upgrade(Server *sv, struct lws *wsi) {
    char buf[1024];
    if (sv->stopping) return refuse(wsi, 503, "steer: shutting down\n");
    if (header(wsi, WSI_TOKEN_GET_URI, buf, sizeof buf) < 0 || strcmp(buf, "/ws")) {
        sv->metrics.refused_protocol++;
        return refuse(wsi, 404, "steer: WebSocket endpoint is /ws\n");
    }
    if (header(wsi, WSI_TOKEN_PROTOCOL, buf, sizeof buf) < 0 || !has_subprotocol(buf)) {
        sv->metrics.refused_protocol++;
        return refuse(wsi, 400, "steer: WebSocket subprotocol steer.v1 required\n");
    }
    if (sv->n_origins) {
        int ok = 0;
        if (header(wsi, WSI_TOKEN_ORIGIN, buf, sizeof buf) >= 0)
            for (int i = 0; i < sv->n_origins; i++) ok |= !strcmp(buf, sv->origin_list[i]);
        if (!ok) {
            sv->metrics.refused_origin++;
            return refuse(wsi, 403, "steer: origin not allowed\n");
        }
    }
    if (sv->metrics.connections >= (uint64_t)sv->opt.max_connections || !sv->n_free) {
        char why[96];
        snprintf(why, sizeof why, "steer: too many connections (limit %d)\n",
                 sv->opt.max_connections);
        sv->metrics.refused_limit++;
        return refuse(wsi, 503, why);
    }
    return 0;
}

static int callback_http(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                         size_t len) {
    Server *sv = server_of(wsi);
    HttpConn *h = user;
    switch (reason) {
    case LWS_CALLBACK_FILTER_NETWORK_CONNECTION:
        return 0;
    case LWS_CALLBACK_HTTP_CONFIRM_UPGRADE:
        return confirm_upgrade(sv, wsi);
    case LWS_CALLBACK_HTTP: {
        const char *uri = in;
        int rc;
        if (!strcmp(uri, "/healthz")) rc = http_healthz(sv, wsi, h);
        else if (!strcmp(uri, "/metrics")) rc = http_metrics(sv, wsi, h);
        else rc = http_file(sv, wsi, uri);
        if (rc > 0) { // not found
            const char *msg = "steer: not found\n";
            rc = http_respond(wsi, h, 404, "text/plain; charset=utf-8", msg, strlen(msg));
        }
        return rc < 0 ? -1 : 0;
    }
    case LWS_CALLBACK_HTTP_WRITEABLE:
        if (!h || !h->body) return 0;
        if (lws_write(wsi, h->body + LWS_PRE, h->len, LWS_WRITE_HTTP_FINAL) < (int)h->len) return -1;
        free(h->body);
        h->body = NULL;
        return lws_http_transaction_completed(wsi) ? -1 : 0;
    case LWS_CALLBACK_HTTP_FILE_COMPLETION:
        return lws_http_transaction_completed(wsi) ? -1 : 0;
    case LWS_CALLBACK_CLOSED_HTTP:
    case LWS_CALLBACK_HTTP_DROP_PROTOCOL:
        if (h) {
            free(h->body);
            h->body = NULL;
        }
        return 0;
    default:
        return lws_callback_http_dummy(wsi, reason, user, in, len);
    }
}

static const struct lws_protocols protocols[] = {
    {"http", callback_http, sizeof(HttpConn), 0, 0, NULL, 0},
    {PROTO_NAME, callback_ws, sizeof(WsConn), SERVE_RX_CHUNK, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0}};

// ---- loop callbacks --------------------------------------------------------------------------

static void on_frames(uv_async_t *a) {
    Server *sv = a->data;
    FrameOut *f = gen_take_done(&sv->gen);
    while (f) {
        FrameOut *next = f->next;
        f->next = NULL;
        sv->metrics.frames_in_flight--;
        Session *s = &sv->sessions[f->req.slot];
        if (!s->active || s->serial != f->req.session_serial) {
            sv->metrics.dropped_disconnect++;
            gen_release(&sv->gen, f);
        } else {
            s->inflight--;
            Stream *st = session_stream_find(s, f->req.stream_id);
            if (!st || st->serial != f->req.stream_serial || !f->len) {
                if (!f->len) reply_error(sv, s, PROTO_EINTERNAL, "frame encoding failed", f->req.stream_id);
                sv->metrics.dropped_stop++;
                gen_release(&sv->gen, f);
                session_pump(sv, s);
            } else {
                if (s->fq_tail) s->fq_tail->next = f;
                else s->fq_head = f;
                s->fq_tail = f;
                s->queued++;
                sv->metrics.frames_queued++;
                lws_callback_on_writable(s->wsi);
            }
        }
        f = next;
    }
}

// Answers from the store thread: ack what was committed, error what was refused.
static void on_stored(uv_async_t *a) {
    Server *sv = a->data;
    for (StoreItem *it = store_take_done(&sv->store), *next; it; it = next) {
        next = it->next;
        if (it->kind == STORE_EXEC) {
            jobs_committed(&sv->jobs, it);
            continue;
        }
        sv->store_pending--;
        if (it->status) sv->feedback_refused++;
        else if (it->duplicate) sv->feedback_duplicates++;
        else sv->feedback_acked++;
        Session *s = &sv->sessions[it->slot];
        if (s->active && s->serial == it->session_serial) s->fb_pending--;
        if (s->active && s->serial == it->session_serial && !s->closing) {
            if (it->status) {
                reply_error(sv, s, it->status, it->msg, -1);
            } else {
                ProtoBuf b = reply_begin(s);
                if (!b.overflow) proto_pack_ack(&b, it->client_id, it->id_is_int);
                reply_end(sv, s, &b);
            }
        }
        if (!it->status && !it->duplicate && sv->learning) learn_submit(&sv->learn, it);
        else free(it);
    }
}

// Tells u's sessions its new policy (`policy`) and turns their walks toward it.
static void user_policy_changed(Server *sv, UserPolicy *u) {
    for (int i = 0; i < sv->opt.max_connections; i++) {
        Session *s = &sv->sessions[i];
        if (!s->active || s->pu != u || !s->hello || s->closing) continue;
        reply_policy(sv, s);
        for (int k = 0; k < SESSION_MAX_STREAMS; k++)
            if (s->streams[k].open)
                stream_steer(&s->streams[k], sv->model.z_dim, sv->model.classes, &u->params);
    }
}

// New policies from the learning thread: installed for the next frames of their users, told to
// their sessions, and walks turned toward them. The population's (user "") goes to every user
// who has not given feedback yet.
static void on_learned(uv_async_t *a) {
    Server *sv = a->data;
    double now = clock_now_s();
    for (LearnSnap *n = learn_take(&sv->learn), *next; n; n = next) {
        next = n->next;
        if (!n->user[0]) {
            policy_params_copy(&sv->population.params, &n->params);
            sv->have_population = 1;
            for (int i = 0; i < sv->n_users; i++) {
                UserPolicy *u = sv->users[i];
                if (u->own) continue;
                policy_params_copy(&u->params, &n->params);
                user_policy_changed(sv, u);
            }
        } else {
            UserPolicy *u = user_policy_get(sv, n->user);
            if (u) {
                policy_params_copy(&u->params, &n->params);
                memcpy(u->pairs, n->pairs, sizeof u->pairs);
                u->n_pairs = n->n_pairs;
                u->pair_next = 0;
                u->own = 1;
                if (n->t_first > 0) histogram_observe(&sv->policy_latency, now - n->t_first);
                user_policy_changed(sv, u);
            }
        }
        learn_snap_free(n);
    }
}

static void on_lag_timer(uv_timer_t *t) {
    Server *sv = t->data;
    double now = (double)uv_now(&sv->loop) / 1000.0;
    double lag = now - sv->lag_expected;
    if (lag < 0) lag = 0;
    sv->metrics.loop_lag_s = lag;
    if (lag > sv->metrics.loop_lag_max_s) sv->metrics.loop_lag_max_s = lag;
    sv->lag_expected = now + 0.1;
}

// Once a second: closes idle connections.
static void on_tick(uv_timer_t *t) {
    Server *sv = t->data;
    double now = clock_now_s();
    for (int i = 0; i < sv->opt.max_connections; i++) {
        Session *s = &sv->sessions[i];
        if (!s->active || s->closing) continue;
        int busy = s->inflight || s->queued;
        if (!busy && now - s->last_activity > sv->opt.idle_timeout)
            session_close_with(s, LWS_CLOSE_STATUS_GOINGAWAY, "idle timeout");
    }
}

// Every 5 ms while some stream is paced: requests the frames that have come due.
static void on_pace(uv_timer_t *t) {
    Server *sv = t->data;
    int paced = 0;
    for (int i = 0; i < sv->opt.max_connections; i++) {
        Session *s = &sv->sessions[i];
        if (!s->active) continue;
        for (int k = 0; k < SESSION_MAX_STREAMS; k++)
            if (s->streams[k].open && s->streams[k].fps > 0 && s->streams[k].credit) paced = 1;
        if (s->n_streams) session_pump(sv, s);
    }
    if (!paced) {
        uv_timer_stop(t);
        sv->paced_timer_on = 0;
    }
}

static void pace_start(Server *sv) {
    if (sv->paced_timer_on || sv->stopping) return;
    sv->paced_timer_on = 1;
    uv_timer_start(&sv->pace_timer, on_pace, 5, 5);
}

static void close_handle(uv_handle_t *h) {
    if (!uv_is_closing(h)) uv_close(h, NULL);
}

// Shutdown, step by step every 10 ms: wait for frames in flight and queued frames (at most
// SERVE_SHUTDOWN_DRAIN_S), then close every WebSocket with 1001, then destroy the context.
static void on_stop_timer(uv_timer_t *t) {
    Server *sv = t->data;
    double now = clock_now_s();
    if (sv->close_sent == 0) {
        int busy = gen_queue_depth(&sv->gen) || gen_running(&sv->gen) ||
                   sv->metrics.frames_in_flight || sv->metrics.frames_queued || sv->store_pending;
        if (busy && now - sv->stop_started < SERVE_SHUTDOWN_DRAIN_S) return;
        if (sv->jobs_on && jobs_alive(&sv->jobs)) { // workers checkpoint before the store closes
            if (now - sv->stop_started < SERVE_SHUTDOWN_WORKERS_S) return;
            jobs_kill(&sv->jobs);
            return;
        }
        for (int i = 0; i < sv->opt.max_connections; i++)
            if (sv->sessions[i].active)
                session_close_with(&sv->sessions[i], LWS_CLOSE_STATUS_GOINGAWAY,
                                   "server shutting down");
        sv->close_sent = now;
        return;
    }
    if (sv->metrics.connections && now - sv->close_sent < SERVE_SHUTDOWN_CLOSE_S) return;
    uv_timer_stop(t);
    gen_stop(&sv->gen);
    on_frames(&sv->async); // release what the thread finished last
    store_close(&sv->store); // commits what is still queued
    learn_close(&sv->learn);
    lws_context_destroy(sv->ctx);
    close_handle((uv_handle_t *)&sv->sigint);
    close_handle((uv_handle_t *)&sv->sigterm);
    close_handle((uv_handle_t *)&sv->async);
    close_handle((uv_handle_t *)&sv->store_async);
    close_handle((uv_handle_t *)&sv->learn_async);
    close_handle((uv_handle_t *)&sv->lag_timer);
    close_handle((uv_handle_t *)&sv->tick_timer);
    close_handle((uv_handle_t *)&sv->pace_timer);
    close_handle((uv_handle_t *)&sv->stop_timer);
}

static void on_signal(uv_signal_t *sig, int signum) {
    Server *sv = sig->data;
    if (sv->stopping) {
        fprintf(stderr, "steer: second signal %d, exiting now\n", signum);
        _exit(1);
    }
    sv->stopping = 1;
    sv->stop_started = clock_now_s();
    if (sv->jobs_on) jobs_stop(&sv->jobs);
    if (!sv->opt.quiet)
        fprintf(stderr, "steer: signal %d: finishing frames in flight, then closing connections\n",
                signum);
    for (int i = 0; i < sv->opt.max_connections; i++) // no new requests from now on
        for (int k = 0; k < SESSION_MAX_STREAMS; k++) sv->sessions[i].streams[k].credit = 0;
    uv_timer_start(&sv->stop_timer, on_stop_timer, 0, 10);
}

// ---- start-up --------------------------------------------------------------------------------

static int parse_origins(Server *sv, const char *list) {
    if (strlen(list) >= sizeof sv->origin_buf) {
        fprintf(stderr, "steer serve: --origin list too long\n");
        return -1;
    }
    snprintf(sv->origin_buf, sizeof sv->origin_buf, "%s", list);
    for (char *save = NULL, *tok = strtok_r(sv->origin_buf, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ') tok++;
        if (!*tok) continue;
        if (sv->n_origins == SERVE_MAX_ORIGINS) {
            fprintf(stderr, "steer serve: at most %d origins\n", SERVE_MAX_ORIGINS);
            return -1;
        }
        sv->origin_list[sv->n_origins++] = tok;
    }
    return 0;
}

static void model_name_from(char *out, size_t cap, const char *path) {
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    snprintf(out, cap, "%s", base);
    char *dot = strstr(out, ".safetensors");
    if (dot) *dot = 0;
}

static void server_free(Server *sv) {
    gen_stop(&sv->gen);
    gen_free(&sv->gen);
    if (sv->sessions)
        for (int i = 0; i < sv->opt.max_connections; i++) session_free(&sv->sessions[i]);
    free(sv->sessions);
    free(sv->free_slots);
    for (int i = 0; i < sv->n_users; i++) {
        policy_params_free(&sv->users[i]->params);
        free(sv->users[i]);
    }
    free(sv->users);
    policy_params_free(&sv->population.params);
    jobs_free(&sv->jobs);
    metrics_free(&sv->metrics);
}

// Undoes a start that failed after the loop and its two async handles were made. Returns 1.
static int start_failed(Server *sv) {
    store_close(&sv->store); // safe when the store never opened
    learn_close(&sv->learn);
    uv_close((uv_handle_t *)&sv->async, NULL);
    uv_close((uv_handle_t *)&sv->store_async, NULL);
    uv_close((uv_handle_t *)&sv->learn_async, NULL);
    uv_run(&sv->loop, UV_RUN_DEFAULT);
    uv_loop_close(&sv->loop);
    server_free(sv);
    return 1;
}

int serve_run(const ServeOptions *opt) {
    static Server server; // one per process; lws reaches it through the context's user pointer
    Server *sv = &server;
    int rc;
    sv->opt = *opt;
    if (opt->token) {
        snprintf(sv->token, sizeof sv->token, "%s", opt->token);
        sv->has_token = 1;
    }
    if (opt->admin_token) {
        snprintf(sv->admin_token, sizeof sv->admin_token, "%s", opt->admin_token);
        sv->has_admin_token = 1;
    }
    if (sv->opt.origins && parse_origins(sv, sv->opt.origins)) return 2;
    signal(SIGPIPE, SIG_IGN);
    // OpenBLAS (the learning thread's LAPACK and BLAS) on its own thread pool would deadlock: its
    // fork handler shuts the pool down when the loop spawns a worker (uv_spawn forks) while the
    // learning thread waits on it inside a call. The learning thread is meant to use one core.
    openblas_set_num_threads(1);
    // Each connection is a descriptor: raise the soft limit to the hard one.
    struct rlimit rl;
    if (!getrlimit(RLIMIT_NOFILE, &rl) && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (metrics_init(&sv->metrics)) return 1;
    char err[512];
    Generator *g = calloc(1, sizeof *g);
    if (!g || generator_load(g, sv->opt.model_path, sv->opt.batch, err, sizeof err)) {
        fprintf(stderr, "steer serve: cannot load the model: %s\n", g ? err : "out of memory");
        free(g);
        metrics_free(&sv->metrics);
        return 1;
    }
    model_name_from(sv->model_name, sizeof sv->model_name, sv->opt.model_path);
    sv->model = (ProtoModelInfo){.version = 1,
                                 .name = sv->model_name,
                                 .width = g->cfg.img,
                                 .height = g->cfg.img,
                                 .channels = g->cfg.channels,
                                 .z_dim = g->cfg.z_dim,
                                 .classes = g->cfg.n_classes};
    sv->limits = (ProtoLimits){.max_credit = 1024, .classes = g->cfg.n_classes};
    sv->wire_limits = (ProtoServerLimits){.max_message = (uint32_t)sv->opt.max_message,
                                          .max_streams = SESSION_MAX_STREAMS,
                                          .max_credit = sv->limits.max_credit,
                                          .queue_frames = (uint32_t)sv->opt.queue_frames,
                                          .history = (uint32_t)sv->opt.history};
    rng_seed(&sv->seeds, sv->opt.seed);
    sv->next_frame_id = (uint64_t)clock_unix_us(); // frame ids stay unique across restarts
    sv->t_start = clock_now_s();

    int n = sv->opt.max_connections;
    sv->sessions = calloc((size_t)n, sizeof *sv->sessions);
    sv->free_slots = calloc((size_t)n, sizeof *sv->free_slots);
    if (!sv->sessions || !sv->free_slots) {
        fprintf(stderr, "steer serve: out of memory for %d connections\n", n);
        generator_free(g);
        free(g);
        server_free(sv);
        return 1;
    }
    for (int i = 0; i < n; i++) sv->free_slots[i] = (uint32_t)(n - 1 - i);
    sv->n_free = n;

    uv_loop_init(&sv->loop);
    uv_async_init(&sv->loop, &sv->async, on_frames);
    sv->async.data = sv;
    uv_async_init(&sv->loop, &sv->store_async, on_stored);
    sv->store_async.data = sv;
    uv_async_init(&sv->loop, &sv->learn_async, on_learned);
    sv->learn_async.data = sv;
    if (store_open(&sv->store, sv->opt.data_dir, &sv->store_async, err, sizeof err)) {
        fprintf(stderr, "steer serve: feedback store: %s\n", err);
        generator_free(g);
        free(g);
        return start_failed(sv);
    }
    snprintf(sv->serve_path, sizeof sv->serve_path, "%s", sv->opt.model_path);
    if (sv->opt.workers > 0) {
        JobsHooks hooks = {on_job_changed, on_job_submitted, on_model_swap, on_model_swap_failed};
        if (jobs_open(&sv->jobs, &sv->loop, &sv->store, sv->opt.data_dir, sv->opt.model_path,
                      sv->opt.workers, &hooks, sv, sv->serve_path, err, sizeof err)) {
            fprintf(stderr, "steer serve: jobs: %s\n", err);
            generator_free(g);
            free(g);
            return start_failed(sv);
        }
        sv->jobs_on = 1;
        sv->model.version = (uint64_t)sv->jobs.served;
        if (strcmp(sv->serve_path, sv->opt.model_path)) { // the registry's served version
            Generator *g2 = calloc(1, sizeof *g2);
            if (!g2 || generator_load(g2, sv->serve_path, sv->opt.batch, err, sizeof err) ||
                g2->cfg.z_dim != g->cfg.z_dim || g2->cfg.img != g->cfg.img ||
                g2->cfg.channels != g->cfg.channels || g2->cfg.n_classes != g->cfg.n_classes) {
                fprintf(stderr, "steer serve: model version %ld (%s) does not load in place of %s%s%s\n",
                        sv->jobs.served, sv->serve_path, sv->opt.model_path, g2 ? ": " : "", g2 ? err : "");
                if (g2) generator_free(g2);
                free(g2);
                generator_free(g);
                free(g);
                return start_failed(sv);
            }
            generator_free(g);
            free(g);
            g = g2;
        }
        jobs_set_shape(&sv->jobs, sv->opt.batch, g->cfg.z_dim, g->cfg.img, g->cfg.channels,
                       g->cfg.n_classes);
    }
    static const double latency_bounds[] = {0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2};
    sv->policy_latency.n_bounds = (int)(sizeof latency_bounds / sizeof latency_bounds[0]);
    memcpy(sv->policy_latency.bounds, latency_bounds, sizeof latency_bounds);
    if (sv->opt.policy_pool > 0) {
        char db_path[4200];
        snprintf(db_path, sizeof db_path, "%s/steer.db", sv->opt.data_dir);
        if (learn_open(&sv->learn, sv->serve_path, sv->model.version, db_path, sv->opt.policy_pool,
                       sv->opt.population_every, &sv->learn_async, err, sizeof err)) {
            fprintf(stderr, "steer serve: learning: %s\n", err);
            generator_free(g);
            free(g);
            return start_failed(sv);
        }
        sv->learning = 1;
        if (policy_params_alloc(&sv->population.params, sv->model.z_dim, sv->model.classes)) {
            fprintf(stderr, "steer serve: out of memory\n");
            generator_free(g);
            free(g);
            return start_failed(sv);
        }
        if (!sv->opt.quiet)
            fprintf(stderr, "steer: learning: pool of %ld frames; %ld stored feedback of %d users "
                            "replayed; ready in %.1f s\n",
                    sv->opt.policy_pool, sv->learn.rebuilt_events, sv->learn.n_users,
                    sv->learn.rebuild_s);
        if (sv->learn.rebuild_failures)
            fprintf(stderr, "steer: learning: %ld stored feedback could not be replayed (kept in "
                            "the store, left out of the policies)\n", sv->learn.rebuild_failures);
    }
    // Frames alive at once: every connection's queue, plus batches whose sessions went away.
    char dev_why[300];
    Device dev = device_choose(sv->opt.device, dev_why, sizeof dev_why);
    if (!sv->opt.quiet || (sv->opt.device == DEVICE_CUDA && dev != DEVICE_CUDA))
        fprintf(stderr, "steer: drawing frames on the %s (%s%s%s)\n",
                dev == DEVICE_CUDA ? "GPU" : "CPU",
                sv->opt.device == DEVICE_CUDA && dev != DEVICE_CUDA ? "asked for cuda; " : "",
                dev_why, device_math_note(dev));
    GenOptions go = {.device = dev,
                     .batch_max = sv->opt.batch,
                     .deadline_s = sv->opt.deadline_ms / 1000.0,
                     .capacity = (size_t)n * sv->opt.queue_frames + 2 * (size_t)sv->opt.batch,
                     .pad = LWS_PRE,
                     .model_version = sv->model.version,
                     .warmup = 1};
    if (gen_init(&sv->gen, g, &go, &sv->metrics, &sv->async, err, sizeof err) || gen_start(&sv->gen)) {
        fprintf(stderr, "steer serve: %s\n", err);
        if (!sv->gen.g) {
            generator_free(g);
            free(g);
        }
        return start_failed(sv);
    }

    lws_set_log_level(LLL_ERR | (sv->opt.quiet ? 0 : LLL_WARN), NULL);
    static lws_retry_bo_t retry;
    retry.secs_since_valid_ping = (uint16_t)sv->opt.ping_interval;
    retry.secs_since_valid_hangup = (uint16_t)(sv->opt.ping_interval + 10);
    void *foreign[1] = {&sv->loop};
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.options = LWS_SERVER_OPTION_LIBUV | LWS_SERVER_OPTION_DISABLE_IPV6;
    info.foreign_loops = foreign;
    info.pcontext = &sv->ctx;
    info.port = sv->opt.port;
    info.iface = sv->opt.host;
    info.protocols = protocols;
    info.user = sv;
    info.fd_limit_per_thread = (unsigned)n + 64;
    info.count_threads = 1;
    info.retry_and_idle_policy = &retry;
    info.timeout_secs = 10;
    info.pt_serv_buf_size = SERVE_RX_CHUNK;
    info.vhost_name = "steer";
    info.server_string = "steer";
    sv->ctx = lws_create_context(&info);
    if (!sv->ctx) {
        fprintf(stderr, "steer serve: cannot listen on %s:%d (in use, or a bad address?)\n",
                sv->opt.host, sv->opt.port);
        return start_failed(sv);
    }
    int port = lws_get_vhost_listen_port(lws_get_vhost_by_name(sv->ctx, "steer"));

    uv_signal_init(&sv->loop, &sv->sigint);
    uv_signal_init(&sv->loop, &sv->sigterm);
    sv->sigint.data = sv->sigterm.data = sv;
    uv_signal_start(&sv->sigint, on_signal, SIGINT);
    uv_signal_start(&sv->sigterm, on_signal, SIGTERM);
    uv_timer_init(&sv->loop, &sv->lag_timer);
    uv_timer_init(&sv->loop, &sv->tick_timer);
    uv_timer_init(&sv->loop, &sv->pace_timer);
    uv_timer_init(&sv->loop, &sv->stop_timer);
    sv->lag_timer.data = sv->tick_timer.data = sv->pace_timer.data = sv->stop_timer.data = sv;
    sv->lag_expected = (double)uv_now(&sv->loop) / 1000.0 + 0.1;
    uv_timer_start(&sv->lag_timer, on_lag_timer, 100, 100);
    uv_timer_start(&sv->tick_timer, on_tick, 1000, 1000);

    printf("steer: serving %s (version %llu, %dx%dx%d, %d classes) at http://%s:%d/\n",
           sv->model.name, (unsigned long long)sv->model.version, sv->model.width,
           sv->model.height, sv->model.channels, sv->model.classes, sv->opt.host, port);
    fflush(stdout);
    if (sv->jobs_on) jobs_schedule(&sv->jobs); // jobs queued or interrupted before this start

    uv_run(&sv->loop, UV_RUN_DEFAULT);
    rc = uv_loop_close(&sv->loop) ? 1 : 0;
    if (rc) fprintf(stderr, "steer serve: the event loop still had open handles at exit\n");
    server_free(sv);
    if (!sv->opt.quiet) fprintf(stderr, "steer: stopped cleanly\n");
    return rc;
}
