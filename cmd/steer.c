// steer.c — the one binary: dispatches to the subcommands (cmd/commands.h). No logic of its own.
#include <stdio.h>
#include <string.h>

#include "cmd/commands.h"

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *help;
} Command;

static const Command COMMANDS[] = {
    {"train", cmd_train, "train the SN-GAN on Fashion-MNIST (steer train --help)"},
    {"sample", cmd_sample, "sample a checkpoint into a .npy or a PNG grid"},
    {"eval", cmd_eval, "Frechet distance and class histogram of a model's samples"},
    {"train-eval", cmd_train_eval, "train the evaluator classifier steer eval uses"},
    {"serve", cmd_serve, "serve generated frames over WebSockets (steer serve --help)"},
    {"job", cmd_job, "background training jobs and model versions of a running server"},
    {"worker", cmd_worker, "run one background training job (spawned by steer serve)"},
    {"export", cmd_export, "write the stored feedback as JSONL (trl) or CSV"},
    {"simulate", cmd_simulate, "simulated users steer generation; events until satisfied"},
    {"bench", cmd_bench, "speed of training and generation, as name value lines"},
};
#define N_COMMANDS (int)(sizeof COMMANDS / sizeof COMMANDS[0])

static void usage(FILE *f) {
    fprintf(f, "usage: steer <command> [options]\ncommands:\n");
    for (int i = 0; i < N_COMMANDS; i++) fprintf(f, "  %-12s %s\n", COMMANDS[i].name, COMMANDS[i].help);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    for (int i = 0; i < N_COMMANDS; i++)
        if (!strcmp(argv[1], COMMANDS[i].name)) return COMMANDS[i].run(argc - 1, argv + 1);
    fprintf(stderr, "steer: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
