// dist.c — MPI for data-parallel training (dist.h). Not here: which slice of a batch a process
// takes (gan.c, from GanTrainer.dp_rank / dp_size) and who writes checkpoints (cli.c: rank 0).
// The all-reduce of GPU buffers (NCCL) is dist_cuda.c's.
#include "generator/dist.h"

#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int launched_by_mpirun(void) {
    return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMIX_RANK");
}

int dist_init(Dist *d, char *err, size_t errlen) {
    memset(d, 0, sizeof *d);
    d->size = 1;
    if (!launched_by_mpirun()) return 0;
    if (MPI_Init(NULL, NULL) != MPI_SUCCESS) {
        snprintf(err, errlen, "MPI_Init failed");
        return -1;
    }
    d->mpi = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &d->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &d->size);
    return 0;
}

void dist_free(Dist *d) {
    if (d->mpi) MPI_Finalize();
    d->mpi = 0;
}

int dist_mean(Dist *d, float *buf, long n) {
    if (d->size <= 1) return 0;
    // MPI counts are int: large buffers go in chunks
    for (long off = 0; off < n;) {
        int k = n - off > (1L << 30) ? 1 << 30 : (int)(n - off);
        if (MPI_Allreduce(MPI_IN_PLACE, buf + off, k, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD) !=
            MPI_SUCCESS)
            return -1;
        off += k;
    }
    float inv = 1.0f / (float)d->size;
    for (long i = 0; i < n; i++) buf[i] *= inv;
    return 0;
}

int dist_any(Dist *d, int flag) {
    if (d->size <= 1) return flag;
    int out = 0;
    if (MPI_Allreduce(&flag, &out, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD) != MPI_SUCCESS) return -1;
    return out;
}

int dist_bcast(Dist *d, void *buf, int bytes) {
    if (d->size <= 1) return 0;
    return MPI_Bcast(buf, bytes, MPI_BYTE, 0, MPI_COMM_WORLD) == MPI_SUCCESS ? 0 : -1;
}

static int env_int(const char *name, int fallback) {
    const char *v = getenv(name);
    return v && *v ? atoi(v) : fallback;
}

int dist_local_rank(const Dist *d) { return env_int("OMPI_COMM_WORLD_LOCAL_RANK", d->rank); }

int dist_local_size(const Dist *d) { return env_int("OMPI_COMM_WORLD_LOCAL_SIZE", d->size); }

int dist_grad_reduce(void *ctx, float *grads, long n) { return dist_mean(ctx, grads, n); }
