//! `surge-loadgen knee` and `surge-loadgen table`: the side-by-side benchmark of `./dev bench`.
//!
//! `knee` measures one target that speaks Surge's command contract (Surge itself, or a peer of
//! `bench/peers/`) on a quiet machine: open-loop steps of rising arrival rate (90 % of orders
//! on one hot SKU, the rest on ten others), each answered order timed from when it was due.
//! A step passes when it accepted at least 95 % of its orders with p99 under 500 ms and its
//! latency did not keep climbing (falling behind: the last second's p99 over 3x the first's
//! and over 100 ms). The knee is the last step of the unbroken run of passing steps. Then,
//! once the machine is quiet again, a run twice as long as a step (6 s at least) at 80 % of
//! the knee's accepted rate gives the p99 of the table. An oversell probe sends 400
//! concurrent orders for 100 units. CPU is what the target's processes (its services,
//! Postgres, and for Surge the Kafka broker; never this client) spent during the steps, per
//! 1,000 accepted orders. Each run appends one JSON line to `--results`; `table` prints them
//! with the ratio to the best peer and writes an HTML report with plots.

use super::driver::{open_loop, send, RateArgs, Recorder};
use super::procs::{self, CpuSample, ProcessCpu};
use super::report::{line_chart, Series};
use anyhow::Context;
use clap::Args;
use futures::FutureExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

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
    pub credentials: surge_cli::credentials::ClientAuth,
}

#[derive(Debug, Clone, Args)]
pub struct TableConfig {
    /// JSON lines written by `surge-loadgen knee`.
    #[arg(long)]
    pub results: PathBuf,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Step {
    pub rate: u64,
    pub sent: u64,
    pub accepted: u64,
    pub accepted_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub answers: BTreeMap<String, u64>,
    /// CPU seconds of the target's processes (services, Postgres, Kafka; not this client).
    pub cpu_secs: f64,
    /// The same, process by process.
    #[serde(default)]
    pub cpu: Vec<ProcessCpu>,
    /// p99 (ms) of the orders due in each second of the step.
    #[serde(default)]
    pub p99_by_second: Vec<Option<f64>>,
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

/// One open-loop step at `rate` orders/s for `secs`.
async fn step(http: &reqwest::Client, url: &str, skus: &[String], rate: u64, secs: u64, tag: &str) -> Step {
    let rates = RateArgs {
        start_rate: rate,
        peak_rate: rate,
        ramp_secs: 0,
        hold_secs: secs,
        max_requests: u64::MAX,
    };
    let recorder = Recorder::new();
    let cpu_before = CpuSample::now();
    let sent = open_loop(&rates, &recorder, &format!("{rate}/s"), |i, due| {
        let sku = if i % 10 == 0 {
            &skus[1 + (i as usize / 10) % (skus.len() - 1)]
        } else {
            &skus[0]
        };
        let req = http
            .post(format!("{url}/v1/orders"))
            .header("idempotency-key", format!("{tag}-{rate}-{i}"))
            .json(&json!({"customer_id": format!("b{}", i % 1000), "lines": [{"sku": sku, "quantity": 1}]}));
        let recorder = recorder.clone();
        vec![async move {
            recorder.time("order", due, send(req, false)).await;
        }
        .boxed()]
    })
    .await;
    let elapsed = recorder.started().elapsed().as_secs_f64();
    let (ops, timeline) = recorder.summary();
    let p99_by_second = timeline.iter().filter(|s| s.sent > 0).map(|s| s.p99_ms).collect();
    let Some(order) = ops.into_iter().next() else {
        return Step {
            rate,
            sent,
            ..Step::default()
        };
    };
    let accepted = order.answers.get("202").copied().unwrap_or(0);
    let cpu = cpu_before.usage(&CpuSample::now(), accepted);
    Step {
        rate,
        sent,
        accepted,
        accepted_per_sec: accepted as f64 / elapsed,
        p50_ms: order.latency_ms.p50,
        p99_ms: order.latency_ms.p99,
        answers: order.answers,
        cpu_secs: procs::server_secs(&cpu),
        cpu,
        p99_by_second,
    }
}

/// Sends one order at a time (at most two a second) until five in a row are answered within
/// `fast` (at most two minutes); how long that took.
async fn recover(http: &reqwest::Client, url: &str, sku: &str, fast: Duration, run: &str) -> Duration {
    let started = std::time::Instant::now();
    let (mut in_a_row, mut i) = (0, 0u64);
    while in_a_row < 5 && started.elapsed() < Duration::from_secs(120) {
        let sent = std::time::Instant::now();
        let answer = send(
            http.post(format!("{url}/v1/orders"))
                .header("idempotency-key", format!("{run}-recover-{i}"))
                .json(&json!({"customer_id": "recovery", "lines": [{"sku": sku, "quantity": 1}]})),
            false,
        )
        .await;
        i += 1;
        in_a_row = if answer.ok() && sent.elapsed() <= fast {
            in_a_row + 1
        } else {
            0
        };
        tokio::time::sleep(Duration::from_millis(500).saturating_sub(sent.elapsed())).await;
    }
    started.elapsed()
}

/// The target kept up: almost every order accepted, p99 under 500 ms.
fn keeps_up(s: &Step) -> bool {
    s.accepted as f64 >= 0.95 * s.sent as f64 && s.p99_ms < 500.0
}

/// Latency grew through the step (the last whole second's p99 over 3x the first's, and over
/// 100 ms): the target only kept up for a while, its queues filling. A short step would
/// otherwise credit it with a rate it cannot hold.
fn falling_behind(s: &Step) -> bool {
    // Seconds are those the orders were due in: a step of N s has N whole ones.
    let seconds: Vec<f64> = s.p99_by_second.iter().flatten().copied().collect();
    match (seconds.first(), seconds.last()) {
        (Some(first), Some(last)) => *last > 100.0 && *last > 3.0 * first.max(20.0),
        _ => false,
    }
}

fn passes(s: &Step) -> bool {
    keeps_up(s) && !falling_behind(s)
}

pub async fn knee(c: KneeConfig) -> anyhow::Result<()> {
    let url = super::loopback(&c.url)?;
    let http = c.credentials.client(
        "bench",
        reqwest::Client::builder()
            // An order unanswered after 10 s counts as failed (`transport`) for every target.
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(512),
    )?;
    surge_cli::demo::wait_ready(&http, &url).await?;
    let run = format!("{:X}", chrono::Utc::now().timestamp_millis() % 0x1000_0000);
    let skus: Vec<String> = (0..11).map(|i| format!("K{run}-{i}")).collect();
    let items: Vec<(String, i64, &str)> = skus.iter().map(|s| (s.clone(), 1_000_000_000, "bench")).collect();
    super::seed_catalog(&http, &url, &items).await?;
    println!("== {}: steps {:?} orders/s, {} s each", c.name, c.steps, c.step_secs);
    // Every target starts on a quiet machine (nothing left running from what came before).
    let waited = procs::wait_until_quiet(0.10, Duration::from_secs(60)).await;
    println!("   machine quiet after {:.0} s", waited.as_secs_f64());
    // Warm-up (connections, pools, caches), not recorded.
    let warm = c.steps.first().copied().unwrap_or(100);
    step(&http, &url, &skus, warm, 2, &format!("{run}-warm")).await;
    let mut steps = Vec::new();
    for &rate in &c.steps {
        let s = step(&http, &url, &skus, rate, c.step_secs, &run).await;
        println!(
            "   {:>5}/s: accepted {:>7.1}/s  p50 {:>8.1} ms  p99 {:>8.1} ms  {:?}{}",
            rate,
            s.accepted_per_sec,
            s.p50_ms,
            s.p99_ms,
            s.answers,
            if falling_behind(&s) {
                "  (latency growing: falling behind)"
            } else {
                ""
            }
        );
        // One step that only fell behind does not end the search (a hiccup of the machine
        // can look the same); one that could not keep up does.
        let overloaded = !keeps_up(&s);
        steps.push(s);
        if overloaded {
            break;
        }
    }
    // The knee: the last of the steps that all passed from the start. A higher step that
    // passes after one fell behind only had too little time to show it.
    let best = steps.iter().take_while(|s| passes(s)).last().cloned();
    let (knee_rate, knee_accepted) = best.as_ref().map_or((0, 0.0), |s| (s.rate, s.accepted_per_sec));
    let at80 = if knee_rate > 0 {
        // Let the backlog of an overloaded last step drain first (the target's queues, and
        // for Surge its relay and projector catching up): until the machine is quiet.
        let waited = procs::wait_until_quiet(0.10, Duration::from_secs(120)).await;
        // A quiet machine is not enough: a target may still be working off the overload
        // (retrying requests that are sleeping, a relay waiting on acks). It has recovered
        // when five orders in a row on the hot SKU, one at a time, are answered as fast as at
        // the first step.
        let fast = Duration::from_secs_f64((steps[0].p50_ms * 3.0).max(20.0) / 1000.0);
        let recovered = recover(&http, &url, &skus[0], fast, &run).await;
        println!(
            "   machine quiet again after {:.0} s, target answering in under {} ms after {:.0} s more",
            waited.as_secs_f64(),
            fast.as_millis(),
            recovered.as_secs_f64()
        );
        // 80 % of the most it accepted per second (not of the offered rate: a knee step may
        // accept a little less than it was offered).
        let rate = ((knee_accepted * 0.8) as u64).max(1);
        // Twice a step, 6 s at least: long enough to show a rate that cannot be held.
        let s = step(&http, &url, &skus, rate, (c.step_secs * 2).max(6), &format!("{run}-80")).await;
        let by_second: Vec<String> = s
            .p99_by_second
            .iter()
            .map(|p| p.map_or("-".into(), |v| format!("{v:.0}")))
            .collect();
        println!(
            "   80 % of the knee ({rate}/s): p99 {:.1} ms (by second: {} ms)",
            s.p99_ms,
            by_second.join(", ")
        );
        Some(s.p99_ms)
    } else {
        None
    };
    // Oversell probe: 400 orders at once for 100 units of a fresh SKU.
    let probe_sku = format!("P{run}");
    if let Err(e) = super::seed_catalog(&http, &url, &[(probe_sku.clone(), 100, "bench")]).await {
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

/// One SVG chart of a per-step figure against the offered rate, a line per target.
fn chart(
    results: &[KneeResult],
    title: &str,
    y_desc: &str,
    y: impl Fn(&Step) -> f64,
    log: bool,
) -> anyhow::Result<String> {
    let series: Vec<Series> = results
        .iter()
        .enumerate()
        .map(|(i, r)| Series {
            name: r.name.clone(),
            points: r.steps.iter().map(|s| (s.rate as f64, y(s))).collect(),
            color: i + 1,
            width: 2,
        })
        .collect();
    line_chart(title, "offered orders/s", y_desc, &series, log)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn step(sent: u64, accepted: u64, p99_ms: f64, by_second: &[f64]) -> Step {
        Step {
            rate: sent,
            sent,
            accepted,
            p99_ms,
            p99_by_second: by_second.iter().map(|v| Some(*v)).collect(),
            ..Step::default()
        }
    }

    #[test]
    fn a_knee_keeps_up_without_falling_behind() {
        assert!(passes(&step(900, 900, 40.0, &[20.0, 35.0, 40.0])));
        // Refused or slow: overloaded.
        assert!(!keeps_up(&step(900, 800, 40.0, &[20.0, 35.0, 40.0])));
        assert!(!keeps_up(&step(900, 900, 600.0, &[200.0, 400.0, 600.0])));
        // Kept up for three seconds, but latency climbed all along: not a knee.
        let climbing = step(900, 900, 450.0, &[60.0, 200.0, 450.0]);
        assert!(keeps_up(&climbing) && falling_behind(&climbing) && !passes(&climbing));
        // A late hiccup under 100 ms is no trend.
        assert!(!falling_behind(&step(900, 900, 90.0, &[10.0, 12.0, 90.0])));
    }
}
