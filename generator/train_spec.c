// train_spec.c — a job spec's JSON into a TrainSpec, every key checked (train_spec.h).
#include "generator/train_spec.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

const char *const TRAIN_SPEC_KEYS[] = {
    "kind",    "config",   "data",       "init",      "parent",  "eval_model", "store",
    "teacher", "device",   "steps",      "batch",     "seed",    "save_every", "log_every",
    "eval_n",  "fail_at",  "limit",      "reward_n",  "ch",      "eval_every", "sample_every",
    "beta",    "lambda",   "w_pix",      "w_feat",    "w_adv",   "seconds",    "classes",
    "tf32",    "bf16",     "set",        "promote",   "fd_margin", NULL};

// The spec's training switches over hp (gan_hparams_set). Returns 0 or -1 with err set.
static int apply_set(GanHparams *hp, const json_t *set, char *err, size_t errlen) {
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)set, key, v) {
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

int train_spec_from_json(TrainSpec *s, const json_t *root, const char **store, char *err,
                         size_t errlen) {
    train_spec_default(s);
    *store = NULL;
    if (!json_is_object(root)) {
        snprintf(err, errlen, "the spec must be a JSON object");
        return -1;
    }
    const char *kind = "train", *device = NULL;
    long batch = 0, seed = 1, ch = 0;
    const json_t *set = NULL;
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)root, key, v) {
        const char **str = !strcmp(key, "kind")         ? &kind
                           : !strcmp(key, "config")     ? &s->config
                           : !strcmp(key, "data")       ? &s->data
                           : !strcmp(key, "init")       ? &s->init
                           : !strcmp(key, "parent")     ? &s->parent
                           : !strcmp(key, "eval_model") ? &s->eval_model
                           : !strcmp(key, "store")      ? store
                           : !strcmp(key, "teacher")    ? &s->teacher
                           : !strcmp(key, "device")     ? &device
                                                        : NULL;
        long *num = !strcmp(key, "steps")          ? &s->steps
                    : !strcmp(key, "batch")        ? &batch
                    : !strcmp(key, "seed")         ? &seed
                    : !strcmp(key, "save_every")   ? &s->save_every
                    : !strcmp(key, "log_every")    ? &s->log_every
                    : !strcmp(key, "eval_n")       ? &s->eval_n
                    : !strcmp(key, "fail_at")      ? &s->fail_at // tests: crash at this step
                    : !strcmp(key, "limit")        ? &s->limit
                    : !strcmp(key, "reward_n")     ? &s->finetune.eval_n
                    : !strcmp(key, "ch")           ? &ch
                    : !strcmp(key, "eval_every")   ? &s->eval_every
                    : !strcmp(key, "sample_every") ? &s->sample_every
                                                   : NULL;
        double *real = !strcmp(key, "beta")      ? &s->finetune.beta
                       : !strcmp(key, "lambda")  ? &s->finetune.lambda
                       : !strcmp(key, "w_pix")   ? &s->distill.w_pix
                       : !strcmp(key, "w_feat")  ? &s->distill.w_feat
                       : !strcmp(key, "w_adv")   ? &s->distill.w_adv
                       : !strcmp(key, "seconds") ? &s->seconds
                                                 : NULL;
        int *flag = !strcmp(key, "tf32") ? &s->tf32 : !strcmp(key, "bf16") ? &s->bf16 : NULL;
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
        } else if (flag) {
            if (!json_is_boolean(v)) {
                snprintf(err, errlen, "spec key '%s' must be true or false", key);
                return -1;
            }
            *flag = json_is_true(v);
        } else if (!strcmp(key, "classes")) {
            if (!json_is_array(v) || json_array_size(v) > TRAIN_MAX_CLASSES) {
                snprintf(err, errlen, "spec key 'classes' must be an array of at most %d labels",
                         TRAIN_MAX_CLASSES);
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
        } else if (!strcmp(key, "promote") || !strcmp(key, "fd_margin")) {
            // the server's keys (server/jobs.h): not the run's business
        } else if (!strcmp(key, "set")) {
            if (!json_is_object(v)) {
                snprintf(err, errlen, "spec key 'set' must be an object of training switches");
                return -1;
            }
            set = v;
        } else {
            snprintf(err, errlen, "unknown spec key '%s'", key);
            return -1;
        }
    }
    s->kind = !strcmp(kind, "train")      ? TRAIN_GAN
              : !strcmp(kind, "finetune") ? TRAIN_FINETUNE
              : !strcmp(kind, "distill")  ? TRAIN_DISTILL
                                          : (TrainKind)-1;
    if ((int)s->kind < 0) {
        snprintf(err, errlen, "unknown job kind '%s' (train, finetune or distill)", kind);
        return -1;
    }
    if (s->kind == TRAIN_FINETUNE && (!*store || !(s->init || s->parent))) {
        snprintf(err, errlen, "a finetune job needs 'store' (the server's steer.db) and 'init' or "
                              "'parent' (the model to fine-tune)");
        return -1;
    }
    if (s->kind != TRAIN_FINETUNE) *store = NULL;
    if (s->kind == TRAIN_DISTILL && !(s->teacher || s->parent)) {
        snprintf(err, errlen, "a distill job needs 'teacher' (or 'parent')");
        return -1;
    }
    if (device && device_parse(device, &s->device)) {
        snprintf(err, errlen, "spec: device must be auto, cpu or cuda");
        return -1;
    }
    if (s->kind == TRAIN_FINETUNE && !s->init) s->init = s->parent;
    if (s->kind == TRAIN_DISTILL && !s->teacher) s->teacher = s->parent;
    if (s->kind == TRAIN_DISTILL && !s->parent) s->parent = s->teacher; // FD beside the teacher's
    if (ch && (ch < 8 || ch > 1024 || (ch & (ch - 1)))) {
        snprintf(err, errlen, "spec: ch (a fresh model's or the student's width) must be a power "
                              "of two, 8..1024");
        return -1;
    }
    if (s->steps < 1 || batch > 4096 || s->log_every < 1) {
        snprintf(err, errlen, "spec: steps must be >= 1, batch <= 4096, log_every >= 1");
        return -1;
    }
    if (s->eval_n == 1 || s->eval_n > 100000) {
        snprintf(err, errlen, "spec: eval_n must be 0 (no FD) or in [2, 100000]");
        return -1;
    }
    s->ch = (int)ch;
    s->seed = (uint64_t)seed;
    if (batch) s->hp.batch = (int)batch;
    if ((set && apply_set(&s->hp, set, err, errlen)) || gan_hparams_check(&s->hp, err, errlen))
        return -1;
    if (s->hp.prog_stable > 0 && s->kind != TRAIN_GAN) {
        snprintf(err, errlen, "progressive growing (set.prog_stable) is for train jobs only");
        return -1;
    }
    return 0;
}
