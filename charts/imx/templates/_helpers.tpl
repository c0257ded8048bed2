{{/*
The five services, in pipeline order. The chart renders these and only these, so a typo under
.Values.services cannot create a stray Deployment.
*/}}
{{- define "imx.serviceNames" -}}
ingest routing deid delivery audit
{{- end }}

{{/* Services that read or write DICOM bytes, and so mount the shared blob volume. */}}
{{- define "imx.blobServices" -}}
ingest deid delivery
{{- end }}

{{- define "imx.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's base name; a service's objects are named "<fullname>-<service>". */}}
{{- define "imx.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "imx.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "imx.selectorLabels" -}}
app.kubernetes.io/name: {{ include "imx.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "imx.labels" -}}
helm.sh/chart: {{ include "imx.chart" . }}
{{ include "imx.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: imx
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels of one service's objects. Call with (dict "root" $ "name" "ingest"). */}}
{{- define "imx.componentSelectorLabels" -}}
{{ include "imx.selectorLabels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{- define "imx.componentLabels" -}}
{{ include "imx.labels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{- define "imx.componentName" -}}
{{- printf "%s-%s" (include "imx.fullname" .root) .name }}
{{- end }}

{{- /* The Service of a component's control port when its own Service is exposed: within a Service name's
63 characters (a 50-character fullname made "<fullname>-delivery-control" 67, which Kubernetes refuses). */ -}}
{{- define "imx.controlServiceName" -}}
{{- printf "%s-control" (include "imx.componentName" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{- define "imx.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "imx.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "imx.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "imx.blobClaimName" -}}
{{- default (printf "%s-blobs" (include "imx.fullname" .)) .Values.blobStore.persistence.existingClaim }}
{{- end }}

{{/* The pipeline topics, as services/common/topics.py names them (Topics.pipeline: lanes included). */}}
{{- define "imx.pipelineTopics" -}}
{{- $prefix := .Values.kafka.topicPrefix }}
{{- range $topic := list "ingested" "routed.urgent" "routed" "routed.bulk" "prepared.urgent" "prepared" "prepared.bulk" "outcomes" "quarantine" "deadletter" "access" "alerts" }}
{{ printf "%simx.%s.v1" $prefix $topic }}
{{- end }}
{{- end }}

{{/*
Environment every service reads (services/common/settings.py). The MongoDB URI comes from a Secret
reference only: the chart never renders a connection string.
*/}}
{{- define "imx.commonEnv" -}}
- name: IMX_KAFKA_BOOTSTRAP
  value: {{ required "kafka.bootstrap is required" .Values.kafka.bootstrap | quote }}
- name: IMX_TOPIC_PREFIX
  value: {{ .Values.kafka.topicPrefix | quote }}
- name: IMX_TOPIC_PARTITIONS
  value: {{ .Values.kafka.topicPartitions | quote }}
- name: IMX_TOPIC_REPLICATION_FACTOR
  value: {{ .Values.kafka.topicReplicationFactor | quote }}
- name: IMX_DEAD_LETTER_RETENTION_DAYS
  value: {{ .Values.kafka.deadLetterRetentionDays | quote }}
- name: IMX_MONGO_URI
  valueFrom:
    secretKeyRef:
      name: {{ required "mongo.existingSecret is required: the name of a Secret holding the MongoDB URI" .Values.mongo.existingSecret }}
      key: {{ required "mongo.uriKey is required" .Values.mongo.uriKey }}
- name: IMX_MONGO_DB
  value: {{ .Values.mongo.database | quote }}
- name: IMX_BLOB_DIR
  value: {{ .Values.blobStore.mountPath | quote }}
- name: IMX_GRPC_HOST
  value: {{ .Values.bindAddress | quote }}
- name: IMX_OTLP_ENDPOINT
  value: {{ .Values.otlp.endpoint | quote }}
- name: IMX_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: IMX_INSTANCE_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end }}

{{- define "imx.controlTokenSecret" -}}
{{- .Values.controlPlane.bootstrapToken.existingSecret | default (printf "%s-control-token" (include "imx.fullname" .)) }}
{{- end }}

{{- /* The key of the control-token Secret the services are given: the chart's own Secret's digest, or the
given Secret's `key` (which may hold the token or its digest). */ -}}
{{- define "imx.controlTokenMountedKey" -}}
{{- if .Values.controlPlane.bootstrapToken.existingSecret }}{{ .Values.controlPlane.bootstrapToken.key }}{{ else }}digest{{ end }}
{{- end }}

{{- define "imx.auditSigningKeySecret" -}}
{{- .Values.services.audit.signingKey.existingSecret | default (printf "%s-audit-signing-key" (include "imx.fullname" .)) }}
{{- end }}

{{- /* Every variable the chart sets in a service's container (tests/integration/test_helm_chart.py checks
the list against the rendered manifests), and those that carry secrets: `services.<name>.env` may set
none of them. Given there, one rendered twice and the last won (ingest listening on a port its Service
and NetworkPolicy do not name), and a password sat in the Deployment in plain text. */ -}}
{{- define "imx.reservedEnvNames" -}}
IMX_AE_TITLE IMX_AUDIT_SIGNING_KEY_FILE IMX_BLOB_DIR IMX_CONTROL_BOOTSTRAP_TOKEN_FILE IMX_DEAD_LETTER_RETENTION_DAYS IMX_DELIVERY_PUBLIC_URL
IMX_DICOM_HOST IMX_DICOM_PORT IMX_GRPC_HOST IMX_GRPC_PORT IMX_HTTP_HOST IMX_HTTP_PORT IMX_HTTP_TLS_CERT_FILE
IMX_HTTP_TLS_KEY_FILE IMX_INSTANCE_ID IMX_KAFKA_BOOTSTRAP IMX_KAFKA_PARTNER_BOOTSTRAP
IMX_KAFKA_PARTNER_SECURITY_PROTOCOL IMX_KAFKA_SASL_MECHANISM IMX_KAFKA_SASL_PASSWORD IMX_KAFKA_SASL_PASSWORD_FILE
IMX_KAFKA_SASL_USERNAME IMX_KAFKA_SECURITY_PROTOCOL IMX_KAFKA_SSL_CAFILE IMX_LOG_LEVEL IMX_MONGO_DB IMX_MONGO_URI
IMX_OTLP_ENDPOINT IMX_PARTNER_TOPIC_PARTITIONS IMX_SHUTDOWN_GRACE_S IMX_TOPIC_PARTITIONS IMX_TOPIC_PREFIX
IMX_TOPIC_REPLICATION_FACTOR
{{- end }}
