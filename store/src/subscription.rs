//! Following the log: catch up from a position, then keep up with new events, through one read
//! path (so there is no switch between "history" and "live" to lose or repeat an event at).
//!
//! Every read goes up to a safe position only ([`crate::safe_position`]): an event whose
//! transaction commits late is delivered when it commits, never skipped, and the cursor never
//! moves past an event that can still appear.

use crate::position::{read_all, safe_position, ReadAll};
use crate::StoreError;
use sqlx::PgConnection;
use std::time::{Duration, Instant};
use surge_events::{EventEnvelope, StreamType};

/// A reader of the log after a position, in position order, each event once.
#[derive(Debug, Clone)]
pub struct Subscription {
    after: i64,
    /// The last safe position learned: events up to it can be read without asking again.
    up_to: i64,
    stream_type: Option<StreamType>,
    batch: i64,
    /// How long to wait between looks at an idle log.
    poll: Duration,
    /// How long one look may wait for writers in flight.
    in_flight_wait: Duration,
}

impl Subscription {
    /// Events after `after` (0: from the beginning), of `stream_type` (all when `None`).
    pub fn after(after: i64, stream_type: Option<StreamType>) -> Self {
        Subscription {
            after,
            up_to: after,
            stream_type,
            batch: 1000,
            poll: Duration::from_millis(20),
            in_flight_wait: Duration::from_secs(30),
        }
    }

    /// At most `batch` events per call.
    pub fn batch(mut self, batch: i64) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// The position of the last event delivered (or skipped as another stream type's): where a
    /// new subscription resumes.
    pub fn position(&self) -> i64 {
        self.after
    }

    /// The next events, in position order; waits up to `max_wait` for at least one (an empty
    /// batch: nothing new yet), and besides as long as the writers in flight when it looks (at
    /// most 30 s, else [`StoreError::InFlightTooLong`]). `conn` must not be inside a transaction
    /// that has an id.
    pub async fn next(
        &mut self,
        conn: &mut PgConnection,
        max_wait: Duration,
    ) -> Result<Vec<EventEnvelope>, StoreError> {
        let started = Instant::now();
        loop {
            if self.up_to <= self.after {
                self.up_to = safe_position(conn, self.in_flight_wait).await?;
            }
            if self.up_to > self.after {
                let read = ReadAll {
                    after: self.after,
                    up_to: self.up_to,
                    stream_type: self.stream_type,
                    limit: self.batch,
                };
                let events = read_all(conn, &read).await?;
                // An empty read means nothing of this type up to the safe position.
                self.after = match events.last() {
                    Some(last) if events.len() as i64 == self.batch => last.position,
                    _ => self.up_to,
                };
                if !events.is_empty() {
                    return Ok(events);
                }
            }
            if started.elapsed() >= max_wait {
                return Ok(Vec::new());
            }
            tokio::time::sleep(self.poll).await;
        }
    }
}
