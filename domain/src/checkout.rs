//! The checkout decision: an order as the customer asks for it (SKUs and quantities), decided
//! against the stock of every SKU it names.
//!
//! Every line is priced from the catalog (its item's current price) and reserved from its
//! SKU's available stock until the order's hold runs out. The order is placed only if every
//! line can be: one line that cannot (unknown item, bad quantity, too little stock, ...)
//! refuses the whole order and no stock is touched. Orders decided one after another against
//! the same `inventories` (a sequencer lane's batch) see each other's reservations, so of two
//! orders for the last unit the second is refused.

use crate::aggregate::Aggregate;
use crate::error::DomainError;
use crate::inventory::{Inventory, InventoryCommand};
use crate::order::{Order, OrderCommand};
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use surge_events::{CustomerId, InventoryEvent, Money, OrderEvent, OrderId, OrderLine, Sku};

/// Place an order: what the customer asks for, with the id and the hold's deadline the
/// caller chose for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaceOrder {
    pub order_id: OrderId,
    pub customer_id: CustomerId,
    /// SKUs and quantities; prices come from the catalog.
    pub lines: Vec<(Sku, i64)>,
    pub reservation_expires_at: DateTime<Utc>,
}

/// A placed order: the events to append, per stream, and what the customer pays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// One `StockReserved` per line, for that SKU's stream, in the order of the lines.
    pub reservations: Vec<(Sku, InventoryEvent)>,
    /// `OrderPlaced`, the first events of the order's own stream.
    pub order: Vec<OrderEvent>,
    /// The sum of the lines at the catalog's prices.
    pub total: Money,
}

/// Decides `order` against the SKUs' states: placed (every line priced and reserved) or
/// refused whole. When placed, `inventories` are evolved by its reservations, ready for the
/// next order; when refused, they are left as they were.
///
/// A SKU missing from `inventories`, or never added to the catalog, is an unknown item.
pub fn place(order: &PlaceOrder, inventories: &mut BTreeMap<Sku, Inventory>) -> Result<Placement, DomainError> {
    let placement = decide(order, inventories)?;
    for (sku, event) in &placement.reservations {
        if let Some(state) = inventories.get_mut(sku) {
            state.evolve(event);
        }
    }
    Ok(placement)
}

/// Every line is decided against the SKUs' states as they were before this order (a repeated
/// SKU is then refused by the order's own rule, not as out of stock).
fn decide(order: &PlaceOrder, inventories: &BTreeMap<Sku, Inventory>) -> Result<Placement, DomainError> {
    let mut lines = Vec::with_capacity(order.lines.len());
    let mut reservations = Vec::with_capacity(order.lines.len());
    for (sku, quantity) in &order.lines {
        let unknown = || DomainError::UnknownItem { sku: sku.clone() };
        let state = inventories.get(sku).ok_or_else(unknown)?;
        let price = state.item.as_ref().map(|i| i.price.clone()).ok_or_else(unknown)?;
        lines.push(OrderLine {
            sku: sku.clone(),
            quantity: *quantity,
            unit_price: price,
        });
        let events = state.decide(&InventoryCommand::ReserveStock {
            sku: sku.clone(),
            order_id: order.order_id,
            quantity: *quantity,
            expires_at: order.reservation_expires_at,
        })?;
        reservations.extend(events.into_iter().map(|e| (sku.clone(), e)));
    }
    let order_events = Order::default().decide(&OrderCommand::PlaceOrder {
        order_id: order.order_id,
        customer_id: order.customer_id.clone(),
        lines,
        reservation_expires_at: order.reservation_expires_at,
    })?;
    let total = match &order_events[..] {
        [OrderEvent::OrderPlaced(p)] => p.total.clone(),
        _ => return Err(DomainError::UnknownOrder(order.order_id)),
    };
    Ok(Placement {
        reservations,
        order: order_events,
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{MAX_LINES, MAX_QUANTITY};
    use crate::testing::given_stock;
    use surge_events::inventory::{ItemAdded, StockReserved};
    use surge_events::order::OrderPlaced;
    use surge_events::Currency;

    fn sku(s: &str) -> Sku {
        Sku::parse(s).unwrap()
    }
    fn money(minor: i64, currency: &str) -> Money {
        Money::new(minor, Currency::parse(currency).unwrap()).unwrap()
    }
    fn eur(minor: i64) -> Money {
        money(minor, "EUR")
    }
    fn order_id(n: u128) -> OrderId {
        OrderId(uuid::Uuid::from_u128(n))
    }
    fn deadline() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }
    fn added_at(s: &str, stock: i64, price: Money) -> InventoryEvent {
        InventoryEvent::ItemAdded(ItemAdded {
            sku: sku(s),
            name: format!("item {s}"),
            category: "shoes".into(),
            price,
            initial_stock: stock,
        })
    }
    fn added(s: &str, stock: i64, price: i64) -> InventoryEvent {
        added_at(s, stock, eur(price))
    }
    fn reserved(s: &str, order: u128, quantity: i64) -> InventoryEvent {
        InventoryEvent::StockReserved(StockReserved {
            sku: sku(s),
            order_id: order_id(order),
            quantity,
            expires_at: deadline(),
        })
    }
    fn order(n: u128, lines: &[(&str, i64)]) -> PlaceOrder {
        PlaceOrder {
            order_id: order_id(n),
            customer_id: CustomerId::parse("alice").unwrap(),
            lines: lines.iter().map(|(s, q)| (sku(s), *q)).collect(),
            reservation_expires_at: deadline(),
        }
    }
    fn placed(n: u128, lines: &[(&str, i64, i64)], total: i64) -> OrderPlaced {
        OrderPlaced {
            order_id: order_id(n),
            customer_id: CustomerId::parse("alice").unwrap(),
            lines: lines
                .iter()
                .map(|(s, quantity, price)| OrderLine {
                    sku: sku(s),
                    quantity: *quantity,
                    unit_price: eur(*price),
                })
                .collect(),
            total: eur(total),
            reservation_expires_at: deadline(),
        }
    }

    #[test]
    fn one_line_is_priced_from_the_catalog_and_reserved() {
        let after = given_stock([added("A", 5, 1_999)])
            .when(order(1, &[("A", 2)]))
            .then_expect([reserved("A", 1, 2)], placed(1, &[("A", 2, 1_999)], 3_998));
        assert_eq!((after.available("A"), after.reserved("A")), (3, 2));
    }

    #[test]
    fn every_line_of_an_order_is_reserved_for_its_hold() {
        let after = given_stock([added("A", 5, 500), added("B", 1, 250), added("C", 9, 100)])
            .when(order(1, &[("B", 1), ("A", 2), ("C", 3)]))
            .then_expect(
                [reserved("B", 1, 1), reserved("A", 1, 2), reserved("C", 1, 3)],
                placed(1, &[("B", 1, 250), ("A", 2, 500), ("C", 3, 100)], 1_550),
            );
        assert_eq!(
            (after.available("A"), after.available("B"), after.available("C")),
            (3, 0, 6)
        );
    }

    #[test]
    fn the_whole_stock_may_be_taken() {
        given_stock([added("A", 3, 100)])
            .when(order(1, &[("A", 3)]))
            .then_expect([reserved("A", 1, 3)], placed(1, &[("A", 3, 100)], 300));
    }

    #[test]
    fn a_sold_out_item_refuses_the_order() {
        given_stock([added("A", 2, 100), reserved("A", 7, 2)])
            .when(order(1, &[("A", 1)]))
            .then_refuse(DomainError::OutOfStock {
                sku: sku("A"),
                requested: 1,
                available: 0,
            });
    }

    #[test]
    fn too_little_stock_on_one_line_refuses_the_whole_order() {
        let after = given_stock([added("A", 5, 100), added("B", 1, 100), added("C", 5, 100)])
            .when(order(1, &[("A", 2), ("B", 2), ("C", 1)]))
            .then_refuse(DomainError::OutOfStock {
                sku: sku("B"),
                requested: 2,
                available: 1,
            });
        // No line kept its reservation: the order was refused, not partly placed.
        assert_eq!(
            (after.available("A"), after.available("B"), after.available("C")),
            (5, 1, 5)
        );
        assert_eq!(after.reserved("A") + after.reserved("C"), 0);
    }

    #[test]
    fn orders_of_a_batch_see_each_others_reservations() {
        given_stock([added("A", 3, 100)])
            .when(order(1, &[("A", 2)]))
            .then_expect([reserved("A", 1, 2)], placed(1, &[("A", 2, 100)], 200))
            .when(order(2, &[("A", 2)]))
            .then_refuse(DomainError::OutOfStock {
                sku: sku("A"),
                requested: 2,
                available: 1,
            })
            .when(order(3, &[("A", 1)]))
            .then_expect([reserved("A", 3, 1)], placed(3, &[("A", 1, 100)], 100));
    }

    #[test]
    fn the_last_unit_goes_to_the_first_order_only() {
        let after = given_stock([added("A", 1, 100), added("B", 10, 100)])
            .when(order(1, &[("A", 1)]))
            .then_expect([reserved("A", 1, 1)], placed(1, &[("A", 1, 100)], 100))
            .when(order(2, &[("B", 1), ("A", 1)]))
            .then_refuse(DomainError::OutOfStock {
                sku: sku("A"),
                requested: 1,
                available: 0,
            });
        assert_eq!(after.available("B"), 10, "the refused order's other line holds nothing");
    }

    #[test]
    fn a_repeated_sku_refuses_the_order() {
        given_stock([added("A", 5, 100)])
            .when(order(1, &[("A", 1), ("A", 2)]))
            .then_refuse(DomainError::InvalidField {
                field: "lines",
                reason: "each SKU may appear on one line only".into(),
            });
    }

    #[test]
    fn a_repeated_sku_is_refused_as_such_even_if_both_lines_together_exceed_the_stock() {
        // Each line is decided on the stock as it was before the order.
        given_stock([added("A", 2, 100)])
            .when(order(1, &[("A", 2), ("A", 2)]))
            .then_refuse(DomainError::InvalidField {
                field: "lines",
                reason: "each SKU may appear on one line only".into(),
            });
    }

    #[test]
    fn an_item_not_in_the_catalog_refuses_the_order() {
        given_stock([added("A", 5, 100)])
            .when(order(1, &[("A", 1), ("NOPE", 1)]))
            .then_refuse(DomainError::UnknownItem { sku: sku("NOPE") });
    }

    #[test]
    fn a_sku_whose_stream_is_empty_is_an_unknown_item() {
        given_stock([added("A", 5, 100)])
            .with_empty_stream("GHOST")
            .when(order(1, &[("GHOST", 1), ("A", 1)]))
            .then_refuse(DomainError::UnknownItem { sku: sku("GHOST") });
    }

    #[test]
    fn quantities_must_be_between_one_and_the_maximum() {
        for quantity in [0, -1, MAX_QUANTITY + 1] {
            given_stock([added("A", MAX_QUANTITY * 2, 100), added("B", 5, 100)])
                .when(order(1, &[("B", 1), ("A", quantity)]))
                .then_refuse(DomainError::InvalidQuantity {
                    quantity,
                    max: MAX_QUANTITY,
                });
        }
    }

    #[test]
    fn an_order_needs_one_to_fifty_lines() {
        given_stock([added("A", 5, 100)])
            .when(order(1, &[]))
            .then_refuse(DomainError::InvalidLineCount {
                count: 0,
                max: MAX_LINES,
            });
        let names: Vec<String> = (0..=MAX_LINES).map(|n| format!("S{n}")).collect();
        let stock: Vec<InventoryEvent> = names.iter().map(|s| added(s, 5, 100)).collect();
        let lines: Vec<(&str, i64)> = names.iter().map(|s| (s.as_str(), 1)).collect();
        given_stock(stock)
            .when(order(1, &lines))
            .then_refuse(DomainError::InvalidLineCount {
                count: MAX_LINES + 1,
                max: MAX_LINES,
            });
    }

    #[test]
    fn items_priced_in_different_currencies_cannot_share_an_order() {
        given_stock([added("A", 5, 100), added_at("B", 5, money(100, "USD"))])
            .when(order(1, &[("A", 1), ("B", 1)]))
            .then_refuse(DomainError::MixedCurrencies);
    }

    #[test]
    fn a_total_beyond_what_money_holds_is_refused() {
        given_stock([added("A", MAX_QUANTITY, i64::MAX / 2)])
            .when(order(1, &[("A", MAX_QUANTITY)]))
            .then_refuse(DomainError::AmountOverflow);
    }

    #[test]
    fn an_order_holds_a_sku_once() {
        given_stock([added("A", 5, 100), reserved("A", 1, 1)])
            .when(order(1, &[("A", 1)]))
            .then_refuse(DomainError::AlreadyReserved {
                sku: sku("A"),
                order_id: order_id(1),
            });
    }
}
