//! The projector worker: one Kafka consumer group per projection, one Postgres transaction per
//! batch of messages holding the view rows, the dead letters and the checkpoint together.
//!
//! The checkpoint table is the truth about what was applied: messages below a partition's
//! `next_offset` are skipped, so a crash between the database commit and the Kafka offset
//! commit (or a rebalance handing a partition to another process) never applies anything twice.
//! Within a batch, an event at or below its row's version is a duplicate; one beyond the next
//! version means the row missed events, which are read from the event store and applied first.

use crate::{catalog, orders, step, Step};
use backon::{ExponentialBuilder, Retryable};
use clap::{Args, ValueEnum};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use sqlx::{PgConnection, PgPool, Row};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use surge_events::{decode, topics, EventEnvelope, InventoryEvent, OrderEvent, StreamId, StreamType, ENVELOPE_COLUMNS};
use surge_runtime::{DatabaseConfig, KafkaConfig, StartupError};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Projection {
    /// `catalog_items` and `sales_by_minute`, from inventory events.
    Catalog,
    /// `orders`, from order events.
    Orders,
}

impl Projection {
    pub const ALL: [Projection; 2] = [Projection::Catalog, Projection::Orders];

    pub fn name(self) -> &'static str {
        match self {
            Projection::Catalog => "catalog",
            Projection::Orders => "orders",
        }
    }
    pub fn stream_type(self) -> StreamType {
        match self {
            Projection::Catalog => StreamType::Inventory,
            Projection::Orders => StreamType::Order,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ProjectorConfig {
    #[command(flatten)]
    pub db: DatabaseConfig,
    #[command(flatten)]
    pub kafka: KafkaConfig,
    /// Projections this process keeps (comma-separated).
    #[arg(long = "projection", env = "SURGE_PROJECTIONS", value_enum, value_delimiter = ',', default_values_t = Projection::ALL)]
    pub projections: Vec<Projection>,
    /// Most messages applied in one transaction.
    #[arg(long, env = "SURGE_PROJECTOR_BATCH_SIZE", default_value_t = 1000)]
    pub batch_size: usize,
    /// How long a batch waits to fill after its first message, in milliseconds.
    #[arg(long, env = "SURGE_PROJECTOR_BATCH_WAIT_MS", default_value_t = 5)]
    pub batch_wait_ms: u64,
    /// Address of the projector's /healthz, /readyz and /metrics.
    #[arg(
        long = "projector-admin-addr",
        env = "SURGE_PROJECTOR_ADMIN_ADDR",
        default_value = "127.0.0.1:9102"
    )]
    pub admin_addr: std::net::SocketAddr,
    /// Messages behind (summed over partitions) past which /readyz says not ready.
    #[arg(long, env = "SURGE_PROJECTOR_MAX_LAG", default_value_t = 100_000)]
    pub max_lag: i64,
}

impl ProjectorConfig {
    pub fn new(db: DatabaseConfig, kafka: KafkaConfig) -> Self {
        ProjectorConfig {
            db,
            kafka,
            projections: Projection::ALL.to_vec(),
            batch_size: 1000,
            batch_wait_ms: 5,
            admin_addr: ([127, 0, 0, 1], 0).into(),
            max_lag: 100_000,
        }
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

pub struct Projector {
    pool: PgPool,
    config: ProjectorConfig,
    consumers: Vec<(Projection, StreamConsumer<LagContext>)>,
    lag: Arc<AtomicI64>,
}

impl Projector {
    pub async fn build(config: ProjectorConfig) -> Result<Self, StartupError> {
        surge_runtime::telemetry::prometheus();
        let pool = surge_runtime::db::connect(&config.db).await?;
        let mut consumers = Vec::new();
        let lag = Arc::new(AtomicI64::new(0));
        for &projection in &config.projections {
            let group = format!("{}surge-projector-{}", config.kafka.topic_prefix, projection.name());
            let consumer: StreamConsumer<LagContext> = surge_runtime::kafka::client_config(&config.kafka)
                .set("group.id", &group)
                .set("enable.auto.commit", "false")
                .set("auto.offset.reset", "earliest")
                .set("fetch.wait.max.ms", "10")
                .set("session.timeout.ms", "10000")
                .set("heartbeat.interval.ms", "1000")
                .set("statistics.interval.ms", "2000")
                .create_with_context(LagContext {
                    projection,
                    total: lag.clone(),
                    mine: AtomicI64::new(0),
                })?;
            let topic = topics::topic_for(&config.kafka.topic_prefix, projection.stream_type());
            consumer.subscribe(&[&topic])?;
            consumers.push((projection, consumer));
        }
        Ok(Projector {
            pool,
            config,
            consumers,
            lag,
        })
    }

    /// Consumes until `shutdown` resolves; a batch in flight finishes first. The admin
    /// endpoints (`/healthz`, `/readyz`: database ready and lag under the limit, `/metrics`)
    /// serve alongside.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let cancel = CancellationToken::new();
        let mut tasks = Vec::new();
        let lag = self.lag.clone();
        surge_runtime::db::report_pool_usage(self.pool.clone(), "projector");
        let (pool, max_lag, lag_seen) = (self.pool.clone(), self.config.max_lag, lag.clone());
        let ready: surge_runtime::http::Readiness = Arc::new(move || {
            let (pool, lag) = (pool.clone(), lag_seen.load(Ordering::Relaxed));
            Box::pin(async move {
                surge_runtime::db::check_ready(&pool).await?;
                if lag > max_lag {
                    return Err(format!("projector is {lag} messages behind (limit {max_lag})"));
                }
                Ok(())
            })
        });
        let admin = tokio::spawn(surge_runtime::http::serve_admin(
            self.config.admin_addr,
            ready,
            cancel.clone().cancelled_owned(),
        ));
        for (projection, consumer) in self.consumers {
            let worker = Worker {
                pool: self.pool.clone(),
                projection,
                topic: topics::topic_for(&self.config.kafka.topic_prefix, projection.stream_type()),
                batch_size: self.config.batch_size.max(1),
                batch_wait: Duration::from_millis(self.config.batch_wait_ms),
            };
            tasks.push(tokio::spawn(worker.consume(consumer, cancel.clone())));
        }
        shutdown.await;
        cancel.cancel();
        for t in tasks {
            let _ = t.await;
        }
        if let Ok(Err(e)) = admin.await {
            tracing::warn!(error = %e, "projector admin endpoints failed");
        }
        tracing::info!("projector stopped");
    }
}

struct Worker {
    pool: PgPool,
    projection: Projection,
    topic: String,
    batch_size: usize,
    batch_wait: Duration,
}

impl Worker {
    async fn consume(self, consumer: StreamConsumer<LagContext>, cancel: CancellationToken) {
        tracing::info!(projection = self.projection.name(), topic = %self.topic, "projector consuming");
        loop {
            let first = tokio::select! {
                _ = cancel.cancelled() => break,
                m = consumer.recv() => m,
            };
            let first = match first {
                Ok(m) => m.detach(),
                Err(e) => {
                    tracing::warn!(error = %e, "consumer error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let mut batch = vec![first];
            let deadline = tokio::time::Instant::now() + self.batch_wait;
            while batch.len() < self.batch_size {
                match tokio::time::timeout_at(deadline, consumer.recv()).await {
                    Ok(Ok(m)) => batch.push(m.detach()),
                    _ => break,
                }
            }
            let policy = ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(50))
                .with_max_delay(Duration::from_secs(5))
                .with_max_times(usize::MAX);
            let apply = (|| apply_batch(&self.pool, self.projection, &self.topic, &batch))
                .retry(policy)
                .notify(|e, wait| tracing::warn!(error = %e, ?wait, "applying a batch failed; retrying"));
            let stats = tokio::select! {
                _ = cancel.cancelled() => break,
                r = apply => r,
            };
            match stats {
                Ok(stats) => {
                    let p = self.projection.name();
                    metrics::counter!("surge_projection_events_applied_total", "projection" => p)
                        .increment(stats.applied as u64);
                    metrics::counter!("surge_projection_duplicates_total", "projection" => p)
                        .increment(stats.duplicates as u64);
                    metrics::counter!("surge_projection_gap_events_healed_total", "projection" => p)
                        .increment(stats.healed as u64);
                    metrics::counter!("surge_projection_dead_letters_total", "projection" => p)
                        .increment(stats.dead_letters as u64);
                    metrics::histogram!("surge_projection_batch_size", "projection" => p).record(batch.len() as f64);
                    tracing::debug!(projection = p, ?stats, "batch applied");
                }
                Err(e) => tracing::error!(error = %e, "batch abandoned"),
            }
            let mut tpl = TopicPartitionList::new();
            for (partition, offset) in next_offsets(&batch) {
                let _ = tpl.add_partition_offset(&self.topic, partition, Offset::Offset(offset));
            }
            if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
                tracing::debug!(error = %e, "offset commit failed; the checkpoint table still holds it");
            }
        }
        tracing::info!(projection = self.projection.name(), "projector worker stopped");
    }
}

/// Receives librdkafka's statistics (every 2 s): consumer lag per assigned partition.
pub struct LagContext {
    projection: Projection,
    /// Messages behind, summed over this process's projections (for readiness).
    total: Arc<AtomicI64>,
    mine: AtomicI64,
}

impl rdkafka::ClientContext for LagContext {
    fn stats(&self, stats: rdkafka::Statistics) {
        let mut lag = 0;
        for topic in stats.topics.values() {
            for (partition, p) in &topic.partitions {
                if *partition < 0 || p.consumer_lag < 0 {
                    continue;
                }
                lag += p.consumer_lag;
                metrics::gauge!("surge_consumer_lag", "projection" => self.projection.name(), "partition" => partition.to_string())
                    .set(p.consumer_lag as f64);
            }
        }
        let before = self.mine.swap(lag, Ordering::Relaxed);
        self.total.fetch_add(lag - before, Ordering::Relaxed);
    }
}

impl rdkafka::consumer::ConsumerContext for LagContext {}

/// The next offset to read per partition after a batch.
fn next_offsets(batch: &[OwnedMessage]) -> BTreeMap<i32, i64> {
    let mut next = BTreeMap::new();
    for m in batch {
        let e = next.entry(m.partition()).or_insert(0);
        *e = (*e).max(m.offset() + 1);
    }
    next
}

/// Applies one batch of messages of `topic` to the projection's views, in one transaction.
pub async fn apply_batch(
    pool: &PgPool,
    projection: Projection,
    topic: &str,
    batch: &[OwnedMessage],
) -> Result<BatchStats, sqlx::Error> {
    let mut stats = BatchStats::default();
    let mut tx = pool.begin().await?;
    let partitions: Vec<i32> = next_offsets(batch).keys().copied().collect();
    sqlx::query(
        "INSERT INTO projection_checkpoints (projection, topic, partition, next_offset) \
         SELECT $1, $2, p, 0 FROM UNNEST($3::int[]) AS p ON CONFLICT DO NOTHING",
    )
    .bind(projection.name())
    .bind(topic)
    .bind(&partitions)
    .execute(&mut *tx)
    .await?;
    let rows = sqlx::query(
        "SELECT partition, next_offset FROM projection_checkpoints \
         WHERE projection = $1 AND topic = $2 AND partition = ANY($3) FOR UPDATE",
    )
    .bind(projection.name())
    .bind(topic)
    .bind(&partitions)
    .fetch_all(&mut *tx)
    .await?;
    let mut checkpoint: HashMap<i32, i64> = HashMap::new();
    for r in rows {
        checkpoint.insert(r.try_get("partition")?, r.try_get("next_offset")?);
    }

    let mut envelopes = Vec::with_capacity(batch.len());
    let mut dead = Vec::new();
    let mut advanced: HashMap<i32, (i64, i64)> = HashMap::new();
    for m in batch {
        if m.offset() < checkpoint.get(&m.partition()).copied().unwrap_or(0) {
            stats.already_checkpointed += 1;
            continue;
        }
        let entry = advanced.entry(m.partition()).or_insert((0, 0));
        entry.0 = entry.0.max(m.offset() + 1);
        match EventEnvelope::from_json(m.payload().unwrap_or_default()) {
            Ok(env) if env.stream_type == projection.stream_type() => {
                entry.1 = entry.1.max(env.position);
                envelopes.push((m, env));
            }
            Ok(env) => dead.push((m, format!("stream type {:?} on the {} topic", env.stream_type, topic))),
            Err(e) => dead.push((m, e.to_string())),
        }
    }

    let failed = match projection {
        Projection::Catalog => {
            apply_catalog(&mut tx, "catalog_items", "sales_by_minute", envelopes, &mut stats).await?
        }
        Projection::Orders => apply_orders(&mut tx, "orders", envelopes, &mut stats).await?,
    };
    dead.extend(failed);
    stats.dead_letters = dead.len();
    for (m, error) in &dead {
        tracing::warn!(
            projection = projection.name(),
            partition = m.partition(),
            offset = m.offset(),
            error,
            "dead letter"
        );
        sqlx::query(
            "INSERT INTO dead_letters (projection, topic, partition, \"offset\", key, payload, error) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        )
        .bind(projection.name())
        .bind(topic)
        .bind(m.partition())
        .bind(m.offset())
        .bind(m.key().map(|k| String::from_utf8_lossy(k).into_owned()))
        .bind(m.payload())
        .bind(error)
        .execute(&mut *tx)
        .await?;
    }
    let (parts, (offsets, positions)): (Vec<i32>, (Vec<i64>, Vec<i64>)) = advanced.into_iter().unzip();
    sqlx::query(
        "UPDATE projection_checkpoints c SET next_offset = v.o, position = greatest(c.position, v.pos), updated_at = now() \
         FROM UNNEST($3::int[], $4::bigint[], $5::bigint[]) AS v(p, o, pos) \
         WHERE c.projection = $1 AND c.topic = $2 AND c.partition = v.p",
    )
    .bind(projection.name())
    .bind(topic)
    .bind(&parts)
    .bind(&offsets)
    .bind(&positions)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let now = chrono::Utc::now();
    for t in std::mem::take(&mut stats.occurred) {
        let latency = (now - t).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6;
        metrics::histogram!("surge_event_to_view_seconds", "projection" => projection.name()).record(latency);
    }
    Ok(stats)
}

/// Events of a stream between two versions, from the event store (to heal a gap).
async fn missing_events(
    conn: &mut PgConnection,
    stream: &StreamId,
    from: i64,
    to: i64,
) -> Result<Vec<EventEnvelope>, sqlx::Error> {
    let sql = format!(
        "SELECT {ENVELOPE_COLUMNS} FROM events WHERE stream_id = $1 AND version BETWEEN $2 AND $3 ORDER BY version"
    );
    let rows = sqlx::query(&sql)
        .bind(stream.as_str())
        .bind(from)
        .bind(to)
        .fetch_all(conn)
        .await?;
    rows.iter().map(EventEnvelope::from_row).collect()
}

/// The events to fold for one message: the message's own event, preceded by any events of its
/// stream the row has not seen (read from the event store). Empty for a duplicate.
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
            let mut events = missing_events(conn, &env.stream_id, missing_from, missing_to).await?;
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

/// Events that could not be applied, each with where it came from and why.
type DeadLetters<S> = Vec<(S, String)>;

pub(crate) async fn apply_catalog<S: Clone>(
    conn: &mut PgConnection,
    items_table: &str,
    sales_table: &str,
    envelopes: Vec<(S, EventEnvelope)>,
    stats: &mut BatchStats,
) -> Result<DeadLetters<S>, sqlx::Error> {
    let mut dead = Vec::new();
    let skus: Vec<String> = envelopes
        .iter()
        .filter_map(|(_, e)| e.stream_id.as_str().strip_prefix("inventory-").map(str::to_owned))
        .collect();
    let mut rows = catalog::load(conn, items_table, &skus).await?;
    let mut touched = std::collections::HashSet::new();
    let mut sales = Vec::new();
    for (m, env) in envelopes {
        let Some(sku) = env.stream_id.as_str().strip_prefix("inventory-").map(str::to_owned) else {
            dead.push((m, format!("stream id {} is not an inventory stream", env.stream_id)));
            continue;
        };
        let version = rows.get(&sku).map_or(0, |r| r.version);
        for env in events_to_fold(conn, version, env, stats).await? {
            let event = match decode::<InventoryEvent>(&env) {
                Ok(e) => e,
                Err(e) => {
                    dead.push((m.clone(), e.to_string()));
                    break;
                }
            };
            match catalog::fold(rows.remove(&sku), &env, &event) {
                (Some(row), sale) => {
                    stats.occurred.push(env.occurred_at);
                    tracing::debug!(correlation_id = %env.metadata.correlation_id, stream = %env.stream_id, version = env.version, "event applied");
                    rows.insert(sku.clone(), row);
                    sales.extend(sale);
                    touched.insert(sku.clone());
                    stats.applied += 1;
                }
                (None, _) => {
                    dead.push((
                        m,
                        format!("{} of {} before the item was added", env.event_type, env.stream_id),
                    ));
                    break;
                }
            }
        }
    }
    let changed: Vec<&catalog::CatalogRow> = touched.iter().filter_map(|s| rows.get(s)).collect();
    catalog::upsert(conn, items_table, &changed).await?;
    catalog::add_sales(conn, sales_table, &sales).await?;
    Ok(dead)
}

pub(crate) async fn apply_orders<S: Clone>(
    conn: &mut PgConnection,
    table: &str,
    envelopes: Vec<(S, EventEnvelope)>,
    stats: &mut BatchStats,
) -> Result<DeadLetters<S>, sqlx::Error> {
    let mut dead = Vec::new();
    let ids: Vec<uuid::Uuid> = envelopes
        .iter()
        .filter_map(|(_, e)| e.stream_id.as_str().strip_prefix("order-").and_then(|s| s.parse().ok()))
        .collect();
    let mut rows = orders::load(conn, table, &ids).await?;
    let mut touched = std::collections::HashSet::new();
    for (m, env) in envelopes {
        let Some(id) = env
            .stream_id
            .as_str()
            .strip_prefix("order-")
            .and_then(|s| s.parse::<uuid::Uuid>().ok())
        else {
            dead.push((m, format!("stream id {} is not an order stream", env.stream_id)));
            continue;
        };
        let version = rows.get(&id).map_or(0, |r| r.version);
        for env in events_to_fold(conn, version, env, stats).await? {
            let event = match decode::<OrderEvent>(&env) {
                Ok(e) => e,
                Err(e) => {
                    dead.push((m.clone(), e.to_string()));
                    break;
                }
            };
            match orders::fold(rows.remove(&id), &env, &event) {
                Some(row) => {
                    stats.occurred.push(env.occurred_at);
                    tracing::debug!(correlation_id = %env.metadata.correlation_id, stream = %env.stream_id, version = env.version, "event applied");
                    rows.insert(id, row);
                    touched.insert(id);
                    stats.applied += 1;
                }
                None => {
                    dead.push((
                        m,
                        format!("{} of {} before the order was placed", env.event_type, env.stream_id),
                    ));
                    break;
                }
            }
        }
    }
    let changed: Vec<&orders::OrderRow> = touched.iter().filter_map(|id| rows.get(id)).collect();
    orders::upsert(conn, table, &changed).await?;
    Ok(dead)
}
