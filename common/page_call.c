/* page_call.c — a list call's page (page.h): page_size and the keyset cursor
 * of the request's token, and the next page's token, allocated in the call.
 * Kept apart from page.c (the token format) so that page.c needs no rpc. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "om_err.h"
#include "page.h"
#include "rpc.h"

/* Decimal digits only, no sign, no overflow: 0 and *v set, else -1. */
static int key_parse(const char *s, size_t len, uint64_t *v) {
    if (len == 0 || len > 20) return -1;
    uint64_t x = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        unsigned d = (unsigned)(s[i] - '0');
        if (x > (UINT64_MAX - d) / 10) return -1;
        x = x * 10 + d;
    }
    *v = x;
    return 0;
}

int page_read(int32_t page_size, const char *token, const char *scope, int keys, page_req *pg) {
    memset(pg, 0, sizeof *pg);
    pg->scope = scope;
    pg->keys = keys == 2 ? 2 : 1;
    if (page_size_normalize(page_size, &pg->limit) != 0) return OM_E_INVALID_ARGUMENT;
    char *cursor = NULL;
    int rc = page_token_decode(scope, token, &cursor);
    if (rc != 0 || cursor == NULL) return rc;
    const char *colon = strchr(cursor, ':');
    if (pg->keys == 1)
        rc = colon == NULL && key_parse(cursor, strlen(cursor), &pg->k1) == 0 ? 0 : OM_E_INVALID_PAGE_TOKEN;
    else
        rc = colon != NULL && key_parse(cursor, (size_t)(colon - cursor), &pg->k1) == 0 &&
                     key_parse(colon + 1, strlen(colon + 1), &pg->k2) == 0
                 ? 0
                 : OM_E_INVALID_PAGE_TOKEN;
    free(cursor);
    pg->more = rc == 0;
    return rc;
}

int page_open(rpc_ctx *ctx, int32_t page_size, const char *token, const char *scope, int keys, page_req *pg) {
    int rc = page_read(page_size, token, scope, keys, pg);
    if (rc == OM_E_INVALID_ARGUMENT) {
        rpc_violation(ctx, "page_size", "must not be negative");
        return rpc_fail_invalid(ctx);
    }
    return rc != 0 ? rpc_fail(ctx, rc, NULL) : 0;
}

char *page_next(rpc_ctx *ctx, const page_req *pg, bool more, uint64_t k1, uint64_t k2) {
    char cursor[48], *tok = NULL;
    if (!more) return rpc_strdup(ctx, "");
    if (pg->keys == 2)
        snprintf(cursor, sizeof cursor, "%" PRIu64 ":%" PRIu64, k1, k2);
    else
        snprintf(cursor, sizeof cursor, "%" PRIu64, k1);
    if (page_token_encode(pg->scope, cursor, &tok) != 0) return rpc_strdup(ctx, "");
    char *out = rpc_strdup(ctx, tok);
    free(tok);
    return out;
}
