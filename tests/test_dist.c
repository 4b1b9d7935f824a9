// test_dist.c — data-parallel training (generator/dist.h, GanTrainer.dp_*): P processes that
// each take 1/P of a step's batch and average their gradients make the step one process makes
// with the whole batch.
//
// In process: two trainers on two threads (ranks 0 and 1) whose grad_reduce is an all-reduce
// through shared memory, against one trainer with the combined batch. With the learning rates at
// 0 the weights stay put, so every step's averaged gradients (Adam's first moment with beta1 = 0)
// can be compared with the single trainer's to float rounding; with the real rates the two ranks
// must stay bit-identical to each other (the same reduced gradients, the same update). Then the
// real thing: `mpirun -np 2 steer train` against `steer train` with the combined batch.
// Nothing is timed.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "generator/data/fmnist.h"
#include "generator/gan.h"
#include "generator/safetensors.h"
#include "tests/check.h"

static Dataset data;
static char dir[64];

static int setup(void **state) {
    (void)state;
    return check_fmnist_setup(&data, dir, sizeof dir, "steer_test_dist");
}

static int teardown(void **state) {
    (void)state;
    return check_fmnist_teardown(&data, dir);
}

// ---------------------------------------------------------------------------------------------
// an all-reduce between threads: each rank posts its buffer, every rank averages all of them into
// its own scratch, and copies it back once every rank has read every buffer

enum { RANKS = 2 };

typedef struct {
    pthread_barrier_t barrier;
    float *buf[RANKS];
    float *scratch[RANKS]; // each as large as the largest buffer reduced
} Shared;

typedef struct {
    Shared *sh;
    int rank;
} RankCtx;

static int thread_reduce(void *ctx, float *grads, long n) {
    RankCtx *rc = ctx;
    Shared *sh = rc->sh;
    sh->buf[rc->rank] = grads;
    pthread_barrier_wait(&sh->barrier);
    float *out = sh->scratch[rc->rank];
    for (long i = 0; i < n; i++) {
        float s = 0.0f;
        for (int r = 0; r < RANKS; r++) s += sh->buf[r][i];
        out[i] = s / RANKS;
    }
    pthread_barrier_wait(&sh->barrier);
    memcpy(grads, out, sizeof(float) * n);
    return 0;
}

typedef struct {
    GanTrainer *t;
    int steps, rc;
} StepJob;

static void *run_steps(void *p) {
    StepJob *j = p;
    for (int s = 0; s < j->steps && !j->rc; s++) j->rc = gan_step(j->t, &data);
    return NULL;
}

static void init(GanTrainer *t, const GanHparams *hp) {
    SaganConfig cfg;
    assert_int_equal(sagan_config_lookup(&cfg, "tinyc"), 0);
    assert_int_equal(gan_init(t, &cfg, hp, 9), 0);
}

// Ranks 0 and 1 of hp.batch, n steps on two threads.
static void run_ranks(GanTrainer *r, const GanHparams *hp, Shared *sh, RankCtx *ctx, int n) {
    pthread_barrier_init(&sh->barrier, NULL, RANKS);
    pthread_t th[RANKS];
    StepJob jobs[RANKS];
    for (int k = 0; k < RANKS; k++) {
        init(&r[k], hp);
        long big = r[k].G.ps.total > r[k].D.ps.total ? r[k].G.ps.total : r[k].D.ps.total;
        sh->scratch[k] = CHECK_ALLOC(float, big);
        ctx[k] = (RankCtx){sh, k};
        r[k].dp_rank = k;
        r[k].dp_size = RANKS;
        r[k].grad_reduce = thread_reduce;
        r[k].reduce_ctx = &ctx[k];
        jobs[k] = (StepJob){&r[k], n, 0};
    }
    for (int k = 0; k < RANKS; k++) pthread_create(&th[k], NULL, run_steps, &jobs[k]);
    for (int k = 0; k < RANKS; k++) pthread_join(th[k], NULL);
    for (int k = 0; k < RANKS; k++) assert_int_equal(jobs[k].rc, 0);
    pthread_barrier_destroy(&sh->barrier);
}

static int compare_ps(const char *what, const float *got, const float *want, long n, double atol,
                      double rtol) {
    double *w = check_to_double(want, n);
    int bad = check_compare_f(what, got, w, n, atol, rtol);
    free(w);
    return bad;
}

// Learning rates 0: each step's averaged gradients equal the whole batch's.
static void test_threads_gradients(void **state) {
    (void)state;
    GanHparams hp;
    gan_hparams_default(&hp);
    hp.batch = 8;
    hp.lr_g = hp.lr_d = 0.0f;
    hp.gp_lambda = 1.0f; // the penalty's draws follow the whole batch too
    GanTrainer one, r[RANKS];
    init(&one, &hp);
    Shared sh = {0};
    RankCtx ctx[RANKS];
    run_ranks(r, &hp, &sh, ctx, 0);
    for (int s = 0; s < 3; s++) {
        assert_int_equal(gan_step(&one, &data), 0);
        StepJob jobs[RANKS];
        pthread_t th[RANKS];
        pthread_barrier_init(&sh.barrier, NULL, RANKS);
        for (int k = 0; k < RANKS; k++) {
            jobs[k] = (StepJob){&r[k], 1, 0};
            pthread_create(&th[k], NULL, run_steps, &jobs[k]);
        }
        for (int k = 0; k < RANKS; k++) pthread_join(th[k], NULL);
        pthread_barrier_destroy(&sh.barrier);
        for (int k = 0; k < RANKS; k++) assert_int_equal(jobs[k].rc, 0);
        // the averaged gradient of this step: Adam's m with beta1 = 0
        int bad = compare_ps("G gradient, 2 ranks vs 1", r[0].G.ps.m, one.G.ps.m, one.G.ps.total,
                             1e-6, 1e-3);
        bad += compare_ps("D gradient, 2 ranks vs 1", r[0].D.ps.m, one.D.ps.m, one.D.ps.total, 1e-6,
                          1e-3);
        if (bad) fail_msg("step %d: %d gradient entries differ", s, bad);
        assert_true(fabsf(r[0].loss_d - one.loss_d) <= 1e-4f * (1 + fabsf(one.loss_d)));
        assert_true(fabsf(r[0].loss_g - one.loss_g) <= 1e-4f * (1 + fabsf(one.loss_g)));
        assert_true(fabsf(r[0].penalty_d - one.penalty_d) <= 1e-3f * (1 + one.penalty_d));
        assert_memory_equal(r[0].rng.s, one.rng.s, sizeof one.rng.s);
        assert_memory_equal(r[1].rng.s, one.rng.s, sizeof one.rng.s);
    }
    gan_free(&one);
    for (int k = 0; k < RANKS; k++) {
        gan_free(&r[k]);
        free(sh.scratch[k]);
    }
}

// The real rates: the ranks stay identical (the same averaged gradients, the same update), and
// near the single process.
static void test_threads_in_step(void **state) {
    (void)state;
    GanHparams hp;
    gan_hparams_default(&hp);
    hp.batch = 8;
    hp.ema_decay = 0.9f;
    GanTrainer one, r[RANKS];
    Shared sh = {0};
    RankCtx ctx[RANKS];
    run_ranks(r, &hp, &sh, ctx, 5);
    init(&one, &hp);
    for (int s = 0; s < 5; s++) assert_int_equal(gan_step(&one, &data), 0);
    const ParamSet *a = &r[0].G.ps, *b = &r[1].G.ps;
    assert_memory_equal(a->params, b->params, sizeof(float) * a->total);
    assert_memory_equal(r[0].D.ps.params, r[1].D.ps.params, sizeof(float) * r[0].D.ps.total);
    assert_memory_equal(r[0].ema, r[1].ema, sizeof(float) * a->total);
    // Adam takes about lr per step whatever the gradient's size: 5 steps move a weight by about
    // 5 lr at most, and the two runs differ by less than that
    double worst = 0;
    for (long i = 0; i < a->total; i++) worst = fmax(worst, fabs(a->params[i] - one.G.ps.params[i]));
    fprintf(stderr, "# 5 steps: 2 ranks vs 1, largest G weight difference %.3g (lr %g)\n", worst,
            hp.lr_g);
    assert_true(worst < 5 * hp.lr_g);
    gan_free(&one);
    for (int k = 0; k < RANKS; k++) {
        gan_free(&r[k]);
        free(sh.scratch[k]);
    }
}

// ---------------------------------------------------------------------------------------------
// mpirun

// mpirun as root (CI's containers) needs OpenMPI's consent; one OpenMP thread per process.
#define MPIRUN                                                                                     \
    "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 " \
    "OMP_NUM_THREADS=1 mpirun -np 2 --oversubscribe "

// Every F32 tensor of a whose name ends with suffix against b's, within atol + rtol |b|.
static int compare_files(const char *pa, const char *pb, const char *suffix, double atol,
                         double rtol) {
    StFile a = {0}, b = {0};
    char err[512];
    assert_int_equal(safetensors_read(&a, pa, err, sizeof err), 0);
    assert_int_equal(safetensors_read(&b, pb, err, sizeof err), 0);
    int bad = 0, seen = 0;
    size_t sl = strlen(suffix);
    for (int i = 0; i < b.n; i++) {
        const StTensor *tb = &b.tensors[i];
        size_t nl = strlen(tb->name);
        if (tb->dtype != ST_F32 || nl < sl || strcmp(tb->name + nl - sl, suffix)) continue;
        const StTensor *ta = safetensors_find(&a, tb->name);
        assert_non_null(ta);
        assert_int_equal(ta->nbytes, tb->nbytes);
        bad += compare_ps(tb->name, ta->data, tb->data, (long)(tb->nbytes / 4), atol, rtol);
        seen++;
    }
    assert_true(seen > 10);
    safetensors_free(&a);
    safetensors_free(&b);
    return bad;
}

static void test_mpirun(void **state) {
    (void)state;
    char out[8192];
    int rc = check_sh(out, sizeof out, "command -v mpirun");
    if (rc) fail_msg("mpirun is missing (make deps installs openmpi-bin)");
    // learning rates 0, three steps: Adam's moments hold the averaged gradients (m: the last
    // step's, v: the sum of their squares)
    const char *args = "train --config tinyc --iters 3 --batch 16 --seed 4 --lr-g 0 --lr-d 0 "
                       "--save-every 0 --sample-every 0 --log-every 1";
    rc = check_sh(out, sizeof out, MPIRUN "%s %s --ckpt-dir %s/mpi", check_steer_bin(), args, dir);
    if (rc) fail_msg("mpirun steer train: exit %d:\n%s", rc, out);
    CHECK_ASSERT_HAS(out, "data parallel: 2 processes, 8 images each per step");
    rc = check_sh(out, sizeof out, "OMP_NUM_THREADS=1 %s %s --ckpt-dir %s/one", check_steer_bin(), args, dir);
    if (rc) fail_msg("steer train: exit %d:\n%s", rc, out);
    char pa[256], pb[256];
    snprintf(pa, sizeof pa, "%s/mpi/latest.safetensors", dir);
    snprintf(pb, sizeof pb, "%s/one/latest.safetensors", dir);
    int bad = compare_files(pa, pb, ".adam_m", 1e-6, 1e-3);
    bad += compare_files(pa, pb, ".adam_v", 1e-10, 2e-3);
    assert_int_equal(bad, 0);
    // a batch that does not split is refused before any training
    rc = check_sh(out, sizeof out, MPIRUN "%s train --config tinyc --iters 1 --batch 15 --ckpt-dir %s/odd",
            check_steer_bin(), dir);
    assert_int_not_equal(rc, 0);
    CHECK_ASSERT_HAS(out, "batch 15 does not split over 2 processes");
}

// steer worker runs the same loop as steer train, so a job splits over mpirun's processes too:
// the same averaged gradients as one worker with the whole batch, rank 0 alone reporting.
static void test_mpirun_worker(void **state) {
    (void)state;
    char out[8192], spec[512], path[256];
    const char *job = "{\"config\": \"tinyc\", \"steps\": 3, \"batch\": 16, \"seed\": 4, "
                      "\"save_every\": 0, \"log_every\": 1, \"eval_n\": 0, "
                      "\"set\": {\"lr_g\": 0, \"lr_d\": 0}}";
    const char *runs[] = {"mpiw", "onew"};
    for (int k = 0; k < 2; k++) {
        snprintf(path, sizeof path, "%s/%s", dir, runs[k]);
        assert_int_equal(mkdir(path, 0755), 0);
        snprintf(spec, sizeof spec, "%s/%s/spec.json", dir, runs[k]);
        check_write_file(spec, job, strlen(job));
    }
    int rc = check_sh(out, sizeof out, "{ " MPIRUN "%s worker --dir %s/mpiw >%s/mpiw/messages; }",
                      check_steer_bin(), dir, dir);
    if (rc) fail_msg("mpirun steer worker: exit %d:\n%s", rc, out);
    CHECK_ASSERT_HAS(out, "steer worker: data parallel: 2 processes, 8 images each per step");
    CHECK_ASSERT_HAS(out, "steer worker: done at step 3");
    rc = check_sh(out, sizeof out, "{ OMP_NUM_THREADS=1 %s worker --dir %s/onew >%s/onew/messages; }",
                  check_steer_bin(), dir, dir);
    if (rc) fail_msg("steer worker: exit %d:\n%s", rc, out);
    char pa[256], pb[256];
    snprintf(pa, sizeof pa, "%s/mpiw/final.safetensors", dir);
    snprintf(pb, sizeof pb, "%s/onew/final.safetensors", dir);
    int bad = compare_files(pa, pb, ".adam_m", 1e-6, 1e-3);
    bad += compare_files(pa, pb, ".adam_v", 1e-10, 2e-3);
    assert_int_equal(bad, 0);
    // one voice: the two processes' messages are one process's (started, 3 progress, done)
    size_t na, nb;
    snprintf(pa, sizeof pa, "%s/mpiw/messages", dir);
    snprintf(pb, sizeof pb, "%s/onew/messages", dir);
    uint8_t *a = check_read_file(pa, &na), *b = check_read_file(pb, &nb);
    int dones = 0;
    for (size_t i = 0; i + 4 <= na; i++) dones += !memcmp(a + i, "done", 4);
    assert_int_equal(dones, 1);
    assert_true(na > 0 && na == nb); // the same messages; the figures in them differ only in time
    free(a);
    free(b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_threads_gradients),
        cmocka_unit_test(test_threads_in_step),
        cmocka_unit_test(test_mpirun),
        cmocka_unit_test(test_mpirun_worker),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
