/* loadgen.c — orgmesh-loadgen, a gRPC load generator for any unary method of
 * the suite, on gRPC core. Closed loop (N channels x M calls in flight) or
 * open loop (--rate, latency measured from each call's intended start so a
 * stalled server cannot hide its queue). Every reply is checked: a status
 * other than the expected one, or a reply that does not decode or does not
 * meet the --expect rules, is an error, never a success. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <jansson.h>

#include "lg.h"

#define MAX_SAMPLES 5

typedef struct opts {
    const char *target;
    const char *method;
    int channels, inflight, threads;
    double duration_s, warmup_s;
    int64_t count;
    double rate; /* calls/s in all; 0: closed loop */
    int deadline_ms;
    int expect_status;
    const char *token;
    const char *json;
    const char *label;
    bool quiet, no_decode;
    int connect_timeout_ms;
} opts;

static opts O = {
    .channels = 2, .inflight = 32, .threads = 2, .duration_s = 10, .deadline_ms = 10000,
    .connect_timeout_ms = 5000,
};
static lg_template T;
static lg_expects X;
static const ProtobufCMethodDescriptor *M;
static grpc_metadata auth_md;
static int n_md;

static _Atomic uint64_t call_seq;   /* numbers calls for %d and seq: */
static _Atomic int64_t to_start;    /* --count: calls left to start */
static uint64_t t_begin, t_measure, t_end; /* ns, CLOCK_MONOTONIC */
static _Atomic uint64_t t_last_done;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* gpr's monotonic clock is offset from CLOCK_MONOTONIC: go through a delta. */
static gpr_timespec abs_deadline_ns(uint64_t t) {
    uint64_t now = now_ns();
    int64_t delta = t > now ? (int64_t)(t - now) : 0;
    return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_nanos(delta, GPR_TIMESPAN));
}

/* ---- per-thread state ---------------------------------------------------------- */

typedef struct worker worker;

typedef struct slot {
    worker *w;
    grpc_channel *ch;
    void *handle;
    grpc_call *call;
    bool busy;
    grpc_byte_buffer *send, *recv;
    grpc_metadata_array init_md, trail_md;
    grpc_status_code status;
    grpc_slice details;
    const char *err_str;
    uint64_t t_intended, t_start;
    lg_req req;
} slot;

struct worker {
    int index;
    pthread_t thread;
    grpc_completion_queue *cq;
    slot *slots;
    int n_slots, busy;
    uint64_t rng;
    /* results of the measured window */
    lg_hist hist;
    uint64_t calls, ok, errors, wrong_reply, undecodable, unsent;
    uint64_t by_status[17];
    char samples[MAX_SAMPLES][240];
    int n_samples;
    /* open loop */
    uint64_t interval_ns, next_send;
};

static grpc_channel **channels;
static void **handles;
static worker *workers;
static grpc_slice const_req; /* the packed request when nothing varies */

static void sample(worker *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sample(worker *w, const char *fmt, ...) {
    if (w->n_samples >= MAX_SAMPLES) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->samples[w->n_samples++], sizeof w->samples[0], fmt, ap);
    va_end(ap);
}

/* Claims the right to start one more call. */
static bool may_start(uint64_t intended) {
    if (O.count > 0) return atomic_fetch_sub(&to_start, 1) > 0;
    return intended < t_end;
}

static int start_call(slot *s, uint64_t intended) {
    uint64_t n = atomic_fetch_add(&call_seq, 1);
    grpc_slice body;
    if (T.varies) {
        lg_req_vary(&T, &s->req, n, &s->w->rng);
        size_t len = protobuf_c_message_get_packed_size(s->req.root);
        body = grpc_slice_malloc(len);
        protobuf_c_message_pack(s->req.root, GRPC_SLICE_START_PTR(body));
    } else {
        body = grpc_slice_ref(const_req);
    }
    s->send = grpc_raw_byte_buffer_create(&body, 1);
    grpc_slice_unref(body);
    s->recv = NULL;
    grpc_metadata_array_init(&s->init_md);
    grpc_metadata_array_init(&s->trail_md);
    s->details = grpc_empty_slice();
    s->err_str = NULL;
    s->status = GRPC_STATUS_UNKNOWN; /* stays so if the batch fails */
    s->t_intended = intended;
    s->t_start = now_ns();
    gpr_timespec deadline = abs_deadline_ns(s->t_start + (uint64_t)O.deadline_ms * 1000000ull);
    s->call = grpc_channel_create_registered_call(s->ch, NULL, GRPC_PROPAGATE_DEFAULTS, s->w->cq, s->handle,
                                                  deadline, NULL);
    grpc_op ops[6];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].data.send_initial_metadata.count = (size_t)n_md;
    ops[0].data.send_initial_metadata.metadata = n_md ? &auth_md : NULL;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = s->send;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &s->init_md;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &s->recv;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &s->trail_md;
    ops[5].data.recv_status_on_client.status = &s->status;
    ops[5].data.recv_status_on_client.status_details = &s->details;
    ops[5].data.recv_status_on_client.error_string = &s->err_str;
    grpc_call_error e = grpc_call_start_batch(s->call, ops, 6, s, NULL);
    if (e != GRPC_CALL_OK) {
        fprintf(stderr, "orgmesh-loadgen: grpc_call_start_batch: %d\n", e);
        grpc_call_unref(s->call);
        grpc_byte_buffer_destroy(s->send);
        grpc_metadata_array_destroy(&s->init_md);
        grpc_metadata_array_destroy(&s->trail_md);
        return -1;
    }
    s->busy = true;
    s->w->busy++;
    return 0;
}

/* Checks the reply of a call: 0 when it is what it should be. */
static int check_reply(slot *s, char *why, size_t len) {
    if (s->status != (grpc_status_code)O.expect_status) {
        char *d = grpc_slice_to_c_string(s->details);
        snprintf(why, len, "status %s: %s", lg_status_name(s->status), d);
        gpr_free(d);
        return -1;
    }
    if (s->status != GRPC_STATUS_OK || O.no_decode) return 0;
    if (s->recv == NULL) {
        snprintf(why, len, "status OK without a reply message");
        return -2;
    }
    grpc_byte_buffer_reader rd;
    if (!grpc_byte_buffer_reader_init(&rd, s->recv)) {
        snprintf(why, len, "unreadable reply");
        return -2;
    }
    grpc_slice all = grpc_byte_buffer_reader_readall(&rd);
    grpc_byte_buffer_reader_destroy(&rd);
    ProtobufCMessage *resp =
        protobuf_c_message_unpack(M->output, NULL, GRPC_SLICE_LENGTH(all), GRPC_SLICE_START_PTR(all));
    grpc_slice_unref(all);
    if (resp == NULL) {
        snprintf(why, len, "reply does not decode as %s", M->output->name);
        return -2;
    }
    int rc = lg_check(&X, resp, s->req.root, why, len);
    protobuf_c_message_free_unpacked(resp, NULL);
    return rc == 0 ? 0 : -3;
}

static void finish_call(slot *s, bool success) {
    worker *w = s->w;
    uint64_t done = now_ns();
    char why[200];
    int rc = success ? check_reply(s, why, sizeof why) : (snprintf(why, sizeof why, "batch failed"), -1);
    /* Open loop: from the time the call should have started (coordinated
     * omission); closed loop: from when it did. */
    uint64_t from = O.rate > 0 ? s->t_intended : s->t_start;
    if (s->t_intended >= t_measure) {
        w->calls++;
        if (s->status <= 16) w->by_status[s->status]++;
        if (rc == 0) {
            w->ok++;
            lg_hist_add(&w->hist, (done - from) / 1000);
        } else {
            w->errors++;
            if (rc == -2) w->undecodable++;
            if (rc == -3) w->wrong_reply++;
            sample(w, "%s", why);
        }
        uint64_t last = atomic_load(&t_last_done);
        while (done > last && !atomic_compare_exchange_weak(&t_last_done, &last, done)) {
        }
    }
    grpc_metadata_array_destroy(&s->init_md);
    grpc_metadata_array_destroy(&s->trail_md);
    grpc_slice_unref(s->details);
    gpr_free((void *)s->err_str);
    if (s->recv) grpc_byte_buffer_destroy(s->recv);
    grpc_byte_buffer_destroy(s->send);
    grpc_call_unref(s->call);
    s->call = NULL;
    s->busy = false;
    w->busy--;
}

static slot *free_slot(worker *w) {
    for (int i = 0; i < w->n_slots; i++)
        if (!w->slots[i].busy) return &w->slots[i];
    return NULL;
}

static void *run_worker(void *arg) {
    worker *w = arg;
    bool open = O.rate > 0;
    bool stopping = false;
    if (!open) {
        for (int i = 0; i < w->n_slots; i++)
            if (!may_start(t_begin) || start_call(&w->slots[i], now_ns()) != 0) {
                stopping = true;
                break;
            }
    } else {
        w->next_send = t_begin + w->interval_ns * (uint64_t)w->index / (uint64_t)O.threads;
    }
    for (;;) {
        uint64_t now = now_ns();
        if (open && !stopping) {
            /* send what is due; without a free slot the backlog waits and
             * its latency keeps counting from the intended time */
            slot *s;
            while (w->next_send <= now && (s = free_slot(w)) != NULL) {
                if (!may_start(w->next_send) || start_call(s, w->next_send) != 0) {
                    stopping = true;
                    break;
                }
                w->next_send += w->interval_ns;
            }
            if (O.count <= 0 && w->next_send >= t_end) stopping = true;
            /* a server far behind: stop chasing the backlog a second after the end */
            if (O.count <= 0 && now > t_end + 1000000000ull) stopping = true;
        }
        if (!open && O.count <= 0 && now >= t_end) stopping = true;
        if (stopping && w->busy == 0) break;
        uint64_t wake = now + 50000000ull;
        if (open && !stopping && w->busy < w->n_slots && w->next_send < wake) wake = w->next_send;
        if (O.count <= 0 && !stopping && t_end < wake) wake = t_end;
        grpc_event ev = grpc_completion_queue_next(w->cq, abs_deadline_ns(wake), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN) break;
        if (ev.type != GRPC_OP_COMPLETE) continue;
        slot *s = ev.tag;
        finish_call(s, ev.success);
        if (!open && !stopping) {
            if (!may_start(now_ns()) || start_call(s, now_ns()) != 0) stopping = true;
        }
    }
    if (open && O.count <= 0 && w->next_send < t_end) /* due but never sent: the generator fell behind */
        w->unsent = (t_end - w->next_send) / w->interval_ns;
    return NULL;
}

/* ---- setup ---------------------------------------------------------------------- */

static int connect_channel(grpc_channel *ch, grpc_completion_queue *cq) {
    uint64_t limit = now_ns() + (uint64_t)O.connect_timeout_ms * 1000000ull;
    for (;;) {
        grpc_connectivity_state st = grpc_channel_check_connectivity_state(ch, 1);
        if (st == GRPC_CHANNEL_READY) return 0;
        if (now_ns() >= limit) return -1;
        grpc_channel_watch_connectivity_state(ch, st, abs_deadline_ns(limit), cq, NULL);
        grpc_event ev = grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN) return -1;
    }
}

/* --wait-serving: polls grpc.health.v1.Health/Check ("") every 2 ms until it
 * answers SERVING; prints the milliseconds since --since-ns (CLOCK_REALTIME,
 * e.g. `date +%s%N` taken just before the service was exec'd). */
static uint64_t realtime_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int wait_serving(uint64_t since, bool since_stdin, int timeout_ms) {
    grpc_arg args[4];
    const char *keys[4] = {GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, GRPC_ARG_MIN_RECONNECT_BACKOFF_MS,
                           GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL};
    int vals[4] = {5, 5, 20, 1};
    for (int i = 0; i < 4; i++) {
        args[i].type = GRPC_ARG_INTEGER;
        args[i].key = (char *)keys[i];
        args[i].value.integer = vals[i];
    }
    grpc_channel_args ca = {4, args};
    grpc_channel_credentials *creds = grpc_insecure_credentials_create();
    grpc_completion_queue *cq = grpc_completion_queue_create_for_next(NULL);
    uint8_t req[2] = {0};
    grpc_slice body = grpc_slice_from_copied_buffer((const char *)req, 0);
    grpc_slice method = grpc_slice_from_static_string("/grpc.health.v1.Health/Check");
    /* "--since-ns -": say "ready" once loaded, then read the start time
     * from stdin, so the caller execs the service only when this process
     * (as heavy to load as a service) is ready to poll. */
    if (since_stdin) {
        char line[64];
        printf("ready\n");
        fflush(stdout);
        if (fgets(line, sizeof line, stdin) == NULL) return 2;
        since = strtoull(line, NULL, 10);
    }
    uint64_t limit = now_ns() + (uint64_t)timeout_ms * 1000000ull;
    int rc = 1;
    char last[160] = "no answer";
    while (now_ns() < limit) {
        /* a fresh channel each time: a channel that failed to connect backs
         * off for a second or more, which would be measured as start time */
        grpc_channel *ch = grpc_channel_create(O.target, creds, &ca);
        grpc_call *call = grpc_channel_create_call(ch, NULL, GRPC_PROPAGATE_DEFAULTS, cq, method, NULL,
                                                   abs_deadline_ns(now_ns() + 200000000ull), NULL);
        grpc_byte_buffer *send = grpc_raw_byte_buffer_create(&body, 1), *recv = NULL;
        grpc_metadata_array im, tm;
        grpc_metadata_array_init(&im);
        grpc_metadata_array_init(&tm);
        grpc_status_code status = GRPC_STATUS_UNKNOWN;
        grpc_slice details = grpc_empty_slice();
        const char *es = NULL;
        grpc_op ops[6];
        memset(ops, 0, sizeof ops);
        ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
        ops[1].op = GRPC_OP_SEND_MESSAGE;
        ops[1].data.send_message.send_message = send;
        ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
        ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
        ops[3].data.recv_initial_metadata.recv_initial_metadata = &im;
        ops[4].op = GRPC_OP_RECV_MESSAGE;
        ops[4].data.recv_message.recv_message = &recv;
        ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
        ops[5].data.recv_status_on_client.trailing_metadata = &tm;
        ops[5].data.recv_status_on_client.status = &status;
        ops[5].data.recv_status_on_client.status_details = &details;
        ops[5].data.recv_status_on_client.error_string = &es;
        bool serving = false;
        if (grpc_call_start_batch(call, ops, 6, call, NULL) == GRPC_CALL_OK) {
            grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
            if (status == GRPC_STATUS_OK && recv != NULL) {
                grpc_byte_buffer_reader rd;
                if (grpc_byte_buffer_reader_init(&rd, recv)) {
                    grpc_slice all = grpc_byte_buffer_reader_readall(&rd);
                    grpc_byte_buffer_reader_destroy(&rd);
                    ProtobufCMessage *m = protobuf_c_message_unpack(
                        lg_find_method("/grpc.health.v1.Health/Check")->output, NULL, GRPC_SLICE_LENGTH(all),
                        GRPC_SLICE_START_PTR(all));
                    grpc_slice_unref(all);
                    /* HealthCheckResponse.status: field 1, SERVING = 1 */
                    const ProtobufCFieldDescriptor *f =
                        m ? protobuf_c_message_descriptor_get_field_by_name(m->descriptor, "status") : NULL;
                    serving = f && *(const int *)((const char *)m + f->offset) == 1;
                    snprintf(last, sizeof last, "health is not SERVING");
                    if (m) protobuf_c_message_free_unpacked(m, NULL);
                }
            } else {
                char *d = grpc_slice_to_c_string(details);
                snprintf(last, sizeof last, "%s %s", lg_status_name(status), d);
                gpr_free(d);
            }
        }
        grpc_metadata_array_destroy(&im);
        grpc_metadata_array_destroy(&tm);
        grpc_slice_unref(details);
        gpr_free((void *)es);
        grpc_byte_buffer_destroy(send);
        if (recv) grpc_byte_buffer_destroy(recv);
        grpc_call_unref(call);
        grpc_channel_destroy(ch);
        if (serving) {
            uint64_t t = realtime_ns();
            printf("%.1f\n", since && t > since ? (double)(t - since) / 1e6 : 0.0);
            rc = 0;
            break;
        }
        usleep(2000);
    }
    if (rc != 0) fprintf(stderr, "orgmesh-loadgen: %s not SERVING after %d ms (%s)\n", O.target, timeout_ms, last);
    grpc_slice_unref(body);
    grpc_channel_credentials_release(creds);
    grpc_completion_queue_shutdown(cq);
    while (grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL).type != GRPC_QUEUE_SHUTDOWN) {
    }
    grpc_completion_queue_destroy(cq);
    return rc;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: orgmesh-loadgen --target HOST:PORT --method /pkg.Service/Method [options]\n"
            "  --set PATH=SPEC       a request field (dotted path into nested messages); SPEC is\n"
            "                        a literal, range:LO:HI (random), seq:START (START+call number),\n"
            "                        list:A,B,C (random) or str:FORMAT (%%d call number, %%r run id)\n"
            "  --expect PATH=VALUE   the reply's field must equal VALUE (enum names work); PATH!=VALUE,\n"
            "                        PATH!= (set / non-zero / non-empty), PATH=@REQPATH (equal to the\n"
            "                        request's field), a repeated PATH=N compares the count\n"
            "  --expect-status CODE  the gRPC status every call must end with (default OK); also\n"
            "                        --expect grpc-status=CODE\n"
            "  --channels N          connections (default 2)   --inflight M  calls in flight per channel (32)\n"
            "  --threads T           threads, one completion queue each (default 2)\n"
            "  --duration S | --count N   how long (default 10 s) or how many calls\n"
            "  --warmup S            run S seconds before measuring (not counted)\n"
            "  --rate R              open loop: R calls/s in all, latency from the intended start\n"
            "  --deadline-ms MS      per call (default 10000)\n"
            "  --token T             bearer token (default $ORGMESH_TOKEN)\n"
            "  --json FILE           write the result as JSON    --label NAME  name it\n"
            "  --no-decode           only check the status (do not decode replies)\n"
            "  --quiet               no table      --list  print the methods it knows\n"
            "  --wait-serving MS [--since-ns NS|-]  poll health (every 2 ms) until SERVING and print\n"
            "                        the ms since NS (CLOCK_REALTIME ns); with -, print \"ready\" and\n"
            "                        read NS from stdin (start the service after \"ready\")\n"
            "Exit status: 0 no error, 1 some call failed or was wrong, 2 bad usage or no connection.\n");
}

static int die_usage(const char *msg) {
    fprintf(stderr, "orgmesh-loadgen: %s\n", msg);
    return 2;
}

static double ms(uint64_t us) { return (double)us / 1000.0; }

static int report(const lg_hist *h, const uint64_t *by_status, uint64_t calls, uint64_t ok, uint64_t errors,
                  uint64_t wrong, uint64_t undecodable, uint64_t unsent, double secs, char samples[][240],
                  int n_samples) {
    double cps = secs > 0 ? (double)ok / secs : 0;
    if (!O.quiet) {
        printf("orgmesh-loadgen %s %s on %s\n", O.label ? O.label : "", O.method, O.target);
        if (O.rate > 0)
            printf("  open loop at %.0f calls/s, %d channels, up to %d in flight each, %d threads\n", O.rate,
                   O.channels, O.inflight, O.threads);
        else
            printf("  closed loop, %d channels x %d in flight, %d threads\n", O.channels, O.inflight, O.threads);
        printf("  %-12s %" PRIu64 " in %.2f s = %.1f calls/s (successful)\n", "calls", calls, secs, cps);
        printf("  %-12s %" PRIu64 " ok, %" PRIu64 " errors (%" PRIu64 " wrong replies, %" PRIu64
               " undecodable)%s\n",
               "result", ok, errors, wrong, undecodable, errors ? "  <-- ERRORS" : "");
        if (unsent) printf("  %-12s %" PRIu64 " calls due were never sent (generator behind)\n", "unsent", unsent);
        printf("  %-12s p50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f  mean %.3f ms\n", "latency",
               ms(lg_hist_pct(h, 50)), ms(lg_hist_pct(h, 90)), ms(lg_hist_pct(h, 99)), ms(lg_hist_pct(h, 99.9)),
               ms(h->max), lg_hist_mean(h) / 1000.0);
        printf("  %-12s", "status");
        for (int i = 0; i <= 16; i++)
            if (by_status[i]) printf(" %s %" PRIu64, lg_status_name(i), by_status[i]);
        printf("\n");
        for (int i = 0; i < n_samples; i++) printf("  %-12s %s\n", i ? "" : "error e.g.", samples[i]);
    }
    if (O.json) {
        json_t *j = json_object();
        json_object_set_new(j, "label", json_string(O.label ? O.label : ""));
        json_object_set_new(j, "target", json_string(O.target));
        json_object_set_new(j, "method", json_string(O.method));
        json_object_set_new(j, "mode", json_string(O.rate > 0 ? "open" : "closed"));
        json_object_set_new(j, "channels", json_integer(O.channels));
        json_object_set_new(j, "inflight_per_channel", json_integer(O.inflight));
        json_object_set_new(j, "threads", json_integer(O.threads));
        json_object_set_new(j, "rate", json_real(O.rate));
        json_object_set_new(j, "seconds", json_real(secs));
        json_object_set_new(j, "calls", json_integer((json_int_t)calls));
        json_object_set_new(j, "ok", json_integer((json_int_t)ok));
        json_object_set_new(j, "errors", json_integer((json_int_t)errors));
        json_object_set_new(j, "wrong_replies", json_integer((json_int_t)wrong));
        json_object_set_new(j, "undecodable", json_integer((json_int_t)undecodable));
        json_object_set_new(j, "unsent", json_integer((json_int_t)unsent));
        json_object_set_new(j, "calls_per_s", json_real(cps));
        json_object_set_new(j, "expect_status", json_string(lg_status_name(O.expect_status)));
        json_t *lat = json_object();
        json_object_set_new(lat, "p50", json_integer((json_int_t)lg_hist_pct(h, 50)));
        json_object_set_new(lat, "p90", json_integer((json_int_t)lg_hist_pct(h, 90)));
        json_object_set_new(lat, "p99", json_integer((json_int_t)lg_hist_pct(h, 99)));
        json_object_set_new(lat, "p999", json_integer((json_int_t)lg_hist_pct(h, 99.9)));
        json_object_set_new(lat, "max", json_integer((json_int_t)h->max));
        json_object_set_new(lat, "mean", json_real(lg_hist_mean(h)));
        json_object_set_new(j, "latency_us", lat);
        json_t *st = json_object();
        for (int i = 0; i <= 16; i++)
            if (by_status[i]) json_object_set_new(st, lg_status_name(i), json_integer((json_int_t)by_status[i]));
        json_object_set_new(j, "status", st);
        json_t *sa = json_array();
        for (int i = 0; i < n_samples; i++) json_array_append_new(sa, json_string(samples[i]));
        json_object_set_new(j, "error_samples", sa);
        int rc = json_dump_file(j, O.json, JSON_INDENT(2) | JSON_SORT_KEYS);
        json_decref(j);
        if (rc != 0) {
            fprintf(stderr, "orgmesh-loadgen: cannot write %s\n", O.json);
            return 2;
        }
    }
    return errors || calls == 0 ? 1 : 0;
}

static bool parse_num(const char *s, double *out) {
    char *end;
    errno = 0;
    *out = strtod(s, &end);
    return *s != '\0' && *end == '\0' && errno == 0;
}

int main(int argc, char **argv) {
    enum { O_SET = 256, O_EXPECT, O_EXPECT_STATUS, O_WARMUP, O_DEADLINE, O_NODECODE, O_LIST, O_CONNECT, O_WAIT, O_SINCE };
    static const struct option lopts[] = {
        {"target", required_argument, NULL, 't'},   {"method", required_argument, NULL, 'm'},
        {"set", required_argument, NULL, O_SET},    {"expect", required_argument, NULL, O_EXPECT},
        {"expect-status", required_argument, NULL, O_EXPECT_STATUS},
        {"channels", required_argument, NULL, 'c'}, {"inflight", required_argument, NULL, 'i'},
        {"threads", required_argument, NULL, 'T'},  {"duration", required_argument, NULL, 'd'},
        {"count", required_argument, NULL, 'n'},    {"rate", required_argument, NULL, 'r'},
        {"warmup", required_argument, NULL, O_WARMUP}, {"deadline-ms", required_argument, NULL, O_DEADLINE},
        {"token", required_argument, NULL, 'k'},    {"json", required_argument, NULL, 'j'},
        {"label", required_argument, NULL, 'l'},    {"quiet", no_argument, NULL, 'q'},
        {"no-decode", no_argument, NULL, O_NODECODE}, {"list", no_argument, NULL, O_LIST},
        {"connect-timeout-ms", required_argument, NULL, O_CONNECT}, {"help", no_argument, NULL, 'h'},
        {"wait-serving", required_argument, NULL, O_WAIT}, {"since-ns", required_argument, NULL, O_SINCE},
        {NULL, 0, NULL, 0},
    };
    const char *sets[LG_MAX_SETTERS + 1], *expects[LG_MAX_EXPECTS + 1];
    int n_sets = 0, n_expects = 0;
    double v;
    int c;
    int wait_ms = 0;
    bool since_stdin = false;
    uint64_t since = 0;
    O.token = getenv("ORGMESH_TOKEN");
    while ((c = getopt_long(argc, argv, "t:m:c:i:T:d:n:r:k:j:l:qh", lopts, NULL)) != -1) {
        switch (c) {
        case 't': O.target = optarg; break;
        case 'm': O.method = optarg; break;
        case O_SET:
            if (n_sets == LG_MAX_SETTERS) return die_usage("too many --set");
            sets[n_sets++] = optarg;
            break;
        case O_EXPECT:
            if (strncmp(optarg, "grpc-status=", 12) == 0) {
                if ((O.expect_status = lg_status_code(optarg + 12)) < 0) return die_usage("unknown status");
                break;
            }
            if (n_expects == LG_MAX_EXPECTS) return die_usage("too many --expect");
            expects[n_expects++] = optarg;
            break;
        case O_EXPECT_STATUS:
            if ((O.expect_status = lg_status_code(optarg)) < 0) return die_usage("unknown status");
            break;
        case 'c':
            if (!parse_num(optarg, &v) || v < 1 || v > 1024) return die_usage("--channels: 1..1024");
            O.channels = (int)v;
            break;
        case 'i':
            if (!parse_num(optarg, &v) || v < 1 || v > 100000) return die_usage("--inflight: 1..100000");
            O.inflight = (int)v;
            break;
        case 'T':
            if (!parse_num(optarg, &v) || v < 1 || v > 256) return die_usage("--threads: 1..256");
            O.threads = (int)v;
            break;
        case 'd':
            if (!parse_num(optarg, &v) || v <= 0) return die_usage("--duration: seconds > 0");
            O.duration_s = v;
            break;
        case 'n':
            if (!parse_num(optarg, &v) || v < 1) return die_usage("--count: at least 1");
            O.count = (int64_t)v;
            break;
        case 'r':
            if (!parse_num(optarg, &v) || v <= 0) return die_usage("--rate: calls/s > 0");
            O.rate = v;
            break;
        case O_WARMUP:
            if (!parse_num(optarg, &v) || v < 0) return die_usage("--warmup: seconds >= 0");
            O.warmup_s = v;
            break;
        case O_DEADLINE:
            if (!parse_num(optarg, &v) || v < 1) return die_usage("--deadline-ms: at least 1");
            O.deadline_ms = (int)v;
            break;
        case O_CONNECT:
            if (!parse_num(optarg, &v) || v < 1) return die_usage("--connect-timeout-ms: at least 1");
            O.connect_timeout_ms = (int)v;
            break;
        case 'k': O.token = optarg; break;
        case 'j': O.json = optarg; break;
        case 'l': O.label = optarg; break;
        case 'q': O.quiet = true; break;
        case O_NODECODE: O.no_decode = true; break;
        case O_LIST: lg_list_methods(); return 0;
        case O_WAIT:
            if (!parse_num(optarg, &v) || v < 1) return die_usage("--wait-serving: milliseconds");
            wait_ms = (int)v;
            break;
        case O_SINCE:
            since_stdin = strcmp(optarg, "-") == 0;
            since = strtoull(optarg, NULL, 10);
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (wait_ms > 0 && O.target != NULL && optind == argc) {
        grpc_init();
        int rc = wait_serving(since, since_stdin, wait_ms);
        grpc_shutdown();
        return rc;
    }
    if (optind != argc || O.target == NULL || O.method == NULL) {
        usage(stderr);
        return 2;
    }
    M = lg_find_method(O.method);
    if (M == NULL) {
        fprintf(stderr, "orgmesh-loadgen: unknown method %s (see --list)\n", O.method);
        return 2;
    }
    if (O.count > 0 && O.warmup_s > 0) return die_usage("--warmup goes with --duration, not --count");
    if (O.threads > O.channels) O.threads = O.channels;

    char err[256];
    T.desc = M->input;
    T.run_id = (uint64_t)time(NULL) * 1000 + (uint64_t)getpid() % 1000;
    for (int i = 0; i < n_sets; i++)
        if (lg_template_add(&T, sets[i], err, sizeof err) != 0) return die_usage(err);
    X.desc = M->output;
    X.req_desc = M->input;
    for (int i = 0; i < n_expects; i++)
        if (lg_expect_add(&X, expects[i], err, sizeof err) != 0) return die_usage(err);
    if (O.no_decode && X.n > 0) return die_usage("--no-decode cannot check --expect");

    grpc_init();
    char bearer[4096];
    if (O.token != NULL && O.token[0] != '\0') {
        snprintf(bearer, sizeof bearer, "Bearer %s", O.token);
        auth_md.key = grpc_slice_from_static_string("authorization");
        auth_md.value = grpc_slice_from_copied_string(bearer);
        n_md = 1;
    }
    if (!T.varies) {
        lg_req r;
        if (lg_req_init(&T, &r) != 0) return die_usage("out of memory");
        size_t len = protobuf_c_message_get_packed_size(r.root);
        const_req = grpc_slice_malloc(len);
        protobuf_c_message_pack(r.root, GRPC_SLICE_START_PTR(const_req));
        lg_req_free(&r);
    }

    /* Channels, each its own TCP connection: a local subchannel pool and a
     * distinct argument keep gRPC from sharing one connection among them. */
    channels = calloc((size_t)O.channels, sizeof *channels);
    handles = calloc((size_t)O.channels, sizeof *handles);
    workers = calloc((size_t)O.threads, sizeof *workers);
    grpc_channel_credentials *creds = grpc_insecure_credentials_create();
    for (int i = 0; i < O.channels; i++) {
        grpc_arg args[3];
        args[0].type = GRPC_ARG_INTEGER;
        args[0].key = GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL;
        args[0].value.integer = 1;
        args[1].type = GRPC_ARG_INTEGER;
        args[1].key = "orgmesh.loadgen.channel";
        args[1].value.integer = i;
        args[2].type = GRPC_ARG_INTEGER;
        args[2].key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
        args[2].value.integer = 64 << 20;
        grpc_channel_args ca = {3, args};
        channels[i] = grpc_channel_create(O.target, creds, &ca);
        handles[i] = grpc_channel_register_call(channels[i], O.method, NULL, NULL);
    }
    grpc_channel_credentials_release(creds);

    int per_thread_rate_div = O.threads;
    for (int t = 0; t < O.threads; t++) {
        worker *w = &workers[t];
        w->index = t;
        w->cq = grpc_completion_queue_create_for_next(NULL);
        w->rng = 0x9E3779B97F4A7C15ull * (uint64_t)(t + 1) ^ T.run_id;
        lg_hist_init(&w->hist);
        int nch = 0;
        for (int i = t; i < O.channels; i += O.threads) nch++;
        w->n_slots = nch * O.inflight;
        w->slots = calloc((size_t)w->n_slots, sizeof *w->slots);
        int k = 0;
        for (int i = t; i < O.channels; i += O.threads)
            for (int j = 0; j < O.inflight; j++, k++) {
                slot *s = &w->slots[k];
                s->w = w;
                s->ch = channels[i];
                s->handle = handles[i];
                if (lg_req_init(&T, &s->req) != 0) return die_usage("out of memory");
            }
        if (O.rate > 0) w->interval_ns = (uint64_t)(1e9 * per_thread_rate_div / O.rate);
        for (int i = t; i < O.channels; i += O.threads)
            if (connect_channel(channels[i], w->cq) != 0) {
                fprintf(stderr, "orgmesh-loadgen: cannot connect to %s within %d ms\n", O.target,
                        O.connect_timeout_ms);
                return 2;
            }
    }

    t_begin = now_ns();
    t_measure = t_begin + (uint64_t)(O.warmup_s * 1e9);
    t_end = O.count > 0 ? UINT64_MAX : t_measure + (uint64_t)(O.duration_s * 1e9);
    atomic_store(&to_start, O.count);
    atomic_store(&t_last_done, t_measure);
    for (int t = 0; t < O.threads; t++) pthread_create(&workers[t].thread, NULL, run_worker, &workers[t]);
    for (int t = 0; t < O.threads; t++) pthread_join(workers[t].thread, NULL);
    uint64_t finished = atomic_load(&t_last_done);

    lg_hist all;
    lg_hist_init(&all);
    uint64_t by_status[17] = {0}, calls = 0, ok = 0, errors = 0, wrong = 0, undec = 0, unsent = 0;
    char samples[MAX_SAMPLES][240];
    int n_samples = 0;
    for (int t = 0; t < O.threads; t++) {
        worker *w = &workers[t];
        lg_hist_merge(&all, &w->hist);
        for (int i = 0; i <= 16; i++) by_status[i] += w->by_status[i];
        calls += w->calls;
        ok += w->ok;
        errors += w->errors;
        wrong += w->wrong_reply;
        undec += w->undecodable;
        unsent += w->unsent;
        for (int i = 0; i < w->n_samples && n_samples < MAX_SAMPLES; i++)
            memcpy(samples[n_samples++], w->samples[i], sizeof samples[0]);
    }
    /* Throughput over the measured window (duration mode) or until the last
     * reply (count mode). */
    double secs = O.count > 0 ? (double)(finished - t_measure) / 1e9 : O.duration_s;
    int rc = report(&all, by_status, calls, ok, errors, wrong, undec, unsent, secs, samples, n_samples);

    for (int t = 0; t < O.threads; t++) {
        worker *w = &workers[t];
        for (int k = 0; k < w->n_slots; k++) lg_req_free(&w->slots[k].req);
        free(w->slots);
    }
    for (int i = 0; i < O.channels; i++) grpc_channel_destroy(channels[i]);
    for (int t = 0; t < O.threads; t++) {
        grpc_completion_queue_shutdown(workers[t].cq);
        while (grpc_completion_queue_next(workers[t].cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL).type !=
               GRPC_QUEUE_SHUTDOWN) {
        }
        grpc_completion_queue_destroy(workers[t].cq);
    }
    if (!T.varies) grpc_slice_unref(const_req);
    if (n_md) grpc_slice_unref(auth_md.value);
    free(channels);
    free(handles);
    free(workers);
    lg_template_free(&T);
    lg_expects_free(&X);
    grpc_shutdown();
    return rc;
}
