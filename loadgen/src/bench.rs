//! `surge-loadgen bench` (`./dev bench [--quick]`): Surge beside its peers, each run the same
//! way, several times, and the tables of docs/benchmarks.md written from what was measured.
//!
//! Targets ([`TARGETS`]): Surge's whole pipeline (command API and query API on the request
//! path; relay and projector, which the request path never waits for, at a lower CPU priority
//! as `./dev` runs them), and the peers of `bench/peers/`: cqrs-es and esrs each optimistic and
//! serialized (a per-aggregate in-process queue), esrs with its Kafka event bus, and plain
//! Postgres (a guarded `UPDATE` per order). For every run of every target:
//! a fresh database (and fresh topics for Surge); the target started; the Kafka broker at the
//! request path's CPU priority when the target waits for it, at the background one otherwise;
//! then [`crate::knee`] as a child process at a higher priority (seeding, `ANALYZE`,
//! `CHECKPOINT`, a quiet machine, the steps, the overload, the audit); then the target is
//! stopped. The targets' order rotates from run to run. The results file begins with a
//! header (date, commit, machine, Postgres settings); [`crate::table`] writes the tables.

use crate::children::{command, Children};
use crate::knee::Ladder;
use crate::table::{self, Header};
use anyhow::{bail, Context};
use clap::Args;
use sqlx::{ConnectOptions, Connection};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use surge_runtime::DatabaseConfig;

#[derive(Debug, Clone, Args)]
pub struct BenchConfig {
    /// Steps of 5 s instead of 10.
    #[arg(long)]
    pub quick: bool,
    /// Runs per target (the order of the targets rotates from run to run).
    #[arg(long, default_value_t = 3)]
    pub runs: u32,
    /// Only these targets (names as in the tables, comma-separated): e.g. `surge` to compare
    /// two builds of Surge, `--surge-bin` naming the other one.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// The `surge` binary (release) whose services are measured.
    #[arg(long)]
    pub surge_bin: PathBuf,
    /// Where the peers' binaries are (built from `bench/peers`).
    #[arg(long)]
    pub peers_dir: PathBuf,
    /// The services' and peers' logs (default: `$SURGE_CACHE/run`).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Results (`bench-<time>.jsonl`, its HTML report).
    #[arg(long, default_value = "target/loadgen")]
    pub out_dir: PathBuf,
    /// Write the tables into this file's generated part (docs/benchmarks.md)...
    #[arg(long)]
    pub docs: Option<PathBuf>,
    /// ...and the medians into this one's (README.md).
    #[arg(long)]
    pub readme: Option<PathBuf>,
    /// The first step's rate (orders/s).
    #[arg(long, default_value_t = 100)]
    pub start_rate: u64,
    /// Each step's rate over the one before (default 1.25; 1.4 with `--quick`).
    #[arg(long)]
    pub ratio: Option<f64>,
    #[arg(long, default_value_t = 24)]
    pub max_steps: usize,
    /// The latency target of a passing step (ms).
    #[arg(long, default_value_t = 50.0)]
    pub p99_ms: f64,
    /// The development database: the benchmark's databases are created beside it.
    #[command(flatten)]
    pub db: DatabaseConfig,
    #[arg(long, env = "SURGE_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,
    /// How many steps lower the CPU priority of what no request waits for is (Surge's relay
    /// and projector, the broker for targets that do not publish on the request path).
    #[arg(long, env = "SURGE_BACKGROUND_NICE", default_value_t = 10)]
    pub background_nice: i32,
}

/// How a target is started.
enum Launch {
    /// Surge's four services from `--surge-bin`.
    Surge,
    /// A peer binary of `bench/peers/` with `<addr> <database url>`, then `args`, then the
    /// brokers when `broker` (it publishes on the request path).
    Peer {
        binary: &'static str,
        args: &'static [&'static str],
        broker: bool,
    },
}

/// A target of the benchmark: its name in the tables, where it listens, its database.
pub struct Target {
    pub name: &'static str,
    port: u16,
    database: &'static str,
    launch: Launch,
}

pub const TARGETS: [Target; 7] = [
    Target {
        name: "surge",
        port: 8080,
        database: "surge_knee",
        launch: Launch::Surge,
    },
    Target {
        name: "cqrs-es",
        port: 8090,
        database: "peer_cqrs_es",
        launch: Launch::Peer {
            binary: "peer-cqrs-es",
            args: &[],
            broker: false,
        },
    },
    Target {
        name: "cqrs-es serialized",
        port: 8090,
        database: "peer_cqrs_es",
        launch: Launch::Peer {
            binary: "peer-cqrs-es",
            args: &["--serialized"],
            broker: false,
        },
    },
    Target {
        name: "esrs",
        port: 8091,
        database: "peer_esrs",
        launch: Launch::Peer {
            binary: "peer-esrs",
            args: &[],
            broker: false,
        },
    },
    Target {
        name: "esrs serialized",
        port: 8091,
        database: "peer_esrs",
        launch: Launch::Peer {
            binary: "peer-esrs",
            args: &["--serialized"],
            broker: false,
        },
    },
    // esrs publishing every event with its Kafka event bus after each commit and waiting for
    // the broker's ack (serialized, its faster form on a hot SKU), as Surge publishes every
    // event too (from its outbox, off the request path).
    Target {
        name: "esrs+kafka",
        port: 8091,
        database: "peer_esrs",
        launch: Launch::Peer {
            binary: "peer-esrs",
            args: &["--serialized"],
            broker: true,
        },
    },
    Target {
        name: "plain Postgres",
        port: 8092,
        database: "peer_plain_pg",
        launch: Launch::Peer {
            binary: "peer-plain-pg",
            args: &[],
            broker: false,
        },
    },
];

/// Surge's readiness endpoints: both APIs, the relay, the projector (its partitions assigned,
/// its lag known). Writes made once all answer are followed by the read side.
pub const PIPELINE: [&str; 4] = [
    "http://127.0.0.1:8080",
    "http://127.0.0.1:8081",
    "http://127.0.0.1:9101",
    "http://127.0.0.1:9102",
];

/// The targets of run `run` (0-based): the list rotated by `run`.
pub fn rotated<T: Clone>(targets: &[T], run: u32) -> Vec<T> {
    let mut v = targets.to_vec();
    if !v.is_empty() {
        let by = run as usize % v.len();
        v.rotate_left(by);
    }
    v
}

pub async fn run(c: BenchConfig) -> anyhow::Result<()> {
    measure(c).await.map(|_| ())
}

/// Runs the benchmark of `c` and writes its tables; the results file.
pub async fn measure(c: BenchConfig) -> anyhow::Result<PathBuf> {
    let targets: Vec<&Target> = TARGETS
        .iter()
        .filter(|t| c.only.is_empty() || c.only.iter().any(|o| o == t.name))
        .collect();
    if targets.is_empty() {
        bail!(
            "--only {:?} names no target (targets: {})",
            c.only,
            names(&TARGETS.iter().collect::<Vec<_>>())
        );
    }
    for t in &targets {
        let bin = match t.launch {
            Launch::Surge => c.surge_bin.clone(),
            Launch::Peer { binary, .. } => c.peers_dir.join(binary),
        };
        if !bin.is_file() {
            bail!("{} is missing (./dev bench builds it)", bin.display());
        }
    }
    let run_dir = c.run_dir.clone().unwrap_or_else(default_run_dir);
    std::fs::create_dir_all(&c.out_dir)?;
    let results = absolute(&c.out_dir)?.join(format!("bench-{}.jsonl", chrono::Utc::now().format("%Y%m%d-%H%M%S")));
    let step_secs = if c.quick { 5 } else { 10 };
    let ladder = Ladder {
        start_rate: c.start_rate,
        ratio: c.ratio.unwrap_or(if c.quick { 1.4 } else { 1.25 }),
        max_steps: c.max_steps,
    };
    let overload_secs = 10;
    let orders: Vec<Vec<String>> = (0..c.runs)
        .map(|r| rotated(&targets, r).iter().map(|t| t.name.to_string()).collect())
        .collect();
    let header = Header {
        date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        commit: commit(),
        machine: machine(),
        postgres: postgres_settings(&c.db).await?,
        quick: c.quick,
        step_secs,
        ladder: ladder.clone(),
        p99_ms: c.p99_ms,
        overload_secs,
        runs: c.runs,
        targets: targets.iter().map(|t| t.name.to_string()).collect(),
        orders: orders.clone(),
    };
    table::write_header(&results, &header)?;
    say(&format!(
        "{} run(s) of {} target(s), results in {}",
        c.runs,
        targets.len(),
        results.display()
    ));
    let client = Client::new()?;
    let mut children = Children::new(&run_dir)?;
    let started = Instant::now();
    let session = Session {
        c: &c,
        client: &client,
        run_dir: &run_dir,
        results: &results,
        step_secs,
        ladder: &ladder,
    };
    for r in 0..c.runs {
        for (position, t) in rotated(&targets, r).into_iter().enumerate() {
            say(&format!(
                "run {}/{}, {} ({}/{}; {:.0} min so far)",
                r + 1,
                c.runs,
                t.name,
                position + 1,
                targets.len(),
                started.elapsed().as_secs_f64() / 60.0
            ));
            let outcome = run_target(&session, t, &mut children, (r, position)).await;
            children.stop_all();
            if matches!(t.launch, Launch::Peer { broker: true, .. }) {
                procs_renice(c.background_nice);
            }
            outcome.with_context(|| format!("{} (run {})", t.name, r + 1))?;
        }
    }
    say(&format!(
        "comparison ({}; {:.0} min)",
        results.display(),
        started.elapsed().as_secs_f64() / 60.0
    ));
    // A run of some targets only, or of fewer than three runs, is no comparison to publish:
    // the documents keep the last full one.
    let partial = !c.only.is_empty() || c.runs < 3;
    if partial && (c.docs.is_some() || c.readme.is_some()) {
        say("--only or fewer than 3 runs: docs/benchmarks.md and README.md are left as they are");
    }
    table::table(table::TableConfig {
        results: results.clone(),
        docs: c.docs.clone().filter(|_| !partial),
        readme: c.readme.clone().filter(|_| !partial),
    })?;
    let (_, all) = table::read(&results)?;
    let failed: Vec<String> = all
        .iter()
        .filter(|r| !r.audit_ok())
        .map(|r| format!("{} (run {})", r.name, r.run + 1))
        .collect();
    if !failed.is_empty() {
        bail!("the audit failed for {}", failed.join(", "));
    }
    Ok(results)
}

fn names(targets: &[&Target]) -> String {
    targets.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
}

fn procs_renice(nice: i32) {
    if let Err(e) = crate::procs::renice_broker(nice) {
        println!("   could not set the broker's CPU priority to {nice}: {e:#}");
    }
}

/// What every run of every target shares.
struct Session<'a> {
    c: &'a BenchConfig,
    client: &'a Client,
    run_dir: &'a Path,
    results: &'a Path,
    step_secs: u64,
    ladder: &'a Ladder,
}

async fn run_target(
    session: &Session<'_>,
    t: &Target,
    children: &mut Children,
    (run, position): (u32, usize),
) -> anyhow::Result<()> {
    let Session {
        c,
        client,
        run_dir,
        results,
        step_secs,
        ladder,
    } = *session;
    let starting = Instant::now();
    let db = fresh_database(&c.db, t.database).await?;
    let base = format!("http://127.0.0.1:{}", t.port);
    let (audit, broker_cpu) = match t.launch {
        Launch::Surge => {
            start_surge(&c.surge_bin, &surge_env(&db), c.background_nice, children).await?;
            for base in PIPELINE {
                wait_ready(&client.http, base, run_dir).await?;
            }
            ("surge", true)
        }
        Launch::Peer { binary, args, broker } => {
            let mut argv: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            argv.push(format!("127.0.0.1:{}", t.port));
            argv.push(db.clone());
            if broker {
                argv.push(c.kafka_brokers.clone());
                // The broker is on this target's request path: the same priority as the rest of it.
                procs_renice(0);
            }
            let log = t.name.replace(' ', "-");
            children.start(t.name, &log, false, command(c.peers_dir.join(binary), &argv, 0))?;
            wait_ready(&client.http, &base, run_dir).await?;
            ("peer", broker)
        }
    };
    let mut args = vec![
        "knee".to_string(),
        "--name".into(),
        t.name.into(),
        "--url".into(),
        base,
        "--step-secs".into(),
        step_secs.to_string(),
        "--start-rate".into(),
        ladder.start_rate.to_string(),
        "--ratio".into(),
        ladder.ratio.to_string(),
        "--max-steps".into(),
        ladder.max_steps.to_string(),
        "--p99-ms".into(),
        c.p99_ms.to_string(),
        "--audit".into(),
        audit.into(),
        "--run".into(),
        run.to_string(),
        "--position".into(),
        position.to_string(),
        "--results".into(),
        results.to_string_lossy().to_string(),
    ];
    if broker_cpu {
        args.push("--broker-cpu".into());
    }
    println!("   started in {:.0} s", starting.elapsed().as_secs_f64());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut env = surge_env(&db);
    env.push(("SURGE_BENCH_TARGET_DATABASE_URL", db.clone()));
    client.run(&env, &args, None).await
}

/// Migrates the database of `env` and starts Surge's four services from `surge_bin` (the
/// relay and the projector `background_nice` steps lower), as `./dev` runs them; the caller
/// waits for them ([`PIPELINE`], [`wait_ready`]).
pub async fn start_surge(
    surge_bin: &Path,
    env: &[(&'static str, String)],
    background_nice: i32,
    children: &mut Children,
) -> anyhow::Result<()> {
    let status = command(surge_bin, &["migrate"], 0)
        .envs(env.iter().cloned())
        .status()
        .context("running surge migrate")?;
    if !status.success() {
        bail!("surge migrate failed ({status})");
    }
    for (name, nice) in [
        ("command-api", 0),
        ("relay", background_nice),
        ("projector", background_nice),
        ("query-api", 0),
    ] {
        let sub = if name == "projector" { "project" } else { name };
        let mut cmd = command(surge_bin, &[sub], nice);
        cmd.envs(env.iter().cloned());
        children.start(name, name, false, cmd)?;
    }
    Ok(())
}

/// The environment of Surge's services (and of the load client) on database `db`.
pub fn surge_env(db: &str) -> Vec<(&'static str, String)> {
    vec![
        ("SURGE_DATABASE_URL", db.to_string()),
        ("DATABASE_URL", db.to_string()),
        (
            "SURGE_TOPIC_PREFIX",
            format!("bench{}.", chrono::Utc::now().timestamp()),
        ),
        // Per-client rate limits are not what is measured.
        ("SURGE_RATE_LIMIT_PER_SEC", "1000000".into()),
        ("SURGE_RATE_LIMIT_BURST", "1000000".into()),
        ("SURGE_LOG_FORMAT", "json".into()),
    ]
}

/// The commit measured (`+changes` when the tree differs from it).
pub fn commit() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(rev) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{rev}+changes")
            } else {
                rev
            }
        }
        None => "unknown".into(),
    }
}

/// CPU model, cores and memory, from /proc.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kib: f64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0);
    format!("{model}, {cores} cores, {:.0} GiB", mem_kib / 1024.0 / 1024.0)
}

/// The Postgres settings that decide what a commit costs, as the server reports them.
async fn postgres_settings(admin: &DatabaseConfig) -> anyhow::Result<BTreeMap<String, String>> {
    let mut conn = admin
        .connect_options()?
        .connect()
        .await
        .context("connecting to the development database")?;
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, setting || coalesce(unit, '') FROM pg_settings WHERE name IN \
         ('server_version', 'synchronous_commit', 'fsync', 'wal_sync_method', 'full_page_writes', \
          'shared_buffers', 'autovacuum_naptime', 'max_connections')",
    )
    .fetch_all(&mut conn)
    .await?;
    conn.close().await?;
    let mut settings: BTreeMap<String, String> = rows.into_iter().collect();
    // shared_buffers comes in 8kB pages.
    if let Some(v) = settings.get_mut("shared_buffers") {
        if let Some(pages) = v.strip_suffix("8kB").and_then(|p| p.parse::<u64>().ok()) {
            *v = format!("{}MB", pages * 8 / 1024);
        }
    }
    Ok(settings)
}

/// `==> what`, in bold, as `./dev` says what it does.
pub fn say(what: &str) {
    println!("\x1b[1m==> {what}\x1b[0m");
}

/// `$SURGE_CACHE/run` (default `~/.cache/surge/run`), where `./dev` keeps its logs.
pub fn default_run_dir() -> PathBuf {
    let cache = std::env::var_os("SURGE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/surge"));
    cache.join("run")
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    Ok(std::env::current_dir()?.join(p))
}

/// Drops and creates `name` on the server of `admin` (whose own database stays); its URL.
pub async fn fresh_database(admin: &DatabaseConfig, name: &str) -> anyhow::Result<String> {
    let mut conn = admin
        .connect_options()?
        .connect()
        .await
        .context("connecting to the development database")?;
    // Database names are identifiers, not values: they cannot be bound. Only this module's
    // constants reach here.
    anyhow::ensure!(name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    let mut url = reqwest::Url::parse(admin.expose_url()).context("the database URL does not parse")?;
    url.set_path(name);
    Ok(url.to_string())
}

/// Waits (60 s at most) until `base/readyz` answers 2xx.
pub async fn wait_ready(http: &reqwest::Client, base: &str, run_dir: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let why = match http.get(format!("{base}/readyz")).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            let why: String = why.chars().take(300).collect();
            bail!("{base} did not become ready: {why} (logs in {})", run_dir.display());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs this binary's load scenarios as child processes, as `./dev` ran them: at a higher CPU
/// priority than what they measure where that is allowed (as root), so that the client's own
/// scheduling delays on a shared machine are not billed to the services.
pub struct Client {
    exe: PathBuf,
    raised: bool,
    pub http: reqwest::Client,
}

impl Client {
    pub fn new() -> anyhow::Result<Client> {
        let raised = std::process::Command::new("nice")
            .args(["-n", "-5", "true"])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        Ok(Client {
            exe: std::env::current_exe().context("finding this binary")?,
            raised,
            http: reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?,
        })
    }

    /// `surge-loadgen <args>` with `env`, until it ends; a failure is an error. With `from`,
    /// only its output from the first line `from` accepts on is shown (all of it when there is
    /// none); otherwise the output goes straight through.
    pub async fn run(
        &self,
        env: &[(&str, String)],
        args: &[&str],
        from: Option<&dyn Fn(&str) -> bool>,
    ) -> anyhow::Result<()> {
        let mut cmd = tokio::process::Command::from(command(&self.exe, args, if self.raised { -5 } else { 0 }));
        cmd.envs(env.iter().cloned()).kill_on_drop(true);
        let status = match from {
            None => cmd.status().await?,
            Some(from) => {
                let out = cmd.stderr(std::process::Stdio::inherit()).output().await?;
                let text = String::from_utf8_lossy(&out.stdout);
                let start = text.lines().position(from).unwrap_or(0);
                for line in text.lines().skip(start) {
                    println!("{line}");
                }
                out.status
            }
        };
        if !status.success() {
            bail!("surge-loadgen {} failed ({status})", args.first().unwrap_or(&""));
        }
        Ok(())
    }
}
