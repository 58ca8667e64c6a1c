/* main.c — wiring of the connections service (SPEC 4; see
 * docs/services/connections.md): its gRPC service, its migrations, and the
 * consumers of the accounts and organizations services' events (CONN-05,
 * CONN-06 seats, CONN-09). Everything else is in connections_*.c. */
#include "app.h"
#include "connections.h"
#include "connections_rpc.h"

static const rpc_service *const services[] = {&connections_service, NULL};

static const evt_subscription subs[] = {
    {.source = "accounts", .fn = conn_on_accounts_event, .arg = NULL},
    {.source = "organizations", .fn = conn_on_organizations_event, .arg = NULL},
};

APP_MAIN(connections, 50053, .services = services, APP_SUBS(subs), .init = connections_init,
         .fini = connections_fini)
