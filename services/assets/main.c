/* main.c — wiring of the assets service (SPEC 5; see
 * docs/services/assets.md): its gRPC service, its migrations, the consumer of
 * the accounts service's membership events, and the copy workers started in
 * init and stopped in fini. Everything else is in assets_*.c. */
#include "app.h"
#include "assets.h"

static const rpc_service *const services[] = {&assets_service, NULL};

static const evt_subscription subs[] = {
    {.source = "accounts", .fn = assets_on_accounts_event, .arg = NULL},
};

APP_MAIN(assets, 50054, .services = services, APP_SUBS(subs), .init = assets_init, .fini = assets_fini)
