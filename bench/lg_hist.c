/* lg_hist.c — the loadgen's latency histogram and gRPC status names.
 * Log-linear buckets keep percentiles within 0.8% at any scale with a fixed
 * 36 KB per thread, so recording a call is two shifts and an increment. */
#include <math.h>
#include <stdlib.h>
#include <strings.h>
#include <string.h>

#include "lg.h"

static int bucket_of(uint64_t v) {
    if (v < 2 * LG_SUB) return (int)v;
    int msb = 63 - __builtin_clzll(v);
    if (msb > LG_MAX_MSB) return LG_BUCKETS - 1;
    int shift = msb - LG_SUB_BITS;
    return (shift + 1) * LG_SUB + (int)(v >> shift) - LG_SUB;
}

static uint64_t bucket_high(int idx) {
    if (idx < 2 * LG_SUB) return (uint64_t)idx;
    int shift = idx / LG_SUB - 1;
    uint64_t sub = (uint64_t)(idx % LG_SUB + LG_SUB);
    return ((sub + 1) << shift) - 1;
}

void lg_hist_init(lg_hist *h) {
    memset(h, 0, sizeof *h);
    h->min = UINT64_MAX;
}

void lg_hist_add(lg_hist *h, uint64_t us) {
    h->b[bucket_of(us)]++;
    h->count++;
    h->sum += (double)us;
    if (us > h->max) h->max = us;
    if (us < h->min) h->min = us;
}

void lg_hist_merge(lg_hist *into, const lg_hist *from) {
    for (int i = 0; i < LG_BUCKETS; i++) into->b[i] += from->b[i];
    into->count += from->count;
    into->sum += from->sum;
    if (from->max > into->max) into->max = from->max;
    if (from->min < into->min) into->min = from->min;
}

uint64_t lg_hist_pct(const lg_hist *h, double p) {
    if (h->count == 0) return 0;
    if (p >= 100.0) return h->max;
    uint64_t want = (uint64_t)ceil(p / 100.0 * (double)h->count);
    if (want == 0) want = 1;
    uint64_t seen = 0;
    for (int i = 0; i < LG_BUCKETS; i++) {
        seen += h->b[i];
        if (seen >= want) {
            uint64_t v = bucket_high(i);
            return v > h->max ? h->max : v;
        }
    }
    return h->max;
}

double lg_hist_mean(const lg_hist *h) { return h->count ? h->sum / (double)h->count : 0.0; }

static const char *const status_names[] = {
    "OK",        "CANCELLED",         "UNKNOWN",        "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
    "OUT_OF_RANGE", "UNIMPLEMENTED",   "INTERNAL",       "UNAVAILABLE",      "DATA_LOSS",         "UNAUTHENTICATED",
};

const char *lg_status_name(int code) {
    if (code < 0 || code >= (int)(sizeof status_names / sizeof status_names[0])) return "UNKNOWN_CODE";
    return status_names[code];
}

int lg_status_code(const char *name) {
    for (int i = 0; i < (int)(sizeof status_names / sizeof status_names[0]); i++)
        if (strcasecmp(name, status_names[i]) == 0) return i;
    char *end;
    long v = strtol(name, &end, 10);
    if (*name != '\0' && *end == '\0' && v >= 0 && v <= 16) return (int)v;
    return -1;
}
