/* main.c — wiring of the partners service (SPEC 6; see
 * docs/services/partners.md): its two gRPC services, migrations, the
 * consumer of accounts events (and of the notifier's EmailDeadLettered,
 * PART-22), and a timer on the process loop that expires access requests
 * (PART-05), runs the grant round (PART-15/16/19: notices, ends, dormant
 * grants) and finishes the accounts side of assignment changes (the link
 * sync), one round at a time on a worker. Several
 * replicas may run it: the rows are taken with FOR UPDATE SKIP LOCKED and
 * timed by the database clock. */
#include <stdbool.h>

#include "app.h"
#include "log.h"
#include "loop.h"
#include "partners.h"

static const rpc_service *const services[] = {&partners_service, &partners_internal_service, NULL};

static const evt_subscription subs[] = {
    {"accounts", pa_on_accounts_event, NULL}, /* PART-05, PART-08, PART-09, local copies */
    {"notifier", pa_on_notifier_event, NULL}, /* PART-22: emails given up */
};

static struct {
    uv_timer_t t;
    bool busy; /* a round runs on a worker: the next tick waits for it */
} timer;

/* On a worker: its own connection (pg_local). */
static int round_work(void *arg) {
    (void)arg;
    pg_conn *c = pg_local();
    if (c == NULL) return 0;
    int n = pa_expire_round(c, 64); /* PART-05 */
    if (n > 0) log_info("expired %d access requests", n);
    n = pa_grant_round(c, 64); /* PART-15, PART-16, PART-19 */
    if (n > 0) log_info("partner grants: %d notices, ends or dormant revocations", n);
    pa_sync_round(c, 64);
    return 0;
}

static void round_done(void *arg, int rc) {
    (void)arg;
    (void)rc;
    timer.busy = false;
}

static void tick(uv_timer_t *t) {
    (void)t;
    if (timer.busy || loop_stopping()) return;
    timer.busy = true;
    if (loop_work(round_work, round_done, NULL) != 0) timer.busy = false;
}

static void stop(void *arg) {
    (void)arg;
    uv_close((uv_handle_t *)&timer.t, NULL); /* a round in flight finishes */
}

static int init(void) {
    if (partners_init() != 0) return -1;
    if (uv_timer_init(loop_get(), &timer.t) != 0) return -1;
    if (loop_on_stop(stop, NULL) != 0) {
        uv_close((uv_handle_t *)&timer.t, NULL);
        return -1;
    }
    uv_timer_start(&timer.t, tick, (uint64_t)partners_cfg.timer_ms, (uint64_t)partners_cfg.timer_ms);
    return 0;
}

APP_MAIN(partners, 50055, .services = services, APP_SUBS(subs), .init = init)
