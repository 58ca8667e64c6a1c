/* connections_cache.h — the in-process cache the hot checks (CONN-06,
 * CONN-07) answer from on the gRPC polling thread, without blocking.
 *
 * A fixed-size, direct-mapped table of entries — facts of a flow (S,T), a
 * user's seat in T, the mirroring sources of T — guarded by striped
 * spinlocks. Each entry carries the generation current when its data was
 * read and an expiry (ORGMESH_CONN_CACHE_TTL_MS): it is a hit only while
 * both hold. Any committed change (own writes, applied events, other
 * replicas' writes) bumps the generation through PostgreSQL NOTIFY, which is
 * delivered after commit (connections_events.c); when that path is broken,
 * the TTL bounds staleness (CONN-09). A filler reads the generation BEFORE
 * reading PostgreSQL, so data read before a change is never stored under
 * the generation that follows it. */
#ifndef CONNECTIONS_CACHE_H
#define CONNECTIONS_CACHE_H

#include <stdbool.h>
#include <stdint.h>

#include "connections_rules.h"

#define CONN_CACHE_TTL_DEFAULT_MS 2000
#define CONN_CACHE_MAX_SOURCES 8

void conn_cache_init(int64_t ttl_ms);
int64_t conn_cache_ttl_ms(void);
/* The generation to pass to a put: read it before reading the database. */
uint64_t conn_cache_gen(void);
/* Every entry becomes a miss. */
void conn_cache_invalidate(void);

bool conn_cache_get_facts(uint64_t s, uint64_t t, conn_facts *out);
void conn_cache_put_facts(uint64_t gen, uint64_t s, uint64_t t, const conn_facts *f);
bool conn_cache_get_seat(uint64_t hub_id, uint64_t user_id, conn_seat *out);
void conn_cache_put_seat(uint64_t gen, uint64_t hub_id, uint64_t user_id, const conn_seat *seat);
bool conn_cache_get_sources(uint64_t t, uint64_t *out, int *n);
void conn_cache_put_sources(uint64_t gen, uint64_t t, const uint64_t *src, int n);

#endif
