/* l10n.h — error messages in the caller's language (API-01, AIP-193).
 *
 * A catalog per supported locale (en es it ja nl pl), keyed by the ErrorInfo
 * reason (om_err's names), with {key} placeholders filled from the ErrorInfo
 * metadata. The caller's locale comes from the token's `locale` claim, else
 * the `accept-language` metadata (RFC 9110 q-values; "pl-PL" falls back to
 * "pl"), else English. The server puts the result in a
 * google.rpc.LocalizedMessage beside the ErrorInfo (common/rpc_status.c). */
#ifndef OM_L10N_H
#define OM_L10N_H

#include <stddef.h>

#define L10N_FALLBACK "en"

/* The supported locales, NULL-terminated. */
extern const char *const l10n_locales[];

/* The supported locale for a BCP-47 tag ("pl-PL" -> "pl", "JA" -> "ja"),
 * or NULL when its language is not supported. */
const char *l10n_supported(const char *tag);

/* The best supported locale of an Accept-Language value ("da, pl-PL;q=0.8,
 * en;q=0.5" -> "pl"): the highest q wins, the earlier one among equals;
 * q=0 excludes; "*" stands for English. NULL when nothing is supported. */
const char *l10n_from_accept_language(const char *value);

/* API-01: the claim when supported, else the header's best, else "en". */
const char *l10n_pick(const char *claim, const char *accept_language);

typedef struct l10n_kv {
    const char *key;
    const char *value;
} l10n_kv;

/* The catalog's text for `reason` in `locale`, NULL when that locale has
 * none (the English catalog is complete: tests/unit/test_l10n.c). */
const char *l10n_lookup(const char *locale, const char *reason);

/* The message for `reason` in `locale` (English when the locale lacks it)
 * with {key} replaced by the metadata's value (an unknown key by ""), into
 * out. Returns the locale actually used ("en" on fallback), or NULL when
 * not even English has the reason. */
const char *l10n_message(const char *locale, const char *reason, const l10n_kv *meta, size_t n_meta, char *out,
                         size_t cap);

#endif
