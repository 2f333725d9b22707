//! Interleavings and inputs where shedding by time or the sold-out note could answer otherwise
//! than the lane would (#17; found by an adversarial review of the first version, each of
//! these failed on it): a stalled first batch, a keyed retry racing its first request, a
//! failed cancel, bad input for a sold-out item, the database work of keyed orders.

use crate::support::{stall, start_api_with, unthrottled, Api};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use surge_command::sequencer::SequencerSettings;
use surge_testkit::TestEnv;

/// One order of `lines` (`[(sku, quantity)]`): status and body.
async fn order_lines(api: &Api, customer: &str, lines: &[(&str, i64)], key: Option<&str>) -> (u16, Value) {
    let lines: Vec<Value> = lines.iter().map(|(s, q)| json!({"sku": s, "quantity": q})).collect();
    let mut req = api
        .http
        .post(format!("{}/v1/orders", api.url))
        .json(&json!({"customer_id": customer, "lines": lines}));
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// A lane that has not finished a batch yet (a new item's, or one dropped after 60 s idle)
/// has no batch time: its stalled first batch should count at once, as a later one does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_first_batch_of_a_new_lane_sheds_too() {
    let env = TestEnv::new().await;
    let api = Arc::new(
        start_api_with(&env, |c| {
            unthrottled(c);
            c.order_latency_budget_ms = SequencerSettings::DEFAULT_LATENCY_BUDGET_MS;
        })
        .await,
    );
    api.add_item("RVW-FRESH", 1_000).await;
    // No order yet: the lane is created by the first one, whose batch stalls.
    let blocker = stall(&env, "RVW-FRESH").await;
    let stuck = {
        let api = api.clone();
        tokio::spawn(async move { order_lines(&api, "first", &[("RVW-FRESH", 1)], None).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let late: Vec<_> = (0..20)
        .map(|i| {
            let api = api.clone();
            tokio::spawn(async move { order_lines(&api, &format!("late{i}"), &[("RVW-FRESH", 1)], None).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let answered_at_once = late.iter().filter(|t| t.is_finished()).count();
    assert!(!stuck.is_finished());
    blocker.rollback().await.unwrap();
    let mut statuses = Vec::new();
    for t in late {
        statuses.push(t.await.unwrap().0);
    }
    assert_eq!(stuck.await.unwrap().0, 202);
    let refused = statuses.iter().filter(|s| **s == 503).count();
    Arc::try_unwrap(api).ok().unwrap().stop().await;
    env.cleanup().await;
    assert_eq!(
        (answered_at_once, refused),
        (20, 20),
        "orders behind a first batch stalled for 1.3 s (budget 50 ms): {answered_at_once} answered \
         within 1 s, {refused} refused 503; statuses once the stall ended: {statuses:?}"
    );
}

/// Before any batch of an instance has finished, nothing says how long one takes: a lane then
/// takes one batch of orders (256) behind the one in progress, not a queue of 4,096 that could
/// take many batches to drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lane_that_knows_no_batch_time_takes_one_batch() {
    let env = TestEnv::new().await;
    let api = Arc::new(
        start_api_with(&env, |c| {
            unthrottled(c);
            // Far above the stall below: only the one-batch rule can refuse.
            c.order_latency_budget_ms = 600_000;
        })
        .await,
    );
    api.add_item("RVW-FIRST", 1_000).await;
    let blocker = stall(&env, "RVW-FIRST").await;
    let stuck = {
        let api = api.clone();
        tokio::spawn(async move { order_lines(&api, "first", &[("RVW-FIRST", 1)], None).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let queued: Vec<_> = (0..300)
        .map(|i| {
            let api = api.clone();
            tokio::spawn(async move { order_lines(&api, &format!("q{i}"), &[("RVW-FIRST", 1)], None).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let answered_while_stalled = queued.iter().filter(|t| t.is_finished()).count();
    blocker.rollback().await.unwrap();
    let mut statuses = Vec::new();
    for t in queued {
        statuses.push(t.await.unwrap().0);
    }
    assert_eq!(stuck.await.unwrap().0, 202);
    let accepted = statuses.iter().filter(|s| **s == 202).count();
    let refused = statuses.iter().filter(|s| **s == 503).count();
    Arc::try_unwrap(api).ok().unwrap().stop().await;
    env.cleanup().await;
    assert_eq!(accepted + refused, 300, "{statuses:?}");
    // Requests racing on the queue's length may let a few more in than exactly one batch.
    assert!(
        (256..=280).contains(&accepted) && answered_while_stalled == refused,
        "{accepted} accepted, {refused} refused ({answered_while_stalled} answered during the stall)"
    );
}

/// A keyed retry while its first request waits in a lane: the memo's lookup finds no stored
/// answer (the first's claim is not committed) and answers out of stock, though the first
/// request is then accepted. Stock came back through another instance (within the memo's TTL).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_keyed_retry_never_contradicts_its_first_request() {
    let env = TestEnv::new().await;
    let a = Arc::new(
        start_api_with(&env, |c| {
            unthrottled(c);
            c.instance_id = Some("rvw-a".into());
            c.sold_out_memo_ms = 600_000;
        })
        .await,
    );
    let b = start_api_with(&env, |c| {
        unthrottled(c);
        c.instance_id = Some("rvw-b".into());
    })
    .await;
    a.add_item("RVW-A1", 10).await;
    a.add_item("RVW-Y", 1).await;
    assert_eq!(order_lines(&a, "o1", &[("RVW-Y", 1)], None).await.0, 202);

    // The first request is queued in the lane of its order's hottest item, RVW-A1, whose batch
    // is slow (here: another writer holds RVW-A1's lock). Streams are locked in the order of
    // their names' hashes: RVW-A1's comes first, so the stalled batch does not hold RVW-Y's.
    let hashes: Vec<String> = sqlx::query_scalar(
        "SELECT s FROM unnest(ARRAY['inventory-RVW-A1', 'inventory-RVW-Y']) s ORDER BY hashtextextended(s, 0)",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(hashes, ["inventory-RVW-A1", "inventory-RVW-Y"]);
    let blocker = stall(&env, "RVW-A1").await;
    let lines = [("RVW-A1", 1), ("RVW-Y", 1)];
    let first = {
        let a = a.clone();
        tokio::spawn(async move { order_lines(&a, "rvw-c", &lines, Some("rvw-key")).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // RVW-Y is refused by its own lane on A (noted sold out there)...
    let (s, p) = order_lines(&a, "o2", &[("RVW-Y", 1)], None).await;
    assert_eq!(s, 422, "{p}");
    // ...and restocked through B.
    let (s, body) = b.post("/v1/inventory/RVW-Y/restock", json!({"quantity": 1})).await;
    assert!(s == 200 || s == 202, "{s} {body}");
    // The client's retry of its first request, same key, same body, to A (answered at once
    // from memory; were it queued behind the first, the stall's end lets it go on).
    let retry = {
        let a = a.clone();
        tokio::spawn(async move { order_lines(&a, "rvw-c", &lines, Some("rvw-key")).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    blocker.rollback().await.unwrap();
    let first = first.await.unwrap();
    let retry = retry.await.unwrap();
    let later = order_lines(&a, "rvw-c", &lines, Some("rvw-key")).await;
    b.stop().await;
    Arc::try_unwrap(a).ok().unwrap().stop().await;
    env.cleanup().await;
    assert_eq!(first.0, 202, "{}", first.1);
    assert_eq!(
        (later.0, &later.1["order_id"]),
        (202, &first.1["order_id"]),
        "{}",
        later.1
    );
    assert_eq!(
        (retry.0, &retry.1["order_id"]),
        (first.0, &first.1["order_id"]),
        "the retry with the first's key was answered {} {} while the first was accepted",
        retry.0,
        retry.1
    );
}

/// A cancel that fails (here of an order that does not exist: 404, which any caller may
/// send) clears every item's sold-out note, not only those it could have put back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_cancel_keeps_the_sold_out_notes() {
    let env = TestEnv::new().await;
    let api = start_api_with(&env, |c| {
        unthrottled(c);
        c.sold_out_memo_ms = 600_000;
    })
    .await;
    api.add_item("RVW-SOLD", 1).await;
    assert_eq!(order_lines(&api, "s1", &[("RVW-SOLD", 1)], None).await.0, 202);
    assert_eq!(order_lines(&api, "s2", &[("RVW-SOLD", 1)], None).await.0, 422);
    // Noted: answered from memory while the item's stream is locked.
    let blocker = stall(&env, "RVW-SOLD").await;
    let from_memory = tokio::time::timeout(
        Duration::from_secs(3),
        order_lines(&api, "s3", &[("RVW-SOLD", 1)], None),
    )
    .await;
    assert_eq!(from_memory.map(|r| r.0).ok(), Some(422), "noted sold out");
    blocker.rollback().await.unwrap();

    let nobody = uuid::Uuid::new_v4();
    let (s, body) = api.post(&format!("/v1/orders/{nobody}/cancel"), json!({})).await;
    assert_eq!(s, 404, "{body}");

    let blocker = stall(&env, "RVW-SOLD").await;
    let after = tokio::time::timeout(
        Duration::from_secs(3),
        order_lines(&api, "s4", &[("RVW-SOLD", 1)], None),
    )
    .await;
    blocker.rollback().await.unwrap();
    api.stop().await;
    env.cleanup().await;
    assert_eq!(
        after.map(|r| r.0).ok(),
        Some(422),
        "after a 404 cancel of an unknown order the item went back to its (locked) lane: no \
         answer within 3 s"
    );
}

/// What the memo answers for input the lane refuses for another reason: the problem's type
/// should not depend on whether an item was noted sold out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_memo_answers_bad_input_as_the_lane_does() {
    let env = TestEnv::new().await;
    let with_memo = start_api_with(&env, |c| {
        unthrottled(c);
        c.instance_id = Some("rvw-memo".into());
        c.sold_out_memo_ms = 600_000;
    })
    .await;
    let without = start_api_with(&env, |c| {
        unthrottled(c);
        c.instance_id = Some("rvw-nomemo".into());
        c.sold_out_memo_ms = 0;
    })
    .await;
    with_memo.add_item("RVW-Q", 1).await;
    assert_eq!(order_lines(&with_memo, "q1", &[("RVW-Q", 1)], None).await.0, 202);
    assert_eq!(order_lines(&with_memo, "q2", &[("RVW-Q", 1)], None).await.0, 422);
    let inputs: Vec<Vec<(&str, i64)>> = vec![
        vec![("RVW-Q", 0)],
        vec![("RVW-Q", -3)],
        vec![("RVW-Q", 10_001)],
        vec![("RVW-NOPE", 1), ("RVW-Q", 1)],
    ];
    let mut differ = Vec::new();
    for lines in &inputs {
        let (s1, p1) = order_lines(&with_memo, "q3", lines, None).await;
        let (s2, p2) = order_lines(&without, "q3", lines, None).await;
        if (s1, &p1["type"]) != (s2, &p2["type"]) {
            differ.push(format!(
                "{lines:?}: memo {s1} {} / lane {s2} {}",
                p1["type"], p2["type"]
            ));
        }
    }
    with_memo.stop().await;
    without.stop().await;
    env.cleanup().await;
    assert!(differ.is_empty(), "{differ:#?}");
}

/// Transactions the test's database committed so far (read after the API stopped: a closed
/// connection's counts are flushed at once).
async fn committed_transactions(env: &TestEnv) -> i64 {
    tokio::time::sleep(Duration::from_millis(500)).await;
    sqlx::query_scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

/// Keyed orders (every shopper of the demo sends a key) for an item noted sold out: each is
/// looked up alone before the memo answers, where the lane refuses hundreds per transaction.
async fn keyed_orders_for_a_sold_out_item(memo_ms: u64) -> i64 {
    use futures::StreamExt;
    let env = TestEnv::new().await;
    let api = start_api_with(&env, |c| {
        unthrottled(c);
        c.sold_out_memo_ms = memo_ms;
    })
    .await;
    api.add_item("RVW-LOAD", 1).await;
    assert_eq!(order_lines(&api, "l0", &[("RVW-LOAD", 1)], None).await.0, 202);
    assert_eq!(order_lines(&api, "l1", &[("RVW-LOAD", 1)], None).await.0, 422);
    let statuses: Vec<u16> = futures::stream::iter(0..2_000)
        .map(|i| {
            let api = &api;
            async move {
                order_lines(api, &format!("k{i}"), &[("RVW-LOAD", 1)], Some(&format!("key-{i}")))
                    .await
                    .0
            }
        })
        .buffer_unordered(200)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 422));
    api.stop().await;
    let n = committed_transactions(&env).await;
    env.cleanup().await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_memo_spares_the_database_work_for_keyed_orders() {
    let from_memory = keyed_orders_for_a_sold_out_item(600_000).await;
    let by_the_lane = keyed_orders_for_a_sold_out_item(0).await;
    // Some slack: counts of connections still closing may come late.
    assert!(
        from_memory <= 2 * by_the_lane + 50,
        "2000 keyed orders refused out of stock: {from_memory} transactions committed with the \
         memo, {by_the_lane} without it"
    );
}
