//! A flash sale on one SKU: never oversell, never a duplicate order, every accepted order on
//! Kafka exactly once and in stream order.

use crate::support::{read_topic, start_api, start_relay, versions_by_stream};
use futures::future::join_all;
use serde_json::json;
use std::collections::HashSet;
use surge_events::StreamType;
use surge_testkit::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_shoppers_fifty_units_exactly_fifty_orders() {
    let env = TestEnv::new().await;
    let api = start_api(&env).await;
    api.add_item("HOT-1", 50).await;
    let (relay_stop, relay) = start_relay(&env).await;

    let attempts = (0..200).map(|i| {
        let api = &api;
        async move {
            api.post(
                "/v1/orders",
                json!({"customer_id": format!("c{i}"), "lines": [{"sku": "HOT-1", "quantity": 1}]}),
            )
            .await
        }
    });
    let results = join_all(attempts).await;
    let accepted: Vec<_> = results.iter().filter(|(s, _)| *s == 202).collect();
    let refused: Vec<_> = results.iter().filter(|(s, _)| *s == 422).collect();
    assert_eq!(accepted.len(), 50, "exactly the stock: {:?}", &results[..3]);
    assert_eq!(refused.len(), 150);
    for (_, body) in &refused {
        assert_eq!(body["type"], "https://surge.dev/problems/out-of-stock");
        assert_eq!(body["available"], 0);
    }

    // Stock never negative: replay the SKU's stream and check after every event.
    let quantities: Vec<(String, serde_json::Value)> =
        sqlx::query_as("SELECT event_type, payload FROM events WHERE stream_id = 'inventory-HOT-1' ORDER BY version")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    let mut available = 0i64;
    for (t, p) in &quantities {
        match t.as_str() {
            "ItemAdded" => available = p["initial_stock"].as_i64().unwrap(),
            "StockReserved" => available -= p["quantity"].as_i64().unwrap(),
            other => panic!("unexpected {other}"),
        }
        assert!(available >= 0);
    }
    assert_eq!(available, 0);

    // Kafka: every accepted order's events exactly once, each stream in version order.
    let orders = read_topic(&env, StreamType::Order, |seen| seen.len() >= 50).await;
    let inventory = read_topic(&env, StreamType::Inventory, |seen| seen.len() >= 51).await;
    assert_eq!(orders.len(), 50, "each OrderPlaced once");
    assert_eq!(inventory.len(), 51, "ItemAdded + 50 StockReserved, once each");
    let accepted_ids: HashSet<String> = accepted
        .iter()
        .map(|(_, b)| format!("order-{}", b["order_id"].as_str().unwrap()))
        .collect();
    let published_ids: HashSet<String> = orders.iter().map(|e| e.stream_id.0.clone()).collect();
    assert_eq!(accepted_ids, published_ids);
    assert_eq!(
        versions_by_stream(&inventory)["inventory-HOT-1"],
        (1..=51).collect::<Vec<_>>()
    );

    relay_stop.cancel();
    relay.await.unwrap();
    api.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_idempotency_key_ten_times_at_once_makes_one_order() {
    let env = TestEnv::new().await;
    let api = start_api(&env).await;
    api.add_item("SKU-I", 100).await;
    let body = json!({"customer_id": "bob", "lines": [{"sku": "SKU-I", "quantity": 2}]});
    let sends = (0..10).map(|_| {
        let (http, url, body) = (api.http.clone(), format!("{}/v1/orders", api.url), body.clone());
        async move {
            let r = http
                .post(url)
                .header("idempotency-key", "checkout-42")
                .json(&body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<serde_json::Value>().await.unwrap())
        }
    });
    let results = join_all(sends).await;
    assert!(results.iter().all(|(s, _)| *s == 202), "{results:?}");
    let ids: HashSet<&str> = results.iter().map(|(_, b)| b["order_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 1, "one order for one key");
    let placed: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'OrderPlaced'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(placed, 1);
    let reserved: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'StockReserved'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(reserved, 1);

    // The same key with another body is refused, and the first answer stands.
    let r = api
        .http
        .post(format!("{}/v1/orders", api.url))
        .header("idempotency-key", "checkout-42")
        .json(&json!({"customer_id": "bob", "lines": [{"sku": "SKU-I", "quantity": 3}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 422);
    let problem: serde_json::Value = r.json().await.unwrap();
    assert_eq!(problem["type"], "https://surge.dev/problems/idempotency-key-reused");

    api.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multi_sku_orders_reserve_all_lines_or_none() {
    let env = TestEnv::new().await;
    let api = start_api(&env).await;
    api.add_item("A-1", 5).await;
    api.add_item("B-1", 1).await;
    let order = |qa: i64, qb: i64| json!({"customer_id": "carol", "lines": [{"sku": "A-1", "quantity": qa}, {"sku": "B-1", "quantity": qb}]});
    let (s, body) = api.post("/v1/orders", order(2, 2)).await;
    assert_eq!(s, 422, "{body}");
    assert_eq!(body["sku"], "B-1");
    let reserved: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'StockReserved'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(reserved, 0, "nothing of A-1 was held for a refused order");
    let (s, body) = api.post("/v1/orders", order(2, 1)).await;
    assert_eq!(s, 202, "{body}");
    assert_eq!(body["total"]["minor"], 3000);

    // Cancel puts both lines back.
    let id = body["order_id"].as_str().unwrap();
    let (s, _) = api.post(&format!("/v1/orders/{id}/cancel"), json!({})).await;
    assert_eq!(s, 200);
    let (s, body) = api.post(&format!("/v1/orders/{id}/cancel"), json!({})).await;
    assert_eq!(s, 422, "cancelling twice is refused: {body}");
    let (s, _) = api.post("/v1/orders", order(5, 1)).await;
    assert_eq!(s, 202, "all stock is back after the cancel");

    api.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_command_api_processes_never_oversell_together() {
    let env = TestEnv::new().await;
    let (a, b) = (start_api(&env).await, start_api(&env).await);
    a.add_item("HOT-2", 40).await;
    a.add_item("COLD-2", 1000).await;
    let attempts = (0..160).map(|i| {
        let api = if i % 2 == 0 { &a } else { &b };
        let mut lines = vec![json!({"sku": "HOT-2", "quantity": 1})];
        if i % 4 == 1 {
            lines.push(json!({"sku": "COLD-2", "quantity": 1}));
        }
        async move {
            api.post("/v1/orders", json!({"customer_id": format!("m{i}"), "lines": lines}))
                .await
        }
    });
    let results = join_all(attempts).await;
    let accepted = results.iter().filter(|(s, _)| *s == 202).count();
    // Each process has its own lane for the SKU; the event store's version check arbitrates.
    assert_eq!(
        accepted,
        40,
        "{:?}",
        results
            .iter()
            .filter(|(s, _)| *s != 202 && *s != 422)
            .take(3)
            .collect::<Vec<_>>()
    );
    assert!(results.iter().all(|(s, _)| *s == 202 || *s == 422));
    let reserved: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum((payload->>'quantity')::bigint), 0)::bigint FROM events \
         WHERE event_type = 'StockReserved' AND stream_id = 'inventory-HOT-2'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(reserved, 40);
    a.stop().await;
    b.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_lane_refuses_at_once_with_its_depth_and_wait() {
    let env = TestEnv::new().await;
    let api = crate::support::start_api_with(&env, |c| c.sku_queue_depth = 1).await;
    api.add_item("FULL-1", 1000).await;
    let attempts = (0..150).map(|i| {
        let api = &api;
        async move {
            api.post(
                "/v1/orders",
                json!({"customer_id": format!("q{i}"), "lines": [{"sku": "FULL-1", "quantity": 1}]}),
            )
            .await
        }
    });
    let results = join_all(attempts).await;
    let shed: Vec<_> = results.iter().filter(|(s, _)| *s == 503).collect();
    assert!(
        results.iter().all(|(s, _)| *s == 202 || *s == 503),
        "only accepted or shed"
    );
    assert!(
        !shed.is_empty(),
        "a one-order queue overflows under 150 concurrent orders"
    );
    for (_, p) in &shed {
        assert_eq!(p["type"], "https://surge.dev/problems/hot-sku-overloaded");
        assert!(p["queue_depth"].as_u64().is_some() && p["estimated_wait_ms"].as_u64().is_some());
    }
    let accepted = results.iter().filter(|(s, _)| *s == 202).count() as i64;
    let placed: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'OrderPlaced'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(placed, accepted, "a shed order leaves nothing behind");
    api.stop().await;
    env.cleanup().await;
}
