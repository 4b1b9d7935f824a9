// clock.h — the two clocks steer reads: a monotonic one for durations (rates, deadlines, ETAs)
// and the wall clock for timestamps that outlive the process (rows in the store, job times).
// Both are thread-safe and never fail (clock_gettime on Linux cannot, for these clocks).
#ifndef UTIL_CLOCK_H
#define UTIL_CLOCK_H

#include <stdint.h>

// Seconds on CLOCK_MONOTONIC: only differences mean anything.
double clock_now_s(void);
// Microseconds since the Unix epoch on CLOCK_REALTIME (what the store writes as *_unix_us).
int64_t clock_unix_us(void);

#endif
