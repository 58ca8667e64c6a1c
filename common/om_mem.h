/* om_mem.h — the one allocator interface for results that outlive a store
 * or helper function: `om_mem` hands out zeroed memory owned by someone
 * else, either a call (rpc_calloc on the call's arena, freed with the call)
 * or, outside a call (event handlers, timers), an `om_arena` freed at once
 * when the work is done. Store functions take an om_mem and never free. */
#ifndef OM_MEM_H
#define OM_MEM_H

#include <stddef.h>
#include <string.h>

typedef struct om_mem {
    void *(*alloc)(void *ud, size_t n); /* zeroed; never NULL (see om_arena_alloc) */
    void *ud;
} om_mem;

/* Memory for code outside a call: every block is freed by om_arena_free. */
typedef struct om_arena {
    void *blocks;
} om_arena;

/* n zeroed bytes (at least 1) in the arena. Small blocks: out of memory
 * aborts the process rather than leaving a half-read result. */
void *om_arena_alloc(void *arena, size_t n);
void om_arena_free(om_arena *a);

static inline om_mem om_arena_mem(om_arena *a) { return (om_mem){om_arena_alloc, a}; }

/* A copy of s (NULL reads as "") in m's memory. */
static inline const char *om_strdup(om_mem *m, const char *s) {
    if (s == NULL) s = "";
    size_t n = strlen(s) + 1;
    char *p = m->alloc(m->ud, n);
    if (p == NULL) return "";
    memcpy(p, s, n);
    return p;
}

#endif
