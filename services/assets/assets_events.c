/* assets_events.c — the consumer of the accounts service's events (SPEC 2):
 * the versioned local copy of memberships whose roles decide who may work
 * with an account's assets (ASSET-01) and copy them (ASSET-02). */
#include <string.h>

#include "assets.h"
#include "log.h"
#include "orgmesh/accounts/v1/events.pb-c.h"

static int on_membership(pg_conn *tx, const evt_event *ev, const ProtobufCMessageDescriptor *d, bool deleted) {
    ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, ev->payload_len, ev->payload);
    if (m == NULL) {
        log_error("event %s (%s): payload cannot be decoded; ignored", ev->id, ev->type);
        return 0;
    }
    /* Every membership event carries the Membership as field 1. */
    const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field(d, 1);
    const Orgmesh__Accounts__V1__Membership *mb =
        (f && f->type == PROTOBUF_C_TYPE_MESSAGE) ? *(void **)((char *)m + f->offset) : NULL;
    int rc = 0;
    if (mb != NULL && pg_id_valid(mb->hub_id) && pg_id_valid(mb->user_id))
        rc = store_membership_upsert(tx, mb->hub_id, mb->user_id, assets_roles_bits((const int *)mb->roles, mb->n_roles),
                                     deleted, ev->version > 0 ? ev->version : mb->version);
    protobuf_c_message_free_unpacked(m, NULL);
    return rc;
}

static const struct {
    const ProtobufCMessageDescriptor *d;
    bool deleted;
} handlers[] = {
    {&orgmesh__accounts__v1__membership_added__descriptor, false},
    {&orgmesh__accounts__v1__membership_changed__descriptor, false},
    {&orgmesh__accounts__v1__membership_removed__descriptor, true},
};

int assets_on_accounts_event(pg_conn *tx, const evt_event *ev, void *arg) {
    (void)arg;
    if (ev->type == NULL) return 0;
    for (size_t i = 0; i < sizeof handlers / sizeof handlers[0]; i++)
        if (strcmp(ev->type, handlers[i].d->name) == 0) return on_membership(tx, ev, handlers[i].d, handlers[i].deleted);
    return 0;
}
