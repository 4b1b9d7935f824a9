// worker.c — `steer worker`: runs one background training job (spawned and supervised by
// `steer serve`, server/jobs.h, or run by hand) and reports every step of the way as msgpack maps
// on stdout. The run itself is generator/train.h's, the spec's keys generator/train_spec.h's;
// here are the job folder, the users' reward of a finetune job and the messages. Messages are
// bounded on purpose: a long path or stderr tail is cut, never overflowed.
//
// A job is a folder: DIR/spec.json (what to train, written by whoever submits the job) and what
// the worker writes there: DIR/latest.safetensors (the whole training state: a resumed worker
// continues exactly where the last checkpoint left it) and DIR/final.safetensors when it finishes.
// Progress goes to stdout as a stream of msgpack maps, each with a string key `t` (a pipe to the
// server; docs/jobs.md lists them), logs to stderr. SIGTERM (pause, cancel, server stop) makes it
// save a checkpoint after the current step and exit 0 with `stopped`.
#pragma GCC diagnostic ignored "-Wformat-truncation"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <msgpack.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "cmd/args.h"
#include "cmd/commands.h"
#include "generator/dist.h"
#include "generator/train.h"
#include "generator/train_spec.h"
#include "server/learn.h"

static volatile sig_atomic_t stop_requested;
static void on_signal(int sig) {
    (void)sig;
    stop_requested = 1;
}

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

// ---- the run's events as messages and log lines -----------------------------------------------

static void on_event(void *ctx, const TrainEvent *e) {
    const TrainSpec *s = ctx;
    Msg m;
    switch (e->kind) {
    case TRAIN_EVENT_NOTE: fprintf(stderr, "steer worker: %s\n", e->text); break;
    case TRAIN_EVENT_STARTED:
        msg_begin(&m, "started", 4);
        kv_int(&m, "step", e->step);
        kv_int(&m, "steps", e->steps);
        kv_int(&m, "resumed", e->resumed);
        kv_str(&m, "config", e->config);
        msg_send(&m);
        fprintf(stderr, "steer worker: %s %s at step %ld of %ld, batch %d\n",
                e->resumed ? "resumed" : "training", e->config, e->step, e->steps, e->batch);
        break;
    case TRAIN_EVENT_PROGRESS:
        msg_begin(&m, "progress", 5 + (s->kind == TRAIN_FINETUNE) + 2 * (s->kind == TRAIN_DISTILL) +
                                      2 * e->prog);
        kv_int(&m, "step", e->step);
        if (e->prog) { // where progressive growing stands (of the step just done)
            kv_int(&m, "resolution", e->resolution);
            kv_num(&m, "alpha", e->alpha);
        }
        kv_int(&m, "steps", e->steps);
        kv_num(&m, "loss_d", e->loss_d);
        kv_num(&m, "loss_g", e->loss_g);
        kv_num(&m, "images_per_s", e->images_per_s);
        if (s->kind == TRAIN_FINETUNE) kv_num(&m, "reward", e->reward);
        if (s->kind == TRAIN_DISTILL) {
            kv_num(&m, "pixel_loss", e->pixel_loss);
            kv_num(&m, "feature_loss", e->feature_loss);
        }
        msg_send(&m);
        break;
    case TRAIN_EVENT_EVAL:
        msg_begin(&m, "eval", 3);
        kv_int(&m, "step", e->step);
        kv_num(&m, "fd", e->fd);
        kv_num(&m, "seconds", e->seconds);
        msg_send(&m);
        fprintf(stderr, "steer worker: step %ld FD %.3f%s%s\n", e->step, e->fd,
                e->text[0] ? ": " : "", e->text);
        break;
    case TRAIN_EVENT_CHECKPOINT:
        msg_begin(&m, "checkpoint", 2);
        kv_int(&m, "step", e->step);
        kv_str(&m, "path", e->path);
        msg_send(&m);
        break;
    case TRAIN_EVENT_SAMPLES: fprintf(stderr, "steer worker: sample grid %s\n", e->path); break;
    case TRAIN_EVENT_STOPPED:
        msg_begin(&m, "stopped", 2);
        kv_int(&m, "step", e->step);
        kv_str(&m, "path", e->path);
        msg_send(&m);
        fprintf(stderr, "steer worker: stopped at step %ld; checkpoint %s\n", e->step, e->path);
        break;
    case TRAIN_EVENT_DONE:
        msg_begin(&m, "done", 10);
        kv_int(&m, "step", e->step);
        kv_num(&m, "seconds", e->seconds);
        kv_str(&m, "path", e->path);
        kv_num(&m, "fd", e->fd);
        kv_num(&m, "parent_fd", e->parent_fd);
        kv_int(&m, "eval_n", e->eval_n);
        kv_num(&m, "reward", e->reward);
        kv_num(&m, "parent_reward", e->parent_reward);
        kv_num(&m, "gen_images_per_s", e->gen_images_per_s);
        kv_num(&m, "parent_gen_images_per_s", e->parent_gen_images_per_s);
        msg_send(&m);
        if (s->kind == TRAIN_FINETUNE)
            fprintf(stderr, "steer worker: users' reward %.4f (served %.4f) over %ld frames\n",
                    e->reward, e->parent_reward, s->finetune.eval_n);
        if (s->kind == TRAIN_DISTILL)
            fprintf(stderr, "steer worker: student %.0f images/s, teacher %.0f (batch 64)\n",
                    e->gen_images_per_s, e->parent_gen_images_per_s);
        fprintf(stderr, "steer worker: done at step %ld; %s; FD %.3f (parent %.3f, n %ld)\n",
                e->step, e->path, e->fd, e->parent_fd, e->eval_n);
        break;
    }
}

// ---- the job ----------------------------------------------------------------------------------

static void usage(FILE *f) {
    fprintf(f, "usage: steer worker --dir DIR\n"
               "Runs the training job DIR/spec.json (docs/jobs.md lists its keys), resuming from\n"
               "DIR/latest.safetensors when it exists. Progress: msgpack maps on stdout; logs on\n"
               "stderr. SIGTERM saves a checkpoint and stops. Under mpirun, the job's batch is\n"
               "split over the processes (data parallel); rank 0 reports.\n");
}

static int run(const char *dir, Dist *dist) {
    char path[PATH_MAX], err[1024];
    snprintf(path, sizeof path, "%s/spec.json", dir);
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (!root) {
        snprintf(err, sizeof err, "%s: %s (line %d)", path, jerr.text, jerr.line);
        send_failed(err);
        return 1;
    }
    TrainSpec s;
    const char *store;
    LearnReward users;
    FinetuneReward reward;
    memset(&users, 0, sizeof users);
    int status = 1;
    char latest[PATH_MAX + 32], final[PATH_MAX + 32];
    snprintf(latest, sizeof latest, "%s/latest.safetensors", dir);
    snprintf(final, sizeof final, "%s/final.safetensors", dir);
    if (train_spec_from_json(&s, root, &store, err, sizeof err)) goto fail;
    s.dir = dir;
    s.final_path = final;
    s.resume = access(latest, F_OK) == 0 ? latest : NULL;
    s.dist = dist;
    if (s.kind == TRAIN_FINETUNE) { // the users' reward, from the server's store
        if (learn_reward_init(&users, s.init, store, err, sizeof err)) goto fail;
        reward = frame_reward_finetune(&users.reward);
        s.reward = &reward;
        fprintf(stderr, "steer worker: the users' reward: %ld comparisons, held-out accuracy %.3f\n",
                users.comparisons, users.accuracy);
    }
    if (train_run(&s, on_event, &s, &stop_requested, err, sizeof err)) goto fail;
    status = 0;
    goto done;
fail:
    send_failed(err);
done:
    learn_reward_free(&users);
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
        default: return args_usage_exit(usage, o);
        }
    }
    if (!dir) {
        usage(stderr);
        return 2;
    }
    if (args_none_left("worker", argc, argv)) return 2;
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    signal(SIGPIPE, SIG_IGN); // a vanished supervisor must not kill the job before it saves
    prctl(PR_SET_PDEATHSIG, SIGTERM); // nor leave it running alone: the parent's death stops it
    Dist dist;
    char err[256];
    if (dist_init(&dist, err, sizeof err)) {
        send_failed(err);
        return 1;
    }
    if (dist.rank > 0 && !freopen("/dev/null", "w", stdout)) return 1; // rank 0 reports
    int rc = run(dir, &dist);
    dist_free(&dist);
    return rc;
}
