//! The connection drops while the store commits: callers hear what happened, not "retry".
//! The command API's pool goes through a proxy that cuts the connection around the next
//! `COMMIT` (after Postgres committed, or before it got the `COMMIT`).

use crate::support::{start_api_with, Api};
use serde_json::{json, Value};
use surge_runtime::DatabaseConfig;
use surge_testkit::faults::{CommitCut, CommitCutProxy};
use surge_testkit::TestEnv;

/// A command API (without its workers, whose commits the cut could hit) whose database
/// connections go through the proxy, with one item of 10 in stock.
async fn start(env: &TestEnv) -> (Api, CommitCutProxy) {
    let proxy = CommitCutProxy::start(env.postgres_addr()).await;
    let url = env.url_via(proxy.addr);
    let api = start_api_with(env, |c| {
        c.db = DatabaseConfig {
            url: url.into(),
            max_connections: 4,
        };
        c.expiry_worker = false;
        c.payment_worker = false;
    })
    .await;
    api.add_item("CUT-1", 10).await;
    (api, proxy)
}

async fn place(api: &Api) -> (u16, Value) {
    // No Idempotency-Key: the caller that would retry a "failed" order and place it twice.
    api.post(
        "/v1/orders",
        json!({"customer_id": "c1", "lines": [{"sku": "CUT-1", "quantity": 1}]}),
    )
    .await
}

async fn count(env: &TestEnv, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&env.pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_to_a_commit_that_took_is_answered_with_the_order() {
    let env = TestEnv::new().await;
    let (api, proxy) = start(&env).await;

    proxy.arm(CommitCut::AfterReply);
    let (status, body) = place(&api).await;
    assert!(proxy.fired(), "the commit was cut");
    assert_eq!(status, 202, "the order was placed: {body}");
    let stored: Vec<String> = sqlx::query_scalar("SELECT stream_id FROM events WHERE stream_type = 'order'")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    assert_eq!(stored, vec![format!("order-{}", body["order_id"].as_str().unwrap())]);
    assert_eq!(
        count(&env, "SELECT count(*) FROM events WHERE event_type = 'StockReserved'").await,
        1
    );

    api.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_cut_before_it_reached_postgres_is_a_retryable_failure() {
    let env = TestEnv::new().await;
    let (api, proxy) = start(&env).await;

    proxy.arm(CommitCut::BeforeCommit);
    let (status, body) = place(&api).await;
    assert!(proxy.fired(), "the commit was cut");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["type"], "https://surge.dev/problems/unavailable");
    assert_eq!(
        count(&env, "SELECT count(*) FROM events WHERE stream_type = 'order'").await,
        0
    );
    assert_eq!(
        count(&env, "SELECT count(*) FROM events WHERE event_type = 'StockReserved'").await,
        0
    );
    // The retry the answer invites places the order once.
    let (status, body) = place(&api).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        count(&env, "SELECT count(*) FROM events WHERE stream_type = 'order'").await,
        1
    );

    api.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_outcome_cannot_be_learned_is_answered_outcome_unknown() {
    let env = TestEnv::new().await;
    let (api, proxy) = start(&env).await;

    // The reply is lost and Postgres stays unreachable while the store would ask.
    proxy.arm(CommitCut::AfterReplyAndRefuse);
    let (status, body) = place(&api).await;
    assert!(proxy.fired(), "the commit was cut");
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["type"], "https://surge.dev/problems/outcome-unknown");
    // Where to look names the order, and there it is: the commit had taken.
    let check = body["check"].as_str().expect("where to check");
    let order_id = check.strip_prefix("/v1/orders/").expect("the order's path");
    let placed: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE stream_id = $1")
        .bind(format!("order-{order_id}"))
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(placed, 1);
    proxy.restore();

    api.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_to_a_restock_that_took_is_answered_with_the_restock() {
    let env = TestEnv::new().await;
    let (api, proxy) = start(&env).await;

    proxy.arm(CommitCut::AfterReply);
    let (status, body) = api.post("/v1/inventory/CUT-1/restock", json!({"quantity": 5})).await;
    assert!(proxy.fired(), "the commit was cut");
    assert_eq!(status, 200, "the stock was added: {body}");
    assert_eq!(
        count(&env, "SELECT count(*) FROM events WHERE event_type = 'StockRestocked'").await,
        1
    );

    api.stop().await;
    env.cleanup().await;
}
