/* test_organizations_rules.c — the organizations service's pure rules
 * (services/organizations/organizations_rules.c): eligibility reasons
 * (ORG-02, ORG-03, ORG-05), the cap (ORG-01), the MFA window (ORG-04), the
 * automatic departures (ORG-09, ORG-10), etags and ids. Needs nothing running. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "om_err.h"
#include "organizations_rules.h"

static org_account good(uint64_t hub) {
    org_account a;
    memset(&a, 0, sizeof a);
    a.hub_id = hub;
    snprintf(a.name, sizeof a.name, "acct %llu", (unsigned long long)hub);
    a.kind = 1;
    snprintf(a.hosting_location, sizeof a.hosting_location, "na1");
    a.state = ORG_STATE_ACTIVE;
    a.has_professional = true;
    a.version = 1;
    return a;
}

static void test_org_02_eligible_account_has_no_reason(void **state) {
    (void)state;
    org_account a = good(1);
    assert_int_equal(org_eligibility(&a, "na1", false, true), 0);
    assert_int_equal(org_eligibility(&a, NULL, false, true), 0);
}

static void test_org_05_every_reason_is_reported(void **state) {
    (void)state;
    org_account a = good(1);
    a.kind = ORG_KIND_SANDBOX;
    a.has_professional = false;
    snprintf(a.hosting_location, sizeof a.hosting_location, "eu1");
    a.state = ORG_STATE_DEACTIVATED;
    unsigned r = org_eligibility(&a, "na1", true, false);
    assert_int_equal(r, ORG_INELIGIBLE_SANDBOX | ORG_INELIGIBLE_NO_PROFESSIONAL | ORG_INELIGIBLE_HOSTING_LOCATION |
                            ORG_INELIGIBLE_DEACTIVATED | ORG_INELIGIBLE_ALREADY_IN_ORG |
                            ORG_INELIGIBLE_NOT_SUPER_ADMIN);
    /* the bits are the IneligibilityReason values in order */
    assert_int_equal(org_reason_value(ORG_INELIGIBLE_SANDBOX), 1);
    assert_int_equal(org_reason_value(ORG_INELIGIBLE_NOT_SUPER_ADMIN), 6);
    assert_int_equal(org_reason_value(3), 0);
}

static void test_org_02_first_reason_and_codes(void **state) {
    (void)state;
    assert_int_equal(org_first_org02_reason(ORG_INELIGIBLE_DEACTIVATED | ORG_INELIGIBLE_HOSTING_LOCATION),
                     ORG_INELIGIBLE_HOSTING_LOCATION);
    /* NOT_SUPER_ADMIN is ORG-03, not an ORG-02 reason */
    assert_int_equal(org_first_org02_reason(ORG_INELIGIBLE_NOT_SUPER_ADMIN), 0);
    assert_int_equal(org_reason_code(ORG_INELIGIBLE_SANDBOX), OM_E_SANDBOX);
    assert_int_equal(org_reason_code(ORG_INELIGIBLE_NO_PROFESSIONAL), OM_E_NO_PROFESSIONAL_SUBSCRIPTION);
    assert_int_equal(org_reason_code(ORG_INELIGIBLE_HOSTING_LOCATION), OM_E_HOSTING_LOCATION_MISMATCH);
    assert_int_equal(org_reason_code(ORG_INELIGIBLE_DEACTIVATED), OM_E_DEACTIVATED);
    assert_int_equal(org_reason_code(ORG_INELIGIBLE_ALREADY_IN_ORG), OM_E_ALREADY_IN_ORGANIZATION);
    assert_int_equal(org_reason_code(ORG_INELIGIBLE_NOT_SUPER_ADMIN), OM_E_NOT_SUPER_ADMIN);
}

static void test_org_02_subscription_minimum_any_hub(void **state) {
    (void)state;
    int hubs[] = {2, 1}, tiers[] = {2, 3};
    assert_true(org_subs_professional(hubs, tiers, 2));
    assert_false(org_subs_professional(hubs, tiers, 1)); /* STARTER only */
    assert_false(org_subs_professional(NULL, NULL, 0));
    assert_false(org_subs_marketing_enterprise(hubs, tiers, 2));
    int h2[] = {2, 1}, t2[] = {4, 4};
    assert_true(org_subs_marketing_enterprise(h2, t2, 2));
    assert_false(org_subs_marketing_enterprise(h2, t2, 1)); /* SALES ENTERPRISE is not it */
}

static void test_org_01_cap_is_five_accounts(void **state) {
    (void)state;
    assert_int_equal(org_cap_check(1, 4), 0);
    assert_int_equal(org_cap_check(1, 5), OM_E_ORG_ACCOUNT_LIMIT);
    assert_int_equal(org_cap_check(3, 2), 0);
    assert_int_equal(org_cap_check(4, 2), OM_E_ORG_ACCOUNT_LIMIT);
    assert_int_equal(org_cap_check(5, 0), 0);
    assert_int_equal(org_cap_check(-1, 1), OM_E_ORG_ACCOUNT_LIMIT);
}

static void test_org_04_mfa_window(void **state) {
    (void)state;
    int64_t now = 1700000000;
    assert_int_equal(org_mfa_check(true, now - 300, now, 300), 0);
    assert_int_equal(org_mfa_check(true, now - 301, now, 300), OM_E_MFA_REQUIRED);
    assert_int_equal(org_mfa_check(true, 0, now, 300), OM_E_MFA_REQUIRED);       /* no claim */
    assert_int_equal(org_mfa_check(false, now, now, 300), OM_E_MFA_REQUIRED);    /* 2FA off */
    assert_int_equal(org_mfa_check(true, now + 20, now, 300), 0);                /* clock leeway */
    assert_int_equal(org_mfa_check(true, now + 3600, now, 300), OM_E_MFA_REQUIRED);
    assert_int_equal(org_mfa_check(true, now - 500, now, 600), 0);               /* configurable */
}

static void test_org_09_departures_in_order(void **state) {
    (void)state;
    org_account a = good(7);
    assert_int_equal(org_departure(&a, "na1"), 0);
    snprintf(a.hosting_location, sizeof a.hosting_location, "eu1");
    assert_int_equal(org_departure(&a, "na1"), 3); /* HOSTING_LOCATION_CHANGED */
    a.has_professional = false;
    assert_int_equal(org_departure(&a, "na1"), 2); /* DOWNGRADED */
    a.state = ORG_STATE_DEACTIVATED;
    assert_int_equal(org_departure(&a, "na1"), 4); /* DEACTIVATED */
    a.deleted = true;
    assert_int_equal(org_departure(&a, "na1"), 6); /* ACCOUNT_DELETED */
}

static void test_org_10_needs_an_enterprise_account(void **state) {
    (void)state;
    org_account m[3] = {good(1), good(2), good(3)};
    assert_false(org_has_enterprise(m, 3));
    m[2].marketing_enterprise = true;
    assert_true(org_has_enterprise(m, 3));
    m[2].deleted = true;
    assert_false(org_has_enterprise(m, 3));
    assert_false(org_has_enterprise(m, 0));
}

static void test_org_11_etag_round_trip_and_malformed(void **state) {
    (void)state;
    char e[ORG_ETAG_MAX];
    int64_t v = 0;
    org_etag_encode(42, e);
    assert_string_equal(e, "\"o42\"");
    assert_int_equal(org_etag_decode(e, &v), 0);
    assert_int_equal(v, 42);
    assert_int_equal(org_etag_decode("\"v42\"", &v), -1);
    assert_int_equal(org_etag_decode("o42", &v), -1);
    assert_int_equal(org_etag_decode("\"o4x\"", &v), -1);
    assert_int_equal(org_etag_decode("\"o99999999999999999999\"", &v), -1);
    assert_int_equal(org_etag_decode(NULL, &v), -1);
}

static void test_ids_and_duplicates(void **state) {
    (void)state;
    assert_true(org_uuid_valid("0b7c5a4e-3f2d-4c1b-9a8e-7d6c5b4a3f2e"));
    assert_false(org_uuid_valid("0b7c5a4e-3f2d-4c1b-9a8e-7d6c5b4a3f2"));
    assert_false(org_uuid_valid("0b7c5a4e+3f2d-4c1b-9a8e-7d6c5b4a3f2e"));
    assert_false(org_uuid_valid("zb7c5a4e-3f2d-4c1b-9a8e-7d6c5b4a3f2e"));
    assert_false(org_uuid_valid(NULL));
    uint64_t ids[] = {5, 6, 7, 6};
    assert_int_equal(org_first_duplicate(ids, 4), 6);
    assert_int_equal(org_first_duplicate(ids, 3), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_org_02_eligible_account_has_no_reason),
        cmocka_unit_test(test_org_05_every_reason_is_reported),
        cmocka_unit_test(test_org_02_first_reason_and_codes),
        cmocka_unit_test(test_org_02_subscription_minimum_any_hub),
        cmocka_unit_test(test_org_01_cap_is_five_accounts),
        cmocka_unit_test(test_org_04_mfa_window),
        cmocka_unit_test(test_org_09_departures_in_order),
        cmocka_unit_test(test_org_10_needs_an_enterprise_account),
        cmocka_unit_test(test_org_11_etag_round_trip_and_malformed),
        cmocka_unit_test(test_ids_and_duplicates),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
