/* pbfield.h — setting a field of a protobuf-c message by its name.
 *
 * For families of event payloads that share field names (an "account" in
 * every account event, "actor" and "cause" in the assignment events): the
 * emitter keeps one table of payload types instead of a switch with one
 * block per type, and sets each value on whichever payloads have it. A
 * field is set only when the message has it with that name, type and
 * cardinality, so a payload without it stays as protobuf_c_message_init
 * left it. */
#ifndef OM_PBFIELD_H
#define OM_PBFIELD_H

#include <stdbool.h>
#include <stddef.h>
#include <string.h>

#include <protobuf-c/protobuf-c.h>

/* A singular (proto3, no presence) field: *value (size bytes: a pointer for
 * strings and messages, int for enums, protobuf_c_boolean for bools). */
static inline bool pb_set_field(ProtobufCMessage *m, const char *name, ProtobufCType type, const void *value,
                                size_t size) {
    const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field_by_name(m->descriptor, name);
    if (f == NULL || f->type != type || f->label != PROTOBUF_C_LABEL_NONE) return false;
    memcpy((char *)m + f->offset, value, size);
    return true;
}

/* A repeated field of strings or messages: the array of n pointers. */
static inline bool pb_set_repeated(ProtobufCMessage *m, const char *name, ProtobufCType type, void *array, size_t n) {
    const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field_by_name(m->descriptor, name);
    if (f == NULL || f->type != type || f->label != PROTOBUF_C_LABEL_REPEATED) return false;
    memcpy((char *)m + f->quantifier_offset, &n, sizeof n);
    memcpy((char *)m + f->offset, &array, sizeof array);
    return true;
}

/* Reading them back: *value (size bytes) of a singular field, the array and
 * count of a repeated one; false (nothing written) when the message has no
 * such field. */
static inline bool pb_get_field(const ProtobufCMessage *m, const char *name, void *value, size_t size) {
    const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field_by_name(m->descriptor, name);
    if (f == NULL || f->label != PROTOBUF_C_LABEL_NONE) return false;
    memcpy(value, (const char *)m + f->offset, size);
    return true;
}

static inline bool pb_get_repeated(const ProtobufCMessage *m, const char *name, void **array, size_t *n) {
    const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field_by_name(m->descriptor, name);
    if (f == NULL || f->label != PROTOBUF_C_LABEL_REPEATED) return false;
    memcpy(n, (const char *)m + f->quantifier_offset, sizeof *n);
    memcpy(array, (const char *)m + f->offset, sizeof *array);
    return true;
}

#endif
