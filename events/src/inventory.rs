//! Payloads of `inventory-<sku>` streams: the catalog entry and its stock.

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
        }
    }
}
