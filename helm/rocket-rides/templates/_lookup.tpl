{{/* The live object (apiVersion, kind, name, in the release's namespace) as JSON, "{}" when
there is none or no cluster to ask (`helm template`, `--dry-run=client`, Argo CD). The one place
the chart reads the cluster, so that upgrades can keep what Kubernetes will not change and refuse
what would break; tests/chart swaps this file for fixtures. Call with
(dict "ctx" $ "apiVersion" "apps/v1" "kind" "StatefulSet" "name" <name>). */}}
{{- define "rr.lookup" -}}
{{- toJson (lookup .apiVersion .kind .ctx.Release.Namespace .name) -}}
{{- end }}
