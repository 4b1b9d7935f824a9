// jobs.c — background training jobs and the model registry of jobs.h.
// Messages are bounded on purpose: a long path or stderr tail is cut, never overflowed.
#pragma GCC diagnostic ignored "-Wformat-truncation"
#include "server/jobs.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <openssl/evp.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "generator/gan.h"
#include "generator/sagan.h"
#include "kernels/device.h"
#include "util/clock.h"
#include "util/fs.h"

extern char **environ;

static const char *const STATE_NAMES[] = {"queued", "running", "paused", "done", "failed", "cancelled"};

const char *job_state_name(JobState s) {
    return (unsigned)s < sizeof STATE_NAMES / sizeof STATE_NAMES[0] ? STATE_NAMES[s] : "?";
}

static int state_from(const char *s) {
    for (int i = 0; i < (int)(sizeof STATE_NAMES / sizeof STATE_NAMES[0]); i++)
        if (!strcmp(s, STATE_NAMES[i])) return i;
    return -1;
}

// ---- persistence: statements through the store thread ----------------------------------------

static void exec_sql(Jobs *js, char *sql, long job_id, int reply, uint32_t slot, uint32_t serial) {
    StoreItem *it = store_exec_new(sql);
    if (!it) {
        fprintf(stderr, "steer: jobs: out of memory writing job %ld\n", job_id);
        return;
    }
    it->job_id = job_id;
    it->reply = reply;
    it->slot = slot;
    it->session_serial = serial;
    store_submit(js->store, it);
}

// sqlite3_mprintf's %s of a double: NULL for NaN.
static void num_sql(char *buf, size_t n, double v) {
    if (v == v) snprintf(buf, n, "%.17g", v);
    else snprintf(buf, n, "NULL");
}

static void job_save(Jobs *js, const Job *j) {
    char fd[32], pfd[32];
    num_sql(fd, sizeof fd, j->fd);
    num_sql(pfd, sizeof pfd, j->parent_fd);
    exec_sql(js,
             sqlite3_mprintf("UPDATE job SET state = %Q, step = %ld, steps = %ld, fd = %s, "
                             "parent_fd = %s, message = %Q, model_version = %ld, "
                             "updated_unix_us = %lld WHERE id = %ld;",
                             job_state_name(j->state), j->step, j->steps, fd, pfd, j->message,
                             j->model_version, (long long)clock_unix_us(), j->id),
             j->id, 0, 0, 0);
}

static void changed(Jobs *js, Job *j, int save) {
    if (save) job_save(js, j);
    if (js->hooks.changed) js->hooks.changed(js->ctx, j);
}

void jobs_committed(Jobs *js, StoreItem *it) {
    if (it->status)
        fprintf(stderr, "steer: jobs: writing job %ld failed: %s\n", it->job_id, it->msg);
    if (it->reply && js->hooks.submitted) {
        Job *j = jobs_find(js, it->job_id);
        js->hooks.submitted(js->ctx, it->slot, it->session_serial, j, it->status ? it->msg : NULL);
    }
    store_item_free(it);
}

// ---- the registry -----------------------------------------------------------------------------

static ModelEntry *model_find(Jobs *js, long version) {
    for (int i = 0; i < js->n_models; i++)
        if (js->models[i].version == version) return &js->models[i];
    return NULL;
}

static ModelEntry *model_add(Jobs *js) {
    if (js->n_models == js->cap_models) {
        int cap = js->cap_models ? 2 * js->cap_models : 16;
        ModelEntry *m = realloc(js->models, (size_t)cap * sizeof *m);
        if (!m) return NULL;
        js->models = m;
        js->cap_models = cap;
    }
    ModelEntry *m = &js->models[js->n_models++];
    memset(m, 0, sizeof *m);
    m->fd = NAN;
    return m;
}

static int sha256_file(const char *path, char out[65]) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned char buf[1 << 16], md[32];
    unsigned len = 0;
    int ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    size_t n;
    while (ok && (n = fread(buf, 1, sizeof buf, f)) > 0) ok = EVP_DigestUpdate(ctx, buf, n);
    ok = ok && !ferror(f) && EVP_DigestFinal_ex(ctx, md, &len) && len == 32;
    EVP_MD_CTX_free(ctx);
    fclose(f);
    if (!ok) return -1;
    for (int i = 0; i < 32; i++) snprintf(out + 2 * i, 3, "%02x", md[i]);
    return 0;
}

static void model_save(Jobs *js, const ModelEntry *m) {
    char fd[32];
    num_sql(fd, sizeof fd, m->fd);
    exec_sql(js,
             sqlite3_mprintf("INSERT OR REPLACE INTO model(version, path, sha256, parent, job, fd, "
                             "created_unix_us) VALUES(%ld, %Q, %Q, %ld, %ld, %s, %lld);",
                             m->version, m->path, m->sha256, m->parent, m->job, fd,
                             (long long)clock_unix_us()),
             0, 0, 0, 0);
}

// ---- loading a candidate off the loop ----------------------------------------------------------

typedef struct {
    uv_work_t req;
    Jobs *js;
    ModelEntry entry; // filled: version, path, parent, job, fd; sha256 by the work
    int is_new;       // a promotion (register it) rather than a rollback
    Generator *g;
    char err[512];
} SwapWork;

static void swap_work(uv_work_t *req) {
    SwapWork *w = req->data;
    Jobs *js = w->js;
    if (sha256_file(w->entry.path, w->entry.sha256)) {
        snprintf(w->err, sizeof w->err, "cannot read %s", w->entry.path);
        return;
    }
    if (!w->is_new) { // a registered version must still be the file it was
        const ModelEntry *m = model_find(js, w->entry.version);
        if (m && strcmp(m->sha256, w->entry.sha256)) {
            snprintf(w->err, sizeof w->err, "%s changed since it was registered (sha256 %s, was %s)",
                     w->entry.path, w->entry.sha256, m->sha256);
            return;
        }
    }
    Generator *g = calloc(1, sizeof *g);
    char err[400];
    if (!g || generator_load(g, w->entry.path, js->max_B, err, sizeof err)) {
        snprintf(w->err, sizeof w->err, "%s", g ? err : "out of memory");
        free(g);
        return;
    }
    const SaganConfig *c = &g->cfg;
    if (c->z_dim != js->z_dim || c->img != js->img || c->channels != js->channels ||
        c->n_classes != js->classes) {
        snprintf(w->err, sizeof w->err,
                 "%s makes %dx%dx%d frames from z %d with %d classes; the server serves %dx%dx%d "
                 "from z %d with %d",
                 w->entry.path, c->img, c->img, c->channels, c->z_dim, c->n_classes, js->img, js->img,
                 js->channels, js->z_dim, js->classes);
        generator_free(g);
        free(g);
        return;
    }
    // one forward: the weights must give finite frames
    int B = js->max_B < 4 ? js->max_B : 4;
    float z[4 * 4096];
    int32_t y[4] = {0, 1 % (c->n_classes ? c->n_classes : 1), 0, 0};
    for (int i = 0; i < B * c->z_dim && i < 4 * 4096; i++) z[i] = (float)((i * 7919) % 200 - 100) / 60.0f;
    int rc = c->z_dim <= 4096 ? generator_forward(g, z, c->n_classes ? y : NULL, B) : 0;
    long P = (long)B * c->channels * c->img * c->img;
    for (long i = 0; !rc && i < P; i++)
        if (!isfinite(g->img[i])) rc = -1;
    if (rc) {
        snprintf(w->err, sizeof w->err, "%s: the generator does not give finite frames", w->entry.path);
        generator_free(g);
        free(g);
        return;
    }
    w->g = g;
}

static void swap_done(uv_work_t *req, int status) {
    SwapWork *w = req->data;
    Jobs *js = w->js;
    js->swapping = 0;
    Job *j = w->entry.job ? jobs_find(js, w->entry.job) : NULL;
    if (status || !w->g) {
        if (!w->err[0]) snprintf(w->err, sizeof w->err, "cancelled");
        fprintf(stderr, "steer: model version %ld not served: %s\n", w->entry.version, w->err);
        if (j && w->is_new) {
            snprintf(j->message, sizeof j->message, "not promoted: %s", w->err);
            changed(js, j, 1);
        }
        if (js->hooks.swap_failed) js->hooks.swap_failed(js->ctx, w->entry.version, w->err);
        if (w->g) {
            generator_free(w->g);
            free(w->g);
        }
        free(w);
        return;
    }
    ModelEntry *m = model_find(js, w->entry.version);
    if (!m && (m = model_add(js))) *m = w->entry;
    if (m && w->is_new) model_save(js, m);
    js->served = w->entry.version;
    exec_sql(js,
             sqlite3_mprintf("INSERT INTO served(at_unix_us, version, why) VALUES(%lld, %ld, %Q);",
                             (long long)clock_unix_us(), w->entry.version,
                             w->is_new ? "promoted" : "rollback"),
             0, 0, 0, 0);
    if (j && w->is_new) {
        j->model_version = w->entry.version;
        int n = snprintf(j->message, sizeof j->message,
                         "promoted as model version %ld (FD %.3f, parent %.3f)", w->entry.version,
                         j->fd, j->parent_fd);
        if (j->reward == j->reward && n > 0 && (size_t)n < sizeof j->message)
            snprintf(j->message + n, sizeof j->message - n, "; users' reward %.4f, was %.4f",
                     j->reward, j->parent_reward);
        else if (j->gen_speed == j->gen_speed && n > 0 && (size_t)n < sizeof j->message)
            snprintf(j->message + n, sizeof j->message - n, "; %.0f images/s, was %.0f",
                     j->gen_speed, j->parent_gen_speed);
        changed(js, j, 1);
    }
    fprintf(stderr, "steer: now serving model version %ld (%s)\n", w->entry.version, w->entry.path);
    if (js->hooks.swap) js->hooks.swap(js->ctx, w->g, &w->entry);
    free(w);
}

static int start_swap(Jobs *js, const ModelEntry *e, int is_new, char *err, size_t errlen) {
    if (js->swapping) {
        snprintf(err, errlen, "another model version is being loaded");
        return -1;
    }
    SwapWork *w = calloc(1, sizeof *w);
    if (!w) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    w->js = js;
    w->entry = *e;
    w->is_new = is_new;
    w->req.data = w;
    if (uv_queue_work(js->loop, &w->req, swap_work, swap_done)) {
        free(w);
        snprintf(err, errlen, "cannot queue the load");
        return -1;
    }
    js->swapping = 1;
    return 0;
}

static long next_version(const Jobs *js) {
    long v = 0;
    for (int i = 0; i < js->n_models; i++)
        if (js->models[i].version > v) v = js->models[i].version;
    return v + 1;
}

int jobs_rollback(Jobs *js, long version, char *err, size_t errlen) {
    if (!version) {
        const ModelEntry *cur = model_find(js, js->served);
        version = cur ? cur->parent : 0;
        if (!version) {
            snprintf(err, errlen, "model version %ld has no parent to roll back to", js->served);
            return -1;
        }
    }
    const ModelEntry *m = model_find(js, version);
    if (!m) {
        snprintf(err, errlen, "no model version %ld in the registry", version);
        return -1;
    }
    if (version == js->served) {
        snprintf(err, errlen, "model version %ld is already served", version);
        return -1;
    }
    return start_swap(js, m, 0, err, errlen);
}

// A finished job: promoted when its FD does not regress past the margin.
static void consider_promotion(Jobs *js, Job *j, const char *path) {
    if (!j->promote) {
        snprintf(j->message, sizeof j->message, "done; not promoted (promote: false)");
        return;
    }
    if (!(j->fd == j->fd) || !(j->parent_fd == j->parent_fd)) {
        snprintf(j->message, sizeof j->message, "done; not promoted: no FD measured (eval_n: 0?)");
        return;
    }
    if (j->fd > j->parent_fd * (1 + j->fd_margin)) {
        snprintf(j->message, sizeof j->message,
                 "done; not promoted: FD %.3f regresses past the served model's %.3f (margin %g)",
                 j->fd, j->parent_fd, j->fd_margin);
        return;
    }
    // fine-tuning on users must also please them more than the served model does
    if ((j->reward == j->reward || j->parent_reward == j->parent_reward) &&
        !(j->reward > j->parent_reward)) {
        snprintf(j->message, sizeof j->message,
                 "done; not promoted: the users' reward %.4f does not beat the served model's %.4f",
                 j->reward, j->parent_reward);
        return;
    }
    ModelEntry e = {.version = next_version(js), .parent = js->served, .job = j->id, .fd = j->fd};
    snprintf(e.path, sizeof e.path, "%s", path);
    char err[256];
    if (start_swap(js, &e, 1, err, sizeof err))
        snprintf(j->message, sizeof j->message, "done; not promoted: %s", err);
    else
        snprintf(j->message, sizeof j->message, "done; promoting (FD %.3f, served %.3f)", j->fd,
                 j->parent_fd);
}

int jobs_promote(Jobs *js, long id, char *err, size_t errlen) {
    Job *j = jobs_find(js, id);
    if (!j) {
        snprintf(err, errlen, "no job %ld", id);
        return -1;
    }
    if (j->state != JOB_DONE || j->model_version) {
        snprintf(err, errlen, "job %ld is %s%s: only a done job not yet promoted can be", id,
                 job_state_name(j->state), j->model_version ? " and promoted" : "");
        return -1;
    }
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/final.safetensors", j->dir);
    int keep = j->promote;
    j->promote = 1;
    consider_promotion(js, j, path);
    j->promote = keep;
    changed(js, j, 1);
    return 0;
}

// ---- worker processes --------------------------------------------------------------------------

static const char *str_of(const msgpack_object *o, char *buf, size_t n) {
    if (o->type != MSGPACK_OBJECT_STR) return NULL;
    size_t l = o->via.str.size < n - 1 ? o->via.str.size : n - 1;
    memcpy(buf, o->via.str.ptr, l);
    buf[l] = 0;
    return buf;
}

static int num_of(const msgpack_object *o, double *v) {
    switch (o->type) {
    case MSGPACK_OBJECT_POSITIVE_INTEGER: *v = (double)o->via.u64; return 1;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: *v = (double)o->via.i64; return 1;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: *v = o->via.f64; return 1;
    case MSGPACK_OBJECT_NIL: *v = NAN; return 1;
    default: return 0;
    }
}

static void on_worker_message(Jobs *js, Job *j, const msgpack_object *o) {
    if (o->type != MSGPACK_OBJECT_MAP) return;
    char type[32] = "", path[PATH_MAX] = "", msg[400] = "";
    double step = -1, steps = -1, fd = NAN, pfd = NAN, v;
    for (uint32_t i = 0; i < o->via.map.size; i++) {
        const msgpack_object_kv *kv = &o->via.map.ptr[i];
        char key[32];
        if (!str_of(&kv->key, key, sizeof key)) continue;
        if (!strcmp(key, "t")) str_of(&kv->val, type, sizeof type);
        else if (!strcmp(key, "path")) str_of(&kv->val, path, sizeof path);
        else if (!strcmp(key, "msg")) str_of(&kv->val, msg, sizeof msg);
        else if (num_of(&kv->val, &v)) {
            if (!strcmp(key, "step")) step = v;
            else if (!strcmp(key, "steps")) steps = v;
            else if (!strcmp(key, "loss_d")) j->loss_d = v;
            else if (!strcmp(key, "loss_g")) j->loss_g = v;
            else if (!strcmp(key, "images_per_s")) j->images_per_s = v;
            else if (!strcmp(key, "fd")) fd = v;
            else if (!strcmp(key, "parent_fd")) pfd = v;
            else if (!strcmp(key, "reward")) j->reward = v;
            else if (!strcmp(key, "parent_reward")) j->parent_reward = v;
            else if (!strcmp(key, "gen_images_per_s")) j->gen_speed = v;
            else if (!strcmp(key, "parent_gen_images_per_s")) j->parent_gen_speed = v;
            else if (!strcmp(key, "resolution")) j->resolution = (long)v;
            else if (!strcmp(key, "alpha")) j->alpha = v;
        }
    }
    if (step >= 0) j->step = (long)step;
    if (steps >= 0) j->steps = (long)steps;
    if (!strcmp(type, "started")) {
        snprintf(j->message, sizeof j->message, "running from step %ld", j->step);
        changed(js, j, 1);
    } else if (!strcmp(type, "progress")) {
        changed(js, j, 0);
    } else if (!strcmp(type, "checkpoint")) {
        snprintf(j->message, sizeof j->message, "checkpoint at step %ld", j->step);
        changed(js, j, 1);
    } else if (!strcmp(type, "eval")) {
        snprintf(j->message, sizeof j->message, "FD %.3f at step %ld", fd, j->step);
        changed(js, j, 0);
    } else if (!strcmp(type, "stopped")) {
        j->got_stopped = 1;
    } else if (!strcmp(type, "done")) {
        j->got_done = 1;
        j->fd = fd;
        j->parent_fd = pfd;
        j->state = JOB_DONE;
        consider_promotion(js, j, path);
        changed(js, j, 1);
    } else if (!strcmp(type, "failed")) {
        j->got_failed = 1;
        snprintf(j->message, sizeof j->message, "%s", msg);
    }
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    (void)suggested;
    Job *j = h->data;
    if (h == (uv_handle_t *)&j->out) {
        if (!msgpack_unpacker_reserve_buffer(&j->up, 4096)) {
            *buf = uv_buf_init(NULL, 0);
            return;
        }
        *buf = uv_buf_init(msgpack_unpacker_buffer(&j->up), 4096);
    } else {
        static char sink[4096]; // stderr: copied into the tail below, on the loop thread only
        *buf = uv_buf_init(sink, sizeof sink);
    }
}

static void finish(Job *j);

static void on_handle_closed(uv_handle_t *h) {
    Job *j = h->data;
    if (--j->open_handles == 0) finish(j);
}

static void on_out(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
    (void)buf;
    Job *j = s->data;
    if (n <= 0) return;
    msgpack_unpacker_buffer_consumed(&j->up, (size_t)n);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    while (msgpack_unpacker_next(&j->up, &u) == MSGPACK_UNPACK_SUCCESS)
        on_worker_message(j->jobs, j, &u.data);
    msgpack_unpacked_destroy(&u);
}

static void on_err(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
    Job *j = s->data;
    if (n <= 0) {
        if (n < 0 && !uv_is_closing((uv_handle_t *)s)) uv_close((uv_handle_t *)s, on_handle_closed);
        return;
    }
    fwrite(buf->base, 1, (size_t)n, stderr); // the worker's log, in the server's
    size_t keep = JOB_ERRTAIL - 1;
    if ((size_t)n >= keep) {
        memcpy(j->errtail, buf->base + n - keep, keep);
        j->errtail_len = keep;
    } else {
        if (j->errtail_len + (size_t)n > keep) {
            size_t drop = j->errtail_len + (size_t)n - keep;
            memmove(j->errtail, j->errtail + drop, j->errtail_len - drop);
            j->errtail_len -= drop;
        }
        memcpy(j->errtail + j->errtail_len, buf->base, (size_t)n);
        j->errtail_len += (size_t)n;
    }
    j->errtail[j->errtail_len] = 0;
}

static void on_exit_cb(uv_process_t *p, int64_t status, int sig) {
    Job *j = p->data;
    j->alive = 0;
    j->exit_status = status;
    j->term_signal = sig;
    // the pipes may still hold the last messages: read them to EOF, then close
    uv_close((uv_handle_t *)p, on_handle_closed);
}

static void close_pipes(Job *j) {
    if (!uv_is_closing((uv_handle_t *)&j->out)) uv_close((uv_handle_t *)&j->out, on_handle_closed);
    if (!uv_is_closing((uv_handle_t *)&j->err)) uv_close((uv_handle_t *)&j->err, on_handle_closed);
}

// Each pipe is closed at its EOF (the worker's last words are read first), the process handle at
// its exit; the job's fate is decided when all three are closed (finish).
static void on_out_wrapper(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
    on_out(s, n, buf);
    if (n < 0 && !uv_is_closing((uv_handle_t *)s)) uv_close((uv_handle_t *)s, on_handle_closed);
}

// Everything of the process is closed: decide the job's state.
static void finish(Job *j) {
    Jobs *js = j->jobs;
    js->running--;
    if (j->up_ready) msgpack_unpacker_destroy(&j->up);
    j->up_ready = 0;
    if (j->got_done) {
        // state set when `done` came
    } else if (j->want == JOB_WANT_CANCEL) {
        j->state = JOB_CANCELLED;
        snprintf(j->message, sizeof j->message, "cancelled at step %ld", j->step);
    } else if (j->want == JOB_WANT_PAUSE && j->got_stopped) {
        j->state = JOB_PAUSED;
        snprintf(j->message, sizeof j->message, "paused at step %ld", j->step);
    } else if (j->want == JOB_WANT_STOP && j->got_stopped) {
        j->state = JOB_QUEUED;
        snprintf(j->message, sizeof j->message,
                 "interrupted by the server's stop at step %ld; resumes at the next start", j->step);
    } else {
        j->state = JOB_FAILED;
        char why[160];
        if (j->term_signal) snprintf(why, sizeof why, "the worker died of signal %d", j->term_signal);
        else if (j->exit_status) snprintf(why, sizeof why, "the worker exited with status %lld", (long long)j->exit_status);
        else snprintf(why, sizeof why, "the worker exited without finishing");
        char first[200];
        snprintf(first, sizeof first, "%s", j->got_failed ? j->message : "");
        const char *tail = j->errtail;
        size_t room = sizeof j->message - strlen(why) - strlen(first) - 16;
        if (strlen(tail) > room) tail += strlen(tail) - room;
        snprintf(j->message, sizeof j->message, "%s%s%s; stderr: %s", first, first[0] ? "; " : "",
                 why, tail);
    }
    j->want = JOB_WANT_NONE;
    fprintf(stderr, "steer: job %ld %s: %s\n", j->id, job_state_name(j->state), j->message);
    changed(js, j, 1);
    if (!js->stopping) jobs_schedule(js);
}

static int spawn(Jobs *js, Job *j) {
    char threads[32];
    snprintf(threads, sizeof threads, "OMP_NUM_THREADS=%d", js->worker_threads);
    int n_env = 0;
    while (environ[n_env]) n_env++;
    char **env = calloc((size_t)n_env + 3, sizeof *env);
    if (!env) return -1;
    int k = 0;
    for (int i = 0; i < n_env; i++)
        if (strncmp(environ[i], "OMP_NUM_THREADS=", 16) && strncmp(environ[i], "OMP_WAIT_POLICY=", 16))
            env[k++] = environ[i];
    env[k++] = threads;
    env[k++] = "OMP_WAIT_POLICY=passive"; // never spin against the server's generation thread
    env[k] = NULL;
    char *args[] = {js->exe, "worker", "--dir", j->dir, NULL};
    uv_pipe_init(js->loop, &j->out, 0);
    uv_pipe_init(js->loop, &j->err, 0);
    j->out.data = j->err.data = j->proc.data = j;
    uv_stdio_container_t stdio[3] = {
        {.flags = UV_IGNORE},
        {.flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE, .data.stream = (uv_stream_t *)&j->out},
        {.flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE, .data.stream = (uv_stream_t *)&j->err}};
    uv_process_options_t o = {.exit_cb = on_exit_cb, .file = js->exe, .args = args, .env = env,
                              .stdio_count = 3, .stdio = stdio};
    msgpack_unpacker_init(&j->up, 1 << 16);
    j->up_ready = 1;
    j->got_done = j->got_stopped = j->got_failed = 0;
    j->errtail_len = 0;
    j->errtail[0] = 0;
    j->exit_status = 0;
    j->term_signal = 0;
    int rc = uv_spawn(js->loop, &j->proc, &o);
    free(env);
    j->open_handles = 3;
    js->running++;
    if (rc) {
        snprintf(j->errtail, sizeof j->errtail, "cannot start %s: %s", js->exe, uv_strerror(rc));
        j->errtail_len = strlen(j->errtail);
        j->exit_status = 127;
        uv_close((uv_handle_t *)&j->proc, on_handle_closed);
        close_pipes(j);
        return 0;
    }
    j->alive = 1;
    j->state = JOB_RUNNING;
    uv_read_start((uv_stream_t *)&j->out, alloc_cb, on_out_wrapper);
    uv_read_start((uv_stream_t *)&j->err, alloc_cb, on_err);
    snprintf(j->message, sizeof j->message, "worker started (pid %d)", j->proc.pid);
    changed(js, j, 1);
    return 0;
}

void jobs_schedule(Jobs *js) {
    if (js->stopping) return;
    for (int i = 0; i < js->n && js->running < js->max_workers; i++) {
        Job *j = js->v[i];
        if (j->state == JOB_QUEUED && !j->open_handles) spawn(js, j);
    }
}

// ---- the queue -------------------------------------------------------------------------------

Job *jobs_find(Jobs *js, long id) {
    for (int i = 0; i < js->n; i++)
        if (js->v[i]->id == id) return js->v[i];
    return NULL;
}

static Job *job_add(Jobs *js, long id) {
    if (js->n == js->cap) {
        int cap = js->cap ? 2 * js->cap : 16;
        Job **v = realloc(js->v, (size_t)cap * sizeof *v);
        if (!v) return NULL;
        js->v = v;
        js->cap = cap;
    }
    Job *j = calloc(1, sizeof *j);
    if (!j) return NULL;
    j->jobs = js;
    j->id = id;
    j->loss_d = j->loss_g = j->images_per_s = j->fd = j->parent_fd = j->alpha = NAN;
    j->resolution = 0;
    j->reward = j->parent_reward = j->gen_speed = j->parent_gen_speed = NAN;
    j->promote = 1;
    j->fd_margin = 0.05;
    snprintf(j->dir, sizeof j->dir, "%s/jobs/%ld", js->data_dir, id);
    js->v[js->n++] = j;
    if (id >= js->next_id) js->next_id = id + 1;
    return j;
}

// Server-side keys of a spec (the worker ignores them).
static void read_server_keys(Job *j, json_t *root) {
    json_t *p = json_object_get(root, "promote"), *m = json_object_get(root, "fd_margin"),
           *s = json_object_get(root, "steps");
    if (json_is_boolean(p)) j->promote = json_is_true(p);
    if (json_is_number(m)) j->fd_margin = json_number_value(m);
    if (json_is_integer(s)) j->steps = (long)json_integer_value(s);
}

Job *jobs_submit(Jobs *js, const char *spec_json, uint32_t slot, uint32_t serial, char *err,
                 size_t errlen) {
    json_error_t je;
    json_t *root = json_loads(spec_json, 0, &je);
    if (!json_is_object(root)) {
        snprintf(err, errlen, "spec: %s", root ? "must be an object" : je.text);
        json_decref(root);
        return NULL;
    }
    static const char *const known[] = {"kind", "config", "data", "init", "parent", "eval_model",
                                        "steps", "batch", "seed", "save_every", "log_every",
                                        "eval_n", "fail_at", "set", "promote", "fd_margin", "classes", "limit",
                                        "store", "teacher", "beta", "lambda", "w_pix", "w_feat",
                                        "w_adv", "reward_n", "ch", "eval_every", "seconds", "device", "tf32",
                                        "bf16", NULL};
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        int ok = 0;
        for (int i = 0; known[i]; i++) ok |= !strcmp(key, known[i]);
        if (!ok) {
            snprintf(err, errlen, "spec: unknown key '%s'", key);
            json_decref(root);
            return NULL;
        }
    }
    // where and how the worker computes: checked here, so a bad value is refused at submission
    // rather than failing the job later (the worker checks them again)
    static const char *const flags[] = {"tf32", "bf16"};
    for (int i = 0; i < 2; i++) {
        json_t *f = json_object_get(root, flags[i]);
        if (f && !json_is_boolean(f)) {
            snprintf(err, errlen, "spec: %s must be true or false", flags[i]);
            json_decref(root);
            return NULL;
        }
    }
    json_t *dv = json_object_get(root, "device");
    Device dev;
    if (dv && (!json_is_string(dv) || device_parse(json_string_value(dv), &dev))) {
        snprintf(err, errlen, "spec: device must be \"auto\", \"cpu\" or \"cuda\"");
        json_decref(root);
        return NULL;
    }
    json_t *st = json_object_get(root, "steps");
    if (st && (!json_is_integer(st) || json_integer_value(st) < 1)) {
        snprintf(err, errlen, "spec: steps must be an integer >= 1");
        json_decref(root);
        return NULL;
    }
    // the served model is the parent the result is measured against
    const ModelEntry *cur = model_find(js, js->served);
    if (!json_object_get(root, "parent") && cur)
        json_object_set_new(root, "parent", json_string(cur->path));
    if (!json_object_get(root, "eval_n")) json_object_set_new(root, "eval_n", json_integer(2000));
    json_t *kind = json_object_get(root, "kind");
    if (json_is_string(kind) && !strcmp(json_string_value(kind), "finetune") &&
        !json_object_get(root, "store")) { // the users' feedback: this server's store
        char db[PATH_MAX + 16];
        snprintf(db, sizeof db, "%s/steer.db", js->data_dir);
        json_object_set_new(root, "store", json_string(db));
    }
    char *text = json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS);
    Job *j = text ? job_add(js, js->next_id) : NULL;
    if (!j) {
        snprintf(err, errlen, "out of memory");
        free(text);
        json_decref(root);
        return NULL;
    }
    j->spec = text;
    read_server_keys(j, root);
    json_decref(root);
    char path[PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/spec.json", j->dir);
    FILE *f = NULL;
    if (fs_mkdir_p(j->dir) || !(f = fopen(path, "w")) || fputs(text, f) < 0 || fclose(f)) {
        if (f) fclose(f);
        j->state = JOB_FAILED;
        snprintf(j->message, sizeof j->message, "cannot write %s: %s", path, strerror(errno));
    } else {
        j->state = JOB_QUEUED;
        snprintf(j->message, sizeof j->message, "queued");
    }
    long long now = (long long)clock_unix_us();
    exec_sql(js,
             sqlite3_mprintf("INSERT INTO job(id, spec, state, steps, message, created_unix_us, "
                             "updated_unix_us) VALUES(%ld, %Q, %Q, %ld, %Q, %lld, %lld);",
                             j->id, j->spec, job_state_name(j->state), j->steps, j->message, now, now),
             j->id, 1, slot, serial);
    jobs_schedule(js);
    return j;
}

int jobs_cancel(Jobs *js, long id, char *err, size_t errlen) {
    Job *j = jobs_find(js, id);
    if (!j) {
        snprintf(err, errlen, "no job %ld", id);
        return -1;
    }
    if (j->state == JOB_DONE || j->state == JOB_FAILED || j->state == JOB_CANCELLED) {
        snprintf(err, errlen, "job %ld is already %s", id, job_state_name(j->state));
        return -1;
    }
    if (j->alive) {
        j->want = JOB_WANT_CANCEL;
        uv_process_kill(&j->proc, SIGTERM);
        snprintf(j->message, sizeof j->message, "cancelling");
        changed(js, j, 0);
        return 0;
    }
    j->state = JOB_CANCELLED;
    snprintf(j->message, sizeof j->message, "cancelled at step %ld", j->step);
    changed(js, j, 1);
    return 0;
}

int jobs_pause(Jobs *js, long id, char *err, size_t errlen) {
    Job *j = jobs_find(js, id);
    if (!j) {
        snprintf(err, errlen, "no job %ld", id);
        return -1;
    }
    if (j->state == JOB_QUEUED && !j->alive) {
        j->state = JOB_PAUSED;
        snprintf(j->message, sizeof j->message, "paused before it started");
        changed(js, j, 1);
        return 0;
    }
    if (j->state != JOB_RUNNING || !j->alive) {
        snprintf(err, errlen, "job %ld is %s, not running", id, job_state_name(j->state));
        return -1;
    }
    j->want = JOB_WANT_PAUSE;
    uv_process_kill(&j->proc, SIGTERM);
    snprintf(j->message, sizeof j->message, "pausing");
    changed(js, j, 0);
    return 0;
}

int jobs_resume(Jobs *js, long id, char *err, size_t errlen) {
    Job *j = jobs_find(js, id);
    if (!j) {
        snprintf(err, errlen, "no job %ld", id);
        return -1;
    }
    if (j->state != JOB_PAUSED && j->state != JOB_FAILED) {
        snprintf(err, errlen, "job %ld is %s: only a paused or failed job resumes", id,
                 job_state_name(j->state));
        return -1;
    }
    if (j->open_handles) {
        snprintf(err, errlen, "job %ld's worker is still exiting", id);
        return -1;
    }
    j->state = JOB_QUEUED;
    snprintf(j->message, sizeof j->message, "queued to resume from step %ld", j->step);
    changed(js, j, 1);
    jobs_schedule(js);
    return 0;
}

void jobs_stop(Jobs *js) {
    js->stopping = 1;
    for (int i = 0; i < js->n; i++) {
        Job *j = js->v[i];
        if (j->alive) {
            if (j->want == JOB_WANT_NONE) j->want = JOB_WANT_STOP;
            uv_process_kill(&j->proc, SIGTERM);
        }
    }
}

int jobs_alive(const Jobs *js) {
    int n = 0;
    for (int i = 0; i < js->n; i++) n += js->v[i]->open_handles > 0;
    return n;
}

void jobs_kill(Jobs *js) {
    for (int i = 0; i < js->n; i++)
        if (js->v[i]->alive) uv_process_kill(&js->v[i]->proc, SIGKILL);
}

// ---- open / free -----------------------------------------------------------------------------

int jobs_open(Jobs *js, uv_loop_t *loop, Store *store, const char *data_dir, const char *model_path,
              int max_workers, const JobsHooks *hooks, void *ctx, char *serve_path, char *err,
              size_t errlen) {
    memset(js, 0, sizeof *js);
    js->loop = loop;
    js->store = store;
    js->max_workers = max_workers;
    js->worker_threads = 1;
    js->hooks = *hooks;
    js->ctx = ctx;
    js->next_id = 1;
    snprintf(js->data_dir, sizeof js->data_dir, "%s", data_dir);
    ssize_t n = readlink("/proc/self/exe", js->exe, sizeof js->exe - 1);
    if (n <= 0) {
        snprintf(err, errlen, "cannot find this program (/proc/self/exe) to spawn workers");
        return -1;
    }
    js->exe[n] = 0;
    snprintf(serve_path, PATH_MAX, "%s", model_path);
    char db_path[PATH_MAX + 16];
    snprintf(db_path, sizeof db_path, "%s/steer.db", data_dir);
    sqlite3 *db = NULL;
    sqlite3_stmt *q = NULL;
    if (sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "%s: %s", db_path, db ? sqlite3_errmsg(db) : "cannot open");
        sqlite3_close(db);
        return -1;
    }
    int rc = 0;
    if (sqlite3_prepare_v2(db, "SELECT version, path, sha256, parent, job, fd FROM model ORDER BY version",
                           -1, &q, NULL) == SQLITE_OK) {
        while (sqlite3_step(q) == SQLITE_ROW) {
            ModelEntry *m = model_add(js);
            if (!m) break;
            m->version = sqlite3_column_int64(q, 0);
            snprintf(m->path, sizeof m->path, "%s", (const char *)sqlite3_column_text(q, 1));
            snprintf(m->sha256, sizeof m->sha256, "%s", (const char *)sqlite3_column_text(q, 2));
            m->parent = sqlite3_column_int64(q, 3);
            m->job = sqlite3_column_int64(q, 4);
            m->fd = sqlite3_column_type(q, 5) == SQLITE_NULL ? NAN : sqlite3_column_double(q, 5);
        }
    }
    sqlite3_finalize(q);
    q = NULL;
    if (sqlite3_prepare_v2(db, "SELECT version FROM served ORDER BY rowid DESC LIMIT 1", -1, &q,
                           NULL) == SQLITE_OK &&
        sqlite3_step(q) == SQLITE_ROW)
        js->served = sqlite3_column_int64(q, 0);
    sqlite3_finalize(q);
    q = NULL;
    const ModelEntry *cur = model_find(js, js->served);
    if (cur && !access(cur->path, R_OK)) {
        snprintf(serve_path, PATH_MAX, "%s", cur->path);
    } else {
        // a fresh store, or the served version's file is gone: --model is what is served; it is
        // registered under its own sha256 (a known file keeps its version)
        char sha[65];
        if (sha256_file(model_path, sha)) {
            snprintf(err, errlen, "cannot read the model %s", model_path);
            rc = -1;
        }
        ModelEntry *m = NULL;
        for (int i = 0; !rc && i < js->n_models && !m; i++)
            if (!strcmp(js->models[i].sha256, sha)) m = &js->models[i];
        if (!rc && !m && (m = model_add(js))) {
            m->version = next_version(js);
            snprintf(m->path, sizeof m->path, "%s", model_path);
            memcpy(m->sha256, sha, sizeof m->sha256);
            model_save(js, m);
        }
        if (m) {
            js->served = m->version;
            exec_sql(js,
                     sqlite3_mprintf("INSERT INTO served(at_unix_us, version, why) VALUES(%lld, %ld, "
                                     "'start');", (long long)clock_unix_us(), m->version),
                     0, 0, 0, 0);
        }
    }
    if (!rc && sqlite3_prepare_v2(db,
                                  "SELECT id, spec, state, step, steps, fd, parent_fd, message, "
                                  "model_version FROM job ORDER BY id",
                                  -1, &q, NULL) == SQLITE_OK) {
        while (sqlite3_step(q) == SQLITE_ROW) {
            Job *j = job_add(js, sqlite3_column_int64(q, 0));
            if (!j) break;
            j->spec = strdup((const char *)sqlite3_column_text(q, 1));
            int st = state_from((const char *)sqlite3_column_text(q, 2));
            j->state = st < 0 ? JOB_FAILED : (JobState)st;
            j->step = sqlite3_column_int64(q, 3);
            j->steps = sqlite3_column_int64(q, 4);
            j->fd = sqlite3_column_type(q, 5) == SQLITE_NULL ? NAN : sqlite3_column_double(q, 5);
            j->parent_fd = sqlite3_column_type(q, 6) == SQLITE_NULL ? NAN : sqlite3_column_double(q, 6);
            snprintf(j->message, sizeof j->message, "%s", (const char *)sqlite3_column_text(q, 7));
            j->model_version = sqlite3_column_int64(q, 8);
            json_t *root = j->spec ? json_loads(j->spec, 0, NULL) : NULL;
            if (root) read_server_keys(j, root);
            json_decref(root);
            if (j->state == JOB_RUNNING) { // the server stopped (or died) while it ran
                j->state = JOB_QUEUED;
                snprintf(j->message, sizeof j->message, "resuming from its last checkpoint");
                job_save(js, j);
            }
        }
    }
    sqlite3_finalize(q);
    sqlite3_close(db);
    return rc;
}

void jobs_set_shape(Jobs *js, int max_B, int z_dim, int img, int channels, int classes) {
    js->max_B = max_B;
    js->z_dim = z_dim;
    js->img = img;
    js->channels = channels;
    js->classes = classes;
}

void jobs_free(Jobs *js) {
    for (int i = 0; i < js->n; i++) {
        if (js->v[i]->up_ready) msgpack_unpacker_destroy(&js->v[i]->up);
        free(js->v[i]->spec);
        free(js->v[i]);
    }
    free(js->v);
    free(js->models);
    memset(js, 0, sizeof *js);
}
