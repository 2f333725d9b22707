//! Faults: Kafka down while orders keep coming, Postgres unreachable behind a cut proxy, and
//! SIGTERM with requests in flight.

use crate::support;
use futures::future::join_all;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;
use serde_json::json;
use std::collections::HashSet;
use std::time::Duration;
use surge_command::{CommandApiConfig, CommandApp, Relay, RelayConfig};
use surge_events::{EventEnvelope, StreamType};
use surge_runtime::{DatabaseConfig, KafkaConfig};
use surge_testkit::faults::{PrivateBroker, TcpProxy};
use surge_testkit::{eventually, TestEnv};

async fn place(http: &reqwest::Client, cmd: &str, n: usize, tag: &str) -> Vec<String> {
    let posts = (0..n).map(|i| {
        http.post(format!("{cmd}/v1/orders"))
            .json(&json!({"customer_id": format!("{tag}{i}"), "lines": [{"sku": "K-1", "quantity": 1}]}))
            .send()
    });
    let mut ids = Vec::new();
    for r in join_all(posts).await {
        let r = r.expect("the command API answers");
        assert_eq!(r.status().as_u16(), 202);
        let b: serde_json::Value = r.json().await.unwrap();
        ids.push(format!("order-{}", b["order_id"].as_str().unwrap()));
    }
    ids
}

async fn outbox(env: &TestEnv) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_are_accepted_while_kafka_is_down_and_published_when_it_is_back() {
    let env = TestEnv::new().await;
    let mut broker = PrivateBroker::start().await;
    let kafka = KafkaConfig {
        brokers: broker.brokers.clone(),
        topic_prefix: env.kafka.topic_prefix.clone(),
        partitions: 3,
    };
    surge_runtime::kafka::ensure_topics(&kafka).await.unwrap();
    let (cmd, command) = support::command_api(&env).await;
    let relay = Relay::build(RelayConfig::new(support::db(&env), kafka.clone()))
        .await
        .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let relay_task = tokio::spawn({
        let s = stop.clone();
        async move { relay.run(s.cancelled_owned()).await.unwrap() }
    });
    let http = env.http();
    support::add_item(&http, &cmd, "K-1", 100, 1000).await;
    let mut expected: HashSet<String> = place(&http, &cmd, 5, "before").await.into_iter().collect();
    eventually(Duration::from_secs(20), || async {
        (outbox(&env).await == 0).then_some(())
    })
    .await
    .expect("published while Kafka is up");
    broker.stop();
    expected.extend(place(&http, &cmd, 20, "during").await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(outbox(&env).await >= 20, "the outbox holds what Kafka could not take");

    broker.resume().await;
    eventually(Duration::from_secs(60), || async {
        (outbox(&env).await == 0).then_some(())
    })
    .await
    .expect("the outbox drains once Kafka is back");

    let consumer: StreamConsumer = surge_runtime::kafka::client_config(&kafka)
        .set("group.id", format!("{}check", kafka.topic_prefix))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    // Assigned, not subscribed: no consumer group to form on the restarted broker.
    let topic = surge_events::topics::topic_for(&kafka.topic_prefix, StreamType::Order);
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..kafka.partitions {
        tpl.add_partition_offset(&topic, p, rdkafka::Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut seen = HashSet::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while !expected.is_subset(&seen) {
            let m = consumer.recv().await.unwrap();
            seen.insert(EventEnvelope::from_json(m.payload().unwrap()).unwrap().stream_id.0);
        }
    })
    .await;
    assert!(
        expected.is_subset(&seen),
        "{} of {} orders reached Kafka",
        expected.intersection(&seen).count(),
        expected.len()
    );
    stop.cancel();
    relay_task.await.unwrap();
    command.stop().await;
    drop(broker);
    env.cleanup().await;
}

async fn ready(http: &reqwest::Client, url: &str) -> u16 {
    http.get(format!("{url}/readyz"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readiness_follows_postgres() {
    let env = TestEnv::new().await;
    let proxy = TcpProxy::start(env.postgres_addr()).await;
    let db = DatabaseConfig {
        url: env.url_via(proxy.addr).into(),
        max_connections: 3,
    };
    let mut config = CommandApiConfig::new("127.0.0.1:0".parse().unwrap(), db, env.auth.clone());
    // Faults, not shedding: a debug build's batches may take longer than the latency budget.
    config.order_latency_budget_ms = 0;
    let app = CommandApp::build(config).await.unwrap();
    let url = format!("http://{}", app.local_addr());
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn({
        let s = stop.clone();
        async move { app.run(s.cancelled_owned()).await.unwrap() }
    });
    let http = env.http();
    assert_eq!(ready(&http, &url).await, 200);

    proxy.cut();
    eventually(Duration::from_secs(10), || async {
        (ready(&http, &url).await == 503).then_some(())
    })
    .await
    .expect("not ready while Postgres is unreachable");
    let r = http
        .post(format!("{url}/v1/orders"))
        .json(&json!({"customer_id": "x", "lines": [{"sku": "A", "quantity": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        503,
        "a command answers 503, not 500, while the store is away"
    );
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(ready(&http, &url).await, 503);
    assert_eq!(
        http.get(format!("{url}/healthz"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        200,
        "still alive"
    );

    proxy.restore();
    eventually(Duration::from_secs(15), || async {
        (ready(&http, &url).await == 200).then_some(())
    })
    .await
    .expect("ready again once Postgres is back");
    stop.cancel();
    task.await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_with_requests_in_flight_loses_none() {
    let env = TestEnv::new().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_surge"))
        .args(["command-api", "--addr", &format!("127.0.0.1:{port}")])
        .env("SURGE_DATABASE_URL", env.db.expose_url())
        .env("SURGE_JWT_SECRET", env.auth.expose_jwt_secret().unwrap_or_default())
        .env("SURGE_LOG_FORMAT", "json")
        .env("SURGE_GATEWAY_LATENCY_MS", "0")
        // A debug build's batches can take longer than the 50 ms latency budget: this test is
        // about admitted requests, not shedding.
        .env("SURGE_ORDER_LATENCY_BUDGET_MS", "0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("surge starts");
    let http = env.http();
    eventually(Duration::from_secs(20), || async {
        (ready(&http, &url).await == 200).then_some(())
    })
    .await
    .expect("the command API comes up");
    support::add_item(&http, &url, "T-1", 100, 100_000).await;

    let sends = (0..300).map(|i| {
        http.post(format!("{url}/v1/orders"))
            .json(&json!({"customer_id": format!("t{i}"), "lines": [{"sku": "T-1", "quantity": 1}]}))
            .send()
    });
    let pid = child.id().to_string();
    let term = async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let _ = std::process::Command::new("kill").args(["-TERM", &pid]).status();
    };
    let (results, ()) = tokio::join!(join_all(sends), term);
    let status = child.wait().expect("surge exits");
    assert!(status.success(), "a clean exit on SIGTERM: {status:?}");

    let mut accepted = 0;
    for r in &results {
        match r {
            Ok(r) => {
                assert_eq!(r.status().as_u16(), 202, "an admitted request gets its answer");
                accepted += 1;
            }
            // Sent after the listener closed: refused, never half-handled.
            Err(e) => assert!(e.is_connect() || e.is_request(), "{e}"),
        }
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'OrderPlaced'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert!(accepted > 0, "some requests were in flight");
    assert_eq!(stored, accepted, "every answered order is stored, and only those");
    env.cleanup().await;
}
