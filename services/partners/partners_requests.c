/* partners_requests.c — the access-request handlers of PartnersService
 * (PART-04, PART-05): list, get, approve, decline, cancel and resend, each
 * validation then op_run through the runner of partners_call.c. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "ctoken.h"
#include "om_err.h"
#include "page.h"
#include "partners_call.h"

/* ---- PART-04, PART-05: access requests ---------------------------------------------------------- */

/* ListAccessRequests — PART-04: by partner (partner managers) and/or by client (client admins), newest first. */
int pa_h_list_access_requests(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_) {
    int rc;
    const PB(ListAccessRequestsRequest) *req = (const void *)req_;
    PB(ListAccessRequestsResponse) *resp = (void *)resp_;
    if (req->partner_hub_id == 0 && req->client_hub_id == 0)
        rpc_violation(ctx, "partner_hub_id", "partner_hub_id or client_hub_id is required");
    if (req->partner_hub_id != 0) op_check_id(ctx, "partner_hub_id", req->partner_hub_id);
    if (req->client_hub_id != 0) op_check_id(ctx, "client_hub_id", req->client_hub_id);
    if (req->employee_user_id != 0) op_check_id(ctx, "employee_user_id", req->employee_user_id);
    if ((int)req->state < 0 || (int)req->state > PART_ST_REVOKED) rpc_violation(ctx, "state", "is not a state");
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    pa_lpage pg;
    const char *scope = rpc_sprintf(ctx, "partners.ListAccessRequests|%" PRIu64 "|%" PRIu64 "|%d|%" PRIu64,
                                    req->partner_hub_id, req->client_hub_id, (int)req->state, req->employee_user_id);
    if ((rc = pa_lpage_open(ctx, req->page_size, req->page_token, scope, &pg)) != 0) return rc;
    pg_conn *c = op_db(ctx);
    if (c == NULL) return OM_E_UNAVAILABLE;
    bool ok = false;
    rc = 0;
    if (req->partner_hub_id != 0) rc = pa_manager_ok(ctx, c, req->partner_hub_id, &ok);
    if (rc == 0 && !ok && req->client_hub_id != 0) rc = pa_client_admin(ctx, c, req->client_hub_id, &ok, NULL);
    if (rc != 0) return pa_fail(ctx, rc, "membership");
    if (!ok) {
        bool seen = false; /* AIP-193: a member of either side may know the requests exist */
        if ((rc = pa_is_member(ctx, c, req->partner_hub_id, &seen)) == 0 && !seen)
            rc = pa_is_member(ctx, c, req->client_hub_id, &seen);
        if (rc != 0) return pa_fail(ctx, rc, "membership");
        if (!seen && pa_caller_id(ctx) != 0)
            return rpc_fail(ctx, OM_E_NOT_FOUND, "account %" PRIu64 " does not exist",
                            req->partner_hub_id ? req->partner_hub_id : req->client_hub_id);
        return rpc_fail(ctx, OM_E_PERMISSION_DENIED,
                        "only partner managers of the partner or admins of the client may list its requests");
    }
    ps_mem m = pa_call_mem(ctx);
    ps_asg_filter f = {.partner = req->partner_hub_id, .client = req->client_hub_id,
                       .employee = req->employee_user_id, .state = (int)req->state, .only_requests = true,
                       .order = 0, .offset = pg.offset, .limit = pg.limit};
    ps_assignment *list = rpc_calloc(ctx, (size_t)pg.limit, sizeof *list);
    int n = 0;
    if ((rc = ps_asg_list(c, &f, &m, list, &n)) != 0) return pa_fail(ctx, rc, "requests");
    resp->access_requests = rpc_calloc(ctx, (size_t)n + 1, sizeof *resp->access_requests);
    for (int i = 0; i < n; i++) resp->access_requests[i] = pa_request_pb(&m, &list[i]);
    resp->n_access_requests = (size_t)n;
    resp->next_page_token = pa_lpage_next(ctx, &pg, n);
    return 0;
}

/* The request a key names: by id, or by an emailed token, which is valid
 * only for the signed-in user it was sent to (PART-04/05). Fills hash when
 * a token was used. */
static int resolve_request(rpc_ctx *ctx, pg_conn *c, const char *id, const char *token, char asg_id[40],
                           uint8_t hash[32], bool *by_token) {
    ps_mem m = pa_call_mem(ctx);
    ps_assignment a;
    *by_token = false;
    if (token != NULL) {
        uint64_t recipient = 0;
        *by_token = true;
        /* issue 13: every presentation counts, valid or not (guessing is the abuse),
         * committed at once so a refused guess still counts */
        int64_t ms = 0;
        const char *which = NULL;
        int rc = pa_rate_take(c, "token_presentations", pa_caller_id(ctx), partners_cfg.tokens_per_actor, 0, 0, &ms, &which);
        if (rc == OM_E_RATE_LIMITED) return pa_rate_fail(ctx, "token_presentations", which, ms);
        if (rc != 0) return pa_fail(ctx, rc, "rate limit");
        if (!part_token_well_formed(token))
            return rpc_fail(ctx, OM_E_INVALID_TOKEN, "the token is not valid for this user");
        part_token_hash(token, hash);
        rc = ps_token_find(c, hash, asg_id, &recipient);
        if (rc == OM_E_NOT_FOUND || (rc == 0 && (recipient != pa_caller_id(ctx) || recipient == 0)))
            return rpc_fail(ctx, OM_E_INVALID_TOKEN, "the token is not valid for this user");
        if (rc != 0) return pa_fail(ctx, rc, "token");
        /* and per client account: the tokens of one client's requests */
        if ((rc = ps_asg_get(c, asg_id, false, &m, &a)) != 0) return pa_fail(ctx, rc, "request");
        rc = pa_rate_take(c, "token_presentations", 0, 0, a.client_hub_id, partners_cfg.tokens_per_client, &ms, &which);
        if (rc == OM_E_RATE_LIMITED) return pa_rate_fail(ctx, "token_presentations", which, ms);
        return rc != 0 ? pa_fail(ctx, rc, "rate limit") : 0;
    }
    if (id == NULL || id[0] == '\0') {
        rpc_violation(ctx, "access_request_id", "access_request_id or token is required");
        return rpc_fail_invalid(ctx);
    }
    int rc = ps_asg_get_by_request(c, id, false, &m, &a);
    if (rc != 0) return rc == OM_E_NOT_FOUND ? rpc_fail(ctx, rc, "access request %s does not exist", id)
                                             : pa_fail(ctx, rc, "request");
    snprintf(asg_id, 40, "%s", a.id);
    return 0;
}

/* GetAccessRequest — PART-04: by id (partner managers, client admins) or by token (its recipient). */
int pa_h_get_access_request(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_) {
    int rc;
    const PB(GetAccessRequestRequest) *req = (const void *)req_;
    PB(GetAccessRequestResponse) *resp = (void *)resp_;
    pg_conn *c = op_db(ctx);
    if (c == NULL) return OM_E_UNAVAILABLE;
    char id[40];
    uint8_t hash[32];
    bool by_token;
    const char *tok = req->key_case == ORGMESH__PARTNERS__V1__GET_ACCESS_REQUEST_REQUEST__KEY_TOKEN ? req->token : NULL;
    const char *rid = req->key_case == ORGMESH__PARTNERS__V1__GET_ACCESS_REQUEST_REQUEST__KEY_ACCESS_REQUEST_ID
                          ? req->access_request_id
                          : NULL;
    if ((rc = resolve_request(ctx, c, rid, tok, id, hash, &by_token)) != 0) return rc;
    ps_assignment a;
    rc = pa_reread(ctx, c, id, &a);
    if (rc != 0) return pa_fail(ctx, rc, "access request");
    bool ok = by_token;
    if (!ok && (rc = pa_manager_ok(ctx, c, a.partner_hub_id, &ok)) != 0) return pa_fail(ctx, rc, "membership");
    if (!ok && (rc = pa_client_admin(ctx, c, a.client_hub_id, &ok, NULL)) != 0) return pa_fail(ctx, rc, "membership");
    if (!ok) {
        bool seen = false; /* AIP-193: only members of either side may know it exists */
        if ((rc = pa_is_member(ctx, c, a.partner_hub_id, &seen)) == 0 && !seen)
            rc = pa_is_member(ctx, c, a.client_hub_id, &seen);
        if (rc != 0) return pa_fail(ctx, rc, "membership");
        if (!seen && pa_caller_id(ctx) != 0)
            return rpc_fail(ctx, OM_E_NOT_FOUND, "access request %s does not exist", rid ? rid : "");
        return rpc_fail(ctx, OM_E_PERMISSION_DENIED, "not a partner manager or client admin of this request");
    }
    ps_mem m = pa_call_mem(ctx);
    resp->access_request = pa_request_pb(&m, &a);
    return 0;
}

typedef struct answer_op {
    char id[40];
    part_answer answer;
    const char *reason;
    unsigned roles;
    bool by_token;
    uint8_t hash[32];
    bool applied;
} answer_op;

/* API-01: what a request's state means, in words: a status message never
 * shows an enum name. */
static const char *state_words(int state) {
    switch (state) {
    case PART_ST_ACTIVE: return "was already approved";
    case PART_ST_DECLINED: return "was already declined";
    case PART_ST_EXPIRED: return "has expired";
    case PART_ST_CANCELLED: return "was cancelled";
    case PART_ST_REVOKED: return "was approved and the access has since been removed";
    default: return "is no longer pending";
    }
}

static int apply_answer(mutation *mu, pg_conn *tx) {
    answer_op *op = mu->op;
    ps_mem *m = &mu->mem;
    ps_assignment a;
    bool apply = false;
    op->applied = false;
    int rc = ps_asg_get(tx, op->id, true, m, &a);
    if (rc != 0) return rc;
    /* PART-05: PENDING -> ACTIVE | DECLINED | CANCELLED; a repeat returns it as
     * it stands, a conflicting answer is refused */
    if ((rc = part_rule_answer(a.state, a.cause, op->answer, &apply)) != 0)
        return op_fail(mu->oc, rc, "the access request %s", state_words(a.state));
    if (apply) {
        part_state st;
        part_cause cause;
        part_answer_result(op->answer, &st, &cause);
        a.state = st;
        a.cause = cause;
        if (op->answer == PART_ANSWER_APPROVE) {
            /* PART-05: the employee becomes a member with partner_link (the
             * link sync makes the accounts call once this commits) */
            a.answered_by = pa_caller_id(mu->ctx);
            a.link_sync = true;
            a.link_adopt = true;
            a.link_roles = op->roles;
            a.link_actor = pa_who_string(&mu->who, m);
        } else if (op->answer == PART_ANSWER_DECLINE) {
            a.answered_by = pa_caller_id(mu->ctx);
            a.answer_reason = op->reason;
        } else {
            a.answer_reason = op->reason;
            a.end_actor = pa_who_string(&mu->who, m);
        }
        if ((rc = ps_asg_save(tx, &a, m)) != 0) return rc;
        if (op->answer == PART_ANSWER_APPROVE) {
            if ((rc = pa_emit(tx, m, &mu->who, PA_EV_APPROVED, &a, false)) != 0) return rc;
            if ((rc = ps_asg_save(tx, &a, m)) != 0) return rc; /* a version per event (SPEC 2) */
            rc = pa_emit(tx, m, &mu->who, PA_EV_ACTIVATED, &a, false);
        } else {
            rc = pa_emit(tx, m, &mu->who, op->answer == PART_ANSWER_DECLINE ? PA_EV_DECLINED : PA_EV_CANCELLED, &a,
                         false);
        }
        if (rc != 0) return rc;
        op->applied = true;
    }
    if (op->by_token && (rc = ps_token_use(tx, op->hash)) != 0) return rc; /* single use */
    switch (op->answer) {
    case PART_ANSWER_APPROVE: {
        PB(ApproveAccessRequestResponse) *r = (void *)mu->resp;
        r->access_request = pa_request_pb(m, &a);
        r->assignment = pa_assignment_pb(m, &a);
        break;
    }
    case PART_ANSWER_DECLINE:
        ((PB(DeclineAccessRequestResponse) *)mu->resp)->access_request = pa_request_pb(m, &a);
        break;
    case PART_ANSWER_CANCEL:
        ((PB(CancelAccessRequestResponse) *)mu->resp)->access_request = pa_request_pb(m, &a);
        break;
    }
    return 0;
}

/* Approve and Decline share everything but the answer (PART-05). */
static int client_answer(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp, part_answer answer,
                         const char *rid, const char *tok, const char *reason, const int *roles, size_t n_roles,
                         const char *request_id) {
    int rc;
    pa_check_text(ctx, "reason", reason, MAX_REASON_CHARS);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    pg_conn *c = op_db(ctx);
    if (c == NULL) return OM_E_UNAVAILABLE;
    answer_op op = {.answer = answer, .reason = reason ? reason : ""};
    if ((rc = resolve_request(ctx, c, rid, tok, op.id, op.hash, &op.by_token)) != 0) return rc;
    ps_assignment a;
    rc = pa_reread(ctx, c, op.id, &a);
    if (rc != 0) return pa_fail(ctx, rc, "access request");
    bool ok = false;
    /* PART-05: only a signed-in client admin answers; a token alone never grants anything */
    int why = 0;
    if ((rc = pa_client_admin(ctx, c, a.client_hub_id, &ok, &why)) != 0) return pa_fail(ctx, rc, "membership");
    if (!ok) {
        if (why == OM_E_PARTNER_IDENTITY_FORBIDDEN) /* PART-08: only the client grants access */
            return rpc_fail(ctx, why, "a partner-linked member of the client cannot answer access requests (PART-05,"
                                      " PART-08)");
        bool seen = op.by_token; /* AIP-193: only members of either side may know it exists */
        if (!seen && (rc = pa_is_member(ctx, c, a.partner_hub_id, &seen)) == 0 && !seen)
            rc = pa_is_member(ctx, c, a.client_hub_id, &seen);
        if (rc != 0) return pa_fail(ctx, rc, "membership");
        if (!seen && pa_caller_id(ctx) != 0)
            return rpc_fail(ctx, OM_E_NOT_FOUND, "access request %s does not exist", rid ? rid : "");
        return rpc_fail(ctx, OM_E_PERMISSION_DENIED,
                        "only super admin or account permissions members of the client may answer (PART-05)");
    }
    if (answer == PART_ANSWER_APPROVE) {
        /* PART-18: exactly the approved roles, a subset of those requested, never SUPER_ADMIN */
        rc = part_rule_approved_roles(a.requested_roles, roles, n_roles, &op.roles);
        if (rc == OM_E_ROLE_NOT_GRANTABLE) {
            rpc_violation(ctx, "roles", "SUPER_ADMIN is never granted through a partner assignment");
            return rpc_fail(ctx, rc, "SUPER_ADMIN is never granted through a partner assignment (PART-18)");
        }
        if (rc == OM_E_ROLES_NOT_REQUESTED) {
            rpc_violation(ctx, "roles", "must be among the requested roles");
            return rpc_fail(ctx, rc, "the approved roles must be among the requested roles (PART-18); a wider scope "
                                     "is a new request");
        }
        if (rc != 0) {
            rpc_violation(ctx, "roles", "holds an unknown role");
            return rpc_fail_invalid(ctx);
        }
    }
    mutation mu = {.ctx = ctx, .apply = apply_answer, .op = &op, .request_id = request_id};
    if ((rc = op_run(ctx, &pa_mutation_def, req_, resp, &mu)) != 0) return rc;
    if (answer == PART_ANSWER_APPROVE && op.applied) {
        ctoken_pending_reset();
        pa_sync_after(c, op.id);
        pa_sync_token(ctx, resp); /* issue 18 */
    }
    return 0;
}

/* ApproveAccessRequest — PART-05: a client admin grants access by id or emailed token; the employee becomes a member with partner_link. */
int pa_h_approve(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp) {
    const PB(ApproveAccessRequestRequest) *req = (const void *)req_;
    const char *tok = req->key_case == ORGMESH__PARTNERS__V1__APPROVE_ACCESS_REQUEST_REQUEST__KEY_TOKEN ? req->token : NULL;
    const char *rid = req->key_case == ORGMESH__PARTNERS__V1__APPROVE_ACCESS_REQUEST_REQUEST__KEY_ACCESS_REQUEST_ID
                          ? req->access_request_id
                          : NULL;
    return client_answer(ctx, req_, resp, PART_ANSWER_APPROVE, rid, tok, "", (const int *)req->roles, req->n_roles,
                         req->request_id);
}

/* DeclineAccessRequest — PART-05: a client admin declines; repeats return it as it stands. */
int pa_h_decline(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp) {
    const PB(DeclineAccessRequestRequest) *req = (const void *)req_;
    const char *tok = req->key_case == ORGMESH__PARTNERS__V1__DECLINE_ACCESS_REQUEST_REQUEST__KEY_TOKEN ? req->token : NULL;
    const char *rid = req->key_case == ORGMESH__PARTNERS__V1__DECLINE_ACCESS_REQUEST_REQUEST__KEY_ACCESS_REQUEST_ID
                          ? req->access_request_id
                          : NULL;
    return client_answer(ctx, req_, resp, PART_ANSWER_DECLINE, rid, tok, req->reason, NULL, 0, req->request_id);
}

/* The request of a partner-side call, with the caller checked as a manager of its partner. */
static int partner_request(rpc_ctx *ctx, pg_conn *c, const char *rid, ps_assignment *a) {
    ps_mem m = pa_call_mem(ctx);
    if (rid == NULL || rid[0] == '\0') {
        rpc_violation(ctx, "access_request_id", "must be set");
        return rpc_fail_invalid(ctx);
    }
    int rc = ps_asg_get_by_request(c, rid, false, &m, a);
    if (rc != 0) return rc == OM_E_NOT_FOUND ? rpc_fail(ctx, rc, "access request %s does not exist", rid)
                                             : pa_fail(ctx, rc, "request");
    /* AIP-193: the client's members may see the request (GetAccessRequest), so
     * they are refused; anyone else outside the partner is told it does not exist */
    bool client_member = false;
    if ((rc = pa_is_member(ctx, c, a->client_hub_id, &client_member)) != 0) return pa_fail(ctx, rc, "membership");
    return pa_require_manager(ctx, c, a->partner_hub_id, NULL,
                           client_member ? PA_MAY_SEE : rpc_sprintf(ctx, "access request %s does not exist", rid));
}

/* CancelAccessRequest — PART-04: a partner manager cancels a PENDING request (PART-05 repeat/conflict rules). */
int pa_h_cancel(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp) {
    int rc;
    const PB(CancelAccessRequestRequest) *req = (const void *)req_;
    pa_check_text(ctx, "reason", req->reason, MAX_REASON_CHARS);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    pg_conn *c = op_db(ctx);
    if (c == NULL) return OM_E_UNAVAILABLE;
    ps_assignment a;
    if ((rc = partner_request(ctx, c, req->access_request_id, &a)) != 0) return rc;
    answer_op op = {.answer = PART_ANSWER_CANCEL, .reason = req->reason};
    snprintf(op.id, sizeof op.id, "%s", a.id);
    mutation mu = {.ctx = ctx, .apply = apply_answer, .op = &op, .request_id = req->request_id};
    return op_run(ctx, &pa_mutation_def, req_, resp, &mu);
}

typedef struct resend_op {
    char id[40];
} resend_op;

static int apply_resend(mutation *mu, pg_conn *tx) {
    resend_op *op = mu->op;
    ps_assignment a;
    int rc = ps_asg_get(tx, op->id, true, &mu->mem, &a);
    if (rc != 0) return rc;
    if (a.state != PART_ST_PENDING) return op_fail(mu->oc, OM_E_REQUEST_NOT_PENDING, "the access request is not pending");
    int64_t next = 0;
    /* PART-04: at most once per hour, timed by the database clock; PART-22:
     * at once when an email of the last send failed or bounced */
    if (part_rule_resend_after(a.last_send_us, a.last_send_failed, a.now_us, partners_cfg.resend_interval_s,
                               &next) != 0)
        return op_fail(mu->oc, OM_E_RESEND_TOO_SOON, "it can be resent %" PRId64 " s from now",
                       (next - a.now_us + 999999) / 1000000);
    /* issue 13: resends per actor and per client (each one emails the client's admins) */
    if ((rc = pa_rate_take(tx, "resends", pa_caller_id(mu->ctx), partners_cfg.resends_per_actor, a.client_hub_id,
                        partners_cfg.resends_per_client, &mu->retry_ms, &mu->rate_which)) != 0)
        return rc == OM_E_RATE_LIMITED ? pa_mu_rate_limited(mu, "resends") : rc;
    a.send_count++;
    a.last_send_us = -1; /* now() */
    if ((rc = ps_asg_save(tx, &a, &mu->mem)) != 0) return rc;
    if ((rc = pa_emit(tx, &mu->mem, &mu->who, PA_EV_RESENT, &a, false)) != 0) return rc;
    a.last_send_failed = false; /* PART-22: a new send (pa_emit recorded its event) */
    ((PB(ResendAccessRequestResponse) *)mu->resp)->access_request = pa_request_pb(&mu->mem, &a);
    return 0;
}

/* ResendAccessRequest — PART-04: a partner manager resends a PENDING request, at most once per hour (RESEND_TOO_SOON). */
int pa_h_resend(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp) {
    int rc;
    const PB(ResendAccessRequestRequest) *req = (const void *)req_;
    pg_conn *c = op_db(ctx);
    if (c == NULL) return OM_E_UNAVAILABLE;
    ps_assignment a;
    if ((rc = partner_request(ctx, c, req->access_request_id, &a)) != 0) return rc;
    resend_op op;
    snprintf(op.id, sizeof op.id, "%s", a.id);
    mutation mu = {.ctx = ctx, .apply = apply_resend, .op = &op, .request_id = req->request_id};
    return op_run(ctx, &pa_mutation_def, req_, resp, &mu);
}
