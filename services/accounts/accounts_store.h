/* accounts_store.h — every SQL statement of the accounts service (schema
 * "accounts", see migrations/). Rows go in and out as the plain structs of
 * accounts_rules.h; strings read from the database are copied with the
 * caller's allocator (the call's memory in a handler). Parameterised only.
 *
 * Functions return 0, OM_E_NOT_FOUND, OM_E_ALREADY_EXISTS / OM_E_EMAIL_TAKEN
 * (unique keys), or what pg_exec returned. Writes expect an open transaction. */
#ifndef ACCOUNTS_STORE_H
#define ACCOUNTS_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "accounts_rules.h"
#include "om_mem.h"
#include "pg.h"

/* Where results are allocated (om_mem.h): the call's arena. */
typedef om_mem store_mem;

/* Aggregate names: the event subject, the audit resource and the tombstone key. */
void store_account_subject(uint64_t hub_id, char *buf, size_t cap);
void store_user_subject(uint64_t user_id, char *buf, size_t cap);
void store_membership_subject(uint64_t hub_id, uint64_t user_id, char *buf, size_t cap);

/* ---- accounts ---------------------------------------------------------------------------- */

/* for_update locks the row until the transaction ends. */
int store_account_get(pg_conn *c, uint64_t hub_id, bool for_update, store_mem *m, acct_account *out);
/* Inserts `a` (hub_id 0: the next free id of the sequence) with its
 * subscriptions; sets hub_id, version (after any tombstone) and the times. */
int store_account_insert(pg_conn *c, acct_account *a);
/* Writes the mutable fields, the subscriptions, state and version of `a`;
 * sets update_time. */
int store_account_update(pg_conn *c, acct_account *a);
/* Deletes the account (and by cascade its subscriptions and memberships:
 * the caller removes the memberships first to emit their events) and keeps
 * its last version as a tombstone. */
int store_account_delete(pg_conn *c, uint64_t hub_id, int64_t last_version);

typedef struct store_account_filter {
    uint64_t member_user_id; /* only accounts this user is a member of; 0 = all */
    acct_kind kind;          /* UNSPECIFIED = any */
    acct_state state;        /* UNSPECIFIED = any */
    const char *name_prefix; /* case-insensitive; NULL or "" = any */
    uint64_t after_hub_id;   /* keyset paging: hub_id > this */
    int limit;
} store_account_filter;

/* Up to f->limit accounts ordered by hub_id into out (cap >= limit). */
int store_accounts_list(pg_conn *c, const store_account_filter *f, store_mem *m, acct_account *out,
                        int *n);
/* The accounts of `ids` that exist, in no particular order. */
int store_accounts_batch(pg_conn *c, const uint64_t *ids, int n_ids, store_mem *m, acct_account *out,
                         int *n);

/* ---- users ------------------------------------------------------------------------------- */

int store_user_get(pg_conn *c, uint64_t user_id, bool for_update, store_mem *m, acct_user *out);
int store_user_get_by_email(pg_conn *c, const char *email, store_mem *m, acct_user *out);
/* OM_E_EMAIL_TAKEN when the email is in use (any case), OM_E_ALREADY_EXISTS
 * for an explicit user_id that is. */
int store_user_insert(pg_conn *c, acct_user *u);
int store_user_update(pg_conn *c, acct_user *u);
int store_user_delete(pg_conn *c, uint64_t user_id, int64_t last_version);

typedef struct store_user_filter {
    uint64_t visible_to;      /* only the user and those sharing an account; 0 = all */
    const char *email;        /* exact, case-insensitive; NULL or "" = any */
    const char *query_prefix; /* email or display_name prefix, case-insensitive */
    uint64_t after_user_id;
    int limit;
} store_user_filter;

int store_users_list(pg_conn *c, const store_user_filter *f, store_mem *m, acct_user *out, int *n);
int store_users_batch(pg_conn *c, const uint64_t *ids, int n_ids, store_mem *m, acct_user *out, int *n);
/* Whether two users are members of a common account. */
int store_users_share_account(pg_conn *c, uint64_t a, uint64_t b, bool *out);
/* Whether the user is SUPER_ADMIN or ACCOUNT_PERMISSIONS somewhere. */
int store_user_manages_any(pg_conn *c, uint64_t user_id, bool *out);

/* ---- memberships ------------------------------------------------------------------------- */

int store_membership_get(pg_conn *c, uint64_t hub_id, uint64_t user_id, bool for_update, store_mem *m,
                         acct_membership *out);
/* Sets version (after any tombstone) and the times. OM_E_ALREADY_EXISTS when
 * the user is already a member. */
int store_membership_insert(pg_conn *c, acct_membership *mb);
/* Writes roles, seats, the partner tag and link, and version. */
int store_membership_update(pg_conn *c, acct_membership *mb);
int store_membership_delete(pg_conn *c, uint64_t hub_id, uint64_t user_id, int64_t last_version);

typedef struct store_membership_filter {
    uint64_t hub_id;          /* 0 = any */
    uint64_t user_id;         /* 0 = any */
    unsigned any_roles;       /* holding at least one of these; 0 = any */
    uint64_t visible_to;      /* only accounts this user is a member of; 0 = all */
    uint64_t after_hub_id;    /* keyset paging: (hub_id, user_id) > these */
    uint64_t after_user_id;
    int limit;
} store_membership_filter;

int store_memberships_list(pg_conn *c, const store_membership_filter *f, store_mem *m,
                           acct_membership *out, int *n);
/* SUPER_ADMIN members of the account other than `except_user`. */
int store_count_super_admins(pg_conn *c, uint64_t hub_id, uint64_t except_user, long *out);

#endif
