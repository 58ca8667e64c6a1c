/* connections_events.c — the consumers of the accounts and organizations
 * services' events (SPEC 2): the local copies of org membership, sensitivity
 * and seats; the automatic changes they cause — connections ending when an
 * account leaves or the organization is deleted (CONN-09), a sensitive
 * account stopping being a mirroring source (CONN-05) — each with its event
 * and audit entry; and the listener that invalidates the check cache after
 * every committed change (CONN-09 freshness). */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "om_time.h"
#include "audit.h"
#include "connections.h"
#include "copies.h"
#include "log.h"
#include "loop.h"
#include "om_err.h"
#include "orgmesh/accounts/v1/events.pb-c.h"
#include "orgmesh/organizations/v1/events.pb-c.h"

#define OPB(x) Orgmesh__Organizations__V1__##x

/* ---- protobuf views ---- */

void conn_pb_build(conn_pb *v) {
    PbConnection *p = &v->pb;
    orgmesh__connections__v1__connection__init(p);
    orgmesh__connections__v1__feature_setting__init(&v->m);
    orgmesh__connections__v1__feature_setting__init(&v->a);
    orgmesh__connections__v1__feature_setting__init(&v->w);
    p->connection_id = v->row.id;
    p->organization_id = v->row.org_id;
    p->account_a = v->row.cfg.a;
    p->account_b = v->row.cfg.b;
    v->m.direction = (CPB(Direction))v->row.cfg.mirroring.dir;
    v->m.source_hub_id = v->row.cfg.mirroring.source;
    v->a.direction = (CPB(Direction))v->row.cfg.asset_copying.dir;
    v->a.source_hub_id = v->row.cfg.asset_copying.source;
    p->mirroring = &v->m;
    p->asset_copying = &v->a;
    v->w.direction = (CPB(Direction))(v->row.cfg.workflows.dir ? v->row.cfg.workflows.dir : CONN_DIR_OFF);
    v->w.source_hub_id = v->row.cfg.workflows.source;
    p->workflows = &v->w;
    p->version = v->row.version;
    conn_etag_encode(v->row.version, v->etag);
    p->etag = v->etag;
    if (v->row.create_us != 0) {
        om_pb_timestamp(&v->ct, v->row.create_us);
        om_pb_timestamp(&v->ut, v->row.update_us);
        p->create_time = &v->ct;
        p->update_time = &v->ut;
    }
}

void conn_history_resource(const char *org_id, char *buf, size_t cap) {
    snprintf(buf, cap, "organizations/%s/connections", org_id);
}

/* ---- automatic changes ---- */

static int emit_rule(pg_conn *tx, const char *org_id, int64_t version, const char *rule,
                     const ProtobufCMessage *payload) {
    char subject[64];
    snprintf(subject, sizeof subject, "connections/%s", org_id);
    evt_meta meta = {.subject = subject, .version = version, .actor = NULL, .rule = rule, .trace_id = NULL};
    return evt_emit(tx, &meta, payload, NULL);
}

static int audit_rule(pg_conn *tx, const char *org_id, const char *rule, const char *action,
                      const ProtobufCMessage *before, const ProtobufCMessage *after, const char *reason) {
    char resource[96];
    conn_history_resource(org_id, resource, sizeof resource);
    audit_entry e = {.actor = NULL, .rule = rule, .action = action, .resource = resource,
                     .before = before, .after = after, .reason = reason};
    return audit_record(tx, &e);
}

static bool has_hub(const uint64_t *hubs, int n, uint64_t h) {
    for (int i = 0; i < n; i++)
        if (hubs[i] == h) return true;
    return false;
}

/* CONN-09: the connections of org_id involving an account not in hubs end. */
static int end_departed(pg_conn *tx, conn_org *o, const uint64_t *hubs, int n, bool org_deleted,
                        const conn_org_snapshot *s) {
    conn_pb *v = calloc(CONN_MAX_ROWS, sizeof *v);
    PbConnection **pp = calloc(CONN_MAX_ROWS, sizeof *pp);
    int nrows = 0, nend = 0, rc = 0;
    if (v == NULL || pp == NULL) {
        rc = OM_E_NOMEM;
        goto out;
    }
    conn_row *rows = calloc(CONN_MAX_ROWS, sizeof *rows);
    if (rows == NULL) {
        rc = OM_E_NOMEM;
        goto out;
    }
    rc = store_conns_of_org(tx, o->id, rows, CONN_MAX_ROWS, &nrows);
    for (int i = 0; rc == 0 && i < nrows; i++) {
        if (!org_deleted && has_hub(hubs, n, rows[i].cfg.a) && has_hub(hubs, n, rows[i].cfg.b)) continue;
        rc = store_conn_delete(tx, rows[i].id);
        v[nend].row = rows[i];
        nend++;
    }
    free(rows);
    if (rc != 0 || nend == 0) goto out;
    for (int i = 0; i < nend; i++) {
        conn_pb_build(&v[i]);
        pp[i] = &v[i].pb;
    }
    o->config_version++;
    if ((rc = store_org_set_config_version(tx, o->id, o->config_version)) != 0) goto out;
    CPB(ConnectionsEnded) ev = ORGMESH__CONNECTIONS__V1__CONNECTIONS_ENDED__INIT;
    ev.organization_id = o->id;
    ev.reason = org_deleted ? ORGMESH__CONNECTIONS__V1__END_REASON__END_REASON_ORGANIZATION_DELETED
                            : ORGMESH__CONNECTIONS__V1__END_REASON__END_REASON_ACCOUNT_LEFT_ORGANIZATION;
    ev.departed_hub_id = org_deleted ? 0 : s->departed_hub_id;
    ev.n_connections = (size_t)nend;
    ev.connections = pp;
    ev.actor = "rule:CONN-09";
    ev.cause_event_id = (char *)(s->cause_event_id ? s->cause_event_id : "");
    ev.cause_reason = (char *)(s->cause_reason ? s->cause_reason : "");
    if ((rc = emit_rule(tx, o->id, o->config_version, "CONN-09", &ev.base)) != 0) goto out;
    char reason[160];
    snprintf(reason, sizeof reason, "%s%s%s", org_deleted ? "ORGANIZATION_DELETED" : "ACCOUNT_LEFT_ORGANIZATION",
             s->cause_reason && s->cause_reason[0] ? ": " : "", s->cause_reason ? s->cause_reason : "");
    for (int i = 0; rc == 0 && i < nend; i++)
        rc = audit_rule(tx, o->id, "CONN-09", "connection.end", &v[i].pb.base, NULL, reason);
    log_info("CONN-09: %d connection(s) of organization %s ended (%s)", nend, o->id, reason);
out:
    free(v);
    free(pp);
    return rc;
}

int conn_apply_org_snapshot(pg_conn *tx, const conn_org_snapshot *s, bool *applied) {
    if (applied) *applied = false;
    conn_org o;
    int rc = store_org_lock(tx, s->org_id, &o);
    if (rc != 0) return rc;
    if (o.version >= s->version) return 0; /* SPEC 2: never older over newer */
    if ((rc = store_org_set(tx, s->org_id, s->version, s->deleted)) != 0) return rc;
    if ((rc = store_org_members_replace(tx, s->org_id, s->hubs, s->deleted ? 0 : s->n)) != 0) return rc;
    if ((rc = end_departed(tx, &o, s->hubs, s->n, s->deleted, s)) != 0) return rc;
    if (applied) *applied = true;
    return store_notify_change(tx);
}

/* CONN-05 */
int conn_restrict_sensitive_source(pg_conn *tx, uint64_t hub_id, const char *cause_event_id) {
    char org_id[CONN_ID_LEN];
    int rc = store_org_of_account(tx, hub_id, org_id);
    if (rc == OM_E_NOT_FOUND) return 0;
    if (rc != 0) return rc;
    conn_org o;
    if ((rc = store_org_lock(tx, org_id, &o)) != 0) return rc;
    conn_row *rows = calloc(CONN_MAX_ROWS, sizeof *rows);
    conn_pb *before = calloc(1, sizeof *before), *after = calloc(1, sizeof *after);
    int n = 0;
    if (rows == NULL || before == NULL || after == NULL) {
        rc = OM_E_NOMEM;
        goto out;
    }
    if ((rc = store_conns_of_org(tx, org_id, rows, CONN_MAX_ROWS, &n)) != 0) goto out;
    for (int i = 0; i < n; i++) {
        bool m_changed, w_changed;
        conn_feature m = conn_restrict_sensitive(&rows[i].cfg.mirroring, rows[i].cfg.a, rows[i].cfg.b, hub_id, &m_changed);
        /* CONN-11: the same rule for workflows */
        conn_feature w = conn_restrict_sensitive(&rows[i].cfg.workflows, rows[i].cfg.a, rows[i].cfg.b, hub_id, &w_changed);
        if (!m_changed && !w_changed) continue;
        before->row = rows[i];
        conn_pb_build(before);
        rows[i].cfg.mirroring = m; /* asset copying is never touched */
        rows[i].cfg.workflows = w;
        if ((rc = store_conn_update(tx, &rows[i])) != 0) goto out;
        after->row = rows[i];
        conn_pb_build(after);
        o.config_version++;
        if ((rc = store_org_set_config_version(tx, org_id, o.config_version)) != 0) goto out;
        CPB(ConnectionRestricted) ev = ORGMESH__CONNECTIONS__V1__CONNECTION_RESTRICTED__INIT;
        ev.organization_id = org_id;
        ev.before = &before->pb;
        ev.after = &after->pb;
        /* MIRRORING when mirroring changed (workflows may have too: after
         * shows both); WORKFLOWS when only workflows did (CONN-11) */
        ev.feature = m_changed ? ORGMESH__CONNECTIONS__V1__FEATURE__FEATURE_MIRRORING
                               : ORGMESH__CONNECTIONS__V1__FEATURE__FEATURE_WORKFLOWS;
        ev.reason = ORGMESH__CONNECTIONS__V1__RESTRICTION_REASON__RESTRICTION_REASON_SENSITIVE_DATA_ENABLED;
        ev.sensitive_hub_id = hub_id;
        ev.actor = "rule:CONN-05";
        ev.cause_event_id = (char *)(cause_event_id ? cause_event_id : "");
        if ((rc = emit_rule(tx, org_id, o.config_version, "CONN-05", &ev.base)) != 0) goto out;
        char reason[96];
        snprintf(reason, sizeof reason, "SENSITIVE_DATA_ENABLED: account %" PRIu64, hub_id);
        if ((rc = audit_rule(tx, org_id, "CONN-05", "connection.restrict", &before->pb.base, &after->pb.base, reason)) != 0)
            goto out;
        log_info("CONN-05: connection %s restricted: account %" PRIu64 " turned sensitive data on", rows[i].id, hub_id);
    }
    rc = store_notify_change(tx);
out:
    free(rows);
    free(before);
    free(after);
    return rc;
}

/* ---- the accounts consumer (SPEC 2, through common/copies) ---- */

static int on_account(pg_conn *tx, const copies_event *e, const CopiesAccount *pa, void *arg) {
    (void)arg;
    int rc = store_account_upsert(tx, pa->hub_id, pa->sensitive_data_enabled, e->deleted, e->version);
    /* CONN-05: against the copy as it now stands (whatever the order the
     * events came in), restrict where it is still a mirroring source. */
    bool known, sensitive = false;
    if (rc == 0) rc = store_sensitivity(tx, &pa->hub_id, 1, &known, &sensitive);
    if (rc == 0 && sensitive) rc = conn_restrict_sensitive_source(tx, pa->hub_id, e->ev->id);
    if (rc == 0) rc = store_notify_change(tx);
    return rc;
}

static int on_membership(pg_conn *tx, const copies_event *e, const CopiesMembership *mb, void *arg) {
    (void)arg;
    int rc = copies_membership_put(tx, mb, e->deleted, e->version);
    if (rc == 0) rc = store_notify_change(tx);
    return rc;
}

static const copies_sink accounts_sink = {.account = on_account, .membership = on_membership};

int conn_on_accounts_event(pg_conn *tx, const evt_event *ev, void *arg) {
    int rc = copies_apply_event(tx, ev, &accounts_sink, arg);
    return rc == 0 ? store_notify_applied(tx) : rc; /* CONN-13: wake waiting checks after commit */
}

/* ---- the organizations consumer (CONN-09) ---- */

static const char *enum_suffix(const ProtobufCEnumDescriptor *d, int v, const char *prefix) {
    const ProtobufCEnumValue *e = protobuf_c_enum_descriptor_get_value(d, v);
    if (e == NULL) return "";
    size_t n = strlen(prefix);
    return strncmp(e->name, prefix, n) == 0 ? e->name + n : e->name;
}

static int apply_org(pg_conn *tx, const evt_event *ev, const OPB(Organization) *o, bool deleted,
                     uint64_t departed, const char *cause_reason) {
    if (o == NULL || !conn_uuid_valid(o->organization_id)) return 0;
    uint64_t hubs[CONN_MAX_MEMBERS_READ];
    int n = 0;
    for (size_t i = 0; i < o->n_members && n < CONN_MAX_MEMBERS_READ; i++)
        if (o->members[i] != NULL && pg_id_valid(o->members[i]->hub_id)) hubs[n++] = o->members[i]->hub_id;
    conn_org_snapshot s = {
        .org_id = o->organization_id,
        .version = ev->version > 0 ? ev->version : o->version,
        .deleted = deleted,
        .hubs = hubs,
        .n = n,
        .departed_hub_id = departed,
        .cause_event_id = ev->id,
        .cause_reason = cause_reason,
    };
    return conn_apply_org_snapshot(tx, &s, NULL);
}

static int on_organizations_event(pg_conn *tx, const evt_event *ev);

int conn_on_organizations_event(pg_conn *tx, const evt_event *ev, void *arg) {
    (void)arg;
    int rc = on_organizations_event(tx, ev);
    return rc == 0 ? store_notify_applied(tx) : rc; /* CONN-13: wake waiting checks after commit */
}

static int on_organizations_event(pg_conn *tx, const evt_event *ev) {
    if (ev->type == NULL) return 0;
    int rc = 0;
    if (strcmp(ev->type, orgmesh__organizations__v1__organization_created__descriptor.name) == 0) {
        OPB(OrganizationCreated) *m = orgmesh__organizations__v1__organization_created__unpack(NULL, ev->payload_len, ev->payload);
        if (m == NULL) return 0;
        rc = apply_org(tx, ev, m->organization, false, 0, "");
        orgmesh__organizations__v1__organization_created__free_unpacked(m, NULL);
    } else if (strcmp(ev->type, orgmesh__organizations__v1__org_member_added__descriptor.name) == 0) {
        OPB(OrgMemberAdded) *m = orgmesh__organizations__v1__org_member_added__unpack(NULL, ev->payload_len, ev->payload);
        if (m == NULL) return 0;
        rc = apply_org(tx, ev, m->organization, false, 0, "");
        orgmesh__organizations__v1__org_member_added__free_unpacked(m, NULL);
    } else if (strcmp(ev->type, orgmesh__organizations__v1__org_member_removed__descriptor.name) == 0) {
        OPB(OrgMemberRemoved) *m = orgmesh__organizations__v1__org_member_removed__unpack(NULL, ev->payload_len, ev->payload);
        if (m == NULL) return 0;
        rc = apply_org(tx, ev, m->organization, false, m->member ? m->member->hub_id : 0,
                       enum_suffix(&orgmesh__organizations__v1__departure_reason__descriptor, (int)m->reason,
                                   "DEPARTURE_REASON_"));
        orgmesh__organizations__v1__org_member_removed__free_unpacked(m, NULL);
    } else if (strcmp(ev->type, orgmesh__organizations__v1__organization_deleted__descriptor.name) == 0) {
        OPB(OrganizationDeleted) *m = orgmesh__organizations__v1__organization_deleted__unpack(NULL, ev->payload_len, ev->payload);
        if (m == NULL) return 0;
        rc = apply_org(tx, ev, m->organization, true, 0,
                       enum_suffix(&orgmesh__organizations__v1__deletion_reason__descriptor, (int)m->reason,
                                   "DELETION_REASON_"));
        orgmesh__organizations__v1__organization_deleted__free_unpacked(m, NULL);
    }
    return rc;
}

/* ---- the invalidation listener ---- */

/* On the loop (the process's one LISTEN connection, common/loop.h): every
 * notification drops the cached answers; so does a reconnect (payload
 * NULL: changes may have been missed while the connection was down — the
 * TTL bounds staleness meanwhile). */
static void on_invalidate(const char *channel, const char *payload, void *arg) {
    (void)channel;
    (void)payload;
    (void)arg;
    conn_cache_invalidate();
    conn_fresh_signal(); /* a committed change may be what a waiting check needs */
}

/* CONN-13: an event was applied (committed): wake the waiting checks. */
static void on_applied(const char *channel, const char *payload, void *arg) {
    (void)channel;
    (void)payload;
    (void)arg;
    conn_fresh_signal();
}

int conn_listener_start(void) {
    int rc = loop_listen(CONN_NOTIFY_CHANNEL, on_invalidate, NULL);
    if (rc != 0)
        log_warn("cache listener: cannot LISTEN (%s); cached answers expire after %" PRId64 " ms", om_err_name(rc),
                 conn_cache_ttl_ms());
    int rc2 = loop_listen(CONN_APPLIED_CHANNEL, on_applied, NULL);
    if (rc2 != 0) log_warn("applied listener: cannot LISTEN (%s); fresh checks re-read every 50 ms", om_err_name(rc2));
    return rc != 0 ? rc : rc2;
}

/* ---- CONN-13: waiting for a state at least as fresh as a token ---- */

static pthread_mutex_t fresh_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t fresh_cv;
static pthread_once_t fresh_once = PTHREAD_ONCE_INIT;
static uint64_t fresh_epoch;

static void fresh_init(void) {
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(&fresh_cv, &a);
    pthread_condattr_destroy(&a);
}

void conn_fresh_signal(void) {
    pthread_once(&fresh_once, fresh_init);
    pthread_mutex_lock(&fresh_mu);
    fresh_epoch++;
    pthread_cond_broadcast(&fresh_cv);
    pthread_mutex_unlock(&fresh_mu);
}

uint64_t conn_fresh_epoch(void) {
    pthread_once(&fresh_once, fresh_init);
    pthread_mutex_lock(&fresh_mu);
    uint64_t e = fresh_epoch;
    pthread_mutex_unlock(&fresh_mu);
    return e;
}

bool conn_fresh_wait(uint64_t epoch, long ms) {
    pthread_once(&fresh_once, fresh_init);
    struct timespec until = om_deadline(CLOCK_MONOTONIC, ms);
    pthread_mutex_lock(&fresh_mu);
    int rc = 0;
    while (fresh_epoch == epoch && rc == 0) rc = pthread_cond_timedwait(&fresh_cv, &fresh_mu, &until);
    bool moved = fresh_epoch != epoch;
    pthread_mutex_unlock(&fresh_mu);
    return moved;
}

/* The loop closes the LISTEN connection in its drain. */
void conn_listener_stop(void) {}
