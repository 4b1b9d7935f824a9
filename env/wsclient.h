// wsclient.h — a small blocking steer.v1 client (libwebsockets, its own poll loop: one connection,
// one thread), for command-line tools that send a message and wait for answers: `steer simulate
// --server` and `steer job`. Not for the server's own use. Messages are whole msgpack maps.
#ifndef ENV_WSCLIENT_H
#define ENV_WSCLIENT_H

#include <stddef.h>

#define WSC_TX_MAX 16384
#define WSC_RX_MAX (1 << 20)

typedef struct WscMsg {
    struct WscMsg *next;
    size_t len;
    unsigned char data[];
} WscMsg;

struct lws_context;
struct lws;

typedef struct {
    struct lws_context *ctx;
    struct lws *wsi;
    int state; // 0 connecting, 1 open, 2 closed or failed
    double timeout_s;
    unsigned char *tx; // LWS_PRE + WSC_TX_MAX
    size_t tx_len;
    unsigned char *rx;
    size_t rx_len;
    WscMsg *head, *tail;
} Wsc;

// Connects to url (ws://HOST:PORT/ or .../ws; no TLS) with subprotocol steer.v1, waiting at most
// timeout_s (also the limit of every later wait). Returns 0 or -1 with err set; wsc_close after.
int wsc_open(Wsc *c, const char *url, double timeout_s, char *err, size_t errlen);
// A msgpack-c packer write callback that appends to the message being built (data = the Wsc).
int wsc_write(void *data, const char *buf, size_t len);
// Sends the message built with wsc_write and waits until it is written. Returns 0 or -1.
int wsc_flush(Wsc *c);
// The next message (free() it), or NULL after the timeout or on a closed connection.
WscMsg *wsc_recv(Wsc *c);
void wsc_close(Wsc *c);

#endif
