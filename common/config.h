/* config.h — configuration from ORGMESH_* environment variables.
 * docs/configuration.md lists every variable; keep it in step. */
#ifndef OM_CONFIG_H
#define OM_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

/* Value of `name`, or `def` when unset or empty. */
const char *cfg_str(const char *name, const char *def);
/* Integer value; `def` when unset. Exits with a clear message when the value
 * is not an integer within [min, max] (bad configuration must not start). */
int64_t cfg_int(const char *name, int64_t def, int64_t min, int64_t max);
/* 1/true/yes/on or 0/false/no/off (any case); `def` when unset or empty.
 * Exits like cfg_int for anything else. */
bool cfg_bool(const char *name, bool def);

#endif
