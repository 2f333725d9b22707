//! `surge-loadgen reads` answers "what does the cache buy, and what is left to buy": one run
//! measures, phase after phase and with the same client, four servers of the same read:
//!
//! 1. a bare axum handler without any middleware answering a fixed body of a cached item's
//!    size (`surge-loadgen bare-http`, [`crate::bare`]): the physical floor on this machine,
//!    the kernel's TCP and hyper;
//! 2. an empty handler behind the query API's middleware (`GET /healthz`);
//! 3. `GET /v1/catalog/items/{sku}` on the query API with its cache (every item read once
//!    before, so the phase reads hits);
//! 4. the same on a query API with the cache off (`SURGE_CACHE_ENABLED=false`).
//!
//! The client is `wrk` (a C client: one thread, keep-alive connections, closed loop), driven
//! by a generated Lua script that draws SKUs from a Zipf distribution, as shoppers' interest
//! is, and prints its figures as JSON from its `done` hook. The cost side is the serving
//! process's CPU time (utime + stime of `/proc/<pid>/stat`) over the phase divided by the reads
//! it answered, and the same with Postgres' CPU added (the read path). Phases run in rounds;
//! the report quotes each round and the medians. [`measure`] is the library entry point; the
//! `reads` subcommand ([`reads`], `./dev bench-reads`) prints and saves what it returns.

use anyhow::{bail, Context};
use clap::Args;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

#[derive(Debug, Clone, Args)]
pub struct ReadsConfig {
    #[arg(long, env = "SURGE_COMMAND_URL", default_value = ReadsConfig::COMMAND_URL)]
    pub command_url: String,
    /// Query API with its cache on.
    #[arg(long, env = "SURGE_QUERY_URL", default_value = ReadsConfig::QUERY_URL)]
    pub query_url: String,
    /// Query API with its cache off (`SURGE_CACHE_ENABLED=false`).
    #[arg(long, default_value = ReadsConfig::UNCACHED_QUERY_URL)]
    pub uncached_query_url: String,
    /// Process id of the cached query API (default: the process listening on its port).
    #[arg(long)]
    pub query_pid: Option<u32>,
    /// Process id of the uncached query API (default: the process listening on its port).
    #[arg(long)]
    pub uncached_query_pid: Option<u32>,
    /// Catalog items to seed and read.
    #[arg(long, default_value_t = ReadsConfig::ITEMS)]
    pub items: usize,
    /// Keep-alive connections kept busy per phase.
    #[arg(long, default_value_t = ReadsConfig::CONNECTIONS)]
    pub concurrency: usize,
    /// Client threads (`wrk -t`); one leaves the other core(s) to the server.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Measured seconds per phase (after one second of warm-up).
    #[arg(long, default_value_t = ReadsConfig::SECONDS)]
    pub seconds: u64,
    /// Rounds of the four phases; the report quotes the medians.
    #[arg(long, default_value_t = ReadsConfig::ROUNDS)]
    pub rounds: usize,
    /// The `wrk` binary (4.x; `./dev bench-reads` installs Debian's).
    #[arg(long, default_value = "wrk")]
    pub wrk: PathBuf,
    /// Where the JSON report (and the generated Lua script) goes.
    #[arg(long, default_value = "target/loadgen")]
    pub out_dir: PathBuf,
    #[command(flatten)]
    pub credentials: surge_cli::credentials::ClientAuth,
}

/// The defaults, written once: the command line shows them and [`ReadsConfig::new`] uses them.
impl ReadsConfig {
    pub const COMMAND_URL: &'static str = "http://127.0.0.1:8080";
    pub const QUERY_URL: &'static str = "http://127.0.0.1:8081";
    pub const UNCACHED_QUERY_URL: &'static str = "http://127.0.0.1:8082";
    pub const ITEMS: usize = 500;
    pub const CONNECTIONS: usize = 32;
    pub const SECONDS: u64 = 10;
    pub const ROUNDS: usize = 3;

    /// The command line's defaults (the local stack of `./dev bench-reads`), for a caller
    /// that runs [`measure`] as a library.
    pub fn new(credentials: surge_cli::credentials::ClientAuth, out_dir: PathBuf) -> Self {
        ReadsConfig {
            command_url: Self::COMMAND_URL.into(),
            query_url: Self::QUERY_URL.into(),
            uncached_query_url: Self::UNCACHED_QUERY_URL.into(),
            query_pid: None,
            uncached_query_pid: None,
            items: Self::ITEMS,
            concurrency: Self::CONNECTIONS,
            threads: 1,
            seconds: Self::SECONDS,
            rounds: Self::ROUNDS,
            wrk: "wrk".into(),
            out_dir,
            credentials,
        }
    }
}

/// What one phase of one round measured.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PhaseFigures {
    pub name: String,
    pub reads: u64,
    /// Connect, read, write errors, timeouts and answers >= 400, together.
    pub errors: u64,
    pub reads_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// CPU of the serving process (utime + stime) per read answered, in microseconds.
    pub serving_cpu_us_per_read: f64,
    /// The same plus Postgres' CPU (all its processes) per read: the whole read path.
    pub read_path_cpu_us_per_read: f64,
}

/// What [`measure`] returns: the medians per phase over the rounds, each round, and the ratios
/// the issue's targets are stated in.
#[derive(Debug, Clone, Serialize)]
pub struct ReadsFigures {
    /// Per phase, the median of each figure over the rounds (bare, trivial, cached, uncached).
    pub phases: Vec<PhaseFigures>,
    pub rounds: Vec<Vec<PhaseFigures>>,
    /// Uncached read-path CPU per read over cached: how many times cheaper a hit is (target >= 5).
    pub uncached_over_cached_cpu: f64,
    /// The same for the serving process alone (without Postgres).
    pub uncached_over_cached_serving_cpu: f64,
    /// Cached reads per second over uncached (closed loop, same client).
    pub cached_over_uncached_reads_per_sec: f64,
    /// Cached serving CPU per read over the bare handler's: what Surge adds to the floor.
    pub cached_over_bare_cpu: f64,
    /// Size of a cached item's body (the bare handler answers one as large).
    pub body_bytes: usize,
    /// The run's id: its SKUs are `LG<run>-<i>`, its files under `<out-dir>/reads-<run>/`.
    pub run: String,
    pub items: usize,
    pub connections: usize,
    pub threads: usize,
    pub seconds_per_phase: u64,
}

pub const PHASE_BARE: &str = "bare axum, no middleware";
pub const PHASE_TRIVIAL: &str = "empty handler + middleware (/healthz)";
pub const PHASE_CACHED: &str = "cached item";
pub const PHASE_UNCACHED: &str = "uncached item (cache off)";

/// utime + stime of one process, in seconds.
fn process_cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("process {pid} is gone"))?;
    Ok(stat_cpu_secs(&stat))
}

/// utime + stime of a `/proc/<pid>/stat` line (after the command name, which may hold spaces).
fn stat_cpu_secs(stat: &str) -> f64 {
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    // Linux's USER_HZ.
    (tick(11) + tick(12)) / 100.0
}

/// CPU seconds of all of Postgres' processes (backends reaped meanwhile through the postmaster).
fn postgres_cpu_secs() -> f64 {
    let sample = super::procs::CpuSample::now();
    super::procs::CpuSample::default()
        .usage(&sample, 0)
        .iter()
        .find(|r| r.process == "postgres")
        .map_or(0.0, |r| r.cpu_secs)
}

/// The port of an `http://host:port` URL (80 when none is written).
fn port_of(url: &str) -> anyhow::Result<u16> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("not a URL: {url}"))?;
    parsed.port_or_known_default().context("no port")
}

/// Socket inodes listening on `port` in a `/proc/net/tcp{,6}` table.
fn listening_inodes(table: &str, port: u16) -> Vec<String> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let local_port = cols.get(1)?.rsplit(':').next()?;
            let listening = cols.get(3) == Some(&"0A");
            (listening && u16::from_str_radix(local_port, 16).ok()? == port)
                .then(|| cols.get(9).map(|s| s.to_string()))?
        })
        .collect()
}

/// The process that listens on `port` on this machine (its network namespace).
pub fn pid_listening_on(port: u16) -> Option<u32> {
    let inodes: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .flat_map(|t| listening_inodes(&std::fs::read_to_string(t).unwrap_or_default(), port))
        .map(|i| format!("socket:[{i}]"))
        .collect();
    if inodes.is_empty() {
        return None;
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(link) = std::fs::read_link(fd.path()) {
                if inodes.iter().any(|i| link.as_os_str() == i.as_str()) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

/// The address a `bare-http` child printed once bound.
pub async fn listening_addr(child: &mut tokio::process::Child) -> anyhow::Result<String> {
    let out = child.stdout.take().context("the child's stdout is not piped")?;
    let mut lines = BufReader::new(out).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .context("bare-http did not start within 10 s")??
        .context("bare-http exited before listening")?;
    line.strip_prefix("listening on ")
        .map(str::to_string)
        .with_context(|| format!("unexpected first line from bare-http: {line}"))
}

/// The Lua script wrk runs: requests for `paths` drawn from a Zipf(1.1) distribution (each
/// request preformatted once per thread), and a `done` hook printing the figures as JSON.
pub fn wrk_script(paths: &[String]) -> String {
    let list = paths.iter().map(|p| format!("{p:?}")).collect::<Vec<_>>().join(",\n  ");
    format!(
        r#"-- Generated by surge-loadgen reads.
local paths = {{
  {list}
}}
local n = #paths
local cdf, total = {{}}, 0
for k = 1, n do total = total + 1 / k ^ 1.1; cdf[k] = total end
for k = 1, n do cdf[k] = cdf[k] / total end
local reqs = {{}}
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("seed", counter)
end

function init(args)
  math.randomseed(seed or 1)
  for k = 1, n do reqs[k] = wrk.format("GET", paths[k]) end
end

function request()
  local u = math.random()
  local lo, hi = 1, n
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  return reqs[lo]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\nSURGE_WRK {{"requests":%.0f,"duration_us":%.0f,"errors":%.0f,"p50_us":%.0f,"p99_us":%.0f}}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"#
    )
}

/// The `done` hook's figures.
#[derive(Debug, Deserialize, PartialEq)]
pub struct WrkFigures {
    pub requests: u64,
    pub duration_us: u64,
    pub errors: u64,
    pub p50_us: u64,
    pub p99_us: u64,
}

/// The `SURGE_WRK {...}` line of wrk's output.
pub fn parse_wrk(stdout: &str) -> anyhow::Result<WrkFigures> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("SURGE_WRK "))
        .with_context(|| format!("no figures in wrk's output:\n{stdout}"))?;
    Ok(serde_json::from_str(line)?)
}

async fn run_wrk(c: &ReadsConfig, base: &str, script: &std::path::Path, seconds: u64) -> anyhow::Result<WrkFigures> {
    let out = tokio::process::Command::new(&c.wrk)
        .args(["-t", &c.threads.max(1).to_string()])
        .args(["-c", &c.concurrency.max(c.threads).to_string()])
        .args(["-d", &format!("{seconds}s"), "--timeout", "5s", "-s"])
        .arg(script)
        .arg(base)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {} (./dev bench-reads installs it)", c.wrk.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk failed ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_wrk(&stdout)
}

/// One phase: a second of warm-up, then `seconds` measured, with the serving process's CPU
/// (and Postgres') read around the measured run.
async fn phase(
    c: &ReadsConfig,
    name: &str,
    base: &str,
    pid: u32,
    script: &std::path::Path,
) -> anyhow::Result<PhaseFigures> {
    run_wrk(c, base, script, 1).await?;
    let (cpu0, pg0) = (process_cpu_secs(pid)?, postgres_cpu_secs());
    let w = run_wrk(c, base, script, c.seconds).await?;
    let (cpu1, pg1) = (process_cpu_secs(pid)?, postgres_cpu_secs());
    let reads = w.requests.saturating_sub(w.errors).max(1) as f64;
    let serving = (cpu1 - cpu0).max(0.0);
    let postgres = (pg1 - pg0).max(0.0);
    Ok(PhaseFigures {
        name: name.to_string(),
        reads: w.requests,
        errors: w.errors,
        reads_per_sec: w.requests as f64 / (w.duration_us.max(1) as f64 / 1e6),
        p50_ms: w.p50_us as f64 / 1000.0,
        p99_ms: w.p99_us as f64 / 1000.0,
        serving_cpu_us_per_read: serving / reads * 1e6,
        read_path_cpu_us_per_read: (serving + postgres) / reads * 1e6,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Per phase (matched by position), the median of each figure over the rounds.
pub fn medians(rounds: &[Vec<PhaseFigures>]) -> Vec<PhaseFigures> {
    let Some(first) = rounds.first() else { return Vec::new() };
    (0..first.len())
        .map(|i| {
            let col = |f: fn(&PhaseFigures) -> f64| median(rounds.iter().filter_map(|r| r.get(i)).map(f).collect());
            PhaseFigures {
                name: first[i].name.clone(),
                reads: col(|p| p.reads as f64) as u64,
                errors: rounds.iter().filter_map(|r| r.get(i)).map(|p| p.errors).sum(),
                reads_per_sec: col(|p| p.reads_per_sec),
                p50_ms: col(|p| p.p50_ms),
                p99_ms: col(|p| p.p99_ms),
                serving_cpu_us_per_read: col(|p| p.serving_cpu_us_per_read),
                read_path_cpu_us_per_read: col(|p| p.read_path_cpu_us_per_read),
            }
        })
        .collect()
}

fn ratio(a: f64, b: f64) -> f64 {
    a / b.max(1e-12)
}

/// Seeds `c.items` catalog items through the command API, then runs `c.rounds` rounds of the
/// four phases against the running query APIs (and a `bare-http` child it starts itself).
pub async fn measure(c: &ReadsConfig) -> anyhow::Result<ReadsFigures> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let admin = c
        .credentials
        .client("loadgen", reqwest::Client::builder().timeout(Duration::from_secs(10)))?;
    let query_url = super::loopback(&c.query_url)?;
    let uncached_url = super::loopback(&c.uncached_query_url)?;
    let command_url = super::loopback(&c.command_url)?;
    for base in [&command_url, &query_url, &uncached_url] {
        surge_cli::demo::wait_ready(&http, base).await?;
    }
    let pid_of = |given: Option<u32>, url: &str| -> anyhow::Result<u32> {
        match given {
            Some(pid) => Ok(pid),
            None => pid_listening_on(port_of(url)?).with_context(|| format!("no process listens for {url}")),
        }
    };
    let query_pid = pid_of(c.query_pid, &query_url)?;
    let uncached_pid = pid_of(c.uncached_query_pid, &uncached_url)?;
    anyhow::ensure!(
        query_pid != uncached_pid,
        "the cached and uncached URLs are served by one process"
    );

    let run = super::run_id();
    println!("== Seeding {} items", c.items);
    let skus: Vec<String> = (0..c.items.max(1)).map(|i| format!("LG{run}-{i}")).collect();
    let items: Vec<(String, i64, &str)> = skus.iter().map(|s| (s.clone(), 100, "load")).collect();
    let token = super::seed_catalog(&admin, &command_url, &items).await?;
    let last = skus.last().cloned().unwrap_or_default();
    for base in [&query_url, &uncached_url] {
        super::wait_readable(&http, &format!("{base}/v1/catalog/items/{last}"), token).await?;
    }
    // Every item read once, so the cached phase reads hits from its first request.
    let mut body_bytes = 0;
    for sku in &skus {
        let r = http.get(format!("{query_url}/v1/catalog/items/{sku}")).send().await?;
        anyhow::ensure!(r.status().is_success(), "reading {sku}: {}", r.status());
        body_bytes = r.bytes().await?.len();
    }
    let r = http.get(format!("{query_url}/v1/catalog/items/{last}")).send().await?;
    let x_cache = r.headers().get("x-cache").and_then(|v| v.to_str().ok()).unwrap_or("-");
    anyhow::ensure!(
        x_cache == "hit",
        "{query_url} does not serve from its cache (x-cache: {x_cache})"
    );

    let mut bare = tokio::process::Command::new(std::env::current_exe()?)
        .args([
            "bare-http",
            "--addr",
            "127.0.0.1:0",
            "--body-bytes",
            &body_bytes.to_string(),
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting surge-loadgen bare-http")?;
    let bare_url = format!("http://{}", listening_addr(&mut bare).await?);
    let bare_pid = bare.id().context("bare-http exited")?;

    let dir = c.out_dir.join(format!("reads-{run}"));
    std::fs::create_dir_all(&dir)?;
    let item_paths: Vec<String> = skus.iter().map(|s| format!("/v1/catalog/items/{s}")).collect();
    let items_script = dir.join("items.lua");
    std::fs::write(&items_script, wrk_script(&item_paths))?;
    let health_script = dir.join("healthz.lua");
    std::fs::write(&health_script, wrk_script(&["/healthz".to_string()]))?;
    let phases = [
        (PHASE_BARE, &bare_url, bare_pid, &items_script),
        (PHASE_TRIVIAL, &query_url, query_pid, &health_script),
        (PHASE_CACHED, &query_url, query_pid, &items_script),
        (PHASE_UNCACHED, &uncached_url, uncached_pid, &items_script),
    ];

    let waited = super::procs::wait_until_quiet(0.10, Duration::from_secs(30)).await;
    println!("== machine quiet after {:.0} s", waited.as_secs_f64());
    let mut rounds = Vec::new();
    for round in 1..=c.rounds.max(1) {
        let mut figures = Vec::new();
        for (name, base, pid, script) in &phases {
            println!(
                "== round {round}: {name}: wrk -t{} -c{} for {} s",
                c.threads, c.concurrency, c.seconds
            );
            figures.push(phase(c, name, base, *pid, script).await?);
        }
        rounds.push(figures);
    }
    let _ = bare.kill().await;

    let phases = medians(&rounds);
    let (bare, cached, uncached) = (&phases[0], &phases[2], &phases[3]);
    Ok(ReadsFigures {
        uncached_over_cached_cpu: ratio(uncached.read_path_cpu_us_per_read, cached.read_path_cpu_us_per_read),
        uncached_over_cached_serving_cpu: ratio(uncached.serving_cpu_us_per_read, cached.serving_cpu_us_per_read),
        cached_over_uncached_reads_per_sec: ratio(cached.reads_per_sec, uncached.reads_per_sec),
        cached_over_bare_cpu: ratio(cached.serving_cpu_us_per_read, bare.serving_cpu_us_per_read),
        phases,
        rounds,
        body_bytes,
        run,
        items: c.items,
        connections: c.concurrency,
        threads: c.threads,
        seconds_per_phase: c.seconds,
    })
}

fn print_table(title: &str, phases: &[PhaseFigures]) {
    println!("\n{title}");
    println!(
        "{:<40} {:>10} {:>7} {:>8} {:>8} {:>12} {:>14}",
        "phase", "reads/s", "errors", "p50 ms", "p99 ms", "serving us", "+postgres us"
    );
    for p in phases {
        println!(
            "{:<40} {:>10.0} {:>7} {:>8.2} {:>8.2} {:>12.1} {:>14.1}",
            p.name,
            p.reads_per_sec,
            p.errors,
            p.p50_ms,
            p.p99_ms,
            p.serving_cpu_us_per_read,
            p.read_path_cpu_us_per_read
        );
    }
}

/// `surge-loadgen reads`: [`measure`], then each round's table, the medians and the ratios,
/// and `<out-dir>/reads-<run>/report.json`.
pub async fn reads(c: ReadsConfig) -> anyhow::Result<()> {
    let f = measure(&c).await?;
    for (i, round) in f.rounds.iter().enumerate() {
        print_table(&format!("round {}", i + 1), round);
    }
    print_table(&format!("medians of {} rounds", f.rounds.len()), &f.phases);
    println!(
        "\nCPU per read (serving process + Postgres), uncached / cached = {:.1}x  (serving process alone: {:.1}x)",
        f.uncached_over_cached_cpu, f.uncached_over_cached_serving_cpu
    );
    println!(
        "reads/s, cached / uncached = {:.2}x;  serving CPU per read, cached / bare axum = {:.2}x",
        f.cached_over_uncached_reads_per_sec, f.cached_over_bare_cpu
    );
    let dir = c.out_dir.join(format!("reads-{}", f.run));
    let report = serde_json::json!({
        "scenario": "reads",
        "client": "wrk",
        "figures": f,
        "machine": {"cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)},
        "date": chrono::Utc::now().to_rfc3339(),
    });
    std::fs::write(dir.join("report.json"), serde_json::to_vec_pretty(&report)?)?;
    println!("report: {}", dir.join("report.json").display());
    if f.phases.iter().any(|p| p.errors > 0) {
        bail!("some requests failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_figures_are_read_from_the_done_hook_line() {
        let out = "Running 1s test @ http://127.0.0.1:1\n  1 threads and 2 connections\n\nSURGE_WRK {\"requests\":1200,\"duration_us\":1000000,\"errors\":3,\"p50_us\":410,\"p99_us\":2100}\n";
        assert_eq!(
            parse_wrk(out).unwrap(),
            WrkFigures {
                requests: 1200,
                duration_us: 1_000_000,
                errors: 3,
                p50_us: 410,
                p99_us: 2100
            }
        );
        assert!(parse_wrk("Running 1s test\n").is_err());
    }

    #[test]
    fn listening_sockets_are_found_by_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0\n   1: 0100007F:1F91 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0\n   2: 0100007F:1F92 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4444 1 0\n";
        assert_eq!(listening_inodes(table, 8081), vec!["4242".to_string()]);
        assert_eq!(listening_inodes(table, 8082), vec!["4444".to_string()]);
        assert!(listening_inodes(table, 8083).is_empty());
    }

    #[tokio::test]
    async fn this_process_is_found_listening_on_its_port() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(pid_listening_on(port), Some(std::process::id()));
    }

    #[test]
    fn cpu_time_is_utime_plus_stime() {
        let stat = "42 (surge query) S 1 42 42 0 -1 4194304 100 0 0 0 250 50 30 20 20 0 1 0";
        assert_eq!(stat_cpu_secs(stat), 3.0);
        assert!(process_cpu_secs(std::process::id()).unwrap() >= 0.0);
    }

    fn figures(name: &str, rps: f64, cpu: f64) -> PhaseFigures {
        PhaseFigures {
            name: name.into(),
            reads: rps as u64,
            errors: 1,
            reads_per_sec: rps,
            p50_ms: 1.0,
            p99_ms: 2.0,
            serving_cpu_us_per_read: cpu,
            read_path_cpu_us_per_read: cpu * 2.0,
        }
    }

    #[test]
    fn medians_are_per_phase_over_the_rounds() {
        let rounds = vec![
            vec![figures("a", 100.0, 9.0), figures("b", 10.0, 90.0)],
            vec![figures("a", 300.0, 7.0), figures("b", 30.0, 70.0)],
            vec![figures("a", 200.0, 50.0), figures("b", 20.0, 80.0)],
        ];
        let m = medians(&rounds);
        assert_eq!(m.len(), 2);
        assert_eq!(
            (m[0].name.as_str(), m[0].reads_per_sec, m[0].serving_cpu_us_per_read),
            ("a", 200.0, 9.0)
        );
        assert_eq!((m[1].reads_per_sec, m[1].read_path_cpu_us_per_read), (20.0, 160.0));
        assert_eq!(m[0].errors, 3, "errors add up");
    }

    /// The generated script runs in the real wrk against a real server (skipped where wrk is
    /// not installed), and its `done` hook's figures parse.
    #[tokio::test]
    async fn the_generated_script_drives_wrk() {
        if std::process::Command::new("wrk").arg("-v").output().is_err() {
            // `./dev test` installs wrk and requires it; a bare `cargo test` may lack it.
            assert!(
                std::env::var_os("SURGE_REQUIRE_WRK").is_none(),
                "wrk is required (SURGE_REQUIRE_WRK) but not installed"
            );
            eprintln!("wrk not installed; skipped");
            return;
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(crate::bare::serve(listener, 100));
        let dir = std::env::temp_dir().join(format!("surge-reads-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("t.lua");
        let paths: Vec<String> = (0..20).map(|i| format!("/v1/catalog/items/S-{i}")).collect();
        std::fs::write(&script, wrk_script(&paths)).unwrap();
        let auth = surge_cli::credentials::ClientAuth {
            token: None,
            jwt_secret: None,
        };
        let c = ReadsConfig {
            concurrency: 2,
            ..ReadsConfig::new(auth, dir.clone())
        };
        let w = run_wrk(&c, &format!("http://{addr}"), &script, 1).await.unwrap();
        assert!(w.requests > 100, "{w:?}");
        assert_eq!(w.errors, 0);
        assert!(w.p50_us > 0 && w.p99_us >= w.p50_us, "{w:?}");
        server.abort();
        let _ = std::fs::remove_dir_all(dir);
    }
}
