//! Surge's order + inventory rules with no framework, the design most shops run: a row per
//! SKU holding its stock, a row per order, one Postgres transaction per order, behind Surge's
//! HTTP contract (`POST /v1/catalog/items` 201/409, `POST /v1/orders` 202/422).
//!
//! Tables: `items(sku PK, available CHECK (available >= 0), initial_stock, price_minor)` and
//! `orders(order_id PK, customer_id, idempotency_key, sku, quantity, total_minor, created_at)`
//! with `UNIQUE (customer_id, idempotency_key)`.
//!
//! An order is one transaction:
//! 1. `INSERT INTO orders ... ON CONFLICT (customer_id, idempotency_key) DO NOTHING RETURNING`:
//!    the key is claimed first. A repeat inserts nothing (a concurrent repeat waits on the
//!    unique index until the first commits) and gets the existing order's id back, 202,
//!    without touching stock;
//! 2. `UPDATE items SET available = available - q WHERE sku = $1 AND available >= q`: the row
//!    lock serialises orders on one SKU inside Postgres, no retry needed. 0 rows: rollback (the
//!    order row goes too) and 422, `unknown-item` if there is no such SKU, else `out-of-stock`.
//!    A refused order leaves no row, so a repeat of it is decided again;
//! 3. commit, 202. (Orders of several lines would update their SKUs in SKU order, against
//!    deadlocks; the benchmark sends one line.)
//!
//! sqlx prepares and caches every statement on each connection. Audit views: `bench_stock`
//! (reserved = initial_stock - available) and `bench_orders` (the orders table).
//!
//! Usage: `peer-plain-pg <listen addr> <database url>` (creates its tables and views).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::{Json, Router};
use contract::{idempotency_key, one_line, problem, refused, unavailable, AddItem, PlaceOrderRequest};
use uuid::Uuid;
mod contract;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS items (
    sku text PRIMARY KEY,
    available bigint NOT NULL CHECK (available >= 0),
    initial_stock bigint NOT NULL,
    price_minor bigint NOT NULL);
CREATE TABLE IF NOT EXISTS orders (
    order_id uuid PRIMARY KEY,
    customer_id text NOT NULL,
    idempotency_key text,
    sku text NOT NULL,
    quantity bigint NOT NULL,
    total_minor bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (customer_id, idempotency_key));";

async fn add_item(State(pool): State<sqlx::PgPool>, Json(req): Json<AddItem>) -> Response {
    if req.initial_stock < 0 || req.price.minor < 0 {
        return problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid-quantity");
    }
    let added = sqlx::query(
        "INSERT INTO items (sku, available, initial_stock, price_minor) VALUES ($1, $2, $2, $3) \
         ON CONFLICT (sku) DO NOTHING",
    )
    .bind(&req.sku)
    .bind(req.initial_stock)
    .bind(req.price.minor)
    .execute(&pool)
    .await;
    match added {
        Ok(r) if r.rows_affected() == 1 => contract::created(&req.sku),
        Ok(_) => problem(StatusCode::CONFLICT, "item-already-exists"),
        Err(e) => unavailable(e),
    }
}

async fn place_order(
    State(pool): State<sqlx::PgPool>,
    headers: HeaderMap,
    Json(req): Json<PlaceOrderRequest>,
) -> Response {
    let line = match one_line(&req) {
        Ok(line) => line,
        Err(r) => return refused(r),
    };
    match place(
        &pool,
        &req.customer_id,
        idempotency_key(&headers),
        &line.sku,
        line.quantity,
    )
    .await
    {
        Ok(Ok(order_id)) => contract::placed(order_id),
        Ok(Err(slug)) => problem(StatusCode::UNPROCESSABLE_ENTITY, slug),
        Err(e) => unavailable(e),
    }
}

/// One transaction: claim the key, take the stock, commit (or roll both back).
async fn place(
    pool: &sqlx::PgPool,
    customer_id: &str,
    key: Option<String>,
    sku: &str,
    quantity: i64,
) -> Result<Result<Uuid, &'static str>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let inserted: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO orders (order_id, customer_id, idempotency_key, sku, quantity, total_minor) \
         VALUES ($1, $2, $3, $4, $5, $5 * COALESCE((SELECT price_minor FROM items WHERE sku = $4), 0)) \
         ON CONFLICT (customer_id, idempotency_key) DO NOTHING RETURNING order_id",
    )
    .bind(Uuid::new_v4())
    .bind(customer_id)
    .bind(&key)
    .bind(sku)
    .bind(quantity)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(order_id) = inserted else {
        // A repeat: the order the first request placed (its transaction has committed).
        let existing: Uuid =
            sqlx::query_scalar("SELECT order_id FROM orders WHERE customer_id = $1 AND idempotency_key = $2")
                .bind(customer_id)
                .bind(&key)
                .fetch_one(&mut *tx)
                .await?;
        tx.commit().await?;
        return Ok(Ok(existing));
    };
    let reserved = sqlx::query("UPDATE items SET available = available - $2 WHERE sku = $1 AND available >= $2")
        .bind(sku)
        .bind(quantity)
        .execute(&mut *tx)
        .await?;
    if reserved.rows_affected() == 1 {
        tx.commit().await?;
        return Ok(Ok(order_id));
    }
    tx.rollback().await?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM items WHERE sku = $1)")
        .bind(sku)
        .fetch_one(pool)
        .await?;
    Ok(Err(if exists { "out-of-stock" } else { "unknown-item" }))
}

#[tokio::main]
async fn main() {
    let args = contract::args("127.0.0.1:8092");
    assert!(
        !args.serialized,
        "peer-plain-pg has no --serialized mode: Postgres' row lock serialises a SKU"
    );
    let pool = contract::pool(&args.url).await;
    sqlx::raw_sql(SCHEMA).execute(&pool).await.expect("schema created");
    contract::create_audit_views(
        &pool,
        "SELECT sku, initial_stock, initial_stock - available FROM items",
        "SELECT order_id::text, customer_id, idempotency_key, sku, quantity FROM orders",
    )
    .await;
    let app = Router::new()
        .route("/v1/catalog/items", post(add_item))
        .route("/v1/orders", post(place_order))
        .with_state(pool);
    contract::serve(&args.addr, app).await;
}
