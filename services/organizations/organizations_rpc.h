/* organizations_rpc.h — the organizations service's gRPC service, for main.c. */
#ifndef ORGANIZATIONS_RPC_H
#define ORGANIZATIONS_RPC_H

#include "rpc.h"

extern const rpc_service organizations_service; /* orgmesh.organizations.v1.OrganizationsService */

/* Reads the configuration the handlers need (ORGMESH_MFA_WINDOW_S). */
int organizations_init(void);

#endif
