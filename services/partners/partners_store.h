/* partners_store.h — every SQL statement of the partners service (schema
 * "partners", see migrations/). Parameterised only. Functions return 0,
 * OM_E_NOT_FOUND, OM_E_ALREADY_EXISTS, or what pg_exec returned. Strings read
 * from the database are copied with the caller's allocator. */
#ifndef PARTNERS_STORE_H
#define PARTNERS_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "om_mem.h"
#include "pg.h"

/* Where results are allocated (om_mem.h): the call's arena, or an om_arena
 * outside a call. */
typedef om_mem ps_mem;

/* ---- local copies (SPEC 2) ------------------------------------------------ */

typedef struct ps_account {
    uint64_t hub_id;
    int kind;
    const char *name;
    int64_t mrr_minor;
    const char *mrr_currency;
    bool deleted;
    int64_t version;
} ps_account;

typedef struct ps_user {
    uint64_t user_id;
    const char *email, *display_name;
    bool deleted;
    int64_t version;
} ps_user;

typedef struct ps_membership {
    uint64_t hub_id, user_id;
    bool present;
    unsigned roles;
    bool partner_employee;
    uint64_t link_partner_hub_id;
    const char *link_assignment_id;
    int64_t version;
} ps_membership;

/* Upserts keep the newest version: an older one changes nothing.
 * *current (may be NULL) is true when the stored row now has exactly this
 * version (it was applied, or had already been), i.e. the caller holds the
 * newest known state and may act on it. */
int ps_account_put(pg_conn *c, const ps_account *a, bool *current);
int ps_user_put(pg_conn *c, const ps_user *u, bool *current);
int ps_membership_put(pg_conn *c, const ps_membership *mb, bool *current);
int ps_account_get(pg_conn *c, uint64_t hub_id, ps_mem *m, ps_account *out);
int ps_user_get(pg_conn *c, uint64_t user_id, ps_mem *m, ps_user *out);
/* lock: 0 none, 1 FOR SHARE, 2 FOR UPDATE. NOT_FOUND when no row (unknown);
 * a tombstone is returned with present = false. */
int ps_membership_get(pg_conn *c, uint64_t hub_id, uint64_t user_id, int lock, ps_mem *m, ps_membership *out);

/* ---- tags (PART-01) --------------------------------------------------------- */

int ps_tag_record(pg_conn *c, uint64_t partner, uint64_t user, uint64_t by);
int ps_tag_forget(pg_conn *c, uint64_t partner, uint64_t user);

typedef struct ps_employee {
    uint64_t user_id;
    const char *email, *display_name;
    int client_count, pending_count;
    int64_t last_activity_us, tag_us;
    uint64_t tagged_by;
} ps_employee;

/* Tagged members of the partner ordered by display_name, user_id. */
int ps_employees_list(pg_conn *c, uint64_t partner, const char *query, int offset, int limit, ps_mem *m,
                      ps_employee *out, int *n);
int ps_employee_get(pg_conn *c, uint64_t partner, uint64_t user, ps_mem *m, ps_employee *out);

/* ---- clients (PART-02) ------------------------------------------------------- */

typedef struct ps_client {
    uint64_t client_hub_id;
    const char *name;
    int source;
    int active_count;
    int64_t add_us;
    int64_t mrr_minor;
    const char *mrr_currency;
} ps_client;

/* *added false when it was on the list already. */
int ps_client_add(pg_conn *c, uint64_t partner, uint64_t client, int source, bool *added);
int ps_client_get(pg_conn *c, uint64_t partner, uint64_t client, ps_mem *m, ps_client *out);
/* By name then hub_id; query NULL = all, else name contains (ignoring case)
 * or hub_id == query_hub (0: none). */
int ps_clients_list(pg_conn *c, uint64_t partner, const char *query, uint64_t query_hub, int offset, int limit,
                    ps_mem *m, ps_client *out, int *n);

/* ---- assignments and access requests (PART-03..PART-09) ----------------------- */

typedef struct ps_assignment {
    char id[40];
    char request_id[40]; /* "" when no access request was made */
    uint64_t partner_hub_id, employee_user_id, client_hub_id;
    const char *partner_name, *employee_email, *employee_name, *client_name;
    int state, cause;
    uint64_t assigned_by;
    int64_t version;
    int64_t create_us, activate_us, end_us, update_us, expire_us;
    int send_count;
    int64_t last_send_us;
    uint64_t answered_by;
    int64_t answer_us;
    const char *answer_reason;
    int64_t last_activity_us;
    int activity_30d;
    bool link_sync;
    int link_gen;
    bool link_adopt;
    unsigned link_roles;
    const char *link_actor;
    bool membership_removed;
    const char *end_actor;
    int64_t now_us; /* database clock when read */
    /* partner grants (migration 004) */
    int duration_days;        /* PART-14; 0 = until removed */
    int64_t grant_end_us;     /* PART-14; 0 = no end (yet) */
    bool auto_extend;         /* PART-15 */
    unsigned requested_roles; /* PART-18, role bits */
    int64_t dormant_notice_us; /* PART-19 */
    bool last_send_failed;     /* PART-22 */
} ps_assignment;

/* Inserts a new assignment (id generated; a request too when
 * with_request; expiry = now() + ttl_s). OM_E_ALREADY_EXISTS when an open
 * assignment of this employee and client exists (PART-06 index; waits for a
 * concurrent insert to decide). Fills `a` back as stored. */
int ps_asg_insert(pg_conn *c, ps_assignment *a, bool with_request, int64_t ttl_s, ps_mem *m);
/* (ps_asg_insert also stores duration_days, auto_extend and requested_roles;
 * an ACTIVE insert, like ps_asg_save's activation, sets grant_end_time =
 * now() + duration_days, PART-14.) */
/* Locks the row (FOR UPDATE) when lock, then reads it. */
int ps_asg_get(pg_conn *c, const char *id, bool lock, ps_mem *m, ps_assignment *out);
int ps_asg_get_by_request(pg_conn *c, const char *request_id, bool lock, ps_mem *m, ps_assignment *out);
/* The open (PENDING/ACTIVE) assignment of (client, employee), any partner. */
int ps_asg_get_open(pg_conn *c, uint64_t client, uint64_t employee, bool lock, ps_mem *m, ps_assignment *out);
/* Writes the mutable fields of `a` with version + 1 and update_time = now();
 * end_time is set when the state is terminal, activate_time when ACTIVE.
 * With link_sync, link_gen grows and link_sync_after is now() + 1 s. Reads
 * the row back into a. */
int ps_asg_save(pg_conn *c, ps_assignment *a, ps_mem *m);
/* Marks the accounts side done (link_sync false) and records the result. */
int ps_asg_link_done(pg_conn *c, const char *id, bool membership_removed);

/* Postpones a due link sync by `seconds` (after a failed accounts call). */
int ps_asg_sync_later(pg_conn *c, const char *id, int seconds);
/* AccessRevoked is announced once per assignment: *first is true for the
 * caller that gets to emit it. */
int ps_asg_claim_revoke_event(pg_conn *c, const char *id, bool *first);

typedef struct ps_asg_filter {
    uint64_t partner, client, employee;
    int state;          /* 0 = any */
    bool only_requests; /* only rows with an access request */
    int order;          /* 0 newest first, 1 client name, 2 employee name */
    int offset, limit;
} ps_asg_filter;
int ps_asg_list(pg_conn *c, const ps_asg_filter *f, ps_mem *m, ps_assignment *out, int *n);
/* Ids of the open assignments of an employee of a partner. */
int ps_asg_open_ids(pg_conn *c, uint64_t partner, uint64_t employee, ps_mem *m, char (**ids)[40], int *n);
/* Ids of open assignments to a client (any partner). */
int ps_asg_open_ids_of_client(pg_conn *c, uint64_t client, ps_mem *m, char (**ids)[40], int *n);
/* Up to `limit` assignments whose accounts side is due, locked SKIP LOCKED
 * (several replicas share the work). */
int ps_asg_sync_due(pg_conn *c, int limit, char (*ids)[40], int *n);
/* PART-05 expiry: up to `limit` PENDING requests with expire_time <= now()
 * (database clock), locked SKIP LOCKED. */
int ps_asg_expired_due(pg_conn *c, int limit, char (*ids)[40], int *n);

/* ---- partner grants (PART-14 ... PART-21) ---------------------------------------- */

/* PART-16: up to `limit` ACTIVE grants whose end has come (database clock),
 * locked SKIP LOCKED (several replicas share the work). */
int ps_grant_ended_due(pg_conn *c, int limit, char (*ids)[40], int *n);
/* PART-16: claims the notice of threshold `days` (and of every larger
 * threshold in all[], which are then past) for up to `limit` ACTIVE grants
 * ending within `days` days that have not had it: one UPDATE ... RETURNING,
 * so each notice is claimed once over every replica, in the caller's
 * transaction. */
int ps_grant_claim_notices(pg_conn *c, int days, const int *all, int n_all, int limit, char (*ids)[40], int *n);
/* PART-15/PART-17: a new end (new_end_us > 0) or the end + add_days; the
 * notices start again. Version + 1; reads the row back. */
int ps_grant_extend(pg_conn *c, ps_assignment *a, int64_t new_end_us, int add_days, ps_mem *m);
/* PART-19: claims the dormant notice of up to `limit` ACTIVE grants without
 * activity (or activation) for `days` days and no notice since. */
int ps_grant_claim_dormant(pg_conn *c, int days, int limit, char (*ids)[40], int *n);
/* PART-19: ACTIVE grants noticed `grace_days` ago with no activity since,
 * locked SKIP LOCKED. */
int ps_grant_dormant_due(pg_conn *c, int grace_days, int limit, char (*ids)[40], int *n);
/* PART-19 report: ACTIVE grants of a partner or on a client (one of them
 * non-zero) that become dormant before now + within_days, soonest first;
 * dormant_us[i] is when. */
int ps_grant_dormant_list(pg_conn *c, uint64_t partner, uint64_t client, int days, int within_days, int offset,
                          int limit, ps_mem *m, ps_assignment *out, int64_t *dormant_us, int *n);
/* PART-21: the open assignments on a client, newest first, keyset (k1 =
 * create time in us, k2 = the id's first 64 bits) after (k1, k2) when more. */
int ps_grant_client_list(pg_conn *c, uint64_t client, bool more, uint64_t k1, uint64_t k2, int limit, ps_mem *m,
                         ps_assignment *out, uint64_t *keys1, uint64_t *keys2, int *n);
/* PART-22: the event of the access-request email just emitted (a new send
 * starts with no failure) ... */
int ps_asg_sent(pg_conn *c, const char *id, const char *event_id);
/* ... and the notifier gave one of its emails up: *marked when an
 * assignment's last send was that event. */
int ps_asg_send_failed(pg_conn *c, const char *event_id, bool *marked);
/* PART-20: the kill switch's block (partner 0 = every partner). */
int ps_block_put(pg_conn *c, uint64_t client, uint64_t partner, uint64_t by, const char *reason);
int ps_block_delete(pg_conn *c, uint64_t client, uint64_t partner, bool *deleted);
/* Takes the client's kill-switch lock: FOR UPDATE (the kill switch) or FOR
 * SHARE (an assignment), then tells whether `partner` is blocked there.
 * Orders every assignment against a concurrent kill switch (PART-20). */
int ps_block_check(pg_conn *c, uint64_t client, uint64_t partner, bool exclusive, bool *blocked);
/* Ids of the open assignments on a client of one partner (0 = any). */
int ps_asg_open_ids_of_client_partner(pg_conn *c, uint64_t client, uint64_t partner, ps_mem *m, char (**ids)[40],
                                      int *n);

/* ---- PART-06 refusals, PART-04 tokens ---------------------------------------- */

int ps_refusal_record(pg_conn *c, uint64_t partner, uint64_t client, uint64_t user);
int ps_token_store(pg_conn *c, const uint8_t hash[32], const char *asg_id, uint64_t recipient, const char *event_id);
/* NOT_FOUND for an unknown token. */
int ps_token_find(pg_conn *c, const uint8_t hash[32], char asg_id[40], uint64_t *recipient);

/* Abuse limits (issue 13): adds n hits to `bucket` in the current window of
 * window_s seconds (timed by the database clock, shared by every replica);
 * *hits is the window's count after adding, *retry_ms the time until the
 * window ends. Inside a transaction the hits go with it. */
int ps_rate_take(pg_conn *c, const char *bucket, int64_t window_s, int64_t n, int64_t *hits, int64_t *retry_ms);
int ps_token_use(pg_conn *c, const uint8_t hash[32]);

/* ---- PART-12 ------------------------------------------------------------------ */

typedef struct ps_blocker {
    uint64_t user_id;
    const char *email, *display_name;
    bool tagged, refused, active_here;
} ps_blocker;
/* Users who are members of both accounts (local copies), with what PART-12
 * needs to judge them. */
int ps_common_members(pg_conn *c, uint64_t partner, uint64_t client, ps_mem *m, ps_blocker **out, int *n);
/* Every client of the partner with name, MRR and ACTIVE count. */
int ps_clients_all(pg_conn *c, uint64_t partner, ps_mem *m, ps_client **out, int *n);

/* ---- PART-13 -------------------------------------------------------------------- */

/* *fresh false when (reporter, activity_id) was seen before. */
int ps_activity_seen(pg_conn *c, const char *reporter, const char *activity_id, bool *fresh);
/* Attributes the activity to the ACTIVE assignment of (user, hub), if any,
 * with a tagged employee. */
int ps_activity_attribute(pg_conn *c, uint64_t user, uint64_t hub, int64_t at_us, const char *kind,
                          bool *attributed);

#endif
