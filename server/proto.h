// proto.h — the steer.v1 wire protocol (docs/protocol.md): client messages checked and decoded from
// msgpack into a plain struct, server messages packed with msgpack-c into caller-owned buffers.
// No sockets, no sessions, no threads here: pure functions of bytes, so the fuzz tests drive them.
#ifndef SERVER_PROTO_H
#define SERVER_PROTO_H
#include <jansson.h>
#include <msgpack.h>
#include <stddef.h>
#include <stdint.h>

#define PROTO_NAME "steer.v1"
#define PROTO_MAX_DEPTH 32     // deepest nesting a client message may have
#define PROTO_USER_MAX 64      // bytes of a user name
#define PROTO_TOKEN_MAX 256    // bytes of a token
#define PROTO_MAX_FPS 240.0
#define PROTO_FEEDBACK_MAX_FRAMES 16 // frames one feedback may name (choose: `among`)
#define PROTO_FEEDBACK_ID_MAX 64     // bytes of a feedback id

// Error codes of `error` messages; proto_code_name gives the wire string. 0 is success.
#define PROTO_CODES(X)                                                                             \
    X(PROTO_EBAD_MESSAGE, "bad_message")                                                           \
    X(PROTO_EBAD_TYPE, "bad_type")                                                                 \
    X(PROTO_EUNKNOWN_TYPE, "unknown_type")                                                         \
    X(PROTO_EBAD_FIELD, "bad_field")                                                               \
    X(PROTO_ENO_HELLO, "no_hello")                                                                 \
    X(PROTO_EALREADY_HELLO, "already_hello")                                                       \
    X(PROTO_EUNAUTHORIZED, "unauthorized")                                                         \
    X(PROTO_EUNKNOWN_STREAM, "unknown_stream")                                                     \
    X(PROTO_ESTREAM_EXISTS, "stream_exists")                                                       \
    X(PROTO_ETOO_MANY_STREAMS, "too_many_streams")                                                 \
    X(PROTO_ECREDIT_OVERFLOW, "credit_overflow")                                                   \
    X(PROTO_ENOT_IMPLEMENTED, "not_implemented")                                                   \
    X(PROTO_ESHUTTING_DOWN, "shutting_down")                                                       \
    X(PROTO_EINTERNAL, "internal")                                                                 \
    X(PROTO_EUNKNOWN_FRAME, "unknown_frame")
enum {
    PROTO_OK = 0,
#define PROTO_ENUM_(name, str) name,
    PROTO_CODES(PROTO_ENUM_)
#undef PROTO_ENUM_
        PROTO_NCODES
};
const char *proto_code_name(int code);

typedef enum { PROTO_HELLO, PROTO_STREAM, PROTO_CREDIT, PROTO_STOP, PROTO_FEEDBACK, PROTO_JOB } ProtoType;
typedef enum { PROTO_MODE_GALLERY, PROTO_MODE_WALK, PROTO_MODE_PAIR } ProtoMode;
typedef enum { PROTO_FEEDBACK_RATE, PROTO_FEEDBACK_PAIR, PROTO_FEEDBACK_CHOOSE } ProtoFeedbackKind;
typedef enum { PROTO_FORMAT_PNG, PROTO_FORMAT_RAW8 } ProtoFormat;
typedef enum {
    PROTO_JOB_SUBMIT, PROTO_JOB_LIST, PROTO_JOB_CANCEL, PROTO_JOB_PAUSE, PROTO_JOB_RESUME,
    PROTO_JOB_MODELS, PROTO_JOB_ROLLBACK, PROTO_JOB_PROMOTE
} ProtoJobOp;
#define PROTO_JOB_SPEC_MAX 8192 // bytes of a job spec as JSON
const char *proto_mode_name(int mode);
const char *proto_format_name(int format);

// The ranges decoding checks against (the server's limits and the model's shape).
typedef struct {
    uint32_t max_credit; // largest n of credit / stream
    int classes;         // 0: unconditional, so `class` must be -1
} ProtoLimits;

// One decoded client message. Fields not carried by its type keep their defaults.
typedef struct {
    ProtoType type;
    int has_token, has_user, has_seed;
    char token[PROTO_TOKEN_MAX + 1];
    char user[PROTO_USER_MAX + 1];
    uint32_t id;     // stream / credit / stop
    uint32_t n;      // stream: initial credit; credit: frames granted
    int mode;        // ProtoMode
    int format;      // ProtoFormat
    int cls;         // -1: random
    double fps;      // 0: unpaced
    double step;     // walk step
    uint64_t seed;
    // feedback: the client's idempotency key (a string, or an integer kept as its decimal text),
    // the kind, and the frames it names: rate [rated]; pair [winner, loser]; choose [chosen, the
    // others among]
    char fb_id[PROTO_FEEDBACK_ID_MAX + 1];
    int fb_id_is_int, fb_kind, fb_tie, fb_n;
    double fb_value;
    uint64_t fb_frames[PROTO_FEEDBACK_MAX_FRAMES];
    // job (admin): op, the job id (cancel, pause, resume), the model version (rollback; 0 = the
    // served version's parent), and a submit's spec map as JSON text
    int job_op; // ProtoJobOp
    int64_t job_id, job_version;
    char job_spec[PROTO_JOB_SPEC_MAX];
} ProtoMsg;

// Checks that buf (len) holds exactly one well-formed msgpack object whose every declared length and
// count fits in the bytes that remain and whose nesting is at most PROTO_MAX_DEPTH, without
// allocating. msgpack-c's unpacker reserves memory from declared counts, so this runs first.
// Returns 0 or PROTO_EBAD_MESSAGE with err saying what is wrong and where.
int proto_scan(const uint8_t *buf, size_t len, char *err, size_t errlen);

// Decodes one client message into m. Returns 0, or a PROTO_E* code with err (a sentence for the
// client) and *ref set to the stream id the message named (or -1). Never trusts buf's lengths.
int proto_decode(ProtoMsg *m, const uint8_t *buf, size_t len, const ProtoLimits *lim, char *err,
                 size_t errlen, int64_t *ref);

// A bounded output buffer for packing; overflow is sticky and reported by the pack functions.
typedef struct {
    uint8_t *data;
    size_t cap, len;
    int overflow;
} ProtoBuf;

typedef struct {
    uint64_t version;
    const char *name;
    int width, height, channels, z_dim, classes;
} ProtoModelInfo;

typedef struct {
    uint32_t max_message, max_streams, max_credit, queue_frames, history;
} ProtoServerLimits;

// Each packs one server message into out (appending). Returns 0, or -1 if it did not fit.
int proto_pack_welcome(ProtoBuf *out, uint64_t session, const char *user, const ProtoModelInfo *model,
                       const ProtoServerLimits *lim);
int proto_pack_error(ProtoBuf *out, int code, const char *msg, int64_t ref);
int proto_pack_stopped(ProtoBuf *out, uint32_t id, uint64_t sent);
// ack {id}: id as the client sent it (an integer when is_int, else the string).
int proto_pack_ack(ProtoBuf *out, const char *id, int is_int);

// The fields of a frame message; data follows as bin of data_len bytes.
typedef struct {
    uint32_t stream, seq;
    uint64_t frame, model_version, policy_version, pair;
    int cls, w, h, c, format, side; // side: -1 outside pair mode
} ProtoFrame;
// Packs a frame message whose payload is data (data_len bytes).
int proto_pack_frame(ProtoBuf *out, const ProtoFrame *f, const uint8_t *data, size_t data_len);
// `policy`: how the user's learning goes (docs/protocol.md). accuracy NaN is sent as nil.
typedef struct {
    uint64_t version, feedback, comparisons;
    double accuracy, kl;
    const float *probs; // class_probs, n_probs of them (0: left out)
    int n_probs;
} ProtoPolicy;
int proto_pack_policy(ProtoBuf *out, const ProtoPolicy *p);
// `job` (admin): one job's state; op names what it answers ("submit", "cancel", ... or "update"
// for a change the server reports on its own).
typedef struct {
    long id, step, steps, model_version;
    const char *state, *message;
    double loss_d, loss_g, images_per_s, fd, parent_fd; // NaN: nil
    long resolution; // progressive growing: the resolution trained at (0: not progressive: nil)
    double alpha;    // and its fade-in (NaN: nil)
} ProtoJob;
// message is cut at PROTO_JOB_MESSAGE_MAX bytes so that the reply fits a session's reply slot.
#define PROTO_JOB_MESSAGE_MAX 300
int proto_pack_job(ProtoBuf *out, const char *op, const ProtoJob *j);
// The end of a listing: {t: "job", op, count, served} (op "list" after the jobs, "models" after
// the model versions; served: the version served now).
int proto_pack_job_end(ProtoBuf *out, const char *op, long count, long served);
typedef struct {
    long version, parent, job;
    const char *path, *sha256;
    double fd;
} ProtoModelEntry;
// One registry entry: {t: "job", op: "model", model: {version, parent, job, path, sha256, fd}}.
int proto_pack_model_entry(ProtoBuf *out, const ProtoModelEntry *m);
// `model {version}`: every session is told the served model changed; frames from now on carry it.
int proto_pack_model(ProtoBuf *out, uint64_t version);
// A msgpack object as a new jansson value (maps need string keys; floats must be finite), or NULL.
// For tools that print messages as JSON, and for job specs.
json_t *proto_json_of(const msgpack_object *o);
// Bytes proto_pack_frame needs at most besides the payload.
#define PROTO_FRAME_HEADER_MAX 256

#endif
