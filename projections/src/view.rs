//! One shape for every view.
//!
//! A [`View`] says what a read model is: its name, the stream type it reads, its tables, the
//! key of its row for a stream, its pure fold, and how its rows are loaded and written. [`apply`]
//! is the one path that folds events into a view, whatever brings them: the live projector (a
//! batch of Kafka messages), the heal and the replay (events read from the store). It skips what
//! a row already reflects (by stream version), reads the events a row missed from the store
//! first, and reports what it cannot fold instead of failing the batch.
//! A replay's bulk load folds with the same per-event decisions, in memory ([`Folded`]): the
//! new generation is fresh and unread, so its rows are written once at the end
//! ([`View::write_new`], `COPY` for large tables) instead of loaded and upserted per batch.
//!
//! [`Projection`] is a registered view as the rest of the code names it (configs, checkpoints,
//! metrics, the console); `crate::registry` lists them.

use async_trait::async_trait;
use sqlx::PgConnection;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::Hash;
use surge_events::{decode, EventEnvelope, Payload, StreamId, StreamType};
use surge_store::bulk::StoredEvent;

/// A read model kept from the events of one stream type, one row per stream in its first table
/// (plus whatever else a fold adds, [`View::Extra`]).
#[async_trait]
pub trait View: Send + Sync + 'static {
    /// The events it folds (their stream type is the view's).
    type Event: Payload;
    /// What identifies a stream's row.
    type Key: Eq + Hash + Clone + Send + Sync;
    /// One stream's row.
    type Row: Clone + Send + Sync;
    /// What a fold adds besides the row (e.g. units sold per minute); `()` when nothing.
    type Extra: Send + Sync;

    /// Its name: consumer group, checkpoints, locks, metrics, `--projection`.
    fn name(&self) -> &'static str;
    /// The tables it keeps, the row table first (a replay renews them all, a heal writes them).
    fn tables(&self) -> &'static [&'static str];
    /// The row key of a stream (`None`: not a stream of this view).
    fn key(&self, stream: &StreamId) -> Option<Self::Key>;
    /// The stream a row key belongs to.
    fn stream_id(&self, key: &Self::Key) -> StreamId;
    /// The stream version a row reflects.
    fn version(&self, row: &Self::Row) -> i64;
    /// The pure fold of one event into its stream's row; `None` when the event needs a row that
    /// does not exist yet (its stream's first event is missing).
    fn fold(
        &self,
        row: Option<Self::Row>,
        env: &EventEnvelope,
        event: &Self::Event,
        extra: &mut Vec<Self::Extra>,
    ) -> Option<Self::Row>;
    /// The rows of `keys` in `tables` (the live ones or a new generation), locked for the
    /// caller's transaction.
    async fn load(
        &self,
        conn: &mut PgConnection,
        tables: &[String],
        keys: &[Self::Key],
    ) -> Result<HashMap<Self::Key, Self::Row>, sqlx::Error>;
    /// Writes the changed rows and what the folds added.
    async fn write(
        &self,
        conn: &mut PgConnection,
        tables: &[String],
        rows: &[&Self::Row],
        extra: Vec<Self::Extra>,
    ) -> Result<(), sqlx::Error>;
    /// Every row's key and version (a heal compares them with the store's stream heads).
    async fn versions(&self, conn: &mut PgConnection, tables: &[String]) -> Result<Vec<(Self::Key, i64)>, sqlx::Error>;
    /// Writes every row of a new generation that nobody reads yet and that holds no row yet,
    /// each row once (a replay's bulk load, [`Folded`]). A view whose row table is large
    /// writes it with `COPY`; by default, [`View::write`].
    async fn write_new(
        &self,
        conn: &mut PgConnection,
        tables: &[String],
        rows: Vec<Self::Row>,
        extra: Vec<Self::Extra>,
    ) -> Result<(), sqlx::Error> {
        let rows: Vec<&Self::Row> = rows.iter().collect();
        self.write(conn, tables, &rows, extra).await
    }
}

/// What one batch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchStats {
    /// When the applied events happened (for the event-to-view latency).
    pub occurred: Vec<chrono::DateTime<chrono::Utc>>,
    pub applied: usize,
    pub duplicates: usize,
    pub healed: usize,
    pub dead_letters: usize,
    pub already_checkpointed: usize,
}

/// Events that could not be folded: the index of each in the input, and why.
pub type NotFolded = Vec<(usize, String)>;

/// Folds `events` (in the order given; each stream's in version order) into `tables`: loads the
/// rows they touch, skips duplicates, heals version gaps from the store, writes the changed rows
/// once. The one apply path of every view.
pub async fn apply<V: View>(
    view: &V,
    conn: &mut PgConnection,
    tables: &[String],
    events: Vec<EventEnvelope>,
    stats: &mut BatchStats,
) -> Result<NotFolded, sqlx::Error> {
    let mut not_folded = Vec::new();
    let keys: Vec<V::Key> = events.iter().filter_map(|e| view.key(&e.stream_id)).collect();
    let mut rows = view.load(conn, tables, &keys).await?;
    let mut touched = HashSet::new();
    let mut extra = Vec::new();
    for (i, env) in events.into_iter().enumerate() {
        let Some(key) = view.key(&env.stream_id) else {
            not_folded.push((
                i,
                format!("stream id {} is not a stream of {}", env.stream_id, view.name()),
            ));
            continue;
        };
        let version = rows.get(&key).map_or(0, |r| view.version(r));
        for env in events_to_fold(conn, version, env, stats).await? {
            let event = match decode::<V::Event>(&env) {
                Ok(e) => e,
                Err(e) => {
                    not_folded.push((i, e.to_string()));
                    break;
                }
            };
            match view.fold(rows.remove(&key), &env, &event, &mut extra) {
                Some(row) => {
                    stats.occurred.push(env.occurred_at);
                    tracing::debug!(correlation_id = %env.metadata.correlation_id, stream = %env.stream_id, version = env.version, "event applied");
                    rows.insert(key.clone(), row);
                    touched.insert(key.clone());
                    stats.applied += 1;
                }
                None => {
                    not_folded.push((
                        i,
                        format!(
                            "{} of {} before the stream's first event",
                            env.event_type, env.stream_id
                        ),
                    ));
                    break;
                }
            }
        }
    }
    let changed: Vec<&V::Row> = touched.iter().filter_map(|k| rows.get(k)).collect();
    view.write(conn, tables, &changed, extra).await?;
    Ok(not_folded)
}

/// What a fold makes of one event for the row of its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The event continues the row: apply it.
    Apply,
    /// The row already reflects this event (re-delivery).
    Duplicate,
    /// Events between the row's version and this one are missing.
    Gap { missing_from: i64, missing_to: i64 },
}

/// Where an event of `version` stands against a row at `row_version` (0: no row yet).
pub fn step(row_version: i64, version: i64) -> Step {
    if version <= row_version {
        Step::Duplicate
    } else if version == row_version + 1 {
        Step::Apply
    } else {
        Step::Gap {
            missing_from: row_version + 1,
            missing_to: version - 1,
        }
    }
}

/// The events to fold for one event: itself, preceded by any events of its stream the row has
/// not seen (read from the event store). Empty for a duplicate.
async fn events_to_fold(
    conn: &mut PgConnection,
    row_version: i64,
    env: EventEnvelope,
    stats: &mut BatchStats,
) -> Result<Vec<EventEnvelope>, sqlx::Error> {
    match step(row_version, env.version) {
        Step::Duplicate => {
            stats.duplicates += 1;
            Ok(vec![])
        }
        Step::Apply => Ok(vec![env]),
        Step::Gap {
            missing_from,
            missing_to,
        } => {
            let mut events = surge_store::read_stream(conn, &env.stream_id, missing_from, missing_to).await?;
            tracing::warn!(
                stream = %env.stream_id,
                correlation_id = %env.metadata.correlation_id,
                missing_from,
                missing_to,
                found = events.len(),
                "version gap healed from the event store"
            );
            stats.healed += events.len();
            events.push(env);
            Ok(events)
        }
    }
}

/// What an in-memory fold did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FoldStats {
    /// Events folded into a row.
    pub applied: u64,
    /// Events a row already reflected (by stream version).
    pub duplicates: u64,
    /// Events folded after a version gap. Reading the whole log in position order up to a safe
    /// position, a gap here means the store holds none of the missing events (an event of the
    /// stream that is there but could not be folded blocks the stream instead, see
    /// [`Folded`]): the live path would heal it by reading them, find none, and fold the event
    /// the same way.
    pub gaps: u64,
    /// Events that could not be folded (logged with the reason, like the live path's dead letters).
    pub not_folded: u64,
}

/// A view's rows folded in memory, with their type erased (see [`crate::Projection::fold_in_memory`]).
#[async_trait]
pub trait InMemory: Send {
    /// Folds `events`, which come in position order after every event folded so far.
    fn fold(&mut self, events: &[StoredEvent]);
    fn stats(&self) -> FoldStats;
    /// Rows held (one per stream key).
    fn rows(&self) -> usize;
    /// Writes every row and what the folds added into `tables`: a new generation of the
    /// view's tables, empty and read by nobody yet.
    async fn write(self: Box<Self>, conn: &mut PgConnection, tables: &[String]) -> Result<(), sqlx::Error>;
}

/// The in-memory fold of one view. As on the live path, an event that cannot be folded (one
/// this code cannot decode, say of a newer schema version, or one before the stream's first)
/// stops its stream there: the live path dead-letters it, then finds every later event of the
/// stream behind a gap that healing cannot close (the store holds the event, which fails
/// again), so the row stays where it was. Here the stream's key is blocked and every later
/// event of it is not folded either.
pub struct Folded<V: View> {
    view: &'static V,
    rows: HashMap<V::Key, V::Row>,
    blocked: std::collections::HashSet<V::Key>,
    extra: Vec<V::Extra>,
    stats: FoldStats,
}

impl<V: View> Folded<V> {
    pub fn new(view: &'static V) -> Self {
        Folded {
            view,
            rows: HashMap::new(),
            blocked: std::collections::HashSet::new(),
            extra: Vec::new(),
            stats: FoldStats::default(),
        }
    }

    fn fold_one(&mut self, stored: &StoredEvent) {
        let env = &stored.envelope;
        let Some(key) = self.view.key(&env.stream_id) else {
            self.not_folded(env, "the stream is not one of this view's");
            return;
        };
        if self.blocked.contains(&key) {
            self.not_folded(env, "an earlier event of the stream could not be folded");
            return;
        }
        let version = self.rows.get(&key).map_or(0, |r| self.view.version(r));
        match step(version, env.version) {
            Step::Duplicate => {
                self.stats.duplicates += 1;
                return;
            }
            Step::Apply => {}
            Step::Gap {
                missing_from,
                missing_to,
            } => {
                tracing::warn!(
                    stream = %env.stream_id,
                    missing_from,
                    missing_to,
                    "version gap: the event store has no such events; folded after the gap"
                );
                self.stats.gaps += 1;
            }
        }
        let event = match crate::rebuild::decode_stored::<V::Event>(stored) {
            Ok(e) => e,
            Err(e) => {
                self.blocked.insert(key);
                return self.not_folded(env, &e.to_string());
            }
        };
        match self.view.fold(self.rows.remove(&key), env, &event, &mut self.extra) {
            Some(row) => {
                self.rows.insert(key, row);
                self.stats.applied += 1;
            }
            None => {
                self.blocked.insert(key);
                self.not_folded(env, "an event before the stream's first event")
            }
        }
    }

    fn not_folded(&mut self, env: &surge_events::EventEnvelope, error: &str) {
        self.stats.not_folded += 1;
        tracing::warn!(
            projection = self.view.name(),
            position = env.position,
            stream = %env.stream_id,
            error,
            "event not folded"
        );
    }
}

#[async_trait]
impl<V: View> InMemory for Folded<V> {
    fn fold(&mut self, events: &[StoredEvent]) {
        for e in events {
            self.fold_one(e);
        }
    }
    fn stats(&self) -> FoldStats {
        self.stats
    }
    fn rows(&self) -> usize {
        self.rows.len()
    }
    async fn write(self: Box<Self>, conn: &mut PgConnection, tables: &[String]) -> Result<(), sqlx::Error> {
        let Folded { view, rows, extra, .. } = *self;
        view.write_new(conn, tables, rows.into_values().collect(), extra).await
    }
}

/// A view with its types erased, so that views of different shapes sit in one list.
#[async_trait]
pub trait AnyView: Send + Sync {
    fn name(&self) -> &'static str;
    fn stream_type(&self) -> StreamType;
    fn tables(&self) -> &'static [&'static str];
    /// [`apply`] with this view.
    async fn apply(
        &self,
        conn: &mut PgConnection,
        tables: &[String],
        events: Vec<EventEnvelope>,
        stats: &mut BatchStats,
    ) -> Result<NotFolded, sqlx::Error>;
    /// The version each row shows, by its stream.
    async fn versions(&self, conn: &mut PgConnection, tables: &[String])
        -> Result<HashMap<StreamId, i64>, sqlx::Error>;
    /// An empty in-memory fold of this view, for a replay's bulk load ([`Folded`]).
    fn fold_in_memory(&'static self) -> Box<dyn InMemory>;
}

#[async_trait]
impl<V: View> AnyView for V {
    fn name(&self) -> &'static str {
        View::name(self)
    }
    fn stream_type(&self) -> StreamType {
        <V::Event as Payload>::STREAM_TYPE
    }
    fn tables(&self) -> &'static [&'static str] {
        View::tables(self)
    }
    async fn apply(
        &self,
        conn: &mut PgConnection,
        tables: &[String],
        events: Vec<EventEnvelope>,
        stats: &mut BatchStats,
    ) -> Result<NotFolded, sqlx::Error> {
        apply(self, conn, tables, events, stats).await
    }
    async fn versions(
        &self,
        conn: &mut PgConnection,
        tables: &[String],
    ) -> Result<HashMap<StreamId, i64>, sqlx::Error> {
        let rows = View::versions(self, conn, tables).await?;
        Ok(rows.into_iter().map(|(k, v)| (self.stream_id(&k), v)).collect())
    }
    fn fold_in_memory(&'static self) -> Box<dyn InMemory> {
        Box::new(Folded::new(self))
    }
}

/// A registered view, as configs, checkpoints, metrics and the console name it. Two handles are
/// equal when they name the same view.
#[derive(Clone, Copy)]
pub struct Projection(&'static dyn AnyView);

impl Projection {
    /// A handle on `view` (the registry makes them).
    pub const fn of(view: &'static dyn AnyView) -> Self {
        Projection(view)
    }
    pub fn name(self) -> &'static str {
        self.0.name()
    }
    pub fn stream_type(self) -> StreamType {
        self.0.stream_type()
    }
    /// The tables the projection keeps (a replay renews them, a heal writes them).
    pub fn tables(self) -> &'static [&'static str] {
        self.0.tables()
    }
    /// Its live tables, by name.
    pub fn live_tables(self) -> Vec<String> {
        self.tables().iter().map(|t| t.to_string()).collect()
    }
    /// Folds `events` into `tables` (see [`apply`]).
    pub async fn apply(
        self,
        conn: &mut PgConnection,
        tables: &[String],
        events: Vec<EventEnvelope>,
        stats: &mut BatchStats,
    ) -> Result<NotFolded, sqlx::Error> {
        self.0.apply(conn, tables, events, stats).await
    }
    /// An empty in-memory fold of the view: a replay folds every event into it, then writes
    /// the rows once into a new generation ([`Folded`]).
    pub fn fold_in_memory(self) -> Box<dyn InMemory> {
        self.0.fold_in_memory()
    }
    /// The version each row of `tables` shows, by its stream.
    pub async fn versions(
        self,
        conn: &mut PgConnection,
        tables: &[String],
    ) -> Result<HashMap<StreamId, i64>, sqlx::Error> {
        self.0.versions(conn, tables).await
    }
}

impl PartialEq for Projection {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}
impl Eq for Projection {}
impl Hash for Projection {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name().hash(state)
    }
}
impl fmt::Debug for Projection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
impl fmt::Display for Projection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_continue_duplicate_or_gap() {
        assert_eq!(step(0, 1), Step::Apply);
        assert_eq!(step(3, 4), Step::Apply);
        assert_eq!(step(3, 3), Step::Duplicate);
        assert_eq!(step(3, 1), Step::Duplicate);
        assert_eq!(
            step(3, 6),
            Step::Gap {
                missing_from: 4,
                missing_to: 5
            }
        );
    }
}
