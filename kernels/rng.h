// rng.h — a small, fast, reproducible random number generator (xoshiro256**, Blackman & Vigna),
// with uniform and normal draws. Its whole state is four u64s, so checkpoints save it exactly.
#ifndef KERNELS_RNG_H
#define KERNELS_RNG_H

#include <stdint.h>

typedef struct {
    uint64_t s[4];
} Rng;

// Seeds the state from one u64 with splitmix64, so nearby seeds give unrelated streams.
void rng_seed(Rng *r, uint64_t seed);
uint64_t rng_u64(Rng *r);
// Uniform in [0, 1).
float rng_uniform(Rng *r);
// Integer uniform in [0, n).
uint32_t rng_below(Rng *r, uint32_t n);
// Fills out (n) with standard normal draws (Box-Muller, both values used).
void rng_normal(Rng *r, float *out, long n);

#endif
