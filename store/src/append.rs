//! The write path of the log: lock the streams a writer will append to, read them, append
//! with optimistic concurrency, and commit telling the truth when the reply to `COMMIT` is lost.
//!
//! An append writes the events of one or more streams and their outbox rows in the caller's
//! transaction, so that a command's events, its idempotency key and its outbox entries commit
//! together or not at all. `(stream_id, version)` is unique: writers that decided from the same
//! version collide there and all but one get [`StoreError::Conflict`].

use crate::error::StoreError;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{Connection, PgConnection, PgPool, Row};
use std::time::Duration;
use surge_events::{EventEnvelope, EventMetadata, Payload, StreamId, StreamType, ENVELOPE_COLUMNS};
use uuid::Uuid;

/// How long [`commit`] keeps asking whether a commit whose reply was lost took.
pub const COMMIT_OUTCOME_DEADLINE: Duration = Duration::from_secs(5);

/// One event ready to be stored, with the metadata of the request that caused it.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_type: &'static str,
    pub schema_version: i32,
    pub payload: Value,
    pub metadata: EventMetadata,
}

impl NewEvent {
    pub fn new<P: Payload>(event: &P, metadata: &EventMetadata) -> Self {
        NewEvent {
            event_type: event.event_type(),
            schema_version: event.schema_version(),
            payload: event.to_stored_json(),
            metadata: metadata.clone(),
        }
    }
}

/// Events decided for one stream from `expected_version` (0 for a new stream).
#[derive(Debug, Clone)]
pub struct StreamAppend {
    pub stream_id: StreamId,
    pub stream_type: StreamType,
    pub expected_version: i64,
    pub events: Vec<NewEvent>,
}

impl StreamAppend {
    pub fn new<P: Payload>(stream_id: StreamId, expected_version: i64, events: &[P], metadata: &EventMetadata) -> Self {
        StreamAppend {
            stream_id,
            stream_type: P::STREAM_TYPE,
            expected_version,
            events: events.iter().map(|e| NewEvent::new(e, metadata)).collect(),
        }
    }
}

/// What an append committed: the global positions of its events, in the order they were
/// given. The position of a command's last event is its consistency token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub positions: Vec<i64>,
    pub last_position: i64,
    /// The transaction that appended them, to find out whether it committed when the reply
    /// to its `COMMIT` is lost ([`commit`]).
    session: Option<TxSession>,
}

/// A transaction as `pg_stat_activity` names it: its backend's pid and its start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TxSession {
    pid: i32,
    started: DateTime<Utc>,
}

/// Appends the events of every stream in `appends`, and their outbox rows, on `conn`
/// (normally inside the caller's transaction). Versions continue from each expected version.
///
/// The transaction gets its id (`pg_current_xact_id()`, a one-time filter the executor
/// evaluates before it pulls the first row) before the insert draws positions:
/// [`crate::safe_position`] relies on it, since a writer without an id when a reader takes its
/// snapshot must only be able to draw positions above what that reader sees.
#[tracing::instrument(skip_all, fields(streams = appends.len()))]
pub async fn append(conn: &mut PgConnection, appends: &[StreamAppend]) -> Result<Committed, StoreError> {
    let started = std::time::Instant::now();
    let n: usize = appends.iter().map(|a| a.events.len()).sum();
    let mut ids = Vec::with_capacity(n);
    let mut streams = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    let mut versions = Vec::with_capacity(n);
    let mut event_types = Vec::with_capacity(n);
    let mut schema_versions = Vec::with_capacity(n);
    let mut payloads = Vec::with_capacity(n);
    let mut correlations = Vec::with_capacity(n);
    let mut causations = Vec::with_capacity(n);
    let mut actors = Vec::with_capacity(n);
    for a in appends {
        for (i, e) in a.events.iter().enumerate() {
            ids.push(Uuid::now_v7());
            streams.push(a.stream_id.0.as_str());
            types.push(a.stream_type.as_str());
            versions.push(a.expected_version + 1 + i as i64);
            event_types.push(e.event_type);
            schema_versions.push(e.schema_version);
            payloads.push(&e.payload);
            correlations.push(e.metadata.correlation_id);
            causations.push(e.metadata.causation_id);
            actors.push(e.metadata.actor.as_str());
        }
    }
    let result = sqlx::query(
        "WITH ins AS ( \
           INSERT INTO events (event_id, stream_id, stream_type, version, event_type, \
                               schema_version, payload, correlation_id, causation_id, actor) \
           SELECT u.id, u.stream, u.stype, u.version, u.etype, u.sv, u.payload, u.corr, u.cause, u.actor \
           FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::text[], \
                       $6::int[], $7::jsonb[], $8::uuid[], $9::uuid[], $10::text[]) \
                WITH ORDINALITY AS u(id, stream, stype, version, etype, sv, payload, corr, cause, actor, ord) \
           WHERE (SELECT pg_current_xact_id()) IS NOT NULL \
           ORDER BY u.ord \
           RETURNING position), \
         ob AS (INSERT INTO outbox (position) SELECT position FROM ins RETURNING position) \
         SELECT coalesce(array_agg(position ORDER BY position), '{}') AS positions, \
                pg_backend_pid() AS pid, now() AS started FROM ob",
    )
    .bind(&ids)
    .bind(&streams)
    .bind(&types)
    .bind(&versions)
    .bind(&event_types)
    .bind(&schema_versions)
    .bind(&payloads)
    .bind(&correlations)
    .bind(&causations)
    .bind(&actors)
    .fetch_one(&mut *conn)
    .await;
    match result {
        Ok(row) => {
            metrics::histogram!("surge_event_store_append_seconds").record(started.elapsed().as_secs_f64());
            metrics::histogram!("surge_event_store_append_batch_size").record(n as f64);
            let positions: Vec<i64> = row.try_get("positions")?;
            let last_position = positions.last().copied().unwrap_or(0);
            Ok(Committed {
                positions,
                last_position,
                session: Some(TxSession {
                    pid: row.try_get("pid")?,
                    started: row.try_get("started")?,
                }),
            })
        }
        Err(e) if is_version_clash(&e) => {
            metrics::counter!("surge_event_store_conflicts_total").increment(1);
            let stream_id = clashing_stream(&e, appends);
            let expected = appends
                .iter()
                .find(|a| a.stream_id.0 == stream_id)
                .map_or(0, |a| a.expected_version);
            Err(StoreError::Conflict { stream_id, expected })
        }
        Err(e) => Err(e.into()),
    }
}

/// Commits `tx`, which appended `appended`, and tells the truth when the commit fails.
///
/// The reply to `COMMIT` can be lost after Postgres committed; answering "failed, retry"
/// then makes callers place the same order twice. So after a failed commit this finds
/// out, on fresh connections to `pool`'s database, retrying for up to
/// [`COMMIT_OUTCOME_DEADLINE`]: it waits until the transaction's session no longer has it
/// open (ending the session if it still waits for this client inside the transaction: it
/// then rolls back), then looks for the first appended event (positions are never reused:
/// it exists if and only if the transaction committed). Committed: `Ok`. Not committed: the
/// commit's own error. Not found out in time: [`StoreError::CommitOutcomeUnknown`].
pub async fn commit(
    pool: &PgPool,
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    appended: &Committed,
) -> Result<(), StoreError> {
    let failed = match tx.commit().await {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    let (Some(&first), Some(session)) = (appended.positions.first(), appended.session) else {
        // Nothing was appended: nothing whose fate the caller's answer depends on.
        return Err(failed.into());
    };
    tracing::warn!(error = %failed, position = first, "commit failed; finding out whether it took");
    metrics::counter!("surge_event_store_commit_failures_total").increment(1);
    match tokio::time::timeout(COMMIT_OUTCOME_DEADLINE, find_out(pool, first, session)).await {
        Ok(true) => {
            tracing::info!(position = first, "the failed commit had taken");
            Ok(())
        }
        Ok(false) => Err(failed.into()),
        Err(_) => {
            tracing::error!(error = %failed, position = first, "cannot find out whether the commit took");
            Err(StoreError::CommitOutcomeUnknown(failed))
        }
    }
}

/// Whether the transaction of `session` that appended the event at `position` committed;
/// asks until it knows.
async fn find_out(pool: &PgPool, position: i64, session: TxSession) -> bool {
    let mut pause = Duration::from_millis(20);
    loop {
        match ask_whether_committed(pool, position, session).await {
            Ok(Some(took)) => return took,
            Ok(None) => tracing::debug!(pid = session.pid, "the failed commit's transaction is still open"),
            Err(e) => tracing::debug!(error = %e, "cannot ask yet whether the commit took"),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// `Some(committed)` once the transaction has ended, `None` while it is still open. On a
/// connection of its own: the pool's may all be as broken as the one that failed.
async fn ask_whether_committed(pool: &PgPool, position: i64, session: TxSession) -> Result<Option<bool>, sqlx::Error> {
    let mut conn = PgConnection::connect_with(&pool.connect_options()).await?;
    // A session idle inside the transaction waits for a client that is gone: end it (its
    // transaction rolls back). One that is committing is left to finish.
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = $1 AND xact_start = $2 \
         AND state IN ('idle in transaction', 'idle in transaction (aborted)')",
    )
    .bind(session.pid)
    .bind(session.started)
    .execute(&mut conn)
    .await?;
    // Two statements, in this order: the second's snapshot is taken after the first saw
    // the transaction ended, so it sees the transaction's events if it committed.
    let open: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND xact_start = $2)")
            .bind(session.pid)
            .bind(session.started)
            .fetch_one(&mut conn)
            .await?;
    let took = if open {
        None
    } else {
        Some(
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM events WHERE position = $1)")
                .bind(position)
                .fetch_one(&mut conn)
                .await?,
        )
    };
    let _ = conn.close().await;
    Ok(took)
}

/// Takes the transaction-scoped advisory lock of each stream, in one order for every
/// writer (by hash), so writers that lock the streams they will append to wait for each
/// other instead of failing on a version conflict. Released at commit or rollback. The
/// version check of [`append`] stays the guarantee; the locks only spare the retries.
pub async fn lock_streams(conn: &mut PgConnection, streams: &[StreamId]) -> Result<(), StoreError> {
    if streams.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = streams.iter().map(|s| s.as_str()).collect();
    let started = std::time::Instant::now();
    sqlx::query(
        "SELECT pg_advisory_xact_lock(h) FROM \
         (SELECT DISTINCT hashtextextended(s, 0) AS h FROM unnest($1::text[]) AS s ORDER BY h) AS l",
    )
    .bind(&names)
    .execute(&mut *conn)
    .await?;
    // Time spent waiting for other writers of these streams (plus one round trip): what
    // several instances selling one item cost each other (`./dev bench-scale` reports it).
    metrics::histogram!("surge_store_lock_wait_seconds").record(started.elapsed().as_secs_f64());
    Ok(())
}

/// The events of a stream after `after_version`, in order.
pub async fn read_stream_after(
    pool: &PgPool,
    stream: &StreamId,
    after_version: i64,
) -> Result<Vec<EventEnvelope>, StoreError> {
    let sql = format!("SELECT {ENVELOPE_COLUMNS} FROM events WHERE stream_id = $1 AND version > $2 ORDER BY version");
    let rows = sqlx::query(&sql)
        .bind(stream.as_str())
        .bind(after_version)
        .fetch_all(pool)
        .await?;
    Ok(rows.iter().map(EventEnvelope::from_row).collect::<Result<_, _>>()?)
}

/// The events of several streams, each after its own version (`after[i]` for `streams[i]`),
/// on `conn` (inside the caller's transaction, after [`lock_streams`]), in one query: ordered
/// by stream id, then version.
pub async fn read_streams_after(
    conn: &mut PgConnection,
    streams: &[StreamId],
    after: &[i64],
) -> Result<Vec<EventEnvelope>, StoreError> {
    let names: Vec<&str> = streams.iter().map(|s| s.as_str()).collect();
    let sql = format!(
        "SELECT {ENVELOPE_COLUMNS} FROM unnest($1::text[], $2::bigint[]) AS u(s, v) \
         JOIN events ON stream_id = u.s AND version > u.v ORDER BY stream_id, version"
    );
    let rows = sqlx::query(&sql).bind(&names).bind(after).fetch_all(&mut *conn).await?;
    Ok(rows.iter().map(EventEnvelope::from_row).collect::<Result<_, _>>()?)
}

/// The current version of a stream (0 when it has no events).
pub async fn stream_version(pool: &PgPool, stream: &StreamId) -> Result<i64, StoreError> {
    let v: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM events WHERE stream_id = $1")
        .bind(stream.as_str())
        .fetch_one(pool)
        .await?;
    Ok(v.unwrap_or(0))
}

fn is_version_clash(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.constraint())
        .is_some_and(|c| c == "events_stream_version_key")
}

/// Postgres names the clashing key in the error detail: `Key (stream_id, version)=(s, 3) ...`.
fn clashing_stream(e: &sqlx::Error, appends: &[StreamAppend]) -> String {
    let detail = e
        .as_database_error()
        .and_then(|d| d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>())
        .and_then(|d| d.detail().map(str::to_owned))
        .unwrap_or_default();
    appends
        .iter()
        .find(|a| detail.contains(&format!("=({},", a.stream_id.0)))
        .or(appends.first())
        .map(|a| a.stream_id.0.clone())
        .unwrap_or_default()
}
