//! Metrics, dashboards and alerts agree: every metric the Grafana dashboard or an alert rule
//! uses is exported by a running stack, and the traffic families move under load.

use crate::support::{self, views_match_event_store};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use surge_testkit::{eventually, TestEnv};

const ALERTS: &str = include_str!("../../../deploy/prometheus/alerts.yml");
const DASHBOARD: &str = include_str!("../../../deploy/grafana/surge.json");

/// Metric families named in a text (`surge_…`), without histogram suffixes.
fn families(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("surge_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name);
        out.insert(base.to_string());
    }
    out
}

/// Sum of every sample of each family in a Prometheus text exposition.
fn totals(exposition: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in exposition.lines().filter(|l| l.starts_with("surge_")) {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let value: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        let name = &line[..name_end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        if name.ends_with("_bucket") {
            out.entry(base.to_string()).or_insert(0.0);
        } else {
            *out.entry(base.to_string()).or_insert(0.0) += value;
        }
    }
    out
}

#[test]
fn alert_rules_and_dashboard_are_well_formed() {
    let alerts: serde_yaml::Value = serde_yaml::from_str(ALERTS).expect("alerts.yml is YAML");
    let rules = alerts["groups"][0]["rules"].as_sequence().expect("a group of rules");
    assert!(rules.len() >= 5);
    for rule in rules {
        let name = rule["alert"].as_str().expect("each rule is named");
        assert!(
            !rule["expr"].as_str().unwrap_or_default().is_empty(),
            "{name} has an expression"
        );
        let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
        assert!(["page", "ticket"].contains(&severity), "{name} has a known severity");
        assert!(rule["annotations"]["summary"].is_string(), "{name} says what is wrong");
    }
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).expect("dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10);
    for p in panels {
        assert!(p["targets"]
            .as_array()
            .is_some_and(|t| t.iter().all(|t| t["expr"].is_string())));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_metric_the_dashboard_and_alerts_use_is_exported_and_moves() {
    let env = TestEnv::new().await;
    let (cmd, command) = support::command_api(&env).await;
    let (qry, query) = support::query_api(&env, true).await;
    let relay = support::relay(&env).await;
    let projector = support::projector(&env, 100).await;
    let http = env.http();
    let post = |path: String, body: serde_json::Value| {
        let http = http.clone();
        async move {
            http.post(path)
                .json(&body)
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    post(
        format!("{cmd}/v1/catalog/items"),
        json!({"sku": "O-1", "name": "O", "category": "o", "price": {"minor": 100, "currency": "EUR"}, "initial_stock": 10}),
    )
    .await;
    let a = post(
        format!("{cmd}/v1/orders"),
        json!({"customer_id": "o", "lines": [{"sku": "O-1", "quantity": 1}]}),
    )
    .await;
    let b = post(
        format!("{cmd}/v1/orders"),
        json!({"customer_id": "o", "lines": [{"sku": "O-1", "quantity": 2}]}),
    )
    .await;
    post(
        format!("{cmd}/v1/orders/{}/cancel", a["order_id"].as_str().unwrap()),
        json!({}),
    )
    .await;
    post(
        format!("{cmd}/v1/orders/{}/payment", b["order_id"].as_str().unwrap()),
        json!({"payment_token": "tok_visa_0001"}),
    )
    .await;
    post(
        format!("{cmd}/v1/orders"),
        json!({"customer_id": "o", "lines": [{"sku": "O-1", "quantity": 99}]}),
    )
    .await;
    assert!(
        surge_testkit::count_reaches(
            &env.pool,
            "SELECT count(*) FROM pending_payments",
            0,
            Duration::from_secs(20)
        )
        .await,
        "the payment settles"
    );
    eventually(Duration::from_secs(20), || async {
        views_match_event_store(&env).await.then_some(())
    })
    .await
    .expect("views catch up");
    for _ in 0..3 {
        http.get(format!("{qry}/v1/catalog/items/O-1")).send().await.unwrap();
    }
    // Consumer lag comes with librdkafka's statistics, pool usage with its sampler (2 s each).
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let exposition = http
        .get(format!("{cmd}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let exported = totals(&exposition);
    let mut referenced = families(ALERTS);
    referenced.extend(families(DASHBOARD));
    let missing: Vec<&String> = referenced.iter().filter(|f| !exported.contains_key(*f)).collect();
    assert!(
        missing.is_empty(),
        "used by dashboard or alerts but not exported: {missing:?}"
    );
    for moving in [
        "surge_http_requests_total",
        "surge_http_request_duration_seconds",
        "surge_commands_accepted_total",
        "surge_commands_rejected_total",
        "surge_event_store_append_batch_size",
        "surge_sequencer_batch_size",
        "surge_sequencer_order_seconds",
        "surge_relay_published_total",
        "surge_relay_round_seconds",
        "surge_relay_phase_seconds",
        "surge_projection_batch_seconds",
        "surge_projection_events_applied_total",
        "surge_cache_requests_total",
        "surge_db_pool_connections",
    ] {
        assert!(
            exported.get(moving).copied().unwrap_or(0.0) > 0.0,
            "{moving} moved: {:?}",
            exported.get(moving)
        );
    }
    assert!(exposition.contains("surge_event_to_view_seconds_count"));

    projector.stop().await;
    relay.stop().await;
    query.stop().await;
    command.stop().await;
    env.cleanup().await;
}
