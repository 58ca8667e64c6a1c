/* organizations_rules.c — the pure rules of SPEC §3 (see organizations_rules.h).
 * No I/O: the store reads the local copies, the handlers call these. */
#include "organizations_rules.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "om_err.h"

bool org_subs_professional(const int *hubs, const int *tiers, size_t n) {
    (void)hubs;
    for (size_t i = 0; i < n; i++)
        if (tiers[i] >= ORG_TIER_PROFESSIONAL) return true; /* ORG-02: any hub */
    return false;
}

bool org_subs_marketing_enterprise(const int *hubs, const int *tiers, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (hubs[i] == ORG_HUB_MARKETING && tiers[i] == ORG_TIER_ENTERPRISE) return true;
    return false;
}

/* ORG-02, ORG-03, ORG-05 */
unsigned org_eligibility(const org_account *a, const char *location, bool in_organization,
                         bool actor_super_admin) {
    unsigned r = 0;
    if (a->kind == ORG_KIND_SANDBOX) r |= ORG_INELIGIBLE_SANDBOX;
    if (!a->has_professional) r |= ORG_INELIGIBLE_NO_PROFESSIONAL;
    if (location != NULL && location[0] != '\0' && strcmp(a->hosting_location, location) != 0)
        r |= ORG_INELIGIBLE_HOSTING_LOCATION;
    if (a->state != ORG_STATE_ACTIVE || a->deleted) r |= ORG_INELIGIBLE_DEACTIVATED;
    if (in_organization) r |= ORG_INELIGIBLE_ALREADY_IN_ORG;
    if (!actor_super_admin) r |= ORG_INELIGIBLE_NOT_SUPER_ADMIN;
    return r;
}

int org_reason_value(unsigned bit) {
    for (int i = 0; i < ORG_INELIGIBLE_COUNT; i++)
        if (bit == 1u << i) return i + 1;
    return 0;
}

int org_reason_code(unsigned bit) {
    switch (bit) {
    case ORG_INELIGIBLE_SANDBOX: return OM_E_SANDBOX;
    case ORG_INELIGIBLE_NO_PROFESSIONAL: return OM_E_NO_PROFESSIONAL_SUBSCRIPTION;
    case ORG_INELIGIBLE_HOSTING_LOCATION: return OM_E_HOSTING_LOCATION_MISMATCH;
    case ORG_INELIGIBLE_DEACTIVATED: return OM_E_DEACTIVATED;
    case ORG_INELIGIBLE_ALREADY_IN_ORG: return OM_E_ALREADY_IN_ORGANIZATION;
    case ORG_INELIGIBLE_NOT_SUPER_ADMIN: return OM_E_NOT_SUPER_ADMIN;
    default: return OM_E_ACCOUNT_NOT_ELIGIBLE;
    }
}

unsigned org_first_org02_reason(unsigned reasons) {
    for (int i = 0; i < ORG_INELIGIBLE_COUNT; i++) {
        unsigned bit = 1u << i;
        if ((bit & ORG_INELIGIBLE_ORG02) && (reasons & bit)) return bit;
    }
    return 0;
}

/* ORG-01 */
int org_cap_check(int current, int adding) {
    if (current < 0 || adding < 0 || current + adding > ORG_MAX_ACCOUNTS) return OM_E_ORG_ACCOUNT_LIMIT;
    return 0;
}

/* ORG-04 */
int org_mfa_check(bool two_factor_enabled, int64_t mfa_at, int64_t now, int64_t window_s) {
    if (!two_factor_enabled || mfa_at <= 0) return OM_E_MFA_REQUIRED;
    if (mfa_at > now + 30) return OM_E_MFA_REQUIRED; /* beyond the clock leeway of SPEC 8 */
    if (now - mfa_at > window_s) return OM_E_MFA_REQUIRED;
    return 0;
}

/* ORG-09 (DepartureReason values of organizations.proto) */
int org_departure(const org_account *a, const char *location) {
    if (a->deleted) return 6;                      /* ACCOUNT_DELETED */
    if (a->state != ORG_STATE_ACTIVE) return 4;    /* DEACTIVATED */
    if (!a->has_professional) return 2;            /* DOWNGRADED */
    if (location != NULL && location[0] != '\0' && strcmp(a->hosting_location, location) != 0)
        return 3;                                  /* HOSTING_LOCATION_CHANGED */
    return 0;
}

/* ORG-10 */
bool org_has_enterprise(const org_account *members, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (members[i].marketing_enterprise && !members[i].deleted) return true;
    return false;
}

uint64_t org_first_duplicate(const uint64_t *ids, size_t n) {
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < i; j++)
            if (ids[i] == ids[j]) return ids[i];
    return 0;
}
