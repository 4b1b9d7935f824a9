// gen.c — the generation thread (see gen.h). Dynamic batching in the spirit of serving systems
// (llama.cpp's server, Triton's dynamic batcher): the thread waits for a first request, then for
// the batch to fill or the first request's deadline to pass, whichever comes first; a thread that
// was busy finds its queue already past the deadline and runs at once. It is not a scheduler of
// sessions: fairness comes from the loop thread, which submits at most queue_frames per session.
#include "server/gen.h"

#include <errno.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "generator/data/imageio.h"
#include "util/clock.h"
#include "server/proto.h"

static FrameOut *slot_at(Gen *gen, size_t i) {
    return (FrameOut *)(gen->pool_mem + i * gen->slot_size);
}

int gen_init(Gen *gen, Generator *g, const GenOptions *opt, Metrics *metrics, uv_async_t *async,
             char *err, size_t errlen) {
    memset(gen, 0, sizeof *gen);
    gen->opt = *opt;
    gen->metrics = metrics;
    gen->async = async;
    const SaganConfig *cfg = &g->cfg;
    gen->z_dim = cfg->z_dim;
    gen->w = gen->h = cfg->img;
    gen->c = cfg->channels;
    gen->classes = cfg->n_classes;
    if (opt->batch_max < 1 || opt->batch_max > g->max_B || opt->capacity < (size_t)opt->batch_max) {
        snprintf(err, errlen, "batch %d does not fit the generator (max %d) or capacity %zu",
                 opt->batch_max, g->max_B, opt->capacity);
        return -1;
    }
    size_t raw = (size_t)gen->w * gen->h * gen->c;
    size_t png = image_png_bound(gen->c, gen->h, gen->w);
    gen->scratch_size = (png > raw ? png : raw);
    size_t msg_max = PROTO_FRAME_HEADER_MAX + gen->scratch_size;
    // Slots are 64-byte aligned so neighbours never share a cache line across threads.
    gen->slot_size = (sizeof(FrameOut) + opt->pad + msg_max + 63) & ~(size_t)63;
    size_t cap = opt->capacity;
    gen->reqs = calloc(cap, sizeof *gen->reqs);
    gen->req_z = calloc(cap * (size_t)gen->z_dim, sizeof(float));
    gen->pool_mem = aligned_alloc(64, cap * gen->slot_size);
    gen->zb = calloc((size_t)opt->batch_max * gen->z_dim, sizeof(float));
    gen->yb = calloc((size_t)opt->batch_max, sizeof(int32_t));
    gen->batch = calloc((size_t)opt->batch_max, sizeof *gen->batch);
    gen->outs = calloc((size_t)opt->batch_max, sizeof *gen->outs);
    gen->n_scratch = omp_get_max_threads();
    gen->scratch = calloc((size_t)gen->n_scratch, sizeof *gen->scratch);
    if (!gen->reqs || !gen->req_z || !gen->pool_mem || !gen->zb || !gen->yb || !gen->batch ||
        !gen->outs || !gen->scratch)
        goto nomem;
    for (int i = 0; i < gen->n_scratch; i++)
        if (!(gen->scratch[i] = malloc(gen->scratch_size))) goto nomem;
    for (size_t i = cap; i-- > 0;) {
        FrameOut *f = slot_at(gen, i);
        f->msg = f->storage + opt->pad;
        f->next = gen->free_list;
        gen->free_list = f;
    }
    gen->n_free = cap;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int rc = pthread_mutex_init(&gen->lock, NULL) || pthread_cond_init(&gen->cond, &ca);
    pthread_condattr_destroy(&ca);
    if (rc) {
        snprintf(err, errlen, "cannot create the generation thread's lock");
        goto fail;
    }
    gen->locks_ready = 1;
    gen->g = g;
#ifdef STEER_CUDA
    if (opt->device == DEVICE_CUDA) {
        char why[512];
        if (generator_cuda_init(&gen->gc, g, opt->batch_max, why, sizeof why))
            fprintf(stderr, "steer: generation stays on the CPU: %s\n", why);
        else
            gen->on_gpu = 1;
    }
#endif
    return 0;
nomem:
    snprintf(err, errlen, "out of memory sizing the generation queue (%zu frames of %zu bytes)",
             cap, gen->slot_size);
fail:
    gen_free(gen);
    return -1;
}

// Encodes and packs one frame of the batch into its slot. Runs on OpenMP threads: touches only
// its own slot and scratch.
static void frame_encode(Gen *gen, int i, uint8_t *scratch) {
    const FrameRequest *r = &gen->batch[i];
    FrameOut *f = gen->outs[i];
    const float *img = gen->g->img + (size_t)i * gen->c * gen->h * gen->w;
    size_t n = 0;
    char err[128];
    if (r->format == PROTO_FORMAT_RAW8) {
        image_to_u8(scratch, img, gen->c, gen->h, gen->w);
        n = (size_t)gen->c * gen->h * gen->w;
    } else if (image_encode_png(scratch, gen->scratch_size, &n, img, gen->c, gen->h, gen->w, err,
                                sizeof err)) {
        n = 0; // an encoder failure leaves an empty payload rather than killing the stream
    }
    ProtoFrame pf = {.stream = r->stream_id,
                     .seq = r->seq,
                     .frame = r->frame_id,
                     .model_version = gen->opt.model_version,
                     .policy_version = r->policy_version,
                     .pair = r->pair,
                     .cls = r->cls,
                     .w = gen->w,
                     .h = gen->h,
                     .c = gen->c,
                     .format = r->format,
                     .side = r->side};
    ProtoBuf b = {f->msg, gen->slot_size - sizeof(FrameOut) - gen->opt.pad, 0, 0};
    proto_pack_frame(&b, &pf, scratch, n);
    f->req = *r;
    f->len = b.overflow ? 0 : b.len;
}

// One batch through G: on the GPU when it has a copy of G, into gen->g->img either way.
static int gen_forward(Gen *gen, int n) {
#ifdef STEER_CUDA
    if (gen->on_gpu)
        return generator_cuda_forward(&gen->gc, gen->zb, gen->classes ? gen->yb : NULL, n,
                                      gen->g->img);
#endif
    return generator_forward(gen->g, gen->zb, gen->classes ? gen->yb : NULL, n);
}

// After a hot swap: the GPU's copy of G follows (a new copy when the shapes changed, the CPU
// when that fails).
static void gen_follow_swap(Gen *gen) {
#ifdef STEER_CUDA
    if (!gen->on_gpu || !generator_cuda_upload(&gen->gc, gen->g)) return;
    generator_cuda_free(&gen->gc);
    char why[512];
    if (generator_cuda_init(&gen->gc, gen->g, gen->opt.batch_max, why, sizeof why)) {
        fprintf(stderr, "steer: generation moves to the CPU: %s\n", why);
        generator_cuda_free(&gen->gc);
        gen->on_gpu = 0;
    }
#else
    (void)gen;
#endif
}

static void *gen_main(void *arg) {
    Gen *gen = arg;
    int Z = gen->z_dim;
    // Every batch size gets its oneDNN primitives made now (about 10 ms each, 1 s for 1..64 here)
    // rather than on its first use, where it would show as a latency spike in the middle of
    // serving. Requests that arrive meanwhile wait in the queue.
    if (gen->opt.warmup) {
        memset(gen->zb, 0, sizeof(float) * (size_t)gen->opt.batch_max * Z);
        memset(gen->yb, 0, sizeof(int32_t) * (size_t)gen->opt.batch_max);
        for (int b = gen->opt.batch_max; b >= 1 && !gen->stop; b--) gen_forward(gen, b);
    }
    pthread_mutex_lock(&gen->lock);
    for (;;) {
        while (!gen->stop && gen->count == 0) pthread_cond_wait(&gen->cond, &gen->lock);
        if (gen->count == 0) break; // stopping, and nothing left to draw
        while (!gen->stop && gen->count < (size_t)gen->opt.batch_max) {
            double until = gen->reqs[gen->head].t_submit + gen->opt.deadline_s;
            if (clock_now_s() >= until) break;
            struct timespec ts = {(time_t)until, (long)((until - (double)(time_t)until) * 1e9)};
            if (pthread_cond_timedwait(&gen->cond, &gen->lock, &ts) == ETIMEDOUT) break;
            if (gen->count == 0) break;
        }
        if (gen->count == 0) continue; // all cancelled while waiting
        size_t n = gen->count;
        if (n > (size_t)gen->opt.batch_max) n = (size_t)gen->opt.batch_max;
        if (n > gen->n_free) n = gen->n_free;
        if (n == 0) { // every slot is queued for sending; wait for the loop to release some
            pthread_cond_wait(&gen->cond, &gen->lock);
            continue;
        }
        size_t cap = gen->opt.capacity;
        for (size_t i = 0; i < n; i++) {
            size_t k = (gen->head + i) % cap;
            gen->batch[i] = gen->reqs[k];
            memcpy(gen->zb + i * Z, gen->req_z + k * Z, (size_t)Z * sizeof(float));
            gen->yb[i] = gen->reqs[k].cls < 0 ? 0 : gen->reqs[k].cls;
            FrameOut *f = gen->free_list;
            gen->free_list = f->next;
            f->next = NULL;
            gen->outs[i] = f;
        }
        gen->n_free -= n;
        gen->head = (gen->head + n) % cap;
        gen->count -= n;
        gen->running = (int)n;
        Generator *retired = NULL;
        if (gen->pending) { // a hot swap: between batches, so no frame is drawn by half a model
            retired = gen->g;
            gen->g = gen->pending;
            gen->opt.model_version = gen->pending_version;
            gen->pending = NULL;
            gen->swaps++;
        }
        pthread_mutex_unlock(&gen->lock);
        if (retired) {
            generator_free(retired);
            free(retired);
            gen_follow_swap(gen);
        }

        double t0 = clock_now_s();
        int rc = gen_forward(gen, (int)n);
        if (rc) {
            for (size_t i = 0; i < n; i++) gen->outs[i]->len = 0, gen->outs[i]->req = gen->batch[i];
        } else {
#pragma omp parallel for schedule(static)
            for (int i = 0; i < (int)n; i++) frame_encode(gen, i, gen->scratch[omp_get_thread_num()]);
        }
        double dt = clock_now_s() - t0;
        pthread_mutex_lock(&gen->metrics->lock);
        histogram_observe(&gen->metrics->batch_size, (double)n);
        histogram_observe(&gen->metrics->generation_s, dt);
        pthread_mutex_unlock(&gen->metrics->lock);

        pthread_mutex_lock(&gen->lock);
        for (size_t i = 0; i < n; i++) {
            FrameOut *f = gen->outs[i];
            if (gen->done_tail) gen->done_tail->next = f;
            else gen->done_head = f;
            gen->done_tail = f;
        }
        gen->running = 0;
        uv_async_send(gen->async);
    }
    pthread_mutex_unlock(&gen->lock);
    return NULL;
}

void gen_swap(Gen *gen, Generator *g, uint64_t version) {
    pthread_mutex_lock(&gen->lock);
    Generator *old = gen->pending;
    gen->pending = g;
    gen->pending_version = version;
    pthread_cond_signal(&gen->cond);
    pthread_mutex_unlock(&gen->lock);
    if (old) { // a newer swap came before the older one was taken
        generator_free(old);
        free(old);
    }
}

int gen_start(Gen *gen) {
    if (pthread_create(&gen->thread, NULL, gen_main, gen)) return -1;
    gen->started = 1;
    return 0;
}

int gen_submit(Gen *gen, const FrameRequest *req, const float *z) {
    pthread_mutex_lock(&gen->lock);
    if (gen->count == gen->opt.capacity || gen->stop) {
        pthread_mutex_unlock(&gen->lock);
        return -1;
    }
    size_t k = (gen->head + gen->count) % gen->opt.capacity;
    gen->reqs[k] = *req;
    memcpy(gen->req_z + k * gen->z_dim, z, (size_t)gen->z_dim * sizeof(float));
    gen->count++;
    pthread_cond_signal(&gen->cond);
    pthread_mutex_unlock(&gen->lock);
    return 0;
}

size_t gen_cancel(Gen *gen, uint32_t slot, uint32_t session_serial, uint32_t stream_id) {
    size_t cap = gen->opt.capacity, kept = 0, removed = 0, Z = (size_t)gen->z_dim;
    pthread_mutex_lock(&gen->lock);
    for (size_t i = 0; i < gen->count; i++) {
        size_t k = (gen->head + i) % cap;
        const FrameRequest *r = &gen->reqs[k];
        if (r->slot == slot && r->session_serial == session_serial &&
            (stream_id == UINT32_MAX || r->stream_id == stream_id)) {
            removed++;
            continue;
        }
        size_t d = (gen->head + kept) % cap;
        if (d != k) {
            gen->reqs[d] = gen->reqs[k];
            memcpy(gen->req_z + d * Z, gen->req_z + k * Z, Z * sizeof(float));
        }
        kept++;
    }
    gen->count = kept;
    pthread_mutex_unlock(&gen->lock);
    return removed;
}

FrameOut *gen_take_done(Gen *gen) {
    pthread_mutex_lock(&gen->lock);
    FrameOut *f = gen->done_head;
    gen->done_head = gen->done_tail = NULL;
    pthread_mutex_unlock(&gen->lock);
    return f;
}

void gen_release(Gen *gen, FrameOut *f) {
    pthread_mutex_lock(&gen->lock);
    f->next = gen->free_list;
    gen->free_list = f;
    gen->n_free++;
    if (gen->n_free == 1) pthread_cond_signal(&gen->cond);
    pthread_mutex_unlock(&gen->lock);
}

size_t gen_queue_depth(Gen *gen) {
    pthread_mutex_lock(&gen->lock);
    size_t n = gen->count;
    pthread_mutex_unlock(&gen->lock);
    return n;
}

int gen_running(Gen *gen) {
    pthread_mutex_lock(&gen->lock);
    int n = gen->running;
    pthread_mutex_unlock(&gen->lock);
    return n;
}

void gen_stop(Gen *gen) {
    if (!gen->started) return;
    pthread_mutex_lock(&gen->lock);
    gen->stop = 1;
    pthread_cond_broadcast(&gen->cond);
    pthread_mutex_unlock(&gen->lock);
    pthread_join(gen->thread, NULL);
    gen->started = 0;
}

void gen_free(Gen *gen) {
#ifdef STEER_CUDA
    if (gen->on_gpu) generator_cuda_free(&gen->gc);
#endif
    if (gen->pending) {
        generator_free(gen->pending);
        free(gen->pending);
    }
    if (gen->g) {
        generator_free(gen->g);
        free(gen->g);
    }
    if (gen->scratch)
        for (int i = 0; i < gen->n_scratch; i++) free(gen->scratch[i]);
    free(gen->scratch);
    free(gen->reqs);
    free(gen->req_z);
    free(gen->pool_mem);
    free(gen->zb);
    free(gen->yb);
    free(gen->batch);
    free(gen->outs);
    if (gen->locks_ready) {
        pthread_mutex_destroy(&gen->lock);
        pthread_cond_destroy(&gen->cond);
    }
    memset(gen, 0, sizeof *gen);
}
