//! Surge's read-model builders: consume events from Kafka, keep the Postgres views.
//!
//! Every view has one shape, [`View`] (its name, stream type, tables, pure fold, row loads and
//! writes), and one apply path, [`view::apply`]: it skips what a row already reflects (by stream
//! version) and heals a version gap by reading the missing events from the event store. The views
//! ([`catalog`]: `catalog_items` and `sales_by_minute` from inventory events; [`orders`]:
//! `orders` from order events) are listed once, in [`registry`]. Three callers use that path: the
//! projector worker ([`worker`]) applies each batch of Kafka messages in one transaction together
//! with its checkpoint and dead-letters what it cannot fold; the heal ([`heal`]) folds what the
//! store has and the views lack when Kafka's offsets stopped meaning anything; the replay
//! ([`replay`]) rebuilds views from the store into a new generation and switches to it without
//! read downtime, folding the store's events in memory with the same folds ([`view::Folded`],
//! payloads decoded once from their stored text by [`rebuild`]) and writing the new generation
//! with `COPY` ([`copy_in`]). It never writes the event store.

pub mod catalog;
pub mod copy_in;
pub mod heal;
pub mod orders;
pub mod rebuild;
pub mod registry;
pub mod replay;
pub mod view;
pub mod worker;

pub use view::{step, BatchStats, Projection, Step, View};
pub use worker::{Projector, ProjectorConfig};
