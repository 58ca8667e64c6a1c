/* assets_events.c — the consumer of the accounts service's events (SPEC 2):
 * the versioned local copy of memberships whose roles decide who may work
 * with an account's assets (ASSET-01) and copy them (ASSET-02). */
#include "assets.h"
#include "copies.h"

static int on_membership(pg_conn *tx, const copies_event *e, const CopiesMembership *mb, void *arg) {
    (void)arg;
    return copies_membership_put(tx, mb, e->deleted, e->version);
}

static const copies_sink accounts_sink = {.membership = on_membership};

int assets_on_accounts_event(pg_conn *tx, const evt_event *ev, void *arg) {
    return copies_apply_event(tx, ev, &accounts_sink, arg);
}
