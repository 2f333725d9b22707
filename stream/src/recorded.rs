//! A Surge event as the protocol's `RecordedEvent`: the wire contract of every event served.
//!
//! - id: Surge's event id (in the form the client asked for);
//! - stream revision: version − 1 (KurrentDB counts from 0, Surge's versions from 1);
//! - commit and prepare position: the store position;
//! - system metadata: `type` (the event type), `content-type: application/json`, `created`
//!   (occurred at, in 100 ns ticks since the Unix epoch, as KurrentDB sends it);
//! - data: the stored JSON payload; custom metadata: JSON with Surge's envelope fields
//!   (`correlation_id`, `causation_id`, `schema_version`, `actor`, `occurred_at`, `stream_type`) and
//!   KurrentDB's conventional `$correlationId` / `$causationId`.

use crate::proto::shared::{self, StreamIdentifier};
use crate::proto::streams::read_resp::{self, read_event, ReadEvent};
use crate::proto::streams::ReadResp;
use std::collections::HashMap;
use surge_events::EventEnvelope;
use uuid::Uuid;

/// How the client asked for event ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UuidForm {
    Structured,
    String,
}

pub fn uuid(id: Uuid, form: UuidForm) -> shared::Uuid {
    let value = match form {
        UuidForm::String => shared::uuid::Value::String(id.to_string()),
        UuidForm::Structured => {
            let bits = id.as_u128();
            shared::uuid::Value::Structured(shared::uuid::Structured {
                most_significant_bits: (bits >> 64) as u64 as i64,
                least_significant_bits: bits as u64 as i64,
            })
        }
    };
    shared::Uuid { value: Some(value) }
}

/// The stream revision of an event of Surge's `version` (1-based).
pub fn revision(version: i64) -> u64 {
    (version - 1).max(0) as u64
}

/// The `$all` position of a store position.
pub fn position(position: i64) -> u64 {
    position.max(0) as u64
}

pub fn recorded(e: &EventEnvelope, form: UuidForm) -> read_event::RecordedEvent {
    let created_ticks = e.occurred_at.timestamp_micros().max(0) as u64 * 10;
    let metadata = HashMap::from([
        ("type".to_string(), e.event_type.clone()),
        ("content-type".to_string(), "application/json".to_string()),
        ("created".to_string(), created_ticks.to_string()),
    ]);
    let custom = serde_json::json!({
        "correlation_id": e.metadata.correlation_id,
        "causation_id": e.metadata.causation_id,
        "schema_version": e.schema_version,
        "actor": e.metadata.actor,
        "occurred_at": e.occurred_at,
        "stream_type": e.stream_type.as_str(),
        "$correlationId": e.metadata.correlation_id,
        "$causationId": e.metadata.causation_id,
    });
    read_event::RecordedEvent {
        id: Some(uuid(e.event_id, form)),
        stream_identifier: Some(StreamIdentifier {
            stream_name: e.stream_id.as_str().as_bytes().to_vec(),
        }),
        stream_revision: revision(e.version),
        prepare_position: position(e.position),
        commit_position: position(e.position),
        metadata,
        custom_metadata: serde_json::to_vec(&custom).unwrap_or_default(),
        data: serde_json::to_vec(&e.payload).unwrap_or_default(),
    }
}

/// The response that carries one event.
pub fn event(e: &EventEnvelope, form: UuidForm) -> ReadResp {
    ReadResp {
        content: Some(read_resp::Content::Event(ReadEvent {
            event: Some(recorded(e, form)),
            link: None,
            position: Some(read_event::Position::CommitPosition(position(e.position))),
        })),
    }
}

pub fn checkpoint(at: i64) -> ReadResp {
    ReadResp {
        content: Some(read_resp::Content::Checkpoint(read_resp::Checkpoint {
            commit_position: position(at),
            prepare_position: position(at),
        })),
    }
}

pub fn confirmation(subscription_id: String) -> ReadResp {
    ReadResp {
        content: Some(read_resp::Content::Confirmation(read_resp::SubscriptionConfirmation {
            subscription_id,
        })),
    }
}

pub fn caught_up() -> ReadResp {
    ReadResp {
        content: Some(read_resp::Content::CaughtUp(read_resp::CaughtUp {})),
    }
}

pub fn stream_not_found(stream: &str) -> ReadResp {
    ReadResp {
        content: Some(read_resp::Content::StreamNotFound(read_resp::StreamNotFound {
            stream_identifier: Some(StreamIdentifier {
                stream_name: stream.as_bytes().to_vec(),
            }),
        })),
    }
}

pub fn first_stream_position(revision: u64) -> ReadResp {
    ReadResp {
        content: Some(read_resp::Content::FirstStreamPosition(revision)),
    }
}

pub fn last_stream_position(revision: u64) -> ReadResp {
    ReadResp {
        content: Some(read_resp::Content::LastStreamPosition(revision)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use surge_events::{EventMetadata, StreamId, StreamType};

    fn envelope() -> EventEnvelope {
        EventEnvelope {
            event_id: Uuid::parse_str("0190f3a4-1111-7222-8333-444455556666").unwrap(),
            position: 42,
            stream_id: StreamId("order-1".into()),
            stream_type: StreamType::Order,
            version: 3,
            event_type: "OrderPaid".into(),
            schema_version: 1,
            occurred_at: chrono::Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap(),
            metadata: EventMetadata {
                correlation_id: Uuid::nil(),
                causation_id: None,
                actor: "service:shop".into(),
            },
            payload: serde_json::json!({"order_id": "1"}),
        }
    }

    #[test]
    fn revision_is_version_minus_one_and_positions_are_the_store_position() {
        let r = recorded(&envelope(), UuidForm::String);
        assert_eq!((r.stream_revision, r.commit_position, r.prepare_position), (2, 42, 42));
        assert_eq!(r.metadata["type"], "OrderPaid");
        assert_eq!(r.metadata["content-type"], "application/json");
        assert_eq!(r.metadata["created"], (1_767_323_045u64 * 10_000_000).to_string());
        let custom: serde_json::Value = serde_json::from_slice(&r.custom_metadata).unwrap();
        assert_eq!(custom["actor"], "service:shop");
        assert_eq!(custom["schema_version"], 1);
        assert_eq!(custom["correlation_id"], Uuid::nil().to_string());
        let data: serde_json::Value = serde_json::from_slice(&r.data).unwrap();
        assert_eq!(data["order_id"], "1");
    }

    #[test]
    fn structured_ids_are_two_big_endian_halves() {
        let id = envelope().event_id;
        let Some(shared::uuid::Value::Structured(s)) = uuid(id, UuidForm::Structured).value else {
            panic!("structured asked for");
        };
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&s.most_significant_bits.to_be_bytes());
        bytes[8..].copy_from_slice(&s.least_significant_bits.to_be_bytes());
        assert_eq!(Uuid::from_bytes(bytes), id);
    }
}
