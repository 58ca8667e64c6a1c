/* test_trace.c — W3C traceparent parsing (anything invalid is refused, so
 * the server starts a new root instead of failing), ids and sampling, the
 * zero-cost path without an endpoint, and the bounded export queue: a
 * collector that never answers costs dropped spans (counted), never a
 * blocked caller (issue 19). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <grpc/grpc.h>

#include "trace.h"

#define TP "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

static bool parse(const char *s) {
    trace_ctx c;
    return trace_parse(s, strlen(s), &c);
}

static void test_trace_parse_valid_round_trips(void **state) {
    (void)state;
    trace_ctx c;
    assert_true(trace_parse(TP, strlen(TP), &c));
    assert_true(c.valid);
    assert_int_equal(c.flags, 1);
    char out[TRACE_PARENT_LEN], tid[33], sid[17];
    trace_format(&c, out);
    assert_string_equal(out, TP);
    trace_hex_trace_id(&c, tid);
    trace_hex_span_id(&c, sid);
    assert_string_equal(tid, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_string_equal(sid, "00f067aa0ba902b7");
    /* a later version may append fields */
    assert_true(parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra"));
}

static void test_trace_parse_refuses_invalid(void **state) {
    (void)state;
    assert_false(parse(""));
    assert_false(parse("garbage"));
    assert_false(parse("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01")); /* uppercase */
    assert_false(parse("00-00000000000000000000000000000000-00f067aa0ba902b7-01")); /* zero trace id */
    assert_false(parse("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01")); /* zero span id */
    assert_false(parse("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")); /* version ff */
    assert_false(parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x")); /* 00 is exactly 55 */
    assert_false(parse("00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
    assert_false(parse("00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01"));
    assert_false(parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g"));
}

/* Without an endpoint: ids for propagation and logs, no recording span. */
static void test_trace_off_children_keep_trace_no_span(void **state) {
    (void)state;
    assert_int_equal(trace_init("test"), 0);
    assert_false(trace_enabled());
    trace_ctx parent, child, root, root2;
    assert_true(trace_parse(TP, strlen(TP), &parent));
    assert_null(trace_start(&parent, TRACE_SERVER, "x", &child));
    assert_memory_equal(child.trace_id, parent.trace_id, 16);
    assert_memory_not_equal(child.span_id, parent.span_id, 8);
    assert_int_equal(child.flags, 1); /* passed along */
    assert_null(trace_start(NULL, TRACE_SERVER, "x", &root));
    assert_null(trace_start(NULL, TRACE_SERVER, "x", &root2));
    assert_true(root.valid);
    assert_memory_not_equal(root.trace_id, root2.trace_id, 16);
    trace_set_current(&child, "k=v");
    assert_non_null(trace_current());
    assert_string_equal(trace_current_state(), "k=v");
    trace_set_current(NULL, NULL);
    assert_null(trace_current());
}

static int64_t mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A collector that never answers: a socket that listens (the kernel completes
 * the handshake) but is never accepted, so every Export waits for its
 * deadline. Spans beyond the queue are dropped and counted, ending a span
 * never waits, and the shutdown is bounded. */
static void test_trace_full_queue_drops_and_never_blocks(void **state) {
    (void)state;
    int hole = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(hole >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sa;
    assert_int_equal(bind(hole, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(hole, 16), 0);
    assert_int_equal(getsockname(hole, (struct sockaddr *)&sa, &sl), 0);
    char ep[64];
    snprintf(ep, sizeof ep, "http://127.0.0.1:%d", ntohs(sa.sin_port));
    setenv("OTEL_EXPORTER_OTLP_ENDPOINT", ep, 1);
    setenv("OTEL_BSP_MAX_QUEUE_SIZE", "8", 1);
    setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4", 1);
    setenv("OTEL_BSP_SCHEDULE_DELAY", "60000", 1);
    setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "300", 1);
    setenv("OTEL_TRACES_SAMPLER", "always_on", 1);
    grpc_init();
    assert_int_equal(trace_init("test"), 0);
    assert_true(trace_enabled());
    int64_t t0 = mono_ms();
    int64_t d0 = trace_dropped();
    for (int i = 0; i < 200; i++) {
        trace_ctx c;
        trace_span *s = trace_rpc_start(NULL, TRACE_SERVER, "/pkg.Svc/M", &c);
        assert_non_null(s);
        trace_rpc_end(s, 0, NULL);
    }
    int64_t took = mono_ms() - t0;
    assert_true(took < 200); /* the export call (300 ms deadline) is not ours to wait for */
    assert_true(trace_dropped() - d0 >= 100); /* the queue holds 8, the exporter takes 4 at a time */
    int64_t t1 = mono_ms();
    trace_shutdown();
    assert_true(mono_ms() - t1 < 3000); /* what is left: a few batches of at most 300 ms each */
    close(hole);
    assert_false(trace_enabled());
    /* none was exported: every span is counted once as dropped */
    assert_int_equal(trace_dropped() - d0, 200);
    grpc_shutdown();
}

/* traceidratio: about the given share of new roots is sampled. */
static void test_trace_ratio_sampler(void **state) {
    (void)state;
    setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1", 1);
    setenv("OTEL_BSP_MAX_QUEUE_SIZE", "100000", 1);
    setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "100000", 1);
    setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio", 1);
    setenv("OTEL_TRACES_SAMPLER_ARG", "0.01", 1);
    grpc_init();
    assert_int_equal(trace_init("test"), 0);
    int sampled = 0;
    for (int i = 0; i < 20000; i++) {
        trace_ctx c;
        trace_span *s = trace_start(NULL, TRACE_SERVER, "x", &c);
        if (s != NULL) sampled++;
        assert_int_equal(c.flags & 1, s != NULL);
        trace_discard(s);
    }
    assert_in_range(sampled, 100, 320); /* 200 expected */
    /* parent-based: the parent's decision wins */
    trace_ctx parent, c;
    assert_true(trace_parse(TP, strlen(TP), &parent));
    trace_span *s = trace_start(&parent, TRACE_SERVER, "x", &c);
    assert_non_null(s);
    trace_discard(s);
    parent.flags = 0;
    assert_null(trace_start(&parent, TRACE_SERVER, "x", &c));
    trace_shutdown();
    grpc_shutdown();
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_trace_parse_valid_round_trips),
        cmocka_unit_test(test_trace_parse_refuses_invalid),
        cmocka_unit_test(test_trace_off_children_keep_trace_no_span),
        cmocka_unit_test(test_trace_full_queue_drops_and_never_blocks),
        cmocka_unit_test(test_trace_ratio_sampler),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
