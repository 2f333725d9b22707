//! The command API as a value: build it (bind, connect), ask its address, run it until shutdown.

use crate::admission::{Admission, AdmissionSettings};
use crate::api::{router, ApiContext};
use crate::commands::{CommandSettings, Commands};
use crate::expiry::ExpiryWorker;
use crate::payments::{gateway_breaker, PaymentWorker, PaymentWorkerSettings, SimulatedGateway};
use crate::sequencer::SequencerSettings;
use crate::store::EventStore;
use axum::Router;
use clap::Args;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use surge_runtime::{AuthConfig, DatabaseConfig, StartupError};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Args)]
pub struct CommandApiConfig {
    /// Address the command API listens on.
    #[arg(long = "addr", env = "SURGE_COMMAND_ADDR", default_value = CommandApiConfig::DEFAULT_ADDR)]
    pub addr: SocketAddr,
    #[command(flatten)]
    pub db: DatabaseConfig,
    #[command(flatten)]
    pub auth: AuthConfig,
    /// Where webhook endpoints may be registered to point.
    #[command(flatten)]
    pub webhooks: surge_webhooks::UrlPolicy,
    /// How long stock stays reserved for an unpaid order, in seconds.
    #[arg(long, env = "SURGE_RESERVATION_TTL_SECS", default_value_t = CommandApiConfig::DEFAULT_RESERVATION_TTL_SECS)]
    pub reservation_ttl_secs: u64,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "SURGE_BODY_LIMIT_BYTES", default_value_t = CommandApiConfig::DEFAULT_BODY_LIMIT_BYTES)]
    pub body_limit_bytes: usize,
    /// Browser origins allowed to call this API (comma-separated; empty: none).
    #[arg(long = "cors-origins", env = "SURGE_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// Run the worker that expires unpaid reservations in this process.
    #[arg(long, env = "SURGE_EXPIRY_WORKER", default_value_t = CommandApiConfig::DEFAULT_EXPIRY_WORKER, action = clap::ArgAction::Set)]
    pub expiry_worker: bool,
    /// Run the worker that settles payments (with the simulated gateway) in this process.
    #[arg(long, env = "SURGE_PAYMENT_WORKER", default_value_t = CommandApiConfig::DEFAULT_PAYMENT_WORKER, action = clap::ArgAction::Set)]
    pub payment_worker: bool,
    /// Longest a payment gateway call may take, in milliseconds.
    #[arg(long, env = "SURGE_GATEWAY_TIMEOUT_MS", default_value_t = CommandApiConfig::DEFAULT_GATEWAY_TIMEOUT_MS)]
    pub gateway_timeout_ms: u64,
    /// Latency of the simulated payment gateway, in milliseconds.
    #[arg(long, env = "SURGE_GATEWAY_LATENCY_MS", default_value_t = CommandApiConfig::DEFAULT_GATEWAY_LATENCY_MS)]
    pub gateway_latency_ms: u64,
    /// Orders that may wait in one SKU's sequencer lane before new ones are refused (503).
    #[arg(long, env = "SURGE_SKU_QUEUE_DEPTH", default_value_t = CommandApiConfig::DEFAULT_SKU_QUEUE_DEPTH)]
    pub sku_queue_depth: usize,
    /// Longest an order may expect to wait in its SKU's lane, in milliseconds: one that would
    /// wait longer is refused at once (503 with Retry-After). 0: only the queue depth limits.
    #[arg(long, env = "SURGE_ORDER_LATENCY_BUDGET_MS", default_value_t = SequencerSettings::DEFAULT_LATENCY_BUDGET_MS)]
    pub order_latency_budget_ms: u64,
    /// How long an item this instance saw sold out is refused from memory, in milliseconds
    /// (this instance's restocks and releases end it at once; another instance's within this
    /// time). 0: always ask the lane.
    #[arg(long, env = "SURGE_SOLD_OUT_MEMO_MS", default_value_t = SequencerSettings::DEFAULT_SOLD_OUT_TTL_MS)]
    pub sold_out_memo_ms: u64,
    /// Sustained commands per second per client (API key, else IP) before 429.
    #[arg(long, env = "SURGE_RATE_LIMIT_PER_SEC", default_value_t = CommandApiConfig::DEFAULT_RATE_LIMIT_PER_SEC)]
    pub rate_limit_per_sec: u32,
    /// Commands a client may send at once above its sustained rate.
    #[arg(long, env = "SURGE_RATE_LIMIT_BURST", default_value_t = CommandApiConfig::DEFAULT_RATE_LIMIT_BURST)]
    pub rate_limit_burst: u32,
    /// Commands handled at once by this process before new ones are shed (503).
    #[arg(long, env = "SURGE_MAX_IN_FLIGHT", default_value_t = CommandApiConfig::DEFAULT_MAX_IN_FLIGHT)]
    pub max_in_flight: usize,
    /// This instance's id among the command API instances: which stock bucket of each split
    /// item it takes from first. Ids ending in a number (`cmd-0`, `cmd-1`, ...) give N instances
    /// distinct buckets of every item split into at least N; default: host name and process id.
    #[arg(long, env = "SURGE_INSTANCE_ID")]
    pub instance_id: Option<String>,
}

/// The defaults, written once: the command line shows them and [`CommandApiConfig::new`] uses them.
impl CommandApiConfig {
    pub const DEFAULT_ADDR: &'static str = "127.0.0.1:8080";
    pub const DEFAULT_RESERVATION_TTL_SECS: u64 = 900;
    pub const DEFAULT_BODY_LIMIT_BYTES: usize = 64 * 1024;
    pub const DEFAULT_EXPIRY_WORKER: bool = true;
    pub const DEFAULT_PAYMENT_WORKER: bool = true;
    pub const DEFAULT_GATEWAY_TIMEOUT_MS: u64 = 5000;
    pub const DEFAULT_GATEWAY_LATENCY_MS: u64 = 50;
    pub const DEFAULT_SKU_QUEUE_DEPTH: usize = SequencerSettings::DEFAULT_QUEUE_DEPTH;
    pub const DEFAULT_RATE_LIMIT_PER_SEC: u32 = 500;
    pub const DEFAULT_RATE_LIMIT_BURST: u32 = 1000;
    pub const DEFAULT_MAX_IN_FLIGHT: usize = 2048;

    /// The command line's defaults around `addr`, `db` and `auth` (tests, embedding).
    pub fn new(addr: SocketAddr, db: DatabaseConfig, auth: AuthConfig) -> Self {
        CommandApiConfig {
            addr,
            db,
            auth,
            webhooks: surge_webhooks::UrlPolicy::default(),
            reservation_ttl_secs: Self::DEFAULT_RESERVATION_TTL_SECS,
            body_limit_bytes: Self::DEFAULT_BODY_LIMIT_BYTES,
            cors_origins: Vec::new(),
            expiry_worker: Self::DEFAULT_EXPIRY_WORKER,
            payment_worker: Self::DEFAULT_PAYMENT_WORKER,
            gateway_timeout_ms: Self::DEFAULT_GATEWAY_TIMEOUT_MS,
            gateway_latency_ms: Self::DEFAULT_GATEWAY_LATENCY_MS,
            sku_queue_depth: Self::DEFAULT_SKU_QUEUE_DEPTH,
            order_latency_budget_ms: SequencerSettings::DEFAULT_LATENCY_BUDGET_MS,
            sold_out_memo_ms: SequencerSettings::DEFAULT_SOLD_OUT_TTL_MS,
            rate_limit_per_sec: Self::DEFAULT_RATE_LIMIT_PER_SEC,
            rate_limit_burst: Self::DEFAULT_RATE_LIMIT_BURST,
            max_in_flight: Self::DEFAULT_MAX_IN_FLIGHT,
            instance_id: None,
        }
    }
}

pub struct CommandApp {
    admission: Admission,
    listener: TcpListener,
    router: Router,
    commands: Commands,
    config: CommandApiConfig,
}

impl CommandApp {
    pub async fn build(config: CommandApiConfig) -> Result<Self, StartupError> {
        surge_runtime::telemetry::prometheus();
        if config.reservation_ttl_secs == 0 {
            return Err(StartupError::Config(
                "SURGE_RESERVATION_TTL_SECS must be at least 1".into(),
            ));
        }
        let auth = config.auth.build().map_err(|e| StartupError::Config(e.to_string()))?;
        let instance_id = match &config.instance_id {
            Some(id) if id.trim().is_empty() || id.len() > 128 => {
                return Err(StartupError::Config(
                    "SURGE_INSTANCE_ID must be 1 to 128 characters".into(),
                ))
            }
            Some(id) => id.clone(),
            None => crate::commands::default_instance_id(),
        };
        let pool = surge_runtime::db::connect(&config.db).await?;
        surge_runtime::db::report_pool_usage(pool.clone(), "command");
        let commands = Commands::new(
            EventStore::new(pool.clone()),
            CommandSettings {
                reservation_ttl: Duration::from_secs(config.reservation_ttl_secs),
                sequencer: SequencerSettings {
                    queue_depth: config.sku_queue_depth.max(1),
                    latency_budget: Duration::from_millis(config.order_latency_budget_ms),
                    sold_out_ttl: Duration::from_millis(config.sold_out_memo_ms),
                    ..SequencerSettings::default()
                },
                instance_id: instance_id.into(),
                ..CommandSettings::default()
            },
        );
        let ctx = ApiContext {
            commands: commands.clone(),
            pool,
            webhooks: config.webhooks.clone(),
        };
        let admission = Admission::new(AdmissionSettings {
            per_client_per_sec: config.rate_limit_per_sec,
            per_client_burst: config.rate_limit_burst,
            max_in_flight: config.max_in_flight,
            ..AdmissionSettings::default()
        });
        let router = surge_runtime::http::with_service_layers(
            router(ctx, admission.clone(), auth),
            config.body_limit_bytes,
            &config.cors_origins,
        );
        let listener = surge_runtime::startup::bind(config.addr).await?;
        Ok(CommandApp {
            admission,
            listener,
            router,
            commands,
            config,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    pub fn commands(&self) -> &Commands {
        &self.commands
    }

    /// Serves until `shutdown` resolves, then drains in-flight requests and stops the workers.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        tracing::info!(addr = %self.local_addr(), "command API listening");
        let stop = CancellationToken::new();
        let mut workers = Vec::new();
        if self.config.expiry_worker {
            let worker = ExpiryWorker {
                commands: self.commands.clone(),
                poll_interval: Duration::from_millis(500),
            };
            workers.push(tokio::spawn(worker.run(stop.clone())));
        }
        if self.config.payment_worker {
            let worker = PaymentWorker {
                commands: self.commands.clone(),
                gateway: Arc::new(SimulatedGateway::new(Duration::from_millis(
                    self.config.gateway_latency_ms,
                ))),
                settings: PaymentWorkerSettings {
                    gateway_timeout: Duration::from_millis(self.config.gateway_timeout_ms),
                    ..PaymentWorkerSettings::default()
                },
                breaker: gateway_breaker(),
            };
            workers.push(tokio::spawn(worker.run(stop.clone())));
        }
        workers.push(self.admission.spawn_housekeeping(stop.clone()));
        let served = axum::serve(
            self.listener,
            self.router
                .into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await;
        stop.cancel();
        for w in workers {
            let _ = w.await;
        }
        served
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_secrets() {
        let (password, jwt) = ("db-pa55word-x", "jwt-secret-0123456789abcdef012345");
        let config = CommandApiConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            DatabaseConfig::new(format!("postgres://surge:{password}@127.0.0.1:5432/surge")),
            AuthConfig::hs256(jwt),
        );
        let shown = format!("{config:?}");
        assert!(!shown.contains(password) && !shown.contains(jwt), "{shown}");
    }

    #[test]
    fn relay_debug_never_shows_the_database_password() {
        let password = "db-pa55word-x";
        let config = crate::RelayConfig::new(
            DatabaseConfig::new(format!("postgres://surge:{password}@127.0.0.1:5432/surge")),
            surge_runtime::KafkaConfig::new("127.0.0.1:9092", ""),
        );
        assert!(!format!("{config:?}").contains(password));
    }
}
