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
# Read the ferry.dev resources users write: the reconcilers' inputs.
- apiGroups: ["ferry.dev"]
  resources:
    - outboxsources
    - brokertopics
    - retrypolicies
    - deadletterqueues
    - consumers
  verbs: ["get", "list", "watch"]
# Report progress and conditions on their status subresource: a server-side
# apply is a patch (the current status comes with the object read above).
- apiGroups: ["ferry.dev"]
  resources:
    - outboxsources/status
    - brokertopics/status
    - retrypolicies/status
    - deadletterqueues/status
    - consumers/status
  verbs: ["patch"]
# Add and remove the finalizer that runs cleanup before a resource is deleted.
# (Also needed to set blockOwnerDeletion on children's owner references.)
- apiGroups: ["ferry.dev"]
  resources:
    - outboxsources/finalizers
    - brokertopics/finalizers
    - retrypolicies/finalizers
    - deadletterqueues/finalizers
    - consumers/finalizers
  verbs: ["update"]
# The relay and consumer Deployments the operator owns: it creates them with
# server-side apply, watches them for readiness and deletes them when they are
# no longer wanted.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# The ConfigMaps (pipeline configuration) and Services (relay/consumer metrics)
# the operator owns, managed like the Deployments.
- apiGroups: [""]
  resources: ["configmaps", "services"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# The PodDisruptionBudgets the operator owns for its workloads.
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# Secrets referenced by a spec (database and broker credentials): watched so
# the workloads roll when one changes. Read-only: the operator never writes them.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch"]
# The relay and consumer pods: read to report readiness in status. Never written.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
# Kubernetes Events about what the operator did to a resource (the shared
# Recorder creates an event and patches it when it repeats).
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
