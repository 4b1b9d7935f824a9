// params.c — the parameter table and its twin buffers; see params.h.
//
// Not a general tensor library: a fixed table of at most PARAMS_MAX tensors per network, laid out
// once, so a training step never allocates and a checkpoint is a walk over the table.
#include "generator/params.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ops.h"
#include "kernels/specnorm.h"

int paramset_add(ParamSet *ps, const char *name, int ndim, const int *shape, int sn, ParamInit init,
                 int fan_in, int is_bias) {
    if (ps->n >= PARAMS_MAX || ndim < 1 || ndim > 4 || strlen(name) >= PARAMS_NAME_MAX) {
        fprintf(stderr, "%s:%d: bad parameter declaration '%s'\n", __FILE__, __LINE__, name);
        exit(1);
    }
    Param *p = &ps->p[ps->n];
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", name);
    p->ndim = ndim;
    p->numel = 1;
    for (int d = 0; d < ndim; d++) {
        p->shape[d] = shape[d];
        p->numel *= shape[d];
    }
    p->offset = ps->total;
    // Keep every tensor 16-float (64-byte) aligned inside the buffer, for the vector units.
    ps->total += (p->numel + 15) & ~15L;
    p->sn = sn;
    p->init = init;
    p->fan_in = fan_in;
    p->is_bias = is_bias;
    if (sn) {
        p->rows = shape[0];
        p->cols = (int)(p->numel / shape[0]);
        p->u_offset = ps->u_total;
        p->v_offset = ps->v_total;
        ps->u_total += p->rows;
        ps->v_total += p->cols;
    }
    return ps->n++;
}

float *params_carve(ParamsCarver *cv, long n, long align) {
    float *p = cv->base ? cv->base + cv->used : NULL;
    cv->used += (n + align - 1) & ~(align - 1);
    return p;
}

void *params_zalloc(size_t bytes) {
    bytes = ((bytes ? bytes : 1) + 63) & ~(size_t)63;
    void *x = aligned_alloc(64, bytes);
    if (x) memset(x, 0, bytes);
    return x;
}

static float *alloc_floats(long n) { return params_zalloc(sizeof(float) * (size_t)(n > 0 ? n : 0)); }

int paramset_alloc(ParamSet *ps) {
    ps->params = alloc_floats(ps->total);
    ps->grads = alloc_floats(ps->total);
    ps->m = alloc_floats(ps->total);
    ps->v = alloc_floats(ps->total);
    ps->w_eff = alloc_floats(ps->total);
    ps->dw_eff = alloc_floats(ps->total);
    ps->sn_u = alloc_floats(ps->u_total);
    ps->sn_v = alloc_floats(ps->v_total);
    if (!ps->params || !ps->grads || !ps->m || !ps->v || !ps->w_eff || !ps->dw_eff || !ps->sn_u ||
        !ps->sn_v)
        return -1;
    return 0;
}

static void normalize(float *x, int n) {
    double s = 0;
    for (int i = 0; i < n; i++) s += (double)x[i] * x[i];
    float r = (float)(1.0 / fmax(sqrt(s), 1e-12));
    for (int i = 0; i < n; i++) x[i] *= r;
}

void paramset_init(ParamSet *ps, Rng *rng) {
    for (int i = 0; i < ps->n; i++) {
        Param *p = &ps->p[i];
        float *w = ps->params + p->offset;
        switch (p->init) {
        case PARAMS_INIT_ZERO:
            memset(w, 0, p->numel * sizeof(float));
            break;
        case PARAMS_INIT_UNIFORM_FANIN: {
            float bound = 1.0f / sqrtf((float)p->fan_in);
            for (long k = 0; k < p->numel; k++) w[k] = (2.0f * rng_uniform(rng) - 1.0f) * bound;
            break;
        }
        case PARAMS_INIT_NORMAL:
            rng_normal(rng, w, p->numel);
            break;
        }
        if (p->sn) {
            rng_normal(rng, ps->sn_u + p->u_offset, p->rows);
            normalize(ps->sn_u + p->u_offset, p->rows);
            rng_normal(rng, ps->sn_v + p->v_offset, p->cols);
            normalize(ps->sn_v + p->v_offset, p->cols);
        }
    }
    paramset_sn_forward(ps, 0);
}

void paramset_free(ParamSet *ps) {
    free(ps->params);
    free(ps->grads);
    free(ps->m);
    free(ps->v);
    free(ps->w_eff);
    free(ps->dw_eff);
    free(ps->sn_u);
    free(ps->sn_v);
    ps->params = ps->grads = ps->m = ps->v = ps->w_eff = ps->dw_eff = ps->sn_u = ps->sn_v = NULL;
}

float *paramset_w(const ParamSet *ps, int i) {
    const Param *p = &ps->p[i];
    return (p->sn ? ps->w_eff : ps->params) + p->offset;
}

float *paramset_dw(const ParamSet *ps, int i) {
    const Param *p = &ps->p[i];
    return (p->sn ? ps->dw_eff : ps->grads) + p->offset;
}

void paramset_sn_forward(ParamSet *ps, int update) {
    for (int i = 0; i < ps->n; i++) {
        Param *p = &ps->p[i];
        if (!p->sn) continue;
        if (ps->sn_off) {
            memcpy(ps->w_eff + p->offset, ps->params + p->offset, p->numel * sizeof(float));
            p->sigma = 1.0f;
            continue;
        }
        p->sigma = specnorm_forward(ps->w_eff + p->offset, ps->sn_v + p->v_offset,
                                    ps->sn_u + p->u_offset, ps->params + p->offset, p->rows,
                                    p->cols, update);
    }
}

void paramset_sn_backward(ParamSet *ps) {
    for (int i = 0; i < ps->n; i++) {
        Param *p = &ps->p[i];
        if (!p->sn) continue;
        float *dw_eff = ps->dw_eff + p->offset;
        if (ps->sn_off)
            add_inplace(ps->grads + p->offset, dw_eff, p->numel);
        else
            specnorm_backward(ps->grads + p->offset, dw_eff, ps->w_eff + p->offset,
                              ps->sn_u + p->u_offset, ps->sn_v + p->v_offset, p->sigma, p->rows,
                              p->cols);
        memset(dw_eff, 0, p->numel * sizeof(float));
    }
}

void paramset_zero_grad(ParamSet *ps) {
    memset(ps->grads, 0, ps->total * sizeof(float));
    memset(ps->dw_eff, 0, ps->total * sizeof(float));
}

void paramset_adam(ParamSet *ps, float lr, float beta1, float beta2, float eps, float weight_decay) {
    ps->adam_t++;
    int frozen = 0;
    for (int i = 0; i < ps->n; i++) frozen |= ps->p[i].frozen;
    if (weight_decay == 0.0f && !frozen) {
        adamw_update(ps->params, ps->grads, ps->m, ps->v, ps->total, lr, beta1, beta2, eps, 0.0f,
                     ps->adam_t);
        return;
    }
    for (int i = 0; i < ps->n; i++) {
        Param *p = &ps->p[i];
        if (p->frozen) continue;
        long o = p->offset;
        adamw_update(ps->params + o, ps->grads + o, ps->m + o, ps->v + o, p->numel, lr, beta1,
                     beta2, eps, p->is_bias ? 0.0f : weight_decay, ps->adam_t);
    }
}
