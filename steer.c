// steer.c — the one binary: dispatches to the subcommands of each part.
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        printf("usage: steer <command> [options]\n");
        return argc < 2 ? 2 : 0;
    }
    fprintf(stderr, "steer: unknown command '%s' (try steer --help)\n", argv[1]);
    return 2;
}
