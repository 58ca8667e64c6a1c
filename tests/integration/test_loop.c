/* test_loop.c — common/loop.c with the stack's PostgreSQL: loop_call and
 * loop_work from many threads, a stop with work, timers and a LISTEN in
 * flight that still closes every handle (uv_loop_close returns 0, and
 * ASan/LSan find nothing), notifications, and the LISTEN connection's
 * reconnect with a "rescan" (payload NULL) after PostgreSQL dropped it or
 * restarted (so it runs alone: RUN_SERIAL). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "it_util.h"
#include "loop_internal.h"
#include "om_err.h"

#define SCHEMA "it_loop"

static work_pool *pool;

static void start(void) {
    work_pool_opts wo = {.threads = 2};
    assert_int_equal(work_pool_new(&pool, &wo), 0);
    assert_int_equal(loop_init(pool), 0);
    assert_true(loop_on_loop());
    assert_false(loop_stopping());
}

/* uv_run until no handle is left, bounded: a handle left open fails the
 * test (loop_close) instead of hanging it. */
static void run_out(void) {
    int64_t until = it_ms() + 5000;
    while (uv_loop_alive(loop_get()) && it_ms() < until) {
        uv_run(loop_get(), UV_RUN_NOWAIT);
        if (uv_loop_alive(loop_get())) it_sleep_ms(1);
    }
}

/* The drain as app.c runs it; the loop must close with nothing left. */
static void stop(void) {
    loop_begin_stop();
    assert_true(loop_stopping());
    work_pool_stop(pool);
    loop_finish();
    run_out();
    assert_int_equal(loop_close(), 0);
    work_pool_free(pool);
    pool = NULL;
    assert_null(loop_get());
}

static void tick(uv_timer_t *t) {
    (void)t;
}

/* Run the loop until cond() holds; false after timeout_ms. A 10 ms timer
 * keeps uv_run from blocking longer than that. */
static bool run_until(bool (*cond)(void), int timeout_ms) {
    uv_timer_t guard;
    uv_timer_init(loop_get(), &guard);
    uv_timer_start(&guard, tick, 10, 10);
    int64_t until = it_ms() + timeout_ms;
    bool ok;
    while (!(ok = cond()) && it_ms() < until) uv_run(loop_get(), UV_RUN_ONCE);
    uv_close((uv_handle_t *)&guard, NULL);
    uv_run(loop_get(), UV_RUN_NOWAIT);
    return ok;
}

/* ---- loop_call and loop_work from many threads ------------------------- */

#define THREADS 4
#define PER_THREAD 200

static int calls_seen, dones_seen;
static atomic_int wrong_thread;

static void on_call(void *arg) {
    if (!loop_on_loop()) atomic_fetch_add(&wrong_thread, 1);
    calls_seen += (int)(intptr_t)arg;
}

static int work_seven(void *arg) {
    (void)arg;
    if (loop_on_loop()) atomic_fetch_add(&wrong_thread, 1);
    return 7;
}

static void done_seven(void *arg, int rc) {
    (void)arg;
    if (!loop_on_loop() || rc != 7) atomic_fetch_add(&wrong_thread, 1);
    dones_seen++;
}

static void *poster(void *arg) {
    (void)arg;
    for (int i = 0; i < PER_THREAD; i++) {
        if (loop_call(on_call, (void *)(intptr_t)1) != 0) atomic_fetch_add(&wrong_thread, 1);
        if (loop_work(work_seven, done_seven, NULL) != 0) atomic_fetch_add(&wrong_thread, 1);
    }
    return NULL;
}

static bool all_seen(void) {
    return calls_seen == THREADS * PER_THREAD && dones_seen == THREADS * PER_THREAD;
}

static void test_loop_call_and_work_from_any_thread(void **state) {
    (void)state;
    start();
    calls_seen = dones_seen = 0;
    pthread_t th[THREADS];
    for (int i = 0; i < THREADS; i++) assert_int_equal(pthread_create(&th[i], NULL, poster, NULL), 0);
    for (int i = 0; i < THREADS; i++) pthread_join(th[i], NULL);
    assert_true(run_until(all_seen, 10000));
    assert_int_equal(atomic_load(&wrong_thread), 0);
    stop();
}

/* ---- a stop with everything in flight ----------------------------------- */

#define IN_FLIGHT 40

static int slow_dones, slow_unavailable;
static char hook_order[8];
static uv_timer_t hook_timer;
static int timer_fired;

static int work_slow(void *arg) {
    (void)arg;
    usleep(2000);
    return 0;
}

static void done_slow(void *arg, int rc) {
    (void)arg;
    assert_true(loop_on_loop());
    if (rc == OM_E_UNAVAILABLE) slow_unavailable++;
    slow_dones++;
}

static void timer_cb(uv_timer_t *t) {
    (void)t;
    timer_fired++;
}

static void hook_a(void *arg) {
    (void)arg;
    strcat(hook_order, "a");
}

static void hook_b(void *arg) {
    (void)arg;
    strcat(hook_order, "b");
    uv_close((uv_handle_t *)&hook_timer, NULL); /* the hook closes its handle */
}

static void notify_ignore(const char *ch, const char *payload, void *arg) {
    (void)ch;
    (void)payload;
    (void)arg;
}

static void never_called(void *arg) {
    (void)arg;
    fail_msg("loop_call ran after the stop began");
}

static bool timer_ran(void) {
    return timer_fired > 0;
}

static void test_loop_stop_closes_every_handle_with_work_in_flight(void **state) {
    (void)state;
    start();
    slow_dones = slow_unavailable = timer_fired = 0;
    hook_order[0] = '\0';
    uv_timer_init(loop_get(), &hook_timer);
    uv_timer_start(&hook_timer, timer_cb, 1, 1);
    assert_int_equal(loop_on_stop(hook_a, NULL), 0);
    assert_int_equal(loop_on_stop(hook_b, NULL), 0);
    assert_int_equal(loop_listen("it_loop_stop", notify_ignore, NULL), 0); /* connecting */
    assert_true(run_until(timer_ran, 5000));
    for (int i = 0; i < IN_FLIGHT; i++) assert_int_equal(loop_work(work_slow, done_slow, NULL), 0);

    loop_begin_stop();
    assert_string_equal(hook_order, "ba"); /* reverse order of registration */
    assert_int_equal(loop_call(never_called, NULL), OM_E_UNAVAILABLE);
    assert_int_equal(loop_on_stop(hook_a, NULL), OM_E_UNAVAILABLE);
    work_pool_stop(pool);
    /* after the pool: done still runs, with OM_E_UNAVAILABLE */
    assert_int_equal(loop_work(work_slow, done_slow, NULL), 0);
    loop_finish();
    run_out();
    assert_int_equal(slow_dones, IN_FLIGHT + 1);
    assert_int_equal(slow_unavailable, 1);
    assert_int_equal(loop_close(), 0);
    work_pool_free(pool);
    pool = NULL;
}

/* ---- notifications and the reconnect ------------------------------------ */

static char last_payload[64];
static int payloads, rescans, other_payloads;

static void on_notify(const char *ch, const char *payload, void *arg) {
    assert_true(loop_on_loop());
    assert_string_equal(ch, (const char *)arg);
    if (payload == NULL) {
        rescans++;
        return;
    }
    snprintf(last_payload, sizeof last_payload, "%s", payload);
    payloads++;
}

static void on_other(const char *ch, const char *payload, void *arg) {
    (void)ch;
    (void)arg;
    if (payload != NULL) other_payloads++;
}

static int listen_backends(const char *channel) {
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%%LISTEN \"%s\"%%'"
             " AND pid <> pg_backend_pid()",
             channel);
    return (int)it_sql_int(sql);
}

static bool listening_a(void) {
    return listen_backends("it_loop_a") == 1;
}
static bool listening_b(void) {
    return listen_backends("it_loop_b") == 1;
}
static bool got_one(void) {
    return payloads >= 1;
}
static bool got_two(void) {
    return payloads >= 2;
}
static bool got_other(void) {
    return other_payloads >= 1;
}
static bool rescanned(void) {
    return rescans >= 1;
}

static void test_loop_listen_delivers_and_reconnects_with_a_rescan(void **state) {
    (void)state;
    start();
    payloads = rescans = other_payloads = 0;
    assert_int_equal(loop_listen("it_loop_a", on_notify, "it_loop_a"), 0);
    assert_true(run_until(listening_a, 10000));
    it_sql("NOTIFY it_loop_a, 'first'");
    assert_true(run_until(got_one, 5000));
    assert_string_equal(last_payload, "first");
    assert_int_equal(rescans, 0); /* the first connection misses nothing */

    /* a channel added while connected: the same connection LISTENs */
    assert_int_equal(loop_listen("it_loop_b", on_other, NULL), 0);
    assert_true(run_until(listening_b, 10000));
    it_sql("NOTIFY it_loop_b, 'x'");
    assert_true(run_until(got_other, 5000));

    /* PostgreSQL drops the LISTEN connection: reconnect, LISTEN again, rescan */
    it_sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
           " WHERE query LIKE '%LISTEN \"it_loop_%' AND pid <> pg_backend_pid()");
    assert_true(run_until(rescanned, 10000));
    assert_int_equal(rescans, 1);
    assert_true(listening_a());
    it_sql("NOTIFY it_loop_a, 'second'");
    assert_true(run_until(got_two, 5000));
    assert_string_equal(last_payload, "second");
    stop();
}

/* A real restart: the connection drops, connects fail while PostgreSQL is
 * down or starting (the backoff), then LISTEN again and one rescan. */
static void test_loop_listen_survives_a_postgresql_restart(void **state) {
    (void)state;
    start();
    payloads = rescans = other_payloads = 0;
    assert_int_equal(loop_listen("it_loop_a", on_notify, "it_loop_a"), 0);
    assert_true(run_until(listening_a, 10000));
    assert_int_equal(it_stack("pg-stop"), 0);
    assert_int_equal(it_stack("pg-start"), 0);
    assert_true(run_until(rescanned, 15000));
    assert_int_equal(rescans, 1);
    it_sql("NOTIFY it_loop_a, 'after restart'");
    assert_true(run_until(got_one, 5000));
    assert_string_equal(last_payload, "after restart");
    stop();
}

static void test_loop_refuses_bad_arguments(void **state) {
    (void)state;
    start();
    assert_int_equal(loop_listen("", on_other, NULL), OM_E_INVALID_ARGUMENT);
    assert_int_equal(loop_listen("x", NULL, NULL), OM_E_INVALID_ARGUMENT);
    assert_int_equal(loop_call(NULL, NULL), OM_E_INVALID_ARGUMENT);
    assert_int_equal(loop_work(NULL, NULL, NULL), OM_E_INVALID_ARGUMENT);
    stop();
}

int main(void) {
    it_init(SCHEMA);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_loop_call_and_work_from_any_thread),
        cmocka_unit_test(test_loop_stop_closes_every_handle_with_work_in_flight),
        cmocka_unit_test(test_loop_listen_delivers_and_reconnects_with_a_rescan),
        cmocka_unit_test(test_loop_listen_survives_a_postgresql_restart),
        cmocka_unit_test(test_loop_refuses_bad_arguments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
