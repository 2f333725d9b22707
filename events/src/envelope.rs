//! The envelope around one payload, and the one place where stored JSON becomes a typed event.

use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use uuid::Uuid;

use crate::StreamId;

/// The kinds of stream Surge keeps; each has its own payload type and Kafka topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamType {
    Order,
    Inventory,
}

impl StreamType {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamType::Order => "order",
            StreamType::Inventory => "inventory",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "order" => Some(StreamType::Order),
            "inventory" => Some(StreamType::Inventory),
            _ => None,
        }
    }
}

/// A payload type of one stream type. Its serde form is internally tagged by `type`;
/// the tag is kept out of the stored JSON and lives in the envelope's `event_type`.
pub trait Payload: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    const STREAM_TYPE: StreamType;
    fn event_type(&self) -> &'static str;
    /// The schema version this code writes for the event's type.
    fn schema_version(&self) -> i32 {
        1
    }
    /// The stored JSON of the payload: its fields without the `type` tag.
    fn to_stored_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        if let Some(o) = v.as_object_mut() {
            o.remove("type");
        }
        v
    }
}

/// Who caused an event and in answer to what: carried from the HTTP request into the store,
/// the Kafka headers and the projectors' logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMetadata {
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
    pub actor: String,
}

impl EventMetadata {
    pub fn new(actor: impl Into<String>) -> Self {
        EventMetadata {
            correlation_id: Uuid::now_v7(),
            causation_id: None,
            actor: actor.into(),
        }
    }
}

/// One stored event as it travels: written by the event store, published on Kafka as JSON,
/// read by projectors and exporters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventEnvelope {
    pub event_id: Uuid,
    /// Global position in the store: strictly increasing in commit order per stream.
    pub position: i64,
    pub stream_id: StreamId,
    pub stream_type: StreamType,
    /// 1 for a stream's first event, then +1 per event.
    pub version: i64,
    pub event_type: String,
    pub schema_version: i32,
    pub occurred_at: DateTime<Utc>,
    #[serde(flatten)]
    pub metadata: EventMetadata,
    pub payload: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("event of stream type {found:?} where {expected:?} was expected")]
    WrongStreamType { expected: StreamType, found: StreamType },
    #[error("unknown event type {event_type} (schema version {schema_version})")]
    UnknownType { event_type: String, schema_version: i32 },
    #[error("payload of {event_type} v{schema_version} does not decode: {source}")]
    Payload {
        event_type: String,
        schema_version: i32,
        source: serde_json::Error,
    },
    #[error("envelope does not decode: {0}")]
    Envelope(#[from] serde_json::Error),
}

/// The columns of the `events` table that make an envelope, in the order [`EventEnvelope::from_row`] reads.
pub const ENVELOPE_COLUMNS: &str = "position, event_id, stream_id, stream_type, version, event_type, \
     schema_version, payload, correlation_id, causation_id, actor, occurred_at";

#[cfg(feature = "sqlx")]
impl EventEnvelope {
    /// An envelope from a row of the `events` table with [`ENVELOPE_COLUMNS`].
    pub fn from_row(row: &sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        use sqlx::Row;
        let stream_type: String = row.try_get("stream_type")?;
        let stream_type = StreamType::parse(&stream_type).ok_or_else(|| sqlx::Error::ColumnDecode {
            index: "stream_type".into(),
            source: format!("unknown stream type {stream_type}").into(),
        })?;
        Ok(EventEnvelope {
            event_id: row.try_get("event_id")?,
            position: row.try_get("position")?,
            stream_id: StreamId(row.try_get("stream_id")?),
            stream_type,
            version: row.try_get("version")?,
            event_type: row.try_get("event_type")?,
            schema_version: row.try_get("schema_version")?,
            occurred_at: row.try_get("occurred_at")?,
            metadata: EventMetadata {
                correlation_id: row.try_get("correlation_id")?,
                causation_id: row.try_get("causation_id")?,
                actor: row.try_get("actor")?,
            },
            payload: row.try_get("payload")?,
        })
    }
}

impl EventEnvelope {
    pub fn from_json(bytes: &[u8]) -> Result<Self, DecodeError> {
        Ok(serde_json::from_slice(bytes)?)
    }
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode;
    use crate::inventory::{InventoryEvent, StockRestocked};
    use crate::order::OrderEvent;
    use crate::Sku;

    fn envelope_of<P: Payload>(p: &P) -> EventEnvelope {
        EventEnvelope {
            event_id: Uuid::now_v7(),
            position: 7,
            stream_id: StreamId("inventory-A".into()),
            stream_type: P::STREAM_TYPE,
            version: 1,
            event_type: p.event_type().into(),
            schema_version: p.schema_version(),
            occurred_at: Utc::now(),
            metadata: EventMetadata::new("test"),
            payload: p.to_stored_json(),
        }
    }

    #[test]
    fn round_trips_through_stored_json_and_wire_json() {
        let e = InventoryEvent::StockRestocked(StockRestocked {
            sku: Sku::parse("A").unwrap(),
            quantity: 5,
        });
        let env = envelope_of(&e);
        assert!(env.payload.get("type").is_none(), "tag lives in the envelope");
        let wire = EventEnvelope::from_json(&env.to_json()).unwrap();
        assert_eq!(wire, env);
        assert_eq!(decode::<InventoryEvent>(&wire).unwrap(), e);
    }

    #[test]
    fn wrong_stream_type_and_unknown_type_are_errors_not_panics() {
        let e = InventoryEvent::StockRestocked(StockRestocked {
            sku: Sku::parse("A").unwrap(),
            quantity: 5,
        });
        let mut env = envelope_of(&e);
        assert!(matches!(
            decode::<OrderEvent>(&env),
            Err(DecodeError::WrongStreamType { .. })
        ));
        env.event_type = "StockTeleported".into();
        assert!(matches!(
            decode::<InventoryEvent>(&env),
            Err(DecodeError::UnknownType { .. })
        ));
        env.event_type = "StockRestocked".into();
        env.payload = serde_json::json!({"sku": "A"});
        assert!(matches!(
            decode::<InventoryEvent>(&env),
            Err(DecodeError::Payload { .. })
        ));
        assert!(EventEnvelope::from_json(b"not json").is_err());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::{decode, InventoryEvent, OrderEvent};
    use proptest::prelude::*;

    fn any_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            "[a-zA-Z0-9 _-]{0,12}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map(
                    prop_oneof!["sku", "order_id", "quantity", "lines", "total", "price", "x"],
                    inner,
                    0..5
                )
                .prop_map(|m| serde_json::Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
            ]
        })
    }

    proptest! {
        /// Whatever a producer (or an attacker) put in a payload, decoding and upcasting answer
        /// with a value or an error, never a panic.
        #[test]
        fn decoding_arbitrary_payloads_never_panics(
            payload in any_json(),
            event_type in prop_oneof!["OrderPlaced", "StockReserved", "ItemAdded", "OrderPaid", "Nope"],
            schema_version in -1i32..4,
            order in any::<bool>(),
        ) {
            let env = EventEnvelope {
                event_id: uuid::Uuid::nil(),
                position: 1,
                stream_id: StreamId("s".into()),
                stream_type: if order { StreamType::Order } else { StreamType::Inventory },
                version: 1,
                event_type: event_type.to_string(),
                schema_version,
                occurred_at: Utc::now(),
                metadata: EventMetadata::new("p"),
                payload,
            };
            let _ = decode::<OrderEvent>(&env);
            let _ = decode::<InventoryEvent>(&env);
            let _ = EventEnvelope::from_json(&env.to_json());
        }

        /// Arbitrary bytes on the wire are an error, never a panic.
        #[test]
        fn arbitrary_wire_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = EventEnvelope::from_json(&bytes);
        }
    }
}
