{{/*
How each stage scales (docs/capacity.md sizes the defaults). ingest reads no topic and scales on CPU
alone; routing, deid and delivery share their input topics' partitions within their consumer group, so
none may run more replicas than those topics have partitions; audit runs one (its tamper-evident log
has a single writer, services/audit/tamper_log.py).
*/}}
{{- define "imx.scaledServices" -}}
ingest routing deid delivery
{{- end }}

{{- define "imx.lagServices" -}}
routing deid delivery
{{- end }}

{{/* "true" when a service's replicas are left to an autoscaler. Call with (dict "root" $ "name" "routing"). */}}
{{- define "imx.autoscaled" -}}
{{- $svc := index .root.Values.services .name }}
{{- if and (has .name (splitList " " (include "imx.scaledServices" .root))) $svc.autoscaling $svc.autoscaling.enabled }}true{{ end }}
{{- end }}

{{/* The topics a consuming stage reads, one per line, as services/common/topics.py names them (every lane). */}}
{{- define "imx.stageInputs" -}}
{{- $prefix := .root.Values.kafka.topicPrefix }}
{{- $bases := dict "routing" (list "ingested") "deid" (list "routed.urgent" "routed" "routed.bulk") "delivery" (list "prepared.urgent" "prepared" "prepared.bulk") }}
{{- range $base := get $bases .name }}
{{ printf "%simx.%s.v1" $prefix $base }}
{{- end }}
{{- end }}

{{/* The stage's consumer group (services/<name>/main.py: "<prefix>imx-<name>"). */}}
{{- define "imx.consumerGroup" -}}
{{- printf "%simx-%s" .root.Values.kafka.topicPrefix .name }}
{{- end }}

{{/* Fails the rendering when a stage could run more replicas than its input topics have partitions. */}}
{{- define "imx.checkScale" -}}
{{- $svc := index .root.Values.services .name }}
{{- $partitions := int .root.Values.kafka.topicPartitions }}
{{- $most := int $svc.replicas }}
{{- if include "imx.autoscaled" . }}
{{- if gt (int $svc.autoscaling.minReplicas) (int $svc.autoscaling.maxReplicas) }}
{{- fail (printf "services.%s.autoscaling.minReplicas (%v) is above its maxReplicas (%v)" .name $svc.autoscaling.minReplicas $svc.autoscaling.maxReplicas) }}
{{- end }}
{{- $most = max $most (int $svc.autoscaling.maxReplicas) | int }}
{{- end }}
{{- if and (eq .name "audit") (gt $most 1) }}
{{- fail "services.audit.replicas must be 1: the audit log has a single writer (services/audit/tamper_log.py)" }}
{{- end }}
{{- if and (ne .name "ingest") (gt $most $partitions) }}
{{- fail (printf "services.%s can run %d replicas but kafka.topicPartitions is %d: a consumer group uses at most one replica per partition (raise kafka.topicPartitions, or lower services.%s.replicas / autoscaling.maxReplicas)" .name $most $partitions .name) }}
{{- end }}
{{- end }}

{{/* KEDA's Kafka scaler's name for the services' SASL mechanism. */}}
{{- define "imx.kedaSasl" -}}
{{- $mechanisms := dict "SCRAM-SHA-512" "scram_sha512" "SCRAM-SHA-256" "scram_sha256" "PLAIN" "plaintext" }}
{{- required (printf "kafka.saslMechanism %s has no KEDA equivalent" .Values.kafka.saslMechanism) (get $mechanisms (upper .Values.kafka.saslMechanism)) }}
{{- end }}

{{/* Scaling down one pod a minute after five quiet minutes: each change of a consuming stage is a
consumer-group rebalance, which pauses the whole group for a moment. */}}
{{- define "imx.scaleBehavior" -}}
behavior:
  scaleDown:
    stabilizationWindowSeconds: 300
    policies:
      - type: Pods
        value: 1
        periodSeconds: 60
{{- end }}

{{- /* kafka.bootstrap as KEDA's operator must see it: it resolves names in its own namespace, so a short
service name (the default, imx-kafka-bootstrap:9092) is qualified with the release's namespace. */ -}}
{{- define "imx.kedaBootstrap" -}}
{{- $hosts := list }}
{{- range $server := splitList "," .Values.kafka.bootstrap }}
{{- $server = trim $server }}
{{- $host := regexReplaceAll ":[0-9]+$" $server "" }}
{{- if or (contains "." $host) (contains ":" $host) (eq $host "localhost") }}
{{- $hosts = append $hosts $server }}
{{- else }}
{{- $hosts = append $hosts (printf "%s.%s.svc%s" $host $.Release.Namespace (trimPrefix $host $server)) }}
{{- end }}
{{- end }}
{{- join "," $hosts }}
{{- end }}
