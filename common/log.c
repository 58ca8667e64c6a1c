/* log.c — structured logs: one JSON object per line on stderr (log.h).
 *
 * Each line is built whole in memory and handed to the kernel with one
 * write(2), so lines from concurrent threads never interleave. */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

/* Longest message kept; a runaway message (a dumped body, say) is cut rather
 * than flooding the log pipeline with one enormous line. */
#define LOG_MAX_MSG (64 * 1024)
#define LOG_MAX_SERVICE 63
#define LOG_MAX_TRACE 64
/* Room always kept at the end of a line for `","truncated":true}` + "\n". */
#define LOG_RESERVE 32

static const char *const log_level_names[] = {"debug", "info", "warn", "error"};

/* Set by log_init before the threads start; the level is atomic so that it
 * may still be changed at run time without a data race. */
static char log_service[LOG_MAX_SERVICE + 1];
static atomic_int log_min_level = LOG_INFO;

static _Thread_local char log_trace[LOG_MAX_TRACE + 1];
static _Thread_local char log_span[17]; /* issue 19: the current span, 16 hex digits */

void log_init(const char *service, int min_level) {
    size_t n = service ? strlen(service) : 0;
    if (n > LOG_MAX_SERVICE) n = LOG_MAX_SERVICE;
    if (n) memcpy(log_service, service, n);
    log_service[n] = '\0';
    if (min_level < LOG_DEBUG) min_level = LOG_DEBUG;
    if (min_level > LOG_ERROR) min_level = LOG_ERROR;
    atomic_store_explicit(&log_min_level, min_level, memory_order_relaxed);
}

void log_set_trace(const char *trace_id) {
    size_t n = trace_id ? strlen(trace_id) : 0;
    if (n > LOG_MAX_TRACE) n = LOG_MAX_TRACE;
    if (n) memcpy(log_trace, trace_id, n);
    log_trace[n] = '\0';
    log_span[0] = '\0';
}

void log_set_span(const char *span_id) {
    size_t n = span_id ? strlen(span_id) : 0;
    if (n > sizeof log_span - 1) n = sizeof log_span - 1;
    if (n) memcpy(log_span, span_id, n);
    log_span[n] = '\0';
}

int log_level_parse(const char *name) {
    if (name == NULL) return -1;
    for (int i = LOG_DEBUG; i <= LOG_ERROR; i++)
        if (strcasecmp(name, log_level_names[i]) == 0) return i;
    if (strcasecmp(name, "warning") == 0) return LOG_WARN;
    return -1;
}

/* ---- line buffer ---------------------------------------------------------
 * Starts on the caller's stack and moves to the heap only for long lines. If
 * the heap is exhausted the line is cut, never dropped: LOG_RESERVE bytes stay
 * free so that the JSON object can always be closed. */

typedef struct line_buf {
    char *p;
    size_t len, cap;
    bool heap, full;
} line_buf;

static bool lb_grow(line_buf *lb, size_t need) {
    if (lb->full) return false;
    size_t cap = lb->cap * 2;
    while (cap < need) cap *= 2;
    char *np = lb->heap ? realloc(lb->p, cap) : malloc(cap);
    if (np == NULL) {
        lb->full = true;
        return false;
    }
    if (!lb->heap) memcpy(np, lb->p, lb->len);
    lb->p = np;
    lb->cap = cap;
    lb->heap = true;
    return true;
}

/* All or nothing, so an escape or a UTF-8 sequence is never cut in half;
 * after the first failure nothing more is added. The fields before "msg" are
 * short enough to always fit the stack buffer, so a cut can only fall inside
 * the message string, which the tail then closes. */
static bool lb_put(line_buf *lb, const char *s, size_t n) {
    if (lb->full) return false;
    if (lb->len + n + LOG_RESERVE > lb->cap && !lb_grow(lb, lb->len + n + LOG_RESERVE))
        return false;
    memcpy(lb->p + lb->len, s, n);
    lb->len += n;
    return true;
}

/* Plain ASCII may be cut anywhere: keep as much as fits. */
static void lb_put_ascii(line_buf *lb, const char *s, size_t n) {
    if (lb_put(lb, s, n)) return;
    size_t room = lb->cap - LOG_RESERVE - lb->len;
    n = n < room ? n : room;
    memcpy(lb->p + lb->len, s, n);
    lb->len += n;
}

static void lb_str(line_buf *lb, const char *s) { lb_put(lb, s, strlen(s)); }

/* Length of the valid UTF-8 sequence at s[0..n), or 0 if it is not one
 * (overlong forms, surrogates and code points past U+10FFFF included), so
 * that every line is valid JSON whatever bytes a message carries. */
static size_t utf8_seq_len(const unsigned char *s, size_t n) {
    unsigned char c = s[0];
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF; /* allowed range of the 2nd byte */
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else {
        return 0;
    }
    if (n < len || s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < len; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    return len;
}

/* Append s[0..n) as the inside of a JSON string. */
static void lb_json(line_buf *lb, const char *str, size_t n) {
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n && !lb->full) {
        size_t run = i; /* copy runs of plain bytes in one go */
        while (run < n && s[run] >= 0x20 && s[run] < 0x80 && s[run] != '"' && s[run] != '\\') run++;
        if (run > i) {
            lb_put_ascii(lb, str + i, run - i);
            i = run;
            continue;
        }
        unsigned char c = s[i];
        char esc[8];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            lb_put(lb, esc, 2);
            i++;
        } else if (c < 0x20) {
            switch (c) {
            case '\n': lb_put(lb, "\\n", 2); break;
            case '\r': lb_put(lb, "\\r", 2); break;
            case '\t': lb_put(lb, "\\t", 2); break;
            case '\b': lb_put(lb, "\\b", 2); break;
            case '\f': lb_put(lb, "\\f", 2); break;
            default: snprintf(esc, sizeof esc, "\\u%04x", c); lb_put(lb, esc, 6);
            }
            i++;
        } else {
            size_t len = utf8_seq_len(s + i, n - i);
            if (len == 0) {
                lb_put(lb, "\\ufffd", 6); /* one replacement per bad byte */
                i++;
            } else {
                lb_put(lb, str + i, len);
                i += len;
            }
        }
    }
}

static void write_all(const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(STDERR_FILENO, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return; /* nowhere left to report it */
        }
        p += w;
        n -= (size_t)w;
    }
}

void log_msg(int level, const char *fmt, ...) {
    if (level < LOG_DEBUG) level = LOG_DEBUG;
    if (level > LOG_ERROR) level = LOG_ERROR;
    if (level < atomic_load_explicit(&log_min_level, memory_order_relaxed)) return;
    int saved_errno = errno; /* callers log right before reading errno */

    char msg_stack[1024];
    char *msg = msg_stack;
    va_list ap;
    va_start(ap, fmt);
    int mlen = vsnprintf(msg_stack, sizeof msg_stack, fmt, ap);
    va_end(ap);
    bool cut = false;
    if (mlen < 0) {
        mlen = 0;
        msg_stack[0] = '\0';
    } else if ((size_t)mlen >= sizeof msg_stack) {
        size_t want = (size_t)mlen < LOG_MAX_MSG ? (size_t)mlen : LOG_MAX_MSG;
        char *big = malloc(want + 1);
        if (big != NULL) {
            va_start(ap, fmt);
            vsnprintf(big, want + 1, fmt, ap);
            va_end(ap);
            msg = big;
            cut = want < (size_t)mlen;
            mlen = (int)want;
        } else {
            cut = true;
            mlen = (int)sizeof msg_stack - 1;
        }
    }

    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char tbuf[32];
    size_t tl0 = strftime(tbuf, sizeof tbuf, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(tbuf + tl0, sizeof tbuf - tl0, ".%03dZ", (int)(ts.tv_nsec / 1000000L) % 1000);

    char line_stack[2048];
    line_buf lb = {.p = line_stack, .cap = sizeof line_stack};
    lb_str(&lb, "{\"ts\":\"");
    lb_str(&lb, tbuf);
    lb_str(&lb, "\",\"level\":\"");
    lb_str(&lb, log_level_names[level]);
    lb_str(&lb, "\",\"service\":\"");
    lb_json(&lb, log_service, strlen(log_service));
    if (log_trace[0] != '\0') {
        lb_str(&lb, "\",\"trace_id\":\"");
        lb_json(&lb, log_trace, strlen(log_trace));
        if (log_span[0] != '\0') {
            lb_str(&lb, "\",\"span_id\":\"");
            lb_json(&lb, log_span, strlen(log_span));
        }
    }
    lb_str(&lb, "\",\"msg\":\"");
    lb_json(&lb, msg, (size_t)mlen);
    /* The reserve guarantees these fit even when the buffer is full. */
    const char *tail = (cut || lb.full) ? "\",\"truncated\":true}\n" : "\"}\n";
    size_t tl = strlen(tail);
    memcpy(lb.p + lb.len, tail, tl);
    lb.len += tl;

    write_all(lb.p, lb.len);
    if (lb.heap) free(lb.p);
    if (msg != msg_stack) free(msg);
    errno = saved_errno;
}
