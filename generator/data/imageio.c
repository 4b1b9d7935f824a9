// imageio.c — PNG writing (grids to files, single frames to memory) with libpng, float32 NPY
// reading and writing.
//
// PNG output goes through one encoder with a pluggable sink (a FILE or the caller's buffer), with
// libpng's errors caught by its setjmp protocol so nothing here ever aborts. The NPY reader
// validates the whole file (magic, version, header dict, exact data size) before copying anything
// out; it is deliberately not a general NPY reader: only little-endian float32 in C order, which
// is all steer writes and all its fixtures need. There is no PNG reader here: datasets of PNG
// folders load elsewhere.
#include "generator/data/imageio.h"

#include <errno.h>
#include <fcntl.h>
#include <png.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/errmsg.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "imageio.c writes '<f4' NPY data straight from memory: it assumes a little-endian host"
#endif

const char *imageio_strerror(int code) {
    switch (code) {
#define X(name, c, msg)                                                                            \
    case c:                                                                                        \
        return msg;
        IMAGEIO_ERRNO_MAP(X)
#undef X
    case 0:
        return "success";
    default:
        return "unknown imageio error";
    }
}

// ---------------------------------------------------------------------------------------------
// Pixels

static inline uint8_t to_u8(float v) {
    float x = (v + 1.0f) * 127.5f + 0.5f;
    if (!(x > 0.0f))
        return 0; // also NaN
    if (x >= 255.0f)
        return 255;
    return (uint8_t)x;
}

// image (c, h, w) -> out rows of w*c interleaved bytes, row_stride bytes apart.
static void image_to_u8_strided(uint8_t *out, size_t row_stride, const float *image, int c, int h,
                                int w) {
    for (int y = 0; y < h; y++) {
        uint8_t *row = out + (size_t)y * row_stride;
        for (int ch = 0; ch < c; ch++) {
            const float *plane = image + ((size_t)ch * h + y) * w;
            for (int x = 0; x < w; x++)
                row[(size_t)x * c + ch] = to_u8(plane[x]);
        }
    }
}

void image_to_u8(uint8_t *out, const float *image, int c, int h, int w) {
    image_to_u8_strided(out, (size_t)w * c, image, c, h, w);
}

static int image_dims_check(const char *what, int c, int h, int w, char *err, size_t errlen) {
    if (c != 1 && c != 3)
        return errmsg_set(err, errlen, IMAGEIO_EINVAL, "%s: %d channels (1 or 3 can be written)",
                            what, c);
    if (h < 1 || w < 1 || h > IMAGEIO_MAX_SIDE || w > IMAGEIO_MAX_SIDE)
        return errmsg_set(err, errlen, IMAGEIO_EINVAL, "%s: image size %dx%d outside 1..%d", what,
                            h, w, IMAGEIO_MAX_SIDE);
    return 0;
}

// ---------------------------------------------------------------------------------------------
// PNG encoding

// Where the encoder's bytes go: a FILE, or the caller's buffer out (cap bytes).
typedef struct {
    FILE *fp;
    uint8_t *out;
    size_t cap, len;
    int overflow, io_error;
    char msg[160];
} PngSink;

static void sink_write(png_structp png, png_bytep data, size_t n) {
    PngSink *s = png_get_io_ptr(png);
    if (s->fp) {
        if (fwrite(data, 1, n, s->fp) != n) {
            s->io_error = errno ? errno : EIO;
            png_error(png, "write failed");
        }
        return;
    }
    if (n > s->cap - s->len) {
        s->overflow = 1;
        png_error(png, "output buffer too small");
    }
    memcpy(s->out + s->len, data, n);
    s->len += n;
}

static void sink_flush(png_structp png) {
    (void)png; // the FILE is flushed and checked when it is closed
}

static void png_on_error(png_structp png, png_const_charp msg) {
    PngSink *s = png_get_error_ptr(png);
    snprintf(s->msg, sizeof(s->msg), "%s", msg);
    png_longjmp(png, 1);
}

static void png_on_warning(png_structp png, png_const_charp msg) {
    (void)png;
    (void)msg;
}

// Encodes pixels (height, width, channels) as an 8-bit PNG into sink. Returns 0, or -1 with
// sink->msg, sink->overflow and sink->io_error saying why.
// fast: settings for small frames encoded by the thousand (the server's), else libpng's defaults.
static int png_encode(PngSink *sink, const uint8_t *pixels, int width, int height, int channels,
                      int fast) {
    png_structp png =
        png_create_write_struct(PNG_LIBPNG_VER_STRING, sink, png_on_error, png_on_warning);
    if (!png) {
        snprintf(sink->msg, sizeof(sink->msg), "out of memory");
        return -1;
    }
    png_infop info = png_create_info_struct(png);
    if (!info) {
        png_destroy_write_struct(&png, NULL);
        snprintf(sink->msg, sizeof(sink->msg), "out of memory");
        return -1;
    }
    // png and info are not modified after setjmp, so they need not be volatile.
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        return -1;
    }
    png_set_write_fn(png, sink, sink_write, sink_flush);
    if (fast) {
        // Frames are small and many. zlib's fastest level with the Sub filter only, rather than
        // libpng's adaptive choice at level 6, and a 1 KiB window with the smallest hash table
        // (most of a small image's cost is zlib clearing its 64 KiB hash table) took a 32x32 frame
        // from 45 to 11 us here (a test image grew from 231 to 304 bytes).
        png_set_compression_level(png, 1);
        png_set_compression_mem_level(png, 1);
        png_set_compression_window_bits(png, 10);
        png_set_filter(png, 0, PNG_FILTER_SUB);
    }
    png_set_IHDR(png, info, (png_uint_32)width, (png_uint_32)height, 8,
                 channels == 1 ? PNG_COLOR_TYPE_GRAY : PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (int y = 0; y < height; y++)
        png_write_row(png, pixels + (size_t)y * width * channels);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    return 0;
}

int image_grid_write_png(const char *path, const float *images, int n, int c, int h, int w,
                         int cols, char *err, size_t errlen) {
    if (!path)
        return errmsg_set(err, errlen, IMAGEIO_EINVAL, "image grid: NULL path");
    int rc = image_dims_check(path, c, h, w, err, errlen);
    if (rc != 0)
        return rc;
    if (n < 1 || cols < 1 || !images)
        return errmsg_set(err, errlen, IMAGEIO_EINVAL, "%s: bad grid (n = %d, cols = %d)", path,
                            n, cols);
    if (cols > n)
        cols = n;
    long long rows = (n + (long long)cols - 1) / cols;
    long long gw = (long long)cols * w + (long long)(cols - 1) * IMAGEIO_GRID_GAP;
    long long gh = rows * h + (rows - 1) * IMAGEIO_GRID_GAP;
    if (gw > IMAGEIO_MAX_SIDE || gh > IMAGEIO_MAX_SIDE)
        return errmsg_set(err, errlen, IMAGEIO_EINVAL,
                            "%s: grid of %lldx%lld pixels is over %d a side", path, gw, gh,
                            IMAGEIO_MAX_SIDE);

    size_t stride = (size_t)gw * c;
    uint8_t *pixels = malloc(stride * (size_t)gh);
    if (!pixels)
        return errmsg_set(err, errlen, IMAGEIO_ENOMEM, "%s: out of memory", path);
    memset(pixels, IMAGEIO_GRID_GAP_VALUE, stride * (size_t)gh);
    for (int i = 0; i < n; i++) {
        size_t x0 = (size_t)(i % cols) * (w + IMAGEIO_GRID_GAP);
        size_t y0 = (size_t)(i / cols) * (h + IMAGEIO_GRID_GAP);
        image_to_u8_strided(pixels + y0 * stride + x0 * c, stride, images + (size_t)i * c * h * w,
                            c, h, w);
    }

    PngSink sink = {0};
    sink.fp = fopen(path, "wb");
    if (!sink.fp) {
        free(pixels);
        return errmsg_set(err, errlen, IMAGEIO_EIO, "%s: cannot create: %s", path,
                            strerror(errno));
    }
    errno = 0;
    int enc = png_encode(&sink, pixels, (int)gw, (int)gh, c, 0);
    int closed = fclose(sink.fp);
    free(pixels);
    if (enc != 0)
        return errmsg_set(err, errlen, sink.io_error ? IMAGEIO_EIO : IMAGEIO_ENOMEM,
                            "%s: libpng: %s%s%s", path, sink.msg, sink.io_error ? ": " : "",
                            sink.io_error ? strerror(sink.io_error) : "");
    if (closed != 0)
        return errmsg_set(err, errlen, IMAGEIO_EIO, "%s: write failed: %s", path,
                            strerror(errno));
    return 0;
}

size_t image_png_bound(int c, int h, int w) {
    if (c < 1 || h < 1 || w < 1)
        return 0;
    // Raw scanlines (a filter byte each) plus a generous margin for zlib's worst case (stored
    // blocks, deflateBound's conservative ~4%), libpng's 12 bytes per 8 KiB IDAT chunk, and the
    // signature, IHDR and IEND.
    size_t raw = (size_t)h * (1 + (size_t)w * c);
    return raw + raw / 16 + 1024;
}

int image_encode_png(uint8_t *out, size_t cap, size_t *len, const float *image, int c, int h, int w,
                     char *err, size_t errlen) {
    if (len)
        *len = 0;
    int rc = image_dims_check("png frame", c, h, w, err, errlen);
    if (rc != 0)
        return rc;
    if (!out || !len || !image)
        return errmsg_set(err, errlen, IMAGEIO_EINVAL, "png frame: NULL buffer or image");
    uint8_t *pixels = malloc((size_t)c * h * w);
    if (!pixels)
        return errmsg_set(err, errlen, IMAGEIO_ENOMEM, "png frame: out of memory");
    image_to_u8(pixels, image, c, h, w);
    PngSink sink = {.out = out, .cap = cap};
    int enc = png_encode(&sink, pixels, w, h, c, 1);
    free(pixels);
    if (enc != 0) {
        if (sink.overflow)
            return errmsg_set(
                err, errlen, IMAGEIO_ETOOSMALL,
                "png frame: %zu-byte buffer too small for a %dx%dx%d PNG (bound %zu)", cap, c, h, w,
                image_png_bound(c, h, w));
        return errmsg_set(err, errlen, IMAGEIO_ENOMEM, "png frame: libpng: %s", sink.msg);
    }
    *len = sink.len;
    return 0;
}

// ---------------------------------------------------------------------------------------------
// NPY (format: https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html)

static const uint8_t npy_magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};

static int npy_count(int ndim, const int64_t *shape, uint64_t *count) {
    uint64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || __builtin_mul_overflow(n, (uint64_t)shape[i], &n))
            return -1;
    }
    if (n > UINT64_MAX / 4)
        return -1;
    *count = n;
    return 0;
}

int npy_write_f32(const char *path, const float *data, int ndim, const int64_t *shape, char *err,
                  size_t errlen) {
    if (!path)
        return errmsg_set(err, errlen, IMAGEIO_EINVAL, "npy: NULL path");
    if (ndim < 0 || ndim > NPY_MAX_DIMS || (ndim > 0 && !shape))
        return errmsg_set(err, errlen, IMAGEIO_EINVAL, "%s: %d dimensions (0..%d allowed)", path,
                            ndim, NPY_MAX_DIMS);
    uint64_t count;
    if (npy_count(ndim, shape, &count) != 0)
        return errmsg_set(err, errlen, IMAGEIO_EINVAL, "%s: negative or overflowing shape", path);
    if (count > 0 && !data)
        return errmsg_set(err, errlen, IMAGEIO_EINVAL, "%s: NULL data", path);

    // The header dict as numpy writes it, padded with spaces and a final '\n' so that the data
    // starts at a multiple of 64 bytes (numpy's ARRAY_ALIGN). 8 dims of 20 digits fit easily.
    char header[512];
    int k = snprintf(header, sizeof(header), "{'descr': '<f4', 'fortran_order': False, 'shape': (");
    for (int i = 0; i < ndim; i++)
        k += snprintf(header + k, sizeof(header) - (size_t)k, "%lld, ", (long long)shape[i]);
    if (ndim > 1)
        k -= 2; // "(2, 3)"; a 1-d shape keeps its comma: "(5,)"
    else if (ndim == 1)
        k -= 1;
    k += snprintf(header + k, sizeof(header) - (size_t)k, "), }");
    size_t total = (10 + (size_t)k + 1 + 63) / 64 * 64; // +1 for the '\n'
    size_t hlen = total - 10;
    memset(header + k, ' ', hlen - (size_t)k);
    header[hlen - 1] = '\n';
    uint8_t prefix[10] = {
        0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (uint8_t)(hlen & 0xff), (uint8_t)(hlen >> 8)};

    FILE *fp = fopen(path, "wb");
    if (!fp)
        return errmsg_set(err, errlen, IMAGEIO_EIO, "%s: cannot create: %s", path,
                            strerror(errno));
    int bad = fwrite(prefix, 1, 10, fp) != 10 || fwrite(header, 1, hlen, fp) != hlen ||
              (count > 0 && fwrite(data, sizeof(float), count, fp) != count);
    int saved = errno;
    if (fclose(fp) != 0 && !bad) {
        bad = 1;
        saved = errno;
    }
    if (bad)
        return errmsg_set(err, errlen, IMAGEIO_EIO, "%s: write failed: %s", path,
                            strerror(saved));
    return 0;
}

// A cursor over the header dict text [p, end).
typedef struct {
    const char *p, *end;
} Scan;

static void scan_space(Scan *s) {
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        s->p++;
}

static int scan_char(Scan *s, char ch) {
    scan_space(s);
    if (s->p < s->end && *s->p == ch) {
        s->p++;
        return 0;
    }
    return -1;
}

// A quoted Python string literal without escapes ('...' or "..."), into out (cap bytes).
static int scan_string(Scan *s, char *out, size_t cap) {
    scan_space(s);
    if (s->p >= s->end || (*s->p != '\'' && *s->p != '"'))
        return -1;
    char q = *s->p++;
    size_t n = 0;
    while (s->p < s->end && *s->p != q) {
        if (*s->p == '\\' || n + 1 >= cap)
            return -1;
        out[n++] = *s->p++;
    }
    if (s->p >= s->end)
        return -1;
    s->p++;
    out[n] = '\0';
    return 0;
}

static int scan_word(Scan *s, const char *word) {
    scan_space(s);
    size_t n = strlen(word);
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, word, n) != 0)
        return -1;
    s->p += n;
    return 0;
}

// "(2, 3)", "(5,)" or "()" into shape; -1 on anything else, or more than NPY_MAX_DIMS.
static int scan_shape(Scan *s, int *ndim, int64_t *shape) {
    if (scan_char(s, '(') != 0)
        return -1;
    *ndim = 0;
    for (;;) {
        scan_space(s);
        if (s->p < s->end && *s->p == ')') {
            s->p++;
            return 0;
        }
        if (*ndim == NPY_MAX_DIMS || s->p >= s->end || *s->p < '0' || *s->p > '9')
            return -1;
        int64_t v = 0;
        while (s->p < s->end && *s->p >= '0' && *s->p <= '9') {
            if (v > (INT64_MAX - 9) / 10)
                return -1;
            v = v * 10 + (*s->p++ - '0');
        }
        shape[(*ndim)++] = v;
        scan_space(s);
        int comma = 0;
        if (s->p < s->end && *s->p == ',') {
            s->p++;
            comma = 1;
        } else if (s->p >= s->end || *s->p != ')') {
            return -1;
        }
        // A 1-tuple needs its comma in Python: "(5)" is an int, not a shape.
        if (*ndim == 1 && !comma)
            return -1;
    }
}

// Parses the header dict: descr '<f4', fortran_order False, and shape, each exactly once.
static int npy_header_parse(const char *path, const char *text, size_t n, int *ndim, int64_t *shape,
                            char *err, size_t errlen) {
    const int E = IMAGEIO_EFORMAT;
    Scan s = {text, text + n};
    int seen_descr = 0, seen_order = 0, seen_shape = 0;
    if (scan_char(&s, '{') != 0)
        return errmsg_set(err, errlen, E, "%s: NPY header is not a dict", path);
    for (;;) {
        if (scan_char(&s, '}') == 0)
            break;
        char key[32], val[32];
        if (scan_string(&s, key, sizeof(key)) != 0 || scan_char(&s, ':') != 0)
            return errmsg_set(err, errlen, E, "%s: NPY header dict is malformed", path);
        if (strcmp(key, "descr") == 0 && !seen_descr) {
            if (scan_string(&s, val, sizeof(val)) != 0)
                return errmsg_set(err, errlen, E, "%s: NPY 'descr' is not a string", path);
            if (strcmp(val, "<f4") != 0)
                return errmsg_set(err, errlen, E,
                                    "%s: NPY dtype is '%s', only '<f4' (float32) is read", path,
                                    val);
            seen_descr = 1;
        } else if (strcmp(key, "fortran_order") == 0 && !seen_order) {
            if (scan_word(&s, "True") == 0)
                return errmsg_set(err, errlen, E,
                                    "%s: NPY array is in Fortran order, only C order is read",
                                    path);
            if (scan_word(&s, "False") != 0)
                return errmsg_set(err, errlen, E, "%s: NPY 'fortran_order' is not True or False",
                                    path);
            seen_order = 1;
        } else if (strcmp(key, "shape") == 0 && !seen_shape) {
            if (scan_shape(&s, ndim, shape) != 0)
                return errmsg_set(
                    err, errlen, E,
                    "%s: NPY 'shape' is not a tuple of at most %d non-negative integers", path,
                    NPY_MAX_DIMS);
            seen_shape = 1;
        } else {
            return errmsg_set(err, errlen, E,
                                "%s: NPY header has an unexpected or repeated key '%s'", path, key);
        }
        if (scan_char(&s, ',') != 0) {
            if (scan_char(&s, '}') != 0)
                return errmsg_set(err, errlen, E, "%s: NPY header dict is malformed", path);
            break;
        }
    }
    scan_space(&s);
    if (s.p != s.end)
        return errmsg_set(err, errlen, E, "%s: NPY header has bytes after the dict", path);
    if (!seen_descr || !seen_order || !seen_shape)
        return errmsg_set(err, errlen, E, "%s: NPY header lacks %s", path,
                            !seen_descr   ? "'descr'"
                            : !seen_order ? "'fortran_order'"
                                          : "'shape'");
    return 0;
}

int npy_read_f32(const char *path, float **data, int *ndim, int64_t shape[NPY_MAX_DIMS], char *err,
                 size_t errlen) {
    *data = NULL;
    *ndim = 0;
    if (!path)
        return errmsg_set(err, errlen, IMAGEIO_EINVAL, "npy: NULL path");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errmsg_set(err, errlen, IMAGEIO_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return errmsg_set(err, errlen, IMAGEIO_EIO, "%s: not a regular file", path);
    }
    size_t size = (size_t)st.st_size;
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) {
        close(fd);
        return errmsg_set(err, errlen, IMAGEIO_ENOMEM, "%s: out of memory for %zu bytes", path,
                            size);
    }
    size_t got = 0;
    while (got < size) {
        ssize_t k = read(fd, buf + got, size - got);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break;
        got += (size_t)k;
    }
    close(fd);
    int rc = 0;
    if (got != size) {
        rc = errmsg_set(err, errlen, IMAGEIO_EIO, "%s: read failed", path);
        goto done;
    }

    if (size < 10 || memcmp(buf, npy_magic, 6) != 0) {
        rc = errmsg_set(err, errlen, IMAGEIO_EFORMAT, "%s: not an NPY file (bad magic)", path);
        goto done;
    }
    int major = buf[6];
    size_t prefix, hlen;
    if (major == 1) {
        prefix = 10;
        hlen = buf[8] | (size_t)buf[9] << 8;
    } else if (major == 2 || major == 3) {
        if (size < 12) {
            rc = errmsg_set(err, errlen, IMAGEIO_EFORMAT, "%s: truncated NPY header", path);
            goto done;
        }
        prefix = 12;
        hlen = buf[8] | (size_t)buf[9] << 8 | (size_t)buf[10] << 16 | (size_t)buf[11] << 24;
    } else {
        rc = errmsg_set(err, errlen, IMAGEIO_EFORMAT, "%s: unsupported NPY version %d.%d", path,
                          major, buf[7]);
        goto done;
    }
    if (hlen > size - prefix) {
        rc = errmsg_set(err, errlen, IMAGEIO_EFORMAT,
                          "%s: NPY header length %zu runs past the end of the file (%zu bytes)",
                          path, hlen, size);
        goto done;
    }
    int64_t dims[NPY_MAX_DIMS];
    int nd = 0;
    rc = npy_header_parse(path, (const char *)buf + prefix, hlen, &nd, dims, err, errlen);
    if (rc != 0)
        goto done;
    uint64_t count;
    if (npy_count(nd, dims, &count) != 0) {
        rc = errmsg_set(err, errlen, IMAGEIO_EFORMAT, "%s: NPY shape overflows", path);
        goto done;
    }
    size_t have = size - prefix - hlen;
    if ((uint64_t)have != count * 4) {
        rc = errmsg_set(err, errlen, IMAGEIO_EFORMAT,
                          "%s: NPY data is %zu bytes but its shape needs %llu (%s)", path, have,
                          (unsigned long long)(count * 4),
                          (uint64_t)have < count * 4 ? "truncated" : "trailing bytes");
        goto done;
    }
    float *out = malloc(count ? count * 4 : 4);
    if (!out) {
        rc = errmsg_set(err, errlen, IMAGEIO_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    memcpy(out, buf + prefix + hlen, count * 4);
    *data = out;
    *ndim = nd;
    for (int i = 0; i < nd; i++)
        shape[i] = dims[i];

done:
    free(buf);
    return rc;
}
