/* pbcheck.c — one generic walk over a decoded request (see pbcheck.h).
 *
 * The walk keeps the fields it descends through on a small stack and builds
 * the path string only when something is refused, so an acceptable request
 * costs one pass over its strings and nothing else. */
#include "pbcheck.h"

#include <stdio.h>
#include <string.h>

#include "google/protobuf/duration.pb-c.h"
#include "google/protobuf/timestamp.pb-c.h"
#include "om_err.h"

int pbcheck_utf8(const uint8_t *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        /* ASCII runs eight bytes at a time. */
        while (i + 8 <= len) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            /* high bit set in any byte, or any byte zero */
            if ((w & 0x8080808080808080ULL) != 0 ||
                ((w - 0x0101010101010101ULL) & ~w & 0x8080808080808080ULL) != 0)
                break;
            i += 8;
        }
        if (i >= len) break;
        uint8_t c = s[i];
        if (c == 0) return -1; /* PostgreSQL text refuses U+0000 */
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n;
        uint8_t lo = 0x80, hi = 0xbf; /* allowed range of the second byte */
        if (c >= 0xc2 && c <= 0xdf) {
            n = 2;
        } else if (c >= 0xe0 && c <= 0xef) {
            n = 3;
            if (c == 0xe0) lo = 0xa0;      /* overlong */
            else if (c == 0xed) hi = 0x9f; /* surrogates */
        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 4;
            if (c == 0xf0) lo = 0x90;      /* overlong */
            else if (c == 0xf4) hi = 0x8f; /* above U+10FFFF */
        } else {
            return -1; /* continuation byte, overlong lead c0/c1, f5..ff */
        }
        if (len - i < n) return -1;
        if (s[i + 1] < lo || s[i + 1] > hi) return -1;
        for (size_t k = 2; k < n; k++)
            if ((s[i + k] & 0xc0) != 0x80) return -1;
        i += n;
    }
    return 0;
}

int pbcheck_timestamp(int64_t seconds, int32_t nanos) {
    if (seconds < PBCHECK_TIMESTAMP_MIN_SECONDS || seconds > PBCHECK_TIMESTAMP_MAX_SECONDS)
        return -1;
    if (nanos < 0 || nanos >= 1000000000) return -1;
    return 0;
}

int pbcheck_duration(int64_t seconds, int32_t nanos) {
    if (seconds < -PBCHECK_DURATION_MAX_SECONDS || seconds > PBCHECK_DURATION_MAX_SECONDS)
        return -1;
    if (nanos <= -1000000000 || nanos >= 1000000000) return -1;
    if ((seconds > 0 && nanos < 0) || (seconds < 0 && nanos > 0)) return -1;
    return 0;
}

/* ------------------------------------------------------------------------ */

typedef struct frame {
    const ProtobufCFieldDescriptor *field;
    size_t index; /* SIZE_MAX: not a repeated field */
} frame;

typedef struct walk {
    frame stack[PBCHECK_MAX_DEPTH + 1];
    int depth;
    const char *leaf; /* a last path element below the stack ("seconds"), or NULL */
    int reason;
    int fail_depth;   /* frames 0..fail_depth-1 name the refused field */
} walk;

static int check(walk *w, const ProtobufCMessage *msg);

static int check_field_value(walk *w, const ProtobufCFieldDescriptor *f, const void *member) {
    if (f->type == PROTOBUF_C_TYPE_STRING) {
        const char *s = *(char *const *)member;
        if (s == NULL || s[0] == '\0') return 0;
        if (pbcheck_utf8((const uint8_t *)s, strlen(s)) != 0) {
            w->reason = OM_E_INVALID_UTF8;
            w->fail_depth = w->depth;
            return -1;
        }
        return 0;
    }
    /* PROTOBUF_C_TYPE_MESSAGE */
    const ProtobufCMessage *sub = *(ProtobufCMessage *const *)member;
    if (sub == NULL) return 0;
    return check(w, sub);
}

static int check(walk *w, const ProtobufCMessage *msg) {
    const ProtobufCMessageDescriptor *d = msg->descriptor;
    if (d == &google__protobuf__timestamp__descriptor) {
        const Google__Protobuf__Timestamp *t = (const void *)msg;
        if (t->seconds < PBCHECK_TIMESTAMP_MIN_SECONDS || t->seconds > PBCHECK_TIMESTAMP_MAX_SECONDS)
            w->leaf = "seconds";
        else if (pbcheck_timestamp(t->seconds, t->nanos) != 0)
            w->leaf = "nanos";
        else
            return 0;
        w->reason = OM_E_TIMESTAMP_OUT_OF_RANGE;
        w->fail_depth = w->depth;
        return -1;
    }
    if (d == &google__protobuf__duration__descriptor) {
        const Google__Protobuf__Duration *t = (const void *)msg;
        if (t->seconds < -PBCHECK_DURATION_MAX_SECONDS || t->seconds > PBCHECK_DURATION_MAX_SECONDS)
            w->leaf = "seconds";
        else if (pbcheck_duration(t->seconds, t->nanos) != 0)
            w->leaf = "nanos";
        else
            return 0;
        w->reason = OM_E_DURATION_OUT_OF_RANGE;
        w->fail_depth = w->depth;
        return -1;
    }
    if (w->depth >= PBCHECK_MAX_DEPTH) {
        w->reason = OM_E_NESTING_TOO_DEEP;
        w->fail_depth = w->depth;
        return -1;
    }
    const char *base = (const char *)msg;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (f->type != PROTOBUF_C_TYPE_STRING && f->type != PROTOBUF_C_TYPE_MESSAGE) continue;
        frame *fr = &w->stack[w->depth];
        fr->field = f;
        fr->index = SIZE_MAX;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(const size_t *)(base + f->quantifier_offset);
            void *const *arr = *(void *const *const *)(base + f->offset);
            for (size_t k = 0; k < n; k++) {
                fr->index = k;
                w->depth++;
                int rc = check_field_value(w, f, &arr[k]);
                w->depth--;
                if (rc != 0) return rc;
            }
            continue;
        }
        if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
            *(const uint32_t *)(base + f->quantifier_offset) != f->id)
            continue; /* another member of the oneof is set */
        w->depth++;
        int rc = check_field_value(w, f, base + f->offset);
        w->depth--;
        if (rc != 0) return rc;
    }
    return 0;
}

/* Write "a.b[3].c" from the first `depth` frames and the leaf. */
static void write_path(const walk *w, int depth, char *path, size_t path_len) {
    if (path == NULL || path_len == 0) return;
    size_t pos = 0;
    path[0] = '\0';
    for (int i = 0; i < depth && pos < path_len; i++) {
        const frame *fr = &w->stack[i];
        int n = fr->index == SIZE_MAX
                    ? snprintf(path + pos, path_len - pos, "%s%s", i ? "." : "", fr->field->name)
                    : snprintf(path + pos, path_len - pos, "%s%s[%zu]", i ? "." : "",
                               fr->field->name, fr->index);
        if (n < 0) break;
        pos += (size_t)n;
    }
    if (w->leaf != NULL && pos < path_len)
        snprintf(path + pos, path_len - pos, "%s%s", depth ? "." : "", w->leaf);
}

int pbcheck_message_ex(const ProtobufCMessage *msg, char *path, size_t path_len, int *reason) {
    walk w;
    w.depth = 0;
    w.leaf = NULL;
    w.reason = 0;
    w.fail_depth = 0;
    if (path != NULL && path_len > 0) path[0] = '\0';
    if (msg == NULL) return 0;
    if (check(&w, msg) == 0) return 0;
    /* Unwinding only lowered w.depth: the frames are still there. */
    write_path(&w, w.fail_depth, path, path_len);
    if (reason != NULL) *reason = w.reason;
    return OM_E_INVALID_ARGUMENT;
}

int pbcheck_message(const ProtobufCMessage *msg, char *path, size_t path_len) {
    return pbcheck_message_ex(msg, path, path_len, NULL);
}

/* ------------------------------------------------------------------------ */
/* U+0000 in the encoded bytes                                                */

static int read_varint(const uint8_t *buf, size_t len, size_t *pos, uint64_t *out) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64 && *pos < len; shift += 7) {
        uint8_t b = buf[(*pos)++];
        v |= (uint64_t)(b & 0x7f) << shift;
        if ((b & 0x80) == 0) {
            *out = v;
            return 0;
        }
    }
    return -1;
}

/* Index of the occurrence of field `id` that starts at `at` (repeated
 * fields appear once per element; computed only on failure). */
static size_t occurrence(const uint8_t *buf, size_t len, uint32_t id, size_t at) {
    size_t pos = 0, n = 0;
    while (pos < at && pos < len) {
        uint64_t key, v;
        size_t start = pos;
        if (read_varint(buf, len, &pos, &key) != 0) break;
        unsigned wt = (unsigned)(key & 7);
        if (wt == 0) {
            if (read_varint(buf, len, &pos, &v) != 0) break;
        } else if (wt == 1) {
            pos += 8;
        } else if (wt == 5) {
            pos += 4;
        } else if (wt == 2) {
            if (read_varint(buf, len, &pos, &v) != 0 || v > len - pos) break;
            pos += (size_t)v;
        } else {
            break;
        }
        if (start < at && (key >> 3) == id) n++;
    }
    return n;
}

static int wire_walk(walk *w, const ProtobufCMessageDescriptor *d, const uint8_t *buf, size_t len) {
    if (w->depth >= PBCHECK_MAX_DEPTH) {
        w->reason = OM_E_NESTING_TOO_DEEP;
        w->fail_depth = w->depth;
        return -1;
    }
    size_t pos = 0;
    while (pos < len) {
        size_t start = pos;
        uint64_t key, v;
        if (read_varint(buf, len, &pos, &key) != 0) return 0; /* unpack refuses it */
        if (key >> 3 == 0) {
            /* Field number 0 does not exist; protobuf-c 1.4.1 still accepts
             * it written as a two-byte tag (found by fuzz_rpc), then refuses
             * its own re-encoding. */
            w->reason = OM_E_MALFORMED_MESSAGE;
            w->fail_depth = w->depth;
            return -1;
        }
        unsigned wt = (unsigned)(key & 7);
        if (wt == 0) {
            if (read_varint(buf, len, &pos, &v) != 0) return 0;
            continue;
        }
        if (wt == 1 || wt == 5) {
            pos += wt == 1 ? 8 : 4;
            continue;
        }
        if (wt != 2) return 0; /* groups: only in unknown fields, never seen by handlers */
        if (read_varint(buf, len, &pos, &v) != 0 || v > len - pos) return 0;
        const uint8_t *val = buf + pos;
        size_t n = (size_t)v;
        pos += n;
        if (key >> 3 > UINT32_MAX) continue;
        const ProtobufCFieldDescriptor *f =
            protobuf_c_message_descriptor_get_field(d, (unsigned)(key >> 3));
        if (f == NULL) continue;
        frame *fr = &w->stack[w->depth];
        fr->field = f;
        fr->index = SIZE_MAX;
        int rc = 0;
        if (f->type == PROTOBUF_C_TYPE_STRING) {
            if (n > 0 && memchr(val, 0, n) != NULL) {
                w->reason = OM_E_INVALID_UTF8;
                w->fail_depth = w->depth + 1;
                rc = -1;
            }
        } else if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
            w->depth++;
            rc = wire_walk(w, f->descriptor, val, n);
            w->depth--;
        }
        if (rc != 0) {
            /* Only now: which element of a repeated field this was. */
            if (f->label == PROTOBUF_C_LABEL_REPEATED) fr->index = occurrence(buf, len, f->id, start);
            return rc;
        }
    }
    return 0;
}

int pbcheck_wire_nul(const ProtobufCMessageDescriptor *desc, const uint8_t *buf, size_t len,
                     char *path, size_t path_len) {
    return pbcheck_wire_ex(desc, buf, len, path, path_len, NULL);
}

int pbcheck_wire_ex(const ProtobufCMessageDescriptor *desc, const uint8_t *buf, size_t len,
                    char *path, size_t path_len, int *reason) {
    if (reason != NULL) *reason = 0;
    walk w;
    w.depth = 0;
    w.leaf = NULL;
    w.reason = 0;
    w.fail_depth = 0;
    if (path != NULL && path_len > 0) path[0] = '\0';
    if (buf == NULL || len == 0) return 0;
    if (wire_walk(&w, desc, buf, len) == 0) return 0;
    write_path(&w, w.fail_depth, path, path_len);
    if (reason != NULL) *reason = w.reason;
    return OM_E_INVALID_ARGUMENT;
}
