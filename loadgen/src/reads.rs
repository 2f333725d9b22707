//! `surge-loadgen reads` answers "what does the cache buy": one run measures, one after the
//! other and with the same client, a trivial axum handler (`/healthz` behind the same
//! middleware), `GET /v1/catalog/items/{sku}` on a query API with its cache, and the same on a
//! query API with the cache off. SKUs are drawn from a Zipf distribution, as shoppers'
//! interest is. Each phase is closed-loop (N connections, each sends when its last answer
//! came): that measures the most a server answers per second; latencies are reported next to
//! it, and the CPU each process spent per 1,000 reads (the cost side of the same comparison).

use anyhow::bail;
use clap::Args;
use futures::future::join_all;
use hdrhistogram::Histogram;
use rand::SeedableRng;
use rand_distr::{Distribution, Zipf};
use serde::Serialize;
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Args)]
pub struct ReadsConfig {
    #[arg(long, env = "SURGE_COMMAND_URL", default_value = "http://127.0.0.1:8080")]
    pub command_url: String,
    /// Query API with its cache on.
    #[arg(long, env = "SURGE_QUERY_URL", default_value = "http://127.0.0.1:8081")]
    pub query_url: String,
    /// Query API with its cache off (`SURGE_CACHE_ENABLED=false`).
    #[arg(long, default_value = "http://127.0.0.1:8082")]
    pub uncached_query_url: String,
    /// Catalog items to seed and read.
    #[arg(long, default_value_t = 500)]
    pub items: usize,
    /// Connections kept busy per phase.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Measured seconds per phase (after one second of warm-up).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Where the JSON report goes.
    #[arg(long, default_value = "target/loadgen")]
    pub out_dir: PathBuf,
    #[command(flatten)]
    pub credentials: surge_cli::credentials::ClientAuth,
}

/// What one phase measured.
#[derive(Debug, Serialize)]
pub struct PhaseReport {
    pub name: String,
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub requests_per_sec: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// CPU seconds of each process of the stack during the phase, per 1k reads.
    pub cpu: Vec<super::procs::ProcessCpu>,
    /// CPU of the read path (query API and Postgres; not this client) per read, in ms.
    pub server_cpu_ms_per_read: f64,
}

/// Keeps `concurrency` requests in flight for `seconds`, each to a URL from `pick`.
async fn phase(
    http: &reqwest::Client,
    name: &str,
    urls: &[String],
    concurrency: usize,
    seconds: u64,
) -> anyhow::Result<PhaseReport> {
    let run_for = |secs: f64, measure: bool| {
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        let workers = (0..concurrency).map(move |w| {
            let http = http.clone();
            async move {
                let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
                let (mut ok, mut errors) = (0u64, 0u64);
                let mut rng = rand::rngs::SmallRng::seed_from_u64(w as u64);
                let zipf = Zipf::new(urls.len() as u64, 1.1).expect("valid zipf");
                while Instant::now() < deadline {
                    let url = &urls[(zipf.sample(&mut rng) as usize).saturating_sub(1).min(urls.len() - 1)];
                    let t0 = Instant::now();
                    let good = match http.get(url).send().await {
                        Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                        Err(_) => false,
                    };
                    if measure {
                        let _ = hist.record(t0.elapsed().as_micros().max(1) as u64);
                        if good {
                            ok += 1;
                        } else {
                            errors += 1;
                        }
                    }
                }
                (hist, ok, errors)
            }
        });
        join_all(workers)
    };
    run_for(1.0, false).await;
    let started = Instant::now();
    let cpu_before = super::procs::CpuSample::now();
    let results = run_for(seconds as f64, true).await;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = super::procs::CpuSample::now();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut ok, mut errors) = (0, 0);
    for (h, o, e) in results {
        hist.add(&h)?;
        ok += o;
        errors += e;
    }
    let cpu = cpu_before.usage(&cpu_after, ok);
    // The read path only: the query API and Postgres (not the relay, projector or broker,
    // which may be catching up on something else meanwhile).
    let read_path: f64 = cpu
        .iter()
        .filter(|p| matches!(p.process.as_str(), "surge query-api" | "postgres"))
        .map(|p| p.cpu_secs)
        .sum();
    let server_cpu_ms_per_read = read_path / ok.max(1) as f64 * 1000.0;
    Ok(PhaseReport {
        name: name.to_string(),
        requests: ok,
        errors,
        seconds: elapsed,
        requests_per_sec: ok as f64 / elapsed,
        p50_us: hist.value_at_quantile(0.5),
        p90_us: hist.value_at_quantile(0.9),
        p99_us: hist.value_at_quantile(0.99),
        p999_us: hist.value_at_quantile(0.999),
        max_us: hist.max(),
        cpu,
        server_cpu_ms_per_read,
    })
}

pub async fn reads(c: ReadsConfig) -> anyhow::Result<()> {
    // Shoppers browse anonymously; only seeding the catalog needs the admin's token.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(c.concurrency)
        .timeout(Duration::from_secs(10))
        .build()?;
    let admin = c
        .credentials
        .client("loadgen", reqwest::Client::builder().timeout(Duration::from_secs(10)))?;
    let run = format!("{:X}", chrono::Utc::now().timestamp_millis() % 0x1000_0000);
    for base in [&c.command_url, &c.query_url, &c.uncached_query_url] {
        super::loopback(base)?;
        surge_cli::demo::wait_ready(&http, base.trim_end_matches('/')).await?;
    }
    println!("== Seeding {} items", c.items);
    let skus: Vec<String> = (0..c.items.max(1)).map(|i| format!("LG{run}-{i}")).collect();
    let items: Vec<(String, i64, &str)> = skus.iter().map(|s| (s.clone(), 100, "load")).collect();
    let token = super::seed_catalog(&admin, &c.command_url, &items).await?;
    let last = skus.last().cloned().unwrap_or_default();
    super::wait_readable(&http, &format!("{}/v1/catalog/items/{last}", c.query_url), token).await?;
    super::wait_readable(
        &http,
        &format!("{}/v1/catalog/items/{last}", c.uncached_query_url),
        token,
    )
    .await?;

    let item_urls =
        |base: &str| -> Vec<String> { skus.iter().map(|s| format!("{base}/v1/catalog/items/{s}")).collect() };
    let phases = [
        (
            "trivial handler (GET /healthz)",
            vec![format!("{}/healthz", c.query_url)],
        ),
        ("cached item (GET /v1/catalog/items/{sku})", item_urls(&c.query_url)),
        ("uncached item (cache off)", item_urls(&c.uncached_query_url)),
    ];
    let mut reports = Vec::new();
    let waited = super::procs::wait_until_quiet(0.10, Duration::from_secs(90)).await;
    println!("== machine quiet after {:.0} s", waited.as_secs_f64());
    for (name, urls) in &phases {
        println!("== {name}: {} connections for {} s", c.concurrency, c.seconds);
        reports.push(phase(&http, name, urls, c.concurrency, c.seconds).await?);
    }
    println!();
    println!(
        "{:<44} {:>10} {:>8} {:>9} {:>9} {:>9} {:>16}",
        "phase", "req/s", "errors", "p50 ms", "p99 ms", "max ms", "server CPU us/op"
    );
    for r in &reports {
        println!(
            "{:<44} {:>10.0} {:>8} {:>9.2} {:>9.2} {:>9.2} {:>16.1}",
            r.name,
            r.requests_per_sec,
            r.errors,
            r.p50_us as f64 / 1000.0,
            r.p99_us as f64 / 1000.0,
            r.max_us as f64 / 1000.0,
            r.server_cpu_ms_per_read * 1000.0
        );
    }
    let (trivial, cached, uncached) = (&reports[0], &reports[1], &reports[2]);
    let cached_vs_uncached = cached.requests_per_sec / uncached.requests_per_sec.max(1e-9);
    let cached_vs_trivial = cached.requests_per_sec / trivial.requests_per_sec.max(1e-9);
    let cost_uncached_vs_cached = uncached.server_cpu_ms_per_read / cached.server_cpu_ms_per_read.max(1e-12);
    println!("\ncached / uncached = {cached_vs_uncached:.2}x    cached / trivial = {cached_vs_trivial:.2}x");
    println!("serving CPU per read, uncached / cached = {cost_uncached_vs_cached:.2}x (the query API and Postgres; not the client)");

    let dir = c.out_dir.join(format!("reads-{run}"));
    std::fs::create_dir_all(&dir)?;
    let report = json!({
        "scenario": "reads",
        "items": c.items,
        "concurrency": c.concurrency,
        "seconds_per_phase": c.seconds,
        "phases": reports,
        "ratios": {"cached_vs_uncached": cached_vs_uncached, "cached_vs_trivial": cached_vs_trivial,
                   "server_cpu_per_read_uncached_vs_cached": cost_uncached_vs_cached},
        "machine": {"cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)},
    });
    std::fs::write(dir.join("report.json"), serde_json::to_vec_pretty(&report)?)?;
    println!("report: {}", dir.join("report.json").display());
    if reports.iter().any(|r| r.errors > 0) {
        bail!("some requests failed");
    }
    Ok(())
}
