// train.c — `steer train`: options into a TrainSpec, then the one training loop
// (generator/train.h) with its events printed as progress lines. No model math, no loop here.
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/args.h"
#include "cmd/commands.h"
#include "generator/data/fmnist.h"
#include "generator/dist.h"
#include "generator/train.h"
#include "server/learn.h"

static volatile sig_atomic_t stop_requested;
static void on_signal(int sig) {
    (void)sig;
    stop_requested = 1;
}

static void train_usage(FILE *f) {
    fprintf(f,
            "usage: steer train [options]\n"
            "Trains the SN-GAN (on Fashion-MNIST unless --data names another folder); checkpoints\n"
            "and sample grids go to --ckpt-dir. The same run as a job's (docs/jobs.md).\n"
            "  --config NAME      model config: fmnist32c (default), fmnist32, tiny, tinyc\n"
            "  --ch N             override the config's base width (power of two)\n"
            "  --z-dim N          override the config's latent size\n"
            "  --data DIR         Fashion-MNIST folder (default %s) or a folder of PNGs\n"
            "  --classes LIST     train on these labels only (comma-separated, e.g. 7,9)\n"
            "  --limit N          train on the first N images only\n"
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
            "  --init FILE        start from another run's whole state (step 0)\n"
            "  --teacher FILE     distill this model into a student of width --ch (default half)\n"
            "  --finetune-store DB  fine-tune --init toward the users' reward in this steer.db\n"
            "  --eval-n N         FD of N samples at the end (default 0: none; Fashion-MNIST only)\n"
            "  --eval-every N     also FD every N iterations (with --eval-n)\n"
            "  --eval-model FILE  the evaluator FD uses (default models/fmnist-eval.safetensors)\n"
            "  --seconds S        stop (as done) after S seconds of training (default: no limit)\n"
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

// Comma-separated labels into classes (at most TRAIN_MAX_CLASSES). 0, or -1 (printed).
static int parse_classes(const char *list, int *classes, int *n) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s", list);
    *n = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        long v;
        if (*n == TRAIN_MAX_CLASSES) {
            fprintf(stderr, "steer train: --classes: at most %d labels\n", TRAIN_MAX_CLASSES);
            return -1;
        }
        if (args_long("train", tok, 0, 1000, "--classes", &v)) return -1;
        classes[(*n)++] = (int)v;
    }
    if (!*n) {
        fprintf(stderr, "steer train: --classes '%s': expected labels such as 7,9\n", list);
        return -1;
    }
    return 0;
}

// The run's events as steer train prints them: what it trains on stderr, a progress line per
// --log-every on stdout, and how it ended.
typedef struct {
    const TrainSpec *spec;
    const char *out;
    char dir[PATH_MAX]; // the run's folder, as STARTED names it
} Printer;

static void print_hyperparameters(const GanHparams *hp) {
    // The switches that differ from the defaults, so a log says how the run was trained.
    GanHparams def;
    gan_hparams_default(&def);
    char a[64], b[64], line[1024] = "";
    size_t used = 0;
    const char *key;
    for (int i = 0; (key = gan_hparams_key(i, NULL)); i++) {
        gan_hparams_get(hp, key, a, sizeof a);
        gan_hparams_get(&def, key, b, sizeof b);
        if (strcmp(a, b) && used < sizeof line)
            used += snprintf(line + used, sizeof line - used, " %s=%s", key, a);
    }
    if (used) fprintf(stderr, "hyperparameters:%s\n", line);
}

static void on_event(void *ctx, const TrainEvent *e) {
    Printer *p = ctx;
    const TrainSpec *s = p->spec;
    const GanHparams *hp = &s->hp;
    switch (e->kind) {
    case TRAIN_EVENT_NOTE: fprintf(stderr, "%s\n", e->text); break;
    case TRAIN_EVENT_STARTED:
        snprintf(p->dir, sizeof p->dir, "%s", e->path);
        if (e->resumed) fprintf(stderr, "resumed %s at step %ld\n", s->resume, e->step);
        fprintf(stderr, "training %s (ch %d, z %d, %s) for %ld iterations, batch %d, into %s\n",
                e->config, e->ch, e->z_dim, e->classes ? "conditional" : "unconditional",
                e->steps, e->batch, e->path);
        print_hyperparameters(hp);
        break;
    case TRAIN_EVENT_PROGRESS: {
        char eta[32], extra[160] = "";
        args_duration(eta, sizeof eta, e->eta_s);
        size_t k = 0;
        if (hp->r1_gamma > 0 || hp->gp_lambda > 0 || hp->ortho_beta > 0 || hp->l1_act > 0)
            k += snprintf(extra, sizeof extra, "  penalty_d %.4f  reg_g %.4f", e->penalty_d,
                          e->reg_g);
        if (e->prog)
            k += snprintf(extra + k, sizeof extra - k, "  res %d alpha %.2f", e->resolution,
                          e->alpha);
        if (s->kind == TRAIN_FINETUNE)
            k += snprintf(extra + k, sizeof extra - k, "  reward %.4f", e->reward);
        if (s->kind == TRAIN_DISTILL)
            snprintf(extra + k, sizeof extra - k, "  pixel %.4f  feature %.4f", e->pixel_loss,
                     e->feature_loss);
        printf("step %ld/%ld  loss_d %.4f  loss_g %.4f%s  %.0f images/s  eta %s\n", e->step,
               e->steps, e->loss_d, e->loss_g, extra, e->images_per_s, eta);
        fflush(stdout);
        break;
    }
    case TRAIN_EVENT_EVAL:
        printf("eval step %ld  fd %.4f%s%s\n", e->step, e->fd, e->text[0] ? "  " : "", e->text);
        fflush(stdout);
        break;
    case TRAIN_EVENT_CHECKPOINT:
    case TRAIN_EVENT_SAMPLES: break; // the files speak for themselves
    case TRAIN_EVENT_STOPPED:
    case TRAIN_EVENT_DONE:
        if (e->kind == TRAIN_EVENT_DONE && s->eval_n > 0)
            printf("fd %.4f (n %ld)\n", e->fd, e->eval_n);
        if (e->kind == TRAIN_EVENT_DONE && s->kind == TRAIN_FINETUNE)
            printf("reward %.4f (the model it started from: %.4f)\n", e->reward,
                   e->parent_reward);
        if (e->kind == TRAIN_EVENT_DONE && s->kind == TRAIN_DISTILL)
            printf("student %.0f images/s, teacher %.0f (batch 64); teacher fd %.4f\n",
                   e->gen_images_per_s, e->parent_gen_images_per_s, e->parent_fd);
        fprintf(stderr, "%s at step %ld after %.1f s; checkpoint %s/latest.safetensors%s%s\n",
                e->kind == TRAIN_EVENT_STOPPED ? "stopped" : "done", e->step, e->seconds,
                p->dir, p->out ? " and " : "", p->out ? p->out : "");
        break;
    }
}

static int train_main(int argc, char **argv, Dist *dist) {
    TrainSpec spec;
    train_spec_default(&spec);
    const char *store = NULL, *eval_model = spec.eval_model;
    long eval_n = 0, eval_every = 0, limit = 0;
    float seconds = 0;
    int classes[TRAIN_MAX_CLASSES], n_classes = 0;
    const char *init = NULL, *teacher = NULL;
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
        {"tf32", 0, 0, 266},        {"bf16", 0, 0, 267},         {"classes", 1, 0, 268},
        {"limit", 1, 0, 269},       {"init", 1, 0, 270},         {"teacher", 1, 0, 271},
        {"finetune-store", 1, 0, 272}, {"eval-n", 1, 0, 273},    {"eval-every", 1, 0, 274},
        {"eval-model", 1, 0, 275},  {"seconds", 1, 0, 276},
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
        case 266: spec.tf32 = 1; break;
        case 267: spec.bf16 = 1; break; // the device line says if the CPU cannot
        case 268:
            if (parse_classes(optarg, classes, &n_classes)) return 2;
            break;
        case 269: if (args_long("train", optarg, 0, LONG_MAX, "--limit", &limit)) return 2; break;
        case 270: init = optarg; break;
        case 271: teacher = optarg; break;
        case 272: store = optarg; break;
        case 273: if (args_long("train", optarg, 2, 100000, "--eval-n", &eval_n)) return 2; break;
        case 274: if (args_long("train", optarg, 0, LONG_MAX, "--eval-every", &eval_every)) return 2; break;
        case 275: eval_model = optarg; break;
        case 276: if (args_float("train", optarg, 0, 1e9, "--seconds", &seconds)) return 2; break;
        case 'h': train_usage(stdout); return 0;
        default: train_usage(stderr); return 2;
        }
    }
    if (args_none_left("train", argc, argv)) return 2;
    char err[1024];
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
    if (teacher && store) {
        fprintf(stderr, "steer train: --teacher (distill) and --finetune-store (fine-tune) do not "
                        "go together\n");
        return 2;
    }
    if (store && !init) {
        fprintf(stderr, "steer train: --finetune-store needs --init, the model to fine-tune\n");
        return 2;
    }
    if (eval_every && !eval_n) {
        fprintf(stderr, "steer train: --eval-every needs --eval-n\n");
        return 2;
    }
    spec.kind = teacher ? TRAIN_DISTILL : store ? TRAIN_FINETUNE : TRAIN_GAN;
    spec.resume = resume;
    spec.init = init;
    spec.teacher = teacher;
    spec.parent = teacher; // a student's FD beside its teacher's
    spec.config = config;
    spec.ch = (int)ch;
    spec.z_dim = (int)z_dim;
    spec.seed = (uint64_t)seed;
    spec.hp = hp;
    spec.data = data_dir;
    memcpy(spec.classes, classes, sizeof classes);
    spec.n_classes = n_classes;
    spec.limit = limit;
    spec.steps = iters;
    spec.log_every = log_every;
    spec.save_every = save_every;
    spec.sample_every = sample_every;
    spec.eval_every = eval_every;
    spec.eval_n = eval_n;
    spec.eval_model = eval_model;
    spec.seconds = seconds;
    spec.device = device;
    spec.dir = ckpt_dir[0] ? ckpt_dir : NULL;
    spec.final_path = out;
    spec.final_when_stopped = 1;
    spec.dist = dist;
    LearnReward users;
    FinetuneReward reward;
    memset(&users, 0, sizeof users);
    if (store) { // the users' reward, from a server's store
        if (learn_reward_init(&users, init, store, err, sizeof err)) {
            fprintf(stderr, "steer train: %s\n", err);
            learn_reward_free(&users);
            return 1;
        }
        reward = frame_reward_finetune(&users.reward);
        spec.reward = &reward;
        fprintf(stderr, "the users' reward: %ld comparisons, held-out accuracy %.3f\n",
                users.comparisons, users.accuracy);
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    Printer p = {.spec = &spec, .out = out};
    rc = train_run(&spec, on_event, &p, &stop_requested, err, sizeof err);
    if (rc) fprintf(stderr, "steer train: %s\n", err);
    learn_reward_free(&users);
    return rc;
}
