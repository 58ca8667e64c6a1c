/* test_connections_rules.c — the connections service's pure rules (SPEC 4)
 * and its check cache's invalidation protocol, without anything running. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <cmocka.h>

#include "connections_cache.h"
#include "connections_rules.h"

enum { A = 10, B = 20 };

static conn_feature f(int dir, uint64_t src) { return (conn_feature){dir, src}; }

static void test_conn_01_direction_algebra(void **state) {
    (void)state;
    conn_feature both = f(CONN_DIR_BOTH, 0), off = f(CONN_DIR_OFF, 0), a_to_b = f(CONN_DIR_ONE_WAY, A);
    assert_true(conn_flows(&both, A, B));
    assert_true(conn_flows(&both, B, A));
    assert_false(conn_flows(&off, A, B));
    assert_false(conn_flows(&off, B, A));
    assert_true(conn_flows(&a_to_b, A, B));
    assert_false(conn_flows(&a_to_b, B, A));
    assert_false(conn_flows(&both, A, A));
    assert_true(conn_is_source(&a_to_b, A, B, A));
    assert_false(conn_is_source(&a_to_b, A, B, B));
    assert_false(conn_is_source(&both, A, B, 99));
}

static void test_conn_01_feature_validity(void **state) {
    (void)state;
    conn_feature ok[] = {f(CONN_DIR_OFF, 0), f(CONN_DIR_BOTH, 0), f(CONN_DIR_ONE_WAY, A), f(CONN_DIR_ONE_WAY, B)};
    conn_feature bad[] = {f(0, 0), f(4, 0), f(CONN_DIR_OFF, A), f(CONN_DIR_BOTH, B), f(CONN_DIR_ONE_WAY, 0),
                          f(CONN_DIR_ONE_WAY, 99)};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) assert_true(conn_feature_valid(&ok[i], A, B));
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) assert_false(conn_feature_valid(&bad[i], A, B));
    uint64_t a, b;
    conn_pair(B, A, &a, &b);
    assert_int_equal(a, A);
    assert_int_equal(b, B);
}

static void test_conn_05_sensitive_rewrite(void **state) {
    (void)state;
    bool changed;
    conn_feature both = f(CONN_DIR_BOTH, 0);
    conn_feature r = conn_restrict_sensitive(&both, A, B, A, &changed); /* BOTH -> ONE_WAY into A */
    assert_true(changed);
    assert_int_equal(r.dir, CONN_DIR_ONE_WAY);
    assert_int_equal(r.source, B);
    conn_feature out_of_a = f(CONN_DIR_ONE_WAY, A);
    r = conn_restrict_sensitive(&out_of_a, A, B, A, &changed); /* ONE_WAY out of A -> OFF */
    assert_true(changed);
    assert_int_equal(r.dir, CONN_DIR_OFF);
    assert_int_equal(r.source, 0);
    conn_feature into_a = f(CONN_DIR_ONE_WAY, B);
    r = conn_restrict_sensitive(&into_a, A, B, A, &changed); /* already into it: unchanged */
    assert_false(changed);
    assert_int_equal(r.source, B);
    conn_feature off = f(CONN_DIR_OFF, 0);
    r = conn_restrict_sensitive(&off, A, B, A, &changed);
    assert_false(changed);
}

static void test_conn_02_quick_connect_plan(void **state) {
    (void)state;
    conn_cfg c = conn_quick_connect(A, B, false, false);
    assert_int_equal(c.mirroring.dir, CONN_DIR_BOTH);
    assert_int_equal(c.asset_copying.dir, CONN_DIR_BOTH);
    c = conn_quick_connect(A, B, true, false); /* into the sensitive one */
    assert_int_equal(c.mirroring.dir, CONN_DIR_ONE_WAY);
    assert_int_equal(c.mirroring.source, B);
    assert_int_equal(c.asset_copying.dir, CONN_DIR_BOTH);
    assert_false(conn_sensitive_source(&c, true, false));
    c = conn_quick_connect(A, B, true, true);
    assert_int_equal(c.mirroring.dir, CONN_DIR_OFF);
    assert_int_equal(c.asset_copying.dir, CONN_DIR_BOTH);
    c = conn_quick_connect(A, B, false, false);
    assert_true(conn_sensitive_source(&c, false, true));
}

static void test_conn_06_decision_order(void **state) {
    (void)state;
    conn_facts all = {.same_org = true, .connected = true, .mirror_flows = true, .asset_flows = true};
    conn_seat seat = {.member = true, .seats = CONN_SEAT_SALES};
    assert_int_equal(conn_decide_mirror(&all, &seat), CONN_ALLOWED);
    conn_seat service = {.member = true, .seats = CONN_SEAT_SERVICE};
    assert_int_equal(conn_decide_mirror(&all, &service), CONN_ALLOWED);
    conn_seat noseat = {.member = true, .seats = 0};
    assert_int_equal(conn_decide_mirror(&all, &noseat), CONN_DENY_NO_SEAT);
    conn_seat stranger = {0};
    assert_int_equal(conn_decide_mirror(&all, &stranger), CONN_DENY_NOT_A_MEMBER);
    conn_facts sens = all;
    sens.source_sensitive = true; /* CONN-05 at read time, whatever the configuration */
    assert_int_equal(conn_decide_mirror(&sens, &seat), CONN_DENY_SENSITIVE_SOURCE);
    conn_facts dir = all;
    dir.mirror_flows = false;
    assert_int_equal(conn_decide_mirror(&dir, &seat), CONN_DENY_DIRECTION);
    conn_facts nc = {.same_org = true};
    assert_int_equal(conn_decide_mirror(&nc, &seat), CONN_DENY_NOT_CONNECTED);
    conn_facts other = {0};
    assert_int_equal(conn_decide_mirror(&other, &seat), CONN_DENY_NOT_SAME_ORGANIZATION);
}

static void test_conn_07_asset_decision(void **state) {
    (void)state;
    conn_facts ok = {.same_org = true, .connected = true, .asset_flows = true, .source_sensitive = true};
    assert_int_equal(conn_decide_asset(&ok), CONN_ALLOWED); /* sensitivity is about mirroring only */
    conn_facts no = {.same_org = true, .connected = true, .mirror_flows = true};
    assert_int_equal(conn_decide_asset(&no), CONN_DENY_DIRECTION);
}

/* CONN-11: quick connect sets workflows as mirroring; a sensitive account
 * is never a workflow source at write time. */
static void test_conn_11_workflows_quick_connect_and_sensitive_source(void **state) {
    (void)state;
    conn_cfg c = conn_quick_connect(A, B, false, false);
    assert_int_equal(c.workflows.dir, CONN_DIR_BOTH);
    c = conn_quick_connect(A, B, false, true); /* into the sensitive one */
    assert_int_equal(c.workflows.dir, CONN_DIR_ONE_WAY);
    assert_int_equal(c.workflows.source, A);
    c = conn_quick_connect(A, B, true, true);
    assert_int_equal(c.workflows.dir, CONN_DIR_OFF);
    /* mirroring off, workflows out of the sensitive account: refused */
    conn_cfg w = {.a = A, .b = B, .mirroring = f(CONN_DIR_OFF, 0), .asset_copying = f(CONN_DIR_BOTH, 0),
                  .workflows = f(CONN_DIR_ONE_WAY, B)};
    assert_true(conn_sensitive_source(&w, false, true));
    assert_false(conn_sensitive_source(&w, true, false));
    w.workflows = f(CONN_DIR_BOTH, 0);
    assert_true(conn_sensitive_source(&w, true, false));
}

/* CONN-12 with CONN-11 at read time; reasons in the enum's order. */
static void test_conn_12_workflow_decision(void **state) {
    (void)state;
    conn_facts ok = {.same_org = true, .connected = true, .workflow_flows = true};
    assert_int_equal(conn_decide_workflow(&ok), CONN_ALLOWED);
    conn_facts sens = ok;
    sens.source_sensitive = true;
    assert_int_equal(conn_decide_workflow(&sens), CONN_DENY_SENSITIVE_SOURCE);
    conn_facts dir = {.same_org = true, .connected = true, .mirror_flows = true, .asset_flows = true};
    assert_int_equal(conn_decide_workflow(&dir), CONN_DENY_DIRECTION);
    conn_facts nc = {.same_org = true};
    assert_int_equal(conn_decide_workflow(&nc), CONN_DENY_NOT_CONNECTED);
    conn_facts other = {0};
    assert_int_equal(conn_decide_workflow(&other), CONN_DENY_NOT_SAME_ORGANIZATION);
}

static void test_conn_etag_round_trip(void **state) {
    (void)state;
    char e[CONN_ETAG_MAX];
    int64_t v = 0;
    conn_etag_encode(42, e);
    assert_int_equal(conn_etag_decode(e, &v), 0);
    assert_int_equal(v, 42);
    assert_int_not_equal(conn_etag_decode("\"o42\"", &v), 0);
    assert_int_not_equal(conn_etag_decode("42", &v), 0);
    assert_true(conn_uuid_valid("123e4567-e89b-12d3-a456-426614174000"));
    assert_false(conn_uuid_valid("123e4567e89b12d3a456426614174000"));
}

/* CONN-09: an entry read before a change (older generation) is a miss once
 * the change is signalled; entries expire after the TTL. */
static void test_conn_09_cache_generation_and_ttl(void **state) {
    (void)state;
    conn_cache_init(100);
    conn_facts in = {.same_org = true, .connected = true, .mirror_flows = true}, out;
    uint64_t gen = conn_cache_gen();
    conn_cache_put_facts(gen, A, B, &in);
    assert_true(conn_cache_get_facts(A, B, &out));
    assert_true(out.mirror_flows);
    assert_false(conn_cache_get_facts(B, A, &out)); /* directional key */
    /* A filler that read the database before a change stores under the old
     * generation: never a hit after the change is signalled. */
    uint64_t before = conn_cache_gen();
    conn_cache_invalidate();
    conn_cache_put_facts(before, A, B, &in);
    assert_false(conn_cache_get_facts(A, B, &out));
    conn_cache_put_facts(conn_cache_gen(), A, B, &in);
    assert_true(conn_cache_get_facts(A, B, &out));
    conn_seat s = {.member = true, .seats = CONN_SEAT_SALES}, so;
    conn_cache_put_seat(conn_cache_gen(), B, 7, &s);
    assert_true(conn_cache_get_seat(B, 7, &so));
    uint64_t src[] = {A, 30}, got[CONN_CACHE_MAX_SOURCES];
    int n = 0;
    conn_cache_put_sources(conn_cache_gen(), B, src, 2);
    assert_true(conn_cache_get_sources(B, got, &n));
    assert_int_equal(n, 2);
    assert_int_equal(got[1], 30);
    struct timespec ts = {0, 150 * 1000000};
    nanosleep(&ts, NULL);
    assert_false(conn_cache_get_facts(A, B, &out)); /* TTL */
    assert_false(conn_cache_get_seat(B, 7, &so));
    assert_false(conn_cache_get_sources(B, got, &n));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_conn_01_direction_algebra),
        cmocka_unit_test(test_conn_01_feature_validity),
        cmocka_unit_test(test_conn_05_sensitive_rewrite),
        cmocka_unit_test(test_conn_02_quick_connect_plan),
        cmocka_unit_test(test_conn_06_decision_order),
        cmocka_unit_test(test_conn_07_asset_decision),
        cmocka_unit_test(test_conn_11_workflows_quick_connect_and_sensitive_source),
        cmocka_unit_test(test_conn_12_workflow_decision),
        cmocka_unit_test(test_conn_etag_round_trip),
        cmocka_unit_test(test_conn_09_cache_generation_and_ttl),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
