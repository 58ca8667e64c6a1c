/* audit.h — every mutation is recorded in the owning service's audit history
 * (SPEC 8): actor or rule, action, resource, before/after, reason, time,
 * request id. before/after are protobuf messages stored with their type name,
 * so ListHistory can return them as google.protobuf.Any. */
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

/* "user:<id>", "service:<name>" or "rule:<ID>" into buf (>= 48 bytes). */
void audit_actor_string(const om_actor *actor, const char *rule, char *buf, size_t cap);

#endif
