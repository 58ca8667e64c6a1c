/* pg.c — PostgreSQL for orgmesh services (pg.h): blocking libpq connections
 * (one per worker thread), statements prepared once per connection, transactions
 * that retry only what is safe to retry, and migrations under an advisory lock.
 * A PostgreSQL restart heals by itself: a lost connection is reopened on next use. */
#include "pg.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

#include "log.h"
#include "om_err.h"
#include "om_mem.h"
#include "trace.h"

#define PG_RECONNECT_MS 500   /* at most one failed connect per 500 ms per connection */

/* When a connection of this process last opened (pg_now_ms), so that the
 * others stop waiting out their reconnect pause (pg_ensure). */
static _Atomic int64_t pg_last_open_ms;
#define PG_STMT_SLOTS 512     /* statement cache slots (power of two) */
#define PG_STMT_MAX 256       /* cached statements before the cache is emptied */
#define PG_TX_ATTEMPTS 5

/* One prepared statement: the SQL text it was prepared from and its name. */
typedef struct pg_stmt {
    uint64_t hash;
    char *sql;                /* NULL: free slot */
    char name[16];
} pg_stmt;

struct pg_conn {
    PGconn *conn;             /* NULL while disconnected */
    bool lost;                /* the connection failed; reopen before next use */
    bool connect_failed;      /* the last (re)connect attempt failed (logged once) */
    unsigned gen;             /* bumped by every successful (re)connect */
    bool tx_open;             /* a transaction is open (begun on generation tx_gen) */
    unsigned tx_gen;
    bool commit_unknown;      /* the connection died while COMMIT was under way */
    bool retry_hint;          /* pg_mark_retry */
    int64_t next_connect_ms;
    pg_stmt *stmts;           /* PG_STMT_SLOTS slots */
    int n_stmts;
    unsigned stmt_seq;        /* statement names are never reused on a connection */
    unsigned server_stmts;    /* statements prepared on the server, cached or not */
    char sqlstate[6];
    char errmsg[256];
    char constraint[64];
};

/* A decoded bytea value, kept until pg_free. */
typedef struct pg_blob {
    struct pg_blob *next;
    uint8_t data[];
} pg_blob;

struct pg_res {
    PGresult *r;
    pg_blob *blobs;
};

/* Process-wide settings from pg_setup; written once before any thread uses them. */
static struct {
    char *conninfo;
    char *schema;
    char *options;            /* startup "options": the user's, then ours */
    char *app_name;
    char timeout[16];
} cfg;

static int64_t pg_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Schema and channel names are built into SQL text (they cannot be
 * parameters), so only plain lower-case identifiers are accepted. */
static bool pg_ident_ok(const char *s) {
    if (s == NULL || s[0] == '\0' || strlen(s) > 48) return false;
    if (!((s[0] >= 'a' && s[0] <= 'z') || s[0] == '_')) return false;
    for (const char *q = s; *q; q++)
        if (!((*q >= 'a' && *q <= 'z') || (*q >= '0' && *q <= '9') || *q == '_')) return false;
    return true;
}

/* ---- parameters ---------------------------------------------------------- */

static int pg_p_slot(pg_params *p) {
    if (p->n >= PG_MAX_PARAMS) {
        p->overflow = true;
        return -1;
    }
    return p->n++;
}

void pg_p_str(pg_params *p, const char *s) {
    int i = pg_p_slot(p);
    if (i < 0) return;
    p->val[i] = s;
    p->len[i] = 0;
    p->fmt[i] = 0;
}

void pg_p_strn(pg_params *p, const char *s, size_t n) {
    int i = pg_p_slot(p);
    if (i < 0) return;
    if (n > INT32_MAX) {
        p->out_of_range = true;
        n = 0;
    }
    /* Text format needs a terminating NUL; the binary form of text is the
     * bare bytes, so a length-delimited string can go as it is. */
    p->val[i] = s != NULL ? s : "";
    p->len[i] = (int)n;
    p->fmt[i] = 1;
}

void pg_p_i64(pg_params *p, int64_t v) {
    int i = pg_p_slot(p);
    if (i < 0) return;
    snprintf(p->num[i], sizeof p->num[i], "%" PRId64, v);
    p->val[i] = p->num[i];
    p->len[i] = 0;
    p->fmt[i] = 0;
}

void pg_p_u64(pg_params *p, uint64_t v) {
    int i = pg_p_slot(p);
    if (i < 0) return;
    if (v > (uint64_t)INT64_MAX) p->out_of_range = true; /* bigint storage, see pg.md */
    snprintf(p->num[i], sizeof p->num[i], "%" PRIu64, v);
    p->val[i] = p->num[i];
    p->len[i] = 0;
    p->fmt[i] = 0;
}

void pg_p_bool(pg_params *p, bool v) {
    int i = pg_p_slot(p);
    if (i < 0) return;
    p->val[i] = v ? "t" : "f";
    p->len[i] = 0;
    p->fmt[i] = 0;
}

void pg_p_bytes(pg_params *p, const void *data, size_t n) {
    int i = pg_p_slot(p);
    if (i < 0) return;
    if (n > INT32_MAX) {
        p->out_of_range = true;
        n = 0;
    }
    p->val[i] = data != NULL ? (const char *)data : "";
    p->len[i] = (int)n;
    p->fmt[i] = 1; /* binary bytea: no hex escaping either way */
}

void pg_p_null(pg_params *p) {
    int i = pg_p_slot(p);
    if (i < 0) return;
    p->val[i] = NULL;
    p->len[i] = 0;
    p->fmt[i] = 0;
}

void pg_args_list(pg_params *p, int n, const pg_arg *a) {
    for (int i = 0; i < n; i++) switch (a[i].t) {
        case PG_A_STR: pg_p_str(p, a[i].s); break;
        case PG_A_STRN: pg_p_strn(p, a[i].s, a[i].n); break;
        case PG_A_I64: pg_p_i64(p, a[i].i); break;
        case PG_A_U64: pg_p_u64(p, a[i].u); break;
        case PG_A_BOOL: pg_p_bool(p, a[i].u != 0); break;
        case PG_A_BYTES: pg_p_bytes(p, a[i].s, a[i].n); break;
        case PG_A_NULL: pg_p_null(p); break;
        }
}

/* ---- setup and connections ----------------------------------------------- */

int pg_setup(const char *conninfo, const char *schema, int statement_timeout_ms) {
    if (conninfo == NULL || !pg_ident_ok(schema) || statement_timeout_ms < 0) {
        log_error("pg_setup: bad configuration (schema must be a lower-case identifier)");
        return OM_E_INVALID_ARGUMENT;
    }
    char *err = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &err);
    if (opts == NULL) {
        log_error("ORGMESH_PG_URL cannot be parsed: %s", err ? err : "out of memory");
        PQfreemem(err);
        return OM_E_INVALID_ARGUMENT;
    }
    const char *user_opts = "";
    for (PQconninfoOption *o = opts; o->keyword != NULL; o++)
        if (strcmp(o->keyword, "options") == 0 && o->val != NULL) user_opts = o->val;
    /* search_path makes the service's tables unqualified; ISO dates in UTC
     * are what pg_time_us parses. */
    size_t need = strlen(user_opts) + strlen(schema) + 160;
    char *options = malloc(need);
    char *ci = strdup(conninfo);
    char *sc = strdup(schema);
    char *an = malloc(strlen(schema) + 16);
    if (options == NULL || ci == NULL || sc == NULL || an == NULL) {
        free(options);
        free(ci);
        free(sc);
        free(an);
        PQconninfoFree(opts);
        return OM_E_NOMEM;
    }
    snprintf(options, need,
             "%s%s-c search_path=%s -c statement_timeout=%d -c DateStyle=ISO -c TimeZone=UTC",
             user_opts, user_opts[0] ? " " : "", schema, statement_timeout_ms);
    snprintf(an, strlen(schema) + 16, "orgmesh-%s", schema);
    PQconninfoFree(opts);
    free(cfg.conninfo);
    free(cfg.schema);
    free(cfg.options);
    free(cfg.app_name);
    cfg.conninfo = ci;
    cfg.schema = sc;
    cfg.options = options;
    cfg.app_name = an;
    snprintf(cfg.timeout, sizeof cfg.timeout, "%d", statement_timeout_ms);
    return 0;
}

const char *pg_schema(void) { return cfg.schema != NULL ? cfg.schema : ""; }

/* NOTICEs ("relation already exists, skipping") are for humans at a psql
 * prompt; keep them out of the service's stderr unless debugging. */
static void pg_notice(void *arg, const char *msg) {
    (void)arg;
    log_debug("PostgreSQL: %.*s", (int)strcspn(msg, "\n"), msg);
}

/* Keywords are applied in order (libpq): our defaults first, then whatever
 * the URL says, then what the runtime needs regardless. */
static PGconn *pg_open_raw(const char *connect_timeout) {
    const char *kw[] = {"connect_timeout", "application_name", "keepalives", "keepalives_idle",
                        "keepalives_interval", "keepalives_count", "dbname", "options",
                        "client_encoding", NULL};
    const char *val[] = {connect_timeout, cfg.app_name, "1", "10", "5", "3", cfg.conninfo,
                         cfg.options, "UTF8", NULL};
    PGconn *conn = PQconnectdbParams(kw, val, 1);
    if (conn != NULL) PQsetNoticeProcessor(conn, pg_notice, NULL);
    return conn;
}

static void pg_stmts_clear(pg_conn *c) {
    if (c->stmts == NULL) return;
    for (int i = 0; i < PG_STMT_SLOTS; i++) {
        free(c->stmts[i].sql);
        c->stmts[i].sql = NULL;
    }
    c->n_stmts = 0;
}

static void pg_set_err(pg_conn *c, const char *state, const char *msg) {
    snprintf(c->sqlstate, sizeof c->sqlstate, "%s", state ? state : "");
    snprintf(c->errmsg, sizeof c->errmsg, "%s", msg ? msg : "");
    /* libpq's messages end with a newline; logs read better without it */
    size_t n = strlen(c->errmsg);
    while (n > 0 && (c->errmsg[n - 1] == '\n' || c->errmsg[n - 1] == ' ')) c->errmsg[--n] = '\0';
    c->constraint[0] = '\0';
}

static void pg_disconnect(pg_conn *c) {
    if (c->conn != NULL) PQfinish(c->conn);
    c->conn = NULL;
    pg_stmts_clear(c);
    c->server_stmts = 0;
}

static int pg_simple(pg_conn *c, const char *sql);

/* Open (or reopen) c's connection. */
static int pg_open(pg_conn *c) {
    pg_disconnect(c);
    if (cfg.conninfo == NULL) {
        pg_set_err(c, "", "pg_setup was not called");
        return OM_E_UNAVAILABLE;
    }
    PGconn *conn = pg_open_raw("2");
    if (conn == NULL || PQstatus(conn) != CONNECTION_OK) {
        pg_set_err(c, "08006", conn ? PQerrorMessage(conn) : "out of memory");
        /* one warning per outage and connection, not one per retry */
        log_msg(c->connect_failed ? LOG_DEBUG : LOG_WARN, "cannot connect to PostgreSQL: %s",
                c->errmsg);
        if (conn != NULL) PQfinish(conn);
        c->connect_failed = true;
        return OM_E_UNAVAILABLE;
    }
    if (c->connect_failed) log_info("connected to PostgreSQL again");
    atomic_store_explicit(&pg_last_open_ms, pg_now_ms(), memory_order_relaxed);
    c->conn = conn;
    c->lost = false;
    c->connect_failed = false;
    c->gen++;
    return 0;
}

/* Make c usable: reopen a lost connection, immediately the first time and
 * then at most every PG_RECONNECT_MS, so callers fail fast while PostgreSQL
 * is down instead of piling up blocking connects. */
static int pg_ensure(pg_conn *c) {
    if (c->conn != NULL && !c->lost) return 0;
    /* The wait ends early once any connection of the process has opened
     * after ours failed: PostgreSQL is back, so every worker reconnects at
     * once instead of answering UNAVAILABLE for the rest of its wait. */
    if (pg_now_ms() < c->next_connect_ms &&
        atomic_load_explicit(&pg_last_open_ms, memory_order_relaxed) < c->next_connect_ms - PG_RECONNECT_MS) {
        pg_set_err(c, "08006", "PostgreSQL is unreachable (reconnect pending)");
        return OM_E_UNAVAILABLE;
    }
    int rc = pg_open(c);
    /* counted from the end of the attempt, which may have taken seconds */
    c->next_connect_ms = rc != 0 ? pg_now_ms() + PG_RECONNECT_MS : 0;
    return rc;
}

static pg_conn *pg_alloc(void) {
    pg_conn *c = calloc(1, sizeof *c);
    if (c == NULL) return NULL;
    c->stmts = calloc(PG_STMT_SLOTS, sizeof *c->stmts);
    if (c->stmts == NULL) {
        free(c);
        return NULL;
    }
    return c;
}

int pg_connect(pg_conn **out) {
    *out = NULL;
    pg_conn *c = pg_alloc();
    if (c == NULL) return OM_E_NOMEM;
    int rc = pg_open(c);
    if (rc != 0) {
        pg_close(c);
        return rc;
    }
    *out = c;
    return 0;
}

void pg_close(pg_conn *c) {
    if (c == NULL) return;
    pg_disconnect(c);
    free(c->stmts);
    free(c);
}

/* ---- this thread's connection --------------------------------------------- */

static __thread pg_conn *tl_conn;
static pthread_key_t tl_key;
static pthread_once_t tl_once = PTHREAD_ONCE_INIT;

/* A worker that exits without pg_local_close still closes its connection. */
static void tl_destroy(void *p) { pg_close(p); }
static void tl_init(void) { pthread_key_create(&tl_key, tl_destroy); }

pg_conn *pg_local(void) {
    pg_conn *c = tl_conn;
    if (c == NULL) {
        c = pg_alloc();
        if (c == NULL) return NULL;
        pthread_once(&tl_once, tl_init);
        pthread_setspecific(tl_key, c);
        tl_conn = c;
    }
    if (pg_ensure(c) != 0) return NULL;
    return c;
}

void pg_local_close(void) {
    pg_conn *c = tl_conn;
    if (c == NULL) return;
    pthread_setspecific(tl_key, NULL);
    tl_conn = NULL;
    pg_close(c);
}

void pg_local_end_call(void) {
    pg_conn *c = tl_conn;
    if (c == NULL) return;
    if (c->conn != NULL && !c->lost && PQtransactionStatus(c->conn) != PQTRANS_IDLE) {
        log_error("a handler left a transaction open; rolling it back");
        pg_rollback(c);
    }
    c->tx_open = false;
    c->retry_hint = false;
}

/* ---- errors ------------------------------------------------------------- */

/* Class 08 (connection exception) and the shutdown codes mean the server side
 * is gone; CONNECTION_BAD covers a socket that died without a word. */
static bool pg_is_lost(PGconn *conn, const char *state) {
    if (conn == NULL || PQstatus(conn) == CONNECTION_BAD) return true;
    if (state == NULL) return false;
    return (state[0] == '0' && state[1] == '8') || strcmp(state, "57P01") == 0 ||
           strcmp(state, "57P02") == 0 || strcmp(state, "57P03") == 0;
}

static void pg_track_tx(pg_conn *c) {
    PGTransactionStatusType st = PQtransactionStatus(c->conn);
    if (st == PQTRANS_IDLE) {
        c->tx_open = false;
    } else if (!c->tx_open && (st == PQTRANS_INTRANS || st == PQTRANS_INERROR)) {
        c->tx_open = true; /* BEGIN sent through pg_exec also counts */
        c->tx_gen = c->gen;
    }
}

/* Turn a result into a return code, recording the error; consumes nothing. */
static int pg_result_rc(pg_conn *c, PGresult *r) {
    ExecStatusType st = r != NULL ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK || st == PGRES_EMPTY_QUERY) {
        pg_track_tx(c);
        return 0;
    }
    const char *state = r != NULL ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    const char *msg = r != NULL ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    pg_set_err(c, state, msg != NULL ? msg : PQerrorMessage(c->conn));
    const char *cons = r != NULL ? PQresultErrorField(r, PG_DIAG_CONSTRAINT_NAME) : NULL;
    if (cons != NULL) snprintf(c->constraint, sizeof c->constraint, "%s", cons);
    if (pg_is_lost(c->conn, state)) {
        if (c->sqlstate[0] == '\0') snprintf(c->sqlstate, sizeof c->sqlstate, "08006");
        log_warn("PostgreSQL connection lost: %s", c->errmsg);
        c->lost = true;
        return OM_E_UNAVAILABLE;
    }
    pg_track_tx(c);
    if (strcmp(c->sqlstate, "57014") == 0) return OM_E_UNAVAILABLE; /* statement timeout */
    log_debug("SQL error %s: %s", c->sqlstate, c->errmsg);
    return OM_E_INTERNAL;
}

static int pg_simple(pg_conn *c, const char *sql) {
    PGresult *r = PQexec(c->conn, sql);
    int rc = pg_result_rc(c, r);
    PQclear(r);
    return rc;
}

/* ---- statement cache ------------------------------------------------------ */

static uint64_t pg_hash(const char *s) {
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

static pg_stmt *pg_stmt_slot(pg_conn *c, const char *sql, uint64_t h) {
    for (unsigned i = 0; i < PG_STMT_SLOTS; i++) {
        pg_stmt *s = &c->stmts[(h + i) & (PG_STMT_SLOTS - 1)];
        if (s->sql == NULL || (s->hash == h && strcmp(s->sql, sql) == 0)) return s;
    }
    return NULL; /* cannot happen: PG_STMT_MAX < PG_STMT_SLOTS */
}

/* Prepare sql (once per connection) and run it. Returns the result (NULL
 * on a dead connection or out of memory). */
static PGresult *pg_run(pg_conn *c, const char *sql, const pg_params *p) {
    int n = p != NULL ? p->n : 0;
    const char *const *vals = p != NULL ? p->val : NULL;
    const int *lens = p != NULL ? p->len : NULL;
    const int *fmts = p != NULL ? p->fmt : NULL;
    uint64_t h = pg_hash(sql);
    pg_stmt *s = pg_stmt_slot(c, sql, h);
    if (s != NULL && s->sql != NULL)
        return PQexecPrepared(c->conn, s->name, n, vals, lens, fmts, 0);

    if (c->n_stmts >= PG_STMT_MAX) {
        /* Lots of distinct SQL texts: start over rather than grow without end. */
        if (PQtransactionStatus(c->conn) == PQTRANS_IDLE) {
            PGresult *d = PQexec(c->conn, "DEALLOCATE ALL");
            if (PQresultStatus(d) == PGRES_COMMAND_OK) c->server_stmts = 0;
            PQclear(d);
        }
        pg_stmts_clear(c);
        s = pg_stmt_slot(c, sql, h);
    }
    char *copy = strdup(sql);
    if (copy == NULL || s == NULL) {
        free(copy);
        return PQexecParams(c->conn, sql, n, NULL, vals, lens, fmts, 0); /* unnamed, uncached */
    }
    char name[16];
    snprintf(name, sizeof name, "om%u", ++c->stmt_seq);
    PGresult *pr = PQprepare(c->conn, name, sql, 0, NULL);
    if (pr == NULL || PQresultStatus(pr) != PGRES_COMMAND_OK) {
        free(copy);
        return pr; /* the error result (syntax error, aborted transaction, ...) */
    }
    PQclear(pr);
    c->server_stmts++;
    s->hash = h;
    s->sql = copy;
    memcpy(s->name, name, sizeof name);
    c->n_stmts++;
    return PQexecPrepared(c->conn, s->name, n, vals, lens, fmts, 0);
}

/* "cached plan must not change result type": a migration changed a table
 * under a cached statement. Forget the cache so statements are prepared again. */
static bool pg_plan_stale(const pg_conn *c) {
    return strcmp(c->sqlstate, "0A000") == 0 && strstr(c->errmsg, "cached plan") != NULL;
}

/* ---- running statements --------------------------------------------------- */

static void pg_clear_err(pg_conn *c) {
    c->sqlstate[0] = '\0';
    c->errmsg[0] = '\0';
    c->constraint[0] = '\0';
}

/* A transaction whose connection was lost is dead: refuse to run its
 * remaining statements on a fresh connection, where they would commit alone. */
static bool pg_tx_dead(const pg_conn *c) {
    return c->tx_open && (c->lost || c->conn == NULL || c->tx_gen != c->gen);
}

static int pg_prepare_call(pg_conn *c, const char *sql, const pg_params *p) {
    if (c == NULL) return OM_E_UNAVAILABLE;
    pg_clear_err(c);
    if (sql == NULL) return OM_E_INTERNAL;
    if (p != NULL && p->overflow) {
        pg_set_err(c, "", "more than PG_MAX_PARAMS parameters");
        log_error("pg_exec: %s", c->errmsg);
        return OM_E_INTERNAL;
    }
    if (p != NULL && p->out_of_range) {
        pg_set_err(c, "22003", "a parameter is out of range (uint64 above INT64_MAX?)");
        return OM_E_INVALID_ARGUMENT;
    }
    if (pg_tx_dead(c)) {
        pg_set_err(c, "08006", "the transaction was lost with its connection");
        return OM_E_UNAVAILABLE;
    }
    return pg_ensure(c);
}

/* Issue 19: a db CLIENT span per statement, only inside a sampled trace that
 * is being exported (docs/common/trace.md): named "<OPERATION> <schema>",
 * db.system=postgresql, the statement's text (placeholders, never values). */
static trace_span *pg_span_start(const char *sql) {
    const trace_ctx *cur = trace_current();
    if (cur == NULL || !(cur->flags & 1) || !trace_db_enabled()) return NULL;
    char op[16];
    size_t n = 0;
    while (*sql == ' ' || *sql == '\n' || *sql == '(') sql++;
    for (char ch; n < sizeof op - 1 && (ch = (char)(sql[n] | 32)) >= 'a' && ch <= 'z'; n++)
        op[n] = (char)(ch - 32); /* the first word, upper case */
    op[n] = '\0';
    char name[96];
    snprintf(name, sizeof name, "%s %s", n ? op : "SQL", cfg.schema ? cfg.schema : "");
    trace_ctx dc;
    trace_span *s = trace_start(cur, TRACE_CLIENT, name, &dc);
    trace_attr_str(s, "db.system", "postgresql");
    trace_attr_str(s, "db.namespace", cfg.schema ? cfg.schema : "");
    trace_attr_str(s, "db.operation.name", op);
    trace_attr_str(s, "db.query.text", sql);
    return s;
}

int pg_exec(pg_conn *c, const char *sql, const pg_params *p, pg_res **out) {
    if (out != NULL) *out = NULL;
    int rc = pg_prepare_call(c, sql, p);
    if (rc != 0) return rc;
    trace_span *span = trace_enabled() ? pg_span_start(sql) : NULL;
    PGresult *r = pg_run(c, sql, p);
    rc = pg_result_rc(c, r);
    if (rc != 0 && pg_plan_stale(c)) {
        pg_stmts_clear(c);
        if (PQtransactionStatus(c->conn) == PQTRANS_IDLE) { /* no transaction to lose: again */
            PQclear(r);
            pg_clear_err(c);
            r = pg_run(c, sql, p);
            rc = pg_result_rc(c, r);
        }
    }
    if (span != NULL) {
        if (rc != 0) trace_attr_str(span, "db.response.status_code", c->sqlstate);
        trace_end(span, rc != 0, rc != 0 ? c->errmsg : NULL);
    }
    if (rc != 0 || out == NULL) {
        PQclear(r);
        return rc;
    }
    pg_res *res = malloc(sizeof *res);
    if (res == NULL) {
        PQclear(r);
        return OM_E_NOMEM;
    }
    res->r = r;
    res->blobs = NULL;
    *out = res;
    return 0;
}

int pg_exec_script(pg_conn *c, const char *sql) {
    int rc = pg_prepare_call(c, sql, NULL);
    if (rc != 0) return rc;
    return pg_simple(c, sql);
}

const char *pg_sqlstate(const pg_conn *c) { return c != NULL ? c->sqlstate : ""; }
const char *pg_errmsg(const pg_conn *c) { return c != NULL ? c->errmsg : ""; }
const char *pg_constraint(const pg_conn *c) { return c != NULL ? c->constraint : ""; }

/* ---- results ------------------------------------------------------------ */

static bool pg_cell_ok(const pg_res *r, int row, int col) {
    return r != NULL && row >= 0 && col >= 0 && row < PQntuples(r->r) && col < PQnfields(r->r);
}

int pg_nrows(const pg_res *r) { return r != NULL ? PQntuples(r->r) : 0; }

int64_t pg_affected(const pg_res *r) {
    if (r == NULL) return 0;
    const char *t = PQcmdTuples(r->r);
    return t[0] ? strtoll(t, NULL, 10) : 0;
}

bool pg_isnull(const pg_res *r, int row, int col) {
    return !pg_cell_ok(r, row, col) || PQgetisnull(r->r, row, col);
}

const char *pg_str(const pg_res *r, int row, int col) {
    return pg_cell_ok(r, row, col) ? PQgetvalue(r->r, row, col) : "";
}

void pg_str_to(const pg_res *r, int row, int col, char *dst, size_t cap) {
    snprintf(dst, cap, "%s", pg_str(r, row, col));
}

int64_t pg_i64(const pg_res *r, int row, int col) {
    return pg_isnull(r, row, col) ? 0 : strtoll(PQgetvalue(r->r, row, col), NULL, 10);
}

uint64_t pg_u64(const pg_res *r, int row, int col) {
    if (pg_isnull(r, row, col)) return 0;
    const char *s = PQgetvalue(r->r, row, col);
    return s[0] == '-' ? 0 : strtoull(s, NULL, 10);
}

bool pg_bool(const pg_res *r, int row, int col) {
    return !pg_isnull(r, row, col) && PQgetvalue(r->r, row, col)[0] == 't';
}

static int pg_hexval(char ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

const uint8_t *pg_bytes(pg_res *r, int row, int col, size_t *len) {
    *len = 0;
    if (pg_isnull(r, row, col)) return NULL;
    const char *s = PQgetvalue(r->r, row, col);
    size_t n = (size_t)PQgetlength(r->r, row, col);
    if (n < 2 || s[0] != '\\' || s[1] != 'x') {
        /* bytea_output = escape: let libpq decode it */
        size_t m = 0;
        unsigned char *u = PQunescapeBytea((const unsigned char *)s, &m);
        if (u == NULL) return NULL;
        pg_blob *b = malloc(sizeof *b + m + 1);
        if (b == NULL) {
            PQfreemem(u);
            return NULL;
        }
        memcpy(b->data, u, m);
        PQfreemem(u);
        b->next = r->blobs;
        r->blobs = b;
        *len = m;
        return b->data;
    }
    size_t m = (n - 2) / 2;
    pg_blob *b = malloc(sizeof *b + m + 1); /* +1: never a zero-size object */
    if (b == NULL) return NULL;
    for (size_t i = 0; i < m; i++) {
        int hi = pg_hexval(s[2 + 2 * i]), lo = pg_hexval(s[3 + 2 * i]);
        if (hi < 0 || lo < 0) {
            free(b);
            return NULL;
        }
        b->data[i] = (uint8_t)(hi << 4 | lo);
    }
    b->next = r->blobs;
    r->blobs = b;
    *len = m;
    return b->data;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's method). */
static int64_t pg_days_from_civil(int64_t y, unsigned m, unsigned d) {
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static bool pg_digits(const char **s, int n, int *out) {
    int v = 0;
    for (int i = 0; i < n; i++) {
        char ch = (*s)[i];
        if (ch < '0' || ch > '9') return false;
        v = v * 10 + (ch - '0');
    }
    *s += n;
    *out = v;
    return true;
}

/* ISO timestamptz text: "YYYY-MM-DD HH:MM:SS[.ffffff]+HH[:MM[:SS]]"
 * (DateStyle=ISO is set on every connection). 0 if it does not parse. */
int64_t pg_time_us(const pg_res *r, int row, int col) {
    if (pg_isnull(r, row, col)) return 0;
    const char *s = PQgetvalue(r->r, row, col);
    if (strcmp(s, "infinity") == 0) return INT64_MAX;
    if (strcmp(s, "-infinity") == 0) return INT64_MIN;
    int y, mo, d, h, mi, se;
    if (!pg_digits(&s, 4, &y) || *s++ != '-' || !pg_digits(&s, 2, &mo) || *s++ != '-' ||
        !pg_digits(&s, 2, &d) || *s++ != ' ' || !pg_digits(&s, 2, &h) || *s++ != ':' ||
        !pg_digits(&s, 2, &mi) || *s++ != ':' || !pg_digits(&s, 2, &se))
        return 0;
    int64_t us = 0;
    if (*s == '.') {
        s++;
        int scale = 100000;
        while (*s >= '0' && *s <= '9') {
            us += (*s - '0') * scale;
            scale /= 10;
            s++;
        }
    }
    int64_t off = 0;
    if (*s == '+' || *s == '-') {
        int sign = *s++ == '-' ? -1 : 1, oh = 0, om = 0, os = 0;
        if (!pg_digits(&s, 2, &oh)) return 0;
        if (*s == ':' && (s++, !pg_digits(&s, 2, &om))) return 0;
        if (*s == ':' && (s++, !pg_digits(&s, 2, &os))) return 0;
        off = sign * (oh * 3600 + om * 60 + os);
    }
    if (mo < 1 || mo > 12 || d < 1 || d > 31) return 0;
    int64_t secs = pg_days_from_civil(y, (unsigned)mo, (unsigned)d) * 86400 + h * 3600 +
                   mi * 60 + se - off;
    return secs * 1000000 + us;
}

void pg_free(pg_res *r) {
    if (r == NULL) return;
    while (r->blobs != NULL) {
        pg_blob *b = r->blobs;
        r->blobs = b->next;
        free(b);
    }
    PQclear(r->r);
    free(r);
}

int pg_row(pg_conn *c, const char *sql, const pg_params *p, pg_read_fn read, om_mem *m, void *out) {
    pg_res *r = NULL;
    int rc = pg_exec(c, sql, p, &r);
    if (rc == 0 && pg_nrows(r) == 0) rc = OM_E_NOT_FOUND;
    if (rc == 0) read(r, 0, m, out);
    pg_free(r);
    return rc;
}

static int read_rows(pg_conn *c, const char *sql, const pg_params *p, pg_read_fn read, om_mem *m, void *out,
                     void **alloc, size_t size, int max, int *n) {
    pg_res *r = NULL;
    int rc = pg_exec(c, sql, p, &r);
    *n = 0;
    if (rc == 0) {
        int rows = alloc != NULL || pg_nrows(r) < max ? pg_nrows(r) : max;
        if (alloc != NULL) *alloc = out = m->alloc(m->ud, size * (size_t)(rows + 1));
        for (; *n < rows; (*n)++) read(r, *n, m, (char *)out + size * (size_t)*n);
    }
    pg_free(r);
    return rc;
}

int pg_rows(pg_conn *c, const char *sql, const pg_params *p, pg_read_fn read, om_mem *m, void *out, size_t size,
            int max, int *n) {
    return read_rows(c, sql, p, read, m, out, NULL, size, max, n);
}

int pg_rows_all(pg_conn *c, const char *sql, const pg_params *p, pg_read_fn read, om_mem *m, void *out, size_t size,
                int *n) {
    return read_rows(c, sql, p, read, m, NULL, out, size, 0, n);
}

int pg_exists(pg_conn *c, const char *sql, const pg_params *p, bool *out) {
    pg_res *r = NULL;
    int rc = pg_exec(c, sql, p, &r);
    if (rc == 0) *out = pg_nrows(r) == 1 && pg_bool(r, 0, 0);
    pg_free(r);
    return rc;
}

/* ---- transactions --------------------------------------------------------- */

bool pg_in_tx(const pg_conn *c) {
    return c != NULL && c->conn != NULL && !c->lost &&
           PQtransactionStatus(c->conn) != PQTRANS_IDLE;
}

void pg_mark_retry(pg_conn *c) {
    if (c != NULL) c->retry_hint = true;
}

int pg_begin(pg_conn *c) {
    if (c == NULL) return OM_E_UNAVAILABLE;
    if (c->conn != NULL && !c->lost && PQtransactionStatus(c->conn) != PQTRANS_IDLE) {
        log_warn("BEGIN inside an open transaction; rolling the old one back");
        PQclear(PQexec(c->conn, "ROLLBACK"));
    }
    c->tx_open = false; /* whatever was open is over: rolled back or lost */
    c->commit_unknown = false;
    int rc = pg_exec(c, "BEGIN", NULL, NULL);
    if (rc == 0) {
        c->tx_open = true;
        c->tx_gen = c->gen;
    }
    return rc;
}

int pg_commit(pg_conn *c) {
    if (c == NULL) return OM_E_UNAVAILABLE;
    if (pg_tx_dead(c) || c->conn == NULL || c->lost) {
        /* Lost before COMMIT was sent: nothing was committed. */
        c->tx_open = false;
        pg_set_err(c, "08006", "the transaction was lost with its connection");
        return OM_E_UNAVAILABLE;
    }
    PGTransactionStatusType st = PQtransactionStatus(c->conn);
    if (st == PQTRANS_IDLE) {
        c->tx_open = false;
        pg_set_err(c, "25P01", "COMMIT without a transaction");
        log_error("pg_commit: no transaction is open");
        return OM_E_INTERNAL;
    }
    if (st == PQTRANS_INERROR) {
        /* Keep the error that aborted it for pg_sqlstate. */
        PQclear(PQexec(c->conn, "ROLLBACK"));
        c->tx_open = false;
        if (c->sqlstate[0] == '\0') pg_set_err(c, "25P02", "the transaction had failed");
        return OM_E_INTERNAL;
    }
    pg_clear_err(c);
    PGresult *r = PQexec(c->conn, "COMMIT");
    int rc = pg_result_rc(c, r);
    if (rc == OM_E_UNAVAILABLE && c->lost) {
        c->commit_unknown = true;
        log_error("connection lost during COMMIT: outcome unknown");
    } else if (rc == 0 && strcmp(PQcmdStatus(r), "ROLLBACK") == 0) {
        pg_set_err(c, "25P02", "the transaction had failed and was rolled back");
        rc = OM_E_INTERNAL;
    }
    PQclear(r);
    c->tx_open = false;
    return rc;
}

void pg_rollback(pg_conn *c) {
    if (c == NULL) return;
    c->tx_open = false;
    if (c->conn == NULL || c->lost || PQtransactionStatus(c->conn) == PQTRANS_IDLE) return;
    /* Keep the caller's error (pg_sqlstate) across the rollback. */
    char state[sizeof c->sqlstate], msg[sizeof c->errmsg], cons[sizeof c->constraint];
    memcpy(state, c->sqlstate, sizeof state);
    memcpy(msg, c->errmsg, sizeof msg);
    memcpy(cons, c->constraint, sizeof cons);
    PGresult *r = PQexec(c->conn, "ROLLBACK");
    int rc = pg_result_rc(c, r);
    PQclear(r);
    if (rc == 0 || !c->lost) {
        memcpy(c->sqlstate, state, sizeof state);
        memcpy(c->errmsg, msg, sizeof msg);
        memcpy(c->constraint, cons, sizeof cons);
    }
    c->tx_open = false;
}

static bool pg_nested(const pg_conn *c) {
    return c->tx_open && !pg_tx_dead(c) && PQtransactionStatus(c->conn) != PQTRANS_IDLE;
}

static bool pg_retryable(const pg_conn *c, int rc) {
    if (rc == 0) return false;
    if (c->retry_hint) return true;
    if (strcmp(c->sqlstate, "40001") == 0 || strcmp(c->sqlstate, "40P01") == 0) return true;
    /* Lost before COMMIT: the retry reconnects (at once, the first time). If
     * that very reconnect failed, PostgreSQL is down: retrying is useless. */
    if (rc == OM_E_UNAVAILABLE && !c->commit_unknown && !c->connect_failed &&
        (c->lost || strcmp(c->sqlstate, "08006") == 0))
        return true;
    return pg_plan_stale(c);
}

static void pg_backoff(int attempt) {
    static __thread unsigned seed;
    if (seed == 0) seed = (unsigned)pg_now_ms() ^ (unsigned)(uintptr_t)&seed;
    /* 2, 4, 8, 16 ms, each taken at 50..100% so that colliding retries spread */
    long ms = 1L << attempt;
    long us = ms * 500 + (long)(rand_r(&seed) % (ms * 500 + 1));
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

int pg_tx(pg_conn *c, pg_tx_fn fn, void *arg) {
    if (c == NULL) return OM_E_UNAVAILABLE;
    if (pg_nested(c)) return fn(c, arg);
    int rc = 0;
    for (int attempt = 1; attempt <= PG_TX_ATTEMPTS; attempt++) {
        if (attempt > 1) pg_backoff(attempt - 1);
        c->retry_hint = false;
        rc = pg_begin(c);
        if (rc == 0) {
            rc = fn(c, arg);
            if (rc == 0) {
                rc = pg_commit(c);
                if (rc == 0) return 0;
                if (c->commit_unknown) return OM_E_UNAVAILABLE; /* never act twice */
            } else {
                pg_rollback(c);
            }
        }
        if (!pg_retryable(c, rc)) break;
        log_debug("transaction attempt %d failed (%s %s); retrying", attempt, c->sqlstate,
                  c->errmsg);
    }
    c->retry_hint = false;
    return rc;
}

/* ---- migrations ------------------------------------------------------------ */

/* The runtime's own tables, in every service schema. Versions only grow;
 * never edit an entry once released, add a new one. */
static const pg_migration pg_runtime_migrations[] = {
    {1, "outbox",
     "CREATE TABLE IF NOT EXISTS outbox (\n"
     "  id bigserial PRIMARY KEY,\n"
     "  event_id uuid NOT NULL,\n"
     "  type text NOT NULL,\n"
     "  subject text NOT NULL,\n"
     "  version bigint NOT NULL,\n"
     "  envelope bytea NOT NULL,\n"
     "  created_at timestamptz NOT NULL DEFAULT now(),\n"
     "  relayed_at timestamptz);\n"
     "CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (id) WHERE relayed_at IS NULL;\n"
     "CREATE INDEX IF NOT EXISTS outbox_relayed ON outbox (relayed_at)\n"
     "  WHERE relayed_at IS NOT NULL;\n"},
    {2, "applied_events",
     "CREATE TABLE IF NOT EXISTS applied_events (\n"
     "  event_id uuid PRIMARY KEY,\n"
     "  applied_at timestamptz NOT NULL DEFAULT now());\n"
     "CREATE INDEX IF NOT EXISTS applied_events_at ON applied_events (applied_at);\n"},
    {3, "idempotency",
     "CREATE TABLE IF NOT EXISTS idempotency (\n"
     "  actor text NOT NULL,\n"
     "  method text NOT NULL,\n"
     "  request_id text NOT NULL,\n"
     "  request_hash bytea NOT NULL,\n"
     "  response bytea,\n"
     "  created_at timestamptz NOT NULL DEFAULT now(),\n"
     "  PRIMARY KEY (actor, method, request_id));\n"
     "CREATE INDEX IF NOT EXISTS idempotency_created ON idempotency (created_at);\n"},
    {4, "audit",
     "CREATE TABLE IF NOT EXISTS audit (\n"
     "  id bigserial PRIMARY KEY,\n"
     "  at timestamptz NOT NULL DEFAULT now(),\n"
     "  actor text NOT NULL,\n"
     "  action text NOT NULL,\n"
     "  resource text NOT NULL,\n"
     "  before_type text,\n"
     "  before bytea,\n"
     "  after_type text,\n"
     "  after bytea,\n"
     "  reason text,\n"
     "  request_id text,\n"
     "  trace_id text);\n"
     "CREATE INDEX IF NOT EXISTS audit_resource ON audit (resource, id);\n"},
    /* Issue 12 (docs/common/evt.md "Redis losing data"): the relay's gap-free
     * sequence and stream entry id per row, its epoch, the consumer groups'
     * applied watermarks it knows; on the consumer side the sequence of
     * each applied event and the contiguous watermark per source. */
    {5, "evt_delivery",
     "ALTER TABLE outbox ADD COLUMN IF NOT EXISTS relay_seq bigint;\n"
     "ALTER TABLE outbox ADD COLUMN IF NOT EXISTS stream_id text;\n"
     "CREATE UNIQUE INDEX IF NOT EXISTS outbox_relay_seq ON outbox (relay_seq);\n"
     "CREATE INDEX IF NOT EXISTS outbox_rerelay ON outbox (relay_seq)\n"
     "  WHERE relayed_at IS NULL AND relay_seq IS NOT NULL;\n"
     "CREATE TABLE IF NOT EXISTS evt_relay (\n"
     "  one boolean PRIMARY KEY DEFAULT true CHECK (one),\n"
     "  next_seq bigint NOT NULL DEFAULT 1,\n"
     "  epoch text,\n"
     "  last_stream_id text);\n"
     "INSERT INTO evt_relay DEFAULT VALUES ON CONFLICT DO NOTHING;\n"
     "CREATE TABLE IF NOT EXISTS evt_groups (\n"
     "  grp text PRIMARY KEY,\n"
     "  watermark bigint NOT NULL,\n"
     "  updated_at timestamptz NOT NULL DEFAULT now());\n"
     "ALTER TABLE applied_events ADD COLUMN IF NOT EXISTS source text;\n"
     "ALTER TABLE applied_events ADD COLUMN IF NOT EXISTS seq bigint;\n"
     "CREATE INDEX IF NOT EXISTS applied_events_seq ON applied_events (source, seq)\n"
     "  WHERE seq IS NOT NULL;\n"
     "CREATE TABLE IF NOT EXISTS evt_progress (\n"
     "  source text PRIMARY KEY,\n"
     "  watermark bigint NOT NULL,\n"
     "  updated_at timestamptz NOT NULL DEFAULT now());\n"},
};

static bool pg_no_tx(const char *sql) {
    return strncmp(sql, "-- orgmesh:no-transaction", 25) == 0;
}

/* Apply the migrations of one list that `table` does not record yet. */
static int pg_apply(pg_conn *c, const char *schema, const char *table, const pg_migration *m,
                    size_t n) {
    char sql[160];
    snprintf(sql, sizeof sql, "SELECT version, name FROM %s.%s", schema, table);
    pg_res *done = NULL;
    int rc = pg_exec(c, sql, NULL, &done);
    if (rc != 0) return rc;
    char ins[160];
    snprintf(ins, sizeof ins, "INSERT INTO %s.%s (version, name) VALUES ($1, $2)", schema, table);
    for (size_t i = 0; i < n && rc == 0; i++) {
        if (m[i].version <= 0 || (i > 0 && m[i].version <= m[i - 1].version) ||
            m[i].sql == NULL || m[i].name == NULL) {
            log_error("migration %d (%s): versions must be positive and increasing", m[i].version,
                      m[i].name ? m[i].name : "?");
            rc = OM_E_INTERNAL;
            break;
        }
        bool applied = false;
        for (int r = 0; r < pg_nrows(done); r++) {
            if (pg_i64(done, r, 0) != m[i].version) continue;
            applied = true;
            if (strcmp(pg_str(done, r, 1), m[i].name) != 0)
                log_warn("%s.%s: version %d is recorded as \"%s\" but this binary calls it \"%s\"",
                         schema, table, m[i].version, pg_str(done, r, 1), m[i].name);
        }
        if (applied) continue;
        pg_params p = {0};
        pg_p_i64(&p, m[i].version);
        pg_p_str(&p, m[i].name);
        if (pg_no_tx(m[i].sql)) {
            rc = pg_exec_script(c, m[i].sql);
            if (rc == 0) rc = pg_exec(c, ins, &p, NULL);
        } else {
            rc = pg_begin(c);
            if (rc == 0) rc = pg_exec_script(c, m[i].sql);
            if (rc == 0) rc = pg_exec(c, ins, &p, NULL);
            if (rc == 0) {
                rc = pg_commit(c);
            } else {
                pg_rollback(c);
            }
        }
        if (rc != 0) {
            log_error("%s migration %d_%s failed: %s %s", schema, m[i].version, m[i].name,
                      pg_sqlstate(c), pg_errmsg(c));
        } else {
            log_info("%s: applied %s migration %d_%s", schema,
                     strcmp(table, "runtime_migrations") == 0 ? "runtime" : "schema",
                     m[i].version, m[i].name);
        }
    }
    pg_free(done);
    return rc;
}

int pg_migrate(pg_conn *c, const char *schema, const pg_migration *m, size_t n) {
    if (c == NULL) return OM_E_UNAVAILABLE;
    if (!pg_ident_ok(schema)) {
        log_error("pg_migrate: schema \"%s\" is not a lower-case identifier",
                  schema ? schema : "");
        return OM_E_INVALID_ARGUMENT;
    }
    char key[96];
    snprintf(key, sizeof key, "orgmesh.migrate.%s", schema);
    pg_params lp = {0};
    pg_p_str(&lp, key);
    /* Replicas starting together queue here; the schema itself is created
     * under the lock, as concurrent CREATE SCHEMA IF NOT EXISTS can fail. */
    int rc = pg_exec(c, "SELECT pg_advisory_lock(hashtext($1))", &lp, NULL);
    if (rc != 0) return rc;

    pg_res *old = NULL;
    char sql[512];
    rc = pg_exec(c, "SELECT current_setting('search_path')", NULL, &old);
    if (rc == 0) {
        snprintf(sql, sizeof sql,
                 "CREATE SCHEMA IF NOT EXISTS %s;\n"
                 "SET search_path TO %s;\n"
                 "CREATE TABLE IF NOT EXISTS %s.runtime_migrations (version int PRIMARY KEY,"
                 " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());\n"
                 "CREATE TABLE IF NOT EXISTS %s.schema_migrations (version int PRIMARY KEY,"
                 " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());\n",
                 schema, schema, schema, schema);
        rc = pg_exec_script(c, sql);
    }
    if (rc == 0)
        rc = pg_apply(c, schema, "runtime_migrations", pg_runtime_migrations,
                      sizeof pg_runtime_migrations / sizeof pg_runtime_migrations[0]);
    if (rc == 0 && n > 0) rc = pg_apply(c, schema, "schema_migrations", m, n);

    /* Put things back even after a failure (if the connection still lives;
     * otherwise the session, with its lock, is gone anyway). */
    if (!c->lost) {
        if (c->tx_open) pg_rollback(c);
        if (old != NULL && pg_nrows(old) == 1) {
            pg_params sp = {0};
            pg_p_str(&sp, pg_str(old, 0, 0));
            pg_exec(c, "SELECT set_config('search_path', $1, false)", &sp, NULL);
        }
        pg_exec(c, "SELECT pg_advisory_unlock(hashtext($1))", &lp, NULL);
    }
    pg_free(old);
    return rc;
}

/* ---- health --------------------------------------------------------------- */

static pthread_mutex_t ping_mu = PTHREAD_MUTEX_INITIALIZER;
static PGconn *ping_conn;

bool pg_ping(void) {
    if (cfg.conninfo == NULL) return false;
    pthread_mutex_lock(&ping_mu);
    if (ping_conn != NULL && PQstatus(ping_conn) != CONNECTION_OK) {
        PQfinish(ping_conn);
        ping_conn = NULL;
    }
    if (ping_conn == NULL) {
        ping_conn = pg_open_raw("2");
        if (ping_conn != NULL && PQstatus(ping_conn) != CONNECTION_OK) {
            PQfinish(ping_conn);
            ping_conn = NULL;
        }
    }
    bool ok = false;
    if (ping_conn != NULL) {
        PGresult *r = PQexec(ping_conn, "SELECT 1");
        ok = PQresultStatus(r) == PGRES_TUPLES_OK;
        PQclear(r);
        if (!ok) {
            PQfinish(ping_conn);
            ping_conn = NULL;
        }
    }
    pthread_mutex_unlock(&ping_mu);
    return ok;
}

/* ---- notifications -------------------------------------------------------- */

PGconn *pg_open_listen(void) {
    static bool failed; /* one warning per outage */
    if (cfg.conninfo == NULL) return NULL;
    PGconn *conn = pg_open_raw("2");
    if (conn == NULL || PQstatus(conn) != CONNECTION_OK) {
        log_msg(failed ? LOG_DEBUG : LOG_WARN, "LISTEN: cannot connect to PostgreSQL: %s",
                conn ? PQerrorMessage(conn) : "out of memory");
        if (conn != NULL) PQfinish(conn);
        failed = true;
        return NULL;
    }
    if (failed) log_info("LISTEN: connected to PostgreSQL again");
    failed = false;
    return conn;
}

