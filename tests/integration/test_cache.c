/* test_cache.c — common/cache.c against a real Redis: values, TTLs, and a
 * Redis that hangs (accepts, never answers): calls time out, then fail fast.
 * (Redis stopped for real: test_outage.c.) */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cache.h"
#include "it_util.h"
#include "om_err.h"

static void test_cache_set_get_del_roundtrip(void **state) {
    const char *key = it_unique("it:cache:k");
    static const char val[] = {'a', 0, 'b', (char)0xff};
    assert_int_equal(cache_set(key, val, sizeof val, 10000), 0);
    char *got = NULL;
    size_t len = 0;
    assert_int_equal(cache_get(key, &got, &len), 0);
    assert_int_equal(len, sizeof val);
    assert_memory_equal(got, val, sizeof val);
    free(got);
    assert_int_equal(cache_del(key), 0);
    assert_int_equal(cache_get(key, &got, &len), OM_E_NOT_FOUND);
    assert_null(got);
    cache_local_close();
}

static void test_cache_ttl_expires(void **state) {
    const char *key = it_unique("it:cache:ttl");
    assert_int_equal(cache_set(key, "v", 1, 100), 0);
    redisContext *r = it_redis();
    redisReply *rep = redisCommand(r, "PTTL %s%s", cache_namespace(), key);
    assert_true(rep->integer > 0 && rep->integer <= 100);
    freeReplyObject(rep);
    redisFree(r);
    it_sleep_ms(250);
    char *got = NULL;
    assert_int_equal(cache_get(key, &got, NULL), OM_E_NOT_FOUND);
    cache_local_close();
}

static void test_cache_wrong_type_is_internal_not_unavailable(void **state) {
    const char *key = it_unique("it:cache:list");
    redisContext *r = it_redis();
    freeReplyObject(redisCommand(r, "RPUSH %s%s x", cache_namespace(), key));
    char *got = NULL;
    assert_int_equal(cache_get(key, &got, NULL), OM_E_INTERNAL);
    /* the connection survives a Redis error reply */
    assert_int_equal(cache_set(it_unique("it:cache:after"), "v", 1, 1000), 0);
    freeReplyObject(redisCommand(r, "DEL %s%s", cache_namespace(), key));
    redisFree(r);
    cache_local_close();
}

typedef struct hang_probe {
    int rc[3];
    int64_t ms[3];
} hang_probe;

static void *hang_thread(void *arg) {
    hang_probe *h = arg;
    for (int i = 0; i < 3; i++) {
        int64_t t0 = it_ms();
        char *v = NULL;
        h->rc[i] = cache_get("it:cache:hang", &v, NULL);
        h->ms[i] = it_ms() - t0;
        free(v);
    }
    cache_local_close();
    return NULL;
}

static void test_cache_hung_redis_times_out_then_fails_fast(void **state) {
    int fd;
    int port = it_silent_server(&fd);
    assert_int_equal(cache_setup("127.0.0.1", port, 150), 0);
    hang_probe h = {0};
    pthread_t th;
    pthread_create(&th, NULL, hang_thread, &h);
    pthread_join(th, NULL);
    int64_t t0 = it_ms();
    bool ping = cache_ping();
    int64_t ping_ms = it_ms() - t0;
    close(fd);
    assert_int_equal(cache_setup(getenv("ORGMESH_REDIS_HOST"), atoi(getenv("ORGMESH_REDIS_PORT")),
                                 500),
                     0);
    for (int i = 0; i < 3; i++) assert_int_equal(h.rc[i], OM_E_UNAVAILABLE);
    assert_true(h.ms[0] >= 100 && h.ms[0] < 1000); /* the command timeout */
    assert_true(h.ms[1] < 20);                      /* then no waiting at all */
    assert_true(h.ms[2] < 20);
    assert_false(ping);
    assert_true(ping_ms < 1000);
}

static void test_cache_ping_reports_reachability(void **state) {
    /* after the hung server is gone the ping connection must recover */
    int64_t deadline = it_ms() + 3000;
    while (!cache_ping() && it_ms() < deadline) it_sleep_ms(100);
    assert_true(cache_ping());
}

int main(void) {
    it_init("it_cache");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cache_set_get_del_roundtrip),
        cmocka_unit_test(test_cache_ttl_expires),
        cmocka_unit_test(test_cache_wrong_type_is_internal_not_unavailable),
        cmocka_unit_test(test_cache_hung_redis_times_out_then_fails_fast),
        cmocka_unit_test(test_cache_ping_reports_reachability),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
