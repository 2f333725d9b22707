//! Configuration shared by several services; each service flattens these into its own struct.

use clap::{Args, ValueEnum};

#[derive(Debug, Clone, Args)]
pub struct DatabaseConfig {
    /// Postgres URL of the event store and the views.
    #[arg(
        long = "database-url",
        env = "SURGE_DATABASE_URL",
        default_value = "postgres://surge:surge@127.0.0.1:5432/surge"
    )]
    pub url: String,
    /// Largest number of pooled connections this process opens.
    #[arg(
        long = "database-max-connections",
        env = "SURGE_DATABASE_MAX_CONNECTIONS",
        default_value_t = 16
    )]
    pub max_connections: u32,
}

impl DatabaseConfig {
    pub fn new(url: impl Into<String>) -> Self {
        DatabaseConfig {
            url: url.into(),
            max_connections: 16,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct KafkaConfig {
    /// Kafka bootstrap servers.
    #[arg(
        long = "kafka-brokers",
        env = "SURGE_KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub brokers: String,
    /// Prefix of every topic name (tests use one per test).
    #[arg(long = "topic-prefix", env = "SURGE_TOPIC_PREFIX", default_value = "")]
    pub topic_prefix: String,
    /// Partitions of each event topic when `surge migrate` creates it.
    #[arg(long = "topic-partitions", env = "SURGE_TOPIC_PARTITIONS", default_value_t = 6)]
    pub partitions: i32,
}

impl KafkaConfig {
    pub fn new(brokers: impl Into<String>, topic_prefix: impl Into<String>) -> Self {
        KafkaConfig {
            brokers: brokers.into(),
            topic_prefix: topic_prefix.into(),
            partitions: 6,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    #[default]
    Json,
    Pretty,
}
