//! `surge migrate`: the schema in Postgres and the topics in Kafka, both idempotent.

use clap::Args;
use std::time::Duration;
use surge_runtime::{DatabaseConfig, KafkaConfig};

#[derive(Debug, Clone, Args)]
pub struct MigrateConfig {
    #[command(flatten)]
    pub db: DatabaseConfig,
    #[command(flatten)]
    pub kafka: KafkaConfig,
    /// Only migrate Postgres; leave Kafka alone.
    #[arg(long)]
    pub skip_topics: bool,
}

pub async fn run(config: MigrateConfig) -> anyhow::Result<()> {
    let pool = surge_runtime::db::connect(&config.db).await?;
    surge_runtime::db::migrate(&pool).await?;
    println!("postgres: migrations applied");
    if !config.skip_topics {
        let brokers = surge_runtime::kafka::check_broker(&config.kafka, Duration::from_secs(10))?;
        let topics = surge_runtime::kafka::ensure_topics(&config.kafka).await?;
        println!(
            "kafka: {} broker(s); topics ready: {} ({} partitions each when created)",
            brokers,
            topics.join(", "),
            config.kafka.partitions
        );
    }
    Ok(())
}
