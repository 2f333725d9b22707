//! The contract between Surge's write side and read side: what an event is and what it says.
//!
//! Owns the identifiers and money newtypes (validated on construction), the payloads of every
//! stream type (`order`, `inventory`), and the [`EventEnvelope`] that carries one payload with its
//! stream, version, global position and causal metadata through Postgres and Kafka. It depends on
//! nothing of ours and does no I/O: encoding is serde JSON, decoding goes through [`decode`] so
//! old schema versions can be upcast in one place.
//!
//! Layout: [`ids`] (OrderId, Sku, CustomerId, StreamId), [`money`] (Money, Currency),
//! [`order`] and [`inventory`] (payloads per stream type), [`envelope`] (envelope, metadata,
//! decoding), [`upcast`] (old schema versions to current ones), [`schemas`] (JSON Schemas of
//! every event type and version), [`topics`] (which Kafka topic a stream type goes to).
//! [`invariants`] holds what any wire bytes must keep (fuzzed, and replayed from `fuzz/corpus`).

pub mod envelope;
pub mod ids;
pub mod invariants;
pub mod inventory;
pub mod money;
pub mod order;
pub mod schemas;
pub mod topics;
pub mod upcast;

pub use envelope::{DecodeError, EventEnvelope, EventMetadata, Payload, StreamType, ENVELOPE_COLUMNS};
pub use ids::{CustomerId, IdError, OrderId, Sku, StreamId, StreamOf};
pub use inventory::InventoryEvent;
pub use money::{Currency, Money, MoneyError};
pub use order::{OrderEvent, OrderLine};
pub use upcast::decode;
