/* notifier_sender.c — the notifier's configuration and its sender, on the
 * process loop (common/loop.h, issue 15): claims of due rows and their
 * outcomes are PostgreSQL work on the worker pool (loop_work), the SMTP
 * exchanges run on the loop (common/smtp.c), and the wake-ups are the
 * queue's notifications (loop_listen) plus a timer. Several replicas share
 * the queue through row leases only (notifier_store.c). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "loop.h"
#include "metrics.h"
#include "notifier.h"
#include "om_err.h"
#include "trace.h"

/* Where images install the templates (deploy/containers/Containerfile). */
#define NT_TEMPLATES_INSTALLED "/usr/local/share/orgmesh/notifier/templates"
/* The source tree's, baked in by CMake (absent in images). */
#ifndef NT_TEMPLATES_DEFAULT
#define NT_TEMPLATES_DEFAULT NT_TEMPLATES_INSTALLED
#endif

/* Rows claimed per claim transaction, at most. */
#define NT_CLAIM_MAX 128
/* Outcomes recorded per transaction, at most, and such transactions at once. */
#define NT_RECORD_MAX 128
#define NT_RECORDING_MAX 4
/* Emails prepared per piece of worker work, at most: their link tokens come
 * from partners in one call (IssueAccessRequestTokensBatch), not one call
 * each (bench scenario 5, issue 15). A claim is cut into about
 * NT_PREPARE_SPREAD pieces (the default number of workers), so that a small
 * claim still runs side by side and a backlog's claim of 128 costs 8 calls. */
#define NT_PREPARE_BATCH 16
#define NT_PREPARE_SPREAD 8

nt_config nt_cfg;
nt_templates *nt_tpls;

int nt_config_load(void) {
    nt_cfg.smtp.url = cfg_str("ORGMESH_SMTP_URL", "smtp://127.0.0.1:25");
    nt_cfg.smtp.starttls = cfg_bool("ORGMESH_SMTP_STARTTLS", false);
    nt_cfg.smtp.user = cfg_str("ORGMESH_SMTP_USER", NULL);
    nt_cfg.smtp.password = cfg_str("ORGMESH_SMTP_PASSWORD", NULL);
    nt_cfg.from = cfg_str("ORGMESH_SMTP_FROM", "orgmesh <no-reply@orgmesh.local>");
    nt_mail_address(nt_cfg.from, nt_cfg.mail_from, sizeof nt_cfg.mail_from);
    nt_cfg.smtp.mail_from = nt_cfg.mail_from;
    nt_cfg.smtp.timeout_ms = (int)cfg_int("ORGMESH_SMTP_TIMEOUT_MS", 10000, 100, 600000);
    nt_cfg.smtp.ca_file = cfg_str("ORGMESH_SMTP_CA_FILE", NULL);
    nt_cfg.smtp.max_connections = (int)cfg_int("ORGMESH_SMTP_MAX_CONNECTIONS", 16, 1, 512);
    nt_cfg.smtp.max_total_connections =
        (int)cfg_int("ORGMESH_SMTP_MAX_TOTAL_CONNECTIONS", nt_cfg.smtp.max_connections, 1, 1024);
    nt_cfg.smtp.threads = (int)cfg_int("ORGMESH_SMTP_THREADS", 4, 1, 16);
    if (nt_cfg.smtp.max_total_connections < nt_cfg.smtp.max_connections)
        nt_cfg.smtp.max_connections = nt_cfg.smtp.max_total_connections;
    const char *tdir = cfg_str("ORGMESH_NOTIFIER_TEMPLATES", NULL);
    nt_cfg.templates_dir = tdir ? tdir : NT_TEMPLATES_DEFAULT;
    nt_cfg.link_base = cfg_str("ORGMESH_NOTIFIER_LINK_BASE", "https://app.orgmesh.local/partner-access");
    nt_cfg.max_attempts = (int)cfg_int("ORGMESH_NOTIFIER_MAX_ATTEMPTS", 8, 1, 1000);
    nt_cfg.retry_base_ms = cfg_int("ORGMESH_NOTIFIER_RETRY_BASE_MS", 1000, 1, 3600000);
    nt_cfg.retry_max_ms = cfg_int("ORGMESH_NOTIFIER_RETRY_MAX_MS", 300000, 1, 86400000);
    nt_cfg.client_hourly_cap = (int)cfg_int("ORGMESH_NOTIFIER_CLIENT_HOURLY_CAP", 20, 0, 1000000);
    nt_cfg.cap_window_s = cfg_int("ORGMESH_NOTIFIER_CAP_WINDOW_S", 3600, 1, 86400 * 7);
    nt_cfg.poll_ms = (int)cfg_int("ORGMESH_NOTIFIER_POLL_MS", 200, 10, 60000);
    /* An email stays in the window from its claim to its record (the token
     * call, SMTP, the batched record: a few hundred ms under load), so the
     * window bounds the rate: 256 / 0.3 s is about 850 emails/s (64 capped
     * it near 200/s in bench scenario 5). */
    nt_cfg.in_flight = (int)cfg_int("ORGMESH_NOTIFIER_IN_FLIGHT", 16 * nt_cfg.smtp.max_connections, 1, 4096);
    /* a claim outlives the longest exchange: the token call, the wait for
     * a connection, connect + transfer (2 x the timeout), the record */
    nt_cfg.lease_ms = 3 * (int64_t)nt_cfg.smtp.timeout_ms + 5000;
    if (nt_cfg.retry_max_ms < nt_cfg.retry_base_ms) nt_cfg.retry_max_ms = nt_cfg.retry_base_ms;
    if (strncmp(nt_cfg.smtp.url, "smtp://", 7) != 0 && strncmp(nt_cfg.smtp.url, "smtps://", 8) != 0) {
        log_error("ORGMESH_SMTP_URL=%s: expected smtp://host:port or smtps://host:port", nt_cfg.smtp.url);
        return -1;
    }
    int rc = nt_templates_load(nt_cfg.templates_dir, &nt_tpls);
    if (rc == OM_E_NOT_FOUND && tdir == NULL) { /* not built here: an image */
        nt_cfg.templates_dir = NT_TEMPLATES_INSTALLED;
        rc = nt_templates_load(nt_cfg.templates_dir, &nt_tpls);
    }
    if (rc != 0) {
        log_error("cannot load the email templates from %s (ORGMESH_NOTIFIER_TEMPLATES): %s", nt_cfg.templates_dir,
                  om_err_name(rc));
        return -1;
    }
    log_info("%zu email templates loaded from %s; SMTP %s", nt_templates_count(nt_tpls), nt_cfg.templates_dir,
             nt_cfg.smtp.url);
    srandom((unsigned)time(NULL) ^ (unsigned)getpid());
    return smtp_global_init();
}

/* The sender, on the loop thread only. A claim takes up to
 * in_flight - busy due rows in one short transaction (a worker); each row is
 * then prepared on a worker (the link token from partners, the message),
 * sent on the loop, and its outcome queued; outcomes are recorded in
 * batches, one transaction each (a worker). A new claim starts when there is
 * room and a reason: a notification on the queue's channel, the timer
 * (ORGMESH_NOTIFIER_POLL_MS: retries and deferrals come due by the database
 * clock; notifications missed while the LISTEN connection reconnected), or a
 * full previous claim (a backlog). */
static struct {
    bool started, stopping;
    uv_timer_t tick;
    int busy;      /* rows claimed and not yet finished */
    bool claiming; /* a claim is under way */
    bool more;     /* there may be due rows: claim when there is room */
    nt_job *out_head, *out_tail; /* outcomes waiting to be recorded */
    int n_out;
    int recording; /* record transactions under way */
    int64_t sent, failed;
} snd;

static void pump(void);

static void finish(nt_job *j) {
    nt_job_free(j);
    snd.busy--;
}

static void record_pump(void);

static void queue_outcome(nt_job *j) {
    free(j->msg); /* handed over or never sent */
    j->msg = NULL;
    j->next = NULL;
    if (snd.out_tail) snd.out_tail->next = j;
    else snd.out_head = j;
    snd.out_tail = j;
    snd.n_out++;
    record_pump();
}

static int record_work(void *arg) { return nt_record(pg_local(), arg); }

static void record_done(void *arg, int rc) {
    nt_job *jobs = arg;
    snd.recording--;
    if (rc != 0 && !snd.stopping) {
        /* PostgreSQL failed: keep the outcomes and try again at the next
         * tick (the leases still hold them) */
        nt_job *t = jobs;
        int n = 1;
        while (t->next) t = t->next, n++;
        t->next = snd.out_head;
        snd.out_head = jobs;
        if (snd.out_tail == NULL) snd.out_tail = t;
        snd.n_out += n;
        return;
    }
    if (rc != 0)
        log_warn("sender: outcomes not recorded while stopping (%s): their rows are due again when the lease ends",
                 om_err_name(rc));
    while (jobs) {
        nt_job *n = jobs->next;
        finish(jobs);
        jobs = n;
    }
    record_pump();
    pump();
}

/* A few record transactions at once (distinct rows: no lock waits); the
 * next batch fills while they commit. */
static void record_pump(void) {
    while (snd.out_head != NULL && snd.recording < NT_RECORDING_MAX) {
        nt_job *batch = snd.out_head, *t = batch;
        int n = 1;
        while (n < NT_RECORD_MAX && t->next) t = t->next, n++;
        snd.out_head = t->next;
        if (snd.out_head == NULL) snd.out_tail = NULL;
        snd.n_out -= n;
        t->next = NULL;
        snd.recording++;
        if (loop_work(record_work, record_done, batch) != 0) {
            snd.recording--;
            log_warn("sender: cannot record %d outcomes (stopping): their rows are due again when the lease ends", n);
            while (batch) {
                nt_job *x = batch->next;
                finish(batch);
                batch = x;
            }
        }
    }
}

/* Email delivery outcomes (issue 19), per SMTP exchange. */
static metrics_counter *m_sent, *m_failed, *m_cancelled;

static void outcome_metrics_register(void) {
    m_sent = metrics_counter_register("orgmesh_notifier_emails_sent_total", "Emails the SMTP server accepted.");
    m_failed = metrics_counter_register("orgmesh_notifier_emails_failed_total",
                                        "SMTP attempts that failed (retried with backoff, then dead-lettered).");
    m_cancelled = metrics_counter_register("orgmesh_notifier_emails_cancelled_total",
                                           "SMTP exchanges aborted by a shutdown (sent again later).");
}

/* Issue 19: the SMTP exchange is a CLIENT span in the trace of the event
 * that queued the email (delivery.traceparent). */
static void smtp_span_start(nt_job *j) {
    trace_ctx parent, sc;
    bool have = trace_parse(j->traceparent, strlen(j->traceparent), &parent);
    j->span = trace_start(have ? &parent : NULL, TRACE_CLIENT, "smtp send", &sc);
    trace_attr_str(j->span, "server.address", nt_cfg.smtp.url);
    trace_attr_str(j->span, "orgmesh.email.message_id", j->message_id);
    trace_attr_str(j->span, "orgmesh.event.type", j->event_type);
}

static void smtp_done(void *arg, int rc, const char *err) {
    nt_job *j = arg;
    j->rc = rc;
    snprintf(j->err, sizeof j->err, "%s", err);
    if (rc == 0) snd.sent++;
    else if (rc != OM_E_CANCELLED) snd.failed++;
    metrics_counter_add(rc == 0 ? m_sent : rc == OM_E_CANCELLED ? m_cancelled : m_failed, 1);
    trace_attr_str(j->span, "orgmesh.smtp.outcome", rc == 0 ? "sent" : om_err_name(rc));
    trace_end(j->span, rc != 0, rc != 0 ? err : NULL);
    j->span = NULL;
    queue_outcome(j);
}

static void prepare_done(void *arg, int rc) {
    nt_job *j = arg;
    if (rc != 0 && !j->done && j->rc == 0) { /* the database failed: retry later */
        j->rc = OM_E_UNAVAILABLE;
        snprintf(j->err, sizeof j->err, "cannot prepare the email: %s", om_err_name(rc));
    }
    if (j->done) {
        finish(j);
        pump();
        return;
    }
    if (j->rc != 0 || snd.stopping) {
        if (j->rc == 0) {
            j->rc = OM_E_CANCELLED;
            snprintf(j->err, sizeof j->err, "stopping: not sent");
        }
        queue_outcome(j);
        return;
    }
    smtp_span_start(j);
    char *msg = j->msg;
    j->msg = NULL;
    if (smtp_send(j->email, msg, j->len, smtp_done, j) != 0) {
        j->rc = OM_E_CANCELLED;
        snprintf(j->err, sizeof j->err, "stopping: not sent (the SMTP engine is stopped)");
        queue_outcome(j);
    }
}

static int prepare_batch_work(void *arg) { return nt_prepare_batch(pg_local(), arg); }

static void prepare_batch_done(void *arg, int rc) {
    nt_job *j = arg;
    while (j) {
        nt_job *n = j->next;
        j->next = NULL;
        prepare_done(j, rc);
        j = n;
    }
}

typedef struct claim_op {
    int want;
    nt_job *jobs;
} claim_op;

static int claim_work(void *arg) {
    claim_op *op = arg;
    return nt_claim(pg_local(), op->want, &op->jobs);
}

static void claim_done(void *arg, int rc) {
    claim_op *op = arg;
    snd.claiming = false;
    if (rc == op->want) snd.more = true; /* a full claim: there may be more */
    nt_job *j = op->jobs;
    free(op);
    /* the claimed rows prepared in batches, each one piece of work on a worker */
    int per = rc > 0 ? (rc + NT_PREPARE_SPREAD - 1) / NT_PREPARE_SPREAD : 1;
    if (per > NT_PREPARE_BATCH) per = NT_PREPARE_BATCH;
    while (j) {
        nt_job *batch = j, *t = j;
        int n = 1;
        snd.busy++;
        while (n < per && t->next) t = t->next, n++, snd.busy++;
        j = t->next;
        t->next = NULL;
        if (snd.stopping || loop_work(prepare_batch_work, prepare_batch_done, batch) != 0) {
            while (batch) {
                nt_job *x = batch->next;
                batch->next = NULL;
                batch->rc = OM_E_CANCELLED;
                snprintf(batch->err, sizeof batch->err, "stopping: not sent");
                queue_outcome(batch);
                batch = x;
            }
        }
    }
    pump();
}

static void pump(void) {
    if (!snd.started || snd.stopping || snd.claiming || !snd.more) return;
    int room = nt_cfg.in_flight - snd.busy;
    if (room <= 0) return;
    /* a claim of one row per wake-up would cost a transaction per email:
     * wait until a quarter of the window is free, unless idle */
    if (snd.busy > 0 && room < nt_cfg.in_flight / 4) return;
    claim_op *op = calloc(1, sizeof *op);
    if (op == NULL) return;
    op->want = room > NT_CLAIM_MAX ? NT_CLAIM_MAX : room;
    snd.claiming = true;
    snd.more = false;
    if (loop_work(claim_work, claim_done, op) != 0) {
        snd.claiming = false;
        free(op);
    }
}

static void on_notify(const char *channel, const char *payload, void *arg) {
    (void)channel, (void)payload, (void)arg; /* payload NULL: reconnected, look anyway */
    snd.more = true;
    pump();
}

static void on_tick(uv_timer_t *t) {
    (void)t;
    snd.more = true;
    record_pump(); /* outcomes whose record failed */
    pump();
}

static void sender_stop(void *arg) {
    (void)arg;
    if (!snd.started) return;
    snd.stopping = true;
    uv_close((uv_handle_t *)&snd.tick, NULL);
    /* transfers under way are aborted and count as a temporary failure
     * (SPEC 9: exit within 5 s even with a hung SMTP server) */
    smtp_stop();
    log_info("sender stopped: %" PRId64 " sent, %" PRId64 " failed attempts", snd.sent, snd.failed);
}

int nt_senders_start(void) {
    outcome_metrics_register();
    uv_loop_t *loop = loop_get();
    if (loop == NULL) return OM_E_INTERNAL;
    memset(&snd, 0, sizeof snd);
    int rc = smtp_start(loop, &nt_cfg.smtp);
    if (rc != 0) return rc;
    if (uv_timer_init(loop, &snd.tick) != 0) {
        smtp_stop();
        return OM_E_INTERNAL;
    }
    snd.started = true;
    if (loop_on_stop(sender_stop, NULL) != 0) {
        sender_stop(NULL);
        return OM_E_INTERNAL;
    }
    if (loop_listen(NT_QUEUE_CHANNEL, on_notify, NULL) != 0)
        log_warn("no queue listener: the sender looks every %d ms", nt_cfg.poll_ms);
    uv_timer_start(&snd.tick, on_tick, (uint64_t)nt_cfg.poll_ms, (uint64_t)nt_cfg.poll_ms);
    /* the first look at the first tick, not while the process starts
     * (SPEC 9: SERVING within 200 ms) */
    log_info("sender: up to %d emails in flight, %d SMTP connections (%d in all) on %d engine threads, lease %" PRId64
             " ms",
             nt_cfg.in_flight, nt_cfg.smtp.max_connections, nt_cfg.smtp.max_total_connections, nt_cfg.smtp.threads,
             nt_cfg.lease_ms);
    return 0;
}
