//! What every peer shares: the model (Surge's rules for one-line orders, as pure `decide` and
//! `evolve`), Surge's HTTP contract (request bodies, problem answers), startup, the
//! per-aggregate locks of the `--serialized` modes, and the audit views' contract. Each peer
//! file holds only its framework's adapter, so all of them run the very same rules.
//!
//! The model:
//! - a SKU (`InventoryState`) is bounded: whether it exists, its stock and its price. It does
//!   not remember which orders hold stock: that record lives with the order, as in Surge.
//! - an order (`OrderState`, named by the customer's idempotency key) is placed once; a repeat
//!   of its key finds it placed (or rejected) and gets the first answer again.
//!
//! The audit views every peer creates in its own database (read by `./dev bench`'s auditor):
//! - `bench_stock(sku text, initial_stock bigint, reserved bigint)`: one row per SKU, with the
//!   total quantity the store says was reserved;
//! - `bench_orders(order_id text, customer_id text, idempotency_key text, sku text, quantity bigint)`:
//!   one row per order placed and not rejected, `order_id` as the HTTP answer gave it.

#![allow(dead_code)] // each peer uses its part of the contract

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// A business rule's refusal, by problem slug.
#[derive(Debug)]
pub struct Refused(pub &'static str);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}
impl std::error::Error for Refused {}

/// An order line's quantity: 1 to 10,000 units.
pub fn check_quantity(quantity: i64) -> Result<(), Refused> {
    if (1..=10_000).contains(&quantity) {
        Ok(())
    } else {
        Err(Refused("invalid-quantity"))
    }
}

/// One SKU: whether it exists, its stock and its price (bounded: no per-order record).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct InventoryState {
    pub exists: bool,
    pub available: i64,
    pub price_minor: i64,
}

/// Who reserves: the order (its id, customer and key) and how many units of which SKU.
#[derive(Debug, Clone)]
pub struct Reservation {
    pub order_id: String,
    pub customer_id: String,
    pub idempotency_key: String,
    pub sku: String,
    pub quantity: i64,
}

pub enum InventoryCommand {
    AddItem {
        sku: String,
        initial_stock: i64,
        price_minor: i64,
    },
    Reserve(Reservation),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum InventoryEvent {
    ItemAdded {
        sku: String,
        initial_stock: i64,
        price_minor: i64,
    },
    /// The reservation names its order, so a store can record the order in the same write.
    StockReserved {
        order_id: String,
        customer_id: String,
        idempotency_key: String,
        sku: String,
        quantity: i64,
        total_minor: i64,
    },
}

impl InventoryState {
    /// Stock never goes below zero. Whether an order already reserved is the order's to know:
    /// every peer asks its order record first.
    pub fn decide(&self, command: InventoryCommand) -> Result<Vec<InventoryEvent>, Refused> {
        match command {
            InventoryCommand::AddItem {
                sku,
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
                    sku,
                    initial_stock,
                    price_minor,
                }])
            }
            InventoryCommand::Reserve(r) => {
                if !self.exists {
                    return Err(Refused("unknown-item"));
                }
                check_quantity(r.quantity)?;
                if r.quantity > self.available {
                    return Err(Refused("out-of-stock"));
                }
                Ok(vec![InventoryEvent::StockReserved {
                    total_minor: r.quantity * self.price_minor,
                    order_id: r.order_id,
                    customer_id: r.customer_id,
                    idempotency_key: r.idempotency_key,
                    sku: r.sku,
                    quantity: r.quantity,
                }])
            }
        }
    }

    pub fn evolve(&mut self, event: InventoryEvent) {
        match event {
            InventoryEvent::ItemAdded {
                initial_stock,
                price_minor,
                ..
            } => {
                self.exists = true;
                self.available = initial_stock;
                self.price_minor = price_minor;
            }
            InventoryEvent::StockReserved { quantity, .. } => {
                self.available -= quantity;
            }
        }
    }
}

/// One order, named by its idempotency key: placed once, then possibly rejected (its
/// reservation was refused).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub enum OrderState {
    #[default]
    New,
    Placed,
    Rejected(String),
}

pub struct PlaceOrder {
    pub customer_id: String,
    pub idempotency_key: String,
    pub sku: String,
    pub quantity: i64,
    pub unit_price_minor: i64,
}

pub enum OrderCommand {
    Place(PlaceOrder),
    Reject { reason: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OrderEvent {
    OrderPlaced {
        customer_id: String,
        idempotency_key: String,
        sku: String,
        quantity: i64,
        total_minor: i64,
    },
    OrderRejected {
        reason: String,
    },
}

/// A repeat of a key whose order exists: the answer the first request got.
#[derive(Debug)]
pub enum Repeat {
    Placed,
    Rejected(String),
}

impl std::fmt::Display for Repeat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Repeat::Placed => f.write_str("order already placed"),
            Repeat::Rejected(r) => write!(f, "order already rejected: {r}"),
        }
    }
}
impl std::error::Error for Repeat {}

impl OrderState {
    pub fn decide(&self, command: OrderCommand) -> Result<Vec<OrderEvent>, Repeat> {
        match (self, command) {
            (OrderState::New, OrderCommand::Place(c)) => Ok(vec![OrderEvent::OrderPlaced {
                total_minor: c.quantity * c.unit_price_minor,
                customer_id: c.customer_id,
                idempotency_key: c.idempotency_key,
                sku: c.sku,
                quantity: c.quantity,
            }]),
            (OrderState::Placed, OrderCommand::Place(_)) => Err(Repeat::Placed),
            (OrderState::Rejected(r), OrderCommand::Place(_)) => Err(Repeat::Rejected(r.clone())),
            (OrderState::Placed, OrderCommand::Reject { reason }) => Ok(vec![OrderEvent::OrderRejected { reason }]),
            (_, OrderCommand::Reject { .. }) => Ok(vec![]),
        }
    }

    pub fn evolve(&mut self, event: OrderEvent) {
        *self = match event {
            OrderEvent::OrderPlaced { .. } => OrderState::Placed,
            OrderEvent::OrderRejected { reason } => OrderState::Rejected(reason),
        }
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

/// 201 for an added item.
pub fn created(sku: &str) -> Response {
    (StatusCode::CREATED, Json(json!({"sku": sku}))).into_response()
}

/// 202 for a placed order (first time or repeat: the same id).
pub fn placed(order_id: impl Serialize) -> Response {
    (
        StatusCode::ACCEPTED,
        Json(json!({"order_id": order_id, "status": "placed"})),
    )
        .into_response()
}

/// 409 after the bounded retries of an optimistic write all lost.
pub fn conflict() -> Response {
    problem(StatusCode::CONFLICT, "version-conflict")
}

/// Pause before retrying a lost optimistic write: grows with the attempt, plus jitter.
pub async fn backoff(attempt: u64) {
    let jitter = (uuid::Uuid::new_v4().as_u128() % 4) as u64;
    tokio::time::sleep(std::time::Duration::from_millis(1 + attempt.min(10) + jitter)).await;
}

/// How many times an optimistic write is tried before answering 409.
pub const ATTEMPTS: u64 = 20;

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

/// The request's `Idempotency-Key` header, if any.
pub fn idempotency_key(headers: &HeaderMap) -> Option<String> {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The name an idempotent order gets: the customer's key, so a retry finds the same order.
pub fn order_key(customer_id: &str, key: &str) -> String {
    format!("{customer_id}:{key}")
}

/// The one line of an order (the benchmark sends one-line orders), its quantity checked.
pub fn one_line(req: &PlaceOrderRequest) -> Result<&Line, Refused> {
    let [line] = req.lines.as_slice() else {
        return Err(Refused("one-line-orders-only"));
    };
    check_quantity(line.quantity)?;
    Ok(line)
}

/// Whether `--serialized` is on the command line (taken out of the positional arguments).
pub struct Args {
    pub serialized: bool,
    pub addr: String,
    pub url: String,
    pub rest: Vec<String>,
}

pub fn args(default_addr: &str) -> Args {
    let (flags, positional): (Vec<String>, Vec<String>) = std::env::args().skip(1).partition(|a| a.starts_with("--"));
    let serialized = flags.iter().any(|f| f == "--serialized");
    if let Some(f) = flags.iter().find(|f| *f != "--serialized") {
        panic!("unknown flag {f}");
    }
    let mut positional = positional.into_iter();
    let addr = positional.next().unwrap_or_else(|| default_addr.into());
    let url = positional
        .next()
        .expect("usage: <peer> [--serialized] <addr> <database url> ...");
    Args {
        serialized,
        addr,
        url,
        rest: positional.collect(),
    }
}

/// A pool of 16 connections, for every peer.
pub async fn pool(url: &str) -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(16)
        .connect(url)
        .await
        .expect("Postgres reachable")
}

/// Creates (or replaces) the audit views `bench_stock` and `bench_orders` from their SELECTs.
pub async fn create_audit_views(pool: &sqlx::PgPool, stock: &str, orders: &str) {
    let sql = format!(
        "CREATE OR REPLACE VIEW bench_stock (sku, initial_stock, reserved) AS {stock};\n\
         CREATE OR REPLACE VIEW bench_orders (order_id, customer_id, idempotency_key, sku, quantity) AS {orders};"
    );
    sqlx::raw_sql(&sql).execute(pool).await.expect("audit views created");
}

pub async fn serve(addr: &str, app: Router) {
    let app = app.route("/readyz", axum::routing::get(|| async { "ready" }));
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    axum::serve(listener, app).await.expect("serve");
}

/// `--serialized`: one in-process async mutex per aggregate id, so commands on one aggregate
/// run one at a time in this process and never race each other to the store; ids never wait
/// for each other. A mutex lives while somebody holds or waits for it (the map keeps no idle
/// ids). A task waits here before it takes a pool connection, so waiting holds no connection.
#[derive(Default)]
pub struct AggregateLocks(std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>);

/// One id's turn; the id's mutex leaves the map with its last user.
pub struct Turn<'a> {
    locks: &'a AggregateLocks,
    id: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.guard.take();
        let mut map = self.locks.0.lock().expect("lock map");
        if map.get(&self.id).is_some_and(|m| std::sync::Arc::strong_count(m) == 1) {
            map.remove(&self.id);
        }
    }
}

impl AggregateLocks {
    pub fn new() -> Self {
        Self::default()
    }

    pub async fn lock(&self, id: &str) -> Turn<'_> {
        let mutex = self
            .0
            .lock()
            .expect("lock map")
            .entry(id.to_owned())
            .or_default()
            .clone();
        Turn {
            locks: self,
            id: id.to_owned(),
            guard: Some(mutex.lock_owned().await),
        }
    }
}

/// The lock of `--serialized` mode, or none (optimistic mode).
pub async fn lock_if<'a>(stripes: &'a Option<AggregateLocks>, id: &str) -> Option<Turn<'a>> {
    match stripes {
        Some(s) => Some(s.lock(id).await),
        None => None,
    }
}
