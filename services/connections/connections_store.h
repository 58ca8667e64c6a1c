/* connections_store.h — every SQL statement of the connections service
 * (schema "connections", see migrations/). Parameterised only. Functions
 * return 0, OM_E_NOT_FOUND, or what pg_exec returned. Writes expect an open
 * transaction. */
#ifndef CONNECTIONS_STORE_H
#define CONNECTIONS_STORE_H

#include <stdbool.h>
#include <stdint.h>

#include "connections_rules.h"
#include "pg.h"

#define CONN_ID_LEN 37
#define CONN_MAX_MEMBERS_READ 16 /* the cap is 5; reads leave room */
#define CONN_MAX_ROWS 128        /* connections of one organization read at once */

typedef struct conn_row {
    char id[CONN_ID_LEN];
    char org_id[CONN_ID_LEN];
    conn_cfg cfg;
    int64_t version;
    int64_t create_us, update_us;
} conn_row;

typedef struct conn_org {
    char id[CONN_ID_LEN];
    int64_t version, config_version;
    bool deleted;
} conn_org;

/* ---- local copies (SPEC 2) ---- */

/* OM_E_NOT_FOUND when there is no copy (not even a tombstone). */
int store_org_get(pg_conn *c, const char *org_id, bool for_update, conn_org *out);
/* Inserts the copy (version 0, locked) if missing, then locks it: the
 * serialisation point of every change to one organization's connections. */
int store_org_lock(pg_conn *c, const char *org_id, conn_org *out);
int store_org_set(pg_conn *c, const char *org_id, int64_t version, bool deleted);
int store_org_set_config_version(pg_conn *c, const char *org_id, int64_t config_version);
int store_org_members(pg_conn *c, const char *org_id, uint64_t *hubs, int cap, int *n);
int store_org_members_replace(pg_conn *c, const char *org_id, const uint64_t *hubs, int n);
/* The (not deleted) organization `hub_id` is a member of. */
int store_org_of_account(pg_conn *c, uint64_t hub_id, char org_id[CONN_ID_LEN]);

/* Insert or update unless a newer (or the same) version is stored. */
int store_account_upsert(pg_conn *c, uint64_t hub_id, bool sensitive, bool deleted, int64_t version);
/* known[i] / sensitive[i] for each of hubs[0..n). */
int store_sensitivity(pg_conn *c, const uint64_t *hubs, int n, bool *known, bool *sensitive);

/* ---- connections ---- */

/* The organization's connections ordered by (account_a, account_b). */
int store_conns_of_org(pg_conn *c, const char *org_id, conn_row *out, int cap, int *n);
int store_conn_get(pg_conn *c, const char *conn_id, conn_row *out);
/* Fills r->id, version, times. OM_E_ALREADY_EXISTS on the pair key. */
int store_conn_insert(pg_conn *c, conn_row *r);
/* Writes r->cfg, bumps the version; r is updated. */
int store_conn_update(pg_conn *c, conn_row *r);
int store_conn_delete(pg_conn *c, const char *conn_id);
/* Post-commit invalidation of every replica's check cache (NOTIFY is
 * delivered at commit, only if the transaction commits). */
int store_notify_change(pg_conn *c);
#define CONN_NOTIFY_CHANNEL "connections_cache"
/* CONN-13: after commit, wakes the checks waiting for an event to be
 * applied (at_least_as_fresh) without dropping the cache. */
int store_notify_applied(pg_conn *c);
#define CONN_APPLIED_CHANNEL "connections_applied"
/* CONN-13: has this service applied the event `event_uuid` (applied_events)? */
int store_event_applied(pg_conn *c, const char *event_uuid, bool *applied);

/* ---- the hot checks' reads (outside transactions) ---- */

/* Facts about the flow S->T. */
int store_facts(pg_conn *c, uint64_t s, uint64_t t, conn_facts *out);
int store_seat(pg_conn *c, uint64_t hub_id, uint64_t user_id, conn_seat *out);
/* Accounts whose mirroring flows into T (same organization, connected,
 * direction, not sensitive), ascending. */
int store_mirror_sources(pg_conn *c, uint64_t t, uint64_t *out, int cap, int *n);

#endif
