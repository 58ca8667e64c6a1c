/* ctoken.c — consistency tokens (ctoken.h): the binary layout, its
 * HMAC-SHA256 tag and base64url text. */
#include "ctoken.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "config.h"
#include "log.h"
#include "om_err.h"

#define TAG_LEN 16
#define HEAD_LEN 10 /* version, n, issued ms */
#define EV_LEN 17
#define RAW_MAX (HEAD_LEN + CTOKEN_MAX_EVENTS * EV_LEN + TAG_LEN)
#define KEY_LEN 32

static const char *const names[] = {NULL, "accounts", "organizations", "connections", "assets", "partners", "notifier"};

int ctoken_service_code(const char *service) {
    if (service == NULL) return 0;
    for (int i = 1; i < (int)(sizeof names / sizeof names[0]); i++)
        if (strcmp(service, names[i]) == 0) return i;
    return 0;
}

const char *ctoken_service_name(int code) {
    return code > 0 && code < (int)(sizeof names / sizeof names[0]) ? names[code] : "unknown";
}

/* ---- the key ---- */

static pthread_mutex_t key_mu = PTHREAD_MUTEX_INITIALIZER;
static uint8_t key[KEY_LEN];
static bool key_loaded;

/* Domain separation: the page key signs page tokens; this key is
 * HMAC(page key, label), so one secret never tags two kinds of token. */
static void derive(const void *secret, size_t n, uint8_t out[KEY_LEN]) {
    static const char label[] = "orgmesh consistency token v1";
    unsigned len = KEY_LEN;
    HMAC(EVP_sha256(), secret, (int)n, (const uint8_t *)label, sizeof label - 1, out, &len);
}

static void load_key(uint8_t out[KEY_LEN]) {
    pthread_mutex_lock(&key_mu);
    if (!key_loaded) {
        const char *k = cfg_str("ORGMESH_CONSISTENCY_TOKEN_KEY", NULL);
        if (k == NULL || k[0] == '\0') k = cfg_str("ORGMESH_PAGE_TOKEN_KEY", NULL);
        if (k != NULL && k[0] != '\0') {
            derive(k, strlen(k), key);
        } else if (RAND_bytes(key, KEY_LEN) == 1) {
            /* never a key published in the source (as page.c) */
            log_warn("neither ORGMESH_CONSISTENCY_TOKEN_KEY nor ORGMESH_PAGE_TOKEN_KEY is set: consistency tokens use a "
                     "random key of this process (other services will refuse them)");
        } else {
            log_error("ctoken: no key and no random bytes for one");
            abort();
        }
        key_loaded = true;
    }
    memcpy(out, key, KEY_LEN);
    pthread_mutex_unlock(&key_mu);
}

int ctoken_set_key(const void *k, size_t n) {
    if (k == NULL || n == 0) return OM_E_INVALID_ARGUMENT;
    pthread_mutex_lock(&key_mu);
    derive(k, n, key);
    key_loaded = true;
    pthread_mutex_unlock(&key_mu);
    return 0;
}

static void tag(const uint8_t *msg, size_t n, uint8_t out[TAG_LEN]) {
    uint8_t k[KEY_LEN], full[32];
    unsigned len = sizeof full;
    load_key(k);
    HMAC(EVP_sha256(), k, KEY_LEN, msg, n, full, &len);
    memcpy(out, full, TAG_LEN);
    OPENSSL_cleanse(k, sizeof k);
}

/* ---- the token ---- */

void ctoken_init(ctoken *t) {
    memset(t, 0, sizeof *t);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    t->issued_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int parse_uuid(const char *s, uint8_t out[16]) {
    if (s == NULL || strlen(s) != 36) return OM_E_INVALID_ARGUMENT;
    int o = 0;
    for (int i = 0; i < 36;) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-') return OM_E_INVALID_ARGUMENT;
            i++;
            continue;
        }
        int h = hexval(s[i]), l = hexval(s[i + 1]);
        if (h < 0 || l < 0) return OM_E_INVALID_ARGUMENT;
        out[o++] = (uint8_t)(h << 4 | l);
        i += 2;
    }
    return 0;
}

int ctoken_add(ctoken *t, const char *service, const char *event_uuid) {
    int code = ctoken_service_code(service);
    ctoken_event e = {.service = (uint8_t)code};
    if (code == 0 || parse_uuid(event_uuid, e.id) != 0) return OM_E_INVALID_ARGUMENT;
    if (t->n >= CTOKEN_MAX_EVENTS) return OM_E_BATCH_TOO_LARGE;
    t->ev[t->n++] = e;
    return 0;
}

void ctoken_event_uuid(const ctoken_event *e, char out[37]) {
    const uint8_t *b = e->id;
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2], b[3],
             b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

int ctoken_encode(const ctoken *t, char out[CTOKEN_MAX_LEN]) {
    if (t->n < 1 || t->n > CTOKEN_MAX_EVENTS) return OM_E_INVALID_ARGUMENT;
    uint8_t raw[RAW_MAX];
    size_t n = 0;
    raw[n++] = CTOKEN_VERSION;
    raw[n++] = (uint8_t)t->n;
    for (int i = 7; i >= 0; i--) raw[n++] = (uint8_t)((uint64_t)t->issued_ms >> (i * 8));
    for (int i = 0; i < t->n; i++) {
        raw[n++] = t->ev[i].service;
        memcpy(raw + n, t->ev[i].id, 16);
        n += 16;
    }
    tag(raw, n, raw + n);
    n += TAG_LEN;
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)raw[i] << 16 | (i + 1 < n ? (uint32_t)raw[i + 1] << 8 : 0) |
                     (i + 2 < n ? raw[i + 2] : 0);
        out[o++] = b64[v >> 18 & 63];
        out[o++] = b64[v >> 12 & 63];
        if (i + 1 < n) out[o++] = b64[v >> 6 & 63];
        if (i + 2 < n) out[o++] = b64[v & 63];
    }
    out[o] = '\0';
    return 0;
}

static int b64val(char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '-') return 62;
    if (c == '_') return 63;
    return -1;
}

int ctoken_decode(const char *s, ctoken *out) {
    if (s == NULL) return OM_E_INVALID_CONSISTENCY_TOKEN;
    size_t len = strnlen(s, CTOKEN_MAX_LEN);
    if (len == 0 || len >= CTOKEN_MAX_LEN || len % 4 == 1) return OM_E_INVALID_CONSISTENCY_TOKEN;
    uint8_t raw[RAW_MAX + 3];
    size_t n = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = b64val(s[i]);
        if (v < 0) return OM_E_INVALID_CONSISTENCY_TOKEN;
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (n >= sizeof raw) return OM_E_INVALID_CONSISTENCY_TOKEN;
            raw[n++] = (uint8_t)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    if (acc != 0) return OM_E_INVALID_CONSISTENCY_TOKEN; /* non-canonical trailing bits */
    /* a newer format (version != 1) is refused, as is any other length */
    if (n < HEAD_LEN + EV_LEN + TAG_LEN || raw[0] != CTOKEN_VERSION) return OM_E_INVALID_CONSISTENCY_TOKEN;
    int ne = raw[1];
    if (ne < 1 || ne > CTOKEN_MAX_EVENTS || n != (size_t)(HEAD_LEN + ne * EV_LEN + TAG_LEN))
        return OM_E_INVALID_CONSISTENCY_TOKEN;
    uint8_t want[TAG_LEN];
    tag(raw, n - TAG_LEN, want);
    if (CRYPTO_memcmp(want, raw + n - TAG_LEN, TAG_LEN) != 0) return OM_E_INVALID_CONSISTENCY_TOKEN;
    memset(out, 0, sizeof *out);
    uint64_t ms = 0;
    for (int i = 0; i < 8; i++) ms = ms << 8 | raw[2 + i];
    out->issued_ms = (int64_t)ms;
    out->n = ne;
    for (int i = 0; i < ne; i++) {
        const uint8_t *p = raw + HEAD_LEN + i * EV_LEN;
        if (p[0] == 0 || ctoken_service_code(ctoken_service_name(p[0])) != p[0]) return OM_E_INVALID_CONSISTENCY_TOKEN;
        out->ev[i].service = p[0];
        memcpy(out->ev[i].id, p + 1, 16);
    }
    return 0;
}

int ctoken_for_event(const char *service, const char *event_uuid, char out[CTOKEN_MAX_LEN]) {
    ctoken t;
    ctoken_init(&t);
    int rc = ctoken_add(&t, service, event_uuid);
    return rc != 0 ? rc : ctoken_encode(&t, out);
}

/* ---- the commit being built (per thread) ---- */

static _Thread_local ctoken pending;

void ctoken_note(const char *service, const char *event_uuid) {
    ctoken_event e = {.service = (uint8_t)ctoken_service_code(service)};
    if (e.service == 0 || parse_uuid(event_uuid, e.id) != 0) return;
    if (pending.n == CTOKEN_MAX_EVENTS) {
        memmove(&pending.ev[0], &pending.ev[1], (CTOKEN_MAX_EVENTS - 1) * sizeof pending.ev[0]);
        pending.n--;
    }
    pending.ev[pending.n++] = e;
}

void ctoken_pending_reset(void) { pending.n = 0; }

const char *ctoken_pending_take(char out[CTOKEN_MAX_LEN]) {
    out[0] = '\0';
    if (pending.n > 0) {
        ctoken t;
        ctoken_init(&t);
        t.n = pending.n;
        memcpy(t.ev, pending.ev, sizeof t.ev);
        if (ctoken_encode(&t, out) != 0) out[0] = '\0';
    }
    pending.n = 0;
    return out;
}

void ctoken_note_token(const char *token) {
    ctoken t;
    if (token == NULL || token[0] == '\0' || ctoken_decode(token, &t) != 0) return;
    for (int i = 0; i < t.n; i++) {
        if (pending.n == CTOKEN_MAX_EVENTS) {
            memmove(&pending.ev[0], &pending.ev[1], (CTOKEN_MAX_EVENTS - 1) * sizeof pending.ev[0]);
            pending.n--;
        }
        pending.ev[pending.n++] = t.ev[i];
    }
}
