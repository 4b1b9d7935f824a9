// safetensors.h — read and write safetensors files, the checkpoint format steer shares with
// PyTorch.
//
// The format (https://github.com/huggingface/safetensors), all integers little-endian:
//
//   u64 N                 length of the JSON header in bytes
//   N bytes of JSON       an object: tensor name -> {"dtype": "F32", "shape": [64, 3, 3, 3],
//                         "data_offsets": [begin, end]}, plus an optional "__metadata__" object
//                         of string -> string; may be padded at the end with spaces
//   data section          the raw tensors, C order, each at [begin, end) counted from the first
//                         byte after the header; together they cover the section exactly, with no
//                         gaps, no overlaps and no trailing bytes
//
// Dtypes understood: F32, F64, I32, I64, U64, U8. Anything else is refused when reading.
//
// Reading validates every offset and size against the file before any tensor is handed out, so a
// damaged or hostile file gives an error, never an out-of-bounds read. Writing is durable: a temp
// file, fsync, rename over the target, fsync of the directory. The module is thread-safe in the
// plain sense: no globals; distinct StFile structs may be used from distinct threads.
#ifndef GENERATOR_SAFETENSORS_H
#define GENERATOR_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define SAFETENSORS_ERRNO_MAP(X)                                                                   \
    X(EIO, -1, "could not read or write the file")                                                 \
    X(EFORMAT, -2, "not a valid safetensors file")                                                 \
    X(ENOMEM, -3, "out of memory")                                                                 \
    X(EINVAL, -4, "invalid argument")                                                              \
    X(ENOTFOUND, -5, "no such tensor")                                                             \
    X(EMISMATCH, -6, "tensor has the wrong dtype or shape")

enum {
#define X(name, code, msg) SAFETENSORS_##name = code,
    SAFETENSORS_ERRNO_MAP(X)
#undef X
};

// A static string for a SAFETENSORS_E* code (never NULL).
const char *safetensors_strerror(int code);

#define SAFETENSORS_MAX_DIMS 8
#define SAFETENSORS_NAME_MAX 128            // including the terminating NUL
#define SAFETENSORS_HEADER_MAX (100u << 20) // a larger header is refused as insane

typedef enum { ST_F32, ST_F64, ST_I32, ST_I64, ST_U64, ST_U8, ST_NDTYPES } StDtype;

// Bytes per element of a dtype (0 for an invalid one), and its name in the header ("F32"; "?" for
// an invalid one).
size_t safetensors_dtype_size(StDtype dtype);
const char *safetensors_dtype_name(StDtype dtype);

// One tensor. For writing, the caller fills every field and owns data. For reading, data points
// into the owning StFile's buffer and lives as long as it.
typedef struct {
    char name[SAFETENSORS_NAME_MAX];
    StDtype dtype;
    int ndim;                            // 0 (a scalar) .. SAFETENSORS_MAX_DIMS
    int64_t shape[SAFETENSORS_MAX_DIMS]; // (shape[0], ..., shape[ndim-1])
    const void *data;                    // nbytes of raw little-endian elements, C order
    size_t nbytes;                       // product(shape) * safetensors_dtype_size(dtype)
} StTensor;

// A file read into memory. Every field is owned by the struct and released by safetensors_free.
typedef struct {
    char *path;        // the path it was read from, for messages
    uint8_t *buf;      // up to 63 bytes of alignment lead, then the file; tensors point in
    size_t size;       // the file's size in bytes
    StTensor *tensors; // (n), in the header's order
    int n;
    char **meta_kv; // (2 * n_meta): key, value, key, value, ... from "__metadata__"
    int n_meta;
} StFile;

// Writes n tensors and optional metadata to path, durably: path.tmp is written, fsynced and renamed
// over path, then the directory is fsynced. meta_kv is NULL or a NULL-terminated list key, value,
// key, value, ... of strings. Tensors are laid out by element size, largest first, so every tensor
// is aligned to its element size in the file (the data section starts 8-byte aligned). Returns 0,
// or SAFETENSORS_EINVAL (bad names, dtypes, shapes, sizes; nothing written) or SAFETENSORS_EIO /
// SAFETENSORS_ENOMEM with path.tmp removed and path untouched; err says which and why.
int safetensors_write(const char *path, const StTensor *tensors, int n, const char *const *meta_kv,
                      char *err, size_t errlen);

// Reads and validates the whole file at path into f (the caller's struct, overwritten). Each
// tensor's data is aligned in memory to its element size when its offset in the data section is
// (always so for files safetensors_write made). Returns 0, or SAFETENSORS_EIO / EFORMAT / ENOMEM
// with f left empty (safe to free) and err naming the file and what is wrong with it.
int safetensors_read(StFile *f, const char *path, char *err, size_t errlen);

// The tensor called name, or NULL. The pointer lives as long as f.
const StTensor *safetensors_find(const StFile *f, const char *name);

// The metadata value for key, or NULL if absent. The string lives as long as f.
const char *safetensors_meta(const StFile *f, const char *key);

// Finds tensor name and checks its dtype and shape (ndim entries). On success sets *out (if out is
// not NULL) and returns 0; otherwise returns SAFETENSORS_ENOTFOUND ("missing tensor 'x'") or
// SAFETENSORS_EMISMATCH ("tensor 'x' has shape [3, 4], expected [3, 5]") with err filled.
int safetensors_expect(const StFile *f, const char *name, StDtype dtype, int ndim,
                       const int64_t *shape, const StTensor **out, char *err, size_t errlen);

// Releases everything f owns and zeroes it. Safe on a zeroed, half-read or already freed struct.
void safetensors_free(StFile *f);

#endif
