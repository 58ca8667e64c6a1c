/* config.c — typed access to ORGMESH_* environment variables (config.h).
 *
 * A value that is set but wrong stops the process with exit status 2 and a
 * message naming the variable: a service must not start half-configured. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Exit status for bad configuration (as for a bad command line). */
#define CFG_EXIT_BAD 2

/* getenv, with "" treated as unset: `FOO= cmd` is how people unset things in
 * shell scripts and compose files. */
static const char *cfg_get(const char *name) {
    const char *v = name ? getenv(name) : NULL;
    return (v == NULL || v[0] == '\0') ? NULL : v;
}

/* Bad configuration is found at start, before log_init, so this goes to
 * stderr as plain text; the value is shown because it is not a secret
 * (cfg_int and cfg_bool never read keys). */
static _Noreturn void cfg_die(const char *name, const char *value, const char *why) {
    fprintf(stderr, "orgmesh: invalid configuration: %s=\"%s\": %s\n", name, value, why);
    exit(CFG_EXIT_BAD);
}

const char *cfg_str(const char *name, const char *def) {
    const char *v = cfg_get(name);
    return v ? v : def;
}

int64_t cfg_int(const char *name, int64_t def, int64_t min, int64_t max) {
    const char *v = cfg_get(name);
    if (v == NULL) return def;
    /* Strict: optional sign and decimal digits only. strtoll alone would
     * accept " 12", "12abc" (as 12) and "0x10" (as 0). */
    const char *p = v;
    if (*p == '-' || *p == '+') p++;
    if (*p == '\0') cfg_die(name, v, "not an integer");
    for (const char *q = p; *q; q++)
        if (*q < '0' || *q > '9') cfg_die(name, v, "not an integer");
    errno = 0;
    long long n = strtoll(v, NULL, 10);
    if (errno == ERANGE || n < min || n > max) {
        char why[96];
        snprintf(why, sizeof why, "must be an integer from %lld to %lld", (long long)min,
                 (long long)max);
        cfg_die(name, v, why);
    }
    return (int64_t)n;
}

bool cfg_bool(const char *name, bool def) {
    const char *v = cfg_get(name);
    if (v == NULL) return def;
    static const char *const yes[] = {"1", "true", "yes", "on"};
    static const char *const no[] = {"0", "false", "no", "off"};
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        if (strcasecmp(v, yes[i]) == 0) return true;
        if (strcasecmp(v, no[i]) == 0) return false;
    }
    cfg_die(name, v, "must be one of true/false, yes/no, on/off, 1/0");
    return def; /* not reached */
}
