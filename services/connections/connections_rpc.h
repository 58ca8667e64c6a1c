/* connections_rpc.h — the orgmesh.connections.v1.ConnectionsService handlers. */
#ifndef CONNECTIONS_RPC_H
#define CONNECTIONS_RPC_H

#include "rpc.h"

extern const rpc_service connections_service;
/* Configuration, peers, the cache and its invalidation listener. */
int connections_init(void);
void connections_fini(void);

#endif
