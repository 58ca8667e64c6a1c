/* l10n.c — choosing the caller's locale and filling catalog messages
 * (API-01). The catalog itself is common/l10n_catalog.c. */
#include <ctype.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "l10n.h"
#include "l10n_catalog.h"

const char *const l10n_locales[] = {"en", "es", "it", "ja", "nl", "pl", NULL};

const char *l10n_supported(const char *tag) {
    if (tag == NULL) return NULL;
    char lang[9];
    size_t n = 0;
    while (tag[n] && tag[n] != '-' && tag[n] != '_' && n + 1 < sizeof lang) {
        if (!isalpha((unsigned char)tag[n])) return NULL;
        lang[n] = (char)tolower((unsigned char)tag[n]);
        n++;
    }
    if (tag[n] != '\0' && tag[n] != '-' && tag[n] != '_') return NULL; /* a language of 8+ letters */
    lang[n] = '\0';
    for (const char *const *l = l10n_locales; *l; l++)
        if (strcmp(*l, lang) == 0) return *l;
    return NULL;
}

/* q-value of one element's parameters (";q=0.8"); 1000 = 1.0, -1 = malformed. */
static int qvalue(const char *p, const char *end) {
    int q = 1000;
    while (p < end) {
        while (p < end && (*p == ';' || *p == ' ' || *p == '\t')) p++;
        if (end - p >= 2 && (p[0] == 'q' || p[0] == 'Q') && p[1] == '=') {
            p += 2;
            if (p >= end || (*p != '0' && *p != '1')) return -1;
            q = (*p - '0') * 1000;
            p++;
            if (p < end && *p == '.') {
                p++;
                int scale = 100;
                while (p < end && isdigit((unsigned char)*p) && scale > 0) {
                    q += (*p - '0') * scale;
                    scale /= 10;
                    p++;
                }
            }
            if (q > 1000) return -1;
        }
        while (p < end && *p != ';') p++;
    }
    return q;
}

const char *l10n_from_accept_language(const char *value) {
    if (value == NULL) return NULL;
    const char *best = NULL;
    int best_q = 0;
    for (const char *p = value; *p;) {
        while (*p == ' ' || *p == '\t' || *p == ',') p++;
        if (*p == '\0') break;
        const char *e = p;
        while (*e && *e != ',') e++;
        const char *semi = memchr(p, ';', (size_t)(e - p));
        const char *tag_end = semi ? semi : e;
        while (tag_end > p && (tag_end[-1] == ' ' || tag_end[-1] == '\t')) tag_end--;
        char tag[36];
        size_t n = (size_t)(tag_end - p);
        int q = qvalue(semi ? semi : e, e);
        if (n > 0 && n < sizeof tag && q > best_q) {
            memcpy(tag, p, n);
            tag[n] = '\0';
            const char *loc = strcmp(tag, "*") == 0 ? L10N_FALLBACK : l10n_supported(tag);
            if (loc != NULL) {
                best = loc;
                best_q = q;
            }
        }
        p = e;
    }
    return best;
}

const char *l10n_pick(const char *claim, const char *accept_language) {
    const char *l = l10n_supported(claim);
    if (l == NULL) l = l10n_from_accept_language(accept_language);
    return l ? l : L10N_FALLBACK;
}

const char *l10n_lookup(const char *locale, const char *reason) {
    if (locale == NULL || reason == NULL) return NULL;
    for (const l10n_catalog *c = l10n_catalogs; c->locale; c++) {
        if (strcmp(c->locale, locale) != 0) continue;
        for (const l10n_entry *e = c->entries; e->reason; e++)
            if (strcmp(e->reason, reason) == 0) return e->text;
    }
    return NULL;
}

const char *l10n_message(const char *locale, const char *reason, const l10n_kv *meta, size_t n_meta, char *out,
                         size_t cap) {
    if (cap == 0) return NULL;
    out[0] = '\0';
    const char *used = l10n_supported(locale);
    const char *text = used ? l10n_lookup(used, reason) : NULL;
    if (text == NULL) {
        used = L10N_FALLBACK;
        text = l10n_lookup(used, reason);
    }
    if (text == NULL) return NULL;
    size_t o = 0;
    for (const char *p = text; *p && o + 1 < cap;) {
        const char *close = *p == '{' ? strchr(p, '}') : NULL;
        if (close == NULL) {
            out[o++] = *p++;
            continue;
        }
        const char *k = p + 1;
        size_t klen = (size_t)(close - k);
        for (size_t i = 0; i < n_meta; i++) {
            if (meta[i].key == NULL || strlen(meta[i].key) != klen || memcmp(meta[i].key, k, klen) != 0) continue;
            for (const char *v = meta[i].value ? meta[i].value : ""; *v && o + 1 < cap; v++) out[o++] = *v;
            break;
        }
        p = close + 1;
    }
    out[o] = '\0';
    return used;
}
