/* op.h — the one request pipeline every handler that reads or writes its
 * service's database goes through (issue 16).
 *
 * A handler validates its request (rpc_violation / rpc_fail_invalid), then
 * hands the rest to op_run with a constant op_def:
 *
 *   static int apply_delete(op_call *op, pg_conn *tx) { ... op_fail(op, ...) ... }
 *   static const op_def delete_def = {.apply = apply_delete, .mutation = true, .fetch = svc_fetch};
 *   static int h_delete(rpc_ctx *ctx, const ProtobufCMessage *req, ProtobufCMessage *resp) {
 *       ... validate ...
 *       return op_run(ctx, &delete_def, req, resp, NULL);
 *   }
 *
 * op_run owns, once for every service:
 *   - the request id (SPEC 8): for a mutation the request's `request_id`
 *     field is claimed inside the transaction (idem_check, INSERT ... ON
 *     CONFLICT) and the reply stored in the same transaction (idem_store);
 *     a repeat gets the first reply;
 *   - the transaction and its retries (pg_tx: apply may run more than once,
 *     and every attempt starts from an empty response and a clean op_call);
 *   - fetch rounds (SPEC 2): apply returns op_need(op, WHAT) when a local
 *     copy is missing; the transaction is rolled back, def->fetch brings
 *     what op->need names from its owner within the caller's deadline, and
 *     the transaction runs again (at most def->max_rounds times);
 *   - the one failure dialect: inside apply (and fetch) a refusal is
 *     `return op_fail(op, OM_E_..., "message", ...)` (with op_violation for
 *     field violations); op_run turns the code into the call's status once,
 *     after the transaction was rolled back. A bare OM_E_* code returned
 *     without op_fail gets the table's default message (and INTERNAL is
 *     logged with the SQL error). */
#ifndef OM_OP_H
#define OM_OP_H

#include <stdbool.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "idem.h"
#include "pg.h"
#include "rpc.h"

/* What apply returns (through op_need) when a local copy is missing: a
 * positive value distinct from 0, from RPC_DEFER's use and from every
 * OM_E_* code. The bits a service puts in op->need are its own. */
#define OP_NEED_FETCH 0x4e45

/* Fetch rounds when op_def.max_rounds is 0. */
#define OP_MAX_ROUNDS 4

/* Ids of missing copies one attempt can name (op->need_ids). */
#define OP_MAX_NEED_IDS 128

/* Field violations op_violation keeps per attempt. */
#define OP_MAX_VIOLATIONS 8

typedef struct op_call op_call;

/* The work of the call, inside its transaction `tx`. Fills op->resp and
 * returns 0, or op_fail(...), or op_need(...), or a bare OM_E_* code. May
 * run more than once: keep nothing across attempts outside op_call. */
typedef int (*op_apply_fn)(op_call *op, pg_conn *tx);

typedef struct op_def {
    op_apply_fn apply; /* required */
    /* A mutation: the request's `request_id` is claimed and the reply
     * stored with it (SPEC 8). A request without such a field is not
     * idempotent. */
    bool mutation;
    /* Runs in the same transaction after the reply was stored, not on a
     * replay: the place for a call to another service, so that every local
     * step that can fail has run before it (issue 14: a failed call leaves
     * nothing behind). May be NULL. */
    op_apply_fn after_store;
    /* Fetch the local copies op->need names from their owners (SPEC 2),
     * outside any transaction, within what is left of the caller's
     * deadline (rpc_time_left_ms). 0 or an OM_E_* code (op_fail for a
     * message of its own). `arg` is op_run's. NULL: apply never needs. */
    int (*fetch)(rpc_ctx *ctx, op_call *op, void *arg);
    /* Called before every attempt to forget what the last one recorded in
     * the service's own state (`arg`). May be NULL. */
    void (*reset)(op_call *op, void *arg);
    /* Called when the call fails with the code op_fail recorded, before the
     * status is sent (e.g. to add a PreconditionFailure detail). May be NULL. */
    void (*failed)(op_call *op, void *arg, int code);
    /* Called after the transaction committed (op->replayed says whether the
     * reply is a stored one), e.g. to copy what the caller needs into its
     * own state. May be NULL. */
    void (*committed)(op_call *op, void *arg);
    int max_rounds; /* fetch rounds; 0: OP_MAX_ROUNDS */
    /* The message of UNAVAILABLE (a peer or the database); NULL: a default. */
    const char *unavailable;
} op_def;

struct op_call {
    rpc_ctx *ctx;
    const om_actor *actor; /* rpc_actor(ctx) */
    const void *req;
    ProtobufCMessage *resp;
    void *arg; /* op_run's last argument: the handler's or service's state */
    const op_def *def;
    pg_conn *db;      /* the worker's connection (for fetch) */
    unsigned need;    /* what the last attempt found missing (op_need) */
    unsigned fetched; /* everything fetched in earlier rounds */
    /* what exactly is missing, for fetch (cleared before every attempt):
     * ids (e.g. accounts) and one key (e.g. an organization id) */
    uint64_t need_ids[OP_MAX_NEED_IDS];
    int n_need_ids;
    const char *need_key;
    int round;
    bool replayed; /* the reply is the stored one of an earlier call */
    /* the failure recorded by op_fail in the last attempt */
    int err;
    char msg[512];
    int n_viol;
    struct {
        char field[96];
        char msg[160];
    } viol[OP_MAX_VIOLATIONS];
    idem_key key;
};

/* Runs def->apply for the request as described above. Returns 0 (resp
 * filled) or the call's error code (the call has failed). */
int op_run(rpc_ctx *ctx, const op_def *def, const void *req, ProtobufCMessage *resp, void *arg);

/* Record the failure of this attempt: `code` (an OM_E_*), and a message
 * (NULL: the table's default). Returns `code`: `return op_fail(...)`. */
int op_fail(op_call *op, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Record a field violation of this attempt (sent with the failure as the
 * BadRequest detail). */
void op_violation(op_call *op, const char *field, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Ask for a fetch round of `what` (service bits, added to op->need).
 * Returns OP_NEED_FETCH: `return op_need(op, NEED_ACCOUNTS)`. */
int op_need(op_call *op, unsigned what);
/* Add `id` to op->need_ids (once; ignored when full). */
void op_need_id(op_call *op, uint64_t id);

/* ---- the plain pieces a handler uses around op_run ---- */

/* The worker's connection, or NULL with the call failed UNAVAILABLE ("the
 * <service> database is unreachable"). */
pg_conn *op_db(rpc_ctx *ctx);
/* The call failed INVALID_ARGUMENT: the message field `field` must be set
 * (for a request whose other checks need it). Returns the code. */
int op_fail_unset(rpc_ctx *ctx, const char *field);
/* A failed read outside op_run: the store's OM_E_* as the call's status
 * (INTERNAL logged with c's SQL error); returns rc. */
int op_fail_db(rpc_ctx *ctx, pg_conn *c, int rc);
/* A required id (hub, user ...): "must be set" when 0, "is out of range"
 * when it cannot be a PostgreSQL bigint (rpc_violation on `field`). */
void op_check_id(rpc_ctx *ctx, const char *field, uint64_t id);

#endif
