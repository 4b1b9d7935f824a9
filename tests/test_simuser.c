// test_simuser.c — unit tests of env/simuser.c: the Bradley–Terry draw against its sigmoid on
// synthetic utilities, config refusals, and the three preferences judged by the shipped evaluator
// (models/fmnist-eval.safetensors) on frames of the shipped generator
// (models/fmnist32c.safetensors): a class-k user likes class-k frames and not the others, compare()
// follows the utility ordering and repeats for a seed, the dark user picks the darker frame, the
// sample user picks frames of its target's class.
//
// Not covered: `steer simulate` and the runs through the server (they use these users as a black
// box), and the evaluator and generator themselves (test_eval.c, test_gan.c, test_gen.c).
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "env/simuser.h"
#include "generator/classifier.h"
#include "generator/gan.h"
#include "generator/sagan.h"
#include "kernels/kernels.h"
#include "kernels/rng.h"
#include "tests/check.h"

#define EVAL_MODEL "models/fmnist-eval.safetensors"
#define GEN_MODEL "models/fmnist32c.safetensors"
#define MAX_B 100
#define N_CALIB 256 // calibration frames, random classes
#define N_CLASS 40  // frames per class
#define CLASSES 10

static Classifier eval;
static Generator gen;
static float *calib;     // (N_CALIB, 1, 32, 32)
static float *per_class; // (CLASSES * N_CLASS, 1, 32, 32): class c's frames at c * N_CLASS

// n frames of the shipped generator from seed: classes uniform, or all fixed_class when >= 0.
static void frames_generate(float *out, long n, uint64_t seed, int fixed_class) {
    const SaganConfig *c = &gen.cfg;
    float *z = CHECK_ALLOC(float, n * c->z_dim);
    int32_t *y = CHECK_ALLOC(int32_t, n);
    gan_sample_latents(c, seed, n, fixed_class, z, y);
    for (long i = 0; i < n; i += MAX_B) {
        int b = (int)(n - i < MAX_B ? n - i : MAX_B);
        int rc = generator_forward(&gen, z + i * c->z_dim, c->n_classes ? y + i : NULL, b);
        if (rc) {
            fprintf(stderr, "test_simuser: generator: %s\n", kernels_strerror(rc));
            exit(1);
        }
        memcpy(out + i * SIMUSER_IMG, gen.img, sizeof(float) * b * SIMUSER_IMG);
    }
    free(z);
    free(y);
}

static int group_setup(void **state) {
    (void)state;
    char err[1024];
    if (classifier_load(&eval, EVAL_MODEL, MAX_B, NULL, err, sizeof err) ||
        generator_load(&gen, GEN_MODEL, MAX_B, err, sizeof err)) {
        fprintf(stderr, "test_simuser: %s\n", err);
        return -1;
    }
    if (gen.cfg.channels != 1 || gen.cfg.img != CLASSIFIER_IMG || gen.cfg.n_classes != CLASSES) {
        fprintf(stderr, "test_simuser: %s is not a 1x32x32 10-class generator\n", GEN_MODEL);
        return -1;
    }
    calib = CHECK_ALLOC(float, (long)N_CALIB *SIMUSER_IMG);
    per_class = CHECK_ALLOC(float, (long)CLASSES *N_CLASS *SIMUSER_IMG);
    frames_generate(calib, N_CALIB, 1, -1);
    for (int k = 0; k < CLASSES; k++)
        frames_generate(per_class + (long)k * N_CLASS * SIMUSER_IMG, N_CLASS, 100 + k, k);
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    free(calib);
    free(per_class);
    generator_free(&gen);
    classifier_free(&eval);
    return 0;
}

static const float *class_frame(int k, int i) {
    return per_class + ((long)k * N_CLASS + i) * SIMUSER_IMG;
}

static void user_make(SimUser *u, SimUserKind kind, int k, const float *target, uint64_t seed) {
    SimUserConfig cfg;
    char err[512];
    simuser_config_default(&cfg, kind);
    cfg.target_class = k;
    cfg.target_image = target;
    cfg.seed = seed;
    if (simuser_init(u, &cfg, &eval, calib, N_CALIB, err, sizeof err))
        fail_msg("%s", err);
}

// ---------------------------------------------------------------------------------------------
// Bradley–Terry noise on synthetic utilities

// For each difference du, the frequency of "a" over N draws is within 4.5 binomial standard
// deviations of sigmoid(beta du), at two betas; the draws repeat for a seed and differ for
// another. Synthetic calibration frames (uniform noise) suffice for a dark user.
static void test_bt_draw_frequency(void **state) {
    (void)state;
    enum { N = 20000, NCAL = 64 };
    float *noise = CHECK_ALLOC(float, NCAL *SIMUSER_IMG);
    Rng r;
    rng_seed(&r, 5);
    check_fill_uniform(&r, noise, NULL, (long)NCAL * SIMUSER_IMG, -1, 1);
    const double dus[] = {-2.0, -0.7, 0.0, 0.25, 1.0, 3.0};
    const float betas[] = {SIMUSER_BETA_DEFAULT, 0.5f};
    int bad = 0;
    for (int bi = 0; bi < 2; bi++) {
        SimUserConfig cfg;
        SimUser u;
        char err[256];
        simuser_config_default(&cfg, SIMUSER_LIKES_DARK);
        cfg.beta = betas[bi];
        cfg.seed = 77 + bi;
        assert_int_equal(simuser_init(&u, &cfg, NULL, noise, NCAL, err, sizeof err), 0);
        for (size_t d = 0; d < sizeof dus / sizeof dus[0]; d++) {
            int a = 0;
            for (int i = 0; i < N; i++)
                a += simuser_choice_draw(&u, dus[d]) == 0;
            double p = 1 / (1 + exp(-betas[bi] * dus[d]));
            double sd = sqrt(p * (1 - p) / N);
            double f = (double)a / N;
            if (fabs(f - p) > 4.5 * sd + 1e-9) {
                printf("# beta %g du %g: P(a) %.4f, want %.4f +- %.4f\n", betas[bi], dus[d], f, p,
                       4.5 * sd);
                bad++;
            }
        }
        simuser_free(&u);
    }
    assert_int_equal(bad, 0);

    // Reproducible: two users with one seed draw the same; another seed draws otherwise.
    SimUserConfig cfg;
    SimUser u1, u2, u3;
    char err[256];
    simuser_config_default(&cfg, SIMUSER_LIKES_DARK);
    cfg.seed = 9;
    assert_int_equal(simuser_init(&u1, &cfg, NULL, noise, NCAL, err, sizeof err), 0);
    assert_int_equal(simuser_init(&u2, &cfg, NULL, noise, NCAL, err, sizeof err), 0);
    cfg.seed = 10;
    assert_int_equal(simuser_init(&u3, &cfg, NULL, noise, NCAL, err, sizeof err), 0);
    int same12 = 0, same13 = 0;
    for (int i = 0; i < 200; i++) {
        int c1 = simuser_choice_draw(&u1, 0.0);
        same12 += c1 == simuser_choice_draw(&u2, 0.0);
        same13 += c1 == simuser_choice_draw(&u3, 0.0);
    }
    assert_int_equal(same12, 200);
    assert_true(same13 < 160); // fair coins: about 100 agree
    simuser_free(&u1);
    simuser_free(&u2);
    simuser_free(&u3);
    free(noise);
}

// Bad configs are refused with a message and leave a struct that frees safely.
static void test_refusals(void **state) {
    (void)state;
    SimUserConfig cfg;
    SimUser u;
    char err[256];
    simuser_config_default(&cfg, SIMUSER_LIKES_CLASS);
    cfg.target_class = CLASSES;
    assert_int_equal(simuser_init(&u, &cfg, &eval, calib, N_CALIB, err, sizeof err),
                     KERNELS_EINVAL);
    CHECK_ASSERT_HAS(err, "target class");
    simuser_free(&u);
    simuser_config_default(&cfg, SIMUSER_LIKES_CLASS);
    cfg.beta = 0;
    assert_int_equal(simuser_init(&u, &cfg, &eval, calib, N_CALIB, err, sizeof err),
                     KERNELS_EINVAL);
    CHECK_ASSERT_HAS(err, "beta");
    simuser_config_default(&cfg, SIMUSER_LIKES_SAMPLE);
    assert_int_equal(simuser_init(&u, &cfg, &eval, calib, N_CALIB, err, sizeof err),
                     KERNELS_EINVAL);
    CHECK_ASSERT_HAS(err, "target image");
    simuser_config_default(&cfg, SIMUSER_LIKES_CLASS);
    assert_int_equal(simuser_init(&u, &cfg, NULL, calib, N_CALIB, err, sizeof err), KERNELS_EINVAL);
    CHECK_ASSERT_HAS(err, "evaluator");
    assert_int_equal(simuser_init(&u, &cfg, &eval, calib, 3, err, sizeof err), KERNELS_EINVAL);
    CHECK_ASSERT_HAS(err, "calibration");
    // Constant frames carry no scale.
    float *flat = CHECK_ALLOC(float, 32L * SIMUSER_IMG);
    simuser_config_default(&cfg, SIMUSER_LIKES_DARK);
    assert_int_equal(simuser_init(&u, &cfg, NULL, flat, 32, err, sizeof err), KERNELS_EINVAL);
    CHECK_ASSERT_HAS(err, "same");
    simuser_free(&u);
    simuser_free(&u);
    free(flat);
    assert_string_equal(simuser_kind_name(SIMUSER_LIKES_SAMPLE), "sample");
    assert_string_equal(simuser_kind_name(SIMUSER_KINDS), "?");
}

// ---------------------------------------------------------------------------------------------
// the preferences on real frames

// Class-k users like > 80% of the generator's class-k frames and < 20% of the other classes'
// frames, averaged over k; for every k they like their own class far more often than the rest
// (the generator's pullovers and shirts are the weakest: the evaluator calls about half of them
// something else), and rate it up far more often. Utilities are standardized on the calibration
// frames (mean 0, std 1).
static void test_class_user_likes_its_class(void **state) {
    (void)state;
    const long n = (long)CLASSES * N_CLASS;
    int *liked = CHECK_ALLOC(int, n);
    int *rating = CHECK_ALLOC(int, n);
    float *cu = CHECK_ALLOC(float, N_CALIB);
    int bad = 0;
    double own_mean = 0, others_mean = 0;
    for (int k = 0; k < CLASSES; k++) {
        SimUser u;
        user_make(&u, SIMUSER_LIKES_CLASS, k, NULL, 3 + k);
        assert_int_equal(simuser_likes(&u, per_class, n, liked), 0);
        assert_int_equal(simuser_rate(&u, per_class, n, rating), 0);
        int own = 0, others_max = 0, others_sum = 0, own_up = 0, others_up = 0;
        for (int c = 0; c < CLASSES; c++) {
            int cnt = 0, up = 0;
            for (int i = 0; i < N_CLASS; i++) {
                cnt += liked[c * N_CLASS + i];
                up += rating[c * N_CLASS + i] > 0;
            }
            if (c == k) {
                own = cnt;
                own_up = up;
            } else {
                others_max = cnt > others_max ? cnt : others_max;
                others_sum += cnt;
                others_up += up;
            }
        }
        printf("# class %d: liked %d/%d own, at most %d/%d of another; rated up %d/%d own, "
               "%d/%d others\n",
               k, own, N_CLASS, others_max, N_CLASS, own_up, N_CLASS, others_up,
               (CLASSES - 1) * N_CLASS);
        double own_f = (double)own / N_CLASS, others_f = (double)others_sum / (9 * N_CLASS);
        double own_up_f = (double)own_up / N_CLASS, others_up_f = (double)others_up / (9 * N_CLASS);
        own_mean += own_f / CLASSES;
        others_mean += others_f / CLASSES;
        if (own_f < 0.5 || own_f < 5 * others_f || own_up_f < 0.5 || own_up_f < 5 * others_up_f)
            bad++;
        // Standardized on the calibration frames.
        assert_int_equal(simuser_utility(&u, calib, N_CALIB, cu, NULL), 0);
        double m = 0, v = 0;
        for (int i = 0; i < N_CALIB; i++)
            m += cu[i];
        m /= N_CALIB;
        for (int i = 0; i < N_CALIB; i++)
            v += (cu[i] - m) * (cu[i] - m);
        v /= N_CALIB - 1;
        assert_true(fabs(m) < 1e-4);
        assert_true(fabs(v - 1) < 1e-3);
        simuser_free(&u);
    }
    printf("# over the classes: liked %.3f of their own class, %.3f of the others\n", own_mean,
           others_mean);
    assert_int_equal(bad, 0);
    assert_true(own_mean > 0.8);
    assert_true(others_mean < 0.2);
    free(cu);
    free(rating);
    free(liked);
}

// compare() agrees with the sign of u(a) - u(b) far above chance on the pairs that differ (|du| >
// 1: > 80%, BT says >= 88%), overall as often as the BT model says it should (the sum of
// sigmoid(beta |du|), within 4.5 binomial standard deviations), and gives the same answers again
// for the same seed.
static void test_compare_follows_utility(void **state) {
    (void)state;
    // Pairs: frame i against frame i + n. a holds classes 0-4 and b classes 5-9, so every pair
    // crosses classes, and a class-2 and a class-7 user each see many pairs that differ.
    const long n = (long)CLASSES * N_CLASS / 2;
    const float *a = per_class, *b = per_class + n * SIMUSER_IMG;
    float *ua = CHECK_ALLOC(float, n), *ub = CHECK_ALLOC(float, n);
    int *ch = CHECK_ALLOC(int, n), *ch2 = CHECK_ALLOC(int, n);
    const int ks[] = {2, 7};
    for (int t = 0; t < 2; t++) {
        SimUser u, u2;
        user_make(&u, SIMUSER_LIKES_CLASS, ks[t], NULL, 42);
        assert_int_equal(simuser_utility(&u, a, n, ua, NULL), 0);
        assert_int_equal(simuser_utility(&u, b, n, ub, NULL), 0);
        assert_int_equal(simuser_compare(&u, a, b, n, ch), 0);
        int agree = 0, clear = 0, clear_agree = 0;
        double want = 0, var = 0;
        for (long i = 0; i < n; i++) {
            double du = (double)ua[i] - ub[i];
            agree += (du > 0) == (ch[i] == 0);
            clear += fabs(du) > 1;
            clear_agree += fabs(du) > 1 && (du > 0) == (ch[i] == 0);
            double p = 1 / (1 + exp(-SIMUSER_BETA_DEFAULT * fabs(du)));
            want += p;
            var += p * (1 - p);
        }
        printf("# class %d user: compare agrees with the utility on %d/%ld pairs (BT expects "
               "%.1f +- %.1f)\n",
               ks[t], agree, n, want, sqrt(var));
        printf("# ... and on %d/%d pairs with |du| > 1\n", clear_agree, clear);
        assert_true(clear >= 20);
        assert_true(clear_agree > 0.8 * clear);
        assert_true(fabs(agree - want) <= 4.5 * sqrt(var) + 1);
        // Same seed, same answers.
        user_make(&u2, SIMUSER_LIKES_CLASS, ks[t], NULL, 42);
        assert_int_equal(simuser_compare(&u2, a, b, n, ch2), 0);
        assert_memory_equal(ch, ch2, sizeof(int) * n);
        simuser_free(&u2);
        simuser_free(&u);
    }
    free(ua);
    free(ub);
    free(ch);
    free(ch2);
}

static double brightness(const float *x) {
    double s = 0;
    for (int p = 0; p < SIMUSER_IMG; p++)
        s += x[p];
    return s / SIMUSER_IMG;
}

// The dark user picks the darker of two random frames in most pairs, likes about half of fresh
// random frames (its threshold is the calibration median), and likes exactly those darker than it.
static void test_dark_user_prefers_darker(void **state) {
    (void)state;
    const long n = (long)CLASSES * N_CLASS / 2;
    // Pairs within the whole set, class-shuffled: frame i against frame (i * 7 + 3) mod 2n.
    float *b = CHECK_ALLOC(float, n *SIMUSER_IMG);
    for (long i = 0; i < n; i++)
        memcpy(b + i * SIMUSER_IMG, per_class + ((i * 7 + 3) % (2 * n)) * SIMUSER_IMG,
               sizeof(float) * SIMUSER_IMG);
    SimUser u;
    user_make(&u, SIMUSER_LIKES_DARK, 0, NULL, 8);
    int *ch = CHECK_ALLOC(int, n), *liked = CHECK_ALLOC(int, 2 * n);
    assert_int_equal(simuser_compare(&u, per_class, b, n, ch), 0);
    int darker = 0, pairs = 0;
    for (long i = 0; i < n; i++) {
        double ba = brightness(per_class + i * SIMUSER_IMG), bb = brightness(b + i * SIMUSER_IMG);
        if (ba == bb)
            continue;
        pairs++;
        darker += (ba < bb) == (ch[i] == 0);
    }
    printf("# dark user: picked the darker frame in %d/%d pairs\n", darker, pairs);
    assert_true(darker > 0.75 * pairs);
    assert_int_equal(simuser_likes(&u, per_class, 2 * n, liked), 0);
    double median_brightness = -u.like_raw;
    int nliked = 0, wrong = 0;
    for (long i = 0; i < 2 * n; i++) {
        nliked += liked[i];
        wrong += liked[i] != (brightness(per_class + i * SIMUSER_IMG) < median_brightness - 1e-6);
    }
    printf("# dark user: likes %d/%ld fresh frames\n", nliked, 2 * n);
    assert_true(nliked > 0.3 * 2 * n && nliked < 0.7 * 2 * n);
    assert_true(wrong <= 2); // float vs double rounding at the boundary only
    free(ch);
    free(liked);
    free(b);
    simuser_free(&u);
}

// A user who likes a class-c sample prefers frames of class c to frames of the other classes and
// likes them far more often, for a few targets.
static void test_sample_user_prefers_target_class(void **state) {
    (void)state;
    const int targets[] = {1, 5, 8}; // trouser, sandal, bag
    int *ch = CHECK_ALLOC(int, N_CLASS), *liked = CHECK_ALLOC(int, (long)CLASSES *N_CLASS);
    float *others = CHECK_ALLOC(float, (long)N_CLASS *SIMUSER_IMG);
    int bad = 0;
    for (int t = 0; t < 3; t++) {
        int k = targets[t];
        SimUser u;
        user_make(&u, SIMUSER_LIKES_SAMPLE, 0, class_frame(k, 0), 11 + t);
        // Pairs: class-k frame i (not the target itself) against frame i of another class.
        for (int i = 1; i < N_CLASS; i++)
            memcpy(others + (long)(i - 1) * SIMUSER_IMG, class_frame((k + 1 + i % 9) % CLASSES, i),
                   sizeof(float) * SIMUSER_IMG);
        assert_int_equal(simuser_compare(&u, class_frame(k, 1), others, N_CLASS - 1, ch), 0);
        int picked = 0;
        for (int i = 0; i < N_CLASS - 1; i++)
            picked += ch[i] == 0;
        assert_int_equal(simuser_likes(&u, per_class, (long)CLASSES * N_CLASS, liked), 0);
        int own = 0, other = 0;
        for (int c = 0; c < CLASSES; c++)
            for (int i = c == k; i < N_CLASS; i++)
                *(c == k ? &own : &other) += liked[c * N_CLASS + i];
        double own_f = (double)own / (N_CLASS - 1), other_f = (double)other / (9 * N_CLASS);
        printf("# sample user, class-%d target: picked its class in %d/%d pairs; likes %.2f of its "
               "class, %.2f of the others\n",
               k, picked, N_CLASS - 1, own_f, other_f);
        if (picked <= 0.8 * (N_CLASS - 1) || own_f < 0.4 || own_f < 4 * other_f)
            bad++;
        simuser_free(&u);
    }
    assert_int_equal(bad, 0);
    free(others);
    free(liked);
    free(ch);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bt_draw_frequency),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_class_user_likes_its_class),
        cmocka_unit_test(test_compare_follows_utility),
        cmocka_unit_test(test_dark_user_prefers_darker),
        cmocka_unit_test(test_sample_user_prefers_target_class),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
