/* test_pbcheck.c — the generic request check (common/pbcheck.c): strict
 * UTF-8, Timestamp/Duration ranges, the field path of the first offence over
 * nested, repeated, oneof and map fields, the depth limit, and its speed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "om_err.h"
#include "om_time.h"
#include "pbcheck.h"
#include "pbcheck_test.pb-c.h"

static int utf8(const char *s, size_t n) {
    return pbcheck_utf8((const uint8_t *)s, n);
}

static void test_utf8_accepts_valid(void **state) {
    (void)state;
    assert_int_equal(utf8("", 0), 0);
    assert_int_equal(utf8("plain ascii, longer than eight bytes", 36), 0);
    assert_int_equal(utf8("caf\xc3\xa9", 5), 0);              /* U+00E9 */
    assert_int_equal(utf8("\xe2\x82\xac", 3), 0);             /* U+20AC */
    assert_int_equal(utf8("\xed\x9f\xbf", 3), 0);             /* U+D7FF, below surrogates */
    assert_int_equal(utf8("\xee\x80\x80", 3), 0);             /* U+E000, above them */
    assert_int_equal(utf8("\xf0\x9f\x98\x80", 4), 0);         /* U+1F600 */
    assert_int_equal(utf8("\xf4\x8f\xbf\xbf", 4), 0);         /* U+10FFFF */
    assert_int_equal(utf8("\xc2\x80", 2), 0);                 /* U+0080, smallest 2-byte */
}

static void test_utf8_refuses_invalid(void **state) {
    (void)state;
    assert_int_not_equal(utf8("\xff\xfe\xc0\xaf", 4), 0);     /* the issue's request id */
    assert_int_not_equal(utf8("\xc0\x80", 2), 0);             /* overlong NUL */
    assert_int_not_equal(utf8("\xc1\xbf", 2), 0);             /* overlong */
    assert_int_not_equal(utf8("\xe0\x80\x80", 3), 0);         /* overlong 3-byte */
    assert_int_not_equal(utf8("\xe0\x9f\xbf", 3), 0);         /* overlong 3-byte */
    assert_int_not_equal(utf8("\xf0\x80\x80\x80", 4), 0);     /* overlong 4-byte */
    assert_int_not_equal(utf8("\xf0\x8f\xbf\xbf", 4), 0);     /* overlong 4-byte */
    assert_int_not_equal(utf8("\xed\xa0\x80", 3), 0);         /* U+D800 surrogate */
    assert_int_not_equal(utf8("\xed\xbf\xbf", 3), 0);         /* U+DFFF surrogate */
    assert_int_not_equal(utf8("\xf4\x90\x80\x80", 4), 0);     /* U+110000 */
    assert_int_not_equal(utf8("\xf5\x80\x80\x80", 4), 0);
    assert_int_not_equal(utf8("\xe2\x82", 2), 0);             /* truncated */
    assert_int_not_equal(utf8("\x80", 1), 0);                 /* lone continuation */
    assert_int_not_equal(utf8("\xc3\x28", 2), 0);             /* bad continuation */
    assert_int_not_equal(utf8("a\0b", 3), 0);                 /* U+0000: PostgreSQL refuses it */
    /* after the eight-byte fast path */
    assert_int_not_equal(utf8("0123456789abcdef\xff", 17), 0);
    assert_int_not_equal(utf8("0123456789abcdef\0", 17), 0);
}

static void test_timestamp_and_duration_ranges(void **state) {
    (void)state;
    assert_int_equal(pbcheck_timestamp(-62135596800LL, 0), 0);        /* 0001-01-01T00:00:00Z */
    assert_int_equal(pbcheck_timestamp(253402300799LL, 999999999), 0); /* 9999-12-31T23:59:59Z */
    assert_int_equal(pbcheck_timestamp(0, 0), 0);
    assert_int_not_equal(pbcheck_timestamp(-62135596801LL, 0), 0);
    assert_int_not_equal(pbcheck_timestamp(253402300800LL, 0), 0);
    assert_int_not_equal(pbcheck_timestamp(INT64_MAX, 0), 0);
    assert_int_not_equal(pbcheck_timestamp(INT64_MIN, 0), 0);
    assert_int_not_equal(pbcheck_timestamp(0, -1), 0);
    assert_int_not_equal(pbcheck_timestamp(0, 1000000000), 0);

    assert_int_equal(pbcheck_duration(315576000000LL, 999999999), 0);
    assert_int_equal(pbcheck_duration(-315576000000LL, -999999999), 0);
    assert_int_equal(pbcheck_duration(0, -5), 0);
    assert_int_equal(pbcheck_duration(0, 5), 0);
    assert_int_not_equal(pbcheck_duration(315576000001LL, 0), 0);
    assert_int_not_equal(pbcheck_duration(-315576000001LL, 0), 0);
    assert_int_not_equal(pbcheck_duration(INT64_MIN, 0), 0);
    assert_int_not_equal(pbcheck_duration(1, -1), 0); /* signs differ */
    assert_int_not_equal(pbcheck_duration(-1, 1), 0);
    assert_int_not_equal(pbcheck_duration(0, 1000000000), 0);
    assert_int_not_equal(pbcheck_duration(0, -1000000000), 0);
}

/* The one conversion helper (om_time.h): no overflow for any input. */
static void test_om_time_conversions(void **state) {
    (void)state;
    int64_t us = 42;
    assert_false(om_timestamp_to_us(INT64_MAX, 0, &us));
    assert_false(om_timestamp_to_us(INT64_MIN, 0, &us));
    assert_false(om_timestamp_to_us(0, -1, &us));
    assert_int_equal(us, 42);
    assert_true(om_timestamp_to_us(PBCHECK_TIMESTAMP_MAX_SECONDS, 999999999, &us));
    assert_int_equal(us, OM_TIMESTAMP_MAX_US);
    assert_true(om_timestamp_to_us(-1, 500000000, &us));
    assert_int_equal(us, -500000);
    assert_int_equal(om_timestamp_us_clamped(INT64_MAX, 0), OM_TIMESTAMP_MAX_US);
    assert_int_equal(om_timestamp_us_clamped(INT64_MIN, 0), OM_TIMESTAMP_MIN_US);
    assert_int_equal(om_timestamp_us_clamped(1, 2000), 1000002);
    int64_t s;
    int32_t n;
    om_us_to_timestamp(-1, &s, &n);
    assert_int_equal(s, -1);
    assert_int_equal(n, 999999000);
    om_us_to_timestamp(INT64_MIN, &s, &n);
    assert_true(n >= 0 && n < 1000000000);
    om_us_to_timestamp(INT64_MAX, &s, &n);
    assert_true(n >= 0 && n < 1000000000);
    assert_int_equal(PBCHECK_TIMESTAMP_MIN_SECONDS, OM_TIMESTAMP_MIN_SECONDS);
}

/* ---- whole messages ---- */

typedef struct fixture {
    Orgmesh__Test__V1__CheckRequest req;
    Orgmesh__Test__V1__CheckItem items[5];
    Orgmesh__Test__V1__CheckItem *item_ptrs[5];
    Google__Protobuf__Timestamp times[5];
    char *tags[3];
    Orgmesh__Test__V1__CheckRequest__LabelsEntry labels[2];
    Orgmesh__Test__V1__CheckRequest__LabelsEntry *label_ptrs[2];
    Google__Protobuf__Duration wait;
} fixture;

static char good[] = "fine";
static char bad[] = "\xff\xfe\xc0\xaf";

static void fixture_init(fixture *f) {
    memset(f, 0, sizeof *f);
    orgmesh__test__v1__check_request__init(&f->req);
    f->req.request_id = good;
    for (int i = 0; i < 5; i++) {
        orgmesh__test__v1__check_item__init(&f->items[i]);
        google__protobuf__timestamp__init(&f->times[i]);
        f->times[i].seconds = 1700000000;
        f->items[i].name = good;
        f->items[i].time = &f->times[i];
        f->item_ptrs[i] = &f->items[i];
    }
    for (int i = 0; i < 3; i++) f->tags[i] = good;
    f->items[1].n_tags = 3;
    f->items[1].tags = f->tags;
    f->req.n_items = 5;
    f->req.items = f->item_ptrs;
    for (int i = 0; i < 2; i++) {
        orgmesh__test__v1__check_request__labels_entry__init(&f->labels[i]);
        f->labels[i].key = good;
        f->labels[i].value = good;
        f->label_ptrs[i] = &f->labels[i];
    }
    f->req.n_labels = 2;
    f->req.labels = f->label_ptrs;
    google__protobuf__duration__init(&f->wait);
    f->wait.seconds = 30;
    f->req.wait = &f->wait;
}

/* The path of the first offence, or "" when the message passes. */
static const char *check_path(const ProtobufCMessage *m, int *reason) {
    static char path[256];
    int r = 0;
    int rc = pbcheck_message_ex(m, path, sizeof path, &r);
    if (reason) *reason = r;
    if (rc == 0) return "";
    assert_int_equal(rc, OM_E_INVALID_ARGUMENT);
    return path;
}

static void test_message_paths(void **state) {
    (void)state;
    fixture f;
    int reason;
    fixture_init(&f);
    assert_int_equal(pbcheck_message(&f.req.base, NULL, 0), 0);

    f.req.request_id = bad;
    assert_string_equal(check_path(&f.req.base, &reason), "request_id");
    assert_int_equal(reason, OM_E_INVALID_UTF8);

    fixture_init(&f);
    f.items[0].name = bad;
    assert_string_equal(check_path(&f.req.base, &reason), "items[0].name");

    fixture_init(&f);
    f.tags[2] = bad;
    assert_string_equal(check_path(&f.req.base, &reason), "items[1].tags[2]");

    fixture_init(&f);
    f.times[3].seconds = INT64_MAX;
    assert_string_equal(check_path(&f.req.base, &reason), "items[3].time.seconds");
    assert_int_equal(reason, OM_E_TIMESTAMP_OUT_OF_RANGE);
    f.times[3].seconds = INT64_MIN;
    assert_string_equal(check_path(&f.req.base, &reason), "items[3].time.seconds");
    f.times[3].seconds = 0;
    f.times[3].nanos = -1;
    assert_string_equal(check_path(&f.req.base, &reason), "items[3].time.nanos");

    fixture_init(&f);
    f.labels[1].value = bad;
    assert_string_equal(check_path(&f.req.base, &reason), "labels[1].value");
    f.labels[1].value = good;
    f.labels[0].key = bad;
    assert_string_equal(check_path(&f.req.base, &reason), "labels[0].key");

    fixture_init(&f);
    f.wait.seconds = 5;
    f.wait.nanos = -5;
    assert_string_equal(check_path(&f.req.base, &reason), "wait.nanos");
    assert_int_equal(reason, OM_E_DURATION_OUT_OF_RANGE);
    f.wait.nanos = 0;
    f.wait.seconds = -315576000001LL;
    assert_string_equal(check_path(&f.req.base, &reason), "wait.seconds");

    /* bytes are not text */
    fixture_init(&f);
    f.req.blob.data = (uint8_t *)bad;
    f.req.blob.len = 4;
    assert_string_equal(check_path(&f.req.base, NULL), "");

    /* A top-level Timestamp: the leaf alone. */
    Google__Protobuf__Timestamp t = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
    t.nanos = 1000000000;
    assert_string_equal(check_path(&t.base, NULL), "nanos");
}

static void test_oneof_members(void **state) {
    (void)state;
    fixture f;
    fixture_init(&f);
    f.req.key_case = ORGMESH__TEST__V1__CHECK_REQUEST__KEY_EMAIL;
    f.req.email = bad;
    assert_string_equal(check_path(&f.req.base, NULL), "email");

    /* Another member set: its bits are not a string pointer. */
    fixture_init(&f);
    f.req.key_case = ORGMESH__TEST__V1__CHECK_REQUEST__KEY_NUMBER;
    f.req.number = 0x7fffffff12345678LL;
    assert_string_equal(check_path(&f.req.base, NULL), "");

    fixture_init(&f);
    Orgmesh__Test__V1__CheckItem it = ORGMESH__TEST__V1__CHECK_ITEM__INIT;
    Google__Protobuf__Timestamp t = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
    t.seconds = 253402300800LL;
    it.time = &t;
    f.req.key_case = ORGMESH__TEST__V1__CHECK_REQUEST__KEY_ITEM;
    f.req.item = &it;
    assert_string_equal(check_path(&f.req.base, NULL), "item.time.seconds");
}

static void test_depth_limit(void **state) {
    (void)state;
    enum { N = PBCHECK_MAX_DEPTH + 8 };
    Orgmesh__Test__V1__CheckNode nodes[N];
    for (int i = 0; i < N; i++) {
        orgmesh__test__v1__check_node__init(&nodes[i]);
        nodes[i].label = good;
        nodes[i].child = i + 1 < N ? &nodes[i + 1] : NULL;
    }
    /* within the limit: fine, and a bad string deep down is named */
    nodes[10].child = NULL;
    assert_string_equal(check_path(&nodes[0].base, NULL), "");
    nodes[10].label = bad;
    assert_string_equal(check_path(&nodes[0].base, NULL),
                        "child.child.child.child.child.child.child.child.child.child.label");
    nodes[10].label = good;
    nodes[10].child = &nodes[11];
    int reason = 0;
    check_path(&nodes[0].base, &reason);
    assert_int_equal(reason, OM_E_NESTING_TOO_DEEP);

    /* The same message off the wire: protobuf-c unpacks it, the check refuses it. */
    size_t n = protobuf_c_message_get_packed_size(&nodes[0].base);
    uint8_t *buf = malloc(n);
    assert_non_null(buf);
    protobuf_c_message_pack(&nodes[0].base, buf);
    ProtobufCMessage *m = protobuf_c_message_unpack(&orgmesh__test__v1__check_node__descriptor, NULL, n, buf);
    free(buf);
    assert_non_null(m);
    assert_int_equal(pbcheck_message(m, NULL, 0), OM_E_INVALID_ARGUMENT);
    protobuf_c_message_free_unpacked(m, NULL);
}

static void test_path_truncated_and_terminated(void **state) {
    (void)state;
    fixture f;
    fixture_init(&f);
    f.tags[2] = bad;
    char path[8];
    memset(path, 'x', sizeof path);
    assert_int_equal(pbcheck_message(&f.req.base, path, sizeof path), OM_E_INVALID_ARGUMENT);
    assert_string_equal(path, "items[1");
}

/* U+0000 is cut off by protobuf-c's unpack, so it is looked for in the bytes. */
static void test_nul_found_in_the_encoded_bytes(void **state) {
    (void)state;
    fixture f;
    fixture_init(&f);
    size_t n = protobuf_c_message_get_packed_size(&f.req.base);
    uint8_t *buf = malloc(n + 64);
    assert_non_null(buf);
    protobuf_c_message_pack(&f.req.base, buf);
    const ProtobufCMessageDescriptor *d = &orgmesh__test__v1__check_request__descriptor;
    char path[64];
    assert_int_equal(pbcheck_wire_nul(d, buf, n, path, sizeof path), 0);

    /* "fine" -> "fi\0e" in the third tag of items[1] */
    f.tags[2] = "fi@e";
    n = protobuf_c_message_get_packed_size(&f.req.base);
    protobuf_c_message_pack(&f.req.base, buf);
    uint8_t *at = memchr(buf, '@', n);
    assert_non_null(at);
    *at = 0;
    assert_int_equal(pbcheck_wire_nul(d, buf, n, path, sizeof path), OM_E_INVALID_ARGUMENT);
    assert_string_equal(path, "items[1].tags[2]");
    /* what a handler would have seen */
    ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, n, buf);
    assert_non_null(m);
    assert_string_equal(((Orgmesh__Test__V1__CheckRequest *)m)->items[1]->tags[2], "fi");
    protobuf_c_message_free_unpacked(m, NULL);

    /* bytes may hold NUL; so may a map value's key, which is a string: refused */
    fixture_init(&f);
    f.req.blob.data = (uint8_t *)"a\0b";
    f.req.blob.len = 3;
    f.labels[1].key = "k@";
    n = protobuf_c_message_get_packed_size(&f.req.base);
    protobuf_c_message_pack(&f.req.base, buf);
    assert_int_equal(pbcheck_wire_nul(d, buf, n, path, sizeof path), 0);
    at = memchr(buf, '@', n);
    *at = 0;
    assert_int_equal(pbcheck_wire_nul(d, buf, n, path, sizeof path), OM_E_INVALID_ARGUMENT);
    assert_string_equal(path, "labels[1].key");
    free(buf);
}

/* Field number 0 does not exist, but protobuf-c 1.4.1 decodes it when the tag
 * is written in two bytes (0x80 0x00) and then refuses its own re-encoding
 * (found by fuzz_rpc): the wire check refuses it as a malformed message. */
static void test_field_number_zero_refused(void **state) {
    (void)state;
    const ProtobufCMessageDescriptor *d = &orgmesh__test__v1__check_request__descriptor;
    /* varint field 0 in a two-byte tag, value 1 */
    static const uint8_t zero[] = {0x80, 0x00, 0x01};
    ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, sizeof zero, zero);
    if (m != NULL) protobuf_c_message_free_unpacked(m, NULL); /* what made it a finding */
    char path[64];
    int reason = -1;
    assert_int_equal(pbcheck_wire_ex(d, zero, sizeof zero, path, sizeof path, &reason),
                     OM_E_INVALID_ARGUMENT);
    assert_int_equal(reason, OM_E_MALFORMED_MESSAGE);
    assert_int_equal(pbcheck_wire_nul(d, zero, sizeof zero, path, sizeof path), OM_E_INVALID_ARGUMENT);
    /* field 1 in the same two-byte form is an ordinary field */
    static const uint8_t one[] = {0x88, 0x00, 0x01};
    assert_int_equal(pbcheck_wire_ex(d, one, sizeof one, path, sizeof path, &reason), 0);
    assert_int_equal(reason, 0);
}

/* The check runs on every request: time it on a large one (4 MiB class). */
static void test_speed_on_a_large_request(void **state) {
    (void)state;
    enum { ITEMS = 20000, TAGS = 4 };
    Orgmesh__Test__V1__CheckRequest req = ORGMESH__TEST__V1__CHECK_REQUEST__INIT;
    Orgmesh__Test__V1__CheckItem *items = calloc(ITEMS, sizeof *items);
    Orgmesh__Test__V1__CheckItem **ptrs = calloc(ITEMS, sizeof *ptrs);
    Google__Protobuf__Timestamp *times = calloc(ITEMS, sizeof *times);
    char *tags[TAGS];
    char name[161];
    /* mostly ASCII with some multi-byte text, as real names are */
    for (size_t i = 0; i < sizeof name - 1; i++) name[i] = (char)('a' + i % 26);
    memcpy(name + 40, "\xc3\xa9\xe2\x82\xac", 5);
    name[sizeof name - 1] = '\0';
    for (int i = 0; i < TAGS; i++) tags[i] = name;
    assert_non_null(items);
    assert_non_null(ptrs);
    assert_non_null(times);
    for (int i = 0; i < ITEMS; i++) {
        orgmesh__test__v1__check_item__init(&items[i]);
        google__protobuf__timestamp__init(&times[i]);
        times[i].seconds = 1700000000 + i;
        items[i].name = name;
        items[i].time = &times[i];
        items[i].n_tags = TAGS;
        items[i].tags = tags;
        ptrs[i] = &items[i];
    }
    req.n_items = ITEMS;
    req.items = ptrs;
    size_t bytes = protobuf_c_message_get_packed_size(&req.base);
    uint8_t *wire = malloc(bytes);
    assert_non_null(wire);
    protobuf_c_message_pack(&req.base, wire);
    struct timespec a, b;
    int rounds = 20;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int r = 0; r < rounds; r++) assert_int_equal(pbcheck_message(&req.base, NULL, 0), 0);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double us = ((double)(b.tv_sec - a.tv_sec) * 1e6 + (double)(b.tv_nsec - a.tv_nsec) / 1e3) / rounds;
    print_message("pbcheck_message: %zu-byte request, %d strings, %d timestamps: %.0f us (%.2f GB/s)\n",
                  bytes, ITEMS * (TAGS + 1), ITEMS, us, (double)bytes / us / 1e3);
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int r = 0; r < rounds; r++)
        assert_int_equal(pbcheck_wire_nul(&orgmesh__test__v1__check_request__descriptor, wire, bytes,
                                          NULL, 0),
                         0);
    clock_gettime(CLOCK_MONOTONIC, &b);
    us = ((double)(b.tv_sec - a.tv_sec) * 1e6 + (double)(b.tv_nsec - a.tv_nsec) / 1e3) / rounds;
    print_message("pbcheck_wire_nul: the same request: %.0f us (%.2f GB/s)\n", us,
                  (double)bytes / us / 1e3);
    free(wire);
    /* and a small request, as most are */
    fixture f;
    fixture_init(&f);
    enum { SMALL = 200000 };
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int r = 0; r < SMALL; r++) assert_int_equal(pbcheck_message(&f.req.base, NULL, 0), 0);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ns = ((double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec)) / SMALL;
    print_message("pbcheck_message: %zu-byte request (11 strings, 5 timestamps, a duration): %.0f ns\n",
                  protobuf_c_message_get_packed_size(&f.req.base), ns);
    free(items);
    free(ptrs);
    free(times);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_utf8_accepts_valid),
        cmocka_unit_test(test_utf8_refuses_invalid),
        cmocka_unit_test(test_timestamp_and_duration_ranges),
        cmocka_unit_test(test_om_time_conversions),
        cmocka_unit_test(test_message_paths),
        cmocka_unit_test(test_oneof_members),
        cmocka_unit_test(test_depth_limit),
        cmocka_unit_test(test_path_truncated_and_terminated),
        cmocka_unit_test(test_nul_found_in_the_encoded_bytes),
        cmocka_unit_test(test_field_number_zero_refused),
        cmocka_unit_test(test_speed_on_a_large_request),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
