//! The command API: HTTP in, commands to [`Commands`], problem+json out.

use crate::admission::{admit, Admission};
use crate::answers::{CommandError, MoneyDoc, OrderAccepted};
use crate::commands::{AddItem, Commands, PlaceOrder};
use crate::domain::DomainError;
use crate::idempotency::IdempotencyKey;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use surge_events::order::CancelReason;
use surge_events::{CustomerId, EventMetadata, Money, OrderId, Sku};
use surge_runtime::auth::{authenticate, Authenticator};
use surge_runtime::extract::{Body, OrderIdParam, PathParam};
use surge_runtime::http::SecuritySchemes;
use surge_runtime::http::REQUEST_ID;
use surge_runtime::problem::ProblemDoc;
use surge_runtime::{Principal, Problem, Role};
use surge_webhooks::api::WebhooksDoc;
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

pub const CONSISTENCY_TOKEN: &str = "x-consistency-token";
const IDEMPOTENCY_KEY: &str = "idempotency-key";
const CORRELATION_ID: &str = "x-correlation-id";

#[derive(Clone)]
pub struct ApiContext {
    pub commands: Commands,
    pub pool: PgPool,
    /// Where webhook endpoints may point (checked when one is registered).
    pub webhooks: surge_webhooks::UrlPolicy,
}

/// Every route sits behind [`authenticate`]; each handler asks its caller for the role or the
/// ownership it needs (401 without credentials, 403 without the right).
pub fn router(ctx: ApiContext, admission: Admission, auth: std::sync::Arc<Authenticator>) -> Router {
    Router::new()
        .route("/v1/catalog/items", post(add_item))
        .route("/v1/catalog/items/{sku}/buckets", put(set_buckets))
        .route("/v1/catalog/items/{sku}/purchase-limit", put(set_purchase_limit))
        .route("/v1/inventory/{sku}/restock", post(restock))
        .route("/v1/orders", post(place_order))
        .route("/v1/orders/{order_id}/cancel", post(cancel_order))
        .route("/v1/orders/{order_id}/payment", post(submit_payment))
        .route_layer(axum::middleware::from_fn_with_state(admission, admit))
        .merge(surge_webhooks::api::routes(surge_webhooks::api::WebhooksApi::new(
            ctx.pool.clone(),
            ctx.webhooks.clone(),
        )))
        .route("/healthz", get(surge_runtime::http::healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi))
        .layer(axum::middleware::from_fn_with_state(auth, authenticate))
        .with_state(ctx)
}

/// The command API's contract, generated from the handlers and their types.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Surge command API",
        description = "Checkout and inventory commands. Errors are RFC 9457 problem+json."
    ),
    paths(add_item, set_buckets, set_purchase_limit, restock, place_order, cancel_order, submit_payment),
    components(schemas(ProblemDoc, MoneyDoc)),
    modifiers(&SecuritySchemes, &WebhooksDoc),
    security(("bearer" = []), ("api_key" = []))
)]
pub struct ApiDoc;

async fn openapi() -> Json<serde_json::Value> {
    Json(surge_runtime::http::openapi_json(&ApiDoc::openapi()))
}

/// The error answer of a command: a problem with a stable type; 5xx causes are logged once.
pub struct ApiError(Problem);

impl From<Problem> for ApiError {
    fn from(p: Problem) -> Self {
        metrics::counter!("surge_commands_rejected_total", "reason" => slug_of(&p)).increment(1);
        ApiError(p)
    }
}

fn slug_of(p: &Problem) -> String {
    p.type_uri.rsplit('/').next().unwrap_or("unknown").to_string()
}

fn accepted(command: &'static str) {
    metrics::counter!("surge_commands_accepted_total", "command" => command).increment(1);
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        let p = match &e {
            CommandError::Domain(d) => domain_problem(d),
            CommandError::Conflict {
                stream_id,
                current_version,
            } => Problem::new(StatusCode::CONFLICT, "version-conflict", "Concurrent modification")
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
            CommandError::Overloaded {
                sku,
                queue_depth,
                estimated_wait,
            } => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "hot-sku-overloaded",
                "Too many orders waiting",
            )
            .detail(e.to_string())
            .with("sku", sku.as_str())
            .with("queue_depth", *queue_depth as u64)
            .with("estimated_wait_ms", estimated_wait.as_millis() as u64)
            .retry_after(estimated_wait.as_secs_f64().ceil().max(1.0) as u64),
            CommandError::LaneStopped => Problem::unavailable("the order could not be sequenced; retry", 1),
            CommandError::OutcomeUnknown { check } => Problem::outcome_unknown(check),
            CommandError::StoreUnavailable(cause) => {
                tracing::warn!(cause, "event store unavailable");
                Problem::unavailable("the event store is busy or unreachable; retry shortly", 1)
            }
            CommandError::Store(crate::store::StoreError::Database(db)) => Problem::database(db),
            CommandError::Store(s) => {
                tracing::error!(error = %s, "command failed in the event store");
                Problem::internal()
            }
        };
        // Counted (by reason) where every refusal passes: From<Problem>.
        ApiError::from(p)
    }
}

fn domain_problem(d: &DomainError) -> Problem {
    let (status, title) = match d {
        DomainError::UnknownOrder(_) => (StatusCode::NOT_FOUND, "No such order"),
        DomainError::ItemAlreadyExists { .. } | DomainError::OrderAlreadyExists(_) => {
            (StatusCode::CONFLICT, "Already exists")
        }
        DomainError::OutOfStock { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "Out of stock"),
        DomainError::PurchaseLimit { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "Purchase limit reached"),
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
        DomainError::PurchaseLimit {
            sku,
            limit,
            held,
            requested,
        } => p
            .with("sku", sku.as_str())
            .with("max_per_customer", *limit)
            .with("held", *held)
            .with("requested", *requested),
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

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddItemRequest {
    #[schema(value_type = String, pattern = "^[A-Za-z0-9._-]{1,64}$", example = "SNEAKER-1")]
    pub sku: Sku,
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    pub name: String,
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    pub category: String,
    #[serde(deserialize_with = "crate::answers::money")]
    #[schema(value_type = MoneyDoc)]
    pub price: Money,
    #[serde(default, deserialize_with = "surge_runtime::extract::integer")]
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    pub initial_stock: i64,
    /// How many stock buckets (streams) the item's stock is split into, so that several
    /// command API instances sell it without taking turns on one stream; default 1.
    #[serde(default = "one_bucket", deserialize_with = "surge_runtime::extract::integer")]
    #[schema(minimum = 1, maximum = 64, default = 1)]
    pub buckets: i64,
    /// The most units one customer may hold reserved or bought at once; absent or null: no limit.
    #[serde(default, deserialize_with = "optional_integer")]
    #[schema(minimum = 1, maximum = 1_000_000_000, nullable)]
    pub max_per_customer: Option<i64>,
}

fn one_bucket() -> i64 {
    1
}

/// `deserialize_with` for an optional integer body field (null or absent: `None`), read as
/// [`surge_runtime::extract::integer`] reads one.
fn optional_integer<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    struct Integer(#[serde(deserialize_with = "surge_runtime::extract::integer")] i64);
    Ok(Option::<Integer>::deserialize(d)?.map(|Integer(v)| v))
}

/// A bucket count the rules would refuse, kept for their refusal (422 `invalid-buckets`)
/// rather than a cast that changes it.
fn bucket_count(buckets: i64) -> Result<u32, ApiError> {
    u32::try_from(buckets)
        .ok()
        .filter(|b| (1..=crate::domain::MAX_BUCKETS).contains(b))
        .ok_or_else(|| {
            ApiError::from(CommandError::Domain(DomainError::InvalidBuckets {
                buckets,
                max: crate::domain::MAX_BUCKETS,
            }))
        })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ItemAccepted {
    #[schema(value_type = String)]
    pub sku: Sku,
    pub consistency_token: i64,
}

/// Add an item to the catalog with its opening stock (admin).
#[utoipa::path(post, path = "/v1/catalog/items", request_body = AddItemRequest,
    responses((status = 201, body = ItemAccepted, description = "added; Location names the item on the query API",
               links(
                   ("Restock" = (operation_id = "restock", parameters(("sku" = "$response.body#/sku")),
                                 description = "add stock to the item just added")),
                   ("PlaceOrder" = (operation_id = "place_order",
                                    request_body = json!({"lines": [{"sku": "$response.body#/sku", "quantity": 1}]}),
                                    description = "order one of the item just added, for a customer the caller may act for"))
               )),
              (status = 400, body = ProblemDoc, content_type = "application/problem+json"), (status = 413, body = ProblemDoc, content_type = "application/problem+json"), (status = 415, body = ProblemDoc, content_type = "application/problem+json"), (status = 401, body = ProblemDoc, content_type = "application/problem+json"), (status = 403, body = ProblemDoc, content_type = "application/problem+json"),
              (status = 409, body = ProblemDoc, content_type = "application/problem+json"), (status = 422, body = ProblemDoc, content_type = "application/problem+json")))]
#[tracing::instrument(skip_all)]
async fn add_item(
    caller: Principal,
    State(ctx): State<ApiContext>,
    headers: HeaderMap,
    Body(req): Body<AddItemRequest>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Admin])?;
    let meta = metadata(&headers, caller.actor());
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
                buckets: bucket_count(req.buckets)?,
                max_per_customer: req.max_per_customer,
            },
            &meta,
        )
        .await?;
    accepted("add_item");
    let location = HeaderValue::from_str(&format!("/v1/catalog/items/{sku}")).map_err(|_| Problem::internal())?;
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

/// The answer to a command on an item: the SKU and the consistency token of its last event.
fn item_accepted(sku: Sku, last_position: i64) -> Response {
    (
        token_header(last_position),
        Json(ItemAccepted {
            sku,
            consistency_token: last_position,
        }),
    )
        .into_response()
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetBucketsRequest {
    /// How many stock buckets the item's stock is split into from now on.
    #[serde(deserialize_with = "surge_runtime::extract::integer")]
    #[schema(minimum = 1, maximum = 64)]
    pub buckets: i64,
}

/// Split an item's stock into buckets (admin): its available stock is spread over them by
/// move pairs; units held for orders stay in their bucket and return there.
#[utoipa::path(put, path = "/v1/catalog/items/{sku}/buckets", request_body = SetBucketsRequest,
    params(("sku" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$", description = "the item's SKU")),
    responses((status = 200, body = ItemAccepted), (status = 400, body = ProblemDoc, content_type = "application/problem+json"), (status = 413, body = ProblemDoc, content_type = "application/problem+json"), (status = 415, body = ProblemDoc, content_type = "application/problem+json"), (status = 401, body = ProblemDoc, content_type = "application/problem+json"), (status = 403, body = ProblemDoc, content_type = "application/problem+json"),
              (status = 422, body = ProblemDoc, content_type = "application/problem+json", description = "unknown item, buckets out of range (`invalid-buckets`)")))]
#[tracing::instrument(skip_all, fields(sku = %sku))]
async fn set_buckets(
    caller: Principal,
    State(ctx): State<ApiContext>,
    PathParam(sku): PathParam<Sku>,
    headers: HeaderMap,
    Body(req): Body<SetBucketsRequest>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Admin])?;
    let meta = metadata(&headers, caller.actor());
    let committed = ctx.commands.set_buckets(&sku, req.buckets, &meta).await?;
    accepted("set_buckets");
    Ok(item_accepted(sku, committed.last_position))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPurchaseLimitRequest {
    /// The most units one customer may hold reserved or bought at once; null lifts the limit.
    /// Required (null, not absent, lifts it), so an empty body never lifts a limit by accident.
    #[serde(deserialize_with = "optional_integer")]
    #[schema(minimum = 1, maximum = 1_000_000_000, nullable, required = true)]
    pub max_per_customer: Option<i64>,
}

/// Set or lift an item's purchase limit per customer (admin). Units reserved or sold while a
/// limit is in force count toward it (set it before the sale opens: units placed while the
/// item had no limit are not counted); released units come back.
#[utoipa::path(put, path = "/v1/catalog/items/{sku}/purchase-limit", request_body = SetPurchaseLimitRequest,
    params(("sku" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$", description = "the item's SKU")),
    responses((status = 200, body = ItemAccepted), (status = 400, body = ProblemDoc, content_type = "application/problem+json"), (status = 413, body = ProblemDoc, content_type = "application/problem+json"), (status = 415, body = ProblemDoc, content_type = "application/problem+json"), (status = 401, body = ProblemDoc, content_type = "application/problem+json"), (status = 403, body = ProblemDoc, content_type = "application/problem+json"),
              (status = 422, body = ProblemDoc, content_type = "application/problem+json", description = "unknown item, limit out of range (`invalid-purchase-limit`)")))]
#[tracing::instrument(skip_all, fields(sku = %sku))]
async fn set_purchase_limit(
    caller: Principal,
    State(ctx): State<ApiContext>,
    PathParam(sku): PathParam<Sku>,
    headers: HeaderMap,
    Body(req): Body<SetPurchaseLimitRequest>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Admin])?;
    let meta = metadata(&headers, caller.actor());
    let committed = ctx
        .commands
        .set_purchase_limit(&sku, req.max_per_customer, &meta)
        .await?;
    accepted("set_purchase_limit");
    Ok(item_accepted(sku, committed.last_position))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestockRequest {
    #[serde(deserialize_with = "surge_runtime::extract::integer")]
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    pub quantity: i64,
}

/// Add stock to an item.
#[utoipa::path(post, path = "/v1/inventory/{sku}/restock", request_body = RestockRequest,
    params(("sku" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$", description = "the item's SKU")),
    responses((status = 200, body = ItemAccepted), (status = 400, body = ProblemDoc, content_type = "application/problem+json"), (status = 413, body = ProblemDoc, content_type = "application/problem+json"), (status = 415, body = ProblemDoc, content_type = "application/problem+json"), (status = 401, body = ProblemDoc, content_type = "application/problem+json"), (status = 403, body = ProblemDoc, content_type = "application/problem+json"), (status = 422, body = ProblemDoc, content_type = "application/problem+json")))]
#[tracing::instrument(skip_all)]
async fn restock(
    caller: Principal,
    State(ctx): State<ApiContext>,
    PathParam(sku): PathParam<Sku>,
    headers: HeaderMap,
    Body(req): Body<RestockRequest>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Admin])?;
    let meta = metadata(&headers, caller.actor());
    let committed = ctx.commands.restock(&sku, req.quantity, &meta).await?;
    accepted("restock");
    Ok(item_accepted(sku, committed.last_position))
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderLineRequest {
    #[schema(value_type = String, pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub sku: Sku,
    #[serde(deserialize_with = "surge_runtime::extract::integer")]
    #[schema(minimum = 1, maximum = 10_000)]
    pub quantity: i64,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrderRequest {
    #[schema(value_type = String, pattern = "^[A-Za-z0-9._@-]{1,64}$")]
    pub customer_id: CustomerId,
    #[schema(min_items = 1, max_items = 50)]
    pub lines: Vec<OrderLineRequest>,
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(v) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(s) if !s.is_empty() && s.len() <= 255 && s.bytes().all(|b| b.is_ascii_graphic()) => Ok(Some(s.to_string())),
        _ => Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-idempotency-key",
            "Invalid Idempotency-Key",
        )
        .detail("Idempotency-Key must be 1 to 255 visible ASCII characters")),
    }
}

/// Place an order: every line's stock is reserved, or none is.
#[utoipa::path(post, path = "/v1/orders", request_body = PlaceOrderRequest,
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[!-~]{1,255}$",
            description = "1 to 255 visible ASCII characters; retries with the same key get the first answer")),
    responses((status = 202, body = OrderAccepted,
               description = "accepted; Location names the order on the query API (`GET /v1/orders/{order_id}` there), X-Consistency-Token reads it back",
               links(
                   ("CancelOrder" = (operation_id = "cancel_order", parameters(("order_id" = "$response.body#/order_id")),
                                     description = "cancel the order just placed")),
                   ("PayOrder" = (operation_id = "submit_payment", parameters(("order_id" = "$response.body#/order_id")),
                                  description = "pay the order just placed"))
               )),
              (status = 400, body = ProblemDoc, content_type = "application/problem+json"), (status = 413, body = ProblemDoc, content_type = "application/problem+json"), (status = 415, body = ProblemDoc, content_type = "application/problem+json"), (status = 401, body = ProblemDoc, content_type = "application/problem+json"), (status = 403, body = ProblemDoc, content_type = "application/problem+json"), (status = 409, body = ProblemDoc, content_type = "application/problem+json"),
              (status = 422, body = ProblemDoc, content_type = "application/problem+json", description = "out of stock, unknown item, bad quantity, key reused, past the item's purchase limit (`purchase-limit`: `max_per_customer`, `held`, `requested`)"),
              (status = 503, body = ProblemDoc, content_type = "application/problem+json", description = "hot-sku-overloaded: the order would wait in the item's lane longer than the latency budget (or its queue is full); Retry-After and estimated_wait_ms say when"),
              (status = 504, body = ProblemDoc, content_type = "application/problem+json", description = "outcome unknown: the order may have been placed; `check` names where to read it")))]
#[tracing::instrument(skip_all)]
async fn place_order(
    caller: Principal,
    State(ctx): State<ApiContext>,
    headers: HeaderMap,
    Body(req): Body<PlaceOrderRequest>,
) -> Result<Response, ApiError> {
    caller.may_act_for(req.customer_id.as_str())?;
    let key = idempotency_key(&headers)?.map(|k| IdempotencyKey::new(format!("orders:{}", req.customer_id), k, &req));
    let meta = metadata(&headers, caller.actor());
    let cmd = PlaceOrder {
        customer_id: req.customer_id,
        lines: req.lines.into_iter().map(|l| (l.sku, l.quantity)).collect(),
    };
    let placed: OrderAccepted = ctx.commands.place_order(cmd, key, &meta).await?;
    accepted("place_order");
    let accepted = placed;
    let location =
        HeaderValue::from_str(&format!("/v1/orders/{}", accepted.order_id)).map_err(|_| Problem::internal())?;
    Ok((
        StatusCode::ACCEPTED,
        [(axum::http::header::LOCATION, location)],
        token_header(accepted.consistency_token),
        Json(accepted),
    )
        .into_response())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrderStatusChanged {
    #[schema(value_type = uuid::Uuid)]
    pub order_id: OrderId,
    pub status: &'static str,
    pub consistency_token: i64,
}

/// Cancel a placed order; its stock goes back on sale.
#[utoipa::path(post, path = "/v1/orders/{order_id}/cancel",
    params(("order_id" = uuid::Uuid, Path, pattern = "^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$")),
    responses((status = 200, body = OrderStatusChanged), (status = 400, body = ProblemDoc, content_type = "application/problem+json"), (status = 401, body = ProblemDoc, content_type = "application/problem+json"), (status = 403, body = ProblemDoc, content_type = "application/problem+json"), (status = 404, body = ProblemDoc, content_type = "application/problem+json"), (status = 422, body = ProblemDoc, content_type = "application/problem+json")))]
#[tracing::instrument(skip_all, fields(order_id = %order_id))]
async fn cancel_order(
    caller: Principal,
    State(ctx): State<ApiContext>,
    PathParam(OrderIdParam(order_id)): PathParam<OrderIdParam>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    owner_check(&ctx, &caller, order_id).await?;
    let meta = metadata(&headers, caller.actor());
    let committed = ctx
        .commands
        .cancel_order(order_id, CancelReason::CustomerRequest, &meta)
        .await?;
    accepted("cancel_order");
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

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentRequest {
    #[schema(pattern = "^tok_[A-Za-z0-9_-]{4,64}$", example = "tok_visa_4242")]
    /// The payment provider's token for the customer's card; never the card number.
    pub payment_token: String,
}

/// Pay a placed order with a payment provider's token (never a card number).
#[utoipa::path(post, path = "/v1/orders/{order_id}/payment", request_body = PaymentRequest,
    params(("order_id" = uuid::Uuid, Path, pattern = "^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$")),
    responses((status = 202, body = OrderStatusChanged), (status = 400, body = ProblemDoc, content_type = "application/problem+json"), (status = 413, body = ProblemDoc, content_type = "application/problem+json"), (status = 415, body = ProblemDoc, content_type = "application/problem+json"), (status = 401, body = ProblemDoc, content_type = "application/problem+json"), (status = 403, body = ProblemDoc, content_type = "application/problem+json"),
              (status = 404, body = ProblemDoc, content_type = "application/problem+json"), (status = 422, body = ProblemDoc, content_type = "application/problem+json", description = "card number sent, bad token, order not payable")))]
#[tracing::instrument(skip_all, fields(order_id = %order_id))]
async fn submit_payment(
    caller: Principal,
    State(ctx): State<ApiContext>,
    PathParam(OrderIdParam(order_id)): PathParam<OrderIdParam>,
    headers: HeaderMap,
    Body(req): Body<PaymentRequest>,
) -> Result<Response, ApiError> {
    owner_check(&ctx, &caller, order_id).await?;
    let meta = metadata(&headers, caller.actor());
    let committed = ctx.commands.submit_payment(order_id, &req.payment_token, &meta).await?;
    accepted("submit_payment");
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

/// 403 unless `caller` may change the order (its customer, a service or an admin); an order
/// that does not exist is left to the command (404).
async fn owner_check(ctx: &ApiContext, caller: &Principal, order_id: OrderId) -> Result<(), ApiError> {
    if matches!(caller.role, Role::Service | Role::Admin) {
        return Ok(());
    }
    match ctx.commands.order(order_id).await {
        Ok((_, order)) => match &order.customer_id {
            Some(owner) => Ok(caller.may_act_for(owner.as_str())?),
            None => Ok(()),
        },
        Err(CommandError::Domain(DomainError::UnknownOrder(_))) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// `GET /readyz`: ready when the event store answers and its migrations are applied.
async fn readyz(State(ctx): State<ApiContext>) -> Response {
    match surge_runtime::db::check_ready(&ctx.pool).await {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(reason) => Problem::unavailable(reason, 2).into_response(),
    }
}

#[cfg(test)]
mod properties {
    use super::PlaceOrderRequest;
    use proptest::prelude::*;

    proptest! {
        /// Any body decodes to a request or to an error (a 400), never a panic; what decodes
        /// carries only valid ids.
        #[test]
        fn any_order_body_decodes_or_is_refused(
            customer in "[ -~]{0,70}",
            sku in "[ -~]{0,70}",
            quantity in any::<i64>(),
            extra in any::<bool>(),
        ) {
            let mut body = serde_json::json!({"customer_id": customer, "lines": [{"sku": sku, "quantity": quantity}]});
            if extra {
                body["card_number"] = serde_json::json!("4242424242424242");
            }
            if let Ok(req) = serde_json::from_value::<PlaceOrderRequest>(body) {
                prop_assert!(!extra, "unknown fields are refused");
                prop_assert!(surge_events::CustomerId::parse(req.customer_id.as_str()).is_ok());
                prop_assert!(surge_events::Sku::parse(req.lines[0].sku.as_str()).is_ok());
            }
        }
    }
}
