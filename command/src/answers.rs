//! What the write side answers: an accepted order ([`OrderAccepted`]), a refused or failed
//! command ([`CommandError`]), and the OpenAPI shape of the money they carry ([`MoneyDoc`]).
//!
//! These sit below every module that produces or relays them (the application service, the
//! sequencer's lanes, the idempotency keys that replay them, the HTTP API that maps them), so
//! none of those needs to import another to name them.

use crate::domain::DomainError;
use crate::store::StoreError;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use surge_events::{Currency, Money, OrderId, Sku};
use utoipa::ToSchema;

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error("stream {stream_id} kept changing; current version {current_version}")]
    Conflict { stream_id: String, current_version: i64 },
    #[error("idempotency key was already used with a different request")]
    IdempotencyKeyReused,
    #[error("an order for {sku} would wait about {} ms in its lane ({queue_depth} queued), longer than this instance takes orders to wait; retry shortly", estimated_wait.as_millis())]
    Overloaded {
        sku: Sku,
        queue_depth: usize,
        estimated_wait: Duration,
    },
    #[error("the sequencer lane stopped before answering")]
    LaneStopped,
    #[error("the event store is unreachable or busy: {0}")]
    StoreUnavailable(String),
    /// The commit failed and whether it took could not be found out: `check` is the query
    /// API's path that shows whether it did.
    #[error("the outcome is unknown; see {check}")]
    OutcomeUnknown { check: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for CommandError {
    fn from(e: sqlx::Error) -> Self {
        CommandError::Store(StoreError::Database(e))
    }
}

impl CommandError {
    /// An order's commit whose outcome is unknown: its page shows whether it was placed.
    pub fn outcome_unknown_of_order(order_id: OrderId) -> Self {
        CommandError::OutcomeUnknown {
            check: format!("/v1/orders/{order_id}"),
        }
    }

    pub(crate) fn is_store_conflict(&self) -> bool {
        matches!(self, CommandError::Store(e) if e.is_conflict())
    }

    /// A commit whose outcome is unknown becomes [`CommandError::OutcomeUnknown`], naming
    /// where to read whether it took.
    pub(crate) fn or_unknown_outcome(self, check: impl FnOnce() -> String) -> Self {
        match self {
            CommandError::Store(StoreError::CommitOutcomeUnknown(_)) => CommandError::OutcomeUnknown { check: check() },
            other => other,
        }
    }
}

/// The answer to an accepted order; replayed as is for a repeated idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OrderAccepted {
    #[schema(value_type = uuid::Uuid)]
    pub order_id: OrderId,
    pub status: String,
    #[schema(value_type = MoneyDoc)]
    pub total: Money,
    pub reservation_expires_at: DateTime<Utc>,
    /// Global position of the order's last event: pass it to the query API to read your write.
    pub consistency_token: i64,
}

/// An amount in minor units (cents) of an ISO 4217 currency: how [`Money`] looks on the wire,
/// and how a request body is read into it ([`money`]). Unknown fields are refused, and the
/// document says so (`additionalProperties: false`).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoneyDoc {
    #[serde(deserialize_with = "surge_runtime::extract::integer")]
    #[schema(minimum = 0, maximum = 9_223_372_036_854_775_807_i64, example = 12900)]
    minor: i64,
    #[schema(value_type = String, example = "EUR", pattern = "^[A-Z]{3}$")]
    currency: Currency,
}

/// `deserialize_with` for a [`Money`] field of a request body, read as [`MoneyDoc`] (so
/// `"minor": 12900.0` is read as 12900); a negative amount is refused like a wrong type.
pub fn money<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Money, D::Error> {
    let MoneyDoc { minor, currency } = MoneyDoc::deserialize(d)?;
    Money::new(minor, currency).map_err(serde::de::Error::custom)
}
