// steer_client.c — the C client of `steer serve` and its load generator.
//
// One program, two uses. Without --connections it is a command-line client: it connects, says
// hello, opens one stream, keeps a window of credit outstanding until N frames arrived (saving them
// under --out), stops the stream, closes cleanly and prints frames/s, latency percentiles and
// bytes. With --connections N it is a load generator: N WebSocket connections in this one process,
// each with one stream, either closed-loop (a window of credit, one frame re-granted per frame
// received) or open-loop (one credit every 1/F s per connection, the window capping what is
// outstanding), some of them optionally stalled readers that grant a large credit and stop reading.
// Both are one engine: a single-stream run is a run of one connection that ends after N frames
// instead of after a duration.
//
// It speaks steer.v1 (docs/protocol.md) through libwebsockets on a libuv loop of its own (epoll:
// a wake-up costs what is ready, not a poll() over all N sockets), with msgpack-c for every
// message, and checks what the server sends: the stream id is ours, seq grows by one, no frame
// arrives without credit, `stopped.sent` equals the frames received, a frame's size and format
// match what it says. Each breach counts as an error and makes the exit status non-zero.
// It deliberately does not decode PNGs (the load generator shares the CPU with the server it
// measures: per frame it parses one msgpack map and reads the clock) and does not speak TLS.
//
// Latency is the time from writing the credit that paid for a frame to receiving that frame.
// Credit is spent first-in first-out on a stream, so each connection keeps a ring of the send
// times of its granted-but-unpaid credit and a frame pops the oldest.
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>

#include <libwebsockets.h>
#include <msgpack.h>
#include <uv.h>

#define CLIENT_PROTOCOL "steer.v1"
#define CLIENT_STREAM_ID 1        // each connection opens one stream, always this id
#define CLIENT_TICK_MS 10         // the run's clock: deadlines, ramp and end checks
#define CLIENT_CREDIT_TICK_MS 2   // open loop: how often due credits are granted
#define CLIENT_CREDIT_GAP_S 0.001 // at most one credit message per ms per connection
#define CLIENT_RAMP_PENDING 64    // handshakes in flight at once while ramping up
#define CLIENT_RAMP_PER_TICK 32   // connections started per tick at most (3200/s)
#define CLIENT_RX_MAX (64u << 20) // largest server message we reassemble
#define CLIENT_TX_MAX 512         // largest message we send (hello with a 256-byte token)
#define CLIENT_STALL_CREDIT 1024  // credit a stalled reader grants (capped by max_credit)
#define CLIENT_PRINT_MAX 10       // load mode: problems printed before we only count them
#define CLIENT_MAX_CONNECTIONS 100000

// ---------------------------------------------------------------------------------------------
// Options

typedef struct {
    const char *url;
    const char *user;
    const char *token;
    const char *mode;   // "gallery" | "walk" | "pair"
    const char *format; // "png" | "raw8"
    const char *out;    // directory for frames (single-stream mode only)
    long cls;           // -1: the server draws a random class
    int has_seed;
    unsigned long long seed;
    long frames;      // single-stream mode: frames to receive
    long window;      // credit kept outstanding
    double timeout_s; // single: whole run; load: ramp and drain each
    int quiet;
    int json;
    // load generator; connections == 0 means single-stream mode
    long connections;
    double duration_s;
    double warmup_s;
    double fps; // 0: closed loop
    long stall;
} Options;

// ---------------------------------------------------------------------------------------------
// Connections and the run

typedef enum {
    CONN_IDLE,
    CONN_CONNECTING,
    CONN_OPEN,
    CONN_CLOSING,
    CONN_CLOSED,
    CONN_FAILED
} ConnState;

struct Run;

typedef struct {
    struct Run *run;
    struct lws *wsi; // set and cleared by lws through ccinfo.pwsi
    int index;
    ConnState state;
    int stalled;
    int peer_closed; // the server sent a close frame
    // what the next writeable callback sends, in this order of priority
    int want_close, want_hello, want_stream, want_stop;
    uint32_t credit_pending; // frames to grant in the next credit message
    double credit_sent_last; // when the last credit message went out (s)
    // the stream
    int welcomed, stream_open, stopping, stopped;
    uint32_t window;     // effective window (clamped to the server's max_credit)
    uint64_t target;     // single-stream mode: frames to grant and receive in all
    uint64_t granted;    // frames granted so far (stream n + every credit n)
    uint64_t received;   // frames received
    uint64_t next_seq;   // the seq the next frame must carry
    uint64_t measured;   // frames counted in the measurement window
    int pair_side;       // pair mode: the side the next frame must have
    double *credit_sent; // [ring_cap] send times (s) of granted-but-unpaid credit, FIFO
    uint32_t ring_cap, ring_head, ring_count;
    // open-loop pacing
    int paced;
    double pace_next; // when the next credit is due (s)
    // reassembly of one server message; grows to the largest message seen
    unsigned char *rx;
    size_t rx_len, rx_cap;
    int rx_text; // the message being received is a text message (reported, not parsed)
} Conn;

typedef enum { PHASE_RAMP, PHASE_RUN, PHASE_DRAIN, PHASE_DONE } Phase;

typedef struct {
    double *ms; // [cap] one latency per measured frame
    size_t count, cap;
} Latencies;

typedef struct Run {
    Options opt;
    int single; // single-stream mode
    // parsed URL
    char url_buf[512];
    const char *address;
    int port;
    char path[512];
    uv_loop_t loop; // owned by the run; lws joins it as a foreign loop
    int loop_ready; // loop and timers initialised (run_free closes them)
    struct lws_context *context;
    uv_timer_t tick;           // the run's clock, every CLIENT_TICK_MS
    uv_timer_t credit_tick;    // one-shot, armed while credit is due or waiting
    msgpack_unpacked unpacked; // reused for every message; its zone is freed per message
    Conn *conns;               // [total]
    int total, launched, connecting, connected, failed, finished;
    Phase phase;
    int interrupted_seen;
    // times, seconds on the monotonic clock
    double t_start, t_ramp_done, t_measure_start, t_end, t_drain_deadline;
    double t_stream_sent, t_last_frame; // single-stream mode
    // what the server said in its first welcome
    int have_welcome;
    char model_name[64];
    uint64_t model_version, session;
    char user[72];
    long width, height, channels, classes;
    uint64_t max_credit;
    // results
    Latencies lat;
    uint64_t frames, bytes;   // measured, non-stalled
    uint64_t stalled_frames;  // received by stalled readers before the end
    uint64_t errors;          // everything that should not have happened, in all
    uint64_t violations;      // of which: the server broke the protocol
    uint64_t server_errors;   // of which: `error` messages
    uint64_t dropped;         // of which: open connections the server closed
    uint64_t stalled_dropped; // stalled readers the server closed (not an error)
    uint64_t credit_skipped;  // open loop: ticks skipped because the window was full
    int printed;              // problems printed so far (load mode caps it)
    int timed_out;
} Run;

static volatile sig_atomic_t client_interrupted;

static void client_on_signal(int sig) {
    (void)sig;
    client_interrupted = 1;
}

static double client_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// Prints one problem, in load mode only the first CLIENT_PRINT_MAX of them (the rest are counted).
static void run_report(Run *run, const Conn *conn, const char *fmt, ...) {
    if (!run->single && run->printed >= CLIENT_PRINT_MAX)
        return;
    run->printed++;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (run->single || !conn)
        fprintf(stderr, "steer-client: %s\n", msg);
    else
        fprintf(stderr, "steer-client: connection %d: %s\n", conn->index, msg);
    if (!run->single && run->printed == CLIENT_PRINT_MAX)
        fprintf(stderr, "steer-client: (further problems are counted, not printed)\n");
}

// The server broke the protocol: counted as an error, the connection goes on.
static void conn_violation(Conn *conn, const char *fmt, ...) {
    Run *run = conn->run;
    run->violations++;
    run->errors++;
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    run_report(run, conn, "protocol violation: %s", msg);
}

static void conn_want_write(Conn *conn) {
    if (conn->wsi && (conn->state == CONN_OPEN))
        lws_callback_on_writable(conn->wsi);
}

// The ring of credit send times. Capacity is the window, which outstanding credit never exceeds.
static void conn_ring_push(Conn *conn, double t, uint32_t n) {
    for (uint32_t i = 0; i < n && conn->ring_count < conn->ring_cap; i++) {
        conn->credit_sent[(conn->ring_head + conn->ring_count) % conn->ring_cap] = t;
        conn->ring_count++;
    }
}

static int conn_ring_pop(Conn *conn, double *t) {
    if (conn->ring_count == 0)
        return -1;
    *t = conn->credit_sent[conn->ring_head];
    conn->ring_head = (conn->ring_head + 1) % conn->ring_cap;
    conn->ring_count--;
    return 0;
}

static int latencies_add(Latencies *lat, double ms) {
    if (lat->count == lat->cap) {
        size_t cap = lat->cap ? 2 * lat->cap : 65536;
        double *ms_new = realloc(lat->ms, cap * sizeof *ms_new);
        if (!ms_new)
            return -1;
        lat->ms = ms_new;
        lat->cap = cap;
    }
    lat->ms[lat->count++] = ms;
    return 0;
}

static int compare_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

// Nearest-rank percentile p in (0, 1] of sorted values v[n]; NAN when there are none.
static double percentile(const double *v, size_t n, double p) {
    if (n == 0)
        return NAN;
    size_t rank = (size_t)ceil(p * (double)n);
    if (rank < 1)
        rank = 1;
    return v[rank - 1];
}

// ---------------------------------------------------------------------------------------------
// Sending. Outgoing messages are packed with msgpack-c straight behind lws' LWS_PRE headroom.

typedef struct {
    unsigned char *data; // [cap]
    size_t len, cap;
    int overflow;
} TxBuf;

static int txbuf_write(void *data, const char *buf, size_t len) {
    TxBuf *tx = data;
    if (tx->len + len > tx->cap) {
        tx->overflow = 1;
        return -1;
    }
    memcpy(tx->data + tx->len, buf, len);
    tx->len += len;
    return 0;
}

static void pack_str(msgpack_packer *pk, const char *s) {
    size_t len = strlen(s);
    msgpack_pack_str(pk, len);
    msgpack_pack_str_body(pk, s, len);
}

static void pack_hello(msgpack_packer *pk, const Options *opt) {
    msgpack_pack_map(pk, 1 + (opt->user != NULL) + (opt->token != NULL));
    pack_str(pk, "t");
    pack_str(pk, "hello");
    if (opt->user) {
        pack_str(pk, "user");
        pack_str(pk, opt->user);
    }
    if (opt->token) {
        pack_str(pk, "token");
        pack_str(pk, opt->token);
    }
}

static void pack_stream(msgpack_packer *pk, const Options *opt, int index, uint32_t n) {
    int has_class = opt->cls >= 0;
    msgpack_pack_map(pk, 4 + (n > 0) + has_class + opt->has_seed);
    pack_str(pk, "t");
    pack_str(pk, "stream");
    pack_str(pk, "id");
    msgpack_pack_uint32(pk, CLIENT_STREAM_ID);
    pack_str(pk, "mode");
    pack_str(pk, opt->mode);
    pack_str(pk, "format");
    pack_str(pk, opt->format);
    if (n > 0) {
        pack_str(pk, "n");
        msgpack_pack_uint32(pk, n);
    }
    if (has_class) {
        pack_str(pk, "class");
        msgpack_pack_int64(pk, opt->cls);
    }
    if (opt->has_seed) {
        // Each connection of a load run draws its own frames: seed + index.
        pack_str(pk, "seed");
        msgpack_pack_uint64(pk, (opt->seed + (unsigned long long)index) & ((1ull << 53) - 1));
    }
}

static void pack_id_message(msgpack_packer *pk, const char *type, uint32_t n) {
    msgpack_pack_map(pk, n ? 3 : 2);
    pack_str(pk, "t");
    pack_str(pk, type);
    pack_str(pk, "id");
    msgpack_pack_uint32(pk, CLIENT_STREAM_ID);
    if (n) {
        pack_str(pk, "n");
        msgpack_pack_uint32(pk, n);
    }
}

// Starts open-loop pacing: one credit every 1/fps s, each connection with its own phase (a
// golden-ratio spread, so the connections' credits interleave evenly instead of in bursts).
static void conn_pace_start(Conn *conn, double now) {
    double period = 1.0 / conn->run->opt.fps;
    conn->pace_next = now + fmod(0.6180339887498949 * (double)conn->index, 1.0) * period;
    conn->paced = 1;
}

static void conn_pace_stop(Conn *conn) { conn->paced = 0; }

static void run_credit_tick(uv_timer_t *timer);
static int conn_write_next(Conn *conn);

// Whether conn may send its pending credit now: it has some, the stream is open and not stopping,
// no control message is queued before it and the last credit message is CLIENT_CREDIT_GAP_S old.
static int conn_credit_ready(const Conn *conn, double now) {
    return conn->state == CONN_OPEN && conn->stream_open && !conn->stopping &&
           conn->credit_pending > 0 && !conn->want_close && !conn->want_hello &&
           !conn->want_stream && !conn->want_stop &&
           now - conn->credit_sent_last >= CLIENT_CREDIT_GAP_S;
}

static void run_credit_tick_arm(Run *run, uint64_t ms) {
    if (uv_is_active((uv_handle_t *)&run->credit_tick))
        return;
    uv_timer_start(&run->credit_tick, run_credit_tick, ms, 0);
}

// Sends conn's pending credit. Credit is written straight from where it arose (a frame received,
// the pace tick) when the socket takes it: waiting for a writeable callback would cost one more
// wake-up and two epoll_ctl calls (POLLOUT on, then off) per credit, that is per frame received.
// At most one credit message per CLIENT_CREDIT_GAP_S per connection (the server allows 2000
// messages/s); credit that accrues in between goes out coalesced from the credit tick.
static void conn_credit_flush(Conn *conn) {
    Run *run = conn->run;
    if (conn->state != CONN_OPEN || !conn->wsi || conn->credit_pending == 0)
        return;
    if (conn->want_close || conn->want_hello || conn->want_stream || conn->want_stop) {
        lws_callback_on_writable(conn->wsi); // the writeable callback sends those first
        return;
    }
    if (!conn_credit_ready(conn, client_now_s())) {
        if (conn->stream_open && !conn->stopping)
            run_credit_tick_arm(run, 1);
        return;
    }
    if (lws_send_pipe_choked(conn->wsi)) {
        lws_callback_on_writable(conn->wsi);
        return;
    }
    if (conn_write_next(conn) < 0) // a failed write: have lws close the connection
        lws_set_timeout(conn->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
}

// Writes the most urgent pending message. Returns -1 to have lws close the connection.
static int conn_write_next(Conn *conn) {
    Run *run = conn->run;
    const Options *opt = &run->opt;
    if (conn->state != CONN_OPEN)
        return 0;
    if (conn->want_close) {
        conn->want_close = 0;
        conn->state = CONN_CLOSING;
        conn_pace_stop(conn);
        lws_close_reason(conn->wsi, LWS_CLOSE_STATUS_NORMAL, (unsigned char *)"bye", 3);
        return -1;
    }
    unsigned char buf[LWS_PRE + CLIENT_TX_MAX];
    TxBuf tx = {buf + LWS_PRE, 0, CLIENT_TX_MAX, 0};
    msgpack_packer pk;
    msgpack_packer_init(&pk, &tx, txbuf_write);
    uint32_t stamps = 0; // credit this message grants
    int opened = 0;      // this message is the stream message
    int credit = 0;      // this message is a credit message
    if (conn->want_hello) {
        conn->want_hello = 0;
        pack_hello(&pk, opt);
    } else if (conn->want_stream) {
        conn->want_stream = 0;
        uint32_t n;
        if (conn->stalled)
            n = (uint32_t)(run->max_credit < CLIENT_STALL_CREDIT ? run->max_credit
                                                                 : CLIENT_STALL_CREDIT);
        else if (opt->fps > 0)
            n = 0;
        else if (run->single)
            n = (uint32_t)(conn->target < conn->window ? conn->target : conn->window);
        else
            n = conn->window;
        pack_stream(&pk, opt, conn->index, n);
        opened = 1;
        conn->stream_open = 1;
        conn->granted += n;
        stamps = n;
    } else if (conn->want_stop) {
        conn->want_stop = 0;
        pack_id_message(&pk, "stop", 0);
    } else if (conn_credit_ready(conn, client_now_s())) {
        stamps = conn->credit_pending;
        conn->credit_pending = 0;
        pack_id_message(&pk, "credit", stamps);
        conn->granted += stamps;
        credit = 1;
    } else {
        return 0;
    }
    if (tx.overflow) {
        run_report(run, conn, "message to send is larger than %d bytes", CLIENT_TX_MAX);
        run->errors++;
        return -1;
    }
    int written = lws_write(conn->wsi, tx.data, tx.len, LWS_WRITE_BINARY);
    if (written < (int)tx.len) {
        run_report(run, conn, "write failed");
        run->errors++;
        return -1;
    }
    double now = client_now_s();
    if (stamps > 0 && !conn->stalled)
        conn_ring_push(conn, now, stamps);
    if (credit)
        conn->credit_sent_last = now;
    if (conn->stream_open && run->t_stream_sent == 0)
        run->t_stream_sent = now;
    if (opened && conn->stalled) {
        // The stalled reader: credit granted, now stop reading until the run ends.
        lws_rx_flow_control(conn->wsi, 0 | LWS_RXFLOW_REASON_FLAG_PROCESS_NOW);
    } else if (opened && opt->fps > 0) {
        conn_pace_start(conn, now);
    }
    if (conn->want_close || conn->want_hello || conn->want_stream || conn->want_stop)
        lws_callback_on_writable(conn->wsi);
    else
        conn_credit_flush(conn);
    return 0;
}

// Open loop: grants the credits that fell due since the last tick; both loops: sends credit that
// waited for CLIENT_CREDIT_GAP_S. One timer for all connections, not one each: every wake-up is
// a system call, and 1000 timers a few ms apart would wake the loop for each. Due times keep each
// connection's phase; a credit is late by at most CLIENT_CREDIT_TICK_MS, and latency is measured
// from when it was written.
static void run_credit_tick(uv_timer_t *timer) {
    Run *run = timer->data;
    if (run->phase == PHASE_DONE)
        return;
    double period = run->opt.fps > 0 ? 1.0 / run->opt.fps : 0;
    double now = client_now_s();
    int measuring = now >= run->t_measure_start && now < run->t_end;
    for (int i = 0; i < run->launched; i++) {
        Conn *conn = &run->conns[i];
        if (conn->state != CONN_OPEN || conn->stopping)
            continue;
        if (conn->paced) {
            if (conn->pace_next < now - 4 * period)
                conn->pace_next = now; // far behind: no burst
            for (; conn->pace_next <= now; conn->pace_next += period) {
                uint64_t promised = conn->granted + conn->credit_pending;
                uint64_t outstanding = promised > conn->received ? promised - conn->received : 0;
                if (outstanding < conn->window)
                    conn->credit_pending++;
                else if (measuring)
                    run->credit_skipped++;
            }
        }
        conn_credit_flush(conn);
    }
    if (run->opt.fps > 0)
        run_credit_tick_arm(run, CLIENT_CREDIT_TICK_MS);
}

// ---------------------------------------------------------------------------------------------
// Receiving

static const msgpack_object *map_get(const msgpack_object *map, const char *key) {
    size_t len = strlen(key);
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == len &&
            memcmp(k->via.str.ptr, key, len) == 0)
            return &map->via.map.ptr[i].val;
    }
    return NULL;
}

// A non-negative integer field; -1 when missing or of another type.
static int map_get_uint(const msgpack_object *map, const char *key, uint64_t *out) {
    const msgpack_object *v = map_get(map, key);
    if (!v || v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return -1;
    *out = v->via.u64;
    return 0;
}

static int map_get_int(const msgpack_object *map, const char *key, int64_t *out) {
    const msgpack_object *v = map_get(map, key);
    if (!v)
        return -1;
    if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER && v->via.u64 <= INT64_MAX)
        *out = (int64_t)v->via.u64;
    else if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        *out = v->via.i64;
    else
        return -1;
    return 0;
}

// A string field copied into out[cap] (truncated); -1 when missing or not a string.
static int map_get_str(const msgpack_object *map, const char *key, char *out, size_t cap) {
    const msgpack_object *v = map_get(map, key);
    if (!v || v->type != MSGPACK_OBJECT_STR)
        return -1;
    size_t len = v->via.str.size < cap - 1 ? v->via.str.size : cap - 1;
    memcpy(out, v->via.str.ptr, len);
    out[len] = '\0';
    return 0;
}

static int str_is(const msgpack_object *v, const char *s) {
    size_t len = strlen(s);
    return v && v->type == MSGPACK_OBJECT_STR && v->via.str.size == len &&
           memcmp(v->via.str.ptr, s, len) == 0;
}

static void conn_handle_welcome(Conn *conn, const msgpack_object *msg) {
    Run *run = conn->run;
    if (conn->welcomed) {
        conn_violation(conn, "a second welcome");
        return;
    }
    conn->welcomed = 1;
    if (!str_is(map_get(msg, "protocol"), CLIENT_PROTOCOL))
        conn_violation(conn, "welcome without protocol \"" CLIENT_PROTOCOL "\"");
    const msgpack_object *model = map_get(msg, "model");
    const msgpack_object *limits = map_get(msg, "limits");
    uint64_t max_credit = 1024;
    if (!model || model->type != MSGPACK_OBJECT_MAP || !limits ||
        limits->type != MSGPACK_OBJECT_MAP || map_get_uint(limits, "max_credit", &max_credit) ||
        max_credit == 0) {
        conn_violation(conn, "welcome without a model map or limits.max_credit");
        if (max_credit == 0)
            max_credit = 1;
    }
    if (!run->have_welcome) {
        run->have_welcome = 1;
        run->max_credit = max_credit;
        int64_t v;
        if (model && model->type == MSGPACK_OBJECT_MAP) {
            map_get_str(model, "name", run->model_name, sizeof run->model_name);
            map_get_uint(model, "version", &run->model_version);
            if (!map_get_int(model, "width", &v))
                run->width = (long)v;
            if (!map_get_int(model, "height", &v))
                run->height = (long)v;
            if (!map_get_int(model, "channels", &v))
                run->channels = (long)v;
            if (!map_get_int(model, "classes", &v))
                run->classes = (long)v;
        }
        map_get_uint(msg, "session", &run->session);
        map_get_str(msg, "user", run->user, sizeof run->user);
        if ((uint64_t)run->opt.window > max_credit)
            fprintf(stderr,
                    "steer-client: --window %ld is more than the server's max_credit %llu; "
                    "using %llu\n",
                    run->opt.window, (unsigned long long)max_credit,
                    (unsigned long long)max_credit);
        if (run->single && !run->opt.quiet && !run->opt.json)
            printf("connected: session %llu, user %s, model %s v%llu %ldx%ldx%ld, %ld classes\n",
                   (unsigned long long)run->session, run->user, run->model_name,
                   (unsigned long long)run->model_version, run->width, run->height, run->channels,
                   run->classes);
    }
    if (conn->window > max_credit)
        conn->window = (uint32_t)max_credit;
    if (run->phase >= PHASE_DRAIN) {
        conn->want_close = 1; // the run ended before this connection got going
    } else {
        conn->want_stream = 1;
    }
    conn_want_write(conn);
}

// Writes a frame as DIR/frame-<seq>.png, or .pgm/.ppm for raw8. Returns 0 or -1 after saying why.
static int frame_save(Run *run, uint64_t seq, int png, int64_t w, int64_t h, int64_t c,
                      const char *data, size_t len) {
    char path[1024];
    const char *ext = png ? "png" : (c == 1 ? "pgm" : "ppm");
    snprintf(path, sizeof path, "%s/frame-%llu.%s", run->opt.out, (unsigned long long)seq, ext);
    FILE *f = fopen(path, "wb");
    if (!f) {
        run_report(run, NULL, "cannot write %s: %s", path, strerror(errno));
        return -1;
    }
    int ok = 1;
    if (!png)
        ok =
            fprintf(f, "P%c\n%lld %lld\n255\n", c == 1 ? '5' : '6', (long long)w, (long long)h) > 0;
    ok = ok && fwrite(data, 1, len, f) == len;
    ok = (fclose(f) == 0) && ok;
    if (!ok) {
        run_report(run, NULL, "cannot write %s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

static void conn_handle_frame(Conn *conn, const msgpack_object *msg, size_t msg_len, double now) {
    Run *run = conn->run;
    const Options *opt = &run->opt;
    uint64_t stream = 0, seq = 0, frame_id = 0;
    if (!conn->stream_open || conn->stopped) {
        conn_violation(conn, "a frame while no stream is open");
        return;
    }
    if (map_get_uint(msg, "stream", &stream) || stream != CLIENT_STREAM_ID) {
        conn_violation(conn, "a frame for stream %llu, ours is %d", (unsigned long long)stream,
                       CLIENT_STREAM_ID);
        return;
    }
    if (map_get_uint(msg, "seq", &seq))
        conn_violation(conn, "a frame without seq");
    else if (seq != conn->next_seq)
        conn_violation(conn, "frame seq %llu, expected %llu", (unsigned long long)seq,
                       (unsigned long long)conn->next_seq);
    conn->next_seq = seq + 1;
    conn->received++;
    if (conn->received > conn->granted)
        conn_violation(conn, "frame %llu of the stream but only %llu granted",
                       (unsigned long long)conn->received, (unsigned long long)conn->granted);
    if (map_get_uint(msg, "frame", &frame_id) || frame_id >= (1ull << 53))
        conn_violation(conn, "frame seq %llu: missing or out-of-range frame id",
                       (unsigned long long)seq);

    // Shape, format and data.
    int64_t w = 0, h = 0, c = 0, cls = -1;
    const msgpack_object *data = map_get(msg, "data");
    const msgpack_object *format = map_get(msg, "format");
    int png = strcmp(opt->format, "png") == 0;
    int ok = !map_get_int(msg, "w", &w) && !map_get_int(msg, "h", &h) &&
             !map_get_int(msg, "c", &c) && w > 0 && h > 0 && w <= 65536 && h <= 65536 &&
             (c == 1 || c == 3) && data && data->type == MSGPACK_OBJECT_BIN;
    if (!ok) {
        conn_violation(conn, "frame seq %llu: bad w/h/c or data", (unsigned long long)seq);
    } else if (!str_is(format, opt->format)) {
        conn_violation(conn, "frame seq %llu: format is not %s", (unsigned long long)seq,
                       opt->format);
        ok = 0;
    } else if (png &&
               (data->via.bin.size < 8 || memcmp(data->via.bin.ptr, "\x89PNG\r\n\x1a\n", 8) != 0)) {
        conn_violation(conn, "frame seq %llu: data is not a PNG", (unsigned long long)seq);
        ok = 0;
    } else if (!png && (uint64_t)data->via.bin.size != (uint64_t)(w * h * c)) {
        conn_violation(conn, "frame seq %llu: raw8 data has %u bytes, w*h*c is %lld",
                       (unsigned long long)seq, data->via.bin.size, (long long)(w * h * c));
        ok = 0;
    }
    if (map_get_int(msg, "class", &cls))
        conn_violation(conn, "frame seq %llu: no class", (unsigned long long)seq);
    if (strcmp(opt->mode, "pair") == 0) {
        int64_t side = -1;
        uint64_t pair = 0;
        if (map_get_int(msg, "side", &side) || map_get_uint(msg, "pair", &pair) ||
            side != conn->pair_side)
            conn_violation(conn, "pair frame seq %llu: side %lld, expected %d",
                           (unsigned long long)seq, (long long)side, conn->pair_side);
        conn->pair_side = !conn->pair_side;
    }

    // Latency and the counters.
    double sent_at = 0;
    int has_latency = !conn->stalled && conn_ring_pop(conn, &sent_at) == 0;
    double ms = has_latency ? 1e3 * (now - sent_at) : NAN;
    if (conn->stalled) {
        if (run->phase < PHASE_DRAIN)
            run->stalled_frames++;
    } else if (run->single || (now >= run->t_measure_start && now <= run->t_end)) {
        conn->measured++;
        run->frames++;
        run->bytes += msg_len;
        if (has_latency && latencies_add(&run->lat, ms)) {
            run_report(run, conn, "out of memory for latencies");
            run->errors++;
        }
    }
    if (run->single) {
        run->t_last_frame = now;
        if (!opt->quiet && !opt->json)
            printf("frame seq %llu: id %llu, class %lld, %lldx%lldx%lld %s, %zu bytes, %.2f ms\n",
                   (unsigned long long)seq, (unsigned long long)frame_id, (long long)cls,
                   (long long)w, (long long)h, (long long)c, opt->format, msg_len, ms);
        if (opt->out && ok &&
            frame_save(run, seq, png, w, h, c, data->via.bin.ptr, data->via.bin.size))
            run->errors++;
    }

    // Re-grant: closed loop keeps the window full; single-stream mode never grants past target.
    if (conn->stalled || conn->stopping)
        return;
    if (run->single) {
        if (conn->received >= conn->target) {
            conn->stopping = 1;
            conn->want_stop = 1;
            conn_want_write(conn);
        } else if (conn->granted + conn->credit_pending < conn->target) {
            conn->credit_pending++;
            conn_credit_flush(conn);
        }
    } else if (opt->fps <= 0) {
        conn->credit_pending++;
        conn_credit_flush(conn);
    }
}

static void conn_handle_message(Conn *conn, const unsigned char *buf, size_t len, double now) {
    Run *run = conn->run;
    size_t off = 0;
    msgpack_unpack_return ret = msgpack_unpack_next(&run->unpacked, (const char *)buf, len, &off);
    if (ret != MSGPACK_UNPACK_SUCCESS || off != len) {
        conn_violation(conn, "a message that is not exactly one msgpack object (%zu bytes)", len);
        return;
    }
    const msgpack_object *msg = &run->unpacked.data;
    if (msg->type != MSGPACK_OBJECT_MAP) {
        conn_violation(conn, "a message that is not a map");
        return;
    }
    const msgpack_object *t = map_get(msg, "t");
    if (!t || t->type != MSGPACK_OBJECT_STR) {
        conn_violation(conn, "a message without a string t");
        return;
    }
    if (str_is(t, "frame")) {
        conn_handle_frame(conn, msg, len, now);
    } else if (str_is(t, "welcome")) {
        conn_handle_welcome(conn, msg);
    } else if (str_is(t, "stopped")) {
        uint64_t id = 0, sent = 0;
        if (map_get_uint(msg, "id", &id) || id != CLIENT_STREAM_ID || !conn->stream_open) {
            conn_violation(conn, "stopped for stream %llu, which we did not open",
                           (unsigned long long)id);
            return;
        }
        if (!conn->stopping)
            conn_violation(conn, "stopped though we sent no stop");
        if (map_get_uint(msg, "sent", &sent) || sent != conn->received)
            conn_violation(conn, "stopped says %llu frames were sent, we received %llu",
                           (unsigned long long)sent, (unsigned long long)conn->received);
        conn->stopped = 1;
        conn->stream_open = 0;
        conn->want_close = 1;
        conn_want_write(conn);
    } else if (str_is(t, "error")) {
        char code[64] = "?", text[256] = "";
        int64_t ref = -1;
        map_get_str(msg, "code", code, sizeof code);
        map_get_str(msg, "msg", text, sizeof text);
        map_get_int(msg, "ref", &ref);
        run->server_errors++;
        run->errors++;
        run_report(run, conn, "server error %s: %s", code, text);
        if (run->single) { // fatal in single-stream mode: close and report
            conn->stopping = 1;
            conn->want_close = 1;
            conn_want_write(conn);
        }
    }
    // Other types (future server messages) are ignored, as the protocol asks.
}

// ---------------------------------------------------------------------------------------------
// Connection life cycle

static void run_check_done(Run *run);

// Marks conn finished once: failed to connect, or closed after having been open.
static void conn_finish(Conn *conn, ConnState state) {
    Run *run = conn->run;
    if (conn->state == CONN_CLOSED || conn->state == CONN_FAILED || conn->state == CONN_IDLE)
        return;
    if (run->phase == PHASE_DONE) { // torn down by lws_context_destroy: already accounted for
        conn->state = state;
        return;
    }
    if (conn->state == CONN_CONNECTING) {
        run->connecting--;
        state = CONN_FAILED;
        run->failed++;
    } else if (conn->state == CONN_OPEN) {
        // Closed while we still wanted it: the server (or the network) ended it.
        if (conn->stalled) {
            run->stalled_dropped++;
        } else {
            run->dropped++;
            run->errors++;
            if (!conn->peer_closed)
                run_report(run, conn, "connection closed without a close frame");
        }
    }
    conn_pace_stop(conn);
    conn->state = state;
    run->finished++;
    run_check_done(run);
}

static int client_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                           size_t len) {
    (void)user;
    Conn *conn = lws_get_opaque_user_data(wsi);
    if (!conn)
        return 0;
    Run *run = conn->run;
    if (run->phase == PHASE_DONE && reason == LWS_CALLBACK_CLIENT_RECEIVE)
        return 0; // results are in
    switch (reason) {
    case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
        if (conn->state == CONN_CONNECTING)
            run_report(run, conn, run->single ? "cannot connect to %s: %s" : "connect to %s: %s",
                       run->opt.url, in ? (const char *)in : "connection failed");
        conn_finish(conn, CONN_FAILED);
        break;
    case LWS_CALLBACK_CLIENT_ESTABLISHED:
        run->connecting--;
        run->connected++;
        conn->state = CONN_OPEN;
        conn->want_hello = 1;
        lws_callback_on_writable(wsi);
        break;
    case LWS_CALLBACK_CLIENT_RECEIVE: {
        if (lws_is_first_fragment(wsi)) {
            conn->rx_len = 0;
            conn->rx_text = !lws_frame_is_binary(wsi);
            if (conn->rx_text)
                conn_violation(conn, "a text message");
        }
        if (conn->rx_len + len > CLIENT_RX_MAX) {
            conn_violation(conn, "a message larger than %u bytes", CLIENT_RX_MAX);
            return -1;
        }
        if (conn->rx_len + len > conn->rx_cap) {
            size_t cap = conn->rx_cap ? conn->rx_cap : 4096;
            while (cap < conn->rx_len + len)
                cap *= 2;
            unsigned char *rx = realloc(conn->rx, cap);
            if (!rx) {
                run_report(run, conn, "out of memory for a %zu-byte message", cap);
                run->errors++;
                return -1;
            }
            conn->rx = rx;
            conn->rx_cap = cap;
        }
        memcpy(conn->rx + conn->rx_len, in, len);
        conn->rx_len += len;
        if (lws_is_final_fragment(wsi)) {
            if (!conn->rx_text)
                conn_handle_message(conn, conn->rx, conn->rx_len, client_now_s());
            conn->rx_len = 0;
        }
        break;
    }
    case LWS_CALLBACK_CLIENT_WRITEABLE:
        return conn_write_next(conn);
    case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE: {
        int code = len >= 2 ? (((const unsigned char *)in)[0] << 8) | ((const unsigned char *)in)[1]
                            : 1005;
        conn->peer_closed = 1;
        if (conn->state == CONN_OPEN && !conn->stalled) {
            int reason_len = len > 2 ? (int)(len - 2) : 0;
            run_report(run, conn, "the server closed the connection with %d %.*s", code,
                       reason_len > 120 ? 120 : reason_len, (const char *)in + 2);
        }
        break;
    }
    case LWS_CALLBACK_CLIENT_CLOSED:
        conn_finish(conn, CONN_CLOSED);
        break;
    case LWS_CALLBACK_WSI_DESTROY:
        // Catch-all: whatever path freed the wsi, the connection is over.
        conn_finish(conn, conn->state == CONN_CONNECTING ? CONN_FAILED : CONN_CLOSED);
        break;
    default:
        break;
    }
    return 0;
}

static const struct lws_protocols client_protocols[] = {
    {CLIENT_PROTOCOL, client_callback, 0, 16384, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

static void conn_launch(Run *run, Conn *conn) {
    struct lws_client_connect_info cc;
    memset(&cc, 0, sizeof cc);
    cc.context = run->context;
    cc.address = run->address;
    cc.port = run->port;
    cc.path = run->path;
    cc.host = run->address;
    cc.protocol = CLIENT_PROTOCOL;
    cc.local_protocol_name = CLIENT_PROTOCOL;
    cc.ietf_version_or_minus_one = -1;
    cc.opaque_user_data = conn;
    cc.pwsi = &conn->wsi;
    conn->state = CONN_CONNECTING;
    run->launched++;
    run->connecting++;
    if (!lws_client_connect_via_info(&cc) && conn->state == CONN_CONNECTING) {
        // Failed before any callback: lws did not report it, so we do.
        run_report(run, conn, "cannot connect to %s", run->opt.url);
        conn_finish(conn, CONN_FAILED);
    }
}

// ---------------------------------------------------------------------------------------------
// The run's clock: ramp, measurement window, drain, deadlines

static void run_begin_drain(Run *run, double now) {
    run->phase = PHASE_DRAIN;
    run->t_drain_deadline = now + run->opt.timeout_s;
    for (int i = 0; i < run->launched; i++) {
        Conn *conn = &run->conns[i];
        if (conn->state != CONN_OPEN)
            continue;
        conn_pace_stop(conn);
        if (conn->stalled)
            lws_rx_flow_control(conn->wsi, 1 | LWS_RXFLOW_REASON_FLAG_PROCESS_NOW);
        if (conn->stream_open && !conn->stopping) {
            conn->stopping = 1;
            conn->want_stop = 1;
        } else if (!conn->stream_open && !conn->stopping) {
            conn->want_close = 1; // no welcome yet, or the stream was already stopped
        }
        conn_want_write(conn);
    }
    run_check_done(run);
}

static void run_check_done(Run *run) {
    if (run->phase == PHASE_DONE)
        return;
    int all_finished = run->finished == run->launched;
    if (run->single && all_finished) {
        run->phase = PHASE_DONE;
    } else if (run->phase == PHASE_DRAIN && all_finished) {
        run->phase = PHASE_DONE;
    } else if (!run->single && run->launched == run->total && all_finished) {
        // Every connection ended before the run did (failed or dropped): nothing to wait for.
        double now = client_now_s();
        if (now < run->t_end)
            run->t_end = now;
        run->phase = PHASE_DONE;
    }
}

static void run_tick(uv_timer_t *timer) {
    Run *run = timer->data;
    double now = client_now_s();
    if (run->phase == PHASE_DONE)
        return;
    if (client_interrupted && !run->interrupted_seen) {
        run->interrupted_seen = 1;
        if (run->phase == PHASE_RAMP)
            run->t_ramp_done = now;
        if (now < run->t_end)
            run->t_end = now;
        if (now < run->t_measure_start)
            run->t_measure_start = now;
        run_begin_drain(run, now);
    }
    if (run->phase == PHASE_RAMP) {
        for (int started = 0; run->launched < run->total && run->connecting < CLIENT_RAMP_PENDING &&
                              started < CLIENT_RAMP_PER_TICK;
             started++)
            conn_launch(run, &run->conns[run->launched]);
        int ramp_over = run->launched == run->total && run->connecting == 0;
        if (ramp_over || now - run->t_start > run->opt.timeout_s) {
            run->t_ramp_done = now;
            if (!run->single) {
                run->t_measure_start = now + run->opt.warmup_s;
                run->t_end = now + run->opt.duration_s;
            }
            run->phase = PHASE_RUN;
        }
    }
    if (run->single && run->phase < PHASE_DONE && now - run->t_start > run->opt.timeout_s) {
        Conn *conn = &run->conns[0];
        run->timed_out = 1;
        run->errors++;
        run_report(run, NULL, "timed out after %g s (%llu of %ld frames)", run->opt.timeout_s,
                   (unsigned long long)conn->received, run->opt.frames);
        run->phase = PHASE_DONE;
        return;
    }
    if (!run->single && run->phase == PHASE_RUN && now >= run->t_end)
        run_begin_drain(run, now);
    if (!run->single && run->phase == PHASE_DRAIN && now > run->t_drain_deadline) {
        int left = run->launched - run->finished;
        run->errors += (uint64_t)left;
        run_report(run, NULL, "%d connections did not close within %g s of the end", left,
                   run->opt.timeout_s);
        run->phase = PHASE_DONE;
        return;
    }
    run_check_done(run);
    if (run->phase != PHASE_DONE)
        uv_timer_start(&run->tick, run_tick, CLIENT_TICK_MS, 0);
}

// ---------------------------------------------------------------------------------------------
// Set-up, results, main

static void usage(FILE *f) {
    fprintf(
        f,
        "usage: steer-client [--url ws://127.0.0.1:8080/ws] [--user NAME] [--token T]\n"
        "                    [--mode gallery|walk|pair] [--format png|raw8] [--class K]\n"
        "                    [--seed S] [--frames 16] [--window 4] [--out DIR] [--timeout 30]\n"
        "                    [--quiet] [--json]\n"
        "       steer-client --connections N --duration S [--window W] [--fps F] [--stall K]\n"
        "                    [--warmup 1] [--json] [--url ...] [--mode ...] [--format ...]\n"
        "\n"
        "Single-stream mode: opens one stream, keeps --window credits outstanding until\n"
        "--frames frames arrived (saved as DIR/frame-<seq>.png, .pgm or .ppm with --out),\n"
        "stops it and prints frames/s, p50/p99 latency and bytes (pair mode rounds --frames\n"
        "up to whole pairs).\n"
        "Load mode (--connections): N connections, one stream each, for --duration seconds;\n"
        "closed loop (window W, one credit per frame) or, with --fps F, one credit every 1/F s\n"
        "(W caps what is outstanding). --stall K makes K connections grant %d credits and stop\n"
        "reading; they are left out of the statistics. Statistics cover the duration after\n"
        "--warmup. --url also takes the http:// address `steer serve` prints.\n"
        "--quiet prints only the summary line; --json prints one JSON line instead\n"
        "(connections, stalled, duration_s, frames, fps, p50_ms, p99_ms, max_ms, bytes,\n"
        "errors, connected, failed_connections and details). Latency: from writing the\n"
        "credit that paid for a frame to receiving it. --timeout S bounds the whole run in\n"
        "single-stream mode, the ramp-up and the close after --duration in load mode.\n"
        "--seed S fixes the stream's latents (load mode: S + connection index).\n"
        "Exit status: 0 success, 1 any error (connection, server error, protocol violation,\n"
        "timeout), 2 usage error.\n",
        CLIENT_STALL_CREDIT);
}

static int parse_long(const char *s, long lo, long hi, const char *opt, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "steer-client: %s wants a whole number in [%ld, %ld], got '%s'\n", opt, lo,
                hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_double(const char *s, double lo, double hi, const char *opt, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) {
        fprintf(stderr, "steer-client: %s wants a number in [%g, %g], got '%s'\n", opt, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

// Parses argv into opt. Returns 0, 1 after --help, or -1 after printing a usage error.
static int options_parse(Options *opt, int argc, char **argv) {
    enum {
        O_URL = 256,
        O_USER,
        O_TOKEN,
        O_MODE,
        O_FORMAT,
        O_CLASS,
        O_SEED,
        O_FRAMES,
        O_WINDOW,
        O_OUT,
        O_QUIET,
        O_JSON,
        O_TIMEOUT,
        O_CONNECTIONS,
        O_DURATION,
        O_WARMUP,
        O_FPS,
        O_STALL,
        O_HELP
    };
    static const struct option longopts[] = {
        {"url", required_argument, NULL, O_URL},
        {"user", required_argument, NULL, O_USER},
        {"token", required_argument, NULL, O_TOKEN},
        {"mode", required_argument, NULL, O_MODE},
        {"format", required_argument, NULL, O_FORMAT},
        {"class", required_argument, NULL, O_CLASS},
        {"seed", required_argument, NULL, O_SEED},
        {"frames", required_argument, NULL, O_FRAMES},
        {"window", required_argument, NULL, O_WINDOW},
        {"out", required_argument, NULL, O_OUT},
        {"quiet", no_argument, NULL, O_QUIET},
        {"json", no_argument, NULL, O_JSON},
        {"timeout", required_argument, NULL, O_TIMEOUT},
        {"connections", required_argument, NULL, O_CONNECTIONS},
        {"duration", required_argument, NULL, O_DURATION},
        {"warmup", required_argument, NULL, O_WARMUP},
        {"fps", required_argument, NULL, O_FPS},
        {"stall", required_argument, NULL, O_STALL},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    *opt = (Options){.url = "ws://127.0.0.1:8080/ws",
                     .mode = "gallery",
                     .format = "png",
                     .cls = -1,
                     .frames = 16,
                     .window = 4,
                     .timeout_s = 30,
                     .warmup_s = 1};
    int has_duration = 0, has_load_opt = 0, has_single_opt = 0;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        int bad = 0;
        long v;
        switch (c) {
        case O_URL:
            opt->url = optarg;
            break;
        case O_USER:
            opt->user = optarg;
            bad = strlen(optarg) < 1 || strlen(optarg) > 64;
            if (bad)
                fprintf(stderr, "steer-client: --user wants 1..64 characters\n");
            break;
        case O_TOKEN:
            opt->token = optarg;
            bad = strlen(optarg) > 256;
            if (bad)
                fprintf(stderr, "steer-client: --token is longer than 256 bytes\n");
            break;
        case O_MODE:
            opt->mode = optarg;
            bad = strcmp(optarg, "gallery") && strcmp(optarg, "walk") && strcmp(optarg, "pair");
            if (bad)
                fprintf(stderr, "steer-client: --mode is gallery, walk or pair\n");
            break;
        case O_FORMAT:
            opt->format = optarg;
            bad = strcmp(optarg, "png") && strcmp(optarg, "raw8");
            if (bad)
                fprintf(stderr, "steer-client: --format is png or raw8\n");
            break;
        case O_CLASS:
            bad = parse_long(optarg, -1, 1000000, "--class", &opt->cls);
            break;
        case O_SEED: {
            char *end;
            errno = 0;
            opt->seed = strtoull(optarg, &end, 10);
            bad = errno || end == optarg || *end || optarg[0] == '-' || opt->seed >= (1ull << 53);
            if (bad)
                fprintf(stderr, "steer-client: --seed wants a whole number below 2^53\n");
            opt->has_seed = 1;
            break;
        }
        case O_FRAMES:
            bad = parse_long(optarg, 1, 1000000000, "--frames", &opt->frames);
            has_single_opt = 1;
            break;
        case O_WINDOW:
            bad = parse_long(optarg, 1, 65536, "--window", &opt->window);
            break;
        case O_OUT:
            opt->out = optarg;
            has_single_opt = 1;
            break;
        case O_QUIET:
            opt->quiet = 1;
            break;
        case O_JSON:
            opt->json = 1;
            break;
        case O_TIMEOUT:
            bad = parse_double(optarg, 0.001, 1e6, "--timeout", &opt->timeout_s);
            break;
        case O_CONNECTIONS:
            bad = parse_long(optarg, 1, CLIENT_MAX_CONNECTIONS, "--connections", &v);
            opt->connections = v;
            break;
        case O_DURATION:
            bad = parse_double(optarg, 0.001, 1e6, "--duration", &opt->duration_s);
            has_duration = 1;
            break;
        case O_WARMUP:
            bad = parse_double(optarg, 0, 1e6, "--warmup", &opt->warmup_s);
            has_load_opt = 1;
            break;
        case O_FPS:
            bad = parse_double(optarg, 0.001, 1000, "--fps", &opt->fps);
            has_load_opt = 1;
            break;
        case O_STALL:
            bad = parse_long(optarg, 0, CLIENT_MAX_CONNECTIONS, "--stall", &opt->stall);
            has_load_opt = 1;
            break;
        case O_HELP:
            usage(stdout);
            return 1;
        default:
            fprintf(stderr, "steer-client: unknown option or missing value: %s\n",
                    argv[optind - 1]);
            bad = 1;
        }
        if (bad)
            return -1;
    }
    if (optind < argc) {
        fprintf(stderr, "steer-client: unexpected argument '%s'\n", argv[optind]);
        return -1;
    }
    if (opt->connections == 0 && (has_duration || has_load_opt)) {
        fprintf(stderr,
                "steer-client: --duration, --warmup, --fps and --stall need --connections\n");
        return -1;
    }
    if (opt->connections > 0) {
        if (!has_duration) {
            fprintf(stderr, "steer-client: --connections needs --duration\n");
            return -1;
        }
        if (has_single_opt) {
            fprintf(stderr, "steer-client: --frames and --out are for single-stream mode\n");
            return -1;
        }
        if (opt->stall >= opt->connections) {
            fprintf(stderr, "steer-client: --stall must be less than --connections\n");
            return -1;
        }
        if (opt->warmup_s >= opt->duration_s) {
            fprintf(stderr, "steer-client: --warmup (%g s) must be shorter than --duration\n",
                    opt->warmup_s);
            return -1;
        }
    }
    if (strcmp(opt->mode, "pair") == 0 && opt->window < 2) {
        // Pair mode spends credit two frames at a time: a window of 1 would never be served.
        fprintf(stderr, "steer-client: pair mode needs --window 2 or more\n");
        return -1;
    }
    return 0;
}

// Splits opt->url into address, port and path. Accepts ws:// and the http:// address the server
// prints (whose path "/" becomes "/ws"). Returns 0 or -1 after printing why.
static int run_parse_url(Run *run) {
    snprintf(run->url_buf, sizeof run->url_buf, "%s", run->opt.url);
    const char *prot = NULL, *address = NULL, *path = NULL;
    int port = 0;
    if (strlen(run->opt.url) >= sizeof run->url_buf ||
        lws_parse_uri(run->url_buf, &prot, &address, &port, &path) || !address[0]) {
        fprintf(stderr, "steer-client: cannot parse --url '%s'\n", run->opt.url);
        return -1;
    }
    int http = strcmp(prot, "http") == 0;
    if (strcmp(prot, "ws") != 0 && !http) {
        fprintf(stderr, "steer-client: --url must be ws://HOST:PORT/PATH (no TLS), got '%s'\n",
                run->opt.url);
        return -1;
    }
    run->address = address;
    run->port = port;
    if (path[0] == '/')
        path++; // lws_parse_uri gives "/" for an empty path, else drops the '/'
    snprintf(run->path, sizeof run->path, "/%s", http && !path[0] ? "ws" : path);
    return 0;
}

// Makes room for `need` descriptors. Returns 0 or -1 after printing why.
static int raise_fd_limit(rlim_t need) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl))
        return 0;
    if (rl.rlim_cur >= need)
        return 0;
    if (rl.rlim_max < need)
        rl.rlim_max = need; // works as root; otherwise fails below
    rl.rlim_cur = need;
    if (setrlimit(RLIMIT_NOFILE, &rl)) {
        getrlimit(RLIMIT_NOFILE, &rl);
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) || rl.rlim_cur < need) {
            fprintf(stderr, "steer-client: need %llu file descriptors, the limit is %llu\n",
                    (unsigned long long)need, (unsigned long long)rl.rlim_cur);
            return -1;
        }
    }
    return 0;
}

static void json_number(const char *key, double v, int last) {
    if (isnan(v))
        printf("\"%s\":null%s", key, last ? "" : ",");
    else
        printf("\"%s\":%.3f%s", key, v, last ? "" : ",");
}

static void run_print(Run *run) {
    const Options *opt = &run->opt;
    if (run->lat.count > 0)
        qsort(run->lat.ms, run->lat.count, sizeof *run->lat.ms, compare_double);
    double p50 = percentile(run->lat.ms, run->lat.count, 0.50);
    double p99 = percentile(run->lat.ms, run->lat.count, 0.99);
    double max = percentile(run->lat.ms, run->lat.count, 1.0);
    double window;
    uint64_t min_conn_frames = 0;
    if (run->single) {
        window =
            run->t_last_frame > run->t_stream_sent ? run->t_last_frame - run->t_stream_sent : 0;
    } else {
        window = run->t_end - run->t_measure_start;
        if (window < 0)
            window = 0;
        int first = 1;
        for (int i = 0; i < run->total; i++) {
            const Conn *conn = &run->conns[i];
            if (conn->stalled)
                continue;
            if (first || conn->measured < min_conn_frames)
                min_conn_frames = conn->measured;
            first = 0;
        }
    }
    double fps = window > 0 ? (double)run->frames / window : 0;
    if (opt->json) {
        printf("{\"connections\":%d,\"stalled\":%ld,", run->total, opt->stall);
        json_number("duration_s", window, 0);
        printf("\"frames\":%llu,", (unsigned long long)run->frames);
        json_number("fps", fps, 0);
        json_number("p50_ms", p50, 0);
        json_number("p99_ms", p99, 0);
        json_number("max_ms", max, 0);
        printf("\"bytes\":%llu,\"errors\":%llu,\"connected\":%d,\"failed_connections\":%d,",
               (unsigned long long)run->bytes, (unsigned long long)run->errors, run->connected,
               run->failed);
        printf("\"violations\":%llu,\"server_errors\":%llu,\"dropped\":%llu,",
               (unsigned long long)run->violations, (unsigned long long)run->server_errors,
               (unsigned long long)run->dropped);
        printf("\"stalled_frames\":%llu,\"stalled_dropped\":%llu,\"min_conn_frames\":%llu,",
               (unsigned long long)run->stalled_frames, (unsigned long long)run->stalled_dropped,
               (unsigned long long)min_conn_frames);
        printf("\"window\":%ld,", opt->window);
        json_number("target_fps", opt->fps, 0);
        printf("\"credit_skipped\":%llu,", (unsigned long long)run->credit_skipped);
        json_number("warmup_s", run->single ? 0 : opt->warmup_s, 0);
        json_number("ramp_s", run->t_ramp_done - run->t_start, 1);
        printf("}\n");
    } else if (run->single) {
        printf("%llu frames in %.3f s: %.1f frames/s, latency p50 %.2f ms p99 %.2f ms max %.2f ms, "
               "%llu bytes, %llu errors\n",
               (unsigned long long)run->frames, window, fps, p50, p99, max,
               (unsigned long long)run->bytes, (unsigned long long)run->errors);
    } else {
        printf("connections %d: %d connected, %d failed, %ld stalled (%llu frames, %llu dropped)\n",
               run->total, run->connected, run->failed, opt->stall,
               (unsigned long long)run->stalled_frames, (unsigned long long)run->stalled_dropped);
        printf("%.2f s after %.2f s warm-up (ramp %.2f s): %llu frames, %.1f frames/s, "
               "%llu bytes, fewest per connection %llu\n",
               window, opt->warmup_s, run->t_ramp_done - run->t_start,
               (unsigned long long)run->frames, fps, (unsigned long long)run->bytes,
               (unsigned long long)min_conn_frames);
        printf("latency p50 %.2f ms, p99 %.2f ms, max %.2f ms (%s, window %ld", p50, p99, max,
               opt->fps > 0 ? "open loop" : "closed loop", opt->window);
        if (opt->fps > 0)
            printf(", %.1f credits/s per connection, %llu skipped", opt->fps,
                   (unsigned long long)run->credit_skipped);
        printf(")\nerrors %llu (protocol violations %llu, server errors %llu, dropped %llu)\n",
               (unsigned long long)run->errors, (unsigned long long)run->violations,
               (unsigned long long)run->server_errors, (unsigned long long)run->dropped);
    }
    fflush(stdout);
}

// Frees everything run_init built; safe on a half-built run. Destroying the context only starts
// closing lws' handles on our loop; running the loop until nothing is left finishes that (the last
// connection callbacks still see run->conns) and lets uv_loop_close succeed. Returns 0, or -1
// after printing why when the loop still had open handles.
static int run_free(Run *run) {
    int rc = 0;
    if (run->context)
        lws_context_destroy(run->context);
    run->context = NULL;
    if (run->loop_ready) {
        uv_close((uv_handle_t *)&run->tick, NULL);
        uv_close((uv_handle_t *)&run->credit_tick, NULL);
        uv_run(&run->loop, UV_RUN_DEFAULT);
        if (uv_loop_close(&run->loop)) {
            fprintf(stderr, "steer-client: the event loop still had open handles at exit\n");
            rc = -1;
        }
        run->loop_ready = 0;
    }
    if (run->conns) {
        for (int i = 0; i < run->total; i++) {
            free(run->conns[i].credit_sent);
            free(run->conns[i].rx);
        }
    }
    free(run->conns);
    run->conns = NULL;
    free(run->lat.ms);
    run->lat.ms = NULL;
    msgpack_unpacked_destroy(&run->unpacked);
    return rc;
}

// Builds the connections, the loop with its timers and the lws context on it. Returns 0, or -1
// after printing why.
static int run_init(Run *run) {
    const Options *opt = &run->opt;
    msgpack_unpacked_init(&run->unpacked);
    run->single = opt->connections == 0;
    run->total = run->single ? 1 : (int)opt->connections;
    run->max_credit = 1024;
    if (run_parse_url(run))
        return -1;
    if (opt->out && mkdir(opt->out, 0777) && errno != EEXIST) {
        fprintf(stderr, "steer-client: cannot create %s: %s\n", opt->out, strerror(errno));
        return -1;
    }
    rlim_t need = (rlim_t)run->total + 64;
    if (raise_fd_limit(need))
        return -1;
    run->conns = calloc((size_t)run->total, sizeof *run->conns);
    if (!run->conns)
        goto fail_oom;
    uint64_t target = (uint64_t)opt->frames;
    if (strcmp(opt->mode, "pair") == 0)
        target += target & 1; // pairs arrive whole
    for (int i = 0; i < run->total; i++) {
        Conn *conn = &run->conns[i];
        conn->run = run;
        conn->index = i;
        // The stalled readers are spread among the others, not the first K to connect.
        conn->stalled = opt->stall > 0 && (long)(((long long)(i + 1) * opt->stall) / run->total) !=
                                              (long)(((long long)i * opt->stall) / run->total);
        conn->window = (uint32_t)opt->window;
        conn->target = target;
        conn->ring_cap = conn->window;
        if (!conn->stalled) {
            conn->credit_sent = malloc(conn->ring_cap * sizeof *conn->credit_sent);
            if (!conn->credit_sent)
                goto fail_oom;
        }
    }
    int err = uv_loop_init(&run->loop);
    if (err) {
        fprintf(stderr, "steer-client: cannot create the event loop: %s\n", uv_strerror(err));
        return -1;
    }
    uv_timer_init(&run->loop, &run->tick);
    uv_timer_init(&run->loop, &run->credit_tick);
    run->tick.data = run->credit_tick.data = run;
    run->loop_ready = 1;
    lws_set_log_level(LLL_ERR, NULL);
    void *foreign[1] = {&run->loop};
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.options = LWS_SERVER_OPTION_LIBUV;
    info.foreign_loops = foreign;
    info.port = CONTEXT_PORT_NO_LISTEN;
    info.protocols = client_protocols;
    info.gid = -1;
    info.uid = -1;
    info.fd_limit_per_thread = (unsigned int)need;
    run->context = lws_create_context(&info);
    if (!run->context) {
        fprintf(stderr, "steer-client: cannot create the libwebsockets context\n");
        return -1;
    }
    return 0;
fail_oom:
    fprintf(stderr, "steer-client: out of memory for %d connections\n", run->total);
    return -1;
}

int main(int argc, char **argv) {
    static Run run; // large and one per process
    int rc = options_parse(&run.opt, argc, argv);
    if (rc) {
        if (rc < 0)
            fprintf(stderr, "steer-client: see steer-client --help\n");
        return rc < 0 ? 2 : 0;
    }
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = client_on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    if (run_init(&run)) {
        run_free(&run);
        return 1;
    }
    run.t_start = client_now_s();
    run.t_measure_start = run.t_end = INFINITY; // set when the ramp is over
    run.phase = PHASE_RAMP;
    run_tick(&run.tick); // launches the first connections and arms the tick
    if (run.opt.fps > 0)
        run_credit_tick_arm(&run, CLIENT_CREDIT_TICK_MS);
    // One loop iteration at a time: the run ends when a callback sets PHASE_DONE, whatever lws
    // still has open; run_free closes that. The tick is always armed until then, so an empty
    // loop before the end is a fault, not a finished run.
    while (run.phase != PHASE_DONE) {
        if (uv_run(&run.loop, UV_RUN_ONCE) == 0 && run.phase != PHASE_DONE) {
            fprintf(stderr, "steer-client: the event loop ran out of work before the run ended\n");
            run.errors++;
            break;
        }
    }
    if (run.t_ramp_done == 0)
        run.t_ramp_done = client_now_s(); // everything ended while ramping
    if (!run.single && isinf(run.t_end))
        run.t_end = client_now_s();
    if (isinf(run.t_measure_start))
        run.t_measure_start = run.t_end;
    int ok = run.errors == 0 && run.failed == 0;
    if (run.single)
        ok = ok && run.conns[0].received >= run.conns[0].target && run.conns[0].stopped;
    if (run.single && run.failed == 0 && !ok && run.errors == 0)
        fprintf(stderr, "steer-client: the connection ended after %llu of %llu frames\n",
                (unsigned long long)run.conns[0].received, (unsigned long long)run.conns[0].target);
    if (!run.single || run.opt.json || run.frames > 0)
        run_print(&run);
    if (run_free(&run))
        ok = 0;
    return ok ? 0 : 1;
}
