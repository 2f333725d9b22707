//! Typed reads of the views. Every row carries its stream version (for ETags and cache
//! freshness) and the global position of the last event applied (for read-your-writes). The
//! row types are the projections' own ([`CatalogRow`], [`OrderRow`]): defined once, where the
//! views are written.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgPool};
pub use surge_projections::catalog::CatalogRow;
pub use surge_projections::orders::OrderRow;
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Price {
    pub minor: i64,
    pub currency: String,
}

/// A catalog item as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CatalogItem {
    pub sku: String,
    pub name: String,
    pub category: String,
    pub price: Price,
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
    pub in_stock: bool,
    /// How many stock buckets the item's stock is split into (the counts above are their totals).
    pub buckets: i32,
    /// The most units one customer may hold reserved or bought at once; null: no limit.
    pub max_per_customer: Option<i64>,
    pub version: i64,
    pub updated_at: DateTime<Utc>,
}

impl From<&CatalogRow> for CatalogItem {
    fn from(r: &CatalogRow) -> Self {
        CatalogItem {
            sku: r.sku.clone(),
            name: r.name.clone(),
            category: r.category.clone(),
            price: Price {
                minor: r.price_minor,
                currency: r.currency.clone(),
            },
            available: r.available,
            reserved: r.reserved,
            sold: r.sold,
            in_stock: r.available > 0,
            buckets: r.buckets,
            max_per_customer: r.max_per_customer,
            version: r.version,
            updated_at: r.updated_at,
        }
    }
}

/// An order as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Order {
    pub order_id: Uuid,
    pub customer_id: String,
    pub status: String,
    /// The order's lines: SKU, quantity, unit price.
    #[schema(value_type = Vec<Object>)]
    pub lines: serde_json::Value,
    pub total: Price,
    pub placed_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

impl From<&OrderRow> for Order {
    fn from(r: &OrderRow) -> Self {
        Order {
            order_id: r.order_id,
            customer_id: r.customer_id.clone(),
            status: r.status.clone(),
            lines: r.lines.clone(),
            total: Price {
                minor: r.total_minor,
                currency: r.currency.clone(),
            },
            placed_at: r.placed_at,
            updated_at: r.updated_at,
            version: r.version,
        }
    }
}

#[derive(Debug, Clone, Serialize, FromRow, utoipa::ToSchema)]
pub struct SalesMinute {
    pub sku: String,
    pub minute: DateTime<Utc>,
    pub units: i64,
    pub revenue_minor: i64,
    pub currency: String,
}

/// Filters of the catalog listing.
#[derive(Debug, Clone, Default)]
pub struct ItemFilter {
    pub category: Option<String>,
    pub min_price: Option<i64>,
    pub max_price: Option<i64>,
    pub in_stock: Option<bool>,
}

pub async fn item(pool: &PgPool, sku: &str) -> Result<Option<CatalogRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM catalog_items WHERE sku = $1")
        .bind(sku)
        .fetch_optional(pool)
        .await
}

/// One page of items ordered by SKU, after `after` (keyset: no OFFSET scans).
pub async fn items_page(
    pool: &PgPool,
    f: &ItemFilter,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<CatalogRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT * FROM catalog_items \
         WHERE ($1::text IS NULL OR sku > $1) \
           AND ($2::text IS NULL OR category = $2) \
           AND ($3::bigint IS NULL OR price_minor >= $3) \
           AND ($4::bigint IS NULL OR price_minor <= $4) \
           AND ($5::bool IS NULL OR (available > 0) = $5) \
         ORDER BY sku LIMIT $6",
    )
    .bind(after)
    .bind(&f.category)
    .bind(f.min_price)
    .bind(f.max_price)
    .bind(f.in_stock)
    .bind(limit)
    .fetch_all(pool)
    .await
}

pub async fn order(pool: &PgPool, id: Uuid) -> Result<Option<OrderRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM orders WHERE order_id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// A customer's orders, newest first, after the keyset `(placed_at, order_id)`.
pub async fn customer_orders(
    pool: &PgPool,
    customer: &str,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<OrderRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT * FROM orders WHERE customer_id = $1 \
           AND ($2::timestamptz IS NULL OR (placed_at, order_id) < ($2, $3)) \
         ORDER BY placed_at DESC, order_id DESC LIMIT $4",
    )
    .bind(customer)
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1))
    .bind(limit)
    .fetch_all(pool)
    .await
}

pub async fn sales(
    pool: &PgPool,
    sku: Option<&str>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<SalesMinute>, sqlx::Error> {
    sqlx::query_as(
        "SELECT * FROM sales_by_minute WHERE ($1::text IS NULL OR sku = $1) \
           AND minute >= $2 AND minute < $3 ORDER BY minute, sku LIMIT 50000",
    )
    .bind(sku)
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await
}

/// The position of the last event of `stream_id` at or before `token` (the event store's
/// answer, see [`surge_store::log::stream_position_at`]).
pub async fn stream_position_at(pool: &PgPool, stream_id: &str, token: i64) -> Result<Option<i64>, sqlx::Error> {
    Ok(surge_store::log::stream_position_at(pool, stream_id, token).await?)
}
