{{/* Names and labels shared by every template. */}}

{{- define "spa-operator.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "spa-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "spa-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "spa-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "spa-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "spa-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: spa
{{- end -}}

{{- define "spa-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "spa-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* An image reference: repository with the chart's appVersion unless it names a tag. */}}
{{- define "spa-operator.versioned" -}}
{{- $image := index . 0 -}}{{- $root := index . 1 -}}
{{- if regexMatch ":[^/]+$" $image -}}{{ $image }}{{- else -}}{{ printf "%s:%s" $image $root.Chart.AppVersion }}{{- end -}}
{{- end -}}

{{- define "spa-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/*
What the operator may do in the namespaces it watches: the runs and schedules (and their
status), and the children of a run. No wildcards; nothing it does not use.
*/}}
{{- define "spa-operator.namespacedRules" -}}
- apiGroups: [alignment.spa.dev]
  resources: [spaalignmentruns, spaalignmentschedules]
  verbs: [get, list, watch, patch, update]
- apiGroups: [alignment.spa.dev]
  # Schedules create runs and prune old ones.
  resources: [spaalignmentruns]
  verbs: [create, delete]
- apiGroups: [alignment.spa.dev]
  resources: [spaalignmentruns/status, spaalignmentschedules/status]
  verbs: [get, patch, update]
- apiGroups: [""]
  resources: [configmaps, services]
  verbs: [get, list, watch, create, delete]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, delete]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, delete]
- apiGroups: [""]
  # Read-only: a failed stage's termination message, a finished stage's counts, why a pod
  # waits; whether the run's storage.pvc exists.
  resources: [pods, persistentvolumeclaims]
  verbs: [get, list, watch]
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- if .Values.networkPolicy.enabled }}
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, create, delete]
{{- end }}
{{- end -}}

{{/*
Cluster-scoped reads kopf needs in either mode: discovering its resources, and observing
namespaces (it does even when given explicit --namespace values, and stalls without).
*/}}
{{- define "spa-operator.clusterRules" -}}
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [namespaces]
  verbs: [get, list, watch]
{{- end -}}
