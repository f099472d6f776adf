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

{{/* Labels of a pod template. Without the chart's version: a new chart release must not restart
Postgres, Redis or Jaeger. The app pods add app.kubernetes.io/version (their image changes with
it anyway) through rr.appPodLabels. */}}
{{- define "rr.podLabels" -}}
{{ include "rr.selectorLabels" . }}
app.kubernetes.io/part-of: rocket-rides
{{- end }}

{{- define "rr.appPodLabels" -}}
{{ include "rr.podLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
{{- end }}

{{- define "rr.labels" -}}
{{ include "rr.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: rocket-rides
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
{{- end }}

{{/* An image reference from {registry, repository, tag, digest}: call with (dict "ctx" $ "image"
<values> "tag" <default tag>). global.imageRegistry replaces the registry. */}}
{{- define "rr.imageRef" -}}
{{- $registry := .image.registry | default "" -}}
{{- with .ctx.Values.global }}{{ with .imageRegistry }}{{ $registry = . }}{{ end }}{{ end -}}
{{- $ref := .image.repository -}}
{{- with $registry }}{{ $ref = printf "%s/%s" . $ref }}{{ end -}}
{{- $ref = printf "%s:%s" $ref (toString (.image.tag | default .tag)) -}}
{{- with .image.digest }}{{ $ref = printf "%s@%s" $ref . }}{{ end -}}
{{ $ref }}
{{- end }}

{{- define "rr.image" -}}
{{ include "rr.imageRef" (dict "ctx" . "image" .Values.image "tag" .Chart.AppVersion) }}
{{- end }}

{{- define "rr.postgresHost" -}}
{{ include "rr.fullname" . }}-postgresql
{{- end }}

{{/* The Secret holding the bundled Postgres's passwords: the user's, or the chart's. */}}
{{- define "rr.postgresSecret" -}}
{{- .Values.postgresql.auth.existingSecret | default (printf "%s-postgresql" (include "rr.fullname" .)) }}
{{- end }}

{{/* The Secrets the chart generates in the cluster (the generatedSecrets Job), as a JSON list
of {name, component, keys}: the bundled Postgres's when neither its passwords nor an
existingSecret are given, the bundled Redis's likewise. Same names and keys as the Secrets the
chart renders from given passwords, so every secretKeyRef is the same either way. */}}
{{- define "rr.generatedSecrets" -}}
{{- $out := list -}}
{{- $pg := .Values.postgresql.auth -}}
{{- if and .Values.postgresql.enabled (not $pg.existingSecret) }}
{{- if and (not $pg.password) (not $pg.postgresPassword) }}
{{- $out = append $out (dict "name" (include "rr.postgresSecret" .) "component" "postgresql" "keys" (list $pg.secretKeys.password $pg.secretKeys.postgresPassword)) -}}
{{- else if not (and $pg.password $pg.postgresPassword) }}
{{- fail "set both postgresql.auth.password and postgresql.auth.postgresPassword, or neither (the chart then generates both in the cluster, once), or name a Secret you manage in postgresql.auth.existingSecret" }}
{{- end }}
{{- end }}
{{- $redis := .Values.redis.auth -}}
{{- if and .Values.redis.enabled $redis.enabled (not $redis.existingSecret) (not $redis.password) }}
{{- $out = append $out (dict "name" (include "rr.redisSecret" .) "component" (ternary "redis-cluster" "redis" .Values.redis.cluster.enabled) "keys" (list $redis.existingSecretPasswordKey)) -}}
{{- end }}
{{- toJson $out -}}
{{- end }}

{{/* DATABASE_URL (and, for the bundled Postgres, PGPASSWORD: sqlx, like libpq, takes the
password from it when the URL has none, so any character may be in it). */}}
{{- define "rr.databaseUrlEnv" -}}
{{- if .Values.postgresql.enabled }}
- name: PGPASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "rr.postgresSecret" . }}
      key: {{ .Values.postgresql.auth.secretKeys.password }}
- name: DATABASE_URL
  value: {{ printf "postgres://%s@%s:5432/%s" .Values.postgresql.username (include "rr.postgresHost" .) .Values.postgresql.database | quote }}
{{- else }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ required "externalDatabase.existingSecret is required when postgresql.enabled is false" .Values.externalDatabase.existingSecret }}
      key: {{ .Values.externalDatabase.urlKey }}
{{- with .Values.externalDatabase.sslmode }}
- name: PGSSLMODE
  value: {{ . | quote }}
{{- end }}
{{- if and (include "rr.databaseTls" .) (include "rr.caBundle" .) }}
- name: PGSSLROOTCERT
  value: {{ include "rr.caBundleFile" . }}
{{- end }}
{{- end }}
{{- end }}

{{/* "true" when the external database is reached over TLS (externalDatabase.sslmode other than
disable), else empty. An sslmode in the URL itself wins over PGSSLMODE, as in libpq. */}}
{{- define "rr.databaseTls" -}}
{{- if and (not .Values.postgresql.enabled) (has .Values.externalDatabase.sslmode (list "prefer" "require" "verify-ca" "verify-full")) }}true{{ end }}
{{- end }}

{{/* The Secret holding the bundled Redis's password, or empty when Redis has none. */}}
{{- define "rr.redisSecret" -}}
{{- if and .Values.redis.enabled .Values.redis.auth.enabled }}
{{- .Values.redis.auth.existingSecret | default (printf "%s-redis" (include "rr.fullname" .)) }}
{{- end }}
{{- end }}

{{/* REDIS_PASSWORD from the Secret, for $(REDIS_PASSWORD) in REDIS_URL and the servers' args. */}}
{{- define "rr.redisPasswordEnv" -}}
{{- with include "rr.redisSecret" . }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.redis.auth.existingSecretPasswordKey }}
{{- end }}
{{- end }}

{{/* "redis://" or "redis://:$(REDIS_PASSWORD)@": Kubernetes expands $(REDIS_PASSWORD) from the
variable defined just before. */}}
{{- define "rr.redisUrlPrefix" -}}
redis://{{ if include "rr.redisSecret" . }}:$(REDIS_PASSWORD)@{{ end }}
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
{{- $prefix := include "rr.redisUrlPrefix" . -}}
{{- if include "rr.redisCluster" . }}
{{- $urls := list -}}
{{- range splitList " " (include "rr.redisClusterNodes" .) }}
{{- $urls = append $urls (printf "%s%s" $prefix .) -}}
{{- end }}
{{- include "rr.redisPasswordEnv" . }}
- name: REDIS_URL
  value: {{ join "," $urls | quote }}
{{- else if .Values.redis.enabled }}
{{- include "rr.redisPasswordEnv" . }}
- name: REDIS_URL
  value: {{ printf "%s%s-redis:6379" $prefix (include "rr.fullname" .) | quote }}
{{- else if .Values.externalRedis.existingSecret }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.externalRedis.existingSecret }}
      key: {{ .Values.externalRedis.urlKey }}
{{- else }}
{{- $url := required "externalRedis.url or externalRedis.existingSecret is required when redis.enabled is false" .Values.externalRedis.url }}
{{- if .Values.externalRedis.tls }}
{{- /* Every node's redis:// becomes rediss:// (a cluster's URL lists them comma-separated). */}}
{{- $url = regexReplaceAll "(^|,)\\s*redis://" $url "${1}rediss://" }}
{{- end }}
- name: REDIS_URL
  value: {{ $url | quote }}
{{- end }}
{{- if and (not .Values.redis.enabled) .Values.externalRedis.tls (include "rr.caBundle" .) }}
- name: REDIS_CA_FILE
  value: {{ include "rr.caBundleFile" . }}
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

{{/* host:port for our servers' LISTEN_ADDR / METRICS_ADDR: call with (list $ port). */}}
{{- define "rr.listenAddr" -}}
{{ (index . 0).Values.listenHost }}:{{ index . 1 }}
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
  value: {{ $.ctx.Values.tracing.sampler | quote }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ $.ctx.Values.tracing.samplingRatio | quote }}
{{- end }}
{{- include "rr.caBundleEnv" .ctx }}
{{- if and .ctx.Values.metrics.enabled .metrics }}
- name: METRICS_ADDR
  value: {{ include "rr.listenAddr" (list .ctx .ctx.Values.metrics.port) | quote }}
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

{{/* Native gRPC health probes: readiness asks service "", liveness service "liveness"; the
startup probe gives a slow start (a migration, Postgres coming up) 5 minutes before liveness. Call
with (dict "port" <port> "tls" <"true" or ""> "healthPort" <port>): the kubelet's gRPC probes
speak no TLS, so a server that serves TLS is probed, still by gRPC, on its plaintext health-only
port (HEALTH_ADDR). */}}
{{- define "rr.grpcProbes" -}}
{{- $port := ternary .healthPort .port (not (empty .tls)) -}}
{{- $check := dict "grpc" (dict "port" $port) -}}
{{- $live := dict "grpc" (dict "port" $port "service" "liveness") -}}
startupProbe:
  {{- toYaml $live | nindent 2 }}
  periodSeconds: 5
  failureThreshold: 60
readinessProbe:
  {{- toYaml $check | nindent 2 }}
  periodSeconds: 5
  failureThreshold: 2
livenessProbe:
  {{- toYaml $live | nindent 2 }}
  periodSeconds: 10
  failureThreshold: 3
{{- end }}

{{/* The container port "health" (plaintext, health alone), when server TLS is on. */}}
{{- define "rr.healthContainerPort" -}}
{{- if include "rr.serverTls" . }}
- name: health
  containerPort: {{ .Values.tls.server.healthPort }}
{{- end }}
{{- end }}

{{/* The container port "metrics", when metrics are on. */}}
{{- define "rr.metricsContainerPort" -}}
{{- if .Values.metrics.enabled }}
- name: metrics
  containerPort: {{ .Values.metrics.port }}
{{- end }}
{{- end }}

{{/* The Service port "metrics", when metrics are on. */}}
{{- define "rr.metricsServicePort" -}}
{{- if .Values.metrics.enabled }}
- name: metrics
  port: {{ .Values.metrics.port }}
  targetPort: metrics
{{- end }}
{{- end }}

{{/* A gRPC server's preStop: the native sleep action (Kubernetes 1.30+; the image has no shell
for an exec sleep). Before 1.30 none: terminationGracePeriodSeconds and the servers' own
draining on SIGTERM remain. */}}
{{- define "rr.preStop" -}}
{{- if and (gt (int .Values.shutdown.preStopSleepSeconds) 0) (semverCompare ">=1.30-0" .Capabilities.KubeVersion.Version) }}
lifecycle:
  preStop:
    sleep:
      seconds: {{ .Values.shutdown.preStopSleepSeconds }}
{{- end }}
{{- end }}

{{/* The init container that applies the schema before the app starts; it waits for Postgres
(`migrate` retries), and the pod restarts it with backoff if Postgres takes longer. */}}
{{- define "rr.migrateInit" -}}
initContainers:
  - name: migrate
    image: {{ include "rr.image" . }}
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    command: ["rocket-rides-api", "migrate"]
    env:
      {{- include "rr.databaseUrlEnv" . | trim | nindent 6 }}
      - name: LOG_PARTITIONS
        value: {{ .Values.logPartitions | quote }}
      - name: RUST_LOG
        value: {{ .Values.logLevel | quote }}
      - name: LOG_FORMAT
        value: {{ .Values.logFormat | quote }}
      {{- with include "rr.caBundleEnv" . | trim }}
      {{- . | nindent 6 }}
      {{- end }}
    {{- with include "rr.tlsVolumeMounts" (dict "ctx" $) | trim }}
    {{- . | nindent 4 }}
    {{- end }}
    resources:
      {{- toYaml .Values.migrations.resources | nindent 6 }}
    {{- include "rr.containerSecurityContext" . | nindent 4 }}
{{- end }}

{{/* imagePullSecrets (global.imagePullSecrets, then imagePullSecrets, each a name or {name}),
priorityClassName, nodeSelector, tolerations, affinity: every pod the chart renders. Call with $,
or (dict "ctx" $ "affinity" <a default affinity>) for a pod with an affinity of its own. */}}
{{- define "rr.scheduling" -}}
{{- $ctx := .ctx | default . -}}
{{- $secrets := list -}}
{{- range concat ((($ctx.Values.global | default dict).imagePullSecrets) | default list) ($ctx.Values.imagePullSecrets | default list) }}
{{- if kindIs "string" . }}
{{- $secrets = append $secrets (dict "name" .) -}}
{{- else }}
{{- $secrets = append $secrets (dict "name" .name) -}}
{{- end }}
{{- end }}
{{- with $secrets | uniq }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $ctx.Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with $ctx.Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $ctx.Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $ctx.Values.affinity | default .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* What every pod of ours shares: the chart's service account (serviceAccount.*), without its
token unless serviceAccount.automount (only chaos and the generated-secrets Job call the API, with
accounts of their own), the scheduling values, and, for replicated workloads, a spread over topologySpread.topologyKey.
Call with (dict "ctx" $ "component" ... ["group" ...] ["spread" true]). */}}
{{- define "rr.podCommon" -}}
serviceAccountName: {{ include "rr.serviceAccountName" .ctx }}
automountServiceAccountToken: {{ .ctx.Values.serviceAccount.automount }}
{{- with include "rr.scheduling" (dict "ctx" .ctx "affinity" .affinity) | trim }}
{{ . }}
{{- end }}
{{- if and .spread .ctx.Values.topologySpread.enabled }}
topologySpreadConstraints:
  - maxSkew: {{ .ctx.Values.topologySpread.maxSkew }}
    topologyKey: {{ .ctx.Values.topologySpread.topologyKey }}
    whenUnsatisfiable: {{ .ctx.Values.topologySpread.whenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- include "rr.selectorLabels" . | nindent 8 }}
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
  {{- /* A pod that is not ready (a crash loop, a bad rollout) may always be evicted, so it cannot
  block a node drain; beta and on by default since 1.27, left out before. */}}
  {{- if semverCompare ">=1.27-0" .ctx.Capabilities.KubeVersion.Version }}
  unhealthyPodEvictionPolicy: AlwaysAllow
  {{- end }}
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

{{/* ---- TLS (README.md "TLS"). */}}

{{- define "rr.caBundleDir" -}}/etc/rocket-rides/ca{{- end }}
{{- define "rr.caBundleFile" -}}/etc/rocket-rides/ca/ca.crt{{- end }}
{{- define "rr.serverTlsDir" -}}/etc/rocket-rides/tls{{- end }}

{{/* "true" when tls.caBundle names a ConfigMap or a Secret, else empty. */}}
{{- define "rr.caBundle" -}}
{{- with .Values.tls.caBundle }}{{ if or .configMap .secret }}true{{ end }}{{ end }}
{{- end }}

{{/* "true" when our gRPC servers (api, consumers, history) serve TLS, else empty. */}}
{{- define "rr.serverTls" -}}
{{- if .Values.tls.server.enabled }}true{{ end }}
{{- end }}

{{/* The kubernetes.io/tls Secret holding the servers' certificate: tls.server.secretName, or
with cert-manager <fullname>-grpc-tls by default. */}}
{{- define "rr.serverTlsSecret" -}}
{{- if .Values.tls.server.certManager.enabled }}
{{- .Values.tls.server.secretName | default (printf "%s-grpc-tls" (include "rr.fullname" .)) }}
{{- else }}
{{- required "tls.server.secretName is required when tls.server.enabled is true (a kubernetes.io/tls Secret with tls.crt and tls.key), unless tls.server.certManager.enabled makes one" .Values.tls.server.secretName }}
{{- end }}
{{- end }}

{{/* SSL_CERT_FILE: the CA bundle every TLS client of ours trusts (it replaces the image's CA
certificates), when one is given. */}}
{{- define "rr.caBundleEnv" -}}
{{- if include "rr.caBundle" . }}
- name: SSL_CERT_FILE
  value: {{ include "rr.caBundleFile" . }}
{{- end }}
{{- end }}

{{/* TLS_CERT_FILE and TLS_KEY_FILE of a gRPC server, when server TLS is on. */}}
{{- define "rr.serverTlsEnv" -}}
{{- if include "rr.serverTls" . }}
- name: TLS_CERT_FILE
  value: {{ include "rr.serverTlsDir" . }}/tls.crt
- name: TLS_KEY_FILE
  value: {{ include "rr.serverTlsDir" . }}/tls.key
- name: HEALTH_ADDR
  value: {{ include "rr.listenAddr" (list . .Values.tls.server.healthPort) | quote }}
{{- end }}
{{- end }}

{{/* A pod's `volumes:` for TLS, or nothing: the CA bundle when given, the servers' certificate
when "server" is true and server TLS is on, and extraVolumes when "extra" is true (the app pods).
Call with (dict "ctx" $ ["server" true] ["extra" true]). */}}
{{- define "rr.tlsVolumes" -}}
{{- $ca := include "rr.caBundle" .ctx -}}
{{- $server := and .server (include "rr.serverTls" .ctx) -}}
{{- $extra := and .extra .ctx.Values.extraVolumes -}}
{{- if or $ca $server $extra }}
volumes:
{{- if $ca }}
{{- with .ctx.Values.tls.caBundle }}
  - name: ca-bundle
    {{- if .configMap }}
    configMap:
      name: {{ .configMap }}
    {{- else }}
    secret:
      secretName: {{ .secret }}
    {{- end }}
      items:
        - key: {{ .key }}
          path: ca.crt
{{- end }}
{{- end }}
{{- if $server }}
  - name: grpc-tls
    secret:
      secretName: {{ include "rr.serverTlsSecret" .ctx }}
      defaultMode: 0440
      items:
        - key: tls.crt
          path: tls.crt
        - key: tls.key
          path: tls.key
{{- end }}
{{- with $extra }}
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
{{- end }}

{{/* The matching `volumeMounts:` of a container, read-only; same arguments. */}}
{{- define "rr.tlsVolumeMounts" -}}
{{- $ca := include "rr.caBundle" .ctx -}}
{{- $server := and .server (include "rr.serverTls" .ctx) -}}
{{- $extra := and .extra .ctx.Values.extraVolumeMounts -}}
{{- if or $ca $server $extra }}
volumeMounts:
{{- if $ca }}
  - name: ca-bundle
    mountPath: {{ include "rr.caBundleDir" .ctx }}
    readOnly: true
{{- end }}
{{- if $server }}
  - name: grpc-tls
    mountPath: {{ include "rr.serverTlsDir" .ctx }}
    readOnly: true
{{- end }}
{{- with $extra }}
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
{{- end }}

{{/* The DNS names a gRPC server's certificate must hold: every Service of the api, the consumer
groups and history, short, namespaced and fully qualified. */}}
{{- define "rr.serverTlsDnsNames" -}}
{{- $full := include "rr.fullname" . -}}
{{- $services := list (printf "%s-api" $full) (printf "%s-api-headless" $full) -}}
{{- range .Values.consumer.groups }}
{{- $name := include "rr.consumerGroupName" (dict "ctx" $ "group" .name) -}}
{{- $services = concat $services (list $name (printf "%s-headless" $name)) -}}
{{- end }}
{{- if .Values.history.enabled }}
{{- $services = append $services (printf "%s-history" $full) -}}
{{- end }}
{{- $names := list -}}
{{- range $services }}
{{- $names = concat $names (list . (printf "%s.%s" . $.Release.Namespace) (printf "%s.%s.svc" . $.Release.Namespace) (printf "%s.%s.svc.%s" . $.Release.Namespace $.Values.tls.server.certManager.clusterDomain)) -}}
{{- end }}
{{- concat $names .Values.tls.server.certManager.extraDnsNames | uniq | join " " }}
{{- end }}


{{/* The service account of the chart's pods (not chaos's nor the secrets Job's, which have their
own): serviceAccount.name, else <fullname> when the chart creates it, else "default". */}}
{{- define "rr.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- .Values.serviceAccount.name | default (include "rr.fullname" .) }}
{{- else }}
{{- .Values.serviceAccount.name | default "default" }}
{{- end }}
{{- end }}

{{/* podLabels, for every pod template; after the chart's own labels, which they cannot replace
(a selector would stop matching). */}}
{{- define "rr.extraPodLabels" -}}
{{- range $k, $v := .Values.podLabels }}
{{- if hasPrefix "app.kubernetes.io/" $k }}
{{- fail (printf "podLabels: %q is one of the chart's own labels (selectors rely on them); choose another name" $k) }}
{{- end }}
{{ $k }}: {{ $v | quote }}
{{- end }}
{{- end }}

{{/* A pod template's `annotations:` (the chart's, given as YAML text in "own", then
podAnnotations), or nothing. Call with (dict "ctx" $ "own" <yaml>). */}}
{{- define "rr.podAnnotations" -}}
{{- $all := merge (dict) (fromYaml (.own | default "")) -}}
{{- $all = merge $all (.ctx.Values.podAnnotations | default dict) -}}
{{- with $all }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* extraEnv of the app containers, after the chart's own variables. */}}
{{- define "rr.extraEnv" -}}
{{- with .Values.extraEnv }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{/* An Ingress to a Service's port, from api.ingress or jaeger.ingress ({enabled, className,
annotations, hosts: [{host, paths: [{path, pathType}]}], tls}). Call with (dict "ctx" $
"component" ... "service" <name> "port" <port name> "ingress" <values>). */}}
{{- define "rr.ingress" -}}
{{- with .ingress }}
{{- if .enabled }}
{{- if not .hosts }}
{{- fail (printf "%s.ingress.enabled needs at least one entry in %s.ingress.hosts" $.component $.component) }}
{{- end }}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {{ $.service }}
  labels:
    {{- include "rr.labels" (dict "ctx" $.ctx "component" $.component) | nindent 4 }}
  {{- with .annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  {{- with .className }}
  ingressClassName: {{ . }}
  {{- end }}
  {{- with .tls }}
  tls:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  rules:
    {{- range .hosts }}
    - {{- with .host }}
      host: {{ . | quote }}
      {{- end }}
      http:
        paths:
          {{- range (.paths | default (list (dict "path" "/" "pathType" "Prefix"))) }}
          - path: {{ .path | default "/" }}
            pathType: {{ .pathType | default "Prefix" }}
            backend:
              service:
                name: {{ $.service }}
                port:
                  name: {{ $.port }}
          {{- end }}
    {{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* The Redis Cluster nodes' podAntiAffinity (redis.cluster.podAntiAffinity): "hard", no two
nodes on one Kubernetes node, so no master shares a node with its replica; "soft", a preference;
"": none. Used unless `affinity` is set. */}}
{{- define "rr.redisClusterAffinity" -}}
{{- $term := dict "topologyKey" "kubernetes.io/hostname" "labelSelector" (dict "matchLabels" (include "rr.selectorLabels" (dict "ctx" . "component" "redis-cluster") | fromYaml)) -}}
{{- if eq .Values.redis.cluster.podAntiAffinity "hard" }}
podAntiAffinity:
  requiredDuringSchedulingIgnoredDuringExecution:
    - {{- toYaml $term | nindent 6 }}
{{- else if eq .Values.redis.cluster.podAntiAffinity "soft" }}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        {{- toYaml $term | nindent 8 }}
{{- end }}
{{- end }}

{{/* A StatefulSet's serviceName, which Kubernetes will not change: the live one when the
StatefulSet exists (0.1.0 governed Postgres and Redis by their ClusterIP Services; both
Services still exist), else "default". Call with (dict "ctx" $ "name" <StatefulSet> "default" <service>). */}}
{{- define "rr.stsServiceName" -}}
{{- $live := include "rr.lookup" (dict "ctx" .ctx "apiVersion" "apps/v1" "kind" "StatefulSet" "name" .name) | fromJson -}}
{{- dig "spec" "serviceName" "" $live | default .default -}}
{{- end }}
