// worker.h — `steer worker`: one background training job in its own process (crash isolation),
// spawned and supervised by `steer serve` (server/jobs.h) or run by hand.
//
// A job is a folder: DIR/spec.json (what to train, written by whoever submits the job) and what
// the worker writes there: DIR/latest.safetensors (the whole training state: a resumed worker
// continues exactly where the last checkpoint left it) and DIR/final.safetensors when it finishes.
// Progress goes to stdout as a stream of msgpack maps, each with a string key `t` (a pipe to the
// server; docs/jobs.md lists them), logs to stderr. SIGTERM (pause, cancel, server stop) makes it
// save a checkpoint after the current step and exit 0 with `stopped`.
//
// spec.json keys: kind ("train"), config (a sagan config name, default "tiny"), steps, batch,
// seed, data (Fashion-MNIST folder), init (a checkpoint whose whole state the job starts from),
// save_every, log_every, eval_n (FD samples at the end; 0 = none), parent (the served
// checkpoint, whose FD is measured beside the result's at the same n and seed for promotion),
// set ({key: value} training switches, gan_hparams_set). Unknown keys are refused.
#ifndef SERVER_WORKER_H
#define SERVER_WORKER_H

int cli_worker(int argc, char **argv);

#endif
