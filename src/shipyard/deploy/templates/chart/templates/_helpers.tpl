{{/* Labels every object carries; the selector is the part that never changes. */}}
{{- define "shipyard.selector" -}}
app.kubernetes.io/name: shipyard
app.kubernetes.io/instance: {{ .Values.name | quote }}
{{- end -}}

{{- define "shipyard.labels" -}}
{{ include "shipyard.selector" . }}
app.kubernetes.io/component: inference-server
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: shipyard
{{- end -}}

{{- define "shipyard.modelAnnotations" -}}
shipyard.io/models: {{ join " " .Values.models | quote }}
shipyard.io/digests: {{ join " " .Values.digests | quote }}
{{- end -}}
