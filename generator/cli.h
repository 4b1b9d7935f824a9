// cli.h — the `steer train` and `steer sample` commands. Each returns the process exit status:
// 0 on success, 1 on a runtime error (message on stderr), 2 on a usage error.
#ifndef GENERATOR_CLI_H
#define GENERATOR_CLI_H

int cli_train(int argc, char **argv);

// Helpers every command shares. cli_now_s: monotonic seconds. cli_parse_long / cli_parse_float:
// a whole number in [lo, hi] for option `opt` of `steer CMD`, or -1 after printing why.
double cli_now_s(void);
int cli_parse_long(const char *cmd, const char *s, long lo, long hi, const char *opt, long *out);
int cli_parse_float(const char *cmd, const char *s, double lo, double hi, const char *opt,
                    float *out);
int cli_sample(int argc, char **argv);

#endif
