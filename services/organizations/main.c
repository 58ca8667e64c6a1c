/* main.c — wiring of the organizations service (multi-account management,
 * SPEC 3; see docs/services/organizations.md): its gRPC service, its
 * migrations, and the consumer of the accounts service's events (ORG-09,
 * ORG-10). Everything else is in organizations_*.c. */
#include "app.h"
#include "organizations.h"
#include "organizations_rpc.h"

/* Embedded from migrations/ by cmake (om_migrations). */
extern const pg_migration organizations_migrations[];
extern const size_t organizations_n_migrations;

static const rpc_service *const services[] = {&organizations_service, NULL};

static const evt_subscription subs[] = {
    {.source = "accounts", .fn = org_on_accounts_event, .arg = NULL},
};

int main(int argc, char **argv) {
    const app_def def = {
        .name = "organizations",
        .default_port = 50052,
        .services = services,
        .migrations = organizations_migrations,
        .n_migrations = organizations_n_migrations,
        .subs = subs,
        .n_subs = 1,
        .init = organizations_init,
    };
    return app_main(&def, argc, argv);
}
