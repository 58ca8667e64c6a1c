/* main.c — wiring of the connections service (SPEC 4; see
 * docs/services/connections.md): its gRPC service, its migrations, and the
 * consumers of the accounts and organizations services' events (CONN-05,
 * CONN-06 seats, CONN-09). Everything else is in connections_*.c. */
#include "app.h"
#include "connections.h"
#include "connections_rpc.h"

/* Embedded from migrations/ by cmake (om_migrations). */
extern const pg_migration connections_migrations[];
extern const size_t connections_n_migrations;

static const rpc_service *const services[] = {&connections_service, NULL};

static const evt_subscription subs[] = {
    {.source = "accounts", .fn = conn_on_accounts_event, .arg = NULL},
    {.source = "organizations", .fn = conn_on_organizations_event, .arg = NULL},
};

int main(int argc, char **argv) {
    const app_def def = {
        .name = "connections",
        .default_port = 50053,
        .services = services,
        .migrations = connections_migrations,
        .n_migrations = connections_n_migrations,
        .subs = subs,
        .n_subs = 2,
        .init = connections_init,
        .fini = connections_fini,
    };
    return app_main(&def, argc, argv);
}
