//! Payments: the gateway behind a trait, a simulated gateway for local runs and tests, and the
//! worker that settles submitted payments.
//!
//! `POST /v1/orders/{id}/payment` only records `PaymentSubmitted` and a `pending_payments`
//! row (one transaction). The worker claims due rows with a lease (`FOR UPDATE SKIP LOCKED`,
//! so two workers never take the same one), charges through the gateway with a timeout and
//! the order id as the gateway's idempotency key (a retried charge never charges twice), and
//! settles: `OrderPaid` + `StockCommitted` per line, or `PaymentFailed` + the stock released.
//! A timeout or an unavailable gateway is retried with backoff, a bounded number of times.

use crate::breaker::Breaker;
use crate::commands::{CommandError, Commands};
use async_trait::async_trait;
use chrono::Utc;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use surge_events::{EventMetadata, Money, OrderId};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    Approved { reference: String },
    Declined { reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("payment gateway timed out")]
    Timeout,
    #[error("payment gateway unavailable: {0}")]
    Unavailable(String),
}

/// A payment service provider. `charge` must be idempotent per `order_id`.
#[async_trait]
pub trait PaymentGateway: Send + Sync + 'static {
    async fn charge(&self, order_id: OrderId, amount: &Money, token: &str) -> Result<ChargeOutcome, GatewayError>;
}

/// A stand-in gateway with the behaviours tests need, chosen by token:
/// `tok_decline…` is declined, `tok_timeout…` never answers in time, `tok_flaky…` is
/// unavailable on its first attempt; anything else is approved. Charges are remembered per
/// order, so a repeated charge returns the first outcome.
pub struct SimulatedGateway {
    latency: Duration,
    seen: Mutex<HashMap<OrderId, (u32, Option<ChargeOutcome>)>>,
}

impl SimulatedGateway {
    pub fn new(latency: Duration) -> Self {
        SimulatedGateway {
            latency,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// How many times the gateway was asked to charge `order_id`.
    pub fn attempts(&self, order_id: OrderId) -> u32 {
        self.seen
            .lock()
            .map(|s| s.get(&order_id).map_or(0, |e| e.0))
            .unwrap_or(0)
    }
}

#[async_trait]
impl PaymentGateway for SimulatedGateway {
    async fn charge(&self, order_id: OrderId, _amount: &Money, token: &str) -> Result<ChargeOutcome, GatewayError> {
        let (attempt, earlier) = {
            let mut seen = self
                .seen
                .lock()
                .map_err(|_| GatewayError::Unavailable("poisoned".into()))?;
            let e = seen.entry(order_id).or_insert((0, None));
            e.0 += 1;
            (e.0, e.1.clone())
        };
        if let Some(outcome) = earlier {
            return Ok(outcome);
        }
        if token.starts_with("tok_timeout") {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        tokio::time::sleep(self.latency).await;
        if token.starts_with("tok_flaky") && attempt == 1 {
            return Err(GatewayError::Unavailable("simulated outage".into()));
        }
        let outcome = if token.starts_with("tok_decline") {
            ChargeOutcome::Declined {
                reason: "card declined".into(),
            }
        } else {
            ChargeOutcome::Approved {
                reference: format!("sim_{}", uuid::Uuid::now_v7().simple()),
            }
        };
        if let Ok(mut seen) = self.seen.lock() {
            if let Some(e) = seen.get_mut(&order_id) {
                e.1 = Some(outcome.clone());
            }
        }
        Ok(outcome)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct PaymentWorkerSettings {
    pub gateway_timeout: Duration,
    pub max_attempts: i32,
    pub poll_interval: Duration,
    /// How long a claimed payment stays invisible to other workers.
    pub lease: Duration,
}

impl Default for PaymentWorkerSettings {
    fn default() -> Self {
        PaymentWorkerSettings {
            gateway_timeout: Duration::from_secs(5),
            max_attempts: 5,
            poll_interval: Duration::from_millis(100),
            lease: Duration::from_secs(60),
        }
    }
}

pub struct PaymentWorker<G: PaymentGateway> {
    pub commands: Commands,
    pub gateway: std::sync::Arc<G>,
    pub settings: PaymentWorkerSettings,
    /// Opens when the gateway keeps failing: payments then wait in the queue.
    pub breaker: Breaker,
}

/// The breaker the payment worker uses: 5 failures in a row open it for 1 s, doubling to 30 s.
pub fn gateway_breaker() -> Breaker {
    Breaker::new("payment_gateway", 5, Duration::from_secs(1), Duration::from_secs(30))
}

struct Due {
    order_id: uuid::Uuid,
    token: String,
    attempts: i32,
}

async fn claim_due(pool: &PgPool, lease: Duration, limit: i64) -> Result<Vec<Due>, sqlx::Error> {
    let rows: Vec<(uuid::Uuid, String, i32)> = sqlx::query_as(
        "UPDATE pending_payments p SET next_attempt_at = now() + make_interval(secs => $1), attempts = p.attempts + 1 \
         WHERE order_id IN (SELECT order_id FROM pending_payments WHERE next_attempt_at <= now() \
                            ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
         RETURNING order_id, payment_token, attempts",
    )
    .bind(lease.as_secs_f64())
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(order_id, token, attempts)| Due {
            order_id,
            token,
            attempts,
        })
        .collect())
}

impl<G: PaymentGateway> PaymentWorker<G> {
    /// Settles what is due until `stop` is cancelled.
    pub async fn run(self, stop: CancellationToken) {
        loop {
            match self.settle_due().await {
                Ok(n) if n > 0 => continue,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "payment worker round failed"),
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(self.settings.poll_interval) => {}
            }
        }
    }

    /// One round: claim due payments and settle each. Returns how many were handled.
    pub async fn settle_due(&self) -> Result<usize, CommandError> {
        if !self.breaker.permits() {
            return Ok(0);
        }
        let due = claim_due(self.commands.store().pool(), self.settings.lease, 20).await?;
        let n = due.len();
        let rounds = due.into_iter().map(|d| self.settle_one(d));
        for r in futures::future::join_all(rounds).await {
            if let Err(e) = r {
                tracing::warn!(error = %e, "settling a payment failed; it will be retried");
            }
        }
        Ok(n)
    }

    #[tracing::instrument(skip_all, fields(order_id = %due.order_id, attempt = due.attempts))]
    async fn settle_one(&self, due: Due) -> Result<(), CommandError> {
        let order_id = OrderId(due.order_id);
        let (_, order) = self.commands.order(order_id).await?;
        let Some(total) = order.total.clone() else {
            return Ok(());
        };
        let meta = EventMetadata {
            correlation_id: uuid::Uuid::now_v7(),
            causation_id: None,
            actor: "payment-worker".into(),
        };
        let charge = tokio::time::timeout(
            self.settings.gateway_timeout,
            self.gateway.charge(order_id, &total, &due.token),
        )
        .await
        .unwrap_or(Err(GatewayError::Timeout));
        match &charge {
            Ok(_) => self.breaker.succeeded(),
            Err(_) => self.breaker.failed(),
        }
        let settlement = match charge {
            Ok(ChargeOutcome::Approved { reference }) => Settlement::Paid { reference },
            Ok(ChargeOutcome::Declined { reason }) => Settlement::Failed { reason },
            Err(e) if due.attempts >= self.settings.max_attempts => Settlement::Failed {
                reason: format!("{e} after {} attempts", due.attempts),
            },
            Err(e) => {
                let backoff = Duration::from_millis(200 * 2u64.pow(due.attempts.clamp(0, 8) as u32));
                tracing::warn!(error = %e, ?backoff, "payment gateway failed; retrying later");
                sqlx::query("UPDATE pending_payments SET next_attempt_at = $2 WHERE order_id = $1")
                    .bind(due.order_id)
                    .bind(Utc::now() + chrono::Duration::from_std(backoff).unwrap_or_default())
                    .execute(self.commands.store().pool())
                    .await?;
                return Ok(());
            }
        };
        self.commands.settle_payment(order_id, settlement, &meta).await?;
        Ok(())
    }
}

/// How a submitted payment ended.
#[derive(Debug, Clone)]
pub enum Settlement {
    Paid { reference: String },
    Failed { reason: String },
}
