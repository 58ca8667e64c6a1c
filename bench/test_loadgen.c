/* test_loadgen.c — the load generator's own tests. In process: the histogram,
 * request templates and reply expectations. Then the orgmesh-loadgen binary
 * (argv[1]) against an in-process server that serves only health: a wrong
 * reply and a non-OK status must be counted as errors, never as successes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <grpc/grpc.h>
#include <jansson.h>

#include "grpc/health/v1/health.pb-c.h"
#include "lg.h"
#include "log.h"
#include "orgmesh/accounts/v1/accounts.pb-c.h"
#include "rpc.h"

extern char **environ;

static const char *loadgen_bin;
static rpc_server *srv;
static char target[64];

/* ---- in process ------------------------------------------------------------ */

static void test_hist_percentiles(void **state) {
    (void)state;
    lg_hist *h = malloc(sizeof *h);
    lg_hist_init(h);
    assert_int_equal(lg_hist_pct(h, 50), 0);
    for (uint64_t v = 1; v <= 100000; v++) lg_hist_add(h, v);
    assert_int_equal(h->count, 100000);
    assert_int_equal(h->max, 100000);
    assert_int_equal(lg_hist_pct(h, 100), 100000);
    uint64_t p50 = lg_hist_pct(h, 50), p99 = lg_hist_pct(h, 99), p999 = lg_hist_pct(h, 99.9);
    /* log-linear buckets: within 1% */
    assert_in_range(p50, 50000, 50500);
    assert_in_range(p99, 99000, 99000 * 1.01);
    assert_in_range(p999, 99900, 100000);
    /* small values are exact */
    lg_hist_init(h);
    for (int i = 0; i < 99; i++) lg_hist_add(h, 7);
    lg_hist_add(h, 200);
    assert_int_equal(lg_hist_pct(h, 50), 7);
    assert_int_equal(lg_hist_pct(h, 99), 7);
    assert_int_equal(lg_hist_pct(h, 99.9), 200);
    /* merge */
    lg_hist *g = malloc(sizeof *g);
    lg_hist_init(g);
    lg_hist_add(g, 5000000);
    lg_hist_merge(h, g);
    assert_int_equal(h->count, 101);
    assert_int_equal(h->max, 5000000);
    assert_int_equal(h->min, 7);
    free(g);
    free(h);
}

static void test_find_method(void **state) {
    (void)state;
    const ProtobufCMethodDescriptor *m = lg_find_method("/orgmesh.accounts.v1.AccountsService/CreateAccount");
    assert_non_null(m);
    assert_ptr_equal(m->input, &orgmesh__accounts__v1__create_account_request__descriptor);
    assert_non_null(lg_find_method("/grpc.health.v1.Health/Check"));
    assert_null(lg_find_method("/orgmesh.accounts.v1.AccountsService/NoSuchThing"));
    assert_null(lg_find_method("/nope.Svc/Check"));
    assert_null(lg_find_method("grpc.health.v1.Health/Check"));
}

static void test_template_builds_nested_request(void **state) {
    (void)state;
    char err[256];
    lg_template t = {.desc = &orgmesh__accounts__v1__create_account_request__descriptor, .run_id = 77};
    assert_int_equal(lg_template_add(&t, "account.hub_id=seq:100", err, sizeof err), 0);
    assert_int_equal(lg_template_add(&t, "account.name=str:bench-%d-%r", err, sizeof err), 0);
    assert_int_equal(lg_template_add(&t, "account.kind=STANDARD", err, sizeof err), 0);
    assert_int_equal(lg_template_add(&t, "account.hosting_location=list:na1", err, sizeof err), 0);
    assert_int_equal(lg_template_add(&t, "account.mrr.currency_code=EUR", err, sizeof err), 0);
    assert_true(t.varies);
    /* mistakes are refused with a message */
    assert_int_not_equal(lg_template_add(&t, "account.nope=1", err, sizeof err), 0);
    assert_non_null(strstr(err, "nope"));
    assert_int_not_equal(lg_template_add(&t, "account.hub_id=abc", err, sizeof err), 0);
    assert_int_not_equal(lg_template_add(&t, "account.kind=NOT_A_KIND", err, sizeof err), 0);
    assert_int_not_equal(lg_template_add(&t, "account=1", err, sizeof err), 0);
    assert_int_not_equal(lg_template_add(&t, "account.hub_id=range:5:1", err, sizeof err), 0);

    lg_req r;
    uint64_t rng = 1;
    assert_int_equal(lg_req_init(&t, &r), 0);
    lg_req_vary(&t, &r, 5, &rng);
    uint8_t buf[512];
    size_t n = protobuf_c_message_pack(r.root, buf);
    Orgmesh__Accounts__V1__CreateAccountRequest *back =
        orgmesh__accounts__v1__create_account_request__unpack(NULL, n, buf);
    assert_non_null(back);
    assert_non_null(back->account);
    assert_int_equal(back->account->hub_id, 105);
    assert_string_equal(back->account->name, "bench-5-77");
    assert_int_equal(back->account->kind, ORGMESH__ACCOUNTS__V1__ACCOUNT_KIND__ACCOUNT_KIND_STANDARD);
    assert_string_equal(back->account->hosting_location, "na1");
    assert_non_null(back->account->mrr);
    assert_string_equal(back->account->mrr->currency_code, "EUR");
    protobuf_c_message_free_unpacked(&back->base, NULL);
    lg_req_free(&r);
    lg_template_free(&t);
}

static void test_range_stays_in_range(void **state) {
    (void)state;
    char err[256];
    lg_template t = {.desc = &orgmesh__accounts__v1__get_account_request__descriptor};
    assert_int_equal(lg_template_add(&t, "hub_id=range:10:13", err, sizeof err), 0);
    lg_req r;
    uint64_t rng = 42;
    int seen[4] = {0};
    assert_int_equal(lg_req_init(&t, &r), 0);
    for (int i = 0; i < 400; i++) {
        lg_req_vary(&t, &r, (uint64_t)i, &rng);
        uint64_t id = ((Orgmesh__Accounts__V1__GetAccountRequest *)r.root)->hub_id;
        assert_in_range(id, 10, 13);
        seen[id - 10]++;
    }
    for (int i = 0; i < 4; i++) assert_true(seen[i] > 50);
    lg_req_free(&r);
    lg_template_free(&t);
}

static void test_expectations(void **state) {
    (void)state;
    char err[256], why[256];
    lg_expects x = {.desc = &orgmesh__accounts__v1__get_account_response__descriptor,
                    .req_desc = &orgmesh__accounts__v1__get_account_request__descriptor};
    assert_int_equal(lg_expect_add(&x, "account.hub_id=@hub_id", err, sizeof err), 0);
    assert_int_equal(lg_expect_add(&x, "account.kind=PARTNER", err, sizeof err), 0);
    assert_int_equal(lg_expect_add(&x, "account.name!=", err, sizeof err), 0);
    assert_int_equal(lg_expect_add(&x, "account.etag!=stale", err, sizeof err), 0);
    assert_int_equal(lg_expect_add(&x, "account.subscriptions=0", err, sizeof err), 0);
    assert_int_not_equal(lg_expect_add(&x, "account=1", err, sizeof err), 0);
    assert_int_not_equal(lg_expect_add(&x, "account.bogus=1", err, sizeof err), 0);

    Orgmesh__Accounts__V1__GetAccountRequest req;
    orgmesh__accounts__v1__get_account_request__init(&req);
    req.hub_id = 42;
    Orgmesh__Accounts__V1__Account acc;
    orgmesh__accounts__v1__account__init(&acc);
    acc.hub_id = 42;
    acc.kind = ORGMESH__ACCOUNTS__V1__ACCOUNT_KIND__ACCOUNT_KIND_PARTNER;
    acc.name = "x";
    acc.etag = "fresh";
    Orgmesh__Accounts__V1__GetAccountResponse resp;
    orgmesh__accounts__v1__get_account_response__init(&resp);
    resp.account = &acc;
    assert_int_equal(lg_check(&x, &resp.base, &req.base, why, sizeof why), 0);

    acc.hub_id = 43; /* another account than asked for */
    assert_int_not_equal(lg_check(&x, &resp.base, &req.base, why, sizeof why), 0);
    assert_non_null(strstr(why, "hub_id"));
    acc.hub_id = 42;
    acc.kind = ORGMESH__ACCOUNTS__V1__ACCOUNT_KIND__ACCOUNT_KIND_STANDARD;
    assert_int_not_equal(lg_check(&x, &resp.base, &req.base, why, sizeof why), 0);
    acc.kind = ORGMESH__ACCOUNTS__V1__ACCOUNT_KIND__ACCOUNT_KIND_PARTNER;
    acc.name = "";
    assert_int_not_equal(lg_check(&x, &resp.base, &req.base, why, sizeof why), 0);
    acc.name = "x";
    acc.etag = "stale";
    assert_int_not_equal(lg_check(&x, &resp.base, &req.base, why, sizeof why), 0);
    acc.etag = "fresh";
    resp.account = NULL; /* an empty reply is not a right one */
    assert_int_not_equal(lg_check(&x, &resp.base, &req.base, why, sizeof why), 0);
    lg_expects_free(&x);
}

/* ---- the binary against a server ----------------------------------------------- */

static int start_server(void **state) {
    (void)state;
    log_init("test_loadgen", LOG_ERROR);
    grpc_init();
    rpc_server_opts o = {.service = "benchtest", .listen = "127.0.0.1:0", .workers = 2};
    if (rpc_server_new(&srv, &o) != 0) return -1;
    rpc_health_set(srv, "", true);
    rpc_health_set(srv, "good", true);
    rpc_health_set(srv, "bad", false);
    if (rpc_server_start(srv) != 0) return -1;
    snprintf(target, sizeof target, "127.0.0.1:%d", rpc_server_port(srv));
    return 0;
}

static int stop_server(void **state) {
    (void)state;
    rpc_server_stop(srv, 1000);
    rpc_server_free(srv);
    grpc_shutdown();
    return 0;
}

/* Runs orgmesh-loadgen with the given arguments (NULL-terminated) plus
 * --target and --json; returns its exit status and the parsed JSON. */
static int run_loadgen(json_t **out, ...) {
    char json_path[] = "/tmp/test_loadgen_XXXXXX";
    int fd = mkstemp(json_path);
    assert_true(fd >= 0);
    close(fd);
    const char *argv[64];
    int n = 0;
    argv[n++] = loadgen_bin;
    argv[n++] = "--target";
    argv[n++] = target;
    argv[n++] = "--json";
    argv[n++] = json_path;
    argv[n++] = "--quiet";
    va_list ap;
    va_start(ap, out);
    for (const char *a = va_arg(ap, const char *); a != NULL && n < 63; a = va_arg(ap, const char *)) argv[n++] = a;
    va_end(ap);
    argv[n] = NULL;
    pid_t pid;
    /* posix_spawn, not fork: this process runs gRPC */
    assert_int_equal(posix_spawn(&pid, loadgen_bin, NULL, NULL, (char *const *)argv, environ), 0);
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    json_error_t jerr;
    *out = json_load_file(json_path, 0, &jerr);
    unlink(json_path);
    return WEXITSTATUS(st);
}

static json_int_t jint(json_t *j, const char *key) {
    json_t *v = json_object_get(j, key);
    return v ? json_integer_value(v) : -1;
}

static json_int_t jstatus(json_t *j, const char *code) {
    json_t *v = json_object_get(json_object_get(j, "status"), code);
    return v ? json_integer_value(v) : 0;
}

static void test_right_replies_are_ok(void **state) {
    (void)state;
    json_t *j = NULL;
    int rc = run_loadgen(&j, "--method", "/grpc.health.v1.Health/Check", "--set", "service=good", "--expect",
                         "status=SERVING", "--count", "300", "--channels", "2", "--inflight", "4", NULL);
    assert_int_equal(rc, 0);
    assert_non_null(j);
    assert_int_equal(jint(j, "calls"), 300);
    assert_int_equal(jint(j, "ok"), 300);
    assert_int_equal(jint(j, "errors"), 0);
    assert_int_equal(jstatus(j, "OK"), 300);
    assert_true(json_real_value(json_object_get(j, "calls_per_s")) > 0);
    json_t *lat = json_object_get(j, "latency_us");
    assert_true(jint(lat, "p50") > 0);
    assert_true(jint(lat, "p50") <= jint(lat, "p99"));
    assert_true(jint(lat, "p99") <= jint(lat, "max"));
    json_decref(j);
}

/* An OK status with the wrong content is an error, not a success. */
static void test_wrong_reply_is_an_error(void **state) {
    (void)state;
    json_t *j = NULL;
    int rc = run_loadgen(&j, "--method", "/grpc.health.v1.Health/Check", "--set", "service=bad", "--expect",
                         "status=SERVING", "--count", "100", NULL);
    assert_int_equal(rc, 1);
    assert_non_null(j);
    assert_int_equal(jint(j, "calls"), 100);
    assert_int_equal(jint(j, "ok"), 0);
    assert_int_equal(jint(j, "errors"), 100);
    assert_int_equal(jint(j, "wrong_replies"), 100);
    assert_int_equal(jstatus(j, "OK"), 100);
    json_t *s0 = json_array_get(json_object_get(j, "error_samples"), 0);
    assert_non_null(s0);
    assert_non_null(strstr(json_string_value(s0), "NOT_SERVING"));
    json_decref(j);
}

/* A non-OK status is an error. */
static void test_non_ok_status_is_an_error(void **state) {
    (void)state;
    json_t *j = NULL;
    int rc = run_loadgen(&j, "--method", "/grpc.health.v1.Health/Check", "--set", "service=nope", "--count", "100",
                         NULL);
    assert_int_equal(rc, 1);
    assert_non_null(j);
    assert_int_equal(jint(j, "calls"), 100);
    assert_int_equal(jint(j, "ok"), 0);
    assert_int_equal(jint(j, "errors"), 100);
    assert_int_equal(jstatus(j, "NOT_FOUND"), 100);
    json_decref(j);
    /* unless that status is what the scenario expects */
    rc = run_loadgen(&j, "--method", "/grpc.health.v1.Health/Check", "--set", "service=nope", "--expect-status",
                     "NOT_FOUND", "--count", "50", NULL);
    assert_int_equal(rc, 0);
    assert_int_equal(jint(j, "ok"), 50);
    assert_int_equal(jint(j, "errors"), 0);
    json_decref(j);
    /* a method the server does not have: UNIMPLEMENTED, an error */
    rc = run_loadgen(&j, "--method", "/orgmesh.accounts.v1.AccountsService/GetAccount", "--set", "hub_id=1",
                     "--count", "20", NULL);
    assert_int_equal(rc, 1);
    assert_int_equal(jint(j, "errors"), 20);
    assert_int_equal(jstatus(j, "UNIMPLEMENTED"), 20);
    json_decref(j);
}

/* Keys from a list: each call is checked on its own. */
static void test_mixed_replies_are_counted_apart(void **state) {
    (void)state;
    json_t *j = NULL;
    int rc = run_loadgen(&j, "--method", "/grpc.health.v1.Health/Check", "--set", "service=list:good,bad,nope",
                         "--expect", "status=SERVING", "--count", "600", NULL);
    assert_int_equal(rc, 1);
    assert_int_equal(jint(j, "calls"), 600);
    assert_int_equal(jint(j, "ok") + jint(j, "errors"), 600);
    assert_true(jint(j, "ok") > 100);
    assert_true(jint(j, "wrong_replies") > 100);
    assert_true(jstatus(j, "NOT_FOUND") > 100);
    assert_int_equal(jint(j, "errors"), jint(j, "wrong_replies") + jstatus(j, "NOT_FOUND"));
    json_decref(j);
}

static void test_open_loop_keeps_the_rate(void **state) {
    (void)state;
    json_t *j = NULL;
    int rc = run_loadgen(&j, "--method", "/grpc.health.v1.Health/Check", "--rate", "400", "--duration", "1.5",
                         "--expect", "status=SERVING", NULL);
    assert_int_equal(rc, 0);
    assert_string_equal(json_string_value(json_object_get(j, "mode")), "open");
    assert_in_range(jint(j, "calls"), 540, 660);
    assert_int_equal(jint(j, "errors"), 0);
    json_decref(j);
}

static void test_no_server_is_a_setup_error(void **state) {
    (void)state;
    json_t *j = NULL;
    char saved[64];
    snprintf(saved, sizeof saved, "%s", target);
    snprintf(target, sizeof target, "127.0.0.1:1");
    int rc = run_loadgen(&j, "--method", "/grpc.health.v1.Health/Check", "--count", "5", "--connect-timeout-ms",
                         "300", NULL);
    snprintf(target, sizeof target, "%s", saved);
    assert_int_equal(rc, 2);
    json_decref(j);
}

static void test_bad_usage(void **state) {
    (void)state;
    json_t *j = NULL;
    assert_int_equal(run_loadgen(&j, "--method", "/grpc.health.v1.Health/Check", "--set", "nosuch=1", NULL), 2);
    json_decref(j);
    assert_int_equal(run_loadgen(&j, "--method", "/nope.Svc/X", NULL), 2);
    json_decref(j);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s <path of orgmesh-loadgen>\n", argv[0]);
        return 2;
    }
    loadgen_bin = argv[1];
    const struct CMUnitTest unit[] = {
        cmocka_unit_test(test_hist_percentiles),
        cmocka_unit_test(test_find_method),
        cmocka_unit_test(test_template_builds_nested_request),
        cmocka_unit_test(test_range_stays_in_range),
        cmocka_unit_test(test_expectations),
    };
    const struct CMUnitTest e2e[] = {
        cmocka_unit_test(test_right_replies_are_ok),
        cmocka_unit_test(test_wrong_reply_is_an_error),
        cmocka_unit_test(test_non_ok_status_is_an_error),
        cmocka_unit_test(test_mixed_replies_are_counted_apart),
        cmocka_unit_test(test_open_loop_keeps_the_rate),
        cmocka_unit_test(test_no_server_is_a_setup_error),
        cmocka_unit_test(test_bad_usage),
    };
    int failed = cmocka_run_group_tests_name("loadgen_unit", unit, NULL, NULL);
    failed += cmocka_run_group_tests_name("loadgen_against_server", e2e, start_server, stop_server);
    return failed ? 1 : 0;
}
