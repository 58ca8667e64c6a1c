/* copies.c — see copies.h: the one applier of the accounts service's events
 * and the one call to the accounts service for a missing copy (SPEC 2). */
#include "copies.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app.h"
#include "log.h"
#include "om_err.h"
#include "orgmesh/accounts/v1/accounts.pb-c.h"
#include "pbfield.h"

#define APB(x) Orgmesh__Accounts__V1__##x

enum copies_kind { COPIES_ACCOUNT, COPIES_USER, COPIES_MEMBERSHIP };

static const struct {
    const ProtobufCMessageDescriptor *d;
    enum copies_kind kind;
    bool deleted;
} kinds[] = {
    {&orgmesh__accounts__v1__account_created__descriptor, COPIES_ACCOUNT, false},
    {&orgmesh__accounts__v1__account_updated__descriptor, COPIES_ACCOUNT, false},
    {&orgmesh__accounts__v1__subscriptions_changed__descriptor, COPIES_ACCOUNT, false},
    {&orgmesh__accounts__v1__account_downgraded__descriptor, COPIES_ACCOUNT, false},
    {&orgmesh__accounts__v1__hosting_location_changed__descriptor, COPIES_ACCOUNT, false},
    {&orgmesh__accounts__v1__sensitive_data_enabled__descriptor, COPIES_ACCOUNT, false},
    {&orgmesh__accounts__v1__sensitive_data_disabled__descriptor, COPIES_ACCOUNT, false},
    {&orgmesh__accounts__v1__account_deactivated__descriptor, COPIES_ACCOUNT, false},
    {&orgmesh__accounts__v1__account_reactivated__descriptor, COPIES_ACCOUNT, false},
    {&orgmesh__accounts__v1__account_deleted__descriptor, COPIES_ACCOUNT, true},
    {&orgmesh__accounts__v1__user_created__descriptor, COPIES_USER, false},
    {&orgmesh__accounts__v1__user_updated__descriptor, COPIES_USER, false},
    {&orgmesh__accounts__v1__user_deleted__descriptor, COPIES_USER, true},
    {&orgmesh__accounts__v1__membership_added__descriptor, COPIES_MEMBERSHIP, false},
    {&orgmesh__accounts__v1__membership_changed__descriptor, COPIES_MEMBERSHIP, false},
    {&orgmesh__accounts__v1__membership_removed__descriptor, COPIES_MEMBERSHIP, true},
};

static bool wanted(const copies_sink *s, enum copies_kind k) {
    return k == COPIES_ACCOUNT ? s->account != NULL : k == COPIES_USER ? s->user != NULL : s->membership != NULL;
}

int copies_apply_event(pg_conn *tx, const evt_event *ev, const copies_sink *sink, void *arg) {
    if (ev->type == NULL) return 0;
    size_t i = 0;
    while (i < sizeof kinds / sizeof kinds[0] && strcmp(ev->type, kinds[i].d->name) != 0) i++;
    if (i == sizeof kinds / sizeof kinds[0] || !wanted(sink, kinds[i].kind)) return 0; /* not kept here */
    const ProtobufCMessageDescriptor *d = kinds[i].d;
    ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, ev->payload_len, ev->payload);
    if (m == NULL) {
        log_error("event %s (%s): payload cannot be decoded; ignored", ev->id, ev->type);
        return 0;
    }
    const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field(d, 1);
    const void *item = (f != NULL && f->type == PROTOBUF_C_TYPE_MESSAGE) ? *(void *const *)((const char *)m + f->offset)
                                                                          : NULL;
    copies_event e = {.ev = ev, .msg = m, .deleted = kinds[i].deleted, .version = ev->version};
    int rc = 0;
    if (item == NULL) goto out;
    switch (kinds[i].kind) {
    case COPIES_ACCOUNT: {
        const CopiesAccount *a = item;
        if (!pg_id_valid(a->hub_id)) break;
        if (e.version <= 0) e.version = a->version;
        rc = sink->account(tx, &e, a, arg);
        break;
    }
    case COPIES_USER: {
        const CopiesUser *u = item;
        if (!pg_id_valid(u->user_id)) break;
        if (e.version <= 0) e.version = u->version;
        rc = sink->user(tx, &e, u, arg);
        break;
    }
    case COPIES_MEMBERSHIP: {
        const CopiesMembership *mb = item;
        if (!pg_id_valid(mb->hub_id) || !pg_id_valid(mb->user_id)) break;
        if (e.version <= 0) e.version = mb->version;
        rc = sink->membership(tx, &e, mb, arg);
        break;
    }
    }
out:
    protobuf_c_message_free_unpacked(m, NULL);
    return rc;
}

int copies_deadline_ms(rpc_ctx *ctx) {
    if (ctx == NULL) return 5000;
    int64_t left = rpc_time_left_ms(ctx);
    return left < 5000 ? (int)(left > 0 ? left : 1) : 5000;
}

int copies_call(rpc_ctx *ctx, const char *method, const ProtobufCMessage *req,
                const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp, rpc_status *st) {
    rpc_status local;
    if (st == NULL) st = &local;
    memset(st, 0, sizeof *st);
    *resp = NULL;
    rpc_client *cl = app_peer("accounts");
    if (cl == NULL) {
        snprintf(st->message, sizeof st->message, "ORGMESH_ACCOUNTS_ADDR is not set");
        return OM_E_UNAVAILABLE;
    }
    if (ctx != NULL && rpc_time_left_ms(ctx) <= 0) {
        snprintf(st->message, sizeof st->message, "the caller's deadline has passed");
        return OM_E_UNAVAILABLE;
    }
    rpc_call_opts o = {.token = app_service_token(),
                       .trace_id = ctx ? rpc_trace_id(ctx) : NULL,
                       .deadline_ms = copies_deadline_ms(ctx),
                       .idempotent = true};
    int rc = rpc_client_call(cl, method, req, resp_desc, resp, &o, st);
    if (rc != 0) log_warn("accounts %s: %s %s %s", method, om_err_name(rc), st->reason, st->message);
    return rc;
}

/* SPEC 2: the owner not answering is UNAVAILABLE, whatever the reason. */
static int fetch_failed(int rc) {
    return rc == OM_E_NOT_FOUND ? rc : OM_E_UNAVAILABLE;
}

int copies_fetch_accounts(rpc_ctx *ctx, const uint64_t *ids, size_t n,
                          int (*put)(const CopiesAccount *a, void *arg), void *arg) {
    for (size_t at = 0; at < n; at += COPIES_BATCH) {
        APB(BatchGetAccountsRequest) req = ORGMESH__ACCOUNTS__V1__BATCH_GET_ACCOUNTS_REQUEST__INIT;
        req.hub_ids = (uint64_t *)ids + at;
        req.n_hub_ids = n - at < COPIES_BATCH ? n - at : COPIES_BATCH;
        APB(BatchGetAccountsResponse) *r = NULL;
        int rc = copies_call(ctx, "/orgmesh.accounts.v1.AccountsInternalService/BatchGetAccounts", &req.base,
                             &orgmesh__accounts__v1__batch_get_accounts_response__descriptor,
                             (ProtobufCMessage **)&r, NULL);
        if (rc != 0) return fetch_failed(rc);
        for (size_t i = 0; rc == 0 && i < r->n_accounts; i++)
            if (r->accounts[i] != NULL && pg_id_valid(r->accounts[i]->hub_id)) rc = put(r->accounts[i], arg);
        protobuf_c_message_free_unpacked(&r->base, NULL);
        if (rc != 0) return rc;
    }
    return 0;
}

int copies_fetch_users(rpc_ctx *ctx, const uint64_t *ids, size_t n, int (*put)(const CopiesUser *u, void *arg),
                       void *arg) {
    for (size_t at = 0; at < n; at += COPIES_BATCH) {
        APB(BatchGetUsersRequest) req = ORGMESH__ACCOUNTS__V1__BATCH_GET_USERS_REQUEST__INIT;
        req.user_ids = (uint64_t *)ids + at;
        req.n_user_ids = n - at < COPIES_BATCH ? n - at : COPIES_BATCH;
        APB(BatchGetUsersResponse) *r = NULL;
        int rc = copies_call(ctx, "/orgmesh.accounts.v1.AccountsInternalService/BatchGetUsers", &req.base,
                             &orgmesh__accounts__v1__batch_get_users_response__descriptor, (ProtobufCMessage **)&r,
                             NULL);
        if (rc != 0) return fetch_failed(rc);
        for (size_t i = 0; rc == 0 && i < r->n_users; i++)
            if (r->users[i] != NULL && pg_id_valid(r->users[i]->user_id)) rc = put(r->users[i], arg);
        protobuf_c_message_free_unpacked(&r->base, NULL);
        if (rc != 0) return rc;
    }
    return 0;
}

typedef struct memb_page {
    size_t n;
    CopiesMembership **ms;
    int (*put)(pg_conn *tx, const CopiesMembership *m, void *arg);
    int (*done)(pg_conn *tx, void *arg);
    void *arg;
} memb_page;

static int memb_page_tx(pg_conn *tx, void *arg) {
    const memb_page *p = arg;
    for (size_t i = 0; i < p->n; i++) {
        const CopiesMembership *m = p->ms[i];
        if (m == NULL || !pg_id_valid(m->hub_id) || !pg_id_valid(m->user_id)) continue;
        int rc = p->put(tx, m, p->arg);
        if (rc != 0) return rc;
    }
    return p->done ? p->done(tx, p->arg) : 0;
}

/* ListMemberships or ListMembershipsInternal: the same request and page
 * fields by name (user_id, page_size, page_token; memberships,
 * next_page_token), each pages stored as copies_fetch_memberships says. */
static int fetch_memberships(rpc_ctx *ctx, pg_conn *c, uint64_t user_id, bool internal,
                             int (*put)(pg_conn *tx, const CopiesMembership *m, void *arg),
                             int (*done)(pg_conn *tx, void *arg), void *arg) {
    const char *method = internal ? "/orgmesh.accounts.v1.AccountsInternalService/ListMembershipsInternal"
                                  : "/orgmesh.accounts.v1.AccountsService/ListMemberships";
    APB(ListMembershipsInternalRequest) ireq = ORGMESH__ACCOUNTS__V1__LIST_MEMBERSHIPS_INTERNAL_REQUEST__INIT;
    APB(ListMembershipsRequest) preq = ORGMESH__ACCOUNTS__V1__LIST_MEMBERSHIPS_REQUEST__INIT;
    ProtobufCMessage *req = internal ? &ireq.base : &preq.base;
    const ProtobufCMessageDescriptor *resp_desc =
        internal ? &orgmesh__accounts__v1__list_memberships_internal_response__descriptor
                 : &orgmesh__accounts__v1__list_memberships_response__descriptor;
    int32_t page_size = 1000;
    if (!pb_set_field(req, "user_id", PROTOBUF_C_TYPE_UINT64, &user_id, sizeof user_id) ||
        !pb_set_field(req, "page_size", PROTOBUF_C_TYPE_INT32, &page_size, sizeof page_size))
        return OM_E_INTERNAL;
    char *token = NULL;
    int rc = 0;
    for (int page = 0; page < COPIES_MEMBERSHIP_PAGES; page++) {
        const char *t = token ? token : "";
        pb_set_field(req, "page_token", PROTOBUF_C_TYPE_STRING, &t, sizeof t);
        ProtobufCMessage *r = NULL;
        rc = copies_call(ctx, method, req, resp_desc, &r, NULL);
        free(token);
        token = NULL;
        if (rc != 0) return fetch_failed(rc);
        memb_page p = {.put = put, .done = done, .arg = arg};
        const char *next = NULL;
        pb_get_repeated(r, "memberships", (void **)&p.ms, &p.n);
        pb_get_field(r, "next_page_token", &next, sizeof next);
        rc = pg_tx(c, memb_page_tx, &p);
        if (rc == 0 && next != NULL && next[0] != '\0') {
            token = strdup(next);
            if (token == NULL) rc = OM_E_NOMEM;
        }
        protobuf_c_message_free_unpacked(r, NULL);
        if (rc != 0 || token == NULL) break;
    }
    free(token);
    return rc;
}

int copies_fetch_memberships(rpc_ctx *ctx, pg_conn *c, uint64_t user_id,
                             int (*put)(pg_conn *tx, const CopiesMembership *m, void *arg),
                             int (*done)(pg_conn *tx, void *arg), void *arg) {
    return fetch_memberships(ctx, c, user_id, false, put, done, arg);
}

int copies_fetch_memberships_internal(rpc_ctx *ctx, pg_conn *c, uint64_t user_id,
                                      int (*put)(pg_conn *tx, const CopiesMembership *m, void *arg),
                                      int (*done)(pg_conn *tx, void *arg), void *arg) {
    return fetch_memberships(ctx, c, user_id, true, put, done, arg);
}

unsigned copies_bits(const int *values, size_t n) {
    unsigned bits = 0;
    for (size_t i = 0; i < n; i++)
        if (values[i] >= 1 && values[i] <= 32) bits |= 1u << (values[i] - 1);
    return bits;
}

int copies_membership_put(pg_conn *tx, const CopiesMembership *m, bool deleted, int64_t version) {
    pg_params p = {0};
    pg_args(&p, m->hub_id, m->user_id, deleted ? 0 : (int64_t)copies_bits((const int *)m->roles, m->n_roles),
            deleted ? 0 : (int64_t)copies_bits((const int *)m->seats, m->n_seats), deleted, version);
    /* SPEC 2: never an older version over a newer one. */
    return pg_exec(tx,
                   "INSERT INTO membership_copies AS x (hub_id, user_id, roles, seats, deleted, version)"
                   " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (hub_id, user_id) DO UPDATE SET"
                   " roles = EXCLUDED.roles, seats = EXCLUDED.seats, deleted = EXCLUDED.deleted,"
                   " version = EXCLUDED.version, update_time = now() WHERE x.version < EXCLUDED.version",
                   &p, NULL);
}

int copies_memberships_get(pg_conn *c, uint64_t user_id, const uint64_t *hubs, int n, bool *known, unsigned *roles,
                           unsigned *seats, bool *member) {
    for (int i = 0; i < n; i++) {
        known[i] = false;
        roles[i] = 0;
        if (seats) seats[i] = 0;
        if (member) member[i] = false;
        pg_params p = {0};
        pg_args(&p, hubs[i], user_id);
        pg_res *r = NULL;
        int rc = pg_exec(c, "SELECT roles, seats, deleted FROM membership_copies WHERE hub_id = $1 AND user_id = $2",
                         &p, &r);
        if (rc != 0) return rc;
        if (pg_nrows(r) > 0) {
            known[i] = true;
            if (!pg_bool(r, 0, 2)) {
                roles[i] = (unsigned)pg_i64(r, 0, 0);
                if (seats) seats[i] = (unsigned)pg_i64(r, 0, 1);
                if (member) member[i] = true;
            }
        }
        pg_free(r);
    }
    return 0;
}
