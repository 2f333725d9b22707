//! `surge-loadgen moonshot` (`./dev bench-moonshot`): issue 17's seven targets measured in one
//! session on this machine, and the table of docs/benchmarks.md written from what was
//! measured. Each part runs several times and its medians are reported:
//!
//! 1. and 2. Surge's knee on one hot SKU ([`crate::bench`] with the `surge` target only, quick
//!    steps): the accepted orders/s at p99 ≤ 50 ms and the serving CPU per 1k accepted orders
//!    at that step (every process of the pipeline, Postgres and the broker included, not the
//!    load client); what bounds the rate is computed from the same step: CPU seconds per
//!    order against the machine's cores.
//! 3. The same runs' overload at twice the knee: the p99 of the accepted orders and of the
//!    refusals (shedding by time).
//! 4. Reads ([`crate::reads`]): a cached item's serving CPU against an uncached one and a bare
//!    axum handler, with wrk.
//! 5. Replay ([`crate::replay`]): events/s of the whole rebuild of a 1M-event store.
//! 6. and 7. The 20x flash sale ([`crate::flash_sale`]): event-to-view latency and each
//!    process's resident memory at the end.
//!
//! A target not met is written as not met, with the measured figure that bounds it.

use crate::bench::{self, BenchConfig};
use crate::children::{command, Children};
use crate::flash_sale::{FlashSaleConfig, FlashSaleFigures};
use crate::knee::{KneeResult, Step};
use crate::reads::{ReadsConfig, ReadsFigures};
use crate::replay::{ReplayBenchConfig, ReplayFigures};
use crate::table::{self, median};
use anyhow::Context;
use clap::{Args, Parser};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use surge_runtime::DatabaseConfig;

/// The parts, in the order they run.
pub const PARTS: [&str; 4] = ["knee", "flash-sale", "reads", "replay"];

#[derive(Debug, Clone, Args)]
pub struct MoonshotConfig {
    /// Runs of each part (medians are reported).
    #[arg(long, default_value_t = 3)]
    pub runs: u32,
    /// Events in the store the replay rebuilds.
    #[arg(long, default_value_t = 1_000_000)]
    pub replay_events: u64,
    /// The `wrk` binary of the reads part (`./dev bench-moonshot` installs Debian's).
    #[arg(long, default_value = "wrk")]
    pub wrk: PathBuf,
    /// Only these parts (comma-separated: knee, flash-sale, reads, replay).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// The `surge` binary (release) whose services are measured.
    #[arg(long)]
    pub surge_bin: PathBuf,
    /// The services' logs (default: `$SURGE_CACHE/run`).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Results (`moonshot-<time>.json`, the knee's results file beside it).
    #[arg(long, default_value = "target/loadgen")]
    pub out_dir: PathBuf,
    /// Write the table into this file's generated part (docs/benchmarks.md).
    #[arg(long)]
    pub docs: Option<PathBuf>,
    /// The development database: the parts' databases are created beside it.
    #[command(flatten)]
    pub db: DatabaseConfig,
    #[arg(long, env = "SURGE_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,
    #[arg(long, env = "SURGE_BACKGROUND_NICE", default_value_t = 10)]
    pub background_nice: i32,
}

/// The cores of this machine (what CPU per order is measured against).
fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

/// What one run of the knee says about targets 1-3.
#[derive(Debug, Clone, Serialize)]
pub struct KneeFigures {
    pub run: u32,
    pub accepted_per_sec: f64,
    /// CPU seconds per 1k accepted orders at the knee's step, all of the pipeline's processes.
    pub cpu_per_1k: Option<f64>,
    /// The same, process by process.
    pub cpu_per_1k_by_process: BTreeMap<String, f64>,
    /// Cores the pipeline kept busy at the knee's step.
    pub cores_busy: Option<f64>,
    /// Postgres' WAL at the knee's step: bytes and records per accepted order, syncs to disk
    /// per second and accepted orders per sync.
    pub wal_bytes_per_order: Option<f64>,
    pub wal_records_per_order: Option<f64>,
    pub wal_syncs_per_sec: Option<f64>,
    pub orders_per_wal_sync: Option<f64>,
    pub overload_accepted_p99_ms: Option<f64>,
    pub overload_refused_p99_ms: Option<f64>,
    pub overload_refused_share: Option<f64>,
    /// Offered rate of the overload, cores the pipeline kept busy during it, and the lane's
    /// own account of it (mean ms in the lane, share of orders longer than the target in it).
    pub overload_rate: Option<u64>,
    pub overload_cores_busy: Option<f64>,
    pub overload_lane_mean_ms: Option<f64>,
    pub overload_lane_over_target: Option<f64>,
    pub audit_ok: bool,
}

fn knee_step(r: &KneeResult) -> Option<&Step> {
    r.steps
        .iter()
        .filter(|s| s.passed)
        .max_by(|a, b| a.accepted_per_sec.total_cmp(&b.accepted_per_sec))
}

pub fn knee_figures(r: &KneeResult) -> KneeFigures {
    let step = knee_step(r);
    let by_process = step
        .map(|s| {
            s.cpu
                .iter()
                .filter(|_| s.accepted > 0)
                .map(|p| (p.process.clone(), p.cpu_secs / s.accepted as f64 * 1000.0))
                .collect()
        })
        .unwrap_or_default();
    let wal = step
        .and_then(|s| Some((s, s.wal?)))
        .filter(|(s, _)| s.accepted > 0 && s.secs > 0);
    KneeFigures {
        wal_bytes_per_order: wal.map(|(s, w)| w.bytes as f64 / s.accepted as f64),
        wal_records_per_order: wal.map(|(s, w)| w.records as f64 / s.accepted as f64),
        wal_syncs_per_sec: wal.map(|(s, w)| w.syncs as f64 / s.secs as f64),
        orders_per_wal_sync: wal
            .filter(|(_, w)| w.syncs > 0)
            .map(|(s, w)| s.accepted as f64 / w.syncs as f64),
        run: r.run,
        accepted_per_sec: r.knee_accepted_per_sec,
        cpu_per_1k: step.and_then(Step::cpu_per_1k),
        cpu_per_1k_by_process: by_process,
        cores_busy: step.filter(|s| s.secs > 0).map(|s| s.cpu_secs / s.secs as f64),
        overload_accepted_p99_ms: r.overload.as_ref().and_then(|o| o.accepted_p99_ms),
        overload_refused_p99_ms: r.overload.as_ref().and_then(|o| o.refused_p99_ms),
        overload_refused_share: r.overload.as_ref().map(|o| o.refused_share),
        overload_rate: r.overload.as_ref().map(|o| o.rate),
        overload_cores_busy: r.overload.as_ref().and_then(|o| o.cores_busy),
        overload_lane_mean_ms: r.overload.as_ref().and_then(|o| o.lane).map(|l| l.mean_ms),
        overload_lane_over_target: r.overload.as_ref().and_then(|o| o.lane).map(|l| l.over_target_share),
        audit_ok: r.audit_ok(),
    }
}

/// Everything one `moonshot` measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Moonshot {
    pub date: String,
    pub commit: String,
    pub machine: String,
    /// The machine's cores (what CPU per order is measured against).
    pub cores: f64,
    /// The relay's and the projector's CPU priority (nice) in the runs.
    pub background_nice: i32,
    pub knee: Vec<KneeFigures>,
    pub knee_results: Option<PathBuf>,
    pub flash_sales: Vec<FlashSaleFigures>,
    /// The same flash sales with the relay, the broker and the projector at nice 0.
    pub flash_sales_full_priority: Vec<FlashSaleFigures>,
    pub reads: Option<ReadsFigures>,
    pub replay: Option<ReplayFigures>,
}

/// Parses `args` as the arguments of a part's own subcommand: its defaults and environment
/// variables, as on the command line.
fn part_config<T: clap::Args>(args: &[String]) -> anyhow::Result<T> {
    #[derive(Parser)]
    struct Part<T: clap::Args> {
        #[command(flatten)]
        config: T,
    }
    let argv = std::iter::once("surge-loadgen".to_string()).chain(args.iter().cloned());
    Ok(Part::<T>::try_parse_from(argv)?.config)
}

/// Surge's pipeline and a second query API without its cache (`:8082`) on a fresh database;
/// runs `runs` flash sales then the reads against it.
async fn flash_sales_and_reads(c: &MoonshotConfig, m: &mut Moonshot) -> anyhow::Result<()> {
    let run_dir = c.run_dir.clone().unwrap_or_else(bench::default_run_dir);
    let db = bench::fresh_database(&c.db, "surge_moonshot").await?;
    let env = bench::surge_env(&db);
    let mut children = Children::new(&run_dir)?;
    let outcome = async {
        bench::start_surge(&c.surge_bin, &env, c.background_nice, &mut children).await?;
        let mut uncached = command(&c.surge_bin, &["query-api"], 0);
        uncached
            .envs(env.iter().cloned())
            .env("SURGE_QUERY_ADDR", "127.0.0.1:8082")
            .env("SURGE_CACHE_ENABLED", "false");
        children.start("query-api-uncached", "query-api-uncached", false, uncached)?;
        let http = reqwest::Client::new();
        for base in bench::PIPELINE.iter().copied().chain(["http://127.0.0.1:8082"]) {
            bench::wait_ready(&http, base, &run_dir).await?;
        }
        let out_dir = c.out_dir.to_string_lossy().to_string();
        if wanted(c, "flash-sale") {
            m.flash_sales = flash_sales(c, &db, &out_dir, "").await?;
        }
        if wanted(c, "reads") {
            bench::say("moonshot 4: reads (bare axum, trivial, cached, uncached) with wrk");
            let mut config: ReadsConfig = part_config(&[
                "--out-dir".into(),
                out_dir.clone(),
                "--rounds".into(),
                c.runs.to_string(),
            ])?;
            config.wrk = c.wrk.clone();
            config.query_pid = children.pid("query-api");
            config.uncached_query_pid = children.pid("query-api-uncached");
            m.reads = Some(crate::reads::measure(&config).await?);
        }
        anyhow::Ok(())
    }
    .await;
    children.stop_all();
    outcome
}

/// `runs` 20x flash sales against the pipeline running on `db`.
async fn flash_sales(c: &MoonshotConfig, db: &str, out_dir: &str, what: &str) -> anyhow::Result<Vec<FlashSaleFigures>> {
    let mut figures = Vec::new();
    for r in 0..c.runs {
        bench::say(&format!(
            "moonshot 6-7: the 20x flash sale{what}, run {}/{}",
            r + 1,
            c.runs
        ));
        let config: FlashSaleConfig =
            part_config(&["--database-url".into(), db.into(), "--out-dir".into(), out_dir.into()])?;
        figures.push(crate::flash_sale::measure(config).await?);
    }
    Ok(figures)
}

/// The flash sales again with the event path (relay, broker, projector) at the request path's
/// priority: whether their priority is what bounds the event-to-view latency.
async fn flash_sales_at_full_priority(c: &MoonshotConfig, m: &mut Moonshot) -> anyhow::Result<()> {
    let run_dir = c.run_dir.clone().unwrap_or_else(bench::default_run_dir);
    let db = bench::fresh_database(&c.db, "surge_moonshot").await?;
    let env = bench::surge_env(&db);
    let mut children = Children::new(&run_dir)?;
    crate::procs::renice_broker(0)?;
    let outcome = async {
        bench::start_surge(&c.surge_bin, &env, 0, &mut children).await?;
        let http = reqwest::Client::new();
        for base in bench::PIPELINE {
            bench::wait_ready(&http, base, &run_dir).await?;
        }
        let out_dir = c.out_dir.to_string_lossy().to_string();
        m.flash_sales_full_priority = flash_sales(c, &db, &out_dir, " (relay, broker and projector at nice 0)").await?;
        anyhow::Ok(())
    }
    .await;
    children.stop_all();
    let restored = crate::procs::renice_broker(c.background_nice);
    outcome?;
    restored.map(|_| ())
}

fn wanted(c: &MoonshotConfig, part: &str) -> bool {
    c.only.is_empty() || c.only.iter().any(|o| o == part)
}

pub async fn run(c: MoonshotConfig) -> anyhow::Result<()> {
    if let Some(unknown) = c.only.iter().find(|o| !PARTS.contains(&o.as_str())) {
        anyhow::bail!("--only {unknown}: the parts are {}", PARTS.join(", "));
    }
    std::fs::create_dir_all(&c.out_dir)?;
    let mut m = Moonshot {
        date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        commit: bench::commit(),
        machine: bench::machine(),
        cores: cores(),
        background_nice: c.background_nice,
        ..Moonshot::default()
    };
    if wanted(&c, "knee") {
        bench::say("moonshot 1-3: Surge's knee on one hot SKU, the overload at twice it");
        let results = bench::measure(BenchConfig {
            quick: true,
            runs: c.runs,
            only: vec!["surge".into()],
            surge_bin: c.surge_bin.clone(),
            peers_dir: PathBuf::new(),
            run_dir: c.run_dir.clone(),
            out_dir: c.out_dir.clone(),
            docs: None,
            readme: None,
            start_rate: 100,
            ratio: None,
            max_steps: 24,
            p99_ms: 50.0,
            db: c.db.clone(),
            kafka_brokers: c.kafka_brokers.clone(),
            background_nice: c.background_nice,
        })
        .await
        .context("the knee")?;
        let (_, runs) = table::read(&results)?;
        m.knee = runs.iter().map(knee_figures).collect();
        m.knee_results = Some(results);
    }
    if wanted(&c, "flash-sale") || wanted(&c, "reads") {
        flash_sales_and_reads(&c, &mut m).await?;
    }
    if wanted(&c, "flash-sale") && c.background_nice != 0 {
        flash_sales_at_full_priority(&c, &mut m).await?;
    }
    if wanted(&c, "replay") {
        bench::say("moonshot 5: the rebuild of a seeded event store");
        let mut url = reqwest::Url::parse(c.db.expose_url()).context("the database URL does not parse")?;
        url.set_path("surge_moonshot_replay");
        m.replay = Some(
            crate::replay::measure(&ReplayBenchConfig {
                surge: c.surge_bin.clone(),
                database_url: url.to_string(),
                events: c.replay_events,
                runs: c.runs as usize,
                reuse: false,
                out: None,
            })
            .await
            .context("the replay")?,
        );
    }
    let out = c
        .out_dir
        .join(format!("moonshot-{}.json", chrono::Utc::now().format("%Y%m%d-%H%M%S")));
    std::fs::write(&out, serde_json::to_string_pretty(&m)?)?;
    let text = markdown(&m, &out.to_string_lossy());
    println!("\n{text}");
    match &c.docs {
        Some(docs) if c.only.is_empty() && c.runs >= 3 => {
            table::replace_generated_between(docs, "./dev bench-moonshot", &text)?;
            bench::say(&format!("written into {}", docs.display()));
        }
        Some(_) => bench::say("--only or fewer than 3 runs: docs/benchmarks.md is left as it is"),
        None => {}
    }
    Ok(())
}

/// `median (min–max)` of `v` with `f` formatting each figure; `-` when empty.
fn spread(v: &[f64], f: impl Fn(f64) -> String) -> String {
    let Some(mid) = median(v.to_vec()) else {
        return "-".into();
    };
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if v.len() > 1 {
        format!("{} ({}–{})", f(mid), f(lo), f(hi))
    } else {
        f(mid)
    }
}

fn met(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "**met**",
        Some(false) => "not met",
        None => "not measured",
    }
}

fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// The table of targets 1-3 (one row each) and what bounds them.
fn knee_rows(m: &Moonshot) -> (Vec<String>, Vec<String>) {
    let pick = |f: &dyn Fn(&KneeFigures) -> Option<f64>| -> Vec<f64> { m.knee.iter().filter_map(f).collect() };
    let rates = pick(&|k| Some(k.accepted_per_sec));
    let cpu = pick(&|k| k.cpu_per_1k);
    let acc_p99 = pick(&|k| k.overload_accepted_p99_ms);
    let ref_p99 = pick(&|k| k.overload_refused_p99_ms);
    let audits = m.knee.iter().filter(|k| k.audit_ok).count();
    let mut rows = Vec::new();
    let mut bounds = Vec::new();
    if m.knee.is_empty() {
        return (rows, bounds);
    }
    let rate = median(rates.clone());
    rows.push(format!(
        "| 1 | ≥ 10,000 accepted orders/s on one hot SKU at p99 ≤ 50 ms | {} orders/s | {} |",
        spread(&rates, thousands),
        met(rate.map(|r| r >= 10_000.0))
    ));
    let cpu_mid = median(cpu.clone());
    rows.push(format!(
        "| 2 | serving CPU ≤ 0.25 s per 1k accepted orders | {} s per 1k (at the knee's step) | {} |",
        spread(&cpu, |v| format!("{v:.2}")),
        met(cpu_mid.map(|v| v <= 0.25))
    ));
    let (acc, refd) = (median(acc_p99.clone()), median(ref_p99.clone()));
    rows.push(format!(
        "| 3 | at 2x the knee: p99 of accepted orders ≤ 50 ms, refusals answered in < 5 ms | accepted p99 {} ms, refusals p99 {} ms | {} |",
        spread(&acc_p99, |v| format!("{v:.1}")),
        spread(&ref_p99, |v| format!("{v:.1}")),
        met(acc.zip(refd).map(|(a, r)| a <= 50.0 && r < 5.0))
    ));
    // What bounds 1 and 2: the CPU an order costs, process by process, against the cores.
    let mut by_process: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for k in &m.knee {
        for (p, v) in &k.cpu_per_1k_by_process {
            by_process.entry(p.clone()).or_default().push(*v);
        }
    }
    let mut parts: Vec<(String, f64)> = by_process
        .into_iter()
        .filter(|(p, _)| crate::procs::is_server(p))
        .filter_map(|(p, v)| median(v).map(|m| (p, m)))
        .collect();
    parts.sort_by(|a, b| b.1.total_cmp(&a.1));
    if let Some(cpu) = cpu_mid {
        let busy = median(pick(&|k| k.cores_busy));
        bounds.push(format!(
            "- **1 and 2, CPU:** at the knee's step the pipeline spent {cpu:.2} CPU s per 1k accepted orders ({}); \
             {:.0} cores allow at most {} orders/s at that cost, and 10,000/s needs {:.2} s per 1k or less \
             (the load client's own CPU not counted). The pipeline kept {} of the {:.0} cores busy at the knee{}.",
            parts
                .iter()
                .map(|(p, v)| format!("{p} {v:.2}"))
                .collect::<Vec<_>>()
                .join(", "),
            m.cores,
            thousands(m.cores * 1000.0 / cpu),
            m.cores * 1000.0 / 10_000.0,
            busy.map_or("-".into(), |b| format!("{b:.2}")),
            m.cores,
            match (busy, rate) {
                (Some(b), Some(_)) if b < m.cores * 0.75 =>
                    ": the knee came before the cores ran out, so latency (batch time: commit and fsync) bounds it there",
                _ => "",
            }
        ));
    }
    let (wb, wr, ws, wo) = (
        median(pick(&|k| k.wal_bytes_per_order)),
        median(pick(&|k| k.wal_records_per_order)),
        median(pick(&|k| k.wal_syncs_per_sec)),
        median(pick(&|k| k.orders_per_wal_sync)),
    );
    if let (Some(wb), Some(wr), Some(ws), Some(wo)) = (wb, wr, ws, wo) {
        bounds.push(format!(
            "- **1, the log's writes:** at the knee's step Postgres wrote {wb:.0} bytes of WAL in {wr:.1} records per accepted \
             order (events, outbox rows, idempotency answers, deadlines, index entries) and synced it to disk {ws:.0} times a \
             second, {wo:.1} orders per sync (group commit: one sync per lane batch and per other transaction)."
        ));
    }
    let (busy, lane_ms, over) = (
        median(pick(&|k| k.overload_cores_busy)),
        median(pick(&|k| k.overload_lane_mean_ms)),
        median(pick(&|k| k.overload_lane_over_target)),
    );
    if let (Some(busy), Some(lane_ms), Some(over), Some(acc)) = (busy, lane_ms, over, acc) {
        let offered = median(pick(&|k| k.overload_rate.map(|r| r as f64))).unwrap_or(0.0);
        let shed = median(pick(&|k| k.overload_refused_share)).unwrap_or(0.0);
        let verdict = if acc <= 50.0 {
            "within the target".to_string()
        } else if over >= 0.01 {
            format!(
                "{:.1} % of orders spent longer than 50 ms in the lane: the admission estimate (a fixed time per batch \
                 and a time per order, fitted from the lane's recent batches) let them in when the batches ahead took \
                 longer than their fit",
                over * 100.0
            )
        } else {
            format!(
                "fewer than 1 % of orders spent longer than 50 ms in the lane ({:.1} %), so the rest of the accepted p99 \
                 is spent outside it: HTTP, the token, JSON and waiting for a core",
                over * 100.0
            )
        };
        bounds.push(format!(
            "- **3, the overload:** {} orders/s offered, {:.0} % of them refused (shed); the pipeline kept {busy:.2} of \
             the {:.0} cores busy. In the command API's own account (`surge_sequencer_order_seconds`) an accepted order \
             spent {lane_ms:.1} ms in the lane (queue and batch) on average; {verdict}. A refusal does no I/O: its p99 \
             is its wait for a core among the requests being served.",
            thousands(offered),
            shed * 100.0,
            m.cores
        ));
    }
    bounds.push(format!(
        "- Audits of the knee's runs: {audits} of {} passed (nothing lost, duplicated or oversold).",
        m.knee.len()
    ));
    (rows, bounds)
}

fn phase<'a>(r: &'a ReadsFigures, name: &str) -> Option<&'a crate::reads::PhaseFigures> {
    r.phases.iter().find(|p| p.name == name)
}

/// Target 4's row and what bounds it.
fn reads_rows(m: &Moonshot) -> (Vec<String>, Vec<String>) {
    let Some(r) = &m.reads else {
        return (Vec::new(), Vec::new());
    };
    use crate::reads::{PHASE_BARE, PHASE_CACHED, PHASE_TRIVIAL, PHASE_UNCACHED};
    let us = |name: &str| phase(r, name).map(|p| p.serving_cpu_us_per_read);
    let path_us = |name: &str| phase(r, name).map(|p| p.read_path_cpu_us_per_read);
    let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
    let cached = us(PHASE_CACHED);
    let row = format!(
        "| 4 | a cached item ≤ 10 µs of serving CPU; uncached / cached ≥ 5x | cached {} µs (bare axum {} µs, empty handler behind the middleware {} µs); uncached {} µs, {} µs with Postgres: {:.1}x with Postgres, {:.1}x the query API alone; {:.1}x the reads/s | {} |",
        f(cached),
        f(us(PHASE_BARE)),
        f(us(PHASE_TRIVIAL)),
        f(us(PHASE_UNCACHED)),
        f(path_us(PHASE_UNCACHED)),
        r.uncached_over_cached_cpu,
        r.uncached_over_cached_serving_cpu,
        r.cached_over_uncached_reads_per_sec,
        met(cached.map(|c| c <= 10.0 && r.uncached_over_cached_cpu >= 5.0))
    );
    let bound = format!(
        "- **4, reads:** a bare axum handler without middleware answering a body of the same size ({} bytes) costs {} µs of CPU per request on this machine (kernel TCP, hyper, the runtime): the floor of any HTTP read here; a cached item costs {:.1}x that. wrk with {} connections on {} thread(s), {} s per phase, {} round(s) (medians).",
        r.body_bytes,
        f(us(PHASE_BARE)),
        r.cached_over_bare_cpu,
        r.connections,
        r.threads,
        r.seconds_per_phase,
        r.rounds.len()
    );
    (vec![row], vec![bound])
}

/// Target 5's row and what bounds it.
fn replay_rows(m: &Moonshot) -> (Vec<String>, Vec<String>) {
    let Some(r) = &m.replay else {
        return (Vec::new(), Vec::new());
    };
    let row = format!(
        "| 5 | replay ≥ 300k events/s for the whole 1M-event rebuild | {} events/s ({} events, runs: {}) | {} |",
        thousands(r.median_events_per_sec),
        thousands(r.events as f64),
        r.runs.iter().map(|v| thousands(*v)).collect::<Vec<_>>().join(", "),
        met(Some(r.median_events_per_sec >= 300_000.0))
    );
    let bound = format!(
        "- **5, replay:** per projection (median events/s over its own time): {}. {}",
        r.per_projection
            .iter()
            .map(|(p, v)| format!("{p} {}", thousands(*v)))
            .collect::<Vec<_>>()
            .join(", "),
        r.counted
    );
    (vec![row], vec![bound])
}

/// Targets 6 and 7: the flash sales' event-to-view latency and memory.
fn flash_sale_rows(m: &Moonshot) -> (Vec<String>, Vec<String>) {
    if m.flash_sales.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let runs = m.flash_sales.len();
    let p50: Vec<f64> = m.flash_sales.iter().filter_map(|f| f.event_to_view_p50_ms).collect();
    let p99: Vec<f64> = m.flash_sales.iter().filter_map(|f| f.event_to_view_p99_ms).collect();
    let note = m.flash_sales.iter().find_map(|f| f.event_to_view_note.clone());
    let mut rows = vec![format!(
        "| 6 | event-to-view (store commit → view row) p99 < 200 ms under the 20x flash sale | p50 {} ms, p99 {} ms{} | {} |",
        spread(&p50, |v| format!("{v:.1}")),
        spread(&p99, |v| format!("{v:.1}")),
        note.as_deref().map_or(String::new(), |n| format!(" ({n})")),
        met(median(p99.clone()).map(|v| v < 200.0))
    )];
    let mut rss: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for f in &m.flash_sales {
        for (p, kib) in &f.rss_kib {
            rss.entry(p.clone()).or_default().push(*kib as f64);
        }
    }
    rows.push(format!(
        "| 7 | resident memory of each process at the end of the 20x run; every cache and queue bounded | {} | reported (bounds: docs/operations.md, \"Memory\") |",
        rss.into_iter()
            .filter_map(|(p, v)| {
                let note = if p == "postgres" {
                    " (summed over its processes: shared buffers counted in each)"
                } else {
                    ""
                };
                median(v).map(|m| format!("{p} {:.0} MiB{note}", m / 1024.0))
            })
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let audits = m.flash_sales.iter().filter(|f| f.audit_ok).count();
    let rates: Vec<f64> = m.flash_sales.iter().map(|f| f.accepted_per_sec).collect();
    let bound = format!(
        "- **6 and 7, the flash sale** (`surge-loadgen flash-sale` defaults: 50 → 1,000 orders/s in 5 s, 5 s at the peak, 70 % on one hot SKU of 500 units): {} accepted orders/s; {audits} of {runs} audits passed. The latency is Postgres' commit timestamps of the view row and of the event it shows (`track_commit_timestamp`): relay, broker, projector and their batching in between.",
        spread(&rates, thousands)
    );
    let mut bounds = vec![bound];
    let stages: Vec<_> = m.flash_sales.iter().filter_map(|f| f.stages).collect();
    if !stages.is_empty() {
        let mid = |f: &dyn Fn(&crate::flash_sale::Stages) -> f64| median(stages.iter().map(f).collect()).unwrap_or(0.0);
        bounds.push(format!(
            "- **6, where the time goes** (the relay's and the projector's own metrics over each run, medians of the \
             runs' means): the relay's rounds (read a batch of the outbox, one Kafka transaction, delete the batch) \
             took {:.1} ms with {:.1} events each ({:.0} rounds){}; an event committed during a round waits for it to \
             end, then for its own. The orders projector's batches took {:.1} ms with {:.1} events each ({:.0} \
             batches), and by its own clock an event reached the view {:.1} ms after it occurred. The relay and the \
             projector ran at nice {}, the request path at 0, on the same {:.0} cores.",
            mid(&|s| s.relay_round_ms),
            mid(&|s| s.relay_events_per_round),
            mid(&|s| s.relay_rounds),
            if stages.iter().all(|s| s.relay_phase_ms.is_some()) {
                let p = |i: usize| mid(&|s| s.relay_phase_ms.map_or(0.0, |p| p[i]));
                format!(
                    ": reading the batch {:.1} ms, sending it until Kafka acknowledged every event {:.1} ms, committing \
                     the Kafka transaction {:.1} ms, deleting the batch {:.1} ms",
                    p(0),
                    p(1),
                    p(2),
                    p(3)
                )
            } else {
                String::new()
            },
            mid(&|s| s.projector_batch_ms),
            mid(&|s| s.projector_events_per_batch),
            mid(&|s| s.projector_batches),
            mid(&|s| s.projector_event_to_view_ms),
            m.background_nice,
            m.cores,
        ));
    }
    let full: Vec<f64> = m
        .flash_sales_full_priority
        .iter()
        .filter_map(|f| f.event_to_view_p99_ms)
        .collect();
    if !full.is_empty() {
        let rounds: Vec<f64> = m
            .flash_sales_full_priority
            .iter()
            .filter_map(|f| f.stages.map(|s| s.relay_round_ms))
            .collect();
        bounds.push(format!(
            "- **6, the event path's priority:** the same flash sales with the relay, the broker and the projector at \
             nice 0 ({} runs on a fresh pipeline): event-to-view p99 {} ms (p50 {} ms), relay rounds {} ms.",
            full.len(),
            spread(&full, |v| format!("{v:.1}")),
            spread(
                &m.flash_sales_full_priority
                    .iter()
                    .filter_map(|f| f.event_to_view_p50_ms)
                    .collect::<Vec<_>>(),
                |v| format!("{v:.1}")
            ),
            spread(&rounds, |v| format!("{v:.1}")),
        ));
    }
    (rows, bounds)
}

/// What would move each target not met: the next steps, by what the bounds above show.
const WHAT_WOULD_MOVE_IT: [(&str, &str); 6] = [
    (
        "1",
        "more orders per fsync (the syncs per order above): a lane that holds its batch open for part of the \
         latency budget to let it fill trades latency for rate; once the cores run out, target 2.",
    ),
    (
        "2",
        "fewer rows and statements per order: the outbox as a position range the relay reads from the log (two \
         inserts and two deletes per order less, and their WAL), idempotency answers and deadlines in the order's own \
         event rows, and Kafka (about a third of the CPU here) on a machine of its own.",
    ),
    (
        "3",
        "admission that counts the cores as well as the lane (an order refused for lane time has still cost its \
         HTTP, token and JSON work on a saturated machine) and fewer µs per request on the path every order takes.",
    ),
    (
        "4",
        "the floor is the bare handler: a cached read served by fewer layers (no per-request span, metrics labels \
         interned) can only approach it; 10 µs needs a cheaper transport than kernel TCP and HTTP/1.1 per request \
         (pipelining, HTTP/2), which wrk's connections do not use.",
    ),
    (
        "5",
        "rebuilding the projections at once over one read of the log (they run one after the other now), binary \
         COPY, and reading the events' JSON once for all views.",
    ),
    (
        "6",
        "a relay round without a Kafka transaction per round: sending and committing the transaction are most of \
         a round (the split above) whatever the event path's priority (the nice 0 runs above); the idempotent \
         producer alone, fenced by the relay's lease, with the consumers' skipping of repeats, would drop the commit \
         and the partitions' registration with the transaction, and a broker on cores of its own would shorten both.",
    ),
];

pub fn markdown(m: &Moonshot, source: &str) -> String {
    let mut out = format!(
        "Measured by `./dev bench-moonshot` on {} (commit `{}`), results file `{source}`.\n\nMachine: {}. \
         Load client, services, Postgres and the broker share the machine. Medians of the runs (min–max).\n\n",
        m.date, m.commit, m.machine
    );
    out.push_str("| # | target | measured | |\n|---|---|---|---|\n");
    let (mut rows, mut bounds) = knee_rows(m);
    for (r, b) in [reads_rows(m), replay_rows(m), flash_sale_rows(m)] {
        rows.extend(r);
        bounds.extend(b);
    }
    for r in &rows {
        out.push_str(r);
        out.push('\n');
    }
    out.push_str("\nWhat bounds them (measured in the same runs):\n\n");
    for b in bounds {
        out.push_str(&b);
        out.push('\n');
    }
    let not_met: Vec<&str> = rows
        .iter()
        .filter(|r| r.ends_with("| not met |"))
        .filter_map(|r| r.split('|').nth(1).map(str::trim))
        .collect();
    if !not_met.is_empty() {
        out.push_str("\nWhat would move those not met:\n\n");
        for (target, what) in WHAT_WOULD_MOVE_IT {
            if not_met.contains(&target) {
                out.push_str(&format!("- **{target}:** {what}\n"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_read_as_people_write_them() {
        assert_eq!(thousands(10_000.0), "10,000");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        assert_eq!(spread(&[3.0, 1.0, 2.0], |v| format!("{v:.0}")), "2 (1–3)");
        assert_eq!(spread(&[], |v| format!("{v:.0}")), "-");
    }

    #[test]
    fn a_target_not_reached_is_written_not_met() {
        let k = |rate: f64, cpu: f64| KneeFigures {
            run: 0,
            accepted_per_sec: rate,
            cpu_per_1k: Some(cpu),
            cpu_per_1k_by_process: [("postgres".to_string(), cpu / 2.0)].into_iter().collect(),
            cores_busy: Some(1.9),
            wal_bytes_per_order: Some(900.0),
            wal_records_per_order: Some(9.0),
            wal_syncs_per_sec: Some(100.0),
            orders_per_wal_sync: Some(20.0),
            overload_accepted_p99_ms: Some(40.0),
            overload_refused_p99_ms: Some(2.0),
            overload_refused_share: Some(0.4),
            overload_rate: Some(4_000),
            overload_cores_busy: Some(1.95),
            overload_lane_mean_ms: Some(12.0),
            overload_lane_over_target: Some(0.002),
            audit_ok: true,
        };
        let m = Moonshot {
            cores: 2.0,
            knee: vec![k(2_000.0, 0.9), k(2_100.0, 1.0), k(1_900.0, 1.1)],
            ..Moonshot::default()
        };
        let text = markdown(&m, "x.json");
        assert!(text.contains("| 1 | ≥ 10,000 accepted orders/s on one hot SKU at p99 ≤ 50 ms | 2,000 (1,900–2,100) orders/s | not met |"), "{text}");
        assert!(text.contains("1.00 (0.90–1.10) s per 1k"), "{text}");
        assert!(text.contains("| **met** |"), "the overload row is met: {text}");
        assert!(text.contains("at most 2,000 orders/s"), "{text}");
        assert!(text.contains("4,000 orders/s offered, 40 % of them refused"), "{text}");
        assert!(text.contains("What would move those not met:\n\n- **1:**"), "{text}");
        assert!(!text.contains("- **3:**"), "3 is met: nothing to move: {text}");
    }
}
