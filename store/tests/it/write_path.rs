//! Appends clash on `(stream_id, version)` and name the stream; idempotency keys are claimed
//! once, answered and released; deadlines are claimed when due, never while a payment is
//! pending, and not twice within their lease.

use chrono::Utc;
use sqlx::PgPool;
use std::time::Duration;
use surge_events::inventory::ItemAdded;
use surge_events::{Currency, EventMetadata, InventoryEvent, Money, OrderId, Sku};
use surge_store::append::{self, StreamAppend};
use surge_store::idempotency::{self, Answer, Claim};
use surge_store::{deadlines, StoreError};

fn item_added(sku: &str, expected_version: i64) -> StreamAppend {
    let sku = Sku::parse(sku).unwrap();
    let event = InventoryEvent::ItemAdded(ItemAdded {
        sku: sku.clone(),
        name: format!("Item {sku}"),
        category: "test".into(),
        price: Money::new(1_000, Currency::parse("EUR").unwrap()).unwrap(),
        initial_stock: 5,
    });
    StreamAppend::new(sku.stream_id(), expected_version, &[event], &EventMetadata::new("test"))
}

#[sqlx::test(migrations = "../schema/migrations")]
async fn an_append_from_a_stale_version_is_a_conflict_naming_its_stream(pool: PgPool) {
    let mut tx = pool.begin().await.unwrap();
    let first = append::append(&mut tx, &[item_added("A", 0), item_added("B", 0)])
        .await
        .unwrap();
    append::commit(&pool, tx, &first).await.unwrap();
    assert_eq!(first.positions.len(), 2);
    assert_eq!(first.last_position, first.positions[1]);

    let mut tx = pool.begin().await.unwrap();
    let clash = append::append(&mut tx, &[item_added("C", 0), item_added("B", 0)]).await;
    match clash {
        Err(e @ StoreError::Conflict { .. }) => {
            assert!(e.is_conflict());
            let StoreError::Conflict { stream_id, expected } = e else {
                unreachable!()
            };
            assert_eq!((stream_id.as_str(), expected), ("inventory-B", 0));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    drop(tx);

    let b = Sku::parse("B").unwrap().stream_id();
    assert_eq!(append::stream_version(&pool, &b).await.unwrap(), 1);
    assert_eq!(append::read_stream_after(&pool, &b, 0).await.unwrap().len(), 1);
    let mut conn = pool.acquire().await.unwrap();
    let a = Sku::parse("A").unwrap().stream_id();
    append::lock_streams(&mut conn, &[a.clone(), b.clone()]).await.unwrap();
    let tail = append::read_streams_after(&mut conn, &[a, b], &[1, 0]).await.unwrap();
    assert_eq!(
        tail.iter().map(|e| e.stream_id.as_str()).collect::<Vec<_>>(),
        ["inventory-B"]
    );
}

#[sqlx::test(migrations = "../schema/migrations")]
async fn a_key_is_claimed_once_answered_and_released(pool: PgPool) {
    let claim = Claim {
        scope: "orders:c1",
        key: "k1",
        request_hash: b"h1",
    };
    let mut tx = pool.begin().await.unwrap();
    assert_eq!(idempotency::claim_many(&mut tx, &[claim]).await.unwrap(), [true]);
    let answer = Answer {
        scope: "orders:c1",
        key: "k1",
        status: 202,
        response: serde_json::json!({"ok": true}),
    };
    let order = OrderId::new();
    deadlines::insert_with_answers(&mut tx, &[(order, Utc::now())], &[answer])
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let stored = idempotency::lookup(&pool, "orders:c1", "k1").await.unwrap().unwrap();
    assert_eq!(stored.request_hash, b"h1");
    assert_eq!(stored.response, serde_json::json!({"ok": true}));

    let other = Claim { key: "k2", ..claim };
    let mut conn = pool.acquire().await.unwrap();
    assert_eq!(
        idempotency::claim_many(&mut conn, &[other, claim]).await.unwrap(),
        [true, false]
    );
    idempotency::release_many(&mut conn, &[("orders:c1", "k2")])
        .await
        .unwrap();
    assert!(idempotency::lookup(&pool, "orders:c1", "k2").await.unwrap().is_none());
}

#[sqlx::test(migrations = "../schema/migrations")]
async fn due_deadlines_are_claimed_once_and_never_while_a_payment_is_pending(pool: PgPool) {
    let (due, paying, later) = (OrderId::new(), OrderId::new(), OrderId::new());
    let past = Utc::now() - chrono::Duration::minutes(1);
    let future = Utc::now() + chrono::Duration::minutes(10);
    let mut conn = pool.acquire().await.unwrap();
    deadlines::insert_with_answers(&mut conn, &[(due, past), (paying, past), (later, future)], &[])
        .await
        .unwrap();
    sqlx::query("INSERT INTO pending_payments (order_id, payment_token) VALUES ($1, 'tok')")
        .bind(paying.0)
        .execute(&mut *conn)
        .await
        .unwrap();

    let lease = Duration::from_secs(30);
    assert_eq!(deadlines::claim_due(&pool, lease, 100).await.unwrap(), [due]);
    assert!(deadlines::claim_due(&pool, lease, 100).await.unwrap().is_empty());

    deadlines::forget_with_payment(&mut conn, paying).await.unwrap();
    deadlines::forget(&mut conn, due).await.unwrap();
    let left: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT order_id FROM reservation_deadlines")
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    assert_eq!(left, [later.0]);
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM pending_payments")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(pending, 0);
}
