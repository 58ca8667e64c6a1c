/* connections_cache.c — the hot checks' in-process cache; see
 * connections_cache.h for the invalidation protocol. */
#include "connections_cache.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#define SLOTS (1u << 14)
#define STRIPES 256u

enum { K_NONE = 0, K_FACTS, K_SEAT, K_SOURCES };

typedef struct entry {
    uint8_t kind;
    uint64_t k1, k2;
    uint64_t gen;
    int64_t expires_ms;
    union {
        conn_facts facts;
        conn_seat seat;
        struct {
            int n;
            uint64_t ids[CONN_CACHE_MAX_SOURCES];
        } sources;
    } v;
} entry;

static entry slots[SLOTS];
static pthread_spinlock_t locks[STRIPES];
static atomic_uint_fast64_t generation = 1;
static int64_t ttl_ms = CONN_CACHE_TTL_DEFAULT_MS;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void init_locks(void) {
    for (unsigned i = 0; i < STRIPES; i++) pthread_spin_init(&locks[i], PTHREAD_PROCESS_PRIVATE);
}

void conn_cache_init(int64_t ttl) {
    pthread_once(&once, init_locks);
    ttl_ms = ttl > 0 ? ttl : CONN_CACHE_TTL_DEFAULT_MS;
}

int64_t conn_cache_ttl_ms(void) { return ttl_ms; }

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint64_t conn_cache_gen(void) { return atomic_load(&generation); }

void conn_cache_invalidate(void) { atomic_fetch_add(&generation, 1); }

static uint32_t slot_of(int kind, uint64_t k1, uint64_t k2) {
    uint64_t h = k1 * 0x9E3779B97F4A7C15ULL ^ (k2 + 0x632BE59BD9B4E019ULL + ((uint64_t)kind << 56));
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ULL;
    h ^= h >> 32;
    return (uint32_t)(h & (SLOTS - 1));
}

/* Copies the entry out under its stripe lock when it is a live hit. */
static bool get(int kind, uint64_t k1, uint64_t k2, entry *out) {
    pthread_once(&once, init_locks);
    uint32_t i = slot_of(kind, k1, k2);
    pthread_spinlock_t *l = &locks[i % STRIPES];
    uint64_t gen = atomic_load(&generation);
    int64_t now = now_ms();
    pthread_spin_lock(l);
    entry *e = &slots[i];
    bool hit = e->kind == kind && e->k1 == k1 && e->k2 == k2 && e->gen == gen && e->expires_ms > now;
    if (hit) *out = *e;
    pthread_spin_unlock(l);
    return hit;
}

static void put(const entry *in) {
    pthread_once(&once, init_locks);
    uint32_t i = slot_of(in->kind, in->k1, in->k2);
    pthread_spinlock_t *l = &locks[i % STRIPES];
    pthread_spin_lock(l);
    slots[i] = *in;
    pthread_spin_unlock(l);
}

static void head(entry *e, int kind, uint64_t gen, uint64_t k1, uint64_t k2) {
    memset(e, 0, sizeof *e);
    e->kind = (uint8_t)kind;
    e->k1 = k1;
    e->k2 = k2;
    e->gen = gen;
    e->expires_ms = now_ms() + ttl_ms;
}

bool conn_cache_get_facts(uint64_t s, uint64_t t, conn_facts *out) {
    entry e;
    if (!get(K_FACTS, s, t, &e)) return false;
    *out = e.v.facts;
    return true;
}

void conn_cache_put_facts(uint64_t gen, uint64_t s, uint64_t t, const conn_facts *f) {
    entry e;
    head(&e, K_FACTS, gen, s, t);
    e.v.facts = *f;
    put(&e);
}

bool conn_cache_get_seat(uint64_t hub_id, uint64_t user_id, conn_seat *out) {
    entry e;
    if (!get(K_SEAT, hub_id, user_id, &e)) return false;
    *out = e.v.seat;
    return true;
}

void conn_cache_put_seat(uint64_t gen, uint64_t hub_id, uint64_t user_id, const conn_seat *seat) {
    entry e;
    head(&e, K_SEAT, gen, hub_id, user_id);
    e.v.seat = *seat;
    put(&e);
}

bool conn_cache_get_sources(uint64_t t, uint64_t *out, int *n) {
    entry e;
    if (!get(K_SOURCES, t, 0, &e)) return false;
    *n = e.v.sources.n;
    memcpy(out, e.v.sources.ids, (size_t)e.v.sources.n * sizeof *out);
    return true;
}

void conn_cache_put_sources(uint64_t gen, uint64_t t, const uint64_t *src, int n) {
    if (n > CONN_CACHE_MAX_SOURCES) return; /* cannot happen (5 accounts); do not cache a partial list */
    entry e;
    head(&e, K_SOURCES, gen, t, 0);
    e.v.sources.n = n;
    memcpy(e.v.sources.ids, src, (size_t)n * sizeof *src);
    put(&e);
}
