//! Reads of the log backwards, for clients that page from the newest event down (the stream
//! API's backwards reads of `$all`).
//!
//! Same rule as every read by position ([`crate::position`]): nothing above a
//! [`crate::safe_position`] is read, so a page never shows an event whose neighbours below it
//! can still appear, and paging down from the safe position misses nothing.

use crate::position::StoreError;
use sqlx::PgConnection;
use surge_events::{EventEnvelope, ENVELOPE_COLUMNS};

/// Events at positions below `before` and at or below `up_to` (a [`crate::safe_position`]),
/// newest first, at most `limit` of them.
pub async fn read_all_backwards(
    conn: &mut PgConnection,
    before: i64,
    up_to: i64,
    limit: i64,
) -> Result<Vec<EventEnvelope>, StoreError> {
    let sql = format!(
        "SELECT {ENVELOPE_COLUMNS} FROM events WHERE position < $1 AND position <= $2 \
         ORDER BY position DESC LIMIT $3"
    );
    let rows = sqlx::query(&sql)
        .bind(before)
        .bind(up_to)
        .bind(limit)
        .fetch_all(conn)
        .await?;
    Ok(rows.iter().map(EventEnvelope::from_row).collect::<Result<_, _>>()?)
}
