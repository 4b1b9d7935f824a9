// imageio.h — images out of steer: PNG grids and single PNG frames (libpng), and float32 .npy
// arrays in and out (the format numpy and PyTorch read, used for samples and test fixtures).
//
// Images are float (c, h, w) planes in [-1, 1], c = 1 (gray) or 3 (RGB); they become 8-bit pixels
// as round((v + 1) * 127.5), clamped to 0..255 (NaN gives 0). No function keeps state; all are
// thread-safe.
#ifndef GENERATOR_DATA_IMAGEIO_H
#define GENERATOR_DATA_IMAGEIO_H

#include <stddef.h>
#include <stdint.h>

#define IMAGEIO_ERRNO_MAP(X)                                                                       \
    X(EIO, -1, "could not read or write the file")                                                 \
    X(EFORMAT, -2, "file is damaged or not in the expected format")                                \
    X(ENOMEM, -3, "out of memory")                                                                 \
    X(EINVAL, -4, "invalid argument")                                                              \
    X(ETOOSMALL, -5, "output buffer too small")

enum {
#define X(name, code, msg) IMAGEIO_##name = code,
    IMAGEIO_ERRNO_MAP(X)
#undef X
};

// A static string for an IMAGEIO_E* code (never NULL).
const char *imageio_strerror(int code);

#define IMAGEIO_MAX_SIDE 16384     // largest PNG width or height written
#define IMAGEIO_GRID_GAP 2         // pixels between tiles in a grid
#define IMAGEIO_GRID_GAP_VALUE 128 // the gap's 8-bit gray level, so black tiles stay apart
#define NPY_MAX_DIMS 8

// Converts one image (c, h, w) in [-1, 1] to interleaved 8-bit pixels out (h, w, c), the layout of
// PNG rows and of the wire's raw8 frames. Never fails; allocates nothing.
void image_to_u8(uint8_t *out, const float *image, int c, int h, int w);

// Writes images (n, c, h, w) as one PNG grid of `cols` tiles per row (fewer if n is smaller),
// IMAGEIO_GRID_GAP pixels of gray between tiles, 8-bit gray (c = 1) or RGB (c = 3). Returns 0, or
// IMAGEIO_EINVAL / EIO / ENOMEM with err naming path and the problem (a partial file may remain).
int image_grid_write_png(const char *path, const float *images, int n, int c, int h, int w,
                         int cols, char *err, size_t errlen);

// An upper bound on the bytes image_encode_png writes for one (c, h, w) image; size the output
// buffer with it once, at start-up.
size_t image_png_bound(int c, int h, int w);

// Encodes one image (c, h, w) as a PNG into the caller's buffer out (cap bytes), setting *len.
// Returns 0, or IMAGEIO_EINVAL / ETOOSMALL / ENOMEM with err filled and *len = 0. libpng and zlib
// allocate their own working state per call; out is the only memory the result lives in. Tuned for
// speed on small frames (zlib level 1, a 1 KiB window), not for the smallest file.
int image_encode_png(uint8_t *out, size_t cap, size_t *len, const float *image, int c, int h, int w,
                     char *err, size_t errlen);

// Writes data (shape[0], ..., shape[ndim-1]) float32 as an NPY v1.0 file ('<f4', C order).
// Returns 0, or IMAGEIO_EINVAL / EIO with err naming path.
int npy_write_f32(const char *path, const float *data, int ndim, const int64_t *shape, char *err,
                  size_t errlen);

// Reads an NPY file of '<f4' in C order: *data gets a malloc'd array the caller frees with free(),
// *ndim and shape[0 .. *ndim-1] its shape. Validates magic, version (1.x, 2.x, 3.x), the header
// dict, and that the data is exactly product(shape) * 4 bytes. Returns 0, or IMAGEIO_EIO / EFORMAT
// / ENOMEM with *data = NULL and err naming path and the problem.
int npy_read_f32(const char *path, float **data, int *ndim, int64_t shape[NPY_MAX_DIMS], char *err,
                 size_t errlen);

#endif
