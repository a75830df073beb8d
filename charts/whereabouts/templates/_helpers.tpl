{{/*
Chart name, overridable with nameOverride.
Names are cut to 63 characters because Kubernetes label values and many name fields are
DNS-1123 labels, which may not be longer.
*/}}
{{- define "whereabouts.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Fully qualified name of the release's objects (DaemonSet, Roles, ClusterRoles, bindings).
The release name alone is used when it already contains the chart name, so the usual
`helm install whereabouts ...` gives plain `whereabouts`.
*/}}
{{- define "whereabouts.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Name of the reconciler CronJob. It is fixed, not derived from the release name, so that
runbooks (`kubectl create job --from=cronjob/whereabouts-ip-reconciler ...`) work everywhere.
*/}}
{{- define "whereabouts.reconciler.cronJobName" -}}
whereabouts-ip-reconciler
{{- end -}}

{{/* Chart label value: name-version, with '+' (not allowed in labels) replaced. */}}
{{- define "whereabouts.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select a component's pods; they must never change between upgrades. */}}
{{- define "whereabouts.selectorLabels" -}}
app.kubernetes.io/name: {{ include "whereabouts.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "whereabouts.labels" -}}
helm.sh/chart: {{ include "whereabouts.chart" . }}
{{ include "whereabouts.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: whereabouts
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Labels of one component. Call with (dict "root" $ "component" "node-agent").
*/}}
{{- define "whereabouts.componentLabels" -}}
{{ include "whereabouts.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "whereabouts.componentSelectorLabels" -}}
{{ include "whereabouts.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* ServiceAccount names. */}}
{{- define "whereabouts.plugin.serviceAccountName" -}}
{{- .Values.serviceAccounts.plugin.name -}}
{{- end -}}
{{- define "whereabouts.nodeAgent.serviceAccountName" -}}
{{- .Values.serviceAccounts.nodeAgent.name -}}
{{- end -}}
{{- define "whereabouts.reconciler.serviceAccountName" -}}
{{- .Values.serviceAccounts.reconciler.name -}}
{{- end -}}

{{/* Image reference: repository:tag, or repository@digest when a digest is set. */}}
{{- define "whereabouts.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/*
Container path of a host path. The host's file system is mounted under /host at the same
paths, so the installer recovers the host path by stripping --host-root (/host) and writes
paths into whereabouts.conf that are valid on the host.
*/}}
{{- define "whereabouts.hostMount" -}}
{{- printf "/host%s" (clean .) -}}
{{- end -}}

{{/* Environment every whereabouts container gets. */}}
{{- define "whereabouts.env" -}}
- name: NODENAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
- name: WHEREABOUTS_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- end -}}
