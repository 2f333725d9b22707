//! Configuration shared by several services; each service flattens these into its own struct.
//!
//! Every default is written once, as a `DEFAULT_*` constant that both the clap attribute and
//! the programmatic constructor (`new`, used by tests and tools) read. Secrets (the database
//! URL, which carries the password) are held in [`SecretString`], whose `Debug` never shows
//! them; they are exposed only where a connection is made.

use clap::{Args, ValueEnum};
use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::PgConnectOptions;
use std::str::FromStr;

#[derive(Debug, Clone, Args)]
pub struct DatabaseConfig {
    /// Postgres URL of the event store and the views (it carries the password: never logged).
    #[arg(
        long = "database-url",
        env = "SURGE_DATABASE_URL",
        default_value = DatabaseConfig::DEFAULT_URL,
        hide_env_values = true
    )]
    pub url: SecretString,
    /// Largest number of pooled connections this process opens.
    #[arg(
        long = "database-max-connections",
        env = "SURGE_DATABASE_MAX_CONNECTIONS",
        default_value_t = DatabaseConfig::DEFAULT_MAX_CONNECTIONS,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_connections: u32,
}

impl DatabaseConfig {
    /// The local development database (`./dev up`).
    pub const DEFAULT_URL: &'static str = "postgres://surge:surge@127.0.0.1:5432/surge";
    pub const DEFAULT_MAX_CONNECTIONS: u32 = 16;

    pub fn new(url: impl Into<String>) -> Self {
        DatabaseConfig {
            url: SecretString::from(url.into()),
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
        }
    }

    /// The URL, password included: only for making a connection (or handing it to a child
    /// process), never for a log line or a message.
    pub fn expose_url(&self) -> &str {
        self.url.expose_secret()
    }

    /// The connection options the URL describes; a URL that does not parse is refused with a
    /// message that names the setting and not its value.
    pub fn connect_options(&self) -> Result<PgConnectOptions, sqlx::Error> {
        PgConnectOptions::from_str(self.expose_url()).map_err(|e| {
            // The parser's own reason, without sqlx's "error with configuration" around it.
            let why = match e {
                sqlx::Error::Configuration(inner) => inner.to_string(),
                other => other.to_string(),
            };
            sqlx::Error::Configuration(
                format!("SURGE_DATABASE_URL (--database-url) is not a valid Postgres URL: {why}").into(),
            )
        })
    }
}

#[derive(Debug, Clone, Args)]
pub struct KafkaConfig {
    /// Kafka bootstrap servers.
    #[arg(
        long = "kafka-brokers",
        env = "SURGE_KAFKA_BROKERS",
        default_value = KafkaConfig::DEFAULT_BROKERS,
        value_parser = clap::builder::NonEmptyStringValueParser::new()
    )]
    pub brokers: String,
    /// Prefix of every topic name (tests use one per test).
    #[arg(long = "topic-prefix", env = "SURGE_TOPIC_PREFIX", default_value = "")]
    pub topic_prefix: String,
    /// Partitions of each event topic when `surge migrate` creates it.
    #[arg(
        long = "topic-partitions",
        env = "SURGE_TOPIC_PARTITIONS",
        default_value_t = KafkaConfig::DEFAULT_PARTITIONS,
        value_parser = clap::value_parser!(i32).range(1..)
    )]
    pub partitions: i32,
}

impl KafkaConfig {
    pub const DEFAULT_BROKERS: &'static str = "127.0.0.1:9092";
    pub const DEFAULT_PARTITIONS: i32 = 6;

    pub fn new(brokers: impl Into<String>, topic_prefix: impl Into<String>) -> Self {
        KafkaConfig {
            brokers: brokers.into(),
            topic_prefix: topic_prefix.into(),
            partitions: Self::DEFAULT_PARTITIONS,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    #[default]
    Json,
    Pretty,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        db: DatabaseConfig,
        #[command(flatten)]
        kafka: KafkaConfig,
    }

    const PASSWORD: &str = "s3cret-pa55word";

    #[test]
    fn debug_never_shows_the_database_url() {
        let config = DatabaseConfig::new(format!("postgres://surge:{PASSWORD}@db.internal:5432/surge"));
        let shown = format!("{config:?}");
        assert!(!shown.contains(PASSWORD), "{shown}");
        assert!(!shown.contains("db.internal"), "{shown}");
        assert!(config.expose_url().contains(PASSWORD));
    }

    #[test]
    fn a_url_that_does_not_parse_is_named_without_its_value() {
        let err = DatabaseConfig::new(format!("not a url {PASSWORD}"))
            .connect_options()
            .unwrap_err()
            .to_string();
        assert!(err.contains("SURGE_DATABASE_URL"), "{err}");
        assert!(!err.contains(PASSWORD), "{err}");
        assert!(DatabaseConfig::new(DatabaseConfig::DEFAULT_URL)
            .connect_options()
            .is_ok());
    }

    #[test]
    fn zero_connections_or_partitions_and_no_brokers_are_refused() {
        for args in [
            ["surge", "--database-max-connections", "0"],
            ["surge", "--topic-partitions", "0"],
            ["surge", "--kafka-brokers", ""],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
    }
}
