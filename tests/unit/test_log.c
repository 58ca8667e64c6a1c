/* test_log.c — every log line is one valid JSON object whatever the message
 * holds, carries the thread's own trace id, respects the minimum level, and
 * lines written by many threads at once never interleave. stderr is sent to a
 * temporary file and each line is parsed back with jansson. */
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

#include <jansson.h>

#include "log.h"

/* ---- capture ---------------------------------------------------------------- */

static int saved_stderr = -1;
static char cap_path[64];

static void capture_begin(void) {
    strcpy(cap_path, "/tmp/om_test_log_XXXXXX");
    int fd = mkstemp(cap_path);
    assert_true(fd >= 0);
    fflush(stderr);
    saved_stderr = dup(STDERR_FILENO);
    assert_true(saved_stderr >= 0);
    assert_true(dup2(fd, STDERR_FILENO) >= 0);
    close(fd);
}

/* Restores stderr and returns what was written (malloc'd). */
static char *capture_end(void) {
    fflush(stderr);
    dup2(saved_stderr, STDERR_FILENO);
    close(saved_stderr);
    FILE *f = fopen(cap_path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = '\0';
    fclose(f);
    unlink(cap_path);
    return buf;
}

/* Split into lines (each must end in '\n'); parse each as a JSON object. */
static size_t parse_lines(char *text, json_t **out, size_t max) {
    size_t n = 0;
    char *p = text;
    while (*p) {
        char *nl = strchr(p, '\n');
        assert_non_null(nl); /* every line is terminated */
        *nl = '\0';
        json_error_t err;
        json_t *j = json_loads(p, 0, &err);
        if (j == NULL) fail_msg("not JSON: %s (%s)", p, err.text);
        assert_true(json_is_object(j));
        assert_true(n < max);
        out[n++] = j;
        p = nl + 1;
    }
    return n;
}

static const char *field(json_t *j, const char *k) {
    json_t *v = json_object_get(j, k);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static int setup(void **state) {
    log_init("accounts", LOG_DEBUG);
    log_set_trace(NULL);
    return 0;
}

/* ---- tests -------------------------------------------------------------------- */

static void test_log_line_has_documented_fields(void **state) {
    log_set_trace("4bf92f3577b34da6a3ce929d0e0e4736");
    capture_begin();
    log_info("account %d created", 42);
    char *out = capture_end();
    json_t *lines[4];
    assert_int_equal(parse_lines(out, lines, 4), 1);
    assert_string_equal(field(lines[0], "level"), "info");
    assert_string_equal(field(lines[0], "service"), "accounts");
    assert_string_equal(field(lines[0], "trace_id"), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_string_equal(field(lines[0], "msg"), "account 42 created");
    /* "2026-11-23T07:17:22.123Z": UTC with milliseconds */
    const char *ts = field(lines[0], "ts");
    assert_non_null(ts);
    assert_int_equal(strlen(ts), 24);
    int y, mo, d, h, mi, s, ms;
    char z;
    assert_int_equal(sscanf(ts, "%4d-%2d-%2dT%2d:%2d:%2d.%3d%c", &y, &mo, &d, &h, &mi, &s, &ms, &z),
                     8);
    assert_int_equal(z, 'Z');
    assert_true(y >= 2024 && mo >= 1 && mo <= 12 && d >= 1 && d <= 31);
    json_decref(lines[0]);
    free(out);
    log_set_trace(NULL);
}

static void test_log_escapes_quotes_backslashes_and_control_chars(void **state) {
    const char *nasty = "say \"hi\"\\ then\nnew line\ttab\r\x01\x1f end";
    capture_begin();
    log_warn("%s", nasty);
    char *out = capture_end();
    /* One physical line, however many newlines the message had. */
    assert_non_null(strchr(out, '\n'));
    assert_int_equal(strchr(out, '\n')[1], '\0');
    json_t *lines[2];
    assert_int_equal(parse_lines(out, lines, 2), 1);
    assert_string_equal(field(lines[0], "msg"), nasty); /* round-trips exactly */
    assert_string_equal(field(lines[0], "level"), "warn");
    json_decref(lines[0]);
    free(out);
}

static void test_log_keeps_valid_utf8_and_replaces_invalid_bytes(void **state) {
    capture_begin();
    log_error("caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80"); /* valid */
    log_error(
        "bad \xff lone \x80 overlong \xc0\xaf surrogate \xed\xa0\x80 cut \xe6\x97"); /* invalid */
    char *out = capture_end();
    json_t *lines[3];
    assert_int_equal(parse_lines(out, lines, 3), 2); /* jansson rejects invalid UTF-8 */
    assert_string_equal(field(lines[0], "msg"),
                        "caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80");
    const char *m = field(lines[1], "msg");
    assert_non_null(strstr(m, "bad \xef\xbf\xbd lone \xef\xbf\xbd overlong"));
    assert_null(strstr(m, "\xff"));
    json_decref(lines[0]);
    json_decref(lines[1]);
    free(out);
}

static void test_log_below_min_level_is_dropped(void **state) {
    log_init("accounts", LOG_WARN);
    capture_begin();
    log_debug("hidden debug");
    log_info("hidden info");
    log_warn("shown warn");
    log_error("shown error");
    char *out = capture_end();
    json_t *lines[4];
    assert_int_equal(parse_lines(out, lines, 4), 2);
    assert_string_equal(field(lines[0], "msg"), "shown warn");
    assert_string_equal(field(lines[1], "level"), "error");
    json_decref(lines[0]);
    json_decref(lines[1]);
    free(out);
    log_init("accounts", LOG_DEBUG);
}

static void test_log_level_parse_names(void **state) {
    assert_int_equal(log_level_parse("debug"), LOG_DEBUG);
    assert_int_equal(log_level_parse("INFO"), LOG_INFO);
    assert_int_equal(log_level_parse("warn"), LOG_WARN);
    assert_int_equal(log_level_parse("warning"), LOG_WARN);
    assert_int_equal(log_level_parse("Error"), LOG_ERROR);
    assert_int_equal(log_level_parse("verbose"), -1);
    assert_int_equal(log_level_parse(""), -1);
    assert_int_equal(log_level_parse(NULL), -1);
}

static void test_log_long_message_is_kept_whole(void **state) {
    size_t n = 20000;
    char *big = malloc(n + 1);
    assert_non_null(big);
    for (size_t i = 0; i < n; i++) big[i] = (char)('a' + i % 26);
    big[n] = '\0';
    capture_begin();
    log_info("%s", big);
    char *out = capture_end();
    json_t *lines[2];
    assert_int_equal(parse_lines(out, lines, 2), 1);
    assert_string_equal(field(lines[0], "msg"), big);
    assert_null(json_object_get(lines[0], "truncated"));
    json_decref(lines[0]);
    free(out);
    free(big);
}

static void test_log_huge_message_is_cut_but_still_json(void **state) {
    size_t n = 200000;
    char *big = malloc(n + 1);
    assert_non_null(big);
    memset(big, '"', n); /* each byte doubles when escaped */
    big[n] = '\0';
    capture_begin();
    log_info("%s", big);
    char *out = capture_end();
    json_t *lines[2];
    assert_int_equal(parse_lines(out, lines, 2), 1);
    assert_true(json_is_true(json_object_get(lines[0], "truncated")));
    size_t got = strlen(field(lines[0], "msg"));
    assert_true(got > 1000 && got < n);
    json_decref(lines[0]);
    free(out);
    free(big);
}

/* ---- threads ------------------------------------------------------------------- */

#define THREADS 4
#define PER_THREAD 200

static void *log_worker(void *arg) {
    int id = (int)(intptr_t)arg;
    char trace[32];
    snprintf(trace, sizeof trace, "trace-%d", id);
    log_set_trace(id == 0 ? NULL : trace); /* thread 0 has no trace id */
    char pad[3000];                        /* long lines: a line written in pieces would show */
    memset(pad, 'x', sizeof pad - 1);
    pad[sizeof pad - 1] = '\0';
    for (int i = 0; i < PER_THREAD; i++) log_info("t=%d i=%d %s", id, i, pad);
    return NULL;
}

static void test_log_threads_never_interleave_and_keep_own_trace(void **state) {
    log_set_trace("main-trace");
    capture_begin();
    pthread_t th[THREADS];
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, log_worker, (void *)(intptr_t)i), 0);
    for (int i = 0; i < THREADS; i++) pthread_join(th[i], NULL);
    char *out = capture_end();
    json_t **lines = calloc(THREADS * PER_THREAD + 1, sizeof *lines);
    assert_non_null(lines);
    size_t n = parse_lines(out, lines, THREADS * PER_THREAD + 1);
    assert_int_equal(n, THREADS * PER_THREAD);
    int seen[THREADS] = {0};
    for (size_t k = 0; k < n; k++) {
        int t, i;
        assert_int_equal(sscanf(field(lines[k], "msg"), "t=%d i=%d", &t, &i), 2);
        assert_true(t >= 0 && t < THREADS);
        assert_int_equal(i, seen[t]); /* each thread's lines in its own order */
        seen[t]++;
        const char *tr = field(lines[k], "trace_id");
        if (t == 0) {
            assert_null(tr); /* not the main thread's id */
        } else {
            char want[32];
            snprintf(want, sizeof want, "trace-%d", t);
            assert_string_equal(tr, want);
        }
        json_decref(lines[k]);
    }
    free(lines);
    free(out);
    log_set_trace(NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_log_line_has_documented_fields, setup),
        cmocka_unit_test_setup(test_log_escapes_quotes_backslashes_and_control_chars, setup),
        cmocka_unit_test_setup(test_log_keeps_valid_utf8_and_replaces_invalid_bytes, setup),
        cmocka_unit_test_setup(test_log_below_min_level_is_dropped, setup),
        cmocka_unit_test(test_log_level_parse_names),
        cmocka_unit_test_setup(test_log_long_message_is_kept_whole, setup),
        cmocka_unit_test_setup(test_log_huge_message_is_cut_but_still_json, setup),
        cmocka_unit_test_setup(test_log_threads_never_interleave_and_keep_own_trace, setup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
