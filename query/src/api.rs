//! The query API: reads of the views, cached, with ETags, keyset cursors and read-your-writes.

use crate::cache::{CacheStatus, CachedView, ViewCache};
pub use crate::context::{ConsistencyMode, QueryContext};
use crate::views::{self, CatalogItem, ItemFilter, Order};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use surge_events::{CustomerId, OrderId, Sku};
use surge_runtime::auth::{authenticate_with_session, Authenticator};
use surge_runtime::extract::{OrderIdParam, Params, PathParam};
use surge_runtime::http::SecuritySchemes;
use surge_runtime::problem::ProblemDoc;
use surge_runtime::{Principal, Problem, Role};
use utoipa::{IntoParams, OpenApi, ToSchema};
use uuid::Uuid;

pub const CONSISTENCY_TOKEN: &str = "x-consistency-token";
pub const MAX_PAGE_SIZE: i64 = 200;
const DEFAULT_PAGE_SIZE: i64 = 50;
/// How long shared caches may keep a catalog item (public: shoppers browse anonymously).
pub(crate) const ITEM_CACHE_CONTROL: &str = "public, max-age=1";

/// Catalog reads are public (shoppers browse anonymously); orders need their customer, a
/// service, an admin or an analyst; statistics need an admin or an analyst. Bad credentials
/// are a 401 on every route.
pub fn router(ctx: QueryContext, auth: std::sync::Arc<Authenticator>) -> Router {
    Router::new()
        .route("/v1/catalog/items", get(list_items))
        .route("/v1/catalog/items/{sku}", get(get_item))
        .route("/v1/orders/{order_id}", get(get_order))
        .route("/v1/customers/{customer_id}/orders", get(customer_orders))
        .route("/v1/stats/sales", get(sales))
        .route("/healthz", get(surge_runtime::http::healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi))
        .merge(crate::console::routes())
        .layer(axum::middleware::from_fn_with_state(auth, authenticate_with_session))
        .with_state(ctx)
}

/// The query API's contract.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Surge query API",
        description = "Catalog and order reads from the views. Errors are RFC 9457 problem+json."
    ),
    paths(list_items, get_item, get_order, customer_orders, sales),
    components(schemas(ProblemDoc, CatalogItem, Order, ItemPage, OrderPage, SalesReport, views::SalesMinute, views::Price)),
    modifiers(&SecuritySchemes)
)]
pub struct ApiDoc;

async fn openapi() -> Json<serde_json::Value> {
    Json(surge_runtime::http::openapi_json(&ApiDoc::openapi()))
}

/// A page of catalog items; pass `next_cursor` as `cursor` for the next one.
#[derive(ToSchema)]
#[allow(dead_code)]
struct ItemPage {
    items: Vec<CatalogItem>,
    next_cursor: Option<String>,
}

/// A page of a customer's orders, newest first.
#[derive(ToSchema)]
#[allow(dead_code)]
struct OrderPage {
    items: Vec<Order>,
    next_cursor: Option<String>,
}

type ApiResult = Result<Response, Problem>;

fn db(e: sqlx::Error) -> Problem {
    Problem::database(&e)
}

/// The caller's consistency token, from the header or `?after=`.
fn token(headers: &HeaderMap, after: Option<i64>) -> Result<Option<i64>, Problem> {
    let raw = match headers.get(CONSISTENCY_TOKEN) {
        None => after,
        Some(v) => Some(v.to_str().ok().and_then(|s| s.trim().parse::<i64>().ok()).unwrap_or(-1)),
    };
    match raw {
        Some(t) if t < 0 => Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-consistency-token",
            "Invalid consistency token",
        )
        .detail("the consistency token (X-Consistency-Token or ?after=) must be a non-negative integer returned by the command API")),
        other => Ok(other),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReadParams {
    /// A consistency token from the command API: wait (bounded) until the view reflects it.
    #[param(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)]
    pub after: Option<i64>,
}

enum Freshness {
    Fresh,
    Stale,
}

/// Loads (through the cache) the view of one stream, waiting if the caller's token says the
/// view must reflect a write it has not reached yet.
async fn read_view<F, Fut>(
    ctx: &QueryContext,
    cache: &ViewCache,
    key: &str,
    stream_id: &str,
    token: Option<i64>,
    load: F,
) -> Result<Option<(std::sync::Arc<CachedView>, CacheStatus, Freshness)>, Problem>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Option<CachedView>, sqlx::Error>>,
{
    let found = cache.get_or_load(key, &load).await.map_err(db)?;
    let Some(token) = token else {
        return Ok(found.map(|(v, s)| (v, s, Freshness::Fresh)));
    };
    let Some(target) = views::stream_position_at(&ctx.pool, stream_id, token)
        .await
        .map_err(db)?
    else {
        return Ok(found.map(|(v, s)| (v, s, Freshness::Fresh)));
    };
    if let Some((v, s)) = &found {
        if v.last_position >= target {
            return Ok(Some((v.clone(), *s, Freshness::Fresh)));
        }
    }
    // The write is committed but not projected yet: poll the view (bounded), bypassing the cache.
    let deadline = tokio::time::Instant::now() + ctx.consistency_wait;
    let mut latest = found.map(|(v, _)| v);
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if let Some(v) = load().await.map_err(db)? {
            let reached = v.last_position >= target;
            let v = std::sync::Arc::new(v);
            if reached {
                cache.invalidate(key, v.version).await;
                return Ok(Some((v, CacheStatus::Bypass, Freshness::Fresh)));
            }
            latest = Some(v);
        }
    }
    match ctx.consistency_mode {
        ConsistencyMode::Fail => Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-yet-consistent",
            "The view has not caught up with your write yet",
        )
        .detail(format!(
            "the view has not reached consistency token {token}; retry shortly"
        ))
        .retry_after(1)),
        ConsistencyMode::Stale => Ok(latest.map(|v| (v, CacheStatus::Bypass, Freshness::Stale))),
    }
}

/// The answer for a stream the view has no row of: 404 only when the event store has no such
/// stream either; a stream the projector has not reached yet is a 503 with Retry-After, so a
/// client that just wrote never reads "does not exist".
async fn absent(ctx: &QueryContext, stream_id: &str, not_found: String) -> Problem {
    match views::stream_position_at(&ctx.pool, stream_id, i64::MAX).await {
        Ok(None) => Problem::not_found(not_found),
        Ok(Some(_)) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-yet-projected",
            "The read side has not caught up with this write yet",
        )
        .detail(format!(
            "{stream_id} is in the event store but not in the view yet; retry shortly"
        ))
        .retry_after(1),
        Err(e) => db(e),
    }
}

pub(crate) fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
}

/// How old the data of a response is: time since the last event the view applied to it.
pub(crate) fn data_age_ms(updated_at: DateTime<Utc>) -> i64 {
    (Utc::now() - updated_at).num_milliseconds().max(0)
}

/// The data age of a list: that of its newest row (0 for an empty page).
fn newest_age_ms(updated: impl Iterator<Item = DateTime<Utc>>) -> i64 {
    updated.max().map_or(0, data_age_ms)
}

/// 200 with the cached body, or 304 when the client already has this version.
fn view_response(
    req: &HeaderMap,
    v: &CachedView,
    status: CacheStatus,
    freshness: Freshness,
    cache_control: &'static str,
) -> Response {
    let mut res = if etag_matches(req, &v.etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = (StatusCode::OK, v.body.clone()).into_response();
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        r
    };
    let h = res.headers_mut();
    h.insert(header::ETAG, v.etag_header.clone());
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache_control));
    h.insert("x-cache", HeaderValue::from_static(status.as_str()));
    h.insert("x-data-age-ms", HeaderValue::from(data_age_ms(v.updated_at)));
    if matches!(freshness, Freshness::Stale) || status == CacheStatus::Stale {
        h.insert("x-consistency", HeaderValue::from_static("stale"));
    }
    res
}

fn cached<T: Serialize>(
    dto: &T,
    owner: Option<String>,
    version: i64,
    last_position: i64,
    updated_at: DateTime<Utc>,
) -> CachedView {
    CachedView::new(
        Bytes::from(serde_json::to_vec(dto).unwrap_or_default()),
        owner,
        version,
        last_position,
        updated_at,
    )
}

/// One catalog item (public). `ETag`/`If-None-Match` answer 304 when unchanged.
#[utoipa::path(get, path = "/v1/catalog/items/{sku}", params(("sku" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$"), ReadParams),
    responses((status = 200, body = CatalogItem), (status = 304), (status = 400, body = ProblemDoc, content_type = "application/problem+json"),
              (status = 401, body = ProblemDoc, content_type = "application/problem+json"), (status = 404, body = ProblemDoc, content_type = "application/problem+json"), (status = 503, body = ProblemDoc, content_type = "application/problem+json")),
    security((), ("bearer" = []), ("api_key" = [])))]
#[tracing::instrument(level = "debug", skip_all, fields(sku = %sku))]
async fn get_item(
    State(ctx): State<QueryContext>,
    PathParam(sku): PathParam<Sku>,
    Params(p): Params<ReadParams>,
    headers: HeaderMap,
) -> ApiResult {
    let token = token(&headers, p.after)?;
    let pool = ctx.pool.clone();
    let key = sku.as_str().to_string();
    let load = || {
        let pool = pool.clone();
        let key = key.clone();
        async move {
            Ok(views::item(&pool, &key)
                .await?
                .map(|r| cached(&CatalogItem::from(&r), None, r.version, r.last_position, r.updated_at)))
        }
    };
    let stream = sku.stream_id();
    match read_view(&ctx, &ctx.items, &key, stream.as_str(), token, load).await? {
        Some((v, s, f)) => Ok(view_response(&headers, &v, s, f, ITEM_CACHE_CONTROL)),
        None => Err(absent(&ctx, stream.as_str(), format!("no catalog item {sku}")).await),
    }
}

/// One order: its customer, a service, an admin or an analyst.
#[utoipa::path(get, path = "/v1/orders/{order_id}", params(("order_id" = Uuid, Path, pattern = "^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$"), ReadParams),
    responses((status = 200, body = Order), (status = 304), (status = 400, body = ProblemDoc, content_type = "application/problem+json"),
              (status = 401, body = ProblemDoc, content_type = "application/problem+json"), (status = 403, body = ProblemDoc, content_type = "application/problem+json"),
              (status = 404, body = ProblemDoc, content_type = "application/problem+json"), (status = 503, body = ProblemDoc, content_type = "application/problem+json")),
    security(("bearer" = []), ("api_key" = [])))]
#[tracing::instrument(level = "debug", skip_all, fields(order_id = %order_id))]
async fn get_order(
    caller: Principal,
    State(ctx): State<QueryContext>,
    PathParam(OrderIdParam(OrderId(order_id))): PathParam<OrderIdParam>,
    Params(p): Params<ReadParams>,
    headers: HeaderMap,
) -> ApiResult {
    let token = token(&headers, p.after)?;
    let pool = ctx.pool.clone();
    let load = || {
        let pool = pool.clone();
        async move {
            Ok(views::order(&pool, order_id).await?.map(|r| {
                let owner = Some(r.customer_id.clone());
                cached(&Order::from(&r), owner, r.version, r.last_position, r.updated_at)
            }))
        }
    };
    let stream = OrderId(order_id).stream_id();
    match read_view(&ctx, &ctx.orders, &order_id.to_string(), stream.as_str(), token, load).await? {
        Some((v, s, f)) => {
            caller.may_read(v.owner.as_deref().unwrap_or_default())?;
            Ok(view_response(&headers, &v, s, f, "private, no-cache"))
        }
        None => Err(absent(&ctx, stream.as_str(), format!("no order {order_id}")).await),
    }
}

fn page_size(limit: Option<i64>) -> Result<i64, Problem> {
    match limit {
        None => Ok(DEFAULT_PAGE_SIZE),
        Some(l) if (1..=MAX_PAGE_SIZE).contains(&l) => Ok(l),
        Some(l) => Err(
            Problem::new(StatusCode::BAD_REQUEST, "invalid-page-size", "Invalid page size")
                .detail(format!("limit must be between 1 and {MAX_PAGE_SIZE}, got {l}")),
        ),
    }
}

/// 422: each bound of a range is valid but together they are not (an empty or too long range),
/// a rule between parameters that the document cannot express.
fn invalid_range(detail: &str) -> Problem {
    Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-range", "Invalid range").detail(detail)
}

fn encode_cursor<T: Serialize>(c: &T) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(c).unwrap_or_default())
}

fn decode_cursor<T: for<'de> Deserialize<'de>>(s: &str) -> Result<T, Problem> {
    URL_SAFE_NO_PAD
        .decode(s)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| {
            // Any string is a well-formed cursor to the document (it is opaque); one this API
            // did not issue is refused as unprocessable, like the other rules a schema cannot say.
            Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-cursor", "Invalid cursor")
                .detail("cursor must be a next_cursor value returned by this API")
        })
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListItemsParams {
    /// 1 to 64 characters, no control characters.
    #[param(min_length = 1, max_length = 64, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$")]
    pub category: Option<String>,
    /// Lowest price, in minor units; at most `max_price`.
    #[param(minimum = -9_223_372_036_854_775_808_i64, maximum = 9_223_372_036_854_775_807_i64)]
    pub min_price: Option<i64>,
    /// Highest price, in minor units; at least `min_price`.
    #[param(minimum = -9_223_372_036_854_775_808_i64, maximum = 9_223_372_036_854_775_807_i64)]
    pub max_price: Option<i64>,
    pub in_stock: Option<bool>,
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct ItemCursor {
    after_sku: String,
}

#[derive(Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// The catalog (public), by SKU, with keyset pagination.
#[utoipa::path(get, path = "/v1/catalog/items", params(ListItemsParams),
    responses((status = 200, body = ItemPage), (status = 400, body = ProblemDoc, content_type = "application/problem+json"), (status = 422, body = ProblemDoc, content_type = "application/problem+json"),
              (status = 401, body = ProblemDoc, content_type = "application/problem+json"), (status = 503, body = ProblemDoc, content_type = "application/problem+json")),
    security((), ("bearer" = []), ("api_key" = [])))]
#[tracing::instrument(skip_all)]
async fn list_items(State(ctx): State<QueryContext>, Params(p): Params<ListItemsParams>) -> ApiResult {
    let limit = page_size(p.limit)?;
    let after = p.cursor.as_deref().map(decode_cursor::<ItemCursor>).transpose()?;
    if let Some(c) = &p.category {
        if c.is_empty() || c.chars().count() > 64 || c.chars().any(char::is_control) {
            return Err(Problem::bad_request("category must be 1 to 64 printable characters"));
        }
    }
    if let (Some(lo), Some(hi)) = (p.min_price, p.max_price) {
        if lo > hi {
            return Err(invalid_range("min_price must not exceed max_price"));
        }
    }
    let filter = ItemFilter {
        category: p.category,
        min_price: p.min_price,
        max_price: p.max_price,
        in_stock: p.in_stock,
    };
    let rows = views::items_page(
        &ctx.pool,
        &filter,
        after.as_ref().map(|c| c.after_sku.as_str()),
        limit + 1,
    )
    .await
    .map_err(db)?;
    let more = rows.len() as i64 > limit;
    let items: Vec<CatalogItem> = rows.iter().take(limit as usize).map(CatalogItem::from).collect();
    let next_cursor = more
        .then(|| {
            items.last().map(|i| {
                encode_cursor(&ItemCursor {
                    after_sku: i.sku.clone(),
                })
            })
        })
        .flatten();
    let age = newest_age_ms(items.iter().map(|i| i.updated_at));
    Ok((
        [(header::CACHE_CONTROL, "public, max-age=1")],
        [("x-data-age-ms", HeaderValue::from(age))],
        Json(Page { items, next_cursor }),
    )
        .into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct OrderCursor {
    placed_at: DateTime<Utc>,
    order_id: Uuid,
}

/// A customer's orders, newest first: that customer, a service, an admin or an analyst.
#[utoipa::path(get, path = "/v1/customers/{customer_id}/orders", params(("customer_id" = String, Path, pattern = "^[A-Za-z0-9._@-]{1,64}$"), PageParams),
    responses((status = 200, body = OrderPage), (status = 400, body = ProblemDoc, content_type = "application/problem+json"), (status = 422, body = ProblemDoc, content_type = "application/problem+json"),
              (status = 401, body = ProblemDoc, content_type = "application/problem+json"), (status = 403, body = ProblemDoc, content_type = "application/problem+json"), (status = 503, body = ProblemDoc, content_type = "application/problem+json")),
    security(("bearer" = []), ("api_key" = [])))]
#[tracing::instrument(skip_all, fields(customer = %customer))]
async fn customer_orders(
    caller: Principal,
    State(ctx): State<QueryContext>,
    PathParam(customer): PathParam<CustomerId>,
    Params(p): Params<PageParams>,
) -> ApiResult {
    caller.may_read(customer.as_str())?;
    let limit = page_size(p.limit)?;
    let after = p.cursor.as_deref().map(decode_cursor::<OrderCursor>).transpose()?;
    let rows = views::customer_orders(
        &ctx.pool,
        customer.as_str(),
        after.map(|c| (c.placed_at, c.order_id)),
        limit + 1,
    )
    .await
    .map_err(db)?;
    let more = rows.len() as i64 > limit;
    let items: Vec<Order> = rows.iter().take(limit as usize).map(Order::from).collect();
    let next_cursor = more
        .then(|| {
            items.last().map(|o| {
                encode_cursor(&OrderCursor {
                    placed_at: o.placed_at,
                    order_id: o.order_id,
                })
            })
        })
        .flatten();
    let age = newest_age_ms(items.iter().map(|o| o.updated_at));
    Ok((
        [(header::CACHE_CONTROL, "private, no-cache")],
        [("x-data-age-ms", HeaderValue::from(age))],
        Json(Page { items, next_cursor }),
    )
        .into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SalesParams {
    #[param(value_type = Option<String>, pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub sku: Option<Sku>,
    /// Start (RFC 3339); default: an hour before `to`.
    pub from: Option<DateTime<Utc>>,
    /// End (RFC 3339); default: now.
    pub to: Option<DateTime<Utc>>,
}

/// Units sold per minute in a time range (at most 31 days).
#[derive(Serialize, ToSchema)]
struct SalesReport {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    units: i64,
    minutes: Vec<views::SalesMinute>,
}

/// Sales per minute: an admin or an analyst.
#[utoipa::path(get, path = "/v1/stats/sales", params(SalesParams),
    responses((status = 200, body = SalesReport), (status = 400, body = ProblemDoc, content_type = "application/problem+json"), (status = 422, body = ProblemDoc, content_type = "application/problem+json"),
              (status = 401, body = ProblemDoc, content_type = "application/problem+json"), (status = 403, body = ProblemDoc, content_type = "application/problem+json"), (status = 503, body = ProblemDoc, content_type = "application/problem+json")),
    security(("bearer" = []), ("api_key" = [])))]
#[tracing::instrument(skip_all)]
async fn sales(caller: Principal, State(ctx): State<QueryContext>, Params(p): Params<SalesParams>) -> ApiResult {
    caller.require(&[Role::Admin, Role::Analyst])?;
    let to = p.to.unwrap_or_else(Utc::now);
    let from = p.from.unwrap_or(to - chrono::Duration::hours(1));
    if from >= to {
        return Err(invalid_range("from must be before to"));
    }
    if to - from > chrono::Duration::days(31) {
        return Err(invalid_range("the range may span at most 31 days"));
    }
    let minutes = views::sales(&ctx.pool, p.sku.as_ref().map(Sku::as_str), from, to)
        .await
        .map_err(db)?;
    let units = minutes.iter().map(|m| m.units).sum();
    let age = newest_age_ms(minutes.iter().map(|m| m.minute));
    Ok((
        [("x-data-age-ms", HeaderValue::from(age))],
        Json(SalesReport {
            from,
            to,
            units,
            minutes,
        }),
    )
        .into_response())
}

/// `GET /readyz`: ready when the views' database answers and its migrations are applied.
async fn readyz(State(ctx): State<QueryContext>) -> Response {
    match surge_runtime::db::check_ready(&ctx.pool).await {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(reason) => Problem::unavailable(reason, 2).into_response(),
    }
}
