//! Payments settle through the gateway (paid, declined, timed out, flaky) and unpaid holds
//! expire exactly once, even with two workers at it.

use crate::support::start_api;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use surge_command::commands::{CommandSettings, Commands, PlaceOrder};
use surge_command::domain::OrderStatus;
use surge_command::expiry::ExpiryWorker;
use surge_command::payments::{PaymentWorker, PaymentWorkerSettings, SimulatedGateway};
use surge_command::store::EventStore;
use surge_events::{Currency, CustomerId, EventMetadata, Money, OrderId, Sku};
use surge_testkit::TestEnv;

fn commands(env: &TestEnv, ttl: Duration) -> Commands {
    Commands::new(
        EventStore::new(env.pool.clone()),
        CommandSettings {
            reservation_ttl: ttl,
            ..CommandSettings::default()
        },
    )
}

async fn seed(c: &Commands, sku: &str, stock: i64) -> Sku {
    let sku = Sku::parse(sku).unwrap();
    c.add_item(
        surge_command::commands::AddItem {
            sku: sku.clone(),
            name: "Item".into(),
            category: "test".into(),
            price: Money::new(500, Currency::parse("EUR").unwrap()).unwrap(),
            initial_stock: stock,
        },
        &EventMetadata::new("test"),
    )
    .await
    .unwrap();
    sku
}

async fn order(c: &Commands, sku: &Sku, qty: i64) -> OrderId {
    c.place_order(
        PlaceOrder {
            customer_id: CustomerId::parse("dana").unwrap(),
            lines: vec![(sku.clone(), qty)],
        },
        None,
        &EventMetadata::new("test"),
    )
    .await
    .unwrap()
    .order_id
}

fn worker(c: &Commands, gateway: Arc<SimulatedGateway>, timeout: Duration) -> PaymentWorker<SimulatedGateway> {
    PaymentWorker {
        commands: c.clone(),
        gateway,
        settings: PaymentWorkerSettings {
            gateway_timeout: timeout,
            max_attempts: 3,
            poll_interval: Duration::from_millis(10),
            lease: Duration::from_secs(60),
        },
        breaker: surge_command::payments::gateway_breaker(),
    }
}

/// Runs payment rounds until nothing is pending; retries are made due at once (no backoff wait).
async fn settle_until_done(w: &PaymentWorker<SimulatedGateway>, env: &TestEnv) {
    surge_testkit::eventually(Duration::from_secs(20), || async {
        sqlx::query("UPDATE pending_payments SET next_attempt_at = now()")
            .execute(&env.pool)
            .await
            .unwrap();
        w.settle_due().await.unwrap();
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pending_payments")
            .fetch_one(&env.pool)
            .await
            .unwrap();
        (left == 0).then_some(())
    })
    .await
    .expect("every payment settles");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_end_paid_or_failed_with_stock_released() {
    let env = TestEnv::new().await;
    let c = commands(&env, Duration::from_secs(600));
    let sku = seed(&c, "PAY-1", 10).await;
    let meta = EventMetadata::new("test");
    let paid = order(&c, &sku, 2).await;
    let declined = order(&c, &sku, 3).await;
    let flaky = order(&c, &sku, 1).await;
    c.submit_payment(paid, "tok_visa_4242", &meta).await.unwrap();
    c.submit_payment(declined, "tok_decline_0002", &meta).await.unwrap();
    c.submit_payment(flaky, "tok_flaky_0003", &meta).await.unwrap();

    // Paying twice is refused while the first payment is pending.
    assert!(c.submit_payment(paid, "tok_visa_4242", &meta).await.is_err());

    let gateway = Arc::new(SimulatedGateway::new(Duration::from_millis(5)));
    let w = worker(&c, gateway.clone(), Duration::from_secs(2));
    settle_until_done(&w, &env).await;

    assert_eq!(c.order(paid).await.unwrap().1.status, OrderStatus::Paid);
    assert_eq!(c.order(declined).await.unwrap().1.status, OrderStatus::PaymentFailed);
    assert_eq!(c.order(flaky).await.unwrap().1.status, OrderStatus::Paid);
    assert_eq!(gateway.attempts(flaky), 2, "one outage, one success");
    let (_, inv) = c.inventory(&sku).await.unwrap();
    assert_eq!(
        (inv.available, inv.reserved(), inv.sold),
        (7, 0, 3),
        "declined stock is back on sale"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_never_answers_fails_the_payment_after_bounded_attempts() {
    let env = TestEnv::new().await;
    let c = commands(&env, Duration::from_secs(600));
    let sku = seed(&c, "PAY-2", 4).await;
    let id = order(&c, &sku, 4).await;
    c.submit_payment(id, "tok_timeout_0001", &EventMetadata::new("test"))
        .await
        .unwrap();
    let gateway = Arc::new(SimulatedGateway::new(Duration::ZERO));
    let w = worker(&c, gateway.clone(), Duration::from_millis(50));
    settle_until_done(&w, &env).await;
    assert_eq!(c.order(id).await.unwrap().1.status, OrderStatus::PaymentFailed);
    assert_eq!(gateway.attempts(id), 3);
    assert_eq!(c.inventory(&sku).await.unwrap().1.available, 4);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn card_numbers_are_refused_and_never_stored() {
    let env = TestEnv::new().await;
    let api = start_api(&env).await;
    api.add_item("PAN-1", 5).await;
    let (s, placed) = api
        .post(
            "/v1/orders",
            json!({"customer_id": "eve", "lines": [{"sku": "PAN-1", "quantity": 1}]}),
        )
        .await;
    assert_eq!(s, 202);
    let id = placed["order_id"].as_str().unwrap();
    let (s, p) = api
        .post(
            &format!("/v1/orders/{id}/payment"),
            json!({"payment_token": "4242 4242 4242 4242"}),
        )
        .await;
    assert_eq!(
        (s, p["type"].as_str().unwrap()),
        (422, "https://surge.dev/problems/card-number-rejected")
    );
    let (s, p) = api
        .post(
            &format!("/v1/orders/{id}/payment"),
            json!({"card_number": "4242424242424242"}),
        )
        .await;
    assert_eq!(
        (s, p["type"].as_str().unwrap()),
        (400, "https://surge.dev/problems/invalid-body")
    );
    assert!(
        !p.to_string().contains("4242424242424242"),
        "the problem does not echo the number"
    );
    let leaked: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM events WHERE payload::text ~ '4242') + (SELECT count(*) FROM pending_payments)",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(leaked, 0);
    let (s, p) = api
        .post(
            &format!("/v1/orders/{id}/payment"),
            json!({"payment_token": "tok_visa_ok01"}),
        )
        .await;
    assert_eq!((s, p["status"].as_str().unwrap()), (202, "payment_pending"));
    api.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unpaid_holds_expire_exactly_once_with_two_workers() {
    let env = TestEnv::new().await;
    let c = commands(&env, Duration::from_millis(300));
    let sku = seed(&c, "EXP-1", 20).await;
    let mut ids = Vec::new();
    for _ in 0..8 {
        ids.push(order(&c, &sku, 2).await);
    }
    // One of them is paid before its hold runs out: it must not expire.
    c.submit_payment(ids[0], "tok_visa_0001", &EventMetadata::new("test"))
        .await
        .unwrap();
    worker(
        &c,
        Arc::new(SimulatedGateway::new(Duration::ZERO)),
        Duration::from_secs(2),
    )
    .settle_due()
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;

    let (a, b) = (
        ExpiryWorker {
            commands: c.clone(),
            poll_interval: Duration::from_millis(5),
        },
        ExpiryWorker {
            commands: commands(&env, Duration::from_millis(300)),
            poll_interval: Duration::from_millis(5),
        },
    );
    for _ in 0..5 {
        let (x, y) = tokio::join!(a.expire_due(), b.expire_due());
        x.unwrap();
        y.unwrap();
    }
    let per_order: Vec<(String, i64)> = sqlx::query_as(
        "SELECT event_type, count(*) FROM events WHERE event_type IN ('OrderCancelled', 'ReservationExpired') \
         GROUP BY event_type ORDER BY event_type",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        per_order,
        vec![("OrderCancelled".into(), 7), ("ReservationExpired".into(), 7)]
    );
    for id in &ids[1..] {
        assert_eq!(c.order(*id).await.unwrap().1.status, OrderStatus::Cancelled);
    }
    assert_eq!(c.order(ids[0]).await.unwrap().1.status, OrderStatus::Paid);
    let (_, inv) = c.inventory(&sku).await.unwrap();
    assert_eq!((inv.available, inv.reserved(), inv.sold), (18, 0, 2));
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM reservation_deadlines")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    env.cleanup().await;
}
