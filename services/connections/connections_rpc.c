/* connections_rpc.c — the handlers of orgmesh.connections.v1.ConnectionsService
 * (SPEC 4). Small helpers first (validation, the local copies and their
 * fetching from the owners (conn_fetch, called by op_run), authorization,
 * the plan of a configuration change), then one handler per RPC (validation,
 * then op_run) with a line naming the rules it enforces. Rules are in connections_rules.c, SQL in
 * connections_store.c. Every rule of a write is checked against the local
 * copies inside the transaction that writes, under the organization's lock.
 *
 * The hot checks (CONN-06, CONN-07) are RPC_INLINE: they answer from the
 * in-process cache on the polling thread, and on a miss return RPC_DEFER so
 * that the same call runs again on a worker, which reads PostgreSQL and
 * fills the cache. */
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "app.h"
#include "audit.h"
#include "history.h"
#include "config.h"
#include "copies.h"
#include "connections.h"
#include "ctoken.h"
#include "connections_rpc.h"
#include "op.h"
#include "log.h"
#include "om_err.h"
#include "orgmesh/accounts/v1/accounts.pb-c.h"
#include "orgmesh/organizations/v1/organizations.pb-c.h"
#include "orgmesh/type/v1/audit.pb-c.h"
#include "page.h"

#define APB(x) Orgmesh__Accounts__V1__##x
#define OPB(x) Orgmesh__Organizations__V1__##x
#define MAX_BATCH 100
#define MAX_ADD 4
#define CONN_FRESH_WAIT_DEFAULT_MS 1000
/* What a transaction may find missing (op_need); conn_fetch brings it. */
#define NEED_ORG 1u
#define NEED_ACCOUNTS 2u
#define NEED_MEMBERSHIPS 4u

static int64_t fresh_wait_ms;
static int64_t applied_retention_ms;
static int fresh_max_waiters = 1;
static atomic_int fresh_waiters;

int connections_init(void) {
    conn_cache_init(cfg_int("ORGMESH_CONN_CACHE_TTL_MS", CONN_CACHE_TTL_DEFAULT_MS, 1, 3600000));
    /* CONN-13: how long an at_least_as_fresh check waits for the token's events */
    fresh_wait_ms = cfg_int("ORGMESH_CONN_FRESH_WAIT_MS", CONN_FRESH_WAIT_DEFAULT_MS, 1, 60000);
    applied_retention_ms = cfg_int("ORGMESH_EVT_APPLIED_RETENTION_H", 168, 1, 100000) * 3600 * 1000LL;
    /* at most workers - 2 checks wait at once: the event consumers need workers too */
    int64_t workers = cfg_int("ORGMESH_WORKERS", 8, 1, 1024);
    fresh_max_waiters = workers > 3 ? (int)workers - 2 : 1;
    if (app_peer("organizations") == NULL) log_warn("ORGMESH_ORGANIZATIONS_ADDR is not set: missing copies cannot be fetched");
    if (app_peer("accounts") == NULL) log_warn("ORGMESH_ACCOUNTS_ADDR is not set: missing copies cannot be fetched");
    return conn_listener_start();
}

void connections_fini(void) { conn_listener_stop(); }

/* ---- one call's state ---- */

typedef struct org_state {
    conn_org o;
    uint64_t hubs[CONN_MAX_MEMBERS_READ];
    bool sensitive[CONN_MAX_MEMBERS_READ];
    int n;
    conn_row rows[CONN_MAX_ROWS];
    int nrows;
} org_state;

/* ---- validation ---- */

static void check_org_id(rpc_ctx *ctx, const char *s) {
    if (s == NULL || s[0] == '\0')
        rpc_violation(ctx, "organization_id", "must be set");
    else if (!conn_uuid_valid(s))
        rpc_violation(ctx, "organization_id", "is not an organization id");
}

static void check_etag(rpc_ctx *ctx, const char *field, const char *etag) {
    int64_t v;
    if (etag != NULL && etag[0] != '\0' && conn_etag_decode(etag, &v) != 0)
        rpc_violation(ctx, field, "is not an etag returned by this service");
}

/* A FeatureSetting given on input: a direction, and a source only for
 * ONE_WAY (CONN-01). Whether the source is one of the pair is checked per
 * pair. */
static void check_setting(rpc_ctx *ctx, const char *field, const PbFeature *f) {
    if (f == NULL) return;
    int dir = (int)f->direction;
    if (dir < CONN_DIR_OFF || dir > CONN_DIR_ONE_WAY)
        rpc_violation(ctx, field, "direction must be OFF, BOTH or ONE_WAY");
    else if (dir != CONN_DIR_ONE_WAY && f->source_hub_id != 0)
        rpc_violation(ctx, field, "source_hub_id is only for ONE_WAY");
    else if (f->source_hub_id != 0 && !pg_id_valid(f->source_hub_id))
        rpc_violation(ctx, field, "source_hub_id is out of range");
}

static conn_feature feature_of(const PbFeature *f, conn_feature dflt) {
    if (f == NULL) return dflt;
    int dir = (int)f->direction;
    return (conn_feature){dir, dir == CONN_DIR_ONE_WAY ? f->source_hub_id : 0};
}

/* ---- the owners (SPEC 2: fill missing copies) ---- */

static int peer_call(op_call *cl, const char *peer, const char *method, const ProtobufCMessage *req,
                     const ProtobufCMessageDescriptor *desc, ProtobufCMessage **resp, bool as_caller) {
    rpc_client *c = app_peer(peer);
    if (c == NULL) return OM_E_UNAVAILABLE;
    rpc_status st;
    int rc;
    if (as_caller)
        rc = rpc_client_call_ctx(c, cl->ctx, method, req, desc, resp, &st);
    else /* only the accounts service is called as this service (SPEC 2 copies) */
        rc = copies_call(cl->ctx, method, req, desc, resp, &st);
    if (rc != 0) {
        log_warn("%s %s failed: %d %s %s", peer, method, (int)st.code, st.reason, st.message);
        if (st.code == GRPC_STATUS_NOT_FOUND) return OM_E_NOT_FOUND;
        if (st.code == GRPC_STATUS_PERMISSION_DENIED) return OM_E_PERMISSION_DENIED;
        return OM_E_UNAVAILABLE;
    }
    return 0;
}

typedef struct snap_arg {
    conn_org_snapshot s;
} snap_arg;

static int snap_tx(pg_conn *tx, void *arg) { return conn_apply_org_snapshot(tx, &((snap_arg *)arg)->s, NULL); }

/* The organization, read from its owner with the caller's own token (so
 * the owner's viewing rule, ORG-08, applies too). */
static int fetch_org(op_call *cl, pg_conn *c) {
    OPB(GetOrganizationRequest) req = ORGMESH__ORGANIZATIONS__V1__GET_ORGANIZATION_REQUEST__INIT;
    req.organization_id = (char *)cl->need_key;
    OPB(GetOrganizationResponse) *resp = NULL;
    int rc = peer_call(cl, "organizations", "/orgmesh.organizations.v1.OrganizationsService/GetOrganization", &req.base,
                       &orgmesh__organizations__v1__get_organization_response__descriptor, (ProtobufCMessage **)&resp,
                       true);
    if (rc != 0) return rc;
    const OPB(Organization) *o = resp->organization;
    if (o != NULL && o->organization_id && strcmp(o->organization_id, cl->need_key) == 0) {
        uint64_t hubs[CONN_MAX_MEMBERS_READ];
        int n = 0;
        for (size_t i = 0; i < o->n_members && n < CONN_MAX_MEMBERS_READ; i++)
            if (o->members[i] && pg_id_valid(o->members[i]->hub_id)) hubs[n++] = o->members[i]->hub_id;
        snap_arg a = {.s = {.org_id = cl->need_key, .version = o->version, .hubs = hubs, .n = n,
                            .cause_event_id = "", .cause_reason = "FETCHED"}};
        rc = pg_tx(c, snap_tx, &a);
    }
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return rc;
}

typedef struct acct_arg {
    APB(BatchGetAccountsResponse) *resp;
} acct_arg;

static int acct_tx(pg_conn *tx, void *arg) {
    APB(BatchGetAccountsResponse) *r = ((acct_arg *)arg)->resp;
    for (size_t i = 0; i < r->n_accounts; i++) {
        const APB(Account) *a = r->accounts[i];
        if (a == NULL || !pg_id_valid(a->hub_id)) continue;
        int rc = store_account_upsert(tx, a->hub_id, a->sensitive_data_enabled, false, a->version);
        if (rc == 0 && a->sensitive_data_enabled) rc = conn_restrict_sensitive_source(tx, a->hub_id, ""); /* CONN-05 */
        if (rc != 0) return rc;
    }
    return store_notify_change(tx);
}

static int fetch_accounts(op_call *cl, pg_conn *c) {
    APB(BatchGetAccountsRequest) req = ORGMESH__ACCOUNTS__V1__BATCH_GET_ACCOUNTS_REQUEST__INIT;
    req.hub_ids = cl->need_ids;
    req.n_hub_ids = (size_t)cl->n_need_ids;
    APB(BatchGetAccountsResponse) *resp = NULL;
    int rc = peer_call(cl, "accounts", "/orgmesh.accounts.v1.AccountsInternalService/BatchGetAccounts", &req.base,
                       &orgmesh__accounts__v1__batch_get_accounts_response__descriptor, (ProtobufCMessage **)&resp,
                       false);
    if (rc != 0) return rc;
    acct_arg a = {resp};
    rc = pg_tx(c, acct_tx, &a);
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return rc;
}

static int memb_put(pg_conn *tx, const CopiesMembership *m, void *arg) {
    (void)arg;
    return copies_membership_put(tx, m, false, m->version);
}

static int memb_done(pg_conn *tx, void *arg) {
    (void)arg;
    return store_notify_change(tx);
}

/* The actor's memberships (roles for CONN-08). */
static int fetch_memberships(op_call *cl, pg_conn *c) {
    return copies_fetch_memberships(cl->ctx, c, cl->actor->user_id, memb_put, memb_done, NULL);
}

/* op_def.fetch: what the last attempt found missing (SPEC 2). */
static int conn_fetch(rpc_ctx *ctx, op_call *cl, void *arg) {
    (void)ctx;
    (void)arg;
    int rc = 0;
    if ((cl->need & NEED_ORG) && (rc = fetch_org(cl, cl->db)) != 0) {
        if (rc == OM_E_NOT_FOUND && cl->err != rc)
            return op_fail(cl, rc, "organization %s not found", cl->need_key ? cl->need_key : "");
        return rc;
    }
    if ((cl->need & NEED_ACCOUNTS) && (rc = fetch_accounts(cl, cl->db)) != 0) return rc;
    if ((cl->need & NEED_MEMBERSHIPS) && (rc = fetch_memberships(cl, cl->db)) != 0) return rc;
    return 0;
}

/* ---- the organization's state, read inside the transaction ---- */

static int member_index(const org_state *st, uint64_t hub) {
    for (int i = 0; i < st->n; i++)
        if (st->hubs[i] == hub) return i;
    return -1;
}

/* Reads the copy of the organization (locked for a mutation), its members,
 * their sensitivity and its connections. */
static int load_org(op_call *cl, pg_conn *tx, const char *org_id, org_state *st) {
    cl->need_key = org_id;
    int rc = cl->def->mutation ? store_org_lock(tx, org_id, &st->o) : store_org_get(tx, org_id, false, &st->o);
    if (rc == OM_E_NOT_FOUND || (rc == 0 && st->o.version == 0)) {
        if (!(cl->fetched & NEED_ORG)) {
            return op_need(cl, NEED_ORG);
        }
        return op_fail(cl, OM_E_NOT_FOUND, "organization %s not found", org_id);
    }
    if (rc != 0) return rc;
    if (st->o.deleted) return op_fail(cl, OM_E_NOT_FOUND, "organization %s was deleted", org_id);
    if ((rc = store_org_members(tx, org_id, st->hubs, CONN_MAX_MEMBERS_READ, &st->n)) != 0) return rc;
    bool known[CONN_MAX_MEMBERS_READ];
    if ((rc = store_sensitivity(tx, st->hubs, st->n, known, st->sensitive)) != 0) return rc;
    for (int i = 0; i < st->n; i++)
        if (!known[i]) op_need_id(cl, st->hubs[i]);
    if (cl->n_need_ids > 0 && !(cl->fetched & NEED_ACCOUNTS)) {
        return op_need(cl, NEED_ACCOUNTS);
    }
    return store_conns_of_org(tx, org_id, st->rows, CONN_MAX_ROWS, &st->nrows);
}

/* Defect 5 (AIP-193): a user who is a member of no account of the
 * organization may not know it exists: NOT_FOUND, worded as for an id that
 * does not exist (`hidden`, or "organization <id> not found"). */
static int require_visible(op_call *cl, pg_conn *tx, const org_state *st, const char *hidden) {
    if (cl->actor->user_id == 0) return 0;
    bool known[CONN_MAX_MEMBERS_READ], member[CONN_MAX_MEMBERS_READ];
    unsigned roles[CONN_MAX_MEMBERS_READ], seats[CONN_MAX_MEMBERS_READ];
    int rc = copies_memberships_get(tx, cl->actor->user_id, st->hubs, st->n, known, roles, seats, member);
    if (rc != 0) return rc;
    bool missing = false;
    for (int i = 0; i < st->n; i++) {
        if (member[i]) return 0;
        missing = missing || !known[i];
    }
    if (missing && !(cl->fetched & NEED_MEMBERSHIPS)) {
        return op_need(cl, NEED_MEMBERSHIPS);
    }
    if (hidden != NULL) return op_fail(cl, OM_E_NOT_FOUND, "%s", hidden);
    return op_fail(cl, OM_E_NOT_FOUND, "organization %s not found", st->o.id);
}

/* CONN-08 -> ORG-08: SUPER_ADMIN or PARTNER_ADMIN in an account of the
 * organization (service identities may read too); a member of one of its
 * accounts without either role: PERMISSION_DENIED; anyone else NOT_FOUND. */
static int require_viewer(op_call *cl, pg_conn *tx, const org_state *st, const char *hidden) {
    if (cl->actor->user_id == 0) return 0;
    int rc = require_visible(cl, tx, st, hidden);
    if (rc != 0) return rc;
    bool known[CONN_MAX_MEMBERS_READ];
    unsigned roles[CONN_MAX_MEMBERS_READ], seats[CONN_MAX_MEMBERS_READ];
    if ((rc = copies_memberships_get(tx, cl->actor->user_id, st->hubs, st->n, known, roles, seats, NULL)) != 0) return rc;
    for (int i = 0; i < st->n; i++)
        if (roles[i] & (CONN_ROLE_SUPER_ADMIN | CONN_ROLE_PARTNER_ADMIN)) return 0;
    return op_fail(cl, OM_E_PERMISSION_DENIED,
                   "only super admin or partner admin users of an account of the organization can view it (CONN-08, ORG-08)");
}

/* CONN-08: acting from an account of the organization, SUPER_ADMIN in every
 * account of it (after require_visible: AIP-193). */
static int require_manager(op_call *cl, pg_conn *tx, const org_state *st, uint64_t acting, const char *hidden) {
    if (cl->actor->user_id == 0)
        return op_fail(cl, OM_E_PERMISSION_DENIED, "connections are managed by users, not by services (CONN-08)");
    int rc = require_visible(cl, tx, st, hidden);
    if (rc != 0) return rc;
    if (member_index(st, acting) < 0)
        return op_fail(cl, OM_E_NOT_IN_ORGANIZATION, "acting account %" PRIu64 " is not in organization %s (CONN-08)",
                       acting, st->o.id);
    bool known[CONN_MAX_MEMBERS_READ];
    unsigned roles[CONN_MAX_MEMBERS_READ], seats[CONN_MAX_MEMBERS_READ];
    rc = copies_memberships_get(tx, cl->actor->user_id, st->hubs, st->n, known, roles, seats, NULL);
    if (rc != 0) return rc;
    for (int i = 0; i < st->n; i++) {
        if (roles[i] & CONN_ROLE_SUPER_ADMIN) continue;
        if (!known[i] && !(cl->fetched & NEED_MEMBERSHIPS)) {
            return op_need(cl, NEED_MEMBERSHIPS);
        }
        return op_fail(cl, OM_E_NOT_SUPER_ADMIN,
                       "the actor must be super admin in every account of the organization; not in %" PRIu64 " (CONN-08)",
                       st->hubs[i]);
    }
    return 0;
}

/* ---- a configuration change: the plan, its checks, and its application ---- */

typedef struct plan_item {
    conn_cfg cfg;
    int existing; /* index in st->rows, or -1 for a new connection */
    bool removed;
} plan_item;

typedef struct plan {
    plan_item it[CONN_MAX_ROWS];
    int n;
} plan;

static void plan_from(plan *p, const org_state *st) {
    p->n = 0;
    for (int i = 0; i < st->nrows; i++) p->it[p->n++] = (plan_item){.cfg = st->rows[i].cfg, .existing = i};
}

static plan_item *plan_find(plan *p, uint64_t a, uint64_t b) {
    for (int i = 0; i < p->n; i++)
        if (!p->it[i].removed && p->it[i].cfg.a == a && p->it[i].cfg.b == b) return &p->it[i];
    return NULL;
}

static bool cfg_equal(const conn_cfg *x, const conn_cfg *y) {
    return x->mirroring.dir == y->mirroring.dir && x->mirroring.source == y->mirroring.source &&
           x->asset_copying.dir == y->asset_copying.dir && x->asset_copying.source == y->asset_copying.source &&
           x->workflows.dir == y->workflows.dir && x->workflows.source == y->workflows.source;
}

static bool item_changed(const org_state *st, const plan_item *it) {
    if (it->existing < 0) return !it->removed;
    return it->removed || !cfg_equal(&it->cfg, &st->rows[it->existing].cfg);
}

/* CONN-01, CONN-05 over the whole resulting configuration (CONN-04: as a
 * whole, before anything is written). */
static int plan_check(op_call *cl, const org_state *st, const plan *p) {
    for (int i = 0; i < p->n; i++) {
        const plan_item *it = &p->it[i];
        if (it->removed || !item_changed(st, it)) continue;
        int ia = member_index(st, it->cfg.a), ib = member_index(st, it->cfg.b);
        if (ia < 0 || ib < 0)
            return op_fail(cl, OM_E_NOT_IN_ORGANIZATION, "account %" PRIu64 " is not in organization %s (CONN-01)",
                           ia < 0 ? it->cfg.a : it->cfg.b, st->o.id);
        if (!conn_feature_valid(&it->cfg.mirroring, it->cfg.a, it->cfg.b) ||
            !conn_feature_valid(&it->cfg.asset_copying, it->cfg.a, it->cfg.b) ||
            !conn_feature_valid(&it->cfg.workflows, it->cfg.a, it->cfg.b))
            return op_fail(cl, OM_E_INVALID_ARGUMENT,
                           "a ONE_WAY source must be one of the connection's accounts %" PRIu64 " and %" PRIu64 " (CONN-01)",
                           it->cfg.a, it->cfg.b);
        if (conn_sensitive_source(&it->cfg, st->sensitive[ia], st->sensitive[ib])) /* CONN-05, CONN-11 */
            return op_fail(cl, OM_E_SENSITIVE_DATA_SOURCE,
                           "account %" PRIu64 " has sensitive data enabled and cannot be a mirroring or workflow source"
                           " (CONN-05, CONN-11)",
                           st->sensitive[ia] ? it->cfg.a : it->cfg.b);
    }
    return 0;
}

static PbConnection **config_pb(rpc_ctx *ctx, const conn_row *rows, int n) {
    PbConnection **out = rpc_calloc(ctx, (size_t)n + 1, sizeof *out);
    for (int i = 0; i < n; i++) {
        conn_pb *v = rpc_alloc(ctx, sizeof *v);
        v->row = rows[i];
        conn_pb_build(v);
        out[i] = &v->pb;
    }
    return out;
}

typedef struct applied {
    PbConnection **connections;
    size_t n_connections;
    char **created;
    size_t n_created;
    char *token; /* CONN-13: names the commit; "" when nothing was written */
} applied;

/* Applies the plan (or, with validate_only, only describes its result):
 * writes each changed connection, one ConnectionsChanged event and one audit
 * entry per change, and the post-commit cache invalidation. */
static int plan_apply(op_call *cl, pg_conn *tx, org_state *st, plan *p, int origin, uint64_t acting,
                      const char *request_id, bool validate_only, applied *out) {
    int rc = plan_check(cl, st, p);
    if (rc != 0) return rc;
    rpc_ctx *ctx = cl->ctx;
    memset(out, 0, sizeof *out);
    out->token = "";
    if (validate_only) { /* CONN-04: the configuration that would result */
        conn_row *rows = rpc_calloc(ctx, (size_t)p->n + 1, sizeof *rows);
        int n = 0;
        for (int i = 0; i < p->n; i++) {
            if (p->it[i].removed) continue;
            if (p->it[i].existing >= 0) rows[n] = st->rows[p->it[i].existing];
            else snprintf(rows[n].org_id, sizeof rows[n].org_id, "%s", st->o.id);
            rows[n].cfg = p->it[i].cfg;
            n++;
        }
        /* ordered by (account_a, account_b), as ListConnections */
        for (int i = 1; i < n; i++)
            for (int j = i; j > 0 && (rows[j].cfg.a < rows[j - 1].cfg.a ||
                                      (rows[j].cfg.a == rows[j - 1].cfg.a && rows[j].cfg.b < rows[j - 1].cfg.b));
                 j--) {
                conn_row t = rows[j];
                rows[j] = rows[j - 1];
                rows[j - 1] = t;
            }
        out->connections = config_pb(ctx, rows, n);
        out->n_connections = (size_t)n;
        return 0;
    }
    CPB(ConnectionDelta) **deltas = rpc_calloc(ctx, (size_t)p->n + 1, sizeof *deltas);
    size_t nd = 0;
    out->created = rpc_calloc(ctx, (size_t)p->n + 1, sizeof *out->created);
    char resource[96];
    conn_history_resource(st->o.id, resource, sizeof resource);
    for (int i = 0; i < p->n; i++) {
        plan_item *it = &p->it[i];
        if (!item_changed(st, it)) continue;
        conn_pb *before = NULL, *after = NULL;
        const char *action;
        if (it->existing >= 0) {
            before = rpc_calloc(ctx, 1, sizeof *before);
            before->row = st->rows[it->existing];
            conn_pb_build(before);
        }
        if (it->removed) {
            action = "connection.delete";
            rc = store_conn_delete(tx, before->row.id);
        } else {
            after = rpc_calloc(ctx, 1, sizeof *after);
            after->row = it->existing >= 0 ? st->rows[it->existing] : (conn_row){0};
            snprintf(after->row.org_id, sizeof after->row.org_id, "%s", st->o.id);
            after->row.cfg = it->cfg;
            if (it->existing >= 0) {
                action = "connection.update";
                rc = store_conn_update(tx, &after->row);
            } else {
                action = "connection.create";
                rc = store_conn_insert(tx, &after->row);
                if (rc == OM_E_ALREADY_EXISTS)
                    return op_fail(cl, rc, "accounts %" PRIu64 " and %" PRIu64 " are already connected (CONN-01)",
                                   it->cfg.a, it->cfg.b);
                if (rc == 0) out->created[out->n_created++] = rpc_strdup(ctx, after->row.id);
            }
            if (rc == 0) conn_pb_build(after);
        }
        if (rc != 0) return rc;
        CPB(ConnectionDelta) *d = rpc_alloc(ctx, sizeof *d);
        orgmesh__connections__v1__connection_delta__init(d);
        d->before = before ? &before->pb : NULL;
        d->after = after ? &after->pb : NULL;
        deltas[nd++] = d;
        audit_entry e = {.actor = cl->actor, .action = action, .resource = resource,
                         .before = before ? &before->pb.base : NULL, .after = after ? &after->pb.base : NULL,
                         .request_id = request_id, .trace_id = rpc_trace_id(ctx)};
        if ((rc = audit_record(tx, &e)) != 0) return rc;
    }
    int nrows = 0;
    conn_row *rows = rpc_calloc(ctx, CONN_MAX_ROWS, sizeof *rows);
    if ((rc = store_conns_of_org(tx, st->o.id, rows, CONN_MAX_ROWS, &nrows)) != 0) return rc;
    out->connections = config_pb(ctx, rows, nrows);
    out->n_connections = (size_t)nrows;
    if (nd == 0) return 0; /* nothing changed: no event */
    st->o.config_version++;
    if ((rc = store_org_set_config_version(tx, st->o.id, st->o.config_version)) != 0) return rc;
    char actor[64];
    audit_actor_string(cl->actor, NULL, actor, sizeof actor);
    CPB(ConnectionsChanged) ev = ORGMESH__CONNECTIONS__V1__CONNECTIONS_CHANGED__INIT;
    ev.organization_id = st->o.id;
    ev.origin = (CPB(ChangeOrigin))origin;
    ev.n_changes = nd;
    ev.changes = deltas;
    ev.n_connections = out->n_connections;
    ev.connections = out->connections;
    ev.actor = actor;
    ev.acting_hub_id = acting;
    ev.request_id = (char *)(request_id ? request_id : "");
    char subject[64];
    snprintf(subject, sizeof subject, "connections/%s", st->o.id);
    evt_meta meta = {.subject = subject, .version = st->o.config_version, .actor = cl->actor,
                     .trace_id = rpc_trace_id(ctx)};
    char event_id[40];
    if ((rc = evt_emit(tx, &meta, &ev.base, event_id)) != 0) return rc;
    char token[CTOKEN_MAX_LEN];
    if ((rc = ctoken_for_event("connections", event_id, token)) != 0) return rc; /* CONN-13 */
    if ((out->token = rpc_strdup(ctx, token)) == NULL) return OM_E_NOMEM;
    return store_notify_change(tx); /* CONN-09: every replica's cache, after commit */
}

/* ---- ListConnections, GetConnection (CONN-08 -> ORG-08) ---- */

static int apply_list(op_call *cl, pg_conn *tx) {
    const CPB(ListConnectionsRequest) *req = cl->req;
    CPB(ListConnectionsResponse) *resp = (void *)cl->resp;
    org_state *st = rpc_calloc(cl->ctx, 1, sizeof *st);
    int rc = load_org(cl, tx, req->organization_id, st);
    if (rc == 0) rc = require_viewer(cl, tx, st, NULL);
    if (rc != 0) return rc;
    int limit = 0;
    page_size_normalize(req->page_size, &limit);
    char *scope = rpc_sprintf(cl->ctx, "connections.ListConnections|%s|%" PRIu64, req->organization_id, req->hub_id);
    char *cursor = NULL;
    if ((rc = page_token_decode(scope, req->page_token, &cursor)) != 0) return op_fail(cl, rc, "invalid page token");
    uint64_t ca = 0, cb = 0;
    if (cursor) sscanf(cursor, "%" SCNu64 "-%" SCNu64, &ca, &cb);
    free(cursor);
    conn_row *rows = rpc_calloc(cl->ctx, (size_t)st->nrows + 1, sizeof *rows);
    int n = 0;
    bool more = false;
    for (int i = 0; i < st->nrows; i++) {
        const conn_row *r = &st->rows[i];
        if (req->hub_id != 0 && r->cfg.a != req->hub_id && r->cfg.b != req->hub_id) continue;
        if (r->cfg.a < ca || (r->cfg.a == ca && r->cfg.b <= cb)) continue;
        if (n == limit) {
            more = true;
            break;
        }
        rows[n++] = *r;
    }
    resp->connections = config_pb(cl->ctx, rows, n);
    resp->n_connections = (size_t)n;
    resp->next_page_token = "";
    if (more) {
        char cur[48], *tok = NULL;
        snprintf(cur, sizeof cur, "%" PRIu64 "-%" PRIu64, rows[n - 1].cfg.a, rows[n - 1].cfg.b);
        if (page_token_encode(scope, cur, &tok) == 0) {
            resp->next_page_token = rpc_strdup(cl->ctx, tok);
            free(tok);
        }
    }
    return 0;
}

static const op_def list_def = {.apply = apply_list, .fetch = conn_fetch};
/* ListConnections — CONN-08 (viewing as ORG-08). */
static int h_list(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp) {
    const CPB(ListConnectionsRequest) *req = (const void *)req_;
    check_org_id(ctx, req->organization_id);
    if (req->hub_id != 0 && !pg_id_valid(req->hub_id)) rpc_violation(ctx, "hub_id", "is out of range");
    int limit;
    if (page_size_normalize(req->page_size, &limit) != 0) rpc_violation(ctx, "page_size", "must not be negative");
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    return op_run(ctx, &list_def, req, resp, NULL);
}

static int apply_get(op_call *cl, pg_conn *tx) {
    const CPB(GetConnectionRequest) *req = cl->req;
    CPB(GetConnectionResponse) *resp = (void *)cl->resp;
    conn_row *r = rpc_calloc(cl->ctx, 1, sizeof *r);
    int rc = store_conn_get(tx, req->connection_id, r);
    if (rc == OM_E_NOT_FOUND) return op_fail(cl, rc, "connection %s not found", req->connection_id);
    if (rc != 0) return rc;
    org_state *st = rpc_calloc(cl->ctx, 1, sizeof *st);
    char *org = rpc_strdup(cl->ctx, r->org_id);
    if ((rc = load_org(cl, tx, org, st)) != 0) return rc;
    const char *hidden = rpc_sprintf(cl->ctx, "connection %s not found", req->connection_id);
    if ((rc = require_viewer(cl, tx, st, hidden)) != 0) return rc; /* AIP-193 */
    resp->connection = config_pb(cl->ctx, r, 1)[0];
    return 0;
}

static const op_def get_def = {.apply = apply_get, .fetch = conn_fetch};
/* GetConnection — CONN-08 (viewing as ORG-08). */
static int h_get(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp) {
    const CPB(GetConnectionRequest) *req = (const void *)req_;
    if (!conn_uuid_valid(req->connection_id)) rpc_violation(ctx, "connection_id", "is not a connection id");
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    return op_run(ctx, &get_def, req, resp, NULL);
}

/* ---- QuickConnect (CONN-02) ---- */

static int apply_quick(op_call *cl, pg_conn *tx) {
    const CPB(QuickConnectRequest) *req = cl->req;
    CPB(QuickConnectResponse) *resp = (void *)cl->resp;
    org_state *st = rpc_calloc(cl->ctx, 1, sizeof *st);
    int rc = load_org(cl, tx, req->organization_id, st);
    if (rc == 0) rc = require_manager(cl, tx, st, req->acting_hub_id, NULL); /* CONN-08 */
    if (rc != 0) return rc;
    plan *p = rpc_calloc(cl->ctx, 1, sizeof *p);
    plan_from(p, st);
    /* CONN-02: every pair, every feature BOTH, replacing what was there —
     * except where CONN-05 forbids a direction. */
    for (int i = 0; i < st->n; i++)
        for (int j = 0; j < st->n; j++) {
            if (st->hubs[i] >= st->hubs[j]) continue;
            conn_cfg c = conn_quick_connect(st->hubs[i], st->hubs[j], st->sensitive[i], st->sensitive[j]);
            plan_item *it = plan_find(p, c.a, c.b);
            if (it != NULL) it->cfg = c;
            else if (p->n < CONN_MAX_ROWS) p->it[p->n++] = (plan_item){.cfg = c, .existing = -1};
        }
    applied out;
    rc = plan_apply(cl, tx, st, p, ORGMESH__CONNECTIONS__V1__CHANGE_ORIGIN__CHANGE_ORIGIN_QUICK_CONNECT,
                    req->acting_hub_id, req->request_id, req->validate_only, &out);
    if (rc != 0) return rc;
    resp->connections = out.connections;
    resp->n_connections = out.n_connections;
    resp->consistency_token = out.token;
    return 0;
}

static const op_def quick_def = {.apply = apply_quick, .mutation = true, .fetch = conn_fetch};
/* QuickConnect — CONN-02, CONN-05, CONN-04 (validate_only), CONN-08. */
static int h_quick(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp) {
    const CPB(QuickConnectRequest) *req = (const void *)req_;
    check_org_id(ctx, req->organization_id);
    op_check_id(ctx, "acting_hub_id", req->acting_hub_id);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    return op_run(ctx, &quick_def, req, resp, NULL);
}

/* ---- AddConnections (CONN-03) ---- */

/* A ONE_WAY setting without a source names from_hub_id (CONN-03). */
static conn_feature add_feature(const PbFeature *f, uint64_t from) {
    conn_feature x = feature_of(f, (conn_feature){CONN_DIR_OFF, 0});
    if (x.dir == CONN_DIR_ONE_WAY && x.source == 0) x.source = from;
    return x;
}

static int apply_add(op_call *cl, pg_conn *tx) {
    const CPB(AddConnectionsRequest) *req = cl->req;
    CPB(AddConnectionsResponse) *resp = (void *)cl->resp;
    org_state *st = rpc_calloc(cl->ctx, 1, sizeof *st);
    int rc = load_org(cl, tx, req->organization_id, st);
    if (rc == 0) rc = require_manager(cl, tx, st, req->acting_hub_id, NULL); /* CONN-08 */
    if (rc != 0) return rc;
    /* CONN-01: all_features applies one setting to every feature (CONN-10). */
    const PbFeature *mf = req->all_features ? req->all_features : req->mirroring;
    const PbFeature *af = req->all_features ? req->all_features : req->asset_copying;
    const PbFeature *wf = req->all_features ? req->all_features : req->workflows;
    plan *p = rpc_calloc(cl->ctx, 1, sizeof *p);
    plan_from(p, st);
    for (size_t i = 0; i < req->n_to_hub_ids; i++) {
        conn_cfg c = {0};
        conn_pair(req->from_hub_id, req->to_hub_ids[i], &c.a, &c.b);
        if (plan_find(p, c.a, c.b) != NULL)
            return op_fail(cl, OM_E_ALREADY_EXISTS, "accounts %" PRIu64 " and %" PRIu64 " are already connected (CONN-01)",
                           c.a, c.b);
        c.mirroring = add_feature(mf, req->from_hub_id);
        c.asset_copying = add_feature(af, req->from_hub_id);
        c.workflows = add_feature(wf, req->from_hub_id);
        p->it[p->n++] = (plan_item){.cfg = c, .existing = -1};
    }
    applied out;
    rc = plan_apply(cl, tx, st, p, ORGMESH__CONNECTIONS__V1__CHANGE_ORIGIN__CHANGE_ORIGIN_ADD_CONNECTIONS,
                    req->acting_hub_id, req->request_id, req->validate_only, &out);
    if (rc != 0) return rc;
    resp->connections = out.connections;
    resp->n_connections = out.n_connections;
    resp->consistency_token = out.token;
    resp->created_connection_ids = out.created;
    resp->n_created_connection_ids = out.n_created;
    return 0;
}

static const op_def add_def = {.apply = apply_add, .mutation = true, .fetch = conn_fetch};
/* AddConnections — CONN-03, CONN-01, CONN-04, CONN-05, CONN-08. */
static int h_add(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp) {
    const CPB(AddConnectionsRequest) *req = (const void *)req_;
    check_org_id(ctx, req->organization_id);
    op_check_id(ctx, "acting_hub_id", req->acting_hub_id);
    op_check_id(ctx, "from_hub_id", req->from_hub_id);
    if (req->n_to_hub_ids < 1 || req->n_to_hub_ids > MAX_ADD)
        rpc_violation(ctx, "to_hub_ids", "must name 1 to %d accounts", MAX_ADD);
    for (size_t i = 0; i < req->n_to_hub_ids && i < MAX_BATCH; i++) {
        char f[32];
        snprintf(f, sizeof f, "to_hub_ids[%zu]", i);
        op_check_id(ctx, f, req->to_hub_ids[i]);
        if (req->to_hub_ids[i] != 0 && req->to_hub_ids[i] == req->from_hub_id)
            rpc_violation(ctx, f, "repeats from_hub_id: a connection links two different accounts (SAME_ACCOUNT)");
        for (size_t j = 0; j < i; j++)
            if (req->to_hub_ids[j] == req->to_hub_ids[i]) rpc_violation(ctx, f, "repeats an account");
    }
    if (req->all_features && (req->mirroring || req->asset_copying || req->workflows))
        rpc_violation(ctx, "all_features", "cannot be combined with mirroring, asset_copying or workflows");
    check_setting(ctx, "mirroring", req->mirroring);
    check_setting(ctx, "asset_copying", req->asset_copying);
    check_setting(ctx, "workflows", req->workflows);
    check_setting(ctx, "all_features", req->all_features);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    return op_run(ctx, &add_def, req, resp, NULL);
}

/* ---- BatchUpdateConnections (CONN-04) ---- */

static int etag_matches(op_call *cl, const char *etag, const conn_row *r) {
    int64_t v;
    if (etag == NULL || etag[0] == '\0') return 0;
    if (conn_etag_decode(etag, &v) != 0 || v != r->version)
        return op_fail(cl, OM_E_ETAG_MISMATCH, "connection %s changed since it was read", r->id);
    return 0;
}

static int apply_batch(op_call *cl, pg_conn *tx) {
    const CPB(BatchUpdateConnectionsRequest) *req = cl->req;
    CPB(BatchUpdateConnectionsResponse) *resp = (void *)cl->resp;
    org_state *st = rpc_calloc(cl->ctx, 1, sizeof *st);
    int rc = load_org(cl, tx, req->organization_id, st);
    if (rc == 0) rc = require_manager(cl, tx, st, req->acting_hub_id, NULL); /* CONN-08 */
    if (rc != 0) return rc;
    plan *p = rpc_calloc(cl->ctx, 1, sizeof *p);
    plan_from(p, st);
    for (size_t i = 0; i < req->n_changes; i++) {
        const CPB(ConnectionChange) *ch = req->changes[i];
        uint64_t a, b;
        conn_pair(ch->account_a, ch->account_b, &a, &b);
        plan_item *it = plan_find(p, a, b);
        const PbFeature *mf = ch->all_features ? ch->all_features : ch->mirroring;
        const PbFeature *af = ch->all_features ? ch->all_features : ch->asset_copying;
        const PbFeature *wf = ch->all_features ? ch->all_features : ch->workflows;
        switch (ch->operation) {
        case ORGMESH__CONNECTIONS__V1__CONNECTION_CHANGE__OPERATION__OPERATION_CREATE:
            if (it != NULL)
                return op_fail(cl, OM_E_ALREADY_EXISTS,
                               "changes[%zu]: accounts %" PRIu64 " and %" PRIu64 " are already connected", i, a, b);
            if (p->n >= CONN_MAX_ROWS) return op_fail(cl, OM_E_BATCH_TOO_LARGE, "too many connections");
            p->it[p->n++] = (plan_item){.cfg = {.a = a, .b = b,
                                                .mirroring = feature_of(mf, (conn_feature){CONN_DIR_OFF, 0}),
                                                .asset_copying = feature_of(af, (conn_feature){CONN_DIR_OFF, 0}),
                                                .workflows = feature_of(wf, (conn_feature){CONN_DIR_OFF, 0})},
                                        .existing = -1};
            break;
        case ORGMESH__CONNECTIONS__V1__CONNECTION_CHANGE__OPERATION__OPERATION_UPDATE:
        case ORGMESH__CONNECTIONS__V1__CONNECTION_CHANGE__OPERATION__OPERATION_DELETE:
            if (it == NULL || it->existing < 0)
                return op_fail(cl, OM_E_NOT_FOUND, "changes[%zu]: accounts %" PRIu64 " and %" PRIu64 " are not connected",
                               i, a, b);
            if ((rc = etag_matches(cl, ch->etag, &st->rows[it->existing])) != 0) return rc;
            if (ch->operation == ORGMESH__CONNECTIONS__V1__CONNECTION_CHANGE__OPERATION__OPERATION_DELETE) {
                it->removed = true;
            } else {
                it->cfg.mirroring = feature_of(mf, it->cfg.mirroring);
                it->cfg.asset_copying = feature_of(af, it->cfg.asset_copying);
                it->cfg.workflows = feature_of(wf, it->cfg.workflows);
            }
            break;
        default: return op_fail(cl, OM_E_INVALID_ARGUMENT, "changes[%zu].operation must be set", i);
        }
    }
    applied out;
    rc = plan_apply(cl, tx, st, p, ORGMESH__CONNECTIONS__V1__CHANGE_ORIGIN__CHANGE_ORIGIN_BATCH_UPDATE,
                    req->acting_hub_id, req->request_id, req->validate_only, &out);
    if (rc != 0) return rc;
    resp->connections = out.connections;
    resp->n_connections = out.n_connections;
    resp->consistency_token = out.token;
    return 0;
}

static const op_def batch_def = {.apply = apply_batch, .mutation = true, .fetch = conn_fetch};
/* BatchUpdateConnections — CONN-04 (atomic), CONN-01, CONN-05, CONN-08. */
static int h_batch(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp) {
    const CPB(BatchUpdateConnectionsRequest) *req = (const void *)req_;
    check_org_id(ctx, req->organization_id);
    op_check_id(ctx, "acting_hub_id", req->acting_hub_id);
    if (req->n_changes > MAX_BATCH) return rpc_fail(ctx, OM_E_BATCH_TOO_LARGE, "at most %d changes per batch", MAX_BATCH);
    if (req->n_changes == 0) rpc_violation(ctx, "changes", "must hold at least one change");
    for (size_t i = 0; i < req->n_changes; i++) {
        const CPB(ConnectionChange) *ch = req->changes[i];
        char f[64];
        if (ch->operation < 1 || ch->operation > 3) {
            snprintf(f, sizeof f, "changes[%zu].operation", i);
            rpc_violation(ctx, f, "must be CREATE, UPDATE or DELETE");
        }
        snprintf(f, sizeof f, "changes[%zu].account_a", i);
        op_check_id(ctx, f, ch->account_a);
        snprintf(f, sizeof f, "changes[%zu].account_b", i);
        op_check_id(ctx, f, ch->account_b);
        if (ch->account_a != 0 && ch->account_a == ch->account_b)
            rpc_violation(ctx, f, "equals account_a: a connection links two different accounts (SAME_ACCOUNT)");
        for (size_t j = 0; j < i; j++) {
            const CPB(ConnectionChange) *o = req->changes[j];
            if ((o->account_a == ch->account_a && o->account_b == ch->account_b) ||
                (o->account_a == ch->account_b && o->account_b == ch->account_a)) {
                snprintf(f, sizeof f, "changes[%zu]", i);
                rpc_violation(ctx, f, "repeats the pair of changes[%zu]: at most one change per pair", j);
                break;
            }
        }
        if (ch->all_features && (ch->mirroring || ch->asset_copying || ch->workflows)) {
            snprintf(f, sizeof f, "changes[%zu].all_features", i);
            rpc_violation(ctx, f, "cannot be combined with mirroring, asset_copying or workflows");
        }
        snprintf(f, sizeof f, "changes[%zu].mirroring", i);
        check_setting(ctx, f, ch->mirroring);
        snprintf(f, sizeof f, "changes[%zu].asset_copying", i);
        check_setting(ctx, f, ch->asset_copying);
        snprintf(f, sizeof f, "changes[%zu].workflows", i);
        check_setting(ctx, f, ch->workflows);
        snprintf(f, sizeof f, "changes[%zu].all_features", i);
        check_setting(ctx, f, ch->all_features);
        snprintf(f, sizeof f, "changes[%zu].etag", i);
        check_etag(ctx, f, ch->etag);
    }
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    return op_run(ctx, &batch_def, req, resp, NULL);
}

/* ---- DeleteConnection ---- */

static int apply_delete(op_call *cl, pg_conn *tx) {
    const CPB(DeleteConnectionRequest) *req = cl->req;
    CPB(DeleteConnectionResponse) *resp = (void *)cl->resp;
    conn_row r;
    int rc = store_conn_get(tx, req->connection_id, &r);
    if (rc == OM_E_NOT_FOUND) return op_fail(cl, rc, "connection %s not found", req->connection_id);
    if (rc != 0) return rc;
    org_state *st = rpc_calloc(cl->ctx, 1, sizeof *st);
    char *org = rpc_strdup(cl->ctx, r.org_id);
    if ((rc = load_org(cl, tx, org, st)) != 0) return rc;
    const char *hidden = rpc_sprintf(cl->ctx, "connection %s not found", req->connection_id);
    if ((rc = require_manager(cl, tx, st, req->acting_hub_id, hidden)) != 0) return rc; /* CONN-08, AIP-193 */
    plan *p = rpc_calloc(cl->ctx, 1, sizeof *p);
    plan_from(p, st);
    plan_item *it = plan_find(p, r.cfg.a, r.cfg.b);
    if (it == NULL) return op_fail(cl, OM_E_NOT_FOUND, "connection %s not found", req->connection_id);
    if ((rc = etag_matches(cl, req->etag, &st->rows[it->existing])) != 0) return rc;
    it->removed = true;
    applied out;
    rc = plan_apply(cl, tx, st, p, ORGMESH__CONNECTIONS__V1__CHANGE_ORIGIN__CHANGE_ORIGIN_DELETE_CONNECTION,
                    req->acting_hub_id, req->request_id, req->validate_only, &out);
    if (rc != 0) return rc;
    resp->connections = out.connections;
    resp->n_connections = out.n_connections;
    resp->consistency_token = out.token;
    return 0;
}

static const op_def delete_def = {.apply = apply_delete, .mutation = true, .fetch = conn_fetch};
/* DeleteConnection — CONN-04 (validate_only, etag), CONN-08. */
static int h_delete(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp) {
    const CPB(DeleteConnectionRequest) *req = (const void *)req_;
    if (!conn_uuid_valid(req->connection_id)) rpc_violation(ctx, "connection_id", "is not a connection id");
    op_check_id(ctx, "acting_hub_id", req->acting_hub_id);
    check_etag(ctx, "etag", req->etag);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    return op_run(ctx, &delete_def, req, resp, NULL);
}

/* ---- ListConnectionHistory ---- */

static int apply_history(op_call *cl, pg_conn *tx) {
    const CPB(ListConnectionHistoryRequest) *req = cl->req;
    CPB(ListConnectionHistoryResponse) *resp = (void *)cl->resp;
    rpc_ctx *ctx = cl->ctx;
    org_state *st = rpc_calloc(ctx, 1, sizeof *st);
    int rc = load_org(cl, tx, req->organization_id, st);
    if (rc == 0) rc = require_viewer(cl, tx, st, NULL);
    if (rc != 0) return rc;
    page_req pg;
    char *scope = rpc_sprintf(ctx, "connections.ListConnectionHistory|%s", req->organization_id);
    if ((rc = page_read(req->page_size, req->page_token, scope, 1, &pg)) != 0)
        return op_fail(cl, rc, "invalid page token");
    char resource[96];
    conn_history_resource(req->organization_id, resource, sizeof resource);
    history_req q = {.page = &pg, .scope = HISTORY_RESOURCE, .resource = resource};
    history_out h;
    if ((rc = history_list(ctx, tx, &q, &h)) != 0) return rc;
    resp->entries = h.entries;
    resp->n_entries = h.n;
    resp->next_page_token = h.next_page_token;
    return 0;
}

static const op_def history_def = {.apply = apply_history, .fetch = conn_fetch};
/* ListConnectionHistory — SPEC 8 audit, CONN-05/CONN-09 automatic changes; CONN-08 viewing. */
static int h_history(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp) {
    const CPB(ListConnectionHistoryRequest) *req = (const void *)req_;
    check_org_id(ctx, req->organization_id);
    int limit;
    if (page_size_normalize(req->page_size, &limit) != 0) rpc_violation(ctx, "page_size", "must not be negative");
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    return op_run(ctx, &history_def, req, resp, NULL);
}

/* ---- the hot checks (CONN-05, CONN-06, CONN-07, CONN-09) ---- */

/* ---- consistency (CONN-13) ---- */

#define CONS(x) ORGMESH__CONNECTIONS__V1__CONSISTENCY__REQUIREMENT_##x
#define FRESH_SLICE_MS 50 /* re-look at least this often (a lost wake-up, a broken LISTEN) */
#define FRESH_MARGIN_MS 20
#define FRESH_SLOW_MS 250 /* log waits longer than this */
#define FRESH_SHORT_MS 5  /* the wait of a check beyond the waiting bound */ /* leave this much of the caller's deadline to answer */

static int64_t mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* CONN-13: waits (bounded) until this service has applied every event of
 * the token that its checks depend on — those of the accounts and
 * organizations services, whose copies the checks read. A commit of this
 * service is in its database already (it committed before the token was
 * returned), and the events of other services change nothing the checks
 * read. The wait is a condition variable woken after every commit that
 * applied an event (NOTIFY connections_applied / connections_cache), with a
 * FRESH_SLICE_MS re-look as a safety net. */
static int fresh_look(rpc_ctx *ctx, pg_conn *c, const ctoken *t, bool *all) {
    *all = true;
    for (int i = 0; i < t->n && *all; i++) {
        if (t->ev[i].service != CTOKEN_ACCOUNTS && t->ev[i].service != CTOKEN_ORGANIZATIONS) continue;
        char id[37];
        ctoken_event_uuid(&t->ev[i], id);
        int rc = store_event_applied(c, id, all);
        if (rc != 0) return rpc_fail(ctx, rc, NULL);
    }
    return 0;
}

static int fresh_wait(rpc_ctx *ctx, const ctoken *t) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    /* older than applied_events is kept: applied (or given up) long ago */
    if ((int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000 - t->issued_ms > applied_retention_ms) return 0;
    pg_conn *c = op_db(ctx);
    if (c == NULL) return OM_E_UNAVAILABLE;
    bool all;
    int rc = fresh_look(ctx, c, t, &all);
    if (rc != 0 || all) return rc;
    /* The consumers that apply the events run on the same worker pool as
     * this check: never let waiting checks hold every worker (they would
     * wait for events no worker is left to apply). Beyond ORGMESH_WORKERS
     * - 2 waiting checks, one more waits only FRESH_SHORT_MS (as long as a
     * slow query holds a worker), so a consumer job always gets a worker
     * soon. */
    bool over = atomic_fetch_add(&fresh_waiters, 1) >= fresh_max_waiters;
    int64_t budget = rpc_time_left_ms(ctx) - FRESH_MARGIN_MS;
    if (budget > fresh_wait_ms) budget = fresh_wait_ms;
    if (over && budget > FRESH_SHORT_MS) budget = FRESH_SHORT_MS;
    int64_t start = mono_ms();
    for (;;) {
        uint64_t epoch = conn_fresh_epoch(); /* before looking: no lost wake-up */
        if ((rc = fresh_look(ctx, c, t, &all)) != 0 || all) break;
        int64_t rest = budget - (mono_ms() - start);
        if (rest <= 0) {
            rc = rpc_fail(ctx, OM_E_CONSISTENCY_NOT_REACHED,
                          over ? "too many checks are waiting for their consistency tokens; retry"
                               : "the change the consistency token names has not reached the connections service yet; retry");
            break;
        }
        conn_fresh_wait(epoch, rest < FRESH_SLICE_MS ? rest : FRESH_SLICE_MS);
    }
    atomic_fetch_sub(&fresh_waiters, 1);
    int64_t waited = mono_ms() - start;
    if (waited > FRESH_SLOW_MS) log_info("CONN-13: a check waited %" PRId64 " ms for its consistency token", waited);
    return rc;
}

/* CONN-13: minimize_latency (unset: the default) answers from the cache;
 * fully_consistent and at_least_as_fresh (after fresh_wait) read the
 * committed state on a worker (*through). 0, RPC_DEFER, or the call failed. */
static int consistency_begin(rpc_ctx *ctx, const CPB(Consistency) *c, bool *through) {
    *through = false;
    if (c == NULL || c->requirement_case == CONS(MINIMIZE_LATENCY) || c->requirement_case == CONS(_NOT_SET)) return 0;
    ctoken t;
    if (c->requirement_case == CONS(AT_LEAST_AS_FRESH) && ctoken_decode(c->at_least_as_fresh, &t) != 0)
        return rpc_fail(ctx, OM_E_INVALID_CONSISTENCY_TOKEN,
                        "consistency.at_least_as_fresh is not a consistency token of this cluster");
    if (!rpc_on_worker(ctx)) return RPC_DEFER;
    *through = true;
    return c->requirement_case == CONS(AT_LEAST_AS_FRESH) ? fresh_wait(ctx, &t) : 0;
}

/* Facts of S->T: from the cache inline (unless `through`); on a worker from
 * PostgreSQL, filling the cache. Returns RPC_DEFER on an inline miss. */
static int facts_of(rpc_ctx *ctx, bool through, uint64_t s, uint64_t t, conn_facts *f) {
    if (!through && conn_cache_get_facts(s, t, f)) return 0;
    if (!rpc_on_worker(ctx)) return RPC_DEFER;
    uint64_t gen = conn_cache_gen(); /* before the read: see connections_cache.h */
    pg_conn *c = op_db(ctx);
    if (c == NULL) return OM_E_UNAVAILABLE;
    int rc = store_facts(c, s, t, f);
    if (rc != 0) return rpc_fail(ctx, rc, NULL);
    conn_cache_put_facts(gen, s, t, f);
    return 0;
}

static int seat_of(rpc_ctx *ctx, bool through, uint64_t hub, uint64_t user, conn_seat *seat) {
    if (!through && conn_cache_get_seat(hub, user, seat)) return 0;
    if (!rpc_on_worker(ctx)) return RPC_DEFER;
    uint64_t gen = conn_cache_gen();
    pg_conn *c = op_db(ctx);
    if (c == NULL) return OM_E_UNAVAILABLE;
    int rc = store_seat(c, hub, user, seat);
    if (rc != 0) return rpc_fail(ctx, rc, NULL);
    conn_cache_put_seat(gen, hub, user, seat);
    return 0;
}

/* The user asks about themselves, or a service asks. */
static int require_self_or_service(rpc_ctx *ctx, uint64_t user_id) {
    const om_actor *a = rpc_actor(ctx);
    if (a->user_id == 0 || a->user_id == user_id) return 0;
    return rpc_fail(ctx, OM_E_PERMISSION_DENIED, "users may only check their own access");
}

/* CheckMirrorAccess — CONN-06 (seat rule), CONN-05 at read time, CONN-09 freshness, CONN-13; inline. */
static int h_check_mirror(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_) {
    const CPB(CheckMirrorAccessRequest) *req = (const void *)req_;
    CPB(CheckMirrorAccessResponse) *resp = (void *)resp_;
    op_check_id(ctx, "user_id", req->user_id);
    op_check_id(ctx, "source_hub_id", req->source_hub_id);
    op_check_id(ctx, "target_hub_id", req->target_hub_id);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    if (req->source_hub_id == req->target_hub_id)
        return rpc_fail(ctx, OM_E_SAME_ACCOUNT, "source and target are the same account");
    int rc = require_self_or_service(ctx, req->user_id);
    if (rc != 0) return rc;
    bool through;
    if ((rc = consistency_begin(ctx, req->consistency, &through)) != 0) return rc;
    conn_facts f;
    conn_seat seat;
    if ((rc = facts_of(ctx, through, req->source_hub_id, req->target_hub_id, &f)) != 0) return rc;
    if ((rc = seat_of(ctx, through, req->target_hub_id, req->user_id, &seat)) != 0) return rc;
    int reason = conn_decide_mirror(&f, &seat); /* CONN-06, CONN-05 */
    resp->allowed = reason == CONN_ALLOWED;
    resp->reason = (CPB(DenialReason))reason;
    return 0;
}

/* ListMirrorSources — CONN-06 list form; inline. */
static int h_mirror_sources(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_) {
    const CPB(ListMirrorSourcesRequest) *req = (const void *)req_;
    CPB(ListMirrorSourcesResponse) *resp = (void *)resp_;
    op_check_id(ctx, "user_id", req->user_id);
    op_check_id(ctx, "target_hub_id", req->target_hub_id);
    int limit;
    if (page_size_normalize(req->page_size, &limit) != 0) rpc_violation(ctx, "page_size", "must not be negative");
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    /* One page always holds every source (an organization has at most 5
     * accounts), so this list never hands out a token. */
    if (req->page_token != NULL && req->page_token[0] != '\0') return rpc_fail(ctx, OM_E_INVALID_PAGE_TOKEN, NULL);
    int rc = require_self_or_service(ctx, req->user_id);
    if (rc != 0) return rc;
    conn_seat seat;
    if ((rc = seat_of(ctx, false, req->target_hub_id, req->user_id, &seat)) != 0) return rc;
    resp->next_page_token = "";
    conn_facts none = {.same_org = true, .connected = true, .mirror_flows = true};
    if (conn_decide_mirror(&none, &seat) != CONN_ALLOWED) return 0; /* no seat in T: nothing */
    uint64_t src[CONN_CACHE_MAX_SOURCES];
    int n = 0;
    if (!conn_cache_get_sources(req->target_hub_id, src, &n)) {
        if (!rpc_on_worker(ctx)) return RPC_DEFER;
        uint64_t gen = conn_cache_gen();
        pg_conn *c = op_db(ctx);
        if (c == NULL) return OM_E_UNAVAILABLE;
        if ((rc = store_mirror_sources(c, req->target_hub_id, src, CONN_CACHE_MAX_SOURCES, &n)) != 0)
            return rpc_fail(ctx, rc, NULL);
        conn_cache_put_sources(gen, req->target_hub_id, src, n);
    }
    if (n > limit) n = limit;
    resp->source_hub_ids = rpc_calloc(ctx, (size_t)n + 1, sizeof *resp->source_hub_ids);
    memcpy(resp->source_hub_ids, src, (size_t)n * sizeof *src);
    resp->n_source_hub_ids = (size_t)n;
    return 0;
}

/* Service identities or a member of S or T may ask about a flow S->T
 * (CONN-07, CONN-12). */
static int require_member_of_pair(rpc_ctx *ctx, bool through, uint64_t s, uint64_t t, bool *member) {
    const om_actor *a = rpc_actor(ctx);
    *member = true;
    if (a->user_id == 0) return 0;
    conn_seat ss, ts;
    int rc;
    if ((rc = seat_of(ctx, through, s, a->user_id, &ss)) != 0) return rc;
    if ((rc = seat_of(ctx, through, t, a->user_id, &ts)) != 0) return rc;
    *member = ss.member || ts.member;
    return 0;
}

/* CheckAssetCopy — CONN-07, CONN-13; inline. Service identities or a member of S or T. */
static int h_check_asset(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_) {
    const CPB(CheckAssetCopyRequest) *req = (const void *)req_;
    CPB(CheckAssetCopyResponse) *resp = (void *)resp_;
    op_check_id(ctx, "source_hub_id", req->source_hub_id);
    op_check_id(ctx, "target_hub_id", req->target_hub_id);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    if (req->source_hub_id == req->target_hub_id)
        return rpc_fail(ctx, OM_E_SAME_ACCOUNT, "source and target are the same account");
    bool through, member;
    int rc = consistency_begin(ctx, req->consistency, &through);
    if (rc != 0) return rc;
    if ((rc = require_member_of_pair(ctx, through, req->source_hub_id, req->target_hub_id, &member)) != 0) return rc;
    if (!member) return rpc_fail(ctx, OM_E_PERMISSION_DENIED, "only members of the source or target account may ask");
    conn_facts f;
    if ((rc = facts_of(ctx, through, req->source_hub_id, req->target_hub_id, &f)) != 0) return rc;
    int reason = conn_decide_asset(&f); /* CONN-07 */
    resp->allowed = reason == CONN_ALLOWED;
    resp->reason = (CPB(DenialReason))reason;
    return 0;
}

/* CheckWorkflowWrite — CONN-12 (CONN-11 at read time), CONN-13; inline. As CheckAssetCopy. */
static int h_check_workflow(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_) {
    const CPB(CheckWorkflowWriteRequest) *req = (const void *)req_;
    CPB(CheckWorkflowWriteResponse) *resp = (void *)resp_;
    op_check_id(ctx, "source_hub_id", req->source_hub_id);
    op_check_id(ctx, "target_hub_id", req->target_hub_id);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    if (req->source_hub_id == req->target_hub_id)
        return rpc_fail(ctx, OM_E_SAME_ACCOUNT, "source and target are the same account");
    bool through, member;
    int rc = consistency_begin(ctx, req->consistency, &through);
    if (rc != 0) return rc;
    if ((rc = require_member_of_pair(ctx, through, req->source_hub_id, req->target_hub_id, &member)) != 0) return rc;
    if (!member) return rpc_fail(ctx, OM_E_PERMISSION_DENIED, "only members of the source or target account may ask");
    conn_facts f;
    if ((rc = facts_of(ctx, through, req->source_hub_id, req->target_hub_id, &f)) != 0) return rc;
    int reason = conn_decide_workflow(&f); /* CONN-12, CONN-11 */
    resp->allowed = reason == CONN_ALLOWED;
    resp->reason = (CPB(DenialReason))reason;
    return 0;
}

/* ---- batch checks (CONN-14) ---- */

/* An item's own refusal: its status, not the call's. */
static void item_fail(CPB(CheckItemStatus) *st, int code, const char *msg) {
    st->code = (int32_t)om_err_status(code);
    st->error_reason = (char *)om_err_name(code);
    st->message = (char *)(msg ? msg : om_err_message(code));
}

/* 1..MAX_BATCH items, else INVALID_ARGUMENT naming "items". */
static int check_batch_size(rpc_ctx *ctx, size_t n) {
    if (n >= 1 && n <= MAX_BATCH) return 0;
    rpc_violation(ctx, "items", "must hold 1 to %d items", MAX_BATCH);
    return rpc_fail_invalid(ctx);
}

/* An item's S and T, as the single checks validate them; 0 or the item's code. */
static int flow_item_invalid(uint64_t s, uint64_t t, const char **msg) {
    if (!pg_id_valid(s) || !pg_id_valid(t)) {
        *msg = "source_hub_id and target_hub_id must be set and in range";
        return OM_E_INVALID_ARGUMENT;
    }
    if (s == t) {
        *msg = "source and target are the same account";
        return OM_E_SAME_ACCOUNT;
    }
    return 0;
}

/* BatchCheckMirrorAccess — CONN-14 over CheckMirrorAccess (CONN-06, CONN-05, CONN-13); inline
 * while every item is cached, else once on a worker. */
static int h_batch_mirror(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_) {
    const CPB(BatchCheckMirrorAccessRequest) *req = (const void *)req_;
    CPB(BatchCheckMirrorAccessResponse) *resp = (void *)resp_;
    int rc = check_batch_size(ctx, req->n_items);
    if (rc != 0) return rc;
    bool through;
    if ((rc = consistency_begin(ctx, req->consistency, &through)) != 0) return rc;
    size_t n = req->n_items;
    CPB(MirrorAccessResult) *res = rpc_calloc(ctx, n, sizeof *res);
    CPB(CheckItemStatus) *st = rpc_calloc(ctx, n, sizeof *st);
    resp->results = rpc_calloc(ctx, n, sizeof *resp->results);
    if (res == NULL || st == NULL || resp->results == NULL) return OM_E_NOMEM;
    const om_actor *a = rpc_actor(ctx);
    for (size_t i = 0; i < n; i++) {
        const CPB(MirrorAccessItem) *it = req->items[i];
        orgmesh__connections__v1__mirror_access_result__init(&res[i]);
        orgmesh__connections__v1__check_item_status__init(&st[i]);
        resp->results[i] = &res[i];
        const char *msg = NULL;
        int code = flow_item_invalid(it->source_hub_id, it->target_hub_id, &msg);
        if (code == 0 && !pg_id_valid(it->user_id)) {
            code = OM_E_INVALID_ARGUMENT;
            msg = "user_id must be set and in range";
        }
        if (code == 0 && a->user_id != 0 && a->user_id != it->user_id) {
            code = OM_E_PERMISSION_DENIED;
            msg = "users may only check their own access";
        }
        if (code != 0) { /* the item's own status; unset when OK (smaller replies) */
            res[i].status = &st[i];
            item_fail(&st[i], code, msg);
            continue;
        }
        conn_facts f;
        conn_seat seat;
        if ((rc = facts_of(ctx, through, it->source_hub_id, it->target_hub_id, &f)) != 0) return rc;
        if ((rc = seat_of(ctx, through, it->target_hub_id, it->user_id, &seat)) != 0) return rc;
        int reason = conn_decide_mirror(&f, &seat); /* CONN-06, CONN-05 */
        res[i].allowed = reason == CONN_ALLOWED;
        res[i].reason = (CPB(DenialReason))reason;
    }
    resp->n_results = n;
    return 0;
}

typedef int (*flow_decide_fn)(const conn_facts *f);

/* The flow batches (asset copying, workflows): each item authorized as the
 * single check (a user must be a member of S or T). */
static int batch_flows(rpc_ctx *ctx, CPB(FlowItem) *const *items, size_t n, const CPB(Consistency) *cons,
                       flow_decide_fn decide, CPB(FlowResult) ***out, size_t *n_out) {
    int rc = check_batch_size(ctx, n);
    if (rc != 0) return rc;
    bool through;
    if ((rc = consistency_begin(ctx, cons, &through)) != 0) return rc;
    CPB(FlowResult) *res = rpc_calloc(ctx, n, sizeof *res);
    CPB(CheckItemStatus) *st = rpc_calloc(ctx, n, sizeof *st);
    CPB(FlowResult) **ptrs = rpc_calloc(ctx, n, sizeof *ptrs);
    if (res == NULL || st == NULL || ptrs == NULL) return OM_E_NOMEM;
    for (size_t i = 0; i < n; i++) {
        const CPB(FlowItem) *it = items[i];
        orgmesh__connections__v1__flow_result__init(&res[i]);
        orgmesh__connections__v1__check_item_status__init(&st[i]);
        ptrs[i] = &res[i];
        const char *msg = NULL;
        int code = flow_item_invalid(it->source_hub_id, it->target_hub_id, &msg);
        bool member = true;
        if (code == 0 && (rc = require_member_of_pair(ctx, through, it->source_hub_id, it->target_hub_id, &member)) != 0)
            return rc;
        if (code == 0 && !member) {
            code = OM_E_PERMISSION_DENIED;
            msg = "only members of the source or target account may ask";
        }
        if (code != 0) { /* the item's own status; unset when OK (smaller replies) */
            res[i].status = &st[i];
            item_fail(&st[i], code, msg);
            continue;
        }
        conn_facts f;
        if ((rc = facts_of(ctx, through, it->source_hub_id, it->target_hub_id, &f)) != 0) return rc;
        int reason = decide(&f);
        res[i].allowed = reason == CONN_ALLOWED;
        res[i].reason = (CPB(DenialReason))reason;
    }
    *out = ptrs;
    *n_out = n;
    return 0;
}

/* BatchCheckAssetCopy — CONN-14 over CheckAssetCopy (CONN-07, CONN-13); inline while cached. */
static int h_batch_asset(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_) {
    const CPB(BatchCheckAssetCopyRequest) *req = (const void *)req_;
    CPB(BatchCheckAssetCopyResponse) *resp = (void *)resp_;
    return batch_flows(ctx, req->items, req->n_items, req->consistency, conn_decide_asset, &resp->results,
                       &resp->n_results);
}

/* BatchCheckWorkflowWrite — CONN-14 over CheckWorkflowWrite (CONN-12, CONN-11, CONN-13); inline while cached. */
static int h_batch_workflow(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_) {
    const CPB(BatchCheckWorkflowWriteRequest) *req = (const void *)req_;
    CPB(BatchCheckWorkflowWriteResponse) *resp = (void *)resp_;
    return batch_flows(ctx, req->items, req->n_items, req->consistency, conn_decide_workflow, &resp->results,
                       &resp->n_results);
}

/* Issue 13: who may call each method with a service identity (rpc_method
 * `services`): RPC_PLATFORM is the operator's platform identities
 * (ORGMESH_PLATFORM_SERVICES: the identity system, operator tools); an
 * orgmesh service is listed only where its own calls need it
 * (docs/security.md "Service identities"). */
static const char *const by_platform[] = {RPC_PLATFORM, NULL};
/* assets asks before and during each copy (ASSET-03) */
static const char *const by_assets[] = {"assets", RPC_PLATFORM, NULL};

static const rpc_method methods[] = {
    {"ListConnections", h_list, 0, by_platform},
    {"GetConnection", h_get, 0, by_platform},
    {"QuickConnect", h_quick, 0, by_platform},
    {"AddConnections", h_add, 0, by_platform},
    {"BatchUpdateConnections", h_batch, 0, by_platform},
    {"DeleteConnection", h_delete, 0, by_platform},
    {"CheckMirrorAccess", h_check_mirror, RPC_INLINE, by_platform},
    {"ListMirrorSources", h_mirror_sources, RPC_INLINE, by_platform},
    {"CheckAssetCopy", h_check_asset, RPC_INLINE, by_assets},
    {"ListConnectionHistory", h_history, 0, by_platform},
    {"BatchCheckMirrorAccess", h_batch_mirror, RPC_INLINE, by_platform},
    {"BatchCheckAssetCopy", h_batch_asset, RPC_INLINE, by_assets},
    {"CheckWorkflowWrite", h_check_workflow, RPC_INLINE, by_platform},
    {"BatchCheckWorkflowWrite", h_batch_workflow, RPC_INLINE, by_platform},
    {NULL, NULL, 0},
};

const rpc_service connections_service = {&orgmesh__connections__v1__connections_service__descriptor, methods};
