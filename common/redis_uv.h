/* redis_uv.h — hiredis' async API on a libuv loop, with an adapter of our own
 * (docs/common/redis_uv.md).
 *
 * hiredis 0.14's bundled adapters/libuv.h ignores poll errors (a refused
 * connect never calls back) and has no timeouts. This one:
 *   - reports a failed connect (refused, reset) and a connect that takes
 *     longer than connect_timeout_ms, through on_state;
 *   - gives every command a deadline: a command without a reply by then
 *     fails its callback with "timed out", the connection is dropped (every
 *     other command on it fails too) and a new one is made;
 *   - reconnects after any loss with backoff (backoff_min_ms doubling to
 *     backoff_max_ms), sending AUTH first when a password is set;
 *   - closes cleanly: after redis_uv_close no handle of it is left on the
 *     loop, so uv_loop_close can return 0.
 *
 * Everything here runs on the loop's thread only. */
#ifndef OM_REDIS_UV_H
#define OM_REDIS_UV_H

#include <stdbool.h>
#include <stddef.h>

#include <hiredis/hiredis.h>
#include <uv.h>

typedef struct redis_uv redis_uv;

/* A command's result, called exactly once per accepted command: reply (owned
 * by hiredis, valid during the call only; it may be a REDIS_REPLY_ERROR) and
 * err NULL, or reply NULL and err a message ("timed out after 300 ms",
 * "connection lost: ...", "closed"). */
typedef void (*redis_uv_reply_fn)(redis_uv *r, redisReply *reply, const char *err, void *arg);

/* Connection state: up true once connected (and authenticated); up false
 * with err after a failed attempt or a lost connection (a new attempt is then
 * scheduled by itself). Not called for redis_uv_close. */
typedef void (*redis_uv_state_fn)(redis_uv *r, bool up, const char *err, void *arg);

typedef struct redis_uv_opts {
    const char *host;          /* NULL: ORGMESH_REDIS_HOST/PORT as given to cache_setup */
    int port;
    const char *password;      /* NULL: ORGMESH_REDIS_PASSWORD; "" none */
    int connect_timeout_ms;    /* 0: cache_setup's timeout (default 1000) */
    int command_timeout_ms;    /* 0: the same; per command overridable */
    int backoff_min_ms;        /* 0: 100 */
    int backoff_max_ms;        /* 0: 2000 */
    redis_uv_state_fn on_state; /* may be NULL */
    void *arg;
} redis_uv_opts;

/* Create the connection and start connecting. NULL on bad options or
 * memory (logged). */
redis_uv *redis_uv_open(uv_loop_t *loop, const redis_uv_opts *opts);

/* True while connected (commands are accepted). */
bool redis_uv_connected(const redis_uv *r);

/* Send a command (binary-safe arguments; lens NULL for C strings).
 * timeout_ms 0: the connection's command_timeout_ms (give a blocking command
 * such as XREADGROUP BLOCK n a deadline above n). Returns 0 when accepted —
 * fn is then called exactly once — or -1 when not connected or closing (fn
 * is not called). Commands sent in a row are pipelined (written together on
 * the next loop turn). */
int redis_uv_command(redis_uv *r, int argc, const char **argv, const size_t *lens, int timeout_ms,
                     redis_uv_reply_fn fn, void *arg);

/* Commands accepted and not yet answered. */
size_t redis_uv_pending(const redis_uv *r);

/* Close: pending commands fail with "closed" (their callbacks run before
 * this returns), no more state callbacks; the memory is released once the
 * loop has closed its handles. Safe from inside a callback. */
void redis_uv_close(redis_uv *r);

#endif
