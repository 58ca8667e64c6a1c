/* app.h — the life of an orgmesh service process, so that each main.c is
 * wiring only: configuration, logs, migrations (at start, or alone with
 * --migrate-only), PostgreSQL and Redis, health, metrics, the event relay and
 * consumers, the gRPC server, and a clean stop on SIGTERM/SIGINT. */
#ifndef OM_APP_H
#define OM_APP_H

#include <stddef.h>

#include "auth.h"
#include "evt.h"
#include "pg.h"
#include "rpc.h"

typedef struct app_def {
    const char *name;                   /* "accounts": schema, stream, logs */
    int default_port;                   /* used when ORGMESH_LISTEN is unset */
    const rpc_service *const *services; /* NULL-terminated */
    const pg_migration *migrations;
    size_t n_migrations;
    const evt_subscription *subs;       /* may be NULL */
    int n_subs;
    /* Called after configuration and before serving (e.g. peer clients);
     * non-zero aborts the start. May be NULL. */
    int (*init)(void);
    void (*fini)(void);
} app_def;

/* Runs the service until SIGTERM/SIGINT; returns the process exit code. */
int app_main(const app_def *def, int argc, char **argv);

/* A service's main(): its name (the schema, and the migrations cmake embeds
 * as <name>_migrations), its default port, then the other app_def fields:
 *   APP_MAIN(assets, 50054, .services = services, APP_SUBS(subs), .init = assets_init)
 * (no semicolon after it). APP_SUBS(a) gives .subs and .n_subs of an array. */
#define APP_SUBS(a) .subs = (a), .n_subs = (int)(sizeof(a) / sizeof(a)[0])
#define APP_MAIN(svc, port, ...)                                                                     \
    extern const pg_migration svc##_migrations[];                                                    \
    extern const size_t svc##_n_migrations;                                                          \
    int main(int argc, char **argv) {                                                                \
        const app_def def = {.name = #svc, .default_port = (port), .migrations = svc##_migrations, \
                             .n_migrations = svc##_n_migrations, __VA_ARGS__};                      \
        return app_main(&def, argc, argv);                                                           \
    }

/* Process-wide handles, valid once app_main has called def->init. */
auth_ctx *app_auth(void);
const char *app_name(void);
/* This service's own identity token (SPEC 8: system actions). */
const char *app_service_token(void);
/* A client for a peer service, from ORGMESH_<PEER>_ADDR (e.g.
 * ORGMESH_ACCOUNTS_ADDR), created on first use; NULL if unconfigured. */
rpc_client *app_peer(const char *peer);

/* The embedded FileDescriptorSet of the whole contract (reflection). */
extern const unsigned char om_descriptor_set[];
extern const size_t om_descriptor_set_len;

#endif
