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

{{/* Labels of one component's pods: call with (dict "root" $ "component" "minio"). */}}
{{- define "mmfl.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "mmfl.external" -}}
{{- if eq .Values.objectStore.mode "external" }}true{{ else if eq .Values.objectStore.mode "minio" }}{{ else -}}
{{- fail (printf "objectStore.mode: %q is not one of minio, external" .Values.objectStore.mode) -}}
{{- end -}}
{{- end -}}

{{- define "mmfl.minio.host" -}}
{{- printf "%s-minio.%s.svc.cluster.local" (include "mmfl.fullname" .) .Release.Namespace -}}
{{- end -}}

{{- define "mmfl.mlflow.host" -}}
{{- printf "%s-mlflow.%s.svc.cluster.local" (include "mmfl.fullname" .) .Release.Namespace -}}
{{- end -}}

{{/* host:port of the S3 API the tasks, MLflow and the setup Jobs use. */}}
{{- define "mmfl.s3.endpoint" -}}
{{- if include "mmfl.external" . -}}
{{- required "objectStore.external.endpoint (host:port of the S3 API) is required when objectStore.mode is external" .Values.objectStore.external.endpoint -}}
{{- else -}}
{{- printf "%s:9000" (include "mmfl.minio.host" .) -}}
{{- end -}}
{{- end -}}

{{- define "mmfl.s3.secure" -}}
{{- if and (include "mmfl.external" .) .Values.objectStore.external.secure }}true{{ else }}false{{ end -}}
{{- end -}}

{{/* Secrets (names only; the chart never renders a password). See values.yaml "secrets". */}}
{{- define "mmfl.secret.minioRoot" -}}
{{- default (printf "%s-minio" (include "mmfl.fullname" .)) .Values.minio.existingSecret -}}
{{- end -}}

{{/* S3 credentials of the pipeline tasks in the release namespace (the source of names.minioSecret). */}}
{{- define "mmfl.secret.pipelineS3" -}}
{{- if include "mmfl.external" . -}}
{{- required "objectStore.external.existingSecret (a Secret with keys accesskey, secretkey) is required when objectStore.mode is external" .Values.objectStore.external.existingSecret -}}
{{- else -}}
{{- printf "%s-pipeline-s3" (include "mmfl.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* S3 credentials of the MLflow server (artifact proxy) and the retention Job. */}}
{{- define "mmfl.secret.serverS3" -}}
{{- if include "mmfl.external" . }}{{ include "mmfl.secret.pipelineS3" . }}{{ else }}{{ include "mmfl.secret.minioRoot" . }}{{ end -}}
{{- end -}}

{{- define "mmfl.secret.postgres" -}}
{{- default (printf "%s-postgres" (include "mmfl.fullname" .)) .Values.postgres.existingSecret -}}
{{- end -}}

{{- define "mmfl.secret.mlflowAuth" -}}
{{- default (printf "%s-mlflow-auth" (include "mmfl.fullname" .)) .Values.mlflow.auth.existingSecret -}}
{{- end -}}

{{- define "mmfl.secret.mlflowPipeline" -}}
{{- printf "%s-mlflow-pipeline" (include "mmfl.fullname" .) -}}
{{- end -}}

{{/* Image of the hook/setup Jobs that run Python. */}}
{{- define "mmfl.jobImage" -}}
{{- default .Values.mlflow.image .Values.secrets.image -}}
{{- end -}}

{{/* Pod Security Standard "restricted": pod level. Call with (dict "uid" 10001). */}}
{{- define "mmfl.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .uid }}
fsGroup: {{ .uid }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Pod Security Standard "restricted": container level, with a read-only root filesystem. */}}
{{- define "mmfl.containerSecurityContext" -}}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* NetworkPolicy peer: the pipeline task pods. */}}
{{- define "mmfl.pipelinePeer" -}}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ include "mmfl.pipelineNamespace" . }}
  {{- with .Values.networkPolicy.pipelinePodLabels }}
  podSelector:
    matchLabels:
      {{- range $key, $value := . }}
      {{ $key }}: {{ $value | toString | quote }}
      {{- end }}
  {{- end }}
{{- end -}}

{{/* NetworkPolicy peer: pods of one component of this release, (dict "root" $ "component" "mlflow"). */}}
{{- define "mmfl.componentPeer" -}}
- podSelector:
    matchLabels:
      {{- include "mmfl.selector" . | nindent 6 }}
{{- end -}}
