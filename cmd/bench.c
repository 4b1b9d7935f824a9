// bench.c — `steer bench`: images/s of a training iteration and of G forward, their effective
// GFLOP/s, and the machine's SGEMM peak through the same library the model uses, so the figures
// read as fractions of what the machine can do. On the CPU (the default): training at --batch,
// G forward at batch 1 and 64, the peak through oneDNN. With --device cuda (a CUDA build): the
// GPU training step (gan_cuda_step) and G forward (generator_cuda_forward) at --batch, the peak
// through cuBLAS (gemm_cuda), as cuda_* lines. Timings only; no checks of results (the tests do
// that). Each figure runs for a fixed wall time after a warm-up that is not counted.

#include "cmd/args.h"
#include "cmd/commands.h"
#include "util/clock.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "generator/data/fmnist.h"
#include "generator/gan.h"
#include "kernels/conv.h"
#include "kernels/device.h"
#include "kernels/gemm.h"
#include "kernels/kernels.h"
#include "kernels/rng.h"

#ifdef STEER_CUDA
#include <cuda_runtime_api.h>

#include "generator/gan_cuda.h"
#include "generator/sagan_cuda.h"
#include "kernels/cuda/cuda_ops.h"
#endif

typedef struct {
    const char *config, *ckpt;
    double seconds; // wall time of each figure
    int batch;      // the training figure's batch (the GPU's generation too; --ckpt's)
    Device device;
    int tf32;       // GPU only: TF32 tensor-core math for cuBLAS and cuDNN
    int bf16;       // BF16 convolutions: on the CPU extra bf16_* figures, on the GPU all of them
} BenchOptions;

// Effective FLOPs of one trained image. Per image: G forward twice and backward once (2 units),
// D forward on real and fake plus G step (3), D backward with weight gradients on 2 (2 x 2 units)
// and data only on 1. The GPU figures use the same count, so CPU and GPU GFLOP/s compare.
static double train_flops_per_image(const SaganConfig *cfg) {
    return 2.0 * (4 * generator_macs(cfg) + 8 * discriminator_macs(cfg));
}

// Fashion-MNIST's test set, from $STEER_FMNIST_DIR when set (scripts/gpu_check.sh carries the
// files to machines without Debian's package, as the CUDA tests read them), else Debian's folder.
static int bench_data_load(Dataset *d, char *err, size_t len) {
    const char *dir = getenv("STEER_FMNIST_DIR");
    return fmnist_load(d, dir && *dir ? dir : FMNIST_DIR, 0, err, len);
}

// --- the CPU -------------------------------------------------------------------------------------

// SGEMM peak: square products of a size where oneDNN runs near its best.
static double sgemm_gflops(double seconds) {
    enum { N = 1536 };
    float *a = aligned_alloc(64, sizeof(float) * N * N), *b = aligned_alloc(64, sizeof(float) * N * N),
          *c = aligned_alloc(64, sizeof(float) * N * N);
    if (!a || !b || !c) return 0;
    for (long i = 0; i < (long)N * N; i++) a[i] = b[i] = (float)(i % 7) * 0.1f, c[i] = 0;
    gemm(0, 0, N, N, N, 1.0f, a, N, b, N, 0.0f, c, N);
    long reps = 0;
    double t0 = clock_now_s(), t;
    do {
        gemm(0, 0, N, N, N, 1.0f, a, N, b, N, 0.0f, c, N);
        reps++;
    } while ((t = clock_now_s() - t0) < seconds);
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
    double t0 = clock_now_s(), t;
    do {
        if (generator_forward(g, z, c->n_classes ? y : NULL, B)) return 0;
        reps++;
    } while ((t = clock_now_s() - t0) < seconds);
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

// Training images/s of t over `seconds` after 3 untimed steps; 0 when a step failed.
static double train_images_per_s(GanTrainer *t, const Dataset *data, double seconds) {
    for (int i = 0; i < 3; i++)
        if (gan_step(t, data)) return 0;
    long reps = 0;
    double t0 = clock_now_s(), el;
    do {
        if (gan_step(t, data)) return 0;
        reps++;
    } while ((el = clock_now_s() - t0) < seconds);
    return (double)reps * t->hp.batch / el;
}

// The BF16 lines (--bf16): training and generation with the convolutions in BF16
// (conv2d_bf16_set) against FP32 on the same trainer and generator, the two modes alternated in
// BF16_ROUNDS rounds of `seconds` / BF16_ROUNDS each (this machine's speed drifts; alternating
// keeps the ratio fair), then each mode's mean rate and their ratios.
enum { BF16_ROUNDS = 4 };

static int bench_cpu_bf16(GanTrainer *t, const Dataset *data, Generator *g, double seconds) {
    char why[200];
    if (conv2d_bf16_set(1, why, sizeof why)) {
        printf("bf16_supported 0\n");
        fprintf(stderr, "steer bench: --bf16: not measured: %s\n", why);
        return 0;
    }
    printf("bf16_supported 1\n");
    double rate[2][3] = {{0}}, slot = seconds / BF16_ROUNDS; // [bf16][train, gen b1, gen b64]
    for (int r = 0; r < BF16_ROUNDS; r++)
        for (int m = 0; m < 2; m++) {
            conv2d_bf16_set(m, NULL, 0);
            double train = train_images_per_s(t, data, slot);
            if (!(train > 0)) {
                conv2d_bf16_set(0, NULL, 0);
                return 1;
            }
            rate[m][0] += train / BF16_ROUNDS;
            rate[m][1] += gen_images_per_s(g, 1, slot) / BF16_ROUNDS;
            rate[m][2] += gen_images_per_s(g, 64, slot) / BF16_ROUNDS;
        }
    conv2d_bf16_set(0, NULL, 0);
    static const char *const fig[3] = {"train", "gen_b1", "gen_b64"};
    for (int f = 0; f < 3; f++)
        printf("bf16_%s_images_per_s %.1f\n", fig[f], rate[1][f]);
    for (int f = 0; f < 3; f++)
        printf("ratio_bf16_vs_fp32_%s %.2f   (FP32 alternated: %.1f)\n", fig[f],
               rate[1][f] / rate[0][f], rate[0][f]);
    return 0;
}

static int bench_cpu(const SaganConfig *cfg, const BenchOptions *o) {
    char err[1024];
    Dataset data = {0};
    if (bench_data_load(&data, err, sizeof err)) {
        fprintf(stderr, "steer bench: %s\n", err);
        return 1;
    }
    double train_flops = train_flops_per_image(cfg), gmacs = generator_macs(cfg);
    double peak = sgemm_gflops(o->seconds / 2);
    printf("sgemm_gflops %.1f\n", peak);
    fflush(stdout);

    GanHparams hp;
    gan_hparams_default(&hp);
    hp.batch = o->batch;
    GanTrainer t;
    int status = 1;
    if (gan_init(&t, cfg, &hp, 1)) {
        fprintf(stderr, "steer bench: out of memory\n");
        goto done;
    }
    double train_ips = train_images_per_s(&t, &data, o->seconds);
    if (!(train_ips > 0)) goto step_failed;
    printf("train_images_per_s %.1f\n", train_ips);
    printf("train_gflops %.1f\n", train_ips * train_flops / 1e9);
    printf("train_fraction_of_sgemm %.3f\n", train_ips * train_flops / 1e9 / peak);
    fflush(stdout);

    Generator g;
    if (generator_init(&g, cfg, 64, 1)) {
        fprintf(stderr, "steer bench: out of memory\n");
        gan_free(&t);
        goto done;
    }
    // Serve-like weights: the trained G's effective weights are what sampling uses.
    memcpy(g.ps.params, t.G.ps.params, sizeof(float) * g.ps.total);
    paramset_sn_forward(&g.ps, 0);
    double b1 = gen_images_per_s(&g, 1, o->seconds), b64 = gen_images_per_s(&g, 64, o->seconds);
    printf("gen_b1_images_per_s %.1f\n", b1);
    printf("gen_b1_gflops %.1f\n", b1 * 2 * gmacs / 1e9);
    printf("gen_b64_images_per_s %.1f\n", b64);
    printf("gen_b64_gflops %.1f\n", b64 * 2 * gmacs / 1e9);
    printf("gen_b64_fraction_of_sgemm %.3f\n", b64 * 2 * gmacs / 1e9 / peak);
    fflush(stdout);
    if (o->bf16 && bench_cpu_bf16(&t, &data, &g, o->seconds)) {
        generator_free(&g);
        goto step_failed;
    }
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

// --- the GPU (CUDA build) ------------------------------------------------------------------------
#ifdef STEER_CUDA

#define CUDA_OK(x) ((x) == cudaSuccess ? 0 : KERNELS_ECUDA)

// Before a stream of ours is destroyed: waits for it and drops its cached cuBLAS/cuDNN handles
// and workspace (cuda_stream_forget). A no-op for a NULL stream.
static void cuda_stream_retire(cudaStream_t st) {
    if (st) cuda_stream_forget(st);
}

// The device's SGEMM peak through gemm_cuda (cuBLAS) in the math mode the TF32 switch sets now:
// square products of N = 8192 (1.1 TFLOP each, tens of milliseconds in FP32), where cuBLAS runs
// near its best, on random operands (zeros run faster than real data: the lent machines' method
// notes saw 13% on an H200), in groups of 4 with a synchronize before the clock is read. Returns
// GFLOP/s, or 0 when the GPU refuses (no memory, a failed call).
static double cuda_sgemm_gflops(double seconds) {
    enum { N = 8192, GROUP = 4 };
    size_t bytes = sizeof(float) * N * N;
    float *host = malloc(bytes), *a = NULL, *b = NULL, *c = NULL;
    cudaStream_t st = NULL;
    double gflops = 0;
    if (!host || cudaMalloc((void **)&a, bytes) != cudaSuccess ||
        cudaMalloc((void **)&b, bytes) != cudaSuccess ||
        cudaMalloc((void **)&c, bytes) != cudaSuccess ||
        cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking) != cudaSuccess)
        goto done;
    Rng r;
    rng_seed(&r, 1);
    for (long i = 0; i < (long)N * N; i++) host[i] = 2 * rng_uniform(&r) - 1;
    if (cudaMemcpy(a, host, bytes, cudaMemcpyHostToDevice) != cudaSuccess ||
        cudaMemcpy(b, host, bytes, cudaMemcpyHostToDevice) != cudaSuccess)
        goto done;
    // Warm-up: the stream's cuBLAS handle is created and the kernel chosen.
    for (int i = 0; i < 2; i++)
        if (gemm_cuda(0, 0, N, N, N, 1.0f, a, N, b, N, 0.0f, c, N, st)) goto done;
    if (cudaStreamSynchronize(st) != cudaSuccess) goto done;
    long reps = 0;
    double t0 = clock_now_s(), el;
    do {
        for (int k = 0; k < GROUP; k++)
            if (gemm_cuda(0, 0, N, N, N, 1.0f, a, N, b, N, 0.0f, c, N, st)) goto done;
        if (cudaStreamSynchronize(st) != cudaSuccess) goto done;
        reps += GROUP;
    } while ((el = clock_now_s() - t0) < seconds);
    gflops = 2.0 * N * N * (double)N * reps / el / 1e9;
done:
    cuda_stream_retire(st);
    if (st) cudaStreamDestroy(st);
    cudaFree(a);
    cudaFree(b);
    cudaFree(c);
    free(host);
    return gflops;
}

// Images/s of gan_cuda_step, the whole D+G iteration, at t's batch: 3 warm-up steps (the first
// creates the handles and times cuDNN's algorithms for each shape), then steps for `seconds` of
// wall time. gan_cuda_step waits for the GPU at its end (its losses come back to the host); the
// synchronize before each clock read keeps the figure honest should that change. On success the
// trained state is downloaded into t (the generation figure uses its G). Returns 0, or a
// KERNELS_E* code with a message in err.
static int cuda_train_rate(GanTrainer *t, const Dataset *data, double seconds, double *ips,
                           char *err, size_t len) {
    GanCuda gc;
    int rc = gan_cuda_init(&gc, t, err, len);
    if (rc) goto done;
    for (int i = 0; i < 3 && !rc; i++) rc = gan_cuda_step(&gc, t, data);
    if (!rc) rc = CUDA_OK(cudaStreamSynchronize(gc.stream));
    long reps = 0;
    double t0 = clock_now_s(), el = 0;
    while (!rc) {
        rc = gan_cuda_step(&gc, t, data);
        if (!rc) rc = CUDA_OK(cudaStreamSynchronize(gc.stream));
        reps++;
        if ((el = clock_now_s() - t0) >= seconds) break;
    }
    if (rc) {
        snprintf(err, len, "a GPU training step failed: %s", kernels_strerror(rc));
        goto done;
    }
    *ips = (double)reps * gc.B / el;
    if ((rc = gan_cuda_download(&gc, t)))
        snprintf(err, len, "downloading the trained state failed: %s", kernels_strerror(rc));
done:
    cuda_stream_retire(gc.stream);
    gan_cuda_free(&gc);
    return rc;
}

// Images/s of generator_cuda_forward (serving's G forward) at batch B, with g's effective
// weights: 3 warm-up forwards, then forwards for `seconds`. Each forward waits for the GPU (its
// images are copied back to the host, as serving's are). Returns 0 or a KERNELS_E* code with a
// message in err.
static int cuda_gen_rate(const Generator *g, int B, double seconds, double *ips, char *err,
                         size_t len) {
    const SaganConfig *c = &g->cfg;
    GeneratorCuda gc;
    memset(&gc, 0, sizeof gc);
    float *z = malloc(sizeof(float) * B * c->z_dim);
    float *img = malloc(sizeof(float) * B * c->channels * c->img * c->img);
    int32_t *y = calloc(B, sizeof(int32_t));
    int rc = KERNELS_ENOMEM;
    if (!z || !img || !y) {
        snprintf(err, len, "out of memory");
        goto done;
    }
    gan_sample_latents(c, 1, B, -1, z, y);
    const int32_t *labels = c->n_classes ? y : NULL;
    if ((rc = generator_cuda_init(&gc, g, B, err, len))) goto done;
    for (int i = 0; i < 3 && !rc; i++) rc = generator_cuda_forward(&gc, z, labels, B, img);
    long reps = 0;
    double t0 = clock_now_s(), el = 0;
    while (!rc) {
        rc = generator_cuda_forward(&gc, z, labels, B, img);
        if (!rc) rc = CUDA_OK(cudaStreamSynchronize(gc.sp.gc.stream));
        reps++;
        if ((el = clock_now_s() - t0) >= seconds) break;
    }
    if (rc)
        snprintf(err, len, "a GPU forward failed: %s", kernels_strerror(rc));
    else
        *ips = (double)reps * B / el;
done:
    cuda_stream_retire(gc.sp.gc.stream);
    generator_cuda_free(&gc);
    free(z);
    free(img);
    free(y);
    return rc;
}

// Made-up images in [-1, 1] of cfg's shape, with labels, for the GPU figure where the dataset is
// missing (the lent GPU machines have no Debian package) or of another shape: a step's speed does
// not depend on the pixels. Returns 0 or -1 (out of memory).
static int bench_data_random(Dataset *d, const SaganConfig *cfg) {
    enum { N = 1024 }; // the step draws its batch with replacement, so any count serves
    long img = (long)cfg->channels * cfg->img * cfg->img;
    *d = (Dataset){.n = N, .c = cfg->channels, .h = cfg->img, .w = cfg->img,
                   .n_classes = cfg->n_classes ? cfg->n_classes : FMNIST_CLASSES};
    d->images = malloc(sizeof(float) * N * img);
    d->labels = malloc(sizeof(int32_t) * N);
    if (!d->images || !d->labels) {
        dataset_free(d);
        return -1;
    }
    Rng r;
    rng_seed(&r, 2);
    for (long i = 0; i < N * img; i++) d->images[i] = 2 * rng_uniform(&r) - 1;
    for (int i = 0; i < N; i++) d->labels[i] = i % d->n_classes;
    return 0;
}

// The training figure's real images on the GPU: Fashion-MNIST as on the CPU when it is there and
// of cfg's shape, else made-up ones, said on stderr. Returns 0 or -1 (out of memory).
static int bench_cuda_data(Dataset *d, const SaganConfig *cfg) {
    char err[1024];
    if (bench_data_load(d, err, sizeof err)) {
        fprintf(stderr, "steer bench: training on random images (%s)\n", err);
        return bench_data_random(d, cfg);
    }
    if (d->c != cfg->channels || d->h != cfg->img || d->w != cfg->img) {
        fprintf(stderr,
                "steer bench: training on random images (Fashion-MNIST is not %s's shape)\n",
                cfg->name);
        dataset_free(d);
        return bench_data_random(d, cfg);
    }
    return 0;
}

// Training images/s, its effective GFLOP/s and fraction of the peak, then G forward's, at B.
static int bench_cuda_figures(const SaganConfig *cfg, const Dataset *data, int B, double seconds,
                              double peak) {
    GanHparams hp;
    gan_hparams_default(&hp);
    hp.batch = B;
    GanTrainer t;
    if (gan_init(&t, cfg, &hp, 1)) {
        fprintf(stderr, "steer bench: out of memory\n");
        return 1;
    }
    char err[1024];
    double ips = 0, train_flops = train_flops_per_image(cfg), gen_flops = 2 * generator_macs(cfg);
    if (cuda_train_rate(&t, data, seconds, &ips, err, sizeof err)) {
        fprintf(stderr, "steer bench: %s\n", err);
        gan_free(&t);
        return 1;
    }
    printf("cuda_train_b%d_images_per_s %.1f\n", B, ips);
    printf("cuda_train_b%d_gflops %.1f\n", B, ips * train_flops / 1e9);
    printf("cuda_train_b%d_peak_fraction %.4f\n", B, ips * train_flops / 1e9 / peak);
    fflush(stdout);

    Generator g;
    if (generator_init(&g, cfg, B, 1)) {
        fprintf(stderr, "steer bench: out of memory\n");
        gan_free(&t);
        return 1;
    }
    // Serve-like weights, as on the CPU: the trained G's effective weights.
    memcpy(g.ps.params, t.G.ps.params, sizeof(float) * g.ps.total);
    paramset_sn_forward(&g.ps, 0);
    gan_free(&t);
    int rc = cuda_gen_rate(&g, B, seconds, &ips, err, sizeof err);
    generator_free(&g);
    if (rc) {
        fprintf(stderr, "steer bench: %s\n", err);
        return 1;
    }
    printf("cuda_gen_b%d_images_per_s %.1f\n", B, ips);
    printf("cuda_gen_b%d_gflops %.1f\n", B, ips * gen_flops / 1e9);
    printf("cuda_gen_b%d_peak_fraction %.4f\n", B, ips * gen_flops / 1e9 / peak);
    return 0;
}

// The GPU's lines: the device, the math mode, the SGEMM peak (FP32; TF32 too with --tf32, which
// then is the peak the fractions are of), then the training and generation figures.
static int bench_cuda(const SaganConfig *cfg, const BenchOptions *o, const char *device) {
    printf("cuda_device %s\n", device);
    printf("cuda_tf32 %d\n", o->tf32);
    printf("cuda_bf16 %d\n", o->bf16);
    fflush(stdout);
    cuda_tf32_set(0);
    cuda_bf16_set(o->bf16); // the convolutions only: the SGEMM peak is cuBLAS's
    double peak = cuda_sgemm_gflops(o->seconds / 2);
    printf("cuda_sgemm_peak_gflops %.1f\n", peak);
    if (o->tf32) {
        cuda_tf32_set(1);
        peak = cuda_sgemm_gflops(o->seconds / 2);
        printf("cuda_sgemm_tf32_peak_gflops %.1f\n", peak);
    }
    fflush(stdout);
    if (!(peak > 0)) {
        fprintf(stderr, "steer bench: the SGEMM on the GPU failed (out of device memory?)\n");
        return 1;
    }
    Dataset data = {0};
    if (bench_cuda_data(&data, cfg)) {
        fprintf(stderr, "steer bench: out of memory\n");
        return 1;
    }
    int status = bench_cuda_figures(cfg, &data, o->batch, o->seconds, peak);
    dataset_free(&data);
    return status;
}

// --ckpt on the GPU: the checkpoint's G forward at one batch size (cuda_ckpt_gen_images_per_s).
static int bench_ckpt_cuda(const BenchOptions *o, const char *device) {
    Generator g;
    char err[1024];
    if (generator_load(&g, o->ckpt, o->batch, err, sizeof err)) {
        fprintf(stderr, "steer bench: %s\n", err);
        return 1;
    }
    printf("cuda_device %s\ncuda_tf32 %d\ncuda_bf16 %d\n", device, o->tf32, o->bf16);
    cuda_tf32_set(o->tf32);
    cuda_bf16_set(o->bf16);
    double ips = 0;
    int rc = cuda_gen_rate(&g, o->batch, o->seconds, &ips, err, sizeof err);
    generator_free(&g);
    if (rc) {
        fprintf(stderr, "steer bench: %s\n", err);
        return 1;
    }
    printf("cuda_ckpt_gen_batch %d\ncuda_ckpt_gen_images_per_s %.1f\n", o->batch, ips);
    return 0;
}

#endif // STEER_CUDA

// --- the command ---------------------------------------------------------------------------------

static void bench_usage(void) {
    printf("usage: steer bench [--config fmnist32] [--batch 64] [--seconds 5] [--device D]\n"
           "                   [--tf32] [--bf16]\n"
           "       steer bench --ckpt PATH [--batch 64] [--seconds 5] [--device D] [--tf32]\n"
           "Prints `name value` lines: training images/s (a whole D+G iteration at --batch) and\n"
           "generation images/s, their effective GFLOP/s and the SGEMM peak of this machine\n"
           "through oneDNN. With --ckpt, only the bare generator forward of that checkpoint at\n"
           "one batch size (ckpt_gen_images_per_s), the figure the server benchmark compares\n"
           "against.\n"
           "  --device D   cpu (default); cuda: the GPU's figures as cuda_* lines (training and\n"
           "               G forward at --batch, cuBLAS's SGEMM peak and the fraction of it\n"
           "               reached); fails when this is not a CUDA build (make CUDA=1) or no GPU\n"
           "               is usable; auto: the GPU when usable, else the CPU, saying why\n"
           "  --tf32       on the GPU, TF32 tensor-core math for cuBLAS and cuDNN (default FP32);\n"
           "               the peak is then measured both ways\n"
           "  --bf16       on the CPU, the training and generation figures once more with BF16\n"
           "               convolutions (bf16_* lines and their ratios to FP32), where the CPU\n"
           "               has BF16 instructions (else bf16_supported 0 and why); on the GPU,\n"
           "               the figures with cuDNN's BF16 convolutions\n");
}

// Parses argv into o. Returns 0, 2 for a usage error (said on stderr), or -1 after --help.
static int bench_parse(int argc, char **argv, BenchOptions *o) {
    *o = (BenchOptions){.config = "fmnist32", .seconds = 5, .batch = 64, .device = DEVICE_CPU};
    static const struct option opts[] = {
        {"config", 1, 0, 'c'}, {"seconds", 1, 0, 's'}, {"ckpt", 1, 0, 'k'}, {"batch", 1, 0, 'b'},
        {"device", 1, 0, 'V'}, {"tf32", 0, 0, 'T'},    {"help", 0, 0, 'h'}, {"bf16", 0, 0, 'B'},
        {0, 0, 0, 0}};
    optind = 1;
    int opt;
    long batch;
    while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (opt) {
        case 'c': o->config = optarg; break;
        case 's': o->seconds = atof(optarg); break;
        case 'k': o->ckpt = optarg; break;
        case 'b':
            if (args_long("bench", optarg, 1, 4096, "--batch", &batch)) return 2;
            o->batch = (int)batch;
            break;
        case 'V':
            if (device_parse(optarg, &o->device)) {
                fprintf(stderr, "steer bench: --device '%s': expected auto, cpu or cuda\n", optarg);
                return 2;
            }
            break;
        case 'T': o->tf32 = 1; break;
        case 'B': o->bf16 = 1; break;
        case 'h': bench_usage(); return -1;
        default: return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "steer bench: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (!(o->seconds > 0 && o->seconds < 3600)) {
        fprintf(stderr, "steer bench: --seconds must be in (0, 3600)\n");
        return 2;
    }
    if (o->tf32 && o->device == DEVICE_CPU) {
        fprintf(stderr, "steer bench: --tf32 is a GPU setting (--device cuda or auto)\n");
        return 2;
    }
    return 0;
}

// Where the figures are measured: *on_gpu set for the GPU. --device cuda that cannot have the GPU
// fails (returns 1, the reason on stderr): a benchmark asked for the GPU must not quietly report
// the CPU's figures. auto falls back to the CPU, saying why. device (len bytes) names the GPU.
static int bench_device(const BenchOptions *o, int *on_gpu, char *device, size_t len) {
    *on_gpu = 0;
    if (o->device == DEVICE_CPU) return 0;
    Device d = device_choose(o->device, device, len);
    if (d == DEVICE_CUDA) {
        *on_gpu = 1;
        return 0;
    }
    if (o->device == DEVICE_CUDA) {
        fprintf(stderr, "steer bench: --device cuda: %s\n", device);
        return 1;
    }
    fprintf(stderr, "steer bench: --device auto: measuring on the CPU (%s)%s\n", device,
            o->tf32 ? "; --tf32 does not apply there" : "");
    return 0;
}

int cmd_bench(int argc, char **argv) {
    BenchOptions o;
    int rc = bench_parse(argc, argv, &o);
    if (rc) return rc < 0 ? 0 : rc;
    SaganConfig cfg;
    if (!o.ckpt && sagan_config_lookup(&cfg, o.config)) {
        fprintf(stderr, "steer bench: unknown config '%s'\n", o.config);
        return 2;
    }
    char device[300];
    int on_gpu;
    if ((rc = bench_device(&o, &on_gpu, device, sizeof device))) return rc;
#ifdef STEER_CUDA
    if (on_gpu) return o.ckpt ? bench_ckpt_cuda(&o, device) : bench_cuda(&cfg, &o, device);
#endif
    if (o.ckpt && o.bf16) { // --device auto fell back to the CPU
        fprintf(stderr, "steer bench: --bf16 on the CPU is a training/generation figure (no "
                        "--ckpt)\n");
        return 2;
    }
    if (o.ckpt) return bench_ckpt(o.ckpt, o.batch, o.seconds);
    return bench_cpu(&cfg, &o);
}
