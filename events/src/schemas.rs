//! JSON Schemas of every event type and schema version, generated from the Rust types.
//! `surge schemas` writes them to `schema/events/`; a test fails when the checked-in files
//! drift from the types.

use crate::inventory::{
    ItemAdded, ReservationExpired, ReservationReleased, StockCommitted, StockReserved, StockRestocked,
};
use crate::order::{
    OrderCancelled, OrderPaid, OrderPlaced, OrderPlacedV1, OrderShipped, PaymentFailed, PaymentRefunded,
    PaymentSubmitted,
};
use schemars::{schema_for, Schema};

fn titled(mut schema: Schema, event_type: &str, version: i32) -> serde_json::Value {
    schema.insert("title".into(), format!("{event_type} v{version}").into());
    schema.insert(
        "$id".into(),
        format!("https://surge.dev/schemas/events/{event_type}.v{version}.json").into(),
    );
    schema.to_value()
}

/// `(file name, schema)` for every event type and version Surge reads.
pub fn event_schemas() -> Vec<(String, serde_json::Value)> {
    let all = [
        ("OrderPlaced", 1, schema_for!(OrderPlacedV1)),
        ("OrderPlaced", 2, schema_for!(OrderPlaced)),
        ("PaymentSubmitted", 1, schema_for!(PaymentSubmitted)),
        ("OrderPaid", 1, schema_for!(OrderPaid)),
        ("PaymentFailed", 1, schema_for!(PaymentFailed)),
        ("OrderCancelled", 1, schema_for!(OrderCancelled)),
        ("OrderShipped", 1, schema_for!(OrderShipped)),
        ("PaymentRefunded", 1, schema_for!(PaymentRefunded)),
        ("ItemAdded", 1, schema_for!(ItemAdded)),
        ("StockRestocked", 1, schema_for!(StockRestocked)),
        ("StockReserved", 1, schema_for!(StockReserved)),
        ("ReservationReleased", 1, schema_for!(ReservationReleased)),
        ("ReservationExpired", 1, schema_for!(ReservationExpired)),
        ("StockCommitted", 1, schema_for!(StockCommitted)),
    ];
    all.into_iter()
        .map(|(t, v, s)| (format!("{t}.v{v}.json"), titled(s, t, v)))
        .collect()
}

/// The text a schema file holds (pretty JSON, trailing newline).
pub fn file_text(schema: &serde_json::Value) -> String {
    serde_json::to_string_pretty(schema).unwrap_or_default() + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_in_schemas_match_the_types() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schema/events");
        for (name, schema) in event_schemas() {
            let on_disk = std::fs::read_to_string(dir.join(&name))
                .unwrap_or_else(|_| panic!("schema/events/{name} is missing: run `surge schemas`"));
            assert_eq!(
                on_disk,
                file_text(&schema),
                "schema/events/{name} drifted from the types: run `surge schemas`"
            );
        }
        let files = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(
            files,
            event_schemas().len(),
            "schema/events holds only generated schemas"
        );
    }

    #[test]
    fn every_current_version_has_a_schema() {
        let names: Vec<String> = event_schemas().into_iter().map(|(n, _)| n).collect();
        for t in [
            "OrderPlaced",
            "OrderPaid",
            "ItemAdded",
            "StockReserved",
            "StockCommitted",
        ] {
            let v = crate::upcast::current_version(t).unwrap();
            assert!(names.contains(&format!("{t}.v{v}.json")));
        }
    }
}
