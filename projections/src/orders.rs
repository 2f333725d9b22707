//! The orders projection: `orders` (one row per order, indexed per customer for
//! `customer_orders` listings), from order events.

use crate::copy_in::CopyIn;
use crate::view::View;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use std::collections::HashMap;
use surge_events::{EventEnvelope, OrderEvent, OrderId, StreamId, StreamOf};
use uuid::Uuid;

/// The orders view: one row per order in `orders`.
pub struct Orders;

#[async_trait]
impl View for Orders {
    type Event = OrderEvent;
    type Key = Uuid;
    type Row = OrderRow;
    type Extra = ();

    fn name(&self) -> &'static str {
        "orders"
    }
    fn tables(&self) -> &'static [&'static str] {
        &["orders"]
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
    fn version(&self, row: &OrderRow) -> i64 {
        row.version
    }
    fn fold(
        &self,
        row: Option<OrderRow>,
        env: &EventEnvelope,
        event: &OrderEvent,
        _: &mut Vec<()>,
    ) -> Option<OrderRow> {
        fold(row, env, event)
    }
    async fn load(
        &self,
        conn: &mut PgConnection,
        tables: &[String],
        keys: &[Uuid],
    ) -> Result<HashMap<Uuid, OrderRow>, sqlx::Error> {
        load(conn, &tables[0], keys).await
    }
    async fn write(
        &self,
        conn: &mut PgConnection,
        tables: &[String],
        rows: &[&OrderRow],
        _: Vec<()>,
    ) -> Result<(), sqlx::Error> {
        upsert(conn, &tables[0], rows).await
    }
    async fn versions(&self, conn: &mut PgConnection, tables: &[String]) -> Result<Vec<(Uuid, i64)>, sqlx::Error> {
        sqlx::query_as(&format!("SELECT order_id, version FROM {}", tables[0]))
            .fetch_all(conn)
            .await
    }
    async fn write_new(
        &self,
        conn: &mut PgConnection,
        tables: &[String],
        mut rows: Vec<OrderRow>,
        _: Vec<()>,
    ) -> Result<(), sqlx::Error> {
        // In key order, the primary key grows at its right edge instead of splitting pages.
        rows.sort_unstable_by_key(|r| r.order_id);
        copy_new(conn, &tables[0], &rows).await
    }
}

/// A row of `orders`: what the query side reads too.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct OrderRow {
    pub order_id: Uuid,
    pub customer_id: String,
    pub status: String,
    pub lines: serde_json::Value,
    pub total_minor: i64,
    pub currency: String,
    pub placed_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
    pub last_position: i64,
}

/// Folds one order event into the order's row (`None` stays `None` for anything but
/// `OrderPlaced`: the caller reports the missing first event).
pub fn fold(row: Option<OrderRow>, env: &EventEnvelope, event: &OrderEvent) -> Option<OrderRow> {
    let row = match (row, event) {
        (_, OrderEvent::OrderPlaced(e)) => Some(OrderRow {
            order_id: e.order_id.0,
            customer_id: e.customer_id.to_string(),
            status: "placed".into(),
            lines: serde_json::to_value(&e.lines).unwrap_or_default(),
            total_minor: e.total.minor(),
            currency: e.total.currency().as_str().to_string(),
            placed_at: env.occurred_at,
            updated_at: env.occurred_at,
            version: 0,
            last_position: 0,
        }),
        (None, _) => None,
        (Some(mut r), e) => {
            r.status = match e {
                OrderEvent::OrderPlaced(_) => "placed",
                OrderEvent::PaymentSubmitted(_) => "payment_pending",
                OrderEvent::OrderPaid(_) => "paid",
                OrderEvent::PaymentFailed(_) => "payment_failed",
                OrderEvent::OrderCancelled(_) => "cancelled",
                OrderEvent::OrderShipped(_) => "shipped",
                OrderEvent::PaymentRefunded(_) => "refunded",
            }
            .into();
            Some(r)
        }
    };
    row.map(|mut r| {
        r.version = env.version;
        r.last_position = env.position;
        r.updated_at = env.occurred_at;
        r
    })
}

pub async fn load(conn: &mut PgConnection, table: &str, ids: &[Uuid]) -> Result<HashMap<Uuid, OrderRow>, sqlx::Error> {
    let sql = format!("SELECT * FROM {table} WHERE order_id = ANY($1) FOR UPDATE");
    let rows: Vec<OrderRow> = sqlx::query_as(&sql).bind(ids).fetch_all(conn).await?;
    Ok(rows.into_iter().map(|row| (row.order_id, row)).collect())
}

pub async fn load_all(conn: &mut PgConnection, table: &str) -> Result<Vec<OrderRow>, sqlx::Error> {
    let sql = format!("SELECT * FROM {table} ORDER BY order_id");
    sqlx::query_as(&sql).fetch_all(conn).await
}

/// Writes `rows` into an empty table nobody reads yet (a replay's new generation) with `COPY`.
pub async fn copy_new(conn: &mut PgConnection, table: &str, rows: &[OrderRow]) -> Result<(), sqlx::Error> {
    let mut copy = CopyIn::start(
        conn,
        table,
        "order_id, customer_id, status, lines, total_minor, currency, placed_at, updated_at, version, last_position",
    )
    .await?;
    for r in rows {
        copy.plain(r.order_id);
        copy.text(&r.customer_id);
        copy.text(&r.status);
        copy.text(&r.lines.to_string());
        copy.plain(r.total_minor);
        copy.text(&r.currency);
        copy.timestamp(r.placed_at);
        copy.timestamp(r.updated_at);
        copy.plain(r.version);
        copy.plain(r.last_position);
        copy.end_row().await?;
    }
    copy.finish().await?;
    Ok(())
}

pub async fn upsert(conn: &mut PgConnection, table: &str, rows: &[&OrderRow]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO {table} (order_id, customer_id, status, lines, total_minor, currency, placed_at, \
                              updated_at, version, last_position) \
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::bigint[], $6::text[], \
                              $7::timestamptz[], $8::timestamptz[], $9::bigint[], $10::bigint[]) \
         ON CONFLICT (order_id) DO UPDATE SET status = EXCLUDED.status, lines = EXCLUDED.lines, \
             total_minor = EXCLUDED.total_minor, currency = EXCLUDED.currency, \
             updated_at = EXCLUDED.updated_at, version = EXCLUDED.version, \
             last_position = EXCLUDED.last_position"
    );
    sqlx::query(&sql)
        .bind(rows.iter().map(|r| r.order_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.customer_id.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.status.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.lines.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.total_minor).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.currency.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.placed_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.updated_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.version).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.last_position).collect::<Vec<_>>())
        .execute(conn)
        .await?;
    Ok(())
}
