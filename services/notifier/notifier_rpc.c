/* notifier_rpc.c — NotifierService: operators inspect the delivery log and
 * the dead letters and replay them (NOTE-03). Service identities only
 * (RPC_INTERNAL): deliveries hold email addresses. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "om_time.h"
#include "audit.h"
#include "history.h"
#include "op.h"
#include "log.h"
#include "notifier.h"
#include "om_err.h"
#include "orgmesh/notifier/v1/notifier.pb-c.h"
#include "page.h"

#define PB(x) Orgmesh__Notifier__V1__##x
#define NT_MAX_REPLAY 100

/* ---- helpers ---------------------------------------------------------------------- */

static Google__Protobuf__Timestamp *ts(rpc_ctx *ctx, const pg_res *r, int row, int col) {
    if (pg_isnull(r, row, col)) return NULL;
    int64_t us = pg_time_us(r, row, col);
    Google__Protobuf__Timestamp *t = rpc_alloc(ctx, sizeof *t);
    om_pb_timestamp(t, us);
    return t;
}

#define DELIVERY_COLS                                                                                              \
    "id, event_id, event_type, recipient_user_id, recipient_email, locale, template, message_id, state, attempts," \
    " last_error, client_hub_id, create_time, send_time,"                                                          \
    " CASE WHEN state IN (" OM_SQL(NT_SQL_RETRYING) ", " OM_SQL(NT_SQL_DEFERRED) ") THEN next_attempt_at END"

static PB(Delivery) *delivery_pb(rpc_ctx *ctx, const pg_res *r, int i) {
    PB(Delivery) *d = rpc_alloc(ctx, sizeof *d);
    orgmesh__notifier__v1__delivery__init(d);
    d->delivery_id = rpc_sprintf(ctx, "%" PRId64, pg_i64(r, i, 0));
    d->event_id = rpc_strdup(ctx, pg_str(r, i, 1));
    d->event_type = rpc_strdup(ctx, pg_str(r, i, 2));
    d->recipient_user_id = pg_u64(r, i, 3);
    d->recipient_email = rpc_strdup(ctx, pg_str(r, i, 4));
    d->locale = rpc_strdup(ctx, pg_str(r, i, 5));
    d->template_ = rpc_strdup(ctx, pg_str(r, i, 6));
    d->message_id = rpc_strdup(ctx, pg_str(r, i, 7));
    d->state = (PB(DeliveryState))pg_i64(r, i, 8);
    d->attempts = (int32_t)pg_i64(r, i, 9);
    d->last_error = rpc_strdup(ctx, pg_str(r, i, 10));
    d->client_hub_id = pg_u64(r, i, 11);
    d->create_time = ts(ctx, r, i, 12);
    d->send_time = ts(ctx, r, i, 13);
    d->next_attempt_time = ts(ctx, r, i, 14);
    return d;
}

/* ---- handlers ------------------------------------------------------------------------ */

/* ListDeliveries — NOTE-03: the delivery log, newest first. */
static int h_list_deliveries(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_) {
    const PB(ListDeliveriesRequest) *req = (const void *)req_;
    PB(ListDeliveriesResponse) *resp = (void *)resp_;
    if (req->recipient_user_id > (uint64_t)INT64_MAX) rpc_violation(ctx, "recipient_user_id", "out of range");
    if (strlen(req->event_id) > 128) rpc_violation(ctx, "event_id", "at most 128 characters");
    if (strlen(req->recipient_email) > 320) rpc_violation(ctx, "recipient_email", "at most 320 characters");
    if ((int)req->state < 0 || (int)req->state > NT_ST_CANCELLED) rpc_violation(ctx, "state", "unknown state");
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    const char *scope = rpc_sprintf(ctx, "notifier.ListDeliveries|%s|%" PRIu64 "|%s|%d", req->event_id,
                                    req->recipient_user_id, req->recipient_email, (int)req->state);
    page_req pg; /* keyset: the last id returned */
    if (page_open(ctx, req->page_size, req->page_token, scope, 1, &pg) != 0) return -1;
    pg_conn *c = op_db(ctx);
    if (c == NULL) return OM_E_UNAVAILABLE;
    pg_params p = {0};
    pg_args(&p, req->event_id, (int64_t)req->recipient_user_id, req->recipient_email, (int64_t)req->state,
            (int64_t)pg.k1, pg.limit);
    pg_res *r = NULL;
    int rc = pg_exec(c,
                     "SELECT " DELIVERY_COLS " FROM delivery"
                     " WHERE ($1::text = '' OR event_id = $1) AND ($2::bigint = 0 OR recipient_user_id = $2)"
                     " AND ($3::text = '' OR lower(recipient_email) = lower($3)) AND ($4::int = 0 OR state = $4)"
                     " AND ($5::bigint = 0 OR id < $5) ORDER BY id DESC LIMIT $6::bigint",
                     &p, &r);
    if (rc != 0) return op_fail_db(ctx, c, rc);
    int n = pg_nrows(r);
    resp->deliveries = rpc_calloc(ctx, (size_t)n + 1, sizeof *resp->deliveries);
    for (int i = 0; i < n; i++) resp->deliveries[i] = delivery_pb(ctx, r, i);
    resp->n_deliveries = (size_t)n;
    resp->next_page_token = page_next(ctx, &pg, n >= pg.limit, n > 0 ? (uint64_t)pg_i64(r, n - 1, 0) : 0, 0);
    pg_free(r);
    return 0;
}

/* ListDeadLetters — NOTE-03: what was given up, with the reason, newest first. */
static int h_list_dead_letters(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_) {
    const PB(ListDeadLettersRequest) *req = (const void *)req_;
    PB(ListDeadLettersResponse) *resp = (void *)resp_;
    if (strlen(req->event_id) > 128) rpc_violation(ctx, "event_id", "at most 128 characters");
    if (strlen(req->event_type) > 200) rpc_violation(ctx, "event_type", "at most 200 characters");
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    const char *scope = rpc_sprintf(ctx, "notifier.ListDeadLetters|%s|%s", req->event_type, req->event_id);
    page_req pg; /* keyset: the last id returned */
    if (page_open(ctx, req->page_size, req->page_token, scope, 1, &pg) != 0) return -1;
    pg_conn *c = op_db(ctx);
    if (c == NULL) return OM_E_UNAVAILABLE;
    pg_params p = {0};
    pg_args(&p, req->event_type, req->event_id, (int64_t)pg.k1, pg.limit);
    pg_res *r = NULL;
    int rc = pg_exec(c,
                     "SELECT id, event_id, event_type, recipient_user_id, recipient_email, reason, attempts,"
                     " dead_letter_time, replay_count, last_replay_time FROM dead_letter"
                     " WHERE ($1::text = '' OR event_type = $1) AND ($2::text = '' OR event_id = $2)"
                     " AND ($3::bigint = 0 OR id < $3) ORDER BY id DESC LIMIT $4::bigint",
                     &p, &r);
    if (rc != 0) return op_fail_db(ctx, c, rc);
    int n = pg_nrows(r);
    resp->dead_letters = rpc_calloc(ctx, (size_t)n + 1, sizeof *resp->dead_letters);
    for (int i = 0; i < n; i++) {
        PB(DeadLetter) *d = rpc_alloc(ctx, sizeof *d);
        orgmesh__notifier__v1__dead_letter__init(d);
        d->dead_letter_id = rpc_sprintf(ctx, "%" PRId64, pg_i64(r, i, 0));
        d->event_id = rpc_strdup(ctx, pg_str(r, i, 1));
        d->event_type = rpc_strdup(ctx, pg_str(r, i, 2));
        d->recipient_user_id = pg_u64(r, i, 3);
        d->recipient_email = rpc_strdup(ctx, pg_str(r, i, 4));
        d->reason = rpc_strdup(ctx, pg_str(r, i, 5));
        d->attempts = (int32_t)pg_i64(r, i, 6);
        d->dead_letter_time = ts(ctx, r, i, 7);
        d->replay_count = (int32_t)pg_i64(r, i, 8);
        d->last_replay_time = ts(ctx, r, i, 9);
        resp->dead_letters[i] = d;
    }
    resp->n_dead_letters = (size_t)n;
    resp->next_page_token = page_next(ctx, &pg, n >= pg.limit, n > 0 ? (uint64_t)pg_i64(r, n - 1, 0) : 0, 0);
    pg_free(r);
    return 0;
}

/* Puts one dead letter's delivery back in the queue (unless it was already
 * delivered since: then nothing is sent again). Returns 1 when replayed. */
static int replay_one(pg_conn *tx, int64_t id) {
    pg_params p = {0};
    pg_p_i64(&p, id);
    pg_res *r = NULL;
    int rc = pg_exec(tx,
                     "UPDATE delivery d SET state = " OM_SQL(NT_SQL_PENDING) ", attempts = 0,"
                     " next_attempt_at = now(), last_error = ''"
                     " FROM dead_letter l WHERE l.id = $1 AND d.id = l.delivery_id AND d.state = " OM_SQL(NT_SQL_DEAD)
                     " RETURNING d.id",
                     &p, &r);
    if (rc != 0) return rc;
    int n = pg_nrows(r);
    pg_free(r);
    if (n == 0) return 0;
    rc = pg_exec(tx,
                 "UPDATE dead_letter SET replay_count = replay_count + 1, last_replay_time = now() WHERE id = $1",
                 &p, NULL);
    return rc != 0 ? rc : 1;
}

static int replay_apply(op_call *op, pg_conn *tx) {
    rpc_ctx *ctx = op->ctx;
    const PB(ReplayDeadLettersRequest) *req = op->req;
    PB(ReplayDeadLettersResponse) *resp = (void *)op->resp;
    int rc;
    pg_res *r = NULL;
    if (req->all) {
        rc = pg_exec(tx,
                     "SELECT l.id FROM dead_letter l JOIN delivery d ON d.id = l.delivery_id"
                     " WHERE d.state = " OM_SQL(NT_SQL_DEAD) " ORDER BY l.id FOR UPDATE OF l",
                     NULL, &r);
    } else {
        /* the ids were validated as numbers */
        pg_params p = {0};
        char *list = rpc_strdup(ctx, "{");
        for (size_t i = 0; i < req->n_dead_letter_ids; i++)
            list = rpc_sprintf(ctx, "%s%s%s", list, i ? "," : "", req->dead_letter_ids[i]);
        list = rpc_sprintf(ctx, "%s}", list);
        pg_p_str(&p, list);
        rc = pg_exec(tx, "SELECT id FROM dead_letter WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE", &p, &r);
        if (rc == 0) {
            /* unknown ids: NOT_FOUND, nothing replayed */
            for (size_t i = 0; i < req->n_dead_letter_ids; i++) {
                int64_t want = strtoll(req->dead_letter_ids[i], NULL, 10);
                bool found = false;
                for (int k = 0; k < pg_nrows(r); k++)
                    if (pg_i64(r, k, 0) == want) found = true;
                if (!found) {
                    pg_free(r);
                    return op_fail(op, OM_E_NOT_FOUND, "dead letter %s does not exist", req->dead_letter_ids[i]);
                }
            }
        }
    }
    if (rc != 0) return rc;
    int n = pg_nrows(r);
    resp->dead_letter_ids = rpc_calloc(ctx, (size_t)(n < 1000 ? n : 1000) + 1, sizeof *resp->dead_letter_ids);
    for (int i = 0; i < n && rc >= 0; i++) {
        int64_t id = pg_i64(r, i, 0);
        rc = replay_one(tx, id);
        if (rc == 1) {
            if (resp->n_dead_letter_ids < 1000)
                resp->dead_letter_ids[resp->n_dead_letter_ids++] = rpc_sprintf(ctx, "%" PRId64, id);
            resp->replayed_count++;
        }
    }
    pg_free(r);
    if (rc < 0) return rc;
    audit_entry e = {
        .actor = rpc_actor(ctx),
        .action = "notifier.deadletter.replay",
        .resource = "notifier/dead-letters",
        .after = &resp->base,
        .reason = req->all ? "all" : "selected",
        .request_id = req->request_id,
        .trace_id = rpc_trace_id(ctx),
    };
    if ((rc = audit_record(tx, &e)) != 0) return rc;
    if (resp->replayed_count > 0 && (rc = nt_queue_notify(tx)) != 0) return rc;
    return 0;
}

static void replay_committed(op_call *op, void *arg) {
    (void)arg;
    const PB(ReplayDeadLettersResponse) *resp = (const void *)op->resp;
    if (!op->replayed) log_info("replayed %d dead letters", resp->replayed_count);
}

static const op_def replay_def = {.apply = replay_apply, .mutation = true, .committed = replay_committed};

/* ReplayDeadLetters — NOTE-03: dead letters back into the queue, same
 * Message-ID; a recipient already mailed for the event is not mailed again. */
static int h_replay(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_) {
    const PB(ReplayDeadLettersRequest) *req = (const void *)req_;
    if (req->all == (req->n_dead_letter_ids > 0))
        rpc_violation(ctx, "dead_letter_ids", "give either dead_letter_ids or all");
    if (req->n_dead_letter_ids > NT_MAX_REPLAY)
        return rpc_fail(ctx, OM_E_BATCH_TOO_LARGE, "at most %d dead letters per call", NT_MAX_REPLAY);
    for (size_t i = 0; i < req->n_dead_letter_ids; i++) {
        const char *s = req->dead_letter_ids[i];
        char *end = NULL;
        long long v = strtoll(s, &end, 10);
        if (s[0] == '\0' || *end != '\0' || v <= 0 || strlen(s) > 19)
            rpc_violation(ctx, rpc_sprintf(ctx, "dead_letter_ids[%zu]", i), "not a dead letter id");
    }
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    return op_run(ctx, &replay_def, req, resp_, NULL);
}

/* ListDeadLetterHistory — SPEC 8: the notifier's audit history (replays). */
static int h_history(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_) {
    const PB(ListDeadLetterHistoryRequest) *req = (const void *)req_;
    PB(ListDeadLetterHistoryResponse) *resp = (void *)resp_;
    const char *scope = "notifier.ListDeadLetterHistory";
    page_req pg; /* keyset: the last id returned */
    if (page_open(ctx, req->page_size, req->page_token, scope, 1, &pg) != 0) return -1;
    pg_conn *c = op_db(ctx);
    if (c == NULL) return OM_E_UNAVAILABLE;
    history_req q = {.page = &pg, .scope = HISTORY_ALL};
    history_out h;
    int rc = history_list(ctx, c, &q, &h);
    if (rc != 0) return op_fail_db(ctx, c, rc);
    resp->entries = h.entries;
    resp->n_entries = h.n;
    resp->next_page_token = h.next_page_token;
    return 0;
}

/* Issue 13: who may call each method with a service identity (rpc_method
 * `services`): RPC_PLATFORM is the operator's platform identities
 * (ORGMESH_PLATFORM_SERVICES: the identity system, operator tools); an
 * orgmesh service is listed only where its own calls need it
 * (docs/security.md "Service identities"). */
/* operator tools: deliveries hold email addresses */
static const char *const by_platform[] = {RPC_PLATFORM, NULL};

static const rpc_method methods[] = {
    {"ListDeliveries", h_list_deliveries, RPC_INTERNAL, by_platform},
    {"ListDeadLetters", h_list_dead_letters, RPC_INTERNAL, by_platform},
    {"ReplayDeadLetters", h_replay, RPC_INTERNAL, by_platform},
    {"ListDeadLetterHistory", h_history, RPC_INTERNAL, by_platform},
    {NULL, NULL, 0},
};

const rpc_service notifier_service = {&orgmesh__notifier__v1__notifier_service__descriptor, methods};
