//! Surge's order + inventory rules on esrs 0.18 (prima.it) with its PgStore, behind Surge's
//! HTTP contract: `POST /v1/catalog/items` (201, 409 if it exists) and `POST /v1/orders` (202
//! with the order id, 422 out-of-stock / unknown-item / invalid-quantity).
//!
//! One aggregate, the SKU (`inventory`, id = a UUID v5 of the SKU: exists, stock, price), and
//! one table, `orders(order_id PK, customer_id, idempotency_key, sku, quantity, total_minor)`,
//! the order record. esrs runs transactional event handlers inside the transaction that
//! persists the events, so an order is one transaction: the SKU's `StockReserved` event and
//! the order's row (written by the `OrdersTable` handler) commit together or not at all.
//! The order id is a UUID v5 of `customer_id:Idempotency-Key`:
//! - a repeat of the key finds its row in `orders` first and gets 202 with the same id,
//!   without loading the SKU;
//! - two concurrent requests with one key: the second's transaction fails on `orders_pkey`
//!   and rolls back its `StockReserved` with it; it answers 202 with the same id. Stock is
//!   never reserved twice;
//! - a refused order (422) writes nothing, so a repeat of it is decided again.
//!
//! esrs 0.18 has no snapshots: every command loads the SKU's whole stream (one event per
//! order on a hot SKU), as any esrs user's aggregate does.
//!
//! Modes:
//! - optimistic (default): esrs' OCC: load, decide, persist; a concurrent write to the same
//!   SKU fails on the events' unique `(aggregate_id, sequence_number)` and is retried like a
//!   client of the framework would (up to 20 attempts, growing pause with jitter), then 409.
//! - `--serialized`: commands on one SKU wait for each other in this process (an async mutex
//!   per SKU) before taking a connection, so the hot SKU never
//!   conflicts (the retry stays as a safety net, e.g. for a second process). esrs' own
//!   `lock_and_load` (a Postgres advisory lock) is not used: it holds a pool connection for
//!   the lock while the persist needs a second one, so under a hot SKU waiters hold the pool
//!   and requests stall until the pool times out (tried in an earlier version of this peer).
//!   The mutex covers esrs' `handle_command`; with the Kafka bus that call also publishes and
//!   awaits the broker's ack after the commit, so the hot SKU waits for the ack too (esrs
//!   offers no hook between its commit and its publish).
//!
//! With a third argument, Kafka brokers, every persisted event is also published by esrs'
//! own `KafkaEventBus` (topic `peer-esrs.inventory`, key = aggregate id; `StockReserved`
//! carries its order): esrs publishes after its transaction commits and waits for the
//! broker's ack, a dual write where Surge relays from an outbox.
//!
//! Audit views: `bench_stock` sums `StockReserved` quantities in `inventory_events`;
//! `bench_orders` is the `orders` table.
//!
//! Usage: `peer-esrs [--serialized] <listen addr> <database url> [kafka brokers]` (esrs creates
//! its events table; the peer creates `orders` and the views).

use async_trait::async_trait;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use axum::{Json, Router};
use esrs::handler::TransactionalEventHandler;
use esrs::manager::AggregateManager;
use esrs::store::postgres::{PgStore, PgStoreBuilder, PgStoreError};
use esrs::store::StoreEvent;
use esrs::{Aggregate, AggregateState};
mod contract;

use contract::{
    backoff, conflict, idempotency_key, lock_if, one_line, order_key, placed, refused, unavailable, AddItem,
    AggregateLocks, InventoryCommand, InventoryEvent, InventoryState, PlaceOrderRequest, Refused, Reservation,
    ATTEMPTS,
};
use sqlx::PgConnection;
use std::sync::Arc;
use uuid::Uuid;

// esrs keeps state apart from the aggregate: the shared model's state and events behind a
// marker type.
struct Inventory;

impl Aggregate for Inventory {
    const NAME: &'static str = "inventory";
    type State = InventoryState;
    type Command = InventoryCommand;
    type Event = InventoryEvent;
    type Error = Refused;

    fn handle_command(state: &InventoryState, command: InventoryCommand) -> Result<Vec<InventoryEvent>, Refused> {
        state.decide(command)
    }

    fn apply_event(mut state: InventoryState, event: InventoryEvent) -> InventoryState {
        state.evolve(event);
        state
    }
}

/// Writes the order's row in the transaction that persists its `StockReserved`.
struct OrdersTable;

#[async_trait]
impl TransactionalEventHandler<Inventory, PgStoreError, PgConnection> for OrdersTable {
    async fn handle(
        &self,
        event: &StoreEvent<InventoryEvent>,
        executor: &mut PgConnection,
    ) -> Result<(), PgStoreError> {
        let InventoryEvent::StockReserved {
            order_id,
            customer_id,
            idempotency_key,
            sku,
            quantity,
            total_minor,
        } = &event.payload
        else {
            return Ok(());
        };
        let order_id: Uuid = order_id.parse().map_err(|e| PgStoreError::Custom(Box::new(e)))?;
        sqlx::query(
            "INSERT INTO orders (order_id, customer_id, idempotency_key, sku, quantity, total_minor) \
             VALUES ($1, $2, NULLIF($3, ''), $4, $5, $6)",
        )
        .bind(order_id)
        .bind(customer_id)
        .bind(idempotency_key)
        .bind(sku)
        .bind(quantity)
        .bind(total_minor)
        .execute(executor)
        .await?;
        Ok(())
    }
}

struct Peer {
    inventory: AggregateManager<PgStore<Inventory>>,
    pool: sqlx::PgPool,
    /// `--serialized`: one mutex per SKU.
    sku_locks: Option<AggregateLocks>,
}

/// A unique violation, and on which constraint.
fn unique_violation(e: &PgStoreError) -> Option<String> {
    match e {
        PgStoreError::Sqlx(sqlx::Error::Database(d)) if d.code().as_deref() == Some("23505") => {
            Some(d.constraint().unwrap_or_default().to_owned())
        }
        _ => None,
    }
}

/// Load, decide and persist on one SKU (under its mutex in `--serialized` mode), retrying
/// lost writes on the events' sequence number (bounded, with jitter). Other store errors,
/// among them a violation of `orders_pkey`, are the caller's.
async fn execute(
    peer: &Peer,
    sku: &str,
    command: impl Fn() -> InventoryCommand,
) -> Result<Result<InventoryState, Refused>, Option<PgStoreError>> {
    let id = Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("sku:{sku}").as_bytes());
    for attempt in 0..ATTEMPTS {
        let guard = lock_if(&peer.sku_locks, sku).await;
        let state = match peer.inventory.load(id).await {
            Ok(Some(s)) => s,
            Ok(None) => AggregateState::with_id(id),
            Err(e) => return Err(Some(e)),
        };
        match peer.inventory.handle_command(state, command()).await {
            Ok(outcome) => return Ok(outcome),
            Err(e) if unique_violation(&e).is_some_and(|c| c.ends_with("_sequence_number")) => {
                drop(guard);
                backoff(attempt).await;
            }
            Err(e) => return Err(Some(e)),
        }
    }
    Err(None)
}

async fn add_item(State(peer): State<Arc<Peer>>, Json(req): Json<AddItem>) -> Response {
    let cmd = || InventoryCommand::AddItem {
        sku: req.sku.clone(),
        initial_stock: req.initial_stock,
        price_minor: req.price.minor,
    };
    match execute(&peer, &req.sku, cmd).await {
        Ok(Ok(_)) => contract::created(&req.sku),
        Ok(Err(r)) => refused(r),
        Err(None) => conflict(),
        Err(Some(e)) => unavailable(e),
    }
}

/// Whether the order has its row (it was placed).
async fn order_exists(pool: &sqlx::PgPool, order_id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM orders WHERE order_id = $1)")
        .bind(order_id)
        .fetch_one(pool)
        .await
}

async fn place_order(
    State(peer): State<Arc<Peer>>,
    headers: HeaderMap,
    Json(req): Json<PlaceOrderRequest>,
) -> Response {
    let line = match one_line(&req) {
        Ok(line) => line,
        Err(r) => return refused(r),
    };
    let key = idempotency_key(&headers).unwrap_or_default();
    let order_id = if key.is_empty() {
        Uuid::new_v4()
    } else {
        Uuid::new_v5(&Uuid::NAMESPACE_OID, order_key(&req.customer_id, &key).as_bytes())
    };
    // A repeat: the order is there already.
    if !key.is_empty() {
        match order_exists(&peer.pool, order_id).await {
            Ok(true) => return placed(order_id),
            Ok(false) => {}
            Err(e) => return unavailable(e),
        }
    }
    let reserve = || {
        InventoryCommand::Reserve(Reservation {
            order_id: order_id.to_string(),
            customer_id: req.customer_id.clone(),
            idempotency_key: key.clone(),
            sku: line.sku.clone(),
            quantity: line.quantity,
        })
    };
    match execute(&peer, &line.sku, reserve).await {
        Ok(Ok(_)) => placed(order_id),
        // Refused, unless a concurrent repeat of the key placed the order meanwhile.
        Ok(Err(r)) => match order_exists(&peer.pool, order_id).await {
            Ok(true) => placed(order_id),
            Ok(false) => refused(r),
            Err(e) => unavailable(e),
        },
        // A concurrent repeat of the key committed first: its order stands, ours rolled back.
        Err(Some(e)) if unique_violation(&e).as_deref() == Some("orders_pkey") => placed(order_id),
        Err(None) => conflict(),
        Err(Some(e)) => unavailable(e),
    }
}

const ORDERS: &str = "
CREATE TABLE IF NOT EXISTS orders (
    order_id uuid PRIMARY KEY,
    customer_id text NOT NULL,
    idempotency_key text,
    sku text NOT NULL,
    quantity bigint NOT NULL,
    total_minor bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now());";

const BENCH_STOCK: &str = "
SELECT a.payload->'ItemAdded'->>'sku', (a.payload->'ItemAdded'->>'initial_stock')::bigint,
       COALESCE((SELECT sum((r.payload->'StockReserved'->>'quantity')::bigint) FROM inventory_events r
                 WHERE r.aggregate_id = a.aggregate_id AND r.payload ? 'StockReserved'), 0)::bigint
  FROM inventory_events a WHERE a.payload ? 'ItemAdded'";

const BENCH_ORDERS: &str = "SELECT order_id::text, customer_id, idempotency_key, sku, quantity FROM orders";

#[tokio::main]
async fn main() {
    let args = contract::args("127.0.0.1:8091");
    let pool = contract::pool(&args.url).await;
    sqlx::raw_sql(ORDERS)
        .execute(&pool)
        .await
        .expect("orders table created");
    let mut inventory = PgStoreBuilder::<Inventory>::new(pool.clone()).add_transactional_event_handler(OrdersTable);
    if let Some(brokers) = args.rest.first() {
        inventory = inventory.add_event_bus(kafka_bus::<Inventory>(brokers, "peer-esrs.inventory").await);
    }
    let inventory = inventory.try_build().await.expect("inventory store");
    contract::create_audit_views(&pool, BENCH_STOCK, BENCH_ORDERS).await;
    let peer = Arc::new(Peer {
        inventory: AggregateManager::new(inventory),
        pool,
        sku_locks: args.serialized.then(AggregateLocks::new),
    });
    let app = Router::new()
        .route("/v1/catalog/items", post(add_item))
        .route("/v1/orders", post(place_order))
        .with_state(peer);
    contract::serve(&args.addr, app).await;
}

/// esrs' Kafka event bus on `topic`, with the idempotent producer Surge's relay uses too; a
/// failed publish is logged (esrs hands errors to this handler, the command still succeeds).
async fn kafka_bus<A>(brokers: &str, topic: &str) -> esrs::bus::kafka::KafkaEventBus<A> {
    // The broker creates no topic by itself: 6 partitions, as Surge's.
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("Kafka admin client");
    let topics = [NewTopic::new(topic, 6, TopicReplication::Fixed(1))];
    // "Already exists" from an earlier run is fine; anything else shows when publishing.
    let _ = admin.create_topics(&topics, &AdminOptions::new()).await;
    let mut client = rdkafka::ClientConfig::new();
    // Sent at once (librdkafka waits 5 ms by default to batch): the request waits for the ack.
    client
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "0");
    let config = esrs::bus::kafka::KafkaEventBusConfig::builder()
        .broker_url_list(brokers)
        .topic(topic)
        .client_config(client)
        .error_handler(Box::new(|e| eprintln!("peer-esrs: publishing to Kafka failed: {e:?}")))
        .build();
    esrs::bus::kafka::KafkaEventBus::new(config)
        .await
        .expect("Kafka producer")
}
