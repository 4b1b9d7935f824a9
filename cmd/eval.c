// eval.c — `steer eval` (Fréchet distance and class histogram of generated images, against
// the Fashion-MNIST test set) and `steer train-eval` (trains the evaluator those use).
//
// Argument parsing, the training loop's schedule (shuffling, cosine learning rate),
// progress lines and files. No model math: the net is classifier.c, the distance fid.c.
// Definitions and the exact commands are in docs/eval.md.
#include "cmd/args.h"
#include "cmd/commands.h"
#include "util/clock.h"

#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "generator/data/fmnist.h"
#include "generator/data/imageio.h"
#include "generator/classifier.h"
#include "generator/fid.h"
#include "generator/gan.h"
#include "kernels/kernels.h"
#include "kernels/rng.h"

#define EVAL_MODEL_DEFAULT "models/fmnist-eval.safetensors"
#define EVAL_N_DEFAULT 10000
#define EVAL_N_MAX 200000      // 200k images are 800 MB of floats: more is a typo
#define EVAL_BATCH 128         // evaluator batch
#define EVAL_G_BATCH 64        // generator batch
#define EVAL_CONFIDENT 0.9f    // "confident" = the arg-max's softmax probability above this
#define EVAL_RANGE_SLACK 1e-3f // samples may overshoot [-1, 1] by this much (rounding)

static const long IMG = (long)CLASSIFIER_IMG * CLASSIFIER_IMG; // floats per image (1x32x32)

// Loads the Fashion-MNIST train or test set, with the loader's message on failure.
static int load_fmnist(Dataset *d, const char *dir, int train, const char *cmd) {
    char err[1024];
    int rc = fmnist_load(d, dir, train, err, sizeof err);
    if (rc)
        fprintf(stderr, "steer %s: %s\n", cmd, err);
    return rc;
}

// Fraction of the test set the classifier labels right (evaluation mode, whole set).
static int test_accuracy(Classifier *c, const Dataset *test, double *acc) {
    int32_t *pred = malloc(sizeof(int32_t) * test->n);
    if (!pred)
        return KERNELS_ENOMEM;
    int rc = classifier_apply(c, test->images, test->n, NULL, pred, NULL);
    long right = 0;
    for (int i = 0; !rc && i < test->n; i++)
        right += pred[i] == test->labels[i];
    *acc = (double)right / test->n;
    free(pred);
    return rc;
}

// ---------------------------------------------------------------------------------------------
// steer train-eval

static void train_usage(FILE *f) {
    fprintf(f,
            "usage: steer train-eval [options]\n"
            "Trains the evaluator classifier (docs/eval.md) on the Fashion-MNIST training set,\n"
            "prints its test accuracy and writes it as safetensors.\n"
            "  --epochs E     passes over the 60,000 training images (default 3)\n"
            "  --iters N      training steps instead of epochs (for quick runs and tests)\n"
            "  --seed S       seed of the init, the shuffles and dropout (default 1)\n"
            "  --lr X         Adam learning rate, decayed to 0 on a cosine (default 2e-3)\n"
            "  --batch B      batch size (default 128)\n"
            "  --out FILE     where to write the model (default %s)\n"
            "  --data DIR     Fashion-MNIST folder (default %s)\n",
            EVAL_MODEL_DEFAULT, FMNIST_DIR);
}

// Checks up front that the output file's folder exists and is writable, so a long run does not
// end in a failed save.
static int check_writable(const char *path) {
    char buf[PATH_MAX];
    snprintf(buf, sizeof buf, "%s", path);
    const char *dir = dirname(buf);
    if (access(dir, W_OK)) {
        fprintf(stderr, "steer train-eval: cannot write %s: folder '%s': %s\n", path, dir,
                strerror(errno));
        return -1;
    }
    return 0;
}

int cmd_train_eval(int argc, char **argv) {
    const char *cmd = "train-eval", *out = EVAL_MODEL_DEFAULT, *data_dir = FMNIST_DIR;
    long epochs = 3, iters = 0, seed = 1, batch = 128;
    float lr = 2e-3f;
    static const struct option opts[] = {
        {"epochs", 1, 0, 'e'}, {"iters", 1, 0, 'i'}, {"seed", 1, 0, 's'},
        {"lr", 1, 0, 'l'},     {"batch", 1, 0, 'b'}, {"out", 1, 0, 'o'},
        {"data", 1, 0, 'd'},   {"help", 0, 0, 'h'},  {0, 0, 0, 0}};
    optind = 1;
    int o;
    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (o) {
        case 'e':
            if (args_long(cmd, optarg, 1, 1000, "--epochs", &epochs))
                return 2;
            break;
        case 'i':
            if (args_long(cmd, optarg, 1, 100000000, "--iters", &iters))
                return 2;
            break;
        case 's':
            if (args_long(cmd, optarg, 0, LONG_MAX, "--seed", &seed))
                return 2;
            break;
        case 'l':
            if (args_float(cmd, optarg, 1e-7, 1, "--lr", &lr))
                return 2;
            break;
        case 'b':
            if (args_long(cmd, optarg, 1, 4096, "--batch", &batch))
                return 2;
            break;
        case 'o':
            out = optarg;
            break;
        case 'd':
            data_dir = optarg;
            break;
        case 'h':
        default:
            return args_usage_exit(train_usage, o);
        }
    }
    if (args_none_left(cmd, argc, argv))
        return 2;
    if (check_writable(out))
        return 1;

    Dataset train = {0}, test = {0};
    Classifier c = {0};
    float *x = NULL;
    int32_t *y = NULL, *perm = NULL;
    int status = 1, rc;
    if (load_fmnist(&train, data_dir, 1, cmd) || load_fmnist(&test, data_dir, 0, cmd))
        goto done;
    if (train.c != 1 || train.h != CLASSIFIER_IMG || train.w != CLASSIFIER_IMG) {
        fprintf(stderr, "steer train-eval: %s: images are %dx%dx%d, the evaluator needs 1x32x32\n",
                data_dir, train.c, train.h, train.w);
        goto done;
    }
    int B = (int)batch;
    if (classifier_init(&c, B, (uint64_t)seed))
        goto oom;
    x = malloc(sizeof(float) * B * IMG);
    y = malloc(sizeof(int32_t) * B);
    perm = malloc(sizeof(int32_t) * train.n);
    if (!x || !y || !perm)
        goto oom;
    long steps_per_epoch = train.n / B;
    if (steps_per_epoch < 1) {
        fprintf(stderr, "steer train-eval: --batch %d is larger than the training set\n", B);
        goto done;
    }
    long total = iters ? iters : epochs * steps_per_epoch;
    // The data stream (shuffles) is separate from the init and dropout streams. No augmentation:
    // random horizontal flips cost a point of test accuracy at this budget (87.5% against 88.3%
    // after one epoch), and the evaluator only has to know the data, not generalize beyond it.
    Rng rng;
    rng_seed(&rng, (uint64_t)seed * 2 + 7);
    for (int i = 0; i < train.n; i++)
        perm[i] = i;
    fprintf(stderr,
            "train-eval: %d training images, batch %d, %ld steps (%.2f epochs), lr %g cosine, "
            "seed %ld\n",
            train.n, B, total, (double)total / steps_per_epoch, lr, seed);

    double t0 = clock_now_s(), loss_sum = 0;
    long seen_sum = 0, right_sum = 0, window = 0;
    const long log_every = 50;
    for (long step = 0; step < total; step++) {
        long pos = step % steps_per_epoch;
        if (pos == 0) // a fresh Fisher-Yates shuffle per epoch
            for (int i = train.n - 1; i > 0; i--) {
                int j = (int)rng_below(&rng, (uint32_t)i + 1);
                int32_t tmp = perm[i];
                perm[i] = perm[j];
                perm[j] = tmp;
            }
        for (int b = 0; b < B; b++) {
            int32_t i = perm[pos * B + b];
            memcpy(x + b * IMG, train.images + (long)i * IMG, sizeof(float) * IMG);
            y[b] = train.labels[i];
        }
        // Cosine decay to 0 (Loshchilov & Hutter 2017, SGDR without restarts).
        float lr_t = (float)(0.5 * lr * (1.0 + cos(M_PI * (double)step / (double)total)));
        float loss;
        int right;
        if ((rc = classifier_train_step(&c, x, y, B, lr_t, &loss, &right))) {
            fprintf(stderr, "steer train-eval: step %ld: %s\n", step, kernels_strerror(rc));
            goto done;
        }
        if (!isfinite(loss)) {
            fprintf(stderr,
                    "steer train-eval: step %ld: the loss is %g (diverged; try a lower --lr)\n",
                    step, loss);
            goto done;
        }
        loss_sum += loss;
        right_sum += right;
        seen_sum += B;
        window++;
        if ((step + 1) % log_every == 0 || step + 1 == total) {
            double el = clock_now_s() - t0, ips = (double)(step + 1) * B / el;
            char eta[32];
            args_duration(eta, sizeof eta, (double)(total - step - 1) * B / ips);
            fprintf(stderr,
                    "step %ld/%ld  epoch %.2f  loss %.4f  train acc %.4f  lr %.2e  %.0f img/s  "
                    "eta %s\n",
                    step + 1, total, (double)(step + 1) / steps_per_epoch, loss_sum / window,
                    (double)right_sum / seen_sum, lr_t, ips, eta);
            loss_sum = 0;
            right_sum = seen_sum = window = 0;
        }
    }
    double train_s = clock_now_s() - t0, acc;
    if ((rc = test_accuracy(&c, &test, &acc))) {
        fprintf(stderr, "steer train-eval: evaluating: %s\n", kernels_strerror(rc));
        goto done;
    }
    char dur[32];
    args_duration(dur, sizeof dur, train_s);
    printf("trained %ld steps in %s (%.1f s)\n", total, dur, train_s);
    printf("test accuracy %.4f (%ld of %d)\n", acc, lround(acc * test.n), test.n);

    char v_acc[32], v_steps[32], v_seed[32], v_batch[32], v_lr[32], err[1024];
    snprintf(v_acc, sizeof v_acc, "%.4f", acc);
    snprintf(v_steps, sizeof v_steps, "%ld", total);
    snprintf(v_seed, sizeof v_seed, "%ld", seed);
    snprintf(v_batch, sizeof v_batch, "%d", B);
    snprintf(v_lr, sizeof v_lr, "%g", lr);
    const char *meta[] = {"dataset",
                          "fashion-mnist",
                          "input",
                          "1x32x32 in [-1, 1]",
                          "features",
                          "fc1 after LReLU (256)",
                          "test_accuracy",
                          v_acc,
                          "train_steps",
                          v_steps,
                          "seed",
                          v_seed,
                          "batch",
                          v_batch,
                          "lr",
                          v_lr,
                          NULL};
    if ((rc = classifier_save(&c, out, meta, err, sizeof err))) {
        fprintf(stderr, "steer train-eval: %s\n", err);
        goto done;
    }
    printf("wrote %s\n", out);
    status = 0;
    goto done;
oom:
    fprintf(stderr, "steer train-eval: out of memory\n");
done:
    classifier_free(&c);
    dataset_free(&train);
    dataset_free(&test);
    free(x);
    free(y);
    free(perm);
    return status;
}

// ---------------------------------------------------------------------------------------------
// steer eval

static void eval_usage(FILE *f) {
    fprintf(
        f,
        "usage: steer eval (--ckpt FILE | --samples FILE.npy | --test-halves) [options]\n"
        "Frechet distance (FD) between the evaluator's features of the samples and those of\n"
        "the Fashion-MNIST test set (10,000 images), and the samples' class histogram.\n"
        "  --ckpt FILE        sample a steer checkpoint (classes uniform if conditional)\n"
        "  --samples FILE     float32 .npy of shape (N, 1, 32, 32) in [-1, 1]\n"
        "  --test-halves      FD between the test set's first and last 5,000: the floor\n"
        "  --n N              samples to draw or use (default %d for --ckpt, all for --samples)\n"
        "  --seed S           seed of the latents (default 1)\n"
        "  --eval-model FILE  the evaluator (default %s)\n"
        "  --data DIR         Fashion-MNIST folder (default %s)\n"
        "FD values depend on N (smaller N, larger FD): compare runs at the same N.\n",
        EVAL_N_DEFAULT, EVAL_MODEL_DEFAULT, FMNIST_DIR);
}

// Samples n images (n, 1, 32, 32) from the checkpoint's generator; y gets the classes asked of a
// conditional model (or is left alone). Returns 0 or 1 with the message printed.
static int sample_checkpoint(const char *path, long n, uint64_t seed, float *images, int32_t *y,
                             int *conditional) {
    char err[1024];
    Generator g;
    float *z = NULL;
    int status = 1, rc;
    if ((rc = generator_load(&g, path, EVAL_G_BATCH, err, sizeof err))) {
        fprintf(stderr, "steer eval: %s\n", err);
        goto done;
    }
    const SaganConfig *c = &g.cfg;
    if (c->channels != 1 || c->img != CLASSIFIER_IMG) {
        fprintf(stderr,
                "steer eval: %s: the model makes %dx%dx%d images; the evaluator is for 1x32x32 "
                "(Fashion-MNIST)\n",
                path, c->channels, c->img, c->img);
        goto done;
    }
    if (!(z = malloc(sizeof(float) * n * c->z_dim))) {
        fprintf(stderr, "steer eval: out of memory for %ld latents\n", n);
        goto done;
    }
    *conditional = c->n_classes > 0;
    if (c->n_classes && c->n_classes != CLASSIFIER_CLASSES) {
        fprintf(stderr, "steer eval: %s: the model has %d classes, Fashion-MNIST 10\n", path,
                c->n_classes);
        goto done;
    }
    gan_sample_latents(c, seed, n, -1, z, y);
    double t0 = clock_now_s();
    if ((rc = generator_draw(&g, z, c->n_classes ? y : NULL, n, EVAL_G_BATCH, images))) {
        fprintf(stderr, "steer eval: %s: generator: %s\n", path, kernels_strerror(rc));
        goto done;
    }
    fprintf(stderr, "eval: %ld samples from %s (config %s, seed %llu) in %.1f s\n", n, path,
            c->name, (unsigned long long)seed, clock_now_s() - t0);
    status = 0;
done:
    generator_free(&g);
    free(z);
    return status;
}

// Reads samples from an .npy file: (N, 1, 32, 32) or (N, 32, 32) float32 in [-1, 1]. *n is the
// number wanted (0: all), then the number read. Returns 0 or 1 with the message printed.
static int read_samples(const char *path, float **images, long *n) {
    char err[1024];
    int ndim;
    int64_t shape[NPY_MAX_DIMS];
    if (npy_read_f32(path, images, &ndim, shape, err, sizeof err)) {
        fprintf(stderr, "steer eval: %s\n", err);
        return 1;
    }
    int ok =
        (ndim == 4 && shape[1] == 1 && shape[2] == CLASSIFIER_IMG && shape[3] == CLASSIFIER_IMG) ||
        (ndim == 3 && shape[1] == CLASSIFIER_IMG && shape[2] == CLASSIFIER_IMG);
    if (!ok) {
        char s[128] = "";
        for (int d = 0; d < ndim; d++)
            snprintf(s + strlen(s), sizeof s - strlen(s), "%s%lld", d ? ", " : "",
                     (long long)shape[d]);
        fprintf(stderr, "steer eval: %s: shape (%s), expected (N, 1, 32, 32)\n", path, s);
        goto fail;
    }
    if (shape[0] < 2 || (*n && shape[0] < *n)) {
        fprintf(stderr, "steer eval: %s: holds %lld images, need %ld\n", path, (long long)shape[0],
                *n ? *n : 2L);
        goto fail;
    }
    if (!*n) {
        *n = (long)(shape[0] < EVAL_N_MAX ? shape[0] : EVAL_N_MAX);
        if (shape[0] > *n)
            fprintf(stderr, "steer eval: note: %s holds %lld images; using the first %ld\n", path,
                    (long long)shape[0], *n);
    }
    float lo = INFINITY, hi = -INFINITY;
    for (long i = 0; i < *n * IMG; i++) {
        float v = (*images)[i];
        if (!isfinite(v)) {
            fprintf(stderr, "steer eval: %s: image %ld holds a NaN or infinity\n", path, i / IMG);
            goto fail;
        }
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
    }
    if (lo < -1 - EVAL_RANGE_SLACK || hi > 1 + EVAL_RANGE_SLACK) {
        fprintf(stderr, "steer eval: %s: values span [%g, %g], expected [-1, 1]\n", path, lo, hi);
        goto fail;
    }
    if (lo >= 0)
        fprintf(stderr,
                "steer eval: warning: %s has no negative values; images must be in "
                "[-1, 1] (black = -1), not [0, 1]\n",
                path);
    return 0;
fail:
    free(*images);
    *images = NULL;
    return 1;
}

// Fits a Gaussian to feat (n, 256), with the message printed on failure.
static int fit(FidStats *s, const float *feat, long n, const char *what) {
    int rc = fid_stats_compute(s, feat, n, CLASSIFIER_FEATURES);
    if (rc)
        fprintf(stderr, "steer eval: features of %s: %s\n", what, fid_strerror(rc));
    return rc;
}

static int distance(double *fd, const FidStats *a, const FidStats *b) {
    int rc = fid_stats_distance(fd, a, b);
    if (rc)
        fprintf(stderr, "steer eval: Frechet distance: %s\n", fid_strerror(rc));
    return rc;
}

static double confident_fraction(const float *conf, long n) {
    long k = 0;
    for (long i = 0; i < n; i++)
        k += conf[i] > EVAL_CONFIDENT;
    return (double)k / n;
}

int cmd_eval(int argc, char **argv) {
    const char *cmd = "eval", *ckpt = NULL, *samples = NULL, *model = EVAL_MODEL_DEFAULT,
               *data_dir = FMNIST_DIR;
    long n = 0, seed = 1;
    int halves = 0;
    static const struct option opts[] = {
        {"ckpt", 1, 0, 'c'}, {"samples", 1, 0, 'S'}, {"test-halves", 0, 0, 'H'},
        {"n", 1, 0, 'n'},    {"seed", 1, 0, 's'},    {"eval-model", 1, 0, 'm'},
        {"data", 1, 0, 'd'}, {"help", 0, 0, 'h'},    {0, 0, 0, 0}};
    optind = 1;
    int o;
    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (o) {
        case 'c':
            ckpt = optarg;
            break;
        case 'S':
            samples = optarg;
            break;
        case 'H':
            halves = 1;
            break;
        case 'n':
            if (args_long(cmd, optarg, 2, EVAL_N_MAX, "--n", &n))
                return 2;
            break;
        case 's':
            if (args_long(cmd, optarg, 0, LONG_MAX, "--seed", &seed))
                return 2;
            break;
        case 'm':
            model = optarg;
            break;
        case 'd':
            data_dir = optarg;
            break;
        case 'h':
        default:
            return args_usage_exit(eval_usage, o);
        }
    }
    if (args_none_left(cmd, argc, argv))
        return 2;
    if ((ckpt != NULL) + (samples != NULL) + halves != 1) {
        fprintf(stderr, "steer eval: give exactly one of --ckpt, --samples, --test-halves\n");
        eval_usage(stderr);
        return 2;
    }

    Classifier c = {0};
    Dataset test = {0};
    FidStats ref = {0}, gen = {0};
    float *test_feat = NULL, *test_conf = NULL, *images = NULL, *feat = NULL, *conf = NULL;
    int32_t *test_pred = NULL, *pred = NULL, *y = NULL;
    int status = 1, rc, conditional = 0;
    char err[1024];
    double meta_acc, fd;

    if (classifier_load(&c, model, EVAL_BATCH, &meta_acc, err, sizeof err)) {
        fprintf(stderr, "steer eval: %s\n", err);
        if (access(model, F_OK))
            fprintf(stderr, "steer eval: train one with `steer train-eval --out %s`\n", model);
        goto done;
    }
    // The samples before the reference set: a bad input file fails in a moment, not after the
    // test set's 10,000 forwards.
    if (ckpt) {
        if (!n)
            n = EVAL_N_DEFAULT;
        images = malloc(sizeof(float) * n * IMG);
        y = malloc(sizeof(int32_t) * n);
        if (!images || !y)
            goto oom;
        if (sample_checkpoint(ckpt, n, (uint64_t)seed, images, y, &conditional))
            goto done;
    } else if (samples && read_samples(samples, &images, &n)) {
        goto done;
    }
    if (load_fmnist(&test, data_dir, 0, cmd))
        goto done;
    long nt = test.n;
    test_feat = malloc(sizeof(float) * nt * CLASSIFIER_FEATURES);
    test_conf = malloc(sizeof(float) * nt);
    test_pred = malloc(sizeof(int32_t) * nt);
    if (!test_feat || !test_conf || !test_pred)
        goto oom;
    if ((rc = classifier_apply(&c, test.images, nt, test_feat, test_pred, test_conf))) {
        fprintf(stderr, "steer eval: evaluator: %s\n", kernels_strerror(rc));
        goto done;
    }
    long right = 0;
    for (long i = 0; i < nt; i++)
        right += test_pred[i] == test.labels[i];
    fprintf(stderr, "eval: evaluator %s, test accuracy %.4f\n", model, (double)right / nt);

    if (halves) {
        long h = nt / 2;
        if (fit(&ref, test_feat, h, "the test set's first half") ||
            fit(&gen, test_feat + h * CLASSIFIER_FEATURES, nt - h, "the test set's second half") ||
            distance(&fd, &ref, &gen))
            goto done;
        printf("test set: first %ld vs last %ld images (the floor of FD at n = %ld)\n", h, nt - h,
               h);
        printf("fd %.4f\n", fd);
        status = 0;
        goto done;
    }

    if (fit(&ref, test_feat, nt, "the test set"))
        goto done;
    feat = malloc(sizeof(float) * n * CLASSIFIER_FEATURES);
    conf = malloc(sizeof(float) * n);
    pred = malloc(sizeof(int32_t) * n);
    if (!feat || !conf || !pred)
        goto oom;
    if ((rc = classifier_apply(&c, images, n, feat, pred, conf))) {
        fprintf(stderr, "steer eval: evaluator: %s\n", kernels_strerror(rc));
        goto done;
    }
    if (fit(&gen, feat, n, ckpt ? ckpt : samples) || distance(&fd, &gen, &ref))
        goto done;

    printf("samples: %ld from %s; reference: Fashion-MNIST test set (%ld images)\n", n,
           ckpt ? ckpt : samples, nt);
    printf("fd %.4f\n", fd);
    if (n != nt)
        printf("note: FD is biased upward at small n; compare values at equal n\n");
    long count[CLASSIFIER_CLASSES] = {0}, agree = 0;
    for (long i = 0; i < n; i++) {
        count[pred[i]]++;
        if (conditional)
            agree += pred[i] == y[i];
    }
    printf("classes (evaluator's predictions):\n");
    for (int k = 0; k < CLASSIFIER_CLASSES; k++)
        printf("  %d %-12s %7ld  %.4f\n", k, fmnist_class_names[k], count[k], (double)count[k] / n);
    printf("confident %.4f (fraction with max probability > %.1f; test set %.4f)\n",
           confident_fraction(conf, n), EVAL_CONFIDENT, confident_fraction(test_conf, nt));
    if (conditional)
        printf("class agreement %.4f (fraction classified as the class asked of the model)\n",
               (double)agree / n);
    status = 0;
    goto done;
oom:
    fprintf(stderr, "steer eval: out of memory\n");
done:
    classifier_free(&c);
    dataset_free(&test);
    fid_stats_free(&ref);
    fid_stats_free(&gen);
    free(test_feat);
    free(test_conf);
    free(test_pred);
    free(images);
    free(feat);
    free(conf);
    free(pred);
    free(y);
    return status;
}
