/* metrics.h — Prometheus text metrics over HTTP (GET /metrics).
 * Calls and errors by method and code, latency histogram per method, plus
 * counters and gauges a service registers itself. Lock-free on the hot path. */
#ifndef OM_METRICS_H
#define OM_METRICS_H

#include <stdint.h>

typedef struct metrics_method metrics_method;

/* Serve /metrics on `listen` ("127.0.0.1:9090"; port 0 = free port) in a
 * thread of its own. Returns the bound port or a negative OM_E_* code. */
int metrics_start(const char *service, const char *listen);
void metrics_stop(void);

/* One slot per RPC method, registered at start-up (not thread-safe). */
metrics_method *metrics_method_register(const char *full_method);
/* Record one finished call (thread-safe). `code` is a grpc_status_code. */
void metrics_observe(metrics_method *m, int code, int64_t latency_us);

/* A named counter or gauge ("orgmesh_events_relayed_total"). */
typedef struct metrics_counter metrics_counter;
metrics_counter *metrics_counter_register(const char *name, const char *help);
void metrics_counter_add(metrics_counter *c, int64_t delta);
void metrics_gauge_set(metrics_counter *c, int64_t value);

/* The text exposition, malloc'd (for tests and the HTTP handler). */
char *metrics_render(void);

#endif
