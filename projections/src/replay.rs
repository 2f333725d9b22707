//! `surge replay`: rebuilds projections from the event store into a new generation of their
//! tables, then switches the query side to it without read downtime.
//!
//! 1. `<view>_g<millis>` tables (a new generation) are made like the live ones and filled by folding every event of the
//!    projection's stream type from the event store (or, with `--source kafka`, from its topic from offset 0), with the
//!    same folds the live projector uses. Only views are written: no side effects run.
//! 2. Catch-up and switch happen in one transaction: it takes the projection's lock alone,
//!    which pauses the live projector between batches (each batch shares it first), folds
//!    the events appended meanwhile, then renames the new generation to `<view>` and drops the old
//!    generation. Readers wait only for the renames (milliseconds), never see a half-built view.
//! 3. The live projector goes on with the new tables; events it brings that the replay already
//!    applied are duplicates by stream version and are skipped.

use crate::heal;
use crate::view::Projection;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use sqlx::{Connection, PgConnection};
use std::time::Instant;
use surge_events::EventEnvelope;
use surge_runtime::DatabaseConfig;

#[derive(Debug, Clone, Args)]
pub struct ReplayConfig {
    #[command(flatten)]
    pub db: DatabaseConfig,
    /// Projections to rebuild (comma-separated).
    #[arg(long = "projection", value_enum, value_delimiter = ',', default_values_t = Projection::ALL.to_vec())]
    pub projections: Vec<Projection>,
    /// Events folded per transaction while building.
    #[arg(long, default_value_t = ReplayConfig::DEFAULT_BATCH_SIZE)]
    pub batch_size: i64,
    /// Most view rows a rebuild from the store keeps in memory (a few KiB each) before it
    /// writes them and folds the rest of the log batch by batch, as the live projector does.
    #[arg(long, env = "SURGE_REPLAY_MAX_ROWS_IN_MEMORY", default_value_t = ReplayConfig::DEFAULT_MAX_ROWS_IN_MEMORY)]
    pub max_rows_in_memory: usize,
    /// Print the plan and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Where events are read from: the event store (the truth), or the Kafka topics from offset 0.
    #[arg(long, value_enum, default_value_t = Source::Store)]
    pub source: Source,
    #[command(flatten)]
    pub kafka: surge_runtime::KafkaConfig,
    /// Where a caller other than the terminal (the console) watches the replay.
    #[arg(skip)]
    pub progress: Option<ReplayProgress>,
}

impl ReplayConfig {
    pub const DEFAULT_BATCH_SIZE: i64 = 5000;
    pub const DEFAULT_MAX_ROWS_IN_MEMORY: usize = 300_000;
}

/// A replay's progress as a watcher sees it: the projection being rebuilt, events folded of
/// those counted when it started, and the projections already switched.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ProgressState {
    pub projection: Option<String>,
    pub done: u64,
    pub total: u64,
    pub switched: Vec<String>,
    pub finished: bool,
    pub error: Option<String>,
}

/// Shared handle on a [`ProgressState`], updated by [`replay`].
#[derive(Debug, Clone, Default)]
pub struct ReplayProgress(std::sync::Arc<std::sync::Mutex<ProgressState>>);

impl ReplayProgress {
    pub fn snapshot(&self) -> ProgressState {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }
    pub fn update(&self, f: impl FnOnce(&mut ProgressState)) {
        if let Ok(mut s) = self.0.lock() {
            f(&mut s);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Source {
    Store,
    Kafka,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("reading Kafka offsets: {0}")]
    Offsets(String),
    #[error("event store: {0}")]
    Store(#[from] surge_store::StoreError),
    #[error("a task of the replay failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// How long a replay waits for writers that were in flight when it asked for the safe position.
const IN_FLIGHT_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Reads a projection's events in order, from the store (by position, never past the store's
/// safe position: a transaction that commits late is read, not skipped) or from its Kafka topic
/// (every partition from offset 0 up to the high watermarks taken when asked).
enum Reader {
    Store { after: i64, up_to: i64 },
    Kafka(KafkaReader),
}

struct KafkaReader {
    kafka: surge_runtime::KafkaConfig,
    topic: String,
    consumer: rdkafka::consumer::StreamConsumer,
    /// Next offset to read per partition, and where to stop.
    next: std::collections::HashMap<i32, i64>,
    until: std::collections::HashMap<i32, i64>,
}

impl KafkaReader {
    async fn new(kafka: &surge_runtime::KafkaConfig, p: Projection) -> Result<Self, ReplayError> {
        use rdkafka::consumer::Consumer;
        let topic = surge_events::topics::topic_for(&kafka.topic_prefix, p.stream_type());
        let consumer: rdkafka::consumer::StreamConsumer = surge_runtime::kafka::client_config(kafka)
            .set(
                "group.id",
                format!("{}surge-replay-{}", kafka.topic_prefix, uuid::Uuid::now_v7()),
            )
            .set("enable.auto.commit", "false")
            // The relay writes in transactions: the last offsets of a partition are commit
            // markers no consumer receives, so its end is known by the EOF event, not by
            // reaching the high watermark.
            .set("enable.partition.eof", "true")
            .create()?;
        let mut reader = KafkaReader {
            kafka: kafka.clone(),
            topic,
            consumer,
            next: Default::default(),
            until: Default::default(),
        };
        reader.refresh_until().await?;
        let mut tpl = rdkafka::TopicPartitionList::new();
        for &partition in reader.until.keys() {
            tpl.add_partition_offset(&reader.topic, partition, rdkafka::Offset::Beginning)?;
            reader.next.insert(partition, 0);
        }
        reader.consumer.assign(&tpl)?;
        Ok(reader)
    }

    /// Takes the current high watermarks as where to stop (blocking calls, off the runtime).
    async fn refresh_until(&mut self) -> Result<(), ReplayError> {
        let (kafka, topic) = (self.kafka.clone(), self.topic.clone());
        let until = tokio::task::spawn_blocking(move || -> Result<_, rdkafka::error::KafkaError> {
            use rdkafka::consumer::{BaseConsumer, Consumer};
            let c: BaseConsumer = surge_runtime::kafka::client_config(&kafka).create()?;
            let timeout = std::time::Duration::from_secs(10);
            let md = c.fetch_metadata(Some(&topic), timeout)?;
            let mut until = std::collections::HashMap::new();
            for t in md.topics() {
                for part in t.partitions() {
                    let (_, high) = c.fetch_watermarks(&topic, part.id(), timeout)?;
                    until.insert(part.id(), high);
                }
            }
            Ok(until)
        })
        .await
        .map_err(|e| ReplayError::Offsets(e.to_string()))??;
        self.until = until;
        Ok(())
    }

    async fn next_batch(&mut self, max: usize) -> Result<Vec<EventEnvelope>, ReplayError> {
        use rdkafka::Message;
        let mut batch = Vec::new();
        while batch.len() < max
            && self
                .until
                .iter()
                .any(|(p, end)| self.next.get(p).copied().unwrap_or(0) < *end)
        {
            let m = match tokio::time::timeout(std::time::Duration::from_secs(10), self.consumer.recv()).await {
                Ok(Err(rdkafka::error::KafkaError::PartitionEOF(partition))) => {
                    if let Some(end) = self.until.get(&partition) {
                        self.next.insert(partition, *end);
                    }
                    continue;
                }
                Ok(m) => m?,
                Err(_) => {
                    return Err(ReplayError::Offsets(
                        "no message within 10 s before the high watermark".into(),
                    ))
                }
            };
            self.next.insert(m.partition(), m.offset() + 1);
            match EventEnvelope::from_json(m.payload().unwrap_or_default()) {
                Ok(e) => batch.push(e),
                Err(e) => {
                    tracing::warn!(partition = m.partition(), offset = m.offset(), error = %e, "undecodable message skipped by the replay")
                }
            }
        }
        Ok(batch)
    }
}

impl Reader {
    async fn next_batch(
        &mut self,
        conn: &mut PgConnection,
        p: Projection,
        max: i64,
    ) -> Result<Vec<EventEnvelope>, ReplayError> {
        match self {
            Reader::Store { after, up_to } => {
                let read = surge_store::ReadAll {
                    after: *after,
                    up_to: *up_to,
                    stream_type: Some(p.stream_type()),
                    limit: max,
                };
                let batch = surge_store::read_all(conn, &read).await?;
                *after = batch.last().map_or(*up_to, |last| last.position);
                Ok(batch)
            }
            Reader::Kafka(k) => k.next_batch(max as usize).await,
        }
    }

    /// Moves the end of the read to now (for the catch-up under the lock).
    async fn extend(&mut self, conn: &mut PgConnection) -> Result<(), ReplayError> {
        match self {
            Reader::Store { up_to, .. } => {
                *up_to = surge_store::safe_position(conn, IN_FLIGHT_WAIT).await?;
                Ok(())
            }
            Reader::Kafka(k) => k.refresh_until().await,
        }
    }
}

/// What a replay did for one projection.
#[derive(Debug, Clone)]
pub struct ReplayReport {
    pub projection: Projection,
    /// Events folded (with `--dry-run`: that would be folded now).
    pub events: u64,
    pub caught_up: u64,
    pub seconds: f64,
    /// The tables the projection keeps, which a replay renews.
    pub tables: &'static [&'static str],
    pub dry_run: bool,
}

/// Folds `events` into generation `generation` of `p`'s tables.
async fn fold_into(
    conn: &mut PgConnection,
    p: Projection,
    generation: &str,
    events: Vec<EventEnvelope>,
) -> Result<usize, sqlx::Error> {
    let tables: Vec<String> = p.tables().iter().map(|t| format!("{t}_{generation}")).collect();
    heal::fold(conn, p, &tables, events).await
}

/// Events read per page of the log by a bulk load.
const PAGE: i64 = 20_000;
/// Pages read ahead of the fold.
const PAGES_AHEAD: usize = 4;

/// Loads generation `tables` of `p` with the events of its stream type at or below `up_to` (a
/// safe position): a task reads the log in pages on a connection of its own while this one
/// folds them in memory ([`crate::view::Folded`]); the rows are written once at the end, in one
/// transaction. Memory is bounded: once `config.max_rows_in_memory` rows are held, the load
/// stops after the page it folded. Returns the events read and the position folded up to
/// (`up_to` when every event was); `done` hears of each page folded.
async fn bulk_load(
    config: &ReplayConfig,
    p: Projection,
    tables: &[String],
    up_to: i64,
    conn: &mut PgConnection,
    done: impl Fn(u64),
) -> Result<(u64, i64), ReplayError> {
    let mut log = PgConnection::connect_with(&config.db.connect_options()?).await?;
    let (pages, mut next) = tokio::sync::mpsc::channel::<Vec<surge_store::bulk::StoredEvent>>(PAGES_AHEAD);
    let stream_type = p.stream_type();
    let read = tokio::spawn(async move {
        let mut read = surge_store::ReadAll {
            after: 0,
            up_to,
            stream_type: Some(stream_type),
            limit: PAGE,
        };
        loop {
            let page = surge_store::bulk::read_stored(&mut log, &read).await?;
            let Some(last) = page.last() else { break };
            read.after = last.envelope.position;
            if pages.send(page).await.is_err() {
                break;
            }
        }
        let _ = log.close().await;
        Ok::<(), surge_store::StoreError>(())
    });
    let mut folded = p.fold_in_memory();
    let mut events = 0u64;
    let mut folded_up_to = up_to;
    while let Some(page) = next.recv().await {
        let n = page.len() as u64;
        let last = page.last().map(|e| e.envelope.position);
        // Folding is CPU work without awaits: off the runtime's worker, the reader goes on.
        folded = tokio::task::spawn_blocking(move || {
            folded.fold(&page);
            folded
        })
        .await?;
        events += n;
        done(n);
        if folded.rows() >= config.max_rows_in_memory.max(1) {
            if let Some(last) = last.filter(|l| *l < up_to) {
                // The rest is folded batch by batch (the reader stops: its channel is gone).
                folded_up_to = last;
                tracing::info!(
                    projection = p.name(),
                    rows = folded.rows(),
                    position = last,
                    "the in-memory rows reached their bound; the rest of the log is folded by batches"
                );
                break;
            }
        }
    }
    drop(next);
    // A failed read ends the pages early: nothing of this generation is written then.
    read.await??;
    let stats = folded.stats();
    tracing::info!(
        projection = p.name(),
        events,
        rows = folded.rows(),
        applied = stats.applied,
        duplicates = stats.duplicates,
        gaps = stats.gaps,
        not_folded = stats.not_folded,
        "folded in memory; writing the new generation"
    );
    let mut tx = conn.begin().await?;
    folded.write(&mut tx, tables).await?;
    tx.commit().await?;
    Ok((events, folded_up_to))
}

/// Drops the indexes of `tables` that back no constraint and are not unique (a unique one may
/// be an upsert's arbiter in the batch phase) and returns the statements that
/// create them again (their names and tables are the new generation's already).
async fn drop_secondary_indexes(conn: &mut PgConnection, tables: &[String]) -> Result<Vec<String>, sqlx::Error> {
    let indexes: Vec<(String, String)> = sqlx::query_as(
        "SELECT x.indexrelid::regclass::text, pg_get_indexdef(x.indexrelid) FROM pg_index x \
         WHERE x.indrelid = ANY(SELECT t::regclass FROM unnest($1::text[]) AS t) \
           AND NOT x.indisunique \
           AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)",
    )
    .bind(tables)
    .fetch_all(&mut *conn)
    .await?;
    for (name, _) in &indexes {
        sqlx::query(&format!("DROP INDEX {name}")).execute(&mut *conn).await?;
    }
    Ok(indexes.into_iter().map(|(_, def)| def).collect())
}

pub async fn replay(config: &ReplayConfig) -> Result<Vec<ReplayReport>, ReplayError> {
    let mut conn = PgConnection::connect_with(&config.db.connect_options()?).await?;
    let mut reports = Vec::new();
    for &p in &config.projections {
        let total = surge_store::count_events(&mut conn, p.stream_type()).await?;
        if config.dry_run {
            reports.push(ReplayReport {
                projection: p,
                events: total.max(0) as u64,
                caught_up: 0,
                seconds: 0.0,
                tables: p.tables(),
                dry_run: true,
            });
            continue;
        }
        let started = Instant::now();
        // A generation name of its own, so the copied indexes' names never clash with a
        // previous generation's (they keep their names through the rename).
        let generation = format!("g{}", chrono::Utc::now().timestamp_millis());
        let tables: Vec<String> = p.tables().iter().map(|t| format!("{t}_{generation}")).collect();
        for (t, new) in p.tables().iter().zip(&tables) {
            sqlx::query(&format!("CREATE TABLE {new} (LIKE {t} INCLUDING ALL)"))
                .execute(&mut conn)
                .await?;
        }
        // Secondary indexes are built once over the loaded rows, not row by row during the load
        // (primary keys stay: the catch-up below upserts on them).
        let secondary = drop_secondary_indexes(&mut conn, &tables).await?;
        let bar = ProgressBar::new(total.max(0) as u64).with_style(
            ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} events {per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(p.name());
        if config.progress.is_some() {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        let watch = |f: &dyn Fn(&mut ProgressState)| {
            if let Some(progress) = &config.progress {
                progress.update(f);
            }
        };
        watch(&|s| {
            s.projection = Some(p.name().to_string());
            s.done = 0;
            s.total = total.max(0) as u64;
        });
        let mut events = 0u64;
        let mut reader = match config.source {
            Source::Store => {
                let up_to = surge_store::safe_position(&mut conn, IN_FLIGHT_WAIT).await?;
                let (read, after) = bulk_load(config, p, &tables, up_to, &mut conn, |n| {
                    bar.inc(n);
                    watch(&|s| s.done += n);
                })
                .await?;
                events = read;
                Reader::Store { after, up_to }
            }
            Source::Kafka => Reader::Kafka(KafkaReader::new(&config.kafka, p).await?),
        };
        // What the bulk load left (past its memory bound), or all of Kafka's: batch by batch.
        loop {
            let batch = reader.next_batch(&mut conn, p, config.batch_size.max(1)).await?;
            if batch.is_empty() {
                break;
            }
            let n = batch.len() as u64;
            let mut tx = conn.begin().await?;
            fold_into(&mut tx, p, &generation, batch).await?;
            tx.commit().await?;
            events += n;
            bar.inc(n);
            watch(&|s| s.done = events);
        }
        for def in &secondary {
            sqlx::query(def).execute(&mut conn).await?;
        }
        bar.finish_and_clear();

        // Catch up and switch with the live projector paused on the projection's lock.
        let mut tx = conn.begin().await?;
        crate::worker::lock_projection(&mut tx, p, crate::worker::Lock::Exclusive).await?;
        reader.extend(&mut tx).await?;
        let mut caught_up = 0u64;
        loop {
            let batch = reader.next_batch(&mut tx, p, config.batch_size.max(1)).await?;
            if batch.is_empty() {
                break;
            }
            caught_up += batch.len() as u64;
            fold_into(&mut tx, p, &generation, batch).await?;
        }
        for t in p.tables() {
            sqlx::query(&format!("ALTER TABLE {t} RENAME TO {t}_old"))
                .execute(&mut *tx)
                .await?;
            sqlx::query(&format!("ALTER TABLE {t}_{generation} RENAME TO {t}"))
                .execute(&mut *tx)
                .await?;
            sqlx::query(&format!("DROP TABLE {t}_old")).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        watch(&|s| s.switched.push(p.name().to_string()));
        let report = ReplayReport {
            projection: p,
            events: events + caught_up,
            caught_up,
            seconds: started.elapsed().as_secs_f64(),
            tables: p.tables(),
            dry_run: false,
        };
        tracing::info!(
            projection = p.name(),
            events = report.events,
            caught_up,
            seconds = report.seconds,
            "replay switched"
        );
        reports.push(report);
    }
    Ok(reports)
}
