// metrics.c — Prometheus text rendering of the server's figures (see metrics.h).
#include "server/metrics.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void histogram_observe(Histogram *h, double v) {
    int i = 0;
    while (i < h->n_bounds && v > h->bounds[i]) i++;
    h->counts[i]++;
    h->total++;
    h->sum += v;
}

double histogram_quantile(const Histogram *h, double q) {
    if (!h->total) return 0.0;
    double target = q * (double)h->total;
    uint64_t acc = 0;
    for (int i = 0; i < h->n_bounds; i++) {
        acc += h->counts[i];
        if ((double)acc >= target) return h->bounds[i];
    }
    return INFINITY;
}

int metrics_init(Metrics *m) {
    memset(m, 0, sizeof *m);
    static const double batch_bounds[] = {1, 2, 4, 8, 16, 32, 64, 128, 256};
    static const double gen_bounds[] = {0.0005, 0.001, 0.002, 0.005, 0.01, 0.02,
                                        0.05,   0.1,   0.2,   0.5,   1.0};
    m->batch_size.n_bounds = (int)(sizeof batch_bounds / sizeof *batch_bounds);
    memcpy(m->batch_size.bounds, batch_bounds, sizeof batch_bounds);
    m->generation_s.n_bounds = (int)(sizeof gen_bounds / sizeof *gen_bounds);
    memcpy(m->generation_s.bounds, gen_bounds, sizeof gen_bounds);
    return pthread_mutex_init(&m->lock, NULL) ? -1 : 0;
}

void metrics_free(Metrics *m) { pthread_mutex_destroy(&m->lock); }

typedef struct {
    char *p;
    size_t cap, len;
    int overflow;
} Out;

static void out_printf(Out *o, const char *fmt, ...) {
    if (o->overflow) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(o->p + o->len, o->cap - o->len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= o->cap - o->len) {
        o->overflow = 1;
        return;
    }
    o->len += (size_t)n;
}

static void metric(Out *o, const char *name, const char *type, const char *help, double v) {
    if (isnan(v)) // the exposition format spells it NaN
        out_printf(o, "# HELP %s %s\n# TYPE %s %s\n%s NaN\n", name, help, name, type, name);
    else
        out_printf(o, "# HELP %s %s\n# TYPE %s %s\n%s %.17g\n", name, help, name, type, name, v);
}

// A counter family with one label: n series name{label="values[i]"} counts[i].
static void labeled(Out *o, const char *name, const char *type, const char *help, const char *label,
                    const char *const *values, const uint64_t *counts, int n) {
    out_printf(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
    for (int i = 0; i < n; i++)
        out_printf(o, "%s{%s=\"%s\"} %llu\n", name, label, values[i], (unsigned long long)counts[i]);
}

static void histogram(Out *o, const char *name, const char *help, const Histogram *h) {
    out_printf(o, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t acc = 0;
    for (int i = 0; i < h->n_bounds; i++) {
        acc += h->counts[i];
        out_printf(o, "%s_bucket{le=\"%g\"} %llu\n", name, h->bounds[i], (unsigned long long)acc);
    }
    out_printf(o, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.17g\n%s_count %llu\n", name,
               (unsigned long long)h->total, name, h->sum, name, (unsigned long long)h->total);
}

long metrics_render(Metrics *m, const MetricsExtra *x, char *out, size_t cap) {
    Out o = {out, cap, 0, 0};
    metric(&o, "steer_connections", "gauge", "Open WebSocket connections.", (double)m->connections);
    metric(&o, "steer_connections_total", "counter", "WebSocket connections accepted.",
           (double)m->connections_total);
    labeled(&o, "steer_connections_refused_total", "counter", "Handshakes refused, by reason.", "reason",
            (const char *const[]){"limit", "origin", "protocol"},
            (const uint64_t[]){m->refused_limit, m->refused_origin, m->refused_protocol}, 3);
    metric(&o, "steer_sessions", "gauge", "Sessions that said hello.", (double)m->sessions);
    metric(&o, "steer_streams", "gauge", "Open streams.", (double)m->streams);
    metric(&o, "steer_frames_sent_total", "counter", "Frames written to clients.",
           (double)m->frames_sent);
    labeled(&o, "steer_frames_dropped_total", "counter", "Frames drawn but not sent, by reason.", "reason",
            (const char *const[]){"disconnect", "stop"},
            (const uint64_t[]){m->dropped_disconnect, m->dropped_stop}, 2);
    metric(&o, "steer_frame_bytes_sent_total", "counter", "Bytes of frame messages written.",
           (double)m->frame_bytes_sent);
    metric(&o, "steer_messages_received_total", "counter", "Client messages received.",
           (double)m->messages_received);
    metric(&o, "steer_errors_sent_total", "counter", "Error messages sent.", (double)m->errors_sent);
    labeled(&o, "steer_connections_closed_total", "counter",
            "Connections closed by the server, by close code.", "code",
            (const char *const[]){"1001", "1008", "1009"},
            (const uint64_t[]){m->closed_1001, m->closed_1008, m->closed_1009}, 3);
    metric(&o, "steer_queue_depth", "gauge", "Frame requests waiting for the generation thread.",
           (double)x->queue_depth);
    metric(&o, "steer_frames_queued", "gauge", "Frames drawn and waiting to be written.",
           (double)m->frames_queued);
    metric(&o, "steer_frames_in_flight", "gauge", "Frames requested and not yet drawn.",
           (double)m->frames_in_flight);
    pthread_mutex_lock(&m->lock);
    histogram(&o, "steer_batch_size", "Frames per generator batch.", &m->batch_size);
    histogram(&o, "steer_generation_seconds", "Seconds per batch: generator forward and encoding.",
              &m->generation_s);
    pthread_mutex_unlock(&m->lock);
    metric(&o, "steer_loop_lag_seconds", "gauge", "How late the event loop's 100 ms timer last fired.",
           m->loop_lag_s);
    metric(&o, "steer_loop_lag_max_seconds", "gauge", "Largest event-loop lag since start.",
           m->loop_lag_max_s);
    labeled(&o, "steer_feedback_total", "counter", "Feedback answered, by result.", "result",
            (const char *const[]){"stored", "duplicate", "refused"},
            (const uint64_t[]){x->feedback_stored, x->feedback_duplicates, x->feedback_refused}, 3);
    metric(&o, "steer_feedback_pending", "gauge", "Feedback at the store, not yet answered.",
           (double)x->feedback_pending);
    metric(&o, "steer_store_commits_total", "counter", "Store transactions committed (group commits).",
           (double)x->store_commits);
    metric(&o, "steer_store_commit_seconds_total", "counter", "Seconds spent writing and committing.",
           x->store_commit_s);
    if (x->learning) {
        metric(&o, "steer_policy_users", "gauge", "Users whose policy has learned from feedback.",
               (double)x->policy_users);
        metric(&o, "steer_policy_updates_total", "counter", "Policy updates published.",
               (double)x->policy_updates);
        metric(&o, "steer_policy_feedback_total", "counter", "Feedback events learned from.",
               (double)x->policy_events);
        metric(&o, "steer_policy_failures_total", "counter", "Feedback events or updates that failed.",
               (double)x->policy_failures);
        metric(&o, "steer_policy_comparisons", "gauge", "Comparisons held by all users' reward models.",
               (double)x->policy_comparisons);
        metric(&o, "steer_policy_accuracy_mean", "gauge",
               "Mean over users of the reward model's held-out (out-of-bag) accuracy.",
               x->policy_accuracy_mean);
        metric(&o, "steer_policy_kl_mean", "gauge", "Mean over users of the policy's KL to the prior (nats).",
               x->policy_kl_mean);
        metric(&o, "steer_policy_kl_max", "gauge", "Largest policy KL to the prior (nats).",
               x->policy_kl_max);
        metric(&o, "steer_population_refits_total", "counter",
               "Refits of the population model (every user's prior, new users' policy).",
               (double)x->population_refits);
        metric(&o, "steer_population_comparisons", "gauge",
               "Comparisons (all users') the population model last refitted on.",
               (double)x->population_comparisons);
        metric(&o, "steer_population_accuracy", "gauge",
               "Held-out (out-of-bag) accuracy of the population's reward model.",
               x->population_accuracy);
        histogram(&o, "steer_policy_update_seconds",
                  "From a feedback's arrival to its user's new policy drawing the next frames.",
                  x->policy_latency);
    }
    if (x->jobs_on) {
        labeled(&o, "steer_jobs", "gauge", "Background jobs, by state.", "state",
                (const char *const[]){"queued", "running", "paused", "done", "failed", "cancelled"},
                x->jobs_by_state, 6);
        metric(&o, "steer_model_swaps_total", "counter",
               "Hot swaps of the served generator (promotions and rollbacks).", (double)x->model_swaps);
        metric(&o, "steer_models_registered", "gauge", "Model versions in the registry.",
               (double)x->models_registered);
    }
    metric(&o, "steer_model_version", "gauge", "Version of the served generator.",
           (double)x->model_version);
    metric(&o, "steer_uptime_seconds", "gauge", "Seconds since start.", x->uptime_s);
    return o.overflow ? -1 : (long)o.len;
}
