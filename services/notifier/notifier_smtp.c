/* notifier_smtp.c — sending one message over SMTP with libcurl (NOTE-01):
 * smtp:// or smtps:// URL, optional STARTTLS, credentials and timeouts from
 * configuration. Classifies failures: a 5xx reply is permanent, everything
 * else (no connection, timeouts, 4xx) is worth retrying (NOTE-03). */
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include <curl/curl.h>

#include "notifier.h"
#include "om_err.h"

typedef struct reader {
    const char *p;
    size_t left;
} reader;

static size_t read_cb(char *buf, size_t size, size_t nitems, void *arg) {
    reader *r = arg;
    size_t n = size * nitems;
    if (n > r->left) n = r->left;
    memcpy(buf, r->p, n);
    r->p += n;
    r->left -= n;
    return n;
}

/* Set on SIGTERM: transfers under way stop at once (SPEC 9: exit within
 * 5 s even with a hung SMTP server); the attempt counts as a temporary
 * failure and is retried by whichever replica runs next. */
static atomic_int aborting;

void nt_smtp_abort_all(void) { atomic_store(&aborting, 1); }

static int progress_cb(void *arg, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow) {
    (void)arg, (void)dltotal, (void)dlnow, (void)ultotal, (void)ulnow;
    return atomic_load(&aborting) ? 1 : 0;
}

int nt_smtp_global_init(void) { return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : OM_E_INTERNAL; }

void nt_smtp_global_cleanup(void) { curl_global_cleanup(); }

/* Each sender thread keeps its easy handle, and with it libcurl's cache of
 * the SMTP connection: the next email goes over the same session (MAIL FROM
 * again; no new connection, EHLO, STARTTLS or AUTH), which at 200 emails/s
 * halves the round trips with the server. A connection idle for longer than
 * NT_SMTP_REUSE_MAX_S is not reused (servers drop idle clients, RFC 5321
 * 4.5.3.2 lets them after 5 minutes), and after a failed transfer the next
 * one starts afresh. */
#define NT_SMTP_REUSE_MAX_S 30L
static __thread CURL *tl_curl;

void nt_smtp_thread_done(void) {
    if (tl_curl == NULL) return;
    curl_socket_t fd = CURL_SOCKET_BAD;
    /* Stopping: no QUIT, whose reply a hung server could hold back for
     * the whole response timeout (SPEC 9: exit within 5 s). */
    if (atomic_load(&aborting) && curl_easy_getinfo(tl_curl, CURLINFO_ACTIVESOCKET, &fd) == CURLE_OK &&
        fd != CURL_SOCKET_BAD)
        shutdown(fd, SHUT_RDWR);
    curl_easy_cleanup(tl_curl); /* QUIT, when the connection is still open */
    tl_curl = NULL;
}

int nt_smtp_send(const nt_smtp_config *cfg, const char *rcpt, const char *msg, size_t len, char *err, size_t errcap) {
    err[0] = '\0';
    CURL *h = tl_curl;
    if (h != NULL) {
        curl_easy_reset(h); /* options only: the connection stays cached */
    } else if ((h = tl_curl = curl_easy_init()) == NULL) {
        snprintf(err, errcap, "curl_easy_init failed");
        return OM_E_UNAVAILABLE;
    }
    char from[320], to[330];
    nt_mail_address(cfg->from, from, sizeof from);
    snprintf(to, sizeof to, "<%s>", rcpt);
    char mail_from[330];
    snprintf(mail_from, sizeof mail_from, "<%s>", from);
    struct curl_slist *rcpts = curl_slist_append(NULL, to);
    reader r = {msg, len};
    char curl_err[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(h, CURLOPT_URL, cfg->url);
    curl_easy_setopt(h, CURLOPT_MAIL_FROM, mail_from);
    curl_easy_setopt(h, CURLOPT_MAIL_RCPT, rcpts);
    curl_easy_setopt(h, CURLOPT_READFUNCTION, read_cb);
    curl_easy_setopt(h, CURLOPT_READDATA, &r);
    curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE, (curl_off_t)len);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)cfg->timeout_ms);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)cfg->timeout_ms * 2);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, curl_err);
    curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, progress_cb);
    curl_easy_setopt(h, CURLOPT_MAXAGE_CONN, NT_SMTP_REUSE_MAX_S);
    /* each reply, also the QUIT of nt_smtp_thread_done */
    curl_easy_setopt(h, CURLOPT_SERVER_RESPONSE_TIMEOUT, cfg->timeout_ms >= 2000 ? (long)cfg->timeout_ms / 1000 : 1L);
    if (cfg->starttls) curl_easy_setopt(h, CURLOPT_USE_SSL, (long)CURLUSESSL_ALL);
    if (cfg->ca_file != NULL) curl_easy_setopt(h, CURLOPT_CAINFO, cfg->ca_file);
    if (cfg->user != NULL) curl_easy_setopt(h, CURLOPT_USERNAME, cfg->user);
    if (cfg->password != NULL) curl_easy_setopt(h, CURLOPT_PASSWORD, cfg->password);
    CURLcode cc = curl_easy_perform(h);
    long code = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
    curl_slist_free_all(rcpts);
    if (cc == CURLE_OK) return 0;
    nt_smtp_thread_done(); /* a fresh connection next time */
    snprintf(err, errcap, "SMTP %ld %s: %s", code, curl_easy_strerror(cc), curl_err);
    /* NOTE-03: a 5xx reply will not change by retrying; the rest may */
    return (code >= 500 && code < 600) ? OM_E_FAILED_PRECONDITION : OM_E_UNAVAILABLE;
}
