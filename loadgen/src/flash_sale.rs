//! `surge-loadgen flash-sale`: an open-loop flash sale against a running command API, then an
//! audit of what the system did with it.
//!
//! Arrivals ramp from `--start-rate` to `--peak-rate` orders/s, then hold ([`RateArgs`]).
//! 70 % of the orders go to one hot SKU with little stock, the rest to background SKUs; one
//! client in twenty sends its request twice with the same idempotency key, as retrying
//! clients do. The audit (stock never negative at any version, nothing oversold, every
//! accepted order exactly once in the store and in the views, one order per idempotency key,
//! views = fold of the store) fails the run if any check fails.
//!
//! [`measure`] is the run as a library call: it returns the run's figures
//! ([`FlashSaleFigures`]: accepted orders per second and their latency, event-to-view latency,
//! memory and CPU per process, the audit's verdict) for tools that run flash sales in turn.

use super::driver::{histogram, open_loop, Quantiles, RateArgs};
use super::report::RunReport;
use super::scrape::{Gained, Scrape};
use super::{Shop, Target};
use clap::Args;
use futures::FutureExt;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

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
    /// The relay's and the projector's metrics (where the event-to-view time goes); a run
    /// without them has no [`Stages`].
    #[arg(long, default_value = "http://127.0.0.1:9101")]
    pub relay_metrics: String,
    #[arg(long, default_value = "http://127.0.0.1:9102")]
    pub projector_metrics: String,
}

/// Where the event-to-view time went, from the relay's and the projector's own metrics over
/// the run (means; the orders view's projector).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Stages {
    /// The relay's rounds that published (read a batch of the outbox, one Kafka transaction,
    /// delete the batch): how many, their mean time and events.
    pub relay_rounds: f64,
    pub relay_round_ms: f64,
    pub relay_events_per_round: f64,
    /// Mean ms of each phase of a round: read the batch, send it (until every event is
    /// acknowledged), commit the Kafka transaction, delete the batch (`None`: a relay without
    /// phase timings).
    #[serde(default)]
    pub relay_phase_ms: Option<[f64; 4]>,
    /// The orders projector's batches (from the batch in hand to its views' commit).
    pub projector_batches: f64,
    pub projector_batch_ms: f64,
    pub projector_events_per_batch: f64,
    /// The projector's own measure: from the event's `occurred_at` to its batch's commit.
    pub projector_event_to_view_ms: f64,
}

impl Stages {
    fn between(relay: (&Scrape, &Scrape), projector: (&Scrape, &Scrape)) -> Option<Stages> {
        let orders = ["projection=\"orders\""];
        let round = Gained::of(relay.0, relay.1, "surge_relay_round_seconds", &[])?;
        let published = relay.1.sum("surge_relay_published_total", &[])?
            - relay.0.sum("surge_relay_published_total", &[]).unwrap_or(0.0);
        let batch = Gained::of(projector.0, projector.1, "surge_projection_batch_seconds", &orders)?;
        let size = Gained::of(projector.0, projector.1, "surge_projection_batch_size", &orders)?;
        let e2v = Gained::of(projector.0, projector.1, "surge_event_to_view_seconds", &orders)?;
        let phase = |p: &str| {
            let label = format!("phase=\"{p}\"");
            Gained::of(relay.0, relay.1, "surge_relay_phase_seconds", &[&label]).map(|g| g.mean() * 1000.0)
        };
        let relay_phase_ms = (|| Some([phase("read")?, phase("send")?, phase("commit")?, phase("delete")?]))();
        Some(Stages {
            relay_rounds: round.count,
            relay_round_ms: round.mean() * 1000.0,
            relay_events_per_round: published / round.count,
            relay_phase_ms,
            projector_batches: batch.count,
            projector_batch_ms: batch.mean() * 1000.0,
            projector_events_per_batch: size.mean(),
            projector_event_to_view_ms: e2v.mean() * 1000.0,
        })
    }
}

/// What one flash sale did, in figures (latencies in ms, memory in KiB).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlashSaleFigures {
    pub run: String,
    /// Where its `report.json` and `report.html` are.
    pub report_dir: PathBuf,
    /// Seconds of load (from the first arrival to the last answer).
    pub seconds: f64,
    pub arrivals: u64,
    /// Orders accepted: distinct order ids answered 202 (a request repeated with the same
    /// idempotency key is answered 202 again, for the same order).
    pub accepted: u64,
    pub accepted_per_sec: f64,
    /// Latency of the accepted orders only, from each one's due time.
    pub accepted_latency_ms: Option<Quantiles>,
    /// Latency of every answered order (accepted and refused), from each one's due time.
    pub order_latency_ms: Option<Quantiles>,
    /// Store commit -> orders view row commit (`None`: not measured, see the note).
    pub event_to_view_p50_ms: Option<f64>,
    pub event_to_view_p99_ms: Option<f64>,
    pub event_to_view_max_ms: Option<f64>,
    pub event_to_view_p99_within_target: Option<bool>,
    pub event_to_view_note: Option<String>,
    /// `VmRSS` per process name when the load ended.
    pub rss_kib: BTreeMap<String, u64>,
    /// `VmHWM` (each process's peak) per process name.
    pub peak_rss_kib: BTreeMap<String, u64>,
    /// CPU seconds per 1k operations, per process name (and `machine (all)`, `other`).
    pub cpu_per_1k_ops: BTreeMap<String, f64>,
    pub server_cpu_per_1k_ops: Option<f64>,
    /// Where the event-to-view time went (`None`: the relay's or projector's metrics could
    /// not be read).
    #[serde(default)]
    pub stages: Option<Stages>,
    /// Every check of the audit passed.
    pub audit_ok: bool,
    /// The checks that failed, `name: detail`.
    pub audit_failed: Vec<String>,
}

impl FlashSaleFigures {
    /// The figures of a run's report (`accepted_latency_ms` is only in a flash sale's details).
    pub fn of(report: &RunReport, report_dir: PathBuf) -> FlashSaleFigures {
        let order = report.ops.iter().find(|o| o.op == "order");
        let accepted = report.details["accepted_orders"]
            .as_u64()
            .or_else(|| order.and_then(|o| o.answers.get("202")).copied())
            .unwrap_or(0);
        let e = report.event_to_view.as_ref();
        let q = e.and_then(|e| e.latency_ms.as_ref());
        FlashSaleFigures {
            run: report.run.clone(),
            report_dir,
            seconds: report.seconds,
            arrivals: report.arrivals,
            accepted,
            accepted_per_sec: accepted as f64 / report.seconds.max(1e-9),
            accepted_latency_ms: serde_json::from_value(report.details["accepted_latency_ms"].clone()).ok(),
            order_latency_ms: order.map(|o| o.latency_ms.clone()),
            event_to_view_p50_ms: q.map(|q| q.p50),
            event_to_view_p99_ms: q.map(|q| q.p99),
            event_to_view_max_ms: q.map(|q| q.max),
            event_to_view_p99_within_target: e.and_then(|e| e.p99_within_target),
            event_to_view_note: e.map_or(Some("not measured".to_string()), |e| e.not_measured.clone()),
            rss_kib: report.memory.iter().map(|m| (m.process.clone(), m.rss_kib)).collect(),
            peak_rss_kib: report
                .memory
                .iter()
                .map(|m| (m.process.clone(), m.peak_rss_kib))
                .collect(),
            cpu_per_1k_ops: report
                .cpu
                .iter()
                .filter_map(|p| Some((p.process.clone(), p.per_1k_ops?)))
                .collect(),
            server_cpu_per_1k_ops: report.server_cpu_per_1k_ops,
            stages: None,
            audit_ok: report.audit.iter().all(|c| c.ok),
            audit_failed: report
                .audit
                .iter()
                .filter(|c| !c.ok)
                .map(|c| format!("{}: {}", c.check, c.detail))
                .collect(),
        }
    }
}

/// `surge-loadgen flash-sale`: [`measure`], failing when the audit failed.
pub async fn run(c: FlashSaleConfig) -> anyhow::Result<()> {
    let figures = measure(c).await?;
    if !figures.audit_ok {
        anyhow::bail!(
            "the audit failed ({}; see {}/report.html)",
            figures.audit_failed.join("; "),
            figures.report_dir.display()
        );
    }
    Ok(())
}

/// One flash sale, its audit and its report; its figures, whether the audit passed or not
/// (an error is a run that could not be carried out or reported).
pub async fn measure(c: FlashSaleConfig) -> anyhow::Result<FlashSaleFigures> {
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
    let http = shop.http.clone();
    let scrape = |url: String| {
        let http = http.clone();
        async move { Scrape::of(&http, &url).await }
    };
    let before = (
        scrape(c.relay_metrics.clone()).await,
        scrape(c.projector_metrics.clone()).await,
    );
    shop.begin();
    let shop = Arc::new(shop);
    // The accepted orders' own latencies (the recorder's `order` holds refusals too).
    let accepted_latency = Arc::new(Mutex::new(histogram()));
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
                let accepted_latency = accepted_latency.clone();
                async move {
                    let answer = shop.place(due, key, i, json!([{"sku": sku, "quantity": 1}])).await;
                    if answer.status == Some(202) {
                        let micros = due.elapsed().as_micros().max(1) as u64;
                        let _ = accepted_latency.lock().expect("latency lock").record(micros);
                    }
                }
                .boxed()
            })
            .collect()
    })
    .await;
    let skus: Vec<String> = items.into_iter().map(|(s, _, _)| s).collect();
    let accepted_latency = {
        let h = accepted_latency.lock().expect("latency lock");
        (!h.is_empty()).then(|| Quantiles::of(&h))
    };
    let accepted_orders = shop.answers().0.values().flatten().collect::<HashSet<_>>().len();
    let concluded = shop
        .conclude(
            &c.rates,
            arrivals,
            &skus,
            Vec::new(),
            json!({"hot_sku": hot, "hot_stock": c.hot_stock, "background_skus": background.len(),
                   "retry_unknown": c.retry_unknown, "accepted_latency_ms": accepted_latency,
                   "accepted_orders": accepted_orders}),
        )
        .await;
    // A failed audit still leaves its report: the figures come from it either way.
    let dir = c.target.out_dir.join(format!("{}-{run}", shop.scenario));
    let report = match std::fs::read(dir.join("report.json")) {
        Ok(json) => serde_json::from_slice::<RunReport>(&json)?,
        Err(_) => {
            concluded?;
            anyhow::bail!("the run left no report in {}", dir.display());
        }
    };
    let after = (
        scrape(c.relay_metrics.clone()).await,
        scrape(c.projector_metrics.clone()).await,
    );
    let mut figures = FlashSaleFigures::of(&report, dir);
    if let (Some(r0), Some(p0), Some(r1), Some(p1)) = (before.0, before.1, after.0, after.1) {
        figures.stages = Stages::between((&r0, &r1), (&p0, &p1));
    }
    Ok(figures)
}
