//! Surge's order + inventory rules on cqrs-es with postgres-es, behind Surge's HTTP contract:
//! `POST /v1/catalog/items` (201, 409 if it exists) and `POST /v1/orders` (202 with the order
//! id, 422 out-of-stock). Same rules: stock never below zero, one order per Idempotency-Key
//! (the key names the order, and a reservation for an order already holding one adds nothing).
//! Contention on a SKU shows up as cqrs-es' optimistic-lock conflict; the handler retries it
//! like a client of the framework would (bounded), then answers 409.
//!
//! Usage: `peer-cqrs-es <listen addr> <database url>` (creates its tables).

use async_trait::async_trait;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use cqrs_es::{Aggregate, AggregateError, DomainEvent};
use postgres_es::{postgres_cqrs, postgres_snapshot_cqrs, PostgresCqrs};
mod contract;

use contract::{
    order_key, problem, refused, unavailable, AddItem, InventoryCommand, InventoryEvent, InventoryState, OrderEvent,
    OrderState, PlaceOrder, PlaceOrderRequest, Refused,
};
use serde_json::json;
use std::sync::Arc;

// cqrs-es keeps the aggregate's state as the aggregate: the shared model's states are the
// aggregates, their events its domain events.
impl DomainEvent for InventoryEvent {
    fn event_type(&self) -> String {
        match self {
            InventoryEvent::ItemAdded { .. } => "ItemAdded".into(),
            InventoryEvent::StockReserved { .. } => "StockReserved".into(),
        }
    }
    fn event_version(&self) -> String {
        "1".into()
    }
}

impl DomainEvent for OrderEvent {
    fn event_type(&self) -> String {
        "OrderPlaced".into()
    }
    fn event_version(&self) -> String {
        "1".into()
    }
}

#[async_trait]
impl Aggregate for InventoryState {
    type Command = InventoryCommand;
    type Event = InventoryEvent;
    type Error = Refused;
    type Services = ();

    fn aggregate_type() -> String {
        "inventory".into()
    }

    async fn handle(&self, command: InventoryCommand, _: &()) -> Result<Vec<InventoryEvent>, Refused> {
        self.decide(command)
    }

    fn apply(&mut self, event: InventoryEvent) {
        self.evolve(event);
    }
}

#[async_trait]
impl Aggregate for OrderState {
    type Command = PlaceOrder;
    type Event = OrderEvent;
    type Error = Refused;
    type Services = ();

    fn aggregate_type() -> String {
        "order".into()
    }

    async fn handle(&self, c: PlaceOrder, _: &()) -> Result<Vec<OrderEvent>, Refused> {
        Ok(self.decide(c))
    }

    fn apply(&mut self, event: OrderEvent) {
        self.evolve(event);
    }
}

struct Peer {
    inventory: PostgresCqrs<InventoryState>,
    orders: PostgresCqrs<OrderState>,
    pool: sqlx::PgPool,
}

/// Runs `command` on an aggregate, retrying optimistic-lock conflicts (bounded, with jitter).
async fn execute<A: Aggregate<Error = Refused>>(
    cqrs: &PostgresCqrs<A>,
    id: &str,
    command: impl Fn() -> A::Command,
) -> Result<(), Response> {
    for attempt in 0..20u64 {
        match cqrs.execute(id, command()).await {
            Ok(()) => return Ok(()),
            Err(AggregateError::AggregateConflict) => {
                let jitter = (uuid::Uuid::new_v4().as_u128() % 4) as u64;
                tokio::time::sleep(std::time::Duration::from_millis(1 + attempt.min(10) + jitter)).await;
            }
            Err(AggregateError::UserError(r)) => return Err(refused(r)),
            Err(e) => return Err(unavailable(e)),
        }
    }
    Err(problem(StatusCode::CONFLICT, "version-conflict"))
}

async fn add_item(State(peer): State<Arc<Peer>>, Json(req): Json<AddItem>) -> Response {
    let cmd = || InventoryCommand::AddItem {
        initial_stock: req.initial_stock,
        price_minor: req.price.minor,
    };
    match execute(&peer.inventory, &req.sku, cmd).await {
        Ok(()) => (StatusCode::CREATED, Json(json!({"sku": req.sku}))).into_response(),
        Err(r) => r,
    }
}

async fn place_order(
    State(peer): State<Arc<Peer>>,
    headers: HeaderMap,
    Json(req): Json<PlaceOrderRequest>,
) -> Response {
    let [line] = req.lines.as_slice() else {
        return problem(StatusCode::UNPROCESSABLE_ENTITY, "one-line-orders-only");
    };
    let order_id = order_key(&headers, &req.customer_id).unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let reserve = || InventoryCommand::Reserve {
        order_id: order_id.clone(),
        quantity: line.quantity,
    };
    if let Err(r) = execute(&peer.inventory, &line.sku, reserve).await {
        return r;
    }
    let price: Option<i64> = sqlx::query_scalar(
        "SELECT (payload->'ItemAdded'->>'price_minor')::bigint FROM events \
         WHERE aggregate_type = 'inventory' AND aggregate_id = $1 AND sequence = 1",
    )
    .bind(&line.sku)
    .fetch_optional(&peer.pool)
    .await
    .ok()
    .flatten();
    let place = || PlaceOrder {
        customer_id: req.customer_id.clone(),
        sku: line.sku.clone(),
        quantity: line.quantity,
        unit_price_minor: price.unwrap_or(0),
    };
    match execute(&peer.orders, &order_id, place).await {
        Ok(()) => (
            StatusCode::ACCEPTED,
            Json(json!({"order_id": order_id, "status": "placed"})),
        )
            .into_response(),
        Err(r) => r,
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    aggregate_type text NOT NULL, aggregate_id text NOT NULL, sequence bigint CHECK (sequence >= 0) NOT NULL,
    event_type text NOT NULL, event_version text NOT NULL, payload json NOT NULL, metadata json NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence));
CREATE TABLE IF NOT EXISTS snapshots (
    aggregate_type text NOT NULL, aggregate_id text NOT NULL, last_sequence bigint CHECK (last_sequence >= 0) NOT NULL,
    current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL, payload json NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence));";

#[tokio::main]
async fn main() {
    let (addr, pool) = contract::start("127.0.0.1:8090").await;
    sqlx::raw_sql(SCHEMA).execute(&pool).await.expect("schema created");
    let peer = Arc::new(Peer {
        // A hot SKU's stream grows by one event per order: the framework's snapshot store
        // (a snapshot every 100 events) keeps loading it short, as a user of cqrs-es would.
        inventory: postgres_snapshot_cqrs(pool.clone(), vec![], 100, ()),
        orders: postgres_cqrs(pool.clone(), vec![], ()),
        pool,
    });
    let app = Router::new()
        .route("/v1/catalog/items", post(add_item))
        .route("/v1/orders", post(place_order))
        .with_state(peer);
    contract::serve(&addr, app).await;
}
