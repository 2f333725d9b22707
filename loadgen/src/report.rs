//! What a run leaves behind: a summary on standard output, and `report.json` plus a
//! self-contained `report.html` (SVG charts drawn with plotters: throughput, latency and
//! event-to-view latency over the run's seconds, then the tables) under
//! `target/loadgen/<scenario>-<run>/`.

use super::audit::{Check, EventToView};
use super::driver::{OpSummary, RateArgs, SecondSummary};
use super::procs::{ProcessCpu, ProcessMemory};
use anyhow::bail;
use chrono::{DateTime, Utc};
use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    pub scenario: String,
    pub run: String,
    pub started_at: DateTime<Utc>,
    pub seconds: f64,
    pub rates: Option<RateArgs>,
    /// Scheduled arrivals sent (follow-up requests, like a payment after an order, come on top).
    pub arrivals: u64,
    pub ops: Vec<OpSummary>,
    pub timeline: Vec<SecondSummary>,
    /// CPU seconds of each process of the stack during the run, per 1k operations.
    pub cpu: Vec<ProcessCpu>,
    /// The serving side's CPU (every process but the load client) per 1k operations.
    pub server_cpu_per_1k_ops: Option<f64>,
    pub audit: Vec<Check>,
    /// Store commit -> orders view row commit of the run's orders, in ms (PostgreSQL's commit
    /// timestamps); `None` in reports from before it was measured.
    #[serde(default)]
    pub event_to_view: Option<EventToView>,
    /// Resident memory of each process of the stack when the load ended (KiB).
    #[serde(default)]
    pub memory: Vec<ProcessMemory>,
    /// What is particular to the scenario (its SKUs, shares, exports).
    pub details: serde_json::Value,
}

impl RunReport {
    /// Prints the summary, writes the report files, and fails when the audit failed.
    pub fn finish(&self, out_dir: &Path) -> anyhow::Result<PathBuf> {
        self.print();
        let dir = out_dir.join(format!("{}-{}", self.scenario, self.run));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("report.json"), serde_json::to_vec_pretty(self)?)?;
        std::fs::write(dir.join("report.html"), self.html()?)?;
        println!("report: {}/report.{{json,html}}", dir.display());
        if self.audit.iter().any(|c| !c.ok) {
            bail!("the audit failed");
        }
        Ok(dir)
    }

    fn print(&self) {
        println!(
            "   {} arrivals in {:.1} s ({:.0}/s)",
            self.arrivals,
            self.seconds,
            self.arrivals as f64 / self.seconds.max(1e-9)
        );
        println!(
            "   {:<10} {:>8} {:>8} {:>7} {:>8} {:>8} {:>8} {:>8} {:>9}",
            "op", "sent", "ok", "failed", "p50 ms", "p90 ms", "p99 ms", "p99.9", "max ms"
        );
        for o in &self.ops {
            let q = &o.latency_ms;
            println!(
                "   {:<10} {:>8} {:>8} {:>7} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>9.1}",
                o.op, o.sent, o.ok, o.failed, q.p50, q.p90, q.p99, q.p999, q.max
            );
            for (kind, n) in &o.answers {
                println!("   {:<10} {n:>8} answered {kind}", "");
            }
        }
        println!("   latency is measured from each request's due time (open loop)");
        println!("== CPU seconds per process");
        for p in &self.cpu {
            println!(
                "   {:<20} {:>8.2} s  {:>8} s per 1k ops",
                p.process,
                p.cpu_secs,
                p.per_1k_ops.map_or("-".to_string(), |v| format!("{v:.3}"))
            );
        }
        if let Some(v) = self.server_cpu_per_1k_ops {
            println!("   serving side (all but the load client): {v:.3} CPU s per 1k ops");
        }
        if let Some(e) = &self.event_to_view {
            println!("== event to view (store commit -> view row commit, PostgreSQL's clock)");
            match (&e.latency_ms, &e.not_measured) {
                (Some(q), _) => {
                    println!(
                    "   [{}] {} orders: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms (target < {:.0} ms), max {:.1} ms{}",
                    if e.p99_within_target == Some(true) { "ok" } else { "OVER TARGET" },
                    e.rows,
                    q.p50,
                    q.p90,
                    q.p99,
                    e.p99_target_ms,
                    q.max,
                    if e.skipped > 0 { format!(" ({} not measured)", e.skipped) } else { String::new() }
                )
                }
                (None, why) => println!("   {}", why.as_deref().unwrap_or("not measured")),
            }
        }
        if !self.memory.is_empty() {
            println!("== memory when the load ended (VmRSS, peak VmHWM, private RssAnon)");
            for m in &self.memory {
                println!(
                    "   {:<20} {:>9} KiB  peak {:>9} KiB  private {:>9} KiB{}",
                    m.process,
                    m.rss_kib,
                    m.peak_rss_kib,
                    m.anon_kib,
                    memory_note(m)
                );
            }
        }
        println!("== audit");
        for c in &self.audit {
            println!("   [{}] {}: {}", if c.ok { "ok" } else { "FAILED" }, c.check, c.detail);
        }
    }

    fn html(&self) -> anyhow::Result<String> {
        let ops: Vec<&str> = self.ops.iter().map(|o| o.op.as_str()).collect();
        let per_op = |f: &dyn Fn(&SecondSummary) -> Option<f64>, op: &str| -> Vec<(f64, f64)> {
            self.timeline
                .iter()
                .filter(|s| s.op == op)
                .filter_map(|s| f(s).map(|v| (s.t as f64, v)))
                .collect()
        };
        let mut offered: BTreeMap<u64, f64> = BTreeMap::new();
        for s in &self.timeline {
            *offered.entry(s.t).or_default() += s.sent as f64;
        }
        let mut throughput = vec![Series {
            name: "sent (all ops)".into(),
            points: offered.into_iter().map(|(t, n)| (t as f64, n)).collect(),
            color: 0,
            width: 1,
        }];
        let mut latency = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            throughput.push(Series {
                name: format!("{op} ok/s"),
                points: per_op(&|s| Some(s.ok as f64), op),
                color: i + 1,
                width: 2,
            });
            let failed = per_op(&|s| Some(s.failed as f64), op);
            if failed.iter().any(|(_, v)| *v > 0.0) {
                throughput.push(Series {
                    name: format!("{op} failed/s"),
                    points: failed,
                    color: i + 1,
                    width: 1,
                });
            }
            latency.push(Series {
                name: format!("{op} p99"),
                points: per_op(&|s| s.p99_ms, op),
                color: i + 1,
                width: 2,
            });
            latency.push(Series {
                name: format!("{op} p50"),
                points: per_op(&|s| s.p50_ms, op),
                color: i + 1,
                width: 1,
            });
        }
        let throughput = line_chart("Throughput over the run", "second", "requests/s", &throughput, false)?;
        let latency = line_chart(
            "Latency from due time (log scale)",
            "second (due)",
            "ms",
            &latency,
            true,
        )?;
        let freshness = match &self.event_to_view {
            Some(e) if !e.per_second.is_empty() => {
                let series = [
                    Series {
                        name: "p99".into(),
                        points: e.per_second.iter().map(|s| (s.t as f64, s.p99_ms)).collect(),
                        color: 2,
                        width: 2,
                    },
                    Series {
                        name: "p50".into(),
                        points: e.per_second.iter().map(|s| (s.t as f64, s.p50_ms)).collect(),
                        color: 2,
                        width: 1,
                    },
                    Series {
                        name: format!("target p99 {:.0} ms", e.p99_target_ms),
                        points: e.per_second.iter().map(|s| (s.t as f64, e.p99_target_ms)).collect(),
                        color: 0,
                        width: 1,
                    },
                ];
                line_chart(
                    "Event to view: store commit -> orders view row commit (log scale)",
                    "second (event committed)",
                    "ms",
                    &series,
                    true,
                )?
            }
            _ => String::new(),
        };
        let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
        let mut ops_rows = String::new();
        for o in &self.ops {
            let q = &o.latency_ms;
            let answers: Vec<String> = o.answers.iter().map(|(k, n)| format!("{n} × {}", esc(k))).collect();
            ops_rows += &format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{}</td></tr>",
                esc(&o.op), o.sent, o.ok, o.failed, q.p50, q.p90, q.p99, q.p999, q.max, answers.join("<br>")
            );
        }
        let cpu_rows: String = self
            .cpu
            .iter()
            .map(|p| {
                format!(
                    "<tr><td>{}</td><td>{:.2}</td><td>{}</td></tr>",
                    esc(&p.process),
                    p.cpu_secs,
                    p.per_1k_ops.map_or("-".into(), |v| format!("{v:.3}"))
                )
            })
            .collect();
        let event_to_view = match &self.event_to_view {
            None => String::new(),
            Some(e) => {
                let figures = match (&e.latency_ms, &e.not_measured) {
                    (Some(q), _) => format!(
                        "<table><tr><th>orders</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>p99.9 ms</th><th>max ms</th><th>p99 target</th><th></th></tr>\
                         <tr><td>{}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>&lt; {:.0} ms</td><td>{}</td></tr></table>",
                        e.rows,
                        q.p50,
                        q.p90,
                        q.p99,
                        q.p999,
                        q.max,
                        e.p99_target_ms,
                        if e.p99_within_target == Some(true) { "ok" } else { "<b>OVER TARGET</b>" }
                    ),
                    (None, why) => format!("<p>{}</p>", esc(why.as_deref().unwrap_or("not measured"))),
                };
                format!(
                    "<h2>Event to view</h2><p>{}; both times are PostgreSQL's commit timestamps. {} orders not measured.</p>{figures}<p>{freshness}</p>",
                    esc(&e.measures),
                    e.skipped
                )
            }
        };
        let memory_rows: String = self
            .memory
            .iter()
            .map(|m| {
                format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&m.process),
                    m.processes,
                    m.rss_kib,
                    m.peak_rss_kib,
                    m.anon_kib,
                    esc(memory_note(m).trim())
                )
            })
            .collect();
        let memory = if memory_rows.is_empty() {
            String::new()
        } else {
            format!(
                "<h2>Memory when the load ended</h2><table><tr><th>process</th><th>processes</th><th>VmRSS KiB</th>\
                 <th>peak (VmHWM) KiB</th><th>private (RssAnon) KiB</th><th></th></tr>{memory_rows}</table>"
            )
        };
        let audit_rows: String = self
            .audit
            .iter()
            .map(|c| {
                format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                    if c.ok { "ok" } else { "<b>FAILED</b>" },
                    esc(&c.check),
                    esc(&c.detail)
                )
            })
            .collect();
        let rates = self.rates.as_ref().map_or(String::new(), |r| {
            format!(
                "{} → {} requests/s over {} s, then {} s at the peak (at most {} requests)",
                r.start_rate, r.peak_rate, r.ramp_secs, r.hold_secs, r.max_requests
            )
        });
        Ok(format!(
            "<!doctype html><html lang=\"en\"><meta charset=\"utf-8\"><title>surge-loadgen {scenario} {run}</title>\
             <style>body{{font:15px system-ui,sans-serif;margin:2rem;max-width:60rem}}table{{border-collapse:collapse;margin:.5rem 0 1.5rem}}\
             td,th{{border:1px solid #ccc;padding:.25rem .5rem;text-align:right;vertical-align:top}}td:first-child,th:first-child{{text-align:left}}</style>\
             <h1>surge-loadgen {scenario}</h1><p>Run {run}, started {started}, {secs:.1} s, {arrivals} arrivals. {rates}</p>\
             <p>{throughput}</p><p>{latency}</p>\
             <h2>Operations</h2><table><tr><th>op</th><th>sent</th><th>ok</th><th>failed</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>p99.9 ms</th><th>max ms</th><th>answers</th></tr>{ops_rows}</table>\
             {event_to_view}\
             <h2>CPU seconds per process</h2><table><tr><th>process</th><th>CPU s</th><th>per 1k ops</th></tr>{cpu_rows}</table>\
             {memory}\
             <h2>Audit</h2><table><tr><th></th><th>check</th><th>detail</th></tr>{audit_rows}</table>\
             <h2>Details</h2><pre>{details}</pre></html>",
            scenario = esc(&self.scenario),
            run = esc(&self.run),
            started = self.started_at.to_rfc3339(),
            secs = self.seconds,
            arrivals = self.arrivals,
            details = esc(&serde_json::to_string_pretty(&self.details)?),
        ))
    }
}

/// What a memory row's sum means when it is over several processes.
fn memory_note(m: &ProcessMemory) -> String {
    match (m.process.as_str(), m.processes) {
        ("postgres", n) => format!(" (sum over {n} processes: shared buffers counted in each; private memory adds up)"),
        (_, 1) => String::new(),
        (_, n) => format!(" (sum over {n} processes)"),
    }
}

/// One line of a chart.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Index into the palette: lines of one subject share a color.
    pub color: usize,
    pub width: u32,
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(120, 120, 120),
    RGBColor(11, 107, 203),
    RGBColor(179, 38, 30),
    RGBColor(26, 127, 55),
    RGBColor(130, 80, 223),
    RGBColor(191, 135, 0),
];

/// An SVG line chart (a point on every value), linear or log on the y axis.
pub fn line_chart(title: &str, x_desc: &str, y_desc: &str, series: &[Series], log_y: bool) -> anyhow::Result<String> {
    let all = || series.iter().flat_map(|s| s.points.iter());
    let max_x = all().map(|p| p.0).fold(1.0, f64::max) * 1.05;
    let max_y = all().map(|p| p.1).fold(1.0, f64::max) * 1.15;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (760, 360)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut builder = ChartBuilder::on(&root);
        builder
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64);
        macro_rules! draw {
            ($chart:expr) => {{
                let mut chart = $chart;
                chart.configure_mesh().x_desc(x_desc).y_desc(y_desc).draw()?;
                for s in series {
                    let color = PALETTE[s.color % PALETTE.len()];
                    let width = s.width;
                    let points: Vec<(f64, f64)> = s
                        .points
                        .iter()
                        .map(|&(x, y)| (x, if log_y { y.max(0.1) } else { y }))
                        .collect();
                    chart
                        .draw_series(LineSeries::new(points.clone(), color.stroke_width(width)))?
                        .label(s.name.clone())
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(width)));
                    chart.draw_series(
                        points
                            .into_iter()
                            .map(|p| Circle::new(p, width + 1, color.filled())),
                    )?;
                }
                chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .draw()?;
            }};
        }
        if log_y {
            draw!(builder.build_cartesian_2d(0f64..max_x, (0.1f64..max_y).log_scale())?);
        } else {
            draw!(builder.build_cartesian_2d(0f64..max_x, 0f64..max_y)?);
        }
        root.present()?;
    }
    Ok(svg)
}
