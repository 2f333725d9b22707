//! `surge loadgen knee` and `surge loadgen table`: the side-by-side benchmark of `./dev bench`.
//!
//! `knee` measures one target that speaks Surge's command contract (Surge itself, or a peer of
//! `bench/peers/`): open-loop steps of rising arrival rate (90 % of orders on one hot SKU, the
//! rest on ten others), each answered order timed from when it was due. The knee is the
//! highest step that still accepted at least 95 % of its orders with p99 under 500 ms; then,
//! after the last step's backlog drained, a run at 80 % of the knee's rate gives its p99. An oversell probe sends 400 concurrent orders
//! for 100 units. CPU is the machine's busy time during the steps minus this process's own,
//! per 1,000 accepted orders (the target's whole pipeline: its processes and Postgres).
//! Each run appends one JSON line to `--results`; `table` prints them with ratios to the best
//! peer.

use anyhow::{bail, Context};
use clap::Args;
use hdrhistogram::Histogram;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Args)]
pub struct KneeConfig {
    /// Name of the target in the table.
    #[arg(long)]
    pub name: String,
    /// Base URL of the target's command API.
    #[arg(long)]
    pub url: String,
    /// Arrival rates to step through (orders/s).
    #[arg(long, value_delimiter = ',', default_value = "100,200,400,800,1600,3200")]
    pub steps: Vec<u64>,
    /// Seconds per step.
    #[arg(long, default_value_t = 6)]
    pub step_secs: u64,
    /// JSON lines file the result is appended to.
    #[arg(long)]
    pub results: PathBuf,
    #[command(flatten)]
    pub credentials: crate::credentials::ClientAuth,
}

#[derive(Debug, Clone, Args)]
pub struct TableConfig {
    /// JSON lines written by `surge loadgen knee`.
    #[arg(long)]
    pub results: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    pub rate: u64,
    pub sent: u64,
    pub accepted: u64,
    pub accepted_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub answers: BTreeMap<String, u64>,
    pub cpu_secs: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KneeResult {
    pub name: String,
    pub steps: Vec<Step>,
    pub knee_rate: u64,
    pub knee_accepted_per_sec: f64,
    /// None when no step passed.
    pub p99_at_80_ms: Option<f64>,
    pub oversold: i64,
    pub oversell_probe: BTreeMap<String, u64>,
    pub cpu_secs_per_1k_orders: Option<f64>,
}

/// Busy CPU seconds of the whole machine (user + nice + system + irq + softirq + steal).
fn machine_busy_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else { return 0.0 };
    let v: Vec<f64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let busy = [0usize, 1, 2, 5, 6, 7].iter().filter_map(|i| v.get(*i)).sum::<f64>();
    busy / 100.0
}

/// CPU seconds of this process.
fn own_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

async fn add_item(http: &reqwest::Client, url: &str, sku: &str, stock: i64) -> anyhow::Result<()> {
    let r = http
        .post(format!("{url}/v1/catalog/items"))
        .json(&json!({"sku": sku, "name": sku, "category": "bench", "price": {"minor": 1999, "currency": "EUR"}, "initial_stock": stock}))
        .send()
        .await
        .with_context(|| format!("seeding {sku} on {url}"))?;
    if r.status().as_u16() != 201 {
        bail!("seeding {sku} on {url}: {}", r.status());
    }
    Ok(())
}

/// One open-loop step at `rate` orders/s for `secs`.
async fn step(http: &reqwest::Client, url: &str, skus: &[String], rate: u64, secs: u64, tag: &str) -> Step {
    let hist = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("bounds"),
    ));
    let answers = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let total = rate * secs;
    let started = Instant::now();
    let (cpu0, own0) = (machine_busy_secs(), own_secs());
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
        tokio::time::sleep_until(due.into()).await;
        let sku = if i % 10 == 0 {
            &skus[1 + (i as usize / 10) % (skus.len() - 1)]
        } else {
            &skus[0]
        };
        let (http, hist, answers) = (http.clone(), hist.clone(), answers.clone());
        let req = http
            .post(format!("{url}/v1/orders"))
            .header("idempotency-key", format!("{tag}-{rate}-{i}"))
            .json(&json!({"customer_id": format!("b{}", i % 1000), "lines": [{"sku": sku, "quantity": 1}]}));
        tasks.push(tokio::spawn(async move {
            let kind = match req.send().await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let body: serde_json::Value = r.json().await.unwrap_or_default();
                    let slug = body["type"].as_str().and_then(|t| t.rsplit('/').next()).unwrap_or("-");
                    if status == 202 {
                        "202".to_string()
                    } else {
                        format!("{status} {slug}")
                    }
                }
                Err(_) => "transport".to_string(),
            };
            let _ = hist
                .lock()
                .expect("lock")
                .record(due.elapsed().as_micros().max(1) as u64);
            *answers.lock().expect("lock").entry(kind).or_default() += 1;
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let cpu_secs = (machine_busy_secs() - cpu0 - (own_secs() - own0)).max(0.0);
    let answers = answers.lock().expect("lock").clone();
    let accepted = answers.get("202").copied().unwrap_or(0);
    let h = hist.lock().expect("lock");
    Step {
        rate,
        sent: total,
        accepted,
        accepted_per_sec: accepted as f64 / started.elapsed().as_secs_f64(),
        p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
        answers,
        cpu_secs,
    }
}

fn passes(s: &Step) -> bool {
    s.accepted as f64 >= 0.95 * s.sent as f64 && s.p99_ms < 500.0
}

pub async fn knee(c: KneeConfig) -> anyhow::Result<()> {
    let url = c.url.trim_end_matches('/').to_string();
    let http = c.credentials.client(
        "bench",
        reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(512),
    )?;
    crate::demo::wait_ready(&http, &url).await?;
    let run = format!("{:X}", chrono::Utc::now().timestamp_millis() % 0x1000_0000);
    let skus: Vec<String> = (0..11).map(|i| format!("K{run}-{i}")).collect();
    for sku in &skus {
        add_item(&http, &url, sku, 1_000_000_000).await?;
    }
    println!("== {}: steps {:?} orders/s, {} s each", c.name, c.steps, c.step_secs);
    // Warm-up (connections, pools, caches), not recorded.
    let warm = c.steps.first().copied().unwrap_or(100);
    step(&http, &url, &skus, warm, 2, &format!("{run}-warm")).await;
    let mut steps = Vec::new();
    for &rate in &c.steps {
        let s = step(&http, &url, &skus, rate, c.step_secs, &run).await;
        println!(
            "   {:>5}/s: accepted {:>7.1}/s  p50 {:>8.1} ms  p99 {:>8.1} ms  {:?}",
            rate, s.accepted_per_sec, s.p50_ms, s.p99_ms, s.answers
        );
        let ok = passes(&s);
        steps.push(s);
        if !ok {
            break;
        }
    }
    let best = steps.iter().rev().find(|s| passes(s)).cloned();
    let (knee_rate, knee_accepted) = best.as_ref().map_or((0, 0.0), |s| (s.rate, s.accepted_per_sec));
    let at80 = if knee_rate > 0 {
        // Let the backlog of an overloaded last step drain first.
        tokio::time::sleep(Duration::from_secs(8)).await;
        let rate = (knee_rate * 8 / 10).max(1);
        let s = step(&http, &url, &skus, rate, c.step_secs, &format!("{run}-80")).await;
        println!("   80 % of the knee ({rate}/s): p99 {:.1} ms", s.p99_ms);
        Some(s.p99_ms)
    } else {
        None
    };
    // Oversell probe: 400 orders at once for 100 units of a fresh SKU.
    let probe_sku = format!("P{run}");
    if let Err(e) = add_item(&http, &url, &probe_sku, 100).await {
        // A target that cannot even take the item is reported, not hidden.
        println!("   oversell probe not run: {e:#}");
    }
    let answers = futures::future::join_all((0..400).map(|i| {
        let req = http
            .post(format!("{url}/v1/orders"))
            .header("idempotency-key", format!("{run}-probe-{i}"))
            .json(&json!({"customer_id": format!("p{i}"), "lines": [{"sku": probe_sku, "quantity": 1}]}));
        async move {
            match req.send().await {
                Ok(r) => r.status().as_u16().to_string(),
                Err(_) => "transport".to_string(),
            }
        }
    }))
    .await;
    let mut probe = BTreeMap::new();
    for a in answers {
        *probe.entry(a).or_insert(0u64) += 1;
    }
    let oversold = probe.get("202").copied().unwrap_or(0) as i64 - 100;
    let (cpu, accepted): (f64, u64) = steps
        .iter()
        .fold((0.0, 0), |(c, a), s| (c + s.cpu_secs, a + s.accepted));
    let result = KneeResult {
        name: c.name.clone(),
        knee_rate,
        knee_accepted_per_sec: knee_accepted,
        p99_at_80_ms: at80,
        oversold: oversold.max(0),
        oversell_probe: probe,
        cpu_secs_per_1k_orders: (accepted > 0).then(|| cpu / accepted as f64 * 1000.0),
        steps,
    };
    println!(
        "   knee {}/s ({:.0} accepted/s), p99 at 80 % {}, oversold {}, probe {:?}, CPU {} s per 1k orders",
        result.knee_rate,
        result.knee_accepted_per_sec,
        ms(result.p99_at_80_ms),
        result.oversold,
        result.oversell_probe,
        secs(result.cpu_secs_per_1k_orders)
    );
    if let Some(dir) = c.results.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut line = serde_json::to_string(&result)?;
    line.push('\n');
    use std::io::Write;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&c.results)?
        .write_all(line.as_bytes())?;
    Ok(())
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "no step passed".to_string(), |v| format!("{v:.1} ms"))
}

fn secs(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"))
}

const COLORS: [RGBColor; 4] = [
    RGBColor(11, 107, 203),
    RGBColor(179, 38, 30),
    RGBColor(26, 127, 55),
    RGBColor(130, 80, 223),
];

/// One SVG chart of a per-step figure against the offered rate, a line per target.
fn chart(
    results: &[KneeResult],
    title: &str,
    y_desc: &str,
    y: impl Fn(&Step) -> f64,
    log: bool,
) -> anyhow::Result<String> {
    let max_x = results
        .iter()
        .flat_map(|r| &r.steps)
        .map(|s| s.rate as f64)
        .fold(1.0, f64::max);
    let max_y = results.iter().flat_map(|r| &r.steps).map(&y).fold(1.0, f64::max) * 1.1;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 360)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut builder = ChartBuilder::on(&root);
        builder
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64);
        let series = |r: &KneeResult| {
            r.steps
                .iter()
                .map(|s| (s.rate as f64, y(s).max(0.1)))
                .collect::<Vec<_>>()
        };
        macro_rules! draw {
            ($chart:expr) => {{
                let mut chart = $chart;
                chart
                    .configure_mesh()
                    .x_desc("offered orders/s")
                    .y_desc(y_desc)
                    .draw()?;
                for (i, r) in results.iter().enumerate() {
                    let color = COLORS[i % COLORS.len()];
                    chart
                        .draw_series(LineSeries::new(series(r), color.stroke_width(2)))?
                        .label(r.name.clone())
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
                    chart.draw_series(series(r).into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
                }
                chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .draw()?;
            }};
        }
        if log {
            draw!(builder.build_cartesian_2d(0f64..max_x * 1.05, (0.1f64..max_y).log_scale())?);
        } else {
            draw!(builder.build_cartesian_2d(0f64..max_x * 1.05, 0f64..max_y)?);
        }
        root.present()?;
    }
    Ok(svg)
}

/// `report.html` beside the results: the table and the plots, self-contained.
fn html_report(results: &[KneeResult], table: &str, path: &std::path::Path) -> anyhow::Result<()> {
    let accepted = chart(
        results,
        "Accepted orders/s by offered rate",
        "accepted orders/s",
        |s| s.accepted_per_sec,
        false,
    )?;
    let p99 = chart(
        results,
        "p99 latency from due time (log scale)",
        "p99 ms",
        |s| s.p99_ms,
        true,
    )?;
    let rows: String = table
        .lines()
        .filter(|l| l.starts_with('|') && !l.starts_with("|---"))
        .enumerate()
        .map(|(i, l)| {
            let tag = if i == 0 { "th" } else { "td" };
            let cells: String = l
                .trim_matches('|')
                .split('|')
                .map(|c| format!("<{tag}>{}</{tag}>", c.trim()))
                .collect();
            format!("<tr>{cells}</tr>")
        })
        .collect();
    let html = format!(
        "<!doctype html><html lang=\"en\"><meta charset=\"utf-8\"><title>Surge bench</title>\
         <style>body{{font:15px system-ui,sans-serif;margin:2rem}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3rem .6rem}}</style>\
         <h1>Surge and its peers, one run</h1><table>{rows}</table><p>{accepted}</p><p>{p99}</p></html>"
    );
    std::fs::write(path, html)?;
    Ok(())
}

/// The comparison table (markdown), Surge first, with its ratio to the best peer, and the
/// HTML report with plots beside the results file.
pub fn table(c: TableConfig) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&c.results).with_context(|| format!("reading {}", c.results.display()))?;
    let results: Vec<KneeResult> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let best_peer = results
        .iter()
        .filter(|r| r.name != "surge")
        .map(|r| r.knee_accepted_per_sec)
        .fold(0.0f64, f64::max);
    let mut out = String::from(
        "| target | accepted orders/s at the knee | knee (offered/s) | p99 at 80 % of the knee | oversold (400 orders, 100 units) | CPU s per 1k orders |\n|---|---|---|---|---|---|\n",
    );
    for r in &results {
        out += &format!(
            "| {} | {:.0} | {} | {} | {} ({}) | {} |",
            r.name,
            r.knee_accepted_per_sec,
            r.knee_rate,
            ms(r.p99_at_80_ms),
            r.oversold,
            r.oversell_probe
                .iter()
                .map(|(k, v)| format!("{v}x{k}"))
                .collect::<Vec<_>>()
                .join(" "),
            secs(r.cpu_secs_per_1k_orders)
        );
        out.push('\n');
    }
    print!("{out}");
    let report = c.results.with_extension("html");
    html_report(&results, &out, &report)?;
    println!("\nreport with plots: {}", report.display());
    if let Some(surge) = results.iter().find(|r| r.name == "surge") {
        if best_peer > 0.0 {
            println!(
                "\nSurge / best peer, accepted orders/s at the knee: {:.1}x",
                surge.knee_accepted_per_sec / best_peer
            );
        }
    }
    Ok(())
}
