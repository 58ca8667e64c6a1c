/* op.c — the request pipeline (op.h): request id, transaction and retries,
 * fetch rounds, and the one mapping of a failure to the call's status. */
#include "op.h"
#include "ctoken.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "log.h"

int op_fail(op_call *op, int code, const char *fmt, ...) {
    op->err = code;
    op->msg[0] = '\0';
    if (fmt != NULL) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(op->msg, sizeof op->msg, fmt, ap);
        va_end(ap);
    }
    return code;
}

void op_violation(op_call *op, const char *field, const char *fmt, ...) {
    if (op->n_viol >= OP_MAX_VIOLATIONS) return;
    snprintf(op->viol[op->n_viol].field, sizeof op->viol[0].field, "%s", field);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(op->viol[op->n_viol].msg, sizeof op->viol[0].msg, fmt, ap);
    va_end(ap);
    op->n_viol++;
}

int op_need(op_call *op, unsigned what) {
    op->need |= what;
    return OP_NEED_FETCH;
}

void op_need_id(op_call *op, uint64_t id) {
    for (int i = 0; i < op->n_need_ids; i++)
        if (op->need_ids[i] == id) return;
    if (op->n_need_ids < OP_MAX_NEED_IDS) op->need_ids[op->n_need_ids++] = id;
}

pg_conn *op_db(rpc_ctx *ctx) {
    pg_conn *c = pg_local();
    if (c == NULL) rpc_fail(ctx, OM_E_UNAVAILABLE, "the %s database is unreachable", pg_schema());
    return c;
}

int op_fail_unset(rpc_ctx *ctx, const char *field) {
    rpc_violation(ctx, field, "must be set");
    return rpc_fail_invalid(ctx);
}

int op_fail_db(rpc_ctx *ctx, pg_conn *c, int rc) {
    if (rc == OM_E_INTERNAL) log_error("%s: SQL %s: %s", rpc_method_name(ctx), pg_sqlstate(c), pg_errmsg(c));
    return rpc_fail(ctx, rc, NULL);
}

void op_check_id(rpc_ctx *ctx, const char *field, uint64_t id) {
    if (id == 0)
        rpc_violation(ctx, field, "must be set");
    else if (!pg_id_valid(id))
        rpc_violation(ctx, field, "is out of range");
}

/* The request's `request_id` (SPEC 8), "" when it has none. */
static const char *request_id_of(const ProtobufCMessage *req) {
    const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field_by_name(req->descriptor, "request_id");
    if (f == NULL || f->type != PROTOBUF_C_TYPE_STRING || f->label == PROTOBUF_C_LABEL_REPEATED) return "";
    const char *s = *(const char *const *)((const char *)req + f->offset);
    return s != NULL ? s : "";
}

/* Issue 18 (CONN-13): a mutation whose response has a string field
 * `consistency_token` gets a token naming the events its commit wrote
 * (common/ctoken.h; evt_emit notes them), set before the reply is stored so
 * that a replay returns it too; "" when it wrote no event. */
static void set_consistency_token(op_call *op) {
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field_by_name(op->resp->descriptor, "consistency_token");
    if (f == NULL || f->type != PROTOBUF_C_TYPE_STRING || f->label != PROTOBUF_C_LABEL_NONE) return;
    char **slot = (char **)((char *)op->resp + f->offset);
    char tok[CTOKEN_MAX_LEN];
    ctoken_pending_take(tok);
    if ((*slot == NULL || (*slot)[0] == '\0') && tok[0] != '\0') {
        char *copy = rpc_strdup(op->ctx, tok);
        if (copy != NULL) *slot = copy;
    }
}

static int op_apply(pg_conn *tx, void *arg) {
    op_call *op = arg;
    if (!op->def->mutation) return op->def->apply(op, tx);
    ctoken_pending_reset(); /* every attempt starts from nothing */
    int rc = op->def->apply(op, tx);
    if (rc == 0) set_consistency_token(op);
    return rc;
}

/* One attempt: everything the last one recorded is forgotten first. */
static int op_tx(pg_conn *tx, void *arg) {
    op_call *op = arg;
    op->err = 0;
    op->msg[0] = '\0';
    op->n_viol = 0;
    op->need = 0;
    op->n_need_ids = 0;
    op->need_key = NULL;
    if (op->def->reset != NULL) op->def->reset(op, op->arg);
    protobuf_c_message_init(op->resp->descriptor, op->resp);
    op->replayed = false;
    int rc = op->def->mutation
                 ? idem_run(tx, &op->key, op->resp, rpc_pb_allocator(op->ctx), op_apply, op, &op->replayed)
                 : op_apply(tx, op);
    if (rc == 0 && !op->replayed && op->def->after_store != NULL) rc = op->def->after_store(op, tx);
    return rc;
}

/* The failure `rc` of the op as the call's status. */
static int op_status(op_call *op, int rc) {
    rpc_ctx *ctx = op->ctx;
    if (op->n_viol > 0) {
        for (int i = 0; i < op->n_viol; i++) rpc_violation(ctx, op->viol[i].field, "%s", op->viol[i].msg);
        return rpc_fail_invalid(ctx);
    }
    if (op->err == rc && rc != 0) {
        if (op->def->failed != NULL) op->def->failed(op, op->arg, rc);
        return op->msg[0] ? rpc_fail(ctx, rc, "%s", op->msg) : rpc_fail(ctx, rc, NULL);
    }
    if (rc == OM_E_UNAVAILABLE)
        return rpc_fail(ctx, rc, "%s",
                        op->def->unavailable ? op->def->unavailable
                                             : "a peer service or the database is unavailable; retry");
    if (rc == OM_E_INTERNAL)
        log_error("%s: SQL %s: %s", rpc_method_name(ctx), pg_sqlstate(op->db), pg_errmsg(op->db));
    return rpc_fail(ctx, rc, NULL);
}

int op_run(rpc_ctx *ctx, const op_def *def, const void *req, ProtobufCMessage *resp, void *arg) {
    op_call *op = rpc_calloc(ctx, 1, sizeof *op);
    op->ctx = ctx;
    op->actor = rpc_actor(ctx);
    op->req = req;
    op->resp = resp;
    op->arg = arg;
    op->def = def;
    if (def->mutation) {
        int rc = rpc_idem_key(ctx, &op->key, request_id_of(req), req);
        if (rc != 0) return rc;
    }
    if ((op->db = op_db(ctx)) == NULL) return OM_E_UNAVAILABLE;
    int rounds = def->max_rounds > 0 ? def->max_rounds : OP_MAX_ROUNDS;
    int rc = 0;
    for (op->round = 0; op->round < rounds; op->round++) {
        rc = pg_tx(op->db, op_tx, op);
        if (rc != OP_NEED_FETCH) break;
        if (def->fetch == NULL) {
            log_error("%s: a copy is missing but the op cannot fetch", rpc_method_name(ctx));
            rc = OM_E_INTERNAL;
            break;
        }
        unsigned need = op->need;
        op->fetched |= need;
        if ((rc = def->fetch(ctx, op, arg)) != 0) break;
        rc = OP_NEED_FETCH;
    }
    if (rc == 0) {
        if (def->committed != NULL) def->committed(op, arg);
        return 0;
    }
    if (rc == OP_NEED_FETCH) rc = OM_E_UNAVAILABLE;
    return op_status(op, rc);
}
