/* history.c — see history.h. Above audit.c (storage) and rpc (the call's
 * allocations): audit.c itself knows nothing of calls, which keeps common/
 * free of circles (rpc_server -> idem -> audit). */
#include "history.h"

#include <inttypes.h>
#include <string.h>

#include "om_err.h"
#include "om_time.h"

static Google__Protobuf__Any *any_of(rpc_ctx *ctx, const char *type, const uint8_t *data, size_t len) {
    if (type == NULL || type[0] == '\0') return NULL;
    Google__Protobuf__Any *a = rpc_alloc(ctx, sizeof *a);
    google__protobuf__any__init(a);
    a->type_url = rpc_sprintf(ctx, "type.googleapis.com/%s", type);
    a->value.data = rpc_alloc(ctx, len + 1);
    if (len) memcpy(a->value.data, data, len);
    a->value.len = len;
    return a;
}

Orgmesh__Type__V1__AuditEntry *history_entry(rpc_ctx *ctx, const audit_row *r) {
    Orgmesh__Type__V1__AuditEntry *e = rpc_alloc(ctx, sizeof *e);
    orgmesh__type__v1__audit_entry__init(e);
    e->id = rpc_sprintf(ctx, "%" PRId64, r->id);
    e->actor = rpc_strdup(ctx, r->actor);
    e->action = rpc_strdup(ctx, r->action);
    e->resource = rpc_strdup(ctx, r->resource);
    e->reason = rpc_strdup(ctx, r->reason);
    e->request_id = rpc_strdup(ctx, r->request_id);
    e->trace_id = rpc_strdup(ctx, r->trace_id);
    Google__Protobuf__Timestamp *t = rpc_alloc(ctx, sizeof *t);
    om_pb_timestamp(t, r->at_us);
    e->time = t;
    e->before = any_of(ctx, r->before_type, r->before, r->before_len);
    e->after = any_of(ctx, r->after_type, r->after, r->after_len);
    return e;
}

int history_list(rpc_ctx *ctx, pg_conn *c, const history_req *q, history_out *out) {
    memset(out, 0, sizeof *out);
    const page_req *pg = q->page;
    int64_t before = pg->k1 <= (uint64_t)INT64_MAX ? (int64_t)pg->k1 : INT64_MAX;
    audit_page page = {0};
    int rc;
    switch (q->scope) {
    case HISTORY_RESOURCE: rc = audit_list(c, q->resource, before, pg->limit, &page); break;
    case HISTORY_TREE: rc = audit_list_tree(c, q->resource, before, pg->limit, &page); break;
    case HISTORY_PREFIX: rc = audit_list_prefix(c, q->resource, before, pg->limit, &page); break;
    default: rc = audit_list(c, NULL, before, pg->limit, &page); break;
    }
    if (rc != 0) return rc;
    out->entries = rpc_calloc(ctx, (size_t)page.n + 1, sizeof *out->entries);
    for (int i = 0; i < page.n; i++) out->entries[i] = history_entry(ctx, &page.rows[i]);
    out->n = (size_t)page.n;
    out->next_page_token = page_next(ctx, pg, page.next_before_id > 0, (uint64_t)page.next_before_id, 0);
    audit_page_free(&page);
    return 0;
}
