// commands.h — the subcommands of the one binary `steer` (cmd/steer.c dispatches to them). Each
// takes argv as main hands it over (argv[0] is the subcommand's name), prints its results on
// stdout and its progress and errors on stderr, and returns the process exit status: 0 on
// success, 1 on a runtime error (the message names the file or the fault), 2 on a usage error.
// Commands are the top layer: they parse options (cmd/args.h), call the library and print;
// nothing below cmd/ includes this header.
#ifndef CMD_COMMANDS_H
#define CMD_COMMANDS_H

int cmd_train(int argc, char **argv);      // cmd/train.c: train a GAN (generator/train.h)
int cmd_sample(int argc, char **argv);     // cmd/sample.c: a checkpoint's frames as .npy or PNG
int cmd_eval(int argc, char **argv);       // cmd/eval.c: FD and class histogram of samples
int cmd_train_eval(int argc, char **argv); // cmd/eval.c: train the evaluator classifier
int cmd_serve(int argc, char **argv);      // cmd/serve.c: the server (server/serve.h)
int cmd_job(int argc, char **argv);        // cmd/job.c: jobs and model versions of a server
int cmd_worker(int argc, char **argv);     // cmd/worker.c: one background job (spawned by serve)
int cmd_export(int argc, char **argv);     // cmd/export.c: the stored feedback as JSONL or CSV
int cmd_simulate(int argc, char **argv);   // cmd/simulate.c: simulated users steer generation
int cmd_bench(int argc, char **argv);      // cmd/bench.c: speed figures as name value lines

#endif
