/* partners_store.c — the SQL of the partners service (see partners_store.h).
 * Every statement is a constant with $n parameters. */
#include "partners_store.h"

#include <stdio.h>
#include <string.h>

#include "om_err.h"
#include "om_ids.h"
#include "om_sql.h"
#include "partners_rules.h"

/* Assignment states in SQL text (om_sql.h): PART_ST_* of partners_rules.h. */
#define PART_SQL_PENDING 1
#define PART_SQL_ACTIVE 2
#define PART_SQL_DECLINED 3
#define PART_SQL_EXPIRED 4
#define PART_SQL_CANCELLED 5
#define PART_SQL_REVOKED 6
_Static_assert(PART_SQL_PENDING == PART_ST_PENDING && PART_SQL_ACTIVE == PART_ST_ACTIVE &&
                   PART_SQL_DECLINED == PART_ST_DECLINED && PART_SQL_EXPIRED == PART_ST_EXPIRED &&
                   PART_SQL_CANCELLED == PART_ST_CANCELLED && PART_SQL_REVOKED == PART_ST_REVOKED,
               "PART_SQL_* and PART_ST_* agree");
#define SQL_ACTIVE OM_SQL(PART_SQL_ACTIVE)
#define SQL_PENDING OM_SQL(PART_SQL_PENDING)
/* Open (PART-06): the predicate of the unique index assignment_open_per_client. */
#define SQL_OPEN SQL_PENDING ", " SQL_ACTIVE
/* Ended: every state after an answer. */
#define SQL_ENDED                                                                                       \
    OM_SQL(PART_SQL_DECLINED) ", " OM_SQL(PART_SQL_EXPIRED) ", " OM_SQL(PART_SQL_CANCELLED) ", "             \
        OM_SQL(PART_SQL_REVOKED)

static int exec_current(pg_conn *c, const char *sql, const pg_params *p, int64_t version, bool *current) {
    pg_res *r = NULL;
    int rc = pg_exec(c, sql, p, &r);
    if (rc == 0 && current != NULL) *current = pg_nrows(r) == 1 && pg_i64(r, 0, 0) == version;
    pg_free(r);
    return rc;
}

/* ---- local copies -------------------------------------------------------------- */

int ps_account_put(pg_conn *c, const ps_account *a, bool *current) {
    pg_params p = {0};
    pg_p_u64(&p, a->hub_id);
    pg_p_i64(&p, a->kind);
    pg_p_str(&p, a->name ? a->name : "");
    pg_p_i64(&p, a->mrr_minor);
    pg_p_str(&p, a->mrr_currency ? a->mrr_currency : "");
    pg_p_bool(&p, a->deleted);
    pg_p_i64(&p, a->version);
    int rc = pg_exec(c,
                     "INSERT INTO account_copies (hub_id, kind, name, mrr_minor, mrr_currency, deleted, version)"
                     " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (hub_id) DO UPDATE SET"
                     " kind = EXCLUDED.kind, name = EXCLUDED.name, mrr_minor = EXCLUDED.mrr_minor,"
                     " mrr_currency = EXCLUDED.mrr_currency, deleted = EXCLUDED.deleted, version = EXCLUDED.version"
                     " WHERE account_copies.version < EXCLUDED.version",
                     &p, NULL);
    if (rc != 0 || current == NULL) return rc;
    pg_params q = {0};
    pg_p_u64(&q, a->hub_id);
    return exec_current(c, "SELECT version FROM account_copies WHERE hub_id = $1", &q, a->version, current);
}

int ps_user_put(pg_conn *c, const ps_user *u, bool *current) {
    pg_params p = {0};
    pg_p_u64(&p, u->user_id);
    pg_p_str(&p, u->email ? u->email : "");
    pg_p_str(&p, u->display_name ? u->display_name : "");
    pg_p_bool(&p, u->deleted);
    pg_p_i64(&p, u->version);
    int rc = pg_exec(c,
                     "INSERT INTO user_copies (user_id, email, display_name, deleted, version)"
                     " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (user_id) DO UPDATE SET"
                     " email = EXCLUDED.email, display_name = EXCLUDED.display_name,"
                     " deleted = EXCLUDED.deleted, version = EXCLUDED.version"
                     " WHERE user_copies.version < EXCLUDED.version",
                     &p, NULL);
    if (rc != 0 || current == NULL) return rc;
    pg_params q = {0};
    pg_p_u64(&q, u->user_id);
    return exec_current(c, "SELECT version FROM user_copies WHERE user_id = $1", &q, u->version, current);
}

int ps_membership_put(pg_conn *c, const ps_membership *mb, bool *current) {
    pg_params p = {0};
    pg_p_u64(&p, mb->hub_id);
    pg_p_u64(&p, mb->user_id);
    pg_p_bool(&p, mb->present);
    pg_p_i64(&p, mb->roles);
    pg_p_bool(&p, mb->partner_employee);
    pg_p_i64(&p, (int64_t)mb->link_partner_hub_id);
    pg_p_str(&p, mb->link_assignment_id ? mb->link_assignment_id : "");
    pg_p_i64(&p, mb->version);
    int rc = pg_exec(c,
                     "INSERT INTO membership_copies (hub_id, user_id, present, roles, partner_employee,"
                     " link_partner_hub_id, link_assignment_id, version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
                     " ON CONFLICT (hub_id, user_id) DO UPDATE SET present = EXCLUDED.present,"
                     " roles = EXCLUDED.roles, partner_employee = EXCLUDED.partner_employee,"
                     " link_partner_hub_id = EXCLUDED.link_partner_hub_id,"
                     " link_assignment_id = EXCLUDED.link_assignment_id, version = EXCLUDED.version"
                     " WHERE membership_copies.version < EXCLUDED.version",
                     &p, NULL);
    if (rc != 0 || current == NULL) return rc;
    pg_params q = {0};
    pg_p_u64(&q, mb->hub_id);
    pg_p_u64(&q, mb->user_id);
    return exec_current(c, "SELECT version FROM membership_copies WHERE hub_id = $1 AND user_id = $2", &q,
                        mb->version, current);
}

static void read_account(const pg_res *r, int i, ps_mem *m, void *out_) {
    ps_account *out = out_;
    out->hub_id = pg_u64(r, i, 0);
    out->kind = (int)pg_i64(r, i, 1);
    out->name = om_strdup(m, pg_str(r, i, 2));
    out->mrr_minor = pg_i64(r, i, 3);
    out->mrr_currency = om_strdup(m, pg_str(r, i, 4));
    out->deleted = pg_bool(r, i, 5);
    out->version = pg_i64(r, i, 6);
}

int ps_account_get(pg_conn *c, uint64_t hub_id, ps_mem *m, ps_account *out) {
    pg_params p = {0};
    pg_p_u64(&p, hub_id);
    return pg_row(c,
                  "SELECT hub_id, kind, name, mrr_minor, mrr_currency, deleted, version FROM account_copies"
                  " WHERE hub_id = $1",
                  &p, read_account, m, out);
}

static void read_user(const pg_res *r, int i, ps_mem *m, void *out_) {
    ps_user *out = out_;
    out->user_id = pg_u64(r, i, 0);
    out->email = om_strdup(m, pg_str(r, i, 1));
    out->display_name = om_strdup(m, pg_str(r, i, 2));
    out->deleted = pg_bool(r, i, 3);
    out->version = pg_i64(r, i, 4);
}

int ps_user_get(pg_conn *c, uint64_t user_id, ps_mem *m, ps_user *out) {
    pg_params p = {0};
    pg_p_u64(&p, user_id);
    return pg_row(c, "SELECT user_id, email, display_name, deleted, version FROM user_copies WHERE user_id = $1", &p,
                  read_user, m, out);
}

static void read_membership(const pg_res *r, int i, ps_mem *m, void *out_) {
    ps_membership *out = out_;
    out->hub_id = pg_u64(r, i, 0);
    out->user_id = pg_u64(r, i, 1);
    out->present = pg_bool(r, i, 2);
    out->roles = (unsigned)pg_i64(r, i, 3);
    out->partner_employee = pg_bool(r, i, 4);
    out->link_partner_hub_id = pg_u64(r, i, 5);
    out->link_assignment_id = om_strdup(m, pg_str(r, i, 6));
    out->version = pg_i64(r, i, 7);
}

int ps_membership_get(pg_conn *c, uint64_t hub_id, uint64_t user_id, int lock, ps_mem *m, ps_membership *out) {
    static const char *const sql[3] = {
        "SELECT hub_id, user_id, present, roles, partner_employee, link_partner_hub_id, link_assignment_id,"
        " version FROM membership_copies WHERE hub_id = $1 AND user_id = $2",
        "SELECT hub_id, user_id, present, roles, partner_employee, link_partner_hub_id, link_assignment_id,"
        " version FROM membership_copies WHERE hub_id = $1 AND user_id = $2 FOR SHARE",
        "SELECT hub_id, user_id, present, roles, partner_employee, link_partner_hub_id, link_assignment_id,"
        " version FROM membership_copies WHERE hub_id = $1 AND user_id = $2 FOR UPDATE",
    };
    pg_params p = {0};
    pg_p_u64(&p, hub_id);
    pg_p_u64(&p, user_id);
    return pg_row(c, sql[lock < 0 || lock > 2 ? 0 : lock], &p, read_membership, m, out);
}

/* ---- tags ------------------------------------------------------------------------ */

int ps_tag_record(pg_conn *c, uint64_t partner, uint64_t user, uint64_t by) {
    pg_params p = {0};
    pg_p_u64(&p, partner);
    pg_p_u64(&p, user);
    pg_p_i64(&p, (int64_t)by);
    return pg_exec(c,
                   "INSERT INTO employee_tag (partner_hub_id, user_id, tagged_by) VALUES ($1, $2, $3)"
                   " ON CONFLICT DO NOTHING",
                   &p, NULL);
}

int ps_tag_forget(pg_conn *c, uint64_t partner, uint64_t user) {
    pg_params p = {0};
    pg_p_u64(&p, partner);
    pg_p_u64(&p, user);
    return pg_exec(c, "DELETE FROM employee_tag WHERE partner_hub_id = $1 AND user_id = $2", &p, NULL);
}

#define EMP_SQL                                                                                         \
    "SELECT m.user_id, COALESCE(u.email, ''), COALESCE(u.display_name, ''),"                           \
    " (SELECT count(*) FROM assignment a WHERE a.partner_hub_id = m.hub_id AND"                        \
    "   a.employee_user_id = m.user_id AND a.state = " SQL_ACTIVE "),"                                 \
    " (SELECT count(*) FROM assignment a WHERE a.partner_hub_id = m.hub_id AND"                        \
    "   a.employee_user_id = m.user_id AND a.state = " SQL_PENDING "),"                                \
    " (SELECT max(x.at) FROM activity x JOIN assignment a ON a.id = x.assignment_id"                   \
    "   WHERE a.partner_hub_id = m.hub_id AND a.employee_user_id = m.user_id),"                        \
    " t.tag_time, COALESCE(t.tagged_by, 0)"                                                              \
    " FROM membership_copies m LEFT JOIN user_copies u ON u.user_id = m.user_id"                            \
    " LEFT JOIN employee_tag t ON t.partner_hub_id = m.hub_id AND t.user_id = m.user_id"               \
    " WHERE m.hub_id = $1 AND m.present AND m.partner_employee"

static void read_employee(const pg_res *r, int i, ps_mem *m, void *out_) {
    ps_employee *e = out_;
    e->user_id = pg_u64(r, i, 0);
    e->email = om_strdup(m, pg_str(r, i, 1));
    e->display_name = om_strdup(m, pg_str(r, i, 2));
    e->client_count = (int)pg_i64(r, i, 3);
    e->pending_count = (int)pg_i64(r, i, 4);
    e->last_activity_us = pg_time_us(r, i, 5);
    e->tag_us = pg_time_us(r, i, 6);
    e->tagged_by = pg_u64(r, i, 7);
}

int ps_employees_list(pg_conn *c, uint64_t partner, const char *query, int offset, int limit, ps_mem *m,
                      ps_employee *out, int *n) {
    pg_params p = {0};
    pg_p_u64(&p, partner);
    pg_p_str(&p, query ? query : "");
    pg_p_i64(&p, offset);
    pg_p_i64(&p, limit);
    return pg_rows(c,
                   EMP_SQL " AND ($2 = '' OR strpos(lower(COALESCE(u.display_name, '')), lower($2)) > 0"
                           " OR strpos(lower(COALESCE(u.email, '')), lower($2)) > 0)"
                           " ORDER BY lower(COALESCE(u.display_name, '')), m.user_id OFFSET $3 LIMIT $4",
                   &p, read_employee, m, out, sizeof *out, limit, n);
}

int ps_employee_get(pg_conn *c, uint64_t partner, uint64_t user, ps_mem *m, ps_employee *out) {
    pg_params p = {0};
    pg_p_u64(&p, partner);
    pg_p_u64(&p, user);
    return pg_row(c, EMP_SQL " AND m.user_id = $2", &p, read_employee, m, out);
}

/* ---- clients ----------------------------------------------------------------------- */

int ps_client_add(pg_conn *c, uint64_t partner, uint64_t client, int source, bool *added) {
    pg_params p = {0};
    pg_res *r = NULL;
    pg_p_u64(&p, partner);
    pg_p_u64(&p, client);
    pg_p_i64(&p, source);
    int rc = pg_exec(c,
                     "INSERT INTO client (partner_hub_id, client_hub_id, source) VALUES ($1, $2, $3)"
                     " ON CONFLICT DO NOTHING",
                     &p, &r);
    *added = rc == 0 && pg_affected(r) == 1;
    pg_free(r);
    return rc;
}

#define CLIENT_SQL                                                                              \
    "SELECT c.client_hub_id, COALESCE(a.name, ''), c.source,"                                  \
    " (SELECT count(*) FROM assignment s WHERE s.partner_hub_id = c.partner_hub_id AND"        \
    "   s.client_hub_id = c.client_hub_id AND s.state = " SQL_ACTIVE "),"                      \
    " c.add_time, COALESCE(a.mrr_minor, 0), COALESCE(a.mrr_currency, '')"                        \
    " FROM client c LEFT JOIN account_copies a ON a.hub_id = c.client_hub_id WHERE c.partner_hub_id = $1"

static void read_client(const pg_res *r, int i, ps_mem *m, void *out_) {
    ps_client *out = out_;
    out->client_hub_id = pg_u64(r, i, 0);
    out->name = om_strdup(m, pg_str(r, i, 1));
    out->source = (int)pg_i64(r, i, 2);
    out->active_count = (int)pg_i64(r, i, 3);
    out->add_us = pg_time_us(r, i, 4);
    out->mrr_minor = pg_i64(r, i, 5);
    out->mrr_currency = om_strdup(m, pg_str(r, i, 6));
}

int ps_client_get(pg_conn *c, uint64_t partner, uint64_t client, ps_mem *m, ps_client *out) {
    pg_params p = {0};
    pg_p_u64(&p, partner);
    pg_p_u64(&p, client);
    return pg_row(c, CLIENT_SQL " AND c.client_hub_id = $2", &p, read_client, m, out);
}

int ps_clients_list(pg_conn *c, uint64_t partner, const char *query, uint64_t query_hub, int offset, int limit,
                    ps_mem *m, ps_client *out, int *n) {
    pg_params p = {0};
    pg_p_u64(&p, partner);
    pg_p_str(&p, query);
    pg_p_i64(&p, (int64_t)query_hub);
    pg_p_i64(&p, offset);
    pg_p_i64(&p, limit);
    return pg_rows(c,
                   CLIENT_SQL " AND ($2::text IS NULL OR strpos(lower(COALESCE(a.name, '')), lower($2)) > 0"
                              " OR c.client_hub_id = $3)"
                              " ORDER BY lower(COALESCE(a.name, '')), c.client_hub_id OFFSET $4 LIMIT $5",
                   &p, read_client, m, out, sizeof *out, limit, n);
}

int ps_clients_all(pg_conn *c, uint64_t partner, ps_mem *m, ps_client **out, int *n) {
    pg_params p = {0};
    pg_p_u64(&p, partner);
    return pg_rows_all(c, CLIENT_SQL " ORDER BY lower(COALESCE(a.name, '')), c.client_hub_id", &p, read_client, m,
                       out, sizeof **out, n);
}

/* ---- assignments ---------------------------------------------------------------------- */

#define ASG_COLS                                                                                         \
    "a.id::text, COALESCE(a.request_id::text, ''), a.partner_hub_id, a.employee_user_id, a.client_hub_id," \
    " COALESCE(pa.name, ''), COALESCE(u.email, ''), COALESCE(u.display_name, ''), COALESCE(ca.name, ''),"  \
    " a.state, a.state_cause, a.assigned_by, a.version, a.create_time, a.activate_time, a.end_time,"        \
    " a.update_time, a.expire_time, a.send_count, a.last_send_time, a.answered_by, a.answer_time,"          \
    " a.answer_reason,"                                                                                   \
    " (SELECT max(x.at) FROM activity x WHERE x.assignment_id = a.id),"                                   \
    " (SELECT count(*) FROM activity x WHERE x.assignment_id = a.id AND x.at > now() - interval '30 days')," \
    " a.link_sync, a.link_gen, a.link_adopt, a.link_roles, a.link_actor, a.membership_removed, a.end_actor," \
    " now(), a.duration_days, a.grant_end_time, a.auto_extend, a.requested_roles, a.dormant_notice_time," \
    " a.last_send_failed"
#define ASG_FROM                                                                  \
    " FROM assignment a LEFT JOIN account_copies pa ON pa.hub_id = a.partner_hub_id" \
    " LEFT JOIN account_copies ca ON ca.hub_id = a.client_hub_id"                    \
    " LEFT JOIN user_copies u ON u.user_id = a.employee_user_id"

static void read_asg(const pg_res *r, int i, ps_mem *m, void *out_) {
    ps_assignment *a = out_;
    memset(a, 0, sizeof *a);
    snprintf(a->id, sizeof a->id, "%s", pg_str(r, i, 0));
    snprintf(a->request_id, sizeof a->request_id, "%s", pg_str(r, i, 1));
    a->partner_hub_id = pg_u64(r, i, 2);
    a->employee_user_id = pg_u64(r, i, 3);
    a->client_hub_id = pg_u64(r, i, 4);
    a->partner_name = om_strdup(m, pg_str(r, i, 5));
    a->employee_email = om_strdup(m, pg_str(r, i, 6));
    a->employee_name = om_strdup(m, pg_str(r, i, 7));
    a->client_name = om_strdup(m, pg_str(r, i, 8));
    a->state = (int)pg_i64(r, i, 9);
    a->cause = (int)pg_i64(r, i, 10);
    a->assigned_by = pg_u64(r, i, 11);
    a->version = pg_i64(r, i, 12);
    a->create_us = pg_time_us(r, i, 13);
    a->activate_us = pg_time_us(r, i, 14);
    a->end_us = pg_time_us(r, i, 15);
    a->update_us = pg_time_us(r, i, 16);
    a->expire_us = pg_time_us(r, i, 17);
    a->send_count = (int)pg_i64(r, i, 18);
    a->last_send_us = pg_time_us(r, i, 19);
    a->answered_by = pg_u64(r, i, 20);
    a->answer_us = pg_time_us(r, i, 21);
    a->answer_reason = om_strdup(m, pg_str(r, i, 22));
    a->last_activity_us = pg_time_us(r, i, 23);
    a->activity_30d = (int)pg_i64(r, i, 24);
    a->link_sync = pg_bool(r, i, 25);
    a->link_gen = (int)pg_i64(r, i, 26);
    a->link_adopt = pg_bool(r, i, 27);
    a->link_roles = (unsigned)pg_i64(r, i, 28);
    a->link_actor = om_strdup(m, pg_str(r, i, 29));
    a->membership_removed = pg_bool(r, i, 30);
    a->end_actor = om_strdup(m, pg_str(r, i, 31));
    a->now_us = pg_time_us(r, i, 32);
    a->duration_days = (int)pg_i64(r, i, 33);
    a->grant_end_us = pg_time_us(r, i, 34);
    a->auto_extend = pg_bool(r, i, 35);
    a->requested_roles = (unsigned)pg_i64(r, i, 36);
    a->dormant_notice_us = pg_time_us(r, i, 37);
    a->last_send_failed = pg_bool(r, i, 38);
}

static int asg_read_one(pg_conn *c, const char *where, const pg_params *p, ps_mem *m, ps_assignment *out) {
    char sql[2048];
    snprintf(sql, sizeof sql, "SELECT " ASG_COLS ASG_FROM " WHERE %s", where);
    return pg_row(c, sql, p, read_asg, m, out);
}

int ps_asg_get(pg_conn *c, const char *id, bool lock, ps_mem *m, ps_assignment *out) {
    if (!om_uuid_valid(id)) return OM_E_NOT_FOUND;
    pg_params p = {0};
    pg_p_str(&p, id);
    if (lock) {
        pg_res *r = NULL;
        int rc = pg_exec(c, "SELECT 1 FROM assignment WHERE id = $1::uuid FOR UPDATE", &p, &r);
        if (rc == 0 && pg_nrows(r) == 0) rc = OM_E_NOT_FOUND;
        pg_free(r);
        if (rc != 0) return rc;
    }
    return asg_read_one(c, "a.id = $1::uuid", &p, m, out);
}

int ps_asg_get_by_request(pg_conn *c, const char *request_id, bool lock, ps_mem *m, ps_assignment *out) {
    if (!om_uuid_valid(request_id)) return OM_E_NOT_FOUND;
    pg_params p = {0};
    pg_res *r = NULL;
    pg_p_str(&p, request_id);
    int rc = pg_exec(c, "SELECT id::text FROM assignment WHERE request_id = $1::uuid", &p, &r);
    if (rc == 0 && pg_nrows(r) == 0) rc = OM_E_NOT_FOUND;
    char id[40] = "";
    if (rc == 0) snprintf(id, sizeof id, "%s", pg_str(r, 0, 0));
    pg_free(r);
    return rc != 0 ? rc : ps_asg_get(c, id, lock, m, out);
}

int ps_asg_get_open(pg_conn *c, uint64_t client, uint64_t employee, bool lock, ps_mem *m, ps_assignment *out) {
    pg_params p = {0};
    pg_res *r = NULL;
    pg_p_u64(&p, client);
    pg_p_u64(&p, employee);
    int rc = pg_exec(c,
                     "SELECT id::text FROM assignment WHERE client_hub_id = $1 AND employee_user_id = $2"
                     " AND state IN (" SQL_OPEN ")",
                     &p, &r);
    if (rc == 0 && pg_nrows(r) == 0) rc = OM_E_NOT_FOUND;
    char id[40] = "";
    if (rc == 0) snprintf(id, sizeof id, "%s", pg_str(r, 0, 0));
    pg_free(r);
    if (rc != 0) return rc;
    rc = ps_asg_get(c, id, lock, m, out);
    /* it ended between the two statements: there is no open one now */
    if (rc == 0 && out->state != PART_ST_PENDING && out->state != PART_ST_ACTIVE) rc = OM_E_NOT_FOUND;
    return rc;
}

int ps_asg_insert(pg_conn *c, ps_assignment *a, bool with_request, int64_t ttl_s, ps_mem *m) {
    pg_params p = {0};
    pg_res *r = NULL;
    pg_p_u64(&p, a->partner_hub_id);
    pg_p_u64(&p, a->employee_user_id);
    pg_p_u64(&p, a->client_hub_id);
    pg_p_i64(&p, a->state);
    pg_p_i64(&p, a->cause);
    pg_p_i64(&p, (int64_t)a->assigned_by);
    pg_p_bool(&p, with_request);
    pg_p_i64(&p, ttl_s);
    pg_p_bool(&p, a->link_sync);
    pg_p_bool(&p, a->link_adopt);
    pg_p_str(&p, a->link_actor ? a->link_actor : "");
    pg_p_i64(&p, a->duration_days);
    pg_p_bool(&p, a->auto_extend);
    pg_p_i64(&p, a->requested_roles);
    /* ON CONFLICT on the PART-06 index waits for a concurrent insert of the
     * same (client, employee) and then does nothing: the loser sees the
     * winner's row instead of an error. */
    int rc = pg_exec(c,
                     "INSERT INTO assignment (id, request_id, partner_hub_id, employee_user_id, client_hub_id,"
                     " state, state_cause, assigned_by, activate_time, expire_time, send_count, last_send_time,"
                     " link_sync, link_gen, link_adopt, link_actor, link_sync_after,"
                     " duration_days, auto_extend, requested_roles, grant_end_time)"
                     " VALUES (gen_random_uuid(), CASE WHEN $7 THEN gen_random_uuid() END, $1, $2, $3, $4, $5, $6,"
                     " CASE WHEN $4 = " SQL_ACTIVE " THEN now() END,"
                     " CASE WHEN $7 THEN now() + make_interval(secs => $8) END,"
                     " CASE WHEN $7 THEN 1 ELSE 0 END, CASE WHEN $7 THEN now() END,"
                     " $9, CASE WHEN $9 THEN 1 ELSE 0 END, $10, $11, now() + interval '1 second',"
                     " $12, $13, $14,"
                     " CASE WHEN $4 = " SQL_ACTIVE " AND $12 > 0 THEN now() + make_interval(days => $12::int) END)"
                     " ON CONFLICT (client_hub_id, employee_user_id) WHERE state IN (" SQL_OPEN ") DO NOTHING"
                     " RETURNING id::text",
                     &p, &r);
    if (rc == 0 && pg_nrows(r) == 0) rc = OM_E_ALREADY_EXISTS;
    char id[40] = "";
    if (rc == 0) snprintf(id, sizeof id, "%s", pg_str(r, 0, 0));
    pg_free(r);
    return rc != 0 ? rc : ps_asg_get(c, id, false, m, a);
}

int ps_asg_save(pg_conn *c, ps_assignment *a, ps_mem *m) {
    pg_params p = {0};
    pg_p_str(&p, a->id);
    pg_p_i64(&p, a->state);
    pg_p_i64(&p, a->cause);
    pg_p_i64(&p, a->send_count);
    pg_p_i64(&p, (int64_t)a->answered_by);
    pg_p_str(&p, a->answer_reason ? a->answer_reason : "");
    pg_p_bool(&p, a->link_sync);
    pg_p_bool(&p, a->link_adopt);
    pg_p_i64(&p, a->link_roles);
    pg_p_str(&p, a->link_actor ? a->link_actor : "");
    pg_p_bool(&p, a->membership_removed);
    pg_p_str(&p, a->end_actor ? a->end_actor : "");
    pg_p_i64(&p, a->last_send_us);
    int rc = pg_exec(c,
                     "UPDATE assignment SET version = version + 1, update_time = now(),"
                     " activate_time = CASE WHEN $2 = " SQL_ACTIVE " AND state <> " SQL_ACTIVE " THEN now()"
                     "   ELSE activate_time END,"
                     /* PART-14: the grant runs from its activation */
                     " grant_end_time = CASE WHEN $2 = " SQL_ACTIVE " AND state <> " SQL_ACTIVE
                     "   AND duration_days > 0 THEN now() + make_interval(days => duration_days)"
                     "   ELSE grant_end_time END,"
                     " end_time = CASE WHEN $2 IN (" SQL_ENDED ") AND state NOT IN (" SQL_ENDED ") THEN now()"
                     "   ELSE end_time END,"
                     " answer_time = CASE WHEN state = " SQL_PENDING " AND $2 <> " SQL_PENDING " THEN now()"
                     "   ELSE answer_time END,"
                     " last_send_time = CASE WHEN $13::bigint = -1 THEN now() ELSE last_send_time END,"
                     " state = $2, state_cause = $3, send_count = $4, answered_by = $5, answer_reason = $6,"
                     " link_gen = CASE WHEN $7 THEN link_gen + 1 ELSE link_gen END,"
                     " link_sync_after = CASE WHEN $7 THEN now() + interval '1 second' ELSE link_sync_after END,"
                     " link_sync = $7, link_adopt = $8, link_roles = $9, link_actor = $10,"
                     " membership_removed = $11, end_actor = $12"
                     " WHERE id = $1::uuid",
                     &p, NULL);
    if (rc != 0) return rc;
    char id[40];
    snprintf(id, sizeof id, "%s", a->id);
    return ps_asg_get(c, id, false, m, a);
}

int ps_asg_link_done(pg_conn *c, const char *id, bool membership_removed) {
    pg_params p = {0};
    pg_p_str(&p, id);
    pg_p_bool(&p, membership_removed);
    return pg_exec(c,
                   "UPDATE assignment SET link_sync = false,"
                   " membership_removed = membership_removed OR $2 WHERE id = $1::uuid",
                   &p, NULL);
}

int ps_asg_list(pg_conn *c, const ps_asg_filter *f, ps_mem *m, ps_assignment *out, int *n) {
    static const char *const orders[3] = {
        " ORDER BY a.create_time DESC, a.id",
        " ORDER BY lower(COALESCE(ca.name, '')), a.client_hub_id, a.create_time DESC, a.id",
        " ORDER BY lower(COALESCE(u.display_name, '')), a.employee_user_id, a.create_time DESC, a.id",
    };
    char sql[3072];
    pg_params p = {0};
    pg_p_i64(&p, (int64_t)f->partner);
    pg_p_i64(&p, (int64_t)f->client);
    pg_p_i64(&p, (int64_t)f->employee);
    pg_p_i64(&p, f->state);
    pg_p_bool(&p, f->only_requests);
    pg_p_i64(&p, f->offset);
    pg_p_i64(&p, f->limit);
    snprintf(sql, sizeof sql,
             "SELECT " ASG_COLS ASG_FROM
             " WHERE ($1 = 0 OR a.partner_hub_id = $1) AND ($2 = 0 OR a.client_hub_id = $2)"
             " AND ($3 = 0 OR a.employee_user_id = $3) AND ($4 = 0 OR a.state = $4)"
             " AND (NOT $5 OR a.request_id IS NOT NULL) %s OFFSET $6 LIMIT $7",
             orders[f->order < 0 || f->order > 2 ? 0 : f->order]);
    return pg_rows(c, sql, &p, read_asg, m, out, sizeof *out, f->limit, n);
}

static int read_ids(pg_conn *c, const char *sql, const pg_params *p, ps_mem *m, char (**ids)[40], int *n) {
    pg_res *r = NULL;
    int rc = pg_exec(c, sql, p, &r);
    *n = 0;
    if (rc == 0) {
        *ids = m->alloc(m->ud, sizeof **ids * (size_t)(pg_nrows(r) + 1));
        for (int i = 0; i < pg_nrows(r); i++) snprintf((*ids)[(*n)++], 40, "%s", pg_str(r, i, 0));
    }
    pg_free(r);
    return rc;
}

int ps_asg_open_ids(pg_conn *c, uint64_t partner, uint64_t employee, ps_mem *m, char (**ids)[40], int *n) {
    pg_params p = {0};
    pg_p_u64(&p, partner);
    pg_p_u64(&p, employee);
    return read_ids(c,
                    "SELECT id::text FROM assignment WHERE partner_hub_id = $1 AND employee_user_id = $2"
                    " AND state IN (" SQL_OPEN ") ORDER BY id",
                    &p, m, ids, n);
}

int ps_asg_open_ids_of_client(pg_conn *c, uint64_t client, ps_mem *m, char (**ids)[40], int *n) {
    pg_params p = {0};
    pg_p_u64(&p, client);
    return read_ids(c,
                    "SELECT id::text FROM assignment WHERE client_hub_id = $1 AND state IN (" SQL_OPEN ")"
                    " ORDER BY id",
                    &p, m, ids, n);
}

static int due(pg_conn *c, const char *sql, int limit, char (*ids)[40], int *n) {
    pg_params p = {0};
    pg_res *r = NULL;
    pg_p_i64(&p, limit);
    int rc = pg_exec(c, sql, &p, &r);
    *n = 0;
    for (int i = 0; rc == 0 && i < pg_nrows(r) && i < limit; i++) snprintf(ids[(*n)++], 40, "%s", pg_str(r, i, 0));
    pg_free(r);
    return rc;
}

int ps_asg_sync_due(pg_conn *c, int limit, char (*ids)[40], int *n) {
    return due(c,
               "SELECT id::text FROM assignment WHERE link_sync AND link_sync_after <= now()"
               " ORDER BY link_sync_after LIMIT $1 FOR UPDATE SKIP LOCKED",
               limit, ids, n);
}

int ps_asg_expired_due(pg_conn *c, int limit, char (*ids)[40], int *n) {
    return due(c,
               "SELECT id::text FROM assignment WHERE state = " SQL_PENDING " AND expire_time <= now()"
               " ORDER BY expire_time LIMIT $1 FOR UPDATE SKIP LOCKED",
               limit, ids, n);
}

/* ---- partner grants (PART-14 ... PART-21) -------------------------------------------- */

int ps_grant_ended_due(pg_conn *c, int limit, char (*ids)[40], int *n) {
    return due(c,
               "SELECT id::text FROM assignment WHERE state = " SQL_ACTIVE " AND grant_end_time <= now()"
               " ORDER BY grant_end_time LIMIT $1 FOR UPDATE SKIP LOCKED",
               limit, ids, n);
}

static int claim(pg_conn *c, const char *sql, const pg_params *p, int limit, char (*ids)[40], int *n) {
    pg_res *r = NULL;
    int rc = pg_exec(c, sql, p, &r);
    *n = 0;
    for (int i = 0; rc == 0 && i < pg_nrows(r) && i < limit; i++) snprintf(ids[(*n)++], 40, "%s", pg_str(r, i, 0));
    pg_free(r);
    return rc;
}

int ps_grant_claim_notices(pg_conn *c, int days, const int *all, int n_all, int limit, char (*ids)[40], int *n) {
    char arr[16 * 8 + 4] = "{";
    for (int i = 0; i < n_all && i < 16; i++)
        snprintf(arr + strlen(arr), sizeof arr - strlen(arr), "%s%d", i ? "," : "", all[i]);
    snprintf(arr + strlen(arr), sizeof arr - strlen(arr), "}");
    pg_params p = {0};
    pg_p_i64(&p, days);
    pg_p_str(&p, arr);
    pg_p_i64(&p, limit);
    /* PART-16: the WHERE is re-checked after a concurrent claim's row lock,
     * so a notice is claimed once whatever the number of replicas */
    return claim(c,
                 "UPDATE assignment SET notices_sent = notices_sent"
                 "   || ARRAY(SELECT x FROM unnest($2::int[]) x WHERE x >= $1::int)"
                 " WHERE id IN (SELECT id FROM assignment WHERE state = " SQL_ACTIVE
                 "   AND grant_end_time > now() AND grant_end_time <= now() + make_interval(days => $1::int)"
                 "   AND NOT ($1::int = ANY (notices_sent)) ORDER BY grant_end_time LIMIT $3"
                 "   FOR UPDATE SKIP LOCKED)"
                 " AND NOT ($1::int = ANY (notices_sent)) RETURNING id::text",
                 &p, limit, ids, n);
}

int ps_grant_extend(pg_conn *c, ps_assignment *a, int64_t new_end_us, int add_days, ps_mem *m) {
    pg_params p = {0};
    pg_p_str(&p, a->id);
    pg_p_i64(&p, new_end_us);
    pg_p_i64(&p, add_days);
    int rc = pg_exec(c,
                     "UPDATE assignment SET version = version + 1, update_time = now(), notices_sent = '{}',"
                     " grant_end_time = CASE WHEN $2::bigint > 0 THEN to_timestamp($2::bigint / 1000000.0)"
                     "   ELSE grant_end_time + make_interval(days => $3::int) END"
                     " WHERE id = $1::uuid",
                     &p, NULL);
    if (rc != 0) return rc;
    char id[40];
    snprintf(id, sizeof id, "%s", a->id);
    return ps_asg_get(c, id, false, m, a);
}

/* PART-19: the last activity attributed to the grant, or its activation. */
#define SQL_LAST_SEEN "COALESCE((SELECT max(x.at) FROM activity x WHERE x.assignment_id = a.id), a.activate_time)"

int ps_grant_claim_dormant(pg_conn *c, int days, int limit, char (*ids)[40], int *n) {
    pg_params p = {0};
    pg_p_i64(&p, days);
    pg_p_i64(&p, limit);
    return claim(c,
                 "UPDATE assignment SET dormant_notice_time = now()"
                 " WHERE id IN (SELECT a.id FROM assignment a WHERE a.state = " SQL_ACTIVE
                 "   AND " SQL_LAST_SEEN " <= now() - make_interval(days => $1::int)"
                 "   AND (a.dormant_notice_time IS NULL OR a.dormant_notice_time < " SQL_LAST_SEEN ")"
                 "   LIMIT $2 FOR UPDATE SKIP LOCKED)"
                 " RETURNING id::text",
                 &p, limit, ids, n);
}

int ps_grant_dormant_due(pg_conn *c, int grace_days, int limit, char (*ids)[40], int *n) {
    pg_params p = {0};
    pg_p_i64(&p, grace_days);
    pg_p_i64(&p, limit);
    return claim(c,
                 "SELECT a.id::text FROM assignment a WHERE a.state = " SQL_ACTIVE
                 " AND a.dormant_notice_time <= now() - make_interval(days => $1::int)"
                 " AND " SQL_LAST_SEEN " <= a.dormant_notice_time"
                 " ORDER BY a.dormant_notice_time LIMIT $2 FOR UPDATE OF a SKIP LOCKED",
                 &p, limit, ids, n);
}

typedef struct dormant_row {
    ps_assignment a;
    int64_t at;
} dormant_row;

static void read_dormant(const pg_res *r, int i, ps_mem *m, void *out) {
    dormant_row *d = out;
    read_asg(r, i, m, &d->a);
    d->at = pg_time_us(r, i, 39);
}

int ps_grant_dormant_list(pg_conn *c, uint64_t partner, uint64_t client, int days, int within_days, int offset,
                          int limit, ps_mem *m, ps_assignment *out, int64_t *dormant_us, int *n) {
    pg_params p = {0};
    pg_p_u64(&p, partner);
    pg_p_u64(&p, client);
    pg_p_i64(&p, days);
    pg_p_i64(&p, within_days);
    pg_p_i64(&p, offset);
    pg_p_i64(&p, limit);
    dormant_row *rows = m->alloc(m->ud, sizeof *rows * (size_t)(limit > 0 ? limit : 1));
    int rc = pg_rows(c,
                     "SELECT * FROM (SELECT " ASG_COLS ", " SQL_LAST_SEEN " + make_interval(days => $3::int) AS d"
                     ASG_FROM " WHERE a.state = " SQL_ACTIVE " AND ($1::bigint = 0 OR a.partner_hub_id = $1)"
                     " AND ($2::bigint = 0 OR a.client_hub_id = $2)) q"
                     " WHERE q.d <= now() + make_interval(days => $4::int) ORDER BY q.d, 1 OFFSET $5 LIMIT $6",
                     &p, read_dormant, m, rows, sizeof *rows, limit, n);
    for (int i = 0; rc == 0 && i < *n; i++) {
        out[i] = rows[i].a;
        dormant_us[i] = rows[i].at;
    }
    return rc;
}

typedef struct keyed_row {
    ps_assignment a;
    uint64_t k1, k2;
} keyed_row;

static void read_keyed(const pg_res *r, int i, ps_mem *m, void *out) {
    keyed_row *k = out;
    read_asg(r, i, m, &k->a);
    k->k1 = (uint64_t)pg_i64(r, i, 39);
    k->k2 = (uint64_t)pg_i64(r, i, 40);
}

/* the keyset of the client view: create time (us) and the id's first 64 bits */
#define SQL_K1 "floor(extract(epoch FROM a.create_time) * 1000000)::bigint"
#define SQL_K2 "('x' || substr(replace(a.id::text, '-', ''), 1, 16))::bit(64)::bigint"

int ps_grant_client_list(pg_conn *c, uint64_t client, bool more, uint64_t k1, uint64_t k2, int limit, ps_mem *m,
                         ps_assignment *out, uint64_t *keys1, uint64_t *keys2, int *n) {
    pg_params p = {0};
    pg_p_u64(&p, client);
    pg_p_bool(&p, more);
    pg_p_i64(&p, (int64_t)k1);
    pg_p_i64(&p, (int64_t)k2);
    pg_p_i64(&p, limit);
    keyed_row *rows = m->alloc(m->ud, sizeof *rows * (size_t)(limit > 0 ? limit : 1));
    int rc = pg_rows(c,
                     "SELECT " ASG_COLS ", " SQL_K1 ", " SQL_K2 ASG_FROM
                     " WHERE a.client_hub_id = $1 AND a.state IN (" SQL_OPEN ")"
                     " AND (NOT $2 OR (" SQL_K1 ", " SQL_K2 ") < ($3::bigint, $4::bigint))"
                     " ORDER BY " SQL_K1 " DESC, " SQL_K2 " DESC LIMIT $5",
                     &p, read_keyed, m, rows, sizeof *rows, limit, n);
    for (int i = 0; rc == 0 && i < *n; i++) {
        out[i] = rows[i].a;
        keys1[i] = rows[i].k1;
        keys2[i] = rows[i].k2;
    }
    return rc;
}

int ps_asg_sent(pg_conn *c, const char *id, const char *event_id) {
    pg_params p = {0};
    pg_p_str(&p, id);
    pg_p_str(&p, event_id);
    return pg_exec(c, "UPDATE assignment SET last_send_event_id = $2, last_send_failed = false WHERE id = $1::uuid",
                   &p, NULL);
}

int ps_asg_send_failed(pg_conn *c, const char *event_id, bool *marked) {
    pg_params p = {0};
    pg_res *r = NULL;
    pg_p_str(&p, event_id);
    int rc = pg_exec(c,
                     "UPDATE assignment SET last_send_failed = true WHERE last_send_event_id = $1"
                     " AND state = " SQL_PENDING,
                     &p, &r);
    *marked = rc == 0 && pg_affected(r) > 0;
    pg_free(r);
    return rc;
}

int ps_block_put(pg_conn *c, uint64_t client, uint64_t partner, uint64_t by, const char *reason) {
    pg_params p = {0};
    pg_p_u64(&p, client);
    pg_p_i64(&p, (int64_t)partner);
    pg_p_i64(&p, (int64_t)by);
    pg_p_str(&p, reason ? reason : "");
    return pg_exec(c,
                   "INSERT INTO partner_block (client_hub_id, partner_hub_id, blocked_by, reason)"
                   " VALUES ($1, $2, $3, $4) ON CONFLICT (client_hub_id, partner_hub_id) DO UPDATE"
                   " SET block_time = now(), blocked_by = EXCLUDED.blocked_by, reason = EXCLUDED.reason",
                   &p, NULL);
}

int ps_block_delete(pg_conn *c, uint64_t client, uint64_t partner, bool *deleted) {
    pg_params p = {0};
    pg_res *r = NULL;
    pg_p_u64(&p, client);
    pg_p_i64(&p, (int64_t)partner);
    int rc = pg_exec(c, "DELETE FROM partner_block WHERE client_hub_id = $1 AND partner_hub_id = $2", &p, &r);
    *deleted = rc == 0 && pg_affected(r) > 0;
    pg_free(r);
    return rc;
}

int ps_block_check(pg_conn *c, uint64_t client, uint64_t partner, bool exclusive, bool *blocked) {
    pg_params p = {0};
    pg_p_u64(&p, client);
    pg_res *r = NULL;
    /* PART-20: one transaction-scoped lock per client account; the kill
     * switch takes it exclusive, every assignment shared, so an assignment
     * either committed before the kill switch read the open ones, or reads
     * the block after it */
    int rc = pg_exec(c,
                     exclusive ? "SELECT pg_advisory_xact_lock(hashtextextended('partners.client:' || $1::text, 0))"
                               : "SELECT pg_advisory_xact_lock_shared(hashtextextended('partners.client:' || $1::text, 0))",
                     &p, &r);
    pg_free(r);
    if (rc != 0) return rc;
    pg_params q = {0};
    pg_p_u64(&q, client);
    pg_p_i64(&q, (int64_t)partner);
    pg_p_i64(&q, 0); /* the block of every partner */
    return pg_exists(c,
                     "SELECT EXISTS (SELECT 1 FROM partner_block WHERE client_hub_id = $1"
                     " AND partner_hub_id IN ($2, $3))",
                     &q, blocked);
}

int ps_asg_open_ids_of_client_partner(pg_conn *c, uint64_t client, uint64_t partner, ps_mem *m, char (**ids)[40],
                                      int *n) {
    pg_params p = {0};
    pg_p_u64(&p, client);
    pg_p_i64(&p, (int64_t)partner);
    return read_ids(c,
                    "SELECT id::text FROM assignment WHERE client_hub_id = $1 AND ($2::bigint = 0 OR partner_hub_id = $2)"
                    " AND state IN (" SQL_OPEN ") ORDER BY id",
                    &p, m, ids, n);
}

/* ---- refusals, tokens --------------------------------------------------------------------- */

int ps_refusal_record(pg_conn *c, uint64_t partner, uint64_t client, uint64_t user) {
    pg_params p = {0};
    pg_p_u64(&p, partner);
    pg_p_u64(&p, client);
    pg_p_u64(&p, user);
    return pg_exec(c,
                   "INSERT INTO refusal (partner_hub_id, client_hub_id, user_id) VALUES ($1, $2, $3)"
                   " ON CONFLICT (partner_hub_id, client_hub_id, user_id) DO UPDATE SET refuse_time = now()",
                   &p, NULL);
}

int ps_token_store(pg_conn *c, const uint8_t hash[32], const char *asg_id, uint64_t recipient, const char *event_id) {
    pg_params p = {0};
    pg_p_bytes(&p, hash, 32);
    pg_p_str(&p, asg_id);
    pg_p_u64(&p, recipient);
    pg_p_str(&p, event_id);
    return pg_exec(c,
                   "INSERT INTO request_token (token_hash, assignment_id, recipient_user_id, event_id)"
                   " VALUES ($1, $2::uuid, $3, $4) ON CONFLICT DO NOTHING",
                   &p, NULL);
}

int ps_token_find(pg_conn *c, const uint8_t hash[32], char asg_id[40], uint64_t *recipient) {
    pg_params p = {0};
    pg_res *r = NULL;
    pg_p_bytes(&p, hash, 32);
    int rc = pg_exec(c, "SELECT assignment_id::text, recipient_user_id FROM request_token WHERE token_hash = $1",
                     &p, &r);
    if (rc == 0 && pg_nrows(r) == 0) rc = OM_E_NOT_FOUND;
    if (rc == 0) {
        snprintf(asg_id, 40, "%s", pg_str(r, 0, 0));
        *recipient = pg_u64(r, 0, 1);
    }
    pg_free(r);
    return rc;
}

int ps_token_use(pg_conn *c, const uint8_t hash[32]) {
    pg_params p = {0};
    pg_p_bytes(&p, hash, 32);
    return pg_exec(c, "UPDATE request_token SET used_time = COALESCE(used_time, now()) WHERE token_hash = $1", &p,
                   NULL);
}

/* ---- PART-12 --------------------------------------------------------------------------------- */

static void read_blocker(const pg_res *r, int i, ps_mem *m, void *out) {
    ps_blocker *b = out;
    b->user_id = pg_u64(r, i, 0);
    b->email = om_strdup(m, pg_str(r, i, 1));
    b->display_name = om_strdup(m, pg_str(r, i, 2));
    b->tagged = pg_bool(r, i, 3);
    b->refused = pg_bool(r, i, 4);
    b->active_here = pg_bool(r, i, 5);
}

int ps_common_members(pg_conn *c, uint64_t partner, uint64_t client, ps_mem *m, ps_blocker **out, int *n) {
    pg_params p = {0};
    pg_p_u64(&p, partner);
    pg_p_u64(&p, client);
    return pg_rows_all(
        c,
        "SELECT pm.user_id, COALESCE(u.email, ''), COALESCE(u.display_name, ''), pm.partner_employee,"
        " EXISTS (SELECT 1 FROM refusal f WHERE f.partner_hub_id = $1 AND f.client_hub_id = $2"
        "   AND f.user_id = pm.user_id AND EXISTS (SELECT 1 FROM assignment o WHERE o.client_hub_id = $2"
        "   AND o.employee_user_id = pm.user_id AND o.state IN (" SQL_OPEN ") AND o.partner_hub_id <> $1)),"
        " EXISTS (SELECT 1 FROM assignment a WHERE a.partner_hub_id = $1 AND a.client_hub_id = $2"
        "   AND a.employee_user_id = pm.user_id AND a.state = " SQL_ACTIVE ")"
        " FROM membership_copies pm JOIN membership_copies cm ON cm.user_id = pm.user_id AND cm.hub_id = $2"
        "   AND cm.present"
        " LEFT JOIN user_copies u ON u.user_id = pm.user_id"
        " WHERE pm.hub_id = $1 AND pm.present ORDER BY pm.user_id",
        &p, read_blocker, m, out, sizeof **out, n);
}

/* ---- PART-13 ----------------------------------------------------------------------------------- */

int ps_activity_seen(pg_conn *c, const char *reporter, const char *activity_id, bool *fresh) {
    pg_params p = {0};
    pg_res *r = NULL;
    pg_p_str(&p, reporter);
    pg_p_str(&p, activity_id);
    int rc = pg_exec(c, "INSERT INTO activity_seen (reporter, activity_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                     &p, &r);
    *fresh = rc == 0 && pg_affected(r) == 1;
    pg_free(r);
    return rc;
}

int ps_activity_attribute(pg_conn *c, uint64_t user, uint64_t hub, int64_t at_us, const char *kind,
                          bool *attributed) {
    pg_params p = {0};
    pg_res *r = NULL;
    pg_p_u64(&p, user);
    pg_p_u64(&p, hub);
    pg_p_i64(&p, at_us);
    pg_p_str(&p, kind);
    /* PART-13: only tagged employees with an ACTIVE assignment there */
    int rc = pg_exec(c,
                     "INSERT INTO activity (assignment_id, at, kind)"
                     " SELECT a.id, to_timestamp($3::bigint / 1000000.0), $4 FROM assignment a"
                     " JOIN membership_copies m ON m.hub_id = a.partner_hub_id AND m.user_id = a.employee_user_id"
                     "   AND m.present AND m.partner_employee"
                     " WHERE a.employee_user_id = $1 AND a.client_hub_id = $2 AND a.state = " SQL_ACTIVE,
                     &p, &r);
    *attributed = rc == 0 && pg_affected(r) > 0;
    pg_free(r);
    return rc;
}

int ps_asg_claim_revoke_event(pg_conn *c, const char *id, bool *first) {
    pg_params p = {0};
    pg_res *r = NULL;
    pg_p_str(&p, id);
    int rc = pg_exec(c, "UPDATE assignment SET revoke_emitted = true WHERE id = $1::uuid AND NOT revoke_emitted", &p,
                     &r);
    *first = rc == 0 && pg_affected(r) == 1;
    pg_free(r);
    return rc;
}

int ps_asg_sync_later(pg_conn *c, const char *id, int seconds) {
    pg_params p = {0};
    pg_p_str(&p, id);
    pg_p_i64(&p, seconds);
    return pg_exec(c,
                   "UPDATE assignment SET link_sync_after = now() + make_interval(secs => $2)"
                   " WHERE id = $1::uuid AND link_sync",
                   &p, NULL);
}

int ps_rate_take(pg_conn *c, const char *bucket, int64_t window_s, int64_t n, int64_t *hits, int64_t *retry_ms) {
    pg_params p = {0};
    pg_args(&p, bucket, window_s, n);
    pg_res *r = NULL;
    int rc = pg_exec(c,
                     "WITH w AS (SELECT to_timestamp(floor(extract(epoch FROM now()) / $2::bigint) * $2::bigint) AS ws),"
                     " gone AS (DELETE FROM rate_counter o USING w WHERE o.bucket = $1 AND o.window_start < w.ws),"
                     " up AS (INSERT INTO rate_counter AS rc (bucket, window_start, hits) SELECT $1, w.ws, $3::bigint"
                     " FROM w ON CONFLICT (bucket, window_start) DO UPDATE SET hits = rc.hits + EXCLUDED.hits"
                     " RETURNING rc.hits, rc.window_start)"
                     " SELECT up.hits, greatest(0, ceil(extract(epoch FROM up.window_start"
                     " + make_interval(secs => $2::bigint) - now()) * 1000))::bigint FROM up",
                     &p, &r);
    if (rc != 0) return rc;
    if (pg_nrows(r) != 1) {
        pg_free(r);
        return OM_E_INTERNAL;
    }
    *hits = pg_i64(r, 0, 0);
    *retry_ms = pg_i64(r, 0, 1);
    pg_free(r);
    return 0;
}
