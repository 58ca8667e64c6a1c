/* organizations_rpc.c — the handlers of orgmesh.organizations.v1.OrganizationsService
 * (SPEC 3). Small helpers first (validation, the local copies and their
 * fetching from the accounts service, the transaction runner, authorization),
 * then one handler per RPC with a line naming the rules it enforces. Rules
 * are in organizations_rules.c, SQL in organizations_store.c. Every rule is
 * checked against the local copies inside the transaction that writes. */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "app.h"
#include "audit.h"
#include "copies.h"
#include "history.h"
#include "config.h"
#include "google/rpc/error_details.pb-c.h"
#include "op.h"
#include "log.h"
#include "om_err.h"
#include "organizations.h"
#include "organizations_rpc.h"
#include "page.h"

#define APB(x) Orgmesh__Accounts__V1__##x
#define MAX_REASON_CHARS 1000
#define MAX_TEXT_VERSION 64
/* A positive code: the transaction found a local copy missing; the runner
 * fetches it from the accounts service and runs the transaction again. */
/* What a transaction may find missing (op_need); org_fetch brings it. */
#define NEED_ACCOUNTS 1u
#define NEED_MEMBERSHIPS 2u

static int64_t mfa_window_s = ORG_MFA_WINDOW_DEFAULT_S;
int64_t org_tombstone_retention_s = ORG_TOMBSTONE_RETENTION_DEFAULT_S;
int org_tombstone_purge_ms = 60000;

int organizations_init(void) {
    mfa_window_s = cfg_int("ORGMESH_MFA_WINDOW_S", ORG_MFA_WINDOW_DEFAULT_S, 1, 86400);
    /* ORG-13 */
    org_tombstone_retention_s = cfg_int("ORGMESH_ORG_TOMBSTONE_RETENTION_S", ORG_TOMBSTONE_RETENTION_DEFAULT_S, 1,
                                        10LL * 366 * 86400);
    org_tombstone_purge_ms = (int)cfg_int("ORGMESH_ORG_TOMBSTONE_PURGE_MS", 60000, 10, 3600000);
    if (app_peer("accounts") == NULL) log_warn("ORGMESH_ACCOUNTS_ADDR is not set: missing copies cannot be fetched");
    return 0;
}

/* ---- one call's state ------------------------------------------------------ */

typedef struct bad_account {
    uint64_t hub_id;
    unsigned reasons;
} bad_account;

/* ORG-02's refusals of one attempt (op_run's arg of CreateOrganization and
 * AddAccountsToOrganization): every (account, reasons), sent as a
 * PreconditionFailure when the call fails. */
typedef struct bad_list {
    bad_account bad[ORG_MAX_BATCH + 2];
    int n;
} bad_list;

/* "1, 2, 3" */
static void id_list(char *buf, size_t cap, const uint64_t *ids, int n) {
    size_t at = 0;
    buf[0] = '\0';
    for (int i = 0; i < n && at + 24 < cap; i++)
        at += (size_t)snprintf(buf + at, cap - at, "%s%" PRIu64, i ? ", " : "", ids[i]);
}

/* ---- validation ------------------------------------------------------------------ */

static void check_org_id(rpc_ctx *ctx, const char *s) {
    if (s == NULL || s[0] == '\0')
        rpc_violation(ctx, "organization_id", "must be set");
    else if (!org_uuid_valid(s))
        rpc_violation(ctx, "organization_id", "is not an organization id");
}

static void check_etag(rpc_ctx *ctx, const char *etag, bool required) {
    int64_t v;
    if (etag == NULL || etag[0] == '\0') {
        if (required) rpc_violation(ctx, "etag", "is required: the etag of the organization last read (ORG-11)");
    } else if (org_etag_decode(etag, &v) != 0) {
        rpc_violation(ctx, "etag", "is not an etag returned by this service");
    }
}

static void check_text(rpc_ctx *ctx, const char *field, const char *s, size_t max) {
    if (s != NULL && strlen(s) > max) rpc_violation(ctx, field, "must be at most %zu bytes", max);
}

/* The ids of a batch: each valid, none repeated (also not `other`). */
static void check_ids(rpc_ctx *ctx, const char *field, const uint64_t *ids, size_t n, uint64_t other,
                      const char *other_field) {
    for (size_t i = 0; i < n; i++) {
        char f[64];
        snprintf(f, sizeof f, "%s[%zu]", field, i);
        op_check_id(ctx, f, ids[i]);
        if (ids[i] != 0 && ids[i] == other)
            rpc_violation(ctx, f, "repeats %s", other_field);
        for (size_t j = 0; j < i; j++)
            if (ids[i] != 0 && ids[j] == ids[i]) {
                rpc_violation(ctx, f, "repeats account %" PRIu64, ids[i]);
                break;
            }
    }
}

static void check_ack_fields(rpc_ctx *ctx, const OPB(DataSharingAcknowledgement) *ack) {
    if (ack != NULL && ack->accepted && (ack->text_version == NULL || ack->text_version[0] == '\0'))
        rpc_violation(ctx, "acknowledgement.text_version", "must be set: the version of the text shown");
    if (ack != NULL) check_text(ctx, "acknowledgement.text_version", ack->text_version, MAX_TEXT_VERSION);
}

/* ORG-06 */
static int require_ack(rpc_ctx *ctx, const OPB(DataSharingAcknowledgement) *ack) {
    if (ack == NULL || !ack->accepted)
        return rpc_fail(ctx, OM_E_ACKNOWLEDGEMENT_REQUIRED,
                        "acknowledge that personal data will be shared between the accounts (ORG-06)");
    return 0;
}

static int require_user(rpc_ctx *ctx) {
    const om_actor *a = rpc_actor(ctx);
    if (a == NULL || a->user_id == 0)
        return rpc_fail(ctx, OM_E_PERMISSION_DENIED, "organizations are managed by users, not by services");
    return 0;
}

/* ---- the accounts service (SPEC 2: fill missing copies) ------------------------------- */

static int put_account(const CopiesAccount *pa, void *arg) {
    org_account a;
    org_account_from_pb(pa, &a);
    return store_account_upsert(arg, &a, NULL);
}

/* BatchGetAccounts for `ids`; the accounts found become local copies. */
static int fetch_accounts(rpc_ctx *ctx, pg_conn *c, const uint64_t *ids, int n) {
    return copies_fetch_accounts(ctx, ids, (size_t)n, put_account, c);
}

static int put_user(const CopiesUser *u, void *arg) {
    return store_user_upsert(arg, u->user_id, u->two_factor_enabled, false, u->version);
}

static int fetch_user(rpc_ctx *ctx, pg_conn *c, uint64_t user_id) {
    return copies_fetch_users(ctx, &user_id, 1, put_user, c);
}

/* What fetch_memberships collects: the user's hubs and roles, by hub_id. */
typedef struct memb_list {
    rpc_ctx *ctx;
    uint64_t user_id;
    bool want;
    uint64_t *hubs;
    unsigned *roles;
    int n, cap;
} memb_list;

static int put_membership(pg_conn *tx, const CopiesMembership *m, void *arg) {
    memb_list *l = arg;
    if (m->user_id != l->user_id) return 0;
    int rc = copies_membership_put(tx, m, false, m->version);
    if (rc != 0 || !l->want) return rc;
    if (l->n == l->cap) {
        int cap = l->cap ? l->cap * 2 : 64;
        uint64_t *h = rpc_calloc(l->ctx, (size_t)cap, sizeof *h);
        unsigned *r = rpc_calloc(l->ctx, (size_t)cap, sizeof *r);
        if (l->n) {
            memcpy(h, l->hubs, (size_t)l->n * sizeof *h);
            memcpy(r, l->roles, (size_t)l->n * sizeof *r);
        }
        l->hubs = h;
        l->roles = r;
        l->cap = cap;
    }
    l->hubs[l->n] = m->hub_id;
    l->roles[l->n++] = copies_bits((const int *)m->roles, m->n_roles);
    return 0;
}

/* Every membership of the user (ListMembershipsInternal), stored as copies;
 * with hubs/roles non-NULL also returned (call memory), ordered by hub_id. */
static int fetch_memberships(rpc_ctx *ctx, pg_conn *c, uint64_t user_id, uint64_t **hubs, unsigned **roles, int *n) {
    memb_list l = {.ctx = ctx, .user_id = user_id, .want = hubs != NULL};
    int rc = copies_fetch_memberships_internal(ctx, c, user_id, put_membership, NULL, &l);
    if (rc == 0 && hubs != NULL) {
        *hubs = l.hubs;
        *roles = l.roles;
        *n = l.n;
    }
    return rc == OM_E_NOT_FOUND ? OM_E_UNAVAILABLE : rc; /* as the call itself: UNAVAILABLE */
}

/* ---- reading the copies inside a transaction ------------------------------------------ */

static const org_account *find_account(const org_account *a, int n, uint64_t hub_id) {
    for (int i = 0; i < n; i++)
        if (a[i].hub_id == hub_id) return &a[i];
    return NULL;
}

/* The copies of ids[0..n) into out (ordered by hub_id), locked with `lock`.
 * Missing ones are fetched once (NEED_ACCOUNTS); still missing: NOT_FOUND. */
static int copies_accounts(op_call *cl, pg_conn *tx, const uint64_t *ids, int n, bool lock, org_account *out) {
    int got = 0;
    int rc = store_accounts_get(tx, ids, n, lock, out, &got);
    if (rc != 0) return rc;
    if (got == n) return 0;
    uint64_t missing[ORG_MAX_BATCH + 2];
    int nm = 0;
    for (int i = 0; i < n && nm < ORG_MAX_BATCH + 2; i++)
        if (find_account(out, got, ids[i]) == NULL) missing[nm++] = ids[i];
    if (!(cl->fetched & NEED_ACCOUNTS)) {
        for (int i = 0; i < nm; i++) op_need_id(cl, missing[i]);
        return op_need(cl, NEED_ACCOUNTS);
    }
    char list[512];
    id_list(list, sizeof list, missing, nm);
    return op_fail(cl, OM_E_NOT_FOUND, "no such account: %s", list);
}

/* The actor's roles in hubs[0..n) (and, when member is not NULL, whether
 * the actor is a member at all); unknown memberships are fetched once, then
 * count as none. */
static int copies_roles(op_call *cl, pg_conn *tx, const uint64_t *hubs, int n, unsigned *roles, bool *member) {
    bool known[ORG_MAX_MEMBERS_READ + ORG_MAX_BATCH + 2];
    if (n > (int)(sizeof known / sizeof known[0])) return OM_E_INTERNAL;
    int rc = copies_memberships_get(tx, cl->actor->user_id, hubs, n, known, roles, NULL, member);
    if (rc != 0) return rc;
    for (int i = 0; i < n; i++)
        if (!known[i] && !(cl->fetched & NEED_MEMBERSHIPS)) return op_need(cl, NEED_MEMBERSHIPS);
    return 0;
}

/* ---- the transaction runner --------------------------------------------------------------- */

/* op_def.fetch: what the last attempt found missing (SPEC 2). */
static int org_fetch(rpc_ctx *ctx, op_call *cl, void *arg) {
    (void)arg;
    int rc = 0;
    if ((cl->need & NEED_ACCOUNTS) && (rc = fetch_accounts(ctx, cl->db, cl->need_ids, cl->n_need_ids)) != 0)
        return rc;
    if ((cl->need & NEED_MEMBERSHIPS) && (rc = fetch_memberships(ctx, cl->db, cl->actor->user_id, NULL, NULL, NULL)) != 0)
        return rc;
    return 0;
}

static void bad_reset(op_call *cl, void *arg) {
    (void)cl;
    ((bad_list *)arg)->n = 0;
}

/* ORG-02: every (account, reason) of the refusal as a PreconditionFailure. */
static void bad_failed(op_call *cl, void *arg, int code) {
    (void)code;
    const bad_list *b = arg;
    rpc_ctx *ctx = cl->ctx;
    if (b->n == 0) return;
    Google__Rpc__PreconditionFailure *pf = rpc_alloc(ctx, sizeof *pf);
    google__rpc__precondition_failure__init(pf);
    int total = 0;
    for (int i = 0; i < b->n; i++) total += __builtin_popcount(b->bad[i].reasons);
    pf->violations = rpc_calloc(ctx, (size_t)total + 1, sizeof *pf->violations);
    for (int i = 0; i < b->n; i++)
        for (int k = 0; k < ORG_INELIGIBLE_COUNT; k++) {
            unsigned bit = 1u << k;
            if (!(b->bad[i].reasons & bit)) continue;
            Google__Rpc__PreconditionFailure__Violation *v = rpc_alloc(ctx, sizeof *v);
            google__rpc__precondition_failure__violation__init(v);
            v->type = (char *)om_err_name(org_reason_code(bit));
            v->subject = rpc_sprintf(ctx, "accounts/%" PRIu64, b->bad[i].hub_id);
            v->description = (char *)om_err_message(org_reason_code(bit));
            pf->violations[pf->n_violations++] = v;
        }
    rpc_error_detail(ctx, &pf->base);
}

#define ORG_UNAVAILABLE "the accounts service or the database is unavailable; retry"

/* ---- authorization ------------------------------------------------------------------------- */

static int member_index(const org_snapshot *s, uint64_t hub_id) {
    for (int i = 0; i < s->n; i++)
        if (s->m[i].hub_id == hub_id) return i;
    return -1;
}

/* ORG-07: acting from an account of the organization that has MARKETING
 * ENTERPRISE, and SUPER_ADMIN in every account of the organization. */
static int require_manager(op_call *cl, pg_conn *tx, const org_snapshot *s, uint64_t acting_hub_id) {
    int at = member_index(s, acting_hub_id);
    if (at < 0)
        return op_fail(cl, OM_E_NOT_IN_ORGANIZATION, "acting account %" PRIu64 " is not in organization %s",
                       acting_hub_id, s->o.id);
    if (!s->m[at].marketing_enterprise)
        return op_fail(cl, OM_E_NOT_ENTERPRISE_ACCOUNT,
                       "acting account %" PRIu64 " has no Marketing Hub Enterprise subscription (ORG-07)", acting_hub_id);
    uint64_t hubs[ORG_MAX_MEMBERS_READ], lacking[ORG_MAX_MEMBERS_READ];
    unsigned roles[ORG_MAX_MEMBERS_READ];
    int nl = 0;
    for (int i = 0; i < s->n; i++) hubs[i] = s->m[i].hub_id;
    int rc = copies_roles(cl, tx, hubs, s->n, roles, NULL);
    if (rc != 0) return rc;
    for (int i = 0; i < s->n; i++)
        if (!(roles[i] & ORG_ROLE_SUPER_ADMIN)) lacking[nl++] = hubs[i];
    if (nl > 0) {
        char list[256];
        id_list(list, sizeof list, lacking, nl);
        return op_fail(cl, OM_E_NOT_SUPER_ADMIN,
                       "managing an organization requires super admin in every account of it; not in: %s (ORG-07)",
                       list);
    }
    return 0;
}

/* Defect 5 (AIP-193): whether the actor may know that the organization
 * exists: a member of one of its accounts (whatever the roles), or an
 * orgmesh service. Everyone else gets NOT_FOUND, worded as for an id that
 * does not exist (`hidden`, or "no organization <id>"), never
 * PERMISSION_DENIED, so another tenant's ids reveal nothing. */
static int require_visible(op_call *cl, pg_conn *tx, const org_snapshot *s, const char *hidden) {
    if (auth_is_service(cl->actor, NULL)) return 0;
    uint64_t hubs[ORG_MAX_MEMBERS_READ];
    unsigned roles[ORG_MAX_MEMBERS_READ];
    bool member[ORG_MAX_MEMBERS_READ];
    for (int i = 0; i < s->n; i++) hubs[i] = s->m[i].hub_id;
    int rc = copies_roles(cl, tx, hubs, s->n, roles, member);
    if (rc != 0) return rc;
    for (int i = 0; i < s->n; i++)
        if (member[i]) return 0;
    if (hidden != NULL) return op_fail(cl, OM_E_NOT_FOUND, "%s", hidden);
    return op_fail(cl, OM_E_NOT_FOUND, "no organization %s", s->o.id);
}

/* ORG-08: SUPER_ADMIN or PARTNER_ADMIN in an account of the organization
 * (orgmesh services may read too). A member of one of its accounts without
 * either role may know the organization exists: PERMISSION_DENIED; anyone
 * else: NOT_FOUND (require_visible, AIP-193). */
static int require_viewer(op_call *cl, pg_conn *tx, const org_snapshot *s, const char *hidden) {
    if (auth_is_service(cl->actor, NULL)) return 0;
    int rc = require_visible(cl, tx, s, hidden);
    if (rc != 0) return rc;
    uint64_t hubs[ORG_MAX_MEMBERS_READ];
    unsigned roles[ORG_MAX_MEMBERS_READ];
    for (int i = 0; i < s->n; i++) hubs[i] = s->m[i].hub_id;
    if ((rc = copies_roles(cl, tx, hubs, s->n, roles, NULL)) != 0) return rc;
    for (int i = 0; i < s->n; i++)
        if (org_roles_view(roles[i])) return 0;
    return op_fail(cl, OM_E_PERMISSION_DENIED,
                   "only super admin or partner admin members of an account of the organization may view it (ORG-08)");
}

/* ORG-04: two-factor enabled (local copy of the user, fetched when
 * missing) and the token's mfa_at within the window. */
static int require_mfa(rpc_ctx *ctx) {
    const om_actor *actor = rpc_actor(ctx);
    pg_conn *c = op_db(ctx);
    if (c == NULL) return OM_E_UNAVAILABLE;
    bool tfa = false, deleted = false;
    int rc = store_user_get(c, actor->user_id, &tfa, &deleted);
    if (rc == OM_E_NOT_FOUND) {
        if ((rc = fetch_user(ctx, c, actor->user_id)) != 0)
            return rpc_fail(ctx, rc, "the accounts service is unavailable; retry");
        rc = store_user_get(c, actor->user_id, &tfa, &deleted);
        if (rc == OM_E_NOT_FOUND) {
            tfa = false;
            rc = 0;
        }
    }
    if (rc != 0) return rpc_fail(ctx, rc, NULL);
    if (org_mfa_check(tfa && !deleted, actor->mfa_at, (int64_t)time(NULL), mfa_window_s) != 0)
        return rpc_fail(ctx, OM_E_MFA_REQUIRED,
                        tfa ? "verify your second factor again: it must be at most %" PRId64 " s old (ORG-04)"
                            : "turn on two-factor authentication first (ORG-04; window %" PRId64 " s)",
                        mfa_window_s);
    return 0;
}

/* ORG-02: every account of ids (copies `accts`, ordered by hub_id) against
 * the organization's location; the first reason fails the call, all of them
 * go into the PreconditionFailure. */
static int check_eligible(op_call *cl, pg_conn *tx, const uint64_t *ids, int n, const org_account *accts,
                          const char *location) {
    bad_list *bad = cl->arg;
    bool in_org[ORG_MAX_BATCH + 2];
    int rc = store_accounts_in_orgs(tx, ids, n, in_org);
    if (rc != 0) return rc;
    int first = -1;
    for (int i = 0; i < n; i++) { /* accts is in hub_id order */
        const org_account *a = &accts[i];
        bool member = false;
        for (int j = 0; j < n; j++)
            if (ids[j] == a->hub_id) member = in_org[j];
        unsigned r = org_eligibility(a, location, member, true) & ORG_INELIGIBLE_ORG02;
        if (r == 0) continue;
        if (first < 0) first = bad->n;
        bad->bad[bad->n++] = (bad_account){a->hub_id, r};
    }
    if (first < 0) return 0;
    unsigned bit = org_first_org02_reason(bad->bad[first].reasons);
    int code = org_reason_code(bit);
    return op_fail(cl, code, "account %" PRIu64 " cannot be in the organization: %s (ORG-02)", bad->bad[first].hub_id,
                   om_err_message(code));
}

/* ORG-03: SUPER_ADMIN in each of ids. */
static int require_super_admin_in(op_call *cl, pg_conn *tx, const uint64_t *ids, int n) {
    unsigned roles[ORG_MAX_BATCH + 2];
    int rc = copies_roles(cl, tx, ids, n, roles, NULL);
    if (rc != 0) return rc;
    uint64_t lacking[ORG_MAX_BATCH + 2];
    int nl = 0;
    for (int i = 0; i < n; i++)
        if (!(roles[i] & ORG_ROLE_SUPER_ADMIN)) lacking[nl++] = ids[i];
    if (nl == 0) return 0;
    char list[512];
    id_list(list, sizeof list, lacking, nl);
    return op_fail(cl, OM_E_NOT_SUPER_ADMIN, "you must be super admin in every account concerned; not in: %s (ORG-03)",
                   list);
}

/* Defect 5 (AIP-193): an account the actor is not a member of answers as if
 * it did not exist, before any rule reveals something about it. */
static int require_member_of_all(op_call *cl, const uint64_t *ids, int n, const bool *member) {
    for (int i = 0; i < n; i++)
        if (!member[i]) return op_fail(cl, OM_E_NOT_FOUND, "no such account: %" PRIu64, ids[i]);
    return 0;
}

static int etag_matches(op_call *cl, const char *etag, const org_snapshot *s) {
    int64_t v;
    if (etag == NULL || etag[0] == '\0') return 0;
    if (org_etag_decode(etag, &v) != 0 || v != s->o.version)
        return op_fail(cl, OM_E_ETAG_MISMATCH, "organization %s changed since it was read", s->o.id);
    return 0;
}

/* The organization, read (FOR UPDATE when `lock`) with its members, in call
 * memory. */
static int load_org(op_call *cl, pg_conn *tx, const char *org_id, bool lock, org_snapshot **out) {
    org_snapshot *s = rpc_calloc(cl->ctx, 1, sizeof *s);
    int rc = store_org_get(tx, org_id, lock, &s->o);
    if (rc == OM_E_NOT_FOUND) return op_fail(cl, rc, "no organization %s", org_id);
    if (rc == 0) rc = org_snapshot_load(tx, s);
    *out = s;
    return rc;
}

static org_who who_of(op_call *cl, const char *request_id) {
    return (org_who){.actor = cl->actor, .rule = NULL, .request_id = request_id, .trace_id = rpc_trace_id(cl->ctx)};
}

static int audit_join(pg_conn *tx, const org_who *who, const org_snapshot *s, int i) {
    char resource[96];
    snprintf(resource, sizeof resource, "organizations/%s/members/%" PRIu64, s->o.id, s->m[i].hub_id);
    audit_entry e = {.actor = who->actor,
                     .action = "org.member.add",
                     .resource = resource,
                     .after = &s->pm[i].base,
                     .reason = "JOINED",
                     .request_id = who->request_id,
                     .trace_id = who->trace_id};
    return audit_record(tx, &e);
}

static int emit_org(pg_conn *tx, const org_who *who, const org_snapshot *s, const ProtobufCMessage *payload) {
    char subject[64];
    snprintf(subject, sizeof subject, "organizations/%s", s->o.id);
    evt_meta meta = {.subject = subject, .version = s->o.version, .actor = who->actor, .trace_id = who->trace_id};
    return evt_emit(tx, &meta, payload, NULL);
}

/* ---- ListEligibleAccounts ------------------------------------------------------------------- */

/* ListEligibleAccounts — ORG-05 (ORG-02, ORG-03 reasons; ORG-08 for an organization target). */
static int h_list_eligible(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_) {
    const OPB(ListEligibleAccountsRequest) *req = (const void *)req_;
    OPB(ListEligibleAccountsResponse) *resp = (void *)resp_;
    const bool by_org = req->target_case == ORGMESH__ORGANIZATIONS__V1__LIST_ELIGIBLE_ACCOUNTS_REQUEST__TARGET_ORGANIZATION_ID;
    const bool by_ent =
        req->target_case == ORGMESH__ORGANIZATIONS__V1__LIST_ELIGIBLE_ACCOUNTS_REQUEST__TARGET_ENTERPRISE_HUB_ID;
    if (!by_org && !by_ent) rpc_violation(ctx, "target", "set enterprise_hub_id or organization_id");
    if (by_ent) op_check_id(ctx, "enterprise_hub_id", req->enterprise_hub_id);
    if (by_org) check_org_id(ctx, req->organization_id);
    if (req->filter < 0 || req->filter > 2) rpc_violation(ctx, "filter", "is not a CandidateFilter");
    int limit = 0;
    if (page_size_normalize(req->page_size, &limit) != 0) rpc_violation(ctx, "page_size", "must not be negative");
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    if (require_user(ctx) != 0) return OM_E_PERMISSION_DENIED;
    const om_actor *actor = rpc_actor(ctx);

    char *scope = rpc_sprintf(ctx, "organizations.ListEligibleAccounts|u=%" PRIu64 "|e=%" PRIu64 "|o=%s|f=%d",
                              actor->user_id, by_ent ? req->enterprise_hub_id : 0,
                              by_org ? req->organization_id : "", (int)req->filter);
    char *cursor = NULL;
    int rc = page_token_decode(scope, req->page_token, &cursor);
    if (rc != 0) return rpc_fail(ctx, rc, NULL);
    uint64_t after = cursor ? strtoull(cursor, NULL, 10) : 0;
    free(cursor);

    pg_conn *c = op_db(ctx);
    if (c == NULL) return OM_E_UNAVAILABLE;
    /* Every account the actor is a member of, from the directory itself. */
    uint64_t *hubs = NULL;
    unsigned *roles = NULL;
    int n = 0;
    if ((rc = fetch_memberships(ctx, c, actor->user_id, &hubs, &roles, &n)) != 0)
        return rpc_fail(ctx, rc, "the accounts service is unavailable; retry");
    /* Their copies, fetched when missing (the Enterprise target too). */
    uint64_t *want = rpc_calloc(ctx, (size_t)n + 1, sizeof *want);
    if (n > 0) memcpy(want, hubs, (size_t)n * sizeof *hubs);
    int nw = n;
    if (by_ent) want[nw++] = req->enterprise_hub_id;
    org_account *accts = rpc_calloc(ctx, (size_t)nw + 1, sizeof *accts);
    int got = 0;
    if ((rc = store_accounts_get(c, want, nw, false, accts, &got)) != 0) return rpc_fail(ctx, rc, NULL);
    if (got < nw) {
        uint64_t *missing = rpc_calloc(ctx, (size_t)nw, sizeof *missing);
        int nm = 0;
        for (int i = 0; i < nw; i++)
            if (find_account(accts, got, want[i]) == NULL) missing[nm++] = want[i];
        if ((rc = fetch_accounts(ctx, c, missing, nm)) != 0)
            return rpc_fail(ctx, rc, "the accounts service is unavailable; retry");
        if ((rc = store_accounts_get(c, want, nw, false, accts, &got)) != 0) return rpc_fail(ctx, rc, NULL);
    }

    const char *location = NULL;
    char org_id[ORG_ID_LEN] = "";
    if (by_ent) {
        const org_account *e = find_account(accts, got, req->enterprise_hub_id);
        bool member = false;
        for (int i = 0; e != NULL && i < n; i++) member = member || hubs[i] == e->hub_id;
        if (e == NULL || !member) /* AIP-193: another tenant's account reads as missing */
            return rpc_fail(ctx, OM_E_NOT_FOUND, "no such account: %" PRIu64, req->enterprise_hub_id);
        if (!e->marketing_enterprise) /* ORG-01 */
            return rpc_fail(ctx, OM_E_NOT_ENTERPRISE_ACCOUNT,
                            "account %" PRIu64 " has no Marketing Hub Enterprise subscription (ORG-01)", e->hub_id);
        location = e->hosting_location;
    } else {
        op_call cl = {.ctx = ctx, .actor = actor, .fetched = NEED_MEMBERSHIPS}; /* just fetched */
        org_snapshot *s = NULL;
        rc = load_org(&cl, c, req->organization_id, false, &s);
        if (rc == 0) rc = require_viewer(&cl, c, s, NULL); /* ORG-08, AIP-193 */
        if (rc != 0) return cl.err == rc ? rpc_fail(ctx, rc, "%s", cl.msg) : rpc_fail(ctx, rc, NULL);
        location = rpc_strdup(ctx, s->o.hosting_location);
        snprintf(org_id, sizeof org_id, "%s", s->o.id);
    }

    bool *in_org = rpc_calloc(ctx, (size_t)n + 1, sizeof *in_org);
    if ((rc = store_accounts_in_orgs(c, hubs, n, in_org)) != 0) return rpc_fail(ctx, rc, NULL);

    resp->candidates = rpc_calloc(ctx, (size_t)limit + 1, sizeof *resp->candidates);
    uint64_t last = 0;
    bool more = false;
    for (int i = 0; i < n; i++) { /* ListMembershipsInternal is ordered by hub_id */
        if (hubs[i] <= after) continue;
        const org_account *a = find_account(accts, got, hubs[i]);
        if (a == NULL) continue; /* deleted since */
        unsigned reasons = org_eligibility(a, location, in_org[i], (roles[i] & ORG_ROLE_SUPER_ADMIN) != 0);
        if (req->filter == ORGMESH__ORGANIZATIONS__V1__CANDIDATE_FILTER__CANDIDATE_FILTER_ELIGIBLE && reasons) continue;
        if (req->filter == ORGMESH__ORGANIZATIONS__V1__CANDIDATE_FILTER__CANDIDATE_FILTER_INELIGIBLE && !reasons) continue;
        if ((int)resp->n_candidates == limit) {
            more = true;
            break;
        }
        OPB(AccountCandidate) *cand = rpc_alloc(ctx, sizeof *cand);
        orgmesh__organizations__v1__account_candidate__init(cand);
        cand->hub_id = a->hub_id;
        cand->name = rpc_strdup(ctx, a->name);
        cand->kind = (APB(AccountKind))a->kind;
        cand->hosting_location = rpc_strdup(ctx, a->hosting_location);
        cand->marketing_enterprise = a->marketing_enterprise;
        cand->eligible = reasons == 0;
        cand->reasons = rpc_calloc(ctx, ORG_INELIGIBLE_COUNT, sizeof *cand->reasons);
        for (int b = 0; b < ORG_INELIGIBLE_COUNT; b++) /* ORG-05: all of them */
            if (reasons & (1u << b)) cand->reasons[cand->n_reasons++] = (OPB(IneligibilityReason))(b + 1);
        resp->candidates[resp->n_candidates++] = cand;
        last = a->hub_id;
    }
    resp->next_page_token = "";
    if (more) {
        char cur[24], *tok = NULL;
        snprintf(cur, sizeof cur, "%" PRIu64, last);
        if (page_token_encode(scope, cur, &tok) == 0) {
            resp->next_page_token = rpc_strdup(ctx, tok);
            free(tok);
        }
    }
    return 0;
}

/* ---- CreateOrganization ------------------------------------------------------------------------ */

static int apply_create(op_call *cl, pg_conn *tx) {
    const OPB(CreateOrganizationRequest) *req = cl->req;
    OPB(CreateOrganizationResponse) *resp = (void *)cl->resp;
    int n = (int)req->n_member_hub_ids + 1;
    uint64_t ids[ORG_MAX_BATCH + 2];
    ids[0] = req->enterprise_hub_id;
    if (req->n_member_hub_ids > 0) memcpy(ids + 1, req->member_hub_ids, req->n_member_hub_ids * sizeof ids[0]);
    org_account *accts = rpc_calloc(cl->ctx, (size_t)n, sizeof *accts);
    /* Locked: an account event waits for this transaction, then sees it. */
    int rc = copies_accounts(cl, tx, ids, n, true, accts);
    if (rc != 0) return rc;
    bool member[ORG_MAX_BATCH + 2];
    if ((rc = copies_roles(cl, tx, ids, n, (unsigned[ORG_MAX_BATCH + 2]){0}, member)) != 0) return rc;
    if ((rc = require_member_of_all(cl, ids, n, member)) != 0) return rc; /* AIP-193 */
    const org_account *ent = find_account(accts, n, req->enterprise_hub_id);
    if (!ent->marketing_enterprise) /* ORG-01 */
        return op_fail(cl, OM_E_NOT_ENTERPRISE_ACCOUNT,
                       "account %" PRIu64 " has no Marketing Hub Enterprise subscription: create the organization from an"
                       " Enterprise account (ORG-01)",
                       ent->hub_id);
    if ((rc = require_super_admin_in(cl, tx, ids, n)) != 0) return rc;        /* ORG-03 */
    if ((rc = check_eligible(cl, tx, ids, n, accts, ent->hosting_location)) != 0) return rc; /* ORG-02 */

    org_snapshot *s = rpc_calloc(cl->ctx, 1, sizeof *s);
    if ((rc = store_org_insert(tx, ent->hub_id, ent->hosting_location, cl->actor->user_id, &s->o)) != 0) return rc;
    char ack_id[ORG_ID_LEN];
    /* ORG-06: who, when, which accounts */
    if ((rc = store_ack_insert(tx, s->o.id, cl->actor->user_id, req->acknowledgement->text_version, ids, n,
                               "create", ack_id)) != 0)
        return rc;
    for (int i = 0; i < n; i++) {
        rc = store_member_insert(tx, s->o.id, ids[i], i == 0, cl->actor->user_id, ack_id);
        if (rc == OM_E_ALREADY_IN_ORGANIZATION)
            return op_fail(cl, rc, "account %" PRIu64 " is already in an organization (ORG-02)", ids[i]);
        if (rc != 0) return rc;
    }
    if ((rc = org_snapshot_load(tx, s)) != 0) return rc;

    org_who who = who_of(cl, req->request_id);
    char actor[64];
    audit_actor_string(cl->actor, NULL, actor, sizeof actor);
    OPB(OrganizationCreated) ev = ORGMESH__ORGANIZATIONS__V1__ORGANIZATION_CREATED__INIT;
    ev.organization = &s->pb;
    ev.acknowledgement = req->acknowledgement;
    ev.actor = actor;
    if ((rc = emit_org(tx, &who, s, &ev.base)) != 0) return rc; /* ORG-12 */
    char resource[64];
    snprintf(resource, sizeof resource, "organizations/%s", s->o.id);
    audit_entry e = {.actor = cl->actor,
                     .action = "org.create",
                     .resource = resource,
                     .after = &s->pb.base,
                     .request_id = req->request_id,
                     .trace_id = who.trace_id};
    if ((rc = audit_record(tx, &e)) != 0) return rc;
    for (int i = 0; i < s->n; i++)
        if ((rc = audit_join(tx, &who, s, i)) != 0) return rc;
    resp->organization = &s->pb;
    return 0;
}

static const op_def create_def = {
    .apply = apply_create, .mutation = true, .fetch = org_fetch, .reset = bad_reset, .failed = bad_failed,
    .unavailable = ORG_UNAVAILABLE
};

/* CreateOrganization — ORG-01, ORG-02, ORG-03, ORG-04, ORG-06, ORG-12 (all or nothing). */
static int h_create(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp) {
    const OPB(CreateOrganizationRequest) *req = (const void *)req_;
    if (req->n_member_hub_ids > ORG_MAX_BATCH)
        return rpc_fail(ctx, OM_E_BATCH_TOO_LARGE, "at most %d accounts per call", ORG_MAX_BATCH);
    op_check_id(ctx, "enterprise_hub_id", req->enterprise_hub_id);
    check_ids(ctx, "member_hub_ids", req->member_hub_ids, req->n_member_hub_ids, req->enterprise_hub_id,
              "enterprise_hub_id");
    check_ack_fields(ctx, req->acknowledgement);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    if (org_cap_check(1, (int)req->n_member_hub_ids) != 0) /* ORG-01 */
        return rpc_fail(ctx, OM_E_ORG_ACCOUNT_LIMIT,
                        "an organization holds at most %d accounts: the Enterprise account and up to %d more; %zu given",
                        ORG_MAX_ACCOUNTS, ORG_MAX_ACCOUNTS - 1, req->n_member_hub_ids + 1);
    if (require_user(ctx) != 0) return OM_E_PERMISSION_DENIED;
    if (require_mfa(ctx) != 0) return OM_E_MFA_REQUIRED;           /* ORG-04 */
    if (require_ack(ctx, req->acknowledgement) != 0) return OM_E_ACKNOWLEDGEMENT_REQUIRED; /* ORG-06 */
    bad_list bad = {.n = 0};
    return op_run(ctx, &create_def, req, resp, &bad);
}

/* ---- reads ------------------------------------------------------------------------------------------- */

typedef struct read_op {
    const char *org_id;
    uint64_t hub_id; /* GetOrganizationByAccount */
    bool tombstone_ok; /* ORG-13: GetOrganization, ListOrganizationHistory */
    org_snapshot *s;
} read_op;

/* ORG-13: the tombstone of an organization ORG-10 deleted, for the admins
 * (ORG-08's roles) of its former member accounts while it is kept. A plain
 * member of one of them may know it existed: PERMISSION_DENIED; anyone else,
 * and orgmesh services (which act on the events), NOT_FOUND as for an id
 * that never existed (AIP-193). */
static int read_tombstone(op_call *cl, pg_conn *tx, read_op *op, const char *org_id) {
    if (auth_is_service(cl->actor, NULL)) return op_fail(cl, OM_E_NOT_FOUND, "no organization %s", org_id);
    org_tombstone t;
    int rc = store_tombstone_get(tx, org_id, &t);
    if (rc == OM_E_NOT_FOUND) return op_fail(cl, rc, "no organization %s", org_id);
    if (rc != 0) return rc;
    unsigned roles[ORG_MAX_MEMBERS_READ];
    bool member[ORG_MAX_MEMBERS_READ];
    if ((rc = copies_roles(cl, tx, t.former, t.n_former, roles, member)) != 0) return rc;
    bool seen = false, viewer = false;
    for (int i = 0; i < t.n_former; i++) {
        seen = seen || member[i];
        viewer = viewer || (member[i] && org_roles_view(roles[i]));
    }
    if (!seen) return op_fail(cl, OM_E_NOT_FOUND, "no organization %s", org_id);
    if (!viewer)
        return op_fail(cl, OM_E_PERMISSION_DENIED,
                       "only super admin or partner admin members of its former accounts may view a deleted "
                       "organization (ORG-13)");
    op->s = rpc_calloc(cl->ctx, 1, sizeof *op->s);
    org_tombstone_pb(op->s, &t);
    return 0;
}

static int apply_read(op_call *cl, pg_conn *tx) {
    read_op *op = cl->arg;
    const char *org_id = op->org_id;
    char buf[ORG_ID_LEN];
    if (op->hub_id != 0) {
        int rc = store_org_of_account(tx, op->hub_id, buf);
        if (rc == OM_E_NOT_FOUND)
            return op_fail(cl, rc, "account %" PRIu64 " is not in an organization", op->hub_id);
        if (rc != 0) return rc;
        org_id = buf;
    }
    op->s = rpc_calloc(cl->ctx, 1, sizeof *op->s);
    int rc = store_org_get(tx, org_id, false, &op->s->o);
    if (rc == OM_E_NOT_FOUND && op->tombstone_ok) return read_tombstone(cl, tx, op, org_id); /* ORG-13 */
    if (rc == OM_E_NOT_FOUND) return op_fail(cl, rc, "no organization %s", org_id);
    if (rc == 0) rc = org_snapshot_load(tx, op->s);
    if (rc != 0) return rc;
    const char *hidden = NULL;
    if (op->hub_id != 0) /* worded as for an account in no organization */
        hidden = rpc_sprintf(cl->ctx, "account %" PRIu64 " is not in an organization", op->hub_id);
    return require_viewer(cl, tx, op->s, hidden); /* ORG-08, AIP-193 */
}

static const op_def read_def = {.apply = apply_read, .fetch = org_fetch, .unavailable = ORG_UNAVAILABLE};

static int read_org(rpc_ctx *ctx, ProtobufCMessage *resp, read_op *op) { return op_run(ctx, &read_def, NULL, resp, op); }

/* GetOrganization — ORG-08; ORG-13 the tombstone of an automatic deletion. */
static int h_get(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_) {
    const OPB(GetOrganizationRequest) *req = (const void *)req_;
    OPB(GetOrganizationResponse) *resp = (void *)resp_;
    check_org_id(ctx, req->organization_id);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    read_op op = {.org_id = req->organization_id, .tombstone_ok = true};
    int rc = read_org(ctx, resp_, &op);
    if (rc == 0) resp->organization = &op.s->pb;
    return rc;
}

/* GetOrganizationByAccount — ORG-08. */
static int h_get_by_account(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_) {
    const OPB(GetOrganizationByAccountRequest) *req = (const void *)req_;
    OPB(GetOrganizationByAccountResponse) *resp = (void *)resp_;
    op_check_id(ctx, "hub_id", req->hub_id);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    read_op op = {.hub_id = req->hub_id};
    int rc = read_org(ctx, resp_, &op);
    if (rc == 0) resp->organization = &op.s->pb;
    return rc;
}

/* ListOrgMembers — ORG-08 (paged by position in join order). */
static int h_list_members(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_) {
    const OPB(ListOrgMembersRequest) *req = (const void *)req_;
    OPB(ListOrgMembersResponse) *resp = (void *)resp_;
    check_org_id(ctx, req->organization_id);
    int limit = 0;
    if (page_size_normalize(req->page_size, &limit) != 0) rpc_violation(ctx, "page_size", "must not be negative");
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    char *scope = rpc_sprintf(ctx, "organizations.ListOrgMembers|%s", req->organization_id);
    char *cursor = NULL;
    int rc = page_token_decode(scope, req->page_token, &cursor);
    if (rc != 0) return rpc_fail(ctx, rc, NULL);
    int offset = cursor ? atoi(cursor) : 0;
    free(cursor);
    read_op op = {.org_id = req->organization_id};
    if ((rc = read_org(ctx, resp_, &op)) != 0) return rc;
    resp->members = rpc_calloc(ctx, (size_t)op.s->n + 1, sizeof *resp->members);
    int i;
    for (i = offset; i < op.s->n && (int)resp->n_members < limit; i++) resp->members[resp->n_members++] = &op.s->pm[i];
    resp->next_page_token = "";
    if (i < op.s->n) {
        char cur[16], *tok = NULL;
        snprintf(cur, sizeof cur, "%d", i);
        if (page_token_encode(scope, cur, &tok) == 0) {
            resp->next_page_token = rpc_strdup(ctx, tok);
            free(tok);
        }
    }
    return 0;
}

/* ListOrganizationHistory — ORG-08, ORG-12: the organization's entries and
 * those of its members ("organizations/<id>/..."); ORG-13: also while its
 * tombstone is kept. */
static int h_history(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_) {
    const OPB(ListOrganizationHistoryRequest) *req = (const void *)req_;
    OPB(ListOrganizationHistoryResponse) *resp = (void *)resp_;
    check_org_id(ctx, req->organization_id);
    int limit = 0;
    if (page_size_normalize(req->page_size, &limit) != 0) rpc_violation(ctx, "page_size", "must not be negative");
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    char *scope = rpc_sprintf(ctx, "organizations.ListOrganizationHistory|%s", req->organization_id);
    page_req pg; /* keyset: the id below which the next page starts */
    if (page_open(ctx, req->page_size, req->page_token, scope, 1, &pg) != 0) return -1;
    read_op op = {.org_id = req->organization_id, .tombstone_ok = true};
    int rc = read_org(ctx, resp_, &op);
    if (rc != 0) return rc;
    pg_conn *c = op_db(ctx);
    if (c == NULL) return OM_E_UNAVAILABLE;
    char resource[64];
    snprintf(resource, sizeof resource, "organizations/%s", req->organization_id);
    history_req q = {.page = &pg, .scope = HISTORY_TREE, .resource = resource};
    history_out h;
    if ((rc = history_list(ctx, c, &q, &h)) != 0) return rpc_fail(ctx, rc, NULL);
    resp->entries = h.entries;
    resp->n_entries = h.n;
    resp->next_page_token = h.next_page_token;
    return 0;
}

/* ---- AddOrgMembers ------------------------------------------------------------------------------------- */

static int apply_add(op_call *cl, pg_conn *tx) {
    const OPB(AddOrgMembersRequest) *req = cl->req;
    OPB(AddOrgMembersResponse) *resp = (void *)cl->resp;
    int n = (int)req->n_hub_ids;
    org_account *accts = rpc_calloc(cl->ctx, (size_t)n, sizeof *accts);
    /* The joining accounts' copies first (as the event handler locks them),
     * then the organization row: the cap is counted under that lock. */
    int rc = copies_accounts(cl, tx, req->hub_ids, n, true, accts);
    if (rc != 0) return rc;
    org_snapshot *s = NULL;
    if ((rc = load_org(cl, tx, req->organization_id, true, &s)) != 0) return rc;
    if ((rc = require_visible(cl, tx, s, NULL)) != 0) return rc;                   /* AIP-193 */
    if ((rc = require_manager(cl, tx, s, req->acting_hub_id)) != 0) return rc;     /* ORG-07 */
    if ((rc = etag_matches(cl, req->etag, s)) != 0) return rc;
    bool member[ORG_MAX_BATCH + 2];
    if ((rc = copies_roles(cl, tx, req->hub_ids, n, (unsigned[ORG_MAX_BATCH + 2]){0}, member)) != 0) return rc;
    if ((rc = require_member_of_all(cl, req->hub_ids, n, member)) != 0) return rc; /* AIP-193 */
    if ((rc = require_super_admin_in(cl, tx, req->hub_ids, n)) != 0) return rc;    /* ORG-03 */
    if (org_cap_check(s->n, n) != 0)                                               /* ORG-01 */
        return op_fail(cl, OM_E_ORG_ACCOUNT_LIMIT,
                       "organization %s has %d accounts; adding %d would exceed %d (ORG-01)", s->o.id, s->n, n,
                       ORG_MAX_ACCOUNTS);
    if ((rc = check_eligible(cl, tx, req->hub_ids, n, accts, s->o.hosting_location)) != 0) return rc; /* ORG-02 */

    char ack_id[ORG_ID_LEN];
    if ((rc = store_ack_insert(tx, s->o.id, cl->actor->user_id, req->acknowledgement->text_version, req->hub_ids, n,
                               "add", ack_id)) != 0) /* ORG-06 */
        return rc;
    org_who who = who_of(cl, req->request_id);
    char actor[64];
    audit_actor_string(cl->actor, NULL, actor, sizeof actor);
    for (int i = 0; i < n; i++) {
        rc = store_member_insert(tx, s->o.id, req->hub_ids[i], false, cl->actor->user_id, ack_id);
        if (rc == OM_E_ALREADY_IN_ORGANIZATION)
            return op_fail(cl, rc, "account %" PRIu64 " is already in an organization (ORG-02)", req->hub_ids[i]);
        if (rc != 0) return rc;
        s->o.version++; /* one version per event (SPEC 2) */
        if ((rc = store_org_set_version(tx, s->o.id, s->o.version, &s->o.update_us)) != 0) return rc;
        if ((rc = org_snapshot_load(tx, s)) != 0) return rc;
        int at = member_index(s, req->hub_ids[i]);
        OPB(OrgMemberAdded) ev = ORGMESH__ORGANIZATIONS__V1__ORG_MEMBER_ADDED__INIT;
        ev.organization_id = s->o.id;
        ev.member = &s->pm[at];
        ev.organization = &s->pb;
        ev.acknowledgement = req->acknowledgement;
        ev.actor = actor;
        if ((rc = emit_org(tx, &who, s, &ev.base)) != 0) return rc; /* ORG-12 */
        if ((rc = audit_join(tx, &who, s, at)) != 0) return rc;
    }
    resp->organization = &s->pb;
    resp->added = rpc_calloc(cl->ctx, (size_t)n, sizeof *resp->added);
    for (int i = 0; i < n; i++) {
        int at = member_index(s, req->hub_ids[i]);
        if (at >= 0) resp->added[resp->n_added++] = &s->pm[at];
    }
    return 0;
}

static const op_def add_def = {
    .apply = apply_add, .mutation = true, .fetch = org_fetch, .reset = bad_reset, .failed = bad_failed,
    .unavailable = ORG_UNAVAILABLE
};

/* AddOrgMembers — ORG-01, ORG-02, ORG-03, ORG-04, ORG-06, ORG-07, ORG-12 (all or nothing). */
static int h_add(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp) {
    const OPB(AddOrgMembersRequest) *req = (const void *)req_;
    if (req->n_hub_ids > ORG_MAX_BATCH)
        return rpc_fail(ctx, OM_E_BATCH_TOO_LARGE, "at most %d accounts per call", ORG_MAX_BATCH);
    check_org_id(ctx, req->organization_id);
    op_check_id(ctx, "acting_hub_id", req->acting_hub_id);
    if (req->n_hub_ids == 0) rpc_violation(ctx, "hub_ids", "name at least one account to add");
    check_ids(ctx, "hub_ids", req->hub_ids, req->n_hub_ids, 0, "");
    check_etag(ctx, req->etag, false);
    check_ack_fields(ctx, req->acknowledgement);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    if (org_cap_check(1, (int)req->n_hub_ids) != 0) /* ORG-01: the acting account is already in it */
        return rpc_fail(ctx, OM_E_ORG_ACCOUNT_LIMIT, "an organization holds at most %d accounts; %zu cannot be added",
                        ORG_MAX_ACCOUNTS, req->n_hub_ids);
    if (require_user(ctx) != 0) return OM_E_PERMISSION_DENIED;
    if (require_mfa(ctx) != 0) return OM_E_MFA_REQUIRED;                                /* ORG-04 */
    if (require_ack(ctx, req->acknowledgement) != 0) return OM_E_ACKNOWLEDGEMENT_REQUIRED; /* ORG-06 */
    bad_list bad = {.n = 0};
    return op_run(ctx, &add_def, req, resp, &bad);
}

/* ---- RemoveOrgMember ---------------------------------------------------------------------------------- */

static int apply_remove(op_call *cl, pg_conn *tx) {
    const OPB(RemoveOrgMemberRequest) *req = cl->req;
    OPB(RemoveOrgMemberResponse) *resp = (void *)cl->resp;
    org_snapshot *s = NULL;
    int rc = load_org(cl, tx, req->organization_id, true, &s);
    if (rc != 0) return rc;
    if ((rc = require_visible(cl, tx, s, NULL)) != 0) return rc;               /* AIP-193 */
    if ((rc = require_manager(cl, tx, s, req->acting_hub_id)) != 0) return rc; /* ORG-07 */
    if ((rc = etag_matches(cl, req->etag, s)) != 0) return rc;
    int at = member_index(s, req->hub_id);
    if (at < 0)
        return op_fail(cl, OM_E_NOT_IN_ORGANIZATION, "account %" PRIu64 " is not in organization %s", req->hub_id,
                       s->o.id);
    bool other_enterprise = false;
    for (int i = 0; i < s->n; i++)
        if (i != at && s->m[i].marketing_enterprise) other_enterprise = true;
    if (!other_enterprise) /* ORG-07 */
        return op_fail(cl, OM_E_LAST_ENTERPRISE_ACCOUNT,
                       "account %" PRIu64 " is the last Marketing Hub Enterprise account of the organization: delete the"
                       " organization instead (ORG-07)",
                       req->hub_id);
    org_who who = who_of(cl, req->request_id);
    rc = org_member_leave(tx, s, req->hub_id, ORGMESH__ORGANIZATIONS__V1__DEPARTURE_REASON__DEPARTURE_REASON_REMOVED_BY_ADMIN,
                          &who, req->reason, ""); /* ORG-11, ORG-12 */
    if (rc != 0) return rc;
    resp->organization = &s->pb;
    return 0;
}

static const op_def remove_def = {
    .apply = apply_remove, .mutation = true, .fetch = org_fetch, .unavailable = ORG_UNAVAILABLE
};
/* RemoveOrgMember — ORG-07 (LAST_ENTERPRISE_ACCOUNT), ORG-11, ORG-12. */
static int h_remove(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp) {
    const OPB(RemoveOrgMemberRequest) *req = (const void *)req_;
    check_org_id(ctx, req->organization_id);
    op_check_id(ctx, "acting_hub_id", req->acting_hub_id);
    op_check_id(ctx, "hub_id", req->hub_id);
    check_etag(ctx, req->etag, false);
    check_text(ctx, "reason", req->reason, MAX_REASON_CHARS);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    if (require_user(ctx) != 0) return OM_E_PERMISSION_DENIED;
    return op_run(ctx, &remove_def, req, resp, NULL);
}

/* ---- DeleteOrganization -------------------------------------------------------------------------------- */

static int apply_delete(op_call *cl, pg_conn *tx) {
    const OPB(DeleteOrganizationRequest) *req = cl->req;
    org_snapshot *s = NULL;
    int rc = load_org(cl, tx, req->organization_id, true, &s);
    if (rc != 0) return rc;
    if ((rc = require_visible(cl, tx, s, NULL)) != 0) return rc;               /* AIP-193 */
    if ((rc = require_manager(cl, tx, s, req->acting_hub_id)) != 0) return rc; /* ORG-07 */
    if ((rc = etag_matches(cl, req->etag, s)) != 0) return rc;                 /* ORG-11 */
    org_who who = who_of(cl, req->request_id);
    return org_delete(tx, s, ORGMESH__ORGANIZATIONS__V1__DELETION_REASON__DELETION_REASON_DELETED_BY_ADMIN, &who,
                      req->reason); /* ORG-11, ORG-12 */
}

static const op_def delete_def = {
    .apply = apply_delete, .mutation = true, .fetch = org_fetch, .unavailable = ORG_UNAVAILABLE
};
/* DeleteOrganization — ORG-07, ORG-11 (etag required), ORG-12. */
static int h_delete(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp) {
    const OPB(DeleteOrganizationRequest) *req = (const void *)req_;
    check_org_id(ctx, req->organization_id);
    op_check_id(ctx, "acting_hub_id", req->acting_hub_id);
    check_etag(ctx, req->etag, true); /* ORG-11 */
    check_text(ctx, "reason", req->reason, MAX_REASON_CHARS);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    if (require_user(ctx) != 0) return OM_E_PERMISSION_DENIED;
    return op_run(ctx, &delete_def, req, resp, NULL);
}

/* Issue 13: who may call each method with a service identity (rpc_method
 * `services`): RPC_PLATFORM is the operator's platform identities
 * (ORGMESH_PLATFORM_SERVICES: the identity system, operator tools); an
 * orgmesh service is listed only where its own calls need it
 * (docs/security.md "Service identities"). */
static const char *const by_platform[] = {RPC_PLATFORM, NULL};
/* connections reads the organization it enforces CONN rules on */
static const char *const by_connections[] = {"connections", RPC_PLATFORM, NULL};

static const rpc_method methods[] = {
    {"ListEligibleAccounts", h_list_eligible, 0, by_platform},
    {"CreateOrganization", h_create, 0, by_platform},
    {"GetOrganization", h_get, 0, by_connections},
    {"GetOrganizationByAccount", h_get_by_account, 0, by_platform},
    {"ListOrgMembers", h_list_members, 0, by_platform},
    {"AddOrgMembers", h_add, 0, by_platform},
    {"RemoveOrgMember", h_remove, 0, by_platform},
    {"DeleteOrganization", h_delete, 0, by_platform},
    {"ListOrganizationHistory", h_history, 0, by_platform},
    {NULL, NULL, 0},
};

const rpc_service organizations_service = {&orgmesh__organizations__v1__organizations_service__descriptor, methods};
