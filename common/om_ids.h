/* om_ids.h — the spellings every service shares: an etag is `"<k><version>"`
 * (one letter per resource kind, then the version in decimal, quoted; see
 * docs/common/copies.md), a resource id is a canonical 36-character uuid. */
#ifndef OM_IDS_H
#define OM_IDS_H

#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define OM_ETAG_MAX 24

static inline void om_etag_encode(char kind, int64_t version, char out[OM_ETAG_MAX]) {
    snprintf(out, OM_ETAG_MAX, "\"%c%" PRId64 "\"", kind, version);
}

/* 0 and *version set when etag is `"<kind><digits>"` (at most 19 digits,
 * no overflow), else -1 and *version untouched. */
static inline int om_etag_decode(char kind, const char *etag, int64_t *version) {
    if (etag == NULL) return -1;
    size_t len = strlen(etag);
    if (len < 4 || len > 22 || etag[0] != '"' || etag[1] != kind || etag[len - 1] != '"') return -1;
    int64_t v = 0;
    for (size_t i = 2; i < len - 1; i++) {
        if (etag[i] < '0' || etag[i] > '9') return -1;
        if (v > (INT64_MAX - 9) / 10) return -1;
        v = v * 10 + (etag[i] - '0');
    }
    *version = v;
    return 0;
}

/* 8-4-4-4-12 hexadecimal digits (either case). */
static inline bool om_uuid_valid(const char *s) {
    if (s == NULL || strlen(s) != 36) return false;
    for (int i = 0; i < 36; i++) {
        char c = s[i];
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (c != '-') return false;
        } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) {
            return false;
        }
    }
    return true;
}

/* A bigint[] parameter for `= ANY($n::bigint[])`: "{1,2,3}" written into
 * buf, which holds OM_ID_ARRAY_CAP(n) bytes; returns buf (NULL stays NULL,
 * so an allocation can be passed straight in and checked after). */
#define OM_ID_ARRAY_CAP(n) ((size_t)(n) * 21 + 3)
static inline char *om_id_array(char *buf, const uint64_t *ids, size_t n) {
    if (buf == NULL) return NULL;
    size_t at = 0, cap = OM_ID_ARRAY_CAP(n);
    buf[at++] = '{';
    for (size_t i = 0; i < n; i++) at += (size_t)snprintf(buf + at, cap - at, "%s%" PRIu64, i ? "," : "", ids[i]);
    snprintf(buf + at, cap - at, "}");
    return buf;
}

#endif
