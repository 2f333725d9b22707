//! What both peers share: Surge's HTTP contract (request bodies, problem answers) and startup,
//! so each peer file holds only its framework's model.

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::Deserialize;
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
