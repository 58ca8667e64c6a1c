/* evt.c — events (evt.h, SPEC 2): the outbox row written with the change, the
 * relay thread that moves committed rows to the service's Redis stream, and
 * consumers that apply each event once (applied_events in the same
 * transaction as the handler's effects) and acknowledge it afterwards: one
 * reader thread per subscription, and optionally lanes that apply events of
 * different subjects in parallel. */
#include "evt.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/rand.h>

#include "audit.h"
#include "cache.h"
#include "cache_internal.h"
#include "config.h"
#include "google/protobuf/any.pb-c.h"
#include "google/protobuf/timestamp.pb-c.h"
#include "idem.h"
#include "log.h"
#include "om_err.h"
#include "om_time.h"
#include "orgmesh/events/v1/envelope.pb-c.h"

#define EVT_TYPE_URL_PREFIX "type.googleapis.com/"
#define RELAY_BATCH 256
#define RELAY_IDLE_MS 200          /* poll the outbox this often even without NOTIFY */
#define RELAY_HOUSEKEEPING_MS 60000
#define CONSUMER_BATCH 64
#define CONSUMER_BLOCK_MS 500      /* XREADGROUP BLOCK: also bounds the stop latency */
#define CONSUMER_GC_MS 600000      /* forget long-gone consumers of the group */
#define LANE_DEPTH 8               /* entries in flight per lane: the reader reads no more */
#define LANE_DRAIN_MS 500          /* once stopping, lanes go on with what they hold this long */
#define DEADLETTER_MAXLEN "100000"

static int64_t evt_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Sleep up to ms, returning early once stop_fd is readable (it is written
 * only to stop, and never drained, so every later sleep returns at once). */
static void evt_sleep(int stop_fd, int ms) {
    struct pollfd pfd = {.fd = stop_fd, .events = POLLIN};
    poll(&pfd, 1, ms);
}

static int evt_pipe(int fds[2]) {
    if (pipe(fds) != 0) return OM_E_INTERNAL;
    for (int i = 0; i < 2; i++) fcntl(fds[i], F_SETFD, FD_CLOEXEC);
    return 0;
}

static bool evt_name_ok(const char *s) {
    if (s == NULL || s[0] == '\0' || strlen(s) > 48) return false;
    for (const char *q = s; *q; q++)
        if (!((*q >= 'a' && *q <= 'z') || (*q >= '0' && *q <= '9') || *q == '_' || *q == '-'))
            return false;
    return true;
}

/* ---- envelopes ---------------------------------------------------------- */

static int evt_uuid(char out[37]) {
    uint8_t b[16];
    if (RAND_bytes(b, sizeof b) != 1) return OM_E_INTERNAL;
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40); /* version 4 */
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80); /* RFC 4122 variant */
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
             b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12],
             b[13], b[14], b[15]);
    return 0;
}

static bool evt_uuid_ok(const char *s) {
    if (s == NULL || strlen(s) != 36) return false;
    for (int i = 0; i < 36; i++) {
        char ch = s[i];
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (ch != '-') return false;
        } else if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') ||
                     (ch >= 'A' && ch <= 'F'))) {
            return false;
        }
    }
    return true;
}

int evt_envelope_pack(const char *source, const evt_meta *meta, const ProtobufCMessage *payload,
                      uint8_t **out, size_t *out_len, char *id_out) {
    *out = NULL;
    *out_len = 0;
    if (source == NULL || meta == NULL || payload == NULL) return OM_E_INTERNAL;
    char id[37];
    int rc = evt_uuid(id);
    if (rc != 0) return rc;
    const char *type = payload->descriptor->name;
    size_t plen = protobuf_c_message_get_packed_size(payload);
    size_t ulen = strlen(EVT_TYPE_URL_PREFIX) + strlen(type) + 1;
    uint8_t *pbuf = malloc(plen + 1);
    char *url = malloc(ulen);
    if (pbuf == NULL || url == NULL) {
        free(pbuf);
        free(url);
        return OM_E_NOMEM;
    }
    protobuf_c_message_pack(payload, pbuf);
    snprintf(url, ulen, "%s%s", EVT_TYPE_URL_PREFIX, type);

    char actor[80];
    if (meta->actor != NULL || meta->rule != NULL)
        audit_actor_string(meta->actor, meta->rule, actor, sizeof actor);
    else
        snprintf(actor, sizeof actor, "service:%s", source); /* the service acted itself */

    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    Google__Protobuf__Timestamp ts = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
    ts.seconds = now.tv_sec;
    ts.nanos = (int32_t)now.tv_nsec;
    Google__Protobuf__Any any = GOOGLE__PROTOBUF__ANY__INIT;
    any.type_url = url;
    any.value.data = pbuf;
    any.value.len = plen;
    Orgmesh__Events__V1__Envelope env = ORGMESH__EVENTS__V1__ENVELOPE__INIT;
    env.id = id;
    env.type = (char *)type;
    env.source = (char *)source;
    env.subject = (char *)(meta->subject != NULL ? meta->subject : "");
    env.time = &ts;
    env.actor = actor;
    env.aggregate_version = meta->version;
    env.payload = &any;
    env.trace_id = (char *)(meta->trace_id != NULL ? meta->trace_id : "");

    size_t n = orgmesh__events__v1__envelope__get_packed_size(&env);
    uint8_t *buf = malloc(n + 1);
    if (buf != NULL) orgmesh__events__v1__envelope__pack(&env, buf);
    free(pbuf);
    free(url);
    if (buf == NULL) return OM_E_NOMEM;
    *out = buf;
    *out_len = n;
    if (id_out != NULL) memcpy(id_out, id, sizeof id);
    return 0;
}

int evt_emit(pg_conn *tx, const evt_meta *meta, const ProtobufCMessage *payload, char *id_out) {
    if (meta == NULL || payload == NULL) return OM_E_INTERNAL;
    if (!pg_in_tx(tx)) {
        /* SPEC 2: the event commits with its change or not at all. */
        log_error("evt_emit(%s) outside a transaction", payload->descriptor->name);
        return OM_E_INTERNAL;
    }
    uint8_t *env = NULL;
    size_t n = 0;
    char id[37];
    int rc = evt_envelope_pack(pg_schema(), meta, payload, &env, &n, id);
    if (rc != 0) return rc;
    char channel[96];
    snprintf(channel, sizeof channel, "orgmesh_outbox_%s", pg_schema());
    pg_params p = {0};
    pg_p_str(&p, id);
    pg_p_str(&p, payload->descriptor->name);
    pg_p_str(&p, meta->subject != NULL ? meta->subject : "");
    pg_p_i64(&p, meta->version);
    pg_p_bytes(&p, env, n);
    pg_p_str(&p, channel);
    /* One round trip; the notification is delivered at COMMIT and wakes the relay. */
    rc = pg_exec(tx,
                 "WITH ins AS (INSERT INTO outbox (event_id, type, subject, version, envelope)"
                 " VALUES ($1::uuid, $2, $3, $4, $5) RETURNING id)"
                 " SELECT pg_notify($6, '') FROM ins",
                 &p, NULL);
    free(env);
    if (rc == 0 && id_out != NULL) memcpy(id_out, id, sizeof id);
    return rc;
}

/* ---- the relay ---------------------------------------------------------- */

static struct {
    bool running;
    pthread_t th;
    atomic_bool stop;
    int pipe[2];
    char stream[192];
    char lock_key[128];
    char channel[96];
    char maxlen[24];
} relay;

typedef struct relay_item {
    int64_t id;
    int row;
} relay_item;

static int relay_item_cmp(const void *a, const void *b) {
    int64_t x = ((const relay_item *)a)->id, y = ((const relay_item *)b)->id;
    return (x > y) - (x < y);
}

enum { RELAY_MORE = 1 };

/* One batch: lock the oldest unrelayed rows, XADD them in id order
 * (pipelined), mark them relayed, commit. Any Redis trouble rolls back:
 * the rows wait in the outbox. Returns the number of rows... or RELAY_MORE
 * when a full batch went (look again at once), 0, or a negative code. */
static int relay_batch(pg_conn *pg, cache_conn *rconn) {
    redisContext *ctx = cache_conn_ctx(rconn);
    if (ctx == NULL) return OM_E_UNAVAILABLE; /* Redis down: events wait */
    int rc = pg_begin(pg);
    if (rc != 0) return rc;
    pg_res *r = NULL;
    relay_item *items = NULL;
    pg_params lp = {0};
    pg_p_str(&lp, relay.lock_key);
    /* One relay per service at a time (replicas): the stream then follows
     * outbox order, and per aggregate that is commit order. */
    rc = pg_exec(pg, "SELECT pg_try_advisory_xact_lock(hashtext($1))", &lp, &r);
    if (rc != 0) goto fail;
    bool mine = pg_bool(r, 0, 0);
    pg_free(r);
    r = NULL;
    if (!mine) goto fail; /* rc is 0: another replica is relaying */

    pg_params bp = {0};
    pg_p_i64(&bp, RELAY_BATCH);
    rc = pg_exec(pg,
                 "UPDATE outbox SET relayed_at = now() WHERE id IN (SELECT id FROM outbox"
                 " WHERE relayed_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)"
                 " RETURNING id, type, envelope",
                 &bp, &r);
    if (rc != 0) goto fail;
    int n = pg_nrows(r);
    if (n == 0) goto fail;
    items = malloc((size_t)n * sizeof *items);
    if (items == NULL) {
        rc = OM_E_NOMEM;
        goto fail;
    }
    for (int i = 0; i < n; i++) items[i] = (relay_item){pg_i64(r, i, 0), i};
    qsort(items, (size_t)n, sizeof *items, relay_item_cmp); /* RETURNING has no order */

    for (int i = 0; i < n; i++) {
        size_t elen = 0;
        const uint8_t *env = pg_bytes(r, items[i].row, 2, &elen);
        const char *type = pg_str(r, items[i].row, 1);
        if (env == NULL) {
            rc = OM_E_NOMEM;
            goto fail;
        }
        const char *argv[] = {"XADD", relay.stream, "MAXLEN", "~", relay.maxlen, "*",
                              "e", (const char *)env, "t", type};
        size_t lens[] = {4, strlen(relay.stream), 6, 1, strlen(relay.maxlen), 1,
                         1, elen, 1, strlen(type)};
        if (redisAppendCommandArgv(ctx, 10, argv, lens) != REDIS_OK) {
            /* Replies of what was appended would be out of step: start over. */
            cache_conn_drop(rconn);
            rc = OM_E_NOMEM;
            goto fail;
        }
    }
    for (int i = 0; i < n; i++) {
        redisReply *rep = NULL;
        if (redisGetReply(ctx, (void **)&rep) != REDIS_OK || rep == NULL) {
            cache_conn_drop(rconn);
            rc = OM_E_UNAVAILABLE;
            goto fail;
        }
        rconn->proven = true;
        if (rep->type == REDIS_REPLY_ERROR) {
            log_error("relay: XADD %s failed: %s", relay.stream, rep->str);
            rc = OM_E_INTERNAL; /* read every reply, then roll back */
        }
        freeReplyObject(rep);
    }
    if (rc != 0) goto fail;
    rc = pg_commit(pg);
    if (rc != 0)
        log_warn("relay: COMMIT failed after XADD (%s); those events will be sent again and "
                 "consumers will drop the duplicates",
                 pg_errmsg(pg));
    pg_free(r);
    free(items);
    if (rc != 0) return rc;
    return n == RELAY_BATCH ? RELAY_MORE : 0;
fail:
    pg_free(r);
    free(items);
    pg_rollback(pg);
    return rc;
}

/* Now and then: relayed rows older than a day, stale request ids, and
 * applied event ids too old to be redelivered. */
static void relay_housekeeping(pg_conn *pg, int applied_retention_h) {
    pg_res *r = NULL;
    if (pg_exec(pg,
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox"
                " WHERE relayed_at < now() - interval '24 hours' LIMIT 10000)",
                NULL, &r) == 0 &&
        pg_affected(r) > 0)
        log_info("outbox: deleted %lld relayed rows", (long long)pg_affected(r));
    pg_free(r);
    r = NULL;
    pg_params p = {0};
    pg_p_i64(&p, applied_retention_h);
    pg_exec(pg,
            "DELETE FROM applied_events WHERE event_id IN (SELECT event_id FROM applied_events"
            " WHERE applied_at < now() - make_interval(hours => $1::int) LIMIT 10000)",
            &p, NULL);
    idem_purge(pg, 10000);
}

static void *relay_main(void *arg) {
    (void)arg;
    pg_conn *pg = NULL;
    cache_conn *rconn = NULL;
    if (cache_conn_new(&rconn, 0) != 0) {
        log_error("relay: out of memory");
        return NULL;
    }
    int retention_h = (int)cfg_int("ORGMESH_EVT_APPLIED_RETENTION_H", 168, 1, 24 * 365);
    int64_t next_housekeeping = 0;
    int backoff = 0;
    while (!atomic_load(&relay.stop)) {
        if (pg == NULL) {
            if (pg_connect(&pg) == 0 && pg_listen(pg, relay.channel) != 0) {
                pg_close(pg);
                pg = NULL;
            }
            if (pg == NULL) {
                evt_sleep(relay.pipe[0], 500);
                continue;
            }
        }
        int64_t now = evt_now_ms();
        if (now >= next_housekeeping) {
            relay_housekeeping(pg, retention_h);
            next_housekeeping = now + RELAY_HOUSEKEEPING_MS;
        }
        int rc = relay_batch(pg, rconn);
        if (rc == RELAY_MORE) continue;
        if (rc < 0) {
            /* Redis or PostgreSQL trouble: back off, 100 ms doubling to 2 s. */
            backoff = backoff == 0 ? 100 : (backoff * 2 > 2000 ? 2000 : backoff * 2);
            evt_sleep(relay.pipe[0], backoff);
            continue;
        }
        backoff = 0;
        /* Woken by NOTIFY at commit (an event reaches the stream within a few
         * ms), or after RELAY_IDLE_MS to pick up what another replica's relay
         * left behind. */
        if (pg_wait_notify(pg, RELAY_IDLE_MS, relay.pipe[0]) < 0)
            evt_sleep(relay.pipe[0], RELAY_IDLE_MS);
    }
    pg_close(pg);
    cache_close(rconn);
    return NULL;
}

int evt_relay_start(const char *service) {
    if (relay.running) return OM_E_INTERNAL;
    if (!evt_name_ok(service) || pg_schema()[0] == '\0') {
        log_error("evt_relay_start: bad service name or pg_setup not called");
        return OM_E_INVALID_ARGUMENT;
    }
    snprintf(relay.stream, sizeof relay.stream, "%s%s%s", cache_namespace(), EVT_STREAM_PREFIX,
             service);
    snprintf(relay.lock_key, sizeof relay.lock_key, "orgmesh.relay.%s", pg_schema());
    snprintf(relay.channel, sizeof relay.channel, "orgmesh_outbox_%s", pg_schema());
    snprintf(relay.maxlen, sizeof relay.maxlen, "%lld",
             (long long)cfg_int("ORGMESH_EVT_STREAM_MAXLEN", 1000000, 1000, INT64_C(1) << 40));
    if (evt_pipe(relay.pipe) != 0) return OM_E_INTERNAL;
    atomic_store(&relay.stop, false);
    if (pthread_create(&relay.th, NULL, relay_main, NULL) != 0) {
        close(relay.pipe[0]);
        close(relay.pipe[1]);
        return OM_E_INTERNAL;
    }
    relay.running = true;
    return 0;
}

void evt_relay_stop(void) {
    if (!relay.running) return;
    atomic_store(&relay.stop, true);
    ssize_t w = write(relay.pipe[1], "x", 1);
    (void)w;
    pthread_join(relay.th, NULL);
    close(relay.pipe[0]);
    close(relay.pipe[1]);
    relay.running = false;
}

/* ---- consumers ------------------------------------------------------------- */

/* One reader thread per subscription does all the Redis work of the group
 * (XREADGROUP, XPENDING/XCLAIM, dead letters). With one lane it applies each
 * entry itself; with N lanes it hands each entry to lane hash(subject) % N,
 * a thread with its own PostgreSQL and Redis connections that applies its
 * entries in the order it got them and acknowledges each after its COMMIT:
 * one aggregate's events stay in order, different aggregates run side by
 * side. The reader reads no more than the lanes have room for, so an entry
 * delivered to this consumer waits in memory for little time (and is never
 * taken over by our own claim: consumer_holds). */

typedef struct lane_item {
    struct lane_item *next;
    Orgmesh__Events__V1__Envelope *env;
    char sid[]; /* the stream entry id */
} lane_item;

struct consumer;

typedef struct lane {
    pthread_t th;
    bool started;
    struct consumer *k;
    cache_conn *rc;          /* its own, for XACK after its own COMMIT */
    pthread_cond_t cv;       /* work arrived, or stop (k->mu) */
    lane_item *head, *tail;  /* waiting entries (k->mu) */
    lane_item *cur;          /* the entry being applied (k->mu) */
    bool pg_down;            /* waiting for PostgreSQL (k->mu) */
} lane;

typedef struct consumer {
    pthread_t th;
    bool started;
    char *source;
    evt_handler_fn fn;
    void *arg;
    char stream[192];
    cache_conn *rc;          /* the reader's */
    int nlanes;              /* 1: the reader applies entries itself */
    lane *lanes;             /* nlanes > 1 */
    bool sync_init;          /* mu, room and the lanes' cv exist */
    pthread_mutex_t mu;
    pthread_cond_t room;     /* a lane finished an entry, or stop */
    int inflight;            /* entries handed to lanes and not finished (mu) */
    int cap;                 /* most entries in flight: nlanes * LANE_DEPTH */
    int pg_down;             /* lanes waiting for PostgreSQL (mu) */
} consumer;

static struct {
    bool running;
    atomic_bool stop;
    _Atomic int64_t drain_until_ms; /* lanes start no entry after this, once stopping */
    int pipe[2];
    consumer *cs;
    int n;
    char group[64];
    char name[160];
    char deadletter[192];
    int claim_idle_ms;
    int max_deliveries;
} cons;

#define CONSUMER_MAX_ARGS (6 + CONSUMER_BATCH)

/* A command of NUL-terminated arguments (at most CONSUMER_MAX_ARGS). */
static redisReply *consumer_cmd(cache_conn *rc, int argc, const char **argv) {
    size_t lens[CONSUMER_MAX_ARGS];
    if (argc > CONSUMER_MAX_ARGS) return NULL;
    for (int i = 0; i < argc; i++) lens[i] = strlen(argv[i]);
    return cache_conn_cmd(rc, argc, argv, lens);
}

static bool reply_is(const redisReply *r, int type) { return r != NULL && r->type == type; }

static int consumer_group_create(consumer *k, cache_conn *rc) {
    const char *argv[] = {"XGROUP", "CREATE", k->stream, cons.group, "0", "MKSTREAM"};
    redisReply *r = consumer_cmd(rc, 6, argv);
    if (r == NULL) return OM_E_UNAVAILABLE;
    int ret = 0;
    if (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "BUSYGROUP", 9) != 0) {
        log_error("XGROUP CREATE %s %s: %s", k->stream, cons.group, r->str);
        ret = OM_E_INTERNAL;
    }
    freeReplyObject(r);
    return ret;
}

static void consumer_ack(consumer *k, cache_conn *rc, const char *id) {
    const char *argv[] = {"XACK", k->stream, cons.group, id};
    redisReply *r = consumer_cmd(rc, 4, argv);
    /* A lost XACK only means one more (harmless) delivery later. */
    if (r != NULL) freeReplyObject(r);
}

/* Move an entry to the dead-letter stream, then acknowledge it. `fields`
 * (an array reply of name/value pairs) may be NULL: it is read back. */
static void consumer_deadletter(consumer *k, cache_conn *rc, const char *id,
                                const redisReply *fields, const char *reason, long long deliveries) {
    redisReply *range = NULL;
    if (fields == NULL) {
        const char *argv[] = {"XRANGE", k->stream, id, id};
        range = consumer_cmd(rc, 4, argv);
        if (range == NULL) return;
        if (reply_is(range, REDIS_REPLY_ARRAY) && range->elements == 1 &&
            reply_is(range->element[0], REDIS_REPLY_ARRAY) && range->element[0]->elements == 2)
            fields = range->element[0]->element[1];
    }
    size_t nf = reply_is(fields, REDIS_REPLY_ARRAY) ? fields->elements / 2 * 2 : 0;
    size_t argc = 6 + nf + 10; /* XADD key MAXLEN ~ n * | fields | 5 pairs */
    const char **argv = malloc(argc * sizeof *argv);
    size_t *lens = malloc(argc * sizeof *lens);
    if (argv == NULL || lens == NULL) {
        free(argv);
        free(lens);
        freeReplyObject(range);
        return; /* stays pending; the next claim round tries again */
    }
    char dl[24];
    snprintf(dl, sizeof dl, "%lld", deliveries);
    size_t a = 0;
#define ARG(s, l) (argv[a] = (s), lens[a] = (l), a++)
    ARG("XADD", 4);
    ARG(cons.deadletter, strlen(cons.deadletter));
    ARG("MAXLEN", 6);
    ARG("~", 1);
    ARG(DEADLETTER_MAXLEN, strlen(DEADLETTER_MAXLEN));
    ARG("*", 1);
    for (size_t i = 0; i < nf; i++) {
        const redisReply *f = fields->element[i];
        if (reply_is(f, REDIS_REPLY_STRING))
            ARG(f->str, f->len);
        else
            ARG("", 0);
    }
    ARG("stream", 6);
    ARG(k->stream, strlen(k->stream));
    ARG("id", 2);
    ARG(id, strlen(id));
    ARG("group", 5);
    ARG(cons.group, strlen(cons.group));
    ARG("reason", 6);
    ARG(reason, strlen(reason));
    ARG("deliveries", 10);
    ARG(dl, strlen(dl));
#undef ARG
    redisReply *r = cache_conn_cmd(rc, (int)a, argv, lens);
    free(argv);
    free(lens);
    bool ok = reply_is(r, REDIS_REPLY_STRING);
    if (r != NULL) freeReplyObject(r);
    freeReplyObject(range);
    if (!ok) return; /* not parked: leave it pending rather than lose it */
    log_error("event %s of %s dead-lettered to %s: %s", id, k->stream, cons.deadletter, reason);
    consumer_ack(k, rc, id);
}

typedef struct apply_ctx {
    consumer *k;
    const evt_event *ev;
    bool dup;
} apply_ctx;

/* In the transaction: record the id first; a second delivery finds it and
 * applies nothing (ON CONFLICT waits for a concurrent twin to finish). */
static int consumer_apply(pg_conn *c, void *arg) {
    apply_ctx *a = arg;
    a->dup = false;
    pg_params p = {0};
    pg_p_str(&p, a->ev->id);
    pg_res *r = NULL;
    int rc = pg_exec(c,
                     "INSERT INTO applied_events (event_id) VALUES ($1::uuid)"
                     " ON CONFLICT DO NOTHING",
                     &p, &r);
    if (rc != 0) return rc;
    int64_t n = pg_affected(r);
    pg_free(r);
    if (n == 0) {
        a->dup = true;
        return 0;
    }
    return a->k->fn(c, a->ev, a->k->arg);
}

static const redisReply *reply_field(const redisReply *fields, const char *name) {
    if (!reply_is(fields, REDIS_REPLY_ARRAY)) return NULL;
    for (size_t i = 0; i + 1 < fields->elements; i += 2) {
        const redisReply *f = fields->element[i];
        if (reply_is(f, REDIS_REPLY_STRING) && strcmp(f->str, name) == 0 &&
            reply_is(fields->element[i + 1], REDIS_REPLY_STRING))
            return fields->element[i + 1];
    }
    return NULL;
}

/* Envelope time as unix microseconds; 0 when absent or out of range (the
 * bytes come from the stream: never trust them with an overflow). */
static int64_t evt_time_us(const Google__Protobuf__Timestamp *t) {
    int64_t us = 0;
    if (t == NULL || !om_timestamp_to_us(t->seconds, t->nanos, &us)) return 0;
    return us;
}

/* The evt_event view of an envelope (pointers into it). */
static void event_of(const Orgmesh__Events__V1__Envelope *env, const char *sid, evt_event *ev) {
    *ev = (evt_event){
        .id = env->id,
        .type = env->type,
        .source = env->source,
        .subject = env->subject,
        .version = env->aggregate_version,
        .time_us = evt_time_us(env->time),
        .actor = env->actor,
        .payload = env->payload != NULL ? env->payload->value.data : NULL,
        .payload_len = env->payload != NULL ? env->payload->value.len : 0,
        .stream_id = sid,
    };
}

ProtobufCMessage *evt_envelope_unpack(const uint8_t *data, size_t len, evt_event *ev) {
    Orgmesh__Events__V1__Envelope *env = orgmesh__events__v1__envelope__unpack(NULL, len, data);
    if (env == NULL) return NULL;
    if (!evt_uuid_ok(env->id)) {
        orgmesh__events__v1__envelope__free_unpacked(env, NULL);
        return NULL;
    }
    if (ev != NULL) event_of(env, NULL, ev);
    return &env->base;
}

/* The envelope of a delivered entry, with its entry id in *sid; NULL when
 * there is nothing to apply: a deleted entry (nil), or a malformed one,
 * which goes to the dead letters at once. */
static Orgmesh__Events__V1__Envelope *consumer_unpack(consumer *k, cache_conn *rc,
                                                      const redisReply *entry, const char **sid) {
    *sid = NULL;
    if (!reply_is(entry, REDIS_REPLY_ARRAY) || entry->elements != 2 ||
        !reply_is(entry->element[0], REDIS_REPLY_STRING))
        return NULL;
    *sid = entry->element[0]->str;
    const redisReply *fields = entry->element[1];
    const redisReply *e = reply_field(fields, "e");
    ProtobufCMessage *msg =
        e != NULL ? evt_envelope_unpack((const uint8_t *)e->str, e->len, NULL) : NULL;
    if (msg == NULL) {
        consumer_deadletter(k, rc, *sid, fields, "malformed: no valid orgmesh.events.v1.Envelope", 1);
        return NULL;
    }
    return (Orgmesh__Events__V1__Envelope *)msg;
}

/* Apply one event in its own transaction and acknowledge it: 0 when applied
 * (or a duplicate) and acked, 1 when the handler failed (the entry stays
 * pending), or OM_E_UNAVAILABLE (PostgreSQL gone, or a handler that could
 * not reach what it needs): the caller backs off. */
static int consumer_apply_env(consumer *k, pg_conn *pg, cache_conn *rc,
                              const Orgmesh__Events__V1__Envelope *env, const char *sid) {
    evt_event ev;
    event_of(env, sid, &ev);
    apply_ctx a = {.k = k, .ev = &ev};
    log_set_trace(env->trace_id);
    int ret = pg_tx(pg, consumer_apply, &a);
    if (ret == 0) {
        consumer_ack(k, rc, sid);
        if (a.dup) log_debug("event %s (%s) was already applied", ev.id, ev.type);
    } else {
        log_warn("event %s (%s, entry %s) not applied: %s %s", ev.id, ev.type, sid,
                 om_err_name(ret), pg != NULL ? pg_errmsg(pg) : "");
    }
    log_set_trace(NULL);
    return ret == OM_E_UNAVAILABLE ? OM_E_UNAVAILABLE : (ret == 0 ? 0 : 1);
}

/* Process one delivered entry in the reader (one lane): as
 * consumer_apply_env; 0 for an entry with nothing to apply. */
static int consumer_process(consumer *k, pg_conn *pg, cache_conn *rc, const redisReply *entry) {
    const char *sid = NULL;
    Orgmesh__Events__V1__Envelope *env = consumer_unpack(k, rc, entry, &sid);
    if (env == NULL) return 0;
    int ret = consumer_apply_env(k, pg, rc, env, sid);
    orgmesh__events__v1__envelope__free_unpacked(env, NULL);
    return ret;
}

/* FNV-1a: the lane of a subject. */
static uint32_t subject_hash(const char *s) {
    uint32_t h = 2166136261u;
    for (; s != NULL && *s; s++) h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

/* Hand one delivered entry to its subject's lane. On exhaustion the entry
 * stays pending (a claim retries it). */
static void consumer_dispatch(consumer *k, cache_conn *rc, const redisReply *entry) {
    const char *sid = NULL;
    Orgmesh__Events__V1__Envelope *env = consumer_unpack(k, rc, entry, &sid);
    if (env == NULL) return;
    size_t n = strlen(sid) + 1;
    lane_item *it = malloc(sizeof *it + n);
    if (it == NULL) {
        log_error("event %s (entry %s): out of memory; left pending", env->id, sid);
        orgmesh__events__v1__envelope__free_unpacked(env, NULL);
        return;
    }
    it->next = NULL;
    it->env = env;
    memcpy(it->sid, sid, n);
    lane *l = &k->lanes[subject_hash(env->subject) % (uint32_t)k->nlanes];
    pthread_mutex_lock(&k->mu);
    if (l->tail != NULL)
        l->tail->next = it;
    else
        l->head = it;
    l->tail = it;
    k->inflight++;
    pthread_cond_signal(&l->cv);
    pthread_mutex_unlock(&k->mu);
}

/* Process (one lane) or dispatch (lanes) an array of entries; with one lane
 * stop at the first PostgreSQL trouble. */
static int consumer_process_all(consumer *k, pg_conn *pg, cache_conn *rc, const redisReply *arr) {
    for (size_t i = 0; reply_is(arr, REDIS_REPLY_ARRAY) && i < arr->elements; i++) {
        if (atomic_load(&cons.stop)) return 0;
        if (k->nlanes > 1)
            consumer_dispatch(k, rc, arr->element[i]);
        else if (consumer_process(k, pg, rc, arr->element[i]) == OM_E_UNAVAILABLE)
            return OM_E_UNAVAILABLE;
    }
    return 0;
}

/* How many more entries the reader may take now. */
static int consumer_room(consumer *k) {
    if (k->nlanes <= 1) return CONSUMER_BATCH;
    pthread_mutex_lock(&k->mu);
    int room = k->cap - k->inflight;
    pthread_mutex_unlock(&k->mu);
    if (room < 0) room = 0;
    return room > CONSUMER_BATCH ? CONSUMER_BATCH : room;
}

static void consumer_wait_room(consumer *k, int ms) {
    struct timespec until = om_deadline(CLOCK_MONOTONIC, ms);
    pthread_mutex_lock(&k->mu);
    if (k->inflight >= k->cap && !atomic_load(&cons.stop))
        pthread_cond_timedwait(&k->room, &k->mu, &until);
    pthread_mutex_unlock(&k->mu);
}

static bool consumer_lanes_pg_down(consumer *k) {
    if (k->nlanes <= 1) return false;
    pthread_mutex_lock(&k->mu);
    bool down = k->pg_down > 0;
    pthread_mutex_unlock(&k->mu);
    return down;
}

/* Whether entry `sid` is in one of our lanes (k->mu held). */
static bool consumer_holds(const consumer *k, const char *sid) {
    for (int i = 0; i < k->nlanes && k->lanes != NULL; i++) {
        const lane *l = &k->lanes[i];
        if (l->cur != NULL && strcmp(l->cur->sid, sid) == 0) return true;
        for (const lane_item *it = l->head; it != NULL; it = it->next)
            if (strcmp(it->sid, sid) == 0) return true;
    }
    return false;
}

/* One XPENDING row: [id, consumer, idle ms, deliveries]. */
static bool pending_ok(const redisReply *p) {
    return reply_is(p, REDIS_REPLY_ARRAY) && p->elements >= 4 &&
           reply_is(p->element[0], REDIS_REPLY_STRING) &&
           reply_is(p->element[3], REDIS_REPLY_INTEGER);
}

/* Take over entries idle for longer than the claim time, from consumers
 * that died (or from ourselves, after a failed attempt: this is the retry),
 * at most `room` of them; never one that waits in our own lanes. Entries
 * delivered max_deliveries times already go to the dead letters. */
static int consumer_claim(consumer *k, pg_conn *pg, cache_conn *rc, int room) {
    char idle[24], batch[8];
    snprintf(idle, sizeof idle, "%d", cons.claim_idle_ms);
    snprintf(batch, sizeof batch, "%d", CONSUMER_BATCH);
    const char *pargv[] = {"XPENDING", k->stream, cons.group, "IDLE", idle, "-", "+", batch};
    redisReply *pend = consumer_cmd(rc, 8, pargv);
    if (pend == NULL) return OM_E_UNAVAILABLE;
    if (!reply_is(pend, REDIS_REPLY_ARRAY) || pend->elements == 0) {
        int ret = reply_is(pend, REDIS_REPLY_ERROR) && strncmp(pend->str, "NOGROUP", 7) == 0
                      ? OM_E_NOT_FOUND
                      : 0;
        freeReplyObject(pend);
        return ret;
    }
    /* Rows of entries that wait in our lanes are not touched: they are
     * idle only because the lanes have not got to them yet. */
    bool *skip = calloc(pend->elements, sizeof *skip);
    if (skip == NULL) {
        freeReplyObject(pend);
        return OM_E_NOMEM;
    }
    if (k->nlanes > 1) {
        pthread_mutex_lock(&k->mu);
        for (size_t i = 0; i < pend->elements; i++)
            skip[i] = !pending_ok(pend->element[i]) ||
                      consumer_holds(k, pend->element[i]->element[0]->str);
        pthread_mutex_unlock(&k->mu);
    } else {
        for (size_t i = 0; i < pend->elements; i++) skip[i] = !pending_ok(pend->element[i]);
    }
    const char *argv[CONSUMER_MAX_ARGS];
    int argc = 0, ndead = 0;
    argv[argc++] = "XCLAIM";
    argv[argc++] = k->stream;
    argv[argc++] = cons.group;
    argv[argc++] = cons.name;
    argv[argc++] = idle;
    for (size_t i = 0; i < pend->elements && argc < CONSUMER_MAX_ARGS; i++) {
        const redisReply *p = pend->element[i];
        if (skip[i]) continue;
        if (p->element[3]->integer >= cons.max_deliveries)
            ndead++;
        else if (argc - 5 < room)
            argv[argc++] = p->element[0]->str;
    }
    int ret = 0;
    if (argc > 5) {
        /* XCLAIM re-checks the idle time, so of two claimers only one wins. */
        redisReply *cl = consumer_cmd(rc, argc, argv);
        if (cl == NULL) {
            ret = OM_E_UNAVAILABLE;
        } else {
            if (reply_is(cl, REDIS_REPLY_ARRAY) && cl->elements > 0)
                log_info("claimed %zu idle entries of %s", cl->elements, k->stream);
            ret = consumer_process_all(k, pg, rc, cl);
            freeReplyObject(cl);
        }
    }
    for (size_t i = 0; ret == 0 && ndead > 0 && i < pend->elements; i++) {
        const redisReply *p = pend->element[i];
        if (skip[i] || p->element[3]->integer < cons.max_deliveries) continue;
        const char *jargv[] = {"XCLAIM", k->stream, cons.group, cons.name, idle,
                               p->element[0]->str, "JUSTID"};
        redisReply *j = consumer_cmd(rc, 7, jargv);
        if (j == NULL) {
            ret = OM_E_UNAVAILABLE;
            break;
        }
        if (reply_is(j, REDIS_REPLY_ARRAY) && j->elements == 1) { /* ours now */
            char reason[96];
            snprintf(reason, sizeof reason, "delivered %lld times without success",
                     p->element[3]->integer);
            consumer_deadletter(k, rc, p->element[0]->str, NULL, reason, p->element[3]->integer);
        }
        freeReplyObject(j);
    }
    free(skip);
    freeReplyObject(pend);
    return ret;
}

static int consumer_read(consumer *k, pg_conn *pg, cache_conn *rc, int room) {
    char count[8], block[16];
    snprintf(count, sizeof count, "%d", room);
    snprintf(block, sizeof block, "%d", CONSUMER_BLOCK_MS);
    const char *argv[] = {"XREADGROUP", "GROUP", cons.group, cons.name, "COUNT", count,
                          "BLOCK", block, "STREAMS", k->stream, ">"};
    redisReply *r = consumer_cmd(rc, 11, argv);
    if (r == NULL) return OM_E_UNAVAILABLE;
    int ret = 0;
    if (r->type == REDIS_REPLY_ERROR) {
        ret = strncmp(r->str, "NOGROUP", 7) == 0 ? OM_E_NOT_FOUND : OM_E_INTERNAL;
        if (ret == OM_E_INTERNAL) log_error("XREADGROUP %s: %s", k->stream, r->str);
    } else if (reply_is(r, REDIS_REPLY_ARRAY)) {
        for (size_t s = 0; s < r->elements && ret == 0; s++) {
            const redisReply *st = r->element[s];
            if (reply_is(st, REDIS_REPLY_ARRAY) && st->elements == 2)
                ret = consumer_process_all(k, pg, rc, st->element[1]);
        }
    }
    freeReplyObject(r);
    return ret;
}

/* Consumers whose process is gone stay listed in the group; forget those
 * without pending entries that have been silent for an hour. */
static void consumer_gc(consumer *k, cache_conn *rc) {
    const char *argv[] = {"XINFO", "CONSUMERS", k->stream, cons.group};
    redisReply *r = consumer_cmd(rc, 4, argv);
    for (size_t i = 0; reply_is(r, REDIS_REPLY_ARRAY) && i < r->elements; i++) {
        const redisReply *c = r->element[i];
        const char *name = NULL;
        long long pending = -1, idle = 0;
        for (size_t j = 0; reply_is(c, REDIS_REPLY_ARRAY) && j + 1 < c->elements; j += 2) {
            const redisReply *key = c->element[j], *val = c->element[j + 1];
            if (!reply_is(key, REDIS_REPLY_STRING)) continue;
            if (strcmp(key->str, "name") == 0 && reply_is(val, REDIS_REPLY_STRING)) name = val->str;
            if (strcmp(key->str, "pending") == 0) pending = val->integer;
            if (strcmp(key->str, "idle") == 0) idle = val->integer;
        }
        if (name != NULL && pending == 0 && idle > 3600000 && strcmp(name, cons.name) != 0) {
            const char *dargv[] = {"XGROUP", "DELCONSUMER", k->stream, cons.group, name};
            redisReply *d = consumer_cmd(rc, 5, dargv);
            if (d != NULL) freeReplyObject(d);
        }
    }
    if (r != NULL) freeReplyObject(r);
}

/* ---- lanes ---------------------------------------------------------------- */

static void lane_set_pg_down(lane *l, bool down) {
    consumer *k = l->k;
    pthread_mutex_lock(&k->mu);
    if (l->pg_down != down) k->pg_down += down ? 1 : -1;
    l->pg_down = down;
    pthread_mutex_unlock(&k->mu);
}

/* Apply one entry of the lane. While PostgreSQL is away the lane keeps the
 * entry, probes every 500 ms and applies it when PostgreSQL is back; the
 * reader meanwhile reads and claims nothing (a claim would count as a
 * delivery). Only an outage seen as such (no connection, or a probe that
 * failed) is waited out in place: an entry whose own work fails with a
 * PostgreSQL error (a statement timeout) stays pending, so that claims count
 * its deliveries and dead-letter it in the end. Returns as
 * consumer_apply_env; OM_E_UNAVAILABLE also when stopped while waiting (the
 * entry stays pending). */
static int lane_apply(lane *l, pg_conn **pg, const lane_item *it) {
    consumer *k = l->k;
    for (;;) {
        int ret = OM_E_UNAVAILABLE;
        bool down = true, outage = true;
        if (*pg != NULL || pg_connect(pg) == 0) {
            ret = consumer_apply_env(k, *pg, l->rc, it->env, it->sid);
            const char *st = pg_sqlstate(*pg);
            down = ret == OM_E_UNAVAILABLE && st[0] != '\0';
            outage = strncmp(st, "08", 2) == 0; /* connection exception */
        }
        if (!down) return ret;
        lane_set_pg_down(l, true);
        bool back = false;
        while (!back && !atomic_load(&cons.stop)) {
            evt_sleep(cons.pipe[0], 500);
            if (atomic_load(&cons.stop)) break;
            back = *pg != NULL ? pg_exec(*pg, "SELECT 1", NULL, NULL) == 0 : pg_connect(pg) == 0;
            if (!back) outage = true;
        }
        lane_set_pg_down(l, false);
        if (!back) return OM_E_UNAVAILABLE;
        if (!outage) return ret;
    }
}

/* A lane: applies the entries the reader hands it, one at a time, in order.
 * Once stopping, it goes on with what it holds until cons.drain_until_ms
 * (a rolling restart then leaves little for a claim), then leaves the rest
 * pending: another consumer claims it. */
static void *lane_main(void *arg) {
    lane *l = arg;
    consumer *k = l->k;
    pg_conn *pg = NULL; /* connected on the first entry: idle lanes cost nothing */
    int backoff = 0;
    pthread_mutex_lock(&k->mu);
    for (;;) {
        while (l->head == NULL && !atomic_load(&cons.stop)) pthread_cond_wait(&l->cv, &k->mu);
        if (l->head == NULL) break;
        if (atomic_load(&cons.stop) &&
            (backoff > 0 || evt_now_ms() >= atomic_load(&cons.drain_until_ms)))
            break;
        lane_item *it = l->head;
        l->head = it->next;
        if (l->head == NULL) l->tail = NULL;
        l->cur = it;
        pthread_mutex_unlock(&k->mu);

        int ret = lane_apply(l, &pg, it);

        pthread_mutex_lock(&k->mu);
        l->cur = NULL;
        k->inflight--;
        pthread_cond_signal(&k->room);
        pthread_mutex_unlock(&k->mu);
        orgmesh__events__v1__envelope__free_unpacked(it->env, NULL);
        free(it);
        if (ret == OM_E_UNAVAILABLE) {
            /* what the handler needs is away: do not run through the queue */
            backoff = backoff == 0 ? 100 : (backoff * 2 > 2000 ? 2000 : backoff * 2);
            evt_sleep(cons.pipe[0], backoff);
        } else {
            backoff = 0;
        }
        pthread_mutex_lock(&k->mu);
    }
    /* Not started: they stay pending in the group, and are claimed later. */
    lane_item *rest = l->head;
    l->head = l->tail = NULL;
    for (lane_item *it = rest; it != NULL; it = it->next) k->inflight--;
    pthread_cond_signal(&k->room);
    pthread_mutex_unlock(&k->mu);
    while (rest != NULL) {
        lane_item *next = rest->next;
        orgmesh__events__v1__envelope__free_unpacked(rest->env, NULL);
        free(rest);
        rest = next;
    }
    pg_close(pg);
    pg_local_close();
    return NULL;
}

/* ---- the reader ------------------------------------------------------------- */

static void *consumer_main(void *arg) {
    consumer *k = arg;
    cache_conn *rc = k->rc;
    bool lanes = k->nlanes > 1;
    pg_conn *pg = NULL; /* one lane only: the lanes have their own */
    int claim_every = cons.claim_idle_ms / 2;
    if (claim_every < 50) claim_every = 50;
    if (claim_every > 2000) claim_every = 2000;
    bool group_ok = false, pg_down = false;
    unsigned group_gen = 0;
    int64_t next_claim = 0, next_gc = evt_now_ms() + CONSUMER_GC_MS;
    int backoff = 0;
    while (!atomic_load(&cons.stop)) {
        int ret = 0;
        if (lanes) {
            /* Touch no entry while a lane waits for PostgreSQL (see below). */
            if (consumer_lanes_pg_down(k)) {
                evt_sleep(cons.pipe[0], 500);
                continue;
            }
        } else if (pg == NULL) {
            if (pg_connect(&pg) != 0) {
                evt_sleep(cons.pipe[0], 500);
                continue;
            }
        } else if (pg_down) {
            /* Touch no entry while PostgreSQL is away: every claim would
             * count as a delivery and push entries towards the dead letters. */
            if (pg_exec(pg, "SELECT 1", NULL, NULL) != 0) {
                evt_sleep(cons.pipe[0], 500);
                continue;
            }
            pg_down = false;
        }
        if (cache_conn_ctx(rc) == NULL) {
            evt_sleep(cons.pipe[0], 250); /* cache_conn retries once per second */
            continue;
        }
        if (!group_ok || group_gen != rc->gen) {
            /* After a reconnect Redis may have restarted empty. */
            ret = consumer_group_create(k, rc);
            group_ok = ret == 0;
            group_gen = rc->gen;
        }
        int room = consumer_room(k);
        if (ret == 0 && room == 0) {
            consumer_wait_room(k, CONSUMER_BLOCK_MS); /* the lanes are full */
            continue;
        }
        int64_t now = evt_now_ms();
        if (ret == 0 && now >= next_claim) {
            ret = consumer_claim(k, pg, rc, room);
            next_claim = now + claim_every;
            room = consumer_room(k);
        }
        if (ret == 0 && now >= next_gc) {
            consumer_gc(k, rc);
            next_gc = now + CONSUMER_GC_MS;
        }
        if (ret == 0 && room > 0) ret = consumer_read(k, pg, rc, room);
        if (ret == OM_E_NOT_FOUND) group_ok = false; /* NOGROUP: stream or group deleted */
        if (ret == OM_E_UNAVAILABLE && pg != NULL && pg_sqlstate(pg)[0] != '\0') pg_down = true;
        if (ret != 0) {
            backoff = backoff == 0 ? 100 : (backoff * 2 > 2000 ? 2000 : backoff * 2);
            evt_sleep(cons.pipe[0], backoff);
        } else {
            backoff = 0;
        }
    }
    pg_close(pg);
    pg_local_close();
    return NULL;
}

static void consumers_free(void) {
    for (int i = 0; i < cons.n; i++) {
        consumer *k = &cons.cs[i];
        for (int j = 0; k->lanes != NULL && j < k->nlanes; j++) {
            cache_close(k->lanes[j].rc);
            if (k->sync_init) pthread_cond_destroy(&k->lanes[j].cv);
        }
        free(k->lanes);
        if (k->sync_init) {
            pthread_cond_destroy(&k->room);
            pthread_mutex_destroy(&k->mu);
        }
        cache_close(k->rc);
        free(k->source);
    }
    free(cons.cs);
    cons.cs = NULL;
    cons.n = 0;
}

/* Mutex, condition variables (monotonic clock) and connections of one
 * subscription. */
static int consumer_init(consumer *k, const evt_subscription *sub, int nlanes) {
    k->source = strdup(sub->source);
    if (k->source == NULL) return OM_E_NOMEM;
    k->fn = sub->fn;
    k->arg = sub->arg;
    snprintf(k->stream, sizeof k->stream, "%s%s%s", cache_namespace(), EVT_STREAM_PREFIX,
             sub->source);
    /* The command timeout must outlast XREADGROUP's BLOCK. */
    if (cache_conn_new(&k->rc, CONSUMER_BLOCK_MS + 1500) != 0) return OM_E_NOMEM;
    k->nlanes = nlanes;
    k->cap = nlanes * LANE_DEPTH;
    if (nlanes <= 1) return 0;
    k->lanes = calloc((size_t)nlanes, sizeof *k->lanes);
    if (k->lanes == NULL) return OM_E_NOMEM;
    for (int j = 0; j < nlanes; j++) {
        k->lanes[j].k = k;
        if (cache_conn_new(&k->lanes[j].rc, 0) != 0) return OM_E_NOMEM;
    }
    pthread_condattr_t ca;
    if (pthread_condattr_init(&ca) != 0) return OM_E_NOMEM;
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int created = 0;
    bool ok = pthread_mutex_init(&k->mu, NULL) == 0;
    if (ok && pthread_cond_init(&k->room, &ca) != 0) {
        pthread_mutex_destroy(&k->mu);
        ok = false;
    }
    for (; ok && created < nlanes; created++)
        if (pthread_cond_init(&k->lanes[created].cv, &ca) != 0) break;
    pthread_condattr_destroy(&ca);
    if (ok && created < nlanes) {
        for (int j = 0; j < created; j++) pthread_cond_destroy(&k->lanes[j].cv);
        pthread_cond_destroy(&k->room);
        pthread_mutex_destroy(&k->mu);
        ok = false;
    }
    if (!ok) return OM_E_NOMEM;
    k->sync_init = true;
    return 0;
}

int evt_consumers_start(const char *service, const evt_subscription *subs, int n) {
    if (cons.running) return OM_E_INTERNAL;
    if (!evt_name_ok(service) || n <= 0 || subs == NULL) return OM_E_INVALID_ARGUMENT;
    for (int i = 0; i < n; i++)
        if (!evt_name_ok(subs[i].source) || subs[i].fn == NULL || subs[i].lanes < 0 ||
            subs[i].lanes > EVT_LANES_MAX)
            return OM_E_INVALID_ARGUMENT;
    cons.claim_idle_ms = (int)cfg_int("ORGMESH_EVT_CLAIM_IDLE_MS", 10000, 10, 86400000);
    cons.max_deliveries = (int)cfg_int("ORGMESH_EVT_MAX_DELIVERIES", 10, 1, 1000000);
    /* 0: each subscription's own choice (evt_subscription.lanes, 0 = 1). */
    int lanes_all = (int)cfg_int("ORGMESH_EVT_LANES", 0, 0, EVT_LANES_MAX);
    snprintf(cons.group, sizeof cons.group, "%s", service);
    snprintf(cons.deadletter, sizeof cons.deadletter, "%s%s%s", cache_namespace(),
             EVT_DEADLETTER_PREFIX, service);
    /* Unique per process, readable in XINFO: host (pod) name, pid, random. */
    char host[64] = "host";
    gethostname(host, sizeof host);
    host[sizeof host - 1] = '\0';
    uint8_t rnd[4] = {0};
    RAND_bytes(rnd, sizeof rnd);
    snprintf(cons.name, sizeof cons.name, "%s-%ld-%02x%02x%02x%02x", host, (long)getpid(), rnd[0],
             rnd[1], rnd[2], rnd[3]);
    cons.cs = calloc((size_t)n, sizeof *cons.cs);
    if (cons.cs == NULL) return OM_E_NOMEM;
    cons.n = n;
    char lanes_log[128] = "";
    size_t ll = 0;
    for (int i = 0; i < n; i++) {
        int nl = lanes_all > 0 ? lanes_all : (subs[i].lanes > 0 ? subs[i].lanes : 1);
        int rc = consumer_init(&cons.cs[i], &subs[i], nl);
        if (rc != 0) {
            consumers_free();
            return rc;
        }
        if (ll < sizeof lanes_log) {
            int w = snprintf(lanes_log + ll, sizeof lanes_log - ll, "%s%s %d", i ? ", " : "",
                             subs[i].source, nl);
            if (w > 0) ll += (size_t)w;
        }
    }
    if (evt_pipe(cons.pipe) != 0) {
        consumers_free();
        return OM_E_INTERNAL;
    }
    atomic_store(&cons.stop, false);
    cons.running = true;
    for (int i = 0; i < n; i++) {
        consumer *k = &cons.cs[i];
        for (int j = 0; j < k->nlanes && k->lanes != NULL; j++) {
            if (pthread_create(&k->lanes[j].th, NULL, lane_main, &k->lanes[j]) != 0) {
                evt_consumers_stop();
                return OM_E_INTERNAL;
            }
            k->lanes[j].started = true;
        }
        if (pthread_create(&k->th, NULL, consumer_main, k) != 0) {
            evt_consumers_stop();
            return OM_E_INTERNAL;
        }
        k->started = true;
    }
    log_info("consumer %s of group %s: %d subscription(s), lanes: %s", cons.name, cons.group, n,
             lanes_log);
    return 0;
}

void evt_consumers_stop(void) {
    if (!cons.running) return;
    /* Lanes may go on with what they hold until then; set before `stop`,
     * so that a lane that sees `stop` sees it too. */
    atomic_store(&cons.drain_until_ms, evt_now_ms() + LANE_DRAIN_MS);
    atomic_store(&cons.stop, true);
    ssize_t w = write(cons.pipe[1], "x", 1);
    (void)w;
    for (int i = 0; i < cons.n; i++) {
        consumer *k = &cons.cs[i];
        if (!k->sync_init) continue;
        /* Under the mutex: a lane checks `stop` and waits atomically. */
        pthread_mutex_lock(&k->mu);
        for (int j = 0; j < k->nlanes; j++) pthread_cond_broadcast(&k->lanes[j].cv);
        pthread_cond_broadcast(&k->room);
        pthread_mutex_unlock(&k->mu);
    }
    for (int i = 0; i < cons.n; i++)
        if (cons.cs[i].started) pthread_join(cons.cs[i].th, NULL);
    for (int i = 0; i < cons.n; i++)
        for (int j = 0; cons.cs[i].lanes != NULL && j < cons.cs[i].nlanes; j++)
            if (cons.cs[i].lanes[j].started) pthread_join(cons.cs[i].lanes[j].th, NULL);
    close(cons.pipe[0]);
    close(cons.pipe[1]);
    consumers_free();
    cons.running = false;
}
