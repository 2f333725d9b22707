//! The query API as a value: build (bind, connect, start the cache invalidator), run, stop.

use crate::api::{router, ConsistencyMode, QueryContext};
use crate::cache::{spawn_invalidator, InvalidatorError, ViewCache};
use crate::catalog_hits::CatalogHitsLayer;
use axum::Router;
use clap::Args;
use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::PgConnectOptions;
use std::future::Future;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use surge_runtime::auth::Authenticator;
use surge_runtime::{AuthConfig, DatabaseConfig, KafkaConfig, StartupError};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::compression::CompressionLayer;

#[derive(Debug, Clone, Args)]
pub struct QueryApiConfig {
    /// Address the query API listens on.
    #[arg(long = "addr", env = "SURGE_QUERY_ADDR", default_value = QueryApiConfig::DEFAULT_ADDR)]
    pub addr: SocketAddr,
    #[command(flatten)]
    pub db: DatabaseConfig,
    #[command(flatten)]
    pub auth: AuthConfig,
    /// Postgres URL of a read replica to serve view reads from (defaults to the primary; it
    /// carries the password: never logged).
    #[arg(long, env = "SURGE_READ_DATABASE_URL", hide_env_values = true)]
    pub read_database_url: Option<SecretString>,
    #[command(flatten)]
    pub kafka: KafkaConfig,
    /// Serve point reads from the in-process caches.
    #[arg(long, env = "SURGE_CACHE_ENABLED", default_value_t = QueryApiConfig::DEFAULT_CACHE_ENABLED, action = clap::ArgAction::Set)]
    pub cache_enabled: bool,
    /// Entries per cache (items, orders).
    #[arg(long, env = "SURGE_CACHE_CAPACITY", default_value_t = QueryApiConfig::DEFAULT_CACHE_CAPACITY)]
    pub cache_capacity: u64,
    /// Longest an entry lives even without an event, in seconds.
    #[arg(long, env = "SURGE_CACHE_TTL_SECS", default_value_t = QueryApiConfig::DEFAULT_CACHE_TTL_SECS)]
    pub cache_ttl_secs: u64,
    /// Longest a cached view read may wait for Postgres before the last known value is served
    /// (flagged `X-Consistency: stale`), in milliseconds.
    #[arg(long, env = "SURGE_QUERY_DB_TIMEOUT_MS", default_value_t = QueryApiConfig::DEFAULT_DB_TIMEOUT_MS)]
    pub db_timeout_ms: u64,
    /// Longest a read waits for the view to reach a consistency token, in milliseconds.
    #[arg(long, env = "SURGE_CONSISTENCY_WAIT_MS", default_value_t = QueryApiConfig::DEFAULT_CONSISTENCY_WAIT_MS)]
    pub consistency_wait_ms: u64,
    /// What a read answers when the wait runs out.
    #[arg(long, env = "SURGE_CONSISTENCY_MODE", value_enum, default_value_t = QueryApiConfig::DEFAULT_CONSISTENCY_MODE)]
    pub consistency_mode: ConsistencyMode,
    /// Browser origins allowed to call this API (comma-separated; empty: none).
    #[arg(long = "cors-origins", env = "SURGE_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// `/metrics` of the other processes, read by the console's live view (comma-separated).
    #[arg(
        long = "console-metrics-urls",
        env = "SURGE_CONSOLE_METRICS_URLS",
        value_delimiter = ',',
        default_value = QueryApiConfig::DEFAULT_CONSOLE_METRICS_URLS
    )]
    pub console_metrics_urls: Vec<String>,
    /// Largest request body accepted, in bytes.
    #[arg(long = "query-body-limit-bytes", env = "SURGE_QUERY_BODY_LIMIT_BYTES", default_value_t = QueryApiConfig::DEFAULT_BODY_LIMIT_BYTES)]
    pub body_limit_bytes: usize,
}

/// The defaults, written once: the command line shows them and [`QueryApiConfig::new`] uses them.
impl QueryApiConfig {
    pub const DEFAULT_ADDR: &'static str = "127.0.0.1:8081";
    pub const DEFAULT_CACHE_ENABLED: bool = true;
    pub const DEFAULT_CACHE_CAPACITY: u64 = 100_000;
    pub const DEFAULT_CACHE_TTL_SECS: u64 = 60;
    pub const DEFAULT_DB_TIMEOUT_MS: u64 = 1000;
    pub const DEFAULT_CONSISTENCY_WAIT_MS: u64 = 2000;
    pub const DEFAULT_CONSISTENCY_MODE: ConsistencyMode = ConsistencyMode::Fail;
    /// The local services' admin endpoints (command API, relay, projector).
    pub const DEFAULT_CONSOLE_METRICS_URLS: &'static str =
        "http://127.0.0.1:8080/metrics,http://127.0.0.1:9101/metrics,http://127.0.0.1:9102/metrics";
    pub const DEFAULT_BODY_LIMIT_BYTES: usize = 16 * 1024;

    /// The command line's defaults around `addr`, `db`, `kafka` and `auth`, except that the
    /// console reads no other process's `/metrics` (in one process, tests, they are not there).
    pub fn new(addr: SocketAddr, db: DatabaseConfig, kafka: KafkaConfig, auth: AuthConfig) -> Self {
        QueryApiConfig {
            addr,
            db,
            auth,
            read_database_url: None,
            kafka,
            cache_enabled: Self::DEFAULT_CACHE_ENABLED,
            cache_capacity: Self::DEFAULT_CACHE_CAPACITY,
            cache_ttl_secs: Self::DEFAULT_CACHE_TTL_SECS,
            db_timeout_ms: Self::DEFAULT_DB_TIMEOUT_MS,
            consistency_wait_ms: Self::DEFAULT_CONSISTENCY_WAIT_MS,
            consistency_mode: Self::DEFAULT_CONSISTENCY_MODE,
            body_limit_bytes: Self::DEFAULT_BODY_LIMIT_BYTES,
            cors_origins: Vec::new(),
            console_metrics_urls: Vec::new(),
        }
    }
}

/// The query API's routes behind the shared middleware, with compression.
pub(crate) fn full_stack(
    ctx: QueryContext,
    auth: Arc<Authenticator>,
    body_limit: usize,
    cors_origins: &[String],
) -> Router {
    surge_runtime::http::with_service_layers(router(ctx, auth), body_limit, cors_origins)
        .layer(CompressionLayer::new().gzip(true).br(true))
}

/// What the query API serves: [`full_stack`], with cache hits of catalog items answered in
/// front of it ([`crate::catalog_hits`]) unless browsers of other origins call it (their
/// answers need the CORS layer's headers).
pub fn service_router(
    ctx: QueryContext,
    auth: Arc<Authenticator>,
    body_limit: usize,
    cors_origins: &[String],
) -> Router {
    let hits = CatalogHitsLayer::new(ctx.items.clone());
    let router = full_stack(ctx, auth, body_limit, cors_origins);
    if cors_origins.iter().all(|o| o.trim().is_empty()) {
        router.layer(hits)
    } else {
        router
    }
}

pub struct QueryApp {
    listener: TcpListener,
    router: Router,
    invalidator: tokio::task::JoinHandle<()>,
    cancel: CancellationToken,
}

impl QueryApp {
    pub async fn build(config: QueryApiConfig) -> Result<Self, StartupError> {
        surge_runtime::telemetry::prometheus();
        let auth = config.auth.build().map_err(|e| StartupError::Config(e.to_string()))?;
        if let Some(url) = &config.read_database_url {
            PgConnectOptions::from_str(url.expose_secret()).map_err(|e| {
                StartupError::Config(format!("SURGE_READ_DATABASE_URL is not a valid Postgres URL: {e}"))
            })?;
        }
        let read_db = DatabaseConfig {
            url: config
                .read_database_url
                .clone()
                .unwrap_or_else(|| config.db.url.clone()),
            ..config.db.clone()
        };
        let pool = surge_runtime::db::connect(&read_db).await?;
        let ttl = Duration::from_secs(config.cache_ttl_secs.max(1));
        surge_runtime::db::report_pool_usage(pool.clone(), "query");
        let db_timeout = Duration::from_millis(config.db_timeout_ms.max(1));
        let items =
            ViewCache::new("items", config.cache_capacity, ttl, config.cache_enabled).with_db_timeout(db_timeout);
        let orders =
            ViewCache::new("orders", config.cache_capacity, ttl, config.cache_enabled).with_db_timeout(db_timeout);
        let cancel = CancellationToken::new();
        let invalidator = spawn_invalidator(&config.kafka, &pool, items.clone(), orders.clone(), cancel.clone())
            .await
            .map_err(|e| match e {
                InvalidatorError::Kafka(e) => StartupError::Kafka(e),
                InvalidatorError::Database(e) => StartupError::Database(e),
                InvalidatorError::Setup => StartupError::Config("cache invalidator setup failed".into()),
            })?;
        let ctx = QueryContext {
            pool,
            items,
            orders,
            consistency_wait: Duration::from_millis(config.consistency_wait_ms),
            consistency_mode: config.consistency_mode,
            console: crate::console::ConsoleContext::new(
                auth.clone(),
                config.console_metrics_urls.clone(),
                config.db.clone(),
                config.kafka.clone(),
            ),
        };
        let router = service_router(ctx, auth, config.body_limit_bytes, &config.cors_origins);
        let listener = surge_runtime::startup::bind(config.addr).await?;
        Ok(QueryApp {
            listener,
            router,
            invalidator,
            cancel,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    /// Serves until `shutdown` resolves, drains in-flight requests, then stops the invalidator.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        tracing::info!(addr = %self.local_addr(), "query API listening");
        let served = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await;
        self.cancel.cancel();
        let _ = self.invalidator.await;
        served
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_secrets() {
        let (password, replica, jwt) = (
            "db-pa55word-x",
            "replica-pa55word-y",
            "jwt-secret-0123456789abcdef012345",
        );
        let mut config = QueryApiConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            DatabaseConfig::new(format!("postgres://surge:{password}@127.0.0.1:5432/surge")),
            KafkaConfig::new("127.0.0.1:9092", ""),
            AuthConfig::hs256(jwt),
        );
        config.read_database_url = Some(format!("postgres://surge:{replica}@replica:5432/surge").into());
        let shown = format!("{config:?}");
        for secret in [password, replica, jwt] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }
}
