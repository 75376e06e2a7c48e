{{/*
Names, labels and image references shared by every template.
*/}}

{{/* Chart name, overridable with nameOverride. */}}
{{- define "edge-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the operator's resources: fullnameOverride, else <release>-<chart name>,
else just the release name when it already contains the chart name.
*/}}
{{- define "edge-operator.fullname" -}}
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
Name of the agent PodMonitor. It must contain "edge-agent": the Prometheus Operator
sets job="<namespace>/<name>" and the AgentDown alert selects job=~".*edge-agent.*".
*/}}
{{- define "edge-operator.agentMonitorName" -}}
{{- if contains "edge-agent" .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-edge-agent" (.Release.Name | trunc 52 | trimSuffix "-") }}
{{- end }}
{{- end }}

{{/* Chart name and version for the helm.sh/chart label. */}}
{{- define "edge-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object of the release. */}}
{{- define "edge-operator.labels" -}}
helm.sh/chart: {{ include "edge-operator.chart" . }}
{{ include "edge-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: edgepipe
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels that select the operator pods; immutable once installed. */}}
{{- define "edge-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "edge-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Name of the operator's ServiceAccount. */}}
{{- define "edge-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "edge-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag or repository@digest; the tag defaults to the chart's appVersion. */}}
{{- define "edge-operator.imageRef" -}}
{{- $image := index . 0 }}
{{- $appVersion := index . 1 }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default $appVersion $image.tag) }}
{{- end }}
{{- end }}

{{/* The operator image. */}}
{{- define "edge-operator.image" -}}
{{- include "edge-operator.imageRef" (list .Values.image .Chart.AppVersion) }}
{{- end }}

{{/* The agent image the operator puts into every agent DaemonSet. */}}
{{- define "edge-operator.agentImage" -}}
{{- include "edge-operator.imageRef" (list .Values.agent.image .Chart.AppVersion) }}
{{- end }}

{{/* Whether the operator runs with leader election (more than one replica). */}}
{{- define "edge-operator.leaderElect" -}}
{{- if gt (int .Values.replicaCount) 1 }}true{{ end }}
{{- end }}
