/* assets_rpc.c — the handlers of orgmesh.assets.v1.AssetsService (SPEC 5).
 * Small helpers first (validation, the fetch of a missing membership copy
 * from the accounts service that op_run calls between attempts,
 * authorization), then one handler per RPC (validation, then op_run) with
 * a line naming the rules it enforces. Rules are in assets_rules.c, SQL in
 * assets_store.c, the copying itself in assets_jobs.c. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app.h"
#include "assets.h"
#include "audit.h"
#include "copies.h"
#include "history.h"
#include "op.h"
#include "log.h"
#include "om_err.h"
#include "om_time.h"
#include "orgmesh/accounts/v1/accounts.pb-c.h"
#include "orgmesh/connections/v1/connections.pb-c.h"
#include "page.h"

_Static_assert((int)ORGMESH__ASSETS__V1__COPY_JOB_STATE__COPY_JOB_STATE_CANCELLED == JOB_CANCELLED, "job states");
_Static_assert((int)ORGMESH__ASSETS__V1__COPY_JOB_STATE__COPY_JOB_STATE_QUEUED == JOB_QUEUED, "job states");

/* What a handler's transaction may find missing (op_need). */
#define NEED_MEMBERSHIPS 1u

static int memb_put(pg_conn *tx, const CopiesMembership *m, void *arg) {
    (void)arg;
    return copies_membership_put(tx, m, false, m->version);
}

/* SPEC 2: the actor's memberships, from their owner, into the local copy. */
static int assets_fetch(rpc_ctx *ctx, op_call *cl, void *arg) {
    (void)arg;
    return copies_fetch_memberships(ctx, cl->db, cl->actor->user_id, memb_put, NULL, NULL);
}

/* The actor's standing in `hub`: a member at all, and with MARKETING_ACCESS
 * or SUPER_ADMIN (service identities act for the platform: both). */
static int marketing_in(op_call *cl, pg_conn *tx, uint64_t hub, bool *member, bool *allowed) {
    *member = *allowed = cl->actor->user_id == 0;
    if (*allowed) return 0;
    bool known;
    unsigned roles;
    int rc = copies_memberships_get(tx, cl->actor->user_id, &hub, 1, &known, &roles, NULL, member);
    if (rc != 0) return rc;
    if (!known && !(cl->fetched & NEED_MEMBERSHIPS)) return op_need(cl, NEED_MEMBERSHIPS);
    *allowed = (roles & (ROLE_BIT_MARKETING_ACCESS | ROLE_BIT_SUPER_ADMIN)) != 0;
    return 0;
}

/* ASSET-01/02: MARKETING_ACCESS or SUPER_ADMIN in `hub`. Defect 5
 * (AIP-193): a member without either role gets PERMISSION_DENIED; someone
 * who is no member of the account may not learn that it, or what `hidden`
 * names in it, exists: NOT_FOUND with `hidden` (or "account <id> not
 * found"), as for an id that does not exist. */
static int require_marketing(op_call *cl, pg_conn *tx, uint64_t hub, const char *hidden) {
    bool member, allowed;
    int rc = marketing_in(cl, tx, hub, &member, &allowed);
    if (rc != 0 || allowed) return rc;
    if (!member) {
        if (hidden != NULL) return op_fail(cl, OM_E_NOT_FOUND, "%s", hidden);
        return op_fail(cl, OM_E_NOT_FOUND, "account %" PRIu64 " not found", hub);
    }
    return op_fail(cl, OM_E_PERMISSION_DENIED, "marketing access or super admin in account %" PRIu64 " is required",
                   hub);
}

/* ---- validation ---- */

static void check_hub(rpc_ctx *ctx, const char *field, uint64_t id) {
    if (id == 0) rpc_violation(ctx, field, "must be set");
    else if (!pg_id_valid(id)) rpc_violation(ctx, field, "is out of range");
}

static void check_uuid(rpc_ctx *ctx, const char *field, const char *id) {
    if (id == NULL || id[0] == '\0') rpc_violation(ctx, field, "must be set");
    else if (!asset_uuid_valid(id)) rpc_violation(ctx, field, "is not an id of this service");
}

static void check_etag(rpc_ctx *ctx, const char *etag) {
    int64_t v;
    if (etag && etag[0] && asset_etag_decode(etag, &v) != 0) rpc_violation(ctx, "etag", "is not an etag of this service");
}

static int etag_matches(const char *etag, int64_t version) {
    int64_t v;
    return etag == NULL || etag[0] == '\0' || (asset_etag_decode(etag, &v) == 0 && v == version);
}

static void check_name(rpc_ctx *ctx, const char *field, const char *name) {
    const char *why = asset_name_problem(name);
    if (why) rpc_violation(ctx, field, "%s", why);
}

/* ASSET-01: body JSON and size. */
static void check_body(rpc_ctx *ctx, const char *field, const char *body) {
    const char *why = asset_body_problem(body, body ? strlen(body) : 0);
    if (why) rpc_violation(ctx, field, "%s", why);
}

/* ASSET-01: typed references, at most 100, no duplicates, allowed types. */
static void check_refs(rpc_ctx *ctx, int type, APB(AssetReference) *const *refs, size_t n) {
    if (n > ASSET_MAX_REFS) {
        rpc_violation(ctx, "asset.references", "at most %d references", ASSET_MAX_REFS);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        char f[48];
        snprintf(f, sizeof f, "asset.references[%zu]", i);
        if (refs[i] == NULL || !asset_uuid_valid(refs[i]->asset_id)) {
            rpc_violation(ctx, f, "asset_id is not an id of this service");
            continue;
        }
        if (!asset_ref_allowed(type, (int)refs[i]->type))
            rpc_violation(ctx, f, "this type of asset cannot reference that type");
        for (size_t k = 0; k < i; k++)
            if (refs[k] && strcasecmp(refs[k]->asset_id, refs[i]->asset_id) == 0)
                rpc_violation(ctx, f, "duplicate reference");
    }
}

static asset_ref *refs_from(APB(AssetReference) *const *refs, size_t n) {
    asset_ref *out = calloc(n ? n : 1, sizeof *out);
    if (out == NULL) return NULL;
    for (size_t i = 0; i < n; i++) {
        snprintf(out[i].id, sizeof out[i].id, "%s", refs[i]->asset_id);
        for (char *p = out[i].id; *p; p++)
            if (*p >= 'A' && *p <= 'F') *p = (char)(*p - 'A' + 'a');
        out[i].type = (int)refs[i]->type;
    }
    return out;
}

/* ---- protobuf views (memory of the call) ---- */

static APB(Asset) *asset_pb(rpc_ctx *ctx, const asset_row *a) {
    APB(Asset) *p = rpc_alloc(ctx, sizeof *p);
    orgmesh__assets__v1__asset__init(p);
    p->asset_id = rpc_strdup(ctx, a->id);
    p->hub_id = a->hub;
    p->type = (APB(AssetType))a->type;
    p->name = rpc_strdup(ctx, a->name);
    p->body_json = rpc_strdup(ctx, a->body ? a->body : "");
    if (a->n_refs > 0) {
        p->references = rpc_calloc(ctx, (size_t)a->n_refs, sizeof *p->references);
        p->n_references = (size_t)a->n_refs;
        for (int i = 0; i < a->n_refs; i++) {
            APB(AssetReference) *r = rpc_alloc(ctx, sizeof *r);
            orgmesh__assets__v1__asset_reference__init(r);
            r->asset_id = rpc_strdup(ctx, a->refs[i].id);
            r->type = (APB(AssetType))a->refs[i].type;
            p->references[i] = r;
        }
    }
    if (a->src_hub != 0) { /* ASSET-05 */
        APB(Provenance) *v = rpc_alloc(ctx, sizeof *v);
        orgmesh__assets__v1__provenance__init(v);
        v->source_hub_id = a->src_hub;
        v->source_asset_id = rpc_strdup(ctx, a->src_id);
        v->job_id = rpc_strdup(ctx, a->job_id);
        p->provenance = v;
    }
    p->version = a->version;
    char etag[ASSET_ETAG_MAX];
    asset_etag_encode(a->version, etag);
    p->etag = rpc_strdup(ctx, etag);
    p->create_time = rpc_alloc(ctx, sizeof *p->create_time);
    om_pb_timestamp(p->create_time, a->create_us);
    p->update_time = rpc_alloc(ctx, sizeof *p->update_time);
    om_pb_timestamp(p->update_time, a->update_us);
    return p;
}

static APB(CopyJob) *job_pb_of(rpc_ctx *ctx, const job_row *j) {
    job_pb *v = rpc_alloc(ctx, sizeof *v);
    v->row = *j;
    assets_job_pb_build(v);
    return &v->pb;
}

static int emit_asset(op_call *cl, pg_conn *tx, const asset_row *a, const ProtobufCMessage *ev) {
    char subject[64];
    snprintf(subject, sizeof subject, "assets/%s", a->id);
    evt_meta meta = {.subject = subject, .version = a->version, .actor = cl->actor, .trace_id = rpc_trace_id(cl->ctx)};
    return evt_emit(tx, &meta, ev, NULL);
}

static int audit_asset(op_call *cl, pg_conn *tx, const asset_row *a, const char *action, const ProtobufCMessage *before,
                       const ProtobufCMessage *after, const char *request_id) {
    char resource[128];
    assets_history_resource(a->hub, "assets", a->id, resource, sizeof resource);
    audit_entry e = {.actor = cl->actor, .action = action, .resource = resource, .before = before, .after = after,
                     .request_id = request_id && request_id[0] ? request_id : NULL, .trace_id = rpc_trace_id(cl->ctx)};
    return audit_record(tx, &e);
}

/* ASSET-01: references name assets of the same account, of the stated type. */
static int refs_valid(op_call *cl, pg_conn *tx, const asset_row *a) {
    int bad = -1;
    int rc = store_refs_check(tx, a->hub, a->refs, a->n_refs, &bad);
    if (rc == OM_E_NOT_FOUND) {
        rpc_violation(cl->ctx, "asset.references", "reference %d: no such asset in account %" PRIu64, bad, a->hub);
        return op_fail(cl, OM_E_INVALID_ARGUMENT, "a reference names no asset of this account");
    }
    if (rc == OM_E_INVALID_ARGUMENT) {
        rpc_violation(cl->ctx, "asset.references", "reference %d: the type does not match the asset", bad);
        return op_fail(cl, OM_E_INVALID_ARGUMENT, "a reference's type does not match the asset");
    }
    return rc;
}

/* ---- CreateAsset — ASSET-01 ---- */

static int create_apply(op_call *cl, pg_conn *tx) {
    const APB(CreateAssetRequest) *req = cl->req;
    asset_row *a = cl->arg;
    int rc = require_marketing(cl, tx, a->hub, NULL);
    if (rc != 0) return rc;
    if ((rc = refs_valid(cl, tx, a)) != 0) return rc;
    rc = store_asset_insert(tx, a);
    if (rc == OM_E_NAME_CONFLICT) /* ASSET-01: unique per account and type, ignoring case */
        return op_fail(cl, rc, "account %" PRIu64 " already has an asset of this type named \"%s\"", a->hub, a->name);
    if (rc != 0) return rc;
    APB(CreateAssetResponse) *resp = (void *)cl->resp;
    resp->asset = asset_pb(cl->ctx, a);
    APB(AssetCreated) ev = ORGMESH__ASSETS__V1__ASSET_CREATED__INIT;
    ev.asset = resp->asset;
    if ((rc = emit_asset(cl, tx, a, &ev.base)) != 0) return rc;
    return audit_asset(cl, tx, a, "asset.create", NULL, &resp->asset->base, req->request_id);
}

static const op_def create_def = {.apply = create_apply, .mutation = true, .fetch = assets_fetch};
static int h_create(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp) {
    const APB(CreateAssetRequest) *req = (const void *)req_;
    const APB(Asset) *in = req->asset;
    if (in == NULL) return op_fail_unset(ctx, "asset");
    check_hub(ctx, "asset.hub_id", in->hub_id);
    if (!asset_type_valid((int)in->type)) rpc_violation(ctx, "asset.type", "must be EMAIL_REGULAR, EMAIL_AUTOMATED, LIST or FORM");
    check_name(ctx, "asset.name", in->name);
    check_body(ctx, "asset.body_json", in->body_json);
    check_refs(ctx, (int)in->type, in->references, in->n_references);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    asset_row a = {.hub = in->hub_id, .type = (int)in->type};
    snprintf(a.name, sizeof a.name, "%s", in->name);
    a.body = (char *)in->body_json;
    a.refs = refs_from(in->references, in->n_references);
    a.n_refs = (int)in->n_references;
    if (a.refs == NULL) return rpc_fail(ctx, OM_E_NOMEM, NULL);
    int rc = op_run(ctx, &create_def, req, resp, &a);
    free(a.refs);
    return rc;
}

/* ---- GetAsset — ASSET-01 ---- */

static int get_apply(op_call *cl, pg_conn *tx) {
    const APB(GetAssetRequest) *req = cl->req;
    asset_row a;
    int rc = store_asset_get(tx, req->asset_id, false, &a);
    if (rc == OM_E_NOT_FOUND) return op_fail(cl, rc, "asset %s not found", req->asset_id);
    if (rc == 0) rc = require_marketing(cl, tx, a.hub, rpc_sprintf(cl->ctx, "asset %s not found", req->asset_id));
    if (rc == 0) ((APB(GetAssetResponse) *)cl->resp)->asset = asset_pb(cl->ctx, &a);
    asset_row_clear(&a);
    return rc;
}

static const op_def get_def = {.apply = get_apply, .fetch = assets_fetch};
static int h_get(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp) {
    const APB(GetAssetRequest) *req = (const void *)req_;
    check_uuid(ctx, "asset_id", req->asset_id);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    return op_run(ctx, &get_def, req, resp, NULL);
}

/* ---- ListAssets — ASSET-01 ---- */

typedef struct list_state {
    int limit;
    int cursor_type;
    const char *cursor_name;
    const char *scope;
} list_state;

static int list_apply(op_call *cl, pg_conn *tx) {
    const APB(ListAssetsRequest) *req = cl->req;
    list_state *s = cl->arg;
    int rc = require_marketing(cl, tx, req->hub_id, NULL);
    if (rc != 0) return rc;
    asset_row *rows = NULL;
    int n = 0;
    rc = store_asset_list(tx, req->hub_id, (int)req->type, req->name_contains, s->cursor_type, s->cursor_name,
                          s->limit + 1, &rows, &n);
    APB(ListAssetsResponse) *resp = (void *)cl->resp;
    if (rc == 0) {
        int shown = n > s->limit ? s->limit : n;
        resp->assets = rpc_calloc(cl->ctx, (size_t)(shown ? shown : 1), sizeof *resp->assets);
        resp->n_assets = (size_t)shown;
        for (int i = 0; i < shown; i++) resp->assets[i] = asset_pb(cl->ctx, &rows[i]);
        char *tok = NULL;
        char *cursor = NULL;
        if (n > s->limit) {
            cursor = rpc_sprintf(cl->ctx, "%d\t%s", rows[shown - 1].type, rows[shown - 1].name);
            for (char *p = strchr(cursor, '\t') + 1; *p; p++)
                if (*p >= 'A' && *p <= 'Z') *p = (char)(*p - 'A' + 'a');
        }
        rc = page_token_encode(s->scope, cursor, &tok);
        if (rc == 0) {
            resp->next_page_token = rpc_strdup(cl->ctx, tok);
            free(tok);
        }
    }
    for (int i = 0; i < n; i++) asset_row_clear(&rows[i]);
    free(rows);
    return rc;
}

static const op_def list_def = {.apply = list_apply, .fetch = assets_fetch};
static int h_list(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp) {
    const APB(ListAssetsRequest) *req = (const void *)req_;
    list_state s = {0};
    check_hub(ctx, "hub_id", req->hub_id);
    if (req->type != 0 && !asset_type_valid((int)req->type)) rpc_violation(ctx, "type", "unknown asset type");
    if (page_size_normalize(req->page_size, &s.limit) != 0) rpc_violation(ctx, "page_size", "must not be negative");
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    s.scope = rpc_sprintf(ctx, "assets.ListAssets|hub=%" PRIu64 "|type=%d|name=%s", req->hub_id, (int)req->type,
                          req->name_contains ? req->name_contains : "");
    char *cursor = NULL;
    if (page_token_decode(s.scope, req->page_token, &cursor) != 0) return rpc_fail(ctx, OM_E_INVALID_PAGE_TOKEN, NULL);
    if (cursor) {
        char *tab = strchr(cursor, '\t');
        if (tab) {
            *tab = '\0';
            s.cursor_type = atoi(cursor);
            s.cursor_name = rpc_strdup(ctx, tab + 1);
        }
        free(cursor);
    }
    return op_run(ctx, &list_def, req, resp, &s);
}

/* ---- UpdateAsset — ASSET-01 (etag) ---- */

typedef struct update_state {
    bool name, body, refs;
    asset_ref *new_refs;
} update_state;

static int update_apply(op_call *cl, pg_conn *tx) {
    const APB(UpdateAssetRequest) *req = cl->req;
    update_state *s = cl->arg;
    asset_row a;
    int rc = store_asset_get(tx, req->asset->asset_id, true, &a);
    if (rc == OM_E_NOT_FOUND) return op_fail(cl, rc, "asset %s not found", req->asset->asset_id);
    if (rc != 0) return rc;
    APB(Asset) *before = asset_pb(cl->ctx, &a);
    if ((rc = require_marketing(cl, tx, a.hub, rpc_sprintf(cl->ctx, "asset %s not found", req->asset->asset_id))) != 0)
        goto out;
    if (!etag_matches(req->etag, a.version)) {
        rc = op_fail(cl, OM_E_ETAG_MISMATCH, "asset %s changed since it was read", a.id);
        goto out;
    }
    const char *changed[3];
    size_t n_changed = 0;
    if (s->name && strcmp(a.name, req->asset->name) != 0) {
        snprintf(a.name, sizeof a.name, "%s", req->asset->name);
        changed[n_changed++] = "name";
    }
    if (s->body && strcmp(a.body, req->asset->body_json) != 0) {
        free(a.body);
        a.body = strdup(req->asset->body_json);
        if (a.body == NULL) {
            rc = OM_E_NOMEM;
            goto out;
        }
        changed[n_changed++] = "body_json";
    }
    if (s->refs) {
        if (!asset_ref_allowed(a.type, ASSET_LIST) && !asset_ref_allowed(a.type, ASSET_FORM) &&
            req->asset->n_references > 0) {
            rpc_violation(cl->ctx, "asset.references", "this type of asset cannot reference others");
            rc = op_fail(cl, OM_E_INVALID_ARGUMENT, "invalid references");
            goto out;
        }
        for (size_t i = 0; i < req->asset->n_references; i++)
            if (!asset_ref_allowed(a.type, (int)req->asset->references[i]->type)) {
                rpc_violation(cl->ctx, "asset.references", "this type of asset cannot reference that type");
                rc = op_fail(cl, OM_E_INVALID_ARGUMENT, "invalid references");
                goto out;
            }
        size_t nref = req->asset->n_references;
        asset_ref *copy = calloc(nref ? nref : 1, sizeof *copy);
        if (copy == NULL) {
            rc = OM_E_NOMEM;
            goto out;
        }
        memcpy(copy, s->new_refs, nref * sizeof *copy);
        free(a.refs);
        a.refs = copy; /* a fresh copy per attempt: pg_tx may run this again */
        a.n_refs = (int)nref;
        changed[n_changed++] = "references";
        if ((rc = refs_valid(cl, tx, &a)) != 0) goto out;
    }
    rc = store_asset_update(tx, &a, s->refs);
    if (rc == OM_E_NAME_CONFLICT) {
        rc = op_fail(cl, rc, "account %" PRIu64 " already has an asset of this type named \"%s\"", a.hub, a.name);
        goto out;
    }
    if (rc != 0) goto out;
    APB(UpdateAssetResponse) *resp = (void *)cl->resp;
    resp->asset = asset_pb(cl->ctx, &a);
    APB(AssetUpdated) ev = ORGMESH__ASSETS__V1__ASSET_UPDATED__INIT;
    ev.asset = resp->asset;
    ev.previous = before;
    ev.changed_fields = (char **)changed;
    ev.n_changed_fields = n_changed;
    if ((rc = emit_asset(cl, tx, &a, &ev.base)) != 0) goto out;
    rc = audit_asset(cl, tx, &a, "asset.update", &before->base, &resp->asset->base, req->request_id);
out:
    asset_row_clear(&a);
    return rc;
}

static const op_def update_def = {.apply = update_apply, .mutation = true, .fetch = assets_fetch};
static int h_update(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp) {
    const APB(UpdateAssetRequest) *req = (const void *)req_;
    update_state s = {0};
    if (req->asset == NULL) rpc_violation(ctx, "asset", "must be set");
    else check_uuid(ctx, "asset.asset_id", req->asset->asset_id);
    if (req->update_mask == NULL || req->update_mask->n_paths == 0) rpc_violation(ctx, "update_mask", "must name fields");
    else
        for (size_t i = 0; i < req->update_mask->n_paths; i++) {
            const char *p = req->update_mask->paths[i];
            if (strcmp(p, "name") == 0) s.name = true;
            else if (strcmp(p, "body_json") == 0) s.body = true;
            else if (strcmp(p, "references") == 0) s.refs = true;
            else rpc_violation(ctx, "update_mask", "unknown or immutable field \"%s\"", p);
        }
    check_etag(ctx, req->etag);
    if (req->asset) {
        if (s.name) check_name(ctx, "asset.name", req->asset->name);
        if (s.body) check_body(ctx, "asset.body_json", req->asset->body_json);
        if (s.refs) check_refs(ctx, ASSET_EMAIL_REGULAR, req->asset->references, req->asset->n_references);
    }
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    if (s.refs && (s.new_refs = refs_from(req->asset->references, req->asset->n_references)) == NULL)
        return rpc_fail(ctx, OM_E_NOMEM, NULL);
    int rc = op_run(ctx, &update_def, req, resp, &s);
    free(s.new_refs);
    return rc;
}

/* ---- DeleteAsset — ASSET-01 ---- */

static int delete_apply(op_call *cl, pg_conn *tx) {
    const APB(DeleteAssetRequest) *req = cl->req;
    asset_row a;
    int rc = store_asset_get(tx, req->asset_id, true, &a);
    if (rc == OM_E_NOT_FOUND) return op_fail(cl, rc, "asset %s not found", req->asset_id);
    if (rc != 0) return rc;
    if ((rc = require_marketing(cl, tx, a.hub, rpc_sprintf(cl->ctx, "asset %s not found", req->asset_id))) != 0)
        goto out;
    if (!etag_matches(req->etag, a.version)) {
        rc = op_fail(cl, OM_E_ETAG_MISMATCH, "asset %s changed since it was read", a.id);
        goto out;
    }
    rc = store_asset_delete(tx, a.id);
    if (rc == OM_E_ASSET_IN_USE) {
        rc = op_fail(cl, rc, "another asset of the account references asset %s", a.id);
        goto out;
    }
    if (rc != 0) goto out;
    APB(Asset) *last = asset_pb(cl->ctx, &a);
    APB(AssetDeleted) ev = ORGMESH__ASSETS__V1__ASSET_DELETED__INIT;
    ev.asset = last;
    a.version++;
    if ((rc = emit_asset(cl, tx, &a, &ev.base)) != 0) goto out;
    rc = audit_asset(cl, tx, &a, "asset.delete", &last->base, NULL, req->request_id);
out:
    asset_row_clear(&a);
    return rc;
}

static const op_def delete_def = {.apply = delete_apply, .mutation = true, .fetch = assets_fetch};
static int h_delete(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp) {
    const APB(DeleteAssetRequest) *req = (const void *)req_;
    check_uuid(ctx, "asset_id", req->asset_id);
    check_etag(ctx, req->etag);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    return op_run(ctx, &delete_def, req, resp, NULL);
}

/* ---- CopyAssets — ASSET-02, CONN-07 ---- */

typedef struct copy_state {
    const char *ids; /* uuid[] literal */
} copy_state;

static int copy_apply(op_call *cl, pg_conn *tx) {
    const APB(CopyAssetsRequest) *req = cl->req;
    copy_state *s = cl->arg;
    /* ASSET-02: MARKETING_ACCESS or SUPER_ADMIN in both accounts. */
    int rc = require_marketing(cl, tx, req->source_hub_id, NULL);
    if (rc == 0) rc = require_marketing(cl, tx, req->target_hub_id, NULL);
    if (rc != 0) return rc;
    job_row j = {.source = req->source_hub_id, .target = req->target_hub_id,
                 .include_deps = req->options ? req->options->include_dependencies : false,
                 .policy = req->options && req->options->conflict_policy ? (int)req->options->conflict_policy
                                                                         : POLICY_RENAME,
                 .created_by = cl->actor->user_id};
    char *missing = NULL;
    rc = store_job_create(tx, &j, s->ids, &missing);
    if (rc == OM_E_NOT_FOUND) {
        rpc_violation(cl->ctx, "asset_ids", "not assets of account %" PRIu64 ": %.300s", req->source_hub_id,
                      missing ? missing : "");
        free(missing);
        return op_fail(cl, rc, "some assets are not in the source account");
    }
    free(missing);
    if (rc == OM_E_BATCH_TOO_LARGE)
        return op_fail(cl, rc, "a job copies at most %d assets, dependencies included", ASSET_JOB_MAX);
    if (rc != 0) return rc;
    APB(CopyAssetsResponse) *resp = (void *)cl->resp;
    resp->job = job_pb_of(cl->ctx, &j);
    char resource[128];
    assets_history_resource(j.target, "copy_jobs", j.id, resource, sizeof resource);
    audit_entry e = {.actor = cl->actor, .action = "copy_job.create", .resource = resource, .after = &resp->job->base,
                     .request_id = req->request_id && req->request_id[0] ? req->request_id : NULL,
                     .trace_id = rpc_trace_id(cl->ctx)};
    if ((rc = audit_record(tx, &e)) != 0) return rc;
    return assets_jobs_notify(tx);
}

/* ASSET-02: the actor's rights alone (CopyAssets checks them before asking
 * the connections service). */
static int copy_authz_apply(op_call *cl, pg_conn *tx) {
    const APB(CopyAssetsRequest) *req = cl->req;
    int rc = require_marketing(cl, tx, req->source_hub_id, NULL);
    if (rc == 0) rc = require_marketing(cl, tx, req->target_hub_id, NULL);
    return rc;
}

/* CONN-07, asked of the connections service. */
static int check_copy_allowed(rpc_ctx *ctx, uint64_t s, uint64_t t) {
    rpc_client *c = app_peer("connections");
    if (c == NULL) return rpc_fail(ctx, OM_E_UNAVAILABLE, "the connections service is not configured");
    Orgmesh__Connections__V1__CheckAssetCopyRequest req = ORGMESH__CONNECTIONS__V1__CHECK_ASSET_COPY_REQUEST__INIT;
    req.source_hub_id = s;
    req.target_hub_id = t;
    Orgmesh__Connections__V1__CheckAssetCopyResponse *resp = NULL;
    int64_t left = rpc_time_left_ms(ctx);
    rpc_call_opts o = {.token = app_service_token(), .trace_id = rpc_trace_id(ctx),
                       .deadline_ms = left < 5000 ? (int)(left > 0 ? left : 1) : 5000, .idempotent = true};
    rpc_status st;
    int rc = rpc_client_call(c, "/orgmesh.connections.v1.ConnectionsService/CheckAssetCopy", &req.base,
                             &orgmesh__connections__v1__check_asset_copy_response__descriptor,
                             (ProtobufCMessage **)&resp, &o, &st);
    if (rc != 0) {
        log_warn("connections CheckAssetCopy failed: %d %s %s", (int)st.code, st.reason, st.message);
        return rpc_fail(ctx, OM_E_UNAVAILABLE, "the connections service is unavailable; retry");
    }
    bool allowed = resp->allowed;
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    if (!allowed)
        return rpc_fail(ctx, OM_E_COPY_NOT_ALLOWED,
                        "asset copying does not flow from account %" PRIu64 " to account %" PRIu64, s, t);
    return 0;
}

static const op_def copy_authz_def = {.apply = copy_authz_apply, .fetch = assets_fetch};
static const op_def copy_def = {.apply = copy_apply, .mutation = true, .fetch = assets_fetch};
static int h_copy(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp) {
    const APB(CopyAssetsRequest) *req = (const void *)req_;
    check_hub(ctx, "source_hub_id", req->source_hub_id);
    check_hub(ctx, "target_hub_id", req->target_hub_id);
    if (req->n_asset_ids == 0) rpc_violation(ctx, "asset_ids", "must name at least one asset");
    if (req->options && ((int)req->options->conflict_policy < 0 || (int)req->options->conflict_policy > POLICY_FAIL))
        rpc_violation(ctx, "options.conflict_policy", "unknown policy");
    if (req->n_asset_ids > ASSET_JOB_MAX) /* ASSET-02 */
        return rpc_fail(ctx, OM_E_BATCH_TOO_LARGE, "a job copies at most %d assets", ASSET_JOB_MAX);
    for (size_t i = 0; i < req->n_asset_ids; i++)
        if (!asset_uuid_valid(req->asset_ids[i])) {
            rpc_violation(ctx, "asset_ids", "asset_ids[%zu] is not an id of this service", i);
            break;
        }
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    if (req->source_hub_id == req->target_hub_id)
        return rpc_fail(ctx, OM_E_SAME_ACCOUNT, "source and target are the same account");
    /* AIP-193: the actor's rights first (again inside the job's transaction),
     * so that whether copying flows between two accounts of another tenant
     * never shows. */
    int rc = op_run(ctx, &copy_authz_def, req, resp, NULL);
    if (rc != 0) return rc;
    rc = check_copy_allowed(ctx, req->source_hub_id, req->target_hub_id); /* ASSET-02 via CONN-07 */
    if (rc != 0) return rc;
    size_t cap = req->n_asset_ids * 37 + 3;
    char *ids = rpc_alloc(ctx, cap);
    size_t off = 0;
    ids[off++] = '{';
    for (size_t i = 0; i < req->n_asset_ids; i++) {
        if (i) ids[off++] = ',';
        memcpy(ids + off, req->asset_ids[i], 36);
        off += 36;
    }
    ids[off++] = '}';
    ids[off] = '\0';
    copy_state s = {.ids = ids};
    return op_run(ctx, &copy_def, req, resp, &s);
}

/* ---- jobs: Get, List, Cancel, Results — ASSET-03 ---- */

/* Visible to members with marketing rights in the source or the target; a
 * member of either without them: PERMISSION_DENIED; anyone else: NOT_FOUND
 * (AIP-193), as for a job that does not exist. */
static int require_job_viewer(op_call *cl, pg_conn *tx, const job_row *j) {
    bool ms, as, mt, at;
    int rc = marketing_in(cl, tx, j->source, &ms, &as);
    if (rc == 0) rc = marketing_in(cl, tx, j->target, &mt, &at);
    if (rc != 0 || as || at) return rc;
    if (!ms && !mt) return op_fail(cl, OM_E_NOT_FOUND, "copy job %s not found", j->id);
    return op_fail(cl, OM_E_PERMISSION_DENIED,
                   "marketing access or super admin in account %" PRIu64 " or %" PRIu64 " is required", j->source,
                   j->target);
}

static int load_job(op_call *cl, pg_conn *tx, const char *id, bool lock, job_row *j) {
    int rc = store_job_get(tx, id, lock, j);
    if (rc == OM_E_NOT_FOUND) return op_fail(cl, rc, "copy job %s not found", id);
    if (rc != 0) return rc;
    return require_job_viewer(cl, tx, j);
}

static int getjob_apply(op_call *cl, pg_conn *tx) {
    const APB(GetCopyJobRequest) *req = cl->req;
    job_row j;
    int rc = load_job(cl, tx, req->job_id, false, &j);
    if (rc == 0) ((APB(GetCopyJobResponse) *)cl->resp)->job = job_pb_of(cl->ctx, &j);
    return rc;
}

static const op_def getjob_def = {.apply = getjob_apply, .fetch = assets_fetch};
static int h_get_job(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp) {
    const APB(GetCopyJobRequest) *req = (const void *)req_;
    check_uuid(ctx, "job_id", req->job_id);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    return op_run(ctx, &getjob_def, req, resp, NULL);
}

typedef struct jlist_state {
    int limit;
    int64_t before_us;
    char before_id[ASSET_ID_LEN];
    const char *scope;
} jlist_state;

static int listjobs_apply(op_call *cl, pg_conn *tx) {
    const APB(ListCopyJobsRequest) *req = cl->req;
    jlist_state *s = cl->arg;
    int rc = require_marketing(cl, tx, req->hub_id, NULL);
    if (rc != 0) return rc;
    job_row *rows = NULL;
    int n = 0;
    if ((rc = store_job_list(tx, req->hub_id, (int)req->state, s->before_us, s->before_id, s->limit + 1, &rows, &n)) != 0)
        return rc;
    APB(ListCopyJobsResponse) *resp = (void *)cl->resp;
    int shown = n > s->limit ? s->limit : n;
    resp->jobs = rpc_calloc(cl->ctx, (size_t)(shown ? shown : 1), sizeof *resp->jobs);
    resp->n_jobs = (size_t)shown;
    for (int i = 0; i < shown; i++) resp->jobs[i] = job_pb_of(cl->ctx, &rows[i]);
    char *cursor = n > s->limit ? rpc_sprintf(cl->ctx, "%" PRId64 " %s", rows[shown - 1].create_us, rows[shown - 1].id) : NULL;
    free(rows);
    char *tok = NULL;
    if ((rc = page_token_encode(s->scope, cursor, &tok)) != 0) return rc;
    resp->next_page_token = rpc_strdup(cl->ctx, tok);
    free(tok);
    return 0;
}

static const op_def listjobs_def = {.apply = listjobs_apply, .fetch = assets_fetch};
static int h_list_jobs(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp) {
    const APB(ListCopyJobsRequest) *req = (const void *)req_;
    jlist_state s = {0};
    check_hub(ctx, "hub_id", req->hub_id);
    if ((int)req->state < 0 || (int)req->state > JOB_CANCELLED) rpc_violation(ctx, "state", "unknown state");
    if (page_size_normalize(req->page_size, &s.limit) != 0) rpc_violation(ctx, "page_size", "must not be negative");
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    s.scope = rpc_sprintf(ctx, "assets.ListCopyJobs|hub=%" PRIu64 "|state=%d", req->hub_id, (int)req->state);
    char *cursor = NULL;
    if (page_token_decode(s.scope, req->page_token, &cursor) != 0) return rpc_fail(ctx, OM_E_INVALID_PAGE_TOKEN, NULL);
    if (cursor) {
        long long us = 0;
        if (sscanf(cursor, "%lld %36s", &us, s.before_id) == 2) s.before_us = (int64_t)us;
        free(cursor);
    }
    return op_run(ctx, &listjobs_def, req, resp, &s);
}

static int cancel_apply(op_call *cl, pg_conn *tx) {
    const APB(CancelCopyJobRequest) *req = cl->req;
    job_row j;
    int rc = load_job(cl, tx, req->job_id, true, &j);
    if (rc != 0) return rc;
    APB(CancelCopyJobResponse) *resp = (void *)cl->resp;
    if (j.state == JOB_CANCELLED) { /* already cancelled: unchanged */
        resp->job = job_pb_of(cl->ctx, &j);
        return 0;
    }
    if (j.state != JOB_QUEUED && j.state != JOB_RUNNING)
        return op_fail(cl, OM_E_FAILED_PRECONDITION, "copy job %s has already ended", j.id);
    /* ASSET-03: the worker sees the state between batches and stops; the
     * job row's lock orders this after a batch under way. */
    if ((rc = store_job_stop(tx, &j, JOB_CANCELLED, "CANCELLED", "the job was cancelled")) != 0) return rc;
    if ((rc = assets_emit_job(tx, &j, true, cl->actor)) != 0) return rc;
    resp->job = job_pb_of(cl->ctx, &j);
    return 0;
}

static const op_def cancel_def = {.apply = cancel_apply, .mutation = true, .fetch = assets_fetch};
static int h_cancel(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp) {
    const APB(CancelCopyJobRequest) *req = (const void *)req_;
    check_uuid(ctx, "job_id", req->job_id);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    return op_run(ctx, &cancel_def, req, resp, NULL);
}

typedef struct results_state {
    int limit;
    int64_t after_seq;
    const char *scope;
} results_state;

static int results_apply(op_call *cl, pg_conn *tx) {
    const APB(ListCopyJobResultsRequest) *req = cl->req;
    results_state *s = cl->arg;
    job_row j;
    int rc = load_job(cl, tx, req->job_id, false, &j);
    if (rc != 0) return rc;
    pg_params p = {0};
    pg_args(&p, j.id, (int64_t)req->outcome, s->after_seq, s->limit + 1);
    pg_res *r = NULL;
    rc = pg_exec(tx, "SELECT seq, source_asset_id::text, type, source_name, dependency, outcome,"
                     " coalesce(new_asset_id::text, ''), coalesce(new_name, ''), coalesce(error_reason, ''),"
                     " coalesce(error_message, ''), finish_time FROM copy_items WHERE job_id = $1::uuid"
                     " AND ($2 = 0 OR outcome = $2) AND seq > $3 ORDER BY seq LIMIT $4", &p, &r);
    if (rc != 0) return rc;
    int n = pg_nrows(r), shown = n > s->limit ? s->limit : n;
    APB(ListCopyJobResultsResponse) *resp = (void *)cl->resp;
    resp->results = rpc_calloc(cl->ctx, (size_t)(shown ? shown : 1), sizeof *resp->results);
    resp->n_results = (size_t)shown;
    for (int i = 0; i < shown; i++) {
        APB(CopyResult) *x = rpc_alloc(cl->ctx, sizeof *x);
        orgmesh__assets__v1__copy_result__init(x);
        x->source_asset_id = rpc_strdup(cl->ctx, pg_str(r, i, 1));
        x->type = (APB(AssetType))pg_i64(r, i, 2);
        x->source_name = rpc_strdup(cl->ctx, pg_str(r, i, 3));
        x->dependency = pg_bool(r, i, 4);
        x->outcome = (APB(CopyOutcome))pg_i64(r, i, 5);
        x->new_asset_id = rpc_strdup(cl->ctx, pg_str(r, i, 6));
        x->new_name = rpc_strdup(cl->ctx, pg_str(r, i, 7));
        const char *reason = pg_str(r, i, 8);
        if (reason[0]) {
            Orgmesh__Type__V1__ItemError *e = rpc_alloc(cl->ctx, sizeof *e);
            orgmesh__type__v1__item_error__init(e);
            int code = strcmp(reason, "NOT_FOUND") == 0            ? OM_E_NOT_FOUND
                       : strcmp(reason, "NAME_CONFLICT") == 0      ? OM_E_NAME_CONFLICT
                       : strcmp(reason, "MISSING_DEPENDENCY") == 0 ? OM_E_MISSING_DEPENDENCY
                       : strcmp(reason, "COPY_NOT_ALLOWED") == 0   ? OM_E_COPY_NOT_ALLOWED
                                                                   : OM_E_CANCELLED;
            e->code = (int32_t)om_err_status(code);
            e->reason = rpc_strdup(cl->ctx, reason);
            e->message = rpc_strdup(cl->ctx, pg_str(r, i, 9));
            x->error = e;
        }
        if (!pg_isnull(r, i, 10)) {
            x->finish_time = rpc_alloc(cl->ctx, sizeof *x->finish_time);
            om_pb_timestamp(x->finish_time, pg_time_us(r, i, 10));
        }
        resp->results[i] = x;
    }
    char *cursor = n > s->limit ? rpc_sprintf(cl->ctx, "%" PRId64, pg_i64(r, shown - 1, 0)) : NULL;
    pg_free(r);
    char *tok = NULL;
    if ((rc = page_token_encode(s->scope, cursor, &tok)) != 0) return rc;
    resp->next_page_token = rpc_strdup(cl->ctx, tok);
    free(tok);
    return 0;
}

static const op_def results_def = {.apply = results_apply, .fetch = assets_fetch};
static int h_results(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp) {
    const APB(ListCopyJobResultsRequest) *req = (const void *)req_;
    results_state s = {0};
    check_uuid(ctx, "job_id", req->job_id);
    if ((int)req->outcome < 0 || (int)req->outcome > 5) rpc_violation(ctx, "outcome", "unknown outcome");
    if (page_size_normalize(req->page_size, &s.limit) != 0) rpc_violation(ctx, "page_size", "must not be negative");
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    s.scope = rpc_sprintf(ctx, "assets.ListCopyJobResults|job=%s|outcome=%d", req->job_id, (int)req->outcome);
    char *cursor = NULL;
    if (page_token_decode(s.scope, req->page_token, &cursor) != 0) return rpc_fail(ctx, OM_E_INVALID_PAGE_TOKEN, NULL);
    if (cursor) {
        s.after_seq = atoll(cursor);
        free(cursor);
    }
    return op_run(ctx, &results_def, req, resp, &s);
}

/* ---- ListAssetHistory — SPEC 8 audit; viewing as ASSET-01 reads ---- */

typedef struct history_state {
    page_req pg; /* keyset: the id below which the next page starts */
    char asset_id[ASSET_ID_LEN]; /* lower case; "" = the whole account */
} history_state;

static int history_apply(op_call *cl, pg_conn *tx) {
    const APB(ListAssetHistoryRequest) *req = cl->req;
    history_state *s = cl->arg;
    int rc = require_marketing(cl, tx, req->hub_id, NULL);
    if (rc != 0) return rc;
    char key[128];
    history_req q = {.page = &s->pg, .resource = key,
                     .scope = store_history_key(req->hub_id, s->asset_id, key, sizeof key)};
    history_out h;
    if ((rc = history_list(cl->ctx, tx, &q, &h)) != 0) return rc;
    APB(ListAssetHistoryResponse) *resp = (void *)cl->resp;
    resp->entries = h.entries;
    resp->n_entries = h.n;
    resp->next_page_token = h.next_page_token;
    return 0;
}

static const op_def history_def = {.apply = history_apply, .fetch = assets_fetch};
static int h_history(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp) {
    const APB(ListAssetHistoryRequest) *req = (const void *)req_;
    history_state s = {0};
    int limit;
    check_hub(ctx, "hub_id", req->hub_id);
    if (req->asset_id && req->asset_id[0] && !asset_uuid_valid(req->asset_id))
        rpc_violation(ctx, "asset_id", "is not an id of this service");
    if (page_size_normalize(req->page_size, &limit) != 0) rpc_violation(ctx, "page_size", "must not be negative");
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    if (req->asset_id && req->asset_id[0]) {
        snprintf(s.asset_id, sizeof s.asset_id, "%s", req->asset_id);
        for (char *p = s.asset_id; *p; p++)
            if (*p >= 'A' && *p <= 'F') *p = (char)(*p - 'A' + 'a');
    }
    const char *scope = rpc_sprintf(ctx, "assets.ListAssetHistory|hub=%" PRIu64 "|asset=%s", req->hub_id, s.asset_id);
    int rc;
    if ((rc = page_open(ctx, req->page_size, req->page_token, scope, 1, &s.pg)) != 0) return rc;
    return op_run(ctx, &history_def, req, resp, &s);
}

/* Issue 13: who may call each method with a service identity (rpc_method
 * `services`): RPC_PLATFORM is the operator's platform identities
 * (ORGMESH_PLATFORM_SERVICES: the identity system, operator tools); an
 * orgmesh service is listed only where its own calls need it
 * (docs/security.md "Service identities"). */
static const char *const by_platform[] = {RPC_PLATFORM, NULL};

static const rpc_method methods[] = {
    {"CreateAsset", h_create, 0, by_platform},
    {"GetAsset", h_get, 0, by_platform},
    {"ListAssets", h_list, 0, by_platform},
    {"UpdateAsset", h_update, 0, by_platform},
    {"DeleteAsset", h_delete, 0, by_platform},
    {"CopyAssets", h_copy, 0, by_platform},
    {"GetCopyJob", h_get_job, 0, by_platform},
    {"ListCopyJobs", h_list_jobs, 0, by_platform},
    {"CancelCopyJob", h_cancel, 0, by_platform},
    {"ListCopyJobResults", h_results, 0, by_platform},
    {"ListAssetHistory", h_history, 0, by_platform},
    {NULL, NULL, 0},
};

const rpc_service assets_service = {&orgmesh__assets__v1__assets_service__descriptor, methods};

int assets_init(void) {
    if (app_peer("connections") == NULL) log_warn("ORGMESH_CONNECTIONS_ADDR is not set: CopyAssets cannot check CONN-07");
    if (app_peer("accounts") == NULL) log_warn("ORGMESH_ACCOUNTS_ADDR is not set: missing memberships cannot be fetched");
    return assets_jobs_start();
}

void assets_fini(void) { assets_jobs_stop(); }
