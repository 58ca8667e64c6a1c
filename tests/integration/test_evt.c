/* test_evt.c — common/evt.c against a real PostgreSQL and Redis (SPEC 2): the
 * outbox and its relay (content, latency, order, rollback), consumers (apply
 * once, duplicates, claiming from a dead consumer, dead letters), and a prompt
 * stop. Outages (Redis down, PostgreSQL restarted): test_outage.c. */
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

#include "cache.h"
#include "evt.h"
#include "google/protobuf/duration.pb-c.h"
#include "it_util.h"
#include "om_err.h"
#include "orgmesh/events/v1/envelope.pb-c.h"

#define SCHEMA "it_evt"

static char svc[64];    /* the producing service: relay stream orgmesh:events:<svc> */
static char stream[96];

/* ---- helpers ------------------------------------------------------------------ */

typedef struct emit_arg {
    int64_t seconds;
    int count;
    bool fail;
    char id[37];
} emit_arg;

static int emit_fn(pg_conn *c, void *arg) {
    emit_arg *e = arg;
    for (int i = 0; i < e->count; i++) {
        Google__Protobuf__Duration d = GOOGLE__PROTOBUF__DURATION__INIT;
        d.seconds = e->seconds + i;
        evt_meta m = {.subject = "things/7", .version = 3 + i, .rule = "TEST-01",
                      .trace_id = "trace-1"};
        int rc = evt_emit(c, &m, &d.base, e->id);
        if (rc != 0) return rc;
    }
    return e->fail ? OM_E_FAILED_PRECONDITION : 0;
}

/* Emit `count` events (seconds, seconds+1, ...) in one transaction. */
static void emit(int64_t seconds, int count, char *id_out) {
    emit_arg e = {.seconds = seconds, .count = count};
    assert_int_equal(pg_tx(pg_local(), emit_fn, &e), 0);
    if (id_out != NULL) memcpy(id_out, e.id, 37);
}

typedef struct entry {
    char sid[48];
    Orgmesh__Events__V1__Envelope *env;
    int64_t seconds;
    char type[96];
} entry;

/* All entries of a stream after `after` ("-" for all), decoded. */
static int read_stream(const char *key, entry *out, int max) {
    redisContext *r = it_redis();
    redisReply *rep = redisCommand(r, "XRANGE %s - +", key);
    int n = 0;
    for (size_t i = 0; rep != NULL && rep->type == REDIS_REPLY_ARRAY && i < rep->elements && n < max;
         i++) {
        redisReply *en = rep->element[i];
        redisReply *f = en->element[1];
        entry *e = &out[n];
        memset(e, 0, sizeof *e);
        snprintf(e->sid, sizeof e->sid, "%s", en->element[0]->str);
        for (size_t j = 0; j + 1 < f->elements; j += 2) {
            if (strcmp(f->element[j]->str, "e") == 0)
                e->env = orgmesh__events__v1__envelope__unpack(NULL, f->element[j + 1]->len,
                                                               (uint8_t *)f->element[j + 1]->str);
            if (strcmp(f->element[j]->str, "t") == 0)
                snprintf(e->type, sizeof e->type, "%s", f->element[j + 1]->str);
        }
        if (e->env != NULL && e->env->payload != NULL) {
            Google__Protobuf__Duration *d = google__protobuf__duration__unpack(
                NULL, e->env->payload->value.len, e->env->payload->value.data);
            if (d != NULL) e->seconds = d->seconds;
            google__protobuf__duration__free_unpacked(d, NULL);
        }
        n++;
    }
    freeReplyObject(rep);
    redisFree(r);
    return n;
}

static void free_entries(entry *e, int n) {
    for (int i = 0; i < n; i++)
        if (e[i].env != NULL) orgmesh__events__v1__envelope__free_unpacked(e[i].env, NULL);
}

/* Index of the entry whose envelope id is `id`, or -1. */
static int find_id(const entry *e, int n, const char *id) {
    for (int i = 0; i < n; i++)
        if (e[i].env != NULL && strcmp(e[i].env->id, id) == 0) return i;
    return -1;
}

static bool stream_has(const char *key, const char *id) {
    static entry e[2048];
    int n = read_stream(key, e, 2048);
    bool found = find_id(e, n, id) >= 0;
    free_entries(e, n);
    return found;
}

static bool wait_for_id(const char *key, const char *id, int timeout_ms) {
    int64_t deadline = it_ms() + timeout_ms;
    while (it_ms() < deadline) {
        if (stream_has(key, id)) return true;
        it_sleep_ms(20);
    }
    return false;
}

static long long xlen(const char *key) {
    redisContext *r = it_redis();
    redisReply *rep = redisCommand(r, "XLEN %s", key);
    long long n = rep != NULL && rep->type == REDIS_REPLY_INTEGER ? rep->integer : -1;
    freeReplyObject(rep);
    redisFree(r);
    return n;
}

static long long pending(const char *key, const char *group) {
    redisContext *r = it_redis();
    redisReply *rep = redisCommand(r, "XPENDING %s %s", key, group);
    long long n = rep != NULL && rep->type == REDIS_REPLY_ARRAY ? rep->element[0]->integer : -1;
    freeReplyObject(rep);
    redisFree(r);
    return n;
}

static char *xadd(const char *key, const void *e, size_t elen, char *sid_out) {
    redisContext *r = it_redis();
    redisReply *rep = redisCommand(r, "XADD %s * e %b t test", key, e, elen);
    assert_int_equal(rep->type, REDIS_REPLY_STRING);
    snprintf(sid_out, 48, "%s", rep->str);
    freeReplyObject(rep);
    redisFree(r);
    return sid_out;
}

static void envelope(int64_t seconds, uint8_t **buf, size_t *len, char *id) {
    Google__Protobuf__Duration d = GOOGLE__PROTOBUF__DURATION__INIT;
    d.seconds = seconds;
    evt_meta m = {.subject = "things/1", .version = 1};
    assert_int_equal(evt_envelope_pack("itsrc", &m, &d.base, buf, len, id), 0);
}

/* What consumers' handlers saw. */
typedef struct sink {
    atomic_int calls;
    atomic_llong first_call_ms;
    bool fail;
} sink;

static int sink_handler(pg_conn *tx, const evt_event *ev, void *arg) {
    sink *s = arg;
    long long zero = 0;
    atomic_compare_exchange_strong(&s->first_call_ms, &zero, (long long)it_ms());
    atomic_fetch_add(&s->calls, 1);
    Google__Protobuf__Duration *d =
        google__protobuf__duration__unpack(NULL, ev->payload_len, ev->payload);
    pg_params p = {0};
    pg_p_str(&p, ev->id);
    pg_p_i64(&p, d != NULL ? d->seconds : -1);
    pg_p_str(&p, ev->stream_id);
    google__protobuf__duration__free_unpacked(d, NULL);
    int rc = pg_exec(tx, "INSERT INTO effects (event_id, n, stream_id) VALUES ($1::uuid, $2, $3)",
                     &p, NULL);
    if (rc != 0) return rc;
    return s->fail ? OM_E_FAILED_PRECONDITION : 0;
}

static long long effects_of(const char *id) {
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM " SCHEMA ".effects WHERE event_id = '%.36s'", id);
    return it_sql_int(sql);
}

static bool wait_sql(const char *sql, long long want, int timeout_ms) {
    int64_t deadline = it_ms() + timeout_ms;
    while (it_ms() < deadline) {
        if (it_sql_int(sql) == want) return true;
        it_sleep_ms(20);
    }
    return false;
}

static bool wait_pending_zero(const char *key, const char *group, int timeout_ms) {
    int64_t deadline = it_ms() + timeout_ms;
    while (it_ms() < deadline) {
        if (pending(key, group) == 0) return true;
        it_sleep_ms(20);
    }
    return false;
}

/* ---- the outbox and the relay ---------------------------------------------- */

static void test_evt_outbox_event_reaches_stream(void **state) {
    char id[37];
    emit(42, 1, id);
    assert_true(wait_for_id(stream, id, 5000));
    static entry e[2048];
    int n = read_stream(stream, e, 2048);
    int i = find_id(e, n, id);
    assert_true(i >= 0);
    Orgmesh__Events__V1__Envelope *env = e[i].env;
    assert_string_equal(env->type, "google.protobuf.Duration");
    assert_string_equal(e[i].type, "google.protobuf.Duration");
    assert_string_equal(env->source, SCHEMA);
    assert_string_equal(env->subject, "things/7");
    assert_int_equal(env->aggregate_version, 3);
    assert_string_equal(env->actor, "rule:TEST-01");
    assert_string_equal(env->trace_id, "trace-1");
    assert_string_equal(env->payload->type_url, "type.googleapis.com/google.protobuf.Duration");
    assert_int_equal(e[i].seconds, 42);
    assert_non_null(env->time);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    assert_true(env->time->seconds <= now.tv_sec && env->time->seconds > now.tv_sec - 60);
    assert_int_equal(env->id[14], '4'); /* UUID v4 */
    free_entries(e, n);
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM " SCHEMA ".outbox WHERE event_id = '%s' AND relayed_at IS NOT NULL",
             id);
    assert_int_equal(it_sql_int(sql), 1);
}

/* NOTIFY wakes the relay at commit; without it the 200 ms poll would make
 * the average about 100 ms. */
static void test_evt_relay_latency_within_few_ms(void **state) {
    int64_t total = 0, worst = 0;
    const int rounds = 10;
    for (int k = 0; k < rounds; k++) {
        long long before = xlen(stream);
        int64_t t0 = it_ms();
        emit(500 + k, 1, NULL);
        int64_t committed = it_ms();
        while (xlen(stream) <= before && it_ms() - committed < 3000) it_sleep_ms(1);
        int64_t lat = it_ms() - committed;
        (void)t0;
        total += lat;
        if (lat > worst) worst = lat;
    }
    print_message("relay latency: mean %lld ms, worst %lld ms\n", (long long)(total / rounds),
                  (long long)worst);
    assert_true(total / rounds < 50);
}

static void test_evt_rolled_back_change_emits_nothing(void **state) {
    emit_arg bad = {.seconds = 900, .count = 1, .fail = true};
    assert_int_equal(pg_tx(pg_local(), emit_fn, &bad), OM_E_FAILED_PRECONDITION);
    char good[37];
    emit(901, 1, good);
    assert_true(wait_for_id(stream, good, 5000));
    assert_false(stream_has(stream, bad.id));
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM " SCHEMA ".outbox WHERE event_id = '%.36s'", bad.id);
    assert_int_equal(it_sql_int(sql), 0);
}

static void test_evt_emit_outside_transaction_refused(void **state) {
    Google__Protobuf__Duration d = GOOGLE__PROTOBUF__DURATION__INIT;
    evt_meta m = {.subject = "things/1", .version = 1};
    long long before = it_sql_int("SELECT count(*) FROM " SCHEMA ".outbox");
    assert_int_equal(evt_emit(pg_local(), &m, &d.base, NULL), OM_E_INTERNAL);
    assert_int_equal(it_sql_int("SELECT count(*) FROM " SCHEMA ".outbox"), before);
}

/* More than one relay batch (256), from many transactions and one big one:
 * the stream holds them in outbox order. */
static void test_evt_stream_order_follows_outbox_order(void **state) {
    char last[37];
    for (int i = 0; i < 295; i++) emit(10000 + i, 1, NULL);
    emit(10295, 10, last); /* one transaction, 10 events */
    assert_true(wait_for_id(stream, last, 10000));
    static entry e[4096];
    int n = read_stream(stream, e, 4096);
    int64_t expect = 10000;
    for (int i = 0; i < n; i++) {
        if (e[i].seconds < 10000 || e[i].seconds >= 20000) continue;
        assert_int_equal(e[i].seconds, expect);
        expect++;
    }
    assert_int_equal(expect, 10305);
    free_entries(e, n);
    assert_true(wait_sql("SELECT count(*) FROM " SCHEMA ".outbox WHERE relayed_at IS NULL", 0, 5000));
}

/* ---- consumers ---------------------------------------------------------------- */

static void test_evt_consumer_applies_relayed_events_once(void **state) {
    sink s = {0};
    evt_subscription sub = {.source = svc, .fn = sink_handler, .arg = &s};
    const char *group = it_unique("itgrp");
    assert_int_equal(evt_consumers_start(group, &sub, 1), 0);
    char ids[20][37];
    for (int i = 0; i < 20; i++) emit(30000 + i, 1, ids[i]);
    assert_true(wait_sql("SELECT count(*) FROM " SCHEMA ".effects WHERE n BETWEEN 30000 AND 30019",
                         20, 10000));
    for (int i = 0; i < 20; i++) assert_int_equal(effects_of(ids[i]), 1);
    assert_true(wait_pending_zero(stream, group, 5000));
    /* every entry of the stream was applied exactly once */
    assert_int_equal(it_sql_int("SELECT count(*) - count(DISTINCT event_id) FROM " SCHEMA ".effects"),
                     0);
    evt_consumers_stop();
}

static void test_evt_duplicate_delivery_applied_once(void **state) {
    char src[64], key[96], sid[3][48], id1[37], id2[37];
    snprintf(src, sizeof src, "%s", it_unique("itdup"));
    snprintf(key, sizeof key, "%s" EVT_STREAM_PREFIX "%s", cache_namespace(), src);
    uint8_t *b1, *b2;
    size_t l1, l2;
    envelope(40001, &b1, &l1, id1);
    envelope(40002, &b2, &l2, id2);
    xadd(key, b1, l1, sid[0]);
    xadd(key, b1, l1, sid[1]); /* the same event delivered twice */
    xadd(key, b2, l2, sid[2]);
    free(b1);
    free(b2);
    sink s = {0};
    evt_subscription sub = {.source = src, .fn = sink_handler, .arg = &s};
    const char *group = it_unique("itgrp");
    assert_int_equal(evt_consumers_start(group, &sub, 1), 0);
    assert_true(wait_sql("SELECT count(*) FROM " SCHEMA ".effects WHERE n IN (40001, 40002)", 2, 5000));
    assert_true(wait_pending_zero(key, group, 5000));
    it_sleep_ms(300);
    evt_consumers_stop();
    assert_int_equal(atomic_load(&s.calls), 2);
    assert_int_equal(effects_of(id1), 1);
    assert_int_equal(effects_of(id2), 1);
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM " SCHEMA ".applied_events WHERE event_id IN ('%.36s', '%.36s')",
             id1, id2);
    assert_int_equal(it_sql_int(sql), 2);
    assert_int_equal(pending(key, group), 0);
}

static void test_evt_dead_consumer_messages_claimed(void **state) {
    char src[64], key[96], sid[48], ids[3][37];
    snprintf(src, sizeof src, "%s", it_unique("itdead"));
    snprintf(key, sizeof key, "%s" EVT_STREAM_PREFIX "%s", cache_namespace(), src);
    const char *group = it_unique("itgrp");
    redisContext *r = it_redis();
    freeReplyObject(redisCommand(r, "XGROUP CREATE %s %s 0 MKSTREAM", key, group));
    for (int i = 0; i < 3; i++) {
        uint8_t *b;
        size_t l;
        envelope(50000 + i, &b, &l, ids[i]);
        xadd(key, b, l, sid);
        free(b);
    }
    /* a consumer reads them and dies without acknowledging */
    redisReply *rep = redisCommand(r, "XREADGROUP GROUP %s dead COUNT 10 STREAMS %s >", group, key);
    assert_int_equal(rep->type, REDIS_REPLY_ARRAY);
    assert_int_equal(rep->element[0]->element[1]->elements, 3);
    freeReplyObject(rep);
    int64_t died = it_ms();
    assert_int_equal(pending(key, group), 3);

    setenv("ORGMESH_EVT_CLAIM_IDLE_MS", "400", 1);
    sink s = {0};
    evt_subscription sub = {.source = src, .fn = sink_handler, .arg = &s};
    assert_int_equal(evt_consumers_start(group, &sub, 1), 0);
    unsetenv("ORGMESH_EVT_CLAIM_IDLE_MS");
    assert_true(wait_sql("SELECT count(*) FROM " SCHEMA ".effects WHERE n BETWEEN 50000 AND 50002",
                         3, 10000));
    assert_true(wait_pending_zero(key, group, 5000));
    evt_consumers_stop();
    /* not taken before they had been idle for the claim time */
    assert_true(atomic_load(&s.first_call_ms) - died >= 350);
    for (int i = 0; i < 3; i++) assert_int_equal(effects_of(ids[i]), 1);
    rep = redisCommand(r, "XPENDING %s %s - + 10 dead", key, group);
    assert_int_equal(rep->elements, 0);
    freeReplyObject(rep);
    redisFree(r);
}

static void test_evt_failing_handler_dead_lettered(void **state) {
    char src[64], key[96], dl[128], sid[48], id[37];
    snprintf(src, sizeof src, "%s", it_unique("itfail"));
    snprintf(key, sizeof key, "%s" EVT_STREAM_PREFIX "%s", cache_namespace(), src);
    const char *group = it_unique("itgrp");
    snprintf(dl, sizeof dl, "%s" EVT_DEADLETTER_PREFIX "%s", cache_namespace(), group);
    uint8_t *b;
    size_t l;
    envelope(60000, &b, &l, id);
    xadd(key, b, l, sid);

    setenv("ORGMESH_EVT_CLAIM_IDLE_MS", "100", 1);
    setenv("ORGMESH_EVT_MAX_DELIVERIES", "3", 1);
    sink s = {.fail = true};
    evt_subscription sub = {.source = src, .fn = sink_handler, .arg = &s};
    assert_int_equal(evt_consumers_start(group, &sub, 1), 0);
    unsetenv("ORGMESH_EVT_CLAIM_IDLE_MS");
    unsetenv("ORGMESH_EVT_MAX_DELIVERIES");
    int64_t deadline = it_ms() + 10000;
    while (xlen(dl) < 1 && it_ms() < deadline) it_sleep_ms(20);
    assert_true(wait_pending_zero(key, group, 3000));
    evt_consumers_stop();
    assert_int_equal(atomic_load(&s.calls), 3);
    assert_int_equal(effects_of(id), 0); /* every attempt rolled back */

    redisContext *r = it_redis();
    redisReply *rep = redisCommand(r, "XRANGE %s - +", dl);
    assert_int_equal(rep->elements, 1);
    redisReply *f = rep->element[0]->element[1];
    bool saw_e = false, saw_id = false, saw_reason = false, saw_stream = false;
    for (size_t j = 0; j + 1 < f->elements; j += 2) {
        const char *k = f->element[j]->str;
        redisReply *v = f->element[j + 1];
        if (strcmp(k, "e") == 0) saw_e = v->len == l && memcmp(v->str, b, l) == 0;
        if (strcmp(k, "id") == 0) saw_id = strcmp(v->str, sid) == 0;
        if (strcmp(k, "stream") == 0) saw_stream = strcmp(v->str, key) == 0;
        if (strcmp(k, "reason") == 0) saw_reason = strstr(v->str, "3 times") != NULL;
    }
    assert_true(saw_e);
    assert_true(saw_id);
    assert_true(saw_stream);
    assert_true(saw_reason);
    freeReplyObject(rep);
    freeReplyObject(redisCommand(r, "DEL %s", dl));
    redisFree(r);
    free(b);
}

static void test_evt_malformed_entry_dead_lettered(void **state) {
    char src[64], key[96], dl[128];
    snprintf(src, sizeof src, "%s", it_unique("itbad"));
    snprintf(key, sizeof key, "%s" EVT_STREAM_PREFIX "%s", cache_namespace(), src);
    const char *group = it_unique("itgrp");
    snprintf(dl, sizeof dl, "%s" EVT_DEADLETTER_PREFIX "%s", cache_namespace(), group);
    redisContext *r = it_redis();
    freeReplyObject(redisCommand(r, "XADD %s * e %s t x", key, "\xff\xff garbage"));
    freeReplyObject(redisCommand(r, "XADD %s * foo bar", key));
    sink s = {0};
    evt_subscription sub = {.source = src, .fn = sink_handler, .arg = &s};
    assert_int_equal(evt_consumers_start(group, &sub, 1), 0);
    int64_t deadline = it_ms() + 5000;
    while (xlen(dl) < 2 && it_ms() < deadline) it_sleep_ms(20);
    assert_true(wait_pending_zero(key, group, 3000));
    evt_consumers_stop();
    assert_int_equal(xlen(dl), 2);
    assert_int_equal(atomic_load(&s.calls), 0);
    redisReply *rep = redisCommand(r, "XRANGE %s - +", dl);
    for (size_t i = 0; i < rep->elements; i++) {
        redisReply *f = rep->element[i]->element[1];
        bool malformed = false;
        for (size_t j = 0; j + 1 < f->elements; j += 2)
            if (strcmp(f->element[j]->str, "reason") == 0)
                malformed = strncmp(f->element[j + 1]->str, "malformed", 9) == 0;
        assert_true(malformed);
    }
    freeReplyObject(rep);
    freeReplyObject(redisCommand(r, "DEL %s", dl));
    redisFree(r);
}

static void test_evt_consumers_and_relay_stop_promptly(void **state) {
    sink s = {0};
    evt_subscription subs[2] = {{.source = svc, .fn = sink_handler, .arg = &s},
                                {.source = it_unique("itidle"), .fn = sink_handler, .arg = &s}};
    assert_int_equal(evt_consumers_start(it_unique("itgrp"), subs, 2), 0);
    it_sleep_ms(300); /* blocked in XREADGROUP by now */
    int64_t t0 = it_ms();
    evt_consumers_stop();
    int64_t consumers_ms = it_ms() - t0;
    t0 = it_ms();
    evt_relay_stop();
    int64_t relay_ms = it_ms() - t0;
    print_message("stop: consumers %lld ms, relay %lld ms\n", (long long)consumers_ms,
                  (long long)relay_ms);
    /* Consumers block in XREADGROUP for at most 500 ms; the margin is for a
     * loaded CI machine. Both together must leave SIGTERM's 5 s budget room
     * for draining calls (ORGMESH_SHUTDOWN_GRACE_MS). */
    assert_true(consumers_ms < 2000);
    assert_true(relay_ms < 2000);
    assert_int_equal(evt_relay_start(svc), 0); /* for the group teardown */
}

static void test_evt_start_rejects_bad_arguments(void **state) {
    evt_subscription bad = {.source = "Not Valid", .fn = sink_handler};
    assert_int_equal(evt_consumers_start("grp", &bad, 1), OM_E_INVALID_ARGUMENT);
    evt_subscription nofn = {.source = "ok"};
    assert_int_equal(evt_consumers_start("grp", &nofn, 1), OM_E_INVALID_ARGUMENT);
    assert_int_equal(evt_relay_start(svc), OM_E_INTERNAL); /* already running */
}

static int setup(void **state) {
    it_sql("CREATE TABLE " SCHEMA ".effects (event_id uuid, n bigint, stream_id text)");
    snprintf(svc, sizeof svc, "%s", it_unique("itevt"));
    snprintf(stream, sizeof stream, "%s" EVT_STREAM_PREFIX "%s", cache_namespace(), svc);
    return evt_relay_start(svc);
}

static int teardown(void **state) {
    evt_relay_stop();
    pg_local_close();
    redisContext *r = it_redis();
    char pat[96];
    snprintf(pat, sizeof pat, "%sorgmesh:*:it*-%ld-*", cache_namespace(), (long)getpid());
    redisReply *keys = redisCommand(r, "KEYS %s", pat);
    for (size_t i = 0; keys != NULL && i < keys->elements; i++)
        freeReplyObject(redisCommand(r, "DEL %s", keys->element[i]->str));
    freeReplyObject(keys);
    redisFree(r);
    return 0;
}

int main(void) {
    it_init(SCHEMA);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_evt_outbox_event_reaches_stream),
        cmocka_unit_test(test_evt_relay_latency_within_few_ms),
        cmocka_unit_test(test_evt_rolled_back_change_emits_nothing),
        cmocka_unit_test(test_evt_emit_outside_transaction_refused),
        cmocka_unit_test(test_evt_stream_order_follows_outbox_order),
        cmocka_unit_test(test_evt_consumer_applies_relayed_events_once),
        cmocka_unit_test(test_evt_duplicate_delivery_applied_once),
        cmocka_unit_test(test_evt_dead_consumer_messages_claimed),
        cmocka_unit_test(test_evt_failing_handler_dead_lettered),
        cmocka_unit_test(test_evt_malformed_entry_dead_lettered),
        cmocka_unit_test(test_evt_start_rejects_bad_arguments),
        cmocka_unit_test(test_evt_consumers_and_relay_stop_promptly),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
