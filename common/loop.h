/* loop.h — the process's one event loop (issue 15; docs/common/loop.md).
 *
 * app.c owns one uv_loop_t per process and runs it on the main thread, from
 * just before def->init until the SIGTERM drain has closed every handle.
 * All background work of a service lives on it: timers, PostgreSQL
 * notifications, Redis (common/redis_uv.h), SMTP, the metrics endpoint.
 * Blocking work (a PostgreSQL transaction) goes to the worker pool that
 * also serves blocking gRPC handlers, and continues on the loop with its
 * result. The gRPC request path does not use the loop.
 *
 * Threads: libuv handles are touched only on the loop thread. The only
 * functions here that any thread may call are loop_call and loop_work. */
#ifndef OM_LOOP_H
#define OM_LOOP_H

#include <stdbool.h>

#include <uv.h>

/* The process loop; NULL before app_main has created it. Use it from the
 * loop thread only (def->init runs there too). */
uv_loop_t *loop_get(void);

/* True on the loop thread. */
bool loop_on_loop(void);

/* Run fn(arg) on the loop thread soon (uv_async underneath). Any thread.
 * Returns 0, or OM_E_UNAVAILABLE once the loop is stopping (fn is then not
 * called: the caller still owns arg). */
int loop_call(void (*fn)(void *arg), void *arg);

/* Blocking work: work(arg) runs on a worker-pool thread, where pg_local()
 * and cache_local() are that thread's connections; then done(arg, rc) runs
 * on the loop thread with work's return value. done may be NULL. Any
 * thread. While the loop is stopping, done still runs (rc = whatever work
 * returned, or OM_E_UNAVAILABLE if work never ran), so arg is never lost. */
typedef int (*loop_work_fn)(void *arg);
typedef void (*loop_done_fn)(void *arg, int rc);
int loop_work(loop_work_fn work, loop_done_fn done, void *arg);

/* PostgreSQL notifications on the loop: one LISTEN connection per process,
 * watched with uv_poll on PQsocket, reconnected with backoff, every channel
 * LISTENed again after a reconnect. fn runs on the loop thread with each
 * notification's payload; after a reconnect it runs once with payload NULL
 * ("notifications may have been missed: rescan"). Loop thread only. */
typedef void (*loop_notify_fn)(const char *channel, const char *payload, void *arg);
int loop_listen(const char *channel, loop_notify_fn fn, void *arg);

/* A stop hook, run on the loop thread when the drain begins, in reverse
 * order of registration: close your handles there (uv_close) and let
 * in-flight work finish. After the hooks, app.c runs the loop until no
 * handle is left and checks that uv_loop_close returns 0. Loop thread. */
int loop_on_stop(void (*fn)(void *arg), void *arg);

/* True once the drain has begun. Any thread. */
bool loop_stopping(void);

#endif
