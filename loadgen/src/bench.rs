//! `surge-loadgen bench` (`./dev bench [--quick]`): Surge beside its peers, one after the
//! other on the same Postgres (synchronous commit on), under the same stepped open-loop load.
//!
//! Surge's whole pipeline runs (command API, relay, projector, query API; the relay and the
//! projector at a lower CPU priority, as `./dev` runs them) on a fresh database and topic
//! prefix of its own, as each peer gets a fresh database, with the per-client rate limits
//! raised (they are not what is measured). Surge is stepped to its knee ([`crate::knee`]),
//! then a short flash sale shows its audit, then (unless `--quick`) a mixed run. Then each
//! peer of `bench/peers/` (cqrs-es, esrs, esrs with its Kafka event bus) is stepped the same
//! way, and the table compares them. Every load client is this binary run again as a child,
//! at a higher CPU priority where that is allowed, exactly as `./dev` ran it.

use crate::children::{command, Children};
use anyhow::{bail, Context};
use clap::Args;
use sqlx::{ConnectOptions, Connection};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use surge_runtime::DatabaseConfig;

#[derive(Debug, Clone, Args)]
pub struct BenchConfig {
    /// Shorter steps (3 s instead of 5) and no mixed run.
    #[arg(long)]
    pub quick: bool,
    /// The `surge` binary (release) whose services are measured.
    #[arg(long)]
    pub surge_bin: PathBuf,
    /// Where the peers' binaries are (`peer-cqrs-es`, `peer-esrs`, built from `bench/peers`).
    #[arg(long)]
    pub peers_dir: PathBuf,
    /// The services' and peers' logs (default: `$SURGE_CACHE/run`).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Results (`bench-<time>.jsonl`, its HTML report) and the runs' reports.
    #[arg(long, default_value = "target/loadgen")]
    pub out_dir: PathBuf,
    /// The development database: the benchmark's databases are created beside it.
    #[command(flatten)]
    pub db: DatabaseConfig,
    #[arg(long, env = "SURGE_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,
    /// How many steps lower the CPU priority of the asynchronous pipeline (relay, projector) is:
    /// it catches up in the gaps, as it would on machines of its own. 0 turns this off.
    #[arg(long, env = "SURGE_BACKGROUND_NICE", default_value_t = 10)]
    pub background_nice: i32,
    /// Arrival rates of the knee steps (orders/s).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "100,200,300,450,700,1000,1500,2200,3200,4500"
    )]
    pub steps: Vec<u64>,
    /// Measure Surge only (the peers are skipped): comparing two builds of Surge, with
    /// `--surge-bin` naming the other one.
    #[arg(long)]
    pub surge_only: bool,
}

/// A peer of `bench/peers/`: its binary, where it listens, its database, extra arguments.
struct Peer {
    name: &'static str,
    binary: &'static str,
    port: u16,
    database: &'static str,
    log: &'static str,
    with_broker: bool,
}

const PEERS: [Peer; 3] = [
    Peer {
        name: "cqrs-es",
        binary: "peer-cqrs-es",
        port: 8090,
        database: "peer_cqrs_es",
        log: "peer-cqrs-es",
        with_broker: false,
    },
    Peer {
        name: "esrs",
        binary: "peer-esrs",
        port: 8091,
        database: "peer_esrs",
        log: "peer-esrs",
        with_broker: false,
    },
    // esrs again with its Kafka event bus (published after each commit, awaited), as Surge
    // publishes every event to Kafka too.
    Peer {
        name: "esrs+kafka",
        binary: "peer-esrs",
        port: 8091,
        database: "peer_esrs",
        log: "peer-esrs-kafka",
        with_broker: true,
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

pub async fn run(c: BenchConfig) -> anyhow::Result<()> {
    let secs = if c.quick { 3 } else { 5 };
    let steps = c.steps.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    let run_dir = c.run_dir.clone().unwrap_or_else(default_run_dir);
    let needed = [
        &c.surge_bin,
        &c.peers_dir.join("peer-cqrs-es"),
        &c.peers_dir.join("peer-esrs"),
    ];
    for p in needed.into_iter().take(if c.surge_only { 1 } else { 3 }) {
        if !p.is_file() {
            bail!("{} is missing (./dev bench builds it)", p.display());
        }
    }
    std::fs::create_dir_all(&c.out_dir)?;
    let results = absolute(&c.out_dir)?.join(format!("bench-{}.jsonl", chrono::Local::now().format("%Y%m%d-%H%M%S")));
    let results_arg = results.to_string_lossy().to_string();
    let out_dir = absolute(&c.out_dir)?.to_string_lossy().to_string();
    let client = Client::new()?;

    // Surge, on a database and topics of its own.
    let bench_db = fresh_database(&c.db, "surge_knee").await?;
    let surge_env = [
        ("SURGE_DATABASE_URL", bench_db.clone()),
        ("DATABASE_URL", bench_db.clone()),
        (
            "SURGE_TOPIC_PREFIX",
            format!("bench{}.", chrono::Utc::now().timestamp()),
        ),
        ("SURGE_RATE_LIMIT_PER_SEC", "1000000".into()),
        ("SURGE_RATE_LIMIT_BURST", "1000000".into()),
        ("SURGE_LOG_FORMAT", "json".into()),
    ];
    let status = command(&c.surge_bin, &["migrate"], 0)
        .envs(surge_env.iter().cloned())
        .status()
        .context("running surge migrate")?;
    if !status.success() {
        bail!("surge migrate on surge_knee failed ({status})");
    }
    let mut children = Children::new(&run_dir)?;
    say(&format!(
        "starting command API, relay, projector, query API (logs in {})",
        run_dir.display()
    ));
    for (name, nice) in [
        ("command-api", 0),
        ("relay", c.background_nice),
        ("projector", c.background_nice),
        ("query-api", 0),
    ] {
        let sub = if name == "projector" { "project" } else { name };
        let mut cmd = command(&c.surge_bin, &[sub], nice);
        cmd.envs(surge_env.iter().cloned());
        children.start(name, name, false, cmd)?;
    }
    for base in PIPELINE {
        wait_ready(&client.http, base, &run_dir).await?;
    }
    client
        .run(
            &surge_env,
            &[
                "knee",
                "--name",
                "surge",
                "--url",
                PIPELINE[0],
                "--steps",
                &steps,
                "--step-secs",
                &secs.to_string(),
                "--results",
                &results_arg,
            ],
            None,
        )
        .await?;
    say("Surge's audit after a flash sale (stock, oversell, store = answers = views)");
    client
        .run(
            &surge_env,
            &[
                "flash-sale",
                "--start-rate",
                "100",
                "--peak-rate",
                "1000",
                "--ramp-secs",
                "3",
                "--hold-secs",
                "3",
                "--hot-stock",
                "500",
                "--out-dir",
                &out_dir,
            ],
            Some(&|line| line.starts_with("== audit")),
        )
        .await?;
    if !c.quick {
        say("Surge under mixed traffic: orders over 500 SKUs (paid, cancelled), reads, an analyst's exports");
        client
            .run(
                &surge_env,
                &[
                    "mixed",
                    "--start-rate",
                    "100",
                    "--peak-rate",
                    "2000",
                    "--ramp-secs",
                    "3",
                    "--hold-secs",
                    "3",
                    "--export-every-secs",
                    "2",
                    "--out-dir",
                    &out_dir,
                ],
                Some(&|line| line.contains("arrivals in")),
            )
            .await?;
    }
    say("stopping the services");
    children.stop_all();

    let peers: &[Peer] = if c.surge_only { &[] } else { &PEERS };
    for peer in peers {
        let url = fresh_database(&c.db, peer.database).await?;
        let addr = format!("127.0.0.1:{}", peer.port);
        let mut args = vec![addr.clone(), url];
        if peer.with_broker {
            args.push(c.kafka_brokers.clone());
        }
        let log = children.log_path(peer.log);
        say(&format!("starting {} on {addr} (log: {})", peer.name, log.display()));
        children.start(
            peer.name,
            peer.log,
            false,
            command(c.peers_dir.join(peer.binary), &args, 0),
        )?;
        let base = format!("http://{addr}");
        wait_ready(&client.http, &base, &run_dir).await?;
        client
            .run(
                &[],
                &[
                    "knee",
                    "--name",
                    peer.name,
                    "--url",
                    &base,
                    "--steps",
                    &steps,
                    "--step-secs",
                    &secs.to_string(),
                    "--results",
                    &results_arg,
                ],
                None,
            )
            .await?;
        say(&format!("stopping {}", peer.name));
        children.stop_all();
    }
    say(&format!("comparison ({})", results.display()));
    crate::knee::table(crate::knee::TableConfig { results })
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
