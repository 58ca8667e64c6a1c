// validate.mjs — checks rendered Kubernetes manifests (multi-document YAML)
// against the Kubernetes OpenAPI schemas (npm kubernetes-models, and
// @kubernetes-models/prometheus-operator for ServiceMonitor), rejects fields
// the types do not have (read from the models' .d.ts), then checks that
// the objects fit together: names are unique, every ConfigMap/Secret/
// ServiceAccount a pod uses is rendered or declared external, and every
// selector (Service, PDB, HPA, NetworkPolicy) finds a Deployment's pods.
//
// usage: node validate.mjs [--external-secret NAME]... FILE...
// Run with NODE_PATH pointing at the node_modules holding the packages.
import { readFileSync } from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

// Packages come from $NODE_PATH (the test's .tools/node_modules); ESM imports
// ignore NODE_PATH, so find each package's ESM entry from its package.json.
const nodeModules = process.env.NODE_PATH ?? path.resolve("node_modules");
async function load(name) {
    const dir = path.join(nodeModules, name);
    const pkg = JSON.parse(readFileSync(path.join(dir, "package.json"), "utf8"));
    let entry = pkg.exports?.["."] ?? pkg.exports;
    while (entry && typeof entry === "object") entry = entry.import ?? entry.node ?? entry.default;
    entry = entry ?? pkg.module ?? pkg.main ?? "index.js";
    const m = await import(pathToFileURL(path.join(dir, entry)).href);
    return m.default && Object.keys(m).length <= 2 ? m.default : m;
}
const YAML = await load("yaml");
const k8s = await load("kubernetes-models");
let promOp = null;
try {
    promOp = await load("@kubernetes-models/prometheus-operator");
} catch {
    promOp = null; // ServiceMonitors are then checked for structure only
}

const files = [];
const externalSecrets = new Set();
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--external-secret") externalSecrets.add(argv[++i]);
    else files.push(argv[i]);
}
if (files.length === 0) {
    console.error("usage: node validate.mjs [--external-secret NAME]... FILE...");
    process.exit(2);
}

// "networking.k8s.io/v1" -> k8s.networkingK8sIo.v1; "v1" -> k8s.v1.
function modelFor(apiVersion, kind) {
    const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
    const key = group.replace(/\.([a-z])/g, (_, c) => c.toUpperCase());
    let ns;
    if (group === "") ns = k8s.v1;
    else if (group === "monitoring.coreos.com") ns = promOp?.monitoringCoreosCom?.[version];
    else ns = k8s[key]?.[version];
    return ns?.[kind] ?? null;
}

// ---- unknown fields --------------------------------------------------------------
// The schemas in kubernetes-models accept unknown fields (as the API server's
// non-strict mode does), so a misspelt key would pass. The models' .d.ts files
// list every field of every type: read them and reject keys they do not have.

const classCache = new Map();
function classFields(file) { // -> Map(field -> {type file, shape}) or null
    if (classCache.has(file)) return classCache.get(file);
    let fields = null;
    let text = null;
    try {
        text = readFileSync(file, "utf8");
    } catch {
        text = null;
    }
    const start = text?.search(/^export declare class \w+ extends Model<[^>]*>.*\{$/m) ?? -1;
    if (text != null && start >= 0) {
        const imports = new Map();
        for (const m of text.matchAll(/^import \{ (\w+) \} from "([^"]+)";$/gm)) imports.set(m[1], m[2]);
        const resolve = (id) => {
            const spec = imports.get(id);
            if (!spec) return null;
            const rel = spec.replace(/\.js$/, "") + ".d.ts";
            if (spec.startsWith(".")) return path.join(path.dirname(file), rel);
            // Nearest node_modules holding the package, from the file upwards.
            for (let d = path.dirname(file); d !== path.dirname(d); d = path.dirname(d)) {
                const f = path.join(d, "node_modules", rel);
                try { readFileSync(f); return f; } catch { /* keep looking */ }
            }
            return null;
        };
        fields = new Map();
        const lines = text.slice(start).split("\n").slice(1);
        let depth = 0;
        for (let i = 0; i < lines.length && depth >= 0; i++) {
            const line = lines[i];
            if (depth === 0) {
                const m = line.match(/^\s{4}"([^"]+)"\??: (.*)$/);
                if (m) {
                    const type = m[2];
                    let f = { file: null, shape: "plain" };
                    let t;
                    if ((t = type.match(/^(I\w+);$/))) f = { file: resolve(t[1]), shape: "one" };
                    else if ((t = type.match(/^Array<(I\w+)>;$/))) f = { file: resolve(t[1]), shape: "array" };
                    else if (type === "{") {
                        const v = lines[i + 1]?.match(/^\s*\[key: string\]: (I\w+);$/);
                        if (v) f = { file: resolve(v[1]), shape: "map" };
                    }
                    fields.set(m[1], f);
                }
            }
            depth += (line.match(/\{/g) ?? []).length - (line.match(/\}/g) ?? []).length;
        }
    }
    classCache.set(file, fields);
    return fields;
}

function unknownFields(value, file, where, out) {
    if (value == null || typeof value !== "object" || Array.isArray(value)) return;
    const fields = classFields(file);
    if (fields == null) return; // a type alias (IntOrString, Quantity...): nothing to check
    for (const [k, v] of Object.entries(value)) {
        const f = fields.get(k);
        if (f == null) {
            out.push(`${where}.${k}: unknown field`);
            continue;
        }
        if (f.file == null) continue;
        if (f.shape === "one") unknownFields(v, f.file, `${where}.${k}`, out);
        else if (f.shape === "array" && Array.isArray(v)) v.forEach((e, i) => unknownFields(e, f.file, `${where}.${k}[${i}]`, out));
        else if (f.shape === "map" && v && typeof v === "object") for (const [mk, mv] of Object.entries(v)) unknownFields(mv, f.file, `${where}.${k}.${mk}`, out);
    }
}

function modelFile(apiVersion, kind) {
    const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
    if (group === "monitoring.coreos.com")
        return path.join(nodeModules, "@kubernetes-models/prometheus-operator", group, version, `${kind}.d.ts`);
    return path.join(nodeModules, "kubernetes-models", group || ".", version, `${kind}.d.ts`);
}

const errors = [];
const counts = {};
const skipped = [];
const objects = [];

for (const file of files) {
    const docs = YAML.parseAllDocuments(readFileSync(file, "utf8"));
    for (const doc of docs) {
        if (doc.errors.length) {
            errors.push(`${file}: YAML: ${doc.errors.map((e) => e.message).join("; ")}`);
            continue;
        }
        const obj = doc.toJS();
        if (obj == null) continue; // empty document
        const id = `${obj.kind}/${obj.metadata?.name} (${file})`;
        if (!obj.apiVersion || !obj.kind || !obj.metadata?.name) {
            errors.push(`${id}: missing apiVersion, kind or metadata.name`);
            continue;
        }
        const Model = modelFor(obj.apiVersion, obj.kind);
        if (Model == null) {
            if (obj.kind === "ServiceMonitor") skipped.push(id);
            else errors.push(`${id}: no schema for ${obj.apiVersion} ${obj.kind}`);
        } else {
            try {
                new Model(obj).validate();
            } catch (e) {
                errors.push(`${id}: ${e.message}`);
                continue;
            }
            const unknown = [];
            unknownFields(obj, modelFile(obj.apiVersion, obj.kind), "", unknown);
            for (const u of unknown) errors.push(`${id}: ${u}`);
            if (classFields(modelFile(obj.apiVersion, obj.kind)) == null)
                errors.push(`${id}: cannot read the field list of ${obj.kind}`);
        }
        counts[obj.kind] = (counts[obj.kind] ?? 0) + 1;
        objects.push({ obj, id, file });
    }
}

// ---- the objects fit together ------------------------------------------------

const byKey = new Map();
for (const { obj, id } of objects) {
    const key = `${obj.kind}/${obj.metadata.namespace ?? ""}/${obj.metadata.name}`;
    if (byKey.has(key)) errors.push(`${id}: duplicate of ${byKey.get(key).id}`);
    byKey.set(key, { obj, id });
}
const names = (kind) => new Set(objects.filter((o) => o.obj.kind === kind).map((o) => o.obj.metadata.name));
const configMaps = names("ConfigMap");
const secrets = names("Secret");
const serviceAccounts = names("ServiceAccount");
const deployments = objects.filter((o) => o.obj.kind === "Deployment");

const matches = (sel, labels) =>
    sel != null && Object.entries(sel).every(([k, v]) => labels?.[k] === v);
const podsMatching = (sel) =>
    deployments.filter((d) => matches(sel, d.obj.spec.template.metadata?.labels));

function checkPodSpec(id, spec, isHook) {
    const needSecret = (name, where) => {
        if (!secrets.has(name) && !externalSecrets.has(name))
            errors.push(`${id}: ${where} uses Secret ${name}, which is neither rendered nor declared external`);
    };
    const sa = spec.serviceAccountName;
    if (sa && sa !== "default" && !serviceAccounts.has(sa))
        errors.push(`${id}: ServiceAccount ${sa} is not rendered`);
    for (const c of [...(spec.initContainers ?? []), ...spec.containers]) {
        for (const e of c.envFrom ?? []) {
            if (e.configMapRef && !configMaps.has(e.configMapRef.name))
                errors.push(`${id}: envFrom ConfigMap ${e.configMapRef.name} is not rendered`);
            if (isHook && e.configMapRef)
                errors.push(`${id}: a hook cannot use ConfigMap ${e.configMapRef.name} (not there yet on install)`);
        }
        for (const e of c.env ?? []) {
            const ref = e.valueFrom?.secretKeyRef;
            if (ref && !ref.optional) needSecret(ref.name, `env ${e.name}`);
        }
        const sc = c.securityContext ?? {};
        if (!(sc.readOnlyRootFilesystem && sc.allowPrivilegeEscalation === false &&
              sc.capabilities?.drop?.includes("ALL") && sc.runAsNonRoot && sc.runAsUser === 10001))
            errors.push(`${id}: container ${c.name} lacks the required security context`);
        if (!c.resources?.requests?.memory || !c.resources?.limits?.memory)
            errors.push(`${id}: container ${c.name} has no memory request/limit`);
    }
    for (const v of spec.volumes ?? []) {
        if (v.secret) needSecret(v.secret.secretName, `volume ${v.name}`);
        for (const s of v.projected?.sources ?? []) if (s.secret) needSecret(s.secret.name, `volume ${v.name}`);
    }
    if (spec.securityContext?.seccompProfile?.type !== "RuntimeDefault")
        errors.push(`${id}: pod seccompProfile is not RuntimeDefault`);
}

for (const { obj, id } of objects) {
    const hook = obj.metadata.annotations?.["helm.sh/hook"];
    switch (obj.kind) {
        case "Deployment": {
            const t = obj.spec.template;
            if (!matches(obj.spec.selector.matchLabels, t.metadata?.labels))
                errors.push(`${id}: selector does not match the pod template labels`);
            if (!t.metadata?.annotations?.["checksum/config"])
                errors.push(`${id}: no checksum/config annotation on the pod template`);
            const c = t.spec.containers[0];
            for (const p of ["startupProbe", "readinessProbe", "livenessProbe"])
                if (!c[p]?.grpc) errors.push(`${id}: ${p} is not a gRPC probe`);
            checkPodSpec(id, t.spec, false);
            break;
        }
        case "Job":
            checkPodSpec(id, obj.spec.template.spec, Boolean(hook));
            if (hook && !obj.metadata.annotations["helm.sh/hook-delete-policy"])
                errors.push(`${id}: hook without hook-delete-policy`);
            break;
        case "Service":
        case "PodDisruptionBudget": {
            const sel = obj.kind === "Service" ? obj.spec.selector : obj.spec.selector.matchLabels;
            if (podsMatching(sel).length !== 1)
                errors.push(`${id}: selector matches ${podsMatching(sel).length} Deployments, not 1`);
            break;
        }
        case "HorizontalPodAutoscaler": {
            const t = obj.spec.scaleTargetRef;
            const d = byKey.get(`Deployment/${obj.metadata.namespace ?? ""}/${t.name}`);
            if (t.kind !== "Deployment" || d == null) errors.push(`${id}: target ${t.kind}/${t.name} is not rendered`);
            else if (d.obj.spec.replicas != null)
                errors.push(`${id}: ${d.id} sets replicas although the HPA owns them`);
            break;
        }
        case "NetworkPolicy": {
            if (podsMatching(obj.spec.podSelector.matchLabels).length !== 1)
                errors.push(`${id}: podSelector does not select exactly one Deployment`);
            const peers = [
                ...(obj.spec.ingress ?? []).flatMap((r) => r.from ?? []),
                ...(obj.spec.egress ?? []).flatMap((r) => r.to ?? []),
            ];
            for (const p of peers) {
                const l = p.podSelector?.matchLabels;
                if (l?.["app.kubernetes.io/component"] && podsMatching(l).length !== 1)
                    errors.push(`${id}: peer ${JSON.stringify(l)} selects no Deployment`);
            }
            break;
        }
        case "ServiceMonitor":
            if (objects.filter((o) => o.obj.kind === "Service" &&
                    matches(obj.spec.selector.matchLabels, o.obj.metadata.labels)).length !== 1)
                errors.push(`${id}: selector does not find exactly one Service`);
            break;
    }
}

const summary = Object.entries(counts).sort().map(([k, n]) => `${n} ${k}`).join(", ");
const total = Object.values(counts).reduce((a, b) => a + b, 0);
console.log(`validate: ${files.join(" ")}: ${total} objects (${summary})`);
if (skipped.length)
    console.log(`validate: no schema package for ServiceMonitor; checked structure only: ${skipped.length}`);
for (const e of errors) console.error(`validate: ERROR ${e}`);
if (errors.length) {
    console.error(`validate: ${errors.length} error(s)`);
    process.exit(1);
}
console.log("validate: all objects valid");
