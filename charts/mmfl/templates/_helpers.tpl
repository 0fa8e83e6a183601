{{/* Common names and labels. */}}
{{- define "mmfl.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mmfl.pipelineNamespace" -}}
{{- default .Release.Namespace .Values.pipelineNamespace -}}
{{- end -}}

{{- define "mmfl.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "mmfl.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "mmfl.minio.host" -}}
{{- printf "%s-minio.%s.svc.cluster.local" (include "mmfl.fullname" .) .Release.Namespace -}}
{{- end -}}

{{- define "mmfl.mlflow.host" -}}
{{- printf "%s-mlflow.%s.svc.cluster.local" (include "mmfl.fullname" .) .Release.Namespace -}}
{{- end -}}

{{/*
The MinIO root Secret in the release namespace that every MinIO client reads: the installer's
minio.existingSecret (keys accesskey, secretkey), else the chart's own <fullname>-minio.
*/}}
{{- define "mmfl.minio.secretName" -}}
{{- default (printf "%s-minio" (include "mmfl.fullname" .)) .Values.minio.existingSecret -}}
{{- end -}}

{{/* The PostgreSQL Secret (keys user, password): postgres.existingSecret, else <fullname>-postgres. */}}
{{- define "mmfl.postgres.secretName" -}}
{{- default (printf "%s-postgres" (include "mmfl.fullname" .)) .Values.postgres.existingSecret -}}
{{- end -}}

{{- define "mmfl.minio.password" -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (printf "%s-minio" (include "mmfl.fullname" .)) -}}
{{- if .Values.minio.rootPassword -}}{{ .Values.minio.rootPassword | b64enc }}
{{- else if $existing -}}{{ index $existing.data "secretkey" }}
{{- else -}}{{ randAlphaNum 32 | b64enc }}
{{- end -}}
{{- end -}}

{{- define "mmfl.postgres.password" -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (printf "%s-postgres" (include "mmfl.fullname" .)) -}}
{{- if .Values.postgres.password -}}{{ .Values.postgres.password | b64enc }}
{{- else if $existing -}}{{ index $existing.data "password" }}
{{- else -}}{{ randAlphaNum 32 | b64enc }}
{{- end -}}
{{- end -}}
