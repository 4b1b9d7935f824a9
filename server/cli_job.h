// cli_job.h — `steer job`: submit, list, watch, cancel, pause, resume and promote background jobs
// and list or roll back model versions of a running `steer serve` (an admin connection).
#ifndef SERVER_CLI_JOB_H
#define SERVER_CLI_JOB_H

int cli_job(int argc, char **argv);

#endif
