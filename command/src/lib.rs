//! Surge's write side: decides commands and appends their events; never reads a view.
//!
//! Owns the pure aggregates ([`domain`]: `Order`, `Inventory`), the Postgres event store with
//! its outbox and idempotency keys ([`store`], [`idempotency`]), the application service that
//! runs load → decide → append with bounded conflict retries ([`commands`]), the per-SKU
//! group-commit lanes that single-SKU orders of a hot item queue in ([`sequencer`]), the HTTP command
//! API ([`api`], behind rate limits and load shedding: [`admission`]; started through [`app`]), the workers that settle payments ([`payments`]) and
//! expire unpaid holds ([`expiry`]), and the outbox relay to Kafka ([`relay`]); both
//! workers call out through circuit breakers ([`breaker`]).
//! [`invariants`] holds what any command body must keep (fuzzed, and replayed from `fuzz/corpus`).
//! All I/O lives outside [`domain`]; the event store's version check is the final guard
//! against oversell, whatever runs in front of it.

pub mod admission;
pub mod api;
pub mod app;
pub mod breaker;
pub mod commands;
pub mod domain;
pub mod expiry;
pub mod idempotency;
pub mod invariants;
pub mod payments;
pub mod relay;
pub mod sequencer;
pub mod store;

pub use app::{CommandApiConfig, CommandApp};
pub use relay::{Relay, RelayConfig};
