//! `surge-loadgen scale` (`./dev bench-scale`): one hot SKU sold through one command API
//! instance and through several, on the same machine, to show that adding instances does not
//! make a hot SKU slower (issue "Flash sale at scale").
//!
//! Each run starts from a fresh database: N command API instances (each its own
//! `SURGE_INSTANCE_ID`, so each prefers its own stock bucket), the relay and the projector;
//! one item with `--stock` units split into `--buckets` buckets; then `--orders` orders of one
//! unit each from `--clients` concurrent clients (closed loop), spread round-robin over the
//! instances. The accepted rate is the units sold over the time until the last accepted
//! order's answer (the sale is over when the stock is). The lock wait per order is what the
//! instances' `surge_store_lock_wait_seconds` histograms gained, over the orders answered.
//! Every run is audited (exactly `--stock` units accepted, nothing lost, duplicated or
//! oversold, the views agree). The instance counts run in rotating order, `--runs` times; the
//! medians go into the generated part of docs/benchmarks.md.

use crate::audit::{self, check, Check};
use crate::bench::{commit, fresh_database, machine, rotated, say, surge_env, wait_ready};
use crate::children::{command, Children};
use crate::driver::{histogram, send, Quantiles};
use crate::scrape::Scrape;
use crate::table::{median, replace_generated_between};
use anyhow::{bail, Context};
use clap::Args;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use surge_cli::demo::come_back_after;
use surge_runtime::DatabaseConfig;

#[derive(Debug, Clone, Args)]
pub struct ScaleConfig {
    /// The `surge` binary (release) whose command API instances are measured.
    #[arg(long)]
    pub surge_bin: PathBuf,
    /// Instance counts compared, the first being the reference (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    pub instances: Vec<usize>,
    #[arg(long, default_value_t = 3)]
    pub runs: u32,
    /// Orders of one unit each, spread round-robin over the instances.
    #[arg(long, default_value_t = 20_000)]
    pub orders: u64,
    /// Units of the hot SKU.
    #[arg(long, default_value_t = 5_000)]
    pub stock: i64,
    /// Stock buckets of the hot SKU (the same for every instance count).
    #[arg(long, default_value_t = 3)]
    pub buckets: i64,
    /// Concurrent clients (closed loop: each sends its next order when answered).
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// The services' logs (default: `$SURGE_CACHE/run`).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Results (`scale-<time>.jsonl`).
    #[arg(long, default_value = "target/loadgen")]
    pub out_dir: PathBuf,
    /// Write the table into the `./dev bench-scale` generated part of this file.
    #[arg(long)]
    pub docs: Option<PathBuf>,
    /// The development database: the run's database is created beside it.
    #[command(flatten)]
    pub db: DatabaseConfig,
    #[command(flatten)]
    pub credentials: surge_cli::credentials::ClientAuth,
    /// CPU priority of the relay and the projector (as in `./dev bench`).
    #[arg(long, env = "SURGE_BACKGROUND_NICE", default_value_t = 10)]
    pub background_nice: i32,
}

/// One run with one instance count.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScaleRun {
    pub instances: usize,
    pub run: u32,
    pub orders: u64,
    pub accepted: u64,
    pub out_of_stock: u64,
    /// Any other answer (a transport error, 5xx, 503 shed, another refusal), by kind.
    pub other: HashMap<String, u64>,
    /// From the first order sent to the last accepted answer.
    pub sell_out_secs: f64,
    pub accepted_per_sec: f64,
    pub latency_ms: Quantiles,
    /// Advisory-lock wait of the instances' writers, per order answered.
    pub lock_wait_ms_per_order: Option<f64>,
    /// Accepted orders per instance (the index in the round-robin).
    pub accepted_by_instance: Vec<u64>,
    /// Requests answered 503 `hot-sku-overloaded` whose client came back after the wait given.
    #[serde(default)]
    pub came_back: u64,
    pub audit: Vec<Check>,
}

impl ScaleRun {
    fn audit_ok(&self) -> bool {
        self.audit.iter().all(|c| c.ok)
    }
}

/// One order's answer: the instance it went to, its kind (`202`, `422 out-of-stock`, ...), its
/// latency in µs and when it came (seconds since the load began).
type Answered = (usize, String, u64, f64);

const DATABASE: &str = "surge_scale";
const FIRST_PORT: u16 = 18_180;
const LOCK_WAIT: &str = "surge_store_lock_wait_seconds_sum";
/// How long a shopper keeps coming back after 503 `hot-sku-overloaded` (as `./dev demo`'s).
const COME_BACK_FOR: Duration = Duration::from_secs(10);

pub async fn run(c: ScaleConfig) -> anyhow::Result<()> {
    if c.instances.is_empty() || c.instances.contains(&0) {
        bail!("--instances: give counts of at least 1, e.g. 1,3");
    }
    let run_dir = c.run_dir.clone().unwrap_or_else(crate::bench::default_run_dir);
    std::fs::create_dir_all(&c.out_dir)?;
    let started_at = chrono::Utc::now();
    let results = c
        .out_dir
        .join(format!("scale-{}.jsonl", started_at.format("%Y%m%d-%H%M%S")));
    let http = c.credentials.client(
        "loadgen",
        reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(c.clients),
    )?;
    let (commit, machine) = (commit(), machine());
    say(&format!(
        "bench-scale: {} orders for {} units in {} buckets, {} clients, instances {:?}, {} runs ({commit})",
        c.orders, c.stock, c.buckets, c.clients, c.instances, c.runs
    ));
    let mut all = Vec::new();
    for run in 0..c.runs {
        for n in rotated(&c.instances, run) {
            say(&format!("run {} of {}: {n} instance(s)", run + 1, c.runs));
            let mut children = Children::new(&run_dir)?;
            let result = one_run(&c, &http, &mut children, n, run).await;
            children.stop_all();
            let result = result?;
            print_run(&result);
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&results)?;
            writeln!(f, "{}", serde_json::to_string(&result)?)?;
            all.push(result);
        }
    }
    let text = table(&c, &all, &started_at, &commit, &machine);
    println!("\n{text}");
    println!("results: {}", results.display());
    if let Some(docs) = &c.docs {
        replace_generated_between(docs, "./dev bench-scale", &text)?;
        println!("written into {}", docs.display());
    }
    if let Some(bad) = all.iter().find(|r| !r.audit_ok()) {
        bail!(
            "the audit of run {} with {} instance(s) failed",
            bad.run + 1,
            bad.instances
        );
    }
    Ok(())
}

async fn one_run(
    c: &ScaleConfig,
    http: &reqwest::Client,
    children: &mut Children,
    n: usize,
    run: u32,
) -> anyhow::Result<ScaleRun> {
    let db = fresh_database(&c.db, DATABASE).await?;
    let env = surge_env(&db);
    let status = command(&c.surge_bin, &["migrate"], 0)
        .envs(env.iter().cloned())
        .status()
        .context("running surge migrate")?;
    if !status.success() {
        bail!("surge migrate on {DATABASE} failed ({status})");
    }
    let urls: Vec<String> = (0..n)
        .map(|i| format!("http://127.0.0.1:{}", FIRST_PORT + i as u16))
        .collect();
    for (i, url) in urls.iter().enumerate() {
        let addr = url.trim_start_matches("http://");
        let mut cmd = command(&c.surge_bin, &["command-api", "--addr", addr], 0);
        cmd.envs(env.iter().cloned())
            .env("SURGE_INSTANCE_ID", format!("scale-{i}"));
        children.start(
            &format!("command-api-{i}"),
            &format!("scale-command-api-{i}"),
            false,
            cmd,
        )?;
    }
    for (name, sub) in [("relay", "relay"), ("projector", "project")] {
        let mut cmd = command(&c.surge_bin, &[sub], c.background_nice);
        cmd.envs(env.iter().cloned());
        children.start(name, &format!("scale-{name}"), false, cmd)?;
    }
    let run_dir = c.run_dir.clone().unwrap_or_else(crate::bench::default_run_dir);
    for base in urls
        .iter()
        .map(String::as_str)
        .chain(["http://127.0.0.1:9101", "http://127.0.0.1:9102"])
    {
        wait_ready(http, base, &run_dir).await?;
    }
    let sku = format!("SCALE{}{}", n, crate::run_id());
    let r = http
        .post(format!("{}/v1/catalog/items", urls[0]))
        .json(&json!({"sku": sku, "name": "Hot item", "category": "scale",
                      "price": {"minor": 1999, "currency": "EUR"},
                      "initial_stock": c.stock, "buckets": c.buckets}))
        .send()
        .await?;
    if r.status().as_u16() != 201 {
        bail!("adding {sku}: {} {}", r.status(), r.text().await.unwrap_or_default());
    }
    crate::procs::wait_until_quiet(0.15, Duration::from_secs(30)).await;
    let since = chrono::Utc::now() - chrono::Duration::seconds(1);
    let lock_before = lock_wait_secs(http, &urls).await;

    let next = Arc::new(AtomicU64::new(0));
    let accepted: Arc<Mutex<HashMap<String, HashSet<String>>>> = Arc::default();
    let answers: Arc<Mutex<Vec<Answered>>> = Arc::default();
    let came_back = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let workers = (0..c.clients).map(|_| {
        let (http, urls, sku, next, accepted, answers, came_back) = (
            http.clone(),
            urls.clone(),
            sku.clone(),
            next.clone(),
            accepted.clone(),
            answers.clone(),
            came_back.clone(),
        );
        let orders = c.orders;
        tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= orders {
                    break;
                }
                let instance = (i % urls.len() as u64) as usize;
                let key = format!("{sku}-{i}");
                let body = json!({"customer_id": format!("s{}", i % 1000),
                                  "lines": [{"sku": sku, "quantity": 1}]});
                let sent = Instant::now();
                // A shopper asked to come back (503 hot-sku-overloaded) does, after the wait
                // the answer gives, with the same key, for `COME_BACK_FOR` at most; the
                // order's latency runs from its first request to its last answer.
                let answer = loop {
                    let req = http
                        .post(format!("{}/v1/orders", urls[instance]))
                        .header("idempotency-key", &key)
                        .json(&body);
                    let answer = send(req, true).await;
                    let Some(wait) = answer.status.and_then(|s| come_back_after(s, &answer.body)) else {
                        break answer;
                    };
                    if sent.elapsed() >= COME_BACK_FOR {
                        break answer;
                    }
                    came_back.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(wait).await;
                };
                let micros = sent.elapsed().as_micros().max(1) as u64;
                let kind = answer.kind();
                if answer.status == Some(202) {
                    let id = answer.body["order_id"].as_str().unwrap_or_default().to_string();
                    accepted.lock().expect("accepted").entry(key).or_default().insert(id);
                }
                let at = start.elapsed().as_secs_f64();
                answers.lock().expect("answers").push((instance, kind, micros, at));
            }
        })
    });
    for w in futures::future::join_all(workers).await {
        w.context("a client task failed")?;
    }
    let lock_after = lock_wait_secs(http, &urls).await;
    let answers = std::mem::take(&mut *answers.lock().expect("answers"));
    let accepted = std::mem::take(&mut *accepted.lock().expect("accepted"));

    let mut h = histogram();
    let mut other: HashMap<String, u64> = HashMap::new();
    let (mut ok, mut sold_out, mut last_accept) = (0u64, 0u64, 0f64);
    let mut by_instance = vec![0u64; n];
    for (instance, kind, micros, at) in &answers {
        h.saturating_record(*micros);
        match kind.as_str() {
            "202" => {
                ok += 1;
                by_instance[*instance] += 1;
                last_accept = last_accept.max(*at);
            }
            "422 out-of-stock" => sold_out += 1,
            k => *other.entry(k.to_string()).or_default() += 1,
        }
    }
    let unknown = answers
        .iter()
        .filter(|(_, k, _, _)| k == "transport" || k.starts_with('5'))
        .count() as u64;
    let pool = surge_runtime::db::connect(&DatabaseConfig::new(&db)).await?;
    let skus = [sku.clone()];
    let scope = audit::Scope {
        skus: &skus,
        since,
        accepted: &accepted,
        unknown,
        patience: Duration::from_secs(60),
    };
    let mut checks = audit::audit(&pool, &scope).await?;
    checks.push(check(
        "exactly the stock sold",
        ok == c.stock as u64,
        format!("{ok} orders of one unit accepted for {} units", c.stock),
    ));
    pool.close().await;
    let lock_wait_ms_per_order = match (lock_before, lock_after) {
        (Some(b), Some(a)) if !answers.is_empty() => Some((a - b) * 1000.0 / answers.len() as f64),
        _ => None,
    };
    Ok(ScaleRun {
        instances: n,
        run,
        orders: answers.len() as u64,
        accepted: ok,
        out_of_stock: sold_out,
        other,
        sell_out_secs: last_accept,
        accepted_per_sec: if last_accept > 0.0 {
            ok as f64 / last_accept
        } else {
            0.0
        },
        latency_ms: Quantiles::of(&h),
        lock_wait_ms_per_order,
        accepted_by_instance: by_instance,
        came_back: came_back.load(Ordering::Relaxed),
        audit: checks,
    })
}

/// The sum of the instances' lock-wait histograms (seconds); an instance that has not locked
/// yet has none (0); `None` when one cannot be scraped.
async fn lock_wait_secs(http: &reqwest::Client, urls: &[String]) -> Option<f64> {
    let mut total = 0.0;
    for url in urls {
        total += Scrape::of(http, url).await?.sum(LOCK_WAIT, &[]).unwrap_or(0.0);
    }
    Some(total)
}

fn print_run(r: &ScaleRun) {
    println!(
        "   {} instance(s): {} accepted in {:.2} s = {:.0}/s, {} out of stock, other {:?}; p50 {:.1} ms, p99 {:.1} ms; \
         lock wait {} ms per order; accepted per instance {:?}; came back after 503 {} times; audit {}",
        r.instances,
        r.accepted,
        r.sell_out_secs,
        r.accepted_per_sec,
        r.out_of_stock,
        r.other,
        r.latency_ms.p50,
        r.latency_ms.p99,
        r.lock_wait_ms_per_order.map_or("-".into(), |v| format!("{v:.2}")),
        r.accepted_by_instance,
        r.came_back,
        if r.audit_ok() { "ok" } else { "FAILED" }
    );
    for c in r.audit.iter().filter(|c| !c.ok) {
        println!("   [FAILED] {}: {}", c.check, c.detail);
    }
}

/// The generated table: per instance count, the medians over the runs, and the ratio of each
/// count's accepted rate to the first count's.
pub fn table(
    c: &ScaleConfig,
    runs: &[ScaleRun],
    started_at: &chrono::DateTime<chrono::Utc>,
    commit: &str,
    machine: &str,
) -> String {
    let mut out = format!(
        "Measured by `./dev bench-scale` on {} UTC, commit {commit}, {machine}: {} orders of one unit \
         for {} units of one SKU in {} buckets, {} concurrent clients (closed loop) spread round-robin over \
         the instances, the relay and the projector running; a client answered 503 `hot-sku-overloaded` comes \
         back after the wait the answer gives, with the same key (an order's latency runs from its first request \
         to its last answer); medians of {} runs (min–max), every run audited.\n\n\
         | command API instances | accepted orders/s | sold out after | p50 | p99 | lock wait per order | came back after 503 | audits |\n\
         |---|---|---|---|---|---|---|---|\n",
        started_at.format("%Y-%m-%d %H:%M"),
        c.orders,
        c.stock,
        c.buckets,
        c.clients,
        c.runs
    );
    let mut medians = Vec::new();
    for n in &c.instances {
        let of: Vec<&ScaleRun> = runs.iter().filter(|r| r.instances == *n).collect();
        let rates: Vec<f64> = of.iter().map(|r| r.accepted_per_sec).collect();
        let rate = median(rates.clone()).unwrap_or(0.0);
        medians.push((*n, rate));
        let (lo, hi) = rates
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        let secs = median(of.iter().map(|r| r.sell_out_secs).collect()).unwrap_or(0.0);
        let p50 = median(of.iter().map(|r| r.latency_ms.p50).collect()).unwrap_or(0.0);
        let p99 = median(of.iter().map(|r| r.latency_ms.p99).collect()).unwrap_or(0.0);
        let waits: Vec<f64> = of.iter().filter_map(|r| r.lock_wait_ms_per_order).collect();
        let wait = median(waits).map_or("-".into(), |w| format!("{w:.2} ms"));
        let passed = of.iter().filter(|r| r.audit_ok()).count();
        let came_back = median(of.iter().map(|r| r.came_back as f64).collect()).unwrap_or(0.0);
        out += &format!(
            "| {n} | {:.0} ({:.0}–{:.0}) | {secs:.2} s | {p50:.1} ms | {p99:.1} ms | {wait} | {came_back:.0} | {passed} of {} passed |\n",
            rate,
            lo,
            hi,
            of.len()
        );
    }
    if let Some((first, base)) = medians.first().copied() {
        for (n, rate) in medians.iter().skip(1) {
            let ratio = if base > 0.0 { rate / base } else { 0.0 };
            out += &format!(
                "\n{n} instances / {first}: **{ratio:.2}x** the accepted rate (target ≥ 0.9x: {}).\n",
                if ratio >= 0.9 { "met" } else { "not met" }
            );
        }
    }
    out
}
