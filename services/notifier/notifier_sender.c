/* notifier_sender.c — the notifier's configuration and its sender threads:
 * each holds its own PostgreSQL connection, LISTENs for new rows and drains
 * the due queue one row at a time (notifier_store.c), so several replicas
 * share the work through row leases only. */
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
    nt_cfg.senders = (int)cfg_int("ORGMESH_NOTIFIER_SENDERS", 2, 1, NT_MAX_SENDERS);
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

static struct {
    pthread_t th[NT_MAX_SENDERS];
    int n;
    int pipe[2];
    atomic_bool stop;
} snd;

static void *sender_main(void *arg) {
    (void)arg;
    pg_conn *c = NULL;
    while (!atomic_load(&snd.stop)) {
        if (c == NULL) {
            if (pg_connect(&c) != 0) {
                struct pollfd p = {.fd = snd.pipe[0], .events = POLLIN};
                poll(&p, 1, 500);
                continue;
            }
            pg_listen(c, NT_QUEUE_CHANNEL);
        }
        int n;
        do {
            n = nt_send_one(c);
        } while (n == 1 && !atomic_load(&snd.stop));
        if (atomic_load(&snd.stop)) break;
        /* woken by a new row (NOTIFY at commit), by stop, or by the poll
         * period: retries and deferrals become due by the database clock */
        int w = pg_wait_notify(c, n < 0 ? 500 : nt_cfg.poll_ms, snd.pipe[0]);
        if (w < 0) {
            struct pollfd p = {.fd = snd.pipe[0], .events = POLLIN};
            poll(&p, 1, 500);
        }
    }
    pg_close(c);
    return NULL;
}

int nt_senders_start(void) {
    if (pipe(snd.pipe) != 0) return OM_E_INTERNAL;
    atomic_store(&snd.stop, false);
    for (int i = 0; i < nt_cfg.senders; i++) {
        if (pthread_create(&snd.th[i], NULL, sender_main, NULL) != 0) break;
        snd.n++;
    }
    return snd.n > 0 ? 0 : OM_E_INTERNAL;
}

void nt_senders_stop(void) {
    if (snd.n == 0) return;
    atomic_store(&snd.stop, true);
    nt_smtp_abort_all();
    (void)!write(snd.pipe[1], "x", 1);
    for (int i = 0; i < snd.n; i++) pthread_join(snd.th[i], NULL);
    snd.n = 0;
    close(snd.pipe[0]);
    close(snd.pipe[1]);
}
