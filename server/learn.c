// learn.c — the learning thread of learn.h.
#include "server/learn.h"

#include <math.h>
#include <omp.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "util/clock.h"
#include "generator/gan.h"
#include "kernels/conv.h"
#include "kernels/kernels.h"

#define LEARN_MAX_COMPARISONS 1024 // per user; the oldest are forgotten past it
#define LEARN_POP_COMPARISONS 4096 // the population model's; the oldest are forgotten past it
#define LEARN_CANDIDATES 16        // pool frames drawn from the policy to pick active pairs from
#define LEARN_CHUNK 64             // frames whose features one batched D forward computes

static uint64_t fnv1a(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static LearnUser *user_get(Learn *l, const char *name) {
    for (int i = 0; i < l->n_users; i++)
        if (!strcmp(l->users[i]->user, name)) return l->users[i];
    if (l->n_users == l->cap_users) {
        int cap = l->cap_users ? 2 * l->cap_users : 16;
        LearnUser **u = realloc(l->users, (size_t)cap * sizeof *u);
        if (!u) return NULL;
        l->users = u;
        l->cap_users = cap;
    }
    LearnUser *u = calloc(1, sizeof *u);
    if (!u) return NULL;
    snprintf(u->user, sizeof u->user, "%s", name);
    if (learner_init(&u->learner, &l->pc, &l->pool, fnv1a(name), l->max_comparisons)) {
        free(u);
        return NULL;
    }
    l->users[l->n_users++] = u;
    return u;
}

// The generator of model version v, which drew frames stamped with it: the one learning opened
// with (base_version, or v 0), else loaded once from the registry (the store's `model` table) and
// kept (LEARN_MODELS of them). Falls back to the base one, saying so once, when v cannot be loaded.
static Generator *generator_of(Learn *l, uint64_t v) {
    if (v == 0 || v == l->base_version) return &l->g;
    for (int i = 0; i < l->n_models; i++)
        if (l->model_version[i] == v) return l->models[i];
    char path[4096] = "", err[512] = "";
    sqlite3 *db = NULL;
    sqlite3_stmt *q = NULL;
    if (sqlite3_open_v2(l->db_path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db, "SELECT path FROM model WHERE version = ?1", -1, &q, NULL) == SQLITE_OK) {
        sqlite3_bind_int64(q, 1, (sqlite3_int64)v);
        if (sqlite3_step(q) == SQLITE_ROW) snprintf(path, sizeof path, "%s", (const char *)sqlite3_column_text(q, 0));
    }
    sqlite3_finalize(q);
    sqlite3_close(db);
    Generator *g = path[0] ? calloc(1, sizeof *g) : NULL;
    int ok = g && !generator_load(g, path, 1, err, sizeof err) && // frames_features: one at a time
             g->cfg.z_dim == l->g.cfg.z_dim && g->cfg.n_classes == l->g.cfg.n_classes &&
             g->cfg.img == l->g.cfg.img && g->cfg.channels == l->g.cfg.channels;
    if (!ok) { // remembered as the base generator, so the store is asked once
        if (g) generator_free(g);
        free(g);
        g = &l->g;
    }
    if (l->n_models == LEARN_MODELS) { // forget the oldest
        if (l->models[0] != &l->g) {
            generator_free(l->models[0]);
            free(l->models[0]);
        }
        memmove(l->models, l->models + 1, (LEARN_MODELS - 1) * sizeof *l->models);
        memmove(l->model_version, l->model_version + 1, (LEARN_MODELS - 1) * sizeof *l->model_version);
        l->n_models--;
    }
    l->models[l->n_models] = g;
    l->model_version[l->n_models++] = v;
    if (ok) return g;
    if (!l->warned_version) {
        fprintf(stderr, "steer: learning: frames of model version %llu are redrawn with version %llu "
                        "(%s)\n", (unsigned long long)v, (unsigned long long)l->base_version,
                path[0] ? (err[0] ? err : "another shape") : "not in the registry");
        l->warned_version = 1;
    }
    return &l->g;
}

// The features of n frames given by latent, class and model version: each version's G draws each
// frame alone, D looks at them all at once. One at a time because G's rounding depends on the
// batch size (its convolutions and products pick other kernels: about 1e-5 apart), so a batched
// draw would make a frame's features depend on which frames shared its batch, which depends on
// timing here and not in a rebuild, and the policy (its steps stop at thresholds) would not be
// rebuilt the same. A frame alone is the same bits whatever the batch and the thread count, and
// on the learner's one core it costs what it costs in a batch (0.38 against 0.35 ms a frame for
// fmnist32c). D's features do not depend on the batch. The frames are drawn on one OpenMP thread
// (a rebuild runs on the whole team): a frame alone runs faster so (0.38 against 0.46 ms on two).
static int frames_features(Learn *l, const float *z, const int32_t *cls, const uint64_t *ver, int n,
                           float *phi) {
    const SaganConfig *c = &l->g.cfg;
    long img = (long)c->channels * c->img * c->img;
    const int32_t *y = c->n_classes ? cls : NULL;
    int rc = 0, team = omp_get_max_threads();
    omp_set_num_threads(1);
    for (int i = 0; i < n && !rc; i++) {
        Generator *g = generator_of(l, ver[i]);
        rc = generator_forward(g, z + (long)i * c->z_dim, y ? y + i : NULL, 1);
        if (!rc) memcpy(l->img + (long)i * img, g->img, (size_t)img * sizeof(float));
    }
    omp_set_num_threads(team);
    return rc ? rc : features_compute(&l->feat, l->img, y, n, phi);
}

// The comparisons of one feedback on n frames with features phi (n, F) into a learner: frame 0
// is the rated, the winner or the chosen frame.
static int feed(const Learn *l, Learner *le, int kind, double value, int tie, int n,
                const float *phi) {
    int F = l->feat.F;
    if (n < 1 || n > STORE_MAX_FRAMES || (kind == STORE_PAIR && n != 2)) return KERNELS_EINVAL;
    switch (kind) {
    case STORE_RATE: return learner_rate(le, phi, value);
    case STORE_PAIR: return learner_pair(le, phi, phi + F, tie);
    case STORE_CHOOSE: return learner_choose(le, phi, phi + F, n - 1);
    default: return KERNELS_EINVAL;
    }
}


static void queue_snap(Learn *l, LearnSnap *s) {
    pthread_mutex_lock(&l->lock);
    if (l->out_tail) l->out_tail->next = s;
    else l->out_head = s;
    l->out_tail = s;
    pthread_mutex_unlock(&l->lock);
}

// Refits the population model on every user's recent comparisons: its mean weights become every
// user's prior w0 (so every user is refitted), its policy the one new users start from (published
// under the user name ""). Called at fixed points of the store's feedback order (every pop_every
// events), so that a rebuild from the store refits at the same point on the same comparisons.
static int population_refit(Learn *l) {
    double t0 = clock_now_s();
    int rc = learner_update(&l->pop, &l->scratch, NULL);
    if (rc) return rc;
    int F = l->feat.F;
    for (int i = 0; i < F; i++) l->w0[i] = l->pop.rm.mean_weights[i];
    l->have_w0 = 1;
    for (int i = 0; i < l->n_users; i++) l->users[i]->dirty = 1;
    LearnSnap *s = calloc(1, sizeof *s);
    if (!s || policy_params_alloc(&s->params, l->pool.z_dim, l->pool.classes)) {
        free(s);
        return KERNELS_ENOMEM;
    }
    policy_params_copy(&s->params, &l->pop.params);
    // a new user has given nothing yet: only the distribution is the population's
    s->params.version = 0;
    s->params.feedback = s->params.comparisons = 0;
    s->params.accuracy = NAN;
    s->update_s = clock_now_s() - t0;
    queue_snap(l, s);
    pthread_mutex_lock(&l->lock);
    l->pop_refits++;
    l->pop_comparisons = l->pop.n;
    l->pop_accuracy = l->pop.params.accuracy;
    pthread_mutex_unlock(&l->lock);
    return 0;
}

// Counts one stored feedback (applied or not) in the store's order and refits the population at
// every pop_every-th, unless another such point comes before the batch ends (left: feedback still
// to come in this batch), whose refit would replace this one before anyone saw it.
static int population_step(Learn *l, long left) {
    l->pop_seen++;
    if (l->pop_every <= 0 || l->pop_seen % l->pop_every || left >= l->pop_every) return 0;
    return population_refit(l);
}

// A pool index drawn from the policy: a class from its class distribution, then a frame of that
// class with probability proportional to its latent weight (the scratch's, from the last update).
static long draw_pool_index(const Learn *l, const PolicyParams *p, Rng *r) {
    const PolicyPool *pool = &l->pool;
    int c = policy_sample_class(p, r);
    double total = 0;
    for (long i = 0; i < pool->n; i++)
        if (c < 0 || pool->y[i] == c) total += l->scratch.lw[i];
    double u = rng_uniform(r) * total, acc = 0;
    long last = 0;
    for (long i = 0; i < pool->n; i++)
        if (c < 0 || pool->y[i] == c) {
            last = i;
            if ((acc += l->scratch.lw[i]) > u) return i;
        }
    return last;
}

// Refits u and queues its new policy, with the pairs pair mode should ask next.
static int publish(Learn *l, LearnUser *u) {
    double t0 = clock_now_s();
    int rc = learner_update(&u->learner, &l->scratch, l->have_w0 ? l->w0 : NULL);
    if (rc) return rc;
    LearnSnap *s = calloc(1, sizeof *s);
    if (!s || policy_params_alloc(&s->params, l->pool.z_dim, l->pool.classes)) {
        free(s);
        return KERNELS_ENOMEM;
    }
    snprintf(s->user, sizeof s->user, "%s", u->user);
    policy_params_copy(&s->params, &u->learner.params);
    Rng r;
    rng_seed(&r, u->learner.seed ^ ((uint64_t)s->params.version << 32));
    long cand[LEARN_CANDIDATES];
    for (int i = 0; i < LEARN_CANDIDATES; i++) cand[i] = draw_pool_index(l, &s->params, &r);
    int n = LEARN_CANDIDATES;
    while (s->n_pairs < LEARN_PAIRS && n >= 2) {
        long a, b;
        learner_pick_pair(&u->learner, cand, n, &a, &b);
        if (a == b) break;
        s->pairs[2 * s->n_pairs] = a;
        s->pairs[2 * s->n_pairs + 1] = b;
        s->n_pairs++;
        int m = 0; // drop both from the candidates
        for (int i = 0; i < n; i++)
            if (cand[i] != a && cand[i] != b) cand[m++] = cand[i];
        n = m;
    }
    s->t_first = u->t_first;
    s->update_s = clock_now_s() - t0;
    u->t_first = 0;
    u->dirty = 0;
    queue_snap(l, s);
    pthread_mutex_lock(&l->lock);
    l->updates++;
    pthread_mutex_unlock(&l->lock);
    return 0;
}

// Feeds a list of stored feedback (store order) into the users' learners and the population's,
// and frees it; `left`: how many more follow the list in the same batch. The frames are drawn
// again (one at a time, frames_features) and looked at by D a chunk of up to LEARN_CHUNK frames at
// a time (one batched forward instead of one per feedback). Counts into *events / *failures; returns nonzero if any failed.
static int process(Learn *l, StoreItem *items, long left, uint64_t *events, uint64_t *failures) {
    long total = left;
    for (StoreItem *it = items; it; it = it->next) total++;
    int Z = l->pool.z_dim, F = l->feat.F;
    uint64_t failed = 0;
    while (items) {
        StoreItem *end = items;
        int n = 0;
        for (; end && n + end->n_frames <= LEARN_CHUNK; end = end->next) {
            for (int i = 0; i < end->n_frames; i++) {
                memcpy(l->z + (long)(n + i) * Z, end->latents + (long)i * Z, (size_t)Z * sizeof(float));
                l->cls[n + i] = end->frames[i].cls < 0 ? 0 : end->frames[i].cls;
                l->ver[n + i] = end->frames[i].model_version;
            }
            n += end->n_frames;
        }
        if (end == items) end = items->next; // an item of more frames than a chunk: refused below
        int frc = n > 0 ? frames_features(l, l->z, l->cls, l->ver, n, l->phi) : KERNELS_EINVAL;
        long off = 0;
        while (items != end) {
            StoreItem *it = items;
            items = it->next;
            LearnUser *u = user_get(l, it->user);
            const float *phi = l->phi + off * F;
            int rc = frc || !u ? -1 : feed(l, &u->learner, it->kind, it->value, it->tie, it->n_frames, phi);
            if (!rc && l->pop_every > 0)
                rc = feed(l, &l->pop, it->kind, it->value, it->tie, it->n_frames, phi);
            if (!rc) {
                (*events)++;
                u->dirty = 1;
                if (!u->t_first || it->t_recv < u->t_first) u->t_first = it->t_recv;
            } else {
                failed++;
            }
            off += it->n_frames;
            free(it);
            if (population_step(l, --total)) failed++;
        }
    }
    *failures += failed;
    return failed != 0;
}

static void *learn_main(void *arg) {
    Learn *l = arg;
    omp_set_num_threads(1); // the generation thread has the cores' OpenMP team
    // FP32 whatever steer serve --bf16 says: a rebuild must give the same policies on any CPU and
    // with the flag either way (the learner's frames are few; BF16's speed matters to serving)
    conv2d_fp32_hold(1);
    pthread_mutex_lock(&l->lock);
    for (;;) {
        while (!l->in_head && !l->stop) pthread_cond_wait(&l->cond, &l->lock);
        if (!l->in_head && l->stop) break;
        StoreItem *items = l->in_head;
        l->in_head = l->in_tail = NULL;
        pthread_mutex_unlock(&l->lock);
        uint64_t events = 0, failures = 0;
        process(l, items, 0, &events, &failures);
        for (int i = 0; i < l->n_users; i++)
            if (l->users[i]->dirty && publish(l, l->users[i])) failures++;
        uv_async_send(l->async);
        pthread_mutex_lock(&l->lock);
        l->events += events;
        l->failures += failures;
    }
    pthread_mutex_unlock(&l->lock);
    return NULL;
}

// Every stored feedback, in id order, into its user's learner; then one update per user.
static int rebuild(Learn *l, const char *db_path, char *err, size_t errlen) {
    struct stat sb;
    if (stat(db_path, &sb)) return 0; // no store yet: nothing to rebuild
    sqlite3 *db = NULL;
    sqlite3_stmt *q = NULL;
    int rc = 0, Z = l->pool.z_dim;
    if (sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db,
                           "SELECT f.id, f.user, f.kind, f.value, f.tie, fr.class, fr.latent, "
                           "fr.model_version "
                           "FROM feedback f JOIN feedback_frame fr ON fr.feedback = f.id "
                           "ORDER BY f.id, fr.rowid",
                           -1, &q, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "%s: %s", db_path, db ? sqlite3_errmsg(db) : "cannot open");
        sqlite3_finalize(q);
        sqlite3_close(db);
        return -1;
    }
    long total = 0; // stored feedback: the population refits at the last of its points among them
    sqlite3_stmt *cq = NULL;
    if (sqlite3_prepare_v2(db, "SELECT count(*) FROM feedback", -1, &cq, NULL) == SQLITE_OK &&
        sqlite3_step(cq) == SQLITE_ROW)
        total = sqlite3_column_int64(cq, 0);
    sqlite3_finalize(cq);
    // feedback rows become store items, fed a chunk at a time as the learning thread feeds them
    StoreItem *head = NULL, *tail = NULL, *it = NULL;
    long queued = 0, done = 0;
    int frames = 0;
    sqlite3_int64 cur = -1;
    uint64_t events = 0, failures = 0;
    for (;;) {
        int step = sqlite3_step(q);
        sqlite3_int64 id = step == SQLITE_ROW ? sqlite3_column_int64(q, 0) : -2;
        if (id != cur && it) { // the previous feedback is complete
            if (tail) tail->next = it;
            else head = it;
            tail = it;
            queued++;
            frames += it->n_frames;
            it = NULL;
        }
        if (head && (frames + STORE_MAX_FRAMES > LEARN_CHUNK || step != SQLITE_ROW)) {
            done += queued;
            process(l, head, total - done, &events, &failures); // failures: counted, as online
            head = tail = NULL;
            queued = frames = 0;
        }
        if (step != SQLITE_ROW) {
            if (step != SQLITE_DONE) {
                snprintf(err, errlen, "%s: %s", db_path, sqlite3_errmsg(db));
                rc = -1;
            }
            break;
        }
        if (id != cur) {
            cur = id;
            if (!(it = store_item_new(STORE_MAX_FRAMES, Z))) {
                snprintf(err, errlen, "out of memory");
                rc = -1;
                break;
            }
            it->n_frames = 0;
            snprintf(it->user, sizeof it->user, "%s", (const char *)sqlite3_column_text(q, 1));
            const char *k = (const char *)sqlite3_column_text(q, 2);
            it->kind = !strcmp(k, "pair") ? STORE_PAIR : !strcmp(k, "choose") ? STORE_CHOOSE : STORE_RATE;
            it->value = sqlite3_column_double(q, 3);
            it->tie = sqlite3_column_int(q, 4);
        }
        if (it->n_frames < STORE_MAX_FRAMES && sqlite3_column_bytes(q, 6) == (int)(Z * sizeof(float))) {
            memcpy(it->latents + (long)it->n_frames * Z, sqlite3_column_blob(q, 6), (size_t)Z * sizeof(float));
            it->frames[it->n_frames].model_version = (uint64_t)sqlite3_column_int64(q, 7);
            it->frames[it->n_frames++].cls = sqlite3_column_int(q, 5);
        }
    }
    free(it);
    for (StoreItem *x = head, *nx; x; x = nx) {
        nx = x->next;
        free(x);
    }
    l->rebuilt_events = (long)events;
    l->rebuild_failures = (long)failures;
    l->failures += failures;
    sqlite3_finalize(q);
    sqlite3_close(db);
    for (int i = 0; !rc && i < l->n_users; i++)
        if (l->users[i]->dirty && publish(l, l->users[i])) {
            snprintf(err, errlen, "rebuilding the policy of user '%s' failed", l->users[i]->user);
            rc = -1;
        }
    return rc;
}

static int learn_load_fp32(Learn *l, const char *ckpt, uint64_t version, const char *db_path,
                           long pool_n, long pop_every, char *err, size_t errlen);

// In FP32 whatever the BF16 mode, as the learning thread (learn_main): the pool and the rebuilt
// policies must not depend on it.
int learn_load(Learn *l, const char *ckpt, uint64_t version, const char *db_path, long pool_n,
               long pop_every, char *err, size_t errlen) {
    int held = conv2d_fp32_hold(1);
    int rc = learn_load_fp32(l, ckpt, version, db_path, pool_n, pop_every, err, errlen);
    conv2d_fp32_hold(held);
    return rc;
}

static int learn_load_fp32(Learn *l, const char *ckpt, uint64_t version, const char *db_path,
                           long pool_n, long pop_every, char *err, size_t errlen) {
    memset(l, 0, sizeof *l);
    l->base_version = version;
    snprintf(l->db_path, sizeof l->db_path, "%s", db_path);
    l->max_comparisons = LEARN_MAX_COMPARISONS;
    l->pop_every = pop_every;
    l->pop_accuracy = NAN;
    double t0 = clock_now_s();
    const int B = LEARN_CHUNK;
    if (generator_load(&l->g, ckpt, B, err, errlen) || features_init(&l->feat, ckpt, B, err, errlen))
        return -1;
    const SaganConfig *cfg = &l->g.cfg;
    int Z = cfg->z_dim, C = cfg->n_classes, F = l->feat.F;
    long img = (long)cfg->channels * cfg->img * cfg->img;
    policy_config_default(&l->pc, F);
    float *images = malloc((size_t)pool_n * img * sizeof(float));
    l->phi = malloc((size_t)LEARN_CHUNK * F * sizeof(float));
    l->z = malloc((size_t)LEARN_CHUNK * Z * sizeof(float));
    l->img = malloc((size_t)LEARN_CHUNK * img * sizeof(float));
    l->ver = calloc(LEARN_CHUNK, sizeof(uint64_t));
    l->cls = malloc((size_t)LEARN_CHUNK * sizeof(int32_t));
    if (!images || !l->phi || !l->z || !l->cls || !l->img || !l->ver || policy_pool_alloc(&l->pool, pool_n, Z, C, F)) {
        free(images);
        snprintf(err, errlen, "out of memory for a policy pool of %ld frames", pool_n);
        return -1;
    }
    PolicyPool *p = &l->pool;
    gan_sample_latents(cfg, 0x9001, pool_n, -1, p->z, C ? p->y : NULL);
    int rc = generator_draw(&l->g, p->z, C ? p->y : NULL, pool_n, B, images);
    if (!rc) rc = features_calibrate(&l->feat, images, C ? p->y : NULL, pool_n);
    if (!rc) rc = features_compute(&l->feat, images, C ? p->y : NULL, pool_n, p->phi);
    free(images);
    if (!rc) policy_pool_finish(p);
    long most = pop_every > 0 ? LEARN_POP_COMPARISONS : l->max_comparisons;
    if (!rc) rc = policy_scratch_init(&l->scratch, &l->pc, p, most);
    if (!rc && pop_every > 0) {
        l->w0 = calloc((size_t)F, sizeof *l->w0);
        rc = l->w0 ? learner_init(&l->pop, &l->pc, p, fnv1a("population"), LEARN_POP_COMPARISONS)
                   : KERNELS_ENOMEM;
        l->pop_ready = !rc;
    }
    if (rc) {
        snprintf(err, errlen, "building the policy pool: %s", kernels_strerror(rc));
        return -1;
    }
    if (pthread_mutex_init(&l->lock, NULL) || pthread_cond_init(&l->cond, NULL)) {
        snprintf(err, errlen, "cannot make the learning thread's locks");
        return -1;
    }
    l->locks_ready = 1;
    if (rebuild(l, db_path, err, errlen)) return -1;
    l->rebuild_s = clock_now_s() - t0;
    return 0;
}

int learn_open(Learn *l, const char *ckpt, uint64_t version, const char *db_path, long pool_n,
               long pop_every, uv_async_t *async, char *err, size_t errlen) {
    if (learn_load(l, ckpt, version, db_path, pool_n, pop_every, err, errlen)) return -1;
    l->async = async;
    uv_async_send(async); // the loop installs the rebuilt policies before it takes a connection
    if (pthread_create(&l->thread, NULL, learn_main, l)) {
        snprintf(err, errlen, "cannot start the learning thread");
        return -1;
    }
    l->started = 1;
    return 0;
}

void learn_submit(Learn *l, StoreItem *item) {
    item->next = NULL;
    pthread_mutex_lock(&l->lock);
    if (l->in_tail) l->in_tail->next = item;
    else l->in_head = item;
    l->in_tail = item;
    pthread_cond_signal(&l->cond);
    pthread_mutex_unlock(&l->lock);
}

LearnSnap *learn_take(Learn *l) {
    if (!l->locks_ready) return NULL;
    pthread_mutex_lock(&l->lock);
    LearnSnap *s = l->out_head;
    l->out_head = l->out_tail = NULL;
    pthread_mutex_unlock(&l->lock);
    return s;
}

void learn_snap_free(LearnSnap *s) {
    if (!s) return;
    policy_params_free(&s->params);
    free(s);
}

void learn_close(Learn *l) {
    if (l->started) {
        pthread_mutex_lock(&l->lock);
        l->stop = 1;
        pthread_cond_signal(&l->cond);
        pthread_mutex_unlock(&l->lock);
        pthread_join(l->thread, NULL);
    }
    for (StoreItem *it = l->in_head, *nx; it; it = nx) {
        nx = it->next;
        free(it);
    }
    for (LearnSnap *s = l->out_head, *nx; s; s = nx) {
        nx = s->next;
        learn_snap_free(s);
    }
    for (int i = 0; i < l->n_users; i++) {
        learner_free(&l->users[i]->learner);
        free(l->users[i]);
    }
    free(l->users);
    if (l->locks_ready) {
        pthread_mutex_destroy(&l->lock);
        pthread_cond_destroy(&l->cond);
    }
    if (l->pop_ready) learner_free(&l->pop);
    free(l->w0);
    policy_scratch_free(&l->scratch);
    policy_pool_free(&l->pool);
    features_free(&l->feat);
    generator_free(&l->g);
    free(l->phi);
    free(l->z);
    free(l->cls);
    free(l->img);
    free(l->ver);
    for (int i = 0; i < l->n_models; i++)
        if (l->models[i] != &l->g) {
            generator_free(l->models[i]);
            free(l->models[i]);
        }
    memset(l, 0, sizeof *l);
}

// ---- the users' reward for fine-tuning ---------------------------------------------------------

#define LEARN_REWARD_POOL 2048 // the learning thread's pool size: the same calibration of features

int learn_reward_init(LearnReward *r, const char *ckpt, const char *db_path, char *err,
                      size_t errlen) {
    memset(r, 0, sizeof *r);
    // never refitted on its own (every 2^40 feedback): refitted once below on all it holds
    // frames of every model version are redrawn with their own G (found in the registry); the
    // version of ckpt itself is not known here, so its frames too come from the registry's file
    if (learn_load(&r->learn, ckpt, UINT64_MAX, db_path, LEARN_REWARD_POOL, 1L << 40, err, errlen))
        return -1;
    Learner *pop = &r->learn.pop;
    if (pop->n == 0) {
        snprintf(err, errlen, "%s holds no feedback to fine-tune on", db_path);
        return -1;
    }
    int rc = learner_update(pop, &r->learn.scratch, NULL);
    if (rc) {
        snprintf(err, errlen, "fitting the users' reward model: %s", reward_strerror(rc));
        return -1;
    }
    Features *f = &r->learn.feat;
    if (frame_reward_init(&r->reward, f)) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    memcpy(r->reward.w, pop->rm.mean_weights, (size_t)f->F * sizeof(double));
    r->reward.r0 = 0;
    for (int k = 0; k < f->F; k++) r->reward.r0 += r->reward.w[k] * r->learn.pool.neutral[k];
    r->comparisons = pop->n;
    r->accuracy = pop->params.accuracy;
    return 0;
}

void learn_reward_free(LearnReward *r) {
    frame_reward_free(&r->reward);
    learn_close(&r->learn);
    memset(r, 0, sizeof *r);
}
