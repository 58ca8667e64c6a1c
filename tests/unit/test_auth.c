/* test_auth.c — SPEC 8 "Identity": which tokens auth_verify accepts and which
 * it refuses. Tokens are built here with OpenSSL directly (not with
 * auth_mint), so that any header, claim, encoding or signature can be tried,
 * and tokens from auth_mint are checked with an independent verifier. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>

#include "auth.h"
#include "log.h"
#include "om_err.h"

#define ISS "test-iss"
#define AUD "test-aud"
#define HS_SECRET "s3cret-for-unit-tests"
#define NOW 1900000000LL /* the tests' clock: fixed, so leeway edges are exact */
/* SPEC 8: what the keys of most tests may sign for (binding has tests of its own) */
#define SVCS "service:partners,service:assets,service:notifier,service:organizations,service:abcdefghijklmnopqrstuvwxyz12345"
#define BIND_TEST "hs1=users," SVCS ";es1=users," SVCS ";es2=users," SVCS

static char dir[64];
static char es1_pub[128], es1_priv[128], es2_pub[128], es2_priv[128], p384_pub[128];
static EVP_PKEY *es1, *es2;
static char keys_all[512];
static auth_ctx *ctx; /* HS256 "hs1" + ES256 "es1", "es2" */

static int64_t fixed_now(void) { return NOW; }
static int64_t moving_now_value = NOW;
static int64_t moving_now(void) { return moving_now_value; }

/* ---- building tokens --------------------------------------------------------- */

static char *b64url(const void *data, size_t n) {
    static const char al[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const unsigned char *s = data;
    char *out = malloc(n * 4 / 3 + 4);
    assert_non_null(out);
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        acc = acc << 8 | s[i];
        bits += 8;
        while (bits >= 6) {
            bits -= 6;
            out[o++] = al[(acc >> bits) & 63];
        }
    }
    if (bits > 0) out[o++] = al[(acc << (6 - bits)) & 63];
    out[o] = '\0';
    return out;
}

static char *b64url_str(const char *s) { return b64url(s, strlen(s)); }

static char *join3(const char *a, const char *b, const char *c) {
    size_t n = strlen(a) + strlen(b) + strlen(c) + 3;
    char *r = malloc(n);
    assert_non_null(r);
    snprintf(r, n, "%s.%s.%s", a, b, c);
    return r;
}

static void hmac256(const void *key, size_t klen, const char *msg, unsigned char out[32]) {
    unsigned int len = 32;
    assert_non_null(
        HMAC(EVP_sha256(), key, (int)klen, (const unsigned char *)msg, strlen(msg), out, &len));
}

/* ES256 over msg, as raw r||s (what JWS carries) and as DER. */
static void es256_sign(EVP_PKEY *k, const char *msg, unsigned char raw[64], unsigned char *der,
                       size_t *der_len) {
    unsigned char buf[128];
    size_t len = sizeof buf;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    assert_int_equal(EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, k), 1);
    assert_int_equal(EVP_DigestSign(md, buf, &len, (const unsigned char *)msg, strlen(msg)), 1);
    EVP_MD_CTX_free(md);
    const unsigned char *p = buf;
    ECDSA_SIG *sig = d2i_ECDSA_SIG(NULL, &p, (long)len);
    assert_non_null(sig);
    const BIGNUM *r, *s;
    ECDSA_SIG_get0(sig, &r, &s);
    assert_int_equal(BN_bn2binpad(r, raw, 32), 32);
    assert_int_equal(BN_bn2binpad(s, raw + 32, 32), 32);
    ECDSA_SIG_free(sig);
    if (der) {
        memcpy(der, buf, len);
        *der_len = len;
    }
}

/* header and payload are the JSON texts; the signature is made here. */
static char *tok_hs_key(const char *header, const char *payload, const void *key, size_t klen) {
    char *h = b64url_str(header), *p = b64url_str(payload);
    char *input = join3(h, p, "");
    input[strlen(input) - 1] = '\0'; /* "h.p" */
    unsigned char mac[32];
    hmac256(key, klen, input, mac);
    char *s = b64url(mac, 32);
    char *t = join3(h, p, s);
    free(h), free(p), free(s), free(input);
    return t;
}

static char *tok_hs(const char *header, const char *payload) {
    return tok_hs_key(header, payload, HS_SECRET, strlen(HS_SECRET));
}

static char *tok_es(const char *header, const char *payload, EVP_PKEY *k) {
    char *h = b64url_str(header), *p = b64url_str(payload);
    char *input = join3(h, p, "");
    input[strlen(input) - 1] = '\0';
    unsigned char raw[64];
    es256_sign(k, input, raw, NULL, NULL);
    char *s = b64url(raw, 64);
    char *t = join3(h, p, s);
    free(h), free(p), free(s), free(input);
    return t;
}

/* Sign already-encoded parts (for non-canonical encodings). */
static char *tok_hs_encoded(const char *h, const char *p) {
    char *input = join3(h, p, "");
    input[strlen(input) - 1] = '\0';
    unsigned char mac[32];
    hmac256(HS_SECRET, strlen(HS_SECRET), input, mac);
    char *s = b64url(mac, 32);
    char *t = join3(h, p, s);
    free(s), free(input);
    return t;
}

#define HDR_HS "{\"alg\":\"HS256\",\"typ\":\"JWT\",\"kid\":\"hs1\"}"
#define HDR_ES1 "{\"alg\":\"ES256\",\"typ\":\"JWT\",\"kid\":\"es1\"}"
#define HDR_ES2 "{\"alg\":\"ES256\",\"typ\":\"JWT\",\"kid\":\"es2\"}"

/* Standard claims with the given sub, iat and exp, plus extra members. */
static char *claims(const char *sub, long long iat, long long exp, const char *extra) {
    static char buf[8][1024];
    static int slot;
    char *b = buf[slot++ % 8];
    snprintf(b, sizeof buf[0],
             "{\"sub\":\"%s\",\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"iat\":%lld,\"exp\":%lld%s}",
             sub, iat, exp, extra ? extra : "");
    return b;
}

static int verify(const auth_ctx *a, const char *t, om_actor *actor) {
    return auth_verify(a, t, strlen(t), actor);
}

/* Verify and free: the result code. */
static int check(const auth_ctx *a, char *t) {
    om_actor actor;
    int rc = verify(a, t, &actor);
    free(t);
    return rc;
}

/* ---- fixtures --------------------------------------------------------------- */

static void write_key(EVP_PKEY *k, const char *path, bool priv) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(
        priv ? PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL) : PEM_write_PUBKEY(f, k), 1);
    fclose(f);
}

static auth_ctx *new_ctx(const char *keys, const char *signing) {
    auth_config cfg = {.issuer = ISS, .audience = AUD, .keys = keys, .signing_key = signing, .key_subjects = BIND_TEST};
    auth_ctx *a = NULL;
    assert_int_equal(auth_new(&a, &cfg), 0);
    auth_set_clock(a, fixed_now);
    return a;
}

static int group_setup(void **state) {
    log_init("test", LOG_ERROR); /* refusal reasons are debug: keep output quiet */
    strcpy(dir, "/tmp/om_test_auth_XXXXXX");
    if (mkdtemp(dir) == NULL) return -1;
    es1 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    es2 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    EVP_PKEY *p384 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
    if (!es1 || !es2 || !p384) return -1;
    snprintf(es1_pub, sizeof es1_pub, "%s/es1.pub.pem", dir);
    snprintf(es1_priv, sizeof es1_priv, "%s/es1.pem", dir);
    snprintf(es2_pub, sizeof es2_pub, "%s/es2.pub.pem", dir);
    snprintf(es2_priv, sizeof es2_priv, "%s/es2.pem", dir);
    snprintf(p384_pub, sizeof p384_pub, "%s/p384.pub.pem", dir);
    write_key(es1, es1_pub, false);
    write_key(es1, es1_priv, true);
    write_key(es2, es2_pub, false);
    write_key(es2, es2_priv, true);
    write_key(p384, p384_pub, false);
    EVP_PKEY_free(p384);
    snprintf(keys_all, sizeof keys_all, "hs1:HS256:" HS_SECRET ";es1:ES256:%s; es2:ES256:%s;",
             es1_pub, es2_pub);
    ctx = new_ctx(keys_all, NULL);
    return 0;
}

static int group_teardown(void **state) {
    auth_free(ctx);
    EVP_PKEY_free(es1);
    EVP_PKEY_free(es2);
    const char *files[] = {es1_pub, es1_priv, es2_pub, es2_priv, p384_pub};
    for (size_t i = 0; i < 5; i++) unlink(files[i]);
    rmdir(dir);
    return 0;
}

/* ---- accepted tokens -------------------------------------------------------- */

static void test_auth_hs256_user_token_accepted(void **state) {
    om_actor a;
    char *t = tok_hs(HDR_HS, claims("42", NOW - 5, NOW + 600, NULL));
    assert_int_equal(verify(ctx, t, &a), 0);
    assert_true(a.user_id == 42);
    assert_string_equal(a.service, "");
    assert_false(auth_is_service(&a, NULL));
    assert_true(a.iat == NOW - 5);
    assert_true(a.exp == NOW + 600);
    assert_true(a.mfa_at == 0);
    free(t);
}

static void test_auth_es256_user_token_accepted(void **state) {
    om_actor a;
    char *t = tok_es(HDR_ES1, claims("18446744073709551615", NOW, NOW + 60, NULL), es1);
    assert_int_equal(verify(ctx, t, &a), 0);
    assert_true(a.user_id == UINT64_MAX);
    free(t);
}

static void test_auth_service_sub_gives_service_identity(void **state) {
    om_actor a;
    char *t = tok_hs(HDR_HS, claims("service:partners", NOW, NOW + 60, NULL));
    assert_int_equal(verify(ctx, t, &a), 0);
    assert_true(a.user_id == 0);
    assert_string_equal(a.service, "partners");
    assert_true(auth_is_service(&a, "partners"));
    assert_false(auth_is_service(&a, "accounts"));
    free(t);
}

static void test_auth_mfa_at_claim_is_read(void **state) {
    om_actor a;
    char *t = tok_hs(HDR_HS, claims("7", NOW, NOW + 60, ",\"mfa_at\":1899999900"));
    assert_int_equal(verify(ctx, t, &a), 0);
    assert_true(a.mfa_at == 1899999900);
    free(t);
    /* a second factor "verified" in the future is nonsense */
    assert_int_equal(
        check(ctx, tok_hs(HDR_HS, claims("7", NOW, NOW + 60, ",\"mfa_at\":1900000100"))),
        OM_E_UNAUTHENTICATED);
    assert_int_equal(check(ctx, tok_hs(HDR_HS, claims("7", NOW, NOW + 60, ",\"mfa_at\":\"yes\""))),
                     OM_E_UNAUTHENTICATED);
}

static void test_auth_audience_array_containing_ours_accepted(void **state) {
    const char *p = "{\"sub\":\"1\",\"iss\":\"" ISS "\",\"aud\":[\"other\",\"" AUD
                    "\"],\"iat\":1900000000,\"exp\":1900000100}";
    assert_int_equal(check(ctx, tok_hs(HDR_HS, p)), 0);
}

static void test_auth_unknown_header_members_and_typ_case_tolerated(void **state) {
    assert_int_equal(
        check(ctx, tok_hs("{\"alg\":\"HS256\",\"kid\":\"hs1\"}", claims("1", NOW, NOW + 60, NULL))),
        0);
    assert_int_equal(
        check(ctx, tok_hs("{\"typ\":\"jwt\",\"kid\":\"hs1\",\"alg\":\"HS256\",\"x\":1}",
                          claims("1", NOW, NOW + 60, NULL))),
        0);
}

/* ---- signatures and algorithms --------------------------------------------- */

static void test_auth_rejects_forged_signature(void **state) {
    const char *other = "not-the-secret";
    assert_int_equal(
        check(ctx, tok_hs_key(HDR_HS, claims("1", NOW, NOW + 60, NULL), other, strlen(other))),
        OM_E_UNAUTHENTICATED);
    /* one changed character in the middle of a good signature */
    char *t = tok_hs(HDR_HS, claims("1", NOW, NOW + 60, NULL));
    char *sig = strrchr(t, '.') + 1;
    sig[10] = sig[10] == 'A' ? 'B' : 'A';
    assert_int_equal(check(ctx, t), OM_E_UNAUTHENTICATED);
    /* ES256 signed by the wrong key for its kid */
    assert_int_equal(check(ctx, tok_es(HDR_ES1, claims("1", NOW, NOW + 60, NULL), es2)),
                     OM_E_UNAUTHENTICATED);
}

static void test_auth_rejects_tampered_payload(void **state) {
    char *good = tok_hs(HDR_HS, claims("1", NOW, NOW + 60, NULL));
    char *evil = b64url_str(claims("2", NOW, NOW + 60, NULL));
    char *h = strndup(good, (size_t)(strchr(good, '.') - good));
    char *t = join3(h, evil, strrchr(good, '.') + 1);
    assert_int_equal(check(ctx, t), OM_E_UNAUTHENTICATED);
    free(good), free(evil), free(h);
}

static void test_auth_alg_none_refused(void **state) {
    const char *p = claims("1", NOW, NOW + 60, NULL);
    char *h = b64url_str("{\"alg\":\"none\",\"kid\":\"hs1\"}"), *pl = b64url_str(p);
    assert_int_equal(check(ctx, join3(h, pl, "")), OM_E_UNAUTHENTICATED);
    assert_int_equal(check(ctx, join3(h, pl, "AAAA")), OM_E_UNAUTHENTICATED);
    free(h);
    /* whatever the case, and even with a "valid" HMAC over it */
    assert_int_equal(check(ctx, tok_hs("{\"alg\":\"None\",\"kid\":\"hs1\"}", p)),
                     OM_E_UNAUTHENTICATED);
    assert_int_equal(check(ctx, tok_hs("{\"alg\":\"NONE\",\"kid\":\"hs1\"}", p)),
                     OM_E_UNAUTHENTICATED);
    /* an unsigned token with a good alg */
    h = b64url_str(HDR_HS);
    assert_int_equal(check(ctx, join3(h, pl, "")), OM_E_UNAUTHENTICATED);
    free(h), free(pl);
}

/* The classic confusion attack: HMAC "signed" with the ES256 public key's
 * PEM text (which is public) as the secret. */
static void test_auth_hs256_token_against_es256_key_refused(void **state) {
    FILE *f = fopen(es1_pub, "rb");
    assert_non_null(f);
    char pem[1024];
    size_t n = fread(pem, 1, sizeof pem, f);
    fclose(f);
    const char *p = claims("1", NOW, NOW + 60, NULL);
    assert_int_equal(check(ctx, tok_hs_key("{\"alg\":\"HS256\",\"kid\":\"es1\"}", p, pem, n)),
                     OM_E_UNAUTHENTICATED);
    /* and the same with the DER of the public key */
    unsigned char *der = NULL;
    int dl = i2d_PUBKEY(es1, &der);
    assert_true(dl > 0);
    assert_int_equal(
        check(ctx, tok_hs_key("{\"alg\":\"HS256\",\"kid\":\"es1\"}", p, der, (size_t)dl)),
        OM_E_UNAUTHENTICATED);
    OPENSSL_free(der);
}

static void test_auth_es256_token_against_hs256_key_refused(void **state) {
    assert_int_equal(check(ctx, tok_es("{\"alg\":\"ES256\",\"kid\":\"hs1\"}",
                                       claims("1", NOW, NOW + 60, NULL), es1)),
                     OM_E_UNAUTHENTICATED);
}

static void test_auth_unsupported_alg_refused(void **state) {
    const char *p = claims("1", NOW, NOW + 60, NULL);
    assert_int_equal(check(ctx, tok_hs("{\"alg\":\"HS512\",\"kid\":\"hs1\"}", p)),
                     OM_E_UNAUTHENTICATED);
    assert_int_equal(check(ctx, tok_hs("{\"alg\":\"hs256\",\"kid\":\"hs1\"}", p)),
                     OM_E_UNAUTHENTICATED);
    assert_int_equal(check(ctx, tok_hs("{\"kid\":\"hs1\"}", p)), OM_E_UNAUTHENTICATED);
}

static void test_auth_unknown_or_missing_kid_refused(void **state) {
    const char *p = claims("1", NOW, NOW + 60, NULL);
    assert_int_equal(check(ctx, tok_hs("{\"alg\":\"HS256\",\"kid\":\"hs9\"}", p)),
                     OM_E_UNAUTHENTICATED);
    assert_int_equal(check(ctx, tok_hs("{\"alg\":\"HS256\"}", p)), OM_E_UNAUTHENTICATED);
    assert_int_equal(check(ctx, tok_hs("{\"alg\":\"HS256\",\"kid\":7}", p)), OM_E_UNAUTHENTICATED);
}

static void test_auth_es256_key_rotation_by_kid(void **state) {
    const char *p = claims("5", NOW, NOW + 60, NULL);
    /* both keys valid at once, each chosen by its kid */
    assert_int_equal(check(ctx, tok_es(HDR_ES1, p, es1)), 0);
    assert_int_equal(check(ctx, tok_es(HDR_ES2, p, es2)), 0);
    assert_int_equal(check(ctx, tok_es(HDR_ES2, p, es1)), OM_E_UNAUTHENTICATED);
    /* es1 retired: its tokens stop working, es2's keep working */
    char keys[256];
    snprintf(keys, sizeof keys, "es2:ES256:%s", es2_pub);
    auth_ctx *rotated = new_ctx(keys, NULL);
    assert_int_equal(check(rotated, tok_es(HDR_ES1, p, es1)), OM_E_UNAUTHENTICATED);
    assert_int_equal(check(rotated, tok_es(HDR_ES2, p, es2)), 0);
    auth_free(rotated);
}

static void test_auth_es256_private_pem_also_verifies(void **state) {
    char keys[256];
    snprintf(keys, sizeof keys, "es1:ES256:%s", es1_priv);
    auth_ctx *a = new_ctx(keys, NULL);
    assert_int_equal(check(a, tok_es(HDR_ES1, claims("5", NOW, NOW + 60, NULL), es1)), 0);
    auth_free(a);
}

/* JWS wants raw r||s (64 bytes); DER, a truncated or padded signature is
 * refused even though its r and s are right. */
static void test_auth_es256_der_or_wrong_length_signature_refused(void **state) {
    const char *p = claims("5", NOW, NOW + 60, NULL);
    char *h = b64url_str(HDR_ES1), *pl = b64url_str(p);
    char *input = join3(h, pl, "");
    input[strlen(input) - 1] = '\0';
    unsigned char raw[65], der[128];
    size_t der_len;
    es256_sign(es1, input, raw, der, &der_len);
    char *s = b64url(der, der_len);
    assert_int_equal(check(ctx, join3(h, pl, s)), OM_E_UNAUTHENTICATED);
    free(s);
    s = b64url(raw, 63);
    assert_int_equal(check(ctx, join3(h, pl, s)), OM_E_UNAUTHENTICATED);
    free(s);
    raw[64] = 0;
    s = b64url(raw, 65);
    assert_int_equal(check(ctx, join3(h, pl, s)), OM_E_UNAUTHENTICATED);
    free(s);
    s = b64url(raw, 64); /* the control: the same signature, raw, passes */
    assert_int_equal(check(ctx, join3(h, pl, s)), 0);
    free(s), free(h), free(pl), free(input);
}

static void test_auth_es256_zero_signature_refused(void **state) {
    unsigned char zero[64] = {0};
    char *h = b64url_str(HDR_ES1), *pl = b64url_str(claims("5", NOW, NOW + 60, NULL)),
         *s = b64url(zero, 64);
    assert_int_equal(check(ctx, join3(h, pl, s)), OM_E_UNAUTHENTICATED);
    free(h), free(pl), free(s);
}

/* ---- claims ------------------------------------------------------------------- */

static void test_auth_rejects_wrong_audience(void **state) {
    const char *p1 = "{\"sub\":\"1\",\"iss\":\"" ISS
                     "\",\"aud\":\"other\",\"iat\":1900000000,\"exp\":1900000100}";
    const char *p2 = "{\"sub\":\"1\",\"iss\":\"" ISS
                     "\",\"aud\":[\"other\",\"more\"],\"iat\":1900000000,\"exp\":1900000100}";
    const char *p3 =
        "{\"sub\":\"1\",\"iss\":\"" ISS "\",\"aud\":[],\"iat\":1900000000,\"exp\":1900000100}";
    const char *p4 = "{\"sub\":\"1\",\"iss\":\"" ISS "\",\"iat\":1900000000,\"exp\":1900000100}";
    const char *p5 = "{\"sub\":\"1\",\"iss\":\"" ISS "\",\"aud\":[\"" AUD
                     "\",5],\"iat\":1900000000,\"exp\":1900000100}";
    const char *p6 = "{\"sub\":\"1\",\"iss\":\"" ISS "\",\"aud\":\"" AUD
                     "x\",\"iat\":1900000000,\"exp\":1900000100}";
    const char *ps[] = {p1, p2, p3, p4, p5, p6};
    for (size_t i = 0; i < 6; i++)
        assert_int_equal(check(ctx, tok_hs(HDR_HS, ps[i])), OM_E_UNAUTHENTICATED);
}

static void test_auth_rejects_wrong_or_missing_issuer(void **state) {
    const char *p1 = "{\"sub\":\"1\",\"iss\":\"evil\",\"aud\":\"" AUD
                     "\",\"iat\":1900000000,\"exp\":1900000100}";
    const char *p2 = "{\"sub\":\"1\",\"aud\":\"" AUD "\",\"iat\":1900000000,\"exp\":1900000100}";
    const char *p3 = "{\"sub\":\"1\",\"iss\":[\"" ISS "\"],\"aud\":\"" AUD
                     "\",\"iat\":1900000000,\"exp\":1900000100}";
    assert_int_equal(check(ctx, tok_hs(HDR_HS, p1)), OM_E_UNAUTHENTICATED);
    assert_int_equal(check(ctx, tok_hs(HDR_HS, p2)), OM_E_UNAUTHENTICATED);
    assert_int_equal(check(ctx, tok_hs(HDR_HS, p3)), OM_E_UNAUTHENTICATED);
}

static void test_auth_expired_within_leeway_accepted(void **state) {
    assert_int_equal(check(ctx, tok_hs(HDR_HS, claims("1", NOW - 600, NOW - 10, NULL))), 0);
    assert_int_equal(check(ctx, tok_hs(HDR_HS, claims("1", NOW - 600, NOW - 29, NULL))), 0);
}

static void test_auth_expired_beyond_leeway_is_token_expired(void **state) {
    assert_int_equal(check(ctx, tok_hs(HDR_HS, claims("1", NOW - 600, NOW - 30, NULL))),
                     OM_E_TOKEN_EXPIRED);
    assert_int_equal(check(ctx, tok_hs(HDR_HS, claims("1", NOW - 600, NOW - 3600, NULL))),
                     OM_E_TOKEN_EXPIRED);
    /* the expired code maps to UNAUTHENTICATED for the client (SPEC 8) */
    assert_int_equal(om_err_status(OM_E_TOKEN_EXPIRED), GRPC_STATUS_UNAUTHENTICATED);
}

static void test_auth_leeway_is_configurable(void **state) {
    auth_config cfg = {
        .issuer = ISS, .audience = AUD, .keys = "hs1:HS256:" HS_SECRET, .key_subjects = BIND_TEST, .leeway_s = 5};
    auth_ctx *a = NULL;
    assert_int_equal(auth_new(&a, &cfg), 0);
    auth_set_clock(a, fixed_now);
    assert_int_equal(check(a, tok_hs(HDR_HS, claims("1", NOW - 600, NOW - 4, NULL))), 0);
    assert_int_equal(check(a, tok_hs(HDR_HS, claims("1", NOW - 600, NOW - 10, NULL))),
                     OM_E_TOKEN_EXPIRED);
    auth_free(a);
}

/* A forged token must not learn that it is "only" expired. */
static void test_auth_expired_and_forged_is_unauthenticated(void **state) {
    const char *k = "wrong";
    assert_int_equal(check(ctx, tok_hs_key(HDR_HS, claims("1", NOW - 600, NOW - 3600, NULL), k, 5)),
                     OM_E_UNAUTHENTICATED);
}

static void test_auth_iat_in_future_beyond_leeway_refused(void **state) {
    assert_int_equal(check(ctx, tok_hs(HDR_HS, claims("1", NOW + 120, NOW + 600, NULL))),
                     OM_E_UNAUTHENTICATED);
    assert_int_equal(check(ctx, tok_hs(HDR_HS, claims("1", NOW + 20, NOW + 600, NULL))),
                     0); /* clock skew */
}

static void test_auth_nbf_in_future_refused(void **state) {
    assert_int_equal(check(ctx, tok_hs(HDR_HS, claims("1", NOW, NOW + 600, ",\"nbf\":1900000300"))),
                     OM_E_UNAUTHENTICATED);
    assert_int_equal(check(ctx, tok_hs(HDR_HS, claims("1", NOW, NOW + 600, ",\"nbf\":1900000020"))),
                     0);
    assert_int_equal(check(ctx, tok_hs(HDR_HS, claims("1", NOW, NOW + 600, ",\"nbf\":\"soon\""))),
                     OM_E_UNAUTHENTICATED);
}

static void test_auth_missing_sub_exp_or_iat_refused(void **state) {
    const char *no_sub =
        "{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"iat\":1900000000,\"exp\":1900000100}";
    const char *no_exp =
        "{\"sub\":\"1\",\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"iat\":1900000000}";
    const char *no_iat =
        "{\"sub\":\"1\",\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"exp\":1900000100}";
    const char *str_exp = "{\"sub\":\"1\",\"iss\":\"" ISS "\",\"aud\":\"" AUD
                          "\",\"iat\":1900000000,\"exp\":\"1900000100\"}";
    const char *real_exp = "{\"sub\":\"1\",\"iss\":\"" ISS "\",\"aud\":\"" AUD
                           "\",\"iat\":1900000000,\"exp\":1900000100.5}";
    const char *huge_exp = "{\"sub\":\"1\",\"iss\":\"" ISS "\",\"aud\":\"" AUD
                           "\",\"iat\":1900000000,\"exp\":9223372036854775807}";
    const char *num_sub =
        "{\"sub\":1,\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"iat\":1900000000,\"exp\":1900000100}";
    const char *ps[] = {no_sub, no_exp, no_iat, str_exp, real_exp, huge_exp, num_sub};
    for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++) {
        if (check(ctx, tok_hs(HDR_HS, ps[i])) != OM_E_UNAUTHENTICATED)
            fail_msg("accepted: %s", ps[i]);
    }
}

static void test_auth_exp_before_iat_refused(void **state) {
    assert_int_equal(check(ctx, tok_hs(HDR_HS, claims("1", NOW, NOW - 5, NULL))),
                     OM_E_UNAUTHENTICATED);
}

static void test_auth_sub_must_be_user_id_or_service_name(void **state) {
    const char *bad[] = {"0",
                         "-1",
                         "+1",
                         "007",
                         "12a",
                         "",
                         "1 ",
                         "18446744073709551616",
                         "99999999999999999999999",
                         "service:",
                         "service:Bad",
                         "service:a_b",
                         "service:a b",
                         "service:abcdefghijklmnopqrstuvwxyz123456",
                         "Service:x",
                         "svc:accounts"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (check(ctx, tok_hs(HDR_HS, claims(bad[i], NOW, NOW + 60, NULL))) != OM_E_UNAUTHENTICATED)
            fail_msg("sub \"%s\" accepted", bad[i]);
    }
    om_actor a;
    char *t = tok_hs(
        HDR_HS, claims("service:abcdefghijklmnopqrstuvwxyz12345", NOW, NOW + 60, NULL)); /* 31 */
    assert_int_equal(verify(ctx, t, &a), 0);
    assert_string_equal(a.service, "abcdefghijklmnopqrstuvwxyz12345");
    free(t);
}

/* ---- encoding and size ---------------------------------------------------------- */

static void test_auth_malformed_tokens_refused(void **state) {
    char *good = tok_hs(HDR_HS, claims("1", NOW, NOW + 60, NULL));
    char *dot1 = strchr(good, '.'), *dot2 = strrchr(good, '.');
    char *h = strndup(good, (size_t)(dot1 - good));
    char *p = strndup(dot1 + 1, (size_t)(dot2 - dot1 - 1));
    char *extra = join3(good, "", "");
    const char *cases[] = {"", ".", "..", "a.b", "a.b.c", "a.b.c.d", "abc", good + 1, extra};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        om_actor a;
        if (verify(ctx, cases[i], &a) != OM_E_UNAUTHENTICATED)
            fail_msg("accepted \"%s\"", cases[i]);
    }
    om_actor a;
    assert_int_equal(auth_verify(ctx, NULL, 0, &a), OM_E_UNAUTHENTICATED);
    /* header or payload not JSON objects (signed correctly all the same) */
    assert_int_equal(check(ctx, tok_hs("not json", claims("1", NOW, NOW + 60, NULL))),
                     OM_E_UNAUTHENTICATED);
    assert_int_equal(check(ctx, tok_hs("[\"HS256\"]", claims("1", NOW, NOW + 60, NULL))),
                     OM_E_UNAUTHENTICATED);
    assert_int_equal(check(ctx, tok_hs(HDR_HS, "[1,2]")), OM_E_UNAUTHENTICATED);
    assert_int_equal(check(ctx, tok_hs(HDR_HS, "{\"sub\":\"1\"")), OM_E_UNAUTHENTICATED);
    /* characters outside base64url: standard-alphabet '+', '/', padding, space */
    char *t;
    char *hp = malloc(strlen(h) + 3);
    sprintf(hp, "%s==", h);
    t = tok_hs_encoded(hp, p);
    assert_int_equal(check(ctx, t), OM_E_UNAUTHENTICATED);
    free(hp);
    char *pp = strdup(p);
    pp[3] = '+';
    assert_int_equal(check(ctx, tok_hs_encoded(h, pp)), OM_E_UNAUTHENTICATED);
    pp[3] = ' ';
    assert_int_equal(check(ctx, tok_hs_encoded(h, pp)), OM_E_UNAUTHENTICATED);
    /* NUL inside the token: len counts it, the token must not stop there */
    size_t glen = strlen(good);
    char *nul = malloc(glen + 2);
    memcpy(nul, good, glen);
    nul[glen] = '\0';
    nul[glen + 1] = 'A';
    assert_int_equal(auth_verify(ctx, nul, glen + 2, &a), OM_E_UNAUTHENTICATED);
    assert_int_equal(auth_verify(ctx, good, glen, &a), 0); /* the control */
    free(nul), free(pp), free(good), free(h), free(p), free(extra);
}

/* Each byte string has one accepted encoding: flipping the unused low bits
 * of the last character gives the same bytes but must be refused. */
static void test_auth_non_canonical_base64_refused(void **state) {
    const char *payload = claims("1", NOW, NOW + 60, NULL);
    char *p = b64url_str(payload);
    size_t n = strlen(p);
    assert_true(n % 4 != 0); /* there are spare bits */
    const char *al = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    int v = (int)(strchr(al, p[n - 1]) - al);
    p[n - 1] = al[v | 1]; /* set the lowest (unused) bit */
    char *h = b64url_str(HDR_HS);
    assert_int_equal(check(ctx, tok_hs_encoded(h, p)), OM_E_UNAUTHENTICATED);
    free(h), free(p);
}

static void test_auth_duplicate_claims_or_crit_refused(void **state) {
    const char *dup = "{\"sub\":\"1\",\"sub\":\"2\",\"iss\":\"" ISS "\",\"aud\":\"" AUD
                      "\",\"iat\":1900000000,\"exp\":1900000100}";
    assert_int_equal(check(ctx, tok_hs(HDR_HS, dup)), OM_E_UNAUTHENTICATED);
    assert_int_equal(check(ctx, tok_hs("{\"alg\":\"HS256\",\"alg\":\"none\",\"kid\":\"hs1\"}",
                                       claims("1", NOW, NOW + 60, NULL))),
                     OM_E_UNAUTHENTICATED);
    assert_int_equal(check(ctx, tok_hs("{\"alg\":\"HS256\",\"kid\":\"hs1\",\"crit\":[\"exp\"]}",
                                       claims("1", NOW, NOW + 60, NULL))),
                     OM_E_UNAUTHENTICATED);
    assert_int_equal(check(ctx, tok_hs("{\"alg\":\"HS256\",\"kid\":\"hs1\",\"typ\":\"JWE\"}",
                                       claims("1", NOW, NOW + 60, NULL))),
                     OM_E_UNAUTHENTICATED);
}

/* Tokens over 8 KiB are refused even when properly signed. */
static void test_auth_oversized_token_refused(void **state) {
    char *pad = malloc(8192);
    char *extra = malloc(8300);
    char *payload = malloc(9000);
    assert_true(pad && extra && payload);
    int accepted_max = 0, refused_min = 1 << 30;
    for (size_t n = 5900; n < 6200; n++) {
        memset(pad, 'x', n);
        pad[n] = '\0';
        snprintf(extra, 8300, ",\"pad\":\"%s\"", pad);
        snprintf(payload, 9000,
                 "{\"sub\":\"1\",\"iss\":\"" ISS "\",\"aud\":\"" AUD
                 "\",\"iat\":%lld,\"exp\":%lld%s}",
                 NOW, NOW + 60, extra);
        char *t = tok_hs(HDR_HS, payload);
        int len = (int)strlen(t);
        int rc = check(ctx, t);
        if (len <= AUTH_MAX_TOKEN_LEN) {
            if (rc != 0) fail_msg("a %d-byte token was refused", len);
            if (len > accepted_max) accepted_max = len;
        } else {
            if (rc != OM_E_UNAUTHENTICATED) fail_msg("a %d-byte token was accepted", len);
            if (len < refused_min) refused_min = len;
        }
    }
    /* the loop really crossed the limit on both sides */
    assert_true(accepted_max >= AUTH_MAX_TOKEN_LEN - 2);
    assert_true(refused_min <= AUTH_MAX_TOKEN_LEN + 2);
    free(pad), free(extra), free(payload);
}

/* ---- minting ------------------------------------------------------------------ */

static void test_auth_mint_hs256_round_trip(void **state) {
    auth_ctx *a = new_ctx("hs1:HS256:" HS_SECRET, "hs1:HS256:" HS_SECRET);
    om_actor in = {.user_id = 99, .mfa_at = NOW - 30}, out;
    char *t = NULL;
    assert_int_equal(auth_mint(a, &in, 600, &t), 0);
    assert_non_null(t);
    assert_int_equal(verify(a, t, &out), 0);
    assert_true(out.user_id == 99);
    assert_true(out.mfa_at == NOW - 30);
    assert_true(out.iat == NOW);
    assert_true(out.exp == NOW + 600);
    /* the shared test context (same HS key) accepts it too */
    assert_int_equal(verify(ctx, t, &out), 0);
    free(t);
    auth_free(a);
}

static void test_auth_mint_es256_is_raw_r_s_and_verifies_independently(void **state) {
    char signing[256];
    snprintf(signing, sizeof signing, "es1:ES256:%s", es1_priv);
    auth_ctx *a = new_ctx(NULL, signing);
    om_actor in = {0};
    strcpy(in.service, "organizations");
    char *t = NULL;
    assert_int_equal(auth_mint(a, &in, 3600, &t), 0);
    auth_free(a);

    /* verify by hand: 64-byte raw signature, r||s, over "header.payload" */
    char *dot = strrchr(t, '.');
    const char *s = dot + 1;
    assert_int_equal(strlen(s), 86); /* 64 bytes, unpadded base64url */
    unsigned char raw[64];
    const char *al = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;
    for (const char *c = s; *c; c++) {
        acc = acc << 6 | (uint32_t)(strchr(al, *c) - al);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            raw[o++] = (unsigned char)(acc >> bits);
        }
    }
    assert_int_equal(o, 64);
    ECDSA_SIG *sig = ECDSA_SIG_new();
    ECDSA_SIG_set0(sig, BN_bin2bn(raw, 32, NULL), BN_bin2bn(raw + 32, 32, NULL));
    unsigned char *der = NULL;
    int dl = i2d_ECDSA_SIG(sig, &der);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    assert_int_equal(EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, es1), 1);
    assert_int_equal(
        EVP_DigestVerify(md, der, (size_t)dl, (const unsigned char *)t, (size_t)(dot - t)), 1);
    EVP_MD_CTX_free(md);
    OPENSSL_free(der);
    ECDSA_SIG_free(sig);

    om_actor out;
    assert_int_equal(verify(ctx, t, &out), 0);
    assert_string_equal(out.service, "organizations");
    free(t);
}

static void test_auth_mint_refuses_without_key_or_with_bad_actor(void **state) {
    char *t = (char *)1;
    om_actor u = {.user_id = 1};
    assert_int_equal(auth_mint(ctx, &u, 60, &t),
                     OM_E_INVALID_ARGUMENT); /* ctx has no signing key */
    assert_null(t);
    auth_ctx *a = new_ctx(NULL, "hs1:HS256:" HS_SECRET);
    om_actor none = {0}, both = {.user_id = 1}, bad = {0};
    strcpy(both.service, "accounts");
    strcpy(bad.service, "Accounts");
    assert_int_equal(auth_mint(a, &none, 60, &t), OM_E_INVALID_ARGUMENT);
    assert_int_equal(auth_mint(a, &both, 60, &t), OM_E_INVALID_ARGUMENT);
    assert_int_equal(auth_mint(a, &bad, 60, &t), OM_E_INVALID_ARGUMENT);
    assert_int_equal(auth_mint(a, &u, 0, &t), OM_E_INVALID_ARGUMENT);
    auth_free(a);
}

static void test_auth_mint_at_past_exp_gives_expired_token(void **state) {
    auth_ctx *a = new_ctx("hs1:HS256:" HS_SECRET, "hs1:HS256:" HS_SECRET);
    om_actor u = {.user_id = 3}, out;
    char *t = NULL;
    assert_int_equal(auth_mint_at(a, &u, NOW - 7200, NOW - 3600, &t), 0);
    assert_int_equal(verify(a, t, &out), OM_E_TOKEN_EXPIRED);
    free(t);
    auth_free(a);
}

/* ---- configuration ------------------------------------------------------------- */

static void test_auth_new_rejects_bad_key_config(void **state) {
    char buf[512];
    const char *bad_keys[] = {
        "nocolons",
        "hs1:HS256:",
        "hs1:RS256:secret",
        "hs1:none:x",
        ":HS256:secret",
        "bad/kid:HS256:secret",
        "hs1:HS256:a;hs1:HS256:b",
        "es9:ES256:/nonexistent/key.pem",
        buf, /* P-384 is not ES256 */
    };
    snprintf(buf, sizeof buf, "p384:ES256:%s", p384_pub);
    for (size_t i = 0; i < sizeof bad_keys / sizeof bad_keys[0]; i++) {
        auth_config cfg = {.issuer = ISS, .audience = AUD, .keys = bad_keys[i]};
        auth_ctx *a = (auth_ctx *)1;
        if (auth_new(&a, &cfg) != OM_E_INVALID_ARGUMENT)
            fail_msg("accepted keys \"%s\"", bad_keys[i]);
        assert_null(a);
    }
    /* an ES256 signing key must be private */
    char pub_signer[256];
    snprintf(pub_signer, sizeof pub_signer, "es1:ES256:%s", es1_pub);
    auth_config c2 = {.issuer = ISS, .audience = AUD, .signing_key = pub_signer};
    auth_ctx *a = NULL;
    assert_int_equal(auth_new(&a, &c2), OM_E_INVALID_ARGUMENT);
    /* issuer and audience are required: an empty one would match nothing or anything */
    auth_config c3 = {.audience = AUD, .keys = "hs1:HS256:x"};
    assert_int_equal(auth_new(&a, &c3), OM_E_INVALID_ARGUMENT);
    auth_config c4 = {.issuer = ISS, .audience = "", .keys = "hs1:HS256:x"};
    assert_int_equal(auth_new(&a, &c4), OM_E_INVALID_ARGUMENT);
    auth_config c5 = {.issuer = ISS, .audience = AUD, .keys = "hs1:HS256:x", .leeway_s = -1};
    assert_int_equal(auth_new(&a, &c5), OM_E_INVALID_ARGUMENT);
}

static void test_auth_hs256_secret_may_contain_colons(void **state) {
    auth_ctx *a = new_ctx(" hs1:HS256:a:b:c ;", NULL);
    assert_int_equal(check(a, tok_hs_key(HDR_HS, claims("1", NOW, NOW + 60, NULL), "a:b:c", 5)), 0);
    assert_int_equal(check(a, tok_hs_key(HDR_HS, claims("1", NOW, NOW + 60, NULL), "a", 1)),
                     OM_E_UNAUTHENTICATED);
    auth_free(a);
}

/* ---- service token ------------------------------------------------------------- */

static void test_auth_service_token_cached_then_renewed_before_expiry(void **state) {
    auth_ctx *a = new_ctx("hs1:HS256:" HS_SECRET, "hs1:HS256:" HS_SECRET);
    auth_set_clock(a, moving_now);
    moving_now_value = NOW;
    const char *t1 = auth_service_token(a, "assets");
    assert_non_null(t1);
    char *first = strdup(t1);
    om_actor act;
    assert_int_equal(verify(a, first, &act), 0);
    assert_string_equal(act.service, "assets");
    assert_true(act.exp - act.iat == 3600);

    moving_now_value = NOW + 3000; /* 10 min left: reused */
    assert_string_equal(auth_service_token(a, "assets"), first);

    moving_now_value = NOW + 3400; /* under 5 min left: a new one */
    const char *t3 = auth_service_token(a, "assets");
    assert_non_null(t3);
    assert_string_not_equal(t3, first);
    assert_int_equal(verify(a, t3, &act), 0);
    assert_true(act.iat == NOW + 3400);

    assert_null(auth_service_token(a, "Not_Valid"));
    assert_null(auth_service_token(ctx, "assets")); /* no signing key */
    free(first);
    auth_free(a);
}

static auth_ctx *svc_ctx;
static void *svc_worker(void *arg) {
    const char *t = auth_service_token(svc_ctx, "notifier");
    char **out = arg;
    *out = t ? strdup(t) : NULL;
    /* the string is still ours after another thread's call */
    usleep(1000);
    const char *again = auth_service_token(svc_ctx, "notifier");
    if (again == NULL || strcmp(again, *out) != 0) {
        free(*out);
        *out = NULL;
    }
    return NULL;
}

static void test_auth_service_token_safe_from_many_threads(void **state) {
    svc_ctx = new_ctx("hs1:HS256:" HS_SECRET, "hs1:HS256:" HS_SECRET);
    pthread_t th[4];
    char *got[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&th[i], NULL, svc_worker, &got[i]), 0);
    for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < 4; i++) {
        assert_non_null(got[i]);
        assert_string_equal(got[i], got[0]); /* one shared token */
        om_actor act;
        assert_int_equal(verify(svc_ctx, got[i], &act), 0);
        assert_true(auth_is_service(&act, "notifier"));
    }
    for (int i = 0; i < 4; i++) free(got[i]);
    auth_free(svc_ctx);
}

static char *conc_tokens[2];
static void *verify_worker(void *arg) {
    long bad = 0;
    for (int i = 0; i < 300; i++) {
        om_actor a;
        if (verify(ctx, conc_tokens[i % 2], &a) != 0 || a.user_id != 77) bad++;
    }
    return (void *)bad;
}

static void test_auth_verify_concurrently_from_many_threads(void **state) {
    conc_tokens[0] = tok_es(HDR_ES1, claims("77", NOW, NOW + 60, NULL), es1);
    conc_tokens[1] = tok_hs(HDR_HS, claims("77", NOW, NOW + 60, NULL));
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&th[i], NULL, verify_worker, NULL), 0);
    for (int i = 0; i < 4; i++) {
        void *bad;
        pthread_join(th[i], &bad);
        assert_int_equal((long)bad, 0);
    }
    free(conc_tokens[0]);
    free(conc_tokens[1]);
}

/* With the real clock, a freshly minted token verifies. */
static void test_auth_real_clock_mint_then_verify(void **state) {
    auth_config cfg = {.issuer = ISS,
                       .audience = AUD,
                       .keys = "hs1:HS256:" HS_SECRET,
                       .signing_key = "hs1:HS256:" HS_SECRET,
                       .key_subjects = "hs1=users"};
    auth_ctx *a = NULL;
    assert_int_equal(auth_new(&a, &cfg), 0);
    om_actor u = {.user_id = 12}, out;
    char *t = NULL;
    assert_int_equal(auth_mint(a, &u, 60, &t), 0);
    char *claims_json = NULL;
    assert_int_equal(auth_verify_claims(a, t, strlen(t), &out, &claims_json), 0);
    assert_non_null(strstr(claims_json, "\"sub\":\"12\""));
    assert_non_null(strstr(claims_json, "\"aud\":\"" AUD "\""));
    free(claims_json);
    free(t);
    auth_free(a);
}

/* ---- key binding (SPEC 8) --------------------------------------------------------- */

/* The deployment layout: an issuer key for users, one key per service. */
#define BIND_DEPLOY "issuer=users; k-assets=service:assets; k-partners=service:partners;k-notifier = service:notifier"
#define KEYS_DEPLOY "issuer:HS256:issuer-secret;k-assets:HS256:assets-secret;k-partners:HS256:partners-secret;" \
                    "k-notifier:HS256:notifier-secret"
#define HDR_KID(kid) "{\"alg\":\"HS256\",\"typ\":\"JWT\",\"kid\":\"" kid "\"}"

static auth_ctx *deploy_ctx(void) {
    auth_config cfg = {.issuer = ISS, .audience = AUD, .keys = KEYS_DEPLOY, .key_subjects = BIND_DEPLOY};
    auth_ctx *a = NULL;
    assert_int_equal(auth_new(&a, &cfg), 0);
    auth_set_clock(a, fixed_now);
    return a;
}

static int signed_by(auth_ctx *a, const char *hdr, const char *secret, const char *sub) {
    return check(a, tok_hs_key(hdr, claims(sub, NOW, NOW + 60, NULL), secret, strlen(secret)));
}

static void test_auth_key_binding_service_key_signs_only_its_own_identity(void **state) {
    auth_ctx *a = deploy_ctx();
    assert_int_equal(signed_by(a, HDR_KID("k-assets"), "assets-secret", "service:assets"), 0);
    /* the assets key impersonating the partners service, or a user: refused */
    assert_int_equal(signed_by(a, HDR_KID("k-assets"), "assets-secret", "service:partners"),
                     OM_E_KEY_NOT_BOUND_TO_SUBJECT);
    assert_int_equal(signed_by(a, HDR_KID("k-notifier"), "notifier-secret", "42"), OM_E_KEY_NOT_BOUND_TO_SUBJECT);
    assert_int_equal(om_err_status(OM_E_KEY_NOT_BOUND_TO_SUBJECT), GRPC_STATUS_UNAUTHENTICATED);
    assert_string_equal(om_err_name(OM_E_KEY_NOT_BOUND_TO_SUBJECT), "KEY_NOT_BOUND_TO_SUBJECT");
    /* a bad signature stays plain UNAUTHENTICATED: binding is only told to key holders */
    assert_int_equal(signed_by(a, HDR_KID("k-assets"), "forged", "service:partners"), OM_E_UNAUTHENTICATED);
    auth_free(a);
}

static void test_auth_key_binding_issuer_key_signs_users_not_services(void **state) {
    auth_ctx *a = deploy_ctx();
    assert_int_equal(signed_by(a, HDR_KID("issuer"), "issuer-secret", "42"), 0);
    assert_int_equal(signed_by(a, HDR_KID("issuer"), "issuer-secret", "service:partners"),
                     OM_E_KEY_NOT_BOUND_TO_SUBJECT);
    auth_free(a);
    /* ... unless bound to it too */
    auth_config cfg = {.issuer = ISS, .audience = AUD, .keys = KEYS_DEPLOY,
                       .key_subjects = "issuer=users,service:partners;k-assets=service:assets"};
    assert_int_equal(auth_new(&a, &cfg), 0);
    auth_set_clock(a, fixed_now);
    assert_int_equal(signed_by(a, HDR_KID("issuer"), "issuer-secret", "service:partners"), 0);
    assert_int_equal(signed_by(a, HDR_KID("issuer"), "issuer-secret", "service:assets"),
                     OM_E_KEY_NOT_BOUND_TO_SUBJECT);
    /* a key bound to nothing signs for nobody */
    assert_int_equal(auth_unbound_keys(a), 2);
    assert_int_equal(signed_by(a, HDR_KID("k-partners"), "partners-secret", "service:partners"),
                     OM_E_KEY_NOT_BOUND_TO_SUBJECT);
    assert_int_equal(signed_by(a, HDR_KID("k-partners"), "partners-secret", "7"), OM_E_KEY_NOT_BOUND_TO_SUBJECT);
    auth_free(a);
}

static void test_auth_key_binding_prefix_of_a_service_name_is_not_that_service(void **state) {
    auth_config cfg = {.issuer = ISS, .audience = AUD, .keys = KEYS_DEPLOY,
                       .key_subjects = "k-assets=service:assets-copier,service:x"};
    auth_ctx *a = NULL;
    assert_int_equal(auth_new(&a, &cfg), 0);
    auth_set_clock(a, fixed_now);
    assert_int_equal(signed_by(a, HDR_KID("k-assets"), "assets-secret", "service:assets"),
                     OM_E_KEY_NOT_BOUND_TO_SUBJECT);
    assert_int_equal(signed_by(a, HDR_KID("k-assets"), "assets-secret", "service:assets-copier"), 0);
    assert_int_equal(signed_by(a, HDR_KID("k-assets"), "assets-secret", "service:x"), 0);
    auth_free(a);
}

static void test_auth_key_binding_bad_config_refused(void **state) {
    const char *bad[] = {"issuer", "issuer=", "issuer=user", "issuer=service:", "issuer=service:Bad",
                         "issuer=users,", "issuer=users;issuer=service:x", "issuer=*"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        auth_config cfg = {.issuer = ISS, .audience = AUD, .keys = KEYS_DEPLOY, .key_subjects = bad[i]};
        auth_ctx *a = NULL;
        if (auth_new(&a, &cfg) != OM_E_INVALID_ARGUMENT) fail_msg("binding \"%s\" accepted", bad[i]);
        assert_null(a);
    }
    /* a binding for a key no longer listed (after rotation) is ignored */
    auth_config ok = {.issuer = ISS, .audience = AUD, .keys = KEYS_DEPLOY, .key_subjects = BIND_DEPLOY ";old=users"};
    auth_ctx *a = NULL;
    assert_int_equal(auth_new(&a, &ok), 0);
    assert_int_equal(auth_unbound_keys(a), 0);
    auth_free(a);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_auth_hs256_user_token_accepted),
        cmocka_unit_test(test_auth_key_binding_service_key_signs_only_its_own_identity),
        cmocka_unit_test(test_auth_key_binding_issuer_key_signs_users_not_services),
        cmocka_unit_test(test_auth_key_binding_prefix_of_a_service_name_is_not_that_service),
        cmocka_unit_test(test_auth_key_binding_bad_config_refused),
        cmocka_unit_test(test_auth_es256_user_token_accepted),
        cmocka_unit_test(test_auth_service_sub_gives_service_identity),
        cmocka_unit_test(test_auth_mfa_at_claim_is_read),
        cmocka_unit_test(test_auth_audience_array_containing_ours_accepted),
        cmocka_unit_test(test_auth_unknown_header_members_and_typ_case_tolerated),
        cmocka_unit_test(test_auth_rejects_forged_signature),
        cmocka_unit_test(test_auth_rejects_tampered_payload),
        cmocka_unit_test(test_auth_alg_none_refused),
        cmocka_unit_test(test_auth_hs256_token_against_es256_key_refused),
        cmocka_unit_test(test_auth_es256_token_against_hs256_key_refused),
        cmocka_unit_test(test_auth_unsupported_alg_refused),
        cmocka_unit_test(test_auth_unknown_or_missing_kid_refused),
        cmocka_unit_test(test_auth_es256_key_rotation_by_kid),
        cmocka_unit_test(test_auth_es256_private_pem_also_verifies),
        cmocka_unit_test(test_auth_es256_der_or_wrong_length_signature_refused),
        cmocka_unit_test(test_auth_es256_zero_signature_refused),
        cmocka_unit_test(test_auth_rejects_wrong_audience),
        cmocka_unit_test(test_auth_rejects_wrong_or_missing_issuer),
        cmocka_unit_test(test_auth_expired_within_leeway_accepted),
        cmocka_unit_test(test_auth_expired_beyond_leeway_is_token_expired),
        cmocka_unit_test(test_auth_leeway_is_configurable),
        cmocka_unit_test(test_auth_expired_and_forged_is_unauthenticated),
        cmocka_unit_test(test_auth_iat_in_future_beyond_leeway_refused),
        cmocka_unit_test(test_auth_nbf_in_future_refused),
        cmocka_unit_test(test_auth_missing_sub_exp_or_iat_refused),
        cmocka_unit_test(test_auth_exp_before_iat_refused),
        cmocka_unit_test(test_auth_sub_must_be_user_id_or_service_name),
        cmocka_unit_test(test_auth_malformed_tokens_refused),
        cmocka_unit_test(test_auth_non_canonical_base64_refused),
        cmocka_unit_test(test_auth_duplicate_claims_or_crit_refused),
        cmocka_unit_test(test_auth_oversized_token_refused),
        cmocka_unit_test(test_auth_mint_hs256_round_trip),
        cmocka_unit_test(test_auth_mint_es256_is_raw_r_s_and_verifies_independently),
        cmocka_unit_test(test_auth_mint_refuses_without_key_or_with_bad_actor),
        cmocka_unit_test(test_auth_mint_at_past_exp_gives_expired_token),
        cmocka_unit_test(test_auth_new_rejects_bad_key_config),
        cmocka_unit_test(test_auth_hs256_secret_may_contain_colons),
        cmocka_unit_test(test_auth_service_token_cached_then_renewed_before_expiry),
        cmocka_unit_test(test_auth_service_token_safe_from_many_threads),
        cmocka_unit_test(test_auth_verify_concurrently_from_many_threads),
        cmocka_unit_test(test_auth_real_clock_mint_then_verify),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
