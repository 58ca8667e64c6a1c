/* fuzz_idem.c — request ids (common/idem.c): the validation of a request id
 * before it reaches PostgreSQL and the key built from it.
 *
 * Input: byte 0 picks a method whose request has a `request_id` field (of
 * every service, from the generated descriptors) and the actor kind; then a
 * NUL-terminated request id; the rest is the request payload. The target
 * puts the id into the unpacked request, validates it as the server does
 * (pbcheck_message) and builds the idempotency key (idem_key_init).
 * Asserts: an id that is not valid UTF-8 is refused with a violation naming
 * `request_id` (issue 14: ff fe c0 af reached PostgreSQL); a valid one is
 * accepted; idem_key_init answers 0 or (for ids over IDEM_MAX_REQUEST_ID
 * bytes) INVALID_ARGUMENT; the hash depends only on the packed request (the
 * same request packed and unpacked again gives the same key). */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <protobuf-c/protobuf-c.h>

#include "fuzz_util.h"
#include "idem.h"
#include "om_err.h"
#ifdef OM_HAVE_PBCHECK
#include "pbcheck.h"
#endif

extern const ProtobufCServiceDescriptor *const lg_services[];

#define FAIL(...)                                   \
    do {                                            \
        fprintf(stderr, "fuzz_idem: " __VA_ARGS__); \
        fputc('\n', stderr);                        \
        abort();                                    \
    } while (0)

typedef struct target {
    const ProtobufCMessageDescriptor *in;
    const ProtobufCFieldDescriptor *rid;
    char path[160];
} target;

static target targets[256];
static size_t n_targets;

static void init(void) {
    for (size_t s = 0; lg_services[s] != NULL; s++) {
        const ProtobufCServiceDescriptor *sd = lg_services[s];
        for (unsigned m = 0; m < sd->n_methods && n_targets < 256; m++) {
            const ProtobufCFieldDescriptor *f =
                protobuf_c_message_descriptor_get_field_by_name(sd->methods[m].input, "request_id");
            if (f == NULL || f->type != PROTOBUF_C_TYPE_STRING || f->label == PROTOBUF_C_LABEL_REPEATED)
                continue;
            targets[n_targets].in = sd->methods[m].input;
            targets[n_targets].rid = f;
            snprintf(targets[n_targets].path, sizeof targets[n_targets].path, "/%s/%s", sd->name,
                     sd->methods[m].name);
            n_targets++;
        }
    }
    if (n_targets == 0) FAIL("no method has a request_id");
}

/* FUZZ_LIST=1: print the methods in selector order and exit (make_seeds.py). */
int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    init();
    if (getenv("FUZZ_LIST") != NULL) {
        for (size_t i = 0; i < n_targets; i++) printf("%zu %s\n", i, targets[i].path);
        exit(0);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (n_targets == 0) init();
    if (size < 2) return 0;
    const target *t = &targets[data[0] % n_targets];
    bool service = (data[0] & 0x80) != 0;
    const uint8_t *nul = memchr(data + 1, '\0', size - 1);
    if (nul == NULL) return 0;
    size_t idlen = (size_t)(nul - (data + 1));
    char *rid = malloc(idlen + 1);
    if (rid == NULL) return 0;
    memcpy(rid, data + 1, idlen + 1);
    const uint8_t *payload = nul + 1;
    size_t plen = size - (size_t)(payload - data);

    ProtobufCMessage *req = protobuf_c_message_unpack(t->in, NULL, plen, payload);
    if (req == NULL) {
        free(rid);
        return 0;
    }
    char **slot = (char **)((char *)req + t->rid->offset);
    char *orig = *slot;
    *slot = rid;

    bool valid_id = fuzz_utf8_valid((const unsigned char *)rid, idlen);
    int rc = 0;
#ifdef OM_HAVE_PBCHECK
    char path[256] = "";
    rc = pbcheck_message(req, path, sizeof path);
    if (rc != 0 && rc != OM_E_INVALID_ARGUMENT) FAIL("%s: pbcheck answered %s", t->path, om_err_name(rc));
    if (!valid_id && rc == 0) FAIL("%s: request_id that is not UTF-8 accepted", t->path);
    if (!valid_id && strstr(path, "request_id") == NULL && rc != 0) {
        /* Another field may be invalid too; the id must be refused alone. */
        ProtobufCMessage *bare = protobuf_c_message_unpack(t->in, NULL, 0, (const uint8_t *)"");
        if (bare == NULL) FAIL("cannot make an empty %s", t->in->name);
        char **bslot = (char **)((char *)bare + t->rid->offset);
        char *borig = *bslot;
        *bslot = rid;
        char p2[256] = "";
        if (pbcheck_message(bare, p2, sizeof p2) != OM_E_INVALID_ARGUMENT || strcmp(p2, "request_id") != 0)
            FAIL("%s: bad request_id alone refused as '%s'", t->path, p2);
        *bslot = borig;
        protobuf_c_message_free_unpacked(bare, NULL);
    }
#else
    (void)valid_id;
#endif
    if (rc == 0) {
        om_actor actor = {0};
        if (service) {
            size_t n = idlen < sizeof actor.service - 1 ? idlen : sizeof actor.service - 1;
            memcpy(actor.service, rid, n);
            if (actor.service[0] == '\0') actor.service[0] = 'x';
        } else {
            actor.user_id = (uint64_t)idlen * 0x9e3779b97f4a7c15ULL + 1;
        }
        idem_key k1, k2;
        int r1 = idem_key_init(&k1, &actor, t->path, rid, req);
        if (r1 != 0 && r1 != OM_E_INVALID_ARGUMENT) FAIL("idem_key_init answered %s", om_err_name(r1));
        if ((r1 == OM_E_INVALID_ARGUMENT) != (idlen > IDEM_MAX_REQUEST_ID))
            FAIL("id of %zu bytes: %s", idlen, om_err_name(r1));
        if (strlen(k1.actor_buf) >= sizeof k1.actor_buf) FAIL("actor key overflow");
        if (r1 == 0 && idlen > 0 && !fuzz_has_tag0(req)) {
            /* Same request after a round trip: same key. */
            size_t n = protobuf_c_message_get_packed_size(req);
            uint8_t *buf = malloc(n ? n : 1);
            if (buf == NULL) FAIL("oom");
            protobuf_c_message_pack(req, buf);
            ProtobufCMessage *again = protobuf_c_message_unpack(t->in, NULL, n, buf);
            if (again == NULL) FAIL("%s: own packing does not unpack", t->path);
            if (idem_key_init(&k2, &actor, t->path, rid, again) != 0) FAIL("second key failed");
            if (memcmp(k1.hash, k2.hash, sizeof k1.hash) != 0) FAIL("%s: hash not stable", t->path);
            protobuf_c_message_free_unpacked(again, NULL);
            free(buf);
        }
    }
    *slot = orig;
    protobuf_c_message_free_unpacked(req, NULL);
    free(rid);
    return 0;
}
