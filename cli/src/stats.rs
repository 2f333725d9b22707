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
pub use surge_store::log::WindowStats as Stats;

pub async fn compute(config: &StatsConfig) -> anyhow::Result<Stats> {
    let pool = surge_runtime::db::connect(&config.db).await?;
    let to = config.to_time.unwrap_or_else(Utc::now);
    let from = config.from_time.unwrap_or(to - chrono::Duration::hours(1));
    Ok(surge_store::log::window_stats(&pool, from, to, config.top).await?)
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
