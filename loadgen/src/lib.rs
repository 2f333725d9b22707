//! `surge-loadgen`: tooling beside the product. Bounded load against running services on
//! loopback, the audit after each run, a report; and the orchestration of `./dev bench` and
//! `./dev chaos`. It talks to Surge as a client would (HTTP) and reads the event store only
//! through `surge-store`; it is never linked into the `surge` binary.
//!
//! Open-loop scenarios ([`driver`]: arrivals on a schedule, latency from each request's due
//! time) are `flash-sale` (1x -> 20x on one hot SKU), `checkout` (many SKUs, multi-line orders,
//! payments and cancellations), `browse` (catalog reads, Zipf-distributed) and `mixed`
//! (checkout + browse + an analyst's exports) in [`scenarios`] and [`flash_sale`]. Each run
//! ends with the [`audit`] (stock never negative, answers = event store = views) and leaves a
//! [`report`] (JSON + HTML with plots) under `target/loadgen/<scenario>-<run>/`, with the CPU
//! each process of the stack spent per 1k operations ([`procs`]). `reads` ([`reads`]) is the
//! closed-loop cache comparison; `knee` ([`knee`]: one run of one target) and `table`
//! ([`table`]: the tables of docs/benchmarks.md) the side-by-side benchmark with the peers of
//! `bench/peers/`. [`bench`] runs that whole benchmark (Surge's stack and each
//! peer as child processes, [`children`]); [`chaos`] kills and cuts every part of the stack in
//! turn under a flash sale.

pub mod audit;
pub mod bare;
pub mod bench;
pub mod chaos;
pub mod children;
pub mod driver;
pub mod flash_sale;
pub mod knee;
pub mod moonshot;
pub mod procs;
pub mod reads;
pub mod replay;
pub mod report;
pub mod scale;
pub mod scenarios;
pub mod scrape;
pub mod table;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use driver::{send, Answer, RateArgs, Recorder};
use futures::future::join_all;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use surge_runtime::DatabaseConfig;

#[derive(Debug, Parser)]
#[command(
    name = "surge-loadgen",
    version,
    about = "Load, benchmarks and chaos against a local Surge (loopback only), each run audited"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// An open-loop flash sale (ramp to 20x on one hot SKU), then an audit of the outcome.
    FlashSale(flash_sale::FlashSaleConfig),
    /// Open-loop checkouts over many SKUs (1-3 lines each), some paid, some cancelled; audit.
    Checkout(scenarios::CheckoutConfig),
    /// Open-loop catalog reads: items by SKU (Zipf) and pages of a category; audit.
    Browse(scenarios::BrowseConfig),
    /// Checkouts and reads on one schedule, plus an analyst's export every few seconds; audit.
    Mixed(scenarios::MixedConfig),
    /// Cached item reads vs uncached vs a trivial handler, closed loop, in one run.
    Reads(reads::ReadsConfig),
    /// The physical reference of `reads`: one axum route, no middleware, a fixed JSON body.
    BareHttp(bare::BareConfig),
    /// One run of one target (Surge or a peer): stepped open-loop load to its knee at the
    /// latency target, an overload at twice the knee, an audit.
    Knee(knee::KneeConfig),
    /// The tables of a `bench` results file (medians over the runs); optionally written into
    /// docs/benchmarks.md and README.md.
    Table(table::TableConfig),
    /// The side-by-side benchmark of `./dev bench`: Surge's stack and each peer, on fresh
    /// databases, each run several times in rotating order; then the tables.
    Bench(bench::BenchConfig),
    /// `./dev chaos`: every process of the stack killed in turn, the link to Postgres cut, the
    /// broker replaced, under a 20x flash sale; then the audit.
    Chaos(chaos::ChaosConfig),
    /// `./dev bench-scale`: one hot SKU in stock buckets sold through 1 and through 3 command
    /// API instances, several runs; the accepted rates, latencies and lock waits compared.
    Scale(scale::ScaleConfig),
    /// `./dev bench-moonshot`: issue 17's targets (the hot-SKU knee and its CPU, shedding at
    /// twice the knee, reads, replay, event-to-view latency, memory), several runs each; the
    /// table of docs/benchmarks.md.
    Moonshot(moonshot::MoonshotConfig),
    /// `./dev bench-replay`: `surge replay` of a seeded event store, several runs; the median
    /// events/s of the whole rebuild and per projection.
    Replay(replay::ReplayBenchConfig),
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::FlashSale(c) => flash_sale::run(c).await,
        Command::Checkout(c) => scenarios::checkout_run(c).await,
        Command::Browse(c) => scenarios::browse_run(c).await,
        Command::Mixed(c) => scenarios::mixed_run(c).await,
        Command::Reads(c) => reads::reads(c).await,
        Command::BareHttp(c) => bare::run(c).await,
        Command::Knee(c) => knee::knee(c).await,
        Command::Table(c) => table::table(c),
        Command::Bench(c) => bench::run(c).await,
        Command::Chaos(c) => chaos::run(c).await,
        Command::Scale(c) => scale::run(c).await,
        Command::Moonshot(c) => moonshot::run(c).await,
        Command::Replay(c) => replay::run(c).await,
    }
}

/// Where an open-loop scenario sends its load, where its audit looks, where its report goes.
#[derive(Debug, Clone, Args)]
pub struct Target {
    #[arg(long, env = "SURGE_COMMAND_URL", default_value = "http://127.0.0.1:8080")]
    pub command_url: String,
    #[arg(long, env = "SURGE_QUERY_URL", default_value = "http://127.0.0.1:8081")]
    pub query_url: String,
    /// The event store and views, for the audit.
    #[command(flatten)]
    pub db: DatabaseConfig,
    #[command(flatten)]
    pub credentials: surge_cli::credentials::ClientAuth,
    /// Reports go to `<out-dir>/<scenario>-<run>/`.
    #[arg(long, default_value = "target/loadgen")]
    pub out_dir: PathBuf,
}

/// Load goes to this machine only: any other host is refused. The URL, without a trailing `/`.
pub fn loopback(url: &str) -> anyhow::Result<String> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("not a URL: {url}"))?;
    let host = parsed.host_str().unwrap_or_default();
    let local = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !local {
        bail!("surge-loadgen only loads this machine (127.0.0.1, ::1, localhost), not {host}");
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// A short id that names a run's SKUs, keys and report directory.
pub fn run_id() -> String {
    format!("{:X}", chrono::Utc::now().timestamp_millis() % 0x1000_0000)
}

/// Adds catalog items (`sku`, stock, category) through the command API, 16 at a time; the
/// highest consistency token answered (0 from a target that gives none).
pub async fn seed_catalog(
    http: &reqwest::Client,
    command_url: &str,
    items: &[(String, i64, &str)],
) -> anyhow::Result<i64> {
    let mut token = 0;
    for chunk in items.chunks(16) {
        let posts = chunk.iter().map(|(sku, stock, category)| {
            http.post(format!("{command_url}/v1/catalog/items"))
                .json(&json!({"sku": sku, "name": format!("Item {sku}"), "category": category,
                              "price": {"minor": 1999, "currency": "EUR"}, "initial_stock": stock}))
                .send()
        });
        for (r, (sku, _, _)) in join_all(posts).await.into_iter().zip(chunk) {
            let r = r.with_context(|| format!("seeding {sku} on {command_url}"))?;
            if r.status().as_u16() != 201 {
                bail!("seeding {sku} on {command_url}: {}", r.status());
            }
            let body: Value = r.json().await.unwrap_or_default();
            token = token.max(body["consistency_token"].as_i64().unwrap_or(0));
        }
    }
    Ok(token)
}

/// Waits until `url` answers 2xx at least as fresh as `token` (read-your-writes).
pub async fn wait_readable(http: &reqwest::Client, url: &str, token: i64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(r) = http
            .get(url)
            .header("x-consistency-token", token.to_string())
            .send()
            .await
        {
            if r.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{url} did not become readable")
}

/// Distinct shoppers the load comes from; each signs in as itself (rate limits and order
/// ownership are per customer).
pub const SHOPPERS: u64 = 1000;

/// The clients' side of a run: one HTTP client, the shoppers' tokens, and what was answered
/// to the orders, for the audit.
pub struct Shop {
    pub target: Target,
    pub scenario: &'static str,
    pub run: String,
    /// A time before the run's first order (the audit looks at orders since).
    pub since: chrono::DateTime<chrono::Utc>,
    cpu_before: procs::CpuSample,
    pub http: reqwest::Client,
    pub command_url: String,
    pub query_url: String,
    tokens: Vec<Option<String>>,
    pub recorder: Arc<Recorder>,
    accepted: Mutex<HashMap<String, HashSet<String>>>,
    unknown: AtomicU64,
    /// Retry an unknown answer (no answer, 503 or 504) with the same idempotency key.
    pub retry_unknown: bool,
}

impl Shop {
    /// Checks both APIs are ready; issues the shoppers' tokens (without the local secret,
    /// every request carries the tool's own token).
    pub async fn open(target: &Target, scenario: &'static str) -> anyhow::Result<Shop> {
        let http = target.credentials.client(
            "loadgen",
            reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .pool_max_idle_per_host(512),
        )?;
        let command_url = loopback(&target.command_url)?;
        let query_url = loopback(&target.query_url)?;
        surge_cli::demo::wait_ready(&http, &command_url).await?;
        surge_cli::demo::wait_ready(&http, &query_url).await?;
        let tokens = (0..SHOPPERS)
            .map(|i| {
                target
                    .credentials
                    .issue(&shopper(i), surge_runtime::Role::Customer)
                    .ok()
            })
            .collect();
        Ok(Shop {
            target: target.clone(),
            scenario,
            run: run_id(),
            since: chrono::Utc::now() - chrono::Duration::seconds(1),
            cpu_before: procs::CpuSample::default(),
            http,
            command_url,
            query_url,
            tokens,
            recorder: Recorder::new(),
            accepted: Mutex::new(HashMap::new()),
            unknown: AtomicU64::new(0),
            retry_unknown: false,
        })
    }

    /// Marks the start of the load (after seeding): the schedule's zero and the CPU baseline.
    pub fn begin(&mut self) {
        self.recorder = Recorder::new();
        self.cpu_before = procs::CpuSample::now();
    }

    fn as_shopper(&self, req: reqwest::RequestBuilder, n: u64) -> reqwest::RequestBuilder {
        match &self.tokens[(n % SHOPPERS) as usize] {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// `POST /v1/orders` for shopper `n`, due at `due`, recorded as `order`.
    pub async fn place(&self, due: Instant, key: String, n: u64, lines: Value) -> Answer {
        let body = json!({"customer_id": shopper(n), "lines": lines});
        let url = format!("{}/v1/orders", self.command_url);
        let attempt = || async {
            let req = self.http.post(&url).header("idempotency-key", &key).json(&body);
            let answer = send(self.as_shopper(req, n), true).await;
            match answer.status {
                // No answer, 503 (unavailable, overloaded) and 504 (outcome unknown: the
                // commit's fate could not be learned) may each have taken effect or not; the
                // same key makes the retry safe and returns the first outcome if it did.
                None | Some(503) | Some(504) if self.retry_unknown => Err(answer),
                _ => Ok(answer),
            }
        };
        // Bounded by time as well as by count: long enough to outlast a restart of Postgres
        // or the broker under load, short enough that a run always ends.
        let policy = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(2))
            .with_max_times(if self.retry_unknown { 40 } else { 0 })
            .with_total_delay(Some(Duration::from_secs(45)))
            .with_jitter();
        let answer = self
            .recorder
            .time("order", due, async {
                use backon::Retryable;
                attempt.retry(policy).await.unwrap_or_else(|a| a)
            })
            .await;
        match answer.status {
            Some(202) => {
                let id = answer.body["order_id"].as_str().unwrap_or_default().to_string();
                self.accepted
                    .lock()
                    .expect("accepted lock")
                    .entry(key)
                    .or_default()
                    .insert(id);
            }
            None | Some(500..) => {
                self.unknown.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        answer
    }

    /// A follow-up on an accepted order of shopper `n`: `payment` or `cancel`, sent now.
    pub async fn follow_up(&self, op: &'static str, order_id: &str, n: u64) -> Answer {
        let req = match op {
            "pay" => self
                .http
                .post(format!("{}/v1/orders/{order_id}/payment", self.command_url))
                .json(&json!({"payment_token": "tok_visa_4242"})),
            _ => self
                .http
                .post(format!("{}/v1/orders/{order_id}/cancel", self.command_url)),
        };
        let req = self.as_shopper(req, n);
        self.recorder.time(op, Instant::now(), send(req, false)).await
    }

    /// An anonymous read of the query API (`path` after the base URL), recorded as `op`.
    pub async fn read(&self, op: &'static str, due: Instant, path: &str) -> Answer {
        let req = self.http.get(format!("{}{path}", self.query_url));
        self.recorder.time(op, due, send(req, false)).await
    }

    /// The answers to the orders, for the audit: key -> order ids, and how many never came.
    pub fn answers(&self) -> (HashMap<String, HashSet<String>>, u64) {
        (
            self.accepted.lock().expect("accepted lock").clone(),
            self.unknown.load(Ordering::Relaxed),
        )
    }
}

pub fn shopper(n: u64) -> String {
    format!("shopper-{}", n % SHOPPERS)
}

impl Shop {
    /// Everything after the load: the audit over the run's SKUs (plus the scenario's own
    /// checks), the CPU per process, the report. Fails when the audit fails.
    pub async fn conclude(
        &self,
        rates: &RateArgs,
        arrivals: u64,
        skus: &[String],
        mut extra_checks: Vec<audit::Check>,
        details: Value,
    ) -> anyhow::Result<PathBuf> {
        let seconds = self.recorder.started().elapsed().as_secs_f64();
        let memory = procs::memory_now();
        let pool = surge_runtime::db::connect(&self.target.db).await?;
        let (accepted, unknown) = self.answers();
        let scope = audit::Scope {
            skus,
            since: self.since,
            accepted: &accepted,
            unknown,
            patience: Duration::from_secs(60),
        };
        let mut checks = audit::audit(&pool, &scope).await?;
        checks.append(&mut extra_checks);
        let (ops, timeline) = self.recorder.summary();
        let answered: u64 = ops.iter().map(|o| o.ok + o.failed).sum();
        let cpu = self.cpu_before.usage(&procs::CpuSample::now(), answered);
        let server = procs::server_secs(&cpu);
        let report = report::RunReport {
            scenario: self.scenario.to_string(),
            run: self.run.clone(),
            started_at: self.since,
            seconds,
            rates: Some(rates.clone()),
            arrivals,
            ops,
            timeline,
            server_cpu_per_1k_ops: (answered > 0).then(|| server / answered as f64 * 1000.0),
            cpu,
            audit: checks,
            event_to_view: Some(audit::event_to_view(&pool, &accepted, self.recorder.started()).await),
            memory,
            details,
        };
        report.finish(&self.target.out_dir)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn load_goes_to_loopback_only() {
        assert_eq!(
            super::loopback("http://127.0.0.1:8080/").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert!(super::loopback("http://localhost:8081").is_ok());
        assert!(super::loopback("http://[::1]:8081").is_ok());
        assert!(super::loopback("http://10.0.0.5:8080").is_err());
        assert!(super::loopback("https://shop.example.com").is_err());
        assert!(super::loopback("not a url").is_err());
    }
}
