//! The Helm chart in `deploy/helm/surge`, rendered by the real `helm template` and checked as a
//! cluster would read it: every container has its probes and resources, no secret sits in a
//! ConfigMap, selectors and replica counts agree, every autoscaler targets a Deployment, and
//! every container runs a real `surge` subcommand with settings that subcommand reads.
//!
//! `./dev test` installs helm and sets `SURGE_HELM` (and `SURGE_REQUIRE_HELM=1`, so a missing
//! helm fails there); elsewhere a run without helm skips these tests with a notice.
//!
//! Each check is also run against a deliberately broken copy of the manifests, so a check that
//! could never fail would show.

use base64::Engine;
use clap::CommandFactory;
use serde::Deserialize;
use serde_norway::{Mapping, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use surge_cli::Cli;

// Distinctive secret values: none of them may turn up anywhere but in a Secret.
const DB_PASSWORD: &str = "pw-7Hq2-zebra-quartz";
const JWT_SECRET: &str = "jwt-Vx91-lantern-orbit-0f3c";
const API_KEYS: &str = "analyst:analyst:5c1d2e9f00aa11bb22cc33dd44ee55ff66778899aabbccddeeff001122334455";

/// Kubernetes version the chart is rendered for (a helm built with `go install` assumes an old
/// default without it).
const KUBE_VERSION: &str = "1.31.0";
/// The Secret the operator manages in the variants that bring their own (as examples/production.yaml).
const EXISTING_SECRET: &str = "surge-secrets";

fn root() -> PathBuf {
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()))
}

fn chart() -> PathBuf {
    root().join("../deploy/helm/surge")
}

/// The helm binary, or `None` (with a notice) when there is none and none is required.
fn helm() -> Option<PathBuf> {
    let required = std::env::var("SURGE_REQUIRE_HELM").is_ok_and(|v| v == "1");
    match std::env::var_os("SURGE_HELM").map(PathBuf::from) {
        Some(path) if path.is_file() => Some(path),
        other => {
            let why = match other {
                Some(path) => format!("SURGE_HELM={} is not a file", path.display()),
                None => "SURGE_HELM is not set".to_string(),
            };
            assert!(
                !required,
                "SURGE_REQUIRE_HELM=1 but {why}: run ./dev test, whose helm_up installs helm into the cache"
            );
            eprintln!("notice: {why}; the Helm chart tests are skipped (./dev test runs them)");
            None
        }
    }
}

/// `helm template` with `--set` values: the rendered documents, or helm's error output.
fn render(helm: &Path, sets: &[&str]) -> Result<Vec<Value>, String> {
    render_with(helm, None, sets)
}

/// `helm template` with a values file (from the chart's directory) and `--set` values.
fn render_with(helm: &Path, values_file: Option<&str>, sets: &[&str]) -> Result<Vec<Value>, String> {
    let mut cmd = Command::new(helm);
    cmd.arg("template")
        .arg("shop")
        .arg(chart())
        .args(["--namespace", "surge", "--kube-version", KUBE_VERSION]);
    if let Some(file) = values_file {
        cmd.arg("--values").arg(chart().join(file));
    }
    for set in sets {
        cmd.args(["--set", set]);
    }
    let out = cmd.output().expect("helm runs");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8(out.stdout).expect("helm prints UTF-8");
    let mut docs = Vec::new();
    for doc in serde_norway::Deserializer::from_str(&text) {
        let value = Value::deserialize(doc).unwrap_or_else(|e| panic!("helm printed invalid YAML: {e}\n{text}"));
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

fn secret_sets() -> Vec<String> {
    vec![
        format!("secrets.databasePassword={DB_PASSWORD}"),
        format!("secrets.jwtSecret={JWT_SECRET}"),
        format!("secrets.apiKeys={API_KEYS}"),
    ]
}

fn render_ok(helm: &Path, extra: &[&str]) -> Vec<Value> {
    let sets = secret_sets();
    let mut all: Vec<&str> = sets.iter().map(String::as_str).collect();
    all.extend_from_slice(extra);
    render(helm, &all).unwrap_or_else(|e| panic!("helm template {all:?} failed:\n{e}"))
}

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or_default()
}

fn of_kind<'a>(docs: &'a [Value], k: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| kind(d) == k).collect()
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_mapping()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        other => serde_norway::to_string(other).unwrap().trim().to_string(),
                    };
                    (k.as_str().unwrap_or_default().to_string(), v)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Whether every label of `selector` is on `labels` (a non-empty selector).
fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn pod_spec(doc: &Value) -> &Value {
    &doc["spec"]["template"]["spec"]
}

fn containers(doc: &Value) -> Vec<&Value> {
    let spec = pod_spec(doc);
    ["initContainers", "containers"]
        .iter()
        .filter_map(|k| spec[*k].as_sequence())
        .flatten()
        .collect()
}

fn pod_labels(deployment: &Value) -> BTreeMap<String, String> {
    string_map(&deployment["spec"]["template"]["metadata"]["labels"])
}

/// Every problem the checks find; empty when the manifests are sound.
fn problems(docs: &[Value], secret_values: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    let deployments = of_kind(docs, "Deployment");
    let mut workloads = deployments.clone();
    workloads.extend(of_kind(docs, "Job"));

    // Containers: resources (requests and limits, cpu and memory); Deployments: both probes,
    // on a port the container declares; locked-down security context.
    for w in &workloads {
        let is_deployment = kind(w) == "Deployment";
        let pod = pod_spec(w);
        if pod["securityContext"]["runAsNonRoot"].as_bool() != Some(true) {
            found.push(format!("{} {}: pod does not set runAsNonRoot", kind(w), name(w)));
        }
        for c in containers(w) {
            let cname = format!(
                "{} {} container {}",
                kind(w),
                name(w),
                c["name"].as_str().unwrap_or("?")
            );
            for side in ["requests", "limits"] {
                for res in ["cpu", "memory"] {
                    if c["resources"][side][res].is_null() {
                        found.push(format!("{cname}: no resources.{side}.{res}"));
                    }
                }
            }
            let sc = &c["securityContext"];
            if sc["readOnlyRootFilesystem"].as_bool() != Some(true)
                || sc["allowPrivilegeEscalation"].as_bool() != Some(false)
                || !sc["capabilities"]["drop"]
                    .as_sequence()
                    .is_some_and(|d| d.iter().any(|x| x.as_str() == Some("ALL")))
            {
                found.push(format!(
                    "{cname}: securityContext is not read-only, no-escalation, drop ALL"
                ));
            }
            if !is_deployment {
                continue;
            }
            let ports: BTreeSet<String> = c["ports"]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(|p| p["name"].as_str().map(str::to_string))
                .collect();
            for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
                let p = &c[probe];
                if p.is_null() {
                    found.push(format!("{cname}: no {probe}"));
                    continue;
                }
                let (port, got_path) = if !p["httpGet"].is_null() {
                    (&p["httpGet"]["port"], p["httpGet"]["path"].as_str())
                } else if !p["tcpSocket"].is_null() {
                    (&p["tcpSocket"]["port"], None)
                } else if !p["grpc"].is_null() {
                    (&p["grpc"]["port"], None)
                } else {
                    found.push(format!("{cname}: {probe} is neither httpGet, tcpSocket nor grpc"));
                    continue;
                };
                if let Some(got) = got_path.filter(|got| *got != path) {
                    found.push(format!("{cname}: {probe} asks {got}, not {path}"));
                }
                if port.as_str().is_some_and(|n| !ports.contains(n)) {
                    found.push(format!("{cname}: {probe} names a port the container does not declare"));
                }
            }
        }
    }

    // ConfigMaps: no secret value, no secret-looking key, no URL with a password.
    for cm in of_kind(docs, "ConfigMap") {
        for (k, v) in string_map(&cm["data"]) {
            for secret in secret_values {
                if v.contains(secret) {
                    found.push(format!("ConfigMap {}: {k} holds a secret value", name(cm)));
                }
            }
            let upper = k.to_uppercase();
            if ["PASSWORD", "SECRET", "TOKEN", "API_KEY", "PRIVATE", "CREDENTIAL"]
                .iter()
                .any(|w| upper.contains(w))
            {
                found.push(format!("ConfigMap {}: key {k} looks like a secret", name(cm)));
            }
            if let Some((_, rest)) = v.split_once("://") {
                let authority = rest.split('/').next().unwrap_or_default();
                if authority
                    .split_once('@')
                    .is_some_and(|(userinfo, _)| userinfo.contains(':'))
                {
                    found.push(format!("ConfigMap {}: {k} is a URL with a password", name(cm)));
                }
            }
        }
    }

    // Each Deployment's selector picks its own pods, and only by labels that never change.
    for d in &deployments {
        let selector = string_map(&d["spec"]["selector"]["matchLabels"]);
        if !selects(&selector, &pod_labels(d)) {
            found.push(format!(
                "Deployment {}: selector does not match its pod labels",
                name(d)
            ));
        }
        if selector.contains_key("app.kubernetes.io/version") {
            found.push(format!("Deployment {}: selector holds the version label", name(d)));
        }
        for spread in pod_spec(d)["topologySpreadConstraints"]
            .as_sequence()
            .into_iter()
            .flatten()
        {
            if !selects(&string_map(&spread["labelSelector"]["matchLabels"]), &pod_labels(d)) {
                found.push(format!(
                    "Deployment {}: a topology spread constraint counts other pods",
                    name(d)
                ));
            }
        }
        let annotations = string_map(&d["spec"]["template"]["metadata"]["annotations"]);
        if !annotations.contains_key("checksum/config") {
            found.push(format!(
                "Deployment {}: pods do not roll on a config change (checksum/config)",
                name(d)
            ));
        }
    }
    let matching = |selector: &BTreeMap<String, String>| -> Vec<&Value> {
        deployments
            .iter()
            .copied()
            .filter(|d| selects(selector, &pod_labels(d)))
            .collect()
    };
    let by_name = |k: &str, n: &str| docs.iter().find(|d| kind(d) == k && name(d) == n);

    // Services and PDBs each select the pods of exactly one Deployment; a Service's target
    // ports are ports those pods declare.
    for svc in of_kind(docs, "Service") {
        let hits = matching(&string_map(&svc["spec"]["selector"]));
        if hits.len() != 1 {
            found.push(format!("Service {}: selects {} Deployments", name(svc), hits.len()));
            continue;
        }
        let declared: BTreeSet<String> = containers(hits[0])
            .iter()
            .flat_map(|c| c["ports"].as_sequence().into_iter().flatten())
            .filter_map(|p| p["name"].as_str().map(str::to_string))
            .collect();
        for port in svc["spec"]["ports"].as_sequence().into_iter().flatten() {
            if let Some(target) = port["targetPort"].as_str() {
                if !declared.contains(target) {
                    found.push(format!(
                        "Service {}: targetPort {target} is no port of its pods",
                        name(svc)
                    ));
                }
            }
        }
    }
    for pdb in of_kind(docs, "PodDisruptionBudget") {
        let hits = matching(&string_map(&pdb["spec"]["selector"]["matchLabels"]));
        if hits.len() != 1 {
            found.push(format!(
                "PodDisruptionBudget {}: selects {} Deployments",
                name(pdb),
                hits.len()
            ));
            continue;
        }
        // A budget that can never be met blocks every drain of a node.
        if let Some(min) = pdb["spec"]["minAvailable"].as_u64() {
            let d = hits[0];
            let fewest = d["spec"]["replicas"].as_u64().or_else(|| {
                of_kind(docs, "HorizontalPodAutoscaler")
                    .into_iter()
                    .chain(of_kind(docs, "ScaledObject"))
                    .find(|a| a["spec"]["scaleTargetRef"]["name"].as_str() == Some(name(d)))
                    .and_then(|a| {
                        a["spec"]["minReplicas"]
                            .as_u64()
                            .or_else(|| a["spec"]["minReplicaCount"].as_u64())
                    })
            });
            if fewest.is_none_or(|n| n <= min) {
                found.push(format!(
                    "PodDisruptionBudget {}: minAvailable {min} leaves no pod of {} to evict ({fewest:?} replicas)",
                    name(pdb),
                    name(d)
                ));
            }
        }
    }
    for sm in of_kind(docs, "ServiceMonitor") {
        let selector = string_map(&sm["spec"]["selector"]["matchLabels"]);
        let services: Vec<&Value> = of_kind(docs, "Service")
            .into_iter()
            .filter(|s| selects(&selector, &string_map(&s["metadata"]["labels"])))
            .collect();
        if services.len() != 1 {
            found.push(format!(
                "ServiceMonitor {}: selects {} Services",
                name(sm),
                services.len()
            ));
            continue;
        }
        let svc = services[0];
        if matching(&string_map(&svc["spec"]["selector"])).len() != 1 {
            found.push(format!(
                "ServiceMonitor {}: its Service does not select one Deployment",
                name(sm)
            ));
        }
        let port_names: BTreeSet<&str> = svc["spec"]["ports"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|p| p["name"].as_str())
            .collect();
        for ep in sm["spec"]["endpoints"].as_sequence().into_iter().flatten() {
            if !ep["port"].as_str().is_some_and(|p| port_names.contains(p)) {
                found.push(format!(
                    "ServiceMonitor {}: endpoint port is not a port of its Service",
                    name(sm)
                ));
            }
        }
    }

    // Autoscalers target an existing Deployment, which then leaves its count to them.
    for a in of_kind(docs, "HorizontalPodAutoscaler")
        .into_iter()
        .chain(of_kind(docs, "ScaledObject"))
    {
        let target = &a["spec"]["scaleTargetRef"];
        let target_kind = target["kind"].as_str().unwrap_or("Deployment");
        let target_name = target["name"].as_str().unwrap_or_default();
        match by_name(target_kind, target_name) {
            Some(d) if target_kind == "Deployment" => {
                if !d["spec"]["replicas"].is_null() {
                    found.push(format!(
                        "{} {}: Deployment {target_name} also fixes its replicas (every upgrade would reset the autoscaler's count)",
                        kind(a),
                        name(a)
                    ));
                }
            }
            _ => found.push(format!(
                "{} {}: targets no Deployment ({target_kind} {target_name})",
                kind(a),
                name(a)
            )),
        }
    }
    for route in of_kind(docs, "HTTPRoute") {
        for rule in route["spec"]["rules"].as_sequence().into_iter().flatten() {
            for backend in rule["backendRefs"].as_sequence().into_iter().flatten() {
                let n = backend["name"].as_str().unwrap_or_default();
                if by_name("Service", n).is_none() {
                    found.push(format!("HTTPRoute {}: backend {n} is no Service", name(route)));
                }
            }
        }
    }

    // Whatever a container reads from a ConfigMap or a Secret of the chart exists (an existing
    // Secret named in the values is the operator's), and a file a setting names is on a volume
    // the container mounts.
    for w in &workloads {
        for c in containers(w) {
            let mounts: Vec<&str> = c["volumeMounts"]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(|m| m["mountPath"].as_str())
                .collect();
            let mut settings: Vec<(String, String)> = Vec::new();
            for from in c["envFrom"].as_sequence().into_iter().flatten() {
                if let Some(cm) = from["configMapRef"]["name"]
                    .as_str()
                    .and_then(|n| by_name("ConfigMap", n))
                {
                    settings.extend(string_map(&cm["data"]));
                }
            }
            for env in c["env"].as_sequence().into_iter().flatten() {
                if let (Some(k), Some(v)) = (env["name"].as_str(), env["value"].as_str()) {
                    settings.push((k.to_string(), v.to_string()));
                }
            }
            for (k, path) in settings.iter().filter(|(k, _)| k.ends_with("_FILE")) {
                if !mounts
                    .iter()
                    .any(|m| path.starts_with(&format!("{}/", m.trim_end_matches('/'))))
                {
                    found.push(format!(
                        "{} {}: {k} names {path}, on no volume it mounts",
                        kind(w),
                        name(w)
                    ));
                }
            }
            for from in c["envFrom"].as_sequence().into_iter().flatten() {
                if let Some(n) = from["configMapRef"]["name"].as_str() {
                    if by_name("ConfigMap", n).is_none() {
                        found.push(format!(
                            "{} {}: envFrom names a missing ConfigMap {n}",
                            kind(w),
                            name(w)
                        ));
                    }
                }
            }
            for env in c["env"].as_sequence().into_iter().flatten() {
                let r = &env["valueFrom"]["secretKeyRef"];
                let Some(n) = r["name"].as_str() else { continue };
                if n == EXISTING_SECRET {
                    continue;
                }
                let key = r["key"].as_str().unwrap_or_default();
                let has_key = by_name("Secret", n).is_some_and(|s| !s["data"][key].is_null());
                if !has_key && r["optional"].as_bool() != Some(true) {
                    found.push(format!(
                        "{} {}: needs key {key} of a Secret {n} the chart does not make",
                        kind(w),
                        name(w)
                    ));
                }
            }
        }
    }
    found
}

/// The env var names any subcommand (or a global flag) reads, by subcommand.
fn env_vars_by_subcommand() -> BTreeMap<String, BTreeSet<String>> {
    let cli = Cli::command();
    let global: BTreeSet<String> = cli
        .get_arguments()
        .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
        .collect();
    cli.get_subcommands()
        .map(|sub| {
            let mut vars = global.clone();
            vars.extend(
                sub.get_arguments()
                    .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned())),
            );
            (sub.get_name().to_string(), vars)
        })
        .collect()
}

/// Problems with what the containers run: a subcommand the binary lacks, arguments it refuses,
/// a SURGE_* variable it does not read. PGPASSWORD is read by the Postgres driver.
fn command_problems(docs: &[Value]) -> Vec<String> {
    let readers = env_vars_by_subcommand();
    let mut found = Vec::new();
    let workloads = of_kind(docs, "Deployment").into_iter().chain(of_kind(docs, "Job"));
    for w in workloads {
        for c in containers(w) {
            let args: Vec<String> = c["args"]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str().map(str::to_string))
                .collect();
            let Some(sub) = args.first() else {
                found.push(format!("{} {}: no subcommand in args", kind(w), name(w)));
                continue;
            };
            let Some(reads) = readers.get(sub) else {
                if sub == "stream-api" {
                    // Being added beside this chart (issue #19): its Deployment is optional.
                    eprintln!("notice: this build has no `surge {sub}`: its container's settings are not checked");
                } else {
                    found.push(format!("{} {}: `surge {sub}` is no subcommand", kind(w), name(w)));
                }
                continue;
            };
            let argv: Vec<String> = std::iter::once("surge".to_string())
                .chain(args.iter().cloned())
                .collect();
            if let Err(e) = Cli::try_parse_from_args(&argv) {
                found.push(format!(
                    "{} {}: `surge {}` does not parse: {e}",
                    kind(w),
                    name(w),
                    args.join(" ")
                ));
            }
            let mut vars: Vec<String> = Vec::new();
            for env in c["env"].as_sequence().into_iter().flatten() {
                vars.push(env["name"].as_str().unwrap_or_default().to_string());
            }
            for from in c["envFrom"].as_sequence().into_iter().flatten() {
                let Some(cm) = from["configMapRef"]["name"].as_str() else {
                    continue;
                };
                let Some(doc) = docs.iter().find(|d| kind(d) == "ConfigMap" && name(d) == cm) else {
                    continue;
                };
                let shared = doc["metadata"]["labels"]["app.kubernetes.io/component"].as_str() == Some("config");
                for k in string_map(&doc["data"]).into_keys() {
                    // The shared ConfigMap goes to every process: each of its variables must be
                    // read by some subcommand; a component's own, by that component's.
                    let known = if shared {
                        readers.values().any(|r| r.contains(&k))
                    } else {
                        reads.contains(&k)
                    };
                    if !known {
                        found.push(format!(
                            "{} {}: ConfigMap {cm} sets {k}, which `surge {sub}` does not read",
                            kind(w),
                            name(w)
                        ));
                    }
                }
            }
            for var in vars {
                if var != "PGPASSWORD" && !reads.contains(&var) {
                    found.push(format!(
                        "{} {}: sets {var}, which `surge {sub}` does not read",
                        kind(w),
                        name(w)
                    ));
                }
            }
        }
    }
    found
}

fn deployment<'a>(docs: &'a [Value], component: &str) -> &'a Value {
    docs.iter()
        .find(|d| {
            kind(d) == "Deployment"
                && d["metadata"]["labels"]["app.kubernetes.io/component"].as_str() == Some(component)
        })
        .unwrap_or_else(|| panic!("a Deployment of {component}"))
}

fn config_value(docs: &[Value], key: &str) -> Option<String> {
    of_kind(docs, "ConfigMap")
        .into_iter()
        .find_map(|cm| string_map(&cm["data"]).get(key).cloned())
}

fn secret_value(docs: &[Value], secret: &str, key: &str) -> Option<String> {
    let s = docs.iter().find(|d| kind(d) == "Secret" && name(d) == secret)?;
    let encoded = s["data"][key].as_str()?;
    let raw = base64::engine::general_purpose::STANDARD.decode(encoded).ok()?;
    String::from_utf8(raw).ok()
}

/// Where a container's variable comes from in a Secret: (secret, key).
fn secret_ref(container: &Value, var: &str) -> Option<(String, String)> {
    let env = container["env"]
        .as_sequence()?
        .iter()
        .find(|e| e["name"].as_str() == Some(var))?;
    let r = &env["valueFrom"]["secretKeyRef"];
    Some((r["name"].as_str()?.to_string(), r["key"].as_str()?.to_string()))
}

fn first_container(d: &Value) -> &Value {
    &pod_spec(d)["containers"][0]
}

fn assert_clean(docs: &[Value], what: &str) {
    let mut all = problems(docs, &[DB_PASSWORD, JWT_SECRET, API_KEYS]);
    all.extend(command_problems(docs));
    assert!(
        all.is_empty(),
        "{what}: the chart's manifests have problems:\n  {}",
        all.join("\n  ")
    );
}

#[test]
fn default_values_render_sound_manifests() {
    let Some(helm) = helm() else { return };
    let docs = render_ok(&helm, &[]);
    assert_clean(&docs, "default values");

    let chart: Value = serde_norway::from_str(&std::fs::read_to_string(chart().join("Chart.yaml")).unwrap()).unwrap();
    assert_eq!(
        chart["appVersion"].as_str(),
        Some(env!("CARGO_PKG_VERSION")),
        "the chart's appVersion (the image tag) is the workspace's version"
    );

    let components: BTreeSet<&str> = of_kind(&docs, "Deployment")
        .iter()
        .filter_map(|d| d["metadata"]["labels"]["app.kubernetes.io/component"].as_str())
        .collect();
    assert_eq!(
        components,
        BTreeSet::from(["command-api", "query-api", "relay", "projector"]),
        "webhooks and stream-api are off by default"
    );
    // One relay publishes (it holds the advisory lock), the other stands by.
    assert_eq!(deployment(&docs, "relay")["spec"]["replicas"].as_u64(), Some(2));
    let partitions: u64 = config_value(&docs, "SURGE_TOPIC_PARTITIONS")
        .expect("the partition count in the ConfigMap")
        .parse()
        .unwrap();
    let projectors = deployment(&docs, "projector")["spec"]["replicas"].as_u64().unwrap();
    assert!(
        projectors >= 1 && projectors <= partitions,
        "{projectors} projectors for {partitions} partitions"
    );
    for api in ["command-api", "query-api"] {
        assert!(
            of_kind(&docs, "HorizontalPodAutoscaler")
                .iter()
                .any(|h| h["spec"]["scaleTargetRef"]["name"].as_str() == Some(name(deployment(&docs, api)))),
            "{api} has an HPA"
        );
    }
    assert_eq!(of_kind(&docs, "PodDisruptionBudget").len(), 4, "a PDB per Deployment");
    assert!(of_kind(&docs, "ScaledObject").is_empty() && of_kind(&docs, "ServiceMonitor").is_empty());

    // The secrets reach the processes through the Secret: the password as PGPASSWORD (the URL
    // in the ConfigMap has none), the token secret and the API keys for the APIs only.
    assert_eq!(
        config_value(&docs, "SURGE_DATABASE_URL").as_deref(),
        Some("postgres://surge@postgres:5432/surge")
    );
    for d in of_kind(&docs, "Deployment") {
        let c = first_container(d);
        let (secret, key) = secret_ref(c, "PGPASSWORD").unwrap_or_else(|| panic!("{}: PGPASSWORD", name(d)));
        assert_eq!(
            secret_value(&docs, &secret, &key).as_deref(),
            Some(DB_PASSWORD),
            "{}",
            name(d)
        );
        let api = matches!(
            d["metadata"]["labels"]["app.kubernetes.io/component"].as_str(),
            Some("command-api" | "query-api")
        );
        match secret_ref(c, "SURGE_JWT_SECRET") {
            Some((secret, key)) => {
                assert!(api, "{} gets the token secret but checks no tokens", name(d));
                assert_eq!(secret_value(&docs, &secret, &key).as_deref(), Some(JWT_SECRET));
            }
            None => assert!(!api, "{} checks tokens without the secret", name(d)),
        }
        if let Some((secret, key)) = secret_ref(c, "SURGE_API_KEYS") {
            assert_eq!(secret_value(&docs, &secret, &key).as_deref(), Some(API_KEYS));
        }
    }
    // The migration runs before the Deployments, with the password from a hook Secret (the
    // release's own does not exist yet on install).
    let job = of_kind(&docs, "Job").into_iter().next().expect("the migration Job");
    assert_eq!(
        job["metadata"]["annotations"]["helm.sh/hook"].as_str(),
        Some("pre-install,pre-upgrade")
    );
    let (secret, key) = secret_ref(first_container(job), "PGPASSWORD").unwrap();
    let hook_secret = docs.iter().find(|d| kind(d) == "Secret" && name(d) == secret).unwrap();
    assert!(
        hook_secret["metadata"]["annotations"]["helm.sh/hook"].is_string(),
        "the Job's Secret is a hook too"
    );
    assert_eq!(secret_value(&docs, &secret, &key).as_deref(), Some(DB_PASSWORD));
}

#[test]
fn scaled_out_values_with_keda_and_an_existing_secret_render_sound_manifests() {
    let Some(helm) = helm() else { return };
    let existing = format!("secrets.existingSecret={EXISTING_SECRET}");
    let docs = render_ok(
        &helm,
        &[
            &existing,
            "kafka.partitions=12",
            "kafka.topicPrefix=shop.",
            "projector.replicas=12",
            "projector.keda.enabled=true",
            "commandApi.autoscaling.maxReplicas=20",
            "commandApi.autoscaling.requestRate.enabled=true",
            "queryApi.autoscaling.enabled=false",
            "queryApi.replicas=4",
            "queryApi.readReplicaHost=pg-replica.db",
            "webhooks.enabled=true",
            "webhooks.replicas=2",
            "streamApi.enabled=true",
            "streamApi.tls.secretName=stream-tls",
            "serviceMonitor.enabled=true",
            "httpRoute.enabled=true",
        ],
    );
    assert_clean(&docs, "scaled-out values");

    // An existing Secret: the chart makes none of its own, and every reference names it.
    assert!(
        of_kind(&docs, "Secret").is_empty(),
        "no Secret made when existingSecret is set"
    );
    for d in of_kind(&docs, "Deployment").into_iter().chain(of_kind(&docs, "Job")) {
        let (secret, _) = secret_ref(first_container(d), "PGPASSWORD").unwrap();
        assert_eq!(secret, EXISTING_SECRET, "{}", name(d));
    }
    // KEDA owns the projectors' count, up to the partitions, and watches each projection's
    // consumer group on its topic.
    let so = of_kind(&docs, "ScaledObject");
    assert_eq!(so.len(), 1);
    assert!(deployment(&docs, "projector")["spec"]["replicas"].is_null());
    assert!(so[0]["spec"]["maxReplicaCount"].as_u64().unwrap() <= 12);
    let triggers: BTreeSet<(String, String)> = so[0]["spec"]["triggers"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|t| {
            assert_eq!(t["type"].as_str(), Some("kafka"));
            (
                t["metadata"]["consumerGroup"].as_str().unwrap().to_string(),
                t["metadata"]["topic"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected: BTreeSet<(String, String)> = surge_projections::Projection::ALL
        .iter()
        .map(|p| {
            (
                format!("shop.surge-projector-{}", p.name()),
                surge_events::topics::topic_for("shop.", p.stream_type()),
            )
        })
        .collect();
    assert_eq!(
        triggers, expected,
        "one trigger per projection's consumer group and topic"
    );

    // The query API without an HPA keeps its count; it reads from the replica, without a
    // password in the URL (PGPASSWORD serves both).
    assert_eq!(deployment(&docs, "query-api")["spec"]["replicas"].as_u64(), Some(4));
    assert_eq!(
        config_value(&docs, "SURGE_READ_DATABASE_URL").as_deref(),
        Some("postgres://surge@pg-replica.db:5432/surge")
    );
    let hpa = of_kind(&docs, "HorizontalPodAutoscaler");
    assert_eq!(hpa.len(), 1, "only the command API is autoscaled by an HPA here");
    let metrics: Vec<&str> = hpa[0]["spec"]["metrics"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| m["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        metrics,
        ["Resource", "Pods"],
        "CPU and the request rate from the Prometheus Adapter"
    );
    // The stream API has no HTTP admin port: TCP probes on its gRPC port; no ServiceMonitor.
    let stream = first_container(deployment(&docs, "stream-api"));
    assert!(stream["readinessProbe"]["tcpSocket"].is_mapping());
    // It serves TLS off loopback: its certificate and key from the named Secret.
    let volumes = &pod_spec(deployment(&docs, "stream-api"))["volumes"];
    assert!(volumes
        .as_sequence()
        .unwrap()
        .iter()
        .any(|v| v["secret"]["secretName"].as_str() == Some("stream-tls")));
    assert_eq!(
        config_value(&docs, "SURGE_STREAM_TLS_CERT_FILE").as_deref(),
        Some("/etc/surge/tls/tls.crt")
    );
    assert_eq!(
        config_value(&docs, "SURGE_STREAM_TLS_KEY_FILE").as_deref(),
        Some("/etc/surge/tls/tls.key")
    );
    assert_eq!(
        of_kind(&docs, "ServiceMonitor").len(),
        5,
        "every component with /metrics"
    );
}

#[test]
fn the_production_example_renders_sound_manifests() {
    let Some(helm) = helm() else { return };
    let docs = render_with(&helm, Some("examples/production.yaml"), &[])
        .unwrap_or_else(|e| panic!("examples/production.yaml does not render:\n{e}"));
    assert_clean(&docs, "examples/production.yaml");
    assert!(of_kind(&docs, "Secret").is_empty(), "the example brings its own Secret");
    assert_eq!(of_kind(&docs, "ScaledObject").len(), 1);
    assert_eq!(of_kind(&docs, "HorizontalPodAutoscaler").len(), 2);
    assert!(config_value(&docs, "SURGE_READ_DATABASE_URL").is_some_and(|u| u.contains("pg-replica")));
}

#[test]
fn the_chart_refuses_unsound_values() {
    let Some(helm) = helm() else { return };
    let sets = secret_sets();
    let with = |extra: &[&str]| {
        let mut all: Vec<&str> = sets.iter().map(String::as_str).collect();
        all.extend_from_slice(extra);
        render(&helm, &all)
    };
    // At the limit it renders; one past it, helm fails and says why.
    assert!(with(&["kafka.partitions=6", "projector.replicas=6"]).is_ok());
    let err = with(&["kafka.partitions=6", "projector.replicas=7"]).expect_err("7 projectors on 6 partitions");
    assert!(
        err.contains("projector.replicas (7) is above kafka.partitions (6)"),
        "{err}"
    );
    let err = with(&[
        "kafka.partitions=6",
        "projector.keda.enabled=true",
        "projector.keda.maxReplicaCount=8",
    ])
    .expect_err("KEDA up to 8 projectors on 6 partitions");
    assert!(
        err.contains("maxReplicaCount (8) is above kafka.partitions (6)"),
        "{err}"
    );
    let err = with(&["database.host=surge:hunter2@postgres"]).expect_err("a password in the database host");
    assert!(err.contains("never in a URL"), "{err}");
    // A budget no drain could meet is refused; without the budget one relay is allowed.
    let err = with(&["relay.replicas=1"]).expect_err("one relay under a budget of one");
    assert!(
        err.contains("relay: pdb.minAvailable (1) needs more than 1 replicas"),
        "{err}"
    );
    assert!(with(&["relay.replicas=1", "relay.pdb.enabled=false"]).is_ok());
    let err = with(&["commandApi.autoscaling.minReplicas=1"]).expect_err("an HPA down to the budget");
    assert!(
        err.contains("commandApi: pdb.minAvailable (1) needs more than 1 replicas"),
        "{err}"
    );
    let err = with(&["streamApi.enabled=true"]).expect_err("the stream API without TLS");
    assert!(err.contains("streamApi.tls.secretName"), "{err}");
    let err = render(&helm, &[]).expect_err("no database password and no existing Secret");
    assert!(err.contains("secrets.databasePassword"), "{err}");
}

/// Each check, against a copy of sound manifests broken in the one way it looks for.
#[test]
fn every_check_finds_what_it_looks_for() {
    let Some(helm) = helm() else { return };
    let sound = render_ok(
        &helm,
        &[
            "serviceMonitor.enabled=true",
            "projector.keda.enabled=true",
            "streamApi.enabled=true",
            "streamApi.tls.secretName=stream-tls",
        ],
    );
    assert_clean(&sound, "sound manifests");
    let secrets = [DB_PASSWORD, JWT_SECRET, API_KEYS];

    fn find<'a>(docs: &'a mut [Value], k: &str, component: &str) -> &'a mut Value {
        docs.iter_mut()
            .find(|d| {
                kind(d) == k && d["metadata"]["labels"]["app.kubernetes.io/component"].as_str() == Some(component)
            })
            .unwrap_or_else(|| panic!("{k} of {component}"))
    }
    fn container(d: &mut Value) -> &mut Mapping {
        d["spec"]["template"]["spec"]["containers"][0].as_mapping_mut().unwrap()
    }
    fn set(v: &mut Value, path: &[&str], to: Value) {
        let (last, parents) = path.split_last().unwrap();
        let mut at = v;
        for p in parents {
            at = &mut at[*p];
        }
        at.as_mapping_mut().unwrap().insert(Value::from(*last), to);
    }
    type Break = Box<dyn Fn(&mut Vec<Value>)>;
    let cases: Vec<(&str, Break)> = vec![
        (
            "no readinessProbe",
            Box::new(|d| {
                container(find(d, "Deployment", "relay")).remove("readinessProbe");
            }),
        ),
        (
            "livenessProbe asks /readyz",
            Box::new(|d| {
                let c = container(find(d, "Deployment", "query-api"));
                c["livenessProbe"]["httpGet"]["path"] = Value::from("/readyz");
            }),
        ),
        (
            "no resources.limits.memory",
            Box::new(|d| {
                let c = container(find(d, "Deployment", "projector"));
                c["resources"]["limits"].as_mapping_mut().unwrap().remove("memory");
            }),
        ),
        (
            "no resources.requests.cpu",
            Box::new(|d| {
                let job = d.iter_mut().find(|x| kind(x) == "Job").unwrap();
                container(job)["resources"]["requests"]
                    .as_mapping_mut()
                    .unwrap()
                    .remove("cpu");
            }),
        ),
        (
            "securityContext is not read-only",
            Box::new(|d| {
                container(find(d, "Deployment", "command-api"))["securityContext"]["readOnlyRootFilesystem"] =
                    Value::from(false);
            }),
        ),
        (
            "holds a secret value",
            Box::new(|d| {
                set(
                    find(d, "ConfigMap", "relay"),
                    &["data", "SURGE_NOTE"],
                    Value::from(format!("x{JWT_SECRET}x")),
                );
            }),
        ),
        (
            "looks like a secret",
            Box::new(|d| {
                set(
                    find(d, "ConfigMap", "config"),
                    &["data", "SURGE_JWT_SECRET"],
                    Value::from("x"),
                );
            }),
        ),
        (
            "is a URL with a password",
            Box::new(|d| {
                set(
                    find(d, "ConfigMap", "config"),
                    &["data", "SURGE_DATABASE_URL"],
                    Value::from("postgres://u:p@h:5432/db"),
                );
            }),
        ),
        (
            "selector does not match its pod labels",
            Box::new(|d| {
                set(
                    find(d, "Deployment", "relay"),
                    &["spec", "selector", "matchLabels", "app.kubernetes.io/component"],
                    Value::from("relays"),
                );
            }),
        ),
        (
            "SURGE_STREAM_TLS_KEY_FILE names /etc/surge/tls/tls.key, on no volume it mounts",
            Box::new(|d| {
                let c = container(find(d, "Deployment", "stream-api"));
                let mounts = c.get_mut("volumeMounts").unwrap().as_sequence_mut().unwrap();
                mounts.retain(|m| m["name"].as_str() != Some("tls"));
            }),
        ),
        (
            "a topology spread constraint counts other pods",
            Box::new(|d| {
                let dep = find(d, "Deployment", "relay");
                dep["spec"]["template"]["spec"]["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"]
                    ["app.kubernetes.io/component"] = Value::from("projector");
            }),
        ),
        (
            "Service shop-surge-query-api: selects 0 Deployments",
            Box::new(|d| {
                set(
                    find(d, "Service", "query-api"),
                    &["spec", "selector", "app.kubernetes.io/component"],
                    Value::from("query"),
                );
            }),
        ),
        (
            "Service shop-surge-relay: selects 5 Deployments",
            Box::new(|d| {
                find(d, "Service", "relay")["spec"]["selector"]
                    .as_mapping_mut()
                    .unwrap()
                    .remove("app.kubernetes.io/component");
            }),
        ),
        (
            "targetPort admin is no port of its pods",
            Box::new(|d| {
                set(
                    find(d, "Service", "command-api"),
                    &["spec", "ports"],
                    serde_norway::from_str("[{name: admin, port: 9101, targetPort: admin}]").unwrap(),
                );
            }),
        ),
        (
            "PodDisruptionBudget shop-surge-projector: selects 0 Deployments",
            Box::new(|d| {
                set(
                    find(d, "PodDisruptionBudget", "projector"),
                    &["spec", "selector", "matchLabels", "app.kubernetes.io/instance"],
                    Value::from("other"),
                );
            }),
        ),
        (
            "leaves no pod of shop-surge-relay to evict",
            Box::new(|d| {
                set(
                    find(d, "PodDisruptionBudget", "relay"),
                    &["spec", "minAvailable"],
                    Value::from(2),
                );
            }),
        ),
        (
            "ServiceMonitor shop-surge-relay: selects 0 Services",
            Box::new(|d| {
                set(
                    find(d, "ServiceMonitor", "relay"),
                    &["spec", "selector", "matchLabels", "app.kubernetes.io/component"],
                    Value::from("relay-admin"),
                );
            }),
        ),
        (
            "endpoint port is not a port of its Service",
            Box::new(|d| {
                find(d, "ServiceMonitor", "query-api")["spec"]["endpoints"][0]["port"] = Value::from("admin");
            }),
        ),
        (
            "targets no Deployment",
            Box::new(|d| {
                find(d, "HorizontalPodAutoscaler", "command-api")["spec"]["scaleTargetRef"]["name"] =
                    Value::from("shop-surge-commands");
            }),
        ),
        (
            "also fixes its replicas",
            Box::new(|d| {
                set(
                    find(d, "Deployment", "projector"),
                    &["spec", "replicas"],
                    Value::from(3),
                );
            }),
        ),
        (
            "envFrom names a missing ConfigMap",
            Box::new(|d| {
                d.retain(|x| !(kind(x) == "ConfigMap" && name(x) == "shop-surge-relay"));
            }),
        ),
        (
            "of a Secret shop-surge the chart does not make",
            Box::new(|d| {
                d.retain(|x| !(kind(x) == "Secret" && name(x) == "shop-surge"));
            }),
        ),
        (
            "pods do not roll on a config change (checksum/config)",
            Box::new(|d| {
                let dep = find(d, "Deployment", "query-api");
                dep["spec"]["template"]["metadata"]["annotations"]
                    .as_mapping_mut()
                    .unwrap()
                    .remove("checksum/config");
            }),
        ),
    ];
    for (expect, break_it) in cases {
        let mut docs = sound.clone();
        break_it(&mut docs);
        let found = problems(&docs, &secrets);
        assert!(
            found.iter().any(|p| p.contains(expect)),
            "breaking the manifests for {expect:?} went unnoticed; found: {found:?}"
        );
    }

    // The command checks: a subcommand the binary lacks, a flag it refuses, a variable no
    // subcommand reads.
    let command_cases: Vec<(&str, Break)> = vec![
        (
            "`surge serve` is no subcommand",
            Box::new(|d| {
                container(find(d, "Deployment", "relay"))["args"] = serde_norway::from_str("[serve]").unwrap();
            }),
        ),
        (
            "does not parse",
            Box::new(|d| {
                container(find(d, "Deployment", "projector"))["args"] =
                    serde_norway::from_str("[project, --no-such-flag]").unwrap();
            }),
        ),
        (
            "sets SURGE_RELAY_ADMIN_ADDR, which `surge project` does not read",
            Box::new(|d| {
                set(
                    find(d, "ConfigMap", "projector"),
                    &["data", "SURGE_RELAY_ADMIN_ADDR"],
                    Value::from("0.0.0.0:9101"),
                );
            }),
        ),
        (
            "sets SURGE_JWT_SECRET, which `surge relay` does not read",
            Box::new(|d| {
                let c = container(find(d, "Deployment", "relay"));
                let env = c.get_mut("env").unwrap().as_sequence_mut().unwrap();
                env.push(serde_norway::from_str("{name: SURGE_JWT_SECRET, value: x}").unwrap());
            }),
        ),
    ];
    for (expect, break_it) in command_cases {
        let mut docs = sound.clone();
        break_it(&mut docs);
        let found = command_problems(&docs);
        assert!(
            found.iter().any(|p| p.contains(expect)),
            "breaking the manifests for {expect:?} went unnoticed; found: {found:?}"
        );
    }
}
