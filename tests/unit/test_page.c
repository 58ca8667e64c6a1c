/* test_page.c — common/page.c (SPEC 8 paging): page_size rules and page
 * tokens that round-trip, are bound to their list and filters, and cannot be
 * edited or forged. Needs nothing running. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/sha.h>

#include "om_err.h"
#include "page.h"

#define SCOPE "accounts.ListMemberships|hub=123"

static void test_page_size_default_cap_and_negative(void **state) {
    int n = -1;
    assert_int_equal(page_size_normalize(0, &n), 0);
    assert_int_equal(n, 50);
    assert_int_equal(page_size_normalize(1, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(page_size_normalize(1000, &n), 0);
    assert_int_equal(n, 1000);
    assert_int_equal(page_size_normalize(1001, &n), 0);
    assert_int_equal(n, 1000);
    assert_int_equal(page_size_normalize(INT32_MAX, &n), 0);
    assert_int_equal(n, 1000);
    n = 7;
    assert_int_equal(page_size_normalize(-1, &n), OM_E_INVALID_ARGUMENT);
    assert_int_equal(page_size_normalize(INT32_MIN, &n), OM_E_INVALID_ARGUMENT);
    assert_int_equal(n, 7);
}

static void test_page_token_roundtrip(void **state) {
    static const char *const cursors[] = {"123", "", "name with spaces|and\x1fseparators",
                                          "é/ü/日本"};
    for (size_t i = 0; i < sizeof cursors / sizeof cursors[0]; i++) {
        char *tok = NULL, *cur = NULL;
        assert_int_equal(page_token_encode(SCOPE, cursors[i], &tok), 0);
        assert_true(strlen(tok) > 0);
        assert_null(strpbrk(tok, "+/=")); /* base64url, unpadded: URL-safe */
        assert_int_equal(page_token_decode(SCOPE, tok, &cur), 0);
        assert_string_equal(cur, cursors[i]);
        free(tok);
        free(cur);
    }
}

static void test_page_token_last_and_first_page(void **state) {
    char *tok = NULL, *cur = (char *)"unchanged";
    assert_int_equal(page_token_encode(SCOPE, NULL, &tok), 0);
    assert_string_equal(tok, ""); /* no next page */
    free(tok);
    assert_int_equal(page_token_decode(SCOPE, "", &cur), 0);
    assert_null(cur);
    cur = (char *)"unchanged";
    assert_int_equal(page_token_decode(SCOPE, NULL, &cur), 0);
    assert_null(cur);
}

static void test_page_token_other_scope_rejected(void **state) {
    char *tok = NULL, *cur = NULL;
    assert_int_equal(page_token_encode(SCOPE, "42", &tok), 0);
    assert_int_equal(page_token_decode("accounts.ListMemberships|hub=124", tok, &cur),
                     OM_E_INVALID_PAGE_TOKEN);
    assert_int_equal(page_token_decode("accounts.ListUsers|hub=123", tok, &cur),
                     OM_E_INVALID_PAGE_TOKEN);
    assert_null(cur);
    free(tok);
}

/* Every single-character edit of a token is refused. */
static void test_page_token_tampered_rejected(void **state) {
    char *tok = NULL, *cur = NULL;
    assert_int_equal(page_token_encode(SCOPE, "1000", &tok), 0);
    size_t n = strlen(tok);
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    for (size_t i = 0; i < n; i++) {
        char orig = tok[i];
        for (const char *a = alphabet; *a; a++) {
            if (*a == orig) continue;
            tok[i] = *a;
            assert_int_equal(page_token_decode(SCOPE, tok, &cur), OM_E_INVALID_PAGE_TOKEN);
            assert_null(cur);
        }
        tok[i] = orig;
    }
    /* truncated, extended, padded, foreign characters */
    char buf[512];
    memcpy(buf, tok, n - 1);
    buf[n - 1] = '\0';
    assert_int_equal(page_token_decode(SCOPE, buf, &cur), OM_E_INVALID_PAGE_TOKEN);
    snprintf(buf, sizeof buf, "%sA", tok);
    assert_int_equal(page_token_decode(SCOPE, buf, &cur), OM_E_INVALID_PAGE_TOKEN);
    snprintf(buf, sizeof buf, "%s=", tok);
    assert_int_equal(page_token_decode(SCOPE, buf, &cur), OM_E_INVALID_PAGE_TOKEN);
    assert_int_equal(page_token_decode(SCOPE, "not a token!", &cur), OM_E_INVALID_PAGE_TOKEN);
    assert_int_equal(page_token_decode(SCOPE, "AAAA", &cur), OM_E_INVALID_PAGE_TOKEN);
    assert_int_equal(page_token_decode(SCOPE, tok, &cur), 0); /* the original still works */
    assert_string_equal(cur, "1000");
    free(cur);
    free(tok);
}

static void b64url(const uint8_t *in, size_t n, char *out) {
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        acc = acc << 8 | in[i];
        bits += 8;
        while (bits >= 6) {
            bits -= 6;
            out[o++] = t[(acc >> bits) & 63];
        }
    }
    if (bits > 0) out[o++] = t[(acc << (6 - bits)) & 63];
    out[o] = '\0';
}

/* A client who knows the format but not the key builds a token for another
 * cursor: version, scope hash, cursor, and a tag it has to guess. */
static void test_page_token_forged_cursor_rejected(void **state) {
    uint8_t raw[1 + 8 + 4 + 16] = {1};
    uint8_t h[SHA256_DIGEST_LENGTH];
    EVP_Digest(SCOPE, strlen(SCOPE), h, NULL, EVP_sha256(), NULL);
    memcpy(raw + 1, h, 8);
    memcpy(raw + 9, "9999", 4);
    memset(raw + 13, 0xab, 16);
    char tok[128], *cur = NULL;
    b64url(raw, sizeof raw, tok);
    assert_int_equal(page_token_decode(SCOPE, tok, &cur), OM_E_INVALID_PAGE_TOKEN);
    /* and a genuine token's tag does not fit another cursor */
    char *good = NULL;
    assert_int_equal(page_token_encode(SCOPE, "1000", &good), 0);
    size_t n = 0;
    uint8_t dec[256];
    /* decode the genuine token, swap the cursor, keep its tag */
    {
        static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        uint32_t acc = 0;
        int bits = 0;
        for (const char *p = good; *p; p++) {
            acc = acc << 6 | (uint32_t)(strchr(t, *p) - t);
            bits += 6;
            if (bits >= 8) {
                bits -= 8;
                dec[n++] = (uint8_t)(acc >> bits);
            }
        }
    }
    assert_int_equal(n, 1 + 8 + 4 + 16);
    memcpy(dec + 9, "9999", 4);
    b64url(dec, n, tok);
    assert_int_equal(page_token_decode(SCOPE, tok, &cur), OM_E_INVALID_PAGE_TOKEN);
    free(good);
}

/* Replicas share the key: a token made by one is read by another; a
 * replica with another key refuses it. */
static void test_page_token_key_shared_across_replicas(void **state) {
    char *tok = NULL, *cur = NULL;
    assert_int_equal(page_token_set_key("replica-key-1", 13), 0);
    assert_int_equal(page_token_encode(SCOPE, "77", &tok), 0);
    assert_int_equal(page_token_set_key("replica-key-1", 13), 0); /* "another process" */
    assert_int_equal(page_token_decode(SCOPE, tok, &cur), 0);
    assert_string_equal(cur, "77");
    free(cur);
    cur = NULL;
    assert_int_equal(page_token_set_key("replica-key-2", 13), 0);
    assert_int_equal(page_token_decode(SCOPE, tok, &cur), OM_E_INVALID_PAGE_TOKEN);
    free(tok);
    assert_int_equal(page_token_set_key("", 0), OM_E_INVALID_ARGUMENT);
}

static void test_page_token_limits(void **state) {
    char *big = malloc(PAGE_TOKEN_MAX + 2);
    memset(big, 'A', PAGE_TOKEN_MAX + 1);
    big[PAGE_TOKEN_MAX + 1] = '\0';
    char *cur = NULL, *tok = NULL;
    assert_int_equal(page_token_decode(SCOPE, big, &cur), OM_E_INVALID_PAGE_TOKEN);
    memset(big, 'x', PAGE_CURSOR_MAX + 1);
    big[PAGE_CURSOR_MAX + 1] = '\0';
    assert_int_not_equal(page_token_encode(SCOPE, big, &tok), 0); /* service bug: too long */
    big[PAGE_CURSOR_MAX] = '\0';
    assert_int_equal(page_token_encode(SCOPE, big, &tok), 0);
    assert_true(strlen(tok) <= PAGE_TOKEN_MAX);
    assert_int_equal(page_token_decode(SCOPE, tok, &cur), 0);
    assert_int_equal(strlen(cur), PAGE_CURSOR_MAX);
    free(cur);
    free(tok);
    free(big);
}

/* page_read (page_call.c): the keyset cursor of a list call, one or two
 * unsigned keys, never capped (partners' history cursor used to be an int
 * refused above 1e8, so its history stopped paging past audit id 1e8). */
static char *token_of(const char *cursor) {
    char *tok = NULL;
    assert_int_equal(page_token_encode(SCOPE, cursor, &tok), 0);
    return tok;
}

static void test_page_read_keyset_one_and_two_keys(void **state) {
    (void)state;
    page_req pg;
    assert_int_equal(page_read(0, "", SCOPE, 1, &pg), 0);
    assert_false(pg.more);
    assert_int_equal(pg.limit, 50);
    char *t1 = token_of("2500000000");
    assert_int_equal(page_read(10, t1, SCOPE, 1, &pg), 0);
    assert_true(pg.more);
    assert_int_equal(pg.limit, 10);
    assert_true(pg.k1 == 2500000000ULL);
    char *t2 = token_of("18446744073709551615:7");
    assert_int_equal(page_read(10, t2, SCOPE, 2, &pg), 0);
    assert_true(pg.k1 == UINT64_MAX && pg.k2 == 7);
    /* the other spelling, a sign, overflow, a non-digit: refused */
    assert_int_equal(page_read(10, t1, SCOPE, 2, &pg), OM_E_INVALID_PAGE_TOKEN);
    assert_int_equal(page_read(10, t2, SCOPE, 1, &pg), OM_E_INVALID_PAGE_TOKEN);
    const char *bad[] = {"-1", "+1", "18446744073709551616", "12a", ":", "1:", ":1", " 1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *t = token_of(bad[i]);
        int keys = strchr(bad[i], ':') ? 2 : 1;
        assert_int_equal(page_read(10, t, SCOPE, keys, &pg), OM_E_INVALID_PAGE_TOKEN);
        free(t);
    }
    assert_int_equal(page_read(-1, "", SCOPE, 1, &pg), OM_E_INVALID_ARGUMENT);
    free(t1);
    free(t2);
}

int main(void) {
    setenv("ORGMESH_PAGE_TOKEN_KEY", "unit-test-key", 1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_page_size_default_cap_and_negative),
        cmocka_unit_test(test_page_token_roundtrip),
        cmocka_unit_test(test_page_token_last_and_first_page),
        cmocka_unit_test(test_page_token_other_scope_rejected),
        cmocka_unit_test(test_page_token_tampered_rejected),
        cmocka_unit_test(test_page_token_forged_cursor_rejected),
        cmocka_unit_test(test_page_token_key_shared_across_replicas),
        cmocka_unit_test(test_page_token_limits),
        cmocka_unit_test(test_page_read_keyset_one_and_two_keys),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
