{{/*
Pieces shared by the Deployment and the migrations Job.
*/}}

{{/* Pod-level security: non-root uid 10001, RuntimeDefault seccomp. */}}
{{- define "orgmesh.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "orgmesh.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* ORGMESH_PG_URL from the chart's Secret or an existing one; (dict "root" $ "secretName" name-or-empty) */}}
{{- define "orgmesh.pgUrlEnv" -}}
- name: ORGMESH_PG_URL
  valueFrom:
    secretKeyRef:
      {{- if .root.Values.postgresql.existingSecret }}
      name: {{ .root.Values.postgresql.existingSecret }}
      key: {{ .root.Values.postgresql.existingSecretKey }}
      {{- else }}
      name: {{ .secretName | default (include "orgmesh.secretName" .root) }}
      key: pg-url
      {{- end }}
{{- end }}

{{/* The secret environment of a service; (dict "root" $ "svc" $svc) */}}
{{- define "orgmesh.secretEnv" -}}
{{- $v := .root.Values }}
{{- include "orgmesh.pgUrlEnv" (dict "root" .root) }}
{{- if or $v.redis.password $v.redis.existingSecret }}
- name: ORGMESH_REDIS_PASSWORD
  valueFrom:
    {{- include "orgmesh.secretRef" (dict "root" .root "cfg" $v.redis "key" "redis-password") | nindent 4 }}
{{- end }}
{{- /* always wired: without a key the services refuse to start (docs/security.md) */}}
- name: ORGMESH_PAGE_TOKEN_KEY
  valueFrom:
    {{- include "orgmesh.secretRef" (dict "root" .root "cfg" $v.pageToken "key" "page-token-key") | nindent 4 }}
{{- if eq .name "partners" }}
- name: ORGMESH_PARTNERS_TOKEN_KEY
  valueFrom:
    {{- include "orgmesh.secretRef" (dict "root" .root "cfg" $v.partnersToken "key" "partners-token-key") | nindent 4 }}
{{- end }}
{{- if and .svc.smtp (or $v.smtp.password $v.smtp.existingSecret) }}
- name: ORGMESH_SMTP_PASSWORD
  valueFrom:
    {{- include "orgmesh.secretRef" (dict "root" .root "cfg" $v.smtp "key" "smtp-password") | nindent 4 }}
{{- end }}
{{- end }}
