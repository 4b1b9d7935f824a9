// train.c — the one training loop (train.h): build, step, checkpoint, sample, measure, report.
// What a step computes is gan.c's, finetune.c's and distill.c's; where it runs, train_device.c's.
#include "generator/train.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "generator/data/fmnist.h"
#include "generator/data/imageio.h"
#include "generator/data/pngdir.h"
#include "generator/quality.h"
#include "generator/train_device.h"
#include "kernels/kernels.h"
#include "util/clock.h"
#include "util/fs.h"

#define TRAIN_GRID_N 100   // frames in a sample grid: 10 columns, a class per row
#define TRAIN_GRID_SEED 12345 // the grids' latents: the same every time, so grids compare

void train_spec_default(TrainSpec *s) {
    *s = (TrainSpec){.kind = TRAIN_GAN,
                     .config = "tiny",
                     .seed = 1,
                     .data = FMNIST_DIR,
                     .steps = 1000,
                     .log_every = 10,
                     .save_every = 100,
                     .fail_at = -1,
                     .device = DEVICE_AUTO,
                     .eval_model = "models/fmnist-eval.safetensors",
                     .finetune = {.beta = 1, .lambda = 1e-3, .eval_n = 1000},
                     .distill = {.w_pix = 1, .w_feat = 1, .w_adv = 0.1}};
    gan_hparams_default(&s->hp);
}

// Everything a run holds, freed in one place (run_free), whatever point it failed at.
typedef struct {
    const TrainSpec *s;
    TrainReport report;
    void *ctx;
    GanTrainer t;
    Dataset data;
    Distiller teacher;
    float *theta0; // finetune: G's starting raw weights, the anchor
    TrainDevice td;
    FinetuneDevice ftd;
    DistillDevice dsd;
    Quality quality;
    int quality_state; // 0 not tried, 1 ready, -1 failed (once: not retried)
    char quality_why[512];
    int lead;          // this process writes the files and reports (rank 0)
    int resumed;
    char dir[PATH_MAX], latest[PATH_MAX + 32];
    double t_start, t_eval; // training started; seconds spent in evaluations since
} Run;

static void emit(Run *r, TrainEvent *e) {
    if (r->lead && r->report) r->report(r->ctx, e);
}

static void note(Run *r, const char *text) {
    TrainEvent e = {.kind = TRAIN_EVENT_NOTE, .step = r->t.step, .steps = r->s->steps, .text = text};
    emit(r, &e);
}

// The model: resumed, from another run's state, a distillation student, or fresh (train.h).
static int build(Run *r, char *err, size_t errlen) {
    const TrainSpec *s = r->s;
    GanTrainer *t = &r->t;
    if (s->hp.prog_stable > 0 && s->kind != TRAIN_GAN) {
        snprintf(err, errlen, "progressive growing (prog_stable) is for plain training runs only, "
                              "not fine-tuning or distillation");
        return 2;
    }
    if (s->kind == TRAIN_DISTILL &&
        distill_init(&r->teacher, s->teacher, s->hp.batch, err, errlen))
        return 1;
    if (s->kind == TRAIN_DISTILL && !s->resume) { // the teacher's shape, a smaller width
        SaganConfig cfg = r->teacher.teacher.cfg;
        cfg.ch = s->ch ? s->ch : cfg.ch / 2;
        if (sagan_config_check(&cfg, err, errlen)) return 2;
        if (gan_init(t, &cfg, &s->hp, s->seed)) {
            snprintf(err, errlen, "out of memory building the student");
            return 1;
        }
    } else if (s->resume || s->init) {
        // a resumed run keeps its own state; `init` starts from another run's whole state
        if (gan_load(t, s->resume ? s->resume : s->init, &s->hp, err, errlen)) return 1;
        if (!s->resume) t->step = 0;
    } else {
        SaganConfig cfg;
        if (sagan_config_lookup(&cfg, s->config)) {
            snprintf(err, errlen, "unknown config '%s' (try fmnist32c, fmnist32, tiny)", s->config);
            return 2;
        }
        if (s->ch) cfg.ch = s->ch;
        if (s->z_dim) cfg.z_dim = s->z_dim;
        if (sagan_config_check(&cfg, err, errlen)) return 2;
        if (gan_init(t, &cfg, &s->hp, s->seed)) {
            snprintf(err, errlen, "out of memory building the model");
            return 1;
        }
    }
    if (s->kind == TRAIN_FINETUNE) { // the weights the anchor pulls toward
        Generator g0;
        if (generator_load_weights(&g0, s->init, 1, GAN_WEIGHTS_RAW, err, errlen)) return 1;
        r->theta0 = malloc(sizeof(float) * t->G.ps.total);
        int ok = r->theta0 && g0.ps.total == t->G.ps.total;
        if (ok) memcpy(r->theta0, g0.ps.params, sizeof(float) * t->G.ps.total);
        generator_free(&g0);
        if (!ok) {
            snprintf(err, errlen, "%s: cannot take its weights as the anchor", s->init);
            return 1;
        }
    }
    return 0;
}

// Data parallel: this process's place in the batch, and the all-reduce of its gradients.
static int split_batch(Run *r, char *err, size_t errlen) {
    Dist *d = r->s->dist;
    if (!d) return 0;
    if (r->t.hp.batch % d->size) {
        snprintf(err, errlen, "batch %d does not split over %d processes", r->t.hp.batch, d->size);
        return 2;
    }
    r->t.dp_rank = d->rank;
    r->t.dp_size = d->size;
    r->t.grad_reduce = dist_grad_reduce;
    r->t.reduce_ctx = d;
    return 0;
}

static int load_data(Run *r, char *err, size_t errlen) {
    const TrainSpec *s = r->s;
    const SaganConfig *c = &r->t.cfg;
    if (dataset_load(&r->data, s->data, 1, c->channels, c->img, c->img, s->classes, s->n_classes,
                     s->limit, err, errlen))
        return 1;
    if (r->data.c != c->channels || r->data.h != c->img) {
        snprintf(err, errlen, "the data is %dx%dx%d but config %s makes %dx%dx%d", r->data.c,
                 r->data.h, r->data.w, c->name, c->channels, c->img, c->img);
        return 2;
    }
    return 0;
}

// Where the steps run: the device's line, and for finetune and distill their frozen networks
// beside the run (or the whole run back on the CPU).
static int place(Run *r, char *err, size_t errlen) {
    const TrainSpec *s = r->s;
    char where[512];
    device_tf32_set(s->tf32);
    device_bf16_set(s->bf16, NULL, 0); // the device line says if the CPU cannot
    train_device_init(&r->td, s->device, &r->t, where, sizeof where);
    note(r, where);
    int rc = 0;
    if (s->kind == TRAIN_FINETUNE)
        rc = finetune_device_init(&r->ftd, &r->td, &r->t, s->reward, &s->finetune, r->theta0, where,
                                  sizeof where);
    else if (s->kind == TRAIN_DISTILL)
        rc = distill_device_init(&r->dsd, &r->td, &r->t, &r->teacher, &s->distill, where,
                                 sizeof where);
    else
        return 0;
    if (rc) {
        snprintf(err, errlen, "moving the run back to the CPU: %s", kernels_strerror(rc));
        return 1;
    }
    note(r, where);
    return 0;
}

// The step's figures of the kind's own (finetune's reward, distill's two losses) land here.
typedef struct {
    double reward, pixel_loss, feature_loss;
} StepFigures;

static int step(Run *r, StepFigures *f) {
    switch (r->s->kind) {
    case TRAIN_FINETUNE:
        return finetune_device_step(&r->ftd, &r->td, &r->t, r->theta0, &r->data, &f->reward);
    case TRAIN_DISTILL:
        return distill_device_step(&r->dsd, &r->td, &r->t, &r->data, &f->pixel_loss,
                                   &f->feature_loss);
    default:
        return train_device_step(&r->td, &r->t, &r->data);
    }
}

// A grid of TRAIN_GRID_N frames of the trainer's G (fixed latents, so grids over time compare;
// conditional: row r shows class r), drawn at the training batch.
static int write_grid(Run *r, const char *path, char *err, size_t errlen) {
    GanTrainer *t = &r->t;
    const SaganConfig *c = &t->cfg;
    long img = (long)c->channels * c->img * c->img;
    int n = TRAIN_GRID_N, rc = -1;
    float *z = malloc(sizeof(float) * n * c->z_dim), *out = malloc(sizeof(float) * n * img);
    int32_t *y = malloc(sizeof(int32_t) * n);
    if (!z || !out || !y) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    gan_sample_latents(c, TRAIN_GRID_SEED, n, -1, z, y);
    if (c->n_classes)
        for (int i = 0; i < n; i++) y[i] = (i / 10) % c->n_classes;
    if ((rc = generator_draw(&t->G, z, c->n_classes ? y : NULL, n, t->hp.batch, out))) {
        snprintf(err, errlen, "generator: %s", kernels_strerror(rc));
        goto done;
    }
    rc = image_grid_write_png(path, out, n, c->channels, c->img, c->img, 10, err, errlen);
done:
    free(z);
    free(out);
    free(y);
    return rc;
}

// FD of the checkpoint at path (NaN, with r->quality_why, when it cannot be measured). The
// evaluator and the test set's features are made at the first call, and only tried once.
static double measure_fd(Run *r, const char *path) {
    const TrainSpec *s = r->s;
    if (!r->quality_state)
        r->quality_state = quality_init(&r->quality, s->eval_model, s->data, s->classes,
                                        s->n_classes, r->quality_why, sizeof r->quality_why)
                               ? -1
                               : 1;
    if (r->quality_state < 0) return NAN;
    r->quality_why[0] = 0;
    int fixed = s->n_classes == 1 ? s->classes[0] : -1; // one class: sample that class
    return quality_fd(&r->quality, path, s->eval_n, fixed, r->quality_why, sizeof r->quality_why);
}

// Generation speed of a checkpoint's G at batch TRAIN_EVAL_BATCH (images/s over about a second,
// after a warm-up batch); NaN if it does not load.
static double gen_speed(const char *path) {
    enum { B = TRAIN_EVAL_BATCH };
    Generator g;
    char err[256];
    if (generator_load(&g, path, B, err, sizeof err)) return NAN;
    const SaganConfig *c = &g.cfg;
    float *z = malloc(sizeof(float) * B * c->z_dim);
    int32_t y[B];
    memset(y, 0, sizeof y);
    double speed = NAN;
    if (z) {
        gan_sample_latents(c, 3, B, -1, z, c->n_classes ? y : NULL);
        generator_forward(&g, z, c->n_classes ? y : NULL, B);
        long n = 0;
        double t0 = clock_now_s(), t;
        do {
            generator_forward(&g, z, c->n_classes ? y : NULL, B);
            n += B;
        } while ((t = clock_now_s() - t0) < 1.0);
        speed = n / t;
    }
    free(z);
    generator_free(&g);
    return speed;
}

// The users' mean reward of a checkpoint's frames (finetune_measure); NaN if it does not load.
static double reward_of(FinetuneReward *reward, const char *path, long n) {
    Generator g;
    char err[256];
    double v = NAN;
    if (generator_load(&g, path, TRAIN_EVAL_BATCH, err, sizeof err)) return NAN;
    if (finetune_measure(reward, &g, n, &v)) v = NAN;
    generator_free(&g);
    return v;
}

static double training_s(const Run *r) { return clock_now_s() - r->t_start - r->t_eval; }

static int save_latest(Run *r, char *err, size_t errlen) {
    int rc = train_device_sync(&r->td, &r->t);
    if (rc) {
        snprintf(err, errlen, "step %ld: %s", r->t.step, kernels_strerror(rc));
        return 1;
    }
    return r->lead && gan_save(&r->t, r->latest, err, errlen) ? 1 : 0;
}

// Every process stops at the same step: when any of them got a signal or failed.
static int any(Run *r, int flag) { return r->s->dist ? dist_any(r->s->dist, flag) != 0 : flag; }

// The steps, with their reports, checkpoints, grids and evaluations. Returns 0 or an exit status.
static int loop(Run *r, volatile sig_atomic_t *stop, int *stopped, char *err, size_t errlen) {
    const TrainSpec *s = r->s;
    GanTrainer *t = &r->t;
    char path[PATH_MAX + 64];
    double t_log = clock_now_s();
    r->t_start = t_log;
    long start = t->step, log_start = t->step;
    StepFigures f = {NAN, NAN, NAN};
    int out_of_time = 0;
    while (t->step < s->steps && !out_of_time) {
        if (any(r, stop && *stop)) { // a signal: every process stops before the same step
            *stopped = 1;
            break;
        }
        if (s->fail_at >= 0 && t->step == s->fail_at) {
            fprintf(stderr, "steer: fail_at %ld reached: aborting as asked\n", s->fail_at);
            abort();
        }
        int rc = step(r, &f);
        if (rc) {
            snprintf(err, errlen, "step %ld failed: %s", t->step, kernels_strerror(rc));
            return 1;
        }
        if (!(t->loss_d == t->loss_d && t->loss_g == t->loss_g)) {
            snprintf(err, errlen, "step %ld: loss is not finite (D %g, G %g)", t->step, t->loss_d,
                     t->loss_g);
            return 1;
        }
        if (t->step % s->log_every == 0 || t->step == s->steps) {
            double now = clock_now_s(), rate = (t->step - start) / (now - r->t_start - r->t_eval);
            TrainEvent e = {.kind = TRAIN_EVENT_PROGRESS,
                            .step = t->step,
                            .steps = s->steps,
                            .loss_d = t->loss_d,
                            .loss_g = t->loss_g,
                            .penalty_d = t->penalty_d,
                            .reg_g = t->reg_g,
                            .images_per_s = (t->step - log_start) * t->hp.batch / (now - t_log + 1e-9),
                            .eta_s = (s->steps - t->step) / rate,
                            .prog = t->cfg.prog,
                            .resolution = 4 << t->level,
                            .alpha = t->alpha,
                            .reward = f.reward,
                            .pixel_loss = f.pixel_loss,
                            .feature_loss = f.feature_loss};
            emit(r, &e);
            t_log = now;
            log_start = t->step;
        }
        if (r->lead && s->eval_every && s->eval_n > 0 && t->step % s->eval_every == 0 &&
            t->step < s->steps) {
            // an FD curve: the model as it is now, against the same test images as at the end
            double e0 = clock_now_s(), fd = NAN;
            snprintf(path, sizeof path, "%s/eval.safetensors", r->dir);
            if ((rc = train_device_sync(&r->td, t)))
                snprintf(r->quality_why, sizeof r->quality_why, "%s", kernels_strerror(rc));
            else if (gan_save(t, path, r->quality_why, sizeof r->quality_why) == 0)
                fd = measure_fd(r, path);
            r->t_eval += clock_now_s() - e0;
            TrainEvent e = {.kind = TRAIN_EVENT_EVAL, .step = t->step, .steps = s->steps, .fd = fd,
                            .text = fd == fd ? "" : r->quality_why, .seconds = training_s(r)};
            emit(r, &e);
        }
        if (r->lead && s->sample_every && t->step % s->sample_every == 0) {
            char why[512];
            snprintf(path, sizeof path, "%s/samples_%07ld.png", r->dir, t->step);
            if ((rc = train_device_sync(&r->td, t))) {
                snprintf(err, errlen, "step %ld: %s", t->step, kernels_strerror(rc));
                return 1;
            }
            if (write_grid(r, path, why, sizeof why)) {
                char line[600];
                snprintf(line, sizeof line, "sample grid: %s", why);
                note(r, line);
            } else {
                TrainEvent e = {.kind = TRAIN_EVENT_SAMPLES, .step = t->step, .steps = s->steps,
                                .path = path};
                emit(r, &e);
            }
        }
        out_of_time = any(r, s->seconds > 0 && training_s(r) >= s->seconds);
        if (s->save_every && t->step % s->save_every == 0 && t->step < s->steps && !out_of_time) {
            if (save_latest(r, err, errlen)) return 1;
            TrainEvent e = {.kind = TRAIN_EVENT_CHECKPOINT, .step = t->step, .steps = s->steps,
                            .path = r->latest};
            emit(r, &e);
        }
    }
    return 0;
}

// The finished run's measurements: FD beside the parent's, and the kind's own figures.
static void finish(Run *r, const char *path, double seconds) {
    const TrainSpec *s = r->s;
    TrainEvent e = {.kind = TRAIN_EVENT_DONE, .step = r->t.step, .steps = s->steps, .path = path,
                    .fd = NAN, .parent_fd = NAN, .eval_n = s->eval_n, .seconds = seconds,
                    .reward = NAN, .parent_reward = NAN, .gen_images_per_s = NAN,
                    .parent_gen_images_per_s = NAN};
    if (s->eval_n > 0) {
        e.fd = measure_fd(r, path);
        if (s->parent && e.fd == e.fd) e.parent_fd = measure_fd(r, s->parent);
        if (r->quality_why[0]) {
            char line[600];
            snprintf(line, sizeof line, "no FD: %s", r->quality_why);
            note(r, line);
        }
    }
    if (s->kind == TRAIN_FINETUNE) { // the users' reward before and after, on the same frames
        e.reward = reward_of(s->reward, path, s->finetune.eval_n);
        e.parent_reward = reward_of(s->reward, s->init, s->finetune.eval_n);
    } else if (s->kind == TRAIN_DISTILL) { // what a student is for: speed
        e.gen_images_per_s = gen_speed(path);
        e.parent_gen_images_per_s = gen_speed(s->teacher);
    }
    emit(r, &e);
}

static void run_free(Run *r) {
    finetune_device_free(&r->ftd, &r->td);
    distill_device_free(&r->dsd, &r->td);
    train_device_free(&r->td);
    distill_free(&r->teacher);
    free(r->theta0);
    quality_free(&r->quality);
    dataset_free(&r->data);
    gan_free(&r->t);
}

int train_run(const TrainSpec *s, TrainReport report, void *ctx, volatile sig_atomic_t *stop,
              char *err, size_t errlen) {
    static Run run; // large (the trainer's table); one run per process at a time
    Run *r = &run;
    memset(r, 0, sizeof *r);
    r->s = s;
    r->report = report;
    r->ctx = ctx;
    r->lead = !s->dist || s->dist->rank == 0;
    r->resumed = s->resume != NULL;
    int status = build(r, err, errlen);
    if (!status) status = split_batch(r, err, errlen);
    if (!status) {
        int n = s->dir ? snprintf(r->dir, sizeof r->dir, "%s", s->dir)
                       : snprintf(r->dir, sizeof r->dir, "runs/%.60s", r->t.cfg.name);
        if (n < 0 || (size_t)n >= sizeof r->dir) {
            snprintf(err, errlen, "the run's folder name is too long");
            status = 2;
        } else {
            memcpy(r->latest, r->dir, (size_t)n);
            memcpy(r->latest + n, "/latest.safetensors", sizeof "/latest.safetensors");
        }
        if (!status && r->lead && fs_mkdir_p(r->dir)) {
            snprintf(err, errlen, "cannot create %s: %s", r->dir, strerror(errno));
            status = 1;
        }
    }
    if (!status) status = load_data(r, err, errlen);
    if (!status) {
        const SaganConfig *c = &r->t.cfg;
        TrainEvent e = {.kind = TRAIN_EVENT_STARTED, .step = r->t.step, .steps = s->steps,
                        .resumed = r->resumed, .config = c->name, .batch = r->t.hp.batch,
                        .ch = c->ch, .z_dim = c->z_dim, .classes = c->n_classes, .path = r->dir};
        emit(r, &e);
        if (s->dist && s->dist->size > 1) {
            char line[128];
            snprintf(line, sizeof line, "data parallel: %d processes, %d images each per step",
                     s->dist->size, r->t.hp.batch / s->dist->size);
            note(r, line);
        }
        status = place(r, err, errlen);
    }
    int stopped = 0;
    if (!status) status = loop(r, stop, &stopped, err, errlen);
    double seconds = training_s(r); // the loop's end: the final saves and FD not counted
    if (!status) status = save_latest(r, err, errlen);
    const char *final = s->final_path ? s->final_path : r->latest;
    if (!status && r->lead && s->final_path && (!stopped || s->final_when_stopped) &&
        gan_save(&r->t, s->final_path, err, errlen))
        status = 1;
    if (!status && stopped) {
        TrainEvent e = {.kind = TRAIN_EVENT_STOPPED, .step = r->t.step, .steps = s->steps,
                        .path = r->latest, .seconds = seconds};
        emit(r, &e);
    } else if (!status && r->lead) {
        finish(r, final, seconds);
    }
    run_free(r);
    return status;
}
