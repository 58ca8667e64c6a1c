/* test_outage.c — common/ through real outages (SPEC 2, SPEC 9 reliability):
 * Redis stopped (the cache fails fast, events wait in the outbox, consumers
 * pick up again) and PostgreSQL restarted or stopped (connections heal by
 * themselves, the relay listens again). Runs alone: it stops the shared stack. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cache.h"
#include "evt.h"
#include "google/protobuf/duration.pb-c.h"
#include "it_util.h"
#include "om_err.h"
#include "orgmesh/events/v1/envelope.pb-c.h"

#define SCHEMA "it_outage"

static char svc[64], stream[96];

typedef struct emit_arg {
    int64_t seconds;
    char id[37];
} emit_arg;

static int emit_fn(pg_conn *c, void *arg) {
    emit_arg *e = arg;
    Google__Protobuf__Duration d = GOOGLE__PROTOBUF__DURATION__INIT;
    d.seconds = e->seconds;
    evt_meta m = {.subject = "things/1", .version = e->seconds};
    return evt_emit(c, &m, &d.base, e->id);
}

static int emit(int64_t seconds, char *id) {
    emit_arg e = {.seconds = seconds};
    pg_conn *c = pg_local();
    if (c == NULL) return OM_E_UNAVAILABLE;
    int rc = pg_tx(c, emit_fn, &e);
    if (id != NULL) memcpy(id, e.id, 37);
    return rc;
}

/* The Duration seconds of every entry in the relay's stream, in order. */
static int stream_seconds(int64_t *out, int max) {
    redisContext *r = it_redis();
    redisReply *rep = redisCommand(r, "XRANGE %s - +", stream);
    int n = 0;
    for (size_t i = 0; rep && rep->type == REDIS_REPLY_ARRAY && i < rep->elements && n < max; i++) {
        redisReply *f = rep->element[i]->element[1];
        for (size_t j = 0; j + 1 < f->elements; j += 2) {
            if (strcmp(f->element[j]->str, "e") != 0) continue;
            Orgmesh__Events__V1__Envelope *env = orgmesh__events__v1__envelope__unpack(
                NULL, f->element[j + 1]->len, (uint8_t *)f->element[j + 1]->str);
            Google__Protobuf__Duration *d =
                env ? google__protobuf__duration__unpack(NULL, env->payload->value.len,
                                                         env->payload->value.data)
                    : NULL;
            out[n++] = d ? d->seconds : -1;
            google__protobuf__duration__free_unpacked(d, NULL);
            if (env) orgmesh__events__v1__envelope__free_unpacked(env, NULL);
        }
    }
    freeReplyObject(rep);
    redisFree(r);
    return n;
}

static bool stream_has_seconds(int64_t s) {
    static int64_t v[4096];
    int n = stream_seconds(v, 4096);
    for (int i = 0; i < n; i++)
        if (v[i] == s) return true;
    return false;
}

static bool wait_seconds(int64_t s, int timeout_ms) {
    int64_t deadline = it_ms() + timeout_ms;
    while (it_ms() < deadline) {
        if (stream_has_seconds(s)) return true;
        it_sleep_ms(10);
    }
    return false;
}

static bool wait_sql(const char *sql, long long want, int timeout_ms) {
    int64_t deadline = it_ms() + timeout_ms;
    while (it_ms() < deadline) {
        if (it_sql_int(sql) == want) return true;
        it_sleep_ms(50);
    }
    return false;
}

static bool wait_redis(void) {
    int64_t deadline = it_ms() + 5000;
    while (it_ms() < deadline) {
        if (cache_ping()) return true;
        it_sleep_ms(100);
    }
    return false;
}

/* ---- Redis down ------------------------------------------------------------- */

static void test_cache_down_fails_fast(void **state) {
    const char *key = it_unique("it:outage:k");
    assert_int_equal(cache_set(key, "v", 1, 60000), 0);
    assert_int_equal(it_stack("redis-stop"), 0);
    char *v = NULL;
    int64_t t0 = it_ms();
    assert_int_equal(cache_get(key, &v, NULL), OM_E_UNAVAILABLE); /* notices it is gone */
    int64_t first = it_ms() - t0;
    t0 = it_ms();
    for (int i = 0; i < 200; i++) assert_int_equal(cache_get(key, &v, NULL), OM_E_UNAVAILABLE);
    int64_t next200 = it_ms() - t0;
    assert_false(cache_ping());
    print_message("Redis down: first call %lld ms, next 200 calls %lld ms\n", (long long)first,
                  (long long)next200);
    assert_true(first < 1000);
    assert_true(next200 < 100);
    assert_int_equal(it_stack("redis-start"), 0);
    assert_true(wait_redis());
    /* this thread's connection comes back within its once-a-second retry */
    int64_t deadline = it_ms() + 3000;
    int rc;
    while ((rc = cache_set(key, "w", 1, 60000)) != 0 && it_ms() < deadline) it_sleep_ms(50);
    assert_int_equal(rc, 0);
    assert_int_equal(cache_get(key, &v, NULL), 0);
    assert_string_equal(v, "w");
    free(v);
}

/* SPEC 2: "When Redis is down, events wait in the outbox and are relayed
 * when it returns; nothing is lost." */
static void test_evt_events_wait_while_redis_down(void **state) {
    assert_int_equal(emit(1, NULL), 0);
    assert_true(wait_seconds(1, 5000));
    assert_int_equal(it_stack("redis-stop"), 0);
    for (int i = 0; i < 50; i++) assert_int_equal(emit(100 + i, NULL), 0); /* writes go on */
    it_sleep_ms(700);
    assert_int_equal(it_sql_int("SELECT count(*) FROM " SCHEMA ".outbox WHERE relayed_at IS NULL"),
                     50);
    assert_int_equal(it_stack("redis-start"), 0);
    assert_true(wait_seconds(149, 10000));
    static int64_t v[4096];
    int n = stream_seconds(v, 4096);
    int64_t expect = 100;
    for (int i = 0; i < n; i++) {
        if (v[i] < 100 || v[i] >= 150) continue;
        assert_int_equal(v[i], expect); /* all of them, once each, in order */
        expect++;
    }
    assert_int_equal(expect, 150);
    assert_true(wait_sql("SELECT count(*) FROM " SCHEMA ".outbox WHERE relayed_at IS NULL", 0, 5000));
}

static atomic_int applied_calls;

static int count_handler(pg_conn *tx, const evt_event *ev, void *arg) {
    atomic_fetch_add(&applied_calls, 1);
    Google__Protobuf__Duration *d =
        google__protobuf__duration__unpack(NULL, ev->payload_len, ev->payload);
    pg_params p = {0};
    pg_p_str(&p, ev->id);
    pg_p_i64(&p, d ? d->seconds : -1);
    google__protobuf__duration__free_unpacked(d, NULL);
    return pg_exec(tx, "INSERT INTO effects (event_id, n) VALUES ($1::uuid, $2)", &p, NULL);
}

static void test_evt_consumer_resumes_after_redis_restart(void **state) {
    evt_subscription sub = {.source = svc, .fn = count_handler};
    assert_int_equal(evt_consumers_start(it_unique("itgrp"), &sub, 1), 0);
    for (int i = 0; i < 5; i++) assert_int_equal(emit(200 + i, NULL), 0);
    assert_true(wait_sql("SELECT count(*) FROM " SCHEMA ".effects WHERE n BETWEEN 200 AND 204", 5,
                         10000));
    assert_int_equal(it_stack("redis-stop"), 0);
    for (int i = 5; i < 10; i++) assert_int_equal(emit(200 + i, NULL), 0);
    it_sleep_ms(500);
    assert_int_equal(it_stack("redis-start"), 0);
    assert_true(wait_sql("SELECT count(*) FROM " SCHEMA ".effects WHERE n BETWEEN 200 AND 209", 10,
                         15000));
    assert_int_equal(it_sql_int("SELECT count(*) - count(DISTINCT event_id) FROM " SCHEMA ".effects"),
                     0);
    evt_consumers_stop();
}

/* ---- PostgreSQL restarted / down -------------------------------------------- */

static int insert_row(pg_conn *c, void *arg) {
    return pg_exec(c, "INSERT INTO survivors (v) VALUES (1)", NULL, NULL);
}

static void test_pg_reconnects_after_restart(void **state) {
    pg_conn *mine = NULL;
    assert_int_equal(pg_connect(&mine), 0);
    assert_int_equal(pg_exec(mine, "SELECT 1", NULL, NULL), 0);
    assert_non_null(pg_local());
    assert_int_equal(it_stack("pg-restart"), 0);
    /* pg_tx notices the dead connection at BEGIN and retries on a new one */
    assert_int_equal(pg_tx(pg_local(), insert_row, NULL), 0);
    assert_int_equal(it_sql_int("SELECT count(*) FROM " SCHEMA ".survivors"), 1);
    /* a single statement on a stale connection fails once, then heals */
    int rc = pg_exec(mine, "SELECT 1", NULL, NULL);
    assert_int_equal(rc, OM_E_UNAVAILABLE);
    assert_int_equal(pg_exec(mine, "SELECT 1", NULL, NULL), 0);
    assert_true(pg_ping());
    pg_close(mine);
}

/* SPEC 9: "a PostgreSQL restart loses no committed change and no event". */
static void test_evt_relay_resumes_after_pg_restart(void **state) {
    assert_int_equal(emit(300, NULL), 0);
    assert_true(wait_seconds(300, 5000));
    assert_int_equal(it_stack("pg-restart"), 0);
    assert_int_equal(emit(301, NULL), 0);
    assert_true(wait_seconds(301, 5000));
    /* the relay's LISTEN was renewed: it is woken at commit again, not
     * only by its 200 ms poll */
    int64_t total = 0;
    for (int i = 0; i < 5; i++) {
        int64_t t0 = it_ms();
        assert_int_equal(emit(310 + i, NULL), 0);
        assert_true(wait_seconds(310 + i, 3000));
        total += it_ms() - t0;
    }
    print_message("relay latency after restart: mean %lld ms\n", (long long)(total / 5));
    assert_true(total / 5 < 80);
}

static void test_pg_down_fails_fast_and_heals(void **state) {
    assert_int_equal(it_stack("pg-stop"), 0);
    int64_t t0 = it_ms();
    assert_int_not_equal(pg_tx(pg_local(), insert_row, NULL), 0);
    assert_null(pg_local()); /* within 500 ms of the failed connect: no new attempt */
    int64_t took = it_ms() - t0;
    assert_false(pg_ping());
    assert_true(took < 2000);
    assert_int_equal(it_stack("pg-start"), 0);
    int64_t deadline = it_ms() + 5000;
    int rc = -1;
    while (it_ms() < deadline) {
        pg_conn *c = pg_local();
        if (c != NULL && (rc = pg_tx(c, insert_row, NULL)) == 0) break;
        it_sleep_ms(100);
    }
    assert_int_equal(rc, 0);
    assert_true(pg_ping());
}

static int setup(void **state) {
    it_sql("CREATE TABLE " SCHEMA ".effects (event_id uuid, n bigint);"
           "CREATE TABLE " SCHEMA ".survivors (v int)");
    snprintf(svc, sizeof svc, "%s", it_unique("itout"));
    snprintf(stream, sizeof stream, "%s" EVT_STREAM_PREFIX "%s", cache_namespace(), svc);
    return evt_relay_start(svc);
}

static int teardown(void **state) {
    evt_relay_stop();
    pg_local_close();
    cache_local_close();
    it_stack("redis-start");
    it_stack("pg-start");
    redisContext *r = it_redis();
    freeReplyObject(redisCommand(r, "DEL %s", stream));
    redisFree(r);
    return 0;
}

int main(void) {
    if (getenv("OM_STACK_DIR") == NULL) {
        fprintf(stderr, "test_outage: OM_STACK_DIR is not set (run through with-stack.sh)\n");
        return 1;
    }
    it_init(SCHEMA);
    it_loop_start(); /* the relay runs on the process loop */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cache_down_fails_fast),
        cmocka_unit_test(test_evt_events_wait_while_redis_down),
        cmocka_unit_test(test_evt_consumer_resumes_after_redis_restart),
        cmocka_unit_test(test_pg_reconnects_after_restart),
        cmocka_unit_test(test_evt_relay_resumes_after_pg_restart),
        cmocka_unit_test(test_pg_down_fails_fast_and_heals),
    };
    int failed = cmocka_run_group_tests(tests, setup, teardown);
    evt_relay_stop();
    it_loop_stop();
    return failed;
}
