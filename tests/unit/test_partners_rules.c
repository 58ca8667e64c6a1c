/* test_partners_rules.c — the pure rules of the partners service (SPEC 6),
 * no database or network: partner managers and client admins, the
 * access-request state machine (PART-05), the REMOVE confirmation (PART-07),
 * the resend interval (PART-04), PART-06 texts, the managed-MRR credit
 * (PART-12), activity validation (PART-13) and link tokens (PART-04). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "om_err.h"
#include "partners_rules.h"

static void test_part_01_partner_manager_roles(void **state) {
    (void)state;
    assert_int_equal(part_rule_partner_manager(PART_KIND_PARTNER, true, PART_ROLE_SUPER_ADMIN), 0);
    assert_int_equal(part_rule_partner_manager(PART_KIND_PARTNER, true, PART_ROLE_ACCOUNT_PERMISSIONS), 0);
    assert_int_equal(part_rule_partner_manager(PART_KIND_PARTNER, true, PART_ROLE_MARKETING_ACCESS | PART_ROLE_PARTNER_ADMIN),
                     OM_E_PERMISSION_DENIED);
    assert_int_equal(part_rule_partner_manager(PART_KIND_PARTNER, false, PART_ROLE_SUPER_ADMIN), OM_E_PERMISSION_DENIED);
    assert_int_equal(part_rule_partner_manager(1 /* STANDARD */, true, PART_ROLE_SUPER_ADMIN), OM_E_NOT_PARTNER_ACCOUNT);
}

static void test_part_05_client_admin(void **state) {
    (void)state;
    assert_int_equal(part_rule_client_admin(true, PART_ROLE_SUPER_ADMIN, false), 0);
    assert_int_equal(part_rule_client_admin(true, PART_ROLE_ACCOUNT_PERMISSIONS, false), 0);
    assert_int_equal(part_rule_client_admin(true, PART_ROLE_MARKETING_ACCESS, false), OM_E_PERMISSION_DENIED);
    assert_int_equal(part_rule_client_admin(false, PART_ROLE_SUPER_ADMIN, false), OM_E_PERMISSION_DENIED);
    /* PART-08: a partner-linked SUPER_ADMIN of the client never answers for it */
    assert_int_equal(part_rule_client_admin(true, PART_ROLE_SUPER_ADMIN, true), OM_E_PARTNER_IDENTITY_FORBIDDEN);
}

static void test_part_05_pending_takes_any_answer(void **state) {
    (void)state;
    bool apply = false;
    for (int a = PART_ANSWER_APPROVE; a <= PART_ANSWER_CANCEL; a++) {
        assert_int_equal(part_rule_answer(PART_ST_PENDING, PART_CAUSE_UNSPECIFIED, (part_answer)a, &apply), 0);
        assert_true(apply);
    }
    part_state st;
    part_cause cause;
    part_answer_result(PART_ANSWER_APPROVE, &st, &cause);
    assert_int_equal(st, PART_ST_ACTIVE);
    assert_int_equal(cause, PART_CAUSE_APPROVED);
    part_answer_result(PART_ANSWER_DECLINE, &st, &cause);
    assert_int_equal(st, PART_ST_DECLINED);
    part_answer_result(PART_ANSWER_CANCEL, &st, &cause);
    assert_int_equal(st, PART_ST_CANCELLED);
    assert_int_equal(cause, PART_CAUSE_CANCELLED_BY_PARTNER);
}

static void test_part_05_repeat_returns_as_it_stands(void **state) {
    (void)state;
    bool apply = true;
    assert_int_equal(part_rule_answer(PART_ST_ACTIVE, PART_CAUSE_APPROVED, PART_ANSWER_APPROVE, &apply), 0);
    assert_false(apply);
    assert_int_equal(part_rule_answer(PART_ST_ACTIVE, PART_CAUSE_CLIENT_ADDED_MEMBER, PART_ANSWER_APPROVE, &apply), 0);
    assert_int_equal(part_rule_answer(PART_ST_DECLINED, PART_CAUSE_DECLINED, PART_ANSWER_DECLINE, &apply), 0);
    assert_int_equal(part_rule_answer(PART_ST_CANCELLED, PART_CAUSE_CANCELLED_BY_PARTNER, PART_ANSWER_CANCEL, &apply), 0);
    assert_false(apply);
}

static void test_part_05_conflicting_answer_fails_and_terminal_is_final(void **state) {
    (void)state;
    bool apply = true;
    assert_int_equal(part_rule_answer(PART_ST_ACTIVE, PART_CAUSE_APPROVED, PART_ANSWER_DECLINE, &apply),
                     OM_E_REQUEST_NOT_PENDING);
    assert_int_equal(part_rule_answer(PART_ST_DECLINED, PART_CAUSE_DECLINED, PART_ANSWER_APPROVE, &apply),
                     OM_E_REQUEST_NOT_PENDING);
    assert_int_equal(part_rule_answer(PART_ST_EXPIRED, PART_CAUSE_EXPIRED, PART_ANSWER_APPROVE, &apply),
                     OM_E_REQUEST_NOT_PENDING);
    assert_int_equal(part_rule_answer(PART_ST_REVOKED, PART_CAUSE_REMOVED_BY_PARTNER, PART_ANSWER_APPROVE, &apply),
                     OM_E_REQUEST_NOT_PENDING);
    /* cancelled by PART-09, not by the partner: a cancel is not a repeat */
    assert_int_equal(part_rule_answer(PART_ST_CANCELLED, PART_CAUSE_EMPLOYEE_UNTAGGED, PART_ANSWER_CANCEL, &apply),
                     OM_E_REQUEST_NOT_PENDING);
    /* active because already a member: there was no request to approve */
    assert_int_equal(part_rule_answer(PART_ST_ACTIVE, PART_CAUSE_ALREADY_MEMBER, PART_ANSWER_APPROVE, &apply),
                     OM_E_REQUEST_NOT_PENDING);
    assert_true(part_state_terminal(PART_ST_EXPIRED) && part_state_terminal(PART_ST_REVOKED));
    assert_false(part_state_terminal(PART_ST_ACTIVE) || part_state_terminal(PART_ST_PENDING));
}

static void test_part_07_confirmation_is_exactly_remove(void **state) {
    (void)state;
    assert_int_equal(part_rule_confirmation("REMOVE"), 0);
    assert_int_equal(part_rule_confirmation("remove"), OM_E_CONFIRMATION_REQUIRED);
    assert_int_equal(part_rule_confirmation("REMOVE "), OM_E_CONFIRMATION_REQUIRED);
    assert_int_equal(part_rule_confirmation(""), OM_E_CONFIRMATION_REQUIRED);
    assert_int_equal(part_rule_confirmation(NULL), OM_E_CONFIRMATION_REQUIRED);
}

static void test_part_04_resend_once_per_hour(void **state) {
    (void)state;
    int64_t next = 0, sent = 1000000000LL * 1000000;
    assert_int_equal(part_rule_resend(sent, sent + 3599LL * 1000000, 3600, &next), OM_E_RESEND_TOO_SOON);
    assert_int_equal(next, sent + 3600LL * 1000000);
    assert_int_equal(part_rule_resend(sent, sent + 3600LL * 1000000, 3600, &next), 0);
}

static void test_part_06_first_partner_keeps_the_client(void **state) {
    (void)state;
    assert_int_equal(part_rule_existing_assignment(7, 7), 0);
    assert_int_equal(part_rule_existing_assignment(7, 8), OM_E_EMAIL_CONNECTED_TO_OTHER_PARTNER);
    assert_string_equal(om_err_message(OM_E_EMAIL_CONNECTED_TO_OTHER_PARTNER), PART_CONFLICT_MESSAGE);
    char title[128];
    part_conflict_title("Ada Lovelace", title, sizeof title);
    assert_string_equal(title, "Ada Lovelace couldn't be added to this client");
    for (int i = 0; i < 3; i++) assert_non_null(part_conflict_resolutions[i]);
}

static void test_part_12_credit(void **state) {
    (void)state;
    int r[2], n;
    assert_true(part_credited(1, 0, r, &n));
    assert_int_equal(n, 0);
    assert_false(part_credited(0, 0, r, &n));
    assert_int_equal(n, 1);
    assert_int_equal(r[0], 1); /* NO_ACTIVE_EMPLOYEE */
    assert_false(part_credited(2, 1, r, &n));
    assert_int_equal(r[0], 2); /* BLOCKING_USERS */
    assert_false(part_credited(0, 3, r, &n));
    assert_int_equal(n, 2);
    assert_int_equal(part_credit_blocker(false, false, false), 1); /* NOT_TAGGED */
    assert_int_equal(part_credit_blocker(true, true, false), 2);   /* PART-06 refused */
    assert_int_equal(part_credit_blocker(true, false, false), 0);
    assert_int_equal(part_credit_blocker(true, true, true), 0); /* works there for us */
}

static void test_part_13_activity_checks(void **state) {
    (void)state;
    const char *why = NULL;
    int64_t now = 1700000000LL * 1000000;
    assert_int_equal(part_activity_check("crm.contact.view", now, now, &why), 0);
    assert_int_equal(part_activity_check("", now, now, &why), -1);
    char long_kind[70];
    memset(long_kind, 'k', 65);
    long_kind[65] = '\0';
    assert_int_equal(part_activity_check(long_kind, now, now, &why), -1);
    assert_int_equal(part_activity_check("x", 0, now, &why), -1);
    assert_int_equal(part_activity_check("x", now + 301LL * 1000000, now, &why), -1);
    assert_int_equal(part_activity_check("x", now + 299LL * 1000000, now, &why), 0);
}

static void test_part_02_digits_query_is_a_hub_id(void **state) {
    (void)state;
    uint64_t v = 0;
    assert_true(part_query_hub_id("12345", &v));
    assert_int_equal(v, 12345);
    assert_false(part_query_hub_id("12a", &v));
    assert_false(part_query_hub_id("", &v));
    assert_false(part_query_hub_id("0", &v));
    assert_false(part_query_hub_id("123456789012345678901", &v));
}

static void test_part_04_tokens_are_bound_and_stable(void **state) {
    (void)state;
    char a[PART_TOKEN_LEN + 1], b[PART_TOKEN_LEN + 1], c[PART_TOKEN_LEN + 1], d[PART_TOKEN_LEN + 1];
    const char *key = "k";
    assert_int_equal(part_token_make(key, 1, "req", 5, "ev", a), 0);
    assert_int_equal(part_token_make(key, 1, "req", 5, "ev", b), 0);
    assert_string_equal(a, b); /* same event: same link */
    part_token_make(key, 1, "req", 6, "ev", c);
    assert_string_not_equal(a, c); /* bound to the recipient */
    part_token_make("other", 5, "req", 5, "ev", d);
    assert_string_not_equal(a, d);
    assert_true(part_token_well_formed(a));
    assert_false(part_token_well_formed("short"));
    uint8_t h1[32], h2[32];
    part_token_hash(a, h1);
    part_token_hash(c, h2);
    assert_memory_not_equal(h1, h2, 32);
}

/* ---- partner grants (PART-14 ... PART-20) ---- */

static void test_part_14_duration(void **state) {
    (void)state;
    int d = -1;
    assert_int_equal(part_rule_duration(0, false, 365, 730, false, &d), 0);
    assert_int_equal(d, 365); /* default */
    assert_int_equal(part_rule_duration(1, false, 365, 730, false, &d), 0);
    assert_int_equal(d, 1);
    assert_int_equal(part_rule_duration(730, false, 365, 730, false, &d), 0);
    assert_int_equal(part_rule_duration(731, false, 365, 730, false, &d), OM_E_INVALID_ARGUMENT);
    assert_int_equal(part_rule_duration(-1, false, 365, 730, false, &d), OM_E_INVALID_ARGUMENT);
    assert_int_equal(part_rule_duration(91, false, 30, 90, false, &d), OM_E_INVALID_ARGUMENT); /* configured max */
    assert_int_equal(part_rule_duration(0, true, 365, 730, false, &d), OM_E_DURATION_NOT_ALLOWED);
    assert_int_equal(part_rule_duration(0, true, 365, 730, true, &d), 0);
    assert_int_equal(d, 0);
    assert_int_equal(part_rule_duration(5, true, 365, 730, true, &d), OM_E_INVALID_ARGUMENT);
}

static void test_part_18_scope(void **state) {
    (void)state;
    unsigned b = 0;
    assert_int_equal(part_rule_requested_roles(NULL, 0, &b), 0);
    assert_int_equal(b, PART_ROLE_MARKETING_ACCESS); /* the default */
    int sa[] = {1}, two[] = {3, 4}, mk[] = {4}, bad[] = {9}, pa[] = {2};
    assert_int_equal(part_rule_requested_roles(sa, 1, &b), OM_E_ROLE_NOT_GRANTABLE);
    assert_int_equal(part_rule_requested_roles(bad, 1, &b), OM_E_INVALID_ARGUMENT);
    assert_int_equal(part_rule_requested_roles(two, 2, &b), 0);
    unsigned req = b, ok = 0;
    assert_int_equal(part_rule_approved_roles(req, NULL, 0, &ok), 0);
    assert_int_equal(ok, req); /* none given: all requested */
    assert_int_equal(part_rule_approved_roles(req, mk, 1, &ok), 0);
    assert_int_equal(ok, PART_ROLE_MARKETING_ACCESS); /* narrowed */
    assert_int_equal(part_rule_approved_roles(req, pa, 1, &ok), OM_E_ROLES_NOT_REQUESTED);
    assert_int_equal(part_rule_approved_roles(req, sa, 1, &ok), OM_E_ROLE_NOT_GRANTABLE);
    /* even a stored request that somehow names SUPER_ADMIN never grants it */
    assert_int_equal(part_rule_approved_roles(PART_ROLE_SUPER_ADMIN | PART_ROLE_MARKETING_ACCESS, NULL, 0, &ok), 0);
    assert_int_equal(ok, PART_ROLE_MARKETING_ACCESS);
}

static void test_part_15_no_auto_extend_with_super_admin(void **state) {
    (void)state;
    assert_true(part_rule_auto_extend(true, PART_ROLE_MARKETING_ACCESS));
    assert_false(part_rule_auto_extend(false, PART_ROLE_MARKETING_ACCESS));
    assert_false(part_rule_auto_extend(true, PART_ROLE_SUPER_ADMIN | PART_ROLE_MARKETING_ACCESS));
}

static void test_part_17_extend_bounds(void **state) {
    (void)state;
    const int64_t day = 86400LL * 1000000, now = 1700000000LL * 1000000;
    assert_int_equal(part_rule_extend(now + day, now + 2 * day, now, 730), 0);
    assert_int_equal(part_rule_extend(now + day, now + day, now, 730), OM_E_INVALID_ARGUMENT); /* not later */
    assert_int_equal(part_rule_extend(now + day, now + 730 * day, now, 730), 0);
    assert_int_equal(part_rule_extend(now + day, now + 731 * day, now, 730), OM_E_INVALID_ARGUMENT);
    assert_int_equal(part_rule_extend(now + day, now + 31 * day, now, 30), OM_E_INVALID_ARGUMENT);
}

static void test_part_22_resend_at_once_after_a_failure(void **state) {
    (void)state;
    int64_t sent = 1700000000LL * 1000000, next = 0;
    assert_int_equal(part_rule_resend_after(sent, false, sent + 60LL * 1000000, 3600, &next), OM_E_RESEND_TOO_SOON);
    assert_int_equal(part_rule_resend_after(sent, true, sent + 60LL * 1000000, 3600, &next), 0);
    assert_int_equal(next, sent + 60LL * 1000000);
}

static void test_part_17_who_extends(void **state) {
    (void)state;
    assert_int_equal(part_rule_extender(true, false, false), 0);
    assert_int_equal(part_rule_extender(false, true, false), OM_E_PERMISSION_DENIED); /* not configured */
    assert_int_equal(part_rule_extender(false, true, true), 0);
    assert_int_equal(part_rule_extender(false, false, true), OM_E_PERMISSION_DENIED);
}

static void test_part_16_notice_days(void **state) {
    (void)state;
    int d[PART_MAX_NOTICES], n = 0;
    assert_int_equal(part_parse_days("30,7,1", d, PART_MAX_NOTICES, &n), 0);
    assert_int_equal(n, 3);
    assert_int_equal(d[0], 30);
    assert_int_equal(d[2], 1);
    assert_int_equal(part_parse_days("", d, PART_MAX_NOTICES, &n), 0);
    assert_int_equal(n, 0);
    assert_int_equal(part_parse_days("7, 7", d, PART_MAX_NOTICES, &n), -1);
    assert_int_equal(part_parse_days("0", d, PART_MAX_NOTICES, &n), -1);
    assert_int_equal(part_parse_days("7,x", d, PART_MAX_NOTICES, &n), -1);
    assert_int_equal(part_parse_days("731", d, PART_MAX_NOTICES, &n), -1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_part_01_partner_manager_roles),
        cmocka_unit_test(test_part_05_client_admin),
        cmocka_unit_test(test_part_05_pending_takes_any_answer),
        cmocka_unit_test(test_part_05_repeat_returns_as_it_stands),
        cmocka_unit_test(test_part_05_conflicting_answer_fails_and_terminal_is_final),
        cmocka_unit_test(test_part_07_confirmation_is_exactly_remove),
        cmocka_unit_test(test_part_04_resend_once_per_hour),
        cmocka_unit_test(test_part_06_first_partner_keeps_the_client),
        cmocka_unit_test(test_part_12_credit),
        cmocka_unit_test(test_part_13_activity_checks),
        cmocka_unit_test(test_part_02_digits_query_is_a_hub_id),
        cmocka_unit_test(test_part_04_tokens_are_bound_and_stable),
        cmocka_unit_test(test_part_14_duration),
        cmocka_unit_test(test_part_18_scope),
        cmocka_unit_test(test_part_15_no_auto_extend_with_super_admin),
        cmocka_unit_test(test_part_17_extend_bounds),
        cmocka_unit_test(test_part_16_notice_days),
        cmocka_unit_test(test_part_17_who_extends),
        cmocka_unit_test(test_part_22_resend_at_once_after_a_failure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
