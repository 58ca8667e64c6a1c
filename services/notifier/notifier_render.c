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

struct nt_templates {
    nt_tpl *v;
    size_t n, cap;
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
    snprintf(e->locale, sizeof e->locale, "%s", locale);
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

static int load_locale(nt_templates *t, const char *dir, const char *locale) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, locale);
    DIR *d = opendir(path);
    if (d == NULL) return 0;
    int rc = 0;
    struct dirent *de;
    while (rc == 0 && (de = readdir(d)) != NULL) {
        size_t n = strlen(de->d_name);
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
    int rc = 0;
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
    free(t);
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

static const char *lookup(const nt_var *vars, size_t n, const char *key, size_t klen) {
    for (size_t i = 0; i < n; i++)
        if (strlen(vars[i].key) == klen && memcmp(vars[i].key, key, klen) == 0)
            return vars[i].value ? vars[i].value : "";
    return "";
}

static int substitute(const char *src, const nt_var *vars, size_t n, bool one_line, char **out) {
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
        const char *v = lookup(vars, n, k, klen);
        if (one_line) {
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
    int rc = substitute(e->subject, vars, n_vars, true, subject);
    if (rc == 0) rc = substitute(e->body, vars, n_vars, false, body);
    if (rc != 0) {
        free(*subject);
        *subject = NULL;
    }
    return rc;
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
    header(&b, "Content-Type", "text/plain; charset=utf-8");
    header(&b, "Content-Transfer-Encoding", "base64");
    if (m->locale != NULL) header(&b, "Content-Language", m->locale);
    if (m->event_id != NULL) header(&b, "X-Orgmesh-Event-Id", m->event_id);
    sb_str(&b, "\r\n");
    /* the body with CRLF line ends, then base64 */
    sbuf crlf = {0};
    for (const char *q = m->body; *q; q++) {
        if (*q == '\n' && (q == m->body || q[-1] != '\r')) sb_str(&crlf, "\r\n");
        else sb_add(&crlf, q, 1);
    }
    char *body = NULL;
    int rc = sb_done(&crlf, &body);
    if (rc != 0) {
        free(b.p);
        return rc;
    }
    b64(&b, (const unsigned char *)body, strlen(body));
    free(body);
    sb_str(&b, "\r\n");
    rc = sb_done(&b, out);
    if (rc == 0) *len = b.n;
    return rc;
}
