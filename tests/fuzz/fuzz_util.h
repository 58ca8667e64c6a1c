/* fuzz_util.h — helpers shared by the fuzz targets (header only). */
#ifndef OM_FUZZ_UTIL_H
#define OM_FUZZ_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <protobuf-c/protobuf-c.h>

/* True when `m` or a message inside it kept an unknown field numbered 0.
 * protobuf-c 1.4.1 accepts such a tag when it is encoded in more than one
 * byte (80 00) but refuses its own one-byte re-encoding (00), so the
 * request would not survive a pack/unpack round trip. pbcheck_wire_ex now
 * refuses field 0 before any handler; fuzz_rpc asserts that no accepted
 * request holds one (docs/reliability.md "Fuzzing", findings). */
static inline bool fuzz_has_tag0(const ProtobufCMessage *m) {
    if (m == NULL) return false;
    for (unsigned i = 0; i < m->n_unknown_fields; i++)
        if (m->unknown_fields[i].tag == 0) return true;
    const ProtobufCMessageDescriptor *d = m->descriptor;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (f->type != PROTOBUF_C_TYPE_MESSAGE) continue;
        const char *base = (const char *)m + f->offset;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(const size_t *)((const char *)m + f->quantifier_offset);
            ProtobufCMessage *const *v = *(ProtobufCMessage *const *const *)base;
            for (size_t k = 0; k < n; k++)
                if (fuzz_has_tag0(v[k])) return true;
        } else {
            if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
                unsigned c = *(const unsigned *)((const char *)m + f->quantifier_offset);
                if (c != f->id) continue;
            }
            if (fuzz_has_tag0(*(ProtobufCMessage *const *)base)) return true;
        }
    }
    return false;
}

/* RFC 3629 UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF
 * (written here independently of common/pbcheck.c, to check it). */
static inline bool fuzz_utf8_valid(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t k;
        unsigned min;
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf) k = 1, min = 0x80;
        else if (c >= 0xe0 && c <= 0xef) k = 2, min = 0x800;
        else if (c >= 0xf0 && c <= 0xf4) k = 3, min = 0x10000;
        else return false;
        if (i + k >= n) return false; /* truncated sequence */
        unsigned cp = c & (0x3fu >> k);
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xc0) != 0x80) return false;
            cp = cp << 6 | (s[i + j] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
        i += k + 1;
    }
    return true;
}

/* What a handler may assume of an accepted request, checked independently
 * of the validator: every string is UTF-8 that PostgreSQL takes, every
 * Timestamp/Duration converts to microseconds without overflow. The name
 * of the first field that breaks it, or NULL. */
static inline const char *fuzz_oracle(const ProtobufCMessage *m) {
    if (m == NULL) return NULL;
    const ProtobufCMessageDescriptor *d = m->descriptor;
    bool is_time = strcmp(d->name, "google.protobuf.Timestamp") == 0 ||
                   strcmp(d->name, "google.protobuf.Duration") == 0;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        const char *base = (const char *)m + f->offset;
        if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            unsigned c = *(const unsigned *)((const char *)m + f->quantifier_offset);
            if (c != f->id) continue;
        }
        size_t n = 1;
        const void *const *items = (const void *const *)base;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            n = *(const size_t *)((const char *)m + f->quantifier_offset);
            items = *(const void *const *const *)base;
        }
        for (size_t k = 0; k < n; k++) {
            if (f->type == PROTOBUF_C_TYPE_STRING) {
                const char *str = (const char *)items[k];
                if (str != NULL && !fuzz_utf8_valid((const unsigned char *)str, strlen(str))) return f->name;
            } else if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
                const char *bad = fuzz_oracle((const ProtobufCMessage *)items[k]);
                if (bad != NULL) return bad;
            } else if (is_time && strcmp(f->name, "seconds") == 0) {
                int64_t sec = *(const int64_t *)base;
                if (sec > INT64_MAX / 1000000 - 1 || sec < INT64_MIN / 1000000 + 1) return f->name;
            }
        }
    }
    return NULL;
}

#endif
