/* lg.h — the parts of orgmesh-loadgen that its tests exercise directly: the
 * latency histogram, request templates (a message built field by field from
 * `--set path=spec`) and reply expectations (`--expect path=value`). The
 * engine that drives gRPC core is in loadgen.c. */
#ifndef OM_LG_H
#define OM_LG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

/* ---- histogram ------------------------------------------------------------
 * HDR-like log-linear buckets over microseconds: exact below 256 us, then
 * 128 sub-buckets per power of two (under 0.8% error), up to 2^41 us. */
#define LG_SUB_BITS 7
#define LG_SUB (1 << LG_SUB_BITS)
#define LG_MAX_MSB 40
#define LG_BUCKETS ((LG_MAX_MSB - LG_SUB_BITS + 2) * LG_SUB)

typedef struct lg_hist {
    uint64_t count;
    uint64_t min, max; /* exact */
    double sum;
    uint64_t b[LG_BUCKETS];
} lg_hist;

void lg_hist_init(lg_hist *h);
void lg_hist_add(lg_hist *h, uint64_t us);
void lg_hist_merge(lg_hist *into, const lg_hist *from);
/* The value at percentile p (0 < p <= 100): the highest value of the bucket
 * that holds it, never above the largest value recorded. 0 when empty. */
uint64_t lg_hist_pct(const lg_hist *h, double p);
double lg_hist_mean(const lg_hist *h);

/* ---- methods --------------------------------------------------------------- */

/* Finds "/pkg.Service/Method" among the services of every generated proto
 * the tool links. NULL when unknown. */
const ProtobufCMethodDescriptor *lg_find_method(const char *path);
/* Prints every unary-looking method the tool knows, one path a line. */
void lg_list_methods(void);

/* ---- request templates ------------------------------------------------------ */

#define LG_MAX_DEPTH 8
#define LG_MAX_SETTERS 16
#define LG_MAX_EXPECTS 16
#define LG_MAX_NODES 32
#define LG_STR_CAP 512

typedef struct lg_path {
    const ProtobufCFieldDescriptor *f[LG_MAX_DEPTH];
    int depth;
} lg_path;

typedef enum { LG_V_CONST, LG_V_RANGE, LG_V_SEQ, LG_V_LIST, LG_V_FMT } lg_vkind;

typedef struct lg_setter {
    char *text;      /* the path as written */
    lg_path path;
    lg_vkind kind;
    int64_t lo, hi;  /* range:LO:HI (uniform random), seq:LO (LO + call number) */
    char **items;    /* list:a,b,c (uniform random) */
    int n_items;
    char *value;     /* a literal, or str:FORMAT (%d call number, %r run id) */
} lg_setter;

typedef struct lg_template {
    const ProtobufCMessageDescriptor *desc;
    lg_setter set[LG_MAX_SETTERS];
    int n_set;
    bool varies; /* some setter changes from call to call */
    uint64_t run_id;
} lg_template;

/* One request message owned by one in-flight slot: the tree of nested
 * messages the setters reach, and a string buffer per varying setter. */
typedef struct lg_req {
    ProtobufCMessage *root;
    void *nodes[LG_MAX_NODES];
    int n_nodes;
    char *buf[LG_MAX_SETTERS];
} lg_req;

/* Parses "path=spec" against t->desc and appends it. On error returns -1 and
 * writes a message to err. */
int lg_template_add(lg_template *t, const char *arg, char *err, size_t errlen);
void lg_template_free(lg_template *t);
/* Builds a request with the constant fields set. */
int lg_req_init(const lg_template *t, lg_req *r);
/* Sets the varying fields for call number `n` (rng: a per-thread state). */
void lg_req_vary(const lg_template *t, lg_req *r, uint64_t n, uint64_t *rng);
void lg_req_free(lg_req *r);

uint64_t lg_rand(uint64_t *state); /* xorshift64* */

/* ---- expectations ------------------------------------------------------------- */

typedef struct lg_val {
    enum { LG_T_INT, LG_T_UINT, LG_T_DOUBLE, LG_T_BOOL, LG_T_STR, LG_T_MSG, LG_T_COUNT } t;
    int64_t i;
    uint64_t u;
    double d;
    const uint8_t *s;
    size_t n; /* string length, repeated count, or 1 when a message is present */
} lg_val;

typedef struct lg_expect {
    char *text;          /* as written, for error messages */
    lg_path path;        /* in the reply */
    bool negate;         /* != */
    bool nonempty;       /* "path!=" : set, non-zero, non-empty */
    bool from_req;       /* "path=@reqpath" : equal to the request's field */
    lg_path req_path;
    lg_val want;         /* the literal, parsed for the field's type */
    char *want_text;
} lg_expect;

typedef struct lg_expects {
    const ProtobufCMessageDescriptor *desc; /* the reply */
    const ProtobufCMessageDescriptor *req_desc;
    lg_expect e[LG_MAX_EXPECTS];
    int n;
} lg_expects;

int lg_expect_add(lg_expects *x, const char *arg, char *err, size_t errlen);
void lg_expects_free(lg_expects *x);
/* 0 when the reply meets every expectation; otherwise -1 and a reason. */
int lg_check(const lg_expects *x, const ProtobufCMessage *resp, const ProtobufCMessage *req, char *why,
             size_t whylen);

/* gRPC status names ("OK", "NOT_FOUND"...) and back; -1 if unknown. */
const char *lg_status_name(int code);
int lg_status_code(const char *name);

#endif
