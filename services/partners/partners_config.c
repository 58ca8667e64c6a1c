/* partners_config.c — the partners service's settings (partners_cfg),
 * read once at start by partners_init. */
#include <stdio.h>

#include <openssl/rand.h>

#include "config.h"
#include "log.h"
#include "om_err.h"
#include "partners.h"

partners_config partners_cfg = {PART_DEFAULT_REQUEST_TTL_S, PART_DEFAULT_RESEND_INTERVAL_S, 1000, "", 3600,
                                 500, 100, 100, 20, 30, 100,
                                 365, PART_GRANT_MAX_DAYS, false, 180, {30, 7, 1}, 3, false, 90, 7};

int partners_init(void) {
    partners_cfg.request_ttl_s =
        cfg_int("ORGMESH_PARTNERS_REQUEST_TTL_S", PART_DEFAULT_REQUEST_TTL_S, 1, 365LL * 24 * 3600);
    partners_cfg.resend_interval_s =
        cfg_int("ORGMESH_PARTNERS_RESEND_INTERVAL_S", PART_DEFAULT_RESEND_INTERVAL_S, 0, 30LL * 24 * 3600);
    partners_cfg.timer_ms = (int)cfg_int("ORGMESH_PARTNERS_TIMER_MS", 1000, 10, 600000);
    /* Abuse limits (issue 13): per window, per actor and per client account; 0 = none. */
    const int64_t big = 1000000000;
    partners_cfg.rate_window_s = cfg_int("ORGMESH_PARTNERS_RATE_WINDOW_S", 3600, 1, 7LL * 24 * 3600);
    partners_cfg.requests_per_actor = cfg_int("ORGMESH_PARTNERS_RATE_REQUESTS_PER_ACTOR", 500, 0, big);
    partners_cfg.requests_per_client = cfg_int("ORGMESH_PARTNERS_RATE_REQUESTS_PER_CLIENT", 100, 0, big);
    partners_cfg.resends_per_actor = cfg_int("ORGMESH_PARTNERS_RATE_RESENDS_PER_ACTOR", 100, 0, big);
    partners_cfg.resends_per_client = cfg_int("ORGMESH_PARTNERS_RATE_RESENDS_PER_CLIENT", 20, 0, big);
    partners_cfg.tokens_per_actor = cfg_int("ORGMESH_PARTNERS_RATE_TOKENS_PER_ACTOR", 30, 0, big);
    partners_cfg.tokens_per_client = cfg_int("ORGMESH_PARTNERS_RATE_TOKENS_PER_CLIENT", 100, 0, big);
    /* Partner grants (PART-14 ... PART-19) */
    partners_cfg.grant_max_days =
        (int)cfg_int("ORGMESH_PARTNERS_GRANT_MAX_DAYS", PART_GRANT_MAX_DAYS, 1, PART_GRANT_MAX_DAYS);
    partners_cfg.grant_default_days =
        (int)cfg_int("ORGMESH_PARTNERS_GRANT_DEFAULT_DAYS", 365, 1, PART_GRANT_MAX_DAYS);
    if (partners_cfg.grant_default_days > partners_cfg.grant_max_days) {
        log_error("ORGMESH_PARTNERS_GRANT_DEFAULT_DAYS (%d) is above ORGMESH_PARTNERS_GRANT_MAX_DAYS (%d)",
                  partners_cfg.grant_default_days, partners_cfg.grant_max_days);
        return OM_E_INTERNAL;
    }
    partners_cfg.grant_allow_unlimited = cfg_bool("ORGMESH_PARTNERS_GRANT_ALLOW_UNLIMITED", false);
    partners_cfg.grant_extend_days = (int)cfg_int("ORGMESH_PARTNERS_GRANT_EXTEND_DAYS", 180, 1, PART_GRANT_MAX_DAYS);
    partners_cfg.partner_extends = cfg_bool("ORGMESH_PARTNERS_GRANT_PARTNER_EXTENDS", false);
    partners_cfg.dormant_days = (int)cfg_int("ORGMESH_PARTNERS_DORMANT_DAYS", 90, 0, PART_GRANT_MAX_DAYS);
    partners_cfg.dormant_grace_days = (int)cfg_int("ORGMESH_PARTNERS_DORMANT_GRACE_DAYS", 7, 0, 365);
    const char *notice = cfg_str("ORGMESH_PARTNERS_GRANT_NOTICE_DAYS", "30,7,1");
    if (part_parse_days(notice, partners_cfg.notice_days, PART_MAX_NOTICES, &partners_cfg.n_notice_days) != 0) {
        log_error("ORGMESH_PARTNERS_GRANT_NOTICE_DAYS=%s: expected up to %d distinct day counts 1..730, e.g. 30,7,1",
                  notice, PART_MAX_NOTICES);
        return OM_E_INTERNAL;
    }
    /* Link tokens must verify on every replica: one key for all of them, and
     * never a key published in the source (docs/security.md). */
    partners_cfg.token_key = cfg_str("ORGMESH_PARTNERS_TOKEN_KEY", NULL);
    if (partners_cfg.token_key == NULL || partners_cfg.token_key[0] == '\0') {
        if (!cfg_bool("ORGMESH_DEV_MODE", false)) {
            log_error("ORGMESH_PARTNERS_TOKEN_KEY is not set: refusing to start (access-request links must be "
                      "signed with a secret shared by every replica; ORGMESH_DEV_MODE=1 is for local "
                      "development only)");
            return OM_E_INTERNAL;
        }
        static char random_key[65];
        unsigned char raw[32];
        if (RAND_bytes(raw, sizeof raw) != 1) {
            log_error("partners: no random bytes for a development token key");
            return OM_E_INTERNAL;
        }
        for (size_t i = 0; i < sizeof raw; i++) snprintf(random_key + 2 * i, 3, "%02x", raw[i]);
        log_warn("ORGMESH_PARTNERS_TOKEN_KEY is not set (development mode): access-request links use a random "
                 "key of this process");
        partners_cfg.token_key = random_key;
    }
    return 0;
}
