// store.h — the feedback store: one thread, the only SQLite writer, group-committing feedback in
// WAL mode with synchronous=FULL and answering each item only after its COMMIT (the loop then sends
// `ack`). Client ids are UNIQUE per user, so a retried feedback is acknowledged again and stored
// once. Every stored row carries the latent, class, model and policy versions of each frame it
// names, so any label can be replayed.
//
// Threads: store_submit and store_take_done are called by the loop thread; the store thread owns
// the SQLite connection. Items name sessions by slot and serial, never by pointer.
#ifndef SERVER_STORE_H
#define SERVER_STORE_H
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdint.h>
#include <uv.h>

#define STORE_MAX_FRAMES 16 // frames one feedback may name (choose: `among`)
#define STORE_ID_MAX 64     // bytes of a client id

// STORE_EXEC: not feedback but SQL statements (jobs, the model registry: server/jobs.h) written in
// the same group commit, answered after it.
typedef enum { STORE_RATE, STORE_PAIR, STORE_CHOOSE, STORE_EXEC } StoreKind;
// The part a frame plays in a feedback row.
typedef enum { STORE_ROLE_RATED, STORE_ROLE_WINNER, STORE_ROLE_LOSER, STORE_ROLE_CHOSEN, STORE_ROLE_AMONG } StoreRole;

typedef struct {
    uint64_t frame;
    int role, known; // known: the session remembered this frame (latent and class below are valid)
    int32_t cls;
    uint64_t model_version, policy_version;
} StoreFrame;

// One feedback on its way to the store and back. The latents (n_frames, z_dim) follow the struct.
typedef struct StoreItem {
    struct StoreItem *next;
    uint32_t slot, session_serial;
    char client_id[STORE_ID_MAX + 1];
    int id_is_int; // the client sent its id as an integer: ack it as one
    char user[65];
    int kind;
    double value; // rate: -1..1
    int tie;      // pair: the user could not tell
    double t_recv; // clock_now_s() when the loop received it (the learning thread's latency figure)
    char *sql;     // STORE_EXEC: statements (sqlite3_mprintf'ed; freed with store_item_free)
    long job_id;   // STORE_EXEC: the job it concerns (a submit is answered after COMMIT)
    int reply;     // STORE_EXEC: 1 = answer the session (slot, serial) when committed
    int n_frames, z_dim;
    StoreFrame frames[STORE_MAX_FRAMES];
    // answer, set by the store thread
    int status;    // 0 stored (or already stored), else a PROTO_E* code
    int duplicate; // it was already stored: acknowledged again, not stored twice
    char msg[96];
    float latents[]; // (n_frames, z_dim)
} StoreItem;

typedef struct {
    char path[4096];
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    StoreItem *in_head, *in_tail, *done_head, *done_tail;
    uv_async_t *async;
    int stop, started, locks_ready;
    uint64_t commits, items; // figures for /metrics (store thread writes under lock)
    double commit_s_total;
} Store;

// Opens (creating if needed) DIR/steer.db, sets WAL and synchronous=FULL, makes the schema, and
// starts the store thread. Returns 0, or -1 with err set (nothing left running).
int store_open(Store *st, const char *dir, uv_async_t *async, char *err, size_t errlen);
// A new item for n frames of z_dim latents (zeroed), or NULL when memory runs out.
StoreItem *store_item_new(int n_frames, int z_dim);
// A STORE_EXEC item for sql (sqlite3_mprintf'ed, owned by the item from now on), or NULL.
StoreItem *store_exec_new(char *sql);
// Frees an item (and its sql).
void store_item_free(StoreItem *it);
// Hands an item to the store thread (which owns it until store_take_done returns it).
void store_submit(Store *st, StoreItem *item);
// Takes every answered item, oldest first; the caller frees each with free().
StoreItem *store_take_done(Store *st);
// Commits what is queued, stops the thread and closes the database. Safe on a half-opened Store.
void store_close(Store *st);

// The stored feedback of DIR/steer.db, read-only (a live server may be writing it), written to
// out in id order: STORE_EXPORT_TRL is JSONL, one object per feedback with its frames as
// `chosen` / `rejected` (pair and choose, as TRL's preference datasets name them) or `rated`
// (rate), each with its class, versions and latent; STORE_EXPORT_CSV one row per named frame
// (README, "steer export"). *rows receives the feedback count. Returns 0, or -1 with err set.
typedef enum { STORE_EXPORT_TRL, STORE_EXPORT_CSV } StoreExportFormat;
int store_export(const char *dir, StoreExportFormat format, FILE *out, long *rows, char *err,
                 size_t errlen);

#endif
