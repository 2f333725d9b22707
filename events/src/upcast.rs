//! Upcasting: payloads stored under an older schema version become the current version when
//! they are read, so aggregates, projectors and exporters only ever see current types.
//!
//! Versions so far: `OrderPlaced` v1 (amounts in minor units of the one legacy currency) → v2
//! (amounts as `Money` with a currency). Every other event type is at v1.

use crate::order::OrderPlacedV1;
use crate::{DecodeError, EventEnvelope, Payload};
use serde_json::Value;

/// Every event type this code knows, with the schema version it writes. A test in
/// [`crate::schemas`] checks it against the variants of `OrderEvent` and `InventoryEvent`.
pub(crate) const CURRENT_VERSIONS: &[(&str, i32)] = &[
    ("OrderPlaced", 2),
    ("PaymentSubmitted", 1),
    ("OrderPaid", 1),
    ("PaymentFailed", 1),
    ("OrderCancelled", 1),
    ("OrderShipped", 1),
    ("PaymentRefunded", 1),
    ("ItemAdded", 1),
    ("StockRestocked", 1),
    ("StockReserved", 1),
    ("ReservationReleased", 1),
    ("ReservationExpired", 1),
    ("StockCommitted", 1),
    ("BucketsChanged", 1),
    ("PurchaseLimitSet", 1),
    ("StockMovedOut", 1),
    ("StockMovedIn", 1),
];

/// The schema version this code writes for `event_type` (None: not an event type we know).
pub fn current_version(event_type: &str) -> Option<i32> {
    CURRENT_VERSIONS
        .iter()
        .find(|(known, _)| *known == event_type)
        .map(|(_, version)| *version)
}

/// Decodes the envelope's payload into its typed event, upcast to the current version first.
pub fn decode<P: Payload>(env: &EventEnvelope) -> Result<P, DecodeError> {
    if env.stream_type != P::STREAM_TYPE {
        return Err(DecodeError::WrongStreamType {
            expected: P::STREAM_TYPE,
            found: env.stream_type,
        });
    }
    let mut value = upcast(&env.event_type, env.schema_version, env.payload.clone())?;
    let obj = value.as_object_mut().ok_or_else(|| DecodeError::UnknownType {
        event_type: env.event_type.clone(),
        schema_version: env.schema_version,
    })?;
    obj.insert("type".into(), serde_json::Value::String(env.event_type.clone()));
    serde_json::from_value(value).map_err(|source| {
        if source.to_string().starts_with("unknown variant") {
            DecodeError::UnknownType {
                event_type: env.event_type.clone(),
                schema_version: env.schema_version,
            }
        } else {
            DecodeError::Payload {
                event_type: env.event_type.clone(),
                schema_version: env.schema_version,
                source,
            }
        }
    })
}

/// The payload of (`event_type`, `schema_version`) in its current version.
pub fn upcast(event_type: &str, schema_version: i32, payload: Value) -> Result<Value, DecodeError> {
    let unknown = || DecodeError::UnknownType {
        event_type: event_type.to_string(),
        schema_version,
    };
    let current = current_version(event_type).ok_or_else(unknown)?;
    if schema_version == current {
        return Ok(payload);
    }
    let payload_error = |source| DecodeError::Payload {
        event_type: event_type.to_string(),
        schema_version,
        source,
    };
    match (event_type, schema_version) {
        ("OrderPlaced", 1) => {
            let v1: OrderPlacedV1 = serde_json::from_value(payload).map_err(payload_error)?;
            let v2 = v1
                .upcast()
                .map_err(|e| payload_error(serde::de::Error::custom(e.to_string())))?;
            serde_json::to_value(v2).map_err(payload_error)
        }
        _ => Err(unknown()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn v1() -> Value {
        json!({
            "order_id": "01900000-0000-7000-8000-000000000001",
            "customer_id": "ann",
            "lines": [{"sku": "A", "quantity": 2, "unit_price_minor": 500}],
            "total_minor": 1000,
            "reservation_expires_at": "2026-01-01T00:15:00Z"
        })
    }

    #[test]
    fn order_placed_v1_gains_the_legacy_currency() {
        let v2 = upcast("OrderPlaced", 1, v1()).unwrap();
        assert_eq!(v2["total"], json!({"minor": 1000, "currency": "EUR"}));
        assert_eq!(v2["lines"][0]["unit_price"], json!({"minor": 500, "currency": "EUR"}));
        assert_eq!(v2["lines"][0]["quantity"], 2);
    }

    #[test]
    fn current_versions_pass_through_and_unknown_ones_are_errors() {
        let p = json!({"sku": "A", "quantity": 1});
        assert_eq!(upcast("StockRestocked", 1, p.clone()).unwrap(), p);
        assert!(matches!(
            upcast("OrderPlaced", 3, v1()),
            Err(DecodeError::UnknownType { .. })
        ));
        assert!(matches!(
            upcast("StockTeleported", 1, p),
            Err(DecodeError::UnknownType { .. })
        ));
        assert!(matches!(
            upcast("OrderPlaced", 1, json!({"x": 1})),
            Err(DecodeError::Payload { .. })
        ));
    }
}
