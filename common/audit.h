/* audit.h — every mutation is recorded in the owning service's audit history
 * (SPEC 8): actor or rule, action, resource, before/after, reason, time,
 * request id. before/after are protobuf messages stored with their type name,
 * so ListHistory (history.h) can return them as google.protobuf.Any. This
 * module stores and reads; it knows nothing of calls (rpc.h). */
#ifndef OM_AUDIT_H
#define OM_AUDIT_H

#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "auth.h"
#include "pg.h"

typedef struct audit_entry {
    const om_actor *actor;     /* NULL when a rule acted */
    const char *rule;          /* e.g. "ORG-09", when a rule acted */
    const char *action;        /* "account.update", "org.member.remove" ... */
    const char *resource;      /* "accounts/123" */
    const ProtobufCMessage *before; /* may be NULL */
    const ProtobufCMessage *after;  /* may be NULL */
    const char *reason;        /* may be NULL */
    const char *request_id;    /* may be NULL */
    const char *trace_id;      /* may be NULL */
} audit_entry;

/* Insert into <schema>.audit inside the caller's transaction. */
int audit_record(pg_conn *tx, const audit_entry *e);

/* "user:<id>", "service:<name>" or "rule:<ID>" into buf (>= 48 bytes);
 * "system" when neither an actor nor a rule is given. */
void audit_actor_string(const om_actor *actor, const char *rule, char *buf, size_t cap);

/* One stored entry; strings and bytes point into the page (valid until
 * audit_page_free). NULL columns read as "" / NULL with length 0. */
typedef struct audit_row {
    int64_t id;
    int64_t at_us;             /* unix microseconds */
    const char *actor, *action, *resource, *reason, *request_id, *trace_id;
    const char *before_type, *after_type; /* full message names, "" if none */
    const uint8_t *before, *after;        /* packed messages */
    size_t before_len, after_len;
} audit_row;

typedef struct audit_page {
    audit_row *rows;
    int n;
    int64_t next_before_id;    /* cursor for the next (older) page; 0: no more */
    pg_res *res;
} audit_page;

/* Newest first: entries of `resource` (NULL: all) with id < before_id (0:
 * from the newest), at most `limit` (1..1000). For ListHistory RPCs; the
 * cursor goes into a page token (page.h). */
int audit_list(pg_conn *c, const char *resource, int64_t before_id, int limit, audit_page *out);
/* The same for every resource that starts with `prefix` (e.g. all under
 * "accounts/7/"). */
int audit_list_prefix(pg_conn *c, const char *prefix, int64_t before_id, int limit, audit_page *out);
/* The resource and every resource under "<resource>/" (an organization and
 * its members, an account and its memberships). */
int audit_list_tree(pg_conn *c, const char *resource, int64_t before_id, int limit, audit_page *out);
void audit_page_free(audit_page *p);
/* A ListHistory reply is made of a page by history.h (history_list). */

#endif
