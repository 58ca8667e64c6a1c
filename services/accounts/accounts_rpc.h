/* accounts_rpc.h — the accounts service's two gRPC services, for main.c. */
#ifndef ACCOUNTS_RPC_H
#define ACCOUNTS_RPC_H

#include "rpc.h"

extern const rpc_service accounts_service;          /* orgmesh.accounts.v1.AccountsService */
extern const rpc_service accounts_internal_service; /* ...AccountsInternalService */

/* Reads the configuration the handlers need (ORGMESH_HOSTING_LOCATIONS). */
int accounts_init(void);

#endif
