//! What the audit of a load run reads through the store: the orders placed since a time on
//! some SKUs, and the head versions of a set of streams.

use chrono::Utc;
use sqlx::PgPool;
use surge_events::inventory::{ItemAdded, StockRestocked};
use surge_events::order::{OrderLine, OrderPlaced};
use surge_events::{Currency, CustomerId, EventMetadata, InventoryEvent, Money, OrderEvent, OrderId, Sku, StreamId};
use surge_store::append::{self, StreamAppend};
use surge_store::log;

fn eur(minor: i64) -> Money {
    Money::new(minor, Currency::parse("EUR").unwrap()).unwrap()
}

fn item_added(sku: &str) -> StreamAppend {
    let sku = Sku::parse(sku).unwrap();
    let event = InventoryEvent::ItemAdded(ItemAdded {
        sku: sku.clone(),
        name: format!("Item {sku}"),
        category: "test".into(),
        price: eur(1_000),
        initial_stock: 5,
    });
    StreamAppend::new(sku.stream_id(), 0, &[event], &EventMetadata::new("test"))
}

fn order_placed(order: OrderId, skus: &[&str]) -> StreamAppend {
    let event = OrderEvent::OrderPlaced(OrderPlaced {
        order_id: order,
        customer_id: CustomerId::parse("c1").unwrap(),
        lines: skus
            .iter()
            .map(|s| OrderLine {
                sku: Sku::parse(*s).unwrap(),
                quantity: 1,
                unit_price: eur(1_000),
                bucket: 0,
            })
            .collect(),
        total: eur(1_000 * skus.len() as i64),
        reservation_expires_at: Utc::now(),
    });
    StreamAppend::new(order.stream_id(), 0, &[event], &EventMetadata::new("test"))
}

async fn append_all(pool: &PgPool, appends: &[StreamAppend]) {
    let mut tx = pool.begin().await.unwrap();
    let committed = append::append(&mut tx, appends).await.unwrap();
    append::commit(pool, tx, &committed).await.unwrap();
}

#[sqlx::test(migrations = "../schema/migrations")]
async fn a_runs_orders_are_those_placed_since_its_start_on_its_skus(pool: PgPool) {
    let before = Utc::now() - chrono::Duration::seconds(1);
    append_all(&pool, &[item_added("A"), item_added("B"), item_added("C")]).await;
    let (on_a, on_c, on_b_and_c) = (OrderId::new(), OrderId::new(), OrderId::new());
    append_all(&pool, &[order_placed(on_a, &["A"]), order_placed(on_c, &["C"])]).await;
    append_all(&pool, &[order_placed(on_b_and_c, &["C", "B"])]).await;

    let skus = ["A".to_string(), "B".to_string()];
    assert_eq!(
        log::orders_placed_since(&pool, before, &skus).await.unwrap(),
        [on_a, on_b_and_c],
        "in position order, only orders with a line on A or B"
    );
    let later = Utc::now() + chrono::Duration::seconds(1);
    assert!(log::orders_placed_since(&pool, later, &skus).await.unwrap().is_empty());
    assert!(log::orders_placed_since(&pool, before, &["Z".to_string()])
        .await
        .unwrap()
        .is_empty());
}

#[sqlx::test(migrations = "../schema/migrations")]
async fn the_heads_of_some_streams_are_their_current_versions(pool: PgPool) {
    append_all(&pool, &[item_added("A"), item_added("B")]).await;
    let a = Sku::parse("A").unwrap();
    let restock = InventoryEvent::StockRestocked(StockRestocked {
        sku: a.clone(),
        quantity: 3,
    });
    append_all(
        &pool,
        &[StreamAppend::new(
            a.stream_id(),
            1,
            &[restock.clone(), restock],
            &EventMetadata::new("test"),
        )],
    )
    .await;

    let streams = [
        Sku::parse("B").unwrap().stream_id(),
        a.stream_id(),
        StreamId("inventory-NONE".into()),
    ];
    assert_eq!(
        log::stream_heads_of(&pool, &streams).await.unwrap(),
        [(a.stream_id(), 3), (Sku::parse("B").unwrap().stream_id(), 1)],
        "in stream id order; a stream without events is left out"
    );
    assert!(log::stream_heads_of(&pool, &[]).await.unwrap().is_empty());
}
