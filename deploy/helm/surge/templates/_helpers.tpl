{{/*
Names and labels. Selectors use name, instance and component only: version changes with every
release and a Deployment's selector cannot change.
*/}}
{{- define "surge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "surge.fullname" -}}
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

{{/* The name of one component's objects: "<fullname>-<component>". */}}
{{- define "surge.componentName" -}}
{{- printf "%s-%s" (include "surge.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "surge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "surge.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "surge.labels" -}}
{{ include "surge.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: surge
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end }}

{{- define "surge.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "surge.secretName" -}}
{{- default (include "surge.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{/*
The Postgres URL without a password (the password comes from the Secret as PGPASSWORD).
Arguments: root, host.
*/}}
{{- define "surge.databaseUrl" -}}
{{- $db := .root.Values.database -}}
{{- $url := printf "postgres://%s@%s:%v/%s" (urlquery $db.user) .host $db.port $db.name -}}
{{- if $db.params }}{{ $url = printf "%s?%s" $url $db.params }}{{ end -}}
{{- $url -}}
{{- end }}

{{/*
The settings every process shares, as SURGE_* variables: the shared ConfigMap and the
migration Job's environment are both made from this one list.
*/}}
{{- define "surge.commonConfig" -}}
SURGE_LOG_FORMAT: {{ .Values.logFormat | quote }}
SURGE_DATABASE_URL: {{ include "surge.databaseUrl" (dict "root" . "host" .Values.database.host) | quote }}
SURGE_DATABASE_MAX_CONNECTIONS: {{ .Values.database.maxConnections | quote }}
SURGE_KAFKA_BROKERS: {{ .Values.kafka.brokers | quote }}
SURGE_TOPIC_PREFIX: {{ .Values.kafka.topicPrefix | quote }}
SURGE_TOPIC_PARTITIONS: {{ .Values.kafka.partitions | quote }}
SURGE_JWT_ISSUER: {{ .Values.auth.issuer | quote }}
SURGE_JWT_AUDIENCE: {{ .Values.auth.audience | quote }}
{{- end }}

{{/*
Checks of the values that a render must refuse, with a message saying what to change.
*/}}
{{- define "surge.validate" -}}
{{- $partitions := int .Values.kafka.partitions -}}
{{- if lt $partitions 1 }}
{{- fail "kafka.partitions must be at least 1" }}
{{- end }}
{{- if gt (int .Values.projector.replicas) $partitions }}
{{- fail (printf "projector.replicas (%d) is above kafka.partitions (%d): a consumer group gives each partition to one member, so the extra projectors would sit idle (and never report ready); raise kafka.partitions or lower projector.replicas" (int .Values.projector.replicas) $partitions) }}
{{- end }}
{{- if and .Values.projector.keda.enabled (gt (int .Values.projector.keda.maxReplicaCount) $partitions) }}
{{- fail (printf "projector.keda.maxReplicaCount (%d) is above kafka.partitions (%d): the extra projectors would sit idle" (int .Values.projector.keda.maxReplicaCount) $partitions) }}
{{- end }}
{{- if lt (int .Values.relay.replicas) 1 }}
{{- fail "relay.replicas must be at least 1 (2 for a standby that takes over)" }}
{{- end }}
{{- if and (not .Values.secrets.existingSecret) (not .Values.secrets.databasePassword) }}
{{- fail "set secrets.databasePassword, or secrets.existingSecret to a Secret holding it (key secrets.keys.databasePassword)" }}
{{- end }}
{{- range $key := list "commandApi" "queryApi" "relay" "projector" "webhooks" "streamApi" }}
{{- $v := index $.Values $key }}
{{- if and (dig "enabled" true $v) $v.pdb.enabled (hasKey $v.pdb "minAvailable") }}
{{- $fewest := int $v.replicas }}
{{- if dig "autoscaling" "enabled" false $v }}{{ $fewest = int $v.autoscaling.minReplicas }}{{ end }}
{{- if dig "keda" "enabled" false $v }}{{ $fewest = int $v.keda.minReplicaCount }}{{ end }}
{{- if le $fewest (int $v.pdb.minAvailable) }}
{{- fail (printf "%s: pdb.minAvailable (%d) needs more than %d replicas, or no node could ever be drained: raise the replicas or set %s.pdb.enabled=false" $key (int $v.pdb.minAvailable) $fewest $key) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and .Values.streamApi.enabled (not .Values.streamApi.tls.secretName) }}
{{- fail "streamApi.tls.secretName: the stream API serves TLS off loopback (clients send their API key with every call); name a kubernetes.io/tls Secret" }}
{{- end }}
{{- range $k, $v := .Values.database }}
{{- if and (kindIs "string" $v) (contains "@" $v) }}
{{- fail (printf "database.%s contains '@': give the password in secrets.databasePassword (or secrets.existingSecret), never in a URL" $k) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The pod annotations that roll the pods when their configuration or the Secret changes. */}}
{{- define "surge.podAnnotations" -}}
checksum/config: {{ include (print .root.Template.BasePath "/configmap.yaml") .root | sha256sum }}
{{- if not .root.Values.secrets.existingSecret }}
checksum/secret: {{ include (print .root.Template.BasePath "/secret.yaml") .root | sha256sum }}
{{- end }}
{{- end }}

{{/*
The environment taken from the Secret. Arguments: root, auth (whether the process checks
bearer tokens and API keys).
*/}}
{{- define "surge.secretEnv" -}}
{{- $secret := include "surge.secretName" .root -}}
{{- $keys := .root.Values.secrets.keys -}}
- name: PGPASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $keys.databasePassword }}
{{- if .auth }}
- name: SURGE_JWT_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $keys.jwtSecret }}
- name: SURGE_API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $keys.apiKeys }}
      optional: true
{{- end }}
{{- end }}

{{/*
One component's Deployment. Arguments:
  root, component (name), subcommand, values (the component's values), port, portName,
  probe ("http": GET /healthz and /readyz; "tcp": a TCP connect), auth (bool),
  fixedReplicas (false when an autoscaler owns the count).
*/}}
{{- define "surge.deployment" -}}
{{- $root := .root -}}
{{- $v := .values -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "surge.componentName" . }}
  labels:
    {{- include "surge.labels" . | nindent 4 }}
spec:
  {{- if .fixedReplicas }}
  replicas: {{ $v.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "surge.selectorLabels" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "surge.labels" . | nindent 8 }}
      annotations:
        {{- include "surge.podAnnotations" . | nindent 8 }}
    spec:
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      automountServiceAccountToken: false
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      terminationGracePeriodSeconds: 30
      containers:
        - name: {{ .component }}
          image: {{ include "surge.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args: [{{ .subcommand | quote }}]
          ports:
            - name: {{ .portName }}
              containerPort: {{ .port }}
              protocol: TCP
          envFrom:
            - configMapRef:
                name: {{ include "surge.fullname" $root }}
            - configMapRef:
                name: {{ include "surge.componentName" . }}
          env:
            {{- include "surge.secretEnv" (dict "root" $root "auth" .auth) | nindent 12 }}
          {{- if eq .probe "http" }}
          livenessProbe:
            httpGet: { path: /healthz, port: {{ .portName }} }
            {{- toYaml $root.Values.probes.liveness | nindent 12 }}
          readinessProbe:
            httpGet: { path: /readyz, port: {{ .portName }} }
            {{- toYaml $root.Values.probes.readiness | nindent 12 }}
          {{- else }}
          # No HTTP admin port: a TCP connect to the served port.
          livenessProbe:
            tcpSocket: { port: {{ .portName }} }
            {{- toYaml $root.Values.probes.liveness | nindent 12 }}
          readinessProbe:
            tcpSocket: { port: {{ .portName }} }
            {{- toYaml $root.Values.probes.readiness | nindent 12 }}
          {{- end }}
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- if .tlsSecret }}
            - name: tls
              mountPath: {{ include "surge.tlsDir" . }}
              readOnly: true
            {{- end }}
      volumes:
        - name: tmp
          emptyDir: { sizeLimit: 64Mi }
        {{- if .tlsSecret }}
        - name: tls
          secret:
            secretName: {{ .tlsSecret }}
        {{- end }}
      {{- with $root.Values.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $root.Values.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $root.Values.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- if $root.Values.spreadAcrossNodes }}
      # Soft: a component's pods on different nodes where the scheduler can, so a lost node
      # takes one of them rather than all (both relays, say).
      topologySpreadConstraints:
        - maxSkew: 1
          topologyKey: kubernetes.io/hostname
          whenUnsatisfiable: ScheduleAnyway
          labelSelector:
            matchLabels:
              {{- include "surge.selectorLabels" . | nindent 14 }}
      {{- end }}
{{- end }}

{{/* A component's own ConfigMap: its listen address and its `config` map. Arguments as above, plus addrVar and extra (a dict). */}}
{{- define "surge.componentConfigMap" -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "surge.componentName" . }}
  labels:
    {{- include "surge.labels" . | nindent 4 }}
data:
  {{ .addrVar }}: {{ printf "0.0.0.0:%v" .port | quote }}
  {{- range $k, $val := .extra }}
  {{ $k }}: {{ $val | quote }}
  {{- end }}
  {{- range $k, $val := .values.config }}
  {{ $k }}: {{ $val | quote }}
  {{- end }}
{{- end }}

{{/* A component's Service. */}}
{{- define "surge.service" -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "surge.componentName" . }}
  labels:
    {{- include "surge.labels" . | nindent 4 }}
spec:
  type: {{ dig "service" "type" "ClusterIP" .values }}
  {{- if eq .portName "admin" }}
  # Only scraped: a projector that lags (not ready) is the one whose metrics matter most.
  publishNotReadyAddresses: true
  {{- end }}
  selector:
    {{- include "surge.selectorLabels" . | nindent 4 }}
  ports:
    - name: {{ .portName }}
      port: {{ .port }}
      targetPort: {{ .portName }}
      protocol: TCP
{{- end }}

{{/* A component's PodDisruptionBudget (minAvailable or maxUnavailable from its pdb values). */}}
{{- define "surge.pdb" -}}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "surge.componentName" . }}
  labels:
    {{- include "surge.labels" . | nindent 4 }}
spec:
  {{- if hasKey .values.pdb "minAvailable" }}
  minAvailable: {{ .values.pdb.minAvailable }}
  {{- else }}
  maxUnavailable: {{ .values.pdb.maxUnavailable | default 1 }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "surge.selectorLabels" . | nindent 6 }}
{{- end }}

{{/* A component's ServiceMonitor (its Service's /metrics). */}}
{{- define "surge.serviceMonitor" -}}
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: {{ include "surge.componentName" . }}
  labels:
    {{- include "surge.labels" . | nindent 4 }}
    {{- with .root.Values.serviceMonitor.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  selector:
    matchLabels:
      {{- include "surge.selectorLabels" . | nindent 6 }}
  endpoints:
    - port: {{ .portName }}
      path: /metrics
      interval: {{ .root.Values.serviceMonitor.interval }}
{{- end }}

{{/* An HPA for an API: CPU, and requests per second through the Prometheus Adapter. */}}
{{- define "surge.hpa" -}}
{{- $a := .values.autoscaling -}}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "surge.componentName" . }}
  labels:
    {{- include "surge.labels" . | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "surge.componentName" . }}
  minReplicas: {{ $a.minReplicas }}
  maxReplicas: {{ $a.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ $a.targetCPUUtilizationPercentage }}
    {{- if $a.requestRate.enabled }}
    - type: Pods
      pods:
        metric:
          name: surge_http_requests_per_second
        target:
          type: AverageValue
          averageValue: {{ $a.requestRate.averageValue | quote }}
    {{- end }}
{{- end }}

{{/*
The components, by their key in the values: the subcommand each runs, its port's name, how it
is probed, whether it checks bearer tokens and API keys, the variable of its listen address,
whether it serves /metrics. Every per-component template ranges over this one table.
*/}}
{{- define "surge.components" -}}
commandApi: { component: command-api, subcommand: command-api, portName: http, probe: http, auth: true, addrVar: SURGE_COMMAND_ADDR, metrics: true }
queryApi: { component: query-api, subcommand: query-api, portName: http, probe: http, auth: true, addrVar: SURGE_QUERY_ADDR, metrics: true }
relay: { component: relay, subcommand: relay, portName: admin, probe: http, auth: false, addrVar: SURGE_RELAY_ADMIN_ADDR, metrics: true }
projector: { component: projector, subcommand: project, portName: admin, probe: http, auth: false, addrVar: SURGE_PROJECTOR_ADMIN_ADDR, metrics: true }
webhooks: { component: webhooks, subcommand: webhooks, portName: admin, probe: http, auth: false, addrVar: SURGE_WEBHOOKS_ADMIN_ADDR, metrics: true }
streamApi: { component: stream-api, subcommand: stream-api, portName: grpc, probe: tcp, auth: true, addrVar: SURGE_STREAM_ADDR, metrics: false }
{{- end }}

{{/*
The enabled components as a list of argument dicts for the templates above (root, key,
component, subcommand, values, port, portName, probe, auth, addrVar, metrics, fixedReplicas,
tlsSecret). An include returns only text, so the list is left on the root context as
.surgeComponents for the template that included this to range over.
*/}}
{{- define "surge.enabledComponents" -}}
{{- $root := . -}}
{{- $out := list -}}
{{- range $key, $spec := fromYaml (include "surge.components" $root) }}
{{- $v := index $root.Values $key }}
{{- if dig "enabled" true $v }}
{{- $autoscaled := or (dig "autoscaling" "enabled" false $v) (dig "keda" "enabled" false $v) }}
{{- $c := merge (dict "root" $root "key" $key "values" $v "port" $v.port "fixedReplicas" (not $autoscaled) "tlsSecret" (dig "tls" "secretName" "" $v)) $spec }}
{{- $out = append $out $c }}
{{- end }}
{{- end }}
{{- $_ := set $root "surgeComponents" $out }}
{{- end }}

{{/* Where a component's TLS Secret is mounted. */}}
{{- define "surge.tlsDir" -}}
/etc/surge/tls
{{- end }}
