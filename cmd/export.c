// export.c — `steer export`: the stored feedback as JSONL (trl) or CSV (server/store.h,
// store_export). It reads the database read-only, so it can run beside a live server.
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cmd/args.h"
#include "cmd/commands.h"
#include "server/store.h"

static void usage(FILE *f) {
    fprintf(f, "usage: steer export [--data data] [--format trl|csv] [--out FILE]\n"
               "Writes the stored feedback: trl is JSONL, one object per feedback with the\n"
               "frames it names (chosen/rejected for pair and choose, rated for rate), each with\n"
               "its class, model and policy versions and latent; csv is one row per frame.\n");
}

int cmd_export(int argc, char **argv) {
    const char *dir = "data", *format = "trl", *out_path = NULL;
    static const struct option opts[] = {{"data", 1, 0, 'd'}, {"format", 1, 0, 'f'},
                                         {"out", 1, 0, 'o'},  {"help", 0, 0, 'h'},
                                         {0, 0, 0, 0}};
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (o) {
        case 'd': dir = optarg; break;
        case 'f': format = optarg; break;
        case 'o': out_path = optarg; break;
        default: return args_usage_exit(usage, o);
        }
    }
    if (args_none_left("export", argc, argv)) return 2;
    int trl = !strcmp(format, "trl");
    if (!trl && strcmp(format, "csv")) {
        fprintf(stderr, "steer export: --format must be trl or csv, not '%s'\n", format);
        return 2;
    }
    FILE *f = out_path ? fopen(out_path, "w") : stdout;
    if (!f) {
        fprintf(stderr, "steer export: cannot write %s: %s\n", out_path, strerror(errno));
        return 1;
    }
    char err[4400];
    long rows = 0;
    int rc = 0;
    if (store_export(dir, trl ? STORE_EXPORT_TRL : STORE_EXPORT_CSV, f, &rows, err, sizeof err)) {
        fprintf(stderr, "steer export: %s\n", err);
        rc = 1;
    } else {
        fprintf(stderr, "steer export: %ld feedback rows from %s/steer.db\n", rows, dir);
    }
    if (out_path && fclose(f)) {
        fprintf(stderr, "steer export: writing %s failed\n", out_path);
        rc = 1;
    }
    return rc;
}
