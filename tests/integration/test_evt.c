/* test_evt.c — common/evt.c against a real PostgreSQL and Redis (SPEC 2): the
 * outbox and its relay (content, latency, order, rollback), consumers (apply
 * once, duplicates, claiming from a dead consumer, dead letters), lanes
 * (subjects in order, in parallel; stop and claim; failures; PostgreSQL
 * away), and a prompt stop. Outages (Redis down, PostgreSQL restarted): test_outage.c. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "cache.h"
#include "evt.h"
#include "google/protobuf/duration.pb-c.h"
#include "it_util.h"
#include "metrics.h"
#include "om_err.h"
#include "orgmesh/events/v1/envelope.pb-c.h"
#include "trace.h"

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
    /* issue 19: the producer span's W3C context travels with the event */
    trace_ctx tc;
    assert_true(env->traceparent != NULL && trace_parse(env->traceparent, strlen(env->traceparent), &tc));
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

/* The value of a counter or gauge without labels in the exposition (0: absent). */
static long long metric_value(const char *name) {
    char *text = metrics_render();
    assert_non_null(text);
    long long v = 0;
    size_t n = strlen(name);
    for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (strncmp(p, name, n) == 0 && p[n] == ' ') v = strtoll(p + n + 1, NULL, 10);
    free(text);
    return v;
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
    long long dead0 = metric_value("orgmesh_evt_dead_letters_total");
    assert_int_equal(evt_consumers_start(group, &sub, 1), 0);
    unsetenv("ORGMESH_EVT_CLAIM_IDLE_MS");
    unsetenv("ORGMESH_EVT_MAX_DELIVERIES");
    int64_t deadline = it_ms() + 10000;
    while (xlen(dl) < 1 && it_ms() < deadline) it_sleep_ms(20);
    assert_true(wait_pending_zero(key, group, 3000));
    evt_consumers_stop();
    assert_int_equal(atomic_load(&s.calls), 3);
    assert_int_equal(metric_value("orgmesh_evt_dead_letters_total") - dead0, 1); /* issue 19 */
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

static int thread_count(void) {
    int n = 0;
    DIR *d = opendir("/proc/self/task");
    assert_non_null(d);
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

/* Issue 15: the relay, the readers and the lanes run on the process loop and
 * its worker pool — starting two subscriptions of 4 lanes each and applying
 * events through them starts no thread (before: 2 readers + 8 lanes). */
static void test_evt_consumers_and_relay_start_no_threads(void **state) {
    int before = thread_count();
    sink s = {0};
    evt_subscription subs[2] = {{.source = svc, .fn = sink_handler, .arg = &s, .lanes = 4},
                                {.source = it_unique("itidle"), .fn = sink_handler, .arg = &s,
                                 .lanes = 4}};
    assert_int_equal(evt_consumers_start(it_unique("itgrp"), subs, 2), 0);
    emit(960, 1, NULL);
    assert_true(wait_sql("SELECT count(*) FROM " SCHEMA ".effects WHERE n = 960", 1, 10000));
    int during = thread_count();
    print_message("threads: %d before the consumers, %d while they apply events\n", before, during);
    evt_consumers_stop();
    assert_int_equal(during, before);
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
    evt_subscription lanes = {.source = "ok", .fn = sink_handler, .lanes = EVT_LANES_MAX + 1};
    assert_int_equal(evt_consumers_start("grp", &lanes, 1), OM_E_INVALID_ARGUMENT);
    lanes.lanes = -1;
    assert_int_equal(evt_consumers_start("grp", &lanes, 1), OM_E_INVALID_ARGUMENT);
    assert_int_equal(evt_relay_start(svc), OM_E_INTERNAL); /* already running */
}

/* ---- lanes: events of different subjects in parallel ------------------------------ */

/* An envelope of `subject` at `version`, carrying `seconds`. */
static void envelope_of(const char *subject, int64_t version, int64_t seconds, uint8_t **buf,
                        size_t *len, char *id) {
    Google__Protobuf__Duration d = GOOGLE__PROTOBUF__DURATION__INIT;
    d.seconds = seconds;
    evt_meta m = {.subject = subject, .version = version};
    assert_int_equal(evt_envelope_pack("itsrc", &m, &d.base, buf, len, id), 0);
}

static void xadd_event(const char *key, const char *subject, int64_t version, int64_t seconds,
                       char *id) {
    uint8_t *b;
    size_t l;
    char sid[48];
    envelope_of(subject, version, seconds, &b, &l, id);
    xadd(key, b, l, sid);
    free(b);
}

#define LANE_SUBJECTS 8

/* What the handlers of a lanes test saw. Subjects are "lanes/<i>" (i below
 * LANE_SUBJECTS), or "lanes/gate". */
typedef struct lane_probe {
    atomic_int calls;
    atomic_int running, max_running;     /* handlers running at once */
    atomic_int active[LANE_SUBJECTS];    /* handlers of subject i running now */
    atomic_llong last[LANE_SUBJECTS];    /* last version of subject i applied */
    atomic_int overlaps;                 /* two handlers of one subject at once */
    atomic_int out_of_order;             /* a version not one above the last one */
    atomic_int others_started;           /* handlers of "lanes/<i>" started */
    atomic_bool gate_saw_other;          /* the gate's handler saw one start */
    int sleep_us_max;                    /* each handler sleeps 0..this */
    int fixed_sleep_ms;                  /* or exactly this */
    atomic_int fail_subject;             /* i + 1: that subject's handler fails */
    atomic_int timeout_subject;          /* i + 1: ... with a statement timeout */
} lane_probe;

static int lane_subject(const char *subject) {
    if (subject == NULL || strncmp(subject, "lanes/", 6) != 0) return -1;
    if (strcmp(subject + 6, "gate") == 0) return LANE_SUBJECTS;
    int i = atoi(subject + 6);
    return i >= 0 && i < LANE_SUBJECTS ? i : -1;
}

static int lane_handler(pg_conn *tx, const evt_event *ev, void *arg) {
    lane_probe *p = arg;
    atomic_fetch_add(&p->calls, 1);
    int now = atomic_fetch_add(&p->running, 1) + 1;
    for (int m = atomic_load(&p->max_running); now > m;)
        if (atomic_compare_exchange_weak(&p->max_running, &m, now)) break;
    int s = lane_subject(ev->subject);
    int rc = 0;
    if (s == LANE_SUBJECTS) {
        /* The gate: blocks until an event of another subject has started,
         * which only lanes make possible (it comes after the gate in the
         * stream). Times out rather than hang. */
        int64_t deadline = it_ms() + 5000;
        while (atomic_load(&p->others_started) == 0 && it_ms() < deadline) it_sleep_ms(1);
        atomic_store(&p->gate_saw_other, atomic_load(&p->others_started) > 0);
    } else if (s >= 0) {
        atomic_fetch_add(&p->others_started, 1);
        if (atomic_fetch_add(&p->active[s], 1) != 0) atomic_fetch_add(&p->overlaps, 1);
        if (atomic_load(&p->last[s]) != ev->version - 1) atomic_fetch_add(&p->out_of_order, 1);
        /* a random pause: events dealt to the wrong thread would overtake */
        if (p->fixed_sleep_ms > 0)
            it_sleep_ms(p->fixed_sleep_ms);
        else if (p->sleep_us_max > 0)
            usleep((useconds_t)(random() % p->sleep_us_max));
        if (atomic_load(&p->fail_subject) == s + 1) rc = OM_E_FAILED_PRECONDITION;
        if (atomic_load(&p->timeout_subject) == s + 1) {
            rc = pg_exec(tx, "SET LOCAL statement_timeout = 20", NULL, NULL);
            if (rc == 0) rc = pg_exec(tx, "SELECT pg_sleep(1)", NULL, NULL); /* 57014: UNAVAILABLE */
            if (rc == 0) rc = OM_E_INTERNAL;
        }
        if (rc == 0) atomic_store(&p->last[s], ev->version);
        atomic_fetch_sub(&p->active[s], 1);
    }
    if (rc == 0) {
        pg_params q = {0};
        pg_p_str(&q, ev->id);
        pg_p_i64(&q, ev->version);
        pg_p_str(&q, ev->stream_id);
        rc = pg_exec(tx, "INSERT INTO effects (event_id, n, stream_id) VALUES ($1::uuid, $2, $3)", &q,
                     NULL);
    }
    atomic_fetch_sub(&p->running, 1);
    return rc;
}

/* Effects of the events whose ids are in `ids_sql_list` ("'id','id'"). */
static long long effects_in(const char *ids_sql_list) {
    char *sql = malloc(strlen(ids_sql_list) + 128);
    assert_non_null(sql);
    sprintf(sql, "SELECT count(*) FROM " SCHEMA ".effects WHERE event_id IN (%s)", ids_sql_list);
    long long n = it_sql_int(sql);
    free(sql);
    return n;
}

/* "'id1','id2',..." of n ids (malloc'd). */
static char *id_list(char (*ids)[37], int n) {
    char *s = malloc((size_t)n * 40 + 1);
    assert_non_null(s);
    size_t o = 0;
    for (int i = 0; i < n; i++) o += (size_t)sprintf(s + o, "%s'%s'", i ? "," : "", ids[i]);
    s[o] = '\0';
    return s;
}

/* Every id applied exactly once, and nothing else of them. */
static void assert_each_once(char (*ids)[37], int n) {
    char *list = id_list(ids, n);
    char sql[64 + 40 * 400];
    assert_true(n <= 400);
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM (SELECT event_id FROM " SCHEMA ".effects WHERE event_id IN (%s)"
             " GROUP BY event_id HAVING count(*) = 1) x",
             list);
    assert_int_equal(it_sql_int(sql), n);
    snprintf(sql, sizeof sql, "SELECT count(*) FROM " SCHEMA ".effects WHERE event_id IN (%s)", list);
    assert_int_equal(it_sql_int(sql), n);
    free(list);
}

static bool wait_effects(char (*ids)[37], int n, long long want, int timeout_ms) {
    char *list = id_list(ids, n);
    char *sql = malloc(strlen(list) + 128);
    assert_non_null(sql);
    sprintf(sql, "SELECT count(*) FROM " SCHEMA ".effects WHERE event_id IN (%s)", list);
    bool ok = wait_sql(sql, want, timeout_ms);
    free(sql);
    free(list);
    return ok;
}

/* With lanes, a slow event does not hold up the events of other subjects
 * (the gate waits for one to start), and the events of one subject are
 * applied one at a time in stream order although every handler pauses at
 * random: dealt to lanes by anything but the subject, they would overtake
 * each other. */
static void test_evt_lanes_subjects_in_order_and_concurrent(void **state) {
    char src[64], key[96], gate[37];
    snprintf(src, sizeof src, "%s", it_unique("itlanes"));
    snprintf(key, sizeof key, "%s" EVT_STREAM_PREFIX "%s", cache_namespace(), src);
    enum { PER_SUBJECT = 25, N = LANE_SUBJECTS * PER_SUBJECT };
    static char ids[N][37];
    xadd_event(key, "lanes/gate", 1, 70000, gate);
    /* subjects mixed at random (fixed seed), each in version order */
    int next[LANE_SUBJECTS] = {0};
    unsigned seed = 42;
    for (int i = 0; i < N; i++) {
        int s = rand_r(&seed) % LANE_SUBJECTS;
        while (next[s] == PER_SUBJECT) s = (s + 1) % LANE_SUBJECTS;
        char subject[32];
        snprintf(subject, sizeof subject, "lanes/%d", s);
        next[s]++;
        xadd_event(key, subject, next[s], 70001 + i, ids[i]);
    }
    static lane_probe p;
    memset(&p, 0, sizeof p);
    p.sleep_us_max = 3000;
    evt_subscription sub = {.source = src, .fn = lane_handler, .arg = &p, .lanes = 4};
    const char *group = it_unique("itgrp");
    assert_int_equal(evt_consumers_start(group, &sub, 1), 0);
    bool done = wait_effects(ids, N, N, 20000);
    assert_true(wait_pending_zero(key, group, 5000));
    evt_consumers_stop();
    assert_true(done);
    print_message("lanes: %d handlers at most at once; gate saw another subject start: %d\n",
                  atomic_load(&p.max_running), atomic_load(&p.gate_saw_other));
    assert_true(atomic_load(&p.gate_saw_other));
    assert_true(atomic_load(&p.max_running) >= 2);
    assert_int_equal(atomic_load(&p.overlaps), 0);
    assert_int_equal(atomic_load(&p.out_of_order), 0);
    for (int s = 0; s < LANE_SUBJECTS; s++) assert_int_equal(atomic_load(&p.last[s]), PER_SUBJECT);
    assert_int_equal(effects_of(gate), 1);
    assert_each_once(ids, N);
}

/* The same stream with one lane: the gate cannot see another subject start
 * (the proof above can fail), and order holds as before. */
static void test_evt_one_lane_applies_in_stream_order(void **state) {
    char src[64], key[96], gate[37];
    snprintf(src, sizeof src, "%s", it_unique("itone"));
    snprintf(key, sizeof key, "%s" EVT_STREAM_PREFIX "%s", cache_namespace(), src);
    static char ids[LANE_SUBJECTS * 3][37];
    xadd_event(key, "lanes/gate", 1, 71000, gate);
    for (int v = 1; v <= 3; v++)
        for (int s = 0; s < LANE_SUBJECTS; s++) {
            char subject[32];
            snprintf(subject, sizeof subject, "lanes/%d", s);
            xadd_event(key, subject, v, 71001, ids[(v - 1) * LANE_SUBJECTS + s]);
        }
    static lane_probe p;
    memset(&p, 0, sizeof p);
    evt_subscription sub = {.source = src, .fn = lane_handler, .arg = &p, .lanes = 1};
    const char *group = it_unique("itgrp");
    /* ORGMESH_EVT_LANES (when a CTest entry sets it) would override .lanes */
    char *saved = getenv("ORGMESH_EVT_LANES") ? strdup(getenv("ORGMESH_EVT_LANES")) : NULL;
    unsetenv("ORGMESH_EVT_LANES");
    assert_int_equal(evt_consumers_start(group, &sub, 1), 0);
    if (saved != NULL) setenv("ORGMESH_EVT_LANES", saved, 1);
    free(saved);
    bool done = wait_effects(ids, LANE_SUBJECTS * 3, LANE_SUBJECTS * 3, 20000);
    evt_consumers_stop();
    assert_true(done);
    assert_false(atomic_load(&p.gate_saw_other));
    assert_int_equal(atomic_load(&p.max_running), 1);
    assert_int_equal(atomic_load(&p.out_of_order), 0);
    assert_each_once(ids, LANE_SUBJECTS * 3);
}

/* Stopped in the middle of a stream while its lanes hold entries that were
 * delivered but not applied: the stop is prompt, what was applied was
 * acknowledged, the rest stays pending, and a new consumer (another name,
 * as after a restart) claims it: every event applied exactly once. */
static void test_evt_lanes_stop_mid_stream_restart_claims_each_once(void **state) {
    char src[64], key[96];
    snprintf(src, sizeof src, "%s", it_unique("itstop"));
    snprintf(key, sizeof key, "%s" EVT_STREAM_PREFIX "%s", cache_namespace(), src);
    enum { N = 80 };
    static char ids[N][37];
    for (int i = 0; i < N; i++) {
        char subject[32];
        snprintf(subject, sizeof subject, "lanes/%d", i % LANE_SUBJECTS);
        xadd_event(key, subject, i / LANE_SUBJECTS + 1, 72000 + i, ids[i]);
    }
    static lane_probe p;
    memset(&p, 0, sizeof p);
    p.fixed_sleep_ms = 100; /* 4 lanes: about 40 events/s */
    evt_subscription sub = {.source = src, .fn = lane_handler, .arg = &p, .lanes = 4};
    const char *group = it_unique("itgrp");
    setenv("ORGMESH_EVT_CLAIM_IDLE_MS", "300", 1);
    assert_int_equal(evt_consumers_start(group, &sub, 1), 0);
    int64_t deadline = it_ms() + 10000;
    char *list = id_list(ids, N);
    while (effects_in(list) < 12 && it_ms() < deadline) it_sleep_ms(10);
    int64_t t0 = it_ms();
    evt_consumers_stop();
    int64_t stop_ms = it_ms() - t0;
    long long applied = effects_in(list);
    long long left = pending(key, group);
    print_message("lanes stop: %lld ms; %lld applied, %lld delivered and pending\n",
                  (long long)stop_ms, applied, left);
    assert_true(stop_ms < 2000);
    assert_true(applied >= 12 && applied < N);
    assert_true(left > 0); /* the restart has to claim them */
    /* Everything applied was acknowledged: what is pending was never applied. */
    redisContext *r = it_redis();
    redisReply *rep = redisCommand(r, "XPENDING %s %s - + 100", key, group);
    assert_int_equal(rep->type, REDIS_REPLY_ARRAY);
    assert_int_equal((long long)rep->elements, left);
    /* waiting in a lane longer than the claim time, they were still not
     * taken over by our own claims: each was delivered once */
    for (size_t i = 0; i < rep->elements; i++) assert_int_equal(rep->element[i]->element[3]->integer, 1);
    freeReplyObject(rep);
    redisFree(r);
    assert_true(applied + left <= N);

    int calls_before = atomic_load(&p.calls);
    p.fixed_sleep_ms = 5;
    assert_int_equal(evt_consumers_start(group, &sub, 1), 0);
    unsetenv("ORGMESH_EVT_CLAIM_IDLE_MS");
    bool done = wait_effects(ids, N, N, 20000);
    assert_true(wait_pending_zero(key, group, 5000));
    evt_consumers_stop();
    assert_true(done);
    assert_each_once(ids, N);
    /* each event's handler ran once: nothing applied twice and rolled back */
    assert_int_equal(atomic_load(&p.calls), N);
    assert_true(atomic_load(&p.calls) - calls_before == N - applied);
    assert_int_equal(atomic_load(&p.overlaps), 0);
    free(list);
}

/* Entries that wait in a lane longer than the claim time are not taken
 * over by the consumer's own claims: with one delivery allowed, a claim
 * would dead-letter them although they are about to be applied. */
static void test_evt_lanes_waiting_entries_not_claimed_by_own_reader(void **state) {
    char src[64], key[96], dl[128];
    snprintf(src, sizeof src, "%s", it_unique("itwait"));
    snprintf(key, sizeof key, "%s" EVT_STREAM_PREFIX "%s", cache_namespace(), src);
    const char *group = it_unique("itgrp");
    snprintf(dl, sizeof dl, "%s" EVT_DEADLETTER_PREFIX "%s", cache_namespace(), group);
    enum { N = 24 };
    static char ids[N][37];
    for (int i = 0; i < N; i++) {
        char subject[32];
        snprintf(subject, sizeof subject, "lanes/%d", i % 2);
        xadd_event(key, subject, i / 2 + 1, 75000 + i, ids[i]);
    }
    static lane_probe p;
    memset(&p, 0, sizeof p);
    p.fixed_sleep_ms = 60; /* the last of a lane's 8 waits about 400 ms */
    evt_subscription sub = {.source = src, .fn = lane_handler, .arg = &p, .lanes = 2};
    setenv("ORGMESH_EVT_CLAIM_IDLE_MS", "150", 1);
    setenv("ORGMESH_EVT_MAX_DELIVERIES", "1", 1);
    assert_int_equal(evt_consumers_start(group, &sub, 1), 0);
    unsetenv("ORGMESH_EVT_CLAIM_IDLE_MS");
    unsetenv("ORGMESH_EVT_MAX_DELIVERIES");
    bool done = wait_effects(ids, N, N, 15000);
    assert_true(wait_pending_zero(key, group, 5000));
    evt_consumers_stop();
    assert_true(done);
    assert_int_equal(xlen(dl), 0);
    assert_each_once(ids, N);
    assert_int_equal(atomic_load(&p.calls), N);
}

/* An event that keeps failing in one lane is retried, then dead-lettered,
 * while the other subjects flow; nothing else is applied twice. */
static void test_evt_lanes_failing_event_dead_lettered_others_applied(void **state) {
    char src[64], key[96], dl[128], bad[37];
    snprintf(src, sizeof src, "%s", it_unique("itlfail"));
    snprintf(key, sizeof key, "%s" EVT_STREAM_PREFIX "%s", cache_namespace(), src);
    const char *group = it_unique("itgrp");
    snprintf(dl, sizeof dl, "%s" EVT_DEADLETTER_PREFIX "%s", cache_namespace(), group);
    enum { N = 28 };
    static char ids[N][37];
    xadd_event(key, "lanes/7", 1, 73000, bad);
    for (int i = 0; i < N; i++) {
        char subject[32];
        snprintf(subject, sizeof subject, "lanes/%d", i % 7);
        xadd_event(key, subject, i / 7 + 1, 73001 + i, ids[i]);
    }
    static lane_probe p;
    memset(&p, 0, sizeof p);
    atomic_store(&p.fail_subject, 7 + 1);
    evt_subscription sub = {.source = src, .fn = lane_handler, .arg = &p, .lanes = 4};
    setenv("ORGMESH_EVT_CLAIM_IDLE_MS", "100", 1);
    setenv("ORGMESH_EVT_MAX_DELIVERIES", "3", 1);
    assert_int_equal(evt_consumers_start(group, &sub, 1), 0);
    unsetenv("ORGMESH_EVT_CLAIM_IDLE_MS");
    unsetenv("ORGMESH_EVT_MAX_DELIVERIES");
    bool done = wait_effects(ids, N, N, 10000);
    int64_t deadline = it_ms() + 10000;
    while (xlen(dl) < 1 && it_ms() < deadline) it_sleep_ms(20);
    assert_true(wait_pending_zero(key, group, 3000));
    evt_consumers_stop();
    assert_true(done);
    assert_int_equal(xlen(dl), 1);
    assert_int_equal(effects_of(bad), 0);
    assert_each_once(ids, N);
    assert_int_equal(atomic_load(&p.calls), N + 3); /* the bad one: 3 deliveries */
    redisContext *r = it_redis();
    freeReplyObject(redisCommand(r, "DEL %s", dl));
    redisFree(r);
}

/* An event whose work times out in PostgreSQL (PostgreSQL itself answers)
 * is not mistaken for an outage and retried in place for ever: it stays
 * pending, its deliveries are counted, and it is dead-lettered. */
static void test_evt_lanes_event_timing_out_in_postgresql_dead_lettered(void **state) {
    char src[64], key[96], dl[128], bad[37], good[37];
    snprintf(src, sizeof src, "%s", it_unique("itlslow"));
    snprintf(key, sizeof key, "%s" EVT_STREAM_PREFIX "%s", cache_namespace(), src);
    const char *group = it_unique("itgrp");
    snprintf(dl, sizeof dl, "%s" EVT_DEADLETTER_PREFIX "%s", cache_namespace(), group);
    xadd_event(key, "lanes/6", 1, 76000, bad);
    xadd_event(key, "lanes/2", 1, 76001, good);
    static lane_probe p;
    memset(&p, 0, sizeof p);
    atomic_store(&p.timeout_subject, 6 + 1);
    evt_subscription sub = {.source = src, .fn = lane_handler, .arg = &p, .lanes = 2};
    setenv("ORGMESH_EVT_CLAIM_IDLE_MS", "100", 1);
    setenv("ORGMESH_EVT_MAX_DELIVERIES", "2", 1);
    assert_int_equal(evt_consumers_start(group, &sub, 1), 0);
    unsetenv("ORGMESH_EVT_CLAIM_IDLE_MS");
    unsetenv("ORGMESH_EVT_MAX_DELIVERIES");
    int64_t deadline = it_ms() + 10000;
    while (xlen(dl) < 1 && it_ms() < deadline) it_sleep_ms(20);
    assert_true(wait_pending_zero(key, group, 3000));
    evt_consumers_stop();
    assert_int_equal(xlen(dl), 1);
    assert_int_equal(effects_of(bad), 0);
    assert_int_equal(effects_of(good), 1);
    /* two deliveries; pg_tx may not retry a timeout itself */
    assert_int_equal(atomic_load(&p.calls), 1 + 2);
    redisContext *r = it_redis();
    freeReplyObject(redisCommand(r, "DEL %s", dl));
    redisFree(r);
}

/* PostgreSQL goes away while lanes hold entries (this database refuses new
 * connections and its sessions are ended): no entry is lost, the reader
 * claims nothing meanwhile (a claim counts as a delivery), the process does
 * not spin, and everything is applied once when PostgreSQL is back. */
/* The outage is made from another database (PostgreSQL refuses to lock
 * out the current one): a raw libpq connection to `postgres`. */
static PGconn *outage_admin;
static char outage_db[128];
static redisContext *outage_rc; /* freed by the teardown, also after a failed assertion */

static void admin_sql(const char *sql) {
    PGresult *r = PQexec(outage_admin, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK)
        print_error("%s: %s\n", sql, PQerrorMessage(outage_admin));
    assert_true(PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK);
    PQclear(r);
}

static void db_connections(bool allow) {
    char sql[256];
    snprintf(sql, sizeof sql, "ALTER DATABASE \"%s\" ALLOW_CONNECTIONS %s", outage_db,
             allow ? "true" : "false");
    admin_sql(sql);
    if (!allow) {
        snprintf(sql, sizeof sql,
                 "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '%s'",
                 outage_db);
        admin_sql(sql);
    }
}

static int outage_teardown(void **state) {
    if (outage_admin != NULL) {
        db_connections(true);
        PQfinish(outage_admin);
        outage_admin = NULL;
    }
    evt_consumers_stop();
    if (outage_rc != NULL) redisFree(outage_rc);
    outage_rc = NULL;
    return 0;
}

/* Add entries in one MULTI/EXEC: a reader blocked in XREADGROUP gets them
 * all in one reply (Redis serves blocked readers after EXEC). */
static void xadd_events_atomic(const char *key, int from, int to, char (*ids)[37]) {
    redisContext *r = it_redis();
    uint8_t *bufs[64];
    size_t lens[64];
    assert_true(to - from <= 64);
    redisAppendCommand(r, "MULTI");
    for (int i = from; i < to; i++) {
        char subject[32];
        snprintf(subject, sizeof subject, "lanes/%d", i % 4);
        envelope_of(subject, i, 74000 + i, &bufs[i - from], &lens[i - from], ids[i]);
        redisAppendCommand(r, "XADD %s * e %b t test", key, bufs[i - from], lens[i - from]);
    }
    redisAppendCommand(r, "EXEC");
    bool ok = true;
    int nrep = to - from + 2; /* MULTI, each XADD (QUEUED), EXEC */
    for (int k = 0; k < nrep; k++) {
        redisReply *rep = NULL;
        if (redisGetReply(r, (void **)&rep) != REDIS_OK || rep == NULL ||
            rep->type == REDIS_REPLY_ERROR)
            ok = false;
        if (k == nrep - 1 && (rep == NULL || rep->type != REDIS_REPLY_ARRAY)) ok = false;
        freeReplyObject(rep);
    }
    for (int i = from; i < to; i++) free(bufs[i - from]);
    redisFree(r);
    assert_true(ok);
}

/* The group's only consumer other than "dead": how many entries it has
 * pending and how long ago it last asked for entries (XINFO CONSUMERS). */
static bool our_consumer(const char *key, const char *group, long long *pending_out,
                         long long *idle_out) {
    redisContext *r = it_redis();
    redisReply *rep = redisCommand(r, "XINFO CONSUMERS %s %s", key, group);
    bool found = false;
    for (size_t i = 0; rep != NULL && rep->type == REDIS_REPLY_ARRAY && i < rep->elements; i++) {
        const redisReply *c = rep->element[i];
        bool dead = false;
        long long pend = -1, idle = -1;
        for (size_t j = 0; j + 1 < c->elements; j += 2) {
            const char *k = c->element[j]->str;
            const redisReply *v = c->element[j + 1];
            if (strcmp(k, "name") == 0) dead = strcmp(v->str, "dead") == 0;
            if (strcmp(k, "pending") == 0) pend = v->integer;
            if (strcmp(k, "idle") == 0) idle = v->integer;
        }
        if (dead) continue;
        *pending_out = pend;
        *idle_out = idle;
        found = true;
    }
    freeReplyObject(rep);
    redisFree(r);
    return found;
}

/* Wait until our reader holds `n` entries and has not asked Redis for more
 * for `quiet_ms` (longer than its XREADGROUP BLOCK): it has paused. */
static bool wait_reader_paused_holding(const char *key, const char *group, long long n,
                                       long long quiet_ms, int timeout_ms) {
    int64_t deadline = it_ms() + timeout_ms;
    while (it_ms() < deadline) {
        long long pend = -1, idle = -1;
        if (our_consumer(key, group, &pend, &idle) && pend == n && idle >= quiet_ms) return true;
        it_sleep_ms(20);
    }
    return false;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static void test_evt_lanes_pg_outage_no_loss_no_claims_no_spin(void **state) {
    char src[64], key[96];
    snprintf(src, sizeof src, "%s", it_unique("itlpg"));
    snprintf(key, sizeof key, "%s" EVT_STREAM_PREFIX "%s", cache_namespace(), src);
    const char *group = it_unique("itgrp");
    pg_res *r = NULL;
    assert_int_equal(pg_exec(pg_local(), "SELECT current_database()", NULL, &r), 0);
    snprintf(outage_db, sizeof outage_db, "%s", pg_str(r, 0, 0));
    pg_free(r);
    const char *keys[] = {"dbname", "dbname", NULL};
    const char *vals[] = {getenv("ORGMESH_PG_URL"), "postgres", NULL};
    outage_admin = PQconnectdbParams(keys, vals, 1);
    assert_true(PQstatus(outage_admin) == CONNECTION_OK);

    enum { N = 30 };
    static char ids[N][37];
    static lane_probe p;
    memset(&p, 0, sizeof p);
    evt_subscription sub = {.source = src, .fn = lane_handler, .arg = &p, .lanes = 4};
    setenv("ORGMESH_EVT_CLAIM_IDLE_MS", "300", 1);
    assert_int_equal(evt_consumers_start(group, &sub, 1), 0);
    unsetenv("ORGMESH_EVT_CLAIM_IDLE_MS");
    for (int i = 0; i < 10; i++) xadd_event(key, "lanes/1", i + 1, 74000 + i, ids[i]);
    assert_true(wait_effects(ids, 10, 10, 10000)); /* the lanes are connected */

    db_connections(false);
    /* the lanes get these, lose their connections, and wait for PostgreSQL */
    xadd_events_atomic(key, 10, 20, ids);
    /* The reader got all ten in one read (not some, pausing before the
     * rest, which the dead consumer below would then read), the lanes
     * noticed, and the reader paused: no XREADGROUP for over its BLOCK. */
    assert_true(wait_reader_paused_holding(key, group, 10, 1200, 10000));
    /* a consumer that dies with entries (read by hand): ours must not claim
     * them while PostgreSQL is away, though they are idle past the claim time */
    for (int i = 20; i < N; i++) xadd_event(key, "lanes/5", i, 74000 + i, ids[i]);
    redisContext *rc = outage_rc = it_redis();
    redisReply *rep = redisCommand(rc, "XREADGROUP GROUP %s dead COUNT 100 STREAMS %s >", group, key);
    assert_int_equal(rep->type, REDIS_REPLY_ARRAY);
    assert_int_equal(rep->element[0]->element[1]->elements, N - 20);
    freeReplyObject(rep);
    double cpu0 = cpu_seconds();
    it_sleep_ms(2000);
    double cpu = cpu_seconds() - cpu0;
    rep = redisCommand(rc, "XPENDING %s %s - + 100 dead", key, group);
    assert_int_equal(rep->type, REDIS_REPLY_ARRAY);
    size_t still_dead = rep->elements;
    long long max_deliveries = 0;
    for (size_t i = 0; i < rep->elements; i++)
        if (rep->element[i]->element[3]->integer > max_deliveries)
            max_deliveries = rep->element[i]->element[3]->integer;
    freeReplyObject(rep);
    print_message("PostgreSQL away 2 s: %.3f s of CPU; %zu entries of the dead consumer unclaimed\n",
                  cpu, still_dead);
    assert_int_equal(still_dead, N - 20);
    assert_int_equal(max_deliveries, 1);
    assert_true(cpu < 0.5);

    db_connections(true);
    PQfinish(outage_admin);
    outage_admin = NULL;
    assert_true(wait_effects(ids, N, N, 15000));
    assert_true(wait_pending_zero(key, group, 5000));
    evt_consumers_stop();
    assert_each_once(ids, N);
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
    it_loop_start(); /* the relay runs on the process loop */
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
        cmocka_unit_test(test_evt_lanes_subjects_in_order_and_concurrent),
        cmocka_unit_test(test_evt_one_lane_applies_in_stream_order),
        cmocka_unit_test(test_evt_lanes_stop_mid_stream_restart_claims_each_once),
        cmocka_unit_test(test_evt_lanes_waiting_entries_not_claimed_by_own_reader),
        cmocka_unit_test(test_evt_lanes_failing_event_dead_lettered_others_applied),
        cmocka_unit_test(test_evt_lanes_event_timing_out_in_postgresql_dead_lettered),
        cmocka_unit_test_teardown(test_evt_lanes_pg_outage_no_loss_no_claims_no_spin, outage_teardown),
        cmocka_unit_test(test_evt_start_rejects_bad_arguments),
        cmocka_unit_test(test_evt_consumers_and_relay_start_no_threads),
        cmocka_unit_test(test_evt_consumers_and_relay_stop_promptly),
    };
    int failed = cmocka_run_group_tests(tests, setup, teardown);
    evt_relay_stop();
    it_loop_stop();
    return failed;
}
