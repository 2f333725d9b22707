//! Starting the command API and relay of one test, and reading back what reached Kafka.

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;
use surge_command::{CommandApiConfig, CommandApp, Relay, RelayConfig};
use surge_events::{EventEnvelope, StreamType};
use surge_runtime::DatabaseConfig;
use surge_testkit::TestEnv;
use tokio_util::sync::CancellationToken;

pub struct Api {
    pub url: String,
    pub http: reqwest::Client,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

pub fn db(env: &TestEnv, connections: u32) -> DatabaseConfig {
    DatabaseConfig {
        max_connections: connections,
        ..env.db.clone()
    }
}

pub async fn start_api(env: &TestEnv) -> Api {
    start_api_with(env, |_| {}).await
}

pub async fn start_api_with(env: &TestEnv, tweak: impl FnOnce(&mut CommandApiConfig)) -> Api {
    let mut config = CommandApiConfig::new("127.0.0.1:0".parse().unwrap(), db(env, 10), env.auth.clone());
    // A debug build's batch during a parallel test run can take longer than the 50 ms latency
    // budget: it would shed a test's burst. Tests of shedding set the budget themselves.
    config.order_latency_budget_ms = 0;
    tweak(&mut config);
    let app = CommandApp::build(config).await.expect("command API starts");
    let url = format!("http://{}", app.local_addr());
    let stop = CancellationToken::new();
    let s = stop.clone();
    let task = tokio::spawn(async move { app.run(s.cancelled_owned()).await.unwrap() });
    Api {
        url,
        http: env.http(),
        stop,
        task,
    }
}

impl Api {
    pub async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// The OpenAPI document the API serves.
    pub async fn openapi(&self) -> Value {
        let r = self
            .http
            .get(format!("{}/openapi.json", self.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        r.json().await.unwrap()
    }

    pub async fn add_item(&self, sku: &str, stock: i64) {
        let (status, body) = self
            .post(
                "/v1/catalog/items",
                json!({"sku": sku, "name": format!("Item {sku}"), "category": "test",
                       "price": {"minor": 1000, "currency": "EUR"}, "initial_stock": stock}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
}

pub async fn start_relay(env: &TestEnv) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let relay = Relay::build(RelayConfig::new(db(env, 4), env.kafka.clone()))
        .await
        .expect("relay starts");
    let stop = CancellationToken::new();
    let s = stop.clone();
    (
        stop,
        tokio::spawn(async move { relay.run(s.cancelled_owned()).await.unwrap() }),
    )
}

/// Reads `topic` from the start until `done` says enough was seen (or 60 s pass).
pub async fn read_topic(
    env: &TestEnv,
    stream_type: StreamType,
    done: impl Fn(&[EventEnvelope]) -> bool,
) -> Vec<EventEnvelope> {
    let consumer: StreamConsumer = surge_runtime::kafka::client_config(&env.kafka)
        .set(
            "group.id",
            format!("{}reader-{}", env.kafka.topic_prefix, uuid::Uuid::new_v4()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[&env.topic(stream_type)]).unwrap();
    let mut seen = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(60), async {
        while !done(&seen) {
            let m = consumer.recv().await.expect("kafka message");
            let env = EventEnvelope::from_json(m.payload().unwrap()).expect("envelope");
            assert_eq!(m.key(), Some(env.stream_id.as_str().as_bytes()), "keyed by stream id");
            seen.push(env);
        }
    })
    .await;
    // A little longer: anything published twice by mistake would show up now.
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            let m = consumer.recv().await.expect("kafka message");
            seen.push(EventEnvelope::from_json(m.payload().unwrap()).unwrap());
        }
    })
    .await;
    seen
}

/// Versions per stream in the order Kafka delivered them.
pub fn versions_by_stream(events: &[EventEnvelope]) -> HashMap<String, Vec<i64>> {
    let mut m: HashMap<String, Vec<i64>> = HashMap::new();
    for e in events {
        m.entry(e.stream_id.0.clone()).or_default().push(e.version);
    }
    m
}

/// Holds the item's stream lock in a transaction of its own: a lane's batch for it waits, as
/// it would for a stalled disk or another writer.
pub async fn stall(env: &TestEnv, sku: &str) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut blocker = env.pool.begin().await.unwrap();
    surge_command::store::EventStore::lock_streams(&mut blocker, &[surge_events::Sku::parse(sku).unwrap().stream_id()])
        .await
        .unwrap();
    blocker
}

/// No rate limit and no background workers: only the test's own orders reach the lanes.
pub fn unthrottled(c: &mut CommandApiConfig) {
    c.rate_limit_per_sec = 1_000_000;
    c.rate_limit_burst = 1_000_000;
    c.expiry_worker = false;
    c.payment_worker = false;
}
