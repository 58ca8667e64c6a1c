/* fuzz_evt.c — event envelopes as a consumer decodes them (common/evt.c
 * evt_envelope_unpack), then the payload as the consuming service would:
 * unpacked with the message type the envelope names (every message of the
 * contract, from the generated descriptors) and checked like a request.
 * Asserts: an envelope that is accepted has a valid id and consistent
 * payload pointers; nothing crashes or leaks. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "evt.h"
#include "om_err.h"
#ifdef OM_HAVE_PBCHECK
#include "pbcheck.h"
#endif

extern const ProtobufCMessageDescriptor *const fuzz_messages[];

#define FAIL(...)                                   \
    do {                                            \
        fprintf(stderr, "fuzz_evt: " __VA_ARGS__);  \
        fputc('\n', stderr);                        \
        abort();                                    \
    } while (0)

static const ProtobufCMessageDescriptor *find_type(const char *name) {
    for (size_t i = 0; fuzz_messages[i] != NULL; i++)
        if (strcmp(fuzz_messages[i]->name, name) == 0) return fuzz_messages[i];
    return NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    evt_event ev;
    memset(&ev, 0xa5, sizeof ev);
    ProtobufCMessage *env = evt_envelope_unpack(data, size, &ev);
    if (env == NULL) return 0;
    if (ev.id == NULL || strlen(ev.id) != 36) FAIL("accepted an envelope without a valid id");
    if (ev.stream_id != NULL) FAIL("stream_id set");
    if (ev.payload_len != 0 && ev.payload == NULL) FAIL("payload pointer and length disagree");
    if (ev.type != NULL && ev.payload != NULL) {
        const ProtobufCMessageDescriptor *d = find_type(ev.type);
        if (d != NULL) {
            ProtobufCMessage *p = protobuf_c_message_unpack(d, NULL, ev.payload_len, ev.payload);
            if (p != NULL) {
#ifdef OM_HAVE_PBCHECK
                char path[256] = "";
                int rc = pbcheck_message(p, path, sizeof path);
                if (rc != 0 && rc != OM_E_INVALID_ARGUMENT) FAIL("pbcheck answered %s", om_err_name(rc));
#endif
                protobuf_c_message_free_unpacked(p, NULL);
            }
        }
    }
    protobuf_c_message_free_unpacked(env, NULL);
    return 0;
}
