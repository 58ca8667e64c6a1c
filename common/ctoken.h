/* ctoken.h — consistency tokens (issue 18, CONN-13; like Zanzibar's
 * zookies): an opaque string a mutation returns for its commit, which a
 * check accepts as Consistency.at_least_as_fresh.
 *
 * A token names the events the commit wrote to its service's outbox (each
 * one (service, event id); evt_emit's id_out), so a consumer can tell
 * whether it has applied that commit (applied_events, docs/common/evt.md);
 * and its issue time. It is base64url (no padding) of
 *
 *   version (1) | n (1, 1..CTOKEN_MAX_EVENTS) | issued unix ms (8, BE)
 *   | n x (service code (1) | event uuid (16)) | HMAC-SHA256 tag (16)
 *
 * The tag's key is ORGMESH_CONSISTENCY_TOKEN_KEY, else derived from
 * ORGMESH_PAGE_TOKEN_KEY (the same on every service and replica of a
 * cluster): callers cannot forge or edit a token, and a token of another
 * cluster or of a newer format does not decode (INVALID_CONSISTENCY_TOKEN). */
#ifndef OM_CTOKEN_H
#define OM_CTOKEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CTOKEN_VERSION 1
#define CTOKEN_MAX_EVENTS 4
/* The longest encoded token, with its terminating NUL. */
#define CTOKEN_MAX_LEN 132

/* Service codes (stable: they are inside issued tokens). */
enum {
    CTOKEN_ACCOUNTS = 1,
    CTOKEN_ORGANIZATIONS = 2,
    CTOKEN_CONNECTIONS = 3,
    CTOKEN_ASSETS = 4,
    CTOKEN_PARTNERS = 5,
    CTOKEN_NOTIFIER = 6,
};

typedef struct ctoken_event {
    uint8_t service; /* CTOKEN_* */
    uint8_t id[16];  /* the outbox event's uuid */
} ctoken_event;

typedef struct ctoken {
    int64_t issued_ms; /* unix ms */
    int n;
    ctoken_event ev[CTOKEN_MAX_EVENTS];
} ctoken;

/* The code of a service (its schema name, "accounts" ...); 0 when unknown. */
int ctoken_service_code(const char *service);
const char *ctoken_service_name(int code);

/* Starts an empty token issued now. */
void ctoken_init(ctoken *t);
/* Adds the event `event_uuid` (text form, as evt_emit's id_out) of
 * `service`. OM_E_INVALID_ARGUMENT for an unknown service or a malformed
 * uuid; OM_E_BATCH_TOO_LARGE when the token is full (callers name at
 * most CTOKEN_MAX_EVENTS events per commit). */
int ctoken_add(ctoken *t, const char *service, const char *event_uuid);
/* The uuid of an event in text form. */
void ctoken_event_uuid(const ctoken_event *e, char out[37]);

/* Encodes (n >= 1) into out; 0 or OM_E_INVALID_ARGUMENT (n == 0). */
int ctoken_encode(const ctoken *t, char out[CTOKEN_MAX_LEN]);
/* Decodes and verifies; OM_E_INVALID_CONSISTENCY_TOKEN for anything that is
 * not a token this cluster issued in a format this build reads. */
int ctoken_decode(const char *s, ctoken *out);
/* Convenience for a handler: a token naming one event of `service`,
 * encoded into out. 0 or an OM_E_* code. */
int ctoken_for_event(const char *service, const char *event_uuid, char out[CTOKEN_MAX_LEN]);

/* The events of the commit being built, per thread (a handler's apply runs
 * on one worker thread): evt_emit notes each event it writes; a mutation
 * handler calls ctoken_pending_reset() when its apply starts (apply may run
 * more than once) and ctoken_pending_take() when it has written everything,
 * for its response's consistency_token. Keeps the last CTOKEN_MAX_EVENTS
 * events: a commit's events of one aggregate are applied in order, so the
 * last ones imply the earlier ones. */
void ctoken_note(const char *service, const char *event_uuid);
void ctoken_pending_reset(void);
/* Notes every event of an issued token (e.g. another service's reply),
 * when it verifies; ignored otherwise. */
void ctoken_note_token(const char *token);
/* Encodes the noted events into out ("" when none) and forgets them.
 * Returns out, or "" when the encoding fails. */
const char *ctoken_pending_take(char out[CTOKEN_MAX_LEN]);

/* Tests: replace the key (else loaded from the environment on first use). */
int ctoken_set_key(const void *key, size_t len);

#endif
