/* auth.c — JWT verification and minting (auth.h, SPEC 8 "Identity").
 *
 * Compact JWS only: ES256 (keys chosen by `kid`, several at once so keys can
 * rotate) and HS256 for local development. Keys are parsed once in auth_new;
 * after that a context is read-only on the verify path, so any number of
 * threads may verify at once without locks. */
#include "auth.h"

#include <ctype.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <jansson.h>
#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>

#include "log.h"
#include "om_err.h"

#define AUTH_KID_MAX 64
#define AUTH_SERVICE_MAX 31
#define AUTH_DEFAULT_LEEWAY 30
/* Service tokens live an hour and are re-minted when less than 5 min is
 * left, so a token handed to a peer never expires in flight. */
#define AUTH_SERVICE_TTL 3600
#define AUTH_SERVICE_RENEW 300
/* A PEM key file is a few hundred bytes; refuse to slurp anything huge. */
#define AUTH_PEM_MAX (64 * 1024)
#define ES256_SIG_LEN 64
#define HS256_SIG_LEN 32
#define AUTH_MAX_TIME 253402300799LL /* 9999-12-31T23:59:59Z */

typedef enum { AUTH_HS256 = 1, AUTH_ES256 } auth_alg;

typedef struct auth_key {
    char kid[AUTH_KID_MAX + 1];
    auth_alg alg;
    unsigned char *secret; /* HS256 */
    size_t secret_len;
    EVP_PKEY *pkey; /* ES256: public, or private (which can verify too) */
    /* SPEC 8: the identities this key may sign for */
    bool bound;     /* named in key_subjects */
    bool users;     /* user tokens (an issuer key) */
    char *services; /* ",assets,notifier," (NULL: none) */
} auth_key;

struct auth_ctx {
    char *issuer;
    char *audience;
    int64_t leeway;
    auth_key *keys;
    size_t n_keys;
    auth_key signer;
    bool can_sign;
    EVP_MD *sha256; /* fetched once: implicit fetches cost a lock per call */
    int64_t (*now)(void);
    uint64_t id; /* tells contexts apart in the per-thread token copies */

    /* The shared service token; only auth_service_token touches it. */
    pthread_mutex_t svc_mu;
    char *svc_token;
    char svc_name[AUTH_SERVICE_MAX + 1];
    int64_t svc_exp;
};

static atomic_uint_fast64_t auth_next_id = 1;

static int64_t auth_time(void) { return (int64_t)time(NULL); }

static const char *alg_name(auth_alg alg) { return alg == AUTH_ES256 ? "ES256" : "HS256"; }

/* ---- base64url (RFC 7515 §2: no padding) ---------------------------------- */

static const char b64url_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static size_t b64url_encoded_len(size_t n) { return n / 3 * 4 + (n % 3 ? n % 3 + 1 : 0); }

/* Writes b64url_encoded_len(n) characters and a NUL. */
static size_t b64url_encode(const unsigned char *in, size_t n, char *out) {
    size_t o = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = b64url_alphabet[v >> 18 & 63];
        out[o++] = b64url_alphabet[v >> 12 & 63];
        out[o++] = b64url_alphabet[v >> 6 & 63];
        out[o++] = b64url_alphabet[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = b64url_alphabet[v >> 18 & 63];
        out[o++] = b64url_alphabet[v >> 12 & 63];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = b64url_alphabet[v >> 18 & 63];
        out[o++] = b64url_alphabet[v >> 12 & 63];
        out[o++] = b64url_alphabet[v >> 6 & 63];
    }
    out[o] = '\0';
    return o;
}

static int b64url_value(unsigned char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '-') return 62;
    if (c == '_') return 63;
    return -1;
}

/* Strict decoding: only the URL-safe alphabet, no padding, no whitespace, and
 * the unused low bits of the last character must be zero, so that each byte
 * string has exactly one accepted encoding. `out` holds at least n*3/4 bytes.
 * Returns the decoded length or -1. */
static long b64url_decode(const char *in, size_t n, unsigned char *out) {
    if (n % 4 == 1) return -1;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = b64url_value((unsigned char)in[i]);
        if (v < 0) return -1;
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    if (acc != 0) return -1; /* leftover bits must be zero */
    return (long)o;
}

/* ---- names ---------------------------------------------------------------- */

static bool kid_valid(const char *s, size_t n) {
    if (n == 0 || n > AUTH_KID_MAX) return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!isalnum(c) && c != '.' && c != '_' && c != '-') return false;
    }
    return true;
}

static bool service_name_valid(const char *s, size_t n) {
    if (n == 0 || n > AUTH_SERVICE_MAX) return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) return false;
    }
    return true;
}

/* ---- keys ----------------------------------------------------------------- */

static void key_clear(auth_key *k) {
    if (k->secret) OPENSSL_clear_free(k->secret, k->secret_len);
    EVP_PKEY_free(k->pkey);
    free(k->services);
    memset(k, 0, sizeof *k);
}

/* Never ask for a pass phrase on a terminal: encrypted keys are refused. */
static int pem_no_password(char *buf, int size, int rwflag, void *u) {
    (void)buf, (void)size, (void)rwflag, (void)u;
    return -1;
}

static void log_ossl_error(const char *what, const char *kid) {
    char buf[256] = "";
    unsigned long e = ERR_get_error();
    if (e) ERR_error_string_n(e, buf, sizeof buf);
    ERR_clear_error();
    log_error("auth: key \"%s\": %s%s%s", kid, what, buf[0] ? ": " : "", buf);
}

static int load_es256(auth_key *k, const char *path, bool need_private) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        log_error("auth: key \"%s\": cannot open %s", k->kid, path);
        return OM_E_INVALID_ARGUMENT;
    }
    char *pem = malloc(AUTH_PEM_MAX);
    if (pem == NULL) {
        fclose(f);
        return OM_E_NOMEM;
    }
    size_t n = fread(pem, 1, AUTH_PEM_MAX, f);
    fclose(f);
    if (n == 0 || n == AUTH_PEM_MAX) {
        free(pem);
        log_error("auth: key \"%s\": %s is empty or too large", k->kid, path);
        return OM_E_INVALID_ARGUMENT;
    }
    /* A verification key may be given as a public or a private PEM; a
     * signing key must be private. */
    EVP_PKEY *pkey = NULL;
    if (!need_private) {
        BIO *bio = BIO_new_mem_buf(pem, (int)n);
        if (bio) pkey = PEM_read_bio_PUBKEY(bio, NULL, pem_no_password, NULL);
        BIO_free(bio);
    }
    if (pkey == NULL) {
        BIO *bio = BIO_new_mem_buf(pem, (int)n);
        if (bio) pkey = PEM_read_bio_PrivateKey(bio, NULL, pem_no_password, NULL);
        BIO_free(bio);
    }
    OPENSSL_cleanse(pem, n);
    free(pem);
    if (pkey == NULL) {
        log_ossl_error(need_private ? "no PEM private key in the file" : "no PEM key in the file",
                       k->kid);
        return OM_E_INVALID_ARGUMENT;
    }
    ERR_clear_error(); /* the failed PUBKEY attempt left an entry */
    char group[64] = "";
    if (!EVP_PKEY_is_a(pkey, "EC") || !EVP_PKEY_get_group_name(pkey, group, sizeof group, NULL) ||
        (strcmp(group, "prime256v1") != 0 && strcmp(group, "P-256") != 0)) {
        EVP_PKEY_free(pkey);
        ERR_clear_error();
        log_error("auth: key \"%s\": ES256 needs an EC P-256 key (%s)", k->kid, path);
        return OM_E_INVALID_ARGUMENT;
    }
    k->pkey = pkey;
    return 0;
}

/* Parse one "kid:alg:material" entry (already trimmed). The material is
 * everything after the second ':' so that secrets may contain ':'. */
static int parse_key(const char *spec, size_t n, bool need_private, auth_key *k) {
    memset(k, 0, sizeof *k);
    const char *c1 = memchr(spec, ':', n);
    const char *c2 = c1 ? memchr(c1 + 1, ':', (size_t)(spec + n - c1 - 1)) : NULL;
    if (c2 == NULL) {
        log_error("auth: key entry %zu bytes long is not \"kid:alg:material\"", n);
        return OM_E_INVALID_ARGUMENT;
    }
    size_t kid_len = (size_t)(c1 - spec), alg_len = (size_t)(c2 - c1 - 1);
    const char *mat = c2 + 1;
    size_t mat_len = (size_t)(spec + n - mat);
    if (!kid_valid(spec, kid_len)) {
        log_error("auth: key id \"%.*s\" must be 1-64 of [A-Za-z0-9._-]",
                  (int)(kid_len > AUTH_KID_MAX ? AUTH_KID_MAX : kid_len), spec);
        return OM_E_INVALID_ARGUMENT;
    }
    memcpy(k->kid, spec, kid_len);
    k->kid[kid_len] = '\0';
    if (mat_len == 0) {
        log_error("auth: key \"%s\": empty key material", k->kid);
        return OM_E_INVALID_ARGUMENT;
    }
    if (alg_len == 5 && memcmp(c1 + 1, "HS256", 5) == 0) {
        k->alg = AUTH_HS256;
        k->secret = OPENSSL_malloc(mat_len);
        if (k->secret == NULL) return OM_E_NOMEM;
        memcpy(k->secret, mat, mat_len);
        k->secret_len = mat_len;
        return 0;
    }
    if (alg_len == 5 && memcmp(c1 + 1, "ES256", 5) == 0) {
        k->alg = AUTH_ES256;
        char *path = strndup(mat, mat_len);
        if (path == NULL) return OM_E_NOMEM;
        int rc = load_es256(k, path, need_private);
        free(path);
        return rc;
    }
    log_error("auth: key \"%s\": algorithm \"%.*s\" is not supported (HS256 or ES256)", k->kid,
              (int)(alg_len > 16 ? 16 : alg_len), c1 + 1);
    return OM_E_INVALID_ARGUMENT;
}

static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

/* Split "a;b;c" into trimmed, non-empty entries; calls fn for each. */
typedef int (*entry_fn)(const char *s, size_t n, void *arg);
static int for_each_entry(const char *list, entry_fn fn, void *arg) {
    const char *p = list;
    while (p && *p) {
        const char *end = strchr(p, ';');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        const char *s = p;
        while (n && is_space(*s)) s++, n--;
        while (n && is_space(s[n - 1])) n--;
        if (n) {
            int rc = fn(s, n, arg);
            if (rc) return rc;
        }
        p = end ? end + 1 : NULL;
    }
    return 0;
}

static int count_entry(const char *s, size_t n, void *arg) {
    (void)s, (void)n;
    (*(size_t *)arg)++;
    return 0;
}

static int add_entry(const char *s, size_t n, void *arg) {
    auth_ctx *a = arg;
    auth_key *k = &a->keys[a->n_keys];
    int rc = parse_key(s, n, false, k);
    if (rc) {
        key_clear(k);
        return rc;
    }
    for (size_t i = 0; i < a->n_keys; i++) {
        if (strcmp(a->keys[i].kid, k->kid) == 0) {
            log_error("auth: key id \"%s\" appears twice", k->kid);
            key_clear(k);
            return OM_E_INVALID_ARGUMENT;
        }
    }
    a->n_keys++;
    return 0;
}

static int set_signer(const char *s, size_t n, void *arg) {
    auth_ctx *a = arg;
    if (a->can_sign) {
        log_error("auth: the signing key must be a single \"kid:alg:material\"");
        return OM_E_INVALID_ARGUMENT;
    }
    int rc = parse_key(s, n, true, &a->signer);
    if (rc) {
        key_clear(&a->signer);
        return rc;
    }
    a->can_sign = true;
    return 0;
}

static auth_key *find_key_mut(auth_ctx *a, const char *kid, size_t n) {
    for (size_t i = 0; i < a->n_keys; i++)
        if (strlen(a->keys[i].kid) == n && memcmp(a->keys[i].kid, kid, n) == 0) return &a->keys[i];
    return NULL;
}

/* One "kid=subject[,subject...]" entry of key_subjects (SPEC 8: each key is
 * bound to the identities it may sign for). */
static int bind_entry(const char *s, size_t n, void *arg) {
    auth_ctx *a = arg;
    const char *eq = memchr(s, '=', n);
    if (eq == NULL) {
        log_error("auth: key binding \"%.*s\" is not \"kid=subject[,subject...]\"", (int)(n > 80 ? 80 : n), s);
        return OM_E_INVALID_ARGUMENT;
    }
    size_t kid_len = (size_t)(eq - s);
    while (kid_len && is_space(s[kid_len - 1])) kid_len--;
    auth_key *k = find_key_mut(a, s, kid_len);
    if (k == NULL) {
        /* a binding left over from a key already removed (rotation) is harmless */
        log_warn("auth: key binding for \"%.*s\", which is not among the verification keys: ignored",
                 (int)(kid_len > AUTH_KID_MAX ? AUTH_KID_MAX : kid_len), s);
        return 0;
    }
    if (k->bound) {
        log_error("auth: key \"%s\" is bound twice", k->kid);
        return OM_E_INVALID_ARGUMENT;
    }
    k->bound = true;
    const char *p = eq + 1, *end = s + n;
    size_t plen = sizeof AUTH_SERVICE_PREFIX - 1;
    while (p <= end) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *q = comma ? comma : end;
        const char *b = p;
        size_t len = (size_t)(q - p);
        while (len && is_space(*b)) b++, len--;
        while (len && is_space(b[len - 1])) len--;
        if (len == 5 && memcmp(b, "users", 5) == 0) {
            k->users = true;
        } else if (len > plen && memcmp(b, AUTH_SERVICE_PREFIX, plen) == 0 &&
                   service_name_valid(b + plen, len - plen)) {
            size_t old = k->services ? strlen(k->services) : 1;
            char *grown = realloc(k->services, old + (len - plen) + 2);
            if (grown == NULL) return OM_E_NOMEM;
            if (k->services == NULL) grown[0] = ',';
            memcpy(grown + old, b + plen, len - plen);
            grown[old + len - plen] = ',';
            grown[old + len - plen + 1] = '\0';
            k->services = grown;
        } else {
            log_error("auth: key \"%s\": subject \"%.*s\" is neither `users` nor `service:<name>`", k->kid,
                      (int)(len > 40 ? 40 : len), b);
            return OM_E_INVALID_ARGUMENT;
        }
        if (comma == NULL) break;
        p = comma + 1;
    }
    return 0;
}

/* SPEC 8: a service's key signs only that service's identity; user tokens
 * come only from the issuer's keys. */
static bool key_signs_for(const auth_key *k, const om_actor *actor) {
    if (actor->service[0] == '\0') return k->users;
    if (k->services == NULL) return false;
    char want[AUTH_SERVICE_MAX + 3];
    snprintf(want, sizeof want, ",%s,", actor->service);
    return strstr(k->services, want) != NULL;
}

bool auth_uses_hs256(const auth_ctx *a) {
    if (a == NULL) return false;
    if (a->can_sign && a->signer.alg == AUTH_HS256) return true;
    for (size_t i = 0; i < a->n_keys; i++)
        if (a->keys[i].alg == AUTH_HS256) return true;
    return false;
}

size_t auth_unbound_keys(const auth_ctx *a) {
    size_t n = 0;
    for (size_t i = 0; a && i < a->n_keys; i++) {
        if (a->keys[i].users || a->keys[i].services) continue;
        log_warn("auth: key \"%s\" is bound to no identity (ORGMESH_JWT_KEY_SUBJECTS): every token it signs is "
                 "refused",
                 a->keys[i].kid);
        n++;
    }
    return n;
}

int auth_new(auth_ctx **out, const auth_config *cfg) {
    if (out == NULL) return OM_E_INVALID_ARGUMENT;
    *out = NULL;
    if (cfg == NULL || cfg->issuer == NULL || cfg->issuer[0] == '\0' || cfg->audience == NULL ||
        cfg->audience[0] == '\0') {
        log_error("auth: an issuer and an audience are required");
        return OM_E_INVALID_ARGUMENT;
    }
    if (cfg->leeway_s < 0) {
        log_error("auth: leeway must not be negative");
        return OM_E_INVALID_ARGUMENT;
    }
    auth_ctx *a = calloc(1, sizeof *a);
    if (a == NULL) return OM_E_NOMEM;
    if (pthread_mutex_init(&a->svc_mu, NULL) != 0) {
        free(a);
        return OM_E_NOMEM;
    }
    a->now = auth_time;
    a->id = atomic_fetch_add(&auth_next_id, 1);
    a->leeway = cfg->leeway_s ? cfg->leeway_s : AUTH_DEFAULT_LEEWAY;
    int rc = OM_E_NOMEM;
    a->issuer = strdup(cfg->issuer);
    a->audience = strdup(cfg->audience);
    a->sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    if (a->issuer == NULL || a->audience == NULL || a->sha256 == NULL) goto fail;

    size_t n = 0;
    for_each_entry(cfg->keys, count_entry, &n);
    if (n) {
        a->keys = calloc(n, sizeof *a->keys);
        if (a->keys == NULL) goto fail;
        if ((rc = for_each_entry(cfg->keys, add_entry, a)) != 0) goto fail;
    }
    if ((rc = for_each_entry(cfg->key_subjects, bind_entry, a)) != 0) goto fail;
    if ((rc = for_each_entry(cfg->signing_key, set_signer, a)) != 0) goto fail;
    *out = a;
    return 0;
fail:
    auth_free(a);
    return rc;
}

void auth_free(auth_ctx *a) {
    if (a == NULL) return;
    for (size_t i = 0; i < a->n_keys; i++) key_clear(&a->keys[i]);
    free(a->keys);
    key_clear(&a->signer);
    EVP_MD_free(a->sha256);
    free(a->issuer);
    free(a->audience);
    free(a->svc_token);
    pthread_mutex_destroy(&a->svc_mu);
    free(a);
}

void auth_set_clock(auth_ctx *a, int64_t (*now)(void)) {
    if (a) a->now = now ? now : auth_time;
}

/* ---- signatures ----------------------------------------------------------- */

static bool hs256(const auth_ctx *a, const auth_key *k, const char *msg, size_t n,
                  unsigned char mac[HS256_SIG_LEN]) {
    unsigned int len = 0;
    return HMAC(a->sha256, k->secret, (int)k->secret_len, (const unsigned char *)msg, n, mac,
                &len) != NULL &&
           len == HS256_SIG_LEN;
}

/* JWS carries ECDSA signatures as raw r||s (RFC 7518 §3.4); OpenSSL wants
 * DER, so the two halves are re-encoded before verifying. */
static bool es256_verify(const auth_ctx *a, const auth_key *k, const char *msg, size_t n,
                         const unsigned char sig[ES256_SIG_LEN]) {
    bool ok = false;
    unsigned char *der = NULL;
    EVP_MD_CTX *md = NULL;
    ECDSA_SIG *es = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(sig, 32, NULL), *s = BN_bin2bn(sig + 32, 32, NULL);
    if (es == NULL || r == NULL || s == NULL || !ECDSA_SIG_set0(es, r, s)) {
        BN_free(r);
        BN_free(s);
        goto out;
    }
    int der_len = i2d_ECDSA_SIG(es, &der);
    if (der_len <= 0) goto out;
    md = EVP_MD_CTX_new();
    ok = md != NULL && EVP_DigestVerifyInit(md, NULL, a->sha256, NULL, k->pkey) == 1 &&
         EVP_DigestVerify(md, der, (size_t)der_len, (const unsigned char *)msg, n) == 1;
out:
    EVP_MD_CTX_free(md);
    OPENSSL_free(der);
    ECDSA_SIG_free(es);
    ERR_clear_error(); /* a bad signature leaves errors in this thread's queue */
    return ok;
}

static int es256_sign(const auth_ctx *a, const auth_key *k, const char *msg, size_t n,
                      unsigned char sig[ES256_SIG_LEN]) {
    int rc = OM_E_INTERNAL;
    unsigned char der[80]; /* a P-256 DER signature is at most 72 bytes */
    size_t der_len = sizeof der;
    ECDSA_SIG *es = NULL;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (md == NULL) return OM_E_NOMEM;
    if (EVP_DigestSignInit(md, NULL, a->sha256, NULL, k->pkey) != 1 ||
        EVP_DigestSign(md, der, &der_len, (const unsigned char *)msg, n) != 1)
        goto out;
    const unsigned char *p = der;
    es = d2i_ECDSA_SIG(NULL, &p, (long)der_len);
    if (es == NULL) goto out;
    const BIGNUM *r, *s;
    ECDSA_SIG_get0(es, &r, &s);
    if (BN_bn2binpad(r, sig, 32) != 32 || BN_bn2binpad(s, sig + 32, 32) != 32) goto out;
    rc = 0;
out:
    if (rc) log_ossl_error("signing failed", k->kid);
    ECDSA_SIG_free(es);
    EVP_MD_CTX_free(md);
    return rc;
}

/* ---- verify --------------------------------------------------------------- */

static const auth_key *find_key(const auth_ctx *a, const char *kid) {
    for (size_t i = 0; i < a->n_keys; i++)
        if (strcmp(a->keys[i].kid, kid) == 0) return &a->keys[i];
    return NULL;
}

/* Why a token was refused goes to the debug log (never the token: it is a
 * credential); the caller only learns UNAUTHENTICATED. */
static int refuse(const char *why) {
    log_debug("auth: token refused: %s", why);
    return OM_E_UNAUTHENTICATED;
}

/* An optional NumericDate claim: 1 absent, 0 read, -1 malformed. Only
 * integers from 0 to the year 9999: every issuer we accept writes integer
 * seconds, and the bound keeps `exp + leeway` far from overflow. */
static int claim_time(const json_t *claims, const char *name, int64_t *out) {
    const json_t *v = json_object_get(claims, name);
    if (v == NULL) return 1;
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > AUTH_MAX_TIME)
        return -1;
    *out = (int64_t)json_integer_value(v);
    return 0;
}

static bool audience_matches(const json_t *aud, const char *want) {
    if (json_is_string(aud)) return strcmp(json_string_value(aud), want) == 0;
    if (!json_is_array(aud) || json_array_size(aud) == 0) return false;
    bool found = false;
    size_t i;
    const json_t *v;
    json_array_foreach(aud, i, v) {
        if (!json_is_string(v)) return false; /* malformed, whatever else it holds */
        if (strcmp(json_string_value(v), want) == 0) found = true;
    }
    return found;
}

/* `sub` is a user id (decimal uint64, non-zero, no sign or leading zero) or
 * "service:<name>". */
static bool parse_sub(const char *sub, om_actor *actor) {
    size_t plen = sizeof AUTH_SERVICE_PREFIX - 1;
    if (strncmp(sub, AUTH_SERVICE_PREFIX, plen) == 0) {
        const char *name = sub + plen;
        size_t n = strlen(name);
        if (!service_name_valid(name, n)) return false;
        memcpy(actor->service, name, n + 1);
        actor->user_id = 0;
        return true;
    }
    if (sub[0] < '1' || sub[0] > '9') return false;
    uint64_t v = 0;
    for (const char *p = sub; *p; p++) {
        if (*p < '0' || *p > '9') return false;
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10) return false;
        v = v * 10 + d;
    }
    actor->user_id = v;
    actor->service[0] = '\0';
    return true;
}

static int check_header(const auth_ctx *a, const unsigned char *hdr, size_t n,
                        const auth_key **key) {
    json_error_t err;
    json_t *h = json_loadb((const char *)hdr, n, JSON_REJECT_DUPLICATES, &err);
    if (h == NULL || !json_is_object(h)) {
        json_decref(h);
        return refuse("header is not a JSON object");
    }
    int rc = OM_E_UNAUTHENTICATED;
    const json_t *alg = json_object_get(h, "alg"), *kid = json_object_get(h, "kid"),
                 *typ = json_object_get(h, "typ");
    if (!json_is_string(alg)) {
        rc = refuse("no alg");
    } else if (strcasecmp(json_string_value(alg), "none") == 0) {
        rc = refuse("alg none");
    } else if (typ && (!json_is_string(typ) || strcasecmp(json_string_value(typ), "JWT") != 0)) {
        rc = refuse("typ is not JWT");
    } else if (json_object_get(h, "crit")) {
        rc = refuse("crit header (no extension is understood)");
    } else if (!json_is_string(kid)) {
        rc = refuse("no kid");
    } else if ((*key = find_key(a, json_string_value(kid))) == NULL) {
        log_debug("auth: token refused: unknown kid \"%.64s\"", json_string_value(kid));
    } else if (strcmp(json_string_value(alg), alg_name((*key)->alg)) != 0) {
        /* No algorithm confusion: the key decides the algorithm, not the
         * token (an HS256 token "signed" with an ES256 public key fails). */
        log_debug("auth: token refused: alg \"%.16s\" but key \"%s\" is %s", json_string_value(alg),
                  (*key)->kid, alg_name((*key)->alg));
    } else {
        rc = 0;
    }
    json_decref(h);
    return rc;
}

static int check_claims(const auth_ctx *a, const json_t *c, om_actor *actor) {
    if (!json_is_object(c)) return refuse("payload is not a JSON object");
    const json_t *iss = json_object_get(c, "iss"), *aud = json_object_get(c, "aud"),
                 *sub = json_object_get(c, "sub");
    if (!json_is_string(iss) || strcmp(json_string_value(iss), a->issuer) != 0)
        return refuse("wrong or missing iss");
    if (aud == NULL || !audience_matches(aud, a->audience)) return refuse("wrong or missing aud");
    if (!json_is_string(sub)) return refuse("missing sub");
    if (!parse_sub(json_string_value(sub), actor))
        return refuse("sub is neither a user id nor service:<name>");

    int64_t now = a->now(), exp = 0, iat = 0, nbf = 0, mfa_at = 0;
    if (claim_time(c, "exp", &exp) != 0) return refuse("missing or malformed exp");
    if (claim_time(c, "iat", &iat) != 0) return refuse("missing or malformed iat");
    int has_nbf = claim_time(c, "nbf", &nbf), has_mfa = claim_time(c, "mfa_at", &mfa_at);
    if (has_nbf < 0) return refuse("malformed nbf");
    if (has_mfa < 0) return refuse("malformed mfa_at");
    /* The leeway absorbs clock skew between the issuer and us (SPEC 8). */
    if (now >= exp + a->leeway) {
        log_debug("auth: token refused: expired %lld s ago", (long long)(now - exp));
        return OM_E_TOKEN_EXPIRED;
    }
    if (iat > now + a->leeway) return refuse("iat in the future");
    if (exp < iat) return refuse("exp before iat");
    if (has_nbf == 0 && nbf > now + a->leeway) return refuse("not valid yet (nbf)");
    if (has_mfa == 0 && mfa_at > now + a->leeway) return refuse("mfa_at in the future");
    actor->iat = iat;
    actor->exp = exp;
    actor->mfa_at = has_mfa == 0 ? mfa_at : 0;
    /* API-01: the caller's language for error messages; a malformed one is
     * ignored, not refused (it only chooses words) */
    const json_t *loc = json_object_get(c, "locale");
    actor->locale[0] = '\0';
    if (json_is_string(loc)) {
        const char *v = json_string_value(loc);
        size_t n = strlen(v);
        bool ok = n > 0 && n < sizeof actor->locale;
        for (size_t i = 0; ok && i < n; i++)
            ok = isalnum((unsigned char)v[i]) || v[i] == '-' || v[i] == '_';
        if (ok) memcpy(actor->locale, v, n + 1);
    }
    return 0;
}

int auth_verify_claims(const auth_ctx *a, const char *token, size_t len, om_actor *actor,
                       char **claims_json) {
    if (a == NULL || actor == NULL) return OM_E_INVALID_ARGUMENT;
    if (claims_json) *claims_json = NULL;
    memset(actor, 0, sizeof *actor);
    if (token == NULL || len == 0) return refuse("no token");
    if (len > AUTH_MAX_TOKEN_LEN) return refuse("token longer than 8 KiB");

    const char *d1 = memchr(token, '.', len);
    const char *d2 = d1 ? memchr(d1 + 1, '.', (size_t)(token + len - d1 - 1)) : NULL;
    if (d2 == NULL || memchr(d2 + 1, '.', (size_t)(token + len - d2 - 1)) != NULL)
        return refuse("not three dot-separated parts");
    size_t hlen = (size_t)(d1 - token), plen = (size_t)(d2 - d1 - 1);
    size_t slen = (size_t)(token + len - d2 - 1);
    if (hlen == 0 || plen == 0) return refuse("empty header or payload");
    if (slen == 0) return refuse("unsigned token");
    if (slen > b64url_encoded_len(ES256_SIG_LEN)) return refuse("signature too long");

    /* Both decoded parts together are at most 3/4 of the token. */
    unsigned char buf[AUTH_MAX_TOKEN_LEN];
    unsigned char sig[ES256_SIG_LEN + 3];
    long hdec = b64url_decode(token, hlen, buf);
    long pdec = hdec < 0 ? -1 : b64url_decode(d1 + 1, plen, buf + hdec);
    long sdec = pdec < 0 ? -1 : b64url_decode(d2 + 1, slen, sig);
    if (hdec < 0 || pdec < 0 || sdec < 0) return refuse("bad base64url");

    const auth_key *key = NULL;
    int rc = check_header(a, buf, (size_t)hdec, &key);
    if (rc) return rc;

    /* The signature covers the first two parts exactly as sent. */
    size_t signed_len = (size_t)(d2 - token);
    if (key->alg == AUTH_HS256) {
        unsigned char mac[HS256_SIG_LEN];
        if (sdec != HS256_SIG_LEN) return refuse("HS256 signature of the wrong length");
        if (!hs256(a, key, token, signed_len, mac)) return refuse("HMAC failed");
        if (CRYPTO_memcmp(mac, sig, HS256_SIG_LEN) != 0) return refuse("bad HS256 signature");
    } else {
        if (sdec != ES256_SIG_LEN) return refuse("ES256 signature is not 64 bytes (r||s)");
        if (!es256_verify(a, key, token, signed_len, sig)) return refuse("bad ES256 signature");
    }

    json_error_t err;
    json_t *claims =
        json_loadb((const char *)buf + hdec, (size_t)pdec, JSON_REJECT_DUPLICATES, &err);
    if (claims == NULL) return refuse("payload is not JSON");
    rc = check_claims(a, claims, actor);
    if (rc == 0 && !key_signs_for(key, actor)) {
        /* SPEC 8: one leaked service key must not impersonate anyone else */
        log_debug("auth: token refused: key \"%s\" may not sign for %s%s", key->kid,
                  actor->service[0] ? AUTH_SERVICE_PREFIX : "a user", actor->service);
        rc = OM_E_KEY_NOT_BOUND_TO_SUBJECT;
    }
    if (rc == 0 && claims_json) {
        *claims_json = json_dumps(claims, JSON_COMPACT);
        if (*claims_json == NULL) rc = OM_E_NOMEM;
    }
    json_decref(claims);
    if (rc) memset(actor, 0, sizeof *actor);
    return rc;
}

int auth_verify(const auth_ctx *a, const char *token, size_t len, om_actor *actor) {
    return auth_verify_claims(a, token, len, actor, NULL);
}

/* ---- mint ----------------------------------------------------------------- */

/* base64url(JSON of obj) appended at out[*o]. */
static int put_b64_json(json_t *obj, char *out, size_t cap, size_t *o) {
    char *js = json_dumps(obj, JSON_COMPACT);
    if (js == NULL) return OM_E_NOMEM;
    size_t n = strlen(js);
    if (*o + b64url_encoded_len(n) + 1 > cap) {
        free(js);
        return OM_E_INVALID_ARGUMENT; /* would exceed AUTH_MAX_TOKEN_LEN */
    }
    *o += b64url_encode((const unsigned char *)js, n, out + *o);
    free(js);
    return 0;
}

int auth_mint_at(const auth_ctx *a, const om_actor *actor, int64_t iat, int64_t exp, char **out) {
    if (out) *out = NULL;
    if (a == NULL || actor == NULL || out == NULL || iat < 0 || iat > AUTH_MAX_TIME || exp <= 0 ||
        exp > AUTH_MAX_TIME)
        return OM_E_INVALID_ARGUMENT;
    if (!a->can_sign) {
        log_error("auth: cannot mint: no signing key configured");
        return OM_E_INVALID_ARGUMENT;
    }
    char sub[sizeof AUTH_SERVICE_PREFIX + AUTH_SERVICE_MAX + 1];
    size_t svc_len = strnlen(actor->service, sizeof actor->service);
    if (svc_len > 0 && actor->user_id == 0 && service_name_valid(actor->service, svc_len)) {
        snprintf(sub, sizeof sub, "%s%s", AUTH_SERVICE_PREFIX, actor->service);
    } else if (svc_len == 0 && actor->user_id != 0) {
        snprintf(sub, sizeof sub, "%llu", (unsigned long long)actor->user_id);
    } else {
        return OM_E_INVALID_ARGUMENT; /* exactly one of user id or service name */
    }

    json_t *hdr = json_pack("{s:s, s:s, s:s}", "alg", alg_name(a->signer.alg), "typ", "JWT", "kid",
                            a->signer.kid);
    json_t *claims = json_pack("{s:s, s:s, s:s, s:I, s:I}", "sub", sub, "iss", a->issuer, "aud",
                               a->audience, "iat", (json_int_t)iat, "exp", (json_int_t)exp);
    int rc = OM_E_NOMEM;
    char *tok = NULL;
    if (hdr == NULL || claims == NULL) goto out;
    if (actor->mfa_at > 0 &&
        json_object_set_new(claims, "mfa_at", json_integer((json_int_t)actor->mfa_at)) != 0)
        goto out;
    tok = malloc(AUTH_MAX_TOKEN_LEN + 1);
    if (tok == NULL) goto out;
    size_t o = 0;
    const size_t sig_chars = b64url_encoded_len(ES256_SIG_LEN) + 1; /* '.' + signature */
    if ((rc = put_b64_json(hdr, tok, AUTH_MAX_TOKEN_LEN + 1 - sig_chars, &o)) != 0) goto out;
    tok[o++] = '.';
    if ((rc = put_b64_json(claims, tok, AUTH_MAX_TOKEN_LEN + 1 - sig_chars, &o)) != 0) goto out;

    unsigned char sig[ES256_SIG_LEN];
    size_t sig_len;
    if (a->signer.alg == AUTH_HS256) {
        sig_len = HS256_SIG_LEN;
        rc = hs256(a, &a->signer, tok, o, sig) ? 0 : OM_E_INTERNAL;
    } else {
        sig_len = ES256_SIG_LEN;
        rc = es256_sign(a, &a->signer, tok, o, sig);
    }
    if (rc) goto out;
    tok[o++] = '.';
    b64url_encode(sig, sig_len, tok + o);
    *out = tok;
    tok = NULL;
out:
    free(tok);
    json_decref(hdr);
    json_decref(claims);
    return rc;
}

int auth_mint(const auth_ctx *a, const om_actor *actor, int ttl_s, char **out) {
    if (out) *out = NULL;
    if (a == NULL || ttl_s <= 0) return OM_E_INVALID_ARGUMENT;
    int64_t now = a->now();
    return auth_mint_at(a, actor, now, now + ttl_s, out);
}

/* ---- service token --------------------------------------------------------
 * One shared token per context under a mutex, plus a copy per thread so that
 * the pointer handed out stays valid however other threads renew the shared
 * one. The copy is reused without locking while it has time left. */

typedef struct svc_copy {
    uint64_t ctx_id;
    char name[AUTH_SERVICE_MAX + 1];
    int64_t exp;
    char token[AUTH_MAX_TOKEN_LEN + 1];
} svc_copy;

static pthread_once_t svc_key_once = PTHREAD_ONCE_INIT;
static pthread_key_t svc_key;
static bool svc_key_ok;

static void svc_key_make(void) { svc_key_ok = pthread_key_create(&svc_key, free) == 0; }

static svc_copy *svc_copy_get(void) {
    pthread_once(&svc_key_once, svc_key_make);
    if (!svc_key_ok) return NULL;
    svc_copy *c = pthread_getspecific(svc_key);
    if (c == NULL) {
        c = calloc(1, sizeof *c);
        if (c == NULL) return NULL;
        if (pthread_setspecific(svc_key, c) != 0) {
            free(c);
            return NULL;
        }
    }
    return c;
}

const char *auth_service_token(auth_ctx *a, const char *service) {
    if (a == NULL || service == NULL || !a->can_sign) return NULL;
    size_t n = strlen(service);
    if (!service_name_valid(service, n)) return NULL;
    svc_copy *c = svc_copy_get();
    if (c == NULL) return NULL;
    int64_t now = a->now();
    if (c->ctx_id == a->id && strcmp(c->name, service) == 0 && c->exp - now >= AUTH_SERVICE_RENEW)
        return c->token;

    const char *ret = NULL;
    pthread_mutex_lock(&a->svc_mu);
    if (a->svc_token == NULL || strcmp(a->svc_name, service) != 0 ||
        a->svc_exp - now < AUTH_SERVICE_RENEW) {
        om_actor me = {0};
        memcpy(me.service, service, n + 1);
        char *tok = NULL;
        if (auth_mint_at(a, &me, now, now + AUTH_SERVICE_TTL, &tok) == 0) {
            free(a->svc_token);
            a->svc_token = tok;
            memcpy(a->svc_name, service, n + 1);
            a->svc_exp = now + AUTH_SERVICE_TTL;
        } else {
            log_error("auth: cannot mint the service token for \"%s\"", service);
        }
    }
    /* If re-minting failed, an old token that has not yet expired is still
     * better than none. */
    if (a->svc_token && strcmp(a->svc_name, service) == 0 && a->svc_exp > now) {
        c->ctx_id = a->id;
        memcpy(c->name, service, n + 1);
        c->exp = a->svc_exp;
        memcpy(c->token, a->svc_token, strlen(a->svc_token) + 1);
        ret = c->token;
    }
    pthread_mutex_unlock(&a->svc_mu);
    return ret;
}
