//! The event store as the write side uses it: `surge-store`'s write path ([`surge_store::append`])
//! plus the aggregate states it folds, cached so a hot stream is not re-read from scratch.
//!
//! An append writes the events of one or more streams and their outbox rows in the caller's
//! transaction, so that a command's events, its idempotency key and its outbox entries commit
//! together or not at all. `(stream_id, version)` is unique: writers that decided from the same
//! version collide there and all but one get [`StoreError::Conflict`]. The SQL is the store
//! crate's; what the events mean (folding them into [`Aggregate`] states) is decided here.

use crate::domain::Aggregate;
use moka::future::Cache;
use sqlx::{PgConnection, PgPool};
use std::sync::Arc;
use surge_events::{decode, EventEnvelope, StreamId};

pub use surge_store::append::{Committed, NewEvent, StreamAppend, COMMIT_OUTCOME_DEADLINE};
pub use surge_store::{is_transient, StoreError};

/// Aggregate state as of a stream version, cached so a hot stream is not re-read from scratch.
pub type StateCache<A> = Cache<StreamId, Arc<(i64, A)>>;

pub fn state_cache<A: Aggregate>(capacity: u64) -> StateCache<A> {
    Cache::builder().max_capacity(capacity).build()
}

#[derive(Clone)]
pub struct EventStore {
    pool: PgPool,
}

impl EventStore {
    pub fn new(pool: PgPool) -> Self {
        // Counters start at zero, so dashboards show "none" rather than "no data".
        metrics::counter!("surge_event_store_conflicts_total").increment(0);
        EventStore { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Appends the events of every stream in `appends`, and their outbox rows, on `conn`
    /// (normally inside the caller's transaction): [`surge_store::append::append`].
    pub async fn append_in(conn: &mut PgConnection, appends: &[StreamAppend]) -> Result<Committed, StoreError> {
        surge_store::append::append(conn, appends).await
    }

    /// Appends in a transaction of its own.
    pub async fn append(&self, appends: &[StreamAppend]) -> Result<Committed, StoreError> {
        let mut tx = self.pool.begin().await?;
        let committed = Self::append_in(&mut tx, appends).await?;
        self.commit(tx, &committed).await?;
        Ok(committed)
    }

    /// Commits `tx`, which appended `appended`, and tells the truth when the commit fails
    /// (the reply to `COMMIT` can be lost after Postgres committed): committed is `Ok`, not
    /// committed is the commit's own error, not found out within [`COMMIT_OUTCOME_DEADLINE`]
    /// is [`StoreError::CommitOutcomeUnknown`]. See [`surge_store::append::commit`].
    pub async fn commit(
        &self,
        tx: sqlx::Transaction<'static, sqlx::Postgres>,
        appended: &Committed,
    ) -> Result<(), StoreError> {
        surge_store::append::commit(&self.pool, tx, appended).await
    }

    /// The events of a stream after `after_version`, in order.
    pub async fn read_stream(&self, stream: &StreamId, after_version: i64) -> Result<Vec<EventEnvelope>, StoreError> {
        surge_store::append::read_stream_after(&self.pool, stream, after_version).await
    }

    /// The current version of a stream (0 when it has no events).
    pub async fn stream_version(&self, stream: &StreamId) -> Result<i64, StoreError> {
        surge_store::append::stream_version(&self.pool, stream).await
    }

    /// Takes the transaction-scoped advisory lock of each stream, in one order for every
    /// writer, so writers that lock the streams they will append to wait for each other
    /// instead of failing on a version conflict: [`surge_store::append::lock_streams`].
    pub async fn lock_streams(conn: &mut PgConnection, streams: &[StreamId]) -> Result<(), StoreError> {
        surge_store::append::lock_streams(conn, streams).await
    }

    /// The states of several streams of one aggregate, read on `conn` (inside the caller's
    /// transaction, after [`Self::lock_streams`]): the cached states plus the events appended
    /// since, in one query.
    pub async fn load_many_in<A: Aggregate>(
        conn: &mut PgConnection,
        cache: &StateCache<A>,
        streams: &[StreamId],
    ) -> Result<Vec<(i64, A)>, StoreError> {
        let mut states = Vec::with_capacity(streams.len());
        for stream in streams {
            states.push(match cache.get(stream).await {
                Some(s) => (s.0, s.1.clone()),
                None => (0, A::default()),
            });
        }
        let names: Vec<&str> = streams.iter().map(|s| s.as_str()).collect();
        let versions: Vec<i64> = states.iter().map(|(v, _)| *v).collect();
        let tail = surge_store::append::read_streams_after(conn, streams, &versions).await?;
        let mut changed = vec![false; streams.len()];
        for env in &tail {
            let Some(i) = names.iter().position(|n| *n == env.stream_id.as_str()) else {
                continue;
            };
            states[i].1.evolve(&decode::<A::Event>(env)?);
            states[i].0 = env.version;
            changed[i] = true;
        }
        for (i, stream) in streams.iter().enumerate() {
            if changed[i] {
                cache.insert(stream.clone(), Arc::new(states[i].clone())).await;
            }
        }
        Ok(states)
    }

    /// The state of an aggregate and the version it is at: the cached state plus the events
    /// appended since (by any process).
    pub async fn load<A: Aggregate>(&self, cache: &StateCache<A>, stream: &StreamId) -> Result<(i64, A), StoreError> {
        let (mut version, mut state) = match cache.get(stream).await {
            Some(s) => (s.0, s.1.clone()),
            None => (0, A::default()),
        };
        let tail = self.read_stream(stream, version).await?;
        if tail.is_empty() {
            return Ok((version, state));
        }
        for env in &tail {
            state.evolve(&decode::<A::Event>(env)?);
            version = env.version;
        }
        cache.insert(stream.clone(), Arc::new((version, state.clone()))).await;
        Ok((version, state))
    }
}
