// args.h — what every command shares to read its options (getopt_long does the parsing) and to
// print its progress: numbers checked against their range, a leftover argument refused, the
// usage printed where it belongs, durations in one format. Messages go to stderr, prefixed
// `steer CMD:`; a function that returns -1 has printed why, and the command exits 2.
#ifndef CMD_ARGS_H
#define CMD_ARGS_H

#include <stddef.h>
#include <stdio.h>

// s as a whole number in [lo, hi] for option opt of `steer cmd` into *out. 0, or -1 (printed).
int args_long(const char *cmd, const char *s, long lo, long hi, const char *opt, long *out);
// s as a number in [lo, hi] (finite) for option opt into *out. 0, or -1 (printed).
int args_float(const char *cmd, const char *s, double lo, double hi, const char *opt, float *out);
// After getopt_long: -1 (printed) if a non-option argument is left, else 0.
int args_none_left(const char *cmd, int argc, char **argv);
// The last case of an option switch: opt 'h' (--help) prints usage on stdout and returns 0;
// anything else is an option getopt has complained of already: usage on stderr, returns 2.
int args_usage_exit(void (*usage)(FILE *), int opt);
// seconds as "1h02m" or "3m07s" into out (len bytes); a negative or absurd value prints 0m00s.
void args_duration(char *out, size_t len, double seconds);

#endif
