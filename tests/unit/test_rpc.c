/* test_rpc.c — the RPC runtime (common/rpc_*.c) end to end over loopback:
 * a real gRPC server with a test service, called through the runtime's own
 * client. Needs no PostgreSQL or Redis. */
#include <pthread.h>
#include <setjmp.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <grpc/grpc.h>

#include "auth.h"
#include "grpc/health/v1/health.pb-c.h"
#include "log.h"
#include "rpc.h"
#include "rpc_test.pb-c.h"

#define SECRET "test-secret-for-rpc"

static auth_ctx *auth;
static rpc_server *srv;
static rpc_client *cli;
static char *user_token;
static char *service_token;

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int64_t mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- the test service ---- */

static atomic_int echo_started; /* handlers entered, for tests that wait on them */

static int do_echo(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_) {
    const Orgmesh__Test__V1__EchoRequest *req = (const void *)req_;
    atomic_fetch_add(&echo_started, 1);
    Orgmesh__Test__V1__EchoResponse *resp = (void *)resp_;
    for (int waited = 0; waited < req->sleep_ms; waited += 10) {
        if (rpc_cancelled(ctx))
            return rpc_fail(ctx, rpc_time_left_ms(ctx) <= 0 ? OM_E_DEADLINE_EXCEEDED : OM_E_CANCELLED,
                            NULL);
        sleep_ms(10);
    }
    const om_actor *a = rpc_actor(ctx);
    resp->text = rpc_strdup(ctx, req->text);
    resp->actor = a->service[0] ? rpc_sprintf(ctx, "service:%s", a->service)
                                : rpc_sprintf(ctx, "user:%llu", (unsigned long long)a->user_id);
    resp->trace_id = rpc_strdup(ctx, rpc_trace_id(ctx));
    return 0;
}

/* Inline, but defers to a worker when asked to ("defer"): the reply says
 * where it was answered. */
static int do_echo_inline(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_) {
    const Orgmesh__Test__V1__EchoRequest *req = (const void *)req_;
    if (req->text != NULL && strcmp(req->text, "defer") == 0) {
        if (!rpc_on_worker(ctx)) {
            rpc_violation(ctx, "text", "recorded before deferring: must be discarded");
            return RPC_DEFER;
        }
        int rc = do_echo(ctx, req_, resp_);
        ((Orgmesh__Test__V1__EchoResponse *)resp_)->text = "answered-by-worker";
        return rc;
    }
    if (rpc_on_worker(ctx)) return rpc_fail(ctx, OM_E_INTERNAL, "an inline call ran on a worker");
    return do_echo(ctx, req_, resp_);
}

static int do_fail(rpc_ctx *ctx, const ProtobufCMessage *req_, ProtobufCMessage *resp_) {
    (void)req_;
    (void)resp_;
    rpc_violation(ctx, "text", "must not be %s", "empty");
    rpc_violation(ctx, "sleep_ms", "must be positive");
    rpc_error_meta(ctx, "hint", "try again");
    return rpc_fail_invalid(ctx);
}

static const rpc_method echo_methods[] = {
    {"Echo", do_echo, 0},
    {"EchoInline", do_echo_inline, RPC_INLINE},
    {"Fail", do_fail, 0},
    {"Internal", do_echo, RPC_INTERNAL},
    {NULL, NULL, 0},
};
static const rpc_service echo_service = {&orgmesh__test__v1__echo_service__descriptor, echo_methods};

static rpc_server *start_server_with(int workers) {
    rpc_server *s = NULL;
    rpc_server_opts o = {.service = "test", .listen = "127.0.0.1:0", .workers = workers};
    assert_int_equal(rpc_server_new(&s, &o), 0);
    assert_int_equal(rpc_server_add(s, &echo_service), 0);
    rpc_server_set_auth(s, auth);
    rpc_health_set(s, "", true);
    assert_int_equal(rpc_server_start(s), 0);
    assert_true(rpc_server_port(s) > 0);
    return s;
}

static rpc_server *start_server(void) {
    return start_server_with(4);
}

static rpc_client *connect_to(rpc_server *s) {
    char target[64];
    snprintf(target, sizeof target, "127.0.0.1:%d", rpc_server_port(s));
    rpc_client *c = NULL;
    assert_int_equal(rpc_client_new(&c, target), 0);
    return c;
}

static int setup(void **state) {
    (void)state;
    log_init("test", LOG_ERROR);
    grpc_init();
    auth_config ac = {.issuer = "orgmesh-test",
                      .audience = "orgmesh",
                      .keys = "k1:HS256:" SECRET,
                      .signing_key = "k1:HS256:" SECRET,
                      .leeway_s = 30};
    if (auth_new(&auth, &ac) != 0) return -1;
    om_actor user = {.user_id = 42};
    om_actor svc = {0};
    snprintf(svc.service, sizeof svc.service, "partners");
    if (auth_mint(auth, &user, 600, &user_token) != 0) return -1;
    if (auth_mint(auth, &svc, 600, &service_token) != 0) return -1;
    srv = start_server();
    cli = connect_to(srv);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    rpc_client_free(cli);
    rpc_server_stop(srv, 1000);
    rpc_server_free(srv);
    free(user_token);
    free(service_token);
    auth_free(auth);
    grpc_shutdown();
    return 0;
}

static int call_echo(const char *method, const char *text, int sleep, const char *token,
                     int deadline_ms, Orgmesh__Test__V1__EchoResponse **resp, rpc_status *st) {
    Orgmesh__Test__V1__EchoRequest req = ORGMESH__TEST__V1__ECHO_REQUEST__INIT;
    req.text = (char *)text;
    req.sleep_ms = sleep;
    rpc_call_opts o = {.token = token, .deadline_ms = deadline_ms, .trace_id = "trace-abc"};
    char path[128];
    snprintf(path, sizeof path, "/orgmesh.test.v1.EchoService/%s", method);
    return rpc_client_call(cli, path, &req.base, &orgmesh__test__v1__echo_response__descriptor,
                           (ProtobufCMessage **)resp, &o, st);
}

/* ---- tests ---- */

static void test_rpc_echo_on_worker_and_inline(void **state) {
    (void)state;
    const char *methods[] = {"Echo", "EchoInline"};
    for (int i = 0; i < 2; i++) {
        Orgmesh__Test__V1__EchoResponse *resp = NULL;
        rpc_status st;
        assert_int_equal(call_echo(methods[i], "hello", 0, user_token, 2000, &resp, &st), 0);
        assert_string_equal(resp->text, "hello");
        assert_string_equal(resp->actor, "user:42");
        assert_string_equal(resp->trace_id, "trace-abc"); /* passed on from metadata */
        protobuf_c_message_free_unpacked(&resp->base, NULL);
    }
}

/* RPC_DEFER: an inline handler that cannot answer at once is run again on a
 * worker, whose answer (and only its answer) reaches the client. */
static void test_rpc_inline_defer_answered_by_worker(void **state) {
    (void)state;
    for (int i = 0; i < 20; i++) {
        Orgmesh__Test__V1__EchoResponse *resp = NULL;
        rpc_status st;
        assert_int_equal(call_echo("EchoInline", "defer", 0, user_token, 2000, &resp, &st), 0);
        assert_string_equal(resp->text, "answered-by-worker");
        assert_string_equal(resp->actor, "user:42");
        assert_string_equal(resp->trace_id, "trace-abc");
        protobuf_c_message_free_unpacked(&resp->base, NULL);
    }
}

static void test_rpc_health_check_needs_no_token(void **state) {
    (void)state;
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    Grpc__Health__V1__HealthCheckResponse *resp = NULL;
    rpc_status st;
    int rc = rpc_client_call(cli, "/grpc.health.v1.Health/Check", &req.base,
                             &grpc__health__v1__health_check_response__descriptor,
                             (ProtobufCMessage **)&resp, NULL, &st);
    assert_int_equal(rc, 0);
    assert_int_equal(resp->status, GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
    protobuf_c_message_free_unpacked(&resp->base, NULL);

    /* A name reported on its own ("redis") and an unknown one. */
    rpc_health_set(srv, "redis", false);
    req.service = "redis";
    assert_int_equal(rpc_client_call(cli, "/grpc.health.v1.Health/Check", &req.base,
                                     &grpc__health__v1__health_check_response__descriptor,
                                     (ProtobufCMessage **)&resp, NULL, &st),
                     0);
    assert_int_equal(resp->status,
                     GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING);
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    req.service = "no.such.Service";
    rc = rpc_client_call(cli, "/grpc.health.v1.Health/Check", &req.base,
                         &grpc__health__v1__health_check_response__descriptor,
                         (ProtobufCMessage **)&resp, NULL, &st);
    assert_int_equal(st.code, GRPC_STATUS_NOT_FOUND);
}

static void test_rpc_unknown_method_is_unimplemented_at_once(void **state) {
    (void)state;
    Orgmesh__Test__V1__EchoResponse *resp = NULL;
    rpc_status st;
    int64_t t0 = mono_ms();
    int rc = call_echo("NoSuchMethod", "x", 0, user_token, 5000, &resp, &st);
    assert_int_equal(rc, OM_E_UNIMPLEMENTED);
    assert_int_equal(st.code, GRPC_STATUS_UNIMPLEMENTED);
    assert_true(mono_ms() - t0 < 1000);
    /* In the descriptor but without a handler. */
    rc = call_echo("NotImplemented", "x", 0, user_token, 5000, &resp, &st);
    assert_int_equal(st.code, GRPC_STATUS_UNIMPLEMENTED);
    assert_true(mono_ms() - t0 < 2000);
}

static void test_rpc_missing_or_forged_token_unauthenticated(void **state) {
    (void)state;
    Orgmesh__Test__V1__EchoResponse *resp = NULL;
    rpc_status st;
    assert_int_equal(call_echo("Echo", "x", 0, NULL, 2000, &resp, &st), OM_E_UNAUTHENTICATED);
    assert_int_equal(st.code, GRPC_STATUS_UNAUTHENTICATED);
    assert_string_equal(st.reason, "UNAUTHENTICATED");

    /* The same claims signed with another secret. */
    auth_ctx *other = NULL;
    auth_config ac = {.issuer = "orgmesh-test",
                      .audience = "orgmesh",
                      .keys = "k1:HS256:another-secret",
                      .signing_key = "k1:HS256:another-secret"};
    assert_int_equal(auth_new(&other, &ac), 0);
    om_actor user = {.user_id = 42};
    char *forged = NULL;
    assert_int_equal(auth_mint(other, &user, 600, &forged), 0);
    assert_int_equal(call_echo("EchoInline", "x", 0, forged, 2000, &resp, &st), OM_E_UNAUTHENTICATED);
    assert_int_equal(st.code, GRPC_STATUS_UNAUTHENTICATED);
    free(forged);
    auth_free(other);
}

static void test_rpc_error_carries_reason_and_field_violations(void **state) {
    (void)state;
    Orgmesh__Test__V1__EchoResponse *resp = NULL;
    rpc_status st;
    int rc = call_echo("Fail", "x", 0, user_token, 2000, &resp, &st);
    assert_int_equal(rc, OM_E_INVALID_ARGUMENT);
    assert_int_equal(st.code, GRPC_STATUS_INVALID_ARGUMENT);
    assert_string_equal(st.reason, "INVALID_ARGUMENT");
    assert_non_null(strstr(st.message, "2 fields"));
    assert_null(resp);
}

static void test_rpc_internal_method_needs_service_identity(void **state) {
    (void)state;
    Orgmesh__Test__V1__EchoResponse *resp = NULL;
    rpc_status st;
    int rc = call_echo("Internal", "x", 0, user_token, 2000, &resp, &st);
    assert_int_equal(rc, OM_E_SERVICE_IDENTITY_REQUIRED);
    assert_int_equal(st.code, GRPC_STATUS_PERMISSION_DENIED);
    rc = call_echo("Internal", "y", 0, service_token, 2000, &resp, &st);
    assert_int_equal(rc, 0);
    assert_string_equal(resp->actor, "service:partners");
    protobuf_c_message_free_unpacked(&resp->base, NULL);
}

static void test_rpc_deadline_is_honoured(void **state) {
    (void)state;
    Orgmesh__Test__V1__EchoResponse *resp = NULL;
    rpc_status st;
    int64_t t0 = mono_ms();
    int rc = call_echo("Echo", "slow", 3000, user_token, 200, &resp, &st);
    assert_int_equal(rc, OM_E_DEADLINE_EXCEEDED);
    assert_int_equal(st.code, GRPC_STATUS_DEADLINE_EXCEEDED);
    assert_true(mono_ms() - t0 < 1500);
}

static void test_rpc_oversized_message_refused(void **state) {
    (void)state;
    Orgmesh__Test__V1__EchoRequest req = ORGMESH__TEST__V1__ECHO_REQUEST__INIT;
    size_t n = 5 * 1024 * 1024;
    uint8_t *blob = calloc(1, n);
    assert_non_null(blob);
    req.blob.data = blob;
    req.blob.len = n;
    rpc_call_opts o = {.token = user_token, .deadline_ms = 5000};
    Orgmesh__Test__V1__EchoResponse *resp = NULL;
    rpc_status st;
    rpc_client_call(cli, "/orgmesh.test.v1.EchoService/Echo", &req.base,
                    &orgmesh__test__v1__echo_response__descriptor, (ProtobufCMessage **)&resp, &o,
                    &st);
    free(blob);
    assert_int_equal(st.code, GRPC_STATUS_RESOURCE_EXHAUSTED);
    assert_null(resp);
}

static void test_rpc_malformed_request_invalid_argument(void **state) {
    (void)state;
    Orgmesh__Test__V1__BadEchoRequest bad = ORGMESH__TEST__V1__BAD_ECHO_REQUEST__INIT;
    bad.text = 0x4141414141414141ULL;
    rpc_call_opts o = {.token = user_token, .deadline_ms = 2000};
    Orgmesh__Test__V1__EchoResponse *resp = NULL;
    rpc_status st;
    int rc = rpc_client_call(cli, "/orgmesh.test.v1.EchoService/Echo", &bad.base,
                             &orgmesh__test__v1__echo_response__descriptor,
                             (ProtobufCMessage **)&resp, &o, &st);
    assert_int_equal(rc, OM_E_MALFORMED_MESSAGE);
    assert_int_equal(st.code, GRPC_STATUS_INVALID_ARGUMENT);
}

typedef struct slow_call {
    rpc_client *c;
    int rc;
} slow_call;

static void *slow_main(void *arg) {
    slow_call *sc = arg;
    Orgmesh__Test__V1__EchoRequest req = ORGMESH__TEST__V1__ECHO_REQUEST__INIT;
    req.text = "drain";
    req.sleep_ms = 600;
    rpc_call_opts o = {.token = user_token, .deadline_ms = 5000};
    Orgmesh__Test__V1__EchoResponse *resp = NULL;
    rpc_status st;
    sc->rc = rpc_client_call(sc->c, "/orgmesh.test.v1.EchoService/Echo", &req.base,
                             &orgmesh__test__v1__echo_response__descriptor,
                             (ProtobufCMessage **)&resp, &o, &st);
    if (resp) protobuf_c_message_free_unpacked(&resp->base, NULL);
    return NULL;
}

static void test_rpc_stop_drains_calls_in_flight(void **state) {
    (void)state;
    rpc_server *s = start_server();
    slow_call sc = {.c = connect_to(s), .rc = -1};
    pthread_t th;
    pthread_create(&th, NULL, slow_main, &sc);
    sleep_ms(150); /* the call is running in a worker */
    int64_t t0 = mono_ms();
    rpc_server_stop(s, 3000);
    int64_t took = mono_ms() - t0;
    pthread_join(th, NULL);
    assert_int_equal(sc.rc, 0); /* finished, not cut off */
    assert_true(took < 3000);
    rpc_client_free(sc.c);
    rpc_server_free(s);
}

/* ---- shutdown: every call ends OK or UNAVAILABLE, never CANCELLED (issue 14 #4) ---- */

typedef struct drain_call {
    rpc_client *c;
    int sleep_ms;
    bool loop; /* an arrival: call until the server refuses */
    int n_ok, n_unavailable, n_other, n_draining;
    grpc_status_code other;
} drain_call;

static void *drain_main(void *arg) {
    drain_call *d = arg;
    for (int i = 0; i < 100000; i++) {
        Orgmesh__Test__V1__EchoRequest req = ORGMESH__TEST__V1__ECHO_REQUEST__INIT;
        req.text = "drain";
        req.sleep_ms = d->sleep_ms;
        rpc_call_opts o = {.token = user_token, .deadline_ms = 8000};
        Orgmesh__Test__V1__EchoResponse *resp = NULL;
        rpc_status st;
        memset(&st, 0, sizeof st);
        int rc = rpc_client_call(d->c, i % 2 ? "/orgmesh.test.v1.EchoService/EchoInline"
                                             : "/orgmesh.test.v1.EchoService/Echo",
                                 &req.base, &orgmesh__test__v1__echo_response__descriptor,
                                 (ProtobufCMessage **)&resp, &o, &st);
        if (resp) protobuf_c_message_free_unpacked(&resp->base, NULL);
        if (rc == 0) {
            d->n_ok++;
        } else if (st.code == GRPC_STATUS_UNAVAILABLE) {
            d->n_unavailable++;
            if (strstr(st.message, "shutting down") != NULL) d->n_draining++;
        } else {
            d->n_other++;
            d->other = st.code;
        }
        if (!d->loop || rc != 0) break;
    }
    return NULL;
}

typedef struct stopper {
    rpc_server *s;
    int grace_ms;
    int64_t took_ms;
} stopper;

static void *stop_main(void *arg) {
    stopper *st = arg;
    int64_t t0 = mono_ms();
    rpc_server_stop(st->s, st->grace_ms);
    st->took_ms = mono_ms() - t0;
    return NULL;
}

static void test_rpc_stop_answers_unavailable_never_cancelled(void **state) {
    (void)state;
    enum { SHORT = 24, LONG = 6, ARRIVING = 8, GRACE_MS = 1500 };
    rpc_server *s = start_server_with(SHORT + LONG + 2);
    rpc_client *c = connect_to(s);
    drain_call calls[SHORT + LONG + ARRIVING];
    pthread_t th[SHORT + LONG + ARRIVING];
    memset(calls, 0, sizeof calls);
    atomic_store(&echo_started, 0);
    for (int i = 0; i < SHORT + LONG; i++) {
        calls[i].c = c;
        calls[i].sleep_ms = i < SHORT ? 400 : 6000; /* within the grace / beyond it */
        pthread_create(&th[i], NULL, drain_main, &calls[i]);
    }
    /* every one of them running in a handler */
    int64_t until = mono_ms() + 5000;
    while (atomic_load(&echo_started) < SHORT + LONG && mono_ms() < until) sleep_ms(5);
    assert_int_equal(atomic_load(&echo_started), SHORT + LONG);

    stopper st = {.s = s, .grace_ms = GRACE_MS};
    pthread_t stop_th;
    pthread_create(&stop_th, NULL, stop_main, &st);
    for (int i = SHORT + LONG; i < SHORT + LONG + ARRIVING; i++) { /* arriving during the drain */
        calls[i].c = c;
        calls[i].loop = true;
        pthread_create(&th[i], NULL, drain_main, &calls[i]);
    }
    for (int i = 0; i < SHORT + LONG + ARRIVING; i++) pthread_join(th[i], NULL);
    pthread_join(stop_th, NULL);

    int draining = 0;
    for (int i = 0; i < SHORT + LONG + ARRIVING; i++) {
        if (calls[i].n_other != 0) fail_msg("call %d ended with status %d", i, (int)calls[i].other);
        draining += calls[i].n_draining;
    }
    for (int i = 0; i < SHORT; i++) assert_int_equal(calls[i].n_ok, 1); /* finished in the grace */
    for (int i = SHORT; i < SHORT + LONG; i++) assert_int_equal(calls[i].n_unavailable, 1);
    assert_true(draining >= 1); /* arrivals were answered by the draining server */
    assert_true(st.took_ms < GRACE_MS + 2000);
    rpc_client_free(c);
    rpc_server_free(s);
}

static void *hammer_main(void *arg) {
    int *fails = arg;
    for (int i = 0; i < 200; i++) {
        Orgmesh__Test__V1__EchoResponse *resp = NULL;
        rpc_status st;
        char text[32];
        snprintf(text, sizeof text, "n%d", i);
        if (call_echo(i % 2 ? "Echo" : "EchoInline", text, 0, user_token, 5000, &resp, &st) != 0 ||
            strcmp(resp->text, text) != 0)
            (*fails)++;
        if (resp) protobuf_c_message_free_unpacked(&resp->base, NULL);
    }
    return NULL;
}

static void test_rpc_concurrent_calls_all_answered_correctly(void **state) {
    (void)state;
    pthread_t th[8];
    int fails[8] = {0};
    for (int i = 0; i < 8; i++) pthread_create(&th[i], NULL, hammer_main, &fails[i]);
    for (int i = 0; i < 8; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < 8; i++) assert_int_equal(fails[i], 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rpc_echo_on_worker_and_inline),
        cmocka_unit_test(test_rpc_inline_defer_answered_by_worker),
        cmocka_unit_test(test_rpc_health_check_needs_no_token),
        cmocka_unit_test(test_rpc_unknown_method_is_unimplemented_at_once),
        cmocka_unit_test(test_rpc_missing_or_forged_token_unauthenticated),
        cmocka_unit_test(test_rpc_error_carries_reason_and_field_violations),
        cmocka_unit_test(test_rpc_internal_method_needs_service_identity),
        cmocka_unit_test(test_rpc_deadline_is_honoured),
        cmocka_unit_test(test_rpc_oversized_message_refused),
        cmocka_unit_test(test_rpc_malformed_request_invalid_argument),
        cmocka_unit_test(test_rpc_concurrent_calls_all_answered_correctly),
        cmocka_unit_test(test_rpc_stop_drains_calls_in_flight),
        cmocka_unit_test(test_rpc_stop_answers_unavailable_never_cancelled),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
