/* test_redis_uv.c — common/redis_uv.c against the stack's Redis, each case on
 * a uv_loop_t of its own that must close with 0 afterwards (no handle left):
 * pipelined commands, a refused connect, a connect that is never answered, a
 * command against a paused Redis and against a server that never answers,
 * a Redis killed and restarted, a close with commands in flight.
 * Pauses and kills Redis: ctest runs this file alone (RUN_SERIAL). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cache.h"
#include "it_util.h"
#include "redis_uv.h"

typedef struct tstate {
    uv_loop_t loop;
    uv_timer_t tick;      /* keeps uv_run(ONCE) from blocking without bound */
    redis_uv *r;
    int ups, downs;
    char last_err[200];
    int64_t down_at;
} tstate;

static void on_tick(uv_timer_t *t) { (void)t; }

static void on_state(redis_uv *r, bool up, const char *err, void *arg) {
    (void)r;
    tstate *t = arg;
    if (up) {
        t->ups++;
    } else {
        t->downs++;
        t->down_at = it_ms();
        snprintf(t->last_err, sizeof t->last_err, "%s", err != NULL ? err : "");
    }
}

static void loop_open(tstate *t) {
    memset(t, 0, sizeof *t);
    assert_int_equal(uv_loop_init(&t->loop), 0);
    uv_timer_init(&t->loop, &t->tick);
    uv_timer_start(&t->tick, on_tick, 10, 10);
}

/* Run the loop until *flag reaches want or bound_ms passes. */
static bool run_until(tstate *t, const int *flag, int want, int bound_ms) {
    int64_t end = it_ms() + bound_ms;
    while (*flag < want && it_ms() < end) uv_run(&t->loop, UV_RUN_ONCE);
    return *flag >= want;
}

/* Close everything; the loop must close with 0 (no handle of redis_uv left). */
static void loop_close(tstate *t) {
    if (t->r != NULL) redis_uv_close(t->r);
    t->r = NULL;
    uv_close((uv_handle_t *)&t->tick, NULL);
    for (int i = 0; i < 100 && uv_run(&t->loop, UV_RUN_NOWAIT) != 0; i++) it_sleep_ms(1);
    assert_int_equal(uv_loop_close(&t->loop), 0);
}

static redis_uv *open_default(tstate *t, int cmd_timeout_ms) {
    redis_uv_opts o = {.connect_timeout_ms = 500, .command_timeout_ms = cmd_timeout_ms,
                       .backoff_min_ms = 50, .backoff_max_ms = 200, .on_state = on_state, .arg = t};
    t->r = redis_uv_open(&t->loop, &o);
    assert_non_null(t->r);
    return t->r;
}

typedef struct result {
    int done;
    long long integer;
    int type;
    char err[200];
    int64_t at;
} result;

static void on_reply(redis_uv *r, redisReply *rep, const char *err, void *arg) {
    (void)r;
    result *res = arg;
    res->done++;
    res->at = it_ms();
    if (rep != NULL) {
        res->type = rep->type;
        res->integer = rep->integer;
        if (rep->type == REDIS_REPLY_ERROR || rep->type == REDIS_REPLY_STATUS)
            snprintf(res->err, sizeof res->err, "%s", rep->str);
    } else {
        res->type = -1;
        snprintf(res->err, sizeof res->err, "%s", err != NULL ? err : "(no error text)");
    }
}

static int ping(tstate *t, result *res, int timeout_ms) {
    const char *argv[] = {"PING"};
    memset(res, 0, sizeof *res);
    return redis_uv_command(t->r, 1, argv, NULL, timeout_ms, on_reply, res);
}

/* 200 INCRs written in a row come back in order, on one connection. */
static void test_redis_uv_pipelined_commands_answered_in_order_then_clean_close(void **state) {
    (void)state;
    tstate t;
    loop_open(&t);
    open_default(&t, 1000);
    assert_true(run_until(&t, &t.ups, 1, 2000));
    assert_true(redis_uv_connected(t.r));
    char key[128];
    snprintf(key, sizeof key, "%s%s", cache_namespace(), it_unique("it:ruv:incr"));
    enum { N = 200 };
    static result res[N];
    memset(res, 0, sizeof res);
    int done = 0;
    for (int i = 0; i < N; i++) {
        const char *argv[] = {"INCR", key};
        assert_int_equal(redis_uv_command(t.r, 2, argv, NULL, 0, on_reply, &res[i]), 0);
    }
    assert_int_equal(redis_uv_pending(t.r), N);
    int64_t end = it_ms() + 3000;
    while (it_ms() < end) {
        done = 0;
        for (int i = 0; i < N; i++) done += res[i].done;
        if (done == N) break;
        uv_run(&t.loop, UV_RUN_ONCE);
    }
    assert_int_equal(done, N);
    for (int i = 0; i < N; i++) {
        assert_int_equal(res[i].type, REDIS_REPLY_INTEGER);
        assert_int_equal(res[i].integer, i + 1);
    }
    assert_int_equal(redis_uv_pending(t.r), 0);
    /* an error reply is a reply, not a failure: the connection stays */
    const char *bad[] = {"NOSUCHCOMMAND"};
    result e = {0};
    assert_int_equal(redis_uv_command(t.r, 1, bad, NULL, 0, on_reply, &e), 0);
    assert_true(run_until(&t, &e.done, 1, 2000));
    assert_int_equal(e.type, REDIS_REPLY_ERROR);
    assert_true(redis_uv_connected(t.r));
    assert_int_equal(t.downs, 0);
    loop_close(&t);
}

/* A port nobody listens on: the failure is reported at once (hiredis' own
 * libuv adapter never reports it), and attempts repeat with backoff. */
static void test_redis_uv_refused_connect_reported_within_timeout(void **state) {
    (void)state;
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    assert_int_equal(bind(s, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(s, (struct sockaddr *)&a, &len), 0);
    int port = ntohs(a.sin_port); /* bound, not listening: connects are refused */
    tstate t;
    loop_open(&t);
    redis_uv_opts o = {.host = "127.0.0.1", .port = port, .password = "", .connect_timeout_ms = 500,
                       .backoff_min_ms = 50, .backoff_max_ms = 100, .on_state = on_state,
                       .arg = &t};
    int64_t t0 = it_ms();
    t.r = redis_uv_open(&t.loop, &o);
    assert_non_null(t.r);
    assert_true(run_until(&t, &t.downs, 1, 2000));
    int64_t took = t.down_at - t0;
    print_message("refused connect reported after %lld ms: %s\n", (long long)took, t.last_err);
    assert_true(took < 500);
    assert_false(redis_uv_connected(t.r));
    result res;
    assert_int_equal(ping(&t, &res, 0), -1); /* refused while down, callback not called */
    assert_true(run_until(&t, &t.downs, 3, 2000)); /* retried with backoff */
    assert_int_equal(t.ups, 0);
    loop_close(&t);
    close(s);
}

/* A listener whose accept queue is full drops the SYN: the connect hangs
 * and must fail at connect_timeout_ms. */
static void test_redis_uv_unanswered_connect_times_out(void **state) {
    (void)state;
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    assert_int_equal(bind(s, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(s, 0), 0);
    assert_int_equal(getsockname(s, (struct sockaddr *)&a, &len), 0);
    int fill[4];
    for (int i = 0; i < 4; i++) { /* fill the accept queue */
        fill[i] = socket(AF_INET, SOCK_STREAM, 0);
        fcntl(fill[i], F_SETFL, O_NONBLOCK);
        (void)connect(fill[i], (struct sockaddr *)&a, sizeof a);
    }
    it_sleep_ms(50);
    tstate t;
    loop_open(&t);
    redis_uv_opts o = {.host = "127.0.0.1", .port = ntohs(a.sin_port), .password = "",
                       .connect_timeout_ms = 300, .backoff_min_ms = 1000, .on_state = on_state,
                       .arg = &t};
    int64_t t0 = it_ms();
    t.r = redis_uv_open(&t.loop, &o);
    assert_non_null(t.r);
    assert_true(run_until(&t, &t.downs, 1, 3000));
    int64_t took = t.down_at - t0;
    print_message("unanswered connect failed after %lld ms: %s\n", (long long)took, t.last_err);
    assert_true(took >= 250 && took < 1000);
    assert_non_null(strstr(t.last_err, "connect timed out after 300 ms"));
    assert_int_equal(t.ups, 0);
    loop_close(&t);
    for (int i = 0; i < 4; i++) close(fill[i]);
    close(s);
}

/* Redis paused (CLIENT PAUSE): a command times out with a clear error at its
 * deadline, the connection is dropped and made again; once Redis answers
 * again, commands succeed. */
static void test_redis_uv_command_against_paused_redis_times_out_then_recovers(void **state) {
    (void)state;
    tstate t;
    loop_open(&t);
    open_default(&t, 1000);
    assert_true(run_until(&t, &t.ups, 1, 2000));
    redisContext *c = it_redis();
    redisReply *rep = redisCommand(c, "CLIENT PAUSE 1200 ALL");
    assert_non_null(rep);
    assert_int_not_equal(rep->type, REDIS_REPLY_ERROR);
    freeReplyObject(rep);
    redisFree(c);
    result res;
    int64_t t0 = it_ms();
    assert_int_equal(ping(&t, &res, 200), 0);
    assert_true(run_until(&t, &res.done, 1, 2000));
    int64_t took = res.at - t0;
    print_message("PING against paused Redis failed after %lld ms: %s\n", (long long)took, res.err);
    assert_int_equal(res.type, -1);
    assert_string_equal(res.err, "timed out after 200 ms");
    assert_true(took >= 150 && took < 600);
    assert_int_equal(t.downs, 1);
    /* reconnected; after the pause a PING gets PONG */
    int64_t end = it_ms() + 5000;
    bool pong = false;
    while (!pong && it_ms() < end) {
        if (!run_until(&t, &t.ups, t.downs + 1, 500)) continue;
        if (ping(&t, &res, 2000) != 0) continue;
        run_until(&t, &res.done, 1, 2500);
        pong = res.type == REDIS_REPLY_STATUS && strcmp(res.err, "PONG") == 0;
    }
    assert_true(pong);
    loop_close(&t);
}

/* A server that accepts and never answers (a hung Redis): the command times
 * out, and so does every later attempt, without blocking the loop. */
static void test_redis_uv_hung_server_command_times_out(void **state) {
    (void)state;
    int fd;
    int port = it_silent_server(&fd);
    tstate t;
    loop_open(&t);
    redis_uv_opts o = {.host = "127.0.0.1", .port = port, .password = "", .connect_timeout_ms = 300,
                       .command_timeout_ms = 150, .on_state = on_state, .arg = &t};
    t.r = redis_uv_open(&t.loop, &o);
    assert_non_null(t.r);
    assert_true(run_until(&t, &t.ups, 1, 2000)); /* TCP connect completes in the backlog */
    result a, b;
    int64_t t0 = it_ms();
    assert_int_equal(ping(&t, &a, 0), 0);
    const char *argv[] = {"GET", "x"};
    memset(&b, 0, sizeof b);
    assert_int_equal(redis_uv_command(t.r, 2, argv, NULL, 5000, on_reply, &b), 0);
    assert_true(run_until(&t, &b.done, 1, 2000));
    assert_int_equal(a.done, 1);
    assert_string_equal(a.err, "timed out after 150 ms");
    assert_string_equal(b.err, "connection dropped: another command on it timed out");
    assert_true(a.at - t0 < 600);
    assert_int_equal(t.downs, 1);
    loop_close(&t);
    close(fd);
}

/* Redis killed (-9) and started again: the loss is reported, the connection
 * comes back by itself and serves commands. */
static void test_redis_uv_reconnects_after_redis_killed_and_restarted(void **state) {
    (void)state;
    tstate t;
    loop_open(&t);
    open_default(&t, 1000);
    assert_true(run_until(&t, &t.ups, 1, 2000));
    assert_int_equal(it_stack("redis-kill"), 0);
    assert_true(run_until(&t, &t.downs, 1, 3000));
    print_message("loss reported: %s\n", t.last_err);
    result res;
    assert_int_equal(ping(&t, &res, 0), -1);
    assert_int_equal(it_stack("redis-start"), 0);
    int64_t back = it_ms();
    assert_true(run_until(&t, &t.ups, 2, 5000));
    print_message("reconnected %lld ms after Redis was back\n", (long long)(it_ms() - back));
    assert_int_equal(ping(&t, &res, 0), 0);
    assert_true(run_until(&t, &res.done, 1, 2000));
    assert_string_equal(res.err, "PONG");
    loop_close(&t);
}

/* Closed with commands in flight (a blocking BLPOP): each fails with
 * "closed" and the loop closes with nothing left. */
static void test_redis_uv_close_with_commands_in_flight_fails_them_and_leaves_no_handle(
    void **state) {
    (void)state;
    tstate t;
    loop_open(&t);
    open_default(&t, 1000);
    assert_true(run_until(&t, &t.ups, 1, 2000));
    char key[128];
    snprintf(key, sizeof key, "%s%s", cache_namespace(), it_unique("it:ruv:blpop"));
    const char *argv[] = {"BLPOP", key, "5"};
    result a, b;
    memset(&a, 0, sizeof a);
    assert_int_equal(redis_uv_command(t.r, 3, argv, NULL, 6000, on_reply, &a), 0);
    assert_int_equal(ping(&t, &b, 0), 0);
    for (int i = 0; i < 5; i++) uv_run(&t.loop, UV_RUN_NOWAIT);
    assert_int_equal(a.done + b.done, 0);
    redis_uv_close(t.r);
    t.r = NULL;
    assert_int_equal(a.done, 1);
    assert_int_equal(b.done, 1);
    assert_string_equal(a.err, "closed");
    assert_string_equal(b.err, "closed");
    assert_int_equal(t.downs, 0); /* no state callback for a close */
    loop_close(&t);
}

int main(void) {
    it_init("it_redis_uv");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_redis_uv_pipelined_commands_answered_in_order_then_clean_close),
        cmocka_unit_test(test_redis_uv_refused_connect_reported_within_timeout),
        cmocka_unit_test(test_redis_uv_unanswered_connect_times_out),
        cmocka_unit_test(test_redis_uv_command_against_paused_redis_times_out_then_recovers),
        cmocka_unit_test(test_redis_uv_hung_server_command_times_out),
        cmocka_unit_test(test_redis_uv_reconnects_after_redis_killed_and_restarted),
        cmocka_unit_test(test_redis_uv_close_with_commands_in_flight_fails_them_and_leaves_no_handle),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
