/* pbcheck.h — the checks every decoded request passes before a handler runs.
 *
 * protobuf-c decodes any bytes into a `string` field and any int64 into a
 * Timestamp; PostgreSQL and the time helpers do not accept them all. One walk
 * over the message, driven by its descriptors, refuses what no handler can
 * store: invalid UTF-8, and Timestamps/Durations outside protobuf's range. */
#ifndef OM_PBCHECK_H
#define OM_PBCHECK_H

#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "om_time.h"

/* Deeper nesting is refused (protobuf-c's unpack has no limit of its own). */
#define PBCHECK_MAX_DEPTH 32

/* google.protobuf.Timestamp: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z. */
#define PBCHECK_TIMESTAMP_MIN_SECONDS OM_TIMESTAMP_MIN_SECONDS
#define PBCHECK_TIMESTAMP_MAX_SECONDS OM_TIMESTAMP_MAX_SECONDS
/* google.protobuf.Duration: about ±10,000 years. */
#define PBCHECK_DURATION_MAX_SECONDS 315576000000LL

/* 0 when the whole message (nested messages, repeated fields, oneofs, map
 * entries) is acceptable; else OM_E_INVALID_ARGUMENT, and the proto path of
 * the first offending field ("activities[3].time.seconds") is written to
 * `path` (truncated to `path_len`, always terminated; `path` may be NULL).
 * Never allocates. */
int pbcheck_message(const ProtobufCMessage *msg, char *path, size_t path_len);

/* The same, and *reason (when not NULL) gets the specific code:
 * OM_E_INVALID_UTF8, OM_E_TIMESTAMP_OUT_OF_RANGE, OM_E_DURATION_OUT_OF_RANGE
 * or OM_E_NESTING_TOO_DEEP. */
int pbcheck_message_ex(const ProtobufCMessage *msg, char *path, size_t path_len, int *reason);

/* protobuf-c ends a decoded string at its first NUL byte, so a handler
 * would silently see "ab" for "ab\0cd": U+0000 can only be seen in the
 * encoded bytes. 0 when no string field (at any depth) of the encoded
 * message `buf` of type `desc` holds a NUL byte; else OM_E_INVALID_ARGUMENT
 * and the field's path, as above. Call it on bytes protobuf-c decoded. */
int pbcheck_wire_nul(const ProtobufCMessageDescriptor *desc, const uint8_t *buf, size_t len,
                     char *path, size_t path_len);
/* The same, and *reason (when not NULL) gets the specific code:
 * OM_E_INVALID_UTF8 (a NUL byte in a string), OM_E_MALFORMED_MESSAGE (a field
 * numbered 0, which protobuf-c accepts in a two-byte tag) or
 * OM_E_NESTING_TOO_DEEP. */
int pbcheck_wire_ex(const ProtobufCMessageDescriptor *desc, const uint8_t *buf, size_t len,
                    char *path, size_t path_len, int *reason);

/* Strict UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing above
 * U+10FFFF, and no U+0000 (PostgreSQL text cannot hold it). */
int pbcheck_utf8(const uint8_t *s, size_t len);

/* A google.protobuf.Timestamp / Duration within the ranges above. */
int pbcheck_timestamp(int64_t seconds, int32_t nanos);
int pbcheck_duration(int64_t seconds, int32_t nanos);

#endif
