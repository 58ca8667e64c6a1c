/* partners.h — what the partners service's files share: configuration, the
 * local copies fetched from accounts, protobuf conversions, the events it
 * emits, the PART-09 cascade and the accounts-side link sync. */
#ifndef PARTNERS_H
#define PARTNERS_H

#include <stdbool.h>
#include <stdint.h>

#include "auth.h"
#include "evt.h"
#include "orgmesh/accounts/v1/accounts.pb-c.h"
#include "orgmesh/partners/v1/events.pb-c.h"
#include "orgmesh/partners/v1/partners.pb-c.h"
#include "partners_rules.h"
#include "partners_store.h"
#include "rpc.h"

#define PB(x) Orgmesh__Partners__V1__##x

typedef struct partners_config {
    int64_t request_ttl_s;     /* PART-05 expiry, ORGMESH_PARTNERS_REQUEST_TTL_S */
    int64_t resend_interval_s; /* PART-04, ORGMESH_PARTNERS_RESEND_INTERVAL_S */
    int timer_ms;              /* expiry and sync loop, ORGMESH_PARTNERS_TIMER_MS */
    const char *token_key;     /* PART-04 link tokens, ORGMESH_PARTNERS_TOKEN_KEY */
    /* Abuse limits (issue 13, docs/configuration.md): hits per window per
     * actor and per client account; 0 = no limit. */
    int64_t rate_window_s;                      /* ORGMESH_PARTNERS_RATE_WINDOW_S */
    int64_t requests_per_actor, requests_per_client; /* access requests created */
    int64_t resends_per_actor, resends_per_client;   /* ResendAccessRequest */
    int64_t tokens_per_actor, tokens_per_client;     /* emailed tokens presented */
    /* Partner grants (issue 17, docs/services/partners.md "Partner grants"). */
    int grant_default_days;      /* PART-14, ORGMESH_PARTNERS_GRANT_DEFAULT_DAYS */
    int grant_max_days;          /* PART-14, ORGMESH_PARTNERS_GRANT_MAX_DAYS */
    bool grant_allow_unlimited;  /* PART-14, ORGMESH_PARTNERS_GRANT_ALLOW_UNLIMITED */
    int grant_extend_days;       /* PART-15, ORGMESH_PARTNERS_GRANT_EXTEND_DAYS */
    int notice_days[PART_MAX_NOTICES]; /* PART-16, ORGMESH_PARTNERS_GRANT_NOTICE_DAYS */
    int n_notice_days;
    bool partner_extends;        /* PART-17, ORGMESH_PARTNERS_GRANT_PARTNER_EXTENDS */
    int dormant_days;            /* PART-19, ORGMESH_PARTNERS_DORMANT_DAYS; 0 = off */
    int dormant_grace_days;      /* PART-19, ORGMESH_PARTNERS_DORMANT_GRACE_DAYS */
} partners_config;
extern partners_config partners_cfg; /* partners_config.c */

extern const rpc_service partners_service;
extern const rpc_service partners_internal_service;
int partners_init(void);
void partners_fini(void);


/* Who acted: a user or service (actor) or an automatic rule. */
typedef struct pa_who {
    const om_actor *actor;
    const char *rule;       /* e.g. "PART-09" */
    const char *trace_id;   /* may be NULL */
    const char *request_id; /* may be NULL */
} pa_who;
/* "user:<id>", "service:<name>" or "rule:<ID>". */
const char *pa_who_string(const pa_who *w, ps_mem *m);
/* The reverse, for stored actor strings; buf holds a parsed actor. */
void pa_who_parse(const char *s, om_actor *buf, pa_who *out);

/* ---- local copies (partners_events.c) ------------------------------------- */

/* The local copy, fetched from accounts when missing. NOT_FOUND when accounts
 * does not know it either (memberships: a tombstone is returned instead, with
 * present = false). OM_E_UNAVAILABLE when accounts cannot be reached. */
int pa_ensure_account(rpc_ctx *ctx, pg_conn *c, uint64_t hub_id, ps_mem *m, ps_account *out);
int pa_ensure_user(rpc_ctx *ctx, pg_conn *c, uint64_t user_id, ps_mem *m, ps_user *out);
int pa_ensure_membership(rpc_ctx *ctx, pg_conn *c, uint64_t hub_id, uint64_t user_id, ps_mem *m, ps_membership *out);
/* Re-reads one membership from accounts (fresh, for decisions that create
 * access: PART-04 "already a member"). */
int pa_refresh_membership(rpc_ctx *ctx, pg_conn *c, uint64_t hub_id, uint64_t user_id, ps_mem *m, ps_membership *out);

/* The accounts side of an assignment (see the migration): if link_sync is
 * set, makes the accounts call with the row locked and clears it. 0 when done
 * (or nothing to do), else the accounts error (left for the sync loop). */
int pa_link_sync(pg_conn *c, const char *assignment_id);
/* One round of the background work (main.c's timer): due link syncs and
 * PART-05 expiries. Returns how many rows were handled. */
int pa_sync_round(pg_conn *c, int limit);
int pa_expire_round(pg_conn *c, int limit);

/* A call to AccountsInternalService with this service's own identity
 * (SPEC 8). `method` is the RPC name, e.g. "SetPartnerEmployee". */
int pa_accounts_call(rpc_ctx *ctx, const char *method, const ProtobufCMessage *req,
                     const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp, rpc_status *st);
void pa_membership_from_pb(const Orgmesh__Accounts__V1__Membership *p, ps_membership *out);

/* The notifier event consumer (partners_grants.c): PART-22, an
 * access-request email given up (EmailDeadLettered) allows a resend at once. */
int pa_on_notifier_event(pg_conn *tx, const evt_event *ev, void *arg);

/* The accounts event consumer (PART-05 direct add, PART-08, PART-09). */
int pa_on_accounts_event(pg_conn *tx, const evt_event *ev, void *arg);

/* ---- conversions and events (partners_assign.c) ------------------------------ */

/* A copy of s ("" for NULL) in m. */
char *pa_strdup(ps_mem *m, const char *s);
/* Microseconds since the epoch as a Timestamp in m (NULL for 0), and back. */
Google__Protobuf__Timestamp *pa_ts(ps_mem *m, int64_t us);
int64_t pa_ts_us(const Google__Protobuf__Timestamp *t);
PB(PartnerEmployee) *pa_employee_pb(ps_mem *m, uint64_t partner, const ps_employee *e);
PB(PartnerClient) *pa_client_pb(ps_mem *m, uint64_t partner, const ps_client *c);
/* ClientAdded and its audit entry, in tx. */
int pa_emit_client_added(pg_conn *tx, ps_mem *m, const pa_who *w, uint64_t partner, uint64_t client);
/* EmployeeTagged (tagged) or EmployeeUntagged with the PART-09 counts, and
 * the audit entry, in tx. */
int pa_emit_employee(pg_conn *tx, ps_mem *m, const pa_who *w, uint64_t partner, uint64_t user, int64_t version,
                     bool tagged, part_cause cause, int cancelled, int revoked);

PB(Assignment) *pa_assignment_pb(ps_mem *m, const ps_assignment *a);
PB(AccessRequest) *pa_request_pb(ps_mem *m, const ps_assignment *a);

typedef enum {
    PA_EV_REQUESTED,
    PA_EV_RESENT,
    PA_EV_APPROVED,
    PA_EV_DECLINED,
    PA_EV_EXPIRED,
    PA_EV_CANCELLED,
    PA_EV_REVOKED,
    PA_EV_ACTIVATED,
    PA_EV_GRANT_ENDING,   /* PART-16 */
    PA_EV_GRANT_EXPIRED,  /* PART-16 */
    PA_EV_GRANT_EXTENDED, /* PART-15, PART-17 */
    PA_EV_GRANT_DORMANT,  /* PART-19 */
} pa_event_kind;
/* Emits the event about assignment `a` (after the change) in tx, plus the
 * audit entry of the change. */
int pa_emit(pg_conn *tx, ps_mem *m, const pa_who *w, pa_event_kind kind, const ps_assignment *a,
            bool membership_removed);

/* pa_emit with GrantEnding's days_left and GrantDormant's revoke_time. */
int pa_emit_grant(pg_conn *tx, ps_mem *m, const pa_who *w, pa_event_kind kind, const ps_assignment *a,
                  bool membership_removed, int days_left, int64_t revoke_us);
/* PART-20: PartnerAccessRevoked, audited in the history of each partner cut off. */
int pa_emit_kill_switch(pg_conn *tx, ps_mem *m, const pa_who *w, uint64_t client, uint64_t partner,
                        const uint64_t *partners, int n_partners, int cancelled, int revoked, const char *reason);
/* PART-20: the audit entry of RestorePartnerAccess. */
int pa_audit_restore(pg_conn *tx, ps_mem *m, const pa_who *w, uint64_t client, uint64_t partner);
/* Role bits -> accounts.v1.Role values in m. */
Orgmesh__Accounts__V1__Role *pa_roles_pb(ps_mem *m, unsigned bits, size_t *n);

/* ---- partner grants (partners_grants.c) ---- */
/* One round of PART-15/PART-16 (notices, expiry or auto-extension) and
 * PART-19 (dormant notices and revocations). Returns how many rows changed. */
int pa_grant_round(pg_conn *c, int limit);

/* PART-09: ends every open assignment of an employee of a partner inside tx:
 * PENDING -> CANCELLED, ACTIVE -> REVOKED (the partner-linked membership is
 * removed by the link sync, after commit). Emits EmployeeUntagged. */
int pa_cascade(pg_conn *tx, ps_mem *m, const pa_who *w, uint64_t partner, uint64_t user, part_cause cause,
               int *cancelled, int *revoked);

/* Ends one open assignment (PENDING -> CANCELLED, ACTIVE -> REVOKED with
 * the link sync to follow). *revoked tells which. */
int pa_end_assignment(pg_conn *tx, ps_mem *m, const pa_who *w, ps_assignment *a, part_cause cause,
                      const char *reason, bool *revoked);

/* PART-05: the client added the employee itself while the request was
 * pending: ACTIVE, CLIENT_ADDED_MEMBER; the membership is adopted by the
 * link sync. */
int pa_activate_by_client(pg_conn *tx, ps_mem *m, const pa_who *w, ps_assignment *a);

#endif
