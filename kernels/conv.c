// conv.c — 2-D convolution forward and backward on oneDNN's C API (CPU engine), with a cache of
// primitives per shape.
//
// Every distinct shape (B, C, H, W, OC, K, S, P) gets one cache entry the first time it is seen:
// its primitives (forward with and without bias, backward-data, backward-weights with and without
// bias) are created lazily, the first time each is needed, together with the memory objects that
// wrap the caller's tensors, any internal buffers in the layout the primitive prefers, and the
// reorders between the two. A call then only binds the caller's pointers
// (dnnl_memory_set_data_handle) and executes. Entries are never evicted: a process sees a handful
// of shapes (one per layer per batch size). An entry's objects are shared, so an entry is locked
// while it runs; different shapes run concurrently.
//
// The gradients are accumulated (+=), as every kernel here does, while oneDNN overwrites. Each
// gradient is therefore produced into an internal buffer and added to the caller's tensor by a
// reorder with a sum post-op (which also converts a blocked layout back to plain). The data
// gradient, the largest, avoids that extra pass in the plain layout: it is computed as a
// deconvolution (the adjoint of the convolution) with a sum post-op, straight into dinp.
//
// Not here: grouped or dilated convolution, other data types, a CUDA path (conv_cuda).
//
// B batch, C input channels, H, W input spatial, OC output channels, K kernel, S stride, P pad,
// OH, OW output spatial. Caller tensors are plain NCHW (activations) and OIHW (weights).
#include "kernels/conv.h"

#include <oneapi/dnnl/dnnl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"

// 1: let oneDNN pick its preferred (blocked) layouts and reorder at the edges;
// 0: run the primitives on the caller's plain NCHW/OIHW tensors.
#ifndef CONV_LAYOUT_ANY
#define CONV_LAYOUT_ANY 0
#endif

typedef struct {
    int B, C, H, W, OC, K, S, P, OH, OW;
} ConvShape;

// How an argument flows: read by the primitive, written by it, or written and added to the
// caller's tensor (a gradient).
typedef enum { ARG_IN, ARG_OUT, ARG_ACC } ArgDir;

// One execute argument of a pass.
typedef struct {
    int arg;                  // DNNL_ARG_*
    ArgDir dir;
    dnnl_memory_t user;       // the caller's tensor, plain layout; data handle bound per call
    dnnl_memory_t inner;      // the primitive's own buffer, or NULL when it uses user directly
    dnnl_primitive_t reorder; // user -> inner (ARG_IN) or inner -> user (+= for ARG_ACC)
} ConvArg;

// One primitive with its arguments.
typedef struct {
    dnnl_primitive_t prim;    // NULL until the pass is first needed
    dnnl_memory_t scratchpad; // the pass's own (user scratchpad mode), or NULL if none is needed
    ConvArg args[4];
    int nargs;
} ConvPass;

enum { PASS_FWD, PASS_FWD_BIAS, PASS_BWD_DATA, PASS_BWD_W, PASS_BWD_WB, PASS_COUNT };

typedef struct {
    ConvShape shape;
    pthread_mutex_t lock;       // held while the entry's passes are created or run
    dnnl_stream_t stream;
    dnnl_primitive_desc_t hint; // forward pd the backward passes are created against, or NULL
    ConvPass pass[PASS_COUNT];
} ConvEntry;

static pthread_mutex_t conv_cache_lock = PTHREAD_MUTEX_INITIALIZER;
static dnnl_engine_t conv_engine;   // one CPU engine for every entry
static ConvEntry **conv_cache;      // (conv_cache_len) entries, each allocated once
static int conv_cache_len, conv_cache_cap;

static int conv_status(dnnl_status_t st) {
    if (st == dnnl_success)
        return 0;
    return st == dnnl_out_of_memory ? KERNELS_ENOMEM : KERNELS_EDNN;
}

#define DNNL_TRY(call)                                                                             \
    do {                                                                                           \
        rc = conv_status(call);                                                                    \
        if (rc)                                                                                    \
            goto fail;                                                                             \
    } while (0)

// ---------------------------------------------------------------------------------------------
// Passes

// What a pass argument looks like to the caller.
typedef struct {
    int arg;
    ArgDir dir;
    int ndims;
    dnnl_dims_t dims;
    dnnl_format_tag_t tag; // the caller's plain layout
} ArgSpec;

static void pass_free(ConvPass *p) {
    for (int i = 0; i < p->nargs; i++) {
        ConvArg *a = &p->args[i];
        if (a->reorder)
            dnnl_primitive_destroy(a->reorder);
        if (a->inner)
            dnnl_memory_destroy(a->inner);
        if (a->user)
            dnnl_memory_destroy(a->user);
    }
    if (p->scratchpad)
        dnnl_memory_destroy(p->scratchpad);
    if (p->prim)
        dnnl_primitive_destroy(p->prim);
    memset(p, 0, sizeof(*p));
}

// A reorder from one layout to another; accumulate adds into the destination (a sum post-op).
static int reorder_create(dnnl_primitive_t *out, const dnnl_memory_desc_t *from,
                          const dnnl_memory_desc_t *to, int accumulate) {
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t ops = NULL;
    dnnl_primitive_desc_t pd = NULL;
    int rc;
    if (accumulate) {
        DNNL_TRY(dnnl_primitive_attr_create(&attr));
        DNNL_TRY(dnnl_post_ops_create(&ops));
        DNNL_TRY(dnnl_post_ops_append_sum(ops, 1.0f));
        DNNL_TRY(dnnl_primitive_attr_set_post_ops(attr, ops));
    }
    DNNL_TRY(dnnl_reorder_primitive_desc_create(&pd, from, conv_engine, to, conv_engine, attr));
    DNNL_TRY(dnnl_primitive_create(out, pd));
fail:
    if (pd)
        dnnl_primitive_desc_destroy(pd);
    if (ops)
        dnnl_post_ops_destroy(ops);
    if (attr)
        dnnl_primitive_attr_destroy(attr);
    return rc;
}

// Builds pass p from an op descriptor. prim_sums says the primitive itself adds into its ARG_ACC
// destination (a sum post-op in the attributes), so no inner buffer is needed for it when the
// layouts agree. On failure p is left empty and the code returned.
static int pass_create(ConvPass *p, const_dnnl_op_desc_t desc, const_dnnl_primitive_desc_t hint,
                       int prim_sums, const ArgSpec *specs, int nspecs) {
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t ops = NULL;
    dnnl_primitive_desc_t pd = NULL;
    int rc;
    memset(p, 0, sizeof(*p));
    DNNL_TRY(dnnl_primitive_attr_create(&attr));
    DNNL_TRY(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user));
    if (prim_sums) {
        DNNL_TRY(dnnl_post_ops_create(&ops));
        DNNL_TRY(dnnl_post_ops_append_sum(ops, 1.0f));
        DNNL_TRY(dnnl_primitive_attr_set_post_ops(attr, ops));
    }
    DNNL_TRY(dnnl_primitive_desc_create(&pd, desc, attr, conv_engine, hint));

    for (int i = 0; i < nspecs; i++) {
        const ArgSpec *s = &specs[i];
        ConvArg *a = &p->args[p->nargs++];
        a->arg = s->arg;
        a->dir = s->dir;
        dnnl_memory_desc_t user_md;
        DNNL_TRY(dnnl_memory_desc_init_by_tag(&user_md, s->ndims, s->dims, dnnl_f32, s->tag));
        const dnnl_memory_desc_t *prim_md = dnnl_primitive_desc_query_md(pd, dnnl_query_exec_arg_md,
                                                                         s->arg);
        if (!prim_md) {
            rc = KERNELS_EDNN;
            goto fail;
        }
        int same = dnnl_memory_desc_equal(&user_md, prim_md);
        int need_inner = !same || (s->dir == ARG_ACC && !prim_sums);
        DNNL_TRY(dnnl_memory_create(&a->user, &user_md, conv_engine, DNNL_MEMORY_NONE));
        if (need_inner) {
            DNNL_TRY(dnnl_memory_create(&a->inner, prim_md, conv_engine, DNNL_MEMORY_ALLOCATE));
            if (s->dir == ARG_IN)
                rc = reorder_create(&a->reorder, &user_md, prim_md, 0);
            else
                rc = reorder_create(&a->reorder, prim_md, &user_md, s->dir == ARG_ACC);
            if (rc)
                goto fail;
        }
    }
    const dnnl_memory_desc_t *pad_md = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    if (pad_md && dnnl_memory_desc_get_size(pad_md) > 0)
        DNNL_TRY(dnnl_memory_create(&p->scratchpad, pad_md, conv_engine, DNNL_MEMORY_ALLOCATE));
    DNNL_TRY(dnnl_primitive_create(&p->prim, pd));
    rc = 0;
fail:
    if (rc)
        pass_free(p);
    if (pd)
        dnnl_primitive_desc_destroy(pd);
    if (ops)
        dnnl_post_ops_destroy(ops);
    if (attr)
        dnnl_primitive_attr_destroy(attr);
    return rc;
}

// Runs pass p on the caller's tensors ptrs (one per argument, in the order of the specs).
static int pass_run(ConvPass *p, dnnl_stream_t stream, void *const *ptrs) {
    dnnl_exec_arg_t ex[5];
    int rc;
    for (int i = 0; i < p->nargs; i++) {
        ConvArg *a = &p->args[i];
        DNNL_TRY(dnnl_memory_set_data_handle(a->user, ptrs[i]));
        if (a->dir == ARG_IN && a->reorder) {
            dnnl_exec_arg_t r[2] = {{DNNL_ARG_FROM, a->user}, {DNNL_ARG_TO, a->inner}};
            DNNL_TRY(dnnl_primitive_execute(a->reorder, stream, 2, r));
        }
        ex[i] = (dnnl_exec_arg_t){a->arg, a->inner ? a->inner : a->user};
    }
    int n = p->nargs;
    if (p->scratchpad)
        ex[n++] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, p->scratchpad};
    DNNL_TRY(dnnl_primitive_execute(p->prim, stream, n, ex));
    for (int i = 0; i < p->nargs; i++) {
        ConvArg *a = &p->args[i];
        if (a->dir != ARG_IN && a->reorder) {
            dnnl_exec_arg_t r[2] = {{DNNL_ARG_FROM, a->inner}, {DNNL_ARG_TO, a->user}};
            DNNL_TRY(dnnl_primitive_execute(a->reorder, stream, 2, r));
        }
    }
    DNNL_TRY(dnnl_stream_wait(stream));
fail:
    return rc;
}

// ---------------------------------------------------------------------------------------------
// Descriptors. Right padding equals left padding: oneDNN checks (H + 2P - K) / S + 1 == OH with
// integer division, as PyTorch computes OH, so rows the stride never reaches are simply unused.

static void dims4(dnnl_dims_t d, int a, int b, int c, int e) {
    d[0] = a;
    d[1] = b;
    d[2] = c;
    d[3] = e;
}

static ArgSpec spec4(int arg, ArgDir dir, int a, int b, int c, int d, dnnl_format_tag_t tag) {
    ArgSpec s = {.arg = arg, .dir = dir, .ndims = 4, .tag = tag};
    dims4(s.dims, a, b, c, d);
    return s;
}

static ArgSpec spec1(int arg, ArgDir dir, int n) {
    ArgSpec s = {.arg = arg, .dir = dir, .ndims = 1, .tag = dnnl_x};
    s.dims[0] = n;
    return s;
}

// Memory descriptors of the convolution: src, weights, bias, dst, in the primitive's layout
// (format any) or the caller's.
typedef struct {
    dnnl_memory_desc_t src, wei, bias, dst;
    dnnl_dims_t stride, pad;
} ConvMds;

static int conv_mds(ConvMds *m, const ConvShape *s) {
    dnnl_dims_t d;
    dnnl_format_tag_t act = CONV_LAYOUT_ANY ? dnnl_format_tag_any : dnnl_nchw;
    dnnl_format_tag_t wei = CONV_LAYOUT_ANY ? dnnl_format_tag_any : dnnl_oihw;
    int rc;
    dims4(d, s->B, s->C, s->H, s->W);
    DNNL_TRY(dnnl_memory_desc_init_by_tag(&m->src, 4, d, dnnl_f32, act));
    dims4(d, s->OC, s->C, s->K, s->K);
    DNNL_TRY(dnnl_memory_desc_init_by_tag(&m->wei, 4, d, dnnl_f32, wei));
    d[0] = s->OC;
    DNNL_TRY(dnnl_memory_desc_init_by_tag(&m->bias, 1, d, dnnl_f32, dnnl_x));
    dims4(d, s->B, s->OC, s->OH, s->OW);
    DNNL_TRY(dnnl_memory_desc_init_by_tag(&m->dst, 4, d, dnnl_f32, act));
    m->stride[0] = m->stride[1] = s->S;
    m->pad[0] = m->pad[1] = s->P;
fail:
    return rc;
}

static int entry_hint(ConvEntry *e) {
    if (e->hint)
        return 0;
    ConvMds m;
    dnnl_convolution_desc_t cd;
    int rc = conv_mds(&m, &e->shape);
    if (rc)
        return rc;
    DNNL_TRY(dnnl_convolution_forward_desc_init(&cd, dnnl_forward_training,
                                                dnnl_convolution_direct, &m.src, &m.wei, &m.bias,
                                                &m.dst, m.stride, m.pad, m.pad));
    DNNL_TRY(dnnl_primitive_desc_create(&e->hint, &cd, NULL, conv_engine, NULL));
fail:
    return rc;
}

// Creates pass `which` of entry e if it does not exist yet.
static int entry_pass(ConvEntry *e, int which) {
    ConvPass *p = &e->pass[which];
    if (p->prim)
        return 0;
    const ConvShape *s = &e->shape;
    ConvMds m;
    int rc = conv_mds(&m, s);
    if (rc)
        return rc;
    ArgSpec sp[4];
    if (which == PASS_FWD || which == PASS_FWD_BIAS) {
        int bias = which == PASS_FWD_BIAS;
        dnnl_convolution_desc_t cd;
        DNNL_TRY(dnnl_convolution_forward_desc_init(
            &cd, dnnl_forward_inference, dnnl_convolution_direct, &m.src, &m.wei,
            bias ? &m.bias : NULL, &m.dst, m.stride, m.pad, m.pad));
        int n = 0;
        sp[n++] = spec4(DNNL_ARG_SRC, ARG_IN, s->B, s->C, s->H, s->W, dnnl_nchw);
        sp[n++] = spec4(DNNL_ARG_WEIGHTS, ARG_IN, s->OC, s->C, s->K, s->K, dnnl_oihw);
        if (bias)
            sp[n++] = spec1(DNNL_ARG_BIAS, ARG_IN, s->OC);
        sp[n++] = spec4(DNNL_ARG_DST, ARG_OUT, s->B, s->OC, s->OH, s->OW, dnnl_nchw);
        return pass_create(p, &cd, NULL, 0, sp, n);
    }
    if (which == PASS_BWD_DATA) {
        if (!CONV_LAYOUT_ANY) {
            // dinp += conv^T(dout): a deconvolution whose weights (o = C, i = OC) are the
            // convolution's OIHW tensor read as IOHW, with a sum post-op doing the +=.
            dnnl_deconvolution_desc_t dd;
            dnnl_memory_desc_t wei;
            dnnl_dims_t d;
            dims4(d, s->C, s->OC, s->K, s->K);
            DNNL_TRY(dnnl_memory_desc_init_by_tag(&wei, 4, d, dnnl_f32, dnnl_iohw));
            DNNL_TRY(dnnl_deconvolution_forward_desc_init(
                &dd, dnnl_forward_inference, dnnl_deconvolution_direct, &m.dst, &wei, NULL, &m.src,
                m.stride, m.pad, m.pad));
            sp[0] = spec4(DNNL_ARG_SRC, ARG_IN, s->B, s->OC, s->OH, s->OW, dnnl_nchw);
            sp[1] = spec4(DNNL_ARG_WEIGHTS, ARG_IN, s->C, s->OC, s->K, s->K, dnnl_iohw);
            sp[2] = spec4(DNNL_ARG_DST, ARG_ACC, s->B, s->C, s->H, s->W, dnnl_nchw);
            return pass_create(p, &dd, NULL, 1, sp, 3);
        }
        DNNL_TRY(entry_hint(e));
        dnnl_convolution_desc_t cd;
        DNNL_TRY(dnnl_convolution_backward_data_desc_init(&cd, dnnl_convolution_direct, &m.src,
                                                          &m.wei, &m.dst, m.stride, m.pad, m.pad));
        sp[0] = spec4(DNNL_ARG_DIFF_DST, ARG_IN, s->B, s->OC, s->OH, s->OW, dnnl_nchw);
        sp[1] = spec4(DNNL_ARG_WEIGHTS, ARG_IN, s->OC, s->C, s->K, s->K, dnnl_oihw);
        sp[2] = spec4(DNNL_ARG_DIFF_SRC, ARG_ACC, s->B, s->C, s->H, s->W, dnnl_nchw);
        return pass_create(p, &cd, e->hint, 0, sp, 3);
    }
    // PASS_BWD_W, PASS_BWD_WB
    int bias = which == PASS_BWD_WB;
    DNNL_TRY(entry_hint(e));
    dnnl_convolution_desc_t cd;
    DNNL_TRY(dnnl_convolution_backward_weights_desc_init(&cd, dnnl_convolution_direct, &m.src,
                                                         &m.wei, bias ? &m.bias : NULL, &m.dst,
                                                         m.stride, m.pad, m.pad));
    int n = 0;
    sp[n++] = spec4(DNNL_ARG_SRC, ARG_IN, s->B, s->C, s->H, s->W, dnnl_nchw);
    sp[n++] = spec4(DNNL_ARG_DIFF_DST, ARG_IN, s->B, s->OC, s->OH, s->OW, dnnl_nchw);
    sp[n++] = spec4(DNNL_ARG_DIFF_WEIGHTS, ARG_ACC, s->OC, s->C, s->K, s->K, dnnl_oihw);
    if (bias)
        sp[n++] = spec1(DNNL_ARG_DIFF_BIAS, ARG_ACC, s->OC);
    return pass_create(p, &cd, e->hint, 0, sp, n);
fail:
    return rc;
}

// ---------------------------------------------------------------------------------------------
// The cache

static void entry_free(ConvEntry *e) {
    for (int i = 0; i < PASS_COUNT; i++)
        pass_free(&e->pass[i]);
    if (e->hint)
        dnnl_primitive_desc_destroy(e->hint);
    if (e->stream)
        dnnl_stream_destroy(e->stream);
    pthread_mutex_destroy(&e->lock);
    free(e);
}

static int shape_make(ConvShape *s, int B, int C, int H, int W, int OC, int K, int S, int P) {
    if (B <= 0 || C <= 0 || H <= 0 || W <= 0 || OC <= 0 || K <= 0 || S <= 0 || P < 0 ||
        H + 2 * P < K || W + 2 * P < K)
        return KERNELS_EINVAL;
    *s = (ConvShape){B, C, H, W, OC, K, S, P, (H + 2 * P - K) / S + 1, (W + 2 * P - K) / S + 1};
    return 0;
}

// Finds or makes the entry for shape s and returns it locked.
static int entry_acquire(ConvEntry **out, const ConvShape *s) {
    int rc = 0;
    ConvEntry *e = NULL;
    pthread_mutex_lock(&conv_cache_lock);
    if (!conv_engine)
        DNNL_TRY(dnnl_engine_create(&conv_engine, dnnl_cpu, 0));
    for (int i = 0; i < conv_cache_len; i++) {
        if (!memcmp(&conv_cache[i]->shape, s, sizeof(*s))) {
            e = conv_cache[i];
            break;
        }
    }
    if (!e) {
        if (conv_cache_len == conv_cache_cap) {
            int cap = conv_cache_cap ? 2 * conv_cache_cap : 16;
            ConvEntry **grown = realloc(conv_cache, cap * sizeof(*grown));
            if (!grown) {
                rc = KERNELS_ENOMEM;
                goto fail;
            }
            conv_cache = grown;
            conv_cache_cap = cap;
        }
        e = calloc(1, sizeof(*e));
        if (!e) {
            rc = KERNELS_ENOMEM;
            goto fail;
        }
        e->shape = *s;
        pthread_mutex_init(&e->lock, NULL);
        rc = conv_status(dnnl_stream_create(&e->stream, conv_engine, dnnl_stream_default_flags));
        if (rc) {
            entry_free(e);
            goto fail;
        }
        conv_cache[conv_cache_len++] = e;
    }
    pthread_mutex_lock(&e->lock);
    *out = e;
fail:
    pthread_mutex_unlock(&conv_cache_lock);
    return rc;
}

void conv2d_cache_clear(void) {
    pthread_mutex_lock(&conv_cache_lock);
    for (int i = 0; i < conv_cache_len; i++)
        entry_free(conv_cache[i]);
    free(conv_cache);
    conv_cache = NULL;
    conv_cache_len = conv_cache_cap = 0;
    if (conv_engine)
        dnnl_engine_destroy(conv_engine);
    conv_engine = NULL;
    pthread_mutex_unlock(&conv_cache_lock);
}

// ---------------------------------------------------------------------------------------------
// The API

int conv2d_forward(float *out, const float *inp, const float *w, const float *bias, int B, int C,
                   int H, int W, int OC, int K, int S, int P) {
    ConvShape s;
    ConvEntry *e;
    int rc = shape_make(&s, B, C, H, W, OC, K, S, P);
    if (rc || (rc = entry_acquire(&e, &s)))
        return rc;
    int which = bias ? PASS_FWD_BIAS : PASS_FWD;
    rc = entry_pass(e, which);
    if (!rc) {
        void *with_bias[4] = {(void *)inp, (void *)w, (void *)bias, out};
        void *without[3] = {(void *)inp, (void *)w, out};
        rc = pass_run(&e->pass[which], e->stream, bias ? with_bias : without);
    }
    pthread_mutex_unlock(&e->lock);
    return rc;
}

// dbias (OC) += sum over batch and positions of dout (B, OC, OH*OW); used when only the bias
// gradient is wanted, where running the weight-gradient primitive would waste its work.
static void conv_bias_backward(float *dbias, const float *dout, int B, int OC, int N) {
    for (int oc = 0; oc < OC; oc++) {
        double sum = 0;
        for (int b = 0; b < B; b++) {
            const float *d = dout + ((long)b * OC + oc) * N;
            float part = 0;
            for (int i = 0; i < N; i++)
                part += d[i];
            sum += part;
        }
        dbias[oc] += (float)sum;
    }
}

int conv2d_backward(float *dinp, float *dw, float *dbias, const float *dout, const float *inp,
                    const float *w, int B, int C, int H, int W, int OC, int K, int S, int P) {
    ConvShape s;
    ConvEntry *e;
    int rc = shape_make(&s, B, C, H, W, OC, K, S, P);
    if (rc)
        return rc;
    if (!dw && dbias)
        conv_bias_backward(dbias, dout, B, OC, s.OH * s.OW);
    if (!dinp && !dw)
        return 0;
    if ((rc = entry_acquire(&e, &s)))
        return rc;
    if (dinp) {
        rc = entry_pass(e, PASS_BWD_DATA);
        void *ptrs[3] = {(void *)dout, (void *)w, dinp};
        if (!rc)
            rc = pass_run(&e->pass[PASS_BWD_DATA], e->stream, ptrs);
    }
    if (!rc && dw) {
        int which = dbias ? PASS_BWD_WB : PASS_BWD_W;
        rc = entry_pass(e, which);
        void *ptrs[4] = {(void *)inp, (void *)dout, dw, dbias};
        if (!rc)
            rc = pass_run(&e->pass[which], e->stream, ptrs);
    }
    pthread_mutex_unlock(&e->lock);
    return rc;
}
