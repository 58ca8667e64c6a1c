/* assets_store.c — the SQL of the assets service: assets and their
 * references, the local copy of memberships, copy jobs and the audit
 * history as the handlers see them. The copy engine's own statements are
 * in assets_jobs.c. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "assets.h"
#include "audit.h"
#include "om_err.h"
#include "om_mem.h"


void asset_row_clear(asset_row *r) {
    free(r->body);
    free(r->refs);
    r->body = NULL;
    r->refs = NULL;
    r->n_refs = 0;
}

#define ASSET_COLS                                                                                              \
    "asset_id::text, hub_id, type, name, body, coalesce(source_hub_id, 0), coalesce(source_asset_id::text, ''), " \
    "coalesce(job_id::text, ''), version, create_time, update_time"

static int row_from(pg_res *r, int i, asset_row *a) {
    memset(a, 0, sizeof *a);
    pg_str_to(r, i, 0, a->id, sizeof a->id);
    a->hub = pg_u64(r, i, 1);
    a->type = (int)pg_i64(r, i, 2);
    pg_str_to(r, i, 3, a->name, sizeof a->name);
    a->body = strdup(pg_str(r, i, 4));
    a->src_hub = pg_u64(r, i, 5);
    pg_str_to(r, i, 6, a->src_id, sizeof a->src_id);
    pg_str_to(r, i, 7, a->job_id, sizeof a->job_id);
    a->version = pg_i64(r, i, 8);
    a->create_us = pg_time_us(r, i, 9);
    a->update_us = pg_time_us(r, i, 10);
    return a->body ? 0 : OM_E_NOMEM;
}

/* The references of rows[0..n), one query. */
static int load_refs(pg_conn *c, asset_row *rows, int n) {
    if (n == 0) return 0;
    size_t cap = (size_t)n * 40 + 4;
    char *arr = malloc(cap);
    if (arr == NULL) return OM_E_NOMEM;
    size_t off = 0;
    arr[off++] = '{';
    for (int i = 0; i < n; i++) off += (size_t)snprintf(arr + off, cap - off, "%s%s", i ? "," : "", rows[i].id);
    arr[off++] = '}';
    arr[off] = '\0';
    pg_params p = {0};
    pg_p_str(&p, arr);
    pg_res *r = NULL;
    int rc = pg_exec(c, "SELECT asset_id::text, ref_id::text, ref_type FROM asset_refs WHERE asset_id = ANY($1::uuid[])"
                        " ORDER BY asset_id, pos", &p, &r);
    free(arr);
    if (rc != 0) return rc;
    int nr = pg_nrows(r);
    for (int k = 0; k < nr && rc == 0; k++) {
        const char *aid = pg_str(r, k, 0);
        for (int i = 0; i < n; i++) {
            if (strcmp(rows[i].id, aid) != 0) continue;
            asset_ref *nrefs = realloc(rows[i].refs, (size_t)(rows[i].n_refs + 1) * sizeof *nrefs);
            if (nrefs == NULL) {
                rc = OM_E_NOMEM;
                break;
            }
            rows[i].refs = nrefs;
            pg_str_to(r, k, 1, nrefs[rows[i].n_refs].id, ASSET_ID_LEN);
            nrefs[rows[i].n_refs].type = (int)pg_i64(r, k, 2);
            rows[i].n_refs++;
            break;
        }
    }
    pg_free(r);
    return rc;
}

int store_asset_get(pg_conn *c, const char *id, bool for_update, asset_row *out) {
    pg_params p = {0};
    pg_p_str(&p, id);
    pg_res *r = NULL;
    int rc = pg_exec(c, for_update ? "SELECT " ASSET_COLS " FROM assets WHERE asset_id = $1::uuid FOR UPDATE"
                                   : "SELECT " ASSET_COLS " FROM assets WHERE asset_id = $1::uuid",
                     &p, &r);
    if (rc != 0) return rc;
    if (pg_nrows(r) == 0) rc = OM_E_NOT_FOUND;
    else rc = row_from(r, 0, out);
    pg_free(r);
    if (rc == 0) rc = load_refs(c, out, 1);
    return rc;
}

static int write_refs(pg_conn *tx, const asset_row *a) {
    for (int i = 0; i < a->n_refs; i++) {
        pg_params p = {0};
        pg_args(&p, a->id, i, a->refs[i].id, a->refs[i].type);
        int rc = pg_exec(tx, "INSERT INTO asset_refs (asset_id, pos, ref_id, ref_type) VALUES ($1::uuid, $2, $3::uuid, $4)",
                         &p, NULL);
        if (rc != 0) return rc;
    }
    return 0;
}

static int name_conflict(pg_conn *tx, int rc) {
    if (rc == OM_E_INTERNAL && strcmp(pg_sqlstate(tx), "23505") == 0) return OM_E_NAME_CONFLICT;
    return rc;
}

int store_asset_insert(pg_conn *tx, asset_row *a) {
    pg_params p = {0};
    pg_args(&p, a->hub, a->type, a->name, a->body);
    pg_res *r = NULL;
    /* ON CONFLICT DO NOTHING keeps the transaction usable on a name clash. */
    int rc = pg_exec(tx, "INSERT INTO assets (hub_id, type, name, body) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING"
                         " RETURNING asset_id::text, version, create_time, update_time", &p, &r);
    if (rc != 0) return rc;
    if (pg_nrows(r) == 0) rc = OM_E_NAME_CONFLICT;
    else {
        pg_str_to(r, 0, 0, a->id, sizeof a->id);
        a->version = pg_i64(r, 0, 1);
        a->create_us = pg_time_us(r, 0, 2);
        a->update_us = pg_time_us(r, 0, 3);
    }
    pg_free(r);
    if (rc == 0) rc = write_refs(tx, a);
    return rc;
}

int store_asset_update(pg_conn *tx, asset_row *a, bool refs_changed) {
    pg_params p = {0};
    pg_args(&p, a->id, a->name, a->body);
    pg_res *r = NULL;
    int rc = pg_exec(tx, "UPDATE assets SET name = $2, body = $3, version = version + 1, update_time = now()"
                         " WHERE asset_id = $1::uuid RETURNING version, update_time", &p, &r);
    if (rc != 0) return name_conflict(tx, rc);
    if (pg_nrows(r) == 0) rc = OM_E_NOT_FOUND;
    else {
        a->version = pg_i64(r, 0, 0);
        a->update_us = pg_time_us(r, 0, 1);
    }
    pg_free(r);
    if (rc == 0 && refs_changed) {
        pg_params q = {0};
        pg_p_str(&q, a->id);
        rc = pg_exec(tx, "DELETE FROM asset_refs WHERE asset_id = $1::uuid", &q, NULL);
        if (rc == 0) rc = write_refs(tx, a);
    }
    return rc;
}

int store_asset_delete(pg_conn *tx, const char *id) {
    pg_params p = {0};
    pg_p_str(&p, id);
    pg_res *r = NULL;
    int rc = pg_exec(tx, "SELECT 1 FROM asset_refs WHERE ref_id = $1::uuid LIMIT 1", &p, &r);
    if (rc != 0) return rc;
    bool used = pg_nrows(r) > 0;
    pg_free(r);
    if (used) return OM_E_ASSET_IN_USE;
    return pg_exec(tx, "DELETE FROM assets WHERE asset_id = $1::uuid", &p, NULL);
}

int store_refs_check(pg_conn *tx, uint64_t hub, const asset_ref *refs, int n, int *bad) {
    for (int i = 0; i < n; i++) {
        pg_params p = {0};
        pg_p_str(&p, refs[i].id);
        pg_res *r = NULL;
        /* FOR KEY SHARE: the referenced asset cannot be deleted under us. */
        int rc = pg_exec(tx, "SELECT hub_id, type FROM assets WHERE asset_id = $1::uuid FOR KEY SHARE", &p, &r);
        if (rc != 0) return rc;
        if (pg_nrows(r) == 0 || pg_u64(r, 0, 0) != hub) rc = OM_E_NOT_FOUND;
        else if (pg_i64(r, 0, 1) != refs[i].type) rc = OM_E_INVALID_ARGUMENT;
        pg_free(r);
        if (rc != 0) {
            *bad = i;
            return rc;
        }
    }
    return 0;
}

int store_asset_list(pg_conn *c, uint64_t hub, int type, const char *contains, int cursor_type,
                     const char *cursor_name, int limit, asset_row **rows, int *n) {
    pg_params p = {0};
    pg_args(&p, hub, type, contains ? contains : "", cursor_type, cursor_name ? cursor_name : "", limit);
    pg_res *r = NULL;
    int rc = pg_exec(c, "SELECT " ASSET_COLS " FROM assets WHERE hub_id = $1 AND ($2 = 0 OR type = $2)"
                        " AND ($3 = '' OR strpos(lower(name), lower($3)) > 0)"
                        " AND (type, lower(name)) > ($4::int, $5::text)"
                        " ORDER BY type, lower(name) LIMIT $6", &p, &r);
    if (rc != 0) return rc;
    int nr = pg_nrows(r);
    *rows = calloc((size_t)(nr ? nr : 1), sizeof **rows);
    *n = 0;
    if (*rows == NULL) rc = OM_E_NOMEM;
    for (int i = 0; rc == 0 && i < nr; i++) {
        rc = row_from(r, i, &(*rows)[i]);
        *n = i + 1;
    }
    pg_free(r);
    if (rc == 0) rc = load_refs(c, *rows, *n);
    return rc;
}

/* ---- audit history (SPEC 8) ---- */

history_scope store_history_key(uint64_t hub, const char *asset_id, char *key, size_t cap) {
    /* One asset: its exact resource; the account: everything under
     * accounts/<hub>/ (its assets and the copy jobs into it). */
    if (asset_id && asset_id[0]) {
        assets_history_resource(hub, "assets", asset_id, key, cap);
        return HISTORY_RESOURCE;
    }
    snprintf(key, cap, "accounts/%" PRIu64 "/", hub);
    return HISTORY_PREFIX;
}

/* ---- memberships ---- */

/* ---- jobs ---- */

/* A running job's counters are those on its row plus the counts of the
 * batches finished since the last claim folded them in (copy_batches). */
#define JOB_SELECT                                                                                            \
    "SELECT j.job_id::text, j.source_hub_id, j.target_hub_id, j.include_dependencies, j.policy, j.state,"      \
    " j.total, j.done + coalesce(b.c + b.k + b.x, 0), j.copied + coalesce(b.c, 0), j.skipped + coalesce(b.k, 0)," \
    " j.failed + coalesce(b.x, 0), j.failure_reason, j.created_by, j.version, j.create_time, j.start_time,"    \
    " j.end_time, j.update_time FROM copy_jobs j LEFT JOIN LATERAL (SELECT sum(copied) AS c, sum(skipped) AS k," \
    " sum(failed) AS x FROM copy_batches cb WHERE cb.job_id = j.job_id AND j.state IN (" SQL_JOB_OPEN ")"        \
    " AND cb.finish_time IS NOT NULL AND NOT cb.folded) b ON true"

static void job_from(const pg_res *r, int i, om_mem *m, void *out) {
    job_row *j = out;
    memset(j, 0, sizeof *j);
    pg_str_to(r, i, 0, j->id, sizeof j->id);
    j->source = pg_u64(r, i, 1);
    j->target = pg_u64(r, i, 2);
    j->include_deps = pg_bool(r, i, 3);
    j->policy = (int)pg_i64(r, i, 4);
    j->state = (int)pg_i64(r, i, 5);
    j->total = (int)pg_i64(r, i, 6);
    j->done = (int)pg_i64(r, i, 7);
    j->copied = (int)pg_i64(r, i, 8);
    j->skipped = (int)pg_i64(r, i, 9);
    j->failed = (int)pg_i64(r, i, 10);
    pg_str_to(r, i, 11, j->failure_reason, sizeof j->failure_reason);
    j->created_by = pg_u64(r, i, 12);
    j->version = pg_i64(r, i, 13);
    j->create_us = pg_time_us(r, i, 14);
    j->start_us = pg_isnull(r, i, 15) ? 0 : pg_time_us(r, i, 15);
    j->end_us = pg_isnull(r, i, 16) ? 0 : pg_time_us(r, i, 16);
    j->update_us = pg_time_us(r, i, 17);
}

int store_job_get(pg_conn *c, const char *id, bool for_update, job_row *out) {
    pg_params p = {0};
    pg_p_str(&p, id);
    return pg_row(c,
                  for_update ? JOB_SELECT " WHERE j.job_id = $1::uuid FOR UPDATE OF j"
                             : JOB_SELECT " WHERE j.job_id = $1::uuid",
                  &p, job_from, NULL, out);
}

/* The asked ids that are not assets of `source` (malloc'd, comma-separated)
 * into *missing. */
static int job_missing(pg_conn *tx, uint64_t source, const char *ids, char **missing) {
    pg_params p = {0};
    pg_args(&p, ids, source);
    pg_res *r = NULL;
    int rc = pg_exec(tx, "SELECT string_agg(x::text, ',') FROM unnest($1::uuid[]) AS x"
                         " WHERE NOT EXISTS (SELECT 1 FROM assets a WHERE a.asset_id = x AND a.hub_id = $2)",
                     &p, &r);
    if (rc != 0) return rc;
    *missing = strdup(pg_isnull(r, 0, 0) ? "" : pg_str(r, 0, 0));
    pg_free(r);
    return *missing ? 0 : OM_E_NOMEM;
}

int store_job_create(pg_conn *tx, job_row *j, const char *ids, char **missing) {
    *missing = NULL;
    pg_params jp = {0};
    pg_args(&jp, j->source, j->target, j->include_deps, j->policy, j->created_by);
    pg_res *r = NULL;
    int rc = pg_exec(tx, "INSERT INTO copy_jobs (source_hub_id, target_hub_id, include_dependencies, policy, total, created_by)"
                         " VALUES ($1, $2, $3, $4, 0, $5) RETURNING job_id::text", &jp, &r);
    if (rc != 0) return rc;
    char id[ASSET_ID_LEN];
    pg_str_to(r, 0, 0, id, sizeof id);
    pg_free(r);
    /* ASSET-04: the closure over references when asked (an asset reached
     * only through references is a dependency), and the copy order
     * (dependencies first), in one set-based statement that also says how
     * many of the asked ids it found in the source account. */
    pg_params ip = {0};
    pg_args(&ip, id, ids, j->include_deps, j->source);
    rc = pg_exec(tx, "WITH RECURSIVE sel(asset_id, dep) AS ("
                     "   SELECT DISTINCT x, false FROM unnest($2::uuid[]) AS x"
                     "   UNION SELECT r.ref_id, true FROM sel JOIN asset_refs r ON r.asset_id = sel.asset_id WHERE $3),"
                     " pick AS (SELECT asset_id, bool_and(dep) AS dep FROM sel GROUP BY asset_id),"
                     " ins AS (INSERT INTO copy_items (job_id, seq, source_asset_id, type, rank, source_name, dependency)"
                     "   SELECT $1::uuid, row_number() OVER (ORDER BY CASE a.type WHEN 4 THEN 0 WHEN 3 THEN 1 ELSE 2 END,"
                     "   a.type, lower(a.name)), a.asset_id, a.type, CASE a.type WHEN 4 THEN 0 WHEN 3 THEN 1 ELSE 2 END,"
                     "   a.name, pick.dep FROM pick JOIN assets a ON a.asset_id = pick.asset_id AND a.hub_id = $4"
                     "   RETURNING dependency)"
                     " SELECT count(*), count(*) FILTER (WHERE NOT dependency),"
                     "  (SELECT count(DISTINCT x) FROM unnest($2::uuid[]) AS x) FROM ins", &ip, &r);
    if (rc != 0) return rc;
    int64_t total = pg_i64(r, 0, 0);
    bool all_found = pg_i64(r, 0, 1) == pg_i64(r, 0, 2);
    pg_free(r);
    if (!all_found) { /* ASSET-02: the caller rolls back */
        if ((rc = job_missing(tx, j->source, ids, missing)) != 0) return rc;
        return OM_E_NOT_FOUND;
    }
    if (total > ASSET_JOB_MAX) return OM_E_BATCH_TOO_LARGE; /* ASSET-02: the caller rolls back */
    pg_params tp = {0};
    pg_args(&tp, id, total);
    if ((rc = pg_exec(tx, "UPDATE copy_jobs SET total = $2 WHERE job_id = $1::uuid", &tp, NULL)) != 0) return rc;
    return store_job_get(tx, id, false, j);
}

int store_job_list(pg_conn *c, uint64_t hub, int state, int64_t before_us, const char *before_id, int limit,
                   job_row **rows, int *n) {
    pg_params p = {0};
    pg_args(&p, hub, state, before_us, before_id && before_id[0] ? before_id : "ffffffff-ffff-ffff-ffff-ffffffffffff",
            limit);
    pg_res *r = NULL;
    int rc = pg_exec(c, JOB_SELECT " WHERE (j.source_hub_id = $1 OR j.target_hub_id = $1)"
                        " AND ($2 = 0 OR j.state = $2)"
                        " AND ($3 = 0 OR (j.create_time, j.job_id) < (to_timestamp($3 / 1e6), $4::uuid))"
                        " ORDER BY j.create_time DESC, j.job_id DESC LIMIT $5", &p, &r);
    if (rc != 0) return rc;
    int nr = pg_nrows(r);
    *rows = calloc((size_t)(nr ? nr : 1), sizeof **rows);
    if (*rows == NULL) rc = OM_E_NOMEM;
    for (int i = 0; rc == 0 && i < nr; i++) job_from(r, i, NULL, &(*rows)[i]);
    *n = rc == 0 ? nr : 0;
    pg_free(r);
    return rc;
}

int store_job_stop(pg_conn *tx, job_row *j, int state, const char *reason, const char *message) {
    pg_params p = {0};
    pg_args(&p, j->id, reason, message);
    int rc = pg_exec(tx,
                     "UPDATE copy_items SET outcome = " OM_SQL(ASSET_SQL_CANCELLED) ", error_reason = $2,"
                     " error_message = $3, finish_time = now()"
                     " WHERE job_id = $1::uuid AND outcome = " OM_SQL(ASSET_SQL_PENDING),
                     &p, NULL);
    if (rc != 0) return rc;
    pg_params q = {0};
    pg_args(&q, j->id, state, state == ORGMESH__ASSETS__V1__COPY_JOB_STATE__COPY_JOB_STATE_CANCELLED ? "" : reason);
    /* The counters recounted from the items (the batches' counts included). */
    rc = pg_exec(tx, "UPDATE copy_jobs j SET state = $2, failure_reason = $3, done = total, copied = c.copied,"
                     " skipped = c.skipped, failed = c.failed, end_time = now(), update_time = now(),"
                     " version = version + 1, lease_owner = NULL, lease_until = NULL"
                     " FROM (SELECT count(*) FILTER (WHERE outcome = " OM_SQL(ASSET_SQL_COPIED) ") AS copied,"
                     "  count(*) FILTER (WHERE outcome = " OM_SQL(ASSET_SQL_SKIPPED) ") AS skipped,"
                     "  count(*) FILTER (WHERE outcome = " OM_SQL(ASSET_SQL_FAILED) ") AS failed"
                     "  FROM copy_items WHERE job_id = $1::uuid) c"
                     " WHERE j.job_id = $1::uuid", &q, NULL);
    if (rc != 0) return rc;
    return store_job_get(tx, j->id, false, j);
}
