//! The query API: reads of the views, cached, with ETags, keyset cursors and read-your-writes.

use crate::cache::{CacheStatus, CachedView, ViewCache};
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
use sqlx::PgPool;
use std::time::Duration;
use surge_events::{CustomerId, Sku};
use surge_runtime::extract::{Params, PathParam};
use surge_runtime::Problem;
use uuid::Uuid;

pub const CONSISTENCY_TOKEN: &str = "x-consistency-token";
pub const MAX_PAGE_SIZE: i64 = 200;
const DEFAULT_PAGE_SIZE: i64 = 50;

/// What a read does when the view has not reached the caller's consistency token in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConsistencyMode {
    /// 503 with Retry-After.
    Fail,
    /// The value the view has, flagged `X-Consistency: stale`.
    Stale,
}

#[derive(Clone)]
pub struct QueryContext {
    pub pool: PgPool,
    pub items: ViewCache,
    pub orders: ViewCache,
    pub consistency_wait: Duration,
    pub consistency_mode: ConsistencyMode,
}

pub fn router(ctx: QueryContext) -> Router {
    Router::new()
        .route("/v1/catalog/items", get(list_items))
        .route("/v1/catalog/items/{sku}", get(get_item))
        .route("/v1/orders/{order_id}", get(get_order))
        .route("/v1/customers/{customer_id}/orders", get(customer_orders))
        .route("/v1/stats/sales", get(sales))
        .route("/healthz", get(surge_runtime::http::healthz))
        .route("/readyz", get(readyz))
        .with_state(ctx)
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadParams {
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

fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
}

/// How old the data of a response is: time since the last event the view applied to it.
fn data_age_ms(updated_at: DateTime<Utc>) -> i64 {
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
    if let Ok(etag) = HeaderValue::from_str(&v.etag) {
        h.insert(header::ETAG, etag);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache_control));
    h.insert("x-cache", HeaderValue::from_static(status.as_str()));
    h.insert("x-data-age-ms", HeaderValue::from(data_age_ms(v.updated_at)));
    if matches!(freshness, Freshness::Stale) || status == CacheStatus::Stale {
        h.insert("x-consistency", HeaderValue::from_static("stale"));
    }
    res
}

fn cached<T: Serialize>(dto: &T, version: i64, last_position: i64, updated_at: DateTime<Utc>) -> CachedView {
    CachedView {
        body: Bytes::from(serde_json::to_vec(dto).unwrap_or_default()),
        etag: format!("\"v{version}\""),
        version,
        last_position,
        updated_at,
    }
}

#[tracing::instrument(skip_all, fields(sku = %sku))]
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
                .map(|r| cached(&CatalogItem::from(&r), r.version, r.last_position, r.updated_at)))
        }
    };
    let stream = sku.stream_id();
    match read_view(&ctx, &ctx.items, &key, stream.as_str(), token, load).await? {
        Some((v, s, f)) => Ok(view_response(&headers, &v, s, f, "public, max-age=1")),
        None => Err(Problem::not_found(format!("no catalog item {sku}"))),
    }
}

#[tracing::instrument(skip_all, fields(order_id = %order_id))]
async fn get_order(
    State(ctx): State<QueryContext>,
    PathParam(order_id): PathParam<Uuid>,
    Params(p): Params<ReadParams>,
    headers: HeaderMap,
) -> ApiResult {
    let token = token(&headers, p.after)?;
    let pool = ctx.pool.clone();
    let load = || {
        let pool = pool.clone();
        async move {
            Ok(views::order(&pool, order_id)
                .await?
                .map(|r| cached(&Order::from(&r), r.version, r.last_position, r.updated_at)))
        }
    };
    let stream = format!("order-{order_id}");
    match read_view(&ctx, &ctx.orders, &order_id.to_string(), &stream, token, load).await? {
        Some((v, s, f)) => Ok(view_response(&headers, &v, s, f, "private, no-cache")),
        None => Err(Problem::not_found(format!("no order {order_id}"))),
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

fn encode_cursor<T: Serialize>(c: &T) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(c).unwrap_or_default())
}

fn decode_cursor<T: for<'de> Deserialize<'de>>(s: &str) -> Result<T, Problem> {
    URL_SAFE_NO_PAD
        .decode(s)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| {
            Problem::new(StatusCode::BAD_REQUEST, "invalid-cursor", "Invalid cursor")
                .detail("cursor must be a next_cursor value returned by this API")
        })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListItemsParams {
    pub category: Option<String>,
    pub min_price: Option<i64>,
    pub max_price: Option<i64>,
    pub in_stock: Option<bool>,
    pub limit: Option<i64>,
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

#[tracing::instrument(skip_all)]
async fn list_items(State(ctx): State<QueryContext>, Params(p): Params<ListItemsParams>) -> ApiResult {
    let limit = page_size(p.limit)?;
    let after = p.cursor.as_deref().map(decode_cursor::<ItemCursor>).transpose()?;
    if let (Some(lo), Some(hi)) = (p.min_price, p.max_price) {
        if lo > hi {
            return Err(Problem::bad_request("min_price must not exceed max_price"));
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageParams {
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct OrderCursor {
    placed_at: DateTime<Utc>,
    order_id: Uuid,
}

#[tracing::instrument(skip_all, fields(customer = %customer))]
async fn customer_orders(
    State(ctx): State<QueryContext>,
    PathParam(customer): PathParam<CustomerId>,
    Params(p): Params<PageParams>,
) -> ApiResult {
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SalesParams {
    pub sku: Option<Sku>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

#[derive(Serialize)]
struct SalesReport {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    units: i64,
    minutes: Vec<views::SalesMinute>,
}

#[tracing::instrument(skip_all)]
async fn sales(State(ctx): State<QueryContext>, Params(p): Params<SalesParams>) -> ApiResult {
    let to = p.to.unwrap_or_else(Utc::now);
    let from = p.from.unwrap_or(to - chrono::Duration::hours(1));
    if from >= to {
        return Err(Problem::bad_request("from must be before to"));
    }
    if to - from > chrono::Duration::days(31) {
        return Err(Problem::bad_request("the range may span at most 31 days"));
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
