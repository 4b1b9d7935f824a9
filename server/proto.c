// proto.c — steer.v1 messages: a bounds-checking scan of the raw msgpack bytes, decoding of client
// messages with msgpack-c into ProtoMsg, and packing of server messages into fixed buffers.
// It is not a msgpack codec: msgpack-c decodes and encodes; proto_scan only walks the type bytes and
// declared lengths so that no declared count is believed before the bytes behind it exist
// (msgpack-c's unpacker reserves zone memory for a declared array/map count up front).
#include "server/proto.h"

#include <math.h>
#include <jansson.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/errmsg.h"

static const char *const proto_code_names[PROTO_NCODES] = {
    [PROTO_OK] = "ok",
#define PROTO_NAME_(name, str) [name] = str,
    PROTO_CODES(PROTO_NAME_)
#undef PROTO_NAME_
};

const char *proto_code_name(int code) {
    return (code >= 0 && code < PROTO_NCODES) ? proto_code_names[code] : "internal";
}

static const char *const mode_names[] = {"gallery", "walk", "pair"};
static const char *const format_names[] = {"png", "raw8"};
const char *proto_mode_name(int mode) { return (mode >= 0 && mode < 3) ? mode_names[mode] : "?"; }
const char *proto_format_name(int format) {
    return (format >= 0 && format < 2) ? format_names[format] : "?";
}

// Big-endian unsigned of n bytes at p.
static uint64_t be_read(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v = (v << 8) | p[i];
    return v;
}

int proto_scan(const uint8_t *buf, size_t len, char *err, size_t errlen) {
    uint64_t pending[PROTO_MAX_DEPTH + 1]; // objects still to read at each depth
    int depth = 0;
    size_t pos = 0;
    pending[0] = 1;
    while (depth >= 0) {
        if (pending[depth] == 0) {
            depth--;
            continue;
        }
        pending[depth]--;
        if (pos >= len)
            return errmsg_set(err, errlen, PROTO_EBAD_MESSAGE, "msgpack truncated at byte %zu", pos);
        size_t at = pos;
        uint8_t b = buf[pos++];
        int len_bytes = 0;   // bytes of a length field that follows the type byte
        uint64_t payload = 0; // bytes of payload after the length field
        uint64_t children = 0;
        int kind = 0; // 0 scalar, 1 raw (str/bin/ext: payload from length), 2 array, 3 map
        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
        } else if (b <= 0x8f) {
            children = (uint64_t)(b & 0x0f) * 2;
        } else if (b <= 0x9f) {
            children = b & 0x0f;
        } else if (b <= 0xbf) {
            payload = b & 0x1f;
        } else {
            switch (b) {
            case 0xc4: case 0xd9: len_bytes = 1; kind = 1; break;
            case 0xc5: case 0xda: len_bytes = 2; kind = 1; break;
            case 0xc6: case 0xdb: len_bytes = 4; kind = 1; break;
            case 0xc7: len_bytes = 1; kind = 1; payload = 1; break; // ext: type byte + data
            case 0xc8: len_bytes = 2; kind = 1; payload = 1; break;
            case 0xc9: len_bytes = 4; kind = 1; payload = 1; break;
            case 0xca: payload = 4; break;
            case 0xcb: payload = 8; break;
            case 0xcc: case 0xd0: payload = 1; break;
            case 0xcd: case 0xd1: payload = 2; break;
            case 0xce: case 0xd2: payload = 4; break;
            case 0xcf: case 0xd3: payload = 8; break;
            case 0xd4: payload = 2; break;
            case 0xd5: payload = 3; break;
            case 0xd6: payload = 5; break;
            case 0xd7: payload = 9; break;
            case 0xd8: payload = 17; break;
            case 0xdc: len_bytes = 2; kind = 2; break;
            case 0xdd: len_bytes = 4; kind = 2; break;
            case 0xde: len_bytes = 2; kind = 3; break;
            case 0xdf: len_bytes = 4; kind = 3; break;
            default:
                return errmsg_set(err, errlen, PROTO_EBAD_MESSAGE,
                            "byte 0x%02x at %zu is not a msgpack type", b, at);
            }
        }
        if ((size_t)len_bytes > len - pos)
            return errmsg_set(err, errlen, PROTO_EBAD_MESSAGE, "msgpack length field truncated at byte %zu",
                        at);
        if (len_bytes) {
            uint64_t n = be_read(buf + pos, len_bytes);
            pos += (size_t)len_bytes;
            if (kind == 1) payload += n;
            else if (kind == 2) children = n;
            else children = 2 * n;
        }
        size_t left = len - pos;
        if (payload > left)
            return errmsg_set(err, errlen, PROTO_EBAD_MESSAGE,
                        "object at byte %zu declares %llu bytes but only %zu remain", at,
                        (unsigned long long)payload, left);
        pos += (size_t)payload;
        if (children) {
            // Every element takes at least one byte, so a count past the bytes left is a lie.
            if (children > len - pos)
                return errmsg_set(err, errlen, PROTO_EBAD_MESSAGE,
                            "container at byte %zu declares %llu elements but only %zu bytes remain",
                            at, (unsigned long long)children, len - pos);
            if (depth + 1 > PROTO_MAX_DEPTH)
                return errmsg_set(err, errlen, PROTO_EBAD_MESSAGE, "nesting deeper than %d",
                            PROTO_MAX_DEPTH);
            pending[++depth] = children;
        }
    }
    if (pos != len)
        return errmsg_set(err, errlen, PROTO_EBAD_MESSAGE, "%zu bytes after the message", len - pos);
    return 0;
}

// ---- decoding -------------------------------------------------------------------------------

static const msgpack_object *map_get(const msgpack_object_map *map, const char *key) {
    size_t klen = strlen(key);
    for (uint32_t i = 0; i < map->size; i++) {
        const msgpack_object *k = &map->ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == klen &&
            memcmp(k->via.str.ptr, key, klen) == 0)
            return &map->ptr[i].val;
    }
    return NULL;
}

// Reads an integer field in [lo, hi]. Returns 0 (value set, or left alone when absent and not
// required) or PROTO_EBAD_FIELD.
static int get_int(const msgpack_object_map *map, const char *key, int required, int64_t lo,
                   int64_t hi, int64_t *out, char *err, size_t errlen) {
    const msgpack_object *o = map_get(map, key);
    if (!o) {
        if (required) return errmsg_set(err, errlen, PROTO_EBAD_FIELD, "field '%s' is required", key);
        return 0;
    }
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        if (o->via.u64 > (uint64_t)hi)
            return errmsg_set(err, errlen, PROTO_EBAD_FIELD, "field '%s' must be in [%lld, %lld]", key,
                        (long long)lo, (long long)hi);
        *out = (int64_t)o->via.u64;
    } else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        *out = o->via.i64;
    } else {
        return errmsg_set(err, errlen, PROTO_EBAD_FIELD, "field '%s' must be an integer", key);
    }
    if (*out < lo || *out > hi)
        return errmsg_set(err, errlen, PROTO_EBAD_FIELD, "field '%s' must be in [%lld, %lld]", key,
                    (long long)lo, (long long)hi);
    return 0;
}

static int get_float(const msgpack_object_map *map, const char *key, double lo, double hi,
                     double *out, char *err, size_t errlen) {
    const msgpack_object *o = map_get(map, key);
    if (!o) return 0;
    double v;
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) v = (double)o->via.u64;
    else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) v = (double)o->via.i64;
    else if (o->type == MSGPACK_OBJECT_FLOAT32 || o->type == MSGPACK_OBJECT_FLOAT64) v = o->via.f64;
    else return errmsg_set(err, errlen, PROTO_EBAD_FIELD, "field '%s' must be a number", key);
    if (!(v >= lo && v <= hi)) // also refuses NaN
        return errmsg_set(err, errlen, PROTO_EBAD_FIELD, "field '%s' must be in [%g, %g]", key, lo, hi);
    *out = v;
    return 0;
}

// Reads a string field into out (cap bytes incl. NUL). Returns 1 if present, 0 if absent, or
// -PROTO_EBAD_FIELD.
static int get_str(const msgpack_object_map *map, const char *key, char *out, size_t cap, char *err,
                   size_t errlen) {
    const msgpack_object *o = map_get(map, key);
    if (!o) return 0;
    if (o->type != MSGPACK_OBJECT_STR)
        return -errmsg_set(err, errlen, PROTO_EBAD_FIELD, "field '%s' must be a string", key);
    if (o->via.str.size >= cap)
        return -errmsg_set(err, errlen, PROTO_EBAD_FIELD, "field '%s' is longer than %zu bytes", key,
                     cap - 1);
    memcpy(out, o->via.str.ptr, o->via.str.size);
    out[o->via.str.size] = 0;
    return 1;
}

// Matches a string field against names; absent leaves *out alone.
static int get_enum(const msgpack_object_map *map, const char *key, const char *const *names,
                    int n, int *out, char *err, size_t errlen) {
    char s[16];
    int rc = get_str(map, key, s, sizeof s, err, errlen);
    if (rc < 0) {
        return errmsg_set(err, errlen, PROTO_EBAD_FIELD, "field '%s' must be one of the names listed in "
                    "docs/protocol.md", key);
    }
    if (rc == 0) return 0;
    for (int i = 0; i < n; i++)
        if (strcmp(s, names[i]) == 0) {
            *out = i;
            return 0;
        }
    return errmsg_set(err, errlen, PROTO_EBAD_FIELD, "field '%s' has an unknown value '%s'", key, s);
}

static int user_name_ok(const char *s) {
    if (!*s) return 0;
    for (; *s; s++) {
        char c = *s;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '@' || c == '-'))
            return 0;
    }
    return 1;
}

static const char *const feedback_kinds[] = {"rate", "pair", "choose"};

static const char *const job_ops[] = {"submit", "list", "cancel", "pause", "resume", "models",
                                      "rollback", "promote"};

json_t *proto_json_of(const msgpack_object *o) {
    switch (o->type) {
    case MSGPACK_OBJECT_NIL: return json_null();
    case MSGPACK_OBJECT_BOOLEAN: return json_boolean(o->via.boolean);
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        return o->via.u64 > INT64_MAX ? NULL : json_integer((json_int_t)o->via.u64);
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: return json_integer((json_int_t)o->via.i64);
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: return isfinite(o->via.f64) ? json_real(o->via.f64) : NULL;
    case MSGPACK_OBJECT_STR: return json_stringn(o->via.str.ptr, o->via.str.size);
    case MSGPACK_OBJECT_ARRAY: {
        json_t *a = json_array();
        for (uint32_t i = 0; a && i < o->via.array.size; i++) {
            json_t *v = proto_json_of(&o->via.array.ptr[i]);
            if (!v || json_array_append_new(a, v)) {
                json_decref(a);
                return NULL;
            }
        }
        return a;
    }
    case MSGPACK_OBJECT_MAP: {
        json_t *m = json_object();
        for (uint32_t i = 0; m && i < o->via.map.size; i++) {
            const msgpack_object_kv *kv = &o->via.map.ptr[i];
            char key[128];
            if (kv->key.type != MSGPACK_OBJECT_STR || kv->key.via.str.size >= sizeof key) {
                json_decref(m);
                return NULL;
            }
            memcpy(key, kv->key.via.str.ptr, kv->key.via.str.size);
            key[kv->key.via.str.size] = 0;
            json_t *v = proto_json_of(&kv->val);
            if (!v || json_object_set_new(m, key, v)) {
                json_decref(m);
                return NULL;
            }
        }
        return m;
    }
    default: return NULL;
    }
}

static int decode_job(ProtoMsg *m, const msgpack_object_map *map, char *err, size_t errlen) {
    m->job_op = -1;
    int rc = get_enum(map, "op", job_ops, (int)(sizeof job_ops / sizeof job_ops[0]), &m->job_op,
                      err, errlen);
    if (rc) return rc;
    if (m->job_op < 0)
        return errmsg_set(err, errlen, PROTO_EBAD_FIELD,
                    "job needs 'op': submit, list, cancel, pause, resume, models, rollback or promote");
    if (m->job_op == PROTO_JOB_CANCEL || m->job_op == PROTO_JOB_PAUSE || m->job_op == PROTO_JOB_RESUME ||
        m->job_op == PROTO_JOB_PROMOTE) {
        if ((rc = get_int(map, "id", 1, 1, INT64_MAX, &m->job_id, err, errlen))) return rc;
    }
    if (m->job_op == PROTO_JOB_ROLLBACK) {
        if ((rc = get_int(map, "version", 0, 1, INT64_MAX, &m->job_version, err, errlen))) return rc;
    }
    if (m->job_op == PROTO_JOB_SUBMIT) {
        const msgpack_object *spec = map_get(map, "spec");
        if (!spec || spec->type != MSGPACK_OBJECT_MAP)
            return errmsg_set(err, errlen, PROTO_EBAD_FIELD, "submit needs 'spec', a map (docs/jobs.md)");
        json_t *j = proto_json_of(spec);
        size_t n = j ? json_dumpb(j, m->job_spec, sizeof m->job_spec - 1, JSON_COMPACT) : 0;
        json_decref(j);
        if (!j)
            return errmsg_set(err, errlen, PROTO_EBAD_FIELD,
                        "'spec' must hold only string keys, strings, numbers, booleans, arrays, maps");
        if (n == 0 || n >= sizeof m->job_spec - 1)
            return errmsg_set(err, errlen, PROTO_EBAD_FIELD, "'spec' is longer than %d bytes as JSON",
                        PROTO_JOB_SPEC_MAX - 2);
        m->job_spec[n] = 0;
    }
    return 0;
}

// A frame id field (uint < 2^53) into *out.
static int get_frame(const msgpack_object_map *map, const char *key, uint64_t *out, char *err,
                     size_t errlen) {
    int64_t v;
    int rc = get_int(map, key, 1, 0, (INT64_C(1) << 53) - 1, &v, err, errlen);
    if (!rc) *out = (uint64_t)v;
    return rc;
}

static int id_char_ok(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '.' || c == ':' || c == '-';
}

static int decode_feedback(ProtoMsg *m, const msgpack_object_map *map, char *err, size_t errlen) {
    const msgpack_object *id = map_get(map, "id");
    if (id && id->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        snprintf(m->fb_id, sizeof m->fb_id, "%llu", (unsigned long long)id->via.u64);
        m->fb_id_is_int = 1;
    } else if (id && id->type == MSGPACK_OBJECT_STR && id->via.str.size >= 1 &&
               id->via.str.size <= PROTO_FEEDBACK_ID_MAX) {
        memcpy(m->fb_id, id->via.str.ptr, id->via.str.size);
        m->fb_id[id->via.str.size] = 0;
        for (const char *p = m->fb_id; *p; p++)
            if (!id_char_ok(*p))
                return errmsg_set(err, errlen, PROTO_EBAD_FIELD,
                            "field 'id' may hold only A-Z a-z 0-9 _ . : -");
    } else {
        return errmsg_set(err, errlen, PROTO_EBAD_FIELD,
                    "field 'id' (the idempotency key) must be a uint or a string of 1..%d bytes",
                    PROTO_FEEDBACK_ID_MAX);
    }
    m->fb_kind = -1;
    int rc = get_enum(map, "kind", feedback_kinds, 3, &m->fb_kind, err, errlen);
    if (rc) return rc;
    if (m->fb_kind < 0) return errmsg_set(err, errlen, PROTO_EBAD_FIELD, "field 'kind' is required");
    if (m->fb_kind == PROTO_FEEDBACK_RATE) {
        m->fb_n = 1;
        if ((rc = get_frame(map, "frame", &m->fb_frames[0], err, errlen))) return rc;
        m->fb_value = NAN;
        if ((rc = get_float(map, "value", -1.0, 1.0, &m->fb_value, err, errlen))) return rc;
        if (isnan(m->fb_value)) return errmsg_set(err, errlen, PROTO_EBAD_FIELD, "field 'value' is required");
        return 0;
    }
    if (m->fb_kind == PROTO_FEEDBACK_PAIR) {
        m->fb_n = 2;
        if ((rc = get_frame(map, "winner", &m->fb_frames[0], err, errlen))) return rc;
        if ((rc = get_frame(map, "loser", &m->fb_frames[1], err, errlen))) return rc;
        if (m->fb_frames[0] == m->fb_frames[1])
            return errmsg_set(err, errlen, PROTO_EBAD_FIELD, "winner and loser must differ");
        const msgpack_object *tie = map_get(map, "tie");
        if (tie && tie->type != MSGPACK_OBJECT_BOOLEAN)
            return errmsg_set(err, errlen, PROTO_EBAD_FIELD, "field 'tie' must be a boolean");
        m->fb_tie = tie && tie->via.boolean;
        return 0;
    }
    if ((rc = get_frame(map, "chosen", &m->fb_frames[0], err, errlen))) return rc;
    const msgpack_object *among = map_get(map, "among");
    if (!among || among->type != MSGPACK_OBJECT_ARRAY || among->via.array.size < 2 ||
        among->via.array.size > PROTO_FEEDBACK_MAX_FRAMES)
        return errmsg_set(err, errlen, PROTO_EBAD_FIELD,
                    "field 'among' must be an array of 2..%d frame ids", PROTO_FEEDBACK_MAX_FRAMES);
    int found = 0;
    m->fb_n = 1;
    for (uint32_t i = 0; i < among->via.array.size; i++) {
        const msgpack_object *o = &among->via.array.ptr[i];
        if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER || o->via.u64 >= (UINT64_C(1) << 53))
            return errmsg_set(err, errlen, PROTO_EBAD_FIELD, "field 'among' must hold frame ids");
        for (int k = 1; k < m->fb_n; k++)
            if (m->fb_frames[k] == o->via.u64)
                return errmsg_set(err, errlen, PROTO_EBAD_FIELD, "field 'among' names a frame twice");
        if (o->via.u64 == m->fb_frames[0]) {
            if (found++) return errmsg_set(err, errlen, PROTO_EBAD_FIELD, "field 'among' names a frame twice");
            continue;
        }
        m->fb_frames[m->fb_n++] = o->via.u64;
    }
    if (!found) return errmsg_set(err, errlen, PROTO_EBAD_FIELD, "'chosen' must be one of 'among'");
    return 0;
}

static int decode_map(ProtoMsg *m, const msgpack_object_map *map, const ProtoLimits *lim,
                      char *err, size_t errlen, int64_t *ref) {
    const msgpack_object *t = map_get(map, "t");
    if (!t || t->type != MSGPACK_OBJECT_STR)
        return errmsg_set(err, errlen, PROTO_EBAD_TYPE, "every message needs a string field 't'");
    char type[16] = {0};
    size_t tl = t->via.str.size < sizeof type - 1 ? t->via.str.size : sizeof type - 1;
    memcpy(type, t->via.str.ptr, tl);
    int rc;
    int64_t v;
    if (t->via.str.size == 5 && strcmp(type, "hello") == 0) {
        m->type = PROTO_HELLO;
        if ((rc = get_str(map, "token", m->token, sizeof m->token, err, errlen)) < 0) return -rc;
        m->has_token = rc;
        if ((rc = get_str(map, "user", m->user, sizeof m->user, err, errlen)) < 0) return -rc;
        m->has_user = rc;
        if (m->has_user && !user_name_ok(m->user))
            return errmsg_set(err, errlen, PROTO_EBAD_FIELD,
                        "field 'user' must be 1..%d characters of A-Z a-z 0-9 _ . @ -",
                        PROTO_USER_MAX);
        return 0;
    }
    int is_stream = t->via.str.size == 6 && strcmp(type, "stream") == 0;
    int is_credit = t->via.str.size == 6 && strcmp(type, "credit") == 0;
    int is_stop = t->via.str.size == 4 && strcmp(type, "stop") == 0;
    if (is_stream || is_credit || is_stop) {
        if ((rc = get_int(map, "id", 1, 0, UINT32_MAX, &v, err, errlen))) return rc;
        m->id = (uint32_t)v;
        *ref = v;
    }
    if (is_stream) {
        m->type = PROTO_STREAM;
        if ((rc = get_enum(map, "mode", mode_names, 3, &m->mode, err, errlen))) return rc;
        if ((rc = get_enum(map, "format", format_names, 2, &m->format, err, errlen))) return rc;
        v = 0;
        if ((rc = get_int(map, "n", 0, 0, lim->max_credit, &v, err, errlen))) return rc;
        m->n = (uint32_t)v;
        if ((rc = get_float(map, "fps", 0.0, PROTO_MAX_FPS, &m->fps, err, errlen))) return rc;
        v = -1;
        if ((rc = get_int(map, "class", 0, -1, lim->classes - 1, &v, err, errlen))) return rc;
        m->cls = (int)v;
        if (map_get(map, "seed")) {
            if ((rc = get_int(map, "seed", 1, 0, (INT64_C(1) << 53) - 1, &v, err, errlen)))
                return rc;
            m->seed = (uint64_t)v;
            m->has_seed = 1;
        }
        if ((rc = get_float(map, "step", 1e-6, 1.0, &m->step, err, errlen))) return rc;
        return 0;
    }
    if (is_credit) {
        m->type = PROTO_CREDIT;
        if ((rc = get_int(map, "n", 1, 1, lim->max_credit, &v, err, errlen))) return rc;
        m->n = (uint32_t)v;
        return 0;
    }
    if (is_stop) {
        m->type = PROTO_STOP;
        return 0;
    }
    if (t->via.str.size == 8 && strcmp(type, "feedback") == 0) {
        m->type = PROTO_FEEDBACK;
        return decode_feedback(m, map, err, errlen);
    }
    if (t->via.str.size == 3 && strcmp(type, "job") == 0) {
        m->type = PROTO_JOB;
        return decode_job(m, map, err, errlen);
    }
    // Echo only printable characters of the unknown name.
    for (size_t i = 0; i < tl; i++)
        if (type[i] < 0x20 || type[i] > 0x7e) type[i] = '?';
    return errmsg_set(err, errlen, PROTO_EUNKNOWN_TYPE, "unknown message type '%s'", type);
}

int proto_decode(ProtoMsg *m, const uint8_t *buf, size_t len, const ProtoLimits *lim, char *err,
                 size_t errlen, int64_t *ref) {
    memset(m, 0, sizeof *m);
    m->mode = PROTO_MODE_GALLERY;
    m->format = PROTO_FORMAT_PNG;
    m->cls = -1;
    m->step = 0.05;
    *ref = -1;
    int rc = proto_scan(buf, len, err, errlen);
    if (rc) return rc;
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    msgpack_unpack_return ur = msgpack_unpack_next(&u, (const char *)buf, len, &off);
    if (ur != MSGPACK_UNPACK_SUCCESS || off != len) {
        rc = errmsg_set(err, errlen, PROTO_EBAD_MESSAGE, "not one msgpack object (unpack %d)", (int)ur);
    } else if (u.data.type != MSGPACK_OBJECT_MAP) {
        rc = errmsg_set(err, errlen, PROTO_EBAD_MESSAGE, "a message must be a msgpack map");
    } else {
        rc = decode_map(m, &u.data.via.map, lim, err, errlen, ref);
    }
    msgpack_unpacked_destroy(&u);
    return rc;
}

// ---- packing --------------------------------------------------------------------------------

static int buf_write(void *data, const char *bytes, size_t len) {
    ProtoBuf *b = data;
    if (b->overflow || len > b->cap - b->len) {
        b->overflow = 1;
        return -1;
    }
    memcpy(b->data + b->len, bytes, len);
    b->len += len;
    return 0;
}

static void pack_cstr(msgpack_packer *pk, const char *s) { msgpack_pack_str_with_body(pk, s, strlen(s)); }

static void pack_kv_u64(msgpack_packer *pk, const char *k, uint64_t v) {
    pack_cstr(pk, k);
    msgpack_pack_uint64(pk, v);
}

static void pack_kv_int(msgpack_packer *pk, const char *k, int64_t v) {
    pack_cstr(pk, k);
    msgpack_pack_int64(pk, v);
}

static void pack_kv_str(msgpack_packer *pk, const char *k, const char *v) {
    pack_cstr(pk, k);
    pack_cstr(pk, v);
}

int proto_pack_welcome(ProtoBuf *out, uint64_t session, const char *user, const ProtoModelInfo *model,
                       const ProtoServerLimits *lim) {
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, buf_write);
    msgpack_pack_map(&pk, 7);
    pack_kv_str(&pk, "t", "welcome");
    pack_kv_str(&pk, "protocol", PROTO_NAME);
    pack_kv_str(&pk, "server", "steer");
    pack_kv_u64(&pk, "session", session);
    pack_kv_str(&pk, "user", user);
    pack_cstr(&pk, "model");
    msgpack_pack_map(&pk, 7);
    pack_kv_u64(&pk, "version", model->version);
    pack_kv_str(&pk, "name", model->name);
    pack_kv_int(&pk, "width", model->width);
    pack_kv_int(&pk, "height", model->height);
    pack_kv_int(&pk, "channels", model->channels);
    pack_kv_int(&pk, "z_dim", model->z_dim);
    pack_kv_int(&pk, "classes", model->classes);
    pack_cstr(&pk, "limits");
    msgpack_pack_map(&pk, 5);
    pack_kv_u64(&pk, "max_message", lim->max_message);
    pack_kv_u64(&pk, "max_streams", lim->max_streams);
    pack_kv_u64(&pk, "max_credit", lim->max_credit);
    pack_kv_u64(&pk, "queue_frames", lim->queue_frames);
    pack_kv_u64(&pk, "history", lim->history);
    return out->overflow ? -1 : 0;
}

int proto_pack_error(ProtoBuf *out, int code, const char *msg, int64_t ref) {
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, buf_write);
    msgpack_pack_map(&pk, ref >= 0 ? 4 : 3);
    pack_kv_str(&pk, "t", "error");
    pack_kv_str(&pk, "code", proto_code_name(code));
    pack_kv_str(&pk, "msg", msg);
    if (ref >= 0) pack_kv_u64(&pk, "ref", (uint64_t)ref);
    return out->overflow ? -1 : 0;
}

int proto_pack_stopped(ProtoBuf *out, uint32_t id, uint64_t sent) {
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, buf_write);
    msgpack_pack_map(&pk, 3);
    pack_kv_str(&pk, "t", "stopped");
    pack_kv_u64(&pk, "id", id);
    pack_kv_u64(&pk, "sent", sent);
    return out->overflow ? -1 : 0;
}

int proto_pack_ack(ProtoBuf *out, const char *id, int is_int) {
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, buf_write);
    msgpack_pack_map(&pk, 2);
    pack_kv_str(&pk, "t", "ack");
    if (is_int) pack_kv_u64(&pk, "id", strtoull(id, NULL, 10));
    else pack_kv_str(&pk, "id", id);
    return out->overflow ? -1 : 0;
}

int proto_pack_policy(ProtoBuf *out, const ProtoPolicy *p) {
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, buf_write);
    msgpack_pack_map(&pk, p->n_probs ? 7 : 6);
    pack_kv_str(&pk, "t", "policy");
    pack_kv_u64(&pk, "version", p->version);
    pack_kv_u64(&pk, "feedback", p->feedback);
    pack_kv_u64(&pk, "comparisons", p->comparisons);
    pack_cstr(&pk, "accuracy");
    if (isnan(p->accuracy)) msgpack_pack_nil(&pk);
    else msgpack_pack_double(&pk, p->accuracy);
    pack_cstr(&pk, "kl");
    msgpack_pack_double(&pk, p->kl);
    if (p->n_probs) {
        pack_cstr(&pk, "class_probs");
        msgpack_pack_array(&pk, (size_t)p->n_probs);
        for (int i = 0; i < p->n_probs; i++) msgpack_pack_float(&pk, p->probs[i]);
    }
    return out->overflow ? -1 : 0;
}

static void pack_kv_num(msgpack_packer *pk, const char *k, double v) {
    pack_cstr(pk, k);
    if (isnan(v)) msgpack_pack_nil(pk);
    else msgpack_pack_double(pk, v);
}

static void pack_job_map(msgpack_packer *pk, const ProtoJob *j) {
    msgpack_pack_map(pk, 13);
    pack_kv_int(pk, "id", j->id);
    pack_kv_str(pk, "state", j->state);
    pack_kv_int(pk, "step", j->step);
    pack_kv_int(pk, "steps", j->steps);
    pack_kv_num(pk, "loss_d", j->loss_d);
    pack_kv_num(pk, "loss_g", j->loss_g);
    pack_kv_num(pk, "images_per_s", j->images_per_s);
    pack_kv_num(pk, "fd", j->fd);
    pack_kv_num(pk, "parent_fd", j->parent_fd);
    pack_cstr(pk, "resolution");
    if (j->resolution > 0) msgpack_pack_int64(pk, j->resolution);
    else msgpack_pack_nil(pk);
    pack_kv_num(pk, "alpha", j->alpha);
    size_t ml = strlen(j->message);
    pack_cstr(pk, "message");
    msgpack_pack_str_with_body(pk, j->message, ml < PROTO_JOB_MESSAGE_MAX ? ml : PROTO_JOB_MESSAGE_MAX);
    pack_kv_int(pk, "model_version", j->model_version);
}

int proto_pack_job(ProtoBuf *out, const char *op, const ProtoJob *j) {
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, buf_write);
    msgpack_pack_map(&pk, 3);
    pack_kv_str(&pk, "t", "job");
    pack_kv_str(&pk, "op", op);
    pack_cstr(&pk, "job");
    pack_job_map(&pk, j);
    return out->overflow ? -1 : 0;
}

int proto_pack_job_end(ProtoBuf *out, const char *op, long count, long served) {
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, buf_write);
    msgpack_pack_map(&pk, 4);
    pack_kv_str(&pk, "t", "job");
    pack_kv_str(&pk, "op", op);
    pack_kv_int(&pk, "count", count);
    pack_kv_int(&pk, "served", served);
    return out->overflow ? -1 : 0;
}

int proto_pack_model_entry(ProtoBuf *out, const ProtoModelEntry *m) {
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, buf_write);
    msgpack_pack_map(&pk, 3);
    pack_kv_str(&pk, "t", "job");
    pack_kv_str(&pk, "op", "model");
    pack_cstr(&pk, "model");
    msgpack_pack_map(&pk, 6);
    pack_kv_int(&pk, "version", m->version);
    pack_kv_int(&pk, "parent", m->parent);
    pack_kv_int(&pk, "job", m->job);
    size_t pl = strlen(m->path);
    pack_cstr(&pk, "path"); // the file's last 200 bytes at most
    msgpack_pack_str_with_body(&pk, m->path + (pl > 200 ? pl - 200 : 0), pl > 200 ? 200 : pl);
    pack_kv_str(&pk, "sha256", m->sha256);
    pack_kv_num(&pk, "fd", m->fd);
    return out->overflow ? -1 : 0;
}

int proto_pack_model(ProtoBuf *out, uint64_t version) {
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, buf_write);
    msgpack_pack_map(&pk, 2);
    pack_kv_str(&pk, "t", "model");
    pack_kv_u64(&pk, "version", version);
    return out->overflow ? -1 : 0;
}

int proto_pack_frame(ProtoBuf *out, const ProtoFrame *f, const uint8_t *data, size_t data_len) {
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, buf_write);
    msgpack_pack_map(&pk, f->side >= 0 ? 14 : 12);
    pack_kv_str(&pk, "t", "frame");
    pack_kv_u64(&pk, "stream", f->stream);
    pack_kv_u64(&pk, "frame", f->frame);
    pack_kv_u64(&pk, "seq", f->seq);
    pack_kv_u64(&pk, "model_version", f->model_version);
    pack_kv_u64(&pk, "policy_version", f->policy_version);
    pack_kv_int(&pk, "class", f->cls);
    pack_kv_int(&pk, "w", f->w);
    pack_kv_int(&pk, "h", f->h);
    pack_kv_int(&pk, "c", f->c);
    pack_kv_str(&pk, "format", proto_format_name(f->format));
    if (f->side >= 0) {
        pack_kv_u64(&pk, "pair", f->pair);
        pack_kv_int(&pk, "side", f->side);
    }
    pack_cstr(&pk, "data");
    msgpack_pack_bin_with_body(&pk, data, data_len);
    return out->overflow ? -1 : 0;
}
