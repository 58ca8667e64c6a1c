/* test_audit.c — common/audit.c against a real PostgreSQL (SPEC 8 audit
 * history): what an entry stores, who it names, that it shares the
 * mutation's fate, and paging through a resource's history. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "audit.h"
#include "google/protobuf/duration.pb-c.h"
#include "it_util.h"
#include "om_err.h"

#define SCHEMA "it_audit"

static int reset(void **state) {
    it_sql("TRUNCATE " SCHEMA ".audit");
    return 0;
}

static void test_audit_actor_strings(void **state) {
    char buf[48];
    om_actor user = {.user_id = 18446744073709551615ULL};
    audit_actor_string(&user, "IGNORED", buf, sizeof buf);
    assert_string_equal(buf, "user:18446744073709551615");
    om_actor svc = {0};
    snprintf(svc.service, sizeof svc.service, "organizations");
    audit_actor_string(&svc, NULL, buf, sizeof buf);
    assert_string_equal(buf, "service:organizations");
    audit_actor_string(NULL, "ORG-09", buf, sizeof buf);
    assert_string_equal(buf, "rule:ORG-09");
    audit_actor_string(NULL, NULL, buf, sizeof buf);
    assert_string_equal(buf, "system");
}

static void test_audit_records_mutation_with_before_and_after(void **state) {
    om_actor user = {.user_id = 42};
    Google__Protobuf__Duration before = GOOGLE__PROTOBUF__DURATION__INIT;
    Google__Protobuf__Duration after = GOOGLE__PROTOBUF__DURATION__INIT;
    before.seconds = 1;
    after.seconds = 2;
    audit_entry e = {.actor = &user, .action = "thing.update", .resource = "things/9",
                     .before = &before.base, .after = &after.base, .reason = "renamed",
                     .request_id = "req-1", .trace_id = "trace-9"};
    pg_conn *c = pg_local();
    assert_int_equal(pg_begin(c), 0);
    assert_int_equal(audit_record(c, &e), 0);
    assert_int_equal(pg_commit(c), 0);
    /* a rule acting, no before (a creation) */
    audit_entry r = {.rule = "ORG-09", .action = "thing.create", .resource = "things/9",
                     .after = &after.base};
    assert_int_equal(audit_record(c, &r), 0);

    audit_page page;
    assert_int_equal(audit_list(c, "things/9", 0, 10, &page), 0);
    assert_int_equal(page.n, 2);
    assert_int_equal(page.next_before_id, 0);
    const audit_row *newest = &page.rows[0], *first = &page.rows[1];
    assert_true(newest->id > first->id);
    assert_string_equal(newest->actor, "rule:ORG-09");
    assert_string_equal(newest->before_type, "");
    assert_null(newest->before);
    assert_string_equal(first->actor, "user:42");
    assert_string_equal(first->action, "thing.update");
    assert_string_equal(first->resource, "things/9");
    assert_string_equal(first->reason, "renamed");
    assert_string_equal(first->request_id, "req-1");
    assert_string_equal(first->trace_id, "trace-9");
    assert_string_equal(first->before_type, "google.protobuf.Duration");
    assert_string_equal(first->after_type, "google.protobuf.Duration");
    Google__Protobuf__Duration *b =
        google__protobuf__duration__unpack(NULL, first->before_len, first->before);
    Google__Protobuf__Duration *a =
        google__protobuf__duration__unpack(NULL, first->after_len, first->after);
    assert_int_equal(b->seconds, 1);
    assert_int_equal(a->seconds, 2);
    google__protobuf__duration__free_unpacked(b, NULL);
    google__protobuf__duration__free_unpacked(a, NULL);
    time_t now = time(NULL);
    assert_true(first->at_us / 1000000 > now - 60 && first->at_us / 1000000 <= now + 5);
    audit_page_free(&page);
}

static void test_audit_rolled_back_mutation_leaves_no_entry(void **state) {
    audit_entry e = {.rule = "ORG-09", .action = "thing.delete", .resource = "things/1"};
    pg_conn *c = pg_local();
    assert_int_equal(pg_begin(c), 0);
    assert_int_equal(audit_record(c, &e), 0);
    pg_rollback(c);
    assert_int_equal(it_sql_int("SELECT count(*) FROM " SCHEMA ".audit"), 0);
    audit_entry bad = {.rule = "X"}; /* no action or resource */
    assert_int_equal(audit_record(c, &bad), OM_E_INTERNAL);
}

static void test_audit_list_pages_newest_first_per_resource(void **state) {
    pg_conn *c = pg_local();
    for (int i = 0; i < 10; i++) {
        char reason[16];
        snprintf(reason, sizeof reason, "r%d", i);
        audit_entry e = {.rule = "T", .action = "thing.touch",
                         .resource = i % 3 == 2 ? "things/other" : "things/a", .reason = reason};
        assert_int_equal(audit_record(c, &e), 0);
    }
    /* things/a got r0 r1 r3 r4 r6 r7 r9: newest first, 3 per page */
    static const char *const want[] = {"r9", "r7", "r6", "r4", "r3", "r1", "r0"};
    int seen = 0, pages = 0;
    int64_t cursor = 0;
    do {
        audit_page page;
        assert_int_equal(audit_list(c, "things/a", cursor, 3, &page), 0);
        for (int i = 0; i < page.n; i++) {
            assert_true(seen < 7);
            assert_string_equal(page.rows[i].reason, want[seen]);
            seen++;
        }
        cursor = page.next_before_id;
        pages++;
        audit_page_free(&page);
    } while (cursor != 0 && pages < 10);
    assert_int_equal(seen, 7);
    assert_int_equal(pages, 3);
    audit_page all;
    assert_int_equal(audit_list(c, NULL, 0, 1000, &all), 0);
    assert_int_equal(all.n, 10);
    audit_page_free(&all);
    assert_int_equal(audit_list(c, NULL, 0, 0, &all), OM_E_INVALID_ARGUMENT);
}

int main(void) {
    it_init(SCHEMA);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_audit_actor_strings),
        cmocka_unit_test_setup(test_audit_records_mutation_with_before_and_after, reset),
        cmocka_unit_test_setup(test_audit_rolled_back_mutation_leaves_no_entry, reset),
        cmocka_unit_test_setup(test_audit_list_pages_newest_first_per_resource, reset),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    pg_local_close();
    return rc;
}
