{{/*
The chart name, or nameOverride, cut to the 63 characters a label value allows.
*/}}
{{- define "ferry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The name of every object of the release: fullnameOverride, else "<release>-<name>",
or the release name alone when it already contains the chart name.
*/}}
{{- define "ferry.fullname" -}}
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

{{/*
"<chart>-<version>", for the helm.sh/chart label.
*/}}
{{- define "ferry.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every object of the release.
*/}}
{{- define "ferry.labels" -}}
helm.sh/chart: {{ include "ferry.chart" . }}
{{ include "ferry.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: ferry
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
The labels that select the operator pods; they never change between upgrades.
*/}}
{{- define "ferry.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ferry.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
The ServiceAccount the operator runs as.
*/}}
{{- define "ferry.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ferry.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The operator image, "<repository>:<tag>", the tag defaulting to the appVersion.
*/}}
{{- define "ferry.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
The image of the relay and consumer pods the operator creates.
*/}}
{{- define "ferry.workloadImage" -}}
{{- default (include "ferry.image" .) .Values.workloadImage }}
{{- end }}

{{/*
The namespaced permissions of the operator, the same whether they are granted
cluster-wide (ClusterRole) or per watched namespace (Role). No wildcards: every
group, resource and verb is named.
*/}}
{{- define "ferry.namespacedRules" -}}
# Every rule is a request the operator sends (tests/chart/calls.rs runs it against a
# recording API server and compares the two lists), or one the API server needs
# for a request it sends (noted where so).
#
# The resources that get a workload: read when reconciled, and watched.
- apiGroups: ["ferry.dev"]
  resources: ["outboxsources", "consumers"]
  verbs: ["get", "list", "watch"]
# The resources they reference: listed and watched, so that a change to one
# reconciles its dependents.
- apiGroups: ["ferry.dev"]
  resources: ["brokertopics", "retrypolicies", "deadletterqueues"]
  verbs: ["list", "watch"]
# Conditions and figures on the status of the resources that get a workload: a
# server-side apply is a patch.
- apiGroups: ["ferry.dev"]
  resources: ["outboxsources/status", "consumers/status"]
  verbs: ["patch"]
# No request: the children's owner references set blockOwnerDeletion, which the
# OwnerReferencesPermissionEnforcement admission plugin allows only to who may
# update the owner's finalizers.
- apiGroups: ["ferry.dev"]
  resources: ["outboxsources/finalizers", "consumers/finalizers"]
  verbs: ["update"]
# The relay and consumer Deployments: applied server-side (a patch, authorized
# as create when the Deployment does not exist yet), read for readiness, listed
# and watched, deleted when no longer wanted.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# The ConfigMaps (resolved config) and Services (status and metrics port), and
# the PodDisruptionBudgets of workloads with several replicas: managed like the
# Deployments, never read one by one.
- apiGroups: [""]
  resources: ["configmaps", "services"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# Secrets referenced by a spec: listed (to check the keys a reference names)
# and watched, so the workloads roll when one changes. Never written.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["list", "watch"]
# Kubernetes Events about a resource that cannot be applied (the shared
# Recorder creates an event and patches it when it repeats).
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
