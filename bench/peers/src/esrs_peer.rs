//! Surge's order + inventory rules on esrs (prima.it) with its PgStore, behind Surge's HTTP
//! contract: `POST /v1/catalog/items` (201, 409 if it exists) and `POST /v1/orders` (202 with
//! the order id, 422 out-of-stock). Same rules as Surge: stock never below zero, one order per
//! Idempotency-Key. Writes are optimistic (esrs' OCC: load, decide, persist; a concurrent
//! write to the same aggregate fails on the store's unique sequence number) and retried like
//! a client of the framework would (bounded), then 409. Its pessimistic lock
//! (`lock_and_load`) was tried first: under a hot SKU every waiter holds a pool connection
//! while the lock holder needs one more, and requests stalled until the pool timed out.
//!
//! With a third argument, Kafka brokers, every persisted event is also published by esrs'
//! own `KafkaEventBus` (topics `peer-esrs.inventory` and `peer-esrs.orders`, key = aggregate
//! id): esrs publishes after its transaction commits and waits for the broker's ack, a dual
//! write where Surge relays from an outbox.
//!
//! Usage: `peer-esrs <listen addr> <database url> [kafka brokers]` (esrs creates its tables).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use esrs::manager::AggregateManager;
use esrs::store::postgres::{PgStore, PgStoreBuilder};
use esrs::Aggregate;
mod contract;

use contract::{
    order_key, problem, refused, unavailable, AddItem, InventoryCommand, InventoryEvent, InventoryState, OrderEvent,
    OrderState, PlaceOrder, PlaceOrderRequest, Refused,
};
use serde_json::json;
use std::sync::Arc;
use uuid::Uuid;

// esrs keeps state apart from the aggregate: the shared model's states and events, behind
// two marker types.
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

struct Order;

impl Aggregate for Order {
    const NAME: &'static str = "order";
    type State = OrderState;
    type Command = PlaceOrder;
    type Event = OrderEvent;
    type Error = Refused;

    fn handle_command(state: &OrderState, c: PlaceOrder) -> Result<Vec<OrderEvent>, Refused> {
        Ok(state.decide(c))
    }

    fn apply_event(mut state: OrderState, event: OrderEvent) -> OrderState {
        state.evolve(event);
        state
    }
}

struct Peer {
    inventory: AggregateManager<PgStore<Inventory>>,
    orders: AggregateManager<PgStore<Order>>,
}

/// Load, decide and persist on one aggregate, retrying write conflicts (bounded, with jitter).
async fn execute<A>(
    manager: &AggregateManager<PgStore<A>>,
    id: Uuid,
    command: impl Fn(&A::State) -> A::Command,
) -> Result<A::State, Response>
where
    A: Aggregate<Error = Refused> + Send + Sync,
    A::State: Default + Send + Sync,
    PgStore<A>: esrs::store::EventStore<Aggregate = A, Error = esrs::store::postgres::PgStoreError>,
{
    for attempt in 0..20u64 {
        let state = match manager.load(id).await {
            Ok(Some(s)) => s,
            Ok(None) => esrs::AggregateState::with_id(id),
            Err(e) => return Err(unavailable(e)),
        };
        let cmd = command(state.inner());
        match manager.handle_command(state, cmd).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(r)) => return Err(refused(r)),
            Err(esrs::store::postgres::PgStoreError::Sqlx(sqlx::Error::Database(d)))
                if d.code().as_deref() == Some("23505") =>
            {
                let jitter = (Uuid::new_v4().as_u128() % 4) as u64;
                tokio::time::sleep(std::time::Duration::from_millis(1 + attempt.min(10) + jitter)).await;
            }
            Err(e) => return Err(unavailable(e)),
        }
    }
    Err(problem(StatusCode::CONFLICT, "version-conflict"))
}

fn sku_id(sku: &str) -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("sku:{sku}").as_bytes())
}

async fn add_item(State(peer): State<Arc<Peer>>, Json(req): Json<AddItem>) -> Response {
    let cmd = |_: &InventoryState| InventoryCommand::AddItem {
        initial_stock: req.initial_stock,
        price_minor: req.price.minor,
    };
    match execute(&peer.inventory, sku_id(&req.sku), cmd).await {
        Ok(_) => (StatusCode::CREATED, Json(json!({"sku": req.sku}))).into_response(),
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
    let order_id = order_key(&headers, &req.customer_id)
        .map_or_else(Uuid::new_v4, |k| Uuid::new_v5(&Uuid::NAMESPACE_OID, k.as_bytes()));
    let reserve = |_: &InventoryState| InventoryCommand::Reserve {
        order_id: order_id.to_string(),
        quantity: line.quantity,
    };
    let price = match execute(&peer.inventory, sku_id(&line.sku), reserve).await {
        Ok(state) => state.price_minor,
        Err(r) => return r,
    };
    let place = |_: &OrderState| PlaceOrder {
        customer_id: req.customer_id.clone(),
        sku: line.sku.clone(),
        quantity: line.quantity,
        unit_price_minor: price,
    };
    match execute(&peer.orders, order_id, place).await {
        Ok(_) => (
            StatusCode::ACCEPTED,
            Json(json!({"order_id": order_id, "status": "placed"})),
        )
            .into_response(),
        Err(r) => r,
    }
}

#[tokio::main]
async fn main() {
    let (addr, pool) = contract::start("127.0.0.1:8091").await;
    let brokers = std::env::args().nth(3);
    let mut inventory = PgStoreBuilder::<Inventory>::new(pool.clone());
    let mut orders = PgStoreBuilder::<Order>::new(pool);
    if let Some(brokers) = &brokers {
        inventory = inventory.add_event_bus(kafka_bus::<Inventory>(brokers, "peer-esrs.inventory").await);
        orders = orders.add_event_bus(kafka_bus::<Order>(brokers, "peer-esrs.orders").await);
    }
    let inventory = inventory.try_build().await.expect("inventory store");
    let orders = orders.try_build().await.expect("order store");
    let peer = Arc::new(Peer {
        inventory: AggregateManager::new(inventory),
        orders: AggregateManager::new(orders),
    });
    let app = Router::new()
        .route("/v1/catalog/items", post(add_item))
        .route("/v1/orders", post(place_order))
        .with_state(peer);
    contract::serve(&addr, app).await;
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
    client.set("enable.idempotence", "true").set("acks", "all");
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
