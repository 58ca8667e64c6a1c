/* main.c — wiring of the assets service (SPEC 5; see
 * docs/services/assets.md): its gRPC service, its migrations, the consumer of
 * the accounts service's membership events, and the copy workers started in
 * init and stopped in fini. Everything else is in assets_*.c. */
#include "app.h"
#include "assets.h"

/* Embedded from migrations/ by cmake (om_migrations). */
extern const pg_migration assets_migrations[];
extern const size_t assets_n_migrations;

static const rpc_service *const services[] = {&assets_service, NULL};

static const evt_subscription subs[] = {
    {.source = "accounts", .fn = assets_on_accounts_event, .arg = NULL},
};

int main(int argc, char **argv) {
    const app_def def = {
        .name = "assets",
        .default_port = 50054,
        .services = services,
        .migrations = assets_migrations,
        .n_migrations = assets_n_migrations,
        .subs = subs,
        .n_subs = 1,
        .init = assets_init,
        .fini = assets_fini,
    };
    return app_main(&def, argc, argv);
}
