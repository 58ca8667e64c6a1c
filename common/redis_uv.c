/* redis_uv.c — hiredis async on the process loop (redis_uv.h,
 * docs/common/redis_uv.md).
 *
 * One redisAsyncContext at a time per redis_uv, watched by a uv_poll_t that
 * lives in a small ruv_sock of its own (a new socket per connect, and
 * uv_close is asynchronous). Two timers: t_conn (connect deadline, then the
 * reconnect backoff) and t_cmd (the earliest command deadline). Every way a
 * context ends — refused connect, read error, our own drop, close — goes
 * through hiredis' free path, which runs the pending callbacks with a NULL
 * reply and then the adapter's cleanup hook: ruv_lost is called from there
 * only, so a loss is handled once. */
#include "redis_uv.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/async.h>

#include "cache_internal.h"
#include "log.h"

#define RUV_DEFAULT_TIMEOUT_MS 1000
#define RUV_BACKOFF_MIN_MS 100
#define RUV_BACKOFF_MAX_MS 2000

typedef struct ruv_req {
    struct ruv_req *prev, *next;
    redis_uv *r;
    redis_uv_reply_fn fn;
    void *arg;
    uint64_t deadline;    /* uv_now ms */
    int timeout_ms;
    bool timed_out;
} ruv_req;

typedef struct ruv_sock {
    uv_poll_t poll;
    redisAsyncContext *ac;
    redis_uv *r;
    int events;
    bool closed;          /* uv_close called: the hooks do nothing more */
} ruv_sock;

enum ruv_state { RUV_DOWN, RUV_CONNECTING, RUV_AUTHING, RUV_UP, RUV_DROPPING };

struct redis_uv {
    uv_loop_t *loop;
    char *host;
    int port;
    char *password;
    int connect_ms, command_ms, backoff_min, backoff_max, backoff;
    redis_uv_state_fn on_state;
    void *arg;
    uv_timer_t t_conn;
    uv_timer_t t_cmd;
    uint64_t cmd_armed;   /* deadline t_cmd is set for, 0 when stopped */
    redisAsyncContext *ac;
    enum ruv_state st;
    ruv_req reqs;         /* list sentinel */
    size_t npending;
    const char *why;      /* reason of our own drop, for the callbacks */
    char why_buf[160];
    bool was_up, reported_down, closing;
    int handles;          /* open uv handles (timers, sockets) */
};

static void ruv_connect(redis_uv *r);

static void ruv_maybe_free(redis_uv *r) {
    if (!r->closing || r->handles > 0 || r->ac != NULL) return;
    free(r->host);
    free(r->password);
    free(r);
}

static void ruv_handle_closed(uv_handle_t *h) {
    redis_uv *r = h->data;
    r->handles--;
    ruv_maybe_free(r);
}

/* ---- the adapter: hiredis' event hooks onto a uv_poll_t ------------------- */

static void ruv_sock_closed(uv_handle_t *h) {
    ruv_sock *s = h->data;
    redis_uv *r = s->r;
    free(s);
    r->handles--;
    ruv_maybe_free(r);
}

static void ruv_drop(redis_uv *r, const char *why);

static void ruv_poll_cb(uv_poll_t *h, int status, int events) {
    ruv_sock *s = h->data;
    if (s->closed) return;
    redisAsyncContext *ac = s->ac;
    if (status < 0) {
        /* libuv stopped the handle (EPOLLERR/HUP). hiredis' own adapter
         * returns here and the connect never completes nor fails. */
        if (!(ac->c.flags & REDIS_CONNECTED)) {
            redisAsyncHandleWrite(ac); /* reads SO_ERROR, fails the connect */
            if (s->closed) return;
        }
        snprintf(s->r->why_buf, sizeof s->r->why_buf, "socket error: %s", uv_strerror(status));
        ruv_drop(s->r, s->r->why_buf);
        return;
    }
    if (events & UV_READABLE) redisAsyncHandleRead(ac);
    if (!s->closed && (events & UV_WRITABLE)) redisAsyncHandleWrite(ac);
}

static void ruv_sock_update(ruv_sock *s, int add, int del) {
    if (s->closed) return;
    s->events = (s->events | add) & ~del;
    if (s->events != 0)
        uv_poll_start(&s->poll, s->events, ruv_poll_cb);
    else
        uv_poll_stop(&s->poll);
}

static void ruv_add_read(void *p) { ruv_sock_update(p, UV_READABLE, 0); }
static void ruv_del_read(void *p) { ruv_sock_update(p, 0, UV_READABLE); }
static void ruv_add_write(void *p) { ruv_sock_update(p, UV_WRITABLE, 0); }
static void ruv_del_write(void *p) { ruv_sock_update(p, 0, UV_WRITABLE); }

static void ruv_lost(redis_uv *r, redisAsyncContext *ac);

/* hiredis frees the context (it may call this twice): stop watching the
 * socket before hiredis closes it, and handle the loss. */
static void ruv_cleanup(void *p) {
    ruv_sock *s = p;
    if (s->closed) return;
    s->closed = true;
    uv_close((uv_handle_t *)&s->poll, ruv_sock_closed);
    ruv_lost(s->r, s->ac);
}

/* ---- connection state ---------------------------------------------------- */

static void ruv_retry_start(redis_uv *r);

static void ruv_report_down(redis_uv *r, const char *err) {
    if (!r->reported_down)
        log_warn("Redis at %s:%d %s: %s", r->host, r->port,
                 r->was_up ? "connection lost" : "unreachable", err);
    r->reported_down = true;
    if (r->on_state != NULL) r->on_state(r, false, err, r->arg);
}

static void ruv_lost(redis_uv *r, redisAsyncContext *ac) {
    if (r->ac != ac) return;
    char err[200];
    snprintf(err, sizeof err, "%s",
             r->why != NULL ? r->why : ac->err ? ac->errstr : "connection closed");
    r->ac = NULL;
    r->st = RUV_DOWN;
    r->why = NULL;
    uv_timer_stop(&r->t_cmd);
    r->cmd_armed = 0;
    if (r->closing) {
        ruv_maybe_free(r);
        return;
    }
    ruv_retry_start(r);
    ruv_report_down(r, err);
}

static void ruv_up(redis_uv *r) {
    r->st = RUV_UP;
    r->backoff = r->backoff_min;
    uv_timer_stop(&r->t_conn);
    if (r->reported_down) log_info("connected to Redis at %s:%d", r->host, r->port);
    r->reported_down = false;
    r->was_up = true;
    if (r->on_state != NULL) r->on_state(r, true, NULL, r->arg);
}

/* Give up on the current context: its pending commands fail with `why`. */
static void ruv_drop(redis_uv *r, const char *why) {
    if (r->ac == NULL || r->st == RUV_DROPPING) return;
    r->why = why;
    r->st = RUV_DROPPING;
    redisAsyncFree(r->ac); /* deferred by hiredis when inside its callback */
}

static void ruv_auth_reply(redisAsyncContext *ac, void *reply, void *priv) {
    redis_uv *r = priv;
    redisReply *rep = reply;
    if (rep == NULL || r->ac != ac || r->st != RUV_AUTHING) return;
    if (rep->type == REDIS_REPLY_ERROR) {
        snprintf(r->why_buf, sizeof r->why_buf, "AUTH refused: %s", rep->str);
        ruv_drop(r, r->why_buf);
        return;
    }
    ruv_up(r);
}

static void ruv_on_connect(const redisAsyncContext *cac, int status) {
    redisAsyncContext *ac = (redisAsyncContext *)cac;
    redis_uv *r = ac->data;
    if (status != REDIS_OK || r->ac != ac || r->st != RUV_CONNECTING) return; /* freed next */
    if (r->password != NULL && r->password[0] != '\0') {
        r->st = RUV_AUTHING;
        const char *argv[] = {"AUTH", r->password};
        if (redisAsyncCommandArgv(ac, ruv_auth_reply, r, 2, argv, NULL) != REDIS_OK)
            ruv_drop(r, "cannot send AUTH");
        return;
    }
    ruv_up(r);
}

/* t_conn: the connect deadline while connecting, the backoff while down. */
static void ruv_conn_timer(uv_timer_t *t) {
    redis_uv *r = t->data;
    if (r->closing) return;
    if (r->st == RUV_CONNECTING || r->st == RUV_AUTHING) {
        snprintf(r->why_buf, sizeof r->why_buf, "connect timed out after %d ms", r->connect_ms);
        ruv_drop(r, r->why_buf);
    } else if (r->st == RUV_DOWN) {
        ruv_connect(r);
    }
}

static void ruv_retry_start(redis_uv *r) {
    uv_timer_start(&r->t_conn, ruv_conn_timer, (uint64_t)r->backoff, 0);
    r->backoff = r->backoff * 2 > r->backoff_max ? r->backoff_max : r->backoff * 2;
}

static void ruv_connect(redis_uv *r) {
    char err[200];
    redisAsyncContext *ac = redisAsyncConnect(r->host, r->port);
    if (ac == NULL || ac->err) {
        snprintf(err, sizeof err, "%s", ac != NULL ? ac->errstr : "out of memory");
        if (ac != NULL) redisAsyncFree(ac);
        ruv_retry_start(r);
        ruv_report_down(r, err);
        return;
    }
    ruv_sock *s = calloc(1, sizeof *s);
    if (s == NULL || uv_poll_init_socket(r->loop, &s->poll, ac->c.fd) != 0) {
        free(s);
        redisAsyncFree(ac);
        ruv_retry_start(r);
        ruv_report_down(r, "cannot watch the socket");
        return;
    }
    s->poll.data = s;
    s->ac = ac;
    s->r = r;
    r->handles++;
    ac->data = r;
    ac->ev.data = s;
    ac->ev.addRead = ruv_add_read;
    ac->ev.delRead = ruv_del_read;
    ac->ev.addWrite = ruv_add_write;
    ac->ev.delWrite = ruv_del_write;
    ac->ev.cleanup = ruv_cleanup;
    r->ac = ac;
    r->st = RUV_CONNECTING;
    uv_timer_start(&r->t_conn, ruv_conn_timer, (uint64_t)r->connect_ms, 0);
    redisAsyncSetConnectCallback(ac, ruv_on_connect); /* waits for writable */
}

/* ---- commands ------------------------------------------------------------ */

static void ruv_cmd_timer(uv_timer_t *t);

/* t_cmd fires at the earliest deadline it knows of; replies do not re-arm
 * it (an early wake-up finds nothing expired and sets the next one). */
static void ruv_cmd_arm(redis_uv *r, uint64_t deadline) {
    if (r->cmd_armed != 0 && r->cmd_armed <= deadline) return;
    uint64_t now = uv_now(r->loop);
    r->cmd_armed = deadline;
    uv_timer_start(&r->t_cmd, ruv_cmd_timer, deadline > now ? deadline - now : 0, 0);
}

static void ruv_cmd_timer(uv_timer_t *t) {
    redis_uv *r = t->data;
    r->cmd_armed = 0;
    uint64_t now = uv_now(r->loop), next = 0;
    bool expired = false;
    for (ruv_req *q = r->reqs.next; q != &r->reqs; q = q->next) {
        if (q->deadline <= now) {
            q->timed_out = true;
            expired = true;
        } else if (next == 0 || q->deadline < next) {
            next = q->deadline;
        }
    }
    if (expired) {
        ruv_drop(r, "connection dropped: another command on it timed out");
        return;
    }
    if (next != 0) ruv_cmd_arm(r, next);
}

static void ruv_reply(redisAsyncContext *ac, void *reply, void *priv) {
    ruv_req *q = priv;
    redis_uv *r = q->r;
    q->prev->next = q->next;
    q->next->prev = q->prev;
    r->npending--;
    char err[200];
    const char *e = NULL;
    if (reply == NULL) {
        if (q->timed_out)
            snprintf(err, sizeof err, "timed out after %d ms", q->timeout_ms);
        else
            snprintf(err, sizeof err, "%s",
                     r->why != NULL ? r->why : ac->err ? ac->errstr : "connection lost");
        e = err;
    }
    redis_uv_reply_fn fn = q->fn;
    void *arg = q->arg;
    free(q);
    if (fn != NULL) fn(r, reply, e, arg);
}

int redis_uv_command(redis_uv *r, int argc, const char **argv, const size_t *lens, int timeout_ms,
                     redis_uv_reply_fn fn, void *arg) {
    if (r == NULL || r->closing || r->st != RUV_UP || argc <= 0) return -1;
    ruv_req *q = calloc(1, sizeof *q);
    if (q == NULL) return -1;
    q->r = r;
    q->fn = fn;
    q->arg = arg;
    q->timeout_ms = timeout_ms > 0 ? timeout_ms : r->command_ms;
    q->deadline = uv_now(r->loop) + (uint64_t)q->timeout_ms;
    if (redisAsyncCommandArgv(r->ac, ruv_reply, q, argc, argv, lens) != REDIS_OK) {
        free(q);
        return -1;
    }
    q->prev = r->reqs.prev;
    q->next = &r->reqs;
    r->reqs.prev->next = q;
    r->reqs.prev = q;
    r->npending++;
    ruv_cmd_arm(r, q->deadline);
    return 0;
}

size_t redis_uv_pending(const redis_uv *r) { return r->npending; }

bool redis_uv_connected(const redis_uv *r) { return r != NULL && r->st == RUV_UP; }

/* ---- open / close -------------------------------------------------------- */

redis_uv *redis_uv_open(uv_loop_t *loop, const redis_uv_opts *o) {
    const char *host = o->host;
    int port = o->port, timeout = 0;
    const char *cfg_host;
    int cfg_port, cfg_timeout;
    cache_endpoint(&cfg_host, &cfg_port, &cfg_timeout);
    if (host == NULL) {
        host = cfg_host;
        port = cfg_port;
    }
    timeout = cfg_timeout > 0 ? cfg_timeout : RUV_DEFAULT_TIMEOUT_MS;
    if (loop == NULL || host == NULL || port <= 0 || port > 65535 || o->connect_timeout_ms < 0 ||
        o->command_timeout_ms < 0 || o->backoff_min_ms < 0 || o->backoff_max_ms < 0) {
        log_error("redis_uv_open: no Redis endpoint or bad options");
        return NULL;
    }
    const char *pw = o->password != NULL ? o->password : getenv("ORGMESH_REDIS_PASSWORD");
    redis_uv *r = calloc(1, sizeof *r);
    if (r == NULL) return NULL;
    r->host = strdup(host);
    r->password = pw != NULL && pw[0] != '\0' ? strdup(pw) : NULL;
    if (r->host == NULL || (pw != NULL && pw[0] != '\0' && r->password == NULL)) {
        free(r->host);
        free(r->password);
        free(r);
        return NULL;
    }
    r->loop = loop;
    r->port = port;
    r->connect_ms = o->connect_timeout_ms > 0 ? o->connect_timeout_ms : timeout;
    r->command_ms = o->command_timeout_ms > 0 ? o->command_timeout_ms : timeout;
    r->backoff_min = o->backoff_min_ms > 0 ? o->backoff_min_ms : RUV_BACKOFF_MIN_MS;
    r->backoff_max = o->backoff_max_ms > 0 ? o->backoff_max_ms : RUV_BACKOFF_MAX_MS;
    if (r->backoff_max < r->backoff_min) r->backoff_max = r->backoff_min;
    r->backoff = r->backoff_min;
    r->on_state = o->on_state;
    r->arg = o->arg;
    r->reqs.next = r->reqs.prev = &r->reqs;
    uv_timer_init(loop, &r->t_conn);
    uv_timer_init(loop, &r->t_cmd);
    r->t_conn.data = r;
    r->t_cmd.data = r;
    r->handles = 2;
    ruv_connect(r);
    return r;
}

void redis_uv_close(redis_uv *r) {
    if (r == NULL || r->closing) return;
    r->closing = true;
    uv_close((uv_handle_t *)&r->t_conn, ruv_handle_closed);
    uv_close((uv_handle_t *)&r->t_cmd, ruv_handle_closed);
    if (r->ac != NULL && r->st != RUV_DROPPING) {
        r->why = "closed";
        r->st = RUV_DROPPING;
        redisAsyncFree(r->ac); /* pending callbacks get "closed", then ruv_lost */
    } else if (r->ac != NULL) {
        r->why = "closed";
    }
    ruv_maybe_free(r);
}
