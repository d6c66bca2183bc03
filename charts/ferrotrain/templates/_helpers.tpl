{{- define "ferrotrain.name" -}}ferrotrain{{- end -}}

{{- define "ferrotrain.fullname" -}}
{{- if contains "ferrotrain" .Release.Name -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}{{- else -}}{{ printf "%s-ferrotrain" .Release.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "ferrotrain.labels" -}}
app.kubernetes.io/name: ferrotrain
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "ferrotrain.selectorLabels" -}}
app.kubernetes.io/name: ferrotrain
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ferrotrain.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}{{ default (include "ferrotrain.fullname" .) .Values.serviceAccount.name }}{{- else -}}{{ default "default" .Values.serviceAccount.name }}{{- end -}}
{{- end -}}

{{- define "ferrotrain.restrictedContainer" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}
