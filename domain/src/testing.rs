//! Given/when/then for the rules, after cqrs-es' `TestFramework`: a history of events is
//! given, a command is decided, and the test says which events it expects or which refusal.
//!
//! ```text
//! given::<Order>([placed]).when(cancel).then_expect([cancelled]);
//! given::<Order>([]).when(cancel).then_refuse(DomainError::UnknownOrder(..));
//! given_stock([added_a, added_b]).when(place_order).then_expect(reservations, order_placed);
//! ```
//! Each `then_*` returns the state after the decision, so a test can go on with another
//! `when` (the orders of one batch) or look at the stock.

use crate::aggregate::Aggregate;
use crate::buckets::{BucketEvents, ItemStock};
use crate::checkout::{place, Held, PlaceOrder, Placement};
use crate::error::DomainError;
use crate::inventory::Inventory;
use std::collections::BTreeMap;
use std::fmt::Debug;
use surge_events::order::OrderPlaced;
use surge_events::{InventoryEvent, OrderEvent, Sku};

/// An aggregate's state, folded from the events a test gives.
pub struct Given<A> {
    pub state: A,
}

/// The state folded from `events`: the "given" of a test.
pub fn given<A: Aggregate>(events: impl IntoIterator<Item = A::Event>) -> Given<A> {
    let events: Vec<A::Event> = events.into_iter().collect();
    Given {
        state: A::fold(&events),
    }
}

impl<A: Aggregate> Given<A> {
    /// Decides `command` on the state.
    pub fn when(self, command: A::Command) -> When<A> {
        let result = self.state.decide(&command);
        When {
            state: self.state,
            result,
        }
    }
}

/// A decision, waiting for the test's verdict.
pub struct When<A: Aggregate> {
    state: A,
    result: Result<Vec<A::Event>, DomainError>,
}

impl<A: Aggregate> When<A>
where
    A::Event: PartialEq + Debug,
{
    /// The command was accepted with exactly `expected`; returns the state after them.
    #[track_caller]
    pub fn then_expect(self, expected: impl IntoIterator<Item = A::Event>) -> Given<A> {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        match self.result {
            Ok(events) => {
                assert_eq!(events, expected, "the command decided other events");
                let mut state = self.state;
                for e in &events {
                    state.evolve(e);
                }
                Given { state }
            }
            Err(e) => panic!("expected {expected:?}, the command was refused: {e:?}"),
        }
    }

    /// The command was refused with exactly `expected`; the state is unchanged.
    #[track_caller]
    pub fn then_refuse(self, expected: DomainError) -> Given<A> {
        match self.result {
            Err(e) => assert_eq!(e, expected, "refused for another reason"),
            Ok(events) => panic!("expected the refusal {expected:?}, the command was accepted: {events:?}"),
        }
        Given { state: self.state }
    }
}

/// Every bucket of one item, folded from `(bucket, event)`s: the "given" of a bucket decision.
pub struct GivenBuckets {
    pub stock: ItemStock,
}

pub fn given_buckets(events: impl IntoIterator<Item = (u32, InventoryEvent)>) -> GivenBuckets {
    let mut stock = ItemStock::new(vec![Inventory::default()]);
    for (k, e) in events {
        stock.evolve(k, &e);
    }
    GivenBuckets { stock }
}

impl GivenBuckets {
    /// Decides with `decision` on every bucket of the item.
    pub fn when(self, decision: impl FnOnce(&ItemStock) -> Result<BucketEvents, DomainError>) -> WhenBuckets {
        let result = decision(&self.stock);
        WhenBuckets {
            stock: self.stock,
            result,
        }
    }

    /// Units on sale in each bucket.
    pub fn per_bucket(&self) -> Vec<i64> {
        self.stock.buckets.iter().map(|b| b.available).collect()
    }
}

pub struct WhenBuckets {
    stock: ItemStock,
    result: Result<BucketEvents, DomainError>,
}

impl WhenBuckets {
    #[track_caller]
    pub fn then_expect(self, expected: impl IntoIterator<Item = (u32, InventoryEvent)>) -> GivenBuckets {
        let expected: Vec<(u32, InventoryEvent)> = expected.into_iter().collect();
        match self.result {
            Ok(events) => {
                assert_eq!(events, expected, "the decision was otherwise");
                let mut stock = self.stock;
                stock.evolve_all(&events);
                GivenBuckets { stock }
            }
            Err(e) => panic!("expected {expected:?}, refused: {e:?}"),
        }
    }

    #[track_caller]
    pub fn then_refuse(self, expected: DomainError) -> GivenBuckets {
        match self.result {
            Err(e) => assert_eq!(e, expected, "refused for another reason"),
            Ok(events) => panic!("expected the refusal {expected:?}, accepted: {events:?}"),
        }
        GivenBuckets { stock: self.stock }
    }
}

/// The stock of several SKUs, each folded from its own events: the "given" of a checkout.
pub struct GivenStock {
    inventories: BTreeMap<Sku, Inventory>,
    held: Held,
}

/// Every SKU named by `events`, each folded from the events of its own stream.
pub fn given_stock(events: impl IntoIterator<Item = InventoryEvent>) -> GivenStock {
    let mut inventories: BTreeMap<Sku, Inventory> = BTreeMap::new();
    for e in events {
        inventories.entry(e.sku().clone()).or_default().evolve(&e);
    }
    GivenStock {
        inventories,
        held: Held::new(),
    }
}

impl GivenStock {
    /// The customer already holds `units` of `sku` (counted against its purchase limit).
    pub fn holding(mut self, customer: &str, sku: &str, units: i64) -> Self {
        self.held.insert(
            (
                Sku::parse(sku).expect("valid SKU"),
                surge_events::CustomerId::parse(customer).expect("valid customer"),
            ),
            units,
        );
        self
    }

    /// A SKU whose stream has no events yet, as a store loads it (the empty state).
    pub fn with_empty_stream(mut self, sku: &str) -> Self {
        self.inventories
            .insert(Sku::parse(sku).expect("valid SKU"), Inventory::default());
        self
    }

    /// Decides the checkout of `order` against the stock.
    pub fn when(self, order: PlaceOrder) -> WhenPlaced {
        let before = self.inventories.clone();
        let mut inventories = self.inventories;
        let mut held = self.held;
        let result = place(&order, &mut inventories, &mut held);
        WhenPlaced {
            before,
            inventories,
            held,
            result,
        }
    }

    /// Units `customer` holds of `sku` as the checkout counted them.
    pub fn held(&self, customer: &str, sku: &str) -> i64 {
        self.held
            .get(&(
                Sku::parse(sku).expect("valid SKU"),
                surge_events::CustomerId::parse(customer).expect("valid customer"),
            ))
            .copied()
            .unwrap_or(0)
    }

    /// Units of `sku` on sale.
    #[track_caller]
    pub fn available(&self, sku: &str) -> i64 {
        self.inventory(sku).available
    }

    /// Units of `sku` held for orders.
    #[track_caller]
    pub fn reserved(&self, sku: &str) -> i64 {
        self.inventory(sku).reserved()
    }

    #[track_caller]
    fn inventory(&self, sku: &str) -> &Inventory {
        let sku = Sku::parse(sku).expect("valid SKU");
        self.inventories
            .get(&sku)
            .unwrap_or_else(|| panic!("{sku} was not given"))
    }
}

/// A checkout decision, waiting for the test's verdict.
pub struct WhenPlaced {
    before: BTreeMap<Sku, Inventory>,
    inventories: BTreeMap<Sku, Inventory>,
    held: Held,
    result: Result<Placement, DomainError>,
}

impl WhenPlaced {
    /// The order was placed: exactly `reservations` (each for its own SKU's stream) and
    /// `placed`, with its total. Returns the stock after the reservations.
    #[track_caller]
    pub fn then_expect(
        self,
        reservations: impl IntoIterator<Item = InventoryEvent>,
        placed: OrderPlaced,
    ) -> GivenStock {
        let reservations: Vec<InventoryEvent> = reservations.into_iter().collect();
        match self.result {
            Ok(placement) => {
                for (stream, _, e) in &placement.reservations {
                    assert_eq!(stream, e.sku(), "a reservation is for its own SKU's stream");
                }
                let decided: Vec<InventoryEvent> = placement.reservations.into_iter().map(|(_, _, e)| e).collect();
                assert_eq!(decided, reservations, "the checkout reserved otherwise");
                assert_eq!(placement.total, placed.total, "the checkout priced otherwise");
                assert_eq!(
                    placement.order,
                    vec![OrderEvent::OrderPlaced(placed)],
                    "the order was placed otherwise"
                );
            }
            Err(e) => panic!("expected the order placed, it was refused: {e:?}"),
        }
        GivenStock {
            inventories: self.inventories,
            held: self.held,
        }
    }

    /// The order was refused with exactly `expected`, and no SKU's stock changed.
    #[track_caller]
    pub fn then_refuse(self, expected: DomainError) -> GivenStock {
        match self.result {
            Err(e) => assert_eq!(e, expected, "refused for another reason"),
            Ok(placement) => panic!("expected the refusal {expected:?}, the order was placed: {placement:?}"),
        }
        assert_eq!(self.inventories, self.before, "a refused order touches no stock");
        GivenStock {
            inventories: self.inventories,
            held: self.held,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::InventoryCommand;
    use crate::order::{Order, OrderCommand};

    #[test]
    #[should_panic(expected = "the command was refused")]
    fn a_refusal_fails_then_expect() {
        given::<Order>([]).when(OrderCommand::ShipOrder).then_expect([]);
    }

    #[test]
    #[should_panic(expected = "the command was accepted")]
    fn an_acceptance_fails_then_refuse() {
        let release = InventoryCommand::ReleaseReservation {
            sku: Sku::parse("A").unwrap(),
            order_id: surge_events::OrderId::new(),
        };
        given::<Inventory>([])
            .when(release)
            .then_refuse(DomainError::AmountOverflow);
    }

    #[test]
    #[should_panic(expected = "refused for another reason")]
    fn another_refusal_fails_then_refuse() {
        given::<Order>([])
            .when(OrderCommand::ShipOrder)
            .then_refuse(DomainError::AmountOverflow);
    }
}
