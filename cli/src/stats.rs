//! `surge stats`: quick answers from the event log itself (not the views), for analysts:
//! orders per minute, top SKUs by units sold, and how many reservations became payments.

use chrono::{DateTime, Utc};
use clap::Args;
use surge_runtime::DatabaseConfig;

#[derive(Debug, Clone, Args)]
pub struct StatsConfig {
    #[command(flatten)]
    pub db: DatabaseConfig,
    /// Events at or after this time (default: the last hour).
    #[arg(long)]
    pub from_time: Option<DateTime<Utc>>,
    /// Events before this time (default: now).
    #[arg(long)]
    pub to_time: Option<DateTime<Utc>>,
    /// Rows of the top-SKU table.
    #[arg(long, default_value_t = 10)]
    pub top: i64,
}

/// The three answers, as printed.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub orders_per_minute: Vec<(DateTime<Utc>, i64)>,
    pub top_skus: Vec<(String, i64, i64)>,
    pub reserved_orders: i64,
    pub paid_orders: i64,
    pub expired_or_released: i64,
}

pub async fn compute(config: &StatsConfig) -> anyhow::Result<Stats> {
    let pool = surge_runtime::db::connect(&config.db).await?;
    let to = config.to_time.unwrap_or_else(Utc::now);
    let from = config.from_time.unwrap_or(to - chrono::Duration::hours(1));
    let orders_per_minute = sqlx::query_as(
        "SELECT date_trunc('minute', occurred_at) AS minute, count(*) FROM events \
         WHERE event_type = 'OrderPlaced' AND occurred_at >= $1 AND occurred_at < $2 GROUP BY 1 ORDER BY 1",
    )
    .bind(from)
    .bind(to)
    .fetch_all(&pool)
    .await?;
    let top_skus = sqlx::query_as(
        "SELECT payload->>'sku' AS sku, sum((payload->>'quantity')::bigint)::bigint AS units, \
                sum((payload->>'quantity')::bigint * (payload->'unit_price'->>'minor')::bigint)::bigint AS revenue \
         FROM events WHERE event_type = 'StockCommitted' AND occurred_at >= $1 AND occurred_at < $2 \
         GROUP BY 1 ORDER BY units DESC, sku LIMIT $3",
    )
    .bind(from)
    .bind(to)
    .bind(config.top)
    .fetch_all(&pool)
    .await?;
    let (reserved_orders, paid_orders, expired_or_released): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(DISTINCT payload->>'order_id') FILTER (WHERE event_type = 'StockReserved'), \
                count(DISTINCT payload->>'order_id') FILTER (WHERE event_type = 'StockCommitted'), \
                count(DISTINCT payload->>'order_id') FILTER (WHERE event_type IN ('ReservationExpired', 'ReservationReleased')) \
         FROM events WHERE stream_type = 'inventory' AND occurred_at >= $1 AND occurred_at < $2",
    )
    .bind(from)
    .bind(to)
    .fetch_one(&pool)
    .await?;
    Ok(Stats {
        orders_per_minute,
        top_skus,
        reserved_orders,
        paid_orders,
        expired_or_released,
    })
}

pub async fn run(config: StatsConfig) -> anyhow::Result<()> {
    let s = compute(&config).await?;
    println!("orders per minute");
    for (minute, n) in &s.orders_per_minute {
        println!("  {}  {n:>8}", minute.format("%Y-%m-%d %H:%M"));
    }
    println!("\ntop SKUs by units sold");
    println!("  {:<24} {:>10} {:>14}", "sku", "units", "revenue (minor)");
    for (sku, units, revenue) in &s.top_skus {
        println!("  {sku:<24} {units:>10} {revenue:>14}");
    }
    let conversion = if s.reserved_orders > 0 {
        100.0 * s.paid_orders as f64 / s.reserved_orders as f64
    } else {
        0.0
    };
    println!(
        "\nreservations -> payments: {} orders reserved stock, {} paid ({conversion:.1} %), {} released or expired",
        s.reserved_orders, s.paid_orders, s.expired_or_released
    );
    Ok(())
}
