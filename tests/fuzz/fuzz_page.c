/* fuzz_page.c — page tokens (common/page.c).
 *
 * First input byte, low bit:
 *   0  the rest is a token, decoded against a fixed scope (what a client
 *      sends as page_token);
 *   1  the rest is "<scope>\0<cursor>": encoded, then decoded with the same
 *      scope (must give the cursor back) and with another scope (must be
 *      refused).
 * Asserts: decode answers 0 or INVALID_PAGE_TOKEN only, and a token it
 * accepts carries a cursor of at most PAGE_CURSOR_MAX bytes. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "om_err.h"
#include "page.h"

#define SCOPE "accounts.ListMemberships|hub=123|role=SUPER_ADMIN"
#define KEY "fuzz-page-token-key"

#define FAIL(...)                                     \
    do {                                              \
        fprintf(stderr, "fuzz_page: " __VA_ARGS__);   \
        fputc('\n', stderr);                          \
        abort();                                      \
    } while (0)

static int ready;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!ready) {
        if (page_token_set_key(KEY, strlen(KEY)) != 0) FAIL("cannot set the key");
        ready = 1;
    }
    if (size < 1 || size > 8192) return 0;
    uint8_t mode = data[0] & 1;
    char *s = malloc(size); /* the rest, NUL-terminated */
    if (s == NULL) return 0;
    memcpy(s, data + 1, size - 1);
    s[size - 1] = '\0';
    char *cursor = NULL;
    if (mode == 0) {
        int rc = page_token_decode(SCOPE, s, &cursor);
        if (rc != 0 && rc != OM_E_INVALID_PAGE_TOKEN) FAIL("decode answered %s", om_err_name(rc));
        if (rc == 0 && cursor != NULL && strlen(cursor) > PAGE_TOKEN_MAX) FAIL("cursor too long");
        if (rc != 0 && cursor != NULL) FAIL("cursor left on failure");
        free(cursor);
        free(s);
        return 0;
    }
    const char *scope = s;
    size_t sl = strlen(s);
    const char *cur = sl + 1 < size - 1 ? s + sl + 1 : "";
    char *tok = NULL;
    int rc = page_token_encode(scope, cur, &tok);
    if (strlen(cur) > PAGE_CURSOR_MAX) {
        if (rc == 0) FAIL("encoded an oversized cursor");
        free(s);
        return 0;
    }
    if (rc == OM_E_NOMEM) goto out;
    if (rc != 0) FAIL("encode answered %s", om_err_name(rc));
    if (strlen(tok) > PAGE_TOKEN_MAX) FAIL("token of %zu bytes for a valid cursor", strlen(tok));
    rc = page_token_decode(scope, tok, &cursor);
    if (rc != 0) FAIL("own token refused: %s", om_err_name(rc));
    if (cursor == NULL || strcmp(cursor, cur) != 0) FAIL("cursor not given back");
    free(cursor);
    cursor = NULL;
    char other[64];
    snprintf(other, sizeof other, "%s|x", strcmp(scope, "a") == 0 ? "b" : "a");
    if (strcmp(other, scope) != 0 && page_token_decode(other, tok, &cursor) != OM_E_INVALID_PAGE_TOKEN)
        FAIL("token accepted for another scope");
    free(cursor);
out:
    free(tok);
    free(s);
    return 0;
}
