//! What both peers share: the model (Surge's rules for one-line orders, as pure `decide` and
//! `evolve`), Surge's HTTP contract (request bodies, problem answers) and startup, so each peer
//! file holds only its framework's adapter and so both run the very same rules.

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeSet;

/// A business rule's refusal, by problem slug.
#[derive(Debug)]
pub struct Refused(pub &'static str);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}
impl std::error::Error for Refused {}

/// One SKU: its stock, and the orders holding some of it (a reservation is once per order).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct InventoryState {
    pub exists: bool,
    pub available: i64,
    pub price_minor: i64,
    pub holds: BTreeSet<String>,
}

pub enum InventoryCommand {
    AddItem { initial_stock: i64, price_minor: i64 },
    Reserve { order_id: String, quantity: i64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum InventoryEvent {
    ItemAdded { initial_stock: i64, price_minor: i64 },
    StockReserved { order_id: String, quantity: i64 },
}

impl InventoryState {
    /// Stock never goes below zero; an order already holding stock gets nothing more.
    pub fn decide(&self, command: InventoryCommand) -> Result<Vec<InventoryEvent>, Refused> {
        match command {
            InventoryCommand::AddItem {
                initial_stock,
                price_minor,
            } => {
                if self.exists {
                    return Err(Refused("item-already-exists"));
                }
                if initial_stock < 0 || price_minor < 0 {
                    return Err(Refused("invalid-quantity"));
                }
                Ok(vec![InventoryEvent::ItemAdded {
                    initial_stock,
                    price_minor,
                }])
            }
            InventoryCommand::Reserve { order_id, quantity } => {
                if !self.exists {
                    return Err(Refused("unknown-item"));
                }
                if self.holds.contains(&order_id) {
                    return Ok(vec![]);
                }
                if !(1..=10_000).contains(&quantity) {
                    return Err(Refused("invalid-quantity"));
                }
                if quantity > self.available {
                    return Err(Refused("out-of-stock"));
                }
                Ok(vec![InventoryEvent::StockReserved { order_id, quantity }])
            }
        }
    }

    pub fn evolve(&mut self, event: InventoryEvent) {
        match event {
            InventoryEvent::ItemAdded {
                initial_stock,
                price_minor,
            } => {
                self.exists = true;
                self.available = initial_stock;
                self.price_minor = price_minor;
            }
            InventoryEvent::StockReserved { order_id, quantity } => {
                self.available -= quantity;
                self.holds.insert(order_id);
            }
        }
    }
}

/// One order: placed once (its id is the idempotency key's).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct OrderState {
    pub placed: bool,
}

pub struct PlaceOrder {
    pub customer_id: String,
    pub sku: String,
    pub quantity: i64,
    pub unit_price_minor: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OrderEvent {
    OrderPlaced {
        customer_id: String,
        sku: String,
        quantity: i64,
        total_minor: i64,
    },
}

impl OrderState {
    pub fn decide(&self, c: PlaceOrder) -> Vec<OrderEvent> {
        if self.placed {
            return vec![];
        }
        vec![OrderEvent::OrderPlaced {
            customer_id: c.customer_id,
            sku: c.sku,
            quantity: c.quantity,
            total_minor: c.quantity * c.unit_price_minor,
        }]
    }

    pub fn evolve(&mut self, _: OrderEvent) {
        self.placed = true;
    }
}

pub fn problem(status: StatusCode, slug: &str) -> Response {
    (
        status,
        [("content-type", "application/problem+json")],
        Json(json!({"type": format!("https://surge.dev/problems/{slug}"), "title": slug, "status": status.as_u16()})),
    )
        .into_response()
}

/// 409 for an item that exists, 422 for every other refusal (as Surge answers).
pub fn refused(Refused(slug): Refused) -> Response {
    let status = if slug == "item-already-exists" {
        StatusCode::CONFLICT
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    problem(status, slug)
}

pub fn unavailable<E: std::fmt::Display>(e: E) -> Response {
    eprintln!("store error: {e}");
    problem(StatusCode::SERVICE_UNAVAILABLE, "unavailable")
}

#[derive(Deserialize)]
pub struct Price {
    pub minor: i64,
}

#[derive(Deserialize)]
pub struct AddItem {
    pub sku: String,
    pub price: Price,
    #[serde(default)]
    pub initial_stock: i64,
}

#[derive(Deserialize)]
pub struct Line {
    pub sku: String,
    pub quantity: i64,
}

#[derive(Deserialize)]
pub struct PlaceOrderRequest {
    pub customer_id: String,
    pub lines: Vec<Line>,
}

/// The name an idempotent order gets: the customer's key, so a retry finds the same order.
pub fn order_key(headers: &HeaderMap, customer_id: &str) -> Option<String> {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(|key| format!("{customer_id}:{key}"))
}

/// `<listen addr> <database url>` from the command line, and a pool of 16 connections.
pub async fn start(default_addr: &str) -> (String, sqlx::PgPool) {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| default_addr.into());
    let url = args.next().expect("usage: <peer> <addr> <database url>");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(16)
        .connect(&url)
        .await
        .expect("Postgres reachable");
    (addr, pool)
}

pub async fn serve(addr: &str, app: Router) {
    let app = app.route("/readyz", axum::routing::get(|| async { "ready" }));
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    axum::serve(listener, app).await.expect("serve");
}
