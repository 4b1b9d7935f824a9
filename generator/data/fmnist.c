// fmnist.c — the Fashion-MNIST IDX loader: gzip via zlib, validated, padded to 32x32, in [-1, 1].
//
// IDX (LeCun's MNIST format): a big-endian u32 magic 0x00000800 | (type << 8) | ndim, where type
// 0x08 is u8, then ndim big-endian u32 dimensions, then the raw data. Images are 0x00000803 (n, 28,
// 28), labels 0x00000801 (n). Both files are checked for magic, dimensions, matching counts, labels
// in range, truncation and trailing bytes before anything is returned.
//
// It is deliberately not a general IDX reader (only the u8 layouts Fashion-MNIST uses), and it does
// no augmentation or shuffling: that is the training loop's business.
#include "generator/data/fmnist.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "generator/data/imageio.h"
#include "util/errmsg.h"

#define IDX_MAGIC_IMAGES 0x00000803u
#define IDX_MAGIC_LABELS 0x00000801u
#define PAD ((FMNIST_SIZE - FMNIST_RAW_SIZE) / 2)
// More images than any real Fashion-MNIST file has by far: a header claiming more is damaged, and
// refusing it keeps a hostile count from driving a huge allocation.
#define MAX_IMAGES 10000000

const char *const fmnist_class_names[FMNIST_CLASSES] = {
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot",
};

const char *fmnist_strerror(int code) {
    switch (code) {
#define X(name, c, msg)                                                                            \
    case c:                                                                                        \
        return msg;
        FMNIST_ERRNO_MAP(X)
#undef X
    case 0:
        return "success";
    default:
        return "unknown fmnist error";
    }
}

void dataset_free(Dataset *d) {
    if (!d)
        return;
    free(d->images);
    free(d->labels);
    memset(d, 0, sizeof(*d));
}

// Opens path for gzip reading (zlib also reads a plain file transparently; the magic check then
// decides). The message for a missing file says where the file comes from.
static int idx_open(gzFile *out, const char *path, char *err, size_t errlen) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return errmsg_set(
                err, errlen, FMNIST_ENOENT,
                "%s: not found (Fashion-MNIST comes from Debian's dataset-fashion-mnist: "
                "`apt-get install dataset-fashion-mnist`, or `make deps`)",
                path);
        return errmsg_set(err, errlen, FMNIST_EIO, "%s: cannot open: %s", path, strerror(errno));
    }
    gzFile gz = gzdopen(fd, "rb");
    if (!gz) {
        close(fd);
        return errmsg_set(err, errlen, FMNIST_ENOMEM, "%s: out of memory opening gzip stream",
                            path);
    }
    gzbuffer(gz, 1 << 17);
    *out = gz;
    return 0;
}

// Reads exactly n bytes; a short read is truncation, a zlib error is damage.
static int idx_read(gzFile gz, const char *path, void *buf, size_t n, const char *what, char *err,
                    size_t errlen) {
    uint8_t *p = buf;
    size_t got = 0;
    while (got < n) {
        size_t chunk = n - got > (1u << 30) ? (1u << 30) : n - got;
        int k = gzread(gz, p + got, (unsigned)chunk);
        if (k < 0) {
            int zerr;
            const char *msg = gzerror(gz, &zerr);
            return errmsg_set(err, errlen, zerr == Z_ERRNO ? FMNIST_EIO : FMNIST_EFORMAT,
                                "%s: damaged or truncated gzip stream while reading %s: %s", path,
                                what, zerr == Z_ERRNO ? strerror(errno) : msg);
        }
        if (k == 0)
            break;
        got += (size_t)k;
    }
    if (got < n) {
        // gzread reports a truncated gzip member as a short read with an error set.
        int zerr;
        const char *msg = gzerror(gz, &zerr);
        return errmsg_set(err, errlen, FMNIST_EFORMAT,
                            "%s: truncated: reading %s needs %zu bytes, the file gives %zu%s%s%s",
                            path, what, n, got, zerr != Z_OK ? " (" : "", zerr != Z_OK ? msg : "",
                            zerr != Z_OK ? ")" : "");
    }
    return 0;
}

static int idx_expect_end(gzFile gz, const char *path, char *err, size_t errlen) {
    uint8_t extra;
    int k = gzread(gz, &extra, 1);
    if (k > 0)
        return errmsg_set(err, errlen, FMNIST_EFORMAT, "%s: trailing bytes after the data", path);
    if (k < 0) {
        int zerr;
        const char *msg = gzerror(gz, &zerr);
        return errmsg_set(err, errlen, FMNIST_EFORMAT, "%s: damaged gzip stream at the end: %s",
                            path, msg);
    }
    return 0;
}

static uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

// Reads an IDX header with the given magic and ndim dimensions into dims.
static int idx_header(gzFile gz, const char *path, uint32_t magic, int ndim, uint32_t *dims,
                      char *err, size_t errlen) {
    uint8_t head[16];
    int rc = idx_read(gz, path, head, 4 + 4 * (size_t)ndim, "the IDX header", err, errlen);
    if (rc != 0)
        return rc;
    uint32_t m = be32(head);
    if (m != magic)
        return errmsg_set(err, errlen, FMNIST_EFORMAT,
                            "%s: bad IDX magic 0x%08x, expected 0x%08x (u8, %d dimensions)", path,
                            m, magic, ndim);
    for (int i = 0; i < ndim; i++)
        dims[i] = be32(head + 4 + 4 * i);
    return 0;
}

int fmnist_load(Dataset *d, const char *dir, int train, char *err, size_t errlen) {
    memset(d, 0, sizeof(*d));
    if (!dir)
        return errmsg_set(err, errlen, FMNIST_EINVAL, "fmnist: NULL directory");
    const char *split = train ? "train" : "t10k";
    char images_path[4096], labels_path[4096];
    if (snprintf(images_path, sizeof(images_path), "%s/%s-images-idx3-ubyte.gz", dir, split) >=
            (int)sizeof(images_path) ||
        snprintf(labels_path, sizeof(labels_path), "%s/%s-labels-idx1-ubyte.gz", dir, split) >=
            (int)sizeof(labels_path))
        return errmsg_set(err, errlen, FMNIST_EINVAL, "fmnist: directory name too long: %s", dir);

    int rc;
    gzFile gz = NULL;
    uint8_t *raw = NULL;
    uint32_t dims[3];

    // Labels first: they are small, and their count sizes the image read.
    if ((rc = idx_open(&gz, labels_path, err, errlen)) != 0)
        goto fail;
    if ((rc = idx_header(gz, labels_path, IDX_MAGIC_LABELS, 1, dims, err, errlen)) != 0)
        goto fail;
    uint32_t n = dims[0];
    if (n == 0 || n > MAX_IMAGES) {
        rc = errmsg_set(err, errlen, FMNIST_EFORMAT, "%s: implausible label count %u",
                          labels_path, n);
        goto fail;
    }
    raw = malloc(n);
    d->labels = malloc(sizeof(int32_t) * n);
    if (!raw || !d->labels) {
        rc = errmsg_set(err, errlen, FMNIST_ENOMEM, "%s: out of memory", labels_path);
        goto fail;
    }
    if ((rc = idx_read(gz, labels_path, raw, n, "the labels", err, errlen)) != 0)
        goto fail;
    if ((rc = idx_expect_end(gz, labels_path, err, errlen)) != 0)
        goto fail;
    for (uint32_t i = 0; i < n; i++) {
        if (raw[i] >= FMNIST_CLASSES) {
            rc = errmsg_set(err, errlen, FMNIST_EFORMAT,
                              "%s: label %u of image %u is not in 0..%d", labels_path, raw[i], i,
                              FMNIST_CLASSES - 1);
            goto fail;
        }
        d->labels[i] = raw[i];
    }
    gzclose(gz);
    gz = NULL;
    free(raw);
    raw = NULL;

    if ((rc = idx_open(&gz, images_path, err, errlen)) != 0)
        goto fail;
    if ((rc = idx_header(gz, images_path, IDX_MAGIC_IMAGES, 3, dims, err, errlen)) != 0)
        goto fail;
    if (dims[0] != n) {
        rc = errmsg_set(err, errlen, FMNIST_EFORMAT, "%s: holds %u images but %s holds %u labels",
                          images_path, dims[0], labels_path, n);
        goto fail;
    }
    if (dims[1] != FMNIST_RAW_SIZE || dims[2] != FMNIST_RAW_SIZE) {
        rc = errmsg_set(err, errlen, FMNIST_EFORMAT, "%s: images are %ux%u, expected %dx%d",
                          images_path, dims[1], dims[2], FMNIST_RAW_SIZE, FMNIST_RAW_SIZE);
        goto fail;
    }
    const size_t raw_px = FMNIST_RAW_SIZE * FMNIST_RAW_SIZE, px = FMNIST_SIZE * FMNIST_SIZE;
    raw = malloc((size_t)n * raw_px);
    d->images = malloc(sizeof(float) * (size_t)n * px);
    if (!raw || !d->images) {
        rc = errmsg_set(err, errlen, FMNIST_ENOMEM, "%s: out of memory for %u images",
                          images_path, n);
        goto fail;
    }
    if ((rc = idx_read(gz, images_path, raw, (size_t)n * raw_px, "the images", err, errlen)) != 0)
        goto fail;
    if ((rc = idx_expect_end(gz, images_path, err, errlen)) != 0)
        goto fail;
    gzclose(gz);
    gz = NULL;

#pragma omp parallel for schedule(static)
    for (long i = 0; i < (long)n; i++) {
        float *out = d->images + (size_t)i * px;
        const uint8_t *in = raw + (size_t)i * raw_px;
        for (size_t k = 0; k < px; k++)
            out[k] = -1.0f;
        for (int y = 0; y < FMNIST_RAW_SIZE; y++) {
            for (int x = 0; x < FMNIST_RAW_SIZE; x++) {
                out[(y + PAD) * FMNIST_SIZE + x + PAD] =
                    in[y * FMNIST_RAW_SIZE + x] / 127.5f - 1.0f;
            }
        }
    }
    free(raw);
    d->n = (int)n;
    d->c = 1;
    d->h = FMNIST_SIZE;
    d->w = FMNIST_SIZE;
    d->n_classes = FMNIST_CLASSES;
    d->class_names = fmnist_class_names;
    return 0;

fail:
    if (gz)
        gzclose(gz);
    free(raw);
    dataset_free(d);
    return rc;
}
