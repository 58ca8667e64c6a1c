/* fuzz_render.c — the notifier's email renderer (services/notifier/
 * notifier_render.c) with the real templates of services/notifier/templates.
 *
 * Input: byte 0 picks a template, byte 1 a locale (or, when it is 0xff, the
 * locale is the first NUL-terminated string of the rest: nt_locale_pick on
 * any BCP-47-ish text); bytes 2..9 the Date (unix seconds); the rest is
 * NUL-separated key, value, key, value... (values as variables, the last
 * value also as the recipient address and the From header).
 * Asserts: every template renders; the subject never holds a line break
 * (no header injection); the formatted mail has a header block ending in an
 * empty line and only CRLF line ends; nt_mail_address stays in its buffer. */
#include <dirent.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "notifier_render.h"
#include "om_err.h"

static nt_templates *tpls;
static char *names[64];
static size_t n_names;
static const char *const locales[] = {"en", "es", "it", "ja", "nl", "pl", "it-IT", "pt-BR", "", "EN_us"};

#define FAIL(...)                                   \
    do {                                            \
        fprintf(stderr, "fuzz_render: " __VA_ARGS__); \
        fputc('\n', stderr);                        \
        abort();                                    \
    } while (0)

static void init(void) {
    const char *dir = OM_SOURCE_DIR "/services/notifier/templates";
    if (nt_templates_load(dir, &tpls) != 0) FAIL("cannot load %s", dir);
    DIR *d = opendir(OM_SOURCE_DIR "/services/notifier/templates/en");
    if (d == NULL) FAIL("cannot list %s/en", dir);
    struct dirent *e;
    while ((e = readdir(d)) != NULL && n_names < 64) {
        size_t n = strlen(e->d_name);
        if (n > 4 && strcmp(e->d_name + n - 4, ".txt") == 0) names[n_names++] = strndup(e->d_name, n - 4);
    }
    closedir(d);
    if (n_names == 0) FAIL("no templates");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (tpls == NULL) init();
    if (size < 10 || size > 65536) return 0;
    /* NUL-terminated copy of the rest, so strings can be cut out of it. */
    size_t rest = size - 10;
    char *buf = malloc(rest + 1);
    if (buf == NULL) return 0;
    memcpy(buf, data + 10, rest);
    buf[rest] = '\0';
    const char *name = names[data[0] % n_names];
    char *p = buf, *end = buf + rest;
    const char *want = NULL;
    if (data[1] == 0xff) {
        want = p;
        p += strlen(p) + (p < end);
    } else {
        want = locales[data[1] % (sizeof locales / sizeof locales[0])];
    }
    int64_t date_s = 0;
    memcpy(&date_s, data + 2, sizeof date_s);
    date_s %= 400LL * 366 * 86400; /* within year ~2370 either side of 1970 */

    nt_var vars[32];
    size_t n_vars = 0;
    while (p < end && n_vars < 32) {
        vars[n_vars].key = p;
        p += strlen(p) + 1;
        vars[n_vars].value = p < end ? p : NULL;
        vars[n_vars].phrase = vars[n_vars].value != NULL && vars[n_vars].value[0] == '.'; /* NOTE-04 */
        if (p < end) p += strlen(p) + 1;
        n_vars++;
    }
    const char *locale = nt_locale_pick(tpls, name, want);
    if (locale == NULL) FAIL("no locale for %s", name);
    char *subject = NULL, *body = NULL;
    int rc = nt_render(tpls, name, locale, vars, n_vars, &subject, &body);
    if (rc == OM_E_NOMEM) goto out;
    if (rc != 0) FAIL("template %s/%s does not render: %s", locale, name, om_err_name(rc));
    if (strpbrk(subject, "\r\n") != NULL) FAIL("line break in the subject of %s", name);

    const char *addr = n_vars > 0 && vars[n_vars - 1].value ? vars[n_vars - 1].value : "a@example.com";
    char from[320];
    nt_mail_address(addr, from, sizeof from);
    char mid[64];
    nt_message_id(addr, (uint64_t)date_s, mid, sizeof mid);
    nt_mail m = {
        .from = addr,
        .to = from,
        .subject = subject,
        .body = body,
        .message_id = mid,
        .locale = locale,
        .event_id = n_vars > 0 ? vars[0].key : NULL,
        .date_s = date_s,
    };
    char *mail = NULL;
    size_t len = 0;
    rc = nt_mail_format(&m, &mail, &len);
    if (rc == 0) {
        if (len != strlen(mail)) FAIL("length %zu, string %zu", len, strlen(mail));
        const char *hdr_end = strstr(mail, "\r\n\r\n");
        if (hdr_end == NULL) FAIL("no end of headers");
        for (size_t i = 0; i < len; i++)
            if (mail[i] == '\n' && (i == 0 || mail[i - 1] != '\r')) FAIL("bare LF at %zu", i);
        /* Every header line starts with a known name: nothing injected. */
        static const char *const known[] = {"Message-ID: ", "Date: ", "From: ", "To: ",
                                            "Subject: ", "MIME-Version: ", "Content-Type: ",
                                            "Content-Transfer-Encoding: ", "Content-Language: ",
                                            "X-Orgmesh-Event-Id: ", " "};
        for (const char *l = mail; l < hdr_end + 2; l = strstr(l, "\r\n") + 2) {
            bool ok = false;
            for (size_t k = 0; k < sizeof known / sizeof known[0] && !ok; k++)
                ok = strncmp(l, known[k], strlen(known[k])) == 0;
            if (!ok) FAIL("unexpected header line: %.40s", l);
        }
        free(mail);
    } else if (rc != OM_E_NOMEM) {
        FAIL("nt_mail_format: %s", om_err_name(rc));
    }
out:
    free(subject);
    free(body);
    free(buf);
    return 0;
}
