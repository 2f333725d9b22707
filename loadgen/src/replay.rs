//! `surge-loadgen replay` (what `./dev bench-replay` runs): how fast `surge replay` rebuilds
//! every projection from the event store.
//!
//! It drives a `surge` binary given by path as child processes, so any build (the current one,
//! an older one) is measured the same way: a fresh database (`surge migrate --skip-topics`,
//! `surge seed --events N`), then `surge replay` several times on it (each run builds a new
//! generation of every view from the same events and switches to it). What is counted:
//! **events read by each projection's rebuild, summed over the projections, divided by the wall
//! time of the `surge replay` process** (start to exit: both projections one after the other,
//! each with its catch-up and switch). Per projection: its events over its own seconds, as its
//! report line says. The figure quoted is the median of the runs.

use anyhow::{bail, Context};
use clap::Args;
use serde::Serialize;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};
use std::path::PathBuf;
use std::process::Stdio;
use std::str::FromStr;
use std::time::Instant;

#[derive(Debug, Clone, Args)]
pub struct ReplayBenchConfig {
    /// The `surge` binary whose replay is measured.
    #[arg(long, env = "SURGE_BIN", default_value = "surge")]
    pub surge: PathBuf,
    /// The database the events are seeded into and the views rebuilt in. It is dropped and
    /// created again first (unless `--reuse`), so never the stack's own database.
    #[arg(long)]
    pub database_url: String,
    /// Events to seed (about: `surge seed` completes the orders it starts).
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Rebuilds measured; the median is quoted.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Measure on the events the database already holds (no drop, no seed).
    #[arg(long)]
    pub reuse: bool,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// What [`measure`] found.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayFigures {
    /// Events one rebuild reads: each projection's, summed.
    pub events: u64,
    /// Events per projection in one rebuild.
    pub events_per_projection: Vec<(String, u64)>,
    /// Each run's events/s: `events` over the wall time of its `surge replay` process.
    pub runs: Vec<f64>,
    /// Each run's wall time in seconds.
    pub wall_seconds: Vec<f64>,
    /// The median of `runs`.
    pub median_events_per_sec: f64,
    /// Per projection, the median over the runs of its events over its own seconds.
    pub per_projection: Vec<(String, f64)>,
    /// What is counted, in words.
    pub counted: String,
    /// The binary measured.
    pub surge: String,
}

/// One projection's line of `surge replay`'s output.
#[derive(Debug, Clone, PartialEq)]
struct ReportLine {
    projection: String,
    events: u64,
    seconds: f64,
}

/// Reads `<name>: <events> events folded (<n> while switching) in <s> s (<rate> events/s)`.
/// The seconds are printed with one decimal: they are taken from events over the rate, which
/// is printed to the unit.
fn parse_report_line(line: &str) -> Option<ReportLine> {
    let (projection, rest) = line.split_once(": ")?;
    let (events, rest) = rest.split_once(" events folded (")?;
    let events: u64 = events.trim().parse().ok()?;
    let rate = rest.rsplit_once(" (")?.1.strip_suffix(" events/s)")?;
    let rate: f64 = rate.trim().parse().ok()?;
    let seconds = if rate > 0.0 {
        events as f64 / rate
    } else {
        rest.split_once(") in ")?.1.split_once(" s (")?.0.parse().ok()?
    };
    Some(ReportLine {
        projection: projection.trim().to_string(),
        events,
        seconds,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Runs `surge <args>` against `url`, returns its standard output.
async fn surge(cfg: &ReplayBenchConfig, url: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(&cfg.surge)
        .args(args)
        .env("SURGE_DATABASE_URL", url)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .await
        .with_context(|| format!("running {} {}", cfg.surge.display(), args.join(" ")))?;
    if !out.status.success() {
        bail!("`surge {}` failed: {}", args.join(" "), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Drops and creates the database of `url` (connecting to `postgres` on the same server).
async fn fresh_database(url: &str) -> anyhow::Result<()> {
    let opts = PgConnectOptions::from_str(url).context("database URL")?;
    let name = opts
        .get_database()
        .context("the database URL names no database")?
        .to_string();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        bail!("database name {name:?}: only a-z, 0-9 and _ here");
    }
    if name == "surge" || name == "postgres" {
        bail!("refusing to drop the {name} database: give the benchmark a database of its own");
    }
    let mut admin = opts.database("postgres").connect().await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await?;
    admin.close().await?;
    Ok(())
}

/// Seeds (unless `reuse`) and rebuilds `runs` times; the figures of the runs.
pub async fn measure(cfg: &ReplayBenchConfig) -> anyhow::Result<ReplayFigures> {
    if cfg.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let url = cfg.database_url.as_str();
    if !cfg.reuse {
        fresh_database(url).await?;
        surge(cfg, url, &["migrate", "--skip-topics"]).await?;
        let seeded = Instant::now();
        surge(cfg, url, &["seed", "--events", &cfg.events.to_string()]).await?;
        eprintln!(
            "seeded about {} events in {:.1} s",
            cfg.events,
            seeded.elapsed().as_secs_f64()
        );
    }
    let mut runs = Vec::new();
    let mut walls = Vec::new();
    let mut per_run: Vec<Vec<ReportLine>> = Vec::new();
    for run in 1..=cfg.runs {
        let started = Instant::now();
        let out = surge(cfg, url, &["replay"]).await?;
        let wall = started.elapsed().as_secs_f64();
        let lines: Vec<ReportLine> = out.lines().filter_map(parse_report_line).collect();
        if lines.is_empty() {
            bail!("`surge replay` printed no report line:\n{out}");
        }
        let events: u64 = lines.iter().map(|l| l.events).sum();
        let rate = events as f64 / wall.max(1e-9);
        eprintln!(
            "run {run}/{}: {events} events in {wall:.2} s = {rate:.0} events/s ({})",
            cfg.runs,
            lines
                .iter()
                .map(|l| format!("{} {:.0}/s", l.projection, l.events as f64 / l.seconds.max(1e-9)))
                .collect::<Vec<_>>()
                .join(", ")
        );
        runs.push(rate);
        walls.push(wall);
        per_run.push(lines);
    }
    let first = &per_run[0];
    let per_projection = first
        .iter()
        .map(|l| {
            let rates = per_run
                .iter()
                .filter_map(|r| r.iter().find(|x| x.projection == l.projection))
                .map(|x| x.events as f64 / x.seconds.max(1e-9))
                .collect();
            (l.projection.clone(), median(rates))
        })
        .collect();
    Ok(ReplayFigures {
        events: first.iter().map(|l| l.events).sum(),
        events_per_projection: first.iter().map(|l| (l.projection.clone(), l.events)).collect(),
        median_events_per_sec: median(runs.clone()),
        runs,
        wall_seconds: walls,
        per_projection,
        counted: "events read by each projection's rebuild, summed over the projections, divided by the wall time \
                  of the `surge replay` process (all projections one after the other, catch-up and switch included)"
            .into(),
        surge: cfg.surge.display().to_string(),
    })
}

/// `surge-loadgen replay`: measures, prints the figures, writes them as JSON if asked.
pub async fn run(cfg: ReplayBenchConfig) -> anyhow::Result<()> {
    let f = measure(&cfg).await?;
    println!(
        "replay: median {:.0} events/s over {} runs (runs: {})",
        f.median_events_per_sec,
        f.runs.len(),
        f.runs.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", ")
    );
    println!("  counted: {}", f.counted);
    println!(
        "  one rebuild reads {} events: {}",
        f.events,
        f.events_per_projection
            .iter()
            .map(|(p, n)| format!("{p} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (p, rate) in &f.per_projection {
        println!("  {p}: median {rate:.0} events/s (its events over its own seconds)");
    }
    if let Some(path) = &cfg.out {
        std::fs::write(path, serde_json::to_vec_pretty(&f)?).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_report_line_of_surge_replay() {
        let l =
            parse_report_line("orders: 562347 events folded (12 while switching) in 27.4 s (20509 events/s)").unwrap();
        assert_eq!((l.projection.as_str(), l.events), ("orders", 562_347));
        assert!((l.seconds - 562_347.0 / 20_509.0).abs() < 1e-9);
        assert_eq!(parse_report_line("seeded 1000003 events over 200 SKUs"), None);
        assert_eq!(
            parse_report_line("catalog: would fold 5 events from Store into ..."),
            None
        );
    }

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }
}
