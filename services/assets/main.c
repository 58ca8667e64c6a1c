/* main.c — wiring of the assets service. Its RPCs are not implemented yet:
 * the server starts, serves health and reflection, and answers every
 * orgmesh.assets.v1 RPC with UNIMPLEMENTED. */
#include "app.h"
#include "orgmesh/assets/v1/assets.pb-c.h"

static const rpc_method assets_methods[] = {{NULL, NULL, 0}};
static const rpc_service assets_service = {&orgmesh__assets__v1__assets_service__descriptor,
                                           assets_methods};
static const rpc_service *const services[] = {&assets_service, NULL};

int main(int argc, char **argv) {
    static const app_def def = {
        .name = "assets",
        .default_port = 50054,
        .services = services,
    };
    return app_main(&def, argc, argv);
}
