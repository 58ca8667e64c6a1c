/* test_config.c — ORGMESH_* variables are read as documented (config.h), and
 * a bad value stops the process with status 2 and a message naming the
 * variable. The failing cases run in a child process. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "config.h"

#define VAR "ORGMESH_TEST_CONFIG_VALUE"

typedef struct child_result {
    int exited;    /* 1 when the child exited (rather than being killed) */
    int status;    /* its exit status */
    char err[512]; /* what it wrote on stderr */
} child_result;

/* Run fn in a child with VAR=value and stderr captured. A child whose call
 * returns exits 0, so a status of 2 can only come from the config module. */
static child_result run_child(const char *value, void (*fn)(void)) {
    child_result r = {0};
    int p[2];
    assert_int_equal(pipe(p), 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        dup2(p[1], STDERR_FILENO);
        setenv(VAR, value, 1);
        fn();
        _exit(0);
    }
    close(p[1]);
    size_t n = 0;
    ssize_t k;
    while (n < sizeof r.err - 1 && (k = read(p[0], r.err + n, sizeof r.err - 1 - n)) > 0)
        n += (size_t)k;
    r.err[n] = '\0';
    close(p[0]);
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    r.exited = WIFEXITED(st);
    r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    return r;
}

static void call_int_0_100(void) { (void)cfg_int(VAR, 5, 0, 100); }
static void call_bool(void) { (void)cfg_bool(VAR, false); }

static void assert_config_exit(const char *value, void (*fn)(void)) {
    child_result r = run_child(value, fn);
    assert_true(r.exited);
    assert_int_equal(r.status, 2);
    /* The message names the variable, so an operator knows what to fix. */
    assert_non_null(strstr(r.err, VAR));
}

static void test_cfg_str_unset_or_empty_gives_default(void **state) {
    unsetenv(VAR);
    assert_string_equal(cfg_str(VAR, "dflt"), "dflt");
    assert_null(cfg_str(VAR, NULL));
    setenv(VAR, "", 1);
    assert_string_equal(cfg_str(VAR, "dflt"), "dflt");
    setenv(VAR, "redis://x:6379", 1);
    assert_string_equal(cfg_str(VAR, "dflt"), "redis://x:6379");
    unsetenv(VAR);
}

static void test_cfg_int_reads_value_or_default(void **state) {
    unsetenv(VAR);
    assert_int_equal(cfg_int(VAR, 7, 0, 100), 7);
    setenv(VAR, "", 1);
    assert_int_equal(cfg_int(VAR, 7, 0, 100), 7);
    setenv(VAR, "42", 1);
    assert_int_equal(cfg_int(VAR, 7, 0, 100), 42);
    setenv(VAR, "-3", 1);
    assert_int_equal(cfg_int(VAR, 7, -10, 10), -3);
    setenv(VAR, "100", 1); /* bounds are inclusive */
    assert_int_equal(cfg_int(VAR, 7, 0, 100), 100);
    setenv(VAR, "9223372036854775807", 1);
    assert_true(cfg_int(VAR, 0, 0, INT64_MAX) == INT64_MAX);
    unsetenv(VAR);
}

static void test_cfg_int_non_integer_exits_2_naming_variable(void **state) {
    assert_config_exit("abc", call_int_0_100);
    assert_config_exit("12abc", call_int_0_100);
    assert_config_exit(" 12", call_int_0_100);
    assert_config_exit("0x10", call_int_0_100);
    assert_config_exit("1.5", call_int_0_100);
    assert_config_exit("-", call_int_0_100);
}

static void test_cfg_int_out_of_range_exits_2_naming_variable(void **state) {
    assert_config_exit("101", call_int_0_100);
    assert_config_exit("-1", call_int_0_100);
    assert_config_exit("99999999999999999999999", call_int_0_100);
}

static void test_cfg_int_valid_value_does_not_exit(void **state) {
    child_result r = run_child("50", call_int_0_100);
    assert_true(r.exited);
    assert_int_equal(r.status, 0);
    assert_string_equal(r.err, "");
}

static void test_cfg_bool_accepts_common_spellings(void **state) {
    const char *yes[] = {"1", "true", "TRUE", "yes", "On"};
    const char *no[] = {"0", "false", "No", "off", "OFF"};
    for (size_t i = 0; i < 5; i++) {
        setenv(VAR, yes[i], 1);
        assert_true(cfg_bool(VAR, false));
        setenv(VAR, no[i], 1);
        assert_false(cfg_bool(VAR, true));
    }
    unsetenv(VAR);
    assert_true(cfg_bool(VAR, true));
    assert_false(cfg_bool(VAR, false));
    setenv(VAR, "", 1);
    assert_true(cfg_bool(VAR, true));
    unsetenv(VAR);
}

static void test_cfg_bool_garbage_exits_2_naming_variable(void **state) {
    assert_config_exit("maybe", call_bool);
    assert_config_exit("2", call_bool);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cfg_str_unset_or_empty_gives_default),
        cmocka_unit_test(test_cfg_int_reads_value_or_default),
        cmocka_unit_test(test_cfg_int_non_integer_exits_2_naming_variable),
        cmocka_unit_test(test_cfg_int_out_of_range_exits_2_naming_variable),
        cmocka_unit_test(test_cfg_int_valid_value_does_not_exit),
        cmocka_unit_test(test_cfg_bool_accepts_common_spellings),
        cmocka_unit_test(test_cfg_bool_garbage_exits_2_naming_variable),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
