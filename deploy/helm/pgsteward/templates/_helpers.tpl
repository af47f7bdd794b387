{{/*
Labels: the Kustomize manifests' own (app.kubernetes.io/name, component,
part-of) plus Helm's release labels on metadata. Selectors use only the
Kustomize labels, so a Deployment applied with `kubectl apply -k` can be
taken over by the chart (selectors are immutable).
*/}}
{{- define "pgsteward.labels" -}}
app.kubernetes.io/name: pgsteward
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
app.kubernetes.io/part-of: pgsteward
{{- if .release }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end }}
{{- end }}

{{/* Metadata labels of an object: (dict "root" $ "component" "service"). */}}
{{- define "pgsteward.metaLabels" -}}
{{ include "pgsteward.labels" (dict "root" .root "component" .component "release" true) }}
{{- end }}

{{/* Pod template labels: the Kustomize ones only (selectors match them). */}}
{{- define "pgsteward.podLabels" -}}
{{ include "pgsteward.labels" (dict "root" .root "component" .component "release" false) }}
{{- end }}

{{- define "pgsteward.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "pgsteward.config" -}}
{{- if .Values.config }}{{ .Values.config }}{{ else }}{{ .Files.Get "files/pgsteward.toml" }}{{ end }}
{{- end }}

{{/* Rolls the pods when the configuration changes (Kustomize: the ConfigMap's hash suffix). */}}
{{- define "pgsteward.configChecksum" -}}
checksum/config: {{ include "pgsteward.config" . | sha256sum }}
{{- end }}

{{- define "pgsteward.podSecurityContext" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: 65532
  runAsGroup: 65532
  fsGroup: 65532
  seccompProfile:
    type: RuntimeDefault
{{- end }}

{{- define "pgsteward.containerSecurityContext" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  runAsNonRoot: true
  capabilities:
    drop: ["ALL"]
{{- end }}

{{- define "pgsteward.envFrom" -}}
envFrom:
  - secretRef:
      name: {{ .Values.databaseSecret }}
{{- end }}

{{/* The mounts every pod has: configuration, RDS CA, /tmp. */}}
{{- define "pgsteward.baseMounts" -}}
- name: config
  mountPath: /etc/pgsteward
  readOnly: true
- name: rds-ca
  mountPath: /etc/rds-ca
  readOnly: true
{{- end }}

{{- define "pgsteward.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end }}

{{- define "pgsteward.baseVolumes" -}}
- name: config
  configMap:
    name: pgsteward-config
- name: rds-ca
  configMap:
    name: {{ .Values.rdsCaBundle }}
    optional: true
{{- end }}

{{- define "pgsteward.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 16Mi
{{- end }}
