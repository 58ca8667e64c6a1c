/* notifier_store.c — the delivery log and outbound queue (NOTE-03): rows are
 * queued by the event handlers inside the event's transaction, then claimed
 * in batches by the sender of any replica (FOR UPDATE SKIP LOCKED, then a
 * lease: lease_token set and next_attempt_at moved past the longest SMTP
 * exchange, committed at once), sent on the loop (notifier_sender.c), and
 * the outcome recorded while the lease holds. Only a crash between the SMTP
 * server's acceptance and that record, or a lease that ran out, can send
 * again, with the same Message-ID. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "notifier.h"
#include "om_err.h"
#include "trace.h"
#include "orgmesh/notifier/v1/events.pb-c.h"

int nt_queue_insert(pg_conn *tx, const nt_outbound *o) {
    char mid[64];
    nt_message_id(o->event_id, o->recipient_user_id, mid, sizeof mid);
    pg_params p = {0};
    pg_args(&p, o->event_id, o->event_type, o->recipient_user_id, o->recipient_email, o->locale, o->template_name, mid,
            o->subject, o->body, (int64_t)o->client_hub_id, o->access_request_id ? o->access_request_id : "",
            o->body_html ? o->body_html : "");
    /* NOTE-03: once per (event, recipient), whatever the redeliveries. A new
     * row wakes the senders at commit (PostgreSQL folds the transaction's
     * identical notifications into one), in the same round trip. */

    /* issue 19: the consumer's trace context travels with the row ($13) */
    char traceparent[TRACE_PARENT_LEN] = "";
    if (trace_current() != NULL) trace_format(trace_current(), traceparent);
    pg_p_str(&p, traceparent);
    return pg_exec(tx,
                   "WITH ins AS (INSERT INTO delivery (event_id, event_type, recipient_user_id, recipient_email,"
                   " locale, template, message_id, subject, body, client_hub_id, access_request_id, body_html,"
                   " traceparent)"
                   " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
                   " ON CONFLICT ON CONSTRAINT delivery_once DO NOTHING RETURNING 1)"
                   " SELECT pg_notify('" NT_QUEUE_CHANNEL "', '') FROM ins",
                   &p, NULL);
}

int nt_queue_notify(pg_conn *tx) { return pg_exec(tx, "SELECT pg_notify('" NT_QUEUE_CHANNEL "', '')", NULL, NULL); }

/* Exponential backoff with +-20 % jitter, capped (NOTE-03). */
static int64_t backoff_ms(int attempts) {
    int64_t d = nt_cfg.retry_base_ms;
    for (int i = 1; i < attempts && d < nt_cfg.retry_max_ms; i++) d *= 2;
    if (d > nt_cfg.retry_max_ms) d = nt_cfg.retry_max_ms;
    int64_t j = d / 5;
    if (j > 0) d += (int64_t)(random() % (2 * j + 1)) - j;
    return d < 1 ? 1 : d;
}

typedef nt_job due_row;

/* `text` with every NT_TOKEN_MARK replaced by `token` (malloc'd; NULL on
 * exhaustion). */
static char *fill_token(const char *text, const char *token) {
    size_t ml = strlen(NT_TOKEN_MARK), tl = strlen(token), n = 0;
    for (const char *p = strstr(text, NT_TOKEN_MARK); p; p = strstr(p + ml, NT_TOKEN_MARK)) n++;
    char *out = malloc(strlen(text) + n * tl + 1);
    if (out == NULL) return NULL;
    char *o = out;
    for (const char *p = text;;) {
        const char *m = strstr(p, NT_TOKEN_MARK);
        size_t k = m ? (size_t)(m - p) : strlen(p);
        memcpy(o, p, k);
        o += k;
        if (m == NULL) break;
        memcpy(o, token, tl);
        o += tl;
        p = m + ml;
    }
    *o = '\0';
    return out;
}

/* PART-04: the link token is fetched from partners now, never stored. 0 with
 * the filled body in *body; 1 when the request is no longer pending (the row
 * is then CANCELLED); OM_E_UNAVAILABLE to retry later. */
static int prepare_body(pg_conn *c, const due_row *d, char **body, char **html) {
    *body = *html = NULL;
    if (d->access_request_id[0] == '\0' || strstr(d->body, NT_TOKEN_MARK) == NULL) {
        *body = strdup(d->body);
        if (*body != NULL && d->body_html[0] != '\0' && (*html = strdup(d->body_html)) == NULL) {
            free(*body);
            *body = NULL;
        }
        return *body ? 0 : OM_E_NOMEM;
    }
    char *token = NULL;
    int rc;
    if (d->token_known) { /* fetched with its batch (nt_prepare_batch) */
        rc = d->token_rc;
        token = d->token;
        ((due_row *)d)->token = NULL;
        ((due_row *)d)->token_known = false;
    } else {
        rc = nt_issue_token(d->access_request_id, d->event_id, d->recipient, &token);
    }
    if (rc == 1) {
        pg_params p = {0};
        pg_args(&p, d->id, d->lease);
        rc = pg_exec(c,
                     "UPDATE delivery SET state = " OM_SQL(NT_SQL_CANCELLED) ", lease_token = 0,"
                     " last_error = 'no link for this recipient:"
                     " the access request is no longer pending, or the recipient is not a client admin'"
                     " WHERE id = $1 AND lease_token = $2",
                     &p, NULL);
        log_info("delivery %" PRId64 " cancelled: access request %s is no longer pending, or user %" PRIu64
                 " is not a client admin",
                 d->id, d->access_request_id, d->recipient);
        return rc != 0 ? rc : 1;
    }
    if (rc != 0) return rc;
    *body = fill_token(d->body, token);
    /* NOTE-04: a kind's own HTML part carries the same link */
    if (*body != NULL && d->body_html[0] != '\0' && (*html = fill_token(d->body_html, token)) == NULL) {
        free(*body);
        *body = NULL;
    }
    free(token);
    return *body ? 0 : OM_E_NOMEM;
}

/* NOTE-03: no client gets more than `cap` access-request emails per window,
 * counting those SENT in the window and those claimed and in flight (any
 * replica's unexpired lease). Returns 1 when this row must wait (it is then
 * DEFERRED until the oldest email of the window leaves it), 0 when it may
 * go. The advisory lock serialises the claims of one client across
 * replicas until COMMIT. */
static int cap_check(pg_conn *c, const due_row *d) {
    if (d->client == 0 || nt_cfg.client_hourly_cap <= 0) return 0;
    pg_params p = {0};
    pg_p_u64(&p, d->client);
    int rc = pg_exec(c, "SELECT pg_advisory_xact_lock(1853, ($1::bigint % 2147483647)::int)", &p, NULL);
    if (rc != 0) return rc;
    pg_params q = {0};
    pg_args(&q, d->client, nt_cfg.cap_window_s);
    pg_res *r = NULL;
    rc = pg_exec(c,
                 "SELECT (SELECT count(*) FROM delivery WHERE client_hub_id = $1 AND state = " OM_SQL(NT_SQL_SENT)
                 "   AND send_time > now() - make_interval(secs => $2::bigint))"
                 " + (SELECT count(*) FROM delivery WHERE client_hub_id = $1 AND lease_token <> 0"
                 "   AND state IN (" NT_SQL_DUE ") AND next_attempt_at > now())",
                 &q, &r);
    if (rc != 0) return rc;
    int64_t sent = pg_i64(r, 0, 0);
    pg_free(r);
    if (sent < nt_cfg.client_hourly_cap) return 0; /* sent or in flight */
    pg_params u = {0};
    pg_args(&u, d->id, d->client, nt_cfg.cap_window_s);
    rc = pg_exec(c,
                 "UPDATE delivery SET state = " OM_SQL(NT_SQL_DEFERRED) ", lease_token = 0,"
                 " last_error = 'client hourly cap reached',"
                 " next_attempt_at = GREATEST(now() + interval '1 second',"
                 "   (SELECT min(send_time) FROM delivery WHERE client_hub_id = $2 AND state = " OM_SQL(NT_SQL_SENT)
                 "     AND send_time > now() - make_interval(secs => $3::bigint))"
                 "   + make_interval(secs => $3::bigint))"
                 " WHERE id = $1",
                 &u, NULL);
    if (rc != 0) return rc;
    log_info("delivery %" PRId64 " deferred: client %" PRIu64 " had %" PRId64 " access-request emails in the last %" PRId64
             " s (NOTE-03 cap %d)",
             d->id, d->client, sent, nt_cfg.cap_window_s, nt_cfg.client_hourly_cap);
    return 1;
}

/* The claim ran out before the outcome (a stall longer than the lease): the
 * row is someone else's now, or will be claimed again; nothing is recorded. */
static int lease_lost(const due_row *d) {
    log_warn("delivery %" PRId64 ": the claim's lease ran out before its outcome was recorded; the row is due"
             " again (same Message-ID %s)",
             d->id, d->message_id);
    return 0;
}

static int dead_letter(pg_conn *c, const due_row *d, const char *reason) {
    pg_params p = {0};
    pg_args(&p, d->id, reason);
    pg_res *r = NULL;
    int rc = pg_exec(c,
                     "INSERT INTO dead_letter (delivery_id, event_id, event_type, recipient_user_id,"
                     " recipient_email, reason, attempts)"
                     " SELECT id, event_id, event_type, recipient_user_id, recipient_email, $2, attempts"
                     " FROM delivery WHERE id = $1 RETURNING id, attempts",
                     &p, &r);
    if (rc != 0) return rc;
    char dl_id[24], subject[64];
    snprintf(dl_id, sizeof dl_id, "%" PRId64, pg_i64(r, 0, 0));
    int attempts = (int)pg_i64(r, 0, 1);
    pg_free(r);
    /* The dead-letter stream (NOTE-03): the event goes through the outbox,
     * so it is not lost while Redis is down. */
    Orgmesh__Notifier__V1__DeadLetter dl;
    orgmesh__notifier__v1__dead_letter__init(&dl);
    dl.dead_letter_id = dl_id;
    dl.event_id = (char *)d->event_id;
    dl.event_type = (char *)d->event_type;
    dl.recipient_user_id = d->recipient;
    dl.recipient_email = (char *)d->email;
    dl.reason = (char *)reason;
    dl.attempts = attempts;
    Orgmesh__Notifier__V1__EmailDeadLettered ev;
    orgmesh__notifier__v1__email_dead_lettered__init(&ev);
    ev.dead_letter = &dl;
    snprintf(subject, sizeof subject, "notifier/deliveries/%" PRId64, d->id);
    evt_meta m = {.subject = subject, .version = attempts, .rule = "NOTE-03"};
    rc = evt_emit(c, &m, &ev.base, NULL);
    log_warn("delivery %" PRId64 " (event %s to user %" PRIu64 ") dead-lettered as %s: %s", d->id, d->event_id,
             d->recipient, dl_id, reason);
    return rc;
}

/* The delivery record (NOTE-03) and its EmailDelivered event, in the
 * sender's transaction. */
static int delivered(pg_conn *c, const due_row *d) {
    pg_params p = {0};
    pg_args(&p, d->id, d->lease);
    pg_res *r = NULL;
    int rc = pg_exec(c,
                     "UPDATE delivery SET state = " OM_SQL(NT_SQL_SENT) ", attempts = attempts + 1, send_time = now(),"
                     " last_error = '', lease_token = 0 WHERE id = $1 AND lease_token = $2 RETURNING 1",
                     &p, &r);
    if (rc != 0) return rc;
    int n = pg_nrows(r);
    pg_free(r);
    if (n == 0) return lease_lost(d);
    char id[24], subject[64];
    snprintf(id, sizeof id, "%" PRId64, d->id);
    Orgmesh__Notifier__V1__Delivery dv;
    orgmesh__notifier__v1__delivery__init(&dv);
    dv.delivery_id = id;
    dv.event_id = (char *)d->event_id;
    dv.event_type = (char *)d->event_type;
    dv.recipient_user_id = d->recipient;
    dv.recipient_email = (char *)d->email;
    dv.locale = (char *)d->locale;
    dv.message_id = (char *)d->message_id;
    dv.state = ORGMESH__NOTIFIER__V1__DELIVERY_STATE__DELIVERY_STATE_SENT;
    dv.attempts = d->attempts + 1;
    dv.client_hub_id = d->client;
    Orgmesh__Notifier__V1__EmailDelivered ev;
    orgmesh__notifier__v1__email_delivered__init(&ev);
    ev.delivery = &dv;
    snprintf(subject, sizeof subject, "notifier/deliveries/%" PRId64, d->id);
    evt_meta m = {.subject = subject, .version = d->attempts + 1, .rule = "NOTE-03"};
    return evt_emit(c, &m, &ev.base, NULL);
}

static int record(pg_conn *c, const due_row *d, int send_rc, const char *err) {
    if (send_rc == 0) return delivered(c, d);
    if (send_rc == OM_E_CANCELLED) { /* never handed to SMTP (stopping): due again now, no attempt spent */
        pg_params r = {0};
        pg_args(&r, d->id, d->lease);
        return pg_exec(c, "UPDATE delivery SET lease_token = 0, next_attempt_at = now() WHERE id = $1 AND lease_token = $2",
                       &r, NULL);
    }
    pg_params p = {0};
    pg_args(&p, d->id, err, d->lease);
    bool last = send_rc == OM_E_FAILED_PRECONDITION || d->attempts + 1 >= nt_cfg.max_attempts;
    pg_res *r = NULL;
    int rc;
    if (!last) {
        pg_p_i64(&p, backoff_ms(d->attempts + 1));
        rc = pg_exec(c,
                     "UPDATE delivery SET state = " OM_SQL(NT_SQL_RETRYING) ","
                     " attempts = attempts + 1, last_error = $2, lease_token = 0,"
                     " next_attempt_at = now() + make_interval(secs => $4::bigint / 1000.0)"
                     " WHERE id = $1 AND lease_token = $3 RETURNING 1",
                     &p, &r);
    } else {
        rc = pg_exec(c,
                     "UPDATE delivery SET state = " OM_SQL(NT_SQL_DEAD) ","
                     " attempts = attempts + 1, last_error = $2, lease_token = 0"
                     " WHERE id = $1 AND lease_token = $3 RETURNING 1",
                     &p, &r);
    }
    if (rc != 0) return rc;
    int n = pg_nrows(r);
    pg_free(r);
    if (n == 0) return lease_lost(d);
    return last ? dead_letter(c, d, err) : 0;
}

void nt_job_free(nt_job *j) {
    if (j == NULL) return;
    trace_discard(j->span);
    free(j->msg);
    free(j->token);
    free(j);
}

/* One allocation: the job and its strings. */
static nt_job *job_from_row(const pg_res *r, int i, int64_t lease) {
    static const int cols[] = {1, 2, 4, 5, 6, 7, 8, 11, 12, 13};
    size_t n = sizeof(nt_job);
    for (size_t k = 0; k < sizeof cols / sizeof cols[0]; k++) n += strlen(pg_str(r, i, cols[k])) + 1;
    nt_job *j = calloc(1, n);
    if (j == NULL) return NULL;
    char *o = (char *)(j + 1);
    char **dst[] = {&j->event_id, &j->event_type, &j->email,   &j->locale,           &j->message_id,
                    &j->subject,  &j->body,       &j->access_request_id, &j->body_html, &j->traceparent};
    for (size_t k = 0; k < sizeof cols / sizeof cols[0]; k++) {
        const char *v = pg_str(r, i, cols[k]);
        size_t l = strlen(v) + 1;
        memcpy(o, v, l);
        *dst[k] = o;
        o += l;
    }
    j->id = pg_i64(r, i, 0);
    j->recipient = pg_u64(r, i, 3);
    j->client = pg_u64(r, i, 9);
    j->attempts = (int)pg_i64(r, i, 10);
    j->lease = lease;
    return j;
}

int nt_claim(pg_conn *c, int want, nt_job **out) {
    *out = NULL;
    int64_t lease = (((int64_t)random() << 31) ^ random()) & INT64_MAX;
    if (lease == 0) lease = 1;
    int rc = pg_begin(c);
    if (rc != 0) return rc;
    pg_params q = {0};
    pg_p_i64(&q, want);
    pg_res *r = NULL;
    rc = pg_exec(c,
                 "SELECT id, event_id, event_type, recipient_user_id, recipient_email, locale, message_id,"
                 " subject, body, client_hub_id, attempts, access_request_id, body_html, traceparent"
                 " FROM delivery"
                 " WHERE state IN (" NT_SQL_DUE ") AND next_attempt_at <= now()"
                 " ORDER BY next_attempt_at, id LIMIT $1 FOR UPDATE SKIP LOCKED",
                 &q, &r);
    if (rc != 0) goto fail;
    nt_job *head = NULL, **tail = &head;
    int claimed = 0;
    for (int i = 0; i < pg_nrows(r); i++) {
        nt_job *j = job_from_row(r, i, lease);
        if (j == NULL) {
            rc = OM_E_NOMEM;
            goto fail_jobs;
        }
        rc = cap_check(c, j);
        if (rc < 0) {
            nt_job_free(j);
            goto fail_jobs;
        }
        if (rc == 1) { /* DEFERRED */
            nt_job_free(j);
            continue;
        }
        pg_params u = {0};
        pg_args(&u, j->id, lease, nt_cfg.lease_ms);
        rc = pg_exec(c,
                     "UPDATE delivery SET lease_token = $2,"
                     " next_attempt_at = now() + make_interval(secs => $3::bigint / 1000.0) WHERE id = $1",
                     &u, NULL);
        if (rc != 0) {
            nt_job_free(j);
            goto fail_jobs;
        }
        *tail = j;
        tail = &j->next;
        claimed++;
    }
    pg_free(r);
    r = NULL;
    rc = pg_commit(c);
    if (rc != 0) { /* rolled back: nothing claimed */
        while (head) {
            nt_job *n = head->next;
            nt_job_free(head);
            head = n;
        }
        log_error("sender: claim: %s %s", om_err_name(rc), pg_errmsg(c));
        return rc;
    }
    *out = head;
    return claimed;
fail_jobs:
    while (head) {
        nt_job *n = head->next;
        nt_job_free(head);
        head = n;
    }
fail:
    log_error("sender: claim: %s %s", om_err_name(rc), pg_errmsg(c));
    pg_free(r);
    if (pg_in_tx(c)) pg_rollback(c);
    return rc;
}

int nt_prepare(pg_conn *c, nt_job *j) {
    char *body = NULL, *html = NULL;
    j->rc = 0;
    j->err[0] = '\0';
    int rc = prepare_body(c, j, &body, &html);
    if (rc == 1) { /* CANCELLED */
        j->done = true;
        return 0;
    }
    if (rc == OM_E_UNAVAILABLE) {
        j->rc = OM_E_UNAVAILABLE;
        snprintf(j->err, sizeof j->err, "partners: cannot fetch the link token now");
        return 0;
    }
    if (rc != 0) return rc;
    /* NOTE-04: the kind's own HTML part, else the text in the locale's layout */
    if (html == NULL) rc = nt_html_from_text(nt_tpls, j->locale, j->subject, body, &html);
    if (rc != 0) {
        free(body);
        return rc;
    }
    nt_mail mail = {
        .from = nt_cfg.from,
        .to = j->email,
        .subject = j->subject,
        .body = body,
        .html = html,
        .message_id = j->message_id,
        .locale = j->locale,
        .event_id = j->event_id,
        .date_s = (int64_t)time(NULL),
    };
    rc = nt_mail_format(&mail, &j->msg, &j->len);
    free(body);
    free(html);
    if (rc != 0) {
        j->msg = NULL;
        j->rc = OM_E_FAILED_PRECONDITION;
        snprintf(j->err, sizeof j->err, "cannot format the message: %s", om_err_name(rc));
    }
    return 0;
}

/* Whether the job's email carries a link token (PART-04). */
static bool needs_token(const nt_job *j) {
    return j->access_request_id[0] != '\0' && strstr(j->body, NT_TOKEN_MARK) != NULL;
}

/* Issue 19: this thread continues the trace of the event that queued `j`
 * (its token call and log lines); NULL clears it. */
void nt_job_trace(const nt_job *j) {
    trace_ctx t;
    if (j != NULL && trace_parse(j->traceparent, strlen(j->traceparent), &t)) trace_set_current(&t, NULL);
    else trace_set_current(NULL, NULL);
}

int nt_prepare_batch(pg_conn *c, nt_job *jobs) {
    /* one partners call for the tokens of the batch (100 at most a call) */
    nt_job *ask[100];
    size_t n = 0;
    for (nt_job *j = jobs; j; j = j->next) {
        if (!needs_token(j)) continue;
        ask[n++] = j;
        if (n == sizeof ask / sizeof ask[0]) {
            nt_job_trace(ask[0]); /* one call for many emails: it continues the first one's trace */
            (void)nt_issue_tokens(ask, n); /* what it could not set is asked one by one */
            n = 0;
        }
    }
    if (n > 0) {
        nt_job_trace(ask[0]);
        (void)nt_issue_tokens(ask, n);
    }
    for (nt_job *j = jobs; j; j = j->next) {
        nt_job_trace(j);
        int rc = nt_prepare(c, j);
        if (rc != 0 && !j->done && j->rc == 0) { /* the database failed: this one is retried later */
            j->rc = OM_E_UNAVAILABLE;
            snprintf(j->err, sizeof j->err, "cannot prepare the email: %s", om_err_name(rc));
        }
    }
    nt_job_trace(NULL);
    return 0;
}

int nt_record(pg_conn *c, nt_job *jobs) {
    int rc = pg_begin(c);
    if (rc != 0) return rc;
    for (nt_job *j = jobs; j; j = j->next) {
        if (j->done) continue;
        rc = record(c, j, j->rc, j->err);
        if (rc != 0) goto fail;
    }
    rc = pg_commit(c);
    if (rc == 0) {
        for (nt_job *j = jobs; j; j = j->next) {
            if (j->done) continue;
            nt_job_trace(j); /* the outcome's line carries the email's trace */
            if (j->rc == OM_E_CANCELLED)
                log_info("delivery %" PRId64 " released: %s", j->id, j->err);
            else if (j->rc == 0)
                log_info("delivery %" PRId64 " sent: event %s to user %" PRIu64 " %s", j->id, j->event_id,
                         j->recipient, j->message_id);
            else
                log_warn("delivery %" PRId64 " attempt %d failed: %s", j->id, j->attempts + 1, j->err);
        }
        nt_job_trace(NULL);
        return 0;
    }
    log_error("sender: record: %s %s", om_err_name(rc), pg_errmsg(c));
    return rc;
fail:
    log_error("sender: record: %s %s", om_err_name(rc), pg_errmsg(c));
    if (pg_in_tx(c)) pg_rollback(c);
    return rc;
}
