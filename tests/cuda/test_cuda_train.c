// test_cuda_train.c — the GPU training step (generator/gan_cuda.c) against gan_step, and the
// layers it added to the CUDA backend (kernels/cuda/model_cuda.cu) against their CPU twins.
//
// The whole step: two trainers built alike (same config, seed and batch 16), one stepped by
// gan_step, the other by gan_cuda_step, on the real Fashion-MNIST test set (tinyc, fmnist32c and
// the unconditional tiny) and on made-up 64x64 colour images (tiny64). tinyc, tiny and tiny64
// start with attention's gamma at 0.5 on both networks (at its initial 0 the block's weights get
// no gradient in the first step); fmnist32c starts as gan_init leaves it. TF32 is off: both sides
// are FP32, with sums in other orders (cuDNN and cuBLAS against oneDNN and our loops).
//
// Why the comparison is per step and norm-wise. Two FP32 implementations of these ReLU networks
// do not stay element-wise close over several steps, however correct: a leaky-ReLU unit whose
// input lies within rounding of 0 takes the other slope on one side, which moves the gradients
// of everything it feeds by up to about 1e-3 of their norm (more for a scalar like gamma, which
// sums over every position), and Adam with beta1 = 0 turns a gradient within rounding of 0 into
// steps of +-lr in opposite directions. Measured with this test on a CPU stand-in for the CUDA
// calls that adds noise to every convolution's and linear layer's output (1e-6 to 3e-5 of the
// tensor's RMS, about what cuDNN's and oneDNN's summation orders give): after 3 steps of free
// running most of G's gradient elements differed by more than 1e-3 relative, and even from one
// shared state some gradients moved by several per cent. So:
//   1. STEPS steps, each started on both sides from the CPU's state (gan_cuda_upload of the CPU
//      trainer, its RNG and step count copied), compared after the step:
//      RNG state, step count, Adam's step count: equal (the draws are made on the host, the same
//        draws in the same order: a difference means a draw was lost or added)
//      losses: 1e-3 + 1e-3 |loss|
//      Adam's m, which with beta1 = 0 is the step's gradient itself (every backward, the SN fold
//        and the forward behind them), per tensor: ||gpu - cpu|| <= 0.1 ||cpu|| + 0.02 ||m of the
//        network|| sqrt(max(n, 64) / N) (n the tensor's elements, N the network's: its share of
//        the network's gradient norm); v likewise with twice those
//      SN u (unit vectors; D's take a second power iteration on weights that already differ by
//        the step): ||gpu - cpu|| <= 1e-2
//      updates (value - value at the step's start): every element within 2 lr s of the CPU's,
//        s = sqrt((1 - beta2^t) / (1 - beta2)) the largest step Adam with beta1 = 0 takes at its
//        step t (so a sign flip passes and nothing bigger does), and at most 10% of a tensor's
//        elements (or 1) apart by more than 0.1 lr: a missing, doubled or mis-scaled update
//        fails that. (A flip counts only where the CPU's gradient element is more than 3 times
//        the RMS of the tensor's m difference from 0: the gradient penalties' difference
//        quotient amplifies rounding by 1 / (2 e), and near-zero gradients, such as D's last
//        biases at initialization, then flip by rounding alone: 6 of 32 in a WGAN-GP run on cuemu
//        whose gradients agreed to 0.4% of the m tolerance.)
//      The stand-in, with noise from 3e-7 relative to 3e-5 of the RMS, passed at up to 0.46 of
//      these tolerances, and failed each of 14 planted bugs (labels of the wrong half-step, a
//      missing power iteration, no SN fold, no embedding or projection gradient, G's learning
//      rate swapped for D's, D's slope 0.2, a lost dgamma, the attention output skipped, dimg not
//      zeroed, Adam's step count frozen, a hinge on the wrong half, the draws reordered).
//   2. STEPS more steps of free running from there: RNG and step count equal, losses within
//      1e-2 + 1e-2 |loss|, every parameter within the sum of the steps' sign-flip bounds.
// Layers: attention forward 1e-4 + 1e-3 per element; backward dx 1e-4 + 1e-3, weight gradients
//   and dgamma 1e-4 sqrt(B N) + 1e-3 (sums over B N terms); embedding and projection 1e-5 +
//   1e-4 against double loops.
//
// The Fashion-MNIST files are read from $STEER_FMNIST_DIR when set (a GPU machine without
// Debian's package: scripts/gpu_check.sh carries them), else from FMNIST_DIR. Without a GPU the
// test prints "ok 1 - test_cuda_train # SKIP skipped: <reason>" and exits 0.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cuda_runtime_api.h>

#include "generator/data/fmnist.h"
#include "generator/gan.h"
#include "generator/gan_cuda.h"
#include "kernels/attention.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/kernels.h"
#include "kernels/rng.h"
#include "generator/distill.h"
#include "generator/finetune.h"
#include "tests/check.h"
#include "tests/cuda/cuda_check.h"
#include "tests/cuda/tune_fixture.h"

#define STEPS 3
#define BATCH 16

static Dataset fmnist;
static Dataset rgb;         // made-up 64x64 colour images for tiny64
static Rng test_rng;
static cudaStream_t stream; // the layer tests'

// --- device helpers -----------------------------------------------------------------------------

// A device copy of bytes of host (zeroes when host is NULL); the caller frees it with cudaFree.
static void *dev_copy(const void *host, size_t bytes) {
    void *d = NULL;
    CUDA_OK(cudaMalloc(&d, bytes ? bytes : 1));
    if (host && bytes) CUDA_OK(cudaMemcpy(d, host, bytes, cudaMemcpyHostToDevice));
    if (!host && bytes) CUDA_OK(cudaMemset(d, 0, bytes));
    return d;
}

// Waits for the layer tests' stream, then compares n floats of dev with want (double).
static int compare_dev(const char *what, const float *dev, const double *want, long n, double atol,
                       double rtol) {
    float *got = CHECK_ALLOC(float, n);
    CUDA_OK(cudaStreamSynchronize(stream));
    CUDA_OK(cudaMemcpy(got, dev, sizeof(float) * (size_t)n, cudaMemcpyDeviceToHost));
    int bad = check_compare_f(what, got, want, n, atol, rtol);
    free(got);
    return bad;
}

// Uniform [lo, hi) floats (n).
static float *fill(long n, double lo, double hi) {
    float *f = CHECK_ALLOC(float, n);
    check_fill_uniform(&test_rng, f, NULL, n, lo, hi);
    return f;
}

// --- the layers ---------------------------------------------------------------------------------

// attention_forward_cuda / attention_backward_cuda against attention.c on the same float inputs.
static int attention_case(int B, int C, int N) {
    int C8 = C / 8, C2 = C / 2;
    long n = (long)B * C * N;
    float ws = 1.0f / sqrtf((float)C);
    float *x = fill(n, -1, 1), *dout = fill(n, -1, 1), *dx0 = fill(n, -1, 1);
    float *wf = fill((long)C8 * C, -ws, ws), *wg = fill((long)C8 * C, -ws, ws);
    float *wh = fill((long)C2 * C, -ws, ws), *wo = fill((long)C * C2, -ws, ws);
    float *dw0 = fill(2L * C8 * C + 2L * C2 * C, -1, 1); // dwf, dwg, dwh, dwo start values
    float gamma = 0.7f, dgamma0 = 0.25f;
    // CPU
    long saved_n = attention_saved_floats(B, C, N);
    float *saved_buf = CHECK_ALLOC(float, saved_n), *out = CHECK_ALLOC(float, n);
    float *scratch = CHECK_ALLOC(float, attention_scratch_floats(B, C, N));
    AttentionSaved s;
    attention_saved_carve(&s, saved_buf, B, C, N);
    assert_int_equal(attention_forward(out, &s, x, wf, wg, wh, wo, gamma, B, C, N), 0);
    float *dx = CHECK_ALLOC(float, n), *dw = CHECK_ALLOC(float, 2L * C8 * C + 2L * C2 * C);
    memcpy(dx, dx0, sizeof(float) * n);
    memcpy(dw, dw0, sizeof(float) * (2L * C8 * C + 2L * C2 * C));
    float dgamma = dgamma0;
    float *dwf = dw, *dwg = dwf + C8 * C, *dwh = dwg + C8 * C, *dwo = dwh + C2 * C;
    assert_int_equal(attention_backward(dx, dwf, dwg, dwh, dwo, &dgamma, dout, &s, x, wf, wg, wh,
                                        wo, gamma, scratch, B, C, N),
                     0);
    // GPU
    float *d_x = dev_copy(x, sizeof(float) * n), *d_dout = dev_copy(dout, sizeof(float) * n);
    float *d_dx = dev_copy(dx0, sizeof(float) * n), *d_out = dev_copy(out, sizeof(float) * n);
    float *d_wf = dev_copy(wf, sizeof(float) * C8 * C);
    float *d_wg = dev_copy(wg, sizeof(float) * C8 * C);
    float *d_wh = dev_copy(wh, sizeof(float) * C2 * C);
    float *d_wo = dev_copy(wo, sizeof(float) * C * C2);
    float *d_dw = dev_copy(dw0, sizeof(float) * (2L * C8 * C + 2L * C2 * C));
    float *d_gamma = dev_copy(&gamma, sizeof(float)), *d_dgamma = dev_copy(&dgamma0, sizeof(float));
    float *d_saved = dev_copy(NULL, sizeof(float) * saved_n);
    float *d_scratch = dev_copy(NULL, sizeof(float) * attention_scratch_floats_cuda(B, C, N));
    AttentionSaved ds;
    attention_saved_carve(&ds, d_saved, B, C, N);
    float *d_dwf = d_dw, *d_dwg = d_dwf + C8 * C, *d_dwh = d_dwg + C8 * C, *d_dwo = d_dwh + C2 * C;
    assert_int_equal(attention_forward_cuda(d_out, &ds, d_x, d_wf, d_wg, d_wh, d_wo, d_gamma, B, C,
                                            N, stream),
                     0);
    assert_int_equal(attention_backward_cuda(d_dx, d_dwf, d_dwg, d_dwh, d_dwo, d_dgamma, d_dout,
                                             &ds, d_x, d_wf, d_wg, d_wh, d_wo, d_gamma, d_scratch,
                                             B, C, N, stream),
                     0);
    char label[96];
    double wtol = 1e-4 * sqrt((double)B * N);
    int bad = 0;
    double *want;
#define CMP(name, dev, host, count, atol)                                                          \
    do {                                                                                           \
        snprintf(label, sizeof label, "attention B=%d C=%d N=%d %s", B, C, N, name);               \
        want = check_to_double(host, count);                                                       \
        bad += compare_dev(label, dev, want, count, atol, 1e-3);                                   \
        free(want);                                                                                \
    } while (0)
    CMP("out", d_out, out, n, 1e-4);
    CMP("attn", ds.attn, s.attn, (long)B * N * N, 1e-4);
    CMP("dx", d_dx, dx, n, 1e-4);
    CMP("dwf", d_dwf, dwf, (long)C8 * C, wtol);
    CMP("dwg", d_dwg, dwg, (long)C8 * C, wtol);
    CMP("dwh", d_dwh, dwh, (long)C2 * C, wtol);
    CMP("dwo", d_dwo, dwo, (long)C * C2, wtol);
    CMP("dgamma", d_dgamma, &dgamma, 1, wtol);
#undef CMP
    void *devs[] = {d_x, d_dout, d_dx, d_out, d_wf, d_wg, d_wh, d_wo, d_dw, d_gamma, d_dgamma,
                    d_saved, d_scratch};
    for (size_t k = 0; k < sizeof devs / sizeof devs[0]; k++) CUDA_OK(cudaFree(devs[k]));
    free(x), free(dout), free(dx0), free(wf), free(wg), free(wh), free(wo), free(dw0);
    free(saved_buf), free(out), free(scratch), free(dx), free(dw);
    return bad;
}

static void test_attention_block(void **state) {
    (void)state;
    int bad = attention_case(3, 16, 64);  // tinyc's D (8x8) shape at a small batch
    bad += attention_case(5, 32, 256);    // fmnist32's 16x16 block
    assert_int_equal(bad, 0);
}

// Embedding and projection, forward and backward, with labels that repeat (rows of the table
// shared by several items), against double loops; the backward buffers start non-zero.
static void test_embedding_projection(void **state) {
    (void)state;
    enum { B = 9, K = 4, D = 37 };
    int32_t labels[B] = {2, 0, 2, 3, 3, 3, 1, 0, 2};
    float *table = fill(K * D, -1, 1), *feat = fill(B * D, -1, 1), *dout = fill(B * D, -1, 1);
    float *dtable0 = fill(K * D, -1, 1), *dfeat0 = fill(B * D, -1, 1), *logits0 = fill(B, -1, 1);
    float *g = fill(B, -1, 1); // the logits' gradient
    int32_t *d_labels = dev_copy(labels, sizeof labels);
    float *d_table = dev_copy(table, sizeof(float) * K * D);
    float *d_feat = dev_copy(feat, sizeof(float) * B * D);
    float *d_dout = dev_copy(dout, sizeof(float) * B * D), *d_g = dev_copy(g, sizeof(float) * B);
    float *d_out = dev_copy(NULL, sizeof(float) * B * D);
    float *d_dtable = dev_copy(dtable0, sizeof(float) * K * D);
    float *d_dfeat = dev_copy(dfeat0, sizeof(float) * B * D);
    float *d_logits = dev_copy(logits0, sizeof(float) * B);
    double want[K * D > B * D ? K * D : B * D];
    int bad = 0;

    assert_int_equal(embedding_forward_cuda(d_out, d_table, d_labels, B, D, stream), 0);
    for (int b = 0; b < B; b++)
        for (int i = 0; i < D; i++) want[b * D + i] = table[labels[b] * D + i];
    bad += compare_dev("embedding forward", d_out, want, B * D, 1e-5, 1e-4);
    assert_int_equal(embedding_backward_cuda(d_dtable, d_dout, d_labels, B, D, stream), 0);
    for (int k = 0; k < K * D; k++) want[k] = dtable0[k];
    for (int b = 0; b < B; b++)
        for (int i = 0; i < D; i++) want[labels[b] * D + i] += dout[b * D + i];
    bad += compare_dev("embedding backward", d_dtable, want, K * D, 1e-5, 1e-4);

    assert_int_equal(projection_forward_cuda(d_logits, d_table, d_labels, d_feat, B, D, stream), 0);
    for (int b = 0; b < B; b++) {
        double s = logits0[b];
        for (int i = 0; i < D; i++) s += (double)table[labels[b] * D + i] * feat[b * D + i];
        want[b] = s;
    }
    bad += compare_dev("projection forward", d_logits, want, B, 1e-5, 1e-4);
    CUDA_OK(cudaMemcpy(d_dtable, dtable0, sizeof(float) * K * D, cudaMemcpyHostToDevice));
    assert_int_equal(projection_backward_cuda(d_dfeat, d_dtable, d_g, d_table, d_labels, d_feat, B,
                                              D, stream),
                     0);
    for (int b = 0; b < B; b++)
        for (int i = 0; i < D; i++)
            want[b * D + i] = dfeat0[b * D + i] + (double)g[b] * table[labels[b] * D + i];
    bad += compare_dev("projection backward dfeat", d_dfeat, want, B * D, 1e-5, 1e-4);
    for (int k = 0; k < K * D; k++) want[k] = dtable0[k];
    for (int b = 0; b < B; b++)
        for (int i = 0; i < D; i++) want[labels[b] * D + i] += (double)g[b] * feat[b * D + i];
    bad += compare_dev("projection backward dtable", d_dtable, want, K * D, 1e-5, 1e-4);
    assert_int_equal(bad, 0);

    void *devs[] = {d_labels, d_table, d_feat, d_dout, d_g, d_out, d_dtable, d_dfeat, d_logits};
    for (size_t k = 0; k < sizeof devs / sizeof devs[0]; k++) CUDA_OK(cudaFree(devs[k]));
    free(table), free(feat), free(dout), free(dtable0), free(dfeat0), free(logits0), free(g);
}

// --- the whole step -----------------------------------------------------------------------------

static int compare_floats(const char *label, const float *got, const float *want, long n,
                          double atol, double rtol) {
    double *w = check_to_double(want, n);
    int bad = check_compare_f(label, got, w, n, atol, rtol);
    free(w);
    return bad;
}

// The two-norm of x (n), in double.
static double norm2(const float *x, long n) {
    double s = 0.0;
    for (long i = 0; i < n; i++) s += (double)x[i] * x[i];
    return sqrt(s);
}

// ||got - want|| <= tol (two-norm over n). Prints the label and the numbers and returns 1 when
// it does not hold (NaN fails too), else 0; *ratio receives ||got - want|| / tol.
static int compare_norm(const char *label, const float *got, const float *want, long n, double tol,
                        double *ratio) {
    double dd = 0.0;
    for (long i = 0; i < n; i++) {
        double d = (double)got[i] - want[i];
        dd += d * d;
    }
    double diff = sqrt(dd);
    *ratio = diff / tol;
    if (diff <= tol) return 0;
    printf("# %s: ||gpu - cpu|| %.3g, ||cpu|| %.3g, tolerance %.3g\n", label, diff,
           norm2(want, n), tol);
    return 1;
}

// The worst of each comparison over a network's tensors (error over tolerance), for the log.
typedef struct {
    double m, v, u;
    char m_name[PARAMS_NAME_MAX];
    long flips, n;
} StepErrors;

// Tolerances of the one-step comparison (see the file's opening comment).
#define M_RTOL 0.1
#define M_SHARE 0.02
#define U_ATOL 1e-2
#define FLIP_FRACTION 0.1
#define SHARE_MIN 64

// Largest step Adam with beta1 = 0 can take at its step t, in units of lr:
// |g| / sqrt((1 - beta2) g^2 / (1 - beta2^t)).
static double adam_max_step(float beta2, long t) {
    return sqrt((1.0 - pow(beta2, (double)t)) / (1.0 - beta2));
}

// One network after one step that both sides started from the same state; before holds the
// parameters at the step's start.
static int compare_net_step(const char *what, const ParamSet *gpu, const ParamSet *cpu,
                            const float *before, float lr, float beta2, StepErrors *e) {
    int bad = 0;
    char label[160];
    double ratio, flip = 2.0 * lr * adam_max_step(beta2, cpu->adam_t) * 1.01 + 1e-7;
    double m_net = norm2(cpu->m, cpu->total), v_net = norm2(cpu->v, cpu->total);
    long n_net = 0;
    for (int i = 0; i < cpu->n; i++) n_net += cpu->p[i].numel;
    memset(e, 0, sizeof *e);
    if (gpu->adam_t != cpu->adam_t) {
        printf("# %s: Adam step %ld, want %ld\n", what, gpu->adam_t, cpu->adam_t);
        bad++;
    }
    for (int i = 0; i < cpu->n; i++) {
        const Param *p = &cpu->p[i];
        long o = p->offset, n = p->numel;
        double share = sqrt((double)(n > SHARE_MIN ? n : SHARE_MIN) / (double)n_net);
        snprintf(label, sizeof label, "%s %s Adam m (the gradient)", what, p->name);
        bad += compare_norm(label, gpu->m + o, cpu->m + o, n,
                            M_RTOL * norm2(cpu->m + o, n) + M_SHARE * m_net * share + 1e-12,
                            &ratio);
        if (ratio > e->m) e->m = ratio, snprintf(e->m_name, sizeof e->m_name, "%s", p->name);
        snprintf(label, sizeof label, "%s %s Adam v", what, p->name);
        bad += compare_norm(label, gpu->v + o, cpu->v + o, n,
                            2 * M_RTOL * norm2(cpu->v + o, n) + 2 * M_SHARE * v_net * share +
                                1e-20,
                            &ratio);
        if (ratio > e->v) e->v = ratio;
        if (p->sn) {
            snprintf(label, sizeof label, "%s %s SN u", what, p->name);
            bad += compare_norm(label, gpu->sn_u + p->u_offset, cpu->sn_u + p->u_offset, p->rows,
                                U_ATOL, &ratio);
            if (ratio > e->u) e->u = ratio;
        }
        // a sign flip counts where the gradient stands out of this tensor's measured noise (the
        // RMS of the m difference, which the norm check above bounds): with a penalty's
        // finite-difference rounding amplified by 1 / (2 e), a bias whose gradient is within
        // that noise of 0 (D's last biases at initialization) flips by rounding alone
        double noise2 = 0.0;
        for (long k = 0; k < n; k++) {
            double dm = (double)gpu->m[o + k] - cpu->m[o + k];
            noise2 += dm * dm;
        }
        double noise = 3.0 * sqrt(noise2 / (double)n);
        long flips = 0, beyond = 0;
        for (long k = 0; k < n; k++) {
            double d = fabs(((double)gpu->params[o + k] - before[o + k]) -
                            ((double)cpu->params[o + k] - before[o + k]));
            if (!(d <= flip) && beyond++ < CHECK_WORST)
                printf("# %s %s [%ld]: value %.7g, want %.7g (from %.7g; beyond the bound %.3g)\n",
                       what, p->name, k, gpu->params[o + k], cpu->params[o + k], before[o + k],
                       flip);
            flips += d > 0.1 * lr && fabs((double)cpu->m[o + k]) > noise;
        }
        if (beyond) {
            printf("# %s %s: %ld of %ld updates beyond the bound\n", what, p->name, beyond, n);
            bad++;
        }
        e->flips += flips;
        e->n += n;
        if (flips > 1 && flips > FLIP_FRACTION * n) {
            printf("# %s %s: %ld of %ld updates differ by more than 0.1 lr\n", what, p->name,
                   flips, n);
            bad++;
        }
    }
    return bad;
}

static int close_to(float got, float want, double atol, double rtol) {
    return fabs((double)got - want) <= atol + rtol * fabs((double)want);
}

static int compare_losses(const char *what, const GanTrainer *gpu, const GanTrainer *cpu,
                          double atol, double rtol) {
    int bad = 0;
    if (!close_to(gpu->loss_d, cpu->loss_d, atol, rtol) ||
        !close_to(gpu->loss_g, cpu->loss_g, atol, rtol) ||
        !close_to(gpu->penalty_d, cpu->penalty_d, atol, rtol) ||
        !close_to(gpu->reg_g, cpu->reg_g, atol, rtol)) {
        printf("# %s: losses D %.7g G %.7g, penalty %.7g, G's regularizers %.7g; want D %.7g G "
               "%.7g, %.7g, %.7g\n",
               what, gpu->loss_d, gpu->loss_g, gpu->penalty_d, gpu->reg_g, cpu->loss_d, cpu->loss_g,
               cpu->penalty_d, cpu->reg_g);
        bad++;
    }
    if (gpu->D.dropout_seed != cpu->D.dropout_seed) {
        printf("# %s: D's dropout seeds differ (a mask drawn more or less often)\n", what);
        bad++;
    }
    if (memcmp(&gpu->rng, &cpu->rng, sizeof gpu->rng)) {
        printf("# %s: the RNG states differ (a draw was lost or added)\n", what);
        bad++;
    }
    if (gpu->step != cpu->step) {
        printf("# %s: step %ld, want %ld\n", what, gpu->step, cpu->step);
        bad++;
    }
    return bad;
}

// Sets attention's gamma of a network (a raw, non-SN scalar) to v.
static void set_gamma(ParamSet *ps, int p_gamma, float v) {
    if (p_gamma >= 0) ps->params[ps->p[p_gamma].offset] = v;
}

// Which step a comparison runs: gan_step / gan_cuda_step, or a job's own step on both sides
// (finetune_step / finetune_device_step, distill_step / distill_device_step; the GPU side's
// TrainDevice and job state in tune).
typedef enum { STEP_GAN, STEP_FINETUNE, STEP_DISTILL } StepKind;

typedef struct {
    TrainDevice td;
    FinetuneReward *r;
    FinetuneDevice fd;
    const float *theta0;
    Distiller *dist;
    DistillDevice dd;
    double cpu_out[2], gpu_out[2]; // finetune: the reward; distill: pixel and feature losses
} Tune;

// One step of kind on both sides, on data.
static void step_both(StepKind kind, GanCuda *gc, Tune *tu, GanTrainer *gpu, GanTrainer *cpu,
                      const Dataset *data) {
    double *c = tu ? tu->cpu_out : NULL, *g = tu ? tu->gpu_out : NULL;
    if (kind == STEP_GAN) {
        assert_int_equal(gan_step(cpu, data), 0);
        assert_int_equal(gan_cuda_step(gc, gpu, data), 0);
    } else if (kind == STEP_FINETUNE) {
        assert_int_equal(finetune_step(cpu, tu->r, &tu->fd.c, tu->theta0, data, c), 0);
        assert_int_equal(finetune_device_step(&tu->fd, &tu->td, gpu, tu->theta0, data, g), 0);
    } else {
        assert_int_equal(distill_step(cpu, tu->dist, &tu->dd.c, data, c, c + 1), 0);
        assert_int_equal(distill_device_step(&tu->dd, &tu->td, gpu, data, g, g + 1), 0);
    }
}

// STEPS steps of kind, each started on the GPU from the CPU's state (its RNG, step count, EMA
// state and dropout seed copied, its training state uploaded), compared after the step: the
// losses, both networks (compare_net_step), G's EMA when on, and a job's own outputs (reward, or
// pixel and feature losses) within 1e-4 + 1e-3 relative. Returns the number of failures.
static int steps_from_cpu_state(const char *name, StepKind kind, GanCuda *gc, Tune *tu,
                                GanTrainer *gpu, GanTrainer *cpu, const Dataset *data) {
    const GanHparams *hp = &cpu->hp;
    float *g0 = CHECK_ALLOC(float, cpu->G.ps.total), *d0 = CHECK_ALLOC(float, cpu->D.ps.total);
    char what[96];
    int bad = 0;
    for (int s = 1; s <= STEPS; s++) {
        gpu->rng = cpu->rng;
        gpu->step = cpu->step;
        gpu->ema_live = cpu->ema_live;
        gpu->D.dropout_seed = cpu->D.dropout_seed;
        gpu->reg_g = cpu->reg_g; // (the jobs' steps leave it as it was)
        assert_int_equal(gan_cuda_upload(gc, cpu), 0);
        memcpy(g0, cpu->G.ps.params, sizeof(float) * cpu->G.ps.total);
        memcpy(d0, cpu->D.ps.params, sizeof(float) * cpu->D.ps.total);
        step_both(kind, gc, tu, gpu, cpu, data);
        assert_int_equal(gan_cuda_download(gc, gpu), 0);
        snprintf(what, sizeof what, "%s step %d", name, s);
        bad += compare_losses(what, gpu, cpu, 1e-3, 1e-3);
        for (int k = 0; tu && k < (kind == STEP_DISTILL ? 2 : 1); k++)
            if (!(fabs(tu->gpu_out[k] - tu->cpu_out[k]) <= 1e-4 + 1e-3 * fabs(tu->cpu_out[k]))) {
                printf("# %s: %s %.7g, want %.7g\n", what,
                       kind == STEP_FINETUNE ? "reward" : k ? "feature loss" : "pixel loss",
                       tu->gpu_out[k], tu->cpu_out[k]);
                bad++;
            }
        StepErrors eg, ed;
        snprintf(what, sizeof what, "%s step %d G", name, s);
        bad += compare_net_step(what, &gpu->G.ps, &cpu->G.ps, g0, hp->lr_g, hp->beta2, &eg);
        snprintf(what, sizeof what, "%s step %d D", name, s);
        bad += compare_net_step(what, &gpu->D.ps, &cpu->D.ps, d0, hp->lr_d, hp->beta2, &ed);
        if (hp->ema_decay > 0.0f) { // one step's worth of difference at most, as G's parameters
            snprintf(what, sizeof what, "%s step %d G's EMA", name, s);
            bad += compare_floats(what, gpu->ema, cpu->ema, cpu->G.ps.total,
                                  2.0 * hp->lr_g * adam_max_step(hp->beta2, cpu->G.ps.adam_t) +
                                      1e-6,
                                  0.0);
        }
        printf("# %s step %d from the same state: loss_d %.7f (CPU %.7f), loss_g %.7f (CPU %.7f)",
               name, s, gpu->loss_d, cpu->loss_d, gpu->loss_g, cpu->loss_g);
        for (int k = 0; tu && k < (kind == STEP_DISTILL ? 2 : 1); k++)
            printf(", %s %.7f (CPU %.7f)",
                   kind == STEP_FINETUNE ? "reward" : k ? "feature loss" : "pixel loss",
                   tu->gpu_out[k], tu->cpu_out[k]);
        printf("\n");
        StepErrors *e[2] = {&eg, &ed};
        for (int k = 0; k < 2; k++)
            printf("#   %s: error / tolerance at worst: m %.2g (%s), v %.2g, u %.2g; %ld of %ld "
                   "updates differ by > 0.1 lr\n",
                   k ? "D" : "G", e[k]->m, e[k]->m_name, e[k]->v, e[k]->u, e[k]->flips, e[k]->n);
    }
    free(g0);
    free(d0);
    return bad;
}

// The whole-step comparison of one config. First STEPS steps that each start both sides from
// the CPU's state (gan_cuda_upload of the CPU trainer, its RNG and step count copied): one step
// of difference each, compared tightly. Then STEPS steps of free running from there, each side on
// its own state: differences compound there (a LReLU unit that sits within rounding of its kink
// takes the other slope on one side, which moves the gradients by about 1e-3 of their norm, and
// Adam turns that into different steps for the near-zero gradients), so only the RNG, the step
// count, losses within 1e-2 + 1e-2 |loss| and every parameter within the sign-flip bound of all
// the steps are checked: the device state carried from step to step stays sane.
// hp: the run's switches (hparams() and changes; with G's EMA on, it is compared too).
static void train_case(const char *name, const Dataset *data, float gamma, GanHparams hp) {
    SaganConfig cfg;
    assert_int_equal(sagan_config_lookup(&cfg, name), 0);
    float ema = hp.ema_decay;
    GanTrainer cpu, gpu;
    assert_int_equal(gan_init(&cpu, &cfg, &hp, 7), 0);
    assert_int_equal(gan_init(&gpu, &cfg, &hp, 7), 0);
    GanTrainer *both[2] = {&cpu, &gpu};
    for (int k = 0; k < 2; k++) {
        set_gamma(&both[k]->G.ps, both[k]->G.p_gamma, gamma);
        set_gamma(&both[k]->D.ps, both[k]->D.p_gamma, gamma);
    }
    GanCuda gc;
    char err[512], what[96];
    if (gan_cuda_init(&gc, &gpu, err, sizeof err)) fail_msg("%s: %s", name, err);
    int bad = steps_from_cpu_state(name, STEP_GAN, &gc, NULL, &gpu, &cpu, data);
    // free running
    gpu.rng = cpu.rng;
    gpu.step = cpu.step;
    gpu.ema_live = cpu.ema_live;
    gpu.D.dropout_seed = cpu.D.dropout_seed;
    assert_int_equal(gan_cuda_upload(&gc, &cpu), 0);
    double bound_g = 0.0, bound_d = 0.0;
    for (int s = 1; s <= STEPS; s++) {
        assert_int_equal(gan_step(&cpu, data), 0);
        assert_int_equal(gan_cuda_step(&gc, &gpu, data), 0);
        bound_g += 2.0 * hp.lr_g * adam_max_step(hp.beta2, cpu.G.ps.adam_t);
        bound_d += 2.0 * hp.lr_d * adam_max_step(hp.beta2, cpu.D.ps.adam_t);
        snprintf(what, sizeof what, "%s free-running step %d", name, s);
        bad += compare_losses(what, &gpu, &cpu, 1e-2, 1e-2);
        printf("# %s: loss_d %.7f (CPU %.7f), loss_g %.7f (CPU %.7f)\n", what, gpu.loss_d,
               cpu.loss_d, gpu.loss_g, cpu.loss_g);
    }
    assert_int_equal(gan_cuda_download(&gc, &gpu), 0);
    snprintf(what, sizeof what, "%s after %d free-running steps: G", name, STEPS);
    bad += compare_floats(what, gpu.G.ps.params, cpu.G.ps.params, cpu.G.ps.total,
                          bound_g * 1.01 + 1e-6, 0.0);
    snprintf(what, sizeof what, "%s after %d free-running steps: D", name, STEPS);
    bad += compare_floats(what, gpu.D.ps.params, cpu.D.ps.params, cpu.D.ps.total,
                          bound_d * 1.01 + 1e-6, 0.0);
    if (ema > 0.0f) { // a weighted mean of G's past parameters: within G's bound
        snprintf(what, sizeof what, "%s after %d free-running steps: G's EMA", name, STEPS);
        bad += compare_floats(what, gpu.ema, cpu.ema, cpu.G.ps.total, bound_g * 1.01 + 1e-6, 0.0);
    }
    gan_cuda_free(&gc);
    gan_free(&cpu);
    gan_free(&gpu);
    assert_int_equal(bad, 0);
}

// The tests' hyperparameters: the defaults at batch BATCH (G's EMA, when on, copied on step 1
// and averaged after).
static GanHparams hparams(void) { return fixture_hparams(BATCH); }

static void test_train_tinyc(void **state) {
    (void)state;
    train_case("tinyc", &fmnist, 0.5f, hparams());
}

static void test_train_fmnist32c(void **state) {
    (void)state;
    train_case("fmnist32c", &fmnist, 0.0f, hparams());
}

static void test_train_tiny(void **state) {
    (void)state;
    train_case("tiny", &fmnist, 0.5f, hparams());
}

static void test_train_tiny64(void **state) {
    (void)state;
    train_case("tiny64", &rgb, 0.5f, hparams());
}

// AdamW's decoupled weight decay (biases excluded), FreezeD (D's first 2 layers not updated) and
// G's EMA.
static void test_train_wd_freezed_ema(void **state) {
    (void)state;
    GanHparams hp = hparams();
    hp.weight_decay_g = hp.weight_decay_d = 0.05f;
    hp.freeze_d = 2;
    hp.ema_decay = 0.9f;
    train_case("tinyc", &fmnist, 0.5f, hp);
}

// SN off on G, R1 every step, the L1 activation penalty, dropout in D.
static void test_train_r1_l1_dropout_sn_off(void **state) {
    (void)state;
    GanHparams hp = hparams();
    hp.sn_g = 0;
    hp.r1_gamma = 1.0f;
    hp.l1_act = 0.01f;
    hp.d_dropout = 0.3f;
    train_case("tinyc", &fmnist, 0.5f, hp);
}

// WGAN-GP lazily (every 2nd step), orthogonal regularization, SN off on D, G's EMA.
static void test_train_gp_ortho_sn_off(void **state) {
    (void)state;
    GanHparams hp = hparams();
    hp.sn_d = 0;
    hp.gp_lambda = 10.0f;
    hp.penalty_every = 2;
    hp.ortho_beta = 1e-3f;
    hp.ema_decay = 0.9f;
    train_case("tiny", &fmnist, 0.5f, hp);
}

// The finetune job's step on the GPU (generator/finetune.c's finetune_device_step: gan_cuda_tune_step,
// the reward D's forward and backward on the device, the reward from its maps on the host)
// against finetune_step, as train_case's single steps; the batch's mean reward too. The reward D
// is the starting checkpoint's D, the reward weights made up (tune_fixture.h).
static void test_finetune_step(void **state) {
    (void)state;
    SaganConfig cfg;
    assert_int_equal(sagan_config_lookup(&cfg, "tinyc"), 0);
    GanHparams hp = hparams();
    GanTrainer cpu, gpu;
    assert_int_equal(gan_init(&cpu, &cfg, &hp, 11), 0);
    assert_int_equal(gan_init(&gpu, &cfg, &hp, 11), 0);
    set_gamma(&cpu.G.ps, cpu.G.p_gamma, 0.5f);
    set_gamma(&cpu.D.ps, cpu.D.p_gamma, 0.5f);
    char dir[32], ckpt[96], err[512], line[600];
    fixture_tmp(dir, ckpt, "reward.safetensors");
    if (gan_save(&cpu, ckpt, err, sizeof err)) fail_msg("%s", err);
    FixtureReward fx;
    fixture_reward(&fx, ckpt, BATCH, &test_rng);
    FinetuneConfig fc = {.beta = 1.0, .lambda = 1e-3};
    float *theta0 = CHECK_ALLOC(float, cpu.G.ps.total);
    memcpy(theta0, cpu.G.ps.params, sizeof(float) * cpu.G.ps.total);
    GanCuda gc;
    if (gan_cuda_init(&gc, &gpu, err, sizeof err)) fail_msg("%s", err);
    Tune tu = {.td = {.on_gpu = 1, .gc = &gc}, .r = &fx.r, .theta0 = theta0};
    assert_int_equal(finetune_device_init(&tu.fd, &tu.td, &gpu, &fx.r, &fc, theta0, line, sizeof line),
                     0);
    printf("# %s\n", line);
    assert_non_null(tu.fd.tu);
    int bad = steps_from_cpu_state("finetune tinyc", STEP_FINETUNE, &gc, &tu, &gpu, &cpu, &fmnist);
    finetune_device_free(&tu.fd, &tu.td);
    gan_cuda_free(&gc);
    fixture_reward_free(&fx);
    free(theta0);
    fixture_tmp_remove(dir, ckpt);
    gan_free(&cpu);
    gan_free(&gpu);
    assert_int_equal(bad, 0);
}

// The distill job's step on the GPU (generator/distill.c's distill_device_step: the teacher's G and
// D of twice the student's width on the device) against distill_step, as test_finetune_step; the
// pixel and feature losses too.
static void test_distill_step(void **state) {
    (void)state;
    SaganConfig cfg;
    assert_int_equal(sagan_config_lookup(&cfg, "tinyc"), 0);
    GanHparams hp = hparams();
    char dir[32], ckpt[96], err[512], line[600];
    fixture_tmp(dir, ckpt, "teacher.safetensors");
    fixture_teacher(&cfg, &hp, ckpt);
    Distiller dist;
    if (distill_init(&dist, ckpt, BATCH, err, sizeof err)) fail_msg("%s", err);
    GanTrainer cpu, gpu;
    assert_int_equal(gan_init(&cpu, &cfg, &hp, 11), 0);
    assert_int_equal(gan_init(&gpu, &cfg, &hp, 11), 0);
    set_gamma(&cpu.G.ps, cpu.G.p_gamma, 0.5f);
    set_gamma(&cpu.D.ps, cpu.D.p_gamma, 0.5f);
    DistillConfig dc = {.w_pix = 1.0, .w_feat = 0.5, .w_adv = 0.1};
    GanCuda gc;
    if (gan_cuda_init(&gc, &gpu, err, sizeof err)) fail_msg("%s", err);
    Tune tu = {.td = {.on_gpu = 1, .gc = &gc}, .dist = &dist};
    assert_int_equal(distill_device_init(&tu.dd, &tu.td, &gpu, &dist, &dc, line, sizeof line), 0);
    printf("# %s\n", line);
    assert_non_null(tu.dd.tu);
    int bad = steps_from_cpu_state("distill tinyc", STEP_DISTILL, &gc, &tu, &gpu, &cpu, &fmnist);
    distill_device_free(&tu.dd, &tu.td);
    gan_cuda_free(&gc);
    distill_free(&dist);
    fixture_tmp_remove(dir, ckpt);
    gan_free(&cpu);
    gan_free(&gpu);
    assert_int_equal(bad, 0);
}

// What the GPU step cannot take is refused before anything is drawn, with a reason at init: a
// data-parallel split that does not divide the batch (init); a progressive schedule switched on
// for a trainer built without its layers, and a bad switch (a step; the RNG untouched).
static void test_refuses_switches(void **state) {
    (void)state;
    SaganConfig cfg;
    assert_int_equal(sagan_config_lookup(&cfg, "tinyc"), 0);
    GanHparams hp = hparams();
    GanTrainer t;
    assert_int_equal(gan_init(&t, &cfg, &hp, 1), 0);
    GanCuda gc;
    char err[512];
    t.dp_size = 3;
    assert_int_equal(gan_cuda_init(&gc, &t, err, sizeof err), KERNELS_EINVAL);
    CHECK_ASSERT_HAS(err, "data-parallel");
    gan_cuda_free(&gc);
    t.dp_size = 1;
    if (gan_cuda_init(&gc, &t, err, sizeof err)) fail_msg("%s", err);
    Rng before = t.rng;
    t.hp.prog_stable = 100;
    t.hp.prog_fade = 100;
    assert_int_equal(gan_cuda_step(&gc, &t, &fmnist), KERNELS_EINVAL);
    t.hp.prog_stable = t.hp.prog_fade = 0;
    t.hp.penalty_every = 0;
    assert_int_equal(gan_cuda_step(&gc, &t, &fmnist), KERNELS_EINVAL);
    assert_memory_equal(&before, &t.rng, sizeof before);
    t.hp.penalty_every = 1;
    assert_int_equal(gan_cuda_step(&gc, &t, &fmnist), 0);
    assert_int_equal(t.step, 1);
    gan_cuda_free(&gc);
    gan_free(&t);
}

// Progressive growing (sagan.h): one stable step per level and two-step fades from 8x8, so the
// three single steps run tinyc at 8x8, then 16x16 fading in at alpha 0.5 and 1, and the free
// running goes on to 16x16 stable and 32x32 fading in: the real batch pooled and blended on the
// host, G's toRGB and D's fromRGB layers and both fades' old paths on the device.
static void test_train_progressive(void **state) {
    (void)state;
    GanHparams hp = hparams();
    hp.prog_stable = 1;
    hp.prog_fade = 2;
    hp.prog_from = 8;
    train_case("tinyc", &fmnist, 0.5f, hp);
}

// --- setup --------------------------------------------------------------------------------------

// A disc of one colour per class on a dark ground (test_techniques.c's colour images).
static void rgb_make(Dataset *d, int n) {
    *d = (Dataset){.n = n, .c = 3, .h = 64, .w = 64, .n_classes = 4};
    d->images = CHECK_ALLOC(float, (long)n * 3 * 64 * 64);
    d->labels = CHECK_ALLOC(int32_t, n);
    for (int i = 0; i < n; i++) {
        d->labels[i] = i % 4;
        for (int ch = 0; ch < 3; ch++)
            for (int y = 0; y < 64; y++)
                for (int x = 0; x < 64; x++) {
                    int in = (x - 32) * (x - 32) + (y - 32) * (y - 32) < (10 + i) * (10 + i);
                    d->images[(((long)i * 3 + ch) * 64 + y) * 64 + x] =
                        in ? (ch == d->labels[i] % 3 ? 0.9f : -0.2f) : -1.0f;
                }
    }
}

static int group_setup(void **state) {
    (void)state;
    char err[512];
    const char *dir = getenv("STEER_FMNIST_DIR") ? getenv("STEER_FMNIST_DIR") : FMNIST_DIR;
    if (fmnist_load(&fmnist, dir, 0, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    rgb_make(&rgb, 24);
    rng_seed(&test_rng, 20250607);
    return cudaStreamCreate(&stream) == cudaSuccess ? 0 : -1;
}

static int group_teardown(void **state) {
    (void)state;
    dataset_free(&fmnist);
    free(rgb.images);
    free(rgb.labels);
    cudaStreamSynchronize(stream);
    cudaStreamDestroy(stream);
    cuda_cache_clear();
    return 0;
}

int main(void) {
    char why[256];
    if (!cuda_device_available(why, sizeof why)) {
        printf("1..1\nok 1 - test_cuda_train # SKIP skipped: %s\n", why);
        return 0;
    }
    printf("# %s\n", why);
    cuda_tf32_set(0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_attention_block),
        cmocka_unit_test(test_embedding_projection),
        cmocka_unit_test(test_refuses_switches),
        cmocka_unit_test(test_train_tinyc),
        cmocka_unit_test(test_train_fmnist32c),
        cmocka_unit_test(test_train_tiny),
        cmocka_unit_test(test_train_tiny64),
        cmocka_unit_test(test_train_wd_freezed_ema),
        cmocka_unit_test(test_train_r1_l1_dropout_sn_off),
        cmocka_unit_test(test_train_gp_ortho_sn_off),
        cmocka_unit_test(test_finetune_step),
        cmocka_unit_test(test_distill_step),
        cmocka_unit_test(test_train_progressive),
    };
    // STEER_CUDA_SHARD=i/n runs every n-th test from the i-th (on cuemu each process emulates the
    // GPU on one core: tests/cuda/emu/run.sh runs two shards side by side)
    size_t n_tests = sizeof tests / sizeof tests[0], shard = 0, shards = 1, k = 0;
    const char *sh = getenv("STEER_CUDA_SHARD");
    if (sh && (sscanf(sh, "%zu/%zu", &shard, &shards) != 2 || shards < 1 || shard >= shards)) {
        fprintf(stderr, "STEER_CUDA_SHARD=%s: want i/n with i < n\n", sh);
        return 2;
    }
    struct CMUnitTest picked[sizeof tests / sizeof tests[0]];
    for (size_t i = 0; i < n_tests; i++)
        if (i % shards == shard) picked[k++] = tests[i];
    return _cmocka_run_group_tests("test_cuda_train", picked, k, group_setup, group_teardown);
}
