//! The reservation expiry worker: unpaid orders whose hold ran out are cancelled and their
//! stock goes back on sale (`OrderCancelled` + `ReservationExpired`), exactly once.
//!
//! Due rows of `reservation_deadlines` are claimed with a lease (`FOR UPDATE SKIP LOCKED`,
//! pushed 30 s ahead) so two workers do not pick the same order; should they ever both decide
//! on it, the event store's version check lets only one cancellation commit.
//!
//! An order with a row in `pending_payments` is never claimed: its payment is being charged or
//! its outcome is unknown (the customer may have paid), so its hold stays until the payment
//! worker settles it, and settling deletes the deadline with the payment.

use crate::commands::{CommandError, Commands};
use futures::StreamExt;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a claimed deadline is hidden from other workers while this one settles it.
const CLAIM_LEASE: Duration = Duration::from_secs(30);
/// Most deadlines claimed in one round.
const CLAIM_LIMIT: i64 = 100;
/// Orders a worker settles at once (each holds a pooled connection while it does).
const CONCURRENT_EXPIRIES: usize = 4;

pub struct ExpiryWorker {
    pub commands: Commands,
    pub poll_interval: Duration,
}

impl ExpiryWorker {
    pub async fn run(self, stop: CancellationToken) {
        loop {
            match self.expire_due().await {
                Ok(n) if n > 0 => continue,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "expiry round failed"),
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(self.poll_interval) => {}
            }
        }
    }

    /// Claims due deadlines and settles each order. Returns how many were claimed.
    pub async fn expire_due(&self) -> Result<usize, CommandError> {
        let due = surge_store::deadlines::claim_due(self.commands.store().pool(), CLAIM_LEASE, CLAIM_LIMIT)
            .await
            .map_err(CommandError::from)?;
        // A few at a time: after a flash sale thousands of holds run out together, and one by
        // one they would take minutes; each order's SKUs are locked while it settles, so
        // orders of the same SKU still take turns.
        futures::stream::iter(&due)
            .for_each_concurrent(CONCURRENT_EXPIRIES, |id| async move {
                if let Err(e) = self.commands.expire_order(*id).await {
                    tracing::warn!(order_id = %id, error = %e, "expiring an order failed; it will be retried");
                }
            })
            .await;
        Ok(due.len())
    }
}
