//! `docker-compose.yml` cannot run here (no Docker engine), so it is checked by reading it:
//! every service's command must be a real `surge` subcommand and every SURGE_* variable one
//! that a subcommand's typed config reads.

use clap::CommandFactory;
use std::collections::BTreeSet;
use surge_cli::Cli;

/// This crate's directory in the checkout `cargo test` runs in (cargo sets the variable at run
/// time too; a binary built from another checkout sharing the target directory keeps its path).
fn root() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into())
}

fn compose() -> serde_yaml::Value {
    let text = std::fs::read_to_string(format!("{}/../docker-compose.yml", root()))
        .expect("docker-compose.yml at the repository root");
    let mut doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("docker-compose.yml is YAML");
    // `<<: *surge` merge keys, as Compose applies them.
    doc.apply_merge().expect("merge keys apply");
    doc
}

/// Every env var any subcommand (or a global flag) reads.
fn known_env_vars() -> BTreeSet<String> {
    let cli = Cli::command();
    let mut vars = BTreeSet::new();
    let mut collect = |cmd: &clap::Command| {
        for arg in cmd.get_arguments() {
            if let Some(env) = arg.get_env() {
                vars.insert(env.to_string_lossy().into_owned());
            }
        }
    };
    collect(&cli);
    for sub in cli.get_subcommands() {
        collect(sub);
    }
    vars
}

#[test]
fn every_service_runs_a_real_subcommand_with_known_settings() {
    let doc = compose();
    let services = doc["services"].as_mapping().expect("services");
    let subcommands: BTreeSet<String> = Cli::command()
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    let known = known_env_vars();
    let mut surge_services = 0;
    for (name, svc) in services {
        let name = name.as_str().unwrap();
        let image = svc["image"].as_str().unwrap_or_default();
        let builds_surge = svc.get("build").is_some() || image.starts_with("surge");
        if !builds_surge {
            continue;
        }
        surge_services += 1;
        let command: Vec<String> = match &svc["command"] {
            serde_yaml::Value::Sequence(s) => s.iter().map(|v| v.as_str().unwrap().to_string()).collect(),
            serde_yaml::Value::String(s) => s.split_whitespace().map(str::to_string).collect(),
            other => panic!("service {name}: command must be set, got {other:?}"),
        };
        assert!(
            subcommands.contains(&command[0]),
            "service {name} runs `surge {}`, no such subcommand",
            command[0]
        );
        let mut argv = vec!["surge".to_string()];
        argv.extend(command.iter().cloned());
        Cli::try_parse_from_args(&argv).unwrap_or_else(|e| panic!("service {name}: {e}"));
        if let Some(env) = svc["environment"].as_mapping() {
            for (k, _) in env {
                let k = k.as_str().unwrap();
                if k.starts_with("SURGE_") {
                    assert!(known.contains(k), "service {name} sets {k}, which no config reads");
                }
            }
        }
    }
    assert_eq!(surge_services, 5, "migrate, command-api, relay, projector, query-api");
    for infra in ["kafka", "postgres", "proxy"] {
        assert!(services.contains_key(infra), "compose has a {infra} service");
    }
    let kafka_image = services[&serde_yaml::Value::from("kafka")]["image"].as_str().unwrap();
    let pom = std::fs::read_to_string(format!("{}/../deploy/kafka/pom.xml", root())).unwrap();
    let local_version = pom
        .split("<kafka.version>")
        .nth(1)
        .and_then(|s| s.split('<').next())
        .unwrap();
    assert_eq!(
        kafka_image,
        format!("apache/kafka:{local_version}"),
        "same Kafka as the local stack"
    );
}
