/* assets.h — what the pieces of the assets service share: stored assets
 * and jobs as plain structs (assets_store.c), the handlers' service table
 * (assets_rpc.c), the copy engine (assets_jobs.c) and the accounts events
 * consumer that keeps the local copy of memberships (SPEC 2). */
#ifndef ASSETS_H
#define ASSETS_H

#include <stdbool.h>
#include <stdint.h>

#include "assets_rules.h"
#include "evt.h"
#include "history.h"
#include "om_sql.h"
#include "orgmesh/assets/v1/assets.pb-c.h"
#include "orgmesh/assets/v1/events.pb-c.h"
#include "pg.h"
#include "rpc.h"

#define ASSET_ID_LEN 37
#define ASSET_NAME_BUF 1100

/* Role bits of the local membership copy (bit = Role value - 1). */
#define ROLE_BIT_SUPER_ADMIN (1u << 0)
#define ROLE_BIT_MARKETING_ACCESS (1u << 3)

typedef struct asset_ref {
    char id[ASSET_ID_LEN];
    int type;
} asset_ref;

typedef struct asset_row {
    char id[ASSET_ID_LEN];
    uint64_t hub;
    int type;
    char name[ASSET_NAME_BUF];
    char *body;            /* malloc'd; asset_row_clear frees it */
    asset_ref *refs;       /* malloc'd */
    int n_refs;
    uint64_t src_hub;      /* ASSET-05, 0 when not a copy */
    char src_id[ASSET_ID_LEN];
    char job_id[ASSET_ID_LEN];
    int64_t version, create_us, update_us;
} asset_row;

void asset_row_clear(asset_row *r);

/* ---- assets (assets_store.c) ---- */
int store_asset_get(pg_conn *c, const char *id, bool for_update, asset_row *out);
/* Inserts r (id, version and times filled in). OM_E_NAME_CONFLICT when the
 * account already has an asset of that type and name. */
int store_asset_insert(pg_conn *tx, asset_row *r);
int store_asset_update(pg_conn *tx, asset_row *r, bool refs_changed);
/* OM_E_ASSET_IN_USE while another asset references it. */
int store_asset_delete(pg_conn *tx, const char *id);
/* ASSET-01: each reference names an asset of `hub` of the given type. On
 * failure *bad is the index of the first bad reference and the code says
 * why (OM_E_NOT_FOUND: no such asset in this account, OM_E_INVALID_ARGUMENT:
 * wrong type). */
int store_refs_check(pg_conn *tx, uint64_t hub, const asset_ref *refs, int n, int *bad);
/* One page ordered by (type, lower(name)) after the cursor (type, lower
 * name; cursor_type 0 = from the start). rows malloc'd, with refs. */
int store_asset_list(pg_conn *c, uint64_t hub, int type, const char *contains, int cursor_type,
                     const char *cursor_name, int limit, asset_row **rows, int *n);

/* ---- memberships: the local copy is common/copies.h's (SPEC 2) ---- */

/* ---- jobs (assets_jobs.c) ---- */

/* A copy job's state: the values of CopyJobState (assets.proto), also the
 * values stored in copy_jobs.state. */
typedef enum job_state {
    JOB_QUEUED = 1,
    JOB_RUNNING = 2,
    JOB_SUCCEEDED = 3,
    JOB_PARTIALLY_SUCCEEDED = 4,
    JOB_FAILED = 5,
    JOB_CANCELLED = 6,
} job_state;

/* A copy item's outcome: the values of CopyOutcome, also copy_items.outcome. */
typedef enum item_outcome {
    ITEM_PENDING = 1,
    ITEM_COPIED = 2,
    ITEM_SKIPPED = 3,
    ITEM_FAILED = 4,
    ITEM_CANCELLED = 5,
} item_outcome;

/* The same values in SQL text (om_sql.h), checked against both enums and
 * against CopyJobState/CopyOutcome of assets.proto. */
#define ASSET_SQL_QUEUED 1
#define ASSET_SQL_RUNNING 2
#define ASSET_SQL_PENDING 1
#define ASSET_SQL_COPIED 2
#define ASSET_SQL_SKIPPED 3
#define ASSET_SQL_FAILED 4
#define ASSET_SQL_CANCELLED 5
_Static_assert(ASSET_SQL_QUEUED == JOB_QUEUED && ASSET_SQL_RUNNING == JOB_RUNNING &&
                   (int)JOB_QUEUED == (int)ORGMESH__ASSETS__V1__COPY_JOB_STATE__COPY_JOB_STATE_QUEUED &&
                   (int)JOB_RUNNING == (int)ORGMESH__ASSETS__V1__COPY_JOB_STATE__COPY_JOB_STATE_RUNNING &&
                   (int)JOB_FAILED == (int)ORGMESH__ASSETS__V1__COPY_JOB_STATE__COPY_JOB_STATE_FAILED &&
                   (int)JOB_CANCELLED == (int)ORGMESH__ASSETS__V1__COPY_JOB_STATE__COPY_JOB_STATE_CANCELLED,
               "job_state, ASSET_SQL job states and CopyJobState agree");
_Static_assert(ASSET_SQL_PENDING == ITEM_PENDING && ASSET_SQL_COPIED == ITEM_COPIED &&
                   ASSET_SQL_SKIPPED == ITEM_SKIPPED && ASSET_SQL_FAILED == ITEM_FAILED &&
                   ASSET_SQL_CANCELLED == ITEM_CANCELLED &&
                   (int)ITEM_PENDING == (int)ORGMESH__ASSETS__V1__COPY_OUTCOME__COPY_OUTCOME_PENDING &&
                   (int)ITEM_COPIED == (int)ORGMESH__ASSETS__V1__COPY_OUTCOME__COPY_OUTCOME_COPIED &&
                   (int)ITEM_SKIPPED == (int)ORGMESH__ASSETS__V1__COPY_OUTCOME__COPY_OUTCOME_SKIPPED &&
                   (int)ITEM_FAILED == (int)ORGMESH__ASSETS__V1__COPY_OUTCOME__COPY_OUTCOME_FAILED &&
                   (int)ITEM_CANCELLED == (int)ORGMESH__ASSETS__V1__COPY_OUTCOME__COPY_OUTCOME_CANCELLED,
               "item_outcome, ASSET_SQL outcomes and CopyOutcome agree");
/* Open jobs: the predicate of the partial index copy_jobs_open. */
#define SQL_JOB_OPEN OM_SQL(ASSET_SQL_QUEUED) ", " OM_SQL(ASSET_SQL_RUNNING)

typedef struct job_row {
    char id[ASSET_ID_LEN];
    uint64_t source, target;
    bool include_deps;
    int policy, state;
    int total, done, copied, skipped, failed;
    char failure_reason[64];
    uint64_t created_by;
    int64_t version, create_us, start_us, end_us, update_us; /* 0 = unset */
} job_row;

int store_job_get(pg_conn *c, const char *id, bool for_update, job_row *out);
/* ASSET-02: creates the job and its items in one statement set: the given
 * source assets plus, with include_deps, everything they reference
 * (transitively), ordered dependencies first. `ids` is a Postgres uuid[]
 * literal. *missing receives (malloc'd, comma-separated) the ids not found
 * in the source account; then nothing is created. OM_E_BATCH_TOO_LARGE
 * above ASSET_JOB_MAX assets. */
int store_job_create(pg_conn *tx, job_row *j, const char *ids, char **missing);
int store_job_list(pg_conn *c, uint64_t hub, int state, int64_t before_us, const char *before_id, int limit,
                   job_row **rows, int *n);
/* ASSET-03: a QUEUED or RUNNING job ends in `state` with `reason`; its
 * pending items get CANCELLED with that reason. Reloads *j. */
int store_job_stop(pg_conn *tx, job_row *j, int state, const char *reason, const char *message);

#define APB(x) Orgmesh__Assets__V1__##x
/* A job's protobuf form; strings point into `row`: keep it alive. */
typedef struct job_pb {
    job_row row;
    APB(CopyJob) pb;
    APB(CopyOptions) opt;
    Google__Protobuf__Timestamp ct, st, et, ut;
} job_pb;
void assets_job_pb_build(job_pb *v);
/* The audit resource of one asset ("accounts/<hub>/assets/<id>") or one
 * copy job ("accounts/<target>/copy_jobs/<id>"); `kind` is "assets" or
 * "copy_jobs". ListAssetHistory lists everything under "accounts/<hub>/". */
void assets_history_resource(uint64_t hub, const char *kind, const char *id, char *buf, size_t cap);
/* SPEC 8: the history of one asset (asset_id) or of the account (asset_id
 * NULL or ""): the key history_list (history.h) reads, into key, and how. */
history_scope store_history_key(uint64_t hub, const char *asset_id, char *key, size_t cap);

/* The copy engine. */
int assets_jobs_start(void);
void assets_jobs_stop(void);
/* Wake the workers (after a commit that queued a job). */
int assets_jobs_notify(pg_conn *tx);
/* The job's protobuf form and the events CopyJobStarted/Finished. */
int assets_emit_job(pg_conn *tx, const job_row *j, bool finished, const om_actor *actor);

/* The accounts consumer: memberships (ASSET-01/02 rights). */
int assets_on_accounts_event(pg_conn *tx, const evt_event *ev, void *arg);

extern const rpc_service assets_service;
int assets_init(void);
void assets_fini(void);

#endif
