{{/*
How the services sign in to Kafka (services/common/service_access.py): each as its own SCRAM user,
imx-<service>, whose password is the key named after the service in one Secret, mounted as a file.
*/}}

{{/* "true" when the services' listener needs a sign-in (SASL_PLAINTEXT, SASL_SSL). */}}
{{- define "imx.kafkaSignIn" -}}
{{- if hasPrefix "SASL" (upper .Values.kafka.securityProtocol) }}true{{ end }}
{{- end }}

{{- define "imx.kafkaServicesSecret" -}}
{{- .Values.kafka.serviceCredentials.existingSecret | default (printf "%s-kafka-services" (include "imx.fullname" .)) }}
{{- end }}

{{/* The services this release runs: the set-up Job grants these. */}}
{{- define "imx.enabledServiceNames" -}}
{{- $names := list }}
{{- range $name := splitList " " (include "imx.serviceNames" .) }}
{{- if (index $.Values.services $name).enabled }}{{ $names = append $names $name }}{{ end }}
{{- end }}
{{- join " " $names }}
{{- end }}

{{/* A service container's Kafka sign-in variables. Call with (dict "root" $ "name" "ingest"). */}}
{{- define "imx.kafkaSignInEnv" -}}
- name: IMX_KAFKA_SECURITY_PROTOCOL
  value: {{ .root.Values.kafka.securityProtocol | quote }}
{{- if include "imx.kafkaSignIn" .root }}
- name: IMX_KAFKA_SASL_MECHANISM
  value: {{ .root.Values.kafka.saslMechanism | quote }}
- name: IMX_KAFKA_SASL_USERNAME
  value: {{ printf "imx-%s" .name | quote }}
- name: IMX_KAFKA_SASL_PASSWORD_FILE
  value: /var/run/imx/kafka/password
{{- end }}
{{- include "imx.kafkaCaEnv" .root }}
{{- end }}

{{- define "imx.kafkaSignInMount" -}}
{{- if include "imx.kafkaSignIn" .root }}
- name: kafka-password
  mountPath: /var/run/imx/kafka
  readOnly: true
{{- end }}
{{- include "imx.kafkaCaMount" .root }}
{{- end }}

{{/* The CA that signs the brokers' certificates (kafka.tls.caSecret), for SSL and SASL_SSL: kafka-python
trusts only the system's CAs otherwise, and a cluster with its own CA (Strimzi's by default) is refused.
Call with the root context. */}}
{{- define "imx.kafkaCa" -}}
{{- if and .Values.kafka.tls.caSecret (hasSuffix "SSL" (upper .Values.kafka.securityProtocol)) }}true{{ end }}
{{- end }}

{{- define "imx.kafkaCaEnv" -}}
{{- if include "imx.kafkaCa" . }}
- name: IMX_KAFKA_SSL_CAFILE
  value: /var/run/imx/kafka-ca/ca.crt
{{- end }}
{{- end }}

{{- define "imx.kafkaCaMount" -}}
{{- if include "imx.kafkaCa" . }}
- name: kafka-ca
  mountPath: /var/run/imx/kafka-ca
  readOnly: true
{{- end }}
{{- end }}

{{- define "imx.kafkaCaVolume" -}}
{{- if include "imx.kafkaCa" . }}
- name: kafka-ca
  secret:
    secretName: {{ .Values.kafka.tls.caSecret }}
    defaultMode: 0444
    items:
      - key: {{ .Values.kafka.tls.caKey }}
        path: ca.crt
{{- end }}
{{- end }}

{{/* Only the service's own key is projected into its pod. */}}
{{- define "imx.kafkaSignInVolume" -}}
{{- if include "imx.kafkaSignIn" .root }}
- name: kafka-password
  secret:
    secretName: {{ include "imx.kafkaServicesSecret" .root }}
    defaultMode: 0400
    items:
      - key: {{ .name }}
        path: password
{{- end }}
{{- include "imx.kafkaCaVolume" .root }}
{{- end }}
