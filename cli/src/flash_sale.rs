//! `surge loadgen flash-sale`: an open-loop flash sale against a running command API, then an
//! audit of what the system did with it.
//!
//! Arrivals follow a schedule (ramp from `--start-rate` to `--peak-rate` orders/s, then hold),
//! whatever the answers' latency: each request's latency is measured from when it was *due*,
//! so a slow server cannot hide its slowness by slowing the client (coordinated omission).
//! 70 % of the orders go to one hot SKU with little stock, the rest to background SKUs; some
//! requests are sent twice with the same idempotency key, as retrying clients do.
//!
//! The audit reads the event store and the views: stock per SKU never negative at any version,
//! nothing oversold, every accepted order exactly once in the store and in the `orders` view,
//! and one order per idempotency key. A failed audit fails the run.

use anyhow::bail;
use backon::{ExponentialBuilder, Retryable};
use clap::Args;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use surge_runtime::DatabaseConfig;

#[derive(Debug, Clone, Args)]
pub struct FlashSaleConfig {
    #[arg(long, env = "SURGE_COMMAND_URL", default_value = "http://127.0.0.1:8080")]
    pub command_url: String,
    #[arg(long, env = "SURGE_QUERY_URL", default_value = "http://127.0.0.1:8081")]
    pub query_url: String,
    /// The event store and views, for the audit.
    #[command(flatten)]
    pub db: DatabaseConfig,
    #[command(flatten)]
    pub credentials: crate::credentials::ClientAuth,
    /// Orders per second at the start (the "1x").
    #[arg(long, default_value_t = 50)]
    pub start_rate: u64,
    /// Orders per second at the peak (20x by default).
    #[arg(long, default_value_t = 1000)]
    pub peak_rate: u64,
    /// Seconds from start rate to peak rate.
    #[arg(long, default_value_t = 5)]
    pub ramp_secs: u64,
    /// Seconds at the peak rate.
    #[arg(long, default_value_t = 5)]
    pub hold_secs: u64,
    /// Units of the hot SKU.
    #[arg(long, default_value_t = 500)]
    pub hot_stock: i64,
    /// Background SKUs (plenty of stock each).
    #[arg(long, default_value_t = 20)]
    pub background_skus: usize,
    /// Hard cap on requests sent.
    #[arg(long, default_value_t = 50_000)]
    pub max_requests: u64,
    /// Retry (same idempotency key, backing off, up to ~15 s) when the answer is unknown or a
    /// 503: a transport error or an unavailable service, as a careful client does while
    /// processes restart. Every order then ends accepted or refused, so the audit can demand
    /// that accepted orders and stored orders are the same set (`./dev chaos`).
    #[arg(long)]
    pub retry_unknown: bool,
    #[arg(long, default_value = "target/loadgen")]
    pub out_dir: PathBuf,
}

/// The arrival rate at `t` seconds: linear ramp, then hold.
pub fn rate_at(c: &FlashSaleConfig, t: f64) -> f64 {
    let ramp = c.ramp_secs.max(1) as f64;
    if t < ramp {
        c.start_rate as f64 + (c.peak_rate as f64 - c.start_rate as f64) * t / ramp
    } else {
        c.peak_rate as f64
    }
}

/// Distinct shoppers the load comes from.
const SHOPPERS: u64 = 1000;

/// An answer that does not say whether the order was taken.
struct Unknown(String, Value);

#[derive(Default)]
struct Outcomes {
    by_status: BTreeMap<String, u64>,
    /// Idempotency key -> order ids answered for it.
    accepted: HashMap<String, HashSet<String>>,
    hist: Option<Histogram<u64>>,
}

pub async fn run(c: FlashSaleConfig) -> anyhow::Result<()> {
    let http = c.credentials.client(
        "loadgen",
        reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(256),
    )?;
    let cmd = c.command_url.trim_end_matches('/').to_string();
    crate::demo::wait_ready(&http, &cmd).await?;
    crate::demo::wait_ready(&http, c.query_url.trim_end_matches('/')).await?;
    let run = format!("{:X}", chrono::Utc::now().timestamp_millis() % 0x1000_0000);
    let hot = format!("HOT{run}");
    let background: Vec<String> = (0..c.background_skus.max(1)).map(|i| format!("BG{run}-{i}")).collect();
    for (sku, stock) in
        std::iter::once((hot.clone(), c.hot_stock)).chain(background.iter().map(|s| (s.clone(), 1_000_000)))
    {
        let r = http
            .post(format!("{cmd}/v1/catalog/items"))
            .json(&json!({"sku": sku, "name": sku, "category": "flash", "price": {"minor": 1999, "currency": "EUR"}, "initial_stock": stock}))
            .send()
            .await?;
        if r.status().as_u16() != 201 {
            bail!("seeding {sku}: {}", r.status());
        }
    }
    let total_secs = (c.ramp_secs + c.hold_secs) as f64;
    println!(
        "== flash sale {run}: {} -> {} orders/s over {} s, hold {} s; hot SKU {hot} with {} units",
        c.start_rate, c.peak_rate, c.ramp_secs, c.hold_secs, c.hot_stock
    );
    let outcomes = Arc::new(Mutex::new(Outcomes {
        hist: Histogram::new_with_bounds(1, 120_000_000, 3).ok(),
        ..Outcomes::default()
    }));
    // Shoppers sign in as themselves (rate limits are per shopper); without the local secret
    // every request carries the tool's own token.
    let shopper_tokens: Arc<Vec<Option<String>>> = Arc::new(
        (0..SHOPPERS)
            .map(|i| {
                c.credentials
                    .issue(&format!("shopper-{i}"), surge_runtime::Role::Customer)
                    .ok()
            })
            .collect(),
    );
    let mut rng = rand::rngs::SmallRng::seed_from_u64(42);
    let started = Instant::now();
    let (mut t, mut sent) = (0.0f64, 0u64);
    let mut tasks = Vec::new();
    while t < total_secs && sent < c.max_requests {
        let due = started + Duration::from_secs_f64(t);
        tokio::time::sleep_until(due.into()).await;
        let shopper = sent;
        let sku = if rng.gen_bool(0.7) {
            hot.clone()
        } else {
            background[rng.gen_range(0..background.len())].clone()
        };
        let key = format!("fs-{run}-{shopper}");
        let body =
            json!({"customer_id": format!("shopper-{}", shopper % SHOPPERS), "lines": [{"sku": sku, "quantity": 1}]});
        let token = shopper_tokens[(shopper % SHOPPERS) as usize].clone();
        let retry = c.retry_unknown;
        // One in twenty clients retries at once with the same key.
        let copies = if rng.gen_ratio(1, 20) { 2 } else { 1 };
        for _ in 0..copies {
            let (http, url, key, body, outcomes, token) = (
                http.clone(),
                format!("{cmd}/v1/orders"),
                key.clone(),
                body.clone(),
                outcomes.clone(),
                token.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let send = || async {
                    let mut req = http.post(&url).header("idempotency-key", &key).json(&body);
                    if let Some(t) = &token {
                        req = req.bearer_auth(t);
                    }
                    match req.send().await {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let answer = r.json::<Value>().await.unwrap_or(Value::Null);
                            if status == 503 && retry {
                                return Err(Unknown(status.to_string(), answer));
                            }
                            Ok((status.to_string(), answer))
                        }
                        Err(_) => Err(Unknown("transport".to_string(), Value::Null)),
                    }
                };
                let policy = ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(100))
                    .with_max_delay(Duration::from_secs(2))
                    .with_max_times(if retry { 10 } else { 0 })
                    .with_jitter();
                let (status, answer) = send.retry(policy).await.unwrap_or_else(|Unknown(s, a)| (s, a));
                let latency = due.elapsed().as_micros().max(1) as u64;
                let mut o = outcomes.lock().expect("outcomes lock");
                if let Some(h) = o.hist.as_mut() {
                    let _ = h.record(latency);
                }
                let kind = if status == "202" {
                    let id = answer["order_id"].as_str().unwrap_or_default().to_string();
                    o.accepted.entry(key).or_default().insert(id);
                    "202".to_string()
                } else {
                    format!(
                        "{status} {}",
                        answer["type"]
                            .as_str()
                            .and_then(|t| t.rsplit('/').next())
                            .unwrap_or("-")
                    )
                };
                *o.by_status.entry(kind).or_default() += 1;
            }));
            sent += 1;
        }
        t += 1.0 / rate_at(&c, t).max(1.0);
    }
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let o = Arc::try_unwrap(outcomes)
        .ok()
        .and_then(|m| m.into_inner().ok())
        .unwrap_or_default();
    let hist = o.hist.clone().unwrap_or_else(|| Histogram::new(3).expect("histogram"));
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "   sent {sent} requests in {elapsed:.1} s ({:.0}/s)",
        sent as f64 / elapsed
    );
    for (kind, n) in &o.by_status {
        println!("   {n:>7} answered {kind}");
    }
    println!(
        "   latency from due time: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        hist.max() as f64 / 1000.0
    );

    let audit = audit(&c, &run, &hot, &o.accepted).await?;
    println!("== audit");
    for (check, ok, detail) in &audit {
        println!("   [{}] {check}: {detail}", if *ok { "ok" } else { "FAILED" });
    }
    let dir = c.out_dir.join(format!("flash-sale-{run}"));
    std::fs::create_dir_all(&dir)?;
    let report = json!({
        "scenario": "flash-sale", "run": run, "sent": sent, "seconds": elapsed,
        "rates": {"start": c.start_rate, "peak": c.peak_rate, "ramp_secs": c.ramp_secs, "hold_secs": c.hold_secs},
        "answers": o.by_status,
        "latency_ms": {"p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "p999": ms(0.999), "max": hist.max() as f64 / 1000.0},
        "audit": audit.iter().map(|(c, ok, d)| json!({"check": c, "ok": ok, "detail": d})).collect::<Vec<_>>(),
    });
    std::fs::write(dir.join("report.json"), serde_json::to_vec_pretty(&report)?)?;
    println!("report: {}", dir.join("report.json").display());
    if audit.iter().any(|(_, ok, _)| !ok) {
        bail!("the audit failed");
    }
    Ok(())
}

type Check = (&'static str, bool, String);

async fn audit(
    c: &FlashSaleConfig,
    run: &str,
    hot: &str,
    accepted: &HashMap<String, HashSet<String>>,
) -> anyhow::Result<Vec<Check>> {
    let pool = surge_runtime::db::connect(&c.db).await?;
    let mut checks = Vec::new();
    let multi: Vec<&String> = accepted.keys().filter(|k| accepted[*k].len() > 1).collect();
    checks.push((
        "one order per idempotency key",
        multi.is_empty(),
        format!("{} keys answered with more than one order", multi.len()),
    ));
    let ids: HashSet<&String> = accepted.values().flatten().collect();

    // Stock never negative, at every version of every SKU of this run; nothing oversold.
    let rows: Vec<(String, String, Value)> = sqlx::query_as(
        "SELECT stream_id, event_type, payload FROM events WHERE stream_type = 'inventory' \
         AND (stream_id = $1 OR stream_id LIKE $2) ORDER BY stream_id, version",
    )
    .bind(format!("inventory-{hot}"))
    .bind(format!("inventory-BG{run}-%"))
    .fetch_all(&pool)
    .await?;
    let (mut min_available, mut available, mut stream) = (i64::MAX, 0i64, String::new());
    let mut folded: HashMap<String, i64> = HashMap::new();
    let mut hot_sold_or_held = 0i64;
    for (s, t, p) in &rows {
        if *s != stream {
            stream = s.clone();
            available = 0;
        }
        let q = p["quantity"].as_i64().unwrap_or(0);
        match t.as_str() {
            "ItemAdded" => available = p["initial_stock"].as_i64().unwrap_or(0),
            "StockRestocked" | "ReservationReleased" | "ReservationExpired" => available += q,
            "StockReserved" => {
                available -= q;
                if s.ends_with(hot) {
                    hot_sold_or_held += q;
                }
            }
            _ => {}
        }
        min_available = min_available.min(available);
        folded.insert(s.clone(), available);
    }
    checks.push((
        "stock never negative",
        min_available >= 0,
        format!("lowest available at any version: {min_available}"),
    ));
    let oversold = (hot_sold_or_held - c.hot_stock).max(0);
    checks.push((
        "hot SKU not oversold",
        oversold == 0,
        format!(
            "{hot_sold_or_held} units reserved of {}: oversold {oversold}",
            c.hot_stock
        ),
    ));

    // Every accepted order once in the store, and once in the view (after it catches up).
    let stored: Vec<String> = sqlx::query_scalar(
        "SELECT payload->>'order_id' FROM events WHERE event_type = 'OrderPlaced' AND payload->>'customer_id' LIKE 'shopper-%' \
         AND payload->'lines'->0->>'sku' IN (SELECT substr(stream_id, 11) FROM events WHERE event_type = 'ItemAdded' \
         AND (stream_id = $1 OR stream_id LIKE $2))",
    )
    .bind(format!("inventory-{hot}"))
    .bind(format!("inventory-BG{run}-%"))
    .fetch_all(&pool)
    .await?;
    let stored_set: HashSet<&String> = stored.iter().collect();
    let lost = ids.difference(&stored_set).count();
    let duplicated = stored.len() - stored_set.len() + multi.len();
    checks.push((
        "accepted orders = orders in the event store",
        duplicated == 0 && stored_set == ids,
        format!(
            "{} accepted, {} stored ({} distinct): lost {lost}, duplicated {duplicated}, stored but never answered {}",
            ids.len(),
            stored.len(),
            stored_set.len(),
            stored_set.difference(&ids).count()
        ),
    ));
    let id_list: Vec<uuid::Uuid> = ids.iter().filter_map(|i| i.parse().ok()).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut in_view = 0i64;
    while Instant::now() < deadline {
        in_view = sqlx::query_scalar("SELECT count(*) FROM orders WHERE order_id = ANY($1)")
            .bind(&id_list)
            .fetch_one(&pool)
            .await?;
        if in_view as usize == id_list.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    checks.push((
        "accepted orders = rows in the orders view",
        in_view as usize == id_list.len(),
        format!("{in_view} of {} in the view", id_list.len()),
    ));

    // The views equal the fold of the event store: every stream of the run is in its view at
    // its last version, and each SKU's available stock is the folded one.
    let order_streams: Vec<String> = stored_set.iter().map(|id| format!("order-{id}")).collect();
    let mut behind = (0i64, 0i64, 0usize);
    while Instant::now() < deadline + Duration::from_secs(30) {
        let orders_behind: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT stream_id, max(version) AS v FROM events WHERE stream_id = ANY($1) \
             GROUP BY stream_id) e LEFT JOIN orders o ON 'order-' || o.order_id::text = e.stream_id \
             WHERE o.version IS DISTINCT FROM e.v",
        )
        .bind(&order_streams)
        .fetch_one(&pool)
        .await?;
        let items: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT e.stream_id, COALESCE(c.available, -1), (e.v - COALESCE(c.version, 0)) FROM \
             (SELECT stream_id, max(version) AS v FROM events WHERE stream_id = ANY($1) GROUP BY stream_id) e \
             LEFT JOIN catalog_items c ON 'inventory-' || c.sku = e.stream_id",
        )
        .bind(folded.keys().cloned().collect::<Vec<_>>())
        .fetch_all(&pool)
        .await?;
        let items_behind = items.iter().filter(|(_, _, lag)| *lag != 0).count() as i64;
        let wrong_stock = items
            .iter()
            .filter(|(s, a, _)| folded.get(s).is_some_and(|f| f != a))
            .count();
        behind = (orders_behind, items_behind, wrong_stock);
        if behind == (0, 0, 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    checks.push((
        "views = fold of the event store",
        behind == (0, 0, 0),
        format!(
            "orders behind the store {}, catalog items behind {}, items whose stock differs from the fold {}",
            behind.0, behind.1, behind.2
        ),
    ));
    Ok(checks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        c: FlashSaleConfig,
    }

    #[test]
    fn the_rate_ramps_then_holds() {
        let c = Wrap::parse_from(["x", "--start-rate", "50", "--peak-rate", "1000", "--ramp-secs", "10"]).c;
        assert_eq!(rate_at(&c, 0.0), 50.0);
        assert_eq!(rate_at(&c, 5.0), 525.0);
        assert_eq!(rate_at(&c, 10.0), 1000.0);
        assert_eq!(rate_at(&c, 30.0), 1000.0);
    }
}
