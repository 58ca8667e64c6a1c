/* cache.c — Redis as a cache (cache.h) with hiredis' blocking API: one
 * connection per thread with connect and command timeouts, failing fast while
 * Redis is down, plus the reconnecting connections the event code uses. */
#include "cache.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "cache_internal.h"
#include "log.h"
#include "om_err.h"

#define CACHE_RETRY_MS 1000 /* at most one failed connect per second per connection */

static struct {
    char *host;
    int port;
    int timeout_ms;
} cfg;

static int64_t cache_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static struct timeval cache_tv(int ms) {
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    return tv;
}

int cache_setup(const char *host, int port, int timeout_ms) {
    if (host == NULL || host[0] == '\0' || port <= 0 || port > 65535 || timeout_ms <= 0)
        return OM_E_INVALID_ARGUMENT;
    char *h = strdup(host);
    if (h == NULL) return OM_E_NOMEM;
    free(cfg.host);
    cfg.host = h;
    cfg.port = port;
    cfg.timeout_ms = timeout_ms;
    return 0;
}

void cache_endpoint(const char **host, int *port, int *timeout_ms) {
    *host = cfg.host;
    *port = cfg.port;
    *timeout_ms = cfg.timeout_ms;
}

/* ---- reconnecting connections ---------------------------------------------- */

static redisContext *cache_dial(int timeout_ms) {
    if (cfg.host == NULL) return NULL;
    redisContext *ctx = redisConnectWithTimeout(cfg.host, cfg.port, cache_tv(timeout_ms));
    if (ctx == NULL) return NULL;
    if (ctx->err) {
        log_debug("cannot connect to Redis at %s:%d: %s", cfg.host, cfg.port, ctx->errstr);
        redisFree(ctx);
        return NULL;
    }
    if (redisSetTimeout(ctx, cache_tv(timeout_ms)) != REDIS_OK) {
        redisFree(ctx);
        return NULL;
    }
    redisEnableKeepAlive(ctx); /* notice a peer that vanished without a FIN */
    const char *password = getenv("ORGMESH_REDIS_PASSWORD");
    if (password != NULL && password[0] != '\0') {
        redisReply *r = redisCommand(ctx, "AUTH %s", password);
        bool ok = r != NULL && r->type != REDIS_REPLY_ERROR;
        if (r == NULL || !ok)
            log_warn("Redis at %s:%d refused AUTH%s%s", cfg.host, cfg.port, r ? ": " : "",
                     r ? r->str : "");
        if (r != NULL) freeReplyObject(r);
        if (!ok) {
            redisFree(ctx);
            return NULL;
        }
    }
    return ctx;
}

int cache_conn_new(cache_conn **out, int timeout_ms) {
    *out = calloc(1, sizeof **out);
    if (*out == NULL) return OM_E_NOMEM;
    (*out)->timeout_ms = timeout_ms;
    return 0;
}

redisContext *cache_conn_ctx(cache_conn *c) {
    if (c->ctx != NULL) return c->ctx;
    int64_t now = cache_now_ms();
    if (now < c->next_try_ms) return NULL; /* fail fast while Redis is down */
    c->ctx = cache_dial(c->timeout_ms > 0 ? c->timeout_ms : cfg.timeout_ms);
    if (c->ctx == NULL) {
        if (!c->was_down && cfg.host != NULL)
            log_warn("Redis at %s:%d is unreachable", cfg.host, cfg.port);
        c->was_down = true;
        c->next_try_ms = cache_now_ms() + CACHE_RETRY_MS; /* from the end of the attempt */
        return NULL;
    }
    if (c->was_down) log_info("reconnected to Redis");
    c->gen++;
    c->was_down = false;
    c->next_try_ms = 0;
    return c->ctx;
}

void cache_conn_drop(cache_conn *c) {
    if (c->ctx == NULL) return;
    log_warn("Redis connection lost: %s", c->ctx->errstr[0] ? c->ctx->errstr : "protocol error");
    redisFree(c->ctx);
    c->ctx = NULL;
    c->was_down = true;
    /* A connection that worked and then broke (Redis restarted, idle
     * timeout) is reopened at once: it should cost one failed call at most. */
    c->next_try_ms = c->proven ? 0 : cache_now_ms() + CACHE_RETRY_MS;
    c->proven = false;
}

redisReply *cache_conn_cmd(cache_conn *c, int argc, const char **argv, const size_t *lens) {
    redisContext *ctx = cache_conn_ctx(c);
    if (ctx == NULL) return NULL;
    redisReply *r = redisCommandArgv(ctx, argc, argv, lens);
    if (r == NULL)
        cache_conn_drop(c);
    else
        c->proven = true;
    return r;
}

int cache_connect(cache_conn **out) {
    int rc = cache_conn_new(out, 0);
    if (rc != 0) return rc;
    if (cache_conn_ctx(*out) == NULL) {
        cache_close(*out);
        *out = NULL;
        return OM_E_UNAVAILABLE;
    }
    return 0;
}

void cache_close(cache_conn *c) {
    if (c == NULL) return;
    if (c->ctx != NULL) redisFree(c->ctx);
    free(c);
}

/* ---- this thread's connection -------------------------------------------- */

static __thread cache_conn *tl_conn;
static pthread_key_t tl_key;
static pthread_once_t tl_once = PTHREAD_ONCE_INIT;

static void tl_destroy(void *p) { cache_close(p); }
static void tl_init(void) { pthread_key_create(&tl_key, tl_destroy); }

static cache_conn *cache_local(void) {
    if (tl_conn == NULL) {
        cache_conn *c;
        if (cache_conn_new(&c, 0) != 0) return NULL;
        pthread_once(&tl_once, tl_init);
        pthread_setspecific(tl_key, c);
        tl_conn = c;
    }
    return tl_conn;
}

void cache_local_close(void) {
    if (tl_conn == NULL) return;
    pthread_setspecific(tl_key, NULL);
    cache_close(tl_conn);
    tl_conn = NULL;
}

/* ORGMESH_REDIS_NAMESPACE is put before every key (cache entries, streams),
 * so that several suites can share one Redis without seeing each other's
 * events. Read once; an empty namespace changes nothing. */
static pthread_once_t ns_once = PTHREAD_ONCE_INIT;
static char ns_prefix[64];

static void ns_init(void) {
    const char *ns = getenv("ORGMESH_REDIS_NAMESPACE");
    snprintf(ns_prefix, sizeof ns_prefix, "%s", ns ? ns : "");
}

const char *cache_namespace(void) {
    pthread_once(&ns_once, ns_init);
    return ns_prefix;
}

/* The namespaced key in buf (which must hold 64 + strlen(key) + 1 bytes). */
static const char *ns_key(const char *key, char *buf, size_t cap) {
    const char *ns = cache_namespace();
    if (ns[0] == '\0') return key;
    snprintf(buf, cap, "%s%s", ns, key);
    return buf;
}

#define CACHE_MAX_KEY 512

/* Run a command on this thread's connection: 0 and the reply, or
 * OM_E_UNAVAILABLE (down, timed out) / OM_E_INTERNAL (Redis said no). */
static int cache_run(int argc, const char **argv, const size_t *lens, redisReply **out) {
    *out = NULL;
    cache_conn *c = cache_local();
    if (c == NULL) return OM_E_NOMEM;
    redisReply *r = cache_conn_cmd(c, argc, argv, lens);
    if (r == NULL) return OM_E_UNAVAILABLE;
    if (r->type == REDIS_REPLY_ERROR) {
        log_warn("Redis %s: %s", argv[0], r->str);
        freeReplyObject(r);
        return OM_E_INTERNAL;
    }
    *out = r;
    return 0;
}

int cache_get(const char *key, char **val, size_t *len) {
    *val = NULL;
    if (len != NULL) *len = 0;
    char kb[CACHE_MAX_KEY];
    if (strlen(key) + 64 >= sizeof kb) return OM_E_INVALID_ARGUMENT;
    key = ns_key(key, kb, sizeof kb);
    const char *argv[] = {"GET", key};
    size_t lens[] = {3, strlen(key)};
    redisReply *r;
    int rc = cache_run(2, argv, lens, &r);
    if (rc != 0) return rc;
    if (r->type == REDIS_REPLY_NIL) {
        rc = OM_E_NOT_FOUND;
    } else if (r->type != REDIS_REPLY_STRING) {
        rc = OM_E_INTERNAL;
    } else {
        *val = malloc(r->len + 1); /* NUL-terminated for the callers that store text */
        if (*val == NULL) {
            rc = OM_E_NOMEM;
        } else {
            memcpy(*val, r->str, r->len);
            (*val)[r->len] = '\0';
            if (len != NULL) *len = r->len;
        }
    }
    freeReplyObject(r);
    return rc;
}

int cache_set(const char *key, const void *val, size_t len, int ttl_ms) {
    char ttl[16];
    snprintf(ttl, sizeof ttl, "%d", ttl_ms);
    char kb[CACHE_MAX_KEY];
    if (strlen(key) + 64 >= sizeof kb) return OM_E_INVALID_ARGUMENT;
    key = ns_key(key, kb, sizeof kb);
    const char *argv[] = {"SET", key, val != NULL ? val : "", "PX", ttl};
    size_t lens[] = {3, strlen(key), val != NULL ? len : 0, 2, strlen(ttl)};
    redisReply *r;
    int rc = cache_run(ttl_ms > 0 ? 5 : 3, argv, lens, &r); /* ttl <= 0: no expiry */
    if (rc == 0) freeReplyObject(r);
    return rc;
}

int cache_del(const char *key) {
    char kb[CACHE_MAX_KEY];
    if (strlen(key) + 64 >= sizeof kb) return OM_E_INVALID_ARGUMENT;
    key = ns_key(key, kb, sizeof kb);
    const char *argv[] = {"DEL", key};
    size_t lens[] = {3, strlen(key)};
    redisReply *r;
    int rc = cache_run(2, argv, lens, &r);
    if (rc == 0) freeReplyObject(r);
    return rc;
}

/* ---- health --------------------------------------------------------------- */

static pthread_mutex_t ping_mu = PTHREAD_MUTEX_INITIALIZER;
static cache_conn ping_conn;

bool cache_ping(void) {
    pthread_mutex_lock(&ping_mu);
    const char *argv[] = {"PING"};
    size_t lens[] = {4};
    redisReply *r = cache_conn_cmd(&ping_conn, 1, argv, lens);
    bool ok = r != NULL && r->type == REDIS_REPLY_STATUS && strcmp(r->str, "PONG") == 0;
    if (r != NULL) freeReplyObject(r);
    pthread_mutex_unlock(&ping_mu);
    return ok;
}
