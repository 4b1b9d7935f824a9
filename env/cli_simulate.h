// cli_simulate.h — `steer simulate` (env/cli_simulate.c).
#ifndef ENV_CLI_SIMULATE_H
#define ENV_CLI_SIMULATE_H
int cli_simulate(int argc, char **argv);
#endif
