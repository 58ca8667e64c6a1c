/* fuzz_rpc.c — the generic target: a request of ANY method of ANY service.
 *
 * Input: two bytes select the method among every method of every service
 * descriptor generated from proto/ (the registry cmake/gen_descriptors.cmake
 * writes), the rest is the request payload. The target runs what the server
 * does before a handler, rpc_admit (common/rpc_server.c: protobuf-c unpack,
 * then pbcheck: UTF-8 of every string, Timestamp/Duration ranges), then
 * builds the reply status as rpc_server.c does (rpc_status_pack). It asserts that the outcome is
 * "accepted" or an INVALID_ARGUMENT status (issue 14: no malformed input
 * gets INTERNAL), that an accepted request holds only what a handler and
 * PostgreSQL can take (fuzz_oracle: strict UTF-8 strings, Timestamps and
 * Durations that convert to microseconds, checked independently of the
 * validator), that a refusal names a field, that the status a client
 * receives is itself valid (parses, and its strings are UTF-8), and that an
 * accepted request packs back to bytes that are accepted again. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <protobuf-c/protobuf-c.h>

#include "google/rpc/status.pb-c.h"
#include "fuzz_util.h"
#include "om_err.h"
#include "rpc_internal.h"
#ifdef OM_HAVE_PBCHECK
#include "pbcheck.h"
#endif

extern const ProtobufCServiceDescriptor *const lg_services[];

static const ProtobufCMethodDescriptor **methods;
static const char **method_paths;
static size_t n_methods;

#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "fuzz_rpc: %s:%d: %s (method %s)\n", __FILE__, __LINE__, \
                    #cond, path_now);                                                \
            abort();                                                                 \
        }                                                                            \
    } while (0)

static const char *path_now = "?";

static void init(void) {
    size_t n = 0;
    for (size_t s = 0; lg_services[s] != NULL; s++) n += lg_services[s]->n_methods;
    methods = calloc(n, sizeof *methods);
    method_paths = calloc(n, sizeof *method_paths);
    if (methods == NULL || method_paths == NULL) abort();
    for (size_t s = 0; lg_services[s] != NULL; s++) {
        const ProtobufCServiceDescriptor *sd = lg_services[s];
        for (unsigned m = 0; m < sd->n_methods; m++) {
            size_t len = strlen(sd->name) + strlen(sd->methods[m].name) + 3;
            char *p = malloc(len);
            if (p == NULL) abort();
            snprintf(p, len, "/%s/%s", sd->name, sd->methods[m].name);
            methods[n_methods] = &sd->methods[m];
            method_paths[n_methods++] = p;
        }
    }
    if (n_methods == 0) abort();
}

/* The server's admission step: rpc_admit (common/rpc_server.c), what
 * on_new_call runs before any handler; without the validator (before
 * issue-input, or OM_FUZZ_NO_PBCHECK) only the decoding. */
static int admit(const ProtobufCMethodDescriptor *md, const uint8_t *data, size_t size,
                 char *field, size_t field_len, ProtobufCMessage **out) {
#ifdef OM_HAVE_PBCHECK
    return rpc_admit(md->input, NULL, data, size, out, field, field_len);
#else
    (void)field_len;
    field[0] = '\0';
    *out = protobuf_c_message_unpack(md->input, NULL, size, data);
    return *out == NULL ? OM_E_MALFORMED_MESSAGE : 0;
#endif
}

/* Every string of a message (recursively) is valid UTF-8: what a strict
 * client (Python, Go) needs to parse the status we send. */
static int utf8_ok(const ProtobufCMessage *m) {
#ifdef OM_HAVE_PBCHECK
    char p[256];
    return pbcheck_message(m, p, sizeof p) == 0;
#else
    (void)m;
    return 1;
#endif
}

/* FUZZ_LIST=1: print the methods in selector order and exit (make_seeds.py
 * builds its seeds with it). */
int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    init();
    if (getenv("FUZZ_LIST") != NULL) {
        for (size_t i = 0; i < n_methods; i++) printf("%zu %s\n", i, method_paths[i]);
        exit(0);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (methods == NULL) init();
    if (size < 2) return 0;
    size_t idx = ((size_t)data[0] << 8 | data[1]) % n_methods;
    const ProtobufCMethodDescriptor *md = methods[idx];
    path_now = method_paths[idx];
    data += 2;
    size -= 2;

    char field[256] = "";
    ProtobufCMessage *req = NULL;
    int rc = admit(md, data, size, field, sizeof field, &req);
    CHECK(rc == 0 || om_err_status(rc) == GRPC_STATUS_INVALID_ARGUMENT);
    /* A refusal by the validator names the field. */
    if (rc != 0 && rc != OM_E_MALFORMED_MESSAGE) CHECK(field[0] != '\0' && memchr(field, '\0', sizeof field));

    if (rc == 0) {
        /* Accepted: nothing a handler (or PostgreSQL) cannot take. */
        const char *bad = fuzz_oracle(req);
        if (bad != NULL) fprintf(stderr, "fuzz_rpc: field %s accepted\n", bad);
        CHECK(bad == NULL);
    }
    /* Field number 0 is refused by the wire check (protobuf-c alone would
     * accept it in a two-byte tag and then refuse its own re-encoding). */
    if (rc == 0) CHECK(!fuzz_has_tag0(req));
    if (rc == 0) {
        /* Accepted: what the handler sees packs back and is accepted again. */
        size_t n = protobuf_c_message_get_packed_size(req);
        uint8_t *buf = malloc(n ? n : 1);
        CHECK(buf != NULL);
        CHECK(protobuf_c_message_pack(req, buf) == n);
        ProtobufCMessage *again = NULL;
        char f2[256] = "";
        CHECK(admit(md, buf, n, f2, sizeof f2, &again) == 0);
        protobuf_c_message_free_unpacked(again, NULL);
        free(buf);
    } else if (rc != 0) {
        /* Refused: the status as rpc_server.c builds it, read back as a
         * client would. */
        rpc_kv v = {.key = field, .value = om_err_message(rc)};
        rpc_error_info e = {
            .code = rc,
            .message = om_err_message(rc),
            .domain = "fuzz",
            .violations = &v,
            .n_violations = field[0] != '\0' ? 1 : 0,
        };
        uint8_t *bin = NULL;
        size_t len = 0;
        CHECK(rpc_status_pack(&e, &bin, &len) == 0);
        Google__Rpc__Status *st = google__rpc__status__unpack(NULL, len, bin);
        CHECK(st != NULL);
        CHECK(st->code == GRPC_STATUS_INVALID_ARGUMENT);
        CHECK(utf8_ok(&st->base));
        rpc_status rs;
        memset(&rs, 0, sizeof rs);
        rpc_status_unpack(bin, len, &rs);
        CHECK(strcmp(rs.reason, om_err_name(rc)) == 0);
        google__rpc__status__free_unpacked(st, NULL);
        free(bin);
    }
    if (req != NULL) protobuf_c_message_free_unpacked(req, NULL);
    return 0;
}
