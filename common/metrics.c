/* metrics.c — Prometheus text metrics and the small HTTP server for them
 * (metrics.h). Recording is a few relaxed atomic adds, so handlers never
 * wait on a lock; the registry is only appended to, at start-up. */
#define _GNU_SOURCE
#include "metrics.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "om_err.h"

#define METRICS_NCODES 17 /* grpc_status_code 0..16 */
#define METRICS_NBUCKETS 14
#define GRPC_CODE_UNKNOWN 2

/* Upper bounds of the latency buckets, in µs; the last bucket is +Inf. */
static const int64_t bucket_le_us[METRICS_NBUCKETS - 1] = {
    500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000, 5000000};
/* The same bounds as Prometheus `le` labels, written out so that they read
 * exactly as in the docs (no float formatting surprises). */
static const char *const bucket_le_text[METRICS_NBUCKETS] = {
    "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05",
    "0.1",    "0.25",  "0.5",    "1",     "2.5",  "5",     "+Inf"};

static const char *const code_names[METRICS_NCODES] = {
    "OK",        "CANCELLED",      "UNKNOWN",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
    "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED",   "OUT_OF_RANGE",   "UNIMPLEMENTED",     "INTERNAL",           "UNAVAILABLE",
    "DATA_LOSS", "UNAUTHENTICATED"};

struct metrics_method {
    _Atomic(metrics_method *) next;
    char *service; /* "orgmesh.accounts.v1.AccountsService" */
    char *method;  /* "GetAccount" */
    char *full;    /* "/orgmesh.accounts.v1.AccountsService/GetAccount" */
    atomic_uint_fast64_t calls[METRICS_NCODES];
    atomic_uint_fast64_t buckets[METRICS_NBUCKETS]; /* not cumulative */
    atomic_uint_fast64_t sum_us;
};

struct metrics_counter {
    _Atomic(metrics_counter *) next;
    char *name;
    char *help;
    bool is_counter; /* Prometheus convention: counters end in "_total" */
    atomic_int_fast64_t value;
};

/* Registration appends under a mutex and publishes with release stores, so
 * a render running at the same time sees either nothing or a whole entry. */
static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static _Atomic(metrics_method *) methods_head;
static _Atomic(metrics_counter *) counters_head;

static char metrics_service[64];
static atomic_int_fast64_t metrics_start_time;

/* ---- registry ------------------------------------------------------------- */

static bool metric_name_valid(const char *s) {
    if (s == NULL || *s == '\0') return false;
    for (const char *p = s; *p; p++) {
        char c = *p;
        bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
        if (!alpha && !(p != s && c >= '0' && c <= '9')) return false;
    }
    return true;
}

metrics_method *metrics_method_register(const char *full_method) {
    if (full_method == NULL || *full_method == '\0') return NULL;
    pthread_mutex_lock(&reg_mu);
    _Atomic(metrics_method *) *link = &methods_head;
    metrics_method *m;
    /* Registering the same method twice hands back the same slot. */
    while ((m = atomic_load_explicit(link, memory_order_acquire)) != NULL) {
        if (strcmp(m->full, full_method) == 0) goto out;
        link = &m->next;
    }
    m = calloc(1, sizeof *m);
    if (m == NULL) goto out;
    /* "/pkg.Service/Method": split at the last '/'; anything else is kept
     * whole as the method name. */
    const char *slash = strrchr(full_method, '/');
    const char *svc = full_method[0] == '/' ? full_method + 1 : full_method;
    m->full = strdup(full_method);
    if (slash && slash > svc) {
        m->service = strndup(svc, (size_t)(slash - svc));
        m->method = strdup(slash + 1);
    } else {
        m->service = strdup("");
        m->method = strdup(full_method);
    }
    if (m->full == NULL || m->service == NULL || m->method == NULL) {
        free(m->full);
        free(m->service);
        free(m->method);
        free(m);
        m = NULL;
        goto out;
    }
    atomic_store_explicit(link, m, memory_order_release);
out:
    pthread_mutex_unlock(&reg_mu);
    return m;
}

void metrics_observe(metrics_method *m, int code, int64_t latency_us) {
    if (m == NULL) return;
    if (code < 0 || code >= METRICS_NCODES) code = GRPC_CODE_UNKNOWN;
    if (latency_us < 0) latency_us = 0;
    int b = 0;
    while (b < METRICS_NBUCKETS - 1 && latency_us > bucket_le_us[b]) b++;
    atomic_fetch_add_explicit(&m->calls[code], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&m->buckets[b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&m->sum_us, (uint64_t)latency_us, memory_order_relaxed);
}

metrics_counter *metrics_counter_register(const char *name, const char *help) {
    if (!metric_name_valid(name)) {
        log_error("metrics: \"%s\" is not a valid metric name", name ? name : "(null)");
        return NULL;
    }
    pthread_mutex_lock(&reg_mu);
    _Atomic(metrics_counter *) *link = &counters_head;
    metrics_counter *c;
    while ((c = atomic_load_explicit(link, memory_order_acquire)) != NULL) {
        if (strcmp(c->name, name) == 0) goto out;
        link = &c->next;
    }
    c = calloc(1, sizeof *c);
    if (c == NULL) goto out;
    c->name = strdup(name);
    c->help = strdup(help ? help : "");
    if (c->name == NULL || c->help == NULL) {
        free(c->name);
        free(c->help);
        free(c);
        c = NULL;
        goto out;
    }
    size_t n = strlen(name);
    c->is_counter = n > 6 && strcmp(name + n - 6, "_total") == 0;
    atomic_store_explicit(link, c, memory_order_release);
out:
    pthread_mutex_unlock(&reg_mu);
    return c;
}

void metrics_counter_add(metrics_counter *c, int64_t delta) {
    if (c) atomic_fetch_add_explicit(&c->value, delta, memory_order_relaxed);
}

void metrics_gauge_set(metrics_counter *c, int64_t value) {
    if (c) atomic_store_explicit(&c->value, value, memory_order_relaxed);
}

/* ---- rendering ------------------------------------------------------------ */

typedef struct strbuf {
    char *p;
    size_t len, cap;
    bool oom;
} strbuf;

static void sb_printf(strbuf *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(strbuf *sb, const char *fmt, ...) {
    if (sb->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(sb->p + sb->len, sb->cap - sb->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            sb->oom = true;
            return;
        }
        if ((size_t)n < sb->cap - sb->len) {
            sb->len += (size_t)n;
            return;
        }
        size_t cap = sb->cap * 2;
        while (cap < sb->len + (size_t)n + 1) cap *= 2;
        char *np = realloc(sb->p, cap);
        if (np == NULL) {
            sb->oom = true;
            return;
        }
        sb->p = np;
        sb->cap = cap;
    }
}

/* Label values escape \, " and newline; HELP text escapes \ and newline. */
static void sb_escaped(strbuf *sb, const char *s, bool quote) {
    for (; *s; s++) {
        if (*s == '\\')
            sb_printf(sb, "\\\\");
        else if (*s == '\n')
            sb_printf(sb, "\\n");
        else if (*s == '"' && quote)
            sb_printf(sb, "\\\"");
        else
            sb_printf(sb, "%c", *s);
    }
}

static void sb_labels(strbuf *sb, const metrics_method *m) {
    sb_printf(sb, "service=\"");
    sb_escaped(sb, m->service, true);
    sb_printf(sb, "\",method=\"");
    sb_escaped(sb, m->method, true);
    sb_printf(sb, "\"");
}

static int64_t resident_bytes(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    if (f == NULL) return -1;
    long size = 0, rss = -1;
    if (fscanf(f, "%ld %ld", &size, &rss) != 2) rss = -1;
    fclose(f);
    return rss < 0 ? -1 : (int64_t)rss * sysconf(_SC_PAGESIZE);
}

char *metrics_render(void) {
    strbuf sb = {.cap = 4096};
    sb.p = malloc(sb.cap);
    if (sb.p == NULL) return NULL;
    sb.p[0] = '\0';

    metrics_method *first = atomic_load_explicit(&methods_head, memory_order_acquire);
    sb_printf(&sb, "# HELP orgmesh_rpc_calls_total RPCs handled, by gRPC status code.\n"
                   "# TYPE orgmesh_rpc_calls_total counter\n");
    for (metrics_method *m = first; m; m = atomic_load_explicit(&m->next, memory_order_acquire)) {
        for (int code = 0; code < METRICS_NCODES; code++) {
            uint64_t v = atomic_load_explicit(&m->calls[code], memory_order_relaxed);
            /* OK is always shown so that every method has a series. */
            if (v == 0 && code != 0) continue;
            sb_printf(&sb, "orgmesh_rpc_calls_total{");
            sb_labels(&sb, m);
            sb_printf(&sb, ",code=\"%s\"} %llu\n", code_names[code], (unsigned long long)v);
        }
    }
    sb_printf(&sb, "# HELP orgmesh_rpc_latency_seconds Time from request to response.\n"
                   "# TYPE orgmesh_rpc_latency_seconds histogram\n");
    for (metrics_method *m = first; m; m = atomic_load_explicit(&m->next, memory_order_acquire)) {
        /* Take one copy of the buckets so that +Inf equals _count even while
         * calls are being recorded. */
        uint64_t b[METRICS_NBUCKETS], cum = 0;
        for (int i = 0; i < METRICS_NBUCKETS; i++)
            b[i] = atomic_load_explicit(&m->buckets[i], memory_order_relaxed);
        uint64_t sum = atomic_load_explicit(&m->sum_us, memory_order_relaxed);
        for (int i = 0; i < METRICS_NBUCKETS; i++) {
            cum += b[i];
            sb_printf(&sb, "orgmesh_rpc_latency_seconds_bucket{");
            sb_labels(&sb, m);
            sb_printf(&sb, ",le=\"%s\"} %llu\n", bucket_le_text[i], (unsigned long long)cum);
        }
        sb_printf(&sb, "orgmesh_rpc_latency_seconds_sum{");
        sb_labels(&sb, m);
        sb_printf(&sb, "} %llu.%06llu\n", (unsigned long long)(sum / 1000000),
                  (unsigned long long)(sum % 1000000));
        sb_printf(&sb, "orgmesh_rpc_latency_seconds_count{");
        sb_labels(&sb, m);
        sb_printf(&sb, "} %llu\n", (unsigned long long)cum);
    }
    for (metrics_counter *c = atomic_load_explicit(&counters_head, memory_order_acquire); c;
         c = atomic_load_explicit(&c->next, memory_order_acquire)) {
        sb_printf(&sb, "# HELP %s ", c->name);
        sb_escaped(&sb, c->help, false);
        sb_printf(&sb, "\n# TYPE %s %s\n%s %lld\n", c->name, c->is_counter ? "counter" : "gauge",
                  c->name, (long long)atomic_load_explicit(&c->value, memory_order_relaxed));
    }
    if (metrics_service[0]) {
        sb_printf(&sb, "# HELP orgmesh_service_info The orgmesh service this process runs.\n"
                       "# TYPE orgmesh_service_info gauge\norgmesh_service_info{service=\"");
        sb_escaped(&sb, metrics_service, true);
        sb_printf(&sb, "\"} 1\n");
    }
    int64_t started = atomic_load_explicit(&metrics_start_time, memory_order_relaxed);
    if (started > 0)
        sb_printf(&sb,
                  "# HELP process_start_time_seconds Start time of the process.\n"
                  "# TYPE process_start_time_seconds gauge\n"
                  "process_start_time_seconds %lld\n",
                  (long long)started);
    int64_t rss = resident_bytes();
    if (rss >= 0)
        sb_printf(&sb,
                  "# HELP process_resident_memory_bytes Resident memory size.\n"
                  "# TYPE process_resident_memory_bytes gauge\n"
                  "process_resident_memory_bytes %lld\n",
                  (long long)rss);
    if (sb.oom) {
        free(sb.p);
        return NULL;
    }
    return sb.p;
}

/* ---- HTTP server -----------------------------------------------------------
 * One thread, poll(2) over the listening socket, a wake-up pipe and at most
 * METRICS_MAX_CONN connections. Each connection is read until the end of its
 * headers, answered, shut down for writing and drained until the peer closes
 * (closing with unread input would reset the connection and could destroy
 * the answer), then closed. A slow or silent client only holds its own slot
 * until its deadline. */

#define METRICS_MAX_CONN 16
#define METRICS_REQ_MAX 4096
#define METRICS_CONN_MS 5000

enum conn_state { CONN_FREE, CONN_READ, CONN_WRITE, CONN_DRAIN };

typedef struct http_conn {
    int fd;
    enum conn_state state;
    char req[METRICS_REQ_MAX];
    size_t rlen;
    char *resp;
    size_t resp_len, sent;
    int64_t deadline_ms;
} http_conn;

static struct {
    bool running;
    int lfd;
    int wake[2];
    pthread_t thread;
    http_conn conns[METRICS_MAX_CONN];
} srv = {.lfd = -1, .wake = {-1, -1}};

static int64_t mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void conn_close(http_conn *c) {
    close(c->fd);
    free(c->resp);
    c->resp = NULL;
    c->fd = -1;
    c->state = CONN_FREE;
}

static char *http_response(int status, const char *reason, const char *ctype, const char *body,
                           bool head, size_t *len) {
    size_t blen = strlen(body);
    size_t cap = blen + 256;
    char *r = malloc(cap);
    if (r == NULL) return NULL;
    int n = snprintf(r, cap,
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n",
                     status, reason, ctype, blen);
    if (n < 0 || (size_t)n >= cap) {
        free(r);
        return NULL;
    }
    if (!head) memcpy(r + n, body, blen);
    *len = (size_t)n + (head ? 0 : blen);
    return r;
}

static void conn_writable(http_conn *c);

/* "METHOD SP target SP HTTP/1.x" (RFC 9112 §3): an upper-case token, an
 * origin-form target, a version; anything else is a bad request. */
static bool parse_request_line(const char *req, char *method, size_t mcap, char *target,
                               size_t tcap) {
    const char *p = req;
    size_t n = 0;
    while (p[n] >= 'A' && p[n] <= 'Z') n++;
    if (n == 0 || n >= mcap || p[n] != ' ') return false;
    memcpy(method, p, n);
    method[n] = '\0';
    p += n + 1;
    if (*p != '/') return false;
    for (n = 0; p[n] > ' ' && p[n] < 0x7f; n++) {
    }
    if (n >= tcap || p[n] != ' ') return false;
    memcpy(target, p, n);
    target[n] = '\0';
    p += n + 1;
    return strncmp(p, "HTTP/1.", 7) == 0 && p[7] >= '0' && p[7] <= '9' &&
           (p[8] == '\r' || p[8] == '\n');
}

/* Route a complete request head; sets c->resp. */
static void conn_answer(http_conn *c) {
    c->req[c->rlen < METRICS_REQ_MAX ? c->rlen : METRICS_REQ_MAX - 1] = '\0';
    char method[16], target[512];
    int status = 400;
    const char *reason = "Bad Request", *body = "bad request\n";
    char *metrics = NULL;
    bool head = false;
    if (parse_request_line(c->req, method, sizeof method, target, sizeof target)) {
        char *q = strchr(target, '?');
        if (q) *q = '\0';
        head = strcmp(method, "HEAD") == 0;
        bool get = head || strcmp(method, "GET") == 0;
        status = 404, reason = "Not Found", body = "not found\n";
        if (get && strcmp(target, "/healthz") == 0) {
            status = 200, reason = "OK", body = "ok";
        } else if (get && strcmp(target, "/metrics") == 0) {
            metrics = metrics_render();
            if (metrics) {
                status = 200, reason = "OK", body = metrics;
            } else {
                status = 500, reason = "Internal Server Error", body = "out of memory\n";
            }
        }
    }
    const char *ctype = metrics && status == 200 ? "text/plain; version=0.0.4; charset=utf-8"
                                                 : "text/plain; charset=utf-8";
    c->resp = http_response(status, reason, ctype, body, head, &c->resp_len);
    free(metrics);
    c->sent = 0;
    c->state = c->resp ? CONN_WRITE : CONN_DRAIN;
    if (c->state == CONN_DRAIN) shutdown(c->fd, SHUT_WR);
}

static void conn_readable(http_conn *c) {
    char scratch[1024];
    for (;;) {
        char *dst = c->state == CONN_READ ? c->req + c->rlen : scratch;
        size_t room = c->state == CONN_READ ? METRICS_REQ_MAX - 1 - c->rlen : sizeof scratch;
        ssize_t n = recv(c->fd, dst, room, 0);
        if (n == 0) {
            conn_close(c); /* peer closed: nothing more to do */
            return;
        }
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) conn_close(c);
            return;
        }
        if (c->state != CONN_READ) continue; /* draining */
        c->rlen += (size_t)n;
        c->req[c->rlen] = '\0';
        if (strstr(c->req, "\r\n\r\n") || strstr(c->req, "\n\n") ||
            c->rlen >= METRICS_REQ_MAX - 1) {
            conn_answer(c);                               /* an oversized head gets 400 */
            if (c->state == CONN_WRITE) conn_writable(c); /* usually all fits at once */
            return;
        }
    }
}

static void conn_writable(http_conn *c) {
    while (c->sent < c->resp_len) {
        ssize_t n = send(c->fd, c->resp + c->sent, c->resp_len - c->sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) conn_close(c);
            return;
        }
        c->sent += (size_t)n;
    }
    free(c->resp);
    c->resp = NULL;
    shutdown(c->fd, SHUT_WR);
    c->state = CONN_DRAIN;
}

/* Returns false when accepting failed for want of resources (EMFILE and
 * the like): the caller then stops polling the listener for a moment rather
 * than spinning on a socket that stays readable. */
static bool server_accept(void) {
    for (;;) {
        http_conn *c = NULL;
        for (int i = 0; i < METRICS_MAX_CONN && !c; i++)
            if (srv.conns[i].state == CONN_FREE) c = &srv.conns[i];
        if (c == NULL) return true; /* full: the rest wait in the backlog */
        int fd = accept4(srv.lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ||
                   errno == ECONNABORTED;
        }
        c->fd = fd;
        c->state = CONN_READ;
        c->rlen = 0;
        c->req[0] = '\0';
        c->deadline_ms = mono_ms() + METRICS_CONN_MS;
    }
}

static void *server_main(void *arg) {
    (void)arg;
    struct pollfd pfd[METRICS_MAX_CONN + 2];
    int idx[METRICS_MAX_CONN + 2];
    int64_t accept_pause_until = 0;
    for (;;) {
        int n = 0, nfree = 0;
        int64_t now = mono_ms(), next = -1;
        pfd[n++] = (struct pollfd){.fd = srv.wake[0], .events = POLLIN};
        for (int i = 0; i < METRICS_MAX_CONN; i++) {
            http_conn *c = &srv.conns[i];
            if (c->state == CONN_FREE) {
                nfree++;
                continue;
            }
            if (now >= c->deadline_ms) {
                conn_close(c);
                nfree++;
                continue;
            }
            if (next < 0 || c->deadline_ms < next) next = c->deadline_ms;
            idx[n] = i;
            pfd[n++] =
                (struct pollfd){.fd = c->fd, .events = c->state == CONN_WRITE ? POLLOUT : POLLIN};
        }
        int lpos = -1;
        if (nfree > 0 && now >= accept_pause_until) {
            lpos = n;
            pfd[n++] = (struct pollfd){.fd = srv.lfd, .events = POLLIN};
        } else if (nfree > 0 && (next < 0 || accept_pause_until < next)) {
            next = accept_pause_until;
        }
        int timeout = next < 0 ? -1 : (int)(next - now);
        if (poll(pfd, (nfds_t)n, timeout) < 0 && errno != EINTR) {
            log_error("metrics: poll: %s", strerror(errno));
            break;
        }
        if (pfd[0].revents) break; /* metrics_stop */
        for (int k = 1; k < n; k++) {
            if (k == lpos || pfd[k].revents == 0) continue;
            http_conn *c = &srv.conns[idx[k]];
            if (c->state == CONN_WRITE) {
                conn_writable(c);
            } else {
                conn_readable(c);
            }
        }
        if (lpos >= 0 && pfd[lpos].revents && !server_accept())
            accept_pause_until = mono_ms() + 100;
    }
    for (int i = 0; i < METRICS_MAX_CONN; i++)
        if (srv.conns[i].state != CONN_FREE) conn_close(&srv.conns[i]);
    return NULL;
}

/* "host:port", "[v6]:port" or ":port" (all interfaces). */
static int split_listen(const char *listen, char *host, size_t hcap, char *port, size_t pcap) {
    const char *colon = strrchr(listen, ':');
    if (colon == NULL) return -1;
    const char *h = listen;
    size_t hlen = (size_t)(colon - listen);
    if (hlen >= 2 && h[0] == '[' && h[hlen - 1] == ']') h++, hlen -= 2;
    const char *p = colon + 1;
    size_t plen = strlen(p);
    if (plen == 0 || plen >= pcap || hlen >= hcap) return -1;
    long v = 0;
    for (const char *q = p; *q; q++) {
        if (*q < '0' || *q > '9') return -1;
        v = v * 10 + (*q - '0');
        if (v > 65535) return -1;
    }
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    memcpy(port, p, plen + 1);
    return 0;
}

static int open_listener(const char *addr) {
    char host[256], port[8];
    if (addr == NULL || split_listen(addr, host, sizeof host, port, sizeof port) != 0) {
        log_error("metrics: listen address \"%s\" is not host:port", addr ? addr : "(null)");
        return OM_E_INVALID_ARGUMENT;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    int gai = getaddrinfo(host[0] ? host : NULL, port, &hints, &res);
    if (gai != 0) {
        log_error("metrics: cannot resolve \"%s\": %s", addr, gai_strerror(gai));
        return OM_E_INVALID_ARGUMENT;
    }
    int fd = -1, err = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 64) == 0) break;
        err = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        log_error("metrics: cannot listen on %s: %s", addr, strerror(err));
        return OM_E_UNAVAILABLE;
    }
    return fd;
}

int metrics_start(const char *service, const char *listen) {
    if (srv.running) return OM_E_FAILED_PRECONDITION;
    size_t n = service ? strlen(service) : 0;
    if (n >= sizeof metrics_service) n = sizeof metrics_service - 1;
    if (n) memcpy(metrics_service, service, n);
    metrics_service[n] = '\0';
    atomic_store(&metrics_start_time, (int_fast64_t)time(NULL));

    int fd = open_listener(listen);
    if (fd < 0) return fd;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    int port = -1;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET) port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        if (ss.ss_family == AF_INET6) port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    }
    if (port < 0 || pipe2(srv.wake, O_CLOEXEC | O_NONBLOCK) != 0) {
        close(fd);
        return OM_E_INTERNAL;
    }
    srv.lfd = fd;
    for (int i = 0; i < METRICS_MAX_CONN; i++) srv.conns[i] = (http_conn){.fd = -1};

    /* The server thread takes no signals: they belong to the main thread. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int rc = pthread_create(&srv.thread, NULL, server_main, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        close(srv.wake[0]);
        close(srv.wake[1]);
        close(fd);
        srv.lfd = srv.wake[0] = srv.wake[1] = -1;
        return OM_E_INTERNAL;
    }
    srv.running = true;
    return port;
}

void metrics_stop(void) {
    if (!srv.running) return;
    char b = 1;
    while (write(srv.wake[1], &b, 1) < 0 && errno == EINTR) {
    }
    pthread_join(srv.thread, NULL);
    close(srv.lfd);
    close(srv.wake[0]);
    close(srv.wake[1]);
    srv.lfd = srv.wake[0] = srv.wake[1] = -1;
    srv.running = false;
}
