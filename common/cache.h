/* cache.h — Redis as a cache with TTLs (hiredis is touched only in common/).
 *
 * Each thread has its own connection with connect and command timeouts. While
 * Redis is down every call fails fast with OM_E_UNAVAILABLE (reconnects are
 * attempted at most once per second per thread), so callers fall back to
 * PostgreSQL and keep serving. */
#ifndef OM_CACHE_H
#define OM_CACHE_H

#include <stdbool.h>
#include <stddef.h>

/* host, port, connect/command timeout (ORGMESH_REDIS_HOST/PORT/TIMEOUT_MS). */
int cache_setup(const char *host, int port, int timeout_ms);

/* 0 and a malloc'd copy in *val (free it), OM_E_NOT_FOUND, or OM_E_UNAVAILABLE. */
int cache_get(const char *key, char **val, size_t *len);
int cache_set(const char *key, const void *val, size_t len, int ttl_ms);
int cache_del(const char *key);
/* PING on a connection of its own (health): true when Redis answered. */
bool cache_ping(void);
/* Close this thread's connection (worker exit). */
void cache_local_close(void);

/* The prefix of every key and stream (ORGMESH_REDIS_NAMESPACE, default "").
 * Tests give each suite its own so suites sharing one Redis stay apart. */
const char *cache_namespace(void);

/* A raw connection for the event relay and consumers (evt.c); it
 * reconnects by itself (see cache_internal.h). OM_E_UNAVAILABLE when Redis
 * cannot be reached now. */
typedef struct cache_conn cache_conn;
int cache_connect(cache_conn **out);
void cache_close(cache_conn *c);

#endif
