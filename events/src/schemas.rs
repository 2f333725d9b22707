//! JSON Schemas of every event type and schema version, generated from the Rust types.
//! `surge schemas` writes them to `schema/events/`; a test fails when the checked-in files
//! drift from the types.

use crate::inventory::{
    BucketsChanged, ItemAdded, PurchaseLimitSet, ReservationExpired, ReservationReleased, StockCommitted, StockMovedIn,
    StockMovedOut, StockReserved, StockRestocked,
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
        ("BucketsChanged", 1, schema_for!(BucketsChanged)),
        ("PurchaseLimitSet", 1, schema_for!(PurchaseLimitSet)),
        ("StockMovedOut", 1, schema_for!(StockMovedOut)),
        ("StockMovedIn", 1, schema_for!(StockMovedIn)),
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
        // The run's own checkout: cargo sets the variable at run time too, and a test binary built
        // from another checkout sharing the target directory keeps that checkout's path.
        let dir = std::path::PathBuf::from(
            std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()),
        )
        .join("../schema/events");
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

    /// The variant names of a payload enum, read from its derived `Deserialize`: asked for a
    /// `type` tag that no variant has, it reports the whole list of the ones it accepts. Those
    /// tags are the event types: `decode` sets the tag from the envelope's `event_type`.
    fn variants_of<P: crate::Payload>() -> Vec<&'static str> {
        use serde::de::value::MapDeserializer;
        use std::fmt;

        #[derive(Debug)]
        enum Probe {
            Variants(&'static [&'static str]),
            Other(String),
        }
        impl fmt::Display for Probe {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{self:?}")
            }
        }
        impl std::error::Error for Probe {}
        impl serde::de::Error for Probe {
            fn custom<T: fmt::Display>(msg: T) -> Self {
                Probe::Other(msg.to_string())
            }
            fn unknown_variant(_variant: &str, expected: &'static [&'static str]) -> Self {
                Probe::Variants(expected)
            }
        }

        let no_such_tag = MapDeserializer::<_, Probe>::new(std::iter::once(("type", "")));
        match <P as serde::Deserialize>::deserialize(no_such_tag) {
            Err(Probe::Variants(names)) => names.to_vec(),
            Err(Probe::Other(e)) => panic!("{}: not an enum tagged by `type`: {e}", std::any::type_name::<P>()),
            Ok(_) => panic!("{} accepted an empty `type` tag", std::any::type_name::<P>()),
        }
    }

    /// Every event type: the variants of every payload enum.
    fn event_types() -> Vec<&'static str> {
        let mut types = variants_of::<crate::OrderEvent>();
        types.extend(variants_of::<crate::InventoryEvent>());
        types
    }

    /// `OrderPlaced.v2.json` → `("OrderPlaced", 2)`.
    fn type_and_version(file_name: &str) -> (&str, i32) {
        let (event_type, version) = file_name
            .strip_suffix(".json")
            .and_then(|stem| stem.rsplit_once(".v"))
            .unwrap_or_else(|| panic!("schema file name {file_name} is not <Type>.v<version>.json"));
        (event_type, version.parse().unwrap())
    }

    #[test]
    fn the_variants_are_read_from_the_enums() {
        assert_eq!(variants_of::<crate::OrderEvent>()[0], "OrderPlaced");
        assert!(variants_of::<crate::InventoryEvent>().contains(&"StockCommitted"));
        let types = event_types();
        let distinct: std::collections::BTreeSet<_> = types.iter().collect();
        assert_eq!(
            distinct.len(),
            types.len(),
            "an event type names one variant of one stream type"
        );
    }

    #[test]
    fn every_event_type_has_a_current_version_and_its_schema() {
        let names: Vec<String> = event_schemas().into_iter().map(|(n, _)| n).collect();
        let mut missing = Vec::new();
        for t in event_types() {
            match crate::upcast::current_version(t) {
                None => missing.push(format!("{t}: no entry in upcast::CURRENT_VERSIONS")),
                Some(v) if !names.contains(&format!("{t}.v{v}.json")) => {
                    missing.push(format!("{t}: no {t}.v{v}.json in schemas::event_schemas"))
                }
                Some(_) => {}
            }
        }
        assert!(missing.is_empty(), "event variants without their entries: {missing:#?}");
    }

    #[test]
    fn every_type_with_a_version_or_a_schema_is_an_event_type() {
        let types = event_types();
        let mut stale = Vec::new();
        for (t, _) in crate::upcast::CURRENT_VERSIONS {
            if !types.contains(t) {
                stale.push(format!("upcast::CURRENT_VERSIONS has {t}, which no payload enum has"));
            }
        }
        for (name, _) in event_schemas() {
            let (t, v) = type_and_version(&name);
            match crate::upcast::current_version(t) {
                _ if !types.contains(&t) => stale.push(format!("{name}: {t} is a variant of no payload enum")),
                Some(current) if v > current => stale.push(format!("{name}: newer than the current v{current}")),
                _ => {}
            }
        }
        assert!(stale.is_empty(), "entries for no current event type: {stale:#?}");
    }
}
