//! Adding a view takes its table, one file with its `View` and a line in the registry: this test
//! writes such a file (payment attempts per order) and folds the store's events into it through
//! the one apply path the live projector, the heal and the replay use: re-delivered events are
//! skipped, a version gap is healed from the store, what cannot be folded is reported by index.

use async_trait::async_trait;
use chrono::Utc;
use sqlx::{PgConnection, PgPool};
use std::collections::HashMap;
use surge_events::inventory::ItemAdded;
use surge_events::order::{OrderLine, OrderPlaced, PaymentFailed, PaymentSubmitted};
use surge_events::{
    Currency, CustomerId, EventEnvelope, EventMetadata, InventoryEvent, Money, OrderEvent, OrderId, Sku, StreamId,
    StreamOf,
};
use surge_projections::view::{apply, BatchStats, View};
use surge_projections::Projection;
use surge_store::append::{self, StreamAppend};
use uuid::Uuid;

/// Payment attempts per order: how many were submitted and how many failed.
struct PaymentAttempts;

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
struct AttemptsRow {
    order_id: Uuid,
    submitted: i64,
    failed: i64,
    version: i64,
}

#[async_trait]
impl View for PaymentAttempts {
    type Event = OrderEvent;
    type Key = Uuid;
    type Row = AttemptsRow;
    type Extra = ();

    fn name(&self) -> &'static str {
        "payment_attempts"
    }
    fn tables(&self) -> &'static [&'static str] {
        &["payment_attempts"]
    }
    fn key(&self, stream: &StreamId) -> Option<Uuid> {
        match stream.parse() {
            Some(StreamOf::Order(OrderId(id))) => Some(id),
            _ => None,
        }
    }
    fn stream_id(&self, key: &Uuid) -> StreamId {
        OrderId(*key).stream_id()
    }
    fn version(&self, row: &AttemptsRow) -> i64 {
        row.version
    }
    fn fold(
        &self,
        row: Option<AttemptsRow>,
        env: &EventEnvelope,
        event: &OrderEvent,
        _: &mut Vec<()>,
    ) -> Option<AttemptsRow> {
        let mut row = match (row, event) {
            (_, OrderEvent::OrderPlaced(e)) => AttemptsRow {
                order_id: e.order_id.0,
                submitted: 0,
                failed: 0,
                version: 0,
            },
            (None, _) => return None,
            (Some(r), _) => r,
        };
        match event {
            OrderEvent::PaymentSubmitted(_) => row.submitted += 1,
            OrderEvent::PaymentFailed(_) => row.failed += 1,
            _ => {}
        }
        row.version = env.version;
        Some(row)
    }
    async fn load(
        &self,
        conn: &mut PgConnection,
        tables: &[String],
        keys: &[Uuid],
    ) -> Result<HashMap<Uuid, AttemptsRow>, sqlx::Error> {
        let rows: Vec<AttemptsRow> = sqlx::query_as(&format!(
            "SELECT * FROM {} WHERE order_id = ANY($1) FOR UPDATE",
            tables[0]
        ))
        .bind(keys)
        .fetch_all(conn)
        .await?;
        Ok(rows.into_iter().map(|r| (r.order_id, r)).collect())
    }
    async fn write(
        &self,
        conn: &mut PgConnection,
        tables: &[String],
        rows: &[&AttemptsRow],
        _: Vec<()>,
    ) -> Result<(), sqlx::Error> {
        for r in rows {
            sqlx::query(&format!(
                "INSERT INTO {} (order_id, submitted, failed, version) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (order_id) DO UPDATE SET submitted = EXCLUDED.submitted, failed = EXCLUDED.failed, \
                 version = EXCLUDED.version",
                tables[0]
            ))
            .bind(r.order_id)
            .bind(r.submitted)
            .bind(r.failed)
            .bind(r.version)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
    async fn versions(&self, conn: &mut PgConnection, tables: &[String]) -> Result<Vec<(Uuid, i64)>, sqlx::Error> {
        sqlx::query_as(&format!("SELECT order_id, version FROM {}", tables[0]))
            .fetch_all(conn)
            .await
    }
}

static ATTEMPTS: PaymentAttempts = PaymentAttempts;

fn eur(minor: i64) -> Money {
    Money::new(minor, Currency::parse("EUR").unwrap()).unwrap()
}

fn placed(order: OrderId) -> OrderEvent {
    OrderEvent::OrderPlaced(OrderPlaced {
        order_id: order,
        customer_id: CustomerId::parse("c1").unwrap(),
        lines: vec![OrderLine {
            sku: Sku::parse("A").unwrap(),
            quantity: 1,
            unit_price: eur(1_000),
            bucket: 0,
        }],
        total: eur(1_000),
        reservation_expires_at: Utc::now(),
    })
}

fn submitted(order: OrderId) -> OrderEvent {
    OrderEvent::PaymentSubmitted(PaymentSubmitted {
        order_id: order,
        token_fingerprint: "fp".into(),
    })
}

fn failed(order: OrderId) -> OrderEvent {
    OrderEvent::PaymentFailed(PaymentFailed {
        order_id: order,
        reason: "declined".into(),
    })
}

async fn append_events(pool: &PgPool, appends: &[StreamAppend]) {
    let mut tx = pool.begin().await.unwrap();
    let committed = append::append(&mut tx, appends).await.unwrap();
    append::commit(pool, tx, &committed).await.unwrap();
}

async fn stream(pool: &PgPool, id: &StreamId) -> Vec<EventEnvelope> {
    let mut conn = pool.acquire().await.unwrap();
    surge_store::read_stream(&mut conn, id, 1, i64::MAX).await.unwrap()
}

async fn row(pool: &PgPool, order: OrderId) -> Option<AttemptsRow> {
    sqlx::query_as("SELECT * FROM payment_attempts WHERE order_id = $1")
        .bind(order.0)
        .fetch_optional(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = "../schema/migrations")]
async fn a_view_written_in_one_file_folds_through_the_shared_apply_path(pool: PgPool) {
    sqlx::query(
        "CREATE TABLE payment_attempts (order_id uuid PRIMARY KEY, submitted bigint NOT NULL, \
         failed bigint NOT NULL, version bigint NOT NULL)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let order = OrderId::new();
    let meta = EventMetadata::new("test");
    let events = [placed(order), submitted(order), failed(order), submitted(order)];
    append_events(&pool, &[StreamAppend::new(order.stream_id(), 0, &events, &meta)]).await;
    let sku = Sku::parse("A").unwrap();
    let item = InventoryEvent::ItemAdded(ItemAdded {
        sku: sku.clone(),
        name: "A".into(),
        category: "test".into(),
        price: eur(1_000),
        initial_stock: 5,
    });
    append_events(&pool, &[StreamAppend::new(sku.stream_id(), 0, &[item], &meta)]).await;
    let log = stream(&pool, &order.stream_id()).await;
    assert_eq!(log.len(), 4);
    let tables = vec!["payment_attempts".to_string()];
    let p = Projection::of(&ATTEMPTS);

    // The first two events, then the second again (a re-delivery) and the fourth: the third
    // is missing and read from the store.
    let mut conn = pool.acquire().await.unwrap();
    let mut stats = BatchStats::default();
    let not_folded = p
        .apply(&mut conn, &tables, vec![log[0].clone(), log[1].clone()], &mut stats)
        .await
        .unwrap();
    assert!(not_folded.is_empty(), "{not_folded:?}");
    assert_eq!(stats.applied, 2);
    let mut stats = BatchStats::default();
    let not_folded = apply(
        &ATTEMPTS,
        &mut conn,
        &tables,
        vec![log[1].clone(), log[3].clone()],
        &mut stats,
    )
    .await
    .unwrap();
    assert!(not_folded.is_empty(), "{not_folded:?}");
    assert_eq!((stats.duplicates, stats.healed, stats.applied), (1, 1, 2));
    assert_eq!(
        row(&pool, order).await,
        Some(AttemptsRow {
            order_id: order.0,
            submitted: 2,
            failed: 1,
            version: 4,
        })
    );
    assert_eq!(
        p.versions(&mut conn, &tables).await.unwrap(),
        HashMap::from([(order.stream_id(), 4)])
    );

    // What cannot be folded is reported by its index in the input, the rest is applied: an
    // event of another stream type, and an order's payment without its OrderPlaced.
    let other = OrderId::new();
    append_events(
        &pool,
        &[StreamAppend::new(other.stream_id(), 0, &[placed(other)], &meta)],
    )
    .await;
    append_events(
        &pool,
        &[StreamAppend::new(other.stream_id(), 1, &[submitted(other)], &meta)],
    )
    .await;
    let other_log = stream(&pool, &other.stream_id()).await;
    let inventory = stream(&pool, &sku.stream_id()).await;
    let mut orphan = other_log[1].clone();
    orphan.stream_id = OrderId::new().stream_id();
    orphan.version = 1;
    let mut stats = BatchStats::default();
    let not_folded = p
        .apply(
            &mut conn,
            &tables,
            vec![inventory[0].clone(), orphan, other_log[0].clone(), other_log[1].clone()],
            &mut stats,
        )
        .await
        .unwrap();
    let indexes: Vec<usize> = not_folded.iter().map(|(i, _)| *i).collect();
    assert_eq!(indexes, vec![0, 1], "{not_folded:?}");
    assert!(
        not_folded[1].1.contains("before the stream's first event"),
        "{not_folded:?}"
    );
    assert_eq!(stats.applied, 2);
    assert_eq!(row(&pool, other).await.map(|r| (r.submitted, r.version)), Some((1, 2)));
}
