/* assets_jobs.c — the copy engine (ASSET-02..ASSET-06): ORGMESH_ASSETS_WORKERS
 * copy rounds in flight in every replica, each round one claim and one batch
 * run on the process's worker pool (its thread's PostgreSQL connection),
 * started from the loop by a timer or a notification (common/loop.h). The
 * items of a running job are shared out in batches (a range of items of one
 * rank): a worker claims the next batch under the job row's lock and a lease
 * on the database clock (copy_batches), then copies it in ONE transaction
 * whose main statement locks the batch's pending items (FOR UPDATE SKIP
 * LOCKED), makes the copies, points their references at the copies through
 * the job's items (the source -> copy mapping), records each asset's result
 * and the batch's counts. So batches of one job run side by side on several
 * workers and replicas; a crash loses at most the batches under way, whose
 * items are claimed again when their lease runs out; the item locks and the
 * unique index on assets (job_id, source_asset_id) make a second copy
 * impossible. Before each batch the connection is asked again (CONN-07);
 * the job's state is read in the batch's statement (cancellation).
 *
 * A lease's owner names the replica (a stable identity: ORGMESH_REPLICA_ID,
 * else "<hostname>:<listen port>", the same across restarts of one pod or
 * process slot and different for replicas side by side) and the process
 * incarnation: "<replica>/<pid>.<random>/<worker>". A replica that starts
 * frees the leases a previous incarnation of itself left (it crashed: no
 * one else can be using them), so its jobs resume at once instead of after
 * the lease; leases of other replicas are left to run out (ASSET-06). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "om_time.h"
#include "app.h"
#include "assets.h"
#include "audit.h"
#include "config.h"
#include "log.h"
#include "metrics.h"
#include "loop.h"
#include "om_err.h"
#include "orgmesh/connections/v1/connections.pb-c.h"

#define NOTIFY_CHANNEL "assets_jobs"
#define MAX_WORKERS 16

static struct {
    int workers, batch, delay_ms, lease_ms, poll_ms;
    int started;      /* slots with a timer */
    bool stop;        /* loop thread */
    char replica[96]; /* stable identity of this replica */
    char owner[128];  /* "<replica>/<pid>.<random>": this incarnation; a slot's is "<owner>/<n>" */
} E;

/* What a round asks for next (its return value). */
enum { ROUND_AGAIN, ROUND_DELAY, ROUND_EMPTY, ROUND_FAILED, ROUND_IDLE };

/* One "worker": a slot of which at most one round is in flight at a time.
 * The loop thread owns it between rounds, the round's worker during one. */
typedef struct worker {
    char owner[144]; /* "<replica>/<pid>.<random>/<n>": recorded on the batches it claims */
    uv_timer_t timer;
    bool busy;       /* a round is queued or running */
    bool idle;       /* waiting for a notification (or poll_ms) */
    bool reclaimed;  /* the previous incarnation's leases were freed */
    char cur[ASSET_ID_LEN]; /* the job of our last batch */
} worker;
static worker W[MAX_WORKERS];

/* ---- protobuf views ---- */

void assets_history_resource(uint64_t hub, const char *kind, const char *id, char *buf, size_t cap) {
    snprintf(buf, cap, "accounts/%" PRIu64 "/%s/%s", hub, kind, id);
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
    om_pb_timestamp(&v->ct, j->create_us);
    p->create_time = &v->ct;
    om_pb_timestamp(&v->ut, j->update_us);
    p->update_time = &v->ut;
    if (j->start_us) {
        om_pb_timestamp(&v->st, j->start_us);
        p->start_time = &v->st;
    }
    if (j->end_us) {
        om_pb_timestamp(&v->et, j->end_us);
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
        char resource[128];
        assets_history_resource(j->target, "copy_jobs", j->id, resource, sizeof resource);
        audit_entry e = {.actor = actor, .rule = actor ? NULL : "ASSET-03", .action = "copy_job.finish",
                         .resource = resource, .after = &v->pb.base,
                         .reason = j->failure_reason[0] ? j->failure_reason : NULL};
        rc = audit_record(tx, &e);
    }
    free(v);
    return rc;
}

int assets_jobs_notify(pg_conn *tx) { return pg_exec(tx, "SELECT pg_notify('" NOTIFY_CHANNEL "', '')", NULL, NULL); }

/* ---- claiming a batch (ASSET-06, SPEC 9) ---- */

typedef struct claim_arg {
    const worker *w;
    const char *want;  /* this job only (the one whose batch we just did), or NULL: any open job */
    job_row j;
    bool found;        /* a batch was claimed: batch_no, rank, lo..hi */
    int batch_no, rank;
    int64_t lo, hi;
} claim_arg;

/* Copy job progress (issue 19): items settled and copied by batches, jobs finished. */
static metrics_counter *m_items, *m_copied, *m_finished;

/* ASSET-03: the end of a job whose items are all settled: the counters
 * recounted from the items (the results are the truth), the final state,
 * CopyJobFinished. Under the job row's lock. */
static int finish_job(pg_conn *tx, job_row *j) {
    pg_params p = {0};
    pg_p_str(&p, j->id);
    pg_res *r = NULL;
    int rc = pg_exec(tx, "SELECT count(*) FILTER (WHERE outcome = " OM_SQL(ASSET_SQL_COPIED) "),"
                         " count(*) FILTER (WHERE outcome = " OM_SQL(ASSET_SQL_SKIPPED) "),"
                         " count(*) FILTER (WHERE outcome = " OM_SQL(ASSET_SQL_FAILED) ")"
                         " FROM copy_items WHERE job_id = $1::uuid", &p, &r);
    if (rc != 0) return rc;
    int copied = (int)pg_i64(r, 0, 0), skipped = (int)pg_i64(r, 0, 1), failed = (int)pg_i64(r, 0, 2);
    pg_free(r);
    pg_params f = {0};
    pg_args(&f, j->id, asset_job_final_state(copied, skipped, failed), copied, skipped, failed);
    rc = pg_exec(tx, "UPDATE copy_jobs SET state = $2, done = total, copied = $3, skipped = $4, failed = $5,"
                     " end_time = now(), update_time = now(), version = version + 1, lease_owner = NULL,"
                     " lease_until = NULL WHERE job_id = $1::uuid", &f, NULL);
    if (rc == 0) rc = store_job_get(tx, j->id, false, j);
    if (rc == 0) rc = assets_emit_job(tx, j, true, NULL);
    if (rc == 0) metrics_counter_add(m_finished, 1); /* counted at the statement; rare rollbacks count too */
    if (rc == 0)
        log_info("copy job %s finished: state %d, %d copied, %d skipped, %d failed", j->id, j->state, j->copied,
                 j->skipped, j->failed);
    return rc;
}

/* One job, its row locked: claims the next batch, or ends the job when no
 * item is pending. Nothing is claimed while another worker holds the rest,
 * or holds items of a lower rank (their copies must exist first, ASSET-04). */
static int claim_in_job(pg_conn *tx, claim_arg *a, const char *id, int state) {
    pg_params p = {0};
    pg_args(&p, id, E.batch);
    pg_res *r = NULL;
    /* act: the ranges leased to live workers; free: the first pending items
     * outside them; run: the free items of the first one's rank, up to the
     * next leased range. The batch is the first E.batch of the run, or, near
     * the end of a rank, half of what is left (at least half a batch), so
     * that two workers finish a rank together rather than one after the
     * other (the next rank waits for it, ASSET-04). */
    int rc = pg_exec(tx, "WITH act AS MATERIALIZED (SELECT seq_lo, seq_hi FROM copy_batches WHERE job_id = $1::uuid"
                         "   AND finish_time IS NULL AND lease_until > now()),"
                         " free AS MATERIALIZED (SELECT i.seq, i.rank FROM copy_items i WHERE i.job_id = $1::uuid"
                         "   AND i.outcome = " OM_SQL(ASSET_SQL_PENDING)
                         " AND NOT EXISTS (SELECT 1 FROM act WHERE i.seq BETWEEN act.seq_lo AND act.seq_hi)"
                         "   ORDER BY i.seq LIMIT 2 * $2::int),"
                         " head AS MATERIALIZED (SELECT seq, rank, coalesce((SELECT min(act.seq_lo) FROM act"
                         "   WHERE act.seq_lo > free.seq), 2147483647) AS stop FROM free ORDER BY seq LIMIT 1),"
                         " run AS MATERIALIZED (SELECT free.seq, row_number() OVER (ORDER BY free.seq) AS k,"
                         "   count(*) OVER () AS n FROM free JOIN head ON free.rank = head.rank AND free.seq < head.stop)"
                         " SELECT (SELECT rank FROM copy_items WHERE job_id = $1::uuid"
                         "   AND outcome = " OM_SQL(ASSET_SQL_PENDING) " ORDER BY seq LIMIT 1),"
                         "  head.seq, head.rank, (SELECT max(run.seq) FROM run WHERE run.k <= CASE WHEN run.n >= 2 * $2::int"
                         "   THEN $2::int WHEN run.n <= $2::int / 2 THEN run.n ELSE (run.n + 1) / 2 END)"
                         " FROM (SELECT 1) one LEFT JOIN head ON true", &p, &r);
    if (rc != 0) return rc;
    bool pending = !pg_isnull(r, 0, 0);
    int min_rank = pending ? (int)pg_i64(r, 0, 0) : 0;
    bool any = !pg_isnull(r, 0, 1) && !pg_isnull(r, 0, 3);
    int64_t lo = any ? pg_i64(r, 0, 1) : 0, hi = any ? pg_i64(r, 0, 3) : 0;
    int rank = any ? (int)pg_i64(r, 0, 2) : 0;
    pg_free(r);
    if (!pending) { /* every item settled */
        if ((rc = store_job_get(tx, id, false, &a->j)) != 0) return rc;
        return finish_job(tx, &a->j);
    }
    if (!any || rank != min_rank) return 0;
    /* The batch, and on the job: the lease (so that a replica of the
     * previous version, which leases whole jobs, leaves it alone), RUNNING,
     * and the counts of the batches finished since the last claim. */
    pg_params b = {0};
    pg_args(&b, id, rank, lo, hi, a->w->owner, E.lease_ms);
    rc = pg_exec(tx, "WITH b AS (INSERT INTO copy_batches (job_id, batch_no, rank, seq_lo, seq_hi, owner, lease_until)"
                     "   SELECT $1::uuid, coalesce(max(batch_no), 0) + 1, $2, $3, $4, $5,"
                     "   now() + $6 * interval '1 millisecond' FROM copy_batches WHERE job_id = $1::uuid RETURNING batch_no),"
                     " f AS (UPDATE copy_batches SET folded = true WHERE job_id = $1::uuid AND finish_time IS NOT NULL"
                     "   AND NOT folded RETURNING copied, skipped, failed),"
                     " s AS (SELECT coalesce(sum(copied), 0) AS c, coalesce(sum(skipped), 0) AS k,"
                     "   coalesce(sum(failed), 0) AS x FROM f)"
                     " UPDATE copy_jobs j SET state = " OM_SQL(ASSET_SQL_RUNNING)
                     ", start_time = coalesce(j.start_time, now()),"
                     "  lease_owner = $5, lease_until = now() + $6 * interval '1 millisecond', update_time = now(),"
                     "  version = j.version + CASE WHEN j.state = " OM_SQL(ASSET_SQL_QUEUED) " THEN 1 ELSE 0 END,"
                     "  done = j.done + s.c + s.k + s.x, copied = j.copied + s.c, skipped = j.skipped + s.k, failed = j.failed + s.x"
                     " FROM s WHERE j.job_id = $1::uuid RETURNING (SELECT batch_no FROM b)", &b, &r);
    if (rc != 0) return rc;
    a->batch_no = (int)pg_i64(r, 0, 0);
    pg_free(r);
    if ((rc = store_job_get(tx, id, false, &a->j)) != 0) return rc;
    a->found = true;
    a->rank = rank;
    a->lo = lo;
    a->hi = hi;
    if (state == JOB_QUEUED) { /* emitted once: not when the job is resumed after a crash (ASSET-06) */
        log_info("copy job %s started: %d asset(s) %" PRIu64 " -> %" PRIu64, id, a->j.total, a->j.source, a->j.target);
        return assets_emit_job(tx, &a->j, false, NULL);
    }
    return 0;
}

/* Claims of one job take turns on its row (a claim is a few short
 * statements); claims of other jobs, and the batches themselves, do not
 * wait for it. */
static int claim_one(pg_conn *tx, claim_arg *a, const char *id) {
    pg_params p = {0};
    pg_p_str(&p, id);
    pg_res *r = NULL;
    int rc = pg_exec(tx, "SELECT job_id::text, state FROM copy_jobs WHERE job_id = $1::uuid"
                         " AND state IN (" SQL_JOB_OPEN ") FOR UPDATE",
                     &p, &r);
    if (rc == 0 && pg_nrows(r) > 0) rc = claim_in_job(tx, a, pg_str(r, 0, 0), (int)pg_i64(r, 0, 1));
    pg_free(r);
    return rc;
}

static int claim_tx(pg_conn *tx, void *arg) {
    claim_arg *a = arg;
    a->found = false;
    if (a->want) return claim_one(tx, a, a->want);
    /* The open jobs, oldest first; a job leased whole by a replica of the
     * previous version (no batches) is left to it until its lease runs out. */
    pg_res *ids = NULL;
    int rc = pg_exec(tx, "SELECT job_id::text FROM copy_jobs j WHERE state IN (" SQL_JOB_OPEN ")"
                         " AND (lease_until IS NULL OR lease_until < now()"
                         "   OR EXISTS (SELECT 1 FROM copy_batches b WHERE b.job_id = j.job_id))"
                         " ORDER BY create_time LIMIT 8", NULL, &ids);
    for (int k = 0; rc == 0 && !a->found && k < pg_nrows(ids); k++) rc = claim_one(tx, a, pg_str(ids, k, 0));
    pg_free(ids);
    return rc;
}

/* ---- one batch (ASSET-04, ASSET-05) ---- */

typedef struct batch_arg {
    const claim_arg *c;
    int items, copied; /* of the main statement's last run */
    int taken;         /* items its first run locked */
} batch_arg;

/* One statement of the batch: $1 job, $2..$3 seq range, $4 rank, $5 target, $6 batch_no. */
static int exec_batch(pg_conn *tx, const batch_arg *b, const char *sql, pg_res **out) {
    const claim_arg *c = b->c;
    pg_params p = {0};
    pg_args(&p, c->j.id, c->lo, c->hi, c->rank, c->j.target, c->batch_no);
    return pg_exec(tx, sql, &p, out);
}

/* The batch's pending items this transaction holds or can take now; items
 * another transaction holds (a stop under way, a worker whose lease ran
 * out) are theirs. */
#define MINE                                                                                              \
    "WITH mine AS (SELECT i.seq FROM copy_items i WHERE i.job_id = $1::uuid AND i.seq BETWEEN $2 AND $3" \
    " AND i.rank = $4 AND i.outcome = " OM_SQL(ASSET_SQL_PENDING) " FOR UPDATE SKIP LOCKED) "
#define OF_MINE " i.job_id = $1::uuid AND i.seq IN (SELECT seq FROM mine) "
/* Adds the rows an UPDATE ... RETURNING 1 named u touched to the batch's
 * counter `col`. */
#define COUNT_INTO(col)                                                                                   \
    " UPDATE copy_batches SET " col " = " col " + (SELECT count(*) FROM u) WHERE job_id = $1::uuid AND batch_no = $6"

/* The main statement: copies (ASSET-05 provenance) of the batch's pending
 * items whose references all lead to a copy, their references pointed at
 * the copies through the items (the source -> copy mapping, ASSET-04), the
 * results, the batch's count and end, a wake-up for idle workers. ON
 * CONFLICT DO NOTHING leaves an item pending when its name is taken in the
 * target, or the job already copied it; the rest of the rank's rules run
 * only for what is left (settle_rest). */
static int copy_main(pg_conn *tx, batch_arg *b) {
    pg_res *r = NULL;
    /* Every join goes from a CTE to a table through an index, so a plan
     * made while the job's items are not analyzed yet (estimated at one
     * row) stays linear in the batch. */
    int rc = exec_batch(tx, b,
                        "WITH it AS (SELECT i.seq, i.source_asset_id, coalesce(i.new_name, i.source_name) AS name"
                        "   FROM copy_items i WHERE i.job_id = $1::uuid AND i.seq BETWEEN $2 AND $3 AND i.rank = $4"
                        "   AND i.outcome = " OM_SQL(ASSET_SQL_PENDING)
                        " AND EXISTS (SELECT 1 FROM copy_jobs j WHERE j.job_id = $1::uuid"
                        "   AND j.state = " OM_SQL(ASSET_SQL_RUNNING) ")"
                        "   FOR UPDATE OF i SKIP LOCKED),"
                        " ins AS (INSERT INTO assets (hub_id, type, name, body, source_hub_id, source_asset_id, job_id)"
                        "   SELECT $5, a.type, it.name, a.body, a.hub_id, a.asset_id, $1::uuid FROM it"
                        "   JOIN assets a ON a.asset_id = it.source_asset_id"
                        "   WHERE NOT EXISTS (SELECT 1 FROM asset_refs r LEFT JOIN copy_items d ON d.job_id = $1::uuid"
                        "     AND d.source_asset_id = r.ref_id WHERE r.asset_id = a.asset_id AND d.new_asset_id IS NULL)"
                        "   ORDER BY it.seq ON CONFLICT DO NOTHING RETURNING asset_id, source_asset_id, name),"
                        " refs AS (INSERT INTO asset_refs (asset_id, pos, ref_id, ref_type)"
                        "   SELECT ins.asset_id, r.pos, d.new_asset_id, r.ref_type FROM ins"
                        "   JOIN asset_refs r ON r.asset_id = ins.source_asset_id"
                        "   JOIN copy_items d ON d.job_id = $1::uuid AND d.source_asset_id = r.ref_id),"
                        " upd AS (UPDATE copy_items i SET outcome = " OM_SQL(ASSET_SQL_COPIED)
                        ", new_asset_id = ins.asset_id, new_name = ins.name,"
                        "   finish_time = now(), batch_no = $6 FROM ins"
                        "   WHERE i.job_id = $1::uuid AND i.source_asset_id = ins.source_asset_id RETURNING 1),"
                        " bat AS (UPDATE copy_batches SET copied = copied + (SELECT count(*) FROM upd), finish_time = now(),"
                        "   lease_until = NULL WHERE job_id = $1::uuid AND batch_no = $6 RETURNING 1)"
                        " SELECT (SELECT count(*) FROM it), (SELECT count(*) FROM upd), (SELECT count(*) FROM bat),"
                        "  pg_notify('" NOTIFY_CHANNEL "', '')",
                        &r);
    if (rc != 0) return rc;
    b->items = (int)pg_i64(r, 0, 0);
    b->copied = (int)pg_i64(r, 0, 1);
    pg_free(r);
    return 0;
}

/* ASSET-04 RENAME: gives each clashing item of the batch the first free
 * " (copy)", " (copy 2)", ... name in the target. Only items left by the
 * main statement get here. */
static int rename_clashes(pg_conn *tx, const batch_arg *b) {
    pg_res *r = NULL;
    int rc = exec_batch(tx, b, MINE "SELECT i.seq, i.source_name, i.type FROM copy_items i WHERE" OF_MINE
                                    "AND $5::bigint > 0 AND $6::int > 0 AND EXISTS (SELECT 1 FROM assets t WHERE t.hub_id = $5"
                                    " AND t.type = i.type AND lower(t.name) = lower(coalesce(i.new_name, i.source_name)))"
                                    " ORDER BY i.seq", &r);
    if (rc != 0) return rc;
    const job_row *j = &b->c->j;
    for (int k = 0; rc == 0 && k < pg_nrows(r); k++) {
        const char *base = pg_str(r, k, 1);
        pg_params q = {0};
        pg_args(&q, j->target, pg_i64(r, k, 2), base);
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
        pg_args(&u, j->id, pg_i64(r, k, 0), name);
        rc = pg_exec(tx, "UPDATE copy_items SET new_name = $3 WHERE job_id = $1::uuid AND seq = $2", &u, NULL);
    }
    pg_free(r);
    return rc;
}

/* What the main statement left pending (rare): a source asset deleted since
 * the job was accepted (NOT_FOUND); a reference with no copy
 * (MISSING_DEPENDENCY, ASSET-04); a copy this job already made, recorded
 * instead of made again (ASSET-06); name conflicts by the job's policy
 * (ASSET-04), after which the main statement runs again. */
static int settle_rest(pg_conn *tx, batch_arg *b) {
    int rc = exec_batch(tx, b, MINE ", u AS (UPDATE copy_items i SET outcome = " OM_SQL(ASSET_SQL_FAILED)
                               ", error_reason = 'NOT_FOUND',"
                               " error_message = 'the source asset no longer exists', finish_time = now(), batch_no = $6"
                               " WHERE" OF_MINE "AND $5::bigint > 0 AND $4::int >= 0 AND NOT EXISTS"
                               " (SELECT 1 FROM assets a WHERE a.asset_id = i.source_asset_id) RETURNING 1)"
                               COUNT_INTO("failed"), NULL);
    if (rc == 0)
        rc = exec_batch(tx, b, MINE ", u AS (UPDATE copy_items i SET outcome = " OM_SQL(ASSET_SQL_FAILED)
                               ", error_reason = 'MISSING_DEPENDENCY',"
                               " error_message = 'a referenced asset is not copied', finish_time = now(), batch_no = $6"
                               " WHERE" OF_MINE "AND $5::bigint > 0 AND EXISTS (SELECT 1 FROM asset_refs r"
                               " LEFT JOIN copy_items d ON d.job_id = i.job_id AND d.source_asset_id = r.ref_id"
                               " WHERE r.asset_id = i.source_asset_id AND d.new_asset_id IS NULL) RETURNING 1)"
                               COUNT_INTO("failed"), NULL);
    if (rc == 0)
        rc = exec_batch(tx, b, MINE ", u AS (UPDATE copy_items i SET outcome = " OM_SQL(ASSET_SQL_COPIED)
                               ", new_asset_id = a.asset_id,"
                               " new_name = a.name, finish_time = now(), batch_no = $6 FROM assets a WHERE" OF_MINE
                               "AND $5::bigint > 0 AND a.job_id = $1::uuid AND a.source_asset_id = i.source_asset_id"
                               " RETURNING 1)" COUNT_INTO("copied"), NULL);
    const int policy = b->c->j.policy;
    for (int round = 0; rc == 0 && round < 4; round++) {
        if (policy == POLICY_SKIP)
            rc = exec_batch(tx, b, MINE ", u AS (UPDATE copy_items i SET outcome = " OM_SQL(ASSET_SQL_SKIPPED)
                                   ", new_asset_id = t.asset_id,"
                                   " new_name = t.name, finish_time = now(), batch_no = $6 FROM assets t WHERE" OF_MINE
                                   "AND t.hub_id = $5 AND t.type = i.type"
                                   " AND lower(t.name) = lower(coalesce(i.new_name, i.source_name)) RETURNING 1)"
                                   COUNT_INTO("skipped"), NULL);
        else if (policy == POLICY_FAIL)
            rc = exec_batch(tx, b, MINE ", u AS (UPDATE copy_items i SET outcome = " OM_SQL(ASSET_SQL_FAILED)
                                   ", error_reason = 'NAME_CONFLICT',"
                                   " error_message = 'an asset with this name already exists in the target',"
                                   " finish_time = now(), batch_no = $6 FROM assets t WHERE" OF_MINE
                                   "AND t.hub_id = $5 AND t.type = i.type"
                                   " AND lower(t.name) = lower(coalesce(i.new_name, i.source_name)) RETURNING 1)"
                                   COUNT_INTO("failed"), NULL);
        else
            rc = rename_clashes(tx, b);
        if (rc == 0) rc = copy_main(tx, b);
        if (rc != 0 || b->copied == b->items) return rc;
    }
    if (rc != 0) return rc;
    return exec_batch(tx, b, MINE ", u AS (UPDATE copy_items i SET outcome = " OM_SQL(ASSET_SQL_FAILED)
                             ", error_reason = 'NAME_CONFLICT',"
                             " error_message = 'no free name was found', finish_time = now(), batch_no = $6"
                             " WHERE" OF_MINE "AND $5::bigint > 0 AND $4::int >= 0 RETURNING 1)" COUNT_INTO("failed"), NULL);
}

static int batch_tx(pg_conn *tx, void *arg) {
    batch_arg *b = arg;
    int rc = copy_main(tx, b);
    b->taken = b->items;
    if (rc == 0 && b->copied < b->items) rc = settle_rest(tx, b);
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

static int not_allowed_tx(pg_conn *tx, void *arg) {
    job_row *j = arg;
    int rc = store_job_get(tx, j->id, true, j);
    if (rc != 0 || j->state != JOB_RUNNING) return rc; /* ended meanwhile */
    /* ASSET-03: the connection stopped allowing the copy. Batches under way
     * on other workers commit first (their items are locked). */
    if ((rc = store_job_stop(tx, j, JOB_FAILED, "COPY_NOT_ALLOWED", "asset copying no longer flows from the source to the target")) != 0)
        return rc;
    return assets_emit_job(tx, j, true, NULL);
}

/* Gives a claimed batch back at once (not waiting out its lease). */
static void release_batch(pg_conn *c, const claim_arg *a) {
    pg_params p = {0};
    pg_args(&p, a->j.id, a->batch_no);
    (void)pg_exec(c, "UPDATE copy_batches SET lease_until = NULL WHERE job_id = $1::uuid AND batch_no = $2"
                     " AND finish_time IS NULL", &p, NULL);
}

#define BATCH_EMPTY 1

/* 0 when the batch ran (or the job was stopped), BATCH_EMPTY when it found
 * nothing to copy, else a failure; the worker pauses after the last two. */
static int run_batch(pg_conn *c, claim_arg *a) {
    int allowed = copy_allowed(&a->j);
    if (allowed < 0) { /* connections unreachable: hand the batch back and wait */
        release_batch(c, a);
        return OM_E_UNAVAILABLE;
    }
    if (allowed == 0) {
        release_batch(c, a);
        job_row j = a->j;
        if (pg_tx(c, not_allowed_tx, &j) == 0 && j.state == JOB_FAILED)
            log_info("copy job %s stopped: COPY_NOT_ALLOWED (ASSET-03)", j.id);
        return 0;
    }
    batch_arg b = {.c = a};
    int rc = pg_tx(c, batch_tx, &b);
    if (rc != 0) {
        log_warn("copy job %s: batch %d failed (%d, SQL %s: %s); handed back", a->j.id, a->batch_no, rc,
                 pg_sqlstate(c), pg_errmsg(c));
        release_batch(c, a);
        return rc;
    }
    metrics_counter_add(m_items, b.taken);
    metrics_counter_add(m_copied, b.copied);
    log_debug("copy job %s: batch %d (seq %" PRId64 "..%" PRId64 ", rank %d): %d item(s)", a->j.id, a->batch_no, a->lo,
              a->hi, a->rank, b.taken);
    /* Nothing to take: the job ended, or another transaction holds these
     * items (a stop under way, or a worker slower than its lease, whose
     * range was claimed again). Pause rather than claim them once more. */
    return b.taken == 0 ? BATCH_EMPTY : 0;
}

/* Leases of a previous incarnation of this replica: it died holding them
 * (a clean stop hands them back), so free them now. Idempotent; every slot
 * does it once, before its first claim. */
static int reclaim(pg_conn *c) {
    pg_params p = {0};
    pg_args(&p, E.replica, E.owner);
    pg_res *r = NULL;
    int rc = pg_exec(c, "UPDATE copy_batches SET lease_until = NULL WHERE finish_time IS NULL"
                        " AND lease_until IS NOT NULL AND starts_with(owner, $1 || '/')"
                        " AND NOT starts_with(owner, $2 || '/') RETURNING job_id::text, batch_no", &p, &r);
    if (rc == 0) {
        if (pg_nrows(r) > 0)
            log_info("copy workers: freed %d batch lease(s) of a previous incarnation of %s", pg_nrows(r), E.replica);
        pg_free(r);
    }
    return rc;
}

/* A clean stop hands our claimed batches back at once (no lease to wait out). */
static void hand_back(pg_conn *c, const worker *w) {
    pg_params p = {0};
    pg_p_str(&p, w->owner);
    (void)pg_exec(c, "UPDATE copy_batches SET lease_until = NULL WHERE owner = $1 AND finish_time IS NULL", &p, NULL);
}

/* One round, on a worker of the pool: claim a batch and copy it. */
static int round_work(void *arg) {
    worker *w = arg;
    if (loop_stopping()) return ROUND_IDLE;
    pg_conn *c = pg_local();
    if (c == NULL) return ROUND_FAILED;
    if (!w->reclaimed) {
        if (reclaim(c) != 0) return ROUND_FAILED;
        w->reclaimed = true;
    }
    claim_arg a = {.w = w, .want = w->cur[0] ? w->cur : NULL};
    int rc = pg_tx(c, claim_tx, &a);
    int next;
    if (rc == 0 && a.found) {
        snprintf(w->cur, sizeof w->cur, "%s", a.j.id);
        rc = run_batch(c, &a);
        next = rc == BATCH_EMPTY ? ROUND_EMPTY : rc != 0 ? ROUND_FAILED : E.delay_ms > 0 ? ROUND_DELAY : ROUND_AGAIN;
    } else if (rc == 0 && w->cur[0]) { /* nothing more of that job for us now: any job */
        w->cur[0] = '\0';
        next = ROUND_AGAIN;
    } else {
        w->cur[0] = '\0';
        next = rc != 0 ? ROUND_FAILED : ROUND_IDLE;
    }
    if (loop_stopping()) hand_back(c, w);
    return next;
}

static void round_start(worker *w);

static void on_timer(uv_timer_t *t) {
    round_start(t->data);
}

static void round_done(void *arg, int next) {
    worker *w = arg;
    w->busy = false;
    if (E.stop || loop_stopping()) return;
    int ms;
    switch (next) {
    case ROUND_AGAIN: round_start(w); return;
    case ROUND_DELAY: ms = E.delay_ms; break;
    case ROUND_EMPTY: ms = E.poll_ms < 200 ? E.poll_ms : 200; break;
    case ROUND_IDLE: ms = E.poll_ms; w->idle = true; break; /* or the next notification */
    default: ms = 500; break; /* failed, or PostgreSQL unreachable */
    }
    uv_timer_start(&w->timer, on_timer, (uint64_t)ms, 0);
}

static void round_start(worker *w) {
    if (w->busy || E.stop || loop_stopping()) return;
    uv_timer_stop(&w->timer);
    w->idle = false;
    w->busy = true;
    if (loop_work(round_work, round_done, w) != 0) {
        w->busy = false;
        uv_timer_start(&w->timer, on_timer, 500, 0);
    }
}

/* A copy job was queued or resumed (assets_jobs_notify), or the LISTEN
 * connection came back (payload NULL: rescan): idle slots start a round. */
static void on_notify(const char *channel, const char *payload, void *arg) {
    (void)channel;
    (void)payload;
    (void)arg;
    for (int i = 0; i < E.started; i++)
        if (W[i].idle) round_start(&W[i]);
}

/* The drain: no new rounds; rounds in flight finish on the pool and hand
 * their batches back. */
static void jobs_stop_hook(void *arg) {
    (void)arg;
    E.stop = true;
    for (int i = 0; i < E.started; i++) uv_close((uv_handle_t *)&W[i].timer, NULL);
    E.started = 0;
}

int assets_jobs_start(void) {
    m_items = metrics_counter_register("orgmesh_assets_copy_items_processed_total",
                                       "copy job items settled by batches (copied, skipped or failed)");
    m_copied = metrics_counter_register("orgmesh_assets_copy_items_copied_total", "copy job items copied");
    m_finished = metrics_counter_register("orgmesh_assets_copy_jobs_finished_total", "copy jobs that ended");
    E.workers = (int)cfg_int("ORGMESH_ASSETS_WORKERS", 2, 0, MAX_WORKERS);
    E.batch = (int)cfg_int("ORGMESH_ASSETS_BATCH", 1000, 1, ASSET_JOB_MAX);
    E.delay_ms = (int)cfg_int("ORGMESH_ASSETS_BATCH_DELAY_MS", 0, 0, 60000);
    E.lease_ms = (int)cfg_int("ORGMESH_ASSETS_LEASE_MS", 30000, 500, 3600000);
    E.poll_ms = (int)cfg_int("ORGMESH_ASSETS_POLL_MS", 1000, 10, 60000);
    const char *id = cfg_str("ORGMESH_REPLICA_ID", "");
    if (id[0] != '\0') {
        snprintf(E.replica, sizeof E.replica, "%.80s", id);
    } else {
        char host[65] = "";
        gethostname(host, sizeof host - 1);
        const char *listen = cfg_str("ORGMESH_LISTEN", "");
        const char *port = strrchr(listen, ':');
        snprintf(E.replica, sizeof E.replica, "%.64s:%.8s", host, port ? port + 1 : "default");
    }
    for (char *ch = E.replica; *ch; ch++)
        if (*ch == '/' || *ch < 0x21 || *ch > 0x7e) *ch = '_'; /* '/' separates the parts */
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    snprintf(E.owner, sizeof E.owner, "%s/%d.%08x", E.replica, (int)getpid(),
             (unsigned)(random() ^ (unsigned long)now.tv_nsec));
    E.stop = false;
    if (E.workers > 0) {
        int rc = loop_on_stop(jobs_stop_hook, NULL);
        if (rc != 0) return rc;
    }
    for (int i = 0; i < E.workers; i++) {
        worker *w = &W[i];
        memset(w, 0, sizeof *w);
        snprintf(w->owner, sizeof w->owner, "%s/%d", E.owner, i + 1);
        if (uv_timer_init(loop_get(), &w->timer) != 0) return OM_E_INTERNAL;
        w->timer.data = w;
        E.started++;
        round_start(w);
    }
    if (E.workers > 0 && loop_listen(NOTIFY_CHANNEL, on_notify, NULL) != 0)
        log_warn("copy workers: LISTEN failed; polling every %d ms", E.poll_ms);
    log_info("copy workers: %d, batch %d, lease %d ms, owner %s", E.workers, E.batch, E.lease_ms, E.owner);
    return 0;
}

/* The rounds stop in the loop's drain (jobs_stop_hook). */
void assets_jobs_stop(void) {}
