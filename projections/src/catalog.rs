//! The catalog projection: `catalog_items` (one row per SKU with its stock) and
//! `sales_by_minute` (units and revenue sold per SKU and minute), from inventory events.

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use sqlx::{PgConnection, Row};
use std::collections::HashMap;
use surge_events::{inventory::InventoryEvent, EventEnvelope};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogRow {
    pub sku: String,
    pub name: String,
    pub category: String,
    pub price_minor: i64,
    pub currency: String,
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
    pub version: i64,
    pub last_position: i64,
    pub updated_at: DateTime<Utc>,
}

/// Units and revenue one event adds to a minute of sales.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaleDelta {
    pub sku: String,
    pub minute: DateTime<Utc>,
    pub units: i64,
    pub revenue_minor: i64,
    pub currency: String,
}

/// Folds one inventory event into the SKU's row. `None` in, `None` out for an event that needs
/// an existing row (the caller reports it: the row's first event is missing).
pub fn fold(
    row: Option<CatalogRow>,
    env: &EventEnvelope,
    event: &InventoryEvent,
) -> (Option<CatalogRow>, Option<SaleDelta>) {
    let mut sale = None;
    let row = match (row, event) {
        (_, InventoryEvent::ItemAdded(e)) => Some(CatalogRow {
            sku: e.sku.to_string(),
            name: e.name.clone(),
            category: e.category.clone(),
            price_minor: e.price.minor(),
            currency: e.price.currency().as_str().to_string(),
            available: e.initial_stock,
            reserved: 0,
            sold: 0,
            version: 0,
            last_position: 0,
            updated_at: env.occurred_at,
        }),
        (None, _) => None,
        (Some(mut r), e) => {
            match e {
                InventoryEvent::ItemAdded(_) => {}
                InventoryEvent::StockRestocked(e) => r.available += e.quantity,
                InventoryEvent::StockReserved(e) => {
                    r.available -= e.quantity;
                    r.reserved += e.quantity;
                }
                InventoryEvent::ReservationReleased(e) => {
                    r.available += e.quantity;
                    r.reserved -= e.quantity;
                }
                InventoryEvent::ReservationExpired(e) => {
                    r.available += e.quantity;
                    r.reserved -= e.quantity;
                }
                InventoryEvent::StockCommitted(e) => {
                    r.reserved -= e.quantity;
                    r.sold += e.quantity;
                    sale = Some(SaleDelta {
                        sku: r.sku.clone(),
                        minute: env
                            .occurred_at
                            .duration_trunc(TimeDelta::minutes(1))
                            .unwrap_or(env.occurred_at),
                        units: e.quantity,
                        revenue_minor: e.unit_price.minor().saturating_mul(e.quantity),
                        currency: e.unit_price.currency().as_str().to_string(),
                    });
                }
            }
            Some(r)
        }
    };
    let row = row.map(|mut r| {
        r.version = env.version;
        r.last_position = env.position;
        r.updated_at = env.occurred_at;
        r
    });
    (row, sale)
}

fn row_from(r: &sqlx::postgres::PgRow) -> Result<CatalogRow, sqlx::Error> {
    Ok(CatalogRow {
        sku: r.try_get("sku")?,
        name: r.try_get("name")?,
        category: r.try_get("category")?,
        price_minor: r.try_get("price_minor")?,
        currency: r.try_get("currency")?,
        available: r.try_get("available")?,
        reserved: r.try_get("reserved")?,
        sold: r.try_get("sold")?,
        version: r.try_get("version")?,
        last_position: r.try_get("last_position")?,
        updated_at: r.try_get("updated_at")?,
    })
}

/// The rows of `skus`, locked for this transaction.
pub async fn load(
    conn: &mut PgConnection,
    table: &str,
    skus: &[String],
) -> Result<HashMap<String, CatalogRow>, sqlx::Error> {
    let sql = format!("SELECT * FROM {table} WHERE sku = ANY($1) FOR UPDATE");
    let rows = sqlx::query(&sql).bind(skus).fetch_all(conn).await?;
    rows.iter()
        .map(|r| row_from(r).map(|row| (row.sku.clone(), row)))
        .collect()
}

/// Every row of the table (tests and audits compare it with a fold of the event store).
pub async fn load_all(conn: &mut PgConnection, table: &str) -> Result<Vec<CatalogRow>, sqlx::Error> {
    let sql = format!("SELECT * FROM {table} ORDER BY sku");
    let rows = sqlx::query(&sql).fetch_all(conn).await?;
    rows.iter().map(row_from).collect()
}

/// Writes the rows in one statement.
pub async fn upsert(conn: &mut PgConnection, table: &str, rows: &[&CatalogRow]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let col = |f: fn(&CatalogRow) -> String| rows.iter().map(|r| f(r)).collect::<Vec<_>>();
    let num = |f: fn(&CatalogRow) -> i64| rows.iter().map(|r| f(r)).collect::<Vec<_>>();
    let sql = format!(
        "INSERT INTO {table} (sku, name, category, price_minor, currency, available, reserved, sold, \
                              version, last_position, updated_at) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::bigint[], \
                              $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::timestamptz[]) \
         ON CONFLICT (sku) DO UPDATE SET name = EXCLUDED.name, category = EXCLUDED.category, \
             price_minor = EXCLUDED.price_minor, currency = EXCLUDED.currency, \
             available = EXCLUDED.available, reserved = EXCLUDED.reserved, sold = EXCLUDED.sold, \
             version = EXCLUDED.version, last_position = EXCLUDED.last_position, \
             updated_at = EXCLUDED.updated_at"
    );
    sqlx::query(&sql)
        .bind(col(|r| r.sku.clone()))
        .bind(col(|r| r.name.clone()))
        .bind(col(|r| r.category.clone()))
        .bind(num(|r| r.price_minor))
        .bind(col(|r| r.currency.clone()))
        .bind(num(|r| r.available))
        .bind(num(|r| r.reserved))
        .bind(num(|r| r.sold))
        .bind(num(|r| r.version))
        .bind(num(|r| r.last_position))
        .bind(rows.iter().map(|r| r.updated_at).collect::<Vec<_>>())
        .execute(conn)
        .await?;
    Ok(())
}

/// Adds the sales of a batch, summed per (SKU, minute) first.
pub async fn add_sales(conn: &mut PgConnection, table: &str, deltas: &[SaleDelta]) -> Result<(), sqlx::Error> {
    if deltas.is_empty() {
        return Ok(());
    }
    let mut summed: HashMap<(String, DateTime<Utc>), SaleDelta> = HashMap::new();
    for d in deltas {
        summed
            .entry((d.sku.clone(), d.minute))
            .and_modify(|s| {
                s.units += d.units;
                s.revenue_minor += d.revenue_minor;
            })
            .or_insert_with(|| d.clone());
    }
    let v: Vec<&SaleDelta> = summed.values().collect();
    let sql = format!(
        "INSERT INTO {table} (sku, minute, units, revenue_minor, currency) \
         SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::bigint[], $4::bigint[], $5::text[]) \
         ON CONFLICT (sku, minute) DO UPDATE SET units = {table}.units + EXCLUDED.units, \
             revenue_minor = {table}.revenue_minor + EXCLUDED.revenue_minor"
    );
    sqlx::query(&sql)
        .bind(v.iter().map(|d| d.sku.clone()).collect::<Vec<_>>())
        .bind(v.iter().map(|d| d.minute).collect::<Vec<_>>())
        .bind(v.iter().map(|d| d.units).collect::<Vec<_>>())
        .bind(v.iter().map(|d| d.revenue_minor).collect::<Vec<_>>())
        .bind(v.iter().map(|d| d.currency.clone()).collect::<Vec<_>>())
        .execute(conn)
        .await?;
    Ok(())
}
