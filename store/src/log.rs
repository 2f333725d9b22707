//! The log as operators and analysts read it: one stream, one correlation, an export cursor
//! with filters, the import of an export, the figures of `surge stats`, and what the audit of
//! a load run asks (the orders a run placed, the head versions of its streams).

use crate::position::StoreError;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use surge_events::{EventEnvelope, OrderId, StreamId, ENVELOPE_COLUMNS};

/// What an export reads: every filter optional, positions `[from_position, up_to]`.
#[derive(Debug, Clone, Default)]
pub struct ExportFilter {
    pub stream_id: Option<String>,
    pub stream_type: Option<String>,
    pub event_types: Vec<String>,
    pub from_time: Option<DateTime<Utc>>,
    pub to_time: Option<DateTime<Utc>>,
    pub from_position: Option<i64>,
    /// The last position read: at most a [`crate::safe_position`], so that an export that
    /// continues after it later misses nothing.
    pub up_to: i64,
}

const CURSOR: &str = "surge_export";

/// Opens a server-side cursor over the filtered log, in position order, on `tx` (a
/// transaction: the cursor lives as long as it). Read it with [`fetch_export`].
pub async fn open_export(tx: &mut PgConnection, filter: &ExportFilter) -> Result<(), StoreError> {
    let declare = format!(
        "DECLARE {CURSOR} CURSOR FOR SELECT {ENVELOPE_COLUMNS} FROM events \
         WHERE ($1::text IS NULL OR stream_id = $1) AND ($2::text IS NULL OR stream_type = $2) \
           AND (cardinality($3::text[]) = 0 OR event_type = ANY($3)) \
           AND ($4::timestamptz IS NULL OR occurred_at >= $4) AND ($5::timestamptz IS NULL OR occurred_at < $5) \
           AND ($6::bigint IS NULL OR position >= $6) AND position <= $7 \
         ORDER BY position"
    );
    sqlx::query(&declare)
        .bind(&filter.stream_id)
        .bind(&filter.stream_type)
        .bind(&filter.event_types)
        .bind(filter.from_time)
        .bind(filter.to_time)
        .bind(filter.from_position)
        .bind(filter.up_to)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// The next `n` events of the export cursor (empty at its end).
pub async fn fetch_export(tx: &mut PgConnection, n: usize) -> Result<Vec<EventEnvelope>, StoreError> {
    let rows = sqlx::query(&format!("FETCH {n} FROM {CURSOR}"))
        .fetch_all(&mut *tx)
        .await?;
    Ok(rows.iter().map(EventEnvelope::from_row).collect::<Result<_, _>>()?)
}

/// Writes exported events back with their own positions (into an empty store: a restore or a
/// copy), then moves the position sequence past them.
pub async fn import(tx: &mut PgConnection, events: &[EventEnvelope]) -> Result<u64, StoreError> {
    if events.is_empty() {
        return Ok(0);
    }
    let col = |f: fn(&EventEnvelope) -> String| events.iter().map(f).collect::<Vec<_>>();
    let done = sqlx::query(
        "INSERT INTO events (position, event_id, stream_id, stream_type, version, event_type, schema_version, \
                             payload, correlation_id, causation_id, actor, occurred_at) OVERRIDING SYSTEM VALUE \
         SELECT * FROM UNNEST($1::bigint[], $2::uuid[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::int[], \
                              $8::jsonb[], $9::uuid[], $10::uuid[], $11::text[], $12::timestamptz[])",
    )
    .bind(events.iter().map(|e| e.position).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.event_id).collect::<Vec<_>>())
    .bind(col(|e| e.stream_id.0.clone()))
    .bind(col(|e| e.stream_type.as_str().to_string()))
    .bind(events.iter().map(|e| e.version).collect::<Vec<_>>())
    .bind(col(|e| e.event_type.clone()))
    .bind(events.iter().map(|e| e.schema_version).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.payload.clone()).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.metadata.correlation_id).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.metadata.causation_id).collect::<Vec<_>>())
    .bind(col(|e| e.metadata.actor.clone()))
    .bind(events.iter().map(|e| e.occurred_at).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    Ok(done.rows_affected())
}

/// After an import: new appends draw positions above every imported one.
pub async fn reset_position_sequence(tx: &mut PgConnection) -> Result<(), StoreError> {
    sqlx::query(
        "SELECT setval(pg_get_serial_sequence('events', 'position'), greatest((SELECT max(position) FROM events), 1))",
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// A stream's events in order, at most `limit`.
pub async fn stream_events(pool: &PgPool, stream_id: &str, limit: i64) -> Result<Vec<EventEnvelope>, StoreError> {
    events_where(pool, "stream_id = $1", stream_id.to_string(), limit).await
}

/// The events of one checkout (every stream it touched), in order, at most `limit`.
pub async fn correlated_events(
    pool: &PgPool,
    correlation_id: uuid::Uuid,
    limit: i64,
) -> Result<Vec<EventEnvelope>, StoreError> {
    events_where(pool, "correlation_id = $1::uuid", correlation_id.to_string(), limit).await
}

async fn events_where(
    pool: &PgPool,
    filter: &'static str,
    bind: String,
    limit: i64,
) -> Result<Vec<EventEnvelope>, StoreError> {
    let sql = format!("SELECT {ENVELOPE_COLUMNS} FROM events WHERE {filter} ORDER BY position LIMIT $2");
    let rows = sqlx::query(&sql).bind(bind).bind(limit).fetch_all(pool).await?;
    Ok(rows.iter().map(EventEnvelope::from_row).collect::<Result<_, _>>()?)
}

/// The position of the last event of `stream_id` at or before `token` (`None`: the stream had
/// no event by then): what a view row of that stream must have reached to reflect a write that
/// returned `token`.
pub async fn stream_position_at(pool: &PgPool, stream_id: &str, token: i64) -> Result<Option<i64>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT position FROM events WHERE stream_id = $1 AND position <= $2 ORDER BY version DESC LIMIT 1",
    )
    .bind(stream_id)
    .bind(token)
    .fetch_optional(pool)
    .await?)
}

/// The order ids of the `OrderPlaced` events that occurred at or after `since` with at least
/// one line on one of `skus`, in position order: what a load run that seeded those SKUs stored.
/// An order stored twice (a bug the audit looks for) is listed twice.
pub async fn orders_placed_since(
    pool: &PgPool,
    since: DateTime<Utc>,
    skus: &[String],
) -> Result<Vec<OrderId>, StoreError> {
    let ids: Vec<uuid::Uuid> = sqlx::query_scalar(
        "SELECT (payload->>'order_id')::uuid FROM events \
         WHERE event_type = 'OrderPlaced' AND occurred_at >= $1 \
           AND EXISTS (SELECT 1 FROM jsonb_array_elements(payload->'lines') l WHERE l->>'sku' = ANY($2)) \
         ORDER BY position",
    )
    .bind(since)
    .bind(skus)
    .fetch_all(pool)
    .await?;
    Ok(ids.into_iter().map(OrderId).collect())
}

/// The current version of each of `streams` that has events (a stream without any is left
/// out), in stream id order: what a view must have reached to reflect them as they are now.
pub async fn stream_heads_of(pool: &PgPool, streams: &[StreamId]) -> Result<Vec<(StreamId, i64)>, StoreError> {
    let names: Vec<&str> = streams.iter().map(StreamId::as_str).collect();
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT stream_id, max(version) FROM events WHERE stream_id = ANY($1) GROUP BY stream_id ORDER BY stream_id",
    )
    .bind(&names)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(s, v)| (StreamId(s), v)).collect())
}

/// What `surge stats` shows for a time window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowStats {
    pub orders_per_minute: Vec<(DateTime<Utc>, i64)>,
    /// SKU, units sold, revenue in minor units.
    pub top_skus: Vec<(String, i64, i64)>,
    pub reserved_orders: i64,
    pub paid_orders: i64,
    pub expired_or_released: i64,
}

/// Orders per minute, the best-selling SKUs and the fate of reservations in `[from, to)`.
pub async fn window_stats(
    pool: &PgPool,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    top: i64,
) -> Result<WindowStats, StoreError> {
    let orders_per_minute = sqlx::query_as(
        "SELECT date_trunc('minute', occurred_at) AS minute, count(*) FROM events \
         WHERE event_type = 'OrderPlaced' AND occurred_at >= $1 AND occurred_at < $2 GROUP BY 1 ORDER BY 1",
    )
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await?;
    let top_skus = sqlx::query_as(
        "SELECT payload->>'sku' AS sku, sum((payload->>'quantity')::bigint)::bigint AS units, \
                sum((payload->>'quantity')::bigint * (payload->'unit_price'->>'minor')::bigint)::bigint AS revenue \
         FROM events WHERE event_type = 'StockCommitted' AND occurred_at >= $1 AND occurred_at < $2 \
         GROUP BY 1 ORDER BY units DESC, sku LIMIT $3",
    )
    .bind(from)
    .bind(to)
    .bind(top)
    .fetch_all(pool)
    .await?;
    let (reserved_orders, paid_orders, expired_or_released): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(DISTINCT payload->>'order_id') FILTER (WHERE event_type = 'StockReserved'), \
                count(DISTINCT payload->>'order_id') FILTER (WHERE event_type = 'StockCommitted'), \
                count(DISTINCT payload->>'order_id') FILTER (WHERE event_type IN ('ReservationExpired', 'ReservationReleased')) \
         FROM events WHERE stream_type = 'inventory' AND occurred_at >= $1 AND occurred_at < $2",
    )
    .bind(from)
    .bind(to)
    .fetch_one(pool)
    .await?;
    Ok(WindowStats {
        orders_per_minute,
        top_skus,
        reserved_orders,
        paid_orders,
        expired_or_released,
    })
}
