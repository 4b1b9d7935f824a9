// quality.c — FD of a checkpoint's frames against the test set (quality.h).
#include "generator/quality.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "generator/data/pngdir.h"
#include "generator/gan.h"
#include "kernels/conv.h"
#include "kernels/kernels.h"

#define QUALITY_G_BATCH 64     // G's batch for the frames: their rounding stays the same
#define QUALITY_EVAL_BATCH 128 // the evaluator's

int quality_init(Quality *q, const char *eval_model, const char *data_dir, const int *classes,
                 int n_cls, char *err, size_t errlen) {
    memset(q, 0, sizeof *q);
    double acc;
    Dataset test = {0};
    float *feat = NULL;
    int rc = classifier_load(&q->c, eval_model, QUALITY_EVAL_BATCH, &acc, err, errlen);
    if (!rc && !dataset_is_fmnist(data_dir)) {
        snprintf(err, errlen, "FD is measured on Fashion-MNIST only (data is %s)", data_dir);
        rc = -1;
    }
    if (!rc) // the test images of the classes the run trains on
        rc = dataset_load(&test, data_dir, 0, 1, 32, 32, classes, n_cls, 0, err, errlen);
    if (!rc && !(feat = malloc(sizeof(float) * test.n * CLASSIFIER_FEATURES))) {
        snprintf(err, errlen, "out of memory");
        rc = -1;
    }
    if (!rc && (rc = classifier_apply(&q->c, test.images, test.n, feat, NULL, NULL)))
        snprintf(err, errlen, "evaluator: %s", kernels_strerror(rc));
    if (!rc && (rc = fid_stats_compute(&q->ref, feat, test.n, CLASSIFIER_FEATURES)))
        snprintf(err, errlen, "test-set features: %s", fid_strerror(rc));
    free(feat);
    dataset_free(&test);
    return rc ? -1 : 0;
}

void quality_free(Quality *q) {
    classifier_free(&q->c);
    fid_stats_free(&q->ref);
    memset(q, 0, sizeof *q);
}

double quality_fd(Quality *q, const char *path, long n, int fixed_class, char *err, size_t errlen) {
    Generator g;
    double fd = NAN;
    float *z = NULL, *img = NULL, *feat = NULL;
    int32_t *y = NULL;
    FidStats st = {0};
    if (generator_load(&g, path, QUALITY_G_BATCH, err, errlen)) return NAN;
    int held = conv2d_fp32_hold(1);
    const SaganConfig *c = &g.cfg;
    long P = (long)c->channels * c->img * c->img;
    int rc;
    if (c->channels != 1 || c->img != CLASSIFIER_IMG ||
        (c->n_classes && c->n_classes != CLASSIFIER_CLASSES)) {
        snprintf(err, errlen, "FD needs a 1x32x32 Fashion-MNIST model");
        goto done;
    }
    z = malloc(sizeof(float) * n * c->z_dim);
    y = malloc(sizeof(int32_t) * n);
    img = malloc(sizeof(float) * n * P);
    feat = malloc(sizeof(float) * n * CLASSIFIER_FEATURES);
    if (!z || !y || !img || !feat) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    gan_sample_latents(c, 1, n, c->n_classes ? fixed_class : -1, z, y);
    if ((rc = generator_draw(&g, z, c->n_classes ? y : NULL, n, QUALITY_G_BATCH, img))) {
        snprintf(err, errlen, "generator: %s", kernels_strerror(rc));
        goto done;
    }
    if ((rc = classifier_apply(&q->c, img, n, feat, NULL, NULL)))
        snprintf(err, errlen, "evaluator: %s", kernels_strerror(rc));
    else if ((rc = fid_stats_compute(&st, feat, n, CLASSIFIER_FEATURES)) ||
             (rc = fid_stats_distance(&fd, &st, &q->ref))) {
        snprintf(err, errlen, "FD: %s", fid_strerror(rc));
        fd = NAN;
    }
done:
    conv2d_fp32_hold(held);
    fid_stats_free(&st);
    generator_free(&g);
    free(z);
    free(y);
    free(img);
    free(feat);
    return fd;
}
