//! The operator console at `/console`: one page (assets embedded in the binary, no CDN) with
//! live figures pushed by Server-Sent Events, an event browser and a projection panel.
//!
//! - `GET /console` the page; it signs in with a bearer token (`POST /console/session` sets an
//!   HttpOnly, SameSite=Strict cookie) and needs role admin or analyst for everything else.
//! - `GET /console/live` a snapshot per second: orders accepted and refused per second by
//!   reason, orders waiting in the hot-SKU lanes, outbox backlog, consumer lag per projection,
//!   event-to-view latency (from the `/metrics` of the other processes), hottest SKUs' stock and
//!   reservations (from the catalog view), this process's cache hit ratio.
//! - `GET /console/api/streams/{id}/events`, `GET /console/api/correlations/{id}/events`: the
//!   event browser, straight from the event store.
//! - `GET /console/api/projections`, `POST /console/api/projections/replay`, `GET
//!   /console/api/replay`: positions, dead letters and last errors; a rebuild with the same
//!   code as `surge replay`, and its progress. State-changing calls also need the
//!   `X-Surge-Console` header, which a cross-site form cannot send.

pub use crate::context::ConsoleContext;
use crate::context::QueryContext;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use futures::Stream;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::{Duration, Instant};
use surge_events::EventEnvelope;
use surge_projections::replay::{ProgressState, ReplayConfig, ReplayProgress, Source};
use surge_projections::Projection;
use surge_runtime::auth::SESSION_COOKIE;
use surge_runtime::extract::{Body, PathParam};
use surge_runtime::{Principal, Problem, Role};
use uuid::Uuid;

const INDEX: &str = include_str!("console/index.html");
const APP_JS: &str = include_str!("console/app.js");
const APP_CSS: &str = include_str!("console/app.css");
const CSRF_HEADER: &str = "x-surge-console";
const EVENTS_LIMIT: i64 = 500;

pub fn routes() -> Router<QueryContext> {
    Router::new()
        .route("/console", get(page))
        .route(
            "/console/app.js",
            get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/console/app.css",
            get(|| async { asset(APP_CSS, "text/css; charset=utf-8") }),
        )
        .route("/console/session", post(open_session).delete(close_session))
        .route("/console/api/whoami", get(whoami))
        .route("/console/live", get(live))
        .route("/console/api/streams/{stream_id}/events", get(stream_events))
        .route(
            "/console/api/correlations/{correlation_id}/events",
            get(correlated_events),
        )
        .route("/console/api/projections", get(projections))
        .route("/console/api/projections/replay", post(start_replay))
        .route("/console/api/replay", get(replay_progress))
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn page() -> Response {
    let mut res = asset(INDEX, "text/html; charset=utf-8");
    // Everything the page loads comes from this origin; no inline script.
    res.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'",
        ),
    );
    res
}

fn operator(caller: &Principal) -> Result<(), Problem> {
    caller.require(&[Role::Admin, Role::Analyst])
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionRequest {
    token: String,
}

/// Exchanges a bearer token (admin or analyst) for a session cookie holding it.
async fn open_session(State(ctx): State<QueryContext>, Body(req): Body<SessionRequest>) -> Result<Response, Problem> {
    let token = req.token.trim();
    let caller = ctx.console.auth.verify_token(token).map_err(Problem::unauthenticated)?;
    operator(&caller)?;
    let cookie = format!("{SESSION_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age=43200");
    let value =
        HeaderValue::from_str(&cookie).map_err(|_| Problem::bad_request("the token is not a valid cookie value"))?;
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, value)]).into_response())
}

async fn close_session() -> Response {
    let cookie = format!("{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    (
        StatusCode::NO_CONTENT,
        [(
            header::SET_COOKIE,
            HeaderValue::from_str(&cookie).unwrap_or(HeaderValue::from_static("")),
        )],
    )
        .into_response()
}

#[derive(Serialize)]
struct WhoAmI {
    subject: String,
    role: &'static str,
}

async fn whoami(caller: Principal) -> Result<Json<WhoAmI>, Problem> {
    operator(&caller)?;
    Ok(Json(WhoAmI {
        subject: caller.subject.clone(),
        role: caller.role.as_str(),
    }))
}

/// One push of the live view.
#[derive(Debug, Default, Serialize)]
pub struct Snapshot {
    pub at: DateTime<Utc>,
    /// Orders accepted since the metrics began (all command API processes scraped).
    pub orders_accepted: f64,
    pub orders_accepted_per_sec: f64,
    /// Refused commands per second, by problem type.
    pub refused_per_sec: BTreeMap<String, f64>,
    pub refused_total: BTreeMap<String, f64>,
    /// Orders waiting in the hot-SKU lanes.
    pub queue_depth: f64,
    pub outbox_backlog: f64,
    /// Consumer lag (messages) per projection.
    pub consumer_lag: BTreeMap<String, f64>,
    /// Mean event-to-view latency over the last interval, per projection, in milliseconds.
    pub event_to_view_ms: BTreeMap<String, f64>,
    /// Cache hits over lookups in this query API process, since it started.
    pub cache_hit_ratio: Option<f64>,
    pub hot_skus: Vec<HotSku>,
    /// Metrics endpoints that did not answer.
    pub unreachable: Vec<String>,
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct HotSku {
    pub sku: String,
    pub name: String,
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
    /// Stock buckets the item is split into (its stock above is their total).
    pub buckets: i32,
    pub max_per_customer: Option<i64>,
}

/// Counters summed over the scraped processes, keyed by metric and one label's value.
#[derive(Default, Clone)]
struct Totals {
    values: BTreeMap<(String, String), f64>,
}

impl Totals {
    fn add(&mut self, metric: &str, label: &str, v: f64) {
        *self.values.entry((metric.to_string(), label.to_string())).or_default() += v;
    }
    fn get(&self, metric: &str, label: &str) -> f64 {
        self.values
            .get(&(metric.to_string(), label.to_string()))
            .copied()
            .unwrap_or(0.0)
    }
    fn by_label(&self, metric: &str) -> BTreeMap<String, f64> {
        self.values
            .iter()
            .filter(|((m, _), _)| m == metric)
            .map(|((_, l), v)| (l.clone(), *v))
            .collect()
    }
}

fn scalar(v: &prometheus_parse::Value) -> Option<f64> {
    match v {
        prometheus_parse::Value::Counter(x)
        | prometheus_parse::Value::Gauge(x)
        | prometheus_parse::Value::Untyped(x) => Some(*x),
        _ => None,
    }
}

/// The label each family is broken down by on the console.
fn label_of(metric: &str) -> Option<&'static str> {
    Some(match metric {
        "surge_commands_accepted_total" => "command",
        "surge_commands_rejected_total" => "reason",
        "surge_consumer_lag" => "projection",
        "surge_event_to_view_seconds_sum" | "surge_event_to_view_seconds_count" => "projection",
        "surge_sequencer_waiting_orders" | "surge_outbox_backlog" => "",
        "surge_cache_requests_total" => "result",
        _ => return None,
    })
}

fn absorb(totals: &mut Totals, exposition: &str) {
    let lines = exposition.lines().map(|l| Ok(l.to_string()));
    let Ok(scrape) = prometheus_parse::Scrape::parse(lines) else {
        return;
    };
    for s in &scrape.samples {
        let (Some(label), Some(v)) = (label_of(&s.metric), scalar(&s.value)) else {
            continue;
        };
        totals.add(&s.metric, s.labels.get(label).unwrap_or(""), v);
    }
}

async fn scrape(ctx: &ConsoleContext) -> (Totals, Vec<String>) {
    let mut totals = Totals::default();
    let mut unreachable = Vec::new();
    let fetches = ctx.metrics_urls.iter().map(|url| async move {
        let text = match ctx.http.get(url).send().await {
            Ok(r) if r.status().is_success() => r.text().await.ok(),
            _ => None,
        };
        (url.clone(), text)
    });
    for (url, text) in futures::future::join_all(fetches).await {
        match text {
            Some(t) => absorb(&mut totals, &t),
            None => unreachable.push(url),
        }
    }
    (totals, unreachable)
}

async fn hot_skus(pool: &sqlx::PgPool) -> Vec<HotSku> {
    sqlx::query_as::<_, HotSku>(
        "SELECT sku, name, available, reserved, sold, buckets, max_per_customer FROM catalog_items \
         ORDER BY reserved + sold DESC, sku LIMIT 5",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default()
}

fn per_sec(now: f64, before: f64, secs: f64) -> f64 {
    ((now - before) / secs).max(0.0)
}

/// The snapshot now, with rates against the previous scrape.
async fn snapshot(ctx: &QueryContext, previous: &mut Option<(Instant, Totals)>) -> Snapshot {
    let (totals, unreachable) = scrape(&ctx.console).await;
    let mut own = Totals::default();
    absorb(&mut own, &surge_runtime::telemetry::prometheus().render());
    let (hits, lookups) = (
        own.get("surge_cache_requests_total", "hit"),
        own.by_label("surge_cache_requests_total").values().sum::<f64>(),
    );
    let now = Instant::now();
    let (secs, before) = match previous.take() {
        Some((at, t)) => (now.duration_since(at).as_secs_f64().max(0.001), t),
        None => (1.0, totals.clone()),
    };
    let accepted = totals.get("surge_commands_accepted_total", "place_order");
    let refused_total = totals.by_label("surge_commands_rejected_total");
    let refused_before = before.by_label("surge_commands_rejected_total");
    let refused_per_sec = refused_total
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                per_sec(*v, refused_before.get(k).copied().unwrap_or(0.0), secs),
            )
        })
        .collect();
    let sums = totals.by_label("surge_event_to_view_seconds_sum");
    let counts = totals.by_label("surge_event_to_view_seconds_count");
    let mut event_to_view_ms = BTreeMap::new();
    for (projection, sum) in &sums {
        let n = counts.get(projection).copied().unwrap_or(0.0)
            - before.get("surge_event_to_view_seconds_count", projection);
        if n > 0.0 {
            let s = sum - before.get("surge_event_to_view_seconds_sum", projection);
            event_to_view_ms.insert(projection.clone(), s / n * 1000.0);
        }
    }
    let snapshot = Snapshot {
        at: Utc::now(),
        orders_accepted: accepted,
        orders_accepted_per_sec: per_sec(
            accepted,
            before.get("surge_commands_accepted_total", "place_order"),
            secs,
        ),
        refused_per_sec,
        refused_total,
        queue_depth: totals.get("surge_sequencer_waiting_orders", "").max(0.0),
        outbox_backlog: totals.get("surge_outbox_backlog", ""),
        consumer_lag: totals.by_label("surge_consumer_lag"),
        event_to_view_ms,
        cache_hit_ratio: (lookups > 0.0).then(|| hits / lookups),
        hot_skus: hot_skus(&ctx.pool).await,
        unreachable,
    };
    *previous = Some((now, totals));
    snapshot
}

/// `GET /console/live`: a snapshot now and then every second, as Server-Sent Events.
async fn live(
    caller: Principal,
    State(ctx): State<QueryContext>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Problem> {
    operator(&caller)?;
    let stream = futures::stream::unfold((ctx, None, true), |(ctx, mut previous, first)| async move {
        if !first {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let snap = snapshot(&ctx, &mut previous).await;
        let event = Event::default()
            .event("snapshot")
            .json_data(&snap)
            .unwrap_or_else(|_| Event::default().comment("snapshot not serializable"));
        Some((Ok(event), (ctx, previous, false)))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn db(e: sqlx::Error) -> Problem {
    Problem::database(&e)
}

fn store(e: surge_store::StoreError) -> Problem {
    match e {
        surge_store::StoreError::Database(e) => db(e),
        other => {
            tracing::error!(error = %other, "event store read failed");
            Problem::internal()
        }
    }
}

/// A stream's events in order (the first 500), with payloads and metadata.
async fn stream_events(
    caller: Principal,
    State(ctx): State<QueryContext>,
    PathParam(stream_id): PathParam<String>,
) -> Result<Json<Vec<EventEnvelope>>, Problem> {
    operator(&caller)?;
    if stream_id.is_empty() || stream_id.len() > 128 || stream_id.chars().any(char::is_control) {
        return Err(Problem::bad_request(
            "a stream id is 1 to 128 characters, like order-<uuid> or inventory-<SKU>",
        ));
    }
    Ok(Json(
        surge_store::log::stream_events(&ctx.pool, &stream_id, EVENTS_LIMIT)
            .await
            .map_err(store)?,
    ))
}

/// Every event of one checkout, across its streams, by correlation id.
async fn correlated_events(
    caller: Principal,
    State(ctx): State<QueryContext>,
    PathParam(correlation_id): PathParam<Uuid>,
) -> Result<Json<Vec<EventEnvelope>>, Problem> {
    operator(&caller)?;
    Ok(Json(
        surge_store::log::correlated_events(&ctx.pool, correlation_id, EVENTS_LIMIT)
            .await
            .map_err(store)?,
    ))
}

#[derive(Serialize)]
struct ProjectionStatus {
    projection: String,
    /// Highest event-store position applied.
    position: i64,
    /// Kafka messages consumed (next offsets summed over partitions).
    offsets: i64,
    updated_at: Option<DateTime<Utc>>,
    dead_letters: i64,
    last_error: Option<String>,
}

/// Each projection's position, dead letters and last error.
async fn projections(
    caller: Principal,
    State(ctx): State<QueryContext>,
) -> Result<Json<Vec<ProjectionStatus>>, Problem> {
    operator(&caller)?;
    let names: Vec<String> = Projection::ALL.iter().map(|p| p.name().to_string()).collect();
    let rows = surge_store::checkpoints::summaries(&ctx.pool, &names)
        .await
        .map_err(store)?
        .into_iter()
        .map(|s| ProjectionStatus {
            projection: s.projection,
            position: s.position,
            offsets: s.offsets,
            updated_at: s.updated_at,
            dead_letters: s.dead_letters,
            last_error: s.last_error,
        })
        .collect();
    Ok(Json(rows))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayRequest {
    projection: Projection,
}

/// Starts a rebuild of one projection (the code of `surge replay`, from the event store).
async fn start_replay(
    caller: Principal,
    State(ctx): State<QueryContext>,
    headers: HeaderMap,
    Body(req): Body<ReplayRequest>,
) -> Result<Response, Problem> {
    operator(&caller)?;
    if !headers.contains_key(CSRF_HEADER) {
        return Err(Problem::forbidden(format!(
            "state-changing console calls need the {CSRF_HEADER} header"
        )));
    }
    let mut slot = ctx.console.replay.lock().await;
    if slot.as_ref().is_some_and(|p| !p.snapshot().finished) {
        return Err(
            Problem::new(StatusCode::CONFLICT, "replay-running", "A replay is running")
                .detail("wait for the running replay to finish"),
        );
    }
    let progress = ReplayProgress::default();
    let config = ReplayConfig {
        db: ctx.console.primary.clone(),
        projections: vec![req.projection],
        batch_size: ReplayConfig::DEFAULT_BATCH_SIZE,
        max_rows_in_memory: ReplayConfig::DEFAULT_MAX_ROWS_IN_MEMORY,
        dry_run: false,
        source: Source::Store,
        kafka: ctx.console.kafka.clone(),
        progress: Some(progress.clone()),
    };
    tracing::info!(projection = req.projection.name(), by = %caller.actor(), "replay started from the console");
    let watch = progress.clone();
    tokio::spawn(async move {
        let outcome = surge_projections::replay::replay(&config).await;
        watch.update(|s| {
            s.finished = true;
            if let Err(e) = &outcome {
                tracing::error!(error = %e, "console replay failed");
                s.error = Some("the replay failed; see the query API's log".into());
            }
        });
    });
    *slot = Some(progress);
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"projection": req.projection.name()})),
    )
        .into_response())
}

/// The running (or last) replay's progress.
async fn replay_progress(
    caller: Principal,
    State(ctx): State<QueryContext>,
) -> Result<Json<Option<ProgressState>>, Problem> {
    operator(&caller)?;
    Ok(Json(
        ctx.console.replay.lock().await.as_ref().map(ReplayProgress::snapshot),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_summed_per_label_across_processes() {
        let text = "# TYPE surge_commands_rejected_total counter\n\
            surge_commands_rejected_total{reason=\"out-of-stock\"} 3\n\
            surge_commands_rejected_total{reason=\"rate-limited\"} 1\n\
            # TYPE surge_consumer_lag gauge\n\
            surge_consumer_lag{projection=\"orders\",partition=\"0\"} 4\n\
            surge_consumer_lag{projection=\"orders\",partition=\"1\"} 2\n\
            # TYPE unrelated counter\nunrelated 9\n";
        let mut t = Totals::default();
        absorb(&mut t, text);
        absorb(&mut t, text);
        assert_eq!(t.get("surge_commands_rejected_total", "out-of-stock"), 6.0);
        assert_eq!(t.by_label("surge_consumer_lag")["orders"], 12.0);
        assert!(t.by_label("unrelated").is_empty());
    }
}
