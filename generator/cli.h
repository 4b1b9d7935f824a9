// cli.h — the `steer train` and `steer sample` commands. Each returns the process exit status:
// 0 on success, 1 on a runtime error (message on stderr), 2 on a usage error.
#ifndef GENERATOR_CLI_H
#define GENERATOR_CLI_H

int cli_train(int argc, char **argv);
int cli_sample(int argc, char **argv);

#endif
