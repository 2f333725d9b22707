//! `surge webhooks` as a value: the fan-out and the deliverer in one process, with admin
//! endpoints (`/healthz`, `/readyz`, `/metrics`) like the relay's.

use crate::address::UrlPolicy;
use crate::client::WebhookClient;
use crate::deliverer::{Deliverer, DeliverySettings};
use crate::fanout::FanOut;
use crate::tables;
use axum::routing::get;
use axum::Router;
use clap::Args;
use sqlx::PgPool;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use surge_runtime::http::Readiness;
use surge_runtime::{DatabaseConfig, StartupError};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Args)]
pub struct WebhooksConfig {
    #[command(flatten)]
    pub db: DatabaseConfig,
    #[command(flatten)]
    pub policy: UrlPolicy,
    /// Attempts before a delivery is dead (then it waits for a redelivery).
    #[arg(long = "webhook-max-attempts", env = "SURGE_WEBHOOK_MAX_ATTEMPTS", default_value_t = WebhooksConfig::DEFAULT_MAX_ATTEMPTS,
          value_parser = clap::value_parser!(i32).range(1..=100))]
    pub max_attempts: i32,
    /// Ceiling of the first retry's random delay, in milliseconds (doubling per attempt).
    #[arg(long = "webhook-backoff-base-ms", env = "SURGE_WEBHOOK_BACKOFF_BASE_MS", default_value_t = WebhooksConfig::DEFAULT_BACKOFF_BASE_MS)]
    pub backoff_base_ms: u64,
    /// Largest ceiling of a retry's random delay, in milliseconds.
    #[arg(long = "webhook-backoff-cap-ms", env = "SURGE_WEBHOOK_BACKOFF_CAP_MS", default_value_t = WebhooksConfig::DEFAULT_BACKOFF_CAP_MS)]
    pub backoff_cap_ms: u64,
    /// Longest one attempt may take (connect, send, read the answer's start), in milliseconds.
    #[arg(long = "webhook-timeout-ms", env = "SURGE_WEBHOOK_TIMEOUT_MS", default_value_t = WebhooksConfig::DEFAULT_TIMEOUT_MS)]
    pub timeout_ms: u64,
    /// Longest connecting may take, in milliseconds.
    #[arg(long = "webhook-connect-timeout-ms", env = "SURGE_WEBHOOK_CONNECT_TIMEOUT_MS", default_value_t = WebhooksConfig::DEFAULT_CONNECT_TIMEOUT_MS)]
    pub connect_timeout_ms: u64,
    /// Attempts in flight at once.
    #[arg(long = "webhook-concurrency", env = "SURGE_WEBHOOK_CONCURRENCY", default_value_t = WebhooksConfig::DEFAULT_CONCURRENCY,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: u32,
    /// Address of the process's /healthz, /readyz and /metrics.
    #[arg(long = "webhooks-admin-addr", env = "SURGE_WEBHOOKS_ADMIN_ADDR", default_value = WebhooksConfig::DEFAULT_ADMIN_ADDR)]
    pub admin_addr: SocketAddr,
}

/// The defaults, written once: the command line shows them and [`WebhooksConfig::new`] uses them.
impl WebhooksConfig {
    /// With the default backoff (ceilings 1 s, 2 s, … 2048 s, then the 1 h cap), 17 retries
    /// over at most 6 h 8 min (about 3 h on average) before a delivery is dead.
    pub const DEFAULT_MAX_ATTEMPTS: i32 = 18;
    pub const DEFAULT_BACKOFF_BASE_MS: u64 = 1_000;
    pub const DEFAULT_BACKOFF_CAP_MS: u64 = 3_600_000;
    pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
    pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 3_000;
    pub const DEFAULT_CONCURRENCY: u32 = 32;
    pub const DEFAULT_ADMIN_ADDR: &'static str = "127.0.0.1:9103";

    /// The command line's defaults around `db` and `policy`, except the admin address: port 0
    /// (tests).
    pub fn new(db: DatabaseConfig, policy: UrlPolicy) -> Self {
        WebhooksConfig {
            db,
            policy,
            max_attempts: Self::DEFAULT_MAX_ATTEMPTS,
            backoff_base_ms: Self::DEFAULT_BACKOFF_BASE_MS,
            backoff_cap_ms: Self::DEFAULT_BACKOFF_CAP_MS,
            timeout_ms: Self::DEFAULT_TIMEOUT_MS,
            connect_timeout_ms: Self::DEFAULT_CONNECT_TIMEOUT_MS,
            concurrency: Self::DEFAULT_CONCURRENCY,
            admin_addr: ([127, 0, 0, 1], 0).into(),
        }
    }

    fn settings(&self) -> Result<DeliverySettings, StartupError> {
        if self.backoff_base_ms == 0 || self.backoff_cap_ms < self.backoff_base_ms {
            return Err(StartupError::Config(
                "SURGE_WEBHOOK_BACKOFF_BASE_MS must be at least 1 and at most SURGE_WEBHOOK_BACKOFF_CAP_MS".into(),
            ));
        }
        if self.timeout_ms == 0 || self.connect_timeout_ms == 0 {
            return Err(StartupError::Config(
                "SURGE_WEBHOOK_TIMEOUT_MS and SURGE_WEBHOOK_CONNECT_TIMEOUT_MS must be at least 1".into(),
            ));
        }
        Ok(DeliverySettings {
            max_attempts: self.max_attempts.max(1),
            backoff_base: Duration::from_millis(self.backoff_base_ms),
            backoff_cap: Duration::from_millis(self.backoff_cap_ms),
            concurrency: self.concurrency.max(1) as usize,
            attempt_timeout: Duration::from_millis(self.timeout_ms),
            ..DeliverySettings::default()
        })
    }
}

pub struct WebhooksApp {
    pool: PgPool,
    client: WebhookClient,
    settings: DeliverySettings,
    admin: TcpListener,
}

/// How often the age of the oldest pending delivery is measured.
const GAUGE_EVERY: Duration = Duration::from_secs(2);

impl WebhooksApp {
    pub async fn build(config: WebhooksConfig) -> Result<Self, StartupError> {
        surge_runtime::telemetry::prometheus();
        let settings = config.settings()?;
        let client = WebhookClient::new(
            config.policy.clone(),
            Duration::from_millis(config.connect_timeout_ms),
            settings.attempt_timeout,
        )
        .map_err(|e| StartupError::Config(format!("webhook HTTP client: {e}")))?;
        let pool = surge_runtime::db::connect(&config.db).await?;
        surge_runtime::db::report_pool_usage(pool.clone(), "webhooks");
        let admin = surge_runtime::startup::bind(config.admin_addr).await?;
        Ok(WebhooksApp {
            pool,
            client,
            settings,
            admin,
        })
    }

    /// The admin endpoints' address.
    pub fn local_addr(&self) -> SocketAddr {
        self.admin.local_addr().expect("bound listener has an address")
    }

    /// Runs the fan-out and the deliverer until `shutdown`, then lets the attempts in flight end.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let stop = CancellationToken::new();
        let fanout = FanOut {
            pool: self.pool.clone(),
            batch: 500,
        };
        let deliverer = Deliverer {
            pool: self.pool.clone(),
            client: self.client,
            settings: self.settings,
        };
        let workers = vec![
            tokio::spawn(fanout.run(stop.clone())),
            tokio::spawn(deliverer.run(stop.clone())),
            tokio::spawn(measure_backlog(self.pool.clone(), stop.clone())),
        ];
        let pool = self.pool.clone();
        let ready: Readiness = Arc::new(move || {
            let pool = pool.clone();
            Box::pin(async move { surge_runtime::db::check_ready(&pool).await })
        });
        let router = Router::new()
            .route("/healthz", get(surge_runtime::http::healthz))
            .route(
                "/readyz",
                get(move || async move { surge_runtime::http::readyz(&ready).await }),
            );
        let router = surge_runtime::http::with_service_layers(router, 1024, &[]);
        tracing::info!(addr = %self.admin.local_addr().map_or_else(|_| "?".into(), |a| a.to_string()), "webhooks admin endpoints listening");
        let served = axum::serve(self.admin, router).with_graceful_shutdown(shutdown).await;
        stop.cancel();
        for w in workers {
            let _ = w.await;
        }
        self.pool.close().await;
        served
    }
}

/// Keeps `surge_webhook_oldest_pending_seconds` (0: nothing pending) up to date.
async fn measure_backlog(pool: PgPool, stop: CancellationToken) {
    while !stop.is_cancelled() {
        match tables::oldest_pending_age(&pool).await {
            Ok(age) => metrics::gauge!("surge_webhook_oldest_pending_seconds").set(age),
            Err(e) => tracing::warn!(error = %e, "measuring the webhook backlog failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(GAUGE_EVERY) => {}
            _ = stop.cancelled() => {}
        }
    }
}

/// The deliverer's defaults are the config's (written once, in [`WebhooksConfig`]); kept here
/// so the deliverer never imports the app that runs it.
impl Default for DeliverySettings {
    fn default() -> Self {
        DeliverySettings {
            max_attempts: WebhooksConfig::DEFAULT_MAX_ATTEMPTS,
            backoff_base: Duration::from_millis(WebhooksConfig::DEFAULT_BACKOFF_BASE_MS),
            backoff_cap: Duration::from_millis(WebhooksConfig::DEFAULT_BACKOFF_CAP_MS),
            concurrency: WebhooksConfig::DEFAULT_CONCURRENCY as usize,
            attempt_timeout: Duration::from_millis(WebhooksConfig::DEFAULT_TIMEOUT_MS),
            idle_poll: Duration::from_millis(100),
        }
    }
}
