//! The `surge` command line: parses arguments into each service's typed config and runs it.
//!
//! Owns nothing but wiring and user-facing output: [`Cli`] lists the subcommands, [`run`]
//! dispatches them, [`demo`] is the scripted flash sale `./dev demo` shows, [`export`] moves
//! events out and back in for analysts, [`credentials`] issues tokens (and lets tools such as
//! `surge-loadgen` authenticate), [`schemas`] writes the event JSON Schemas, [`migrate`]
//! applies the schema and creates the topics. Every service's logic lives in its own crate;
//! load generation and benchmarks live beside the product, in `surge-loadgen`.

pub mod credentials;
pub mod demo;
pub mod export;
pub mod migrate;
pub mod schemas;
pub mod seed;
pub mod stats;

use clap::{Parser, Subcommand};
use surge_command::{CommandApiConfig, CommandApp, Relay, RelayConfig};
use surge_projections::{Projector, ProjectorConfig};
use surge_query::{QueryApiConfig, QueryApp};
use surge_runtime::{shutdown, telemetry, LogFormat};
use surge_stream::{StreamApi, StreamApiConfig};
use surge_webhooks::{WebhooksApp, WebhooksConfig};

#[derive(Debug, Parser)]
#[command(
    name = "surge",
    version,
    about = "Surge: an event-sourced order platform built for flash sales"
)]
pub struct Cli {
    /// Log format: json for machines, pretty for people.
    #[arg(long, env = "SURGE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the command API (orders, payments, inventory).
    CommandApi(CommandApiConfig),
    /// Serve the query API (catalog, orders, sales).
    QueryApi(QueryApiConfig),
    /// Serve the event store to KurrentDB (EventStoreDB) clients over gRPC: reads and subscriptions.
    StreamApi(StreamApiConfig),
    /// Run projector workers that keep the views.
    Project(ProjectorConfig),
    /// Run the outbox relay that publishes events to Kafka.
    Relay(RelayConfig),
    /// Deliver order status changes to registered webhook endpoints (fan-out and deliverer).
    Webhooks(WebhooksConfig),
    /// Apply the database migrations and create the Kafka topics.
    Migrate(migrate::MigrateConfig),
    /// Seed a catalog and run a short flash sale against running services.
    Demo(demo::DemoConfig),
    /// Rebuild projections from the event store into a new generation and switch to it.
    Replay(surge_projections::replay::ReplayConfig),
    /// Export events (filtered) as NDJSON, CSV or Parquet, in constant memory.
    Export(export::ExportConfig),
    /// Import an NDJSON export into an empty event store, every event as it was.
    Import(export::ImportConfig),
    /// Quick answers from the event log: orders per minute, top SKUs, reservation conversion.
    Stats(stats::StatsConfig),
    /// Write a generated history straight into the event store (benchmarks, practice).
    Seed(seed::SeedConfig),
    /// Issue a local bearer token (HS256, with SURGE_JWT_SECRET) or make an API key.
    Token(credentials::TokenConfig),
    /// Write the JSON Schema of every event type and version to schema/events/.
    Schemas(schemas::SchemasConfig),
}

impl Cli {
    /// Parses an argument list (tests check deploy files against the real parser).
    pub fn try_parse_from_args(args: &[String]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(args)
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    telemetry::init(cli.log_format);
    match cli.command {
        Command::CommandApi(config) => CommandApp::build(config).await?.run(shutdown::signal()).await?,
        Command::QueryApi(config) => QueryApp::build(config).await?.run(shutdown::signal()).await?,
        Command::StreamApi(config) => StreamApi::build(config).await?.run(shutdown::signal()).await?,
        Command::Project(config) => Projector::build(config).await?.run(shutdown::signal()).await,
        Command::Relay(config) => Relay::build(config).await?.run(shutdown::signal()).await?,
        Command::Webhooks(config) => WebhooksApp::build(config).await?.run(shutdown::signal()).await?,
        Command::Migrate(config) => migrate::run(config).await?,
        Command::Demo(config) => demo::run(config).await?,
        Command::Schemas(config) => schemas::run(config)?,
        Command::Token(config) => credentials::run(&config)?,
        Command::Seed(config) => seed::run(config).await?,
        Command::Stats(config) => stats::run(config).await?,
        Command::Replay(config) => {
            for r in surge_projections::replay::replay(&config).await? {
                if r.dry_run {
                    println!(
                        "{}: would fold {} events from {:?} into a new generation of {}, then switch under the checkpoint lock",
                        r.projection.name(),
                        r.events,
                        config.source,
                        r.tables.join(", ")
                    );
                    continue;
                }
                println!(
                    "{}: {} events folded ({} while switching) in {:.1} s ({:.0} events/s)",
                    r.projection.name(),
                    r.events,
                    r.caught_up,
                    r.seconds,
                    r.events as f64 / r.seconds.max(1e-9)
                );
            }
        }
        Command::Export(config) => {
            let n = export::export(&config).await?;
            tracing::info!(events = n, "export done");
        }
        Command::Import(config) => {
            let n = export::import(&config).await?;
            println!("imported {n} events");
        }
    }
    Ok(())
}
