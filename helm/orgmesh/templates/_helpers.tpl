{{/*
Helpers shared by the templates: names, labels, the merged per-service
settings, and the secret references (chart-made or existing).
*/}}

{{- define "orgmesh.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "orgmesh.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The name of one service's objects: (dict "root" $ "name" "accounts") */}}
{{- define "orgmesh.svcName" -}}
{{- printf "%s-%s" (include "orgmesh.fullname" .root | trunc 50 | trimSuffix "-") .name }}
{{- end }}

{{- define "orgmesh.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object; (dict "root" $ "component" "accounts") */}}
{{- define "orgmesh.labels" -}}
helm.sh/chart: {{ include "orgmesh.chart" .root }}
{{ include "orgmesh.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: orgmesh
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "orgmesh.selectorLabels" -}}
app.kubernetes.io/name: {{ include "orgmesh.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{/*
One service's settings as YAML: serviceDefaults overlaid by services.<name>.
Use: $svc := include "orgmesh.service" (dict "root" $ "name" $name) | fromYaml
*/}}
{{- define "orgmesh.service" -}}
{{- $override := index .root.Values.services .name | default dict }}
{{- toYaml (mergeOverwrite (deepCopy .root.Values.serviceDefaults) (deepCopy $override)) }}
{{- end }}

{{/* The services that are enabled, as a sorted list of names. */}}
{{- define "orgmesh.enabledServices" -}}
{{- $out := list }}
{{- range $name, $_ := .Values.services }}
{{- $svc := include "orgmesh.service" (dict "root" $ "name" $name) | fromYaml }}
{{- if $svc.enabled }}{{ $out = append $out $name }}{{ end }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{- define "orgmesh.image" -}}
{{- $img := .Values.image }}
{{- $repo := $img.repository }}
{{- if $img.registry }}{{ $repo = printf "%s/%s" $img.registry $img.repository }}{{ end }}
{{- if $img.digest }}
{{- printf "%s@%s" $repo $img.digest }}
{{- else }}
{{- printf "%s:%s" $repo (default .Chart.AppVersion $img.tag) }}
{{- end }}
{{- end }}

{{/* The chart-made Secret holding the shared secret values. */}}
{{- define "orgmesh.secretName" -}}
{{- printf "%s-secrets" (include "orgmesh.fullname" .) }}
{{- end }}

{{- define "orgmesh.jwtSecretName" -}}
{{- .Values.jwt.existingSecret | default (printf "%s-jwt-public-keys" (include "orgmesh.fullname" .)) }}
{{- end }}

{{/* (dict "root" $ "name" $name "svc" $svc) */}}
{{- define "orgmesh.signingSecretName" -}}
{{- .svc.signingKey.existingSecret | default (printf "%s-signing-key" (include "orgmesh.svcName" .)) }}
{{- end }}

{{/*
A secretKeyRef for one of the shared secrets; (dict "root" $ "cfg" .Values.redis "key" "redis-password")
*/}}
{{- define "orgmesh.secretRef" -}}
secretKeyRef:
  name: {{ .cfg.existingSecret | default (include "orgmesh.secretName" .root) }}
  key: {{ if .cfg.existingSecret }}{{ .cfg.existingSecretKey }}{{ else }}{{ .key }}{{ end }}
{{- end }}

{{/* A service's signing kid: signingKey.kid, or "<service>-1"; (dict "name" $name "svc" $svc) */}}
{{- define "orgmesh.signingKid" -}}
{{- if .svc.signingKey.enabled }}{{ .svc.signingKey.kid | default (printf "%s-1" .name) }}{{ end }}
{{- end }}

{{/*
Every public key the services accept, as a JSON list of {kid, algorithm, pem}:
jwt.publicKeys, plus each enabled service's own key when jwt.trustServiceKeys.
*/}}
{{- define "orgmesh.publicKeys" -}}
{{- $out := list }}
{{- range .Values.jwt.publicKeys }}
{{- $out = append $out (dict "kid" .kid "algorithm" (.algorithm | default "ES256") "pem" (.pem | default "")) }}
{{- end }}
{{- if .Values.jwt.trustServiceKeys }}
{{- range $name := include "orgmesh.enabledServices" . | fromJsonArray }}
{{- $svc := include "orgmesh.service" (dict "root" $ "name" $name) | fromYaml }}
{{- $kid := include "orgmesh.signingKid" (dict "name" $name "svc" $svc) }}
{{- if $kid }}
{{- $out = append $out (dict "kid" $kid "algorithm" ($svc.signingKey.algorithm | default "ES256") "pem" ($svc.signingKey.publicPem | default "")) }}
{{- end }}
{{- end }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/*
ORGMESH_JWT_KEY_SUBJECTS (SPEC 8): what each key may sign for. jwt.publicKeys
say it themselves (default users); a service's own key signs only
service:<name>.
*/}}
{{- define "orgmesh.jwtKeySubjects" -}}
{{- $parts := list }}
{{- range .Values.jwt.publicKeys }}
{{- $parts = append $parts (printf "%s=%s" .kid (join "," (.subjects | default (list "users")))) }}
{{- end }}
{{- if .Values.jwt.trustServiceKeys }}
{{- range $name := include "orgmesh.enabledServices" . | fromJsonArray }}
{{- $svc := include "orgmesh.service" (dict "root" $ "name" $name) | fromYaml }}
{{- $kid := include "orgmesh.signingKid" (dict "name" $name "svc" $svc) }}
{{- if $kid }}{{ $parts = append $parts (printf "%s=service:%s" $kid $name) }}{{ end }}
{{- end }}
{{- end }}
{{- join ";" $parts }}
{{- end }}

{{/* ORGMESH_JWT_KEYS: "kid:ALG:/path;..." over the mounted public keys. */}}
{{- define "orgmesh.jwtKeys" -}}
{{- $parts := list }}
{{- range include "orgmesh.publicKeys" . | fromJsonArray }}
{{- $parts = append $parts (printf "%s:%s:/etc/orgmesh/jwt/public/%s.pem" .kid .algorithm .kid) }}
{{- end }}
{{- join ";" $parts }}
{{- end }}

{{/* The built-in topology spread: across nodes and zones, best effort. */}}
{{- define "orgmesh.topologySpread" -}}
{{- $labels := include "orgmesh.selectorLabels" (dict "root" .root "component" .name) | fromYaml -}}
- maxSkew: 1
  topologyKey: kubernetes.io/hostname
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels: {{- toYaml $labels | nindent 6 }}
- maxSkew: 1
  topologyKey: topology.kubernetes.io/zone
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels: {{- toYaml $labels | nindent 6 }}
{{- end }}
