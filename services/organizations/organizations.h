/* organizations.h — what the handlers (organizations_rpc.c) and the event
 * consumer (organizations_events.c) share: protobuf snapshots of an
 * organization, the copy of an account from its protobuf form, and the two
 * changes both of them make — an account leaving and an organization being
 * deleted — each with its event and audit entries (ORG-12). */
#ifndef ORGANIZATIONS_H
#define ORGANIZATIONS_H

#include "auth.h"
#include "evt.h"
#include "om_time.h"
#include "orgmesh/accounts/v1/accounts.pb-c.h"
#include "orgmesh/organizations/v1/events.pb-c.h"
#include "orgmesh/organizations/v1/organizations.pb-c.h"
#include "organizations_rules.h"
#include "organizations_store.h"
#include "rpc.h"

#define OPB(x) Orgmesh__Organizations__V1__##x
typedef OPB(Organization) PbOrganization;
typedef OPB(OrgMember) PbOrgMember;
typedef Google__Protobuf__Timestamp PbTimestamp;

/* An organization as stored plus its protobuf form, whose strings point
 * into the rows: keep the whole struct alive while the message is used. */
typedef struct org_snapshot {
    org_row o;
    org_member_row m[ORG_MAX_MEMBERS_READ];
    int n;
    PbOrganization pb;
    PbOrgMember pm[ORG_MAX_MEMBERS_READ];
    PbOrgMember *pmp[ORG_MAX_MEMBERS_READ];
    PbTimestamp join[ORG_MAX_MEMBERS_READ], create, update;
    char etag[ORG_ETAG_MAX];
    /* ORG-13: a tombstone's fields (org_tombstone_pb) */
    PbTimestamp deleted, purge;
    uint64_t former[ORG_MAX_MEMBERS_READ];
} org_snapshot;

/* ORG-13: how long a tombstone is kept (ORGMESH_ORG_TOMBSTONE_RETENTION_S). */
#define ORG_TOMBSTONE_RETENTION_DEFAULT_S (90 * 86400)
extern int64_t org_tombstone_retention_s;
/* ORG-13: how often the purge loop runs (ORGMESH_ORG_TOMBSTONE_PURGE_MS). */
extern int org_tombstone_purge_ms;
/* ORG-13: one purge round on `c` (the loop's worker); how many were purged. */
int org_tombstones_purge_round(pg_conn *c);
/* ORG-13: s becomes the tombstone t as an Organization (state DELETED, no
 * members, the former ones listed). */
void org_tombstone_pb(org_snapshot *s, const org_tombstone *t);

/* Reads the members of s->o (already read) and builds s->pb. */
int org_snapshot_load(pg_conn *c, org_snapshot *s);
/* Builds s->pb from s->o and s->m[0..n). */
void org_snapshot_build(org_snapshot *s);
void org_member_pb(PbOrgMember *pm, PbTimestamp *ts, const org_member_row *m);

/* The local copy (SPEC 2) of an account from its protobuf form. */
void org_account_from_pb(const Orgmesh__Accounts__V1__Account *pa, org_account *out);
/* Role bits (organizations_rules.h) of a list of Role values. */

/* Who did a change: a user, or an automatic rule ("ORG-09"). */
typedef struct org_who {
    const om_actor *actor; /* NULL when a rule acted */
    const char *rule;
    const char *request_id; /* may be NULL */
    const char *trace_id;   /* may be NULL */
} org_who;

/* `hub_id` leaves the organization s (read FOR UPDATE and loaded): deletes
 * the member, bumps the version, emits OrgMemberRemoved and records the audit
 * entry (ORG-07, ORG-09, ORG-12). s is updated to the state after. */
int org_member_leave(pg_conn *tx, org_snapshot *s, uint64_t hub_id, int departure, const org_who *who,
                     const char *detail, const char *cause_event_id);
/* Deletes the organization s (read FOR UPDATE and loaded): emits
 * OrganizationDeleted and records the audit entries (ORG-10, ORG-11,
 * ORG-12). */
int org_delete(pg_conn *tx, org_snapshot *s, int deletion_reason, const org_who *who, const char *detail);

/* The consumer of the accounts service's events (ORG-09, ORG-10, SPEC 2). */
int org_on_accounts_event(pg_conn *tx, const evt_event *ev, void *arg);

#endif
