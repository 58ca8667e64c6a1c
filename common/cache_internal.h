/* cache_internal.h — the raw Redis connection behind cache_conn, for common/
 * only (the event relay and consumers in evt.c). Services use cache.h. */
#ifndef OM_CACHE_INTERNAL_H
#define OM_CACHE_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

#include "cache.h"

/* A connection that reopens itself: at once after a failure, then at most
 * once per second while Redis stays down. */
struct cache_conn {
    redisContext *ctx;       /* NULL while disconnected */
    int timeout_ms;          /* connect and command timeout */
    int64_t next_try_ms;     /* no connect attempt before this (monotonic) */
    bool was_down;           /* for a single "reconnected" log line */
    bool proven;             /* a command got a reply since connecting */
    unsigned gen;            /* bumped by every connect: server-side state
                              * (consumer groups) may need re-creating */
};

/* A connection with its own command timeout (0: cache_setup's), not yet
 * connected. Blocking commands (XREADGROUP BLOCK n) need timeout > n. */
int cache_conn_new(cache_conn **out, int timeout_ms);
/* The connected context, connecting if allowed; NULL while Redis is down. */
redisContext *cache_conn_ctx(cache_conn *c);
/* Forget the context after an I/O error (hiredis contexts are unusable
 * after one). The next cache_conn_ctx reconnects at once if the connection
 * had worked (Redis restarted), else after a second (a Redis that accepts
 * but never answers must not cost a full timeout per call). Code that reads
 * replies itself sets `proven` when one arrives. */
void cache_conn_drop(cache_conn *c);
/* Run one command; NULL after an I/O error (the connection is dropped).
 * A Redis error reply is returned as a reply of type REDIS_REPLY_ERROR. */
redisReply *cache_conn_cmd(cache_conn *c, int argc, const char **argv, const size_t *lens);

/* The endpoint given to cache_setup (host NULL before it), for the
 * event-loop connections of redis_uv.c. */
void cache_endpoint(const char **host, int *port, int *timeout_ms);

#endif
