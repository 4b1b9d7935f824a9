// dist.h — data-parallel training over MPI (OpenMPI), as llm.c does it: every process holds the
// whole model, takes its slice of each step's combined batch, and the gradients are averaged with
// an all-reduce before the (identical) optimizer step, so the processes stay in step.
//
// A process started by mpirun (OMPI_COMM_WORLD_SIZE, PMI_SIZE or PMIX_RANK in its environment)
// joins MPI_COMM_WORLD; any other is rank 0 of 1 and never touches MPI (so `steer serve` and a
// plain `steer train` pay nothing). One thread per process calls these.
#ifndef GENERATOR_DIST_H
#define GENERATOR_DIST_H

#include <stddef.h>

typedef struct {
    int rank, size; // this process and how many; 0 and 1 without MPI
    int mpi;        // MPI_Init was called (dist_free finalizes)
} Dist;

// Joins MPI when launched by mpirun. Returns 0, or -1 with a message in err (MPI refused).
int dist_init(Dist *d, char *err, size_t errlen);
// Finalizes MPI if dist_init started it. Safe on a zeroed struct.
void dist_free(Dist *d);
// buf (n) becomes the mean over the processes of everyone's buf (in place). 0 or -1.
int dist_mean(Dist *d, float *buf, long n);
// The largest of every process's flag (a stop any of them saw stops all). Returns it, or -1.
int dist_any(Dist *d, int flag);
// Rank 0's bytes of buf into every process's buf. 0 or -1.
int dist_bcast(Dist *d, void *buf, int bytes);
// This process's rank among those on its machine, and how many there are (OpenMPI's
// OMPI_COMM_WORLD_LOCAL_RANK / _LOCAL_SIZE; without them, rank and size).
int dist_local_rank(const Dist *d);
int dist_local_size(const Dist *d);
// The gradient all-reduce for GanTrainer.grad_reduce: ctx is the Dist.
int dist_grad_reduce(void *ctx, float *grads, long n);

#endif
