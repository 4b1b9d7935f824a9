// gen.h — the generation thread: dynamic batching of frame requests from every session, one
// generator forward per batch, frames encoded (PNG or raw 8-bit) and packed as whole steer.v1
// `frame` messages, handed back to the loop thread through uv_async_send.
//
// Threads: gen_submit / gen_cancel / gen_take_done / gen_release are called by the loop thread; the
// generation thread owns the Generator. Requests and finished frames name sessions by slot and
// serial, never by pointer. All memory (request ring, frame pool) is sized at gen_init.
#ifndef SERVER_GEN_H
#define SERVER_GEN_H
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "generator/sagan.h"
#include "generator/sagan_cuda.h"
#include "kernels/device.h"
#include "server/metrics.h"

typedef struct {
    uint32_t slot, session_serial; // which session (slot in the server's table, and its serial)
    uint32_t stream_id, stream_serial;
    uint32_t seq;
    uint64_t frame_id, pair; // pair: frame id of the pair's A frame (pair mode)
    int32_t cls;             // class to draw, -1 for an unconditional model
    uint32_t policy_version; // of the user's policy the latent was drawn from
    int format, side;        // ProtoFormat; side -1 outside pair mode
    double t_submit;         // clock_now_s() at submission, for the batching deadline
} FrameRequest;

// One finished frame: the whole `frame` message, with pad bytes before it for libwebsockets.
typedef struct FrameOut {
    struct FrameOut *next;
    FrameRequest req;
    size_t len;   // bytes of the message at msg
    uint8_t *msg; // inside storage, after the pad
    uint8_t storage[];
} FrameOut;

typedef struct {
    int batch_max;         // largest batch
    double deadline_s;     // longest wait for a batch to fill after its first request
    size_t capacity;       // requests queued + frames alive at once (queued, drawn, being sent)
    size_t pad;            // bytes reserved before each message (LWS_PRE)
    uint64_t model_version;
    int warmup;            // run every batch size once before serving (builds oneDNN primitives)
    Device device;         // DEVICE_CUDA: draw on the GPU (a CUDA build); the CPU otherwise
} GenOptions;

typedef struct {
    Generator *g; // owned from gen_init
    GenOptions opt;
    int z_dim, w, h, c, classes;
    Metrics *metrics;
    uv_async_t *async; // signalled when frames are done
    pthread_mutex_t lock;
    pthread_cond_t cond;
    // request ring (capacity): reqs and their latents req_z (capacity, Z)
    FrameRequest *reqs;
    float *req_z;
    size_t head, count;
    // frame pool
    uint8_t *pool_mem;
    FrameOut *free_list;
    size_t slot_size, n_free;
    FrameOut *done_head, *done_tail;
    int running; // frames in the batch being drawn now
    Generator *pending;       // a hot swap waiting for the next batch (gen_swap)
    uint64_t pending_version;
    uint64_t swaps;
    int stop, started, locks_ready;
    pthread_t thread;
    // generation-thread scratch
    float *zb;           // (batch_max, Z)
    int32_t *yb;         // (batch_max)
    FrameRequest *batch; // (batch_max)
    FrameOut **outs;     // (batch_max)
    int n_scratch;       // per-OpenMP-thread encode scratch
    uint8_t **scratch;   // [n_scratch] (scratch_size)
    size_t scratch_size;
    int on_gpu;          // batches are drawn by gc (the device copy of g)
#ifdef STEER_CUDA
    GeneratorCuda gc;
#endif
} Gen;

// Takes ownership of g (a loaded generator with max_B >= opt.batch_max). Allocates everything.
// Returns 0, or -1 with err set (g is then still the caller's).
int gen_init(Gen *gen, Generator *g, const GenOptions *opt, Metrics *metrics, uv_async_t *async,
             char *err, size_t errlen);
// Hot swap: the generation thread draws with g (owned from now on; same shapes as the served one,
// loaded and checked by the caller) from its next batch on, stamping frames with version; the
// batch in progress finishes on the old generator, which is then freed.
void gen_swap(Gen *gen, Generator *g, uint64_t version);
// Starts the generation thread. Returns 0 or -1.
int gen_start(Gen *gen);
// Queues one request with its latent z (Z floats). Returns 0, or -1 if the ring is full (the
// caller's accounting keeps that from happening).
int gen_submit(Gen *gen, const FrameRequest *req, const float *z);
// Removes queued requests of a session (stream_id UINT32_MAX: all its streams). Returns how many.
// Requests already in a batch still come back through gen_take_done.
size_t gen_cancel(Gen *gen, uint32_t slot, uint32_t session_serial, uint32_t stream_id);
// Takes every finished frame (a list through next), oldest first; NULL if none.
FrameOut *gen_take_done(Gen *gen);
// Returns a frame to the pool.
void gen_release(Gen *gen, FrameOut *f);
// Requests waiting, and frames being drawn now.
size_t gen_queue_depth(Gen *gen);
int gen_running(Gen *gen);
// Lets the thread finish what is queued, then joins it; frames it finished last wait in the done
// list for gen_take_done (no further async signal). Safe on a half-built or never-started Gen.
void gen_stop(Gen *gen);
// Frees everything, the generator too. Call after gen_stop.
void gen_free(Gen *gen);

#endif
