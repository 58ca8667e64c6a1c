/* evt.h — events (SPEC 2): an outbox written in the same transaction as the
 * change, relayed to one Redis Stream per producing service, and consumers in
 * consumer groups that apply each event exactly once.
 *
 * Event types are "orgmesh.<service>.v1.<Noun><PastTense>"; the payload is a
 * protobuf message whose full name is the type itself, packed into the
 * orgmesh.events.v1.Envelope. */
#ifndef OM_EVT_H
#define OM_EVT_H

#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "auth.h"
#include "pg.h"

/* The stream a service's events go to: "orgmesh:events:<service>". */
#define EVT_STREAM_PREFIX "orgmesh:events:"
/* Where a consumer group <service> puts entries it gives up on (malformed,
 * or delivered ORGMESH_EVT_MAX_DELIVERIES times without success):
 * "orgmesh:deadletter:<service>", with the original fields plus
 * stream, id, group, reason and deliveries. */
#define EVT_DEADLETTER_PREFIX "orgmesh:deadletter:"
/* Where consumer groups publish, per producing service, the highest relay
 * sequence number below which they applied every event (issue 12):
 * hash "orgmesh:progress:<source>", field <group>. */
#define EVT_PROGRESS_PREFIX "orgmesh:progress:"

typedef struct evt_meta {
    const char *subject;      /* aggregate, e.g. "accounts/123" */
    int64_t version;          /* the aggregate's version after the change */
    const om_actor *actor;    /* who did it; NULL when a rule did */
    const char *rule;         /* the automatic rule (e.g. "ORG-09"), or NULL */
    const char *trace_id;     /* may be NULL */
} evt_meta;

/* Write an event into <schema>.outbox inside the caller's open transaction.
 * Its type is the payload's full message name. Wakes the relay on commit
 * (NOTIFY). The envelope's id is returned in id_out (37 bytes) if non-NULL. */
int evt_emit(pg_conn *tx, const evt_meta *meta, const ProtobufCMessage *payload, char *id_out);

/* The relay: moves committed outbox rows to the service's stream in order,
 * waiting while Redis is down (events stay in the outbox). It runs on the
 * process loop (common/loop.h: rounds on the worker pool, woken by NOTIFY),
 * so start it once the loop exists; stop it from a thread other than the
 * loop's (it waits for the round in flight). */
int evt_relay_start(const char *service);
void evt_relay_stop(void);

/* A decoded event handed to a consumer. */
typedef struct evt_event {
    const char *id;
    const char *type;         /* "orgmesh.accounts.v1.AccountDeactivated" */
    const char *source;       /* producing service */
    const char *subject;
    int64_t version;
    int64_t time_us;
    const char *actor;        /* "user:<id>", "service:<name>" or "rule:<ID>" */
    const uint8_t *payload;   /* the packed payload message */
    size_t payload_len;
    const char *stream_id;    /* Redis stream entry id */
} evt_event;

/* Apply one event inside `tx`. Return 0 to commit and acknowledge; a
 * negative code rolls back and leaves it pending (it will be retried, then
 * dead-lettered after too many attempts). The consumer records the event id
 * in <schema>.applied_events in the same transaction, so the handler's
 * database effects happen once. Handlers must themselves refuse to apply
 * an older aggregate version over a newer one (compare `version`). */
typedef int (*evt_handler_fn)(pg_conn *tx, const evt_event *ev, void *arg);

/* Most lanes of one subscription. */
#define EVT_LANES_MAX 64

typedef struct evt_subscription {
    const char *source;       /* stream of this producing service */
    evt_handler_fn fn;
    void *arg;
    /* Events applied in parallel: 0 or 1, one at a time in stream order;
     * N > 1, N lanes, each event in lane hash(subject) % N, so that the
     * events of one subject stay in stream order while different subjects
     * run side by side (each lane its own transaction). The handler must
     * then be safe to run from N threads at once. ORGMESH_EVT_LANES, when
     * set, overrides it for every subscription of the process. */
    int lanes;
} evt_subscription;

/* Start one reader thread per subscription, its lanes queues on the worker
 * pool (issue 15), in consumer group "<service>" with a consumer name unique
 * to this process. Stop from a thread other than the loop's. Claims
 * entries idle for longer than ORGMESH_EVT_CLAIM_IDLE_MS (default 10000)
 * from dead consumers. */
int evt_consumers_start(const char *service, const evt_subscription *subs, int n);
void evt_consumers_stop(void);

/* Decode the bytes of a stream entry (its "e" field) as a consumer does:
 * the orgmesh.events.v1.Envelope, or NULL when they are not one with a valid
 * id (a consumer dead-letters those). When `ev` is non-NULL it is filled
 * with pointers into the envelope (stream_id NULL). Free the result with
 * protobuf_c_message_free_unpacked(msg, NULL). */
ProtobufCMessage *evt_envelope_unpack(const uint8_t *data, size_t len, evt_event *ev);

/* Build the envelope bytes for tests and tools (malloc'd). */
int evt_envelope_pack(const char *source, const evt_meta *meta, const ProtobufCMessage *payload,
                      uint8_t **out, size_t *out_len, char *id_out);

#endif
