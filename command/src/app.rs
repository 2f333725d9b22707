//! The command API as a value: build it (bind, connect), ask its address, run it until shutdown.

use crate::api::{router, ApiContext};
use crate::commands::{CommandSettings, Commands};
use crate::store::EventStore;
use axum::Router;
use clap::Args;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use surge_runtime::{DatabaseConfig, StartupError};
use tokio::net::TcpListener;

#[derive(Debug, Clone, Args)]
pub struct CommandApiConfig {
    /// Address the command API listens on.
    #[arg(
        long = "addr",
        env = "SURGE_COMMAND_ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub addr: SocketAddr,
    #[command(flatten)]
    pub db: DatabaseConfig,
    /// How long stock stays reserved for an unpaid order, in seconds.
    #[arg(long, env = "SURGE_RESERVATION_TTL_SECS", default_value_t = 900)]
    pub reservation_ttl_secs: u64,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "SURGE_BODY_LIMIT_BYTES", default_value_t = 64 * 1024)]
    pub body_limit_bytes: usize,
}

impl CommandApiConfig {
    pub fn new(addr: SocketAddr, db: DatabaseConfig) -> Self {
        CommandApiConfig {
            addr,
            db,
            reservation_ttl_secs: 900,
            body_limit_bytes: 64 * 1024,
        }
    }
}

pub struct CommandApp {
    listener: TcpListener,
    router: Router,
    commands: Commands,
}

impl CommandApp {
    pub async fn build(config: CommandApiConfig) -> Result<Self, StartupError> {
        if config.reservation_ttl_secs == 0 {
            return Err(StartupError::Config(
                "SURGE_RESERVATION_TTL_SECS must be at least 1".into(),
            ));
        }
        let pool = surge_runtime::db::connect(&config.db).await?;
        let commands = Commands::new(
            EventStore::new(pool.clone()),
            CommandSettings {
                reservation_ttl: Duration::from_secs(config.reservation_ttl_secs),
                ..CommandSettings::default()
            },
        );
        let ctx = ApiContext {
            commands: commands.clone(),
            pool,
        };
        let router = surge_runtime::http::with_service_layers(router(ctx), config.body_limit_bytes);
        let listener = surge_runtime::startup::bind(config.addr).await?;
        Ok(CommandApp {
            listener,
            router,
            commands,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn commands(&self) -> &Commands {
        &self.commands
    }

    /// Serves until `shutdown` resolves, then drains in-flight requests.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        tracing::info!(addr = %self.local_addr(), "command API listening");
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
    }
}
