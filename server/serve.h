// serve.h — `steer serve`: the event-loop server (libuv owns the process, libwebsockets runs on its
// loop as a foreign loop), HTTP and the steer.v1 WebSocket protocol on one port.
#ifndef SERVER_SERVE_H
#define SERVER_SERVE_H

// The `steer serve` command: parses options, loads the model, serves until SIGINT/SIGTERM.
// Returns the process exit status (0 after a clean shutdown, 1 on start-up failure, 2 on usage).
int cli_serve(int argc, char **argv);

#endif
