/* notifier.h — what the notifier's files share: configuration, the SMTP
 * adapter, the delivery queue (store and sender), the event consumers and
 * the RPC service (SPEC 7; docs/services/notifier.md). */
#ifndef NOTIFIER_H
#define NOTIFIER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "evt.h"
#include "om_sql.h"
#include "notifier_render.h"
#include "pg.h"
#include "rpc.h"
#include "smtp.h"

/* Delivery states, as DeliveryState in notifier.proto. */
enum {
    NT_ST_PENDING = 1,
    NT_ST_SENT = 2,
    NT_ST_RETRYING = 3,
    NT_ST_DEFERRED = 4,
    NT_ST_DEAD = 5,
    NT_ST_CANCELLED = 6,
};

/* The same states in SQL text: "state = " OM_SQL(NT_SQL_SENT) (om_sql.h). */
#define NT_SQL_PENDING 1
#define NT_SQL_SENT 2
#define NT_SQL_RETRYING 3
#define NT_SQL_DEFERRED 4
#define NT_SQL_DEAD 5
#define NT_SQL_CANCELLED 6
_Static_assert(NT_SQL_PENDING == NT_ST_PENDING && NT_SQL_SENT == NT_ST_SENT && NT_SQL_RETRYING == NT_ST_RETRYING &&
                   NT_SQL_DEFERRED == NT_ST_DEFERRED && NT_SQL_DEAD == NT_ST_DEAD &&
                   NT_SQL_CANCELLED == NT_ST_CANCELLED,
               "NT_SQL_* and NT_ST_* agree");
/* Due for a send: what the partial index delivery_due covers. */
#define NT_SQL_DUE OM_SQL(NT_SQL_PENDING) ", " OM_SQL(NT_SQL_RETRYING) ", " OM_SQL(NT_SQL_DEFERRED)

/* Where an access-request email's token goes; filled in when sending. */
#define NT_TOKEN_MARK "{{token}}"

typedef struct nt_config {
    smtp_config smtp;          /* ORGMESH_SMTP_* (common/smtp.h) */
    const char *from;          /* ORGMESH_SMTP_FROM: the From header */
    char mail_from[320];       /* its address: the envelope sender */
    const char *templates_dir; /* ORGMESH_NOTIFIER_TEMPLATES */
    const char *link_base;     /* ORGMESH_NOTIFIER_LINK_BASE */
    int max_attempts;          /* ORGMESH_NOTIFIER_MAX_ATTEMPTS */
    int64_t retry_base_ms;     /* ORGMESH_NOTIFIER_RETRY_BASE_MS */
    int64_t retry_max_ms;      /* ORGMESH_NOTIFIER_RETRY_MAX_MS */
    int client_hourly_cap;     /* ORGMESH_NOTIFIER_CLIENT_HOURLY_CAP, 0 = none */
    int64_t cap_window_s;      /* ORGMESH_NOTIFIER_CAP_WINDOW_S (3600) */
    int poll_ms;               /* ORGMESH_NOTIFIER_POLL_MS: sender wake-up */
    int in_flight;             /* ORGMESH_NOTIFIER_IN_FLIGHT: emails claimed at once per replica */
    int64_t lease_ms;          /* how long a claimed row stays ours (from the SMTP timeout) */
} nt_config;

extern nt_config nt_cfg;
extern nt_templates *nt_tpls;

/* Reads the configuration and the templates (non-zero: do not start). */
int nt_config_load(void);

/* ---- the queue (notifier_store.c) ----------------------------------------- */

typedef struct nt_outbound {
    const char *event_id;
    const char *event_type;
    uint64_t recipient_user_id;
    const char *recipient_email;
    const char *locale;
    const char *template_name;
    const char *subject;
    const char *body;
    const char *body_html;  /* NOTE-04: the kind's own HTML part, or NULL (the layout, at send time) */
    uint64_t client_hub_id; /* access-request emails: the client (NOTE-03 cap) */
    const char *access_request_id; /* access-request emails; NULL otherwise */
} nt_outbound;

/* Queues one email inside the event's transaction and wakes the senders at
 * commit; a second row for the same (event, recipient) is ignored (NOTE-03:
 * once per recipient). */
int nt_queue_insert(pg_conn *tx, const nt_outbound *o);
/* Wakes the senders at commit (rows made due otherwise, e.g. a replay). */
int nt_queue_notify(pg_conn *tx);
#define NT_QUEUE_CHANNEL "orgmesh_notifier_queue"

/* One claimed email, from the claim to its recorded outcome. */
typedef struct nt_job {
    struct nt_job *next;
    int64_t id;
    int64_t lease; /* the claim's token: the outcome is recorded only while it holds */
    int attempts;
    uint64_t recipient, client;
    char *event_id, *event_type, *email, *locale, *message_id, *subject, *body, *access_request_id;
    char *body_html; /* NOTE-04: "" = the text in the layout */
    char *msg; /* the formatted message, until handed to SMTP */
    size_t len;
    bool done; /* nothing left to record (e.g. CANCELLED while preparing) */
    /* the link token fetched for a batch (nt_prepare_batch): token_known
     * with token_rc as nt_issue_token's result and a malloc'd token */
    bool token_known;
    int token_rc;
    char *token;
    int rc;    /* the attempt's outcome (0 sent, OM_E_*; OM_E_CANCELLED: never sent, no attempt) */
    char err[512];
    char *traceparent;        /* issue 19: the queuing event's trace context, "" if none */
    struct trace_span *span;  /* the SMTP exchange's CLIENT span, or NULL (common/trace.h) */
} nt_job;

/* Claims up to `want` due emails (FOR UPDATE SKIP LOCKED, then a lease of
 * nt_cfg.lease_ms on each: next_attempt_at moves past it and lease_token is
 * set), applying the per-client cap (NOTE-03), in one transaction. Returns
 * how many were claimed (a list in *out, each freed with nt_job_free) or a
 * negative code. */
int nt_claim(pg_conn *c, int want, nt_job **out);
/* Before sending: the link token (PART-04) and the formatted message. A
 * request that is no longer pending makes the row CANCELLED (j->done). A
 * failure sets j->rc / j->err for nt_record. Returns 0 or a negative code
 * (database). */
int nt_prepare(pg_conn *c, nt_job *j);
/* nt_prepare of every job of the list `jobs` (linked by next), the link
 * tokens of all of them fetched from partners in one call
 * (IssueAccessRequestTokensBatch, issue 15). Each job's outcome is in the
 * job, as nt_prepare's (a database failure: j->rc OM_E_UNAVAILABLE);
 * returns 0. */
/* The calling thread continues the trace of the event that queued `j`
 * (NULL: none). */
void nt_job_trace(const nt_job *j);
int nt_prepare_batch(pg_conn *c, nt_job *jobs);
/* Records the outcomes of `jobs` (SENT / RETRYING / DEAD_LETTERED, with
 * their events) in one transaction; a row whose lease was lost meanwhile
 * is left alone. */
int nt_record(pg_conn *c, nt_job *jobs);
void nt_job_free(nt_job *j);

/* The sender on the loop (main.c's init and the loop's stop hook). */
int nt_senders_start(void);

/* ---- events (notifier_events.c) --------------------------------------------- */

/* The link token of `recipient` for access request `request_id`, mailed
 * for `event_id` (PartnersInternalService.IssueAccessRequestTokens: same
 * event, same token). 0 and a malloc'd *token; 1 when no token is due any
 * more (the request is not pending, or the recipient no longer a client
 * admin); OM_E_UNAVAILABLE when partners cannot answer now. */
int nt_issue_token(const char *request_id, const char *event_id, uint64_t recipient, char **token);
/* nt_issue_token for the `n` jobs `js` in one call
 * (PartnersInternalService.IssueAccessRequestTokensBatch, at most 100):
 * sets each job's token_known, token_rc and token. Returns 0, or
 * OM_E_UNIMPLEMENTED from a partners without the batch (nothing set: ask
 * one by one), or OM_E_UNAVAILABLE (every job's token_rc then too). */
int nt_issue_tokens(nt_job **js, size_t n);

int nt_on_partners_event(pg_conn *tx, const evt_event *ev, void *arg);
int nt_on_organizations_event(pg_conn *tx, const evt_event *ev, void *arg);
int nt_on_connections_event(pg_conn *tx, const evt_event *ev, void *arg);

/* ---- RPC (notifier_rpc.c) ----------------------------------------------------- */

extern const rpc_service notifier_service;

#endif
