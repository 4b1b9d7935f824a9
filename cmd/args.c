// args.c — option values, leftovers, usage and durations for every command (args.h).
#include "cmd/args.h"

#include <errno.h>
#include <getopt.h>
#include <stdlib.h>

int args_long(const char *cmd, const char *s, long lo, long hi, const char *opt, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "steer %s: %s '%s': expected an integer in [%ld, %ld]\n", cmd, opt, s, lo,
                hi);
        return -1;
    }
    *out = v;
    return 0;
}

int args_float(const char *cmd, const char *s, double lo, double hi, const char *opt, float *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) {
        fprintf(stderr, "steer %s: %s '%s': expected a number in [%g, %g]\n", cmd, opt, s, lo, hi);
        return -1;
    }
    *out = (float)v;
    return 0;
}

int args_none_left(const char *cmd, int argc, char **argv) {
    if (optind < argc) {
        fprintf(stderr, "steer %s: unexpected argument '%s' (see --help)\n", cmd, argv[optind]);
        return -1;
    }
    return 0;
}

int args_usage_exit(void (*usage)(FILE *), int opt) {
    usage(opt == 'h' ? stdout : stderr);
    return opt == 'h' ? 0 : 2;
}

void args_duration(char *out, size_t len, double s) {
    if (s < 0 || s > 1e8) s = 0;
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(out, len, "%ldh%02ldm", t / 3600, t / 60 % 60);
    else
        snprintf(out, len, "%ldm%02lds", t / 60, t % 60);
}
