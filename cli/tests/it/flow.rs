//! The walking skeleton's promise: an order posted over HTTP lands in the event store, goes
//! through Kafka, is projected into a view and is served by the query API.

use crate::support::{self, Service};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;
use surge_events::{EventEnvelope, StreamType};
use surge_testkit::{eventually, TestEnv};

struct Stack {
    command_url: String,
    query_url: String,
    services: Vec<Service>,
}

async fn start_stack(env: &TestEnv) -> Stack {
    let (command_url, command) = support::command_api(env).await;
    let (query_url, query) = support::query_api(env, true).await;
    let services = vec![
        command,
        query,
        support::relay(env).await,
        support::projector(env, 1000).await,
    ];
    Stack {
        command_url,
        query_url,
        services,
    }
}

impl Stack {
    async fn stop(self) {
        for s in self.services {
            s.stop().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_flows_from_http_through_kafka_to_the_query_api() {
    let env = TestEnv::new().await;
    let stack = start_stack(&env).await;
    let http = env.http();

    let r = http
        .post(format!("{}/v1/catalog/items", stack.command_url))
        .json(&json!({"sku": "SNEAKER-1", "name": "Sneaker", "category": "shoes",
                      "price": {"minor": 9900, "currency": "EUR"}, "initial_stock": 10}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    let r = http
        .post(format!("{}/v1/orders", stack.command_url))
        .json(&json!({"customer_id": "alice", "lines": [{"sku": "SNEAKER-1", "quantity": 2}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let accepted: Value = r.json().await.unwrap();
    let order_id = accepted["order_id"].as_str().unwrap().to_string();
    let token = accepted["consistency_token"].as_i64().unwrap();
    assert_eq!(location, format!("/v1/orders/{order_id}"));
    assert_eq!(accepted["total"], json!({"minor": 19800, "currency": "EUR"}));

    // 1. In the event store: the order's stream and the SKU's reservation, in one commit.
    let stream = format!("order-{order_id}");
    let (event_type, position): (String, i64) =
        sqlx::query_as("SELECT event_type, position FROM events WHERE stream_id = $1 AND version = 1")
            .bind(&stream)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!((event_type.as_str(), position), ("OrderPlaced", token));
    let reserved: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE stream_id = 'inventory-SNEAKER-1' AND event_type = 'StockReserved'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(reserved, 1);

    // 2. On Kafka: the relay published it, keyed by stream id, with its headers.
    let consumer: StreamConsumer = surge_runtime::kafka::client_config(&env.kafka)
        .set("group.id", format!("{}test-reader", env.kafka.topic_prefix))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&env.topic(StreamType::Order)]).unwrap();
    let envelope = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let m = consumer.recv().await.expect("kafka message");
            if m.key() == Some(stream.as_bytes()) {
                let headers = m.headers().map(rdkafka::message::Headers::count).unwrap_or(0);
                assert_eq!(headers, 4, "event_type, schema_version, event_id, correlation_id");
                return EventEnvelope::from_json(m.payload().unwrap()).unwrap();
            }
        }
    })
    .await
    .expect("the order's event reaches Kafka");
    assert_eq!((envelope.event_type.as_str(), envelope.version), ("OrderPlaced", 1));

    // 3. In the view, and 4. from the query API (read-your-writes with the token).
    let r = http
        .get(format!("{}{}", stack.query_url, location))
        .header("x-consistency-token", token.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let order: Value = r.json().await.unwrap();
    assert_eq!(order["status"], "placed");
    assert_eq!(order["customer_id"], "alice");
    assert_eq!(order["total"]["minor"], 19800);

    let item = eventually(Duration::from_secs(20), || {
        let http = http.clone();
        let url = format!("{}/v1/catalog/items/SNEAKER-1", stack.query_url);
        async move {
            let v: Value = http.get(url).send().await.ok()?.json().await.ok()?;
            (v["reserved"] == 2).then_some(v)
        }
    })
    .await
    .expect("the catalog view shows the reservation");
    assert_eq!(item["available"], 8);

    stack.stop().await;
    env.cleanup().await;
}
