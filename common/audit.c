/* audit.c — the audit history of a service (audit.h, SPEC 8): one row per
 * mutation in <schema>.audit, written in the mutation's transaction, with the
 * before/after messages packed next to their type names. */
#include "audit.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "om_err.h"

void audit_actor_string(const om_actor *actor, const char *rule, char *buf, size_t cap) {
    if (buf == NULL || cap == 0) return;
    if (actor != NULL && actor->service[0] != '\0')
        snprintf(buf, cap, "service:%.*s", (int)sizeof actor->service, actor->service);
    else if (actor != NULL)
        snprintf(buf, cap, "user:%" PRIu64, actor->user_id);
    else if (rule != NULL && rule[0] != '\0')
        snprintf(buf, cap, "rule:%s", rule);
    else
        snprintf(buf, cap, "system");
}

/* Pack m (may be NULL) into a malloc'd buffer; *ok false on out of memory. */
static uint8_t *audit_pack(const ProtobufCMessage *m, size_t *len, bool *ok) {
    *len = 0;
    if (m == NULL) return NULL;
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = malloc(n + 1);
    if (buf == NULL) {
        *ok = false;
        return NULL;
    }
    protobuf_c_message_pack(m, buf);
    *len = n;
    return buf;
}

static const char *audit_opt(const char *s) { return s != NULL && s[0] != '\0' ? s : NULL; }

int audit_record(pg_conn *tx, const audit_entry *e) {
    if (e == NULL || e->action == NULL || e->resource == NULL) return OM_E_INTERNAL;
    char actor[64];
    audit_actor_string(e->actor, e->rule, actor, sizeof actor);
    bool ok = true;
    size_t blen, alen;
    uint8_t *before = audit_pack(e->before, &blen, &ok);
    uint8_t *after = audit_pack(e->after, &alen, &ok);
    if (!ok) {
        free(before);
        free(after);
        return OM_E_NOMEM;
    }
    pg_params p = {0};
    pg_p_str(&p, actor);
    pg_p_str(&p, e->action);
    pg_p_str(&p, e->resource);
    pg_p_str(&p, e->before != NULL ? e->before->descriptor->name : NULL);
    if (before != NULL)
        pg_p_bytes(&p, before, blen);
    else
        pg_p_null(&p);
    pg_p_str(&p, e->after != NULL ? e->after->descriptor->name : NULL);
    if (after != NULL)
        pg_p_bytes(&p, after, alen);
    else
        pg_p_null(&p);
    pg_p_str(&p, audit_opt(e->reason));
    pg_p_str(&p, audit_opt(e->request_id));
    pg_p_str(&p, audit_opt(e->trace_id));
    int rc = pg_exec(tx,
                     "INSERT INTO audit (actor, action, resource, before_type, before, after_type,"
                     " after, reason, request_id, trace_id)"
                     " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                     &p, NULL);
    free(before);
    free(after);
    return rc;
}

#define AUDIT_COLS                                                                             \
    "SELECT id, at, actor, action, resource, reason, request_id, trace_id,"                    \
    " before_type, before, after_type, after FROM audit"

/* Runs one of the page statements ($1 the resource or prefix, $2 the
 * cursor, $3 the limit + 1) and turns its rows into *out. */
static int page_read(pg_conn *c, const char *sql, const char *key, int64_t before_id, int limit, audit_page *out) {
    memset(out, 0, sizeof *out);
    if (limit < 1 || limit > 1000) return OM_E_INVALID_ARGUMENT;
    pg_params p = {0};
    pg_p_str(&p, key);
    pg_p_i64(&p, before_id > 0 ? before_id : INT64_MAX);
    pg_p_i64(&p, (int64_t)limit + 1); /* one more tells whether a next page exists */
    int rc = pg_exec(c, sql, &p, &out->res);
    if (rc != 0) return rc;
    int n = pg_nrows(out->res);
    int shown = n > limit ? limit : n;
    out->rows = calloc((size_t)shown + 1, sizeof *out->rows);
    if (out->rows == NULL) {
        audit_page_free(out);
        return OM_E_NOMEM;
    }
    for (int i = 0; i < shown; i++) {
        audit_row *row = &out->rows[i];
        row->id = pg_i64(out->res, i, 0);
        row->at_us = pg_time_us(out->res, i, 1);
        row->actor = pg_str(out->res, i, 2);
        row->action = pg_str(out->res, i, 3);
        row->resource = pg_str(out->res, i, 4);
        row->reason = pg_str(out->res, i, 5);
        row->request_id = pg_str(out->res, i, 6);
        row->trace_id = pg_str(out->res, i, 7);
        row->before_type = pg_str(out->res, i, 8);
        row->before = pg_bytes(out->res, i, 9, &row->before_len);
        row->after_type = pg_str(out->res, i, 10);
        row->after = pg_bytes(out->res, i, 11, &row->after_len);
    }
    out->n = shown;
    out->next_before_id = n > limit ? out->rows[shown - 1].id : 0;
    return 0;
}

int audit_list(pg_conn *c, const char *resource, int64_t before_id, int limit, audit_page *out) {
    return page_read(c, AUDIT_COLS " WHERE ($1::text IS NULL OR resource = $1) AND id < $2 ORDER BY id DESC LIMIT $3",
                     resource, before_id, limit, out);
}

/* The resource itself and everything under "<resource>/" (a statement of
 * its own, like the prefix one). */
int audit_list_tree(pg_conn *c, const char *resource, int64_t before_id, int limit, audit_page *out) {
    return page_read(c,
                     AUDIT_COLS " WHERE (resource = $1 OR starts_with(resource, $1 || '/')) AND id < $2"
                                " ORDER BY id DESC LIMIT $3",
                     resource, before_id, limit, out);
}

/* A statement of its own (not an OR in the one above), so each keeps its plan. */
int audit_list_prefix(pg_conn *c, const char *prefix, int64_t before_id, int limit, audit_page *out) {
    return page_read(c, AUDIT_COLS " WHERE starts_with(resource, $1) AND id < $2 ORDER BY id DESC LIMIT $3", prefix,
                     before_id, limit, out);
}

void audit_page_free(audit_page *p) {
    if (p == NULL) return;
    free(p->rows);
    pg_free(p->res);
    memset(p, 0, sizeof *p);
}
