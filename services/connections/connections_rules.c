/* connections_rules.c — the pure rules of the connections service (SPEC 4);
 * see connections_rules.h. Unit-tested in tests/unit/test_connections_rules.c. */
#include "connections_rules.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

void conn_pair(uint64_t x, uint64_t y, uint64_t *a, uint64_t *b) {
    *a = x < y ? x : y;
    *b = x < y ? y : x;
}

/* CONN-01 */
bool conn_feature_valid(const conn_feature *f, uint64_t a, uint64_t b) {
    switch (f->dir) {
    case CONN_DIR_OFF:
    case CONN_DIR_BOTH: return f->source == 0;
    case CONN_DIR_ONE_WAY: return f->source != 0 && (f->source == a || f->source == b);
    default: return false;
    }
}

bool conn_flows(const conn_feature *f, uint64_t s, uint64_t t) {
    if (s == t) return false;
    if (f->dir == CONN_DIR_BOTH) return true;
    return f->dir == CONN_DIR_ONE_WAY && f->source == s;
}

bool conn_is_source(const conn_feature *f, uint64_t a, uint64_t b, uint64_t hub) {
    if (hub != a && hub != b) return false;
    return conn_flows(f, hub, hub == a ? b : a);
}

/* CONN-05 */
conn_feature conn_restrict_sensitive(const conn_feature *f, uint64_t a, uint64_t b, uint64_t sensitive_hub,
                                     bool *changed) {
    conn_feature out = *f;
    *changed = false;
    if (!conn_is_source(f, a, b, sensitive_hub)) return out;
    if (f->dir == CONN_DIR_BOTH) {
        out.dir = CONN_DIR_ONE_WAY; /* into the sensitive account */
        out.source = sensitive_hub == a ? b : a;
    } else {
        out.dir = CONN_DIR_OFF; /* ONE_WAY out of it */
        out.source = 0;
    }
    *changed = true;
    return out;
}

/* CONN-02, CONN-05 */
conn_cfg conn_quick_connect(uint64_t a, uint64_t b, bool a_sensitive, bool b_sensitive) {
    conn_cfg c = {.a = a, .b = b};
    c.asset_copying.dir = CONN_DIR_BOTH;
    if (a_sensitive && b_sensitive)
        c.mirroring.dir = CONN_DIR_OFF;
    else if (a_sensitive)
        c.mirroring = (conn_feature){CONN_DIR_ONE_WAY, b};
    else if (b_sensitive)
        c.mirroring = (conn_feature){CONN_DIR_ONE_WAY, a};
    else
        c.mirroring.dir = CONN_DIR_BOTH;
    c.workflows = c.mirroring; /* CONN-11: the CONN-05 rule applied to workflows */
    return c;
}

bool conn_sensitive_source(const conn_cfg *c, bool a_sensitive, bool b_sensitive) {
    return (a_sensitive && (conn_is_source(&c->mirroring, c->a, c->b, c->a) ||
                            conn_is_source(&c->workflows, c->a, c->b, c->a))) || /* CONN-11 */
           (b_sensitive && (conn_is_source(&c->mirroring, c->a, c->b, c->b) ||
                            conn_is_source(&c->workflows, c->a, c->b, c->b)));
}

/* CONN-06, with CONN-05 at read time whatever the configuration says. */
int conn_decide_mirror(const conn_facts *f, const conn_seat *seat) {
    if (!f->same_org) return CONN_DENY_NOT_SAME_ORGANIZATION;
    if (!f->connected) return CONN_DENY_NOT_CONNECTED;
    if (!f->mirror_flows) return CONN_DENY_DIRECTION;
    if (f->source_sensitive) return CONN_DENY_SENSITIVE_SOURCE;
    if (!seat->member) return CONN_DENY_NOT_A_MEMBER;
    if ((seat->seats & (CONN_SEAT_SALES | CONN_SEAT_SERVICE)) == 0) return CONN_DENY_NO_SEAT;
    return CONN_ALLOWED;
}

/* CONN-07 */
int conn_decide_asset(const conn_facts *f) {
    if (!f->same_org) return CONN_DENY_NOT_SAME_ORGANIZATION;
    if (!f->connected) return CONN_DENY_NOT_CONNECTED;
    if (!f->asset_flows) return CONN_DENY_DIRECTION;
    return CONN_ALLOWED;
}

/* CONN-12, with CONN-11 at read time whatever the configuration says. */
int conn_decide_workflow(const conn_facts *f) {
    if (!f->same_org) return CONN_DENY_NOT_SAME_ORGANIZATION;
    if (!f->connected) return CONN_DENY_NOT_CONNECTED;
    if (!f->workflow_flows) return CONN_DENY_DIRECTION;
    if (f->source_sensitive) return CONN_DENY_SENSITIVE_SOURCE;
    return CONN_ALLOWED;
}

