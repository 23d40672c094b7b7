{{/* Chart name, cut to 63 characters (a DNS label). */}}
{{- define "gitlab-sts.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Prefix of every object name, cut to 63 characters. */}}
{{- define "gitlab-sts.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
A name with a suffix: the prefix is cut first so that the suffix always survives and the whole
stays within 63 characters. Call with (list $ "suffix").
*/}}
{{- define "gitlab-sts.suffixed" -}}
{{- $root := index . 0 -}}
{{- $suffix := index . 1 -}}
{{- $base := include "gitlab-sts.fullname" $root | trunc (int (sub 62 (len $suffix))) | trimSuffix "-" -}}
{{- printf "%s-%s" $base $suffix -}}
{{- end -}}

{{- define "gitlab-sts.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object (Kubernetes recommended labels). */}}
{{- define "gitlab-sts.labels" -}}
helm.sh/chart: {{ include "gitlab-sts.chart" . }}
app.kubernetes.io/name: {{ include "gitlab-sts.name" . }}
app.kubernetes.io/instance: {{ .Release.Name | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: gitlab-sts
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component; selectors are immutable, so they hold only stable labels. */}}
{{- define "gitlab-sts.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "gitlab-sts.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* All labels of one component: (list $ "component"). */}}
{{- define "gitlab-sts.componentLabels" -}}
{{ include "gitlab-sts.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "gitlab-sts.exchangeName" -}}
{{- include "gitlab-sts.fullname" . -}}
{{- end -}}

{{- define "gitlab-sts.operatorName" -}}
{{- include "gitlab-sts.suffixed" (list . "operator") -}}
{{- end -}}

{{- define "gitlab-sts.settingsConfigMap" -}}
{{- include "gitlab-sts.suffixed" (list . "settings") -}}
{{- end -}}

{{- define "gitlab-sts.bindingsConfigMap" -}}
{{- .Values.names.bindingsConfigMap | default (include "gitlab-sts.suffixed" (list . "bindings")) -}}
{{- end -}}

{{- define "gitlab-sts.keysSecret" -}}
{{- .Values.names.keysSecret | default (include "gitlab-sts.suffixed" (list . "keys")) -}}
{{- end -}}

{{- define "gitlab-sts.statusConfigMap" -}}
{{- .Values.names.statusConfigMap | default (include "gitlab-sts.suffixed" (list . "status")) -}}
{{- end -}}

{{- define "gitlab-sts.pinnedJwksConfigMap" -}}
{{- .Values.names.pinnedJwksConfigMap | default (include "gitlab-sts.suffixed" (list . "pinned-jwks")) -}}
{{- end -}}

{{- define "gitlab-sts.tlsSecret" -}}
{{- .Values.tls.secretName | default (include "gitlab-sts.suffixed" (list . "tls")) -}}
{{- end -}}

{{- define "gitlab-sts.exchangeServiceAccount" -}}
{{- .Values.exchange.serviceAccount.name | default (include "gitlab-sts.exchangeName" .) -}}
{{- end -}}

{{- define "gitlab-sts.operatorServiceAccount" -}}
{{- .Values.operator.serviceAccount.name | default (include "gitlab-sts.operatorName" .) -}}
{{- end -}}

{{/* image reference: repository, then @digest or :tag (default appVersion). */}}
{{- define "gitlab-sts.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/* The rendered settings.yaml (both the ConfigMap and the checksum annotation use this). */}}
{{- define "gitlab-sts.settingsYaml" -}}
{{- toYaml .Values.settings -}}
{{- end -}}

{{/* Pod annotation that rolls the pods whenever settings.yaml changes. */}}
{{- define "gitlab-sts.settingsChecksum" -}}
checksum/settings: {{ include "gitlab-sts.settingsYaml" . | sha256sum }}
{{- end -}}

{{/* The in-cluster DNS names of the exchange Service. */}}
{{- define "gitlab-sts.serviceDnsNames" -}}
{{- $svc := include "gitlab-sts.exchangeName" . -}}
{{- $ns := .Release.Namespace -}}
{{- $names := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.%s" $svc $ns .Values.clusterDomain) -}}
{{- toYaml (concat $names .Values.tls.certManager.extraDnsNames) -}}
{{- end -}}

{{/* The URL jobs use inside the cluster. */}}
{{- define "gitlab-sts.inClusterUrl" -}}
{{- printf "%s://%s.%s.svc:%v" (ternary "https" "http" .Values.tls.enabled) (include "gitlab-sts.exchangeName" .) .Release.Namespace .Values.service.port -}}
{{- end -}}

{{/* Host of settings.issuer ("" when it does not parse). */}}
{{- define "gitlab-sts.issuerHost" -}}
{{- (urlParse (.Values.settings.issuer | default "")).host -}}
{{- end -}}

{{/*
Contradictory or missing values: every problem is collected, then one `fail` names them all.
The schema catches wrong types; these are the rules a schema cannot say clearly.
*/}}
{{- define "gitlab-sts.validate" -}}
{{- $errors := list -}}
{{- $s := .Values.settings -}}
{{- if not $s.issuer -}}
{{- $errors = append $errors "settings.issuer is required: the public https:// URL of this service (the AWS IAM OIDC provider URL), e.g. --set settings.issuer=https://sts.example.com" -}}
{{- else -}}
{{- $u := urlParse $s.issuer -}}
{{- if ne $u.scheme "https" -}}
{{- $errors = append $errors (printf "settings.issuer must be an https:// URL (AWS only trusts https OIDC providers), got %q" $s.issuer) -}}
{{- else if not $u.host -}}
{{- $errors = append $errors (printf "settings.issuer has no host: %q" $s.issuer) -}}
{{- end -}}
{{- if hasSuffix "/" $s.issuer -}}
{{- $errors = append $errors (printf "settings.issuer must not end with '/': %q" $s.issuer) -}}
{{- end -}}
{{- if or $u.query $u.fragment -}}
{{- $errors = append $errors (printf "settings.issuer must not have a query or fragment: %q" $s.issuer) -}}
{{- end -}}
{{- if contains ":" ($u.host | default "") -}}
{{- $errors = append $errors (printf "settings.issuer must not carry a port (AWS IAM OIDC providers reject one): %q" $s.issuer) -}}
{{- end -}}
{{- end -}}
{{- $rs := ($s.tokens | default dict).replayStore -}}
{{- if and $rs (not .Values.replayStore.secretName) -}}
{{- $errors = append $errors "settings.tokens.replayStore needs replayStore.secretName: the store's URL (it may hold a password) comes from a Secret, mounted at /etc/gitlab-sts/replay-store" -}}
{{- end -}}
{{- if and .Values.replayStore.secretName (not $rs) -}}
{{- $errors = append $errors (printf "replayStore.secretName is set but settings.tokens.replayStore is not: set settings.tokens.replayProtection=true and settings.tokens.replayStore.urlFile=/etc/gitlab-sts/replay-store/%s" .Values.replayStore.secretKey) -}}
{{- end -}}
{{- if not $s.gitlab -}}
{{- $errors = append $errors "settings.gitlab needs at least one trusted GitLab instance, e.g. --set settings.gitlab[0].issuer=https://gitlab.example.com --set settings.gitlab[0].audiences[0]=https://sts.example.com" -}}
{{- end -}}
{{- range $i, $g := ($s.gitlab | default list) -}}
{{- if not $g.issuer -}}
{{- $errors = append $errors (printf "settings.gitlab[%d].issuer is required (the iss claim of the instance's ID tokens)" $i) -}}
{{- else if and (not (hasPrefix "https://" $g.issuer)) (not $g.allowInsecureHttp) -}}
{{- $errors = append $errors (printf "settings.gitlab[%d].issuer must be an https:// URL, got %q" $i $g.issuer) -}}
{{- end -}}
{{- if not $g.audiences -}}
{{- $errors = append $errors (printf "settings.gitlab[%d].audiences needs at least one value (the aud of the jobs' id_tokens, usually settings.issuer)" $i) -}}
{{- end -}}
{{- end -}}
{{- if .Values.tls.enabled -}}
{{- if and .Values.tls.certManager.enabled (not .Values.tls.certManager.issuerRef.name) -}}
{{- $errors = append $errors "tls.certManager.enabled needs tls.certManager.issuerRef.name (a cert-manager Issuer or ClusterIssuer)" -}}
{{- end -}}
{{- if and (not .Values.tls.certManager.enabled) (not .Values.tls.secretName) -}}
{{- $errors = append $errors "tls.enabled needs a certificate: set tls.secretName to an existing kubernetes.io/tls Secret, or tls.certManager.enabled=true with tls.certManager.issuerRef.name (or tls.enabled=false for plain HTTP inside an encrypting mesh)" -}}
{{- end -}}
{{- else if .Values.tls.certManager.enabled -}}
{{- $errors = append $errors "tls.certManager.enabled=true contradicts tls.enabled=false" -}}
{{- end -}}
{{- if .Values.ingress.enabled -}}
{{- if not .Values.ingress.host -}}
{{- $errors = append $errors "ingress.enabled needs ingress.host: the host of settings.issuer, where AWS fetches the discovery document and JWKS" -}}
{{- else if and $s.issuer (ne .Values.ingress.host (include "gitlab-sts.issuerHost" .)) -}}
{{- $errors = append $errors (printf "ingress.host %q differs from the host of settings.issuer %q: AWS would fetch the keys from a host the Ingress does not serve" .Values.ingress.host $s.issuer) -}}
{{- end -}}
{{- if and $s.issuer (ne ((urlParse $s.issuer).path | default "") "") -}}
{{- $errors = append $errors (printf "ingress.enabled needs settings.issuer without a path (the service serves /.well-known/ at the root), got %q" $s.issuer) -}}
{{- end -}}
{{- if and .Values.ingress.tls.clusterIssuer .Values.ingress.tls.issuer -}}
{{- $errors = append $errors "ingress.tls.clusterIssuer and ingress.tls.issuer are exclusive: name one cert-manager issuer for the public certificate" -}}
{{- end -}}
{{- end -}}
{{- if .Values.networkPolicy.enabled -}}
{{- if not .Values.networkPolicy.runnerNamespaceSelector -}}
{{- $errors = append $errors "networkPolicy.enabled needs networkPolicy.runnerNamespaceSelector (an empty selector would let every namespace in), e.g. {matchLabels: {kubernetes.io/metadata.name: gitlab-runner}}" -}}
{{- end -}}
{{- if and .Values.ingress.enabled (not .Values.networkPolicy.ingressControllerNamespaceSelector) -}}
{{- $errors = append $errors "networkPolicy.enabled with ingress.enabled needs networkPolicy.ingressControllerNamespaceSelector (else AWS cannot reach the keys)" -}}
{{- end -}}
{{- if and .Values.serviceMonitor.enabled (not .Values.networkPolicy.prometheusNamespaceSelector) -}}
{{- $errors = append $errors "networkPolicy.enabled with serviceMonitor.enabled needs networkPolicy.prometheusNamespaceSelector (else Prometheus cannot scrape)" -}}
{{- end -}}
{{- end -}}
{{- if .Values.exchange.autoscaling.enabled -}}
{{- if gt (int .Values.exchange.autoscaling.minReplicas) (int .Values.exchange.autoscaling.maxReplicas) -}}
{{- $errors = append $errors (printf "exchange.autoscaling.minReplicas (%v) exceeds maxReplicas (%v)" .Values.exchange.autoscaling.minReplicas .Values.exchange.autoscaling.maxReplicas) -}}
{{- end -}}
{{- end -}}
{{- if eq (int .Values.operator.livenessPort) (int .Values.operator.metricsPort) -}}
{{- $errors = append $errors "operator.livenessPort and operator.metricsPort must differ" -}}
{{- end -}}
{{- if $errors -}}
{{- fail (printf "\n\ngitlab-sts: invalid values:\n  - %s\n" (join "\n  - " $errors)) -}}
{{- end -}}
{{- end -}}
