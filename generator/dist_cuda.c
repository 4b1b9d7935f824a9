// dist_cuda.c — the all-reduce of device buffers for data-parallel GPU training (dist_cuda.h).
// The pattern (one process per GPU, NCCL's unique id broadcast over MPI, ncclAllReduce on the
// compute stream between backward and the optimizer) is llm.c's (train_gpt2.cu, multi_gpu_*).
#ifdef STEER_CUDA

#include "generator/dist_cuda.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nccl.h>

#include "kernels/kernels.h"

// NCCL is loaded when first needed, not linked: steer runs where libnccl.so.2 is missing (NCCL
// is then not offered), and cuemu's stand-in, linked into its binaries and exported (Makefile),
// is found first.
typedef struct {
    ncclResult_t (*get_unique_id)(ncclUniqueId *);
    ncclResult_t (*comm_init_rank)(ncclComm_t *, int, ncclUniqueId, int);
    ncclResult_t (*all_reduce)(const void *, void *, size_t, ncclDataType_t, ncclRedOp_t,
                               ncclComm_t, cudaStream_t);
    ncclResult_t (*comm_destroy)(ncclComm_t);
    const char *(*error_string)(ncclResult_t);
} Nccl;

static void *nccl_sym(void *lib, const char *name) {
    void *p = dlsym(RTLD_DEFAULT, name);
    return p ? p : lib ? dlsym(lib, name) : NULL;
}

// NCCL's entry points, or NULL with the reason in why. Called from one thread (training's).
static const Nccl *nccl_load(char *why, size_t len) {
    static Nccl n;
    static int tried, ok;
    static char reason[256];
    if (!tried) {
        tried = 1;
        void *lib = NULL;
        if (!dlsym(RTLD_DEFAULT, "ncclAllReduce")) {
            lib = dlopen("libnccl.so.2", RTLD_NOW);
            if (!lib) snprintf(reason, sizeof reason, "libnccl.so.2 not loaded: %s", dlerror());
        }
        *(void **)&n.get_unique_id = nccl_sym(lib, "ncclGetUniqueId");
        *(void **)&n.comm_init_rank = nccl_sym(lib, "ncclCommInitRank");
        *(void **)&n.all_reduce = nccl_sym(lib, "ncclAllReduce");
        *(void **)&n.comm_destroy = nccl_sym(lib, "ncclCommDestroy");
        *(void **)&n.error_string = nccl_sym(lib, "ncclGetErrorString");
        ok = n.get_unique_id && n.comm_init_rank && n.all_reduce && n.comm_destroy &&
             n.error_string;
        if (!ok && !reason[0]) snprintf(reason, sizeof reason, "libnccl.so.2 lacks an entry point");
    }
    if (!ok) snprintf(why, len, "%s", reason);
    return ok ? &n : NULL;
}

// The reduction STEER_DP_REDUCE asks for: 1 NCCL, 0 the host, -1 choose.
static int reduce_wanted(void) {
    const char *v = getenv("STEER_DP_REDUCE");
    if (!v || !*v)
        return -1;
    if (!strcmp(v, "nccl"))
        return 1;
    if (!strcmp(v, "host"))
        return 0;
    return -1;
}

int dist_cuda_init(DistCuda *dc, Dist *d, char *describe, size_t dlen, char *err, size_t elen) {
    memset(dc, 0, sizeof *dc);
    dc->dist = d;
    // Collective from here on: every process makes the same MPI calls whatever fails locally,
    // so that none waits in a call the others never make.
    int count = 0, local = dist_local_rank(d), local_size = dist_local_size(d);
    int ok = cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
    if (ok) {
        dc->device = local % count;
        ok = cudaSetDevice(dc->device) == cudaSuccess;
    }
    if (dist_any(d, !ok)) {
        snprintf(err, elen, ok ? "another process has no usable GPU" : "no usable CUDA device");
        return -1;
    }
    // NCCL only if every machine gives each of its processes a GPU of its own (or as forced).
    // NCCL only where every process can load it (or STEER_DP_REDUCE=nccl, which then fails).
    char why[256] = "";
    const Nccl *nccl = nccl_load(why, sizeof why);
    int want = reduce_wanted();
    if (dist_any(d, !nccl)) {
        if (want == 1) {
            snprintf(err, elen, "STEER_DP_REDUCE=nccl, but NCCL: %s",
                     nccl ? "missing in another process" : why);
            return -1;
        }
        want = 0;
    }
    int use = want >= 0 ? want : !dist_any(d, local_size > count);
    if (!use) {
        snprintf(describe, dlen,
                 "%d processes, %d GPU%s here: gradients averaged through the host (MPI)", d->size,
                 count, count == 1 ? "" : "s");
        return 0;
    }
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    ncclResult_t r = d->rank == 0 ? nccl->get_unique_id(&id) : ncclSuccess;
    if (dist_bcast(d, &id, (int)sizeof id) || dist_any(d, r != ncclSuccess)) {
        snprintf(err, elen, "NCCL's unique id: %s",
                 r != ncclSuccess ? nccl->error_string(r) : "not shared");
        return -1;
    }
    ncclComm_t comm;
    r = nccl->comm_init_rank(&comm, d->size, id, d->rank);
    if (r != ncclSuccess) {
        snprintf(err, elen, "NCCL: %s", nccl->error_string(r));
        return -1;
    }
    dc->comm = comm;
    dc->nccl = nccl;
    snprintf(describe, dlen, "NCCL over %d processes, GPU %d here", d->size, dc->device);
    return 0;
}

// Through the host: down into the pinned buffer, MPI's mean, back up (queued after the wait).
static int mean_via_host(DistCuda *dc, float *dev, long n, cudaStream_t stream) {
    if (n > dc->host_floats) {
        cudaFreeHost(dc->host);
        dc->host = NULL;
        dc->host_floats = 0;
        if (cudaMallocHost((void **)&dc->host, sizeof(float) * (size_t)n) != cudaSuccess)
            return KERNELS_ECUDA;
        dc->host_floats = n;
    }
    size_t bytes = sizeof(float) * (size_t)n;
    if (cudaMemcpyAsync(dc->host, dev, bytes, cudaMemcpyDeviceToHost, stream) != cudaSuccess ||
        cudaStreamSynchronize(stream) != cudaSuccess)
        return KERNELS_ECUDA;
    if (dist_mean(dc->dist, dc->host, n))
        return KERNELS_ECUDA;
    // The next call's download is queued behind this upload on the same stream, and its wait
    // comes before the host writes the buffer again.
    if (cudaMemcpyAsync(dev, dc->host, bytes, cudaMemcpyHostToDevice, stream) != cudaSuccess)
        return KERNELS_ECUDA;
    return 0;
}

int dist_cuda_mean(void *ctx, float *dev, long n, cudaStream_t stream) {
    DistCuda *dc = ctx;
    if (dc->dist->size <= 1 || n <= 0)
        return 0;
    if (!dc->nccl)
        return mean_via_host(dc, dev, n, stream);
    const Nccl *nccl = dc->nccl;
    ncclResult_t r = nccl->all_reduce(dev, dev, (size_t)n, ncclFloat, ncclAvg,
                                      (ncclComm_t)dc->comm, stream);
    return r == ncclSuccess ? 0 : KERNELS_ECUDA;
}

void dist_cuda_free(DistCuda *dc) {
    const Nccl *nccl = dc->nccl;
    if (nccl)
        nccl->comm_destroy((ncclComm_t)dc->comm);
    cudaFreeHost(dc->host);
    memset(dc, 0, sizeof *dc);
}

#endif
