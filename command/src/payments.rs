//! Payments: the gateway behind a trait, a simulated gateway for local runs and tests, and the
//! worker that settles submitted payments.
//!
//! `POST /v1/orders/{id}/payment` only records `PaymentSubmitted` and a `pending_payments`
//! row (one transaction). The worker claims due rows with a lease (`FOR UPDATE SKIP LOCKED`,
//! so two workers never take the same one), charges through the gateway with a timeout and
//! the order id as the gateway's idempotency key (a retried charge never charges twice), and
//! settles: `OrderPaid` + `StockCommitted` per line, or `PaymentFailed` + the stock released.
//!
//! Only a definite answer settles a payment. Before each charge request the row counts it
//! (`charges`), so whoever claims the row next knows a charge may have gone through: a timeout,
//! a transport error, a crash, or a settlement that could not be written all leave the outcome
//! unknown, the row and the order's hold in place (the expiry worker skips orders with a
//! pending payment), and the next claim *reconciles*: it asks the gateway for the status of
//! the charge under the same key, with backoff, until it answers. "Charged" settles as paid;
//! "not charged" charges again under the same key while attempts remain (the gateway dedupes,
//! so this is always safe) and fails the payment only after the last one. A captured charge
//! the order can no longer take (its stock gone, or the order cancelled or failed meanwhile)
//! is refunded through the gateway and recorded as `PaymentRefunded`, never dropped.

use crate::answers::CommandError;
use crate::commands::Commands;
use crate::domain::payment::{Settled, Settlement};
use async_trait::async_trait;
use chrono::Utc;
use sqlx::PgPool;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;
use surge_events::{EventMetadata, Money, OrderId};
use surge_runtime::breaker::Breaker;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    Approved { reference: String },
    Declined { reason: String },
}

/// What the gateway knows of the charge made under an order's idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeStatus {
    /// The charge was captured.
    Charged { reference: String },
    /// Nothing was charged under this key, and nothing will be: a charge request with the key
    /// arriving later is refused (a gateway that cannot promise this must answer `Unknown`).
    NotCharged,
    /// The gateway cannot tell yet (a request with the key is still being processed).
    Unknown,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("payment gateway timed out")]
    Timeout,
    #[error("payment gateway unavailable: {0}")]
    Unavailable(String),
}

/// A payment service provider, keyed by order: the order id is the idempotency key of its
/// charge, so `charge` is idempotent per `order_id` and `charge_status` asks about that charge.
#[async_trait]
pub trait PaymentGateway: Send + Sync + 'static {
    async fn charge(&self, order_id: OrderId, amount: &Money, token: &str) -> Result<ChargeOutcome, GatewayError>;

    /// The state of the charge made (or not) under `order_id`'s idempotency key.
    async fn charge_status(&self, order_id: OrderId) -> Result<ChargeStatus, GatewayError>;

    /// Gives back a captured charge. Idempotent per `order_id`.
    async fn refund(&self, order_id: OrderId, reference: &str, amount: &Money) -> Result<(), GatewayError>;
}

/// What the simulated gateway remembers of one order's charge.
#[derive(Debug, Default)]
struct SimCharge {
    attempts: u32,
    outcome: Option<ChargeOutcome>,
    /// Charge requests being processed right now: the status is unknown while there are any.
    in_flight: u32,
    status_queries: u32,
    refunded: Option<String>,
}

/// The simulated gateway's memory of charges: the latest [`Ledger::CAPACITY`] orders (a real
/// gateway keeps them longer; this one lives inside the command API process).
#[derive(Debug, Default)]
struct Ledger {
    charges: HashMap<OrderId, SimCharge>,
    /// Orders in the order they were first seen: the oldest is forgotten first.
    arrivals: VecDeque<OrderId>,
}

impl Ledger {
    const CAPACITY: usize = 100_000;

    fn get(&self, order_id: &OrderId) -> Option<&SimCharge> {
        self.charges.get(order_id)
    }

    fn get_mut(&mut self, order_id: &OrderId) -> Option<&mut SimCharge> {
        self.charges.get_mut(order_id)
    }

    /// The order's charge, remembered from now on (forgetting the oldest settled ones).
    fn charge(&mut self, order_id: OrderId) -> &mut SimCharge {
        if !self.charges.contains_key(&order_id) {
            let mut kept = 0;
            while self.charges.len() >= Self::CAPACITY && kept < self.arrivals.len() {
                let Some(oldest) = self.arrivals.pop_front() else { break };
                if self.charges.get(&oldest).is_some_and(|c| c.in_flight > 0) {
                    // Being processed: kept, and looked at again after the others.
                    self.arrivals.push_back(oldest);
                    kept += 1;
                } else {
                    self.charges.remove(&oldest);
                }
            }
            self.arrivals.push_back(order_id);
        }
        self.charges.entry(order_id).or_default()
    }
}

type SimLedger = Mutex<Ledger>;

/// Counts a charge request as being processed until it is dropped (answered or abandoned).
struct InFlight<'a> {
    ledger: &'a SimLedger,
    order_id: OrderId,
}

impl<'a> InFlight<'a> {
    fn enter(ledger: &'a SimLedger, order_id: OrderId) -> Self {
        if let Ok(mut l) = ledger.lock() {
            l.charge(order_id).in_flight += 1;
        }
        InFlight { ledger, order_id }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Ok(mut l) = self.ledger.lock() {
            if let Some(c) = l.get_mut(&self.order_id) {
                c.in_flight = c.in_flight.saturating_sub(1);
            }
        }
    }
}

/// A stand-in gateway with the behaviours tests need, chosen by token:
/// `tok_decline…` is declined; `tok_timeout…` never charges and never answers (its status is
/// "not charged" once the request is abandoned); `tok_lostreply…` charges and then loses the
/// reply (its status is "charged"); `tok_flaky…` is unavailable on its first attempt; anything
/// else is approved. Charges are remembered per order, so a repeated charge returns the first
/// outcome.
pub struct SimulatedGateway {
    latency: Duration,
    seen: SimLedger,
}

impl SimulatedGateway {
    pub fn new(latency: Duration) -> Self {
        SimulatedGateway {
            latency,
            seen: Mutex::new(Ledger::default()),
        }
    }

    /// How many times the gateway was asked to charge `order_id`.
    pub fn attempts(&self, order_id: OrderId) -> u32 {
        self.seen
            .lock()
            .map(|s| s.get(&order_id).map_or(0, |e| e.attempts))
            .unwrap_or(0)
    }

    /// How many times the gateway was asked for the status of `order_id`'s charge.
    pub fn status_queries(&self, order_id: OrderId) -> u32 {
        self.seen
            .lock()
            .map(|s| s.get(&order_id).map_or(0, |e| e.status_queries))
            .unwrap_or(0)
    }

    /// The reference of `order_id`'s captured charge, if there is one.
    pub fn captured(&self, order_id: OrderId) -> Option<String> {
        self.seen.lock().ok().and_then(|s| match s.get(&order_id)?.outcome {
            Some(ChargeOutcome::Approved { ref reference }) => Some(reference.clone()),
            _ => None,
        })
    }

    /// The reference of `order_id`'s refunded charge, if it was refunded.
    pub fn refunded(&self, order_id: OrderId) -> Option<String> {
        self.seen.lock().ok().and_then(|s| s.get(&order_id)?.refunded.clone())
    }
}

fn poisoned<T>(_: T) -> GatewayError {
    GatewayError::Unavailable("poisoned".into())
}

#[async_trait]
impl PaymentGateway for SimulatedGateway {
    async fn charge(&self, order_id: OrderId, _amount: &Money, token: &str) -> Result<ChargeOutcome, GatewayError> {
        let lose_reply = token.starts_with("tok_lostreply");
        let (attempt, earlier) = {
            let mut seen = self.seen.lock().map_err(poisoned)?;
            let e = seen.charge(order_id);
            e.attempts += 1;
            (e.attempts, e.outcome.clone())
        };
        if let Some(outcome) = earlier {
            if lose_reply {
                return Err(GatewayError::Unavailable("connection reset before the reply".into()));
            }
            return Ok(outcome);
        }
        let _in_flight = InFlight::enter(&self.seen, order_id);
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
        self.seen.lock().map_err(poisoned)?.charge(order_id).outcome = Some(outcome.clone());
        if lose_reply {
            return Err(GatewayError::Unavailable("connection reset before the reply".into()));
        }
        Ok(outcome)
    }

    async fn charge_status(&self, order_id: OrderId) -> Result<ChargeStatus, GatewayError> {
        tokio::time::sleep(self.latency).await;
        let mut seen = self.seen.lock().map_err(poisoned)?;
        let charge = seen.charge(order_id);
        charge.status_queries += 1;
        Ok(match charge {
            c if c.in_flight > 0 => ChargeStatus::Unknown,
            SimCharge {
                outcome: Some(ChargeOutcome::Approved { reference }),
                ..
            } => ChargeStatus::Charged {
                reference: reference.clone(),
            },
            _ => ChargeStatus::NotCharged,
        })
    }

    async fn refund(&self, order_id: OrderId, reference: &str, _amount: &Money) -> Result<(), GatewayError> {
        tokio::time::sleep(self.latency).await;
        let mut seen = self.seen.lock().map_err(poisoned)?;
        match seen.get_mut(&order_id) {
            Some(c) if matches!(&c.outcome, Some(ChargeOutcome::Approved { reference: r }) if r == reference) => {
                c.refunded = Some(reference.to_string());
                Ok(())
            }
            _ => Err(GatewayError::Unavailable(format!(
                "no captured charge {reference} to refund"
            ))),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct PaymentWorkerSettings {
    pub gateway_timeout: Duration,
    /// Charge requests sent per payment before a "not charged" status fails it.
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
    /// Charge requests sent so far: when any was, its outcome must be reconciled first.
    charges: i32,
}

async fn claim_due(pool: &PgPool, lease: Duration, limit: i64) -> Result<Vec<Due>, sqlx::Error> {
    let rows: Vec<(uuid::Uuid, String, i32, i32)> = sqlx::query_as(
        "UPDATE pending_payments p SET next_attempt_at = now() + make_interval(secs => $1), attempts = p.attempts + 1 \
         WHERE order_id IN (SELECT order_id FROM pending_payments WHERE next_attempt_at <= now() \
                            ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
         RETURNING order_id, payment_token, attempts, charges",
    )
    .bind(lease.as_secs_f64())
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(order_id, token, attempts, charges)| Due {
            order_id,
            token,
            attempts,
            charges,
        })
        .collect())
}

impl<G: PaymentGateway> PaymentWorker<G> {
    /// Settles what is due until `stop` is cancelled.
    pub async fn run(self, stop: CancellationToken) {
        // Counters start at zero, so dashboards show "none" rather than "no data".
        for outcome in ["charged", "not_charged"] {
            metrics::counter!("surge_payment_reconciliations_total", "outcome" => outcome).increment(0);
        }
        metrics::counter!("surge_refunds_total").increment(0);
        let mut reported = Instant::now();
        loop {
            match self.settle_due().await {
                Ok(n) if n > 0 => continue,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "payment worker round failed"),
            }
            // Rounds that settle something refresh the gauge; an idle worker now and then,
            // since other workers' rows count too.
            if reported.elapsed() >= Duration::from_secs(5) {
                reported = Instant::now();
                self.report_awaiting_reconciliation().await;
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
        if n > 0 {
            self.report_awaiting_reconciliation().await;
        }
        Ok(n)
    }

    /// Publishes how many payments wait for their outcome to be reconciled (every worker's).
    /// A failure only leaves the gauge as it was: the round's work is done.
    async fn report_awaiting_reconciliation(&self) {
        let counted: Result<i64, sqlx::Error> =
            sqlx::query_scalar("SELECT count(*) FROM pending_payments WHERE outcome_unknown_since IS NOT NULL")
                .fetch_one(self.commands.store().pool())
                .await;
        match counted {
            Ok(n) => metrics::gauge!("surge_payments_awaiting_reconciliation").set(n as f64),
            Err(e) => tracing::warn!(error = %e, "counting payments awaiting reconciliation failed"),
        }
    }

    #[tracing::instrument(skip_all, fields(order_id = %due.order_id, attempt = due.attempts, charges = due.charges))]
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
        if due.charges > 0 {
            let status = self.gateway_call(self.gateway.charge_status(order_id)).await;
            let reconciled = |outcome: &'static str| {
                metrics::counter!("surge_payment_reconciliations_total", "outcome" => outcome).increment(1);
                tracing::info!(outcome, "payment reconciled with the gateway");
            };
            match status {
                Ok(ChargeStatus::Charged { reference }) => {
                    reconciled("charged");
                    return self.settle(&due, &total, Settlement::Paid { reference }, &meta).await;
                }
                Ok(ChargeStatus::NotCharged) if due.charges >= self.settings.max_attempts => {
                    reconciled("not_charged");
                    let reason = format!("not charged after {} attempts", due.charges);
                    return self.settle(&due, &total, Settlement::Failed { reason }, &meta).await;
                }
                // Nothing went through: charging again under the same key is safe.
                Ok(ChargeStatus::NotCharged) => reconciled("not_charged"),
                Ok(ChargeStatus::Unknown) => {
                    return self
                        .await_reconciliation(&due, "the gateway does not know the charge's outcome yet")
                        .await
                }
                Err(e) => return self.await_reconciliation(&due, &e.to_string()).await,
            }
        }
        // Counted before it is sent: from here on the charge may go through whatever happens.
        sqlx::query("UPDATE pending_payments SET charges = charges + 1 WHERE order_id = $1")
            .bind(due.order_id)
            .execute(self.commands.store().pool())
            .await?;
        let settlement = match self
            .gateway_call(self.gateway.charge(order_id, &total, &due.token))
            .await
        {
            Ok(ChargeOutcome::Approved { reference }) => Settlement::Paid { reference },
            Ok(ChargeOutcome::Declined { reason }) => Settlement::Failed { reason },
            Err(e) => return self.await_reconciliation(&due, &e.to_string()).await,
        };
        self.settle(&due, &total, settlement, &meta).await
    }

    /// Calls the gateway with the timeout, and tells the breaker how it went.
    async fn gateway_call<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, GatewayError>>,
    ) -> Result<T, GatewayError> {
        let result = tokio::time::timeout(self.settings.gateway_timeout, call)
            .await
            .unwrap_or(Err(GatewayError::Timeout));
        match &result {
            Ok(_) => self.breaker.succeeded(),
            Err(_) => self.breaker.failed(),
        }
        result
    }

    /// Records a definite outcome; a captured charge the order can no longer take is refunded.
    async fn settle(
        &self,
        due: &Due,
        total: &Money,
        settlement: Settlement,
        meta: &EventMetadata,
    ) -> Result<(), CommandError> {
        let order_id = OrderId(due.order_id);
        let Settled::MustRefund { reference, reason } =
            self.commands.settle_payment(order_id, settlement, meta).await?
        else {
            return Ok(());
        };
        tracing::warn!(%reason, "a captured charge cannot be honoured; refunding it");
        match self
            .gateway_call(self.gateway.refund(order_id, &reference, total))
            .await
        {
            Ok(()) => {
                self.commands.refund_payment(order_id, reference, reason, meta).await?;
                metrics::counter!("surge_refunds_total").increment(1);
                Ok(())
            }
            // The charge stays captured: the next claim finds it again and refunds it then.
            Err(e) => self.await_reconciliation(due, &e.to_string()).await,
        }
    }

    /// The outcome is not known: keep the row (and so the hold) and ask again after a backoff
    /// no shorter than the gateway timeout, so a request sent late in the last call's window
    /// has had time to land before the status is trusted.
    async fn await_reconciliation(&self, due: &Due, why: &str) -> Result<(), CommandError> {
        let backoff =
            Duration::from_millis(200 * 2u64.pow(due.attempts.clamp(0, 8) as u32)).max(self.settings.gateway_timeout);
        tracing::warn!(error = why, ?backoff, "payment outcome unknown; reconciling later");
        sqlx::query(
            "UPDATE pending_payments SET next_attempt_at = $2, \
             outcome_unknown_since = coalesce(outcome_unknown_since, now()) WHERE order_id = $1",
        )
        .bind(due.order_id)
        .bind(Utc::now() + chrono::Duration::from_std(backoff).unwrap_or_default())
        .execute(self.commands.store().pool())
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_simulated_gateway_forgets_the_oldest_settled_charges_first() {
        let mut ledger = Ledger::default();
        let busy = OrderId::new();
        ledger.charge(busy).in_flight = 1;
        let first_settled = OrderId::new();
        ledger.charge(first_settled).attempts = 1;
        for _ in 0..Ledger::CAPACITY {
            ledger.charge(OrderId::new());
        }
        assert_eq!(ledger.charges.len(), Ledger::CAPACITY, "bounded");
        assert!(ledger.get(&busy).is_some(), "a charge being processed is kept");
        assert!(
            ledger.get(&first_settled).is_none(),
            "the oldest settled one is forgotten"
        );
    }
}
