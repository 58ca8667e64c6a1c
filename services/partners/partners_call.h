/* partners_call.h — what the handler files of the partners service share
 * (partners_call.c): call memory, per-item errors, who-may checks, offset
 * pages, abuse limits and the mutation runner over op_run. Included by
 * partners_rpc.c and partners_requests.c only. */
#ifndef PARTNERS_CALL_H
#define PARTNERS_CALL_H

#include "op.h"
#include "orgmesh/type/v1/audit.pb-c.h"
#include "partners.h"

#define MAX_REASON_CHARS 1000
#define MAX_QUERY_CHARS 256

/* ---- call memory, per-item errors, checks ---- */

ps_mem pa_call_mem(rpc_ctx *ctx);
Orgmesh__Type__V1__ItemError *pa_item_error(ps_mem *m, int code, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* PART-06: the error the second partner gets, naming the employee and the three ways out. */
Orgmesh__Type__V1__ItemError *pa_conflict_error(ps_mem *m, const char *field, const char *name);
void pa_check_text(rpc_ctx *ctx, const char *field, const char *s, long max);
/* Distinct, valid ids of a batch (1..100); violations recorded. */
void pa_check_batch(rpc_ctx *ctx, const char *field, const uint64_t *ids, size_t n);
/* A failed step: the code with a message, logged when it is unexpected. */
int pa_fail(rpc_ctx *ctx, int rc, const char *what);
uint64_t pa_caller_id(rpc_ctx *ctx);

/* ---- who may (SPEC 6, AIP-193; the comments in partners_call.c) ---- */

int pa_is_member(rpc_ctx *ctx, pg_conn *c, uint64_t hub, bool *member);
/* `hidden` for pa_require_manager when the caller may see what is asked about through another account. */
extern const char PA_MAY_SEE[];
int pa_require_manager(rpc_ctx *ctx, pg_conn *c, uint64_t partner, ps_account *acct, const char *hidden);
int pa_client_admin(rpc_ctx *ctx, pg_conn *c, uint64_t client, bool *ok, int *code);
int pa_manager_ok(rpc_ctx *ctx, pg_conn *c, uint64_t partner, bool *ok);

/* ---- offset pages ---- */

typedef struct pa_lpage {
    int limit, offset;
    const char *scope;
} pa_lpage;
int pa_lpage_open(rpc_ctx *ctx, int32_t size, const char *token, const char *scope, pa_lpage *pg);
char *pa_lpage_next(rpc_ctx *ctx, const pa_lpage *pg, int got);

/* ---- abuse limits (issue 13) ---- */

int pa_rate_take(pg_conn *c, const char *what, uint64_t actor, int64_t per_actor, uint64_t client,
                 int64_t per_client, int64_t *retry_ms, const char **which);
int pa_rate_fail(rpc_ctx *ctx, const char *what, const char *which, int64_t retry_ms);

/* ---- the mutation runner ---- */

typedef struct mutation mutation;
typedef int (*apply_fn)(mutation *mu, pg_conn *tx);

/* One mutation's own state (op_run's arg); the request id, transaction,
 * retries and failure are op_run's (common/op.h). */
struct mutation {
    rpc_ctx *ctx;
    op_call *oc; /* the running attempt */
    ProtobufCMessage *resp;
    apply_fn apply;
    /* Optional: runs in the same transaction after the reply is stored (not
     * on a replay): the place for a call to another service, so that every
     * local step that can fail has run before it (issue 14: a failed call
     * leaves nothing behind, remote effects included). */
    apply_fn after_store;
    void *op;
    const char *request_id;
    pa_who who;
    ps_mem mem;
    const char *rate_what;  /* RATE_LIMITED: what was limited */
    int64_t retry_ms;       /* RATE_LIMITED: when the window ends */
    const char *rate_which; /* RATE_LIMITED: which limit */
    bool replayed;          /* after op_run: the reply was a stored one */
};

extern const op_def pa_mutation_def;
/* Issue 13: a limit was reached in this attempt (`what`: "resends" ...). */
int pa_mu_rate_limited(mutation *mu, const char *what);
/* After commit: the accounts side of an assignment the call changed (failures stay marked for the sync loop). */
void pa_sync_after(pg_conn *c, const char *id);
/* Issue 18: after pa_sync_after, the accounts commits it made as resp's consistency_token. */
void pa_sync_token(rpc_ctx *ctx, ProtobufCMessage *resp);
int pa_reread(rpc_ctx *ctx, pg_conn *c, const char *id, ps_assignment *a);

/* ---- access requests (PART-04, PART-05: partners_requests.c) ---- */

int pa_h_list_access_requests(rpc_ctx *ctx, const ProtobufCMessage *req, ProtobufCMessage *resp);
int pa_h_get_access_request(rpc_ctx *ctx, const ProtobufCMessage *req, ProtobufCMessage *resp);
int pa_h_approve(rpc_ctx *ctx, const ProtobufCMessage *req, ProtobufCMessage *resp);
int pa_h_decline(rpc_ctx *ctx, const ProtobufCMessage *req, ProtobufCMessage *resp);
int pa_h_cancel(rpc_ctx *ctx, const ProtobufCMessage *req, ProtobufCMessage *resp);
int pa_h_resend(rpc_ctx *ctx, const ProtobufCMessage *req, ProtobufCMessage *resp);

/* ---- partner grants (PART-14 ... PART-21: partners_grants.c) ---- */

int pa_h_extend(rpc_ctx *ctx, const ProtobufCMessage *req, ProtobufCMessage *resp);
int pa_h_revoke_partner_access(rpc_ctx *ctx, const ProtobufCMessage *req, ProtobufCMessage *resp);
int pa_h_restore_partner_access(rpc_ctx *ctx, const ProtobufCMessage *req, ProtobufCMessage *resp);
int pa_h_list_client_grants(rpc_ctx *ctx, const ProtobufCMessage *req, ProtobufCMessage *resp);
int pa_h_list_dormant(rpc_ctx *ctx, const ProtobufCMessage *req, ProtobufCMessage *resp);

#endif
