/* pg.h — PostgreSQL for orgmesh services (libpq is touched only in common/).
 *
 * Each worker thread owns one connection (pg_local), connected lazily and
 * re-connected after a failure. Queries are parameterised only; statements are
 * prepared once per connection and reused. Handlers never see a PGresult. */
#ifndef OM_PG_H
#define OM_PG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct pg_conn pg_conn;
typedef struct pg_res pg_res;

#define PG_MAX_PARAMS 32

/* Parameters of one query, built on the stack:
 *   pg_params p = {0}; pg_p_u64(&p, hub_id); pg_p_str(&p, name); */
typedef struct pg_params {
    int n;
    const char *val[PG_MAX_PARAMS];
    int len[PG_MAX_PARAMS];
    int fmt[PG_MAX_PARAMS]; /* 0 text, 1 binary */
    char num[PG_MAX_PARAMS][24];
    bool overflow;          /* more than PG_MAX_PARAMS: pg_exec fails */
    bool out_of_range;      /* a pg_p_u64 above INT64_MAX: pg_exec fails */
} pg_params;

/* uint64 ids (hub ids, user ids) are stored in `bigint` columns with
 * CHECK (id > 0): ids above INT64_MAX are refused when a request is validated
 * (pg_id_valid), and pg_exec answers OM_E_INVALID_ARGUMENT if one slips into
 * pg_p_u64. See docs/common/pg.md. */
static inline bool pg_id_valid(uint64_t id) { return id > 0 && id <= (uint64_t)INT64_MAX; }

void pg_p_str(pg_params *p, const char *s);   /* NULL -> SQL NULL */
/* n bytes sent in binary format: the parameter must be text/varchar
 * (write $1::text where PostgreSQL cannot infer it). */
void pg_p_strn(pg_params *p, const char *s, size_t n);
void pg_p_i64(pg_params *p, int64_t v);
void pg_p_u64(pg_params *p, uint64_t v);      /* bigint; > INT64_MAX fails */
void pg_p_bool(pg_params *p, bool v);
void pg_p_bytes(pg_params *p, const void *data, size_t n); /* bytea, binary */
void pg_p_null(pg_params *p);

/* All the parameters of a query in one call, each bound by its C type:
 *   pg_params p = {0};
 *   pg_args(&p, hub_id, name, deleted);   -- $1 bigint, $2 text, $3 boolean
 * char * / const char * -> pg_p_str; bool -> pg_p_bool; a signed integer
 * (or enum of negative values) -> pg_p_i64; an unsigned one (and an enum)
 * -> pg_p_u64 (same text below 2^63; above it the query fails, as
 * pg_p_u64's). Other kinds go as pg_arg values: pg_a_strn(s, n),
 * pg_a_bytes(d, n), pg_a_null(). Another type does not compile. At most 24 a
 * call (append with another call). Trap: in C `true`, `a == b` and `!x` are
 * ints (bound as 1/0): write (bool)(a == b) for a boolean. */
typedef struct pg_arg {
    enum { PG_A_STR, PG_A_STRN, PG_A_I64, PG_A_U64, PG_A_BOOL, PG_A_BYTES, PG_A_NULL } t;
    const void *s;
    size_t n;
    int64_t i;
    uint64_t u;
} pg_arg;

static inline pg_arg pg_a_str(const char *s) { return (pg_arg){.t = PG_A_STR, .s = s}; }
static inline pg_arg pg_a_i64(int64_t v) { return (pg_arg){.t = PG_A_I64, .i = v}; }
static inline pg_arg pg_a_u64(uint64_t v) { return (pg_arg){.t = PG_A_U64, .u = v}; }
static inline pg_arg pg_a_bool(bool v) { return (pg_arg){.t = PG_A_BOOL, .u = v}; }
static inline pg_arg pg_a_arg(pg_arg a) { return a; }
static inline pg_arg pg_a_strn(const char *s, size_t n) { return (pg_arg){.t = PG_A_STRN, .s = s, .n = n}; }
static inline pg_arg pg_a_bytes(const void *d, size_t n) { return (pg_arg){.t = PG_A_BYTES, .s = d, .n = n}; }
static inline pg_arg pg_a_null(void) { return (pg_arg){.t = PG_A_NULL}; }

#define PG_ARG(x)                                                                                   \
    _Generic((x), char *: pg_a_str, const char *: pg_a_str, bool: pg_a_bool, signed char: pg_a_i64, \
        short: pg_a_i64, int: pg_a_i64, long: pg_a_i64, long long: pg_a_i64, unsigned char: pg_a_u64, \
        unsigned short: pg_a_u64, unsigned: pg_a_u64, unsigned long: pg_a_u64,                       \
        unsigned long long: pg_a_u64, pg_arg: pg_a_arg)(x)
#define PG_NARGS(...) PG_NARGS_(__VA_ARGS__, 24, 23, 22, 21, 20, 19, 18, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1)
#define PG_NARGS_(_1, _2, _3, _4, _5, _6, _7, _8, _9, _10, _11, _12, _13, _14, _15, _16, _17, _18, _19, _20, _21, _22, _23, _24, n, ...) n
#define PG_MAP(f, ...) PG_MAP_N(PG_NARGS(__VA_ARGS__))(f, __VA_ARGS__)
#define PG_MAP_N(n) PG_MAP_N_(n)
#define PG_MAP_N_(n) PG_MAP_##n
#define PG_MAP_1(f, x) f(x)
#define PG_MAP_2(f, x, ...) f(x), PG_MAP_1(f, __VA_ARGS__)
#define PG_MAP_3(f, x, ...) f(x), PG_MAP_2(f, __VA_ARGS__)
#define PG_MAP_4(f, x, ...) f(x), PG_MAP_3(f, __VA_ARGS__)
#define PG_MAP_5(f, x, ...) f(x), PG_MAP_4(f, __VA_ARGS__)
#define PG_MAP_6(f, x, ...) f(x), PG_MAP_5(f, __VA_ARGS__)
#define PG_MAP_7(f, x, ...) f(x), PG_MAP_6(f, __VA_ARGS__)
#define PG_MAP_8(f, x, ...) f(x), PG_MAP_7(f, __VA_ARGS__)
#define PG_MAP_9(f, x, ...) f(x), PG_MAP_8(f, __VA_ARGS__)
#define PG_MAP_10(f, x, ...) f(x), PG_MAP_9(f, __VA_ARGS__)
#define PG_MAP_11(f, x, ...) f(x), PG_MAP_10(f, __VA_ARGS__)
#define PG_MAP_12(f, x, ...) f(x), PG_MAP_11(f, __VA_ARGS__)
#define PG_MAP_13(f, x, ...) f(x), PG_MAP_12(f, __VA_ARGS__)
#define PG_MAP_14(f, x, ...) f(x), PG_MAP_13(f, __VA_ARGS__)
#define PG_MAP_15(f, x, ...) f(x), PG_MAP_14(f, __VA_ARGS__)
#define PG_MAP_16(f, x, ...) f(x), PG_MAP_15(f, __VA_ARGS__)
#define PG_MAP_17(f, x, ...) f(x), PG_MAP_16(f, __VA_ARGS__)
#define PG_MAP_18(f, x, ...) f(x), PG_MAP_17(f, __VA_ARGS__)
#define PG_MAP_19(f, x, ...) f(x), PG_MAP_18(f, __VA_ARGS__)
#define PG_MAP_20(f, x, ...) f(x), PG_MAP_19(f, __VA_ARGS__)
#define PG_MAP_21(f, x, ...) f(x), PG_MAP_20(f, __VA_ARGS__)
#define PG_MAP_22(f, x, ...) f(x), PG_MAP_21(f, __VA_ARGS__)
#define PG_MAP_23(f, x, ...) f(x), PG_MAP_22(f, __VA_ARGS__)
#define PG_MAP_24(f, x, ...) f(x), PG_MAP_23(f, __VA_ARGS__)

void pg_args_list(pg_params *p, int n, const pg_arg *a);
#define pg_args(p, ...) pg_args_list((p), PG_NARGS(__VA_ARGS__), (const pg_arg[]){PG_MAP(PG_ARG, __VA_ARGS__)})

/* Process-wide settings: connection string (ORGMESH_PG_URL), the schema
 * this service owns (its search_path) and statement timeout. */
int pg_setup(const char *conninfo, const char *schema, int statement_timeout_ms);

/* This thread's connection, connecting if needed. NULL (with a logged reason)
 * when PostgreSQL cannot be reached; callers answer UNAVAILABLE. */
pg_conn *pg_local(void);
/* A connection of one's own (relay, consumers, tests). */
int pg_connect(pg_conn **out);
void pg_close(pg_conn *c);
/* Close this thread's pg_local connection (worker exit). */
void pg_local_close(void);

/* Run `sql`. `p` may be NULL. `out` may be NULL when no rows are needed.
 * Returns 0, OM_E_UNAVAILABLE (connection lost; it is reset — also for a
 * statement timeout, 57014), or OM_E_INTERNAL for an SQL error — see
 * pg_sqlstate. One statement per call (it is prepared and cached). */
int pg_exec(pg_conn *c, const char *sql, const pg_params *p, pg_res **out);
/* Several ';'-separated statements without parameters, not prepared
 * (migrations, test set-up). Same return codes as pg_exec. */
int pg_exec_script(pg_conn *c, const char *sql);
/* SQLSTATE of the last failed pg_exec on this connection ("" if none),
 * e.g. "23505" unique_violation, "40001" serialization_failure. */
const char *pg_sqlstate(const pg_conn *c);
const char *pg_errmsg(const pg_conn *c);
/* The constraint name of the last failed pg_exec ("" if none). */
const char *pg_constraint(const pg_conn *c);

int pg_nrows(const pg_res *r);
int64_t pg_affected(const pg_res *r);  /* rows touched by INSERT/UPDATE/DELETE */
bool pg_isnull(const pg_res *r, int row, int col);
const char *pg_str(const pg_res *r, int row, int col); /* "" for NULL */
/* The column into a fixed buffer of cap bytes (cut to fit; "" for NULL). */
void pg_str_to(const pg_res *r, int row, int col, char *dst, size_t cap);
int64_t pg_i64(const pg_res *r, int row, int col);
uint64_t pg_u64(const pg_res *r, int row, int col);
bool pg_bool(const pg_res *r, int row, int col);
/* bytea column, decoded; valid until pg_free. */
const uint8_t *pg_bytes(pg_res *r, int row, int col, size_t *len);
/* timestamptz column as unix microseconds. */
int64_t pg_time_us(const pg_res *r, int row, int col);
void pg_free(pg_res *r);

/* Reading rows into structs: `read` fills the element `out` from row `row`,
 * copying strings into m. pg_row reads the first row (OM_E_NOT_FOUND when
 * there is none); pg_rows reads at most `max` rows into out[] (elements of
 * `size` bytes), *n their count; pg_rows_all reads every row into an array it
 * allocates from m (room for one more) and stores at *(T **)out. */
struct om_mem;
typedef void (*pg_read_fn)(const pg_res *r, int row, struct om_mem *m, void *out);
int pg_row(pg_conn *c, const char *sql, const pg_params *p, pg_read_fn read, struct om_mem *m, void *out);
int pg_rows(pg_conn *c, const char *sql, const pg_params *p, pg_read_fn read, struct om_mem *m, void *out,
            size_t size, int max, int *n);
int pg_rows_all(pg_conn *c, const char *sql, const pg_params *p, pg_read_fn read, struct om_mem *m, void *out,
                size_t size, int *n);
/* The boolean of a one-row, one-column query (SELECT EXISTS ...). */
int pg_exists(pg_conn *c, const char *sql, const pg_params *p, bool *out);

/* Transactions. pg_tx runs fn inside BEGIN..COMMIT, retrying the whole
 * function (up to 5 times, with jitter) on serialization failure, deadlock
 * or a connection lost before COMMIT was sent. If fn returns non-zero the
 * transaction is rolled back and that code returned. If the connection is
 * lost while COMMIT is under way the outcome is unknown: no retry,
 * OM_E_UNAVAILABLE. Called inside an open transaction, pg_tx just runs fn
 * (the outer pg_tx commits and retries). fn must not keep state across
 * attempts (it may run more than once). */
typedef int (*pg_tx_fn)(pg_conn *c, void *arg);
int pg_tx(pg_conn *c, pg_tx_fn fn, void *arg);
int pg_begin(pg_conn *c);
/* OM_E_INTERNAL (see pg_sqlstate) if the transaction had failed and
 * PostgreSQL rolled it back instead. */
int pg_commit(pg_conn *c);
void pg_rollback(pg_conn *c);
/* True while a transaction is open on c. */
bool pg_in_tx(const pg_conn *c);
/* Ask the running pg_tx to retry fn once more after its rollback (e.g. a
 * lost race on a unique key whose winner the retry will see). */
void pg_mark_retry(pg_conn *c);

/* Migrations: numbered files compiled into the binary (see
 * cmake/migrations.cmake). Applied in order, each in its own
 * transaction, under an advisory lock, recorded in <schema>.schema_migrations.
 * Creates the schema if missing. The runtime's own tables (outbox,
 * applied_events, idempotency, audit) are applied first and recorded apart,
 * in <schema>.runtime_migrations. A file whose first line is
 * "-- orgmesh:no-transaction" runs outside a transaction (one statement,
 * e.g. CREATE INDEX CONCURRENTLY). */
typedef struct pg_migration {
    int version;
    const char *name;
    const char *sql;
} pg_migration;
int pg_migrate(pg_conn *c, const char *schema, const pg_migration *m, size_t n);

/* Cheap liveness probe on a connection of its own (health). */
bool pg_ping(void);

/* The schema given to pg_setup (the service name). */
const char *pg_schema(void);
/* For the worker loop, after each call: rolls back a transaction a handler
 * left open (a bug; logged) and forgets one lost with its connection, so
 * the next call starts clean. No round trip when all is well. */
void pg_local_end_call(void);

#ifdef LIBPQ_FE_H
/* A plain libpq connection with the service's settings (application name,
 * keepalives, schema), for the loop's one LISTEN connection (common/loop.c):
 * blocking connect, so call it on a worker. NULL when it fails (logged
 * once per outage). */
PGconn *pg_open_listen(void);
#endif

#endif
