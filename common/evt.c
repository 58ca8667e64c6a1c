/* evt.c — events (evt.h, SPEC 2): the outbox row written with the change, the
 * relay that moves committed rows to the service's Redis stream (rounds on
 * the worker pool, started by the process loop), and consumers that apply
 * each event once (applied_events in the same transaction as the handler's
 * effects) and acknowledge it afterwards: one reader thread per
 * subscription, and lanes — queues on the worker pool, one job each in
 * flight — that apply events of different subjects in parallel. */
#include "evt.h"
#include "ctoken.h"

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
#include "loop.h"
#include "work.h"
#include "metrics.h"
#include "redis_uv.h"
#include "trace.h"
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
    /* Issue 19: a PRODUCER span, child of the thread's context (the call or
     * the event that caused this one); the envelope carries its context so
     * that the consumers continue the trace with a child span. */
    char stream[160], span_name[176], traceparent[TRACE_PARENT_LEN];
    snprintf(stream, sizeof stream, "orgmesh:events:%s", source);
    snprintf(span_name, sizeof span_name, "%s publish", stream);
    trace_ctx pc;
    trace_span *ps = trace_start(trace_current(), TRACE_PRODUCER, span_name, &pc);
    trace_attr_str(ps, "messaging.system", "redis");
    trace_attr_str(ps, "messaging.operation", "publish");
    trace_attr_str(ps, "messaging.destination.name", stream);
    trace_attr_str(ps, "messaging.message.id", id);
    trace_attr_str(ps, "orgmesh.event.type", type);
    trace_end(ps, false, NULL);
    trace_format(&pc, traceparent);
    env.traceparent = traceparent;
    env.tracestate = (char *)trace_current_state();

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
    if (rc == 0) ctoken_note(pg_schema(), id); /* issue 18: the commit's consistency token */
    return rc;
}

/* ---- the relay ---------------------------------------------------------- */

/* Issue 12 (docs/common/evt.md, "Redis losing data"): the outbox stays the
 * log of record. Each row gets a gap-free relay_seq when first relayed
 * (evt_relay.next_seq, advanced in the same transaction as relayed_at), the
 * stream entry carries it (field "s"), and the relay remembers the entry id.
 * Consumers publish the highest seq below which they applied everything
 * (their watermark) to the hash orgmesh:progress:<service>; the relay keeps
 * a durable copy (evt_groups). When Redis lost data (its epoch key is gone
 * or different, the stream is gone or went backwards), every row above the
 * lowest watermark is relayed again, in seq order; reconciliation does the
 * same for one group whose next event cannot reach it any more. */

#define RELAY_CHECK_MS 1000        /* loss detection and watermarks */
#define RELAY_RECONCILE_MS 2000    /* gaps of single groups (a skip: two rounds) */
#define RELAY_RERELAY_AGAIN_MS 600000 /* a gap at the same watermark again */
#define RELAY_GROUPS_MAX 64

typedef struct relay_group {
    char name[64];
    metrics_counter *m_lag; /* orgmesh_evt_oldest_unapplied_seconds_<group> */
    int64_t wm;          /* the watermark a gap was last seen at */
    int suspect;         /* rounds in a row the gap was seen */
    int64_t rerelayed_ms; /* when re-relayed from wm (0: never) */
} relay_group;

static struct {
    bool running;
    atomic_bool stop;
    char stream[192];
    char lock_key[128];
    char channel[96];
    char maxlen[24];
    char epoch_key[192];
    char progress_key[192];
    relay_group groups[RELAY_GROUPS_MAX];
    int ngroups;
    metrics_counter *m_backlog_age; /* issue 19: orgmesh_evt_outbox_oldest_seconds */
    metrics_counter *m_backlog, *m_rerelayed, *m_gaps, *m_losses, *m_lag_max, *m_dropped;
    char trimmed_to[48];  /* the last MINID trim */
} relay;

typedef struct relay_item {
    int64_t id;
    int64_t seq;
    int row;
} relay_item;

static int relay_item_cmp(const void *a, const void *b) {
    const relay_item *x = a, *y = b;
    /* rows relayed before (kept seq) first, by seq; new rows by id */
    if ((x->seq > 0) != (y->seq > 0)) return x->seq > 0 ? -1 : 1;
    int64_t p = x->seq > 0 ? x->seq : x->id, q = y->seq > 0 ? y->seq : y->id;
    return (p > q) - (p < q);
}

enum { RELAY_MORE = 1 };

/* Stream entry ids "ms-seq" compared as numbers (a, b well formed). */
static int sid_cmp(const char *a, const char *b) {
    unsigned long long am = 0, as = 0, bm = 0, bs = 0;
    if (sscanf(a, "%llu-%llu", &am, &as) < 1 || sscanf(b, "%llu-%llu", &bm, &bs) < 1) return 0;
    if (am != bm) return am < bm ? -1 : 1;
    return (as > bs) - (as < bs);
}

static bool sid_ok(const char *s) {
    if (s == NULL || s[0] == '\0' || strlen(s) > 44) return false;
    for (const char *q = s; *q; q++)
        if (!((*q >= '0' && *q <= '9') || *q == '-')) return false;
    return true;
}

/* Append to a growing string; false on exhaustion. */
static bool sb_add(char **buf, size_t *len, size_t *cap, const char *s) {
    size_t n = strlen(s);
    if (*len + n + 1 > *cap) {
        size_t nc = (*cap == 0 ? 1024 : *cap * 2);
        while (nc < *len + n + 1) nc *= 2;
        char *nb = realloc(*buf, nc);
        if (nb == NULL) return false;
        *buf = nb;
        *cap = nc;
    }
    memcpy(*buf + *len, s, n + 1);
    *len += n;
    return true;
}

/* One batch: lock the oldest rows to relay (rows marked for re-relay first,
 * in seq order, then new rows in id order), give new rows their seq, XADD
 * them (pipelined), record relayed_at, seq and entry id, commit. Any Redis
 * trouble rolls back: the rows wait in the outbox and the seqs are given
 * back. Returns RELAY_MORE when a full batch went (look again at once), 0,
 * or a negative code. */
static int relay_batch(pg_conn *pg, cache_conn *rconn) {
    redisContext *ctx = cache_conn_ctx(rconn);
    if (ctx == NULL) return OM_E_UNAVAILABLE; /* Redis down: events wait */
    int rc = pg_begin(pg);
    if (rc != 0) return rc;
    pg_res *r = NULL;
    relay_item *items = NULL;
    char **sids = NULL;
    char *ids_s = NULL, *seqs_s = NULL, *sids_s = NULL;
    size_t il = 0, ic = 0, ql = 0, qc = 0, sl = 0, sc = 0;
    int n = 0;
    bool mine = false, committed = false;
    pg_params lp = {0};
    pg_p_str(&lp, relay.lock_key);
    /* One relay per service at a time (replicas): the stream then follows
     * outbox order, and per aggregate that is commit order. */
    rc = pg_exec(pg, "SELECT pg_try_advisory_xact_lock(hashtext($1))", &lp, &r);
    if (rc != 0) goto fail;
    mine = pg_bool(r, 0, 0);
    pg_free(r);
    r = NULL;
    if (!mine) goto fail; /* rc is 0: another replica is relaying */

    pg_params bp = {0};
    pg_p_i64(&bp, RELAY_BATCH);
    /* Rows marked for re-relay (they keep their seq) go first, in seq order. */
    rc = pg_exec(pg,
                 "SELECT id, relay_seq, type, envelope FROM outbox WHERE relayed_at IS NULL"
                 " AND relay_seq IS NOT NULL ORDER BY relay_seq LIMIT $1 FOR UPDATE SKIP LOCKED",
                 &bp, &r);
    if (rc == 0 && pg_nrows(r) == 0) {
        pg_free(r);
        r = NULL;
        rc = pg_exec(pg,
                     "SELECT id, relay_seq, type, envelope FROM outbox WHERE relayed_at IS NULL"
                     " AND relay_seq IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                     &bp, &r);
    }
    if (rc != 0) goto fail;
    n = pg_nrows(r);
    if (n == 0) goto fail;
    items = malloc((size_t)n * sizeof *items);
    sids = calloc((size_t)n, sizeof *sids);
    if (items == NULL || sids == NULL) {
        rc = OM_E_NOMEM;
        goto fail;
    }
    int fresh = 0;
    for (int i = 0; i < n; i++) {
        items[i] = (relay_item){pg_i64(r, i, 0), pg_isnull(r, i, 1) ? 0 : pg_i64(r, i, 1), i};
        if (items[i].seq <= 0) fresh++;
    }
    qsort(items, (size_t)n, sizeof *items, relay_item_cmp);
    if (fresh > 0) {
        /* Gap-free: the counter moves in this transaction, so a rollback
         * (Redis failed) gives the numbers back. */
        pg_res *sr = NULL;
        pg_params sp = {0};
        pg_p_i64(&sp, fresh);
        rc = pg_exec(pg, "UPDATE evt_relay SET next_seq = next_seq + $1 RETURNING next_seq - $1",
                     &sp, &sr);
        int64_t base = rc == 0 && pg_nrows(sr) == 1 ? pg_i64(sr, 0, 0) : 0;
        pg_free(sr);
        if (rc == 0 && base <= 0) rc = OM_E_INTERNAL;
        if (rc != 0) goto fail;
        for (int i = 0; i < n; i++)
            if (items[i].seq <= 0) items[i].seq = base++;
    }

    for (int i = 0; i < n; i++) {
        size_t elen = 0;
        const uint8_t *env = pg_bytes(r, items[i].row, 3, &elen);
        const char *type = pg_str(r, items[i].row, 2);
        if (env == NULL) {
            rc = OM_E_NOMEM;
            goto fail;
        }
        char seq[24];
        snprintf(seq, sizeof seq, "%lld", (long long)items[i].seq);
        const char *argv[] = {"XADD", relay.stream, "MAXLEN", "~", relay.maxlen, "*",
                              "e", (const char *)env, "t", type, "s", seq};
        size_t lens[] = {4, strlen(relay.stream), 6, 1, strlen(relay.maxlen), 1,
                         1, elen, 1, strlen(type), 1, strlen(seq)};
        if (redisAppendCommandArgv(ctx, 12, argv, lens) != REDIS_OK) {
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
        } else if (rep->type == REDIS_REPLY_STRING && sid_ok(rep->str)) {
            sids[i] = strdup(rep->str);
            if (sids[i] == NULL) rc = OM_E_NOMEM;
        } else {
            rc = OM_E_INTERNAL;
        }
        freeReplyObject(rep);
    }
    if (rc != 0) goto fail;
    /* relayed_at, seq and entry id of every row in one statement */
    bool ok = sb_add(&ids_s, &il, &ic, "{") && sb_add(&seqs_s, &ql, &qc, "{") &&
              sb_add(&sids_s, &sl, &sc, "{");
    for (int i = 0; ok && i < n; i++) {
        char a[24], b[24];
        snprintf(a, sizeof a, "%s%lld", i ? "," : "", (long long)items[i].id);
        snprintf(b, sizeof b, "%s%lld", i ? "," : "", (long long)items[i].seq);
        ok = sb_add(&ids_s, &il, &ic, a) && sb_add(&seqs_s, &ql, &qc, b) &&
             sb_add(&sids_s, &sl, &sc, i ? "," : "") && sb_add(&sids_s, &sl, &sc, sids[i]);
    }
    ok = ok && sb_add(&ids_s, &il, &ic, "}") && sb_add(&seqs_s, &ql, &qc, "}") &&
         sb_add(&sids_s, &sl, &sc, "}");
    if (!ok) {
        rc = OM_E_NOMEM;
        goto fail;
    }
    pg_params up = {0};
    pg_p_str(&up, ids_s);
    pg_p_str(&up, seqs_s);
    pg_p_str(&up, sids_s);
    rc = pg_exec(pg,
                 "UPDATE outbox o SET relayed_at = now(), relay_seq = v.seq, stream_id = v.sid"
                 " FROM unnest($1::bigint[], $2::bigint[], $3::text[]) AS v(id, seq, sid)"
                 " WHERE o.id = v.id",
                 &up, NULL);
    if (rc != 0) goto fail;
    pg_params lsp = {0};
    pg_p_str(&lsp, sids[n - 1]);
    rc = pg_exec(pg, "UPDATE evt_relay SET last_stream_id = $1", &lsp, NULL);
    if (rc != 0) goto fail;
    committed = true;
    rc = pg_commit(pg);
    if (rc != 0)
        log_warn("relay: COMMIT failed after XADD (%s); those events will be sent again and "
                 "consumers will drop the duplicates",
                 pg_errmsg(pg));
fail:
    if (!committed) pg_rollback(pg);
    pg_free(r);
    free(items);
    for (int i = 0; sids != NULL && i < n; i++) free(sids[i]);
    free(sids);
    free(ids_s);
    free(seqs_s);
    free(sids_s);
    if (rc != 0) return rc;
    return n == RELAY_BATCH ? RELAY_MORE : 0;
}

/* A new random epoch token (hex). */
static int relay_token(char out[33]) {
    uint8_t b[16];
    if (RAND_bytes(b, sizeof b) != 1) return OM_E_INTERNAL;
    for (int i = 0; i < 16; i++) snprintf(out + 2 * i, 3, "%02x", b[i]);
    return 0;
}

static redisReply *relay_cmd(cache_conn *rc, int argc, const char **argv) {
    size_t lens[8];
    if (argc > 8) return NULL;
    for (int i = 0; i < argc; i++) lens[i] = strlen(argv[i]);
    return cache_conn_cmd(rc, argc, argv, lens);
}

/* Mark every relayed row above `wm` for re-relay (they keep their seq). */
static int64_t relay_mark_from(pg_conn *pg, int64_t wm) {
    pg_params p = {0};
    pg_p_i64(&p, wm);
    pg_res *r = NULL;
    int64_t n = -1;
    if (pg_exec(pg,
                "UPDATE outbox SET relayed_at = NULL WHERE relay_seq > $1 AND relayed_at IS NOT NULL",
                &p, &r) == 0)
        n = pg_affected(r);
    pg_free(r);
    return n;
}

/* The groups' watermarks from Redis into evt_groups (each only grows). */
static void relay_read_progress(pg_conn *pg, cache_conn *rconn) {
    const char *argv[] = {"HGETALL", relay.progress_key};
    redisReply *h = relay_cmd(rconn, 2, argv);
    if (h == NULL) return;
    for (size_t i = 0; h->type == REDIS_REPLY_ARRAY && i + 1 < h->elements; i += 2) {
        const redisReply *g = h->element[i], *v = h->element[i + 1];
        if (g->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING ||
            !evt_name_ok(g->str))
            continue;
        char *end = NULL;
        long long wm = strtoll(v->str, &end, 10);
        if (end == v->str || *end != '\0' || wm < 0) continue;
        pg_params p = {0};
        pg_p_str(&p, g->str);
        pg_p_i64(&p, wm);
        pg_exec(pg,
                "INSERT INTO evt_groups (grp, watermark) VALUES ($1, $2) ON CONFLICT (grp) DO"
                " UPDATE SET watermark = GREATEST(evt_groups.watermark, EXCLUDED.watermark),"
                " updated_at = now()",
                &p, NULL);
    }
    freeReplyObject(h);
}

/* Did Redis lose what the relay gave it? Its epoch key is gone or
 * different (restart, FLUSHALL, another instance), the stream is gone
 * while rows were relayed, or its last generated id is below the last one
 * the relay got (failover to a replica that missed writes). Then mark
 * every row above the lowest known watermark for re-relay and start a new
 * epoch. Under the relay's lock (one relay at a time). */
static void relay_check(pg_conn *pg, cache_conn *rconn) {
    if (cache_conn_ctx(rconn) == NULL) return;
    relay_read_progress(pg, rconn);
    if (pg_begin(pg) != 0) return;
    pg_res *r = NULL;
    pg_params lp = {0};
    pg_p_str(&lp, relay.lock_key);
    bool commit = false;
    if (pg_exec(pg, "SELECT pg_try_advisory_xact_lock(hashtext($1))", &lp, &r) != 0 ||
        !pg_bool(r, 0, 0))
        goto done;
    pg_free(r);
    r = NULL;
    if (pg_exec(pg,
                "SELECT epoch, last_stream_id, (SELECT min(watermark) FROM evt_groups),"
                " (SELECT count(*) FROM evt_groups) FROM evt_relay FOR UPDATE",
                NULL, &r) != 0 ||
        pg_nrows(r) != 1)
        goto done;
    bool had_epoch = !pg_isnull(r, 0, 0);
    char db_epoch[40], last_sid[48];
    snprintf(db_epoch, sizeof db_epoch, "%s", pg_str(r, 0, 0));
    snprintf(last_sid, sizeof last_sid, "%s", pg_str(r, 0, 1));
    int64_t min_wm = pg_isnull(r, 0, 2) ? 0 : pg_i64(r, 0, 2);
    int64_t ngroups = pg_i64(r, 0, 3);

    const char *gargv[] = {"GET", relay.epoch_key};
    redisReply *g = relay_cmd(rconn, 2, gargv);
    if (g == NULL) goto done;
    bool same = g->type == REDIS_REPLY_STRING && had_epoch && strcmp(g->str, db_epoch) == 0;
    bool redis_has = g->type == REDIS_REPLY_STRING;
    freeReplyObject(g);
    const char *why = NULL;
    if (!had_epoch) {
        why = NULL; /* first start (or first with this version): nothing to compare */
    } else if (!same) {
        why = redis_has ? "its epoch changed" : "its epoch key is gone";
    } else if (sid_ok(last_sid)) {
        const char *xargv[] = {"XINFO", "STREAM", relay.stream};
        redisReply *x = relay_cmd(rconn, 3, xargv);
        if (x == NULL) goto done;
        if (x->type == REDIS_REPLY_ERROR) {
            why = "the stream is gone";
        } else {
            for (size_t i = 0; x->type == REDIS_REPLY_ARRAY && i + 1 < x->elements; i += 2)
                if (x->element[i]->type == REDIS_REPLY_STRING &&
                    strcmp(x->element[i]->str, "last-generated-id") == 0 &&
                    x->element[i + 1]->type == REDIS_REPLY_STRING &&
                    sid_cmp(x->element[i + 1]->str, last_sid) < 0)
                    why = "the stream went backwards";
        }
        freeReplyObject(x);
    }
    if (had_epoch && why == NULL) goto done; /* all is well */

    char token[33];
    if (relay_token(token) != 0) goto done;
    int64_t marked = 0;
    if (why != NULL) {
        marked = relay_mark_from(pg, min_wm);
        if (marked < 0) goto done;
    }
    pg_params ep = {0};
    pg_p_str(&ep, token);
    if (pg_exec(pg, "UPDATE evt_relay SET epoch = $1, last_stream_id = NULL", &ep, NULL) != 0)
        goto done;
    /* The new epoch goes to Redis while we hold the lock, so that another
     * replica's relay does not see the mismatch again; if the commit then
     * fails, the next check finds a mismatch and marks again (duplicates
     * only). If Redis refuses it, nothing is marked yet: tried again. */
    const char *sargv[] = {"SET", relay.epoch_key, token};
    redisReply *sr = relay_cmd(rconn, 3, sargv);
    bool set_ok = sr != NULL && sr->type == REDIS_REPLY_STATUS;
    if (sr != NULL) freeReplyObject(sr);
    if (!set_ok) goto done;
    if (pg_commit(pg) != 0) goto done;
    commit = true;
    if (why != NULL) {
        metrics_counter_add(relay.m_losses, 1);
        metrics_counter_add(relay.m_rerelayed, marked);
        log_warn("relay: Redis lost events of %s (%s): relaying again %lld events above seq %lld"
                 " (the lowest watermark of %lld known consumer groups)",
                 relay.stream, why, (long long)marked, (long long)min_wm, (long long)ngroups);
    }
done:
    pg_free(r);
    if (!commit) pg_rollback(pg);
}

/* Reconciliation: for each known group, is the event after its watermark
 * still able to reach it? Not when its entry is gone from the stream
 * (trimmed, deleted), nor when the group has gone past it without applying
 * it (a group recreated at "$", an acknowledged entry not applied) for two
 * rounds in a row. Then relay again from that watermark + 1. The same
 * watermark is re-relayed at most every RELAY_RERELAY_AGAIN_MS (an event
 * that the group dead-lettered stays a gap: the lag alert fires). */
static relay_group *relay_group_of(const char *name) {
    for (int i = 0; i < relay.ngroups; i++)
        if (strcmp(relay.groups[i].name, name) == 0) return &relay.groups[i];
    if (relay.ngroups == RELAY_GROUPS_MAX) return NULL;
    relay_group *g = &relay.groups[relay.ngroups++];
    memset(g, 0, sizeof *g);
    snprintf(g->name, sizeof g->name, "%s", name);
    g->wm = -1;
    /* one gauge per group (the registry has no labels; '-' becomes '_') */
    char metric[128];
    int w = snprintf(metric, sizeof metric, "orgmesh_evt_oldest_unapplied_seconds_%s", name);
    for (int i = 0; w > 0 && i < w && metric[i] != '\0'; i++)
        if (metric[i] == '-') metric[i] = '_';
    g->m_lag = metrics_counter_register(
        metric, "age of the oldest outbox event this consumer group has not applied (0: none)");
    return g;
}

/* Trim the stream by what every known group has applied: entries below the
 * entry of the lowest watermark (XTRIM MINID). XADD's MAXLEN ~
 * ORGMESH_EVT_STREAM_MAXLEN stays as the hard bound on memory. */
static void relay_trim(pg_conn *pg, cache_conn *rconn) {
    pg_res *r = NULL;
    if (pg_exec(pg,
                "SELECT o.stream_id FROM outbox o WHERE o.relayed_at IS NOT NULL AND o.relay_seq ="
                " (SELECT min(watermark) FROM evt_groups)",
                NULL, &r) != 0 ||
        pg_nrows(r) != 1 || !sid_ok(pg_str(r, 0, 0)) ||
        strcmp(pg_str(r, 0, 0), relay.trimmed_to) == 0) {
        pg_free(r);
        return;
    }
    char sid[48];
    snprintf(sid, sizeof sid, "%s", pg_str(r, 0, 0));
    pg_free(r);
    const char *argv[] = {"XTRIM", relay.stream, "MINID", sid}; /* exact: O(entries removed) */
    redisReply *t = relay_cmd(rconn, 4, argv);
    if (t != NULL && t->type == REDIS_REPLY_INTEGER)
        snprintf(relay.trimmed_to, sizeof relay.trimmed_to, "%s", sid);
    if (t != NULL) freeReplyObject(t);
}

static void relay_reconcile(pg_conn *pg, cache_conn *rconn) {
    if (cache_conn_ctx(rconn) == NULL) return;
    pg_res *r = NULL;
    /* Each group's next row: its entry id if relayed (not while marked for
     * re-relay), and its age (seq order is relay order: the oldest one the
     * group has not applied, one index lookup). */
    if (pg_exec(pg,
                "SELECT g.grp, g.watermark, CASE WHEN o.relayed_at IS NOT NULL THEN o.stream_id END,"
                " extract(epoch FROM now() - o.created_at)::bigint"
                " FROM evt_groups g LEFT JOIN outbox o ON o.relay_seq = g.watermark + 1"
                " ORDER BY g.grp",
                NULL, &r) != 0) {
        pg_free(r);
        return;
    }
    int64_t lag_max = 0;
    for (int i = 0; i < pg_nrows(r); i++) {
        const char *name = pg_str(r, i, 0);
        int64_t wm = pg_i64(r, i, 1);
        const char *sid = pg_str(r, i, 2);
        if (!pg_isnull(r, i, 3) && pg_i64(r, i, 3) > lag_max) lag_max = pg_i64(r, i, 3);
        relay_group *g = relay_group_of(name);
        if (g == NULL) continue;
        metrics_gauge_set(g->m_lag, pg_isnull(r, i, 3) ? 0 : pg_i64(r, i, 3));
        if (g->wm != wm) {
            g->wm = wm;
            g->suspect = 0;
        }
        if (!sid_ok(sid)) {
            g->suspect = 0; /* nothing after the watermark, or not relayed yet */
            continue;
        }
        bool gap = false, gone = false;
        const char *xargv[] = {"XRANGE", relay.stream, sid, sid};
        redisReply *x = relay_cmd(rconn, 4, xargv);
        if (x == NULL) break;
        gone = x->type == REDIS_REPLY_ARRAY && x->elements == 0;
        freeReplyObject(x);
        if (gone) {
            gap = true;
        } else {
            /* past it without applying it, and not pending in the group? */
            const char *gargv[] = {"XINFO", "GROUPS", relay.stream};
            redisReply *gr = relay_cmd(rconn, 3, gargv);
            if (gr == NULL) break;
            bool past = false;
            for (size_t j = 0; gr->type == REDIS_REPLY_ARRAY && j < gr->elements; j++) {
                const redisReply *e = gr->element[j];
                const char *gname = NULL, *last = NULL;
                for (size_t k = 0; e->type == REDIS_REPLY_ARRAY && k + 1 < e->elements; k += 2) {
                    if (e->element[k]->type != REDIS_REPLY_STRING ||
                        e->element[k + 1]->type != REDIS_REPLY_STRING)
                        continue;
                    if (strcmp(e->element[k]->str, "name") == 0) gname = e->element[k + 1]->str;
                    if (strcmp(e->element[k]->str, "last-delivered-id") == 0)
                        last = e->element[k + 1]->str;
                }
                if (gname != NULL && last != NULL && strcmp(gname, name) == 0)
                    past = sid_cmp(last, sid) >= 0;
            }
            freeReplyObject(gr);
            if (past) {
                const char *pargv[] = {"XPENDING", relay.stream, name, sid, sid, "1"};
                redisReply *p = relay_cmd(rconn, 6, pargv);
                if (p == NULL) break;
                bool pending = p->type == REDIS_REPLY_ARRAY && p->elements > 0;
                freeReplyObject(p);
                gap = !pending && ++g->suspect >= 2;
            } else {
                g->suspect = 0;
            }
        }
        int64_t now = evt_now_ms();
        if (!gap || (g->rerelayed_ms != 0 && now - g->rerelayed_ms < RELAY_RERELAY_AGAIN_MS))
            continue;
        /* under the relay lock, so that no batch runs meanwhile */
        if (pg_begin(pg) != 0) continue;
        pg_res *lr = NULL;
        pg_params lp = {0};
        pg_p_str(&lp, relay.lock_key);
        int64_t marked = -1;
        if (pg_exec(pg, "SELECT pg_try_advisory_xact_lock(hashtext($1))", &lp, &lr) == 0 &&
            pg_bool(lr, 0, 0))
            marked = relay_mark_from(pg, wm);
        pg_free(lr);
        if (marked >= 0 && pg_commit(pg) == 0) {
            g->rerelayed_ms = now;
            g->suspect = 0;
            metrics_counter_add(relay.m_gaps, 1);
            metrics_counter_add(relay.m_rerelayed, marked);
            log_warn("relay: consumer group %s of %s cannot get the event after seq %lld (%s):"
                     " relaying again %lld events",
                     name, relay.stream, (long long)wm,
                     gone ? "gone from the stream" : "skipped by the group", (long long)marked);
        } else {
            pg_rollback(pg);
        }
    }
    pg_free(r);
    metrics_gauge_set(relay.m_lag_max, lag_max);
    relay_trim(pg, rconn);
    r = NULL;
    if (pg_exec(pg,
                "SELECT count(*), COALESCE(floor(extract(epoch FROM now() - min(created_at))), 0)::bigint"
                " FROM outbox WHERE relayed_at IS NULL",
                NULL, &r) == 0) {
        metrics_gauge_set(relay.m_backlog, pg_i64(r, 0, 0));
        metrics_gauge_set(relay.m_backlog_age, pg_i64(r, 0, 1));
    }
    pg_free(r);
}

/* Now and then: relayed rows older than a day, stale request ids, and
 * applied event ids too old to be redelivered. */
static void relay_housekeeping(pg_conn *pg, int applied_retention_h, int outbox_max_h) {
    pg_res *r = NULL;
    /* Issue 12: a row goes once every known consumer group has applied it
     * (seq at or below the lowest watermark) and it is a day old; rows
     * relayed before sequencing existed (no seq) after a day as before. */
    if (pg_exec(pg,
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox"
                " WHERE relayed_at < now() - interval '24 hours' AND (relay_seq IS NULL OR"
                " relay_seq <= (SELECT coalesce(min(watermark), 9223372036854775807)"
                " FROM evt_groups)) LIMIT 10000)",
                NULL, &r) == 0 &&
        pg_affected(r) > 0)
        log_info("outbox: deleted %lld rows every consumer group has applied",
                 (long long)pg_affected(r));
    pg_free(r);
    r = NULL;
    /* The bound: rows some group has not applied are kept at most
     * ORGMESH_EVT_OUTBOX_MAX_AGE_H; dropping one is counted (alert). */
    pg_params mp = {0};
    pg_p_i64(&mp, outbox_max_h);
    if (pg_exec(pg,
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox"
                " WHERE created_at < now() - make_interval(hours => $1::int) LIMIT 10000)",
                &mp, &r) == 0 &&
        pg_affected(r) > 0) {
        metrics_counter_add(relay.m_dropped, pg_affected(r));
        log_error("outbox: dropped %lld events older than %d h that some consumer group has"
                  " not applied (ORGMESH_EVT_OUTBOX_MAX_AGE_H)",
                  (long long)pg_affected(r), outbox_max_h);
    }
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

/* The relay on the process loop (issue 15, docs/common/evt.md): no thread
 * and no PostgreSQL connection of its own. A round — housekeeping, loss
 * check and reconciliation when due, then up to RELAY_ROUND_BATCHES batches
 * — runs as one loop_work job on a worker (its pg_local connection); at most
 * one round is in flight. The loop starts rounds: on a NOTIFY of the outbox
 * channel (loop_listen, the process's one LISTEN connection), after a full
 * batch at once, after an error with backoff, else every RELAY_IDLE_MS (rows
 * another replica's relay left behind).
 *
 * The Redis part of a batch stays a blocking connection used by the round
 * (one round at a time): the XADDs must happen inside the PostgreSQL
 * transaction that holds the relay lock and numbers the rows, so that
 * replicas cannot interleave batches; a transaction cannot wait on the loop
 * across two worker jobs. */
#define RELAY_ROUND_BATCHES 16

static struct {
    uv_timer_t timer;
    bool timer_open;      /* loop thread: the timer exists (not yet closed) */
    bool busy;            /* loop thread: a round is in flight */
    bool again;           /* loop thread: a NOTIFY came during the round */
    bool stopping;        /* loop thread: stop begun, no new round */
    int backoff;          /* loop thread */
    char listened[96];    /* the channel loop_listen was called for */
    /* the round's own state (only the one round in flight touches it) */
    cache_conn *rconn;
    int retention_h, outbox_max_h;
    int64_t next_housekeeping, next_check, next_reconcile;
    unsigned checked_gen;
    /* stop hand-shake with evt_relay_stop off the loop */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool active;          /* under mu: timer open or round in flight */
} rl = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static int relay_round(void *arg) {
    (void)arg;
    pg_conn *pg = pg_local();
    if (pg == NULL) return OM_E_UNAVAILABLE;
    cache_conn *rconn = rl.rconn;
    int64_t now = evt_now_ms();
    if (now >= rl.next_housekeeping) {
        relay_housekeeping(pg, rl.retention_h, rl.outbox_max_h);
        rl.next_housekeeping = now + RELAY_HOUSEKEEPING_MS;
    }
    /* Before relaying on a new connection (Redis may have restarted
     * empty), and every second. */
    if (now >= rl.next_check || (rconn->ctx != NULL && rconn->gen != rl.checked_gen)) {
        relay_check(pg, rconn);
        rl.checked_gen = rconn->gen;
        rl.next_check = now + RELAY_CHECK_MS;
    }
    if (now >= rl.next_reconcile) {
        relay_reconcile(pg, rconn);
        rl.next_reconcile = now + RELAY_RECONCILE_MS;
    }
    int rc = 0;
    for (int i = 0; i < RELAY_ROUND_BATCHES && !atomic_load(&relay.stop); i++) {
        rc = relay_batch(pg, rconn);
        if (rc != RELAY_MORE) break;
    }
    return rc;
}

static void relay_finished(void) {
    pthread_mutex_lock(&rl.mu);
    rl.active = false;
    pthread_cond_broadcast(&rl.cv);
    pthread_mutex_unlock(&rl.mu);
}

static void relay_timer_closed(uv_handle_t *h) {
    (void)h;
    rl.timer_open = false;
    if (!rl.busy) relay_finished();
}

static void relay_kick(void);

static void relay_timer_cb(uv_timer_t *t) {
    (void)t;
    relay_kick();
}

static void relay_round_done(void *arg, int rc) {
    (void)arg;
    rl.busy = false;
    if (rl.stopping) {
        if (!rl.timer_open) relay_finished();
        return;
    }
    if (rc == RELAY_MORE || rl.again) {
        rl.again = false;
        rl.backoff = 0;
        relay_kick();
        return;
    }
    uint64_t ms = RELAY_IDLE_MS;
    if (rc < 0) {
        /* Redis or PostgreSQL trouble: back off, 100 ms doubling to 2 s. */
        rl.backoff = rl.backoff == 0 ? 100 : (rl.backoff * 2 > 2000 ? 2000 : rl.backoff * 2);
        ms = (uint64_t)rl.backoff;
    } else {
        rl.backoff = 0;
    }
    uv_timer_start(&rl.timer, relay_timer_cb, ms, 0);
}

static void relay_kick(void) {
    if (rl.stopping || !rl.timer_open) return;
    if (rl.busy) {
        rl.again = true;
        return;
    }
    uv_timer_stop(&rl.timer);
    rl.busy = true;
    if (loop_work(relay_round, relay_round_done, NULL) != 0) {
        rl.busy = false;
        uv_timer_start(&rl.timer, relay_timer_cb, 500, 0);
    }
}

/* NOTIFY at an outbox commit (payload NULL after a LISTEN reconnect: look
 * anyway). The channel stays LISTENed for the process's life. */
static void relay_on_notify(const char *channel, const char *payload, void *arg) {
    (void)payload;
    (void)arg;
    if (strcmp(channel, relay.channel) == 0) relay_kick();
}

/* Loop thread: stop starting rounds; the round in flight finishes. */
static void relay_loop_stop(void *arg) {
    (void)arg;
    if (!rl.timer_open || rl.stopping) return;
    rl.stopping = true;
    uv_close((uv_handle_t *)&rl.timer, relay_timer_closed);
}

static void relay_loop_start(void *arg) {
    (void)arg;
    rl.stopping = rl.busy = rl.again = false;
    rl.backoff = 0;
    uv_timer_init(loop_get(), &rl.timer);
    rl.timer_open = true;
    if (strcmp(rl.listened, relay.channel) != 0) {
        if (loop_listen(relay.channel, relay_on_notify, NULL) == 0)
            snprintf(rl.listened, sizeof rl.listened, "%s", relay.channel);
        else
            log_warn("relay: cannot LISTEN on %s: polling every %d ms", relay.channel,
                     RELAY_IDLE_MS);
    }
    loop_on_stop(relay_loop_stop, NULL); /* SIGTERM: no new round */
    relay_kick();
}

int evt_relay_start(const char *service) {
    if (relay.running) return OM_E_INTERNAL;
    if (!evt_name_ok(service) || pg_schema()[0] == '\0') {
        log_error("evt_relay_start: bad service name or pg_setup not called");
        return OM_E_INVALID_ARGUMENT;
    }
    if (loop_get() == NULL || loop_stopping()) {
        log_error("evt_relay_start: no process loop (common/loop.h)");
        return OM_E_UNAVAILABLE;
    }
    snprintf(relay.stream, sizeof relay.stream, "%s%s%s", cache_namespace(), EVT_STREAM_PREFIX,
             service);
    snprintf(relay.lock_key, sizeof relay.lock_key, "orgmesh.relay.%s", pg_schema());
    snprintf(relay.channel, sizeof relay.channel, "orgmesh_outbox_%s", pg_schema());
    snprintf(relay.epoch_key, sizeof relay.epoch_key, "%sorgmesh:evt:epoch:%s", cache_namespace(),
             service);
    snprintf(relay.progress_key, sizeof relay.progress_key, "%s" EVT_PROGRESS_PREFIX "%s",
             cache_namespace(), service);
    relay.ngroups = 0;
    relay.trimmed_to[0] = '\0';
    if (relay.m_backlog == NULL) {
        relay.m_backlog = metrics_counter_register(
            "orgmesh_evt_outbox_backlog", "outbox rows not (or not again) relayed to Redis");
        relay.m_backlog_age = metrics_counter_register(
            "orgmesh_evt_outbox_oldest_seconds", "age of the oldest outbox row not (or not again) relayed (0: none)");
        relay.m_rerelayed = metrics_counter_register(
            "orgmesh_evt_rerelayed_total", "outbox events relayed again after Redis lost them");
        relay.m_gaps = metrics_counter_register(
            "orgmesh_evt_reconcile_gaps_total",
            "consumer groups found unable to get their next event (reconciliation)");
        relay.m_losses = metrics_counter_register(
            "orgmesh_evt_redis_losses_total", "times the relay found that Redis lost its stream");
        relay.m_dropped = metrics_counter_register(
            "orgmesh_evt_outbox_dropped_unapplied_total",
            "outbox events dropped after ORGMESH_EVT_OUTBOX_MAX_AGE_H before every group applied");
        relay.m_lag_max = metrics_counter_register(
            "orgmesh_evt_oldest_unapplied_seconds",
            "age of the oldest event some known consumer group has not applied");
    }
    snprintf(relay.maxlen, sizeof relay.maxlen, "%lld",
             (long long)cfg_int("ORGMESH_EVT_STREAM_MAXLEN", 1000000, 1000, INT64_C(1) << 40));
    if (cache_conn_new(&rl.rconn, 0) != 0) return OM_E_NOMEM;
    rl.retention_h = (int)cfg_int("ORGMESH_EVT_APPLIED_RETENTION_H", 168, 1, 24 * 365);
    rl.outbox_max_h = (int)cfg_int("ORGMESH_EVT_OUTBOX_MAX_AGE_H", 168, 25, 24 * 365);
    rl.next_housekeeping = rl.next_check = rl.next_reconcile = 0;
    rl.checked_gen = 0;
    atomic_store(&relay.stop, false);
    pthread_mutex_lock(&rl.mu);
    rl.active = true;
    pthread_mutex_unlock(&rl.mu);
    if (loop_on_loop()) {
        relay_loop_start(NULL);
    } else if (loop_call(relay_loop_start, NULL) != 0) {
        pthread_mutex_lock(&rl.mu);
        rl.active = false;
        pthread_mutex_unlock(&rl.mu);
        cache_close(rl.rconn);
        rl.rconn = NULL;
        return OM_E_UNAVAILABLE;
    }
    relay.running = true;
    return 0;
}

/* From any thread but the loop's (app.c's drain, tests): waits for the round
 * in flight. On the loop thread it only stops new rounds (the memory is
 * released by the next evt_relay_start or at exit). */
void evt_relay_stop(void) {
    if (!relay.running) return;
    atomic_store(&relay.stop, true); /* a round in flight stops between batches */
    if (loop_on_loop()) {
        relay_loop_stop(NULL);
        return;
    }
    /* Once the loop is stopping its hooks have run relay_loop_stop. */
    if (!loop_stopping()) (void)loop_call(relay_loop_stop, NULL);
    pthread_mutex_lock(&rl.mu);
    while (rl.active) pthread_cond_wait(&rl.cv, &rl.mu);
    pthread_mutex_unlock(&rl.mu);
    cache_close(rl.rconn);
    rl.rconn = NULL;
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
    int64_t seq;             /* the relay's sequence number (field "s"), 0 if none */
    char sid[]; /* the stream entry id */
} lane_item;

struct consumer;

/* A lane is a queue (issue 15): at most one job of it on the worker pool at
 * a time (`scheduled`), the next one submitted from the loop when the job is
 * done, so its entries are applied one at a time, in order, on the workers'
 * pg_local connections; no thread and no PostgreSQL connection of its own. */
typedef struct lane {
    struct consumer *k;
    cache_conn *rc;          /* its own, for XACK after its own COMMIT (one job at a time) */
    lane_item *head, *tail;  /* waiting entries (k->mu) */
    lane_item *cur;          /* the entry being applied (k->mu) */
    bool pg_down;            /* waiting for PostgreSQL (k->mu) */
    bool scheduled;          /* a job in flight or a retry pending (k->mu) */
    int64_t retry_at;        /* the lane ticker submits it then (k->mu); 0: none */
    /* the job's own (one job at a time; done runs after it) */
    bool probing;            /* cur waits for PostgreSQL: probe before applying */
    bool outage;             /* ... and it was a real outage */
    int saved_ret;           /* cur's result when it was no outage */
    int backoff;             /* ms, after a handler's UNAVAILABLE */
} lane;

typedef struct consumer {
    pthread_t th;
    bool started;
    char *source;
    evt_handler_fn fn;
    void *arg;
    char stream[192];
    char progress_key[192];  /* orgmesh:progress:<source> */
    cache_conn *rc;          /* the reader's */
    int nlanes;              /* lanes (1: one at a time, in stream order) */
    lane *lanes;             /* NULL without a worker pool: the reader applies entries itself */
    bool sync_init;          /* mu, room and the lanes' cv exist */
    pthread_mutex_t mu;
    pthread_cond_t room;     /* a lane finished an entry, or stop */
    int inflight;            /* entries handed to lanes and not finished (mu) */
    int cap;                 /* most entries in flight: nlanes * LANE_DEPTH */
    int pg_down;             /* lanes waiting for PostgreSQL (mu) */
    /* the reader on the loop (issue 15; loop thread unless noted) */
    bool on_loop;            /* this reader runs on the loop, not on a thread */
    redis_uv *ru;            /* XREADGROUP BLOCK: a connection of its own */
    uv_timer_t t;
    bool t_open;
    bool round_busy;         /* a maintenance round on a worker */
    bool read_busy;          /* an XREADGROUP in flight */
    bool wait_room;          /* the lanes are full: lane_done kicks */
    bool stopping;
    bool ru_up;
    int backoff;
    /* the rounds' own (one round at a time) */
    bool group_ok;
    unsigned group_gen;
    int64_t next_claim, next_progress, next_gc;
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
    metrics_counter *m_deadletters; /* issue 19: orgmesh_evt_dead_letters_total */
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
    metrics_counter_add(cons.m_deadletters, 1);
    consumer_ack(k, rc, id);
}

typedef struct apply_ctx {
    consumer *k;
    const evt_event *ev;
    int64_t seq;
    bool dup;
} apply_ctx;

/* In the transaction: record the id first; a second delivery finds it and
 * applies nothing (ON CONFLICT waits for a concurrent twin to finish). */
static int consumer_apply(pg_conn *c, void *arg) {
    apply_ctx *a = arg;
    a->dup = false;
    pg_params p = {0};
    pg_p_str(&p, a->ev->id);
    pg_p_str(&p, a->k->source);
    if (a->seq > 0)
        pg_p_i64(&p, a->seq);
    else
        pg_p_null(&p);
    pg_res *r = NULL;
    /* (source, seq): the group's progress, published for the relay (issue 12) */
    /* An event at or below the group's watermark was applied, even if its
     * id has left applied_events since (retention): a re-relay of old rows
     * applies nothing twice. */
    int rc = pg_exec(c,
                     "INSERT INTO applied_events (event_id, source, seq)"
                     " SELECT $1::uuid, $2, $3::bigint WHERE $3::bigint IS NULL OR NOT EXISTS"
                     " (SELECT 1 FROM evt_progress WHERE source = $2 AND watermark >= $3::bigint)"
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
                                                      const redisReply *entry, const char **sid,
                                                      int64_t *seq) {
    *sid = NULL;
    *seq = 0;
    if (!reply_is(entry, REDIS_REPLY_ARRAY) || entry->elements != 2 ||
        !reply_is(entry->element[0], REDIS_REPLY_STRING))
        return NULL;
    *sid = entry->element[0]->str;
    const redisReply *fields = entry->element[1];
    const redisReply *e = reply_field(fields, "e");
    const redisReply *sq = reply_field(fields, "s");
    if (sq != NULL) {
        char *end = NULL;
        long long v = strtoll(sq->str, &end, 10);
        if (end != sq->str && *end == '\0' && v > 0) *seq = v;
    }
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
                              const Orgmesh__Events__V1__Envelope *env, const char *sid,
                              int64_t seq) {
    evt_event ev;
    event_of(env, sid, &ev);
    apply_ctx a = {.k = k, .ev = &ev, .seq = seq};
    /* Issue 19: continue the producer's trace with a CONSUMER span (a new
     * root for an envelope without a valid traceparent). */
    trace_ctx parent, cc;
    bool have = env->traceparent != NULL && trace_parse(env->traceparent, strlen(env->traceparent), &parent);
    char dest[160], span_name[176];
    snprintf(dest, sizeof dest, "orgmesh:events:%s", k->source); /* as the producer names it */
    snprintf(span_name, sizeof span_name, "%s process", dest);
    trace_span *cs = trace_start(have ? &parent : NULL, TRACE_CONSUMER, span_name, &cc);
    trace_attr_str(cs, "messaging.system", "redis");
    trace_attr_str(cs, "messaging.operation", "process");
    trace_attr_str(cs, "messaging.destination.name", dest);
    trace_attr_str(cs, "messaging.message.id", ev.id);
    trace_attr_str(cs, "orgmesh.event.type", ev.type);
    trace_set_current(&cc, have ? env->tracestate : NULL);
    if (!have && env->trace_id != NULL && env->trace_id[0]) log_set_trace(env->trace_id); /* an older producer */
    int ret = pg_tx(pg, consumer_apply, &a);
    if (ret == 0) {
        consumer_ack(k, rc, sid);
        if (a.dup) log_debug("event %s (%s) was already applied", ev.id, ev.type);
    } else {
        log_warn("event %s (%s, entry %s) not applied: %s %s", ev.id, ev.type, sid,
                 om_err_name(ret), pg != NULL ? pg_errmsg(pg) : "");
    }
    trace_end(cs, ret != 0, ret != 0 ? om_err_name(ret) : NULL);
    trace_set_current(NULL, NULL);
    return ret == OM_E_UNAVAILABLE ? OM_E_UNAVAILABLE : (ret == 0 ? 0 : 1);
}

/* Process one delivered entry in the reader (one lane): as
 * consumer_apply_env; 0 for an entry with nothing to apply. */
static int consumer_process(consumer *k, pg_conn *pg, cache_conn *rc, const redisReply *entry) {
    const char *sid = NULL;
    int64_t seq = 0;
    Orgmesh__Events__V1__Envelope *env = consumer_unpack(k, rc, entry, &sid, &seq);
    if (env == NULL) return 0;
    int ret = consumer_apply_env(k, pg, rc, env, sid, seq);
    orgmesh__events__v1__envelope__free_unpacked(env, NULL);
    return ret;
}

/* FNV-1a: the lane of a subject. */
static uint32_t subject_hash(const char *s) {
    uint32_t h = 2166136261u;
    for (; s != NULL && *s; s++) h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

static void lane_submit(lane *l);

/* Hand one delivered entry to its subject's lane. On exhaustion the entry
 * stays pending (a claim retries it). */
static void consumer_dispatch(consumer *k, cache_conn *rc, const redisReply *entry) {
    const char *sid = NULL;
    int64_t seq = 0;
    Orgmesh__Events__V1__Envelope *env = consumer_unpack(k, rc, entry, &sid, &seq);
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
    it->seq = seq;
    memcpy(it->sid, sid, n);
    lane *l = &k->lanes[subject_hash(env->subject) % (uint32_t)k->nlanes];
    pthread_mutex_lock(&k->mu);
    if (l->tail != NULL)
        l->tail->next = it;
    else
        l->head = it;
    l->tail = it;
    k->inflight++;
    bool submit = !l->scheduled;
    l->scheduled = true;
    pthread_mutex_unlock(&k->mu);
    if (submit) lane_submit(l);
}

/* Process (one lane) or dispatch (lanes) an array of entries; with one lane
 * stop at the first PostgreSQL trouble. */
static int consumer_process_all(consumer *k, pg_conn *pg, cache_conn *rc, const redisReply *arr) {
    for (size_t i = 0; reply_is(arr, REDIS_REPLY_ARRAY) && i < arr->elements; i++) {
        if (atomic_load(&cons.stop)) return 0;
        if (k->lanes != NULL)
            consumer_dispatch(k, rc, arr->element[i]);
        else if (consumer_process(k, pg, rc, arr->element[i]) == OM_E_UNAVAILABLE)
            return OM_E_UNAVAILABLE;
    }
    return 0;
}

/* How many more entries the reader may take now. */
static int consumer_room(consumer *k) {
    if (k->lanes == NULL) return CONSUMER_BATCH;
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
    if (k->lanes == NULL) return false;
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
    if (k->lanes != NULL) {
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

static void lane_set_pg_down_locked(lane *l, bool down) {
    consumer *k = l->k;
    if (l->pg_down != down) k->pg_down += down ? 1 : -1;
    l->pg_down = down;
}

static void lane_set_pg_down(lane *l, bool down) {
    pthread_mutex_lock(&l->k->mu);
    lane_set_pg_down_locked(l, down);
    pthread_mutex_unlock(&l->k->mu);
}

/* Drop what the lane holds (k->mu held): it stays pending in the group, and
 * is claimed later. */
static void lane_drop_locked(lane *l) {
    consumer *k = l->k;
    lane_item *rest = l->head;
    l->head = l->tail = NULL;
    if (l->cur != NULL) {
        l->cur->next = rest;
        rest = l->cur;
        l->cur = NULL;
    }
    if (l->probing) lane_set_pg_down_locked(l, false);
    l->probing = false;
    l->retry_at = 0;
    l->scheduled = false;
    while (rest != NULL) {
        lane_item *next = rest->next;
        k->inflight--;
        orgmesh__events__v1__envelope__free_unpacked(rest->env, NULL);
        free(rest);
        rest = next;
    }
    pthread_cond_broadcast(&k->room);
}

enum { LANE_DONE = 1, LANE_WAIT_PG, LANE_BACKOFF, LANE_QUIT };

/* On a worker: apply the lane's next entry (or probe PostgreSQL for the one
 * it holds). While PostgreSQL is away the lane keeps the entry and probes
 * every 500 ms (the ticker resubmits it); the reader meanwhile reads and
 * claims nothing (a claim would count as a delivery). Only an outage seen as
 * such (no connection, or a probe that failed) is waited out: an entry whose
 * own work fails with a PostgreSQL error (a statement timeout) stays
 * pending, so that claims count its deliveries and dead-letter it in the
 * end. */
static int lane_job(void *arg) {
    lane *l = arg;
    consumer *k = l->k;
    pthread_mutex_lock(&k->mu);
    lane_item *it = l->cur;
    bool stop = atomic_load(&cons.stop);
    if (it == NULL) {
        if (l->head == NULL || (stop && evt_now_ms() >= atomic_load(&cons.drain_until_ms))) {
            pthread_mutex_unlock(&k->mu);
            return LANE_QUIT;
        }
        it = l->head;
        l->head = it->next;
        if (l->head == NULL) l->tail = NULL;
        l->cur = it;
    } else if (stop) {
        pthread_mutex_unlock(&k->mu); /* stopped while waiting: stays pending */
        return LANE_QUIT;
    }
    pthread_mutex_unlock(&k->mu);
    pg_conn *pg = pg_local();
    int ret = OM_E_UNAVAILABLE;
    if (l->probing) {
        if (pg == NULL || pg_exec(pg, "SELECT 1", NULL, NULL) != 0) {
            l->outage = true;
            return LANE_WAIT_PG;
        }
        l->probing = false;
        lane_set_pg_down(l, false);
        if (!l->outage) {
            ret = l->saved_ret;
            goto finished;
        }
    }
    bool down = true, outage = true;
    if (pg != NULL) {
        ret = consumer_apply_env(k, pg, l->rc, it->env, it->sid, it->seq);
        const char *st = pg_sqlstate(pg);
        down = ret == OM_E_UNAVAILABLE && st[0] != '\0';
        outage = strncmp(st, "08", 2) == 0; /* connection exception */
    }
    if (down) {
        l->probing = true;
        l->outage = outage;
        l->saved_ret = ret;
        lane_set_pg_down(l, true);
        return LANE_WAIT_PG;
    }
finished:
    pthread_mutex_lock(&k->mu);
    l->cur = NULL;
    k->inflight--;
    pthread_cond_broadcast(&k->room);
    pthread_mutex_unlock(&k->mu);
    orgmesh__events__v1__envelope__free_unpacked(it->env, NULL);
    free(it);
    /* what the handler needs is away: do not run through the queue */
    return ret == OM_E_UNAVAILABLE ? LANE_BACKOFF : LANE_DONE;
}

/* The lane ticker: one uv_timer on the loop that resubmits lanes whose retry
 * time has come (PostgreSQL probes, backoff). Runs only while a lane waits. */
static struct {
    uv_timer_t timer;
    bool inited, closed;     /* loop thread */
    pthread_mutex_t mu;      /* cons.cs's lifetime against the ticker */
} lt = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void lane_done(void *arg, int rc);
static void reader_room(consumer *k);

static void lane_submit(lane *l) {
    if (loop_work(lane_job, lane_done, l) != 0) {
        pthread_mutex_lock(&l->k->mu);
        lane_drop_locked(l);
        pthread_mutex_unlock(&l->k->mu);
    }
}

static void lane_tick(uv_timer_t *t) {
    int64_t now = evt_now_ms();
    bool waiting = false;
    pthread_mutex_lock(&lt.mu);
    for (int i = 0; i < cons.n && cons.cs != NULL; i++) {
        consumer *k = &cons.cs[i];
        for (int j = 0; k->lanes != NULL && j < k->nlanes; j++) {
            lane *l = &k->lanes[j];
            pthread_mutex_lock(&k->mu);
            bool due = l->retry_at != 0 && l->retry_at <= now;
            if (due) l->retry_at = 0;
            else if (l->retry_at != 0) waiting = true;
            pthread_mutex_unlock(&k->mu);
            if (due) lane_submit(l);
        }
    }
    pthread_mutex_unlock(&lt.mu);
    if (!waiting) uv_timer_stop(t);
}

static void lane_ticker_close(void *arg) {
    (void)arg;
    if (lt.inited && !lt.closed) uv_close((uv_handle_t *)&lt.timer, NULL);
    lt.closed = true;
}

/* Loop thread. False once the loop is stopping (the ticker is closed). */
static bool lane_ticker_start(void) {
    if (lt.closed) return false;
    if (!lt.inited) {
        if (uv_timer_init(loop_get(), &lt.timer) != 0) return false;
        lt.inited = true;
        loop_on_stop(lane_ticker_close, NULL);
    }
    if (!uv_is_active((uv_handle_t *)&lt.timer)) uv_timer_start(&lt.timer, lane_tick, 50, 50);
    return true;
}

/* On the loop after each job: the next entry at once, a retry later, or
 * nothing. Once stopping, the lane goes on with what it holds until
 * cons.drain_until_ms (a rolling restart then leaves little for a claim) —
 * not after a failure — then leaves the rest pending. */
static void lane_done(void *arg, int rc) {
    lane *l = arg;
    consumer *k = l->k;
    if (rc < LANE_DONE) rc = LANE_QUIT; /* the loop is stopping: the job never ran */
    int64_t delay = 0;
    if (rc == LANE_WAIT_PG) {
        delay = 500;
    } else if (rc == LANE_BACKOFF) {
        l->backoff = l->backoff == 0 ? 100 : (l->backoff * 2 > 2000 ? 2000 : l->backoff * 2);
        delay = l->backoff;
    } else {
        l->backoff = 0;
    }
    pthread_mutex_lock(&k->mu);
    bool stop = atomic_load(&cons.stop);
    if (rc == LANE_QUIT ||
        (stop && (delay > 0 || evt_now_ms() >= atomic_load(&cons.drain_until_ms)))) {
        lane_drop_locked(l);
        pthread_mutex_unlock(&k->mu);
        return;
    }
    if (l->head == NULL && l->cur == NULL) {
        /* Tell the reader first, while the lane is still scheduled: once it
         * is not, evt_consumers_stop may free the consumer. */
        pthread_mutex_unlock(&k->mu);
        reader_room(k);
        pthread_mutex_lock(&k->mu);
        if (l->head == NULL && l->cur == NULL) {
            l->scheduled = false;
            pthread_cond_broadcast(&k->room);
            pthread_mutex_unlock(&k->mu);
            return;
        }
        pthread_mutex_unlock(&k->mu); /* entries came meanwhile */
        lane_submit(l);
        return;
    }
    if (delay > 0) {
        l->retry_at = evt_now_ms() + delay;
        pthread_mutex_unlock(&k->mu);
        if (!lane_ticker_start()) {
            pthread_mutex_lock(&k->mu);
            lane_drop_locked(l);
            pthread_mutex_unlock(&k->mu);
        }
        return;
    }
    pthread_mutex_unlock(&k->mu);
    reader_room(k);
    lane_submit(l);
}

/* ---- progress ------------------------------------------------------------- */

#define CONSUMER_PROGRESS_MS 1000

/* The group's watermark for this source: the highest relay seq with every
 * seq at or below it applied (evt_progress, advanced from applied_events),
 * published to Redis every second from the database, so that a Redis that
 * lost it learns it again at once (issue 12). */
/* Returns false when the connection is broken (the caller's to reset). */
static bool consumer_progress_on(consumer *k, pg_conn *pg, cache_conn *rc) {
    pg_conn **ppg = &pg;
    pg_params p = {0};
    pg_p_str(&p, k->source);
    pg_res *r = NULL;
    /* seq - wm = row number holds exactly for the contiguous run above wm */
    int rc0 = pg_exec(*ppg,
                      "WITH p AS (SELECT COALESCE((SELECT watermark FROM evt_progress"
                      "  WHERE source = $1), 0) AS wm),"
                      " s AS (SELECT a.seq, row_number() OVER (ORDER BY a.seq) AS rn"
                      "  FROM applied_events a, p WHERE a.source = $1 AND a.seq > p.wm"
                      "  ORDER BY a.seq LIMIT 100000)"
                      " SELECT p.wm, p.wm + COALESCE((SELECT max(rn) FROM s WHERE s.seq = p.wm + s.rn),"
                      "  0) FROM p",
                      &p, &r);
    if (rc0 != 0 || pg_nrows(r) != 1) {
        pg_free(r);
        return !(pg_sqlstate(*ppg)[0] == '0' && pg_sqlstate(*ppg)[1] == '8');
    }
    int64_t old = pg_i64(r, 0, 0), wm = pg_i64(r, 0, 1);
    pg_free(r);
    if (wm > old) {
        pg_params u = {0};
        pg_p_str(&u, k->source);
        pg_p_i64(&u, wm);
        if (pg_exec(*ppg,
                    "INSERT INTO evt_progress (source, watermark) VALUES ($1, $2)"
                    " ON CONFLICT (source) DO UPDATE SET watermark ="
                    " GREATEST(evt_progress.watermark, EXCLUDED.watermark), updated_at = now()",
                    &u, NULL) != 0)
            return true;
    }
    char v[24];
    snprintf(v, sizeof v, "%lld", (long long)wm);
    const char *argv[] = {"HSET", k->progress_key, cons.group, v};
    redisReply *h = consumer_cmd(rc, 4, argv);
    if (h != NULL) freeReplyObject(h);
    return true;
}

/* Run fn(arg) on a worker of the pool (its pg_local connection) and wait for
 * it: the reader's PostgreSQL work uses the pool's connections, not one of
 * its own (issue 15). OM_E_UNAVAILABLE when the pool refuses (stopping). */
typedef struct evt_call {
    work_job job;
    int (*fn)(void *arg);
    void *arg;
    int rc;
    bool done;
    pthread_mutex_t mu;
    pthread_cond_t cv;
} evt_call;

static void evt_call_run(work_job *job) {
    evt_call *c = (evt_call *)job;
    int rc = c->fn(c->arg);
    pthread_mutex_lock(&c->mu);
    c->rc = rc;
    c->done = true;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

static int evt_on_worker(int (*fn)(void *arg), void *arg) {
    evt_call c = {.job = {.run = evt_call_run}, .fn = fn, .arg = arg,
                  .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    work_pool *pool = work_default();
    if (pool == NULL || !work_submit(pool, &c.job, 0)) return OM_E_UNAVAILABLE;
    pthread_mutex_lock(&c.mu);
    while (!c.done) pthread_cond_wait(&c.cv, &c.mu);
    pthread_mutex_unlock(&c.mu);
    pthread_cond_destroy(&c.cv);
    pthread_mutex_destroy(&c.mu);
    return c.rc;
}

typedef struct progress_arg {
    consumer *k;
    cache_conn *rc;
} progress_arg;

static int consumer_progress_job(void *arg) {
    progress_arg *a = arg;
    pg_conn *pg = pg_local();
    if (pg == NULL) return OM_E_UNAVAILABLE;
    consumer_progress_on(a->k, pg, a->rc); /* pg_local resets a broken connection itself */
    return 0;
}

/* The group's watermark, published every second: on a worker when there is
 * a pool, else on a connection of the reader's own (*ppg). */
static void consumer_progress(consumer *k, pg_conn **ppg, cache_conn *rc) {
    if (work_default() != NULL) {
        progress_arg a = {k, rc};
        (void)evt_on_worker(consumer_progress_job, &a);
        return;
    }
    if (*ppg == NULL && pg_connect(ppg) != 0) return;
    if (!consumer_progress_on(k, *ppg, rc)) {
        pg_close(*ppg);
        *ppg = NULL;
    }
}

/* ---- the reader ------------------------------------------------------------- */

static void *consumer_main(void *arg) {
    consumer *k = arg;
    cache_conn *rc = k->rc;
    bool lanes = k->lanes != NULL;
    pg_conn *pg = NULL; /* one lane only: the lanes have their own */
    int claim_every = cons.claim_idle_ms / 2;
    if (claim_every < 50) claim_every = 50;
    if (claim_every > 2000) claim_every = 2000;
    bool group_ok = false, pg_down = false;
    unsigned group_gen = 0;
    int64_t next_claim = 0, next_gc = evt_now_ms() + CONSUMER_GC_MS, next_progress = 0;
    pg_conn *ppg = NULL; /* progress (issue 12) */
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
        if (ret == 0 && now >= next_progress) {
            consumer_progress(k, &ppg, rc);
            next_progress = now + CONSUMER_PROGRESS_MS;
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
    pg_close(ppg);
    pg_local_close();
    return NULL;
}

/* ---- the reader on the loop (issue 15) ---------------------------------------
 *
 * No thread: the reader is a small state machine on the loop. Its blocking
 * read, XREADGROUP ... BLOCK 500, goes through redis_uv (a connection of its
 * own); the entries are handed to the lanes right in the reply callback.
 * The rest — the group (re)creation, claims and dead letters, the watermark,
 * forgetting dead consumers — runs, when due, in a maintenance round on a
 * worker with the reader's blocking Redis connection (k->rc) and the worker's
 * pg_local connection. One step at a time: a round, or a read, or a timer.
 * Malformed entries are dead-lettered from the reply callback through k->rc
 * (a local Redis command; no round is running meanwhile). */

enum { READER_READ = 1, READER_WAIT, READER_BACKOFF, READER_STOP };

static int reader_claim_every(void) {
    int e = cons.claim_idle_ms / 2;
    return e < 50 ? 50 : e > 2000 ? 2000 : e;
}

/* A maintenance round, on a worker. */
static int reader_round(void *arg) {
    consumer *k = arg;
    cache_conn *rc = k->rc;
    if (atomic_load(&cons.stop)) return READER_STOP;
    /* Touch no entry while a lane waits for PostgreSQL: a claim would count
     * as a delivery and push entries towards the dead letters. */
    if (consumer_lanes_pg_down(k)) return READER_WAIT;
    if (cache_conn_ctx(rc) == NULL) return READER_WAIT;
    int ret = 0;
    if (!k->group_ok || k->group_gen != rc->gen) {
        /* After a reconnect Redis may have restarted empty. */
        ret = consumer_group_create(k, rc);
        k->group_ok = ret == 0;
        k->group_gen = rc->gen;
    }
    int64_t now = evt_now_ms();
    int room = consumer_room(k);
    if (ret == 0 && now >= k->next_claim && room > 0) {
        ret = consumer_claim(k, NULL, rc, room);
        k->next_claim = now + reader_claim_every();
    }
    if (ret == 0 && now >= k->next_progress) {
        pg_conn *pg = pg_local();
        if (pg != NULL) consumer_progress_on(k, pg, rc);
        k->next_progress = now + CONSUMER_PROGRESS_MS;
    }
    if (ret == 0 && now >= k->next_gc) {
        consumer_gc(k, rc);
        k->next_gc = now + CONSUMER_GC_MS;
    }
    if (ret == OM_E_NOT_FOUND) k->group_ok = false; /* NOGROUP: stream or group deleted */
    return ret == 0 ? READER_READ : READER_BACKOFF;
}

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int active;              /* readers on the loop not yet finished (mu) */
} rdr = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static void reader_step(consumer *k);

static void reader_timer_cb(uv_timer_t *t) { reader_step(t->data); }

static void reader_finished(consumer *k) {
    (void)k;
    pthread_mutex_lock(&rdr.mu);
    rdr.active--;
    pthread_cond_broadcast(&rdr.cv);
    pthread_mutex_unlock(&rdr.mu);
}

static void reader_timer_closed(uv_handle_t *h) {
    consumer *k = h->data;
    k->t_open = false;
    if (!k->round_busy && !k->read_busy) reader_finished(k);
}

/* Loop thread: stop reading; a round or read in flight ends by itself. */
static void reader_stop(consumer *k) {
    if (k->stopping || !k->t_open) return;
    k->stopping = true;
    uv_close((uv_handle_t *)&k->t, reader_timer_closed);
    if (k->ru != NULL) {
        redis_uv *ru = k->ru;
        k->ru = NULL;
        redis_uv_close(ru); /* a read in flight fails with "closed" now */
    }
}

static void reader_wait(consumer *k, int ms) {
    if (k->t_open && !k->stopping) uv_timer_start(&k->t, reader_timer_cb, (uint64_t)ms, 0);
}

static void reader_backoff(consumer *k) {
    k->backoff = k->backoff == 0 ? 100 : (k->backoff * 2 > 2000 ? 2000 : k->backoff * 2);
    reader_wait(k, k->backoff);
}

static void reader_round_done(void *arg, int rc) {
    consumer *k = arg;
    k->round_busy = false;
    if (k->stopping) {
        if (!k->t_open && !k->read_busy) reader_finished(k);
        return;
    }
    if (rc == READER_READ) {
        k->backoff = 0;
        reader_step(k);
    } else if (rc == READER_WAIT) {
        reader_wait(k, 500);
    } else if (rc == READER_STOP) {
        return;
    } else {
        reader_backoff(k); /* also the loop refusing the job (rc < 0) */
    }
}

static void reader_read_reply(redis_uv *r, redisReply *rep, const char *err, void *arg) {
    (void)r;
    consumer *k = arg;
    k->read_busy = false;
    if (k->stopping) {
        if (!k->t_open && !k->round_busy) reader_finished(k);
        return;
    }
    if (rep == NULL) {
        log_warn("XREADGROUP %s: %s", k->stream, err);
        reader_backoff(k);
        return;
    }
    if (rep->type == REDIS_REPLY_ERROR) {
        if (strncmp(rep->str, "NOGROUP", 7) == 0) {
            k->group_ok = false;
        } else {
            log_error("XREADGROUP %s: %s", k->stream, rep->str);
        }
        reader_backoff(k);
        return;
    }
    if (reply_is(rep, REDIS_REPLY_ARRAY)) {
        for (size_t i = 0; i < rep->elements; i++) {
            const redisReply *st = rep->element[i];
            if (reply_is(st, REDIS_REPLY_ARRAY) && st->elements == 2)
                (void)consumer_process_all(k, NULL, k->rc, st->element[1]);
        }
    }
    k->backoff = 0;
    reader_step(k);
}

/* The next step: a round when something is due, else a read when the lanes
 * have room and Redis is there. */
static void reader_step(consumer *k) {
    if (k->stopping || k->round_busy || k->read_busy || atomic_load(&cons.stop)) return;
    uv_timer_stop(&k->t);
    k->wait_room = false;
    int64_t now = evt_now_ms();
    bool due = !k->group_ok || k->group_gen != k->rc->gen || k->rc->ctx == NULL ||
               (now >= k->next_claim && consumer_room(k) > 0) || now >= k->next_progress ||
               now >= k->next_gc ||
               consumer_lanes_pg_down(k);
    if (due) {
        k->round_busy = true;
        if (loop_work(reader_round, reader_round_done, k) != 0) {
            k->round_busy = false;
            reader_wait(k, 500);
        }
        return;
    }
    if (!k->ru_up) {
        reader_wait(k, 250); /* redis_uv reconnects by itself */
        return;
    }
    int room = consumer_room(k);
    if (room == 0) {
        k->wait_room = true; /* lane_done kicks */
        reader_wait(k, CONSUMER_BLOCK_MS);
        return;
    }
    char count[8], block[16];
    snprintf(count, sizeof count, "%d", room);
    snprintf(block, sizeof block, "%d", CONSUMER_BLOCK_MS);
    const char *argv[] = {"XREADGROUP", "GROUP", cons.group, cons.name, "COUNT", count,
                          "BLOCK", block, "STREAMS", k->stream, ">"};
    k->read_busy = true;
    if (redis_uv_command(k->ru, 11, argv, NULL, CONSUMER_BLOCK_MS + 1500, reader_read_reply, k) !=
        0) {
        k->read_busy = false;
        reader_wait(k, 250);
    }
}

/* lane_done: a lane made room. Loop thread. */
static void reader_room(consumer *k) {
    if (k->on_loop && k->wait_room && !k->stopping) reader_step(k);
}

static void reader_on_state(redis_uv *r, bool up, const char *err, void *arg) {
    (void)r;
    (void)err;
    consumer *k = arg;
    k->ru_up = up;
    /* A restarted Redis may be empty: the group is created again first. */
    if (up) {
        k->group_ok = false;
        reader_step(k);
    }
}

static void readers_stop_on_loop(void *arg);

static void readers_start_on_loop(void *arg) {
    (void)arg;
    loop_on_stop(readers_stop_on_loop, NULL); /* SIGTERM: stop reading */
    for (int i = 0; i < cons.n; i++) {
        consumer *k = &cons.cs[i];
        uv_timer_init(loop_get(), &k->t);
        k->t.data = k;
        k->t_open = true;
        redis_uv_opts o = {.command_timeout_ms = CONSUMER_BLOCK_MS + 1500,
                           .backoff_max_ms = 1000,
                           .on_state = reader_on_state,
                           .arg = k};
        k->ru = redis_uv_open(loop_get(), &o);
        if (k->ru == NULL) log_error("consumer %s: cannot open a Redis connection", k->source);
        reader_step(k); /* the first round creates the group */
    }
}

static void readers_stop_on_loop(void *arg) {
    (void)arg;
    for (int i = 0; i < cons.n; i++)
        if (cons.cs[i].on_loop) reader_stop(&cons.cs[i]);
}

static void consumers_free(void) {
    for (int i = 0; i < cons.n; i++) {
        consumer *k = &cons.cs[i];
        for (int j = 0; k->lanes != NULL && j < k->nlanes; j++) cache_close(k->lanes[j].rc);
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
    snprintf(k->progress_key, sizeof k->progress_key, "%s%s%s", cache_namespace(),
             EVT_PROGRESS_PREFIX, sub->source);
    /* The command timeout must outlast XREADGROUP's BLOCK. */
    if (cache_conn_new(&k->rc, CONSUMER_BLOCK_MS + 1500) != 0) return OM_E_NOMEM;
    k->nlanes = nlanes;
    k->cap = nlanes * LANE_DEPTH;
    /* Without a worker pool (tools) one lane is the reader itself, on a
     * PostgreSQL connection of its own. */
    if (nlanes <= 1 && work_default() == NULL) return 0;
    k->lanes = calloc((size_t)nlanes, sizeof *k->lanes);
    if (k->lanes == NULL) return OM_E_NOMEM;
    for (int j = 0; j < nlanes; j++) {
        k->lanes[j].k = k;
        if (cache_conn_new(&k->lanes[j].rc, 0) != 0) return OM_E_NOMEM;
    }
    pthread_condattr_t ca;
    if (pthread_condattr_init(&ca) != 0) return OM_E_NOMEM;
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    bool ok = pthread_mutex_init(&k->mu, NULL) == 0;
    if (ok && pthread_cond_init(&k->room, &ca) != 0) {
        pthread_mutex_destroy(&k->mu);
        ok = false;
    }
    pthread_condattr_destroy(&ca);
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
    cons.m_deadletters = metrics_counter_register(
        "orgmesh_evt_dead_letters_total", "events this consumer group parked in its dead letters (issue 19)");
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
    pthread_mutex_lock(&lt.mu); /* the lane ticker reads cons.cs */
    cons.cs = calloc((size_t)n, sizeof *cons.cs);
    if (cons.cs == NULL) {
        pthread_mutex_unlock(&lt.mu);
        return OM_E_NOMEM;
    }
    cons.n = n;
    char lanes_log[128] = "";
    size_t ll = 0;
    for (int i = 0; i < n; i++) {
        int nl = lanes_all > 0 ? lanes_all : (subs[i].lanes > 0 ? subs[i].lanes : 1);
        int rc = consumer_init(&cons.cs[i], &subs[i], nl);
        if (rc != 0) {
            consumers_free();
            pthread_mutex_unlock(&lt.mu);
            return rc;
        }
        if (ll < sizeof lanes_log) {
            int w = snprintf(lanes_log + ll, sizeof lanes_log - ll, "%s%s %d", i ? ", " : "",
                             subs[i].source, nl);
            if (w > 0) ll += (size_t)w;
        }
    }
    pthread_mutex_unlock(&lt.mu);
    if (evt_pipe(cons.pipe) != 0) {
        pthread_mutex_lock(&lt.mu);
        consumers_free();
        pthread_mutex_unlock(&lt.mu);
        return OM_E_INTERNAL;
    }
    atomic_store(&cons.stop, false);
    cons.running = true;
    /* With a process loop and a pool the readers live on the loop (no
     * threads); a tool without them gets one thread per reader. */
    bool on_loop = work_default() != NULL && loop_get() != NULL && !loop_stopping();
    if (on_loop) {
        int64_t now = evt_now_ms();
        for (int i = 0; i < n; i++) {
            consumer *k = &cons.cs[i];
            k->on_loop = true;
            k->next_gc = now + CONSUMER_GC_MS;
        }
        pthread_mutex_lock(&rdr.mu);
        rdr.active = n;
        pthread_mutex_unlock(&rdr.mu);
        if (loop_on_loop()) {
            readers_start_on_loop(NULL);
        } else if (loop_call(readers_start_on_loop, NULL) != 0) {
            pthread_mutex_lock(&rdr.mu);
            rdr.active = 0;
            pthread_mutex_unlock(&rdr.mu);
            for (int i = 0; i < n; i++) cons.cs[i].on_loop = false;
            evt_consumers_stop();
            return OM_E_UNAVAILABLE;
        }
        log_info("consumer %s of group %s: %d subscription(s) on the loop, lanes: %s", cons.name,
                 cons.group, n, lanes_log);
        return 0;
    }
    for (int i = 0; i < n; i++) {
        consumer *k = &cons.cs[i];
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
        pthread_cond_broadcast(&k->room);
        pthread_mutex_unlock(&k->mu);
    }
    for (int i = 0; i < cons.n; i++)
        if (cons.cs[i].started) pthread_join(cons.cs[i].th, NULL);
    /* The readers on the loop: stopped there (or by the drain's stop hook),
     * then waited for — a round or read in flight ends first. */
    bool any_on_loop = false;
    for (int i = 0; i < cons.n; i++) any_on_loop = any_on_loop || cons.cs[i].on_loop;
    if (any_on_loop) {
        if (!loop_stopping()) (void)loop_call(readers_stop_on_loop, NULL);
        pthread_mutex_lock(&rdr.mu);
        while (rdr.active > 0) pthread_cond_wait(&rdr.cv, &rdr.mu);
        pthread_mutex_unlock(&rdr.mu);
    }
    /* The lanes: a retry waiting for the ticker is dropped (pending in the
     * group); a job in flight finishes (its done runs on the loop). Never
     * called on the loop thread, which runs those dones. */
    for (int i = 0; i < cons.n; i++) {
        consumer *k = &cons.cs[i];
        if (!k->sync_init) continue;
        pthread_mutex_lock(&k->mu);
        for (;;) {
            bool busy = false;
            for (int j = 0; j < k->nlanes; j++) {
                lane *l = &k->lanes[j];
                if (l->scheduled && l->retry_at != 0) lane_drop_locked(l);
                if (l->scheduled) busy = true;
            }
            if (!busy) break;
            pthread_cond_wait(&k->room, &k->mu);
        }
        pthread_mutex_unlock(&k->mu);
    }
    close(cons.pipe[0]);
    close(cons.pipe[1]);
    pthread_mutex_lock(&lt.mu);
    consumers_free();
    pthread_mutex_unlock(&lt.mu);
    cons.running = false;
}
