//! The catalog projection: `catalog_items` (one row per SKU with its stock) and
//! `sales_by_minute` (units and revenue sold per SKU and minute), from inventory events.
//!
//! An item split into stock buckets has one stream per bucket (`inventory-<sku>` is bucket 0,
//! `inventory-<sku>#<k>` bucket k) and still one row: its stock is the sum over the buckets, its
//! settings (`buckets`, `max_per_customer`) come from bucket 0, and `bucket_versions[k]` is the
//! version of bucket k's stream the row reflects (so a redelivered event of any bucket is
//! skipped, and a gap in any bucket is healed from the store). `version` is the sum of those:
//! it grows with every event of any bucket (ETags, caches). To the view machinery each bucket
//! is a key of its own ([`BucketRow`]); the buckets of one SKU touched in a batch are merged
//! into its row when it is written. An event of a bucket k >= 1 that arrives before the item's
//! `ItemAdded` (another Kafka partition) starts the row with an empty catalog entry, which
//! `ItemAdded` fills in.

use crate::view::View;
use async_trait::async_trait;
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use sqlx::PgConnection;
use std::collections::{BTreeMap, HashMap};
use surge_events::{inventory::InventoryEvent, EventEnvelope, Sku, StreamId};

/// The catalog view: one row per SKU in `catalog_items`, sales per minute in `sales_by_minute`.
pub struct Catalog;

#[async_trait]
impl View for Catalog {
    type Event = InventoryEvent;
    type Key = (Sku, u32);
    type Row = BucketRow;
    type Extra = SaleDelta;

    fn name(&self) -> &'static str {
        "catalog"
    }
    fn tables(&self) -> &'static [&'static str] {
        &["catalog_items", "sales_by_minute"]
    }
    fn key(&self, stream: &StreamId) -> Option<(Sku, u32)> {
        stream.inventory_bucket()
    }
    fn stream_id(&self, key: &(Sku, u32)) -> StreamId {
        key.0.bucket_stream_id(key.1)
    }
    fn version(&self, row: &BucketRow) -> i64 {
        bucket_version(&row.row, row.bucket)
    }
    fn fold(
        &self,
        row: Option<BucketRow>,
        env: &EventEnvelope,
        event: &InventoryEvent,
        sales: &mut Vec<SaleDelta>,
    ) -> Option<BucketRow> {
        let bucket = env.stream_id.inventory_bucket().map_or(0, |(_, k)| k);
        let (base, current) = match row {
            Some(r) => (r.base, Some(r.row)),
            None => (None, None),
        };
        let (row, sale) = fold(current, env, event);
        sales.extend(sale);
        row.map(|row| BucketRow { bucket, base, row })
    }
    async fn load(
        &self,
        conn: &mut PgConnection,
        tables: &[String],
        keys: &[(Sku, u32)],
    ) -> Result<HashMap<(Sku, u32), BucketRow>, sqlx::Error> {
        let mut skus: Vec<String> = keys.iter().map(|(k, _)| k.to_string()).collect();
        skus.sort();
        skus.dedup();
        let rows = load(conn, &tables[0], &skus).await?;
        Ok(keys
            .iter()
            .filter_map(|(sku, k)| {
                rows.get(sku.as_str()).map(|r| {
                    (
                        (sku.clone(), *k),
                        BucketRow {
                            bucket: *k,
                            base: Some(r.clone()),
                            row: r.clone(),
                        },
                    )
                })
            })
            .collect())
    }
    async fn write(
        &self,
        conn: &mut PgConnection,
        tables: &[String],
        rows: &[&BucketRow],
        sales: Vec<SaleDelta>,
    ) -> Result<(), sqlx::Error> {
        let mut by_sku: BTreeMap<&str, Vec<&BucketRow>> = BTreeMap::new();
        for r in rows {
            by_sku.entry(r.row.sku.as_str()).or_default().push(r);
        }
        let merged: Vec<CatalogRow> = by_sku.into_values().map(|buckets| merge(&buckets)).collect();
        let merged: Vec<&CatalogRow> = merged.iter().collect();
        upsert(conn, &tables[0], &merged).await?;
        add_sales(conn, &tables[1], &sales).await
    }
    async fn versions(
        &self,
        conn: &mut PgConnection,
        tables: &[String],
    ) -> Result<Vec<((Sku, u32), i64)>, sqlx::Error> {
        let rows: Vec<(String, i64, Vec<i64>)> =
            sqlx::query_as(&format!("SELECT sku, version, bucket_versions FROM {}", tables[0]))
                .fetch_all(conn)
                .await?;
        let mut versions = Vec::new();
        for (sku, version, buckets) in rows {
            let Ok(sku) = Sku::parse(sku) else { continue };
            if buckets.is_empty() {
                versions.push(((sku, 0), version));
            } else {
                versions.extend(buckets.iter().enumerate().map(|(k, v)| ((sku.clone(), k as u32), *v)));
            }
        }
        Ok(versions)
    }
}

/// One bucket of an item's row as the view machinery folds it: the row as loaded (`base`,
/// `None` when the item had no row yet) and as folded with this bucket's events (`row`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketRow {
    pub bucket: u32,
    pub base: Option<CatalogRow>,
    pub row: CatalogRow,
}

/// The version of bucket `k`'s stream a row reflects (a row written before items had buckets
/// keeps only `version`, bucket 0's).
pub fn bucket_version(row: &CatalogRow, k: u32) -> i64 {
    match row.bucket_versions.get(k as usize) {
        Some(v) => *v,
        None if k == 0 && row.bucket_versions.is_empty() => row.version,
        None => 0,
    }
}

/// The row of an item whose buckets `buckets` were folded in one batch, each from the same
/// loaded row: the stock is the loaded stock plus what each bucket's events changed; the
/// catalog entry and settings are bucket 0's (only its events change them).
fn merge(buckets: &[&BucketRow]) -> CatalogRow {
    let base = buckets.first().and_then(|b| b.base.clone());
    let zero = base
        .clone()
        .unwrap_or_else(|| placeholder(&buckets[0].row.sku, buckets[0].row.updated_at));
    let entry = buckets
        .iter()
        .find(|b| b.bucket == 0)
        .map(|b| b.row.clone())
        .or(base)
        .unwrap_or_else(|| buckets[0].row.clone());
    let mut merged = entry;
    merged.available = zero.available + buckets.iter().map(|b| b.row.available - zero.available).sum::<i64>();
    merged.reserved = zero.reserved + buckets.iter().map(|b| b.row.reserved - zero.reserved).sum::<i64>();
    merged.sold = zero.sold + buckets.iter().map(|b| b.row.sold - zero.sold).sum::<i64>();
    let mut versions = zero.bucket_versions.clone();
    if versions.is_empty() && zero.version > 0 {
        versions.push(zero.version);
    }
    for b in buckets {
        let k = b.bucket as usize;
        if versions.len() <= k {
            versions.resize(k + 1, 0);
        }
        versions[k] = bucket_version(&b.row, b.bucket);
    }
    merged.version = versions.iter().sum();
    merged.bucket_versions = versions;
    merged.last_position = buckets.iter().map(|b| b.row.last_position).max().unwrap_or(0);
    merged.updated_at = buckets
        .iter()
        .map(|b| b.row.updated_at)
        .max()
        .unwrap_or(merged.updated_at);
    merged
}

/// The row of an item whose bucket's events arrive before its `ItemAdded`: no catalog entry yet.
fn placeholder(sku: &str, at: DateTime<Utc>) -> CatalogRow {
    CatalogRow {
        sku: sku.to_string(),
        name: String::new(),
        category: String::new(),
        price_minor: 0,
        currency: String::new(),
        available: 0,
        reserved: 0,
        sold: 0,
        version: 0,
        last_position: 0,
        updated_at: at,
        buckets: 1,
        max_per_customer: None,
        bucket_versions: Vec::new(),
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
    /// How many stock buckets the item's stock is split into.
    pub buckets: i32,
    /// The most units one customer may hold reserved or bought at once.
    pub max_per_customer: Option<i64>,
    /// The version of each bucket's stream the row reflects (see the module's doc).
    pub bucket_versions: Vec<i64>,
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

/// Folds one inventory event (of any bucket of the item: its stream says which) into the SKU's
/// row. `None` in, `None` out for an event of bucket 0 that needs an existing row (the caller
/// reports it: the row's first event is missing); an event of another bucket with no row yet
/// starts one without a catalog entry (its `ItemAdded` may come later, from another partition).
pub fn fold(
    row: Option<CatalogRow>,
    env: &EventEnvelope,
    event: &InventoryEvent,
) -> (Option<CatalogRow>, Option<SaleDelta>) {
    let bucket = env.stream_id.inventory_bucket().map_or(0, |(_, k)| k);
    let mut sale = None;
    let row = match (row, event) {
        (None, InventoryEvent::ItemAdded(e)) => Some(CatalogRow {
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
            buckets: 1,
            max_per_customer: None,
            bucket_versions: Vec::new(),
        }),
        (None, e) if bucket != 0 => fold_stock(placeholder(e.sku().as_str(), env.occurred_at), env, e, &mut sale),
        (None, _) => None,
        (Some(r), e) => fold_stock(r, env, e, &mut sale),
    };
    let row = row.map(|mut r| {
        let k = bucket as usize;
        if r.bucket_versions.is_empty() && r.version > 0 {
            r.bucket_versions.push(r.version);
        }
        if r.bucket_versions.len() <= k {
            r.bucket_versions.resize(k + 1, 0);
        }
        r.bucket_versions[k] = env.version;
        r.version = r.bucket_versions.iter().sum();
        r.last_position = r.last_position.max(env.position);
        r.updated_at = if r.version == env.version {
            env.occurred_at
        } else {
            r.updated_at.max(env.occurred_at)
        };
        r
    });
    (row, sale)
}

fn fold_stock(
    mut r: CatalogRow,
    env: &EventEnvelope,
    event: &InventoryEvent,
    sale: &mut Option<SaleDelta>,
) -> Option<CatalogRow> {
    match event {
        // The catalog entry arrives after stock of another bucket did: keep that stock.
        InventoryEvent::ItemAdded(e) => {
            r.name = e.name.clone();
            r.category = e.category.clone();
            r.price_minor = e.price.minor();
            r.currency = e.price.currency().as_str().to_string();
            r.available += e.initial_stock;
        }
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
            *sale = Some(SaleDelta {
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
        InventoryEvent::BucketsChanged(e) => r.buckets = e.buckets as i32,
        InventoryEvent::PurchaseLimitSet(e) => r.max_per_customer = e.max_per_customer,
        InventoryEvent::StockMovedOut(e) => r.available -= e.quantity,
        InventoryEvent::StockMovedIn(e) => r.available += e.quantity,
    }
    Some(r)
}

/// The rows of `skus`, locked for this transaction. A SKU's bucket streams land in different
/// Kafka partitions, so two projector processes may fold events of one item at once; `FOR
/// UPDATE` locks nothing while the item has no row yet, and the second upsert would overwrite
/// the first. Each SKU's advisory lock (taken in one sorted statement, so two batches never
/// wait on each other in a cycle) makes them take turns whether the row exists or not.
pub async fn load(
    conn: &mut PgConnection,
    table: &str,
    skus: &[String],
) -> Result<HashMap<String, CatalogRow>, sqlx::Error> {
    let key = format!("surge-view:{table}:");
    sqlx::query(
        "SELECT pg_advisory_xact_lock(h) FROM \
         (SELECT DISTINCT hashtextextended($2 || s, 0) AS h FROM unnest($1::text[]) AS s ORDER BY h) AS l",
    )
    .bind(skus)
    .bind(&key)
    .execute(&mut *conn)
    .await?;
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
                              version, last_position, updated_at, buckets, max_per_customer, bucket_versions) \
         SELECT u.sku, u.name, u.category, u.price_minor, u.currency, u.available, u.reserved, u.sold, \
                u.version, u.last_position, u.updated_at, u.buckets, u.max_per_customer, \
                ARRAY(SELECT jsonb_array_elements_text(u.bucket_versions)::bigint) \
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::bigint[], \
                     $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::timestamptz[], \
                     $12::int[], $13::bigint[], $14::jsonb[]) \
              AS u(sku, name, category, price_minor, currency, available, reserved, sold, version, \
                   last_position, updated_at, buckets, max_per_customer, bucket_versions) \
         ON CONFLICT (sku) DO UPDATE SET name = EXCLUDED.name, category = EXCLUDED.category, \
             price_minor = EXCLUDED.price_minor, currency = EXCLUDED.currency, \
             available = EXCLUDED.available, reserved = EXCLUDED.reserved, sold = EXCLUDED.sold, \
             version = EXCLUDED.version, last_position = EXCLUDED.last_position, \
             updated_at = EXCLUDED.updated_at, buckets = EXCLUDED.buckets, \
             max_per_customer = EXCLUDED.max_per_customer, bucket_versions = EXCLUDED.bucket_versions"
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
        .bind(rows.iter().map(|r| r.buckets).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.max_per_customer).collect::<Vec<_>>())
        // A 2-D array of ragged rows is not a Postgres array: each row's as a JSON array.
        .bind(
            rows.iter()
                .map(|r| serde_json::json!(r.bucket_versions))
                .collect::<Vec<_>>(),
        )
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

#[cfg(test)]
mod tests {
    use super::*;
    use surge_events::inventory::{ItemAdded, StockMovedIn, StockMovedOut, StockReserved};
    use surge_events::{Currency, EventMetadata, Money, OrderId, Payload, StreamType};

    fn sku() -> Sku {
        Sku::parse("HOT").unwrap()
    }
    fn envelope(bucket: u32, version: i64, position: i64, event: &InventoryEvent) -> EventEnvelope {
        let mut payload = serde_json::to_value(event).unwrap();
        payload.as_object_mut().unwrap().remove("type");
        EventEnvelope {
            event_id: uuid::Uuid::now_v7(),
            position,
            stream_id: sku().bucket_stream_id(bucket),
            stream_type: StreamType::Inventory,
            version,
            event_type: event.event_type().into(),
            schema_version: 1,
            occurred_at: DateTime::from_timestamp(1_800_000_000 + position, 0).unwrap(),
            metadata: EventMetadata::new("test"),
            payload,
        }
    }
    fn added(stock: i64) -> InventoryEvent {
        InventoryEvent::ItemAdded(ItemAdded {
            sku: sku(),
            name: "Hot".into(),
            category: "shoes".into(),
            price: Money::new(100, Currency::parse("EUR").unwrap()).unwrap(),
            initial_stock: stock,
        })
    }
    fn moved(to: u32, q: i64) -> (InventoryEvent, InventoryEvent) {
        (
            InventoryEvent::StockMovedOut(StockMovedOut {
                sku: sku(),
                to_bucket: to,
                quantity: q,
            }),
            InventoryEvent::StockMovedIn(StockMovedIn {
                sku: sku(),
                from_bucket: 0,
                quantity: q,
            }),
        )
    }
    fn reserved(q: i64) -> InventoryEvent {
        InventoryEvent::StockReserved(StockReserved {
            sku: sku(),
            order_id: OrderId::new(),
            quantity: q,
            expires_at: DateTime::from_timestamp(1_900_000_000, 0).unwrap(),
        })
    }
    fn changed(buckets: u32) -> InventoryEvent {
        InventoryEvent::BucketsChanged(surge_events::inventory::BucketsChanged { sku: sku(), buckets })
    }

    /// (bucket, version, position, event) of a split item: 10 units, 4 moved to bucket 1,
    /// then 3 reserved in bucket 1 and 2 in bucket 0.
    fn history() -> Vec<EventEnvelope> {
        let (out, into) = moved(1, 4);
        vec![
            envelope(0, 1, 1, &added(10)),
            envelope(0, 2, 2, &changed(2)),
            envelope(0, 3, 3, &out),
            envelope(1, 1, 4, &into),
            envelope(1, 2, 5, &reserved(3)),
            envelope(0, 4, 6, &reserved(2)),
        ]
    }

    fn decoded(env: &EventEnvelope) -> InventoryEvent {
        surge_events::decode(env).unwrap()
    }

    #[test]
    fn an_item_in_one_bucket_keeps_its_stream_version() {
        let events = [envelope(0, 1, 1, &added(5)), envelope(0, 2, 2, &reserved(2))];
        let mut row = None;
        for e in &events {
            row = fold(row, e, &decoded(e)).0;
        }
        let row = row.unwrap();
        assert_eq!((row.available, row.reserved, row.version), (3, 2, 2));
        assert_eq!(
            (row.buckets, row.max_per_customer, row.bucket_versions.clone()),
            (1, None, vec![2])
        );
    }

    #[test]
    fn a_split_item_is_one_row_with_the_totals_of_its_buckets() {
        let mut row = None;
        for e in &history() {
            row = fold(row, e, &decoded(e)).0;
        }
        let row = row.unwrap();
        assert_eq!((row.available, row.reserved, row.sold), (5, 5, 0));
        assert_eq!(row.buckets, 2);
        assert_eq!(row.bucket_versions, vec![4, 2]);
        assert_eq!(row.version, 6, "the sum of the buckets' versions");
        assert_eq!(row.last_position, 6);
    }

    /// The view machinery folds each bucket as a key of its own and merges them on write: the
    /// same row as the fold, whatever bucket arrives first (here bucket 1, before ItemAdded).
    #[test]
    fn buckets_folded_apart_merge_into_the_same_row_in_any_order() {
        let events = history();
        let mut expected = None;
        for e in &events {
            expected = fold(expected, e, &decoded(e)).0;
        }
        let bucket_first: Vec<&EventEnvelope> = events
            .iter()
            .filter(|e| e.stream_id != sku().stream_id())
            .chain(events.iter().filter(|e| e.stream_id == sku().stream_id()))
            .collect();
        let mut rows: BTreeMap<u32, BucketRow> = BTreeMap::new();
        let mut sales = Vec::new();
        for e in bucket_first {
            let k = e.stream_id.inventory_bucket().unwrap().1;
            let row = Catalog
                .fold(rows.remove(&k), e, &decoded(e), &mut sales)
                .expect("folds");
            assert_eq!(Catalog.version(&row), e.version);
            rows.insert(k, row);
        }
        let merged = merge(&rows.values().collect::<Vec<_>>());
        let expected = expected.unwrap();
        assert_eq!(
            (
                merged.available,
                merged.reserved,
                merged.version,
                merged.bucket_versions.clone()
            ),
            (
                expected.available,
                expected.reserved,
                expected.version,
                expected.bucket_versions.clone()
            )
        );
        assert_eq!((merged.name.as_str(), merged.buckets), ("Hot", 2));

        // A later batch of bucket 1 alone, from the written row: its change adds to the totals.
        let base = merged.clone();
        let more = envelope(1, 3, 7, &reserved(1));
        let row = Catalog
            .fold(
                Some(BucketRow {
                    bucket: 1,
                    base: Some(base.clone()),
                    row: base,
                }),
                &more,
                &decoded(&more),
                &mut sales,
            )
            .unwrap();
        let merged = merge(&[&row]);
        assert_eq!((merged.available, merged.reserved), (4, 6));
        assert_eq!(merged.bucket_versions, vec![4, 3]);
        assert_eq!(merged.version, 7);
    }
}
