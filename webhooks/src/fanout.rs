//! The fan-out: follows the order events of the log from its cursor, through the store's safe
//! read ([`surge_store::Subscription`]), and queues one delivery per status change per endpoint
//! subscribed to it and owed it, moving the cursor in the same transaction. So each change is
//! queued exactly once, whatever crashes when; and checkout never waits for any of it. Whether
//! an endpoint is owed a change depends on the change's position, not on the endpoint's state
//! when the fan-out reaches it ([`tables::Subscriber::owed`]): a change committed before a
//! pause is still queued, however far behind the fan-out is.

use crate::error::WebhookError;
use crate::notification::Notification;
use crate::tables;
use sqlx::PgPool;
use std::time::Duration;
use surge_events::StreamType;
use surge_store::Subscription;
use tokio_util::sync::CancellationToken;

pub struct FanOut {
    pub pool: PgPool,
    /// Events read per transaction.
    pub batch: i64,
}

/// How long one look at an idle log waits before the fan-out checks for shutdown.
const LOOK: Duration = Duration::from_millis(500);

impl FanOut {
    /// Runs until `stop`; a failure (Postgres away) is logged and the fan-out starts again from
    /// its stored cursor a second later.
    pub async fn run(self, stop: CancellationToken) {
        while !stop.is_cancelled() {
            match self.follow(&stop).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook fan-out failed; starting again from its cursor");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.cancelled() => return,
                    }
                }
            }
        }
    }

    async fn follow(&self, stop: &CancellationToken) -> Result<(), WebhookError> {
        // The safe read needs a connection outside any transaction that has an id: its own.
        let mut reader = self.pool.acquire().await?;
        let mut stored = tables::read_cursor(&self.pool).await?;
        let mut subscription = Subscription::after(stored, Some(StreamType::Order)).batch(self.batch);
        loop {
            let events = tokio::select! {
                read = subscription.next(&mut reader, LOOK) => read?,
                _ = stop.cancelled() => return Ok(()),
            };
            if events.is_empty() {
                continue;
            }
            let mut tx = self.pool.begin().await?;
            let cursor = tables::lock_cursor(&mut tx).await?;
            if cursor != stored {
                // Another fan-out moved the cursor meanwhile: what it queued stands; go on from it.
                tracing::info!(cursor, stored, "webhook fan-out cursor moved by another process");
                tx.rollback().await?;
                stored = cursor;
                subscription = Subscription::after(stored, Some(StreamType::Order)).batch(self.batch);
                continue;
            }
            let subscribers = tables::subscribers(&mut tx).await?;
            let notifications: Vec<Notification> = events
                .iter()
                .filter_map(|env| match Notification::of(env) {
                    Ok(n) => n,
                    Err(e) => {
                        // A stored order event this code cannot read is a bug to fix, not a
                        // reason to stop telling storefronts about every other order.
                        tracing::error!(error = %e, position = env.position, "order event does not decode; not announced");
                        metrics::counter!("surge_webhook_undecodable_events_total").increment(1);
                        None
                    }
                })
                .collect();
            let queued: Vec<_> = notifications
                .iter()
                .flat_map(|n| {
                    subscribers
                        .iter()
                        .filter(move |s| s.owed(n.position) && s.event_types.contains(&n.event_type))
                        .map(move |s| (s.id, n))
                })
                .collect();
            let n = tables::queue_deliveries(&mut tx, &queued).await?;
            let to = subscription.position();
            tables::advance_cursor(&mut tx, to).await?;
            tables::forget_pauses_before(&mut tx, to).await?;
            tx.commit().await?;
            stored = to;
            metrics::counter!("surge_webhook_deliveries_queued_total").increment(n);
            metrics::gauge!("surge_webhook_fanout_position").set(to as f64);
            tracing::debug!(
                events = events.len(),
                queued = n,
                cursor = to,
                "webhook fan-out advanced"
            );
        }
    }
}
