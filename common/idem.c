/* idem.c — request ids (idem.h, SPEC 8): a mutation repeated by the same actor
 * to the same method within 24 h returns the first reply. The key is claimed
 * by a row in <schema>.idempotency written in the mutation's own transaction. */
#include "idem.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "audit.h"
#include "log.h"
#include "om_err.h"

void idem_actor_key(const om_actor *actor, char *buf, size_t cap) {
    if (actor == NULL)
        snprintf(buf, cap, "anonymous");
    else
        audit_actor_string(actor, NULL, buf, cap);
}

/* protobuf-c packs into a ProtobufCBuffer: hash as it packs, no copy. */
typedef struct idem_hasher {
    ProtobufCBuffer base;
    EVP_MD_CTX *md;
    bool failed;
} idem_hasher;

static void idem_hash_append(ProtobufCBuffer *b, size_t len, const uint8_t *data) {
    idem_hasher *h = (idem_hasher *)b;
    if (EVP_DigestUpdate(h->md, data, len) != 1) h->failed = true;
}

int idem_key_init(idem_key *key, const om_actor *actor, const char *method,
                  const char *request_id, const ProtobufCMessage *req) {
    memset(key, 0, sizeof *key);
    idem_actor_key(actor, key->actor_buf, sizeof key->actor_buf);
    key->actor_key = key->actor_buf;
    key->method = method != NULL ? method : "";
    key->request_id = request_id != NULL ? request_id : "";
    if (key->request_id[0] == '\0') return 0;
    if (strlen(key->request_id) > IDEM_MAX_REQUEST_ID) return OM_E_INVALID_ARGUMENT;
    if (req == NULL) return OM_E_INTERNAL;

    idem_hasher h = {.base = {.append = idem_hash_append}, .md = EVP_MD_CTX_new()};
    if (h.md == NULL) return OM_E_NOMEM;
    unsigned len = 0;
    int rc = OM_E_INTERNAL;
    if (EVP_DigestInit_ex(h.md, EVP_sha256(), NULL) == 1) {
        protobuf_c_message_pack_to_buffer(req, &h.base);
        if (!h.failed && EVP_DigestFinal_ex(h.md, key->hash, &len) == 1 && len == 32) rc = 0;
    }
    EVP_MD_CTX_free(h.md);
    return rc;
}

static void idem_params(pg_params *p, const idem_key *key) {
    pg_p_str(p, key->actor_key != NULL ? key->actor_key : key->actor_buf);
    pg_p_str(p, key->method);
    pg_p_str(p, key->request_id);
}

static bool idem_active(const idem_key *key) {
    return key != NULL && key->request_id != NULL && key->request_id[0] != '\0';
}

/* Tests only (issue 14): with ORGMESH_TEST_FAULT_REQUEST_ID=<prefix> set at
 * start, every mutation whose request_id begins with <prefix> fails in
 * idem_store, after its reply was written, i.e. after all of the
 * transaction's writes and just before COMMIT: the latest a mutation can
 * fail. The transaction rolls back and the call answers INTERNAL, so a test
 * can check that nothing of it stays anywhere. Unset (production), the cost
 * is one pthread_once and one NULL test per mutation. */
static const char *fault_prefix;
static size_t fault_len;
static pthread_once_t fault_once = PTHREAD_ONCE_INIT;

static void fault_init(void) {
    const char *v = getenv("ORGMESH_TEST_FAULT_REQUEST_ID");
    if (v != NULL && v[0] != '\0') {
        fault_prefix = v;
        fault_len = strlen(v);
        log_warn("ORGMESH_TEST_FAULT_REQUEST_ID is set: mutations with request ids starting with \"%s\""
                 " will fail (tests only)", v);
    }
}

static bool fault_due(const idem_key *key) {
    pthread_once(&fault_once, fault_init);
    return fault_prefix != NULL && strncmp(key->request_id, fault_prefix, fault_len) == 0;
}

int idem_check(pg_conn *tx, const idem_key *key, const ProtobufCMessageDescriptor *desc,
               ProtobufCAllocator *alloc, ProtobufCMessage **resp) {
    if (resp != NULL) *resp = NULL;
    if (!idem_active(key)) return 0;
    if (!pg_in_tx(tx)) {
        /* The claim must commit or roll back with the change it guards. */
        log_error("idem_check outside a transaction (%s)", key->method);
        return OM_E_INTERNAL;
    }
    pg_params p = {0};
    idem_params(&p, key);
    pg_p_bytes(&p, key->hash, sizeof key->hash);
    /* Claim the id. A concurrent first use blocks on our uncommitted row and
     * then finds it (ON CONFLICT waits for us); an entry older than 24 h no
     * longer counts and is taken over. */
    pg_res *r = NULL;
    int rc = pg_exec(tx,
                     "INSERT INTO idempotency AS i (actor, method, request_id, request_hash)"
                     " VALUES ($1, $2, $3, $4)"
                     " ON CONFLICT (actor, method, request_id) DO UPDATE"
                     " SET request_hash = EXCLUDED.request_hash, response = NULL, created_at = now()"
                     " WHERE i.created_at < now() - interval '24 hours'"
                     " RETURNING 1",
                     &p, &r);
    if (rc != 0) return rc;
    int claimed = pg_nrows(r);
    pg_free(r);
    if (claimed == 1) return 0;

    pg_params q = {0};
    idem_params(&q, key);
    rc = pg_exec(tx,
                 "SELECT request_hash, response FROM idempotency"
                 " WHERE actor = $1 AND method = $2 AND request_id = $3 FOR UPDATE",
                 &q, &r);
    if (rc != 0) return rc;
    if (pg_nrows(r) == 0) {
        /* Purged between the two statements: start the transaction over. */
        pg_free(r);
        pg_mark_retry(tx);
        return OM_E_CONCURRENT_MODIFICATION;
    }
    size_t hlen = 0, rlen = 0;
    const uint8_t *hash = pg_bytes(r, 0, 0, &hlen);
    if (hash == NULL || hlen != sizeof key->hash || memcmp(hash, key->hash, hlen) != 0) {
        pg_free(r);
        return OM_E_REQUEST_ID_REUSED; /* SPEC 8: same id, different request */
    }
    if (pg_isnull(r, 0, 1)) {
        /* Committed without a reply (the handler never stored one): nothing
         * to return, so act now; we hold the row, idem_store fills it. */
        pg_free(r);
        return 0;
    }
    const uint8_t *data = pg_bytes(r, 0, 1, &rlen);
    if (resp != NULL && desc != NULL) {
        *resp = protobuf_c_message_unpack(desc, alloc, rlen, data != NULL ? data : (const uint8_t *)"");
        if (*resp == NULL) {
            log_error("stored reply for %s request %s does not unpack as %s", key->method,
                      key->request_id, desc->name);
            pg_free(r);
            return OM_E_INTERNAL;
        }
    }
    pg_free(r);
    return 1;
}

int idem_store(pg_conn *tx, const idem_key *key, const ProtobufCMessage *resp) {
    if (!idem_active(key)) return 0;
    if (resp == NULL) return OM_E_INTERNAL;
    size_t n = protobuf_c_message_get_packed_size(resp);
    uint8_t *buf = malloc(n + 1);
    if (buf == NULL) return OM_E_NOMEM;
    protobuf_c_message_pack(resp, buf);
    pg_params p = {0};
    idem_params(&p, key);
    pg_p_bytes(&p, buf, n);
    pg_res *r = NULL;
    int rc = pg_exec(tx,
                     "UPDATE idempotency SET response = $4"
                     " WHERE actor = $1 AND method = $2 AND request_id = $3",
                     &p, &r);
    if (rc == 0 && pg_affected(r) == 0) {
        /* idem_check was skipped: insert; a concurrent twin makes us retry. */
        pg_params q = {0};
        idem_params(&q, key);
        pg_p_bytes(&q, key->hash, sizeof key->hash);
        pg_p_bytes(&q, buf, n);
        rc = pg_exec(tx,
                     "INSERT INTO idempotency (actor, method, request_id, request_hash, response)"
                     " VALUES ($1, $2, $3, $4, $5)",
                     &q, NULL);
        if (rc != 0 && strcmp(pg_sqlstate(tx), "23505") == 0) {
            pg_mark_retry(tx);
            rc = OM_E_CONCURRENT_MODIFICATION;
        }
    }
    pg_free(r);
    free(buf);
    if (rc == 0 && fault_due(key)) {
        log_warn("idem: injected fault for request_id %s (ORGMESH_TEST_FAULT_REQUEST_ID)", key->request_id);
        return OM_E_INTERNAL;
    }
    return rc;
}

int idem_run(pg_conn *tx, const idem_key *key, ProtobufCMessage *resp, ProtobufCAllocator *alloc,
             int (*apply)(pg_conn *tx, void *arg), void *arg, bool *replayed) {
    ProtobufCMessage *stored = NULL;
    if (replayed) *replayed = false;
    int rc = idem_check(tx, key, resp->descriptor, alloc, &stored);
    if (rc == 1) { /* SPEC 8: a repeat gets the first reply */
        memcpy(resp, stored, resp->descriptor->sizeof_message);
        if (replayed) *replayed = true;
        return 0;
    }
    if (rc != 0) return rc;
    if ((rc = apply(tx, arg)) != 0) return rc;
    return idem_store(tx, key, resp);
}

int idem_purge(pg_conn *c, int limit) {
    pg_params p = {0};
    pg_p_i64(&p, limit > 0 ? limit : 1000);
    pg_res *r = NULL;
    int rc = pg_exec(c,
                     "DELETE FROM idempotency WHERE ctid IN (SELECT ctid FROM idempotency"
                     " WHERE created_at < now() - interval '24 hours' LIMIT $1)",
                     &p, &r);
    if (rc != 0) return rc;
    int n = (int)pg_affected(r);
    pg_free(r);
    return n;
}
