/* page.h — list paging (SPEC 8): page_size rules and opaque page tokens.
 *
 * A token carries the list's keyset cursor (e.g. the last id returned),
 * bound to one list call and its filters (the scope) and signed with a key
 * all replicas share (ORGMESH_PAGE_TOKEN_KEY), so a client can neither forge
 * a cursor nor reuse a token with other filters. */
#ifndef OM_PAGE_H
#define OM_PAGE_H

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

#endif
