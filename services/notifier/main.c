/* main.c — wiring of the notifier service (SPEC 7; see
 * docs/services/notifier.md): NotifierService, migrations, the consumers of
 * the partners, organizations and connections streams (NOTE-01), and the
 * sender on the process loop that delivers the queue over SMTP (NOTE-03). */
#include "app.h"
#include "notifier.h"

static const rpc_service *const services[] = {&notifier_service, NULL};

/* Each event costs peer calls (accounts, partners) before its transaction
 * commits, so events of different subjects are handled in parallel lanes
 * (docs/common/evt.md); the handlers share nothing but read-only templates
 * and configuration. Access requests are the volume (SPEC 9: 200 events/s);
 * ORG-09/ORG-10/CONN-05 changes are rare. ORGMESH_EVT_LANES overrides. */
static const evt_subscription subs[] = {
    {"partners", nt_on_partners_event, NULL, 8},           /* NOTE-01: access requests */
    {"organizations", nt_on_organizations_event, NULL, 2}, /* NOTE-01: ORG-09, ORG-10 */
    {"connections", nt_on_connections_event, NULL, 2},     /* NOTE-01: CONN-05 */
};

static int init(void) {
    if (nt_config_load() != 0) return -1;
    return nt_senders_start();
}

/* The sender stopped in its loop stop hook, before fini. */
static void fini(void) {
    nt_templates_free(nt_tpls);
    nt_tpls = NULL;
    smtp_global_cleanup();
}

APP_MAIN(notifier, 50056, .services = services, APP_SUBS(subs), .init = init, .fini = fini)
