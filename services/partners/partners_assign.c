/* partners_assign.c — what every path that changes an assignment shares
 * (SPEC 6): the actor of a change, the protobuf
 * conversions, the events and audit entries, and the shared state changes
 * (ending an assignment, the PART-09 cascade, PART-05's activation by the
 * client). Used by the handlers (partners_rpc.c) and by the accounts-event
 * consumers and background rounds (partners_events.c); it calls neither. */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audit.h"
#include "om_time.h"
#include "pbfield.h"
#include "partners.h"

typedef Google__Protobuf__Timestamp PbTimestamp;

char *pa_strdup(ps_mem *m, const char *s) {
    if (s == NULL) s = "";
    size_t n = strlen(s);
    char *p = m->alloc(m->ud, n + 1);
    memcpy(p, s, n + 1);
    return p;
}

static char *m_sprintf(ps_mem *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static char *m_sprintf(ps_mem *m, const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return pa_strdup(m, buf);
}

const char *pa_who_string(const pa_who *w, ps_mem *m) {
    char buf[64];
    audit_actor_string(w->actor, w->rule, buf, sizeof buf);
    return pa_strdup(m, buf);
}

void pa_who_parse(const char *s, om_actor *buf, pa_who *out) {
    memset(out, 0, sizeof *out);
    memset(buf, 0, sizeof *buf);
    if (s == NULL) return;
    if (strncmp(s, "user:", 5) == 0) {
        buf->user_id = strtoull(s + 5, NULL, 10);
        out->actor = buf;
    } else if (strncmp(s, "service:", 8) == 0) {
        snprintf(buf->service, sizeof buf->service, "%s", s + 8);
        out->actor = buf;
    } else if (strncmp(s, "rule:", 5) == 0) {
        out->rule = s + 5;
    }
}

/* ---- conversions ------------------------------------------------------------------ */

PbTimestamp *pa_ts(ps_mem *m, int64_t us) {
    if (us == 0) return NULL;
    PbTimestamp *t = m->alloc(m->ud, sizeof *t);
    om_pb_timestamp(t, us);
    return t;
}

/* Overflow-safe: a time outside 0001..9999 is clamped (pbcheck refused it
 * before the handler ran anyway). */
int64_t pa_ts_us(const PbTimestamp *t) {
    return t == NULL ? 0 : om_timestamp_us_clamped(t->seconds, t->nanos);
}

static char *etag(ps_mem *m, int64_t version) { return m_sprintf(m, "W/\"%" PRId64 "\"", version); }

PB(Assignment) *pa_assignment_pb(ps_mem *m, const ps_assignment *a) {
    PB(Assignment) *p = m->alloc(m->ud, sizeof *p);
    orgmesh__partners__v1__assignment__init(p);
    p->assignment_id = pa_strdup(m, a->id);
    p->partner_hub_id = a->partner_hub_id;
    p->partner_name = pa_strdup(m, a->partner_name);
    p->employee_user_id = a->employee_user_id;
    p->employee_email = pa_strdup(m, a->employee_email);
    p->employee_display_name = pa_strdup(m, a->employee_name);
    p->client_hub_id = a->client_hub_id;
    p->client_name = pa_strdup(m, a->client_name);
    p->state = (PB(AssignmentState))a->state;
    p->state_cause = (PB(AssignmentChangeCause))a->cause;
    p->access_request_id = pa_strdup(m, a->request_id);
    p->assigned_by_user_id = a->assigned_by;
    p->last_activity_time = pa_ts(m, a->last_activity_us);
    p->activity_count_30d = a->activity_30d;
    p->version = a->version;
    p->etag = etag(m, a->version);
    p->create_time = pa_ts(m, a->create_us);
    p->activate_time = pa_ts(m, a->activate_us);
    p->end_time = pa_ts(m, a->end_us);
    p->update_time = pa_ts(m, a->update_us);
    /* PART-14, PART-15, PART-18 */
    p->duration_days = a->duration_days;
    p->grant_end_time = pa_ts(m, a->grant_end_us);
    p->auto_extend = a->auto_extend;
    p->requested_roles = pa_roles_pb(m, a->requested_roles, &p->n_requested_roles);
    p->granted_roles = pa_roles_pb(m, a->link_roles, &p->n_granted_roles);
    return p;
}

PB(AccessRequest) *pa_request_pb(ps_mem *m, const ps_assignment *a) {
    if (a->request_id[0] == '\0') return NULL;
    PB(AccessRequest) *p = m->alloc(m->ud, sizeof *p);
    orgmesh__partners__v1__access_request__init(p);
    p->access_request_id = pa_strdup(m, a->request_id);
    p->assignment_id = pa_strdup(m, a->id);
    p->partner_hub_id = a->partner_hub_id;
    p->partner_name = pa_strdup(m, a->partner_name);
    p->employee_user_id = a->employee_user_id;
    p->employee_email = pa_strdup(m, a->employee_email);
    p->employee_display_name = pa_strdup(m, a->employee_name);
    p->client_hub_id = a->client_hub_id;
    p->client_name = pa_strdup(m, a->client_name);
    p->state = (PB(AssignmentState))a->state;
    p->state_cause = (PB(AssignmentChangeCause))a->cause;
    p->requested_by_user_id = a->assigned_by;
    p->expire_time = pa_ts(m, a->expire_us);
    p->send_count = a->send_count;
    p->last_send_time = pa_ts(m, a->last_send_us);
    if (a->state == PART_ST_PENDING && a->last_send_us != 0)
        p->next_resend_time = pa_ts(m, a->last_send_us + partners_cfg.resend_interval_s * 1000000);
    p->answered_by_user_id = a->answered_by;
    p->answer_time = pa_ts(m, a->answer_us);
    p->answer_reason = pa_strdup(m, a->answer_reason);
    p->version = a->version;
    p->etag = etag(m, a->version);
    p->create_time = pa_ts(m, a->create_us);
    p->requested_roles = pa_roles_pb(m, a->requested_roles, &p->n_requested_roles);
    p->duration_days = a->duration_days;
    p->auto_extend = a->auto_extend;
    p->last_send_failed = a->last_send_failed; /* PART-22 */
    if (a->state == PART_ST_PENDING && a->last_send_failed) p->next_resend_time = pa_ts(m, a->now_us);
    return p;
}

Orgmesh__Accounts__V1__Role *pa_roles_pb(ps_mem *m, unsigned bits, size_t *n) {
    Orgmesh__Accounts__V1__Role *r = m->alloc(m->ud, 4 * sizeof *r);
    *n = 0;
    for (int v = 1; v <= 4; v++)
        if (bits & (1u << (v - 1))) r[(*n)++] = (Orgmesh__Accounts__V1__Role)v;
    return r;
}

PB(PartnerEmployee) *pa_employee_pb(ps_mem *m, uint64_t partner, const ps_employee *e) {
    PB(PartnerEmployee) *p = m->alloc(m->ud, sizeof *p);
    orgmesh__partners__v1__partner_employee__init(p);
    p->partner_hub_id = partner;
    p->user_id = e->user_id;
    p->email = pa_strdup(m, e->email);
    p->display_name = pa_strdup(m, e->display_name);
    p->client_count = e->client_count;
    p->pending_request_count = e->pending_count;
    p->last_activity_time = pa_ts(m, e->last_activity_us);
    p->tag_time = pa_ts(m, e->tag_us);
    p->tagged_by_user_id = e->tagged_by;
    return p;
}

PB(PartnerClient) *pa_client_pb(ps_mem *m, uint64_t partner, const ps_client *c) {
    PB(PartnerClient) *p = m->alloc(m->ud, sizeof *p);
    orgmesh__partners__v1__partner_client__init(p);
    p->partner_hub_id = partner;
    p->client_hub_id = c->client_hub_id;
    p->client_name = pa_strdup(m, c->name);
    p->source = (PB(ClientSource))c->source;
    p->active_employee_count = c->active_count;
    p->add_time = pa_ts(m, c->add_us);
    return p;
}



/* ---- events and audit ---------------------------------------------------------------- */

static int emit_event_id(pg_conn *tx, const pa_who *w, const char *subject, int64_t version,
                         const ProtobufCMessage *payload, char *id_out) {
    evt_meta meta = {.subject = subject, .version = version, .actor = w->actor, .rule = w->rule,
                     .trace_id = w->trace_id};
    return evt_emit(tx, &meta, payload, id_out);
}

static int emit_event(pg_conn *tx, const pa_who *w, const char *subject, int64_t version,
                      const ProtobufCMessage *payload) {
    return emit_event_id(tx, w, subject, version, payload, NULL);
}

static int audit(pg_conn *tx, const pa_who *w, uint64_t partner, const char *action,
                 const ProtobufCMessage *after, const char *reason) {
    char resource[48];
    snprintf(resource, sizeof resource, "partners/%" PRIu64, partner);
    audit_entry e = {
        .actor = w->actor,
        .rule = w->rule,
        .action = action,
        .resource = resource,
        .after = after,
        .reason = reason && reason[0] ? reason : NULL,
        .request_id = w->request_id && w->request_id[0] ? w->request_id : NULL,
        .trace_id = w->trace_id,
    };
    return audit_record(tx, &e);
}

int pa_emit(pg_conn *tx, ps_mem *m, const pa_who *w, pa_event_kind kind, const ps_assignment *a,
            bool membership_removed) {
    return pa_emit_grant(tx, m, w, kind, a, membership_removed, 0, 0);
}

int pa_emit_grant(pg_conn *tx, ps_mem *m, const pa_who *w, pa_event_kind kind, const ps_assignment *a,
                  bool membership_removed, int days_left, int64_t revoke_us) {
    static const struct {
        const ProtobufCMessageDescriptor *type;
        const char *action;
    } events[] = {
        [PA_EV_REQUESTED] = {&orgmesh__partners__v1__access_requested__descriptor, "access_request.create"},
        [PA_EV_RESENT] = {&orgmesh__partners__v1__access_request_resent__descriptor, "access_request.resend"},
        [PA_EV_APPROVED] = {&orgmesh__partners__v1__access_approved__descriptor, "access_request.approve"},
        [PA_EV_DECLINED] = {&orgmesh__partners__v1__access_declined__descriptor, "access_request.decline"},
        [PA_EV_EXPIRED] = {&orgmesh__partners__v1__access_request_expired__descriptor, "access_request.expire"},
        [PA_EV_CANCELLED] = {&orgmesh__partners__v1__access_request_cancelled__descriptor, "access_request.cancel"},
        [PA_EV_REVOKED] = {&orgmesh__partners__v1__access_revoked__descriptor, "assignment.revoke"},
        [PA_EV_ACTIVATED] = {&orgmesh__partners__v1__assignment_activated__descriptor, "assignment.activate"},
        [PA_EV_GRANT_ENDING] = {&orgmesh__partners__v1__grant_ending__descriptor, "grant.notice_end"},
        [PA_EV_GRANT_EXPIRED] = {&orgmesh__partners__v1__grant_expired__descriptor, "grant.expire"},
        [PA_EV_GRANT_EXTENDED] = {&orgmesh__partners__v1__grant_extended__descriptor, "grant.extend"},
        [PA_EV_GRANT_DORMANT] = {&orgmesh__partners__v1__grant_dormant__descriptor, "grant.notice_dormant"},
    };
    char subject[96];
    snprintf(subject, sizeof subject, "partners/%" PRIu64 "/assignments/%s", a->partner_hub_id, a->id);
    const char *actor = pa_who_string(w, m);
    PB(Assignment) *asg = pa_assignment_pb(m, a);
    PB(AccessRequest) *req = pa_request_pb(m, a);
    PB(AssignmentChangeCause) cause = (PB(AssignmentChangeCause))a->cause;
    protobuf_c_boolean removed = membership_removed;
    if ((unsigned)kind >= sizeof events / sizeof *events) kind = PA_EV_ACTIVATED;
    /* each payload carries whichever of these its type has (partners.proto) */
    ProtobufCMessage *e = m->alloc(m->ud, events[kind].type->sizeof_message);
    protobuf_c_message_init(events[kind].type, e);
    pb_set_field(e, "access_request", PROTOBUF_C_TYPE_MESSAGE, &req, sizeof req);
    pb_set_field(e, "assignment", PROTOBUF_C_TYPE_MESSAGE, &asg, sizeof asg);
    pb_set_field(e, "cause", PROTOBUF_C_TYPE_ENUM, &cause, sizeof cause);
    pb_set_field(e, "actor", PROTOBUF_C_TYPE_STRING, &actor, sizeof actor);
    pb_set_field(e, "membership_removed", PROTOBUF_C_TYPE_BOOL, &removed, sizeof removed);
    int32_t left = days_left;
    PbTimestamp *revoke = pa_ts(m, revoke_us);
    pb_set_field(e, "days_left", PROTOBUF_C_TYPE_INT32, &left, sizeof left);
    pb_set_field(e, "revoke_time", PROTOBUF_C_TYPE_MESSAGE, &revoke, sizeof revoke);
    char event_id[40] = "";
    int rc = emit_event_id(tx, w, subject, a->version, e, event_id);
    /* PART-22: which event carries the access-request email, so that its
     * failure (the notifier's EmailDeadLettered) allows a resend at once */
    if (rc == 0 && (kind == PA_EV_REQUESTED || kind == PA_EV_RESENT)) rc = ps_asg_sent(tx, a->id, event_id);
    if (rc != 0) return rc;
    return audit(tx, w, a->partner_hub_id, events[kind].action, &asg->base, a->answer_reason);
}

int pa_emit_client_added(pg_conn *tx, ps_mem *m, const pa_who *w, uint64_t partner, uint64_t client) {
    ps_client cl;
    ps_account pa;
    int rc = ps_client_get(tx, partner, client, m, &cl);
    if (rc != 0) return rc;
    if (ps_account_get(tx, partner, m, &pa) != 0) pa.name = "";
    char subject[96];
    snprintf(subject, sizeof subject, "partners/%" PRIu64 "/clients/%" PRIu64, partner, client);
    PB(ClientAdded) e;
    orgmesh__partners__v1__client_added__init(&e);
    e.client = pa_client_pb(m, partner, &cl);
    e.partner_name = pa_strdup(m, pa.name);
    e.actor = (char *)pa_who_string(w, m);
    if ((rc = emit_event(tx, w, subject, 1, &e.base)) != 0) return rc;
    return audit(tx, w, partner, "client.add", &e.client->base, NULL);
}

int pa_emit_employee(pg_conn *tx, ps_mem *m, const pa_who *w, uint64_t partner, uint64_t user, int64_t version,
                         bool tagged, part_cause cause, int cancelled, int revoked) {
    ps_employee emp;
    ps_account pa;
    ps_user u;
    int rc = ps_employee_get(tx, partner, user, m, &emp);
    if (rc == OM_E_NOT_FOUND) {
        memset(&emp, 0, sizeof emp);
        emp.user_id = user;
        if (ps_user_get(tx, user, m, &u) == 0) {
            emp.email = u.email;
            emp.display_name = u.display_name;
        } else {
            emp.email = emp.display_name = "";
        }
    } else if (rc != 0) {
        return rc;
    }
    if (ps_account_get(tx, partner, m, &pa) != 0) pa.name = "";
    char subject[96];
    snprintf(subject, sizeof subject, "partners/%" PRIu64 "/employees/%" PRIu64, partner, user);
    PB(PartnerEmployee) *pe = pa_employee_pb(m, partner, &emp);
    if (tagged) {
        PB(EmployeeTagged) e;
        orgmesh__partners__v1__employee_tagged__init(&e);
        e.employee = pe;
        e.partner_name = pa_strdup(m, pa.name);
        e.actor = (char *)pa_who_string(w, m);
        rc = emit_event(tx, w, subject, version, &e.base);
        return rc != 0 ? rc : audit(tx, w, partner, "employee.tag", &pe->base, NULL);
    }
    PB(EmployeeUntagged) e;
    orgmesh__partners__v1__employee_untagged__init(&e);
    e.employee = pe;
    e.partner_name = pa_strdup(m, pa.name);
    e.cause = (PB(AssignmentChangeCause))cause;
    e.actor = (char *)pa_who_string(w, m);
    e.cancelled_request_count = cancelled;
    e.revoked_assignment_count = revoked;
    rc = emit_event(tx, w, subject, version, &e.base);
    return rc != 0 ? rc : audit(tx, w, partner, "employee.untag", &pe->base, NULL);
}

/* ---- shared state changes ---------------------------------------------------------------- */

/* Ends one open assignment: PENDING -> CANCELLED, ACTIVE -> REVOKED with the
 * accounts side to undo (link_sync; AccessRevoked follows from the sync,
 * which knows whether the membership went). */
static int end_assignment(pg_conn *tx, ps_mem *m, const pa_who *w, ps_assignment *a, part_cause cause,
                          const char *reason, bool *revoked) {
    *revoked = false;
    if (a->state == PART_ST_PENDING) {
        a->state = PART_ST_CANCELLED;
        a->cause = cause;
        a->answer_reason = reason ? reason : "";
        a->end_actor = pa_who_string(w, m);
        int rc = ps_asg_save(tx, a, m);
        return rc != 0 ? rc : pa_emit(tx, m, w, PA_EV_CANCELLED, a, false);
    }
    if (a->state == PART_ST_ACTIVE) {
        a->state = PART_ST_REVOKED;
        a->cause = cause;
        a->answer_reason = reason ? reason : a->answer_reason;
        a->end_actor = pa_who_string(w, m);
        a->link_sync = true;
        *revoked = true;
        return ps_asg_save(tx, a, m);
    }
    return 0;
}

int pa_end_assignment(pg_conn *tx, ps_mem *m, const pa_who *w, ps_assignment *a, part_cause cause,
                      const char *reason, bool *revoked) {
    return end_assignment(tx, m, w, a, cause, reason, revoked);
}

int pa_cascade(pg_conn *tx, ps_mem *m, const pa_who *w, uint64_t partner, uint64_t user, part_cause cause,
               int *cancelled, int *revoked) {
    char(*ids)[40] = NULL;
    int n = 0;
    *cancelled = *revoked = 0;
    /* PART-09: every open assignment, each re-read under its lock so that an
     * approval committed meanwhile is revoked rather than missed. */
    int rc = ps_asg_open_ids(tx, partner, user, m, &ids, &n);
    for (int i = 0; rc == 0 && i < n; i++) {
        ps_assignment a;
        bool rev = false;
        if ((rc = ps_asg_get(tx, ids[i], true, m, &a)) != 0) break;
        int before = a.state;
        if ((rc = end_assignment(tx, m, w, &a, cause, NULL, &rev)) != 0) break;
        if (before == PART_ST_PENDING) (*cancelled)++;
        if (rev) (*revoked)++;
    }
    if (rc != 0) return rc;
    ps_membership mb;
    int64_t version = 0;
    if (ps_membership_get(tx, partner, user, 0, m, &mb) == 0) version = mb.version;
    if ((rc = ps_tag_forget(tx, partner, user)) != 0) return rc;
    return pa_emit_employee(tx, m, w, partner, user, version, false, cause, *cancelled, *revoked);
}

int pa_activate_by_client(pg_conn *tx, ps_mem *m, const pa_who *w, ps_assignment *a) {
    /* PART-05: the client added the employee while the request was pending */
    a->state = PART_ST_ACTIVE;
    a->cause = PART_CAUSE_CLIENT_ADDED_MEMBER;
    a->answered_by = w->actor ? w->actor->user_id : 0;
    a->link_sync = true;
    a->link_adopt = true; /* the membership exists because of the request */
    a->link_actor = w->actor && w->actor->user_id ? pa_who_string(w, m) : "";
    int rc = ps_asg_save(tx, a, m);
    if (rc == 0) rc = pa_emit(tx, m, w, PA_EV_APPROVED, a, false);
    /* each event carries a version of its own (SPEC 2) */
    if (rc == 0) rc = ps_asg_save(tx, a, m);
    if (rc == 0) rc = pa_emit(tx, m, w, PA_EV_ACTIVATED, a, false);
    return rc;
}

int pa_audit_restore(pg_conn *tx, ps_mem *m, const pa_who *w, uint64_t client, uint64_t partner) {
    PB(RestorePartnerAccessRequest) what;
    orgmesh__partners__v1__restore_partner_access_request__init(&what);
    what.client_hub_id = client;
    what.partner_hub_id = partner;
    (void)m;
    /* PART-20: the lift is in the partner's history (every partner's block: resource partners/0) */
    return audit(tx, w, partner, "partner_access.restore", &what.base, NULL);
}

int pa_emit_kill_switch(pg_conn *tx, ps_mem *m, const pa_who *w, uint64_t client, uint64_t partner,
                        const uint64_t *partners, int n_partners, int cancelled, int revoked, const char *reason) {
    char subject[96];
    snprintf(subject, sizeof subject, "partners/clients/%" PRIu64 "/partner-access/%" PRIu64, client, partner);
    PB(PartnerAccessRevoked) e;
    orgmesh__partners__v1__partner_access_revoked__init(&e);
    e.client_hub_id = client;
    e.partner_hub_id = partner;
    e.cancelled_request_count = cancelled;
    e.revoked_assignment_count = revoked;
    e.actor = (char *)pa_who_string(w, m);
    int rc = emit_event(tx, w, subject, 1, &e.base);
    /* PART-20: in the history of every partner it cut off */
    for (int i = 0; rc == 0 && i < n_partners; i++)
        rc = audit(tx, w, partners[i], "partner_access.revoke", &e.base, reason);
    return rc;
}
