/* test_ctoken.c — common/ctoken.c (issue 18, CONN-13): consistency tokens
 * round-trip, cannot be edited or forged, and a token of another cluster
 * (another key) or of a newer format is refused. Needs nothing running. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "ctoken.h"
#include "om_err.h"

#define EV1 "0f9a4c2e-1b3d-4e5f-8a7b-6c5d4e3f2a1b"
#define EV2 "a0000000-0000-4000-8000-00000000000f"

static void test_conn_13_token_roundtrip(void **state) {
    (void)state;
    ctoken t, d;
    ctoken_init(&t);
    assert_int_equal(ctoken_add(&t, "organizations", EV1), 0);
    assert_int_equal(ctoken_add(&t, "accounts", EV2), 0);
    char s[CTOKEN_MAX_LEN];
    assert_int_equal(ctoken_encode(&t, s), 0);
    assert_null(strpbrk(s, "+/=")); /* base64url, no padding */
    assert_int_equal(ctoken_decode(s, &d), 0);
    assert_int_equal(d.n, 2);
    assert_int_equal(d.issued_ms, t.issued_ms);
    assert_int_equal(d.ev[0].service, CTOKEN_ORGANIZATIONS);
    assert_int_equal(d.ev[1].service, CTOKEN_ACCOUNTS);
    char u[37];
    ctoken_event_uuid(&d.ev[0], u);
    assert_string_equal(u, EV1);
    ctoken_event_uuid(&d.ev[1], u);
    assert_string_equal(u, EV2);
}

static void test_conn_13_token_limits(void **state) {
    (void)state;
    ctoken t;
    ctoken_init(&t);
    char s[CTOKEN_MAX_LEN];
    assert_int_equal(ctoken_encode(&t, s), OM_E_INVALID_ARGUMENT); /* names nothing */
    assert_int_equal(ctoken_add(&t, "nosuch", EV1), OM_E_INVALID_ARGUMENT);
    assert_int_equal(ctoken_add(&t, "accounts", "not-a-uuid"), OM_E_INVALID_ARGUMENT);
    for (int i = 0; i < CTOKEN_MAX_EVENTS; i++) assert_int_equal(ctoken_add(&t, "connections", EV1), 0);
    assert_int_equal(ctoken_add(&t, "connections", EV1), OM_E_BATCH_TOO_LARGE);
    assert_int_equal(ctoken_encode(&t, s), 0);
    assert_true(strlen(s) < CTOKEN_MAX_LEN);
    ctoken d;
    assert_int_equal(ctoken_decode(s, &d), 0);
    assert_int_equal(d.n, CTOKEN_MAX_EVENTS);
}

/* Every single-character edit of a token is refused (the tag covers every
 * byte; non-canonical base64 is refused too). */
static void test_conn_13_token_edit_rejected(void **state) {
    (void)state;
    char s[CTOKEN_MAX_LEN], e[CTOKEN_MAX_LEN];
    assert_int_equal(ctoken_for_event("connections", EV1, s), 0);
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    ctoken d;
    for (size_t i = 0; s[i]; i++) {
        for (size_t k = 0; k < sizeof alphabet - 1; k += 7) {
            if (alphabet[k] == s[i]) continue;
            strcpy(e, s);
            e[i] = alphabet[k];
            assert_int_equal(ctoken_decode(e, &d), OM_E_INVALID_CONSISTENCY_TOKEN);
        }
    }
    assert_int_equal(ctoken_decode("", &d), OM_E_INVALID_CONSISTENCY_TOKEN);
    assert_int_equal(ctoken_decode("!!!!", &d), OM_E_INVALID_CONSISTENCY_TOKEN);
    assert_int_equal(ctoken_decode(NULL, &d), OM_E_INVALID_CONSISTENCY_TOKEN);
    strcpy(e, s);
    e[strlen(e) - 3] = '\0'; /* truncated */
    assert_int_equal(ctoken_decode(e, &d), OM_E_INVALID_CONSISTENCY_TOKEN);
}

/* Another cluster (another key) cannot hand this one a token. */
static void test_conn_13_token_other_key_rejected(void **state) {
    (void)state;
    char s[CTOKEN_MAX_LEN];
    ctoken d;
    assert_int_equal(ctoken_set_key("other-cluster", 13), 0);
    assert_int_equal(ctoken_for_event("organizations", EV1, s), 0);
    assert_int_equal(ctoken_decode(s, &d), 0);
    assert_int_equal(ctoken_set_key("unit-test-key", 13), 0);
    assert_int_equal(ctoken_decode(s, &d), OM_E_INVALID_CONSISTENCY_TOKEN);
}

/* A newer format (version byte 2) is refused: this build cannot know what
 * it promises (decode checks the version before the tag). */
static void test_conn_13_token_newer_version_rejected(void **state) {
    (void)state;
    char s[CTOKEN_MAX_LEN];
    assert_int_equal(ctoken_for_event("accounts", EV1, s), 0);
    /* the first 6 bits are the top of the version byte (1 = 000000|01...):
     * 'A' 'Q'... ; setting the version byte to 2 changes the 2nd char */
    assert_int_equal(s[0], 'A');
    char e[CTOKEN_MAX_LEN];
    strcpy(e, s);
    e[1] = (char)(e[1] == 'Q' ? 'g' : e[1]); /* 0x01 -> 0x02 in the top bits of the 2nd sextet */
    ctoken d;
    assert_int_equal(ctoken_decode(e, &d), OM_E_INVALID_CONSISTENCY_TOKEN);
}

/* Two replicas (processes) with the same configured key accept each
 * other's tokens: the key is derived from the environment only. */
static void test_conn_13_token_same_key_same_tag(void **state) {
    (void)state;
    ctoken t;
    ctoken_init(&t);
    t.issued_ms = 1700000000000;
    assert_int_equal(ctoken_add(&t, "partners", EV2), 0);
    char a[CTOKEN_MAX_LEN], b[CTOKEN_MAX_LEN];
    assert_int_equal(ctoken_encode(&t, a), 0);
    assert_int_equal(ctoken_set_key("unit-test-key", 13), 0);
    assert_int_equal(ctoken_encode(&t, b), 0);
    assert_string_equal(a, b);
}

int main(void) {
    setenv("ORGMESH_CONSISTENCY_TOKEN_KEY", "unit-test-key", 1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_conn_13_token_roundtrip),
        cmocka_unit_test(test_conn_13_token_limits),
        cmocka_unit_test(test_conn_13_token_edit_rejected),
        cmocka_unit_test(test_conn_13_token_other_key_rejected),
        cmocka_unit_test(test_conn_13_token_newer_version_rejected),
        cmocka_unit_test(test_conn_13_token_same_key_same_tag),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
