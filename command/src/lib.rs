//! Surge's write side: decides commands and appends their events; never reads a view.
//!
//! Decides through the pure rules of `surge-domain` (re-exported as [`domain`]: `Order`,
//! `Inventory`, the checkout decision) and writes through `surge-store`, which holds every
//! statement on the log and its side tables; [`store`] adds the cache of aggregate states on top,
//! [`idempotency`] the keys' hashing. Owns the application service that runs
//! load → decide → append with bounded conflict retries ([`commands`]) and what it answers
//! ([`answers`]: `OrderAccepted`, `CommandError`), the per-SKU group-commit lanes that
//! single-SKU orders of a hot item queue in ([`sequencer`]; one lane per stock bucket of an item
//! split into several, read and written through [`buckets`]), the HTTP command API ([`api`],
//! behind rate limits and load shedding: [`admission`]; started through [`app`]), the workers
//! that settle payments ([`payments`]) and expire unpaid holds ([`expiry`]), and the outbox
//! relay to Kafka ([`relay`]); both workers call out through the circuit breakers of
//! [`surge_runtime::breaker`].
//! [`invariants`] holds what any command body must keep (fuzzed, and replayed from `fuzz/corpus`).
//! All I/O lives outside [`domain`]; the event store's version check is the final guard
//! against oversell, whatever runs in front of it.
//!
//! Modules import one way (no module imports one that imports it back): `app` → `api` →
//! `commands` → `sequencer` → `buckets` → `idempotency` → `answers` → `store`; the workers (`payments`,
//! `expiry`) → `commands`; what they all answer lives in `answers`, below them.

pub mod admission;
pub mod answers;
pub mod api;
pub mod app;
pub mod buckets;
pub mod commands;
pub mod expiry;
pub mod idempotency;
pub mod invariants;
pub mod payments;
pub mod relay;
pub mod sequencer;
pub mod store;

pub use app::{CommandApiConfig, CommandApp};
pub use relay::{Relay, RelayConfig};
pub use surge_domain as domain;
