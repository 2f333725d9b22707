//! Admission control in front of the command handlers: per-client rate limits and load
//! shedding, so a spike is answered at once (429/503 with `Retry-After`) instead of queueing
//! without bound.
//!
//! - Rate limit: a token bucket per client (governor), keyed by the authenticated caller
//!   (token subject or API key name) when there is one, else by the peer's IP. Answers carry `RateLimit-Limit` and `RateLimit-Remaining`.
//! - Shedding: at most `max_in_flight` commands are handled at once. New orders may only use
//!   what is left above a reserve kept for payments and cancellations, which therefore still get
//!   in when checkout traffic has taken everything else.

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::middleware::StateInformationMiddleware;
use governor::{clock::DefaultClock, state::keyed::DefaultKeyedStateStore, Quota, RateLimiter};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;
use surge_runtime::Problem;
use tokio::sync::Semaphore;

type KeyedLimiter = RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

#[derive(Debug, Clone, Copy)]
pub struct AdmissionSettings {
    /// Sustained requests per second per client.
    pub per_client_per_sec: u32,
    /// Requests a client may send at once above the sustained rate.
    pub per_client_burst: u32,
    /// Commands handled at once by this process.
    pub max_in_flight: usize,
    /// Share of `max_in_flight` new orders may not take (kept for payments and cancels).
    pub priority_reserve: f64,
}

impl Default for AdmissionSettings {
    fn default() -> Self {
        AdmissionSettings {
            per_client_per_sec: 500,
            per_client_burst: 1000,
            max_in_flight: 2048,
            priority_reserve: 0.2,
        }
    }
}

/// What kind of command a request is, for shedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// Payments and cancellations: finishing what is started comes first.
    High,
    /// New orders and catalog administration.
    Normal,
}

pub fn priority_of(path: &str) -> Priority {
    if path.ends_with("/payment") || path.ends_with("/cancel") {
        Priority::High
    } else {
        Priority::Normal
    }
}

/// Whether a request of `priority` may start with `available` of `total` slots free.
pub fn may_start(priority: Priority, available: usize, total: usize, reserve: f64) -> bool {
    let reserved = (total as f64 * reserve).ceil() as usize;
    match priority {
        Priority::High => available > 0,
        Priority::Normal => available > reserved,
    }
}

#[derive(Clone)]
pub struct Admission {
    limiter: Arc<KeyedLimiter>,
    in_flight: Arc<Semaphore>,
    settings: AdmissionSettings,
}

impl Admission {
    pub fn new(settings: AdmissionSettings) -> Self {
        let rate = NonZeroU32::new(settings.per_client_per_sec.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(settings.per_client_burst.max(1)).unwrap_or(NonZeroU32::MIN);
        let limiter = RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
            .with_middleware::<StateInformationMiddleware>();
        Admission {
            limiter: Arc::new(limiter),
            in_flight: Arc::new(Semaphore::new(settings.max_in_flight.max(1))),
            settings,
        }
    }

    /// Forgets clients that have been quiet, so the per-client state stays bounded.
    pub fn spawn_housekeeping(&self, stop: tokio_util::sync::CancellationToken) -> tokio::task::JoinHandle<()> {
        let limiter = self.limiter.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(10)) => {
                        limiter.retain_recent();
                        limiter.shrink_to_fit();
                    }
                }
            }
        })
    }
}

fn client_key(req: &Request) -> String {
    if let Some(p) = req.extensions().get::<surge_runtime::Principal>() {
        return format!("{}:{}", p.role.as_str(), p.subject);
    }
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "ip:unknown".to_string(), |c| format!("ip:{}", c.0.ip()))
}

/// The middleware: rate limit, then shed, then run the handler holding a slot.
pub async fn admit(State(admission): State<Admission>, req: Request, next: Next) -> Response {
    let limit = admission.settings.per_client_burst;
    let remaining = match admission.limiter.check_key(&client_key(&req)) {
        Ok(snapshot) => snapshot.remaining_burst_capacity(),
        Err(not_until) => {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(&DefaultClock::default()));
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            metrics::counter!("surge_commands_rejected_total", "reason" => "rate-limited").increment(1);
            let mut res = Problem::new(StatusCode::TOO_MANY_REQUESTS, "rate-limited", "Too many requests")
                .detail(format!(
                    "this client may send {} commands per second",
                    admission.settings.per_client_per_sec
                ))
                .retry_after(secs.max(1))
                .into_response();
            res.headers_mut().insert("ratelimit-limit", HeaderValue::from(limit));
            res.headers_mut().insert("ratelimit-remaining", HeaderValue::from(0));
            return res;
        }
    };
    let priority = priority_of(req.uri().path());
    let total = admission.settings.max_in_flight.max(1);
    let permit = if may_start(
        priority,
        admission.in_flight.available_permits(),
        total,
        admission.settings.priority_reserve,
    ) {
        admission.in_flight.clone().try_acquire_owned().ok()
    } else {
        None
    };
    let Some(_permit) = permit else {
        metrics::counter!("surge_commands_rejected_total", "reason" => "overloaded").increment(1);
        return Problem::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", "Too busy")
            .detail("the command API is at capacity; retry shortly")
            .retry_after(1)
            .into_response();
    };
    metrics::gauge!("surge_commands_in_flight").set((total - admission.in_flight.available_permits()) as f64);
    let mut res = next.run(req).await;
    res.headers_mut().insert("ratelimit-limit", HeaderValue::from(limit));
    res.headers_mut()
        .insert("ratelimit-remaining", HeaderValue::from(remaining));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payments_and_cancels_are_high_priority() {
        assert_eq!(priority_of("/v1/orders/x/payment"), Priority::High);
        assert_eq!(priority_of("/v1/orders/x/cancel"), Priority::High);
        assert_eq!(priority_of("/v1/orders"), Priority::Normal);
        assert_eq!(priority_of("/v1/inventory/A/restock"), Priority::Normal);
    }

    #[test]
    fn new_orders_leave_the_reserve_to_payments_and_cancels() {
        // 10 slots, 20 % reserved: orders stop when 2 are left, payments go on to the last.
        assert!(may_start(Priority::Normal, 3, 10, 0.2));
        assert!(!may_start(Priority::Normal, 2, 10, 0.2));
        assert!(may_start(Priority::High, 2, 10, 0.2));
        assert!(may_start(Priority::High, 1, 10, 0.2));
        assert!(!may_start(Priority::High, 0, 10, 0.2));
    }
}
