//! Which Kafka topic carries which stream type. Tests pass a per-test prefix.

use crate::StreamType;

pub const ORDERS: &str = "orders.events";
pub const INVENTORY: &str = "inventory.events";

/// The topic of a stream type under a deployment's prefix (empty in production).
pub fn topic_for(prefix: &str, stream_type: StreamType) -> String {
    let base = match stream_type {
        StreamType::Order => ORDERS,
        StreamType::Inventory => INVENTORY,
    };
    format!("{prefix}{base}")
}

/// Every topic Surge writes, under a prefix.
pub fn all_topics(prefix: &str) -> Vec<String> {
    [StreamType::Order, StreamType::Inventory]
        .into_iter()
        .map(|t| topic_for(prefix, t))
        .collect()
}
