// safetensors.c — the safetensors reader and writer behind checkpoints (format in safetensors.h).
//
// A file is read whole into one buffer and validated completely (header JSON, dtypes, shapes,
// offsets against the data section, exact coverage) before any tensor is handed out; tensors then
// point into that buffer, so loading costs one read and no copies. It is deliberately not a lazy or
// memory-mapped reader (our checkpoints are megabytes, and a mapped file can change under us), and
// it knows nothing of networks: which tensors a model needs is the caller's business, checked with
// safetensors_expect. Raw data is little-endian on disk and in memory: big-endian hosts are refused
// at compile time rather than silently byte-swapped.
#include "generator/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/errmsg.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host (the format's raw data is little-endian)"
#endif

// In-memory alignment of the data section: enough for any dtype and for SIMD loads.
#define DATA_ALIGN 64

static const char *const dtype_names[ST_NDTYPES] = {"F32", "F64", "I32", "I64", "U64", "U8"};
static const size_t dtype_sizes[ST_NDTYPES] = {4, 8, 4, 8, 8, 1};

const char *safetensors_strerror(int code) {
    switch (code) {
#define X(name, c, msg)                                                                            \
    case c:                                                                                        \
        return msg;
        SAFETENSORS_ERRNO_MAP(X)
#undef X
    case 0:
        return "success";
    default:
        return "unknown safetensors error";
    }
}

size_t safetensors_dtype_size(StDtype dtype) {
    return (unsigned)dtype < ST_NDTYPES ? dtype_sizes[dtype] : 0;
}

const char *safetensors_dtype_name(StDtype dtype) {
    return (unsigned)dtype < ST_NDTYPES ? dtype_names[dtype] : "?";
}

static int dtype_parse(const char *s, StDtype *out) {
    for (int i = 0; i < ST_NDTYPES; i++) {
        if (strcmp(s, dtype_names[i]) == 0) {
            *out = (StDtype)i;
            return 0;
        }
    }
    return -1;
}

// "[3, 4]" into out (truncated if it does not fit, never overflowing).
static void shape_format(char *out, size_t outlen, int ndim, const int64_t *shape) {
    size_t used = 0;
    out[0] = '\0';
    for (int i = 0; i <= ndim && used < outlen; i++) {
        int k = i == ndim ? snprintf(out + used, outlen - used, "%s]", i ? "" : "[")
                          : snprintf(out + used, outlen - used, "%s%lld", i ? ", " : "[",
                                     (long long)shape[i]);
        if (k < 0)
            return;
        used += (size_t)k;
    }
}

// product(shape) * elem with overflow checks; -1 on overflow or a negative dimension.
static int shape_nbytes(int ndim, const int64_t *shape, size_t elem, uint64_t *out) {
    uint64_t n = elem;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || __builtin_mul_overflow(n, (uint64_t)shape[i], &n))
            return -1;
    }
    *out = n;
    return 0;
}

// ---------------------------------------------------------------------------------------------
// Writing

static int write_all(int fd, const void *buf, size_t n) {
    const uint8_t *p = buf;
    while (n > 0) {
        ssize_t k = write(fd, p, n > (1u << 30) ? (1u << 30) : n);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

// fsync the directory holding path, so a rename into it survives a crash.
static int dir_fsync(const char *path) {
    char *dir = strdup(path);
    if (!dir)
        return -1;
    char *slash = strrchr(dir, '/');
    const char *d = ".";
    if (slash == dir)
        d = "/";
    else if (slash) {
        *slash = '\0';
        d = dir;
    }
    int fd = open(d, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int rc = -1;
    if (fd >= 0) {
        rc = fsync(fd);
        close(fd);
    }
    free(dir);
    return rc;
}

// Checks the caller's tensors and metadata before anything touches the disk.
static int write_args_check(const char *path, const StTensor *tensors, int n,
                            const char *const *meta_kv, char *err, size_t errlen) {
    if (!path || !*path)
        return errmsg_set(err, errlen, SAFETENSORS_EINVAL, "safetensors: empty path");
    if (n < 0 || (n > 0 && !tensors))
        return errmsg_set(err, errlen, SAFETENSORS_EINVAL, "%s: bad tensor list (n = %d)", path,
                            n);
    for (int i = 0; i < n; i++) {
        const StTensor *t = &tensors[i];
        size_t len = strnlen(t->name, SAFETENSORS_NAME_MAX);
        if (len == 0 || len == SAFETENSORS_NAME_MAX)
            return errmsg_set(err, errlen, SAFETENSORS_EINVAL,
                                "%s: tensor %d has an empty or unterminated name", path, i);
        if (strcmp(t->name, "__metadata__") == 0)
            return errmsg_set(err, errlen, SAFETENSORS_EINVAL,
                                "%s: '__metadata__' is reserved and cannot name a tensor", path);
        size_t elem = safetensors_dtype_size(t->dtype);
        if (elem == 0)
            return errmsg_set(err, errlen, SAFETENSORS_EINVAL,
                                "%s: tensor '%s' has invalid dtype %d", path, t->name,
                                (int)t->dtype);
        if (t->ndim < 0 || t->ndim > SAFETENSORS_MAX_DIMS)
            return errmsg_set(err, errlen, SAFETENSORS_EINVAL,
                                "%s: tensor '%s' has %d dimensions (0..%d allowed)", path, t->name,
                                t->ndim, SAFETENSORS_MAX_DIMS);
        uint64_t want;
        if (shape_nbytes(t->ndim, t->shape, elem, &want) != 0)
            return errmsg_set(err, errlen, SAFETENSORS_EINVAL,
                                "%s: tensor '%s' has a negative or overflowing shape", path,
                                t->name);
        if (want != t->nbytes)
            return errmsg_set(err, errlen, SAFETENSORS_EINVAL,
                                "%s: tensor '%s' has nbytes %zu but its shape and dtype make %llu",
                                path, t->name, t->nbytes, (unsigned long long)want);
        if (t->nbytes > 0 && !t->data)
            return errmsg_set(err, errlen, SAFETENSORS_EINVAL, "%s: tensor '%s' has no data",
                                path, t->name);
        for (int j = 0; j < i; j++) {
            if (strcmp(tensors[j].name, t->name) == 0)
                return errmsg_set(err, errlen, SAFETENSORS_EINVAL,
                                    "%s: tensor name '%s' appears twice", path, t->name);
        }
    }
    for (int i = 0; meta_kv && meta_kv[i]; i += 2) {
        if (!meta_kv[i + 1])
            return errmsg_set(err, errlen, SAFETENSORS_EINVAL,
                                "%s: metadata key '%s' has no value (meta_kv must hold pairs)",
                                path, meta_kv[i]);
        for (int j = 0; j < i; j += 2) {
            if (strcmp(meta_kv[j], meta_kv[i]) == 0)
                return errmsg_set(err, errlen, SAFETENSORS_EINVAL,
                                    "%s: metadata key '%s' appears twice", path, meta_kv[i]);
        }
    }
    return 0;
}

// Builds the header JSON for tensors taken in `order`, with offsets as they will be laid out, into
// *out (the caller decrefs it). Returns 0, or SAFETENSORS_EINVAL / ENOMEM with err filled.
static int header_build(const char *path, const StTensor *tensors, const int *order, int n,
                        const char *const *meta_kv, json_t **out, char *err, size_t errlen) {
    *out = NULL;
    json_t *root = json_object();
    if (!root)
        goto nomem;
    if (meta_kv && meta_kv[0]) {
        json_t *meta = json_object();
        if (!meta || json_object_set_new(root, "__metadata__", meta) != 0)
            goto nomem;
        for (int i = 0; meta_kv[i]; i += 2) {
            json_t *v = json_string(meta_kv[i + 1]);
            if (!v || json_object_set_new(meta, meta_kv[i], v) != 0) {
                json_decref(root);
                return errmsg_set(err, errlen, SAFETENSORS_EINVAL,
                                    "%s: metadata '%s' is not valid UTF-8 (or out of memory)", path,
                                    meta_kv[i]);
            }
        }
    }
    uint64_t offset = 0;
    for (int k = 0; k < n; k++) {
        const StTensor *t = &tensors[order[k]];
        json_t *shape = json_array();
        json_t *offsets = json_array();
        json_t *entry = json_object();
        int bad = !shape || !offsets || !entry;
        for (int d = 0; !bad && d < t->ndim; d++)
            bad |= json_array_append_new(shape, json_integer((json_int_t)t->shape[d])) != 0;
        if (!bad) {
            bad |= json_array_append_new(offsets, json_integer((json_int_t)offset)) != 0;
            bad |=
                json_array_append_new(offsets, json_integer((json_int_t)(offset + t->nbytes))) != 0;
            bad |= json_object_set_new(entry, "dtype", json_string(dtype_names[t->dtype])) != 0;
            bad |= json_object_set(entry, "shape", shape) != 0;
            bad |= json_object_set(entry, "data_offsets", offsets) != 0;
        }
        json_decref(shape);
        json_decref(offsets);
        if (bad || json_object_set_new(root, t->name, entry) != 0) {
            // set_new consumed entry even on failure; on the earlier paths free it ourselves.
            if (bad)
                json_decref(entry);
            json_decref(root);
            return errmsg_set(
                err, errlen, SAFETENSORS_EINVAL,
                "%s: could not add tensor '%s' to the header (name not UTF-8, or out of "
                "memory)",
                path, t->name);
        }
        offset += t->nbytes;
    }
    *out = root;
    return 0;
nomem:
    json_decref(root);
    return errmsg_set(err, errlen, SAFETENSORS_ENOMEM, "%s: out of memory building the header",
                        path);
}

int safetensors_write(const char *path, const StTensor *tensors, int n, const char *const *meta_kv,
                      char *err, size_t errlen) {
    int rc = write_args_check(path, tensors, n, meta_kv, err, errlen);
    if (rc != 0)
        return rc;

    // Largest element first: every nbytes is a multiple of its element size, so each tensor then
    // starts at a multiple of its own element size (the order Python's safetensors uses too).
    int *order = malloc(sizeof(int) * (size_t)(n > 0 ? n : 1));
    char *tmp = malloc(strlen(path) + 5);
    char *header = NULL;
    json_t *root = NULL;
    int fd = -1, created = 0;
    if (!order || !tmp) {
        rc = errmsg_set(err, errlen, SAFETENSORS_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    sprintf(tmp, "%s.tmp", path);
    int k = 0;
    for (size_t size = 8; size >= 1; size /= 2) {
        for (int i = 0; i < n; i++) {
            if (dtype_sizes[tensors[i].dtype] == size)
                order[k++] = i;
        }
    }

    rc = header_build(path, tensors, order, n, meta_kv, &root, err, errlen);
    if (rc != 0)
        goto done;
    header = json_dumps(root, JSON_COMPACT);
    if (!header) {
        rc = errmsg_set(err, errlen, SAFETENSORS_ENOMEM, "%s: out of memory encoding the header",
                          path);
        goto done;
    }
    size_t hlen = strlen(header);
    size_t padded = (hlen + 7) / 8 * 8; // 8 + padded is a multiple of 8: aligned data section
    uint8_t prefix[8];
    for (int b = 0; b < 8; b++)
        prefix[b] = (uint8_t)((uint64_t)padded >> (8 * b));
    static const char spaces[8] = "        ";

    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        rc = errmsg_set(err, errlen, SAFETENSORS_EIO, "%s: cannot create: %s", tmp,
                          strerror(errno));
        goto done;
    }
    created = 1;
    int bad = write_all(fd, prefix, 8) || write_all(fd, header, hlen) ||
              write_all(fd, spaces, padded - hlen);
    for (int i = 0; i < n && !bad; i++) {
        const StTensor *t = &tensors[order[i]];
        if (t->nbytes > 0)
            bad = write_all(fd, t->data, t->nbytes);
    }
    if (bad || fsync(fd) != 0) {
        rc = errmsg_set(err, errlen, SAFETENSORS_EIO, "%s: write failed: %s", tmp,
                          strerror(errno));
        goto done;
    }
    int closed = close(fd);
    fd = -1;
    if (closed != 0) {
        rc = errmsg_set(err, errlen, SAFETENSORS_EIO, "%s: close failed: %s", tmp,
                          strerror(errno));
        goto done;
    }
    if (rename(tmp, path) != 0) {
        rc = errmsg_set(err, errlen, SAFETENSORS_EIO, "%s: cannot rename %s over it: %s", path,
                          tmp, strerror(errno));
        goto done;
    }
    if (dir_fsync(path) != 0) {
        // The file is in place; only its durability across a crash is in doubt. Report it anyway:
        // a checkpoint must not be published on a maybe.
        rc = errmsg_set(err, errlen, SAFETENSORS_EIO, "%s: fsync of its directory failed: %s",
                          path, strerror(errno));
        goto done;
    }
    rc = 0;

done:
    if (fd >= 0)
        close(fd);
    if (rc != 0 && created)
        unlink(tmp); // a no-op once renamed
    free(header);
    json_decref(root);
    free(order);
    free(tmp);
    return rc;
}

// ---------------------------------------------------------------------------------------------
// Reading

void safetensors_free(StFile *f) {
    if (!f)
        return;
    if (f->meta_kv) {
        for (int i = 0; i < 2 * f->n_meta; i++)
            free(f->meta_kv[i]);
    }
    free(f->meta_kv);
    free(f->tensors);
    free(f->buf);
    free(f->path);
    memset(f, 0, sizeof(*f));
}

static int read_all(int fd, uint8_t *buf, size_t n) {
    while (n > 0) {
        ssize_t k = read(fd, buf, n > (1u << 30) ? (1u << 30) : n);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (k == 0) {
            errno = 0; // the file shrank under us
            return -1;
        }
        buf += k;
        n -= (size_t)k;
    }
    return 0;
}

// Reads one JSON integer into *out; -1 if v is not an integer (reals, strings... are refused).
static int json_int_get(const json_t *v, long long *out) {
    if (!json_is_integer(v))
        return -1;
    *out = (long long)json_integer_value(v);
    return 0;
}

// Parses one header entry into t (name already set). data_size bounds the offsets; begin gets the
// tensor's start in the data section.
static int entry_parse(const char *path, const char *name, json_t *v, uint64_t data_size,
                       StTensor *t, uint64_t *begin_out, uint64_t *end_out, char *err,
                       size_t errlen) {
    const int E = SAFETENSORS_EFORMAT;
    if (!json_is_object(v))
        return errmsg_set(err, errlen, E, "%s: entry '%s' is not an object", path, name);

    json_t *dt = json_object_get(v, "dtype");
    if (!json_is_string(dt))
        return errmsg_set(err, errlen, E, "%s: tensor '%s' has no \"dtype\" string", path, name);
    if (dtype_parse(json_string_value(dt), &t->dtype) != 0)
        return errmsg_set(
            err, errlen, E,
            "%s: tensor '%s' has unsupported dtype '%.32s' (F32, F64, I32, I64, U64, U8 "
            "are understood)",
            path, name, json_string_value(dt));

    json_t *shape = json_object_get(v, "shape");
    if (!json_is_array(shape))
        return errmsg_set(err, errlen, E, "%s: tensor '%s' has no \"shape\" array", path, name);
    size_t nd = json_array_size(shape);
    if (nd > SAFETENSORS_MAX_DIMS)
        return errmsg_set(err, errlen, E, "%s: tensor '%s' has %zu dimensions (at most %d)", path,
                            name, nd, SAFETENSORS_MAX_DIMS);
    t->ndim = (int)nd;
    for (size_t d = 0; d < nd; d++) {
        long long s;
        if (json_int_get(json_array_get(shape, d), &s) != 0 || s < 0)
            return errmsg_set(err, errlen, E,
                                "%s: tensor '%s' shape entry %zu is not a non-negative integer",
                                path, name, d);
        t->shape[d] = s;
    }

    json_t *offs = json_object_get(v, "data_offsets");
    long long b, e;
    if (!json_is_array(offs) || json_array_size(offs) != 2 ||
        json_int_get(json_array_get(offs, 0), &b) != 0 ||
        json_int_get(json_array_get(offs, 1), &e) != 0)
        return errmsg_set(err, errlen, E,
                            "%s: tensor '%s' has no \"data_offsets\" array of two integers", path,
                            name);
    if (b < 0 || e < b)
        return errmsg_set(err, errlen, E, "%s: tensor '%s' has bad data_offsets [%lld, %lld)",
                            path, name, b, e);
    if ((uint64_t)e > data_size)
        return errmsg_set(
            err, errlen, E,
            "%s: tensor '%s' data [%lld, %lld) runs past the end of the data section "
            "(%llu bytes)",
            path, name, b, e, (unsigned long long)data_size);

    uint64_t want;
    if (shape_nbytes(t->ndim, t->shape, dtype_sizes[t->dtype], &want) != 0)
        return errmsg_set(err, errlen, E, "%s: tensor '%s' shape overflows 64 bits", path, name);
    if (want != (uint64_t)(e - b)) {
        char s[160];
        shape_format(s, sizeof(s), t->ndim, t->shape);
        return errmsg_set(
            err, errlen, E,
            "%s: tensor '%s' data [%lld, %lld) holds %lld bytes but %s %s needs %llu", path, name,
            b, e, e - b, dtype_names[t->dtype], s, (unsigned long long)want);
    }
    t->nbytes = (size_t)want;
    *begin_out = (uint64_t)b;
    *end_out = (uint64_t)e;
    return 0;
}

// Parses "__metadata__" (an object of strings) into f->meta_kv.
static int meta_parse(StFile *f, json_t *meta, char *err, size_t errlen) {
    if (!json_is_object(meta))
        return errmsg_set(err, errlen, SAFETENSORS_EFORMAT,
                            "%s: \"__metadata__\" is not an object", f->path);
    size_t count = json_object_size(meta);
    f->meta_kv = calloc(2 * count + 1, sizeof(char *));
    if (!f->meta_kv)
        return errmsg_set(err, errlen, SAFETENSORS_ENOMEM, "%s: out of memory", f->path);
    const char *key;
    json_t *v;
    json_object_foreach(meta, key, v) {
        if (!json_is_string(v))
            return errmsg_set(err, errlen, SAFETENSORS_EFORMAT,
                                "%s: metadata '%.64s' is not a string", f->path, key);
        char *k = strdup(key), *s = strdup(json_string_value(v));
        f->meta_kv[2 * f->n_meta] = k;
        f->meta_kv[2 * f->n_meta + 1] = s;
        if (!k || !s) {
            free(k);
            free(s);
            f->meta_kv[2 * f->n_meta] = f->meta_kv[2 * f->n_meta + 1] = NULL;
            return errmsg_set(err, errlen, SAFETENSORS_ENOMEM, "%s: out of memory", f->path);
        }
        f->n_meta++;
    }
    return 0;
}

typedef struct {
    uint64_t begin, end;
    int index;
} Span;

static int span_cmp(const void *a, const void *b) {
    const Span *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return 0;
}

int safetensors_read(StFile *f, const char *path, char *err, size_t errlen) {
    memset(f, 0, sizeof(*f));
    if (!path)
        return errmsg_set(err, errlen, SAFETENSORS_EINVAL, "safetensors: NULL path");
    int rc = 0;
    int fd = -1;
    json_t *root = NULL;
    Span *spans = NULL;
    f->path = strdup(path);
    if (!f->path) {
        rc = errmsg_set(err, errlen, SAFETENSORS_ENOMEM, "%s: out of memory", path);
        goto fail;
    }

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        rc = errmsg_set(err, errlen, SAFETENSORS_EIO, "%s: cannot open: %s", path,
                          strerror(errno));
        goto fail;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        rc = errmsg_set(err, errlen, SAFETENSORS_EIO, "%s: not a regular file", path);
        goto fail;
    }
    uint64_t size = (uint64_t)st.st_size;
    if (size < 8) {
        rc = errmsg_set(err, errlen, SAFETENSORS_EFORMAT,
                          "%s: file is %llu bytes, too short for the 8-byte header length", path,
                          (unsigned long long)size);
        goto fail;
    }
    uint8_t prefix[8];
    if (read_all(fd, prefix, 8) != 0) {
        rc = errmsg_set(err, errlen, SAFETENSORS_EIO, "%s: read failed: %s", path,
                          errno ? strerror(errno) : "file shrank while reading");
        goto fail;
    }
    uint64_t hlen = 0;
    for (int b = 0; b < 8; b++)
        hlen |= (uint64_t)prefix[b] << (8 * b);
    if (hlen > size - 8) {
        rc = errmsg_set(err, errlen, SAFETENSORS_EFORMAT,
                          "%s: header length %llu runs past the end of the file (%llu bytes)", path,
                          (unsigned long long)hlen, (unsigned long long)size);
        goto fail;
    }
    if (hlen > SAFETENSORS_HEADER_MAX) {
        rc = errmsg_set(err, errlen, SAFETENSORS_EFORMAT,
                          "%s: header length %llu is larger than the %u bytes allowed", path,
                          (unsigned long long)hlen, SAFETENSORS_HEADER_MAX);
        goto fail;
    }
    if (size > SIZE_MAX - 2 * DATA_ALIGN) {
        rc = errmsg_set(err, errlen, SAFETENSORS_ENOMEM, "%s: too large to load", path);
        goto fail;
    }

    // Place the file in the buffer so the data section (file offset 8 + hlen) is DATA_ALIGN-aligned
    // in memory whatever hlen is; tensors of files we wrote are then aligned to their element size.
    size_t lead = (DATA_ALIGN - (size_t)((8 + hlen) % DATA_ALIGN)) % DATA_ALIGN;
    void *mem = NULL;
    if (posix_memalign(&mem, DATA_ALIGN, lead + (size_t)size) != 0) {
        rc = errmsg_set(err, errlen, SAFETENSORS_ENOMEM, "%s: out of memory for %llu bytes", path,
                          (unsigned long long)size);
        goto fail;
    }
    f->buf = mem;
    f->size = (size_t)size;
    uint8_t *file = f->buf + lead;
    memcpy(file, prefix, 8);
    if (read_all(fd, file + 8, (size_t)size - 8) != 0) {
        rc = errmsg_set(err, errlen, SAFETENSORS_EIO, "%s: read failed: %s", path,
                          errno ? strerror(errno) : "file shrank while reading");
        goto fail;
    }
    close(fd);
    fd = -1;

    const uint8_t *data = file + 8 + hlen;
    uint64_t data_size = size - 8 - hlen;
    json_error_t jerr;
    root = json_loadb((const char *)file + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        rc = errmsg_set(err, errlen, SAFETENSORS_EFORMAT,
                          "%s: header is not valid JSON: %s (line %d, column %d)", path, jerr.text,
                          jerr.line, jerr.column);
        goto fail;
    }
    if (!json_is_object(root)) {
        rc = errmsg_set(err, errlen, SAFETENSORS_EFORMAT, "%s: header is JSON but not an object",
                          path);
        goto fail;
    }

    size_t entries = json_object_size(root);
    json_t *meta = json_object_get(root, "__metadata__");
    size_t count = entries - (meta ? 1 : 0);
    if (count > (size_t)INT32_MAX) {
        rc = errmsg_set(err, errlen, SAFETENSORS_EFORMAT, "%s: too many tensors", path);
        goto fail;
    }
    if (meta && (rc = meta_parse(f, meta, err, errlen)) != 0)
        goto fail;

    f->tensors = calloc(count ? count : 1, sizeof(StTensor));
    spans = calloc(count ? count : 1, sizeof(Span));
    if (!f->tensors || !spans) {
        rc = errmsg_set(err, errlen, SAFETENSORS_ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        if (strcmp(key, "__metadata__") == 0)
            continue;
        size_t klen = strlen(key);
        if (klen == 0 || klen >= SAFETENSORS_NAME_MAX) {
            rc = errmsg_set(err, errlen, SAFETENSORS_EFORMAT,
                              "%s: tensor name '%.40s...' is empty or longer than %d bytes", path,
                              key, SAFETENSORS_NAME_MAX - 1);
            goto fail;
        }
        StTensor *t = &f->tensors[f->n];
        memcpy(t->name, key, klen + 1);
        Span *s = &spans[f->n];
        rc = entry_parse(path, key, v, data_size, t, &s->begin, &s->end, err, errlen);
        if (rc != 0)
            goto fail;
        s->index = f->n;
        t->data = data + s->begin;
        f->n++;
    }

    // The spec asks the data section to be covered exactly: sorted by offset, each tensor must
    // start where the previous one ended, and the last must end at the end of the file.
    qsort(spans, (size_t)f->n, sizeof(Span), span_cmp);
    uint64_t cursor = 0;
    for (int i = 0; i < f->n; i++) {
        const Span *s = &spans[i];
        const char *name = f->tensors[s->index].name;
        if (s->begin < cursor) {
            rc = errmsg_set(
                err, errlen, SAFETENSORS_EFORMAT,
                "%s: tensor '%s' data [%llu, %llu) overlaps tensor '%s' (which ends at %llu)", path,
                name, (unsigned long long)s->begin, (unsigned long long)s->end,
                f->tensors[spans[i - 1].index].name, (unsigned long long)cursor);
            goto fail;
        }
        if (s->begin > cursor) {
            rc = errmsg_set(
                err, errlen, SAFETENSORS_EFORMAT,
                "%s: tensor '%s' starts at %llu but the data before it ends at %llu (a "
                "gap of unused bytes)",
                path, name, (unsigned long long)s->begin, (unsigned long long)cursor);
            goto fail;
        }
        cursor = s->end;
    }
    if (cursor != data_size) {
        rc = errmsg_set(
            err, errlen, SAFETENSORS_EFORMAT,
            "%s: oversized: the data section is %llu bytes but the tensors cover only %llu "
            "(%llu trailing bytes)",
            path, (unsigned long long)data_size, (unsigned long long)cursor,
            (unsigned long long)(data_size - cursor));
        goto fail;
    }

    free(spans);
    json_decref(root);
    return 0;

fail:
    if (fd >= 0)
        close(fd);
    free(spans);
    json_decref(root);
    safetensors_free(f);
    return rc;
}

const StTensor *safetensors_find(const StFile *f, const char *name) {
    if (!f || !name)
        return NULL;
    for (int i = 0; i < f->n; i++) {
        if (strcmp(f->tensors[i].name, name) == 0)
            return &f->tensors[i];
    }
    return NULL;
}

const char *safetensors_meta(const StFile *f, const char *key) {
    if (!f || !key)
        return NULL;
    for (int i = 0; i < f->n_meta; i++) {
        if (strcmp(f->meta_kv[2 * i], key) == 0)
            return f->meta_kv[2 * i + 1];
    }
    return NULL;
}

int safetensors_expect(const StFile *f, const char *name, StDtype dtype, int ndim,
                       const int64_t *shape, const StTensor **out, char *err, size_t errlen) {
    const char *path = f && f->path ? f->path : "safetensors";
    if (out)
        *out = NULL;
    const StTensor *t = safetensors_find(f, name);
    if (!t)
        return errmsg_set(err, errlen, SAFETENSORS_ENOTFOUND, "%s: missing tensor '%s'", path,
                            name ? name : "(null)");
    if (t->dtype != dtype)
        return errmsg_set(err, errlen, SAFETENSORS_EMISMATCH,
                            "%s: tensor '%s' has dtype %s, expected %s", path, name,
                            dtype_names[t->dtype], safetensors_dtype_name(dtype));
    int same = t->ndim == ndim;
    for (int d = 0; same && d < ndim; d++)
        same = t->shape[d] == shape[d];
    if (!same) {
        char have[160], want[160];
        shape_format(have, sizeof(have), t->ndim, t->shape);
        shape_format(want, sizeof(want),
                     ndim < 0 ? 0 : (ndim > SAFETENSORS_MAX_DIMS ? SAFETENSORS_MAX_DIMS : ndim),
                     shape);
        return errmsg_set(err, errlen, SAFETENSORS_EMISMATCH,
                            "%s: tensor '%s' has shape %s, expected %s", path, name, have, want);
    }
    if (out)
        *out = t;
    return 0;
}
