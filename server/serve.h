// serve.h — `steer serve`'s server: the event loop (libuv owns the process, libwebsockets runs
// on its loop as a foreign loop), HTTP and the steer.v1 WebSocket protocol on one port, with the
// generation, store and learning threads and the job workers behind it (docs/architecture.md).
// The command that fills ServeOptions from argv is cmd/serve.c.
#ifndef SERVER_SERVE_H
#define SERVER_SERVE_H

#include <stdint.h>

#include "kernels/device.h"

#define SERVE_PING_EVERY 8 // frames between read-confirmation pings (--max-unread must exceed it)

// What to serve and how; every field is a `steer serve` option (README, "steer serve").
typedef struct {
    const char *model_path, *host, *web_dir, *origins, *data_dir;
    const char *token;       // clients must send it in hello (NULL: anyone may connect)
    const char *admin_token; // a hello with it makes the session an admin (NULL: none)
    int workers;
    Device device; // --device: where generation runs (auto: the GPU when there is one)
    int port, batch, max_connections, queue_frames, history, idle_timeout, ping_interval, quiet;
    int sndbuf, max_unread;
    long max_message, policy_pool, population_every;
    double deadline_ms, max_rate;
    uint64_t seed;
} ServeOptions;

// Loads the model, starts every thread, listens, and serves until SIGINT or SIGTERM, then stops
// cleanly (frames in flight finished, sockets closed with 1001, workers checkpointed). Returns the
// process exit status: 0 after a clean shutdown, 1 when start-up fails (said on stderr), 2 for a
// bad --origin list.
int serve_run(const ServeOptions *opt);

#endif
