//! The outbox relay: publishes committed events to Kafka, at least once, in stream order.
//!
//! One relay is active at a time: it holds a lease, a Postgres session advisory lock on a
//! dedicated connection (the lock session). The active relay confirms the lease with a bounded
//! statement on that session at least every [`LEASE_CHECK_EVERY`], also while it waits for
//! Kafka, and starts a send, a commit or a delete only while its last confirmation is younger
//! than [`LEASE_VALID`]; it reads and deletes outbox rows on the lock session itself, so a
//! delete can only commit while the session, and with it the lock, is alive. When it cannot
//! confirm, it aborts what it has under way on Kafka and stands by. A standby takes the lock
//! when it is free, and ends the lock session of an active relay that Postgres has not heard
//! from for [`LEASE_EXPIRES`] (a relay cut off from Postgres: the server alone would notice
//! only by TCP keepalive).
//!
//! Each round is one Kafka transaction ([`Publisher`]; the real one is a transactional
//! producer, `acks=all`, key = stream id, so one stream stays in one partition): it reads
//! outbox rows in position order, queues them all at once in that order (so each stream's
//! events are written in version order, which the idempotent producer keeps through its
//! retries), waits for every acknowledgement, commits, and only then deletes the rows. If a
//! send or the commit fails, the transaction is aborted: consumers (`read_committed`, librdkafka's
//! default) see none of it, and the whole round is sent again, so a failed send can never let
//! a later version of its stream through first. The transactional id is the same for every
//! relay of a deployment ([`transactional_id`]): a relay that becomes active fences, on the
//! Kafka side too, the producer of the relay it replaces and aborts what that one left open.
//! A crash, or a commit whose outcome is unknown, between commit and delete re-publishes that
//! whole round: consumers skip what they already have (by stream version / event id).

use clap::Args;
use futures::future::{join_all, BoxFuture};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer, PurgeConfig};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use surge_events::{topics, EventEnvelope};
use surge_runtime::breaker::Breaker;
use surge_runtime::{DatabaseConfig, KafkaConfig, StartupError};
use surge_store::StoreError;
use tokio::time::{timeout, Instant};

/// Session advisory lock key held by the active relay ("surge-relay").
pub const RELAY_LOCK_KEY: i64 = 0x5355_5247_4552_4c59;

/// How often the active relay confirms its lease, between rounds and during one.
pub const LEASE_CHECK_EVERY: Duration = Duration::from_millis(500);
/// How long a lease check may wait for Postgres' answer before the lease counts as lost.
pub const LEASE_CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// The active relay starts a send or a delete only this long after the last statement its lock
/// session answered (counted from when that statement was sent).
pub const LEASE_VALID: Duration = Duration::from_secs(2);
/// A standby ends the lock session of an active relay that Postgres has not heard from for this
/// long. Well past [`LEASE_VALID`]: by then the cut-off relay has stopped of its own accord.
pub const LEASE_EXPIRES: Duration = Duration::from_secs(5);
/// How often a standby tries to take over.
pub const STANDBY_POLL: Duration = Duration::from_millis(500);
/// Bound on the lock session's heavier statements (reading a batch, deleting it), both on the
/// client and on the server (`statement_timeout`).
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Args)]
pub struct RelayConfig {
    #[command(flatten)]
    pub db: DatabaseConfig,
    #[command(flatten)]
    pub kafka: KafkaConfig,
    /// Outbox rows published per round trip.
    #[arg(
        long,
        env = "SURGE_RELAY_BATCH_SIZE",
        default_value_t = RelayConfig::DEFAULT_BATCH_SIZE,
        value_parser = clap::value_parser!(i64).range(1..)
    )]
    pub batch_size: i64,
    /// Pause when the outbox is empty, in milliseconds.
    #[arg(long, env = "SURGE_RELAY_IDLE_MS", default_value_t = RelayConfig::DEFAULT_IDLE_MS)]
    pub idle_ms: u64,
    /// How long one event may wait for Kafka's acknowledgement before its round counts as
    /// failed (its transaction is aborted, its events stay in the outbox and are sent again),
    /// in milliseconds; also the bound on starting, committing and aborting a transaction.
    #[arg(long, env = "SURGE_RELAY_DELIVERY_TIMEOUT_MS", default_value_t = RelayConfig::DEFAULT_DELIVERY_TIMEOUT_MS)]
    pub delivery_timeout_ms: u64,
    /// Address of the relay's /healthz, /readyz and /metrics.
    #[arg(
        long = "relay-admin-addr",
        env = "SURGE_RELAY_ADMIN_ADDR",
        default_value = RelayConfig::DEFAULT_ADMIN_ADDR
    )]
    pub admin_addr: std::net::SocketAddr,
}

/// The defaults, written once: the command line shows them and [`RelayConfig::new`] uses them.
impl RelayConfig {
    pub const DEFAULT_BATCH_SIZE: i64 = 1000;
    pub const DEFAULT_IDLE_MS: u64 = 10;
    pub const DEFAULT_DELIVERY_TIMEOUT_MS: u64 = 10_000;
    pub const DEFAULT_ADMIN_ADDR: &'static str = "127.0.0.1:9101";

    /// The command line's defaults around `db` and `kafka`, except the admin address: port 0,
    /// so that several relays can run in one process (tests).
    pub fn new(db: DatabaseConfig, kafka: KafkaConfig) -> Self {
        RelayConfig {
            db,
            kafka,
            batch_size: Self::DEFAULT_BATCH_SIZE,
            idle_ms: Self::DEFAULT_IDLE_MS,
            delivery_timeout_ms: Self::DEFAULT_DELIVERY_TIMEOUT_MS,
            admin_addr: ([127, 0, 0, 1], 0).into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// The Kafka side of the relay: a term of producing, and in it one transaction per round
/// ([`begin`](Publisher::begin), a [`send`](Publisher::send) per event,
/// [`commit`](Publisher::commit), or [`abort`](Publisher::abort) when a send failed). The
/// relay's own is [`KafkaPublisher`]; tests wrap it to make chosen sends fail.
pub trait Publisher: Send + Sync {
    /// Starts a term as the one producer of the relay's transactional id: what an earlier
    /// producer of that id left open is aborted, and that producer can write no more (this
    /// relay's own earlier term included).
    fn start(&self) -> BoxFuture<'_, Result<(), KafkaError>>;
    /// Begins the round's transaction.
    fn begin(&self) -> Result<(), KafkaError>;
    /// Queues one event of the open transaction when called (events are written in the order
    /// of the calls); the future is done when Kafka acknowledged it, or it failed.
    fn send<'a>(&'a self, env: &'a EventEnvelope) -> BoxFuture<'a, Result<(), KafkaError>>;
    /// Commits the open transaction: its events become visible to consumers all at once.
    fn commit(&self) -> BoxFuture<'_, Result<(), KafkaError>>;
    /// Aborts the open transaction: consumers never see its events.
    fn abort(&self) -> BoxFuture<'_, Result<(), KafkaError>>;
    /// Ends the term: aborts an open transaction if it can within a short time, drops what is
    /// queued, and drops the producer.
    fn stop(&self) -> BoxFuture<'_, ()>;
}

/// Times the phases of a round one after the other (`surge_relay_phase_seconds`): reading
/// the batch, sending it (until Kafka acknowledged every event), committing the Kafka
/// transaction, deleting the batch from the outbox. Sending and committing each include the
/// lease check before them (a statement only when the last confirmation is getting old).
struct PhaseClock {
    last: Instant,
}

impl PhaseClock {
    fn new(began: Instant) -> PhaseClock {
        PhaseClock { last: began }
    }

    fn done(&mut self, phase: &'static str) {
        let now = Instant::now();
        metrics::histogram!("surge_relay_phase_seconds", "phase" => phase).record((now - self.last).as_secs_f64());
        self.last = now;
    }
}

/// The transactional id of a deployment's relays: one for all of them, so that of their
/// producers Kafka lets only the one started last write.
pub fn transactional_id(topic_prefix: &str) -> String {
    format!("{topic_prefix}surge-relay")
}

/// How long an open transaction may go without word from its producer before Kafka aborts it,
/// beyond the delivery timeout (a relay that died mid-round; until then `read_committed`
/// consumers of its partitions wait at the open transaction).
const TRANSACTION_SLACK: Duration = Duration::from_secs(20);
/// How long ending a term may wait for Kafka to abort its open transaction.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// A transactional producer (`acks=all`, idempotent, key = stream id, so one stream stays in
/// one partition), a new one for every term.
pub struct KafkaPublisher {
    settings: ClientConfig,
    producer: Mutex<Option<FutureProducer>>,
    topic_prefix: String,
    /// Bound on one event's delivery, and on starting, committing and aborting.
    timeout: Duration,
}

impl KafkaPublisher {
    pub fn new(config: &RelayConfig) -> Result<Self, KafkaError> {
        let timeout = Duration::from_millis(config.delivery_timeout_ms.max(1000));
        let mut settings = surge_runtime::kafka::client_config(&config.kafka);
        settings
            .set("transactional.id", transactional_id(&config.kafka.topic_prefix))
            .set(
                "transaction.timeout.ms",
                (timeout + TRANSACTION_SLACK).as_millis().to_string(),
            )
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "2")
            .set("compression.type", "lz4")
            .set("message.timeout.ms", timeout.as_millis().to_string())
            .set("reconnect.backoff.max.ms", "1000")
            .set("queue.buffering.max.messages", "200000");
        // A producer made and dropped here: bad settings fail at startup, not on becoming active.
        let _: FutureProducer = settings.create()?;
        Ok(KafkaPublisher {
            settings,
            producer: Mutex::new(None),
            topic_prefix: config.kafka.topic_prefix.clone(),
            timeout,
        })
    }

    /// This term's producer.
    fn current(&self) -> Result<FutureProducer, KafkaError> {
        self.producer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(KafkaError::MessageProduction(RDKafkaErrorCode::State))
    }

    /// Runs a blocking transactional call of this term's producer off the runtime.
    fn blocking(
        &self,
        call: impl FnOnce(&FutureProducer, Duration) -> Result<(), KafkaError> + Send + 'static,
    ) -> BoxFuture<'_, Result<(), KafkaError>> {
        let timeout = self.timeout;
        Box::pin(async move {
            let producer = self.current()?;
            tokio::task::spawn_blocking(move || call(&producer, timeout))
                .await
                .map_err(|_| KafkaError::Canceled)?
        })
    }
}

impl Publisher for KafkaPublisher {
    fn start(&self) -> BoxFuture<'_, Result<(), KafkaError>> {
        let old = self.producer.lock().unwrap_or_else(|e| e.into_inner()).take();
        let (settings, timeout) = (self.settings.clone(), self.timeout);
        Box::pin(async move {
            let producer = tokio::task::spawn_blocking(move || {
                drop(old);
                let producer: FutureProducer = settings.create()?;
                producer.init_transactions(timeout)?;
                Ok::<_, KafkaError>(producer)
            })
            .await
            .map_err(|_| KafkaError::Canceled)??;
            *self.producer.lock().unwrap_or_else(|e| e.into_inner()) = Some(producer);
            Ok(())
        })
    }

    fn begin(&self) -> Result<(), KafkaError> {
        self.current()?.begin_transaction()
    }

    fn send<'a>(&'a self, env: &'a EventEnvelope) -> BoxFuture<'a, Result<(), KafkaError>> {
        let producer = match self.current() {
            Ok(p) => p,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        let topic = topics::topic_for(&self.topic_prefix, env.stream_type);
        let payload = env.to_json();
        let event_id = env.event_id.to_string();
        let correlation_id = env.metadata.correlation_id.to_string();
        let schema_version = env.schema_version.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "event_type",
                value: Some(env.event_type.as_str()),
            })
            .insert(Header {
                key: "schema_version",
                value: Some(schema_version.as_str()),
            })
            .insert(Header {
                key: "event_id",
                value: Some(event_id.as_str()),
            })
            .insert(Header {
                key: "correlation_id",
                value: Some(correlation_id.as_str()),
            });
        let record = FutureRecord::to(&topic)
            .key(env.stream_id.as_str())
            .payload(&payload)
            .headers(headers);
        // Queued now, not when the future is first polled: the calls' order is the topic's.
        match producer.send_result(record) {
            Ok(delivery) => Box::pin(async move {
                match delivery.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => Err(e),
                    Err(_) => Err(KafkaError::Canceled),
                }
            }),
            Err((e, _)) => Box::pin(std::future::ready(Err(e))),
        }
    }

    fn commit(&self) -> BoxFuture<'_, Result<(), KafkaError>> {
        self.blocking(|producer, timeout| producer.commit_transaction(timeout))
    }

    fn abort(&self) -> BoxFuture<'_, Result<(), KafkaError>> {
        self.blocking(|producer, timeout| producer.abort_transaction(timeout))
    }

    fn stop(&self) -> BoxFuture<'_, ()> {
        let producer = self.producer.lock().unwrap_or_else(|e| e.into_inner()).take();
        Box::pin(async move {
            let Some(producer) = producer else { return };
            let ended = tokio::task::spawn_blocking(move || {
                // An error here is no transaction open, or Kafka out of reach: then the next
                // term's start aborts it, or Kafka does after the transaction timeout.
                let _ = producer.abort_transaction(STOP_TIMEOUT);
                producer.purge(PurgeConfig::default().queue().inflight());
            });
            let _ = timeout(STOP_TIMEOUT * 2, ended).await;
        })
    }
}

pub struct Relay {
    config: RelayConfig,
    pool: PgPool,
    publisher: Arc<dyn Publisher>,
    /// Opens when deliveries keep failing (Kafka down): the relay pauses, the outbox buffers,
    /// and commands are still accepted since Postgres is the source of truth.
    breaker: Breaker,
}

impl Relay {
    pub async fn build(config: RelayConfig) -> Result<Self, StartupError> {
        let publisher = KafkaPublisher::new(&config)?;
        Self::build_with(config, Arc::new(publisher)).await
    }

    /// A relay that sends through `publisher` (tests wrap [`KafkaPublisher`] to inject faults).
    pub async fn build_with(config: RelayConfig, publisher: Arc<dyn Publisher>) -> Result<Self, StartupError> {
        surge_runtime::telemetry::prometheus();
        // Exported from the start (at 0), so dashboards and alerts see the series before the
        // first failure.
        metrics::counter!("surge_relay_publish_failures_total").increment(0);
        let pool = surge_runtime::db::connect(&DatabaseConfig {
            max_connections: 4,
            ..config.db.clone()
        })
        .await?;
        let breaker = Breaker::new("kafka_publish", 3, Duration::from_secs(1), Duration::from_secs(15));
        Ok(Relay {
            config,
            pool,
            publisher,
            breaker,
        })
    }

    /// Runs until `shutdown` resolves: waits to become the active relay, then publishes.
    /// Its admin endpoints (`/healthz`, `/readyz`, `/metrics`) serve alongside.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), RelayError> {
        let admin_stop = tokio_util::sync::CancellationToken::new();
        let pool = self.pool.clone();
        surge_runtime::db::report_pool_usage(pool.clone(), "relay");
        let ready: surge_runtime::http::Readiness = std::sync::Arc::new(move || {
            let pool = pool.clone();
            Box::pin(async move { surge_runtime::db::check_ready(&pool).await })
        });
        let admin = tokio::spawn(surge_runtime::http::serve_admin(
            self.config.admin_addr,
            ready,
            admin_stop.clone().cancelled_owned(),
        ));
        let result = self.relay(shutdown).await;
        admin_stop.cancel();
        if let Ok(Err(e)) = admin.await {
            tracing::warn!(error = %e, "relay admin endpoints failed");
        }
        result
    }

    async fn relay(&self, shutdown: impl Future<Output = ()> + Send) -> Result<(), RelayError> {
        tokio::pin!(shutdown);
        let mut standby = None;
        loop {
            let lock = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                lock = self.acquire_leadership(&mut standby) => lock,
            };
            let Some(mut lock_conn) = lock else {
                tokio::select! {
                    _ = &mut shutdown => return Ok(()),
                    _ = tokio::time::sleep(STANDBY_POLL) => continue,
                }
            };
            tracing::info!("relay is active");
            let stopped = self.publish_while_leader(&mut lock_conn, &mut shutdown).await;
            // Nothing more may reach Kafka from this relay until it holds the lease again (its
            // next term's producer fences this one's, as would another relay's).
            self.publisher.stop().await;
            if stopped {
                let _ = timeout(LEASE_CHECK_TIMEOUT, lock_conn.close()).await;
                tracing::info!("relay stopped");
                return Ok(());
            }
            drop(lock_conn);
            metrics::counter!("surge_relay_lease_lost_total").increment(1);
            tracing::warn!("relay could not confirm its lease; stopped publishing, standing by");
        }
    }

    /// The lock session: bounded on the server too, and probed by TCP keepalive every second
    /// after two idle ones, so the server itself drops a session cut off from its relay within
    /// about [`LEASE_EXPIRES`] (its default would be two hours).
    fn lock_session_options(&self) -> Result<PgConnectOptions, sqlx::Error> {
        Ok(self
            .config
            .db
            .connect_options()?
            .application_name("surge-relay-lock")
            .options([
                ("statement_timeout", "5s"),
                ("idle_in_transaction_session_timeout", "5s"),
                ("tcp_keepalives_idle", "2"),
                ("tcp_keepalives_interval", "1"),
                ("tcp_keepalives_count", "3"),
                ("tcp_user_timeout", "5000"),
            ]))
    }

    /// The lock session once this relay holds the lock, or None while another relay holds it
    /// (then `standby` keeps the connection for the next try). Ends the lock session of an
    /// active relay silent for longer than [`LEASE_EXPIRES`], and takes the lock.
    async fn acquire_leadership(&self, standby: &mut Option<PgConnection>) -> Option<PgConnection> {
        let mut conn = match standby.take() {
            Some(conn) => conn,
            None => {
                let options = self.lock_session_options().ok()?;
                match timeout(LEASE_CHECK_TIMEOUT * 2, PgConnection::connect_with(&options)).await {
                    Ok(Ok(conn)) => conn,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "relay cannot connect to Postgres");
                        return None;
                    }
                    Err(_) => {
                        tracing::warn!("relay cannot connect to Postgres: no answer");
                        return None;
                    }
                }
            }
        };
        match try_lock(&mut conn).await {
            Ok(Ok(true)) => return Some(conn),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "relay cannot take its lock");
                return None;
            }
            Err(_) => {
                tracing::warn!("relay cannot take its lock: Postgres did not answer");
                return None;
            }
        }
        // MATERIALIZED: the holder must be found silent before anything is terminated.
        let ended = sqlx::query_scalar::<_, i32>(
            "WITH silent AS MATERIALIZED ( \
               SELECT a.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
               WHERE l.locktype = 'advisory' AND l.granted \
                 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                 AND l.objsubid = 1 AND ((l.classid::bigint << 32) | l.objid::bigint) = $1 \
                 AND a.state_change < clock_timestamp() - make_interval(secs => $2)) \
             SELECT pid FROM silent WHERE pg_terminate_backend(pid, 1000)",
        )
        .bind(RELAY_LOCK_KEY)
        .bind(LEASE_EXPIRES.as_secs_f64())
        .fetch_all(&mut conn);
        match timeout(LEASE_CHECK_TIMEOUT * 2, ended).await {
            Ok(Ok(ended)) if !ended.is_empty() => {
                tracing::warn!(
                    pid = ended[0],
                    "ended the lock session of an active relay Postgres had not heard from; taking over"
                );
                if let Ok(Ok(true)) = try_lock(&mut conn).await {
                    return Some(conn);
                }
            }
            Ok(Ok(_)) => tracing::debug!("another relay is active; standing by"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "relay cannot check the active relay's lease");
                return None;
            }
            Err(_) => return None,
        }
        *standby = Some(conn);
        None
    }

    /// Publishes until shutdown (returns true) or until the lease cannot be confirmed (false).
    async fn publish_while_leader(
        &self,
        lock_conn: &mut PgConnection,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> bool {
        let lease = LeaseClock::new();
        let idle = Duration::from_millis(self.config.idle_ms);
        // Whether this term's producer is ready: started on becoming active, and again after a
        // transaction could not be aborted.
        let mut producing = false;
        loop {
            let pause = if !self.breaker.permits() {
                // Kafka keeps failing: leave the events in the outbox until the breaker's pause is over.
                if !confirm_lease(lock_conn, &lease, LEASE_CHECK_EVERY).await {
                    return false;
                }
                Duration::from_millis(100)
            } else if !producing {
                match while_leading(lock_conn, &lease, self.publisher.start()).await {
                    None => return false,
                    Some(Ok(())) => {
                        producing = true;
                        Duration::ZERO
                    }
                    Some(Err(e)) => {
                        self.breaker.failed();
                        tracing::warn!(error = %e, "relay cannot start its Kafka producer; retrying");
                        Duration::from_millis(500)
                    }
                }
            } else {
                match self.round(lock_conn, &lease).await {
                    Ok(RoundEnd::LeaseLost) => return false,
                    Ok(RoundEnd::Idle) => idle,
                    Ok(RoundEnd::Published) => {
                        self.breaker.succeeded();
                        Duration::ZERO
                    }
                    Ok(RoundEnd::Aborted { read, aborted }) => {
                        self.breaker.failed();
                        producing = aborted;
                        tracing::warn!(
                            read,
                            "round not published; its transaction is aborted and its events stay in the outbox"
                        );
                        Duration::from_millis(100)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "relay round failed; retrying");
                        Duration::from_millis(500)
                    }
                }
            };
            tokio::select! {
                _ = &mut *shutdown => return true,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// One round, one Kafka transaction: read a batch of the outbox, send it all in position
    /// order, commit once every event is acknowledged, then delete the batch. A failed send or
    /// commit aborts the transaction and leaves the whole batch in the outbox.
    async fn round(&self, lock_conn: &mut PgConnection, lease: &LeaseClock) -> Result<RoundEnd, RelayError> {
        let began = Instant::now();
        // Only a failure of the session itself puts the lease in doubt; a row that does not
        // decode is this round's error (logged, retried), not a reason to step down.
        let read = async {
            match surge_store::outbox::read_batch(&mut *lock_conn, self.config.batch_size).await {
                Err(StoreError::Database(e)) => Err(e),
                other => Ok(other),
            }
        };
        let Some(envelopes) = on_lock_session(lease, STATEMENT_TIMEOUT, read).await else {
            return Ok(RoundEnd::LeaseLost);
        };
        let envelopes = envelopes?;
        if envelopes.is_empty() {
            metrics::gauge!("surge_relay_lag_seconds").set(0.0);
            metrics::gauge!("surge_outbox_backlog").set(0.0);
            return Ok(RoundEnd::Idle);
        }
        if let Some(oldest) = envelopes.first() {
            let lag = (chrono::Utc::now() - oldest.occurred_at).num_milliseconds().max(0) as f64 / 1000.0;
            metrics::gauge!("surge_relay_lag_seconds").set(lag);
        }
        let read = envelopes.len();
        let mut phase = PhaseClock::new(began);
        phase.done("read");
        // A slow read may have outlived the confirmation it brought.
        if !confirm_lease(lock_conn, lease, LEASE_CHECK_EVERY).await {
            return Ok(RoundEnd::LeaseLost);
        }
        if let Err(e) = self.publisher.begin() {
            tracing::warn!(error = %e, "relay cannot begin a Kafka transaction");
            return Ok(RoundEnd::Aborted { read, aborted: false });
        }
        // Every send is queued here, in position order.
        let sends = join_all(envelopes.iter().map(|env| self.publisher.send(env)));
        let Some(outcomes) = while_leading(lock_conn, lease, sends).await else {
            return Ok(RoundEnd::LeaseLost);
        };
        let failed: Vec<(&EventEnvelope, KafkaError)> = envelopes
            .iter()
            .zip(outcomes)
            .filter_map(|(env, outcome)| outcome.err().map(|e| (env, e)))
            .collect();
        if let Some((env, e)) = failed.first() {
            metrics::counter!("surge_relay_publish_failures_total").increment(failed.len() as u64);
            tracing::warn!(
                failed = failed.len(),
                position = env.position,
                stream_id = env.stream_id.as_str(),
                error = %e,
                "events not delivered; aborting the round, to be sent again whole"
            );
            return Ok(self.abort(lock_conn, lease, read).await);
        }
        phase.done("send");
        // The commit publishes the round: only on a fresh lease.
        if !confirm_lease(lock_conn, lease, LEASE_CHECK_EVERY).await {
            return Ok(RoundEnd::LeaseLost);
        }
        match while_leading(lock_conn, lease, self.publisher.commit()).await {
            None => return Ok(RoundEnd::LeaseLost),
            Some(Ok(())) => {}
            Some(Err(e)) => {
                // If it did commit after all (a lost answer), the round is published again:
                // consumers skip the repeat.
                tracing::warn!(error = %e, "the round's Kafka transaction did not commit; aborting it");
                return Ok(self.abort(lock_conn, lease, read).await);
            }
        }
        phase.done("commit");
        // The delete runs on the lock session: it cannot commit once another relay holds the lock.
        if !lease.holds() {
            return Ok(RoundEnd::LeaseLost);
        }
        let positions: Vec<i64> = envelopes.iter().map(|env| env.position).collect();
        let delete = surge_store::outbox::delete(&mut *lock_conn, &positions);
        if on_lock_session(lease, STATEMENT_TIMEOUT, delete).await.is_none() {
            return Ok(RoundEnd::LeaseLost);
        }
        phase.done("delete");
        metrics::counter!("surge_relay_published_total").increment(read as u64);
        // From reading the batch to deleting it: an event waits for the round in progress
        // when it commits, then for its own.
        metrics::histogram!("surge_relay_round_seconds").record(began.elapsed().as_secs_f64());
        let backlog = surge_store::outbox::backlog(&mut *lock_conn);
        let Some(backlog) = on_lock_session(lease, STATEMENT_TIMEOUT, backlog).await else {
            return Ok(RoundEnd::LeaseLost);
        };
        metrics::gauge!("surge_outbox_backlog").set(backlog as f64);
        tracing::debug!(published = read, "relay round");
        Ok(RoundEnd::Published)
    }

    /// Aborts the round's transaction (its events stay in the outbox).
    async fn abort(&self, lock_conn: &mut PgConnection, lease: &LeaseClock, read: usize) -> RoundEnd {
        match while_leading(lock_conn, lease, self.publisher.abort()).await {
            None => RoundEnd::LeaseLost,
            Some(Ok(())) => RoundEnd::Aborted { read, aborted: true },
            Some(Err(e)) => {
                // A new producer's start aborts it, on Kafka's side.
                tracing::warn!(error = %e, "relay cannot abort its Kafka transaction; starting a new producer");
                RoundEnd::Aborted { read, aborted: false }
            }
        }
    }
}

/// How a round ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RoundEnd {
    /// The outbox was empty.
    Idle,
    /// Its transaction committed and its outbox rows are deleted.
    Published,
    /// Not published: `read` events stay in the outbox. `aborted`: its transaction is aborted
    /// and the producer can go on; otherwise the producer is to be replaced first.
    Aborted { read: usize, aborted: bool },
    /// The lease could not be confirmed.
    LeaseLost,
}

/// When the lock session last answered (as of when the statement was sent), and whether it
/// failed to: the active relay's view of its lease.
struct LeaseClock {
    confirmed: Mutex<Instant>,
    lost: AtomicBool,
}

impl LeaseClock {
    /// A lease just taken.
    fn new() -> Self {
        LeaseClock {
            confirmed: Mutex::new(Instant::now()),
            lost: AtomicBool::new(false),
        }
    }

    fn confirmed_at(&self) -> Instant {
        *self.confirmed.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn confirm(&self, sent: Instant) {
        let mut confirmed = self.confirmed.lock().unwrap_or_else(|e| e.into_inner());
        *confirmed = (*confirmed).max(sent);
    }

    fn lose(&self) {
        self.lost.store(true, Ordering::SeqCst);
    }

    /// Whether this relay may still start a send or a delete.
    fn holds(&self) -> bool {
        !self.lost.load(Ordering::SeqCst) && self.confirmed_at().elapsed() < LEASE_VALID
    }
}

/// Runs `statement` on the lock session within `limit`. An answer confirms the lease; an
/// error or no answer loses it (the session is no longer to be trusted).
async fn on_lock_session<T, E: std::fmt::Display>(
    lease: &LeaseClock,
    limit: Duration,
    statement: impl Future<Output = Result<T, E>>,
) -> Option<T> {
    let sent = Instant::now();
    match timeout(limit, statement).await {
        Ok(Ok(value)) => {
            lease.confirm(sent);
            Some(value)
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "relay lock session failed");
            lease.lose();
            None
        }
        Err(_) => {
            tracing::warn!(
                limit_ms = limit.as_millis() as u64,
                "relay lock session did not answer in time"
            );
            lease.lose();
            None
        }
    }
}

/// Takes the relay's lock if it is free (true); the outer error is Postgres not answering in time.
async fn try_lock(conn: &mut PgConnection) -> Result<Result<bool, sqlx::Error>, tokio::time::error::Elapsed> {
    let query = sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)").bind(RELAY_LOCK_KEY);
    timeout(LEASE_CHECK_TIMEOUT, query.fetch_one(conn)).await
}

/// Waits for `work` while keeping the lease confirmed (a lease check every
/// [`LEASE_CHECK_EVERY`], which also keeps the lock session from looking silent to a standby).
/// None, with `work` dropped, as soon as the lease cannot be confirmed.
async fn while_leading<T>(
    lock_conn: &mut PgConnection,
    lease: &LeaseClock,
    work: impl Future<Output = T>,
) -> Option<T> {
    tokio::pin!(work);
    loop {
        tokio::select! {
            done = &mut work => return Some(done),
            _ = tokio::time::sleep(LEASE_CHECK_EVERY) => {
                if !confirm_lease(lock_conn, lease, Duration::ZERO).await {
                    return None;
                }
            }
        }
    }
}

/// Whether the lease holds, confirmed by a lease check unless it was confirmed within `max_age`.
async fn confirm_lease(lock_conn: &mut PgConnection, lease: &LeaseClock, max_age: Duration) -> bool {
    if lease.lost.load(Ordering::SeqCst) {
        return false;
    }
    if lease.confirmed_at().elapsed() <= max_age {
        return true;
    }
    on_lock_session(
        lease,
        LEASE_CHECK_TIMEOUT,
        sqlx::query("SELECT 1").execute(&mut *lock_conn),
    )
    .await
    .is_some()
        && lease.holds()
}
