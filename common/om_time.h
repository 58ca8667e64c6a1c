/* om_time.h — deadlines for pthread_cond_timedwait, and the conversions
 * between unix microseconds (how services store time) and
 * google.protobuf.Timestamp seconds/nanos, overflow-safe for any input;
 * om_pb_timestamp fills a Timestamp message. */
#ifndef OM_TIME_H
#define OM_TIME_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "google/protobuf/timestamp.pb-c.h"

/* google.protobuf.Timestamp's range, 0001-01-01T00:00:00Z ..
 * 9999-12-31T23:59:59.999999Z, in unix microseconds (fits int64 easily). */
#define OM_TIMESTAMP_MIN_SECONDS (-62135596800LL)
#define OM_TIMESTAMP_MAX_SECONDS 253402300799LL
#define OM_TIMESTAMP_MIN_US (OM_TIMESTAMP_MIN_SECONDS * 1000000LL)
#define OM_TIMESTAMP_MAX_US (OM_TIMESTAMP_MAX_SECONDS * 1000000LL + 999999LL)

/* Unix microseconds of a Timestamp. False (and *us untouched) when it lies
 * outside the range above or nanos is outside [0, 1e9): never overflows. */
static inline bool om_timestamp_to_us(int64_t seconds, int32_t nanos, int64_t *us) {
    if (seconds < OM_TIMESTAMP_MIN_SECONDS || seconds > OM_TIMESTAMP_MAX_SECONDS || nanos < 0 ||
        nanos > 999999999)
        return false;
    *us = seconds * 1000000 + nanos / 1000;
    return true;
}

/* The same, clamped into the range instead of refused (for callers that
 * must produce a value; requests are range-checked before handlers run). */
static inline int64_t om_timestamp_us_clamped(int64_t seconds, int32_t nanos) {
    if (seconds < OM_TIMESTAMP_MIN_SECONDS) return OM_TIMESTAMP_MIN_US;
    if (seconds > OM_TIMESTAMP_MAX_SECONDS) return OM_TIMESTAMP_MAX_US;
    if (nanos < 0) nanos = 0;
    if (nanos > 999999999) nanos = 999999999;
    return seconds * 1000000 + nanos / 1000;
}

/* Timestamp seconds/nanos of unix microseconds: floor division, so nanos is
 * always in [0, 1e9), for any int64 (INT64_MIN included). */
static inline void om_us_to_timestamp(int64_t us, int64_t *seconds, int32_t *nanos) {
    int64_t s = us / 1000000, r = us % 1000000;
    if (r < 0) {
        s -= 1;
        r += 1000000;
    }
    *seconds = s;
    *nanos = (int32_t)(r * 1000);
}

/* *t, initialised, as the Timestamp of unix microseconds: the one way every
 * service fills a google.protobuf.Timestamp. */
static inline void om_pb_timestamp(Google__Protobuf__Timestamp *t, int64_t us) {
    google__protobuf__timestamp__init(t);
    om_us_to_timestamp(us, &t->seconds, &t->nanos);
}

/* `clock` now plus `ms` milliseconds: pass the clock the condition variable
 * waits on (CLOCK_REALTIME unless pthread_condattr_setclock said otherwise). */
static inline struct timespec om_deadline(clockid_t clock, long ms) {
    struct timespec t;
    clock_gettime(clock, &t);
    t.tv_sec += ms / 1000;
    t.tv_nsec += (ms % 1000) * 1000000L;
    if (t.tv_nsec >= 1000000000L) {
        t.tv_sec++;
        t.tv_nsec -= 1000000000L;
    }
    return t;
}

#endif
