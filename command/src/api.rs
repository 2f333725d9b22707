//! The command API: HTTP in, commands to [`Commands`], problem+json out.

use crate::commands::{AddItem, CommandError, Commands, OrderAccepted, PlaceOrder};
use crate::domain::DomainError;
use crate::idempotency::IdempotencyKey;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::time::Duration;
use surge_events::order::CancelReason;
use surge_events::{CustomerId, EventMetadata, Money, OrderId, Sku};
use surge_runtime::extract::{Body, PathParam};
use surge_runtime::http::REQUEST_ID;
use surge_runtime::Problem;
use uuid::Uuid;

pub const CONSISTENCY_TOKEN: &str = "x-consistency-token";
const IDEMPOTENCY_KEY: &str = "idempotency-key";
const CORRELATION_ID: &str = "x-correlation-id";

#[derive(Clone)]
pub struct ApiContext {
    pub commands: Commands,
    pub pool: PgPool,
}

pub fn router(ctx: ApiContext) -> Router {
    Router::new()
        .route("/v1/catalog/items", post(add_item))
        .route("/v1/inventory/{sku}/restock", post(restock))
        .route("/v1/orders", post(place_order))
        .route("/v1/orders/{order_id}/cancel", post(cancel_order))
        .route("/v1/orders/{order_id}/payment", post(submit_payment))
        .route("/healthz", get(surge_runtime::http::healthz))
        .route("/readyz", get(readyz))
        .with_state(ctx)
}

/// The error answer of a command: a problem with a stable type; 5xx causes are logged once.
pub struct ApiError(Problem);

impl From<Problem> for ApiError {
    fn from(p: Problem) -> Self {
        ApiError(p)
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        let p = match &e {
            CommandError::Domain(d) => domain_problem(d),
            CommandError::Conflict {
                stream_id,
                current_version,
            } => Problem::new(
                StatusCode::CONFLICT,
                "version-conflict",
                "Concurrent modification",
            )
            .detail(e.to_string())
            .with("stream_id", stream_id.clone())
            .with("current_version", *current_version)
            .retry_after(1),
            CommandError::IdempotencyKeyReused => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Idempotency key reused with a different request",
            )
            .detail(e.to_string()),
            CommandError::Overloaded { sku, queue_depth } => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "hot-sku-overloaded",
                "Too many orders waiting",
            )
            .detail(e.to_string())
            .with("sku", sku.as_str())
            .with("queue_depth", *queue_depth as u64)
            .retry_after(1),
            CommandError::LaneStopped => {
                Problem::unavailable("the order could not be sequenced; retry", 1)
            }
            CommandError::Store(crate::store::StoreError::Database(db)) => Problem::database(db),
            CommandError::Store(s) => {
                tracing::error!(error = %s, "command failed in the event store");
                Problem::internal()
            }
        };
        ApiError(p)
    }
}

fn domain_problem(d: &DomainError) -> Problem {
    let (status, title) = match d {
        DomainError::UnknownOrder(_) => (StatusCode::NOT_FOUND, "No such order"),
        DomainError::ItemAlreadyExists { .. } | DomainError::OrderAlreadyExists(_) => {
            (StatusCode::CONFLICT, "Already exists")
        }
        DomainError::OutOfStock { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "Out of stock"),
        _ => (StatusCode::UNPROCESSABLE_ENTITY, "Business rule violated"),
    };
    let p = Problem::new(status, d.slug(), title).detail(d.to_string());
    match d {
        DomainError::OutOfStock {
            sku,
            requested,
            available,
        } => p
            .with("sku", sku.as_str())
            .with("requested", *requested)
            .with("available", *available),
        DomainError::UnknownItem { sku } => p.with("sku", sku.as_str()),
        _ => p,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.0.into_response()
    }
}

/// Metadata of the events a request causes: its correlation id comes from the caller
/// (`x-correlation-id`, else the request id) so one id follows a checkout end to end.
fn metadata(headers: &HeaderMap, actor: String) -> EventMetadata {
    let parse = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| Uuid::parse_str(s).ok())
    };
    EventMetadata {
        correlation_id: parse(CORRELATION_ID)
            .or_else(|| parse(REQUEST_ID.as_str()))
            .unwrap_or_else(Uuid::now_v7),
        causation_id: None,
        actor,
    }
}

fn token_header(position: i64) -> [(&'static str, HeaderValue); 1] {
    [(CONSISTENCY_TOKEN, HeaderValue::from(position))]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddItemRequest {
    pub sku: Sku,
    pub name: String,
    pub category: String,
    pub price: Money,
    #[serde(default)]
    pub initial_stock: i64,
}

#[derive(Debug, Serialize)]
pub struct ItemAccepted {
    pub sku: Sku,
    pub consistency_token: i64,
}

#[tracing::instrument(skip_all)]
async fn add_item(
    State(ctx): State<ApiContext>,
    headers: HeaderMap,
    Body(req): Body<AddItemRequest>,
) -> Result<Response, ApiError> {
    let meta = metadata(&headers, "admin".into());
    let sku = req.sku.clone();
    let committed = ctx
        .commands
        .add_item(
            AddItem {
                sku: req.sku,
                name: req.name,
                category: req.category,
                price: req.price,
                initial_stock: req.initial_stock,
            },
            &meta,
        )
        .await?;
    let location = HeaderValue::from_str(&format!("/v1/catalog/items/{sku}"))
        .map_err(|_| Problem::internal())?;
    Ok((
        StatusCode::CREATED,
        [(axum::http::header::LOCATION, location)],
        token_header(committed.last_position),
        Json(ItemAccepted {
            sku,
            consistency_token: committed.last_position,
        }),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestockRequest {
    pub quantity: i64,
}

#[tracing::instrument(skip_all)]
async fn restock(
    State(ctx): State<ApiContext>,
    PathParam(sku): PathParam<Sku>,
    headers: HeaderMap,
    Body(req): Body<RestockRequest>,
) -> Result<Response, ApiError> {
    let meta = metadata(&headers, "admin".into());
    let committed = ctx.commands.restock(&sku, req.quantity, &meta).await?;
    Ok((
        token_header(committed.last_position),
        Json(ItemAccepted {
            sku,
            consistency_token: committed.last_position,
        }),
    )
        .into_response())
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OrderLineRequest {
    pub sku: Sku,
    pub quantity: i64,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrderRequest {
    pub customer_id: CustomerId,
    pub lines: Vec<OrderLineRequest>,
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(v) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(s) if !s.is_empty() && s.len() <= 255 && s.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(s.to_string()))
        }
        _ => Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-idempotency-key",
            "Invalid Idempotency-Key",
        )
        .detail("Idempotency-Key must be 1 to 255 visible ASCII characters")),
    }
}

#[tracing::instrument(skip_all)]
async fn place_order(
    State(ctx): State<ApiContext>,
    headers: HeaderMap,
    Body(req): Body<PlaceOrderRequest>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?
        .map(|k| IdempotencyKey::new(format!("orders:{}", req.customer_id), k, &req));
    let meta = metadata(&headers, format!("customer:{}", req.customer_id));
    let cmd = PlaceOrder {
        customer_id: req.customer_id,
        lines: req.lines.into_iter().map(|l| (l.sku, l.quantity)).collect(),
    };
    let accepted: OrderAccepted = ctx.commands.place_order(cmd, key, &meta).await?;
    let location = HeaderValue::from_str(&format!("/v1/orders/{}", accepted.order_id))
        .map_err(|_| Problem::internal())?;
    Ok((
        StatusCode::ACCEPTED,
        [(axum::http::header::LOCATION, location)],
        token_header(accepted.consistency_token),
        Json(accepted),
    )
        .into_response())
}

#[derive(Debug, Serialize)]
pub struct OrderStatusChanged {
    pub order_id: OrderId,
    pub status: &'static str,
    pub consistency_token: i64,
}

#[tracing::instrument(skip_all, fields(order_id = %order_id))]
async fn cancel_order(
    State(ctx): State<ApiContext>,
    PathParam(order_id): PathParam<OrderId>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let meta = metadata(&headers, "customer".into());
    let committed = ctx
        .commands
        .cancel_order(order_id, CancelReason::CustomerRequest, &meta)
        .await?;
    Ok((
        token_header(committed.last_position),
        Json(OrderStatusChanged {
            order_id,
            status: "cancelled",
            consistency_token: committed.last_position,
        }),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentRequest {
    /// The payment provider's token for the customer's card; never the card number.
    pub payment_token: String,
}

#[tracing::instrument(skip_all, fields(order_id = %order_id))]
async fn submit_payment(
    State(ctx): State<ApiContext>,
    PathParam(order_id): PathParam<OrderId>,
    headers: HeaderMap,
    Body(req): Body<PaymentRequest>,
) -> Result<Response, ApiError> {
    let meta = metadata(&headers, "customer".into());
    let committed = ctx
        .commands
        .submit_payment(order_id, &req.payment_token, &meta)
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        token_header(committed.last_position),
        Json(OrderStatusChanged {
            order_id,
            status: "payment_pending",
            consistency_token: committed.last_position,
        }),
    )
        .into_response())
}

/// `GET /readyz`: ready when the event store answers.
async fn readyz(State(ctx): State<ApiContext>) -> Response {
    let ping = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query("SELECT 1").execute(&ctx.pool),
    )
    .await;
    match ping {
        Ok(Ok(_)) => (StatusCode::OK, "ready").into_response(),
        _ => Problem::unavailable("the event store is not reachable", 2).into_response(),
    }
}
