/* partners_events.c — the partners service's side of the accounts service:
 * local copies of accounts, users and memberships (fed by accounts' events,
 * fetched through AccountsInternalService when missing), the consumer of
 * those events (PART-05 direct add, PART-08 client removal, PART-09
 * cascade), the link sync that keeps partner_link in accounts in step with
 * each assignment, and the PART-05 expiry round.
 *
 * Consistency: an accounts change and a partners change are never one
 * transaction. The state change is committed here first together with the
 * intent (assignment.link_sync); the accounts call follows with the row
 * locked, is idempotent (request_id "link:<id>:<gen>"), and clears the intent
 * when it succeeded. A crash in between leaves the intent, which the sync
 * round finishes. Events from accounts reconcile the rest: a membership that
 * carries the link of an assignment that is no longer ACTIVE is unlinked. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "app.h"
#include "copies.h"
#include "ctoken.h"
#include "log.h"
#include "om_err.h"
#include "orgmesh/accounts/v1/events.pb-c.h"
#include "partners.h"

#define ACC(x) Orgmesh__Accounts__V1__##x

/* ---- calls to accounts ------------------------------------------------------- */

/* Through common/copies: within ctx's deadline (ctx NULL: a background
 * round, 5 s), with the service token. */
int pa_accounts_call(rpc_ctx *ctx, const char *method, const ProtobufCMessage *req,
                     const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp, rpc_status *st) {
    char path[128];
    snprintf(path, sizeof path, "/orgmesh.accounts.v1.AccountsInternalService/%s", method);
    return copies_call(ctx, path, req, resp_desc, resp, st);
}

void pa_membership_from_pb(const ACC(Membership) *p, ps_membership *out) {
    memset(out, 0, sizeof *out);
    out->hub_id = p->hub_id;
    out->user_id = p->user_id;
    out->present = true;
    out->roles = copies_bits((const int *)p->roles, p->n_roles);
    out->partner_employee = p->partner_employee;
    out->link_assignment_id = "";
    if (p->partner_link != NULL) {
        out->link_partner_hub_id = p->partner_link->partner_hub_id;
        out->link_assignment_id = p->partner_link->assignment_id ? p->partner_link->assignment_id : "";
    }
    out->version = p->version;
}

static void account_from_pb(const ACC(Account) *p, ps_account *out) {
    memset(out, 0, sizeof *out);
    out->hub_id = p->hub_id;
    out->kind = (int)p->kind;
    out->name = p->name ? p->name : "";
    out->mrr_currency = "";
    if (p->mrr != NULL) {
        out->mrr_minor = p->mrr->amount_minor;
        out->mrr_currency = p->mrr->currency_code ? p->mrr->currency_code : "";
    }
    out->version = p->version;
}

static void user_from_pb(const ACC(User) *p, ps_user *out) {
    memset(out, 0, sizeof *out);
    out->user_id = p->user_id;
    out->email = p->email ? p->email : "";
    out->display_name = p->display_name ? p->display_name : "";
    out->version = p->version;
}

/* ---- local copies, fetched when missing (SPEC 2) ----------------------------------- */

typedef struct put_arg {
    pg_conn *c;
    bool found;
} put_arg;

static int put_account(const CopiesAccount *p, void *arg) {
    put_arg *pa = arg;
    ps_account a;
    account_from_pb(p, &a);
    pa->found = true;
    return ps_account_put(pa->c, &a, NULL);
}

static int put_user(const CopiesUser *p, void *arg) {
    put_arg *pa = arg;
    ps_user u;
    user_from_pb(p, &u);
    pa->found = true;
    return ps_user_put(pa->c, &u, NULL);
}

int pa_ensure_account(rpc_ctx *ctx, pg_conn *c, uint64_t hub_id, ps_mem *m, ps_account *out) {
    int rc = ps_account_get(c, hub_id, m, out);
    if (rc != OM_E_NOT_FOUND) return rc;
    put_arg a = {.c = c};
    /* a failed fetch: UNAVAILABLE or NOT_FOUND (copies.h) */
    if ((rc = copies_fetch_accounts(ctx, &hub_id, 1, put_account, &a)) != 0) return rc;
    return a.found ? ps_account_get(c, hub_id, m, out) : OM_E_NOT_FOUND;
}

int pa_ensure_user(rpc_ctx *ctx, pg_conn *c, uint64_t user_id, ps_mem *m, ps_user *out) {
    int rc = ps_user_get(c, user_id, m, out);
    if (rc != OM_E_NOT_FOUND) return rc;
    put_arg a = {.c = c};
    if ((rc = copies_fetch_users(ctx, &user_id, 1, put_user, &a)) != 0) return rc;
    return a.found ? ps_user_get(c, user_id, m, out) : OM_E_NOT_FOUND;
}

int pa_refresh_membership(rpc_ctx *ctx, pg_conn *c, uint64_t hub_id, uint64_t user_id, ps_mem *m, ps_membership *out) {
    ACC(ListMembershipsInternalRequest) req;
    orgmesh__accounts__v1__list_memberships_internal_request__init(&req);
    req.hub_id = hub_id;
    req.user_id = user_id;
    req.page_size = 10;
    ProtobufCMessage *resp = NULL;
    int rc = pa_accounts_call(ctx, "ListMembershipsInternal", &req.base,
                              &orgmesh__accounts__v1__list_memberships_internal_response__descriptor, &resp, NULL);
    if (rc != 0) return OM_E_UNAVAILABLE;
    const ACC(ListMembershipsInternalResponse) *r = (const void *)resp;
    bool found = false;
    for (size_t i = 0; rc == 0 && i < r->n_memberships; i++) {
        if (r->memberships[i]->hub_id != hub_id || r->memberships[i]->user_id != user_id) continue;
        ps_membership mb;
        pa_membership_from_pb(r->memberships[i], &mb);
        rc = ps_membership_put(c, &mb, NULL);
        found = true;
    }
    protobuf_c_message_free_unpacked(resp, NULL);
    if (rc != 0) return rc;
    if (!found) {
        /* Not a member now: remember it (a tombstone at the version we know,
         * so any later event, newer by construction, still applies). */
        ps_membership cur;
        rc = ps_membership_get(c, hub_id, user_id, 0, m, &cur);
        if (rc == OM_E_NOT_FOUND) {
            ps_membership t = {.hub_id = hub_id, .user_id = user_id, .present = false, .link_assignment_id = "",
                               .version = 0};
            rc = ps_membership_put(c, &t, NULL);
        } else if (rc == 0 && cur.present) {
            cur.present = false;
            cur.version = cur.version; /* same version: guarded below */
            pg_params p = {0};
            pg_p_u64(&p, hub_id);
            pg_p_u64(&p, user_id);
            pg_p_i64(&p, cur.version);
            rc = pg_exec(c,
                         "UPDATE membership_copies SET present = false WHERE hub_id = $1 AND user_id = $2"
                         " AND version = $3",
                         &p, NULL);
        }
        if (rc != 0) return rc;
    }
    return ps_membership_get(c, hub_id, user_id, 0, m, out);
}

int pa_ensure_membership(rpc_ctx *ctx, pg_conn *c, uint64_t hub_id, uint64_t user_id, ps_mem *m, ps_membership *out) {
    int rc = ps_membership_get(c, hub_id, user_id, 0, m, out);
    if (rc != OM_E_NOT_FOUND) return rc;
    return pa_refresh_membership(ctx, c, hub_id, user_id, m, out);
}

/* ---- the link sync ---------------------------------------------------------------------- */

typedef struct sync_ctx {
    const char *id;
    ps_mem *m;
} sync_ctx;

/* Errors worth retrying later; anything else is final (logged, given up). */
static bool transient(int rc) {
    return rc == OM_E_UNAVAILABLE || rc == OM_E_DEADLINE_EXCEEDED || rc == OM_E_INTERNAL || rc == OM_E_CANCELLED ||
           rc == OM_E_CONCURRENT_MODIFICATION || rc == OM_E_NOMEM;
}

static const char *cause_rule(int cause) {
    switch (cause) {
    case PART_CAUSE_REMOVED_BY_PARTNER:
    case PART_CAUSE_CANCELLED_BY_PARTNER:
        return "PART-07";
    case PART_CAUSE_EMPLOYEE_UNTAGGED:
    case PART_CAUSE_EMPLOYEE_LEFT_PARTNER:
        return "PART-09";
    case PART_CAUSE_REMOVED_BY_CLIENT:
        return "PART-08";
    case PART_CAUSE_GRANT_ENDED:
        return "PART-16";
    case PART_CAUSE_DORMANT:
        return "PART-19";
    case PART_CAUSE_KILL_SWITCH:
        return "PART-20";
    default:
        return "PART-05";
    }
}

static int link_sync_tx(pg_conn *tx, void *arg) {
    sync_ctx *s = arg;
    ps_assignment a;
    int rc = ps_asg_get(tx, s->id, true, s->m, &a);
    if (rc != 0) return rc == OM_E_NOT_FOUND ? 0 : rc;
    if (!a.link_sync) return 0; /* done by someone else meanwhile */
    char request_id[96];
    rpc_status st;
    ProtobufCMessage *out = NULL;
    bool removed = false;
    if (a.state == PART_ST_ACTIVE) {
        /* PART-04/05: the membership carries partner_link */
        ACC(AddPartnerLinkedMembershipRequest) req;
        orgmesh__accounts__v1__add_partner_linked_membership_request__init(&req);
        ACC(Role) roles[4];
        req.hub_id = a.client_hub_id;
        req.user_id = a.employee_user_id;
        req.partner_hub_id = a.partner_hub_id;
        req.assignment_id = a.id;
        for (int v = 1; v <= 4; v++)
            if (a.link_roles & (1u << (v - 1))) roles[req.n_roles++] = (ACC(Role))v;
        req.roles = roles;
        req.adopt_existing_membership = a.link_adopt;
        req.on_behalf_of = strncmp(a.link_actor, "user:", 5) == 0 ? (char *)a.link_actor : "";
        snprintf(request_id, sizeof request_id, "link:%s:%d", a.id, a.link_gen);
        req.request_id = request_id;
        rc = pa_accounts_call(NULL, "AddPartnerLinkedMembership", &req.base,
                              &orgmesh__accounts__v1__add_partner_linked_membership_response__descriptor, &out, &st);
        /* issue 18: the accounts commit, for the caller's consistency_token */
        if (rc == 0) ctoken_note_token(((const ACC(AddPartnerLinkedMembershipResponse) *)out)->consistency_token);
        if (rc == 0 && a.cause == PART_CAUSE_ALREADY_MEMBER &&
            !((const ACC(AddPartnerLinkedMembershipResponse) *)out)->already_member) {
            /* PART-04/05: "already a member" no longer held (the client removed
             * them meanwhile), so the call just created a membership the
             * client never granted: take it back and end the assignment. */
            protobuf_c_message_free_unpacked(out, NULL);
            out = NULL;
            log_warn("partners: assignment %s: the employee was no longer a member; revoking", a.id);
            a.state = PART_ST_REVOKED;
            a.cause = PART_CAUSE_REMOVED_BY_CLIENT;
            a.end_actor = "rule:PART-05";
            a.link_sync = true; /* the unlink below, or the next round, removes it */
            if ((rc = ps_asg_save(tx, &a, s->m)) != 0) return rc;
            return link_sync_tx(tx, arg);
        }
    } else {
        /* PART-07/08/09: the membership the link created goes; one that
         * predates it only loses the link */
        ACC(RemovePartnerLinkedMembershipRequest) req;
        orgmesh__accounts__v1__remove_partner_linked_membership_request__init(&req);
        req.hub_id = a.client_hub_id;
        req.user_id = a.employee_user_id;
        req.assignment_id = a.id;
        req.reason = (char *)cause_rule(a.cause);
        req.on_behalf_of = (strncmp(a.end_actor, "user:", 5) == 0 || strncmp(a.end_actor, "rule:", 5) == 0)
                               ? (char *)a.end_actor
                               : "";
        snprintf(request_id, sizeof request_id, "unlink:%s:%d", a.id, a.link_gen);
        req.request_id = request_id;
        rc = pa_accounts_call(NULL, "RemovePartnerLinkedMembership", &req.base,
                              &orgmesh__accounts__v1__remove_partner_linked_membership_response__descriptor, &out,
                              &st);
        if (rc == 0) {
            removed = ((const ACC(RemovePartnerLinkedMembershipResponse) *)out)->membership_removed;
            /* issue 18: the accounts commit, for the caller's consistency_token */
            ctoken_note_token(((const ACC(RemovePartnerLinkedMembershipResponse) *)out)->consistency_token);
        }
    }
    if (out != NULL) protobuf_c_message_free_unpacked(out, NULL);
    if (rc != 0 && transient(rc)) return rc;
    if (rc != 0)
        log_warn("partners: accounts refused the link change of assignment %s (%s: %s); giving up", a.id,
                 om_err_name(rc), st.message);
    if ((rc = ps_asg_link_done(tx, a.id, removed)) != 0) return rc;
    if (a.state == PART_ST_REVOKED) {
        bool first = false;
        if ((rc = ps_asg_claim_revoke_event(tx, a.id, &first)) != 0) return rc;
        if (first) {
            om_actor buf;
            pa_who w;
            pa_who_parse(a.end_actor, &buf, &w);
            if ((rc = ps_asg_get(tx, a.id, false, s->m, &a)) != 0) return rc;
            rc = pa_emit(tx, s->m, &w, PA_EV_REVOKED, &a, removed);
        }
    }
    return rc;
}

int pa_link_sync(pg_conn *c, const char *id) {
    om_arena ar = {0};
    ps_mem m = om_arena_mem(&ar);
    sync_ctx s = {id, &m};
    int rc = pg_tx(c, link_sync_tx, &s);
    om_arena_free(&ar);
    /* accounts unreachable: the sync round tries again a little later */
    if (rc != 0 && transient(rc)) ps_asg_sync_later(c, id, 5);
    return rc;
}

int pa_sync_round(pg_conn *c, int limit) {
    char ids[64][40];
    int n = 0;
    if (limit > 64) limit = 64;
    /* SKIP LOCKED: rows being synced by a handler or another replica are left to them */
    if (ps_asg_sync_due(c, limit, ids, &n) != 0) return -1;
    for (int i = 0; i < n; i++) pa_link_sync(c, ids[i]);
    return n;
}

typedef struct expire_ctx {
    int limit, done;
    ps_mem *m;
} expire_ctx;

static int expire_tx(pg_conn *tx, void *arg) {
    expire_ctx *e = arg;
    char ids[64][40];
    int n = 0;
    e->done = 0;
    /* PART-05: PENDING for longer than the request TTL, by the database
     * clock; SKIP LOCKED lets several replicas share the work */
    int rc = ps_asg_expired_due(tx, e->limit, ids, &n);
    pa_who w = {.rule = "PART-05"};
    for (int i = 0; rc == 0 && i < n; i++) {
        ps_assignment a;
        if ((rc = ps_asg_get(tx, ids[i], true, e->m, &a)) != 0) break;
        if (a.state != PART_ST_PENDING) continue;
        a.state = PART_ST_EXPIRED;
        a.cause = PART_CAUSE_EXPIRED;
        a.end_actor = "rule:PART-05";
        if ((rc = ps_asg_save(tx, &a, e->m)) != 0) break;
        if ((rc = pa_emit(tx, e->m, &w, PA_EV_EXPIRED, &a, false)) != 0) break;
        e->done++;
    }
    return rc;
}

int pa_expire_round(pg_conn *c, int limit) {
    om_arena ar = {0};
    ps_mem m = om_arena_mem(&ar);
    expire_ctx e = {.limit = limit > 64 ? 64 : limit, .m = &m};
    int rc = pg_tx(c, expire_tx, &e);
    om_arena_free(&ar);
    return rc != 0 ? -1 : e.done;
}

/* ---- the consumer of accounts events ------------------------------------------------------ */

/* The membership's link names an assignment that is not ACTIVE here: have
 * the sync unlink it (heals a link set by a call that lost a race). */
static int reconcile_link(pg_conn *tx, ps_mem *m, const ps_membership *mb) {
    if (mb->link_assignment_id == NULL || mb->link_assignment_id[0] == '\0') return 0;
    ps_assignment a;
    int rc = ps_asg_get(tx, mb->link_assignment_id, true, m, &a);
    if (rc == OM_E_NOT_FOUND) return 0;
    if (rc != 0) return rc;
    if (a.state == PART_ST_ACTIVE || a.link_sync) return 0;
    a.link_sync = true;
    return ps_asg_save(tx, &a, m);
}

static int on_membership_added(pg_conn *tx, ps_mem *m, const pa_who *w, const ACC(MembershipAdded) *e) {
    if (e->membership == NULL) return 0;
    ps_membership mb, before;
    pa_membership_from_pb(e->membership, &mb);
    int rc = ps_membership_get(tx, mb.hub_id, mb.user_id, 2, m, &before);
    if (rc != 0 && rc != OM_E_NOT_FOUND) return rc;
    bool applied = rc == OM_E_NOT_FOUND || before.version < mb.version;
    if (!applied) return 0;
    if ((rc = ps_membership_put(tx, &mb, NULL)) != 0) return rc;
    if (mb.link_assignment_id[0] != '\0') return reconcile_link(tx, m, &mb);
    if ((int)e->account_kind == PART_KIND_PARTNER) return 0;
    /* PART-05: the client added the employee itself while a request was pending */
    ps_assignment a;
    rc = ps_asg_get_open(tx, mb.hub_id, mb.user_id, true, m, &a);
    if (rc == OM_E_NOT_FOUND) return 0;
    if (rc != 0) return rc;
    if (a.state != PART_ST_PENDING) return 0;
    return pa_activate_by_client(tx, m, w, &a);
}

static int on_membership_changed(pg_conn *tx, ps_mem *m, const pa_who *w, const ACC(MembershipChanged) *e) {
    if (e->membership == NULL) return 0;
    ps_membership mb, before;
    pa_membership_from_pb(e->membership, &mb);
    int rc = ps_membership_get(tx, mb.hub_id, mb.user_id, 2, m, &before);
    if (rc != 0 && rc != OM_E_NOT_FOUND) return rc;
    bool known = rc == 0;
    if (known && before.version >= mb.version) return 0; /* older than what we hold */
    if ((rc = ps_membership_put(tx, &mb, NULL)) != 0) return rc;
    if ((int)e->account_kind == PART_KIND_PARTNER) {
        bool was = known ? before.partner_employee && before.present
                         : (e->previous != NULL && e->previous->partner_employee);
        if (was && !mb.partner_employee) {
            /* PART-09: untagged (by a call whose own commit may have been lost) */
            int cancelled, revoked;
            pa_who rule = {.rule = "PART-09", .trace_id = w->trace_id};
            return pa_cascade(tx, m, &rule, mb.hub_id, mb.user_id, PART_CAUSE_EMPLOYEE_UNTAGGED, &cancelled, &revoked);
        }
        if (!was && mb.partner_employee)
            return ps_tag_record(tx, mb.hub_id, mb.user_id, w->actor ? w->actor->user_id : 0);
        return 0;
    }
    return reconcile_link(tx, m, &mb);
}

static int on_membership_removed(pg_conn *tx, ps_mem *m, const pa_who *w, const ACC(MembershipRemoved) *e) {
    if (e->membership == NULL) return 0;
    ps_membership mb, before;
    pa_membership_from_pb(e->membership, &mb);
    mb.present = false;
    int rc = ps_membership_get(tx, mb.hub_id, mb.user_id, 2, m, &before);
    if (rc != 0 && rc != OM_E_NOT_FOUND) return rc;
    bool known = rc == 0;
    if (known && before.version > mb.version) return 0;
    if ((rc = ps_membership_put(tx, &mb, NULL)) != 0) return rc;
    if ((int)e->account_kind == PART_KIND_PARTNER) {
        /* PART-09: an employee left the partner account: everything ends */
        char(*ids)[40] = NULL;
        int n = 0;
        if ((rc = ps_asg_open_ids(tx, mb.hub_id, mb.user_id, m, &ids, &n)) != 0) return rc;
        bool tagged = e->membership->partner_employee || (known && before.partner_employee);
        if (n == 0 && !tagged) return 0;
        int cancelled, revoked;
        pa_who rule = {.rule = "PART-09", .trace_id = w->trace_id};
        return pa_cascade(tx, m, &rule, mb.hub_id, mb.user_id, PART_CAUSE_EMPLOYEE_LEFT_PARTNER, &cancelled, &revoked);
    }
    if (!e->partner_linked || e->membership->partner_link == NULL) return 0;
    if (e->cause == ORGMESH__ACCOUNTS__V1__MEMBERSHIP_REMOVAL_CAUSE__MEMBERSHIP_REMOVAL_CAUSE_PARTNER_ACCESS_ENDED)
        return 0; /* our own PART-07/PART-09 removal */
    ps_assignment a;
    rc = ps_asg_get(tx, e->membership->partner_link->assignment_id, true, m, &a);
    if (rc == OM_E_NOT_FOUND) return 0;
    if (rc != 0) return rc;
    if (a.state != PART_ST_ACTIVE) return 0;
    /* PART-08: the client removed the partner-linked membership: REVOKED */
    a.state = PART_ST_REVOKED;
    a.cause = e->cause == ORGMESH__ACCOUNTS__V1__MEMBERSHIP_REMOVAL_CAUSE__MEMBERSHIP_REMOVAL_CAUSE_ACCOUNT_DELETED
                  ? PART_CAUSE_CLIENT_ACCOUNT_DELETED
              : e->cause == ORGMESH__ACCOUNTS__V1__MEMBERSHIP_REMOVAL_CAUSE__MEMBERSHIP_REMOVAL_CAUSE_USER_DELETED
                  ? PART_CAUSE_EMPLOYEE_LEFT_PARTNER
                  : PART_CAUSE_REMOVED_BY_CLIENT;
    a.link_sync = false; /* the membership is gone already */
    a.membership_removed = true;
    a.end_actor = pa_who_string(w, m);
    a.answer_reason = e->reason ? e->reason : "";
    if ((rc = ps_asg_save(tx, &a, m)) != 0) return rc;
    bool first = false;
    if ((rc = ps_asg_claim_revoke_event(tx, a.id, &first)) != 0) return rc;
    return first ? pa_emit(tx, m, w, PA_EV_REVOKED, &a, true) : 0;
}

static int on_account_deleted(pg_conn *tx, ps_mem *m, const pa_who *w, const ACC(Account) *acc) {
    char(*ids)[40] = NULL;
    int n = 0;
    int rc = ps_asg_open_ids_of_client(tx, acc->hub_id, m, &ids, &n);
    pa_who rule = {.rule = "PART-09", .trace_id = w->trace_id};
    for (int i = 0; rc == 0 && i < n; i++) {
        ps_assignment a;
        bool revoked;
        if ((rc = ps_asg_get(tx, ids[i], true, m, &a)) != 0) break;
        rc = pa_end_assignment(tx, m, &rule, &a, PART_CAUSE_CLIENT_ACCOUNT_DELETED, NULL, &revoked);
    }
    return rc;
}

/* The accounts consumer's three kinds (SPEC 2, through common/copies). */
typedef struct pa_apply {
    ps_mem *m;
    pa_who w;
} pa_apply;

static int on_membership(pg_conn *tx, const copies_event *e, const CopiesMembership *mb, void *arg) {
    (void)mb;
    pa_apply *ap = arg;
    if (e->msg->descriptor == &orgmesh__accounts__v1__membership_added__descriptor)
        return on_membership_added(tx, ap->m, &ap->w, (const ACC(MembershipAdded) *)e->msg);
    if (e->msg->descriptor == &orgmesh__accounts__v1__membership_changed__descriptor)
        return on_membership_changed(tx, ap->m, &ap->w, (const ACC(MembershipChanged) *)e->msg);
    return on_membership_removed(tx, ap->m, &ap->w, (const ACC(MembershipRemoved) *)e->msg);
}

static int on_user(pg_conn *tx, const copies_event *e, const CopiesUser *pu, void *arg) {
    (void)arg;
    ps_user u;
    user_from_pb(pu, &u);
    u.deleted = e->deleted;
    return ps_user_put(tx, &u, NULL);
}

static int on_account(pg_conn *tx, const copies_event *e, const CopiesAccount *pa, void *arg) {
    pa_apply *ap = arg;
    ps_account a;
    bool current = false;
    account_from_pb(pa, &a);
    a.deleted = e->deleted;
    int rc = ps_account_put(tx, &a, &current);
    if (rc == 0 && a.deleted && current) rc = on_account_deleted(tx, ap->m, &ap->w, pa);
    return rc;
}

static const copies_sink accounts_sink = {.account = on_account, .user = on_user, .membership = on_membership};

int pa_on_accounts_event(pg_conn *tx, const evt_event *ev, void *arg) {
    (void)arg;
    om_arena ar = {0};
    ps_mem m = om_arena_mem(&ar);
    om_actor buf;
    pa_apply ap = {.m = &m};
    pa_who_parse(ev->actor, &buf, &ap.w);
    int rc = copies_apply_event(tx, ev, &accounts_sink, &ap);
    om_arena_free(&ar);
    return rc;
}
