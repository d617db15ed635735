{{/*
Names, labels and the pieces every template shares. One place for each, so a rename or a
security setting changes everywhere at once.
*/}}

{{/* Chart name, overridable. */}}
{{- define "stepchain.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: the release name, plus the chart name unless the release name already contains it.
Truncated to 57 characters so that "<fullname>-token" and "<fullname>-jaeger" stay DNS-1123
labels (63).
*/}}
{{- define "stepchain.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 57 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 57 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 57 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Chart name and version for the helm.sh/chart label. */}}
{{- define "stepchain.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every resource. */}}
{{- define "stepchain.labels" -}}
helm.sh/chart: {{ include "stepchain.chart" . }}
{{ include "stepchain.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: stepchain
{{- end }}

{{/* Labels a selector may use (never change on upgrade). Add app.kubernetes.io/component. */}}
{{- define "stepchain.selectorLabels" -}}
app.kubernetes.io/name: {{ include "stepchain.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Service account the topology service runs as. */}}
{{- define "stepchain.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "stepchain.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Service account of the step pods the topology service creates. */}}
{{- define "stepchain.stepServiceAccountName" -}}
{{- if .Values.stepServiceAccount.create }}
{{- default (printf "%s-step" (include "stepchain.fullname" .)) .Values.stepServiceAccount.name }}
{{- else }}
{{- default "default" .Values.stepServiceAccount.name }}
{{- end }}
{{- end }}

{{/* Secret and key holding the API bearer token. */}}
{{- define "stepchain.tokenSecretName" -}}
{{- default (printf "%s-token" (include "stepchain.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{- define "stepchain.storeSecretName" -}}
{{- if .Values.store.existingSecret -}}
{{- .Values.store.existingSecret -}}
{{- else if and .Values.store.accessKeyId .Values.store.secretAccessKey -}}
{{- printf "%s-store" (include "stepchain.fullname" .) -}}
{{- end -}}
{{- end }}

{{- define "stepchain.tokenSecretKey" -}}
{{- if .Values.auth.existingSecret }}
{{- .Values.auth.existingSecretKey }}
{{- else -}}
token
{{- end }}
{{- end }}

{{/* Name of the bundled Jaeger's Deployment and Service. */}}
{{- define "stepchain.jaegerName" -}}
{{- printf "%s-jaeger" (include "stepchain.fullname" .) }}
{{- end }}

{{/* Topology service image reference. */}}
{{- define "stepchain.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Default step image reference (STEPCHAIN_STEP_IMAGE). */}}
{{- define "stepchain.stepImage" -}}
{{- printf "%s:%s" .Values.stepImage.repository (default .Chart.AppVersion .Values.stepImage.tag) }}
{{- end }}

{{/* Image allow-list (STEPCHAIN_IMAGE_ALLOWLIST): the configured globs, or the step image's repository. */}}
{{- define "stepchain.imageAllowlist" -}}
{{- if .Values.imageAllowlist }}
{{- join "," .Values.imageAllowlist }}
{{- else }}
{{- printf "%s:*,%s@*" .Values.stepImage.repository .Values.stepImage.repository }}
{{- end }}
{{- end }}

{{/*
OTLP endpoint: the configured one, else the bundled Jaeger (4317 for grpc, 4318 for
http/protobuf), else empty (export off).
*/}}
{{- define "stepchain.otelEndpoint" -}}
{{- if .Values.otel.endpoint }}
{{- .Values.otel.endpoint }}
{{- else if .Values.jaeger.enabled }}
{{- printf "http://%s.%s.svc:%s" (include "stepchain.jaegerName" .) .Release.Namespace (ternary "4317" "4318" (eq .Values.otel.protocol "grpc")) }}
{{- end }}
{{- end }}

{{/* OTEL_RESOURCE_ATTRIBUTES from the otel.resourceAttributes map, sorted by key. */}}
{{- define "stepchain.otelResourceAttributes" -}}
{{- $pairs := list }}
{{- range $key, $value := .Values.otel.resourceAttributes }}
{{- $pairs = append $pairs (printf "%s=%s" $key (toString $value)) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}

{{/*
Pod-level security context: the Kubernetes "restricted" Pod Security Standard, the same one
the topology service gives every step pod. Not configurable on purpose.
*/}}
{{- define "stepchain.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container-level security context (restricted; read-only root, /tmp is an emptyDir). */}}
{{- define "stepchain.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}
