//! Payloads of `inventory-<sku>` streams: the catalog entry and its stock.
//!
//! An item's stock may be split into buckets, each a stream of its own (`inventory-<sku>` is
//! bucket 0, `inventory-<sku>#<k>` bucket k): bucket 0 holds the catalog entry and the item's
//! settings (`ItemAdded`, `BucketsChanged`, `PurchaseLimitSet`); every bucket holds its own
//! stock events, and stock moves between buckets as a pair (`StockMovedOut` on one,
//! `StockMovedIn` on the other, appended in one transaction). The item's stock is the sum.

use crate::{Money, OrderId, Payload, Sku, StreamType};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemAdded {
    pub sku: Sku,
    pub name: String,
    pub category: String,
    pub price: Money,
    pub initial_stock: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StockRestocked {
    pub sku: Sku,
    pub quantity: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StockReserved {
    pub sku: Sku,
    pub order_id: OrderId,
    pub quantity: i64,
    pub expires_at: DateTime<Utc>,
}

/// Stock held for an order goes back on sale (the order was cancelled or its payment failed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReservationReleased {
    pub sku: Sku,
    pub order_id: OrderId,
    pub quantity: i64,
}

/// Stock held for an unpaid order goes back on sale because its hold ran out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReservationExpired {
    pub sku: Sku,
    pub order_id: OrderId,
    pub quantity: i64,
}

/// Stock held for a paid order is sold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StockCommitted {
    pub sku: Sku,
    pub order_id: OrderId,
    pub quantity: i64,
    pub unit_price: Money,
}

/// The item's stock is split into `buckets` streams from now on (bucket 0's stream).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BucketsChanged {
    pub sku: Sku,
    #[schemars(range(min = 1))]
    pub buckets: u32,
}

/// The most units of the item one customer may hold reserved or bought at once from now on;
/// `None`: no limit (bucket 0's stream).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PurchaseLimitSet {
    pub sku: Sku,
    pub max_per_customer: Option<i64>,
}

/// Available units leave this bucket for `to_bucket` (appended with the `StockMovedIn` there).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StockMovedOut {
    pub sku: Sku,
    pub to_bucket: u32,
    pub quantity: i64,
}

/// Available units arrive in this bucket from `from_bucket` (appended with the `StockMovedOut` there).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StockMovedIn {
    pub sku: Sku,
    pub from_bucket: u32,
    pub quantity: i64,
}

/// Everything that can happen to a catalog item's stock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum InventoryEvent {
    ItemAdded(ItemAdded),
    StockRestocked(StockRestocked),
    StockReserved(StockReserved),
    ReservationReleased(ReservationReleased),
    ReservationExpired(ReservationExpired),
    StockCommitted(StockCommitted),
    BucketsChanged(BucketsChanged),
    PurchaseLimitSet(PurchaseLimitSet),
    StockMovedOut(StockMovedOut),
    StockMovedIn(StockMovedIn),
}

impl Payload for InventoryEvent {
    const STREAM_TYPE: StreamType = StreamType::Inventory;

    fn event_type(&self) -> &'static str {
        match self {
            InventoryEvent::ItemAdded(_) => "ItemAdded",
            InventoryEvent::StockRestocked(_) => "StockRestocked",
            InventoryEvent::StockReserved(_) => "StockReserved",
            InventoryEvent::ReservationReleased(_) => "ReservationReleased",
            InventoryEvent::ReservationExpired(_) => "ReservationExpired",
            InventoryEvent::StockCommitted(_) => "StockCommitted",
            InventoryEvent::BucketsChanged(_) => "BucketsChanged",
            InventoryEvent::PurchaseLimitSet(_) => "PurchaseLimitSet",
            InventoryEvent::StockMovedOut(_) => "StockMovedOut",
            InventoryEvent::StockMovedIn(_) => "StockMovedIn",
        }
    }
}

impl InventoryEvent {
    pub fn sku(&self) -> &Sku {
        match self {
            InventoryEvent::ItemAdded(e) => &e.sku,
            InventoryEvent::StockRestocked(e) => &e.sku,
            InventoryEvent::StockReserved(e) => &e.sku,
            InventoryEvent::ReservationReleased(e) => &e.sku,
            InventoryEvent::ReservationExpired(e) => &e.sku,
            InventoryEvent::StockCommitted(e) => &e.sku,
            InventoryEvent::BucketsChanged(e) => &e.sku,
            InventoryEvent::PurchaseLimitSet(e) => &e.sku,
            InventoryEvent::StockMovedOut(e) => &e.sku,
            InventoryEvent::StockMovedIn(e) => &e.sku,
        }
    }
}
