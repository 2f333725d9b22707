//! Properties every command body must keep, whatever its bytes: shared by the `cargo fuzz`
//! target `command_json` (`fuzz/`) and the test that replays its committed corpus.

use crate::api::{AddItemRequest, PaymentRequest, PlaceOrderRequest, RestockRequest};
use crate::domain::inventory::{Inventory, InventoryCommand};
use crate::domain::payment::{check_token, looks_like_pan};
use crate::domain::{Aggregate, ItemStock, NewItem};
use chrono::Utc;
use surge_events::{Currency, CustomerId, Money, OrderId, Sku};

/// `state` after `command`, if the aggregate accepts it.
fn apply(state: &mut Inventory, command: &InventoryCommand) {
    if let Ok(events) = state.decide(command) {
        for e in &events {
            state.evolve(e);
        }
    }
    assert!(state.available >= 0, "stock never goes negative");
}

fn stocked(sku: &Sku, units: i64) -> Inventory {
    let mut state = Inventory::default();
    apply(
        &mut state,
        &InventoryCommand::AddItem {
            sku: sku.clone(),
            name: "fuzz".into(),
            category: "fuzz".into(),
            price: Money::new(100, Currency::parse("EUR").expect("valid currency")).expect("valid amount"),
            initial_stock: units,
        },
    );
    state
}

/// A body sent to any command route: refused (400) or decoded into valid ids; what decodes
/// is decided by the aggregates without a panic and never takes stock below zero; an accepted
/// payment token is never card-number-like.
pub fn command_body(data: &[u8]) {
    if let Ok(req) = serde_json::from_slice::<PlaceOrderRequest>(data) {
        assert!(CustomerId::parse(req.customer_id.as_str()).is_ok());
        for line in &req.lines {
            let mut state = stocked(&line.sku, 100);
            apply(
                &mut state,
                &InventoryCommand::ReserveStock {
                    sku: line.sku.clone(),
                    order_id: OrderId::new(),
                    quantity: line.quantity,
                    expires_at: Utc::now(),
                },
            );
        }
    }
    if let Ok(req) = serde_json::from_slice::<AddItemRequest>(data) {
        // Split as asked (a refused split adds nothing): the buckets together hold the stock.
        let item = NewItem {
            sku: req.sku.clone(),
            name: req.name,
            category: req.category,
            price: req.price,
            initial_stock: req.initial_stock,
            buckets: u32::try_from(req.buckets).unwrap_or(0),
            max_per_customer: req.max_per_customer,
        };
        let mut stock = ItemStock::default();
        if let Ok(events) = stock.add_item(&item) {
            stock.evolve_all(&events);
            assert!(
                stock.buckets.iter().all(|b| b.available >= 0),
                "no bucket goes negative"
            );
            assert_eq!(stock.available(), req.initial_stock, "moves net to zero");
        }
    }
    if let Ok(req) = serde_json::from_slice::<RestockRequest>(data) {
        let sku = Sku::parse("FUZZ-1").expect("valid SKU");
        let mut state = stocked(&sku, 1);
        apply(
            &mut state,
            &InventoryCommand::Restock {
                sku,
                quantity: req.quantity,
            },
        );
    }
    if let Ok(req) = serde_json::from_slice::<PaymentRequest>(data) {
        if check_token(&req.payment_token).is_ok() {
            assert!(!looks_like_pan(&req.payment_token), "card numbers are refused");
        }
    }
}

#[cfg(test)]
mod tests {
    /// The committed corpus (seeds and whatever the fuzzer kept) still keeps the invariants.
    #[test]
    fn the_committed_command_corpus_keeps_the_invariants() {
        // The run's own checkout (see surge-events' corpus test).
        let dir = format!(
            "{}/../fuzz/corpus/command_json",
            std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into())
        );
        let mut files = 0;
        for entry in std::fs::read_dir(dir).expect("corpus committed") {
            super::command_body(&std::fs::read(entry.expect("readable entry").path()).expect("readable file"));
            files += 1;
        }
        assert!(files >= 8, "{files} corpus files");
    }
}
