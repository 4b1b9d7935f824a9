// job.c — `steer job`: background jobs and model versions of a running `steer serve`, through
// the same `job` messages the browser's dashboard sends (docs/protocol.md), as an admin.

#include <getopt.h>
#include <jansson.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/args.h"
#include "cmd/commands.h"
#include "util/clock.h"
#include "server/proto.h"
#include "env/wsclient.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: steer job COMMAND [ARG] [--server URL] [--token-file FILE] [--json]\n"
            "  submit SPEC.json   queue a job (docs/jobs.md lists the spec's keys; - reads stdin)\n"
            "  list               the jobs, newest last\n"
            "  watch [ID]         print job updates (of job ID, or all) until ID ends or Ctrl-C\n"
            "  cancel ID | pause ID | resume ID | promote ID\n"
            "  models             the model versions in the registry and which one is served\n"
            "  rollback [VERSION] serve VERSION again (default: the served version's parent)\n"
            "  --server URL       default ws://127.0.0.1:8080/\n"
            "  --token-file FILE  the server's --admin-token-file (default: $STEER_ADMIN_TOKEN)\n"
            "  --wait             submit, rollback: wait until the job ends / the model is served\n"
            "  --json             print the server's messages as JSON lines\n");
}

typedef struct {
    Wsc ws;
    int json;
} Conn;

static void pack_str(msgpack_packer *pk, const char *s) { msgpack_pack_str_with_body(pk, s, strlen(s)); }

// Prints a message: JSON, or a line for people. Returns its type in t (cap 16) and the job object.
static void show(Conn *c, const msgpack_object *o, json_t *j) {
    if (c->json) {
        char *s = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
        if (s) puts(s);
        free(s);
        return;
    }
    (void)o;
    const char *t = json_string_value(json_object_get(j, "t"));
    const char *op = json_string_value(json_object_get(j, "op"));
    json_t *job = json_object_get(j, "job"), *model = json_object_get(j, "model");
    if (t && !strcmp(t, "error")) {
        printf("error %s: %s\n", json_string_value(json_object_get(j, "code")),
               json_string_value(json_object_get(j, "msg")));
    } else if (t && !strcmp(t, "model")) {
        printf("now serving model version %lld\n", (long long)json_integer_value(json_object_get(j, "version")));
    } else if (job) {
        json_t *fd = json_object_get(job, "fd"), *pfd = json_object_get(job, "parent_fd");
        printf("job %lld  %-9s %lld/%lld", (long long)json_integer_value(json_object_get(job, "id")),
               json_string_value(json_object_get(job, "state")),
               (long long)json_integer_value(json_object_get(job, "step")),
               (long long)json_integer_value(json_object_get(job, "steps")));
        json_t *ld = json_object_get(job, "loss_d"), *lg = json_object_get(job, "loss_g");
        if (json_is_number(ld) && json_is_number(lg))
            printf("  loss_d %.4f loss_g %.4f", json_number_value(ld), json_number_value(lg));
        if (json_is_number(fd)) printf("  FD %.3f", json_number_value(fd));
        if (json_is_number(pfd)) printf(" (served %.3f)", json_number_value(pfd));
        long long mv = json_integer_value(json_object_get(job, "model_version"));
        if (mv) printf("  -> model version %lld", mv);
        printf("  %s\n", json_string_value(json_object_get(job, "message")));
    } else if (model) {
        json_t *fd = json_object_get(model, "fd");
        printf("model %lld  parent %lld  job %lld  sha256 %.12s  FD ",
               (long long)json_integer_value(json_object_get(model, "version")),
               (long long)json_integer_value(json_object_get(model, "parent")),
               (long long)json_integer_value(json_object_get(model, "job")),
               json_string_value(json_object_get(model, "sha256")));
        if (json_is_number(fd)) printf("%.3f", json_number_value(fd));
        else printf("-");
        printf("  %s\n", json_string_value(json_object_get(model, "path")));
    } else if (op && json_object_get(j, "count")) {
        printf("%lld %s; serving model version %lld\n",
               (long long)json_integer_value(json_object_get(j, "count")),
               !strcmp(op, "models") ? "model versions" : !strcmp(op, "list") ? "jobs" : op,
               (long long)json_integer_value(json_object_get(j, "served")));
    }
    fflush(stdout);
}

// The next message as JSON (NULL: timeout or closed connection).
static json_t *next(Conn *c) {
    for (;;) {
        WscMsg *m = wsc_recv(&c->ws);
        if (!m) return NULL;
        msgpack_unpacked u;
        msgpack_unpacked_init(&u);
        json_t *j = NULL;
        if (msgpack_unpack_next(&u, (const char *)m->data, m->len, NULL) == MSGPACK_UNPACK_SUCCESS)
            j = proto_json_of(&u.data);
        msgpack_unpacked_destroy(&u);
        free(m);
        if (!j) continue; // a frame's bytes or NaN: not ours to show
        const char *t = json_string_value(json_object_get(j, "t"));
        if (t && (!strcmp(t, "job") || !strcmp(t, "error") || !strcmp(t, "model") ||
                  !strcmp(t, "welcome")))
            return j;
        json_decref(j);
    }
}

static const char *str(json_t *j, const char *k) {
    const char *s = json_string_value(json_object_get(j, k));
    return s ? s : "";
}

static int is_end(const char *state) {
    return !strcmp(state, "done") || !strcmp(state, "failed") || !strcmp(state, "cancelled") ||
           !strcmp(state, "paused");
}

int cmd_job(int argc, char **argv) {
    const char *url = "ws://127.0.0.1:8080/", *token_file = NULL;
    int json = 0, wait = 0;
    static const struct option opts[] = {{"server", 1, 0, 's'}, {"token-file", 1, 0, 't'},
                                         {"json", 0, 0, 'j'},   {"wait", 0, 0, 'w'},
                                         {"help", 0, 0, 'h'},   {0, 0, 0, 0}};
    optind = 1;
    int o;
    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (o) {
        case 's': url = optarg; break;
        case 't': token_file = optarg; break;
        case 'j': json = 1; break;
        case 'w': wait = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind >= argc) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[optind], *arg = optind + 1 < argc ? argv[optind + 1] : NULL;
    if (optind + 2 < argc) {
        fprintf(stderr, "steer job: unexpected argument '%s'\n", argv[optind + 2]);
        return 2;
    }
    static const char *const cmds[] = {"submit", "list", "watch", "cancel", "pause", "resume",
                                       "promote", "models", "rollback", NULL};
    int k = 0;
    while (cmds[k] && strcmp(cmds[k], cmd)) k++;
    if (!cmds[k]) {
        fprintf(stderr, "steer job: unknown command '%s'\n", cmd);
        usage(stderr);
        return 2;
    }
    int needs_id = k >= 3 && k <= 6;
    long id = 0;
    if ((needs_id || (k == 8 && arg) || (k == 2 && arg)) &&
        args_long("job", arg ? arg : "", needs_id ? 1 : 0, 1L << 53, "the id", &id))
        return 2;
    if (k == 0 && !arg) {
        fprintf(stderr, "steer job: submit needs a spec file (JSON; - for stdin)\n");
        return 2;
    }
    // the admin token
    char token[PROTO_TOKEN_MAX + 2] = "";
    if (token_file) {
        FILE *f = fopen(token_file, "r");
        if (!f || !fgets(token, sizeof token, f)) {
            fprintf(stderr, "steer job: cannot read --token-file %s\n", token_file);
            if (f) fclose(f);
            return 2;
        }
        fclose(f);
        token[strcspn(token, "\r\n")] = 0;
    } else if (getenv("STEER_ADMIN_TOKEN")) {
        snprintf(token, sizeof token, "%s", getenv("STEER_ADMIN_TOKEN"));
    }
    json_t *spec = NULL;
    if (k == 0) {
        json_error_t je;
        spec = !strcmp(arg, "-") ? json_loadf(stdin, 0, &je) : json_load_file(arg, 0, &je);
        if (!json_is_object(spec)) {
            fprintf(stderr, "steer job: %s: %s\n", arg, spec ? "the spec must be a JSON object" : je.text);
            json_decref(spec);
            return 2;
        }
    }
    Conn c = {.json = json};
    char err[512];
    int status = 1;
    if (wsc_open(&c.ws, url, 30.0, err, sizeof err)) {
        fprintf(stderr, "steer job: %s\n", err);
        goto done;
    }
    msgpack_packer pk;
    msgpack_packer_init(&pk, &c.ws, wsc_write);
    msgpack_pack_map(&pk, token[0] ? 3 : 2);
    pack_str(&pk, "t");
    pack_str(&pk, "hello");
    pack_str(&pk, "user");
    pack_str(&pk, "steer-job");
    if (token[0]) {
        pack_str(&pk, "token");
        pack_str(&pk, token);
    }
    json_t *m;
    if (wsc_flush(&c.ws) || !(m = next(&c)) || strcmp(str(m, "t"), "welcome")) {
        fprintf(stderr, "steer job: %s did not welcome us\n", url);
        goto done;
    }
    json_decref(m);
    if (k != 2) { // every command but watch sends one job message
        const char *op = k == 0 ? "submit" : cmd;
        msgpack_pack_map(&pk, 2 + (needs_id || (k == 8 && arg) || k == 0));
        pack_str(&pk, "t");
        pack_str(&pk, "job");
        pack_str(&pk, "op");
        pack_str(&pk, op);
        if (needs_id) {
            pack_str(&pk, "id");
            msgpack_pack_int64(&pk, id);
        } else if (k == 8 && arg) {
            pack_str(&pk, "version");
            msgpack_pack_int64(&pk, id);
        } else if (k == 0) { // the spec as a msgpack map, through its JSON dump
            pack_str(&pk, "spec");
            msgpack_pack_map(&pk, json_object_size(spec));
            const char *key;
            json_t *v;
            json_object_foreach(spec, key, v) {
                pack_str(&pk, key);
                if (json_is_string(v)) pack_str(&pk, json_string_value(v));
                else if (json_is_integer(v)) msgpack_pack_int64(&pk, json_integer_value(v));
                else if (json_is_real(v)) msgpack_pack_double(&pk, json_real_value(v));
                else if (json_is_true(v)) msgpack_pack_true(&pk);
                else if (json_is_false(v)) msgpack_pack_false(&pk);
                else if (json_is_object(v)) { // `set`: a flat map of switches
                    msgpack_pack_map(&pk, json_object_size(v));
                    const char *k2;
                    json_t *v2;
                    json_object_foreach(v, k2, v2) {
                        pack_str(&pk, k2);
                        if (json_is_string(v2)) pack_str(&pk, json_string_value(v2));
                        else if (json_is_integer(v2)) msgpack_pack_int64(&pk, json_integer_value(v2));
                        else if (json_is_number(v2)) msgpack_pack_double(&pk, json_number_value(v2));
                        else if (json_is_boolean(v2)) json_is_true(v2) ? msgpack_pack_true(&pk) : msgpack_pack_false(&pk);
                        else msgpack_pack_nil(&pk);
                    }
                } else {
                    msgpack_pack_nil(&pk);
                }
            }
        }
        if (wsc_flush(&c.ws)) {
            fprintf(stderr, "steer job: the message did not fit or the connection closed\n");
            goto done;
        }
    }
    long watch_id = k == 2 ? id : 0;
    int following = k == 2 || (wait && (k == 0 || k == 8));
    if (following) c.ws.timeout_s = 1e9; // a job takes as long as it takes
    while ((m = next(&c))) {
        const char *t = str(m, "t"), *op = str(m, "op");
        json_t *job = json_object_get(m, "job");
        long jid = (long)json_integer_value(json_object_get(job, "id"));
        int mine = !watch_id || jid == watch_id;
        if (strcmp(t, "job") || strcmp(op, "update") || following || (needs_id && jid == id)) {
            if (mine || !strcmp(t, "error") || !strcmp(t, "model")) show(&c, NULL, m);
        }
        if (!strcmp(t, "error")) {
            json_decref(m);
            goto done;
        }
        int finished = 0;
        switch (k) {
        case 0: // submit: answered; with --wait, until the job ends (and its promotion settles)
            if (!strcmp(op, "submit")) {
                if (!wait) finished = 1;
                else watch_id = jid;
            } else if (wait && job && jid == watch_id && is_end(str(job, "state")) &&
                       strncmp(str(job, "message"), "done; promoting", 15)) {
                finished = 1;
                status = strcmp(str(job, "state"), "done") != 0;
            }
            break;
        case 1: finished = !strcmp(op, "list") && json_object_get(m, "count"); break;
        case 2: finished = watch_id && job && jid == watch_id && is_end(str(job, "state")); break;
        case 7: finished = !strcmp(op, "models") && json_object_get(m, "count"); break;
        case 8: finished = wait ? !strcmp(t, "model") : !strcmp(op, "rollback"); break;
        default: finished = !strcmp(op, "update") && jid == id; // cancel, pause, resume, promote
        }
        json_decref(m);
        if (finished) {
            if (k != 0 || !wait) status = 0;
            break;
        }
    }
    if (status && !m) fprintf(stderr, "steer job: no answer from %s\n", url);
done:
    json_decref(spec);
    wsc_close(&c.ws);
    return status;
}
