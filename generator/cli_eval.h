// cli_eval.h — the `steer eval` and `steer train-eval` subcommands (docs/eval.md).
//
// Both take argv as main hands it to the subcommand (argv[0] is the subcommand's name), print
// their results on stdout and their progress and errors on stderr, and return the process exit
// status: 0 on success, 1 when a file or a computation fails (the message names the file and the
// fault), 2 on a usage error. They are tools: they allocate freely and run on the calling thread
// (the kernels use OpenMP inside).
#ifndef GENERATOR_CLI_EVAL_H
#define GENERATOR_CLI_EVAL_H

// steer eval --ckpt F | --samples F.npy | --test-halves [--n N] [--seed S] [--eval-model F]
//            [--data DIR]
// Fréchet distance of the samples' evaluator features to the Fashion-MNIST test set's, and the
// class histogram of the samples as the evaluator sees them.
int cli_eval(int argc, char **argv);

// steer train-eval [--epochs E | --iters N] [--seed S] [--lr LR] [--batch B] [--out F] [--data DIR]
// Trains the evaluator on the Fashion-MNIST training set, prints its test accuracy, saves it.
int cli_train_eval(int argc, char **argv);

#endif
