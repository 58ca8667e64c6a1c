/* main.c — wiring of the organizations service (multi-account management,
 * SPEC 3; see docs/services/organizations.md): its gRPC service, its
 * migrations, and the consumer of the accounts service's events (ORG-09,
 * ORG-10). Everything else is in organizations_*.c. */
#include <stdbool.h>

#include "app.h"
#include "loop.h"
#include "organizations.h"
#include "organizations_rpc.h"

static const rpc_service *const services[] = {&organizations_service, NULL};

static const evt_subscription subs[] = {
    {.source = "accounts", .fn = org_on_accounts_event, .arg = NULL},
};

/* ORG-13: a timer on the process loop purges tombstones past their
 * retention, one round at a time on a worker, timed by the database clock
 * (several replicas share the rows with SKIP LOCKED). */
static struct {
    uv_timer_t t;
    bool busy;
} purge;

static int purge_work(void *arg) {
    (void)arg;
    pg_conn *c = pg_local();
    if (c != NULL) org_tombstones_purge_round(c);
    return 0;
}

static void purge_done(void *arg, int rc) {
    (void)arg;
    (void)rc;
    purge.busy = false;
}

static void purge_tick(uv_timer_t *t) {
    (void)t;
    if (purge.busy || loop_stopping()) return;
    purge.busy = true;
    if (loop_work(purge_work, purge_done, NULL) != 0) purge.busy = false;
}

static void purge_stop(void *arg) {
    (void)arg;
    uv_close((uv_handle_t *)&purge.t, NULL);
}

static int init(void) {
    if (organizations_init() != 0) return -1;
    if (uv_timer_init(loop_get(), &purge.t) != 0) return -1;
    if (loop_on_stop(purge_stop, NULL) != 0) {
        uv_close((uv_handle_t *)&purge.t, NULL);
        return -1;
    }
    uv_timer_start(&purge.t, purge_tick, (uint64_t)org_tombstone_purge_ms, (uint64_t)org_tombstone_purge_ms);
    return 0;
}

APP_MAIN(organizations, 50052, .services = services, APP_SUBS(subs), .init = init)
