{{/*
The non-secret environment of one service (its ConfigMap's data); the
Deployment hashes it into checksum/config so a change rolls the pods.
(dict "root" $ "name" $name "svc" $svc)
*/}}
{{- define "orgmesh.configData" -}}
{{- $root := .root }}
{{- $v := $root.Values }}
{{- $svc := .svc }}
{{- $data := dict
  "ORGMESH_LISTEN" (printf "0.0.0.0:%d" (int $v.grpcPort))
  "ORGMESH_METRICS_LISTEN" (printf "0.0.0.0:%d" (int $v.metricsPort))
  "ORGMESH_MIGRATE_ON_START" "false"
  "ORGMESH_LOG_LEVEL" ($svc.logLevel | default $v.config.logLevel)
  "ORGMESH_WORKERS" (toString $svc.workers)
  "ORGMESH_HEALTH_INTERVAL_MS" (toString $v.config.healthIntervalMs)
  "ORGMESH_SHUTDOWN_GRACE_MS" (toString $v.config.shutdownGraceMs)
  "ORGMESH_PG_WAIT_MS" (toString $v.config.pgWaitMs)
  "ORGMESH_PG_STATEMENT_TIMEOUT_MS" (toString $v.config.pgStatementTimeoutMs)
  "ORGMESH_REDIS_HOST" $v.redis.host
  "ORGMESH_REDIS_PORT" (toString $v.redis.port)
  "ORGMESH_REDIS_TIMEOUT_MS" (toString $v.config.redisTimeoutMs)
  "ORGMESH_JWT_ISSUER" $v.jwt.issuer
  "ORGMESH_JWT_AUDIENCE" $v.jwt.audience
  "ORGMESH_JWT_KEYS" (include "orgmesh.jwtKeys" $root)
  "ORGMESH_JWT_KEY_SUBJECTS" (include "orgmesh.jwtKeySubjects" $root)
  "ORGMESH_PLATFORM_SERVICES" (join "," $v.jwt.platformServices)
}}
{{- $kid := include "orgmesh.signingKid" . }}
{{- if $kid }}
{{- $_ := set $data "ORGMESH_JWT_SIGNING_KEY" (printf "%s:%s:/etc/orgmesh/jwt/signing/%s.pem" $kid ($svc.signingKey.algorithm | default "ES256") $kid) }}
{{- end }}
{{- range $svc.peers }}
{{- $_ := set $data (printf "ORGMESH_%s_ADDR" (upper .)) (printf "%s:%d" (include "orgmesh.svcName" (dict "root" $root "name" .)) (int $v.grpcPort)) }}
{{- end }}
{{- if $svc.smtp }}
{{- $_ := set $data "ORGMESH_SMTP_URL" $v.smtp.url }}
{{- $_ := set $data "ORGMESH_SMTP_FROM" $v.smtp.from }}
{{- if $v.smtp.user }}{{ $_ := set $data "ORGMESH_SMTP_USER" $v.smtp.user }}{{ end }}
{{- end }}
{{- /* Issue 19: OTLP trace export, only when an endpoint is given. */}}
{{- if $v.tracing.endpoint }}
{{- $_ := set $data "OTEL_EXPORTER_OTLP_ENDPOINT" $v.tracing.endpoint }}
{{- $_ := set $data "OTEL_SERVICE_NAME" .name }}
{{- $_ := set $data "OTEL_TRACES_SAMPLER" $v.tracing.sampler }}
{{- $_ := set $data "OTEL_TRACES_SAMPLER_ARG" (toString $v.tracing.samplerArg) }}
{{- $_ := set $data "OTEL_RESOURCE_ATTRIBUTES" (printf "service.namespace=%s,deployment.environment=%s" $root.Release.Namespace $v.tracing.environment) }}
{{- end }}
{{- range $k, $val := $v.config.env }}{{ $_ := set $data $k (toString $val) }}{{ end }}
{{- range $k, $val := $svc.env }}{{ $_ := set $data $k (toString $val) }}{{ end }}
{{- toYaml $data }}
{{- end }}

{{/*
Hash of the chart-made secret material a service uses, so replacing a key
through `helm upgrade` rolls the pods (existing Secrets are not watched).
*/}}
{{- define "orgmesh.secretChecksum" -}}
{{- $v := .root.Values }}
{{- $parts := list $v.postgresql.url $v.postgresql.existingSecret $v.redis.password $v.redis.existingSecret $v.pageToken.key $v.pageToken.existingSecret $v.jwt.existingSecret (toJson $v.jwt.publicKeys) (toJson .svc.signingKey) }}
{{- if eq .name "partners" }}{{ $parts = append $parts (toJson $v.partnersToken) }}{{ end }}
{{- if .svc.smtp }}{{ $parts = append $parts (toJson $v.smtp) }}{{ end }}
{{- join "\n" $parts | sha256sum }}
{{- end }}
