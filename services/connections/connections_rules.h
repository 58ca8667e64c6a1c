/* connections_rules.h — the pure domain rules of the connections service
 * (SPEC 4): the direction algebra of a feature (CONN-01), the quick-connect
 * plan (CONN-02), the sensitive-data restriction (CONN-05) and the decision of
 * the hot checks (CONN-06, CONN-07). Plain structs in, values out; no I/O. */
#ifndef CONNECTIONS_RULES_H
#define CONNECTIONS_RULES_H

#include <stdbool.h>
#include <stdint.h>

#include "om_ids.h"

/* Values of orgmesh.connections.v1.Direction. */
enum { CONN_DIR_OFF = 1, CONN_DIR_BOTH = 2, CONN_DIR_ONE_WAY = 3 };

/* Values of orgmesh.connections.v1.DenialReason (0 = allowed). */
enum {
    CONN_ALLOWED = 0,
    CONN_DENY_NOT_SAME_ORGANIZATION = 1,
    CONN_DENY_NOT_CONNECTED = 2,
    CONN_DENY_DIRECTION = 3,
    CONN_DENY_SENSITIVE_SOURCE = 4,
    CONN_DENY_NOT_A_MEMBER = 5,
    CONN_DENY_NO_SEAT = 6,
};

#define CONN_MAX_ORG_ACCOUNTS 5 /* ORG-01 */
#define CONN_MAX_PAIRS 10       /* 5 accounts: 10 pairs */
#define CONN_ROLE_SUPER_ADMIN (1u << 0)
#define CONN_ROLE_PARTNER_ADMIN (1u << 1)
#define CONN_SEAT_SALES (1u << 0)
#define CONN_SEAT_SERVICE (1u << 1)

/* One feature of a connection: OFF, BOTH, or ONE_WAY from `source`. */
typedef struct conn_feature {
    int dir;
    uint64_t source; /* ONE_WAY only; 0 otherwise */
} conn_feature;

/* A connection's configuration; a < b. `workflows` (CONN-10) is the third
 * feature: a workflow of the source account creates or edits records in
 * the target account. */
typedef struct conn_cfg {
    uint64_t a, b;
    conn_feature mirroring, asset_copying, workflows;
} conn_cfg;

/* Orders a pair (a < b). */
void conn_pair(uint64_t x, uint64_t y, uint64_t *a, uint64_t *b);
/* CONN-01: is `f` a valid setting of the connection (a, b)? OFF and BOTH
 * name no source; ONE_WAY names a or b. */
bool conn_feature_valid(const conn_feature *f, uint64_t a, uint64_t b);
/* Does the feature flow S->T on the connection (a, b)? */
bool conn_flows(const conn_feature *f, uint64_t s, uint64_t t);
/* Is `hub` a source of `f` on the connection (a, b) (it flows out of hub)? */
bool conn_is_source(const conn_feature *f, uint64_t a, uint64_t b, uint64_t hub);
/* CONN-05: the mirroring setting after `sensitive_hub` turned sensitive data
 * on: BOTH becomes ONE_WAY into it, ONE_WAY out of it becomes OFF, anything
 * else is unchanged. *changed says whether it changed. */
conn_feature conn_restrict_sensitive(const conn_feature *f, uint64_t a, uint64_t b, uint64_t sensitive_hub,
                                     bool *changed);
/* CONN-02 with CONN-05 and CONN-11: the quick-connect configuration of the
 * pair (a, b) given each account's sensitivity: asset copying BOTH;
 * mirroring and workflows BOTH, or ONE_WAY into the sensitive account, or
 * OFF when both are sensitive. */
conn_cfg conn_quick_connect(uint64_t a, uint64_t b, bool a_sensitive, bool b_sensitive);
/* CONN-05, CONN-11: does `c` make a sensitive account a mirroring or a
 * workflow source? */
bool conn_sensitive_source(const conn_cfg *c, bool a_sensitive, bool b_sensitive);

/* What the checks know about a flow S->T (from the local copies). */
typedef struct conn_facts {
    bool same_org;          /* S and T are in one organization */
    bool connected;         /* they have a connection */
    bool mirror_flows;      /* mirroring flows S->T */
    bool asset_flows;       /* asset copying flows S->T */
    bool workflow_flows;    /* workflows flow S->T (CONN-10) */
    bool source_sensitive;  /* S has sensitive data enabled */
} conn_facts;

/* A user's place in T. */
typedef struct conn_seat {
    bool member;
    unsigned seats; /* CONN_SEAT_* */
    unsigned roles; /* CONN_ROLE_* */
} conn_seat;

/* CONN-06 (and CONN-05 at read time): the DenialReason, 0 when allowed.
 * Reasons are tested in the order of the enum. */
int conn_decide_mirror(const conn_facts *f, const conn_seat *seat);
/* CONN-07. */
int conn_decide_asset(const conn_facts *f);
/* CONN-12, with CONN-11 at read time (a sensitive source never writes,
 * whatever the configuration says). */
int conn_decide_workflow(const conn_facts *f);

/* Etags: "\"c<version>\"" for a connection. */
#define CONN_ETAG_MAX 24
static inline void conn_etag_encode(int64_t v, char out[CONN_ETAG_MAX]) { om_etag_encode('c', v, out); }
static inline int conn_etag_decode(const char *etag, int64_t *v) { return om_etag_decode('c', etag, v); }
static inline bool conn_uuid_valid(const char *s) { return om_uuid_valid(s); }

#endif
