//! An item's stock split into buckets: decisions that span several of an item's bucket streams.
//!
//! Each bucket is an [`Inventory`] of its own stream; bucket 0 also holds the catalog entry and
//! the item's settings. [`ItemStock`] is every bucket of one item as loaded under all their
//! locks: it adds an item split from the start ([`ItemStock::add_item`]), spreads a restock over
//! the buckets ([`ItemStock::restock`]), changes how many buckets there are
//! ([`ItemStock::set_buckets`]: available stock is spread over the new buckets by move pairs,
//! holds stay where they are) and moves stock between two buckets ([`ItemStock::move_stock`]).
//! Every decision returns `(bucket, event)` pairs: each event goes to that bucket's stream, all
//! of them in one transaction. [`preferred_bucket`] says which bucket a command API instance
//! takes from first.

use crate::error::{DomainError, MAX_BUCKETS, MAX_RESTOCK};
use crate::inventory::{check_purchase_limit, Inventory, InventoryCommand};
use crate::Aggregate;
use surge_events::inventory::{BucketsChanged, PurchaseLimitSet, StockMovedIn, StockMovedOut, StockRestocked};
use surge_events::{InventoryEvent, Money, Sku};

/// Events decided for an item's buckets: each for the stream of its bucket, in append order.
pub type BucketEvents = Vec<(u32, InventoryEvent)>;

/// Every bucket of one item, `buckets[k]` the state of bucket `k` (bucket 0 first). Whoever
/// builds it loads buckets `0..max(settings.high_water, ...)` under their locks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ItemStock {
    pub buckets: Vec<Inventory>,
}

/// A new item, as an admin adds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewItem {
    pub sku: Sku,
    pub name: String,
    pub category: String,
    pub price: Money,
    pub initial_stock: i64,
    pub buckets: u32,
    pub max_per_customer: Option<i64>,
}

impl ItemStock {
    /// The item from the states of its bucket streams (`states[k]` folded from bucket `k`'s
    /// stream): every bucket gets bucket 0's catalog entry and settings.
    pub fn new(states: Vec<Inventory>) -> Self {
        let first = states.first().cloned().unwrap_or_default();
        ItemStock {
            buckets: states
                .into_iter()
                .enumerate()
                .map(|(k, s)| s.in_bucket(k as u32, &first))
                .collect(),
        }
    }

    /// The item's settings (bucket 0's).
    pub fn settings(&self) -> crate::inventory::Settings {
        self.buckets.first().map(|b| b.settings).unwrap_or_default()
    }

    /// How many bucket streams a definitive look at the item reads: every bucket it has now or
    /// ever had (a shrunk item's old buckets may hold stock again once their holds return).
    pub fn streams(&self) -> u32 {
        let s = self.settings();
        s.buckets.max(s.high_water).max(1)
    }

    pub fn available(&self) -> i64 {
        self.buckets.iter().map(|b| b.available).sum()
    }
    pub fn reserved(&self) -> i64 {
        self.buckets.iter().map(Inventory::reserved).sum()
    }
    pub fn sold(&self) -> i64 {
        self.buckets.iter().map(|b| b.sold).sum()
    }

    /// Folds an event of bucket `bucket`'s stream (a bucket not loaded yet starts empty).
    pub fn evolve(&mut self, bucket: u32, event: &InventoryEvent) {
        self.grow_to(bucket as usize + 1);
        self.buckets[bucket as usize].evolve(event);
        if bucket == 0 {
            // Bucket 0's catalog entry and settings are every bucket's.
            let first = self.buckets[0].clone();
            for (j, b) in self.buckets.iter_mut().enumerate().skip(1) {
                *b = std::mem::take(b).in_bucket(j as u32, &first);
            }
            self.grow_to(self.streams() as usize);
        }
    }

    /// Empty states for the buckets up to `len` not loaded yet (their streams have no events).
    fn grow_to(&mut self, len: usize) {
        if self.buckets.is_empty() {
            self.buckets.push(Inventory::default());
        }
        while self.buckets.len() < len {
            let k = self.buckets.len() as u32;
            let state = Inventory::default().in_bucket(k, &self.buckets[0]);
            self.buckets.push(state);
        }
    }

    /// Folds `events` in order.
    pub fn evolve_all(&mut self, events: &[(u32, InventoryEvent)]) {
        for (k, e) in events {
            self.evolve(*k, e);
        }
    }

    fn first(&self, sku: &Sku) -> Result<&Inventory, DomainError> {
        self.buckets
            .first()
            .filter(|b| b.item.is_some())
            .ok_or_else(|| DomainError::UnknownItem { sku: sku.clone() })
    }

    /// Adds the item: `ItemAdded` (the whole opening stock in bucket 0), its settings when they
    /// are not the defaults, and the moves that spread the opening stock over its buckets.
    pub fn add_item(&self, item: &NewItem) -> Result<BucketEvents, DomainError> {
        check_buckets(item.buckets as i64)?;
        check_purchase_limit(item.max_per_customer)?;
        let first = self.buckets.first().cloned().unwrap_or_default();
        let mut events: BucketEvents = first
            .decide(&InventoryCommand::AddItem {
                sku: item.sku.clone(),
                name: item.name.clone(),
                category: item.category.clone(),
                price: item.price.clone(),
                initial_stock: item.initial_stock,
            })?
            .into_iter()
            .map(|e| (0, e))
            .collect();
        if item.buckets != 1 {
            events.push((
                0,
                InventoryEvent::BucketsChanged(BucketsChanged {
                    sku: item.sku.clone(),
                    buckets: item.buckets,
                }),
            ));
        }
        if item.max_per_customer.is_some() {
            events.push((
                0,
                InventoryEvent::PurchaseLimitSet(PurchaseLimitSet {
                    sku: item.sku.clone(),
                    max_per_customer: item.max_per_customer,
                }),
            ));
        }
        let mut after = self.clone();
        after.evolve_all(&events);
        events.extend(after.rebalance(&item.sku));
        Ok(events)
    }

    /// Adds `quantity` units, spread evenly over the buckets (the remainder to the lowest).
    pub fn restock(&self, sku: &Sku, quantity: i64) -> Result<BucketEvents, DomainError> {
        self.first(sku)?;
        if !(1..=MAX_RESTOCK).contains(&quantity) {
            return Err(DomainError::InvalidQuantity {
                quantity,
                max: MAX_RESTOCK,
            });
        }
        let k = self.settings().buckets.max(1);
        let mut events = Vec::new();
        for (bucket, share) in spread(quantity, k).into_iter().enumerate() {
            if share == 0 {
                continue;
            }
            let state = self.buckets.get(bucket).cloned().unwrap_or_default();
            if state.available.checked_add(share).is_none() || self.available().checked_add(quantity).is_none() {
                return Err(DomainError::AmountOverflow);
            }
            events.push((
                bucket as u32,
                InventoryEvent::StockRestocked(StockRestocked {
                    sku: sku.clone(),
                    quantity: share,
                }),
            ));
        }
        Ok(events)
    }

    /// Splits the item into `buckets` buckets from now on: `BucketsChanged`, then the moves
    /// that spread the available stock evenly over them (a removed bucket's available stock
    /// goes to the remaining ones). Holds stay in the bucket that took them and return there.
    /// Needs every bucket the item has or will have loaded (`0..max(streams(), buckets)`).
    pub fn set_buckets(&self, sku: &Sku, buckets: i64) -> Result<BucketEvents, DomainError> {
        self.first(sku)?;
        check_buckets(buckets)?;
        let mut events = vec![(
            0,
            InventoryEvent::BucketsChanged(BucketsChanged {
                sku: sku.clone(),
                buckets: buckets as u32,
            }),
        )];
        let mut after = self.clone();
        after.evolve_all(&events);
        events.extend(after.rebalance(sku));
        Ok(events)
    }

    /// Sets (or with `None` lifts) the most units one customer may hold of the item.
    pub fn set_purchase_limit(&self, sku: &Sku, max_per_customer: Option<i64>) -> Result<BucketEvents, DomainError> {
        let first = self.buckets.first().cloned().unwrap_or_default();
        Ok(first
            .decide(&InventoryCommand::SetPurchaseLimit {
                sku: sku.clone(),
                max_per_customer,
            })?
            .into_iter()
            .map(|e| (0, e))
            .collect())
    }

    /// Moves `quantity` available units from bucket `from` to bucket `to`: the pair of events.
    pub fn move_stock(&self, sku: &Sku, from: u32, to: u32, quantity: i64) -> Result<BucketEvents, DomainError> {
        self.first(sku)?;
        if from == to || to >= self.streams().max(self.settings().buckets) {
            return Err(DomainError::InvalidField {
                field: "to_bucket",
                reason: "must be another bucket of the item".into(),
            });
        }
        let available = self.buckets.get(from as usize).map_or(0, |b| b.available);
        if quantity < 1 {
            return Err(DomainError::InvalidQuantity {
                quantity,
                max: MAX_RESTOCK,
            });
        }
        if quantity > available {
            return Err(DomainError::OutOfStock {
                sku: sku.clone(),
                requested: quantity,
                available,
            });
        }
        Ok(move_pair(sku, from, to, quantity).to_vec())
    }

    /// The moves that bring every bucket's available stock to an even share of the total over
    /// the current buckets (0 for buckets at or above it), largest surplus first.
    fn rebalance(&self, sku: &Sku) -> BucketEvents {
        let k = self.settings().buckets.max(1) as usize;
        let n = self.buckets.len().max(k);
        let targets = spread(self.available(), k as u32);
        let mut balance: Vec<i64> = (0..n)
            .map(|i| {
                let have = self.buckets.get(i).map_or(0, |b| b.available);
                have - targets.get(i).copied().unwrap_or(0)
            })
            .collect();
        let mut events = Vec::new();
        for to in 0..n {
            while balance[to] < 0 {
                let Some(from) = (0..n)
                    .filter(|&i| balance[i] > 0)
                    .max_by_key(|&i| (balance[i], usize::MAX - i))
                else {
                    break;
                };
                let q = balance[from].min(-balance[to]);
                balance[from] -= q;
                balance[to] += q;
                events.extend(move_pair(sku, from as u32, to as u32, q));
            }
        }
        events
    }
}

/// `quantity` split over `buckets` parts as evenly as can be, the remainder to the lowest.
pub fn spread(quantity: i64, buckets: u32) -> Vec<i64> {
    let k = i64::from(buckets.max(1));
    (0..k).map(|i| quantity / k + i64::from(i < quantity % k)).collect()
}

fn move_pair(sku: &Sku, from: u32, to: u32, quantity: i64) -> [(u32, InventoryEvent); 2] {
    [
        (
            from,
            InventoryEvent::StockMovedOut(StockMovedOut {
                sku: sku.clone(),
                to_bucket: to,
                quantity,
            }),
        ),
        (
            to,
            InventoryEvent::StockMovedIn(StockMovedIn {
                sku: sku.clone(),
                from_bucket: from,
                quantity,
            }),
        ),
    ]
}

fn check_buckets(buckets: i64) -> Result<(), DomainError> {
    if (1..=i64::from(MAX_BUCKETS)).contains(&buckets) {
        Ok(())
    } else {
        Err(DomainError::InvalidBuckets {
            buckets,
            max: MAX_BUCKETS,
        })
    }
}

/// The bucket of `sku` (split into `buckets`) that the command API instance `instance` takes
/// from first. Stable across processes, restarts and Rust versions (FNV-1a, not the standard
/// library's randomly keyed hasher). An instance id ending in a number `n` (`cmd-0`, a
/// StatefulSet's `surge-command-2`) takes bucket `(n + h(sku)) mod buckets`, so N numbered
/// instances with N <= buckets never share a bucket of any item; any other id takes
/// `h(id, sku) mod buckets`.
pub fn preferred_bucket(instance: &str, sku: &Sku, buckets: u32) -> u32 {
    let k = u64::from(buckets.max(1));
    let digits = instance.len() - instance.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let ordinal = instance[instance.len() - digits..]
        .parse::<u64>()
        .ok()
        .filter(|_| digits > 0 && digits <= 9);
    let h = match ordinal {
        Some(n) => (n % k) + fnv1a(&[sku.as_str().as_bytes()]) % k,
        None => fnv1a(&[instance.as_bytes(), b"\0", sku.as_str().as_bytes()]),
    };
    (h % k) as u32
}

fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::given_buckets;
    use surge_events::inventory::ItemAdded;
    use surge_events::{Currency, OrderId};

    fn sku() -> Sku {
        Sku::parse("HOT").unwrap()
    }
    fn eur(minor: i64) -> Money {
        Money::new(minor, Currency::parse("EUR").unwrap()).unwrap()
    }
    fn new_item(stock: i64, buckets: u32, limit: Option<i64>) -> NewItem {
        NewItem {
            sku: sku(),
            name: "Hot".into(),
            category: "shoes".into(),
            price: eur(100),
            initial_stock: stock,
            buckets,
            max_per_customer: limit,
        }
    }
    fn added(stock: i64) -> InventoryEvent {
        InventoryEvent::ItemAdded(ItemAdded {
            sku: sku(),
            name: "Hot".into(),
            category: "shoes".into(),
            price: eur(100),
            initial_stock: stock,
        })
    }
    fn changed(buckets: u32) -> InventoryEvent {
        InventoryEvent::BucketsChanged(BucketsChanged { sku: sku(), buckets })
    }
    fn out(to: u32, q: i64) -> InventoryEvent {
        InventoryEvent::StockMovedOut(StockMovedOut {
            sku: sku(),
            to_bucket: to,
            quantity: q,
        })
    }
    fn into(from: u32, q: i64) -> InventoryEvent {
        InventoryEvent::StockMovedIn(StockMovedIn {
            sku: sku(),
            from_bucket: from,
            quantity: q,
        })
    }
    fn restocked(q: i64) -> InventoryEvent {
        InventoryEvent::StockRestocked(StockRestocked {
            sku: sku(),
            quantity: q,
        })
    }
    fn reserved(order: u128, q: i64) -> InventoryEvent {
        InventoryEvent::StockReserved(surge_events::inventory::StockReserved {
            sku: sku(),
            order_id: OrderId(uuid::Uuid::from_u128(order)),
            quantity: q,
            expires_at: chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
        })
    }

    #[test]
    fn spread_is_even_with_the_remainder_to_the_lowest() {
        assert_eq!(spread(10, 3), vec![4, 3, 3]);
        assert_eq!(spread(2, 3), vec![1, 1, 0]);
        assert_eq!(spread(9, 1), vec![9]);
        assert_eq!(spread(0, 2), vec![0, 0]);
    }

    #[test]
    fn an_item_added_with_buckets_spreads_its_opening_stock_by_move_pairs() {
        let after = given_buckets([])
            .when(|s| s.add_item(&new_item(10, 3, Some(2))))
            .then_expect([
                (0, added(10)),
                (0, changed(3)),
                (
                    0,
                    InventoryEvent::PurchaseLimitSet(PurchaseLimitSet {
                        sku: sku(),
                        max_per_customer: Some(2),
                    }),
                ),
                (0, out(1, 3)),
                (1, into(0, 3)),
                (0, out(2, 3)),
                (2, into(0, 3)),
            ]);
        assert_eq!(after.per_bucket(), vec![4, 3, 3]);
        assert_eq!(after.stock.settings().max_per_customer, Some(2));
        assert_eq!(
            after.stock.buckets[2].item, after.stock.buckets[0].item,
            "every bucket knows the item"
        );
    }

    #[test]
    fn an_item_added_plainly_is_one_bucket_as_before() {
        given_buckets([])
            .when(|s| s.add_item(&new_item(10, 1, None)))
            .then_expect([(0, added(10))]);
    }

    #[test]
    fn add_item_refuses_bad_buckets_and_limits() {
        for buckets in [0, MAX_BUCKETS + 1] {
            given_buckets([])
                .when(|s| s.add_item(&new_item(10, buckets, None)))
                .then_refuse(DomainError::InvalidBuckets {
                    buckets: buckets as i64,
                    max: MAX_BUCKETS,
                });
        }
        for value in [0, -1, MAX_RESTOCK + 1] {
            given_buckets([])
                .when(|s| s.add_item(&new_item(10, 1, Some(value))))
                .then_refuse(DomainError::InvalidPurchaseLimit {
                    value,
                    max: MAX_RESTOCK,
                });
        }
    }

    #[test]
    fn restock_spreads_over_the_buckets() {
        let after = given_buckets([(0, added(0)), (0, changed(3))])
            .when(|s| s.restock(&sku(), 7))
            .then_expect([(0, restocked(3)), (1, restocked(2)), (2, restocked(2))]);
        assert_eq!(after.per_bucket(), vec![3, 2, 2]);
        given_buckets([(0, added(0)), (0, changed(3))])
            .when(|s| s.restock(&sku(), 1))
            .then_expect([(0, restocked(1))]);
        given_buckets([])
            .when(|s| s.restock(&sku(), 1))
            .then_refuse(DomainError::UnknownItem { sku: sku() });
    }

    #[test]
    fn growing_spreads_the_available_stock_and_leaves_holds_where_they_are() {
        let after = given_buckets([(0, added(10)), (0, reserved(1, 4))])
            .when(|s| s.set_buckets(&sku(), 3))
            .then_expect([
                (0, changed(3)),
                (0, out(1, 2)),
                (1, into(0, 2)),
                (0, out(2, 2)),
                (2, into(0, 2)),
            ]);
        assert_eq!(after.per_bucket(), vec![2, 2, 2]);
        assert_eq!(after.stock.buckets[0].reserved(), 4, "the hold stayed in bucket 0");
        assert_eq!(after.stock.available() + after.stock.reserved(), 10);
    }

    #[test]
    fn shrinking_moves_the_removed_buckets_stock_back_and_keeps_their_holds() {
        let after = given_buckets([
            (0, added(9)),
            (0, changed(3)),
            (0, out(1, 3)),
            (1, into(0, 3)),
            (0, out(2, 3)),
            (2, into(0, 3)),
            (2, reserved(7, 1)),
        ])
        .when(|s| s.set_buckets(&sku(), 2))
        .then_expect([
            (0, changed(2)),
            (2, out(0, 1)),
            (0, into(2, 1)),
            (2, out(1, 1)),
            (1, into(2, 1)),
        ]);
        assert_eq!(after.per_bucket(), vec![4, 4, 0]);
        assert_eq!(
            after.stock.buckets[2].reserved(),
            1,
            "the hold stays in the removed bucket"
        );
        assert_eq!(after.stock.streams(), 3, "the removed bucket is still read");
        assert_eq!(after.stock.settings().buckets, 2);
    }

    #[test]
    fn set_buckets_refusals() {
        given_buckets([])
            .when(|s| s.set_buckets(&sku(), 2))
            .then_refuse(DomainError::UnknownItem { sku: sku() });
        for buckets in [0, -3, i64::from(MAX_BUCKETS) + 1] {
            given_buckets([(0, added(1))])
                .when(|s| s.set_buckets(&sku(), buckets))
                .then_refuse(DomainError::InvalidBuckets {
                    buckets,
                    max: MAX_BUCKETS,
                });
        }
    }

    #[test]
    fn moving_stock_is_a_pair_that_nets_to_zero() {
        let after = given_buckets([(0, added(5)), (0, changed(2))])
            .when(|s| s.move_stock(&sku(), 0, 1, 3))
            .then_expect([(0, out(1, 3)), (1, into(0, 3))]);
        assert_eq!(after.per_bucket(), vec![2, 3]);
        given_buckets([(0, added(5)), (0, changed(2))])
            .when(|s| s.move_stock(&sku(), 0, 1, 6))
            .then_refuse(DomainError::OutOfStock {
                sku: sku(),
                requested: 6,
                available: 5,
            });
    }

    #[test]
    fn purchase_limits_are_set_and_lifted_on_bucket_zero() {
        let set = |v| {
            (
                0,
                InventoryEvent::PurchaseLimitSet(PurchaseLimitSet {
                    sku: sku(),
                    max_per_customer: v,
                }),
            )
        };
        let after = given_buckets([(0, added(5)), (0, changed(2))])
            .when(|s| s.set_purchase_limit(&sku(), Some(2)))
            .then_expect([set(Some(2))]);
        assert_eq!(after.stock.buckets[1].settings.max_per_customer, Some(2));
        after
            .when(|s| s.set_purchase_limit(&sku(), None))
            .then_expect([set(None)]);
        given_buckets([(0, added(5))])
            .when(|s| s.set_purchase_limit(&sku(), Some(0)))
            .then_refuse(DomainError::InvalidPurchaseLimit {
                value: 0,
                max: MAX_RESTOCK,
            });
    }

    #[test]
    fn numbered_instances_take_distinct_buckets_of_every_item() {
        for name in ["A", "HOT", "SKU-77", "x.y"] {
            let sku = Sku::parse(name).unwrap();
            let mut seen: Vec<u32> = (0..3).map(|n| preferred_bucket(&format!("cmd-{n}"), &sku, 3)).collect();
            seen.sort();
            assert_eq!(seen, vec![0, 1, 2], "{name}");
        }
        // Stable: the same answer in every process and build.
        assert_eq!(preferred_bucket("host-a", &sku(), 1), 0);
        assert_eq!(
            preferred_bucket("host-a", &sku(), 5),
            (fnv1a(&[b"host-a", b"\0", b"HOT"]) % 5) as u32
        );
        assert_eq!(
            fnv1a(&[b"a"]),
            0xaf63_dc4c_8601_ec8c,
            "FNV-1a's published value for \"a\""
        );
    }
}
