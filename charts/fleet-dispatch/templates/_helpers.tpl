{{/* Names, labels and the few values every template derives the same way. */}}

{{- define "fleet-dispatch.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name: fullnameOverride, else the release name with the chart's name (or
nameOverride) appended unless it already contains it. */}}
{{- define "fleet-dispatch.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "fleet-dispatch.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "fleet-dispatch.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fleet-dispatch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "fleet-dispatch.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "fleet-dispatch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fleet-dispatch
{{- end -}}

{{/* The operator's ServiceAccount: the chart's (named as the release unless serviceAccount.name says), or an
existing one, which must be named: binding the operator's rules to the namespace's "default" account would
hand them to every pod there that runs as it. */}}
{{- define "fleet-dispatch.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "fleet-dispatch.fullname" .) .Values.serviceAccount.name -}}
{{- else if .Values.serviceAccount.name -}}
{{- .Values.serviceAccount.name -}}
{{- else -}}
{{- fail "serviceAccount.name: with serviceAccount.create false, name the existing ServiceAccount the operator runs as" -}}
{{- end -}}
{{- end -}}

{{/* repository:tag, or repository@digest when a digest is set. Argument: (dict "image" IMAGE "appVersion" DEFAULT-TAG). */}}
{{- define "fleet-dispatch.imageRef" -}}
{{- $image := .image -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default .appVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "fleet-dispatch.image" -}}
{{- include "fleet-dispatch.imageRef" (dict "image" .Values.image "appVersion" .Chart.AppVersion) -}}
{{- end -}}

{{/* The supervisor's image: its own when a repository is set, else the operator's. */}}
{{- define "fleet-dispatch.supervisorImage" -}}
{{- $own := .Values.supervisor.image -}}
{{- if $own.repository -}}
{{- include "fleet-dispatch.imageRef" (dict "image" $own "appVersion" .Chart.AppVersion) -}}
{{- else if or $own.tag $own.digest -}}
{{- fail "supervisor.image: a tag or digest needs supervisor.image.repository too (leave all three empty to use the operator's image)" -}}
{{- else -}}
{{- include "fleet-dispatch.image" . -}}
{{- end -}}
{{- end -}}

{{/* The watched namespaces as a JSON list; empty when the operator watches all namespaces. */}}
{{- define "fleet-dispatch.watchNamespaces" -}}
{{- if .Values.watch.allNamespaces -}}
{{- if .Values.watch.namespaces -}}
{{- fail "watch.allNamespaces: true watches every namespace; leave watch.namespaces empty" -}}
{{- end -}}
{{- list | toJson -}}
{{- else if .Values.watch.namespaces -}}
{{- .Values.watch.namespaces | uniq | toJson -}}
{{- else -}}
{{- list .Release.Namespace | toJson -}}
{{- end -}}
{{- end -}}

{{/* The namespaces that get the supervisor's ServiceAccount and Lease Role, as a JSON list. */}}
{{- define "fleet-dispatch.heartbeatNamespaces" -}}
{{- if .Values.heartbeat.namespaces -}}
{{- .Values.heartbeat.namespaces | uniq | toJson -}}
{{- else if .Values.watch.allNamespaces -}}
{{- /* None: the chart cannot create one in every namespace; pods elsewhere run without the heartbeat. */ -}}
{{- list | toJson -}}
{{- else -}}
{{- include "fleet-dispatch.watchNamespaces" . -}}
{{- end -}}
{{- end -}}

{{/* What the operator may do with what it watches: exactly the requests it makes (see the chart README). */}}
{{- define "fleet-dispatch.operatorRules" -}}
- apiGroups: [fleet.dispatch.dev]
  resources: [fleetdispatches]
  # create, patch (spec.suspend) and delete: for the dispatches of FleetCampaigns; delete: a finished
  # dispatch past its ttlSecondsAfterFinished.
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [fleet.dispatch.dev]
  resources: [fleetdispatches/status]
  verbs: [patch]
- apiGroups: [fleet.dispatch.dev]
  resources: [fleetdispatches/finalizers]
  verbs: [update]
- apiGroups: [fleet.dispatch.dev]
  resources: [fleetcampaigns]
  verbs: [list, watch]
- apiGroups: [fleet.dispatch.dev]
  resources: [fleetcampaigns/status]
  verbs: [patch]
# A campaign's dispatches block its deletion until they are gone (ownerReferences blockOwnerDeletion), which
# clusters enforcing OwnerReferencesPermissionEnforcement allow only to who may update its finalizers.
- apiGroups: [fleet.dispatch.dev]
  resources: [fleetcampaigns/finalizers]
  verbs: [update]
- apiGroups: [fleet.dispatch.dev]
  resources: [quotapools]
  verbs: [list, watch]
- apiGroups: [fleet.dispatch.dev]
  resources: [quotapools/status]
  verbs: [patch]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, create, delete]
# spec.workspace: each dispatch's claim, created before its first pod; get: a create that conflicts.
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [create, get]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- if .Values.heartbeat.enabled }}
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [list, watch]
{{- end }}
{{- end -}}
