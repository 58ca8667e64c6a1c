/* notifier.h — what the notifier's files share: configuration, the SMTP
 * adapter, the delivery queue (store and sender), the event consumers and
 * the RPC service (SPEC 7; docs/services/notifier.md). */
#ifndef NOTIFIER_H
#define NOTIFIER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "evt.h"
#include "om_sql.h"
#include "notifier_render.h"
#include "pg.h"
#include "rpc.h"

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

typedef struct nt_smtp_config {
    const char *url;      /* ORGMESH_SMTP_URL: smtp://host:port or smtps://... */
    bool starttls;        /* ORGMESH_SMTP_STARTTLS: require STARTTLS */
    const char *user;     /* ORGMESH_SMTP_USER, NULL: no AUTH */
    const char *password; /* ORGMESH_SMTP_PASSWORD */
    const char *from;     /* ORGMESH_SMTP_FROM */
    int timeout_ms;       /* ORGMESH_SMTP_TIMEOUT_MS */
    const char *ca_file;  /* ORGMESH_SMTP_CA_FILE: CA bundle for a private CA; NULL = system */
} nt_smtp_config;

typedef struct nt_config {
    nt_smtp_config smtp;
    const char *templates_dir; /* ORGMESH_NOTIFIER_TEMPLATES */
    const char *link_base;     /* ORGMESH_NOTIFIER_LINK_BASE */
    int max_attempts;          /* ORGMESH_NOTIFIER_MAX_ATTEMPTS */
    int64_t retry_base_ms;     /* ORGMESH_NOTIFIER_RETRY_BASE_MS */
    int64_t retry_max_ms;      /* ORGMESH_NOTIFIER_RETRY_MAX_MS */
    int client_hourly_cap;     /* ORGMESH_NOTIFIER_CLIENT_HOURLY_CAP, 0 = none */
    int64_t cap_window_s;      /* ORGMESH_NOTIFIER_CAP_WINDOW_S (3600) */
    int poll_ms;               /* ORGMESH_NOTIFIER_POLL_MS: sender wake-up */
    int senders;               /* ORGMESH_NOTIFIER_SENDERS: sender threads */
} nt_config;

extern nt_config nt_cfg;
extern nt_templates *nt_tpls;

/* Reads the configuration and the templates (non-zero: do not start). */
int nt_config_load(void);

/* ---- SMTP (notifier_smtp.c) ----------------------------------------------- */

int nt_smtp_global_init(void);
void nt_smtp_global_cleanup(void);
/* Stops every transfer under way (shutdown). */
void nt_smtp_abort_all(void);
/* Closes this thread's SMTP connection (kept between sends; sender threads
 * call it when they end). */
void nt_smtp_thread_done(void);
/* Sends `msg` to `rcpt`, over this thread's connection when it has one. 0;
 * OM_E_UNAVAILABLE for a failure worth retrying; OM_E_FAILED_PRECONDITION
 * for a permanent one (5xx). err holds the reason. */
int nt_smtp_send(const nt_smtp_config *cfg, const char *rcpt, const char *msg, size_t len, char *err,
                 size_t errcap);

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

/* Takes one due email (FOR UPDATE SKIP LOCKED), applies the per-client cap,
 * sends it and records the outcome, in one transaction. Returns 1 when a row
 * was handled, 0 when none was due, or a negative code. */
int nt_send_one(pg_conn *c);

/* Sender threads (main.c starts and stops them). */
int nt_senders_start(void);
void nt_senders_stop(void);

/* ---- events (notifier_events.c) --------------------------------------------- */

/* The link token of `recipient` for access request `request_id`, mailed
 * for `event_id` (PartnersInternalService.IssueAccessRequestTokens: same
 * event, same token). 0 and a malloc'd *token; 1 when no token is due any
 * more (the request is not pending, or the recipient no longer a client
 * admin); OM_E_UNAVAILABLE when partners cannot answer now. */
int nt_issue_token(const char *request_id, const char *event_id, uint64_t recipient, char **token);

int nt_on_partners_event(pg_conn *tx, const evt_event *ev, void *arg);
int nt_on_organizations_event(pg_conn *tx, const evt_event *ev, void *arg);
int nt_on_connections_event(pg_conn *tx, const evt_event *ev, void *arg);

/* ---- RPC (notifier_rpc.c) ----------------------------------------------------- */

extern const rpc_service notifier_service;

#endif
