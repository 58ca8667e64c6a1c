/* copies.h — the versioned local copies of accounts, users and memberships
 * (SPEC 2) that organizations, connections, assets and partners keep: the
 * one applier of the accounts service's events and the one call to the
 * accounts service that fills a missing copy within the caller's deadline.
 * What a copy holds and how it is stored stays with each service (its
 * *_store.c upserts, version-guarded); see docs/common/copies.md. */
#ifndef OM_COPIES_H
#define OM_COPIES_H

#include <stdbool.h>
#include <stdint.h>

#include "evt.h"
#include "orgmesh/accounts/v1/events.pb-c.h"
#include "pg.h"
#include "rpc.h"

typedef Orgmesh__Accounts__V1__Account CopiesAccount;
typedef Orgmesh__Accounts__V1__User CopiesUser;
typedef Orgmesh__Accounts__V1__Membership CopiesMembership;

/* One accounts event, decoded: every account, user and membership event
 * carries the account, user or membership after the change as field 1. */
typedef struct copies_event {
    const evt_event *ev;
    const ProtobufCMessage *msg; /* the whole event (e.g. MembershipRemoved's cause) */
    bool deleted;                /* AccountDeleted, UserDeleted, MembershipRemoved */
    int64_t version;             /* SPEC 2: the event's own version, else the payload's */
} copies_event;

/* What a service does with each kind; NULL: the kind is not kept (its
 * events are not even decoded). Called inside the consumer's transaction,
 * only with valid ids (pg_id_valid). */
typedef struct copies_sink {
    int (*account)(pg_conn *tx, const copies_event *e, const CopiesAccount *a, void *arg);
    int (*user)(pg_conn *tx, const copies_event *e, const CopiesUser *u, void *arg);
    int (*membership)(pg_conn *tx, const copies_event *e, const CopiesMembership *m, void *arg);
} copies_sink;

/* Applies one accounts event through `sink`: 0 for an event no callback
 * wants or whose payload cannot be decoded (logged), else the callback's
 * result. */
int copies_apply_event(pg_conn *tx, const evt_event *ev, const copies_sink *sink, void *arg);

/* One call to the accounts service with the service token, within what is
 * left of ctx's deadline (at most 5 s; ctx NULL: a background round, 5 s),
 * carrying ctx's trace id. `method` is the full path, e.g.
 * "/orgmesh.accounts.v1.AccountsInternalService/BatchGetAccounts". Returns
 * 0 or the OM_E_* of the answer (rpc_client_call's), OM_E_UNAVAILABLE when
 * there is no peer or the deadline has passed, with *st filled when st !=
 * NULL; the caller decides what a failure means for it. */
int copies_call(rpc_ctx *ctx, const char *method, const ProtobufCMessage *req,
                const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp, rpc_status *st);

/* The deadline of a call made on behalf of ctx: what is left, capped at
 * 5000 ms, at least 1 (NULL ctx: 5000). */
int copies_deadline_ms(rpc_ctx *ctx);

/* Fetch-on-miss: BatchGetAccounts / BatchGetUsers for ids (in batches of
 * COPIES_BATCH), each account or user found passed to put (run by the
 * caller in its transaction or not, as it chooses). Returns 0 when every
 * call succeeded (whether or not every id was found); a failed call is
 * OM_E_UNAVAILABLE (OM_E_NOT_FOUND kept), put's failure is returned as is. */
#define COPIES_BATCH 100
int copies_fetch_accounts(rpc_ctx *ctx, const uint64_t *ids, size_t n,
                          int (*put)(const CopiesAccount *a, void *arg), void *arg);
int copies_fetch_users(rpc_ctx *ctx, const uint64_t *ids, size_t n, int (*put)(const CopiesUser *u, void *arg),
                       void *arg);

/* Every membership of user_id (AccountsService.ListMemberships as this
 * service: the actor's memberships for an authorization), up to 1000 a page,
 * at most COPIES_MEMBERSHIP_PAGES pages. Each page is stored in a
 * transaction of its own on c: put for each membership with valid ids, then
 * done (NULL: nothing) in the same transaction. Failures as
 * copies_fetch_accounts. */
#define COPIES_MEMBERSHIP_PAGES 20
int copies_fetch_memberships(rpc_ctx *ctx, pg_conn *c, uint64_t user_id,
                             int (*put)(pg_conn *tx, const CopiesMembership *m, void *arg),
                             int (*done)(pg_conn *tx, void *arg), void *arg);
/* The same through AccountsInternalService.ListMembershipsInternal, for a
 * service the accounts service lets call that one (organizations). */
int copies_fetch_memberships_internal(rpc_ctx *ctx, pg_conn *c, uint64_t user_id,
                                      int (*put)(pg_conn *tx, const CopiesMembership *m, void *arg),
                                      int (*done)(pg_conn *tx, void *arg), void *arg);

/* SPEC 2: the membership copy of organizations, connections and assets,
 * one table shape everywhere: membership_copies (hub_id, user_id, roles,
 * seats, deleted, version, update_time), roles and seats as bits
 * (copies_bits). Stores m (roles and seats 0 when deleted) unless the copy
 * holds a newer version. Partners keeps its own (link columns). */
int copies_membership_put(pg_conn *tx, const CopiesMembership *m, bool deleted, int64_t version);
/* The membership copies of user_id in hubs[0..n): known[i] when the copy
 * has a row, member[i] when it is not deleted, roles[i] and seats[i] its
 * bits (0 unless a member); seats and member may be NULL. */
int copies_memberships_get(pg_conn *c, uint64_t user_id, const uint64_t *hubs, int n, bool *known, unsigned *roles,
                           unsigned *seats, bool *member);
/* Enum values 1..32 as bits (bit = value - 1); other values are ignored. */
unsigned copies_bits(const int *values, size_t n);

#endif
