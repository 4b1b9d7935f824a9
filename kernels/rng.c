// rng.c — xoshiro256** (Blackman & Vigna 2018) seeded by splitmix64, with uniform, bounded-integer
// and standard-normal draws.
//
// The whole state is Rng.s[4]: nothing is cached between calls (the Box-Muller spare of an odd
// count is dropped, not kept), so saving s[] in a checkpoint resumes the exact stream. It is not
// a cryptographic generator and not thread-safe: one Rng per thread.
#include "kernels/rng.h"

#include <math.h>

// splitmix64 (Steele, Lea & Flood 2014): one step of a Weyl sequence through a 64-bit mixer. Used
// only to expand a seed into xoshiro's 256-bit state, as its authors recommend, so that seeds that
// differ in one bit still give unrelated streams and the state is never all zero in practice.
static uint64_t splitmix64_next(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

void rng_seed(Rng *r, uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64_next(&x);
}

// xoshiro256** 1.0, transcribed from the authors' reference xoshiro256starstar.c.
uint64_t rng_u64(Rng *r) {
    uint64_t *s = r->s;
    const uint64_t result = rotl(s[1] * 5, 7) * 9;
    const uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

// The top 24 bits (the best ones of xoshiro's output) times 2^-24: every float in [0, 1) that is a
// multiple of 2^-24, equally likely, and never 1.0f (rounding a 32-bit draw could give 1.0f).
float rng_uniform(Rng *r) { return (float)(rng_u64(r) >> 40) * 0x1.0p-24f; }

// Lemire's nearly-divisionless bounded integer (Lemire 2019, "Fast random integer generation in an
// interval", alg. 5): the high half of x*n is uniform on [0, n) once the low-half draws that would
// over-represent some values (fewer than 2^32 mod n of them) are rejected. No modulo bias.
// n = 0 is a caller error; it returns 0 (m is 0, so the rejection branch is never entered).
uint32_t rng_below(Rng *r, uint32_t n) {
    uint64_t m = (uint64_t)(uint32_t)(rng_u64(r) >> 32) * n;
    uint32_t low = (uint32_t)m;
    if (low < n) {
        uint32_t threshold = (uint32_t)(-n) % n; // 2^32 mod n
        while (low < threshold) {
            m = (uint64_t)(uint32_t)(rng_u64(r) >> 32) * n;
            low = (uint32_t)m;
        }
    }
    return (uint32_t)(m >> 32);
}

// Box-Muller (Box & Muller 1958): from u1 in (0, 1] and u2 in [0, 1),
// r = sqrt(-2 ln u1), z0 = r cos(2 pi u2), z1 = r sin(2 pi u2) are independent N(0, 1).
// u1 excludes 0 so the log is finite (largest |z| is sqrt(2 * 24 ln 2) ~ 5.77). Computed in double:
// the cost is the log and sincos either way, and float cos of 2*pi*u loses digits near the top.
void rng_normal(Rng *r, float *out, long n) {
    for (long i = 0; i < n; i += 2) {
        double u1 = (double)((rng_u64(r) >> 40) + 1) * 0x1.0p-24;
        double u2 = (double)(rng_u64(r) >> 40) * 0x1.0p-24;
        double radius = sqrt(-2.0 * log(u1));
        double theta = 2.0 * M_PI * u2;
        out[i] = (float)(radius * cos(theta));
        if (i + 1 < n)
            out[i + 1] = (float)(radius * sin(theta));
    }
}
