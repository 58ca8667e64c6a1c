/* idem.h — request ids (SPEC 8): a repeat of a mutation from the same actor
 * to the same method within 24 h returns the first result instead of acting
 * twice; the same id with a different request is INVALID_ARGUMENT.
 *
 * Used inside the mutation's transaction:
 *   idem_check()  -> 0 (new: go on), 1 (seen: *resp holds the stored reply),
 *                    OM_E_REQUEST_ID_REUSED
 *   ... do the change ...
 *   idem_store()  with the reply, in the same transaction. */
#ifndef OM_IDEM_H
#define OM_IDEM_H

#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "auth.h"
#include "pg.h"

typedef struct idem_key {
    const char *actor_key;   /* from idem_actor_key */
    const char *method;
    const char *request_id;  /* "" or NULL: not idempotent, checks do nothing */
    uint8_t hash[32];        /* SHA-256 of the packed request */
} idem_key;

/* Fill `key` for this request (hashes the request packed). */
int idem_key_init(idem_key *key, const om_actor *actor, const char *method,
                  const char *request_id, const ProtobufCMessage *req);
/* Looks the key up in <schema>.idempotency (locking it). On 1, *resp is the
 * stored reply unpacked with `alloc` and `desc`. */
int idem_check(pg_conn *tx, const idem_key *key, const ProtobufCMessageDescriptor *desc,
               ProtobufCAllocator *alloc, ProtobufCMessage **resp);
int idem_store(pg_conn *tx, const idem_key *key, const ProtobufCMessage *resp);

#endif
