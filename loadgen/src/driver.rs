//! The open-loop engine of the scenarios: an arrival schedule, requests timed from when they
//! were due, and a [`Recorder`] of latencies and answers per operation and per second.
//!
//! Open loop: the next request leaves when the schedule says, whatever the answers' latency,
//! so a slow server cannot hide its slowness by slowing the client (coordinated omission).
//! A progress line (indicatif, on standard error when it is a terminal) shows what is sent,
//! in flight and answered while a run goes.

use clap::Args;
use futures::future::BoxFuture;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The arrival schedule: a linear ramp from `--start-rate` to `--peak-rate`, then a hold at the
/// peak. A constant rate is `--start-rate R --peak-rate R`.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct RateArgs {
    /// Requests per second at the start (the "1x").
    #[arg(long, default_value_t = 50)]
    pub start_rate: u64,
    /// Requests per second at the peak (20x by default).
    #[arg(long, default_value_t = 1000)]
    pub peak_rate: u64,
    /// Seconds from the start rate to the peak rate.
    #[arg(long, default_value_t = 5)]
    pub ramp_secs: u64,
    /// Seconds at the peak rate.
    #[arg(long, default_value_t = 5)]
    pub hold_secs: u64,
    /// Hard cap on scheduled requests.
    #[arg(long, default_value_t = 50_000)]
    pub max_requests: u64,
}

impl RateArgs {
    /// The arrival rate `t` seconds into the run.
    pub fn rate_at(&self, t: f64) -> f64 {
        let ramp = self.ramp_secs as f64;
        if t < ramp {
            self.start_rate as f64 + (self.peak_rate as f64 - self.start_rate as f64) * t / ramp
        } else {
            self.peak_rate as f64
        }
    }

    /// `50 -> 1000 orders/s over 5 s, hold 5 s`, for a run's banner.
    pub fn describe(&self, unit: &str) -> String {
        format!(
            "{} -> {} {unit}/s over {} s, hold {} s",
            self.start_rate, self.peak_rate, self.ramp_secs, self.hold_secs
        )
    }

    /// When each request is due, in seconds from the start.
    pub fn arrivals(&self) -> Vec<f64> {
        let total = (self.ramp_secs + self.hold_secs) as f64;
        let mut due = Vec::new();
        let mut t = 0.0;
        // (The epsilon keeps summed float steps from adding one arrival at the very end.)
        while t < total - 1e-6 && (due.len() as u64) < self.max_requests {
            due.push(t);
            t += 1.0 / self.rate_at(t).max(0.1);
        }
        due
    }
}

/// What a request came back with: a status (None: no answer at all) and the JSON body when
/// it was asked for.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: Option<u16>,
    pub body: Value,
}

impl Answer {
    pub fn ok(&self) -> bool {
        matches!(self.status, Some(s) if (200..300).contains(&s) || s == 304)
    }

    /// `202`, `422 out-of-stock` (status and the problem type's last segment), or `transport`.
    pub fn kind(&self) -> String {
        match self.status {
            None => "transport".to_string(),
            Some(s) if self.ok() => s.to_string(),
            Some(s) => {
                let slug = self.body["type"].as_str().and_then(|t| t.rsplit('/').next());
                format!("{s} {}", slug.unwrap_or("-"))
            }
        }
    }
}

/// Sends `req`; reads the body as JSON when `json` (else only drains it).
pub async fn send(req: reqwest::RequestBuilder, json: bool) -> Answer {
    match req.send().await {
        Err(_) => Answer {
            status: None,
            body: Value::Null,
        },
        Ok(r) => {
            let status = r.status().as_u16();
            let body = if json || !(200..300).contains(&status) {
                r.json::<Value>().await.unwrap_or(Value::Null)
            } else {
                match r.bytes().await {
                    Ok(_) => Value::Null,
                    Err(_) => {
                        return Answer {
                            status: None,
                            body: Value::Null,
                        }
                    }
                }
            };
            Answer {
                status: Some(status),
                body,
            }
        }
    }
}

/// A latency histogram in microseconds, 1 µs to 120 s, three significant figures.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

/// One second of one operation.
#[derive(Clone)]
struct Second {
    sent: u64,
    ok: u64,
    failed: u64,
    latency: Histogram<u64>,
}

impl Default for Second {
    fn default() -> Self {
        Second {
            sent: 0,
            ok: 0,
            failed: 0,
            latency: Histogram::new_with_bounds(1, 120_000_000, 2).expect("bounds"),
        }
    }
}

struct OpLog {
    latency: Histogram<u64>,
    answers: BTreeMap<String, u64>,
    seconds: Vec<Second>,
}

impl OpLog {
    fn second(&mut self, at: usize) -> &mut Second {
        if self.seconds.len() <= at {
            self.seconds.resize_with(at + 1, Second::default);
        }
        &mut self.seconds[at]
    }
}

/// Latencies (from the due time, in microseconds) and answers of a run, per operation and per
/// second of the run.
pub struct Recorder {
    started: Instant,
    ops: Mutex<BTreeMap<&'static str, OpLog>>,
    sent: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
}

/// Latency quantiles in milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Quantiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Quantiles {
    pub fn of(h: &Histogram<u64>) -> Quantiles {
        let ms = |v: u64| v as f64 / 1000.0;
        Quantiles {
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// One operation over the whole run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpSummary {
    pub op: String,
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    /// Answers by kind (`202`, `422 out-of-stock`, `transport`, ...).
    pub answers: BTreeMap<String, u64>,
    pub latency_ms: Quantiles,
}

/// One operation in one second: `sent` counts requests due in it, `ok`/`failed` answers that
/// came in it, the latencies are those of the requests due in it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecondSummary {
    pub t: u64,
    pub op: String,
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl Recorder {
    pub fn new() -> Arc<Recorder> {
        Arc::new(Recorder {
            started: Instant::now(),
            ops: Mutex::new(BTreeMap::new()),
            sent: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        })
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    fn second_of(&self, at: Instant) -> usize {
        at.saturating_duration_since(self.started).as_secs() as usize
    }

    fn with_op<T>(&self, op: &'static str, f: impl FnOnce(&mut OpLog) -> T) -> T {
        let mut ops = self.ops.lock().expect("recorder lock");
        let log = ops.entry(op).or_insert_with(|| OpLog {
            latency: histogram(),
            answers: BTreeMap::new(),
            seconds: Vec::new(),
        });
        f(log)
    }

    /// Sends one request due at `due` (now, for follow-ups) and records how it went.
    pub async fn time(&self, op: &'static str, due: Instant, request: impl Future<Output = Answer>) -> Answer {
        self.sent.fetch_add(1, Ordering::Relaxed);
        let due_second = self.second_of(due);
        self.with_op(op, |log| log.second(due_second).sent += 1);
        let answer = request.await;
        let latency = due.elapsed().as_micros().max(1) as u64;
        let ok = answer.ok();
        let kind = answer.kind();
        let now_second = self.second_of(Instant::now());
        self.with_op(op, |log| {
            let _ = log.latency.record(latency);
            *log.answers.entry(kind).or_default() += 1;
            let _ = log.second(due_second).latency.record(latency);
            let s = log.second(now_second);
            if ok {
                s.ok += 1;
            } else {
                s.failed += 1;
            }
        });
        if ok { &self.ok } else { &self.failed }.fetch_add(1, Ordering::Relaxed);
        answer
    }

    pub fn summary(&self) -> (Vec<OpSummary>, Vec<SecondSummary>) {
        let ops = self.ops.lock().expect("recorder lock");
        let mut totals = Vec::new();
        let mut timeline = Vec::new();
        for (op, log) in ops.iter() {
            let (mut sent, mut ok, mut failed) = (0, 0, 0);
            for (t, s) in log.seconds.iter().enumerate() {
                sent += s.sent;
                ok += s.ok;
                failed += s.failed;
                let q = |p: f64| (!s.latency.is_empty()).then(|| s.latency.value_at_quantile(p) as f64 / 1000.0);
                timeline.push(SecondSummary {
                    t: t as u64,
                    op: op.to_string(),
                    sent: s.sent,
                    ok: s.ok,
                    failed: s.failed,
                    p50_ms: q(0.5),
                    p99_ms: q(0.99),
                });
            }
            totals.push(OpSummary {
                op: op.to_string(),
                sent,
                ok,
                failed,
                answers: log.answers.clone(),
                latency_ms: Quantiles::of(&log.latency),
            });
        }
        (totals, timeline)
    }

    /// Answered requests (ok or not) of the given operations.
    pub fn answered(&self, ops: &[&str]) -> u64 {
        self.ops
            .lock()
            .expect("recorder lock")
            .iter()
            .filter(|(op, _)| ops.contains(op))
            .map(|(_, log)| log.latency.len())
            .sum()
    }
}

/// Runs the schedule: at each due time, `arrival(i, due)` makes the request futures of the
/// i-th arrival (each normally wrapped in [`Recorder::time`]); they run concurrently. Returns
/// when every request has been answered; the number of arrivals.
pub async fn open_loop<F>(rates: &RateArgs, recorder: &Arc<Recorder>, label: &str, arrival: F) -> u64
where
    F: FnMut(u64, Instant) -> Vec<BoxFuture<'static, ()>>,
{
    open_loop_until(rates, recorder, label, || false, arrival).await
}

/// [`open_loop`] that sends nothing more once `stop()` says so (asked before each arrival);
/// the number of arrivals sent.
pub async fn open_loop_until<S, F>(
    rates: &RateArgs,
    recorder: &Arc<Recorder>,
    label: &str,
    stop: S,
    mut arrival: F,
) -> u64
where
    S: Fn() -> bool,
    F: FnMut(u64, Instant) -> Vec<BoxFuture<'static, ()>>,
{
    let due = rates.arrivals();
    let progress = progress_bar(due.len() as u64, label);
    let ticker = {
        let (progress, recorder) = (progress.clone(), recorder.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(250));
            loop {
                every.tick().await;
                let (sent, ok, failed) = (
                    recorder.sent.load(Ordering::Relaxed),
                    recorder.ok.load(Ordering::Relaxed),
                    recorder.failed.load(Ordering::Relaxed),
                );
                progress.set_message(format!(
                    "sent {sent}  in flight {}  ok {ok}  failed {failed}",
                    sent.saturating_sub(ok + failed)
                ));
            }
        })
    };
    let start = recorder.started();
    let mut tasks = Vec::with_capacity(due.len());
    let mut sent = 0;
    for (i, t) in due.iter().enumerate() {
        let at = start + Duration::from_secs_f64(*t);
        tokio::time::sleep_until(at.into()).await;
        if stop() {
            break;
        }
        sent += 1;
        for request in arrival(i as u64, at) {
            tasks.push(tokio::spawn(request));
        }
        progress.set_position(i as u64 + 1);
    }
    for task in tasks {
        let _ = task.await;
    }
    ticker.abort();
    progress.finish_and_clear();
    sent
}

fn progress_bar(len: u64, label: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr_with_hz(4));
    bar.set_style(
        ProgressStyle::with_template("{prefix} {elapsed:>4} [{bar:28}] {pos}/{len} due  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        r: RateArgs,
    }

    #[test]
    fn the_rate_ramps_then_holds() {
        let r = Wrap::parse_from(["x", "--start-rate", "50", "--peak-rate", "1000", "--ramp-secs", "10"]).r;
        assert_eq!(r.rate_at(0.0), 50.0);
        assert_eq!(r.rate_at(5.0), 525.0);
        assert_eq!(r.rate_at(10.0), 1000.0);
        assert_eq!(r.rate_at(30.0), 1000.0);
    }

    #[test]
    fn arrivals_follow_the_schedule_and_the_cap() {
        let r = Wrap::parse_from([
            "x",
            "--start-rate",
            "100",
            "--peak-rate",
            "100",
            "--ramp-secs",
            "0",
            "--hold-secs",
            "3",
        ])
        .r;
        let due = r.arrivals();
        assert_eq!(due.len(), 300);
        assert!(due.windows(2).all(|w| (w[1] - w[0] - 0.01).abs() < 1e-9));
        let capped = Wrap::parse_from(["x", "--max-requests", "7"]).r;
        assert_eq!(capped.arrivals().len(), 7);
        // A 1x -> 20x ramp sends about the area under the rate curve.
        let ramp = Wrap::parse_from([
            "x",
            "--start-rate",
            "50",
            "--peak-rate",
            "1000",
            "--ramp-secs",
            "5",
            "--hold-secs",
            "5",
        ])
        .r;
        let n = ramp.arrivals().len() as f64;
        let area = (50.0 + 1000.0) / 2.0 * 5.0 + 1000.0 * 5.0;
        assert!((n - area).abs() / area < 0.01, "{n} arrivals for an area of {area}");
    }

    #[test]
    fn answers_are_named_by_status_and_problem_type() {
        let refused = Answer {
            status: Some(422),
            body: serde_json::json!({"type": "https://surge.dev/problems/out-of-stock"}),
        };
        assert_eq!(refused.kind(), "422 out-of-stock");
        assert!(!refused.ok());
        assert_eq!(
            Answer {
                status: Some(304),
                body: Value::Null
            }
            .kind(),
            "304"
        );
        assert_eq!(
            Answer {
                status: None,
                body: Value::Null
            }
            .kind(),
            "transport"
        );
    }

    #[tokio::test]
    async fn the_recorder_counts_per_operation_and_second() {
        let rec = Recorder::new();
        let due = Instant::now();
        rec.time("read", due, async {
            Answer {
                status: Some(200),
                body: Value::Null,
            }
        })
        .await;
        rec.time("read", due, async {
            Answer {
                status: None,
                body: Value::Null,
            }
        })
        .await;
        rec.time("order", due, async {
            Answer {
                status: Some(202),
                body: Value::Null,
            }
        })
        .await;
        let (ops, timeline) = rec.summary();
        let read = ops.iter().find(|o| o.op == "read").expect("read recorded");
        assert_eq!((read.sent, read.ok, read.failed), (2, 1, 1));
        assert_eq!(read.answers.get("transport"), Some(&1));
        assert_eq!(
            timeline.iter().filter(|s| s.op == "order").map(|s| s.ok).sum::<u64>(),
            1
        );
        assert_eq!(rec.answered(&["read"]), 2);
    }
}
