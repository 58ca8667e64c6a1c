/* om_mem.c — see om_mem.h. */
#include "om_mem.h"

#include <stdlib.h>

struct om_block {
    struct om_block *next;
    max_align_t data[];
};

void *om_arena_alloc(void *arena, size_t n) {
    om_arena *a = arena;
    struct om_block *b = calloc(1, sizeof *b + n + 1);
    if (b == NULL) abort();
    b->next = a->blocks;
    a->blocks = b;
    return b->data;
}

void om_arena_free(om_arena *a) {
    struct om_block *b = a->blocks;
    while (b != NULL) {
        struct om_block *n = b->next;
        free(b);
        b = n;
    }
    a->blocks = NULL;
}
