//! The state every handler of the query process gets: the views' pool and caches, how reads
//! wait for consistency tokens, and what the console needs besides the views. Below both the
//! API ([`crate::api`]) and the console ([`crate::console`]), so neither imports the other's.

use crate::cache::ViewCache;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use surge_projections::replay::ReplayProgress;
use surge_runtime::auth::Authenticator;
use surge_runtime::{DatabaseConfig, KafkaConfig};
use tokio::sync::Mutex;

/// What a read does when the view has not reached the caller's consistency token in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConsistencyMode {
    /// 503 with Retry-After.
    Fail,
    /// The value the view has, flagged `X-Consistency: stale`.
    Stale,
}

#[derive(Clone)]
pub struct QueryContext {
    pub pool: PgPool,
    pub items: ViewCache,
    pub orders: ViewCache,
    pub consistency_wait: Duration,
    pub consistency_mode: ConsistencyMode,
    pub console: ConsoleContext,
}

/// What the console needs besides the views: where the other processes' metrics are, the
/// token checker (to open sessions) and what a replay runs with.
#[derive(Clone)]
pub struct ConsoleContext {
    pub auth: Arc<Authenticator>,
    pub metrics_urls: Arc<Vec<String>>,
    pub http: reqwest::Client,
    pub primary: DatabaseConfig,
    pub kafka: KafkaConfig,
    pub replay: Arc<Mutex<Option<ReplayProgress>>>,
}

impl ConsoleContext {
    pub fn new(
        auth: Arc<Authenticator>,
        metrics_urls: Vec<String>,
        primary: DatabaseConfig,
        kafka: KafkaConfig,
    ) -> Self {
        ConsoleContext {
            auth,
            metrics_urls: Arc::new(metrics_urls.into_iter().filter(|u| !u.trim().is_empty()).collect()),
            http: reqwest::Client::builder()
                .timeout(Duration::from_millis(800))
                .build()
                .unwrap_or_default(),
            primary,
            kafka,
            replay: Arc::new(Mutex::new(None)),
        }
    }
}
