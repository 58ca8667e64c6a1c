/* notifier_sender.c — the notifier's configuration and its sender threads:
 * each holds its own PostgreSQL connection and drains the due queue one row
 * at a time (notifier_store.c), so several replicas share the work through
 * row leases only; a listener thread wakes them when rows are queued. */
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "notifier.h"
#include "om_err.h"
#include "om_time.h"

/* Where images install the templates (deploy/containers/Containerfile). */
#define NT_TEMPLATES_INSTALLED "/usr/local/share/orgmesh/notifier/templates"
/* The source tree's, baked in by CMake (absent in images). */
#ifndef NT_TEMPLATES_DEFAULT
#define NT_TEMPLATES_DEFAULT NT_TEMPLATES_INSTALLED
#endif

#define NT_MAX_SENDERS 16

nt_config nt_cfg;
nt_templates *nt_tpls;

int nt_config_load(void) {
    nt_cfg.smtp.url = cfg_str("ORGMESH_SMTP_URL", "smtp://127.0.0.1:25");
    nt_cfg.smtp.starttls = cfg_bool("ORGMESH_SMTP_STARTTLS", false);
    nt_cfg.smtp.user = cfg_str("ORGMESH_SMTP_USER", NULL);
    nt_cfg.smtp.password = cfg_str("ORGMESH_SMTP_PASSWORD", NULL);
    nt_cfg.smtp.from = cfg_str("ORGMESH_SMTP_FROM", "orgmesh <no-reply@orgmesh.local>");
    nt_cfg.smtp.timeout_ms = (int)cfg_int("ORGMESH_SMTP_TIMEOUT_MS", 10000, 100, 600000);
    nt_cfg.smtp.ca_file = cfg_str("ORGMESH_SMTP_CA_FILE", NULL);
    const char *tdir = cfg_str("ORGMESH_NOTIFIER_TEMPLATES", NULL);
    nt_cfg.templates_dir = tdir ? tdir : NT_TEMPLATES_DEFAULT;
    nt_cfg.link_base = cfg_str("ORGMESH_NOTIFIER_LINK_BASE", "https://app.orgmesh.local/partner-access");
    nt_cfg.max_attempts = (int)cfg_int("ORGMESH_NOTIFIER_MAX_ATTEMPTS", 8, 1, 1000);
    nt_cfg.retry_base_ms = cfg_int("ORGMESH_NOTIFIER_RETRY_BASE_MS", 1000, 1, 3600000);
    nt_cfg.retry_max_ms = cfg_int("ORGMESH_NOTIFIER_RETRY_MAX_MS", 300000, 1, 86400000);
    nt_cfg.client_hourly_cap = (int)cfg_int("ORGMESH_NOTIFIER_CLIENT_HOURLY_CAP", 20, 0, 1000000);
    nt_cfg.cap_window_s = cfg_int("ORGMESH_NOTIFIER_CAP_WINDOW_S", 3600, 1, 86400 * 7);
    nt_cfg.poll_ms = (int)cfg_int("ORGMESH_NOTIFIER_POLL_MS", 200, 10, 60000);
    nt_cfg.senders = (int)cfg_int("ORGMESH_NOTIFIER_SENDERS", 8, 1, NT_MAX_SENDERS);
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
    return nt_smtp_global_init();
}

/* One listener thread LISTENs for new rows and wakes one idle sender per
 * notification; a sender that finds a second due row in a row wakes one
 * more, so a backlog brings every sender in while a trickle wakes only one
 * (with each sender LISTENing itself, every new row woke them all, and all
 * but one found nothing: three wasted statements each). Senders also look
 * every ORGMESH_NOTIFIER_POLL_MS: retries and deferrals become due by the
 * database clock, and notifications are lost while the listener reconnects. */
static struct {
    pthread_t th[NT_MAX_SENDERS];
    int n;
    pthread_t listener;
    bool listening;
    int pipe[2];
    atomic_bool stop;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int wakeups; /* wake-ups not yet taken by a sender (mu) */
} snd = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void sender_wake_one(void) {
    pthread_mutex_lock(&snd.mu);
    if (snd.wakeups < snd.n) snd.wakeups++;
    pthread_cond_signal(&snd.cv);
    pthread_mutex_unlock(&snd.mu);
}

/* Until a wake-up, stop, or ms. */
static void sender_wait(int ms) {
    struct timespec until = om_deadline(CLOCK_MONOTONIC, ms);
    pthread_mutex_lock(&snd.mu);
    int rc = 0;
    while (snd.wakeups == 0 && !atomic_load(&snd.stop) && rc == 0)
        rc = pthread_cond_timedwait(&snd.cv, &snd.mu, &until);
    if (snd.wakeups > 0) snd.wakeups--;
    pthread_mutex_unlock(&snd.mu);
}

static void *listener_main(void *arg) {
    (void)arg;
    pg_conn *c = NULL;
    while (!atomic_load(&snd.stop)) {
        if (c == NULL && (pg_connect(&c) != 0 || pg_listen(c, NT_QUEUE_CHANNEL) != 0)) {
            pg_close(c);
            c = NULL;
            struct pollfd p = {.fd = snd.pipe[0], .events = POLLIN};
            poll(&p, 1, 500);
            continue;
        }
        int w = pg_wait_notify(c, 1000, snd.pipe[0]);
        if (w > 0) {
            /* one per committed transaction that queued rows */
            for (int i = 0; i < w && i < NT_MAX_SENDERS; i++) sender_wake_one();
        } else if (w < 0) { /* reconnects (and LISTENs again) on the next wait */
            struct pollfd p = {.fd = snd.pipe[0], .events = POLLIN};
            poll(&p, 1, 500);
        }
    }
    pg_close(c);
    return NULL;
}

static void *sender_main(void *arg) {
    (void)arg;
    pg_conn *c = NULL;
    /* Connect when there is work (a wake-up) or at the first poll, not all
     * at once while the process starts (SPEC 9: SERVING within 200 ms). */
    sender_wait(nt_cfg.poll_ms);
    while (!atomic_load(&snd.stop)) {
        if (c == NULL && pg_connect(&c) != 0) {
            sender_wait(500);
            continue;
        }
        int n, rows = 0;
        do {
            n = nt_send_one(c);
            if (n == 1 && ++rows == 2) sender_wake_one(); /* a backlog: bring in another */
        } while (n == 1 && !atomic_load(&snd.stop));
        if (atomic_load(&snd.stop)) break;
        sender_wait(n < 0 ? 500 : nt_cfg.poll_ms);
    }
    nt_smtp_thread_done();
    pg_close(c);
    return NULL;
}

int nt_senders_start(void) {
    if (pipe(snd.pipe) != 0) return OM_E_INTERNAL;
    pthread_condattr_t ca;
    if (pthread_condattr_init(&ca) != 0) goto fail_pipe;
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int crc = pthread_cond_init(&snd.cv, &ca);
    pthread_condattr_destroy(&ca);
    if (crc != 0) goto fail_pipe;
    atomic_store(&snd.stop, false);
    snd.wakeups = 0;
    snd.n = 0;
    for (int i = 0; i < nt_cfg.senders; i++) {
        if (pthread_create(&snd.th[i], NULL, sender_main, NULL) != 0) break;
        pthread_mutex_lock(&snd.mu); /* sender_wake_one reads it */
        snd.n++;
        pthread_mutex_unlock(&snd.mu);
    }
    snd.listening = snd.n > 0 && pthread_create(&snd.listener, NULL, listener_main, NULL) == 0;
    if (snd.n > 0 && !snd.listening) log_warn("no queue listener: senders look every %d ms", nt_cfg.poll_ms);
    if (snd.n > 0) return 0;
    pthread_cond_destroy(&snd.cv);
fail_pipe:
    close(snd.pipe[0]);
    close(snd.pipe[1]);
    return OM_E_INTERNAL;
}

void nt_senders_stop(void) {
    if (snd.n == 0) return;
    atomic_store(&snd.stop, true);
    nt_smtp_abort_all();
    (void)!write(snd.pipe[1], "x", 1);
    pthread_mutex_lock(&snd.mu);
    pthread_cond_broadcast(&snd.cv);
    pthread_mutex_unlock(&snd.mu);
    for (int i = 0; i < snd.n; i++) pthread_join(snd.th[i], NULL);
    if (snd.listening) pthread_join(snd.listener, NULL);
    snd.listening = false;
    snd.n = 0;
    pthread_cond_destroy(&snd.cv);
    close(snd.pipe[0]);
    close(snd.pipe[1]);
}
