/* main.c — wiring of the organizations service (multi-account management,
 * SPEC 3; see docs/services/organizations.md): its gRPC service, its
 * migrations, and the consumer of the accounts service's events (ORG-09,
 * ORG-10). Everything else is in organizations_*.c. */
#include "app.h"
#include "organizations.h"
#include "organizations_rpc.h"

static const rpc_service *const services[] = {&organizations_service, NULL};

static const evt_subscription subs[] = {
    {.source = "accounts", .fn = org_on_accounts_event, .arg = NULL},
};

APP_MAIN(organizations, 50052, .services = services, APP_SUBS(subs), .init = organizations_init)
