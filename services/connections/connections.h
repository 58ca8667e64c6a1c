/* connections.h — what the handlers (connections_rpc.c) and the event
 * consumers (connections_events.c) share: protobuf views of stored
 * connections, applying an organization snapshot to the local copy (which
 * ends the connections of departed accounts, CONN-09), and the change
 * notification that invalidates every replica's check cache. */
#ifndef CONNECTIONS_H
#define CONNECTIONS_H

#include "connections_cache.h"
#include "connections_rules.h"
#include "connections_store.h"
#include "evt.h"
#include "orgmesh/connections/v1/connections.pb-c.h"
#include "orgmesh/connections/v1/events.pb-c.h"
#include "rpc.h"

#define CPB(x) Orgmesh__Connections__V1__##x
typedef CPB(Connection) PbConnection;
typedef CPB(FeatureSetting) PbFeature;
typedef Google__Protobuf__Timestamp PbTimestamp;

/* A connection's protobuf form; strings point into `row` and `etag`: keep
 * the struct alive (and unmoved) while the message is used. */
typedef struct conn_pb {
    conn_row row;
    PbConnection pb;
    PbFeature m, a, w;
    PbTimestamp ct, ut;
    char etag[CONN_ETAG_MAX];
} conn_pb;

/* Builds v->pb from v->row. */
void conn_pb_build(conn_pb *v);

/* SPEC 2: makes the local copy of organization `org_id` the snapshot
 * (version, members, deleted) unless a newer one is stored, inside tx, with
 * the organization row locked. Connections involving an account that is no
 * longer a member end, with one ConnectionsEnded event (CONN-09). *applied
 * (may be NULL) says whether the snapshot was newer. */
typedef struct conn_org_snapshot {
    const char *org_id;
    int64_t version;
    bool deleted;
    const uint64_t *hubs;
    int n;
    /* about the cause, for ConnectionsEnded */
    uint64_t departed_hub_id;  /* 0 unless an account left */
    const char *cause_event_id; /* "" when fetched */
    const char *cause_reason;
} conn_org_snapshot;
int conn_apply_org_snapshot(pg_conn *tx, const conn_org_snapshot *s, bool *applied);

/* The consumers (SPEC 2): accounts (sensitivity CONN-05, seats and roles
 * CONN-06/CONN-08) and organizations (membership, CONN-09). */
int conn_on_accounts_event(pg_conn *tx, const evt_event *ev, void *arg);
int conn_on_organizations_event(pg_conn *tx, const evt_event *ev, void *arg);
/* CONN-05: restrict every connection where `hub_id` (now sensitive) is a
 * mirroring source; one ConnectionRestricted event and audit entry each. */
int conn_restrict_sensitive_source(pg_conn *tx, uint64_t hub_id, const char *cause_event_id);

/* CONN-13: the checks that wait for a consistency token's events read
 * conn_fresh_epoch() before looking, then conn_fresh_wait(epoch, ms) until
 * the epoch moves (every NOTIFY of connections_cache or
 * connections_applied, i.e. after each commit that applied an event or
 * changed something) or ms pass; true when it moved. */
void conn_fresh_signal(void);
uint64_t conn_fresh_epoch(void);
bool conn_fresh_wait(uint64_t epoch, long ms);

/* The cache invalidation listener (LISTEN connections_cache). */
int conn_listener_start(void);
void conn_listener_stop(void);

/* The audit resource of an organization's connections. */
void conn_history_resource(const char *org_id, char *buf, size_t cap);

#endif
