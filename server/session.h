// session.h — one client's state on the loop thread: its streams with their credit and latent
// walks, its queue of replies, its queue of drawn frames, and the history of the latents and classes
// of its recent frames (feedback names frames by id; issue 4 reads them back).
// Only the loop thread touches a Session. Memory is sized once per table slot and reused.
#ifndef SERVER_SESSION_H
#define SERVER_SESSION_H
#include <stddef.h>
#include <stdint.h>

#include "kernels/rng.h"
#include "policy/policy.h"
#include "server/gen.h"
#include "server/proto.h"

#define SESSION_MAX_STREAMS 8
#define SESSION_CTRL_SLOTS 64     // pending replies (welcome, error, stopped, ack) per session
#define SESSION_CTRL_BYTES 640    // room for one reply, including the libwebsockets pad
#define SESSION_CTRL_PAUSE 24     // replies owed past which reading from the client pauses

typedef struct {
    int open;
    uint32_t id, serial;
    int mode, format, cls; // cls: fixed class, or -1 for random
    uint32_t credit;       // granted, not yet requested
    uint32_t seq;          // next frame's seq
    uint64_t sent;
    double fps, next_due;  // pacing; fps 0 = none
    double step, walk_t;   // walk: progress between anchors a and b
    int walk_cls;
    float *walk_a, *walk_b; // (Z) anchors, owned by the session
    Rng rng;
} Stream;

struct lws;

typedef struct {
    struct lws *wsi;
    uint32_t slot, serial;
    int active, hello;
    int admin; // said hello with the admin token: may send `job`
    uint64_t id; // the session number `welcome` reports
    char user[PROTO_USER_MAX + 1];
    Stream streams[SESSION_MAX_STREAMS];
    int n_streams, rr;
    int inflight, queued; // frames requested from gen and not back; drawn and not yet written
    FrameOut *fq_head, *fq_tail;
    // replies: SESSION_CTRL_SLOTS slots of SESSION_CTRL_BYTES, pad first
    uint8_t *ctrl;
    size_t ctrl_len[SESSION_CTRL_SLOTS];
    int ctrl_head, ctrl_count;
    // history ring of `history` frames: ids, classes, latents (history, Z)
    int history, z_dim;
    uint64_t *hist_id;
    int32_t *hist_cls;
    uint32_t *hist_pv; // policy version each frame was drawn with
    float *hist_z;
    int hist_next, hist_count;
    float *walk_mem; // (SESSION_MAX_STREAMS, 2, Z)
    // reassembly of fragmented messages
    uint8_t *rx;
    size_t rx_len;
    int rx_in_message, rx_binary;
    // abuse and liveness
    double tokens, last_refill, last_activity;
    int rx_paused, closing, close_sent;
    int fb_pending; // feedback at the store, not yet answered
    struct UserPolicy *pu; // the user's policy (serve.c's table), from hello on
    // read confirmation: frames written, frames written when the last ping went out, and the
    // largest such count a pong has echoed (the client had read everything up to it)
    uint64_t written, pinged, confirmed;
    int close_code;
    char close_reason[96];
} Session;

// Allocates a slot's buffers once (pad: bytes before each reply). Returns 0 or -1 (out of memory).
int session_alloc(Session *s, int z_dim, int history, size_t pad);
// Frees the buffers; safe on a zeroed or half-built Session.
void session_free(Session *s);

// Opens stream m (a decoded `stream`) in a free stream entry with the given serial and seed.
// Returns the entry, or NULL if all are in use.
Stream *session_stream_open(Session *s, const ProtoMsg *m, uint32_t serial, uint64_t seed,
                            int classes, double now);
Stream *session_stream_find(Session *s, uint32_t id);

// Draws the latent of the stream's next frame into z (Z) and returns its class (-1 unconditional):
// gallery and pair: a draw of the user's policy pol (NULL: the prior z ~ N(0, I), classes
// uniform); walk: spherical interpolation between anchors (White 2016, "Sampling Generative
// Networks"), each new anchor a draw of pol: the walk is an episode whose state is the current
// latent and whose action is the step toward the anchor. A stream's fixed class always stays.
int stream_next_latent(Stream *st, float *z, int z_dim, int classes, const PolicyParams *pol);
// A new policy for the user: a walk turns toward a fresh anchor drawn from it (feedback on walk
// frames steers the walk's direction at once); other modes just draw from it from now on.
void stream_steer(Stream *st, int z_dim, int classes, const PolicyParams *pol);

// Takes the next history entry for frame_id and returns its index k: the caller writes the latent at
// hist_z + k * Z and the class at hist_cls[k]. The oldest entry is overwritten.
int session_history_put(Session *s, uint64_t frame_id);
// Finds a recent frame: returns its latent and sets *cls and (if not NULL) *pv, its policy
// version, or returns NULL if it is not remembered.
const float *session_history_find(const Session *s, uint64_t frame_id, int *cls, uint32_t *pv);

// Reply queue: session_ctrl_slot gives a buffer (ProtoBuf after the pad) for the next reply, or
// NULL when all slots are pending; session_ctrl_commit queues it.
uint8_t *session_ctrl_slot(Session *s, size_t *cap);
void session_ctrl_commit(Session *s, size_t len);
const uint8_t *session_ctrl_peek(const Session *s, size_t *len);
void session_ctrl_pop(Session *s);

#endif
