/* l10n_catalog.h — the message catalog's shape (API-01); the text is in
 * l10n_catalog.c, one table per locale keyed by ErrorInfo reason. */
#ifndef OM_L10N_CATALOG_H
#define OM_L10N_CATALOG_H

typedef struct l10n_entry {
    const char *reason; /* om_err_name(code), e.g. "ORG_ACCOUNT_LIMIT" */
    const char *text;   /* may hold {key} placeholders for ErrorInfo metadata */
} l10n_entry;

typedef struct l10n_catalog {
    const char *locale;
    const l10n_entry *entries; /* ends with {NULL, NULL} */
} l10n_catalog;

/* Ends with {NULL, NULL}. */
extern const l10n_catalog l10n_catalogs[];

#endif
