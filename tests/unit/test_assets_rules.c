/* test_assets_rules.c — the assets service's pure rules (SPEC 5): which
 * types may reference which, names, bodies, the copy order, the names the
 * RENAME policy gives, etags and the final state of a job. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "assets_rules.h"

static void test_asset_01_reference_types(void **state) {
    (void)state;
    int emails[] = {ASSET_EMAIL_REGULAR, ASSET_EMAIL_AUTOMATED};
    for (int i = 0; i < 2; i++) {
        assert_true(asset_ref_allowed(emails[i], ASSET_LIST));
        assert_true(asset_ref_allowed(emails[i], ASSET_FORM));
        assert_false(asset_ref_allowed(emails[i], ASSET_EMAIL_REGULAR));
        assert_false(asset_ref_allowed(emails[i], ASSET_EMAIL_AUTOMATED));
    }
    assert_true(asset_ref_allowed(ASSET_LIST, ASSET_FORM));
    assert_false(asset_ref_allowed(ASSET_LIST, ASSET_LIST));
    assert_false(asset_ref_allowed(ASSET_LIST, ASSET_EMAIL_REGULAR));
    for (int t = 0; t <= 5; t++) assert_false(asset_ref_allowed(ASSET_FORM, t));
    assert_false(asset_ref_allowed(0, ASSET_FORM));
    assert_false(asset_type_valid(0));
    assert_false(asset_type_valid(5));
    assert_true(asset_type_valid(ASSET_FORM));
}

static void test_asset_04_copy_order_puts_dependencies_first(void **state) {
    (void)state;
    /* every allowed reference goes to a smaller rank */
    for (int from = 1; from <= 4; from++)
        for (int to = 1; to <= 4; to++)
            if (asset_ref_allowed(from, to)) assert_true(asset_type_rank(to) < asset_type_rank(from));
}

static void test_asset_01_names(void **state) {
    (void)state;
    assert_null(asset_name_problem("Welcome email"));
    assert_null(asset_name_problem("Caffè ☕"));
    assert_non_null(asset_name_problem(""));
    assert_non_null(asset_name_problem(NULL));
    assert_non_null(asset_name_problem("tab\there"));
    assert_non_null(asset_name_problem("\xff\xfe"));
    char name[300];
    memset(name, 'x', 256);
    name[256] = '\0';
    assert_null(asset_name_problem(name));
    name[256] = 'x';
    name[257] = '\0';
    assert_non_null(asset_name_problem(name));
    /* 256 characters of two bytes each is fine */
    char wide[600] = "";
    for (int i = 0; i < 256; i++) strcat(wide, "\xc3\xa9");
    assert_null(asset_name_problem(wide));
}

static void test_asset_01_body_json_and_size(void **state) {
    (void)state;
    const char *ok = "{\"blocks\": [1, 2, {\"x\": null}]}";
    assert_null(asset_body_problem(ok, strlen(ok)));
    assert_null(asset_body_problem("[]", 2));
    assert_non_null(asset_body_problem("{", 1));
    assert_non_null(asset_body_problem("", 0));
    assert_non_null(asset_body_problem("{\"a\":1,\"a\":2}", 13)); /* duplicate keys */
    size_t n = ASSET_BODY_MAX + 1;
    char *big = malloc(n + 1);
    big[0] = '"';
    memset(big + 1, 'a', n - 2);
    big[n - 1] = '"';
    big[n] = '\0';
    assert_non_null(asset_body_problem(big, n));
    big[n - 2] = '"';
    assert_null(asset_body_problem(big, n - 1)); /* exactly 256 KiB */
    free(big);
}

static void test_asset_04_rename_policy_appends_copy(void **state) {
    (void)state;
    char out[ASSET_COPY_NAME_MAX];
    asset_copy_name("Welcome", 1, out, sizeof out);
    assert_string_equal(out, "Welcome (copy)");
    asset_copy_name("Welcome", 2, out, sizeof out);
    assert_string_equal(out, "Welcome (copy 2)");
    assert_int_equal(asset_pick_copy_name("Welcome", NULL, 0, out, sizeof out), 1);
    assert_string_equal(out, "Welcome (copy)");
    const char *taken[] = {"welcome (COPY)", "Welcome (copy 2)", "Welcome (copy 4)"};
    assert_int_equal(asset_pick_copy_name("Welcome", taken, 3, out, sizeof out), 3);
    assert_string_equal(out, "Welcome (copy 3)");
}

static void test_asset_01_etags_and_ids(void **state) {
    (void)state;
    char e[ASSET_ETAG_MAX];
    int64_t v = 0;
    asset_etag_encode(42, e);
    assert_int_equal(asset_etag_decode(e, &v), 0);
    assert_int_equal(v, 42);
    assert_int_not_equal(asset_etag_decode("\"c42\"", &v), 0);
    assert_int_not_equal(asset_etag_decode("\"a4x\"", &v), 0);
    assert_int_not_equal(asset_etag_decode("\"a99999999999999999999\"", &v), 0);
    assert_true(asset_uuid_valid("0b7c2f6e-1d2a-4c3b-9f8e-123456789abc"));
    assert_false(asset_uuid_valid("0b7c2f6e-1d2a-4c3b-9f8e-123456789abg"));
    assert_false(asset_uuid_valid("0b7c2f6e1d2a4c3b9f8e123456789abc"));
    assert_false(asset_uuid_valid(NULL));
}

static void test_asset_03_final_state(void **state) {
    (void)state;
    assert_int_equal(asset_job_final_state(3, 0, 0), 3);
    assert_int_equal(asset_job_final_state(0, 2, 0), 3);
    assert_int_equal(asset_job_final_state(0, 0, 0), 3);
    assert_int_equal(asset_job_final_state(1, 0, 1), 4);
    assert_int_equal(asset_job_final_state(0, 1, 1), 4);
    assert_int_equal(asset_job_final_state(0, 0, 2), 5);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_asset_01_reference_types),
        cmocka_unit_test(test_asset_04_copy_order_puts_dependencies_first),
        cmocka_unit_test(test_asset_01_names),
        cmocka_unit_test(test_asset_01_body_json_and_size),
        cmocka_unit_test(test_asset_04_rename_policy_appends_copy),
        cmocka_unit_test(test_asset_01_etags_and_ids),
        cmocka_unit_test(test_asset_03_final_state),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
