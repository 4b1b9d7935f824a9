// jobs.h — background training jobs of `steer serve`: a queue persisted in SQLite (through the
// store thread, the only writer), `steer worker` processes spawned and supervised on the loop
// (uv_spawn, msgpack messages over the worker's stdout pipe, the tail of its stderr kept for a
// failure), and the registry of model versions that promotion and rollback go through.
//
// Threads: everything here runs on the loop thread, except the promotion work (sha256 and loading
// the candidate generator), which runs on libuv's thread pool and comes back through its after
// callback. The server hears of changes through JobsHooks.
//
// States: queued -> running -> done | failed | cancelled; running -> paused (SIGTERM, the worker
// checkpoints and exits 0) -> queued on resume. A job whose server stops goes back to queued and
// resumes from its checkpoint at the next start. A worker that dies (signal, non-zero exit, or
// exit without `done`) fails its job with the tail of its stderr; the server goes on.
#ifndef SERVER_JOBS_H
#define SERVER_JOBS_H

#include <limits.h>
#include <msgpack.h>
#include <stdint.h>
#include <uv.h>

#include "server/store.h"

typedef enum { JOB_QUEUED, JOB_RUNNING, JOB_PAUSED, JOB_DONE, JOB_FAILED, JOB_CANCELLED } JobState;
const char *job_state_name(JobState s);

typedef enum { JOB_WANT_NONE, JOB_WANT_PAUSE, JOB_WANT_CANCEL, JOB_WANT_STOP } JobWant;

#define JOB_ERRTAIL 2048

typedef struct Jobs Jobs;

typedef struct Job {
    Jobs *jobs;
    long id;
    JobState state;
    char *spec;      // the JSON text as submitted (with the server's defaults filled in)
    char dir[PATH_MAX];
    long step, steps;
    double loss_d, loss_g, images_per_s, fd, parent_fd; // NaN while unknown
    double reward, parent_reward;     // finetune: the users' reward after and before (NaN: none)
    double gen_speed, parent_gen_speed; // distill: G images/s of the student and the teacher
    long resolution;  // progressive growing: the resolution of the last progress (0: none)
    double alpha;     // and its fade-in (NaN: none)
    char message[512];
    long model_version; // the version it was promoted as (0: none)
    int promote;        // spec: promote when the gate passes (default 1)
    double fd_margin;   // spec: promoted only if fd <= parent_fd * (1 + fd_margin)
    // the worker process, while alive
    uv_process_t proc;
    uv_pipe_t out, err;
    int open_handles; // proc, out, err not yet closed
    int alive;        // the process has not exited yet
    int got_done, got_stopped, got_failed;
    JobWant want;
    msgpack_unpacker up;
    int up_ready;
    char errtail[JOB_ERRTAIL];
    size_t errtail_len;
    int64_t exit_status;
    int term_signal;
} Job;

// A version of the served generator in the registry.
typedef struct {
    long version, parent, job;
    char path[PATH_MAX];
    char sha256[65];
    double fd;
} ModelEntry;

typedef struct {
    // a job changed (state, progress, result): tell the admin sessions
    void (*changed)(void *ctx, const Job *j);
    // a submit's row is committed: answer the session that asked (slot, serial)
    void (*submitted)(void *ctx, uint32_t slot, uint32_t serial, const Job *j, const char *error);
    // a new model version is loaded and checked: the server swaps it in (takes g) and says so
    void (*swap)(void *ctx, void *g, const ModelEntry *m);
    // a promotion or rollback failed (the served model stays): tell the admin sessions
    void (*swap_failed)(void *ctx, long version, const char *why);
} JobsHooks;

struct Jobs {
    uv_loop_t *loop;
    Store *store;
    char data_dir[PATH_MAX], exe[PATH_MAX];
    int max_workers, running, worker_threads;
    int max_B;                        // batch the server loads generators at
    int z_dim, img, channels, classes; // a candidate must make frames of this shape
    Job **v;
    int n, cap;
    long next_id;
    ModelEntry *models;
    int n_models, cap_models;
    long served; // the version being served now
    int swapping; // a promotion or rollback is loading
    int stopping;
    JobsHooks hooks;
    void *ctx;
};

// Reads the jobs and the registry from DIR/steer.db (the store has made the tables), registers
// the served checkpoint as version 1 on a fresh store, and picks the version to serve: the last
// one swapped in (`served` table) if its file still loads, else --model. *serve_path receives it
// (PATH_MAX). Jobs that were running or queued are queued again (jobs_schedule starts them).
// Returns 0 or -1 with err set.
int jobs_open(Jobs *js, uv_loop_t *loop, Store *store, const char *data_dir, const char *model_path,
              int max_workers, const JobsHooks *hooks, void *ctx, char *serve_path, char *err,
              size_t errlen);
// The served generator's shape and batch, for checking candidates; call after loading it.
void jobs_set_shape(Jobs *js, int max_B, int z_dim, int img, int channels, int classes);
// Starts queued jobs while fewer than max_workers run.
void jobs_schedule(Jobs *js);
// A new job from its JSON spec (an object; see server/worker.h). Returns the job, or NULL with err
// set (bad spec). The row is written through the store; `submitted` is called after COMMIT.
Job *jobs_submit(Jobs *js, const char *spec_json, uint32_t slot, uint32_t serial, char *err,
                 size_t errlen);
Job *jobs_find(Jobs *js, long id);
// cancel / pause / resume. Return 0 or -1 with err set (unknown job, or not in a state for it).
int jobs_cancel(Jobs *js, long id, char *err, size_t errlen);
int jobs_pause(Jobs *js, long id, char *err, size_t errlen);
int jobs_resume(Jobs *js, long id, char *err, size_t errlen);
// Promotes a done job that was not promoted (its `promote` was false, or a swap failed): the same
// FD gate. Returns 0 (started, or refused by the gate: see the job's message) or -1 with err set.
int jobs_promote(Jobs *js, long id, char *err, size_t errlen);
// Serves registry version `version` (0: the served version's parent): loads it off the loop and
// calls swap. Returns 0 (started) or -1 with err set.
int jobs_rollback(Jobs *js, long version, char *err, size_t errlen);
// The store answered a STORE_EXEC item of ours; frees it.
void jobs_committed(Jobs *js, StoreItem *it);
// Server stopping: SIGTERM every worker (each checkpoints); its job is queued for the next start.
void jobs_stop(Jobs *js);
// Workers still alive (the server waits for them before closing the store).
int jobs_alive(const Jobs *js);
// SIGKILLs what is still alive (after the server's patience ran out).
void jobs_kill(Jobs *js);
// Frees everything (after the loop has closed every handle).
void jobs_free(Jobs *js);

#endif
