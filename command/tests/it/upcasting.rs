//! Events stored under an old schema version are upcast on read: an `OrderPlaced` v1 row,
//! written straight into the table as an old release wrote it, loads and acts as v2.

use serde_json::json;
use surge_command::commands::{AddItem, CommandSettings, Commands};
use surge_command::domain::OrderStatus;
use surge_command::store::EventStore;
use surge_events::order::CancelReason;
use surge_events::{Currency, EventMetadata, Money, OrderId, Sku};
use surge_testkit::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_placed_v1_rows_are_read_as_v2() {
    let env = TestEnv::new().await;
    let c = Commands::new(EventStore::new(env.pool.clone()), CommandSettings::default());
    let meta = EventMetadata::new("test");
    let sku = Sku::parse("UP-1").unwrap();
    c.add_item(
        AddItem {
            sku: sku.clone(),
            name: "Old".into(),
            category: "legacy".into(),
            price: Money::new(500, Currency::parse("EUR").unwrap()).unwrap(),
            initial_stock: 10,
            buckets: 1,
            max_per_customer: None,
        },
        &meta,
    )
    .await
    .unwrap();
    let order = OrderId::new();
    let expires = chrono::Utc::now() + chrono::Duration::minutes(10);
    // As the release before multi-currency wrote them: no currency anywhere.
    let v1 = json!({"order_id": order.0, "customer_id": "old-timer",
                    "lines": [{"sku": "UP-1", "quantity": 2, "unit_price_minor": 500}],
                    "total_minor": 1000, "reservation_expires_at": expires});
    let reserved = json!({"sku": "UP-1", "order_id": order.0, "quantity": 2, "expires_at": expires});
    for (stream, stream_type, version, event_type, schema_version, payload) in [
        (format!("inventory-{sku}"), "inventory", 2, "StockReserved", 1, reserved),
        (format!("order-{}", order.0), "order", 1, "OrderPlaced", 1, v1),
    ] {
        sqlx::query(
            "INSERT INTO events (event_id, stream_id, stream_type, version, event_type, schema_version, payload, correlation_id, actor) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $1, 'legacy')",
        )
        .bind(uuid::Uuid::now_v7())
        .bind(stream)
        .bind(stream_type)
        .bind(version as i64)
        .bind(event_type)
        .bind(schema_version)
        .bind(payload)
        .execute(&env.pool)
        .await
        .unwrap();
    }

    let (_, state) = c.order(order).await.unwrap();
    assert_eq!(state.status, OrderStatus::Placed);
    assert_eq!(
        state.total,
        Some(Money::new(1000, Currency::parse("EUR").unwrap()).unwrap())
    );
    assert_eq!(state.lines[0].unit_price.currency().as_str(), "EUR");
    // It acts like any order: cancelling it releases its stock.
    c.cancel_order(order, CancelReason::CustomerRequest, &meta)
        .await
        .unwrap();
    let (_, inv) = c.inventory(&sku).await.unwrap();
    assert_eq!((inv.available, inv.reserved()), (10, 0));
    // New writes use the current version.
    let v: i32 = sqlx::query_scalar("SELECT max(schema_version) FROM events WHERE event_type = 'OrderCancelled'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(v, 1);
    env.cleanup().await;
}
