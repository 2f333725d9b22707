//! The projector worker: one Kafka consumer group per projection, one Postgres transaction per
//! batch of messages holding the view rows, the dead letters and the checkpoint together.
//!
//! The checkpoint table is the truth about what was applied: messages below a partition's
//! `next_offset` are skipped, so a crash between the database commit and the Kafka offset
//! commit (or a rebalance handing a partition to another process) never applies anything twice.
//! Within a batch, an event at or below its row's version is a duplicate; one beyond the next
//! version means the row missed events, which are read from the event store and applied first.

use crate::heal::{heal_from_store, HealError};
use crate::view::{BatchStats, Projection};
use backon::{ExponentialBuilder, Retryable};
use clap::Args;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, Rebalance, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use sqlx::{PgConnection, PgPool};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use surge_events::{topics, EventEnvelope};
use surge_runtime::kafka::TopicIdentity;
use surge_runtime::{DatabaseConfig, KafkaConfig, StartupError};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Args)]
pub struct ProjectorConfig {
    #[command(flatten)]
    pub db: DatabaseConfig,
    #[command(flatten)]
    pub kafka: KafkaConfig,
    /// Projections this process keeps (comma-separated).
    #[arg(long = "projection", env = "SURGE_PROJECTIONS", value_enum, value_delimiter = ',', default_values_t = Projection::ALL.to_vec())]
    pub projections: Vec<Projection>,
    /// Most messages applied in one transaction.
    #[arg(long, env = "SURGE_PROJECTOR_BATCH_SIZE", default_value_t = ProjectorConfig::DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,
    /// How long a batch waits to fill after its first message, in milliseconds.
    #[arg(long, env = "SURGE_PROJECTOR_BATCH_WAIT_MS", default_value_t = ProjectorConfig::DEFAULT_BATCH_WAIT_MS)]
    pub batch_wait_ms: u64,
    /// Address of the projector's /healthz, /readyz and /metrics.
    #[arg(
        long = "projector-admin-addr",
        env = "SURGE_PROJECTOR_ADMIN_ADDR",
        default_value = ProjectorConfig::DEFAULT_ADMIN_ADDR
    )]
    pub admin_addr: std::net::SocketAddr,
    /// Messages behind (summed over partitions) past which /readyz says not ready.
    #[arg(long, env = "SURGE_PROJECTOR_MAX_LAG", default_value_t = ProjectorConfig::DEFAULT_MAX_LAG)]
    pub max_lag: i64,
}

/// The defaults, written once: the command line shows them and [`ProjectorConfig::new`] uses
/// them (every projection: [`Projection::ALL`]).
impl ProjectorConfig {
    pub const DEFAULT_BATCH_SIZE: usize = 1000;
    pub const DEFAULT_BATCH_WAIT_MS: u64 = 5;
    pub const DEFAULT_ADMIN_ADDR: &'static str = "127.0.0.1:9102";
    pub const DEFAULT_MAX_LAG: i64 = 100_000;

    /// The command line's defaults around `db` and `kafka`, except the admin address: port 0,
    /// so that several projectors can run in one process (tests).
    pub fn new(db: DatabaseConfig, kafka: KafkaConfig) -> Self {
        ProjectorConfig {
            db,
            kafka,
            projections: Projection::ALL.to_vec(),
            batch_size: Self::DEFAULT_BATCH_SIZE,
            batch_wait_ms: Self::DEFAULT_BATCH_WAIT_MS,
            admin_addr: ([127, 0, 0, 1], 0).into(),
            max_lag: Self::DEFAULT_MAX_LAG,
        }
    }
}

pub struct Projector {
    pool: PgPool,
    config: ProjectorConfig,
    consumers: Vec<(Projection, Arc<StreamConsumer<LagContext>>)>,
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
            let consumer: StreamConsumer<LagContext> = surge_runtime::kafka::consumer_config(&config.kafka, &group)
                .set("session.timeout.ms", "10000")
                .set("heartbeat.interval.ms", "1000")
                .set("statistics.interval.ms", "2000")
                .create_with_context(LagContext {
                    projection,
                    total: lag.clone(),
                    mine: AtomicI64::new(0),
                    assignments: AtomicU64::new(0),
                    stats_since_assignment: AtomicBool::new(false),
                    verified: AtomicU64::new(0),
                })?;
            let topic = topics::topic_for(&config.kafka.topic_prefix, projection.stream_type());
            consumer.subscribe(&[&topic])?;
            consumers.push((projection, Arc::new(consumer)));
        }
        Ok(Projector {
            pool,
            config,
            consumers,
            lag,
        })
    }

    /// Consumes until `shutdown` resolves; a batch in flight finishes first. The admin
    /// endpoints serve alongside: `/healthz`, `/metrics`, and `/readyz`, which says ready once
    /// the database is, every projection has its partitions assigned and its checkpoints
    /// checked against the broker, and the lag is known and under the limit: a caller that
    /// waits for it (`./dev demo`) does not start writing before the views can follow.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let cancel = CancellationToken::new();
        let mut tasks = Vec::new();
        let lag = self.lag.clone();
        surge_runtime::db::report_pool_usage(self.pool.clone(), "projector");
        let contexts: Vec<_> = self.consumers.iter().map(|(_, c)| c.clone()).collect();
        let (pool, max_lag, lag_seen) = (self.pool.clone(), self.config.max_lag, lag.clone());
        let ready: surge_runtime::http::Readiness = Arc::new(move || {
            let (pool, lag) = (pool.clone(), lag_seen.load(Ordering::Relaxed));
            let waiting: Vec<&'static str> = contexts.iter().filter_map(|c| c.context().following().err()).collect();
            Box::pin(async move {
                surge_runtime::db::check_ready(&pool).await?;
                if let Some(why) = waiting.first() {
                    return Err(why.to_string());
                }
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
                kafka: self.config.kafka.clone(),
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
    kafka: KafkaConfig,
    batch_size: usize,
    batch_wait: Duration,
}

/// How long a worker waits for a message before it counts itself caught up with its assignment.
const IDLE_CHECK: Duration = Duration::from_millis(500);

/// The retry policy of the database work of a batch: a database outage is waited out.
fn patient() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(5))
        .with_max_times(usize::MAX)
}

impl Worker {
    async fn consume(self, consumer: Arc<StreamConsumer<LagContext>>, cancel: CancellationToken) {
        tracing::info!(projection = self.projection.name(), topic = %self.topic, "projector consuming");
        let Some(mut identity) = self.identity(&cancel).await else {
            return;
        };
        let mut checked_assignment = 0;
        loop {
            let first = tokio::select! {
                _ = cancel.cancelled() => break,
                m = consumer.recv() => m,
                _ = tokio::time::sleep(IDLE_CHECK) => {
                    // Nothing to read: this assignment has nothing to check yet (the first
                    // message that comes is checked against its checkpoint before it is applied).
                    // The lag may still show the commit markers of the relay's transactions.
                    let assigned = consumer.context().assignments.load(Ordering::Acquire);
                    consumer.context().verified.fetch_max(assigned, Ordering::AcqRel);
                    continue;
                }
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
            // After every (re)assignment: which cluster and topic are we reading now, and do
            // the checkpoints' offsets lie within the partitions' ranges?
            let assignment = consumer.context().assignments.load(Ordering::Acquire);
            let mut watermarks = Watermarks::new();
            if assignment != checked_assignment {
                let Some(now) = self.identity(&cancel).await else { break };
                identity = now;
                let partitions: Vec<i32> = next_offsets(&batch).keys().copied().collect();
                watermarks = self.watermarks(&consumer, partitions).await;
                checked_assignment = assignment;
            }
            let applying = std::time::Instant::now();
            let stats = loop {
                let apply = (|| apply_batch(&self.pool, self.projection, &self.topic, &identity, &watermarks, &batch))
                    .retry(patient())
                    .notify(|e, wait| tracing::warn!(error = %e, ?wait, "applying a batch failed; retrying"));
                let outcome = tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = apply => r,
                };
                match outcome {
                    Ok(Applied::Batch(stats)) => break Ok(stats),
                    Ok(Applied::AskWatermarks(partitions)) => {
                        let marks = self.watermarks(&consumer, partitions.clone()).await;
                        if partitions.iter().any(|p| !marks.contains_key(p)) {
                            // The broker did not say: ask again rather than guess.
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        watermarks.extend(marks);
                    }
                    Ok(Applied::Mismatch(mismatches)) => {
                        let heal = (|| self.heal(&identity, &mismatches))
                            .retry(patient())
                            .notify(|e, wait| tracing::warn!(error = %e, ?wait, "healing from the event store failed; retrying"));
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            r = heal => if let Err(e) = r { break Err(e.to_string()) },
                        }
                        // The watermarks were for the checkpoints just replaced.
                        watermarks.clear();
                    }
                    Err(e) => break Err(e.to_string()),
                }
            };
            consumer.context().verified.fetch_max(assignment, Ordering::AcqRel);
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
                    // From the batch in hand to its views' commit (retries included).
                    metrics::histogram!("surge_projection_batch_seconds", "projection" => p)
                        .record(applying.elapsed().as_secs_f64());
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

    /// The cluster and topic ids, asked until the broker answers (`None`: cancelled).
    async fn identity(&self, cancel: &CancellationToken) -> Option<TopicIdentity> {
        let mut pause = Duration::from_millis(100);
        loop {
            match surge_runtime::kafka::topic_identity(&self.kafka, &self.topic, Duration::from_secs(5)).await {
                Ok(id) => return Some(id),
                Err(e) => {
                    tracing::warn!(topic = %self.topic, error = %e, "cannot tell which cluster and topic this is yet")
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return None,
                _ = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    /// Low and high watermarks of `partitions` (those the broker did not answer for are left
    /// out: their checks wait for another try).
    async fn watermarks(&self, consumer: &Arc<StreamConsumer<LagContext>>, partitions: Vec<i32>) -> Watermarks {
        let (consumer, topic) = (consumer.clone(), self.topic.clone());
        let fetched = tokio::task::spawn_blocking(move || {
            let mut marks = Watermarks::new();
            for p in partitions {
                match consumer.fetch_watermarks(&topic, p, Duration::from_secs(5)) {
                    Ok(m) => {
                        marks.insert(p, m);
                    }
                    Err(e) => tracing::warn!(topic = %topic, partition = p, error = %e, "watermarks unavailable"),
                }
            }
            marks
        })
        .await;
        fetched.unwrap_or_default()
    }

    /// Logs and counts each mismatch once, folds from the event store what the views lack,
    /// and points the checkpoints at this cluster and topic, in one transaction.
    async fn heal(&self, identity: &TopicIdentity, mismatches: &[Mismatch]) -> Result<(), HealError> {
        let p = self.projection.name();
        for m in mismatches {
            tracing::warn!(
                projection = p,
                topic = %self.topic,
                partition = m.partition,
                reason = m.reason.as_str(),
                checkpoint_offset = ?m.next_offset,
                checkpoint_cluster = ?m.cluster_id,
                checkpoint_topic_id = ?m.topic_id,
                cluster = %identity.cluster_id,
                topic_id = %identity.topic_id,
                "checkpoint does not match the broker; healing from the event store before following Kafka again"
            );
            metrics::counter!("surge_projection_checkpoint_resets_total", "projection" => p, "reason" => m.reason.as_str())
                .increment(1);
        }
        let started = std::time::Instant::now();
        let mut tx = self.pool.begin().await?;
        lock_projection(&mut tx, self.projection, Lock::Exclusive).await?;
        let tables: Vec<String> = self.projection.tables().iter().map(|t| t.to_string()).collect();
        let report = heal_from_store(&mut tx, self.projection, &tables).await?;
        // A different cluster or topic invalidates every partition's offsets, not only the
        // ones this batch showed.
        let whole_topic = mismatches.iter().any(|m| m.reason.whole_topic());
        let partitions: Vec<i32> = mismatches.iter().map(|m| m.partition).collect();
        let src = source(self.projection, &self.topic, identity);
        surge_store::checkpoints::reset(&mut tx, src, whole_topic, &partitions).await?;
        tx.commit().await?;
        metrics::counter!("surge_projection_store_healed_events_total", "projection" => p)
            .increment(report.events as u64);
        tracing::warn!(
            projection = p,
            streams = report.streams,
            events = report.events,
            seconds = started.elapsed().as_secs_f64(),
            "healed from the event store; following Kafka again"
        );
        Ok(())
    }
}

/// Low and high watermark per partition.
type Watermarks = HashMap<i32, (i64, i64)>;

/// Why a checkpoint's offsets cannot be trusted for the messages at hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MismatchReason {
    /// The checkpoint was written against another Kafka cluster (the broker's data replaced).
    ClusterChanged,
    /// The topic was deleted and created again.
    TopicChanged,
    /// The checkpoint points past the partition's end (the partition lost data, or is another).
    BeyondHighWatermark,
    /// Messages after the checkpoint were deleted (retention) before they were applied.
    BelowLowWatermark,
    /// The checkpoint does not say which cluster and topic its offsets belong to.
    IdentityUnknown,
}

impl MismatchReason {
    pub fn as_str(self) -> &'static str {
        match self {
            MismatchReason::ClusterChanged => "cluster_changed",
            MismatchReason::TopicChanged => "topic_changed",
            MismatchReason::BeyondHighWatermark => "beyond_high_watermark",
            MismatchReason::BelowLowWatermark => "below_low_watermark",
            MismatchReason::IdentityUnknown => "identity_unknown",
        }
    }
    fn whole_topic(self) -> bool {
        matches!(
            self,
            MismatchReason::ClusterChanged | MismatchReason::TopicChanged | MismatchReason::IdentityUnknown
        )
    }
}

/// One partition whose checkpoint does not fit the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub partition: i32,
    pub reason: MismatchReason,
    pub next_offset: Option<i64>,
    pub cluster_id: Option<String>,
    pub topic_id: Option<String>,
}

/// What [`apply_batch`] did.
#[derive(Debug)]
pub enum Applied {
    Batch(BatchStats),
    /// Nothing was applied: these checkpoints must be healed first.
    Mismatch(Vec<Mismatch>),
    /// Nothing was applied: the batch starts past these partitions' checkpoints, and only
    /// their watermarks tell lost messages from marker offsets.
    AskWatermarks(Vec<i32>),
}

/// Receives librdkafka's statistics (every 2 s): consumer lag per assigned partition; and its
/// rebalances, so the worker checks its checkpoints against each new assignment.
pub struct LagContext {
    projection: Projection,
    /// Messages behind, summed over this process's projections (for readiness).
    total: Arc<AtomicI64>,
    mine: AtomicI64,
    /// Assignments received (0: the group has not been joined yet).
    assignments: AtomicU64,
    /// Whether a statistics report came after the latest assignment (the lag is known).
    stats_since_assignment: AtomicBool,
    /// The latest assignment the worker has caught up with: its first batch checked (healed
    /// where needed) and applied, or nothing to read.
    verified: AtomicU64,
}

impl LagContext {
    /// Ready to follow the topic, or why not yet.
    fn following(&self) -> Result<(), &'static str> {
        let assigned = self.assignments.load(Ordering::Acquire);
        if assigned == 0 {
            return Err("projector has not joined its consumer group yet");
        }
        if !self.stats_since_assignment.load(Ordering::Acquire) {
            return Err("projector's lag is not known yet");
        }
        // Caught up with the current assignment: its first batch checked against the
        // checkpoints and applied, or nothing to read for a moment.
        if self.verified.load(Ordering::Acquire) < assigned {
            return Err("projector is checking its checkpoints against the broker and catching up");
        }
        Ok(())
    }
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
        if self.assignments.load(Ordering::Acquire) > 0 {
            self.stats_since_assignment.store(true, Ordering::Release);
        }
    }
}

impl rdkafka::consumer::ConsumerContext for LagContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            self.stats_since_assignment.store(false, Ordering::Release);
            self.assignments.fetch_add(1, Ordering::AcqRel);
            tracing::info!(
                projection = self.projection.name(),
                partitions = tpl.count(),
                "partitions assigned"
            );
        }
    }
}

/// The next offset to read per partition after a batch.
fn next_offsets(batch: &[OwnedMessage]) -> BTreeMap<i32, i64> {
    let mut next = BTreeMap::new();
    for m in batch {
        let e = next.entry(m.partition()).or_insert(0);
        *e = (*e).max(m.offset() + 1);
    }
    next
}

/// The first offset per partition in a batch.
fn first_offsets(batch: &[OwnedMessage]) -> BTreeMap<i32, i64> {
    let mut first = BTreeMap::new();
    for m in batch {
        let e = first.entry(m.partition()).or_insert(i64::MAX);
        *e = (*e).min(m.offset());
    }
    first
}

use surge_store::checkpoints::Checkpoint;

/// The checkpoints' key for this projection, topic and cluster.
fn source<'a>(p: Projection, topic: &'a str, identity: &'a TopicIdentity) -> surge_store::checkpoints::Source<'a> {
    surge_store::checkpoints::Source {
        projection: p.name(),
        topic,
        cluster_id: &identity.cluster_id,
        topic_id: &identity.topic_id,
    }
}

/// What a checkpoint says about the messages at hand.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// The checkpoint continues with these messages (or they repeat what it holds).
    Fits,
    /// Messages are missing between the checkpoint and the batch, or there are marker
    /// offsets (a Kafka transaction's commit markers take offsets too): the partition's
    /// watermarks tell which.
    AskWatermarks,
    Mismatch(Mismatch),
}

/// Whether `row` can be trusted for a batch whose first message of the partition is at
/// `first`, read from the cluster and topic `identity`, with the partition's watermarks when
/// they were fetched for this batch.
fn check(partition: i32, row: &Checkpoint, first: i64, identity: &TopicIdentity, marks: Option<(i64, i64)>) -> Verdict {
    let reason = if row.cluster_id.as_deref().is_some_and(|c| c != identity.cluster_id) {
        MismatchReason::ClusterChanged
    } else if row.topic_id.as_deref().is_some_and(|t| t != identity.topic_id) {
        MismatchReason::TopicChanged
    } else if row.next_offset.is_some() && (row.cluster_id.is_none() || row.topic_id.is_none()) {
        // Written before checkpoints named their cluster and topic: its offsets may belong to
        // anything; heal once rather than trust them.
        MismatchReason::IdentityUnknown
    } else {
        // NULL: a heal just caught the views up; the next message continues.
        let Some(next) = row.next_offset else {
            return Verdict::Fits;
        };
        match marks {
            Some((_, high)) if next > high => MismatchReason::BeyondHighWatermark,
            Some((low, _)) if next < low => MismatchReason::BelowLowWatermark,
            // Within the partition's range, the offsets in between were markers or records of
            // aborted transactions, which consumers never see.
            Some(_) => return Verdict::Fits,
            // One offset between batches is the commit marker of the relay's transaction;
            // more may be lost messages, or aborted rounds: the watermarks tell.
            None if first > next + 1 => return Verdict::AskWatermarks,
            None => return Verdict::Fits,
        }
    };
    Verdict::Mismatch(Mismatch {
        partition,
        reason,
        next_offset: row.next_offset,
        cluster_id: row.cluster_id.clone(),
        topic_id: row.topic_id.clone(),
    })
}

/// How a transaction holds its projection: batches share it, a heal or a replay's switch
/// holds it alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lock {
    Shared,
    Exclusive,
}

/// Takes the projection's transaction-scoped advisory lock, first thing in the transaction. An
/// advisory lock gives the transaction no id, so a batch waiting here is not a writer the
/// holder's safe position would wait for (a row lock would be: they would wait on each other).
pub(crate) async fn lock_projection(conn: &mut PgConnection, p: Projection, lock: Lock) -> Result<(), sqlx::Error> {
    let sql = match lock {
        Lock::Shared => "SELECT pg_advisory_xact_lock_shared(hashtextextended('surge-projection:' || $1, 0))",
        Lock::Exclusive => "SELECT pg_advisory_xact_lock(hashtextextended('surge-projection:' || $1, 0))",
    };
    sqlx::query(sql).bind(p.name()).execute(conn).await?;
    Ok(())
}

/// Applies one batch of messages of `topic` to the projection's views, in one transaction,
/// unless a checkpoint of the batch's partitions belongs to another cluster or topic or does
/// not fit the partition's offsets: then nothing is applied and the mismatches are returned.
pub async fn apply_batch(
    pool: &PgPool,
    projection: Projection,
    topic: &str,
    identity: &TopicIdentity,
    watermarks: &Watermarks,
    batch: &[OwnedMessage],
) -> Result<Applied, sqlx::Error> {
    let mut stats = BatchStats::default();
    let mut tx = pool.begin().await?;
    lock_projection(&mut tx, projection, Lock::Shared).await?;
    let partitions: Vec<i32> = next_offsets(batch).keys().copied().collect();
    let src = source(projection, topic, identity);
    let checkpoint: HashMap<i32, Checkpoint> = surge_store::checkpoints::lock_partitions(&mut tx, src, &partitions)
        .await
        .map_err(sqlx::Error::from)?
        .into_iter()
        .map(|c| (c.partition, c))
        .collect();
    let (mut mismatches, mut ask) = (Vec::new(), Vec::new());
    for (partition, first) in first_offsets(batch) {
        let Some(row) = checkpoint.get(&partition) else {
            continue;
        };
        match check(partition, row, first, identity, watermarks.get(&partition).copied()) {
            Verdict::Fits => {}
            Verdict::AskWatermarks => ask.push(partition),
            Verdict::Mismatch(m) => mismatches.push(m),
        }
    }
    if !mismatches.is_empty() {
        tx.rollback().await?;
        return Ok(Applied::Mismatch(mismatches));
    }
    if !ask.is_empty() {
        tx.rollback().await?;
        return Ok(Applied::AskWatermarks(ask));
    }

    let mut messages = Vec::with_capacity(batch.len());
    let mut envelopes = Vec::with_capacity(batch.len());
    let mut dead = Vec::new();
    let mut advanced: HashMap<i32, (i64, i64)> = HashMap::new();
    for m in batch {
        let next = checkpoint.get(&m.partition()).and_then(|c| c.next_offset);
        if next.is_some_and(|next| m.offset() < next) {
            stats.already_checkpointed += 1;
            continue;
        }
        let entry = advanced.entry(m.partition()).or_insert((0, 0));
        entry.0 = entry.0.max(m.offset() + 1);
        match EventEnvelope::from_json(m.payload().unwrap_or_default()) {
            Ok(env) if env.stream_type == projection.stream_type() => {
                entry.1 = entry.1.max(env.position);
                messages.push(m);
                envelopes.push(env);
            }
            Ok(env) => dead.push((m, format!("stream type {:?} on the {} topic", env.stream_type, topic))),
            Err(e) => dead.push((m, e.to_string())),
        }
    }

    let not_folded = projection
        .apply(&mut tx, &projection.live_tables(), envelopes, &mut stats)
        .await?;
    dead.extend(not_folded.into_iter().map(|(i, error)| (messages[i], error)));
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
    let advanced: Vec<(i32, i64, i64)> = advanced.into_iter().map(|(p, (o, pos))| (p, o, pos)).collect();
    surge_store::checkpoints::advance(&mut tx, src, &advanced)
        .await
        .map_err(sqlx::Error::from)?;
    tx.commit().await?;
    let now = chrono::Utc::now();
    for t in std::mem::take(&mut stats.occurred) {
        let latency = (now - t).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6;
        metrics::histogram!("surge_event_to_view_seconds", "projection" => projection.name()).record(latency);
    }
    Ok(Applied::Batch(stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_debug_never_shows_the_database_password() {
        let password = "db-pa55word-x";
        let config = ProjectorConfig::new(
            DatabaseConfig::new(format!("postgres://surge:{password}@127.0.0.1:5432/surge")),
            KafkaConfig::new("127.0.0.1:9092", ""),
        );
        assert!(!format!("{config:?}").contains(password));
    }

    fn identity() -> TopicIdentity {
        TopicIdentity {
            cluster_id: "cluster-a".into(),
            topic_id: "topic-1".into(),
        }
    }

    fn row(next: Option<i64>, cluster: Option<&str>, topic: Option<&str>) -> Checkpoint {
        Checkpoint {
            partition: 0,
            next_offset: next,
            cluster_id: cluster.map(str::to_owned),
            topic_id: topic.map(str::to_owned),
        }
    }

    fn reason(v: Verdict) -> Option<MismatchReason> {
        match v {
            Verdict::Mismatch(m) => Some(m.reason),
            _ => None,
        }
    }

    #[test]
    fn offsets_of_another_cluster_or_topic_are_never_trusted() {
        let id = identity();
        let other_cluster = row(Some(1291), Some("cluster-b"), Some("topic-1"));
        assert_eq!(
            reason(check(0, &other_cluster, 0, &id, None)),
            Some(MismatchReason::ClusterChanged)
        );
        let recreated = row(Some(1291), Some("cluster-a"), Some("topic-0"));
        assert_eq!(
            reason(check(0, &recreated, 0, &id, None)),
            Some(MismatchReason::TopicChanged)
        );
    }

    #[test]
    fn offsets_outside_the_partition_are_detected_by_its_watermarks() {
        let id = identity();
        // Past the end of a partition that now holds 5.
        let past = row(Some(1291), Some("cluster-a"), Some("topic-1"));
        assert_eq!(
            reason(check(0, &past, 0, &id, Some((0, 5)))),
            Some(MismatchReason::BeyondHighWatermark)
        );
        // From before checkpoints named their cluster and topic: never trusted.
        let legacy = row(Some(3), None, None);
        assert_eq!(
            reason(check(0, &legacy, 0, &id, Some((0, 5)))),
            Some(MismatchReason::IdentityUnknown)
        );
        // Retention deleted offsets 10..40 before they were applied.
        let behind = row(Some(10), Some("cluster-a"), Some("topic-1"));
        assert_eq!(
            reason(check(0, &behind, 40, &id, Some((40, 60)))),
            Some(MismatchReason::BelowLowWatermark)
        );
    }

    #[test]
    fn a_jump_past_the_checkpoint_asks_the_watermarks_and_markers_fit() {
        let id = identity();
        let at = row(Some(10), Some("cluster-a"), Some("topic-1"));
        assert_eq!(check(0, &at, 12, &id, None), Verdict::AskWatermarks);
        // One offset skipped: a round's commit marker.
        assert_eq!(check(0, &at, 11, &id, None), Verdict::Fits);
        // Offsets 10 and 11 were a transaction's markers: still in the partition's range.
        assert_eq!(check(0, &at, 12, &id, Some((0, 30))), Verdict::Fits);
    }

    #[test]
    fn continuing_repeating_or_freshly_healed_checkpoints_fit() {
        let id = identity();
        let at = row(Some(10), Some("cluster-a"), Some("topic-1"));
        assert_eq!(check(0, &at, 10, &id, None), Verdict::Fits);
        assert_eq!(check(0, &at, 3, &id, None), Verdict::Fits);
        assert_eq!(check(0, &at, 3, &id, Some((0, 30))), Verdict::Fits);
        let healed = row(None, Some("cluster-a"), Some("topic-1"));
        assert_eq!(check(0, &healed, 500, &id, None), Verdict::Fits);
    }
}
