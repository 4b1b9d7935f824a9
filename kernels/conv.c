// conv.c — 2-D convolution forward and backward on oneDNN's C API (CPU engine), with a cache of
// primitives per shape.
//
// Every distinct shape (B, C, H, W, OC, K, S, P) gets one cache entry the first time it is seen:
// its primitives (forward with and without bias, backward-data, backward-weights with and without
// bias) are created lazily, the first time each is needed, together with the memory objects that
// wrap the caller's tensors, internal buffers in the layouts the primitives prefer, and the
// reorders between the two. A call then only binds the caller's pointers
// (dnnl_memory_set_data_handle) and executes. Entries are never evicted: a process sees a handful
// of shapes (one per layer per batch size). An entry's objects are shared, so an entry is locked
// while it runs; different shapes run concurrently.
//
// Layouts: the caller's tensors are plain NCHW / OIHW, but the primitives run in the layouts
// oneDNN picks (format any: nhwc for the brgemm forward, nChw16c for the backward), with reorders
// at the edges. On the fmnist32 layers (2-core AVX-512 EPYC) that measured 3.5x faster than
// running the primitives on plain NCHW (oneDNN's gemm-based kernels), reorders included. Layers
// with fewer than 16 output channels (G's last, 16 -> 1) use nhwc instead, which the blocked
// layouts would pad to 16 channels (its data gradient runs 3.5x faster so). The 3x3 stride-1
// layers use Winograd at training batch sizes (see conv_alg).
//
// The gradients are accumulated (+=), as every kernel here does, while oneDNN overwrites. Each
// gradient is produced into an internal buffer and added to the caller's tensor by the reorder
// back to the plain layout with a sum post-op (or by a plain loop where no reorder is needed).
//
// BF16 (conv2d_bf16_set, off by default): on CPUs with BF16 instructions (AVX512-BF16, AMX) the
// passes read their inputs as bfloat16 (src and weights forward, diff_dst and weights for the
// data gradient, src and diff_dst for the weight gradient: the reorders in convert them) and
// accumulate and write in FP32, so outputs and gradients stay FP32 tensors. oneDNN's bf16 kernels
// are direct (no Winograd). On the fmnist32 shapes (2-core EPYC, AVX512-BF16) the convolutions ran
// 1.6-2.5x faster so, conversions included. The mode is part of the cache key: switching it
// never reuses the other mode's primitives.
//
// Not here: grouped or dilated convolution, other storage types, a CUDA path.
//
// B batch, C input channels, H, W input spatial, OC output channels, K kernel, S stride, P pad,
// OH, OW output spatial.
#include "kernels/conv.h"

#include <oneapi/dnnl/dnnl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"

typedef struct {
    int B, C, H, W, OC, K, S, P, OH, OW;
    int bf16; // 1: the passes read bf16 copies of their inputs (conv2d_bf16_set)
} ConvShape;

// How an argument flows: read by the primitive, written by it, or written and added to the
// caller's tensor (a gradient).
typedef enum { ARG_IN, ARG_OUT, ARG_ACC } ArgDir;

// One execute argument of a pass.
typedef struct {
    int arg;                  // DNNL_ARG_*
    ArgDir dir;
    dnnl_memory_t user;       // the caller's tensor; data handle bound per call
    dnnl_memory_t inner;      // the primitive's own buffer, or NULL when it uses user directly
    dnnl_primitive_t reorder; // user -> inner (ARG_IN) or inner -> user (+= for ARG_ACC); NULL
                              // where both hold the same bytes (an ARG_ACC is then added by a loop)
    long n;                   // elements, for that loop
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
    dnnl_primitive_desc_t hint[2]; // forward pds (direct, Winograd) the backward passes use
                                   // as hints, each NULL until needed
    ConvPass pass[PASS_COUNT];
} ConvEntry;

static pthread_mutex_t conv_cache_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic int conv_bf16;           // conv2d_bf16_set
static _Thread_local int conv_fp32_held; // conv2d_fp32_hold: this thread's calls stay FP32
static dnnl_engine_t conv_engine; // one CPU engine for every entry
static ConvEntry **conv_cache;    // (conv_cache_len) entries, each allocated once
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

// Whether two descriptors put the same elements at the same offsets: equal, or both plain with
// equal strides wherever the dimension is larger than 1 (nhwc with one channel is nchw).
static int md_same_bytes(const dnnl_memory_desc_t *a, const dnnl_memory_desc_t *b) {
    if (dnnl_memory_desc_equal(a, b))
        return 1;
    if (a->format_kind != dnnl_blocked || b->format_kind != dnnl_blocked || a->ndims != b->ndims ||
        a->data_type != b->data_type || a->offset0 != b->offset0 ||
        a->format_desc.blocking.inner_nblks || b->format_desc.blocking.inner_nblks ||
        a->extra.flags || b->extra.flags)
        return 0;
    for (int d = 0; d < a->ndims; d++) {
        if (a->dims[d] != b->dims[d] || a->padded_dims[d] != a->dims[d] ||
            b->padded_dims[d] != b->dims[d])
            return 0;
        if (a->dims[d] > 1 &&
            a->format_desc.blocking.strides[d] != b->format_desc.blocking.strides[d])
            return 0;
    }
    return 1;
}

// Builds pass p from an op descriptor; hint is the forward pd of a backward pass (or NULL). On
// failure p is left empty and the code returned.
static int pass_create(ConvPass *p, const_dnnl_op_desc_t desc, const_dnnl_primitive_desc_t hint,
                       const ArgSpec *specs, int nspecs) {
    dnnl_primitive_attr_t attr = NULL;
    dnnl_primitive_desc_t pd = NULL;
    int rc;
    memset(p, 0, sizeof(*p));
    DNNL_TRY(dnnl_primitive_attr_create(&attr));
    DNNL_TRY(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user));
    DNNL_TRY(dnnl_primitive_desc_create(&pd, desc, attr, conv_engine, hint));

    for (int i = 0; i < nspecs; i++) {
        const ArgSpec *s = &specs[i];
        ConvArg *a = &p->args[p->nargs++];
        a->arg = s->arg;
        a->dir = s->dir;
        a->n = 1;
        for (int d = 0; d < s->ndims; d++)
            a->n *= s->dims[d];
        dnnl_memory_desc_t user_md;
        DNNL_TRY(dnnl_memory_desc_init_by_tag(&user_md, s->ndims, s->dims, dnnl_f32, s->tag));
        const dnnl_memory_desc_t *prim_md =
            dnnl_primitive_desc_query_md(pd, dnnl_query_exec_arg_md, s->arg);
        if (!prim_md) {
            rc = KERNELS_EDNN;
            goto fail;
        }
        // Where the bytes agree, the caller's tensor is wrapped in the primitive's descriptor.
        int same = md_same_bytes(&user_md, prim_md);
        DNNL_TRY(dnnl_memory_create(&a->user, same ? prim_md : &user_md, conv_engine,
                                    DNNL_MEMORY_NONE));
        if (same && s->dir != ARG_ACC)
            continue;
        DNNL_TRY(dnnl_memory_create(&a->inner, prim_md, conv_engine, DNNL_MEMORY_ALLOCATE));
        if (same)
            continue;
        if (s->dir == ARG_IN)
            rc = reorder_create(&a->reorder, &user_md, prim_md, 0);
        else
            rc = reorder_create(&a->reorder, prim_md, &user_md, s->dir == ARG_ACC);
        if (rc)
            goto fail;
    }
    const dnnl_memory_desc_t *pad_md =
        dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    if (pad_md && dnnl_memory_desc_get_size(pad_md) > 0)
        DNNL_TRY(dnnl_memory_create(&p->scratchpad, pad_md, conv_engine, DNNL_MEMORY_ALLOCATE));
    DNNL_TRY(dnnl_primitive_create(&p->prim, pd));
    rc = 0;
fail:
    if (rc)
        pass_free(p);
    if (pd)
        dnnl_primitive_desc_destroy(pd);
    if (attr)
        dnnl_primitive_attr_destroy(attr);
    return rc;
}

// user (n) += inner (n), for gradients that need no reorder (the bias, one-channel layouts).
static int add_into(dnnl_memory_t user, dnnl_memory_t inner, long n) {
    float *dst = NULL, *src = NULL;
    if (dnnl_memory_get_data_handle(user, (void **)&dst) ||
        dnnl_memory_get_data_handle(inner, (void **)&src))
        return KERNELS_EDNN;
#pragma omp parallel for simd schedule(static) if (n > (1L << 16))
    for (long i = 0; i < n; i++)
        dst[i] += src[i];
    return 0;
}

// The converted copy of input a (bound to the caller's ptr) that pass lender already made in
// this call, in the same layout, or NULL.
static dnnl_memory_t lent_input(const ConvPass *lender, const ConvArg *a, const void *ptr) {
    if (!lender || !a->reorder)
        return NULL;
    for (int i = 0; i < lender->nargs; i++) {
        const ConvArg *l = &lender->args[i];
        void *lptr = NULL;
        const dnnl_memory_desc_t *lmd, *md;
        if (l->arg != a->arg || l->dir != ARG_IN || !l->reorder)
            continue;
        if (dnnl_memory_get_data_handle(l->user, &lptr) || lptr != ptr ||
            dnnl_memory_get_memory_desc(l->inner, &lmd) ||
            dnnl_memory_get_memory_desc(a->inner, &md) || !dnnl_memory_desc_equal(lmd, md))
            continue;
        return l->inner;
    }
    return NULL;
}

// Runs pass p on the caller's tensors ptrs (one per argument, in the order of the specs).
// lender, when not NULL, is a pass of the same entry that ran just before on some of the same
// inputs (the data gradient before the weight gradient, both reading dout): its converted copies
// are used instead of converting again.
static int pass_run(ConvPass *p, dnnl_stream_t stream, void *const *ptrs, const ConvPass *lender) {
    dnnl_exec_arg_t ex[5];
    int rc;
    for (int i = 0; i < p->nargs; i++) {
        ConvArg *a = &p->args[i];
        DNNL_TRY(dnnl_memory_set_data_handle(a->user, ptrs[i]));
        dnnl_memory_t mem = a->inner ? a->inner : a->user;
        if (a->dir == ARG_IN && a->reorder) {
            dnnl_memory_t lent = lent_input(lender, a, ptrs[i]);
            if (lent) {
                mem = lent;
            } else {
                dnnl_exec_arg_t r[2] = {{DNNL_ARG_FROM, a->user}, {DNNL_ARG_TO, a->inner}};
                DNNL_TRY(dnnl_primitive_execute(a->reorder, stream, 2, r));
            }
        }
        ex[i] = (dnnl_exec_arg_t){a->arg, mem};
    }
    int n = p->nargs;
    if (p->scratchpad)
        ex[n++] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, p->scratchpad};
    DNNL_TRY(dnnl_primitive_execute(p->prim, stream, n, ex));
    for (int i = 0; i < p->nargs; i++) {
        ConvArg *a = &p->args[i];
        if (a->dir == ARG_IN || !a->inner)
            continue;
        if (a->reorder) {
            dnnl_exec_arg_t r[2] = {{DNNL_ARG_FROM, a->inner}, {DNNL_ARG_TO, a->user}};
            DNNL_TRY(dnnl_primitive_execute(a->reorder, stream, 2, r));
        } else {
            DNNL_TRY(dnnl_stream_wait(stream));
            if ((rc = add_into(a->user, a->inner, a->n)))
                goto fail;
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

// Memory descriptors of the convolution as the primitives see them: src, weights, bias, dst.
typedef struct {
    dnnl_memory_desc_t src, wei, bias, dst;
    dnnl_dims_t stride, pad;
} ConvMds;

// The descriptors for pass `which` (PASS_FWD for the backward passes' hint). In BF16 mode what a
// pass reads is bf16 and what it writes is f32: forward reads src and weights, the data gradient
// reads weights and diff_dst (dst's descriptor) and writes diff_src (src's), the weight gradient
// reads src and diff_dst and writes diff_weights (wei's).
static int conv_mds(ConvMds *m, const ConvShape *s, int which) {
    dnnl_dims_t d;
    // The layouts the primitives choose, but nhwc for narrow outputs (see the top of the file).
    dnnl_format_tag_t act = s->OC < 16 ? dnnl_nhwc : dnnl_format_tag_any;
    dnnl_data_type_t src = dnnl_f32, wei = dnnl_f32, dst = dnnl_f32;
    int rc;
    if (s->bf16) {
        int data = which == PASS_BWD_DATA, weights = which == PASS_BWD_W || which == PASS_BWD_WB;
        src = data ? dnnl_f32 : dnnl_bf16;
        wei = weights ? dnnl_f32 : dnnl_bf16;
        dst = data || weights ? dnnl_bf16 : dnnl_f32;
    }
    dims4(d, s->B, s->C, s->H, s->W);
    DNNL_TRY(dnnl_memory_desc_init_by_tag(&m->src, 4, d, src, act));
    dims4(d, s->OC, s->C, s->K, s->K);
    DNNL_TRY(dnnl_memory_desc_init_by_tag(&m->wei, 4, d, wei, dnnl_format_tag_any));
    d[0] = s->OC;
    DNNL_TRY(dnnl_memory_desc_init_by_tag(&m->bias, 1, d, dnnl_f32, dnnl_x));
    dims4(d, s->B, s->OC, s->OH, s->OW);
    DNNL_TRY(dnnl_memory_desc_init_by_tag(&m->dst, 4, d, dst, act));
    m->stride[0] = m->stride[1] = s->S;
    m->pad[0] = m->pad[1] = s->P;
fail:
    return rc;
}

// Winograd F(4x4, 3x3) (oneDNN's AVX-512 kernels) for the 3x3 stride-1 layers with channels in
// multiples of 16, at training batch sizes. On G's three such layers at batch 64 it measured 1.2-
// 1.8x faster than direct for both backward passes and for the forward from 16x16 up, slower for
// the 8x8 forward, and much slower at batch 1, where transforming the weights on every call
// dominates. Its rounding differs from direct's by about 1e-6 relative.
static dnnl_alg_kind_t conv_alg(const ConvShape *s, int which) {
    int wino = !s->bf16 && s->K == 3 && s->S == 1 && s->P == 1 && s->C % 16 == 0 &&
               s->OC % 16 == 0 && s->B >= 8;
    if (which == PASS_FWD || which == PASS_FWD_BIAS)
        wino = wino && s->H * s->W >= 256;
    return wino ? dnnl_convolution_winograd : dnnl_convolution_direct;
}

// The forward pd (of algorithm alg) the backward passes are created against.
static int entry_hint(ConvEntry *e, dnnl_alg_kind_t alg) {
    int wino = alg == dnnl_convolution_winograd;
    if (e->hint[wino])
        return 0;
    ConvMds m;
    dnnl_convolution_desc_t cd;
    int rc = conv_mds(&m, &e->shape, PASS_FWD);
    if (rc)
        return rc;
    DNNL_TRY(dnnl_convolution_forward_desc_init(&cd, dnnl_forward_training, alg, &m.src, &m.wei,
                                                &m.bias, &m.dst, m.stride, m.pad, m.pad));
    DNNL_TRY(dnnl_primitive_desc_create(&e->hint[wino], &cd, NULL, conv_engine, NULL));
fail:
    return rc;
}

// Creates pass `which` of entry e with algorithm alg.
static int entry_pass_alg(ConvEntry *e, int which, dnnl_alg_kind_t alg) {
    ConvPass *p = &e->pass[which];
    const ConvShape *s = &e->shape;
    ConvMds m;
    int rc = conv_mds(&m, s, which);
    if (rc)
        return rc;
    ArgSpec sp[4];
    if (which == PASS_FWD || which == PASS_FWD_BIAS) {
        int bias = which == PASS_FWD_BIAS;
        dnnl_convolution_desc_t cd;
        DNNL_TRY(dnnl_convolution_forward_desc_init(&cd, dnnl_forward_inference, alg, &m.src,
                                                    &m.wei, bias ? &m.bias : NULL, &m.dst,
                                                    m.stride, m.pad, m.pad));
        int n = 0;
        sp[n++] = spec4(DNNL_ARG_SRC, ARG_IN, s->B, s->C, s->H, s->W, dnnl_nchw);
        sp[n++] = spec4(DNNL_ARG_WEIGHTS, ARG_IN, s->OC, s->C, s->K, s->K, dnnl_oihw);
        if (bias)
            sp[n++] = spec1(DNNL_ARG_BIAS, ARG_IN, s->OC);
        sp[n++] = spec4(DNNL_ARG_DST, ARG_OUT, s->B, s->OC, s->OH, s->OW, dnnl_nchw);
        return pass_create(p, &cd, NULL, sp, n);
    }
    if ((rc = entry_hint(e, alg)))
        return rc;
    const_dnnl_primitive_desc_t hint = e->hint[alg == dnnl_convolution_winograd];
    if (which == PASS_BWD_DATA) {
        dnnl_convolution_desc_t cd;
        DNNL_TRY(dnnl_convolution_backward_data_desc_init(&cd, alg, &m.src, &m.wei, &m.dst,
                                                          m.stride, m.pad, m.pad));
        sp[0] = spec4(DNNL_ARG_DIFF_DST, ARG_IN, s->B, s->OC, s->OH, s->OW, dnnl_nchw);
        sp[1] = spec4(DNNL_ARG_WEIGHTS, ARG_IN, s->OC, s->C, s->K, s->K, dnnl_oihw);
        sp[2] = spec4(DNNL_ARG_DIFF_SRC, ARG_ACC, s->B, s->C, s->H, s->W, dnnl_nchw);
        return pass_create(p, &cd, hint, sp, 3);
    }
    // PASS_BWD_W, PASS_BWD_WB
    int bias = which == PASS_BWD_WB;
    dnnl_convolution_desc_t cd;
    DNNL_TRY(dnnl_convolution_backward_weights_desc_init(&cd, alg, &m.src, &m.wei,
                                                         bias ? &m.bias : NULL, &m.dst, m.stride,
                                                         m.pad, m.pad));
    int n = 0;
    sp[n++] = spec4(DNNL_ARG_SRC, ARG_IN, s->B, s->C, s->H, s->W, dnnl_nchw);
    sp[n++] = spec4(DNNL_ARG_DIFF_DST, ARG_IN, s->B, s->OC, s->OH, s->OW, dnnl_nchw);
    sp[n++] = spec4(DNNL_ARG_DIFF_WEIGHTS, ARG_ACC, s->OC, s->C, s->K, s->K, dnnl_oihw);
    if (bias)
        sp[n++] = spec1(DNNL_ARG_DIFF_BIAS, ARG_ACC, s->OC);
    return pass_create(p, &cd, hint, sp, n);
fail:
    return rc;
}

// Creates pass `which` of entry e if it does not exist yet, falling back to the direct algorithm
// where oneDNN has no Winograd kernel for this machine.
static int entry_pass(ConvEntry *e, int which) {
    if (e->pass[which].prim)
        return 0;
    dnnl_alg_kind_t alg = conv_alg(&e->shape, which);
    int rc = entry_pass_alg(e, which, alg);
    if (rc == KERNELS_EDNN && alg != dnnl_convolution_direct)
        rc = entry_pass_alg(e, which, dnnl_convolution_direct);
    return rc;
}

// ---------------------------------------------------------------------------------------------
// The cache

static void entry_free(ConvEntry *e) {
    for (int i = 0; i < PASS_COUNT; i++)
        pass_free(&e->pass[i]);
    for (int i = 0; i < 2; i++)
        if (e->hint[i])
            dnnl_primitive_desc_destroy(e->hint[i]);
    if (e->stream)
        dnnl_stream_destroy(e->stream);
    pthread_mutex_destroy(&e->lock);
    free(e);
}

static int shape_make(ConvShape *s, int B, int C, int H, int W, int OC, int K, int S, int P) {
    if (B <= 0 || C <= 0 || H <= 0 || W <= 0 || OC <= 0 || K <= 0 || S <= 0 || P < 0 ||
        H + 2 * P < K || W + 2 * P < K)
        return KERNELS_EINVAL;
    *s = (ConvShape){B,  C, H, W, OC, K, S, P, (H + 2 * P - K) / S + 1, (W + 2 * P - K) / S + 1,
                     conv_bf16 && !conv_fp32_held};
    return 0;
}

int conv2d_bf16_supported(char *why, size_t len) {
    // The ISA values are nested bit sets: each includes the ones before it.
    dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa();
    if ((isa & dnnl_cpu_isa_avx512_core_bf16) == dnnl_cpu_isa_avx512_core_bf16) {
        snprintf(why, len, "%s",
                 (isa & dnnl_cpu_isa_avx512_core_amx) == dnnl_cpu_isa_avx512_core_amx
                     ? "AMX"
                     : "AVX512-BF16");
        return 1;
    }
    snprintf(why, len, "this CPU has no BF16 instructions (AVX512-BF16 or AMX; oneDNN would "
                       "emulate them slower than FP32)");
    return 0;
}

int conv2d_bf16_set(int on, char *why, size_t len) {
    char what[160];
    if (on && !conv2d_bf16_supported(what, sizeof what)) {
        if (why)
            snprintf(why, len, "%s", what);
        conv_bf16 = 0;
        return -1;
    }
    conv_bf16 = on != 0;
    return 0;
}

int conv2d_bf16_get(void) { return conv_bf16; }

int conv2d_fp32_hold(int hold) {
    int was = conv_fp32_held;
    conv_fp32_held = hold != 0;
    return was;
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
fail:
    pthread_mutex_unlock(&conv_cache_lock);
    // The entry is locked after the cache is released, so a thread waiting for a busy shape
    // does not hold up the others; entries are only freed by conv2d_cache_clear.
    if (!rc) {
        pthread_mutex_lock(&e->lock);
        *out = e;
    }
    return rc;
}

// Not to be called while another thread is inside conv2d_forward or conv2d_backward.
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
        rc = pass_run(&e->pass[which], e->stream, bias ? with_bias : without, NULL);
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
            rc = pass_run(&e->pass[PASS_BWD_DATA], e->stream, ptrs, NULL);
    }
    if (!rc && dw) {
        int which = dbias ? PASS_BWD_WB : PASS_BWD_W;
        rc = entry_pass(e, which);
        void *ptrs[4] = {(void *)inp, (void *)dout, dw, dbias};
        if (!rc)
            rc = pass_run(&e->pass[which], e->stream, ptrs,
                          dinp ? &e->pass[PASS_BWD_DATA] : NULL);
    }
    pthread_mutex_unlock(&e->lock);
    return rc;
}
