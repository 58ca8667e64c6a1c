/* smtp.c — SMTP with libcurl's multi interface on libuv (docs/common/smtp.md;
 * the notifier's NOTE-01, issue 15): curl_multi_socket_action driven by one uv_poll per socket and
 * one uv_timer, so many sessions are in flight without a thread each. One
 * multi handle holds the connection cache: an idle SMTP session to the
 * server is reused by the next message (a new MAIL FROM; no new connection,
 * EHLO, STARTTLS or AUTH). libcurl's SMTP sends one message at a time per
 * connection (no pipelining), so the sessions in flight are bounded by
 * max_connections (CURLMOPT_MAX_HOST_CONNECTIONS); messages
 * beyond it wait here, in order, and their timeouts start only when they are
 * handed to libcurl.
 *
 * The engines run on loops and threads of their own (smtp_config.threads,
 * each with its share of the connections), not on the process loop:
 * libcurl 7.88's SMTP is not wholly non-blocking. After the message body it
 * sends the final "." and then waits for the server's reply inside
 * curl_multi_socket_action (smtp_done -> smtp_block_statemach), for up to
 * CURLOPT_SERVER_RESPONSE_TIMEOUT. On the process loop that wait would stall
 * every timer, notification and the SIGTERM drain behind a slow SMTP server;
 * here it stalls only the other SMTP sessions of that engine, for one round
 * trip per message — hence several engines (docs/common/smtp.md).
 * They start on demand (engine_more): none while the caller is idle, the
 * next one when those running have their share of connections in hand.
 *
 * smtp:// or smtps:// URL, optional STARTTLS, credentials and timeouts from
 * the caller's smtp_config. Failures are classified: a 5xx reply is
 * permanent, everything else (no connection, timeouts, 4xx) is worth
 * retrying (the notifier's NOTE-03). Nothing here knows of the notifier. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <curl/curl.h>
#include <uv.h>

#include "log.h"
#include "om_err.h"
#include "smtp.h"

/* A connection idle for longer is not reused (servers drop idle clients;
 * RFC 5321 4.5.3.2 lets them after 5 minutes). */
#define SMTP_REUSE_MAX_S 30L
/* Sockets libcurl may hold open at once (connections in flight + cached). */
#define SMTP_MAX_SOCKETS 1024
#define SMTP_MAX_THREADS 16

typedef struct job {
    struct job *next;
    CURL *h;
    struct curl_slist *rcpts;
    char *msg;
    size_t len, off;
    char rcpt[330];
    smtp_done_fn done;
    void *arg;
    struct engine *eng; /* where it went (the caller's count) */
    int rc;
    char err[512];
    char curl_err[CURL_ERROR_SIZE];
} job;

typedef struct sock_ctx {
    uv_poll_t poll;
    curl_socket_t fd;
    struct sock_ctx *prev, *next;
} sock_ctx;

typedef struct jlist {
    job *head, *tail;
} jlist;

static void jl_push(jlist *l, job *j) {
    j->next = NULL;
    if (l->tail) l->tail->next = j;
    else l->head = j;
    l->tail = j;
}

static job *jl_pop(jlist *l) {
    job *j = l->head;
    if (j) {
        l->head = j->next;
        if (l->head == NULL) l->tail = NULL;
        j->next = NULL;
    }
    return j;
}

/* One engine: a thread, its loop and its multi handle. */
typedef struct engine {
    pthread_t th;
    uv_loop_t loop;
    uv_async_t wake; /* inbox or stop */
    uv_timer_t timer;
    CURLM *multi;
    jlist inbox;   /* from smtp_send, under sm.mu */
    jlist waiting; /* not yet handed to libcurl */
    job *active;   /* handed to libcurl */
    int n_active;
    int max_active; /* its share of max_connections */
    int assigned;   /* caller's side: sent to it and not yet done */
    sock_ctx *socks; /* uv_poll handles not yet closing */
} engine;

static struct {
    const smtp_config *cfg;
    bool started;
    char mail_from[330];
    /* the caller's side (its loop thread) */
    uv_async_t back; /* outcomes ready */
    int in_flight;   /* sent and not yet done */
    unsigned next;   /* round robin over the engines */
    engine eng[SMTP_MAX_THREADS];
    int n_eng; /* engines started (their threads run) */
    int n_max; /* smtp_config.threads, at most max_connections */
    /* shared, under mu */
    pthread_mutex_t mu;
    jlist outbox; /* finished, for the caller's loop */
    bool stop;
    curl_socket_t open_fds[SMTP_MAX_SOCKETS]; /* every socket libcurl has open */
    int n_open;
} sm = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* The engine whose thread this is (engine threads only). */
static __thread engine *E;

int smtp_global_init(void) { return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : OM_E_INTERNAL; }

void smtp_global_cleanup(void) { curl_global_cleanup(); }

/* ---- sockets: libcurl opens and closes them, the engine watches them ------- */

static curl_socket_t open_cb(void *arg, curlsocktype purpose, struct curl_sockaddr *a) {
    (void)arg, (void)purpose;
    curl_socket_t fd = CURL_SOCKET_BAD;
    pthread_mutex_lock(&sm.mu);
    if (!sm.stop && sm.n_open < SMTP_MAX_SOCKETS) {
        fd = socket(a->family, a->socktype, a->protocol);
        if (fd != CURL_SOCKET_BAD) sm.open_fds[sm.n_open++] = fd;
    }
    pthread_mutex_unlock(&sm.mu);
    return fd;
}

/* Under mu, so that smtp_stop never shuts down a number reused since. */
static int close_cb(void *arg, curl_socket_t fd) {
    (void)arg;
    pthread_mutex_lock(&sm.mu);
    for (int i = 0; i < sm.n_open; i++)
        if (sm.open_fds[i] == fd) {
            sm.open_fds[i] = sm.open_fds[--sm.n_open];
            break;
        }
    int rc = close(fd);
    pthread_mutex_unlock(&sm.mu);
    return rc;
}

static void sock_closed(uv_handle_t *h) { free(h->data); }

static void sock_release(sock_ctx *s) {
    if (s->prev) s->prev->next = s->next;
    else E->socks = s->next;
    if (s->next) s->next->prev = s->prev;
    uv_close((uv_handle_t *)&s->poll, sock_closed);
}

static void check_done(void);

static void poll_cb(uv_poll_t *p, int status, int events) {
    sock_ctx *s = p->data;
    int flags = 0;
    if (status < 0) flags = CURL_CSELECT_ERR;
    if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
    int running = 0;
    curl_multi_socket_action(E->multi, s->fd, flags, &running);
    check_done();
}

static int socket_cb(CURL *e, curl_socket_t fd, int what, void *userp, void *socketp) {
    (void)e, (void)userp;
    sock_ctx *s = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (s != NULL) {
            curl_multi_assign(E->multi, fd, NULL);
            sock_release(s);
        }
        return 0;
    }
    if (s == NULL) {
        if ((s = calloc(1, sizeof *s)) == NULL) return -1;
        if (uv_poll_init_socket(&E->loop, &s->poll, fd) != 0) {
            free(s);
            return -1;
        }
        s->fd = fd;
        s->poll.data = s;
        s->next = E->socks;
        if (E->socks) E->socks->prev = s;
        E->socks = s;
        curl_multi_assign(E->multi, fd, s);
    }
    int ev = ((what & CURL_POLL_IN) ? UV_READABLE : 0) | ((what & CURL_POLL_OUT) ? UV_WRITABLE : 0);
    uv_poll_start(&s->poll, ev, poll_cb);
    return 0;
}

static void timer_cb(uv_timer_t *t) {
    (void)t;
    int running = 0;
    curl_multi_socket_action(E->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done();
}

static int timer_fn(CURLM *m, long timeout_ms, void *userp) {
    (void)m, (void)userp;
    if (timeout_ms < 0) uv_timer_stop(&E->timer);
    else uv_timer_start(&E->timer, timer_cb, (uint64_t)timeout_ms, 0);
    return 0;
}

/* ---- messages (engine thread) ----------------------------------------------- */

static size_t read_cb(char *buf, size_t size, size_t nitems, void *arg) {
    job *j = arg;
    size_t n = size * nitems;
    if (n > j->len - j->off) n = j->len - j->off;
    memcpy(buf, j->msg + j->off, n);
    j->off += n;
    return n;
}

/* The outcome goes back to the caller's loop. */
static void job_finish(job *j, int rc, const char *err) {
    if (j->h) curl_easy_cleanup(j->h);
    j->h = NULL;
    curl_slist_free_all(j->rcpts);
    j->rcpts = NULL;
    free(j->msg);
    j->msg = NULL;
    j->rc = rc;
    snprintf(j->err, sizeof j->err, "%s", err);
    pthread_mutex_lock(&sm.mu);
    jl_push(&sm.outbox, j);
    pthread_mutex_unlock(&sm.mu);
    uv_async_send(&sm.back);
}

static void unlink_active(job *j) {
    for (job **pp = &E->active; *pp; pp = &(*pp)->next)
        if (*pp == j) {
            *pp = j->next;
            break;
        }
    j->next = NULL;
    E->n_active--;
}

/* Hands waiting messages to libcurl while fewer than the connection limit
 * are in flight. */
static void start_waiting(void) {
    pthread_mutex_lock(&sm.mu);
    bool stopping = sm.stop; /* the rest wait for engine_close: never sent */
    pthread_mutex_unlock(&sm.mu);
    if (stopping) return;
    job *j;
    while (E->n_active < E->max_active && (j = jl_pop(&E->waiting)) != NULL) {
        CURL *h = j->h = curl_easy_init();
        j->rcpts = curl_slist_append(NULL, j->rcpt);
        if (h == NULL || j->rcpts == NULL) {
            job_finish(j, OM_E_UNAVAILABLE, "curl_easy_init failed");
            continue;
        }
        const smtp_config *cfg = sm.cfg;
        curl_easy_setopt(h, CURLOPT_URL, cfg->url);
        curl_easy_setopt(h, CURLOPT_MAIL_FROM, sm.mail_from);
        curl_easy_setopt(h, CURLOPT_MAIL_RCPT, j->rcpts);
        curl_easy_setopt(h, CURLOPT_READFUNCTION, read_cb);
        curl_easy_setopt(h, CURLOPT_READDATA, j);
        curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
        curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE, (curl_off_t)j->len);
        curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(h, CURLOPT_PRIVATE, j);
        curl_easy_setopt(h, CURLOPT_ERRORBUFFER, j->curl_err);
        curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)cfg->timeout_ms);
        curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)cfg->timeout_ms * 2);
        /* each reply, the final one after the body too (the blocking wait) */
        curl_easy_setopt(h, CURLOPT_SERVER_RESPONSE_TIMEOUT,
                         cfg->timeout_ms >= 2000 ? (long)cfg->timeout_ms / 1000 : 1L);
        curl_easy_setopt(h, CURLOPT_MAXAGE_CONN, SMTP_REUSE_MAX_S);
        curl_easy_setopt(h, CURLOPT_OPENSOCKETFUNCTION, open_cb);
        curl_easy_setopt(h, CURLOPT_CLOSESOCKETFUNCTION, close_cb);
        if (cfg->starttls) curl_easy_setopt(h, CURLOPT_USE_SSL, (long)CURLUSESSL_ALL);
        if (cfg->ca_file != NULL) curl_easy_setopt(h, CURLOPT_CAINFO, cfg->ca_file);
        if (cfg->user != NULL) curl_easy_setopt(h, CURLOPT_USERNAME, cfg->user);
        if (cfg->password != NULL) curl_easy_setopt(h, CURLOPT_PASSWORD, cfg->password);
        if (curl_multi_add_handle(E->multi, h) != CURLM_OK) {
            job_finish(j, OM_E_UNAVAILABLE, "curl_multi_add_handle failed");
            continue;
        }
        j->next = E->active;
        E->active = j;
        E->n_active++;
    }
}

static void check_done(void) {
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(E->multi, &left)) != NULL) {
        if (m->msg != CURLMSG_DONE) continue;
        job *j = NULL;
        CURLcode cc = m->data.result;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&j);
        long code = 0;
        curl_easy_getinfo(m->easy_handle, CURLINFO_RESPONSE_CODE, &code);
        curl_multi_remove_handle(E->multi, m->easy_handle);
        unlink_active(j);
        if (cc == CURLE_OK) {
            job_finish(j, 0, "");
            continue;
        }
        char err[512];
        snprintf(err, sizeof err, "SMTP %ld %s: %s", code, curl_easy_strerror(cc), j->curl_err);
        /* NOTE-03: a 5xx reply will not change by retrying; the rest may */
        job_finish(j, (code >= 500 && code < 600) ? OM_E_FAILED_PRECONDITION : OM_E_UNAVAILABLE, err);
    }
    start_waiting();
}

/* Stop: every transfer aborted, every handle closed; uv_run then returns. */
static void engine_close(void) {
    while (E->active != NULL) {
        job *j = E->active;
        curl_multi_remove_handle(E->multi, j->h);
        unlink_active(j);
        job_finish(j, OM_E_UNAVAILABLE, "stopping: the SMTP transfer was aborted");
    }
    job *j;
    while ((j = jl_pop(&E->waiting)) != NULL) job_finish(j, OM_E_CANCELLED, "stopping: not sent");
    curl_multi_cleanup(E->multi); /* the cached connections: their sockets are shut down, no QUIT awaited */
    E->multi = NULL;
    while (E->socks != NULL) sock_release(E->socks);
    uv_close((uv_handle_t *)&E->timer, NULL);
    uv_close((uv_handle_t *)&E->wake, NULL);
}

static void wake_cb(uv_async_t *a) {
    (void)a;
    pthread_mutex_lock(&sm.mu);
    bool stop = sm.stop;
    jlist in = E->inbox;
    E->inbox = (jlist){0};
    pthread_mutex_unlock(&sm.mu);
    job *j;
    while ((j = jl_pop(&in)) != NULL) jl_push(&E->waiting, j);
    if (stop) {
        engine_close();
        return;
    }
    start_waiting();
}

static void *engine_main(void *arg) {
    E = arg;
    uv_run(&E->loop, UV_RUN_DEFAULT);
    return NULL;
}

/* ---- the caller's side ------------------------------------------------------------ */

/* On the caller's loop: the outcomes, in the order they finished. */
static void back_cb(uv_async_t *a) {
    (void)a;
    pthread_mutex_lock(&sm.mu);
    jlist out = sm.outbox;
    sm.outbox = (jlist){0};
    pthread_mutex_unlock(&sm.mu);
    job *j;
    while ((j = jl_pop(&out)) != NULL) {
        sm.in_flight--;
        j->eng->assigned--;
        j->done(j->arg, j->rc, j->err);
        free(j);
    }
}

/* Caller's thread, before the engine's thread runs (or after it ended). */
static void engine_abandon(engine *e) {
    if (e->multi) curl_multi_cleanup(e->multi);
    e->multi = NULL;
    uv_close((uv_handle_t *)&e->timer, NULL);
    uv_close((uv_handle_t *)&e->wake, NULL);
    uv_run(&e->loop, UV_RUN_DEFAULT);
    uv_loop_close(&e->loop);
}

static int engine_init(engine *e, int max_active) {
    memset(e, 0, sizeof *e);
    e->max_active = max_active;
    if (uv_loop_init(&e->loop) != 0) return OM_E_INTERNAL;
    uv_timer_init(&e->loop, &e->timer);
    uv_async_init(&e->loop, &e->wake, wake_cb);
    if ((e->multi = curl_multi_init()) == NULL) {
        engine_abandon(e);
        return OM_E_INTERNAL;
    }
    curl_multi_setopt(e->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(e->multi, CURLMOPT_TIMERFUNCTION, timer_fn);
    curl_multi_setopt(e->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)max_active);
    long total = sm.cfg->max_total_connections / sm.n_max;
    if (total < max_active) total = max_active;
    curl_multi_setopt(e->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, total);
    /* the cache keeps one idle session per connection allowed */
    curl_multi_setopt(e->multi, CURLMOPT_MAXCONNECTS, total);
    /* the engine's thread takes no signals (the process loop's uv_signal does) */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int trc = pthread_create(&e->th, NULL, engine_main, e);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (trc != 0) {
        engine_abandon(e);
        return OM_E_INTERNAL;
    }
    return 0;
}

static void engines_join(void) {
    pthread_mutex_lock(&sm.mu);
    sm.stop = true;
    /* No QUIT and no reply awaited: a hung server could hold either for
     * the whole response timeout (SPEC 9: exit within 5 s). Every socket,
     * busy or cached, is shut down first; libcurl, also in its blocking
     * wait for the reply to the body, then fails at once. */
    for (int i = 0; i < sm.n_open; i++) shutdown(sm.open_fds[i], SHUT_RDWR);
    pthread_mutex_unlock(&sm.mu);
    for (int i = 0; i < sm.n_eng; i++) uv_async_send(&sm.eng[i].wake);
    for (int i = 0; i < sm.n_eng; i++) {
        pthread_join(sm.eng[i].th, NULL);
        if (uv_loop_close(&sm.eng[i].loop) != 0) log_error("smtp: an engine's loop did not close cleanly");
    }
    sm.n_eng = 0;
}

int smtp_start(uv_loop_t *loop, const smtp_config *cfg) {
    if (sm.started) return OM_E_FAILED_PRECONDITION;
    sm.cfg = cfg;
    sm.stop = false;
    sm.in_flight = 0;
    sm.n_open = 0;
    sm.next = 0;
    sm.outbox = (jlist){0};
    snprintf(sm.mail_from, sizeof sm.mail_from, "<%s>", cfg->mail_from);
    if (uv_async_init(loop, &sm.back, back_cb) != 0) return OM_E_INTERNAL;
    int n = cfg->threads < 1 ? 1 : cfg->threads > SMTP_MAX_THREADS ? SMTP_MAX_THREADS : cfg->threads;
    if (n > cfg->max_connections) n = cfg->max_connections;
    sm.n_max = n;
    sm.n_eng = 0; /* engines start on demand (engine_more): none at rest */
    sm.started = true;
    return 0;
}

/* Starts the next engine when every running one has its share of the
 * connections in hand (or none runs yet): an idle caller has no engine
 * thread, a light load one, a backlog all of smtp_config.threads. Started
 * engines stay until the stop. False when none could be started. */
static bool engine_more(void) {
    for (int i = 0; i < sm.n_eng; i++)
        if (sm.eng[i].assigned < sm.eng[i].max_active) return true;
    if (sm.n_eng < sm.n_max) {
        int i = sm.n_eng;
        /* the connections shared out: the first engines take the rest */
        int share = sm.cfg->max_connections / sm.n_max + (i < sm.cfg->max_connections % sm.n_max ? 1 : 0);
        if (engine_init(&sm.eng[i], share) == 0) {
            sm.n_eng++;
            log_info("smtp: engine %d of at most %d started (%d connections)", i + 1, sm.n_max, share);
        } else {
            log_warn("smtp: cannot start engine %d: the running ones take the emails", i + 1);
        }
    }
    return sm.n_eng > 0;
}

int smtp_send(const char *rcpt, char *msg, size_t len, smtp_done_fn done, void *arg) {
    if (!sm.started) {
        free(msg);
        return OM_E_UNAVAILABLE;
    }
    if (!engine_more()) {
        free(msg);
        return OM_E_UNAVAILABLE;
    }
    job *j = calloc(1, sizeof *j);
    if (j == NULL) {
        free(msg);
        return OM_E_NOMEM;
    }
    snprintf(j->rcpt, sizeof j->rcpt, "<%s>", rcpt);
    j->msg = msg;
    j->len = len;
    j->done = done;
    j->arg = arg;
    sm.in_flight++;
    /* the engine with the fewest emails in hand (round robin among equals) */
    engine *e = &sm.eng[sm.next++ % (unsigned)sm.n_eng];
    for (int i = 0; i < sm.n_eng; i++)
        if (sm.eng[i].assigned < e->assigned) e = &sm.eng[i];
    e->assigned++;
    j->eng = e;
    pthread_mutex_lock(&sm.mu);
    jl_push(&e->inbox, j);
    pthread_mutex_unlock(&sm.mu);
    uv_async_send(&e->wake);
    return 0;
}

int smtp_in_flight(void) { return sm.in_flight; }

void smtp_stop(void) {
    if (!sm.started) return;
    sm.started = false;
    engines_join();
    back_cb(&sm.back); /* every outcome, the aborted ones too */
    uv_close((uv_handle_t *)&sm.back, NULL);
}
