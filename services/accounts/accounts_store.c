/* accounts_store.c — the SQL of the accounts service (see accounts_store.h).
 * Every statement is a constant with $n parameters; the only text built here
 * is array literals of numbers and of our own enum names. */
#include "accounts_store.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "om_err.h"
#include "om_ids.h"

/* ---- helpers ----------------------------------------------------------------------------- */

void store_account_subject(uint64_t hub_id, char *buf, size_t cap) {
    snprintf(buf, cap, "accounts/%" PRIu64, hub_id);
}

void store_user_subject(uint64_t user_id, char *buf, size_t cap) {
    snprintf(buf, cap, "users/%" PRIu64, user_id);
}

void store_membership_subject(uint64_t hub_id, uint64_t user_id, char *buf, size_t cap) {
    snprintf(buf, cap, "accounts/%" PRIu64 "/memberships/%" PRIu64, hub_id, user_id);
}

static bool unique_violation(pg_conn *c) { return strcmp(pg_sqlstate(c), "23505") == 0; }
static bool fk_violation(pg_conn *c) { return strcmp(pg_sqlstate(c), "23503") == 0; }

/* Version a (re)created aggregate starts from. */
static int next_version_after_tombstone(pg_conn *c, const char *aggregate, int64_t *out) {
    pg_params p = {0};
    pg_res *r = NULL;
    pg_p_str(&p, aggregate);
    int rc = pg_exec(c, "SELECT COALESCE((SELECT version FROM tombstones WHERE aggregate = $1), 0) + 1", &p,
                     &r);
    if (rc == 0) *out = pg_i64(r, 0, 0);
    pg_free(r);
    return rc;
}

/* Deletes the row of (sql, p) and records the aggregate's last version in tombstones. */
static int delete_tombstoned(pg_conn *c, const char *aggregate, int64_t version, const char *sql,
                             const pg_params *p) {
    pg_params t = {0};
    pg_res *r = NULL;
    pg_args(&t, aggregate, version);
    int rc = pg_exec(c,
                     "INSERT INTO tombstones (aggregate, version) VALUES ($1, $2) "
                     "ON CONFLICT (aggregate) DO UPDATE SET version = EXCLUDED.version, delete_time = now()",
                     &t, NULL);
    if (rc == 0) rc = pg_exec(c, sql, p, &r);
    if (rc == 0 && pg_affected(r) == 0) rc = OM_E_NOT_FOUND;
    pg_free(r);
    return rc;
}

/* ---- accounts ---------------------------------------------------------------------------- */

#define ACCOUNT_COLS                                                                              \
    "a.hub_id, a.name, a.kind, a.hosting_location, a.sensitive_data_enabled, a.state, "          \
    "a.mrr_amount_minor, a.mrr_currency, a.version, a.create_time, a.update_time, "               \
    "COALESCE((SELECT string_agg(s.hub || ':' || s.tier, ',') FROM subscriptions s "             \
    "WHERE s.hub_id = a.hub_id), '')"

static void parse_subs(const char *csv, acct_account *a) {
    a->n_subs = 0;
    const char *p = csv;
    while (*p != '\0' && a->n_subs < ACCT_MAX_SUBS_IN) {
        char hub[32], tier[32];
        size_t n = strcspn(p, ",");
        const char *colon = memchr(p, ':', n);
        if (colon != NULL && (size_t)(colon - p) < sizeof hub && n - (size_t)(colon - p) - 1 < sizeof tier) {
            size_t hl = (size_t)(colon - p), tl = n - hl - 1;
            memcpy(hub, p, hl);
            hub[hl] = '\0';
            memcpy(tier, colon + 1, tl);
            tier[tl] = '\0';
            a->subs[a->n_subs].hub = acct_hub_from_name(hub);
            a->subs[a->n_subs].tier = acct_tier_from_name(tier);
            a->n_subs++;
        }
        p += n;
        if (*p == ',') p++;
    }
    acct_subs_sort(a);
}

static void read_account(const pg_res *r, int row, store_mem *m, void *out) {
    acct_account *a = out;
    memset(a, 0, sizeof *a);
    a->hub_id = pg_u64(r, row, 0);
    a->name = om_strdup(m, pg_str(r, row, 1));
    a->kind = acct_kind_from_name(pg_str(r, row, 2));
    a->hosting_location = om_strdup(m, pg_str(r, row, 3));
    a->sensitive_data_enabled = pg_bool(r, row, 4);
    a->state = acct_state_from_name(pg_str(r, row, 5));
    a->mrr_amount_minor = pg_i64(r, row, 6);
    snprintf(a->mrr_currency, sizeof a->mrr_currency, "%s", pg_str(r, row, 7));
    a->version = pg_i64(r, row, 8);
    a->create_time_us = pg_time_us(r, row, 9);
    a->update_time_us = pg_time_us(r, row, 10);
    parse_subs(pg_str(r, row, 11), a);
}

int store_account_get(pg_conn *c, uint64_t hub_id, bool for_update, store_mem *m, acct_account *out) {
    pg_params p = {0};
    pg_p_u64(&p, hub_id);
    return pg_row(c,
                  for_update ? "SELECT " ACCOUNT_COLS " FROM accounts a WHERE a.hub_id = $1 FOR UPDATE"
                             : "SELECT " ACCOUNT_COLS " FROM accounts a WHERE a.hub_id = $1",
                  &p, read_account, m, out);
}

/* Two parallel text[] literals of hub and tier names. */
static void subs_literals(const acct_account *a, char *hubs, char *tiers, size_t cap) {
    size_t hu = 0, tu = 0;
    hu += (size_t)snprintf(hubs + hu, cap - hu, "{");
    tu += (size_t)snprintf(tiers + tu, cap - tu, "{");
    for (int i = 0; i < a->n_subs && i < ACCT_MAX_SUBS_IN; i++) {
        const char *h = acct_hub_name(a->subs[i].hub), *t = acct_tier_name(a->subs[i].tier);
        hu += (size_t)snprintf(hubs + hu, cap - hu, "%s%s", i ? "," : "", h ? h : "");
        tu += (size_t)snprintf(tiers + tu, cap - tu, "%s%s", i ? "," : "", t ? t : "");
    }
    snprintf(hubs + hu, cap - hu, "}");
    snprintf(tiers + tu, cap - tu, "}");
}

static int write_subs(pg_conn *c, const acct_account *a, bool replace) {
    char hubs[256], tiers[256];
    pg_params p = {0};
    int rc;
    if (replace) {
        pg_p_u64(&p, a->hub_id);
        rc = pg_exec(c, "DELETE FROM subscriptions WHERE hub_id = $1", &p, NULL);
        if (rc != 0) return rc;
    }
    if (a->n_subs == 0) return 0;
    subs_literals(a, hubs, tiers, sizeof hubs);
    memset(&p, 0, sizeof p);
    pg_args(&p, a->hub_id, hubs, tiers);
    return pg_exec(c,
                   "INSERT INTO subscriptions (hub_id, hub, tier) "
                   "SELECT $1, h, t FROM unnest($2::text[], $3::text[]) AS x(h, t)",
                   &p, NULL);
}

/* The next id of a sequence that no imported row holds (sql: one id or none). */
static int next_free_id(pg_conn *c, const char *sql, uint64_t *out) {
    for (int tries = 0; tries < 100; tries++) {
        pg_res *r = NULL;
        int rc = pg_exec(c, sql, NULL, &r);
        bool found = rc == 0 && pg_nrows(r) == 1;
        if (found) *out = pg_u64(r, 0, 0);
        pg_free(r);
        if (rc != 0) return rc;
        if (found) return 0;
    }
    return OM_E_INTERNAL;
}

int store_account_insert(pg_conn *c, acct_account *a) {
    char agg[64];
    int rc;
    if (a->hub_id == 0 && (rc = next_free_id(c,
                                               "SELECT s.n FROM (SELECT nextval('hub_id_seq') AS n) s "
                                               "WHERE NOT EXISTS (SELECT 1 FROM accounts WHERE hub_id = s.n)",
                                               &a->hub_id)) != 0)
        return rc;
    store_account_subject(a->hub_id, agg, sizeof agg);
    if ((rc = next_version_after_tombstone(c, agg, &a->version)) != 0) return rc;

    pg_params p = {0};
    pg_res *r = NULL;
    pg_args(&p, a->hub_id, a->name, acct_kind_name(a->kind), a->hosting_location, a->sensitive_data_enabled,
            acct_state_name(a->state), a->mrr_amount_minor, a->mrr_currency, a->version);
    rc = pg_exec(c,
                 "INSERT INTO accounts (hub_id, name, kind, hosting_location, sensitive_data_enabled, "
                 "state, mrr_amount_minor, mrr_currency, version) "
                 "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
                 "ON CONFLICT (hub_id) DO NOTHING RETURNING create_time, update_time",
                 &p, &r);
    if (rc == 0 && pg_nrows(r) == 0) rc = OM_E_ALREADY_EXISTS;
    if (rc == 0) {
        a->create_time_us = pg_time_us(r, 0, 0);
        a->update_time_us = pg_time_us(r, 0, 1);
    }
    pg_free(r);
    if (rc != 0) return rc;
    return write_subs(c, a, false);
}

int store_account_update(pg_conn *c, acct_account *a) {
    pg_params p = {0};
    pg_res *r = NULL;
    pg_args(&p, a->hub_id, a->name, a->hosting_location, a->sensitive_data_enabled, acct_state_name(a->state),
            a->mrr_amount_minor, a->mrr_currency, a->version);
    int rc = pg_exec(c,
                     "UPDATE accounts SET name = $2, hosting_location = $3, sensitive_data_enabled = $4, "
                     "state = $5, mrr_amount_minor = $6, mrr_currency = $7, version = $8, "
                     "update_time = now() WHERE hub_id = $1 RETURNING update_time",
                     &p, &r);
    if (rc == 0 && pg_nrows(r) == 0) rc = OM_E_NOT_FOUND;
    if (rc == 0) a->update_time_us = pg_time_us(r, 0, 0);
    pg_free(r);
    if (rc != 0) return rc;
    return write_subs(c, a, true);
}

int store_account_delete(pg_conn *c, uint64_t hub_id, int64_t last_version) {
    char agg[64];
    store_account_subject(hub_id, agg, sizeof agg);
    pg_params p = {0};
    pg_p_u64(&p, hub_id);
    return delete_tombstoned(c, agg, last_version, "DELETE FROM accounts WHERE hub_id = $1", &p);
}

int store_accounts_list(pg_conn *c, const store_account_filter *f, store_mem *m, acct_account *out,
                        int *n) {
    pg_params p = {0};
    pg_args(&p, f->member_user_id, f->kind ? acct_kind_name(f->kind) : "", f->state ? acct_state_name(f->state) : "",
            f->name_prefix ? f->name_prefix : "", f->after_hub_id, f->limit);
    return pg_rows(c,
                   "SELECT " ACCOUNT_COLS " FROM accounts a "
                   "WHERE ($1::bigint = 0 OR EXISTS (SELECT 1 FROM memberships m "
                   "  WHERE m.hub_id = a.hub_id AND m.user_id = $1::bigint)) "
                   "AND ($2::text = '' OR a.kind = $2::text) "
                   "AND ($3::text = '' OR a.state = $3::text) "
                   "AND ($4::text = '' OR starts_with(lower(a.name), lower($4::text))) "
                   "AND a.hub_id > $5::bigint ORDER BY a.hub_id LIMIT $6::bigint",
                   &p, read_account, m, out, sizeof *out, f->limit, n);
}

int store_accounts_batch(pg_conn *c, const uint64_t *ids, int n_ids, store_mem *m, acct_account *out,
                         int *n) {
    pg_params p = {0};
    *n = 0;
    if (n_ids == 0) return 0;
    pg_p_str(&p, om_id_array(m->alloc(m->ud, OM_ID_ARRAY_CAP(n_ids)), ids, (size_t)n_ids));
    return pg_rows(c, "SELECT " ACCOUNT_COLS " FROM accounts a WHERE a.hub_id = ANY($1::bigint[])", &p,
                   read_account, m, out, sizeof *out, n_ids, n);
}

/* ---- users ------------------------------------------------------------------------------- */

#define USER_COLS                                                                                \
    "u.user_id, u.email, u.display_name, u.locale, u.two_factor_enabled, u.version, "            \
    "u.create_time, u.update_time"

static void read_user(const pg_res *r, int row, store_mem *m, void *out) {
    acct_user *u = out;
    memset(u, 0, sizeof *u);
    u->user_id = pg_u64(r, row, 0);
    u->email = om_strdup(m, pg_str(r, row, 1));
    u->display_name = om_strdup(m, pg_str(r, row, 2));
    u->locale = om_strdup(m, pg_str(r, row, 3));
    u->two_factor_enabled = pg_bool(r, row, 4);
    u->version = pg_i64(r, row, 5);
    u->create_time_us = pg_time_us(r, row, 6);
    u->update_time_us = pg_time_us(r, row, 7);
}

int store_user_get(pg_conn *c, uint64_t user_id, bool for_update, store_mem *m, acct_user *out) {
    pg_params p = {0};
    pg_p_u64(&p, user_id);
    return pg_row(c,
                  for_update ? "SELECT " USER_COLS " FROM users u WHERE u.user_id = $1 FOR UPDATE"
                             : "SELECT " USER_COLS " FROM users u WHERE u.user_id = $1",
                  &p, read_user, m, out);
}

int store_user_get_by_email(pg_conn *c, const char *email, store_mem *m, acct_user *out) {
    pg_params p = {0};
    pg_p_str(&p, email);
    return pg_row(c, "SELECT " USER_COLS " FROM users u WHERE lower(u.email) = lower($1::text)", &p, read_user, m,
                  out);
}

static int email_in_use(pg_conn *c, const char *email, uint64_t except_user, bool *out) {
    pg_params p = {0};
    pg_args(&p, email, except_user);
    return pg_exists(c,
                     "SELECT EXISTS (SELECT 1 FROM users WHERE lower(email) = lower($1::text) "
                     "AND user_id <> $2::bigint)",
                     &p, out);
}

int store_user_insert(pg_conn *c, acct_user *u) {
    char agg[64];
    bool taken = false;
    int rc;
    if (u->user_id == 0 && (rc = next_free_id(c,
                                                "SELECT s.n FROM (SELECT nextval('user_id_seq') AS n) s "
                                                "WHERE NOT EXISTS (SELECT 1 FROM users WHERE user_id = s.n)",
                                                &u->user_id)) != 0)
        return rc;
    store_user_subject(u->user_id, agg, sizeof agg);
    if ((rc = next_version_after_tombstone(c, agg, &u->version)) != 0) return rc;

    pg_params p = {0};
    pg_res *r = NULL;
    pg_args(&p, u->user_id, u->email, u->display_name, u->locale, u->two_factor_enabled, u->version);
    /* DO NOTHING waits for a concurrent insert of the same email and then
     * skips, so the transaction stays usable to tell the two keys apart */
    rc = pg_exec(c,
                 "INSERT INTO users (user_id, email, display_name, locale, two_factor_enabled, version) "
                 "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING "
                 "RETURNING create_time, update_time",
                 &p, &r);
    if (rc == 0 && pg_nrows(r) == 1) {
        u->create_time_us = pg_time_us(r, 0, 0);
        u->update_time_us = pg_time_us(r, 0, 1);
        pg_free(r);
        return 0;
    }
    pg_free(r);
    if (rc != 0) return rc;
    if ((rc = email_in_use(c, u->email, u->user_id, &taken)) != 0) return rc;
    return taken ? OM_E_EMAIL_TAKEN : OM_E_ALREADY_EXISTS;
}

int store_user_update(pg_conn *c, acct_user *u) {
    bool taken = false;
    int rc = email_in_use(c, u->email, u->user_id, &taken);
    if (rc != 0) return rc;
    if (taken) return OM_E_EMAIL_TAKEN;
    pg_params p = {0};
    pg_res *r = NULL;
    pg_args(&p, u->user_id, u->email, u->display_name, u->locale, u->two_factor_enabled, u->version);
    rc = pg_exec(c,
                 "UPDATE users SET email = $2, display_name = $3, locale = $4, two_factor_enabled = $5, "
                 "version = $6, update_time = now() WHERE user_id = $1 RETURNING update_time",
                 &p, &r);
    if (rc != 0 && unique_violation(c)) rc = OM_E_EMAIL_TAKEN; /* lost a race on the email */
    if (rc == 0 && pg_nrows(r) == 0) rc = OM_E_NOT_FOUND;
    if (rc == 0) u->update_time_us = pg_time_us(r, 0, 0);
    pg_free(r);
    return rc;
}

int store_user_delete(pg_conn *c, uint64_t user_id, int64_t last_version) {
    char agg[64];
    store_user_subject(user_id, agg, sizeof agg);
    pg_params p = {0};
    pg_p_u64(&p, user_id);
    return delete_tombstoned(c, agg, last_version, "DELETE FROM users WHERE user_id = $1", &p);
}

int store_users_list(pg_conn *c, const store_user_filter *f, store_mem *m, acct_user *out, int *n) {
    pg_params p = {0};
    pg_args(&p, f->visible_to, f->email ? f->email : "", f->query_prefix ? f->query_prefix : "", f->after_user_id,
            f->limit);
    return pg_rows(c,
                   "SELECT " USER_COLS " FROM users u "
                   "WHERE ($1::bigint = 0 OR u.user_id = $1::bigint OR EXISTS ("
                   "  SELECT 1 FROM memberships mine JOIN memberships theirs USING (hub_id) "
                   "  WHERE mine.user_id = $1::bigint AND theirs.user_id = u.user_id)) "
                   "AND ($2::text = '' OR lower(u.email) = lower($2::text)) "
                   "AND ($3::text = '' OR starts_with(lower(u.email), lower($3::text)) "
                   "  OR starts_with(lower(u.display_name), lower($3::text))) "
                   "AND u.user_id > $4::bigint ORDER BY u.user_id LIMIT $5::bigint",
                   &p, read_user, m, out, sizeof *out, f->limit, n);
}

int store_users_batch(pg_conn *c, const uint64_t *ids, int n_ids, store_mem *m, acct_user *out, int *n) {
    pg_params p = {0};
    *n = 0;
    if (n_ids == 0) return 0;
    pg_p_str(&p, om_id_array(m->alloc(m->ud, OM_ID_ARRAY_CAP(n_ids)), ids, (size_t)n_ids));
    return pg_rows(c, "SELECT " USER_COLS " FROM users u WHERE u.user_id = ANY($1::bigint[])", &p, read_user,
                   m, out, sizeof *out, n_ids, n);
}

int store_users_share_account(pg_conn *c, uint64_t a, uint64_t b, bool *out) {
    pg_params p = {0};
    pg_args(&p, a, b);
    return pg_exists(c,
                     "SELECT EXISTS (SELECT 1 FROM memberships x JOIN memberships y USING (hub_id) "
                     "WHERE x.user_id = $1 AND y.user_id = $2)",
                     &p, out);
}

int store_user_manages_any(pg_conn *c, uint64_t user_id, bool *out) {
    pg_params p = {0};
    pg_p_u64(&p, user_id);
    return pg_exists(c,
                     "SELECT EXISTS (SELECT 1 FROM memberships WHERE user_id = $1 "
                     "AND roles && ARRAY['SUPER_ADMIN', 'ACCOUNT_PERMISSIONS'])",
                     &p, out);
}

/* ---- memberships ------------------------------------------------------------------------- */

#define MEMBERSHIP_COLS                                                                          \
    "m.hub_id, m.user_id, array_to_string(m.roles, ','), array_to_string(m.seats, ','), "        \
    "m.partner_employee, COALESCE(m.partner_hub_id, 0), COALESCE(m.assignment_id, ''), "         \
    "m.link_owns_membership, m.link_time, m.version, m.create_time, m.update_time, "             \
    "COALESCE(m.created_by_user_id, 0)"

static void read_membership(const pg_res *r, int row, store_mem *mem, void *out) {
    acct_membership *m = out;
    memset(m, 0, sizeof *m);
    m->hub_id = pg_u64(r, row, 0);
    m->user_id = pg_u64(r, row, 1);
    m->roles = acct_roles_from_names(pg_str(r, row, 2));
    m->seats = acct_seats_from_names(pg_str(r, row, 3));
    m->partner_employee = pg_bool(r, row, 4);
    m->partner_hub_id = pg_u64(r, row, 5);
    m->assignment_id = om_strdup(mem, pg_str(r, row, 6));
    m->link_owns_membership = pg_bool(r, row, 7);
    m->link_time_us = pg_isnull(r, row, 8) ? 0 : pg_time_us(r, row, 8);
    m->version = pg_i64(r, row, 9);
    m->create_time_us = pg_time_us(r, row, 10);
    m->update_time_us = pg_time_us(r, row, 11);
    m->created_by_user_id = pg_u64(r, row, 12);
}

int store_membership_get(pg_conn *c, uint64_t hub_id, uint64_t user_id, bool for_update, store_mem *m,
                         acct_membership *out) {
    pg_params p = {0};
    pg_args(&p, hub_id, user_id);
    return pg_row(c,
                  for_update ? "SELECT " MEMBERSHIP_COLS " FROM memberships m "
                               "WHERE m.hub_id = $1 AND m.user_id = $2 FOR UPDATE"
                             : "SELECT " MEMBERSHIP_COLS " FROM memberships m "
                               "WHERE m.hub_id = $1 AND m.user_id = $2",
                  &p, read_membership, m, out);
}

int store_membership_insert(pg_conn *c, acct_membership *mb) {
    char agg[96], roles[128], seats[64];
    store_membership_subject(mb->hub_id, mb->user_id, agg, sizeof agg);
    int rc = next_version_after_tombstone(c, agg, &mb->version);
    if (rc != 0) return rc;
    acct_roles_literal(mb->roles, roles, sizeof roles);
    acct_seats_literal(mb->seats, seats, sizeof seats);

    pg_params p = {0};
    pg_res *r = NULL;
    pg_args(&p, mb->hub_id, mb->user_id, roles, seats, mb->partner_employee, mb->partner_hub_id,
            mb->assignment_id ? mb->assignment_id : "", mb->link_owns_membership, mb->version, mb->created_by_user_id);
    rc = pg_exec(c,
                 "INSERT INTO memberships (hub_id, user_id, roles, seats, partner_employee, "
                 "partner_hub_id, assignment_id, link_owns_membership, link_time, version, created_by_user_id) "
                 "VALUES ($1, $2, $3::text[], $4::text[], $5, NULLIF($6::bigint, 0), NULLIF($7::text, ''), "
                 "$8, CASE WHEN $6::bigint = 0 THEN NULL ELSE now() END, $9, NULLIF($10::bigint, 0)) "
                 "ON CONFLICT (hub_id, user_id) DO NOTHING RETURNING create_time, update_time, link_time",
                 &p, &r);
    if (rc != 0 && fk_violation(c)) rc = OM_E_NOT_FOUND; /* account or user deleted meanwhile */
    if (rc == 0 && pg_nrows(r) == 0) rc = OM_E_ALREADY_EXISTS;
    if (rc == 0) {
        mb->create_time_us = pg_time_us(r, 0, 0);
        mb->update_time_us = pg_time_us(r, 0, 1);
        mb->link_time_us = pg_isnull(r, 0, 2) ? 0 : pg_time_us(r, 0, 2);
    }
    pg_free(r);
    return rc;
}

int store_membership_update(pg_conn *c, acct_membership *mb) {
    char roles[128], seats[64];
    acct_roles_literal(mb->roles, roles, sizeof roles);
    acct_seats_literal(mb->seats, seats, sizeof seats);
    pg_params p = {0};
    pg_res *r = NULL;
    pg_args(&p, mb->hub_id, mb->user_id, roles, seats, mb->partner_employee, mb->partner_hub_id,
            mb->assignment_id ? mb->assignment_id : "", mb->link_owns_membership, mb->version);
    /* link_time stays while the same link stays, and is set anew with a new one */
    int rc = pg_exec(c,
                     "UPDATE memberships SET roles = $3::text[], seats = $4::text[], partner_employee = $5, "
                     "partner_hub_id = NULLIF($6::bigint, 0), assignment_id = NULLIF($7::text, ''), "
                     "link_owns_membership = $8, "
                     "link_time = CASE WHEN $6::bigint = 0 THEN NULL "
                     "  WHEN assignment_id IS NOT DISTINCT FROM NULLIF($7::text, '') THEN link_time "
                     "  ELSE now() END, "
                     "version = $9, update_time = now() WHERE hub_id = $1 AND user_id = $2 "
                     "RETURNING update_time, link_time",
                     &p, &r);
    if (rc == 0 && pg_nrows(r) == 0) rc = OM_E_NOT_FOUND;
    if (rc == 0) {
        mb->update_time_us = pg_time_us(r, 0, 0);
        mb->link_time_us = pg_isnull(r, 0, 1) ? 0 : pg_time_us(r, 0, 1);
    }
    pg_free(r);
    return rc;
}

int store_membership_delete(pg_conn *c, uint64_t hub_id, uint64_t user_id, int64_t last_version) {
    char agg[96];
    store_membership_subject(hub_id, user_id, agg, sizeof agg);
    pg_params p = {0};
    pg_args(&p, hub_id, user_id);
    return delete_tombstoned(c, agg, last_version, "DELETE FROM memberships WHERE hub_id = $1 AND user_id = $2", &p);
}

int store_memberships_list(pg_conn *c, const store_membership_filter *f, store_mem *m,
                           acct_membership *out, int *n) {
    char roles[128];
    pg_params p = {0};
    acct_roles_literal(f->any_roles, roles, sizeof roles);
    pg_args(&p, f->hub_id, f->user_id, roles, f->visible_to, f->after_hub_id, f->after_user_id, f->limit);
    return pg_rows(c,
                   "SELECT " MEMBERSHIP_COLS " FROM memberships m "
                   "WHERE ($1::bigint = 0 OR m.hub_id = $1::bigint) "
                   "AND ($2::bigint = 0 OR m.user_id = $2::bigint) "
                   "AND ($3::text[] = '{}' OR m.roles && $3::text[]) "
                   "AND ($4::bigint = 0 OR EXISTS (SELECT 1 FROM memberships v "
                   "  WHERE v.hub_id = m.hub_id AND v.user_id = $4::bigint)) "
                   "AND (m.hub_id, m.user_id) > ($5::bigint, $6::bigint) "
                   "ORDER BY m.hub_id, m.user_id LIMIT $7::bigint",
                   &p, read_membership, m, out, sizeof *out, f->limit, n);
}

int store_count_super_admins(pg_conn *c, uint64_t hub_id, uint64_t except_user, long *out) {
    pg_params p = {0};
    pg_res *r = NULL;
    pg_args(&p, hub_id, except_user);
    int rc = pg_exec(c,
                     "SELECT count(*) FROM memberships WHERE hub_id = $1 AND user_id <> $2 "
                     "AND 'SUPER_ADMIN' = ANY(roles)",
                     &p, &r);
    if (rc == 0) *out = (long)pg_i64(r, 0, 0);
    pg_free(r);
    return rc;
}
