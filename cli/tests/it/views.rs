//! The views always come back to the fold of the event store: through a projector killed
//! mid-stream, two projectors sharing the partitions, and a poison message.

use crate::support::{self, views_match_event_store};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use std::time::Duration;
use surge_events::StreamType;
use surge_testkit::{eventually, TestEnv};

async fn post(http: &reqwest::Client, url: String, body: serde_json::Value) -> (u16, serde_json::Value) {
    let r = http.post(url).json(&body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn views_equal_the_fold_of_the_event_store_through_crashes_and_rebalances() {
    let env = TestEnv::new().await;
    let (cmd, command) = support::command_api(&env).await;
    let relay = support::relay(&env).await;
    let http = env.http();
    let skus = ["V-1", "V-2", "V-3", "V-4"];
    for sku in skus {
        let (s, _) = post(
            &http,
            format!("{cmd}/v1/catalog/items"),
            json!({"sku": sku, "name": sku, "category": "c", "price": {"minor": 250, "currency": "EUR"}, "initial_stock": 60}),
        )
        .await;
        assert_eq!(s, 201);
    }
    // Small batches, so that the kill lands between many of them.
    let first = support::projector(&env, 20).await;
    let mut killed = Some(first);
    let mut later = Vec::new();
    for i in 0..160usize {
        let mut lines = vec![json!({"sku": skus[i % 4], "quantity": 1 + (i % 3)})];
        if i % 5 == 0 {
            lines.push(json!({"sku": skus[(i + 1) % 4], "quantity": 1}));
        }
        let (s, body) = post(
            &http,
            format!("{cmd}/v1/orders"),
            json!({"customer_id": format!("c{}", i % 9), "lines": lines}),
        )
        .await;
        if s == 202 {
            let id = body["order_id"].as_str().unwrap().to_string();
            if i % 7 == 0 {
                assert_eq!(
                    post(&http, format!("{cmd}/v1/orders/{id}/cancel"), json!({})).await.0,
                    200
                );
            } else if i % 6 == 0 {
                let token = if i % 12 == 0 { "tok_decline_1" } else { "tok_visa_1234" };
                assert_eq!(
                    post(
                        &http,
                        format!("{cmd}/v1/orders/{id}/payment"),
                        json!({"payment_token": token})
                    )
                    .await
                    .0,
                    202
                );
            }
        }
        if i == 25 {
            let _ = post(
                &http,
                format!("{cmd}/v1/inventory/V-2/restock"),
                json!({"quantity": 40}),
            )
            .await;
        }
        if i == 60 {
            // A crash, not a shutdown: whatever batch was in flight is lost with the process.
            killed.take().unwrap().kill().await;
        }
        if i == 80 {
            // Two processes in one consumer group split the partitions between them.
            later.push(support::projector(&env, 20).await);
            later.push(support::projector(&env, 20).await);
        }
    }

    assert!(
        surge_testkit::count_reaches(
            &env.pool,
            "SELECT count(*) FROM pending_payments",
            0,
            Duration::from_secs(30)
        )
        .await,
        "payments settle"
    );
    let matched = eventually(Duration::from_secs(60), || async {
        views_match_event_store(&env).await.then_some(())
    })
    .await;
    assert!(matched.is_some(), "views equal the fold of the event store");

    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(dead, 0);
    let (sold, units): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT coalesce(sum(sold), 0)::bigint FROM catalog_items), \
                (SELECT coalesce(sum(units), 0)::bigint FROM sales_by_minute)",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(sold > 0, "some orders were paid");
    assert_eq!(sold, units, "sales per minute add up to what was sold");

    // A poison message goes to the dead letters; the projector keeps going.
    let producer: FutureProducer = surge_runtime::kafka::client_config(&env.kafka).create().unwrap();
    producer
        .send(
            FutureRecord::to(&env.topic(StreamType::Inventory))
                .key("inventory-V-1")
                .payload("{not an event"),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let (s, _) = post(&http, format!("{cmd}/v1/inventory/V-1/restock"), json!({"quantity": 1})).await;
    assert_eq!(s, 200);
    assert!(
        surge_testkit::count_reaches(
            &env.pool,
            "SELECT count(*) FROM dead_letters",
            1,
            Duration::from_secs(20)
        )
        .await,
        "the poison message is dead-lettered"
    );
    let matched = eventually(Duration::from_secs(20), || async {
        views_match_event_store(&env).await.then_some(())
    })
    .await;
    assert!(matched.is_some(), "the restock after the poison message is applied");

    for p in later {
        p.stop().await;
    }
    relay.stop().await;
    command.stop().await;
    env.cleanup().await;
}
