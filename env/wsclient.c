// wsclient.c — the blocking steer.v1 client of wsclient.h.
#include "env/wsclient.h"

#include <libwebsockets.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/clock.h"


static int wsc_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                        size_t len) {
    (void)user;
    Wsc *c = lws_get_opaque_user_data(wsi);
    if (!c) return 0;
    switch (reason) {
    case LWS_CALLBACK_CLIENT_ESTABLISHED: c->state = 1; break;
    case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
    case LWS_CALLBACK_CLIENT_CLOSED: c->state = 2; break;
    case LWS_CALLBACK_CLIENT_WRITEABLE:
        if (c->tx_len) {
            if (lws_write(wsi, c->tx + LWS_PRE, c->tx_len, LWS_WRITE_BINARY) < (int)c->tx_len) return -1;
            c->tx_len = 0;
        }
        break;
    case LWS_CALLBACK_CLIENT_RECEIVE:
        if (lws_is_first_fragment(wsi)) c->rx_len = 0;
        if (c->rx_len + len > WSC_RX_MAX) return -1;
        memcpy(c->rx + c->rx_len, in, len);
        c->rx_len += len;
        if (lws_is_final_fragment(wsi)) {
            WscMsg *m = malloc(sizeof *m + c->rx_len);
            if (!m) return -1;
            m->next = NULL;
            m->len = c->rx_len;
            memcpy(m->data, c->rx, c->rx_len);
            if (c->tail) c->tail->next = m;
            else c->head = m;
            c->tail = m;
            c->rx_len = 0;
        }
        break;
    default: break;
    }
    return 0;
}

static const struct lws_protocols wsc_protocols[] = {
    {"steer.v1", wsc_callback, 0, 65536, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

void wsc_close(Wsc *c) {
    if (c->ctx) lws_context_destroy(c->ctx);
    for (WscMsg *m = c->head, *n; m; m = n) {
        n = m->next;
        free(m);
    }
    free(c->rx);
    free(c->tx);
    memset(c, 0, sizeof *c);
}

int wsc_open(Wsc *c, const char *url, double timeout_s, char *err, size_t errlen) {
    memset(c, 0, sizeof *c);
    char buf[512];
    snprintf(buf, sizeof buf, "%s", url);
    const char *prot, *address, *path;
    int port;
    if (lws_parse_uri(buf, &prot, &address, &port, &path) || (strcmp(prot, "ws") && strcmp(prot, "http"))) {
        snprintf(err, errlen, "the server must be ws://HOST:PORT/ (no TLS), not '%s'", url);
        return -1;
    }
    char full_path[256];
    snprintf(full_path, sizeof full_path, "/%s", path[0] == '/' ? path + 1 : path);
    if (!strcmp(full_path, "/")) snprintf(full_path, sizeof full_path, "/ws");
    c->timeout_s = timeout_s;
    c->rx = malloc(WSC_RX_MAX);
    c->tx = malloc(LWS_PRE + WSC_TX_MAX);
    lws_set_log_level(LLL_ERR, NULL);
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.port = CONTEXT_PORT_NO_LISTEN;
    info.protocols = wsc_protocols;
    info.gid = -1;
    info.uid = -1;
    c->ctx = c->rx && c->tx ? lws_create_context(&info) : NULL;
    if (!c->ctx) {
        snprintf(err, errlen, "cannot create a libwebsockets context");
        return -1;
    }
    struct lws_client_connect_info cc;
    memset(&cc, 0, sizeof cc);
    cc.context = c->ctx;
    cc.address = address;
    cc.port = port;
    cc.path = full_path;
    cc.host = address;
    cc.protocol = "steer.v1";
    cc.local_protocol_name = "steer.v1";
    cc.ietf_version_or_minus_one = -1;
    cc.opaque_user_data = c;
    cc.pwsi = &c->wsi;
    double t0 = clock_now_s();
    if (!lws_client_connect_via_info(&cc)) c->state = 2;
    while (c->state == 0 && clock_now_s() - t0 < c->timeout_s) lws_service(c->ctx, 50);
    if (c->state != 1) {
        snprintf(err, errlen, "cannot connect to %s", url);
        return -1;
    }
    return 0;
}

// Sends one msgpack message (packed into c->tx) and waits until it is written.
int wsc_flush(Wsc *c) {
    lws_callback_on_writable(c->wsi);
    double t0 = clock_now_s();
    while (c->tx_len && c->state == 1 && clock_now_s() - t0 < c->timeout_s) lws_service(c->ctx, 50);
    return c->tx_len || c->state != 1 ? -1 : 0;
}

int wsc_write(void *data, const char *buf, size_t len) {
    Wsc *c = data;
    if (c->tx_len + len > WSC_TX_MAX) return -1;
    memcpy(c->tx + LWS_PRE + c->tx_len, buf, len);
    c->tx_len += len;
    return 0;
}

// The next message, or NULL after c->timeout_s or a closed connection. Free it.
WscMsg *wsc_recv(Wsc *c) {
    double t0 = clock_now_s();
    while (!c->head && c->state == 1 && clock_now_s() - t0 < c->timeout_s) lws_service(c->ctx, 50);
    WscMsg *m = c->head;
    if (m) {
        c->head = m->next;
        if (!c->head) c->tail = NULL;
    }
    return m;
}

