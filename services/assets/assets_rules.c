/* assets_rules.c — the pure rules of the assets service (SPEC 5); see
 * assets_rules.h. */
#include "assets_rules.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

bool asset_type_valid(int type) { return type >= ASSET_EMAIL_REGULAR && type <= ASSET_FORM; }

/* ASSET-01 */
bool asset_ref_allowed(int from_type, int to_type) {
    switch (from_type) {
    case ASSET_EMAIL_REGULAR:
    case ASSET_EMAIL_AUTOMATED: return to_type == ASSET_LIST || to_type == ASSET_FORM;
    case ASSET_LIST: return to_type == ASSET_FORM;
    default: return false;
    }
}

/* ASSET-04 */
int asset_type_rank(int type) {
    switch (type) {
    case ASSET_FORM: return 0;
    case ASSET_LIST: return 1;
    default: return 2;
    }
}

const char *asset_name_problem(const char *name) {
    if (name == NULL || name[0] == '\0') return "must be set";
    size_t chars = 0;
    const unsigned char *p = (const unsigned char *)name;
    while (*p) {
        unsigned c = *p;
        int extra;
        if (c < 0x20 || c == 0x7f) return "must not contain control characters";
        if (c < 0x80) extra = 0;
        else if ((c & 0xe0) == 0xc0 && c >= 0xc2) extra = 1;
        else if ((c & 0xf0) == 0xe0) extra = 2;
        else if ((c & 0xf8) == 0xf0 && c <= 0xf4) extra = 3;
        else return "is not valid UTF-8";
        p++;
        for (int i = 0; i < extra; i++, p++)
            if ((*p & 0xc0) != 0x80) return "is not valid UTF-8";
        if (++chars > ASSET_NAME_MAX) return "must be at most 256 characters";
    }
    return NULL;
}

/* ASSET-01 */
const char *asset_body_problem(const char *body, size_t len) {
    if (len > ASSET_BODY_MAX) return "must be at most 256 KiB";
    if (body == NULL || len == 0) return "must be a JSON document";
    json_error_t err;
    json_t *j = json_loadb(body, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &err);
    if (j == NULL) return "is not valid JSON";
    json_decref(j);
    return NULL;
}

/* ASSET-04 */
void asset_copy_name(const char *base, int n, char *out, size_t cap) {
    if (n <= 1)
        snprintf(out, cap, "%s (copy)", base);
    else
        snprintf(out, cap, "%s (copy %d)", base, n);
}

int asset_pick_copy_name(const char *base, const char *const *taken, size_t n_taken, char *out, size_t cap) {
    for (int n = 1;; n++) {
        asset_copy_name(base, n, out, cap);
        bool used = false;
        for (size_t i = 0; i < n_taken && !used; i++) used = strcasecmp(taken[i], out) == 0;
        if (!used) return n;
    }
}

/* ASSET-03 */
int asset_job_final_state(int copied, int skipped, int failed) {
    if (failed == 0) return 3;                 /* SUCCEEDED */
    if (copied + skipped > 0) return 4;        /* PARTIALLY_SUCCEEDED */
    return 5;                                  /* FAILED */
}
