//! Edges of the replay's bulk load (in-memory fold, `COPY`): an event the views cannot fold
//! (a type or schema version this code does not know, as a newer writer leaves in the store
//! during a rolling deploy) must leave the rebuilt views as the live path leaves them, and
//! the memory bound must not change what a replay builds.

use chrono::{DateTime, Utc};
use std::time::Duration;
use surge_events::inventory::{ItemAdded, StockReserved, StockRestocked};
use surge_events::order::{OrderLine, OrderPaid, OrderPlaced, OrderShipped, PaymentSubmitted};
use surge_events::{
    Currency, CustomerId, EventEnvelope, EventMetadata, InventoryEvent, Money, OrderEvent, OrderId, Payload, Sku,
    StreamId,
};
use surge_projections::catalog::{self, CatalogRow};
use surge_projections::orders::{self, OrderRow};
use surge_projections::replay::{replay, ReplayConfig, Source};
use surge_projections::{BatchStats, Projection};
use surge_store::append::{self, StreamAppend};
use surge_testkit::TestEnv;

fn eur(minor: i64) -> Money {
    Money::new(minor, Currency::parse("EUR").unwrap()).unwrap()
}

async fn commit(pool: &sqlx::PgPool, appends: &[StreamAppend]) {
    let mut tx = pool.begin().await.unwrap();
    let committed = append::append(&mut tx, appends).await.unwrap();
    append::commit(pool, tx, &committed).await.unwrap();
}

fn on<P: Payload>(stream: StreamId, after: i64, events: &[P]) -> StreamAppend {
    StreamAppend::new(stream, after, events, &EventMetadata::new("review-replay"))
}

fn placed(order_id: OrderId, sku: &Sku) -> OrderEvent {
    OrderEvent::OrderPlaced(OrderPlaced {
        order_id,
        customer_id: CustomerId::parse("rev-1").unwrap(),
        lines: vec![OrderLine {
            sku: sku.clone(),
            quantity: 1,
            unit_price: eur(100),
            bucket: 0,
        }],
        total: eur(100),
        reservation_expires_at: DateTime::<Utc>::from_timestamp(1_900_000_000, 0).unwrap(),
    })
}

fn submitted(order_id: OrderId) -> OrderEvent {
    OrderEvent::PaymentSubmitted(PaymentSubmitted {
        order_id,
        token_fingerprint: "tok".into(),
    })
}

/// Makes the event at `version` of `stream` one this code cannot decode (a schema version
/// from a newer writer).
async fn from_the_future(pool: &sqlx::PgPool, stream: &StreamId, version: i64) {
    let changed = sqlx::query("UPDATE events SET schema_version = 99 WHERE stream_id = $1 AND version = $2")
        .bind(stream.as_str())
        .bind(version)
        .execute(pool)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(changed, 1);
}

async fn all_events(pool: &sqlx::PgPool) -> Vec<EventEnvelope> {
    let mut conn = pool.acquire().await.unwrap();
    let up_to = surge_store::safe_position(&mut conn, Duration::from_secs(5))
        .await
        .unwrap();
    surge_store::read_all(
        &mut conn,
        &surge_store::ReadAll {
            after: 0,
            up_to,
            stream_type: None,
            limit: i64::MAX,
        },
    )
    .await
    .unwrap()
}

/// The live projector's path: every event of each projection through `apply`, a few per
/// transaction, into the live tables.
async fn fold_live(pool: &sqlx::PgPool, all: &[EventEnvelope]) -> usize {
    let mut not_folded = 0;
    for p in Projection::ALL {
        let events: Vec<EventEnvelope> = all
            .iter()
            .filter(|e| e.stream_type == p.stream_type())
            .cloned()
            .collect();
        let mut stats = BatchStats::default();
        for batch in events.chunks(3) {
            let mut tx = pool.begin().await.unwrap();
            not_folded += p
                .apply(&mut tx, &p.live_tables(), batch.to_vec(), &mut stats)
                .await
                .unwrap()
                .len();
            tx.commit().await.unwrap();
        }
    }
    not_folded
}

async fn rows(pool: &sqlx::PgPool) -> (Vec<CatalogRow>, Vec<OrderRow>) {
    let mut conn = pool.acquire().await.unwrap();
    (
        catalog::load_all(&mut conn, "catalog_items").await.unwrap(),
        orders::load_all(&mut conn, "orders").await.unwrap(),
    )
}

fn config(env: &TestEnv, max_rows_in_memory: usize) -> ReplayConfig {
    ReplayConfig {
        db: env.db.clone(),
        projections: Projection::ALL.to_vec(),
        batch_size: 5,
        max_rows_in_memory,
        dry_run: false,
        source: Source::Store,
        kafka: env.kafka.clone(),
        progress: None,
    }
}

/// An order and an item, each with one undecodable event in the middle of its stream: the
/// live path (and the replay's batch path, which is the same `apply`) stops each stream at
/// the event it cannot fold, since every later event is a version gap whose healing reads
/// that event again. The bulk load's in-memory fold treats the later event as a gap "the
/// store has no events for" and folds on past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_event_leaves_the_rebuilt_views_as_the_live_path_leaves_them() {
    let env = TestEnv::new().await;
    let sku = Sku::parse("REV-ITEM").unwrap();
    let order_id = OrderId::new();
    commit(
        &env.pool,
        &[on(
            sku.stream_id(),
            0,
            &[
                InventoryEvent::ItemAdded(ItemAdded {
                    sku: sku.clone(),
                    name: "Review item".into(),
                    category: "review".into(),
                    price: eur(100),
                    initial_stock: 10,
                }),
                InventoryEvent::StockReserved(StockReserved {
                    sku: sku.clone(),
                    order_id,
                    quantity: 1,
                    expires_at: DateTime::<Utc>::from_timestamp(1_900_000_000, 0).unwrap(),
                }),
                InventoryEvent::StockRestocked(StockRestocked {
                    sku: sku.clone(),
                    quantity: 5,
                }),
            ],
        )],
    )
    .await;
    commit(
        &env.pool,
        &[on(
            order_id.stream_id(),
            0,
            &[
                placed(order_id, &sku),
                submitted(order_id),
                OrderEvent::OrderPaid(OrderPaid {
                    order_id,
                    payment_reference: "pay-rev".into(),
                    amount: eur(100),
                }),
                OrderEvent::OrderShipped(OrderShipped { order_id }),
            ],
        )],
    )
    .await;
    from_the_future(&env.pool, &sku.stream_id(), 2).await;
    from_the_future(&env.pool, &order_id.stream_id(), 2).await;

    let all = all_events(&env.pool).await;
    assert_eq!(all.len(), 7);
    let not_folded = fold_live(&env.pool, &all).await;
    assert_eq!(
        not_folded, 5,
        "live: the undecodable event and every later one of its stream (2 of the item's, 3 of the order's)"
    );
    let live = rows(&env.pool).await;
    assert_eq!(
        (live.1[0].status.as_str(), live.1[0].version),
        ("placed", 1),
        "live: the order stops at its last foldable event"
    );
    assert_eq!(
        (live.0[0].available, live.0[0].version),
        (10, 1),
        "live: the item stops there too"
    );

    replay(&config(&env, ReplayConfig::DEFAULT_MAX_ROWS_IN_MEMORY))
        .await
        .expect("replay succeeds");
    let rebuilt = rows(&env.pool).await;
    assert_eq!(
        (
            (rebuilt.0[0].available, rebuilt.0[0].version),
            (rebuilt.1[0].status.as_str(), rebuilt.1[0].version)
        ),
        (
            (live.0[0].available, live.0[0].version),
            (live.1[0].status.as_str(), live.1[0].version)
        ),
        "(item available, version), (order status, version): rebuilt vs live"
    );
    assert_eq!(rebuilt.0, live.0, "catalog_items");
    assert_eq!(rebuilt.1, live.1, "orders");
    env.cleanup().await;
}

/// The same store rebuilt with the default memory bound and with a bound of one row: the
/// views must not depend on where the bulk load hands over to the batch path. One order
/// stream of 20 002 events (past the bulk load's page of 20 000), its 20 000th undecodable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_bound_does_not_change_what_a_replay_builds() {
    let env = TestEnv::new().await;
    let sku = Sku::parse("REV-BIG").unwrap();
    let order_id = OrderId::new();
    let mut events = vec![placed(order_id, &sku)];
    events.extend((0..19_999).map(|_| submitted(order_id)));
    events.push(OrderEvent::OrderPaid(OrderPaid {
        order_id,
        payment_reference: "pay-big".into(),
        amount: eur(100),
    }));
    events.push(OrderEvent::OrderShipped(OrderShipped { order_id }));
    assert_eq!(events.len(), 20_002);
    commit(&env.pool, &[on(order_id.stream_id(), 0, &events)]).await;
    // An event of another stream type last, so that the bound's page ends below `up_to`.
    commit(
        &env.pool,
        &[on(
            sku.stream_id(),
            0,
            &[InventoryEvent::ItemAdded(ItemAdded {
                sku: sku.clone(),
                name: "Big".into(),
                category: "review".into(),
                price: eur(100),
                initial_stock: 1,
            })],
        )],
    )
    .await;
    from_the_future(&env.pool, &order_id.stream_id(), 20_000).await;

    replay(&config(&env, ReplayConfig::DEFAULT_MAX_ROWS_IN_MEMORY))
        .await
        .expect("unbounded replay succeeds");
    let unbounded = rows(&env.pool).await.1;
    replay(&config(&env, 1)).await.expect("bounded replay succeeds");
    let bounded = rows(&env.pool).await.1;
    assert_eq!(unbounded.len(), 1);
    assert_eq!(
        (unbounded[0].status.as_str(), unbounded[0].version),
        (bounded[0].status.as_str(), bounded[0].version),
        "the order rebuilt with all rows in memory vs with a bound of 1 row"
    );
    env.cleanup().await;
}

/// Control for the test above: the same long stream, every event decodable, split by the
/// bound between the bulk load's first page and the batch path, is rebuilt whole either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_split_across_the_memory_bound_is_rebuilt_whole() {
    let env = TestEnv::new().await;
    let sku = Sku::parse("REV-SPLIT").unwrap();
    let order_id = OrderId::new();
    let mut events = vec![placed(order_id, &sku)];
    events.extend((0..19_999).map(|_| submitted(order_id)));
    events.push(OrderEvent::OrderPaid(OrderPaid {
        order_id,
        payment_reference: "pay-split".into(),
        amount: eur(100),
    }));
    events.push(OrderEvent::OrderShipped(OrderShipped { order_id }));
    commit(&env.pool, &[on(order_id.stream_id(), 0, &events)]).await;
    commit(
        &env.pool,
        &[on(
            sku.stream_id(),
            0,
            &[InventoryEvent::ItemAdded(ItemAdded {
                sku: sku.clone(),
                name: "Split".into(),
                category: "review".into(),
                price: eur(100),
                initial_stock: 1,
            })],
        )],
    )
    .await;
    let reports = replay(&config(&env, 1)).await.expect("bounded replay succeeds");
    let read: u64 = reports.iter().map(|r| r.events).sum();
    assert_eq!(read, 20_003, "every event read once across the bound");
    let bounded = rows(&env.pool).await.1;
    assert_eq!((bounded[0].status.as_str(), bounded[0].version), ("shipped", 20_002));
    replay(&config(&env, ReplayConfig::DEFAULT_MAX_ROWS_IN_MEMORY))
        .await
        .expect("unbounded replay succeeds");
    assert_eq!(rows(&env.pool).await.1, bounded, "the same row either way");
    env.cleanup().await;
}
