//! Healing a projection from the event store, when Kafka can no longer say what was missed.
//!
//! A checkpoint's offsets can stop meaning anything: the broker's data was replaced (a new
//! cluster), the topic was deleted and created again, or retention deleted messages the
//! projector had not read yet. The events themselves are still in the store. Healing compares
//! each stream's latest version in the store with the version its view row shows and folds the
//! missing events, with the same folds the live projector uses, on the caller's connection (in
//! the transaction that also resets the checkpoint). It reads up to the store's safe position
//! first, so no writer still in flight is left behind.

use crate::view::{BatchStats, Projection};
use sqlx::PgConnection;
use std::time::Duration;
use surge_events::{EventEnvelope, StreamId};

/// Streams folded per round trip.
const STREAMS_PER_ROUND: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum HealError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("event store: {0}")]
    Store(#[from] surge_store::StoreError),
}

/// What a heal did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HealReport {
    /// Streams whose view row was behind the store.
    pub streams: usize,
    /// Events folded into the views.
    pub events: usize,
}

/// Folds into `tables` (the projection's tables, live or a new generation, in the order
/// [`Projection::tables`] names them) every event of the store the views do not reflect yet.
pub async fn heal_from_store(
    conn: &mut PgConnection,
    p: Projection,
    tables: &[String],
) -> Result<HealReport, HealError> {
    surge_store::safe_position(conn, Duration::from_secs(30)).await?;
    let heads = surge_store::stream_heads(conn, p.stream_type()).await?;
    let seen = p.versions(conn, tables).await?;
    let behind: Vec<(StreamId, i64, i64)> = heads
        .into_iter()
        .filter_map(|(stream, head)| {
            let at = seen.get(&stream).copied().unwrap_or(0);
            (head > at).then_some((stream, at, head))
        })
        .collect();
    let mut report = HealReport {
        streams: behind.len(),
        events: 0,
    };
    for chunk in behind.chunks(STREAMS_PER_ROUND) {
        let mut events: Vec<EventEnvelope> = Vec::new();
        for (stream, at, head) in chunk {
            events.extend(surge_store::read_stream(conn, stream, at + 1, *head).await?);
        }
        report.events += fold(conn, p, tables, events).await?;
    }
    Ok(report)
}

/// Folds `events` into `tables` with the live projector's folds; returns how many applied.
pub(crate) async fn fold(
    conn: &mut PgConnection,
    p: Projection,
    tables: &[String],
    events: Vec<EventEnvelope>,
) -> Result<usize, sqlx::Error> {
    let mut stats = BatchStats::default();
    let positions: Vec<i64> = events.iter().map(|e| e.position).collect();
    for (i, error) in p.apply(conn, tables, events, &mut stats).await? {
        tracing::warn!(
            projection = p.name(),
            position = positions[i],
            error,
            "event not folded"
        );
    }
    Ok(stats.applied)
}
