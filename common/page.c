/* page.c — list paging (page.h, SPEC 8). A page token is base64url (no
 * padding) of: version byte, the first 8 bytes of SHA-256(scope), the cursor,
 * and a 16-byte HMAC-SHA256 tag over version, scope and cursor. */
#include "page.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "config.h"
#include "log.h"
#include "om_err.h"

#define PAGE_VERSION 1
#define PAGE_SCOPE_LEN 8
#define PAGE_TAG_LEN 16
#define PAGE_KEY_MAX 256
#define PAGE_RANDOM_KEY_LEN 32

int page_size_normalize(int32_t requested, int *out) {
    if (requested < 0) return OM_E_INVALID_ARGUMENT;
    if (requested == 0)
        *out = PAGE_SIZE_DEFAULT;
    else
        *out = requested > PAGE_SIZE_MAX ? PAGE_SIZE_MAX : (int)requested;
    return 0;
}

/* ---- the key ---------------------------------------------------------------- */

static pthread_mutex_t key_mu = PTHREAD_MUTEX_INITIALIZER;
static uint8_t key_buf[PAGE_KEY_MAX];
static size_t key_len; /* 0: not loaded yet */

static void page_key(uint8_t *out, size_t *len) {
    pthread_mutex_lock(&key_mu);
    if (key_len == 0) {
        const char *k = cfg_str("ORGMESH_PAGE_TOKEN_KEY", NULL);
        if (k != NULL && k[0] != '\0') {
            key_len = strlen(k) < PAGE_KEY_MAX ? strlen(k) : PAGE_KEY_MAX;
            memcpy(key_buf, k, key_len);
        } else if (RAND_bytes(key_buf, PAGE_RANDOM_KEY_LEN) == 1) {
            /* never a key published in the source: without one, tokens are
             * good for this process only (app.c refuses to start without a
             * key outside local development) */
            log_warn("ORGMESH_PAGE_TOKEN_KEY is not set: page tokens use a random key of this process");
            key_len = PAGE_RANDOM_KEY_LEN;
        } else {
            log_error("page: no ORGMESH_PAGE_TOKEN_KEY and no random bytes for one");
            abort(); /* never sign with a key anyone could guess */
        }
    }
    memcpy(out, key_buf, key_len);
    *len = key_len;
    pthread_mutex_unlock(&key_mu);
}

int page_token_set_key(const void *key, size_t len) {
    if (key == NULL || len == 0 || len > PAGE_KEY_MAX) return OM_E_INVALID_ARGUMENT;
    pthread_mutex_lock(&key_mu);
    memcpy(key_buf, key, len);
    key_len = len;
    pthread_mutex_unlock(&key_mu);
    return 0;
}

/* ---- base64url -------------------------------------------------------------- */

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static char *b64url_encode(const uint8_t *in, size_t n) {
    char *out = malloc((n + 2) / 3 * 4 + 1);
    if (out == NULL) return NULL;
    size_t o = 0, i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = b64[v >> 18 & 63];
        out[o++] = b64[v >> 12 & 63];
        out[o++] = b64[v >> 6 & 63];
        out[o++] = b64[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = b64[v >> 18 & 63];
        out[o++] = b64[v >> 12 & 63];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = b64[v >> 18 & 63];
        out[o++] = b64[v >> 12 & 63];
        out[o++] = b64[v >> 6 & 63];
    }
    out[o] = '\0';
    return out;
}

static int b64val(char ch) {
    if (ch >= 'A' && ch <= 'Z') return ch - 'A';
    if (ch >= 'a' && ch <= 'z') return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9') return ch - '0' + 52;
    if (ch == '-') return 62;
    if (ch == '_') return 63;
    return -1;
}

/* Strict: no padding, no other alphabet, unused trailing bits zero — so
 * each byte string has exactly one token and any edit of it shows. */
static uint8_t *b64url_decode(const char *in, size_t n, size_t *out_len) {
    if (n % 4 == 1) return NULL;
    uint8_t *out = malloc(n / 4 * 3 + 3);
    if (out == NULL) return NULL;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = b64val(in[i]);
        if (v < 0) {
            free(out);
            return NULL;
        }
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    if (acc != 0) { /* leftover bits must be zero */
        free(out);
        return NULL;
    }
    *out_len = o;
    return out;
}

/* ---- tokens ----------------------------------------------------------------- */

static void page_scope_hash(const char *scope, uint8_t out[PAGE_SCOPE_LEN]) {
    uint8_t h[SHA256_DIGEST_LENGTH];
    EVP_Digest(scope, strlen(scope), h, NULL, EVP_sha256(), NULL);
    memcpy(out, h, PAGE_SCOPE_LEN);
}

/* Tag over version, the whole scope (length-prefixed, so no scope/cursor
 * split can collide) and the cursor. */
static int page_tag(const char *scope, const uint8_t *cursor, size_t clen,
                    uint8_t out[PAGE_TAG_LEN]) {
    size_t slen = strlen(scope);
    size_t n = 1 + 4 + slen + clen;
    uint8_t *msg = malloc(n);
    if (msg == NULL) return OM_E_NOMEM;
    msg[0] = PAGE_VERSION;
    msg[1] = (uint8_t)(slen >> 24);
    msg[2] = (uint8_t)(slen >> 16);
    msg[3] = (uint8_t)(slen >> 8);
    msg[4] = (uint8_t)slen;
    memcpy(msg + 5, scope, slen);
    if (clen > 0) memcpy(msg + 5 + slen, cursor, clen);
    uint8_t key[PAGE_KEY_MAX];
    size_t klen = 0;
    page_key(key, &klen);
    uint8_t mac[EVP_MAX_MD_SIZE];
    unsigned mlen = 0;
    bool ok = HMAC(EVP_sha256(), key, (int)klen, msg, n, mac, &mlen) != NULL && mlen >= PAGE_TAG_LEN;
    OPENSSL_cleanse(key, sizeof key);
    free(msg);
    if (!ok) return OM_E_INTERNAL;
    memcpy(out, mac, PAGE_TAG_LEN);
    return 0;
}

int page_token_encode(const char *scope, const char *cursor, char **out) {
    *out = NULL;
    if (scope == NULL) return OM_E_INTERNAL;
    if (cursor == NULL) {
        *out = strdup("");
        return *out != NULL ? 0 : OM_E_NOMEM;
    }
    size_t clen = strlen(cursor);
    if (clen > PAGE_CURSOR_MAX) return OM_E_INTERNAL; /* a service bug, not the client's */
    size_t n = 1 + PAGE_SCOPE_LEN + clen + PAGE_TAG_LEN;
    uint8_t *raw = malloc(n);
    if (raw == NULL) return OM_E_NOMEM;
    raw[0] = PAGE_VERSION;
    page_scope_hash(scope, raw + 1);
    memcpy(raw + 1 + PAGE_SCOPE_LEN, cursor, clen);
    int rc = page_tag(scope, (const uint8_t *)cursor, clen, raw + 1 + PAGE_SCOPE_LEN + clen);
    if (rc == 0) {
        *out = b64url_encode(raw, n);
        if (*out == NULL) rc = OM_E_NOMEM;
    }
    free(raw);
    return rc;
}

int page_token_decode(const char *scope, const char *token, char **cursor) {
    *cursor = NULL;
    if (scope == NULL) return OM_E_INTERNAL;
    if (token == NULL || token[0] == '\0') return 0; /* the first page */
    size_t tlen = strnlen(token, PAGE_TOKEN_MAX + 1);
    if (tlen > PAGE_TOKEN_MAX) return OM_E_INVALID_PAGE_TOKEN;
    size_t n = 0;
    uint8_t *raw = b64url_decode(token, tlen, &n);
    if (raw == NULL) return OM_E_INVALID_PAGE_TOKEN;
    int rc = OM_E_INVALID_PAGE_TOKEN;
    uint8_t sh[PAGE_SCOPE_LEN], tag[PAGE_TAG_LEN];
    if (n < 1 + PAGE_SCOPE_LEN + PAGE_TAG_LEN || raw[0] != PAGE_VERSION) goto out;
    page_scope_hash(scope, sh);
    if (memcmp(raw + 1, sh, PAGE_SCOPE_LEN) != 0) goto out; /* another list or filters */
    size_t clen = n - 1 - PAGE_SCOPE_LEN - PAGE_TAG_LEN;
    const uint8_t *cur = raw + 1 + PAGE_SCOPE_LEN;
    if (memchr(cur, '\0', clen) != NULL) goto out;
    if (page_tag(scope, cur, clen, tag) != 0) {
        rc = OM_E_INTERNAL;
        goto out;
    }
    if (CRYPTO_memcmp(tag, cur + clen, PAGE_TAG_LEN) != 0) goto out; /* forged or edited */
    *cursor = malloc(clen + 1);
    if (*cursor == NULL) {
        rc = OM_E_NOMEM;
        goto out;
    }
    memcpy(*cursor, cur, clen);
    (*cursor)[clen] = '\0';
    rc = 0;
out:
    free(raw);
    return rc;
}
