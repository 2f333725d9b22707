//! The checkout decision: an order as the customer asks for it (SKUs and quantities), decided
//! against the stock of every SKU it names.
//!
//! Every line is priced from the catalog (its item's current price) and reserved from its
//! SKU's available stock until the order's hold runs out. The order is placed only if every
//! line can be: one line that cannot (unknown item, bad quantity, too little stock, ...)
//! refuses the whole order and no stock is touched. Orders decided one after another against
//! the same `inventories` (a sequencer lane's batch) see each other's reservations, so of two
//! orders for the last unit the second is refused.
//!
//! An item split into buckets is decided on one bucket by [`place`] (the bucket whose state the
//! caller passes: a lane's own), or on all of them by [`place_from_any`]: the preferred bucket if
//! it has enough, else the bucket with the most, else stock moved into that one from the others
//! (move pairs, decided with the order), else out of stock with the item's total available. The
//! latter is definitive only when the caller read every bucket under its lock.
//!
//! An item with a purchase limit refuses a line that would take the customer past it
//! ([`DomainError::PurchaseLimit`]), counting the units the caller says the customer holds
//! (`held`: reserved or bought, not released) and the lines placed before in the same batch.

use crate::aggregate::Aggregate;
use crate::buckets::ItemStock;
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

/// Units each customer holds (reserved or bought, not released) of the items with a purchase
/// limit, as the caller read them; a missing entry is none.
pub type Held = BTreeMap<(Sku, CustomerId), i64>;

/// A placed order: the events to append, per stream, and what the customer pays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Stock moved between buckets so that a line could be reserved ([`place_from_any`]), as
    /// `(sku, bucket, event)`, appended before the reservations.
    pub moves: Vec<(Sku, u32, InventoryEvent)>,
    /// One `StockReserved` per line, for the stream of that SKU's bucket, in the order of the lines.
    pub reservations: Vec<(Sku, u32, InventoryEvent)>,
    /// The lines counted against their item's purchase limit: `(sku, units)`.
    pub counted: Vec<(Sku, i64)>,
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
///
/// Each SKU's state is one bucket of it (`Inventory::bucket`): the line is reserved there.
pub fn place(
    order: &PlaceOrder,
    inventories: &mut BTreeMap<Sku, Inventory>,
    held: &mut Held,
) -> Result<Placement, DomainError> {
    let states: BTreeMap<&Sku, &Inventory> = inventories.iter().collect();
    let placement = decide(order, &states, held)?;
    for (sku, _, event) in &placement.reservations {
        if let Some(state) = inventories.get_mut(sku) {
            state.evolve(event);
        }
    }
    count(order, &placement, held);
    Ok(placement)
}

/// Decides `order` against every bucket of its items (`stock`, each item with all its buckets
/// loaded), preferring for each SKU the bucket `preferred` names: see the module's doc. When
/// placed, `stock` is evolved by the moves and reservations; when refused, it is left as it was.
pub fn place_from_any(
    order: &PlaceOrder,
    stock: &mut BTreeMap<Sku, ItemStock>,
    preferred: &BTreeMap<Sku, u32>,
    held: &mut Held,
) -> Result<Placement, DomainError> {
    let mut moves = Vec::new();
    // The bucket each line is decided on, as it would be after the moves (a copy only when
    // stock has to move: the common cases decide on the loaded state itself).
    let mut chosen: Vec<(Sku, u32, Option<Inventory>)> = Vec::with_capacity(order.lines.len());
    for (sku, quantity) in &order.lines {
        let unknown = || DomainError::UnknownItem { sku: sku.clone() };
        let item = stock.get(sku).ok_or_else(unknown)?;
        if item.buckets.first().is_none_or(|b| b.item.is_none()) {
            return Err(unknown());
        }
        let enough = |k: u32| item.buckets.get(k as usize).is_some_and(|b| b.available >= *quantity);
        let first_choice = preferred.get(sku).copied().unwrap_or(0);
        let most = (0..item.buckets.len() as u32)
            .max_by_key(|&k| (item.buckets[k as usize].available, std::cmp::Reverse(k)))
            .unwrap_or(0);
        if enough(first_choice) {
            chosen.push((sku.clone(), first_choice, None));
        } else if enough(most) || !(1..=crate::MAX_QUANTITY).contains(quantity) {
            // Enough in one bucket, or a quantity the bucket's own rules refuse.
            chosen.push((sku.clone(), most, None));
        } else if item.available() < *quantity {
            return Err(DomainError::OutOfStock {
                sku: sku.clone(),
                requested: *quantity,
                available: item.available(),
            });
        } else {
            // Enough only together: move into the bucket with the most, from the others.
            let mut target = item.buckets[most as usize].clone();
            let mut others: Vec<u32> = (0..item.buckets.len() as u32).filter(|&k| k != most).collect();
            others.sort_by_key(|&k| std::cmp::Reverse(item.buckets[k as usize].available));
            for from in others {
                let missing = quantity - target.available;
                if missing <= 0 {
                    break;
                }
                let q = missing.min(item.buckets[from as usize].available);
                if q <= 0 {
                    continue;
                }
                for (k, e) in item.move_stock(sku, from, most, q)? {
                    if k == most {
                        target.evolve(&e);
                    }
                    moves.push((sku.clone(), k, e));
                }
            }
            chosen.push((sku.clone(), most, Some(target)));
        }
    }
    let mut states: BTreeMap<&Sku, &Inventory> = BTreeMap::new();
    for (sku, k, moved) in &chosen {
        let state = match moved {
            Some(s) => s,
            None => &stock[sku].buckets[*k as usize],
        };
        states.insert(sku, state);
    }
    let mut placement = decide(order, &states, held)?;
    placement.moves = moves;
    for (sku, k, e) in placement.moves.iter().chain(&placement.reservations) {
        if let Some(item) = stock.get_mut(sku) {
            item.evolve(*k, e);
        }
    }
    count(order, &placement, held);
    Ok(placement)
}

/// The customer now holds the counted lines' units too (the next order of a batch sees them).
fn count(order: &PlaceOrder, placement: &Placement, held: &mut Held) {
    for (sku, units) in &placement.counted {
        *held.entry((sku.clone(), order.customer_id.clone())).or_default() += units;
    }
}

/// Every line is decided against the SKUs' states as they were before this order (a repeated
/// SKU is then refused by the order's own rule, not as out of stock).
fn decide(order: &PlaceOrder, inventories: &BTreeMap<&Sku, &Inventory>, held: &Held) -> Result<Placement, DomainError> {
    let mut lines = Vec::with_capacity(order.lines.len());
    let mut reservations = Vec::with_capacity(order.lines.len());
    let mut counted = Vec::new();
    for (sku, quantity) in &order.lines {
        let unknown = || DomainError::UnknownItem { sku: sku.clone() };
        let state = inventories.get(sku).ok_or_else(unknown)?;
        let price = state.item.as_ref().map(|i| i.price.clone()).ok_or_else(unknown)?;
        lines.push(OrderLine {
            sku: sku.clone(),
            quantity: *quantity,
            unit_price: price,
            bucket: state.bucket,
        });
        let events = state.decide(&InventoryCommand::ReserveStock {
            sku: sku.clone(),
            order_id: order.order_id,
            quantity: *quantity,
            expires_at: order.reservation_expires_at,
        })?;
        if let Some(limit) = state.settings.max_per_customer {
            let already = held
                .get(&(sku.clone(), order.customer_id.clone()))
                .copied()
                .unwrap_or(0);
            if already + quantity > limit {
                return Err(DomainError::PurchaseLimit {
                    sku: sku.clone(),
                    limit,
                    held: already,
                    requested: *quantity,
                });
            }
            counted.push((sku.clone(), *quantity));
        }
        reservations.extend(events.into_iter().map(|e| (sku.clone(), state.bucket, e)));
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
        moves: Vec::new(),
        reservations,
        counted,
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
                    bucket: 0,
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

    fn limited(s: &str, limit: i64) -> InventoryEvent {
        InventoryEvent::PurchaseLimitSet(surge_events::inventory::PurchaseLimitSet {
            sku: sku(s),
            max_per_customer: Some(limit),
        })
    }

    #[test]
    fn a_purchase_limit_counts_what_the_customer_holds_and_the_batch_placed() {
        let after = given_stock([added("A", 10, 100), limited("A", 2)])
            .holding("alice", "A", 1)
            .when(order(1, &[("A", 1)]))
            .then_expect([reserved("A", 1, 1)], placed(1, &[("A", 1, 100)], 100));
        assert_eq!(after.held("alice", "A"), 2, "the placed line is counted");
        after
            .when(order(2, &[("A", 1)]))
            .then_refuse(DomainError::PurchaseLimit {
                sku: sku("A"),
                limit: 2,
                held: 2,
                requested: 1,
            });
    }

    #[test]
    fn an_order_past_the_limit_is_refused_whole() {
        let after = given_stock([added("A", 10, 100), limited("A", 2), added("B", 5, 100)])
            .when(order(1, &[("B", 1), ("A", 3)]))
            .then_refuse(DomainError::PurchaseLimit {
                sku: sku("A"),
                limit: 2,
                held: 0,
                requested: 3,
            });
        assert_eq!(after.held("alice", "A"), 0);
        assert_eq!(after.available("B"), 5);
    }

    #[test]
    fn released_units_come_back_to_the_allowance() {
        // The caller's count drops when a hold is released: the same order then fits again.
        given_stock([added("A", 10, 100), limited("A", 2)])
            .holding("alice", "A", 2)
            .when(order(1, &[("A", 1)]))
            .then_refuse(DomainError::PurchaseLimit {
                sku: sku("A"),
                limit: 2,
                held: 2,
                requested: 1,
            })
            .holding("alice", "A", 1)
            .when(order(2, &[("A", 1)]))
            .then_expect([reserved("A", 2, 1)], placed(2, &[("A", 1, 100)], 100));
    }

    #[test]
    fn items_without_a_limit_count_nothing() {
        let after = given_stock([added("A", 10, 100)])
            .when(order(1, &[("A", 5)]))
            .then_expect([reserved("A", 1, 5)], placed(1, &[("A", 5, 100)], 500));
        assert_eq!(after.held("alice", "A"), 0);
    }

    mod buckets {
        use super::*;
        use crate::buckets::ItemStock;
        use surge_events::inventory::{BucketsChanged, StockMovedIn, StockMovedOut};

        /// Item `s` split into buckets with `per_bucket[k]` units each, as its streams hold it.
        fn split(s: &str, per_bucket: &[i64]) -> ItemStock {
            let mut stock = ItemStock::new(vec![Default::default()]);
            stock.evolve(0, &added(s, per_bucket.iter().sum(), 100));
            stock.evolve(
                0,
                &InventoryEvent::BucketsChanged(BucketsChanged {
                    sku: sku(s),
                    buckets: per_bucket.len() as u32,
                }),
            );
            for (k, q) in per_bucket.iter().enumerate().skip(1) {
                if *q > 0 {
                    for (b, e) in stock.move_stock(&sku(s), 0, k as u32, *q).unwrap() {
                        stock.evolve(b, &e);
                    }
                }
            }
            stock
        }
        fn stock_of(items: Vec<(&str, ItemStock)>) -> BTreeMap<Sku, ItemStock> {
            items.into_iter().map(|(s, i)| (sku(s), i)).collect()
        }
        fn prefer(s: &str, k: u32) -> BTreeMap<Sku, u32> {
            [(sku(s), k)].into_iter().collect()
        }
        fn per_bucket(stock: &BTreeMap<Sku, ItemStock>, s: &str) -> Vec<i64> {
            stock[&sku(s)].buckets.iter().map(|b| b.available).collect()
        }

        #[test]
        fn the_preferred_bucket_serves_when_it_has_enough() {
            let mut stock = stock_of(vec![("A", split("A", &[2, 2, 2]))]);
            let placed = place_from_any(&order(1, &[("A", 2)]), &mut stock, &prefer("A", 1), &mut Held::new()).unwrap();
            assert!(placed.moves.is_empty());
            assert_eq!(placed.reservations[0].1, 1);
            match &placed.order[0] {
                OrderEvent::OrderPlaced(p) => assert_eq!(p.lines[0].bucket, 1, "the line records its bucket"),
                other => panic!("{other:?}"),
            }
            assert_eq!(per_bucket(&stock, "A"), vec![2, 0, 2]);
        }

        #[test]
        fn an_empty_preferred_bucket_takes_from_the_fullest_other() {
            let mut stock = stock_of(vec![("A", split("A", &[1, 0, 3]))]);
            let placed = place_from_any(&order(1, &[("A", 2)]), &mut stock, &prefer("A", 1), &mut Held::new()).unwrap();
            assert_eq!(placed.reservations[0].1, 2);
            assert_eq!(per_bucket(&stock, "A"), vec![1, 0, 1]);
        }

        #[test]
        fn stock_scattered_over_buckets_is_moved_together_then_reserved() {
            let mut stock = stock_of(vec![("A", split("A", &[1, 1, 1]))]);
            let placed = place_from_any(&order(1, &[("A", 3)]), &mut stock, &prefer("A", 2), &mut Held::new()).unwrap();
            // Ties go to the lowest bucket: 1 and 2 move into bucket 0.
            assert_eq!(
                placed.moves,
                vec![
                    (
                        sku("A"),
                        1,
                        InventoryEvent::StockMovedOut(StockMovedOut {
                            sku: sku("A"),
                            to_bucket: 0,
                            quantity: 1
                        })
                    ),
                    (
                        sku("A"),
                        0,
                        InventoryEvent::StockMovedIn(StockMovedIn {
                            sku: sku("A"),
                            from_bucket: 1,
                            quantity: 1
                        })
                    ),
                    (
                        sku("A"),
                        2,
                        InventoryEvent::StockMovedOut(StockMovedOut {
                            sku: sku("A"),
                            to_bucket: 0,
                            quantity: 1
                        })
                    ),
                    (
                        sku("A"),
                        0,
                        InventoryEvent::StockMovedIn(StockMovedIn {
                            sku: sku("A"),
                            from_bucket: 2,
                            quantity: 1
                        })
                    ),
                ]
            );
            assert_eq!(placed.reservations, vec![(sku("A"), 0, reserved("A", 1, 3))]);
            assert_eq!(per_bucket(&stock, "A"), vec![0, 0, 0]);
            assert_eq!(stock[&sku("A")].reserved(), 3);
        }

        #[test]
        fn out_of_stock_is_the_items_total() {
            let mut stock = stock_of(vec![("A", split("A", &[1, 0, 1])), ("B", split("B", &[5]))]);
            let before = stock.clone();
            assert_eq!(
                place_from_any(
                    &order(1, &[("B", 1), ("A", 3)]),
                    &mut stock,
                    &prefer("A", 0),
                    &mut Held::new()
                ),
                Err(DomainError::OutOfStock {
                    sku: sku("A"),
                    requested: 3,
                    available: 2
                })
            );
            assert_eq!(stock, before, "a refused order moves and reserves nothing");
        }

        #[test]
        fn a_refused_order_after_moves_leaves_every_bucket_as_it_was() {
            let mut stock = stock_of(vec![("A", split("A", &[1, 1])), ("B", split("B", &[0]))]);
            let before = stock.clone();
            assert!(matches!(
                place_from_any(
                    &order(1, &[("A", 2), ("B", 1)]),
                    &mut stock,
                    &BTreeMap::new(),
                    &mut Held::new()
                ),
                Err(DomainError::OutOfStock { .. })
            ));
            assert_eq!(stock, before);
        }

        #[test]
        fn the_limit_holds_across_buckets() {
            let mut stock = stock_of(vec![("A", split("A", &[5, 5]))]);
            stock.get_mut(&sku("A")).unwrap().evolve(0, &limited("A", 2));
            let mut held = Held::new();
            place_from_any(&order(1, &[("A", 1)]), &mut stock, &prefer("A", 0), &mut held).unwrap();
            place_from_any(&order(2, &[("A", 1)]), &mut stock, &prefer("A", 1), &mut held).unwrap();
            assert_eq!(
                place_from_any(&order(3, &[("A", 1)]), &mut stock, &prefer("A", 1), &mut held),
                Err(DomainError::PurchaseLimit {
                    sku: sku("A"),
                    limit: 2,
                    held: 2,
                    requested: 1
                })
            );
        }

        #[test]
        fn an_unknown_item_is_refused_from_any_bucket_too() {
            let mut stock = stock_of(vec![("A", split("A", &[1]))]);
            assert_eq!(
                place_from_any(
                    &order(1, &[("NOPE", 1)]),
                    &mut stock,
                    &BTreeMap::new(),
                    &mut Held::new()
                ),
                Err(DomainError::UnknownItem { sku: sku("NOPE") })
            );
        }
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
