//! `surge loadgen` against the real services: a short `mixed` run (orders over many SKUs with
//! payments and cancellations, catalog reads, an analyst's exports) passes its audit and
//! leaves its report; and the audit does fail when the store disagrees with the answers.

use crate::support;
use clap::Parser;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use surge_cli::loadgen::audit::{audit, Scope};
use surge_cli::{Cli, Command};
use surge_testkit::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mixed_run_passes_its_audit_and_leaves_a_report() {
    let env = TestEnv::new().await;
    let (command_url, command) = support::command_api(&env).await;
    let (query_url, query) = support::query_api(&env, true).await;
    let services = [
        command,
        query,
        support::relay(&env).await,
        support::projector(&env, 500).await,
    ];
    let out = std::env::temp_dir().join(format!("surge-loadgen-{}", uuid::Uuid::new_v4().simple()));
    let secret = env.auth.expose_jwt_secret().expect("the test env signs with HS256");
    let args = [
        "surge",
        "loadgen",
        "mixed",
        "--command-url",
        &command_url,
        "--query-url",
        &query_url,
        "--database-url",
        env.db.expose_url(),
        "--jwt-secret",
        secret,
        "--out-dir",
        out.to_str().expect("utf-8 path"),
        "--skus",
        "40",
        "--stock",
        "30",
        "--start-rate",
        "20",
        "--peak-rate",
        "120",
        "--ramp-secs",
        "2",
        "--hold-secs",
        "2",
        "--export-every-secs",
        "1",
    ];
    let Command::Loadgen(config) = Cli::parse_from(args).command else {
        unreachable!("parsed as loadgen")
    };
    surge_cli::loadgen::run(config)
        .await
        .expect("the run and its audit pass");

    let dir = std::fs::read_dir(&out)
        .expect("out dir")
        .flatten()
        .next()
        .expect("a run directory")
        .path();
    assert!(dir
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("mixed-")));
    let report: Value =
        serde_json::from_slice(&std::fs::read(dir.join("report.json")).expect("report.json")).expect("JSON");
    let op = |name: &str| {
        report["ops"]
            .as_array()
            .and_then(|ops| ops.iter().find(|o| o["op"] == name))
            .cloned()
    };
    let orders = op("order").expect("orders were placed");
    assert!(orders["ok"].as_u64() > Some(0));
    assert!(
        op("item").is_some_and(|o| o["failed"] == 0),
        "item reads all answered: {report}"
    );
    assert!(
        op("export").is_some_and(|o| o["ok"].as_u64() > Some(0)),
        "the analyst exported"
    );
    // 40 SKUs of 30 units under ~280 orders: the popular ones sell out, and that is refused.
    assert!(
        orders["answers"]
            .as_object()
            .is_some_and(|a| a.contains_key("422 out-of-stock")),
        "{orders}"
    );
    // Payments and cancellations write the same SKUs as the lanes: they take turns (stream
    // locks), so nobody is refused with a conflict.
    assert!(
        orders["answers"]
            .as_object()
            .is_some_and(|a| !a.keys().any(|k| k.starts_with("409"))),
        "{orders}"
    );
    let audit = report["audit"].as_array().expect("audit lines");
    assert!(audit.len() >= 6 && audit.iter().all(|c| c["ok"] == true), "{audit:?}");
    assert!(
        report["timeline"].as_array().is_some_and(|t| t.len() >= 4),
        "a line per op and second"
    );
    assert!(report["cpu"]
        .as_array()
        .is_some_and(|c| c.iter().any(|p| p["process"] == "postgres")));
    let html = std::fs::read_to_string(dir.join("report.html")).expect("report.html");
    assert!(html.matches("<svg").count() >= 2, "throughput and latency charts");
    assert!(std::fs::read_dir(&dir)
        .expect("run dir")
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("export-")));

    for s in services {
        s.stop().await;
    }
    let _ = std::fs::remove_dir_all(&out);
    env.cleanup().await;
}

#[tokio::test]
async fn the_audit_fails_on_a_lost_order_and_on_negative_stock() {
    let env = TestEnv::new().await;
    let since = chrono::Utc::now() - chrono::Duration::seconds(5);
    // A SKU of 1 unit with two reservations, written straight into the store as a bug would.
    for (version, event_type, payload) in [
        (
            1,
            "ItemAdded",
            serde_json::json!({"sku": "AUDIT-1", "initial_stock": 1}),
        ),
        (2, "StockReserved", serde_json::json!({"sku": "AUDIT-1", "quantity": 1})),
        (3, "StockReserved", serde_json::json!({"sku": "AUDIT-1", "quantity": 1})),
    ] {
        sqlx::query(
            "INSERT INTO events (event_id, stream_id, stream_type, version, event_type, payload, correlation_id, actor) \
             VALUES ($1, 'inventory-AUDIT-1', 'inventory', $2, $3, $4, $1, 'test')",
        )
        .bind(uuid::Uuid::new_v4())
        .bind(version as i64)
        .bind(event_type)
        .bind(payload)
        .execute(&env.pool)
        .await
        .expect("insert");
    }
    // An order answered 202 that the store does not have.
    let accepted: HashMap<String, HashSet<String>> =
        [("key-1".to_string(), HashSet::from([uuid::Uuid::new_v4().to_string()]))].into();
    let skus = ["AUDIT-1".to_string()];
    let checks = audit(
        &env.pool,
        &Scope {
            skus: &skus,
            since,
            accepted: &accepted,
            unknown: 0,
            patience: Duration::from_secs(1),
        },
    )
    .await
    .expect("the audit runs");
    let failed: Vec<&str> = checks.iter().filter(|c| !c.ok).map(|c| c.check.as_str()).collect();
    assert!(failed.contains(&"stock never negative"), "{checks:?}");
    assert!(failed.contains(&"nothing oversold"), "{checks:?}");
    assert!(
        failed.contains(&"accepted orders = orders in the event store"),
        "{checks:?}"
    );
    env.cleanup().await;
}
