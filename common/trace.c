/* trace.c — W3C trace context, spans and their OTLP/gRPC exporter (trace.h,
 * docs/common/trace.md; issue 19).
 *
 * Cost when no endpoint is set: trace_start draws a span id from a
 * thread-local generator and returns NULL — no allocation, no lock.
 * With an endpoint: a sampled span is one malloc'd struct, queued under one
 * mutex at its end; the exporter thread (`orgmesh-otlp`) takes batches off
 * the queue and sends them with rpc_client_call on a completion queue of its
 * own, so neither a handler nor the event path ever waits on the collector. */
#define _GNU_SOURCE
#include "trace.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "metrics.h"
#include "om_err.h"
#include "opentelemetry/proto/collector/trace/v1/trace_service.pb-c.h"
#include "rpc.h"

#define TRACE_MAX_ATTRS 12
#define TRACE_MAX_LINKS 4
#define TRACE_MAX_RESOURCE 16

typedef struct tattr {
    const char *key; /* a literal */
    bool is_int;
    int64_t i;
    char *s;
} tattr;

struct trace_span {
    trace_ctx ctx;
    uint8_t parent[8];
    bool has_parent;
    int kind;
    char *name;
    char *state;
    uint64_t start_ns, end_ns;
    tattr attrs[TRACE_MAX_ATTRS];
    int n_attrs;
    uint32_t dropped_attrs;
    trace_ctx links[TRACE_MAX_LINKS];
    int n_links;
    bool error;
    char *status_msg;
};

enum { SAMPLE_ON, SAMPLE_OFF, SAMPLE_RATIO };

static struct {
    atomic_bool enabled;
    bool db; /* ORGMESH_TRACE_DB: statements as db spans inside sampled traces */
    bool started; /* the exporter thread runs */
    int sampler;
    bool parent_based;
    uint64_t ratio_bound; /* sampled when the id's low 64 bits < bound */
    bool ratio_all;
    char *endpoint;
    char *service;
    char *res_keys[TRACE_MAX_RESOURCE], *res_vals[TRACE_MAX_RESOURCE];
    int n_res;
    int queue_max, batch_max, delay_ms, timeout_ms;

    pthread_mutex_t mu;
    pthread_cond_t cv, idle_cv;
    trace_span **queue; /* ring */
    int head, len;
    bool stop, exporting;
    uint64_t flush_gen, flushed_gen;
    pthread_t thread;
    rpc_client *client;

    atomic_int_fast64_t dropped;
    metrics_counter *m_dropped, *m_exported, *m_failed;
} tr = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER, .idle_cv = PTHREAD_COND_INITIALIZER};

static _Thread_local trace_ctx cur;
static _Thread_local char cur_state[TRACE_STATE_MAX + 1];
static _Thread_local bool suppressed;
static _Thread_local uint64_t rng_state;
static _Thread_local bool rng_seeded;

/* ---- ids ----------------------------------------------------------------- */

static uint64_t rng_next(void) {
    if (!rng_seeded) {
        uint64_t seed = 0;
        if (getrandom(&seed, sizeof seed, GRND_NONBLOCK) != (ssize_t)sizeof seed) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            seed = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 32) ^ (uint64_t)(uintptr_t)&seed;
        }
        rng_state = seed;
        rng_seeded = true;
    }
    /* splitmix64: ids need to be unique, not secret */
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void rand_bytes(uint8_t *p, size_t n) {
    while (n > 0) {
        uint64_t x = rng_next();
        size_t k = n < 8 ? n : 8;
        memcpy(p, &x, k);
        p += k;
        n -= k;
    }
}

static bool all_zero(const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i]) return false;
    return true;
}

static void new_id(uint8_t *p, size_t n) {
    do rand_bytes(p, n);
    while (all_zero(p, n));
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1; /* uppercase is invalid in traceparent */
}

static bool unhex(const char *s, uint8_t *out, size_t n) {
    for (size_t i = 0; i < n; i++) {
        int a = hexval(s[2 * i]), b = hexval(s[2 * i + 1]);
        if (a < 0 || b < 0) return false;
        out[i] = (uint8_t)(a << 4 | b);
    }
    return true;
}

static void tohex(const uint8_t *p, size_t n, char *out) {
    static const char d[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = d[p[i] >> 4];
        out[2 * i + 1] = d[p[i] & 15];
    }
    out[2 * n] = '\0';
}

bool trace_parse(const char *s, size_t n, trace_ctx *out) {
    memset(out, 0, sizeof *out);
    if (s == NULL || n < 55) return false;
    uint8_t ver;
    if (!unhex(s, &ver, 1) || ver == 0xff) return false;
    /* version 00 is exactly 55 characters; a later version may append "-..." */
    if (ver == 0 ? n != 55 : (n > 55 && s[55] != '-')) return false;
    if (s[2] != '-' || s[35] != '-' || s[52] != '-') return false;
    trace_ctx c = {0};
    if (!unhex(s + 3, c.trace_id, 16) || !unhex(s + 36, c.span_id, 8) || !unhex(s + 53, &c.flags, 1))
        return false;
    if (all_zero(c.trace_id, 16) || all_zero(c.span_id, 8)) return false;
    c.valid = true;
    *out = c;
    return true;
}

void trace_format(const trace_ctx *c, char out[TRACE_PARENT_LEN]) {
    memcpy(out, "00-", 3);
    tohex(c->trace_id, 16, out + 3);
    out[35] = '-';
    tohex(c->span_id, 8, out + 36);
    out[52] = '-';
    tohex(&c->flags, 1, out + 53);
}

void trace_hex_trace_id(const trace_ctx *c, char out[33]) {
    tohex(c->trace_id, 16, out);
}

void trace_hex_span_id(const trace_ctx *c, char out[17]) {
    tohex(c->span_id, 8, out);
}

/* ---- current context ------------------------------------------------------ */

void trace_set_current(const trace_ctx *c, const char *state) {
    if (c == NULL || !c->valid) {
        memset(&cur, 0, sizeof cur);
        cur_state[0] = '\0';
        log_set_trace(NULL);
        return;
    }
    cur = *c;
    size_t n = state ? strlen(state) : 0;
    if (n > TRACE_STATE_MAX) n = 0; /* too long: dropped, as W3C allows */
    memcpy(cur_state, state ? state : "", n);
    cur_state[n] = '\0';
    char t[33], s[17];
    tohex(c->trace_id, 16, t);
    tohex(c->span_id, 8, s);
    log_set_trace(t);
    log_set_span(s);
}

const trace_ctx *trace_current(void) {
    return cur.valid ? &cur : NULL;
}

const char *trace_current_state(void) {
    return cur.valid ? cur_state : "";
}

bool trace_suppressed(void) {
    return suppressed;
}

bool trace_db_enabled(void) {
    return tr.db;
}

bool trace_enabled(void) {
    return atomic_load_explicit(&tr.enabled, memory_order_relaxed);
}

/* ---- spans ----------------------------------------------------------------- */

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static bool sample(const trace_ctx *parent, const uint8_t trace_id[16]) {
    if (tr.parent_based && parent != NULL) return (parent->flags & 1) != 0;
    switch (tr.sampler) {
    case SAMPLE_OFF: return false;
    case SAMPLE_RATIO: {
        if (tr.ratio_all) return true;
        uint64_t x = 0;
        for (int i = 8; i < 16; i++) x = x << 8 | trace_id[i];
        return x < tr.ratio_bound;
    }
    default: return true;
    }
}

void trace_child(const trace_ctx *parent, trace_ctx *out) {
    if (parent != NULL && !parent->valid) parent = NULL;
    trace_ctx c;
    if (parent != NULL) memcpy(c.trace_id, parent->trace_id, 16);
    else new_id(c.trace_id, 16);
    new_id(c.span_id, 8);
    c.valid = true;
    if (trace_enabled()) c.flags = sample(parent, c.trace_id) ? 1 : 0;
    else c.flags = parent != NULL ? parent->flags : 0; /* passed along untouched */
    *out = c;
}

trace_span *trace_start(const trace_ctx *parent, int kind, const char *name, trace_ctx *out) {
    if (parent != NULL && !parent->valid) parent = NULL;
    trace_child(parent, out);
    trace_ctx c = *out;
    if (!trace_enabled() || !(c.flags & 1) || suppressed) return NULL;
    trace_span *s = calloc(1, sizeof *s);
    if (s == NULL) return NULL;
    s->name = strdup(name ? name : "");
    if (s->name == NULL) {
        free(s);
        return NULL;
    }
    s->ctx = c;
    if (parent != NULL) {
        memcpy(s->parent, parent->span_id, 8);
        s->has_parent = true;
    }
    s->kind = kind;
    s->start_ns = now_ns();
    return s;
}

void trace_attr_str(trace_span *s, const char *key, const char *value) {
    if (s == NULL) return;
    if (s->n_attrs == TRACE_MAX_ATTRS) {
        s->dropped_attrs++;
        return;
    }
    char *v = strdup(value ? value : "");
    if (v == NULL) {
        s->dropped_attrs++;
        return;
    }
    s->attrs[s->n_attrs++] = (tattr){.key = key, .s = v};
}

void trace_attr_int(trace_span *s, const char *key, int64_t value) {
    if (s == NULL) return;
    if (s->n_attrs == TRACE_MAX_ATTRS) {
        s->dropped_attrs++;
        return;
    }
    s->attrs[s->n_attrs++] = (tattr){.key = key, .is_int = true, .i = value};
}

void trace_set_state(trace_span *s, const char *state) {
    if (s == NULL || state == NULL || state[0] == '\0' || s->state != NULL) return;
    s->state = strdup(state);
}

void trace_link(trace_span *s, const trace_ctx *other) {
    if (s == NULL || other == NULL || !other->valid || s->n_links == TRACE_MAX_LINKS) return;
    s->links[s->n_links++] = *other;
}

void trace_discard(trace_span *s) {
    if (s == NULL) return;
    for (int i = 0; i < s->n_attrs; i++) free(s->attrs[i].s);
    free(s->name);
    free(s->state);
    free(s->status_msg);
    free(s);
}

static void count_drop(void) {
    atomic_fetch_add(&tr.dropped, 1);
    metrics_counter_add(tr.m_dropped, 1);
}

void trace_end(trace_span *s, bool error, const char *message) {
    if (s == NULL) return;
    s->end_ns = now_ns();
    s->error = error;
    if (error && message != NULL && message[0]) s->status_msg = strdup(message);
    if (s->state == NULL && cur.valid && cur_state[0] && memcmp(cur.trace_id, s->ctx.trace_id, 16) == 0)
        s->state = strdup(cur_state);
    pthread_mutex_lock(&tr.mu);
    bool queued = false;
    if (tr.started && !tr.stop && tr.len < tr.queue_max) {
        tr.queue[(tr.head + tr.len) % tr.queue_max] = s;
        tr.len++;
        queued = true;
        if (tr.len >= tr.batch_max) pthread_cond_signal(&tr.cv);
    }
    pthread_mutex_unlock(&tr.mu);
    if (!queued) {
        count_drop();
        trace_discard(s);
    }
}

trace_span *trace_rpc_start(const trace_ctx *parent, int kind, const char *path, trace_ctx *out) {
    if (!trace_enabled()) {
        trace_child(parent, out);
        return NULL;
    }
    const char *name = path && path[0] == '/' ? path + 1 : (path ? path : "");
    trace_span *s = trace_start(parent, kind, name, out);
    if (s == NULL) return NULL;
    const char *slash = strrchr(name, '/');
    trace_attr_str(s, "rpc.system", "grpc");
    if (slash != NULL) {
        char svc[256];
        size_t n = (size_t)(slash - name);
        if (n >= sizeof svc) n = sizeof svc - 1;
        memcpy(svc, name, n);
        svc[n] = '\0';
        trace_attr_str(s, "rpc.service", svc);
        trace_attr_str(s, "rpc.method", slash + 1);
    }
    return s;
}

void trace_rpc_end(trace_span *s, int code, const char *message) {
    if (s == NULL) return;
    trace_attr_int(s, "rpc.grpc.status_code", code);
    bool error;
    if (s->kind == TRACE_SERVER)
        /* UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS */
        error = code == 2 || code == 4 || code == 12 || code == 13 || code == 14 || code == 15;
    else
        error = code != 0;
    trace_end(s, error, message);
}

/* ---- export ------------------------------------------------------------------ */

typedef Opentelemetry__Proto__Common__V1__KeyValue kv_t;
typedef Opentelemetry__Proto__Common__V1__AnyValue any_t;

static void kv_set_str(kv_t *kv, any_t *v, const char *key, const char *val) {
    opentelemetry__proto__common__v1__key_value__init(kv);
    opentelemetry__proto__common__v1__any_value__init(v);
    kv->key = (char *)key;
    v->value_case = OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_STRING_VALUE;
    v->string_value = (char *)val;
    kv->value = v;
}

static void kv_set_int(kv_t *kv, any_t *v, const char *key, int64_t val) {
    opentelemetry__proto__common__v1__key_value__init(kv);
    opentelemetry__proto__common__v1__any_value__init(v);
    kv->key = (char *)key;
    v->value_case = OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_INT_VALUE;
    v->int_value = val;
    kv->value = v;
}

/* One span's OTLP message, its pieces in `mem` (one allocation). */
typedef struct span_msg {
    Opentelemetry__Proto__Trace__V1__Span sp;
    Opentelemetry__Proto__Trace__V1__Status st;
    kv_t kv[TRACE_MAX_ATTRS];
    any_t av[TRACE_MAX_ATTRS];
    kv_t *kvp[TRACE_MAX_ATTRS];
    Opentelemetry__Proto__Trace__V1__Span__Link ln[TRACE_MAX_LINKS];
    Opentelemetry__Proto__Trace__V1__Span__Link *lnp[TRACE_MAX_LINKS];
} span_msg;

static void span_fill(span_msg *m, trace_span *s) {
    opentelemetry__proto__trace__v1__span__init(&m->sp);
    opentelemetry__proto__trace__v1__status__init(&m->st);
    m->sp.trace_id = (ProtobufCBinaryData){16, s->ctx.trace_id};
    m->sp.span_id = (ProtobufCBinaryData){8, s->ctx.span_id};
    if (s->has_parent) m->sp.parent_span_id = (ProtobufCBinaryData){8, s->parent};
    m->sp.trace_state = s->state ? s->state : (char *)"";
    m->sp.flags = s->ctx.flags;
    m->sp.name = s->name;
    m->sp.kind = (Opentelemetry__Proto__Trace__V1__Span__SpanKind)s->kind;
    m->sp.start_time_unix_nano = s->start_ns;
    m->sp.end_time_unix_nano = s->end_ns;
    for (int i = 0; i < s->n_attrs; i++) {
        if (s->attrs[i].is_int) kv_set_int(&m->kv[i], &m->av[i], s->attrs[i].key, s->attrs[i].i);
        else kv_set_str(&m->kv[i], &m->av[i], s->attrs[i].key, s->attrs[i].s);
        m->kvp[i] = &m->kv[i];
    }
    m->sp.n_attributes = (size_t)s->n_attrs;
    m->sp.attributes = m->kvp;
    m->sp.dropped_attributes_count = s->dropped_attrs;
    for (int i = 0; i < s->n_links; i++) {
        opentelemetry__proto__trace__v1__span__link__init(&m->ln[i]);
        m->ln[i].trace_id = (ProtobufCBinaryData){16, s->links[i].trace_id};
        m->ln[i].span_id = (ProtobufCBinaryData){8, s->links[i].span_id};
        m->ln[i].flags = s->links[i].flags;
        m->lnp[i] = &m->ln[i];
    }
    m->sp.n_links = (size_t)s->n_links;
    m->sp.links = m->lnp;
    m->st.code = s->error ? OPENTELEMETRY__PROTO__TRACE__V1__STATUS__STATUS_CODE__STATUS_CODE_ERROR
                          : OPENTELEMETRY__PROTO__TRACE__V1__STATUS__STATUS_CODE__STATUS_CODE_UNSET;
    m->st.message = s->status_msg ? s->status_msg : (char *)"";
    m->sp.status = &m->st;
}

/* Send one batch (the exporter thread, or trace_shutdown after it). */
static void export_batch(trace_span **spans, int n, int timeout_ms) {
    span_msg *msgs = calloc((size_t)n, sizeof *msgs);
    Opentelemetry__Proto__Trace__V1__Span **sp = calloc((size_t)n, sizeof *sp);
    kv_t *rkv = calloc((size_t)tr.n_res + 1, sizeof *rkv);
    any_t *rav = calloc((size_t)tr.n_res + 1, sizeof *rav);
    kv_t **rkvp = calloc((size_t)tr.n_res + 1, sizeof *rkvp);
    int rc = OM_E_NOMEM;
    if (msgs != NULL && sp != NULL && rkv != NULL && rav != NULL && rkvp != NULL) {
        for (int i = 0; i < n; i++) {
            span_fill(&msgs[i], spans[i]);
            sp[i] = &msgs[i].sp;
        }
        for (int i = 0; i < tr.n_res; i++) {
            kv_set_str(&rkv[i], &rav[i], tr.res_keys[i], tr.res_vals[i]);
            rkvp[i] = &rkv[i];
        }
        Opentelemetry__Proto__Resource__V1__Resource res = OPENTELEMETRY__PROTO__RESOURCE__V1__RESOURCE__INIT;
        res.attributes = rkvp;
        res.n_attributes = (size_t)tr.n_res;
        Opentelemetry__Proto__Common__V1__InstrumentationScope scope =
            OPENTELEMETRY__PROTO__COMMON__V1__INSTRUMENTATION_SCOPE__INIT;
        scope.name = (char *)"orgmesh";
        Opentelemetry__Proto__Trace__V1__ScopeSpans ss = OPENTELEMETRY__PROTO__TRACE__V1__SCOPE_SPANS__INIT;
        ss.scope = &scope;
        ss.spans = sp;
        ss.n_spans = (size_t)n;
        Opentelemetry__Proto__Trace__V1__ScopeSpans *ssp = &ss;
        Opentelemetry__Proto__Trace__V1__ResourceSpans rs = OPENTELEMETRY__PROTO__TRACE__V1__RESOURCE_SPANS__INIT;
        rs.resource = &res;
        rs.scope_spans = &ssp;
        rs.n_scope_spans = 1;
        Opentelemetry__Proto__Trace__V1__ResourceSpans *rsp = &rs;
        Opentelemetry__Proto__Collector__Trace__V1__ExportTraceServiceRequest req =
            OPENTELEMETRY__PROTO__COLLECTOR__TRACE__V1__EXPORT_TRACE_SERVICE_REQUEST__INIT;
        req.resource_spans = &rsp;
        req.n_resource_spans = 1;
        rpc_call_opts o = {.deadline_ms = timeout_ms, .idempotent = true};
        ProtobufCMessage *resp = NULL;
        rpc_status st;
        rc = rpc_client_call(tr.client, "/opentelemetry.proto.collector.trace.v1.TraceService/Export", &req.base,
                             &opentelemetry__proto__collector__trace__v1__export_trace_service_response__descriptor,
                             &resp, &o, &st);
        if (resp != NULL) protobuf_c_message_free_unpacked(resp, NULL);
        if (rc != 0) log_warn("otlp export of %d spans to %s failed: %s %s", n, tr.endpoint, om_err_name(rc), st.message);
    }
    if (rc == 0) {
        metrics_counter_add(tr.m_exported, n);
    } else {
        metrics_counter_add(tr.m_failed, 1);
        for (int i = 0; i < n; i++) count_drop();
    }
    for (int i = 0; i < n; i++) trace_discard(spans[i]);
    free(msgs);
    free(sp);
    free(rkv);
    free(rav);
    free(rkvp);
}

/* Take up to batch_max spans off the queue (under tr.mu). */
static int take(trace_span **out) {
    int n = 0;
    while (tr.len > 0 && n < tr.batch_max) {
        out[n++] = tr.queue[tr.head];
        tr.head = (tr.head + 1) % tr.queue_max;
        tr.len--;
    }
    return n;
}

static void *exporter_main(void *arg) {
    (void)arg;
    suppressed = true;
    trace_span **batch = calloc((size_t)tr.batch_max, sizeof *batch);
    if (batch == NULL) return NULL;
    pthread_mutex_lock(&tr.mu);
    for (;;) {
        if (!tr.stop && tr.len < tr.batch_max && tr.flush_gen == tr.flushed_gen) {
            struct timespec dl;
            clock_gettime(CLOCK_REALTIME, &dl);
            dl.tv_sec += tr.delay_ms / 1000;
            dl.tv_nsec += (long)(tr.delay_ms % 1000) * 1000000L;
            if (dl.tv_nsec >= 1000000000L) {
                dl.tv_sec++;
                dl.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&tr.cv, &tr.mu, &dl);
        }
        uint64_t gen = tr.flush_gen;
        bool stop = tr.stop;
        int n = take(batch);
        tr.exporting = n > 0;
        pthread_mutex_unlock(&tr.mu);
        if (n > 0) export_batch(batch, n, stop ? (tr.timeout_ms < 2000 ? tr.timeout_ms : 2000) : tr.timeout_ms);
        pthread_mutex_lock(&tr.mu);
        tr.exporting = false;
        if (tr.len == 0) {
            tr.flushed_gen = gen;
            pthread_cond_broadcast(&tr.idle_cv);
            if (tr.stop) break;
        }
    }
    pthread_mutex_unlock(&tr.mu);
    free(batch);
    return NULL;
}

void trace_flush(void) {
    pthread_mutex_lock(&tr.mu);
    if (!tr.started) {
        pthread_mutex_unlock(&tr.mu);
        return;
    }
    uint64_t gen = ++tr.flush_gen;
    pthread_cond_signal(&tr.cv);
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += tr.timeout_ms / 1000 + 1;
    while (tr.flushed_gen < gen && !tr.stop)
        if (pthread_cond_timedwait(&tr.idle_cv, &tr.mu, &dl) != 0) break;
    pthread_mutex_unlock(&tr.mu);
}

int64_t trace_dropped(void) {
    return atomic_load(&tr.dropped);
}

/* ---- configuration -------------------------------------------------------------- */

static void pct_decode(char *s) {
    char *w = s;
    for (char *r = s; *r; r++) {
        if (r[0] == '%' && r[1] && r[2]) {
            char h[3] = {r[1], r[2], 0};
            char *end;
            long v = strtol(h, &end, 16);
            if (*end == '\0' && v > 0) {
                *w++ = (char)v;
                r += 2;
                continue;
            }
        }
        *w++ = *r;
    }
    *w = '\0';
}

static void trim(char **s) {
    while (**s == ' ') (*s)++;
    char *e = *s + strlen(*s);
    while (e > *s && e[-1] == ' ') *--e = '\0';
}

static void res_add(const char *k, const char *v) {
    for (int i = 0; i < tr.n_res; i++)
        if (strcmp(tr.res_keys[i], k) == 0) {
            char *nv = strdup(v);
            if (nv == NULL) return;
            free(tr.res_vals[i]);
            tr.res_vals[i] = nv;
            return;
        }
    if (tr.n_res == TRACE_MAX_RESOURCE) return;
    char *nk = strdup(k), *nv = strdup(v);
    if (nk == NULL || nv == NULL) {
        free(nk);
        free(nv);
        return;
    }
    tr.res_keys[tr.n_res] = nk;
    tr.res_vals[tr.n_res++] = nv;
}

/* OTEL_RESOURCE_ATTRIBUTES: "k=v,k2=v2", values percent-encoded. */
static void parse_resource(const char *spec) {
    char *copy = spec ? strdup(spec) : NULL;
    if (copy == NULL) return;
    char *save = NULL;
    for (char *p = strtok_r(copy, ",", &save); p; p = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(p, '=');
        if (eq == NULL) continue;
        *eq = '\0';
        char *k = p, *v = eq + 1;
        trim(&k);
        trim(&v);
        pct_decode(v);
        if (*k) res_add(k, v);
    }
    free(copy);
}

static void parse_sampler(void) {
    const char *name = cfg_str("OTEL_TRACES_SAMPLER", "parentbased_always_on");
    const char *arg = cfg_str("OTEL_TRACES_SAMPLER_ARG", NULL);
    tr.parent_based = strncmp(name, "parentbased_", 12) == 0;
    const char *base = tr.parent_based ? name + 12 : name;
    double ratio = 1.0;
    if (strcmp(base, "always_on") == 0) {
        tr.sampler = SAMPLE_ON;
    } else if (strcmp(base, "always_off") == 0) {
        tr.sampler = SAMPLE_OFF;
    } else if (strcmp(base, "traceidratio") == 0) {
        tr.sampler = SAMPLE_RATIO;
        if (arg != NULL) {
            char *end = NULL;
            double r = strtod(arg, &end);
            if (end != arg && *end == '\0' && r >= 0.0 && r <= 1.0) ratio = r;
            else log_warn("OTEL_TRACES_SAMPLER_ARG=%s is not a ratio in [0, 1]: using 1", arg);
        }
    } else {
        log_warn("OTEL_TRACES_SAMPLER=%s is not known: using parentbased_always_on", name);
        tr.parent_based = true;
        tr.sampler = SAMPLE_ON;
    }
    tr.ratio_all = ratio >= 1.0;
    tr.ratio_bound = tr.ratio_all ? UINT64_MAX : (uint64_t)(ratio * 18446744073709551616.0);
}

int trace_init(const char *service) {
    if (tr.started) return 0;
    parse_sampler();
    tr.db = cfg_bool("ORGMESH_TRACE_DB", true);
    const char *ep = cfg_str("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", cfg_str("OTEL_EXPORTER_OTLP_ENDPOINT", NULL));
    if (ep == NULL) return 0; /* off: no span is ever allocated */
    if (strncmp(ep, "https://", 8) == 0) {
        log_error("OTEL_EXPORTER_OTLP_ENDPOINT=%s: TLS export is not supported, tracing stays off", ep);
        return OM_E_INVALID_ARGUMENT;
    }
    if (strncmp(ep, "http://", 7) == 0) ep += 7;
    tr.endpoint = strdup(ep);
    if (tr.endpoint == NULL) return OM_E_NOMEM;
    size_t el = strlen(tr.endpoint);
    if (el > 0 && tr.endpoint[el - 1] == '/') tr.endpoint[el - 1] = '\0';
    tr.queue_max = (int)cfg_int("OTEL_BSP_MAX_QUEUE_SIZE", 2048, 1, 1000000);
    tr.batch_max = (int)cfg_int("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512, 1, 1000000);
    if (tr.batch_max > tr.queue_max) tr.batch_max = tr.queue_max;
    tr.delay_ms = (int)cfg_int("OTEL_BSP_SCHEDULE_DELAY", 5000, 1, 3600000);
    tr.timeout_ms = (int)cfg_int("OTEL_EXPORTER_OTLP_TIMEOUT", 10000, 1, 600000);
    parse_resource(cfg_str("OTEL_RESOURCE_ATTRIBUTES", NULL));
    res_add("service.name", cfg_str("OTEL_SERVICE_NAME", service ? service : "orgmesh"));
    res_add("telemetry.sdk.name", "orgmesh");
    res_add("telemetry.sdk.language", "c");
    tr.queue = calloc((size_t)tr.queue_max, sizeof *tr.queue);
    if (tr.queue == NULL) return OM_E_NOMEM;
    int rc = rpc_client_new(&tr.client, tr.endpoint);
    if (rc != 0) return rc;
    tr.m_dropped = metrics_counter_register("orgmesh_trace_spans_dropped_total",
                                            "Spans dropped: the export queue was full or the export failed.");
    tr.m_exported = metrics_counter_register("orgmesh_trace_spans_exported_total", "Spans sent to the OTLP collector.");
    tr.m_failed = metrics_counter_register("orgmesh_trace_export_failures_total", "OTLP export calls that failed.");
    tr.started = true;
    tr.stop = false;
    if (pthread_create(&tr.thread, NULL, exporter_main, NULL) != 0) {
        tr.started = false;
        return OM_E_UNAVAILABLE;
    }
    pthread_setname_np(tr.thread, "orgmesh-otlp");
    atomic_store(&tr.enabled, true);
    log_info("tracing: exporting to %s (sampler %s)", tr.endpoint,
             cfg_str("OTEL_TRACES_SAMPLER", "parentbased_always_on"));
    return 0;
}

void trace_shutdown(void) {
    pthread_mutex_lock(&tr.mu);
    if (!tr.started) {
        pthread_mutex_unlock(&tr.mu);
        return;
    }
    atomic_store(&tr.enabled, false);
    tr.stop = true;
    pthread_cond_signal(&tr.cv);
    pthread_mutex_unlock(&tr.mu);
    pthread_join(tr.thread, NULL);
    pthread_mutex_lock(&tr.mu);
    tr.started = false;
    while (tr.len > 0) { /* the thread ended on a failed last export */
        count_drop();
        trace_discard(tr.queue[tr.head]);
        tr.head = (tr.head + 1) % tr.queue_max;
        tr.len--;
    }
    pthread_mutex_unlock(&tr.mu);
    rpc_client_free(tr.client);
    tr.client = NULL;
    free(tr.queue);
    tr.queue = NULL;
    free(tr.endpoint);
    tr.endpoint = NULL;
    for (int i = 0; i < tr.n_res; i++) {
        free(tr.res_keys[i]);
        free(tr.res_vals[i]);
    }
    tr.n_res = 0;
}
