/* notifier_render.c — templates from files, locale fallback and the RFC 5322
 * message (NOTE-02, NOTE-03 Message-ID). Pure apart from reading the
 * template directory once; unit-tested in tests/unit/test_notifier_render.c. */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/sha.h>

#include "notifier_render.h"
#include "om_err.h"

#define NT_MAX_TEMPLATE_BYTES (64 * 1024)

typedef struct nt_tpl {
    char locale[16];
    char name[64];
    char *subject;
    char *body;
} nt_tpl;

typedef struct nt_phr {
    char locale[16];
    char *key;
    char *text;
} nt_phr;

typedef struct nt_layout {
    char locale[16]; /* "" = the shared one */
    char *html;
} nt_layout;

struct nt_templates {
    nt_tpl *v;
    size_t n, cap;
    nt_phr *ph; /* NOTE-04 phrases */
    size_t n_ph, cap_ph;
    nt_layout *lay; /* NOTE-04 HTML layouts */
    size_t n_lay;
    nt_tpl *html; /* NOTE-04 a kind's own HTML part (subject unused) */
    size_t n_html;
};

/* ---- a growing string ----------------------------------------------------- */

typedef struct sbuf {
    char *p;
    size_t n, cap;
    bool oom;
} sbuf;

static void sb_add(sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (p == NULL) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void sb_str(sbuf *b, const char *s) { sb_add(b, s, strlen(s)); }

static int sb_done(sbuf *b, char **out) {
    if (b->oom) {
        free(b->p);
        return OM_E_NOMEM;
    }
    if (b->p == NULL) sb_add(b, "", 0);
    if (b->oom) return OM_E_NOMEM;
    *out = b->p;
    return 0;
}

/* ---- loading ---------------------------------------------------------------- */

static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) return NULL;
    char *buf = malloc(NT_MAX_TEMPLATE_BYTES + 1);
    size_t n = buf ? fread(buf, 1, NT_MAX_TEMPLATE_BYTES, f) : 0;
    fclose(f);
    if (buf) buf[n] = '\0';
    return buf;
}

static bool valid_part(const char *s, size_t max) {
    size_t n = strlen(s);
    if (n == 0 || n >= max || s[0] == '.') return false;
    for (size_t i = 0; i < n; i++)
        if (!(isalnum((unsigned char)s[i]) || s[i] == '_' || s[i] == '-')) return false;
    return true;
}

static int add_template(nt_templates *t, const char *locale, const char *name, char *text) {
    if (strncmp(text, "Subject:", 8) != 0) return OM_E_INVALID_ARGUMENT;
    char *nl = strchr(text, '\n');
    char *body = nl ? nl + 1 : text + strlen(text);
    char *s = text + 8;
    while (*s == ' ') s++;
    size_t slen = (nl ? (size_t)(nl - s) : strlen(s));
    while (slen > 0 && (s[slen - 1] == '\r' || s[slen - 1] == ' ')) slen--;
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 64;
        nt_tpl *v = realloc(t->v, cap * sizeof *v);
        if (v == NULL) return OM_E_NOMEM;
        t->v = v;
        t->cap = cap;
    }
    nt_tpl *e = &t->v[t->n];
    memset(e, 0, sizeof *e);
    snprintf(e->locale, sizeof e->locale, "%.15s", locale);
    snprintf(e->name, sizeof e->name, "%s", name);
    e->subject = strndup(s, slen);
    e->body = strdup(body);
    if (e->subject == NULL || e->body == NULL) {
        free(e->subject);
        free(e->body);
        return OM_E_NOMEM;
    }
    t->n++;
    return 0;
}

/* NOTE-04: "key = text" lines; blank lines and '#' comments skipped. */
static int load_phrases(nt_templates *t, const char *locale, const char *text) {
    for (const char *line = text; line && *line;) {
        const char *nl = strchr(line, '\n');
        size_t len = nl ? (size_t)(nl - line) : strlen(line);
        const char *eq = memchr(line, '=', len);
        if (line[0] != '#' && eq != NULL) {
            const char *k = line, *ke = eq, *v = eq + 1, *ve = line + len;
            while (k < ke && isspace((unsigned char)*k)) k++;
            while (ke > k && isspace((unsigned char)ke[-1])) ke--;
            while (v < ve && isspace((unsigned char)*v)) v++;
            while (ve > v && isspace((unsigned char)ve[-1])) ve--;
            if (ke > k) {
                if (t->n_ph == t->cap_ph) {
                    size_t cap = t->cap_ph ? t->cap_ph * 2 : 64;
                    nt_phr *ph = realloc(t->ph, cap * sizeof *ph);
                    if (ph == NULL) return OM_E_NOMEM;
                    t->ph = ph;
                    t->cap_ph = cap;
                }
                nt_phr *e = &t->ph[t->n_ph];
                snprintf(e->locale, sizeof e->locale, "%.15s", locale);
                e->key = strndup(k, (size_t)(ke - k));
                e->text = strndup(v, (size_t)(ve - v));
                if (e->key == NULL || e->text == NULL) {
                    free(e->key);
                    free(e->text);
                    return OM_E_NOMEM;
                }
                t->n_ph++;
            }
        }
        line = nl ? nl + 1 : NULL;
    }
    return 0;
}

/* NOTE-04: <path> as the layout of `locale` ("" = shared), when it exists. */
static int load_layout(nt_templates *t, const char *locale, const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) return 0;
    char *html = read_file(path);
    if (html == NULL) return OM_E_INTERNAL;
    nt_layout *lay = realloc(t->lay, (t->n_lay + 1) * sizeof *lay);
    if (lay == NULL) {
        free(html);
        return OM_E_NOMEM;
    }
    t->lay = lay;
    snprintf(lay[t->n_lay].locale, sizeof lay[t->n_lay].locale, "%.15s", locale);
    lay[t->n_lay].html = html;
    t->n_lay++;
    return 0;
}

/* NOTE-04: <dir>/<locale>/<name>.html, a kind's own HTML part. */
static int load_kind_html(nt_templates *t, const char *dir, const char *locale, const char *file, size_t name_len) {
    char name[64];
    if (name_len >= sizeof name) return 0;
    memcpy(name, file, name_len);
    name[name_len] = '\0';
    if (!valid_part(name, sizeof name)) return 0;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s/%s", dir, locale, file);
    char *text = read_file(path);
    if (text == NULL) return OM_E_INTERNAL;
    nt_tpl *v = realloc(t->html, (t->n_html + 1) * sizeof *v);
    if (v == NULL) {
        free(text);
        return OM_E_NOMEM;
    }
    t->html = v;
    nt_tpl *e = &v[t->n_html];
    memset(e, 0, sizeof *e);
    snprintf(e->locale, sizeof e->locale, "%.15s", locale);
    snprintf(e->name, sizeof e->name, "%s", name);
    e->body = text;
    t->n_html++;
    return 0;
}

static int load_locale(nt_templates *t, const char *dir, const char *locale) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, locale);
    DIR *d = opendir(path);
    if (d == NULL) return 0;
    int rc = 0;
    snprintf(path, sizeof path, "%s/%s/phrases.ini", dir, locale);
    char *ph = read_file(path);
    if (ph != NULL) {
        rc = load_phrases(t, locale, ph);
        free(ph);
    }
    snprintf(path, sizeof path, "%s/%s/layout.html", dir, locale);
    if (rc == 0) rc = load_layout(t, locale, path);
    struct dirent *de;
    while (rc == 0 && (de = readdir(d)) != NULL) {
        size_t n = strlen(de->d_name);
        if (n > 5 && strcmp(de->d_name + n - 5, ".html") == 0 && strcmp(de->d_name, "layout.html") != 0) {
            rc = load_kind_html(t, dir, locale, de->d_name, n - 5);
            continue;
        }
        if (n < 5 || strcmp(de->d_name + n - 4, ".txt") != 0) continue;
        char name[64];
        if (n - 4 >= sizeof name) continue;
        memcpy(name, de->d_name, n - 4);
        name[n - 4] = '\0';
        if (!valid_part(name, sizeof name)) continue;
        snprintf(path, sizeof path, "%s/%s/%s", dir, locale, de->d_name);
        char *text = read_file(path);
        if (text == NULL) {
            rc = OM_E_INTERNAL;
            break;
        }
        rc = add_template(t, locale, name, text);
        free(text);
    }
    closedir(d);
    return rc;
}

int nt_templates_load(const char *dir, nt_templates **out) {
    *out = NULL;
    nt_templates *t = calloc(1, sizeof *t);
    if (t == NULL) return OM_E_NOMEM;
    DIR *d = opendir(dir);
    if (d == NULL) {
        free(t);
        return OM_E_NOT_FOUND;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/layout.html", dir);
    int rc = load_layout(t, "", path);
    struct dirent *de;
    while (rc == 0 && (de = readdir(d)) != NULL) {
        if (!valid_part(de->d_name, sizeof t->v[0].locale)) continue;
        rc = load_locale(t, dir, de->d_name);
    }
    closedir(d);
    bool has_en = false;
    for (size_t i = 0; i < t->n; i++)
        if (strcmp(t->v[i].locale, NT_FALLBACK_LOCALE) == 0) has_en = true;
    if (rc == 0 && !has_en) rc = OM_E_NOT_FOUND;
    if (rc != 0) {
        nt_templates_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

void nt_templates_free(nt_templates *t) {
    if (t == NULL) return;
    for (size_t i = 0; i < t->n; i++) {
        free(t->v[i].subject);
        free(t->v[i].body);
    }
    free(t->v);
    for (size_t i = 0; i < t->n_ph; i++) {
        free(t->ph[i].key);
        free(t->ph[i].text);
    }
    free(t->ph);
    for (size_t i = 0; i < t->n_lay; i++) free(t->lay[i].html);
    free(t->lay);
    for (size_t i = 0; i < t->n_html; i++) free(t->html[i].body);
    free(t->html);
    free(t);
}

int nt_template_at(const nt_templates *t, size_t i, const char **locale, const char **name) {
    if (t == NULL || i >= t->n) return OM_E_NOT_FOUND;
    *locale = t->v[i].locale;
    *name = t->v[i].name;
    return 0;
}

const char *nt_phrase_key_at(const nt_templates *t, const char *locale, size_t i) {
    for (size_t k = 0; t != NULL && k < t->n_ph; k++)
        if (strcmp(t->ph[k].locale, locale) == 0 && i-- == 0) return t->ph[k].key;
    return NULL;
}

static const char *phrase_in(const nt_templates *t, const char *locale, const char *key) {
    for (size_t i = 0; i < t->n_ph; i++)
        if (strcmp(t->ph[i].locale, locale) == 0 && strcmp(t->ph[i].key, key) == 0) return t->ph[i].text;
    return NULL;
}

const char *nt_phrase(const nt_templates *t, const char *locale, const char *key) {
    if (t == NULL || key == NULL) return NULL;
    const char *p = locale ? phrase_in(t, locale, key) : NULL;
    return p ? p : phrase_in(t, NT_FALLBACK_LOCALE, key);
}

size_t nt_templates_count(const nt_templates *t) { return t ? t->n : 0; }

static const nt_tpl *find(const nt_templates *t, const char *name, const char *locale) {
    for (size_t i = 0; i < t->n; i++)
        if (strcmp(t->v[i].name, name) == 0 && strcmp(t->v[i].locale, locale) == 0) return &t->v[i];
    return NULL;
}

/* NOTE-02: the primary language subtag of the recipient's locale when the
 * template exists in it, else English. */
const char *nt_locale_pick(const nt_templates *t, const char *name, const char *locale) {
    char lang[16] = "";
    size_t i = 0;
    if (locale != NULL)
        for (; locale[i] && locale[i] != '-' && locale[i] != '_' && i + 1 < sizeof lang; i++)
            lang[i] = (char)tolower((unsigned char)locale[i]);
    lang[i] = '\0';
    if (lang[0] != '\0') {
        const nt_tpl *e = find(t, name, lang);
        if (e != NULL) return e->locale;
    }
    return NT_FALLBACK_LOCALE;
}

/* ---- rendering ----------------------------------------------------------------- */

static const char *lookup(const nt_templates *t, const char *locale, const nt_var *vars, size_t n, const char *key,
                          size_t klen) {
    for (size_t i = 0; i < n; i++)
        if (strlen(vars[i].key) == klen && memcmp(vars[i].key, key, klen) == 0) {
            if (vars[i].value == NULL) return "";
            if (!vars[i].phrase) return vars[i].value;
            /* NOTE-04: a code becomes the locale's words, never itself */
            const char *p = nt_phrase(t, locale, vars[i].value);
            return p ? p : "";
        }
    return "";
}

static void html_escape(sbuf *b, const char *s, size_t n);

static int substitute(const nt_templates *t, const char *locale, const char *src, const nt_var *vars, size_t n,
                      bool one_line, bool escape, char **out) {
    sbuf b = {0};
    const char *p = src;
    for (;;) {
        const char *open = strstr(p, "{{");
        const char *close = open ? strstr(open + 2, "}}") : NULL;
        if (open == NULL || close == NULL) {
            sb_str(&b, p);
            break;
        }
        sb_add(&b, p, (size_t)(open - p));
        const char *k = open + 2;
        size_t klen = (size_t)(close - k);
        while (klen > 0 && *k == ' ') k++, klen--;
        while (klen > 0 && k[klen - 1] == ' ') klen--;
        const char *v = lookup(t, locale, vars, n, k, klen);
        if (escape) {
            html_escape(&b, v, strlen(v)); /* NOTE-04: every value, in a kind's own HTML */
        } else if (one_line) {
            for (const char *q = v; *q; q++) sb_add(&b, (*q == '\r' || *q == '\n') ? " " : q, 1);
        } else {
            sb_str(&b, v);
        }
        p = close + 2;
    }
    return sb_done(&b, out);
}

int nt_render(const nt_templates *t, const char *name, const char *locale, const nt_var *vars, size_t n_vars,
              char **subject, char **body) {
    *subject = *body = NULL;
    const nt_tpl *e = find(t, name, locale);
    if (e == NULL) e = find(t, name, NT_FALLBACK_LOCALE);
    if (e == NULL) return OM_E_NOT_FOUND;
    int rc = substitute(t, e->locale, e->subject, vars, n_vars, true, false, subject);
    if (rc == 0) rc = substitute(t, e->locale, e->body, vars, n_vars, false, false, body);
    if (rc != 0) {
        free(*subject);
        *subject = NULL;
    }
    return rc;
}

int nt_render_html(const nt_templates *t, const char *name, const char *locale, const nt_var *vars, size_t n_vars,
                   char **html) {
    *html = NULL;
    /* the language of the text part: never an HTML part in another one */
    const nt_tpl *txt = find(t, name, locale);
    if (txt == NULL) txt = find(t, name, NT_FALLBACK_LOCALE);
    if (txt == NULL) return OM_E_NOT_FOUND;
    for (size_t i = 0; i < t->n_html; i++)
        if (strcmp(t->html[i].name, name) == 0 && strcmp(t->html[i].locale, txt->locale) == 0)
            return substitute(t, txt->locale, t->html[i].body, vars, n_vars, false, true, html);
    return 0;
}

/* ---- the message ----------------------------------------------------------------- */

void nt_message_id(const char *event_id, uint64_t recipient, char *out, size_t cap) {
    char in[256];
    int n = snprintf(in, sizeof in, "%s/%llu", event_id, (unsigned long long)recipient);
    if (n < 0) n = 0;
    if ((size_t)n >= sizeof in) n = (int)sizeof in - 1;
    uint8_t h[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)in, (size_t)n, h);
    char hex[33];
    for (int i = 0; i < 16; i++) snprintf(hex + 2 * i, 3, "%02x", h[i]);
    snprintf(out, cap, "<%s@orgmesh>", hex);
}

static bool is_ascii_printable(const char *s) {
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e) return false;
    return true;
}

static void b64(sbuf *b, const unsigned char *in, size_t n) {
    char out[4 * ((3 * 19 + 2) / 3) + 4]; /* 57 bytes -> 76 chars */
    for (size_t off = 0; off < n; off += 57) {
        size_t k = n - off < 57 ? n - off : 57;
        int m = EVP_EncodeBlock((unsigned char *)out, in + off, (int)k);
        sb_add(b, out, (size_t)m);
        if (off + k < n) sb_str(b, "\r\n");
    }
}

/* RFC 2047: one or more =?UTF-8?B?...?= words, split on character boundaries
 * so that each stays within 75 characters, folded onto continuation lines. */
static void encoded_words(sbuf *b, const char *s) {
    size_t n = strlen(s), off = 0;
    bool first = true;
    while (off < n) {
        size_t k = 0;
        while (off + k < n) {
            size_t cl = 1;
            unsigned char c = (unsigned char)s[off + k];
            if (c >= 0xf0) cl = 4;
            else if (c >= 0xe0) cl = 3;
            else if (c >= 0xc0) cl = 2;
            if (k + cl > 42) break;
            k += cl;
        }
        if (k == 0) k = n - off < 4 ? n - off : 4;
        if (off + k > n) k = n - off;
        if (!first) sb_str(b, "\r\n ");
        sb_str(b, "=?UTF-8?B?");
        b64(b, (const unsigned char *)s + off, k);
        sb_str(b, "?=");
        first = false;
        off += k;
    }
}

void nt_mail_address(const char *from, char *out, size_t cap) {
    const char *lt = strrchr(from, '<');
    const char *gt = lt ? strchr(lt, '>') : NULL;
    if (lt != NULL && gt != NULL) {
        snprintf(out, cap, "%.*s", (int)(gt - lt - 1), lt + 1);
    } else {
        while (*from == ' ') from++;
        snprintf(out, cap, "%s", from);
    }
}

static void header(sbuf *b, const char *name, const char *value) {
    sb_str(b, name);
    sb_str(b, ": ");
    /* values come from configuration and templates: never let a line break
     * start a new header */
    for (const char *q = value; *q; q++) sb_add(b, (*q == '\r' || *q == '\n') ? " " : q, 1);
    sb_str(b, "\r\n");
}

/* ---- the HTML alternative (NOTE-04) ------------------------------------------------ */

static const char DEFAULT_LAYOUT[] =
    "<!doctype html>\n<html lang=\"{{lang}}\">\n<head><meta charset=\"utf-8\"><title>{{subject}}</title></head>\n"
    "<body>\n{{content}}\n</body>\n</html>\n";

static void html_escape(sbuf *b, const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        switch (s[i]) {
        case '&': sb_str(b, "&amp;"); break;
        case '<': sb_str(b, "&lt;"); break;
        case '>': sb_str(b, "&gt;"); break;
        case '"': sb_str(b, "&quot;"); break;
        case '\'': sb_str(b, "&#39;"); break;
        case '\r': break;
        default: sb_add(b, s + i, 1);
        }
    }
}

/* One line of text: escaped, with http(s) links as anchors. */
static void html_line(sbuf *b, const char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        const char *rest = s + i;
        size_t left = n - i;
        bool link = (left > 8 && strncmp(rest, "https://", 8) == 0) || (left > 7 && strncmp(rest, "http://", 7) == 0);
        if (link && (i == 0 || isspace((unsigned char)s[i - 1]) || s[i - 1] == '(')) {
            size_t k = 0;
            while (k < left && !isspace((unsigned char)rest[k]) && rest[k] != ')') k++;
            sb_str(b, "<a href=\"");
            html_escape(b, rest, k);
            sb_str(b, "\">");
            html_escape(b, rest, k);
            sb_str(b, "</a>");
            i += k;
        } else {
            html_escape(b, rest, 1);
            i++;
        }
    }
}

static void html_content(sbuf *b, const char *text) {
    bool in_p = false, first_line = true;
    for (const char *line = text; line != NULL && *line;) {
        const char *nl = strchr(line, '\n');
        size_t len = nl ? (size_t)(nl - line) : strlen(line);
        while (len > 0 && (line[len - 1] == '\r' || line[len - 1] == ' ')) len--;
        if (len == 0) {
            if (in_p) sb_str(b, "</p>\n");
            in_p = false;
        } else {
            if (!in_p) sb_str(b, "<p>");
            else if (!first_line) sb_str(b, "<br>\n");
            html_line(b, line, len);
            in_p = true;
            first_line = false;
        }
        if (len == 0) first_line = true;
        line = nl ? nl + 1 : NULL;
    }
    if (in_p) sb_str(b, "</p>");
}

static const char *layout_of(const nt_templates *t, const char *locale) {
    const char *shared = NULL;
    for (size_t i = 0; t != NULL && i < t->n_lay; i++) {
        if (locale != NULL && strcmp(t->lay[i].locale, locale) == 0) return t->lay[i].html;
        if (t->lay[i].locale[0] == '\0') shared = t->lay[i].html;
    }
    return shared ? shared : DEFAULT_LAYOUT;
}

int nt_html_from_text(const nt_templates *t, const char *locale, const char *subject, const char *text,
                      char **out) {
    *out = NULL;
    sbuf content = {0}, subj = {0}, lang = {0}, b = {0};
    html_content(&content, text ? text : "");
    html_escape(&subj, subject ? subject : "", subject ? strlen(subject) : 0);
    html_escape(&lang, locale ? locale : NT_FALLBACK_LOCALE, strlen(locale ? locale : NT_FALLBACK_LOCALE));
    sb_add(&content, "", 0);
    sb_add(&subj, "", 0);
    sb_add(&lang, "", 0);
    if (content.oom || subj.oom || lang.oom) {
        free(content.p);
        free(subj.p);
        free(lang.p);
        return OM_E_NOMEM;
    }
    /* the layout's own placeholders; values are already HTML and not re-expanded */
    const char *p = layout_of(t, locale);
    for (;;) {
        const char *open = strstr(p, "{{");
        const char *close = open ? strstr(open + 2, "}}") : NULL;
        if (open == NULL || close == NULL) {
            sb_str(&b, p);
            break;
        }
        sb_add(&b, p, (size_t)(open - p));
        const char *k = open + 2;
        size_t klen = (size_t)(close - k);
        while (klen > 0 && *k == ' ') k++, klen--;
        while (klen > 0 && k[klen - 1] == ' ') klen--;
        if (klen == 7 && memcmp(k, "content", 7) == 0) sb_str(&b, content.p);
        else if (klen == 7 && memcmp(k, "subject", 7) == 0) sb_str(&b, subj.p);
        else if (klen == 4 && memcmp(k, "lang", 4) == 0) sb_str(&b, lang.p);
        p = close + 2;
    }
    free(content.p);
    free(subj.p);
    free(lang.p);
    return sb_done(&b, out);
}

/* Text with CRLF line ends, base64 in lines of 76, as one MIME part. */
static int mime_part(sbuf *b, const char *boundary, const char *type, const char *text) {
    sb_str(b, "--");
    sb_str(b, boundary);
    sb_str(b, "\r\nContent-Type: ");
    sb_str(b, type);
    sb_str(b, "; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n");
    sbuf crlf = {0};
    for (const char *q = text; *q; q++) {
        if (*q == '\n' && (q == text || q[-1] != '\r')) sb_str(&crlf, "\r\n");
        else sb_add(&crlf, q, 1);
    }
    char *body = NULL;
    int rc = sb_done(&crlf, &body);
    if (rc != 0) return rc;
    b64(b, (const unsigned char *)body, strlen(body));
    free(body);
    sb_str(b, "\r\n");
    return 0;
}

int nt_mail_format(const nt_mail *m, char **out, size_t *len) {
    sbuf b = {0};
    char date[64];
    time_t t = (time_t)m->date_s;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S +0000", &tm);
    header(&b, "Message-ID", m->message_id);
    header(&b, "Date", date);
    header(&b, "From", m->from);
    header(&b, "To", m->to);
    if (is_ascii_printable(m->subject)) {
        header(&b, "Subject", m->subject);
    } else {
        sb_str(&b, "Subject: ");
        encoded_words(&b, m->subject);
        sb_str(&b, "\r\n");
    }
    header(&b, "MIME-Version", "1.0");
    /* NOTE-04: multipart/alternative, plain text first (RFC 2046 5.1.4: the
     * richest last). '_' never occurs in base64, so the boundary cannot. */
    char boundary[96];
    snprintf(boundary, sizeof boundary, "=_om_%.40s", m->message_id[0] == '<' ? m->message_id + 1 : m->message_id);
    for (char *q = boundary; *q; q++)
        if (!(isalnum((unsigned char)*q) || *q == '=' || *q == '_')) *q = '_';
    sb_str(&b, "Content-Type: multipart/alternative;\r\n boundary=\"");
    sb_str(&b, boundary);
    sb_str(&b, "\"\r\n");
    if (m->locale != NULL) header(&b, "Content-Language", m->locale);
    if (m->event_id != NULL) header(&b, "X-Orgmesh-Event-Id", m->event_id);
    sb_str(&b, "\r\n");
    char *html = NULL;
    int rc = 0;
    if (m->html == NULL) rc = nt_html_from_text(NULL, m->locale, m->subject, m->body, &html);
    if (rc == 0) rc = mime_part(&b, boundary, "text/plain", m->body);
    if (rc == 0) rc = mime_part(&b, boundary, "text/html", m->html ? m->html : html);
    free(html);
    if (rc != 0) {
        free(b.p);
        return rc;
    }
    sb_str(&b, "--");
    sb_str(&b, boundary);
    sb_str(&b, "--\r\n");
    rc = sb_done(&b, out);
    if (rc == 0) *len = b.n;
    return rc;
}
