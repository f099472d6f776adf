{{- define "rr.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "rr.fullname" -}}
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

{{/* Selector labels of one component: call with (dict "ctx" $ "component" "api"). */}}
{{- define "rr.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rr.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "rr.labels" -}}
{{ include "rr.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: rocket-rides
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
{{- end }}

{{- define "rr.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "rr.postgresHost" -}}
{{ include "rr.fullname" . }}-postgresql
{{- end }}

{{- define "rr.databaseSecret" -}}
{{- if .Values.postgresql.enabled }}{{ include "rr.fullname" . }}-postgresql{{ else }}{{ required "externalDatabase.existingSecret is required when postgresql.enabled is false" .Values.externalDatabase.existingSecret }}{{ end }}
{{- end }}

{{- define "rr.databaseKey" -}}
{{- if .Values.postgresql.enabled }}database-url{{ else }}{{ .Values.externalDatabase.urlKey }}{{ end }}
{{- end }}

{{- define "rr.databaseUrlEnv" -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "rr.databaseSecret" . }}
      key: {{ include "rr.databaseKey" . }}
{{- end }}

{{- define "rr.redisUrlEnv" -}}
{{- if .Values.redis.enabled }}
- name: REDIS_URL
  value: redis://{{ include "rr.fullname" . }}-redis:6379
{{- else if .Values.externalRedis.existingSecret }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.externalRedis.existingSecret }}
      key: {{ .Values.externalRedis.urlKey }}
{{- else }}
- name: REDIS_URL
  value: {{ required "externalRedis.url or externalRedis.existingSecret is required when redis.enabled is false" .Values.externalRedis.url | quote }}
{{- end }}
{{- end }}

{{- define "rr.otlpEndpoint" -}}
{{- if .Values.jaeger.enabled }}http://{{ include "rr.fullname" . }}-jaeger:4317{{ else }}{{ .Values.tracing.otlpEndpoint }}{{ end }}
{{- end }}

{{/* Environment every service shares: call with (dict "ctx" $ "service" "rocket-rides-api"). */}}
{{- define "rr.commonEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: RUST_LOG
  value: {{ .ctx.Values.logLevel | quote }}
- name: LOG_FORMAT
  value: {{ .ctx.Values.logFormat | quote }}
- name: STREAM_NAME
  value: {{ .ctx.Values.streamName | quote }}
{{- with include "rr.otlpEndpoint" .ctx }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ $.service }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(POD_NAMESPACE),service.namespace={{ $.ctx.Release.Name }}
- name: OTEL_TRACES_SAMPLER
  value: parentbased_traceidratio
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ $.ctx.Values.tracing.samplingRatio | quote }}
{{- end }}
{{- if and .ctx.Values.metrics.enabled .metrics }}
- name: METRICS_ADDR
  value: "0.0.0.0:{{ .ctx.Values.metrics.port }}"
{{- end }}
{{- end }}

{{- define "rr.podSecurityContext" -}}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end }}

{{- define "rr.containerSecurityContext" -}}
securityContext:
  {{- toYaml .Values.securityContext | nindent 2 }}
{{- end }}

{{/* gRPC health probes on `port`: readiness asks service "", liveness service "liveness". */}}
{{- define "rr.grpcProbes" -}}
readinessProbe:
  grpc:
    port: {{ . }}
  periodSeconds: 5
  failureThreshold: 2
livenessProbe:
  grpc:
    port: {{ . }}
    service: liveness
  initialDelaySeconds: 5
  periodSeconds: 10
  failureThreshold: 3
{{- end }}

{{/* The init container that applies the schema before the app starts. */}}
{{- define "rr.migrateInit" -}}
initContainers:
  - name: migrate
    image: {{ include "rr.image" . }}
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    command: ["rocket-rides-api", "migrate"]
    env:
      {{- include "rr.databaseUrlEnv" . | nindent 6 }}
      - name: RUST_LOG
        value: {{ .Values.logLevel | quote }}
      - name: LOG_FORMAT
        value: {{ .Values.logFormat | quote }}
    resources:
      {{- toYaml .Values.migrations.resources | nindent 6 }}
    {{- include "rr.containerSecurityContext" . | nindent 4 }}
{{- end }}

{{- define "rr.scheduling" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{- define "rr.metricsAnnotations" -}}
{{- if .Values.metrics.enabled }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.metrics.port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}

{{/* A PodDisruptionBudget when a workload runs more than one replica. */}}
{{- define "rr.pdb" -}}
{{- if gt (int .replicas) 1 }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "rr.fullname" .ctx }}-{{ .component }}
  labels:
    {{- include "rr.labels" . | nindent 4 }}
spec:
  maxUnavailable: 1
  selector:
    matchLabels:
      {{- include "rr.selectorLabels" . | nindent 6 }}
{{- end }}
{{- end }}
