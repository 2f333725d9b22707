//! Starting the real services of one test in-process (each on port 0 where it listens), and
//! the audit that compares the views with a fold of the event store.

use std::collections::BTreeMap;
use surge_command::{CommandApiConfig, CommandApp, Relay, RelayConfig};
use surge_events::{decode, EventEnvelope, InventoryEvent, OrderEvent, StreamType, ENVELOPE_COLUMNS};
use surge_projections::catalog::{self, CatalogRow};
use surge_projections::orders::{self, OrderRow};
use surge_projections::{Projector, ProjectorConfig};
use surge_query::{QueryApiConfig, QueryApp};
use surge_runtime::DatabaseConfig;
use surge_testkit::TestEnv;

pub use surge_testkit::Service;

pub fn db(env: &TestEnv) -> DatabaseConfig {
    DatabaseConfig {
        max_connections: 5,
        ..env.db.clone()
    }
}

pub async fn command_api(env: &TestEnv) -> (String, Service) {
    let mut config = CommandApiConfig::new("127.0.0.1:0".parse().unwrap(), db(env), env.auth.clone());
    // A debug build's batch during a parallel test run can take longer than the 50 ms latency
    // budget: it would shed a test's burst (shedding has its own tests in surge-command).
    config.order_latency_budget_ms = 0;
    let app = CommandApp::build(config).await.expect("command API starts");
    let url = format!("http://{}", app.local_addr());
    (url, Service::spawn(|s| async move { app.run(s).await.unwrap() }))
}

pub async fn query_api(env: &TestEnv, cache_enabled: bool) -> (String, Service) {
    query_api_with(env, |c| c.cache_enabled = cache_enabled).await
}

pub async fn query_api_with(env: &TestEnv, configure: impl FnOnce(&mut QueryApiConfig)) -> (String, Service) {
    let mut config = QueryApiConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        db(env),
        env.kafka.clone(),
        env.auth.clone(),
    );
    configure(&mut config);
    let app = QueryApp::build(config).await.expect("query API starts");
    let url = format!("http://{}", app.local_addr());
    (url, Service::spawn(|s| async move { app.run(s).await.unwrap() }))
}

pub async fn relay(env: &TestEnv) -> Service {
    let relay = Relay::build(RelayConfig::new(db(env), env.kafka.clone()))
        .await
        .expect("relay starts");
    Service::spawn(|s| async move { relay.run(s).await.unwrap() })
}

pub async fn projector(env: &TestEnv, batch_size: usize) -> Service {
    let mut config = ProjectorConfig::new(db(env), env.kafka.clone());
    config.batch_size = batch_size;
    let projector = Projector::build(config).await.expect("projector starts");
    Service::spawn(|s| async move { projector.run(s).await })
}

/// What the views must hold: every stream of the event store folded with the projections' folds.
pub struct Expected {
    pub items: Vec<CatalogRow>,
    pub orders: Vec<OrderRow>,
}

pub async fn fold_event_store(env: &TestEnv) -> Expected {
    let sql = format!("SELECT {ENVELOPE_COLUMNS} FROM events ORDER BY stream_id, version");
    let rows = sqlx::query(&sql).fetch_all(&env.pool).await.unwrap();
    let mut items: BTreeMap<String, CatalogRow> = BTreeMap::new();
    let mut orders: BTreeMap<uuid::Uuid, OrderRow> = BTreeMap::new();
    for row in &rows {
        let env = EventEnvelope::from_row(row).unwrap();
        match env.stream_type {
            StreamType::Inventory => {
                let e: InventoryEvent = decode(&env).unwrap();
                let key = e.sku().to_string();
                let (row, _) = catalog::fold(items.remove(&key), &env, &e);
                items.insert(key, row.expect("stream starts with ItemAdded"));
            }
            StreamType::Order => {
                let e: OrderEvent = decode(&env).unwrap();
                let key = e.order_id().0;
                let row = orders::fold(orders.remove(&key), &env, &e).expect("starts with OrderPlaced");
                orders.insert(key, row);
            }
        }
    }
    Expected {
        items: items.into_values().collect(),
        orders: orders.into_values().collect(),
    }
}

/// True when the views hold exactly the fold of the event store.
pub async fn views_match_event_store(env: &TestEnv) -> bool {
    let expected = fold_event_store(env).await;
    let mut conn = env.pool.acquire().await.unwrap();
    let items = catalog::load_all(&mut conn, "catalog_items").await.unwrap();
    let orders = orders::load_all(&mut conn, "orders").await.unwrap();
    items == expected.items && orders == expected.orders
}

/// Places an order for `quantity` of `sku` through the command API at `base`; the answer's body.
pub async fn place_order(
    http: &reqwest::Client,
    base: &str,
    customer: &str,
    sku: &str,
    quantity: i64,
) -> serde_json::Value {
    http.post(format!("{base}/v1/orders"))
        .json(&serde_json::json!({"customer_id": customer, "lines": [{"sku": sku, "quantity": quantity}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Adds a catalog item through the command API at `base` (prices in EUR) and expects 201.
pub async fn add_item(http: &reqwest::Client, base: &str, sku: &str, price_minor: i64, stock: i64) {
    let r = http
        .post(format!("{base}/v1/catalog/items"))
        .json(&serde_json::json!({"sku": sku, "name": sku, "category": "test",
                                  "price": {"minor": price_minor, "currency": "EUR"}, "initial_stock": stock}))
        .send()
        .await
        .expect("the command API answers");
    assert_eq!(r.status().as_u16(), 201, "adding {sku}");
}
