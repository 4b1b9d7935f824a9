// worker.c — `steer worker` (spawned by steer serve, server/jobs.h, or run by hand): reads a job folder's spec.json, trains, checkpoints,
// measures FD at the end, and reports every step of the way as msgpack maps on stdout.
// Messages are bounded on purpose: a long path or stderr tail is cut, never overflowed.
//
// A job is a folder: DIR/spec.json (what to train, written by whoever submits the job) and what
// the worker writes there: DIR/latest.safetensors (the whole training state: a resumed worker
// continues exactly where the last checkpoint left it) and DIR/final.safetensors when it finishes.
// Progress goes to stdout as a stream of msgpack maps, each with a string key `t` (a pipe to the
// server; docs/jobs.md lists them), logs to stderr. SIGTERM (pause, cancel, server stop) makes it
// save a checkpoint after the current step and exit 0 with `stopped`. The spec's keys are in
// docs/jobs.md; unknown keys are refused.
#pragma GCC diagnostic ignored "-Wformat-truncation"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <msgpack.h>
#include <signal.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "generator/data/fmnist.h"
#include "generator/data/pngdir.h"
#include "generator/classifier.h"
#include "cmd/args.h"
#include "cmd/commands.h"
#include "util/clock.h"
#include "generator/fid.h"
#include "generator/gan.h"
#include "kernels/conv.h"
#include "kernels/kernels.h"
#include "generator/distill.h"
#include "generator/finetune.h"
#include "generator/train_device.h"
#include "server/learn.h"

#define WORKER_EVAL_MODEL "models/fmnist-eval.safetensors"
#define WORKER_G_BATCH 64

static volatile sig_atomic_t stop_requested;
static void on_signal(int sig) {
    (void)sig;
    stop_requested = 1;
}

typedef enum { KIND_TRAIN, KIND_FINETUNE, KIND_DISTILL } Kind;

typedef struct {
    const char *kind, *config, *data, *init, *parent, *eval_model, *store, *teacher, *device;
    Kind k;
    long steps, batch, seed, save_every, log_every, eval_n, fail_at, limit, reward_n, ch, eval_every;
    double beta, lambda, w_pix, w_feat, w_adv;
    double seconds; // 0: no limit; else the training loop stops (as done) after this long
    int classes[16], n_classes; // keep only these labels of the data (0: all)
    int tf32;                   // 1: the GPU's convolutions and products in TF32 (device.h)
    int bf16;                   // 1: the convolutions on BF16 inputs, CPU and GPU (device.h)
    json_t *set; // object of training switches, or NULL
} Spec;

// ---- messages to the supervisor ---------------------------------------------------------------

// One msgpack map per message, written whole to stdout (a pipe: writes of up to PIPE_BUF bytes are
// atomic, and ours are far smaller).
typedef struct {
    msgpack_sbuffer buf;
    msgpack_packer pk;
} Msg;

static void msg_begin(Msg *m, const char *type, int n_fields) {
    msgpack_sbuffer_init(&m->buf);
    msgpack_packer_init(&m->pk, &m->buf, msgpack_sbuffer_write);
    msgpack_pack_map(&m->pk, (size_t)n_fields + 1);
    msgpack_pack_str_with_body(&m->pk, "t", 1);
    msgpack_pack_str_with_body(&m->pk, type, strlen(type));
}
static void kv_str(Msg *m, const char *k, const char *v) {
    msgpack_pack_str_with_body(&m->pk, k, strlen(k));
    msgpack_pack_str_with_body(&m->pk, v, strlen(v));
}
static void kv_int(Msg *m, const char *k, long v) {
    msgpack_pack_str_with_body(&m->pk, k, strlen(k));
    msgpack_pack_int64(&m->pk, v);
}
static void kv_num(Msg *m, const char *k, double v) {
    msgpack_pack_str_with_body(&m->pk, k, strlen(k));
    if (v == v) msgpack_pack_double(&m->pk, v);
    else msgpack_pack_nil(&m->pk);
}
static void msg_send(Msg *m) {
    const char *p = m->buf.data;
    size_t left = m->buf.size;
    while (left > 0) {
        ssize_t w = write(STDOUT_FILENO, p, left);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break; // the supervisor is gone: the job still checkpoints and ends
        p += w;
        left -= (size_t)w;
    }
    msgpack_sbuffer_destroy(&m->buf);
}

static void send_failed(const char *why) {
    fprintf(stderr, "steer worker: %s\n", why);
    Msg m;
    msg_begin(&m, "failed", 1);
    kv_str(&m, "msg", why);
    msg_send(&m);
}

// ---- the spec ---------------------------------------------------------------------------------

static int spec_read(Spec *s, json_t *root, char *err, size_t errlen) {
    *s = (Spec){.kind = "train", .config = "tiny", .data = FMNIST_DIR, .eval_model = WORKER_EVAL_MODEL,
                .steps = 1000, .batch = 0, .seed = 1, .save_every = 100, .log_every = 10,
                .eval_n = 0, .fail_at = -1, .reward_n = 1000, .beta = 1, .lambda = 1e-3,
                .w_pix = 1, .w_feat = 1, .w_adv = 0.1};
    if (!json_is_object(root)) {
        snprintf(err, errlen, "the spec must be a JSON object");
        return -1;
    }
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        const char **str = !strcmp(key, "kind")         ? &s->kind
                           : !strcmp(key, "config")     ? &s->config
                           : !strcmp(key, "data")       ? &s->data
                           : !strcmp(key, "init")       ? &s->init
                           : !strcmp(key, "parent")     ? &s->parent
                           : !strcmp(key, "eval_model") ? &s->eval_model
                           : !strcmp(key, "store")      ? &s->store
                           : !strcmp(key, "teacher")    ? &s->teacher
                           : !strcmp(key, "device")     ? &s->device
                                                        : NULL;
        long *num = !strcmp(key, "steps")        ? &s->steps
                    : !strcmp(key, "batch")      ? &s->batch
                    : !strcmp(key, "seed")       ? &s->seed
                    : !strcmp(key, "save_every") ? &s->save_every
                    : !strcmp(key, "log_every")  ? &s->log_every
                    : !strcmp(key, "eval_n")     ? &s->eval_n
                    : !strcmp(key, "fail_at")    ? &s->fail_at // tests: crash at this step
                    : !strcmp(key, "limit")      ? &s->limit
                    : !strcmp(key, "reward_n")   ? &s->reward_n
                    : !strcmp(key, "ch")         ? &s->ch
                    : !strcmp(key, "eval_every") ? &s->eval_every
                                                 : NULL;
        double *real = !strcmp(key, "beta")     ? &s->beta
                       : !strcmp(key, "lambda") ? &s->lambda
                       : !strcmp(key, "w_pix")  ? &s->w_pix
                       : !strcmp(key, "w_feat") ? &s->w_feat
                       : !strcmp(key, "w_adv")  ? &s->w_adv
                       : !strcmp(key, "seconds") ? &s->seconds
                                                : NULL;
        if (str) {
            if (!json_is_string(v)) {
                snprintf(err, errlen, "spec key '%s' must be a string", key);
                return -1;
            }
            *str = json_string_value(v);
        } else if (num) {
            if (!json_is_integer(v) || json_integer_value(v) < (num == &s->fail_at ? -1 : 0)) {
                snprintf(err, errlen, "spec key '%s' must be a non-negative integer", key);
                return -1;
            }
            *num = (long)json_integer_value(v);
        } else if (real) {
            if (!json_is_number(v) || json_number_value(v) < 0 || !isfinite(json_number_value(v))) {
                snprintf(err, errlen, "spec key '%s' must be a number >= 0", key);
                return -1;
            }
            *real = json_number_value(v);
        } else if (!strcmp(key, "classes")) {
            if (!json_is_array(v) || json_array_size(v) > 16) {
                snprintf(err, errlen, "spec key 'classes' must be an array of at most 16 labels");
                return -1;
            }
            size_t i;
            json_t *c;
            json_array_foreach(v, i, c) {
                if (!json_is_integer(c) || json_integer_value(c) < 0 || json_integer_value(c) > 1000) {
                    snprintf(err, errlen, "spec key 'classes' must hold labels (integers >= 0)");
                    return -1;
                }
                s->classes[s->n_classes++] = (int)json_integer_value(c);
            }
        } else if (!strcmp(key, "tf32")) {
            if (!json_is_boolean(v)) {
                snprintf(err, errlen, "spec key 'tf32' must be true or false");
                return -1;
            }
            s->tf32 = json_is_true(v);
        } else if (!strcmp(key, "bf16")) {
            if (!json_is_boolean(v)) {
                snprintf(err, errlen, "spec key 'bf16' must be true or false");
                return -1;
            }
            s->bf16 = json_is_true(v);
        } else if (!strcmp(key, "promote") || !strcmp(key, "fd_margin")) {
            // the server's keys (server/jobs.h): not the worker's business
        } else if (!strcmp(key, "set")) {
            if (!json_is_object(v)) {
                snprintf(err, errlen, "spec key 'set' must be an object of training switches");
                return -1;
            }
            s->set = v;
        } else {
            snprintf(err, errlen, "unknown spec key '%s'", key);
            return -1;
        }
    }
    s->k = !strcmp(s->kind, "train")      ? KIND_TRAIN
           : !strcmp(s->kind, "finetune") ? KIND_FINETUNE
           : !strcmp(s->kind, "distill")  ? KIND_DISTILL
                                          : (Kind)-1;
    if ((int)s->k < 0) {
        snprintf(err, errlen, "unknown job kind '%s' (train, finetune or distill)", s->kind);
        return -1;
    }
    if (s->k == KIND_FINETUNE && (!s->store || !(s->init || s->parent))) {
        snprintf(err, errlen, "a finetune job needs 'store' (the server's steer.db) and 'init' or "
                              "'parent' (the model to fine-tune)");
        return -1;
    }
    if (s->k == KIND_DISTILL && !(s->teacher || s->parent)) {
        snprintf(err, errlen, "a distill job needs 'teacher' (or 'parent')");
        return -1;
    }
    Device dev;
    if (s->device && device_parse(s->device, &dev)) {
        snprintf(err, errlen, "spec: device must be auto, cpu or cuda");
        return -1;
    }
    if (s->k == KIND_FINETUNE && !s->init) s->init = s->parent;
    if (s->k == KIND_DISTILL && !s->teacher) s->teacher = s->parent;
    if (s->k == KIND_DISTILL && !s->parent) s->parent = s->teacher; // FD beside the teacher's
    if (s->ch && (s->ch < 8 || s->ch > 1024 || (s->ch & (s->ch - 1)))) {
        snprintf(err, errlen, "spec: ch (a fresh model's or the student's width) must be a power "
                              "of two, 8..1024");
        return -1;
    }
    if (s->steps < 1 || s->batch > 4096 || s->log_every < 1) {
        snprintf(err, errlen, "spec: steps must be >= 1, batch <= 4096, log_every >= 1");
        return -1;
    }
    if (s->eval_n == 1 || s->eval_n > 100000) {
        snprintf(err, errlen, "spec: eval_n must be 0 (no FD) or in [2, 100000]");
        return -1;
    }
    return 0;
}

// Applies the spec's training switches. Returns 0 or -1 with err set.
static int apply_set(GanHparams *hp, json_t *set, char *err, size_t errlen) {
    if (!set) return 0;
    const char *key;
    json_t *v;
    json_object_foreach(set, key, v) {
        char val[64];
        if (json_is_string(v)) snprintf(val, sizeof val, "%s", json_string_value(v));
        else if (json_is_integer(v)) snprintf(val, sizeof val, "%lld", (long long)json_integer_value(v));
        else if (json_is_real(v)) snprintf(val, sizeof val, "%.9g", json_real_value(v));
        else if (json_is_boolean(v)) snprintf(val, sizeof val, "%d", json_is_true(v));
        else {
            snprintf(err, errlen, "set.%s: expected a string, number or boolean", key);
            return -1;
        }
        if (gan_hparams_set(hp, key, val, err, errlen)) return -1;
    }
    return 0;
}

// ---- data -------------------------------------------------------------------------------------

static int is_fmnist(const char *dir) {
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/train-images-idx3-ubyte.gz", dir);
    return access(p, R_OK) == 0;
}

// The training data: Fashion-MNIST (train split), or every PNG of the folder at the model's
// shape; then the spec's class filter and limit.
static int load_data(Dataset *d, const Spec *s, const SaganConfig *cfg, int train, char *err,
                     size_t errlen) {
    int rc = is_fmnist(s->data) ? fmnist_load(d, s->data, train, err, errlen)
                                : pngdir_load(d, s->data, cfg->channels, cfg->img, cfg->img, 0, err,
                                              errlen);
    if (!rc && (s->n_classes || (train && s->limit > 0)))
        rc = dataset_subset(d, s->classes, s->n_classes, train ? s->limit : 0, err, errlen);
    return rc;
}

// ---- FD at the end ----------------------------------------------------------------------------

typedef struct {
    Classifier c;
    FidStats ref;
    int ready;
} Judge;

static int judge_init(Judge *j, const Spec *s, char *err, size_t errlen) {
    memset(j, 0, sizeof *j);
    double acc;
    Dataset test = {0};
    float *feat = NULL;
    int rc = classifier_load(&j->c, s->eval_model, 128, &acc, err, errlen);
    if (!rc && !is_fmnist(s->data)) {
        snprintf(err, errlen, "FD is measured on Fashion-MNIST only (data is %s)", s->data);
        rc = -1;
    }
    if (!rc) { // the test images of the classes the job trains on
        SaganConfig fm = {.channels = 1, .img = 32};
        rc = load_data(&test, s, &fm, 0, err, errlen);
    }
    if (!rc && !(feat = malloc(sizeof(float) * test.n * CLASSIFIER_FEATURES))) {
        snprintf(err, errlen, "out of memory");
        rc = -1;
    }
    if (!rc && (rc = classifier_apply(&j->c, test.images, test.n, feat, NULL, NULL)))
        snprintf(err, errlen, "evaluator: %s", kernels_strerror(rc));
    if (!rc && (rc = fid_stats_compute(&j->ref, feat, test.n, CLASSIFIER_FEATURES)))
        snprintf(err, errlen, "test-set features: %s", fid_strerror(rc));
    free(feat);
    dataset_free(&test);
    j->ready = !rc;
    return rc ? -1 : 0;
}

static void judge_free(Judge *j) {
    classifier_free(&j->c);
    fid_stats_free(&j->ref);
}

// FD of n samples (seed 1) of the checkpoint at path against the test set; NaN (with err) if the
// model is not a 1x32x32 Fashion-MNIST model or anything fails.
static double judge_fd(Judge *j, const char *path, long n, int fixed_class, char *err, size_t errlen) {
    Generator g;
    double fd = NAN;
    float *z = NULL, *img = NULL, *feat = NULL;
    int32_t *y = NULL;
    FidStats st = {0};
    if (generator_load(&g, path, WORKER_G_BATCH, err, errlen)) return NAN;
    // an FD measures the model, not the mode of the run measuring it: the samples in FP32 too
    int held = conv2d_fp32_hold(1);
    const SaganConfig *c = &g.cfg;
    long P = (long)c->channels * c->img * c->img;
    if (c->channels != 1 || c->img != CLASSIFIER_IMG || (c->n_classes && c->n_classes != CLASSIFIER_CLASSES)) {
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
    for (long i = 0; i < n; i += WORKER_G_BATCH) {
        int b = (int)(n - i < WORKER_G_BATCH ? n - i : WORKER_G_BATCH);
        int rc = generator_forward(&g, z + i * c->z_dim, c->n_classes ? y + i : NULL, b);
        if (rc) {
            snprintf(err, errlen, "generator: %s", kernels_strerror(rc));
            goto done;
        }
        memcpy(img + i * P, g.img, sizeof(float) * b * P);
    }
    int rc = classifier_apply(&j->c, img, n, feat, NULL, NULL);
    if (rc) snprintf(err, errlen, "evaluator: %s", kernels_strerror(rc));
    else if ((rc = fid_stats_compute(&st, feat, n, CLASSIFIER_FEATURES)) ||
             (rc = fid_stats_distance(&fd, &st, &j->ref))) {
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

// ---- the job ----------------------------------------------------------------------------------

static void usage(FILE *f) {
    fprintf(f, "usage: steer worker --dir DIR\n"
               "Runs the training job DIR/spec.json (server/worker.h lists its keys), resuming from\n"
               "DIR/latest.safetensors when it exists. Progress: msgpack maps on stdout; logs on\n"
               "stderr. SIGTERM saves a checkpoint and stops.\n");
}

// Generation speed of a checkpoint's G at batch 64 (images/s over about a second, after a warm-up
// batch); NaN if it does not load.
static double gen_speed(const char *path) {
    Generator g;
    char err[256];
    if (generator_load(&g, path, WORKER_G_BATCH, err, sizeof err)) return NAN;
    const SaganConfig *c = &g.cfg;
    float *z = malloc(sizeof(float) * WORKER_G_BATCH * c->z_dim);
    int32_t y[WORKER_G_BATCH] = {0};
    double speed = NAN;
    if (z) {
        gan_sample_latents(c, 3, WORKER_G_BATCH, -1, z, c->n_classes ? y : NULL);
        generator_forward(&g, z, c->n_classes ? y : NULL, WORKER_G_BATCH);
        long n = 0;
        double t0 = clock_now_s(), t;
        do {
            generator_forward(&g, z, c->n_classes ? y : NULL, WORKER_G_BATCH);
            n += WORKER_G_BATCH;
        } while ((t = clock_now_s() - t0) < 1.0);
        speed = n / t;
    }
    free(z);
    generator_free(&g);
    return speed;
}

static double reward_of(FinetuneReward *r, const char *path, long n) {
    Generator g;
    char err[256];
    double v = NAN;
    if (generator_load(&g, path, WORKER_G_BATCH, err, sizeof err)) return NAN;
    if (finetune_measure(r, &g, n, &v)) v = NAN;
    generator_free(&g);
    return v;
}

static int run(const char *dir) {
    char path[PATH_MAX], err[1024];
    snprintf(path, sizeof path, "%s/spec.json", dir);
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (!root) {
        snprintf(err, sizeof err, "%s: %s (line %d)", path, jerr.text, jerr.line);
        send_failed(err);
        return 1;
    }
    Spec s;
    GanTrainer t;
    memset(&t, 0, sizeof t);
    Dataset data = {0};
    Judge judge = {0};
    LearnReward lr;
    FinetuneReward fr;
    Distiller dist;
    TrainDevice td = {0};
    FinetuneDevice ftd = {0};
    DistillDevice dsd = {0};
    memset(&fr, 0, sizeof fr);
    memset(&lr, 0, sizeof lr);
    memset(&dist, 0, sizeof dist);
    float *theta0 = NULL;
    double reward_now = NAN, pix = NAN, featl = NAN;
    int status = 1, rc;
    char latest[PATH_MAX + 32], final[PATH_MAX + 32];
    snprintf(latest, sizeof latest, "%s/latest.safetensors", dir);
    snprintf(final, sizeof final, "%s/final.safetensors", dir);
    if (spec_read(&s, root, err, sizeof err)) goto fail;
    GanHparams hp;
    gan_hparams_default(&hp);
    if (s.batch) hp.batch = (int)s.batch;
    if (apply_set(&hp, s.set, err, sizeof err) || gan_hparams_check(&hp, err, sizeof err)) goto fail;
    if (hp.prog_stable > 0 && s.k != KIND_TRAIN) {
        snprintf(err, sizeof err, "progressive growing (set.prog_stable) is for train jobs only");
        goto fail;
    }
    int resumed = access(latest, F_OK) == 0;
    if (s.k == KIND_DISTILL && distill_init(&dist, s.teacher, hp.batch, err, sizeof err)) goto fail;
    if (s.k == KIND_DISTILL && !resumed) { // a fresh student: the teacher's shape, a smaller width
        SaganConfig cfg = dist.teacher.cfg;
        cfg.ch = s.ch ? (int)s.ch : cfg.ch / 2;
        if (sagan_config_check(&cfg, err, sizeof err)) goto fail;
        if (gan_init(&t, &cfg, &hp, (uint64_t)s.seed)) {
            snprintf(err, sizeof err, "out of memory building the student");
            goto fail;
        }
    } else if (resumed || s.init) {
        // a resumed job keeps its own state; `init` starts from another run's whole state
        if (gan_load(&t, resumed ? latest : s.init, &hp, err, sizeof err)) goto fail;
        if (!resumed) t.step = 0;
    } else {
        SaganConfig cfg;
        if (sagan_config_lookup(&cfg, s.config)) {
            snprintf(err, sizeof err, "unknown config '%s'", s.config);
            goto fail;
        }
        if (s.ch) cfg.ch = (int)s.ch;
        if (sagan_config_check(&cfg, err, sizeof err)) goto fail;
        if (gan_init(&t, &cfg, &hp, (uint64_t)s.seed)) {
            snprintf(err, sizeof err, "out of memory building the model");
            goto fail;
        }
    }
    if (s.k == KIND_FINETUNE) { // the users' reward, and the weights the anchor pulls toward
        if (learn_reward_init(&lr, s.init, s.store, err, sizeof err)) goto fail;
        fr = frame_reward_finetune(&lr.reward);
        Generator g0;
        if (generator_load_weights(&g0, s.init, 1, GAN_WEIGHTS_RAW, err, sizeof err)) goto fail;
        theta0 = malloc(sizeof(float) * t.G.ps.total);
        if (theta0 && g0.ps.total == t.G.ps.total)
            memcpy(theta0, g0.ps.params, sizeof(float) * t.G.ps.total);
        int ok = theta0 && g0.ps.total == t.G.ps.total;
        generator_free(&g0);
        if (!ok) {
            snprintf(err, sizeof err, "%s: cannot take its weights as the anchor", s.init);
            goto fail;
        }
        fprintf(stderr, "steer worker: the users' reward: %ld comparisons, held-out accuracy %.3f\n",
                lr.comparisons, lr.accuracy);
    }
    if (load_data(&data, &s, &t.cfg, 1, err, sizeof err)) goto fail;
    if (data.c != t.cfg.channels || data.h != t.cfg.img) {
        snprintf(err, sizeof err, "the data is %dx%dx%d but config %s makes %dx%dx%d", data.c, data.h,
                 data.w, t.cfg.name, t.cfg.channels, t.cfg.img, t.cfg.img);
        goto fail;
    }
    Msg m;
    msg_begin(&m, "started", 4);
    kv_int(&m, "step", t.step);
    kv_int(&m, "steps", s.steps);
    kv_int(&m, "resumed", resumed);
    kv_str(&m, "config", t.cfg.name);
    msg_send(&m);
    fprintf(stderr, "steer worker: %s %s at step %ld of %ld, batch %d\n",
            resumed ? "resumed" : "training", t.cfg.name, t.step, s.steps, t.hp.batch);
    // every kind of job runs on the GPU when there is one the step can use
    Device want = DEVICE_AUTO;
    if (s.device && device_parse(s.device, &want)) want = DEVICE_AUTO; // (checked with the spec)
    char where[512];
    device_tf32_set(s.tf32);
    device_bf16_set(s.bf16, NULL, 0); // the device line says if the CPU cannot
    train_device_init(&td, want, &t, where, sizeof where);
    fprintf(stderr, "steer worker: %s\n", where);
    if (s.k == KIND_FINETUNE) { // the reward D beside it, or the whole run back on the CPU
        FinetuneConfig fc = {.beta = s.beta, .lambda = s.lambda, .eval_n = s.reward_n};
        if ((rc = finetune_device_init(&ftd, &td, &t, &fr, &fc, theta0, where, sizeof where))) {
            snprintf(err, sizeof err, "moving the run back to the CPU: %s", kernels_strerror(rc));
            goto fail;
        }
        fprintf(stderr, "steer worker: %s\n", where);
    }
    if (s.k == KIND_DISTILL) { // the teacher beside the student, or the run back on the CPU
        DistillConfig dc = {.w_pix = s.w_pix, .w_feat = s.w_feat, .w_adv = s.w_adv};
        if ((rc = distill_device_init(&dsd, &td, &t, &dist, &dc, where, sizeof where))) {
            snprintf(err, sizeof err, "moving the run back to the CPU: %s", kernels_strerror(rc));
            goto fail;
        }
        fprintf(stderr, "steer worker: %s\n", where);
    }
    double t_log = clock_now_s(), t_start = t_log;
    double t_eval = 0; // time spent in FD evaluations: not training time (seconds, `eval`, `done`)
    long log_start = t.step;
    int out_of_time = 0;
    while (t.step < s.steps && !stop_requested && !out_of_time) {
        if (s.fail_at >= 0 && t.step == s.fail_at) {
            fprintf(stderr, "steer worker: fail_at %ld reached: aborting as asked\n", s.fail_at);
            abort();
        }
        rc = s.k == KIND_FINETUNE ? finetune_device_step(&ftd, &td, &t, theta0, &data, &reward_now)
             : s.k == KIND_DISTILL ? distill_device_step(&dsd, &td, &t, &data, &pix, &featl)
                                   : train_device_step(&td, &t, &data);
        if (rc) {
            snprintf(err, sizeof err, "step %ld failed: %s", t.step, kernels_strerror(rc));
            goto fail;
        }
        if (!(t.loss_d == t.loss_d && t.loss_g == t.loss_g)) {
            snprintf(err, sizeof err, "step %ld: loss is not finite (D %g, G %g)", t.step, t.loss_d,
                     t.loss_g);
            goto fail;
        }
        if (t.step % s.log_every == 0 || t.step == s.steps) {
            double now = clock_now_s();
            msg_begin(&m, "progress", 5 + (s.k == KIND_FINETUNE) + 2 * (s.k == KIND_DISTILL) +
                                          2 * t.cfg.prog);
            kv_int(&m, "step", t.step);
            if (t.cfg.prog) { // where progressive growing stands (of the step just done)
                kv_int(&m, "resolution", 4 << t.level);
                kv_num(&m, "alpha", t.alpha);
            }
            kv_int(&m, "steps", s.steps);
            kv_num(&m, "loss_d", t.loss_d);
            kv_num(&m, "loss_g", t.loss_g);
            kv_num(&m, "images_per_s", (t.step - log_start) * t.hp.batch / (now - t_log + 1e-9));
            if (s.k == KIND_FINETUNE) kv_num(&m, "reward", reward_now);
            if (s.k == KIND_DISTILL) {
                kv_num(&m, "pixel_loss", pix);
                kv_num(&m, "feature_loss", featl);
            }
            msg_send(&m);
            t_log = now;
            log_start = t.step;
        }
        if (s.eval_every && s.eval_n > 0 && t.step % s.eval_every == 0 && t.step < s.steps) {
            // an FD curve: the model as it is now, against the same test images as at the end
            double e0 = clock_now_s();
            char why[512] = "", mid[PATH_MAX + 32];
            snprintf(mid, sizeof mid, "%s/eval.safetensors", dir);
            if (!judge.ready && judge_init(&judge, &s, why, sizeof why)) judge.ready = -1;
            double fd_now = NAN;
            if (judge.ready == 1 && !train_device_sync(&td, &t) && !gan_save(&t, mid, why, sizeof why)) {
                int fixed = s.n_classes == 1 ? s.classes[0] : -1;
                fd_now = judge_fd(&judge, mid, s.eval_n, fixed, why, sizeof why);
            }
            msg_begin(&m, "eval", 3);
            kv_int(&m, "step", t.step);
            kv_num(&m, "fd", fd_now);
            t_eval += clock_now_s() - e0;
            kv_num(&m, "seconds", clock_now_s() - t_start - t_eval);
            msg_send(&m);
            fprintf(stderr, "steer worker: step %ld FD %.3f%s%s\n", t.step, fd_now, why[0] ? ": " : "", why);
        }
        out_of_time = s.seconds > 0 && clock_now_s() - t_start - t_eval >= s.seconds;
        if (s.save_every && t.step % s.save_every == 0 && t.step < s.steps && !out_of_time) {
            if ((rc = train_device_sync(&td, &t))) {
                snprintf(err, sizeof err, "step %ld: %s", t.step, kernels_strerror(rc));
                goto fail;
            }
            if (gan_save(&t, latest, err, sizeof err)) goto fail;
            msg_begin(&m, "checkpoint", 2);
            kv_int(&m, "step", t.step);
            kv_str(&m, "path", latest);
            msg_send(&m);
        }
    }
    double t_end = clock_now_s(); // the training loop's end (the final FD not included)
    if ((rc = train_device_sync(&td, &t))) {
        snprintf(err, sizeof err, "step %ld: %s", t.step, kernels_strerror(rc));
        goto fail;
    }
    if (gan_save(&t, latest, err, sizeof err)) goto fail;
    if (stop_requested && t.step < s.steps) {
        msg_begin(&m, "stopped", 2);
        kv_int(&m, "step", t.step);
        kv_str(&m, "path", latest);
        msg_send(&m);
        fprintf(stderr, "steer worker: stopped at step %ld; checkpoint %s\n", t.step, latest);
        status = 0;
        goto done;
    }
    if (gan_save(&t, final, err, sizeof err)) goto fail;
    double fd = NAN, parent_fd = NAN;
    char why[512] = "";
    if (s.eval_n > 0) {
        if (judge.ready == 1 || (!judge.ready && judge_init(&judge, &s, why, sizeof why) == 0)) {
            int fixed = s.n_classes == 1 ? s.classes[0] : -1; // one class: sample that class
            fd = judge_fd(&judge, final, s.eval_n, fixed, why, sizeof why);
            if (s.parent && fd == fd)
                parent_fd = judge_fd(&judge, s.parent, s.eval_n, fixed, why, sizeof why);
        }
        if (why[0]) fprintf(stderr, "steer worker: no FD: %s\n", why);
    }
    // what the kind is for: the users' reward before and after; the student's speed
    double reward = NAN, parent_reward = NAN, speed = NAN, parent_speed = NAN;
    if (s.k == KIND_FINETUNE) {
        reward = reward_of(&fr, final, s.reward_n);
        parent_reward = reward_of(&fr, s.init, s.reward_n);
    } else if (s.k == KIND_DISTILL) {
        speed = gen_speed(final);
        parent_speed = gen_speed(s.teacher);
    }
    msg_begin(&m, "done", 10);
    kv_int(&m, "step", t.step);
    kv_num(&m, "seconds", t_end - t_start - t_eval);
    kv_str(&m, "path", final);
    kv_num(&m, "fd", fd);
    kv_num(&m, "parent_fd", parent_fd);
    kv_int(&m, "eval_n", s.eval_n);
    kv_num(&m, "reward", reward);
    kv_num(&m, "parent_reward", parent_reward);
    kv_num(&m, "gen_images_per_s", speed);
    kv_num(&m, "parent_gen_images_per_s", parent_speed);
    msg_send(&m);
    if (s.k == KIND_FINETUNE)
        fprintf(stderr, "steer worker: users' reward %.4f (served %.4f) over %ld frames\n", reward,
                parent_reward, s.reward_n);
    if (s.k == KIND_DISTILL)
        fprintf(stderr, "steer worker: student %.0f images/s, teacher %.0f (batch 64)\n", speed,
                parent_speed);
    fprintf(stderr, "steer worker: done at step %ld; %s; FD %.3f (parent %.3f, n %ld)\n", t.step,
            final, fd, parent_fd, s.eval_n);
    status = 0;
    goto done;
fail:
    send_failed(err);
done:
    finetune_device_free(&ftd, &td);
    distill_device_free(&dsd, &td);
    train_device_free(&td);
    learn_reward_free(&lr);
    distill_free(&dist);
    free(theta0);
    judge_free(&judge);
    dataset_free(&data);
    gan_free(&t);
    json_decref(root);
    return status;
}

int cmd_worker(int argc, char **argv) {
    const char *dir = NULL;
    static const struct option opts[] = {{"dir", 1, 0, 'd'}, {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    optind = 1;
    int o;
    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (o) {
        case 'd': dir = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!dir || optind < argc) {
        usage(stderr);
        return 2;
    }
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    signal(SIGPIPE, SIG_IGN); // a vanished supervisor must not kill the job before it saves
    prctl(PR_SET_PDEATHSIG, SIGTERM); // nor leave it running alone: the parent's death stops it
    return run(dir);
}
