/* rpc_client.c — blocking unary calls from one service to another: deadline,
 * actor token and trace id passed on, and retries with backoff for idempotent
 * calls that meet UNAVAILABLE. Each call uses a completion queue of its own,
 * so any thread (a worker, a consumer) may call. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include "log.h"
#include "rpc_internal.h"
#include "trace.h"

#define CLIENT_ATTEMPTS 4

struct rpc_client {
    grpc_channel *channel;
    char *target;
};

int rpc_client_new(rpc_client **out, const char *target) {
    rpc_client *c = calloc(1, sizeof *c);
    if (c == NULL) return OM_E_NOMEM;
    c->target = strdup(target);
    grpc_arg args[2];
    memset(args, 0, sizeof args);
    args[0].type = GRPC_ARG_INTEGER;
    args[0].key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    args[0].value.integer = 4 * 1024 * 1024;
    args[1].type = GRPC_ARG_INTEGER;
    args[1].key = (char *)GRPC_ARG_ENABLE_RETRIES;
    args[1].value.integer = 0; /* we retry ourselves, only idempotent calls */
    grpc_channel_args cargs = {2, args};
    grpc_channel_credentials *creds = grpc_insecure_credentials_create();
    c->channel = c->target ? grpc_channel_create(c->target, creds, &cargs) : NULL;
    grpc_channel_credentials_release(creds);
    if (c->channel == NULL) {
        free(c->target);
        free(c);
        return OM_E_NOMEM;
    }
    *out = c;
    return 0;
}

void rpc_client_free(rpc_client *c) {
    if (c == NULL) return;
    grpc_channel_destroy(c->channel);
    free(c->target);
    free(c);
}

static void new_trace_id(char buf[17]) {
    static _Atomic uint64_t counter;
    uint64_t x = (uint64_t)time(NULL) * 0x9e3779b97f4a7c15ULL ^ (uint64_t)(uintptr_t)&x ^
                 (counter++ * 0xbf58476d1ce4e5b9ULL);
    snprintf(buf, 17, "%016llx", (unsigned long long)x);
}

/* One attempt. Returns 0 or an OM_E_* code with *st filled. */
static int call_once(rpc_client *c, const char *method, grpc_byte_buffer *req_bb,
                     const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp,
                     const rpc_call_opts *o, const char *trace_id, const char *traceparent,
                     gpr_timespec deadline, rpc_status *st) {
    grpc_completion_queue *cq = grpc_completion_queue_create_for_next(NULL);
    grpc_slice path = grpc_slice_from_copied_string(method);
    grpc_call *call = grpc_channel_create_call(c->channel, NULL, GRPC_PROPAGATE_DEFAULTS, cq, path,
                                               NULL, deadline, NULL);
    grpc_slice_unref(path);

    grpc_metadata md[4];
    size_t n_md = 0;
    char *auth = NULL;
    memset(md, 0, sizeof md);
    if (o->token && o->token[0]) {
        size_t n = strlen(o->token) + 8;
        auth = malloc(n);
        if (auth) {
            snprintf(auth, n, "Bearer %s", o->token);
            md[n_md].key = grpc_slice_from_static_string("authorization");
            md[n_md].value = grpc_slice_from_copied_string(auth);
            n_md++;
        }
    }
    md[n_md].key = grpc_slice_from_static_string("x-trace-id");
    md[n_md].value = grpc_slice_from_copied_string(trace_id);
    n_md++;
    if (traceparent != NULL) { /* issue 19: W3C trace context on every call */
        md[n_md].key = grpc_slice_from_static_string("traceparent");
        md[n_md].value = grpc_slice_from_copied_string(traceparent);
        n_md++;
        const char *state = trace_current_state();
        if (state[0]) {
            md[n_md].key = grpc_slice_from_static_string("tracestate");
            md[n_md].value = grpc_slice_from_copied_string(state);
            n_md++;
        }
    }

    grpc_metadata_array initial, trailing;
    grpc_metadata_array_init(&initial);
    grpc_metadata_array_init(&trailing);
    grpc_byte_buffer *resp_bb = NULL;
    grpc_status_code status = GRPC_STATUS_UNKNOWN;
    grpc_slice details = grpc_empty_slice();
    const char *error_string = NULL;

    grpc_op ops[6];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].data.send_initial_metadata.count = n_md;
    ops[0].data.send_initial_metadata.metadata = md;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = req_bb;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &initial;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &resp_bb;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &trailing;
    ops[5].data.recv_status_on_client.status = &status;
    ops[5].data.recv_status_on_client.status_details = &details;
    ops[5].data.recv_status_on_client.error_string = &error_string;

    int rc = 0;
    memset(st, 0, sizeof *st);
    if (grpc_call_start_batch(call, ops, 6, (void *)1, NULL) != GRPC_CALL_OK) {
        rc = OM_E_INTERNAL;
        st->code = GRPC_STATUS_INTERNAL;
    } else {
        /* The deadline ends the call; wait a little longer for its status. */
        grpc_event ev = grpc_completion_queue_next(
            cq, gpr_time_add(deadline, gpr_time_from_millis(5000, GPR_TIMESPAN)), NULL);
        if (ev.type != GRPC_OP_COMPLETE) {
            grpc_call_cancel(call, NULL);
            grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        }
        st->code = status;
        size_t dn = GRPC_SLICE_LENGTH(details);
        if (dn >= sizeof st->message) dn = sizeof st->message - 1;
        memcpy(st->message, GRPC_SLICE_START_PTR(details), dn);
        st->message[dn] = '\0';
        for (size_t i = 0; i < trailing.count; i++) {
            grpc_slice k = trailing.metadata[i].key;
            if (GRPC_SLICE_LENGTH(k) == 23 &&
                memcmp(GRPC_SLICE_START_PTR(k), "grpc-status-details-bin", 23) == 0)
                rpc_status_unpack(GRPC_SLICE_START_PTR(trailing.metadata[i].value),
                                  GRPC_SLICE_LENGTH(trailing.metadata[i].value), st);
        }
        if (status == GRPC_STATUS_OK) {
            uint8_t *buf = NULL;
            size_t len = 0;
            if (resp_bb == NULL || rpc_bb_read(resp_bb, &buf, &len) != 0) {
                rc = OM_E_INTERNAL;
                st->code = GRPC_STATUS_INTERNAL;
                snprintf(st->message, sizeof st->message, "no reply message");
            } else {
                *resp = protobuf_c_message_unpack(resp_desc, NULL, len, buf);
                free(buf);
                if (*resp == NULL) {
                    rc = OM_E_MALFORMED_MESSAGE;
                    st->code = GRPC_STATUS_INTERNAL;
                    snprintf(st->message, sizeof st->message, "malformed reply");
                }
            }
        } else {
            rc = rpc_code_from_status(status, st->reason);
        }
    }

    if (resp_bb) grpc_byte_buffer_destroy(resp_bb);
    grpc_slice_unref(details);
    gpr_free((void *)error_string);
    grpc_metadata_array_destroy(&initial);
    grpc_metadata_array_destroy(&trailing);
    for (size_t i = 0; i < n_md; i++) grpc_slice_unref(md[i].value);
    free(auth);
    grpc_call_unref(call);
    grpc_completion_queue_shutdown(cq);
    while (grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
           GRPC_QUEUE_SHUTDOWN) {
    }
    grpc_completion_queue_destroy(cq);
    return rc;
}

int rpc_client_call(rpc_client *c, const char *method, const ProtobufCMessage *req,
                    const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp,
                    const rpc_call_opts *opts, rpc_status *st) {
    rpc_status local;
    if (st == NULL) st = &local;
    rpc_call_opts o = {0};
    if (opts) o = *opts;
    if (o.deadline_ms <= 0) o.deadline_ms = 5000;
    /* Issue 19: a CLIENT span, child of the thread's current context (a new
     * root without one); recorded only when sampled and exporting. */
    bool traced = !trace_suppressed();
    trace_ctx cc;
    trace_span *span = traced ? trace_rpc_start(trace_current(), TRACE_CLIENT, method, &cc) : NULL;
    char traceparent[TRACE_PARENT_LEN];
    char trace[33];
    if (traced) trace_format(&cc, traceparent);
    if (o.trace_id == NULL || o.trace_id[0] == '\0') {
        if (traced) trace_hex_trace_id(&cc, trace);
        else new_trace_id(trace);
        o.trace_id = trace;
    }
    trace_attr_str(span, "server.address", c->target);
    *resp = NULL;
    grpc_byte_buffer *bb = rpc_bb_pack(req);
    if (bb == NULL) {
        trace_discard(span);
        return OM_E_NOMEM;
    }
    gpr_timespec deadline = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                                         gpr_time_from_millis(o.deadline_ms, GPR_TIMESPAN));
    int rc = 0;
    int backoff_ms = 25;
    for (int attempt = 0; attempt < CLIENT_ATTEMPTS; attempt++) {
        rc = call_once(c, method, bb, resp_desc, resp, &o, o.trace_id, traced ? traceparent : NULL, deadline,
                       st);
        if (rc != OM_E_UNAVAILABLE || !o.idempotent) break;
        gpr_timespec left = gpr_time_sub(deadline, gpr_now(GPR_CLOCK_MONOTONIC));
        int64_t left_ms = (int64_t)left.tv_sec * 1000 + left.tv_nsec / 1000000;
        if (left_ms <= backoff_ms) break;
        struct timespec ts = {backoff_ms / 1000, (long)(backoff_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
        backoff_ms *= 2;
    }
    grpc_byte_buffer_destroy(bb);
    trace_rpc_end(span, (int)st->code, st->message);
    if (rc != 0)
        log_debug("rpc client %s -> %s: %s %s", c->target, method, st->reason, st->message);
    return rc;
}

int rpc_client_call_ctx(rpc_client *c, rpc_ctx *ctx, const char *method,
                        const ProtobufCMessage *req, const ProtobufCMessageDescriptor *resp_desc,
                        ProtobufCMessage **resp, rpc_status *st) {
    int64_t left = rpc_time_left_ms(ctx);
    rpc_call_opts o = {
        .token = rpc_token(ctx),
        .trace_id = rpc_trace_id(ctx),
        .deadline_ms = left > 5000 ? 5000 : (int)(left > 0 ? left : 1),
        .idempotent = false,
    };
    return rpc_client_call(c, method, req, resp_desc, resp, &o, st);
}
