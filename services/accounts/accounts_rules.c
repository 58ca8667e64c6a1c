/* accounts_rules.c — the accounts service's pure domain rules (see
 * accounts_rules.h): shapes and validation, update masks, downgrade
 * detection and the events a change emits, who may do what, etags. */
#include "om_ids.h"
#include "accounts_rules.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "om_err.h"

/* ---- names ------------------------------------------------------------------------------- */

static const char *const kind_names[] = {NULL, "STANDARD", "PARTNER", "SANDBOX"};
static const char *const state_names[] = {NULL, "ACTIVE", "DEACTIVATED"};
static const char *const hub_names[] = {NULL,  "MARKETING",  "SALES",   "SERVICE",
                                        "CMS", "OPERATIONS", "COMMERCE"};
/* API-01: the hubs as people call them, for messages (never the enum name) */
static const char *const hub_words[] = {NULL,          "Marketing Hub",  "Sales Hub",   "Service Hub",
                                        "Content Hub", "Operations Hub", "Commerce Hub"};
static const char *const tier_names[] = {NULL, "FREE", "STARTER", "PROFESSIONAL", "ENTERPRISE"};
/* Bit i of a role mask is role_names[i]; the same for seats. */
static const char *const role_names[] = {"SUPER_ADMIN", "PARTNER_ADMIN", "ACCOUNT_PERMISSIONS",
                                         "MARKETING_ACCESS"};
static const char *const seat_names[] = {"SALES", "SERVICE"};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static const char *name_at(const char *const *names, size_t n, int i) {
    return (i >= 0 && (size_t)i < n) ? names[i] : NULL;
}

static int index_of(const char *const *names, size_t n, const char *s) {
    if (s == NULL) return 0;
    for (size_t i = 0; i < n; i++)
        if (names[i] != NULL && strcmp(names[i], s) == 0) return (int)i;
    return 0;
}

const char *acct_kind_name(acct_kind k) { return name_at(kind_names, COUNT(kind_names), (int)k); }
const char *acct_state_name(acct_state s) { return name_at(state_names, COUNT(state_names), (int)s); }
const char *acct_hub_name(acct_hub h) { return name_at(hub_names, COUNT(hub_names), (int)h); }
const char *acct_tier_name(acct_tier t) { return name_at(tier_names, COUNT(tier_names), (int)t); }
acct_kind acct_kind_from_name(const char *s) { return (acct_kind)index_of(kind_names, COUNT(kind_names), s); }
acct_state acct_state_from_name(const char *s) { return (acct_state)index_of(state_names, COUNT(state_names), s); }
acct_hub acct_hub_from_name(const char *s) { return (acct_hub)index_of(hub_names, COUNT(hub_names), s); }
acct_tier acct_tier_from_name(const char *s) { return (acct_tier)index_of(tier_names, COUNT(tier_names), s); }

static const char *bit_name(const char *const *names, size_t n, unsigned bit) {
    for (size_t i = 0; i < n; i++)
        if (bit == 1u << i) return names[i];
    return NULL;
}

const char *acct_role_name(unsigned role_bit) { return bit_name(role_names, COUNT(role_names), role_bit); }
const char *acct_seat_name(unsigned seat_bit) { return bit_name(seat_names, COUNT(seat_names), seat_bit); }

static unsigned mask_from_names(const char *const *names, size_t n, const char *csv) {
    unsigned mask = 0;
    const char *p = csv;
    while (p != NULL && *p != '\0') {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        for (size_t i = 0; i < n; i++)
            if (strlen(names[i]) == len && strncmp(names[i], p, len) == 0) mask |= 1u << i;
        p = end ? end + 1 : NULL;
    }
    return mask;
}

unsigned acct_roles_from_names(const char *csv) { return mask_from_names(role_names, COUNT(role_names), csv); }
unsigned acct_seats_from_names(const char *csv) { return mask_from_names(seat_names, COUNT(seat_names), csv); }

static void mask_literal(const char *const *names, size_t n, unsigned mask, char *buf, size_t cap) {
    size_t used = 0;
    if (cap == 0) return;
    buf[0] = '\0';
    used += (size_t)snprintf(buf + used, cap - used, "{");
    bool first = true;
    for (size_t i = 0; i < n && used < cap; i++) {
        if (!(mask & (1u << i))) continue;
        used += (size_t)snprintf(buf + used, cap - used, "%s%s", first ? "" : ",", names[i]);
        first = false;
    }
    if (used < cap) snprintf(buf + used, cap - used, "}");
}

void acct_roles_literal(unsigned roles, char *buf, size_t cap) {
    mask_literal(role_names, COUNT(role_names), roles, buf, cap);
}
void acct_seats_literal(unsigned seats, char *buf, size_t cap) {
    mask_literal(seat_names, COUNT(seat_names), seats, buf, cap);
}

/* ---- violations -------------------------------------------------------------------------- */

void acct_violate(acct_violations *v, const char *field, const char *msg) {
    v->n++;
    if (v->fn != NULL) v->fn(v->arg, field, msg);
}

/* "prefix.field" (or "field" without a prefix) in a caller's buffer. */
static const char *path(char *buf, size_t cap, const char *prefix, const char *field) {
    if (prefix == NULL || prefix[0] == '\0')
        snprintf(buf, cap, "%s", field);
    else
        snprintf(buf, cap, "%s.%s", prefix, field);
    return buf;
}

/* ---- shapes ------------------------------------------------------------------------------ */

long acct_utf8_chars(const char *s) {
    const unsigned char *p = (const unsigned char *)s;
    long chars = 0;
    if (s == NULL) return 0;
    while (*p != '\0') {
        uint32_t cp;
        int extra;
        if (*p < 0x80) {
            cp = *p;
            extra = 0;
        } else if ((*p & 0xE0) == 0xC0) {
            cp = *p & 0x1F;
            extra = 1;
        } else if ((*p & 0xF0) == 0xE0) {
            cp = *p & 0x0F;
            extra = 2;
        } else if ((*p & 0xF8) == 0xF0) {
            cp = *p & 0x07;
            extra = 3;
        } else {
            return -1;
        }
        p++;
        for (int i = 0; i < extra; i++, p++) {
            if ((*p & 0xC0) != 0x80) return -1;
            cp = (cp << 6) | (*p & 0x3F);
        }
        /* overlong forms, surrogates, beyond Unicode */
        if ((extra == 1 && cp < 0x80) || (extra == 2 && cp < 0x800) || (extra == 3 && cp < 0x10000) ||
            (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF)
            return -1;
        /* C0, DEL and C1 controls: a name is shown to people */
        if (cp < 0x20 || (cp >= 0x7F && cp <= 0x9F)) return -1;
        chars++;
    }
    return chars;
}

bool acct_name_valid(const char *s) {
    long n = acct_utf8_chars(s);
    if (n < 1 || n > ACCT_NAME_MAX) return false;
    for (const char *p = s; *p != '\0'; p++)
        if (*p != ' ') return true;
    return false; /* blank */
}

static bool is_alpha(int c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
static bool is_digit(int c) { return c >= '0' && c <= '9'; }
static bool is_alnum(int c) { return is_alpha(c) || is_digit(c); }
static int lower(int c) { return (c >= 'A' && c <= 'Z') ? c - 'A' + 'a' : c; }
static int upper(int c) { return (c >= 'a' && c <= 'z') ? c - 'a' + 'A' : c; }

bool acct_email_valid(const char *s) {
    if (s == NULL) return false;
    size_t len = strlen(s);
    const char *at = strrchr(s, '@');
    if (len == 0 || len > ACCT_EMAIL_MAX || at == NULL) return false;
    size_t local = (size_t)(at - s);
    if (local < 1 || local > 64) return false;
    /* local part: RFC 5322 atext and dots, no leading, trailing or double dot */
    static const char atext[] = "!#$%&'*+/=?^_`{|}~-";
    for (size_t i = 0; i < local; i++) {
        char c = s[i];
        if (c == '.') {
            if (i == 0 || i == local - 1 || s[i - 1] == '.') return false;
        } else if (!is_alnum(c) && strchr(atext, c) == NULL) {
            return false;
        }
    }
    /* domain: two or more LDH labels of 1..63, a TLD that is not numeric */
    const char *d = at + 1;
    int labels = 0;
    bool tld_alpha = false;
    while (true) {
        const char *dot = strchr(d, '.');
        size_t l = dot ? (size_t)(dot - d) : strlen(d);
        if (l < 1 || l > 63 || d[0] == '-' || d[l - 1] == '-') return false;
        tld_alpha = false;
        for (size_t i = 0; i < l; i++) {
            if (!is_alnum(d[i]) && d[i] != '-') return false;
            if (is_alpha(d[i])) tld_alpha = true;
        }
        labels++;
        if (dot == NULL) break;
        d = dot + 1;
    }
    return labels >= 2 && tld_alpha;
}

/* One subtag of a BCP-47 tag, classified by shape. */
static bool all(const char *s, size_t n, bool (*pred)(int)) {
    for (size_t i = 0; i < n; i++)
        if (!pred((unsigned char)s[i])) return false;
    return true;
}

bool acct_locale_canonical(const char *in, char *out, size_t cap) {
    if (in == NULL || cap == 0) return false;
    size_t len = strlen(in);
    if (len < 2 || len > ACCT_LOCALE_MAX || len + 1 > cap) return false;
    /* 0 language, 1 script, 2 region, 3 variants */
    int stage = 0;
    size_t o = 0;
    const char *p = in;
    while (true) {
        size_t n = strcspn(p, "-_");
        if (n == 0) return false;
        if (stage == 0) {
            if (n < 2 || n > 3 || !all(p, n, is_alpha)) return false;
            for (size_t i = 0; i < n; i++) out[o++] = (char)lower(p[i]);
            stage = 1;
        } else {
            out[o++] = '-';
            if (stage <= 1 && n == 4 && all(p, n, is_alpha)) {
                out[o++] = (char)upper(p[0]);
                for (size_t i = 1; i < n; i++) out[o++] = (char)lower(p[i]);
                stage = 2;
            } else if (stage <= 2 && ((n == 2 && all(p, n, is_alpha)) || (n == 3 && all(p, n, is_digit)))) {
                for (size_t i = 0; i < n; i++) out[o++] = (char)upper(p[i]);
                stage = 3;
            } else if (((n >= 5 && n <= 8) || (n == 4 && is_digit((unsigned char)p[0]))) &&
                       all(p, n, is_alnum)) {
                for (size_t i = 0; i < n; i++) out[o++] = (char)lower(p[i]);
                stage = 3;
            } else {
                return false; /* extensions and private use are not locales we mail in */
            }
        }
        p += n;
        if (*p == '\0') break;
        p++; /* separator */
        if (*p == '\0') return false;
    }
    out[o] = '\0';
    return true;
}

bool acct_currency_valid(const char *s) {
    return s != NULL && strlen(s) == 3 && s[0] >= 'A' && s[0] <= 'Z' && s[1] >= 'A' && s[1] <= 'Z' &&
           s[2] >= 'A' && s[2] <= 'Z';
}

bool acct_location_allowed(const char *loc, const char *allowed) {
    if (loc == NULL || loc[0] == '\0' || allowed == NULL) return false;
    size_t len = strlen(loc);
    const char *p = allowed;
    while (*p != '\0') {
        while (*p == ' ' || *p == ',') p++;
        size_t n = strcspn(p, ",");
        size_t m = n;
        while (m > 0 && p[m - 1] == ' ') m--;
        if (m == len && m > 0 && strncmp(p, loc, len) == 0) return true;
        p += n;
    }
    return false;
}

/* ---- validation of whole resources ------------------------------------------------------- */

int acct_validate_account(const acct_account *a, const char *allowed_locations, const char *prefix,
                          acct_violations *v) {
    int before = v->n;
    char f[128], msg[160];

    if (acct_utf8_chars(a->name) < 0)
        acct_violate(v, path(f, sizeof f, prefix, "name"),
                     "must be valid UTF-8 without control characters");
    else if (!acct_name_valid(a->name))
        acct_violate(v, path(f, sizeof f, prefix, "name"), "must be 1 to 200 characters, not blank");

    if (a->kind == ACCT_KIND_UNSPECIFIED)
        acct_violate(v, path(f, sizeof f, prefix, "kind"), "must be set");
    else if (acct_kind_name(a->kind) == NULL)
        acct_violate(v, path(f, sizeof f, prefix, "kind"), "unknown account kind");

    const char *allowed = allowed_locations ? allowed_locations : ACCT_DEFAULT_LOCATIONS;
    if (a->hosting_location == NULL || a->hosting_location[0] == '\0') {
        acct_violate(v, path(f, sizeof f, prefix, "hosting_location"), "must be set");
    } else if (!acct_location_allowed(a->hosting_location, allowed)) {
        snprintf(msg, sizeof msg, "must be one of: %s", allowed);
        acct_violate(v, path(f, sizeof f, prefix, "hosting_location"), msg);
    }

    if (a->n_subs < 0 || a->n_subs > ACCT_MAX_SUBS_IN) {
        acct_violate(v, path(f, sizeof f, prefix, "subscriptions"), "too many subscriptions");
    } else {
        bool seen[ACCT_N_HUBS + 1] = {false};
        for (int i = 0; i < a->n_subs; i++) {
            char sub[64];
            const acct_subscription *s = &a->subs[i];
            snprintf(sub, sizeof sub, "subscriptions[%d].hub", i);
            if (s->hub == ACCT_HUB_UNSPECIFIED) {
                acct_violate(v, path(f, sizeof f, prefix, sub), "must be set");
            } else if (acct_hub_name(s->hub) == NULL) {
                acct_violate(v, path(f, sizeof f, prefix, sub), "unknown hub");
            } else if (seen[s->hub]) {
                snprintf(msg, sizeof msg, "%s appears more than once",
                         name_at(hub_words, COUNT(hub_words), (int)s->hub));
                acct_violate(v, path(f, sizeof f, prefix, sub), msg);
            } else {
                seen[s->hub] = true;
            }
            snprintf(sub, sizeof sub, "subscriptions[%d].tier", i);
            if (s->tier == ACCT_TIER_UNSPECIFIED)
                acct_violate(v, path(f, sizeof f, prefix, sub), "must be set");
            else if (acct_tier_name(s->tier) == NULL)
                acct_violate(v, path(f, sizeof f, prefix, sub), "unknown tier");
        }
    }

    if (a->mrr_amount_minor < 0)
        acct_violate(v, path(f, sizeof f, prefix, "mrr.amount_minor"), "must not be negative");
    if (a->mrr_currency[0] != '\0' && !acct_currency_valid(a->mrr_currency))
        acct_violate(v, path(f, sizeof f, prefix, "mrr.currency_code"),
                     "must be an ISO 4217 code (three uppercase letters)");
    else if (a->mrr_currency[0] == '\0' && a->mrr_amount_minor > 0)
        acct_violate(v, path(f, sizeof f, prefix, "mrr.currency_code"),
                     "must be set when an amount is given");
    return v->n - before;
}

int acct_validate_user(const acct_user *u, char *locale_out, const char *prefix, acct_violations *v) {
    int before = v->n;
    char f[128];

    if (!acct_email_valid(u->email))
        acct_violate(v, path(f, sizeof f, prefix, "email"), "must be an email address (local@domain)");
    if (acct_utf8_chars(u->display_name) < 0)
        acct_violate(v, path(f, sizeof f, prefix, "display_name"),
                     "must be valid UTF-8 without control characters");
    else if (!acct_name_valid(u->display_name))
        acct_violate(v, path(f, sizeof f, prefix, "display_name"),
                     "must be 1 to 200 characters, not blank");
    if (u->locale == NULL || u->locale[0] == '\0') {
        snprintf(locale_out, ACCT_LOCALE_MAX + 1, "en"); /* the default language of emails */
    } else if (!acct_locale_canonical(u->locale, locale_out, ACCT_LOCALE_MAX + 1)) {
        acct_violate(v, path(f, sizeof f, prefix, "locale"),
                     "must be a BCP-47 language tag such as en, it, ja or pt-BR");
    }
    return v->n - before;
}

int acct_validate_bits(const int *values, size_t n, unsigned (*bit_of)(int), const char *field,
                       acct_violations *v, unsigned *mask_out) {
    int before = v->n;
    unsigned mask = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned bit = bit_of(values[i]);
        if (bit == 0) {
            char f[128];
            snprintf(f, sizeof f, "%s[%zu]", field, i);
            acct_violate(v, f, values[i] == 0 ? "must be set" : "unknown value");
        }
        mask |= bit;
    }
    *mask_out = mask;
    return v->n - before;
}

/* ---- update masks ------------------------------------------------------------------------ */

static bool in_list(const char *s, const char *const *list) {
    for (; *list != NULL; list++)
        if (strcmp(s, *list) == 0) return true;
    return false;
}

static void mask_violation(acct_violations *v, const char *p, const char *why) {
    char msg[160];
    snprintf(msg, sizeof msg, "\"%.64s\" %s", p, why);
    acct_violate(v, "update_mask", msg);
}

static bool mask_empty(size_t n, acct_violations *v) {
    if (n > 0) return false;
    acct_violate(v, "update_mask", "must name the fields to change");
    return true;
}

int acct_account_apply_mask(acct_account *cur, const acct_account *patch, const char *const *paths,
                            size_t n, acct_violations *v) {
    static const char *const fixed[] = {"hub_id", "kind",        "state",       "version",
                                        "etag",   "create_time", "update_time", NULL};
    int before = v->n;
    if (mask_empty(n, v)) return v->n - before;
    for (size_t i = 0; i < n; i++) {
        const char *p = paths[i];
        if (strcmp(p, "name") == 0) {
            cur->name = patch->name;
        } else if (strcmp(p, "hosting_location") == 0) {
            cur->hosting_location = patch->hosting_location;
        } else if (strcmp(p, "subscriptions") == 0) {
            memcpy(cur->subs, patch->subs, sizeof cur->subs);
            cur->n_subs = patch->n_subs;
        } else if (strcmp(p, "sensitive_data_enabled") == 0) {
            cur->sensitive_data_enabled = patch->sensitive_data_enabled;
        } else if (strcmp(p, "mrr") == 0) {
            cur->mrr_amount_minor = patch->mrr_amount_minor;
            memcpy(cur->mrr_currency, patch->mrr_currency, sizeof cur->mrr_currency);
        } else if (strcmp(p, "mrr.amount_minor") == 0) {
            cur->mrr_amount_minor = patch->mrr_amount_minor;
        } else if (strcmp(p, "mrr.currency_code") == 0) {
            memcpy(cur->mrr_currency, patch->mrr_currency, sizeof cur->mrr_currency);
        } else if (in_list(p, fixed)) {
            mask_violation(v, p, "cannot be changed by an update");
        } else {
            mask_violation(v, p, "is not a field of Account");
        }
    }
    return v->n - before;
}

int acct_user_apply_mask(acct_user *cur, const acct_user *patch, const char *const *paths, size_t n,
                         acct_violations *v) {
    static const char *const fixed[] = {"user_id", "version", "etag", "create_time", "update_time", NULL};
    int before = v->n;
    if (mask_empty(n, v)) return v->n - before;
    for (size_t i = 0; i < n; i++) {
        const char *p = paths[i];
        if (strcmp(p, "email") == 0)
            cur->email = patch->email;
        else if (strcmp(p, "display_name") == 0)
            cur->display_name = patch->display_name;
        else if (strcmp(p, "locale") == 0)
            cur->locale = patch->locale;
        else if (strcmp(p, "two_factor_enabled") == 0)
            cur->two_factor_enabled = patch->two_factor_enabled;
        else if (in_list(p, fixed))
            mask_violation(v, p, "cannot be changed by an update");
        else
            mask_violation(v, p, "is not a field of User");
    }
    return v->n - before;
}

int acct_membership_apply_mask(acct_membership *cur, const acct_membership *patch,
                               const char *const *paths, size_t n, acct_violations *v) {
    static const char *const fixed[] = {"hub_id", "user_id", "version", "etag", "create_time",
                                        "update_time", NULL};
    static const char *const partners_only[] = {"partner_employee", "partner_link", NULL};
    int before = v->n;
    if (mask_empty(n, v)) return v->n - before;
    for (size_t i = 0; i < n; i++) {
        const char *p = paths[i];
        if (strcmp(p, "roles") == 0)
            cur->roles = patch->roles;
        else if (strcmp(p, "seats") == 0)
            cur->seats = patch->seats;
        else if (in_list(p, partners_only) || strncmp(p, "partner_link.", 13) == 0)
            mask_violation(v, p, "is set through the partners service");
        else if (in_list(p, fixed))
            mask_violation(v, p, "cannot be changed by an update");
        else
            mask_violation(v, p, "is not a field of Membership");
    }
    return v->n - before;
}

/* ---- subscriptions and downgrades -------------------------------------------------------- */

bool acct_has_professional(const acct_account *a) {
    for (int i = 0; i < a->n_subs; i++)
        if (a->subs[i].tier >= ACCT_TIER_PROFESSIONAL) return true;
    return false;
}

bool acct_has_marketing_enterprise(const acct_account *a) {
    for (int i = 0; i < a->n_subs; i++)
        if (a->subs[i].hub == ACCT_HUB_MARKETING && a->subs[i].tier == ACCT_TIER_ENTERPRISE) return true;
    return false;
}

/* ORG-09 (DOWNGRADED) is decided by organizations from AccountDowngraded. */
bool acct_is_downgrade(const acct_account *before, const acct_account *after) {
    return acct_has_professional(before) && !acct_has_professional(after);
}

static acct_tier tier_of(const acct_account *a, acct_hub hub) {
    for (int i = 0; i < a->n_subs; i++)
        if (a->subs[i].hub == hub) return a->subs[i].tier;
    return ACCT_TIER_UNSPECIFIED;
}

bool acct_subs_equal(const acct_account *a, const acct_account *b) {
    if (a->n_subs != b->n_subs) return false;
    for (int i = 0; i < a->n_subs; i++)
        if (tier_of(b, a->subs[i].hub) != a->subs[i].tier) return false;
    return true;
}

static int sub_cmp(const void *x, const void *y) {
    const acct_subscription *a = x, *b = y;
    return (int)a->hub - (int)b->hub;
}

void acct_subs_sort(acct_account *a) {
    if (a->n_subs > 1) qsort(a->subs, (size_t)a->n_subs, sizeof a->subs[0], sub_cmp);
}

/* ---- which events a change emits --------------------------------------------------------- */

static bool str_eq(const char *a, const char *b) {
    return strcmp(a ? a : "", b ? b : "") == 0;
}

bool acct_account_changed(const acct_account *b, const acct_account *a) {
    return !str_eq(b->name, a->name) || !str_eq(b->hosting_location, a->hosting_location) ||
           !acct_subs_equal(b, a) || b->sensitive_data_enabled != a->sensitive_data_enabled ||
           b->mrr_amount_minor != a->mrr_amount_minor || strcmp(b->mrr_currency, a->mrr_currency) != 0 ||
           b->state != a->state || b->kind != a->kind;
}

bool acct_user_changed(const acct_user *b, const acct_user *a) {
    return !str_eq(b->email, a->email) || !str_eq(b->display_name, a->display_name) ||
           !str_eq(b->locale, a->locale) || b->two_factor_enabled != a->two_factor_enabled;
}

bool acct_membership_changed(const acct_membership *b, const acct_membership *a) {
    return b->roles != a->roles || b->seats != a->seats || b->partner_employee != a->partner_employee ||
           b->partner_hub_id != a->partner_hub_id || !str_eq(b->assignment_id, a->assignment_id) ||
           b->link_owns_membership != a->link_owns_membership;
}

int acct_update_events(const acct_account *before, const acct_account *after,
                       acct_event_kind out[ACCT_MAX_UPDATE_EVENTS]) {
    int n = 0;
    if (!acct_account_changed(before, after)) return 0;
    out[n++] = ACCT_EV_ACCOUNT_UPDATED;
    if (!acct_subs_equal(before, after)) {
        out[n++] = ACCT_EV_SUBSCRIPTIONS_CHANGED;
        if (acct_is_downgrade(before, after)) out[n++] = ACCT_EV_ACCOUNT_DOWNGRADED;
    }
    if (!str_eq(before->hosting_location, after->hosting_location))
        out[n++] = ACCT_EV_HOSTING_LOCATION_CHANGED;
    if (!before->sensitive_data_enabled && after->sensitive_data_enabled)
        out[n++] = ACCT_EV_SENSITIVE_DATA_ENABLED; /* CONN-05 reacts */
    else if (before->sensitive_data_enabled && !after->sensitive_data_enabled)
        out[n++] = ACCT_EV_SENSITIVE_DATA_DISABLED;
    return n;
}

/* ---- who may do what --------------------------------------------------------------------- */

static bool is_service(const om_actor *a) { return auth_is_service(a, NULL); }

static bool manages(const acct_membership *m) {
    return m != NULL && (m->roles & (ACCT_ROLE_SUPER_ADMIN | ACCT_ROLE_ACCOUNT_PERMISSIONS)) != 0;
}

/* Defect 5 (AIP-193): a user who is no member of the account may not learn
 * that it exists, so every rule below answers them NOT_FOUND (as for a
 * hub_id that does not exist); PERMISSION_DENIED is for members who may see
 * the account but not do the action. */
int acct_rule_view_account(const om_actor *actor, const acct_membership *m) {
    if (actor == NULL) return OM_E_UNAUTHENTICATED;
    return (is_service(actor) || m != NULL) ? 0 : OM_E_NOT_FOUND;
}

int acct_rule_manage_account(const om_actor *actor, const acct_membership *m) {
    if (actor == NULL) return OM_E_UNAUTHENTICATED;
    if (!is_service(actor) && m == NULL) return OM_E_NOT_FOUND; /* AIP-193 */
    return (is_service(actor) || manages(m)) ? 0 : OM_E_PERMISSION_DENIED;
}

/* PART-08: only the client removes a user from the client account. */
int acct_rule_remove_membership(const om_actor *actor, const acct_membership *m) {
    if (actor == NULL) return OM_E_UNAUTHENTICATED;
    if (is_service(actor))
        /* PART-07 and PART-09 arrive through the partners service */
        return (auth_is_service(actor, "partners") || auth_is_service(actor, "accounts"))
                   ? 0
                   : OM_E_PERMISSION_DENIED;
    if (m == NULL) return OM_E_NOT_FOUND; /* AIP-193 */
    return manages(m) ? 0 : OM_E_PERMISSION_DENIED;
}

bool acct_is_partner_identity(const acct_membership *m) {
    return acct_has_partner_link(m) && m->link_owns_membership;
}

/* PART-08: a member who is there through a partner's assignment acts for the
 * partner, whatever roles the client gave them: only the client removes or
 * changes its users, grants SUPER_ADMIN and decides the account's existence. */
int acct_rule_partner_identity(uint64_t actor_user_id, const acct_membership *m, const acct_act *act) {
    if (!acct_is_partner_identity(m)) return 0;
    bool created_it = act->target != NULL && actor_user_id != 0 && act->target->created_by_user_id == actor_user_id;
    switch (act->kind) {
    case ACCT_ACT_USER:
    case ACCT_ACT_UPDATE_ACCOUNT:
    case ACCT_ACT_PARTNER_SYNC:
        return 0;
    case ACCT_ACT_CREATE_MEMBERSHIP:
        return (act->roles_after & ACCT_ROLE_SUPER_ADMIN) ? OM_E_PARTNER_IDENTITY_FORBIDDEN : 0;
    case ACCT_ACT_UPDATE_MEMBERSHIP:
        if (!created_it || (act->roles_after & ACCT_ROLE_SUPER_ADMIN)) return OM_E_PARTNER_IDENTITY_FORBIDDEN;
        return 0;
    case ACCT_ACT_DELETE_MEMBERSHIP:
        return created_it ? 0 : OM_E_PARTNER_IDENTITY_FORBIDDEN;
    case ACCT_ACT_SET_ACCOUNT_STATE:
    case ACCT_ACT_DELETE_ACCOUNT:
    default: /* an action nobody classified: refuse */
        return OM_E_PARTNER_IDENTITY_FORBIDDEN;
    }
}

bool acct_partner_identity_matters(const acct_act *act) {
    return act->hub_id != 0 && act->kind != ACCT_ACT_USER && act->kind != ACCT_ACT_UPDATE_ACCOUNT &&
           act->kind != ACCT_ACT_PARTNER_SYNC;
}

const char *acct_partner_identity_message(const acct_act *act) {
    switch (act->kind) {
    case ACCT_ACT_CREATE_MEMBERSHIP:
        return "a partner-linked identity cannot grant super admin in the client account (PART-08)";
    case ACCT_ACT_UPDATE_MEMBERSHIP:
        return "a partner-linked identity changes only memberships it created, and never grants "
               "super admin (PART-08)";
    case ACCT_ACT_DELETE_MEMBERSHIP:
        return "only the client can remove a user from the client account (PART-08)";
    case ACCT_ACT_SET_ACCOUNT_STATE:
    case ACCT_ACT_DELETE_ACCOUNT:
        return "a partner-linked identity cannot deactivate, reactivate or delete the client account (PART-08)";
    default:
        return "a partner-linked identity cannot do this in the client account (PART-08)";
    }
}

int acct_rule_change_roles(const om_actor *actor, const acct_membership *m, unsigned old_roles,
                           unsigned new_roles) {
    int rc = acct_rule_manage_account(actor, m);
    if (rc != 0 || is_service(actor)) return rc;
    if (((old_roles ^ new_roles) & ACCT_ROLE_SUPER_ADMIN) && !(m->roles & ACCT_ROLE_SUPER_ADMIN))
        return OM_E_PERMISSION_DENIED; /* no escalation through ACCOUNT_PERMISSIONS */
    return 0;
}

int acct_rule_keep_super_admin(const om_actor *actor, long remaining_super_admins) {
    if (is_service(actor)) return 0; /* PART-07/09 and user deletion act for the system */
    return remaining_super_admins >= 1 ? 0 : OM_E_FAILED_PRECONDITION;
}

int acct_rule_create_account(const om_actor *actor, uint64_t explicit_hub_id) {
    if (actor == NULL) return OM_E_UNAUTHENTICATED;
    if (is_service(actor)) return 0;
    if (actor->user_id == 0) return OM_E_PERMISSION_DENIED;
    return explicit_hub_id == 0 ? 0 : OM_E_PERMISSION_DENIED; /* imports only */
}

int acct_rule_create_user(const om_actor *actor, bool manages_any, uint64_t explicit_user_id) {
    if (actor == NULL) return OM_E_UNAUTHENTICATED;
    if (is_service(actor)) return 0;
    if (explicit_user_id != 0) return OM_E_PERMISSION_DENIED;
    return manages_any ? 0 : OM_E_PERMISSION_DENIED;
}

int acct_rule_view_user(const om_actor *actor, uint64_t user_id, bool shares_account) {
    if (actor == NULL) return OM_E_UNAUTHENTICATED;
    if (is_service(actor) || actor->user_id == user_id || shares_account) return 0;
    return OM_E_NOT_FOUND; /* AIP-193: as for a user that does not exist */
}

int acct_rule_change_user(const om_actor *actor, uint64_t user_id) {
    if (actor == NULL) return OM_E_UNAUTHENTICATED;
    return (is_service(actor) || (actor->user_id != 0 && actor->user_id == user_id))
               ? 0
               : OM_E_PERMISSION_DENIED;
}

int acct_rule_internal(const om_actor *actor, const char *service) {
    if (actor == NULL) return OM_E_UNAUTHENTICATED;
    if (!is_service(actor)) return OM_E_SERVICE_IDENTITY_REQUIRED;
    if (service != NULL && !auth_is_service(actor, service)) return OM_E_PERMISSION_DENIED;
    return 0;
}

int acct_rule_partner_employee(acct_kind kind, bool partner_employee) {
    return (partner_employee && kind != ACCT_KIND_PARTNER) ? OM_E_NOT_PARTNER_ACCOUNT : 0;
}

/* ---- etags ------------------------------------------------------------------------------- */

void acct_etag_encode(int64_t version, char out[ACCT_ETAG_MAX]) {
    om_etag_encode('v', version, out);
}

int acct_etag_decode(const char *etag, int64_t *version) {
    int64_t v;
    if (om_etag_decode('v', etag, &v) != 0) return -1;
    if (strlen(etag) - 3 > 1 && etag[2] == '0') return -1; /* one spelling per version */
    *version = v;
    return 0;
}

int acct_etag_check(const char *etag, int64_t current_version) {
    int64_t v;
    if (etag == NULL || etag[0] == '\0') return 0;
    if (acct_etag_decode(etag, &v) != 0) return OM_E_INVALID_ARGUMENT;
    return v == current_version ? 0 : OM_E_ETAG_MISMATCH;
}
