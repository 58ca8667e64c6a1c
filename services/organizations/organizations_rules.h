/* organizations_rules.h — the pure rules of SPEC §3 (no I/O): eligibility
 * reasons, the five-account cap, the Enterprise checks, the MFA window, the
 * automatic departures and etags. Plain structs in, codes out, so that
 * tests/unit/test_organizations_rules.c covers them without a database. */
#ifndef ORGANIZATIONS_RULES_H
#define ORGANIZATIONS_RULES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "om_ids.h"

#define ORG_MAX_ACCOUNTS 5   /* ORG-01: the Enterprise account plus up to 4 more */
#define ORG_MAX_BATCH 100    /* SPEC 8 */
#define ORG_ETAG_MAX 24
#define ORG_LOCATION_MAX 64
#define ORG_NAME_MAX 808     /* 200 characters of UTF-8, with room */
#define ORG_MFA_WINDOW_DEFAULT_S 300

/* The numbers are those of orgmesh.accounts.v1 (AccountKind, AccountState,
 * Hub, Tier, Role). */
enum { ORG_KIND_SANDBOX = 3 };
enum { ORG_STATE_ACTIVE = 1, ORG_STATE_DEACTIVATED = 2 };
enum { ORG_HUB_MARKETING = 1 };
enum { ORG_TIER_PROFESSIONAL = 3, ORG_TIER_ENTERPRISE = 4 };
/* Role bits: 1 << (Role value - 1). */
enum { ORG_ROLE_SUPER_ADMIN = 1u << 0, ORG_ROLE_PARTNER_ADMIN = 1u << 1 };

/* The local copy of the account fields the rules read (SPEC 2). */
typedef struct org_account {
    uint64_t hub_id;
    char name[ORG_NAME_MAX];
    int kind;
    char hosting_location[ORG_LOCATION_MAX];
    int state;
    bool has_professional;      /* some hub at PROFESSIONAL or ENTERPRISE */
    bool marketing_enterprise;  /* MARKETING at ENTERPRISE */
    bool deleted;
    int64_t version;
} org_account;

/* Ineligibility reasons as bits; bit i is IneligibilityReason value i + 1,
 * in the order ORG-05 lists them. */
enum {
    ORG_INELIGIBLE_SANDBOX = 1u << 0,
    ORG_INELIGIBLE_NO_PROFESSIONAL = 1u << 1,
    ORG_INELIGIBLE_HOSTING_LOCATION = 1u << 2,
    ORG_INELIGIBLE_DEACTIVATED = 1u << 3,
    ORG_INELIGIBLE_ALREADY_IN_ORG = 1u << 4,
    ORG_INELIGIBLE_NOT_SUPER_ADMIN = 1u << 5,
};
#define ORG_INELIGIBLE_COUNT 6
/* The ORG-02 reasons (everything but the actor's role, ORG-03). */
#define ORG_INELIGIBLE_ORG02 0x1fu

/* Subscriptions as parallel arrays of Hub and Tier values. */
bool org_subs_professional(const int *hubs, const int *tiers, size_t n);
bool org_subs_marketing_enterprise(const int *hubs, const int *tiers, size_t n);

/* ORG-02, ORG-03, ORG-05: every reason `a` may not join an organization
 * hosted in `location` (NULL or "": no location check), given whether it is
 * already in an organization and whether the actor is SUPER_ADMIN in it.
 * 0 = eligible. */
unsigned org_eligibility(const org_account *a, const char *location, bool in_organization,
                         bool actor_super_admin);
/* The IneligibilityReason value of one bit; 0 for anything else. */
int org_reason_value(unsigned bit);
/* The OM_E_* code of one bit (SANDBOX, NO_PROFESSIONAL_SUBSCRIPTION, ...). */
int org_reason_code(unsigned bit);
/* The first ORG-02 reason of `reasons` in the order of ORG-05, as a bit; 0
 * when none. */
unsigned org_first_org02_reason(unsigned reasons);

/* ORG-01: 0, or OM_E_ORG_ACCOUNT_LIMIT when `current` + `adding` accounts
 * exceed ORG_MAX_ACCOUNTS. */
int org_cap_check(int current, int adding);

/* ORG-04: 0, or OM_E_MFA_REQUIRED unless the user has two-factor enabled and
 * the second factor was verified (mfa_at, unix s) at most window_s before
 * now (a moment in the future, beyond 30 s of clock leeway, does not count). */
int org_mfa_check(bool two_factor_enabled, int64_t mfa_at, int64_t now, int64_t window_s);

/* ORG-08: SUPER_ADMIN or PARTNER_ADMIN. */
static inline bool org_roles_view(unsigned roles) {
    return (roles & (ORG_ROLE_SUPER_ADMIN | ORG_ROLE_PARTNER_ADMIN)) != 0;
}

/* ORG-09: the DepartureReason value for which a member account `a` leaves
 * an organization hosted in `location`, or 0 when it stays. Deleted (6)
 * before DEACTIVATED (4) before DOWNGRADED (2) before
 * HOSTING_LOCATION_CHANGED (3). */
int org_departure(const org_account *a, const char *location);

/* ORG-10: whether any of the members has MARKETING ENTERPRISE. */
bool org_has_enterprise(const org_account *members, size_t n);

/* Etags: "\"o<version>\"". decode returns 0 or -1 when malformed. */
static inline void org_etag_encode(int64_t v, char out[ORG_ETAG_MAX]) { om_etag_encode('o', v, out); }
static inline int org_etag_decode(const char *etag, int64_t *v) { return om_etag_decode('o', etag, v); }

/* Whether `s` is a canonical lower- or upper-case UUID (organization ids). */
static inline bool org_uuid_valid(const char *s) { return om_uuid_valid(s); }

/* The first duplicate among ids[0..n) (0 when none). O(n²): n <= 100. */
uint64_t org_first_duplicate(const uint64_t *ids, size_t n);

#endif
