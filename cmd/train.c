// train.c — `steer train`: argument parsing, progress, files. No model math.
#include "cmd/args.h"
#include "cmd/commands.h"
#include "util/clock.h"
#include "util/fs.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "generator/data/fmnist.h"
#include "generator/data/imageio.h"
#include "generator/dist.h"
#include "generator/gan.h"
#include "generator/train_device.h"
#include "kernels/kernels.h"

static volatile sig_atomic_t stop_requested;
static void on_signal(int sig) {
    (void)sig;
    stop_requested = 1;
}

// Writes a grid of `n` samples of the trainer's G (fixed seed, so grids over time compare).
static int write_grid(GanTrainer *t, const char *path, int n, char *err, size_t errlen) {
    const SaganConfig *c = &t->cfg;
    long img = (long)c->channels * c->img * c->img;
    float *z = malloc(sizeof(float) * n * c->z_dim), *out = malloc(sizeof(float) * n * img);
    int32_t *y = malloc(sizeof(int32_t) * n);
    int rc = -1;
    if (!z || !out || !y) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    // Conditional: row r (of 10 columns) shows class r % n_classes.
    gan_sample_latents(c, 12345, n, -1, z, y);
    if (c->n_classes)
        for (int i = 0; i < n; i++) y[i] = (i / 10) % c->n_classes;
    for (int i = 0; i < n; i += t->hp.batch) {
        int b = n - i < t->hp.batch ? n - i : t->hp.batch;
        if ((rc = generator_forward(&t->G, z + (long)i * c->z_dim, c->n_classes ? y + i : NULL,
                                    b))) {
            snprintf(err, errlen, "generator: %s", kernels_strerror(rc));
            goto done;
        }
        memcpy(out + i * img, t->G.img, sizeof(float) * b * img);
    }
    rc = image_grid_write_png(path, out, n, c->channels, c->img, c->img, 10, err, errlen);
done:
    free(z);
    free(out);
    free(y);
    return rc;
}

static void train_usage(FILE *f) {
    fprintf(f,
            "usage: steer train [options]\n"
            "Trains the SN-GAN on Fashion-MNIST; checkpoints and sample grids go to --ckpt-dir.\n"
            "  --config NAME      model config: fmnist32c (default), fmnist32, tiny, tinyc\n"
            "  --ch N             override the config's base width (power of two)\n"
            "  --z-dim N          override the config's latent size\n"
            "  --data DIR         Fashion-MNIST folder (default %s)\n"
            "  --iters N          training iterations (default 20000)\n"
            "  --batch N          batch size (default 64)\n"
            "  --seed S           seed of initialization and of every draw (default 1)\n"
            "  --lr-g X, --lr-d X Adam learning rates (default 1e-4, 4e-4)\n"
            "  --beta1 X, --beta2 X  Adam betas (default 0, 0.9)\n"
            "  --ckpt-dir DIR     where checkpoints and grids go (default runs/CONFIG)\n"
            "  --resume FILE      continue from a checkpoint written by steer train, with its\n"
            "                     hyperparameters and techniques unless flags here change them\n"
            "  --save-every N     checkpoint interval in iterations (default 1000, 0: only at end)\n"
            "  --log-every N      progress line interval (default 100)\n"
            "  --sample-every N   PNG sample grid interval (default 1000, 0: never)\n"
            "  --out FILE         also write the final checkpoint here\n"
            "  --device D         auto (default: the GPU when this is a CUDA build, a GPU is usable\n"
            "                     and the GPU step covers the run's switches), cpu, cuda\n"
            "  --tf32             let the GPU's convolutions and matrix products use TF32 tensor\n"
            "                     cores (faster; ~1e-3 relative rounding per product; default FP32)\n"
            "  --bf16             convolutions on BF16 inputs, accumulating in FP32 (~4e-3 relative\n"
            "                     rounding per input): on the CPU where it has AVX512-BF16 or AMX\n"
            "                     (elsewhere FP32, saying why), on the GPU cuDNN's (default FP32)\n"
            "Training techniques (docs/training.md, \"Techniques\"; all off by default):\n"
            "  --set KEY=VALUE    any training switch, repeatable; the keys:\n",
            FMNIST_DIR);
    const char *help;
    for (int i = 0; gan_hparams_key(i, &help); i++)
        fprintf(f, "      %-17s %s\n", gan_hparams_key(i, NULL), help);
    fprintf(f,
            "  --r1 GAMMA, --gp LAMBDA, --ortho BETA, --l1-act LAMBDA, --dropout-d P, --ema DECAY,\n"
            "  --freeze-d K, --weight-decay X, --no-sn-g, --no-sn-d\n"
            "                     the same as --set r1_gamma=GAMMA, gp_lambda=..., ortho_beta=...,\n"
            "                     l1_act=..., d_dropout=..., ema_decay=..., freeze_d=...,\n"
            "                     weight_decay=..., sn_g=0, sn_d=0\n"
            "SIGINT/SIGTERM stop after the current iteration and save a checkpoint.\n"
            "Data parallel: `mpirun -np P steer train ...` splits each step's --batch over P\n"
            "processes (it must divide) and averages their gradients (MPI all-reduce); rank 0\n"
            "logs and writes the checkpoints. The same run as one process, up to float rounding.\n");
}

// A hyperparameter given on the command line, applied in order over the defaults (or, with
// --resume, over the checkpoint's own).
typedef struct {
    char key[32];
    const char *value;
} TrainSet;
#define TRAIN_SETS_MAX 64

// Records key=value after checking it on a scratch copy (so a bad value is reported at once).
static int train_set_add(TrainSet *sets, int *n, const char *opt, const char *key,
                         const char *value) {
    char why[512];
    GanHparams scratch;
    gan_hparams_default(&scratch);
    if (*n >= TRAIN_SETS_MAX) {
        fprintf(stderr, "steer train: more than %d hyperparameter settings\n", TRAIN_SETS_MAX);
        return -1;
    }
    if (strlen(key) >= sizeof sets->key || gan_hparams_set(&scratch, key, value, why, sizeof why)) {
        if (strlen(key) >= sizeof sets->key) snprintf(why, sizeof why, "unknown training switch");
        fprintf(stderr, "steer train: %s: %s\n", opt, why);
        return -1;
    }
    snprintf(sets[*n].key, sizeof sets->key, "%s", key);
    sets[(*n)++].value = value;
    return 0;
}

static int train_main(int argc, char **argv, Dist *dist);

int cmd_train(int argc, char **argv) {
    Dist dist;
    char err[256];
    if (dist_init(&dist, err, sizeof err)) {
        fprintf(stderr, "steer train: %s\n", err);
        return 1;
    }
    if (dist.rank > 0) { // one voice: the other processes say only what goes wrong
        if (!freopen("/dev/null", "w", stdout)) return 1;
    }
    int rc = train_main(argc, argv, &dist);
    dist_free(&dist);
    return rc;
}

static int train_main(int argc, char **argv, Dist *dist) {
    const char *config = "fmnist32c", *data_dir = FMNIST_DIR, *resume = NULL, *out = NULL;
    char ckpt_dir[PATH_MAX] = "";
    long iters = 20000, seed = 1, save_every = 1000, log_every = 100, sample_every = 1000, v;
    Device device = DEVICE_AUTO;
    long ch = 0, z_dim = 0;
    GanHparams hp;
    gan_hparams_default(&hp);
    TrainSet sets[TRAIN_SETS_MAX];
    int n_sets = 0;
    float fv;
    // Dedicated flags that are one training switch each (long option value >= 256).
    static const struct {
        const char *key, *value; // value NULL: the option's argument
    } SWITCH[] = {{"r1_gamma", NULL},  {"gp_lambda", NULL}, {"ortho_beta", NULL},
                  {"l1_act", NULL},    {"d_dropout", NULL}, {"ema_decay", NULL},
                  {"freeze_d", NULL},  {"weight_decay", NULL}, {"sn_g", "0"},
                  {"sn_d", "0"}};
    static const struct option opts[] = {
        {"config", 1, 0, 'c'},      {"data", 1, 0, 'd'},         {"iters", 1, 0, 'i'},
        {"batch", 1, 0, 'b'},       {"seed", 1, 0, 's'},         {"lr-g", 1, 0, 'G'},
        {"lr-d", 1, 0, 'D'},        {"beta1", 1, 0, '1'},        {"beta2", 1, 0, '2'},
        {"ckpt-dir", 1, 0, 'o'},    {"resume", 1, 0, 'r'},       {"save-every", 1, 0, 'S'},
        {"log-every", 1, 0, 'l'},   {"sample-every", 1, 0, 'p'}, {"out", 1, 0, 'O'},
        {"ch", 1, 0, 'w'},          {"z-dim", 1, 0, 'z'},        {"help", 0, 0, 'h'},
        {"set", 1, 0, 'k'},         {"r1", 1, 0, 256},           {"gp", 1, 0, 257},
        {"ortho", 1, 0, 258},       {"l1-act", 1, 0, 259},       {"dropout-d", 1, 0, 260},
        {"ema", 1, 0, 261},         {"freeze-d", 1, 0, 262},     {"weight-decay", 1, 0, 263},
        {"no-sn-g", 0, 0, 264},     {"no-sn-d", 0, 0, 265},      {"device", 1, 0, 'V'},
        {"tf32", 0, 0, 266},        {"bf16", 0, 0, 267},
        {0, 0, 0, 0}};
    optind = 1;
    int o;
    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (o >= 256 && o < 256 + (int)(sizeof SWITCH / sizeof SWITCH[0])) {
            char opt[64] = "";
            for (int i = 0; opts[i].name; i++)
                if (opts[i].val == o) snprintf(opt, sizeof opt, "--%s", opts[i].name);
            const char *val = SWITCH[o - 256].value ? SWITCH[o - 256].value : optarg;
            if (train_set_add(sets, &n_sets, opt, SWITCH[o - 256].key, val)) return 2;
            continue;
        }
        switch (o) {
        case 'c': config = optarg; break;
        case 'd': data_dir = optarg; break;
        case 'i': if (args_long("train", optarg, 0, 100000000, "--iters", &iters)) return 2; break;
        case 'b':
            if (args_long("train", optarg, 1, 4096, "--batch", &v)) return 2;
            if (train_set_add(sets, &n_sets, "--batch", "batch", optarg)) return 2;
            break;
        case 's': if (args_long("train", optarg, 0, LONG_MAX, "--seed", &seed)) return 2; break;
        case 'G':
            if (args_float("train", optarg, 0, 1, "--lr-g", &fv) ||
                train_set_add(sets, &n_sets, "--lr-g", "lr_g", optarg))
                return 2;
            break;
        case 'D':
            if (args_float("train", optarg, 0, 1, "--lr-d", &fv) ||
                train_set_add(sets, &n_sets, "--lr-d", "lr_d", optarg))
                return 2;
            break;
        case '1':
            if (args_float("train", optarg, 0, 0.9999, "--beta1", &fv) ||
                train_set_add(sets, &n_sets, "--beta1", "beta1", optarg))
                return 2;
            break;
        case '2':
            if (args_float("train", optarg, 0, 0.9999, "--beta2", &fv) ||
                train_set_add(sets, &n_sets, "--beta2", "beta2", optarg))
                return 2;
            break;
        case 'k': {
            const char *eq = strchr(optarg, '=');
            char key[64];
            if (!eq || eq == optarg || eq - optarg >= (long)sizeof key) {
                fprintf(stderr, "steer train: --set '%s': expected KEY=VALUE\n", optarg);
                return 2;
            }
            snprintf(key, sizeof key, "%.*s", (int)(eq - optarg), optarg);
            if (train_set_add(sets, &n_sets, "--set", key, eq + 1)) return 2;
            break;
        }
        case 'o': snprintf(ckpt_dir, sizeof ckpt_dir, "%s", optarg); break;
        case 'r': resume = optarg; break;
        case 'S': if (args_long("train", optarg, 0, LONG_MAX, "--save-every", &save_every)) return 2; break;
        case 'l': if (args_long("train", optarg, 1, LONG_MAX, "--log-every", &log_every)) return 2; break;
        case 'p': if (args_long("train", optarg, 0, LONG_MAX, "--sample-every", &sample_every)) return 2; break;
        case 'O': out = optarg; break;
        case 'w': if (args_long("train", optarg, 8, 1024, "--ch", &ch)) return 2; break;
        case 'z': if (args_long("train", optarg, 1, 4096, "--z-dim", &z_dim)) return 2; break;
        case 'V':
            if (device_parse(optarg, &device)) {
                fprintf(stderr, "steer train: --device '%s': expected auto, cpu or cuda\n", optarg);
                return 2;
            }
            break;
        case 266: device_tf32_set(1); break;
        case 267: device_bf16_set(1, NULL, 0); break; // the device line says if the CPU cannot
        case 'h': train_usage(stdout); return 0;
        default: train_usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "steer train: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    char err[1024];
    GanTrainer t;
    int rc;
    // The settings go over the checkpoint's own hyperparameters when resuming, so a resumed run
    // keeps every technique it was started with unless a flag here changes it.
    if (resume && (rc = gan_hparams_load(&hp, resume, err, sizeof err))) {
        fprintf(stderr, "steer train: %s\n", err);
        return 1;
    }
    for (int i = 0; i < n_sets; i++)
        if (gan_hparams_set(&hp, sets[i].key, sets[i].value, err, sizeof err)) {
            fprintf(stderr, "steer train: %s\n", err);
            return 2;
        }
    if (gan_hparams_check(&hp, err, sizeof err)) {
        fprintf(stderr, "steer train: %s\n", err);
        return 2;
    }
    if (resume) {
        if ((rc = gan_load(&t, resume, &hp, err, sizeof err))) {
            fprintf(stderr, "steer train: %s\n", err);
            gan_free(&t);
            return 1;
        }
        fprintf(stderr, "resumed %s at step %ld\n", resume, t.step);
    } else {
        SaganConfig cfg;
        if (sagan_config_lookup(&cfg, config)) {
            fprintf(stderr, "steer train: unknown config '%s' (try fmnist32c, fmnist32, tiny)\n",
                    config);
            return 2;
        }
        if (ch) cfg.ch = (int)ch;
        if (z_dim) cfg.z_dim = (int)z_dim;
        if (sagan_config_check(&cfg, err, sizeof err)) {
            fprintf(stderr, "steer train: %s\n", err);
            return 2;
        }
        if (gan_init(&t, &cfg, &hp, (uint64_t)seed)) {
            fprintf(stderr, "steer train: out of memory building the model\n");
            gan_free(&t);
            return 1;
        }
    }
    if (t.hp.batch % dist->size) {
        fprintf(stderr, "steer train: batch %d does not split over %d processes\n", t.hp.batch,
                dist->size);
        gan_free(&t);
        return 2;
    }
    t.dp_rank = dist->rank;
    t.dp_size = dist->size;
    t.grad_reduce = dist_grad_reduce;
    t.reduce_ctx = dist;
    int lead = dist->rank == 0; // logs, samples and checkpoints
    if (!ckpt_dir[0]) snprintf(ckpt_dir, sizeof ckpt_dir, "runs/%s", t.cfg.name);
    if (fs_mkdir_p(ckpt_dir)) {
        fprintf(stderr, "steer train: cannot create %s: %s\n", ckpt_dir, strerror(errno));
        gan_free(&t);
        return 1;
    }
    Dataset data = {0};
    if ((rc = fmnist_load(&data, data_dir, 1, err, sizeof err))) {
        fprintf(stderr, "steer train: %s\n", err);
        gan_free(&t);
        return 1;
    }
    if (data.c != t.cfg.channels || data.h != t.cfg.img) {
        fprintf(stderr, "steer train: the data is %dx%dx%d but config %s makes %dx%dx%d\n", data.c,
                data.h, data.w, t.cfg.name, t.cfg.channels, t.cfg.img, t.cfg.img);
        dataset_free(&data);
        gan_free(&t);
        return 2;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    if (lead)
        fprintf(stderr, "training %s (ch %d, z %d, %s) for %ld iterations, batch %d, into %s\n",
                t.cfg.name, t.cfg.ch, t.cfg.z_dim,
                t.cfg.n_classes ? "conditional" : "unconditional", iters, t.hp.batch, ckpt_dir);
    if (lead && dist->size > 1)
        fprintf(stderr, "data parallel: %d processes, %d images each per step\n", dist->size,
                t.hp.batch / dist->size);
    if (lead) {
        // The switches that differ from the defaults, so a log says how the run was trained.
        GanHparams def;
        gan_hparams_default(&def);
        char a[64], b[64], line[1024] = "";
        size_t used = 0;
        const char *key;
        for (int i = 0; (key = gan_hparams_key(i, NULL)); i++) {
            gan_hparams_get(&t.hp, key, a, sizeof a);
            gan_hparams_get(&def, key, b, sizeof b);
            if (strcmp(a, b) && used < sizeof line)
                used += snprintf(line + used, sizeof line - used, " %s=%s", key, a);
        }
        if (used) fprintf(stderr, "hyperparameters:%s\n", line);
    }
    TrainDevice td;
    char where[512];
    train_device_init(&td, device, &t, where, sizeof where);
    if (lead) fprintf(stderr, "%s\n", where);
    char path[PATH_MAX + 64], eta[32];
    double t0 = clock_now_s(), t_log = t0;
    long start = t.step, log_start = t.step;
    int status = 0;
    int stop = 0;
    while (t.step < iters && !stop) {
        if ((rc = train_device_step(&td, &t, &data))) {
            fprintf(stderr, "steer train: step %ld failed: %s\n", t.step, kernels_strerror(rc));
            status = 1;
            break;
        }
        if (!(t.loss_d == t.loss_d && t.loss_g == t.loss_g)) {
            fprintf(stderr, "steer train: step %ld: loss is not finite (D %g, G %g)\n", t.step,
                    t.loss_d, t.loss_g);
            status = 1;
            break;
        }
        if (t.step % log_every == 0 || t.step == iters) {
            double now = clock_now_s();
            double ips = (t.step - log_start) * t.hp.batch / (now - t_log);
            double done_rate = (t.step - start) / (now - t0);
            args_duration(eta, sizeof eta, (iters - t.step) / done_rate);
            char extra[64] = "";
            if (t.hp.r1_gamma > 0 || t.hp.gp_lambda > 0 || t.hp.ortho_beta > 0 || t.hp.l1_act > 0)
                snprintf(extra, sizeof extra, "  penalty_d %.4f  reg_g %.4f", t.penalty_d,
                         t.reg_g);
            if (t.cfg.prog) {
                size_t k = strlen(extra);
                snprintf(extra + k, sizeof extra - k, "  res %d alpha %.2f", 4 << t.level, t.alpha);
            }
            printf("step %ld/%ld  loss_d %.4f  loss_g %.4f%s  %.0f images/s  eta %s\n", t.step,
                   iters, t.loss_d, t.loss_g, extra, ips, eta);
            fflush(stdout);
            t_log = now;
            log_start = t.step;
        }
        int sample_now = lead && sample_every && t.step % sample_every == 0;
        int save_now = lead && save_every && t.step % save_every == 0 && t.step < iters;
        if ((sample_now || save_now) && (rc = train_device_sync(&td, &t))) {
            fprintf(stderr, "steer train: step %ld: %s\n", t.step, kernels_strerror(rc));
            status = 1;
            sample_now = save_now = 0;
        }
        if (sample_now) {
            snprintf(path, sizeof path, "%s/samples_%07ld.png", ckpt_dir, t.step);
            if (write_grid(&t, path, 100, err, sizeof err))
                fprintf(stderr, "steer train: sample grid: %s\n", err);
        }
        if (save_now) {
            snprintf(path, sizeof path, "%s/latest.safetensors", ckpt_dir);
            if (gan_save(&t, path, err, sizeof err)) {
                fprintf(stderr, "steer train: %s\n", err);
                status = 1;
            }
        }
        // every process stops at the same step: on a signal any of them got, or the lead's failure
        stop = dist_any(dist, stop_requested || status) != 0;
    }
    snprintf(path, sizeof path, "%s/latest.safetensors", ckpt_dir);
    if ((rc = train_device_sync(&td, &t))) {
        fprintf(stderr, "steer train: %s\n", kernels_strerror(rc));
        status = 1;
    } else if (!lead) {
        // the lead saves
    } else if (gan_save(&t, path, err, sizeof err) || (out && gan_save(&t, out, err, sizeof err))) {
        fprintf(stderr, "steer train: %s\n", err);
        status = 1;
    } else {
        fprintf(stderr, "%s at step %ld after %.1f s; checkpoint %s%s%s\n",
                stop_requested ? "stopped" : "done", t.step, clock_now_s() - t0, path,
                out ? " and " : "", out ? out : "");
    }
    train_device_free(&td);
    dataset_free(&data);
    gan_free(&t);
    return status;
}
