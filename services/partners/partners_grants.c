/* partners_grants.c — partner grants (issue 17, PART-14 ... PART-21): the
 * handlers of ExtendPartnerGrant, RevokePartnerAccess, RestorePartnerAccess,
 * ListClientGrants and ListDormantGrants (validation, then op_run through
 * the runner of partners_call.c), and the timer's grant round: end notices,
 * expiry or auto-extension at the end, dormant notices and revocations.
 * Duration and scope at assignment and approval are checked where those
 * calls are handled (partners_rpc.c, partners_requests.c). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "orgmesh/notifier/v1/events.pb-c.h"
#include "om_err.h"
#include "page.h"
#include "partners_call.h"

/* Refuses a caller who is neither allowed on `client` nor on `partner`:
 * NOT_FOUND when they are a member of neither (AIP-193), else
 * PERMISSION_DENIED with `why`. */
static int refuse(rpc_ctx *ctx, pg_conn *c, uint64_t partner, uint64_t client, const char *what, const char *why) {
    bool seen = false;
    int rc = 0;
    if (partner != 0) rc = pa_is_member(ctx, c, partner, &seen);
    if (rc == 0 && !seen && client != 0) rc = pa_is_member(ctx, c, client, &seen);
    if (rc != 0) return pa_fail(ctx, rc, "membership");
    if (!seen && pa_caller_id(ctx) != 0) return rpc_fail(ctx, OM_E_NOT_FOUND, "%s does not exist", what);
    return rpc_fail(ctx, OM_E_PERMISSION_DENIED, "%s", why);
}

/* The client admin of `client` (PART-05's test: its own SUPER_ADMIN or
 * ACCOUNT_PERMISSIONS member, not partner-linked). */
static int require_client_admin(rpc_ctx *ctx, pg_conn *c, uint64_t client) {
    bool ok = false;
    int why = 0;
    int rc = pa_client_admin(ctx, c, client, &ok, &why);
    if (rc != 0) return pa_fail(ctx, rc, "membership");
    if (ok) return 0;
    if (why == OM_E_PARTNER_IDENTITY_FORBIDDEN)
        return rpc_fail(ctx, why, "a partner-linked member of the client acts for a partner, not for the client");
    return refuse(ctx, c, 0, client, rpc_sprintf(ctx, "account %" PRIu64, client),
                  "only SUPER_ADMIN or ACCOUNT_PERMISSIONS members of the client may do this");
}

/* ---- PART-17: ExtendPartnerGrant ---------------------------------------------------------- */

typedef struct extend_op {
    char id[40];
    int64_t new_end_us; /* 0: + add_days */
    int add_days;
} extend_op;

static int apply_extend(mutation *mu, pg_conn *tx) {
    extend_op *op = mu->op;
    ps_assignment a;
    int rc = ps_asg_get(tx, op->id, true, &mu->mem, &a);
    if (rc != 0) return rc;
    if (a.state != PART_ST_ACTIVE || a.grant_end_us == 0)
        return op_fail(mu->oc, OM_E_GRANT_NOT_ACTIVE, "only an active grant with an end can be extended");
    int64_t end = op->new_end_us != 0 ? op->new_end_us : a.grant_end_us + (int64_t)op->add_days * 86400 * 1000000;
    /* PART-17: later than the current end, at most now + the maximum duration */
    if (part_rule_extend(a.grant_end_us, end, a.now_us, partners_cfg.grant_max_days) != 0)
        return op_fail(mu->oc, OM_E_INVALID_ARGUMENT,
                       "the new end must be after the current one and at most %d days from now",
                       partners_cfg.grant_max_days);
    if ((rc = ps_grant_extend(tx, &a, end, 0, &mu->mem)) != 0) return rc;
    if ((rc = pa_emit(tx, &mu->mem, &mu->who, PA_EV_GRANT_EXTENDED, &a, false)) != 0) return rc;
    ((PB(ExtendPartnerGrantResponse) *)mu->resp)->assignment = pa_assignment_pb(&mu->mem, &a);
    return 0;
}

/* ExtendPartnerGrant — PART-17: the client's admin; a partner manager only where configured. */
int pa_h_extend(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp) {
    const PB(ExtendPartnerGrantRequest) *req = (const void *)req_;
    if (req->assignment_id[0] == '\0') rpc_violation(ctx, "assignment_id", "must be set");
    extend_op op = {0};
    if (req->grant_end_time != NULL) {
        if (req->extend_days != 0) rpc_violation(ctx, "extend_days", "must not be set with grant_end_time");
        op.new_end_us = pa_ts_us(req->grant_end_time);
        if (op.new_end_us <= 0) rpc_violation(ctx, "grant_end_time", "is not a valid time");
    } else if (req->extend_days < 1 || req->extend_days > PART_GRANT_MAX_DAYS) {
        rpc_violation(ctx, "extend_days", "must be 1..%d when grant_end_time is not set", PART_GRANT_MAX_DAYS);
    }
    op.add_days = req->extend_days;
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    pg_conn *c = op_db(ctx);
    if (c == NULL) return OM_E_UNAVAILABLE;
    ps_mem m = pa_call_mem(ctx);
    ps_assignment a;
    int rc = ps_asg_get(c, req->assignment_id, false, &m, &a);
    if (rc == OM_E_NOT_FOUND) return rpc_fail(ctx, rc, "assignment %s does not exist", req->assignment_id);
    if (rc != 0) return pa_fail(ctx, rc, "assignment");
    snprintf(op.id, sizeof op.id, "%s", a.id);
    bool ok = false;
    int why = 0;
    if ((rc = pa_client_admin(ctx, c, a.client_hub_id, &ok, &why)) != 0) return pa_fail(ctx, rc, "membership");
    if (!ok) {
        bool manager = false;
        if ((rc = pa_manager_ok(ctx, c, a.partner_hub_id, &manager)) != 0) return pa_fail(ctx, rc, "membership");
        ok = part_rule_extender(false, manager, partners_cfg.partner_extends) == 0; /* PART-17 */
        if (manager && !ok)
            return rpc_fail(ctx, OM_E_PERMISSION_DENIED,
                            "only the client's admins may extend a grant here (ORGMESH_PARTNERS_GRANT_PARTNER_EXTENDS)");
        if (!ok && why == OM_E_PARTNER_IDENTITY_FORBIDDEN) /* PART-08: they act for the partner */
            return rpc_fail(ctx, why, "a partner-linked member of the client acts for a partner, not for the client");
    }
    if (!ok)
        return refuse(ctx, c, a.partner_hub_id, a.client_hub_id,
                      rpc_sprintf(ctx, "assignment %s", req->assignment_id),
                      "only the client's admins (or, where configured, the partner's managers) may extend a grant");
    mutation mu = {.ctx = ctx, .apply = apply_extend, .op = &op, .request_id = req->request_id};
    return op_run(ctx, &pa_mutation_def, req_, resp, &mu);
}

/* ---- PART-20: the client's kill switch ---------------------------------------------------- */

typedef struct kill_op {
    const PB(RevokePartnerAccessRequest) *req;
    char (*revoked_ids)[40];
    int n_revoked;
} kill_op;

static int apply_kill(mutation *mu, pg_conn *tx) {
    kill_op *op = mu->op;
    const PB(RevokePartnerAccessRequest) *req = op->req;
    PB(RevokePartnerAccessResponse) *resp = (void *)mu->resp;
    ps_mem *m = &mu->mem;
    bool blocked = false;
    /* PART-20: the client's lock, exclusive: every assignment that committed
     * before is read below; every later one finds the block and fails */
    int rc = ps_block_check(tx, req->client_hub_id, req->partner_hub_id, true, &blocked);
    if (rc == 0) rc = ps_block_put(tx, req->client_hub_id, req->partner_hub_id, pa_caller_id(mu->ctx), req->reason);
    char(*ids)[40] = NULL;
    int n = 0;
    if (rc == 0) rc = ps_asg_open_ids_of_client_partner(tx, req->client_hub_id, req->partner_hub_id, m, &ids, &n);
    if (rc != 0) return rc;
    op->revoked_ids = m->alloc(m->ud, sizeof *op->revoked_ids * (size_t)(n + 1));
    op->n_revoked = 0;
    uint64_t *partners = m->alloc(m->ud, sizeof *partners * (size_t)(n + 1));
    int n_partners = 0;
    if (req->partner_hub_id != 0) partners[n_partners++] = req->partner_hub_id;
    for (int i = 0; i < n; i++) {
        ps_assignment a;
        bool revoked = false;
        if ((rc = ps_asg_get(tx, ids[i], true, m, &a)) != 0) return rc;
        int before = a.state;
        /* PART-09's path: PENDING -> CANCELLED, ACTIVE -> REVOKED and the
         * partner-linked membership removed by the link sync */
        if ((rc = pa_end_assignment(tx, m, &mu->who, &a, PART_CAUSE_KILL_SWITCH, req->reason, &revoked)) != 0)
            return rc;
        if (before == PART_ST_PENDING) resp->cancelled_request_count++;
        if (revoked) {
            resp->revoked_assignment_count++;
            snprintf(op->revoked_ids[op->n_revoked++], 40, "%s", a.id);
        }
        int k = 0;
        while (k < n_partners && partners[k] != a.partner_hub_id) k++;
        if (k == n_partners) partners[n_partners++] = a.partner_hub_id;
    }
    return pa_emit_kill_switch(tx, m, &mu->who, req->client_hub_id, req->partner_hub_id, partners, n_partners,
                               resp->cancelled_request_count, resp->revoked_assignment_count, req->reason);
}

/* RevokePartnerAccess — PART-20: a client admin cuts off every partner, or one partner, in one call. */
int pa_h_revoke_partner_access(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp) {
    const PB(RevokePartnerAccessRequest) *req = (const void *)req_;
    op_check_id(ctx, "client_hub_id", req->client_hub_id);
    if (req->partner_hub_id != 0) op_check_id(ctx, "partner_hub_id", req->partner_hub_id);
    if (req->partner_hub_id != 0 && req->partner_hub_id == req->client_hub_id)
        rpc_violation(ctx, "partner_hub_id", "must not be the client itself");
    pa_check_text(ctx, "reason", req->reason, MAX_REASON_CHARS);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    if (part_rule_confirmation(req->confirmation) != 0) { /* as PART-07 */
        rpc_violation(ctx, "confirmation", "must be exactly REMOVE");
        return rpc_fail(ctx, OM_E_CONFIRMATION_REQUIRED, "type REMOVE to confirm");
    }
    pg_conn *c = op_db(ctx);
    if (c == NULL) return OM_E_UNAVAILABLE;
    int rc = require_client_admin(ctx, c, req->client_hub_id);
    if (rc != 0) return rc;
    if (req->validate_only) { /* AIP-163: what the switch would end, nothing changed */
        PB(RevokePartnerAccessResponse) *r = (void *)resp;
        ps_mem m = pa_call_mem(ctx);
        char(*ids)[40] = NULL;
        int n = 0;
        if ((rc = ps_asg_open_ids_of_client_partner(c, req->client_hub_id, req->partner_hub_id, &m, &ids, &n)) != 0)
            return pa_fail(ctx, rc, "assignments");
        for (int i = 0; i < n; i++) {
            ps_assignment a;
            if (ps_asg_get(c, ids[i], false, &m, &a) != 0) continue;
            if (a.state == PART_ST_PENDING) r->cancelled_request_count++;
            if (a.state == PART_ST_ACTIVE) r->revoked_assignment_count++;
        }
        return 0;
    }
    kill_op op = {.req = req};
    mutation mu = {.ctx = ctx, .apply = apply_kill, .op = &op, .request_id = req->request_id};
    if ((rc = op_run(ctx, &pa_mutation_def, req_, resp, &mu)) != 0) return rc;
    if (!mu.replayed)
        for (int i = 0; i < op.n_revoked; i++) pa_sync_after(c, op.revoked_ids[i]); /* PART-09: memberships go now */
    return 0;
}

typedef struct restore_op {
    const PB(RestorePartnerAccessRequest) *req;
} restore_op;

static int apply_restore(mutation *mu, pg_conn *tx) {
    restore_op *op = mu->op;
    bool deleted = false, blocked = false;
    int rc = ps_block_check(tx, op->req->client_hub_id, op->req->partner_hub_id, true, &blocked);
    if (rc == 0) rc = ps_block_delete(tx, op->req->client_hub_id, op->req->partner_hub_id, &deleted);
    if (rc == 0 && deleted) rc = pa_audit_restore(tx, &mu->mem, &mu->who, op->req->client_hub_id, op->req->partner_hub_id);
    ((PB(RestorePartnerAccessResponse) *)mu->resp)->restored = deleted;
    return rc;
}

/* RestorePartnerAccess — PART-20: lifts the kill switch's block (client admin). */
int pa_h_restore_partner_access(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp) {
    const PB(RestorePartnerAccessRequest) *req = (const void *)req_;
    op_check_id(ctx, "client_hub_id", req->client_hub_id);
    if (req->partner_hub_id != 0) op_check_id(ctx, "partner_hub_id", req->partner_hub_id);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    pg_conn *c = op_db(ctx);
    if (c == NULL) return OM_E_UNAVAILABLE;
    int rc = require_client_admin(ctx, c, req->client_hub_id);
    if (rc != 0) return rc;
    restore_op op = {.req = req};
    mutation mu = {.ctx = ctx, .apply = apply_restore, .op = &op, .request_id = req->request_id};
    return op_run(ctx, &pa_mutation_def, req_, resp, &mu);
}

/* ---- PART-21: the client's view -------------------------------------------------------------- */

/* ListClientGrants — PART-21: every PENDING and ACTIVE partner grant on the account, keyset paged; client admins. */
int pa_h_list_client_grants(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_) {
    const PB(ListClientGrantsRequest) *req = (const void *)req_;
    PB(ListClientGrantsResponse) *resp = (void *)resp_;
    op_check_id(ctx, "client_hub_id", req->client_hub_id);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    page_req pg;
    const char *scope = rpc_sprintf(ctx, "partners.ListClientGrants|%" PRIu64, req->client_hub_id);
    int rc = page_open(ctx, req->page_size, req->page_token, scope, 2, &pg);
    if (rc != 0) return rc;
    pg_conn *c = op_db(ctx);
    if (c == NULL) return OM_E_UNAVAILABLE;
    if ((rc = require_client_admin(ctx, c, req->client_hub_id)) != 0) return rc;
    ps_mem m = pa_call_mem(ctx);
    int cap = pg.limit + 1, n = 0;
    ps_assignment *list = rpc_calloc(ctx, (size_t)cap, sizeof *list);
    uint64_t *k1 = rpc_calloc(ctx, (size_t)cap, sizeof *k1), *k2 = rpc_calloc(ctx, (size_t)cap, sizeof *k2);
    rc = ps_grant_client_list(c, req->client_hub_id, pg.more, pg.k1, pg.k2, cap, &m, list, k1, k2, &n);
    if (rc != 0) return pa_fail(ctx, rc, "grants");
    bool more = page_trim(&pg, &n);
    resp->grants = rpc_calloc(ctx, (size_t)n + 1, sizeof *resp->grants);
    for (int i = 0; i < n; i++) resp->grants[i] = pa_assignment_pb(&m, &list[i]);
    resp->n_grants = (size_t)n;
    resp->next_page_token = page_next(ctx, &pg, more, n > 0 ? k1[n - 1] : 0, n > 0 ? k2[n - 1] : 0);
    return 0;
}

/* ---- PART-19: the dormant report ------------------------------------------------------------- */

/* ListDormantGrants — PART-19: grants about to become dormant, of a partner (its managers) or on a client (its admins). */
int pa_h_list_dormant(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_) {
    const PB(ListDormantGrantsRequest) *req = (const void *)req_;
    PB(ListDormantGrantsResponse) *resp = (void *)resp_;
    if ((req->partner_hub_id == 0) == (req->client_hub_id == 0))
        rpc_violation(ctx, "partner_hub_id", "exactly one of partner_hub_id and client_hub_id is required");
    if (req->partner_hub_id != 0) op_check_id(ctx, "partner_hub_id", req->partner_hub_id);
    if (req->client_hub_id != 0) op_check_id(ctx, "client_hub_id", req->client_hub_id);
    if (req->within_days < 0 || req->within_days > PART_GRANT_MAX_DAYS)
        rpc_violation(ctx, "within_days", "must be 0..%d", PART_GRANT_MAX_DAYS);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    pa_lpage pg;
    const char *scope = rpc_sprintf(ctx, "partners.ListDormantGrants|%" PRIu64 "|%" PRIu64 "|%d", req->partner_hub_id,
                                    req->client_hub_id, req->within_days);
    int rc = pa_lpage_open(ctx, req->page_size, req->page_token, scope, &pg);
    if (rc != 0) return rc;
    pg_conn *c = op_db(ctx);
    if (c == NULL) return OM_E_UNAVAILABLE;
    if (req->partner_hub_id != 0)
        rc = pa_require_manager(ctx, c, req->partner_hub_id, NULL, NULL);
    else
        rc = require_client_admin(ctx, c, req->client_hub_id);
    if (rc != 0) return rc;
    resp->next_page_token = rpc_strdup(ctx, "");
    if (partners_cfg.dormant_days == 0) return 0; /* PART-19 is off */
    ps_mem m = pa_call_mem(ctx);
    ps_assignment *list = rpc_calloc(ctx, (size_t)pg.limit, sizeof *list);
    int64_t *at = rpc_calloc(ctx, (size_t)pg.limit, sizeof *at);
    int n = 0;
    rc = ps_grant_dormant_list(c, req->partner_hub_id, req->client_hub_id, partners_cfg.dormant_days,
                               req->within_days ? req->within_days : 14, pg.offset, pg.limit, &m, list, at, &n);
    if (rc != 0) return pa_fail(ctx, rc, "grants");
    resp->grants = rpc_calloc(ctx, (size_t)n + 1, sizeof *resp->grants);
    for (int i = 0; i < n; i++) {
        PB(DormantGrant) *d = rpc_alloc(ctx, sizeof *d);
        orgmesh__partners__v1__dormant_grant__init(d);
        d->assignment = pa_assignment_pb(&m, &list[i]);
        d->dormant_time = pa_ts(&m, at[i]);
        resp->grants[i] = d;
    }
    resp->n_grants = (size_t)n;
    resp->next_page_token = pa_lpage_next(ctx, &pg, n);
    return 0;
}


/* ---- the timer's round: PART-15, PART-16, PART-19 ------------------------------------------- */

typedef struct round_ctx {
    ps_mem *m;
    int limit, done;
    char (*sync)[40]; /* assignments whose membership goes after commit */
    int n_sync;
} round_ctx;

static int cmp_int(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }

/* PART-16: each configured threshold once per grant and end, the nearest
 * first (a grant that is already within 7 days gets the 7-day notice, and
 * the 30-day one is then past and never sent). */
static int notices_tx(pg_conn *tx, void *arg) {
    round_ctx *r = arg;
    int days[PART_MAX_NOTICES];
    int nd = partners_cfg.n_notice_days;
    memcpy(days, partners_cfg.notice_days, sizeof days);
    qsort(days, (size_t)nd, sizeof *days, cmp_int);
    pa_who w = {.rule = "PART-16"};
    char ids[64][40];
    int rc = 0;
    r->done = 0;
    for (int d = 0; rc == 0 && d < nd; d++) {
        int n = 0;
        rc = ps_grant_claim_notices(tx, days[d], days, nd, r->limit, ids, &n);
        for (int i = 0; rc == 0 && i < n; i++) {
            ps_assignment a;
            if ((rc = ps_asg_get(tx, ids[i], false, r->m, &a)) != 0) break;
            /* the days actually left (a 10-day grant is within the 30-day
             * threshold at once: its notice says 10) */
            const int64_t day = 86400LL * 1000000;
            int left = (int)((a.grant_end_us - a.now_us + day - 1) / day);
            rc = pa_emit_grant(tx, r->m, &w, PA_EV_GRANT_ENDING, &a, false, left > 0 ? left : 1, 0);
            r->done++;
        }
    }
    return rc;
}

/* PART-15/PART-16: at the end, auto-extend (never with SUPER_ADMIN) or
 * EXPIRED with the membership removed as PART-09 removes it. */
static int ends_tx(pg_conn *tx, void *arg) {
    round_ctx *r = arg;
    char ids[64][40];
    int n = 0;
    r->done = 0;
    r->n_sync = 0;
    int rc = ps_grant_ended_due(tx, r->limit, ids, &n);
    for (int i = 0; rc == 0 && i < n; i++) {
        ps_assignment a;
        if ((rc = ps_asg_get(tx, ids[i], true, r->m, &a)) != 0) break;
        if (a.state != PART_ST_ACTIVE || a.grant_end_us == 0 || a.grant_end_us > a.now_us) continue;
        if (part_rule_auto_extend(a.auto_extend, a.link_roles)) { /* PART-15 */
            pa_who w = {.rule = "PART-15"};
            if ((rc = ps_grant_extend(tx, &a, 0, partners_cfg.grant_extend_days, r->m)) != 0) break;
            rc = pa_emit(tx, r->m, &w, PA_EV_GRANT_EXTENDED, &a, false);
        } else { /* PART-16 */
            pa_who w = {.rule = "PART-16"};
            a.state = PART_ST_EXPIRED;
            a.cause = PART_CAUSE_GRANT_ENDED;
            a.end_actor = "rule:PART-16";
            a.link_sync = true; /* the unlink of PART-09, by the link sync */
            if ((rc = ps_asg_save(tx, &a, r->m)) != 0) break;
            rc = pa_emit(tx, r->m, &w, PA_EV_GRANT_EXPIRED, &a, false);
            snprintf(r->sync[r->n_sync++], 40, "%s", a.id);
        }
        r->done++;
    }
    return rc;
}

/* PART-19: the notice after N days without activity, the revocation after
 * the grace period (activity meanwhile cancels it). */
static int dormant_tx(pg_conn *tx, void *arg) {
    round_ctx *r = arg;
    char ids[64][40];
    int n = 0;
    r->done = 0;
    r->n_sync = 0;
    pa_who w = {.rule = "PART-19"};
    int rc = ps_grant_claim_dormant(tx, partners_cfg.dormant_days, r->limit, ids, &n);
    for (int i = 0; rc == 0 && i < n; i++) {
        ps_assignment a;
        if ((rc = ps_asg_get(tx, ids[i], false, r->m, &a)) != 0) break;
        int64_t revoke = a.dormant_notice_us + (int64_t)partners_cfg.dormant_grace_days * 86400 * 1000000;
        rc = pa_emit_grant(tx, r->m, &w, PA_EV_GRANT_DORMANT, &a, false, 0, revoke);
        r->done++;
    }
    if (rc == 0) rc = ps_grant_dormant_due(tx, partners_cfg.dormant_grace_days, r->limit, ids, &n);
    for (int i = 0; rc == 0 && i < n; i++) {
        ps_assignment a;
        bool revoked = false;
        if ((rc = ps_asg_get(tx, ids[i], true, r->m, &a)) != 0) break;
        if ((rc = pa_end_assignment(tx, r->m, &w, &a, PART_CAUSE_DORMANT, NULL, &revoked)) != 0) break;
        if (revoked) snprintf(r->sync[r->n_sync++], 40, "%s", a.id);
        r->done++;
    }
    return rc;
}

int pa_grant_round(pg_conn *c, int limit) {
    om_arena ar = {0};
    ps_mem m = om_arena_mem(&ar);
    char sync[64][40];
    round_ctx r = {.m = &m, .limit = limit > 64 ? 64 : limit, .sync = sync};
    int total = 0;
    if (partners_cfg.n_notice_days > 0 && pg_tx(c, notices_tx, &r) == 0) total += r.done;
    if (pg_tx(c, ends_tx, &r) == 0) {
        total += r.done;
        for (int i = 0; i < r.n_sync; i++) pa_link_sync(c, sync[i]); /* else the sync round does it */
    }
    if (partners_cfg.dormant_days > 0 && pg_tx(c, dormant_tx, &r) == 0) {
        total += r.done;
        for (int i = 0; i < r.n_sync; i++) pa_link_sync(c, sync[i]);
    }
    om_arena_free(&ar);
    return total;
}

/* ---- PART-22: a failed or bounced access-request email ------------------------------------- */

int pa_on_notifier_event(pg_conn *tx, const evt_event *ev, void *arg) {
    (void)arg;
    if (strcmp(ev->type, "orgmesh.notifier.v1.EmailDeadLettered") != 0) return 0;
    Orgmesh__Notifier__V1__EmailDeadLettered *m =
        orgmesh__notifier__v1__email_dead_lettered__unpack(NULL, ev->payload_len, ev->payload);
    if (m == NULL) return 0; /* malformed: nothing to act on */
    int rc = 0;
    const Orgmesh__Notifier__V1__DeadLetter *dl = m->dead_letter;
    if (dl != NULL && dl->event_id != NULL && dl->event_id[0] != '\0' &&
        (strcmp(dl->event_type, "orgmesh.partners.v1.AccessRequested") == 0 ||
         strcmp(dl->event_type, "orgmesh.partners.v1.AccessRequestResent") == 0)) {
        bool marked = false;
        rc = ps_asg_send_failed(tx, dl->event_id, &marked);
        if (rc == 0 && marked)
            log_info("access-request email of event %s to user %" PRIu64 " was given up: resend allowed at once",
                     dl->event_id, dl->recipient_user_id);
    }
    protobuf_c_message_free_unpacked(&m->base, NULL);
    return rc;
}
