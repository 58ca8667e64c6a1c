/* it_util.h — shared set-up for the integration tests of common/: the stack's
 * PostgreSQL and Redis (ORGMESH_PG_URL, ORGMESH_REDIS_HOST/PORT, as
 * tests/harness/with-stack.sh exports them), a fresh schema per program, direct
 * Redis access for assertions, and stack control for the outage tests. */
#ifndef OM_IT_UTIL_H
#define OM_IT_UTIL_H

#include <stdbool.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

#include "pg.h"

/* log_init, pg_setup, cache_setup, then a fresh <schema> with the runtime
 * tables (pg_migrate). Aborts the program when the stack is not there. */
void it_init(const char *schema);
/* Run SQL (several statements allowed) on a connection of its own; aborts
 * on error. it_sql_int returns the first column of the first row. */
void it_sql(const char *sql);
long long it_sql_int(const char *sql);
/* A direct Redis connection (redisFree it). */
redisContext *it_redis(void);
/* `tests/harness/stack.sh <cmd> $OM_STACK_DIR` (redis-stop, redis-start,
 * pg-restart); returns its exit status. */
int it_stack(const char *cmd);
int64_t it_ms(void);
void it_sleep_ms(int ms);
/* "<prefix>-<pid>-<n>": names of Redis keys no other test program uses. */
const char *it_unique(const char *prefix);
/* A TCP port on 127.0.0.1 that listens but never answers (connections
 * wait in the backlog): a hung server. Returns the port; fd in *fd. */
int it_silent_server(int *fd);

/* The process loop (common/loop.h) on a thread of its own with a worker
 * pool of 4, as app.c has it, for code that runs on the loop (the event
 * relay). it_loop_stop drains and closes it; it aborts unless uv_loop_close
 * returns 0. */
void it_loop_start(void);
void it_loop_stop(void);

#endif
