//! Bulk reads of the log by position, for rebuilds (a replay's new generation): large pages,
//! each event's payload left as its stored JSON text so the reader decodes it once, straight
//! into its typed event, instead of through a `serde_json::Value`.
//!
//! The rule of every read by position holds ([`crate::position`]): nothing above the
//! `up_to` given (a [`crate::safe_position`]) is read, so paging on to the next safe position
//! never skips a transaction that committed late.

use crate::position::{ReadAll, StoreError};
use sqlx::{PgConnection, Row};
use surge_events::{EventEnvelope, EventMetadata, StreamId, StreamType};

/// An event as stored, its payload still JSON text.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// The envelope, with `payload` left `Null`: the payload is [`StoredEvent::payload_json`].
    pub envelope: EventEnvelope,
    /// The payload's stored JSON (without the `type` tag, which is `envelope.event_type`).
    pub payload_json: String,
}

/// Events in `(read.after, read.up_to]` of `read.stream_type` (every type when `None`), in
/// position order, at most `read.limit`, their payloads as JSON text.
pub async fn read_stored(conn: &mut PgConnection, read: &ReadAll) -> Result<Vec<StoredEvent>, StoreError> {
    let rows = sqlx::query(
        "SELECT position, event_id, stream_id, stream_type, version, event_type, schema_version, \
                payload::text, correlation_id, causation_id, actor, occurred_at \
         FROM events WHERE position > $1 AND position <= $2 \
         AND ($3::text IS NULL OR stream_type = $3) ORDER BY position LIMIT $4",
    )
    .bind(read.after)
    .bind(read.up_to)
    .bind(read.stream_type.map(|t| t.as_str()))
    .bind(read.limit)
    .fetch_all(conn)
    .await?;
    let mut events = Vec::with_capacity(rows.len());
    for row in &rows {
        let stream_type: &str = row.try_get(3)?;
        let stream_type = StreamType::parse(stream_type).ok_or_else(|| sqlx::Error::ColumnDecode {
            index: "stream_type".into(),
            source: format!("unknown stream type {stream_type}").into(),
        })?;
        events.push(StoredEvent {
            envelope: EventEnvelope {
                position: row.try_get(0)?,
                event_id: row.try_get(1)?,
                stream_id: StreamId(row.try_get(2)?),
                stream_type,
                version: row.try_get(4)?,
                event_type: row.try_get(5)?,
                schema_version: row.try_get(6)?,
                payload: serde_json::Value::Null,
                metadata: EventMetadata {
                    correlation_id: row.try_get(8)?,
                    causation_id: row.try_get(9)?,
                    actor: row.try_get(10)?,
                },
                occurred_at: row.try_get(11)?,
            },
            payload_json: row.try_get(7)?,
        });
    }
    Ok(events)
}
