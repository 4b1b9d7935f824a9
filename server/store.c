// store.c — the feedback store thread (see store.h) and the export of what it stored. Group commit: the thread
// takes every item queued since its last COMMIT, writes them in one transaction and fsyncs once
// (synchronous=FULL in WAL mode), then answers them all; under load many feedbacks share one fsync.
// Not here: reading feedback back into policies (issue 4's policy thread does that).
#include "server/store.h"

#include <errno.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "server/proto.h"
#include "util/clock.h"

static const char *const kind_names[] = {"rate", "pair", "choose"};
static const char *const role_names[] = {"rated", "winner", "loser", "chosen", "among"};

static const char SCHEMA[] =
    "CREATE TABLE IF NOT EXISTS feedback("
    "  id INTEGER PRIMARY KEY,"
    "  user TEXT NOT NULL,"
    "  client_id TEXT NOT NULL,"
    "  kind TEXT NOT NULL,"
    "  value REAL,"
    "  tie INTEGER NOT NULL DEFAULT 0,"
    "  created_unix_us INTEGER NOT NULL,"
    "  UNIQUE(user, client_id));"
    "CREATE TABLE IF NOT EXISTS feedback_frame("
    "  feedback INTEGER NOT NULL REFERENCES feedback(id),"
    "  role TEXT NOT NULL,"
    "  frame INTEGER NOT NULL,"
    "  class INTEGER NOT NULL,"
    "  model_version INTEGER NOT NULL,"
    "  policy_version INTEGER NOT NULL,"
    "  latent BLOB NOT NULL);"
    "CREATE INDEX IF NOT EXISTS feedback_frame_of ON feedback_frame(feedback);"
    // background training (server/jobs.h): jobs and the registry of model versions
    "CREATE TABLE IF NOT EXISTS job("
    "  id INTEGER PRIMARY KEY,"
    "  spec TEXT NOT NULL,"
    "  state TEXT NOT NULL,"
    "  step INTEGER NOT NULL DEFAULT 0,"
    "  steps INTEGER NOT NULL DEFAULT 0,"
    "  fd REAL, parent_fd REAL,"
    "  message TEXT NOT NULL DEFAULT '',"
    "  model_version INTEGER,"
    "  created_unix_us INTEGER NOT NULL,"
    "  updated_unix_us INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS model("
    "  version INTEGER PRIMARY KEY,"
    "  path TEXT NOT NULL,"
    "  sha256 TEXT NOT NULL,"
    "  parent INTEGER,"
    "  job INTEGER,"
    "  fd REAL,"
    "  created_unix_us INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS served("
    "  at_unix_us INTEGER NOT NULL,"
    "  version INTEGER NOT NULL,"
    "  why TEXT NOT NULL);";

StoreItem *store_item_new(int n_frames, int z_dim) {
    StoreItem *it = calloc(1, sizeof *it + sizeof(float) * (size_t)n_frames * (size_t)z_dim);
    if (!it) return NULL;
    it->n_frames = n_frames;
    it->z_dim = z_dim;
    return it;
}

StoreItem *store_exec_new(char *sql) {
    if (!sql) return NULL;
    StoreItem *it = store_item_new(0, 0);
    if (!it) {
        sqlite3_free(sql);
        return NULL;
    }
    it->kind = STORE_EXEC;
    it->sql = sql;
    return it;
}

void store_item_free(StoreItem *it) {
    if (!it) return;
    sqlite3_free(it->sql);
    free(it);
}

static int exec(sqlite3 *db, const char *sql, char *err, size_t errlen) {
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) == SQLITE_OK) return 0;
    snprintf(err, errlen, "%s", msg ? msg : sqlite3_errmsg(db));
    sqlite3_free(msg);
    return -1;
}

static int db_open(sqlite3 **db, const char *path, char *err, size_t errlen) {
    if (sqlite3_open_v2(path, db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "%s: %s", path, *db ? sqlite3_errmsg(*db) : "cannot open");
        sqlite3_close(*db);
        *db = NULL;
        return -1;
    }
    sqlite3_busy_timeout(*db, 5000);
    char e[256];
    if (exec(*db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;", e, sizeof e) ||
        exec(*db, SCHEMA, e, sizeof e)) {
        snprintf(err, errlen, "%s: %s", path, e);
        sqlite3_close(*db);
        *db = NULL;
        return -1;
    }
    return 0;
}

typedef struct {
    sqlite3 *db;
    sqlite3_stmt *find, *insert, *insert_frame;
} Db;

// Writes one item inside the open transaction; sets its answer. Returns 0, or -1 on a database
// error (the transaction is then rolled back and every item of the group answered with it).
static int item_write(Db *d, StoreItem *it) {
    if (it->kind == STORE_EXEC) { // a job or registry change: its own statements, same transaction
        char *msg = NULL;
        if (sqlite3_exec(d->db, it->sql, NULL, NULL, &msg) != SQLITE_OK) {
            it->status = PROTO_EINTERNAL;
            snprintf(it->msg, sizeof it->msg, "%s", msg ? msg : "statement failed");
            sqlite3_free(msg);
            return 0; // a bad statement is its own failure, not the group's
        }
        it->status = 0;
        return 0;
    }
    sqlite3_reset(d->find);
    sqlite3_bind_text(d->find, 1, it->user, -1, SQLITE_STATIC);
    sqlite3_bind_text(d->find, 2, it->client_id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(d->find);
    if (rc == SQLITE_ROW) { // a retry: acknowledged again, stored once
        it->duplicate = 1;
        it->status = 0;
        return 0;
    }
    if (rc != SQLITE_DONE) return -1;
    for (int i = 0; i < it->n_frames; i++)
        if (!it->frames[i].known) { // only a retry may name frames the session no longer knows
            it->status = PROTO_EUNKNOWN_FRAME;
            snprintf(it->msg, sizeof it->msg, "frame %llu is unknown or expired",
                     (unsigned long long)it->frames[i].frame);
            return 0;
        }
    sqlite3_reset(d->insert);
    sqlite3_bind_text(d->insert, 1, it->user, -1, SQLITE_STATIC);
    sqlite3_bind_text(d->insert, 2, it->client_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(d->insert, 3, kind_names[it->kind], -1, SQLITE_STATIC);
    if (it->kind == STORE_RATE) sqlite3_bind_double(d->insert, 4, it->value);
    else sqlite3_bind_null(d->insert, 4);
    sqlite3_bind_int(d->insert, 5, it->tie);
    sqlite3_bind_int64(d->insert, 6, clock_unix_us());
    if (sqlite3_step(d->insert) != SQLITE_DONE) return -1;
    sqlite3_int64 row = sqlite3_last_insert_rowid(d->db);
    for (int i = 0; i < it->n_frames; i++) {
        const StoreFrame *f = &it->frames[i];
        sqlite3_reset(d->insert_frame);
        sqlite3_bind_int64(d->insert_frame, 1, row);
        sqlite3_bind_text(d->insert_frame, 2, role_names[f->role], -1, SQLITE_STATIC);
        sqlite3_bind_int64(d->insert_frame, 3, (sqlite3_int64)f->frame);
        sqlite3_bind_int(d->insert_frame, 4, f->cls);
        sqlite3_bind_int64(d->insert_frame, 5, (sqlite3_int64)f->model_version);
        sqlite3_bind_int64(d->insert_frame, 6, (sqlite3_int64)f->policy_version);
        sqlite3_bind_blob(d->insert_frame, 7, it->latents + (size_t)i * it->z_dim,
                          (int)(sizeof(float) * (size_t)it->z_dim), SQLITE_STATIC);
        if (sqlite3_step(d->insert_frame) != SQLITE_DONE) return -1;
    }
    it->status = 0;
    return 0;
}

static void *store_main(void *arg) {
    Store *st = arg;
    Db d = {0};
    char err[512];
    int ok = db_open(&d.db, st->path, err, sizeof err) == 0 &&
             sqlite3_prepare_v2(d.db, "SELECT 1 FROM feedback WHERE user = ?1 AND client_id = ?2", -1,
                                &d.find, NULL) == SQLITE_OK &&
             sqlite3_prepare_v2(d.db,
                                "INSERT INTO feedback(user, client_id, kind, value, tie, "
                                "created_unix_us) VALUES(?1, ?2, ?3, ?4, ?5, ?6)",
                                -1, &d.insert, NULL) == SQLITE_OK &&
             sqlite3_prepare_v2(d.db,
                                "INSERT INTO feedback_frame(feedback, role, frame, class, "
                                "model_version, policy_version, latent) VALUES(?1, ?2, ?3, ?4, ?5, "
                                "?6, ?7)",
                                -1, &d.insert_frame, NULL) == SQLITE_OK;
    if (!ok) fprintf(stderr, "steer: feedback store: %s\n", d.db ? sqlite3_errmsg(d.db) : err);
    pthread_mutex_lock(&st->lock);
    for (;;) {
        while (!st->stop && !st->in_head) pthread_cond_wait(&st->cond, &st->lock);
        if (!st->in_head) break;
        StoreItem *group = st->in_head;
        st->in_head = st->in_tail = NULL;
        pthread_mutex_unlock(&st->lock);

        double t0 = clock_now_s();
        int failed = !ok || sqlite3_exec(d.db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK;
        size_t n = 0;
        for (StoreItem *it = group; it && !failed; it = it->next, n++)
            if (item_write(&d, it)) failed = 1;
        if (!failed && sqlite3_exec(d.db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) failed = 1;
        if (failed) {
            const char *why = d.db ? sqlite3_errmsg(d.db) : "database not open";
            if (d.db) sqlite3_exec(d.db, "ROLLBACK", NULL, NULL, NULL);
            for (StoreItem *it = group; it; it = it->next) {
                it->status = PROTO_EINTERNAL;
                it->duplicate = 0;
                snprintf(it->msg, sizeof it->msg, "feedback not stored: %s", why);
            }
        }
        double dt = clock_now_s() - t0;

        pthread_mutex_lock(&st->lock);
        StoreItem *last = group;
        while (last->next) last = last->next;
        if (st->done_tail) st->done_tail->next = group;
        else st->done_head = group;
        st->done_tail = last;
        st->commits++;
        st->items += n;
        st->commit_s_total += dt;
        uv_async_send(st->async);
    }
    pthread_mutex_unlock(&st->lock);
    sqlite3_finalize(d.find);
    sqlite3_finalize(d.insert);
    sqlite3_finalize(d.insert_frame);
    sqlite3_close(d.db);
    return NULL;
}

int store_open(Store *st, const char *dir, uv_async_t *async, char *err, size_t errlen) {
    memset(st, 0, sizeof *st);
    st->async = async;
    if (mkdir(dir, 0755) && errno != EEXIST) {
        snprintf(err, errlen, "cannot make the data folder %s: %s", dir, strerror(errno));
        return -1;
    }
    snprintf(st->path, sizeof st->path, "%s/steer.db", dir);
    // Open once here so that a bad path or a damaged database stops the start, with its reason.
    sqlite3 *db = NULL;
    if (db_open(&db, st->path, err, errlen)) return -1;
    sqlite3_close(db);
    if (pthread_mutex_init(&st->lock, NULL) || pthread_cond_init(&st->cond, NULL)) {
        snprintf(err, errlen, "cannot create the store's lock");
        return -1;
    }
    st->locks_ready = 1;
    if (pthread_create(&st->thread, NULL, store_main, st)) {
        snprintf(err, errlen, "cannot start the store thread");
        store_close(st);
        return -1;
    }
    st->started = 1;
    return 0;
}

void store_submit(Store *st, StoreItem *item) {
    item->next = NULL;
    pthread_mutex_lock(&st->lock);
    if (st->in_tail) st->in_tail->next = item;
    else st->in_head = item;
    st->in_tail = item;
    pthread_cond_signal(&st->cond);
    pthread_mutex_unlock(&st->lock);
}

StoreItem *store_take_done(Store *st) {
    pthread_mutex_lock(&st->lock);
    StoreItem *it = st->done_head;
    st->done_head = st->done_tail = NULL;
    pthread_mutex_unlock(&st->lock);
    return it;
}

void store_close(Store *st) {
    if (st->started) {
        pthread_mutex_lock(&st->lock);
        st->stop = 1;
        pthread_cond_signal(&st->cond);
        pthread_mutex_unlock(&st->lock);
        pthread_join(st->thread, NULL);
        st->started = 0;
    }
    for (StoreItem *it = st->done_head, *next; it; it = next) {
        next = it->next;
        store_item_free(it);
    }
    st->done_head = st->done_tail = NULL;
    if (st->locks_ready) {
        pthread_mutex_destroy(&st->lock);
        pthread_cond_destroy(&st->cond);
        st->locks_ready = 0;
    }
}

// ---- export ----------------------------------------------------------------------------

// Writes s as a JSON string (quotes and escapes).
static void json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c < 0x20) fprintf(f, "\\u%04x", c);
        else fputc(c, f);
    }
    fputc('"', f);
}

static void json_frame(FILE *f, sqlite3_stmt *fr) {
    fprintf(f, "{\"frame\":%lld,\"class\":%d,\"model_version\":%lld,\"policy_version\":%lld,\"latent\":[",
            (long long)sqlite3_column_int64(fr, 1), sqlite3_column_int(fr, 2),
            (long long)sqlite3_column_int64(fr, 3), (long long)sqlite3_column_int64(fr, 4));
    const float *z = sqlite3_column_blob(fr, 5);
    int n = sqlite3_column_bytes(fr, 5) / (int)sizeof(float);
    for (int i = 0; i < n; i++) fprintf(f, "%s%.9g", i ? "," : "", (double)z[i]);
    fputs("]}", f);
}

int store_export(const char *dir, StoreExportFormat format, FILE *f, long *rows_out, char *err,
                 size_t errlen) {
    int trl = format == STORE_EXPORT_TRL;
    char path[4096];
    snprintf(path, sizeof path, "%s/steer.db", dir);
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "cannot open %s: %s", path, db ? sqlite3_errmsg(db) : "?");
        sqlite3_close(db);
        return -1;
    }
    sqlite3_stmt *fb = NULL, *fr = NULL;
    int rc = -1;
    if (sqlite3_prepare_v2(db, "SELECT id, user, client_id, kind, value, tie, created_unix_us FROM "
                           "feedback ORDER BY id", -1, &fb, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db, "SELECT role, frame, class, model_version, policy_version, latent "
                           "FROM feedback_frame WHERE feedback = ?1 ORDER BY rowid", -1, &fr,
                           NULL) != SQLITE_OK) {
        snprintf(err, errlen, "%s: %s", path, sqlite3_errmsg(db));
        goto done;
    }
    if (!trl) fputs("feedback,user,client_id,kind,value,tie,created_unix_us,role,frame,class,"
                    "model_version,policy_version\n", f);
    long rows = 0;
    while (sqlite3_step(fb) == SQLITE_ROW) {
        sqlite3_int64 id = sqlite3_column_int64(fb, 0);
        const char *user = (const char *)sqlite3_column_text(fb, 1);
        const char *cid = (const char *)sqlite3_column_text(fb, 2);
        const char *kind = (const char *)sqlite3_column_text(fb, 3);
        sqlite3_reset(fr);
        sqlite3_bind_int64(fr, 1, id);
        if (trl) {
            fputs("{\"user\":", f);
            json_str(f, user);
            fputs(",\"id\":", f);
            json_str(f, cid);
            fprintf(f, ",\"kind\":\"%s\",\"tie\":%s,\"created_unix_us\":%lld", kind,
                    sqlite3_column_int(fb, 5) ? "true" : "false",
                    (long long)sqlite3_column_int64(fb, 6));
            if (sqlite3_column_type(fb, 4) != SQLITE_NULL)
                fprintf(f, ",\"value\":%.9g", sqlite3_column_double(fb, 4));
            // chosen / rejected as TRL's preference datasets name them; rate keeps `rated`.
            int first_chosen = 1, first_rejected = 1, first_rated = 1;
            fputs(",\"chosen\":[", f);
            while (sqlite3_step(fr) == SQLITE_ROW) {
                const char *role = (const char *)sqlite3_column_text(fr, 0);
                if (strcmp(role, "winner") && strcmp(role, "chosen")) continue;
                if (!first_chosen) fputc(',', f);
                first_chosen = 0;
                json_frame(f, fr);
            }
            fputs("],\"rejected\":[", f);
            sqlite3_reset(fr);
            while (sqlite3_step(fr) == SQLITE_ROW) {
                const char *role = (const char *)sqlite3_column_text(fr, 0);
                if (strcmp(role, "loser") && strcmp(role, "among")) continue;
                if (!first_rejected) fputc(',', f);
                first_rejected = 0;
                json_frame(f, fr);
            }
            fputs("],\"rated\":[", f);
            sqlite3_reset(fr);
            while (sqlite3_step(fr) == SQLITE_ROW) {
                if (strcmp((const char *)sqlite3_column_text(fr, 0), "rated")) continue;
                if (!first_rated) fputc(',', f);
                first_rated = 0;
                json_frame(f, fr);
            }
            fputs("]}\n", f);
        } else {
            while (sqlite3_step(fr) == SQLITE_ROW) {
                fprintf(f, "%lld,%s,%s,%s,", (long long)id, user, cid, kind);
                if (sqlite3_column_type(fb, 4) != SQLITE_NULL)
                    fprintf(f, "%.9g", sqlite3_column_double(fb, 4));
                fprintf(f, ",%d,%lld,%s,%lld,%d,%lld,%lld\n", sqlite3_column_int(fb, 5),
                        (long long)sqlite3_column_int64(fb, 6), sqlite3_column_text(fr, 0),
                        (long long)sqlite3_column_int64(fr, 1), sqlite3_column_int(fr, 2),
                        (long long)sqlite3_column_int64(fr, 3),
                        (long long)sqlite3_column_int64(fr, 4));
            }
        }
        rows++;
    }
    *rows_out = rows;
    rc = 0;
done:
    sqlite3_finalize(fb);
    sqlite3_finalize(fr);
    sqlite3_close(db);
    return rc;
}
