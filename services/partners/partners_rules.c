/* partners_rules.c — the pure rules of the partners service (see
 * partners_rules.h). Each function states the rule it decides. */
#include "partners_rules.h"

#include <stdio.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

#include "om_err.h"

bool part_state_terminal(part_state s) {
    return s == PART_ST_DECLINED || s == PART_ST_EXPIRED || s == PART_ST_CANCELLED || s == PART_ST_REVOKED;
}

bool part_state_open(part_state s) { return s == PART_ST_PENDING || s == PART_ST_ACTIVE; }

bool part_is_admin(unsigned roles) {
    return (roles & (PART_ROLE_SUPER_ADMIN | PART_ROLE_ACCOUNT_PERMISSIONS)) != 0;
}

int part_rule_partner_manager(int account_kind, bool member, unsigned roles) {
    if (account_kind != PART_KIND_PARTNER) return OM_E_NOT_PARTNER_ACCOUNT;
    if (!member || !part_is_admin(roles)) return OM_E_PERMISSION_DENIED;
    return 0;
}

int part_rule_client_admin(bool member, unsigned roles, bool partner_linked) {
    /* PART-05: only a signed-in SUPER_ADMIN or ACCOUNT_PERMISSIONS member;
     * PART-08: a partner-linked identity is a partner actor, not the client */
    if (member && partner_linked) return OM_E_PARTNER_IDENTITY_FORBIDDEN;
    return member && part_is_admin(roles) ? 0 : OM_E_PERMISSION_DENIED;
}

int part_rule_answer(part_state st, part_cause cause, part_answer a, bool *apply) {
    *apply = false;
    if (st == PART_ST_PENDING) {
        *apply = true;
        return 0;
    }
    /* PART-05: repeating the answer that ended the request returns it as it
     * stands; any other answer conflicts. */
    switch (a) {
    case PART_ANSWER_APPROVE:
        if (st == PART_ST_ACTIVE && (cause == PART_CAUSE_APPROVED || cause == PART_CAUSE_CLIENT_ADDED_MEMBER))
            return 0;
        break;
    case PART_ANSWER_DECLINE:
        if (st == PART_ST_DECLINED) return 0;
        break;
    case PART_ANSWER_CANCEL:
        if (st == PART_ST_CANCELLED && cause == PART_CAUSE_CANCELLED_BY_PARTNER) return 0;
        break;
    }
    return OM_E_REQUEST_NOT_PENDING;
}

void part_answer_result(part_answer a, part_state *st, part_cause *cause) {
    switch (a) {
    case PART_ANSWER_APPROVE:
        *st = PART_ST_ACTIVE;
        *cause = PART_CAUSE_APPROVED;
        break;
    case PART_ANSWER_DECLINE:
        *st = PART_ST_DECLINED;
        *cause = PART_CAUSE_DECLINED;
        break;
    case PART_ANSWER_CANCEL:
    default:
        *st = PART_ST_CANCELLED;
        *cause = PART_CAUSE_CANCELLED_BY_PARTNER;
        break;
    }
}

int part_rule_confirmation(const char *text) {
    return text != NULL && strcmp(text, "REMOVE") == 0 ? 0 : OM_E_CONFIRMATION_REQUIRED;
}

int part_rule_resend(int64_t last_send_us, int64_t now_us, int64_t interval_s, int64_t *next_us) {
    *next_us = last_send_us + interval_s * 1000000;
    return now_us >= *next_us ? 0 : OM_E_RESEND_TOO_SOON;
}

int part_rule_existing_assignment(uint64_t partner_hub_id, uint64_t holder_partner_hub_id) {
    /* PART-06: the first partner keeps the client */
    return partner_hub_id == holder_partner_hub_id ? 0 : OM_E_EMAIL_CONNECTED_TO_OTHER_PARTNER;
}

const char *const part_conflict_resolutions[3] = {
    "Ask the first partner to remove the user from the client",
    "Create a new email address on your own email domain for this user and tag that address",
    "Ask the user for a different email address",
};

void part_conflict_title(const char *display_name, char *buf, size_t cap) {
    snprintf(buf, cap, "%s couldn't be added to this client",
             display_name && display_name[0] ? display_name : "This user");
}

int part_credit_blocker(bool tagged, bool refused, bool active_here) {
    if (active_here) return 0;
    if (!tagged) return 1;  /* NOT_TAGGED */
    if (refused) return 2;  /* EMAIL_CONNECTED_TO_OTHER_PARTNER (PART-06) */
    return 0;
}

bool part_credited(int active_employees, int blockers, int reasons[2], int *n_reasons) {
    *n_reasons = 0;
    if (active_employees <= 0) reasons[(*n_reasons)++] = 1; /* NO_ACTIVE_EMPLOYEE */
    if (blockers > 0) reasons[(*n_reasons)++] = 2;          /* BLOCKING_USERS */
    return *n_reasons == 0;
}

/* Characters of a UTF-8 string; -1 when invalid or holding control characters. */
static long utf8_chars(const char *s) {
    long n = 0;
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        int len = *p < 0x80 ? 1 : (*p >> 5) == 6 ? 2 : (*p >> 4) == 14 ? 3 : (*p >> 3) == 30 ? 4 : 0;
        if (len == 0) return -1;
        if (len == 1 && (*p < 0x20 || *p == 0x7f)) return -1;
        for (int i = 1; i < len; i++)
            if ((p[i] & 0xc0) != 0x80) return -1;
        p += len;
        n++;
    }
    return n;
}

int part_activity_check(const char *kind, int64_t time_us, int64_t now_us, const char **why) {
    long n = kind ? utf8_chars(kind) : 0;
    if (n < 1 || n > 64) {
        *why = "kind must be 1..64 characters of valid UTF-8";
        return -1;
    }
    if (time_us == 0) {
        *why = "time must be set";
        return -1;
    }
    if (time_us > now_us + PART_ACTIVITY_FUTURE_SLACK_US) {
        *why = "time must not be more than 5 minutes in the future";
        return -1;
    }
    return 0;
}

bool part_query_hub_id(const char *q, uint64_t *out) {
    uint64_t v = 0;
    if (q == NULL || q[0] == '\0' || strlen(q) > 19) return false;
    for (const char *p = q; *p; p++) {
        if (*p < '0' || *p > '9') return false;
        v = v * 10 + (uint64_t)(*p - '0');
    }
    *out = v;
    return v > 0;
}

static void b64url(const uint8_t *in, size_t n, char *out) {
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n) v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < n) v |= in[i + 2];
        out[o++] = tbl[(v >> 18) & 63];
        out[o++] = tbl[(v >> 12) & 63];
        if (i + 1 < n) out[o++] = tbl[(v >> 6) & 63];
        if (i + 2 < n) out[o++] = tbl[v & 63];
    }
    out[o] = '\0';
}

int part_token_make(const void *key, size_t key_len, const char *request_id, uint64_t recipient,
                    const char *event_id, char *out) {
    char msg[256];
    uint8_t mac[32];
    unsigned mac_len = 0;
    int n = snprintf(msg, sizeof msg, "orgmesh.partners.token|%s|%llu|%s", request_id,
                     (unsigned long long)recipient, event_id);
    if (n < 0 || (size_t)n >= sizeof msg) return OM_E_INVALID_ARGUMENT;
    if (HMAC(EVP_sha256(), key, (int)key_len, (const unsigned char *)msg, (size_t)n, mac, &mac_len) == NULL ||
        mac_len != 32)
        return OM_E_INTERNAL;
    b64url(mac, 32, out);
    return 0;
}

void part_token_hash(const char *token, uint8_t out[32]) {
    SHA256((const unsigned char *)token, strlen(token), out);
}

bool part_token_well_formed(const char *token) {
    if (token == NULL || strlen(token) != PART_TOKEN_LEN) return false;
    for (const char *p = token; *p; p++)
        if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-' ||
              *p == '_'))
            return false;
    return true;
}

/* ---- partner grants (PART-14 ... PART-22) ---------------------------------- */

int part_rule_duration(int days, bool until_removed, int default_days, int max_days, bool allow_unlimited,
                       int *out_days) {
    *out_days = 0;
    if (until_removed) {
        if (days != 0) return OM_E_INVALID_ARGUMENT; /* both asked: ambiguous */
        return allow_unlimited ? 0 : OM_E_DURATION_NOT_ALLOWED;
    }
    if (max_days < 1 || max_days > PART_GRANT_MAX_DAYS) max_days = PART_GRANT_MAX_DAYS;
    if (days == 0) days = default_days;
    if (days < 1 || days > max_days) return OM_E_INVALID_ARGUMENT;
    *out_days = days;
    return 0;
}

static int role_bits(const int *roles, size_t n, unsigned *bits) {
    *bits = 0;
    for (size_t i = 0; i < n; i++) {
        if (roles[i] < 1 || roles[i] > 4) return OM_E_INVALID_ARGUMENT;
        *bits |= 1u << (roles[i] - 1);
    }
    return (*bits & PART_ROLE_SUPER_ADMIN) ? OM_E_ROLE_NOT_GRANTABLE : 0;
}

int part_rule_requested_roles(const int *roles, size_t n, unsigned *bits) {
    int rc = role_bits(roles, n, bits);
    if (rc == 0 && n == 0) *bits = PART_ROLE_MARKETING_ACCESS;
    return rc;
}

int part_rule_approved_roles(unsigned requested, const int *roles, size_t n, unsigned *bits) {
    int rc = role_bits(roles, n, bits);
    if (rc != 0) return rc;
    if (n == 0) *bits = requested & ~PART_ROLE_SUPER_ADMIN;
    return (*bits & ~requested) ? OM_E_ROLES_NOT_REQUESTED : 0;
}

bool part_rule_auto_extend(bool auto_extend, unsigned granted_roles) {
    return auto_extend && (granted_roles & PART_ROLE_SUPER_ADMIN) == 0;
}

int part_rule_extend(int64_t current_end_us, int64_t new_end_us, int64_t now_us, int max_days) {
    if (max_days < 1 || max_days > PART_GRANT_MAX_DAYS) max_days = PART_GRANT_MAX_DAYS;
    if (new_end_us <= current_end_us || new_end_us <= now_us) return OM_E_INVALID_ARGUMENT;
    if (new_end_us > now_us + (int64_t)max_days * 86400 * 1000000) return OM_E_INVALID_ARGUMENT;
    return 0;
}

int part_parse_days(const char *s, int *out, int cap, int *n) {
    *n = 0;
    if (s == NULL) return 0;
    const char *p = s;
    while (*p != '\0') {
        while (*p == ' ') p++;
        if (*p == '\0') break;
        int v = 0, digits = 0;
        while (*p >= '0' && *p <= '9' && digits < 4) v = v * 10 + (*p++ - '0'), digits++;
        while (*p == ' ') p++;
        if (digits == 0 || v < 1 || v > PART_GRANT_MAX_DAYS || *n >= cap || (*p != ',' && *p != '\0')) return -1;
        for (int i = 0; i < *n; i++)
            if (out[i] == v) return -1;
        out[(*n)++] = v;
        if (*p == ',') p++;
    }
    return 0;
}

int part_rule_resend_after(int64_t last_send_us, bool last_send_failed, int64_t now_us, int64_t interval_s,
                           int64_t *next_us) {
    if (last_send_failed) { /* PART-22: the client never got it */
        *next_us = now_us;
        return 0;
    }
    return part_rule_resend(last_send_us, now_us, interval_s, next_us);
}

int part_rule_extender(bool client_admin, bool partner_manager, bool partner_extends) {
    if (client_admin) return 0;
    return partner_manager && partner_extends ? 0 : OM_E_PERMISSION_DENIED;
}
