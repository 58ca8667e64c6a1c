/* test_accounts_rules.c — the accounts service's pure rules
 * (services/accounts/accounts_rules.c): validation, PART-08, downgrade
 * detection, the events an update emits, masks and etags. Needs nothing running. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../../services/accounts/accounts_rules.h"
#include "om_err.h"

/* ---- helpers ------------------------------------------------------------ */

typedef struct recorder {
    int n;
    char fields[16][128];
} recorder;

static void record(void *arg, const char *field, const char *msg) {
    recorder *r = arg;
    (void)msg;
    if (r->n < 16) snprintf(r->fields[r->n], sizeof r->fields[0], "%s", field);
    r->n++;
}

static bool recorded(const recorder *r, const char *field) {
    for (int i = 0; i < r->n && i < 16; i++)
        if (strcmp(r->fields[i], field) == 0) return true;
    return false;
}

static om_actor user(uint64_t id) {
    om_actor a = {0};
    a.user_id = id;
    return a;
}

static om_actor service(const char *name) {
    om_actor a = {0};
    snprintf(a.service, sizeof a.service, "%s", name);
    return a;
}

static acct_membership member(unsigned roles) {
    acct_membership m = {0};
    m.hub_id = 100;
    m.user_id = 7;
    m.roles = roles;
    return m;
}

static acct_account account(void) {
    acct_account a = {0};
    a.hub_id = 100;
    a.name = "Acme Marketing";
    a.kind = ACCT_KIND_STANDARD;
    a.hosting_location = "eu1";
    a.state = ACCT_STATE_ACTIVE;
    a.subs[0] = (acct_subscription){ACCT_HUB_MARKETING, ACCT_TIER_PROFESSIONAL};
    a.n_subs = 1;
    memcpy(a.mrr_currency, "EUR", 4);
    a.mrr_amount_minor = 120000;
    return a;
}

static int validate_account(const acct_account *a, recorder *r) {
    acct_violations v = {record, r, 0};
    return acct_validate_account(a, "na1,eu1,ap1", "account", &v);
}

/* ---- PART-08: who may remove a membership --------------------------------- */

/* a partner employee given SUPER_ADMIN in the client through the assignment */
static acct_membership linked_super_admin(void) {
    acct_membership m = member(ACCT_ROLE_SUPER_ADMIN | ACCT_ROLE_ACCOUNT_PERMISSIONS);
    m.partner_hub_id = 555;
    m.assignment_id = "as-1";
    m.link_owns_membership = true;
    return m;
}

static void test_part_08_partner_actor_cannot_remove_member(void **state) {
    (void)state;
    acct_membership m = linked_super_admin();
    acct_membership staff = member(ACCT_ROLE_SUPER_ADMIN);
    staff.created_by_user_id = 1; /* the client admin added them */
    acct_act act = {.kind = ACCT_ACT_DELETE_MEMBERSHIP, .hub_id = 1, .target = &staff};
    assert_int_equal(acct_rule_partner_identity(7, &m, &act), OM_E_PARTNER_IDENTITY_FORBIDDEN);
    staff.created_by_user_id = 0; /* creator unknown (before migration 002) */
    assert_int_equal(acct_rule_partner_identity(7, &m, &act), OM_E_PARTNER_IDENTITY_FORBIDDEN);
    assert_int_equal(om_err_status(OM_E_PARTNER_IDENTITY_FORBIDDEN), GRPC_STATUS_PERMISSION_DENIED);
}

static void test_part_08_partner_identity_cannot_change_memberships_it_did_not_create(void **state) {
    (void)state;
    acct_membership m = linked_super_admin();
    acct_membership staff = member(ACCT_ROLE_SUPER_ADMIN);
    staff.created_by_user_id = 1;
    acct_act act = {.kind = ACCT_ACT_UPDATE_MEMBERSHIP, .hub_id = 1, .target = &staff, .roles_after = 0};
    assert_int_equal(acct_rule_partner_identity(7, &m, &act), OM_E_PARTNER_IDENTITY_FORBIDDEN);
    /* nor its own membership, which the client created by approving */
    m.created_by_user_id = 1;
    act.target = &m;
    act.roles_after = ACCT_ROLE_MARKETING_ACCESS;
    assert_int_equal(acct_rule_partner_identity(7, &m, &act), OM_E_PARTNER_IDENTITY_FORBIDDEN);
}

static void test_part_08_partner_identity_manages_what_it_created_without_super_admin(void **state) {
    (void)state;
    acct_membership m = linked_super_admin();
    acct_membership mine = member(ACCT_ROLE_MARKETING_ACCESS);
    mine.created_by_user_id = 7;
    acct_act act = {.kind = ACCT_ACT_UPDATE_MEMBERSHIP, .hub_id = 1, .target = &mine,
                    .roles_after = ACCT_ROLE_ACCOUNT_PERMISSIONS};
    assert_int_equal(acct_rule_partner_identity(7, &m, &act), 0);
    act.roles_after |= ACCT_ROLE_SUPER_ADMIN;
    assert_int_equal(acct_rule_partner_identity(7, &m, &act), OM_E_PARTNER_IDENTITY_FORBIDDEN);
    act = (acct_act){.kind = ACCT_ACT_DELETE_MEMBERSHIP, .hub_id = 1, .target = &mine};
    assert_int_equal(acct_rule_partner_identity(7, &m, &act), 0);
    act = (acct_act){.kind = ACCT_ACT_CREATE_MEMBERSHIP, .hub_id = 1, .roles_after = ACCT_ROLE_MARKETING_ACCESS};
    assert_int_equal(acct_rule_partner_identity(7, &m, &act), 0);
    act.roles_after = ACCT_ROLE_SUPER_ADMIN;
    assert_int_equal(acct_rule_partner_identity(7, &m, &act), OM_E_PARTNER_IDENTITY_FORBIDDEN);
}

static void test_part_08_partner_identity_never_decides_the_account_existence(void **state) {
    (void)state;
    acct_membership m = linked_super_admin();
    acct_act state_act = {.kind = ACCT_ACT_SET_ACCOUNT_STATE, .hub_id = 1};
    acct_act delete_act = {.kind = ACCT_ACT_DELETE_ACCOUNT, .hub_id = 1};
    acct_act unknown = {.kind = (acct_act_kind)99, .hub_id = 1};
    assert_int_equal(acct_rule_partner_identity(7, &m, &state_act), OM_E_PARTNER_IDENTITY_FORBIDDEN);
    assert_int_equal(acct_rule_partner_identity(7, &m, &delete_act), OM_E_PARTNER_IDENTITY_FORBIDDEN);
    assert_int_equal(acct_rule_partner_identity(7, &m, &unknown), OM_E_PARTNER_IDENTITY_FORBIDDEN);
    /* the client's own staff, and a member who predates the link, may */
    acct_membership own = member(ACCT_ROLE_SUPER_ADMIN);
    assert_int_equal(acct_rule_partner_identity(7, &own, &delete_act), 0);
    own.partner_hub_id = 555;
    own.assignment_id = "as-1";
    assert_int_equal(acct_rule_partner_identity(7, &own, &delete_act), 0);
    assert_int_equal(acct_rule_partner_identity(7, NULL, &delete_act), 0);
    /* what it can never refuse need not be looked up, and nothing else is skipped */
    acct_membership linked = linked_super_admin();
    for (int k = ACCT_ACT_USER; k <= ACCT_ACT_PARTNER_SYNC; k++) {
        acct_act act = {.kind = (acct_act_kind)k, .hub_id = 1, .roles_after = ACCT_ROLE_SUPER_ADMIN};
        if (!acct_partner_identity_matters(&act)) assert_int_equal(acct_rule_partner_identity(7, &linked, &act), 0);
    }
    assert_true(acct_partner_identity_matters(&delete_act));
}

static void test_part_08_client_super_admin_removes_member(void **state) {
    (void)state;
    om_actor a = user(7);
    acct_membership m = member(ACCT_ROLE_SUPER_ADMIN);
    assert_int_equal(acct_rule_remove_membership(&a, &m), 0);
}

static void test_part_08_client_account_permissions_removes_member(void **state) {
    (void)state;
    om_actor a = user(7);
    acct_membership m = member(ACCT_ROLE_ACCOUNT_PERMISSIONS);
    assert_int_equal(acct_rule_remove_membership(&a, &m), 0);
}

static void test_part_08_member_without_manage_role_is_denied(void **state) {
    (void)state;
    om_actor a = user(7);
    acct_membership m = member(ACCT_ROLE_MARKETING_ACCESS | ACCT_ROLE_PARTNER_ADMIN);
    assert_int_equal(acct_rule_remove_membership(&a, &m), OM_E_PERMISSION_DENIED);
    assert_int_equal(acct_rule_remove_membership(&a, NULL), OM_E_NOT_FOUND); /* AIP-193 */
}

static void test_part_08_member_before_assignment_still_acts_for_client(void **state) {
    (void)state;
    om_actor a = user(7);
    /* the client's own admin who was later also assigned by a partner */
    acct_membership m = member(ACCT_ROLE_SUPER_ADMIN);
    m.partner_hub_id = 555;
    m.assignment_id = "as-1";
    m.link_owns_membership = false;
    assert_int_equal(acct_rule_remove_membership(&a, &m), 0);
}

static void test_part_08_only_partners_service_removes_for_partner(void **state) {
    (void)state;
    om_actor partners = service("partners");
    om_actor orgs = service("organizations");
    assert_int_equal(acct_rule_remove_membership(&partners, NULL), 0);
    assert_int_equal(acct_rule_remove_membership(&orgs, NULL), OM_E_PERMISSION_DENIED);
}

/* ---- managing and viewing -------------------------------------------------- */

static void test_manage_requires_super_admin_or_account_permissions(void **state) {
    (void)state;
    om_actor a = user(7);
    acct_membership sa = member(ACCT_ROLE_SUPER_ADMIN);
    acct_membership ap = member(ACCT_ROLE_ACCOUNT_PERMISSIONS);
    acct_membership mk = member(ACCT_ROLE_MARKETING_ACCESS);
    om_actor svc = service("organizations");
    assert_int_equal(acct_rule_manage_account(&a, &sa), 0);
    assert_int_equal(acct_rule_manage_account(&a, &ap), 0);
    assert_int_equal(acct_rule_manage_account(&a, &mk), OM_E_PERMISSION_DENIED);
    assert_int_equal(acct_rule_manage_account(&a, NULL), OM_E_NOT_FOUND); /* AIP-193 */
    assert_int_equal(acct_rule_manage_account(&svc, NULL), 0);
}

static void test_view_account_requires_membership(void **state) {
    (void)state;
    om_actor a = user(7);
    acct_membership mk = member(0);
    assert_int_equal(acct_rule_view_account(&a, &mk), 0);
    assert_int_equal(acct_rule_view_account(&a, NULL), OM_E_NOT_FOUND); /* AIP-193 */
}

static void test_account_permissions_cannot_grant_super_admin(void **state) {
    (void)state;
    om_actor a = user(7);
    acct_membership ap = member(ACCT_ROLE_ACCOUNT_PERMISSIONS);
    acct_membership sa = member(ACCT_ROLE_SUPER_ADMIN);
    assert_int_equal(acct_rule_change_roles(&a, &ap, 0, ACCT_ROLE_SUPER_ADMIN), OM_E_PERMISSION_DENIED);
    assert_int_equal(acct_rule_change_roles(&a, &ap, ACCT_ROLE_SUPER_ADMIN, 0), OM_E_PERMISSION_DENIED);
    assert_int_equal(acct_rule_change_roles(&a, &ap, 0, ACCT_ROLE_MARKETING_ACCESS), 0);
    assert_int_equal(acct_rule_change_roles(&a, &sa, 0, ACCT_ROLE_SUPER_ADMIN), 0);
}

static void test_last_super_admin_is_kept_for_users_only(void **state) {
    (void)state;
    om_actor a = user(7);
    om_actor partners = service("partners");
    assert_int_equal(acct_rule_keep_super_admin(&a, 0), OM_E_FAILED_PRECONDITION);
    assert_int_equal(acct_rule_keep_super_admin(&a, 1), 0);
    assert_int_equal(acct_rule_keep_super_admin(&partners, 0), 0);
}

static void test_create_account_by_user_but_explicit_hub_id_only_for_imports(void **state) {
    (void)state;
    om_actor a = user(7);
    om_actor svc = service("importer");
    assert_int_equal(acct_rule_create_account(&a, 0), 0);
    assert_int_equal(acct_rule_create_account(&a, 123), OM_E_PERMISSION_DENIED);
    assert_int_equal(acct_rule_create_account(&svc, 123), 0);
    assert_int_equal(acct_rule_create_account(NULL, 0), OM_E_UNAUTHENTICATED);
}

static void test_create_user_by_service_or_account_manager(void **state) {
    (void)state;
    om_actor a = user(7);
    om_actor svc = service("identity");
    assert_int_equal(acct_rule_create_user(&svc, false, 99), 0);
    assert_int_equal(acct_rule_create_user(&a, true, 0), 0);
    assert_int_equal(acct_rule_create_user(&a, false, 0), OM_E_PERMISSION_DENIED);
    assert_int_equal(acct_rule_create_user(&a, true, 99), OM_E_PERMISSION_DENIED);
}

static void test_users_see_themselves_and_colleagues(void **state) {
    (void)state;
    om_actor a = user(7);
    assert_int_equal(acct_rule_view_user(&a, 7, false), 0);
    assert_int_equal(acct_rule_view_user(&a, 8, true), 0);
    assert_int_equal(acct_rule_view_user(&a, 8, false), OM_E_NOT_FOUND); /* AIP-193 */
    assert_int_equal(acct_rule_change_user(&a, 7), 0);
    assert_int_equal(acct_rule_change_user(&a, 8), OM_E_PERMISSION_DENIED);
}

static void test_internal_rpc_requires_service_identity(void **state) {
    (void)state;
    om_actor a = user(7);
    om_actor partners = service("partners");
    om_actor orgs = service("organizations");
    assert_int_equal(acct_rule_internal(&a, NULL), OM_E_SERVICE_IDENTITY_REQUIRED);
    assert_int_equal(om_err_status(OM_E_SERVICE_IDENTITY_REQUIRED), GRPC_STATUS_PERMISSION_DENIED);
    assert_int_equal(acct_rule_internal(&orgs, NULL), 0);
    assert_int_equal(acct_rule_internal(&orgs, "partners"), OM_E_PERMISSION_DENIED);
    assert_int_equal(acct_rule_internal(&partners, "partners"), 0);
}

static void test_part_01_partner_employee_only_in_partner_account(void **state) {
    (void)state;
    assert_int_equal(acct_rule_partner_employee(ACCT_KIND_STANDARD, true), OM_E_NOT_PARTNER_ACCOUNT);
    assert_int_equal(acct_rule_partner_employee(ACCT_KIND_SANDBOX, true), OM_E_NOT_PARTNER_ACCOUNT);
    assert_int_equal(acct_rule_partner_employee(ACCT_KIND_PARTNER, true), 0);
    assert_int_equal(acct_rule_partner_employee(ACCT_KIND_STANDARD, false), 0);
}

/* ---- downgrades and events (feed ORG-09, CONN-05) -------------------------- */

static void test_account_downgrade_detected_when_last_professional_hub_drops(void **state) {
    (void)state;
    acct_account before = account();
    before.subs[1] = (acct_subscription){ACCT_HUB_SALES, ACCT_TIER_STARTER};
    before.n_subs = 2;
    acct_account after = before;
    after.subs[0].tier = ACCT_TIER_STARTER;
    assert_true(acct_is_downgrade(&before, &after));

    acct_event_kind ev[ACCT_MAX_UPDATE_EVENTS];
    int n = acct_update_events(&before, &after, ev);
    assert_int_equal(n, 3);
    assert_int_equal(ev[0], ACCT_EV_ACCOUNT_UPDATED);
    assert_int_equal(ev[1], ACCT_EV_SUBSCRIPTIONS_CHANGED);
    assert_int_equal(ev[2], ACCT_EV_ACCOUNT_DOWNGRADED);
}

static void test_account_downgrade_detected_when_subscriptions_removed(void **state) {
    (void)state;
    acct_account before = account();
    acct_account after = before;
    after.n_subs = 0;
    assert_true(acct_is_downgrade(&before, &after));
}

static void test_account_downgrade_not_detected_while_another_hub_stays_professional(void **state) {
    (void)state;
    acct_account before = account();
    before.subs[1] = (acct_subscription){ACCT_HUB_SERVICE, ACCT_TIER_ENTERPRISE};
    before.n_subs = 2;
    acct_account after = before;
    after.subs[0].tier = ACCT_TIER_FREE;
    assert_false(acct_is_downgrade(&before, &after));
    acct_event_kind ev[ACCT_MAX_UPDATE_EVENTS];
    assert_int_equal(acct_update_events(&before, &after, ev), 2);
}

static void test_account_downgrade_not_detected_when_never_professional(void **state) {
    (void)state;
    acct_account before = account();
    before.subs[0].tier = ACCT_TIER_STARTER;
    acct_account after = before;
    after.subs[0].tier = ACCT_TIER_FREE;
    assert_false(acct_is_downgrade(&before, &after));
}

static void test_marketing_enterprise_detected(void **state) {
    (void)state;
    acct_account a = account();
    assert_false(acct_has_marketing_enterprise(&a));
    a.subs[0].tier = ACCT_TIER_ENTERPRISE;
    assert_true(acct_has_marketing_enterprise(&a));
    a.subs[0].hub = ACCT_HUB_SALES;
    assert_false(acct_has_marketing_enterprise(&a));
}

static void test_update_events_for_location_and_sensitive_data(void **state) {
    (void)state;
    acct_account before = account();
    acct_account after = before;
    after.hosting_location = "na1";
    after.sensitive_data_enabled = true;
    acct_event_kind ev[ACCT_MAX_UPDATE_EVENTS];
    int n = acct_update_events(&before, &after, ev);
    assert_int_equal(n, 3);
    assert_int_equal(ev[0], ACCT_EV_ACCOUNT_UPDATED);
    assert_int_equal(ev[1], ACCT_EV_HOSTING_LOCATION_CHANGED);
    assert_int_equal(ev[2], ACCT_EV_SENSITIVE_DATA_ENABLED);

    before = after;
    after.sensitive_data_enabled = false;
    n = acct_update_events(&before, &after, ev);
    assert_int_equal(n, 2);
    assert_int_equal(ev[1], ACCT_EV_SENSITIVE_DATA_DISABLED);
}

static void test_update_events_none_when_nothing_changed(void **state) {
    (void)state;
    acct_account before = account();
    acct_account after = before;
    after.name = strdup("Acme Marketing"); /* equal content, other pointer */
    acct_event_kind ev[ACCT_MAX_UPDATE_EVENTS];
    assert_int_equal(acct_update_events(&before, &after, ev), 0);
    free((void *)after.name);
}

static void test_subscriptions_compare_as_sets(void **state) {
    (void)state;
    acct_account a = account(), b = account();
    a.subs[1] = (acct_subscription){ACCT_HUB_SALES, ACCT_TIER_FREE};
    a.n_subs = 2;
    b.subs[0] = (acct_subscription){ACCT_HUB_SALES, ACCT_TIER_FREE};
    b.subs[1] = (acct_subscription){ACCT_HUB_MARKETING, ACCT_TIER_PROFESSIONAL};
    b.n_subs = 2;
    assert_true(acct_subs_equal(&a, &b));
    acct_subs_sort(&b);
    assert_int_equal(b.subs[0].hub, ACCT_HUB_MARKETING);
}

/* ---- validation -------------------------------------------------------------- */

static void test_valid_account_has_no_violations(void **state) {
    (void)state;
    recorder r = {0};
    acct_account a = account();
    assert_int_equal(validate_account(&a, &r), 0);
}

static void test_account_name_length_counts_characters(void **state) {
    (void)state;
    char name[1024];
    recorder r = {0};
    acct_account a = account();
    /* 200 three-byte characters are fine, 201 are not */
    name[0] = '\0';
    for (int i = 0; i < 200; i++) strcat(name, "\xe6\x97\xa5");
    a.name = name;
    assert_int_equal(validate_account(&a, &r), 0);
    strcat(name, "x");
    assert_int_equal(validate_account(&a, &r), 1);
    assert_true(recorded(&r, "account.name"));
}

static void test_account_name_rejects_empty_blank_controls_and_bad_utf8(void **state) {
    (void)state;
    const char *bad[] = {"", "   ", "tab\there", "\xc3\x28", "\xed\xa0\x80", "\xc0\xaf", NULL};
    for (int i = 0; bad[i] != NULL; i++) {
        recorder r = {0};
        acct_account a = account();
        a.name = bad[i];
        assert_int_equal(validate_account(&a, &r), 1);
        assert_true(recorded(&r, "account.name"));
    }
}

static void test_account_requires_kind_and_allowed_location(void **state) {
    (void)state;
    recorder r = {0};
    acct_account a = account();
    a.kind = ACCT_KIND_UNSPECIFIED;
    a.hosting_location = "mars1";
    assert_int_equal(validate_account(&a, &r), 2);
    assert_true(recorded(&r, "account.kind"));
    assert_true(recorded(&r, "account.hosting_location"));

    recorder r2 = {0};
    a = account();
    a.kind = (acct_kind)42;
    a.hosting_location = "";
    assert_int_equal(validate_account(&a, &r2), 2);
}

static void test_account_subscription_hub_twice_is_refused(void **state) {
    (void)state;
    recorder r = {0};
    acct_account a = account();
    a.subs[1] = (acct_subscription){ACCT_HUB_MARKETING, ACCT_TIER_FREE};
    a.subs[2] = (acct_subscription){ACCT_HUB_UNSPECIFIED, ACCT_TIER_FREE};
    a.subs[3] = (acct_subscription){ACCT_HUB_CMS, (acct_tier)9};
    a.n_subs = 4;
    assert_int_equal(validate_account(&a, &r), 3);
    assert_true(recorded(&r, "account.subscriptions[1].hub"));
    assert_true(recorded(&r, "account.subscriptions[2].hub"));
    assert_true(recorded(&r, "account.subscriptions[3].tier"));
}

static void test_account_mrr_currency_and_amount(void **state) {
    (void)state;
    recorder r = {0};
    acct_account a = account();
    a.mrr_amount_minor = -1;
    memcpy(a.mrr_currency, "eur", 4);
    assert_int_equal(validate_account(&a, &r), 2);
    assert_true(recorded(&r, "account.mrr.amount_minor"));
    assert_true(recorded(&r, "account.mrr.currency_code"));

    recorder r2 = {0};
    a = account();
    a.mrr_currency[0] = '\0';
    assert_int_equal(validate_account(&a, &r2), 1); /* an amount needs a currency */
    a.mrr_amount_minor = 0;
    assert_int_equal(validate_account(&a, &r2), 0); /* no MRR at all is fine */
}

static void test_hosting_locations_come_from_configuration(void **state) {
    (void)state;
    assert_true(acct_location_allowed("eu1", "na1, eu1 ,ap1"));
    assert_true(acct_location_allowed("na1", "na1"));
    assert_false(acct_location_allowed("eu", "na1,eu1"));
    assert_false(acct_location_allowed("eu1x", "na1,eu1"));
    assert_false(acct_location_allowed("", "na1,eu1"));
}

static void test_email_shapes(void **state) {
    (void)state;
    const char *good[] = {"a@b.co", "Mario.Rossi+tag@example.it", "x_y-z@mail.sub.example.com",
                          "o'neil@example.ie", NULL};
    const char *bad[] = {"", "plain", "@example.com", "a@", "a@b", "a@@b.com", "a b@c.com",
                         ".a@b.com", "a.@b.com", "a..b@c.com", "a@-b.com", "a@b-.com",
                         "a@b..com", "a@1.2", "\"q\"@b.com", NULL};
    for (int i = 0; good[i]; i++) assert_true(acct_email_valid(good[i]));
    for (int i = 0; bad[i]; i++) assert_false(acct_email_valid(bad[i]));
    char longer[300];
    memset(longer, 'a', 250);
    memcpy(longer + 250, "@b.co", 6);
    assert_false(acct_email_valid(longer));
}

static void test_locale_bcp47_shapes_are_canonicalised(void **state) {
    (void)state;
    const char *in[] = {"it", "ja", "pt-BR", "pt-br", "en_us", "zh-hant-tw", "es-419", "sl-rozaj", NULL};
    const char *out[] = {"it", "ja", "pt-BR", "pt-BR", "en-US", "zh-Hant-TW", "es-419", "sl-rozaj"};
    char buf[36];
    for (int i = 0; in[i]; i++) {
        assert_true(acct_locale_canonical(in[i], buf, sizeof buf));
        assert_string_equal(buf, out[i]);
    }
    const char *bad[] = {"", "e", "english", "en-", "en--US", "123", "en-US-x-private", "-en", NULL};
    for (int i = 0; bad[i]; i++) assert_false(acct_locale_canonical(bad[i], buf, sizeof buf));
}

static void test_user_validation_reports_each_field(void **state) {
    (void)state;
    recorder r = {0};
    acct_violations v = {record, &r, 0};
    char locale[36];
    acct_user u = {.email = "nope", .display_name = "", .locale = "xx-yy-zz-!!"};
    assert_int_equal(acct_validate_user(&u, locale, "user", &v), 3);
    assert_true(recorded(&r, "user.email"));
    assert_true(recorded(&r, "user.display_name"));
    assert_true(recorded(&r, "user.locale"));

    acct_user ok = {.email = "ana@example.es", .display_name = "Ana", .locale = NULL};
    assert_int_equal(acct_validate_user(&ok, locale, "user", &v), 0);
    assert_string_equal(locale, "en");
}

static unsigned role_of(int v) { return (v >= 1 && v <= 4) ? 1u << (v - 1) : 0; }

static void test_unknown_role_values_are_violations(void **state) {
    (void)state;
    recorder r = {0};
    acct_violations v = {record, &r, 0};
    int values[] = {1, 4, 0, 9};
    unsigned mask;
    assert_int_equal(acct_validate_bits(values, 4, role_of, "membership.roles", &v, &mask), 2);
    assert_true(recorded(&r, "membership.roles[2]"));
    assert_true(recorded(&r, "membership.roles[3]"));
    assert_int_equal(mask, ACCT_ROLE_SUPER_ADMIN | ACCT_ROLE_MARKETING_ACCESS);
}

/* ---- masks -------------------------------------------------------------------- */

static void test_account_mask_applies_named_fields_only(void **state) {
    (void)state;
    recorder r = {0};
    acct_violations v = {record, &r, 0};
    acct_account cur = account(), patch = {0};
    patch.name = "New name";
    patch.hosting_location = "na1";
    patch.sensitive_data_enabled = true;
    const char *paths[] = {"name", "sensitive_data_enabled"};
    assert_int_equal(acct_account_apply_mask(&cur, &patch, paths, 2, &v), 0);
    assert_string_equal(cur.name, "New name");
    assert_string_equal(cur.hosting_location, "eu1");
    assert_true(cur.sensitive_data_enabled);
    assert_int_equal(cur.n_subs, 1);
}

static void test_account_mask_refuses_unknown_immutable_and_empty(void **state) {
    (void)state;
    recorder r = {0};
    acct_violations v = {record, &r, 0};
    acct_account cur = account(), patch = {0};
    const char *paths[] = {"kind", "colour", "state"};
    assert_int_equal(acct_account_apply_mask(&cur, &patch, paths, 3, &v), 3);
    assert_int_equal(cur.kind, ACCT_KIND_STANDARD);
    assert_int_equal(acct_account_apply_mask(&cur, &patch, NULL, 0, &v), 1);
    assert_true(recorded(&r, "update_mask"));
}

static void test_membership_mask_refuses_partner_fields(void **state) {
    (void)state;
    recorder r = {0};
    acct_violations v = {record, &r, 0};
    acct_membership cur = member(0), patch = member(ACCT_ROLE_MARKETING_ACCESS);
    patch.partner_employee = true;
    patch.seats = ACCT_SEAT_SALES;
    const char *paths[] = {"roles", "seats", "partner_employee", "partner_link.assignment_id"};
    assert_int_equal(acct_membership_apply_mask(&cur, &patch, paths, 4, &v), 2);
    assert_int_equal(cur.roles, ACCT_ROLE_MARKETING_ACCESS);
    assert_int_equal(cur.seats, ACCT_SEAT_SALES);
    assert_false(cur.partner_employee);
}

static void test_user_mask(void **state) {
    (void)state;
    recorder r = {0};
    acct_violations v = {record, &r, 0};
    acct_user cur = {.user_id = 1, .email = "a@b.co", .display_name = "A", .locale = "en"};
    acct_user patch = {.email = "c@d.co", .display_name = "C", .locale = "it", .two_factor_enabled = true};
    const char *paths[] = {"locale", "two_factor_enabled", "user_id"};
    assert_int_equal(acct_user_apply_mask(&cur, &patch, paths, 3, &v), 1);
    assert_string_equal(cur.locale, "it");
    assert_string_equal(cur.email, "a@b.co");
    assert_true(cur.two_factor_enabled);
}

/* ---- etags and names ------------------------------------------------------------ */

static void test_etag_round_trip_and_stale(void **state) {
    (void)state;
    char etag[ACCT_ETAG_MAX];
    int64_t v = 0;
    acct_etag_encode(42, etag);
    assert_string_equal(etag, "\"v42\"");
    assert_int_equal(acct_etag_decode(etag, &v), 0);
    assert_int_equal(v, 42);
    assert_int_equal(acct_etag_check(etag, 42), 0);
    assert_int_equal(acct_etag_check(etag, 43), OM_E_ETAG_MISMATCH);
    assert_int_equal(om_err_status(OM_E_ETAG_MISMATCH), GRPC_STATUS_ABORTED);
    assert_int_equal(acct_etag_check("", 43), 0);
    assert_int_equal(acct_etag_check(NULL, 43), 0);
}

static void test_etag_malformed_is_invalid_argument(void **state) {
    (void)state;
    const char *bad[] = {"42", "\"v\"", "\"v4x\"", "v42", "\"v042\"", "\"v99999999999999999999\"", NULL};
    int64_t v;
    for (int i = 0; bad[i]; i++) {
        assert_int_equal(acct_etag_decode(bad[i], &v), -1);
        assert_int_equal(acct_etag_check(bad[i], 1), OM_E_INVALID_ARGUMENT);
    }
}

static void test_role_and_seat_names_round_trip(void **state) {
    (void)state;
    char buf[128];
    unsigned roles = ACCT_ROLE_SUPER_ADMIN | ACCT_ROLE_MARKETING_ACCESS;
    acct_roles_literal(roles, buf, sizeof buf);
    assert_string_equal(buf, "{SUPER_ADMIN,MARKETING_ACCESS}");
    assert_int_equal(acct_roles_from_names("SUPER_ADMIN,MARKETING_ACCESS"), roles);
    acct_seats_literal(0, buf, sizeof buf);
    assert_string_equal(buf, "{}");
    assert_int_equal(acct_seats_from_names("SALES,SERVICE"), ACCT_SEAT_ALL);
    assert_int_equal(acct_seats_from_names(""), 0);
    assert_int_equal(acct_hub_from_name("COMMERCE"), ACCT_HUB_COMMERCE);
    assert_int_equal(acct_tier_from_name("nope"), ACCT_TIER_UNSPECIFIED);
    assert_string_equal(acct_kind_name(ACCT_KIND_SANDBOX), "SANDBOX");
    assert_null(acct_kind_name((acct_kind)9));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_part_08_partner_actor_cannot_remove_member),
        cmocka_unit_test(test_part_08_partner_identity_cannot_change_memberships_it_did_not_create),
        cmocka_unit_test(test_part_08_partner_identity_manages_what_it_created_without_super_admin),
        cmocka_unit_test(test_part_08_partner_identity_never_decides_the_account_existence),
        cmocka_unit_test(test_part_08_client_super_admin_removes_member),
        cmocka_unit_test(test_part_08_client_account_permissions_removes_member),
        cmocka_unit_test(test_part_08_member_without_manage_role_is_denied),
        cmocka_unit_test(test_part_08_member_before_assignment_still_acts_for_client),
        cmocka_unit_test(test_part_08_only_partners_service_removes_for_partner),
        cmocka_unit_test(test_manage_requires_super_admin_or_account_permissions),
        cmocka_unit_test(test_view_account_requires_membership),
        cmocka_unit_test(test_account_permissions_cannot_grant_super_admin),
        cmocka_unit_test(test_last_super_admin_is_kept_for_users_only),
        cmocka_unit_test(test_create_account_by_user_but_explicit_hub_id_only_for_imports),
        cmocka_unit_test(test_create_user_by_service_or_account_manager),
        cmocka_unit_test(test_users_see_themselves_and_colleagues),
        cmocka_unit_test(test_internal_rpc_requires_service_identity),
        cmocka_unit_test(test_part_01_partner_employee_only_in_partner_account),
        cmocka_unit_test(test_account_downgrade_detected_when_last_professional_hub_drops),
        cmocka_unit_test(test_account_downgrade_detected_when_subscriptions_removed),
        cmocka_unit_test(test_account_downgrade_not_detected_while_another_hub_stays_professional),
        cmocka_unit_test(test_account_downgrade_not_detected_when_never_professional),
        cmocka_unit_test(test_marketing_enterprise_detected),
        cmocka_unit_test(test_update_events_for_location_and_sensitive_data),
        cmocka_unit_test(test_update_events_none_when_nothing_changed),
        cmocka_unit_test(test_subscriptions_compare_as_sets),
        cmocka_unit_test(test_valid_account_has_no_violations),
        cmocka_unit_test(test_account_name_length_counts_characters),
        cmocka_unit_test(test_account_name_rejects_empty_blank_controls_and_bad_utf8),
        cmocka_unit_test(test_account_requires_kind_and_allowed_location),
        cmocka_unit_test(test_account_subscription_hub_twice_is_refused),
        cmocka_unit_test(test_account_mrr_currency_and_amount),
        cmocka_unit_test(test_hosting_locations_come_from_configuration),
        cmocka_unit_test(test_email_shapes),
        cmocka_unit_test(test_locale_bcp47_shapes_are_canonicalised),
        cmocka_unit_test(test_user_validation_reports_each_field),
        cmocka_unit_test(test_unknown_role_values_are_violations),
        cmocka_unit_test(test_account_mask_applies_named_fields_only),
        cmocka_unit_test(test_account_mask_refuses_unknown_immutable_and_empty),
        cmocka_unit_test(test_membership_mask_refuses_partner_fields),
        cmocka_unit_test(test_user_mask),
        cmocka_unit_test(test_etag_round_trip_and_stale),
        cmocka_unit_test(test_etag_malformed_is_invalid_argument),
        cmocka_unit_test(test_role_and_seat_names_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
