/* accounts_rules.h — the accounts service's domain rules as pure functions over
 * plain structs: validation, who may do what (PART-08 among them), downgrade
 * detection, which events a change emits, and etags. No I/O, no protobuf, so
 * tests/unit/test_accounts_rules.c covers them without a database. */
#ifndef ACCOUNTS_RULES_H
#define ACCOUNTS_RULES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "auth.h"

/* ---- the domain (SPEC 1) ----------------------------------------------------------------- */

typedef enum { ACCT_KIND_UNSPECIFIED, ACCT_KIND_STANDARD, ACCT_KIND_PARTNER, ACCT_KIND_SANDBOX } acct_kind;
typedef enum { ACCT_STATE_UNSPECIFIED, ACCT_STATE_ACTIVE, ACCT_STATE_DEACTIVATED } acct_state;

typedef enum {
    ACCT_HUB_UNSPECIFIED,
    ACCT_HUB_MARKETING,
    ACCT_HUB_SALES,
    ACCT_HUB_SERVICE,
    ACCT_HUB_CMS,
    ACCT_HUB_OPERATIONS,
    ACCT_HUB_COMMERCE,
    ACCT_N_HUBS_PLUS_ONE
} acct_hub;
#define ACCT_N_HUBS (ACCT_N_HUBS_PLUS_ONE - 1)

/* Ordered: FREE < STARTER < PROFESSIONAL < ENTERPRISE. */
typedef enum {
    ACCT_TIER_UNSPECIFIED,
    ACCT_TIER_FREE,
    ACCT_TIER_STARTER,
    ACCT_TIER_PROFESSIONAL,
    ACCT_TIER_ENTERPRISE
} acct_tier;

/* Roles and seats are sets, kept as bit masks. */
enum {
    ACCT_ROLE_SUPER_ADMIN = 1u << 0,
    ACCT_ROLE_PARTNER_ADMIN = 1u << 1,
    ACCT_ROLE_ACCOUNT_PERMISSIONS = 1u << 2, /* may manage users and settings */
    ACCT_ROLE_MARKETING_ACCESS = 1u << 3,
    ACCT_ROLE_ALL = (1u << 4) - 1,
};
enum { ACCT_SEAT_SALES = 1u << 0, ACCT_SEAT_SERVICE = 1u << 1, ACCT_SEAT_ALL = (1u << 2) - 1 };

typedef struct acct_subscription {
    acct_hub hub;
    acct_tier tier;
} acct_subscription;

#define ACCT_NAME_MAX 200         /* characters, account and display names */
#define ACCT_EMAIL_MAX 254        /* bytes (RFC 5321 path limit) */
#define ACCT_LOCALE_MAX 35        /* bytes */
#define ACCT_LOCATION_MAX 32      /* bytes */
#define ACCT_DEFAULT_LOCATIONS "na1,eu1,ap1"
#define ACCT_MAX_SUBS_IN 16       /* more than this in one request is refused */

typedef struct acct_account {
    uint64_t hub_id;
    const char *name;
    acct_kind kind;
    const char *hosting_location;
    acct_subscription subs[ACCT_MAX_SUBS_IN]; /* sorted by hub once stored */
    int n_subs;
    bool sensitive_data_enabled;
    acct_state state;
    int64_t mrr_amount_minor;
    char mrr_currency[4]; /* ISO 4217, "" when no MRR is recorded */
    int64_t version;
    int64_t create_time_us, update_time_us;
} acct_account;

typedef struct acct_user {
    uint64_t user_id;
    const char *email;
    const char *display_name;
    const char *locale;
    bool two_factor_enabled;
    int64_t version;
    int64_t create_time_us, update_time_us;
} acct_user;

typedef struct acct_membership {
    uint64_t hub_id;
    uint64_t user_id;
    unsigned roles; /* ACCT_ROLE_* */
    unsigned seats; /* ACCT_SEAT_* */
    bool partner_employee;
    /* partner_link (SPEC 1): set when the membership exists because of a
     * partner's client assignment; 0 / "" when none. */
    uint64_t partner_hub_id;
    const char *assignment_id;
    /* True when the link created the membership (it goes when the link goes);
     * false when the user was a member before the assignment (PART-07). */
    bool link_owns_membership;
    int64_t link_time_us; /* when the link was set, 0 when none */
    /* PART-08: the user who created the membership; 0 when unknown (rows
     * older than migration 002), a service or a rule created it. */
    uint64_t created_by_user_id;
    int64_t version;
    int64_t create_time_us, update_time_us;
} acct_membership;

static inline bool acct_has_partner_link(const acct_membership *m) {
    return m != NULL && m->partner_hub_id != 0;
}

/* Names as stored in PostgreSQL and shown in logs ("MARKETING"); NULL for
 * out-of-range values. The *_from_name functions return the UNSPECIFIED
 * value for unknown names. */
const char *acct_kind_name(acct_kind k);
const char *acct_state_name(acct_state s);
const char *acct_hub_name(acct_hub h);
const char *acct_tier_name(acct_tier t);
const char *acct_role_name(unsigned role_bit);
const char *acct_seat_name(unsigned seat_bit);
acct_kind acct_kind_from_name(const char *s);
acct_state acct_state_from_name(const char *s);
acct_hub acct_hub_from_name(const char *s);
acct_tier acct_tier_from_name(const char *s);
/* A comma-separated list of names ("SUPER_ADMIN,MARKETING_ACCESS") to a mask;
 * unknown names are ignored. */
unsigned acct_roles_from_names(const char *csv);
unsigned acct_seats_from_names(const char *csv);
/* A PostgreSQL text[] literal ("{SUPER_ADMIN,MARKETING_ACCESS}") of a mask,
 * into buf (>= 96 bytes). */
void acct_roles_literal(unsigned roles, char *buf, size_t cap);
void acct_seats_literal(unsigned seats, char *buf, size_t cap);

/* ---- violations -------------------------------------------------------------------------- */

/* Validation reports each bad field through `fn` (rpc_violation in the
 * service, a recorder in the tests) and counts them. */
typedef struct acct_violations {
    void (*fn)(void *arg, const char *field, const char *msg);
    void *arg;
    int n;
} acct_violations;

void acct_violate(acct_violations *v, const char *field, const char *msg);

/* ---- shapes ------------------------------------------------------------------------------ */

/* Number of characters of a UTF-8 string, or -1 if it is not valid UTF-8 or
 * contains control characters (a name must be printable). */
long acct_utf8_chars(const char *s);
/* A display or account name: 1..ACCT_NAME_MAX printable characters, not blank. */
bool acct_name_valid(const char *s);
/* local@domain with a dotted domain, <= 254 bytes, no spaces or quotes. */
bool acct_email_valid(const char *s);
/* BCP-47 shape: language (2-3 letters) [-Script] [-REGION] [-variant...].
 * Writes the canonical casing ("pt-BR", "zh-Hant-TW") into out. Returns
 * false when the shape is wrong. */
bool acct_locale_canonical(const char *in, char *out, size_t cap);
/* Three uppercase ASCII letters (ISO 4217 shape). */
bool acct_currency_valid(const char *s);
/* `loc` is one of the comma-separated `allowed` ("na1,eu1,ap1"). */
bool acct_location_allowed(const char *loc, const char *allowed);

/* ---- validation of whole resources --------------------------------------
 * `prefix` names the request field holding the resource ("account"), so a
 * violation reads "account.subscriptions[1].tier". Each returns the number
 * of violations it added. */

/* Everything a stored account must satisfy (create, and update after the
 * mask is applied). Unknown enum values are violations. */
int acct_validate_account(const acct_account *a, const char *allowed_locations, const char *prefix,
                          acct_violations *v);
/* Email, display name and locale (canonicalised into locale_out, >= 36 bytes). */
int acct_validate_user(const acct_user *u, char *locale_out, const char *prefix, acct_violations *v);
/* Roles and seats as raw enum numbers from the request: every value must be
 * a known role/seat (`role_of`/`seat_of` map a number to a bit, 0 unknown). */
int acct_validate_bits(const int *values, size_t n, unsigned (*bit_of)(int), const char *field,
                       acct_violations *v, unsigned *mask_out);

/* ---- update masks --------------------------------------------------------
 * Apply the FieldMask `paths` of an update: copy the named fields from
 * `patch` into `cur`. Output-only and immutable paths, and unknown ones, are
 * violations on `field` ("update_mask"). An empty mask is a violation too
 * (a partial update must say what it changes). Returns the violations added. */
int acct_account_apply_mask(acct_account *cur, const acct_account *patch, const char *const *paths,
                            size_t n, acct_violations *v);
int acct_user_apply_mask(acct_user *cur, const acct_user *patch, const char *const *paths, size_t n,
                         acct_violations *v);
int acct_membership_apply_mask(acct_membership *cur, const acct_membership *patch,
                               const char *const *paths, size_t n, acct_violations *v);

/* ---- subscriptions and downgrades (feeds ORG-09) ----------------------------------------- */

/* At least one hub at PROFESSIONAL or ENTERPRISE (ORG-02, ORG-09). */
bool acct_has_professional(const acct_account *a);
/* MARKETING at ENTERPRISE (ORG-01). */
bool acct_has_marketing_enterprise(const acct_account *a);
/* Before the change some hub was at PROFESSIONAL or above, after it none is. */
bool acct_is_downgrade(const acct_account *before, const acct_account *after);
/* Same set of (hub, tier), in any order. */
bool acct_subs_equal(const acct_account *a, const acct_account *b);
/* Sort subscriptions by hub (the stored order). */
void acct_subs_sort(acct_account *a);

/* ---- which events a change emits --------------------------------------------------------- */

typedef enum {
    ACCT_EV_ACCOUNT_UPDATED,
    ACCT_EV_SUBSCRIPTIONS_CHANGED,
    ACCT_EV_ACCOUNT_DOWNGRADED,
    ACCT_EV_HOSTING_LOCATION_CHANGED,
    ACCT_EV_SENSITIVE_DATA_ENABLED,
    ACCT_EV_SENSITIVE_DATA_DISABLED,
} acct_event_kind;
#define ACCT_MAX_UPDATE_EVENTS 6

/* The events an account update emits, in order: AccountUpdated first, then
 * the specific ones. None when nothing changed. Each event gets a version of
 * its own (the account's version goes up by one per event), so a consumer
 * that skips versions it has seen never skips a specific event. */
int acct_update_events(const acct_account *before, const acct_account *after,
                       acct_event_kind out[ACCT_MAX_UPDATE_EVENTS]);
/* Anything a client can see changed (to skip no-op updates). */
bool acct_account_changed(const acct_account *before, const acct_account *after);
bool acct_user_changed(const acct_user *before, const acct_user *after);
bool acct_membership_changed(const acct_membership *before, const acct_membership *after);

/* ---- who may do what ------------------------------------------------------
 * Each returns 0 (allowed) or the OM_E_* code to fail with. `m` is the
 * actor's own membership in the account concerned, NULL if none. */

/* Reading an account, its members: a member of it, or a service. In all
 * these rules a user who is no member gets OM_E_NOT_FOUND (AIP-193: the
 * account's existence is not theirs to learn), a member without the right
 * OM_E_PERMISSION_DENIED. */
int acct_rule_view_account(const om_actor *actor, const acct_membership *m);
/* Managing the account's settings and users: SUPER_ADMIN or
 * ACCOUNT_PERMISSIONS in it, or a service (SPEC 1). A member whose only
 * standing is a partner link is such a member too, except for PART-08. */
int acct_rule_manage_account(const om_actor *actor, const acct_membership *m);
/* PART-08: removing a membership. Only the client's SUPER_ADMIN or
 * ACCOUNT_PERMISSIONS members, or the partners service (PART-07/09); anyone
 * else: PERMISSION_DENIED. What a partner-linked member may remove is
 * acct_rule_partner_identity's (the gate every mutation passes). */
int acct_rule_remove_membership(const om_actor *actor, const acct_membership *m);
/* Granting or taking away SUPER_ADMIN needs SUPER_ADMIN (no escalation
 * through ACCOUNT_PERMISSIONS); other role and seat changes need manage. */
int acct_rule_change_roles(const om_actor *actor, const acct_membership *m, unsigned old_roles,
                           unsigned new_roles);
/* An account keeps at least one SUPER_ADMIN while users change it, so that
 * someone can still manage it. `remaining` counts them after the change. */
int acct_rule_keep_super_admin(const om_actor *actor, long remaining_super_admins);
/* Creating an account: any authenticated user (who becomes its SUPER_ADMIN)
 * or a service. An explicit hub_id (imports) only from a service. */
int acct_rule_create_account(const om_actor *actor, uint64_t explicit_hub_id);
/* Creating a user: a service (the identity system provisions users), or a
 * user who manages at least one account (`manages_any`). An explicit user_id
 * only from a service. */
int acct_rule_create_user(const om_actor *actor, bool manages_any, uint64_t explicit_user_id);
/* Reading a user: the user, a service, or someone sharing an account;
 * anyone else OM_E_NOT_FOUND (AIP-193). */
int acct_rule_view_user(const om_actor *actor, uint64_t user_id, bool shares_account);
/* Changing or deleting a user: the user or a service. */
int acct_rule_change_user(const om_actor *actor, uint64_t user_id);
/* PART-08: a partner-linked identity is a member whose membership exists
 * because of a partner's client assignment (the link created or adopted it).
 * A member who was in the account before the partner linked them stays the
 * client's own staff (PART-07 keeps that membership when the link goes). */
bool acct_is_partner_identity(const acct_membership *m);

/* What a mutation does to an account, as the PART-08 gate sees it. Every
 * mutation of the service describes itself with one of these before it
 * changes anything (accounts_rpc.c refuses to commit one that did not). */
typedef enum {
    ACCT_ACT_USER,               /* a user's own record, or creating an account */
    ACCT_ACT_UPDATE_ACCOUNT,     /* settings: name, subscriptions, sensitivity, MRR */
    ACCT_ACT_SET_ACCOUNT_STATE,  /* deactivate, reactivate */
    ACCT_ACT_DELETE_ACCOUNT,
    ACCT_ACT_CREATE_MEMBERSHIP,
    ACCT_ACT_UPDATE_MEMBERSHIP,
    ACCT_ACT_DELETE_MEMBERSHIP,
    ACCT_ACT_PARTNER_SYNC,       /* partner tag/link, only through service:partners (PART-01/05/07/09) */
} acct_act_kind;

typedef struct acct_act {
    acct_act_kind kind;
    uint64_t hub_id;               /* the account concerned, 0 for none */
    const acct_membership *target; /* update/delete membership: the membership as stored */
    unsigned roles_after;          /* create/update membership: the roles it will have */
} acct_act;

/* PART-08: what a partner-linked identity may never do, whatever roles the
 * client gave it. `m` is the acting user's membership in act->hub_id (NULL if
 * none). Returns 0 or OM_E_PARTNER_IDENTITY_FORBIDDEN for: changing or
 * removing a membership it did not create (its own included), granting
 * SUPER_ADMIN, deactivating, reactivating or deleting the account. Partner
 * links change only through the partners service (ACCT_ACT_PARTNER_SYNC). */
int acct_rule_partner_identity(uint64_t actor_user_id, const acct_membership *m, const acct_act *act);
/* Whether acct_rule_partner_identity can refuse `act` at all (when not, the
 * caller need not read the actor's membership). */
bool acct_partner_identity_matters(const acct_act *act);
/* The message that goes with a refusal of acct_rule_partner_identity. */
const char *acct_partner_identity_message(const acct_act *act);

/* Internal RPCs: service identities only (SERVICE_IDENTITY_REQUIRED); when
 * `service` is not NULL, only that service (PERMISSION_DENIED for others). */
int acct_rule_internal(const om_actor *actor, const char *service);
/* partner_employee is only meaningful in a PARTNER account (SPEC 1, PART-01). */
int acct_rule_partner_employee(acct_kind kind, bool partner_employee);

/* ---- etags ------------------------------------------------------------------------------- */

#define ACCT_ETAG_MAX 24
/* "\"v<version>\"" (opaque to clients; quoted like an HTTP entity tag). */
void acct_etag_encode(int64_t version, char out[ACCT_ETAG_MAX]);
/* 0 and *version, or -1 when `etag` is not one of ours. */
int acct_etag_decode(const char *etag, int64_t *version);
/* An update's etag against the current version: 0 when empty (no check) or
 * equal, OM_E_ETAG_MISMATCH when stale, OM_E_INVALID_ARGUMENT when malformed. */
int acct_etag_check(const char *etag, int64_t current_version);

#endif
