//! Surge's read side: serves catalog, order and sales reads from the Postgres views.
//!
//! Owns the typed reads of the views ([`views`]), the Moka caches in front of them and the
//! embedded invalidator that evicts entries when their stream's events arrive on Kafka
//! ([`cache`]), the HTTP query API with ETags, keyset pagination and read-your-writes
//! ([`api`], started through [`app`]; its hot read, a cached catalog item, is answered in front
//! of the middleware by [`catalog_hits`] with bodies compressed once, [`encoding`]), and the
//! operator console ([`console`]: live figures over
//! Server-Sent Events, the event browser, projection rebuilds). It never writes a view: the
//! views belong to the projectors (a console rebuild runs the projectors' replay code).

pub mod api;
pub mod app;
pub mod cache;
pub mod catalog_hits;
pub mod console;
pub mod context;
pub mod encoding;
pub mod views;

pub use app::{QueryApiConfig, QueryApp};
