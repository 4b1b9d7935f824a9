// sample.c — `steer sample`: a checkpoint's frames, deterministically for a seed or for given
// latents, as a float32 .npy or a PNG grid. No model math (generator/gan.h draws them).
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/args.h"
#include "cmd/commands.h"
#include "generator/data/imageio.h"
#include "generator/gan.h"
#include "kernels/device.h"
#include "kernels/kernels.h"

static void sample_usage(FILE *f) {
    fprintf(f, "usage: steer sample --ckpt FILE (--n N | --latents Z.npy) --out FILE.npy|FILE.png [--seed S] "
               "[--class K | --by-class] [--cols C] [--bf16]\n"
               "Samples N images from a checkpoint, deterministically for a seed.\n"
               "  .npy: float32, shape (N, C, H, W), values in [-1, 1]; .png: a grid\n"
               "  --class K  a conditional model samples class K only (default: uniform)\n"
               "  --by-class a conditional model fills row r of the grid with class r %% classes\n"
               "  --cols C   grid columns (default 10)\n"
               "  --latents Z.npy  draw these latents (float32, (n, z_dim)) instead of seeded ones;\n"
               "             classes: --class K, else i %% classes\n"
               "  --bf16     G's convolutions on BF16 inputs (as steer serve --bf16 on the CPU);\n"
               "             where the CPU has no BF16 instructions, FP32, saying why\n");
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

int cmd_sample(int argc, char **argv) {
    const char *ckpt = NULL, *out = NULL, *latents = NULL;
    long n = 0, seed = 0, cls = -1, cols = 10;
    int by_class = 0;
    static const struct option opts[] = {{"ckpt", 1, 0, 'c'}, {"n", 1, 0, 'n'},
                                         {"latents", 1, 0, 'L'},
                                         {"out", 1, 0, 'o'},  {"seed", 1, 0, 's'},
                                         {"class", 1, 0, 'k'}, {"cols", 1, 0, 'w'},
                                         {"by-class", 0, 0, 'B'}, {"bf16", 0, 0, 'F'},
                                         {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    optind = 1;
    int o;
    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (o) {
        case 'c': ckpt = optarg; break;
        case 'n': if (args_long("sample", optarg, 1, 1000000, "--n", &n)) return 2; break;
        case 'o': out = optarg; break;
        case 's': if (args_long("sample", optarg, 0, LONG_MAX, "--seed", &seed)) return 2; break;
        case 'k': if (args_long("sample", optarg, 0, 999, "--class", &cls)) return 2; break;
        case 'w': if (args_long("sample", optarg, 1, 1000, "--cols", &cols)) return 2; break;
        case 'B': by_class = 1; break;
        case 'F': {
            char why[200];
            if (device_bf16_set(1, why, sizeof why))
                fprintf(stderr, "steer sample: --bf16: %s; sampling in FP32\n", why);
            break;
        }
        case 'L': latents = optarg; break;
        case 'h': sample_usage(stdout); return 0;
        default: sample_usage(stderr); return 2;
        }
    }
    // --latents: the frames of given latents (n, Z) float32 .npy, e.g. a stored feedback's
    float *given = NULL;
    if (latents) {
        int nd;
        int64_t shape[NPY_MAX_DIMS];
        char lerr[512];
        if (npy_read_f32(latents, &given, &nd, shape, lerr, sizeof lerr) || nd != 2) {
            fprintf(stderr, "steer sample: --latents %s: %s\n", latents,
                    given ? "must be a 2-D array (n, z_dim)" : lerr);
            free(given);
            return 2;
        }
        if (n && n != shape[0]) {
            fprintf(stderr, "steer sample: --n %ld but %s holds %lld latents\n", n, latents,
                    (long long)shape[0]);
            free(given);
            return 2;
        }
        n = (long)shape[0];
        seed = shape[1]; // checked against the model's z_dim below
    }
    if (!ckpt || !out || !n || optind < argc) {
        sample_usage(stderr);
        free(given);
        return 2;
    }
    int png = ends_with(out, ".png");
    if (!png && !ends_with(out, ".npy")) {
        fprintf(stderr, "steer sample: --out '%s' must end in .npy or .png\n", out);
        return 2;
    }
    char err[1024];
    Generator g;
    enum { BATCH = 64 };
    if (generator_load(&g, ckpt, BATCH, err, sizeof err)) {
        fprintf(stderr, "steer sample: %s\n", err);
        generator_free(&g);
        return 1;
    }
    const SaganConfig *c = &g.cfg;
    if (cls >= 0 && cls >= c->n_classes) {
        fprintf(stderr, "steer sample: --class %ld, but %s has %s\n", cls, ckpt,
                c->n_classes ? "fewer classes" : "no classes (unconditional)");
        generator_free(&g);
        return 2;
    }
    long img = (long)c->channels * c->img * c->img;
    float *z = malloc(sizeof(float) * n * c->z_dim), *x = malloc(sizeof(float) * n * img);
    int32_t *y = malloc(sizeof(int32_t) * n);
    int status = 1;
    if (!z || !x || !y) {
        fprintf(stderr, "steer sample: out of memory for %ld samples\n", n);
        goto done;
    }
    if (given && seed != c->z_dim) {
        fprintf(stderr, "steer sample: --latents %s: rows of %ld values, the model's z_dim is %d\n",
                latents, seed, c->z_dim);
        status = 2;
        goto done;
    }
    if (given) { // classes: --class K, else i % classes
        memcpy(z, given, sizeof(float) * n * c->z_dim);
        for (long i = 0; i < n; i++) y[i] = c->n_classes ? (cls >= 0 ? (int32_t)cls : (int32_t)(i % c->n_classes)) : 0;
    } else {
        gan_sample_latents(c, (uint64_t)seed, n, (int)cls, z, y);
    }
    if (by_class && c->n_classes)
        for (long i = 0; i < n; i++) y[i] = (int32_t)((i / cols) % c->n_classes);
    int rc = generator_draw(&g, z, c->n_classes ? y : NULL, n, BATCH, x);
    if (rc) {
        fprintf(stderr, "steer sample: generator: %s\n", kernels_strerror(rc));
        goto done;
    }
    if (png) {
        rc = image_grid_write_png(out, x, (int)n, c->channels, c->img, c->img, (int)cols, err,
                                  sizeof err);
    } else {
        int64_t shape[4] = {n, c->channels, c->img, c->img};
        rc = npy_write_f32(out, x, 4, shape, err, sizeof err);
    }
    if (rc) {
        fprintf(stderr, "steer sample: %s\n", err);
        goto done;
    }
    fprintf(stderr, "wrote %ld samples of %s to %s\n", n, ckpt, out);
    status = 0;
done:
    free(given);
    free(z);
    free(x);
    free(y);
    generator_free(&g);
    return status;
}
