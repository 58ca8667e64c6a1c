/* main.c — wiring of the partners service (SPEC 6; see
 * docs/services/partners.md): its two gRPC services, migrations, the
 * consumer of accounts events, and one background thread that expires
 * access requests (PART-05) and finishes the accounts side of assignment
 * changes (the link sync). Several replicas may run it: the rows are taken
 * with FOR UPDATE SKIP LOCKED and timed by the database clock. */
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

#include "app.h"
#include "log.h"
#include "partners.h"

/* Embedded from migrations/ by cmake (om_migrations). */
extern const pg_migration partners_migrations[];
extern const size_t partners_n_migrations;

static const rpc_service *const services[] = {&partners_service, &partners_internal_service, NULL};

static const evt_subscription subs[] = {
    {"accounts", pa_on_accounts_event, NULL}, /* PART-05, PART-08, PART-09, local copies */
};

static struct {
    pthread_t th;
    bool started;
    int pipe[2];
} timer;

static void *timer_main(void *arg) {
    (void)arg;
    pg_conn *c = NULL;
    for (;;) {
        struct pollfd p = {.fd = timer.pipe[0], .events = POLLIN};
        if (poll(&p, 1, partners_cfg.timer_ms) > 0) break; /* stop */
        if (c == NULL && pg_connect(&c) != 0) continue;
        int n = pa_expire_round(c, 64); /* PART-05 */
        if (n > 0) log_info("expired %d access requests", n);
        pa_sync_round(c, 64);
    }
    pg_close(c);
    pg_local_close();
    return NULL;
}

static int init(void) {
    if (partners_init() != 0) return -1;
    if (pipe(timer.pipe) != 0) return -1;
    if (pthread_create(&timer.th, NULL, timer_main, NULL) != 0) return -1;
    timer.started = true;
    return 0;
}

static void fini(void) {
    if (!timer.started) return;
    (void)!write(timer.pipe[1], "x", 1);
    pthread_join(timer.th, NULL);
    close(timer.pipe[0]);
    close(timer.pipe[1]);
    timer.started = false;
}

int main(int argc, char **argv) {
    const app_def def = {
        .name = "partners",
        .default_port = 50055,
        .services = services,
        .migrations = partners_migrations,
        .n_migrations = partners_n_migrations,
        .subs = subs,
        .n_subs = 1,
        .init = init,
        .fini = fini,
    };
    return app_main(&def, argc, argv);
}
