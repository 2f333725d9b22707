//! The `Order` aggregate: one customer order from placement to payment, cancellation or shipping.
//!
//! ```text
//! (new) --PlaceOrder--> placed --SubmitPayment--> payment_pending --ConfirmPayment--> paid --ShipOrder--> shipped
//!                         |                              |--FailPayment--> payment_failed --.
//!                         |                              `--RefundPayment-----------------+--> refunded
//!                         `--CancelOrder--> cancelled ------RefundPayment-----------------'
//! ```
//! `RefundPayment` gives back a charge the gateway captured that the order can no longer take
//! (its stock is gone, or it was cancelled or failed before the charge's outcome was known).
//! Stock is reserved by the `Inventory` aggregates in the same transaction as `OrderPlaced`;
//! the order itself only records prices and totals.

use super::{Aggregate, DomainError, MAX_LINES, MAX_QUANTITY};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use surge_events::order::{
    CancelReason, OrderCancelled, OrderPaid, OrderPlaced, OrderShipped, PaymentFailed, PaymentRefunded,
    PaymentSubmitted,
};
use surge_events::{CustomerId, Money, OrderEvent, OrderId, OrderLine};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    #[default]
    New,
    Placed,
    PaymentPending,
    Paid,
    PaymentFailed,
    Cancelled,
    Shipped,
    Refunded,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::New => "new",
            OrderStatus::Placed => "placed",
            OrderStatus::PaymentPending => "payment_pending",
            OrderStatus::Paid => "paid",
            OrderStatus::PaymentFailed => "payment_failed",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::Shipped => "shipped",
            OrderStatus::Refunded => "refunded",
        }
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Order {
    pub status: OrderStatus,
    pub order_id: Option<OrderId>,
    pub customer_id: Option<CustomerId>,
    pub lines: Vec<OrderLine>,
    pub total: Option<Money>,
    pub reservation_expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderCommand {
    PlaceOrder {
        order_id: OrderId,
        customer_id: CustomerId,
        lines: Vec<OrderLine>,
        reservation_expires_at: DateTime<Utc>,
    },
    SubmitPayment {
        token_fingerprint: String,
    },
    ConfirmPayment {
        payment_reference: String,
    },
    FailPayment {
        reason: String,
    },
    RefundPayment {
        payment_reference: String,
        reason: String,
    },
    CancelOrder {
        reason: CancelReason,
    },
    ShipOrder,
}

impl Order {
    fn id(&self) -> Result<OrderId, DomainError> {
        self.order_id
            .ok_or(DomainError::UnknownOrder(OrderId(uuid::Uuid::nil())))
    }

    fn require(&self, action: &'static str, allowed: &[OrderStatus]) -> Result<OrderId, DomainError> {
        let id = self.id()?;
        if allowed.contains(&self.status) {
            Ok(id)
        } else {
            Err(DomainError::InvalidTransition {
                action,
                status: self.status,
            })
        }
    }
}

/// The total of the lines, all in one currency, without overflow.
pub fn total_of(lines: &[OrderLine]) -> Result<Money, DomainError> {
    let first = lines.first().ok_or(DomainError::InvalidLineCount {
        count: 0,
        max: MAX_LINES,
    })?;
    let mut total = Money::zero(first.unit_price.currency().clone());
    for line in lines {
        if line.unit_price.currency() != total.currency() {
            return Err(DomainError::MixedCurrencies);
        }
        let amount = line
            .unit_price
            .checked_mul(line.quantity)
            .map_err(|_| DomainError::AmountOverflow)?;
        total = total.checked_add(&amount).map_err(|_| DomainError::AmountOverflow)?;
    }
    Ok(total)
}

impl Aggregate for Order {
    type Command = OrderCommand;
    type Event = OrderEvent;

    fn decide(&self, command: &OrderCommand) -> Result<Vec<OrderEvent>, DomainError> {
        use OrderCommand as C;
        match command {
            C::PlaceOrder {
                order_id,
                customer_id,
                lines,
                reservation_expires_at,
            } => {
                if self.status != OrderStatus::New {
                    return Err(DomainError::OrderAlreadyExists(*order_id));
                }
                if lines.is_empty() || lines.len() > MAX_LINES {
                    return Err(DomainError::InvalidLineCount {
                        count: lines.len(),
                        max: MAX_LINES,
                    });
                }
                for line in lines {
                    if !(1..=MAX_QUANTITY).contains(&line.quantity) {
                        return Err(DomainError::InvalidQuantity {
                            quantity: line.quantity,
                            max: MAX_QUANTITY,
                        });
                    }
                }
                let mut skus: Vec<_> = lines.iter().map(|l| &l.sku).collect();
                skus.sort();
                skus.dedup();
                if skus.len() != lines.len() {
                    return Err(DomainError::InvalidField {
                        field: "lines",
                        reason: "each SKU may appear on one line only".into(),
                    });
                }
                let total = total_of(lines)?;
                Ok(vec![OrderEvent::OrderPlaced(OrderPlaced {
                    order_id: *order_id,
                    customer_id: customer_id.clone(),
                    lines: lines.clone(),
                    total,
                    reservation_expires_at: *reservation_expires_at,
                })])
            }
            C::SubmitPayment { token_fingerprint } => {
                let order_id = self.require("pay", &[OrderStatus::Placed])?;
                Ok(vec![OrderEvent::PaymentSubmitted(PaymentSubmitted {
                    order_id,
                    token_fingerprint: token_fingerprint.clone(),
                })])
            }
            C::ConfirmPayment { payment_reference } => {
                let order_id = self.require("confirm payment of", &[OrderStatus::PaymentPending])?;
                Ok(vec![OrderEvent::OrderPaid(OrderPaid {
                    order_id,
                    payment_reference: payment_reference.clone(),
                    amount: self.total.clone().ok_or(DomainError::UnknownOrder(order_id))?,
                })])
            }
            C::FailPayment { reason } => {
                let order_id = self.require("fail payment of", &[OrderStatus::PaymentPending])?;
                Ok(vec![OrderEvent::PaymentFailed(PaymentFailed {
                    order_id,
                    reason: reason.clone(),
                })])
            }
            C::RefundPayment {
                payment_reference,
                reason,
            } => {
                let order_id = self.require(
                    "refund the payment of",
                    &[
                        OrderStatus::PaymentPending,
                        OrderStatus::PaymentFailed,
                        OrderStatus::Cancelled,
                    ],
                )?;
                Ok(vec![OrderEvent::PaymentRefunded(PaymentRefunded {
                    order_id,
                    payment_reference: payment_reference.clone(),
                    amount: self.total.clone().ok_or(DomainError::UnknownOrder(order_id))?,
                    reason: reason.clone(),
                })])
            }
            C::CancelOrder { reason } => {
                let order_id = self.require("cancel", &[OrderStatus::Placed])?;
                Ok(vec![OrderEvent::OrderCancelled(OrderCancelled {
                    order_id,
                    reason: *reason,
                })])
            }
            C::ShipOrder => {
                let order_id = self.require("ship", &[OrderStatus::Paid])?;
                Ok(vec![OrderEvent::OrderShipped(OrderShipped { order_id })])
            }
        }
    }

    fn evolve(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::OrderPlaced(e) => {
                self.status = OrderStatus::Placed;
                self.order_id = Some(e.order_id);
                self.customer_id = Some(e.customer_id.clone());
                self.lines = e.lines.clone();
                self.total = Some(e.total.clone());
                self.reservation_expires_at = Some(e.reservation_expires_at);
            }
            OrderEvent::PaymentSubmitted(_) => self.status = OrderStatus::PaymentPending,
            OrderEvent::OrderPaid(_) => self.status = OrderStatus::Paid,
            OrderEvent::PaymentFailed(_) => self.status = OrderStatus::PaymentFailed,
            OrderEvent::OrderCancelled(_) => self.status = OrderStatus::Cancelled,
            OrderEvent::OrderShipped(_) => self.status = OrderStatus::Shipped,
            OrderEvent::PaymentRefunded(_) => self.status = OrderStatus::Refunded,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::given;
    use surge_events::{Currency, Sku};

    fn money(minor: i64, cur: &str) -> Money {
        Money::new(minor, Currency::parse(cur).unwrap()).unwrap()
    }
    fn line(sku: &str, quantity: i64, price: i64) -> OrderLine {
        OrderLine {
            sku: Sku::parse(sku).unwrap(),
            quantity,
            unit_price: money(price, "EUR"),
        }
    }
    fn place(lines: Vec<OrderLine>) -> OrderCommand {
        OrderCommand::PlaceOrder {
            order_id: OrderId(uuid::Uuid::from_u128(1)),
            customer_id: CustomerId::parse("alice").unwrap(),
            lines,
            reservation_expires_at: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
        }
    }
    fn placed() -> OrderEvent {
        Order::default()
            .decide(&place(vec![line("A", 2, 500), line("B", 1, 250)]))
            .unwrap()[0]
            .clone()
    }
    fn submitted() -> OrderEvent {
        OrderEvent::PaymentSubmitted(PaymentSubmitted {
            order_id: OrderId(uuid::Uuid::from_u128(1)),
            token_fingerprint: "f".into(),
        })
    }
    fn cancel() -> OrderCommand {
        OrderCommand::CancelOrder {
            reason: CancelReason::CustomerRequest,
        }
    }

    #[test]
    fn placing_totals_the_lines_in_minor_units() {
        let OrderEvent::OrderPlaced(e) = placed() else {
            panic!("not placed")
        };
        assert_eq!(e.total, money(1_250, "EUR"));
    }

    #[test]
    fn an_order_needs_lines_with_positive_quantities_in_one_currency() {
        let empty = Order::default().decide(&place(vec![]));
        assert!(matches!(empty, Err(DomainError::InvalidLineCount { count: 0, .. })));
        let zero = Order::default().decide(&place(vec![line("A", 0, 1)]));
        assert!(matches!(zero, Err(DomainError::InvalidQuantity { quantity: 0, .. })));
        let mut usd = line("B", 1, 1);
        usd.unit_price = money(1, "USD");
        let mixed = Order::default().decide(&place(vec![line("A", 1, 1), usd]));
        assert_eq!(mixed, Err(DomainError::MixedCurrencies));
        let dup = Order::default().decide(&place(vec![line("A", 1, 1), line("A", 2, 1)]));
        assert!(matches!(dup, Err(DomainError::InvalidField { field: "lines", .. })));
        let huge = Order::default().decide(&place(vec![line("A", MAX_QUANTITY, i64::MAX / 2)]));
        assert_eq!(huge, Err(DomainError::AmountOverflow));
    }

    #[test]
    fn an_order_is_placed_once() {
        let state: Order = given(&[placed()]);
        assert!(matches!(
            state.decide(&place(vec![line("A", 1, 1)])),
            Err(DomainError::OrderAlreadyExists(_))
        ));
    }

    #[test]
    fn cannot_pay_a_cancelled_order() {
        let state: Order = given(&[placed()]);
        let events = state.decide(&cancel()).unwrap();
        let cancelled: Order = given(&[placed(), events[0].clone()]);
        assert_eq!(cancelled.status, OrderStatus::Cancelled);
        let pay = OrderCommand::SubmitPayment {
            token_fingerprint: "x".into(),
        };
        assert_eq!(
            cancelled.decide(&pay),
            Err(DomainError::InvalidTransition {
                action: "pay",
                status: OrderStatus::Cancelled
            })
        );
    }

    #[test]
    fn payment_is_confirmed_or_failed_only_while_pending() {
        let placed_only: Order = given(&[placed()]);
        let confirm = OrderCommand::ConfirmPayment {
            payment_reference: "ref".into(),
        };
        assert!(placed_only.decide(&confirm).is_err());
        let pending: Order = given(&[placed(), submitted()]);
        let events = pending.decide(&confirm).unwrap();
        let OrderEvent::OrderPaid(paid) = &events[0] else {
            panic!("not paid")
        };
        assert_eq!(paid.amount, money(1_250, "EUR"));
        let fail = OrderCommand::FailPayment {
            reason: "declined".into(),
        };
        assert!(matches!(
            pending.decide(&fail).unwrap()[..],
            [OrderEvent::PaymentFailed(_)]
        ));
    }

    #[test]
    fn cannot_cancel_a_paid_or_pending_order() {
        let pending: Order = given(&[placed(), submitted()]);
        assert!(pending.decide(&cancel()).is_err());
        let paid: Order = given(&[
            placed(),
            submitted(),
            OrderEvent::OrderPaid(OrderPaid {
                order_id: OrderId(uuid::Uuid::from_u128(1)),
                payment_reference: "r".into(),
                amount: money(1_250, "EUR"),
            }),
        ]);
        assert!(paid.decide(&cancel()).is_err());
        assert!(matches!(
            paid.decide(&OrderCommand::ShipOrder).unwrap()[..],
            [OrderEvent::OrderShipped(_)]
        ));
    }

    #[test]
    fn a_captured_charge_is_refunded_only_where_the_order_cannot_take_it() {
        let refund = OrderCommand::RefundPayment {
            payment_reference: "ref".into(),
            reason: "the stock was no longer held".into(),
        };
        let pending: Order = given(&[placed(), submitted()]);
        let events = pending.decide(&refund).unwrap();
        let OrderEvent::PaymentRefunded(r) = &events[0] else {
            panic!("not refunded")
        };
        assert_eq!(
            (r.amount.clone(), r.payment_reference.as_str()),
            (money(1_250, "EUR"), "ref")
        );
        let refunded: Order = given(&[placed(), submitted(), events[0].clone()]);
        assert_eq!(refunded.status, OrderStatus::Refunded);
        assert!(refunded.decide(&refund).is_err(), "refunded once");
        let cancelled: Order = given(&[
            placed(),
            OrderEvent::OrderCancelled(OrderCancelled {
                order_id: OrderId(uuid::Uuid::from_u128(1)),
                reason: CancelReason::ReservationExpired,
            }),
        ]);
        assert!(cancelled.decide(&refund).is_ok());
        let paid: Order = given(&[
            placed(),
            submitted(),
            OrderEvent::OrderPaid(OrderPaid {
                order_id: OrderId(uuid::Uuid::from_u128(1)),
                payment_reference: "r".into(),
                amount: money(1_250, "EUR"),
            }),
        ]);
        assert!(paid.decide(&refund).is_err(), "a paid order keeps its payment");
    }

    #[test]
    fn commands_on_a_missing_order_are_refused() {
        assert!(matches!(
            Order::default().decide(&cancel()),
            Err(DomainError::UnknownOrder(_))
        ));
    }
}
