/* rpc.h — the gRPC server and client every orgmesh service uses.
 *
 * gRPC core is touched only inside common/. A service describes its RPCs with
 * a protobuf-c service descriptor and a table of typed handlers; the server
 * decodes requests, authenticates the caller, runs the handler on a worker
 * thread (where blocking on PostgreSQL or Redis is fine) and encodes the reply
 * or a google.rpc.Status with ErrorInfo / BadRequest details. */
#ifndef OM_RPC_H
#define OM_RPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "auth.h"
#include "om_err.h"

typedef struct rpc_ctx rpc_ctx;
typedef struct rpc_server rpc_server;

/* A unary handler. `req` is the decoded request; `resp` is an initialised,
 * empty message of the method's output type. Fill it (memory from
 * rpc_alloc/rpc_strdup, freed with the call) and return 0, or return
 * rpc_fail(...). */
typedef int (*rpc_unary_fn)(rpc_ctx *ctx, const ProtobufCMessage *req, ProtobufCMessage *resp);

enum {
    RPC_NOAUTH = 1 << 0,   /* no token needed (health, reflection) */
    RPC_INTERNAL = 1 << 1, /* only service identities may call it */
    RPC_INLINE = 1 << 2,   /* never blocks: run on the polling thread */
};

/* Returned by an RPC_INLINE handler that cannot answer without blocking
 * (e.g. a cache miss): the call is queued to the workers and the same
 * handler runs again there with a fresh, empty response (rpc_on_worker()
 * then says true). Anything the inline attempt recorded (violations, error,
 * response fields) is discarded; memory from rpc_alloc stays valid. A
 * handler running on a worker must not return it (INTERNAL). */
#define RPC_DEFER 1

/* In a method's `services` list: the service identities the operator names
 * in ORGMESH_PLATFORM_SERVICES (the identity system that provisions users,
 * operator tools), never a service called "platform". */
#define RPC_PLATFORM "platform"

typedef struct rpc_method {
    const char *name; /* as in the .proto, e.g. "GetAccount" */
    rpc_unary_fn fn;
    unsigned flags;
    /* Issue 13: the service identities that may call it (NULL-terminated
     * names, RPC_PLATFORM among them or not); any other service identity gets
     * PERMISSION_DENIED (SERVICE_NOT_ALLOWED) before the handler runs. NULL:
     * no service identity may call it. Users are not affected (the handler
     * decides). An RPC_INTERNAL method must have a list (rpc_server_add). */
    const char *const *services;
} rpc_method;

/* Methods of `desc` that have no row in `methods` answer UNIMPLEMENTED. */
typedef struct rpc_service {
    const ProtobufCServiceDescriptor *desc;
    const rpc_method *methods; /* ends with a row whose name is NULL */
} rpc_service;

/* ---- inside a handler ------------------------------------------------- */

/* The authenticated caller (never NULL unless the method is RPC_NOAUTH). */
const om_actor *rpc_actor(const rpc_ctx *ctx);
/* The raw bearer token, to pass on to other services ("" if none). */
const char *rpc_token(const rpc_ctx *ctx);
const char *rpc_trace_id(const rpc_ctx *ctx);
const char *rpc_method_name(const rpc_ctx *ctx); /* "/pkg.Svc/Method" */
/* Milliseconds left before the client's deadline (INT64_MAX if none). */
int64_t rpc_time_left_ms(const rpc_ctx *ctx);
/* True when the handler runs on a worker thread (may block), false on the
 * polling thread (an RPC_INLINE call; see RPC_DEFER). */
bool rpc_on_worker(const rpc_ctx *ctx);
/* True once the client has gone away or the deadline has passed. */
bool rpc_cancelled(const rpc_ctx *ctx);

/* Memory that lives as long as the call. Never NULL: on exhaustion the call
 * fails with RESOURCE_EXHAUSTED when the handler returns, and a dummy block
 * is handed out so the handler need not check. */
void *rpc_alloc(rpc_ctx *ctx, size_t size);
void *rpc_calloc(rpc_ctx *ctx, size_t n, size_t size);
char *rpc_strdup(rpc_ctx *ctx, const char *s);
char *rpc_strndup(rpc_ctx *ctx, const char *s, size_t n);
char *rpc_sprintf(rpc_ctx *ctx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* An allocator for protobuf_c_message_unpack/free backed by the call. */
ProtobufCAllocator *rpc_pb_allocator(rpc_ctx *ctx);

/* ---- failing a call ---------------------------------------------------- */

/* Record a field violation for the BadRequest detail (does not fail yet). */
void rpc_violation(rpc_ctx *ctx, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* True when rpc_violation was called. */
bool rpc_has_violations(const rpc_ctx *ctx);
/* Add a key/value to the ErrorInfo metadata. */
void rpc_error_meta(rpc_ctx *ctx, const char *key, const char *value);
/* Append any message as a google.protobuf.Any detail of the status. */
void rpc_error_detail(rpc_ctx *ctx, const ProtobufCMessage *msg);
/* Fail the call with `code` (an OM_E_*): its gRPC status, ErrorInfo reason
 * = om_err_name(code), domain = the service name. `fmt` may be NULL for the
 * table's default message. Returns `code`, so `return rpc_fail(...)` reads. */
int rpc_fail(rpc_ctx *ctx, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Fail with OM_E_INVALID_ARGUMENT and the violations recorded so far. */
int rpc_fail_invalid(rpc_ctx *ctx);

/* ---- request ids (SPEC 8) ------------------------------------------------ */

struct idem_key;
/* Fill `key` (idem.h) for this call: its actor and method, `request_id` and
 * the request. 0, or the call has failed: INVALID_ARGUMENT with a request_id
 * violation when the id is too long, else the error. */
int rpc_idem_key(rpc_ctx *ctx, struct idem_key *key, const char *request_id, const ProtobufCMessage *req);

/* ---- server ------------------------------------------------------------ */

typedef struct rpc_server_opts {
    const char *service;      /* "accounts": logs, metrics, ErrorInfo domain */
    const char *listen;       /* "127.0.0.1:50051"; port 0 picks a free one */
    int pollers;              /* completion-queue threads (default 1) */
    int workers;              /* handler threads (default 8) */
    int max_message_bytes;    /* default 4 MiB (SPEC 8) */
    const uint8_t *descriptor_set; /* FileDescriptorSet for reflection */
    size_t descriptor_set_len;
    /* Called once on each worker thread before it serves (e.g. connect to
     * PostgreSQL) and after it stops. May be NULL. */
    void (*worker_start)(int index, void *arg);
    void (*worker_stop)(int index, void *arg);
    /* Called on the worker after each handler (e.g. roll back a transaction
     * the handler left open). May be NULL. */
    void (*after_call)(void *arg);
    void *worker_arg;
    /* The process's worker pool (common/work.h), shared with the loop's
     * background work; NULL: the server starts a pool of its own with
     * `workers` threads and the three callbacks above. */
    struct work_pool *pool;
    /* Comma-separated service names that RPC_PLATFORM stands for in the
     * methods' `services` lists (ORGMESH_PLATFORM_SERVICES); NULL: none. */
    const char *platform_services;
} rpc_server_opts;

int rpc_server_new(rpc_server **out, const rpc_server_opts *opts);
/* Tokens are verified with `auth` (NULL: every authenticated method answers
 * UNAUTHENTICATED). Call before rpc_server_start. */
void rpc_server_set_auth(rpc_server *srv, auth_ctx *auth);
/* Register a service before rpc_server_start. Health and reflection are
 * always served. */
int rpc_server_add(rpc_server *srv, const rpc_service *svc);
int rpc_server_start(rpc_server *srv);
/* The bound port (useful with port 0). */
int rpc_server_port(const rpc_server *srv);
/* Drain and stop (SPEC 9): new calls are answered UNAVAILABLE at once,
 * calls in flight get up to `grace_ms` to finish normally, and those still
 * running then are answered UNAVAILABLE too (never CANCELLED: clients retry
 * UNAVAILABLE). Blocks until everything has stopped. */
void rpc_server_stop(rpc_server *srv, int grace_ms);
void rpc_server_free(rpc_server *srv);

/* Health (grpc.health.v1): "" and every registered service are SERVING while
 * `set_serving` says so; other names (e.g. "redis") are set separately. */
void rpc_health_set(rpc_server *srv, const char *name, bool serving);

/* ---- client ------------------------------------------------------------ */

typedef struct rpc_client rpc_client;

typedef struct rpc_status {
    grpc_status_code code;
    char reason[64];   /* ErrorInfo reason, "" if none */
    char message[256];
} rpc_status;

typedef struct rpc_call_opts {
    const char *token;    /* bearer token (NULL: none) */
    const char *trace_id; /* passed on as x-trace-id (NULL: new one) */
    int deadline_ms;      /* default 5000 */
    bool idempotent;      /* retry UNAVAILABLE with backoff */
} rpc_call_opts;

/* `target` like "127.0.0.1:50051". Thread-safe; share one per peer. */
int rpc_client_new(rpc_client **out, const char *target);
void rpc_client_free(rpc_client *c);
/* Blocking unary call. On return 0, *resp is a message allocated with
 * protobuf-c's default allocator (free with protobuf_c_message_free_unpacked).
 * Otherwise returns an OM_E_* code and fills *st (st may be NULL). */
int rpc_client_call(rpc_client *c, const char *method, const ProtobufCMessage *req,
                    const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp,
                    const rpc_call_opts *opts, rpc_status *st);
/* The same, from inside a handler: passes on the caller's token, trace id and
 * what is left of its deadline. */
int rpc_client_call_ctx(rpc_client *c, rpc_ctx *ctx, const char *method,
                        const ProtobufCMessage *req, const ProtobufCMessageDescriptor *resp_desc,
                        ProtobufCMessage **resp, rpc_status *st);

#endif
