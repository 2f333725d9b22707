//! Payloads of `order-<id>` streams.

use crate::{CustomerId, Money, OrderId, Payload, Sku, StreamType};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One line of an order, priced by the catalog when the order was placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderLine {
    pub sku: Sku,
    pub quantity: i64,
    pub unit_price: Money,
    /// The stock bucket of the item the line's units are held in (bucket 0 is the stream
    /// `inventory-<sku>`, bucket k the stream `inventory-<sku>#<k>`): payment sells them there,
    /// a release returns them there. Absent (0) in orders placed before items had buckets.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bucket: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderPlaced {
    pub order_id: OrderId,
    pub customer_id: CustomerId,
    pub lines: Vec<OrderLine>,
    pub total: Money,
    /// Until when the stock of every line is held for this order unless it is paid.
    pub reservation_expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentSubmitted {
    pub order_id: OrderId,
    /// A fingerprint of the payment token: the token itself is never stored.
    pub token_fingerprint: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderPaid {
    pub order_id: OrderId,
    pub payment_reference: String,
    pub amount: Money,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentFailed {
    pub order_id: OrderId,
    pub reason: String,
}

/// A captured charge was given back: the order could no longer take it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentRefunded {
    pub order_id: OrderId,
    /// The gateway's reference of the refunded charge.
    pub payment_reference: String,
    pub amount: Money,
    /// Why the charge could not be honoured (its stock was no longer held, the order was
    /// cancelled or failed meanwhile).
    pub reason: String,
}

/// Why an order was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    CustomerRequest,
    ReservationExpired,
    PaymentFailed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderCancelled {
    pub order_id: OrderId,
    pub reason: CancelReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderShipped {
    pub order_id: OrderId,
}

/// Everything that can happen to an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum OrderEvent {
    OrderPlaced(OrderPlaced),
    PaymentSubmitted(PaymentSubmitted),
    OrderPaid(OrderPaid),
    PaymentFailed(PaymentFailed),
    OrderCancelled(OrderCancelled),
    OrderShipped(OrderShipped),
    PaymentRefunded(PaymentRefunded),
}

impl Payload for OrderEvent {
    const STREAM_TYPE: StreamType = StreamType::Order;

    fn schema_version(&self) -> i32 {
        match self {
            // v2 priced lines and totals as Money (with a currency); v1 rows are upcast on read.
            OrderEvent::OrderPlaced(_) => 2,
            _ => 1,
        }
    }

    fn event_type(&self) -> &'static str {
        match self {
            OrderEvent::OrderPlaced(_) => "OrderPlaced",
            OrderEvent::PaymentSubmitted(_) => "PaymentSubmitted",
            OrderEvent::OrderPaid(_) => "OrderPaid",
            OrderEvent::PaymentFailed(_) => "PaymentFailed",
            OrderEvent::OrderCancelled(_) => "OrderCancelled",
            OrderEvent::OrderShipped(_) => "OrderShipped",
            OrderEvent::PaymentRefunded(_) => "PaymentRefunded",
        }
    }
}

impl OrderEvent {
    pub fn order_id(&self) -> OrderId {
        match self {
            OrderEvent::OrderPlaced(e) => e.order_id,
            OrderEvent::PaymentSubmitted(e) => e.order_id,
            OrderEvent::OrderPaid(e) => e.order_id,
            OrderEvent::PaymentFailed(e) => e.order_id,
            OrderEvent::OrderCancelled(e) => e.order_id,
            OrderEvent::OrderShipped(e) => e.order_id,
            OrderEvent::PaymentRefunded(e) => e.order_id,
        }
    }
}

/// The currency every amount was in before orders carried one (schema v1 of `OrderPlaced`).
pub const LEGACY_CURRENCY: &str = "EUR";

/// `OrderPlaced` as schema v1 stored it: amounts in minor units of the shop's one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderPlacedV1 {
    pub order_id: OrderId,
    pub customer_id: CustomerId,
    pub lines: Vec<OrderLineV1>,
    pub total_minor: i64,
    pub reservation_expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderLineV1 {
    pub sku: Sku,
    pub quantity: i64,
    pub unit_price_minor: i64,
}

impl OrderPlacedV1 {
    /// The v2 form of a v1 event: every amount in the legacy currency.
    pub fn upcast(self) -> Result<OrderPlaced, crate::MoneyError> {
        let currency = crate::Currency::parse(LEGACY_CURRENCY)?;
        let lines = self
            .lines
            .into_iter()
            .map(|l| {
                Ok(OrderLine {
                    sku: l.sku,
                    quantity: l.quantity,
                    unit_price: Money::new(l.unit_price_minor, currency.clone())?,
                    bucket: 0,
                })
            })
            .collect::<Result<Vec<_>, crate::MoneyError>>()?;
        Ok(OrderPlaced {
            order_id: self.order_id,
            customer_id: self.customer_id,
            lines,
            total: Money::new(self.total_minor, currency)?,
            reservation_expires_at: self.reservation_expires_at,
        })
    }
}
