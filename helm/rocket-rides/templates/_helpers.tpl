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

{{/* Selector labels of one component: call with (dict "ctx" $ "component" "api"); a consumer
group's with (dict "ctx" $ "component" "consumer" "group" <name>). */}}
{{- define "rr.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rr.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- with .group }}
rocket-rides/consumer: {{ . | quote }}
{{- end }}
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

{{/* "true" when the bundled Redis is a Redis Cluster, else empty. */}}
{{- define "rr.redisCluster" -}}
{{- if and .Values.redis.enabled .Values.redis.cluster.enabled }}true{{ end }}
{{- end }}

{{- define "rr.redisClusterName" -}}
{{ include "rr.fullname" . }}-redis-cluster
{{- end }}

{{/* The headless Service that gives each node a stable DNS name, <pod>.<this service>. */}}
{{- define "rr.redisClusterService" -}}
{{ include "rr.fullname" . }}-redis-cluster-headless
{{- end }}

{{- define "rr.redisClusterSize" -}}
{{ mul (int .Values.redis.cluster.masters) (add 1 (int .Values.redis.cluster.replicasPerMaster)) }}
{{- end }}

{{/* Every node's address, host:6379, space-separated, in pod order. */}}
{{- define "rr.redisClusterNodes" -}}
{{- $name := include "rr.redisClusterName" . -}}
{{- $svc := include "rr.redisClusterService" . -}}
{{- $nodes := list -}}
{{- range $i := until (int (include "rr.redisClusterSize" .)) }}
{{- $nodes = append $nodes (printf "%s-%d.%s:6379" $name $i $svc) -}}
{{- end }}
{{- join " " $nodes }}
{{- end }}

{{/* REDIS_URL, and REDIS_CLUSTER=true when it names a cluster (every node, comma-separated). */}}
{{- define "rr.redisUrlEnv" -}}
{{- if include "rr.redisCluster" . }}
{{- $urls := list -}}
{{- range splitList " " (include "rr.redisClusterNodes" .) }}
{{- $urls = append $urls (printf "redis://%s" .) -}}
{{- end }}
- name: REDIS_URL
  value: {{ join "," $urls | quote }}
{{- else if .Values.redis.enabled }}
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
{{- if or (include "rr.redisCluster" .) (and (not .Values.redis.enabled) .Values.externalRedis.cluster) }}
- name: REDIS_CLUSTER
  value: "true"
{{- end }}
{{- end }}

{{/* REDIS_WAIT_REPLICAS for the streamer, when redis.waitReplicas is set (0 included). Unset,
the streamer picks its own default, which on a cluster counts on a replica: a bundled cluster
without replicas gets 0, or every batch would wait for a replica that does not exist. */}}
{{- define "rr.redisWaitReplicasEnv" -}}
{{- $wait := index .Values.redis "waitReplicas" -}}
{{- $replicas := int .Values.redis.cluster.replicasPerMaster -}}
{{- if and (kindIs "invalid" $wait) (include "rr.redisCluster" .) (eq $replicas 0) }}
{{- $wait = 0 -}}
{{- end }}
{{- if not (kindIs "invalid" $wait) }}
{{- if include "rr.redisCluster" . }}
{{- if gt (int $wait) $replicas }}
{{- fail (printf "redis.waitReplicas (%d) exceeds redis.cluster.replicasPerMaster (%d): every XADD would wait for replicas that do not exist" (int $wait) $replicas) }}
{{- end }}
{{- else if and .Values.redis.enabled (gt (int $wait) 0) }}
{{- fail (printf "redis.waitReplicas (%d) needs replicas, and the single bundled Redis has none: enable redis.cluster or leave redis.waitReplicas null" (int $wait)) }}
{{- end }}
- name: REDIS_WAIT_REPLICAS
  value: {{ int $wait | quote }}
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
- name: LOG_PARTITIONS
  value: {{ .ctx.Values.logPartitions | quote }}
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
      - name: LOG_PARTITIONS
        value: {{ .Values.logPartitions | quote }}
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

{{/* A PodDisruptionBudget when a workload runs more than one replica: call with (dict "ctx" $
"component" "streamer" "replicas" n), plus "group" for a consumer group. */}}
{{- define "rr.pdb" -}}
{{- if gt (int .replicas) 1 }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "rr.fullname" .ctx }}-{{ .component }}{{ with .group }}-{{ . }}{{ end }}
  labels:
    {{- include "rr.labels" . | nindent 4 }}
spec:
  maxUnavailable: 1
  selector:
    matchLabels:
      {{- include "rr.selectorLabels" . | nindent 6 }}
{{- end }}
{{- end }}

{{/* A consumer group's StatefulSet and Service: <fullname>-consumer-<group>. Call with
(dict "ctx" $ "group" <name>). */}}
{{- define "rr.consumerGroupName" -}}
{{ include "rr.fullname" .ctx }}-consumer-{{ .group }}
{{- end }}

{{/* Each consumer group's Service address, host:port, space-separated, in values order. */}}
{{- define "rr.consumerGroupAddresses" -}}
{{- $addresses := list -}}
{{- range .Values.consumer.groups }}
{{- $addresses = append $addresses (printf "%s:%d" (include "rr.consumerGroupName" (dict "ctx" $ "group" .name)) (int $.Values.consumer.port)) -}}
{{- end }}
{{- join " " $addresses }}
{{- end }}
