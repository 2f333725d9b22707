//! Shedding by time and sold-out answers from memory (#17): an order that would wait past the
//! latency budget is refused at once instead of queueing, and an item seen sold out is refused
//! without a turn of its lane until this instance puts stock back (or the note expires).

use crate::support::{stall, start_api_with, unthrottled, Api};
use futures::future::join_all;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use surge_command::sequencer::SequencerSettings;
use surge_testkit::TestEnv;

/// One order, with its status, Retry-After, problem body and how long the answer took.
async fn order(api: &Api, customer: &str, sku: &str, key: Option<&str>) -> (u16, Option<String>, Value, Duration) {
    let mut req = api
        .http
        .post(format!("{}/v1/orders", api.url))
        .json(&json!({"customer_id": customer, "lines": [{"sku": sku, "quantity": 1}]}));
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    let started = Instant::now();
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    let body = r.json().await.unwrap_or(Value::Null);
    (status, retry_after, body, started.elapsed())
}

async fn placed(env: &TestEnv) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'OrderPlaced'")
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_that_would_wait_past_the_budget_is_refused_at_once() {
    let env = TestEnv::new().await;
    let api = start_api_with(&env, |c| {
        unthrottled(c);
        c.order_latency_budget_ms = SequencerSettings::DEFAULT_LATENCY_BUDGET_MS;
    })
    .await;
    api.add_item("BUDGET-1", 1_000).await;
    for i in 0..3 {
        assert_eq!(order(&api, &format!("warm{i}"), "BUDGET-1", None).await.0, 202);
    }
    // A batch stalls: the order in it waits, and so would every order behind it.
    let blocker = stall(&env, "BUDGET-1").await;
    let api = std::sync::Arc::new(api);
    let stuck = {
        let api = api.clone();
        tokio::spawn(async move { order(&api, "stuck", "BUDGET-1", None).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Orders arriving now are refused while the batch is still stalled: they did not queue.
    let refused = join_all((0..20).map(|i| {
        let api = api.clone();
        async move { order(&api, &format!("late{i}"), "BUDGET-1", None).await }
    }))
    .await;
    assert!(!stuck.is_finished(), "the stalled batch is still waiting");
    for (status, retry_after, p, _) in &refused {
        assert_eq!(*status, 503, "{p}");
        assert_eq!(p["type"], "https://surge.dev/problems/hot-sku-overloaded");
        assert!(p["estimated_wait_ms"].as_u64().unwrap() >= 300, "{p}");
        let secs: u64 = retry_after.as_deref().expect("Retry-After").parse().unwrap();
        assert!(secs >= 1);
    }
    blocker.rollback().await.unwrap();
    let (status, _, body, _) = stuck.await.unwrap();
    assert_eq!(
        status, 202,
        "the stalled order is placed once the batch goes on: {body}"
    );
    // With the lane idle again, the next order is taken.
    assert_eq!(order(&api, "after", "BUDGET-1", None).await.0, 202);
    assert_eq!(placed(&env).await, 5, "a refused order leaves nothing behind");
    std::sync::Arc::try_unwrap(api).ok().unwrap().stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_budget_orders_wait_for_a_stalled_batch() {
    let env = TestEnv::new().await;
    let api = std::sync::Arc::new(
        start_api_with(&env, |c| {
            unthrottled(c);
            c.order_latency_budget_ms = 0;
        })
        .await,
    );
    api.add_item("NOBUDGET-1", 1_000).await;
    assert_eq!(order(&api, "warm", "NOBUDGET-1", None).await.0, 202);
    let blocker = stall(&env, "NOBUDGET-1").await;
    let waiting: Vec<_> = (0..5)
        .map(|i| {
            let api = api.clone();
            tokio::spawn(async move { order(&api, &format!("w{i}"), "NOBUDGET-1", None).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        waiting.iter().all(|w| !w.is_finished()),
        "queued behind the stalled batch"
    );
    blocker.rollback().await.unwrap();
    for w in waiting {
        assert_eq!(w.await.unwrap().0, 202);
    }
    assert_eq!(placed(&env).await, 6);
    std::sync::Arc::try_unwrap(api).ok().unwrap().stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sold_out_item_is_refused_from_memory_until_this_instance_puts_stock_back() {
    let env = TestEnv::new().await;
    let api = start_api_with(&env, |c| {
        c.sold_out_memo_ms = 600_000;
        c.expiry_worker = false;
        c.payment_worker = false;
    })
    .await;
    api.add_item("MEMO-1", 2).await;
    let (s, _, first, _) = order(&api, "m1", "MEMO-1", Some("memo-key-1")).await;
    assert_eq!(s, 202, "{first}");
    let (s, _, second, _) = order(&api, "m2", "MEMO-1", None).await;
    assert_eq!(s, 202, "{second}");
    let (s, _, p, _) = order(&api, "m3", "MEMO-1", None).await;
    assert_eq!(
        (s, p["type"].as_str()),
        (422, Some("https://surge.dev/problems/out-of-stock"))
    );

    // The item's stream locked by another transaction: a lane would wait for it.
    let blocker = stall(&env, "MEMO-1").await;
    let (s, _, p, took) = tokio::time::timeout(Duration::from_secs(10), order(&api, "m4", "MEMO-1", None))
        .await
        .expect("answered while the item's stream is locked: from memory");
    assert_eq!(
        (s, p["type"].as_str()),
        (422, Some("https://surge.dev/problems/out-of-stock")),
        "{p}"
    );
    assert_eq!(p["available"], 0, "{p}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // An order with an idempotency key goes to the lane (its key's first request may still be
    // in a batch somewhere): a retry of an order accepted before the sell-out gets its own
    // answer once the lane goes on.
    let api = std::sync::Arc::new(api);
    let retry = {
        let api = api.clone();
        tokio::spawn(async move { order(&api, "m1", "MEMO-1", Some("memo-key-1")).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!retry.is_finished(), "a keyed order waits for the lane");
    blocker.rollback().await.unwrap();
    let (s, _, again, _) = retry.await.unwrap();
    assert_eq!(s, 202, "{again}");
    assert_eq!(again["order_id"], first["order_id"]);
    let api = std::sync::Arc::try_unwrap(api).ok().unwrap();
    assert_eq!(placed(&env).await, 2);

    // A cancellation through this instance puts a unit back: the next order gets it.
    let order_id = second["order_id"].as_str().unwrap();
    let (s, body) = api.post(&format!("/v1/orders/{order_id}/cancel"), json!({})).await;
    assert_eq!(s, 200, "{body}");
    let (s, _, p, _) = order(&api, "m5", "MEMO-1", None).await;
    assert_eq!(s, 202, "the cancelled unit is sold again: {p}");
    let (s, _, p, _) = order(&api, "m6", "MEMO-1", None).await;
    assert_eq!(s, 422, "{p}");
    // So does a restock.
    let (s, body) = api.post("/v1/inventory/MEMO-1/restock", json!({"quantity": 1})).await;
    assert!(s == 200 || s == 202, "{s} {body}");
    let (s, _, p, _) = order(&api, "m7", "MEMO-1", None).await;
    assert_eq!(s, 202, "the restocked unit is sold: {p}");
    api.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_instances_restock_ends_the_note_by_time() {
    let env = TestEnv::new().await;
    let quiet = |id: &'static str, memo: u64| {
        move |c: &mut surge_command::CommandApiConfig| {
            c.instance_id = Some(id.into());
            c.sold_out_memo_ms = memo;
            c.expiry_worker = false;
            c.payment_worker = false;
        }
    };
    let a = start_api_with(&env, quiet("memo-a", 300)).await;
    let b = start_api_with(&env, quiet("memo-b", 300)).await;
    a.add_item("MEMO-2", 1).await;
    assert_eq!(order(&a, "x1", "MEMO-2", None).await.0, 202);
    assert_eq!(order(&a, "x2", "MEMO-2", None).await.0, 422);
    let (s, body) = b.post("/v1/inventory/MEMO-2/restock", json!({"quantity": 5})).await;
    assert!(s == 200 || s == 202, "{s} {body}");
    let sold = surge_testkit::eventually(Duration::from_secs(10), || async {
        (order(&a, "x3", "MEMO-2", None).await.0 == 202).then_some(())
    })
    .await;
    assert!(
        sold.is_some(),
        "the note expires and the lane sees the other instance's restock"
    );
    assert_eq!(
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM events WHERE event_type = 'OrderPlaced'")
            .fetch_one(&env.pool)
            .await
            .unwrap(),
        2
    );
    a.stop().await;
    b.stop().await;
    env.cleanup().await;
}
