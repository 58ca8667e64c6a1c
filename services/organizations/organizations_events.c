/* organizations_events.c — the consumer of the accounts service's events
 * (SPEC 2, ORG-09, ORG-10) and the two changes it shares with the handlers:
 * an account leaving an organization and an organization being deleted,
 * each with its event and audit entries (ORG-12). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "om_time.h"
#include "audit.h"
#include "copies.h"
#include "log.h"
#include "om_err.h"
#include "organizations.h"
#include "orgmesh/accounts/v1/events.pb-c.h"

#define APB(x) Orgmesh__Accounts__V1__##x

/* ---- snapshots ------------------------------------------------------------ */

void org_member_pb(PbOrgMember *pm, PbTimestamp *ts, const org_member_row *m) {
    orgmesh__organizations__v1__org_member__init(pm);
    pm->hub_id = m->hub_id;
    pm->name = (char *)m->name;
    pm->marketing_enterprise = m->marketing_enterprise;
    pm->founding_account = m->founding;
    om_pb_timestamp(ts, m->join_us);
    pm->join_time = ts;
    pm->joined_by_user_id = m->joined_by;
    pm->acknowledgement_id = (char *)m->ack_id;
}

void org_snapshot_build(org_snapshot *s) {
    PbOrganization *p = &s->pb;
    orgmesh__organizations__v1__organization__init(p);
    p->organization_id = s->o.id;
    p->founding_hub_id = s->o.founding_hub_id;
    for (int i = 0; i < s->n; i++) {
        org_member_pb(&s->pm[i], &s->join[i], &s->m[i]);
        s->pmp[i] = &s->pm[i];
    }
    p->n_members = (size_t)s->n;
    p->members = s->pmp;
    p->hosting_location = s->o.hosting_location;
    p->created_by_user_id = s->o.created_by;
    p->version = s->o.version;
    org_etag_encode(s->o.version, s->etag);
    p->etag = s->etag;
    om_pb_timestamp(&s->create, s->o.create_us);
    om_pb_timestamp(&s->update, s->o.update_us);
    p->create_time = &s->create;
    p->update_time = &s->update;
    p->state = ORGMESH__ORGANIZATIONS__V1__ORGANIZATION_STATE__ORGANIZATION_STATE_ACTIVE;
}

void org_tombstone_pb(org_snapshot *s, const org_tombstone *t) {
    memset(s, 0, sizeof *s);
    s->o = t->o;
    s->n = 0;
    org_snapshot_build(s);
    PbOrganization *p = &s->pb;
    p->etag = ""; /* nothing left to change */
    p->state = ORGMESH__ORGANIZATIONS__V1__ORGANIZATION_STATE__ORGANIZATION_STATE_DELETED;
    p->deletion_reason = (OPB(DeletionReason))t->deletion_reason;
    om_pb_timestamp(&s->deleted, t->delete_us);
    om_pb_timestamp(&s->purge, t->purge_us);
    p->delete_time = &s->deleted;
    p->purge_time = &s->purge;
    memcpy(s->former, t->former, (size_t)t->n_former * sizeof t->former[0]);
    p->former_member_hub_ids = s->former;
    p->n_former_member_hub_ids = (size_t)t->n_former;
}

int org_snapshot_load(pg_conn *c, org_snapshot *s) {
    int rc = store_org_members(c, s->o.id, s->m, ORG_MAX_MEMBERS_READ, &s->n);
    if (rc != 0) return rc;
    org_snapshot_build(s);
    return 0;
}

/* ---- conversions ------------------------------------------------------------- */

void org_account_from_pb(const APB(Account) *pa, org_account *out) {
    memset(out, 0, sizeof *out);
    out->hub_id = pa->hub_id;
    snprintf(out->name, sizeof out->name, "%s", pa->name ? pa->name : "");
    out->kind = (int)pa->kind;
    snprintf(out->hosting_location, sizeof out->hosting_location, "%s",
             pa->hosting_location ? pa->hosting_location : "");
    out->state = (int)pa->state;
    int hubs[16], tiers[16];
    size_t n = 0;
    for (size_t i = 0; i < pa->n_subscriptions && n < 16; i++) {
        if (pa->subscriptions[i] == NULL) continue;
        hubs[n] = (int)pa->subscriptions[i]->hub;
        tiers[n] = (int)pa->subscriptions[i]->tier;
        n++;
    }
    out->has_professional = org_subs_professional(hubs, tiers, n);
    out->marketing_enterprise = org_subs_marketing_enterprise(hubs, tiers, n);
    out->version = pa->version;
}

/* ---- shared changes (ORG-12) ------------------------------------------------------ */

static const char *departure_name(int d) {
    const ProtobufCEnumValue *v =
        protobuf_c_enum_descriptor_get_value(&orgmesh__organizations__v1__departure_reason__descriptor, d);
    return v ? v->name + strlen("DEPARTURE_REASON_") : "UNSPECIFIED";
}

static const char *deletion_name(int d) {
    const ProtobufCEnumValue *v =
        protobuf_c_enum_descriptor_get_value(&orgmesh__organizations__v1__deletion_reason__descriptor, d);
    return v ? v->name + strlen("DELETION_REASON_") : "UNSPECIFIED";
}

static int emit(pg_conn *tx, const org_snapshot *s, const org_who *who, const ProtobufCMessage *payload) {
    char subject[64];
    snprintf(subject, sizeof subject, "organizations/%s", s->o.id);
    evt_meta meta = {
        .subject = subject,
        .version = s->o.version,
        .actor = who->actor,
        .rule = who->actor ? NULL : who->rule,
        .trace_id = who->trace_id,
    };
    return evt_emit(tx, &meta, payload, NULL);
}

static int audit(pg_conn *tx, const org_who *who, const char *action, const char *resource,
                 const ProtobufCMessage *before, const ProtobufCMessage *after, const char *reason) {
    audit_entry e = {
        .actor = who->actor,
        .rule = who->actor ? NULL : who->rule,
        .action = action,
        .resource = resource,
        .before = before,
        .after = after,
        .reason = reason,
        .request_id = who->request_id,
        .trace_id = who->trace_id,
    };
    return audit_record(tx, &e);
}

int org_member_leave(pg_conn *tx, org_snapshot *s, uint64_t hub_id, int departure, const org_who *who,
                     const char *detail, const char *cause_event_id) {
    int at = -1;
    for (int i = 0; i < s->n; i++)
        if (s->m[i].hub_id == hub_id) at = i;
    if (at < 0) return OM_E_NOT_IN_ORGANIZATION;
    int rc = store_member_delete(tx, s->o.id, hub_id);
    if (rc != 0) return rc;
    s->o.version++;
    if ((rc = store_org_set_version(tx, s->o.id, s->o.version, &s->o.update_us)) != 0) return rc;

    org_member_row gone = s->m[at];
    memmove(&s->m[at], &s->m[at + 1], (size_t)(s->n - at - 1) * sizeof s->m[0]);
    s->n--;
    org_snapshot_build(s);

    PbOrgMember gm;
    PbTimestamp gts;
    org_member_pb(&gm, &gts, &gone);
    char actor[64];
    audit_actor_string(who->actor, who->rule, actor, sizeof actor);
    uint64_t remaining[ORG_MAX_MEMBERS_READ];
    for (int i = 0; i < s->n; i++) remaining[i] = s->m[i].hub_id;

    OPB(OrgMemberRemoved) ev = ORGMESH__ORGANIZATIONS__V1__ORG_MEMBER_REMOVED__INIT;
    ev.organization_id = s->o.id;
    ev.member = &gm;
    ev.reason = (OPB(DepartureReason))departure;
    ev.actor = actor;
    ev.organization = &s->pb;
    ev.n_remaining_hub_ids = (size_t)s->n;
    ev.remaining_hub_ids = remaining;
    ev.detail = (char *)(detail ? detail : "");
    ev.cause_event_id = (char *)(cause_event_id ? cause_event_id : "");
    if ((rc = emit(tx, s, who, &ev.base)) != 0) return rc;

    char resource[96], reason[1100];
    snprintf(resource, sizeof resource, "organizations/%s/members/%" PRIu64, s->o.id, hub_id);
    if (detail && detail[0])
        snprintf(reason, sizeof reason, "%s: %s", departure_name(departure), detail);
    else
        snprintf(reason, sizeof reason, "%s", departure_name(departure));
    return audit(tx, who, "org.member.remove", resource, &gm.base, NULL, reason);
}

int org_delete(pg_conn *tx, org_snapshot *s, int deletion_reason, const org_who *who, const char *detail) {
    int rc = store_org_delete(tx, s->o.id);
    if (rc != 0) return rc;
    s->o.version++;
    org_snapshot_build(s);
    s->pb.state = ORGMESH__ORGANIZATIONS__V1__ORGANIZATION_STATE__ORGANIZATION_STATE_DELETED;
    char actor[64];
    audit_actor_string(who->actor, who->rule, actor, sizeof actor);
    uint64_t former[ORG_MAX_MEMBERS_READ];
    for (int i = 0; i < s->n; i++) former[i] = s->m[i].hub_id;

    OPB(OrganizationDeleted) ev = ORGMESH__ORGANIZATIONS__V1__ORGANIZATION_DELETED__INIT;
    ev.organization = &s->pb;
    ev.reason = (OPB(DeletionReason))deletion_reason;
    ev.actor = actor;
    ev.n_former_member_hub_ids = (size_t)s->n;
    ev.former_member_hub_ids = former;
    ev.detail = (char *)(detail ? detail : "");
    if ((rc = emit(tx, s, who, &ev.base)) != 0) return rc;
    /* ORG-13: an automatic deletion leaves a tombstone, so that its former
     * members' admins can still read why (GetOrganization, history) */
    if (who->rule != NULL &&
        (rc = store_tombstone_insert(tx, &s->o, deletion_reason, former, s->n, org_tombstone_retention_s)) != 0)
        return rc;

    char resource[96], reason[1100];
    if (detail && detail[0])
        snprintf(reason, sizeof reason, "%s: %s", deletion_name(deletion_reason), detail);
    else
        snprintf(reason, sizeof reason, "%s", deletion_name(deletion_reason));
    /* Each former member's departure, then the deletion itself (ORG-12). */
    for (int i = 0; i < s->n; i++) {
        snprintf(resource, sizeof resource, "organizations/%s/members/%" PRIu64, s->o.id, s->m[i].hub_id);
        if ((rc = audit(tx, who, "org.member.remove", resource, &s->pm[i].base, NULL, "ORGANIZATION_DELETED")) != 0)
            return rc;
    }
    snprintf(resource, sizeof resource, "organizations/%s", s->o.id);
    return audit(tx, who, "org.delete", resource, &s->pb.base, NULL, reason);
}

/* ---- the consumer ------------------------------------------------------------------- */

/* ORG-09, ORG-10: against the current copy of the account (whatever the
 * order the events came in), take it out of its organization when it no
 * longer qualifies, and delete the organization when no MARKETING
 * ENTERPRISE account is left. The copy row is locked first, as a joining
 * transaction locks it, so of the two whichever commits second sees the
 * other. */
static int enforce(pg_conn *tx, uint64_t hub_id, const evt_event *ev) {
    org_account a;
    int n = 0;
    int rc = store_accounts_get(tx, &hub_id, 1, true, &a, &n);
    if (rc != 0 || n == 0) return rc;
    char org_id[ORG_ID_LEN];
    rc = store_org_of_account(tx, hub_id, org_id);
    if (rc == OM_E_NOT_FOUND) return 0;
    if (rc != 0) return rc;
    org_snapshot *s = calloc(1, sizeof *s);
    if (s == NULL) return OM_E_NOMEM;
    rc = store_org_get(tx, org_id, true, &s->o);
    if (rc == 0) rc = org_snapshot_load(tx, s);
    if (rc != 0) goto out;
    org_who who = {.actor = NULL, .rule = "ORG-09", .trace_id = NULL};
    int dep = org_departure(&a, s->o.hosting_location); /* ORG-09 */
    if (dep != 0) {
        char detail[256] = "";
        if (dep == 3)
            snprintf(detail, sizeof detail, "hosting_location %s -> %s", s->o.hosting_location, a.hosting_location);
        else if (dep == 2)
            snprintf(detail, sizeof detail, "no subscription at PROFESSIONAL or ENTERPRISE");
        else if (dep == 4)
            snprintf(detail, sizeof detail, "the account was deactivated");
        else if (dep == 6)
            snprintf(detail, sizeof detail, "the account was deleted");
        log_info("ORG-09: account %" PRIu64 " leaves organization %s (%d) after event %s", hub_id, s->o.id, dep,
                 ev->id);
        if ((rc = org_member_leave(tx, s, hub_id, dep, &who, detail, ev->id)) != 0) goto out;
    }
    /* ORG-10: after any change, an organization needs a MARKETING ENTERPRISE account. */
    bool enterprise = false;
    for (int i = 0; i < s->n; i++) enterprise = enterprise || s->m[i].marketing_enterprise;
    if (!enterprise) {
        log_info("ORG-10: organization %s has no MARKETING ENTERPRISE account left: deleted", s->o.id);
        org_who rule10 = {.actor = NULL, .rule = "ORG-10", .trace_id = NULL};
        rc = org_delete(tx, s, ORGMESH__ORGANIZATIONS__V1__DELETION_REASON__DELETION_REASON_NO_ENTERPRISE_ACCOUNT,
                        &rule10, "");
    }
out:
    free(s);
    return rc;
}

/* The accounts consumer's three kinds (SPEC 2, through common/copies). */
static int on_account(pg_conn *tx, const copies_event *e, const CopiesAccount *pa, void *arg) {
    (void)arg;
    org_account a;
    org_account_from_pb(pa, &a);
    a.deleted = e->deleted;
    a.version = e->version; /* SPEC 2: the event's own version */
    int rc = store_account_upsert(tx, &a, NULL);
    if (rc == 0) rc = enforce(tx, a.hub_id, e->ev);
    return rc;
}

static int on_user(pg_conn *tx, const copies_event *e, const CopiesUser *u, void *arg) {
    (void)arg;
    return store_user_upsert(tx, u->user_id, u->two_factor_enabled, e->deleted, e->version);
}

static int on_membership(pg_conn *tx, const copies_event *e, const CopiesMembership *mb, void *arg) {
    (void)arg;
    return copies_membership_put(tx, mb, e->deleted, e->version);
}

static const copies_sink accounts_sink = {.account = on_account, .user = on_user, .membership = on_membership};

/* SPEC 2: runs inside the consumer's transaction, which records the event
 * id with these effects (exactly once); versions keep older states out. */
int org_on_accounts_event(pg_conn *tx, const evt_event *ev, void *arg) {
    return copies_apply_event(tx, ev, &accounts_sink, arg);
}

/* ---- ORG-13: the purge of tombstones past their retention ------------------------------ */

int org_tombstones_purge_round(pg_conn *c) {
    int total = 0, n = 0;
    do {
        if (store_tombstones_purge(c, 100, &n) != 0) break;
        total += n;
    } while (n == 100);
    if (total > 0) log_info("ORG-13: purged %d organization tombstones", total);
    return total;
}
