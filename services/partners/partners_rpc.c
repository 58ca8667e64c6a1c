/* partners_rpc.c — the handlers of PartnersService and PartnersInternalService
 * (SPEC 6): validation, then op_run (common/op.h) for every mutation. Rules
 * are in partners_rules.c, SQL in partners_store.c, the conversions, events
 * and shared state changes (PART-09 cascade) in partners_assign.c, the
 * accounts side in partners_events.c, settings in partners_config.c, the
 * access requests in partners_requests.c, the shared helpers and mutation
 * runner in partners_call.c. Every
 * mutation runs in one transaction: request id, change, audit entry and
 * events. */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "audit.h"
#include "history.h"
#include "config.h"
#include "ctoken.h"
#include "google/protobuf/duration.pb-c.h"
#include "google/rpc/error_details.pb-c.h"
#include "op.h"
#include "log.h"
#include "om_err.h"
#include "orgmesh/type/v1/audit.pb-c.h"
#include "page.h"
#include "partners_call.h"

typedef Google__Protobuf__Timestamp PbTimestamp;

_Static_assert((int)ORGMESH__PARTNERS__V1__ASSIGNMENT_STATE__ASSIGNMENT_STATE_REVOKED == PART_ST_REVOKED, "state");
_Static_assert((int)ORGMESH__PARTNERS__V1__ASSIGNMENT_CHANGE_CAUSE__ASSIGNMENT_CHANGE_CAUSE_CLIENT_ACCOUNT_DELETED ==
                   PART_CAUSE_CLIENT_ACCOUNT_DELETED,
               "cause");



/* ---- PART-01: tagging ------------------------------------------------------------------- */

typedef struct tag_op {
    const PB(TagEmployeesRequest) *req;
    int *status;                        /* per user: ItemStatus */
    Orgmesh__Type__V1__ItemError **err; /* per user, FAILED */
    ps_membership *mb;                  /* per user, DONE: the membership accounts returned */
} tag_op;

static int apply_tag(mutation *mu, pg_conn *tx) {
    tag_op *op = mu->op;
    const PB(TagEmployeesRequest) *req = op->req;
    PB(TagEmployeesResponse) *resp = (void *)mu->resp;
    ps_mem *m = &mu->mem;
    resp->n_results = req->n_user_ids;
    resp->results = rpc_calloc(mu->ctx, req->n_user_ids, sizeof *resp->results);
    for (size_t i = 0; i < req->n_user_ids; i++) {
        PB(TagResult) *r = rpc_alloc(mu->ctx, sizeof *r);
        orgmesh__partners__v1__tag_result__init(r);
        r->user_id = req->user_ids[i];
        r->status = (PB(ItemStatus))op->status[i];
        r->error = op->err[i];
        int rc;
        if (op->status[i] == ORGMESH__PARTNERS__V1__ITEM_STATUS__ITEM_STATUS_DONE) {
            /* PART-01: the tag is accounts' (set before this transaction);
             * the copy, the record of who tagged and the event follow here */
            if ((rc = ps_membership_put(tx, &op->mb[i], NULL)) != 0) return rc;
            if ((rc = ps_tag_record(tx, req->partner_hub_id, r->user_id, pa_caller_id(mu->ctx))) != 0) return rc;
            if ((rc = pa_emit_employee(tx, m, &mu->who, req->partner_hub_id, r->user_id, op->mb[i].version, true, 0, 0,
                                    0)) != 0)
                return rc;
        }
        if (op->status[i] != ORGMESH__PARTNERS__V1__ITEM_STATUS__ITEM_STATUS_FAILED) {
            ps_employee e;
            if (ps_employee_get(tx, req->partner_hub_id, r->user_id, m, &e) == 0)
                r->employee = pa_employee_pb(m, req->partner_hub_id, &e);
        }
        resp->results[i] = r;
    }
    return 0;
}

/* Undo the tags this call set on the accounts side when its own
 * transaction then failed (issue 14: a failed call leaves nothing). The
 * users it tagged were untagged before (UNCHANGED ones are not touched), so
 * untagging them again is exact; SetPartnerEmployee is idempotent, and the
 * two MembershipChanged events accounts emits leave our copy untagged. */
static void untag_after_failure(rpc_ctx *ctx, const tag_op *op, const char *on_behalf) {
    for (size_t i = 0; i < op->req->n_user_ids; i++) {
        if (op->status[i] != ORGMESH__PARTNERS__V1__ITEM_STATUS__ITEM_STATUS_DONE) continue;
        Orgmesh__Accounts__V1__SetPartnerEmployeeRequest sreq;
        orgmesh__accounts__v1__set_partner_employee_request__init(&sreq);
        sreq.hub_id = op->req->partner_hub_id;
        sreq.user_id = op->req->user_ids[i];
        sreq.partner_employee = false;
        sreq.on_behalf_of = (char *)on_behalf;
        ProtobufCMessage *out = NULL;
        rpc_status st;
        int rc = pa_accounts_call(ctx, "SetPartnerEmployee", &sreq.base,
                                  &orgmesh__accounts__v1__set_partner_employee_response__descriptor, &out, &st);
        if (out != NULL) protobuf_c_message_free_unpacked(out, NULL);
        if (rc != 0 && rc != OM_E_NOT_FOUND)
            log_error("partners: %s failed and user %" PRIu64 " stays tagged in %" PRIu64 ": %s (trace %s)",
                      rpc_method_name(ctx), sreq.user_id, sreq.hub_id, st.message, rpc_trace_id(ctx));
    }
}

/* TagEmployees — PART-01: partner managers tag members of the PARTNER account, per item. */
static int h_tag_employees(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp) {
    int rc;
    const PB(TagEmployeesRequest) *req = (const void *)req_;
    op_check_id(ctx, "partner_hub_id", req->partner_hub_id);
    if (req->n_user_ids > PART_MAX_BATCH)
        return rpc_fail(ctx, OM_E_BATCH_TOO_LARGE, "at most %d users per call", PART_MAX_BATCH);
    pa_check_batch(ctx, "user_ids", req->user_ids, req->n_user_ids);
    /* everything that can be refused is refused before accounts is called */
    if (strlen(req->request_id) > IDEM_MAX_REQUEST_ID)
        rpc_violation(ctx, "request_id", "must be at most %d characters", IDEM_MAX_REQUEST_ID);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    pg_conn *c = op_db(ctx);
    if (c == NULL) return OM_E_UNAVAILABLE;
    if ((rc = pa_require_manager(ctx, c, req->partner_hub_id, NULL, NULL)) != 0) return rc; /* PART-01 */
    ps_mem m = pa_call_mem(ctx);
    tag_op op = {.req = req};
    size_t n = req->n_user_ids;
    op.status = rpc_calloc(ctx, n, sizeof *op.status);
    op.err = rpc_calloc(ctx, n, sizeof *op.err);
    op.mb = rpc_calloc(ctx, n, sizeof *op.mb);
    const char *on_behalf = rpc_sprintf(ctx, "user:%" PRIu64, pa_caller_id(ctx));
    for (size_t i = 0; i < n; i++) {
        char field[32];
        snprintf(field, sizeof field, "user_ids[%zu]", i);
        ps_membership mb;
        rc = pa_refresh_membership(ctx, c, req->partner_hub_id, req->user_ids[i], &m, &mb);
        if (rc == OM_E_NOT_FOUND || (rc == 0 && !mb.present)) {
            op.status[i] = ORGMESH__PARTNERS__V1__ITEM_STATUS__ITEM_STATUS_FAILED;
            op.err[i] = pa_item_error(&m, OM_E_NOT_FOUND, field, "user %" PRIu64 " is not a member of the partner account",
                                   req->user_ids[i]);
            continue;
        }
        if (rc != 0) {
            untag_after_failure(ctx, &op, on_behalf);
            return pa_fail(ctx, rc, "membership");
        }
        if (mb.partner_employee) {
            op.status[i] = ORGMESH__PARTNERS__V1__ITEM_STATUS__ITEM_STATUS_UNCHANGED;
            continue;
        }
        Orgmesh__Accounts__V1__SetPartnerEmployeeRequest sreq;
        orgmesh__accounts__v1__set_partner_employee_request__init(&sreq);
        sreq.hub_id = req->partner_hub_id;
        sreq.user_id = req->user_ids[i];
        sreq.partner_employee = true;
        sreq.on_behalf_of = (char *)on_behalf;
        ProtobufCMessage *out = NULL;
        rpc_status st;
        rc = pa_accounts_call(ctx, "SetPartnerEmployee", &sreq.base,
                              &orgmesh__accounts__v1__set_partner_employee_response__descriptor, &out, &st);
        if (rc == OM_E_NOT_FOUND) {
            op.status[i] = ORGMESH__PARTNERS__V1__ITEM_STATUS__ITEM_STATUS_FAILED;
            op.err[i] = pa_item_error(&m, rc, field, "%s", st.message);
            continue;
        }
        if (rc != 0) {
            untag_after_failure(ctx, &op, on_behalf);
            return rpc_fail(ctx, rc == OM_E_NOT_PARTNER_ACCOUNT ? rc : OM_E_UNAVAILABLE,
                            "the accounts service refused the tag: %s", st.message);
        }
        const Orgmesh__Accounts__V1__SetPartnerEmployeeResponse *sr = (const void *)out;
        if (sr->membership != NULL) {
            pa_membership_from_pb(sr->membership, &op.mb[i]);
            op.mb[i].link_assignment_id = rpc_strdup(ctx, op.mb[i].link_assignment_id);
        }
        protobuf_c_message_free_unpacked(out, NULL);
        op.status[i] = ORGMESH__PARTNERS__V1__ITEM_STATUS__ITEM_STATUS_DONE;
    }
    mutation mu = {.ctx = ctx, .apply = apply_tag, .op = &op, .request_id = req->request_id};
    rc = op_run(ctx, &pa_mutation_def, req_, resp, &mu);
    if (rc != 0) untag_after_failure(ctx, &op, on_behalf);
    return rc;
}

typedef struct untag_op {
    const PB(UntagEmployeeRequest) *req;
    bool tagged;      /* tagged when the call began */
    ps_membership mb; /* the locked copy */
} untag_op;

static int apply_untag(mutation *mu, pg_conn *tx) {
    untag_op *op = mu->op;
    const PB(UntagEmployeeRequest) *req = op->req;
    PB(UntagEmployeeResponse) *resp = (void *)mu->resp;
    resp->user_id = req->user_id;
    if (!op->tagged) return 0; /* not tagged: nothing changes */
    /* The copy's row stays locked to the end of the transaction (after the
     * accounts call, untag_remote), so the consumer applies accounts'
     * MembershipChanged after this commit and finds it done: the cascade
     * runs once, here, and the counts are this call's. */
    int rc = ps_membership_get(tx, req->partner_hub_id, req->user_id, 2, &mu->mem, &op->mb);
    if (rc != 0) return rc;
    int cancelled = 0, revoked = 0;
    /* PART-01: untagging ends the employee's assignments as PART-09 does */
    rc = pa_cascade(tx, &mu->mem, &mu->who, req->partner_hub_id, req->user_id, PART_CAUSE_EMPLOYEE_UNTAGGED,
                    &cancelled, &revoked);
    resp->cancelled_request_count = cancelled;
    resp->revoked_assignment_count = revoked;
    return rc;
}

/* The accounts side of the untag, last in the transaction (mutation.after_store):
 * if it fails, the cascade rolls back and nothing happened anywhere. Only a
 * failed COMMIT after it could still leave the untag on the accounts side. */
static int untag_remote(mutation *mu, pg_conn *tx) {
    untag_op *op = mu->op;
    const PB(UntagEmployeeRequest) *req = op->req;
    if (!op->tagged) return 0;
    Orgmesh__Accounts__V1__SetPartnerEmployeeRequest sreq;
    orgmesh__accounts__v1__set_partner_employee_request__init(&sreq);
    sreq.hub_id = req->partner_hub_id;
    sreq.user_id = req->user_id;
    sreq.partner_employee = false;
    sreq.on_behalf_of = rpc_sprintf(mu->ctx, "user:%" PRIu64, pa_caller_id(mu->ctx));
    ProtobufCMessage *out = NULL;
    rpc_status st;
    int rc = pa_accounts_call(mu->ctx, "SetPartnerEmployee", &sreq.base,
                              &orgmesh__accounts__v1__set_partner_employee_response__descriptor, &out, &st);
    if (rc == 0) {
        const Orgmesh__Accounts__V1__SetPartnerEmployeeResponse *sr = (const void *)out;
        if (sr->membership) {
            pa_membership_from_pb(sr->membership, &op->mb);
            rc = ps_membership_put(tx, &op->mb, NULL);
        }
        protobuf_c_message_free_unpacked(out, NULL);
        return rc;
    }
    if (rc == OM_E_NOT_FOUND) return 0; /* they left the partner; the cascade is due anyway */
    return op_fail(mu->oc, OM_E_UNAVAILABLE, "the accounts service refused the untag: %s", st.message);
}

/* After a cascade: remove the partner-linked memberships now (PART-09). */
static void sync_employee(rpc_ctx *ctx, pg_conn *c, uint64_t partner, uint64_t employee, uint64_t client) {
    ps_mem m = pa_call_mem(ctx);
    ps_asg_filter f = {.partner = partner, .employee = employee, .client = client, .limit = 1000};
    ps_assignment *list = rpc_calloc(ctx, (size_t)f.limit, sizeof *list);
    int n = 0;
    if (ps_asg_list(c, &f, &m, list, &n) != 0) return;
    for (int i = 0; i < n; i++)
        if (list[i].link_sync) pa_sync_after(c, list[i].id);
}

/* UntagEmployee — PART-01, PART-09: untag; PENDING requests CANCELLED, ACTIVE assignments REVOKED, linked memberships removed. */
static int h_untag_employee(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp) {
    int rc;
    const PB(UntagEmployeeRequest) *req = (const void *)req_;
    op_check_id(ctx, "partner_hub_id", req->partner_hub_id);
    op_check_id(ctx, "user_id", req->user_id);
    pa_check_text(ctx, "reason", req->reason, MAX_REASON_CHARS);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    pg_conn *c = op_db(ctx);
    if (c == NULL) return OM_E_UNAVAILABLE;
    if ((rc = pa_require_manager(ctx, c, req->partner_hub_id, NULL, NULL)) != 0) return rc; /* PART-01 */
    ps_mem m = pa_call_mem(ctx);
    untag_op op = {.req = req};
    ps_membership mb;
    rc = pa_refresh_membership(ctx, c, req->partner_hub_id, req->user_id, &m, &mb);
    if (rc != 0 && rc != OM_E_NOT_FOUND) return pa_fail(ctx, rc, "membership");
    op.tagged = rc == 0 && mb.present && mb.partner_employee;
    mutation mu = {.ctx = ctx, .apply = apply_untag, .after_store = untag_remote, .op = &op,
                   .request_id = req->request_id};
    if ((rc = op_run(ctx, &pa_mutation_def, req_, resp, &mu)) != 0) return rc;
    ctoken_pending_reset();
    sync_employee(ctx, c, req->partner_hub_id, req->user_id, 0);
    pa_sync_token(ctx, resp); /* issue 18 */
    return 0;
}

/* ListPartnerEmployees — PART-11: tagged employees with client counts and last activity; partner managers only. */
static int h_list_partner_employees(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_) {
    int rc;
    const PB(ListPartnerEmployeesRequest) *req = (const void *)req_;
    PB(ListPartnerEmployeesResponse) *resp = (void *)resp_;
    op_check_id(ctx, "partner_hub_id", req->partner_hub_id);
    pa_check_text(ctx, "query", req->query, MAX_QUERY_CHARS);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    pa_lpage pg;
    const char *scope = rpc_sprintf(ctx, "partners.ListPartnerEmployees|%" PRIu64 "|%s", req->partner_hub_id,
                                    req->query);
    if ((rc = pa_lpage_open(ctx, req->page_size, req->page_token, scope, &pg)) != 0) return rc;
    pg_conn *c = op_db(ctx);
    if (c == NULL) return OM_E_UNAVAILABLE;
    if ((rc = pa_require_manager(ctx, c, req->partner_hub_id, NULL, NULL)) != 0) return rc; /* PART-11 */
    ps_mem m = pa_call_mem(ctx);
    ps_employee *list = rpc_calloc(ctx, (size_t)pg.limit, sizeof *list);
    int n = 0;
    rc = ps_employees_list(c, req->partner_hub_id, req->query, pg.offset, pg.limit, &m, list, &n);
    if (rc != 0) return pa_fail(ctx, rc, "employees");
    resp->employees = rpc_calloc(ctx, (size_t)n + 1, sizeof *resp->employees);
    for (int i = 0; i < n; i++) resp->employees[i] = pa_employee_pb(&m, req->partner_hub_id, &list[i]);
    resp->n_employees = (size_t)n;
    resp->next_page_token = pa_lpage_next(ctx, &pg, n);
    return 0;
}

/* ---- PART-02: clients ----------------------------------------------------------------------- */

static int list_clients(rpc_ctx *ctx, uint64_t partner, const char *query, int32_t size, const char *token,
                        const char *method, PB(PartnerClient) ***out, size_t *n_out, char **next) {
    int rc;
    pa_lpage pg;
    const char *scope = rpc_sprintf(ctx, "partners.%s|%" PRIu64 "|%s", method, partner, query ? query : "");
    if ((rc = pa_lpage_open(ctx, size, token, scope, &pg)) != 0) return rc;
    pg_conn *c = op_db(ctx);
    if (c == NULL) return OM_E_UNAVAILABLE;
    if ((rc = pa_require_manager(ctx, c, partner, NULL, NULL)) != 0) return rc; /* PART-02 */
    ps_mem m = pa_call_mem(ctx);
    uint64_t hub = 0;
    if (query != NULL && !part_query_hub_id(query, &hub)) hub = 0;
    ps_client *list = rpc_calloc(ctx, (size_t)pg.limit, sizeof *list);
    int n = 0;
    rc = ps_clients_list(c, partner, query, hub, pg.offset, pg.limit, &m, list, &n);
    if (rc != 0) return pa_fail(ctx, rc, "clients");
    *out = rpc_calloc(ctx, (size_t)n + 1, sizeof **out);
    for (int i = 0; i < n; i++) (*out)[i] = pa_client_pb(&m, partner, &list[i]);
    *n_out = (size_t)n;
    *next = pa_lpage_next(ctx, &pg, n);
    return 0;
}

/* ListClients — PART-02: the client list by name; partner managers only. */
static int h_list_clients(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_) {
    const PB(ListClientsRequest) *req = (const void *)req_;
    PB(ListClientsResponse) *resp = (void *)resp_;
    op_check_id(ctx, "partner_hub_id", req->partner_hub_id);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    return list_clients(ctx, req->partner_hub_id, NULL, req->page_size, req->page_token, "ListClients",
                        &resp->clients, &resp->n_clients, &resp->next_page_token);
}

/* SearchClients — PART-02: by name (contains, any case) or exact hub_id; partner managers only. */
static int h_search_clients(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_) {
    const PB(SearchClientsRequest) *req = (const void *)req_;
    PB(SearchClientsResponse) *resp = (void *)resp_;
    op_check_id(ctx, "partner_hub_id", req->partner_hub_id);
    if (req->query[0] == '\0') rpc_violation(ctx, "query", "must be set");
    pa_check_text(ctx, "query", req->query, MAX_QUERY_CHARS);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    return list_clients(ctx, req->partner_hub_id, req->query, req->page_size, req->page_token, "SearchClients",
                        &resp->clients, &resp->n_clients, &resp->next_page_token);
}

typedef struct clients_op {
    const PB(AddClientsRequest) *req;
    Orgmesh__Type__V1__ItemError **err;
} clients_op;

static int apply_add_clients(mutation *mu, pg_conn *tx) {
    clients_op *op = mu->op;
    const PB(AddClientsRequest) *req = op->req;
    PB(AddClientsResponse) *resp = (void *)mu->resp;
    resp->n_results = req->n_client_hub_ids;
    resp->results = rpc_calloc(mu->ctx, req->n_client_hub_ids, sizeof *resp->results);
    for (size_t i = 0; i < req->n_client_hub_ids; i++) {
        PB(ClientResult) *r = rpc_alloc(mu->ctx, sizeof *r);
        orgmesh__partners__v1__client_result__init(r);
        r->client_hub_id = req->client_hub_ids[i];
        resp->results[i] = r;
        if (op->err[i] != NULL) {
            r->status = ORGMESH__PARTNERS__V1__ITEM_STATUS__ITEM_STATUS_FAILED;
            r->error = op->err[i];
            continue;
        }
        bool added = false;
        int rc = ps_client_add(tx, req->partner_hub_id, r->client_hub_id, ORGMESH__PARTNERS__V1__CLIENT_SOURCE__CLIENT_SOURCE_MANUAL,
                               &added);
        if (rc == 0 && added) rc = pa_emit_client_added(tx, &mu->mem, &mu->who, req->partner_hub_id, r->client_hub_id);
        if (rc != 0) return rc;
        r->status = added ? ORGMESH__PARTNERS__V1__ITEM_STATUS__ITEM_STATUS_DONE
                          : ORGMESH__PARTNERS__V1__ITEM_STATUS__ITEM_STATUS_UNCHANGED;
        ps_client cl;
        if (ps_client_get(tx, req->partner_hub_id, r->client_hub_id, &mu->mem, &cl) == 0)
            r->client = pa_client_pb(&mu->mem, req->partner_hub_id, &cl);
    }
    return 0;
}

/* AddClients — PART-02: adds existing accounts to the client list, per item; partner managers only. */
static int h_add_clients(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp) {
    int rc;
    const PB(AddClientsRequest) *req = (const void *)req_;
    op_check_id(ctx, "partner_hub_id", req->partner_hub_id);
    if (req->n_client_hub_ids > PART_MAX_BATCH)
        return rpc_fail(ctx, OM_E_BATCH_TOO_LARGE, "at most %d clients per call", PART_MAX_BATCH);
    pa_check_batch(ctx, "client_hub_ids", req->client_hub_ids, req->n_client_hub_ids);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    pg_conn *c = op_db(ctx);
    if (c == NULL) return OM_E_UNAVAILABLE;
    if ((rc = pa_require_manager(ctx, c, req->partner_hub_id, NULL, NULL)) != 0) return rc;
    ps_mem m = pa_call_mem(ctx);
    clients_op op = {.req = req, .err = rpc_calloc(ctx, req->n_client_hub_ids, sizeof *op.err)};
    for (size_t i = 0; i < req->n_client_hub_ids; i++) {
        char field[40];
        snprintf(field, sizeof field, "client_hub_ids[%zu]", i);
        ps_account a;
        uint64_t id = req->client_hub_ids[i];
        if (id == req->partner_hub_id) {
            op.err[i] = pa_item_error(&m, OM_E_INVALID_ARGUMENT, field, "a partner is not its own client");
            continue;
        }
        rc = pa_ensure_account(ctx, c, id, &m, &a);
        if (rc == OM_E_NOT_FOUND || (rc == 0 && a.deleted)) {
            op.err[i] = pa_item_error(&m, OM_E_NOT_FOUND, field, "account %" PRIu64 " does not exist", id);
            continue;
        }
        if (rc != 0) return pa_fail(ctx, rc, "account");
    }
    mutation mu = {.ctx = ctx, .apply = apply_add_clients, .op = &op, .request_id = req->request_id};
    return op_run(ctx, &pa_mutation_def, req_, resp, &mu);
}

/* ---- PART-03, PART-04, PART-06: assignments ------------------------------------------------------ */

typedef struct asg_item {
    uint64_t employee, client;
    const char *field;
    const char *employee_name;
    Orgmesh__Type__V1__ItemError *err; /* failed before the transaction */
    bool member;                       /* already a member of the client (PART-04) */
} asg_item;

typedef struct assign_op {
    uint64_t partner;
    int duration_days;        /* PART-14 */
    bool auto_extend;         /* PART-15 */
    unsigned requested_roles; /* PART-18 */
    asg_item *items;
    int n;
    PB(AssignmentResult) **results;
    PB(AssignmentResult) ***resp_results; /* where the response keeps them */
    size_t *resp_n;
} assign_op;

static PB(AssignmentResult) *asg_result(mutation *mu, const asg_item *it, PB(AssignmentOutcome) outcome,
                                        const ps_assignment *a) {
    PB(AssignmentResult) *r = rpc_alloc(mu->ctx, sizeof *r);
    orgmesh__partners__v1__assignment_result__init(r);
    r->client_hub_id = it->client;
    r->employee_user_id = it->employee;
    r->outcome = outcome;
    if (a != NULL) {
        r->assignment = pa_assignment_pb(&mu->mem, a);
        if (a->state == PART_ST_PENDING) r->access_request = pa_request_pb(&mu->mem, a);
    }
    return r;
}

/* One item inside the batch's transaction. */
static int assign_one(mutation *mu, pg_conn *tx, uint64_t partner, asg_item *it, PB(AssignmentResult) **out) {
    ps_mem *m = &mu->mem;
    ps_membership emp;
    ps_assignment a;
    /* PART-03: only tagged employees; the row lock orders this against a
     * concurrent untag (PART-09), which updates the same row */
    int rc = ps_membership_get(tx, partner, it->employee, 1, m, &emp);
    if (rc != 0 && rc != OM_E_NOT_FOUND) return rc;
    if (rc == OM_E_NOT_FOUND || !emp.present || !emp.partner_employee) {
        *out = asg_result(mu, it, ORGMESH__PARTNERS__V1__ASSIGNMENT_OUTCOME__ASSIGNMENT_OUTCOME_FAILED, NULL);
        (*out)->error = pa_item_error(m, OM_E_NOT_PARTNER_EMPLOYEE, it->field,
                                   "user %" PRIu64 " is not a tagged partner employee", it->employee);
        return 0;
    }
    /* PART-20: the client's kill-switch lock (shared) orders this against a
     * concurrent RevokePartnerAccess; a blocked partner assigns nothing */
    bool blocked = false;
    if ((rc = ps_block_check(tx, it->client, partner, false, &blocked)) != 0) return rc;
    if (blocked) {
        *out = asg_result(mu, it, ORGMESH__PARTNERS__V1__ASSIGNMENT_OUTCOME__ASSIGNMENT_OUTCOME_FAILED, NULL);
        (*out)->error = pa_item_error(m, OM_E_PARTNER_ACCESS_BLOCKED, it->field,
                                      "client %" PRIu64 " has revoked this partner's access", it->client);
        return 0;
    }
    const assign_op *op = mu->op;
    for (int attempt = 0; attempt < 2; attempt++) {
        rc = ps_asg_get_open(tx, it->client, it->employee, false, m, &a);
        if (rc == 0) {
            /* PART-06: one partner per email and client; the first keeps it */
            if (part_rule_existing_assignment(partner, a.partner_hub_id) != 0) {
                if ((rc = ps_refusal_record(tx, partner, it->client, it->employee)) != 0) return rc;
                *out = asg_result(mu, it, ORGMESH__PARTNERS__V1__ASSIGNMENT_OUTCOME__ASSIGNMENT_OUTCOME_FAILED, NULL);
                (*out)->error = pa_conflict_error(m, it->field, it->employee_name);
                return 0;
            }
            *out = asg_result(mu, it, ORGMESH__PARTNERS__V1__ASSIGNMENT_OUTCOME__ASSIGNMENT_OUTCOME_ALREADY_ASSIGNED, &a);
            return 0;
        }
        if (rc != OM_E_NOT_FOUND) return rc;
        memset(&a, 0, sizeof a);
        a.partner_hub_id = partner;
        a.employee_user_id = it->employee;
        a.client_hub_id = it->client;
        a.assigned_by = pa_caller_id(mu->ctx);
        a.duration_days = op->duration_days;     /* PART-14 */
        a.auto_extend = op->auto_extend;         /* PART-15 */
        a.requested_roles = op->requested_roles; /* PART-18 */
        if (it->member) {
            /* PART-04: already a member: ACTIVE at once, no email; the
             * membership is linked but predates the link (PART-07 keeps it) */
            a.state = PART_ST_ACTIVE;
            a.cause = PART_CAUSE_ALREADY_MEMBER;
            a.link_sync = true;
            a.link_adopt = false;
            a.link_actor = "";
        } else {
            a.state = PART_ST_PENDING; /* PART-04: an access request */
            a.cause = PART_CAUSE_UNSPECIFIED;
        }
        rc = ps_asg_insert(tx, &a, !it->member, partners_cfg.request_ttl_s, m);
        if (rc == OM_E_ALREADY_EXISTS) continue; /* a concurrent assignment won: judge it */
        if (rc != 0) return rc;
        break;
    }
    if (rc != 0) return rc;
    bool added = false;
    /* PART-02: assigning to an account not on the list adds it */
    if ((rc = ps_client_add(tx, partner, it->client, ORGMESH__PARTNERS__V1__CLIENT_SOURCE__CLIENT_SOURCE_ASSIGNMENT,
                            &added)) != 0)
        return rc;
    if (added && (rc = pa_emit_client_added(tx, m, &mu->who, partner, it->client)) != 0) return rc;
    if ((rc = ps_asg_get(tx, a.id, false, m, &a)) != 0) return rc;
    if (a.state == PART_ST_ACTIVE) {
        rc = pa_emit(tx, m, &mu->who, PA_EV_ACTIVATED, &a, false);
        *out = asg_result(mu, it, ORGMESH__PARTNERS__V1__ASSIGNMENT_OUTCOME__ASSIGNMENT_OUTCOME_ACTIVATED, &a);
    } else {
        /* issue 13: access requests created, per actor and per client (the whole call rolls back) */
        if ((rc = pa_rate_take(tx, "access_requests", pa_caller_id(mu->ctx), partners_cfg.requests_per_actor, it->client,
                            partners_cfg.requests_per_client, &mu->retry_ms, &mu->rate_which)) != 0)
            return rc == OM_E_RATE_LIMITED ? pa_mu_rate_limited(mu, "access_requests") : rc;
        rc = pa_emit(tx, m, &mu->who, PA_EV_REQUESTED, &a, false); /* the notifier emails the client */
        *out = asg_result(mu, it, ORGMESH__PARTNERS__V1__ASSIGNMENT_OUTCOME__ASSIGNMENT_OUTCOME_ACCESS_REQUESTED, &a);
    }
    return rc;
}

static int apply_assign(mutation *mu, pg_conn *tx) {
    assign_op *op = mu->op;
    for (int i = 0; i < op->n; i++) {
        asg_item *it = &op->items[i];
        if (it->err != NULL) {
            op->results[i] = asg_result(mu, it, ORGMESH__PARTNERS__V1__ASSIGNMENT_OUTCOME__ASSIGNMENT_OUTCOME_FAILED, NULL);
            op->results[i]->error = it->err;
            continue;
        }
        int rc = assign_one(mu, tx, op->partner, it, &op->results[i]);
        if (rc != 0) return rc;
    }
    *op->resp_results = op->results;
    *op->resp_n = (size_t)op->n;
    return 0;
}

/* Checks made before the transaction (they may ask accounts). */
static int assign_prepare(rpc_ctx *ctx, pg_conn *c, assign_op *op) {
    ps_mem m = pa_call_mem(ctx);
    for (int i = 0; i < op->n; i++) {
        asg_item *it = &op->items[i];
        ps_account acc;
        ps_user u;
        ps_membership mb;
        if (it->client == op->partner) {
            it->err = pa_item_error(&m, OM_E_INVALID_ARGUMENT, it->field, "a partner is not its own client");
            continue;
        }
        int rc = pa_ensure_account(ctx, c, it->client, &m, &acc);
        if (rc == OM_E_NOT_FOUND || (rc == 0 && acc.deleted)) {
            it->err = pa_item_error(&m, OM_E_NOT_FOUND, it->field, "account %" PRIu64 " does not exist", it->client);
            continue;
        }
        if (rc != 0) return pa_fail(ctx, rc, "client account");
        rc = pa_ensure_user(ctx, c, it->employee, &m, &u);
        if (rc == OM_E_NOT_FOUND || (rc == 0 && u.deleted)) {
            it->err = pa_item_error(&m, OM_E_NOT_FOUND, it->field, "user %" PRIu64 " does not exist", it->employee);
            continue;
        }
        if (rc != 0) return pa_fail(ctx, rc, "user");
        it->employee_name = u.display_name;
        rc = pa_ensure_membership(ctx, c, op->partner, it->employee, &m, &mb);
        if (rc != 0 && rc != OM_E_NOT_FOUND) return pa_fail(ctx, rc, "membership");
        /* PART-03 */
        if (rc == OM_E_NOT_FOUND || !mb.present || !mb.partner_employee) {
            it->err = pa_item_error(&m, OM_E_NOT_PARTNER_EMPLOYEE, it->field,
                                 "user %" PRIu64 " is not a tagged partner employee", it->employee);
            continue;
        }
        /* PART-04: "already a member" decides whether the client is asked,
         * so it is read fresh from accounts */
        rc = pa_refresh_membership(ctx, c, it->client, it->employee, &m, &mb);
        if (rc != 0 && rc != OM_E_NOT_FOUND) return pa_fail(ctx, rc, "membership");
        it->member = rc == 0 && mb.present;
    }
    return 0;
}

/* Both assign RPCs: `ids` (request field `field`) are the clients of employee
 * `fixed` or, with !ids_are_clients, the employees of client `fixed`. */
/* The grant's terms of both assign RPCs (their fields 5..8). */
typedef struct grant_terms {
    int32_t duration_days;
    bool until_removed, auto_extend;
    const int *roles;
    size_t n_roles;
} grant_terms;

static int assign_run(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp, uint64_t partner,
                      const char *fixed_field, uint64_t fixed, const char *field, const uint64_t *ids, size_t n,
                      bool ids_are_clients, const char *request_id, const grant_terms *terms,
                      PB(AssignmentResult) ***results, size_t *n_results) {
    op_check_id(ctx, "partner_hub_id", partner);
    /* PART-14: 1..max days, the default, or "until removed" where allowed */
    int days = 0;
    int drc = part_rule_duration(terms->duration_days, terms->until_removed, partners_cfg.grant_default_days,
                                 partners_cfg.grant_max_days, partners_cfg.grant_allow_unlimited, &days);
    if (drc == OM_E_DURATION_NOT_ALLOWED)
        return rpc_fail(ctx, drc, "grants without an end are not allowed here; give duration_days (1..%d)",
                        partners_cfg.grant_max_days);
    if (drc != 0)
        rpc_violation(ctx, "duration_days", "must be 1..%d (0 = the default, %d)", partners_cfg.grant_max_days,
                      partners_cfg.grant_default_days);
    /* PART-18: the roles asked for; never SUPER_ADMIN */
    unsigned roles = 0;
    int rrc = part_rule_requested_roles(terms->roles, terms->n_roles, &roles);
    if (rrc == OM_E_ROLE_NOT_GRANTABLE) {
        rpc_violation(ctx, "roles", "SUPER_ADMIN is never granted through a partner assignment");
        return rpc_fail(ctx, rrc, "SUPER_ADMIN is never granted through a partner assignment (PART-18)");
    }
    if (rrc != 0) rpc_violation(ctx, "roles", "holds an unknown role");
    op_check_id(ctx, fixed_field, fixed);
    if (n > PART_MAX_BATCH)
        return rpc_fail(ctx, OM_E_BATCH_TOO_LARGE, "at most %d %s per call", PART_MAX_BATCH,
                        ids_are_clients ? "clients" : "employees");
    pa_check_batch(ctx, field, ids, n);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    assign_op *op = &(assign_op){.partner = partner, .n = (int)n, .duration_days = days,
                                 .auto_extend = terms->auto_extend, .requested_roles = roles};
    op->items = rpc_calloc(ctx, n + 1, sizeof *op->items);
    for (int i = 0; i < op->n; i++) {
        op->items[i].employee = ids_are_clients ? fixed : ids[i];
        op->items[i].client = ids_are_clients ? ids[i] : fixed;
        op->items[i].field = rpc_sprintf(ctx, "%s[%d]", field, i);
    }
    int rc;
    pg_conn *c = op_db(ctx);
    if (c == NULL) return OM_E_UNAVAILABLE;
    if ((rc = pa_require_manager(ctx, c, op->partner, NULL, NULL)) != 0) return rc; /* PART-03 */
    if ((rc = assign_prepare(ctx, c, op)) != 0) return rc;
    op->results = rpc_calloc(ctx, (size_t)op->n + 1, sizeof *op->results);
    op->resp_results = results;
    op->resp_n = n_results;
    mutation mu = {.ctx = ctx, .apply = apply_assign, .op = op, .request_id = request_id};
    if ((rc = op_run(ctx, &pa_mutation_def, req_, resp, &mu)) != 0) return rc;
    if (!mu.replayed) {
        ctoken_pending_reset();
        for (int i = 0; i < op->n; i++) {
            PB(AssignmentResult) *r = op->results[i];
            if (r->outcome == ORGMESH__PARTNERS__V1__ASSIGNMENT_OUTCOME__ASSIGNMENT_OUTCOME_ACTIVATED && r->assignment)
                pa_sync_after(c, r->assignment->assignment_id); /* link the existing membership */
        }
        pa_sync_token(ctx, resp); /* issue 18 */
    }
    return 0;
}

/* AssignClientsToEmployee — PART-03, PART-04, PART-06 (and PART-02 auto-add): per-item results. */
static int h_assign_clients(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_) {
    const PB(AssignClientsToEmployeeRequest) *req = (const void *)req_;
    PB(AssignClientsToEmployeeResponse) *resp = (void *)resp_;
    grant_terms t = {req->duration_days, req->until_removed, req->auto_extend, (const int *)req->roles,
                     req->n_roles};
    return assign_run(ctx, req_, resp_, req->partner_hub_id, "employee_user_id", req->employee_user_id,
                      "client_hub_ids", req->client_hub_ids, req->n_client_hub_ids, true, req->request_id, &t,
                      &resp->results, &resp->n_results);
}

/* AssignEmployeesToClient — PART-03, PART-04, PART-06: the same from the client's side. */
static int h_assign_employees(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_) {
    const PB(AssignEmployeesToClientRequest) *req = (const void *)req_;
    PB(AssignEmployeesToClientResponse) *resp = (void *)resp_;
    grant_terms t = {req->duration_days, req->until_removed, req->auto_extend, (const int *)req->roles,
                     req->n_roles};
    return assign_run(ctx, req_, resp_, req->partner_hub_id, "client_hub_id", req->client_hub_id,
                      "employee_user_ids", req->employee_user_ids, req->n_employee_user_ids, false, req->request_id,
                      &t, &resp->results, &resp->n_results);
}

/* ---- PART-07: removal by the partner -------------------------------------------------------------- */

typedef struct remove_op {
    const PB(RemoveEmployeeFromClientRequest) *req;
    char id[40];
    bool revoked;
} remove_op;

static int apply_remove(mutation *mu, pg_conn *tx) {
    remove_op *op = mu->op;
    const PB(RemoveEmployeeFromClientRequest) *req = op->req;
    ps_assignment a;
    int rc = ps_asg_get_open(tx, req->client_hub_id, req->employee_user_id, true, &mu->mem, &a);
    if (rc == 0 && a.partner_hub_id != req->partner_hub_id) rc = OM_E_NOT_FOUND;
    if (rc == OM_E_NOT_FOUND)
        return op_fail(mu->oc, rc, "employee %" PRIu64 " has no open assignment to client %" PRIu64 " for this partner",
                       req->employee_user_id, req->client_hub_id);
    if (rc != 0) return rc;
    /* PART-07: ACTIVE -> REVOKED (the linked membership goes, an earlier one
     * stays); PENDING -> CANCELLED */
    part_cause cause = a.state == PART_ST_ACTIVE ? PART_CAUSE_REMOVED_BY_PARTNER : PART_CAUSE_CANCELLED_BY_PARTNER;
    if ((rc = pa_end_assignment(tx, &mu->mem, &mu->who, &a, cause, req->reason, &op->revoked)) != 0) return rc;
    snprintf(op->id, sizeof op->id, "%s", a.id);
    PB(RemoveEmployeeFromClientResponse) *r = (void *)mu->resp;
    r->assignment = pa_assignment_pb(&mu->mem, &a);
    return 0;
}

/* RemoveEmployeeFromClient — PART-07: confirmation "REMOVE"; REVOKED and the partner-linked membership removed. */
static int h_remove_employee(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_) {
    int rc;
    const PB(RemoveEmployeeFromClientRequest) *req = (const void *)req_;
    PB(RemoveEmployeeFromClientResponse) *resp = (void *)resp_;
    op_check_id(ctx, "partner_hub_id", req->partner_hub_id);
    op_check_id(ctx, "employee_user_id", req->employee_user_id);
    op_check_id(ctx, "client_hub_id", req->client_hub_id);
    pa_check_text(ctx, "reason", req->reason, MAX_REASON_CHARS);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    if (part_rule_confirmation(req->confirmation) != 0) { /* PART-07 */
        rpc_violation(ctx, "confirmation", "must be exactly REMOVE");
        return rpc_fail(ctx, OM_E_CONFIRMATION_REQUIRED, "type REMOVE to confirm");
    }
    pg_conn *c = op_db(ctx);
    if (c == NULL) return OM_E_UNAVAILABLE;
    if ((rc = pa_require_manager(ctx, c, req->partner_hub_id, NULL, NULL)) != 0) return rc;
    remove_op op = {.req = req};
    mutation mu = {.ctx = ctx, .apply = apply_remove, .op = &op, .request_id = req->request_id};
    if ((rc = op_run(ctx, &pa_mutation_def, req_, resp_, &mu)) != 0) return rc;
    if (mu.replayed || resp->assignment == NULL) return 0;
    if (op.revoked) {
        ctoken_pending_reset();
        pa_sync_after(c, op.id);
        pa_sync_token(ctx, resp_); /* issue 18 */
        ps_assignment a;
        if (pa_reread(ctx, c, op.id, &a) == 0) {
            ps_mem m = pa_call_mem(ctx);
            resp->assignment = pa_assignment_pb(&m, &a);
            resp->membership_removed = a.membership_removed;
        }
    }
    return 0;
}

/* ---- PART-10, PART-11, PART-13: views --------------------------------------------------------------- */

static int list_assignments(rpc_ctx *ctx, const char *method, uint64_t partner, uint64_t employee, uint64_t client,
                            int state, int32_t size, const char *token, PB(Assignment) ***out, size_t *n_out,
                            char **next) {
    int rc;
    if ((int)state < 0 || state > PART_ST_REVOKED) rpc_violation(ctx, "state", "is not a state");
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    pa_lpage pg;
    const char *scope = rpc_sprintf(ctx, "partners.%s|%" PRIu64 "|%" PRIu64 "|%" PRIu64 "|%d", method, partner,
                                    employee, client, state);
    if ((rc = pa_lpage_open(ctx, size, token, scope, &pg)) != 0) return rc;
    pg_conn *c = op_db(ctx);
    if (c == NULL) return OM_E_UNAVAILABLE;
    /* PART-10, PART-11: partner managers only */
    if ((rc = pa_require_manager(ctx, c, partner, NULL, NULL)) != 0) return rc;
    ps_mem m = pa_call_mem(ctx);
    ps_asg_filter f = {.partner = partner, .employee = employee, .client = client, .state = state,
                       .order = client != 0 ? 2 : 1, .offset = pg.offset, .limit = pg.limit};
    ps_assignment *list = rpc_calloc(ctx, (size_t)pg.limit, sizeof *list);
    int n = 0;
    rc = ps_asg_list(c, &f, &m, list, &n);
    if (rc != 0) return pa_fail(ctx, rc, "assignments");
    *out = rpc_calloc(ctx, (size_t)n + 1, sizeof **out);
    for (int i = 0; i < n; i++) (*out)[i] = pa_assignment_pb(&m, &list[i]);
    *n_out = (size_t)n;
    *next = pa_lpage_next(ctx, &pg, n);
    return 0;
}

/* ListEmployeeClients — PART-11, PART-13: one employee's clients with state, last activity and 30-day count. */
static int h_list_employee_clients(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_) {
    const PB(ListEmployeeClientsRequest) *req = (const void *)req_;
    PB(ListEmployeeClientsResponse) *resp = (void *)resp_;
    op_check_id(ctx, "partner_hub_id", req->partner_hub_id);
    op_check_id(ctx, "employee_user_id", req->employee_user_id);
    return list_assignments(ctx, "ListEmployeeClients", req->partner_hub_id, req->employee_user_id, 0,
                            (int)req->state, req->page_size, req->page_token, &resp->assignments,
                            &resp->n_assignments, &resp->next_page_token);
}

/* ListClientEmployees — PART-10, PART-11, PART-13: one client's partner employees; partner managers only (PART-10). */
static int h_list_client_employees(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_) {
    const PB(ListClientEmployeesRequest) *req = (const void *)req_;
    PB(ListClientEmployeesResponse) *resp = (void *)resp_;
    op_check_id(ctx, "partner_hub_id", req->partner_hub_id);
    op_check_id(ctx, "client_hub_id", req->client_hub_id);
    return list_assignments(ctx, "ListClientEmployees", req->partner_hub_id, 0, req->client_hub_id,
                            (int)req->state, req->page_size, req->page_token, &resp->assignments,
                            &resp->n_assignments, &resp->next_page_token);
}

/* ---- PART-12: managed-MRR report ---------------------------------------------------------------------- */

/* GetManagedMrrReport — PART-12: per client its MRR, whether the partner is credited, and the users who block it. */
static int h_mrr_report(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_) {
    int rc;
    const PB(GetManagedMrrReportRequest) *req = (const void *)req_;
    PB(GetManagedMrrReportResponse) *resp = (void *)resp_;
    op_check_id(ctx, "partner_hub_id", req->partner_hub_id);
    if ((int)req->filter < 0 || (int)req->filter > 2) rpc_violation(ctx, "filter", "is not a filter");
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    pa_lpage pg;
    const char *scope = rpc_sprintf(ctx, "partners.GetManagedMrrReport|%" PRIu64 "|%d", req->partner_hub_id,
                                    (int)req->filter);
    if ((rc = pa_lpage_open(ctx, req->page_size, req->page_token, scope, &pg)) != 0) return rc;
    pg_conn *c = op_db(ctx);
    if (c == NULL) return OM_E_UNAVAILABLE;
    if ((rc = pa_require_manager(ctx, c, req->partner_hub_id, NULL, NULL)) != 0) return rc; /* PART-12 */
    ps_mem m = pa_call_mem(ctx);
    ps_client *clients = NULL;
    int n = 0;
    rc = ps_clients_all(c, req->partner_hub_id, &m, &clients, &n);
    if (rc != 0) return pa_fail(ctx, rc, "clients");
    PB(ClientMrr) **lines = rpc_calloc(ctx, (size_t)n + 1, sizeof *lines);
    int n_lines = 0;
    /* totals per currency over the whole report */
    Orgmesh__Type__V1__Money **totals = rpc_calloc(ctx, (size_t)n + 1, sizeof *totals);
    int n_totals = 0;
    for (int i = 0; i < n; i++) {
        ps_blocker *members = NULL;
        int nm = 0;
        if ((rc = ps_common_members(c, req->partner_hub_id, clients[i].client_hub_id, &m, &members, &nm)) != 0)
            return pa_fail(ctx, rc, "members");
        PB(ClientMrr) *l = rpc_alloc(ctx, sizeof *l);
        orgmesh__partners__v1__client_mrr__init(l);
        l->client_hub_id = clients[i].client_hub_id;
        l->client_name = rpc_strdup(ctx, clients[i].name);
        l->active_employee_count = clients[i].active_count;
        Orgmesh__Type__V1__Money *mrr = rpc_alloc(ctx, sizeof *mrr);
        orgmesh__type__v1__money__init(mrr);
        mrr->amount_minor = clients[i].mrr_minor;
        mrr->currency_code = rpc_strdup(ctx, clients[i].mrr_currency);
        l->mrr = mrr;
        l->blockers = rpc_calloc(ctx, (size_t)nm + 1, sizeof *l->blockers);
        for (int j = 0; j < nm; j++) {
            /* PART-12: every user of both accounts must be tagged and not refused (PART-06) */
            int why = part_credit_blocker(members[j].tagged, members[j].refused, members[j].active_here);
            if (why == 0) continue;
            PB(CreditBlocker) *b = rpc_alloc(ctx, sizeof *b);
            orgmesh__partners__v1__credit_blocker__init(b);
            b->user_id = members[j].user_id;
            b->email = rpc_strdup(ctx, members[j].email);
            b->display_name = rpc_strdup(ctx, members[j].display_name);
            b->reason = (PB(CreditBlockReason))why;
            l->blockers[l->n_blockers++] = b;
        }
        int reasons[2], nr = 0;
        l->credited = part_credited(l->active_employee_count, (int)l->n_blockers, reasons, &nr);
        l->uncredited_reasons = rpc_calloc(ctx, 2, sizeof *l->uncredited_reasons);
        for (int k = 0; k < nr; k++) l->uncredited_reasons[l->n_uncredited_reasons++] = (PB(UncreditedReason))reasons[k];
        if (l->credited && mrr->amount_minor != 0) {
            int t = 0;
            while (t < n_totals && strcmp(totals[t]->currency_code, mrr->currency_code) != 0) t++;
            if (t == n_totals) {
                totals[t] = rpc_alloc(ctx, sizeof *totals[t]);
                orgmesh__type__v1__money__init(totals[t]);
                totals[t]->currency_code = mrr->currency_code;
                n_totals++;
            }
            totals[t]->amount_minor += mrr->amount_minor;
        }
        if (req->filter == ORGMESH__PARTNERS__V1__CREDIT_FILTER__CREDIT_FILTER_CREDITED && !l->credited) continue;
        if (req->filter == ORGMESH__PARTNERS__V1__CREDIT_FILTER__CREDIT_FILTER_NOT_CREDITED && l->credited) continue;
        lines[n_lines++] = l;
    }
    int from = pg.offset < n_lines ? pg.offset : n_lines;
    int got = n_lines - from < pg.limit ? n_lines - from : pg.limit;
    resp->clients = lines + from;
    resp->n_clients = (size_t)got;
    resp->next_page_token = from + got < n_lines ? pa_lpage_next(ctx, &pg, got) : rpc_strdup(ctx, "");
    resp->credited_totals = totals;
    resp->n_credited_totals = (size_t)n_totals;
    resp->compute_time = pa_ts(&m, (int64_t)time(NULL) * 1000000);
    return 0;
}

/* ListPartnerHistory — SPEC 8: the partner's audit entries, newest first; partner managers only. */
static int h_history(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_) {
    int rc;
    const PB(ListPartnerHistoryRequest) *req = (const void *)req_;
    PB(ListPartnerHistoryResponse) *resp = (void *)resp_;
    op_check_id(ctx, "partner_hub_id", req->partner_hub_id);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    page_req pg; /* keyset: the id below which the next page starts */
    const char *scope = rpc_sprintf(ctx, "partners.ListPartnerHistory|%" PRIu64, req->partner_hub_id);
    if ((rc = page_open(ctx, req->page_size, req->page_token, scope, 1, &pg)) != 0) return rc;
    pg_conn *c = op_db(ctx);
    if (c == NULL) return OM_E_UNAVAILABLE;
    if ((rc = pa_require_manager(ctx, c, req->partner_hub_id, NULL, NULL)) != 0) return rc;
    char resource[48];
    snprintf(resource, sizeof resource, "partners/%" PRIu64, req->partner_hub_id);
    history_req q = {.page = &pg, .scope = HISTORY_RESOURCE, .resource = resource};
    history_out h;
    rc = history_list(ctx, c, &q, &h);
    if (rc != 0) return pa_fail(ctx, rc, "history");
    resp->entries = h.entries;
    resp->n_entries = h.n;
    resp->next_page_token = h.next_page_token;
    return 0;
}

/* ---- PartnersInternalService -------------------------------------------------------------------------- */

typedef struct activities_op {
    const PB(RecordActivitiesRequest) *req;
    const char *reporter;
} activities_op;

static int apply_activities(mutation *mu, pg_conn *tx) {
    activities_op *op = mu->op;
    PB(RecordActivitiesResponse) *resp = (void *)mu->resp;
    for (size_t i = 0; i < op->req->n_activities; i++) {
        const PB(Activity) *a = op->req->activities[i];
        bool fresh = true, attributed = false;
        int rc;
        if (a->activity_id[0] != '\0' && (rc = ps_activity_seen(tx, op->reporter, a->activity_id, &fresh)) != 0)
            return rc;
        if (!fresh) continue;
        resp->accepted_count++;
        /* PART-13: attributed to the partner only for tagged employees with an ACTIVE assignment there */
        if ((rc = ps_activity_attribute(tx, a->user_id, a->hub_id, pa_ts_us(a->time), a->kind, &attributed)) != 0)
            return rc;
        if (attributed) resp->attributed_count++;
    }
    return 0;
}

/* RecordActivities — PART-13: services report what users did, validated as a whole. */
static int h_record_activities(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp) {
    const PB(RecordActivitiesRequest) *req = (const void *)req_;
    if (req->n_activities > PART_MAX_BATCH)
        return rpc_fail(ctx, OM_E_BATCH_TOO_LARGE, "at most %d activities per call", PART_MAX_BATCH);
    if (req->n_activities == 0) rpc_violation(ctx, "activities", "must hold at least one activity");
    int64_t now = (int64_t)time(NULL) * 1000000;
    for (size_t i = 0; i < req->n_activities; i++) {
        const PB(Activity) *a = req->activities[i];
        char f[48];
        snprintf(f, sizeof f, "activities[%zu].user_id", i);
        op_check_id(ctx, f, a->user_id);
        snprintf(f, sizeof f, "activities[%zu].hub_id", i);
        op_check_id(ctx, f, a->hub_id);
        const char *why = NULL;
        if (part_activity_check(a->kind, pa_ts_us(a->time), now, &why) != 0) {
            snprintf(f, sizeof f, "activities[%zu]", i);
            rpc_violation(ctx, f, "%s", why);
        }
        if (strlen(a->activity_id) > 128) {
            snprintf(f, sizeof f, "activities[%zu].activity_id", i);
            rpc_violation(ctx, f, "must be at most 128 characters");
        }
    }
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    char reporter[48];
    audit_actor_string(rpc_actor(ctx), NULL, reporter, sizeof reporter);
    activities_op op = {.req = req, .reporter = reporter};
    mutation mu = {.ctx = ctx, .apply = apply_activities, .op = &op, .request_id = req->request_id};
    return op_run(ctx, &pa_mutation_def, req_, resp, &mu);
}

/* The checks of one IssueAccessRequestTokens request; `prefix` names the
 * item in a batch ("items[3]."), "" otherwise. */
static void check_issue_tokens(rpc_ctx *ctx, const PB(IssueAccessRequestTokensRequest) *req, const char *prefix) {
    char f[80];
    snprintf(f, sizeof f, "%saccess_request_id", prefix);
    if (req->access_request_id[0] == '\0') rpc_violation(ctx, f, "must be set");
    snprintf(f, sizeof f, "%sevent_id", prefix);
    if (req->event_id[0] == '\0') rpc_violation(ctx, f, "must be set");
    pa_check_text(ctx, f, req->event_id, 128);
    snprintf(f, sizeof f, "%srecipient_user_ids", prefix);
    pa_check_batch(ctx, f, req->recipient_user_ids, req->n_recipient_user_ids);
}

/* PART-04: one single-use token per client-admin recipient of one access
 * request, only its hash kept; same event, same tokens. OM_E_NOT_FOUND or
 * OM_E_REQUEST_NOT_PENDING (not failed on ctx) when the request does not
 * exist or is no longer pending; other codes are failed on ctx. */
static int issue_tokens(rpc_ctx *ctx, pg_conn *c, ps_mem *m, const PB(IssueAccessRequestTokensRequest) *req,
                        PB(RecipientToken) * **tokens, size_t *n_tokens) {
    ps_assignment a;
    int rc = ps_asg_get_by_request(c, req->access_request_id, false, m, &a);
    if (rc == OM_E_NOT_FOUND) return rc;
    if (rc != 0) return pa_fail(ctx, rc, "request");
    if (a.state != PART_ST_PENDING) return OM_E_REQUEST_NOT_PENDING;
    const char *key = partners_cfg.token_key;
    *tokens = rpc_calloc(ctx, req->n_recipient_user_ids + 1, sizeof **tokens);
    *n_tokens = 0;
    for (size_t i = 0; i < req->n_recipient_user_ids; i++) {
        uint64_t r = req->recipient_user_ids[i];
        ps_membership mb;
        rc = pa_ensure_membership(ctx, c, a.client_hub_id, r, m, &mb);
        if (rc == OM_E_NOT_FOUND) continue;
        if (rc != 0) return pa_fail(ctx, rc, "membership");
        if (part_rule_client_admin(mb.present, mb.roles, mb.link_partner_hub_id != 0) != 0)
            continue; /* only the client's own admins get a link (PART-05, PART-08) */
        char token[PART_TOKEN_LEN + 1];
        uint8_t hash[32];
        if ((rc = part_token_make(key, strlen(key), a.request_id, r, req->event_id, token)) != 0)
            return rpc_fail(ctx, rc, NULL);
        part_token_hash(token, hash);
        if ((rc = ps_token_store(c, hash, a.id, r, req->event_id)) != 0) return pa_fail(ctx, rc, "token");
        PB(RecipientToken) *t = rpc_alloc(ctx, sizeof *t);
        orgmesh__partners__v1__recipient_token__init(t);
        t->recipient_user_id = r;
        t->token = rpc_strdup(ctx, token);
        t->expire_time = pa_ts(m, a.expire_us);
        (*tokens)[(*n_tokens)++] = t;
    }
    return 0;
}

/* IssueAccessRequestTokens — PART-04: one single-use token per client-admin recipient, only its hash kept; same event, same tokens. */
static int h_issue_tokens(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_) {
    const PB(IssueAccessRequestTokensRequest) *req = (const void *)req_;
    PB(IssueAccessRequestTokensResponse) *resp = (void *)resp_;
    if (req->n_recipient_user_ids > PART_MAX_BATCH)
        return rpc_fail(ctx, OM_E_BATCH_TOO_LARGE, "at most %d recipients per call", PART_MAX_BATCH);
    check_issue_tokens(ctx, req, "");
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    pg_conn *c = op_db(ctx);
    if (c == NULL) return OM_E_UNAVAILABLE;
    ps_mem m = pa_call_mem(ctx);
    int rc = issue_tokens(ctx, c, &m, req, &resp->tokens, &resp->n_tokens);
    if (rc == OM_E_NOT_FOUND)
        return rpc_fail(ctx, rc, "access request %s does not exist", req->access_request_id);
    if (rc == OM_E_REQUEST_NOT_PENDING)
        return rpc_fail(ctx, rc, "the access request is no longer pending");
    return rc;
}

/* IssueAccessRequestTokensBatch — PART-04, several requests in one call (the
 * notifier's sender, one call per batch of claimed emails: issue 15); each
 * item answered on its own, a request not pending (or unknown) as
 * not_pending. */
static int h_issue_tokens_batch(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_) {
    const PB(IssueAccessRequestTokensBatchRequest) *req = (const void *)req_;
    PB(IssueAccessRequestTokensBatchResponse) *resp = (void *)resp_;
    size_t recipients = 0;
    for (size_t i = 0; i < req->n_items; i++) recipients += req->items[i]->n_recipient_user_ids;
    if (req->n_items > PART_MAX_BATCH || recipients > PART_MAX_BATCH)
        return rpc_fail(ctx, OM_E_BATCH_TOO_LARGE, "at most %d items and %d recipients in all per call",
                        PART_MAX_BATCH, PART_MAX_BATCH);
    if (req->n_items == 0) rpc_violation(ctx, "items", "must hold at least one item");
    for (size_t i = 0; i < req->n_items; i++) {
        char prefix[32];
        snprintf(prefix, sizeof prefix, "items[%zu].", i);
        check_issue_tokens(ctx, req->items[i], prefix);
    }
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    pg_conn *c = op_db(ctx);
    if (c == NULL) return OM_E_UNAVAILABLE;
    ps_mem m = pa_call_mem(ctx);
    resp->results = rpc_calloc(ctx, req->n_items, sizeof *resp->results);
    for (size_t i = 0; i < req->n_items; i++) {
        PB(IssueAccessRequestTokensResult) *r = rpc_alloc(ctx, sizeof *r);
        orgmesh__partners__v1__issue_access_request_tokens_result__init(r);
        int rc = issue_tokens(ctx, c, &m, req->items[i], &r->tokens, &r->n_tokens);
        if (rc == OM_E_NOT_FOUND || rc == OM_E_REQUEST_NOT_PENDING) r->not_pending = true;
        else if (rc != 0) return rc;
        resp->results[resp->n_results++] = r;
    }
    return 0;
}

/* ---- the service tables ------------------------------------------------------------------------------- */

/* Issue 13: who may call each method with a service identity (rpc_method
 * `services`): RPC_PLATFORM is the operator's platform identities
 * (ORGMESH_PLATFORM_SERVICES: the identity system, operator tools); an
 * orgmesh service is listed only where its own calls need it
 * (docs/security.md "Service identities"). */
static const char *const by_platform[] = {RPC_PLATFORM, NULL};
/* the notifier mails the link (PART-04): nobody else may mint one */
static const char *const by_notifier[] = {"notifier", NULL};

static const rpc_method public_methods[] = {
    {"TagEmployees", h_tag_employees, 0, by_platform},
    {"UntagEmployee", h_untag_employee, 0, by_platform},
    {"ListPartnerEmployees", h_list_partner_employees, 0, by_platform},
    {"ListClients", h_list_clients, 0, by_platform},
    {"AddClients", h_add_clients, 0, by_platform},
    {"SearchClients", h_search_clients, 0, by_platform},
    {"AssignClientsToEmployee", h_assign_clients, 0, by_platform},
    {"AssignEmployeesToClient", h_assign_employees, 0, by_platform},
    {"ListAccessRequests", pa_h_list_access_requests, 0, by_platform},
    {"GetAccessRequest", pa_h_get_access_request, 0, by_platform},
    {"ApproveAccessRequest", pa_h_approve, 0, by_platform},
    {"DeclineAccessRequest", pa_h_decline, 0, by_platform},
    {"CancelAccessRequest", pa_h_cancel, 0, by_platform},
    {"ResendAccessRequest", pa_h_resend, 0, by_platform},
    {"RemoveEmployeeFromClient", h_remove_employee, 0, by_platform},
    {"ListEmployeeClients", h_list_employee_clients, 0, by_platform},
    {"ListClientEmployees", h_list_client_employees, 0, by_platform},
    {"GetManagedMrrReport", h_mrr_report, 0, by_platform},
    {"ListPartnerHistory", h_history, 0, by_platform},
    {"ExtendPartnerGrant", pa_h_extend, 0, by_platform},                   /* PART-17 */
    {"RevokePartnerAccess", pa_h_revoke_partner_access, 0, by_platform},   /* PART-20 */
    {"RestorePartnerAccess", pa_h_restore_partner_access, 0, by_platform}, /* PART-20 */
    {"ListClientGrants", pa_h_list_client_grants, 0, by_platform},         /* PART-21 */
    {"ListDormantGrants", pa_h_list_dormant, 0, by_platform},              /* PART-19 */
    {NULL, NULL, 0},
};

static const rpc_method internal_methods[] = {
    {"RecordActivities", h_record_activities, RPC_INTERNAL, by_platform},
    {"IssueAccessRequestTokens", h_issue_tokens, RPC_INTERNAL, by_notifier},
    {"IssueAccessRequestTokensBatch", h_issue_tokens_batch, RPC_INTERNAL, by_notifier},
    {NULL, NULL, 0},
};

const rpc_service partners_service = {&orgmesh__partners__v1__partners_service__descriptor, public_methods};
const rpc_service partners_internal_service = {&orgmesh__partners__v1__partners_internal_service__descriptor,
                                               internal_methods};
