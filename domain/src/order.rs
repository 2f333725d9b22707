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

use crate::aggregate::Aggregate;
use crate::error::{DomainError, MAX_LINES, MAX_QUANTITY};
use chrono::{DateTime, Utc};
use surge_events::order::{
    CancelReason, OrderCancelled, OrderPaid, OrderPlaced, OrderShipped, PaymentFailed, PaymentRefunded,
    PaymentSubmitted,
};
use surge_events::{CustomerId, Money, OrderEvent, OrderId, OrderLine};

pub use crate::status::OrderStatus;

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
        // An order never placed has no id of its own: it is named by the nil UUID.
        self.order_id
            .ok_or(DomainError::UnknownOrder(OrderId(Default::default())))
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
    use crate::testing::given;
    use surge_events::{Currency, Sku};

    fn money(minor: i64, cur: &str) -> Money {
        Money::new(minor, Currency::parse(cur).unwrap()).unwrap()
    }
    fn line(sku: &str, quantity: i64, price: i64) -> OrderLine {
        OrderLine {
            sku: Sku::parse(sku).unwrap(),
            quantity,
            unit_price: money(price, "EUR"),
            bucket: 0,
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
        let state = Order::fold(&[placed()]);
        assert!(matches!(
            state.decide(&place(vec![line("A", 1, 1)])),
            Err(DomainError::OrderAlreadyExists(_))
        ));
    }

    #[test]
    fn cannot_pay_a_cancelled_order() {
        let state = Order::fold(&[placed()]);
        let events = state.decide(&cancel()).unwrap();
        let cancelled = Order::fold(&[placed(), events[0].clone()]);
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
        let placed_only = Order::fold(&[placed()]);
        let confirm = OrderCommand::ConfirmPayment {
            payment_reference: "ref".into(),
        };
        assert!(placed_only.decide(&confirm).is_err());
        let pending = Order::fold(&[placed(), submitted()]);
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
        let pending = Order::fold(&[placed(), submitted()]);
        assert!(pending.decide(&cancel()).is_err());
        let paid = Order::fold(&[
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
        let pending = Order::fold(&[placed(), submitted()]);
        let events = pending.decide(&refund).unwrap();
        let OrderEvent::PaymentRefunded(r) = &events[0] else {
            panic!("not refunded")
        };
        assert_eq!(
            (r.amount.clone(), r.payment_reference.as_str()),
            (money(1_250, "EUR"), "ref")
        );
        let refunded = Order::fold(&[placed(), submitted(), events[0].clone()]);
        assert_eq!(refunded.status, OrderStatus::Refunded);
        assert!(refunded.decide(&refund).is_err(), "refunded once");
        let cancelled = Order::fold(&[
            placed(),
            OrderEvent::OrderCancelled(OrderCancelled {
                order_id: OrderId(uuid::Uuid::from_u128(1)),
                reason: CancelReason::ReservationExpired,
            }),
        ]);
        assert!(cancelled.decide(&refund).is_ok());
        let paid = Order::fold(&[
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

    // Given/when/then: every command accepted, and every refusal.

    fn id() -> OrderId {
        OrderId(uuid::Uuid::from_u128(1))
    }
    fn paid() -> OrderEvent {
        OrderEvent::OrderPaid(OrderPaid {
            order_id: id(),
            payment_reference: "r".into(),
            amount: money(1_250, "EUR"),
        })
    }
    fn failed() -> OrderEvent {
        OrderEvent::PaymentFailed(PaymentFailed {
            order_id: id(),
            reason: "declined".into(),
        })
    }
    fn cancelled(reason: CancelReason) -> OrderEvent {
        OrderEvent::OrderCancelled(OrderCancelled { order_id: id(), reason })
    }
    fn refunded() -> OrderEvent {
        OrderEvent::PaymentRefunded(PaymentRefunded {
            order_id: id(),
            payment_reference: "ref".into(),
            amount: money(1_250, "EUR"),
            reason: "late".into(),
        })
    }
    fn shipped() -> OrderEvent {
        OrderEvent::OrderShipped(OrderShipped { order_id: id() })
    }
    /// A history that leaves the order in `status`.
    fn history(status: OrderStatus) -> Vec<OrderEvent> {
        match status {
            OrderStatus::New => vec![],
            OrderStatus::Placed => vec![placed()],
            OrderStatus::PaymentPending => vec![placed(), submitted()],
            OrderStatus::Paid => vec![placed(), submitted(), paid()],
            OrderStatus::PaymentFailed => vec![placed(), submitted(), failed()],
            OrderStatus::Cancelled => vec![placed(), cancelled(CancelReason::CustomerRequest)],
            OrderStatus::Shipped => vec![placed(), submitted(), paid(), shipped()],
            OrderStatus::Refunded => vec![placed(), submitted(), refunded()],
        }
    }
    const ALL: [OrderStatus; 8] = [
        OrderStatus::New,
        OrderStatus::Placed,
        OrderStatus::PaymentPending,
        OrderStatus::Paid,
        OrderStatus::PaymentFailed,
        OrderStatus::Cancelled,
        OrderStatus::Shipped,
        OrderStatus::Refunded,
    ];
    fn confirm() -> OrderCommand {
        OrderCommand::ConfirmPayment {
            payment_reference: "ref".into(),
        }
    }
    fn refund() -> OrderCommand {
        OrderCommand::RefundPayment {
            payment_reference: "ref".into(),
            reason: "late".into(),
        }
    }

    #[test]
    fn each_history_leads_to_its_status() {
        for status in ALL {
            assert_eq!(Order::fold(&history(status)).status, status);
        }
    }

    #[test]
    fn place_order_records_lines_total_and_hold() {
        let after = given::<Order>([])
            .when(place(vec![line("A", 2, 500), line("B", 1, 250)]))
            .then_expect([OrderEvent::OrderPlaced(OrderPlaced {
                order_id: id(),
                customer_id: CustomerId::parse("alice").unwrap(),
                lines: vec![line("A", 2, 500), line("B", 1, 250)],
                total: money(1_250, "EUR"),
                reservation_expires_at: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
            })]);
        assert_eq!(after.state.status, OrderStatus::Placed);
        assert_eq!(after.state.total, Some(money(1_250, "EUR")));
    }

    #[test]
    fn place_order_refusals() {
        for status in ALL.into_iter().filter(|s| *s != OrderStatus::New) {
            given::<Order>(history(status))
                .when(place(vec![line("A", 1, 1)]))
                .then_refuse(DomainError::OrderAlreadyExists(id()));
        }
        for count in [0, MAX_LINES + 1] {
            let lines = (0..count).map(|n| line(&format!("S{n}"), 1, 1)).collect();
            given::<Order>([])
                .when(place(lines))
                .then_refuse(DomainError::InvalidLineCount { count, max: MAX_LINES });
        }
        for quantity in [0, -1, MAX_QUANTITY + 1] {
            given::<Order>([])
                .when(place(vec![line("A", 1, 1), line("B", quantity, 1)]))
                .then_refuse(DomainError::InvalidQuantity {
                    quantity,
                    max: MAX_QUANTITY,
                });
        }
        given::<Order>([])
            .when(place(vec![line("A", 1, 1), line("B", 1, 1), line("A", 2, 1)]))
            .then_refuse(DomainError::InvalidField {
                field: "lines",
                reason: "each SKU may appear on one line only".into(),
            });
        let mut usd = line("B", 1, 1);
        usd.unit_price = money(1, "USD");
        given::<Order>([])
            .when(place(vec![line("A", 1, 1), usd]))
            .then_refuse(DomainError::MixedCurrencies);
        given::<Order>([])
            .when(place(vec![line("A", MAX_QUANTITY, i64::MAX / 2)]))
            .then_refuse(DomainError::AmountOverflow);
        given::<Order>([])
            .when(place(vec![line("A", 1, i64::MAX), line("B", 1, 1)]))
            .then_refuse(DomainError::AmountOverflow);
    }

    #[test]
    fn submit_payment_moves_a_placed_order_to_pending() {
        let after = given::<Order>(history(OrderStatus::Placed))
            .when(OrderCommand::SubmitPayment {
                token_fingerprint: "f".into(),
            })
            .then_expect([submitted()]);
        assert_eq!(after.state.status, OrderStatus::PaymentPending);
    }

    #[test]
    fn confirm_payment_charges_the_total() {
        let after = given::<Order>(history(OrderStatus::PaymentPending))
            .when(OrderCommand::ConfirmPayment {
                payment_reference: "r".into(),
            })
            .then_expect([paid()]);
        assert_eq!(after.state.status, OrderStatus::Paid);
    }

    #[test]
    fn fail_payment_records_the_reason() {
        let after = given::<Order>(history(OrderStatus::PaymentPending))
            .when(OrderCommand::FailPayment {
                reason: "declined".into(),
            })
            .then_expect([failed()]);
        assert_eq!(after.state.status, OrderStatus::PaymentFailed);
    }

    #[test]
    fn refund_payment_gives_back_the_total_where_the_order_cannot_keep_it() {
        for status in [
            OrderStatus::PaymentPending,
            OrderStatus::PaymentFailed,
            OrderStatus::Cancelled,
        ] {
            let after = given::<Order>(history(status)).when(refund()).then_expect([refunded()]);
            assert_eq!(after.state.status, OrderStatus::Refunded, "from {status}");
        }
    }

    #[test]
    fn cancel_order_records_why() {
        for reason in [CancelReason::CustomerRequest, CancelReason::ReservationExpired] {
            let after = given::<Order>(history(OrderStatus::Placed))
                .when(OrderCommand::CancelOrder { reason })
                .then_expect([cancelled(reason)]);
            assert_eq!(after.state.status, OrderStatus::Cancelled);
        }
    }

    #[test]
    fn ship_order_ships_a_paid_order() {
        let after = given::<Order>(history(OrderStatus::Paid))
            .when(OrderCommand::ShipOrder)
            .then_expect([shipped()]);
        assert_eq!(after.state.status, OrderStatus::Shipped);
    }

    #[test]
    fn every_transition_is_refused_outside_the_statuses_it_leaves() {
        let table: [(OrderCommand, &str, &[OrderStatus]); 6] = [
            (
                OrderCommand::SubmitPayment {
                    token_fingerprint: "f".into(),
                },
                "pay",
                &[OrderStatus::Placed],
            ),
            (confirm(), "confirm payment of", &[OrderStatus::PaymentPending]),
            (
                OrderCommand::FailPayment { reason: "x".into() },
                "fail payment of",
                &[OrderStatus::PaymentPending],
            ),
            (
                refund(),
                "refund the payment of",
                &[
                    OrderStatus::PaymentPending,
                    OrderStatus::PaymentFailed,
                    OrderStatus::Cancelled,
                ],
            ),
            (cancel(), "cancel", &[OrderStatus::Placed]),
            (OrderCommand::ShipOrder, "ship", &[OrderStatus::Paid]),
        ];
        for (command, action, allowed) in table {
            for status in ALL {
                let when = given::<Order>(history(status)).when(command.clone());
                if status == OrderStatus::New {
                    // Never placed: named by the nil id, since it has none of its own.
                    when.then_refuse(DomainError::UnknownOrder(OrderId(uuid::Uuid::nil())));
                } else if !allowed.contains(&status) {
                    when.then_refuse(DomainError::InvalidTransition { action, status });
                }
            }
        }
    }
}
