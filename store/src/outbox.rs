//! The transactional outbox: positions written with their events, read by the relay in
//! position order and deleted once Kafka has them. A queue, not a cursor: a transaction that
//! commits late adds its rows later and they are read then, so nothing is skipped.

use crate::position::StoreError;
use sqlx::PgConnection;
use surge_events::EventEnvelope;

/// The oldest `limit` events not yet published, in position order.
pub async fn read_batch(conn: &mut PgConnection, limit: i64) -> Result<Vec<EventEnvelope>, StoreError> {
    let rows =
        sqlx::query("SELECT e.* FROM outbox o JOIN events e ON e.position = o.position ORDER BY o.position LIMIT $1")
            .bind(limit)
            .fetch_all(conn)
            .await?;
    Ok(rows.iter().map(EventEnvelope::from_row).collect::<Result<_, _>>()?)
}

/// Forgets published events.
pub async fn delete(conn: &mut PgConnection, positions: &[i64]) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM outbox WHERE position = ANY($1)")
        .bind(positions)
        .execute(conn)
        .await?;
    Ok(())
}

/// Events waiting to be published (counted up to a million).
pub async fn backlog(conn: &mut PgConnection) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM (SELECT 1 FROM outbox LIMIT 1000000) b")
            .fetch_one(conn)
            .await?,
    )
}
