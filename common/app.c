/* app.c — the life of a service process: configure, migrate, serve, stop.
 * Every main.c hands its app_def to app_main and nothing else. */
#include <ctype.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <grpc/grpc.h>

#include "app.h"
#include "cache.h"
#include "config.h"
#include "log.h"
#include "loop_internal.h"
#include "metrics.h"
#include "om_time.h"
#include "page.h"
#include "rpc_internal.h"
#include "trace.h"

#define APP_MAX_PEERS 8

static struct {
    const app_def *def;
    auth_ctx *auth;
    rpc_server *server;
    work_pool *pool;
    uv_signal_t sig_term, sig_int;
    uv_timer_t health_timer;
    bool health_busy;
    pthread_t drain_thread;
    bool drain_started;
    int grace_ms;
    pthread_mutex_t mu;
    struct {
        char name[32];
        rpc_client *client;
    } peers[APP_MAX_PEERS];
    int n_peers;
} app = {.mu = PTHREAD_MUTEX_INITIALIZER};

auth_ctx *app_auth(void) {
    return app.auth;
}

const char *app_name(void) {
    return app.def ? app.def->name : "orgmesh";
}

const char *app_service_token(void) {
    return auth_service_token(app.auth, app_name());
}

rpc_client *app_peer(const char *peer) {
    rpc_client *c = NULL;
    pthread_mutex_lock(&app.mu);
    for (int i = 0; i < app.n_peers; i++)
        if (strcmp(app.peers[i].name, peer) == 0) c = app.peers[i].client;
    if (c == NULL && app.n_peers < APP_MAX_PEERS) {
        char var[64];
        snprintf(var, sizeof var, "ORGMESH_%s_ADDR", peer);
        for (char *p = var; *p; p++) *p = (char)toupper((unsigned char)*p);
        const char *addr = cfg_str(var, NULL);
        if (addr != NULL && rpc_client_new(&c, addr) == 0) {
            snprintf(app.peers[app.n_peers].name, sizeof app.peers[0].name, "%s", peer);
            app.peers[app.n_peers++].client = c;
        } else if (addr == NULL) {
            log_error("%s is not set: cannot reach the %s service", var, peer);
        }
    }
    pthread_mutex_unlock(&app.mu);
    return c;
}

static void worker_start(int index, void *arg) {
    (void)index;
    (void)arg;
    pg_local(); /* connect early so the first call does not pay for it */
}

static void after_call(void *arg) {
    (void)arg;
    pg_local_end_call();
}

static void worker_stop(int index, void *arg) {
    (void)index;
    (void)arg;
    pg_local_close();
    cache_local_close();
}

/* Health, on the loop: a timer tick (the first at once) sends the probes to
 * a worker (they block); the next tick waits for the previous one.
 * PostgreSQL decides "" (the whole server); Redis is reported on its own. */
static int health_work(void *arg) {
    (void)arg;
    /* The worker's own connection: no connection just for health. */
    pg_conn *c = pg_local();
    bool pg_ok = c != NULL && pg_exec(c, "SELECT 1", NULL, NULL) == 0;
    bool redis_ok = cache_ping();
    if (!loop_stopping()) {
        /* "redis" first: whoever sees "" SERVING finds "redis" known */
        rpc_health_set(app.server, "redis", redis_ok);
        rpc_health_set(app.server, "", pg_ok);
    }
    return 0;
}

static void health_done(void *arg, int rc) {
    (void)arg;
    (void)rc;
    app.health_busy = false;
}

static void health_tick(uv_timer_t *t) {
    (void)t;
    if (app.health_busy || loop_stopping()) return;
    app.health_busy = true;
    if (loop_work(health_work, health_done, NULL) != 0) app.health_busy = false;
}

/* The drain's blocking part, off the loop: the gRPC server's stop waits up
 * to the grace period for calls in flight. Then the pool stops (every job
 * queued runs, every done is posted) and the loop closes its last handle. */
static void *drain_main(void *arg) {
    (void)arg;
    rpc_health_set(app.server, "", false);
    rpc_server_stop(app.server, app.grace_ms);
    if (app.def->n_subs > 0) evt_consumers_stop();
    evt_relay_stop();
    trace_flush(); /* the spans of the last calls and events */
    work_pool_stop(app.pool);
    loop_finish();
    return NULL;
}

static void close_app_handles(void) {
    uv_handle_t *hs[] = {(uv_handle_t *)&app.sig_term, (uv_handle_t *)&app.sig_int,
                         (uv_handle_t *)&app.health_timer};
    for (size_t i = 0; i < sizeof hs / sizeof hs[0]; i++)
        if (hs[i]->loop != NULL && !uv_is_closing(hs[i])) uv_close(hs[i], NULL);
}

static void on_signal(uv_signal_t *h, int signum) {
    (void)h;
    if (app.drain_started) return;
    log_info("signal %d: draining", signum);
    close_app_handles();
    /* Closing the last uv_signal of a signal restores its default action: a
     * second SIGTERM during the drain must not kill the process. */
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    loop_begin_stop();
    if (pthread_create(&app.drain_thread, NULL, drain_main, NULL) != 0) {
        log_error("cannot start the drain thread: draining on the loop");
        drain_main(NULL);
        return;
    }
    app.drain_started = true;
}

/* Close the loop when the service never started serving (init failed). */
static int loop_abandon(void) {
    close_app_handles();
    loop_begin_stop();
    work_pool_stop(app.pool);
    loop_finish();
    uv_run(loop_get(), UV_RUN_DEFAULT);
    return loop_close();
}

/* Apply migrations, waiting up to `wait_ms` for PostgreSQL to come up. */
static int migrate(const app_def *def, int wait_ms) {
    int waited = 0;
    for (;;) {
        pg_conn *c = NULL;
        int rc = pg_connect(&c);
        if (rc == 0) {
            rc = pg_migrate(c, def->name, def->migrations, def->n_migrations);
            pg_close(c);
            if (rc != 0) log_error("migrations failed: %s", om_err_name(rc));
            return rc;
        }
        if (waited >= wait_ms) {
            log_error("PostgreSQL is not reachable; giving up after %d ms", waited);
            return rc;
        }
        struct timespec ts = {0, 200 * 1000000L};
        nanosleep(&ts, NULL);
        waited += 200;
    }
}

static void usage(const char *prog) {
    fprintf(stderr,
            "usage: %s [--migrate-only]\n"
            "Configuration comes from ORGMESH_* environment variables; see docs/configuration.md.\n",
            prog);
}

/* Who is trusted for what (docs/security.md): the token keys and what each
 * may sign for (SPEC 8), and the page-token key. Local development
 * (ORGMESH_DEV_MODE=1) alone may use HS256 keys and run without a page-token
 * key; nothing ever falls back to a key published in the source. */
static int trust_setup(void) {
    bool dev = cfg_bool("ORGMESH_DEV_MODE", false);
    const char *page_key = cfg_str("ORGMESH_PAGE_TOKEN_KEY", NULL);
    if (page_key == NULL || page_key[0] == '\0') {
        if (!dev) {
            log_error("ORGMESH_PAGE_TOKEN_KEY is not set: refusing to start (page tokens must be signed with a "
                      "secret shared by every replica; ORGMESH_DEV_MODE=1 is for local development only)");
            return 1;
        }
        log_warn("ORGMESH_PAGE_TOKEN_KEY is not set (development mode): page tokens use a random key of this "
                 "process");
    } else {
        size_t n = strlen(page_key);
        if (page_token_set_key(page_key, n) != 0) {
            log_error("ORGMESH_PAGE_TOKEN_KEY must be 1 to 256 bytes");
            return 1;
        }
        if (n < 32 && !dev) log_warn("ORGMESH_PAGE_TOKEN_KEY is shorter than 32 bytes: use a longer random secret");
    }

    auth_config ac = {
        .issuer = cfg_str("ORGMESH_JWT_ISSUER", "orgmesh-local"),
        .audience = cfg_str("ORGMESH_JWT_AUDIENCE", "orgmesh"),
        .keys = cfg_str("ORGMESH_JWT_KEYS", NULL),
        .signing_key = cfg_str("ORGMESH_JWT_SIGNING_KEY", NULL),
        .key_subjects = cfg_str("ORGMESH_JWT_KEY_SUBJECTS", NULL),
        .leeway_s = 30,
    };
    if (ac.keys == NULL) {
        log_error("ORGMESH_JWT_KEYS is not set: no token could be verified");
        return 1;
    }
    if (ac.key_subjects == NULL || ac.key_subjects[0] == '\0') {
        log_error("ORGMESH_JWT_KEY_SUBJECTS is not set: bind each key to the identities it may sign for "
                  "(\"kid=users\" for the issuer's keys, \"kid=service:<name>\" for a service's; "
                  "docs/common/auth.md)");
        return 1;
    }
    int rc = auth_new(&app.auth, &ac);
    if (rc != 0) {
        log_error("bad token key configuration: %s", om_err_name(rc));
        return 1;
    }
    if (!dev && auth_uses_hs256(app.auth)) {
        log_error("HS256 token keys are for local development only (SPEC 8): use ES256 keys, or "
                  "ORGMESH_DEV_MODE=1 on a developer's machine");
        auth_free(app.auth);
        app.auth = NULL;
        return 1;
    }
    (void)auth_unbound_keys(app.auth); /* a warning per key that signs for nobody */
    return 0;
}

int app_main(const app_def *def, int argc, char **argv) {
    bool migrate_only = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--migrate-only") == 0) migrate_only = true;
        else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(argv[0]);
            return 0;
        } else {
            usage(argv[0]);
            return 2;
        }
    }
    app.def = def;

    const char *level = cfg_str("ORGMESH_LOG_LEVEL", "info");
    int lvl = log_level_parse(level);
    if (lvl < 0) {
        fprintf(stderr, "ORGMESH_LOG_LEVEL=%s: expected debug, info, warn or error\n", level);
        return 2;
    }
    log_init(def->name, lvl);

    /* SIGTERM and SIGINT are taken on the loop (uv_signal, below); until
     * the loop exists they are blocked, so none is lost and none kills the
     * process half-way through its start. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    int rc = pg_setup(cfg_str("ORGMESH_PG_URL", "postgresql://orgmesh@127.0.0.1:5432/orgmesh"),
                      def->name, (int)cfg_int("ORGMESH_PG_STATEMENT_TIMEOUT_MS", 5000, 0, 3600000));
    if (rc != 0) {
        log_error("bad PostgreSQL configuration");
        return 1;
    }
    /* Bad trust configuration fails at once, before any migration waits for
     * PostgreSQL (a migrations Job needs none of it). */
    if (!migrate_only && trust_setup() != 0) return 1;
    if (migrate_only || cfg_bool("ORGMESH_MIGRATE_ON_START", true)) {
        rc = migrate(def, (int)cfg_int("ORGMESH_PG_WAIT_MS", 30000, 0, 600000));
        if (rc != 0) return 1;
        if (migrate_only) {
            log_info("migrations applied");
            return 0;
        }
    }
    cache_setup(cfg_str("ORGMESH_REDIS_HOST", "127.0.0.1"),
                (int)cfg_int("ORGMESH_REDIS_PORT", 6379, 1, 65535),
                (int)cfg_int("ORGMESH_REDIS_TIMEOUT_MS", 200, 1, 60000));

    grpc_init();
    /* Issue 19: OTLP export when OTEL_EXPORTER_OTLP_ENDPOINT is set. */
    if (trace_init(def->name) != 0) log_error("tracing: cannot start the exporter; spans are not exported");
    /* The worker pool and the loop exist before def->init, which may start
     * background work on them (issue 15, docs/common/loop.md). */
    int workers = (int)cfg_int("ORGMESH_WORKERS", 8, 1, 256);
    work_pool_opts wo = {.threads = workers,
                         .thread_start = worker_start,
                         .thread_stop = worker_stop,
                         .after_job = after_call};
    if (work_pool_new(&app.pool, &wo) != 0 || loop_init(app.pool) != 0) {
        log_error("cannot start the worker pool and the loop");
        work_pool_free(app.pool);
        app.pool = NULL;
        rc = 1;
        goto out_early;
    }
    /* The metrics endpoint on the loop (issue 15; docs/common/metrics.md). */
    const char *metrics = cfg_str("ORGMESH_METRICS_LISTEN", NULL);
    if (metrics != NULL && metrics_start(def->name, metrics) < 0)
        log_warn("metrics: cannot listen on %s", metrics);
    work_set_default(app.pool);
    app.grace_ms = (int)cfg_int("ORGMESH_SHUTDOWN_GRACE_MS", 2500, 0, 60000);
    uv_signal_init(loop_get(), &app.sig_term);
    uv_signal_init(loop_get(), &app.sig_int);
    uv_timer_init(loop_get(), &app.health_timer);

    if (def->init != NULL && def->init() != 0) {
        log_error("service initialisation failed");
        rc = 1;
        goto out;
    }

    char listen[128];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", def->default_port);
    rpc_server_opts so = {
        .service = def->name,
        .listen = cfg_str("ORGMESH_LISTEN", listen),
        .pollers = (int)cfg_int("ORGMESH_POLLERS", 1, 1, 64),
        .workers = workers,
        .pool = app.pool,
        .max_message_bytes = 4 * 1024 * 1024,
        .descriptor_set = om_descriptor_set,
        .descriptor_set_len = om_descriptor_set_len,
        .worker_start = worker_start,
        .worker_stop = worker_stop,
        .after_call = after_call,
        .platform_services = cfg_str("ORGMESH_PLATFORM_SERVICES", NULL),
    };
    rc = rpc_server_new(&app.server, &so);
    for (const rpc_service *const *s = def->services; rc == 0 && s && *s; s++)
        rc = rpc_server_add(app.server, *s);
    if (rc == 0) {
        rpc_server_set_auth(app.server, app.auth);
        /* "" and "redis" are set by the first health tick, at once. */
        /* For liveness probes: SERVING while the process answers at all, so
         * a PostgreSQL outage takes pods out of rotation without restarts. */
        rpc_health_set(app.server, "liveness", true);
        rc = rpc_server_start(app.server);
    }
    if (rc != 0) {
        log_error("cannot start the gRPC server: %s", om_err_name(rc));
        rc = 1;
        goto out;
    }
    if (evt_relay_start(def->name) != 0) log_error("cannot start the event relay");
    if (def->n_subs > 0 && evt_consumers_start(def->name, def->subs, def->n_subs) != 0)
        log_error("cannot start the event consumers");
    int interval_ms = (int)cfg_int("ORGMESH_HEALTH_INTERVAL_MS", 1000, 50, 60000);
    uv_timer_start(&app.health_timer, health_tick, 0, (uint64_t)interval_ms);
    uv_signal_start(&app.sig_term, on_signal, SIGTERM);
    uv_signal_start(&app.sig_int, on_signal, SIGINT);
    pthread_sigmask(SIG_UNBLOCK, &sigs, NULL);
    log_info("%s ready on port %d", def->name, rpc_server_port(app.server));

    /* The main thread is the loop thread from here until every handle is
     * closed: on_signal begins the drain, drain_main ends it. */
    uv_run(loop_get(), UV_RUN_DEFAULT);
    if (app.drain_started) pthread_join(app.drain_thread, NULL);
    rc = 0;
    int lrc = loop_close();
    if (lrc != 0) {
        log_error("the loop did not close cleanly (%s): a handle was left open", uv_err_name(lrc));
        rc = 1;
    } else {
        log_info("loop closed: every handle closed");
    }
    goto done;
out:
    if (loop_get() != NULL && loop_abandon() != 0) log_error("the loop did not close cleanly");
done:
    if (def->fini != NULL) def->fini();
    rpc_server_free(app.server);
    app.server = NULL;
    work_pool_free(app.pool);
    app.pool = NULL;
out_early:
    for (int i = 0; i < app.n_peers; i++) rpc_client_free(app.peers[i].client);
    app.n_peers = 0;
    metrics_stop();
    trace_shutdown();
    rpc_thread_cleanup();
    pg_local_close();
    cache_local_close();
    grpc_shutdown();
    auth_free(app.auth);
    log_info("stopped");
    return rc;
}
