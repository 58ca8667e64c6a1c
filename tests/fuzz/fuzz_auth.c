/* fuzz_auth.c — the JWT verifier (common/auth.c auth_verify_claims).
 *
 * A fixed configuration: issuer "fuzz-iss", audience "fuzz-aud", keys
 * "hs1" (HS256) and "es1" (ES256, tests/fuzz/keys), clock fixed at
 * FUZZ_NOW so that the seed tokens stay valid. Keys are bound to the
 * identities they may sign for (SPEC 8): hs1 signs user tokens and
 * service:assets, es1 user tokens only; any other subject is refused with
 * KEY_NOT_BOUND_TO_SUBJECT.
 * First input byte, low bit:
 *   0  the rest is a compact token, verified as sent (parsing, base64url,
 *      header, both signature checks);
 *   1  the rest is "<header JSON>\n<claims JSON>": the target signs it with
 *      the HS256 key and verifies it, so the fuzzer reaches the header and
 *      claims checks behind the signature.
 * Asserts: the answer is 0, UNAUTHENTICATED, TOKEN_EXPIRED or
 * KEY_NOT_BOUND_TO_SUBJECT; an accepted token names a user or a service its
 * key is bound to and is not expired; auth_verify and
 * auth_verify_claims agree. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "auth.h"
#include "log.h"
#include "om_err.h"

#define FUZZ_NOW 1900000000LL
#define HS_SECRET "fuzz-hs256-secret"

static auth_ctx *ctx;

static int64_t fixed_now(void) { return FUZZ_NOW; }

static void init(void) {
    log_init("fuzz_auth", LOG_ERROR + 1); /* quiet: refusals are logged */
    static char keys[1024];
    snprintf(keys, sizeof keys, "hs1:HS256:" HS_SECRET ";es1:ES256:%s/keys/es256-fuzz.pub.pem",
             OM_FUZZ_DIR);
    auth_config cfg = {.issuer = "fuzz-iss", .audience = "fuzz-aud", .keys = keys,
                       .key_subjects = "hs1=users,service:assets;es1=users"};
    if (auth_new(&ctx, &cfg) != 0) {
        fprintf(stderr, "fuzz_auth: auth_new failed (keys %s)\n", keys);
        abort();
    }
    auth_set_clock(ctx, fixed_now);
}

static size_t b64url(const uint8_t *in, size_t n, char *out) {
    static const char al[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        acc = acc << 8 | in[i];
        bits += 8;
        while (bits >= 6) {
            bits -= 6;
            out[o++] = al[(acc >> bits) & 63];
        }
    }
    if (bits > 0) out[o++] = al[(acc << (6 - bits)) & 63];
    return o;
}

static void verify(const char *tok, size_t len) {
    om_actor a1, a2;
    char *claims = NULL;
    int rc = auth_verify_claims(ctx, tok, len, &a1, &claims);
    if (rc != 0 && rc != OM_E_UNAUTHENTICATED && rc != OM_E_TOKEN_EXPIRED &&
        rc != OM_E_KEY_NOT_BOUND_TO_SUBJECT) {
        fprintf(stderr, "fuzz_auth: unexpected answer %s\n", om_err_name(rc));
        abort();
    }
    if (rc == 0) {
        if ((a1.user_id == 0) == (a1.service[0] == '\0') || claims == NULL ||
            a1.exp + 30 < FUZZ_NOW || memchr(a1.service, '\0', sizeof a1.service) == NULL ||
            (a1.service[0] != '\0' && strcmp(a1.service, "assets") != 0)) {
            fprintf(stderr, "fuzz_auth: accepted a token without a valid actor\n");
            abort();
        }
    }
    free(claims);
    int rc2 = auth_verify(ctx, tok, len, &a2);
    if (rc2 != rc || (rc == 0 && memcmp(&a1, &a2, sizeof a1) != 0)) {
        fprintf(stderr, "fuzz_auth: auth_verify and auth_verify_claims disagree\n");
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (ctx == NULL) init();
    if (size < 1) return 0;
    uint8_t mode = data[0] & 1;
    data++;
    size--;
    if (mode == 0) {
        /* Exactly `size` bytes, not NUL-terminated: ASan sees any overread. */
        char *tok = malloc(size ? size : 1);
        if (tok == NULL) return 0;
        if (size) memcpy(tok, data, size);
        verify(tok, size);
        free(tok);
        return 0;
    }
    if (size > 4096) return 0;
    const uint8_t *nl = memchr(data, '\n', size);
    if (nl == NULL) return 0;
    size_t hl = (size_t)(nl - data), pl = size - hl - 1;
    size_t cap = (hl + pl) * 4 / 3 + 8 + 64;
    char *tok = malloc(cap);
    if (tok == NULL) return 0;
    size_t o = b64url(data, hl, tok);
    tok[o++] = '.';
    o += b64url(nl + 1, pl, tok + o);
    uint8_t mac[32];
    unsigned mlen = sizeof mac;
    if (HMAC(EVP_sha256(), HS_SECRET, (int)strlen(HS_SECRET), (const uint8_t *)tok, o, mac, &mlen) ==
        NULL)
        abort();
    tok[o++] = '.';
    o += b64url(mac, mlen, tok + o);
    verify(tok, o);
    free(tok);
    return 0;
}
