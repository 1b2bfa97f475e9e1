{{/* Chart name, overridable. */}}
{{- define "awe.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified name. A release named like the chart (the documented `helm install admission-webhook-exporter ...`)
gives plain "admission-webhook-exporter": the name the exporter's own dry-run probes announce as their user.
*/}}
{{- define "awe.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "awe.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the exporter's pods: never change them on upgrade (Deployment selectors are immutable). */}}
{{- define "awe.selectorLabels" -}}
app.kubernetes.io/name: {{ include "awe.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "awe.labels" -}}
helm.sh/chart: {{ include "awe.chart" . }}
{{ include "awe.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: admission-webhook-exporter
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "awe.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "awe.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag, or repository@digest when image.digest is set. The tag defaults to the chart's appVersion. */}}
{{- define "awe.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
"true" when the ServiceMonitor / PrometheusRule is rendered: enabled, and the cluster serves the kind (or `force`).
Without the prometheus-operator CRDs a plain install would fail with `no matches for kind`; skipping them keeps the
exporter installable anywhere, and NOTES.txt says what was skipped. `helm template` knows only the API versions
given with --api-versions.
*/}}
{{- define "awe.serviceMonitor.enabled" -}}
{{- if and .Values.serviceMonitor.enabled (or .Values.serviceMonitor.force (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1/ServiceMonitor")) -}}
true
{{- end -}}
{{- end }}

{{- define "awe.prometheusRule.enabled" -}}
{{- if and .Values.prometheusRule.enabled (or .Values.prometheusRule.force (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1/PrometheusRule")) -}}
true
{{- end -}}
{{- end }}

{{/* The labels kube-prometheus-stack selects on: the ServiceMonitor's, and the PrometheusRule's on top of them. */}}
{{- define "awe.prometheusRule.selectedLabels" -}}
{{- toYaml (merge (deepCopy (.Values.prometheusRule.additionalLabels | default dict)) (.Values.serviceMonitor.additionalLabels | default dict)) }}
{{- end }}

{{/*
The rule groups of files/rules/*.yaml (alerts/src, written into the chart by alerts/render.py), with
prometheusRule.config pasted in for their ${name} placeholders: plain text replaced before YAML is parsed, as
alerts/render.py does with alerts/config.yaml, so the default values give exactly alerts/rules/. The files are
read as data, never as templates, so Prometheus' {{ $labels.x }} stays as it is. Returns {"groups": [...]} as YAML.
*/}}
{{- define "awe.prometheusRule.groups" -}}
{{- $files := .Files.Glob "files/rules/*.yaml" }}
{{- if not $files }}
{{- fail "files/rules/ holds no rule file: run alerts/render.py (scripts/generate.sh)" }}
{{- end }}
{{- /* A setting the values lack takes its default from files/rule-defaults.yaml (alerts/render.py writes it):
`helm upgrade --reuse-values` from a chart version without the setting brings no values.yaml default for it. */}}
{{- /* Not sprig's merge: it would also replace a value set to "" or 0, which must be judged as given. */}}
{{- $config := deepCopy (.Files.Get "files/rule-defaults.yaml" | fromYaml) }}
{{- range $key, $value := (.Values.prometheusRule.config | default dict) }}
{{- $_ := set $config $key $value }}
{{- end }}
{{- $known := list }}
{{- range $path, $_ := $files }}
{{- range regexFindAll "\\$\\{[A-Za-z0-9]+\\}" ($.Files.Get $path) -1 }}
{{- $known = append $known (trimSuffix "}" (trimPrefix "${" .)) }}
{{- end }}
{{- end }}
{{- $known = $known | uniq | sortAlpha }}
{{- range $key := $known }}
{{- if not (hasKey $config $key) }}
{{- fail (printf "prometheusRule.config.%s is not set and files/rule-defaults.yaml has no default: run alerts/render.py (scripts/generate.sh)" $key) }}
{{- end }}
{{- end }}
{{- range $key, $value := $config }}
{{- if not (has $key $known) }}
{{- fail (printf "prometheusRule.config.%s: no rule uses such a setting; the settings are %s" $key (join ", " $known)) }}
{{- end }}
{{- if not (or (kindIs "string" $value) (kindIs "float64" $value) (kindIs "int64" $value) (kindIs "int" $value)) }}
{{- fail (printf "prometheusRule.config.%s: expected a string or a number, got %v" $key $value) }}
{{- end }}
{{- $text := toString $value }}
{{- if eq $text "" }}
{{- fail (printf "prometheusRule.config.%s must not be empty" $key) }}
{{- end }}
{{- /* The same rules as alerts/render.py's KINDS. */}}
{{- if and (or (hasSuffix "For" $key) (hasSuffix "Window" $key)) (not (regexMatch "^([0-9]+y)?([0-9]+w)?([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?$" $text)) }}
{{- fail (printf "prometheusRule.config.%s: %q is not a Prometheus duration such as 30s, 2m or 1h30m" $key $text) }}
{{- end }}
{{- if and (or (hasSuffix "Days" $key) (hasSuffix "Ratio" $key)) (not (regexMatch "^[0-9]+(\\.[0-9]+)?$" $text)) }}
{{- fail (printf "prometheusRule.config.%s: %q is not a number" $key $text) }}
{{- end }}
{{- end }}
{{- $groups := list }}
{{- range $path, $_ := $files }}
{{- $text := $.Files.Get $path }}
{{- range $key, $value := $config }}
{{- $text = replace (printf "${%s}" $key) (toString $value) $text }}
{{- end }}
{{- $doc := fromYaml $text }}
{{- if hasKey $doc "Error" }}
{{- fail (printf "%s with the prometheusRule.config values is not YAML: %s" $path $doc.Error) }}
{{- end }}
{{- $groups = concat $groups $doc.groups }}
{{- end }}
{{- toYaml (dict "groups" $groups) }}
{{- end }}

{{/*
NOTES.txt: one line saying whether a Prometheus resource selects our ServiceMonitor or PrometheusRule, from its
selector's matchLabels and its namespace selector (unset: its own namespace only; {}: every namespace), and the
`--set` that fixes a mismatch. Called with a dict: prometheus, kind, selectorField, namespaceSelectorField,
labels (the object's labels), namespace (ours), setPrefix (the value the labels come from).
*/}}
{{- define "awe.notes.selects" -}}
{{- $p := .prometheus }}
{{- $name := printf "%s/%s" $p.metadata.namespace $p.metadata.name }}
{{- $spec := $p.spec | default dict }}
{{- $selector := get $spec .selectorField }}
{{- $fixes := list }}
{{- if not $selector }}
  {{ $name }} selects no {{ .kind }} (its {{ .selectorField }} is not set).
{{- else if $selector.matchExpressions }}
  {{ $name }}: its {{ .selectorField }} has matchExpressions; compare them with the labels above.
{{- else }}
{{- range $k, $v := ($selector.matchLabels | default dict) }}
{{- if ne (toString (get $.labels $k)) (toString $v) }}
{{- $fixes = append $fixes (printf "%s.%s=%s" $.setPrefix (replace "." "\\." $k) (toString $v)) }}
{{- end }}
{{- end }}
{{- if $fixes }}
  MISMATCH: {{ $name }} selects {{ .kind }}s labelled {{ range $k, $v := $selector.matchLabels }}{{ $k }}={{ $v }} {{ end }}and this one is not: add --set {{ join "," $fixes }}
{{- else }}
  {{ $name }} selects this {{ .kind }} by its labels.
{{- end }}
{{- end }}
{{- if and $selector (not (hasKey $spec .namespaceSelectorField)) (ne $p.metadata.namespace .namespace) }}
  MISMATCH: {{ $name }} has no {{ .namespaceSelectorField }}, so it looks in {{ $p.metadata.namespace }} only, and this {{ .kind }} is in {{ .namespace }}.
{{- end }}
{{- end }}
