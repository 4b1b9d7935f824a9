// pngdir.c — a folder of PNGs as a dataset, and dataset subsets (pngdir.h).
#include "generator/data/pngdir.h"

#include <dirent.h>
#include <limits.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int by_name(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int is_png(const char *name) {
    size_t n = strlen(name);
    return n > 4 && !strcasecmp(name + n - 4, ".png") && name[0] != '.';
}

// Area resampling of one channel plane: src (sh, sw) into dst (h, w).
static void resample(const float *src, int sh, int sw, float *dst, int h, int w) {
    for (int y = 0; y < h; y++) {
        double y0 = (double)y * sh / h, y1 = (double)(y + 1) * sh / h;
        for (int x = 0; x < w; x++) {
            double x0 = (double)x * sw / w, x1 = (double)(x + 1) * sw / w, acc = 0, area = 0;
            for (int sy = (int)y0; sy < sh && sy < y1; sy++) {
                double fy = (sy + 1 < y1 ? sy + 1 : y1) - (sy > y0 ? sy : y0);
                for (int sx = (int)x0; sx < sw && sx < x1; sx++) {
                    double fx = (sx + 1 < x1 ? sx + 1 : x1) - (sx > x0 ? sx : x0);
                    acc += fx * fy * src[(long)sy * sw + sx];
                    area += fx * fy;
                }
            }
            dst[(long)y * w + x] = (float)(area > 0 ? acc / area : 0);
        }
    }
}

int pngdir_load(Dataset *d, const char *dir, int c, int h, int w, long limit, char *err,
                size_t errlen) {
    memset(d, 0, sizeof *d);
    if ((c != 1 && c != 3) || h < 1 || w < 1) {
        snprintf(err, errlen, "%s: images must be 1 or 3 channels", dir);
        return FMNIST_EINVAL;
    }
    DIR *dp = opendir(dir);
    if (!dp) {
        snprintf(err, errlen, "%s: cannot open the folder", dir);
        return FMNIST_ENOENT;
    }
    char **names = NULL;
    long n = 0, cap = 0, total = 0;
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(dp))) {
        if (!is_png(e->d_name)) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 256;
            char **nn = realloc(names, (size_t)cap * sizeof *nn);
            if (!nn) {
                rc = FMNIST_ENOMEM;
                break;
            }
            names = nn;
        }
        if (!(names[n] = strdup(e->d_name))) {
            rc = FMNIST_ENOMEM;
            break;
        }
        n++;
    }
    closedir(dp);
    if (!rc && n == 0) {
        snprintf(err, errlen, "%s: no .png files", dir);
        rc = FMNIST_ENOENT;
    }
    if (!rc) {
        qsort(names, (size_t)n, sizeof *names, by_name);
        total = n;
        if (limit > 0 && n > limit) n = limit;
        long P = (long)c * h * w;
        d->images = malloc((size_t)n * P * sizeof(float));
        d->labels = calloc((size_t)n, sizeof(int32_t));
        if (!d->images || !d->labels) rc = FMNIST_ENOMEM;
    }
    float *plane = NULL;
    for (long i = 0; !rc && i < n; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        png_image im;
        memset(&im, 0, sizeof im);
        im.version = PNG_IMAGE_VERSION;
        if (!png_image_begin_read_from_file(&im, path)) {
            snprintf(err, errlen, "%s: %s", path, im.message);
            rc = FMNIST_EFORMAT;
            break;
        }
        im.format = PNG_FORMAT_RGBA;
        int sw = (int)im.width, sh = (int)im.height;
        unsigned char *px = malloc(PNG_IMAGE_SIZE(im));
        float *p2 = realloc(plane, (size_t)sw * sh * sizeof(float));
        if (!px || !p2) {
            free(px);
            png_image_free(&im);
            rc = FMNIST_ENOMEM;
            break;
        }
        plane = p2;
        if (!png_image_finish_read(&im, NULL, px, 0, NULL)) {
            snprintf(err, errlen, "%s: %s", path, im.message);
            free(px);
            rc = FMNIST_EFORMAT;
            break;
        }
        float *out = d->images + i * (long)c * h * w;
        for (int ch = 0; ch < c; ch++) {
            for (long k = 0; k < (long)sw * sh; k++) {
                const unsigned char *q = px + 4 * k;
                double a = q[3] / 255.0;
                double v = c == 1 ? (0.299 * q[0] + 0.587 * q[1] + 0.114 * q[2]) : q[ch];
                plane[k] = (float)(v * a / 127.5 - 1.0); // over black
            }
            resample(plane, sh, sw, out + (long)ch * h * w, h, w);
        }
        free(px);
    }
    free(plane);
    for (long i = 0; i < (total ? total : n); i++) free(names[i]);
    free(names);
    if (rc) {
        dataset_free(d);
        return rc;
    }
    d->n = (int)n;
    d->c = c;
    d->h = h;
    d->w = w;
    d->n_classes = 0;
    return 0;
}

int dataset_subset(Dataset *d, const int *classes, int n_cls, long limit, char *err, size_t errlen) {
    long P = (long)d->c * d->h * d->w, m = 0;
    for (long i = 0; i < d->n && (limit <= 0 || m < limit); i++) {
        int keep = n_cls == 0;
        for (int k = 0; k < n_cls && !keep; k++) keep = d->labels && d->labels[i] == classes[k];
        if (!keep) continue;
        if (m != i) {
            memmove(d->images + m * P, d->images + i * P, (size_t)P * sizeof(float));
            if (d->labels) d->labels[m] = d->labels[i];
        }
        m++;
    }
    if (m == 0) {
        snprintf(err, errlen, "the subset of the data is empty");
        return FMNIST_EINVAL;
    }
    d->n = (int)m;
    return 0;
}

int dataset_is_fmnist(const char *dir) {
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/train-images-idx3-ubyte.gz", dir);
    return access(p, R_OK) == 0;
}

int dataset_load(Dataset *d, const char *dir, int train, int c, int h, int w, const int *classes,
                 int n_cls, long limit, char *err, size_t errlen) {
    struct stat st;
    if (!dataset_is_fmnist(dir) && (stat(dir, &st) || !S_ISDIR(st.st_mode))) {
        snprintf(err, errlen, "%s: no such folder (training data is a folder of Fashion-MNIST's IDX "
                              "files, from Debian's dataset-fashion-mnist, or a folder of PNGs)", dir);
        return FMNIST_ENOENT;
    }
    int rc = dataset_is_fmnist(dir) ? fmnist_load(d, dir, train, err, errlen)
                                    : pngdir_load(d, dir, c, h, w, 0, err, errlen);
    if (!rc && (n_cls || (train && limit > 0)))
        rc = dataset_subset(d, classes, n_cls, train ? limit : 0, err, errlen);
    return rc;
}
