//! Surge's rules: what may happen to an order and to a SKU's stock, as pure functions.
//!
//! Owns the aggregates ([`order`]: `Order`; [`inventory`]: `Inventory`), each deciding a
//! command against its state and folding what happened ([`aggregate`]:
//! `decide(&state, &command) -> Result<Vec<Event>, DomainError>`, `evolve(&mut state, &event)`);
//! the checkout decision ([`checkout`]: `place(order, inventories)` prices every line from the
//! catalog and reserves every line's stock, or refuses the whole order); what a checkout may
//! send as payment and what becomes of a charge ([`payment`]); where an order stands
//! ([`status`]); and the refusals with the bounds they enforce ([`error`]: `DomainError`).
//! An item's stock may be split into buckets, each an `Inventory` of its own stream:
//! [`buckets`] decides across them (`ItemStock`: split, spread, move; `preferred_bucket`), and
//! the checkout reserves from one bucket or, definitively, from any (`place_from_any`), within
//! the item's purchase limit.
//!
//! It never does I/O: no database, network, clock, randomness or async runtime (its
//! dependencies are `surge-events`, chrono, serde and thiserror; never sqlx, axum, rdkafka or
//! tokio). Whoever calls it loads the state, passes the time in, and appends what it decided.
//! Its tests are given/when/then on events (`testing`, after cqrs-es' `TestFramework`) and
//! need nothing running.
//!
//! Modules import one way: `status` ← `error` ← `aggregate` ← `order`, `inventory` ←
//! `buckets` ← `checkout`; `payment` ← `error`, `status`. This file only declares and re-exports them.

pub mod aggregate;
pub mod buckets;
pub mod checkout;
pub mod error;
pub mod inventory;
pub mod order;
pub mod payment;
pub mod status;
#[cfg(test)]
mod testing;

pub use aggregate::Aggregate;
pub use buckets::{preferred_bucket, ItemStock, NewItem};
pub use checkout::{place, place_from_any, Held, PlaceOrder, Placement};
pub use error::{DomainError, MAX_BUCKETS, MAX_LINES, MAX_QUANTITY, MAX_RESTOCK};
pub use inventory::{Inventory, InventoryCommand, Settings};
pub use order::{Order, OrderCommand};
pub use status::OrderStatus;
