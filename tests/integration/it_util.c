/* it_util.c — shared set-up for the integration tests (it_util.h). */
#include "it_util.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cache.h"
#include "log.h"

#ifndef OM_HARNESS_DIR
#define OM_HARNESS_DIR "tests/harness"
#endif

static void it_die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "it: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

static const char *it_env(const char *name) {
    const char *v = getenv(name);
    if (v == NULL || v[0] == '\0')
        it_die("%s is not set: run through tests/harness/with-stack.sh", name);
    return v;
}

void it_init(const char *schema) {
    const char *lvl = getenv("ORGMESH_LOG_LEVEL");
    log_init("it", lvl != NULL && log_level_parse(lvl) >= 0 ? log_level_parse(lvl) : LOG_WARN);
    if (pg_setup(it_env("ORGMESH_PG_URL"), schema, 30000) != 0) it_die("pg_setup failed");
    if (cache_setup(it_env("ORGMESH_REDIS_HOST"), atoi(it_env("ORGMESH_REDIS_PORT")), 500) != 0)
        it_die("cache_setup failed");
    char sql[256];
    snprintf(sql, sizeof sql, "DROP SCHEMA IF EXISTS %s CASCADE", schema);
    it_sql(sql);
    pg_conn *c = NULL;
    if (pg_connect(&c) != 0) it_die("cannot connect to PostgreSQL");
    if (pg_migrate(c, schema, NULL, 0) != 0) it_die("pg_migrate failed: %s", pg_errmsg(c));
    pg_close(c);
}

void it_sql(const char *sql) {
    pg_conn *c = NULL;
    if (pg_connect(&c) != 0) it_die("cannot connect to PostgreSQL");
    if (pg_exec_script(c, sql) != 0) it_die("SQL failed: %s\n%s", pg_errmsg(c), sql);
    pg_close(c);
}

long long it_sql_int(const char *sql) {
    pg_conn *c = NULL;
    if (pg_connect(&c) != 0) it_die("cannot connect to PostgreSQL");
    pg_res *r = NULL;
    if (pg_exec(c, sql, NULL, &r) != 0) it_die("SQL failed: %s\n%s", pg_errmsg(c), sql);
    long long v = pg_nrows(r) > 0 ? (long long)pg_i64(r, 0, 0) : -1;
    pg_free(r);
    pg_close(c);
    return v;
}

redisContext *it_redis(void) {
    struct timeval tv = {5, 0};
    redisContext *r =
        redisConnectWithTimeout(it_env("ORGMESH_REDIS_HOST"), atoi(it_env("ORGMESH_REDIS_PORT")), tv);
    if (r == NULL || r->err) it_die("cannot connect to Redis");
    redisSetTimeout(r, tv);
    return r;
}

int it_stack(const char *cmd) {
    char line[1024];
    const char *script = getenv("OM_STACK_SH");
    snprintf(line, sizeof line, "%s %s '%s' >&2", script ? script : OM_HARNESS_DIR "/stack.sh",
             cmd, it_env("OM_STACK_DIR"));
    int rc = system(line);
    return rc == -1 ? -1 : WEXITSTATUS(rc);
}

int64_t it_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void it_sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

const char *it_unique(const char *prefix) {
    static char bufs[8][96];
    static int n;
    char *b = bufs[n % 8];
    snprintf(b, sizeof bufs[0], "%s-%ld-%d", prefix, (long)getpid(), n);
    n++;
    return b;
}

int it_silent_server(int *fd) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) != 0 || listen(s, 64) != 0 ||
        getsockname(s, (struct sockaddr *)&a, &len) != 0)
        it_die("cannot open a silent server");
    *fd = s;
    return ntohs(a.sin_port);
}
