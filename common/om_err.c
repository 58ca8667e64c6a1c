/* om_err.c — names, statuses and messages of the OM_E_* codes (om_err.h). */
#include "om_err.h"

#define OM_ERR_ROW(name, status, msg) {#name, status, msg},
static const struct {
    const char *name;
    grpc_status_code status;
    const char *msg;
} om_err_table[] = {OM_ERR_MAP(OM_ERR_ROW)};
#undef OM_ERR_ROW

#define OM_ERR_COUNT (int)(sizeof om_err_table / sizeof om_err_table[0])

static int om_err_index(int code) {
    int i = code - (OM__ERR_FIRST + 1);
    return (i >= 0 && i < OM_ERR_COUNT) ? i : 0; /* 0 is INTERNAL */
}

const char *om_err_name(int code) {
    return code == OM_OK ? "OK" : om_err_table[om_err_index(code)].name;
}

grpc_status_code om_err_status(int code) {
    return code == OM_OK ? GRPC_STATUS_OK : om_err_table[om_err_index(code)].status;
}

const char *om_err_message(int code) {
    return code == OM_OK ? "" : om_err_table[om_err_index(code)].msg;
}
