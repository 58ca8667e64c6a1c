/* assets_jobs.c — the copy engine (ASSET-02..ASSET-06): a pool of worker
 * threads, each with its own PostgreSQL connection, that take copy jobs
 * under a lease (FOR UPDATE SKIP LOCKED, expiry on the database clock) and
 * copy them batch by batch. Each batch is ONE transaction of set-based
 * statements (INSERT ... SELECT) that makes the copies, points their
 * references at the copies through the job's items (the source -> copy
 * mapping), records each asset's result and advances the progress: a crash
 * loses at most the batch under way, which the next owner redoes, and the
 * unique index on (job_id, source_asset_id) makes a second copy impossible.
 * Between batches the connection is asked again (CONN-07) and cancellation
 * is seen. */
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "app.h"
#include "assets.h"
#include "audit.h"
#include "config.h"
#include "log.h"
#include "om_err.h"
#include "orgmesh/connections/v1/connections.pb-c.h"

#define NOTIFY_CHANNEL "assets_jobs"
#define MAX_WORKERS 16

static struct {
    int workers, batch, delay_ms, lease_ms, poll_ms;
    pthread_t threads[MAX_WORKERS];
    int started;
    int wake[2];
    volatile int stop;
    char owner[64];
} E = {.wake = {-1, -1}};

/* ---- protobuf views ---- */

void assets_timestamp(Google__Protobuf__Timestamp *t, int64_t us) {
    google__protobuf__timestamp__init(t);
    int64_t s = us / 1000000, r = us % 1000000;
    if (r < 0) {
        s -= 1;
        r += 1000000;
    }
    t->seconds = s;
    t->nanos = (int32_t)(r * 1000);
}

void assets_history_resource(uint64_t hub, char *buf, size_t cap) {
    snprintf(buf, cap, "accounts/%" PRIu64 "/assets", hub);
}

void assets_job_pb_build(job_pb *v) {
    const job_row *j = &v->row;
    APB(CopyJob) *p = &v->pb;
    orgmesh__assets__v1__copy_job__init(p);
    orgmesh__assets__v1__copy_options__init(&v->opt);
    p->job_id = v->row.id;
    p->source_hub_id = j->source;
    p->target_hub_id = j->target;
    v->opt.include_dependencies = j->include_deps;
    v->opt.conflict_policy = (APB(ConflictPolicy))j->policy;
    p->options = &v->opt;
    p->state = (APB(CopyJobState))j->state;
    p->done = j->done;
    p->total = j->total;
    p->copied_count = j->copied;
    p->skipped_count = j->skipped;
    p->failed_count = j->failed;
    p->failure_reason = v->row.failure_reason;
    p->created_by_user_id = j->created_by;
    p->version = j->version;
    assets_timestamp(&v->ct, j->create_us);
    p->create_time = &v->ct;
    assets_timestamp(&v->ut, j->update_us);
    p->update_time = &v->ut;
    if (j->start_us) {
        assets_timestamp(&v->st, j->start_us);
        p->start_time = &v->st;
    }
    if (j->end_us) {
        assets_timestamp(&v->et, j->end_us);
        p->end_time = &v->et;
    }
}

int assets_emit_job(pg_conn *tx, const job_row *j, bool finished, const om_actor *actor) {
    job_pb *v = calloc(1, sizeof *v);
    if (v == NULL) return OM_E_NOMEM;
    v->row = *j;
    assets_job_pb_build(v);
    char subject[64];
    snprintf(subject, sizeof subject, "copy_jobs/%s", j->id);
    evt_meta meta = {.subject = subject, .version = j->version, .actor = actor, .rule = actor ? NULL : "ASSET-03"};
    int rc;
    if (finished) {
        APB(CopyJobFinished) ev = ORGMESH__ASSETS__V1__COPY_JOB_FINISHED__INIT;
        ev.job = &v->pb;
        rc = evt_emit(tx, &meta, &ev.base, NULL);
    } else {
        APB(CopyJobStarted) ev = ORGMESH__ASSETS__V1__COPY_JOB_STARTED__INIT;
        ev.job = &v->pb;
        rc = evt_emit(tx, &meta, &ev.base, NULL);
    }
    if (rc == 0 && finished) {
        char resource[64];
        assets_history_resource(j->target, resource, sizeof resource);
        audit_entry e = {.actor = actor, .rule = actor ? NULL : "ASSET-03", .action = "copy_job.finish",
                         .resource = resource, .after = &v->pb.base,
                         .reason = j->failure_reason[0] ? j->failure_reason : NULL};
        rc = audit_record(tx, &e);
    }
    free(v);
    return rc;
}

int assets_jobs_notify(pg_conn *tx) { return pg_exec(tx, "SELECT pg_notify('" NOTIFY_CHANNEL "', '')", NULL, NULL); }

/* ---- claiming (ASSET-06) ---- */

typedef struct claim_arg {
    job_row j;
    bool found;
} claim_arg;

static int claim_tx(pg_conn *tx, void *arg) {
    claim_arg *a = arg;
    a->found = false;
    pg_params p = {0};
    pg_p_str(&p, E.owner);
    pg_p_i64(&p, E.lease_ms);
    pg_res *r = NULL;
    /* Several replicas: SKIP LOCKED hands each open job to one worker; the
     * lease is timed by the database clock, so a dead owner's job is taken
     * over once its lease has run out. */
    int rc = pg_exec(tx, "UPDATE copy_jobs j SET lease_owner = $1, lease_until = now() + $2 * interval '1 millisecond',"
                         " state = 2, start_time = coalesce(j.start_time, now()), update_time = now(),"
                         " version = j.version + CASE WHEN s.old_state = 1 THEN 1 ELSE 0 END"
                         " FROM (SELECT job_id, state AS old_state FROM copy_jobs WHERE state IN (1, 2)"
                         "       AND (lease_until IS NULL OR lease_until < now()) ORDER BY create_time LIMIT 1"
                         "       FOR UPDATE SKIP LOCKED) s"
                         " WHERE j.job_id = s.job_id RETURNING j.job_id::text, s.old_state",
                     &p, &r);
    if (rc != 0) return rc;
    if (pg_nrows(r) == 0) {
        pg_free(r);
        return 0;
    }
    char id[ASSET_ID_LEN];
    snprintf(id, sizeof id, "%s", pg_str(r, 0, 0));
    bool first = pg_i64(r, 0, 1) == 1;
    pg_free(r);
    if ((rc = store_job_get(tx, id, false, &a->j)) != 0) return rc;
    a->found = true;
    /* Emitted once: not when a job is resumed after a crash (ASSET-06). */
    if (first) rc = assets_emit_job(tx, &a->j, false, NULL);
    if (first) log_info("copy job %s started: %d asset(s) %" PRIu64 " -> %" PRIu64, id, a->j.total, a->j.source, a->j.target);
    else log_info("copy job %s resumed at %d/%d", id, a->j.done, a->j.total);
    return rc;
}

/* ---- one batch (ASSET-04, ASSET-05) ---- */

enum { BATCH_MORE = 0, BATCH_DONE = 1, BATCH_LOST = 2 };

typedef struct batch_arg {
    job_row *j;
    int outcome;
} batch_arg;

/* Runs one of the batch statements below ($1 job, $2..$3 seq range, $4
 * rank, $5 target); *affected (may be NULL) = rows it touched. */
static int exec_job_n(pg_conn *tx, const char *sql, const job_row *j, int64_t lo, int64_t hi, int rank,
                      int64_t *affected) {
    pg_params p = {0};
    pg_p_str(&p, j->id);
    pg_p_i64(&p, lo);
    pg_p_i64(&p, hi);
    pg_p_i64(&p, rank);
    pg_p_u64(&p, j->target);
    pg_res *r = NULL;
    int rc = pg_exec(tx, sql, &p, affected ? &r : NULL);
    if (rc == 0 && affected) *affected = pg_nrows(r) > 0 ? pg_nrows(r) : pg_affected(r);
    if (r) pg_free(r);
    return rc;
}

static int exec_job(pg_conn *tx, const char *sql, const job_row *j, int64_t lo, int64_t hi, int rank) {
    return exec_job_n(tx, sql, j, lo, hi, rank, NULL);
}

#define IN_BATCH " i.job_id = $1::uuid AND i.seq BETWEEN $2 AND $3 AND i.rank = $4 AND i.outcome = 1 "
/* The name an item would get, and the target asset it clashes with. */
#define CLASH                                                                                            \
    " FROM assets t WHERE" IN_BATCH "AND t.hub_id = $5 AND t.type = i.type"                               \
    " AND lower(t.name) = lower(coalesce(i.new_name, i.source_name))"

/* ASSET-04 RENAME: gives each clashing item of the batch the first free
 * " (copy)", " (copy 2)", ... name in the target. */
static int rename_clashes(pg_conn *tx, const job_row *j, int64_t lo, int64_t hi, int rank) {
    pg_params p = {0};
    pg_p_str(&p, j->id);
    pg_p_i64(&p, lo);
    pg_p_i64(&p, hi);
    pg_p_i64(&p, rank);
    pg_p_u64(&p, j->target);
    pg_res *r = NULL;
    int rc = pg_exec(tx, "SELECT i.seq, i.source_name, i.type FROM copy_items i WHERE EXISTS (SELECT 1" CLASH ")"
                         " ORDER BY i.seq", &p, &r);
    /* (the EXISTS above refers to the outer i) */
    if (rc != 0) return rc;
    for (int k = 0; rc == 0 && k < pg_nrows(r); k++) {
        const char *base = pg_str(r, k, 1);
        pg_params q = {0};
        pg_p_u64(&q, j->target);
        pg_p_i64(&q, pg_i64(r, k, 2));
        pg_p_str(&q, base);
        pg_res *t = NULL;
        rc = pg_exec(tx, "SELECT name FROM assets WHERE hub_id = $1 AND type = $2"
                         " AND left(lower(name), length($3) + 6) = lower($3) || ' (copy'", &q, &t);
        if (rc != 0) break;
        int nt = pg_nrows(t);
        const char **taken = calloc((size_t)nt + 1, sizeof *taken);
        if (taken == NULL) {
            pg_free(t);
            rc = OM_E_NOMEM;
            break;
        }
        for (int x = 0; x < nt; x++) taken[x] = pg_str(t, x, 0);
        char name[ASSET_COPY_NAME_MAX];
        asset_pick_copy_name(base, taken, (size_t)nt, name, sizeof name);
        free(taken);
        pg_free(t);
        pg_params u = {0};
        pg_p_str(&u, j->id);
        pg_p_i64(&u, pg_i64(r, k, 0));
        pg_p_str(&u, name);
        rc = pg_exec(tx, "UPDATE copy_items SET new_name = $3 WHERE job_id = $1::uuid AND seq = $2", &u, NULL);
    }
    pg_free(r);
    return rc;
}

/* One rank of one batch, in a few set-based statements (each a round trip:
 * their number, not the rows, is what a batch costs). */
static int copy_rank(pg_conn *tx, const job_row *j, int64_t lo, int64_t hi, int rank) {
    int rc = 0;
    /* A source asset deleted since the job was accepted: NOT_FOUND.
     * ASSET-04: every reference must lead to a copy (or, under SKIP, to the
     * existing target asset); otherwise MISSING_DEPENDENCY. Dependencies
     * have a lower rank, so they are settled by now. */
    if (rc == 0)
        rc = exec_job(tx, "UPDATE copy_items i SET outcome = 4, error_reason = 'NOT_FOUND',"
                          " error_message = 'the source asset no longer exists', finish_time = now()"
                          " WHERE" IN_BATCH "AND $5::bigint > 0 AND NOT EXISTS"
                          " (SELECT 1 FROM assets a WHERE a.asset_id = i.source_asset_id)", j, lo, hi, rank);
    if (rc == 0)
        rc = exec_job(tx, "UPDATE copy_items i SET outcome = 4, error_reason = 'MISSING_DEPENDENCY',"
                          " error_message = 'a referenced asset is not copied', finish_time = now()"
                          " WHERE" IN_BATCH "AND $5::bigint > 0 AND EXISTS (SELECT 1 FROM asset_refs r"
                          " LEFT JOIN copy_items d ON d.job_id = i.job_id AND d.source_asset_id = r.ref_id"
                          " WHERE r.asset_id = i.source_asset_id AND d.new_asset_id IS NULL)", j, lo, hi, rank);
    for (int round = 0; rc == 0 && round < 4; round++) {
        /* ASSET-04: name conflicts by the job's policy. */
        if (j->policy == POLICY_SKIP)
            rc = exec_job(tx, "UPDATE copy_items i SET outcome = 3, new_asset_id = t.asset_id, new_name = t.name,"
                              " finish_time = now()" CLASH, j, lo, hi, rank);
        else if (j->policy == POLICY_FAIL)
            rc = exec_job(tx, "UPDATE copy_items i SET outcome = 4, error_reason = 'NAME_CONFLICT',"
                              " error_message = 'an asset with this name already exists in the target',"
                              " finish_time = now()" CLASH, j, lo, hi, rank);
        else
            rc = rename_clashes(tx, j, lo, hi, rank);
        if (rc != 0) break;
        /* The copies (ASSET-05 provenance), their references pointed at the
         * copies through the items (the source -> copy mapping), and the
         * results, in one statement. ON CONFLICT DO NOTHING leaves an item
         * pending when its name was taken meanwhile (next round) or its copy
         * already exists (below). */
        int64_t pending = 0, copied = 0;
        rc = exec_job_n(tx, "SELECT 1 FROM copy_items i WHERE" IN_BATCH "AND $5::bigint > 0", j, lo, hi, rank, &pending);
        if (rc != 0 || pending == 0) break;
        rc = exec_job_n(tx, "WITH ins AS ("
                            "  INSERT INTO assets (hub_id, type, name, body, source_hub_id, source_asset_id, job_id)"
                            "  SELECT $5, a.type, coalesce(i.new_name, i.source_name), a.body, a.hub_id, a.asset_id, i.job_id"
                            "  FROM copy_items i JOIN assets a ON a.asset_id = i.source_asset_id"
                            "  WHERE" IN_BATCH "ORDER BY i.seq"
                            "  ON CONFLICT DO NOTHING RETURNING asset_id, source_asset_id, name),"
                            " refs AS ("
                            "  INSERT INTO asset_refs (asset_id, pos, ref_id, ref_type)"
                            "  SELECT ins.asset_id, r.pos, d.new_asset_id, r.ref_type FROM ins"
                            "  JOIN asset_refs r ON r.asset_id = ins.source_asset_id"
                            "  JOIN copy_items d ON d.job_id = $1::uuid AND d.source_asset_id = r.ref_id)"
                            " UPDATE copy_items i SET outcome = 2, new_asset_id = ins.asset_id, new_name = ins.name,"
                            " finish_time = now() FROM ins WHERE" IN_BATCH "AND i.source_asset_id = ins.source_asset_id",
                            j, lo, hi, rank, &copied);
        if (rc != 0) break;
        if (copied == pending) return 0;
        /* ASSET-06: an item whose copy this job already made (a batch
         * redone after a lost commit acknowledgement, or a concurrent owner's
         * batch committed first) is recorded, never copied again. */
        rc = exec_job(tx, "UPDATE copy_items i SET outcome = 2, new_asset_id = a.asset_id, new_name = a.name,"
                          " finish_time = now() FROM assets a WHERE" IN_BATCH "AND $5::bigint > 0"
                          " AND a.job_id = $1::uuid AND a.source_asset_id = i.source_asset_id", j, lo, hi, rank);
    }
    if (rc != 0) return rc;
    return exec_job(tx, "UPDATE copy_items i SET outcome = 4, error_reason = 'NAME_CONFLICT', new_asset_id = NULL,"
                        " error_message = 'no free name was found', finish_time = now()"
                        " WHERE" IN_BATCH "AND $5::bigint > 0", j, lo, hi, rank);
}

static int batch_tx(pg_conn *tx, void *arg) {
    batch_arg *b = arg;
    job_row *j = b->j;
    b->outcome = BATCH_LOST;
    pg_params p = {0};
    pg_p_str(&p, j->id);
    pg_p_str(&p, E.owner);
    pg_res *r = NULL;
    /* The job row's lock serialises batches of one job across replicas. */
    int rc = pg_exec(tx, "SELECT state = 2 AND lease_owner = $2 FROM copy_jobs WHERE job_id = $1::uuid FOR UPDATE",
                     &p, &r);
    if (rc != 0) return rc;
    bool mine = pg_nrows(r) > 0 && pg_bool(r, 0, 0);
    pg_free(r);
    if (!mine) return 0; /* cancelled, or taken over after our lease ran out */
    pg_params q = {0};
    pg_p_str(&q, j->id);
    pg_p_i64(&q, E.batch);
    rc = pg_exec(tx, "SELECT min(seq), max(seq), min(rank), max(rank) FROM (SELECT seq, rank FROM copy_items"
                     " WHERE job_id = $1::uuid AND outcome = 1 ORDER BY seq LIMIT $2) s", &q, &r);
    if (rc != 0) return rc;
    bool any = !pg_isnull(r, 0, 0);
    int64_t lo = any ? pg_i64(r, 0, 0) : 0, hi = any ? pg_i64(r, 0, 1) : 0;
    int rank_lo = any ? (int)pg_i64(r, 0, 2) : 0, rank_hi = any ? (int)pg_i64(r, 0, 3) : -1;
    pg_free(r);
    /* Ranks in order: a batch spanning forms and lists settles the forms
     * first. Ranks absent from the batch cost nothing. */
    for (int rank = rank_lo; any && rc == 0 && rank <= rank_hi; rank++) rc = copy_rank(tx, j, lo, hi, rank);
    if (rc != 0) return rc;
    pg_params c = {0};
    pg_p_str(&c, j->id);
    pg_p_i64(&c, E.lease_ms);
    rc = pg_exec(tx, "UPDATE copy_jobs j SET done = c.done, copied = c.copied, skipped = c.skipped, failed = c.failed,"
                     " lease_until = now() + $2 * interval '1 millisecond', update_time = now(), version = version + 1"
                     " FROM (SELECT count(*) FILTER (WHERE outcome <> 1) AS done, count(*) FILTER (WHERE outcome = 2) AS copied,"
                     "  count(*) FILTER (WHERE outcome = 3) AS skipped, count(*) FILTER (WHERE outcome = 4) AS failed"
                     "  FROM copy_items WHERE job_id = $1::uuid) c WHERE j.job_id = $1::uuid", &c, NULL);
    if (rc != 0) return rc;
    if ((rc = store_job_get(tx, j->id, false, j)) != 0) return rc;
    if (j->done < j->total) {
        b->outcome = BATCH_MORE;
        return 0;
    }
    /* ASSET-03: the end. */
    int state = asset_job_final_state(j->copied, j->skipped, j->failed);
    pg_params f = {0};
    pg_p_str(&f, j->id);
    pg_p_i64(&f, state);
    rc = pg_exec(tx, "UPDATE copy_jobs SET state = $2, end_time = now(), update_time = now(), version = version + 1,"
                     " lease_owner = NULL, lease_until = NULL WHERE job_id = $1::uuid", &f, NULL);
    if (rc == 0) rc = store_job_get(tx, j->id, false, j);
    if (rc == 0) rc = assets_emit_job(tx, j, true, NULL);
    if (rc == 0) b->outcome = BATCH_DONE;
    return rc;
}

/* ---- CONN-07 between batches (ASSET-03) ---- */

/* 1 allowed, 0 not, negative: cannot tell now. */
static int copy_allowed(const job_row *j) {
    rpc_client *c = app_peer("connections");
    if (c == NULL) return OM_E_UNAVAILABLE;
    Orgmesh__Connections__V1__CheckAssetCopyRequest req = ORGMESH__CONNECTIONS__V1__CHECK_ASSET_COPY_REQUEST__INIT;
    req.source_hub_id = j->source;
    req.target_hub_id = j->target;
    Orgmesh__Connections__V1__CheckAssetCopyResponse *resp = NULL;
    rpc_call_opts o = {.token = app_service_token(), .deadline_ms = 5000, .idempotent = true};
    rpc_status st;
    int rc = rpc_client_call(c, "/orgmesh.connections.v1.ConnectionsService/CheckAssetCopy", &req.base,
                             &orgmesh__connections__v1__check_asset_copy_response__descriptor,
                             (ProtobufCMessage **)&resp, &o, &st);
    if (rc != 0) {
        log_warn("copy job %s: CheckAssetCopy failed: %d %s %s", j->id, (int)st.code, st.reason, st.message);
        return OM_E_UNAVAILABLE;
    }
    int allowed = resp->allowed ? 1 : 0;
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return allowed;
}

typedef struct stop_arg {
    job_row *j;
} stop_arg;

static int not_allowed_tx(pg_conn *tx, void *arg) {
    job_row *j = ((stop_arg *)arg)->j;
    pg_params p = {0};
    pg_p_str(&p, j->id);
    pg_p_str(&p, E.owner);
    pg_res *r = NULL;
    int rc = pg_exec(tx, "SELECT state = 2 AND lease_owner = $2 FROM copy_jobs WHERE job_id = $1::uuid FOR UPDATE",
                     &p, &r);
    if (rc != 0) return rc;
    bool mine = pg_nrows(r) > 0 && pg_bool(r, 0, 0);
    pg_free(r);
    if (!mine) return 0;
    /* ASSET-03: the connection stopped allowing the copy. */
    if ((rc = store_job_stop(tx, j, 5, "COPY_NOT_ALLOWED", "asset copying no longer flows from the source to the target")) != 0)
        return rc;
    return assets_emit_job(tx, j, true, NULL);
}

/* Sleeps up to ms, or less when asked to stop. */
static void nap(int ms) {
    struct pollfd pfd = {.fd = E.wake[0], .events = POLLIN};
    poll(&pfd, 1, ms);
}

static void run_job(pg_conn *c, job_row *j) {
    while (!E.stop) {
        int allowed = copy_allowed(j);
        if (allowed < 0) { /* connections unreachable: wait; the lease may pass to another worker */
            nap(500);
            batch_arg keep = {.j = j};
            (void)keep;
            continue;
        }
        if (allowed == 0) {
            stop_arg a = {j};
            if (pg_tx(c, not_allowed_tx, &a) == 0)
                log_info("copy job %s stopped: COPY_NOT_ALLOWED (ASSET-03)", j->id);
            return;
        }
        batch_arg b = {.j = j};
        int rc = pg_tx(c, batch_tx, &b);
        if (rc != 0) {
            log_warn("copy job %s: batch failed (%d, SQL %s: %s); retrying", j->id, rc, pg_sqlstate(c), pg_errmsg(c));
            nap(500);
            continue;
        }
        if (b.outcome == BATCH_DONE) {
            log_info("copy job %s finished: state %d, %d copied, %d skipped, %d failed", j->id, j->state, j->copied,
                     j->skipped, j->failed);
            return;
        }
        if (b.outcome == BATCH_LOST) return;
        if (E.delay_ms > 0) nap(E.delay_ms);
    }
}

static void *worker_main(void *arg) {
    (void)arg;
    pg_conn *c = NULL;
    while (!E.stop && pg_connect(&c) != 0) nap(500);
    if (c != NULL && pg_listen(c, NOTIFY_CHANNEL) != 0) log_warn("copy workers: LISTEN failed; polling");
    while (!E.stop && c != NULL) {
        claim_arg a;
        int rc = pg_tx(c, claim_tx, &a);
        if (rc == 0 && a.found) {
            run_job(c, &a.j);
            continue;
        }
        if (rc != 0) nap(500);
        else pg_wait_notify(c, E.poll_ms, E.wake[0]);
    }
    if (c != NULL) {
        /* A clean stop hands our jobs back at once (no lease to wait out). */
        pg_params p = {0};
        pg_p_str(&p, E.owner);
        (void)pg_exec(c, "UPDATE copy_jobs SET lease_until = NULL, lease_owner = NULL WHERE lease_owner = $1", &p, NULL);
        pg_close(c);
    }
    return NULL;
}

int assets_jobs_start(void) {
    E.workers = (int)cfg_int("ORGMESH_ASSETS_WORKERS", 2, 0, MAX_WORKERS);
    E.batch = (int)cfg_int("ORGMESH_ASSETS_BATCH", 500, 1, ASSET_JOB_MAX);
    E.delay_ms = (int)cfg_int("ORGMESH_ASSETS_BATCH_DELAY_MS", 0, 0, 60000);
    E.lease_ms = (int)cfg_int("ORGMESH_ASSETS_LEASE_MS", 30000, 500, 3600000);
    E.poll_ms = (int)cfg_int("ORGMESH_ASSETS_POLL_MS", 1000, 10, 60000);
    char host[32] = "";
    gethostname(host, sizeof host - 1);
    snprintf(E.owner, sizeof E.owner, "%.31s:%d:%08x", host, (int)getpid(), (unsigned)random());
    if (pipe(E.wake) != 0) return OM_E_INTERNAL;
    E.stop = 0;
    for (int i = 0; i < E.workers; i++) {
        if (pthread_create(&E.threads[i], NULL, worker_main, NULL) != 0) return OM_E_INTERNAL;
        E.started++;
    }
    log_info("copy workers: %d, batch %d, lease %d ms", E.workers, E.batch, E.lease_ms);
    return 0;
}

void assets_jobs_stop(void) {
    E.stop = 1;
    if (E.wake[1] >= 0 && write(E.wake[1], "x", 1) < 0) { /* the workers wake within poll_ms anyway */ }
    for (int i = 0; i < E.started; i++) pthread_join(E.threads[i], NULL);
    E.started = 0;
    if (E.wake[0] >= 0) close(E.wake[0]);
    if (E.wake[1] >= 0) close(E.wake[1]);
    E.wake[0] = E.wake[1] = -1;
}
