/* test_notifier_l10n.c — NOTE-04, no server: every template of the source
 * tree in every locale (found by listing the template directory, so new
 * kinds are covered without touching this file) renders to an email with no
 * placeholder left, no code (an enum-like token) and, outside English, none
 * of the English phrases; every locale has the same variables per kind and
 * every phrase; the message is multipart/alternative with both parts; the
 * HTML part escapes every variable while the text part keeps it as is. */
#include <ctype.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>

#include "notifier_render.h"
#include "om_err.h"

#define MAX_VARS 32

static nt_templates *load_real(void) {
    nt_templates *t = NULL;
    assert_int_equal(nt_templates_load(NT_TEMPLATES_DIR, &t), 0);
    return t;
}

/* The first enum-like token ([A-Z][A-Z0-9_]{3,}) of s, or NULL. */
static const char *enum_token(const char *s) {
    for (const char *p = s; *p; p++) {
        if (!(*p >= 'A' && *p <= 'Z')) continue;
        size_t n = 1;
        while ((p[n] >= 'A' && p[n] <= 'Z') || (p[n] >= '0' && p[n] <= '9') || p[n] == '_') n++;
        if (n >= 4) return p;
        p += n - 1;
    }
    return NULL;
}

static char *slurp(const char *locale, const char *name) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s/%s.txt", NT_TEMPLATES_DIR, locale, name);
    FILE *f = fopen(path, "rb");
    if (f == NULL) return NULL;
    char *buf = calloc(1, 65537);
    assert_non_null(buf);
    size_t n = fread(buf, 1, 65536, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

typedef struct varset {
    char names[MAX_VARS][64];
    size_t n;
} varset;

static void vars_of(const char *text, varset *vs) {
    vs->n = 0;
    for (const char *p = strstr(text, "{{"); p; p = strstr(p + 2, "{{")) {
        const char *e = strstr(p, "}}");
        if (e == NULL) break;
        const char *k = p + 2;
        size_t klen = (size_t)(e - k);
        while (klen > 0 && *k == ' ') k++, klen--;
        while (klen > 0 && k[klen - 1] == ' ') klen--;
        bool seen = false;
        for (size_t i = 0; i < vs->n; i++)
            if (strlen(vs->names[i]) == klen && memcmp(vs->names[i], k, klen) == 0) seen = true;
        if (!seen && vs->n < MAX_VARS && klen < 64) {
            memcpy(vs->names[vs->n], k, klen);
            vs->names[vs->n][klen] = '\0';
            vs->n++;
        }
    }
}

static bool varset_equal(const varset *a, const varset *b) {
    if (a->n != b->n) return false;
    for (size_t i = 0; i < a->n; i++) {
        bool found = false;
        for (size_t j = 0; j < b->n; j++)
            if (strcmp(a->names[i], b->names[j]) == 0) found = true;
        if (!found) return false;
    }
    return true;
}

static const char *representative(const char *name) {
    if (strcmp(name, "link") == 0) return "https://app.example.test/access?request=r1&token=t1";
    if (strstr(name, "email")) return "ana.zoe@example.test";
    if (strstr(name, "time") || strstr(name, "date")) return "2026-12-03 10:00";
    if (strstr(name, "name")) return "Ana Zoë <b>&\"";
    return "4711";
}

static bool is_phrase_var(const char *name) { return strcmp(name, "reason") == 0; }

/* Fails the test with the offending text. */
static void check_clean(const char *what, const char *locale, const char *name, const char *text) {
    if (strstr(text, "{{") != NULL) fail_msg("%s %s/%s: placeholder left:\n%s", what, locale, name, text);
    const char *tok = enum_token(text);
    if (tok != NULL) fail_msg("%s %s/%s: code '%.24s' in:\n%s", what, locale, name, tok, text);
}

static void check_no_english(const nt_templates *t, const char *locale, const char *name, const char *text) {
    if (strcmp(locale, NT_FALLBACK_LOCALE) == 0) return;
    const char *key;
    for (size_t i = 0; (key = nt_phrase_key_at(t, NT_FALLBACK_LOCALE, i)) != NULL; i++) {
        const char *en = nt_phrase(t, NT_FALLBACK_LOCALE, key);
        if (strstr(text, en) != NULL) fail_msg("%s/%s: English phrase '%s' in:\n%s", locale, name, en, text);
    }
    /* and no sentence of the English template (lines without placeholders) */
    char *en = slurp(NT_FALLBACK_LOCALE, name);
    assert_non_null(en);
    for (char *line = strtok(en, "\n"); line; line = strtok(NULL, "\n")) {
        if (strlen(line) < 20 || strstr(line, "{{") || strncmp(line, "Subject:", 8) == 0) continue;
        if (strstr(text, line) != NULL) fail_msg("%s/%s: English line '%s' in:\n%s", locale, name, line, text);
    }
    free(en);
}

/* The parts of a formatted message: both declared, boundary closed. */
static void check_mime(const char *locale, const char *name, const char *subject, const char *body,
                       const char *html) {
    nt_mail m = {.from = "orgmesh <no-reply@example.test>",
                 .to = "ana@example.test",
                 .subject = subject,
                 .body = body,
                 .html = html,
                 .message_id = "<0123456789abcdef0123456789abcdef@orgmesh>",
                 .locale = locale,
                 .event_id = "ev-1",
                 .date_s = 0};
    char *msg = NULL;
    size_t len = 0;
    assert_int_equal(nt_mail_format(&m, &msg, &len), 0);
    if (strstr(msg, "Content-Type: multipart/alternative;") == NULL ||
        strstr(msg, "\r\nContent-Type: text/plain; charset=utf-8\r\n") == NULL ||
        strstr(msg, "\r\nContent-Type: text/html; charset=utf-8\r\n") == NULL ||
        strstr(msg, "--=_om_0123456789abcdef0123456789abcdef_orgmesh--\r\n") == NULL)
        fail_msg("%s/%s: not multipart/alternative with both parts:\n%s", locale, name, msg);
    for (const char *p = msg; *p;) { /* RFC 5322: lines of at most 998 octets */
        const char *e = strstr(p, "\r\n");
        assert_non_null(e);
        assert_true(e - p <= 998);
        p = e + 2;
    }
    free(msg);
}

/* NOTE-04 */
static void test_note_04_every_template_every_locale_in_its_own_words(void **state) {
    (void)state;
    nt_templates *t = load_real();
    size_t rendered = 0;
    const char *locale, *name;
    for (size_t i = 0; nt_template_at(t, i, &locale, &name) == 0; i++) {
        char *raw = slurp(locale, name), *en_raw = slurp(NT_FALLBACK_LOCALE, name);
        assert_non_null(raw);
        if (en_raw == NULL) fail_msg("%s/%s has no English template", locale, name);
        varset vs, en_vs;
        vars_of(raw, &vs);
        vars_of(en_raw, &en_vs);
        if (!varset_equal(&vs, &en_vs)) fail_msg("%s/%s: variables differ from en/%s", locale, name, name);
        free(raw);
        free(en_raw);
        nt_var vars[MAX_VARS];
        size_t phrase_var = MAX_VARS;
        for (size_t k = 0; k < vs.n; k++) {
            vars[k] = (nt_var){vs.names[k], representative(vs.names[k]), 0};
            if (is_phrase_var(vs.names[k])) phrase_var = k;
        }
        /* one rendering per phrase when the kind shows one, else one */
        const char *key = NULL;
        for (size_t p = 0;; p++) {
            if (phrase_var < MAX_VARS) {
                key = nt_phrase_key_at(t, NT_FALLBACK_LOCALE, p);
                if (key == NULL) break;
                vars[phrase_var] = (nt_var){"reason", key, 1};
            } else if (p > 0) {
                break;
            }
            char *s = NULL, *b = NULL, *h = NULL;
            assert_int_equal(nt_render(t, name, locale, vars, vs.n, &s, &b), 0);
            assert_int_equal(nt_render_html(t, name, locale, vars, vs.n, &h), 0); /* the kind's own, if any */
            if (h == NULL) assert_int_equal(nt_html_from_text(t, locale, s, b, &h), 0);
            check_clean("subject", locale, name, s);
            check_clean("body", locale, name, b);
            check_clean("html", locale, name, h);
            check_no_english(t, locale, name, s);
            check_no_english(t, locale, name, b);
            check_mime(locale, name, s, b, h);
            free(s);
            free(b);
            free(h);
            rendered++;
        }
    }
    assert_true(rendered >= 6 * 9);
    nt_templates_free(t);
}

/* NOTE-04: every locale has a phrase for every English key, in its own
 * words and without codes. */
static void test_note_04_phrases_complete_in_every_locale(void **state) {
    (void)state;
    nt_templates *t = load_real();
    const char *locales[16];
    size_t n_loc = 0;
    const char *locale, *name;
    for (size_t i = 0; nt_template_at(t, i, &locale, &name) == 0; i++) {
        bool seen = false;
        for (size_t k = 0; k < n_loc; k++)
            if (strcmp(locales[k], locale) == 0) seen = true;
        if (!seen && n_loc < 16) locales[n_loc++] = locale;
    }
    assert_true(n_loc >= 6);
    const char *key;
    size_t n_keys = 0;
    for (size_t i = 0; (key = nt_phrase_key_at(t, NT_FALLBACK_LOCALE, i)) != NULL; i++, n_keys++) {
        const char *en = nt_phrase(t, NT_FALLBACK_LOCALE, key);
        for (size_t l = 0; l < n_loc; l++) {
            const char *own = NULL;
            for (size_t k = 0; (name = nt_phrase_key_at(t, locales[l], k)) != NULL; k++)
                if (strcmp(name, key) == 0) own = nt_phrase(t, locales[l], key);
            if (own == NULL) fail_msg("%s/phrases.ini lacks %s", locales[l], key);
            if (own[0] == '\0' || enum_token(own)) fail_msg("%s/phrases.ini %s = '%s'", locales[l], key, own);
            if (strcmp(locales[l], NT_FALLBACK_LOCALE) != 0 && strcmp(own, en) == 0)
                fail_msg("%s/phrases.ini %s is the English text", locales[l], key);
        }
    }
    assert_true(n_keys >= 20);
    /* an unknown key renders as nothing, never as itself */
    nt_var v[] = {{"reason", "departure.NO_SUCH_CODE", 1}};
    char *s = NULL, *b = NULL;
    assert_int_equal(nt_render(t, "org_member_removed", "it", v, 1, &s, &b), 0);
    assert_null(strstr(b, "NO_SUCH_CODE"));
    free(s);
    free(b);
    nt_templates_free(t);
}

/* NOTE-04: a name like <b>&" is escaped in the HTML part and kept as is in
 * the text part; links become anchors; the subject and language reach the
 * layout. */
static void test_note_04_html_part_escapes_every_variable(void **state) {
    (void)state;
    nt_templates *t = load_real();
    nt_var vars[] = {{"employee_name", "<b>&\""},
                     {"partner_name", "Agency"},
                     {"client_name", "Acme"},
                     {"employee_email", "e@example.test"},
                     {"link", "https://app.example.test/a?request=1&token=x"},
                     {"expire_time", "2026-12-03"}};
    char *s = NULL, *b = NULL, *h = NULL;
    assert_int_equal(nt_render(t, "access_requested", "pl", vars, 6, &s, &b), 0);
    assert_non_null(strstr(b, "<b>&\""));
    assert_int_equal(nt_html_from_text(t, "pl", s, b, &h), 0);
    assert_null(strstr(h, "<b>&\""));
    assert_non_null(strstr(h, "&lt;b&gt;&amp;&quot;"));
    assert_non_null(strstr(h, "<a href=\"https://app.example.test/a?request=1&amp;token=x\">"));
    assert_non_null(strstr(h, "lang=\"pl\""));
    assert_non_null(strstr(h, "<title>"));
    assert_null(strstr(h, "{{"));
    free(s);
    free(b);
    free(h);
    nt_templates_free(t);
}

/* NOTE-04: a kind's own <kind>.html: its placeholders with every value
 * (phrases too) HTML-escaped; only in the language of the text part. */
static void test_note_04_kind_html_template_escapes_values(void **state) {
    (void)state;
    char dir[] = "/tmp/nt_l10n_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256];
    const char *files[][2] = {
        {"en", NULL},
        {"it", NULL},
        {"en/hello.txt", "Subject: Hi {{name}}\nDear {{name}}: {{reason}}\n"},
        {"en/hello.html", "<p>Dear <b>{{name}}</b>: {{reason}}</p>\n"},
        {"en/phrases.ini", "x.Y = a & b\n"},
        {"it/hello.txt", "Subject: Ciao {{name}}\nCaro {{name}}: {{reason}}\n"},
        {"it/phrases.ini", "x.Y = a e b\n"},
    };
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[i][0]);
        if (files[i][1] == NULL) {
            assert_int_equal(mkdir(path, 0700), 0);
            continue;
        }
        FILE *f = fopen(path, "w");
        assert_non_null(f);
        fputs(files[i][1], f);
        fclose(f);
    }
    nt_templates *t = NULL;
    assert_int_equal(nt_templates_load(dir, &t), 0);
    nt_var vars[] = {{"name", "<i>&\"", 0}, {"reason", "x.Y", 1}};
    char *h = NULL;
    assert_int_equal(nt_render_html(t, "hello", "en", vars, 2, &h), 0);
    assert_string_equal(h, "<p>Dear <b>&lt;i&gt;&amp;&quot;</b>: a &amp; b</p>\n");
    free(h);
    /* Italian has no HTML of its own: the caller uses the layout */
    assert_int_equal(nt_render_html(t, "hello", "it", vars, 2, &h), 0);
    assert_null(h);
    assert_int_equal(nt_render_html(t, "nope", "en", vars, 2, &h), OM_E_NOT_FOUND);
    nt_templates_free(t);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_note_04_every_template_every_locale_in_its_own_words),
        cmocka_unit_test(test_note_04_phrases_complete_in_every_locale),
        cmocka_unit_test(test_note_04_html_part_escapes_every_variable),
        cmocka_unit_test(test_note_04_kind_html_template_escapes_values),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
