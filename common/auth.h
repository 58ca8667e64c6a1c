/* auth.h — who is calling (SPEC 8 "Identity").
 *
 * Verifies `authorization: Bearer <JWT>` tokens (ES256 with keys chosen by
 * `kid`; HS256 only for local development), checks iss, aud, iat and exp with
 * 30 s leeway, and mints the tokens a service uses for its own actions. */
#ifndef OM_AUTH_H
#define OM_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A service identity is a token whose `sub` is "service:<name>". */
#define AUTH_SERVICE_PREFIX "service:"
/* Longer tokens are refused unread (a bearer token is a header: keep it small). */
#define AUTH_MAX_TOKEN_LEN 8192

typedef struct om_actor {
    uint64_t user_id;  /* the `sub` of a user token; 0 for a service */
    char service[32];  /* the service name of a service token, else "" */
    int64_t mfa_at;    /* `mfa_at` claim (unix seconds), 0 when absent */
    int64_t iat;
    int64_t exp;
    /* API-01: the `locale` claim (a BCP-47 tag of letters, digits, '-' and
     * '_', at most 15 characters), "" when absent or not such a tag */
    char locale[16];
} om_actor;

typedef struct auth_config {
    const char *issuer;    /* expected `iss` (ORGMESH_JWT_ISSUER) */
    const char *audience;  /* expected `aud` (ORGMESH_JWT_AUDIENCE) */
    /* Verification keys, ';'-separated "kid:alg:material" with alg HS256
     * (material = the secret) or ES256 (material = path of a PEM public or
     * private key) (ORGMESH_JWT_KEYS). */
    const char *keys;
    /* The key this process signs with, "kid:alg:material" as above (for ES256
     * a PEM private key) (ORGMESH_JWT_SIGNING_KEY). NULL: cannot mint. */
    const char *signing_key;
    /* Which identities each key may sign for (SPEC 8), ';'-separated
     * "kid=subject[,subject...]" where a subject is `users` (user tokens: the
     * issuer's keys) or `service:<name>` (that service's own identity)
     * (ORGMESH_JWT_KEY_SUBJECTS). A key bound to nothing signs for nobody:
     * its tokens are refused with OM_E_KEY_NOT_BOUND_TO_SUBJECT. */
    const char *key_subjects;
    int leeway_s;          /* clock skew allowed, seconds; 0 = the default 30 */
} auth_config;

typedef struct auth_ctx auth_ctx;

int auth_new(auth_ctx **out, const auth_config *cfg);
/* Number of verification keys bound to no identity; logs a warning naming
 * each (for start-up). */
size_t auth_unbound_keys(const auth_ctx *a);
/* Whether any key (verification or signing) is HS256 (local development only). */
bool auth_uses_hs256(const auth_ctx *a);
void auth_free(auth_ctx *a);

/* Verify a compact JWT (without the "Bearer " prefix). Returns 0 and fills
 * *actor, or OM_E_UNAUTHENTICATED / OM_E_TOKEN_EXPIRED /
 * OM_E_KEY_NOT_BOUND_TO_SUBJECT (a good signature by a key that may not sign
 * for this `sub`). All three are gRPC UNAUTHENTICATED. Thread-safe. */
int auth_verify(const auth_ctx *a, const char *token, size_t len, om_actor *actor);

/* Mint a token for `actor` valid for `ttl_s` seconds, signed with the signing
 * key; `mfa_at` is included when non-zero. Returns a malloc'd string in *out. */
int auth_mint(const auth_ctx *a, const om_actor *actor, int ttl_s, char **out);

/* auth_verify that also hands back the verified claims as compact JSON
 * (malloc'd, in *claims_json; may be NULL), for tools that show them. */
int auth_verify_claims(const auth_ctx *a, const char *token, size_t len, om_actor *actor,
                       char **claims_json);

/* auth_mint with explicit `iat` and `exp` (unix seconds), e.g. for tools and
 * tests that need a token expiring at a given time (even in the past). */
int auth_mint_at(const auth_ctx *a, const om_actor *actor, int64_t iat, int64_t exp, char **out);

/* Replace the clock (unix seconds) used by verify, mint and the service token
 * cache; NULL restores time(). For tests: call before sharing `a`. */
void auth_set_clock(auth_ctx *a, int64_t (*now)(void));

/* This service's own token ("service:<name>"), minted and renewed on
 * demand; the string stays valid until the next call from the same thread.
 * NULL when there is no signing key or the name is not [a-z0-9-]{1,31}. */
const char *auth_service_token(auth_ctx *a, const char *service);

static inline bool auth_is_service(const om_actor *a, const char *name) {
    if (a == NULL || a->service[0] == '\0') return false;
    if (name == NULL) return true;
    for (size_t i = 0;; i++) {
        if (a->service[i] != name[i]) return false;
        if (name[i] == '\0') return true;
    }
}

#endif
