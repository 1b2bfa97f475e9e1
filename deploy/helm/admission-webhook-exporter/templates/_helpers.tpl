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

{{/*
The canary's settings, checked (a dict: enabled, namespace, interval, resources). `| default dict`: a release
installed before the canary existed has no `canary` values, and `helm upgrade --reuse-values` keeps it so.
*/}}
{{- define "awe.canary" -}}
{{- $c := .Values.canary | default dict }}
{{- $resources := $c.resources | default (list "configmaps" "pods") }}
{{- if $c.enabled }}
{{- if not $c.namespace }}
{{- fail "canary.namespace: the canary dry-runs its objects in one existing namespace; name it (canary.enabled is true)" }}
{{- end }}
{{- if not $resources }}
{{- fail "canary.resources: at least one of configmaps, pods" }}
{{- end }}
{{- range $resources }}
{{- if not (has . (list "configmaps" "pods")) }}
{{- fail (printf "canary.resources: %q; the canary may create (dry run) configmaps and pods only" .) }}
{{- end }}
{{- end }}
{{- end }}
{{- toJson (dict "enabled" (default false $c.enabled) "namespace" (default "" $c.namespace) "interval" (default 60 $c.interval) "resources" $resources) }}
{{- end }}

{{/*
--web.config.file (docs/securing-metrics.md): "true" when any of TLS, basic auth or a bearer token is asked for.
*/}}
{{- define "awe.webConfig.enabled" -}}
{{- $w := .Values.webConfig }}
{{- if or $w.tls.enabled $w.basicAuthUsers $w.bearerToken.secretName -}}
true
{{- end -}}
{{- end }}

{{/* Where the Secrets are mounted; the web configuration names these paths. */}}
{{- define "awe.webConfig.dir" -}}/etc/admission-webhook-exporter{{- end }}

{{/* client_auth_type: the value, or RequireAndVerifyClientCert when a client CA is given, else NoClientCert. */}}
{{- define "awe.webConfig.clientAuthType" -}}
{{- $t := .Values.webConfig.tls }}
{{- $t.clientAuthType | default (ternary "RequireAndVerifyClientCert" "NoClientCert" (not (empty $t.clientCASecretName))) }}
{{- end }}

{{/*
The web configuration file (exporter-toolkit's format plus bearer_token_files), from webConfig. Refuses here what
the exporter would refuse at start-up, so a mistake fails the install instead of crash-looping the pod.
*/}}
{{- define "awe.webConfig" -}}
{{- $w := .Values.webConfig }}
{{- $t := $w.tls }}
{{- $dir := include "awe.webConfig.dir" . }}
{{- $auth := include "awe.webConfig.clientAuthType" . }}
{{- $config := dict }}
{{- if $t.enabled }}
{{- if not $t.secretName }}
{{- fail "webConfig.tls.secretName is required with webConfig.tls.enabled: a kubernetes.io/tls Secret (tls.crt, tls.key)" }}
{{- end }}
{{- if has $auth (list "RequireAnyClientCert" "RequireClientCert") }}
{{- fail (printf "webConfig.tls.clientAuthType %s accepts any client certificate unverified, which the exporter cannot do: use RequireAndVerifyClientCert with webConfig.tls.clientCASecretName" $auth) }}
{{- end }}
{{- if not (has $auth (list "NoClientCert" "RequestClientCert" "VerifyClientCertIfGiven" "RequireAndVerifyClientCert")) }}
{{- fail (printf "webConfig.tls.clientAuthType %q: expected NoClientCert, RequestClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert" $auth) }}
{{- end }}
{{- if and (has $auth (list "VerifyClientCertIfGiven" "RequireAndVerifyClientCert")) (not $t.clientCASecretName) }}
{{- fail (printf "webConfig.tls.clientCASecretName is required with clientAuthType %s: the CA that signs the scrapers' client certificates" $auth) }}
{{- end }}
{{- if and $t.clientCASecretName (eq $auth "NoClientCert") }}
{{- fail "webConfig.tls.clientCASecretName is set but webConfig.tls.clientAuthType is NoClientCert: leave clientAuthType empty (RequireAndVerifyClientCert)" }}
{{- end }}
{{- $tls := dict "cert_file" (printf "%s/tls/tls.crt" $dir) "key_file" (printf "%s/tls/tls.key" $dir) "client_auth_type" $auth "min_version" $t.minVersion "max_version" $t.maxVersion }}
{{- with $t.clientCASecretName }}
{{- $_ := set $tls "client_ca_file" (printf "%s/client-ca/%s" $dir $t.clientCAKey) }}
{{- end }}
{{- with $t.clientAllowedSans }}
{{- $_ := set $tls "client_allowed_sans" . }}
{{- end }}
{{- with $t.cipherSuites }}
{{- $_ := set $tls "cipher_suites" . }}
{{- end }}
{{- with $t.curvePreferences }}
{{- $_ := set $tls "curve_preferences" . }}
{{- end }}
{{- $_ := set $config "tls_server_config" $tls }}
{{- else if or $t.secretName $t.clientCASecretName $t.clientAuthType }}
{{- fail "webConfig.tls.secretName, clientCASecretName and clientAuthType need webConfig.tls.enabled=true" }}
{{- end }}
{{- with $w.basicAuthUsers }}
{{- $_ := set $config "basic_auth_users" . }}
{{- end }}
{{- with $w.bearerToken.secretName }}
{{- $_ := set $config "bearer_token_files" (list (printf "%s/token/%s" $dir $w.bearerToken.key)) }}
{{- end }}
{{- with $w.headers }}
{{- $_ := set $config "http_server_config" (dict "headers" .) }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/* The name a scraper verifies the exporter's certificate for (the ServiceMonitor's, and NOTES.txt's curl). */}}
{{- define "awe.serviceMonitor.serverName" -}}
{{- .Values.serviceMonitor.tlsConfig.serverName | default (printf "%s.%s.svc" (include "awe.fullname" .) .Release.Namespace) }}
{{- end }}

{{/*
The ServiceMonitor endpoint's scheme, tlsConfig and authorization/basicAuth for webConfig (YAML, indented by the
caller). Fails when Prometheus could not pass what the exporter asks for.
*/}}
{{- define "awe.serviceMonitor.security" -}}
{{- $w := .Values.webConfig }}
{{- $m := .Values.serviceMonitor }}
{{- $out := dict }}
{{- if $w.tls.enabled }}
{{- $auth := include "awe.webConfig.clientAuthType" . }}
{{- if and (eq $auth "RequireAndVerifyClientCert") (not $m.tlsConfig.clientCertSecretName) }}
{{- fail "serviceMonitor.tlsConfig.clientCertSecretName is required: the exporter requires a client certificate (webConfig.tls.clientAuthType RequireAndVerifyClientCert), so Prometheus must present one (a kubernetes.io/tls Secret)" }}
{{- end }}
{{- $tlsConfig := dict "serverName" (include "awe.serviceMonitor.serverName" .) }}
{{- if $m.tlsConfig.insecureSkipVerify }}
{{- $_ := set $tlsConfig "insecureSkipVerify" true }}
{{- else }}
{{- $_ := set $tlsConfig "ca" (dict "secret" (dict "name" ($m.tlsConfig.caSecretName | default $w.tls.secretName) "key" $m.tlsConfig.caKey)) }}
{{- end }}
{{- with $m.tlsConfig.clientCertSecretName }}
{{- $_ := set $tlsConfig "cert" (dict "secret" (dict "name" . "key" "tls.crt")) }}
{{- $_ := set $tlsConfig "keySecret" (dict "name" . "key" "tls.key") }}
{{- end }}
{{- $_ := set $out "scheme" "https" }}
{{- $_ := set $out "tlsConfig" $tlsConfig }}
{{- end }}
{{- if and $w.bearerToken.secretName $m.basicAuth.secretName }}
{{- fail "serviceMonitor.basicAuth.secretName and webConfig.bearerToken.secretName: Prometheus sends one of them; choose one" }}
{{- end }}
{{- if $w.bearerToken.secretName }}
{{- $_ := set $out "authorization" (dict "type" "Bearer" "credentials" (dict "name" $w.bearerToken.secretName "key" $w.bearerToken.key)) }}
{{- else if $m.basicAuth.secretName }}
{{- if not $w.basicAuthUsers }}
{{- fail "serviceMonitor.basicAuth.secretName is set but webConfig.basicAuthUsers is empty: the exporter would not ask for it" }}
{{- end }}
{{- $_ := set $out "basicAuth" (dict "username" (dict "name" $m.basicAuth.secretName "key" "username") "password" (dict "name" $m.basicAuth.secretName "key" "password")) }}
{{- else if $w.basicAuthUsers }}
{{- fail "webConfig.basicAuthUsers needs serviceMonitor.basicAuth.secretName (a kubernetes.io/basic-auth Secret with the plain password) or webConfig.bearerToken.secretName, or Prometheus gets 401" }}
{{- end }}
{{- if $out }}
{{- toYaml $out }}
{{- end }}
{{- end }}

{{/* The Secret volumes of webConfig: volume name -> {secret, path}; the web configuration names these paths. */}}
{{- define "awe.webConfig.volumes" -}}
{{- $volumes := dict }}
{{- if include "awe.webConfig.enabled" . }}
{{- $w := .Values.webConfig }}
{{- $dir := include "awe.webConfig.dir" . }}
{{- $_ := set $volumes "web-config" (dict "secret" (printf "%s-web-config" (include "awe.fullname" .)) "path" (printf "%s/web" $dir)) }}
{{- if $w.tls.enabled }}
{{- $_ := set $volumes "web-tls" (dict "secret" $w.tls.secretName "path" (printf "%s/tls" $dir)) }}
{{- with $w.tls.clientCASecretName }}
{{- $_ := set $volumes "web-client-ca" (dict "secret" . "path" (printf "%s/client-ca" $dir)) }}
{{- end }}
{{- end }}
{{- with $w.bearerToken.secretName }}
{{- $_ := set $volumes "web-token" (dict "secret" . "path" (printf "%s/token" $dir)) }}
{{- end }}
{{- end }}
{{- toYaml $volumes }}
{{- end }}
