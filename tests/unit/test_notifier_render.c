/* test_notifier_render.c — the pure part of the notifier (SPEC 7), no server:
 * templates from files in every required locale with fallback to English
 * (NOTE-02), placeholder substitution without header injection, the stable
 * Message-ID (NOTE-03) and the RFC 5322 message with encoded-word subjects
 * and a base64 UTF-8 body. Reads the real templates of the source tree
 * (NT_TEMPLATES_DIR) and temporary ones it writes itself. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/evp.h>

#include "notifier_render.h"
#include "om_err.h"

static const char *const LOCALES[] = {"en", "it", "es", "pl", "ja", "nl"};
static const char *const TEMPLATES[] = {"access_requested", "access_approved",    "access_declined",
                                        "access_expired",   "access_cancelled",   "access_revoked",
                                        "org_member_removed", "org_deleted",      "connection_restricted"};

static nt_templates *load_real(void) {
    nt_templates *t = NULL;
    assert_int_equal(nt_templates_load(NT_TEMPLATES_DIR, &t), 0);
    return t;
}

/* NOTE-02: every template exists in every required language, and each
 * language's text is its own (not a copy of the English one). */
static void test_note_02_every_template_in_six_languages(void **state) {
    (void)state;
    nt_templates *t = load_real();
    assert_true(nt_templates_count(t) >= 54);
    nt_var vars[] = {{"client_name", "Acme"}, {"partner_name", "Agency"}, {"employee_name", "Ada"}};
    for (size_t k = 0; k < sizeof TEMPLATES / sizeof TEMPLATES[0]; k++) {
        char *en_s = NULL, *en_b = NULL;
        assert_int_equal(nt_render(t, TEMPLATES[k], "en", vars, 3, &en_s, &en_b), 0);
        for (size_t l = 0; l < sizeof LOCALES / sizeof LOCALES[0]; l++) {
            assert_string_equal(nt_locale_pick(t, TEMPLATES[k], LOCALES[l]), LOCALES[l]);
            if (l == 0) continue;
            char *s = NULL, *b = NULL;
            assert_int_equal(nt_render(t, TEMPLATES[k], LOCALES[l], vars, 3, &s, &b), 0);
            assert_string_not_equal(b, en_b);
            assert_null(strstr(s, "{{"));
            free(s);
            free(b);
        }
        free(en_s);
        free(en_b);
    }
    nt_templates_free(t);
}

/* NOTE-02: region subtags and case are ignored; unknown or empty locales
 * fall back to English. */
static void test_note_02_locale_fallback(void **state) {
    (void)state;
    nt_templates *t = load_real();
    assert_string_equal(nt_locale_pick(t, "access_requested", "it-IT"), "it");
    assert_string_equal(nt_locale_pick(t, "access_requested", "JA"), "ja");
    assert_string_equal(nt_locale_pick(t, "access_requested", "nl_BE"), "nl");
    assert_string_equal(nt_locale_pick(t, "access_requested", "pt-BR"), "en");
    assert_string_equal(nt_locale_pick(t, "access_requested", ""), "en");
    assert_string_equal(nt_locale_pick(t, "access_requested", NULL), "en");
    assert_string_equal(nt_locale_pick(t, "access_requested", "../en"), "en");
    assert_string_equal(nt_locale_pick(t, "no_such_template", "it"), "en");
    char *s = NULL, *b = NULL;
    assert_int_equal(nt_render(t, "no_such_template", "en", NULL, 0, &s, &b), OM_E_NOT_FOUND);
    nt_templates_free(t);
}

static char tmpdir[64];

static void write_file(const char *rel, const char *text) {
    char path[256];
    snprintf(path, sizeof path, "%s/%s", tmpdir, rel);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void make_tmp(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/nt_tpl_XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
    char p[128];
    snprintf(p, sizeof p, "%s/en", tmpdir);
    mkdir(p, 0700);
    snprintf(p, sizeof p, "%s/it", tmpdir);
    mkdir(p, 0700);
}

static void rm_tmp(void) {
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    assert_int_equal(system(cmd), 0);
}

/* Placeholders are replaced literally; unknown ones vanish; a value never
 * breaks the subject line (no header injection); a template missing in a
 * language falls back to English. */
static void test_note_02_substitution_and_per_template_fallback(void **state) {
    (void)state;
    make_tmp();
    write_file("en/hello.txt", "Subject: Hi {{ name }} from {{org}}\nDear {{name}},\n{{missing}}link: {{link}}\n");
    write_file("en/only_en.txt", "Subject: English only\nbody\n");
    write_file("it/hello.txt", "Subject: Ciao {{name}}\nCaro {{name}}\n");
    nt_templates *t = NULL;
    assert_int_equal(nt_templates_load(tmpdir, &t), 0);
    nt_var vars[] = {{"name", "Eve\r\nBcc: x@evil"}, {"org", "{{name}}"}, {"link", "https://x/?a=1&b=2"}};
    char *s = NULL, *b = NULL;
    assert_int_equal(nt_render(t, "hello", "en", vars, 3, &s, &b), 0);
    assert_null(strchr(s, '\n'));
    assert_null(strchr(s, '\r'));
    assert_string_equal(s, "Hi Eve  Bcc: x@evil from {{name}}"); /* values are not re-expanded */
    assert_string_equal(b, "Dear Eve\r\nBcc: x@evil,\nlink: https://x/?a=1&b=2\n");
    free(s);
    free(b);
    assert_string_equal(nt_locale_pick(t, "only_en", "it"), "en");
    assert_int_equal(nt_render(t, "only_en", "it", NULL, 0, &s, &b), 0);
    assert_string_equal(s, "English only");
    free(s);
    free(b);
    nt_templates_free(t);
    /* a file without its subject line is refused at start */
    write_file("it/broken.txt", "no subject here\n");
    assert_int_equal(nt_templates_load(tmpdir, &t), OM_E_INVALID_ARGUMENT);
    rm_tmp();
    /* no English templates at all: refused */
    make_tmp();
    write_file("it/hello.txt", "Subject: Ciao\n\n");
    assert_int_equal(nt_templates_load(tmpdir, &t), OM_E_NOT_FOUND);
    rm_tmp();
    assert_int_equal(nt_templates_load("/nonexistent/templates", &t), OM_E_NOT_FOUND);
}

/* NOTE-03: the Message-ID depends only on event id and recipient. */
static void test_note_03_message_id_is_stable_per_event_and_recipient(void **state) {
    (void)state;
    char a[64], b[64], c[64], d[64];
    nt_message_id("6f1c0e4e-aaaa-4bbb-8ccc-000000000001", 42, a, sizeof a);
    nt_message_id("6f1c0e4e-aaaa-4bbb-8ccc-000000000001", 42, b, sizeof b);
    nt_message_id("6f1c0e4e-aaaa-4bbb-8ccc-000000000001", 43, c, sizeof c);
    nt_message_id("6f1c0e4e-aaaa-4bbb-8ccc-000000000002", 42, d, sizeof d);
    assert_string_equal(a, b);
    assert_string_not_equal(a, c);
    assert_string_not_equal(a, d);
    assert_int_equal(strlen(a), 1 + 32 + 9);
    assert_true(a[0] == '<' && strcmp(a + 33, "@orgmesh>") == 0);
}

static char *header_value(const char *msg, const char *name) {
    size_t n = strlen(name);
    for (const char *p = msg; p && *p; p = strstr(p, "\r\n") ? strstr(p, "\r\n") + 2 : NULL) {
        if (strncmp(p, "\r\n", 2) == 0) break;
        if (strncmp(p, name, n) == 0 && p[n] == ':') {
            const char *e = strstr(p, "\r\n");
            /* unfold continuation lines */
            while (e && (e[2] == ' ' || e[2] == '\t')) e = strstr(e + 2, "\r\n");
            return strndup(p + n + 2, (size_t)(e - p - n - 2));
        }
    }
    return NULL;
}

/* The message: headers, RFC 2047 subject for Japanese, base64 UTF-8 body
 * with CRLF line ends that decodes back to the text. */
static void test_note_02_message_is_rfc5322_with_utf8(void **state) {
    (void)state;
    const char *subject = "エージェンシーが東京のアクセスを依頼しています（テスト用の長い件名です）";
    nt_mail m = {.from = "orgmesh <no-reply@example.test>",
                 .to = "carla@example.test",
                 .subject = subject,
                 .body = "こんにちは\nline two\n",
                 .message_id = "<0123456789abcdef0123456789abcdef@orgmesh>",
                 .locale = "ja",
                 .event_id = "ev-1",
                 .date_s = 0};
    char *msg = NULL;
    size_t len = 0;
    assert_int_equal(nt_mail_format(&m, &msg, &len), 0);
    assert_int_equal(strlen(msg), len);
    char *v = header_value(msg, "Message-ID");
    assert_string_equal(v, "<0123456789abcdef0123456789abcdef@orgmesh>");
    free(v);
    v = header_value(msg, "Date");
    assert_string_equal(v, "Thu, 01 Jan 1970 00:00:00 +0000");
    free(v);
    v = header_value(msg, "Content-Type"); /* NOTE-04: text and HTML */
    assert_string_equal(v, "multipart/alternative;\r\n boundary=\"=_om_0123456789abcdef0123456789abcdef_orgmesh\"");
    free(v);
    v = header_value(msg, "Content-Language");
    assert_string_equal(v, "ja");
    free(v);
    /* every header line is ASCII and at most 78 characters */
    const char *end = strstr(msg, "\r\n\r\n");
    assert_non_null(end);
    for (const char *p = msg; p < end;) {
        const char *e = strstr(p, "\r\n");
        assert_true(e - p <= 78);
        for (const char *q = p; q < e; q++) assert_true((unsigned char)*q < 0x80);
        p = e + 2;
    }
    /* decode the encoded words back */
    v = header_value(msg, "Subject");
    char decoded[512] = "";
    for (char *w = strstr(v, "=?UTF-8?B?"); w; w = strstr(w, "=?UTF-8?B?")) {
        w += 10;
        char *q = strstr(w, "?=");
        unsigned char out[256];
        int n = EVP_DecodeBlock(out, (const unsigned char *)w, (int)(q - w));
        assert_true(n > 0);
        while (n > 0 && (q[-1] == '=')) n--, q--; /* padding */
        strncat(decoded, (const char *)out, (size_t)n);
        w = strstr(w, "?=") + 2;
    }
    assert_string_equal(decoded, subject);
    free(v);
    /* the body: its text/plain part */
    const char *b64 = strstr(end, "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n");
    assert_non_null(b64);
    b64 = strstr(b64, "\r\n\r\n") + 4;
    const char *b64_end = strstr(b64, "\r\n--=_om_");
    assert_non_null(b64_end);
    char joined[1024] = "";
    for (const char *p = b64; p < b64_end; p++)
        if (*p != '\r' && *p != '\n') strncat(joined, p, 1);
    unsigned char body[1024];
    int n = EVP_DecodeBlock(body, (const unsigned char *)joined, (int)strlen(joined));
    size_t pad = 0;
    for (size_t i = strlen(joined); i > 0 && joined[i - 1] == '='; i--) pad++;
    body[n - (int)pad] = '\0';
    assert_string_equal((char *)body, "こんにちは\r\nline two\r\n");
    free(msg);
    /* an ASCII subject stays plain; header values cannot inject lines */
    m.subject = "Plain";
    m.to = "a@b.test\r\nBcc: evil@x.test";
    assert_int_equal(nt_mail_format(&m, &msg, &len), 0);
    v = header_value(msg, "Subject");
    assert_string_equal(v, "Plain");
    free(v);
    assert_null(strstr(msg, "\r\nBcc:"));
    free(msg);
    char addr[64];
    nt_mail_address("orgmesh <no-reply@example.test>", addr, sizeof addr);
    assert_string_equal(addr, "no-reply@example.test");
    nt_mail_address("plain@example.test", addr, sizeof addr);
    assert_string_equal(addr, "plain@example.test");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_note_02_every_template_in_six_languages),
        cmocka_unit_test(test_note_02_locale_fallback),
        cmocka_unit_test(test_note_02_substitution_and_per_template_fallback),
        cmocka_unit_test(test_note_03_message_id_is_stable_per_event_and_recipient),
        cmocka_unit_test(test_note_02_message_is_rfc5322_with_utf8),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
