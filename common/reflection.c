/* reflection.c — gRPC server reflection (grpc.reflection.v1 and v1alpha,
 * which share one wire format) answered from the FileDescriptorSet that
 * `protoc --descriptor_set_out --include_imports` wrote at build time.
 * The index is built once at start; answering never allocates from shared
 * state, so any poller thread may answer. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "google/protobuf/descriptor.pb-c.h"
#include "grpc/reflection/v1/reflection.pb-c.h"
#include "rpc_internal.h"

typedef struct refl_file {
    char *name;
    const uint8_t *bytes; /* exactly as in the set */
    size_t len;
    int *deps;            /* indices of dependencies */
    size_t n_deps;
} refl_file;

typedef struct refl_symbol {
    char *name;
    int file;
} refl_symbol;

struct refl_index {
    uint8_t *set;
    refl_file *files;
    size_t n_files;
    refl_symbol *syms;
    size_t n_syms, cap_syms;
};

static int read_varint(const uint8_t *p, size_t len, size_t *pos, uint64_t *v) {
    *v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (*pos >= len) return -1;
        uint8_t b = p[(*pos)++];
        *v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) return 0;
    }
    return -1;
}

static int add_symbol(refl_index *ix, const char *prefix, const char *name, int file) {
    if (ix->n_syms == ix->cap_syms) {
        size_t cap = ix->cap_syms ? ix->cap_syms * 2 : 64;
        refl_symbol *s = realloc(ix->syms, cap * sizeof *s);
        if (s == NULL) return OM_E_NOMEM;
        ix->syms = s;
        ix->cap_syms = cap;
    }
    size_t n = strlen(prefix) + strlen(name) + 2;
    char *full = malloc(n);
    if (full == NULL) return OM_E_NOMEM;
    snprintf(full, n, "%s%s%s", prefix, prefix[0] ? "." : "", name);
    ix->syms[ix->n_syms].name = full;
    ix->syms[ix->n_syms].file = file;
    ix->n_syms++;
    return 0;
}

static int add_messages(refl_index *ix, const char *prefix, Google__Protobuf__DescriptorProto **msgs,
                        size_t n, int file) {
    for (size_t i = 0; i < n; i++) {
        int rc = add_symbol(ix, prefix, msgs[i]->name, file);
        if (rc != 0) return rc;
        const char *full = ix->syms[ix->n_syms - 1].name;
        char *copy = strdup(full);
        if (copy == NULL) return OM_E_NOMEM;
        for (size_t j = 0; j < msgs[i]->n_enum_type && rc == 0; j++)
            rc = add_symbol(ix, copy, msgs[i]->enum_type[j]->name, file);
        if (rc == 0) rc = add_messages(ix, copy, msgs[i]->nested_type, msgs[i]->n_nested_type, file);
        free(copy);
        if (rc != 0) return rc;
    }
    return 0;
}

static int index_file(refl_index *ix, int fi, const Google__Protobuf__FileDescriptorProto *fd) {
    const char *pkg = fd->package ? fd->package : "";
    int rc = add_messages(ix, pkg, fd->message_type, fd->n_message_type, fi);
    for (size_t i = 0; i < fd->n_enum_type && rc == 0; i++)
        rc = add_symbol(ix, pkg, fd->enum_type[i]->name, fi);
    for (size_t i = 0; i < fd->n_service && rc == 0; i++) {
        rc = add_symbol(ix, pkg, fd->service[i]->name, fi);
        if (rc != 0) break;
        char *svc = strdup(ix->syms[ix->n_syms - 1].name);
        if (svc == NULL) return OM_E_NOMEM;
        for (size_t j = 0; j < fd->service[i]->n_method && rc == 0; j++)
            rc = add_symbol(ix, svc, fd->service[i]->method[j]->name, fi);
        free(svc);
    }
    return rc;
}

static int find_file(const refl_index *ix, const char *name) {
    for (size_t i = 0; i < ix->n_files; i++)
        if (strcmp(ix->files[i].name, name) == 0) return (int)i;
    return -1;
}

int refl_new(refl_index **out, const uint8_t *fds, size_t len) {
    refl_index *ix = calloc(1, sizeof *ix);
    if (ix == NULL) return OM_E_NOMEM;
    ix->set = malloc(len ? len : 1);
    if (ix->set == NULL) {
        free(ix);
        return OM_E_NOMEM;
    }
    memcpy(ix->set, fds, len);
    int rc = 0;
    Google__Protobuf__FileDescriptorProto **parsed = NULL;
    /* FileDescriptorSet is `repeated FileDescriptorProto file = 1`. */
    size_t pos = 0;
    while (pos < len && rc == 0) {
        uint64_t key, n;
        if (read_varint(ix->set, len, &pos, &key) != 0 || key != 0x0a ||
            read_varint(ix->set, len, &pos, &n) != 0 || n > len - pos) {
            rc = OM_E_MALFORMED_MESSAGE;
            break;
        }
        refl_file *files = realloc(ix->files, (ix->n_files + 1) * sizeof *files);
        Google__Protobuf__FileDescriptorProto **p2 = realloc(parsed, (ix->n_files + 1) * sizeof *p2);
        if (files) ix->files = files;
        if (p2) parsed = p2;
        if (!files || !p2) {
            rc = OM_E_NOMEM;
            break;
        }
        refl_file *f = &ix->files[ix->n_files];
        memset(f, 0, sizeof *f);
        f->bytes = ix->set + pos;
        f->len = (size_t)n;
        parsed[ix->n_files] = google__protobuf__file_descriptor_proto__unpack(NULL, f->len, f->bytes);
        if (parsed[ix->n_files] == NULL) {
            rc = OM_E_MALFORMED_MESSAGE;
            break;
        }
        f->name = strdup(parsed[ix->n_files]->name ? parsed[ix->n_files]->name : "");
        ix->n_files++;
        if (f->name == NULL) rc = OM_E_NOMEM;
        pos += (size_t)n;
    }
    for (size_t i = 0; i < ix->n_files && rc == 0; i++) {
        const Google__Protobuf__FileDescriptorProto *fd = parsed[i];
        rc = index_file(ix, (int)i, fd);
        if (rc != 0) break;
        ix->files[i].deps = calloc(fd->n_dependency + 1, sizeof(int));
        if (ix->files[i].deps == NULL) {
            rc = OM_E_NOMEM;
            break;
        }
        for (size_t j = 0; j < fd->n_dependency; j++) {
            int d = find_file(ix, fd->dependency[j]);
            if (d >= 0) ix->files[i].deps[ix->files[i].n_deps++] = d;
        }
    }
    for (size_t i = 0; i < ix->n_files; i++)
        if (parsed && parsed[i]) google__protobuf__file_descriptor_proto__free_unpacked(parsed[i], NULL);
    free(parsed);
    if (rc != 0) {
        refl_free(ix);
        return rc;
    }
    *out = ix;
    return 0;
}

void refl_free(refl_index *ix) {
    if (ix == NULL) return;
    for (size_t i = 0; i < ix->n_files; i++) {
        free(ix->files[i].name);
        free(ix->files[i].deps);
    }
    for (size_t i = 0; i < ix->n_syms; i++) free(ix->syms[i].name);
    free(ix->files);
    free(ix->syms);
    free(ix->set);
    free(ix);
}

/* Mark `fi` and everything it imports, in dependency-first order. */
static void collect(const refl_index *ix, int fi, char *seen, int *order, size_t *n) {
    if (seen[fi]) return;
    seen[fi] = 1;
    order[(*n)++] = fi;
    for (size_t i = 0; i < ix->files[fi].n_deps; i++) collect(ix, ix->files[fi].deps[i], seen, order, n);
}

static int find_symbol(const refl_index *ix, const char *name) {
    for (size_t i = 0; i < ix->n_syms; i++)
        if (strcmp(ix->syms[i].name, name) == 0) return ix->syms[i].file;
    return -1;
}

int refl_answer(const refl_index *ix, const char *const *services, size_t n_services,
                const uint8_t *req_buf, size_t req_len, uint8_t **out, size_t *out_len) {
    Grpc__Reflection__V1__ServerReflectionRequest *req =
        grpc__reflection__v1__server_reflection_request__unpack(NULL, req_len, req_buf);
    if (req == NULL) return OM_E_MALFORMED_MESSAGE;

    Grpc__Reflection__V1__ServerReflectionResponse resp =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__INIT;
    Grpc__Reflection__V1__FileDescriptorResponse files =
        GRPC__REFLECTION__V1__FILE_DESCRIPTOR_RESPONSE__INIT;
    Grpc__Reflection__V1__ListServiceResponse list = GRPC__REFLECTION__V1__LIST_SERVICE_RESPONSE__INIT;
    Grpc__Reflection__V1__ExtensionNumberResponse ext =
        GRPC__REFLECTION__V1__EXTENSION_NUMBER_RESPONSE__INIT;
    Grpc__Reflection__V1__ErrorResponse err = GRPC__REFLECTION__V1__ERROR_RESPONSE__INIT;
    Grpc__Reflection__V1__ServiceResponse *svc = NULL, **svc_ptrs = NULL;
    ProtobufCBinaryData *blobs = NULL;
    char *seen = NULL;
    int *order = NULL;
    int rc = OM_E_NOMEM;

    resp.valid_host = req->host ? req->host : "";
    resp.original_request = req;
    int fi = -1;
    switch (req->message_request_case) {
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_BY_FILENAME:
        fi = find_file(ix, req->file_by_filename);
        break;
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_SYMBOL:
        fi = find_symbol(ix, req->file_containing_symbol);
        break;
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_ALL_EXTENSION_NUMBERS_OF_TYPE:
        if (find_symbol(ix, req->all_extension_numbers_of_type) >= 0) {
            /* orgmesh defines no extensions. */
            ext.base_type_name = req->all_extension_numbers_of_type;
            resp.message_response_case =
                GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ALL_EXTENSION_NUMBERS_RESPONSE;
            resp.all_extension_numbers_response = &ext;
        }
        break;
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_LIST_SERVICES:
        svc = calloc(n_services + 1, sizeof *svc);
        svc_ptrs = calloc(n_services + 1, sizeof *svc_ptrs);
        if (!svc || !svc_ptrs) goto done;
        for (size_t i = 0; i < n_services; i++) {
            grpc__reflection__v1__service_response__init(&svc[i]);
            svc[i].name = (char *)services[i];
            svc_ptrs[i] = &svc[i];
        }
        list.n_service = n_services;
        list.service = svc_ptrs;
        resp.message_response_case =
            GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_LIST_SERVICES_RESPONSE;
        resp.list_services_response = &list;
        break;
    default:
        break;
    }

    if (fi >= 0) {
        seen = calloc(ix->n_files, 1);
        order = calloc(ix->n_files, sizeof *order);
        blobs = calloc(ix->n_files, sizeof *blobs);
        if (!seen || !order || !blobs) goto done;
        size_t n = 0;
        collect(ix, fi, seen, order, &n);
        for (size_t i = 0; i < n; i++) {
            blobs[i].data = (uint8_t *)ix->files[order[i]].bytes;
            blobs[i].len = ix->files[order[i]].len;
        }
        files.n_file_descriptor_proto = n;
        files.file_descriptor_proto = blobs;
        resp.message_response_case =
            GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_FILE_DESCRIPTOR_RESPONSE;
        resp.file_descriptor_response = &files;
    } else if (resp.message_response_case ==
               GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE__NOT_SET) {
        err.error_code = GRPC_STATUS_NOT_FOUND;
        err.error_message = "not found";
        if (req->message_request_case ==
            GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_EXTENSION)
            err.error_message = "no extensions are defined";
        else if (req->message_request_case ==
                 GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST__NOT_SET) {
            err.error_code = GRPC_STATUS_INVALID_ARGUMENT;
            err.error_message = "empty request";
        }
        resp.message_response_case =
            GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ERROR_RESPONSE;
        resp.error_response = &err;
    }

    *out_len = protobuf_c_message_get_packed_size(&resp.base);
    *out = malloc(*out_len ? *out_len : 1);
    if (*out == NULL) goto done;
    protobuf_c_message_pack(&resp.base, *out);
    rc = 0;
done:
    free(svc);
    free(svc_ptrs);
    free(blobs);
    free(seen);
    free(order);
    grpc__reflection__v1__server_reflection_request__free_unpacked(req, NULL);
    return rc;
}
