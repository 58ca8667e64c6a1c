/* notifier_render.h — the pure part of the notifier (NOTE-02): email
 * templates loaded from files, placeholder substitution, the choice of
 * locale with fallback to English, and the RFC 5322 message itself. No I/O
 * besides reading the template files once at start. */
#ifndef NOTIFIER_RENDER_H
#define NOTIFIER_RENDER_H

#include <stddef.h>
#include <stdint.h>

/* The locale every template must exist in, and the fallback (NOTE-02). */
#define NT_FALLBACK_LOCALE "en"

typedef struct nt_templates nt_templates;

/* Reads <dir>/<locale>/<name>.txt for every locale directory. Each file's
 * first line is "Subject: ...", the rest is the body. Also reads, where they
 * exist, <dir>/<locale>/phrases.ini ("key = text" lines, '#' comments),
 * <dir>/<locale>/<name>.html (a kind's own HTML part) and the HTML layouts
 * <dir>/<locale>/layout.html and <dir>/layout.html (NOTE-04). Fails with
 * OM_E_NOT_FOUND when <dir>/en holds no template, OM_E_INVALID_ARGUMENT for a
 * file without the subject line. */
int nt_templates_load(const char *dir, nt_templates **out);
void nt_templates_free(nt_templates *t);
/* Number of templates loaded (all locales). */
size_t nt_templates_count(const nt_templates *t);

/* The locale to write in for a recipient's BCP-47 `locale` (NOTE-02):
 * its primary language ("it-IT" -> "it") when `name` exists in that
 * language, else "en". Returns a pointer into `t` (or the constant "en"). */
const char *nt_locale_pick(const nt_templates *t, const char *name, const char *locale);

typedef struct nt_var {
    const char *key;   /* "client_name" for {{client_name}} */
    const char *value; /* NULL = "" */
    /* NOTE-04: nonzero when `value` is a phrase key ("departure.DOWNGRADED")
     * that rendering replaces by the recipient locale's phrase from
     * <dir>/<locale>/phrases.ini (English when the locale lacks it, "" when
     * no locale has it): codes never reach a localized email as such. */
    int phrase;
} nt_var;

/* NOTE-04: the HTML part of template `name` in `locale` from
 * <dir>/<locale>/<name>.html when that file exists (its placeholders as in
 * the .txt, every value HTML-escaped, phrases included), malloc'd into
 * *html; *html = NULL when the locale has no such file (the caller then
 * wraps the text in the layout: nt_html_from_text). */
int nt_render_html(const nt_templates *t, const char *name, const char *locale, const nt_var *vars, size_t n_vars,
                   char **html);

/* The phrase `key` in `locale` (falling back to English), or NULL. */
const char *nt_phrase(const nt_templates *t, const char *locale, const char *key);

/* Iteration over what was loaded, for tests: the i-th template's locale and
 * name (i < nt_templates_count), and the i-th phrase key of `locale`. */
int nt_template_at(const nt_templates *t, size_t i, const char **locale, const char **name);
const char *nt_phrase_key_at(const nt_templates *t, const char *locale, size_t i);

/* Renders template `name` in `locale` (as picked by nt_locale_pick).
 * Unknown placeholders become "". Line breaks in values are replaced by
 * spaces in the subject (no header injection). On success *subject and
 * *body are malloc'd (free them). OM_E_NOT_FOUND for an unknown template. */
int nt_render(const nt_templates *t, const char *name, const char *locale, const nt_var *vars, size_t n_vars,
              char **subject, char **body);

/* The Message-ID of the email of `event_id` to `recipient` (NOTE-03):
 * "<" + first 32 hex digits of SHA-256(event_id "/" recipient) + "@orgmesh>",
 * stable so that a resend carries the same one. cap >= 44. */
void nt_message_id(const char *event_id, uint64_t recipient, char *out, size_t cap);

/* NOTE-04: the HTML alternative of a rendered text body: the locale's
 * layout.html (else the shared one, else a built-in one) with {{lang}},
 * {{subject}} and {{content}} filled, where content is the text with every
 * character HTML-escaped, blank-line separated paragraphs as <p>, line
 * breaks as <br> and http(s) links as anchors. Malloc'd into *out. Since it
 * is made from the text that the variables were substituted into, every
 * variable is escaped. */
int nt_html_from_text(const nt_templates *t, const char *locale, const char *subject, const char *text,
                      char **out);

typedef struct nt_mail {
    const char *from;       /* header From, e.g. "orgmesh <no-reply@x.com>" */
    const char *to;         /* the recipient's address */
    const char *subject;    /* UTF-8 */
    const char *body;       /* UTF-8 */
    const char *html;       /* UTF-8; NULL = the text body in the built-in layout */
    const char *message_id; /* "<...@orgmesh>" */
    const char *locale;     /* Content-Language */
    const char *event_id;   /* X-Orgmesh-Event-Id; may be NULL */
    int64_t date_s;         /* Date header, unix seconds */
} nt_mail;

/* The message as sent (RFC 5322, CRLF lines): Message-ID, Date, From, To,
 * Subject (an RFC 2047 encoded-word when not ASCII), then (NOTE-04) a
 * multipart/alternative body (RFC 2046) of a text/plain and a text/html
 * part, both charset=utf-8 and base64 (lines of 76 characters). The boundary
 * contains '_', which base64 never does. Malloc'd into *out. */
int nt_mail_format(const nt_mail *m, char **out, size_t *len);

/* The bare address of a From value ("Name <a@b>" -> "a@b") into out. */
void nt_mail_address(const char *from, char *out, size_t cap);

#endif
