/* notifier_events.c — the events the notifier turns into emails (NOTE-01):
 * access-request events from partners, and the automatic organization and
 * connection changes (ORG-09, ORG-10, CONN-05). Each handler resolves the
 * recipients through the accounts service (and, for access requests, their
 * per-recipient tokens through partners), renders each email in the
 * recipient's locale (NOTE-02) and queues one row per recipient inside the
 * event's transaction; the senders do the SMTP part. A failed call to a peer
 * returns an error so that the event is retried. */
#define _GNU_SOURCE /* asprintf */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "app.h"
#include "log.h"
#include "notifier.h"
#include "om_err.h"
#include "orgmesh/accounts/v1/accounts.pb-c.h"
#include "orgmesh/connections/v1/events.pb-c.h"
#include "orgmesh/organizations/v1/events.pb-c.h"
#include "orgmesh/partners/v1/events.pb-c.h"

#define ACC(x) Orgmesh__Accounts__V1__##x
#define PRT(x) Orgmesh__Partners__V1__##x
#define NT_BATCH 100

/* ---- small helpers ------------------------------------------------------------ */

typedef struct ids {
    uint64_t *v;
    size_t n, cap;
} ids;

static int ids_add(ids *s, uint64_t id) {
    if (id == 0) return 0;
    for (size_t i = 0; i < s->n; i++)
        if (s->v[i] == id) return 0;
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 16;
        uint64_t *v = realloc(s->v, cap * sizeof *v);
        if (v == NULL) return OM_E_NOMEM;
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = id;
    return 0;
}

static int peer_call(const char *peer, const char *service, const char *method, const ProtobufCMessage *req,
                     const ProtobufCMessageDescriptor *desc, ProtobufCMessage **resp, rpc_status *st) {
    memset(st, 0, sizeof *st);
    rpc_client *cl = app_peer(peer);
    if (cl == NULL) return OM_E_UNAVAILABLE;
    char path[160];
    snprintf(path, sizeof path, "/%s/%s", service, method);
    rpc_call_opts o = {.token = app_service_token(), .deadline_ms = 5000, .idempotent = true};
    int rc = rpc_client_call(cl, path, req, desc, resp, &o, st);
    if (rc != 0) log_warn("%s %s: %s %s", peer, method, om_err_name(rc), st->message);
    return rc;
}

/* The SUPER_ADMIN members of an account (the recipients of NOTE-01). */
static int super_admins(uint64_t hub, ids *out) {
    char *page = NULL;
    int rc = 0;
    for (int guard = 0; guard < 100; guard++) {
        ACC(ListMembershipsInternalRequest) req;
        orgmesh__accounts__v1__list_memberships_internal_request__init(&req);
        ACC(Role) role = ORGMESH__ACCOUNTS__V1__ROLE__ROLE_SUPER_ADMIN;
        req.hub_id = hub;
        req.n_roles = 1;
        req.roles = &role;
        req.page_size = 1000;
        if (page != NULL) req.page_token = page;
        ProtobufCMessage *resp = NULL;
        rpc_status st;
        rc = peer_call("accounts", "orgmesh.accounts.v1.AccountsInternalService", "ListMembershipsInternal", &req.base,
                       &orgmesh__accounts__v1__list_memberships_internal_response__descriptor, &resp, &st);
        free(page);
        page = NULL;
        if (rc != 0) return rc == OM_E_NOT_FOUND ? 0 : OM_E_UNAVAILABLE;
        const ACC(ListMembershipsInternalResponse) *r = (const void *)resp;
        for (size_t i = 0; rc == 0 && i < r->n_memberships; i++)
            if (r->memberships[i]->hub_id == hub) rc = ids_add(out, r->memberships[i]->user_id);
        if (rc == 0 && r->next_page_token && r->next_page_token[0] != '\0') page = strdup(r->next_page_token);
        protobuf_c_message_free_unpacked(resp, NULL);
        if (rc != 0 || page == NULL) break;
    }
    free(page);
    return rc;
}

/* The users (email, name, locale), BatchGetUsers in batches; *out is freed
 * with users_free. Users that no longer exist are left out. */
typedef struct users {
    ProtobufCMessage *resp[64];
    int n_resp;
} users;

static int users_get(const ids *who, users *out) {
    memset(out, 0, sizeof *out);
    for (size_t off = 0; off < who->n && out->n_resp < 64; off += NT_BATCH) {
        ACC(BatchGetUsersRequest) req;
        orgmesh__accounts__v1__batch_get_users_request__init(&req);
        req.user_ids = who->v + off;
        req.n_user_ids = who->n - off < NT_BATCH ? who->n - off : NT_BATCH;
        rpc_status st;
        int rc = peer_call("accounts", "orgmesh.accounts.v1.AccountsInternalService", "BatchGetUsers", &req.base,
                           &orgmesh__accounts__v1__batch_get_users_response__descriptor, &out->resp[out->n_resp], &st);
        if (rc != 0) return OM_E_UNAVAILABLE;
        out->n_resp++;
    }
    return 0;
}

static const ACC(User) *users_find(const users *u, uint64_t id) {
    for (int i = 0; i < u->n_resp; i++) {
        const ACC(BatchGetUsersResponse) *r = (const void *)u->resp[i];
        for (size_t j = 0; j < r->n_users; j++)
            if (r->users[j]->user_id == id) return r->users[j];
    }
    return NULL;
}

static void users_free(users *u) {
    for (int i = 0; i < u->n_resp; i++) protobuf_c_message_free_unpacked(u->resp[i], NULL);
    u->n_resp = 0;
}

/* Renders `tpl` for one recipient in their locale (NOTE-02) and queues it. */
static int queue_one(pg_conn *tx, const evt_event *ev, const char *tpl, const ACC(User) *u, nt_var *vars,
                     size_t n_vars, uint64_t client_hub_id, const char *access_request_id) {
    if (u->email == NULL || u->email[0] == '\0') return 0;
    const char *locale = nt_locale_pick(nt_tpls, tpl, u->locale);
    /* the first variable is always the recipient's name */
    vars[0].key = "recipient_name";
    vars[0].value = u->display_name;
    char *subject = NULL, *body = NULL, *html = NULL;
    int rc = nt_render(nt_tpls, tpl, locale, vars, n_vars, &subject, &body);
    if (rc == 0 && (rc = nt_render_html(nt_tpls, tpl, locale, vars, n_vars, &html)) != 0) { /* NOTE-04 */
        free(subject);
        free(body);
    }
    if (rc != 0) {
        log_error("template %s/%s: %s", locale, tpl, om_err_name(rc));
        return rc;
    }
    nt_outbound o = {
        .event_id = ev->id,
        .event_type = ev->type,
        .recipient_user_id = u->user_id,
        .recipient_email = u->email,
        .locale = locale,
        .template_name = tpl,
        .subject = subject,
        .body = body,
        .body_html = html,
        .client_hub_id = client_hub_id,
        .access_request_id = access_request_id,
    };
    rc = nt_queue_insert(tx, &o);
    free(subject);
    free(body);
    free(html);
    return rc;
}

/* Mails every user in `who` with template `tpl`. */
static int mail_users(pg_conn *tx, const evt_event *ev, const char *tpl, const ids *who, nt_var *vars,
                      size_t n_vars) {
    if (who->n == 0) return 0;
    users u;
    int rc = users_get(who, &u);
    for (size_t i = 0; rc == 0 && i < who->n; i++) {
        const ACC(User) *x = users_find(&u, who->v[i]);
        if (x != NULL) rc = queue_one(tx, ev, tpl, x, vars, n_vars, 0, NULL);
    }
    users_free(&u);
    return rc;
}

static void fmt_date(const Google__Protobuf__Timestamp *t, char *out, size_t cap) {
    out[0] = '\0';
    if (t == NULL) return;
    time_t s = (time_t)t->seconds;
    struct tm tm;
    gmtime_r(&s, &tm);
    strftime(out, cap, "%Y-%m-%d %H:%M UTC", &tm);
}

/* NOTE-04: the phrase key of an enum value, e.g. DEPARTURE_REASON_DOWNGRADED
 * -> "departure.DOWNGRADED" (templates/<locale>/phrases.ini): the email
 * shows the recipient's words for it, never the code. */
static void phrase_key(const ProtobufCEnumDescriptor *d, int v, const char *prefix, const char *group, char *out,
                       size_t cap) {
    const ProtobufCEnumValue *e = protobuf_c_enum_descriptor_get_value(d, v);
    size_t n = strlen(prefix);
    const char *name = e == NULL ? "UNSPECIFIED" : strncmp(e->name, prefix, n) == 0 ? e->name + n : e->name;
    snprintf(out, cap, "%s.%s", group, name);
}

static int mail_admins_of(pg_conn *tx, const evt_event *ev, const char *tpl, const uint64_t *hubs, size_t n_hubs,
                          nt_var *vars, size_t n_vars);

/* ---- partners: access requests (NOTE-01, PART-04, PART-05) ------------------------- */

/* AccessRequested / AccessRequestResent: the client's super admins, each with
 * a link carrying their own token (PART-04). Which of them get a link (client
 * admins) and whether the request is still pending is asked of partners by
 * the sender, right before each email goes (nt_issue_token): the answer is
 * then the freshest possible, the token is never stored here, and the event
 * costs one partners call instead of two. A recipient partners gives no link
 * to ends CANCELLED, unsent. */
static int on_access_requested(pg_conn *tx, const evt_event *ev, const PRT(AccessRequest) *ar) {
    if (ar == NULL) return 0;
    ids who = {0};
    int rc = super_admins(ar->client_hub_id, &who);
    if (rc != 0 || who.n == 0) {
        if (rc == 0) log_warn("event %s: client %" PRIu64 " has no super admin to mail", ev->id, ar->client_hub_id);
        free(who.v);
        return rc;
    }
    users u;
    rc = users_get(&who, &u);
    char expire[48];
    fmt_date(ar->expire_time, expire, sizeof expire);
    char *link = NULL;
    if (rc == 0 && asprintf(&link, "%s?request=%s&token=%s", nt_cfg.link_base, ar->access_request_id,
                            NT_TOKEN_MARK) < 0) {
        link = NULL;
        rc = OM_E_NOMEM;
    }
    for (size_t i = 0; rc == 0 && i < who.n; i++) {
        const ACC(User) *x = users_find(&u, who.v[i]);
        if (x == NULL) continue;
        nt_var vars[] = {
            {"recipient_name", NULL},
            {"employee_name", ar->employee_display_name},
            {"employee_email", ar->employee_email},
            {"partner_name", ar->partner_name},
            {"client_name", ar->client_name},
            {"link", link}, /* the token mark survives rendering: values are not re-expanded */
            {"expire_time", expire},
        };
        /* NOTE-03: these count towards the client's hourly cap */
        rc = queue_one(tx, ev, "access_requested", x, vars, sizeof vars / sizeof vars[0], ar->client_hub_id,
                       ar->access_request_id);
    }
    free(link);
    users_free(&u);
    free(who.v);
    return rc;
}

int nt_issue_token(const char *request_id, const char *event_id, uint64_t recipient, char **token) {
    *token = NULL;
    PRT(IssueAccessRequestTokensRequest) req;
    orgmesh__partners__v1__issue_access_request_tokens_request__init(&req);
    req.access_request_id = (char *)request_id;
    req.event_id = (char *)event_id;
    req.recipient_user_ids = &recipient;
    req.n_recipient_user_ids = 1;
    ProtobufCMessage *resp = NULL;
    rpc_status st;
    int rc = peer_call("partners", "orgmesh.partners.v1.PartnersInternalService", "IssueAccessRequestTokens",
                       &req.base, &orgmesh__partners__v1__issue_access_request_tokens_response__descriptor, &resp,
                       &st);
    if (rc == OM_E_REQUEST_NOT_PENDING || rc == OM_E_FAILED_PRECONDITION || rc == OM_E_NOT_FOUND) return 1;
    if (rc != 0) return OM_E_UNAVAILABLE;
    const PRT(IssueAccessRequestTokensResponse) *r = (const void *)resp;
    rc = 1;
    for (size_t i = 0; i < r->n_tokens; i++)
        if (r->tokens[i]->recipient_user_id == recipient && r->tokens[i]->token != NULL) {
            *token = strdup(r->tokens[i]->token);
            rc = *token ? 0 : OM_E_NOMEM;
            break;
        }
    protobuf_c_message_free_unpacked(resp, NULL);
    return rc;
}

int nt_issue_tokens(nt_job **js, size_t n) {
    if (n == 0) return 0;
    PRT(IssueAccessRequestTokensBatchRequest) req;
    orgmesh__partners__v1__issue_access_request_tokens_batch_request__init(&req);
    PRT(IssueAccessRequestTokensRequest) *items = calloc(n, sizeof *items);
    PRT(IssueAccessRequestTokensRequest) **ptrs = calloc(n, sizeof *ptrs);
    if (items == NULL || ptrs == NULL) {
        free(items);
        free(ptrs);
        return OM_E_NOMEM; /* asked one by one */
    }
    for (size_t i = 0; i < n; i++) {
        orgmesh__partners__v1__issue_access_request_tokens_request__init(&items[i]);
        items[i].access_request_id = js[i]->access_request_id;
        items[i].event_id = js[i]->event_id;
        items[i].recipient_user_ids = &js[i]->recipient;
        items[i].n_recipient_user_ids = 1;
        ptrs[i] = &items[i];
    }
    req.items = ptrs;
    req.n_items = n;
    ProtobufCMessage *resp = NULL;
    rpc_status st;
    int rc = peer_call("partners", "orgmesh.partners.v1.PartnersInternalService", "IssueAccessRequestTokensBatch",
                       &req.base, &orgmesh__partners__v1__issue_access_request_tokens_batch_response__descriptor,
                       &resp, &st);
    free(items);
    free(ptrs);
    if (rc == OM_E_UNIMPLEMENTED) return rc; /* an older partners: one by one */
    const PRT(IssueAccessRequestTokensBatchResponse) *r = (const void *)resp;
    if (rc == 0 && r->n_results != n) {
        log_warn("partners IssueAccessRequestTokensBatch: %zu results for %zu items", r->n_results, n);
        rc = OM_E_UNAVAILABLE;
    }
    for (size_t i = 0; i < n; i++) {
        nt_job *j = js[i];
        j->token_known = true;
        j->token = NULL;
        j->token_rc = rc != 0 ? OM_E_UNAVAILABLE : 1; /* 1: no token for this recipient */
        if (rc != 0 || r->results[i]->not_pending) continue;
        for (size_t k = 0; k < r->results[i]->n_tokens; k++) {
            const PRT(RecipientToken) *t = r->results[i]->tokens[k];
            if (t->recipient_user_id != j->recipient || t->token == NULL) continue;
            j->token = strdup(t->token);
            j->token_rc = j->token ? 0 : OM_E_UNAVAILABLE;
            break;
        }
    }
    if (resp) protobuf_c_message_free_unpacked(resp, NULL);
    return rc != 0 ? OM_E_UNAVAILABLE : 0;
}

/* The answers and ends of a request (approved, declined, expired, cancelled)
 * and revocations: the partner manager who asked and the employee. */
static int on_request_outcome(pg_conn *tx, const evt_event *ev, const char *tpl, uint64_t manager,
                              uint64_t employee, const char *employee_name, const char *partner_name,
                              const char *client_name, const char *cause_key, const char *answer) {
    ids who = {0};
    int rc = ids_add(&who, manager);
    if (rc == 0) rc = ids_add(&who, employee);
    /* NOTE-04: `reason` is a phrase key; `answer` is the client admin's own
     * words (PART-05), shown as written */
    nt_var vars[] = {
        {"recipient_name", NULL},     {"employee_name", employee_name}, {"partner_name", partner_name},
        {"client_name", client_name}, {"reason", cause_key, 1},         {"answer", answer},
    };
    if (rc == 0) rc = mail_users(tx, ev, tpl, &who, vars, sizeof vars / sizeof vars[0]);
    free(who.v);
    return rc;
}

/* ISO date (yyyy-mm-dd, UTC): the only form of a date inside a localized
 * email (issue 17: no English text in variables). */
static void iso_date(const Google__Protobuf__Timestamp *t, char *out, size_t cap) {
    out[0] = '\0';
    if (t == NULL) return;
    time_t s = (time_t)t->seconds;
    struct tm tm;
    gmtime_r(&s, &tm);
    strftime(out, cap, "%Y-%m-%d", &tm);
}

/* Partner grants (PART-16, PART-19): the partner's managers and the
 * client's admins (their SUPER_ADMIN members, as for the access_* emails).
 * Variables: names, ISO dates and numbers only. */
static int on_grant(pg_conn *tx, const evt_event *ev, const char *tpl, const PRT(Assignment) *a, int days_left,
                    const Google__Protobuf__Timestamp *revoke_time) {
    char end[16], revoke[16], days[16];
    iso_date(a->grant_end_time ? a->grant_end_time : a->end_time, end, sizeof end);
    iso_date(revoke_time, revoke, sizeof revoke);
    snprintf(days, sizeof days, "%d", days_left);
    nt_var vars[] = {
        {"recipient_name", NULL},         {"employee_name", a->employee_display_name},
        {"partner_name", a->partner_name}, {"client_name", a->client_name},
        {"end_date", end},                {"days_left", days},
        {"revoke_date", revoke},
    };
    uint64_t hubs[2] = {a->partner_hub_id, a->client_hub_id};
    return mail_admins_of(tx, ev, tpl, hubs, 2, vars, sizeof vars / sizeof vars[0]);
}

int nt_on_partners_event(pg_conn *tx, const evt_event *ev, void *arg) {
    (void)arg;
    const char *t = ev->type;
    int rc = 0;
#define UNPACK(T, fn) PRT(T) *m = orgmesh__partners__v1__##fn##__unpack(NULL, ev->payload_len, ev->payload)
    if (strcmp(t, "orgmesh.partners.v1.AccessRequested") == 0) {
        UNPACK(AccessRequested, access_requested);
        if (m == NULL) return 0; /* malformed: nothing to act on */
        rc = on_access_requested(tx, ev, m->access_request);
        protobuf_c_message_free_unpacked(&m->base, NULL);
    } else if (strcmp(t, "orgmesh.partners.v1.AccessRequestResent") == 0) {
        UNPACK(AccessRequestResent, access_request_resent);
        if (m == NULL) return 0;
        rc = on_access_requested(tx, ev, m->access_request);
        protobuf_c_message_free_unpacked(&m->base, NULL);
    } else if (strcmp(t, "orgmesh.partners.v1.AccessApproved") == 0) {
        UNPACK(AccessApproved, access_approved);
        if (m == NULL || m->access_request == NULL) goto malformed;
        const PRT(AccessRequest) *a = m->access_request;
        rc = on_request_outcome(tx, ev, "access_approved", a->requested_by_user_id, a->employee_user_id,
                                a->employee_display_name, a->partner_name, a->client_name, NULL, a->answer_reason);
        protobuf_c_message_free_unpacked(&m->base, NULL);
    } else if (strcmp(t, "orgmesh.partners.v1.AccessDeclined") == 0) {
        UNPACK(AccessDeclined, access_declined);
        if (m == NULL || m->access_request == NULL) goto malformed;
        const PRT(AccessRequest) *a = m->access_request;
        rc = on_request_outcome(tx, ev, "access_declined", a->requested_by_user_id, a->employee_user_id,
                                a->employee_display_name, a->partner_name, a->client_name, NULL, a->answer_reason);
        protobuf_c_message_free_unpacked(&m->base, NULL);
    } else if (strcmp(t, "orgmesh.partners.v1.AccessRequestExpired") == 0) {
        UNPACK(AccessRequestExpired, access_request_expired);
        if (m == NULL || m->access_request == NULL) goto malformed;
        const PRT(AccessRequest) *a = m->access_request;
        rc = on_request_outcome(tx, ev, "access_expired", a->requested_by_user_id, a->employee_user_id,
                                a->employee_display_name, a->partner_name, a->client_name, NULL, NULL);
        protobuf_c_message_free_unpacked(&m->base, NULL);
    } else if (strcmp(t, "orgmesh.partners.v1.AccessRequestCancelled") == 0) {
        UNPACK(AccessRequestCancelled, access_request_cancelled);
        if (m == NULL || m->access_request == NULL) goto malformed;
        const PRT(AccessRequest) *a = m->access_request;
        char why[64];
        phrase_key(&orgmesh__partners__v1__assignment_change_cause__descriptor, (int)m->cause,
                   "ASSIGNMENT_CHANGE_CAUSE_", "cause", why, sizeof why);
        rc = on_request_outcome(tx, ev, "access_cancelled", a->requested_by_user_id, a->employee_user_id,
                                a->employee_display_name, a->partner_name, a->client_name, why, NULL);
        protobuf_c_message_free_unpacked(&m->base, NULL);
    } else if (strcmp(t, "orgmesh.partners.v1.AccessRevoked") == 0) {
        UNPACK(AccessRevoked, access_revoked);
        if (m == NULL || m->assignment == NULL) goto malformed;
        const PRT(Assignment) *a = m->assignment;
        char why[64];
        phrase_key(&orgmesh__partners__v1__assignment_change_cause__descriptor, (int)m->cause,
                   "ASSIGNMENT_CHANGE_CAUSE_", "cause", why, sizeof why);
        rc = on_request_outcome(tx, ev, "access_revoked", a->assigned_by_user_id, a->employee_user_id,
                                a->employee_display_name, a->partner_name, a->client_name, why, NULL);
        protobuf_c_message_free_unpacked(&m->base, NULL);
    } else if (strcmp(t, "orgmesh.partners.v1.GrantEnding") == 0) { /* PART-16 */
        UNPACK(GrantEnding, grant_ending);
        if (m == NULL || m->assignment == NULL) goto malformed;
        rc = on_grant(tx, ev, "grant_ending", m->assignment, m->days_left, NULL);
        protobuf_c_message_free_unpacked(&m->base, NULL);
    } else if (strcmp(t, "orgmesh.partners.v1.GrantExpired") == 0) { /* PART-16 */
        UNPACK(GrantExpired, grant_expired);
        if (m == NULL || m->assignment == NULL) goto malformed;
        rc = on_grant(tx, ev, "grant_expired", m->assignment, 0, NULL);
        protobuf_c_message_free_unpacked(&m->base, NULL);
    } else if (strcmp(t, "orgmesh.partners.v1.GrantDormant") == 0) { /* PART-19 */
        UNPACK(GrantDormant, grant_dormant);
        if (m == NULL || m->assignment == NULL) goto malformed;
        rc = on_grant(tx, ev, "grant_dormant", m->assignment, 0, m->revoke_time);
        protobuf_c_message_free_unpacked(&m->base, NULL);
    }
#undef UNPACK
    return rc;
malformed:
    log_error("event %s (%s): payload cannot be read; not mailed", ev->id, t);
    return 0;
}

/* ---- organizations: ORG-09, ORG-10 (NOTE-01) -------------------------------------- */

static bool automatic(const char *actor) { return actor != NULL && strncmp(actor, "rule:", 5) == 0; }

static int mail_admins_of(pg_conn *tx, const evt_event *ev, const char *tpl, const uint64_t *hubs, size_t n_hubs,
                          nt_var *vars, size_t n_vars) {
    ids who = {0};
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < n_hubs; i++) rc = super_admins(hubs[i], &who);
    if (rc == 0) rc = mail_users(tx, ev, tpl, &who, vars, n_vars);
    free(who.v);
    return rc;
}

int nt_on_organizations_event(pg_conn *tx, const evt_event *ev, void *arg) {
    (void)arg;
    int rc = 0;
    if (strcmp(ev->type, "orgmesh.organizations.v1.OrgMemberRemoved") == 0) {
        Orgmesh__Organizations__V1__OrgMemberRemoved *m =
            orgmesh__organizations__v1__org_member_removed__unpack(NULL, ev->payload_len, ev->payload);
        if (m == NULL || m->member == NULL) return 0;
        /* ORG-09: only the automatic departures are mailed */
        if (automatic(m->actor) || automatic(ev->actor)) {
            char why[64];
            phrase_key(&orgmesh__organizations__v1__departure_reason__descriptor, (int)m->reason,
                       "DEPARTURE_REASON_", "departure", why, sizeof why);
            /* NOTE-04: the event's `detail` is an English note for the audit
             * trail; the email says why in the recipient's words only */
            nt_var vars[] = {
                {"recipient_name", NULL},
                {"account_name", m->member->name},
                {"organization_id", m->organization_id},
                {"reason", why, 1},
            };
            uint64_t hub = m->member->hub_id;
            rc = mail_admins_of(tx, ev, "org_member_removed", &hub, 1, vars, sizeof vars / sizeof vars[0]);
        }
        protobuf_c_message_free_unpacked(&m->base, NULL);
    } else if (strcmp(ev->type, "orgmesh.organizations.v1.OrganizationDeleted") == 0) {
        Orgmesh__Organizations__V1__OrganizationDeleted *m =
            orgmesh__organizations__v1__organization_deleted__unpack(NULL, ev->payload_len, ev->payload);
        if (m == NULL) return 0;
        /* ORG-10: the automatic deletion is mailed to every former member */
        if (automatic(m->actor) || automatic(ev->actor)) {
            char why[64];
            phrase_key(&orgmesh__organizations__v1__deletion_reason__descriptor, (int)m->reason, "DELETION_REASON_",
                       "deletion", why, sizeof why);
            const char *org = m->organization ? m->organization->organization_id : "";
            nt_var vars[] = {
                {"recipient_name", NULL},
                {"organization_id", org},
                {"reason", why, 1},
            };
            rc = mail_admins_of(tx, ev, "org_deleted", m->former_member_hub_ids, m->n_former_member_hub_ids, vars,
                                sizeof vars / sizeof vars[0]);
        }
        protobuf_c_message_free_unpacked(&m->base, NULL);
    }
    return rc;
}

/* ---- connections: CONN-05 (NOTE-01) ------------------------------------------------- */

int nt_on_connections_event(pg_conn *tx, const evt_event *ev, void *arg) {
    (void)arg;
    if (strcmp(ev->type, "orgmesh.connections.v1.ConnectionRestricted") != 0) return 0;
    Orgmesh__Connections__V1__ConnectionRestricted *m =
        orgmesh__connections__v1__connection_restricted__unpack(NULL, ev->payload_len, ev->payload);
    if (m == NULL) return 0;
    const Orgmesh__Connections__V1__Connection *cn = m->after ? m->after : m->before;
    int rc = 0;
    if (cn != NULL) {
        char sens[24], a[24], b[24];
        snprintf(sens, sizeof sens, "%" PRIu64, m->sensitive_hub_id);
        snprintf(a, sizeof a, "%" PRIu64, cn->account_a);
        snprintf(b, sizeof b, "%" PRIu64, cn->account_b);
        nt_var vars[] = {
            {"recipient_name", NULL}, {"organization_id", m->organization_id}, {"sensitive_hub_id", sens},
            {"account_a", a},         {"account_b", b},
        };
        uint64_t hubs[2] = {cn->account_a, cn->account_b};
        rc = mail_admins_of(tx, ev, "connection_restricted", hubs, 2, vars, sizeof vars / sizeof vars[0]);
    }
    protobuf_c_message_free_unpacked(&m->base, NULL);
    return rc;
}
