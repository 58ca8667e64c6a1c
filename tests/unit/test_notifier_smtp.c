/* test_notifier_smtp.c — the SMTP engine the notifier sends with (common/smtp.c: libcurl multi on a
 * libuv loop, issue 15) against a small SMTP server on the same loop: many
 * messages in flight over a bounded number of reused connections, the
 * NOTE-03 classification of failures, and a stop that aborts a hung
 * exchange at once and leaves no handle behind. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <uv.h>

#include "smtp.h"
#include "om_err.h"

/* ---- a small SMTP server --------------------------------------------------- */

typedef struct srv_conn {
    uv_tcp_t tcp;
    char line[4096];
    size_t n;
    bool data;
} srv_conn;

static struct {
    uv_tcp_t listener;
    int port;
    int accepted, open, max_open;
    int messages;
    int rcpt_seen;
} srv;

static uv_loop_t loop;

static void write_done(uv_write_t *w, int status) {
    (void)status;
    free(w);
}

static void srv_write(srv_conn *c, const char *s) {
    uv_write_t *w = malloc(sizeof *w + strlen(s));
    assert_non_null(w);
    char *buf = (char *)(w + 1);
    memcpy(buf, s, strlen(s));
    uv_buf_t b = uv_buf_init(buf, (unsigned)strlen(s));
    assert_int_equal(uv_write(w, (uv_stream_t *)&c->tcp, &b, 1, write_done), 0);
}

static void srv_closed(uv_handle_t *h) {
    srv.open--;
    free(h->data);
}

static void srv_line(srv_conn *c, const char *l) {
    if (c->data) {
        if (strcmp(l, ".") == 0) {
            c->data = false;
            srv.messages++;
            srv_write(c, "250 queued\r\n");
        }
        return;
    }
    if (strncmp(l, "EHLO", 4) == 0 || strncmp(l, "HELO", 4) == 0) srv_write(c, "250 test\r\n");
    else if (strncmp(l, "MAIL FROM:", 10) == 0) srv_write(c, "250 ok\r\n");
    else if (strncmp(l, "RCPT TO:", 8) == 0) {
        srv.rcpt_seen++;
        if (strstr(l, "reject") != NULL) srv_write(c, "550 no such user\r\n");
        else if (strstr(l, "later") != NULL) srv_write(c, "451 try again later\r\n");
        else if (strstr(l, "hang") == NULL) srv_write(c, "250 ok\r\n");
        /* hang: no reply at all */
    } else if (strcmp(l, "DATA") == 0) {
        c->data = true;
        srv_write(c, "354 go ahead\r\n");
    } else if (strcmp(l, "QUIT") == 0) {
        srv_write(c, "221 bye\r\n");
        uv_close((uv_handle_t *)&c->tcp, srv_closed);
    } else srv_write(c, "250 ok\r\n"); /* RSET, NOOP */
}

static void srv_alloc(uv_handle_t *h, size_t sz, uv_buf_t *b) {
    (void)h;
    b->base = malloc(sz);
    b->len = sz;
}

static void srv_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
    srv_conn *c = s->data;
    if (n < 0) {
        if (!uv_is_closing((uv_handle_t *)s)) uv_close((uv_handle_t *)s, srv_closed);
    }
    for (ssize_t i = 0; i < n; i++) {
        char ch = b->base[i];
        if (ch == '\n') {
            if (c->n > 0 && c->line[c->n - 1] == '\r') c->n--;
            c->line[c->n] = '\0';
            c->n = 0;
            srv_line(c, c->line);
            if (uv_is_closing((uv_handle_t *)s)) break;
        } else if (c->n < sizeof c->line - 1) {
            c->line[c->n++] = ch;
        }
    }
    free(b->base);
}

static void srv_accept(uv_stream_t *l, int status) {
    assert_int_equal(status, 0);
    srv_conn *c = calloc(1, sizeof *c);
    assert_non_null(c);
    uv_tcp_init(&loop, &c->tcp);
    c->tcp.data = c;
    assert_int_equal(uv_accept(l, (uv_stream_t *)&c->tcp), 0);
    srv.accepted++;
    if (++srv.open > srv.max_open) srv.max_open = srv.open;
    srv_write(c, "220 test ESMTP\r\n");
    uv_read_start((uv_stream_t *)&c->tcp, srv_alloc, srv_read);
}

static void srv_start(void) {
    memset(&srv, 0, sizeof srv);
    uv_tcp_init(&loop, &srv.listener);
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    assert_int_equal(uv_tcp_bind(&srv.listener, (const struct sockaddr *)&a, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&srv.listener, 128, srv_accept), 0);
    struct sockaddr_in b;
    int len = sizeof b;
    uv_tcp_getsockname(&srv.listener, (struct sockaddr *)&b, &len);
    srv.port = ntohs(b.sin_port);
}

static void close_any(uv_handle_t *h, void *arg) {
    (void)arg;
    if (!uv_is_closing(h)) uv_close(h, h == (uv_handle_t *)&srv.listener ? NULL : srv_closed);
}

/* ---- the engine under test ---------------------------------------------------- */

typedef struct outcome {
    int done;
    int rc;
    char err[256];
} outcome;

static void on_done(void *arg, int rc, const char *err) {
    outcome *o = arg;
    o->done++;
    o->rc = rc;
    snprintf(o->err, sizeof o->err, "%s", err);
}

static char url[64];
static smtp_config cfg;

static void engine_start(int max_connections, int threads) {
    snprintf(url, sizeof url, "smtp://127.0.0.1:%d", srv.port);
    cfg = (smtp_config){.url = url, .mail_from = "no-reply@orgmesh.local", .timeout_ms = 2000,
                           .max_connections = max_connections, .max_total_connections = max_connections,
                           .threads = threads};
    assert_int_equal(smtp_start(&loop, &cfg), 0);
}

static int send_to(const char *rcpt, outcome *o) {
    static const char body[] = "Subject: hi\r\n\r\nhello\r\n";
    char *m = strdup(body);
    assert_non_null(m);
    return smtp_send(rcpt, m, strlen(body), on_done, o);
}

/* Runs the loop until *flag reaches want, at most 10 s (a 5 ms timer keeps
 * each turn short). */
static void tick_cb(uv_timer_t *t) { (void)t; }
static bool run_until(const int *flag, int want) {
    uv_timer_t t;
    uv_timer_init(&loop, &t);
    uv_timer_start(&t, tick_cb, 5, 5);
    uint64_t end = uv_now(&loop) + 10000;
    while (*flag < want && uv_now(&loop) < end) uv_run(&loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
    return *flag >= want;
}

/* The engine stopped, the server closed: nothing is left on the loop. */
static void finish_loop(void) {
    smtp_stop();
    uv_walk(&loop, close_any, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static int setup(void **state) {
    (void)state;
    assert_int_equal(uv_loop_init(&loop), 0);
    srv_start();
    return 0;
}

static void test_many_messages_in_flight_over_reused_connections(void **state) {
    (void)state;
    engine_start(4, 2); /* two engines, two connections each */
    enum { N = 60 };
    static outcome o[N];
    memset(o, 0, sizeof o);
    int finished = 0;
    for (int i = 0; i < N; i++) {
        char rcpt[64];
        snprintf(rcpt, sizeof rcpt, "user%d@example.org", i);
        assert_int_equal(send_to(rcpt, &o[i]), 0);
    }
    assert_int_equal(smtp_in_flight(), N);
    uv_timer_t t;
    uv_timer_init(&loop, &t);
    uv_timer_start(&t, tick_cb, 5, 5);
    uint64_t end = uv_now(&loop) + 10000;
    while (finished < N && uv_now(&loop) < end) {
        uv_run(&loop, UV_RUN_ONCE);
        finished = 0;
        for (int i = 0; i < N; i++) finished += o[i].done;
    }
    uv_close((uv_handle_t *)&t, NULL);
    assert_int_equal(finished, N);
    for (int i = 0; i < N; i++) {
        assert_int_equal(o[i].done, 1);
        assert_int_equal(o[i].rc, 0);
    }
    assert_int_equal(srv.messages, N);
    assert_int_equal(smtp_in_flight(), 0);
    /* side by side, but never more sessions than allowed, each reused */
    assert_true(srv.max_open >= 2);
    assert_true(srv.accepted <= 4);
    finish_loop();
}

static void test_note_03_5xx_is_permanent_4xx_and_no_server_temporary(void **state) {
    (void)state;
    engine_start(2, 1);
    outcome rej = {0}, later = {0}, ok = {0};
    assert_int_equal(send_to("reject@example.org", &rej), 0);
    assert_int_equal(send_to("later@example.org", &later), 0);
    assert_int_equal(send_to("fine@example.org", &ok), 0);
    assert_true(run_until(&ok.done, 1));
    assert_true(run_until(&rej.done, 1));
    assert_true(run_until(&later.done, 1));
    assert_int_equal(rej.rc, OM_E_FAILED_PRECONDITION);
    assert_non_null(strstr(rej.err, "550"));
    assert_int_equal(later.rc, OM_E_UNAVAILABLE);
    assert_non_null(strstr(later.err, "451"));
    assert_int_equal(ok.rc, 0);
    assert_int_equal(srv.messages, 1);
    smtp_stop();
    /* nobody listening: temporary */
    int port = srv.port;
    uv_close((uv_handle_t *)&srv.listener, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
    snprintf(url, sizeof url, "smtp://127.0.0.1:%d", port);
    assert_int_equal(smtp_start(&loop, &cfg), 0);
    outcome down = {0};
    assert_int_equal(send_to("fine@example.org", &down), 0);
    assert_true(run_until(&down.done, 1));
    assert_int_equal(down.rc, OM_E_UNAVAILABLE);
    finish_loop();
}

static void test_stop_aborts_a_hung_exchange_at_once(void **state) {
    (void)state;
    engine_start(2, 2); /* one connection per engine */
    outcome hung = {0}, queued = {0}, queued2 = {0};
    assert_int_equal(send_to("hang@example.org", &hung), 0);
    assert_int_equal(send_to("hang2@example.org", &queued), 0);
    assert_int_equal(send_to("fine@example.org", &queued2), 0); /* waits: 2 connections busy */
    assert_true(run_until(&srv.rcpt_seen, 2));
    assert_int_equal(hung.done + queued.done + queued2.done, 0);
    uint64_t t0 = uv_hrtime();
    smtp_stop();
    assert_true(uv_hrtime() - t0 < 1000000000ull); /* no QUIT awaited */
    assert_int_equal(hung.done, 1);
    assert_int_equal(hung.rc, OM_E_UNAVAILABLE);
    assert_int_equal(queued.done, 1);
    assert_int_equal(queued2.done, 1);
    assert_int_equal(queued2.rc, OM_E_CANCELLED); /* never left: no attempt */
    assert_int_equal(srv.messages, 0);
    outcome late = {0};
    char *m = strdup("x");
    assert_int_not_equal(smtp_send("x@example.org", m, 1, on_done, &late), 0);
    assert_int_equal(late.done, 0);
    finish_loop();
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_many_messages_in_flight_over_reused_connections, setup),
        cmocka_unit_test_setup(test_note_03_5xx_is_permanent_4xx_and_no_server_temporary, setup),
        cmocka_unit_test_setup(test_stop_aborts_a_hung_exchange_at_once, setup),
    };
    if (smtp_global_init() != 0) return 1;
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    smtp_global_cleanup();
    return rc;
}
