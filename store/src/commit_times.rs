//! When events were committed, by PostgreSQL's own clock: `pg_xact_commit_timestamp` of the
//! transaction that wrote each event row (its `xmin`). Nothing on the write path changes: the
//! server records a commit time for every transaction when `track_commit_timestamp` is on
//! (`./dev` turns it on; it takes a restart), and these reads look it up afterwards.
//!
//! A load run compares these times with the commit times of the view rows that show the events
//! (event-to-view latency): both from one clock, without timing anything in the services.

use crate::position::StoreError;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use surge_events::StreamId;

/// Whether the server records commit times (`track_commit_timestamp`). Without it there is
/// nothing to read: [`commit_times_of`] would fail.
pub async fn commit_times_tracked(pool: &PgPool) -> Result<bool, StoreError> {
    let setting: String = sqlx::query_scalar("SELECT current_setting('track_commit_timestamp')")
        .fetch_one(pool)
        .await?;
    Ok(setting == "on")
}

/// When the event at `(stream, version)` committed. `committed_at` is `None` for a transaction
/// committed while the server did not record commit times (before the setting was turned on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventCommit {
    pub stream_id: StreamId,
    pub version: i64,
    pub committed_at: Option<DateTime<Utc>>,
}

/// The commit times of the events at `versions[i]` of `streams[i]` (events that do not exist are
/// left out), in no particular order. Asks the server to record them first
/// ([`commit_times_tracked`]).
#[tracing::instrument(skip_all, fields(events = streams.len()))]
pub async fn commit_times_of(
    pool: &PgPool,
    streams: &[StreamId],
    versions: &[i64],
) -> Result<Vec<EventCommit>, StoreError> {
    let ids: Vec<&str> = streams.iter().map(StreamId::as_str).collect();
    let rows: Vec<(String, i64, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT e.stream_id, e.version, pg_xact_commit_timestamp(e.xmin) \
         FROM unnest($1::text[], $2::bigint[]) AS k(stream_id, version) \
         JOIN events e ON e.stream_id = k.stream_id AND e.version = k.version",
    )
    .bind(&ids)
    .bind(versions)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(stream_id, version, committed_at)| EventCommit {
            stream_id: StreamId(stream_id),
            version,
            committed_at,
        })
        .collect())
}
