/* test_idem.c — common/idem.c against a real PostgreSQL (SPEC 8 request_id):
 * a repeat returns the first reply, a reused id with another request is
 * refused, concurrent first uses act once, expired and failed ones do not
 * count. The "mutation" inserts a row into `things` and replies with its id. */
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

#include "google/protobuf/duration.pb-c.h"
#include "google/protobuf/timestamp.pb-c.h"
#include "idem.h"
#include "it_util.h"
#include "om_err.h"

#define SCHEMA "it_idem"
#define METHOD "/orgmesh.things.v1.Things/CreateThing"

static atomic_int acted; /* how many times a mutation really ran */

typedef struct create_call {
    const om_actor *actor;
    const char *method;
    const char *request_id;
    int64_t value;       /* the request: Timestamp{seconds = value} */
    bool fail_after;     /* the mutation fails after acting (rolls back) */
    int sleep_ms;        /* hold the claim this long (concurrency test) */
    int64_t reply;       /* the reply: Duration{seconds = new thing id} */
    bool replayed;
} create_call;

static int create_fn(pg_conn *c, void *arg) {
    create_call *cc = arg;
    Google__Protobuf__Timestamp req = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
    req.seconds = cc->value;
    idem_key key;
    int rc = idem_key_init(&key, cc->actor, cc->method, cc->request_id, &req.base);
    if (rc != 0) return rc;
    ProtobufCMessage *stored = NULL;
    rc = idem_check(c, &key, &google__protobuf__duration__descriptor, NULL, &stored);
    if (rc < 0) return rc;
    if (rc == 1) {
        cc->reply = ((Google__Protobuf__Duration *)stored)->seconds;
        cc->replayed = true;
        protobuf_c_message_free_unpacked(stored, NULL);
        return 0;
    }
    cc->replayed = false;
    if (cc->sleep_ms > 0) {
        char sql[64];
        snprintf(sql, sizeof sql, "SELECT pg_sleep(%g)", cc->sleep_ms / 1000.0);
        pg_exec(c, sql, NULL, NULL);
    }
    pg_params p = {0};
    pg_p_i64(&p, cc->value);
    pg_res *r = NULL;
    rc = pg_exec(c, "INSERT INTO things (value) VALUES ($1) RETURNING id", &p, &r);
    if (rc != 0) return rc;
    Google__Protobuf__Duration resp = GOOGLE__PROTOBUF__DURATION__INIT;
    resp.seconds = pg_i64(r, 0, 0);
    pg_free(r);
    if (cc->fail_after) return OM_E_FAILED_PRECONDITION;
    rc = idem_store(c, &key, &resp.base);
    if (rc != 0) return rc;
    cc->reply = resp.seconds;
    atomic_fetch_add(&acted, 1);
    return 0;
}

static const om_actor alice = {.user_id = 1001};
static const om_actor bob = {.user_id = 1002};

static int create(create_call *cc) {
    pg_conn *c = pg_local();
    assert_non_null(c);
    return pg_tx(c, create_fn, cc);
}

static long long things(void) { return it_sql_int("SELECT count(*) FROM " SCHEMA ".things"); }

static int reset(void **state) {
    it_sql("TRUNCATE " SCHEMA ".things, " SCHEMA ".idempotency");
    atomic_store(&acted, 0);
    return 0;
}

static void test_idem_repeat_returns_first_result(void **state) {
    create_call a = {.actor = &alice, .method = METHOD, .request_id = "req-1", .value = 7};
    assert_int_equal(create(&a), 0);
    assert_false(a.replayed);
    create_call b = a;
    b.reply = 0;
    assert_int_equal(create(&b), 0);
    assert_true(b.replayed);
    assert_int_equal(b.reply, a.reply);
    assert_int_equal(atomic_load(&acted), 1);
    assert_int_equal(things(), 1);
}

static void test_idem_same_id_different_request_rejected(void **state) {
    create_call a = {.actor = &alice, .method = METHOD, .request_id = "req-2", .value = 7};
    assert_int_equal(create(&a), 0);
    create_call b = a;
    b.value = 8;
    assert_int_equal(create(&b), OM_E_REQUEST_ID_REUSED);
    assert_int_equal(things(), 1);
    /* the first one still replays */
    create_call c = a;
    assert_int_equal(create(&c), 0);
    assert_true(c.replayed);
}

static void test_idem_other_actor_or_method_is_independent(void **state) {
    create_call a = {.actor = &alice, .method = METHOD, .request_id = "req-3", .value = 1};
    create_call b = {.actor = &bob, .method = METHOD, .request_id = "req-3", .value = 1};
    create_call c = {.actor = &alice, .method = "/x.Y/Other", .request_id = "req-3", .value = 1};
    om_actor svc = {0};
    snprintf(svc.service, sizeof svc.service, "partners");
    create_call d = {.actor = &svc, .method = METHOD, .request_id = "req-3", .value = 1};
    assert_int_equal(create(&a), 0);
    assert_int_equal(create(&b), 0);
    assert_int_equal(create(&c), 0);
    assert_int_equal(create(&d), 0);
    assert_false(b.replayed || c.replayed || d.replayed);
    assert_int_equal(things(), 4);
    assert_int_equal(it_sql_int("SELECT count(*) FROM " SCHEMA ".idempotency"
                                " WHERE actor = 'service:partners'"),
                     1);
}

static void test_idem_without_request_id_always_acts(void **state) {
    create_call a = {.actor = &alice, .method = METHOD, .request_id = "", .value = 1};
    create_call b = {.actor = &alice, .method = METHOD, .request_id = NULL, .value = 1};
    assert_int_equal(create(&a), 0);
    assert_int_equal(create(&a), 0);
    assert_int_equal(create(&b), 0);
    assert_int_equal(things(), 3);
    assert_int_equal(it_sql_int("SELECT count(*) FROM " SCHEMA ".idempotency"), 0);
}

static void test_idem_expired_entry_does_not_count(void **state) {
    create_call a = {.actor = &alice, .method = METHOD, .request_id = "req-old", .value = 5};
    assert_int_equal(create(&a), 0);
    it_sql("UPDATE " SCHEMA ".idempotency SET created_at = now() - interval '25 hours'");
    /* even a different request may reuse an expired id */
    create_call b = a;
    b.value = 6;
    assert_int_equal(create(&b), 0);
    assert_false(b.replayed);
    assert_int_not_equal(b.reply, a.reply);
    create_call c = b;
    assert_int_equal(create(&c), 0);
    assert_true(c.replayed);
    assert_int_equal(c.reply, b.reply);
    assert_int_equal(things(), 2);
}

static void test_idem_failed_mutation_is_not_remembered(void **state) {
    create_call a = {.actor = &alice, .method = METHOD, .request_id = "req-f", .value = 3,
                     .fail_after = true};
    assert_int_equal(create(&a), OM_E_FAILED_PRECONDITION);
    assert_int_equal(things(), 0);
    assert_int_equal(it_sql_int("SELECT count(*) FROM " SCHEMA ".idempotency"), 0);
    a.fail_after = false;
    assert_int_equal(create(&a), 0);
    assert_false(a.replayed);
    assert_int_equal(things(), 1);
}

typedef struct racer {
    create_call call;
    pthread_barrier_t *start;
    int rc;
} racer;

static void *race_thread(void *arg) {
    racer *r = arg;
    pg_conn *c = pg_local();
    if (c == NULL) {
        r->rc = OM_E_UNAVAILABLE;
        return NULL;
    }
    pthread_barrier_wait(r->start);
    r->rc = pg_tx(c, create_fn, &r->call);
    pg_local_close();
    return NULL;
}

/* 8 identical requests at once: one acts, all get its reply. The winner
 * holds its claim for 200 ms so the others really overlap with it. */
static void test_idem_concurrent_same_id_acts_once(void **state) {
    enum { N = 8 };
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, N);
    racer r[N];
    pthread_t th[N];
    for (int i = 0; i < N; i++) {
        r[i] = (racer){.call = {.actor = &alice, .method = METHOD, .request_id = "req-race",
                                .value = 99, .sleep_ms = 200},
                       .start = &start};
        pthread_create(&th[i], NULL, race_thread, &r[i]);
    }
    for (int i = 0; i < N; i++) pthread_join(th[i], NULL);
    pthread_barrier_destroy(&start);
    int replayed = 0;
    for (int i = 0; i < N; i++) {
        assert_int_equal(r[i].rc, 0);
        assert_int_equal(r[i].call.reply, r[0].call.reply);
        replayed += r[i].call.replayed;
    }
    assert_int_equal(replayed, N - 1);
    assert_int_equal(atomic_load(&acted), 1);
    assert_int_equal(things(), 1);
}

static void test_idem_request_id_too_long_rejected(void **state) {
    char id[IDEM_MAX_REQUEST_ID + 2];
    memset(id, 'x', sizeof id - 1);
    id[sizeof id - 1] = '\0';
    create_call a = {.actor = &alice, .method = METHOD, .request_id = id, .value = 1};
    assert_int_equal(create(&a), OM_E_INVALID_ARGUMENT);
    id[IDEM_MAX_REQUEST_ID] = '\0'; /* exactly the limit is fine */
    assert_int_equal(create(&a), 0);
    assert_int_equal(things(), 1);
}

static void test_idem_check_outside_transaction_refused(void **state) {
    Google__Protobuf__Timestamp req = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
    idem_key key;
    assert_int_equal(idem_key_init(&key, &alice, METHOD, "req-notx", &req.base), 0);
    assert_string_equal(key.actor_key, "user:1001");
    ProtobufCMessage *m = NULL;
    assert_int_equal(idem_check(pg_local(), &key, &google__protobuf__duration__descriptor, NULL, &m),
                     OM_E_INTERNAL);
    assert_null(m);
}

static void test_idem_purge_deletes_only_expired(void **state) {
    create_call a = {.actor = &alice, .method = METHOD, .request_id = "req-p1", .value = 1};
    create_call b = {.actor = &alice, .method = METHOD, .request_id = "req-p2", .value = 1};
    assert_int_equal(create(&a), 0);
    assert_int_equal(create(&b), 0);
    it_sql("UPDATE " SCHEMA ".idempotency SET created_at = now() - interval '25 hours'"
           " WHERE request_id = 'req-p1'");
    assert_int_equal(idem_purge(pg_local(), 100), 1);
    assert_int_equal(it_sql_int("SELECT count(*) FROM " SCHEMA ".idempotency"), 1);
}

/* idem_run: the protocol in one call, as the services use it. The stored
 * reply is unpacked into an arena (as a call's is) freed by the test. */
static void *arena[64];
static int n_arena;

static void *arena_alloc(void *data, size_t size) {
    (void)data;
    if (n_arena >= 64) return NULL;
    return arena[n_arena++] = malloc(size);
}

static void arena_free(void *data, void *p) {
    (void)data;
    (void)p; /* freed with the arena */
}

static ProtobufCAllocator arena_allocator = {arena_alloc, arena_free, NULL};

static void arena_clear(void) {
    while (n_arena > 0) free(arena[--n_arena]);
}
typedef struct run_call {
    int value;        /* the request, and what `thing_apply` inserts */
    int ret;          /* what thing_apply returns after inserting */
    int applied;      /* times thing_apply ran */
    Google__Protobuf__Duration resp;
} run_call;

static int thing_apply(pg_conn *tx, void *arg) {
    run_call *rc = arg;
    rc->applied++;
    pg_params p = {0};
    pg_p_i64(&p, rc->value);
    pg_res *r = NULL;
    if (pg_exec(tx, "INSERT INTO things (value) VALUES ($1) RETURNING id", &p, &r) != 0) return OM_E_INTERNAL;
    rc->resp.seconds = pg_i64(r, 0, 0);
    pg_free(r);
    return rc->ret;
}

typedef struct run_tx {
    run_call *call;
    idem_key key;
    bool replayed;
    int run_rc;
} run_tx;

static int run_tx_fn(pg_conn *tx, void *arg) {
    run_tx *t = arg;
    google__protobuf__duration__init(&t->call->resp);
    t->run_rc = idem_run(tx, &t->key, &t->call->resp.base, &arena_allocator, thing_apply, t->call, &t->replayed);
    /* a positive return is the caller's own signal: roll back, as the
     * services do for "fetch missing copies and try again" */
    return t->run_rc > 0 ? OM_E_UNAVAILABLE : t->run_rc;
}

static void run_once(run_tx *t, run_call *c, const char *request_id) {
    Google__Protobuf__Timestamp req = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
    req.seconds = c->value;
    memset(t, 0, sizeof *t);
    t->call = c;
    assert_int_equal(idem_key_init(&t->key, &alice, METHOD, request_id, &req.base), 0);
    pg_tx(pg_local(), run_tx_fn, t);
}

static void test_idem_run_replays_without_applying_and_passes_positive_returns_through(void **state) {
    run_call a = {.value = 5};
    run_tx t;
    run_once(&t, &a, "run-1");
    assert_int_equal(t.run_rc, 0);
    assert_false(t.replayed);
    assert_int_equal(a.applied, 1);
    int64_t first = a.resp.seconds;
    run_call b = {.value = 5};
    run_once(&t, &b, "run-1");
    assert_int_equal(t.run_rc, 0);
    assert_true(t.replayed);
    assert_int_equal(b.applied, 0);          /* not applied again */
    assert_int_equal(b.resp.seconds, first); /* the first reply */
    /* apply's positive return (a service's "need more data" signal) comes
     * back as it is, not mistaken for a replay, and nothing is remembered */
    run_call c = {.value = 6, .ret = 2};
    run_once(&t, &c, "run-2");
    assert_int_equal(t.run_rc, 2);
    assert_false(t.replayed);
    run_call d = {.value = 6};
    run_once(&t, &d, "run-2");
    assert_int_equal(t.run_rc, 0);
    assert_false(t.replayed);
    assert_int_equal(d.applied, 1);
    assert_int_equal(things(), 2);
    arena_clear();
}

int main(void) {
    it_init(SCHEMA);
    it_sql("CREATE TABLE " SCHEMA ".things (id bigserial PRIMARY KEY, value bigint)");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_idem_repeat_returns_first_result, reset),
        cmocka_unit_test_setup(test_idem_same_id_different_request_rejected, reset),
        cmocka_unit_test_setup(test_idem_other_actor_or_method_is_independent, reset),
        cmocka_unit_test_setup(test_idem_without_request_id_always_acts, reset),
        cmocka_unit_test_setup(test_idem_expired_entry_does_not_count, reset),
        cmocka_unit_test_setup(test_idem_failed_mutation_is_not_remembered, reset),
        cmocka_unit_test_setup(test_idem_concurrent_same_id_acts_once, reset),
        cmocka_unit_test_setup(test_idem_request_id_too_long_rejected, reset),
        cmocka_unit_test_setup(test_idem_check_outside_transaction_refused, reset),
        cmocka_unit_test_setup(test_idem_purge_deletes_only_expired, reset),
        cmocka_unit_test_setup(test_idem_run_replays_without_applying_and_passes_positive_returns_through, reset),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    pg_local_close();
    return rc;
}
