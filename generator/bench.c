// bench.c — `steer bench`: images/s of a training iteration and of G forward at batch 1 and 64,
// their effective GFLOP/s, and the machine's SGEMM peak through the same library (oneDNN), so
// the figures read as fractions of what the machine can do. Timings only; no checks of results
// (the tests do that). Each figure runs for a fixed wall time after a warm-up.
#include "generator/bench.h"

#include "generator/cli.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "env/fmnist.h"
#include "generator/gan.h"
#include "kernels/gemm.h"
#include "kernels/kernels.h"

// SGEMM peak: square products of a size where oneDNN runs near its best.
static double sgemm_gflops(double seconds) {
    enum { N = 1536 };
    float *a = aligned_alloc(64, sizeof(float) * N * N), *b = aligned_alloc(64, sizeof(float) * N * N),
          *c = aligned_alloc(64, sizeof(float) * N * N);
    if (!a || !b || !c) return 0;
    for (long i = 0; i < (long)N * N; i++) a[i] = b[i] = (float)(i % 7) * 0.1f, c[i] = 0;
    gemm(0, 0, N, N, N, 1.0f, a, N, b, N, 0.0f, c, N);
    long reps = 0;
    double t0 = cli_now_s(), t;
    do {
        gemm(0, 0, N, N, N, 1.0f, a, N, b, N, 0.0f, c, N);
        reps++;
    } while ((t = cli_now_s() - t0) < seconds);
    free(a);
    free(b);
    free(c);
    return 2.0 * N * N * (double)N * reps / t / 1e9;
}

static double gen_images_per_s(Generator *g, int B, double seconds) {
    const SaganConfig *c = &g->cfg;
    float *z = malloc(sizeof(float) * B * c->z_dim);
    int32_t *y = calloc(B, sizeof(int32_t));
    gan_sample_latents(c, 1, B, -1, z, y);
    for (int i = 0; i < 3; i++) generator_forward(g, z, c->n_classes ? y : NULL, B);
    long reps = 0;
    double t0 = cli_now_s(), t;
    do {
        if (generator_forward(g, z, c->n_classes ? y : NULL, B)) return 0;
        reps++;
    } while ((t = cli_now_s() - t0) < seconds);
    free(z);
    free(y);
    return (double)reps * B / t;
}

// Bare generator forward of a checkpoint at batch B: what the server's throughput is measured against.
static int bench_ckpt(const char *path, int B, double seconds) {
    Generator g;
    char err[512];
    if (generator_load(&g, path, B, err, sizeof err)) {
        fprintf(stderr, "steer bench: %s\n", err);
        return 1;
    }
    gen_images_per_s(&g, B, 0.2); // warm-up: primitives built, caches filled
    printf("ckpt_gen_batch %d\nckpt_gen_images_per_s %.1f\n", B, gen_images_per_s(&g, B, seconds));
    generator_free(&g);
    return 0;
}

int cli_bench(int argc, char **argv) {
    const char *config = "fmnist32", *ckpt = NULL;
    double seconds = 5;
    long batch = 64;
    static const struct option opts[] = {{"config", 1, 0, 'c'}, {"seconds", 1, 0, 's'},
                                         {"ckpt", 1, 0, 'k'},   {"batch", 1, 0, 'b'},
                                         {"help", 0, 0, 'h'},   {0, 0, 0, 0}};
    optind = 1;
    int o;
    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (o) {
        case 'c': config = optarg; break;
        case 's': seconds = atof(optarg); break;
        case 'k': ckpt = optarg; break;
        case 'b': if (cli_parse_long("bench", optarg, 1, 4096, "--batch", &batch)) return 2; break;
        case 'h':
            printf("usage: steer bench [--config fmnist32] [--seconds 5]\n"
                   "       steer bench --ckpt PATH [--batch 64] [--seconds 5]\n"
                   "Prints `name value` lines: training and generation images/s, their effective\n"
                   "GFLOP/s and the SGEMM peak of this machine through oneDNN. With --ckpt, only\n"
                   "the bare generator forward of that checkpoint at one batch size\n"
                   "(ckpt_gen_images_per_s), the figure the server benchmark compares against.\n");
            return 0;
        default: return 2;
        }
    }
    if (!(seconds > 0 && seconds < 3600)) {
        fprintf(stderr, "steer bench: --seconds must be in (0, 3600)\n");
        return 2;
    }
    if (ckpt) return bench_ckpt(ckpt, (int)batch, seconds);
    SaganConfig cfg;
    if (sagan_config_lookup(&cfg, config)) {
        fprintf(stderr, "steer bench: unknown config '%s'\n", config);
        return 2;
    }
    char err[1024];
    Dataset data = {0};
    if (fmnist_load(&data, FMNIST_DIR, 0, err, sizeof err)) {
        fprintf(stderr, "steer bench: %s\n", err);
        return 1;
    }
    double gmacs = generator_macs(&cfg), dmacs = discriminator_macs(&cfg);
    // Per trained image: G forward twice and backward once (2 units), D forward on real and fake
    // plus G step (3), D backward with weight gradients on 2 (2 x 2 units) and data only on 1.
    double train_flops = 2.0 * (4 * gmacs + 8 * dmacs);

    double peak = sgemm_gflops(seconds / 2);
    printf("sgemm_gflops %.1f\n", peak);
    fflush(stdout);

    GanHparams hp;
    gan_hparams_default(&hp);
    GanTrainer t;
    int status = 1;
    if (gan_init(&t, &cfg, &hp, 1)) {
        fprintf(stderr, "steer bench: out of memory\n");
        goto done;
    }
    for (int i = 0; i < 3; i++)
        if (gan_step(&t, &data)) goto step_failed;
    long reps = 0;
    double t0 = cli_now_s(), el;
    do {
        if (gan_step(&t, &data)) goto step_failed;
        reps++;
    } while ((el = cli_now_s() - t0) < seconds);
    double train_ips = (double)reps * hp.batch / el;
    printf("train_images_per_s %.1f\n", train_ips);
    printf("train_gflops %.1f\n", train_ips * train_flops / 1e9);
    printf("train_fraction_of_sgemm %.3f\n", train_ips * train_flops / 1e9 / peak);
    fflush(stdout);

    Generator g;
    if (generator_init(&g, &cfg, 64, 1)) {
        fprintf(stderr, "steer bench: out of memory\n");
        gan_free(&t);
        goto done;
    }
    // Serve-like weights: the trained G's effective weights are what sampling uses.
    memcpy(g.ps.params, t.G.ps.params, sizeof(float) * g.ps.total);
    paramset_sn_forward(&g.ps, 0);
    double b1 = gen_images_per_s(&g, 1, seconds), b64 = gen_images_per_s(&g, 64, seconds);
    printf("gen_b1_images_per_s %.1f\n", b1);
    printf("gen_b1_gflops %.1f\n", b1 * 2 * gmacs / 1e9);
    printf("gen_b64_images_per_s %.1f\n", b64);
    printf("gen_b64_gflops %.1f\n", b64 * 2 * gmacs / 1e9);
    printf("gen_b64_fraction_of_sgemm %.3f\n", b64 * 2 * gmacs / 1e9 / peak);
    generator_free(&g);
    gan_free(&t);
    status = 0;
    goto done;
step_failed:
    fprintf(stderr, "steer bench: a training step failed\n");
    gan_free(&t);
done:
    dataset_free(&data);
    return status;
}
