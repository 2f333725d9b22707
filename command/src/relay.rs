//! The outbox relay: publishes committed events to Kafka, at least once, in stream order.
//!
//! One relay is active at a time (a Postgres session advisory lock on a dedicated connection;
//! a standby takes over when the active one's connection goes). It reads outbox rows in
//! position order, produces them with an idempotent producer (`acks=all`, key = stream id,
//! so one stream stays in one partition, in order), waits for the delivery reports, and only
//! then deletes the rows it saw delivered. A crash between delivery and delete re-publishes
//! those events: consumers dedupe by stream version / event id.

use crate::breaker::Breaker;
use crate::store::{envelope_from_row, StoreError};
use clap::Args;
use futures::future::join_all;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use sqlx::{Connection, PgConnection, PgPool};
use std::future::Future;
use std::time::Duration;
use surge_events::{topics, EventEnvelope};
use surge_runtime::{DatabaseConfig, KafkaConfig, StartupError};

/// Session advisory lock key held by the active relay ("surge-relay").
pub const RELAY_LOCK_KEY: i64 = 0x5355_5247_4552_4c59;

#[derive(Debug, Clone, Args)]
pub struct RelayConfig {
    #[command(flatten)]
    pub db: DatabaseConfig,
    #[command(flatten)]
    pub kafka: KafkaConfig,
    /// Outbox rows published per round trip.
    #[arg(long, env = "SURGE_RELAY_BATCH_SIZE", default_value_t = 1000)]
    pub batch_size: i64,
    /// Pause when the outbox is empty, in milliseconds.
    #[arg(long, env = "SURGE_RELAY_IDLE_MS", default_value_t = 10)]
    pub idle_ms: u64,
    /// How long one event may wait for Kafka's acknowledgement before its round counts as
    /// failed (it stays in the outbox and is sent again), in milliseconds.
    #[arg(long, env = "SURGE_RELAY_DELIVERY_TIMEOUT_MS", default_value_t = 10_000)]
    pub delivery_timeout_ms: u64,
    /// Address of the relay's /healthz, /readyz and /metrics.
    #[arg(
        long = "relay-admin-addr",
        env = "SURGE_RELAY_ADMIN_ADDR",
        default_value = "127.0.0.1:9101"
    )]
    pub admin_addr: std::net::SocketAddr,
}

impl RelayConfig {
    pub fn new(db: DatabaseConfig, kafka: KafkaConfig) -> Self {
        RelayConfig {
            db,
            kafka,
            batch_size: 1000,
            idle_ms: 10,
            delivery_timeout_ms: 10_000,
            admin_addr: ([127, 0, 0, 1], 0).into(),
        }
    }
}

/// What one publishing round did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    pub read: usize,
    pub delivered: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

pub struct Relay {
    config: RelayConfig,
    pool: PgPool,
    producer: FutureProducer,
    /// Opens when deliveries keep failing (Kafka down): the relay pauses, the outbox buffers,
    /// and commands are still accepted since Postgres is the source of truth.
    breaker: Breaker,
}

impl Relay {
    pub async fn build(config: RelayConfig) -> Result<Self, StartupError> {
        surge_runtime::telemetry::prometheus();
        let pool = surge_runtime::db::connect(&DatabaseConfig {
            max_connections: 4,
            ..config.db.clone()
        })
        .await?;
        let producer: FutureProducer = surge_runtime::kafka::client_config(&config.kafka)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "2")
            .set("compression.type", "lz4")
            .set("message.timeout.ms", config.delivery_timeout_ms.max(1000).to_string())
            .set("reconnect.backoff.max.ms", "1000")
            .set("queue.buffering.max.messages", "200000")
            .create()?;
        let breaker = Breaker::new("kafka_publish", 3, Duration::from_secs(1), Duration::from_secs(15));
        Ok(Relay {
            config,
            pool,
            producer,
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
        loop {
            let lock = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                lock = self.acquire_leadership() => lock,
            };
            let Some(mut lock_conn) = lock else {
                tokio::select! {
                    _ = &mut shutdown => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            };
            tracing::info!("relay is active");
            let stopped = self.publish_while_leader(&mut lock_conn, &mut shutdown).await;
            let _ = self.producer.flush(Timeout::After(Duration::from_secs(10)));
            let _ = lock_conn.close().await;
            if stopped {
                tracing::info!("relay stopped");
                return Ok(());
            }
            tracing::warn!("relay lost its lock connection; trying to become active again");
        }
    }

    /// A dedicated connection holding the advisory lock, or None while another relay holds it.
    async fn acquire_leadership(&self) -> Option<PgConnection> {
        let mut conn = match PgConnection::connect(&self.config.db.url).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "relay cannot connect to Postgres");
                return None;
            }
        };
        match sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
            .bind(RELAY_LOCK_KEY)
            .fetch_one(&mut conn)
            .await
        {
            Ok(true) => Some(conn),
            Ok(false) => {
                tracing::debug!("another relay is active; standing by");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "relay cannot take its lock");
                None
            }
        }
    }

    /// Publishes until shutdown (returns true) or until the lock connection fails (false).
    async fn publish_while_leader(
        &self,
        lock_conn: &mut PgConnection,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> bool {
        let idle = Duration::from_millis(self.config.idle_ms);
        let mut last_lock_check = tokio::time::Instant::now();
        loop {
            if last_lock_check.elapsed() > Duration::from_secs(2) {
                if sqlx::query("SELECT 1").execute(&mut *lock_conn).await.is_err() {
                    return false;
                }
                last_lock_check = tokio::time::Instant::now();
            }
            let pause = if !self.breaker.permits() {
                // Kafka keeps failing: leave the events in the outbox until the breaker's pause is over.
                Duration::from_millis(100)
            } else {
                match self.publish_batch().await {
                    Ok(Round { read: 0, .. }) => idle,
                    Ok(Round { read, delivered }) if delivered == read => {
                        self.breaker.succeeded();
                        Duration::ZERO
                    }
                    Ok(Round { read, delivered }) => {
                        self.breaker.failed();
                        tracing::warn!(
                            read,
                            delivered,
                            "some events were not delivered; they stay in the outbox"
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

    /// One round: read a batch of the outbox, publish, delete what was delivered.
    pub async fn publish_batch(&self) -> Result<Round, RelayError> {
        let rows = sqlx::query(
            "SELECT e.* FROM outbox o JOIN events e ON e.position = o.position \
             ORDER BY o.position LIMIT $1",
        )
        .bind(self.config.batch_size)
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            metrics::gauge!("surge_relay_lag_seconds").set(0.0);
            metrics::gauge!("surge_outbox_backlog").set(0.0);
            return Ok(Round { read: 0, delivered: 0 });
        }
        let envelopes = rows.iter().map(envelope_from_row).collect::<Result<Vec<_>, _>>()?;
        if let Some(oldest) = envelopes.first() {
            let lag = (chrono::Utc::now() - oldest.occurred_at).num_milliseconds().max(0) as f64 / 1000.0;
            metrics::gauge!("surge_relay_lag_seconds").set(lag);
        }
        let deliveries = envelopes.iter().map(|env| self.publish(env));
        let results = join_all(deliveries).await;
        let mut delivered = Vec::with_capacity(results.len());
        for (env, result) in envelopes.iter().zip(results) {
            match result {
                Ok(()) => delivered.push(env.position),
                Err(e) => {
                    tracing::warn!(position = env.position, error = %e, "event not delivered; will retry")
                }
            }
        }
        sqlx::query("DELETE FROM outbox WHERE position = ANY($1)")
            .bind(&delivered)
            .execute(&self.pool)
            .await?;
        metrics::counter!("surge_relay_published_total").increment(delivered.len() as u64);
        metrics::counter!("surge_relay_publish_failures_total").increment((envelopes.len() - delivered.len()) as u64);
        let backlog: i64 = sqlx::query_scalar("SELECT count(*) FROM (SELECT 1 FROM outbox LIMIT 1000000) b")
            .fetch_one(&self.pool)
            .await?;
        metrics::gauge!("surge_outbox_backlog").set(backlog as f64);
        tracing::debug!(published = delivered.len(), "relay round");
        Ok(Round {
            read: envelopes.len(),
            delivered: delivered.len(),
        })
    }

    async fn publish(&self, env: &EventEnvelope) -> Result<(), rdkafka::error::KafkaError> {
        let topic = topics::topic_for(&self.config.kafka.topic_prefix, env.stream_type);
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
        self.producer
            .send(
                record,
                Timeout::After(Duration::from_millis(self.config.delivery_timeout_ms.max(1000))),
            )
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
    }
}
