// test_policy.c — unit tests of policy/policy.c on a synthetic pool (no networks): a pool of prior
// latents and classes whose features are the class one-hot plus two latent coordinates, and users
// whose hidden preference is a class or a latent direction.
//
// Checks: a class preference given as ratings moves the class distribution onto that class; a
// latent preference moves the mean along its direction while the KL and the pool's effective
// sample size stay within the configured trust region; a policy is a deterministic function of its
// comparisons (two learners fed the same feedback hold identical parameters, the rebuild the
// server relies on); ties and choices count as documented; active pairs come from the candidates;
// bad input is refused; sampling follows the class distribution.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "kernels/rng.h"
#include "policy/policy.h"
#include "tests/check.h"

#define M 1024 // pool
#define Z 8
#define C 4
#define F (C + 2)

static void make_pool(PolicyPool *p) {
    assert_int_equal(policy_pool_alloc(p, M, Z, C, F), 0);
    Rng r;
    rng_seed(&r, 7);
    rng_normal(&r, p->z, (long)M * Z);
    for (long i = 0; i < M; i++) {
        p->y[i] = (int32_t)rng_below(&r, C);
        float *phi = p->phi + i * F;
        for (int k = 0; k < C; k++) phi[k] = k == p->y[i] ? 2.0f : 0.0f;
        phi[C] = p->z[i * Z];     // z_0
        phi[C + 1] = p->z[i * Z + 1];
    }
    policy_pool_finish(p);
}

// Features of a frame (z, c) the way make_pool makes them.
static void features_of(const float *z, int c, float *phi) {
    for (int k = 0; k < C; k++) phi[k] = k == c ? 2.0f : 0.0f;
    phi[C] = z[0];
    phi[C + 1] = z[1];
}

typedef struct {
    PolicyConfig cfg;
    PolicyPool pool;
    PolicyScratch scratch;
} World;

static void world_init(World *w) {
    make_pool(&w->pool);
    policy_config_default(&w->cfg, F);
    assert_int_equal(policy_scratch_init(&w->scratch, &w->cfg, &w->pool, 512), 0);
}

static void world_free(World *w) {
    policy_scratch_free(&w->scratch);
    policy_pool_free(&w->pool);
}

// n rounds: draw a frame from the policy, rate it with like(z, c), update.
static void rate_rounds(World *w, Learner *l, Rng *r, int n, int (*like)(const float *, int)) {
    float z[Z], phi[F];
    for (int i = 0; i < n; i++) {
        int c = policy_sample(&l->params, r, z);
        features_of(z, c, phi);
        assert_int_equal(learner_rate(l, phi, like(z, c) ? 1.0 : -1.0), 0);
        assert_int_equal(learner_update(l, &w->scratch, NULL), 0);
    }
}

static int likes_class2(const float *z, int c) { (void)z; return c == 2; }
static int likes_z0(const float *z, int c) { (void)c; return z[0] > 0.5f; }

static void test_class_preference(void **state) {
    (void)state;
    World w;
    world_init(&w);
    Learner l;
    assert_int_equal(learner_init(&l, &w.cfg, &w.pool, 11, 512), 0);
    assert_int_equal(l.params.version, 0);
    for (int k = 0; k < C; k++) assert_float_equal(l.params.probs[k], 0.25, 1e-6);
    Rng r;
    rng_seed(&r, 3);
    rate_rounds(&w, &l, &r, 12, likes_class2);
    assert_int_equal(l.params.version, 12); // the feedback count
    assert_int_equal(l.params.feedback, 12);
    assert_int_equal(l.params.comparisons, 12);
    assert_true(l.params.probs[2] > 0.8);
    assert_true(l.params.kl > 0.1);
    assert_true(l.params.ess >= w.cfg.min_ess);
    // the reward model ranks a class-2 frame over every other class's (same latent)
    float z[Z] = {0}, a[F], b[F];
    features_of(z, 2, a);
    for (int k = 0; k < C; k++) {
        if (k == 2) continue;
        features_of(z, k, b);
        float ra, rb;
        reward_predict(&l.rm, a, 1, &ra, NULL);
        reward_predict(&l.rm, b, 1, &rb, NULL);
        assert_true(ra > rb);
    }
    // sampling follows the class distribution
    int hits = 0;
    for (int i = 0; i < 2000; i++) hits += policy_sample(&l.params, &r, z) == 2;
    assert_float_equal(hits / 2000.0, l.params.probs[2], 0.05);
    learner_free(&l);
    world_free(&w);
}

static void test_latent_preference(void **state) {
    (void)state;
    World w;
    world_init(&w);
    Learner l;
    assert_int_equal(learner_init(&l, &w.cfg, &w.pool, 12, 512), 0);
    Rng r;
    rng_seed(&r, 4);
    rate_rounds(&w, &l, &r, 30, likes_z0);
    double other = 0; // RMS of the mean along the directions the features cannot see
    for (int d = 2; d < Z; d++) other += (double)l.params.mu[d] * l.params.mu[d];
    other = sqrt(other / (Z - 2));
    printf("# mu[0] %.3f, rms mu[2..] %.3f, ess %.3f, kl %.3f\n", l.params.mu[0], other,
           l.params.ess, l.params.kl);
    assert_true(l.params.mu[0] > 0.3);       // toward what the user likes
    assert_true(l.params.mu[0] > 2 * other); // far more than along the unseen directions
    assert_true(l.params.ess >= w.cfg.min_ess);
    // the KL it reports is the closed form of its parameters (latent part + class part)
    double sig2 = (double)l.params.sigma * l.params.sigma, mu2 = 0, klc = 0;
    for (int d = 0; d < Z; d++) mu2 += (double)l.params.mu[d] * l.params.mu[d];
    for (int k = 0; k < C; k++) klc += l.params.probs[k] * log(l.params.probs[k] * C);
    double kl = 0.5 * (Z * sig2 + mu2 - Z) - Z * log(l.params.sigma) + klc;
    assert_float_equal(l.params.kl, kl, 1e-4);
    learner_free(&l);
    world_free(&w);
}

static void test_deterministic(void **state) {
    (void)state;
    World w;
    world_init(&w);
    Learner a, b;
    assert_int_equal(learner_init(&a, &w.cfg, &w.pool, 99, 512), 0);
    assert_int_equal(learner_init(&b, &w.cfg, &w.pool, 99, 512), 0);
    Rng r;
    rng_seed(&r, 5);
    rate_rounds(&w, &a, &r, 8, likes_class2); // a: updated after every feedback
    // b: the same comparisons replayed, one update at the end (the server's rebuild)
    for (long i = 0; i < a.n; i++) assert_int_equal(learner_pair(&b, a.win + i * F, a.lose + i * F, a.tie[i]), 0);
    b.params.feedback = a.params.feedback;
    assert_int_equal(learner_update(&b, &w.scratch, NULL), 0);
    assert_int_equal(a.params.version, b.params.version);
    assert_memory_equal(a.params.mu, b.params.mu, Z * sizeof(float));
    assert_memory_equal(a.params.probs, b.params.probs, C * sizeof(float));
    assert_true(a.params.sigma == b.params.sigma);
    assert_true(a.params.kl == b.params.kl);
    learner_free(&a);
    learner_free(&b);
    world_free(&w);
}

static void test_kinds_and_pairs(void **state) {
    (void)state;
    World w;
    world_init(&w);
    Learner l;
    assert_int_equal(learner_init(&l, &w.cfg, &w.pool, 5, 512), 0);
    float z[Z] = {0}, a[F], others[3 * F];
    features_of(z, 1, a);
    for (int k = 0; k < 3; k++) features_of(z, k == 1 ? 3 : k, others + k * F);
    assert_int_equal(learner_choose(&l, a, others, 3), 0); // one event, three comparisons
    assert_int_equal(learner_pair(&l, a, others, 1), 0);   // a tie
    assert_int_equal(learner_rate(&l, a, 0.0), 0);         // neutral: a tie with the pool mean
    assert_int_equal(l.params.feedback, 3);
    assert_int_equal(l.n, 5);
    assert_int_equal(l.tie[3] + l.tie[4], 2);
    assert_int_not_equal(learner_rate(&l, a, 1.5), 0); // out of range: refused, nothing added
    assert_int_not_equal(learner_rate(&l, a, NAN), 0);
    assert_int_equal(l.n, 5);
    assert_int_equal(learner_update(&l, &w.scratch, NULL), 0);
    assert_int_equal(l.params.comparisons, 5);
    long cand[6] = {0, 1, 2, 3, 4, 5}, pa, pb;
    learner_pick_pair(&l, cand, 6, &pa, &pb);
    assert_true(pa != pb && pa >= 0 && pa < 6 && pb >= 0 && pb < 6);
    learner_free(&l);
    world_free(&w);
}

static void test_forgets_oldest(void **state) {
    (void)state;
    World w;
    world_init(&w);
    Learner l;
    assert_int_equal(learner_init(&l, &w.cfg, &w.pool, 5, 4), 0); // keeps 4 comparisons
    float z[Z] = {0}, a[F];
    for (int i = 0; i < 6; i++) {
        features_of(z, i % C, a);
        assert_int_equal(learner_rate(&l, a, 1.0), 0);
    }
    assert_int_equal(l.n, 4);
    assert_float_equal(l.win[0 * F + 2], 2.0, 0); // the third rating (class 2) is now the oldest
    assert_int_equal(l.params.feedback, 6);
    learner_free(&l);
    world_free(&w);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_class_preference), cmocka_unit_test(test_latent_preference),
        cmocka_unit_test(test_deterministic),    cmocka_unit_test(test_kinds_and_pairs),
        cmocka_unit_test(test_forgets_oldest),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
