/* test_metrics.c — the Prometheus exposition counts what was recorded (by
 * code, in the right latency buckets, cumulative, +Inf equal to _count), and
 * the HTTP endpoint answers /metrics, /healthz and 404 on a real socket
 * without being held up by a silent client. */
#define _GNU_SOURCE /* strcasestr */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "metrics.h"

/* ---- reading the exposition ------------------------------------------------ */

/* Value of the sample whose name and labels are exactly `series`, or NAN. */
static double sample(const char *text, const char *series) {
    size_t n = strlen(series);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (strncmp(p, series, n) == 0 && p[n] == ' ') return strtod(p + n + 1, NULL);
    }
    return NAN;
}

static bool has_line(const char *text, const char *line) {
    size_t n = strlen(line);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (strncmp(p, line, n) == 0 && (p[n] == '\n' || p[n] == '\0')) return true;
    return false;
}

/* Independent of the implementation: the bucket bounds the docs promise. */
static const char *const LE[] = {"0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05",
                                 "0.1",    "0.25",  "0.5",    "1",     "2.5",  "5",     "+Inf"};
static const double LE_S[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                              0.1,    0.25,  0.5,    1,     2.5,  5,     INFINITY};
#define NLE 14

static double bucket(const char *text, const char *labels, const char *le) {
    char s[512];
    snprintf(s, sizeof s, "orgmesh_rpc_latency_seconds_bucket{%s,le=\"%s\"}", labels, le);
    return sample(text, s);
}

/* ---- recording and rendering -------------------------------------------------- */

static void test_metrics_calls_counted_by_status_code(void **state) {
    metrics_method *m = metrics_method_register("/orgmesh.test.v1.CountService/GetThing");
    assert_non_null(m);
    for (int i = 0; i < 3; i++) metrics_observe(m, 0, 100);
    metrics_observe(m, 5, 100);
    metrics_observe(m, 5, 100);
    metrics_observe(m, 16, 100);
    metrics_observe(m, 99, 100); /* not a gRPC code: counted as UNKNOWN */
    char *t = metrics_render();
    assert_non_null(t);
    const char *l = "service=\"orgmesh.test.v1.CountService\",method=\"GetThing\"";
    char s[256];
    snprintf(s, sizeof s, "orgmesh_rpc_calls_total{%s,code=\"OK\"}", l);
    assert_true(sample(t, s) == 3);
    snprintf(s, sizeof s, "orgmesh_rpc_calls_total{%s,code=\"NOT_FOUND\"}", l);
    assert_true(sample(t, s) == 2);
    snprintf(s, sizeof s, "orgmesh_rpc_calls_total{%s,code=\"UNAUTHENTICATED\"}", l);
    assert_true(sample(t, s) == 1);
    snprintf(s, sizeof s, "orgmesh_rpc_calls_total{%s,code=\"UNKNOWN\"}", l);
    assert_true(sample(t, s) == 1);
    assert_true(has_line(t, "# TYPE orgmesh_rpc_calls_total counter"));
    free(t);
}

static void test_metrics_latency_lands_in_le_buckets_cumulatively(void **state) {
    metrics_method *m = metrics_method_register("/orgmesh.test.v1.LatencyService/Slow");
    assert_non_null(m);
    /* µs; 500 sits exactly on a bound, which `le` includes */
    const int64_t lat[] = {100, 500, 501, 7000, 3000000, 10000000, -5};
    size_t nlat = sizeof lat / sizeof lat[0];
    double sum = 0;
    for (size_t i = 0; i < nlat; i++) {
        metrics_observe(m, 0, lat[i]);
        sum += (lat[i] < 0 ? 0 : lat[i]) / 1e6; /* a clock step back counts as 0 */
    }
    char *t = metrics_render();
    assert_non_null(t);
    const char *l = "service=\"orgmesh.test.v1.LatencyService\",method=\"Slow\"";
    for (int b = 0; b < NLE; b++) {
        double want = 0;
        for (size_t i = 0; i < nlat; i++)
            if ((lat[i] < 0 ? 0 : lat[i]) / 1e6 <= LE_S[b]) want++;
        double got = bucket(t, l, LE[b]);
        if (got != want) fail_msg("le=%s: got %g want %g", LE[b], got, want);
    }
    char s[256];
    snprintf(s, sizeof s, "orgmesh_rpc_latency_seconds_count{%s}", l);
    assert_true(sample(t, s) == (double)nlat);
    snprintf(s, sizeof s, "orgmesh_rpc_latency_seconds_sum{%s}", l);
    assert_true(fabs(sample(t, s) - sum) < 1e-6);
    assert_true(has_line(t, "# TYPE orgmesh_rpc_latency_seconds histogram"));
    free(t);
}

static void test_metrics_unused_method_still_has_series(void **state) {
    assert_non_null(metrics_method_register("/orgmesh.test.v1.IdleService/Never"));
    char *t = metrics_render();
    assert_non_null(t);
    const char *l = "service=\"orgmesh.test.v1.IdleService\",method=\"Never\"";
    char s[256];
    snprintf(s, sizeof s, "orgmesh_rpc_calls_total{%s,code=\"OK\"}", l);
    assert_true(sample(t, s) == 0);
    assert_true(bucket(t, l, "+Inf") == 0);
    free(t);
}

static void test_metrics_register_same_method_twice_returns_same_slot(void **state) {
    metrics_method *a = metrics_method_register("/orgmesh.test.v1.Twice/Do");
    metrics_method *b = metrics_method_register("/orgmesh.test.v1.Twice/Do");
    assert_non_null(a);
    assert_ptr_equal(a, b);
    metrics_observe(a, 0, 1);
    metrics_observe(b, 0, 1);
    char *t = metrics_render();
    assert_true(sample(t, "orgmesh_rpc_calls_total{service=\"orgmesh.test.v1.Twice\",method=\"Do\","
                          "code=\"OK\"}") == 2);
    free(t);
}

static void test_metrics_label_values_are_escaped(void **state) {
    metrics_method *m = metrics_method_register("/we\"ird\\svc/Me\nthod");
    assert_non_null(m);
    char *t = metrics_render();
    assert_non_null(t);
    assert_true(sample(t, "orgmesh_rpc_calls_total{service=\"we\\\"ird\\\\svc\",method="
                          "\"Me\\nthod\",code=\"OK\"}") == 0);
    free(t);
}

static void test_metrics_counter_and_gauge_render_with_types(void **state) {
    metrics_counter *c =
        metrics_counter_register("orgmesh_test_events_relayed_total", "Events relayed.");
    metrics_counter *g =
        metrics_counter_register("orgmesh_test_outbox_depth", "Rows waiting\nin the outbox.");
    assert_non_null(c);
    assert_non_null(g);
    metrics_counter_add(c, 3);
    metrics_counter_add(c, 4);
    metrics_gauge_set(g, 5);
    metrics_gauge_set(g, 2);
    metrics_counter_add(g, -1);
    char *t = metrics_render();
    assert_non_null(t);
    assert_true(sample(t, "orgmesh_test_events_relayed_total") == 7);
    assert_true(sample(t, "orgmesh_test_outbox_depth") == 1);
    assert_true(has_line(t, "# TYPE orgmesh_test_events_relayed_total counter"));
    assert_true(has_line(t, "# TYPE orgmesh_test_outbox_depth gauge"));
    assert_true(has_line(t, "# HELP orgmesh_test_outbox_depth Rows waiting\\nin the outbox."));
    free(t);
}

static void test_metrics_invalid_counter_name_refused_and_null_is_harmless(void **state) {
    assert_null(metrics_counter_register("bad name", "x"));
    assert_null(metrics_counter_register("9starts_with_digit", "x"));
    assert_null(metrics_counter_register("", "x"));
    metrics_counter_add(NULL, 1);
    metrics_gauge_set(NULL, 1);
    metrics_observe(NULL, 0, 1);
}

#define OBS_THREADS 4
#define OBS_EACH 20000
static metrics_method *conc_m;
static void *observer(void *arg) {
    for (int i = 0; i < OBS_EACH; i++) metrics_observe(conc_m, 0, 2000);
    return NULL;
}

static void test_metrics_concurrent_observations_all_counted(void **state) {
    conc_m = metrics_method_register("/orgmesh.test.v1.Busy/Hot");
    assert_non_null(conc_m);
    pthread_t th[OBS_THREADS];
    for (int i = 0; i < OBS_THREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, observer, NULL), 0);
    for (int i = 0; i < OBS_THREADS; i++) pthread_join(th[i], NULL);
    char *t = metrics_render();
    const char *l = "service=\"orgmesh.test.v1.Busy\",method=\"Hot\"";
    assert_true(bucket(t, l, "0.0025") == OBS_THREADS * OBS_EACH);
    assert_true(bucket(t, l, "0.001") == 0);
    free(t);
}

/* ---- HTTP ------------------------------------------------------------------------ */

static int connect_local(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Send `req`, read until the server closes; the whole response, malloc'd. */
static char *http(int port, const char *req) {
    int fd = connect_local(port);
    assert_true(fd >= 0);
    assert_int_equal(send(fd, req, strlen(req), MSG_NOSIGNAL), (ssize_t)strlen(req));
    size_t cap = 65536, n = 0;
    char *buf = malloc(cap);
    assert_non_null(buf);
    for (;;) {
        if (n + 1 == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
        ssize_t k = recv(fd, buf + n, cap - n - 1, 0);
        if (k < 0 && errno == EINTR) continue;
        assert_true(k >= 0); /* a timeout here means the server never closed */
        if (k == 0) break;
        n += (size_t)k;
    }
    buf[n] = '\0';
    close(fd);
    return buf;
}

static const char *body_of(const char *resp) {
    const char *p = strstr(resp, "\r\n\r\n");
    assert_non_null(p);
    return p + 4;
}

static long content_length(const char *resp) {
    const char *p = strcasestr(resp, "\r\nContent-Length:");
    assert_non_null(p);
    return strtol(p + 17, NULL, 10);
}

static void test_metrics_http_serves_metrics_healthz_and_404(void **state) {
    metrics_method *m = metrics_method_register("/orgmesh.test.v1.Http/Ping");
    metrics_observe(m, 0, 1500);
    int port = metrics_start("accounts", "127.0.0.1:0");
    assert_true(port > 0);

    char *r = http(port, "GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n");
    assert_true(strncmp(r, "HTTP/1.1 200 ", 13) == 0);
    assert_non_null(strcasestr(r, "\r\nContent-Type: text/plain; version=0.0.4"));
    const char *body = body_of(r);
    assert_int_equal(content_length(r), (long)strlen(body));
    assert_true(sample(body, "orgmesh_rpc_calls_total{service=\"orgmesh.test.v1.Http\",method="
                             "\"Ping\",code=\"OK\"}") >= 1);
    assert_true(bucket(body, "service=\"orgmesh.test.v1.Http\",method=\"Ping\"", "0.0025") >= 1);
    assert_true(sample(body, "orgmesh_service_info{service=\"accounts\"}") == 1);
    free(r);

    r = http(port, "GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_true(strncmp(r, "HTTP/1.1 200 ", 13) == 0);
    assert_string_equal(body_of(r), "ok");
    free(r);

    r = http(port, "GET /metrics?x=1 HTTP/1.0\r\n\r\n"); /* query strings ignored */
    assert_true(strncmp(r, "HTTP/1.1 200 ", 13) == 0);
    free(r);

    r = http(port, "GET /nope HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_true(strncmp(r, "HTTP/1.1 404 ", 13) == 0);
    free(r);

    r = http(port, "POST /metrics HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\n\r\nabc");
    assert_true(strncmp(r, "HTTP/1.1 404 ", 13) == 0);
    free(r);

    r = http(port, "\x01\x02 garbage\r\n\r\n");
    assert_true(strncmp(r, "HTTP/1.1 400 ", 13) == 0);
    free(r);

    /* A request head larger than a connection may hold: a 4xx, not a
     * stall and not a crash (libmicrohttpd's memory limit per connection). */
    size_t big = 64 * 1024;
    char *huge = malloc(big + 64);
    assert_non_null(huge);
    int k = snprintf(huge, 64, "GET /metrics HTTP/1.1\r\nX-Pad: ");
    memset(huge + k, 'a', big);
    strcpy(huge + k + big, "\r\n\r\n");
    r = http(port, huge);
    free(huge);
    assert_true(strncmp(r, "HTTP/1.1 4", 10) == 0);
    free(r);

    r = http(port, "HEAD /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_true(strncmp(r, "HTTP/1.1 200 ", 13) == 0);
    assert_string_equal(body_of(r), ""); /* no body for HEAD */
    free(r);

    metrics_stop();
    /* Stopped means stopped: the port no longer accepts. */
    int fd = connect_local(port);
    assert_int_equal(fd, -1);
}

static void test_metrics_http_silent_client_does_not_block_others(void **state) {
    int port = metrics_start("accounts", "127.0.0.1:0");
    assert_true(port > 0);
    int silent[3];
    for (int i = 0; i < 3; i++) {
        silent[i] = connect_local(port);
        assert_true(silent[i] >= 0);
    }
    send(silent[0], "GET /met", 8, MSG_NOSIGNAL); /* half a request, then nothing */
    char *r = http(port, "GET /healthz HTTP/1.1\r\n\r\n");
    assert_true(strncmp(r, "HTTP/1.1 200 ", 13) == 0);
    free(r);
    for (int i = 0; i < 3; i++) close(silent[i]);
    metrics_stop(); /* joins the thread even with connections open */
}

static void test_metrics_start_on_busy_port_returns_negative(void **state) {
    int busy = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(busy, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(busy, 1), 0);
    socklen_t sl = sizeof sa;
    getsockname(busy, (struct sockaddr *)&sa, &sl);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", ntohs(sa.sin_port));
    assert_true(metrics_start("accounts", addr) < 0);
    close(busy);

    assert_true(metrics_start("accounts", "no-port-here") < 0);
    assert_true(metrics_start("accounts", "127.0.0.1:70000") < 0);
    assert_true(metrics_start("accounts", NULL) < 0);

    /* After those failures a good start still works, once. */
    int port = metrics_start("accounts", "127.0.0.1:0");
    assert_true(port > 0);
    assert_true(metrics_start("accounts", "127.0.0.1:0") < 0);
    metrics_stop();
    metrics_stop(); /* harmless */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_metrics_calls_counted_by_status_code),
        cmocka_unit_test(test_metrics_latency_lands_in_le_buckets_cumulatively),
        cmocka_unit_test(test_metrics_unused_method_still_has_series),
        cmocka_unit_test(test_metrics_register_same_method_twice_returns_same_slot),
        cmocka_unit_test(test_metrics_label_values_are_escaped),
        cmocka_unit_test(test_metrics_counter_and_gauge_render_with_types),
        cmocka_unit_test(test_metrics_invalid_counter_name_refused_and_null_is_harmless),
        cmocka_unit_test(test_metrics_concurrent_observations_all_counted),
        cmocka_unit_test(test_metrics_http_serves_metrics_healthz_and_404),
        cmocka_unit_test(test_metrics_http_silent_client_does_not_block_others),
        cmocka_unit_test(test_metrics_start_on_busy_port_returns_negative),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
