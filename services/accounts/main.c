/* main.c — wiring of the accounts service (the directory of accounts, users
 * and memberships; see docs/services/accounts.md). Everything else is in
 * accounts_rpc.c (handlers), accounts_rules.c and accounts_store.c. */
#include "accounts_rpc.h"
#include "app.h"

/* Embedded from migrations/ by cmake (om_migrations). */
extern const pg_migration accounts_migrations[];
extern const size_t accounts_n_migrations;

static const rpc_service *const services[] = {&accounts_service, &accounts_internal_service, NULL};

int main(int argc, char **argv) {
    const app_def def = {
        .name = "accounts",
        .default_port = 50051,
        .services = services,
        .migrations = accounts_migrations,
        .n_migrations = accounts_n_migrations,
        .init = accounts_init,
    };
    return app_main(&def, argc, argv);
}
