//! The `Inventory` aggregate: one stock bucket of a catalog item (the item's only one unless it
//! was split, see [`crate::buckets`]).
//!
//! Bucket 0's stream holds the catalog entry and the item's [`Settings`] (how many buckets, the
//! purchase limit); a state of bucket `k >= 1` is folded from its own stream and then given the
//! entry and settings of bucket 0 ([`Inventory::in_bucket`]), so every bucket decides
//! reservations, releases, expiries and sales on its own stock exactly as an unsplit item does.
//!
//! Invariant: `available >= 0` and every unit is in exactly one of available, reserved (held for
//! an order until it is paid, released or expired) or sold; moves between buckets net to zero.

use crate::aggregate::Aggregate;
use crate::error::{DomainError, MAX_QUANTITY, MAX_RESTOCK};
use chrono::{DateTime, Utc};
use surge_events::inventory::{
    InventoryEvent, ItemAdded, PurchaseLimitSet, ReservationExpired, ReservationReleased, StockCommitted,
    StockReserved, StockRestocked,
};
use surge_events::{Money, OrderId, Sku};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub sku: Sku,
    pub name: String,
    pub category: String,
    pub price: Money,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    pub quantity: i64,
    pub expires_at: DateTime<Utc>,
}

/// The item's settings, kept in bucket 0's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// How many buckets the item's stock is split into now (1: not split).
    pub buckets: u32,
    /// The most buckets it was ever split into: buckets at or above `buckets` may still hold
    /// stock (holds placed before a shrink return there), so a definitive look reads them all.
    pub high_water: u32,
    /// The most units one customer may hold reserved or bought at once.
    pub max_per_customer: Option<i64>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            buckets: 1,
            high_water: 1,
            max_per_customer: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    pub item: Option<Item>,
    pub available: i64,
    /// Every unpaid hold, by order: a persistent map, so the lane's copy of a hot item's state
    /// per batch costs O(1) instead of O(holds) (tens of thousands in a flash sale).
    pub holds: imbl::OrdMap<OrderId, Hold>,
    pub sold: i64,
    /// Which bucket of the item this is the state of (0 unless [`Inventory::in_bucket`] said).
    pub bucket: u32,
    /// The item's settings: folded in bucket 0, given to the others by [`Inventory::in_bucket`].
    pub settings: Settings,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InventoryCommand {
    AddItem {
        sku: Sku,
        name: String,
        category: String,
        price: Money,
        initial_stock: i64,
    },
    Restock {
        sku: Sku,
        quantity: i64,
    },
    ReserveStock {
        sku: Sku,
        order_id: OrderId,
        quantity: i64,
        expires_at: DateTime<Utc>,
    },
    ReleaseReservation {
        sku: Sku,
        order_id: OrderId,
    },
    ExpireReservation {
        sku: Sku,
        order_id: OrderId,
        now: DateTime<Utc>,
    },
    CommitReservation {
        sku: Sku,
        order_id: OrderId,
    },
    /// Decided on bucket 0: `None` lifts the limit.
    SetPurchaseLimit {
        sku: Sku,
        max_per_customer: Option<i64>,
    },
}

impl Inventory {
    pub fn reserved(&self) -> i64 {
        self.holds.values().map(|h| h.quantity).sum()
    }

    /// This state (folded from the stream of bucket `bucket`) as that bucket of the item whose
    /// bucket 0 is `first`: the catalog entry and the settings are bucket 0's.
    pub fn in_bucket(mut self, bucket: u32, first: &Inventory) -> Inventory {
        self.bucket = bucket;
        if bucket != 0 {
            self.item = first.item.clone();
            self.settings = first.settings;
        }
        self
    }

    fn item(&self, sku: &Sku) -> Result<&Item, DomainError> {
        self.item
            .as_ref()
            .ok_or_else(|| DomainError::UnknownItem { sku: sku.clone() })
    }
}

fn check_text(field: &'static str, s: &str, max: usize) -> Result<(), DomainError> {
    if s.trim().is_empty() || s.chars().count() > max || s.chars().any(char::is_control) {
        return Err(DomainError::InvalidField {
            field,
            reason: format!("must be 1 to {max} printable characters"),
        });
    }
    Ok(())
}

impl Aggregate for Inventory {
    type Command = InventoryCommand;
    type Event = InventoryEvent;

    fn decide(&self, command: &InventoryCommand) -> Result<Vec<InventoryEvent>, DomainError> {
        use InventoryCommand as C;
        match command {
            C::AddItem {
                sku,
                name,
                category,
                price,
                initial_stock,
            } => {
                if self.item.is_some() {
                    return Err(DomainError::ItemAlreadyExists { sku: sku.clone() });
                }
                check_text("name", name, 200)?;
                check_text("category", category, 64)?;
                if !(0..=MAX_RESTOCK).contains(initial_stock) {
                    return Err(DomainError::InvalidQuantity {
                        quantity: *initial_stock,
                        max: MAX_RESTOCK,
                    });
                }
                Ok(vec![InventoryEvent::ItemAdded(ItemAdded {
                    sku: sku.clone(),
                    name: name.clone(),
                    category: category.clone(),
                    price: price.clone(),
                    initial_stock: *initial_stock,
                })])
            }
            C::Restock { sku, quantity } => {
                self.item(sku)?;
                if !(1..=MAX_RESTOCK).contains(quantity) {
                    return Err(DomainError::InvalidQuantity {
                        quantity: *quantity,
                        max: MAX_RESTOCK,
                    });
                }
                if self.available.checked_add(*quantity).is_none() {
                    return Err(DomainError::AmountOverflow);
                }
                Ok(vec![InventoryEvent::StockRestocked(StockRestocked {
                    sku: sku.clone(),
                    quantity: *quantity,
                })])
            }
            C::ReserveStock {
                sku,
                order_id,
                quantity,
                expires_at,
            } => {
                self.item(sku)?;
                if !(1..=MAX_QUANTITY).contains(quantity) {
                    return Err(DomainError::InvalidQuantity {
                        quantity: *quantity,
                        max: MAX_QUANTITY,
                    });
                }
                if self.holds.contains_key(order_id) {
                    return Err(DomainError::AlreadyReserved {
                        sku: sku.clone(),
                        order_id: *order_id,
                    });
                }
                if *quantity > self.available {
                    return Err(DomainError::OutOfStock {
                        sku: sku.clone(),
                        requested: *quantity,
                        available: self.available,
                    });
                }
                Ok(vec![InventoryEvent::StockReserved(StockReserved {
                    sku: sku.clone(),
                    order_id: *order_id,
                    quantity: *quantity,
                    expires_at: *expires_at,
                })])
            }
            // Releasing what is not held is a no-op: cancel and expiry may race, both are fine.
            C::ReleaseReservation { sku, order_id } => Ok(self
                .holds
                .get(order_id)
                .map(|h| {
                    InventoryEvent::ReservationReleased(ReservationReleased {
                        sku: sku.clone(),
                        order_id: *order_id,
                        quantity: h.quantity,
                    })
                })
                .into_iter()
                .collect()),
            C::ExpireReservation { sku, order_id, now } => match self.holds.get(order_id) {
                None => Ok(vec![]),
                Some(h) if h.expires_at > *now => Err(DomainError::ReservationNotDue {
                    sku: sku.clone(),
                    order_id: *order_id,
                }),
                Some(h) => Ok(vec![InventoryEvent::ReservationExpired(ReservationExpired {
                    sku: sku.clone(),
                    order_id: *order_id,
                    quantity: h.quantity,
                })]),
            },
            C::CommitReservation { sku, order_id } => {
                let item = self.item(sku)?;
                let hold = self.holds.get(order_id).ok_or_else(|| DomainError::NoReservation {
                    sku: sku.clone(),
                    order_id: *order_id,
                })?;
                Ok(vec![InventoryEvent::StockCommitted(StockCommitted {
                    sku: sku.clone(),
                    order_id: *order_id,
                    quantity: hold.quantity,
                    unit_price: item.price.clone(),
                })])
            }
            C::SetPurchaseLimit { sku, max_per_customer } => {
                self.item(sku)?;
                check_purchase_limit(*max_per_customer)?;
                Ok(vec![InventoryEvent::PurchaseLimitSet(PurchaseLimitSet {
                    sku: sku.clone(),
                    max_per_customer: *max_per_customer,
                })])
            }
        }
    }

    fn evolve(&mut self, event: &InventoryEvent) {
        match event {
            InventoryEvent::ItemAdded(e) => {
                self.item = Some(Item {
                    sku: e.sku.clone(),
                    name: e.name.clone(),
                    category: e.category.clone(),
                    price: e.price.clone(),
                });
                self.available = e.initial_stock;
            }
            InventoryEvent::StockRestocked(e) => self.available += e.quantity,
            InventoryEvent::StockReserved(e) => {
                self.available -= e.quantity;
                self.holds.insert(
                    e.order_id,
                    Hold {
                        quantity: e.quantity,
                        expires_at: e.expires_at,
                    },
                );
            }
            InventoryEvent::ReservationReleased(ReservationReleased { order_id, quantity, .. })
            | InventoryEvent::ReservationExpired(ReservationExpired { order_id, quantity, .. }) => {
                if self.holds.remove(order_id).is_some() {
                    self.available += quantity;
                }
            }
            InventoryEvent::StockCommitted(e) => {
                if self.holds.remove(&e.order_id).is_some() {
                    self.sold += e.quantity;
                }
            }
            InventoryEvent::BucketsChanged(e) => {
                self.settings.buckets = e.buckets;
                self.settings.high_water = self.settings.high_water.max(e.buckets);
            }
            InventoryEvent::PurchaseLimitSet(e) => self.settings.max_per_customer = e.max_per_customer,
            InventoryEvent::StockMovedOut(e) => self.available -= e.quantity,
            InventoryEvent::StockMovedIn(e) => self.available += e.quantity,
        }
    }
}

/// A purchase limit is at least one unit and at most what an item can hold.
pub(crate) fn check_purchase_limit(limit: Option<i64>) -> Result<(), DomainError> {
    match limit {
        Some(value) if !(1..=MAX_RESTOCK).contains(&value) => Err(DomainError::InvalidPurchaseLimit {
            value,
            max: MAX_RESTOCK,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::given;
    use chrono::Duration;
    use proptest::prelude::*;
    use surge_events::Currency;

    fn sku() -> Sku {
        Sku::parse("SKU-1").unwrap()
    }
    fn eur(minor: i64) -> Money {
        Money::new(minor, Currency::parse("EUR").unwrap()).unwrap()
    }
    fn added(stock: i64) -> InventoryEvent {
        InventoryEvent::ItemAdded(ItemAdded {
            sku: sku(),
            name: "Sneaker".into(),
            category: "shoes".into(),
            price: eur(9_900),
            initial_stock: stock,
        })
    }
    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }
    fn reserve(order_id: OrderId, quantity: i64) -> InventoryCommand {
        InventoryCommand::ReserveStock {
            sku: sku(),
            order_id,
            quantity,
            expires_at: t0() + Duration::minutes(15),
        }
    }
    fn reserved(order_id: OrderId, quantity: i64) -> InventoryEvent {
        InventoryEvent::StockReserved(StockReserved {
            sku: sku(),
            order_id,
            quantity,
            expires_at: t0() + Duration::minutes(15),
        })
    }

    #[test]
    fn adding_an_item_twice_is_refused() {
        let state = Inventory::fold(&[added(5)]);
        let cmd = InventoryCommand::AddItem {
            sku: sku(),
            name: "x".into(),
            category: "y".into(),
            price: eur(1),
            initial_stock: 1,
        };
        assert!(matches!(state.decide(&cmd), Err(DomainError::ItemAlreadyExists { .. })));
    }

    #[test]
    fn adding_an_item_checks_name_and_stock() {
        let state = Inventory::default();
        let mut cmd = InventoryCommand::AddItem {
            sku: sku(),
            name: " ".into(),
            category: "y".into(),
            price: eur(1),
            initial_stock: 1,
        };
        assert!(matches!(
            state.decide(&cmd),
            Err(DomainError::InvalidField { field: "name", .. })
        ));
        if let InventoryCommand::AddItem {
            name, initial_stock, ..
        } = &mut cmd
        {
            *name = "ok".into();
            *initial_stock = -1;
        }
        assert!(matches!(state.decide(&cmd), Err(DomainError::InvalidQuantity { .. })));
    }

    #[test]
    fn reserving_takes_from_available() {
        let order = OrderId::new();
        let state = Inventory::fold(&[added(5)]);
        let events = state.decide(&reserve(order, 3)).unwrap();
        assert_eq!(events, vec![reserved(order, 3)]);
        let mut after = state.clone();
        after.evolve(&events[0]);
        assert_eq!((after.available, after.reserved()), (2, 3));
    }

    #[test]
    fn cannot_reserve_more_than_available() {
        let state = Inventory::fold(&[added(5), reserved(OrderId::new(), 4)]);
        assert_eq!(
            state.decide(&reserve(OrderId::new(), 2)),
            Err(DomainError::OutOfStock {
                sku: sku(),
                requested: 2,
                available: 1
            })
        );
    }

    #[test]
    fn quantities_must_be_positive() {
        let state = Inventory::fold(&[added(5)]);
        for q in [0, -1, MAX_QUANTITY + 1] {
            assert!(matches!(
                state.decide(&reserve(OrderId::new(), q)),
                Err(DomainError::InvalidQuantity { .. })
            ));
        }
        let restock = InventoryCommand::Restock {
            sku: sku(),
            quantity: 0,
        };
        assert!(matches!(
            state.decide(&restock),
            Err(DomainError::InvalidQuantity { .. })
        ));
    }

    #[test]
    fn unknown_item_cannot_be_reserved_or_restocked() {
        let state = Inventory::default();
        assert!(matches!(
            state.decide(&reserve(OrderId::new(), 1)),
            Err(DomainError::UnknownItem { .. })
        ));
        let restock = InventoryCommand::Restock {
            sku: sku(),
            quantity: 1,
        };
        assert!(matches!(state.decide(&restock), Err(DomainError::UnknownItem { .. })));
    }

    #[test]
    fn one_order_reserves_a_sku_once() {
        let order = OrderId::new();
        let state = Inventory::fold(&[added(5), reserved(order, 1)]);
        assert!(matches!(
            state.decide(&reserve(order, 1)),
            Err(DomainError::AlreadyReserved { .. })
        ));
    }

    #[test]
    fn release_returns_stock_and_is_idempotent() {
        let order = OrderId::new();
        let mut state = Inventory::fold(&[added(5), reserved(order, 2)]);
        let cmd = InventoryCommand::ReleaseReservation {
            sku: sku(),
            order_id: order,
        };
        let events = state.decide(&cmd).unwrap();
        assert_eq!(events.len(), 1);
        state.evolve(&events[0]);
        assert_eq!((state.available, state.reserved()), (5, 0));
        assert_eq!(state.decide(&cmd).unwrap(), vec![]);
    }

    #[test]
    fn expiry_only_when_due_and_only_once() {
        let order = OrderId::new();
        let mut state = Inventory::fold(&[added(5), reserved(order, 2)]);
        let early = InventoryCommand::ExpireReservation {
            sku: sku(),
            order_id: order,
            now: t0(),
        };
        assert!(matches!(
            state.decide(&early),
            Err(DomainError::ReservationNotDue { .. })
        ));
        let due = InventoryCommand::ExpireReservation {
            sku: sku(),
            order_id: order,
            now: t0() + Duration::minutes(16),
        };
        let events = state.decide(&due).unwrap();
        assert!(matches!(events[..], [InventoryEvent::ReservationExpired(_)]));
        state.evolve(&events[0]);
        assert_eq!(state.available, 5);
        assert_eq!(state.decide(&due).unwrap(), vec![]);
    }

    #[test]
    fn commit_sells_held_stock_only() {
        let order = OrderId::new();
        let mut state = Inventory::fold(&[added(5), reserved(order, 2)]);
        let cmd = InventoryCommand::CommitReservation {
            sku: sku(),
            order_id: order,
        };
        let events = state.decide(&cmd).unwrap();
        state.evolve(&events[0]);
        assert_eq!((state.available, state.reserved(), state.sold), (3, 0, 2));
        assert!(matches!(state.decide(&cmd), Err(DomainError::NoReservation { .. })));
    }

    // Given/when/then: every command accepted, and every refusal.

    fn add(name: &str, category: &str, initial_stock: i64) -> InventoryCommand {
        InventoryCommand::AddItem {
            sku: sku(),
            name: name.into(),
            category: category.into(),
            price: eur(9_900),
            initial_stock,
        }
    }
    fn restock(quantity: i64) -> InventoryCommand {
        InventoryCommand::Restock { sku: sku(), quantity }
    }
    fn order(n: u128) -> OrderId {
        OrderId(uuid::Uuid::from_u128(n))
    }
    fn expire(order_id: OrderId, now: DateTime<Utc>) -> InventoryCommand {
        InventoryCommand::ExpireReservation {
            sku: sku(),
            order_id,
            now,
        }
    }

    #[test]
    fn add_item_opens_the_catalog_entry_with_its_stock() {
        for stock in [0, 5, MAX_RESTOCK] {
            let after = given::<Inventory>([])
                .when(add("Sneaker", "shoes", stock))
                .then_expect([added(stock)]);
            assert_eq!(after.state.available, stock);
        }
    }

    #[test]
    fn add_item_refusals() {
        given::<Inventory>([added(5)])
            .when(add("Sneaker", "shoes", 1))
            .then_refuse(DomainError::ItemAlreadyExists { sku: sku() });
        let long_name = "n".repeat(201);
        for name in ["", "  ", "bell\u{7}", long_name.as_str()] {
            given::<Inventory>([])
                .when(add(name, "shoes", 1))
                .then_refuse(DomainError::InvalidField {
                    field: "name",
                    reason: "must be 1 to 200 printable characters".into(),
                });
        }
        let long_category = "c".repeat(65);
        for category in ["", "tab\tbed", long_category.as_str()] {
            given::<Inventory>([])
                .when(add("Sneaker", category, 1))
                .then_refuse(DomainError::InvalidField {
                    field: "category",
                    reason: "must be 1 to 64 printable characters".into(),
                });
        }
        for quantity in [-1, MAX_RESTOCK + 1] {
            given::<Inventory>([])
                .when(add("Sneaker", "shoes", quantity))
                .then_refuse(DomainError::InvalidQuantity {
                    quantity,
                    max: MAX_RESTOCK,
                });
        }
    }

    #[test]
    fn restock_adds_to_available() {
        let after = given::<Inventory>([added(5), reserved(order(1), 2)])
            .when(restock(10))
            .then_expect([InventoryEvent::StockRestocked(StockRestocked {
                sku: sku(),
                quantity: 10,
            })]);
        assert_eq!((after.state.available, after.state.reserved()), (13, 2));
    }

    #[test]
    fn restock_refusals() {
        given::<Inventory>([])
            .when(restock(1))
            .then_refuse(DomainError::UnknownItem { sku: sku() });
        for quantity in [0, -3, MAX_RESTOCK + 1] {
            given::<Inventory>([added(5)])
                .when(restock(quantity))
                .then_refuse(DomainError::InvalidQuantity {
                    quantity,
                    max: MAX_RESTOCK,
                });
        }
        given::<Inventory>([added(i64::MAX - 1)])
            .when(restock(2))
            .then_refuse(DomainError::AmountOverflow);
    }

    #[test]
    fn reserve_stock_holds_units_for_the_order_until_its_deadline() {
        let after = given::<Inventory>([added(5)])
            .when(reserve(order(1), 5))
            .then_expect([reserved(order(1), 5)]);
        assert_eq!(after.state.available, 0);
        assert_eq!(
            after.state.holds.get(&order(1)),
            Some(&Hold {
                quantity: 5,
                expires_at: t0() + Duration::minutes(15)
            })
        );
    }

    #[test]
    fn reserve_stock_refusals() {
        given::<Inventory>([])
            .when(reserve(order(1), 1))
            .then_refuse(DomainError::UnknownItem { sku: sku() });
        for quantity in [0, -1, MAX_QUANTITY + 1] {
            given::<Inventory>([added(MAX_RESTOCK)])
                .when(reserve(order(1), quantity))
                .then_refuse(DomainError::InvalidQuantity {
                    quantity,
                    max: MAX_QUANTITY,
                });
        }
        given::<Inventory>([added(5), reserved(order(1), 1)])
            .when(reserve(order(1), 1))
            .then_refuse(DomainError::AlreadyReserved {
                sku: sku(),
                order_id: order(1),
            });
        given::<Inventory>([added(5), reserved(order(1), 3)])
            .when(reserve(order(2), 3))
            .then_refuse(DomainError::OutOfStock {
                sku: sku(),
                requested: 3,
                available: 2,
            });
    }

    #[test]
    fn release_reservation_puts_the_held_units_back_or_does_nothing() {
        let release = InventoryCommand::ReleaseReservation {
            sku: sku(),
            order_id: order(1),
        };
        let after = given::<Inventory>([added(5), reserved(order(1), 2), reserved(order(2), 1)])
            .when(release.clone())
            .then_expect([InventoryEvent::ReservationReleased(ReservationReleased {
                sku: sku(),
                order_id: order(1),
                quantity: 2,
            })]);
        assert_eq!((after.state.available, after.state.reserved()), (4, 1));
        after.when(release.clone()).then_expect([]);
        given::<Inventory>([]).when(release).then_expect([]);
    }

    #[test]
    fn expire_reservation_puts_the_units_back_once_due() {
        let after = given::<Inventory>([added(5), reserved(order(1), 2)])
            .when(expire(order(1), t0() + Duration::minutes(15)))
            .then_expect([InventoryEvent::ReservationExpired(ReservationExpired {
                sku: sku(),
                order_id: order(1),
                quantity: 2,
            })]);
        assert_eq!(after.state.available, 5);
        after.when(expire(order(1), t0() + Duration::hours(1))).then_expect([]);
    }

    #[test]
    fn expire_reservation_refuses_a_hold_not_yet_due() {
        given::<Inventory>([added(5), reserved(order(1), 2)])
            .when(expire(order(1), t0() + Duration::minutes(15) - Duration::seconds(1)))
            .then_refuse(DomainError::ReservationNotDue {
                sku: sku(),
                order_id: order(1),
            });
    }

    #[test]
    fn commit_reservation_sells_the_held_units_at_the_catalog_price() {
        let after = given::<Inventory>([added(5), reserved(order(1), 2)])
            .when(InventoryCommand::CommitReservation {
                sku: sku(),
                order_id: order(1),
            })
            .then_expect([InventoryEvent::StockCommitted(StockCommitted {
                sku: sku(),
                order_id: order(1),
                quantity: 2,
                unit_price: eur(9_900),
            })]);
        assert_eq!(
            (after.state.available, after.state.reserved(), after.state.sold),
            (3, 0, 2)
        );
    }

    #[test]
    fn commit_reservation_refusals() {
        let commit = InventoryCommand::CommitReservation {
            sku: sku(),
            order_id: order(1),
        };
        given::<Inventory>([])
            .when(commit.clone())
            .then_refuse(DomainError::UnknownItem { sku: sku() });
        given::<Inventory>([added(5), reserved(order(2), 1)])
            .when(commit)
            .then_refuse(DomainError::NoReservation {
                sku: sku(),
                order_id: order(1),
            });
    }

    fn any_command() -> impl Strategy<Value = InventoryCommand> {
        let order = (0u8..6).prop_map(|n| OrderId(uuid::Uuid::from_u128(n as u128 + 1)));
        prop_oneof![
            (-5i64..50).prop_map(|q| InventoryCommand::Restock {
                sku: sku(),
                quantity: q
            }),
            (order.clone(), -3i64..20).prop_map(|(o, q)| reserve(o, q)),
            order.clone().prop_map(|o| InventoryCommand::ReleaseReservation {
                sku: sku(),
                order_id: o
            }),
            (order.clone(), 0i64..40).prop_map(|(o, m)| InventoryCommand::ExpireReservation {
                sku: sku(),
                order_id: o,
                now: t0() + Duration::minutes(m),
            }),
            order.prop_map(|o| InventoryCommand::CommitReservation {
                sku: sku(),
                order_id: o
            }),
        ]
    }

    proptest! {
        #[test]
        fn random_commands_never_make_stock_negative(
            initial in 0i64..30,
            commands in proptest::collection::vec(any_command(), 0..80),
        ) {
            let mut state = Inventory::fold(&[added(initial)]);
            let mut total = initial;
            for cmd in &commands {
                if let Ok(events) = state.decide(cmd) {
                    for e in &events {
                        if let InventoryEvent::StockRestocked(r) = e { total += r.quantity; }
                        state.evolve(e);
                    }
                }
                prop_assert!(state.available >= 0);
                prop_assert!(state.holds.values().all(|h| h.quantity > 0));
                // Conservation: every unit is available, held or sold.
                prop_assert_eq!(state.available + state.reserved() + state.sold, total);
            }
        }
    }
}
