//! `surge-loadgen` against the real services: a short `mixed` run (orders over many SKUs with
//! payments and cancellations, catalog reads, an analyst's exports) passes its audit and
//! leaves its report; and the audit does fail when the store disagrees with the answers.

use clap::Parser;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use surge_command::{CommandApiConfig, CommandApp, Relay, RelayConfig};
use surge_loadgen::audit::{audit, Scope};
use surge_loadgen::Cli;
use surge_projections::{Projector, ProjectorConfig};
use surge_query::{QueryApiConfig, QueryApp};
use surge_runtime::DatabaseConfig;
use surge_testkit::{Service, TestEnv};

/// Surge's whole pipeline for `env`, in-process: the command API's and the query API's URLs,
/// and the four services to stop.
pub async fn stack(env: &TestEnv) -> (String, String, [Service; 4]) {
    let db = DatabaseConfig {
        max_connections: 5,
        ..env.db.clone()
    };
    let any_port = "127.0.0.1:0".parse().expect("an address");
    let command = CommandApp::build(CommandApiConfig::new(any_port, db.clone(), env.auth.clone()))
        .await
        .expect("command API starts");
    let query = QueryApp::build(QueryApiConfig::new(
        any_port,
        db.clone(),
        env.kafka.clone(),
        env.auth.clone(),
    ))
    .await
    .expect("query API starts");
    let relay = Relay::build(RelayConfig::new(db.clone(), env.kafka.clone()))
        .await
        .expect("relay starts");
    let mut projector = ProjectorConfig::new(db, env.kafka.clone());
    projector.batch_size = 500;
    let projector = Projector::build(projector).await.expect("projector starts");
    let urls = (
        format!("http://{}", command.local_addr()),
        format!("http://{}", query.local_addr()),
    );
    let services = [
        Service::spawn(|stop| async move { command.run(stop).await.expect("command API runs") }),
        Service::spawn(|stop| async move { query.run(stop).await.expect("query API runs") }),
        Service::spawn(|stop| async move { relay.run(stop).await.expect("relay runs") }),
        Service::spawn(|stop| projector.run(stop)),
    ];
    (urls.0, urls.1, services)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mixed_run_passes_its_audit_and_leaves_a_report() {
    let env = TestEnv::new().await;
    let (command_url, query_url, services) = stack(&env).await;
    let out = std::env::temp_dir().join(format!("surge-loadgen-{}", uuid::Uuid::new_v4().simple()));
    let secret = env.auth.expose_jwt_secret().expect("the test env signs with HS256");
    let args = [
        "surge-loadgen",
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
    surge_loadgen::run(Cli::parse_from(args))
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
    // Store commit -> view row commit of every accepted order, and the memory of the stack.
    let e2v = &report["event_to_view"];
    assert!(
        e2v["skipped"] == 0 && e2v["rows"].as_u64() > Some(0) && e2v["latency_ms"]["p99"].as_f64() > Some(0.0),
        "{e2v}"
    );
    assert!(
        report["memory"].as_array().is_some_and(|m| m
            .iter()
            .any(|p| p["process"] == "postgres" && p["rss_kib"].as_u64() > Some(0))),
        "{}",
        report["memory"]
    );
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

/// The flash sale as a library call: its figures, and the same in its report.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flash_sale_measured_returns_its_figures() {
    let env = TestEnv::new().await;
    let (command_url, query_url, services) = stack(&env).await;
    let out = std::env::temp_dir().join(format!("surge-loadgen-{}", uuid::Uuid::new_v4().simple()));
    let secret = env.auth.expose_jwt_secret().expect("the test env signs with HS256");
    let args = [
        "surge-loadgen",
        "flash-sale",
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
        "--hot-stock",
        "40",
        "--background-skus",
        "3",
        "--start-rate",
        "20",
        "--peak-rate",
        "80",
        "--ramp-secs",
        "2",
        "--hold-secs",
        "1",
    ];
    let surge_loadgen::Command::FlashSale(config) = Cli::parse_from(args).command else {
        panic!("flash-sale parses as a flash sale");
    };
    let figures = surge_loadgen::flash_sale::measure(config)
        .await
        .expect("the run is carried out");
    assert!(figures.audit_ok, "{:?}", figures.audit_failed);
    // ~150 arrivals, 70 % on a hot SKU of 40 units: some accepted, many refused.
    assert!(figures.arrivals >= 100, "{figures:?}");
    assert!(
        figures.accepted > 40 && figures.accepted < figures.arrivals,
        "{figures:?}"
    );
    assert!(figures.accepted_per_sec > 0.0);
    let accepted = figures.accepted_latency_ms.as_ref().expect("accepted orders timed");
    assert!(accepted.p50 > 0.0 && accepted.p99 >= accepted.p50);
    assert!(figures.order_latency_ms.is_some());
    let (p50, p99) = (
        figures.event_to_view_p50_ms.expect("event to view measured"),
        figures.event_to_view_p99_ms.expect("event to view measured"),
    );
    assert!(p50 > 0.0 && p99 >= p50, "{figures:?}");
    assert_eq!(figures.event_to_view_note, None);
    assert!(
        figures.rss_kib.get("postgres").is_some_and(|kib| *kib > 0),
        "{figures:?}"
    );
    assert!(figures.cpu_per_1k_ops.contains_key("machine (all)"));
    let report: Value =
        serde_json::from_slice(&std::fs::read(figures.report_dir.join("report.json")).expect("report.json"))
            .expect("JSON");
    assert_eq!(report["event_to_view"]["latency_ms"]["p99"].as_f64(), Some(p99));
    // Every order measured (retried requests answered 202 twice for one order).
    assert_eq!(
        report["event_to_view"]["skipped"].as_u64(),
        Some(0),
        "{}",
        report["event_to_view"]
    );
    assert_eq!(report["event_to_view"]["rows"].as_u64(), Some(figures.accepted));
    let html = std::fs::read_to_string(figures.report_dir.join("report.html")).expect("report.html");
    assert!(html.contains("Event to view") && html.contains("Memory when the load ended"));
    assert!(
        html.matches("<svg").count() >= 3,
        "throughput, latency and event-to-view charts"
    );
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
