/* rpc_internal.h — pieces shared by the RPC server, client and reflection
 * inside common/ only; services never include this. */
#ifndef OM_RPC_INTERNAL_H
#define OM_RPC_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <grpc/grpc.h>

#include "rpc.h"

/* ---- call memory ---- */

typedef struct rpc_arena rpc_arena;
rpc_arena *rpc_arena_new(void);
void *rpc_arena_alloc(rpc_arena *a, size_t size); /* NULL when out of memory */
void rpc_arena_free(rpc_arena *a);

/* ---- google.rpc.Status ---- */

typedef struct rpc_kv {
    const char *key;
    const char *value;
} rpc_kv;

typedef struct rpc_packed_any {
    const char *type_url;
    uint8_t *data;
    size_t len;
} rpc_packed_any;

/* Everything a failed call reports, gathered while the handler runs. */
typedef struct rpc_error_info {
    int code;                  /* OM_E_* */
    const char *message;
    const char *domain;        /* the service, e.g. "accounts" */
    const rpc_kv *violations;  /* field, description */
    size_t n_violations;
    const rpc_kv *meta;        /* ErrorInfo metadata */
    size_t n_meta;
    const rpc_packed_any *extra; /* further details */
    size_t n_extra;
    /* API-01: a google.rpc.LocalizedMessage after the ErrorInfo, when set */
    const char *localized_locale;
    const char *localized_message;
} rpc_error_info;

/* Serialise google.rpc.Status{code, message, [ErrorInfo, BadRequest?, extra...]}
 * into a malloc'd buffer. */
int rpc_status_pack(const rpc_error_info *e, uint8_t **out, size_t *len);
/* Read reason and message back from grpc-status-details-bin. */
void rpc_status_unpack(const uint8_t *data, size_t len, rpc_status *st);
/* The OM_E_* code for a reason name, or one derived from the status. */
int rpc_code_from_status(grpc_status_code code, const char *reason);

/* ---- byte buffers ---- */

/* Copy a received byte buffer into one contiguous malloc'd block. */
int rpc_bb_read(grpc_byte_buffer *bb, uint8_t **out, size_t *len);
/* Pack a message into a new byte buffer (NULL on allocation failure). */
grpc_byte_buffer *rpc_bb_pack(const ProtobufCMessage *msg);

/* ---- admission ---- */

/* What the server does with a request's bytes before any handler: decode
 * with `alloc`, then pbcheck (NUL in the encoded strings, then the decoded
 * message). 0 and *req; OM_E_MALFORMED_MESSAGE (no *req);
 * or the validator's code (OM_E_INVALID_UTF8...) with *req set (free it
 * with `alloc`) and the offending field in `path` (else path is ""). The
 * fuzz target tests/fuzz/fuzz_rpc runs it on any method's input. */
int rpc_admit(const ProtobufCMessageDescriptor *input, ProtobufCAllocator *alloc, const uint8_t *buf,
              size_t len, ProtobufCMessage **req, char *path, size_t path_len);

/* Free what this thread remembered (verified tokens) before it exits. */
void rpc_thread_cleanup(void);

/* ---- reflection ---- */

typedef struct refl_index refl_index;
int refl_new(refl_index **out, const uint8_t *fds, size_t len);
void refl_free(refl_index *ix);
/* Answer one ServerReflectionRequest (v1 and v1alpha share the wire format).
 * `services` are the names list_services reports. */
int refl_answer(const refl_index *ix, const char *const *services, size_t n_services,
                const uint8_t *req, size_t req_len, uint8_t **resp, size_t *resp_len);

#endif
