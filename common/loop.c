/* loop.c — the process's one event loop (loop.h, docs/common/loop.md). */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "log.h"
#include "loop_internal.h"
#include "om_err.h"
#include "pg.h"

#define LISTEN_BACKOFF_MIN_MS 100
#define LISTEN_BACKOFF_MAX_MS 500 /* a connect attempt twice a second is cheap; the relay waits on it */

/* One thing for the loop thread to do: a loop_call, or a loop_work's done. */
typedef struct item {
    void (*call)(void *arg);
    loop_work_fn work;
    loop_done_fn done;
    void *arg;
    int rc;
    bool finish; /* loop_finish's marker */
    work_job job;
    struct item *next;
} item;

typedef struct hook {
    void (*fn)(void *arg);
    void *arg;
    struct hook *next;
} hook;

typedef struct channel {
    char *name;
    loop_notify_fn fn;
    void *arg;
    unsigned sent_gen;      /* connection generation its LISTEN was sent on */
    unsigned confirmed_gen; /* ... and answered on */
    struct channel *next;
} channel;

static struct {
    uv_loop_t uv;
    bool inited;
    pthread_t thread;
    work_pool *pool;
    uv_async_t async;
    pthread_mutex_t mu; /* the completion list and `closed` */
    item *head, *tail;
    bool closed;        /* async closed: nothing more reaches the loop */
    bool finishing;
    atomic_bool stopping;
    hook *hooks;        /* newest first: the reverse order of registration */

    /* the LISTEN connection */
    struct {
        channel *channels, *channels_tail;
        PGconn *conn;
        uv_poll_t *poll;
        int poll_events;
        uv_timer_t retry;
        bool retry_inited;
        bool connecting;   /* a connect runs on a worker */
        bool query_busy;   /* a LISTEN query awaits its results */
        unsigned gen;      /* connections made so far */
        bool missed;       /* the next connection follows a failure or a loss */
        int backoff_ms;
    } ls;
} L = {.mu = PTHREAD_MUTEX_INITIALIZER};

uv_loop_t *loop_get(void) {
    return L.inited ? &L.uv : NULL;
}

bool loop_on_loop(void) {
    return L.inited && pthread_equal(pthread_self(), L.thread);
}

bool loop_stopping(void) {
    return atomic_load(&L.stopping);
}

/* ---- the completion list ------------------------------------------------- */

static void run_item(item *it) {
    if (it->call) it->call(it->arg);
    else if (it->done) it->done(it->arg, it->rc);
    free(it);
}

static void on_async_closed(uv_handle_t *h) {
    (void)h;
}

static void on_async(uv_async_t *h) {
    (void)h;
    for (;;) {
        pthread_mutex_lock(&L.mu);
        item *it = L.head;
        L.head = L.tail = NULL;
        pthread_mutex_unlock(&L.mu);
        if (it == NULL) break;
        while (it != NULL) {
            item *next = it->next;
            if (it->finish) {
                L.finishing = true;
                free(it);
            } else {
                run_item(it);
            }
            it = next;
        }
    }
    if (L.finishing) {
        /* The pool is stopped: no work can complete any more. Items a done
         * callback posted while we ran were taken by the loop above. */
        pthread_mutex_lock(&L.mu);
        bool empty = L.head == NULL;
        if (empty) L.closed = true;
        pthread_mutex_unlock(&L.mu);
        if (empty && !uv_is_closing((uv_handle_t *)&L.async)) uv_close((uv_handle_t *)&L.async, on_async_closed);
        else if (!empty) uv_async_send(&L.async);
    }
}

/* false when the loop no longer takes anything (after loop_finish). */
static bool post(item *it) {
    it->next = NULL;
    pthread_mutex_lock(&L.mu);
    if (L.closed) {
        pthread_mutex_unlock(&L.mu);
        return false;
    }
    if (L.tail) L.tail->next = it;
    else L.head = it;
    L.tail = it;
    /* Under the lock: the loop closes the async only with the lock held
     * and the list empty, so no send can reach a closed handle. */
    uv_async_send(&L.async);
    pthread_mutex_unlock(&L.mu);
    return true;
}

int loop_call(void (*fn)(void *arg), void *arg) {
    if (!L.inited || fn == NULL) return OM_E_INVALID_ARGUMENT;
    if (loop_stopping()) return OM_E_UNAVAILABLE;
    item *it = calloc(1, sizeof *it);
    if (it == NULL) return OM_E_NOMEM;
    it->call = fn;
    it->arg = arg;
    if (!post(it)) {
        free(it);
        return OM_E_UNAVAILABLE;
    }
    return 0;
}

static void work_run(work_job *job) {
    item *it = (item *)((char *)job - offsetof(item, job));
    it->rc = it->work(it->arg);
    if (!post(it)) run_item(it); /* cannot happen: the pool stops before loop_finish */
}

int loop_work(loop_work_fn work, loop_done_fn done, void *arg) {
    if (!L.inited || work == NULL) return OM_E_INVALID_ARGUMENT;
    item *it = calloc(1, sizeof *it);
    if (it == NULL) return OM_E_NOMEM;
    it->work = work;
    it->done = done;
    it->arg = arg;
    it->job.run = work_run;
    if (L.pool != NULL && work_submit(L.pool, &it->job, 0)) return 0;
    /* The pool is stopping (or absent): done still runs, on the loop. */
    it->rc = OM_E_UNAVAILABLE;
    if (!post(it)) {
        /* After loop_finish nothing reaches the loop any more: the caller
         * is the loop thread closing its last handles; run done now. */
        run_item(it);
    }
    return 0;
}

int loop_on_stop(void (*fn)(void *arg), void *arg) {
    if (!L.inited || fn == NULL) return OM_E_INVALID_ARGUMENT;
    if (loop_stopping()) return OM_E_UNAVAILABLE;
    hook *h = malloc(sizeof *h);
    if (h == NULL) return OM_E_NOMEM;
    h->fn = fn;
    h->arg = arg;
    h->next = L.hooks;
    L.hooks = h;
    return 0;
}

/* ---- PostgreSQL notifications ------------------------------------------ */

static void listen_connect(void);
static void listen_on_poll(uv_poll_t *h, int status, int events);

static void on_retry(uv_timer_t *t) {
    (void)t;
    listen_connect();
}

static void on_poll_closed(uv_handle_t *h) {
    free(h);
}

static void listen_set_poll(int events) {
    if (L.ls.poll == NULL || events == L.ls.poll_events) return;
    L.ls.poll_events = events;
    uv_poll_start(L.ls.poll, events, listen_on_poll);
}

/* Drop the connection (lost or stopping); reconnect unless stopping. */
static void listen_drop(bool reconnect) {
    if (L.ls.poll != NULL) {
        uv_poll_stop(L.ls.poll); /* before the socket closes */
        uv_close((uv_handle_t *)L.ls.poll, on_poll_closed);
        L.ls.poll = NULL;
        L.ls.poll_events = 0;
    }
    if (L.ls.conn != NULL) {
        PQfinish(L.ls.conn);
        L.ls.conn = NULL;
    }
    L.ls.query_busy = false;
    if (!reconnect || loop_stopping()) return;
    L.ls.missed = true;
    log_warn("LISTEN: connection to PostgreSQL lost; reconnecting in %d ms", L.ls.backoff_ms);
    uv_timer_start(&L.ls.retry, on_retry, (uint64_t)L.ls.backoff_ms, 0);
    L.ls.backoff_ms = L.ls.backoff_ms * 2 > LISTEN_BACKOFF_MAX_MS ? LISTEN_BACKOFF_MAX_MS : L.ls.backoff_ms * 2;
}

/* Send one LISTEN query for every channel not yet sent on this connection. */
static void listen_send_pending(void) {
    if (L.ls.conn == NULL || L.ls.query_busy) return;
    size_t len = 1;
    for (channel *c = L.ls.channels; c; c = c->next)
        if (c->sent_gen != L.ls.gen) len += strlen(c->name) * 2 + 16;
    if (len == 1) return;
    char *sql = malloc(len);
    if (sql == NULL) {
        log_error("LISTEN: out of memory");
        return;
    }
    size_t n = 0;
    sql[0] = '\0';
    for (channel *c = L.ls.channels; c; c = c->next) {
        if (c->sent_gen == L.ls.gen) continue;
        char *id = PQescapeIdentifier(L.ls.conn, c->name, strlen(c->name));
        if (id == NULL) continue;
        n += (size_t)snprintf(sql + n, len - n, "LISTEN %s;", id);
        PQfreemem(id);
        c->sent_gen = L.ls.gen;
    }
    int ok = PQsendQuery(L.ls.conn, sql);
    free(sql);
    if (!ok) {
        log_warn("LISTEN: %s", PQerrorMessage(L.ls.conn));
        listen_drop(true);
        return;
    }
    L.ls.query_busy = true;
    int f = PQflush(L.ls.conn);
    if (f < 0) listen_drop(true);
    else listen_set_poll(f == 1 ? UV_READABLE | UV_WRITABLE : UV_READABLE);
}

/* The LISTEN query answered: channels confirmed on a connection that
 * follows a loss hear "rescan" (payload NULL). */
static void listen_confirmed(void) {
    bool rescan = L.ls.missed;
    L.ls.missed = false;
    for (channel *c = L.ls.channels; c; c = c->next) {
        if (c->sent_gen != L.ls.gen || c->confirmed_gen == L.ls.gen) continue;
        c->confirmed_gen = L.ls.gen;
        if (rescan) c->fn(c->name, NULL, c->arg);
        if (L.ls.conn == NULL) return; /* a callback cannot drop it, but be safe */
    }
}

static void listen_on_poll(uv_poll_t *h, int status, int events) {
    (void)h;
    if (L.ls.conn == NULL) return;
    if (status < 0) {
        log_warn("LISTEN: poll: %s", uv_strerror(status));
        listen_drop(true);
        return;
    }
    if (events & UV_WRITABLE) {
        int f = PQflush(L.ls.conn);
        if (f < 0) {
            listen_drop(true);
            return;
        }
        if (f == 0) listen_set_poll(UV_READABLE);
    }
    if (!(events & UV_READABLE)) return;
    if (!PQconsumeInput(L.ls.conn) || PQstatus(L.ls.conn) != CONNECTION_OK) {
        listen_drop(true);
        return;
    }
    while (L.ls.query_busy && !PQisBusy(L.ls.conn)) {
        PGresult *r = PQgetResult(L.ls.conn);
        if (r == NULL) {
            L.ls.query_busy = false;
            listen_confirmed();
            break;
        }
        if (PQresultStatus(r) != PGRES_COMMAND_OK) log_warn("LISTEN: %s", PQresultErrorMessage(r));
        PQclear(r);
    }
    PGnotify *nt;
    while (L.ls.conn != NULL && (nt = PQnotifies(L.ls.conn)) != NULL) {
        for (channel *c = L.ls.channels; c; c = c->next)
            if (strcmp(c->name, nt->relname) == 0) c->fn(c->name, nt->extra ? nt->extra : "", c->arg);
        PQfreemem(nt);
    }
    listen_send_pending();
}

static int connect_work(void *arg) {
    PGconn **out = arg;
    *out = pg_open_listen();
    return *out != NULL ? 0 : OM_E_UNAVAILABLE;
}

static void connect_done(void *arg, int rc) {
    PGconn **slot = arg;
    PGconn *conn = *slot;
    free(slot);
    L.ls.connecting = false;
    if (loop_stopping()) {
        if (conn != NULL) PQfinish(conn);
        return;
    }
    if (rc != 0 || conn == NULL) {
        L.ls.missed = true;
        uv_timer_start(&L.ls.retry, on_retry, (uint64_t)L.ls.backoff_ms, 0);
        L.ls.backoff_ms = L.ls.backoff_ms * 2 > LISTEN_BACKOFF_MAX_MS ? LISTEN_BACKOFF_MAX_MS : L.ls.backoff_ms * 2;
        return;
    }
    if (PQsetnonblocking(conn, 1) != 0) log_warn("LISTEN: cannot make the connection non-blocking");
    uv_poll_t *p = malloc(sizeof *p);
    if (p == NULL || uv_poll_init(&L.uv, p, PQsocket(conn)) != 0) {
        free(p);
        PQfinish(conn);
        L.ls.missed = true;
        uv_timer_start(&L.ls.retry, on_retry, (uint64_t)L.ls.backoff_ms, 0);
        return;
    }
    L.ls.conn = conn;
    L.ls.poll = p;
    L.ls.poll_events = 0;
    L.ls.gen++;
    L.ls.backoff_ms = LISTEN_BACKOFF_MIN_MS;
    listen_set_poll(UV_READABLE);
    listen_send_pending();
}

static void listen_connect(void) {
    if (L.ls.connecting || L.ls.conn != NULL || loop_stopping()) return;
    PGconn **slot = calloc(1, sizeof *slot);
    if (slot == NULL) return;
    L.ls.connecting = true;
    if (loop_work(connect_work, connect_done, slot) != 0) {
        L.ls.connecting = false;
        free(slot);
    }
}

int loop_listen(const char *channel_name, loop_notify_fn fn, void *arg) {
    if (!loop_on_loop() || channel_name == NULL || channel_name[0] == '\0' || fn == NULL)
        return OM_E_INVALID_ARGUMENT;
    if (loop_stopping()) return OM_E_UNAVAILABLE;
    channel *c = calloc(1, sizeof *c);
    if (c == NULL) return OM_E_NOMEM;
    c->name = strdup(channel_name);
    if (c->name == NULL) {
        free(c);
        return OM_E_NOMEM;
    }
    c->fn = fn;
    c->arg = arg;
    if (L.ls.channels_tail) L.ls.channels_tail->next = c;
    else L.ls.channels = c;
    L.ls.channels_tail = c;
    if (!L.ls.retry_inited) {
        uv_timer_init(&L.uv, &L.ls.retry);
        L.ls.retry_inited = true;
        L.ls.backoff_ms = LISTEN_BACKOFF_MIN_MS;
    }
    if (L.ls.conn != NULL) listen_send_pending();
    else listen_connect();
    return 0;
}

static void listen_stop(void) {
    listen_drop(false);
    if (L.ls.retry_inited && !uv_is_closing((uv_handle_t *)&L.ls.retry))
        uv_close((uv_handle_t *)&L.ls.retry, NULL);
}

static void listen_free(void) {
    while (L.ls.channels != NULL) {
        channel *c = L.ls.channels;
        L.ls.channels = c->next;
        free(c->name);
        free(c);
    }
    L.ls.channels_tail = NULL;
}

/* ---- life cycle -------------------------------------------------------- */

int loop_init(work_pool *pool) {
    if (L.inited) return OM_E_INTERNAL;
    int rc = uv_loop_init(&L.uv);
    if (rc != 0) {
        log_error("loop: %s", uv_strerror(rc));
        return OM_E_INTERNAL;
    }
    rc = uv_async_init(&L.uv, &L.async, on_async);
    if (rc != 0) {
        log_error("loop: %s", uv_strerror(rc));
        uv_loop_close(&L.uv);
        return OM_E_INTERNAL;
    }
    L.thread = pthread_self();
    L.pool = pool;
    L.head = L.tail = NULL;
    L.closed = L.finishing = false;
    atomic_store(&L.stopping, false);
    memset(&L.ls, 0, sizeof L.ls);
    L.inited = true;
    return 0;
}

void loop_begin_stop(void) {
    if (!L.inited || atomic_exchange(&L.stopping, true)) return;
    while (L.hooks != NULL) {
        hook *h = L.hooks;
        L.hooks = h->next;
        h->fn(h->arg);
        free(h);
    }
    listen_stop();
}

void loop_finish(void) {
    item *it = calloc(1, sizeof *it);
    if (it == NULL) {
        /* Cannot queue the marker: wake the loop with a flag instead. */
        pthread_mutex_lock(&L.mu);
        L.finishing = true;
        pthread_mutex_unlock(&L.mu);
        uv_async_send(&L.async);
        return;
    }
    it->finish = true;
    if (!post(it)) free(it);
}

static void log_handle(uv_handle_t *h, void *arg) {
    (void)arg;
    log_error("loop: a %s handle is still open%s", uv_handle_type_name(uv_handle_get_type(h)),
              uv_is_closing(h) ? " (closing)" : "");
}

int loop_close(void) {
    if (!L.inited) return 0;
    int rc = uv_loop_close(&L.uv);
    if (rc != 0) {
        log_error("loop: uv_loop_close: %s", uv_strerror(rc));
        uv_walk(&L.uv, log_handle, NULL);
        return rc;
    }
    listen_free();
    while (L.hooks != NULL) {
        hook *h = L.hooks;
        L.hooks = h->next;
        free(h);
    }
    L.inited = false;
    L.pool = NULL;
    return 0;
}
