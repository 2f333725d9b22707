//! The deliverer: claims due deliveries (`FOR UPDATE SKIP LOCKED`, so several deliverers share
//! the queue), POSTs each signed body, and records the outcome. A 2xx is delivered; any other
//! status (a 3xx too: redirects are not followed), a timeout, a connection error or a refused
//! address is a failed attempt, tried again after an exponential backoff with full jitter,
//! until the attempt limit makes the delivery dead. At-least-once: a deliverer that dies
//! mid-attempt leaves its claim to expire and the delivery to be sent again.
//!
//! Ordering is [`crate::tables::claim_due`]'s: a delivery is claimed only when every earlier
//! delivery of its (endpoint, order) is delivered. A dead one therefore holds back the later
//! changes of its order for that endpoint (other orders are not held) until it is redelivered
//! and succeeds: a storefront never learns "paid" before "placed".

use crate::client::{Answer, Signed, WebhookClient};
use crate::signature;
use crate::tables::{self, AttemptResult, Claimed};
use rand::Rng;
use sqlx::PgPool;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// Attempts before a delivery is dead.
    pub max_attempts: i32,
    /// The backoff before retry n is a random delay in `[0, min(cap, base · 2^(n-1))]`.
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// Attempts in flight at once (over all endpoints).
    pub concurrency: usize,
    /// The longest one attempt may take, connecting and reading included.
    pub attempt_timeout: Duration,
    /// How often an idle deliverer looks for due deliveries.
    pub idle_poll: Duration,
}

/// The ceiling of the random delay before the retry that follows attempt `attempts` (1-based):
/// `min(cap, base · 2^(attempts-1))`.
pub fn ceiling(settings: &DeliverySettings, attempts: i32) -> Duration {
    let exponent = attempts.saturating_sub(1).clamp(0, 30) as u32;
    settings
        .backoff_base
        .saturating_mul(2u32.saturating_pow(exponent))
        .min(settings.backoff_cap)
}

/// The delay before the retry that follows attempt `attempts` (1-based): full jitter over an
/// exponential ceiling, so receivers coming back from an outage are not hit by every sender at
/// once.
pub fn backoff(settings: &DeliverySettings, attempts: i32, rng: &mut impl Rng) -> Duration {
    let millis = ceiling(settings, attempts).as_millis().min(u128::from(u64::MAX)) as u64;
    Duration::from_millis(rng.gen_range(0..=millis))
}

/// The longest a delivery can wait between its first and its last attempt (the sum of the
/// ceilings of the `max_attempts - 1` retries; the attempts' own time comes on top). Half of it
/// on average, each delay being uniform under its ceiling.
pub fn max_total_backoff(settings: &DeliverySettings) -> Duration {
    (1..settings.max_attempts).map(|n| ceiling(settings, n)).sum()
}

/// What to record for an attempt's answer.
pub fn judge(settings: &DeliverySettings, attempts: i32, answer: &Answer, rng: &mut impl Rng) -> AttemptResult {
    let (status, error) = match answer {
        Answer::Status { status, .. } if (200..300).contains(status) => {
            return AttemptResult::Delivered { status: *status }
        }
        Answer::Status { status, head } if (300..400).contains(status) => (
            Some(*status),
            format!("HTTP {status}: redirects are not followed {}", clip(head)),
        ),
        Answer::Status { status, head } => (Some(*status), format!("HTTP {status}: {}", clip(head))),
        Answer::Refused(refused) => (None, format!("refused: {refused}")),
        Answer::Failed(error) => (None, error.clone()),
    };
    if attempts >= settings.max_attempts {
        AttemptResult::Dead { status, error }
    } else {
        AttemptResult::Retry {
            status,
            error,
            retry_in: backoff(settings, attempts, rng),
        }
    }
}

/// The start of a receiver's answer, for `last_error`.
fn clip(head: &str) -> String {
    head.chars().take(200).collect::<String>().trim().to_string()
}

pub struct Deliverer {
    pub pool: PgPool,
    pub client: WebhookClient,
    pub settings: DeliverySettings,
}

impl Deliverer {
    /// How long a claim holds a delivery: past the attempt's timeout, so that only a deliverer
    /// that died lets it go early.
    fn lease(&self) -> Duration {
        self.settings.attempt_timeout * 2 + Duration::from_secs(5)
    }

    /// Runs until `stop`, then waits for the attempts in flight.
    pub async fn run(self, stop: CancellationToken) {
        let mut in_flight = JoinSet::new();
        let concurrency = self.settings.concurrency.max(1);
        while !stop.is_cancelled() {
            let room = concurrency - in_flight.len();
            let claimed = if room > 0 {
                match tables::claim_due(&self.pool, room as i64, self.lease()).await {
                    Ok(c) => c,
                    Err(e) => {
                        // Postgres away: look again in a second, not every poll.
                        tracing::warn!(error = %e, "claiming webhook deliveries failed");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            _ = stop.cancelled() => {}
                        }
                        Vec::new()
                    }
                }
            } else {
                Vec::new()
            };
            let idle = claimed.is_empty();
            for claim in claimed {
                let attempt = Attempt {
                    pool: self.pool.clone(),
                    client: self.client.clone(),
                    settings: self.settings.clone(),
                };
                in_flight.spawn(attempt.run(claim));
            }
            if idle {
                // Nothing new to start: wait for an attempt to end (room, and maybe the next
                // change of its order is due now) or for the next look.
                tokio::select! {
                    _ = in_flight.join_next(), if !in_flight.is_empty() => {}
                    _ = tokio::time::sleep(self.settings.idle_poll) => {}
                    _ = stop.cancelled() => {}
                }
            }
            while in_flight.try_join_next().is_some() {}
        }
        while in_flight.join_next().await.is_some() {}
    }
}

struct Attempt {
    pool: PgPool,
    client: WebhookClient,
    settings: DeliverySettings,
}

impl Attempt {
    #[tracing::instrument(skip_all, fields(delivery_id = %claim.id, endpoint_id = %claim.endpoint_id, attempt = claim.attempts))]
    async fn run(self, claim: Claimed) {
        let started = Instant::now();
        let timestamp = chrono::Utc::now().timestamp();
        let header = signature::sign(&claim.secret, timestamp, claim.body.as_bytes());
        let (event_id, delivery_id) = (claim.event_id.to_string(), claim.id.to_string());
        let signed = Signed {
            signature: &header,
            event_id: &event_id,
            delivery_id: &delivery_id,
            attempt: claim.attempts,
        };
        let answer = self.client.post(&claim.url, &signed, claim.body.clone()).await;
        metrics::histogram!("surge_webhook_attempt_duration_seconds").record(started.elapsed().as_secs_f64());
        let result = judge(&self.settings, claim.attempts, &answer, &mut rand::thread_rng());
        let outcome = match (&result, &answer) {
            (AttemptResult::Delivered { .. }, _) => "delivered",
            (AttemptResult::Dead { .. }, _) => "dead",
            (AttemptResult::Retry { .. }, Answer::Refused(_)) => "refused",
            (AttemptResult::Retry { .. }, _) => "retried",
        };
        metrics::counter!("surge_webhook_deliveries_total", "outcome" => outcome).increment(1);
        match &result {
            AttemptResult::Delivered { status } => tracing::debug!(status, "webhook delivered"),
            AttemptResult::Retry { error, retry_in, .. } => {
                tracing::info!(
                    error,
                    retry_in_ms = retry_in.as_millis() as u64,
                    "webhook attempt failed; will retry"
                )
            }
            AttemptResult::Dead { error, .. } => tracing::warn!(error, "webhook delivery is dead"),
        }
        match tables::record(&self.pool, &claim, &result).await {
            Ok(true) => {}
            Ok(false) => tracing::info!("webhook delivery was claimed again meanwhile; the later attempt records"),
            // Its lease runs out and it is sent again: at least once.
            Err(e) => tracing::warn!(error = %e, "recording a webhook attempt failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    fn settings() -> DeliverySettings {
        DeliverySettings {
            max_attempts: 4,
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_millis(500),
            ..DeliverySettings::default()
        }
    }

    #[test]
    fn backoff_is_full_jitter_under_an_exponential_ceiling_with_a_cap() {
        let s = settings();
        let mut rng = SmallRng::seed_from_u64(7);
        for (attempts, ceiling) in [(1, 100), (2, 200), (3, 400), (4, 500), (20, 500), (i32::MAX, 500)] {
            let draws: Vec<u128> = (0..500).map(|_| backoff(&s, attempts, &mut rng).as_millis()).collect();
            assert!(
                draws.iter().all(|d| *d <= ceiling),
                "attempt {attempts}: above {ceiling}"
            );
            // Full jitter spreads over the whole range, not near the ceiling only.
            assert!(
                draws.iter().any(|d| *d < ceiling / 4),
                "attempt {attempts}: no low draw"
            );
            assert!(
                draws.iter().any(|d| *d > ceiling * 3 / 4),
                "attempt {attempts}: no high draw"
            );
        }
    }

    #[test]
    fn the_default_schedule_retries_for_hours_before_a_delivery_is_dead() {
        let s = DeliverySettings::default();
        assert_eq!(s.max_attempts, 18);
        // Worst case, computed from the real delays: every retry drawn at its ceiling.
        let mut rng = SmallRng::seed_from_u64(3);
        let mut worst = Duration::ZERO;
        let mut retries = 0;
        let mut attempts = 1;
        loop {
            let failed = Answer::Status {
                status: 503,
                head: String::new(),
            };
            match judge(&s, attempts, &failed, &mut rng) {
                AttemptResult::Retry { retry_in, .. } => {
                    assert!(retry_in <= ceiling(&s, attempts));
                    worst += ceiling(&s, attempts);
                    retries += 1;
                    attempts += 1;
                }
                AttemptResult::Dead { .. } => break,
                other => panic!("a 503 is not {other:?}"),
            }
        }
        assert_eq!(retries, 17);
        assert_eq!(worst, max_total_backoff(&s));
        // 1 + 2 + … + 2048 s, then five retries under the 1 h cap (what docs/webhooks.md says).
        assert_eq!(worst, Duration::from_secs(4_095 + 5 * 3_600));
        assert!(worst >= Duration::from_secs(3_600), "dead after {worst:?} at most");
        // On average half of that: still over an hour of outage before a delivery is dead.
        assert!(
            worst / 2 >= Duration::from_secs(3_600),
            "dead after {:?} on average",
            worst / 2
        );
    }

    #[test]
    fn only_2xx_delivers_and_the_last_failure_is_dead() {
        let s = settings();
        let mut rng = SmallRng::seed_from_u64(1);
        let answer = |status| Answer::Status {
            status,
            head: "x".into(),
        };
        assert_eq!(
            judge(&s, 1, &answer(204), &mut rng),
            AttemptResult::Delivered { status: 204 }
        );
        for failing in [
            answer(301),
            answer(404),
            answer(500),
            Answer::Failed("timed out".into()),
        ] {
            assert!(
                matches!(judge(&s, 1, &failing, &mut rng), AttemptResult::Retry { .. }),
                "{failing:?}"
            );
            assert!(
                matches!(judge(&s, 4, &failing, &mut rng), AttemptResult::Dead { .. }),
                "{failing:?}"
            );
        }
        let AttemptResult::Retry { error, .. } = judge(&s, 1, &answer(302), &mut rng) else {
            panic!()
        };
        assert!(error.contains("redirects are not followed"), "{error}");
    }
}
