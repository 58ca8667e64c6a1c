/* partners_call.c — the helpers the partners handler files share (see
 * partners_call.h): call memory, per-item errors, who-may checks, offset
 * pages, abuse limits and the mutation runner over op_run. */
#include "partners_call.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "google/protobuf/duration.pb-c.h"
#include "google/rpc/error_details.pb-c.h"
#include "ctoken.h"
#include "log.h"
#include "om_err.h"
#include "pbfield.h"
#include "page.h"

/* ---- call memory and per-item errors ------------------------------------------------ */

static void *call_alloc(void *ud, size_t n) { return rpc_calloc(ud, 1, n); }
ps_mem pa_call_mem(rpc_ctx *ctx) { return (ps_mem){call_alloc, ctx}; }

Orgmesh__Type__V1__ItemError *pa_item_error(ps_mem *m, int code, const char *field, const char *fmt, ...) {
    char buf[512];
    Orgmesh__Type__V1__ItemError *e = m->alloc(m->ud, sizeof *e);
    orgmesh__type__v1__item_error__init(e);
    e->code = (int32_t)om_err_status(code);
    e->reason = pa_strdup(m, om_err_name(code));
    if (fmt != NULL) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(buf, sizeof buf, fmt, ap);
        va_end(ap);
        e->message = pa_strdup(m, buf);
    } else {
        e->message = pa_strdup(m, om_err_message(code));
    }
    e->field = pa_strdup(m, field);
    return e;
}

/* PART-06: the error the second partner gets, naming the employee and the
 * three ways out. */
Orgmesh__Type__V1__ItemError *pa_conflict_error(ps_mem *m, const char *field, const char *name) {
    char title[300];
    Orgmesh__Type__V1__ItemError *e = pa_item_error(m, OM_E_EMAIL_CONNECTED_TO_OTHER_PARTNER, field, "%s",
                                                 PART_CONFLICT_MESSAGE);
    part_conflict_title(name, title, sizeof title);
    e->title = pa_strdup(m, title);
    e->n_resolutions = 3;
    e->resolutions = m->alloc(m->ud, 3 * sizeof *e->resolutions);
    for (int i = 0; i < 3; i++) e->resolutions[i] = pa_strdup(m, part_conflict_resolutions[i]);
    return e;
}

/* ---- handler helpers -------------------------------------------------------------------- */

static long utf8_len(const char *s) {
    long n = 0;
    for (const unsigned char *p = (const unsigned char *)s; p && *p; p++) {
        if (*p < 0x20 || *p == 0x7f) return -1;
        if ((*p & 0xc0) != 0x80) n++;
    }
    return n;
}

void pa_check_text(rpc_ctx *ctx, const char *field, const char *s, long max) {
    long n = utf8_len(s);
    if (n < 0)
        rpc_violation(ctx, field, "must not contain control characters");
    else if (n > max)
        rpc_violation(ctx, field, "must be at most %ld characters", max);
}

/* A failed step: the code with a message, logged when it is unexpected. */
int pa_fail(rpc_ctx *ctx, int rc, const char *what) {
    if (rc == OM_E_INTERNAL) log_error("partners: %s: SQL %s", what, pg_errmsg(pg_local()));
    if (rc == OM_E_NOT_FOUND) return rpc_fail(ctx, rc, "%s does not exist", what);
    return rpc_fail(ctx, rc, NULL);
}

uint64_t pa_caller_id(rpc_ctx *ctx) {
    const om_actor *a = rpc_actor(ctx);
    return a ? a->user_id : 0;
}

/* Whether the signed-in caller is a member of `hub` at all: who may know
 * that the account, and what it holds, exists (defect 5, AIP-193). */
int pa_is_member(rpc_ctx *ctx, pg_conn *c, uint64_t hub, bool *member) {
    ps_mem m = pa_call_mem(ctx);
    ps_membership mb;
    *member = false;
    uint64_t me = pa_caller_id(ctx);
    if (me == 0 || hub == 0) return 0;
    int rc = pa_ensure_membership(ctx, c, hub, me, &m, &mb);
    if (rc == OM_E_NOT_FOUND) return 0;
    if (rc != 0) return rc;
    *member = mb.present;
    return 0;
}

/* `hidden` for pa_require_manager when the caller may see what is asked about
 * through another account (the client's side of an access request). */
const char PA_MAY_SEE[] = "";

/* SPEC 6 "partner manager" of `partner` (PART-01, PART-03, PART-10 ...). A
 * signed-in user who is no member of the partner account may not learn it
 * exists: NOT_FOUND worded as for an id that does not exist (`hidden`, or
 * "account <id> does not exist"); a member without a managing role, a
 * service, or a caller who may see the thing otherwise (hidden == PA_MAY_SEE):
 * PERMISSION_DENIED (AIP-193). */
int pa_require_manager(rpc_ctx *ctx, pg_conn *c, uint64_t partner, ps_account *acct, const char *hidden) {
    ps_mem m = pa_call_mem(ctx);
    ps_account buf;
    ps_membership mb;
    if (acct == NULL) acct = &buf;
    const bool seen = hidden == PA_MAY_SEE;
    if (hidden == NULL || seen) hidden = rpc_sprintf(ctx, "account %" PRIu64 " does not exist", partner);
    int rc = pa_ensure_account(ctx, c, partner, &m, acct);
    if (rc == 0 && acct->deleted) rc = OM_E_NOT_FOUND;
    if (rc != 0) return rc == OM_E_NOT_FOUND ? rpc_fail(ctx, rc, "%s", hidden) : pa_fail(ctx, rc, "partner account");
    uint64_t me = pa_caller_id(ctx);
    bool member = false;
    unsigned roles = 0;
    if (me != 0) {
        rc = pa_ensure_membership(ctx, c, partner, me, &m, &mb);
        if (rc != 0 && rc != OM_E_NOT_FOUND) return pa_fail(ctx, rc, "membership");
        member = rc == 0 && mb.present;
        roles = member ? mb.roles : 0;
        if (!member && !seen) return rpc_fail(ctx, OM_E_NOT_FOUND, "%s", hidden); /* AIP-193 */
    }
    if ((rc = part_rule_partner_manager(acct->kind, member, roles)) != 0) {
        if (rc == OM_E_NOT_PARTNER_ACCOUNT)
            return rpc_fail(ctx, rc, "account %" PRIu64 " is not a PARTNER account", partner);
        return rpc_fail(ctx, rc, "only super admin or account permissions members of the partner account may do this");
    }
    return 0;
}

/* PART-05: a signed-in SUPER_ADMIN or ACCOUNT_PERMISSIONS member of the
 * client whose membership is the client's own (PART-08: not partner-linked).
 * *code (may be NULL) says why not. */
int pa_client_admin(rpc_ctx *ctx, pg_conn *c, uint64_t client, bool *ok, int *code) {
    ps_mem m = pa_call_mem(ctx);
    ps_membership mb;
    *ok = false;
    if (code) *code = OM_E_PERMISSION_DENIED;
    uint64_t me = pa_caller_id(ctx);
    if (me == 0) return 0;
    int rc = pa_ensure_membership(ctx, c, client, me, &m, &mb);
    if (rc == OM_E_NOT_FOUND) return 0;
    if (rc != 0) return rc;
    int r = part_rule_client_admin(mb.present, mb.roles, mb.link_partner_hub_id != 0);
    *ok = r == 0;
    if (code && r != 0) *code = r;
    return 0;
}

int pa_manager_ok(rpc_ctx *ctx, pg_conn *c, uint64_t partner, bool *ok) {
    ps_mem m = pa_call_mem(ctx);
    ps_account acct;
    ps_membership mb;
    *ok = false;
    uint64_t me = pa_caller_id(ctx);
    if (me == 0) return 0;
    int rc = pa_ensure_account(ctx, c, partner, &m, &acct);
    if (rc == OM_E_NOT_FOUND) return 0;
    if (rc != 0) return rc;
    rc = pa_ensure_membership(ctx, c, partner, me, &m, &mb);
    if (rc == OM_E_NOT_FOUND) return 0;
    if (rc != 0) return rc;
    *ok = part_rule_partner_manager(acct.kind, mb.present, mb.roles) == 0;
    return 0;
}

/* ---- paging ------------------------------------------------------------------------------ */


int pa_lpage_open(rpc_ctx *ctx, int32_t size, const char *token, const char *scope, pa_lpage *pg) {
    memset(pg, 0, sizeof *pg);
    pg->scope = scope;
    if (page_size_normalize(size, &pg->limit) != 0) {
        rpc_violation(ctx, "page_size", "must not be negative");
        return rpc_fail_invalid(ctx);
    }
    char *cursor = NULL;
    int rc = page_token_decode(scope, token, &cursor);
    if (rc == 0 && cursor != NULL) {
        char *end = NULL;
        long v = strtol(cursor, &end, 10);
        if (end == cursor || *end != '\0' || v < 0 || v > 100000000) rc = OM_E_INVALID_PAGE_TOKEN;
        pg->offset = (int)v;
    }
    free(cursor);
    return rc != 0 ? rpc_fail(ctx, rc, NULL) : 0;
}

char *pa_lpage_next(rpc_ctx *ctx, const pa_lpage *pg, int got) {
    char cursor[24], *tok = NULL;
    if (got < pg->limit) return rpc_strdup(ctx, "");
    snprintf(cursor, sizeof cursor, "%d", pg->offset + got);
    if (page_token_encode(pg->scope, cursor, &tok) != 0) return rpc_strdup(ctx, "");
    char *out = rpc_strdup(ctx, tok);
    free(tok);
    return out;
}

/* ---- abuse limits (issue 13, OWASP API4/API6) ---------------------------------------------------- */

/* One hit for `what` in the actor's and in the client account's bucket
 * (either skipped when its id or its limit is 0). Over a limit:
 * OM_E_RATE_LIMITED, with the time until the window ends and which limit.
 * Counted in PostgreSQL (partners.rate_counter), so every replica sees the
 * same counts and a Redis outage changes nothing. */
int pa_rate_take(pg_conn *c, const char *what, uint64_t actor, int64_t per_actor, uint64_t client,
                 int64_t per_client, int64_t *retry_ms, const char **which) {
    struct {
        const char *side;
        uint64_t id;
        int64_t limit;
    } b[2] = {{"actor", actor, per_actor}, {"client", client, per_client}};
    for (int i = 0; i < 2; i++) {
        if (b[i].id == 0 || b[i].limit <= 0) continue;
        char bucket[96];
        snprintf(bucket, sizeof bucket, "%s:%s:%" PRIu64, what, b[i].side, b[i].id);
        int64_t hits = 0, ms = 0;
        int rc = ps_rate_take(c, bucket, partners_cfg.rate_window_s, 1, &hits, &ms);
        if (rc != 0) return rc;
        if (hits > b[i].limit) {
            *retry_ms = ms;
            *which = i == 0 ? "per_actor" : "per_client";
            return OM_E_RATE_LIMITED;
        }
    }
    return 0;
}

/* The answer over a limit: RESOURCE_EXHAUSTED, reason RATE_LIMITED, a
 * google.rpc.RetryInfo with the delay and ErrorInfo metadata naming the limit. */
static void rate_details(rpc_ctx *ctx, const char *what, const char *which, int64_t retry_ms) {
    if (retry_ms < 0) retry_ms = 0;
    Google__Protobuf__Duration d = GOOGLE__PROTOBUF__DURATION__INIT;
    d.seconds = retry_ms / 1000;
    d.nanos = (int32_t)(retry_ms % 1000) * 1000000;
    Google__Rpc__RetryInfo ri = GOOGLE__RPC__RETRY_INFO__INIT;
    ri.retry_delay = &d;
    rpc_error_detail(ctx, &ri.base);
    rpc_error_meta(ctx, "limit", rpc_sprintf(ctx, "%s_%s", what, which ? which : ""));
}

static const char *rate_message(const char *what, const char *which, int64_t retry_ms) {
    static __thread char buf[160];
    if (retry_ms < 0) retry_ms = 0;
    snprintf(buf, sizeof buf, "too many %s %s; retry in %" PRId64 " s", what,
             which && strcmp(which, "per_client") == 0 ? "for this client" : "by you", (retry_ms + 999) / 1000);
    return buf;
}

int pa_rate_fail(rpc_ctx *ctx, const char *what, const char *which, int64_t retry_ms) {
    rate_details(ctx, what, which, retry_ms);
    return rpc_fail(ctx, OM_E_RATE_LIMITED, "%s", rate_message(what, which, retry_ms));
}

/* ---- the mutation transaction ---------------------------------------------------------------- */


static int mu_apply(op_call *oc, pg_conn *tx) {
    mutation *mu = oc->arg;
    mu->oc = oc;
    mu->resp = oc->resp;
    mu->mem = pa_call_mem(mu->ctx);
    mu->who.actor = oc->actor;
    mu->who.trace_id = rpc_trace_id(mu->ctx);
    mu->who.request_id = mu->request_id;
    mu->rate_what = NULL;
    return mu->apply(mu, tx);
}

static int mu_after_store(op_call *oc, pg_conn *tx) {
    mutation *mu = oc->arg;
    return mu->after_store != NULL ? mu->after_store(mu, tx) : 0;
}

/* Issue 13: a limit was reached in this attempt (`what`: "resends" ...). */
int pa_mu_rate_limited(mutation *mu, const char *what) {
    mu->rate_what = what;
    return op_fail(mu->oc, OM_E_RATE_LIMITED, "%s", rate_message(what, mu->rate_which, mu->retry_ms));
}

static void mu_failed(op_call *oc, void *arg, int code) {
    mutation *mu = arg;
    if (code == OM_E_RATE_LIMITED && mu->rate_what != NULL)
        rate_details(oc->ctx, mu->rate_what, mu->rate_which, mu->retry_ms);
}

static void mu_committed(op_call *oc, void *arg) { ((mutation *)arg)->replayed = oc->replayed; }

const op_def pa_mutation_def = {.apply = mu_apply,
                                    .mutation = true,
                                    .after_store = mu_after_store,
                                    .failed = mu_failed,
                                    .committed = mu_committed};

/* Issue 18 (CONN-13): the memberships an access change adds or removes are
 * the accounts service's commits (the link sync after this service's
 * commit), and those are what the connections checks read: the response's
 * consistency_token names them (the link sync noted their tokens) rather
 * than this service's own events. Unchanged when the sync wrote nothing. */
void pa_sync_token(rpc_ctx *ctx, ProtobufCMessage *resp) {
    char tok[CTOKEN_MAX_LEN];
    ctoken_pending_take(tok);
    if (tok[0] == '\0') return;
    char *copy = rpc_strdup(ctx, tok);
    if (copy != NULL) pb_set_field(resp, "consistency_token", PROTOBUF_C_TYPE_STRING, &copy, sizeof copy);
}

/* After commit: the accounts side of the assignments the call changed
 * (failures stay marked and the sync loop retries them). */
void pa_sync_after(pg_conn *c, const char *id) {
    int rc = pa_link_sync(c, id);
    if (rc != 0) log_warn("partners: link sync of %s deferred: %s", id, om_err_name(rc));
}

int pa_reread(rpc_ctx *ctx, pg_conn *c, const char *id, ps_assignment *a) {
    ps_mem m = pa_call_mem(ctx);
    return ps_asg_get(c, id, false, &m, a);
}

/* Distinct, valid ids of a batch (1..100); violations recorded. */
void pa_check_batch(rpc_ctx *ctx, const char *field, const uint64_t *ids, size_t n) {
    if (n == 0) rpc_violation(ctx, field, "must hold at least one id");
    for (size_t i = 0; i < n && i < PART_MAX_BATCH; i++) {
        char f[64];
        snprintf(f, sizeof f, "%s[%zu]", field, i);
        op_check_id(ctx, f, ids[i]);
        for (size_t j = 0; j < i; j++)
            if (ids[j] == ids[i]) {
                rpc_violation(ctx, f, "is a duplicate");
                break;
            }
    }
}
