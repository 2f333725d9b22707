//! The catalog projection: `catalog_items` (one row per SKU with its stock) and
//! `sales_by_minute` (units and revenue sold per SKU and minute), from inventory events.

use crate::view::View;
use async_trait::async_trait;
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use sqlx::PgConnection;
use std::collections::HashMap;
use surge_events::{inventory::InventoryEvent, EventEnvelope, Sku, StreamId, StreamOf};

/// The catalog view: one row per SKU in `catalog_items`, sales per minute in `sales_by_minute`.
pub struct Catalog;

#[async_trait]
impl View for Catalog {
    type Event = InventoryEvent;
    type Key = Sku;
    type Row = CatalogRow;
    type Extra = SaleDelta;

    fn name(&self) -> &'static str {
        "catalog"
    }
    fn tables(&self) -> &'static [&'static str] {
        &["catalog_items", "sales_by_minute"]
    }
    fn key(&self, stream: &StreamId) -> Option<Sku> {
        match stream.parse() {
            Some(StreamOf::Inventory(sku)) => Some(sku),
            _ => None,
        }
    }
    fn stream_id(&self, key: &Sku) -> StreamId {
        key.stream_id()
    }
    fn version(&self, row: &CatalogRow) -> i64 {
        row.version
    }
    fn fold(
        &self,
        row: Option<CatalogRow>,
        env: &EventEnvelope,
        event: &InventoryEvent,
        sales: &mut Vec<SaleDelta>,
    ) -> Option<CatalogRow> {
        let (row, sale) = fold(row, env, event);
        sales.extend(sale);
        row
    }
    async fn load(
        &self,
        conn: &mut PgConnection,
        tables: &[String],
        keys: &[Sku],
    ) -> Result<HashMap<Sku, CatalogRow>, sqlx::Error> {
        let skus: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        let rows = load(conn, &tables[0], &skus).await?;
        Ok(rows
            .into_values()
            .filter_map(|r| Sku::parse(r.sku.clone()).ok().map(|k| (k, r)))
            .collect())
    }
    async fn write(
        &self,
        conn: &mut PgConnection,
        tables: &[String],
        rows: &[&CatalogRow],
        sales: Vec<SaleDelta>,
    ) -> Result<(), sqlx::Error> {
        upsert(conn, &tables[0], rows).await?;
        add_sales(conn, &tables[1], &sales).await
    }
    async fn versions(&self, conn: &mut PgConnection, tables: &[String]) -> Result<Vec<(Sku, i64)>, sqlx::Error> {
        let rows: Vec<(String, i64)> = sqlx::query_as(&format!("SELECT sku, version FROM {}", tables[0]))
            .fetch_all(conn)
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(sku, v)| Sku::parse(sku).ok().map(|k| (k, v)))
            .collect())
    }
}

/// A row of `catalog_items`: what the query side reads too.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
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

/// The rows of `skus`, locked for this transaction.
pub async fn load(
    conn: &mut PgConnection,
    table: &str,
    skus: &[String],
) -> Result<HashMap<String, CatalogRow>, sqlx::Error> {
    let sql = format!("SELECT * FROM {table} WHERE sku = ANY($1) FOR UPDATE");
    let rows: Vec<CatalogRow> = sqlx::query_as(&sql).bind(skus).fetch_all(conn).await?;
    Ok(rows.into_iter().map(|row| (row.sku.clone(), row)).collect())
}

/// Every row of the table (tests and audits compare it with a fold of the event store).
pub async fn load_all(conn: &mut PgConnection, table: &str) -> Result<Vec<CatalogRow>, sqlx::Error> {
    let sql = format!("SELECT * FROM {table} ORDER BY sku");
    sqlx::query_as(&sql).fetch_all(conn).await
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
