//! What every Surge process runs on, so that the service crates hold only their own logic.
//!
//! Owns the shared pieces of configuration ([`config`]: Postgres, Kafka, logs), structured
//! logging ([`telemetry`]), the shutdown signal ([`shutdown`]), connecting to Postgres and
//! running migrations ([`db`]), Kafka client settings and topic administration ([`kafka`]),
//! RFC 9457 problem responses ([`problem`]) that both HTTP APIs answer errors with, the
//! extractors that turn bad input into such problems ([`extract`]) and startup errors ([`startup`]).
//! Authentication ([`auth`]: bearer tokens and API keys, roles) is here too, so both APIs
//! check callers the same way, and the circuit breakers ([`breaker`]) that the payment worker
//! and the outbox relay call out through. It never holds domain rules and never reaches into a
//! view or the event store's tables.

pub mod auth;
pub mod breaker;
pub mod config;
pub mod db;
pub mod extract;
pub mod http;
pub mod kafka;
pub mod problem;
pub mod shutdown;
pub mod startup;
pub mod telemetry;

pub use auth::{AuthConfig, Principal, Role};
pub use config::{DatabaseConfig, KafkaConfig, LogFormat};
pub use problem::Problem;
pub use startup::StartupError;
