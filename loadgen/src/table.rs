//! `surge-loadgen table`: the results file of `./dev bench` (a header line, then one line per
//! run of a target, [`KneeResult`]) turned into the tables of docs/benchmarks.md and the one
//! sentence the README quotes, between generated markers, plus an HTML report with plots.
//! Nothing in those tables is typed by hand: each figure is a median (with min–max) over the
//! runs of the file, and the header says when, on which commit and machine, and with which
//! Postgres settings they were measured.

use super::knee::{ms, KneeResult, Ladder, Step, CLIENT_TIMEOUT, RECOVERY_LIMIT};
use super::report::{line_chart, Series};
use anyhow::Context;
use clap::Args;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Args)]
pub struct TableConfig {
    /// JSON lines written by `surge-loadgen bench` (a header, then `knee` results).
    #[arg(long)]
    pub results: PathBuf,
    /// Rewrite the generated part of this file (docs/benchmarks.md) with the tables.
    #[arg(long)]
    pub docs: Option<PathBuf>,
    /// Rewrite the generated sentence of this file (README.md) with the medians.
    #[arg(long)]
    pub readme: Option<PathBuf>,
}

/// How, when and where the runs of a results file were measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    /// UTC, when the benchmark began.
    pub date: String,
    pub commit: String,
    pub machine: String,
    /// Server version and the settings that decide what a commit costs.
    pub postgres: BTreeMap<String, String>,
    pub quick: bool,
    pub step_secs: u64,
    pub ladder: Ladder,
    pub p99_ms: f64,
    pub overload_secs: u64,
    pub runs: u32,
    /// Every target, in the order of the first run; then each run's order.
    pub targets: Vec<String>,
    pub orders: Vec<Vec<String>>,
}

#[derive(Serialize, Deserialize)]
struct HeaderLine {
    header: Header,
}

pub fn write_header(path: &Path, header: &Header) -> anyhow::Result<()> {
    let mut line = serde_json::to_string(&HeaderLine { header: header.clone() })?;
    line.push('\n');
    std::fs::write(path, line)?;
    Ok(())
}

pub fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// One target over its runs.
#[derive(Debug, Clone)]
pub struct Summary {
    pub name: String,
    pub runs: usize,
    pub knee_median: f64,
    pub knee_min: f64,
    pub knee_max: f64,
    pub cpu_per_1k_at_common: Option<f64>,
    pub overload_accepted_p99_ms: Option<f64>,
    pub overload_refused_share: Option<f64>,
    pub overload_refused_p99_ms: Option<f64>,
    /// Median recovery; runs that did not recover within the probe's limit count as the limit.
    pub overload_recovery_secs: Option<f64>,
    pub overload_unrecovered: usize,
    pub audit_failed: Vec<String>,
}

fn passed_at(r: &KneeResult, rate: u64) -> Option<&Step> {
    r.steps.iter().find(|s| s.rate == rate && s.passed)
}

/// The highest offered rate that every target passed in most of its runs.
pub fn common_rate(results: &[KneeResult], targets: &[String]) -> Option<u64> {
    let mut rates: Vec<u64> = results.iter().flat_map(|r| r.steps.iter().map(|s| s.rate)).collect();
    rates.sort_unstable();
    rates.dedup();
    rates.into_iter().rev().find(|rate| {
        targets.iter().all(|t| {
            let runs: Vec<&KneeResult> = results.iter().filter(|r| &r.name == t).collect();
            let passed = runs.iter().filter(|r| passed_at(r, *rate).is_some()).count();
            !runs.is_empty() && passed * 2 > runs.len()
        })
    })
}

pub fn summarize(results: &[KneeResult], targets: &[String]) -> (Vec<Summary>, Option<u64>) {
    let common = common_rate(results, targets);
    let summaries = targets
        .iter()
        .map(|t| {
            let runs: Vec<&KneeResult> = results.iter().filter(|r| &r.name == t).collect();
            let knees: Vec<f64> = runs.iter().map(|r| r.knee_accepted_per_sec).collect();
            let overloads: Vec<_> = runs.iter().filter_map(|r| r.overload.as_ref()).collect();
            let mut audit_failed: Vec<String> = runs
                .iter()
                .flat_map(|r| r.audit.iter().filter(|c| !c.ok).map(|c| c.check.clone()))
                .collect();
            audit_failed.sort();
            audit_failed.dedup();
            Summary {
                name: t.clone(),
                runs: runs.len(),
                knee_median: median(knees.clone()).unwrap_or(0.0),
                knee_min: knees.iter().copied().reduce(f64::min).unwrap_or(0.0),
                knee_max: knees.iter().copied().fold(0.0, f64::max),
                cpu_per_1k_at_common: common
                    .and_then(|rate| median(runs.iter().filter_map(|r| passed_at(r, rate)?.cpu_per_1k()).collect())),
                // An overload that accepted nothing counts at the client's timeout.
                overload_accepted_p99_ms: median(
                    overloads
                        .iter()
                        .map(|o| o.accepted_p99_ms.unwrap_or(CLIENT_TIMEOUT.as_secs_f64() * 1000.0))
                        .collect(),
                ),
                overload_refused_share: median(overloads.iter().map(|o| o.refused_share).collect()),
                overload_refused_p99_ms: median(overloads.iter().filter_map(|o| o.refused_p99_ms).collect()),
                overload_recovery_secs: median(
                    overloads
                        .iter()
                        .map(|o| o.recovery_secs.unwrap_or(RECOVERY_LIMIT.as_secs_f64()))
                        .collect(),
                ),
                overload_unrecovered: overloads.iter().filter(|o| o.recovery_secs.is_none()).count(),
                audit_failed,
            }
        })
        .collect();
    (summaries, common)
}

fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// The best peer (highest median knee among the peers whose every run passed its audit) and
/// Surge's ratio to it; none when Surge failed its audit or either side has no knee.
pub fn ratio(summaries: &[Summary]) -> Option<(&Summary, &Summary, f64)> {
    let surge = summaries.iter().find(|s| s.name == "surge")?;
    let best = summaries
        .iter()
        .filter(|s| s.name != "surge" && s.audit_failed.is_empty() && s.runs > 0)
        .max_by(|a, b| a.knee_median.total_cmp(&b.knee_median))?;
    let counts = surge.audit_failed.is_empty() && surge.knee_median > 0.0 && best.knee_median > 0.0;
    counts.then(|| (surge, best, surge.knee_median / best.knee_median))
}

fn command_of(h: &Header) -> &'static str {
    if h.quick {
        "./dev bench --quick"
    } else {
        "./dev bench"
    }
}

/// The generated part of docs/benchmarks.md.
pub fn markdown(h: &Header, results: &[KneeResult], source: &str) -> String {
    let (summaries, common) = summarize(results, &h.targets);
    let pg = |k: &str| h.postgres.get(k).map_or("?", String::as_str);
    let mut out = format!(
        "Measured by `{}` on {} (commit `{}`), results file `{source}`.\n\n\
         Machine: {}. PostgreSQL {}: `synchronous_commit` {}, `fsync` {}, `wal_sync_method` {}, \
         `full_page_writes` {}, `shared_buffers` {}. Load client, services, Postgres and the broker share the machine.\n\n\
         Steps of {} s from {}/s, each x{} the one before, until two in a row fail; a step passes when at least 99 % \
         of its orders are answered 202 or 422 and their p99 (from each order's due time) is at most {} ms. \
         {} run(s) per target, the order rotated from run to run.\n\n",
        command_of(h),
        h.date,
        h.commit,
        h.machine,
        pg("server_version"),
        pg("synchronous_commit"),
        pg("fsync"),
        pg("wal_sync_method"),
        pg("full_page_writes"),
        pg("shared_buffers"),
        h.step_secs,
        h.ladder.start_rate,
        h.ladder.ratio,
        h.p99_ms,
        h.runs,
    );
    let cpu_head = common.map_or("CPU s per 1k orders (no rate every target passed)".to_string(), |r| {
        format!("CPU s per 1k orders at {}/s", thousands(r as f64))
    });
    out += &format!(
        "| target | knee: accepted orders/s at p99 ≤ {} ms, median (min–max) | {cpu_head} | at 2x its knee for {} s: p99 of accepted orders | refused (p99 of the refusals) | answering within {} ms again after | audit |\n|---|---:|---:|---:|---:|---:|---|\n",
        h.p99_ms, h.overload_secs, h.p99_ms
    );
    for s in &summaries {
        let recovery = match (s.overload_recovery_secs, s.overload_unrecovered) {
            (None, _) => "-".to_string(),
            (Some(v), 0) => format!("{v:.1} s"),
            (Some(v), n) => format!("{v:.1} s ({n} run(s) not within {} s)", RECOVERY_LIMIT.as_secs()),
        };
        out += &format!(
            "| {} | **{}** ({}–{}) | {} | {} | {} ({}) | {} | {} |\n",
            s.name,
            thousands(s.knee_median),
            thousands(s.knee_min),
            thousands(s.knee_max),
            s.cpu_per_1k_at_common.map_or("-".into(), |v| format!("{v:.2}")),
            ms(s.overload_accepted_p99_ms),
            s.overload_refused_share
                .map_or("-".into(), |v| format!("{:.1} %", v * 100.0)),
            ms(s.overload_refused_p99_ms),
            recovery,
            if s.runs == 0 {
                "not run".to_string()
            } else if s.audit_failed.is_empty() {
                format!("ok ({} run(s))", s.runs)
            } else {
                format!("**failed**: {}", s.audit_failed.join("; "))
            },
        );
    }
    match ratio(&summaries) {
        Some((surge, best, r)) => {
            out += &format!(
                "\n**Surge / best peer ({}), median knees: {:.1}x** ({} / {} accepted orders/s; peers that failed an audit are not counted).\n",
                best.name,
                r,
                thousands(surge.knee_median),
                thousands(best.knee_median)
            )
        }
        None => out += "\nNo ratio: Surge failed its audit, or Surge or every peer that passed its audits has no passing step.\n",
    }
    out += "\nEach run (knee in accepted orders/s; the targets in the order they ran):\n\n| run | ";
    out += &h.targets.join(" | ");
    out += " |\n|---|";
    out += &"---:|".repeat(h.targets.len());
    out.push('\n');
    for (i, order) in h.orders.iter().enumerate() {
        out += &format!("| {} ({}) |", i + 1, order.join(", "));
        for t in &h.targets {
            let knee = results
                .iter()
                .find(|r| r.run as usize == i && &r.name == t)
                .map_or("-".to_string(), |r| thousands(r.knee_accepted_per_sec));
            out += &format!(" {knee} |");
        }
        out.push('\n');
    }
    out
}

/// The README's sentence: the medians and where the rest is.
pub fn summary_sentence(h: &Header, results: &[KneeResult]) -> String {
    let (summaries, _) = summarize(results, &h.targets);
    match ratio(&summaries) {
        Some((surge, best, r)) => format!(
            "On one hot SKU at p99 ≤ {} ms, Surge accepted **{}** orders/s and the best peer ({}) **{}**: **{:.1}x** \
             (medians of {} runs of `{}`, {}; every target, the conditions and the method in \
             [docs/benchmarks.md](docs/benchmarks.md)).\n",
            h.p99_ms,
            thousands(surge.knee_median),
            best.name,
            thousands(best.knee_median),
            r,
            h.runs,
            command_of(h),
            h.date.get(..10).unwrap_or(&h.date),
        ),
        None => format!(
            "The last `{}` ({}) found no ratio: see [docs/benchmarks.md](docs/benchmarks.md).\n",
            command_of(h),
            h.date
        ),
    }
}

#[cfg(test)]
const BEGIN: &str = "<!-- generated by ./dev bench: begin -->";
#[cfg(test)]
const END: &str = "<!-- generated by ./dev bench: end -->";

/// Replaces what is between the `./dev bench` generated markers of `path` with `text`.
pub fn replace_generated(path: &Path, text: &str) -> anyhow::Result<()> {
    replace_generated_between(path, "./dev bench", text)
}

/// Replaces what is between the markers `<!-- generated by {by}: begin -->` and `... end -->`
/// of `path` with `text` (each command that measures writes its own part).
pub fn replace_generated_between(path: &Path, by: &str, text: &str) -> anyhow::Result<()> {
    let (begin, end) = (
        format!("<!-- generated by {by}: begin -->"),
        format!("<!-- generated by {by}: end -->"),
    );
    let doc = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let (Some(b), Some(e)) = (doc.find(&begin), doc.find(&end)) else {
        anyhow::bail!("{} has no `{begin}` ... `{end}` markers", path.display());
    };
    anyhow::ensure!(b < e, "{}: the generated markers are out of order", path.display());
    let new = format!("{}{begin}\n{text}{}", &doc[..b], &doc[e..]);
    std::fs::write(path, new)?;
    Ok(())
}

pub fn read(results: &Path) -> anyhow::Result<(Header, Vec<KneeResult>)> {
    let text = std::fs::read_to_string(results).with_context(|| format!("reading {}", results.display()))?;
    let mut lines = text.lines();
    let header: HeaderLine = serde_json::from_str(lines.next().unwrap_or_default())
        .with_context(|| format!("{} does not begin with a header line", results.display()))?;
    let results = lines
        .map(|l| serde_json::from_str::<KneeResult>(l).context("a result line does not parse"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((header.header, results))
}

pub fn table(c: TableConfig) -> anyhow::Result<()> {
    let (header, results) = read(&c.results)?;
    let source = c
        .results
        .strip_prefix(std::env::current_dir()?)
        .unwrap_or(&c.results)
        .display()
        .to_string();
    let md = markdown(&header, &results, &source);
    print!("{md}");
    let report = c.results.with_extension("html");
    html_report(&results, &md, &report)?;
    println!("\nreport with plots: {}", report.display());
    if let Some(docs) = &c.docs {
        replace_generated(docs, &md)?;
        println!("wrote the tables of {}", docs.display());
    }
    if let Some(readme) = &c.readme {
        replace_generated(readme, &summary_sentence(&header, &results))?;
        println!("wrote the medians into {}", readme.display());
    }
    Ok(())
}

/// One SVG chart of a per-step figure against the offered rate, a line per run of a target.
fn chart(
    results: &[KneeResult],
    title: &str,
    y_desc: &str,
    y: impl Fn(&Step) -> f64,
    log: bool,
) -> anyhow::Result<String> {
    let names: Vec<&str> = results.iter().map(|r| r.name.as_str()).collect();
    let series: Vec<Series> = results
        .iter()
        .map(|r| Series {
            name: format!("{} #{}", r.name, r.run + 1),
            // A step stopped early (it could no longer pass) has figures of its first part only.
            points: r
                .steps
                .iter()
                .filter(|s| s.stopped_after_secs.is_none())
                .map(|s| (s.rate as f64, y(s)))
                .collect(),
            color: 1 + names.iter().position(|n| *n == r.name).unwrap_or(0),
            width: 2,
        })
        .collect();
    line_chart(title, "offered orders/s", y_desc, &series, log)
}

/// `bench-<time>.html` beside the results: the table and the plots, self-contained.
fn html_report(results: &[KneeResult], table: &str, path: &Path) -> anyhow::Result<()> {
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
        |s| s.p99_ms.min(60_000.0),
        true,
    )?;
    let rows: String = table
        .lines()
        .filter(|l| l.starts_with('|') && !l.starts_with("|---"))
        .map(|l| {
            let cells: String = l
                .trim_matches('|')
                .split('|')
                .map(|c| format!("<td>{}</td>", c.trim()))
                .collect();
            format!("<tr>{cells}</tr>")
        })
        .collect();
    let html = format!(
        "<!doctype html><html lang=\"en\"><meta charset=\"utf-8\"><title>Surge bench</title>\
         <style>body{{font:15px system-ui,sans-serif;margin:2rem}}table{{border-collapse:collapse}}td{{border:1px solid #ccc;padding:.3rem .6rem}}</style>\
         <h1>Surge and its peers</h1><table>{rows}</table><p>{accepted}</p><p>{p99}</p></html>"
    );
    std::fs::write(path, html)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(name: &str, run: u32, knee: f64, passed: &[u64], failed: &[u64]) -> KneeResult {
        let step = |rate: u64, passed: bool| Step {
            rate,
            passed,
            accepted: rate * 10,
            cpu_secs: rate as f64 / 100.0,
            ..Step::default()
        };
        KneeResult {
            name: name.into(),
            run,
            position: 0,
            p99_target_ms: 50.0,
            steps: passed
                .iter()
                .map(|r| step(*r, true))
                .chain(failed.iter().map(|r| step(*r, false)))
                .collect(),
            knee_rate: passed.last().copied(),
            knee_accepted_per_sec: knee,
            overload: None,
            audit: vec![crate::audit::check("nothing oversold", true, String::new())],
            prepared: vec![],
            notes: vec![],
            phase_secs: vec![],
        }
    }

    #[test]
    fn medians_ranges_and_the_common_rate_come_from_the_runs() {
        let targets = vec!["surge".to_string(), "plain".to_string()];
        let results = vec![
            result("surge", 0, 2000.0, &[100, 200, 400], &[800, 1000]),
            result("surge", 1, 1000.0, &[100, 200], &[400, 800]),
            result("surge", 2, 1900.0, &[100, 200, 400], &[800, 1000]),
            result("plain", 0, 300.0, &[100, 200], &[400, 800]),
            result("plain", 1, 200.0, &[100], &[200, 400]),
            result("plain", 2, 310.0, &[100, 200], &[400, 800]),
        ];
        // 200/s: passed by surge in 3 runs of 3, by plain in 2 of 3; 400/s: plain never.
        assert_eq!(common_rate(&results, &targets), Some(200));
        let (s, common) = summarize(&results, &targets);
        assert_eq!(common, Some(200));
        assert_eq!(
            (s[0].knee_median, s[0].knee_min, s[0].knee_max),
            (1900.0, 1000.0, 2000.0)
        );
        assert_eq!(s[1].knee_median, 300.0);
        // CPU at 200/s: 2 s per 2,000 accepted orders in every run that passed it.
        assert_eq!(s[0].cpu_per_1k_at_common, Some(1.0));
        let (_, best, r) = ratio(&s).unwrap();
        assert_eq!(best.name, "plain");
        assert!((r - 1900.0 / 300.0).abs() < 1e-9);
    }

    #[test]
    fn a_failed_audit_is_named_in_the_table() {
        let mut bad = result("plain", 0, 300.0, &[100], &[200, 300]);
        bad.audit
            .push(crate::audit::check("nothing oversold", false, "oversold 3".into()));
        let (s, _) = summarize(&[bad], &["plain".to_string()]);
        assert_eq!(s[0].audit_failed, vec!["nothing oversold".to_string()]);
    }

    #[test]
    fn the_generated_part_is_replaced_and_the_rest_kept() {
        let dir = std::env::temp_dir().join(format!("surge-table-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("doc.md");
        std::fs::write(&path, format!("# Title\n\n{BEGIN}\nold figures\n{END}\n\nafter\n")).unwrap();
        replace_generated(&path, "new figures\n").unwrap();
        let doc = std::fs::read_to_string(&path).unwrap();
        assert_eq!(doc, format!("# Title\n\n{BEGIN}\nnew figures\n{END}\n\nafter\n"));
        std::fs::write(&path, "no markers").unwrap();
        assert!(replace_generated(&path, "x").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn large_figures_get_thousands_separators() {
        assert_eq!(thousands(2196.4), "2,196");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
    }
}
