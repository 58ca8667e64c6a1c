/* rpc_server.c — the gRPC server every orgmesh service runs.
 *
 * Poller threads wait on gRPC completion queues and never block on I/O: they
 * accept calls, decode and authenticate them, and hand them to a pool of
 * worker threads (which may block on PostgreSQL and Redis) — or answer at once
 * for methods marked RPC_INLINE. Workers start the reply batch themselves; its
 * completion comes back to the poller that owns the call, which frees it. */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/time.h>

#include "grpc/health/v1/health.pb-c.h"
#include "idem.h"
#include "l10n.h"
#include "orgmesh/type/v1/item_error.pb-c.h"
#include "log.h"
#include "metrics.h"
#include "om_time.h"
#include "pbcheck.h"
#include "rpc_internal.h"
#include "trace.h"
#include "work.h"

#define RPC_REQUESTS_PER_METHOD 8   /* calls posted per method and poller */
#define RPC_GENERIC_REQUESTS 4      /* posted for unknown methods */
#define RPC_QUEUE_LIMIT 20000       /* queued calls before refusing */
#define RPC_TOKEN_CACHE 64          /* verified tokens remembered per thread */
#define RPC_MAX_TOKEN 8192

/* ------------------------------------------------------------------------ */
/* call memory: a bump allocator freed with the call                          */

typedef struct arena_block {
    struct arena_block *next;
    size_t used, cap;
    _Alignas(16) unsigned char data[];
} arena_block;

struct rpc_arena {
    arena_block *head;
};

rpc_arena *rpc_arena_new(void) {
    return calloc(1, sizeof(rpc_arena));
}

void *rpc_arena_alloc(rpc_arena *a, size_t size) {
    size = (size + 15) & ~(size_t)15;
    if (size == 0) size = 16;
    arena_block *b = a->head;
    if (b == NULL || b->cap - b->used < size) {
        size_t cap = size > 3000 ? size : 4096 - sizeof(arena_block);
        b = malloc(sizeof(arena_block) + cap);
        if (b == NULL) return NULL;
        b->cap = cap;
        b->used = 0;
        b->next = a->head;
        a->head = b;
    }
    void *p = b->data + b->used;
    b->used += size;
    return p;
}

void rpc_arena_free(rpc_arena *a) {
    if (a == NULL) return;
    arena_block *b = a->head;
    while (b != NULL) {
        arena_block *next = b->next;
        free(b);
        b = next;
    }
    free(a);
}

/* ------------------------------------------------------------------------ */
/* types                                                                      */

enum tag_kind {
    TAG_NEW_CALL,    /* a registered method's call arrived */
    TAG_NEW_GENERIC, /* a call to a method nobody registered */
    TAG_CLOSE,       /* RECV_CLOSE_ON_SERVER finished (client gone or done) */
    TAG_SENT,        /* the final batch finished */
    TAG_STREAM,      /* a reflection stream batch finished */
    TAG_SHUTDOWN,
};

typedef struct rpc_tag {
    enum tag_kind kind;
    void *ptr;
} rpc_tag;

typedef struct srv_method {
    char *path;                          /* "/pkg.Svc/Method" */
    const ProtobufCMethodDescriptor *md; /* NULL for streams */
    rpc_unary_fn fn;
    unsigned flags;
    const char *const *services;         /* who may call it as a service (rpc_method) */
    bool stream;                         /* reflection */
    bool item_errors;                    /* API-01: its reply can hold an ItemError */
    void *handle;
    metrics_method *metrics;
} srv_method;

typedef struct poller {
    rpc_server *srv;
    int index;
    grpc_completion_queue *cq;
    pthread_t thread;
} poller;

typedef struct health_entry {
    char name[128];
    bool serving;
} health_entry;

struct rpc_server {
    rpc_server_opts opts;
    char *service;
    char *listen;
    char domain[64];
    grpc_server *server;
    int port;
    auth_ctx *auth;

    srv_method *methods;
    int n_methods;
    const char **service_names; /* for reflection's list_services */
    int n_service_names;

    poller *pollers;
    int n_pollers;
    work_pool *pool;   /* opts.pool, or own_pool */
    work_pool *own_pool;

    pthread_mutex_t mu;
    pthread_cond_t cv;
    int queue_len;      /* calls queued or running on the pool */
    bool workers_stop;  /* refuse new ones (drain) */
    bool shutting_down;
    bool shutdown_done;
    /* Calls accepted and not yet freed, so a shutdown can wait for them and
     * answer the ones it gives up on UNAVAILABLE (not gRPC's CANCELLED). */
    pthread_mutex_t calls_mu;
    pthread_cond_t calls_cv;
    rpc_ctx *calls;     /* doubly linked through live_prev/live_next */
    int n_calls;
    atomic_bool draining;
    pthread_cond_t shutdown_cv;
    rpc_tag shutdown_tag;

    pthread_mutex_t health_mu;
    health_entry health[16];
    int n_health;
    bool serving;

    refl_index *refl;
    bool started;
};

struct rpc_ctx {
    rpc_server *srv;
    poller *poller;
    srv_method *method; /* NULL for generic */
    grpc_call *call;
    gpr_timespec deadline;
    grpc_metadata_array md;
    grpc_byte_buffer *payload;
    grpc_call_details details; /* generic calls only */
    rpc_tag new_tag, close_tag, sent_tag, stream_tag;
    atomic_int refs;
    atomic_bool cancelled;
    int close_cancelled;
    bool sent_initial; /* streams send initial metadata first */
    int64_t start_us;
    trace_ctx tctx;    /* issue 19: this call's server span context */
    trace_span *span;  /* recording span, or NULL */
    char *tracestate;  /* the caller's W3C tracestate, or NULL */

    rpc_arena *arena;
    bool oom;
    const ProtobufCMessage *req;
    ProtobufCMessage *resp;
    om_actor actor;
    bool have_actor;
    char *token;
    char *trace_id;
    char *accept_language; /* API-01: the `accept-language` metadata, or NULL */

    /* failure being built */
    int err_code;
    char *err_msg;
    rpc_kv *violations;
    size_t n_violations, cap_violations;
    rpc_kv *meta;
    size_t n_meta, cap_meta;
    rpc_packed_any *extra;
    size_t n_extra, cap_extra;

    /* reply */
    grpc_byte_buffer *reply;
    grpc_metadata trailer[1];
    size_t n_trailer;
    grpc_status_code status;
    grpc_byte_buffer *stream_in; /* reflection: last message received */

    bool live;      /* on srv->calls */
    rpc_ctx *live_prev, *live_next;
    bool on_worker; /* the handler runs on a worker thread */
    bool deferred;  /* an inline call re-queued with RPC_DEFER */
    work_job job;   /* on the worker pool */
};

static __thread char dummy_block[256];

/* ------------------------------------------------------------------------ */
/* small helpers                                                              */

static int64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static char *xstrdup(const char *s) {
    return s ? strdup(s) : NULL;
}

static bool slice_eq(grpc_slice s, const char *lit) {
    size_t n = strlen(lit);
    return GRPC_SLICE_LENGTH(s) == n && memcmp(GRPC_SLICE_START_PTR(s), lit, n) == 0;
}

/* ------------------------------------------------------------------------ */
/* handler API                                                                */

const om_actor *rpc_actor(const rpc_ctx *ctx) {
    return ctx->have_actor ? &ctx->actor : NULL;
}

const char *rpc_token(const rpc_ctx *ctx) {
    return ctx->token ? ctx->token : "";
}

const char *rpc_trace_id(const rpc_ctx *ctx) {
    return ctx->trace_id ? ctx->trace_id : "";
}

const char *rpc_method_name(const rpc_ctx *ctx) {
    return ctx->method ? ctx->method->path : "";
}

int64_t rpc_time_left_ms(const rpc_ctx *ctx) {
    gpr_timespec dl = gpr_convert_clock_type(ctx->deadline, GPR_CLOCK_MONOTONIC);
    if (gpr_time_cmp(dl, gpr_inf_future(GPR_CLOCK_MONOTONIC)) >= 0) return INT64_MAX;
    gpr_timespec left = gpr_time_sub(dl, gpr_now(GPR_CLOCK_MONOTONIC));
    int64_t ms = (int64_t)left.tv_sec * 1000 + left.tv_nsec / 1000000;
    return ms;
}

bool rpc_on_worker(const rpc_ctx *ctx) { return ctx->on_worker; }

bool rpc_cancelled(const rpc_ctx *ctx) {
    return atomic_load(&ctx->cancelled) || rpc_time_left_ms(ctx) <= 0;
}

void *rpc_alloc(rpc_ctx *ctx, size_t size) {
    void *p = rpc_arena_alloc(ctx->arena, size);
    if (p == NULL) {
        ctx->oom = true;
        /* A block the handler may scribble on; the call fails anyway. */
        return size <= sizeof dummy_block ? dummy_block : NULL;
    }
    return p;
}

void *rpc_calloc(rpc_ctx *ctx, size_t n, size_t size) {
    if (size != 0 && n > SIZE_MAX / size) {
        ctx->oom = true;
        return NULL;
    }
    void *p = rpc_alloc(ctx, n * size);
    if (p != NULL) memset(p, 0, n * size);
    return p;
}

char *rpc_strndup(rpc_ctx *ctx, const char *s, size_t n) {
    if (s == NULL) return NULL;
    char *p = rpc_alloc(ctx, n + 1);
    if (p == NULL) return NULL;
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *rpc_strdup(rpc_ctx *ctx, const char *s) {
    return s ? rpc_strndup(ctx, s, strlen(s)) : NULL;
}

static char *rpc_vsprintf(rpc_ctx *ctx, const char *fmt, va_list ap) {
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0) return rpc_strdup(ctx, "");
    char *p = rpc_alloc(ctx, (size_t)n + 1);
    if (p == NULL) return NULL;
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    return p;
}

char *rpc_sprintf(rpc_ctx *ctx, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *p = rpc_vsprintf(ctx, fmt, ap);
    va_end(ap);
    return p;
}

static void *pb_alloc(void *data, size_t size) {
    return rpc_alloc(data, size);
}

static void pb_free(void *data, void *ptr) {
    (void)data;
    (void)ptr; /* freed with the call */
}

ProtobufCAllocator *rpc_pb_allocator(rpc_ctx *ctx) {
    ProtobufCAllocator *a = rpc_alloc(ctx, sizeof *a);
    if (a == NULL) return NULL;
    a->alloc = pb_alloc;
    a->free = pb_free;
    a->allocator_data = ctx;
    return a;
}

/* Grow an arena-backed array by one element. */
static void *grow(rpc_ctx *ctx, void *arr, size_t *cap, size_t n, size_t elem) {
    if (n < *cap) return arr;
    size_t ncap = *cap ? *cap * 2 : 4;
    void *p = rpc_arena_alloc(ctx->arena, ncap * elem);
    if (p == NULL) {
        ctx->oom = true;
        return NULL;
    }
    if (arr != NULL) memcpy(p, arr, n * elem);
    *cap = ncap;
    return p;
}

void rpc_violation(rpc_ctx *ctx, const char *field, const char *fmt, ...) {
    rpc_kv *v = grow(ctx, ctx->violations, &ctx->cap_violations, ctx->n_violations, sizeof *v);
    if (v == NULL) return;
    ctx->violations = v;
    va_list ap;
    va_start(ap, fmt);
    v[ctx->n_violations].key = rpc_strdup(ctx, field);
    v[ctx->n_violations].value = rpc_vsprintf(ctx, fmt, ap);
    va_end(ap);
    ctx->n_violations++;
}

bool rpc_has_violations(const rpc_ctx *ctx) {
    return ctx->n_violations > 0;
}

void rpc_error_meta(rpc_ctx *ctx, const char *key, const char *value) {
    rpc_kv *m = grow(ctx, ctx->meta, &ctx->cap_meta, ctx->n_meta, sizeof *m);
    if (m == NULL) return;
    ctx->meta = m;
    m[ctx->n_meta].key = rpc_strdup(ctx, key);
    m[ctx->n_meta].value = rpc_strdup(ctx, value ? value : "");
    ctx->n_meta++;
}

void rpc_error_detail(rpc_ctx *ctx, const ProtobufCMessage *msg) {
    rpc_packed_any *x = grow(ctx, ctx->extra, &ctx->cap_extra, ctx->n_extra, sizeof *x);
    if (x == NULL) return;
    ctx->extra = x;
    size_t n = protobuf_c_message_get_packed_size(msg);
    uint8_t *buf = rpc_alloc(ctx, n ? n : 1);
    if (buf == NULL || ctx->oom) return;
    protobuf_c_message_pack(msg, buf);
    x[ctx->n_extra].type_url =
        rpc_sprintf(ctx, "type.googleapis.com/%s", msg->descriptor->name);
    x[ctx->n_extra].data = buf;
    x[ctx->n_extra].len = n;
    ctx->n_extra++;
}

int rpc_fail(rpc_ctx *ctx, int code, const char *fmt, ...) {
    if (code >= 0) code = OM_E_INTERNAL;
    ctx->err_code = code;
    if (fmt != NULL) {
        va_list ap;
        va_start(ap, fmt);
        ctx->err_msg = rpc_vsprintf(ctx, fmt, ap);
        va_end(ap);
    } else {
        ctx->err_msg = NULL;
    }
    return code;
}

int rpc_fail_invalid(rpc_ctx *ctx) {
    if (ctx->n_violations == 1)
        return rpc_fail(ctx, OM_E_INVALID_ARGUMENT, "%s: %s", ctx->violations[0].key,
                        ctx->violations[0].value);
    return rpc_fail(ctx, OM_E_INVALID_ARGUMENT, "%zu fields are invalid", ctx->n_violations);
}

int rpc_idem_key(rpc_ctx *ctx, struct idem_key *key, const char *request_id, const ProtobufCMessage *req) {
    int rc = idem_key_init(key, rpc_actor(ctx), rpc_method_name(ctx), request_id, req);
    if (rc == OM_E_INVALID_ARGUMENT) {
        rpc_violation(ctx, "request_id", "must be at most %d characters", IDEM_MAX_REQUEST_ID);
        return rpc_fail_invalid(ctx);
    }
    return rc != 0 ? rpc_fail(ctx, rc, NULL) : 0;
}

/* ------------------------------------------------------------------------ */
/* call life                                                                  */

static rpc_ctx *ctx_new(rpc_server *srv, poller *p, srv_method *m) {
    rpc_ctx *ctx = calloc(1, sizeof *ctx);
    if (ctx == NULL) return NULL;
    ctx->arena = rpc_arena_new();
    if (ctx->arena == NULL) {
        free(ctx);
        return NULL;
    }
    ctx->srv = srv;
    ctx->poller = p;
    ctx->method = m;
    grpc_metadata_array_init(&ctx->md);
    if (m == NULL) grpc_call_details_init(&ctx->details);
    ctx->new_tag = (rpc_tag){m ? TAG_NEW_CALL : TAG_NEW_GENERIC, ctx};
    ctx->close_tag = (rpc_tag){TAG_CLOSE, ctx};
    ctx->sent_tag = (rpc_tag){TAG_SENT, ctx};
    ctx->stream_tag = (rpc_tag){TAG_STREAM, ctx};
    atomic_init(&ctx->refs, 1);
    atomic_init(&ctx->cancelled, false);
    return ctx;
}

/* Accepted calls are counted until freed (see rpc_server_stop). */
static void live_add(rpc_ctx *ctx) {
    rpc_server *srv = ctx->srv;
    pthread_mutex_lock(&srv->calls_mu);
    ctx->live = true;
    ctx->live_prev = NULL;
    ctx->live_next = srv->calls;
    if (srv->calls) srv->calls->live_prev = ctx;
    srv->calls = ctx;
    srv->n_calls++;
    pthread_mutex_unlock(&srv->calls_mu);
}

static void live_remove(rpc_ctx *ctx) {
    rpc_server *srv = ctx->srv;
    pthread_mutex_lock(&srv->calls_mu);
    if (ctx->live_prev) ctx->live_prev->live_next = ctx->live_next;
    else srv->calls = ctx->live_next;
    if (ctx->live_next) ctx->live_next->live_prev = ctx->live_prev;
    ctx->live = false;
    if (--srv->n_calls == 0) pthread_cond_broadcast(&srv->calls_cv);
    pthread_mutex_unlock(&srv->calls_mu);
}

static void ctx_free(rpc_ctx *ctx) {
    if (ctx->live) live_remove(ctx);
    trace_discard(ctx->span); /* issue 19: a span that never reached send_reply */
    free(ctx->tracestate);
    if (ctx->call != NULL) grpc_call_unref(ctx->call);
    if (ctx->payload != NULL) grpc_byte_buffer_destroy(ctx->payload);
    if (ctx->reply != NULL) grpc_byte_buffer_destroy(ctx->reply);
    if (ctx->stream_in != NULL) grpc_byte_buffer_destroy(ctx->stream_in);
    for (size_t i = 0; i < ctx->n_trailer; i++) {
        grpc_slice_unref(ctx->trailer[i].key);
        grpc_slice_unref(ctx->trailer[i].value);
    }
    grpc_metadata_array_destroy(&ctx->md);
    if (ctx->method == NULL) grpc_call_details_destroy(&ctx->details);
    free(ctx->token);
    free(ctx->trace_id);
    free(ctx->accept_language);
    rpc_arena_free(ctx->arena);
    free(ctx);
}

static void ctx_unref(rpc_ctx *ctx) {
    if (atomic_fetch_sub(&ctx->refs, 1) == 1) ctx_free(ctx);
}

/* Post one request for `m` (NULL: generic) on poller `p`. */
static void post_request(rpc_server *srv, poller *p, srv_method *m) {
    rpc_ctx *ctx = ctx_new(srv, p, m);
    if (ctx == NULL) {
        log_error("rpc: out of memory posting a call request");
        return;
    }
    grpc_call_error e;
    if (m != NULL) {
        e = grpc_server_request_registered_call(srv->server, m->handle, &ctx->call, &ctx->deadline,
                                                &ctx->md, m->stream ? NULL : &ctx->payload, p->cq,
                                                p->cq, &ctx->new_tag);
    } else {
        e = grpc_server_request_call(srv->server, &ctx->call, &ctx->details, &ctx->md, p->cq, p->cq,
                                     &ctx->new_tag);
    }
    if (e != GRPC_CALL_OK) {
        log_error("rpc: cannot request calls (%d)", (int)e);
        ctx_free(ctx);
    }
}

/* ------------------------------------------------------------------------ */
/* replies                                                                    */

/* ErrorInfo metadata entries offered to the catalog's placeholders. */
#define L10N_MAX_META 16

/* API-01: whether messages of type d can contain an ItemError (checked
 * once per method, so replies that cannot are never walked). */
static bool holds_item_error(const ProtobufCMessageDescriptor *d, int depth) {
    if (d == &orgmesh__type__v1__item_error__descriptor) return true;
    if (depth > 8) return false;
    for (unsigned i = 0; i < d->n_fields; i++)
        if (d->fields[i].type == PROTOBUF_C_TYPE_MESSAGE &&
            holds_item_error((const ProtobufCMessageDescriptor *)d->fields[i].descriptor, depth + 1))
            return true;
    return false;
}

/* API-01: every ItemError in msg gets its reason's words in `locale`. */
static void localize_items(rpc_ctx *ctx, ProtobufCMessage *msg, const char *locale, int depth) {
    if (msg == NULL || depth > 8) return;
    const ProtobufCMessageDescriptor *d = msg->descriptor;
    if (d == &orgmesh__type__v1__item_error__descriptor) {
        Orgmesh__Type__V1__ItemError *e = (void *)msg;
        char text[512];
        const char *used = l10n_message(locale, e->reason, NULL, 0, text, sizeof text);
        if (used != NULL) {
            e->locale = (char *)used;
            e->localized_message = rpc_strdup(ctx, text);
        }
        return;
    }
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (f->type != PROTOBUF_C_TYPE_MESSAGE) continue;
        if (!holds_item_error((const ProtobufCMessageDescriptor *)f->descriptor, depth + 1)) continue;
        char *base = (char *)msg;
        /* a oneof member that is not the one set shares its memory with another */
        if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) && *(uint32_t *)(base + f->quantifier_offset) != f->id) continue;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(size_t *)(base + f->quantifier_offset);
            ProtobufCMessage **v = *(ProtobufCMessage ***)(base + f->offset);
            for (size_t k = 0; v != NULL && k < n; k++) localize_items(ctx, v[k], locale, depth + 1);
        } else {
            localize_items(ctx, *(ProtobufCMessage **)(base + f->offset), locale, depth + 1);
        }
    }
}

/* Turn the handler's outcome into the reply message or an error status. */
static void build_reply(rpc_ctx *ctx, int rc) {
    if (rc == 0 && ctx->err_code == 0 && !ctx->oom && ctx->resp != NULL && ctx->method->item_errors)
        localize_items(ctx, ctx->resp, l10n_pick(ctx->have_actor ? ctx->actor.locale : NULL, ctx->accept_language),
                       0);
    if (rc == 0 && ctx->err_code == 0 && !ctx->oom && ctx->resp != NULL) {
        size_t n = protobuf_c_message_get_packed_size(ctx->resp);
        if (n > (size_t)ctx->srv->opts.max_message_bytes) {
            rc = rpc_fail(ctx, OM_E_INTERNAL, "the reply would exceed the message size limit");
        } else {
            ctx->reply = rpc_bb_pack(ctx->resp);
            if (ctx->reply == NULL) ctx->oom = true;
            else {
                ctx->status = GRPC_STATUS_OK;
                return;
            }
        }
    }
    if (ctx->oom) {
        ctx->err_code = OM_E_NOMEM;
        ctx->err_msg = NULL;
        ctx->n_violations = ctx->n_meta = ctx->n_extra = 0;
    }
    if (ctx->err_code == 0) ctx->err_code = rc < 0 ? rc : OM_E_INTERNAL;
    ctx->status = om_err_status(ctx->err_code);

    rpc_error_info e = {
        .code = ctx->err_code,
        .message = ctx->err_msg ? ctx->err_msg : om_err_message(ctx->err_code),
        .domain = ctx->srv->domain,
        .violations = ctx->violations,
        .n_violations = ctx->n_violations,
        .meta = ctx->meta,
        .n_meta = ctx->n_meta,
        .extra = ctx->extra,
        .n_extra = ctx->n_extra,
    };
    ctx->err_msg = (char *)e.message;
    /* API-01: the same error in the caller's words: the token's `locale`
     * claim, else accept-language, else English; ErrorInfo metadata fills
     * the catalog's {key} placeholders */
    char localized[512];
    l10n_kv kv[L10N_MAX_META];
    size_t n_kv = 0;
    for (size_t i = 0; i < ctx->n_meta && n_kv < L10N_MAX_META; i++)
        kv[n_kv++] = (l10n_kv){ctx->meta[i].key, ctx->meta[i].value};
    const char *loc = l10n_pick(ctx->have_actor ? ctx->actor.locale : NULL, ctx->accept_language);
    loc = l10n_message(loc, om_err_name(ctx->err_code), kv, n_kv, localized, sizeof localized);
    if (loc != NULL) {
        e.localized_locale = loc;
        e.localized_message = localized;
    }
    uint8_t *bin = NULL;
    size_t len = 0;
    if (rpc_status_pack(&e, &bin, &len) == 0) {
        ctx->trailer[0].key = grpc_slice_from_static_string("grpc-status-details-bin");
        ctx->trailer[0].value = grpc_slice_from_copied_buffer((const char *)bin, len);
        ctx->n_trailer = 1;
        free(bin);
    }
    if (ctx->status == GRPC_STATUS_INTERNAL || ctx->status == GRPC_STATUS_UNAVAILABLE)
        log_warn("rpc %s failed: %s (%s)", rpc_method_name(ctx), om_err_name(ctx->err_code),
                 ctx->err_msg);
}

/* Start the final batch. `with_close` adds RECV_CLOSE_ON_SERVER (inline
 * calls, which did not start it early). Consumes the caller's reference. */
static void send_reply(rpc_ctx *ctx, bool with_close) {
    grpc_op ops[4];
    memset(ops, 0, sizeof ops);
    size_t n = 0;
    if (!ctx->sent_initial) {
        ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
        n++;
    }
    if (ctx->reply != NULL) {
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n].data.send_message.send_message = ctx->reply;
        n++;
    }
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status = ctx->status;
    ops[n].data.send_status_from_server.trailing_metadata_count = ctx->n_trailer;
    ops[n].data.send_status_from_server.trailing_metadata = ctx->n_trailer ? ctx->trailer : NULL;
    grpc_slice details = grpc_slice_from_copied_string(
        ctx->status == GRPC_STATUS_OK ? "" : (ctx->err_msg ? ctx->err_msg : ""));
    ops[n].data.send_status_from_server.status_details = &details;
    n++;
    if (with_close) {
        ops[n].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
        ops[n].data.recv_close_on_server.cancelled = &ctx->close_cancelled;
        n++;
    }
    if (ctx->method != NULL && ctx->method->metrics != NULL)
        metrics_observe(ctx->method->metrics, (int)ctx->status, now_us() - ctx->start_us);
    trace_rpc_end(ctx->span, (int)ctx->status, ctx->err_msg);
    ctx->span = NULL;
    grpc_call_error e = grpc_call_start_batch(ctx->call, ops, n, &ctx->sent_tag, NULL);
    grpc_slice_unref(details);
    if (e != GRPC_CALL_OK) {
        log_error("rpc: cannot send reply (%d)", (int)e);
        ctx_unref(ctx);
    }
}

/* Answer with an error without running a handler. */
static void reply_error(rpc_ctx *ctx, int code, const char *msg, bool with_close) {
    rpc_fail(ctx, code, "%s", msg ? msg : om_err_message(code));
    build_reply(ctx, code);
    send_reply(ctx, with_close);
}

/* ------------------------------------------------------------------------ */
/* running handlers                                                           */

/* The handler's thread context: logs, outgoing calls and events follow it. */
static void trace_enter(rpc_ctx *ctx) {
    trace_set_current(&ctx->tctx, ctx->tracestate);
    char hex[33];
    trace_hex_trace_id(&ctx->tctx, hex);
    if (ctx->trace_id != NULL && strcmp(ctx->trace_id, hex) != 0) {
        /* an x-trace-id of the caller's own: logged as before */
        char span[17];
        trace_hex_span_id(&ctx->tctx, span);
        log_set_trace(ctx->trace_id);
        log_set_span(span);
    }
}

/* Runs the handler and builds the reply; returns RPC_DEFER (and builds
 * nothing) when an inline handler asks to be run again on a worker. */
static int run_handler(rpc_ctx *ctx) {
    trace_enter(ctx);
    int rc;
    if (rpc_cancelled(ctx)) {
        rc = rpc_fail(ctx, atomic_load(&ctx->cancelled) ? OM_E_CANCELLED : OM_E_DEADLINE_EXCEEDED,
                      NULL);
    } else {
        const ProtobufCMessageDescriptor *od = ctx->method->md->output;
        ctx->resp = rpc_alloc(ctx, od->sizeof_message);
        if (ctx->resp == NULL || ctx->oom) {
            rc = OM_E_NOMEM;
        } else {
            protobuf_c_message_init(od, ctx->resp);
            rc = ctx->method->fn(ctx, ctx->req, ctx->resp);
        }
    }
    if (rc == RPC_DEFER && !ctx->on_worker) {
        /* Forget whatever the inline attempt recorded: the worker starts
         * from a fresh, empty response. */
        ctx->err_code = 0;
        ctx->err_msg = NULL;
        ctx->n_violations = ctx->n_meta = ctx->n_extra = 0;
        ctx->resp = NULL;
        trace_set_current(NULL, NULL);
        return RPC_DEFER;
    }
    if (rc == RPC_DEFER) rc = rpc_fail(ctx, OM_E_INTERNAL, "the handler deferred on a worker");
    build_reply(ctx, rc);
    log_debug("rpc %s: %d", ctx->method->path, (int)ctx->status); /* with the call's trace and span ids */
    trace_set_current(NULL, NULL);
    return rc;
}

static void worker_run(work_job *job) {
    rpc_ctx *ctx = (rpc_ctx *)((char *)job - offsetof(rpc_ctx, job));
    rpc_server *srv = ctx->srv;
    ctx->on_worker = true;
    run_handler(ctx);
    /* A deferred inline call did not start RECV_CLOSE_ON_SERVER early. */
    send_reply(ctx, ctx->deferred);
    /* Under the lock: rpc_server_stop may free srv as soon as it sees 0. */
    pthread_mutex_lock(&srv->mu);
    if (--srv->queue_len == 0) pthread_cond_broadcast(&srv->cv);
    pthread_mutex_unlock(&srv->mu);
}

/* The pool's after_job runs after_call (the server's own pool) or app.c's
 * equivalent (the shared pool). */
static bool enqueue(rpc_server *srv, rpc_ctx *ctx) {
    pthread_mutex_lock(&srv->mu);
    if (srv->queue_len >= RPC_QUEUE_LIMIT || srv->workers_stop) {
        pthread_mutex_unlock(&srv->mu);
        return false;
    }
    srv->queue_len++;
    pthread_mutex_unlock(&srv->mu);
    ctx->job.run = worker_run;
    if (!work_submit(srv->pool, &ctx->job, 0)) {
        pthread_mutex_lock(&srv->mu);
        if (--srv->queue_len == 0) pthread_cond_broadcast(&srv->cv);
        pthread_mutex_unlock(&srv->mu);
        return false;
    }
    return true;
}

/* ------------------------------------------------------------------------ */
/* authentication, with a per-thread memory of tokens already verified        */

typedef struct token_memo {
    uint64_t hash;
    char *token;
    om_actor actor;
} token_memo;

static __thread token_memo memo[RPC_TOKEN_CACHE];

static uint64_t fnv1a(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static int authenticate(rpc_ctx *ctx, const char *tok, size_t len) {
    if (ctx->srv->auth == NULL) return OM_E_UNAUTHENTICATED;
    uint64_t h = fnv1a(tok, len);
    token_memo *m = &memo[h % RPC_TOKEN_CACHE];
    if (m->token != NULL && m->hash == h && strlen(m->token) == len &&
        memcmp(m->token, tok, len) == 0) {
        /* Signature already checked; time claims still are. */
        int64_t now = (int64_t)time(NULL);
        if (m->actor.exp + 30 < now) return OM_E_TOKEN_EXPIRED;
        ctx->actor = m->actor;
        return 0;
    }
    int rc = auth_verify(ctx->srv->auth, tok, len, &ctx->actor);
    if (rc != 0) return rc;
    char *copy = malloc(len + 1);
    if (copy != NULL) {
        memcpy(copy, tok, len);
        copy[len] = '\0';
        free(m->token);
        m->token = copy;
        m->hash = h;
        m->actor = ctx->actor;
    }
    return 0;
}

/* `name` is one of the comma-separated names of `csv`. */
static bool csv_has(const char *csv, const char *name) {
    size_t n = strlen(name);
    for (const char *p = csv; p && *p;) {
        while (*p == ' ' || *p == ',') p++;
        const char *e = p;
        while (*e && *e != ',' && *e != ' ') e++;
        if ((size_t)(e - p) == n && n > 0 && memcmp(p, name, n) == 0) return true;
        p = e;
    }
    return false;
}

/* Issue 13: a service identity calls only the methods that list it. */
static bool service_allowed(const rpc_server *srv, const srv_method *m, const char *name) {
    for (const char *const *s = m->services; s && *s; s++) {
        if (strcmp(*s, RPC_PLATFORM) == 0) {
            if (csv_has(srv->opts.platform_services, name)) return true;
        } else if (strcmp(*s, name) == 0) {
            return true;
        }
    }
    return false;
}

static int health_check(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_);

/* Issue 19: the call's trace context from W3C traceparent (invalid or
 * absent: a new root, never an error) and its SERVER span (not for health
 * checks and streams); rpc_trace_id is x-trace-id when the caller sent one
 * (as before), else the W3C trace id. */
static void trace_begin(rpc_ctx *ctx, grpc_slice tp, grpc_slice ts) {
    trace_ctx parent;
    bool have = trace_parse((const char *)GRPC_SLICE_START_PTR(tp), GRPC_SLICE_LENGTH(tp), &parent);
    bool spans = !ctx->method->stream && ctx->method->fn != health_check;
    if (spans) ctx->span = trace_rpc_start(have ? &parent : NULL, TRACE_SERVER, ctx->method->path, &ctx->tctx);
    else trace_child(have ? &parent : NULL, &ctx->tctx);
    size_t n = GRPC_SLICE_LENGTH(ts);
    if (have && n > 0 && n <= TRACE_STATE_MAX) {
        ctx->tracestate = strndup((const char *)GRPC_SLICE_START_PTR(ts), n);
        for (char *c = ctx->tracestate; c && *c; c++)
            if (*c < 0x20 || *c > 0x7e) *c = '_';
        trace_set_state(ctx->span, ctx->tracestate);
    }
    if (ctx->trace_id == NULL) {
        ctx->trace_id = malloc(33);
        if (ctx->trace_id) trace_hex_trace_id(&ctx->tctx, ctx->trace_id);
    }
}

/* Read what the call's metadata says: token and trace id. */
static int read_metadata(rpc_ctx *ctx) {
    const char *tok = NULL;
    size_t tok_len = 0;
    grpc_slice tp = grpc_empty_slice(), ts = grpc_empty_slice();
    for (size_t i = 0; i < ctx->md.count; i++) {
        grpc_metadata *m = &ctx->md.metadata[i];
        if (slice_eq(m->key, "authorization")) {
            size_t n = GRPC_SLICE_LENGTH(m->value);
            const char *v = (const char *)GRPC_SLICE_START_PTR(m->value);
            if (n > 7 && strncasecmp(v, "Bearer ", 7) == 0 && n - 7 <= RPC_MAX_TOKEN) {
                tok = v + 7;
                tok_len = n - 7;
            }
        } else if (slice_eq(m->key, "accept-language")) {
            /* API-01: read before authentication, so that even an
             * UNAUTHENTICATED answer speaks the caller's language */
            size_t n = GRPC_SLICE_LENGTH(m->value);
            if (n > 0 && n <= 256 && ctx->accept_language == NULL)
                ctx->accept_language = strndup((const char *)GRPC_SLICE_START_PTR(m->value), n);
        } else if (slice_eq(m->key, "x-trace-id")) {
            size_t n = GRPC_SLICE_LENGTH(m->value);
            if (n > 0 && n <= 64) {
                ctx->trace_id = strndup((const char *)GRPC_SLICE_START_PTR(m->value), n);
                /* Only keep printable ids: they go into logs. */
                for (char *c = ctx->trace_id; c && *c; c++)
                    if (*c < 0x21 || *c > 0x7e || *c == '"' || *c == '\\') *c = '_';
            }
        } else if (slice_eq(m->key, "traceparent")) {
            tp = m->value;
        } else if (slice_eq(m->key, "tracestate")) {
            ts = m->value;
        }
    }
    trace_begin(ctx, tp, ts);
    if (ctx->method->flags & RPC_NOAUTH) return 0;
    if (tok == NULL) return OM_E_UNAUTHENTICATED;
    ctx->token = strndup(tok, tok_len);
    if (ctx->token == NULL) return OM_E_NOMEM;
    int rc = authenticate(ctx, tok, tok_len);
    if (rc != 0) return rc;
    ctx->have_actor = true;
    if ((ctx->method->flags & RPC_INTERNAL) && ctx->actor.service[0] == '\0')
        return OM_E_SERVICE_IDENTITY_REQUIRED;
    if (ctx->actor.service[0] != '\0' && !service_allowed(ctx->srv, ctx->method, ctx->actor.service)) {
        log_debug("rpc: %s refused to service:%s (not in its list)", ctx->method->path, ctx->actor.service);
        return OM_E_SERVICE_NOT_ALLOWED;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* arrivals                                                                   */

static void start_stream(rpc_ctx *ctx);
static int health_check(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_);

int rpc_admit(const ProtobufCMessageDescriptor *input, ProtobufCAllocator *alloc, const uint8_t *buf,
              size_t len, ProtobufCMessage **req, char *path, size_t path_len) {
    path[0] = '\0';
    *req = protobuf_c_message_unpack(input, alloc, len, buf);
    if (*req == NULL) return OM_E_MALFORMED_MESSAGE;
    /* Before any handler, inline or not: strings valid UTF-8 without NUL
     * (which protobuf-c would silently cut at), Timestamps and Durations in
     * range (SPEC 8: every input validated). */
    int reason = 0;
    if (pbcheck_wire_ex(input, buf, len, path, path_len, &reason) != 0)
        return reason != 0 ? reason : OM_E_INVALID_UTF8;
    if (pbcheck_message_ex(*req, path, path_len, &reason) != 0)
        return reason != 0 ? reason : OM_E_INVALID_ARGUMENT;
    return 0;
}

static void on_new_call(rpc_ctx *ctx) {
    rpc_server *srv = ctx->srv;
    srv_method *m = ctx->method;
    ctx->start_us = now_us();
    post_request(srv, ctx->poller, m); /* keep the slot filled */

    /* SPEC 9: while the server drains, new calls are refused with a status
     * clients retry (health checks still answer, NOT_SERVING). */
    if (atomic_load(&srv->draining) && m->fn != health_check) {
        reply_error(ctx, OM_E_UNAVAILABLE, "the server is shutting down", true);
        return;
    }
    live_add(ctx);

    if (m->stream) {
        int rc = read_metadata(ctx);
        if (rc != 0) {
            reply_error(ctx, rc, NULL, true);
            return;
        }
        start_stream(ctx);
        return;
    }

    bool inline_call = (m->flags & RPC_INLINE) != 0;
    if (!inline_call) {
        /* Learn early when the client goes away. */
        grpc_op op;
        memset(&op, 0, sizeof op);
        op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
        op.data.recv_close_on_server.cancelled = &ctx->close_cancelled;
        atomic_fetch_add(&ctx->refs, 1);
        if (grpc_call_start_batch(ctx->call, &op, 1, &ctx->close_tag, NULL) != GRPC_CALL_OK) {
            atomic_fetch_sub(&ctx->refs, 1);
            inline_call = true; /* fall back to closing in the final batch */
        }
    }

    int rc = read_metadata(ctx);
    if (rc != 0) {
        reply_error(ctx, rc, NULL, inline_call);
        return;
    }
    uint8_t *buf = NULL;
    size_t len = 0;
    if (ctx->payload == NULL) {
        reply_error(ctx, OM_E_MALFORMED_MESSAGE, "the call carries no request message", inline_call);
        return;
    }
    if (rpc_bb_read(ctx->payload, &buf, &len) != 0) {
        reply_error(ctx, OM_E_NOMEM, NULL, inline_call);
        return;
    }
    char path[256];
    ProtobufCMessage *req = NULL;
    rc = rpc_admit(m->md->input, rpc_pb_allocator(ctx), buf, len, &req, path, sizeof path);
    ctx->req = req;
    free(buf);
    if (rc != 0) {
        if (rc == OM_E_MALFORMED_MESSAGE && ctx->oom) rc = OM_E_NOMEM;
        if (path[0] != '\0') rpc_violation(ctx, path, "%s", om_err_message(rc));
        reply_error(ctx, rc, NULL, inline_call);
        return;
    }
    if (inline_call) {
        if (run_handler(ctx) != RPC_DEFER) {
            send_reply(ctx, true);
            return;
        }
        ctx->deferred = true; /* RPC_DEFER: the same call again, on a worker */
        if (!enqueue(srv, ctx)) reply_error(ctx, OM_E_UNAVAILABLE, "the server is overloaded", true);
        return;
    }
    if (!enqueue(srv, ctx)) reply_error(ctx, OM_E_UNAVAILABLE, "the server is overloaded", false);
}

static void on_new_generic(rpc_ctx *ctx) {
    post_request(ctx->srv, ctx->poller, NULL);
    char *path = strndup((const char *)GRPC_SLICE_START_PTR(ctx->details.method),
                         GRPC_SLICE_LENGTH(ctx->details.method));
    char msg[300];
    snprintf(msg, sizeof msg, "unknown method %s", path ? path : "?");
    free(path);
    reply_error(ctx, OM_E_UNIMPLEMENTED, msg, true);
}

/* ------------------------------------------------------------------------ */
/* reflection: a bidirectional stream answered on the poller                  */

static void stream_recv(rpc_ctx *ctx, grpc_byte_buffer *send) {
    grpc_op ops[3];
    memset(ops, 0, sizeof ops);
    size_t n = 0;
    if (send != NULL) {
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n].data.send_message.send_message = send;
        n++;
    }
    ops[n].op = GRPC_OP_RECV_MESSAGE;
    ops[n].data.recv_message.recv_message = &ctx->stream_in;
    n++;
    if (ctx->reply != NULL) grpc_byte_buffer_destroy(ctx->reply);
    ctx->reply = send; /* destroyed when the batch completes */
    if (grpc_call_start_batch(ctx->call, ops, n, &ctx->stream_tag, NULL) != GRPC_CALL_OK) {
        grpc_call_cancel(ctx->call, NULL);
        ctx_unref(ctx);
    }
}

static void start_stream(rpc_ctx *ctx) {
    /* Initial metadata goes with the first receive. */
    grpc_op ops[2];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_RECV_MESSAGE;
    ops[1].data.recv_message.recv_message = &ctx->stream_in;
    ctx->sent_initial = true;
    if (grpc_call_start_batch(ctx->call, ops, 2, &ctx->stream_tag, NULL) != GRPC_CALL_OK) {
        grpc_call_cancel(ctx->call, NULL);
        ctx_unref(ctx);
    }
}

static void on_stream(rpc_ctx *ctx, int success) {
    if (ctx->reply != NULL) {
        grpc_byte_buffer_destroy(ctx->reply);
        ctx->reply = NULL;
    }
    if (!success) { /* the client went away */
        ctx_unref(ctx);
        return;
    }
    if (ctx->stream_in == NULL) { /* half-closed: finish with OK */
        ctx->status = GRPC_STATUS_OK;
        send_reply(ctx, true);
        return;
    }
    uint8_t *in = NULL, *out = NULL;
    size_t in_len = 0, out_len = 0;
    int rc = rpc_bb_read(ctx->stream_in, &in, &in_len);
    grpc_byte_buffer_destroy(ctx->stream_in);
    ctx->stream_in = NULL;
    if (rc == 0)
        rc = refl_answer(ctx->srv->refl, (const char *const *)ctx->srv->service_names,
                         (size_t)ctx->srv->n_service_names, in, in_len, &out, &out_len);
    free(in);
    if (rc != 0) {
        reply_error(ctx, rc == OM_E_MALFORMED_MESSAGE ? rc : OM_E_INTERNAL, NULL, true);
        return;
    }
    grpc_slice s = grpc_slice_from_copied_buffer((const char *)out, out_len);
    free(out);
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    stream_recv(ctx, bb);
}

/* ------------------------------------------------------------------------ */
/* pollers                                                                    */

static void *poller_main(void *arg) {
    poller *p = arg;
    for (;;) {
        grpc_event ev = grpc_completion_queue_next(p->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN) break;
        if (ev.type != GRPC_OP_COMPLETE) continue;
        rpc_tag *t = ev.tag;
        rpc_ctx *ctx = t->ptr;
        switch (t->kind) {
        case TAG_NEW_CALL:
            if (!ev.success) { /* shutting down */
                ctx_free(ctx);
                break;
            }
            on_new_call(ctx);
            break;
        case TAG_NEW_GENERIC:
            if (!ev.success) {
                ctx_free(ctx);
                break;
            }
            on_new_generic(ctx);
            break;
        case TAG_CLOSE:
            if (ctx->close_cancelled) atomic_store(&ctx->cancelled, true);
            ctx_unref(ctx);
            break;
        case TAG_SENT:
            ctx_unref(ctx);
            break;
        case TAG_STREAM:
            on_stream(ctx, ev.success);
            break;
        case TAG_SHUTDOWN: {
            rpc_server *srv = t->ptr;
            pthread_mutex_lock(&srv->mu);
            srv->shutdown_done = true;
            pthread_cond_broadcast(&srv->shutdown_cv);
            pthread_mutex_unlock(&srv->mu);
            break;
        }
        }
    }
    rpc_thread_cleanup();
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* built-in health service                                                    */

static bool health_lookup(rpc_server *srv, const char *name, bool *serving) {
    bool found = false;
    pthread_mutex_lock(&srv->health_mu);
    if (name[0] == '\0') {
        *serving = srv->serving;
        found = true;
    } else {
        for (int i = 0; i < srv->n_health; i++)
            if (strcmp(srv->health[i].name, name) == 0) {
                *serving = srv->health[i].serving;
                found = true;
                break;
            }
        if (!found)
            for (int i = 0; i < srv->n_service_names; i++)
                if (strcmp(srv->service_names[i], name) == 0) {
                    *serving = srv->serving;
                    found = true;
                    break;
                }
    }
    pthread_mutex_unlock(&srv->health_mu);
    return found;
}

static int health_check(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_) {
    const Grpc__Health__V1__HealthCheckRequest *req = (const void *)req_;
    Grpc__Health__V1__HealthCheckResponse *resp = (void *)resp_;
    bool serving = false;
    if (!health_lookup(ctx->srv, req->service ? req->service : "", &serving))
        return rpc_fail(ctx, OM_E_NOT_FOUND, "unknown service %s", req->service);
    resp->status = serving ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
                           : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
    return 0;
}

static const rpc_method health_methods[] = {
    {"Check", health_check, RPC_NOAUTH | RPC_INLINE},
    {NULL, NULL, 0},
};
static const rpc_service health_service = {&grpc__health__v1__health__descriptor, health_methods};

void rpc_health_set(rpc_server *srv, const char *name, bool serving) {
    pthread_mutex_lock(&srv->health_mu);
    if (name == NULL || name[0] == '\0') {
        srv->serving = serving;
    } else {
        int i;
        for (i = 0; i < srv->n_health; i++)
            if (strcmp(srv->health[i].name, name) == 0) break;
        if (i == srv->n_health && i < (int)(sizeof srv->health / sizeof srv->health[0])) {
            snprintf(srv->health[i].name, sizeof srv->health[i].name, "%s", name);
            srv->n_health++;
        }
        if (i < srv->n_health) srv->health[i].serving = serving;
    }
    pthread_mutex_unlock(&srv->health_mu);
}

/* ------------------------------------------------------------------------ */
/* server set-up                                                              */

int rpc_server_new(rpc_server **out, const rpc_server_opts *opts) {
    rpc_server *srv = calloc(1, sizeof *srv);
    if (srv == NULL) return OM_E_NOMEM;
    srv->opts = *opts;
    srv->service = xstrdup(opts->service ? opts->service : "orgmesh");
    srv->listen = xstrdup(opts->listen ? opts->listen : "127.0.0.1:0");
    if (srv->service == NULL || srv->listen == NULL) {
        rpc_server_free(srv);
        return OM_E_NOMEM;
    }
    snprintf(srv->domain, sizeof srv->domain, "%s", srv->service); /* SPEC 8: domain = the service */
    if (srv->opts.pollers <= 0) srv->opts.pollers = 1;
    if (srv->opts.workers <= 0) srv->opts.workers = 8;
    if (srv->opts.max_message_bytes <= 0) srv->opts.max_message_bytes = 4 * 1024 * 1024;
    pthread_mutex_init(&srv->mu, NULL);
    pthread_cond_init(&srv->cv, NULL);
    pthread_cond_init(&srv->shutdown_cv, NULL);
    pthread_mutex_init(&srv->health_mu, NULL);
    pthread_mutex_init(&srv->calls_mu, NULL);
    pthread_cond_init(&srv->calls_cv, NULL);
    atomic_init(&srv->draining, false);
    srv->shutdown_tag = (rpc_tag){TAG_SHUTDOWN, srv};
    if (opts->descriptor_set != NULL) {
        int rc = refl_new(&srv->refl, opts->descriptor_set, opts->descriptor_set_len);
        if (rc != 0) {
            log_error("rpc: cannot read the descriptor set for reflection");
            rpc_server_free(srv);
            return rc;
        }
    }
    *out = srv;
    int rc = rpc_server_add(srv, &health_service);
    if (rc != 0) {
        rpc_server_free(srv);
        *out = NULL;
    }
    return rc;
}

void rpc_server_set_auth(rpc_server *srv, auth_ctx *auth) {
    srv->auth = auth;
}

static int add_method(rpc_server *srv, const char *path, const ProtobufCMethodDescriptor *md,
                      rpc_unary_fn fn, unsigned flags, const char *const *services, bool stream) {
    srv_method *ms = realloc(srv->methods, (size_t)(srv->n_methods + 1) * sizeof *ms);
    if (ms == NULL) return OM_E_NOMEM;
    srv->methods = ms;
    srv_method *m = &ms[srv->n_methods];
    memset(m, 0, sizeof *m);
    m->path = strdup(path);
    if (m->path == NULL) return OM_E_NOMEM;
    m->md = md;
    m->fn = fn;
    m->flags = flags;
    m->services = services;
    m->stream = stream;
    m->item_errors = md != NULL && holds_item_error(md->output, 0);
    srv->n_methods++;
    return 0;
}

static int add_service_name(rpc_server *srv, const char *name) {
    const char **names =
        realloc(srv->service_names, (size_t)(srv->n_service_names + 1) * sizeof *names);
    if (names == NULL) return OM_E_NOMEM;
    srv->service_names = names;
    names[srv->n_service_names++] = name;
    return 0;
}

int rpc_server_add(rpc_server *srv, const rpc_service *svc) {
    if (srv->started) return OM_E_INVALID_ARGUMENT;
    const ProtobufCServiceDescriptor *d = svc->desc;
    int rc = add_service_name(srv, d->name);
    if (rc != 0) return rc;
    for (unsigned i = 0; i < d->n_methods; i++) {
        const rpc_method *row = NULL;
        for (const rpc_method *r = svc->methods; r && r->name; r++)
            if (strcmp(r->name, d->methods[i].name) == 0) row = r;
        if (row == NULL) continue; /* answered UNIMPLEMENTED by the generic path */
        char path[256];
        snprintf(path, sizeof path, "/%s/%s", d->name, d->methods[i].name);
        if ((row->flags & RPC_INTERNAL) && row->services == NULL) {
            /* issue 13: an internal method names the services that may call it */
            log_error("rpc: internal method %s has no list of calling services", path);
            return OM_E_INVALID_ARGUMENT;
        }
        rc = add_method(srv, path, &d->methods[i], row->fn, row->flags, row->services, false);
        if (rc != 0) return rc;
    }
    return 0;
}

int rpc_server_start(rpc_server *srv) {
    if (srv->refl != NULL) {
        static const char *refl_names[] = {"grpc.reflection.v1.ServerReflection",
                                           "grpc.reflection.v1alpha.ServerReflection"};
        for (int i = 0; i < 2; i++) {
            char path[128];
            snprintf(path, sizeof path, "/%s/ServerReflectionInfo", refl_names[i]);
            int rc = add_method(srv, path, NULL, NULL, RPC_NOAUTH, NULL, true);
            if (rc == 0) rc = add_service_name(srv, refl_names[i]);
            if (rc != 0) return rc;
        }
    }
    grpc_arg args[3];
    memset(args, 0, sizeof args);
    args[0].type = GRPC_ARG_INTEGER;
    args[0].key = (char *)GRPC_ARG_ALLOW_REUSEPORT;
    args[0].value.integer = 0;
    args[1].type = GRPC_ARG_INTEGER;
    args[1].key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    args[1].value.integer = srv->opts.max_message_bytes;
    args[2].type = GRPC_ARG_INTEGER;
    args[2].key = (char *)GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
    args[2].value.integer = srv->opts.max_message_bytes;
    grpc_channel_args cargs = {3, args};
    srv->server = grpc_server_create(&cargs, NULL);
    if (srv->server == NULL) return OM_E_INTERNAL;

    for (int i = 0; i < srv->n_methods; i++) {
        srv_method *m = &srv->methods[i];
        m->handle = grpc_server_register_method(
            srv->server, m->path, NULL,
            m->stream ? GRPC_SRM_PAYLOAD_NONE : GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
        if (m->handle == NULL) {
            log_error("rpc: cannot register %s (twice?)", m->path);
            return OM_E_INTERNAL;
        }
        m->metrics = metrics_method_register(m->path);
    }

    srv->pool = srv->opts.pool;
    if (srv->pool == NULL) {
        work_pool_opts wo = {.threads = srv->opts.workers,
                             .thread_start = srv->opts.worker_start,
                             .thread_stop = srv->opts.worker_stop,
                             .after_job = srv->opts.after_call,
                             .arg = srv->opts.worker_arg};
        int rc = work_pool_new(&srv->own_pool, &wo);
        if (rc != 0) return rc;
        srv->pool = srv->own_pool;
    }

    srv->n_pollers = srv->opts.pollers;
    srv->pollers = calloc((size_t)srv->n_pollers, sizeof *srv->pollers);
    if (srv->pollers == NULL) return OM_E_NOMEM;
    for (int i = 0; i < srv->n_pollers; i++) {
        srv->pollers[i].srv = srv;
        srv->pollers[i].index = i;
        srv->pollers[i].cq = grpc_completion_queue_create_for_next(NULL);
        grpc_server_register_completion_queue(srv->server, srv->pollers[i].cq, NULL);
    }
    grpc_server_credentials *creds = grpc_insecure_server_credentials_create();
    srv->port = grpc_server_add_http2_port(srv->server, srv->listen, creds);
    grpc_server_credentials_release(creds);
    if (srv->port == 0) {
        log_error("rpc: cannot listen on %s", srv->listen);
        return OM_E_UNAVAILABLE;
    }
    grpc_server_start(srv->server);
    srv->started = true;

    for (int i = 0; i < srv->n_pollers; i++) {
        poller *p = &srv->pollers[i];
        for (int j = 0; j < srv->n_methods; j++)
            for (int k = 0; k < RPC_REQUESTS_PER_METHOD; k++) post_request(srv, p, &srv->methods[j]);
        for (int k = 0; k < RPC_GENERIC_REQUESTS; k++) post_request(srv, p, NULL);
        if (pthread_create(&p->thread, NULL, poller_main, p) != 0) return OM_E_INTERNAL;
    }
    log_info("rpc: serving on port %d (%d pollers, %d workers)", srv->port, srv->n_pollers,
             work_pool_threads(srv->pool));
    return 0;
}

int rpc_server_port(const rpc_server *srv) {
    return srv->port;
}

void rpc_server_stop(rpc_server *srv, int grace_ms) {
    if (srv == NULL || !srv->started || srv->shutting_down) return;
    srv->shutting_down = true;

    /* Drain first, with the listener still open: gRPC core's own shutdown
     * fails calls that arrive after it started, and cancel_all_calls ends
     * the running ones, both with CANCELLED, which clients do not retry.
     * So: new calls are answered UNAVAILABLE (on_new_call), calls in flight
     * get `grace_ms` to finish normally, and those still running then are
     * ended with UNAVAILABLE. Only then does core shut down, with nothing
     * left in flight. */
    atomic_store(&srv->draining, true);
    struct timespec until = om_deadline(CLOCK_REALTIME, grace_ms);
    pthread_mutex_lock(&srv->calls_mu);
    while (srv->n_calls > 0) {
        if (pthread_cond_timedwait(&srv->calls_cv, &srv->calls_mu, &until) == ETIMEDOUT) break;
    }
    if (srv->n_calls > 0) {
        log_warn("rpc: %d calls still running after %d ms; answering them UNAVAILABLE", srv->n_calls,
                 grace_ms);
        for (rpc_ctx *c = srv->calls; c != NULL; c = c->live_next)
            grpc_call_cancel_with_status(c->call, GRPC_STATUS_UNAVAILABLE,
                                         "the server is shutting down", NULL);
    }
    pthread_mutex_unlock(&srv->calls_mu);

    grpc_server_shutdown_and_notify(srv->server, srv->pollers[0].cq, &srv->shutdown_tag);
    until = om_deadline(CLOCK_REALTIME, 1000);
    pthread_mutex_lock(&srv->mu);
    while (!srv->shutdown_done) {
        if (pthread_cond_timedwait(&srv->shutdown_cv, &srv->mu, &until) == ETIMEDOUT) break;
    }
    bool done = srv->shutdown_done;
    pthread_mutex_unlock(&srv->mu);
    if (!done) {
        /* a call that raced the drain: nothing better left to do */
        grpc_server_cancel_all_calls(srv->server);
        pthread_mutex_lock(&srv->mu);
        while (!srv->shutdown_done) pthread_cond_wait(&srv->shutdown_cv, &srv->mu);
        pthread_mutex_unlock(&srv->mu);
    }

    /* Every call queued on the pool replies before the pollers go. */
    pthread_mutex_lock(&srv->mu);
    srv->workers_stop = true;
    while (srv->queue_len > 0) pthread_cond_wait(&srv->cv, &srv->mu);
    pthread_mutex_unlock(&srv->mu);
    if (srv->own_pool != NULL) work_pool_stop(srv->own_pool);

    for (int i = 0; i < srv->n_pollers; i++) grpc_completion_queue_shutdown(srv->pollers[i].cq);
    for (int i = 0; i < srv->n_pollers; i++) pthread_join(srv->pollers[i].thread, NULL);
    log_info("rpc: stopped");
}

void rpc_server_free(rpc_server *srv) {
    if (srv == NULL) return;
    if (srv->started && !srv->shutting_down) rpc_server_stop(srv, 0);
    if (srv->server != NULL) grpc_server_destroy(srv->server);
    for (int i = 0; i < srv->n_pollers; i++)
        if (srv->pollers[i].cq) grpc_completion_queue_destroy(srv->pollers[i].cq);
    free(srv->pollers);
    work_pool_free(srv->own_pool);
    for (int i = 0; i < srv->n_methods; i++) free(srv->methods[i].path);
    free(srv->methods);
    free(srv->service_names);
    refl_free(srv->refl);
    pthread_mutex_destroy(&srv->mu);
    pthread_cond_destroy(&srv->cv);
    pthread_cond_destroy(&srv->shutdown_cv);
    pthread_mutex_destroy(&srv->health_mu);
    pthread_mutex_destroy(&srv->calls_mu);
    pthread_cond_destroy(&srv->calls_cv);
    free(srv->service);
    free(srv->listen);
    free(srv);
}

/* Free this thread's remembered tokens (thread exit, tests). */
void rpc_thread_cleanup(void) {
    for (int i = 0; i < RPC_TOKEN_CACHE; i++) {
        free(memo[i].token);
        memo[i].token = NULL;
    }
}
