// bench.h — `steer bench`: speed of the GAN core, as `name value` lines on stdout.
// Returns the exit status (0, 1 runtime error, 2 usage).
#ifndef GENERATOR_BENCH_H
#define GENERATOR_BENCH_H

int cli_bench(int argc, char **argv);

#endif
