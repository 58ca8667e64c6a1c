/* fuzz_util.h — helpers shared by the fuzz targets (header only). */
#ifndef OM_FUZZ_UTIL_H
#define OM_FUZZ_UTIL_H

#include <stdbool.h>
#include <stddef.h>

#include <protobuf-c/protobuf-c.h>

/* True when `m` or a message inside it kept an unknown field numbered 0.
 * protobuf-c 1.4.1 accepts such a tag when it is encoded in more than one
 * byte (80 00) but refuses its own one-byte re-encoding (00), so the
 * request does not survive a pack/unpack round trip. Handlers never read
 * unknown fields; the targets only skip the round-trip check for these
 * (docs/reliability.md "Fuzzing", findings). */
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

#endif
