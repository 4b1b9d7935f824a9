// dist_cuda.h — data-parallel training on GPUs: the all-reduce of device buffers, as llm.c does
// it, for gan_cuda.c's gradients (the CUDA build only; the processes come from MPI, dist.h).
//
// Each process takes the GPU of its local rank (modulo the GPUs it sees). When every process on
// a machine has a GPU of its own, buffers are averaged by NCCL (ncclAllReduce with ncclAvg, on
// the step's stream, the communicator bootstrapped by an MPI broadcast of NCCL's unique id).
// When processes share a GPU, which NCCL refuses, they go through the host instead: copied down,
// averaged by MPI (dist_mean), copied up. STEER_DP_REDUCE=nccl or =host forces one of the two.
#ifndef GENERATOR_DIST_CUDA_H
#define GENERATOR_DIST_CUDA_H

#ifdef STEER_CUDA

#include <stddef.h>

#include <cuda_runtime_api.h>

#include "generator/dist.h"

typedef struct {
    Dist *dist;
    int device;  // the GPU this process uses
    const void *nccl; // NCCL's entry points (dist_cuda.c) when NCCL averages, NULL: the host
    void *comm;  // the ncclComm_t
    float *host; // pinned bounce buffer of the host path (host_floats)
    long host_floats;
} DistCuda;

// Chooses this process's GPU (cudaSetDevice) and the reduction. Collective: every process of d
// calls it. Returns 0, or -1 with a message in err (then this process cannot train on the GPU;
// dc is safe to dist_cuda_free). describe gets a phrase such as "NCCL over 2 GPUs".
int dist_cuda_init(DistCuda *dc, Dist *d, char *describe, size_t dlen, char *err, size_t elen);
// dev (n floats of device memory) becomes the mean over the processes, queued on stream
// (the host path waits for the stream). 0 or KERNELS_ECUDA. For GanCuda.reduce: ctx is the
// DistCuda.
int dist_cuda_mean(void *ctx, float *dev, long n, cudaStream_t stream);
void dist_cuda_free(DistCuda *dc);

#endif
#endif
