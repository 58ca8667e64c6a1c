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

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "auth.h"
#include "pg.h"

/* Longer request ids are refused by idem_key_init (INVALID_ARGUMENT). */
#define IDEM_MAX_REQUEST_ID 128

typedef struct idem_key {
    const char *actor_key;   /* from idem_actor_key (points at actor_buf) */
    const char *method;
    const char *request_id;  /* "" or NULL: not idempotent, checks do nothing */
    uint8_t hash[32];        /* SHA-256 of the packed request */
    char actor_buf[48];      /* storage for actor_key */
} idem_key;

/* "user:<id>" or "service:<name>" ("anonymous" for NULL) into buf (>= 48). */
void idem_actor_key(const om_actor *actor, char *buf, size_t cap);

/* Fill `key` for this request (hashes the request packed). `method`
 * and `request_id` are not copied: they must outlive the key.
 * OM_E_INVALID_ARGUMENT if request_id is longer than IDEM_MAX_REQUEST_ID. */
int idem_key_init(idem_key *key, const om_actor *actor, const char *method,
                  const char *request_id, const ProtobufCMessage *req);
/* Looks the key up in <schema>.idempotency and claims it for this
 * transaction when it is new, so that a concurrent first use of the same id
 * waits for this one and then sees its reply (the change happens once).
 * On 1, *resp is the stored reply unpacked with `alloc` and `desc`.
 * Must run inside the mutation's transaction (OM_E_INTERNAL otherwise). */
int idem_check(pg_conn *tx, const idem_key *key, const ProtobufCMessageDescriptor *desc,
               ProtobufCAllocator *alloc, ProtobufCMessage **resp);
/* Store the reply for the key claimed by idem_check, same transaction. */
int idem_store(pg_conn *tx, const idem_key *key, const ProtobufCMessage *resp);

/* The whole protocol in the mutation's transaction: a repeat gets the stored
 * reply copied into *resp and *replayed set (apply is not called; 0);
 * otherwise apply(tx, arg) fills *resp and the reply is stored (0), or
 * apply's return (any non-zero value, positive ones included) is returned
 * as it is. The stored reply is unpacked with `alloc` (the call's arena),
 * so *resp is a shallow copy that lives as long as the call. `replayed`
 * may be NULL. */
int idem_run(pg_conn *tx, const idem_key *key, ProtobufCMessage *resp, ProtobufCAllocator *alloc,
             int (*apply)(pg_conn *tx, void *arg), void *arg, bool *replayed);

/* Delete up to `limit` entries older than 24 h (they no longer count).
 * Returns the number deleted or a negative code. The event relay calls it
 * now and then; a service need not. */
int idem_purge(pg_conn *c, int limit);

#endif
