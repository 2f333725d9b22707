//! A replay's bulk load reads events with their payloads as stored JSON text
//! ([`surge_store::bulk`]) and decodes each once, straight into its typed event
//! ([`decode_stored`]), with the same outcome as [`decode`] on a parsed payload. The in-memory
//! fold that uses it is [`crate::view::Folded`]: the view's own fold, its rows kept in memory
//! until they are written once into the new generation.

use surge_events::{decode, DecodeError, Payload};
use surge_store::bulk::StoredEvent;

/// The typed event of a stored payload: what [`decode`] gives for it. A payload at its type's
/// current schema version is read straight from its JSON text with the `type` tag put in front
/// of its fields (no `serde_json::Value` built, cloned and dropped); anything else (an older
/// version to upcast, a payload that does not read) goes through [`decode`] itself.
pub fn decode_stored<P: Payload>(stored: &StoredEvent) -> Result<P, DecodeError> {
    let env = &stored.envelope;
    if env.stream_type == P::STREAM_TYPE
        && surge_events::upcast::current_version(&env.event_type) == Some(env.schema_version)
    {
        if let Some(tagged) = tagged(&env.event_type, &stored.payload_json) {
            if let Ok(event) = serde_json::from_slice::<P>(&tagged) {
                return Ok(event);
            }
        }
    }
    let mut full = env.clone();
    full.payload = serde_json::from_str(&stored.payload_json)?;
    decode(&full)
}

/// `{"type":<event_type>,<the payload's fields>}` from a payload object's JSON text.
fn tagged(event_type: &str, payload: &str) -> Option<Vec<u8>> {
    let fields = payload.trim_start().strip_prefix('{')?;
    let mut json = Vec::with_capacity(payload.len() + event_type.len() + 12);
    json.extend_from_slice(b"{\"type\":");
    serde_json::to_writer(&mut json, event_type).ok()?;
    if !fields.trim_start().starts_with('}') {
        json.push(b',');
    }
    json.extend_from_slice(fields.as_bytes());
    Some(json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use surge_events::{EventEnvelope, EventMetadata, OrderEvent, StreamId, StreamType};

    fn stored(event_type: &str, schema_version: i32, payload: serde_json::Value) -> StoredEvent {
        StoredEvent {
            envelope: EventEnvelope {
                event_id: uuid::Uuid::now_v7(),
                position: 1,
                stream_id: StreamId("order-0190a8a0-0000-7000-8000-000000000001".into()),
                stream_type: StreamType::Order,
                version: 1,
                event_type: event_type.into(),
                schema_version,
                occurred_at: chrono::Utc::now(),
                metadata: EventMetadata::new("test"),
                payload: serde_json::Value::Null,
            },
            payload_json: payload.to_string(),
        }
    }

    fn via_value(s: &StoredEvent) -> Result<OrderEvent, DecodeError> {
        let mut env = s.envelope.clone();
        env.payload = serde_json::from_str(&s.payload_json).unwrap();
        decode(&env)
    }

    #[test]
    fn a_stored_payload_decodes_as_the_value_path_decodes_it() {
        let id = "0190a8a0-0000-7000-8000-000000000001";
        let placed_v2 = json!({"order_id": id, "customer_id": "c1",
            "lines": [{"sku": "A-1", "quantity": 2, "unit_price": {"minor": 150, "currency": "EUR"}}],
            "total": {"minor": 300, "currency": "EUR"}, "reservation_expires_at": "2026-01-01T00:00:00Z"});
        let placed_v1 = json!({"order_id": id, "customer_id": "c1",
            "lines": [{"sku": "A-1", "quantity": 2, "unit_price_minor": 150}], "total_minor": 300,
            "reservation_expires_at": "2026-01-01T00:00:00Z"});
        for s in [
            stored("OrderPlaced", 2, placed_v2),
            stored("OrderPlaced", 1, placed_v1),
            stored("OrderShipped", 1, json!({"order_id": id})),
            stored(
                "OrderPaid",
                1,
                json!({"order_id": id, "payment_reference": "p\"1\\", "amount": {"minor": 300, "currency": "EUR"}}),
            ),
        ] {
            let fast: OrderEvent = decode_stored(&s).unwrap();
            assert_eq!(fast, via_value(&s).unwrap(), "{}", s.payload_json);
        }
        // What the value path refuses, this refuses too.
        for s in [
            stored("OrderTeleported", 1, json!({"order_id": id})),
            stored("OrderShipped", 1, json!({"order_id": id, "extra": 1})),
            stored("OrderShipped", 1, json!({"order_id": id, "type": "OrderPaid"})),
            stored("OrderShipped", 7, json!({"order_id": id})),
        ] {
            assert_eq!(
                decode_stored::<OrderEvent>(&s).is_err(),
                via_value(&s).is_err(),
                "{} v{}: {}",
                s.envelope.event_type,
                s.envelope.schema_version,
                s.payload_json
            );
        }
        let mut wrong = stored("OrderShipped", 1, json!({"order_id": id}));
        wrong.envelope.stream_type = StreamType::Inventory;
        assert!(decode_stored::<OrderEvent>(&wrong).is_err());
    }
}
