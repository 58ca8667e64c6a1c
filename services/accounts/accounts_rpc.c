/* accounts_rpc.c — the handlers of AccountsService and AccountsInternalService.
 * Small helpers first (conversions, paging, the mutation transaction), then
 * one handler per RPC, each with a line naming the rules it enforces. Rules
 * live in accounts_rules.c, SQL in accounts_store.c. Every mutation runs in
 * one transaction: request id, change, audit entry and events together. */
#include "om_time.h"
#include "history.h"
#include "accounts_rpc.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "accounts_rules.h"
#include "accounts_store.h"
#include "audit.h"
#include "config.h"
#include "evt.h"
#include "log.h"
#include "om_err.h"
#include "op.h"
#include "orgmesh/accounts/v1/accounts.pb-c.h"
#include "orgmesh/accounts/v1/events.pb-c.h"
#include "page.h"
#include "pbfield.h"

#define PB(x) Orgmesh__Accounts__V1__##x
typedef PB(Account) PbAccount;
typedef PB(User) PbUser;
typedef PB(Membership) PbMembership;
typedef Google__Protobuf__Timestamp PbTimestamp;

/* The proto enums and the rules' enums share their numbers. */
_Static_assert((int)ORGMESH__ACCOUNTS__V1__ACCOUNT_KIND__ACCOUNT_KIND_SANDBOX == (int)ACCT_KIND_SANDBOX, "kind");
_Static_assert((int)ORGMESH__ACCOUNTS__V1__ACCOUNT_STATE__ACCOUNT_STATE_DEACTIVATED == (int)ACCT_STATE_DEACTIVATED,
               "state");
_Static_assert((int)ORGMESH__ACCOUNTS__V1__HUB__HUB_COMMERCE == (int)ACCT_HUB_COMMERCE, "hub");
_Static_assert((int)ORGMESH__ACCOUNTS__V1__TIER__TIER_ENTERPRISE == (int)ACCT_TIER_ENTERPRISE, "tier");
_Static_assert((int)ORGMESH__ACCOUNTS__V1__ROLE__ROLE_MARKETING_ACCESS == 4 &&
                   ACCT_ROLE_MARKETING_ACCESS == 1u << 3,
               "role bit = 1 << (value - 1)");
_Static_assert((int)ORGMESH__ACCOUNTS__V1__SEAT__SEAT_SERVICE == 2 && ACCT_SEAT_SERVICE == 1u << 1,
               "seat bit = 1 << (value - 1)");

/* MembershipRemovalCause values. */
#define CAUSE(x) ORGMESH__ACCOUNTS__V1__MEMBERSHIP_REMOVAL_CAUSE__MEMBERSHIP_REMOVAL_CAUSE_##x

#define MAX_BATCH 100
#define MAX_REASON_CHARS 1000
#define MAX_ASSIGNMENT_ID 128
#define CASCADE_PAGE 500

static const char *hosting_locations = ACCT_DEFAULT_LOCATIONS;

int accounts_init(void) {
    hosting_locations = cfg_str("ORGMESH_HOSTING_LOCATIONS", ACCT_DEFAULT_LOCATIONS);
    return 0;
}

/* ---- small helpers ----------------------------------------------------------------------- */

static void *call_alloc(void *ud, size_t n) { return rpc_alloc(ud, n); }

static store_mem call_mem(rpc_ctx *ctx) { return (store_mem){call_alloc, ctx}; }

static void violation_to_ctx(void *arg, const char *field, const char *msg) {
    rpc_violation(arg, field, "%s", msg);
}

static acct_violations ctx_violations(rpc_ctx *ctx) { return (acct_violations){violation_to_ctx, ctx, 0}; }

static bool is_service(const om_actor *a) { return auth_is_service(a, NULL); }

static unsigned role_bit(int v) { return (v >= 1 && v <= 4) ? 1u << (v - 1) : 0; }
static unsigned seat_bit(int v) { return (v >= 1 && v <= 2) ? 1u << (v - 1) : 0; }

/* Required ids: present and within what PostgreSQL's bigint holds. */
static void check_etag(rpc_ctx *ctx, const char *etag) {
    int64_t v;
    if (etag != NULL && etag[0] != '\0' && acct_etag_decode(etag, &v) != 0)
        rpc_violation(ctx, "etag", "is not an etag returned by this service");
}

static void check_text(rpc_ctx *ctx, const char *field, const char *s, long max_chars) {
    long n = acct_utf8_chars(s);
    if (n < 0)
        rpc_violation(ctx, field, "must be valid UTF-8 without control characters");
    else if (n > max_chars)
        rpc_violation(ctx, field, "must be at most %ld characters", max_chars);
}

static char *etag_of(rpc_ctx *ctx, int64_t version) {
    char buf[ACCT_ETAG_MAX];
    acct_etag_encode(version, buf);
    return rpc_strdup(ctx, buf);
}

static PbTimestamp *timestamp(rpc_ctx *ctx, int64_t us) {
    if (us == 0) return NULL;
    PbTimestamp *t = rpc_alloc(ctx, sizeof *t);
    om_pb_timestamp(t, us);
    return t;
}

/* ---- conversions ------------------------------------------------------------------------- */

static PbAccount *account_pb(rpc_ctx *ctx, const acct_account *a) {
    PbAccount *p = rpc_alloc(ctx, sizeof *p);
    orgmesh__accounts__v1__account__init(p);
    p->hub_id = a->hub_id;
    p->name = rpc_strdup(ctx, a->name ? a->name : "");
    p->kind = (PB(AccountKind))a->kind;
    p->hosting_location = rpc_strdup(ctx, a->hosting_location ? a->hosting_location : "");
    p->n_subscriptions = (size_t)a->n_subs;
    p->subscriptions = rpc_calloc(ctx, (size_t)a->n_subs + 1, sizeof *p->subscriptions);
    for (int i = 0; i < a->n_subs; i++) {
        PB(Subscription) *s = rpc_alloc(ctx, sizeof *s);
        orgmesh__accounts__v1__subscription__init(s);
        s->hub = (PB(Hub))a->subs[i].hub;
        s->tier = (PB(Tier))a->subs[i].tier;
        p->subscriptions[i] = s;
    }
    p->sensitive_data_enabled = a->sensitive_data_enabled;
    p->state = (PB(AccountState))a->state;
    if (a->mrr_currency[0] != '\0' || a->mrr_amount_minor != 0) {
        Orgmesh__Type__V1__Money *m = rpc_alloc(ctx, sizeof *m);
        orgmesh__type__v1__money__init(m);
        m->amount_minor = a->mrr_amount_minor;
        m->currency_code = rpc_strdup(ctx, a->mrr_currency);
        p->mrr = m;
    }
    p->version = a->version;
    p->etag = etag_of(ctx, a->version);
    p->create_time = timestamp(ctx, a->create_time_us);
    p->update_time = timestamp(ctx, a->update_time_us);
    return p;
}

/* The request's account as the rules see it (too many subscriptions are a
 * violation the caller reports first). */
static void account_from_pb(const PbAccount *p, acct_account *a) {
    memset(a, 0, sizeof *a);
    a->hub_id = p->hub_id;
    a->name = p->name;
    a->kind = (acct_kind)p->kind;
    a->hosting_location = p->hosting_location;
    a->n_subs = p->n_subscriptions <= ACCT_MAX_SUBS_IN ? (int)p->n_subscriptions : 0;
    for (int i = 0; i < a->n_subs; i++) {
        a->subs[i].hub = (acct_hub)p->subscriptions[i]->hub;
        a->subs[i].tier = (acct_tier)p->subscriptions[i]->tier;
    }
    a->sensitive_data_enabled = p->sensitive_data_enabled;
    a->state = ACCT_STATE_ACTIVE;
    if (p->mrr != NULL) {
        const char *cc = p->mrr->currency_code ? p->mrr->currency_code : "";
        a->mrr_amount_minor = p->mrr->amount_minor;
        if (cc[0] == '\0' || acct_currency_valid(cc))
            snprintf(a->mrr_currency, sizeof a->mrr_currency, "%s", cc);
        else
            snprintf(a->mrr_currency, sizeof a->mrr_currency, "?"); /* reported as not ISO 4217 */
    }
}

static PbUser *user_pb(rpc_ctx *ctx, const acct_user *u) {
    PbUser *p = rpc_alloc(ctx, sizeof *p);
    orgmesh__accounts__v1__user__init(p);
    p->user_id = u->user_id;
    p->email = rpc_strdup(ctx, u->email ? u->email : "");
    p->display_name = rpc_strdup(ctx, u->display_name ? u->display_name : "");
    p->locale = rpc_strdup(ctx, u->locale ? u->locale : "");
    p->two_factor_enabled = u->two_factor_enabled;
    p->version = u->version;
    p->etag = etag_of(ctx, u->version);
    p->create_time = timestamp(ctx, u->create_time_us);
    p->update_time = timestamp(ctx, u->update_time_us);
    return p;
}

static void user_from_pb(const PbUser *p, acct_user *u) {
    memset(u, 0, sizeof *u);
    u->user_id = p->user_id;
    u->email = p->email;
    u->display_name = p->display_name;
    u->locale = p->locale;
    u->two_factor_enabled = p->two_factor_enabled;
}

static PbMembership *membership_pb(rpc_ctx *ctx, const acct_membership *m) {
    PbMembership *p = rpc_alloc(ctx, sizeof *p);
    orgmesh__accounts__v1__membership__init(p);
    p->hub_id = m->hub_id;
    p->user_id = m->user_id;
    p->roles = rpc_calloc(ctx, 4, sizeof *p->roles);
    for (int v = 1; v <= 4; v++)
        if (m->roles & role_bit(v)) p->roles[p->n_roles++] = (PB(Role))v;
    p->seats = rpc_calloc(ctx, 2, sizeof *p->seats);
    for (int v = 1; v <= 2; v++)
        if (m->seats & seat_bit(v)) p->seats[p->n_seats++] = (PB(Seat))v;
    p->partner_employee = m->partner_employee;
    if (acct_has_partner_link(m)) {
        PB(PartnerLink) *l = rpc_alloc(ctx, sizeof *l);
        orgmesh__accounts__v1__partner_link__init(l);
        l->partner_hub_id = m->partner_hub_id;
        l->assignment_id = rpc_strdup(ctx, m->assignment_id ? m->assignment_id : "");
        l->membership_predates_link = !m->link_owns_membership;
        l->link_time = timestamp(ctx, m->link_time_us);
        p->partner_link = l;
    }
    p->version = m->version;
    p->etag = etag_of(ctx, m->version);
    p->create_time = timestamp(ctx, m->create_time_us);
    p->update_time = timestamp(ctx, m->update_time_us);
    return p;
}

/* Roles or seats of a request as a mask, each value checked. */
static unsigned roles_in(rpc_ctx *ctx, const char *field, const PB(Role) *v, size_t n) {
    acct_violations vi = ctx_violations(ctx);
    unsigned mask = 0;
    int *vals = rpc_calloc(ctx, n + 1, sizeof *vals);
    for (size_t i = 0; i < n; i++) vals[i] = (int)v[i];
    acct_validate_bits(vals, n, role_bit, field, &vi, &mask);
    return mask;
}

static unsigned seats_in(rpc_ctx *ctx, const char *field, const PB(Seat) *v, size_t n) {
    acct_violations vi = ctx_violations(ctx);
    unsigned mask = 0;
    int *vals = rpc_calloc(ctx, n + 1, sizeof *vals);
    for (size_t i = 0; i < n; i++) vals[i] = (int)v[i];
    acct_validate_bits(vals, n, seat_bit, field, &vi, &mask);
    return mask;
}

/* ---- paging (page.h) --------------------------------------------------------------------- */

/* Every list reads one row more than the page holds (page_trim tells from
 * it whether a next page follows); the keyset cursor is "k1:k2". */
#define ACCT_PAGE_KEYS 2

/* ---- the mutation transaction ------------------------------------------------------------ */

typedef struct mutation mutation;
typedef int (*apply_fn)(mutation *mu, pg_conn *tx);

/* One mutation's own state (op_run's arg); the request id, transaction,
 * retries and failure are op_run's (common/op.h). */
struct mutation {
    rpc_ctx *ctx;
    op_call *oc; /* the running attempt */
    const void *req;
    ProtobufCMessage *resp;
    apply_fn apply;
    void *op; /* the handler's own state, rebuilt by apply on every attempt */
    const char *request_id;
    /* who acted: the caller, or whom the partners service acted for */
    const om_actor *actor; /* NULL when a rule acted */
    const char *rule;
    om_actor on_behalf;
    bool gated; /* apply passed gate() (PART-08) */
};

/* The message of a refusal: a non-member's NOT_FOUND (AIP-193) says no more
 * than it would for an account that does not exist. */
static const char *hidden_or(int rc, const char *msg) {
    return rc == OM_E_NOT_FOUND ? "no such account" : msg;
}

static void mu_violation(void *arg, const char *field, const char *msg) {
    mutation *mu = arg;
    op_violation(mu->oc, field, "%s", msg);
}

static acct_violations mu_violations(mutation *mu) { return (acct_violations){mu_violation, mu, 0}; }

/* op_def.apply of every mutation: the handler's apply, then the PART-08
 * check that it passed the gate. */
static int mu_apply(op_call *oc, pg_conn *tx) {
    mutation *mu = oc->arg;
    mu->oc = oc;
    mu->resp = oc->resp;
    mu->gated = false;
    if (mu->actor == NULL && mu->rule == NULL) mu->actor = oc->actor;
    int rc = mu->apply(mu, tx);
    if (rc == 0 && !mu->gated) {
        /* every mutation passes the PART-08 gate; one that forgot commits nothing */
        log_error("accounts: %s did not pass the PART-08 gate; refused", rpc_method_name(mu->ctx));
        return OM_E_INTERNAL;
    }
    return rc;
}

static const op_def mutation_def = {.apply = mu_apply, .mutation = true};

/* "user:<id>" or "rule:<ID>" given by the partners service (the actor it
 * acts for), "" for itself. Reports a violation and returns non-zero when
 * malformed. */
static int take_on_behalf_of(mutation *mu, const char *s, bool allow_rule) {
    rpc_ctx *ctx = mu->ctx;
    if (s == NULL || s[0] == '\0') return 0;
    if (strncmp(s, "user:", 5) == 0) {
        char *end = NULL;
        unsigned long long id = strtoull(s + 5, &end, 10);
        if (s[5] >= '0' && s[5] <= '9' && end && *end == '\0' && pg_id_valid(id)) {
            memset(&mu->on_behalf, 0, sizeof mu->on_behalf);
            mu->on_behalf.user_id = id;
            mu->actor = &mu->on_behalf;
            return 0;
        }
    } else if (allow_rule && strncmp(s, "rule:", 5) == 0 && strlen(s) > 5 && strlen(s) < 40) {
        mu->actor = NULL;
        mu->rule = s + 5;
        return 0;
    }
    rpc_violation(ctx, "on_behalf_of", allow_rule ? "must be \"user:<id>\", \"rule:<ID>\" or empty"
                                                  : "must be \"user:<id>\" or empty");
    return 1;
}

/* A change's event (`payload`; NULL: none) and audit entry (`action`; NULL:
 * none), in the mutation's transaction, as whoever acted. */
static int record(mutation *mu, pg_conn *tx, const char *subject, int64_t version, const ProtobufCMessage *payload,
                  const char *action, const ProtobufCMessage *before, const ProtobufCMessage *after,
                  const char *reason) {
    const char *trace = rpc_trace_id(mu->ctx);
    evt_meta meta = {.subject = subject, .version = version, .actor = mu->actor, .rule = mu->rule, .trace_id = trace};
    int rc = payload != NULL ? evt_emit(tx, &meta, payload, NULL) : 0;
    if (rc != 0 || action == NULL) return rc;
    audit_entry e = {.actor = mu->actor, .rule = mu->rule, .action = action, .resource = subject, .before = before,
                     .after = after, .reason = reason, .request_id = mu->request_id, .trace_id = trace};
    return audit_record(tx, &e);
}

static const char *actor_string(mutation *mu) {
    char buf[64];
    audit_actor_string(mu->actor, mu->rule, buf, sizeof buf);
    return rpc_strdup(mu->ctx, buf);
}

/* The caller's own membership in an account (NULL for services and
 * non-members) — what the rules of who-may-do-what look at; c is the
 * mutation's transaction or, for reads, the call's connection. */
static int reader_membership(rpc_ctx *ctx, pg_conn *c, uint64_t hub_id, acct_membership *buf,
                             const acct_membership **out) {
    const om_actor *a = rpc_actor(ctx);
    *out = NULL;
    if (a == NULL || a->user_id == 0) return 0;
    store_mem m = call_mem(ctx);
    int rc = store_membership_get(c, hub_id, a->user_id, false, &m, buf);
    if (rc == OM_E_NOT_FOUND) return 0;
    if (rc == 0) *out = buf;
    return rc;
}

/* The acting user: the caller, or the user the partners service acts for; 0
 * for a service acting on its own or a rule. */
static uint64_t acting_user(const mutation *mu) {
    return (mu->actor != NULL && mu->actor->user_id != 0) ? mu->actor->user_id : 0;
}

/* PART-08: the one gate every mutation of this service passes before it
 * changes anything (mu_apply refuses to commit one that did not): a
 * partner-linked identity, whatever roles the client gave it, never removes or
 * changes a membership it did not create, never grants SUPER_ADMIN, and never
 * deactivates or deletes the client account (acct_rule_partner_identity).
 * `mine` is the caller's membership in act->hub_id when the apply already read
 * it (`have_mine`), so the common case costs no extra query. */
static int gate(mutation *mu, pg_conn *tx, const acct_act *act, bool have_mine, const acct_membership *mine) {
    mu->gated = true;
    uint64_t who = acting_user(mu);
    if (who == 0 || !acct_partner_identity_matters(act)) return 0;
    acct_membership buf;
    if (!have_mine || mu->actor != rpc_actor(mu->ctx)) {
        store_mem m = call_mem(mu->ctx);
        int rc = store_membership_get(tx, act->hub_id, who, false, &m, &buf);
        if (rc != 0 && rc != OM_E_NOT_FOUND) return rc;
        mine = rc == 0 ? &buf : NULL;
    }
    int rc = acct_rule_partner_identity(who, mine, act);
    return rc != 0 ? op_fail(mu->oc, rc, "%s", acct_partner_identity_message(act)) : 0;
}

/* An account keeps a SUPER_ADMIN: refused when user_id is the last one of
 * hub_id (services excepted); `then`, when set, the advice after "the user
 * is the last SUPER_ADMIN of account <id>". */
static int keep_super_admin(mutation *mu, pg_conn *tx, uint64_t hub_id, uint64_t user_id, const char *then) {
    long others = 0;
    int rc = store_count_super_admins(tx, hub_id, user_id, &others);
    if (rc == 0 && (rc = acct_rule_keep_super_admin(rpc_actor(mu->ctx), others)) != 0) {
        if (then == NULL) return op_fail(mu->oc, rc, "an account keeps at least one super admin");
        return op_fail(mu->oc, rc, "the user is the last super admin of account %" PRIu64 "%s", hub_id, then);
    }
    return rc;
}

/* A SUPER_ADMIN (or a service) acting on a whole account: the PART-08
 * gate, then the account row locked into *a and the etag checked; `what`
 * words the refusal ("deleting an account"). */
static int lock_as_super_admin(mutation *mu, pg_conn *tx, uint64_t hub_id, acct_act_kind kind, const char *etag,
                               const char *what, acct_account *a) {
    store_mem m = call_mem(mu->ctx);
    bool service = is_service(rpc_actor(mu->ctx));
    acct_membership mbuf;
    const acct_membership *mine;
    int rc = reader_membership(mu->ctx, tx, hub_id, &mbuf, &mine);
    if (rc != 0) return rc;
    if (!service && mine == NULL) /* AIP-193 */
        return op_fail(mu->oc, OM_E_NOT_FOUND, "account %" PRIu64 " does not exist", hub_id);
    if (!service && !(mine->roles & ACCT_ROLE_SUPER_ADMIN))
        return op_fail(mu->oc, OM_E_PERMISSION_DENIED, "%s needs super admin in the account", what);
    if ((rc = gate(mu, tx, &(acct_act){.kind = kind, .hub_id = hub_id}, true, mine)) != 0) return rc;
    if ((rc = store_account_get(tx, hub_id, true, &m, a)) != 0) return rc;
    return acct_etag_check(etag, a->version);
}

/* ---- events ------------------------------------------------------------------------------ */

static const char *const account_field_names[] = {"name", "hosting_location", "subscriptions",
                                                  "sensitive_data_enabled", "mrr"};

static char **account_changed_fields(rpc_ctx *ctx, const acct_account *b, const acct_account *a, size_t *n) {
    char **out = rpc_calloc(ctx, 5, sizeof *out);
    bool changed[5] = {
        strcmp(b->name, a->name) != 0,
        strcmp(b->hosting_location, a->hosting_location) != 0,
        !acct_subs_equal(b, a),
        b->sensitive_data_enabled != a->sensitive_data_enabled,
        b->mrr_amount_minor != a->mrr_amount_minor || strcmp(b->mrr_currency, a->mrr_currency) != 0,
    };
    *n = 0;
    for (int i = 0; i < 5; i++)
        if (changed[i]) out[(*n)++] = (char *)account_field_names[i];
    return out;
}

/* An empty payload of an account event type with its "account" set. */
static ProtobufCMessage *account_event(rpc_ctx *ctx, const ProtobufCMessageDescriptor *type, PbAccount *acc) {
    ProtobufCMessage *e = rpc_calloc(ctx, 1, type->sizeof_message);
    protobuf_c_message_init(type, e);
    pb_set_field(e, "account", PROTOBUF_C_TYPE_MESSAGE, &acc, sizeof acc);
    return e;
}

/* The events of an account update (acct_update_events), each with a version
 * of its own; the account's version ends at the last one. Every payload has
 * the account after the change and whichever of the "previous" fields its
 * type has (accounts.proto). */
static int emit_account_update(mutation *mu, pg_conn *tx, const acct_account *before, acct_account *after,
                               const acct_event_kind *ev, int n) {
    static const ProtobufCMessageDescriptor *const types[] = {
        [ACCT_EV_ACCOUNT_UPDATED] = &orgmesh__accounts__v1__account_updated__descriptor,
        [ACCT_EV_SUBSCRIPTIONS_CHANGED] = &orgmesh__accounts__v1__subscriptions_changed__descriptor,
        [ACCT_EV_ACCOUNT_DOWNGRADED] = &orgmesh__accounts__v1__account_downgraded__descriptor, /* ORG-09 DOWNGRADED */
        [ACCT_EV_HOSTING_LOCATION_CHANGED] = &orgmesh__accounts__v1__hosting_location_changed__descriptor,
        [ACCT_EV_SENSITIVE_DATA_ENABLED] = &orgmesh__accounts__v1__sensitive_data_enabled__descriptor, /* CONN-05 */
        [ACCT_EV_SENSITIVE_DATA_DISABLED] = &orgmesh__accounts__v1__sensitive_data_disabled__descriptor,
    };
    rpc_ctx *ctx = mu->ctx;
    char subject[64];
    store_account_subject(after->hub_id, subject, sizeof subject);
    PbAccount *previous = account_pb(ctx, before);
    const char *previous_location = previous->hosting_location;
    size_t n_fields;
    char **fields = account_changed_fields(ctx, before, after, &n_fields);
    for (int i = 0; i < n; i++) {
        acct_account snap = *after;
        snap.version = before->version + 1 + i;
        PbAccount *acc = account_pb(ctx, &snap);
        const ProtobufCMessageDescriptor *type =
            (unsigned)ev[i] < sizeof types / sizeof *types ? types[ev[i]] : types[ACCT_EV_SENSITIVE_DATA_DISABLED];
        ProtobufCMessage *e = account_event(ctx, type, acc);
        pb_set_field(e, "previous", PROTOBUF_C_TYPE_MESSAGE, &previous, sizeof previous);
        pb_set_repeated(e, "changed_fields", PROTOBUF_C_TYPE_STRING, fields, n_fields);
        pb_set_repeated(e, "previous_subscriptions", PROTOBUF_C_TYPE_MESSAGE, previous->subscriptions,
                        previous->n_subscriptions);
        pb_set_field(e, "previous_hosting_location", PROTOBUF_C_TYPE_STRING, &previous_location,
                     sizeof previous_location);
        int rc = record(mu, tx, subject, snap.version, e, NULL, NULL, NULL, NULL);
        if (rc != 0) return rc;
    }
    return 0;
}

/* Account and user facts every membership event carries. */
typedef struct member_facts {
    acct_account account;
    acct_user user;
} member_facts;

static int load_facts(mutation *mu, pg_conn *tx, uint64_t hub_id, uint64_t user_id, member_facts *f) {
    store_mem m = call_mem(mu->ctx);
    int rc = store_account_get(tx, hub_id, false, &m, &f->account);
    if (rc == OM_E_NOT_FOUND) return op_fail(mu->oc, rc, "account %" PRIu64 " does not exist", hub_id);
    if (rc != 0) return rc;
    rc = store_user_get(tx, user_id, false, &m, &f->user);
    if (rc == OM_E_NOT_FOUND) return op_fail(mu->oc, rc, "user %" PRIu64 " does not exist", user_id);
    return rc;
}

static int emit_membership_added(mutation *mu, pg_conn *tx, const acct_membership *mb, const member_facts *f) {
    char subject[96];
    PB(MembershipAdded) e;
    orgmesh__accounts__v1__membership_added__init(&e);
    e.membership = membership_pb(mu->ctx, mb);
    e.account_name = (char *)f->account.name;
    e.account_kind = (PB(AccountKind))f->account.kind;
    e.user_email = (char *)f->user.email;
    e.user_display_name = (char *)f->user.display_name;
    store_membership_subject(mb->hub_id, mb->user_id, subject, sizeof subject);
    return record(mu, tx, subject, mb->version, &e.base, "membership.create", NULL, &e.membership->base, NULL);
}

static int emit_membership_changed(mutation *mu, pg_conn *tx, const acct_membership *before,
                                   const acct_membership *after, const member_facts *f, const char *reason) {
    char subject[96];
    PB(MembershipChanged) e;
    orgmesh__accounts__v1__membership_changed__init(&e);
    e.membership = membership_pb(mu->ctx, after);
    e.previous = membership_pb(mu->ctx, before);
    e.changed_fields = rpc_calloc(mu->ctx, 4, sizeof *e.changed_fields);
    if (before->roles != after->roles) e.changed_fields[e.n_changed_fields++] = "roles";
    if (before->seats != after->seats) e.changed_fields[e.n_changed_fields++] = "seats";
    if (before->partner_employee != after->partner_employee)
        e.changed_fields[e.n_changed_fields++] = "partner_employee";
    if (before->partner_hub_id != after->partner_hub_id ||
        strcmp(before->assignment_id, after->assignment_id) != 0 ||
        before->link_owns_membership != after->link_owns_membership)
        e.changed_fields[e.n_changed_fields++] = "partner_link";
    e.account_name = (char *)f->account.name;
    e.account_kind = (PB(AccountKind))f->account.kind;
    e.user_email = (char *)f->user.email;
    e.user_display_name = (char *)f->user.display_name;
    store_membership_subject(after->hub_id, after->user_id, subject, sizeof subject);
    return record(mu, tx, subject, after->version, &e.base, "membership.update", &e.previous->base,
                  &e.membership->base, reason);
}

/* Deletes a membership and says so (MembershipRemoved carries whether it was
 * partner-linked: PART-08 makes the partners service revoke the assignment). */
static int remove_membership(mutation *mu, pg_conn *tx, const acct_membership *mb, const member_facts *f,
                             PB(MembershipRemovalCause) cause, const char *reason) {
    char subject[96];
    acct_membership last = *mb;
    last.version = mb->version + 1;
    int rc = store_membership_delete(tx, mb->hub_id, mb->user_id, last.version);
    if (rc != 0) return rc;
    PB(MembershipRemoved) e;
    orgmesh__accounts__v1__membership_removed__init(&e);
    e.membership = membership_pb(mu->ctx, &last);
    e.removed_by = (char *)actor_string(mu);
    e.cause = cause;
    e.partner_linked = acct_has_partner_link(mb);
    e.reason = rpc_strdup(mu->ctx, reason ? reason : "");
    e.account_name = (char *)f->account.name;
    e.account_kind = (PB(AccountKind))f->account.kind;
    e.user_email = (char *)f->user.email;
    e.user_display_name = (char *)f->user.display_name;
    store_membership_subject(mb->hub_id, mb->user_id, subject, sizeof subject);
    return record(mu, tx, subject, last.version, &e.base, "membership.delete", &e.membership->base, NULL, reason);
}

/* ---- AccountsService: accounts ----------------------------------------------------------- */

typedef struct create_account_op {
    acct_account account;
} create_account_op;

static int apply_create_account(mutation *mu, pg_conn *tx) {
    create_account_op *op = mu->op;
    rpc_ctx *ctx = mu->ctx;
    const om_actor *caller = rpc_actor(ctx);
    store_mem m = call_mem(ctx);
    acct_account a = op->account;
    member_facts f;
    char subject[64];

    int rc = gate(mu, tx, &(acct_act){.kind = ACCT_ACT_USER}, false, NULL); /* a new account: nobody is linked in it */
    if (rc != 0) return rc;
    if (!is_service(caller)) {
        /* the creator becomes its SUPER_ADMIN, so they must be in the directory */
        rc = store_user_get(tx, caller->user_id, false, &m, &f.user);
        if (rc == OM_E_NOT_FOUND)
            return op_fail(mu->oc, OM_E_FAILED_PRECONDITION, "the calling user %" PRIu64 " is not in the directory",
                           caller->user_id);
        if (rc != 0) return rc;
    }
    rc = store_account_insert(tx, &a);
    if (rc == OM_E_ALREADY_EXISTS) return op_fail(mu->oc, rc, "account %" PRIu64 " already exists", a.hub_id);
    if (rc != 0) return rc;

    PB(AccountCreated) e;
    orgmesh__accounts__v1__account_created__init(&e);
    e.account = account_pb(ctx, &a);
    store_account_subject(a.hub_id, subject, sizeof subject);
    rc = record(mu, tx, subject, a.version, &e.base, "account.create", NULL, &e.account->base, NULL);
    if (rc != 0) return rc;

    if (!is_service(caller)) {
        acct_membership mb = {.hub_id = a.hub_id, .user_id = caller->user_id, .roles = ACCT_ROLE_SUPER_ADMIN,
                              .assignment_id = "", .created_by_user_id = caller->user_id};
        if ((rc = store_membership_insert(tx, &mb)) != 0) return rc;
        f.account = a;
        if ((rc = emit_membership_added(mu, tx, &mb, &f)) != 0) return rc;
    }
    ((PB(CreateAccountResponse) *)mu->resp)->account = e.account;
    return 0;
}

/* CreateAccount: any user (becomes SUPER_ADMIN) or a service; explicit hub_id for imports by services. */
static int h_create_account(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp) {
    const PB(CreateAccountRequest) *req = (const void *)req_;
    create_account_op op;
    acct_violations v = ctx_violations(ctx);

    if (req->account == NULL) return op_fail_unset(ctx, "account");
    if (req->account->n_subscriptions > ACCT_MAX_SUBS_IN)
        rpc_violation(ctx, "account.subscriptions", "at most one subscription per hub");
    if (req->account->hub_id != 0 && !pg_id_valid(req->account->hub_id))
        rpc_violation(ctx, "account.hub_id", "is out of range");
    account_from_pb(req->account, &op.account);
    acct_validate_account(&op.account, hosting_locations, "account", &v);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    int rc = acct_rule_create_account(rpc_actor(ctx), op.account.hub_id);
    if (rc != 0) return rpc_fail(ctx, rc, "only service identities may choose the hub_id (imports)");
    acct_subs_sort(&op.account);

    mutation mu = {.ctx = ctx, .apply = apply_create_account, .op = &op, .request_id = req->request_id};
    return op_run(ctx, &mutation_def, req_, resp, &mu);
}

/* GetAccount: members of the account and services (the account's existence is not revealed to others). */
static int h_get_account(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_) {
    const PB(GetAccountRequest) *req = (const void *)req_;
    PB(GetAccountResponse) *resp = (void *)resp_;
    acct_membership mbuf;
    const acct_membership *mine;
    acct_account a;
    store_mem m = call_mem(ctx);

    op_check_id(ctx, "hub_id", req->hub_id);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    pg_conn *c = op_db(ctx);
    if (c == NULL) return OM_E_UNAVAILABLE;
    int rc = reader_membership(ctx, c, req->hub_id, &mbuf, &mine);
    if (rc != 0) return op_fail_db(ctx, c, rc);
    if ((rc = acct_rule_view_account(rpc_actor(ctx), mine)) != 0) return rpc_fail(ctx, rc, NULL);
    if ((rc = store_account_get(c, req->hub_id, false, &m, &a)) != 0) return op_fail_db(ctx, c, rc);
    resp->account = account_pb(ctx, &a);
    return 0;
}

/* ListAccounts: the caller's accounts (services: all), by hub_id. */
static int h_list_accounts(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_) {
    const PB(ListAccountsRequest) *req = (const void *)req_;
    PB(ListAccountsResponse) *resp = (void *)resp_;
    const om_actor *actor = rpc_actor(ctx);
    store_mem m = call_mem(ctx);
    page_req pg;
    int rc;

    if (req->kind != 0 && acct_kind_name((acct_kind)req->kind) == NULL)
        rpc_violation(ctx, "kind", "unknown value");
    if (req->state != 0 && acct_state_name((acct_state)req->state) == NULL)
        rpc_violation(ctx, "state", "unknown value");
    check_text(ctx, "name_prefix", req->name_prefix, ACCT_NAME_MAX);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    uint64_t member = is_service(actor) ? 0 : actor->user_id;
    const char *scope = rpc_sprintf(ctx, "accounts.ListAccounts|member=%" PRIu64 "|kind=%d|state=%d|name=%zu:%s",
                                    member, (int)req->kind, (int)req->state, strlen(req->name_prefix),
                                    req->name_prefix);
    if ((rc = page_open(ctx, req->page_size, req->page_token, scope, ACCT_PAGE_KEYS, &pg)) != 0) return rc;

    pg_conn *c = op_db(ctx);
    if (c == NULL) return OM_E_UNAVAILABLE;
    store_account_filter f = {.member_user_id = member, .kind = (acct_kind)req->kind,
                              .state = (acct_state)req->state, .name_prefix = req->name_prefix,
                              .after_hub_id = pg.k1, .limit = pg.limit + 1};
    acct_account *rows = rpc_calloc(ctx, (size_t)pg.limit + 1, sizeof *rows);
    int n = 0;
    rc = store_accounts_list(c, &f, &m, rows, &n);
    if (rc != 0) return op_fail_db(ctx, c, rc);
    resp->next_page_token = page_next(ctx, &pg, page_trim(&pg, &n), rows[pg.limit - 1].hub_id, 0);
    resp->accounts = rpc_calloc(ctx, (size_t)n + 1, sizeof *resp->accounts);
    for (int i = 0; i < n; i++) resp->accounts[resp->n_accounts++] = account_pb(ctx, &rows[i]);
    return 0;
}

typedef struct update_account_op {
    const PB(UpdateAccountRequest) *req;
    acct_account patch;
} update_account_op;

static int apply_update_account(mutation *mu, pg_conn *tx) {
    update_account_op *op = mu->op;
    const PB(UpdateAccountRequest) *req = op->req;
    store_mem m = call_mem(mu->ctx);
    acct_account before, after;
    acct_membership mbuf;
    const acct_membership *mine;
    acct_violations v = mu_violations(mu);

    int rc = reader_membership(mu->ctx, tx, op->patch.hub_id, &mbuf, &mine);
    if (rc != 0) return rc;
    if ((rc = acct_rule_manage_account(rpc_actor(mu->ctx), mine)) != 0)
        return op_fail(mu->oc, rc, "%s", hidden_or(rc, "changing an account needs super admin or account permissions in it"));
    if ((rc = gate(mu, tx, &(acct_act){.kind = ACCT_ACT_UPDATE_ACCOUNT, .hub_id = op->patch.hub_id}, true, mine)) != 0)
        return rc;
    if ((rc = store_account_get(tx, op->patch.hub_id, true, &m, &before)) != 0) return rc;
    if ((rc = acct_etag_check(req->etag, before.version)) != 0) return rc;
    if (before.state == ACCT_STATE_DEACTIVATED) return OM_E_ACCOUNT_DEACTIVATED;
    after = before;
    acct_account_apply_mask(&after, &op->patch, (const char *const *)req->update_mask->paths,
                            req->update_mask->n_paths, &v);
    if (v.n == 0) acct_validate_account(&after, hosting_locations, "account", &v);
    if (v.n > 0) return OM_E_INVALID_ARGUMENT;
    acct_subs_sort(&after);

    acct_event_kind ev[ACCT_MAX_UPDATE_EVENTS];
    int n = acct_update_events(&before, &after, ev);
    if (n > 0) {
        char subject[64];
        after.version = before.version + n;
        if ((rc = store_account_update(tx, &after)) != 0) return rc;
        if ((rc = emit_account_update(mu, tx, &before, &after, ev, n)) != 0) return rc;
        store_account_subject(after.hub_id, subject, sizeof subject);
        rc = record(mu, tx, subject, 0, NULL, "account.update", &account_pb(mu->ctx, &before)->base,
                    &account_pb(mu->ctx, &after)->base, NULL);
        if (rc != 0) return rc;
    }
    ((PB(UpdateAccountResponse) *)mu->resp)->account = account_pb(mu->ctx, &after);
    return 0;
}

/* UpdateAccount: SUPER_ADMIN/ACCOUNT_PERMISSIONS or a service; mask + etag; events for ORG-09/10, CONN-05. */
static int h_update_account(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp) {
    const PB(UpdateAccountRequest) *req = (const void *)req_;
    update_account_op op = {.req = req};

    if (req->account == NULL) return op_fail_unset(ctx, "account");
    op_check_id(ctx, "account.hub_id", req->account->hub_id);
    if (req->update_mask == NULL || req->update_mask->n_paths == 0)
        rpc_violation(ctx, "update_mask", "must name the fields to change");
    if (req->account->n_subscriptions > ACCT_MAX_SUBS_IN)
        rpc_violation(ctx, "account.subscriptions", "at most one subscription per hub");
    check_etag(ctx, req->etag);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    account_from_pb(req->account, &op.patch);

    mutation mu = {.ctx = ctx, .apply = apply_update_account, .op = &op, .request_id = req->request_id};
    return op_run(ctx, &mutation_def, req_, resp, &mu);
}

typedef struct state_op {
    uint64_t hub_id;
    const char *etag, *reason;
    acct_state to;
} state_op;

static int apply_set_state(mutation *mu, pg_conn *tx) {
    state_op *op = mu->op;
    acct_account a;
    char subject[64];
    bool off = op->to == ACCT_STATE_DEACTIVATED;
    int rc = lock_as_super_admin(mu, tx, op->hub_id, ACCT_ACT_SET_ACCOUNT_STATE, op->etag,
                                 off ? "deactivating an account" : "reactivating an account", &a);
    if (rc != 0) return rc;
    if (a.state != op->to) {
        acct_account before = a;
        a.state = op->to;
        a.version++;
        if ((rc = store_account_update(tx, &a)) != 0) return rc;
        PbAccount *snap = account_pb(mu->ctx, &a);
        store_account_subject(a.hub_id, subject, sizeof subject);
        /* AccountDeactivated / AccountReactivated: ORG-09 DEACTIVATED is decided from them */
        ProtobufCMessage *e = account_event(mu->ctx, off ? &orgmesh__accounts__v1__account_deactivated__descriptor
                                                         : &orgmesh__accounts__v1__account_reactivated__descriptor,
                                            snap);
        pb_set_field(e, "reason", PROTOBUF_C_TYPE_STRING, &op->reason, sizeof op->reason);
        rc = record(mu, tx, subject, a.version, e, off ? "account.deactivate" : "account.reactivate",
                    &account_pb(mu->ctx, &before)->base, &snap->base, op->reason);
        if (rc != 0) return rc;
    }
    /* both replies have the account as field 1 */
    ((PB(DeactivateAccountResponse) *)mu->resp)->account = account_pb(mu->ctx, &a);
    return 0;
}

static int set_state(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp, uint64_t hub_id,
                     const char *etag, const char *reason, const char *request_id, acct_state to) {
    op_check_id(ctx, "hub_id", hub_id);
    check_etag(ctx, etag);
    check_text(ctx, "reason", reason, MAX_REASON_CHARS);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    state_op op = {.hub_id = hub_id, .etag = etag, .reason = reason, .to = to};
    mutation mu = {.ctx = ctx, .apply = apply_set_state, .op = &op, .request_id = request_id};
    return op_run(ctx, &mutation_def, req_, resp, &mu);
}

/* DeactivateAccount: SUPER_ADMIN or a service; a no-op when already deactivated (ORG-09 DEACTIVATED follows). */
static int h_deactivate_account(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp) {
    const PB(DeactivateAccountRequest) *req = (const void *)req_;
    return set_state(ctx, req_, resp, req->hub_id, req->etag, req->reason, req->request_id,
                     ACCT_STATE_DEACTIVATED);
}

/* ReactivateAccount: SUPER_ADMIN or a service; a no-op when already active. */
static int h_reactivate_account(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp) {
    const PB(ReactivateAccountRequest) *req = (const void *)req_;
    return set_state(ctx, req_, resp, req->hub_id, req->etag, req->reason, req->request_id, ACCT_STATE_ACTIVE);
}

static int apply_delete_account(mutation *mu, pg_conn *tx) {
    const PB(DeleteAccountRequest) *req = mu->req;
    store_mem m = call_mem(mu->ctx);
    acct_account a;
    char subject[64];
    int rc = lock_as_super_admin(mu, tx, req->hub_id, ACCT_ACT_DELETE_ACCOUNT, req->etag, "deleting an account", &a);
    if (rc != 0) return rc;

    /* every membership goes first, each with its event (partners revoke, PART-09) */
    acct_membership *page = rpc_calloc(mu->ctx, CASCADE_PAGE, sizeof *page);
    for (;;) {
        int n = 0;
        store_membership_filter f = {.hub_id = a.hub_id, .limit = CASCADE_PAGE};
        if ((rc = store_memberships_list(tx, &f, &m, page, &n)) != 0) return rc;
        for (int i = 0; i < n; i++) {
            member_facts facts = {.account = a};
            if ((rc = store_user_get(tx, page[i].user_id, false, &m, &facts.user)) != 0) return rc;
            rc = remove_membership(mu, tx, &page[i], &facts, CAUSE(ACCOUNT_DELETED), req->reason);
            if (rc != 0) return rc;
        }
        if (n < CASCADE_PAGE) break;
    }
    acct_account last = a;
    last.version = a.version + 1;
    if ((rc = store_account_delete(tx, a.hub_id, last.version)) != 0) return rc;
    PB(AccountDeleted) e;
    orgmesh__accounts__v1__account_deleted__init(&e);
    e.account = account_pb(mu->ctx, &last);
    e.reason = req->reason;
    store_account_subject(a.hub_id, subject, sizeof subject);
    return record(mu, tx, subject, last.version, &e.base, "account.delete", &account_pb(mu->ctx, &a)->base, NULL,
                  req->reason);
}

/* DeleteAccount: SUPER_ADMIN or a service; etag; every membership goes first, then the account. */
static int h_delete_account(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp) {
    const PB(DeleteAccountRequest) *req = (const void *)req_;
    op_check_id(ctx, "hub_id", req->hub_id);
    check_etag(ctx, req->etag);
    check_text(ctx, "reason", req->reason, MAX_REASON_CHARS);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    mutation mu = {.ctx = ctx, .req = req, .apply = apply_delete_account, .request_id = req->request_id};
    return op_run(ctx, &mutation_def, req_, resp, &mu);
}

/* One page of audit history of `resource` (and below it with subtree). */
static int list_history(rpc_ctx *ctx, pg_conn *c, const char *resource, bool subtree, const page_req *pg,
                        Orgmesh__Type__V1__AuditEntry ***out, size_t *n_out, char **next) {
    history_req q = {.page = pg, .scope = subtree ? HISTORY_TREE : HISTORY_RESOURCE, .resource = resource};
    history_out h;
    int rc = history_list(ctx, c, &q, &h);
    if (rc != 0) return op_fail_db(ctx, c, rc);
    *out = h.entries;
    *n_out = h.n;
    *next = h.next_page_token;
    return 0;
}

/* ListAccountHistory: SUPER_ADMIN/ACCOUNT_PERMISSIONS or a service; account and memberships. */
static int h_list_account_history(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_) {
    const PB(ListAccountHistoryRequest) *req = (const void *)req_;
    PB(ListAccountHistoryResponse) *resp = (void *)resp_;
    acct_membership mbuf;
    const acct_membership *mine;
    page_req pg;
    char resource[64];
    int rc;

    op_check_id(ctx, "hub_id", req->hub_id);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    const char *scope = rpc_sprintf(ctx, "accounts.ListAccountHistory|hub=%" PRIu64, req->hub_id);
    if ((rc = page_open(ctx, req->page_size, req->page_token, scope, ACCT_PAGE_KEYS, &pg)) != 0) return rc;
    pg_conn *c = op_db(ctx);
    if (c == NULL) return OM_E_UNAVAILABLE;
    rc = reader_membership(ctx, c, req->hub_id, &mbuf, &mine);
    if (rc != 0) return op_fail_db(ctx, c, rc);
    if ((rc = acct_rule_manage_account(rpc_actor(ctx), mine)) != 0)
        return rpc_fail(ctx, rc, "%s", hidden_or(rc, "the history needs super admin or account permissions in the account"));
    store_account_subject(req->hub_id, resource, sizeof resource);
    return list_history(ctx, c, resource, true, &pg, &resp->entries, &resp->n_entries, &resp->next_page_token);
}

/* ---- AccountsService: users -------------------------------------------------------------- */

typedef struct user_op {
    acct_user user;
    char locale[ACCT_LOCALE_MAX + 1];
} user_op;

static int apply_create_user(mutation *mu, pg_conn *tx) {
    user_op *op = mu->op;
    const om_actor *caller = rpc_actor(mu->ctx);
    acct_user u = op->user;
    bool manages = false;
    char subject[64];
    int rc;

    if ((rc = gate(mu, tx, &(acct_act){.kind = ACCT_ACT_USER}, false, NULL)) != 0) return rc;
    if (!is_service(caller) && (rc = store_user_manages_any(tx, caller->user_id, &manages)) != 0) return rc;
    if ((rc = acct_rule_create_user(caller, manages, u.user_id)) != 0)
        return op_fail(mu->oc, rc, u.user_id ? "only service identities may choose the user_id"
                                         : "creating users needs super admin or account permissions "
                                           "in some account");
    rc = store_user_insert(tx, &u);
    if (rc == OM_E_EMAIL_TAKEN) return op_fail(mu->oc, rc, "the email address %s is already in use", u.email);
    if (rc == OM_E_ALREADY_EXISTS) return op_fail(mu->oc, rc, "user %" PRIu64 " already exists", u.user_id);
    if (rc != 0) return rc;
    PB(UserCreated) e;
    orgmesh__accounts__v1__user_created__init(&e);
    e.user = user_pb(mu->ctx, &u);
    store_user_subject(u.user_id, subject, sizeof subject);
    if ((rc = record(mu, tx, subject, u.version, &e.base, "user.create", NULL, &e.user->base, NULL)) != 0)
        return rc;
    ((PB(CreateUserResponse) *)mu->resp)->user = e.user;
    return 0;
}

/* CreateUser: services, or users managing some account; email unique ignoring case (EMAIL_TAKEN). */
static int h_create_user(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp) {
    const PB(CreateUserRequest) *req = (const void *)req_;
    user_op op;
    acct_violations v = ctx_violations(ctx);

    if (req->user == NULL) return op_fail_unset(ctx, "user");
    if (req->user->user_id != 0 && !pg_id_valid(req->user->user_id))
        rpc_violation(ctx, "user.user_id", "is out of range");
    user_from_pb(req->user, &op.user);
    acct_validate_user(&op.user, op.locale, "user", &v);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    op.user.locale = op.locale;
    mutation mu = {.ctx = ctx, .apply = apply_create_user, .op = &op, .request_id = req->request_id};
    return op_run(ctx, &mutation_def, req_, resp, &mu);
}

/* Whether the caller may see user `id` (themselves, a service, a colleague). */
static int may_view_user(rpc_ctx *ctx, pg_conn *c, uint64_t id) {
    const om_actor *a = rpc_actor(ctx);
    bool shares = false;
    if (!is_service(a) && a->user_id != id) {
        int rc = store_users_share_account(c, a->user_id, id, &shares);
        if (rc != 0) return rc;
    }
    return acct_rule_view_user(a, id, shares);
}

/* Changing a user, reading their history: the user or a service; someone
 * who may not even see the user gets NOT_FOUND (AIP-193). */
static int may_change_user(rpc_ctx *ctx, pg_conn *c, uint64_t id) {
    int rc = acct_rule_change_user(rpc_actor(ctx), id);
    if (rc != OM_E_PERMISSION_DENIED) return rc;
    int v = may_view_user(ctx, c, id);
    return v != 0 ? v : rc;
}

/* GetUser: the user, colleagues sharing an account, and services. */
static int h_get_user(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_) {
    const PB(GetUserRequest) *req = (const void *)req_;
    PB(GetUserResponse) *resp = (void *)resp_;
    store_mem m = call_mem(ctx);
    acct_user u;

    op_check_id(ctx, "user_id", req->user_id);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    pg_conn *c = op_db(ctx);
    if (c == NULL) return OM_E_UNAVAILABLE;
    int rc = may_view_user(ctx, c, req->user_id);
    if (rc != 0) return op_fail_db(ctx, c, rc);
    if ((rc = store_user_get(c, req->user_id, false, &m, &u)) != 0) return op_fail_db(ctx, c, rc);
    resp->user = user_pb(ctx, &u);
    return 0;
}

/* GetUserByEmail: same visibility as GetUser; NOT_FOUND for users the caller may not see. */
static int h_get_user_by_email(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_) {
    const PB(GetUserByEmailRequest) *req = (const void *)req_;
    PB(GetUserByEmailResponse) *resp = (void *)resp_;
    store_mem m = call_mem(ctx);
    acct_user u;

    if (!acct_email_valid(req->email)) rpc_violation(ctx, "email", "must be an email address (local@domain)");
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    pg_conn *c = op_db(ctx);
    if (c == NULL) return OM_E_UNAVAILABLE;
    int rc = store_user_get_by_email(c, req->email, &m, &u);
    if (rc == 0) rc = may_view_user(ctx, c, u.user_id);
    if (rc == OM_E_PERMISSION_DENIED) rc = OM_E_NOT_FOUND;
    if (rc != 0) return op_fail_db(ctx, c, rc);
    resp->user = user_pb(ctx, &u);
    return 0;
}

/* ListUsers: the users visible to the caller (services: all), by user_id. */
static int h_list_users(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_) {
    const PB(ListUsersRequest) *req = (const void *)req_;
    PB(ListUsersResponse) *resp = (void *)resp_;
    const om_actor *actor = rpc_actor(ctx);
    store_mem m = call_mem(ctx);
    page_req pg;
    int rc;

    if (req->email[0] != '\0' && strlen(req->email) > ACCT_EMAIL_MAX)
        rpc_violation(ctx, "email", "must be at most %d characters", ACCT_EMAIL_MAX);
    check_text(ctx, "query_prefix", req->query_prefix, ACCT_NAME_MAX);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    uint64_t visible = is_service(actor) ? 0 : actor->user_id;
    const char *scope = rpc_sprintf(ctx, "accounts.ListUsers|visible=%" PRIu64 "|email=%zu:%s|q=%zu:%s", visible,
                                    strlen(req->email), req->email, strlen(req->query_prefix), req->query_prefix);
    if ((rc = page_open(ctx, req->page_size, req->page_token, scope, ACCT_PAGE_KEYS, &pg)) != 0) return rc;

    pg_conn *c = op_db(ctx);
    if (c == NULL) return OM_E_UNAVAILABLE;
    store_user_filter f = {.visible_to = visible, .email = req->email, .query_prefix = req->query_prefix,
                           .after_user_id = pg.k1, .limit = pg.limit + 1};
    acct_user *rows = rpc_calloc(ctx, (size_t)pg.limit + 1, sizeof *rows);
    int n = 0;
    rc = store_users_list(c, &f, &m, rows, &n);
    if (rc != 0) return op_fail_db(ctx, c, rc);
    resp->next_page_token = page_next(ctx, &pg, page_trim(&pg, &n), rows[pg.limit - 1].user_id, 0);
    resp->users = rpc_calloc(ctx, (size_t)n + 1, sizeof *resp->users);
    for (int i = 0; i < n; i++) resp->users[resp->n_users++] = user_pb(ctx, &rows[i]);
    return 0;
}

typedef struct update_user_op {
    const PB(UpdateUserRequest) *req;
    acct_user patch;
    char locale[ACCT_LOCALE_MAX + 1];
} update_user_op;

static int apply_update_user(mutation *mu, pg_conn *tx) {
    update_user_op *op = mu->op;
    const PB(UpdateUserRequest) *req = op->req;
    store_mem m = call_mem(mu->ctx);
    acct_user before, after;
    acct_violations v = mu_violations(mu);
    char subject[64];

    int rc = may_change_user(mu->ctx, tx, op->patch.user_id);
    if (rc != 0) return op_fail(mu->oc, rc, rc == OM_E_NOT_FOUND ? "no such user" : "only the user themselves may change their profile");
    if ((rc = gate(mu, tx, &(acct_act){.kind = ACCT_ACT_USER}, false, NULL)) != 0) return rc;
    if ((rc = store_user_get(tx, op->patch.user_id, true, &m, &before)) != 0) return rc;
    if ((rc = acct_etag_check(req->etag, before.version)) != 0) return rc;
    after = before;
    acct_user_apply_mask(&after, &op->patch, (const char *const *)req->update_mask->paths,
                         req->update_mask->n_paths, &v);
    if (v.n == 0) acct_validate_user(&after, op->locale, "user", &v);
    if (v.n > 0) return OM_E_INVALID_ARGUMENT;
    after.locale = op->locale;

    if (acct_user_changed(&before, &after)) {
        after.version = before.version + 1;
        rc = store_user_update(tx, &after);
        if (rc == OM_E_EMAIL_TAKEN) return op_fail(mu->oc, rc, "the email address %s is already in use", after.email);
        if (rc != 0) return rc;
        PB(UserUpdated) e;
        orgmesh__accounts__v1__user_updated__init(&e);
        e.user = user_pb(mu->ctx, &after);
        e.previous = user_pb(mu->ctx, &before);
        e.changed_fields = rpc_calloc(mu->ctx, 4, sizeof *e.changed_fields);
        if (strcmp(before.email, after.email) != 0) e.changed_fields[e.n_changed_fields++] = "email";
        if (strcmp(before.display_name, after.display_name) != 0)
            e.changed_fields[e.n_changed_fields++] = "display_name";
        if (strcmp(before.locale, after.locale) != 0) e.changed_fields[e.n_changed_fields++] = "locale";
        if (before.two_factor_enabled != after.two_factor_enabled)
            e.changed_fields[e.n_changed_fields++] = "two_factor_enabled";
        store_user_subject(after.user_id, subject, sizeof subject);
        rc = record(mu, tx, subject, after.version, &e.base, "user.update", &e.previous->base, &e.user->base, NULL);
        if (rc != 0) return rc;
    }
    ((PB(UpdateUserResponse) *)mu->resp)->user = user_pb(mu->ctx, &after);
    return 0;
}

/* UpdateUser: the user or a service; FieldMask + etag; EMAIL_TAKEN. */
static int h_update_user(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp) {
    const PB(UpdateUserRequest) *req = (const void *)req_;
    update_user_op op = {.req = req};
    if (req->user == NULL) return op_fail_unset(ctx, "user");
    op_check_id(ctx, "user.user_id", req->user->user_id);
    if (req->update_mask == NULL || req->update_mask->n_paths == 0)
        rpc_violation(ctx, "update_mask", "must name the fields to change");
    check_etag(ctx, req->etag);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    user_from_pb(req->user, &op.patch);
    mutation mu = {.ctx = ctx, .apply = apply_update_user, .op = &op, .request_id = req->request_id};
    return op_run(ctx, &mutation_def, req_, resp, &mu);
}

static int apply_delete_user(mutation *mu, pg_conn *tx) {
    const PB(DeleteUserRequest) *req = mu->req;
    store_mem m = call_mem(mu->ctx);
    acct_user u;
    char subject[64];

    int rc = may_change_user(mu->ctx, tx, req->user_id);
    if (rc != 0)
        return op_fail(mu->oc, rc, rc == OM_E_NOT_FOUND ? "no such user" : "only the user themselves or a service may delete a user");
    /* a user leaving the directory takes their own memberships along: not an act in any account */
    if ((rc = gate(mu, tx, &(acct_act){.kind = ACCT_ACT_USER}, false, NULL)) != 0) return rc;
    if ((rc = store_user_get(tx, req->user_id, true, &m, &u)) != 0) return rc;
    if ((rc = acct_etag_check(req->etag, u.version)) != 0) return rc;

    acct_membership *page = rpc_calloc(mu->ctx, CASCADE_PAGE, sizeof *page);
    for (;;) {
        int n = 0;
        store_membership_filter f = {.user_id = u.user_id, .limit = CASCADE_PAGE};
        if ((rc = store_memberships_list(tx, &f, &m, page, &n)) != 0) return rc;
        for (int i = 0; i < n; i++) {
            member_facts facts = {.user = u};
            if ((rc = store_account_get(tx, page[i].hub_id, true, &m, &facts.account)) != 0) return rc;
            if ((page[i].roles & ACCT_ROLE_SUPER_ADMIN) &&
                (rc = keep_super_admin(mu, tx, page[i].hub_id, u.user_id,
                                       "; give the role to someone else first")) != 0)
                return rc;
            rc = remove_membership(mu, tx, &page[i], &facts, CAUSE(USER_DELETED), NULL);
            if (rc != 0) return rc;
        }
        if (n < CASCADE_PAGE) break;
    }
    acct_user last = u;
    last.version = u.version + 1;
    if ((rc = store_user_delete(tx, u.user_id, last.version)) != 0) return rc;
    PB(UserDeleted) e;
    orgmesh__accounts__v1__user_deleted__init(&e);
    e.user = user_pb(mu->ctx, &last);
    store_user_subject(u.user_id, subject, sizeof subject);
    return record(mu, tx, subject, last.version, &e.base, "user.delete", &user_pb(mu->ctx, &u)->base, NULL, NULL);
}

/* DeleteUser: the user or a service; their memberships go first (MembershipRemoved each, PART-09). */
static int h_delete_user(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp) {
    const PB(DeleteUserRequest) *req = (const void *)req_;
    op_check_id(ctx, "user_id", req->user_id);
    check_etag(ctx, req->etag);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    mutation mu = {.ctx = ctx, .req = req, .apply = apply_delete_user, .request_id = req->request_id};
    return op_run(ctx, &mutation_def, req_, resp, &mu);
}

/* ListUserHistory: the user or a service; the user's own changes, newest first. */
static int h_list_user_history(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_) {
    const PB(ListUserHistoryRequest) *req = (const void *)req_;
    PB(ListUserHistoryResponse) *resp = (void *)resp_;
    page_req pg;
    char resource[64];
    int rc;

    op_check_id(ctx, "user_id", req->user_id);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    const char *scope = rpc_sprintf(ctx, "accounts.ListUserHistory|user=%" PRIu64, req->user_id);
    if ((rc = page_open(ctx, req->page_size, req->page_token, scope, ACCT_PAGE_KEYS, &pg)) != 0) return rc;
    pg_conn *c = op_db(ctx);
    if (c == NULL) return OM_E_UNAVAILABLE;
    rc = may_change_user(ctx, c, req->user_id);
    if (rc == OM_E_PERMISSION_DENIED) return rpc_fail(ctx, rc, "only the user themselves may read their history");
    if (rc != 0) return op_fail_db(ctx, c, rc);
    store_user_subject(req->user_id, resource, sizeof resource);
    return list_history(ctx, c, resource, false, &pg, &resp->entries, &resp->n_entries, &resp->next_page_token);
}

/* ---- AccountsService: memberships -------------------------------------------------------- */

typedef struct membership_op {
    uint64_t hub_id, user_id;
    unsigned roles, seats;
    const char *etag, *reason;
    const Google__Protobuf__FieldMask *mask;
} membership_op;

static int apply_create_membership(mutation *mu, pg_conn *tx) {
    membership_op *op = mu->op;
    const om_actor *caller = rpc_actor(mu->ctx);
    acct_membership mbuf;
    const acct_membership *mine;
    member_facts f;

    int rc = reader_membership(mu->ctx, tx, op->hub_id, &mbuf, &mine);
    if (rc != 0) return rc;
    if ((rc = acct_rule_change_roles(caller, mine, 0, op->roles)) != 0)
        return op_fail(mu->oc, rc, mine && (op->roles & ACCT_ROLE_SUPER_ADMIN)
                                   ? "granting super admin needs super admin"
                                   : hidden_or(rc, "adding users needs super admin or account permissions in the account"));
    acct_act act = {.kind = ACCT_ACT_CREATE_MEMBERSHIP, .hub_id = op->hub_id, .roles_after = op->roles};
    if ((rc = gate(mu, tx, &act, true, mine)) != 0) return rc;
    if ((rc = load_facts(mu, tx, op->hub_id, op->user_id, &f)) != 0) return rc;
    if (f.account.state == ACCT_STATE_DEACTIVATED) return OM_E_ACCOUNT_DEACTIVATED;
    acct_membership mb = {.hub_id = op->hub_id, .user_id = op->user_id, .roles = op->roles, .seats = op->seats,
                          .assignment_id = "", .created_by_user_id = acting_user(mu)};
    rc = store_membership_insert(tx, &mb);
    if (rc == OM_E_ALREADY_EXISTS)
        return op_fail(mu->oc, rc, "user %" PRIu64 " is already a member of account %" PRIu64, op->user_id,
                       op->hub_id);
    if (rc != 0) return rc;
    if ((rc = emit_membership_added(mu, tx, &mb, &f)) != 0) return rc;
    ((PB(CreateMembershipResponse) *)mu->resp)->membership = membership_pb(mu->ctx, &mb);
    return 0;
}

/* CreateMembership: manage rights (SUPER_ADMIN to grant it) or a service; no partner fields (PART-01/05). */
static int h_create_membership(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp) {
    const PB(CreateMembershipRequest) *req = (const void *)req_;
    const PbMembership *in = req->membership;
    membership_op op = {0};

    if (in == NULL) return op_fail_unset(ctx, "membership");
    op_check_id(ctx, "membership.hub_id", in->hub_id);
    op_check_id(ctx, "membership.user_id", in->user_id);
    op.roles = roles_in(ctx, "membership.roles", in->roles, in->n_roles);
    op.seats = seats_in(ctx, "membership.seats", in->seats, in->n_seats);
    if (in->partner_employee)
        rpc_violation(ctx, "membership.partner_employee", "is set through the partners service (PART-01)");
    if (in->partner_link != NULL)
        rpc_violation(ctx, "membership.partner_link", "is set through the partners service (PART-05)");
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    op.hub_id = in->hub_id;
    op.user_id = in->user_id;
    mutation mu = {.ctx = ctx, .apply = apply_create_membership, .op = &op, .request_id = req->request_id};
    return op_run(ctx, &mutation_def, req_, resp, &mu);
}

/* GetMembership: members of the account, the user, and services. */
static int h_get_membership(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_) {
    const PB(GetMembershipRequest) *req = (const void *)req_;
    PB(GetMembershipResponse) *resp = (void *)resp_;
    const om_actor *actor = rpc_actor(ctx);
    store_mem m = call_mem(ctx);
    acct_membership mbuf, mb;
    const acct_membership *mine;

    op_check_id(ctx, "hub_id", req->hub_id);
    op_check_id(ctx, "user_id", req->user_id);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    pg_conn *c = op_db(ctx);
    if (c == NULL) return OM_E_UNAVAILABLE;
    int rc = reader_membership(ctx, c, req->hub_id, &mbuf, &mine);
    if (rc != 0) return op_fail_db(ctx, c, rc);
    if (actor->user_id != req->user_id && (rc = acct_rule_view_account(actor, mine)) != 0)
        return rpc_fail(ctx, rc, NULL);
    if ((rc = store_membership_get(c, req->hub_id, req->user_id, false, &m, &mb)) != 0)
        return op_fail_db(ctx, c, rc);
    resp->membership = membership_pb(ctx, &mb);
    return 0;
}

/* The shared part of ListMemberships and ListMembershipsInternal. */
static int list_memberships(rpc_ctx *ctx, uint64_t hub_id, uint64_t user_id, const PB(Role) *roles, size_t n_roles,
                            int32_t page_size, const char *page_token, uint64_t visible_to,
                            PbMembership ***out, size_t *n_out, char **next) {
    int rc;
    store_mem m = call_mem(ctx);
    page_req pg;

    if (hub_id == 0 && user_id == 0) rpc_violation(ctx, "hub_id", "hub_id or user_id must be set");
    if (hub_id != 0 && !pg_id_valid(hub_id)) rpc_violation(ctx, "hub_id", "is out of range");
    if (user_id != 0 && !pg_id_valid(user_id)) rpc_violation(ctx, "user_id", "is out of range");
    unsigned any_roles = roles_in(ctx, "roles", roles, n_roles);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    const char *scope = rpc_sprintf(ctx, "accounts.ListMemberships|hub=%" PRIu64 "|user=%" PRIu64
                                    "|roles=%u|visible=%" PRIu64, hub_id, user_id, any_roles, visible_to);
    if ((rc = page_open(ctx, page_size, page_token, scope, ACCT_PAGE_KEYS, &pg)) != 0) return rc;

    pg_conn *c = op_db(ctx);
    if (c == NULL) return OM_E_UNAVAILABLE;
    if (visible_to != 0 && hub_id != 0) {
        acct_membership mbuf;
        const acct_membership *mine;
        rc = reader_membership(ctx, c, hub_id, &mbuf, &mine);
        if (rc != 0) return op_fail_db(ctx, c, rc);
        if ((rc = acct_rule_view_account(rpc_actor(ctx), mine)) != 0)
            return rpc_fail(ctx, rc, "%s", hidden_or(rc, "listing an account's members needs membership in it"));
    }
    store_membership_filter f = {.hub_id = hub_id, .user_id = user_id, .any_roles = any_roles,
                                 .visible_to = visible_to, .after_hub_id = pg.k1, .after_user_id = pg.k2,
                                 .limit = pg.limit + 1};
    acct_membership *rows = rpc_calloc(ctx, (size_t)pg.limit + 1, sizeof *rows);
    int n = 0;
    rc = store_memberships_list(c, &f, &m, rows, &n);
    if (rc != 0) return op_fail_db(ctx, c, rc);
    *next = page_next(ctx, &pg, page_trim(&pg, &n), rows[pg.limit - 1].hub_id, rows[pg.limit - 1].user_id);
    *out = rpc_calloc(ctx, (size_t)n + 1, sizeof **out);
    *n_out = 0;
    for (int i = 0; i < n; i++) (*out)[(*n_out)++] = membership_pb(ctx, &rows[i]);
    return 0;
}

/* ListMemberships: of an account the caller is in, and/or of a user, within the caller's accounts. */
static int h_list_memberships(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_) {
    const PB(ListMembershipsRequest) *req = (const void *)req_;
    PB(ListMembershipsResponse) *resp = (void *)resp_;
    const om_actor *actor = rpc_actor(ctx);
    uint64_t visible = is_service(actor) ? 0 : actor->user_id;
    return list_memberships(ctx, req->hub_id, req->user_id, req->roles, req->n_roles, req->page_size,
                            req->page_token, visible, &resp->memberships, &resp->n_memberships,
                            &resp->next_page_token);
}

static int apply_update_membership(mutation *mu, pg_conn *tx) {
    membership_op *op = mu->op;
    const om_actor *caller = rpc_actor(mu->ctx);
    store_mem m = call_mem(mu->ctx);
    acct_membership mbuf, before, after, patch = {.roles = op->roles, .seats = op->seats};
    const acct_membership *mine;
    acct_violations v = mu_violations(mu);
    member_facts f;

    int rc = reader_membership(mu->ctx, tx, op->hub_id, &mbuf, &mine);
    if (rc != 0) return rc;
    if ((rc = acct_rule_manage_account(caller, mine)) != 0)
        return op_fail(mu->oc, rc, "%s", hidden_or(rc, "changing members needs super admin or account permissions in the account"));
    /* the account row serialises membership changes (the last SUPER_ADMIN check) */
    if ((rc = store_account_get(tx, op->hub_id, true, &m, &f.account)) != 0) return rc;
    if ((rc = store_membership_get(tx, op->hub_id, op->user_id, true, &m, &before)) != 0) return rc;
    after = before;
    acct_membership_apply_mask(&after, &patch, (const char *const *)op->mask->paths, op->mask->n_paths, &v);
    if (v.n > 0) return OM_E_INVALID_ARGUMENT;
    acct_act act = {.kind = ACCT_ACT_UPDATE_MEMBERSHIP, .hub_id = op->hub_id, .target = &before,
                    .roles_after = after.roles};
    if ((rc = gate(mu, tx, &act, true, mine)) != 0) return rc;
    if ((rc = acct_rule_change_roles(caller, mine, before.roles, after.roles)) != 0)
        return op_fail(mu->oc, rc, "granting or removing super admin needs super admin");
    /* preconditions after every permission (a refused caller learns nothing from an etag) */
    if ((rc = acct_etag_check(op->etag, before.version)) != 0) return rc;
    if (f.account.state == ACCT_STATE_DEACTIVATED) return OM_E_ACCOUNT_DEACTIVATED;
    if ((before.roles & ACCT_ROLE_SUPER_ADMIN) && !(after.roles & ACCT_ROLE_SUPER_ADMIN) &&
        (rc = keep_super_admin(mu, tx, op->hub_id, op->user_id, NULL)) != 0)
        return rc;
    if (acct_membership_changed(&before, &after)) {
        after.version = before.version + 1;
        if ((rc = store_membership_update(tx, &after)) != 0) return rc;
        if ((rc = store_user_get(tx, op->user_id, false, &m, &f.user)) != 0) return rc;
        if ((rc = emit_membership_changed(mu, tx, &before, &after, &f, NULL)) != 0) return rc;
    }
    ((PB(UpdateMembershipResponse) *)mu->resp)->membership = membership_pb(mu->ctx, &after);
    return 0;
}

/* UpdateMembership: roles/seats; manage rights (SUPER_ADMIN for it) or a service; etag; a SUPER_ADMIN stays. */
static int h_update_membership(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp) {
    const PB(UpdateMembershipRequest) *req = (const void *)req_;
    const PbMembership *in = req->membership;
    membership_op op = {0};

    if (in == NULL) return op_fail_unset(ctx, "membership");
    op_check_id(ctx, "membership.hub_id", in->hub_id);
    op_check_id(ctx, "membership.user_id", in->user_id);
    if (req->update_mask == NULL || req->update_mask->n_paths == 0)
        rpc_violation(ctx, "update_mask", "must name the fields to change");
    check_etag(ctx, req->etag);
    op.roles = roles_in(ctx, "membership.roles", in->roles, in->n_roles);
    op.seats = seats_in(ctx, "membership.seats", in->seats, in->n_seats);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    op.hub_id = in->hub_id;
    op.user_id = in->user_id;
    op.etag = req->etag;
    op.mask = req->update_mask;
    mutation mu = {.ctx = ctx, .apply = apply_update_membership, .op = &op, .request_id = req->request_id};
    return op_run(ctx, &mutation_def, req_, resp, &mu);
}

static int apply_delete_membership(mutation *mu, pg_conn *tx) {
    membership_op *op = mu->op;
    const om_actor *caller = rpc_actor(mu->ctx);
    store_mem m = call_mem(mu->ctx);
    acct_membership mbuf, mb;
    const acct_membership *mine;
    member_facts f;

    int rc = reader_membership(mu->ctx, tx, op->hub_id, &mbuf, &mine);
    if (rc != 0) return rc;
    /* PART-08: only the client removes a user from the client account */
    if ((rc = acct_rule_remove_membership(caller, mine)) != 0)
        return op_fail(mu->oc, rc, "%s", hidden_or(rc, "removing users needs super admin or account permissions in the account"));
    if ((rc = store_account_get(tx, op->hub_id, true, &m, &f.account)) != 0) return rc;
    if ((rc = store_membership_get(tx, op->hub_id, op->user_id, true, &m, &mb)) != 0) return rc;
    acct_act act = {.kind = ACCT_ACT_DELETE_MEMBERSHIP, .hub_id = op->hub_id, .target = &mb};
    if ((rc = gate(mu, tx, &act, true, mine)) != 0) return rc;
    if ((rc = acct_etag_check(op->etag, mb.version)) != 0) return rc;
    if ((mb.roles & ACCT_ROLE_SUPER_ADMIN) && (rc = keep_super_admin(mu, tx, op->hub_id, op->user_id, NULL)) != 0)
        return rc;
    if ((rc = store_user_get(tx, op->user_id, false, &m, &f.user)) != 0) return rc;
    PB(MembershipRemovalCause) cause =
        auth_is_service(caller, "partners") ? CAUSE(PARTNER_ACCESS_ENDED) : CAUSE(REMOVED_BY_ACCOUNT);
    return remove_membership(mu, tx, &mb, &f, cause, op->reason);
}

/* DeleteMembership: PART-08 — the client's SUPER_ADMIN/ACCOUNT_PERMISSIONS or the partners service. */
static int h_delete_membership(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp) {
    const PB(DeleteMembershipRequest) *req = (const void *)req_;
    op_check_id(ctx, "hub_id", req->hub_id);
    op_check_id(ctx, "user_id", req->user_id);
    check_etag(ctx, req->etag);
    check_text(ctx, "reason", req->reason, MAX_REASON_CHARS);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    membership_op op = {.hub_id = req->hub_id, .user_id = req->user_id, .etag = req->etag, .reason = req->reason};
    mutation mu = {.ctx = ctx, .apply = apply_delete_membership, .op = &op, .request_id = req->request_id};
    return op_run(ctx, &mutation_def, req_, resp, &mu);
}

/* ---- AccountsInternalService ------------------------------------------------------------- */

/* Internal methods answer PERMISSION_DENIED (SERVICE_IDENTITY_REQUIRED) to
 * users before anything else; the server checks RPC_INTERNAL too. */
static int require_service(rpc_ctx *ctx, const char *service) {
    int rc = acct_rule_internal(rpc_actor(ctx), service);
    if (rc == OM_E_PERMISSION_DENIED) return rpc_fail(ctx, rc, "only the %s service may call this", service);
    return rc != 0 ? rpc_fail(ctx, rc, NULL) : 0;
}

static int apply_set_partner_employee(mutation *mu, pg_conn *tx) {
    const PB(SetPartnerEmployeeRequest) *req = mu->req;
    store_mem m = call_mem(mu->ctx);
    acct_membership before, after;
    member_facts f;

    int rc = gate(mu, tx, &(acct_act){.kind = ACCT_ACT_PARTNER_SYNC, .hub_id = req->hub_id}, false, NULL);
    if (rc != 0) return rc;
    rc = store_account_get(tx, req->hub_id, false, &m, &f.account);
    if (rc == OM_E_NOT_FOUND) return op_fail(mu->oc, rc, "account %" PRIu64 " does not exist", req->hub_id);
    if (rc != 0) return rc;
    /* PART-01: the tag only exists in a PARTNER account */
    if (f.account.kind != ACCT_KIND_PARTNER) return OM_E_NOT_PARTNER_ACCOUNT;
    rc = store_membership_get(tx, req->hub_id, req->user_id, true, &m, &before);
    if (rc == OM_E_NOT_FOUND)
        return op_fail(mu->oc, rc, "user %" PRIu64 " is not a member of account %" PRIu64, req->user_id, req->hub_id);
    if (rc != 0) return rc;
    after = before;
    after.partner_employee = req->partner_employee;
    if ((rc = acct_rule_partner_employee(f.account.kind, after.partner_employee)) != 0) return rc;
    if (acct_membership_changed(&before, &after)) {
        after.version = before.version + 1;
        if ((rc = store_membership_update(tx, &after)) != 0) return rc;
        if ((rc = store_user_get(tx, req->user_id, false, &m, &f.user)) != 0) return rc;
        if ((rc = emit_membership_changed(mu, tx, &before, &after, &f, NULL)) != 0) return rc;
    }
    ((PB(SetPartnerEmployeeResponse) *)mu->resp)->membership = membership_pb(mu->ctx, &after);
    return 0;
}

/* SetPartnerEmployee: partners service only; PART-01 tag, only in a PARTNER account (NOT_PARTNER_ACCOUNT). */
static int h_set_partner_employee(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp) {
    const PB(SetPartnerEmployeeRequest) *req = (const void *)req_;
    int rc = require_service(ctx, "partners");
    if (rc != 0) return rc;
    mutation mu = {.ctx = ctx, .req = req, .apply = apply_set_partner_employee, .request_id = req->request_id};
    op_check_id(ctx, "hub_id", req->hub_id);
    op_check_id(ctx, "user_id", req->user_id);
    take_on_behalf_of(&mu, req->on_behalf_of, false);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    return op_run(ctx, &mutation_def, req_, resp, &mu);
}

typedef struct link_op {
    const PB(AddPartnerLinkedMembershipRequest) *req;
    unsigned roles;
} link_op;

static int apply_add_partner_link(mutation *mu, pg_conn *tx) {
    link_op *op = mu->op;
    const PB(AddPartnerLinkedMembershipRequest) *req = op->req;
    PB(AddPartnerLinkedMembershipResponse) *resp = (void *)mu->resp;
    store_mem m = call_mem(mu->ctx);
    acct_membership before, after;
    member_facts f;

    int rc = gate(mu, tx, &(acct_act){.kind = ACCT_ACT_PARTNER_SYNC, .hub_id = req->hub_id}, false, NULL);
    if (rc != 0) return rc;
    if ((rc = load_facts(mu, tx, req->hub_id, req->user_id, &f)) != 0) return rc;
    rc = store_membership_get(tx, req->hub_id, req->user_id, true, &m, &before);
    if (rc == OM_E_NOT_FOUND) {
        /* PART-05: the approved employee becomes a member carrying the link */
        if (f.account.state == ACCT_STATE_DEACTIVATED) return OM_E_ACCOUNT_DEACTIVATED;
        acct_membership mb = {.hub_id = req->hub_id, .user_id = req->user_id, .roles = op->roles,
                              .partner_hub_id = req->partner_hub_id, .assignment_id = req->assignment_id,
                              .link_owns_membership = true, .created_by_user_id = acting_user(mu)};
        if ((rc = store_membership_insert(tx, &mb)) != 0) return rc;
        if ((rc = emit_membership_added(mu, tx, &mb, &f)) != 0) return rc;
        resp->membership = membership_pb(mu->ctx, &mb);
        resp->already_member = false;
        return 0;
    }
    if (rc != 0) return rc;
    resp->already_member = true;
    after = before;
    if (acct_has_partner_link(&before)) {
        if (before.partner_hub_id != req->partner_hub_id || strcmp(before.assignment_id, req->assignment_id) != 0)
            return op_fail(mu->oc, OM_E_FAILED_PRECONDITION,
                           "the membership already carries the link of assignment %s", before.assignment_id);
        /* the same link again: nothing to do */
    } else {
        /* PART-04/05: link the membership the user has; adopt it only when
         * the partners service says it exists because of the assignment */
        after.partner_hub_id = req->partner_hub_id;
        after.assignment_id = req->assignment_id;
        after.link_owns_membership = req->adopt_existing_membership;
        after.version = before.version + 1;
        if ((rc = store_membership_update(tx, &after)) != 0) return rc;
        if ((rc = emit_membership_changed(mu, tx, &before, &after, &f, NULL)) != 0) return rc;
    }
    resp->membership = membership_pb(mu->ctx, &after);
    return 0;
}

/* AddPartnerLinkedMembership: partners service only; PART-04/05 membership with partner_link. */
static int h_add_partner_linked_membership(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp) {
    const PB(AddPartnerLinkedMembershipRequest) *req = (const void *)req_;
    int rc = require_service(ctx, "partners");
    if (rc != 0) return rc;
    link_op op = {.req = req};
    mutation mu = {.ctx = ctx, .apply = apply_add_partner_link, .op = &op, .request_id = req->request_id};
    op_check_id(ctx, "hub_id", req->hub_id);
    op_check_id(ctx, "user_id", req->user_id);
    op_check_id(ctx, "partner_hub_id", req->partner_hub_id);
    if (req->hub_id != 0 && req->hub_id == req->partner_hub_id)
        rpc_violation(ctx, "partner_hub_id", "must differ from hub_id (the client account)");
    if (req->assignment_id[0] == '\0')
        rpc_violation(ctx, "assignment_id", "must be set");
    else
        check_text(ctx, "assignment_id", req->assignment_id, MAX_ASSIGNMENT_ID);
    op.roles = roles_in(ctx, "roles", req->roles, req->n_roles);
    take_on_behalf_of(&mu, req->on_behalf_of, false);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    return op_run(ctx, &mutation_def, req_, resp, &mu);
}

static int apply_remove_partner_link(mutation *mu, pg_conn *tx) {
    const PB(RemovePartnerLinkedMembershipRequest) *req = mu->req;
    PB(RemovePartnerLinkedMembershipResponse) *resp = (void *)mu->resp;
    store_mem m = call_mem(mu->ctx);
    acct_membership before, after;
    member_facts f;

    int rc = gate(mu, tx, &(acct_act){.kind = ACCT_ACT_PARTNER_SYNC, .hub_id = req->hub_id}, false, NULL);
    if (rc != 0) return rc;
    rc = store_membership_get(tx, req->hub_id, req->user_id, true, &m, &before);
    if (rc == OM_E_NOT_FOUND) return 0; /* already gone: safe to repeat */
    if (rc != 0) return rc;
    if (!acct_has_partner_link(&before) || strcmp(before.assignment_id, req->assignment_id) != 0) {
        resp->membership = membership_pb(mu->ctx, &before); /* not this assignment's link */
        return 0;
    }
    if ((rc = load_facts(mu, tx, req->hub_id, req->user_id, &f)) != 0) return rc;
    if (before.link_owns_membership) {
        /* PART-07/09: the membership exists because of the assignment */
        resp->membership_removed = true;
        return remove_membership(mu, tx, &before, &f, CAUSE(PARTNER_ACCESS_ENDED), req->reason);
    }
    /* PART-07: a membership the employee had before the assignment stays */
    after = before;
    after.partner_hub_id = 0;
    after.assignment_id = "";
    after.link_owns_membership = false;
    after.version = before.version + 1;
    if ((rc = store_membership_update(tx, &after)) != 0) return rc;
    if ((rc = emit_membership_changed(mu, tx, &before, &after, &f, req->reason)) != 0) return rc;
    resp->link_cleared = true;
    resp->membership = membership_pb(mu->ctx, &after);
    return 0;
}

/* RemovePartnerLinkedMembership: partners only; PART-07/09 — a link-owned membership goes, else the link. */
static int h_remove_partner_linked_membership(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp) {
    const PB(RemovePartnerLinkedMembershipRequest) *req = (const void *)req_;
    int rc = require_service(ctx, "partners");
    if (rc != 0) return rc;
    mutation mu = {.ctx = ctx, .req = req, .apply = apply_remove_partner_link, .request_id = req->request_id};
    op_check_id(ctx, "hub_id", req->hub_id);
    op_check_id(ctx, "user_id", req->user_id);
    if (req->assignment_id[0] == '\0') rpc_violation(ctx, "assignment_id", "must be set");
    check_text(ctx, "reason", req->reason, MAX_REASON_CHARS);
    take_on_behalf_of(&mu, req->on_behalf_of, true);
    if (rpc_has_violations(ctx)) return rpc_fail_invalid(ctx);
    return op_run(ctx, &mutation_def, req_, resp, &mu);
}

/* Distinct ids of a batch, in request order; non-zero (failed) when too many or invalid. */
static int batch_ids(rpc_ctx *ctx, const char *field, const uint64_t *ids, size_t n, uint64_t **out, int *n_out) {
    if (n > MAX_BATCH) return rpc_fail(ctx, OM_E_BATCH_TOO_LARGE, "at most %d ids per call", MAX_BATCH);
    *out = rpc_calloc(ctx, n + 1, sizeof **out);
    *n_out = 0;
    for (size_t i = 0; i < n; i++) {
        if (!pg_id_valid(ids[i])) {
            rpc_violation(ctx, rpc_sprintf(ctx, "%s[%zu]", field, i), "is not a valid id");
            continue;
        }
        bool seen = false;
        for (int j = 0; j < *n_out && !seen; j++) seen = (*out)[j] == ids[i];
        if (!seen) (*out)[(*n_out)++] = ids[i];
    }
    return rpc_has_violations(ctx) ? rpc_fail_invalid(ctx) : 0;
}

/* BatchGetAccounts: services only; up to 100 accounts in request order, plus the missing ids. */
static int h_batch_get_accounts(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_) {
    const PB(BatchGetAccountsRequest) *req = (const void *)req_;
    PB(BatchGetAccountsResponse) *resp = (void *)resp_;
    store_mem m = call_mem(ctx);
    uint64_t *ids;
    int n_ids, n = 0;
    int rc;

    if ((rc = require_service(ctx, NULL)) != 0) return rc;
    if ((rc = batch_ids(ctx, "hub_ids", req->hub_ids, req->n_hub_ids, &ids, &n_ids)) != 0) return rc;
    pg_conn *c = op_db(ctx);
    if (c == NULL) return OM_E_UNAVAILABLE;
    acct_account *rows = rpc_calloc(ctx, (size_t)n_ids + 1, sizeof *rows);
    rc = store_accounts_batch(c, ids, n_ids, &m, rows, &n);
    if (rc != 0) return op_fail_db(ctx, c, rc);
    resp->accounts = rpc_calloc(ctx, (size_t)n_ids + 1, sizeof *resp->accounts);
    resp->missing_hub_ids = rpc_calloc(ctx, (size_t)n_ids + 1, sizeof *resp->missing_hub_ids);
    for (int i = 0; i < n_ids; i++) {
        int found = -1;
        for (int j = 0; j < n && found < 0; j++)
            if (rows[j].hub_id == ids[i]) found = j;
        if (found >= 0)
            resp->accounts[resp->n_accounts++] = account_pb(ctx, &rows[found]);
        else
            resp->missing_hub_ids[resp->n_missing_hub_ids++] = ids[i];
    }
    return 0;
}

/* BatchGetUsers: services only; up to 100 users in request order, plus the missing ids. */
static int h_batch_get_users(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_) {
    const PB(BatchGetUsersRequest) *req = (const void *)req_;
    PB(BatchGetUsersResponse) *resp = (void *)resp_;
    store_mem m = call_mem(ctx);
    uint64_t *ids;
    int n_ids, n = 0;
    int rc;

    if ((rc = require_service(ctx, NULL)) != 0) return rc;
    if ((rc = batch_ids(ctx, "user_ids", req->user_ids, req->n_user_ids, &ids, &n_ids)) != 0) return rc;
    pg_conn *c = op_db(ctx);
    if (c == NULL) return OM_E_UNAVAILABLE;
    acct_user *rows = rpc_calloc(ctx, (size_t)n_ids + 1, sizeof *rows);
    rc = store_users_batch(c, ids, n_ids, &m, rows, &n);
    if (rc != 0) return op_fail_db(ctx, c, rc);
    resp->users = rpc_calloc(ctx, (size_t)n_ids + 1, sizeof *resp->users);
    resp->missing_user_ids = rpc_calloc(ctx, (size_t)n_ids + 1, sizeof *resp->missing_user_ids);
    for (int i = 0; i < n_ids; i++) {
        int found = -1;
        for (int j = 0; j < n && found < 0; j++)
            if (rows[j].user_id == ids[i]) found = j;
        if (found >= 0)
            resp->users[resp->n_users++] = user_pb(ctx, &rows[found]);
        else
            resp->missing_user_ids[resp->n_missing_user_ids++] = ids[i];
    }
    return 0;
}

/* ListMembershipsInternal: services only; by account, user and roles (e.g. PART-04 recipients). */
static int h_list_memberships_internal(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_) {
    const PB(ListMembershipsInternalRequest) *req = (const void *)req_;
    PB(ListMembershipsInternalResponse) *resp = (void *)resp_;
    int rc;
    if ((rc = require_service(ctx, NULL)) != 0) return rc;
    return list_memberships(ctx, req->hub_id, req->user_id, req->roles, req->n_roles, req->page_size,
                            req->page_token, 0, &resp->memberships, &resp->n_memberships,
                            &resp->next_page_token);
}

/* ---- the service tables ------------------------------------------------------------------ */

/* Issue 13: who may call each method with a service identity (rpc_method
 * `services`): RPC_PLATFORM is the operator's platform identities
 * (ORGMESH_PLATFORM_SERVICES: the identity system, operator tools); an
 * orgmesh service is listed only where its own calls need it
 * (docs/security.md "Service identities"). */
static const char *const by_platform[] = {RPC_PLATFORM, NULL};
/* assets (ASSET-01 roles) and connections (CONN-06 seats) read memberships */
static const char *const by_readers[] = {"assets", "connections", RPC_PLATFORM, NULL};
/* partner tags and links: the partners service alone (SPEC 1) */
static const char *const by_partners[] = {"partners", NULL};
static const char *const by_batch_accounts[] = {"organizations", "connections", "partners", RPC_PLATFORM, NULL};
static const char *const by_batch_users[] = {"organizations", "partners", "notifier", RPC_PLATFORM, NULL};
static const char *const by_members_internal[] = {"organizations", "partners", "notifier", RPC_PLATFORM, NULL};

static const rpc_method public_methods[] = {
    {"CreateAccount", h_create_account, 0, by_platform},
    {"GetAccount", h_get_account, 0, by_platform},
    {"ListAccounts", h_list_accounts, 0, by_platform},
    {"UpdateAccount", h_update_account, 0, by_platform},
    {"DeactivateAccount", h_deactivate_account, 0, by_platform},
    {"ReactivateAccount", h_reactivate_account, 0, by_platform},
    {"DeleteAccount", h_delete_account, 0, by_platform},
    {"ListAccountHistory", h_list_account_history, 0, by_platform},
    {"CreateUser", h_create_user, 0, by_platform},
    {"GetUser", h_get_user, 0, by_platform},
    {"GetUserByEmail", h_get_user_by_email, 0, by_platform},
    {"ListUsers", h_list_users, 0, by_platform},
    {"UpdateUser", h_update_user, 0, by_platform},
    {"DeleteUser", h_delete_user, 0, by_platform},
    {"ListUserHistory", h_list_user_history, 0, by_platform},
    {"CreateMembership", h_create_membership, 0, by_platform},
    {"GetMembership", h_get_membership, 0, by_platform},
    {"ListMemberships", h_list_memberships, 0, by_readers},
    {"UpdateMembership", h_update_membership, 0, by_platform},
    {"DeleteMembership", h_delete_membership, 0, by_platform},
    {NULL, NULL, 0},
};

static const rpc_method internal_methods[] = {
    {"SetPartnerEmployee", h_set_partner_employee, RPC_INTERNAL, by_partners},
    {"AddPartnerLinkedMembership", h_add_partner_linked_membership, RPC_INTERNAL, by_partners},
    {"RemovePartnerLinkedMembership", h_remove_partner_linked_membership, RPC_INTERNAL, by_partners},
    {"BatchGetAccounts", h_batch_get_accounts, RPC_INTERNAL, by_batch_accounts},
    {"BatchGetUsers", h_batch_get_users, RPC_INTERNAL, by_batch_users},
    {"ListMembershipsInternal", h_list_memberships_internal, RPC_INTERNAL, by_members_internal},
    {NULL, NULL, 0},
};

const rpc_service accounts_service = {&orgmesh__accounts__v1__accounts_service__descriptor, public_methods};
const rpc_service accounts_internal_service = {&orgmesh__accounts__v1__accounts_internal_service__descriptor,
                                               internal_methods};
