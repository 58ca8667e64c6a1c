/* smtp.h — an SMTP client engine: libcurl's multi interface on libuv loops
 * and threads of its own, outcomes delivered on the caller's loop
 * (docs/common/smtp.md). It sends ready messages; what they say, to whom and
 * when to retry is the caller's. Not part of om_common: link om_smtp. */
#ifndef OM_SMTP_H
#define OM_SMTP_H

#include <stdbool.h>
#include <stddef.h>

#include <uv.h>

typedef struct smtp_config {
    const char *url;           /* smtp://host:port or smtps://host:port */
    bool starttls;             /* require STARTTLS */
    const char *user;          /* NULL: no AUTH */
    const char *password;
    const char *mail_from;     /* the envelope sender, a bare address (no "Name <...>") */
    int timeout_ms;            /* connect, and each reply; a transfer gets twice it */
    const char *ca_file;       /* CA bundle for a private CA; NULL = the system's */
    int max_connections;       /* sessions in flight to the server, shared by the engines */
    int max_total_connections; /* all hosts, busy + cached */
    int threads;               /* engines at most (a loop, thread and multi handle each) */
} smtp_config;

int smtp_global_init(void);
void smtp_global_cleanup(void);
/* Prepares the engines (each starts on demand, from smtp_send): libcurl
 * multi on libuv loops and threads of their own (libcurl's SMTP waits for
 * the reply to a message's body inside curl_multi_socket_action); outcomes
 * come back on `loop`, the caller's. cfg must outlive it. */
int smtp_start(uv_loop_t *loop, const smtp_config *cfg);
/* The outcome of one message: 0 sent; OM_E_UNAVAILABLE for a failure worth
 * retrying (an exchange aborted by smtp_stop too); OM_E_FAILED_PRECONDITION
 * for a permanent one (5xx); OM_E_CANCELLED when it never left (stopped
 * while it waited for a connection). err holds the reason. Runs on the
 * loop thread, never from inside smtp_send. */
typedef void (*smtp_done_fn)(void *arg, int rc, const char *err);
/* Queues `msg` (malloc'd; taken in every case) to `rcpt`; done runs once
 * when it is sent or has failed. Non-zero (done is then not called): the
 * engine is stopped. Loop thread. */
int smtp_send(const char *rcpt, char *msg, size_t len, smtp_done_fn done, void *arg);
/* Messages queued or in flight. */
int smtp_in_flight(void);
/* Shuts every SMTP socket down (no QUIT), aborts every transfer and joins
 * the engines' threads; every done still due runs before it returns (the
 * aborted ones with OM_E_UNAVAILABLE). Loop thread. */
void smtp_stop(void);

#endif
