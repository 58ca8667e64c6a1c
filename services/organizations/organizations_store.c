/* organizations_store.c — the SQL of the organizations service (see
 * organizations_store.h). Parameterised statements only; id lists travel as
 * one bigint[] parameter. */
#include "organizations_store.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "om_err.h"
#include "om_ids.h"
#include "om_mem.h"


/* ---- local copies --------------------------------------------------------- */

int store_account_upsert(pg_conn *c, const org_account *a, bool *applied) {
    pg_params p = {0};
    pg_args(&p, a->hub_id, a->name, a->kind, a->hosting_location, a->state, a->has_professional,
            a->marketing_enterprise, a->deleted, a->version);
    pg_res *r = NULL;
    int rc = pg_exec(c,
                     "INSERT INTO account_copies AS x (hub_id, name, kind, hosting_location, state,"
                     " has_professional, marketing_enterprise, deleted, version)"
                     " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
                     " ON CONFLICT (hub_id) DO UPDATE SET name = EXCLUDED.name, kind = EXCLUDED.kind,"
                     " hosting_location = EXCLUDED.hosting_location, state = EXCLUDED.state,"
                     " has_professional = EXCLUDED.has_professional,"
                     " marketing_enterprise = EXCLUDED.marketing_enterprise, deleted = EXCLUDED.deleted,"
                     " version = EXCLUDED.version, update_time = now()"
                     " WHERE x.version < EXCLUDED.version",
                     &p, &r);
    if (rc != 0) return rc;
    if (applied) *applied = pg_affected(r) > 0;
    pg_free(r);
    return 0;
}

static void read_account(const pg_res *r, int i, om_mem *m, void *out) {
    org_account *a = out;
    memset(a, 0, sizeof *a);
    a->hub_id = pg_u64(r, i, 0);
    pg_str_to(r, i, 1, a->name, sizeof a->name);
    a->kind = (int)pg_i64(r, i, 2);
    pg_str_to(r, i, 3, a->hosting_location, sizeof a->hosting_location);
    a->state = (int)pg_i64(r, i, 4);
    a->has_professional = pg_bool(r, i, 5);
    a->marketing_enterprise = pg_bool(r, i, 6);
    a->deleted = pg_bool(r, i, 7);
    a->version = pg_i64(r, i, 8);
}

#define ACCOUNTS_SQL                                                                                     \
    "SELECT hub_id, name, kind, hosting_location, state, has_professional, marketing_enterprise, deleted," \
    " version FROM account_copies WHERE hub_id = ANY($1::bigint[]) ORDER BY hub_id"

int store_accounts_get(pg_conn *c, const uint64_t *ids, int n, bool lock, org_account *out, int *n_out) {
    *n_out = 0;
    if (n == 0) return 0;
    char *arr = om_id_array(malloc(OM_ID_ARRAY_CAP(n)), ids, (size_t)n);
    if (arr == NULL) return OM_E_NOMEM;
    pg_params p = {0};
    pg_p_str(&p, arr);
    int rc = pg_rows(c, lock ? ACCOUNTS_SQL " FOR UPDATE" : ACCOUNTS_SQL, &p, read_account, NULL, out, sizeof *out,
                     n, n_out);
    free(arr);
    return rc;
}

int store_user_upsert(pg_conn *c, uint64_t user_id, bool two_factor, bool deleted, int64_t version) {
    pg_params p = {0};
    pg_args(&p, user_id, two_factor, deleted, version);
    return pg_exec(c,
                   "INSERT INTO user_copies AS x (user_id, two_factor_enabled, deleted, version)"
                   " VALUES ($1, $2, $3, $4) ON CONFLICT (user_id) DO UPDATE SET"
                   " two_factor_enabled = EXCLUDED.two_factor_enabled, deleted = EXCLUDED.deleted,"
                   " version = EXCLUDED.version, update_time = now() WHERE x.version < EXCLUDED.version",
                   &p, NULL);
}

int store_user_get(pg_conn *c, uint64_t user_id, bool *two_factor, bool *deleted) {
    pg_params p = {0};
    pg_p_u64(&p, user_id);
    pg_res *r = NULL;
    int rc = pg_exec(c, "SELECT two_factor_enabled, deleted FROM user_copies WHERE user_id = $1", &p, &r);
    if (rc != 0) return rc;
    if (pg_nrows(r) == 0) rc = OM_E_NOT_FOUND;
    else {
        *two_factor = pg_bool(r, 0, 0);
        *deleted = pg_bool(r, 0, 1);
    }
    pg_free(r);
    return rc;
}

/* ---- organizations ------------------------------------------------------------ */

static void org_from(const pg_res *r, int i, om_mem *m, void *out) {
    org_row *o = out;
    memset(o, 0, sizeof *o);
    pg_str_to(r, i, 0, o->id, sizeof o->id);
    o->founding_hub_id = pg_u64(r, i, 1);
    pg_str_to(r, i, 2, o->hosting_location, sizeof o->hosting_location);
    o->created_by = pg_u64(r, i, 3);
    o->version = pg_i64(r, i, 4);
    o->create_us = pg_time_us(r, i, 5);
    o->update_us = pg_time_us(r, i, 6);
}

#define ORG_SQL                                                                                          \
    "SELECT organization_id::text, founding_hub_id, hosting_location, created_by, version, create_time," \
    " update_time FROM organizations WHERE organization_id = $1::uuid"

int store_org_get(pg_conn *c, const char *org_id, bool for_update, org_row *out) {
    pg_params p = {0};
    pg_p_str(&p, org_id);
    return pg_row(c, for_update ? ORG_SQL " FOR UPDATE" : ORG_SQL, &p, org_from, NULL, out);
}

int store_org_of_account(pg_conn *c, uint64_t hub_id, char org_id[ORG_ID_LEN]) {
    pg_params p = {0};
    pg_p_u64(&p, hub_id);
    pg_res *r = NULL;
    int rc = pg_exec(c, "SELECT organization_id::text FROM org_members WHERE hub_id = $1", &p, &r);
    if (rc != 0) return rc;
    if (pg_nrows(r) == 0) rc = OM_E_NOT_FOUND;
    else pg_str_to(r, 0, 0, org_id, ORG_ID_LEN);
    pg_free(r);
    return rc;
}

static void read_member(const pg_res *r, int i, om_mem *mem, void *out) {
    org_member_row *m = out;
    memset(m, 0, sizeof *m);
    m->hub_id = pg_u64(r, i, 0);
    pg_str_to(r, i, 1, m->name, sizeof m->name);
    m->marketing_enterprise = pg_bool(r, i, 2);
    m->founding = pg_bool(r, i, 3);
    m->join_us = pg_time_us(r, i, 4);
    m->joined_by = pg_u64(r, i, 5);
    pg_str_to(r, i, 6, m->ack_id, sizeof m->ack_id);
}

int store_org_members(pg_conn *c, const char *org_id, org_member_row *out, int cap, int *n) {
    pg_params p = {0};
    pg_p_str(&p, org_id);
    return pg_rows(c,
                   "SELECT m.hub_id, coalesce(a.name, ''), coalesce(a.marketing_enterprise AND NOT a.deleted,"
                   " false), m.founding, m.join_time, m.joined_by, m.acknowledgement_id::text"
                   " FROM org_members m LEFT JOIN account_copies a ON a.hub_id = m.hub_id"
                   " WHERE m.organization_id = $1::uuid ORDER BY m.join_time, m.hub_id",
                   &p, read_member, NULL, out, sizeof *out, cap, n);
}

int store_accounts_in_orgs(pg_conn *c, const uint64_t *ids, int n, bool *in_org) {
    for (int i = 0; i < n; i++) in_org[i] = false;
    if (n == 0) return 0;
    char *arr = om_id_array(malloc(OM_ID_ARRAY_CAP(n)), ids, (size_t)n);
    if (arr == NULL) return OM_E_NOMEM;
    pg_params p = {0};
    pg_p_str(&p, arr);
    pg_res *r = NULL;
    int rc = pg_exec(c, "SELECT hub_id FROM org_members WHERE hub_id = ANY($1::bigint[])", &p, &r);
    free(arr);
    if (rc != 0) return rc;
    for (int row = 0; row < pg_nrows(r); row++) {
        uint64_t hub = pg_u64(r, row, 0);
        for (int i = 0; i < n; i++)
            if (ids[i] == hub) in_org[i] = true;
    }
    pg_free(r);
    return 0;
}

int store_org_insert(pg_conn *c, uint64_t founding_hub_id, const char *location, uint64_t created_by,
                     org_row *out) {
    pg_params p = {0};
    pg_args(&p, founding_hub_id, location, created_by);
    return pg_row(c,
                  "INSERT INTO organizations (founding_hub_id, hosting_location, created_by)"
                  " VALUES ($1, $2, $3) RETURNING organization_id::text, founding_hub_id,"
                  " hosting_location, created_by, version, create_time, update_time",
                  &p, org_from, NULL, out);
}

int store_ack_insert(pg_conn *c, const char *org_id, uint64_t user_id, const char *text_version,
                     const uint64_t *hubs, int n, const char *action, char id_out[ORG_ID_LEN]) {
    char *arr = om_id_array(malloc(OM_ID_ARRAY_CAP(n)), hubs, (size_t)n);
    if (arr == NULL) return OM_E_NOMEM;
    pg_params p = {0};
    pg_args(&p, org_id, user_id, text_version, arr, action);
    pg_res *r = NULL;
    int rc = pg_exec(c,
                     "INSERT INTO acknowledgements (organization_id, user_id, text_version, hub_ids, action)"
                     " VALUES ($1::uuid, $2, $3, $4::bigint[], $5) RETURNING acknowledgement_id::text",
                     &p, &r);
    free(arr);
    if (rc != 0) return rc;
    pg_str_to(r, 0, 0, id_out, ORG_ID_LEN);
    pg_free(r);
    return 0;
}

int store_member_insert(pg_conn *c, const char *org_id, uint64_t hub_id, bool founding, uint64_t by,
                        const char *ack_id) {
    pg_params p = {0};
    pg_args(&p, hub_id, org_id, founding, by, ack_id);
    int rc = pg_exec(c,
                     "INSERT INTO org_members (hub_id, organization_id, founding, joined_by, acknowledgement_id)"
                     " VALUES ($1, $2::uuid, $3, $4, $5::uuid)",
                     &p, NULL);
    if (rc == OM_E_INTERNAL && strcmp(pg_sqlstate(c), "23505") == 0) return OM_E_ALREADY_IN_ORGANIZATION;
    return rc;
}

int store_member_delete(pg_conn *c, const char *org_id, uint64_t hub_id) {
    pg_params p = {0};
    pg_args(&p, org_id, hub_id);
    pg_res *r = NULL;
    int rc = pg_exec(c, "DELETE FROM org_members WHERE organization_id = $1::uuid AND hub_id = $2", &p, &r);
    if (rc != 0) return rc;
    if (pg_affected(r) == 0) rc = OM_E_NOT_FOUND;
    pg_free(r);
    return rc;
}

int store_org_set_version(pg_conn *c, const char *org_id, int64_t version, int64_t *update_us) {
    pg_params p = {0};
    pg_args(&p, org_id, version);
    pg_res *r = NULL;
    int rc = pg_exec(c,
                     "UPDATE organizations SET version = $2, update_time = now()"
                     " WHERE organization_id = $1::uuid RETURNING update_time",
                     &p, &r);
    if (rc != 0) return rc;
    if (pg_nrows(r) == 0) rc = OM_E_NOT_FOUND;
    else if (update_us) *update_us = pg_time_us(r, 0, 0);
    pg_free(r);
    return rc;
}

int store_org_delete(pg_conn *c, const char *org_id) {
    pg_params p = {0};
    pg_p_str(&p, org_id);
    return pg_exec(c, "DELETE FROM organizations WHERE organization_id = $1::uuid", &p, NULL);
}

/* ---- tombstones (ORG-13) --------------------------------------------------------- */

int store_tombstone_insert(pg_conn *c, const org_row *o, int reason, const uint64_t *former, int n_former,
                           int64_t retention_s) {
    char *arr = om_id_array(malloc(OM_ID_ARRAY_CAP(n_former)), former, (size_t)n_former);
    if (arr == NULL) return OM_E_NOMEM;
    pg_params p = {0};
    pg_args(&p, o->id, o->founding_hub_id, o->hosting_location, o->created_by, o->version, o->create_us, reason, arr,
            retention_s);
    /* a repeat (the same event applied again) keeps the first one */
    int rc = pg_exec(c,
                     "INSERT INTO org_tombstones (organization_id, founding_hub_id, hosting_location, created_by,"
                     " version, create_time, deletion_reason, former_member_hub_ids, purge_time)"
                     " VALUES ($1::uuid, $2, $3, $4, $5, to_timestamp($6::bigint / 1e6), $7, $8::bigint[],"
                     " now() + make_interval(secs => $9::bigint))"
                     " ON CONFLICT (organization_id) DO NOTHING",
                     &p, NULL);
    free(arr);
    return rc;
}

int store_tombstone_get(pg_conn *c, const char *org_id, org_tombstone *out) {
    pg_params p = {0};
    pg_p_str(&p, org_id);
    pg_res *r = NULL;
    int rc = pg_exec(c,
                     "SELECT organization_id::text, founding_hub_id, hosting_location, created_by, version,"
                     " create_time, delete_time, deletion_reason, purge_time,"
                     " array_to_string(former_member_hub_ids, ',')"
                     " FROM org_tombstones WHERE organization_id = $1::uuid AND purge_time > now()",
                     &p, &r);
    if (rc != 0) return rc;
    if (pg_nrows(r) == 0) {
        pg_free(r);
        return OM_E_NOT_FOUND;
    }
    memset(out, 0, sizeof *out);
    pg_str_to(r, 0, 0, out->o.id, sizeof out->o.id);
    out->o.founding_hub_id = pg_u64(r, 0, 1);
    pg_str_to(r, 0, 2, out->o.hosting_location, sizeof out->o.hosting_location);
    out->o.created_by = pg_u64(r, 0, 3);
    out->o.version = pg_i64(r, 0, 4);
    out->o.create_us = pg_time_us(r, 0, 5);
    out->delete_us = out->o.update_us = pg_time_us(r, 0, 6);
    out->deletion_reason = (int)pg_i64(r, 0, 7);
    out->purge_us = pg_time_us(r, 0, 8);
    for (const char *q = pg_str(r, 0, 9); *q && out->n_former < ORG_MAX_MEMBERS_READ;) {
        char *end = NULL;
        unsigned long long v = strtoull(q, &end, 10);
        if (end == q) break;
        out->former[out->n_former++] = (uint64_t)v;
        q = *end == ',' ? end + 1 : end;
    }
    pg_free(r);
    return 0;
}

int store_tombstones_purge(pg_conn *c, int max, int *n) {
    *n = 0;
    pg_params p = {0};
    pg_p_i64(&p, max);
    pg_res *r = NULL;
    /* ORG-13: the database clock decides; SKIP LOCKED lets replicas share it */
    int rc = pg_exec(c,
                     "DELETE FROM org_tombstones WHERE organization_id IN (SELECT organization_id FROM org_tombstones"
                     " WHERE purge_time <= now() ORDER BY purge_time LIMIT $1 FOR UPDATE SKIP LOCKED)",
                     &p, &r);
    if (rc != 0) return rc;
    *n = (int)pg_affected(r);
    pg_free(r);
    return 0;
}
