/* connections_store.c — the SQL of the connections service; see
 * connections_store.h. */
#include "connections_store.h"

#include <stdio.h>
#include <string.h>

#include "om_err.h"
#include "om_mem.h"

static void copy_str(char *dst, size_t cap, const char *s) { snprintf(dst, cap, "%s", s ? s : ""); }

/* ---- local copies ---- */

int store_org_get(pg_conn *c, const char *org_id, bool for_update, conn_org *out) {
    pg_params p = {0};
    pg_p_str(&p, org_id);
    pg_res *r = NULL;
    int rc = pg_exec(c,
                     for_update ? "SELECT version, config_version, deleted FROM orgs WHERE organization_id = $1::uuid"
                                  " FOR UPDATE"
                                : "SELECT version, config_version, deleted FROM orgs WHERE organization_id = $1::uuid",
                     &p, &r);
    if (rc != 0) return rc;
    if (pg_nrows(r) == 0) rc = OM_E_NOT_FOUND;
    else {
        copy_str(out->id, sizeof out->id, org_id);
        out->version = pg_i64(r, 0, 0);
        out->config_version = pg_i64(r, 0, 1);
        out->deleted = pg_bool(r, 0, 2);
    }
    pg_free(r);
    return rc;
}

int store_org_lock(pg_conn *c, const char *org_id, conn_org *out) {
    pg_params p = {0};
    pg_p_str(&p, org_id);
    int rc = pg_exec(c, "INSERT INTO orgs (organization_id, version) VALUES ($1::uuid, 0) ON CONFLICT DO NOTHING", &p,
                     NULL);
    if (rc != 0) return rc;
    return store_org_get(c, org_id, true, out);
}

int store_org_set(pg_conn *c, const char *org_id, int64_t version, bool deleted) {
    pg_params p = {0};
    pg_p_str(&p, org_id);
    pg_p_i64(&p, version);
    pg_p_bool(&p, deleted);
    return pg_exec(c, "UPDATE orgs SET version = $2, deleted = $3, update_time = now() WHERE organization_id = $1::uuid",
                   &p, NULL);
}

int store_org_set_config_version(pg_conn *c, const char *org_id, int64_t config_version) {
    pg_params p = {0};
    pg_p_str(&p, org_id);
    pg_p_i64(&p, config_version);
    return pg_exec(c, "UPDATE orgs SET config_version = $2 WHERE organization_id = $1::uuid", &p, NULL);
}

int store_org_members(pg_conn *c, const char *org_id, uint64_t *hubs, int cap, int *n) {
    pg_params p = {0};
    pg_p_str(&p, org_id);
    pg_res *r = NULL;
    int rc = pg_exec(c, "SELECT hub_id FROM org_members WHERE organization_id = $1::uuid ORDER BY hub_id", &p, &r);
    if (rc != 0) return rc;
    *n = 0;
    for (int i = 0; i < pg_nrows(r) && *n < cap; i++) hubs[(*n)++] = pg_u64(r, i, 0);
    pg_free(r);
    return 0;
}

int store_org_members_replace(pg_conn *c, const char *org_id, const uint64_t *hubs, int n) {
    pg_params p = {0};
    pg_p_str(&p, org_id);
    int rc = pg_exec(c, "DELETE FROM org_members WHERE organization_id = $1::uuid", &p, NULL);
    for (int i = 0; rc == 0 && i < n; i++) {
        pg_params q = {0};
        pg_p_str(&q, org_id);
        pg_p_u64(&q, hubs[i]);
        rc = pg_exec(c, "INSERT INTO org_members (organization_id, hub_id) VALUES ($1::uuid, $2) ON CONFLICT DO NOTHING",
                     &q, NULL);
    }
    return rc;
}

int store_org_of_account(pg_conn *c, uint64_t hub_id, char org_id[CONN_ID_LEN]) {
    pg_params p = {0};
    pg_p_u64(&p, hub_id);
    pg_res *r = NULL;
    int rc = pg_exec(c,
                     "SELECT m.organization_id::text FROM org_members m JOIN orgs o USING (organization_id)"
                     " WHERE m.hub_id = $1 AND NOT o.deleted ORDER BY o.version DESC LIMIT 1",
                     &p, &r);
    if (rc != 0) return rc;
    if (pg_nrows(r) == 0) rc = OM_E_NOT_FOUND;
    else copy_str(org_id, CONN_ID_LEN, pg_str(r, 0, 0));
    pg_free(r);
    return rc;
}

int store_account_upsert(pg_conn *c, uint64_t hub_id, bool sensitive, bool deleted, int64_t version) {
    pg_params p = {0};
    pg_p_u64(&p, hub_id);
    pg_p_bool(&p, sensitive);
    pg_p_bool(&p, deleted);
    pg_p_i64(&p, version);
    return pg_exec(c,
                   "INSERT INTO account_copies (hub_id, sensitive_data_enabled, deleted, version)"
                   " VALUES ($1, $2, $3, $4) ON CONFLICT (hub_id) DO UPDATE SET"
                   " sensitive_data_enabled = EXCLUDED.sensitive_data_enabled, deleted = EXCLUDED.deleted,"
                   " version = EXCLUDED.version, update_time = now()"
                   " WHERE account_copies.version < EXCLUDED.version",
                   &p, NULL);
}

int store_sensitivity(pg_conn *c, const uint64_t *hubs, int n, bool *known, bool *sensitive) {
    for (int i = 0; i < n; i++) {
        known[i] = false;
        sensitive[i] = false;
        pg_params p = {0};
        pg_p_u64(&p, hubs[i]);
        pg_res *r = NULL;
        int rc = pg_exec(c, "SELECT sensitive_data_enabled FROM account_copies WHERE hub_id = $1", &p, &r);
        if (rc != 0) return rc;
        if (pg_nrows(r) > 0) {
            known[i] = true;
            sensitive[i] = pg_bool(r, 0, 0);
        }
        pg_free(r);
    }
    return 0;
}

/* ---- connections ---- */

#define CONN_COLS                                                                                          \
    "connection_id::text, organization_id::text, account_a, account_b, mirroring, mirroring_source,"      \
    " asset_copying, asset_copying_source, version, (extract(epoch from create_time) * 1000000)::bigint," \
    " (extract(epoch from update_time) * 1000000)::bigint, workflows, workflows_source"

static void read_row(const pg_res *r, int i, om_mem *m, void *out_) {
    (void)m;
    conn_row *out = out_;
    memset(out, 0, sizeof *out);
    copy_str(out->id, sizeof out->id, pg_str(r, i, 0));
    copy_str(out->org_id, sizeof out->org_id, pg_str(r, i, 1));
    out->cfg.a = pg_u64(r, i, 2);
    out->cfg.b = pg_u64(r, i, 3);
    out->cfg.mirroring.dir = (int)pg_i64(r, i, 4);
    out->cfg.mirroring.source = pg_u64(r, i, 5);
    out->cfg.asset_copying.dir = (int)pg_i64(r, i, 6);
    out->cfg.asset_copying.source = pg_u64(r, i, 7);
    out->version = pg_i64(r, i, 8);
    out->create_us = pg_i64(r, i, 9);
    out->update_us = pg_i64(r, i, 10);
    out->cfg.workflows.dir = (int)pg_i64(r, i, 11);
    out->cfg.workflows.source = pg_u64(r, i, 12);
}

int store_conns_of_org(pg_conn *c, const char *org_id, conn_row *out, int cap, int *n) {
    pg_params p = {0};
    pg_p_str(&p, org_id);
    return pg_rows(c,
                   "SELECT " CONN_COLS " FROM connections WHERE organization_id = $1::uuid"
                   " ORDER BY account_a, account_b",
                   &p, read_row, NULL, out, sizeof *out, cap, n);
}

int store_conn_get(pg_conn *c, const char *conn_id, conn_row *out) {
    pg_params p = {0};
    pg_p_str(&p, conn_id);
    return pg_row(c, "SELECT " CONN_COLS " FROM connections WHERE connection_id = $1::uuid", &p, read_row, NULL,
                  out);
}

int store_conn_insert(pg_conn *c, conn_row *row) {
    pg_params p = {0};
    pg_p_str(&p, row->org_id);
    pg_p_u64(&p, row->cfg.a);
    pg_p_u64(&p, row->cfg.b);
    pg_p_i64(&p, row->cfg.mirroring.dir);
    pg_p_i64(&p, (int64_t)row->cfg.mirroring.source);
    pg_p_i64(&p, row->cfg.asset_copying.dir);
    pg_p_i64(&p, (int64_t)row->cfg.asset_copying.source);
    pg_p_i64(&p, row->cfg.workflows.dir ? row->cfg.workflows.dir : CONN_DIR_OFF);
    pg_p_i64(&p, (int64_t)row->cfg.workflows.source);
    int rc = pg_row(c,
                    "INSERT INTO connections (organization_id, account_a, account_b, mirroring, mirroring_source,"
                    " asset_copying, asset_copying_source, workflows, workflows_source)"
                    " VALUES ($1::uuid, $2, $3, $4, $5, $6, $7, $8, $9)"
                    " RETURNING " CONN_COLS,
                    &p, read_row, NULL, row);
    return rc != 0 && strcmp(pg_sqlstate(c), "23505") == 0 ? OM_E_ALREADY_EXISTS : rc;
}

int store_conn_update(pg_conn *c, conn_row *row) {
    pg_params p = {0};
    pg_p_str(&p, row->id);
    pg_p_i64(&p, row->cfg.mirroring.dir);
    pg_p_i64(&p, (int64_t)row->cfg.mirroring.source);
    pg_p_i64(&p, row->cfg.asset_copying.dir);
    pg_p_i64(&p, (int64_t)row->cfg.asset_copying.source);
    pg_p_i64(&p, row->cfg.workflows.dir ? row->cfg.workflows.dir : CONN_DIR_OFF);
    pg_p_i64(&p, (int64_t)row->cfg.workflows.source);
    return pg_row(c,
                  "UPDATE connections SET mirroring = $2, mirroring_source = $3, asset_copying = $4,"
                  " asset_copying_source = $5, workflows = $6, workflows_source = $7,"
                  " version = version + 1, update_time = now()"
                  " WHERE connection_id = $1::uuid RETURNING " CONN_COLS,
                  &p, read_row, NULL, row);
}

int store_conn_delete(pg_conn *c, const char *conn_id) {
    pg_params p = {0};
    pg_p_str(&p, conn_id);
    return pg_exec(c, "DELETE FROM connections WHERE connection_id = $1::uuid", &p, NULL);
}

int store_notify_change(pg_conn *c) {
    return pg_exec(c, "SELECT pg_notify('" CONN_NOTIFY_CHANNEL "', '')", NULL, NULL);
}

int store_notify_applied(pg_conn *c) {
    return pg_exec(c, "SELECT pg_notify('" CONN_APPLIED_CHANNEL "', '')", NULL, NULL);
}

int store_event_applied(pg_conn *c, const char *event_uuid, bool *applied) {
    pg_params p = {0};
    pg_p_str(&p, event_uuid);
    pg_res *r = NULL;
    int rc = pg_exec(c, "SELECT 1 FROM applied_events WHERE event_id = $1::uuid", &p, &r);
    if (rc != 0) return rc;
    *applied = pg_nrows(r) > 0;
    pg_free(r);
    return 0;
}

/* ---- the hot checks ---- */

int store_facts(pg_conn *c, uint64_t s, uint64_t t, conn_facts *out) {
    uint64_t a, b;
    conn_pair(s, t, &a, &b);
    pg_params p = {0};
    pg_args(&p, s, t, a, b);
    pg_res *r = NULL;
    /* One statement, so one snapshot. */
    int rc = pg_exec(c,
                     "SELECT EXISTS (SELECT 1 FROM org_members ms JOIN org_members mt USING (organization_id)"
                     "   JOIN orgs o USING (organization_id) WHERE ms.hub_id = $1 AND mt.hub_id = $2 AND NOT o.deleted),"
                     " c.mirroring, c.mirroring_source, c.asset_copying, c.asset_copying_source,"
                     " COALESCE((SELECT sensitive_data_enabled FROM account_copies WHERE hub_id = $1), false),"
                     " c.connection_id IS NOT NULL, c.workflows, c.workflows_source"
                     " FROM (SELECT 1) x LEFT JOIN connections c ON c.account_a = $3 AND c.account_b = $4",
                     &p, &r);
    if (rc != 0) return rc;
    memset(out, 0, sizeof *out);
    out->same_org = pg_bool(r, 0, 0);
    out->connected = pg_bool(r, 0, 6);
    if (out->connected) {
        conn_feature m = {(int)pg_i64(r, 0, 1), pg_u64(r, 0, 2)};
        conn_feature as = {(int)pg_i64(r, 0, 3), pg_u64(r, 0, 4)};
        out->mirror_flows = conn_flows(&m, s, t);
        out->asset_flows = conn_flows(&as, s, t);
        conn_feature w = {(int)pg_i64(r, 0, 7), pg_u64(r, 0, 8)};
        out->workflow_flows = conn_flows(&w, s, t); /* CONN-10 */
    }
    out->source_sensitive = pg_bool(r, 0, 5);
    pg_free(r);
    return 0;
}

int store_seat(pg_conn *c, uint64_t hub_id, uint64_t user_id, conn_seat *out) {
    memset(out, 0, sizeof *out);
    pg_params p = {0};
    pg_p_u64(&p, hub_id);
    pg_p_u64(&p, user_id);
    pg_res *r = NULL;
    int rc = pg_exec(c, "SELECT roles, seats FROM membership_copies WHERE hub_id = $1 AND user_id = $2 AND NOT deleted",
                     &p, &r);
    if (rc != 0) return rc;
    if (pg_nrows(r) > 0) {
        out->member = true;
        out->roles = (unsigned)pg_i64(r, 0, 0);
        out->seats = (unsigned)pg_i64(r, 0, 1);
    }
    pg_free(r);
    return 0;
}

int store_mirror_sources(pg_conn *c, uint64_t t, uint64_t *out, int cap, int *n) {
    pg_params p = {0};
    pg_p_u64(&p, t);
    pg_res *r = NULL;
    int rc = pg_exec(c,
                     "SELECT ms.hub_id, c.mirroring, c.mirroring_source,"
                     " COALESCE(a.sensitive_data_enabled, false)"
                     " FROM org_members mt JOIN orgs o ON o.organization_id = mt.organization_id AND NOT o.deleted"
                     " JOIN org_members ms ON ms.organization_id = mt.organization_id AND ms.hub_id <> mt.hub_id"
                     " JOIN connections c ON c.account_a = LEAST(ms.hub_id, mt.hub_id)"
                     "  AND c.account_b = GREATEST(ms.hub_id, mt.hub_id)"
                     " LEFT JOIN account_copies a ON a.hub_id = ms.hub_id"
                     " WHERE mt.hub_id = $1 ORDER BY ms.hub_id",
                     &p, &r);
    if (rc != 0) return rc;
    *n = 0;
    for (int i = 0; i < pg_nrows(r) && *n < cap; i++) {
        uint64_t s = pg_u64(r, i, 0);
        conn_feature m = {(int)pg_i64(r, i, 1), pg_u64(r, i, 2)};
        if (conn_flows(&m, s, t) && !pg_bool(r, i, 3)) out[(*n)++] = s; /* CONN-05 at read time */
    }
    pg_free(r);
    return 0;
}
