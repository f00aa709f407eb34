{{/*
Helm's standard labels, added to every templated object on top of the base's own (app.kubernetes.io/part-of,
name, component). Selectors and pod templates keep the base's labels only: they must not change on upgrade.
*/}}
{{- define "finetune.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{/*
An image reference from {repository, tag}: repository:tag, or the repository alone when tag is empty (say a digest
in the repository, repo@sha256:...).
*/}}
{{- define "finetune.image" -}}
{{- if .tag }}{{ .repository }}:{{ .tag }}{{ else }}{{ .repository }}{{ end }}
{{- end }}
