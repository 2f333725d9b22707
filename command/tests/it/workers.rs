//! Payments settle through the gateway (paid, declined, timed out, flaky, reply lost) and unpaid
//! holds expire exactly once, even with two workers at it. A payment whose outcome is unknown
//! keeps its hold until the gateway's status of the charge answers; a captured charge that can
//! no longer be honoured is refunded.

use crate::support::start_api;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use surge_command::commands::{CommandSettings, Commands, PlaceOrder};
use surge_command::domain::OrderStatus;
use surge_command::expiry::ExpiryWorker;
use surge_command::payments::{
    ChargeOutcome, ChargeStatus, GatewayError, PaymentGateway, PaymentWorker, PaymentWorkerSettings, SimulatedGateway,
};
use surge_command::store::{EventStore, StreamAppend};
use surge_events::inventory::{InventoryEvent, ReservationExpired, ReservationReleased};
use surge_events::order::{CancelReason, OrderCancelled};
use surge_events::{Currency, CustomerId, EventMetadata, Money, OrderEvent, OrderId, Sku};
use surge_testkit::faults::TcpProxy;
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
            buckets: 1,
            max_per_customer: None,
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

fn worker<G: PaymentGateway>(c: &Commands, gateway: Arc<G>, timeout: Duration) -> PaymentWorker<G> {
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
async fn settle_until_done<G: PaymentGateway>(w: &PaymentWorker<G>, env: &TestEnv) {
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

/// Makes every pending payment due and runs one payment round.
async fn payment_round<G: PaymentGateway>(w: &PaymentWorker<G>, env: &TestEnv) {
    sqlx::query("UPDATE pending_payments SET next_attempt_at = now()")
        .execute(&env.pool)
        .await
        .unwrap();
    w.settle_due().await.unwrap();
}

/// Runs the expiry worker's rounds a few times.
async fn expiry_rounds(c: &Commands) {
    let expiry = ExpiryWorker {
        commands: c.clone(),
        poll_interval: Duration::from_millis(5),
    };
    for _ in 0..3 {
        expiry.expire_due().await.unwrap();
    }
}

/// The types of every event about `order_id` (its own stream and the SKUs'), in log order.
async fn events_of(env: &TestEnv, order_id: OrderId) -> Vec<String> {
    sqlx::query_scalar("SELECT event_type FROM events WHERE payload->>'order_id' = $1 ORDER BY position")
        .bind(order_id.0.to_string())
        .fetch_all(&env.pool)
        .await
        .unwrap()
}

async fn status(c: &Commands, id: OrderId) -> &'static str {
    c.order(id).await.unwrap().1.status.as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_ends_paid_with_the_stock_sold_never_released() {
    let env = TestEnv::new().await;
    // A short hold: it runs out while the payment's outcome is unknown.
    let c = commands(&env, Duration::from_millis(300));
    let sku = seed(&c, "LOST-1", 5).await;
    let id = order(&c, &sku, 2).await;
    c.submit_payment(id, "tok_lostreply_0001", &EventMetadata::new("test"))
        .await
        .unwrap();
    let gateway = Arc::new(SimulatedGateway::new(Duration::ZERO));
    let w = worker(&c, gateway.clone(), Duration::from_millis(200));

    // The gateway charges and the reply is lost: nothing is decided yet, the hold stays.
    payment_round(&w, &env).await;
    assert!(gateway.captured(id).is_some(), "the customer was charged");
    assert_eq!(status(&c, id).await, "payment_pending");
    tokio::time::sleep(Duration::from_millis(400)).await;
    expiry_rounds(&c).await;
    assert_eq!(status(&c, id).await, "payment_pending", "the expiry worker leaves it");
    assert_eq!(c.inventory(&sku).await.unwrap().1.reserved(), 2, "the hold is kept");

    // Every later charge loses its reply too; the status of the charge settles it.
    for _ in 0..5 {
        payment_round(&w, &env).await;
        expiry_rounds(&c).await;
    }
    assert_eq!(status(&c, id).await, "paid");
    let (_, inv) = c.inventory(&sku).await.unwrap();
    assert_eq!(
        (inv.available, inv.reserved(), inv.sold),
        (3, 0, 2),
        "sold, never resold"
    );
    let events = events_of(&env, id).await;
    for never in [
        "PaymentFailed",
        "ReservationReleased",
        "ReservationExpired",
        "OrderCancelled",
    ] {
        assert!(!events.iter().any(|e| e == never), "{never} in {events:?}");
    }
    assert!(
        gateway.status_queries(id) >= 1,
        "reconciled through the charge's status"
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pending_payments")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_charge_keeps_its_hold_until_the_status_says_not_charged() {
    let env = TestEnv::new().await;
    let c = commands(&env, Duration::from_millis(300));
    let sku = seed(&c, "PAY-2", 4).await;
    let id = order(&c, &sku, 4).await;
    c.submit_payment(id, "tok_timeout_0001", &EventMetadata::new("test"))
        .await
        .unwrap();
    let gateway = Arc::new(SimulatedGateway::new(Duration::ZERO));
    let w = worker(&c, gateway.clone(), Duration::from_millis(50));

    // Every charge attempt (3 at most) times out: the outcome is unknown each time, so the
    // order keeps waiting with its hold, also after the hold's deadline passed.
    for round in 1..=3 {
        payment_round(&w, &env).await;
        tokio::time::sleep(Duration::from_millis(if round == 1 { 400 } else { 0 })).await;
        expiry_rounds(&c).await;
        assert_eq!(status(&c, id).await, "payment_pending", "after round {round}");
        assert_eq!(c.inventory(&sku).await.unwrap().1.reserved(), 4, "after round {round}");
    }
    assert_eq!(gateway.attempts(id), 3);

    // Then the charge's status says "not charged": only now does the payment fail.
    settle_until_done(&w, &env).await;
    assert_eq!(status(&c, id).await, "payment_failed");
    assert_eq!(gateway.attempts(id), 3, "no charge beyond the bound");
    assert!(gateway.status_queries(id) >= 1, "failed on the gateway's word");
    let (_, inv) = c.inventory(&sku).await.unwrap();
    assert_eq!(
        (inv.available, inv.reserved(), inv.sold),
        (4, 0, 0),
        "the stock is back on sale"
    );
    let events = events_of(&env, id).await;
    assert_eq!(
        events.iter().filter(|e| *e == "ReservationReleased").count(),
        1,
        "{events:?}"
    );
    assert!(!events.iter().any(|e| e == "ReservationExpired"), "{events:?}");
    env.cleanup().await;
}

/// A gateway that approves the first charge and then cuts the worker's Postgres off before the
/// approval is recorded; later charges meet an outage. The charge's status still answers.
struct ApproveThenCutPostgres {
    inner: SimulatedGateway,
    proxy: Arc<TcpProxy>,
}

#[async_trait::async_trait]
impl PaymentGateway for ApproveThenCutPostgres {
    async fn charge(&self, order_id: OrderId, amount: &Money, token: &str) -> Result<ChargeOutcome, GatewayError> {
        if self.inner.attempts(order_id) > 0 {
            return Err(GatewayError::Unavailable("simulated outage".into()));
        }
        let outcome = self.inner.charge(order_id, amount, token).await?;
        self.proxy.cut();
        Ok(outcome)
    }

    async fn charge_status(&self, order_id: OrderId) -> Result<ChargeStatus, GatewayError> {
        self.inner.charge_status(order_id).await
    }

    async fn refund(&self, order_id: OrderId, reference: &str, amount: &Money) -> Result<(), GatewayError> {
        self.inner.refund(order_id, reference, amount).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_that_could_not_be_recorded_ends_paid() {
    let env = TestEnv::new().await;
    let c = commands(&env, Duration::from_secs(600));
    let sku = seed(&c, "DBCUT-1", 3).await;
    let id = order(&c, &sku, 1).await;
    c.submit_payment(id, "tok_visa_0001", &EventMetadata::new("test"))
        .await
        .unwrap();

    // The worker reaches Postgres through a proxy the gateway cuts right after approving.
    let proxy = Arc::new(TcpProxy::start(env.postgres_addr()).await);
    let pool = surge_runtime::db::connect(&surge_runtime::DatabaseConfig {
        url: env.url_via(proxy.addr).into(),
        max_connections: 4,
    })
    .await
    .unwrap();
    let worker_commands = Commands::new(EventStore::new(pool), CommandSettings::default());
    let gateway = Arc::new(ApproveThenCutPostgres {
        inner: SimulatedGateway::new(Duration::ZERO),
        proxy: proxy.clone(),
    });
    let w = worker(&worker_commands, gateway.clone(), Duration::from_secs(2));
    w.settle_due().await.unwrap();
    assert!(gateway.inner.captured(id).is_some(), "approved and captured");
    assert_eq!(status(&c, id).await, "payment_pending", "the approval was not recorded");

    proxy.restore();
    for _ in 0..6 {
        sqlx::query("UPDATE pending_payments SET next_attempt_at = now()")
            .execute(&env.pool)
            .await
            .unwrap();
        // A round may still meet a connection the cut broke; the next one reconnects.
        let _ = w.settle_due().await;
    }
    assert_eq!(status(&c, id).await, "paid");
    let (_, inv) = c.inventory(&sku).await.unwrap();
    assert_eq!((inv.available, inv.reserved(), inv.sold), (2, 0, 1));
    let events = events_of(&env, id).await;
    assert!(!events.iter().any(|e| e == "PaymentFailed"), "{events:?}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captured_charge_whose_hold_is_gone_is_refunded() {
    let env = TestEnv::new().await;
    let c = commands(&env, Duration::from_secs(600));
    let store = EventStore::new(env.pool.clone());
    let meta = EventMetadata::new("test");
    let sku = seed(&c, "REFUND-1", 10).await;
    let gateway = Arc::new(SimulatedGateway::new(Duration::ZERO));
    let w = worker(&c, gateway.clone(), Duration::from_secs(2));

    // A: still awaiting payment, but its hold was released meanwhile (as an operator's tool, or
    // the release of an earlier version of the worker, would leave it).
    let a = order(&c, &sku, 2).await;
    c.submit_payment(a, "tok_visa_0001", &meta).await.unwrap();
    let (v, _) = c.inventory(&sku).await.unwrap();
    let released = InventoryEvent::ReservationReleased(ReservationReleased {
        sku: sku.clone(),
        order_id: a,
        quantity: 2,
    });
    store
        .append(&[StreamAppend::new(sku.stream_id(), v, &[released], &meta)])
        .await
        .unwrap();

    // B: charged with the reply lost, then cancelled and its hold expired meanwhile.
    let b = order(&c, &sku, 3).await;
    c.submit_payment(b, "tok_lostreply_0002", &meta).await.unwrap();
    payment_round(&w, &env).await;
    assert!(gateway.captured(b).is_some());
    let (ov, _) = c.order(b).await.unwrap();
    let cancelled = OrderEvent::OrderCancelled(OrderCancelled {
        order_id: b,
        reason: CancelReason::ReservationExpired,
    });
    let (v, _) = c.inventory(&sku).await.unwrap();
    let expired = InventoryEvent::ReservationExpired(ReservationExpired {
        sku: sku.clone(),
        order_id: b,
        quantity: 3,
    });
    store
        .append(&[
            StreamAppend::new(b.stream_id(), ov, &[cancelled], &meta),
            StreamAppend::new(sku.stream_id(), v, &[expired], &meta),
        ])
        .await
        .unwrap();

    for _ in 0..6 {
        payment_round(&w, &env).await;
    }
    for id in [a, b] {
        let events = events_of(&env, id).await;
        assert_eq!(
            events.iter().filter(|e| *e == "PaymentRefunded").count(),
            1,
            "a refund event for the captured charge: {events:?}"
        );
        assert!(!events.iter().any(|e| e == "OrderPaid"), "{events:?}");
        assert_eq!(
            gateway.refunded(id),
            gateway.captured(id),
            "the gateway gave the money back"
        );
        assert_eq!(status(&c, id).await, "refunded");
    }
    let (_, inv) = c.inventory(&sku).await.unwrap();
    assert_eq!((inv.available, inv.reserved(), inv.sold), (10, 0, 0));
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pending_payments")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    env.cleanup().await;
}
