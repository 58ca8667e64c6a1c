/* page.h — list paging (SPEC 8): page_size rules and opaque page tokens.
 *
 * A token carries the list's keyset cursor (e.g. the last id returned),
 * bound to one list call and its filters (the scope) and signed with a key
 * all replicas share (ORGMESH_PAGE_TOKEN_KEY), so a client can neither forge
 * a cursor nor reuse a token with other filters. */
#ifndef OM_PAGE_H
#define OM_PAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PAGE_SIZE_DEFAULT 50
#define PAGE_SIZE_MAX 1000
#define PAGE_CURSOR_MAX 1024   /* bytes of cursor a token may carry */
#define PAGE_TOKEN_MAX 2048    /* longer tokens are refused unread */

/* 0 -> PAGE_SIZE_DEFAULT, above PAGE_SIZE_MAX -> PAGE_SIZE_MAX, negative ->
 * OM_E_INVALID_ARGUMENT. */
int page_size_normalize(int32_t requested, int *out);

/* The token for the page after `cursor`, malloc'd into *out. A NULL cursor
 * (no more pages) gives "" — the next_page_token of the last page.
 * `scope` names the list and every filter that shapes it, e.g.
 * "accounts.ListMemberships|hub=123|role=SUPER_ADMIN" (not page_size). */
int page_token_encode(const char *scope, const char *cursor, char **out);

/* The cursor in `token`, malloc'd into *cursor; NULL or "" (first page)
 * gives a NULL cursor. OM_E_INVALID_PAGE_TOKEN for anything not made by
 * page_token_encode with this scope and key. */
int page_token_decode(const char *scope, const char *token, char **cursor);

/* Replace the signing key (default: ORGMESH_PAGE_TOKEN_KEY, else a
 * random key of this process). For start-up and tests; 1..256 bytes. */
int page_token_set_key(const void *key, size_t len);

/* ---- a list call's page (page_call.c) ----------------------------------------------------
 *
 * One way for every list RPC: page_open reads page_size and the token of the
 * request, page_next makes the token of the page after the last row kept.
 * The cursor is a keyset of one or two unsigned keys (e.g. the last id, or
 * a name's hash and an id), spelled "k1" or "k1:k2" in the token; never an
 * offset. */
struct rpc_ctx;

typedef struct page_req {
    int limit;         /* page_size, normalised */
    int keys;          /* 1 or 2: how the cursor is spelled */
    bool more;         /* the token carried a cursor (not the first page) */
    uint64_t k1, k2;   /* the cursor; 0 on the first page */
    const char *scope; /* see page_token_encode */
} page_req;

/* 0, or non-zero with the call already failed: INVALID_ARGUMENT with a
 * page_size violation for a negative size, INVALID_PAGE_TOKEN for a token
 * of another list or a cursor of another spelling. */
int page_open(struct rpc_ctx *ctx, int32_t page_size, const char *token, const char *scope, int keys, page_req *pg);

/* page_open's reading without failing the call: 0, OM_E_INVALID_ARGUMENT or
 * OM_E_INVALID_PAGE_TOKEN (for handlers that fail in their own way). */
int page_read(int32_t page_size, const char *token, const char *scope, int keys, page_req *pg);

/* The next page's token, allocated in the call: "" when !more, else the
 * token of the cursor (k1, k2) (k2 ignored for a one-key list). */
char *page_next(struct rpc_ctx *ctx, const page_req *pg, bool more, uint64_t k1, uint64_t k2);

/* For lists that read limit + 1 rows: trims *n to the page and tells
 * whether another page follows. */
static inline bool page_trim(const page_req *pg, int *n) {
    if (*n <= pg->limit) return false;
    *n = pg->limit;
    return true;
}

#endif
