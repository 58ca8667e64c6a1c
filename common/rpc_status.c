/* rpc_status.c — google.rpc.Status in `grpc-status-details-bin`: written by
 * the server (ErrorInfo, BadRequest, extra details) and read by the client;
 * plus the byte-buffer helpers both sides use. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer_reader.h>

#include "google/protobuf/any.pb-c.h"
#include "google/rpc/error_details.pb-c.h"
#include "google/rpc/status.pb-c.h"
#include "rpc_internal.h"

/* Pack `msg` into an Any owned by the caller (free any->value.data). */
static int any_pack(Google__Protobuf__Any *any, const ProtobufCMessage *msg, char *url, size_t cap) {
    size_t n = protobuf_c_message_get_packed_size(msg);
    uint8_t *buf = malloc(n ? n : 1);
    if (buf == NULL) return OM_E_NOMEM;
    protobuf_c_message_pack(msg, buf);
    snprintf(url, cap, "type.googleapis.com/%s", msg->descriptor->name);
    google__protobuf__any__init(any);
    any->type_url = url;
    any->value.data = buf;
    any->value.len = n;
    return 0;
}

int rpc_status_pack(const rpc_error_info *e, uint8_t **out, size_t *len) {
    int rc = OM_E_NOMEM;
    size_t n_own = 1 + (e->n_violations ? 1u : 0u) + (e->localized_message ? 1u : 0u);
    size_t n_details = n_own + e->n_extra;
    Google__Protobuf__Any *anys = calloc(n_details, sizeof *anys);
    Google__Protobuf__Any **ptrs = calloc(n_details, sizeof *ptrs);
    Google__Rpc__ErrorInfo__MetadataEntry *entries = calloc(e->n_meta + 1, sizeof *entries);
    Google__Rpc__ErrorInfo__MetadataEntry **entry_ptrs = calloc(e->n_meta + 1, sizeof *entry_ptrs);
    Google__Rpc__BadRequest__FieldViolation *fv = calloc(e->n_violations + 1, sizeof *fv);
    Google__Rpc__BadRequest__FieldViolation **fv_ptrs = calloc(e->n_violations + 1, sizeof *fv_ptrs);
    char url_info[96], url_bad[96], url_loc[96];
    size_t n = 0;
    if (!anys || !ptrs || !entries || !entry_ptrs || !fv || !fv_ptrs) goto done;

    Google__Rpc__ErrorInfo info = GOOGLE__RPC__ERROR_INFO__INIT;
    info.reason = (char *)om_err_name(e->code);
    info.domain = (char *)(e->domain ? e->domain : "orgmesh");
    for (size_t i = 0; i < e->n_meta; i++) {
        google__rpc__error_info__metadata_entry__init(&entries[i]);
        entries[i].key = (char *)e->meta[i].key;
        entries[i].value = (char *)e->meta[i].value;
        entry_ptrs[i] = &entries[i];
    }
    info.n_metadata = e->n_meta;
    info.metadata = entry_ptrs;
    if (any_pack(&anys[n], &info.base, url_info, sizeof url_info) != 0) goto done;
    ptrs[n] = &anys[n];
    n++;

    if (e->n_violations) {
        Google__Rpc__BadRequest bad = GOOGLE__RPC__BAD_REQUEST__INIT;
        for (size_t i = 0; i < e->n_violations; i++) {
            google__rpc__bad_request__field_violation__init(&fv[i]);
            fv[i].field = (char *)e->violations[i].key;
            fv[i].description = (char *)e->violations[i].value;
            fv_ptrs[i] = &fv[i];
        }
        bad.n_field_violations = e->n_violations;
        bad.field_violations = fv_ptrs;
        if (any_pack(&anys[n], &bad.base, url_bad, sizeof url_bad) != 0) goto done;
        ptrs[n] = &anys[n];
        n++;
    }
    if (e->localized_message) {
        /* API-01 (AIP-193): the message in the caller's language */
        Google__Rpc__LocalizedMessage loc = GOOGLE__RPC__LOCALIZED_MESSAGE__INIT;
        loc.locale = (char *)(e->localized_locale ? e->localized_locale : "en");
        loc.message = (char *)e->localized_message;
        if (any_pack(&anys[n], &loc.base, url_loc, sizeof url_loc) != 0) goto done;
        ptrs[n] = &anys[n];
        n++;
    }
    for (size_t i = 0; i < e->n_extra; i++) {
        google__protobuf__any__init(&anys[n]);
        anys[n].type_url = (char *)e->extra[i].type_url;
        anys[n].value.data = NULL; /* borrowed below, not freed */
        anys[n].value.len = e->extra[i].len;
        anys[n].value.data = e->extra[i].data;
        ptrs[n] = &anys[n];
        n++;
    }

    Google__Rpc__Status st = GOOGLE__RPC__STATUS__INIT;
    st.code = (int32_t)om_err_status(e->code);
    st.message = (char *)(e->message ? e->message : "");
    st.n_details = n;
    st.details = ptrs;
    size_t sz = protobuf_c_message_get_packed_size(&st.base);
    *out = malloc(sz ? sz : 1);
    if (*out == NULL) goto done;
    *len = protobuf_c_message_pack(&st.base, *out);
    rc = 0;
done:
    /* Only the ErrorInfo, BadRequest and LocalizedMessage buffers are ours. */
    for (size_t i = 0; i < n && i < n_own; i++) free(anys[i].value.data);
    free(anys);
    free(ptrs);
    free(entries);
    free(entry_ptrs);
    free(fv);
    free(fv_ptrs);
    return rc;
}

void rpc_status_unpack(const uint8_t *data, size_t len, rpc_status *st) {
    Google__Rpc__Status *s = google__rpc__status__unpack(NULL, len, data);
    if (s == NULL) return;
    if (s->message && st->message[0] == '\0')
        snprintf(st->message, sizeof st->message, "%s", s->message);
    for (size_t i = 0; i < s->n_details; i++) {
        const char *url = s->details[i]->type_url;
        if (url && strstr(url, "google.rpc.ErrorInfo")) {
            Google__Rpc__ErrorInfo *info = google__rpc__error_info__unpack(
                NULL, s->details[i]->value.len, s->details[i]->value.data);
            if (info) {
                snprintf(st->reason, sizeof st->reason, "%s", info->reason ? info->reason : "");
                google__rpc__error_info__free_unpacked(info, NULL);
            }
        }
    }
    google__rpc__status__free_unpacked(s, NULL);
}

int rpc_code_from_status(grpc_status_code code, const char *reason) {
    if (code == GRPC_STATUS_OK) return 0;
    if (reason && reason[0]) {
        for (int c = OM__ERR_FIRST + 1; c < OM__ERR_LAST; c++)
            if (strcmp(om_err_name(c), reason) == 0) return c;
    }
    switch (code) {
    case GRPC_STATUS_CANCELLED: return OM_E_CANCELLED;
    case GRPC_STATUS_INVALID_ARGUMENT: return OM_E_INVALID_ARGUMENT;
    case GRPC_STATUS_DEADLINE_EXCEEDED: return OM_E_DEADLINE_EXCEEDED;
    case GRPC_STATUS_NOT_FOUND: return OM_E_NOT_FOUND;
    case GRPC_STATUS_ALREADY_EXISTS: return OM_E_ALREADY_EXISTS;
    case GRPC_STATUS_PERMISSION_DENIED: return OM_E_PERMISSION_DENIED;
    case GRPC_STATUS_RESOURCE_EXHAUSTED: return OM_E_NOMEM;
    case GRPC_STATUS_FAILED_PRECONDITION: return OM_E_FAILED_PRECONDITION;
    case GRPC_STATUS_ABORTED: return OM_E_CONCURRENT_MODIFICATION;
    case GRPC_STATUS_UNIMPLEMENTED: return OM_E_UNIMPLEMENTED;
    case GRPC_STATUS_UNAVAILABLE: return OM_E_UNAVAILABLE;
    case GRPC_STATUS_UNAUTHENTICATED: return OM_E_UNAUTHENTICATED;
    default: return OM_E_INTERNAL;
    }
}

int rpc_bb_read(grpc_byte_buffer *bb, uint8_t **out, size_t *len) {
    grpc_byte_buffer_reader r;
    if (!grpc_byte_buffer_reader_init(&r, bb)) return OM_E_MALFORMED_MESSAGE;
    grpc_slice s = grpc_byte_buffer_reader_readall(&r);
    grpc_byte_buffer_reader_destroy(&r);
    size_t n = GRPC_SLICE_LENGTH(s);
    *out = malloc(n ? n : 1);
    if (*out == NULL) {
        grpc_slice_unref(s);
        return OM_E_NOMEM;
    }
    memcpy(*out, GRPC_SLICE_START_PTR(s), n);
    *len = n;
    grpc_slice_unref(s);
    return 0;
}

grpc_byte_buffer *rpc_bb_pack(const ProtobufCMessage *msg) {
    size_t n = protobuf_c_message_get_packed_size(msg);
    grpc_slice s = grpc_slice_malloc(n);
    protobuf_c_message_pack(msg, GRPC_SLICE_START_PTR(s));
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return bb;
}
