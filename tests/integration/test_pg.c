/* test_pg.c — common/pg.c against a real PostgreSQL: parameters and results,
 * errors, the statement cache, transactions and what pg_tx retries (and what
 * it must not), migrations, notifications, failing fast while unreachable. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "it_util.h"
#include "om_err.h"
#include "pg.h"

#define SCHEMA "it_pg"

static pg_conn *conn(void) {
    pg_conn *c = NULL;
    assert_int_equal(pg_connect(&c), 0);
    return c;
}

static void test_pg_params_and_results_roundtrip(void **state) {
    pg_conn *c = conn();
    static const uint8_t blob[] = {0, 1, 2, 0xff, 0, 'x'};
    pg_params p = {0};
    pg_p_str(&p, "héllo");
    pg_p_strn(&p, "abcdef", 3);
    pg_p_i64(&p, INT64_MIN);
    pg_p_u64(&p, (uint64_t)INT64_MAX);
    pg_p_bool(&p, true);
    pg_p_bytes(&p, blob, sizeof blob);
    pg_p_null(&p);
    pg_p_bytes(&p, NULL, 0);
    pg_res *r = NULL;
    assert_int_equal(pg_exec(c,
                             "SELECT $1::text, $2::text, $3::bigint, $4::bigint, $5::bool,"
                             " $6::bytea, $7::text, $8::bytea,"
                             " timestamptz '2024-02-29 12:34:56.789012+00',"
                             " timestamptz '1969-12-31 23:59:59+01:30', now()",
                             &p, &r),
                     0);
    assert_int_equal(pg_nrows(r), 1);
    assert_string_equal(pg_str(r, 0, 0), "héllo");
    assert_string_equal(pg_str(r, 0, 1), "abc");
    assert_true(pg_i64(r, 0, 2) == INT64_MIN);
    assert_true(pg_u64(r, 0, 3) == (uint64_t)INT64_MAX);
    assert_true(pg_bool(r, 0, 4));
    size_t n = 0;
    const uint8_t *b = pg_bytes(r, 0, 5, &n);
    assert_int_equal(n, sizeof blob);
    assert_memory_equal(b, blob, sizeof blob);
    assert_true(pg_isnull(r, 0, 6));
    assert_string_equal(pg_str(r, 0, 6), "");
    assert_false(pg_isnull(r, 0, 7));
    assert_non_null(pg_bytes(r, 0, 7, &n));
    assert_int_equal(n, 0);
    assert_true(pg_time_us(r, 0, 8) == INT64_C(1709210096789012));
    assert_true(pg_time_us(r, 0, 9) == INT64_C(-5401) * 1000000);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    int64_t diff = pg_time_us(r, 0, 10) / 1000000 - now.tv_sec;
    assert_true(diff > -5 && diff < 5);
    /* out of range cells read as empty, not as a crash */
    assert_string_equal(pg_str(r, 3, 0), "");
    assert_true(pg_isnull(r, 0, 99));
    pg_free(r);
    pg_close(c);
}

static void test_pg_u64_above_int64_max_rejected(void **state) {
    assert_true(pg_id_valid(1));
    assert_true(pg_id_valid((uint64_t)INT64_MAX));
    assert_false(pg_id_valid(0));
    assert_false(pg_id_valid((uint64_t)INT64_MAX + 1));
    pg_conn *c = conn();
    pg_params p = {0};
    pg_p_u64(&p, UINT64_MAX);
    assert_int_equal(pg_exec(c, "SELECT $1::bigint", &p, NULL), OM_E_INVALID_ARGUMENT);
    pg_close(c);
}

/* pg_args binds each value as the pg_p_* of its C type would (issue 16). */
static void test_pg_args_binds_by_type_like_pg_p(void **state) {
    typedef enum { E_ONE = 1, E_TWO } small_enum;
    uint64_t u = (uint64_t)INT64_MAX + 1;
    int64_t i = -3;
    unsigned roles = 9;
    small_enum e = E_TWO;
    char buf[8] = "ab";
    const char *none = NULL;
    pg_params a = {0}, b = {0};
    pg_p_u64(&a, u);
    pg_p_i64(&a, i);
    pg_p_bool(&a, true);
    pg_p_str(&a, buf);
    pg_p_str(&a, none);
    pg_p_u64(&a, roles);
    pg_p_u64(&a, e);
    pg_p_i64(&a, 7);
    pg_p_null(&a);
    pg_p_bytes(&a, "zz", 2);
    pg_p_strn(&a, "abc", 2);
    pg_args(&b, u, i, (bool)true, buf, none, roles, e, 7, pg_a_null(), pg_a_bytes("zz", 2), pg_a_strn("abc", 2));
    assert_int_equal(b.n, a.n);
    assert_int_equal(b.out_of_range, a.out_of_range);
    assert_true(b.out_of_range); /* u above INT64_MAX: the query fails as with pg_p_u64 */
    for (int k = 0; k < a.n; k++) {
        assert_int_equal(b.len[k], a.len[k]);
        assert_int_equal(b.fmt[k], a.fmt[k]);
        if (a.val[k] == NULL)
            assert_null(b.val[k]);
        else
            assert_memory_equal(b.val[k], a.val[k], a.len[k] ? (size_t)a.len[k] : strlen(a.val[k]) + 1);
    }
    pg_params many = {0};
    pg_args(&many, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24);
    assert_int_equal(many.n, 24);
    assert_string_equal(many.val[23], "24");
    pg_conn *c = conn();
    pg_params q = {0};
    pg_args(&q, (uint64_t)42, "x", (bool)false);
    pg_res *r = NULL;
    assert_int_equal(pg_exec(c, "SELECT $1::bigint + 1, $2::text || 'y', NOT $3::boolean", &q, &r), 0);
    assert_int_equal(pg_i64(r, 0, 0), 43);
    assert_string_equal(pg_str(r, 0, 1), "xy");
    assert_true(pg_bool(r, 0, 2));
    pg_free(r);
    pg_close(c);
}

static void test_pg_too_many_params_fail(void **state) {
    pg_conn *c = conn();
    pg_params p = {0};
    for (int i = 0; i < PG_MAX_PARAMS + 1; i++) pg_p_i64(&p, i);
    assert_true(p.overflow);
    assert_int_equal(pg_exec(c, "SELECT $1::bigint", &p, NULL), OM_E_INTERNAL);
    pg_close(c);
}

static void test_pg_sql_error_reports_sqlstate_and_constraint(void **state) {
    it_sql("CREATE TABLE " SCHEMA ".uniq (k text CONSTRAINT uniq_k UNIQUE)");
    pg_conn *c = conn();
    pg_params p = {0};
    pg_p_str(&p, "a");
    assert_int_equal(pg_exec(c, "INSERT INTO uniq (k) VALUES ($1)", &p, NULL), 0);
    assert_string_equal(pg_sqlstate(c), "");
    assert_int_equal(pg_exec(c, "INSERT INTO uniq (k) VALUES ($1)", &p, NULL), OM_E_INTERNAL);
    assert_string_equal(pg_sqlstate(c), "23505");
    assert_string_equal(pg_constraint(c), "uniq_k");
    assert_true(strlen(pg_errmsg(c)) > 0);
    /* a syntax error is not cached: the same text fails again the same way */
    assert_int_equal(pg_exec(c, "SELEC 1", NULL, NULL), OM_E_INTERNAL);
    assert_string_equal(pg_sqlstate(c), "42601");
    assert_int_equal(pg_exec(c, "SELEC 1", NULL, NULL), OM_E_INTERNAL);
    /* and the connection is fine afterwards */
    pg_res *r = NULL;
    assert_int_equal(pg_exec(c, "SELECT count(*) FROM uniq", NULL, &r), 0);
    assert_int_equal(pg_i64(r, 0, 0), 1);
    pg_free(r);
    pg_close(c);
}

static void test_pg_statement_timeout_is_unavailable(void **state) {
    pg_conn *c = conn();
    assert_int_equal(pg_begin(c), 0);
    assert_int_equal(pg_exec(c, "SET LOCAL statement_timeout = 50", NULL, NULL), 0);
    assert_int_equal(pg_exec(c, "SELECT pg_sleep(2)", NULL, NULL), OM_E_UNAVAILABLE);
    assert_string_equal(pg_sqlstate(c), "57014");
    pg_rollback(c);
    assert_int_equal(pg_exec(c, "SELECT 1", NULL, NULL), 0);
    pg_close(c);
}

static void test_pg_statement_cache_survives_schema_change(void **state) {
    it_sql("CREATE TABLE " SCHEMA ".shape (a int); INSERT INTO " SCHEMA ".shape VALUES (1)");
    pg_conn *c = conn();
    pg_res *r = NULL;
    assert_int_equal(pg_exec(c, "SELECT * FROM shape", NULL, &r), 0);
    pg_free(r);
    it_sql("ALTER TABLE " SCHEMA ".shape ADD COLUMN b int DEFAULT 7");
    assert_int_equal(pg_exec(c, "SELECT * FROM shape", NULL, &r), 0);
    assert_string_equal(pg_str(r, 0, 1), "7");
    pg_free(r);
    pg_close(c);
}

/* ---- transactions ---------------------------------------------------------- */

typedef struct tx_probe {
    int attempts;
    int mode;
    pg_conn *other;
    int pid;
} tx_probe;

static int tx_insert_then_fail(pg_conn *c, void *arg) {
    tx_probe *t = arg;
    t->attempts++;
    if (pg_exec(c, "INSERT INTO txlog (note) VALUES ('fn')", NULL, NULL) != 0) return OM_E_INTERNAL;
    return OM_E_NOT_FOUND;
}

static void test_pg_tx_fn_error_rolls_back_and_is_not_retried(void **state) {
    it_sql("CREATE TABLE IF NOT EXISTS " SCHEMA ".txlog (id serial, note text)");
    it_sql("TRUNCATE " SCHEMA ".txlog");
    pg_conn *c = conn();
    tx_probe t = {0};
    assert_int_equal(pg_tx(c, tx_insert_then_fail, &t), OM_E_NOT_FOUND);
    assert_int_equal(t.attempts, 1);
    assert_false(pg_in_tx(c));
    assert_int_equal(it_sql_int("SELECT count(*) FROM " SCHEMA ".txlog"), 0);
    pg_close(c);
}

/* Attempt 1 reads under REPEATABLE READ, another connection then changes
 * the row, and our UPDATE of it fails with 40001: a real serialization
 * failure. Attempt 2 meets no interference. */
static int tx_counter_bump(pg_conn *c, void *arg) {
    tx_probe *t = arg;
    t->attempts++;
    int rc = pg_exec(c, "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", NULL, NULL);
    pg_res *r = NULL;
    if (rc == 0) rc = pg_exec(c, "SELECT n FROM counter WHERE id = 1", NULL, &r);
    pg_free(r);
    if (rc != 0) return rc;
    if (t->attempts == 1 &&
        pg_exec(t->other, "UPDATE counter SET n = n + 100 WHERE id = 1", NULL, NULL) != 0)
        return OM_E_INTERNAL;
    return pg_exec(c, "UPDATE counter SET n = n + 1 WHERE id = 1", NULL, NULL);
}

static void test_pg_tx_retries_serialization_failure(void **state) {
    it_sql("CREATE TABLE " SCHEMA ".counter (id int PRIMARY KEY, n int);"
           "INSERT INTO " SCHEMA ".counter VALUES (1, 0)");
    pg_conn *c = conn();
    tx_probe t = {.other = conn()};
    assert_int_equal(pg_tx(c, tx_counter_bump, &t), 0);
    assert_int_equal(t.attempts, 2);
    assert_int_equal(it_sql_int("SELECT n FROM " SCHEMA ".counter WHERE id = 1"), 101);
    pg_close(t.other);
    pg_close(c);
}

static int tx_raise(pg_conn *c, void *arg) {
    tx_probe *t = arg;
    t->attempts++;
    if (pg_exec(c, "INSERT INTO txlog (note) VALUES ('raise')", NULL, NULL) != 0)
        return OM_E_INTERNAL;
    if (t->mode == 1 && t->attempts == 1)
        return pg_exec(c,
                       "DO $$ BEGIN RAISE EXCEPTION 'boom' USING ERRCODE = 'deadlock_detected';"
                       " END $$",
                       NULL, NULL);
    if (t->mode == 2)
        return pg_exec(c,
                       "DO $$ BEGIN RAISE EXCEPTION 'boom' USING ERRCODE = "
                       "'serialization_failure'; END $$",
                       NULL, NULL);
    return 0;
}

static void test_pg_tx_retries_deadlock(void **state) {
    it_sql("CREATE TABLE IF NOT EXISTS " SCHEMA ".txlog (id serial, note text)");
    it_sql("TRUNCATE " SCHEMA ".txlog");
    pg_conn *c = conn();
    tx_probe t = {.mode = 1};
    assert_int_equal(pg_tx(c, tx_raise, &t), 0);
    assert_int_equal(t.attempts, 2);
    assert_int_equal(it_sql_int("SELECT count(*) FROM " SCHEMA ".txlog"), 1);
    pg_close(c);
}

static void test_pg_tx_gives_up_after_five_attempts(void **state) {
    it_sql("CREATE TABLE IF NOT EXISTS " SCHEMA ".txlog (id serial, note text)");
    it_sql("TRUNCATE " SCHEMA ".txlog");
    pg_conn *c = conn();
    tx_probe t = {.mode = 2};
    assert_int_equal(pg_tx(c, tx_raise, &t), OM_E_INTERNAL);
    assert_int_equal(t.attempts, 5);
    assert_string_equal(pg_sqlstate(c), "40001");
    assert_int_equal(it_sql_int("SELECT count(*) FROM " SCHEMA ".txlog"), 0);
    pg_close(c);
}

/* The first attempt's backend is killed before COMMIT: nothing committed,
 * so pg_tx reconnects and runs fn again; the row exists once. */
static int tx_killed_midway(pg_conn *c, void *arg) {
    tx_probe *t = arg;
    t->attempts++;
    pg_res *r = NULL;
    int rc = pg_exec(c, "SELECT pg_backend_pid()", NULL, &r);
    if (rc != 0) return rc;
    int pid = (int)pg_i64(r, 0, 0);
    pg_free(r);
    rc = pg_exec(c, "INSERT INTO txlog (note) VALUES ('killed')", NULL, NULL);
    if (rc != 0) return rc;
    if (t->attempts == 1) {
        pg_params p = {0};
        pg_p_i64(&p, pid);
        if (pg_exec(t->other, "SELECT pg_terminate_backend($1::int, 5000)", &p, NULL) != 0)
            return OM_E_INTERNAL;
    }
    return pg_exec(c, "INSERT INTO txlog (note) VALUES ('second')", NULL, NULL);
}

static void test_pg_tx_retries_connection_lost_before_commit(void **state) {
    it_sql("CREATE TABLE IF NOT EXISTS " SCHEMA ".txlog (id serial, note text)");
    it_sql("TRUNCATE " SCHEMA ".txlog");
    pg_conn *c = conn();
    tx_probe t = {.other = conn()};
    assert_int_equal(pg_tx(c, tx_killed_midway, &t), 0);
    assert_int_equal(t.attempts, 2);
    assert_int_equal(it_sql_int("SELECT count(*) FROM " SCHEMA ".txlog WHERE note = 'killed'"), 1);
    pg_close(t.other);
    pg_close(c);
}

/* A deferred constraint trigger runs inside COMMIT; this one kills its own
 * backend, so the connection dies while COMMIT is under way. */
static int tx_commit_dies(pg_conn *c, void *arg) {
    tx_probe *t = arg;
    t->attempts++;
    return pg_exec(c, "INSERT INTO doomed (v) VALUES (1)", NULL, NULL);
}

static void test_pg_tx_commit_outcome_unknown_not_retried(void **state) {
    it_sql("CREATE TABLE " SCHEMA ".doomed (v int);"
           "CREATE FUNCTION " SCHEMA ".die() RETURNS trigger LANGUAGE plpgsql AS"
           " $$ BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); PERFORM pg_sleep(5);"
           " RETURN NULL; END $$;"
           "CREATE CONSTRAINT TRIGGER die AFTER INSERT ON " SCHEMA ".doomed"
           " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION " SCHEMA ".die()");
    pg_conn *c = conn();
    tx_probe t = {0};
    assert_int_equal(pg_tx(c, tx_commit_dies, &t), OM_E_UNAVAILABLE);
    assert_int_equal(t.attempts, 1);
    /* the connection heals for the next user */
    assert_int_equal(pg_exec(c, "SELECT 1", NULL, NULL), 0);
    pg_close(c);
}

static void test_pg_commit_of_failed_transaction_reports_error(void **state) {
    pg_conn *c = conn();
    assert_int_equal(pg_begin(c), 0);
    assert_true(pg_in_tx(c));
    assert_int_equal(pg_exec(c, "SELECT 1/0", NULL, NULL), OM_E_INTERNAL);
    assert_int_equal(pg_commit(c), OM_E_INTERNAL);
    assert_string_equal(pg_sqlstate(c), "22012"); /* the error that aborted it */
    assert_false(pg_in_tx(c));
    assert_int_equal(pg_exec(c, "SELECT 1", NULL, NULL), 0);
    pg_close(c);
}

static int tx_inner(pg_conn *c, void *arg) {
    tx_probe *t = arg;
    t->attempts++;
    return pg_exec(c, "INSERT INTO txlog (note) VALUES ('inner')", NULL, NULL);
}

static int tx_outer(pg_conn *c, void *arg) {
    tx_probe *t = arg;
    int rc = pg_tx(c, tx_inner, t); /* runs inside this transaction */
    if (rc != 0) return rc;
    return t->mode == 3 ? OM_E_FAILED_PRECONDITION : 0;
}

static void test_pg_tx_nested_runs_inside_outer(void **state) {
    it_sql("CREATE TABLE IF NOT EXISTS " SCHEMA ".txlog (id serial, note text)");
    it_sql("TRUNCATE " SCHEMA ".txlog");
    pg_conn *c = conn();
    tx_probe t = {.mode = 3};
    assert_int_equal(pg_tx(c, tx_outer, &t), OM_E_FAILED_PRECONDITION);
    assert_int_equal(it_sql_int("SELECT count(*) FROM " SCHEMA ".txlog"), 0);
    t.mode = 0;
    assert_int_equal(pg_tx(c, tx_outer, &t), 0);
    assert_int_equal(it_sql_int("SELECT count(*) FROM " SCHEMA ".txlog"), 1);
    pg_close(c);
}

/* ---- migrations -------------------------------------------------------------- */

static const pg_migration mig_ok[] = {
    {1, "things", "CREATE TABLE things (id bigint PRIMARY KEY CHECK (id > 0), name text);"},
    {2, "seed", "INSERT INTO things VALUES (1, 'first');"},
    {5, "index", "-- orgmesh:no-transaction\nCREATE INDEX CONCURRENTLY things_name ON things (name)"},
};

static void test_pg_migrate_applies_each_once_in_order(void **state) {
    it_sql("DROP SCHEMA IF EXISTS it_mig_a CASCADE");
    pg_conn *c = conn();
    for (int round = 0; round < 2; round++)
        assert_int_equal(pg_migrate(c, "it_mig_a", mig_ok, 3), 0);
    assert_int_equal(it_sql_int("SELECT count(*) FROM it_mig_a.things"), 1);
    assert_int_equal(it_sql_int("SELECT count(*) FROM it_mig_a.schema_migrations"), 3);
    assert_int_equal(it_sql_int("SELECT count(*) FROM it_mig_a.schema_migrations"
                                " WHERE version IN (1, 2, 5)"),
                     3);
    /* outbox, applied_events, idempotency, audit, evt_delivery (issue 12) */
    assert_int_equal(it_sql_int("SELECT count(*) FROM it_mig_a.runtime_migrations"), 5);
    assert_int_equal(it_sql_int("SELECT count(*) FROM pg_indexes WHERE schemaname = 'it_mig_a'"
                                " AND indexname = 'things_name'"),
                     1);
    /* the runtime tables are there */
    assert_int_equal(it_sql_int("SELECT count(*) FROM information_schema.tables"
                                " WHERE table_schema = 'it_mig_a' AND table_name IN"
                                " ('outbox', 'applied_events', 'idempotency', 'audit')"),
                     4);
    /* the connection's search_path is what it was */
    pg_res *r = NULL;
    assert_int_equal(pg_exec(c, "SELECT current_setting('search_path')", NULL, &r), 0);
    assert_string_equal(pg_str(r, 0, 0), SCHEMA);
    pg_free(r);
    pg_close(c);
}

static void test_pg_migrate_failure_stops_and_rolls_back(void **state) {
    static const pg_migration bad[] = {
        {1, "ok", "CREATE TABLE good (v int);"},
        {2, "broken", "CREATE TABLE half (v int); SELECT no_such_column FROM good;"},
        {3, "never", "CREATE TABLE never (v int);"},
    };
    it_sql("DROP SCHEMA IF EXISTS it_mig_b CASCADE");
    pg_conn *c = conn();
    assert_int_not_equal(pg_migrate(c, "it_mig_b", bad, 3), 0);
    assert_int_equal(it_sql_int("SELECT count(*) FROM it_mig_b.schema_migrations"), 1);
    assert_int_equal(it_sql_int("SELECT count(*) FROM information_schema.tables WHERE"
                                " table_schema = 'it_mig_b' AND table_name IN ('half', 'never')"),
                     0);
    /* the advisory lock was released: another session can migrate */
    pg_conn *d = conn();
    assert_int_equal(pg_migrate(d, "it_mig_b", bad, 1), 0);
    pg_close(d);
    pg_close(c);
}

static void test_pg_migrate_rejects_unordered_versions(void **state) {
    static const pg_migration unordered[] = {{2, "b", "SELECT 1"}, {1, "a", "SELECT 1"}};
    pg_conn *c = conn();
    assert_int_not_equal(pg_migrate(c, "it_mig_c", unordered, 2), 0);
    assert_int_equal(pg_migrate(c, "Bad-Name", mig_ok, 1), OM_E_INVALID_ARGUMENT);
    pg_close(c);
}

static const pg_migration mig_count[] = {
    {1, "t", "CREATE TABLE applied (v int);"},
    {2, "once", "SELECT pg_sleep(0.2); INSERT INTO applied VALUES (1);"},
};

static void *migrate_thread(void *arg) {
    pg_conn *c = NULL;
    if (pg_connect(&c) != 0) return (void *)1;
    intptr_t rc = pg_migrate(c, "it_mig_d", mig_count, 2);
    pg_close(c);
    return (void *)rc;
}

static void test_pg_migrate_concurrent_replicas_apply_once(void **state) {
    it_sql("DROP SCHEMA IF EXISTS it_mig_d CASCADE");
    pthread_t th[4];
    for (int i = 0; i < 4; i++) pthread_create(&th[i], NULL, migrate_thread, NULL);
    for (int i = 0; i < 4; i++) {
        void *rc;
        pthread_join(th[i], &rc);
        assert_int_equal((intptr_t)rc, 0);
    }
    assert_int_equal(it_sql_int("SELECT count(*) FROM it_mig_d.applied"), 1);
}

/* ---- the thread's connection, health, notifications --------------------------- */

static void test_pg_local_is_per_thread_and_reused(void **state) {
    pg_conn *a = pg_local();
    assert_non_null(a);
    assert_ptr_equal(pg_local(), a);
    pg_res *r = NULL;
    assert_int_equal(pg_exec(a, "SELECT current_setting('application_name')", NULL, &r), 0);
    assert_string_equal(pg_str(r, 0, 0), "orgmesh-" SCHEMA);
    pg_free(r);
    assert_true(pg_ping());
    pg_local_close();
}

static void test_pg_local_end_call_rolls_back_leftover_transaction(void **state) {
    it_sql("CREATE TABLE IF NOT EXISTS " SCHEMA ".txlog (id serial, note text)");
    it_sql("TRUNCATE " SCHEMA ".txlog");
    pg_conn *c = pg_local();
    assert_non_null(c);
    assert_int_equal(pg_begin(c), 0);
    assert_int_equal(pg_exec(c, "INSERT INTO txlog (note) VALUES ('left open')", NULL, NULL), 0);
    pg_local_end_call();
    assert_false(pg_in_tx(c));
    assert_int_equal(pg_exec(c, "SELECT 1", NULL, NULL), 0);
    assert_int_equal(it_sql_int("SELECT count(*) FROM " SCHEMA ".txlog"), 0);
    pg_local_close();
}

typedef struct hung_probe {
    int64_t first_ms, second_ms;
    bool first_null, second_null;
} hung_probe;

static void *hung_thread(void *arg) {
    hung_probe *h = arg;
    int64_t t0 = it_ms();
    h->first_null = pg_local() == NULL;
    int64_t t1 = it_ms();
    h->second_null = pg_local() == NULL;
    h->second_ms = it_ms() - t1;
    h->first_ms = t1 - t0;
    pg_local_close();
    return NULL;
}

/* A server that accepts and never answers: the first pg_local waits for
 * the connect timeout (2 s), the next one within 500 ms fails at once. */
static void test_pg_local_fails_fast_while_unreachable(void **state) {
    int fd;
    int port = it_silent_server(&fd);
    char url[128];
    snprintf(url, sizeof url, "postgresql://nobody@127.0.0.1:%d/none", port);
    assert_int_equal(pg_setup(url, SCHEMA, 1000), 0);
    hung_probe h = {0};
    pthread_t th;
    pthread_create(&th, NULL, hung_thread, &h);
    pthread_join(th, NULL);
    close(fd);
    assert_int_equal(pg_setup(getenv("ORGMESH_PG_URL"), SCHEMA, 30000), 0);
    assert_true(h.first_null);
    assert_true(h.second_null);
    assert_true(h.first_ms >= 1500);
    assert_true(h.second_ms < 100);
}

int main(void) {
    it_init(SCHEMA);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pg_params_and_results_roundtrip),
        cmocka_unit_test(test_pg_u64_above_int64_max_rejected),
        cmocka_unit_test(test_pg_args_binds_by_type_like_pg_p),
        cmocka_unit_test(test_pg_too_many_params_fail),
        cmocka_unit_test(test_pg_sql_error_reports_sqlstate_and_constraint),
        cmocka_unit_test(test_pg_statement_timeout_is_unavailable),
        cmocka_unit_test(test_pg_statement_cache_survives_schema_change),
        cmocka_unit_test(test_pg_tx_fn_error_rolls_back_and_is_not_retried),
        cmocka_unit_test(test_pg_tx_retries_serialization_failure),
        cmocka_unit_test(test_pg_tx_retries_deadlock),
        cmocka_unit_test(test_pg_tx_gives_up_after_five_attempts),
        cmocka_unit_test(test_pg_tx_retries_connection_lost_before_commit),
        cmocka_unit_test(test_pg_tx_commit_outcome_unknown_not_retried),
        cmocka_unit_test(test_pg_commit_of_failed_transaction_reports_error),
        cmocka_unit_test(test_pg_tx_nested_runs_inside_outer),
        cmocka_unit_test(test_pg_migrate_applies_each_once_in_order),
        cmocka_unit_test(test_pg_migrate_failure_stops_and_rolls_back),
        cmocka_unit_test(test_pg_migrate_rejects_unordered_versions),
        cmocka_unit_test(test_pg_migrate_concurrent_replicas_apply_once),
        cmocka_unit_test(test_pg_local_is_per_thread_and_reused),
        cmocka_unit_test(test_pg_local_end_call_rolls_back_leftover_transaction),
        cmocka_unit_test(test_pg_local_fails_fast_while_unreachable),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
