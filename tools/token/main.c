/* orgmesh-token — mint and check orgmesh JWTs for local use and tests, and
 * make ES256 key pairs. It uses the same auth module and the same ORGMESH_*
 * variables as the services, so a token it accepts, they accept. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "auth.h"
#include "config.h"
#include "log.h"
#include "om_err.h"

/* Only for a laptop: well-known secrets, so that `orgmesh-token` works with
 * no setup against deploy/local/up; every use prints a warning. As in a
 * deployment, each key signs for one identity (SPEC 8): "dev" for users,
 * "dev-<name>" for service:<name> (deploy/local/lib.sh makes the same). */
#define DEV_KEY "dev:HS256:orgmesh-dev-secret"
#define DEV_SERVICE_SECRET "orgmesh-dev-secret-"
static const char *const dev_identities[] = {"accounts", "organizations", "connections", "assets", "partners",
                                             "notifier", "demo",          "demo-loader", "crm",    "support"};
#define N_DEV_IDENTITIES (sizeof dev_identities / sizeof dev_identities[0])
#define DEFAULT_ISSUER "orgmesh-local"
#define DEFAULT_AUDIENCE "orgmesh"
#define DEFAULT_TTL 3600

static void usage(FILE *f) {
    fprintf(f, "usage: orgmesh-token [--sub ID | --service NAME] [--mfa-now | --mfa-at UNIX]\n"
               "                     [--ttl SECONDS | --exp UNIX] [--aud X] [--iss X]\n"
               "       orgmesh-token --verify TOKEN [--aud X] [--iss X]\n"
               "       orgmesh-token --gen-es256 DIR KID\n"
               "\n"
               "Mints a JWT signed with ORGMESH_JWT_SIGNING_KEY (\"kid:alg:material\"),\n"
               "verifies one with ORGMESH_JWT_KEYS and prints its claims, or writes an\n"
               "ES256 key pair DIR/KID.pem (private) and DIR/KID.pub.pem (public).\n"
               "Issuer and audience: ORGMESH_JWT_ISSUER (default " DEFAULT_ISSUER "),\n"
               "ORGMESH_JWT_AUDIENCE (default " DEFAULT_AUDIENCE ").\n");
}

static int fail(const char *fmt, const char *arg) {
    fprintf(stderr, "orgmesh-token: ");
    fprintf(stderr, fmt, arg);
    fputc('\n', stderr);
    return 2;
}

/* Strict decimal: the whole argument, nothing else. */
static bool parse_i64(const char *s, int64_t *out) {
    if (s == NULL || *s == '\0') return false;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end != '\0' || (s[0] != '-' && (s[0] < '0' || s[0] > '9'))) return false;
    *out = v;
    return true;
}

static bool parse_u64(const char *s, uint64_t *out) {
    if (s == NULL || s[0] < '0' || s[0] > '9') return false;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end != '\0') return false;
    *out = v;
    return true;
}

/* The signing key: ORGMESH_JWT_SIGNING_KEY, else the development key bound
 * to the identity minted for (into buf). */
static const char *signing_key_or_dev(const char *service, char *buf, size_t cap) {
    const char *k = cfg_str("ORGMESH_JWT_SIGNING_KEY", NULL);
    if (k != NULL) return k;
    if (service == NULL)
        snprintf(buf, cap, "%s", DEV_KEY);
    else
        snprintf(buf, cap, "dev-%s:HS256:" DEV_SERVICE_SECRET "%s", service, service);
    fprintf(stderr, "orgmesh-token: warning: ORGMESH_JWT_SIGNING_KEY is not set; using the development key \"%.*s\"\n",
            (int)strcspn(buf, ":"), buf);
    return buf;
}

/* Verification keys and their bindings: ORGMESH_JWT_KEYS and
 * ORGMESH_JWT_KEY_SUBJECTS, else the development keys (into the buffers). */
static void verify_keys_or_dev(const char **keys, const char **subjects, char *kbuf, char *sbuf, size_t cap) {
    *keys = cfg_str("ORGMESH_JWT_KEYS", NULL);
    *subjects = cfg_str("ORGMESH_JWT_KEY_SUBJECTS", NULL);
    if (*keys != NULL) return;
    size_t ko = (size_t)snprintf(kbuf, cap, "%s", DEV_KEY);
    size_t so = (size_t)snprintf(sbuf, cap, "dev=users");
    for (size_t i = 0; i < N_DEV_IDENTITIES && ko < cap && so < cap; i++) {
        const char *n = dev_identities[i];
        ko += (size_t)snprintf(kbuf + ko, cap - ko, ";dev-%s:HS256:" DEV_SERVICE_SECRET "%s", n, n);
        so += (size_t)snprintf(sbuf + so, cap - so, ";dev-%s=service:%s", n, n);
    }
    *keys = kbuf;
    if (*subjects == NULL) *subjects = sbuf;
    fprintf(stderr, "orgmesh-token: warning: ORGMESH_JWT_KEYS is not set; using the development keys\n");
}

/* ---- --gen-es256 ------------------------------------------------------------ */

/* The kid becomes a file name: no path separators, no leading dot. */
static bool kid_ok(const char *kid) {
    size_t n = strlen(kid);
    if (n == 0 || n > 64 || kid[0] == '.') return false;
    for (size_t i = 0; i < n; i++) {
        char c = kid[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

/* Create `path` (never overwriting a key) with `mode` and write one PEM. */
static int write_pem(const char *path, mode_t mode, EVP_PKEY *key, bool priv) {
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd < 0) {
        fprintf(stderr, "orgmesh-token: cannot create %s: %s\n", path, strerror(errno));
        return -1;
    }
    FILE *f = fdopen(fd, "w");
    if (f == NULL) {
        close(fd);
        unlink(path);
        return -1;
    }
    int ok =
        priv ? PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL) : PEM_write_PUBKEY(f, key);
    if (fclose(f) != 0) ok = 0;
    if (!ok) {
        fprintf(stderr, "orgmesh-token: cannot write %s\n", path);
        unlink(path);
        return -1;
    }
    return 0;
}

static int gen_es256(const char *dir, const char *kid) {
    if (!kid_ok(kid))
        return fail("KID \"%s\" must be 1-64 of [A-Za-z0-9._-], not starting with '.'", kid);
    char priv[4096], pub[4096];
    if (snprintf(priv, sizeof priv, "%s/%s.pem", dir, kid) >= (int)sizeof priv ||
        snprintf(pub, sizeof pub, "%s/%s.pub.pem", dir, kid) >= (int)sizeof pub)
        return fail("directory name too long: %s", dir);
    EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    if (key == NULL) return fail("%s", "cannot generate a P-256 key");
    int rc = 1;
    if (write_pem(priv, 0600, key, true) == 0) {
        if (write_pem(pub, 0644, key, false) == 0) {
            rc = 0;
        } else {
            unlink(priv); /* half a pair is worse than none */
        }
    }
    EVP_PKEY_free(key);
    if (rc == 0) {
        printf("wrote %s (private) and %s (public)\n", priv, pub);
        printf("ORGMESH_JWT_SIGNING_KEY=%s:ES256:%s\n", kid, priv);
        printf("ORGMESH_JWT_KEYS=%s:ES256:%s\n", kid, pub);
        printf("# and bind it (SPEC 8): ORGMESH_JWT_KEY_SUBJECTS=%s=users (an issuer key) or "
               "%s=service:<name> (that service's own key)\n",
               kid, kid);
    }
    return rc;
}

/* ---- --verify --------------------------------------------------------------- */

static int verify(const char *token, const char *iss, const char *aud) {
    char kbuf[1024], sbuf[1024];
    auth_config cfg = {.issuer = iss, .audience = aud};
    verify_keys_or_dev(&cfg.keys, &cfg.key_subjects, kbuf, sbuf, sizeof kbuf);
    auth_ctx *a = NULL;
    int rc = auth_new(&a, &cfg);
    if (rc) {
        fprintf(stderr, "orgmesh-token: bad ORGMESH_JWT_KEYS: %s\n", om_err_name(rc));
        return 2;
    }
    om_actor actor;
    char *claims = NULL;
    rc = auth_verify_claims(a, token, strlen(token), &actor, &claims);
    auth_free(a);
    if (rc) {
        fprintf(stderr, "orgmesh-token: token refused: %s (%s)\n", om_err_name(rc),
                om_err_message(rc));
        return 1;
    }
    json_t *j = json_loads(claims, 0, NULL);
    char *pretty = j ? json_dumps(j, JSON_INDENT(2)) : NULL;
    printf("%s\n", pretty ? pretty : claims);
    free(pretty);
    json_decref(j);
    free(claims);
    return 0;
}

/* ---- mint ------------------------------------------------------------------- */

int main(int argc, char **argv) {
    enum {
        OPT_SUB = 1,
        OPT_SERVICE,
        OPT_MFA_NOW,
        OPT_MFA_AT,
        OPT_TTL,
        OPT_EXP,
        OPT_AUD,
        OPT_ISS,
        OPT_VERIFY,
        OPT_GEN,
        OPT_HELP
    };
    static const struct option opts[] = {{"sub", required_argument, NULL, OPT_SUB},
                                         {"service", required_argument, NULL, OPT_SERVICE},
                                         {"mfa-now", no_argument, NULL, OPT_MFA_NOW},
                                         {"mfa-at", required_argument, NULL, OPT_MFA_AT},
                                         {"ttl", required_argument, NULL, OPT_TTL},
                                         {"exp", required_argument, NULL, OPT_EXP},
                                         {"aud", required_argument, NULL, OPT_AUD},
                                         {"iss", required_argument, NULL, OPT_ISS},
                                         {"verify", required_argument, NULL, OPT_VERIFY},
                                         {"gen-es256", required_argument, NULL, OPT_GEN},
                                         {"help", no_argument, NULL, OPT_HELP},
                                         {NULL, 0, NULL, 0}};

    /* Refusal reasons are logged at debug level: show them, since a person
     * running --verify wants to know why. */
    int level = log_level_parse(cfg_str("ORGMESH_LOG_LEVEL", "debug"));
    log_init("orgmesh-token", level < 0 ? LOG_DEBUG : level);

    const char *sub = NULL, *service = NULL, *verify_tok = NULL, *gen_dir = NULL;
    const char *iss = cfg_str("ORGMESH_JWT_ISSUER", DEFAULT_ISSUER);
    const char *aud = cfg_str("ORGMESH_JWT_AUDIENCE", DEFAULT_AUDIENCE);
    int64_t mfa_at = 0, ttl = DEFAULT_TTL, exp = 0;
    bool mfa_now = false, ttl_set = false;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case OPT_SUB: sub = optarg; break;
        case OPT_SERVICE: service = optarg; break;
        case OPT_MFA_NOW: mfa_now = true; break;
        case OPT_MFA_AT:
            if (!parse_i64(optarg, &mfa_at) || mfa_at <= 0) return fail("bad --mfa-at: %s", optarg);
            break;
        case OPT_TTL:
            if (!parse_i64(optarg, &ttl) || ttl <= 0 || ttl > INT32_MAX)
                return fail("bad --ttl (seconds > 0): %s", optarg);
            ttl_set = true;
            break;
        case OPT_EXP:
            if (!parse_i64(optarg, &exp) || exp <= 0)
                return fail("bad --exp (unix time): %s", optarg);
            break;
        case OPT_AUD: aud = optarg; break;
        case OPT_ISS: iss = optarg; break;
        case OPT_VERIFY: verify_tok = optarg; break;
        case OPT_GEN: gen_dir = optarg; break;
        case OPT_HELP: usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (gen_dir) {
        if (optind + 1 != argc) return fail("%s", "--gen-es256 takes DIR and KID");
        return gen_es256(gen_dir, argv[optind]);
    }
    if (optind != argc) return fail("unexpected argument: %s", argv[optind]);
    if (verify_tok) return verify(verify_tok, iss, aud);

    om_actor actor = {0};
    if ((sub == NULL) == (service == NULL))
        return fail("%s", "give exactly one of --sub ID or --service NAME");
    if (sub && (!parse_u64(sub, &actor.user_id) || actor.user_id == 0))
        return fail("--sub must be a non-zero decimal user id: %s", sub);
    if (service) {
        if (strlen(service) >= sizeof actor.service)
            return fail("--service name too long: %s", service);
        strcpy(actor.service, service);
    }
    if (mfa_now && mfa_at) return fail("%s", "give --mfa-now or --mfa-at, not both");
    if (exp && ttl_set) return fail("%s", "give --ttl or --exp, not both");

    char kbuf[160];
    auth_config cfg = {.issuer = iss, .audience = aud, .signing_key = signing_key_or_dev(service, kbuf, sizeof kbuf)};
    auth_ctx *a = NULL;
    int rc = auth_new(&a, &cfg);
    if (rc) {
        fprintf(stderr, "orgmesh-token: bad ORGMESH_JWT_SIGNING_KEY or issuer/audience: %s\n",
                om_err_name(rc));
        return 2;
    }
    int64_t now = (int64_t)time(NULL);
    actor.mfa_at = mfa_now ? now : mfa_at;
    char *tok = NULL;
    rc = auth_mint_at(a, &actor, now, exp ? exp : now + ttl, &tok);
    auth_free(a);
    if (rc) {
        fprintf(stderr, "orgmesh-token: cannot mint: %s (check --service: [a-z0-9-]{1,31})\n",
                om_err_name(rc));
        return 1;
    }
    printf("%s\n", tok);
    free(tok);
    return 0;
}
