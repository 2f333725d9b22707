//! `surge-loadgen flash-sale`: an open-loop flash sale against a running command API, then an
//! audit of what the system did with it.
//!
//! Arrivals ramp from `--start-rate` to `--peak-rate` orders/s, then hold ([`RateArgs`]).
//! 70 % of the orders go to one hot SKU with little stock, the rest to background SKUs; one
//! client in twenty sends its request twice with the same idempotency key, as retrying
//! clients do. The audit (stock never negative at any version, nothing oversold, every
//! accepted order exactly once in the store and in the views, one order per idempotency key,
//! views = fold of the store) fails the run if any check fails.

use super::driver::{open_loop, RateArgs};
use super::{Shop, Target};
use clap::Args;
use futures::FutureExt;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::sync::Arc;

#[derive(Debug, Clone, Args)]
pub struct FlashSaleConfig {
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub rates: RateArgs,
    /// Units of the hot SKU.
    #[arg(long, default_value_t = 500)]
    pub hot_stock: i64,
    /// Background SKUs (plenty of stock each).
    #[arg(long, default_value_t = 20)]
    pub background_skus: usize,
    /// Retry (same idempotency key, backing off, for up to ~45 s) when the answer is unknown:
    /// a transport error, a 503 (unavailable) or a 504 (outcome unknown), as a careful client
    /// does while processes restart and links break. Every order then ends accepted or refused, so the audit can demand
    /// that accepted orders and stored orders are the same set (`./dev chaos`).
    #[arg(long)]
    pub retry_unknown: bool,
}

pub async fn run(c: FlashSaleConfig) -> anyhow::Result<()> {
    let mut shop = Shop::open(&c.target, "flash-sale").await?;
    shop.retry_unknown = c.retry_unknown;
    let run = shop.run.clone();
    let hot = format!("HOT{run}");
    let background: Vec<String> = (0..c.background_skus.max(1)).map(|i| format!("BG{run}-{i}")).collect();
    let items: Vec<(String, i64, &str)> = std::iter::once((hot.clone(), c.hot_stock, "flash"))
        .chain(background.iter().map(|s| (s.clone(), 1_000_000, "flash")))
        .collect();
    super::seed_catalog(&shop.http, &shop.command_url, &items).await?;
    println!(
        "== flash sale {run}: {}; hot SKU {hot} with {} units",
        c.rates.describe("orders"),
        c.hot_stock
    );
    shop.begin();
    let shop = Arc::new(shop);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(42);
    let arrivals = open_loop(&c.rates, &shop.recorder, "flash-sale", |i, due| {
        let sku = if rng.gen_bool(0.7) {
            hot.clone()
        } else {
            background[rng.gen_range(0..background.len())].clone()
        };
        let copies = if rng.gen_ratio(1, 20) { 2 } else { 1 };
        (0..copies)
            .map(|_| {
                let (shop, sku, key) = (shop.clone(), sku.clone(), format!("fs-{run}-{i}"));
                async move {
                    shop.place(due, key, i, json!([{"sku": sku, "quantity": 1}])).await;
                }
                .boxed()
            })
            .collect()
    })
    .await;
    let skus: Vec<String> = items.into_iter().map(|(s, _, _)| s).collect();
    shop.conclude(
        &c.rates,
        arrivals,
        &skus,
        Vec::new(),
        json!({"hot_sku": hot, "hot_stock": c.hot_stock, "background_skus": background.len(),
               "retry_unknown": c.retry_unknown}),
    )
    .await?;
    Ok(())
}
