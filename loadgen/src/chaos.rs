//! `surge-loadgen chaos` (`./dev chaos`): faults under a flash sale, bounded, on loopback.
//!
//! A flash sale ramps 20x, 50 -> 1,000 orders/s, then holds; its clients retry unknown outcomes
//! (no answer, 503, 504) with the same idempotency key. Meanwhile, in turn: the relay, the
//! projector, the query API and the command API are killed with SIGKILL and restarted; the
//! command API's link to Postgres is cut and restored (it reaches Postgres through
//! `fault-proxy`, testkit/src/bin/fault-proxy.rs); Postgres (the postmaster) is killed with
//! SIGKILL and restarted; the Kafka broker is replaced (stopped, its data directory deleted,
//! started fresh: a new cluster with no topics and no consumer-group offsets; the relay does
//! not create topics, so `surge migrate` creates them again as an operator would, and the
//! projector sees the new cluster and heals its views from the event store); and the broker
//! is killed with SIGKILL and restarted. Then the audit (lost, duplicated, oversold, views =
//! fold of the store) must hold, the relay must empty the outbox (everything stored reached
//! the new broker), and every service must still be running.
//!
//! What only the machine's setup knows (where Postgres' data directory is, how the broker is
//! started) stays in `./dev`: this calls its `postgres-kill`, `postgres-up`, `broker-kill` and
//! `broker-up [--fresh]`.

use crate::bench::{default_run_dir, say, wait_ready, PIPELINE};
use crate::children::{command, Children};
use anyhow::{bail, Context};
use clap::Args;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use surge_runtime::DatabaseConfig;

#[derive(Debug, Clone, Args)]
pub struct ChaosConfig {
    /// The `surge` binary (release) whose services are put through the faults.
    #[arg(long)]
    pub surge_bin: PathBuf,
    /// The `fault-proxy` binary (surge-testkit) between the command API and Postgres.
    #[arg(long)]
    pub fault_proxy_bin: PathBuf,
    /// The `./dev` script, for what only it knows how to do: kill and start Postgres and the
    /// broker.
    #[arg(long)]
    pub dev: PathBuf,
    /// Where fault-proxy listens (the command API's way to Postgres).
    #[arg(long, default_value = "127.0.0.1:15432")]
    pub proxy_addr: std::net::SocketAddr,
    /// The services' logs (default: `$SURGE_CACHE/run`), all named `chaos-*.log`.
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// The flash sale's report goes to `<out-dir>/flash-sale-<run>/`.
    #[arg(long, default_value = "target/loadgen")]
    pub out_dir: PathBuf,
    /// The development database (the services' and the outbox's).
    #[command(flatten)]
    pub db: DatabaseConfig,
    /// How many steps lower the CPU priority of the relay and the projector is (0: off).
    #[arg(long, env = "SURGE_BACKGROUND_NICE", default_value_t = 10)]
    pub background_nice: i32,
}

/// What every service of the run gets: JSON logs, per-client rate limits out of the way (they
/// are not what is tested).
const SERVICE_ENV: [(&str, &str); 3] = [
    ("SURGE_LOG_FORMAT", "json"),
    ("SURGE_RATE_LIMIT_PER_SEC", "1000000"),
    ("SURGE_RATE_LIMIT_BURST", "1000000"),
];

/// The run: the services as children, the clock of the schedule.
struct Chaos {
    c: ChaosConfig,
    children: Children,
    via_proxy: String,
    t0: Instant,
}

impl Chaos {
    fn say(&self, what: &str) {
        say(&format!("t+{}s {what}", self.t0.elapsed().as_secs()));
    }

    /// Starts (or restarts) service `name`; its log is appended to.
    fn start(&mut self, name: &str) -> anyhow::Result<()> {
        let (sub, nice) = match name {
            "relay" => ("relay", self.c.background_nice),
            "projector" => ("project", self.c.background_nice),
            other => (other, 0),
        };
        let mut cmd = command(&self.c.surge_bin, &[sub], nice);
        cmd.envs(SERVICE_ENV);
        if name == "command-api" {
            cmd.env("SURGE_DATABASE_URL", &self.via_proxy);
        }
        self.children.start(name, &format!("chaos-{name}"), true, cmd)
    }

    fn kill(&mut self, name: &str) {
        self.say(&format!("kill -9 {name}"));
        self.children.kill(name);
    }

    /// Sleeps until `secs` after the load began.
    async fn at(&self, secs: u64) {
        let due = self.t0 + Duration::from_secs(secs);
        tokio::time::sleep_until(due.into()).await;
    }

    /// `./dev <args>`, which must succeed.
    fn dev(&self, args: &[&str]) -> anyhow::Result<()> {
        let status = std::process::Command::new(&self.c.dev)
            .args(args)
            .status()
            .with_context(|| format!("running {} {}", self.c.dev.display(), args.join(" ")))?;
        if !status.success() {
            bail!("{} {} failed ({status})", self.c.dev.display(), args.join(" "));
        }
        Ok(())
    }

    /// The topics again on a new broker: `surge migrate` (idempotent), retried while the new
    /// cluster's controller settles.
    async fn topics(&self, run_dir: &Path) -> anyhow::Result<()> {
        let log_path = run_dir.join("chaos-migrate.log");
        for _ in 0..10 {
            let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
            let status = std::process::Command::new(&self.c.surge_bin)
                .arg("migrate")
                .envs(SERVICE_ENV)
                .stdout(log.try_clone()?)
                .stderr(log)
                .status()?;
            if status.success() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        eprintln!("{}", tail(&log_path, 5));
        bail!("chaos: surge migrate could not create the topics on the new broker")
    }
}

pub async fn run(c: ChaosConfig) -> anyhow::Result<()> {
    let run_dir = c.run_dir.clone().unwrap_or_else(default_run_dir);
    for p in [&c.surge_bin, &c.fault_proxy_bin, &c.dev] {
        if !p.is_file() {
            bail!("{} is missing (./dev chaos builds it)", p.display());
        }
    }
    if std::net::TcpStream::connect_timeout(&c.proxy_addr, Duration::from_millis(500)).is_ok() {
        bail!("chaos: {} is taken (fault-proxy listens there)", c.proxy_addr);
    }
    let mut via_proxy = reqwest::Url::parse(c.db.expose_url()).context("the database URL does not parse")?;
    via_proxy
        .set_host(Some(&c.proxy_addr.ip().to_string()))
        .context("the database URL has no host")?;
    via_proxy
        .set_port(Some(c.proxy_addr.port()))
        .map_err(|()| anyhow::anyhow!("the database URL cannot have a port"))?;
    std::fs::create_dir_all(&run_dir)?;
    for entry in std::fs::read_dir(&run_dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with("chaos-") && name.ends_with(".log") {
            std::fs::remove_file(entry.path())?;
        }
    }
    let mut chaos = Chaos {
        children: Children::new(&run_dir)?,
        via_proxy: via_proxy.to_string(),
        t0: Instant::now(),
        c,
    };
    let proxy = command(
        &chaos.c.fault_proxy_bin,
        &[
            "--listen",
            &chaos.c.proxy_addr.to_string(),
            "--target",
            "127.0.0.1:5432",
        ],
        0,
    );
    chaos.children.start("fault-proxy", "chaos-fault-proxy", true, proxy)?;
    let proxy_log = chaos.children.log_path("chaos-fault-proxy");
    for _ in 0..50 {
        if std::fs::read_to_string(&proxy_log).is_ok_and(|l| l.contains("(up)")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for name in ["command-api", "relay", "projector", "query-api"] {
        chaos.start(name)?;
    }
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
    for base in PIPELINE {
        wait_ready(&http, base, &run_dir).await?;
    }

    let load_log = run_dir.join("chaos-loadgen.log");
    say(&format!(
        "flash sale: 50 -> 1,000 orders/s over 20 s, held 60 s (log: {})",
        load_log.display()
    ));
    let out_dir = std::env::current_dir()?.join(&chaos.c.out_dir);
    let log = std::fs::File::create(&load_log)?;
    let mut load = tokio::process::Command::new(std::env::current_exe()?)
        .args([
            "flash-sale",
            "--retry-unknown",
            "--start-rate",
            "50",
            "--peak-rate",
            "1000",
        ])
        .args([
            "--ramp-secs",
            "20",
            "--hold-secs",
            "60",
            "--max-requests",
            "90000",
            "--hot-stock",
            "35000",
        ])
        .arg("--out-dir")
        .arg(&out_dir)
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("starting the load")?;
    chaos.t0 = Instant::now();
    let pool = surge_runtime::db::connect(&DatabaseConfig {
        max_connections: 1,
        ..chaos.c.db.clone()
    })
    .await?;
    let sampler = tokio::spawn(sample_outbox(pool.clone(), run_dir.join("chaos-outbox.log"), chaos.t0));

    chaos.at(4).await;
    chaos.kill("relay");
    tokio::time::sleep(Duration::from_secs(3)).await;
    chaos.start("relay")?;
    chaos.at(9).await;
    chaos.kill("projector");
    tokio::time::sleep(Duration::from_secs(3)).await;
    chaos.start("projector")?;
    chaos.at(14).await;
    chaos.kill("query-api");
    tokio::time::sleep(Duration::from_secs(2)).await;
    chaos.start("query-api")?;
    chaos.at(19).await;
    chaos.kill("command-api");
    tokio::time::sleep(Duration::from_secs(2)).await;
    chaos.start("command-api")?;
    chaos.at(25).await;
    chaos.say("network cut: the command API's connections to Postgres dropped, new ones refused");
    chaos.children.signal("fault-proxy", "USR1")?;
    chaos.at(31).await;
    chaos.say("network restored");
    chaos.children.signal("fault-proxy", "USR2")?;
    chaos.at(35).await;
    chaos.say("kill -9 Postgres (the postmaster)");
    chaos.dev(&["postgres-kill"])?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    chaos.dev(&["postgres-up"])?;
    chaos.at(40).await;
    chaos.say("broker replaced: stopped, its data directory deleted, started as a new cluster");
    chaos.dev(&["broker-kill"])?;
    chaos.dev(&["broker-up", "--fresh"])?;
    chaos.topics(&run_dir).await?;
    chaos.say("topics created on the new broker (surge migrate)");
    chaos.at(58).await;
    chaos.say("kill -9 the Kafka broker");
    chaos.dev(&["broker-kill"])?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    chaos.dev(&["broker-up"])?;
    chaos.say("broker back");

    let load_ok = match tokio::time::timeout(Duration::from_secs(900), load.wait()).await {
        Ok(status) => status?.success(),
        Err(_) => false,
    };
    chaos.say("load and audit done");
    let output = std::fs::read_to_string(&load_log).unwrap_or_default();
    let from = output.lines().position(|l| l.starts_with("== flash sale")).unwrap_or(0);
    for line in output.lines().skip(from) {
        println!("{line}");
    }
    let report = output.lines().find_map(|l| {
        l.strip_prefix("report: ")
            .and_then(|r| r.strip_suffix("/report.{json,html}"))
            .map(|dir| PathBuf::from(dir).join("report.json"))
    });
    if let Some(line) = report.and_then(|r| std::fs::read(r).ok()).and_then(|r| peak(&r)) {
        println!("{line}");
    }
    let drained = outbox_drained(&pool, Duration::from_secs(180), &run_dir).await;
    sampler.abort();
    let dead = chaos.children.exited();
    chaos.children.stop_all();
    for name in &dead {
        let log = run_dir.join(format!("chaos-{name}.log"));
        println!("--- {name} exited on its own; the end of {}:", log.display());
        println!("{}", tail(&log, 5));
    }
    if !load_ok {
        bail!(
            "chaos: the load or its audit failed (above; log: {})",
            load_log.display()
        );
    }
    if !dead.is_empty() {
        bail!("chaos: services exited on their own: {}", dead.join(" "));
    }
    if !drained {
        bail!(
            "chaos: the relay did not publish the outbox to the new broker (log: {})",
            run_dir.join("chaos-relay.log").display()
        );
    }
    say("chaos: every process was killed once under a 20x ramp, the link cut, the broker replaced; the audit holds");
    Ok(())
}

/// Events stored and not yet published (`?` while Postgres does not answer).
async fn outbox_backlog(pool: &sqlx::PgPool) -> Option<i64> {
    let mut conn = pool.acquire().await.ok()?;
    surge_store::outbox::backlog(&mut conn).await.ok()
}

/// One line a second: t, rows in the outbox.
async fn sample_outbox(pool: sqlx::PgPool, path: PathBuf, t0: Instant) {
    let Ok(mut file) = std::fs::File::create(&path) else {
        return;
    };
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let left = outbox_backlog(&pool).await.map_or("?".to_string(), |n| n.to_string());
        let _ = writeln!(file, "t+{}s {left}", t0.elapsed().as_secs());
    }
}

/// After the load: the relay publishes everything stored (to the new broker) within `limit`.
async fn outbox_drained(pool: &sqlx::PgPool, limit: Duration, run_dir: &Path) -> bool {
    let started = Instant::now();
    loop {
        let left = outbox_backlog(pool).await;
        if left == Some(0) {
            println!(
                "   outbox: empty {} s after the load ended (the relay published everything stored)",
                started.elapsed().as_secs()
            );
            return true;
        }
        if started.elapsed() >= limit {
            println!(
                "   outbox: {} events still unpublished after {} s (samples: {})",
                left.map_or("?".to_string(), |n| n.to_string()),
                limit.as_secs(),
                run_dir.join("chaos-outbox.log").display()
            );
            return false;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The load's report: orders due and answered per second while the rate was at its peak.
fn peak(report: &[u8]) -> Option<String> {
    let r: Value = serde_json::from_slice(report).ok()?;
    let rates = &r["rates"];
    let (ramp, hold, rate) = (
        rates["ramp_secs"].as_u64()?,
        rates["hold_secs"].as_u64()?,
        rates["peak_rate"].as_u64()?,
    );
    let seconds: Vec<&Value> = r["timeline"]
        .as_array()?
        .iter()
        .filter(|s| s["op"] == "order" && (ramp..ramp + hold).contains(&s["t"].as_u64().unwrap_or(u64::MAX)))
        .collect();
    if seconds.is_empty() {
        return None;
    }
    let n = seconds.len() as f64;
    let sent: f64 = seconds.iter().filter_map(|s| s["sent"].as_u64()).sum::<u64>() as f64;
    let mut done: Vec<u64> = seconds
        .iter()
        .map(|s| s["ok"].as_u64().unwrap_or(0) + s["failed"].as_u64().unwrap_or(0))
        .collect();
    done.sort_unstable();
    let median = if done.len() % 2 == 1 {
        done[done.len() / 2] as f64
    } else {
        (done[done.len() / 2 - 1] + done[done.len() / 2]) as f64 / 2.0
    };
    Some(format!(
        "   peak ({rate}/s offered, {} s): orders due {:.0}/s (clones included); answered {:.0}/s on average, \
         median {median:.0}/s, best second {}/s, worst {}/s",
        seconds.len(),
        sent / n,
        done.iter().sum::<u64>() as f64 / n,
        done.last()?,
        done.first()?,
    ))
}

/// The last `n` lines of a log.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_peak_is_the_hold_phase_of_the_orders() {
        let report = serde_json::json!({
            "rates": {"ramp_secs": 2, "hold_secs": 3, "peak_rate": 100},
            "timeline": [
                {"t": 1, "op": "order", "sent": 10, "ok": 10, "failed": 0},
                {"t": 2, "op": "order", "sent": 100, "ok": 90, "failed": 5},
                {"t": 2, "op": "item", "sent": 7, "ok": 7, "failed": 0},
                {"t": 3, "op": "order", "sent": 100, "ok": 80, "failed": 0},
                {"t": 4, "op": "order", "sent": 100, "ok": 100, "failed": 0},
                {"t": 5, "op": "order", "sent": 1, "ok": 1, "failed": 0},
            ]
        });
        let line = super::peak(&serde_json::to_vec(&report).unwrap()).unwrap();
        assert_eq!(
            line,
            "   peak (100/s offered, 3 s): orders due 100/s (clones included); answered 92/s on average, \
             median 95/s, best second 100/s, worst 80/s"
        );
    }
}
