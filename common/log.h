/* log.h — one JSON object per line on stderr, with the call's trace id. */
#ifndef OM_LOG_H
#define OM_LOG_H

enum { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

/* Service name and minimum level (ORGMESH_LOG_LEVEL: debug|info|warn|error). */
void log_init(const char *service, int min_level);
/* The trace id logged by this thread until changed ("" or NULL: none). */
void log_set_trace(const char *trace_id);
/* The span id logged with it (issue 19); log_set_trace clears it. */
void log_set_span(const char *span_id);
void log_msg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* LOG_* for "debug", "info", "warn" (or "warning"), "error", any case;
 * -1 for anything else (so ORGMESH_LOG_LEVEL=verbose is refused, not ignored). */
int log_level_parse(const char *name);

#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)

#endif
