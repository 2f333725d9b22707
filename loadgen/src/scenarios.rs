//! The open-loop scenarios beside the flash sale: `checkout` (many SKUs), `browse` (catalog
//! reads) and `mixed` (both on one schedule, plus an analyst exporting the run's events).
//!
//! Shoppers' interest follows a Zipf distribution over the SKUs (a few popular items, a long
//! tail), for orders and reads alike. Orders have 1-3 lines of 1-2 units; an accepted order is
//! then paid (`--pay-share`), cancelled (`--cancel-share`) or left to its reservation's
//! expiry, each follow-up sent the moment the order's answer comes. Reads ask for an item by
//! SKU, or for a page of a category and then its next page (keyset cursor).

use super::audit::Check;
use super::driver::{open_loop, Answer, RateArgs};
use super::{Shop, Target};
use clap::Args;
use futures::future::BoxFuture;
use futures::FutureExt;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The catalog a run seeds and orders from.
#[derive(Debug, Clone, Args)]
pub struct CatalogArgs {
    /// SKUs seeded for the run.
    #[arg(long, default_value_t = 500)]
    pub skus: usize,
    /// Units of each SKU (the popular ones may sell out: that is part of the run).
    #[arg(long, default_value_t = 5_000)]
    pub stock: i64,
}

/// What shoppers do after an order is accepted.
#[derive(Debug, Clone, Args)]
pub struct CheckoutArgs {
    /// Share of accepted orders then paid.
    #[arg(long, default_value_t = 0.6)]
    pub pay_share: f64,
    /// Share of accepted orders then cancelled.
    #[arg(long, default_value_t = 0.1)]
    pub cancel_share: f64,
}

#[derive(Debug, Clone, Args)]
pub struct CheckoutConfig {
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub rates: RateArgs,
    #[command(flatten)]
    pub catalog: CatalogArgs,
    #[command(flatten)]
    pub checkout: CheckoutArgs,
}

#[derive(Debug, Clone, Args)]
pub struct BrowseConfig {
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub rates: RateArgs,
    #[command(flatten)]
    pub catalog: CatalogArgs,
    /// Share of reads that ask for a page of a category (the rest ask for one item).
    #[arg(long, default_value_t = 0.2)]
    pub list_share: f64,
}

#[derive(Debug, Clone, Args)]
pub struct MixedConfig {
    #[command(flatten)]
    pub target: Target,
    /// The schedule of all requests, reads and orders together.
    #[command(flatten)]
    pub rates: RateArgs,
    #[command(flatten)]
    pub catalog: CatalogArgs,
    #[command(flatten)]
    pub checkout: CheckoutArgs,
    /// Share of arrivals that are reads (the rest are orders).
    #[arg(long, default_value_t = 0.8)]
    pub read_share: f64,
    /// Share of reads that ask for a page of a category.
    #[arg(long, default_value_t = 0.2)]
    pub list_share: f64,
    /// An analyst exports the run's events (NDJSON) this often, during the load.
    #[arg(long, default_value_t = 5)]
    pub export_every_secs: u64,
}

const CATEGORIES: usize = 20;

/// The run's SKUs, seeded, and how shoppers pick among them.
struct Catalog {
    skus: Vec<String>,
    categories: Vec<String>,
    zipf: Zipf<f64>,
}

impl Catalog {
    async fn seed(shop: &Shop, prefix: &str, args: &CatalogArgs) -> anyhow::Result<Catalog> {
        let run = &shop.run;
        let n = args.skus.max(CATEGORIES);
        let skus: Vec<String> = (0..n).map(|i| format!("{prefix}{run}-{i}")).collect();
        let categories: Vec<String> = (0..CATEGORIES)
            .map(|k| format!("{prefix}{run}-cat{k}").to_lowercase())
            .collect();
        let items: Vec<(String, i64, &str)> = skus
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), args.stock, categories[i % CATEGORIES].as_str()))
            .collect();
        let token = super::seed_catalog(&shop.http, &shop.command_url, &items).await?;
        // Reads start when the query API serves the whole catalog: every SKU, since they sit
        // in different partitions that the projector follows independently.
        for sku in &skus {
            super::wait_readable(&shop.http, &format!("{}/v1/catalog/items/{sku}", shop.query_url), token).await?;
        }
        Ok(Catalog {
            skus,
            categories,
            zipf: Zipf::new(n as u64, 1.1)?,
        })
    }

    fn pick(&self, rng: &mut SmallRng) -> usize {
        (self.zipf.sample(rng) as usize).clamp(1, self.skus.len()) - 1
    }
}

/// One order's arrival: 1-3 distinct SKUs by popularity, then its follow-up if accepted.
fn checkout(
    shop: &Arc<Shop>,
    catalog: &Catalog,
    args: &CheckoutArgs,
    rng: &mut SmallRng,
    i: u64,
    due: Instant,
) -> BoxFuture<'static, ()> {
    let mut picked: Vec<usize> = Vec::new();
    for _ in 0..rng.gen_range(1..=3) {
        let k = catalog.pick(rng);
        if !picked.contains(&k) {
            picked.push(k);
        }
    }
    let lines: Vec<Value> = picked
        .iter()
        .map(|k| json!({"sku": catalog.skus[*k], "quantity": rng.gen_range(1..=2)}))
        .collect();
    let roll: f64 = rng.gen();
    let then = if roll < args.pay_share {
        Some("pay")
    } else if roll < args.pay_share + args.cancel_share {
        Some("cancel")
    } else {
        None
    };
    let (shop, key) = (shop.clone(), format!("co-{}-{i}", shop.run));
    async move {
        let answer = shop.place(due, key, i, Value::Array(lines)).await;
        if let (Some(op), Some(202)) = (then, answer.status) {
            if let Some(id) = answer.body["order_id"].as_str() {
                shop.follow_up(op, id, i).await;
            }
        }
    }
    .boxed()
}

/// One read's arrival: an item by popularity, or a category's first page then its next.
fn read(
    shop: &Arc<Shop>,
    catalog: &Catalog,
    list_share: f64,
    rng: &mut SmallRng,
    due: Instant,
) -> BoxFuture<'static, ()> {
    let shop = shop.clone();
    if rng.gen_bool(list_share.clamp(0.0, 1.0)) {
        let category = catalog.categories[rng.gen_range(0..catalog.categories.len())].clone();
        async move {
            let path = format!("/v1/catalog/items?category={category}&limit=20");
            let first = shop
                .recorder
                .time(
                    "page",
                    due,
                    super::driver::send(shop.http.get(format!("{}{path}", shop.query_url)), true),
                )
                .await;
            if let Some(cursor) = first.body["next_cursor"].as_str() {
                shop.read("next-page", Instant::now(), &format!("{path}&cursor={cursor}"))
                    .await;
            }
        }
        .boxed()
    } else {
        let sku = catalog.skus[catalog.pick(rng)].clone();
        async move {
            shop.read("item", due, &format!("/v1/catalog/items/{sku}")).await;
        }
        .boxed()
    }
}

/// Reads must all be answered: a refusal (429) is counted, a 5xx or no answer fails the run.
fn reads_answered(shop: &Shop) -> Check {
    let (ops, _) = shop.recorder.summary();
    let (mut reads, mut faults) = (0u64, 0u64);
    for o in ops
        .iter()
        .filter(|o| matches!(o.op.as_str(), "item" | "page" | "next-page"))
    {
        reads += o.sent;
        faults += o
            .answers
            .iter()
            .filter(|(k, _)| *k == "transport" || k.starts_with('5'))
            .map(|(_, n)| n)
            .sum::<u64>();
    }
    Check {
        check: "every read answered without a server fault".into(),
        ok: faults == 0,
        detail: format!("{reads} reads, {faults} answered 5xx or not at all"),
    }
}

pub async fn checkout_run(c: CheckoutConfig) -> anyhow::Result<()> {
    let mut shop = Shop::open(&c.target, "checkout").await?;
    let catalog = Catalog::seed(&shop, "CO", &c.catalog).await?;
    println!(
        "== checkout {}: {}; {} SKUs of {} units",
        shop.run,
        c.rates.describe("orders"),
        catalog.skus.len(),
        c.catalog.stock
    );
    shop.begin();
    let shop = Arc::new(shop);
    let mut rng = SmallRng::seed_from_u64(7);
    let arrivals = open_loop(&c.rates, &shop.recorder, "checkout", |i, due| {
        vec![checkout(&shop, &catalog, &c.checkout, &mut rng, i, due)]
    })
    .await;
    shop.conclude(
        &c.rates,
        arrivals,
        &catalog.skus,
        Vec::new(),
        json!({"skus": catalog.skus.len(), "stock": c.catalog.stock, "pay_share": c.checkout.pay_share,
               "cancel_share": c.checkout.cancel_share}),
    )
    .await?;
    Ok(())
}

pub async fn browse_run(c: BrowseConfig) -> anyhow::Result<()> {
    let mut shop = Shop::open(&c.target, "browse").await?;
    let catalog = Catalog::seed(&shop, "BR", &c.catalog).await?;
    println!(
        "== browse {}: {}; {} SKUs, Zipf(1.1)",
        shop.run,
        c.rates.describe("reads"),
        catalog.skus.len()
    );
    shop.begin();
    let shop = Arc::new(shop);
    let mut rng = SmallRng::seed_from_u64(11);
    let arrivals = open_loop(&c.rates, &shop.recorder, "browse", |_, due| {
        vec![read(&shop, &catalog, c.list_share, &mut rng, due)]
    })
    .await;
    let answered = reads_answered(&shop);
    shop.conclude(
        &c.rates,
        arrivals,
        &catalog.skus,
        vec![answered],
        json!({"skus": catalog.skus.len(), "list_share": c.list_share, "zipf_exponent": 1.1}),
    )
    .await?;
    Ok(())
}

pub async fn mixed_run(c: MixedConfig) -> anyhow::Result<()> {
    let mut shop = Shop::open(&c.target, "mixed").await?;
    let catalog = Catalog::seed(&shop, "MX", &c.catalog).await?;
    println!(
        "== mixed {}: {} ({:.0} % reads); {} SKUs; an export every {} s",
        shop.run,
        c.rates.describe("requests"),
        c.read_share * 100.0,
        catalog.skus.len(),
        c.export_every_secs
    );
    let dir = c.target.out_dir.join(format!("mixed-{}", shop.run));
    std::fs::create_dir_all(&dir)?;
    shop.begin();
    let shop = Arc::new(shop);
    let exports = Arc::new(Mutex::new(Vec::<Value>::new()));
    let analyst = tokio::spawn(analyst(shop.clone(), dir, c.export_every_secs.max(1), exports.clone()));
    let mut rng = SmallRng::seed_from_u64(13);
    let arrivals = open_loop(&c.rates, &shop.recorder, "mixed", |i, due| {
        if rng.gen_bool(c.read_share.clamp(0.0, 1.0)) {
            vec![read(&shop, &catalog, c.list_share, &mut rng, due)]
        } else {
            vec![checkout(&shop, &catalog, &c.checkout, &mut rng, i, due)]
        }
    })
    .await;
    analyst.abort();
    let _ = analyst.await;
    let exports = exports.lock().expect("exports lock").clone();
    let failed_exports = exports.iter().filter(|e| e["error"].is_string()).count();
    let checks = vec![
        reads_answered(&shop),
        Check {
            check: "the analyst's exports succeeded".into(),
            ok: !exports.is_empty() && failed_exports == 0,
            detail: format!("{} exports during the load, {failed_exports} failed", exports.len()),
        },
    ];
    shop.conclude(
        &c.rates,
        arrivals,
        &catalog.skus,
        checks,
        json!({"skus": catalog.skus.len(), "stock": c.catalog.stock, "read_share": c.read_share,
               "list_share": c.list_share, "pay_share": c.checkout.pay_share,
               "cancel_share": c.checkout.cancel_share, "exports": exports}),
    )
    .await?;
    Ok(())
}

/// Every `every` seconds, exports all events since the run began to a new NDJSON file in
/// `dir`, timed as the operation `export`, until aborted.
async fn analyst(shop: Arc<Shop>, dir: std::path::PathBuf, every: u64, exports: Arc<Mutex<Vec<Value>>>) {
    let mut tick = tokio::time::interval_at(
        (Instant::now() + Duration::from_secs(every)).into(),
        Duration::from_secs(every),
    );
    for k in 1u64.. {
        tick.tick().await;
        let out = dir.join(format!("export-{k}.ndjson"));
        let config = surge_cli::export::ExportConfig {
            db: shop.target.db.clone(),
            format: surge_cli::export::Format::Ndjson,
            out: Some(out.clone()),
            stream_id: None,
            stream_type: None,
            event_types: Vec::new(),
            from_time: Some(shop.since),
            to_time: None,
            from_position: None,
            to_position: None,
            visible_now: false,
        };
        let started = Instant::now();
        let result = surge_cli::export::export(&config).await;
        let answer = Answer {
            status: Some(if result.is_ok() { 200 } else { 500 }),
            body: Value::Null,
        };
        shop.recorder.time("export", started, async { answer }).await;
        let entry = match result {
            Ok(events) => json!({"file": out, "events": events, "seconds": started.elapsed().as_secs_f64()}),
            Err(e) => json!({"file": out, "error": format!("{e:#}")}),
        };
        exports.lock().expect("exports lock").push(entry);
    }
}
