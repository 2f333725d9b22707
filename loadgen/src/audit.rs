//! The audit after every run: what the answers said, what the event store holds and what the
//! views show must agree, and no SKU of the run may ever have gone below zero.
//!
//! Only the run's own SKUs and the orders placed on them since the run began are looked at,
//! so runs against a shared database do not disturb each other's audit.

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};
use surge_events::{OrderId, Sku, StreamId};
use surge_store::{append, log};

/// One line of the audit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    pub check: String,
    pub ok: bool,
    pub detail: String,
}

pub fn check(name: &str, ok: bool, detail: String) -> Check {
    Check {
        check: name.to_string(),
        ok,
        detail,
    }
}

/// What the run did, as its clients saw it.
pub struct Scope<'a> {
    /// The SKUs the run seeded (and only ordered from).
    pub skus: &'a [String],
    /// A time before the run's first order.
    pub since: chrono::DateTime<chrono::Utc>,
    /// Idempotency key -> the order ids answered 202 for it.
    pub accepted: &'a HashMap<String, HashSet<String>>,
    /// Orders whose answer never came (transport errors, 5xx): they may or may not be stored.
    pub unknown: u64,
    /// How long the views may take to catch up with the store before a check fails.
    pub patience: Duration,
}

/// Stock of one SKU folded from its events.
#[derive(Debug, Default, Clone)]
struct Stock {
    supply: i64,
    held: i64,
    available: i64,
    lowest: i64,
    /// Available stock after each version (index = version - 1).
    by_version: Vec<i64>,
}

/// Folds the stock of `streams` from the event store, as it is now.
async fn fold_stock(pool: &PgPool, streams: &[StreamId]) -> anyhow::Result<BTreeMap<String, Stock>> {
    let mut conn = pool.acquire().await?;
    let events = append::read_streams_after(&mut conn, streams, &vec![0; streams.len()]).await?;
    let mut stock: BTreeMap<String, Stock> = BTreeMap::new();
    for e in &events {
        let s = stock.entry(e.stream_id.0.clone()).or_insert(Stock {
            lowest: i64::MAX,
            ..Stock::default()
        });
        let q = e.payload["quantity"].as_i64().unwrap_or(0);
        match e.event_type.as_str() {
            "ItemAdded" => s.supply += e.payload["initial_stock"].as_i64().unwrap_or(0),
            "StockRestocked" => s.supply += q,
            "StockReserved" => s.held += q,
            "ReservationReleased" | "ReservationExpired" => s.held -= q,
            _ => {}
        }
        s.available = s.supply - s.held;
        s.lowest = s.lowest.min(s.available);
        s.by_version.push(s.available);
    }
    Ok(stock)
}

pub async fn audit(pool: &PgPool, scope: &Scope<'_>) -> anyhow::Result<Vec<Check>> {
    let mut checks = Vec::new();
    let multi = scope.accepted.values().filter(|ids| ids.len() > 1).count();
    checks.push(check(
        "one order per idempotency key",
        multi == 0,
        format!(
            "{} keys answered, {multi} with more than one order",
            scope.accepted.len()
        ),
    ));
    let ids: HashSet<&String> = scope.accepted.values().flatten().collect();

    // Stock at every version of every SKU of the run.
    let streams = scope
        .skus
        .iter()
        .map(|s| Ok(Sku::parse(s.as_str())?.stream_id()))
        .collect::<anyhow::Result<Vec<StreamId>>>()?;
    let stock = fold_stock(pool, &streams).await?;
    let lowest = stock.values().map(|s| s.lowest).min().unwrap_or(0);
    checks.push(check(
        "stock never negative",
        lowest >= 0,
        format!("{} SKUs, lowest available at any version: {lowest}", stock.len()),
    ));
    let oversold: i64 = stock.values().map(|s| (s.held - s.supply).max(0)).sum();
    let busiest = stock.iter().max_by_key(|(_, s)| s.held);
    checks.push(check(
        "nothing oversold",
        oversold == 0,
        match busiest {
            Some((stream, s)) => format!(
                "oversold {oversold} units; busiest SKU {}: {} of {} units reserved or sold",
                stream.trim_start_matches("inventory-"),
                s.held,
                s.supply
            ),
            None => format!("oversold {oversold} units"),
        },
    ));

    // Every accepted order once in the store; every stored order of the run answered.
    let stored: Vec<String> = log::orders_placed_since(pool, scope.since, scope.skus)
        .await?
        .iter()
        .map(OrderId::to_string)
        .collect();
    let stored_set: HashSet<&String> = stored.iter().collect();
    let lost = ids.difference(&stored_set).count();
    let duplicated = stored.len() - stored_set.len();
    let unanswered = stored_set.difference(&ids).count();
    checks.push(check(
        "accepted orders = orders in the event store",
        lost == 0 && duplicated == 0 && unanswered as u64 <= scope.unknown,
        format!(
            "{} accepted, {} stored: lost {lost}, duplicated {duplicated}, stored but never answered {unanswered} \
             (answers that never came: {})",
            ids.len(),
            stored.len(),
            scope.unknown
        ),
    ));

    let order_ids: Vec<uuid::Uuid> = stored_set.iter().filter_map(|i| i.parse().ok()).collect();
    let deadline = Instant::now() + scope.patience;
    let mut in_view = 0i64;
    while Instant::now() < deadline {
        in_view = sqlx::query_scalar("SELECT count(*) FROM orders WHERE order_id = ANY($1)")
            .bind(&order_ids)
            .fetch_one(pool)
            .await?;
        if in_view as usize == order_ids.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    checks.push(check(
        "stored orders = rows in the orders view",
        in_view as usize == order_ids.len(),
        format!("{in_view} of {} in the view", order_ids.len()),
    ));

    // The views equal the fold of the store: every order of the run at least at the version
    // it had when the audit began (paid and cancelled ones too), every SKU too, and each SKU's
    // available stock the fold's at the version the view shows. Writers that go on meanwhile
    // (reservations expiring, payments settling) move both; the comparison is by version.
    let order_streams: Vec<StreamId> = order_ids.iter().map(|id| OrderId(*id).stream_id()).collect();
    let order_versions: Vec<(String, i64)> = log::stream_heads_of(pool, &order_streams)
        .await?
        .into_iter()
        .map(|(stream, version)| (stream.0, version))
        .collect();
    let (names, versions): (Vec<String>, Vec<i64>) = order_versions.into_iter().unzip();
    let mut behind = (0i64, 0usize, 0usize);
    let deadline = deadline + scope.patience / 2;
    while Instant::now() < deadline {
        let orders_behind: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM unnest($1::text[], $2::bigint[]) AS e(stream_id, v) \
             LEFT JOIN orders o ON 'order-' || o.order_id::text = e.stream_id \
             WHERE o.version IS NULL OR o.version < e.v",
        )
        .bind(&names)
        .bind(&versions)
        .fetch_one(pool)
        .await?;
        let items: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT 'inventory-' || sku, available, version FROM catalog_items WHERE 'inventory-' || sku = ANY($1)",
        )
        .bind(streams.iter().map(StreamId::as_str).collect::<Vec<_>>())
        .fetch_all(pool)
        .await?;
        let now = fold_stock(pool, &streams).await?;
        let items_behind = stock
            .iter()
            .filter(|(s, f)| {
                items
                    .iter()
                    .find(|(v, _, _)| v == *s)
                    .is_none_or(|(_, _, version)| (*version as usize) < f.by_version.len())
            })
            .count();
        let wrong_stock = items
            .iter()
            .filter(|(s, available, version)| {
                let at = now
                    .get(s)
                    .and_then(|f| f.by_version.get((*version as usize).wrapping_sub(1)));
                at != Some(available)
            })
            .count();
        behind = (orders_behind, items_behind, wrong_stock);
        if behind == (0, 0, 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    checks.push(check(
        "views = fold of the event store",
        behind == (0, 0, 0),
        format!(
            "orders behind the store {}, catalog items behind {}, items whose stock differs from the fold {}",
            behind.0, behind.1, behind.2
        ),
    ));
    Ok(checks)
}

/// What a run of a peer of `bench/peers/` answered, for its audit.
pub struct PeerScope<'a> {
    /// Every SKU the run added, with its stock.
    pub seeded: &'a [(String, i64)],
    /// `customer:key` -> the order ids answered 202 for it.
    pub accepted: &'a HashMap<String, HashSet<String>>,
    /// (customer, key) answered 422 and never 202.
    pub refused: &'a HashSet<(String, String)>,
    /// SKUs that answered `out-of-stock` at least once.
    pub sold_out: &'a HashSet<String>,
    /// Orders whose answer never came (transport errors, 5xx).
    pub unknown: u64,
}

/// The audit of a peer of `bench/peers/`, from the views every peer keeps in its database:
/// `bench_stock(sku, initial_stock, reserved)` and `bench_orders(order_id, customer_id,
/// idempotency_key, sku, quantity)` (placed orders, refused ones not). A peer's stock only
/// goes down, so a SKU that answered `out-of-stock` must end with all of it reserved.
pub async fn audit_peer(pool: &PgPool, scope: &PeerScope<'_>) -> anyhow::Result<Vec<Check>> {
    let PeerScope {
        seeded,
        accepted,
        refused,
        sold_out,
        unknown,
    } = *scope;
    let mut checks = Vec::new();
    let multi = accepted.values().filter(|ids| ids.len() > 1).count();
    checks.push(check(
        "one order per idempotency key",
        multi == 0,
        format!("{} keys answered, {multi} with more than one order", accepted.len()),
    ));
    let skus: Vec<String> = seeded.iter().map(|(s, _)| s.clone()).collect();
    let stock: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT sku, initial_stock::bigint, reserved::bigint FROM bench_stock WHERE sku = ANY($1)")
            .bind(&skus)
            .fetch_all(pool)
            .await?;
    let wrong_supply = seeded
        .iter()
        .filter(|(sku, supply)| !stock.iter().any(|(s, initial, _)| s == sku && initial == supply))
        .count();
    checks.push(check(
        "every SKU holds the stock it was given",
        wrong_supply == 0,
        format!(
            "{} SKUs added, {wrong_supply} missing or with other stock",
            seeded.len()
        ),
    ));
    let oversold: i64 = stock
        .iter()
        .map(|(_, initial, reserved)| (reserved - initial).max(0))
        .sum();
    let busiest = stock.iter().max_by_key(|(_, _, reserved)| *reserved);
    checks.push(check(
        "nothing oversold",
        oversold == 0,
        match busiest {
            Some((sku, initial, reserved)) => {
                format!("oversold {oversold} units; busiest SKU {sku}: {reserved} of {initial} units reserved")
            }
            None => format!("oversold {oversold} units"),
        },
    ));
    let orders: Vec<(String, String, String, String, i64)> = sqlx::query_as(
        "SELECT order_id, customer_id, idempotency_key, sku, quantity::bigint FROM bench_orders WHERE sku = ANY($1)",
    )
    .bind(&skus)
    .fetch_all(pool)
    .await?;
    let ids: HashSet<&String> = accepted.values().flatten().collect();
    let stored: HashSet<&String> = orders.iter().map(|o| &o.0).collect();
    let keys: HashSet<(&String, &String)> = orders.iter().map(|o| (&o.1, &o.2)).collect();
    let lost = ids.difference(&stored).count();
    let duplicated = orders.len() - stored.len().min(keys.len());
    let unanswered = stored.difference(&ids).count();
    checks.push(check(
        "accepted orders = orders in the store",
        lost == 0 && duplicated == 0 && unanswered as u64 <= unknown,
        format!(
            "{} accepted, {} stored: lost {lost}, duplicated {duplicated}, stored but never answered {unanswered} \
             (answers that never came: {unknown})",
            ids.len(),
            orders.len()
        ),
    ));
    let stored_refused = orders
        .iter()
        .filter(|o| refused.contains(&(o.1.clone(), o.2.clone())))
        .count();
    checks.push(check(
        "no order stored for a key refused",
        stored_refused == 0,
        format!(
            "{} keys refused with 422, {stored_refused} of them stored as orders",
            refused.len()
        ),
    ));
    let not_sold_out: Vec<&str> = stock
        .iter()
        .filter(|(sku, initial, reserved)| sold_out.contains(sku) && reserved < initial)
        .map(|(sku, _, _)| sku.as_str())
        .collect();
    checks.push(check(
        "out-of-stock only when sold out",
        not_sold_out.is_empty(),
        format!(
            "{} SKUs answered out-of-stock, {} of them with stock left{}",
            sold_out.len(),
            not_sold_out.len(),
            not_sold_out.first().map_or(String::new(), |s| format!(" (e.g. {s})"))
        ),
    ));
    let mut ordered: HashMap<&str, i64> = HashMap::new();
    for o in &orders {
        *ordered.entry(o.3.as_str()).or_default() += o.4;
    }
    let differ = stock
        .iter()
        .filter(|(sku, _, reserved)| ordered.get(sku.as_str()).copied().unwrap_or(0) != *reserved)
        .count();
    checks.push(check(
        "stock reserved = stock of the orders placed",
        differ == 0,
        format!("{differ} SKUs whose reserved stock differs from their orders'"),
    ));
    Ok(checks)
}
