/* metrics.c — Prometheus text metrics and the HTTP endpoint for them
 * (metrics.h). Recording is a few relaxed atomic adds, so handlers never
 * wait on a lock; the registry is only appended to, at start-up. The
 * endpoint (issue 15) is a uv_tcp listener on the process loop whose
 * connections are handed to GNU libmicrohttpd, run from the loop (its epoll
 * fd under a uv_poll, its timeouts on a uv_timer): HTTP parsing, limits and
 * timeouts are the library's (docs/common/metrics.md). */
#define _GNU_SOURCE
#include "metrics.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
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

#include <microhttpd.h>
#include <uv.h>

#include "log.h"
#include "loop.h"
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

/* ---- HTTP endpoint ---------------------------------------------------------
 * A uv_tcp listener accepts; each connection's socket is handed to
 * libmicrohttpd (MHD_USE_NO_LISTEN_SOCKET: MHD_add_connection), which runs
 * without a thread of its own (MHD_USE_EPOLL, external polling): a uv_poll
 * on its epoll fd calls MHD_run when a connection is ready, a uv_timer when
 * MHD_get_timeout says a connection is due to time out. At most
 * METRICS_MAX_CONN connections, each answered once (Connection: close) and
 * dropped after METRICS_CONN_S whatever happens, so a slow or silent client
 * holds only its own slot and never the loop. In a service this runs on the
 * process loop (common/loop.h); without one (unit tests, tools) on a loop
 * and thread of its own. */

#define METRICS_MAX_CONN 16
#define METRICS_CONN_S 5
#define METRICS_MEM_LIMIT (32 * 1024) /* per connection: request head + buffers */

static struct {
    bool running;
    bool own_thread; /* no process loop: a loop of our own */
    uv_loop_t *loop;
    uv_loop_t own_loop;
    pthread_t thread;
    uv_async_t stop_async; /* own thread only */
    uv_tcp_t listener;
    uv_poll_t mhd_poll;
    uv_timer_t mhd_timer;
    struct MHD_Daemon *mhd;
    int open_handles; /* closing handles not yet closed */
} srv;

static void mhd_schedule(void);

static void mhd_drive(void) {
    if (srv.mhd == NULL) return;
    MHD_run(srv.mhd);
    mhd_schedule();
}

static void mhd_timer_cb(uv_timer_t *t) {
    (void)t;
    mhd_drive();
}

static void mhd_poll_cb(uv_poll_t *p, int status, int events) {
    (void)p, (void)status, (void)events;
    mhd_drive();
}

/* The next MHD timeout (a connection's idle deadline), on the timer. */
static void mhd_schedule(void) {
    MHD_UNSIGNED_LONG_LONG ms = 0;
    if (MHD_get_timeout(srv.mhd, &ms) == MHD_YES)
        uv_timer_start(&srv.mhd_timer, mhd_timer_cb, (uint64_t)ms, 0);
    else
        uv_timer_stop(&srv.mhd_timer);
}

static enum MHD_Result respond(struct MHD_Connection *conn, unsigned status, const char *ctype, char *body,
                               bool owned) {
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body), body,
                                                             owned ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (r == NULL) {
        if (owned) free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
    enum MHD_Result ret = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ret;
}

/* GET or HEAD /metrics and /healthz (the query string is not part of url);
 * anything else 404. MHD answers malformed requests itself (400) and drops
 * HEAD bodies. The answer goes out on the first call, before any request
 * body (which is then discarded with the connection). */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **con_cls) {
    (void)cls, (void)version, (void)upload_data, (void)upload_data_size, (void)con_cls;
    static const char text[] = "text/plain; charset=utf-8";
    bool get = strcmp(method, MHD_HTTP_METHOD_GET) == 0 || strcmp(method, MHD_HTTP_METHOD_HEAD) == 0;
    if (get && strcmp(url, "/healthz") == 0) return respond(conn, MHD_HTTP_OK, text, "ok", false);
    if (get && strcmp(url, "/metrics") == 0) {
        char *m = metrics_render();
        if (m == NULL) return respond(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, text, "out of memory\n", false);
        return respond(conn, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", m, true);
    }
    return respond(conn, MHD_HTTP_NOT_FOUND, text, "not found\n", false);
}

static void accepted_closed(uv_handle_t *h) { free(h); }

static void on_connection(uv_stream_t *l, int status) {
    if (status < 0) return;
    uv_tcp_t *c = malloc(sizeof *c);
    if (c == NULL || uv_tcp_init(l->loop, c) != 0) {
        free(c);
        return;
    }
    if (uv_accept(l, (uv_stream_t *)c) != 0) {
        uv_close((uv_handle_t *)c, accepted_closed);
        return;
    }
    /* The socket goes to MHD (a duplicate: libuv closes its own). */
    uv_os_fd_t fd = -1;
    struct sockaddr_storage peer;
    int plen = sizeof peer;
    int mine = -1;
    if (uv_fileno((uv_handle_t *)c, &fd) == 0 && uv_tcp_getpeername(c, (struct sockaddr *)&peer, &plen) == 0)
        mine = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    uv_close((uv_handle_t *)c, accepted_closed);
    if (mine < 0) return;
    /* over METRICS_MAX_CONN, or out of memory: MHD closes it */
    MHD_add_connection(srv.mhd, mine, (const struct sockaddr *)&peer, (socklen_t)plen);
    mhd_drive();
}

static void handle_closed(uv_handle_t *h) {
    (void)h;
    srv.open_handles--;
}

/* Loop thread: closes the handles and the daemon (its connections too). */
static void server_close(void) {
    uv_handle_t *hs[] = {(uv_handle_t *)&srv.listener, (uv_handle_t *)&srv.mhd_poll, (uv_handle_t *)&srv.mhd_timer};
    for (size_t i = 0; i < sizeof hs / sizeof hs[0]; i++)
        if (!uv_is_closing(hs[i])) {
            srv.open_handles++;
            uv_close(hs[i], handle_closed);
        }
    if (srv.own_thread) uv_close((uv_handle_t *)&srv.stop_async, NULL);
    MHD_stop_daemon(srv.mhd); /* after its fd's uv_poll was closed */
    srv.mhd = NULL;
}

static void stop_async_cb(uv_async_t *a) {
    (void)a;
    server_close();
}

static void *own_main(void *arg) {
    (void)arg;
    uv_run(&srv.own_loop, UV_RUN_DEFAULT);
    return NULL;
}

/* The process loop's stop hook: the endpoint closes as the drain begins. */
static void on_loop_stop(void *arg) {
    (void)arg;
    if (srv.running && !srv.own_thread) {
        server_close();
        srv.running = false;
    }
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
    if (port < 0) {
        close(fd);
        return OM_E_INTERNAL;
    }
    srv.own_thread = loop_get() == NULL || !loop_on_loop();
    if (srv.own_thread) {
        if (uv_loop_init(&srv.own_loop) != 0) {
            close(fd);
            return OM_E_INTERNAL;
        }
        srv.loop = &srv.own_loop;
    } else {
        srv.loop = loop_get();
    }
    srv.mhd = MHD_start_daemon(MHD_USE_NO_LISTEN_SOCKET | MHD_USE_EPOLL | MHD_USE_ERROR_LOG, 0, NULL, NULL,
                               on_request, NULL, MHD_OPTION_CONNECTION_LIMIT, (unsigned)METRICS_MAX_CONN,
                               MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)METRICS_CONN_S,
                               MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)METRICS_MEM_LIMIT, MHD_OPTION_END);
    const union MHD_DaemonInfo *info = srv.mhd ? MHD_get_daemon_info(srv.mhd, MHD_DAEMON_INFO_EPOLL_FD) : NULL;
    if (info == NULL) {
        log_error("metrics: libmicrohttpd did not start");
        if (srv.mhd) MHD_stop_daemon(srv.mhd);
        srv.mhd = NULL;
        close(fd);
        if (srv.own_thread) uv_loop_close(&srv.own_loop);
        return OM_E_INTERNAL;
    }
    uv_tcp_init(srv.loop, &srv.listener);
    uv_poll_init(srv.loop, &srv.mhd_poll, info->epoll_fd);
    uv_timer_init(srv.loop, &srv.mhd_timer);
    int rc = uv_tcp_open(&srv.listener, fd);
    if (rc == 0) rc = uv_listen((uv_stream_t *)&srv.listener, 64, on_connection);
    if (rc == 0) rc = uv_poll_start(&srv.mhd_poll, UV_READABLE, mhd_poll_cb);
    if (rc == 0 && srv.own_thread) rc = uv_async_init(srv.loop, &srv.stop_async, stop_async_cb);
    if (rc == 0 && srv.own_thread) {
        /* The server thread takes no signals: they belong to the main thread. */
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_BLOCK, &all, &old);
        rc = pthread_create(&srv.thread, NULL, own_main, NULL) == 0 ? 0 : UV_ENOMEM;
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (rc != 0) uv_close((uv_handle_t *)&srv.stop_async, NULL);
    }
    if (rc == 0 && !srv.own_thread) rc = loop_on_stop(on_loop_stop, NULL) == 0 ? 0 : UV_ENOMEM;
    if (rc != 0) {
        log_error("metrics: cannot serve: %s", uv_strerror(rc));
        bool own = srv.own_thread;
        srv.own_thread = false; /* the async (if any) is closed already */
        server_close();
        srv.own_thread = own;
        if (own) {
            uv_run(&srv.own_loop, UV_RUN_DEFAULT);
            uv_loop_close(&srv.own_loop);
        }
        return OM_E_INTERNAL;
    }
    srv.running = true;
    return port;
}

/* Harmless when not started, and after the loop's stop hook closed it. */
void metrics_stop(void) {
    if (!srv.running) return;
    srv.running = false;
    if (!srv.own_thread) { /* on the process loop's thread */
        server_close();
        return;
    }
    uv_async_send(&srv.stop_async);
    pthread_join(srv.thread, NULL);
    if (uv_loop_close(&srv.own_loop) != 0) log_error("metrics: the endpoint's loop did not close cleanly");
}
