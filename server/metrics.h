// metrics.h — the server's counters, gauges and histograms, rendered in Prometheus text format
// (exposition format 0.0.4). Not a metrics library: a fixed set of figures docs/protocol.md lists.
// Loop-thread figures are plain fields; histograms are also fed from the generation thread, so they
// sit behind a mutex (taken once per batch, not per frame).
#ifndef SERVER_METRICS_H
#define SERVER_METRICS_H
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#define METRICS_MAX_BUCKETS 16

typedef struct {
    int n_bounds;
    double bounds[METRICS_MAX_BUCKETS]; // upper bounds, ascending; +Inf implied
    uint64_t counts[METRICS_MAX_BUCKETS + 1];
    uint64_t total;
    double sum;
} Histogram;

// Records one observation v.
void histogram_observe(Histogram *h, double v);
// Returns the smallest bucket bound at or above the q-quantile (q in [0,1]); +Inf as INFINITY.
double histogram_quantile(const Histogram *h, double q);

typedef struct {
    // loop thread only
    uint64_t connections, connections_total, sessions, streams;
    uint64_t refused_limit, refused_origin, refused_protocol;
    uint64_t frames_sent, frame_bytes_sent, dropped_disconnect, dropped_stop;
    uint64_t messages_received, errors_sent;
    uint64_t closed_1001, closed_1008, closed_1009;
    uint64_t frames_queued, frames_in_flight;
    double loop_lag_s, loop_lag_max_s;
    // shared with the generation thread, under lock
    pthread_mutex_t lock;
    Histogram batch_size, generation_s;
} Metrics;

// Sets bucket bounds; returns 0 or -1 if the mutex cannot be made.
int metrics_init(Metrics *m);
void metrics_free(Metrics *m);

// The figures /metrics reports besides those in Metrics, read by the loop thread at render time.
typedef struct {
    uint64_t queue_depth, model_version;
    double uptime_s;
    // feedback: stored, acknowledged again (retries), refused; the store's commits and their time
    uint64_t feedback_stored, feedback_duplicates, feedback_refused, feedback_pending;
    uint64_t store_commits;
    double store_commit_s;
    // learning (all zero when it is off): users with a learned policy, updates published, feedback
    // events learned from and failed, comparisons held, means over learned users of the reward
    // model's held-out accuracy (users with one) and of the policy's KL to the prior
    int learning;
    uint64_t policy_users, policy_updates, policy_events, policy_failures, policy_comparisons;
    double policy_accuracy_mean, policy_kl_mean, policy_kl_max;
    uint64_t population_refits, population_comparisons;
    int jobs_on;
    uint64_t jobs_by_state[6]; // queued, running, paused, done, failed, cancelled
    uint64_t model_swaps, models_registered;
    double population_accuracy; // held-out accuracy of the population's reward model (NaN: none)
    const Histogram *policy_latency; // feedback received -> new policy installed, seconds
} MetricsExtra;

// Writes the Prometheus text into out (cap bytes). Returns the length, or -1 if cap is too small.
long metrics_render(Metrics *m, const MetricsExtra *x, char *out, size_t cap);

#endif
