// serve.c — `steer serve`: its options into a ServeOptions, the token files read, then the server
// (server/serve.h) runs until it is stopped. No serving here.
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "cmd/args.h"
#include "cmd/commands.h"
#include "server/proto.h"
#include "server/serve.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: steer serve [options]\n"
            "  --model PATH            generator checkpoint (default models/fmnist32c.safetensors)\n"
            "  --host ADDR             address to listen on (default 127.0.0.1)\n"
            "  --port N                port (default 8080; 0 picks a free one)\n"
            "  --web DIR               browser client served at / (default clients/web)\n"
            "  --data DIR              feedback store, DIR/steer.db (default data)\n"
            "  --batch N               largest generator batch (default 64)\n"
            "  --batch-deadline-ms MS  longest wait for a batch to fill (default 2)\n"
            "  --device D              where frames are drawn: auto (default: the GPU when this\n"
            "                          build has CUDA and a GPU is usable), cpu, cuda; a GPU that\n"
            "                          cannot be used falls back to the CPU, saying why\n"
            "  --tf32                  the GPU's convolutions and matrix products in TF32 (faster;\n"
            "                          ~1e-3 relative rounding per product; default FP32)\n"
            "  --bf16                  convolutions on BF16 inputs, accumulating in FP32: on the\n"
            "                          CPU where it has AVX512-BF16 or AMX (elsewhere FP32, saying\n"
            "                          why), on the GPU cuDNN's (default FP32)\n"
            "  --max-connections N     WebSocket connections at once (default 1024)\n"
            "  --max-message BYTES     largest message from a client (default 65536)\n"
            "  --queue-frames N        frames requested or unsent per connection (default 16)\n"
            "  --policy-pool N         prior frames each user's policy gradient is estimated on\n"
            "                          (default 2048; 0 turns learning off: frames from the prior)\n"
            "  --workers N             background training workers at once (default 1; 0 = no jobs)\n"
            "  --admin-token-file FILE hello with this file's first line as token may send `job`\n"
            "  --population-every N    refit the population model (every user's prior, new users'\n"
            "                          policy) every N stored feedback (default 256; 0 = never)\n"
            "  --history N             recent frames remembered per session (default 64)\n"
            "  --max-rate N            messages per second per connection, burst 2N (default 2000)\n"
            "  --idle-timeout S        close connections silent this long (default 120)\n"
            "  --ping-interval S       ping idle connections; hang up 10 s later (default 20)\n"
            "  --token-file FILE       clients must send this file's first line as hello's token\n"
            "  --origin LIST           comma-separated Origin allow-list for WebSocket handshakes\n"
            "  --seed N                seed of the streams' latents (default: from the clock)\n"
            "  --max-unread N          frames sent ahead of what the client confirmed reading (32)\n"
            "  --sndbuf BYTES          socket send buffer per connection (default 32768; 0: kernel autotuning)\n"
            "  --quiet                 print only the serving line and errors\n");
}

static int parse_options(ServeOptions *o, const char **token_file, const char **admin_token_file,
                         int argc, char **argv) {
    *o = (ServeOptions){.model_path = "models/fmnist32c.safetensors",
                        .host = "127.0.0.1",
                        .web_dir = "clients/web",
                        .data_dir = "data",
                        .port = 8080,
                        .batch = 64,
                        .deadline_ms = 2.0,
                        .max_connections = 1024,
                        .max_message = 65536,
                        .queue_frames = 16,
                        .history = 64,
                        .max_rate = 2000,
                        .idle_timeout = 120,
                        .ping_interval = 20,
                        .sndbuf = 32768,
                        .max_unread = 32,
                        .policy_pool = 2048,
                        .population_every = 256,
                        .workers = 1,
                        .seed = (uint64_t)time(NULL)};
    static const struct option opts[] = {
        {"model", 1, 0, 'm'},         {"host", 1, 0, 'H'},          {"port", 1, 0, 'p'},
        {"web", 1, 0, 'w'},           {"batch", 1, 0, 'b'},         {"batch-deadline-ms", 1, 0, 'd'},
        {"max-connections", 1, 0, 'c'}, {"max-message", 1, 0, 'M'}, {"queue-frames", 1, 0, 'q'},
        {"history", 1, 0, 'y'},       {"max-rate", 1, 0, 'r'},      {"idle-timeout", 1, 0, 'i'},
        {"ping-interval", 1, 0, 'P'}, {"token-file", 1, 0, 't'},    {"origin", 1, 0, 'o'},
        {"seed", 1, 0, 's'},          {"quiet", 0, 0, 'Q'},         {"help", 0, 0, 'h'},
        {"sndbuf", 1, 0, 'B'},        {"max-unread", 1, 0, 'U'},    {"data", 1, 0, 'D'},
        {"policy-pool", 1, 0, 'L'},   {"population-every", 1, 0, 'E'},
        {"workers", 1, 0, 'W'},       {"admin-token-file", 1, 0, 'A'},
        {"device", 1, 0, 'V'},        {"tf32", 0, 0, 'T'},          {"bf16", 0, 0, 'F'},
        {0, 0, 0, 0}};
    int ch;
    long v;
    float fv;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case 'm': o->model_path = optarg; break;
        case 'H': o->host = optarg; break;
        case 'w': o->web_dir = optarg; break;
        case 'D': o->data_dir = optarg; break;
        case 't': *token_file = optarg; break;
        case 'o': o->origins = optarg; break;
        case 'Q': o->quiet = 1; break;
        case 'p': if (args_long("serve", optarg, 0, 65535, "--port", &v)) return 2; o->port = (int)v; break;
        case 'b': if (args_long("serve", optarg, 1, 1024, "--batch", &v)) return 2; o->batch = (int)v; break;
        case 'd': if (args_float("serve", optarg, 0, 1000, "--batch-deadline-ms", &fv)) return 2; o->deadline_ms = fv; break;
        case 'c': if (args_long("serve", optarg, 1, 100000, "--max-connections", &v)) return 2; o->max_connections = (int)v; break;
        case 'M': if (args_long("serve", optarg, 64, 64L << 20, "--max-message", &v)) return 2; o->max_message = v; break;
        case 'q': if (args_long("serve", optarg, 2, 4096, "--queue-frames", &v)) return 2; o->queue_frames = (int)v; break;
        case 'y': if (args_long("serve", optarg, 1, 100000, "--history", &v)) return 2; o->history = (int)v; break;
        case 'r': if (args_float("serve", optarg, 1, 1e7, "--max-rate", &fv)) return 2; o->max_rate = fv; break;
        case 'i': if (args_long("serve", optarg, 1, 86400, "--idle-timeout", &v)) return 2; o->idle_timeout = (int)v; break;
        case 'P': if (args_long("serve", optarg, 1, 3600, "--ping-interval", &v)) return 2; o->ping_interval = (int)v; break;
        case 's': if (args_long("serve", optarg, 0, LONG_MAX, "--seed", &v)) return 2; o->seed = (uint64_t)v; break;
        case 'B': if (args_long("serve", optarg, 0, 64L << 20, "--sndbuf", &v)) return 2; o->sndbuf = (int)v; break;
        case 'U': if (args_long("serve", optarg, SERVE_PING_EVERY + 1, 1 << 20, "--max-unread", &v)) return 2; o->max_unread = (int)v; break;
        case 'L': if (args_long("serve", optarg, 0, 1 << 20, "--policy-pool", &v)) return 2; o->policy_pool = v; break;
        case 'W': if (args_long("serve", optarg, 0, 64, "--workers", &v)) return 2; o->workers = (int)v; break;
        case 'A': *admin_token_file = optarg; break;
        case 'V':
            if (device_parse(optarg, &o->device)) {
                fprintf(stderr, "steer serve: --device '%s': expected auto, cpu or cuda\n", optarg);
                return 2;
            }
            break;
        case 'E': if (args_long("serve", optarg, 0, 1L << 30, "--population-every", &v)) return 2; o->population_every = v; break;
        case 'T': device_tf32_set(1); break;
        case 'F': device_bf16_set(1, NULL, 0); break; // the device line says if the CPU cannot
        case 'h': usage(stdout); return 1;
        default: usage(stderr); return 2;
        }
    }
    return args_none_left("serve", argc, argv) ? 2 : 0;
}

// The first line of path into out (a token of 1..PROTO_TOKEN_MAX bytes). Returns 0 or -1 (printed).
static int read_token_file(const char *opt, const char *path, char *out) {
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "steer serve: cannot read %s %s: %s\n", opt, path, strerror(errno));
        return -1;
    }
    char line[PROTO_TOKEN_MAX + 2] = {0};
    if (!fgets(line, sizeof line, f)) line[0] = 0;
    fclose(f);
    line[strcspn(line, "\r\n")] = 0;
    if (!line[0] || strlen(line) > PROTO_TOKEN_MAX) {
        fprintf(stderr, "steer serve: %s %s: the first line must be a token of 1..%d bytes\n", opt,
                path, PROTO_TOKEN_MAX);
        return -1;
    }
    memcpy(out, line, strlen(line) + 1);
    return 0;
}

int cmd_serve(int argc, char **argv) {
    ServeOptions opt;
    const char *token_file = NULL, *admin_token_file = NULL;
    int rc = parse_options(&opt, &token_file, &admin_token_file, argc, argv);
    if (rc) return rc == 1 ? 0 : rc;
    static char token[PROTO_TOKEN_MAX + 1], admin_token[PROTO_TOKEN_MAX + 1];
    if (token_file) {
        if (read_token_file("--token-file", token_file, token)) return 2;
        opt.token = token;
    }
    if (admin_token_file) {
        if (read_token_file("--admin-token-file", admin_token_file, admin_token)) return 2;
        opt.admin_token = admin_token;
    }
    return serve_run(&opt);
}
