/* partners_rules.h — the pure rules of the partners service (SPEC 6): who is a
 * partner manager, the access-request state machine, the REMOVE confirmation,
 * the resend interval, the PART-06 conflict texts, the managed-MRR credit and
 * email-link tokens. No I/O: unit tests cover them without a database. */
#ifndef PARTNERS_RULES_H
#define PARTNERS_RULES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* AssignmentState numbers of partners.proto. */
typedef enum {
    PART_ST_UNSPECIFIED = 0,
    PART_ST_PENDING = 1,
    PART_ST_ACTIVE = 2,
    PART_ST_DECLINED = 3,
    PART_ST_EXPIRED = 4,
    PART_ST_CANCELLED = 5,
    PART_ST_REVOKED = 6,
} part_state;

/* AssignmentChangeCause numbers of partners.proto. */
typedef enum {
    PART_CAUSE_UNSPECIFIED = 0,
    PART_CAUSE_ALREADY_MEMBER = 1,
    PART_CAUSE_APPROVED = 2,
    PART_CAUSE_CLIENT_ADDED_MEMBER = 3,
    PART_CAUSE_DECLINED = 4,
    PART_CAUSE_EXPIRED = 5,
    PART_CAUSE_CANCELLED_BY_PARTNER = 6,
    PART_CAUSE_REMOVED_BY_PARTNER = 7,
    PART_CAUSE_REMOVED_BY_CLIENT = 8,
    PART_CAUSE_EMPLOYEE_UNTAGGED = 9,
    PART_CAUSE_EMPLOYEE_LEFT_PARTNER = 10,
    PART_CAUSE_CLIENT_ACCOUNT_DELETED = 11,
    PART_CAUSE_GRANT_ENDED = 12,    /* PART-16 */
    PART_CAUSE_DORMANT = 13,        /* PART-19 */
    PART_CAUSE_KILL_SWITCH = 14,    /* PART-20 */
} part_cause;

/* Role bits: 1 << (accounts.v1.Role - 1). */
#define PART_ROLE_SUPER_ADMIN (1u << 0)
#define PART_ROLE_PARTNER_ADMIN (1u << 1)
#define PART_ROLE_ACCOUNT_PERMISSIONS (1u << 2)
#define PART_ROLE_MARKETING_ACCESS (1u << 3)

/* accounts.v1.AccountKind */
#define PART_KIND_PARTNER 2

#define PART_MAX_BATCH 100
#define PART_DEFAULT_REQUEST_TTL_S (14 * 24 * 3600) /* PART-05 */
#define PART_DEFAULT_RESEND_INTERVAL_S 3600         /* PART-04 */
#define PART_ACTIVITY_FUTURE_SLACK_US (5LL * 60 * 1000000)

bool part_state_terminal(part_state s);
bool part_state_open(part_state s); /* PENDING or ACTIVE */

/* SPEC 6 "partner managers" (PART-01, PART-03, PART-10 ...) and PART-05/08
 * "client admins" are the same role test: SUPER_ADMIN or
 * ACCOUNT_PERMISSIONS. */
bool part_is_admin(unsigned roles);

/* Who may act as a partner manager of an account: 0,
 * OM_E_NOT_PARTNER_ACCOUNT (the account is not a PARTNER) or
 * OM_E_PERMISSION_DENIED (not a member, or no managing role). */
int part_rule_partner_manager(int account_kind, bool member, unsigned roles);

/* A client admin (PART-05, PART-08): 0, OM_E_PARTNER_IDENTITY_FORBIDDEN (the
 * membership is partner-linked: only the client grants access, whatever
 * roles it gave a partner's employee) or OM_E_PERMISSION_DENIED. */
int part_rule_client_admin(bool member, unsigned roles, bool partner_linked);

/* The answers to an access request (PART-04, PART-05). */
typedef enum { PART_ANSWER_APPROVE, PART_ANSWER_DECLINE, PART_ANSWER_CANCEL } part_answer;

/* PART-05: may `a` be applied to a request in state/cause? *apply is true to
 * change it, false when it is a repeat of the answer that ended it (return
 * it as it stands). OM_E_REQUEST_NOT_PENDING for a conflicting answer. */
int part_rule_answer(part_state st, part_cause cause, part_answer a, bool *apply);

/* The state and cause an applied answer leads to. */
void part_answer_result(part_answer a, part_state *st, part_cause *cause);

/* PART-07: the confirmation must be exactly "REMOVE" (0, else
 * OM_E_CONFIRMATION_REQUIRED). */
int part_rule_confirmation(const char *text);

/* PART-04: a PENDING request may be resent once `interval_s` have passed since
 * it was last sent. 0, or OM_E_RESEND_TOO_SOON; *next_us is the earliest
 * time it is allowed. */
int part_rule_resend(int64_t last_send_us, int64_t now_us, int64_t interval_s, int64_t *next_us);
/* PART-22: as part_rule_resend, but at once when an email of the last send
 * failed or bounced. */
int part_rule_resend_after(int64_t last_send_us, bool last_send_failed, int64_t now_us, int64_t interval_s,
                           int64_t *next_us);

/* PART-03/PART-06: an open assignment of (employee, client) exists already,
 * held by `holder`. Same partner: ALREADY_ASSIGNED (0); another partner:
 * OM_E_EMAIL_CONNECTED_TO_OTHER_PARTNER. */
int part_rule_existing_assignment(uint64_t partner_hub_id, uint64_t holder_partner_hub_id);

/* PART-06 texts: the message, the title naming the employee, the three
 * ways out (in order). */
#define PART_CONFLICT_MESSAGE "Their email address is already connected with another partner record for this client"
extern const char *const part_conflict_resolutions[3];
void part_conflict_title(const char *display_name, char *buf, size_t cap);

/* PART-12: why a user who is a member of both the partner and the client
 * blocks the credit: 0 (does not), 1 NOT_TAGGED, 2
 * EMAIL_CONNECTED_TO_OTHER_PARTNER (CreditBlockReason numbers). An employee
 * with an ACTIVE assignment there never blocks. */
int part_credit_blocker(bool tagged, bool refused, bool active_here);

/* PART-12: credited when at least one employee is ACTIVE there and nobody
 * blocks. Fills the UncreditedReason numbers (1 NO_ACTIVE_EMPLOYEE, 2
 * BLOCKING_USERS) into reasons[2]. */
bool part_credited(int active_employees, int blockers, int reasons[2], int *n_reasons);

/* PART-13: an activity's kind (1..64 characters) and time (set, and at most
 * 5 minutes in the future). 0, or -1 with *why set. */
int part_activity_check(const char *kind, int64_t time_us, int64_t now_us, const char **why);

/* PART-02: a search query made of digits only also matches that hub_id. */
bool part_query_hub_id(const char *q, uint64_t *out);

/* PART-04 link tokens. The token for (request, recipient, event) is
 * HMAC-SHA256(key, ...) in base64url (43 characters), so asking again for the
 * same event gives the same token without storing it; only its SHA-256 is
 * kept. out must hold PART_TOKEN_LEN + 1 bytes. */
#define PART_TOKEN_LEN 43
int part_token_make(const void *key, size_t key_len, const char *request_id, uint64_t recipient,
                    const char *event_id, char *out);
void part_token_hash(const char *token, uint8_t out[32]);
/* A token has the right shape (43 base64url characters). */
bool part_token_well_formed(const char *token);

/* ---- partner grants (PART-14 ... PART-22) ---------------------------------- */

#define PART_GRANT_MAX_DAYS 730 /* PART-14: 1 day .. 2 years */
#define PART_MAX_NOTICES 8

/* PART-14: the duration of a new grant. days 0 = default_days; 1..max_days
 * as given; until_removed = 0 (no end), only when allow_unlimited (else
 * OM_E_DURATION_NOT_ALLOWED). Out of range: OM_E_INVALID_ARGUMENT. */
int part_rule_duration(int days, bool until_removed, int default_days, int max_days, bool allow_unlimited,
                       int *out_days);

/* PART-18: the roles a partner asks for (accounts.v1.Role numbers), as bits.
 * Empty = MARKETING_ACCESS. OM_E_ROLE_NOT_GRANTABLE for SUPER_ADMIN,
 * OM_E_INVALID_ARGUMENT for an unknown role. */
int part_rule_requested_roles(const int *roles, size_t n, unsigned *bits);

/* PART-18: the roles a client approves: none given = all requested;
 * SUPER_ADMIN never (OM_E_ROLE_NOT_GRANTABLE); otherwise a subset of
 * `requested` (else OM_E_ROLES_NOT_REQUESTED). OM_E_INVALID_ARGUMENT for an
 * unknown role. */
int part_rule_approved_roles(unsigned requested, const int *roles, size_t n, unsigned *bits);

/* PART-15: auto-extend applies, never to a grant carrying SUPER_ADMIN
 * (defense in depth: PART-18 never grants it). */
bool part_rule_auto_extend(bool auto_extend, unsigned granted_roles);

/* PART-17: a new end must be after the current one and at most
 * now + max_days. 0 or OM_E_INVALID_ARGUMENT. */
int part_rule_extend(int64_t current_end_us, int64_t new_end_us, int64_t now_us, int max_days);

/* PART-17: who may extend a grant: its client's admin; a partner manager of
 * its partner only when partner_extends (configuration). 0 or
 * OM_E_PERMISSION_DENIED. */
int part_rule_extender(bool client_admin, bool partner_manager, bool partner_extends);

/* PART-16: "30,7,1" -> {30, 7, 1}: 1..PART_MAX_NOTICES distinct values in
 * 1..730, any order; "" = none. *n is the count; -1 when malformed. */
int part_parse_days(const char *s, int *out, int cap, int *n);

#endif
