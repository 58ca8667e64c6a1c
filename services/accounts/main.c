/* main.c — wiring of the accounts service (the directory of accounts, users
 * and memberships; see docs/services/accounts.md). Everything else is in
 * accounts_rpc.c (handlers), accounts_rules.c and accounts_store.c. */
#include "accounts_rpc.h"
#include "app.h"

static const rpc_service *const services[] = {&accounts_service, &accounts_internal_service, NULL};

APP_MAIN(accounts, 50051, .services = services, .init = accounts_init)
