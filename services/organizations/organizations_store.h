/* organizations_store.h — every SQL statement of the organizations service
 * (schema "organizations", see migrations/). Parameterised only. Functions
 * return 0, OM_E_NOT_FOUND, OM_E_ALREADY_IN_ORGANIZATION (the one-org-per-
 * account key), or what pg_exec returned. Writes expect an open transaction. */
#ifndef ORGANIZATIONS_STORE_H
#define ORGANIZATIONS_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "organizations_rules.h"
#include "pg.h"

#define ORG_ID_LEN 37
#define ORG_MAX_MEMBERS_READ 16 /* the cap is 5; reads leave room */

typedef struct org_row {
    char id[ORG_ID_LEN];
    uint64_t founding_hub_id;
    char hosting_location[ORG_LOCATION_MAX];
    uint64_t created_by;
    int64_t version;
    int64_t create_us, update_us;
} org_row;

typedef struct org_member_row {
    uint64_t hub_id;
    char name[ORG_NAME_MAX];
    bool marketing_enterprise;
    bool founding;
    int64_t join_us;
    uint64_t joined_by;
    char ack_id[ORG_ID_LEN];
} org_member_row;

/* ---- local copies (SPEC 2) ---------------------------------------------- */

/* Insert or update the copy unless it already holds a newer version (or the
 * same). *applied (may be NULL) says whether it was written. */
int store_account_upsert(pg_conn *c, const org_account *a, bool *applied);
/* The copies of `ids` that exist, ordered by hub_id. With `lock`, the rows
 * are locked FOR UPDATE (in hub_id order) until the transaction ends, so an
 * event handler changing one of them waits for (and then sees) this
 * transaction's writes. out has room for n. */
int store_accounts_get(pg_conn *c, const uint64_t *ids, int n, bool lock, org_account *out, int *n_out);
int store_user_upsert(pg_conn *c, uint64_t user_id, bool two_factor, bool deleted, int64_t version);
/* OM_E_NOT_FOUND when there is no copy. */
int store_user_get(pg_conn *c, uint64_t user_id, bool *two_factor, bool *deleted);

/* ---- organizations ---------------------------------------------------------- */

int store_org_get(pg_conn *c, const char *org_id, bool for_update, org_row *out);
/* The organization `hub_id` is a member of (OM_E_NOT_FOUND if none). */
int store_org_of_account(pg_conn *c, uint64_t hub_id, char org_id[ORG_ID_LEN]);
/* Members ordered by join time, names and MARKETING ENTERPRISE from the
 * copies. */
int store_org_members(pg_conn *c, const char *org_id, org_member_row *out, int cap, int *n);
/* Which of ids[0..n) are in an organization: in_org[i]. */
int store_accounts_in_orgs(pg_conn *c, const uint64_t *ids, int n, bool *in_org);
int store_org_insert(pg_conn *c, uint64_t founding_hub_id, const char *location, uint64_t created_by,
                     org_row *out);
/* ORG-06: stores the acknowledgement, returns its id. */
int store_ack_insert(pg_conn *c, const char *org_id, uint64_t user_id, const char *text_version,
                     const uint64_t *hubs, int n, const char *action, char id_out[ORG_ID_LEN]);
/* OM_E_ALREADY_IN_ORGANIZATION when the account is in one already (ORG-02). */
int store_member_insert(pg_conn *c, const char *org_id, uint64_t hub_id, bool founding, uint64_t by,
                        const char *ack_id);
int store_member_delete(pg_conn *c, const char *org_id, uint64_t hub_id);
/* Sets version and update_time; the new update_time in *update_us. */
int store_org_set_version(pg_conn *c, const char *org_id, int64_t version, int64_t *update_us);
int store_org_delete(pg_conn *c, const char *org_id);

/* ---- tombstones (ORG-13) ------------------------------------------------------ */

typedef struct org_tombstone {
    org_row o; /* as it was when deleted; update_us = the deletion */
    int deletion_reason;
    int64_t delete_us, purge_us;
    uint64_t former[ORG_MAX_MEMBERS_READ];
    int n_former;
} org_tombstone;

/* Keeps what is left of o, deleted now for `reason`, until now() +
 * retention_s by the database clock. */
int store_tombstone_insert(pg_conn *c, const org_row *o, int reason, const uint64_t *former, int n_former,
                           int64_t retention_s);
/* The tombstone of org_id while it is kept (OM_E_NOT_FOUND otherwise). */
int store_tombstone_get(pg_conn *c, const char *org_id, org_tombstone *out);
/* Deletes up to `max` tombstones past their purge time; how many in *n. */
int store_tombstones_purge(pg_conn *c, int max, int *n);

#endif
