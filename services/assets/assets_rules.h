/* assets_rules.h — the pure rules of the assets service (SPEC 5): asset
 * types and which may reference which, names, bodies, etags, the order in
 * which a job copies (dependencies first) and the names RENAME gives
 * (ASSET-04). No I/O: unit-tested in tests/unit/test_assets_rules.c. */
#ifndef ASSETS_RULES_H
#define ASSETS_RULES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "om_ids.h"

/* AssetType values (assets.proto). */
enum { ASSET_EMAIL_REGULAR = 1, ASSET_EMAIL_AUTOMATED = 2, ASSET_LIST = 3, ASSET_FORM = 4 };
/* ConflictPolicy values. */
enum { POLICY_RENAME = 1, POLICY_SKIP = 2, POLICY_FAIL = 3 };

#define ASSET_NAME_MAX 256            /* characters */
#define ASSET_BODY_MAX (256 * 1024)   /* bytes (ASSET-01) */
#define ASSET_MAX_REFS 100
#define ASSET_JOB_MAX 10000           /* assets per job (ASSET-02) */
#define ASSET_ETAG_MAX 24
#define ASSET_COPY_NAME_MAX 1100      /* bytes of a generated copy name */

bool asset_type_valid(int type);
/* ASSET-01: emails may reference lists and forms, lists may reference forms. */
bool asset_ref_allowed(int from_type, int to_type);
/* ASSET-04: copy order; every asset's references have a smaller rank
 * (forms 0, lists 1, emails 2), so copying by rank copies dependencies
 * first. */
int asset_type_rank(int type);
/* 1..256 UTF-8 characters, valid UTF-8, no control characters. NULL if
 * fine, else why not. */
const char *asset_name_problem(const char *name);
/* ASSET-01: a JSON document of at most ASSET_BODY_MAX bytes. NULL if fine,
 * else why not. */
const char *asset_body_problem(const char *body, size_t len);
/* ASSET-04 RENAME: the n-th candidate name for a copy of `base`: n = 1
 * gives "base (copy)", n >= 2 gives "base (copy n)". */
void asset_copy_name(const char *base, int n, char *out, size_t cap);
/* ASSET-04 RENAME: the first candidate not equal (ignoring ASCII case) to
 * any of `taken`. Returns the n used. */
int asset_pick_copy_name(const char *base, const char *const *taken, size_t n_taken, char *out, size_t cap);
/* Strong etags from the aggregate version. */
static inline void asset_etag_encode(int64_t v, char out[ASSET_ETAG_MAX]) { om_etag_encode('a', v, out); }
static inline int asset_etag_decode(const char *etag, int64_t *v) { return om_etag_decode('a', etag, v); }
/* A canonical textual UUID (the ids this service hands out). */
static inline bool asset_uuid_valid(const char *s) { return om_uuid_valid(s); }
/* Final state of a job from its counts (ASSET-03): SUCCEEDED when nothing
 * failed, PARTIALLY_SUCCEEDED when something was copied or skipped too,
 * FAILED otherwise. CopyJobState values. */
int asset_job_final_state(int copied, int skipped, int failed);

#endif
