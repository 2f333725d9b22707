//! Safe reads of the log by global position.
//!
//! The mechanism: a reader takes one snapshot and, in the same statement, the highest visible
//! position `top`; then it draws a fresh transaction id `R`. Every event at or below `top`
//! that is not visible yet belongs to a transaction that already had its id when the snapshot
//! was taken (the append assigns the id before it draws positions: [`crate::append::append`]
//! has `pg_current_xact_id()` as a one-time filter of its insert), and any such id
//! is either in the snapshot's `xip` list or at or above its `xmax` (ids assigned after the
//! last completed one are not listed) and below `R`. So once every transaction of
//! `xip ∪ [xmax, R)` has ended, committed or rolled back, the events at or below `top` are
//! final: `top` is safe. Writers pay nothing; a reader waits at most as long as the writers
//! that were in flight when it asked (a lane batch: milliseconds).

use sqlx::PgConnection;
use std::time::{Duration, Instant};
use surge_events::{EventEnvelope, StreamId, StreamType, ENVELOPE_COLUMNS};

pub use crate::error::StoreError;

/// A position at or below which every event that will ever exist is visible now.
///
/// Waits (polling every few milliseconds, at most `max_wait`) for the transactions that were in
/// flight when it was asked. On a connection inside a transaction, that transaction must not
/// have an id yet (it gets one here, and is not waited for): take locks with advisory locks,
/// not row locks, before asking.
pub async fn safe_position(conn: &mut PgConnection, max_wait: Duration) -> Result<i64, StoreError> {
    let started = Instant::now();
    let (snapshot, top, had_id): (String, i64, bool) = sqlx::query_as(
        "SELECT pg_current_snapshot()::text, coalesce((SELECT max(position) FROM events), 0), \
                pg_current_xact_id_if_assigned() IS NOT NULL",
    )
    .fetch_one(&mut *conn)
    .await?;
    if had_id {
        return Err(StoreError::CallerHasTransactionId);
    }
    // Drawn after the snapshot: every id assigned before it is below this one.
    let fresh: i64 = sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint")
        .fetch_one(&mut *conn)
        .await?;
    let mut pause = Duration::from_millis(1);
    loop {
        let in_flight: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM ( \
               SELECT x FROM pg_snapshot_xip($1::pg_snapshot) AS x \
               UNION ALL \
               SELECT g::text::xid8 FROM generate_series(pg_snapshot_xmax($1::pg_snapshot)::text::bigint, $2 - 1) AS g \
             ) AS t(x) \
             WHERE t.x IS DISTINCT FROM pg_current_xact_id_if_assigned() AND pg_xact_status(t.x) = 'in progress'",
        )
        .bind(&snapshot)
        .bind(fresh)
        .fetch_one(&mut *conn)
        .await?;
        if in_flight == 0 {
            metrics::histogram!("surge_store_safe_position_wait_seconds").record(started.elapsed().as_secs_f64());
            return Ok(top);
        }
        if started.elapsed() >= max_wait {
            return Err(StoreError::InFlightTooLong(max_wait));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// A read of the whole log in position order.
#[derive(Debug, Clone)]
pub struct ReadAll {
    /// Events strictly after this position.
    pub after: i64,
    /// Events at or below this position: a [`safe_position`], never a guess.
    pub up_to: i64,
    /// Only streams of this type (all when `None`).
    pub stream_type: Option<StreamType>,
    pub limit: i64,
}

/// Events in `(after, up_to]`, in position order, at most `limit` of them.
pub async fn read_all(conn: &mut PgConnection, read: &ReadAll) -> Result<Vec<EventEnvelope>, StoreError> {
    let sql = format!(
        "SELECT {ENVELOPE_COLUMNS} FROM events WHERE position > $1 AND position <= $2 \
         AND ($3::text IS NULL OR stream_type = $3) ORDER BY position LIMIT $4"
    );
    let rows = sqlx::query(&sql)
        .bind(read.after)
        .bind(read.up_to)
        .bind(read.stream_type.map(|t| t.as_str()))
        .bind(read.limit)
        .fetch_all(conn)
        .await?;
    Ok(rows.iter().map(EventEnvelope::from_row).collect::<Result<_, _>>()?)
}

/// The latest version of every stream of `stream_type`: what a view must have reached to
/// reflect everything committed (one pass over the log; for healing, not for the hot path).
pub async fn stream_heads(
    conn: &mut PgConnection,
    stream_type: StreamType,
) -> Result<Vec<(StreamId, i64)>, StoreError> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT stream_id, max(version) FROM events WHERE stream_type = $1 GROUP BY stream_id")
            .bind(stream_type.as_str())
            .fetch_all(conn)
            .await?;
    Ok(rows.into_iter().map(|(s, v)| (StreamId(s), v)).collect())
}

/// The events of one stream with versions in `from..=to`, in order.
pub async fn read_stream(
    conn: &mut PgConnection,
    stream: &StreamId,
    from: i64,
    to: i64,
) -> Result<Vec<EventEnvelope>, StoreError> {
    let sql = format!(
        "SELECT {ENVELOPE_COLUMNS} FROM events WHERE stream_id = $1 AND version BETWEEN $2 AND $3 ORDER BY version"
    );
    let rows = sqlx::query(&sql)
        .bind(stream.as_str())
        .bind(from)
        .bind(to)
        .fetch_all(conn)
        .await?;
    Ok(rows.iter().map(EventEnvelope::from_row).collect::<Result<_, _>>()?)
}

/// How many events streams of `stream_type` hold (for progress bars).
pub async fn count_events(conn: &mut PgConnection, stream_type: StreamType) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM events WHERE stream_type = $1")
        .bind(stream_type.as_str())
        .fetch_one(conn)
        .await?)
}
