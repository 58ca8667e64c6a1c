/* trace.h — one trace across services and events (issue 19; docs/common/trace.md).
 *
 * W3C trace context (traceparent/tracestate) is accepted from callers, kept
 * per thread while a call or an event is handled (logs carry its trace_id and
 * span_id), passed on by rpc_client and carried in event envelopes. Spans are
 * recorded only when an OTLP endpoint is configured and the sampler says so;
 * otherwise trace_start returns NULL and allocates nothing. Finished spans go
 * to a bounded queue that an exporter thread of its own sends in batches
 * (OTLP/gRPC, TraceService/Export): a handler never waits on the collector,
 * and a full queue drops the span (orgmesh_trace_spans_dropped_total). */
#ifndef OM_TRACE_H
#define OM_TRACE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct trace_ctx {
    uint8_t trace_id[16];
    uint8_t span_id[8];
    uint8_t flags; /* W3C trace flags: bit 0 = sampled */
    bool valid;
} trace_ctx;

/* Span kinds, numbered as OTLP's Span.SpanKind. */
enum { TRACE_INTERNAL = 1, TRACE_SERVER = 2, TRACE_CLIENT = 3, TRACE_PRODUCER = 4, TRACE_CONSUMER = 5 };

typedef struct trace_span trace_span;

/* "00-" 32 "-" 16 "-" 2 + NUL */
#define TRACE_PARENT_LEN 56
#define TRACE_STATE_MAX 512

/* Reads OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, OTEL_SERVICE_NAME (default
 * `service`), OTEL_TRACES_SAMPLER/_ARG, OTEL_RESOURCE_ATTRIBUTES and
 * OTEL_BSP_*; starts the exporter when an endpoint is set. 0 or OM_E_*
 * (a bad sampler or endpoint is refused). Harmless to call again. */
int trace_init(const char *service);
/* Export what is queued (bounded by the export timeout) and stop. */
void trace_shutdown(void);
/* Spans are being recorded (an endpoint is set). */
bool trace_enabled(void);
/* SQL statements become db spans inside sampled traces (ORGMESH_TRACE_DB, default on). */
bool trace_db_enabled(void);

/* W3C traceparent: version 00 (or a later version's first 55 characters),
 * lowercase hex, ids not all zero. false for anything else (→ a new root). */
bool trace_parse(const char *s, size_t n, trace_ctx *out);
void trace_format(const trace_ctx *c, char out[TRACE_PARENT_LEN]);
void trace_hex_trace_id(const trace_ctx *c, char out[33]);
void trace_hex_span_id(const trace_ctx *c, char out[17]);

/* A new span, child of `parent` (NULL or invalid: a new root): *out gets its
 * context either way (ids for propagation and logs cost nothing); returns the
 * recording span, or NULL when not sampled or not exporting. `name` is copied. */
trace_span *trace_start(const trace_ctx *parent, int kind, const char *name, trace_ctx *out);
/* The context of a child (or a new root) without recording anything. */
void trace_child(const trace_ctx *parent, trace_ctx *out);
/* Attributes; `key` must be a string literal. NULL span: nothing. */
void trace_attr_str(trace_span *s, const char *key, const char *value);
void trace_attr_int(trace_span *s, const char *key, int64_t value);
/* The W3C tracestate recorded with the span (default: the thread's current
 * one when the span ends within the same trace). */
void trace_set_state(trace_span *s, const char *tracestate);
/* A link to another span (consumers of a batch). */
void trace_link(trace_span *s, const trace_ctx *other);
/* Finish: `error` sets status ERROR with `message` (may be NULL), else UNSET.
 * Queued for export, or dropped (counted) when the queue is full. */
void trace_end(trace_span *s, bool error, const char *message);
/* Forget a span without exporting it. */
void trace_discard(trace_span *s);

/* RPC spans (OTel RPC conventions): named "pkg.Service/Method" from a
 * "/pkg.Service/Method" path, rpc.system=grpc, rpc.service, rpc.method. */
trace_span *trace_rpc_start(const trace_ctx *parent, int kind, const char *path, trace_ctx *out);
/* rpc.grpc.status_code; error per the conventions (server: UNKNOWN,
 * DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS; client:
 * any non-OK). */
void trace_rpc_end(trace_span *s, int grpc_status, const char *message);

/* The thread's current context (what rpc_client passes on, what evt_emit
 * puts into envelopes, what the logs show). Setting it sets the log's
 * trace_id and span_id; NULL clears both. */
void trace_set_current(const trace_ctx *c, const char *tracestate);
const trace_ctx *trace_current(void); /* NULL when none */
const char *trace_current_state(void); /* "" when none */
/* The exporter's own calls are never traced. */
bool trace_suppressed(void);

/* Test hooks: spans queued and dropped so far; export now and wait. */
int64_t trace_dropped(void);
void trace_flush(void);

#endif
