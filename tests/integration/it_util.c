/* it_util.c — shared set-up for the integration tests (it_util.h). */
#include "it_util.h"

#include <arpa/inet.h>
#include <pthread.h>
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
#include "loop_internal.h"
#include "work.h"

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

/* ---- the process loop on a thread ------------------------------------------ */

static struct {
    pthread_t th;
    work_pool *pool;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int state; /* 0 starting, 1 running, -1 failed */
} itl = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static void itl_worker_stop(int index, void *arg) {
    (void)index;
    (void)arg;
    pg_local_close();
    cache_local_close();
}

static void itl_after_job(void *arg) {
    (void)arg;
    pg_local_end_call();
}

static void *itl_main(void *arg) {
    (void)arg;
    int rc = loop_init(itl.pool);
    pthread_mutex_lock(&itl.mu);
    itl.state = rc == 0 ? 1 : -1;
    pthread_cond_broadcast(&itl.cv);
    pthread_mutex_unlock(&itl.mu);
    if (rc == 0) uv_run(loop_get(), UV_RUN_DEFAULT);
    return NULL;
}

void it_loop_start(void) {
    work_pool_opts wo = {.threads = 4, .thread_stop = itl_worker_stop, .after_job = itl_after_job};
    if (work_pool_new(&itl.pool, &wo) != 0) it_die("cannot start the worker pool");
    work_set_default(itl.pool);
    itl.state = 0;
    if (pthread_create(&itl.th, NULL, itl_main, NULL) != 0) it_die("cannot start the loop thread");
    pthread_mutex_lock(&itl.mu);
    while (itl.state == 0) pthread_cond_wait(&itl.cv, &itl.mu);
    pthread_mutex_unlock(&itl.mu);
    if (itl.state < 0) it_die("loop_init failed");
}

static void itl_begin_stop(void *arg) {
    (void)arg;
    loop_begin_stop();
}

void it_loop_stop(void) {
    if (loop_call(itl_begin_stop, NULL) != 0) it_die("cannot reach the loop");
    work_pool_stop(itl.pool);
    loop_finish();
    pthread_join(itl.th, NULL);
    if (loop_close() != 0) it_die("the loop did not close cleanly: a handle was left open");
    work_set_default(NULL);
    work_pool_free(itl.pool);
    itl.pool = NULL;
}
