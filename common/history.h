/* history.h — every service's ListHistory (SPEC 8), one way: the audit
 * entries (audit.h) of a resource, newest first, a page at a time with a
 * keyset cursor (the id below which the next page starts; page.h), as
 * orgmesh.type.v1.AuditEntry messages allocated in the call. */
#ifndef OM_HISTORY_H
#define OM_HISTORY_H

#include "audit.h"
#include "orgmesh/type/v1/audit.pb-c.h"
#include "page.h"
#include "pg.h"
#include "rpc.h"

typedef enum history_scope {
    HISTORY_ALL,      /* every entry of the service */
    HISTORY_RESOURCE, /* entries of `resource` exactly */
    HISTORY_TREE,     /* `resource` and everything under "<resource>/" */
    HISTORY_PREFIX,   /* every resource starting with `resource` */
} history_scope;

typedef struct history_req {
    const page_req *page;   /* page_open/page_read (the next token is spelled as it was) */
    history_scope scope;
    const char *resource;
} history_req;

typedef struct history_out {
    Orgmesh__Type__V1__AuditEntry **entries; /* n + 1 pointers */
    size_t n;
    char *next_page_token;                   /* "" on the last page */
} history_out;

/* Reads the page into *out: 0 or the database's OM_E_* (the call is not
 * failed here: the handler does it in its own words). */
int history_list(rpc_ctx *ctx, pg_conn *c, const history_req *q, history_out *out);

/* One stored entry as a message, allocated in the call (strings and bytes
 * copied); before/after are Any of the stored types, absent when none. */
Orgmesh__Type__V1__AuditEntry *history_entry(rpc_ctx *ctx, const audit_row *r);

#endif
