//! Surge's order + inventory rules on cqrs-es 0.5 with postgres-es, behind Surge's HTTP
//! contract: `POST /v1/catalog/items` (201, 409 if it exists) and `POST /v1/orders` (202 with
//! the order id, 422 out-of-stock / unknown-item / invalid-quantity).
//!
//! Two aggregates, as the framework has them: the SKU (`inventory`, id = the SKU: exists,
//! stock, price) and the order (`order`, id = `customer_id:Idempotency-Key`). cqrs-es writes one
//! aggregate per command, so an order takes two commands:
//! 1. `Place` on the order claims the key (`OrderPlaced` with sku, quantity, total). A repeat of
//!    the key finds the order placed (202, same id) or rejected (the same 422) and never gets
//!    to the stock;
//! 2. `Reserve` on the SKU (`StockReserved`). If the SKU refuses it (out-of-stock, ...), `Reject`
//!    on the order (`OrderRejected`) and 422.
//!
//! The price for the order's total comes from a read model, as cqrs-es intends: a `Query` on
//! the inventory writes `catalog(sku, price_minor)` when an item is added (prices never change
//! in this model, so the peer also keeps them in memory once read).
//! The hot SKU's stream grows by one event per order: the SKU runs on the framework's snapshot
//! store (`postgres_snapshot_cqrs`, a snapshot every 50 events), so a load reads the snapshot
//! and at most 49 events.
//!
//! Modes:
//! - optimistic (default): cqrs-es' own concurrency control. Two commands on one aggregate at
//!   once: the second's insert hits the events' primary key (`AggregateConflict`); it is
//!   retried like a client of the framework would (up to 20 attempts, growing pause with
//!   jitter), then 409. On a hot SKU most of the work is lost to these conflicts.
//! - `--serialized`: commands on one aggregate id wait for each other in this process (an async
//!   mutex per id), so the hot SKU's commands never conflict (the conflict
//!   retry stays as a safety net, e.g. for a second process). The order id's mutex is held for
//!   the whole request, so two concurrent repeats of a key are answered one after the other.
//!
//! The two steps run in a task of their own, so a client that goes away (hyper then drops the
//! handler) does not stop an order between them. Known limits (of two aggregates without a
//! shared transaction, as the framework has it): a crash between steps 1 and 2 leaves an order placed with no stock reserved (a process
//! manager would finish or reject it; not built here); in optimistic mode a repeat that comes
//! while the first request is still reserving is answered 202 even if the first ends in 422.
//! A reservation that loses every retry (or meets a store error) rejects the order
//! (`version-conflict` / `unavailable`), and its repeats get that answer again.
//!
//! cqrs-es 0.5.0 quirk worked around: `EventSink::write` applies each event to the aggregate
//! the framework later uses for the snapshot, and the snapshot store applies the command's
//! events to it once more, so every snapshot would count the event that triggers it twice.
//! The SKU's handler therefore writes its events against a scratch copy (see `emit`).
//!
//! Audit views: `bench_stock` sums `StockReserved` quantities in `events`; `bench_orders` lists
//! the order aggregates with `OrderPlaced` and no `OrderRejected`.
//!
//! Usage: `peer-cqrs-es [--serialized] <listen addr> <database url>` (creates its tables).

use async_trait::async_trait;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::{Json, Router};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, AggregateError, DomainEvent, EventEnvelope, Query};
use postgres_es::{postgres_cqrs, postgres_snapshot_cqrs, PostgresCqrs};
mod contract;

use contract::{
    backoff, conflict, idempotency_key, lock_if, one_line, order_key, placed, problem, refused, unavailable, AddItem,
    AggregateLocks, InventoryCommand, InventoryEvent, InventoryState, OrderCommand, OrderEvent, OrderState, PlaceOrder,
    PlaceOrderRequest, Refused, Repeat, Reservation, ATTEMPTS,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Events between two snapshots of a SKU.
const SNAPSHOT_EVERY: usize = 50;

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
        match self {
            OrderEvent::OrderPlaced { .. } => "OrderPlaced".into(),
            OrderEvent::OrderRejected { .. } => "OrderRejected".into(),
        }
    }
    fn event_version(&self) -> String {
        "1".into()
    }
}

/// Hands `events` to the framework. They are applied to a scratch copy, not to `aggregate`:
/// cqrs-es 0.5.0 applies a command's events again to the aggregate it snapshots (see the
/// file's doc), so `aggregate` must stay as loaded.
async fn emit<A: Aggregate + Clone>(aggregate: &A, sink: &EventSink<A>, events: Vec<A::Event>) {
    let mut scratch = aggregate.clone();
    for event in events {
        sink.write(event, &mut scratch).await;
    }
}

// cqrs-es keeps the aggregate's state as the aggregate: the shared model's states are the
// aggregates, their events its domain events.
impl Aggregate for InventoryState {
    const TYPE: &'static str = "inventory";
    type Command = InventoryCommand;
    type Event = InventoryEvent;
    type Error = Refused;
    type Services = ();

    async fn handle(&mut self, command: InventoryCommand, _: &(), sink: &EventSink<Self>) -> Result<(), Refused> {
        let events = self.decide(command)?;
        emit(self, sink, events).await;
        Ok(())
    }

    fn apply(&mut self, event: InventoryEvent) {
        self.evolve(event);
    }
}

impl Aggregate for OrderState {
    const TYPE: &'static str = "order";
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = Repeat;
    type Services = ();

    async fn handle(&mut self, command: OrderCommand, _: &(), sink: &EventSink<Self>) -> Result<(), Repeat> {
        // The order runs on the plain event store (no snapshots), where writing the events to
        // the aggregate itself is harmless; done the same way as the SKU's all the same.
        let events = self.decide(command)?;
        emit(self, sink, events).await;
        Ok(())
    }

    fn apply(&mut self, event: OrderEvent) {
        self.evolve(event);
    }
}

/// The catalog read model: `catalog(sku, price_minor)`, written when an item is added.
struct CatalogProjection(sqlx::PgPool);

#[async_trait]
impl Query<InventoryState> for CatalogProjection {
    async fn dispatch(&self, sku: &str, events: &[EventEnvelope<InventoryState>]) {
        for e in events {
            if let InventoryEvent::ItemAdded { price_minor, .. } = e.payload {
                let written =
                    sqlx::query("INSERT INTO catalog (sku, price_minor) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                        .bind(sku)
                        .bind(price_minor)
                        .execute(&self.0)
                        .await;
                if let Err(err) = written {
                    eprintln!("catalog projection failed for {sku}: {err}");
                }
            }
        }
    }
}

struct Peer {
    inventory: PostgresCqrs<InventoryState>,
    orders: PostgresCqrs<OrderState>,
    pool: sqlx::PgPool,
    prices: Mutex<HashMap<String, i64>>,
    /// `--serialized`: per-SKU and per-order locks (two tables: a request takes its order's,
    /// then its SKU's, so no two requests can wait on each other in a cycle).
    sku_locks: Option<AggregateLocks>,
    order_locks: Option<AggregateLocks>,
}

impl Peer {
    /// The SKU's price from the catalog read model (cached: prices never change).
    async fn price(&self, sku: &str) -> Result<Option<i64>, sqlx::Error> {
        if let Some(p) = self.prices.lock().unwrap().get(sku) {
            return Ok(Some(*p));
        }
        let price: Option<i64> = sqlx::query_scalar("SELECT price_minor FROM catalog WHERE sku = $1")
            .bind(sku)
            .fetch_optional(&self.pool)
            .await?;
        if let Some(p) = price {
            self.prices.lock().unwrap().insert(sku.to_owned(), p);
        }
        Ok(price)
    }
}

/// Runs `command` on an aggregate, retrying optimistic-lock conflicts (bounded, with jitter);
/// with `locks`, under the aggregate id's mutex.
async fn execute<A: Aggregate>(
    cqrs: &PostgresCqrs<A>,
    locks: Option<&AggregateLocks>,
    id: &str,
    command: impl Fn() -> A::Command,
) -> Result<(), AggregateError<A::Error>> {
    for attempt in 0..ATTEMPTS {
        let guard = match locks {
            Some(l) => Some(l.lock(id).await),
            None => None,
        };
        match cqrs.execute(id, command()).await {
            Err(AggregateError::AggregateConflict) => {
                drop(guard);
                backoff(attempt).await;
            }
            outcome => return outcome,
        }
    }
    Err(AggregateError::AggregateConflict)
}

/// The answer a rejected order gets, first time and on every repeat.
fn rejected(reason: &str) -> Response {
    match reason {
        "version-conflict" => conflict(),
        "unavailable" => problem(StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        slug => problem(StatusCode::UNPROCESSABLE_ENTITY, slug),
    }
}

async fn add_item(State(peer): State<Arc<Peer>>, Json(req): Json<AddItem>) -> Response {
    let cmd = || InventoryCommand::AddItem {
        sku: req.sku.clone(),
        initial_stock: req.initial_stock,
        price_minor: req.price.minor,
    };
    match execute(&peer.inventory, peer.sku_locks.as_ref(), &req.sku, cmd).await {
        Ok(()) => contract::created(&req.sku),
        Err(AggregateError::UserError(r)) => refused(r),
        Err(AggregateError::AggregateConflict) => conflict(),
        Err(e) => unavailable(e),
    }
}

async fn place_order(
    State(peer): State<Arc<Peer>>,
    headers: HeaderMap,
    Json(req): Json<PlaceOrderRequest>,
) -> Response {
    // hyper drops a handler whose client went away; the order's two writes must not stop
    // between them for that (an order placed and never reserved nor rejected), so they run as
    // a task of their own, awaited here.
    match tokio::spawn(place_order_to_the_end(peer, headers, req)).await {
        Ok(answer) => answer,
        Err(e) => unavailable(e),
    }
}

async fn place_order_to_the_end(peer: Arc<Peer>, headers: HeaderMap, req: PlaceOrderRequest) -> Response {
    let line = match one_line(&req) {
        Ok(line) => line,
        Err(r) => return refused(r),
    };
    let key = idempotency_key(&headers).unwrap_or_default();
    let order_id = if key.is_empty() {
        uuid::Uuid::new_v4().to_string()
    } else {
        order_key(&req.customer_id, &key)
    };
    let _order_lock = lock_if(&peer.order_locks, &order_id).await;
    let price = match peer.price(&line.sku).await {
        Ok(Some(p)) => p,
        Ok(None) => return refused(Refused("unknown-item")),
        Err(e) => return unavailable(e),
    };

    // 1. The order claims the key; a repeat finds it.
    let place = || {
        OrderCommand::Place(PlaceOrder {
            customer_id: req.customer_id.clone(),
            idempotency_key: key.clone(),
            sku: line.sku.clone(),
            quantity: line.quantity,
            unit_price_minor: price,
        })
    };
    // The order lock (if any) is already held for the whole request.
    match execute(&peer.orders, None, &order_id, place).await {
        Ok(()) => {}
        Err(AggregateError::UserError(Repeat::Placed)) => return placed(&order_id),
        Err(AggregateError::UserError(Repeat::Rejected(reason))) => return rejected(&reason),
        Err(AggregateError::AggregateConflict) => return conflict(),
        Err(e) => return unavailable(e),
    }

    // 2. The SKU reserves the stock, or refuses and the order is rejected.
    let reserve = || {
        InventoryCommand::Reserve(Reservation {
            order_id: order_id.clone(),
            customer_id: req.customer_id.clone(),
            idempotency_key: key.clone(),
            sku: line.sku.clone(),
            quantity: line.quantity,
        })
    };
    let (reason, answer) = match execute(&peer.inventory, peer.sku_locks.as_ref(), &line.sku, reserve).await {
        Ok(()) => return placed(&order_id),
        Err(AggregateError::UserError(Refused(slug))) => (slug, refused(Refused(slug))),
        Err(AggregateError::AggregateConflict) => ("version-conflict", conflict()),
        Err(e) => ("unavailable", unavailable(e)),
    };
    let reject = || OrderCommand::Reject { reason: reason.into() };
    if let Err(e) = execute(&peer.orders, None, &order_id, reject).await {
        eprintln!("order {order_id} placed, its reservation failed ({reason}), and rejecting it failed: {e}");
    }
    answer
}

// postgres-es' tables (its db/init.sql), and the catalog read model.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    aggregate_type text NOT NULL, aggregate_id text NOT NULL, sequence bigint CHECK (sequence >= 0) NOT NULL,
    event_type text NOT NULL, event_version text NOT NULL, payload json NOT NULL, metadata json NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence));
CREATE TABLE IF NOT EXISTS snapshots (
    aggregate_type text NOT NULL, aggregate_id text NOT NULL, last_sequence bigint CHECK (last_sequence >= 0) NOT NULL,
    current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL, payload json NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence));
CREATE TABLE IF NOT EXISTS catalog (sku text PRIMARY KEY, price_minor bigint NOT NULL);";

const BENCH_STOCK: &str = "
SELECT a.aggregate_id, (a.payload->'ItemAdded'->>'initial_stock')::bigint,
       COALESCE((SELECT sum((r.payload->'StockReserved'->>'quantity')::bigint) FROM events r
                 WHERE r.aggregate_type = 'inventory' AND r.aggregate_id = a.aggregate_id
                   AND r.event_type = 'StockReserved'), 0)::bigint
  FROM events a WHERE a.aggregate_type = 'inventory' AND a.event_type = 'ItemAdded'";

const BENCH_ORDERS: &str = "
SELECT p.aggregate_id, p.payload->'OrderPlaced'->>'customer_id', p.payload->'OrderPlaced'->>'idempotency_key',
       p.payload->'OrderPlaced'->>'sku', (p.payload->'OrderPlaced'->>'quantity')::bigint
  FROM events p WHERE p.aggregate_type = 'order' AND p.event_type = 'OrderPlaced'
   AND NOT EXISTS (SELECT 1 FROM events r WHERE r.aggregate_type = 'order' AND r.aggregate_id = p.aggregate_id
                     AND r.event_type = 'OrderRejected')";

#[tokio::main]
async fn main() {
    let args = contract::args("127.0.0.1:8090");
    let pool = contract::pool(&args.url).await;
    sqlx::raw_sql(SCHEMA).execute(&pool).await.expect("schema created");
    contract::create_audit_views(&pool, BENCH_STOCK, BENCH_ORDERS).await;
    let catalog: Vec<Box<dyn Query<InventoryState>>> = vec![Box::new(CatalogProjection(pool.clone()))];
    let peer = Arc::new(Peer {
        inventory: postgres_snapshot_cqrs(pool.clone(), catalog, SNAPSHOT_EVERY, ()),
        orders: postgres_cqrs(pool.clone(), vec![], ()),
        pool,
        prices: Mutex::new(HashMap::new()),
        sku_locks: args.serialized.then(AggregateLocks::new),
        order_locks: args.serialized.then(AggregateLocks::new),
    });
    let app = Router::new()
        .route("/v1/catalog/items", post(add_item))
        .route("/v1/orders", post(place_order))
        .with_state(peer);
    contract::serve(&args.addr, app).await;
}
