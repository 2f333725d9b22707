//! Circuit breakers around what a process calls out to (the payment gateway, Kafka).
//! After `failures` failures in a row a breaker opens: callers stop calling (the payment
//! worker leaves payments queued, the relay leaves events in the outbox) and try again after
//! an exponentially growing pause, one trial call at a time. Its state is exported as the
//! `surge_circuit_open{breaker}` gauge and `surge_circuit_failures_total{breaker}` counter.

use failsafe::backoff::{exponential, Exponential};
use failsafe::failure_policy::{consecutive_failures, ConsecutiveFailures};
use failsafe::{Config, StateMachine};
use std::time::Duration;

#[derive(Clone)]
pub struct Breaker {
    name: &'static str,
    machine: StateMachine<ConsecutiveFailures<Exponential>, ()>,
}

impl Breaker {
    /// Pauses are whole seconds, at least one (the backoff of `failsafe` counts in seconds).
    pub fn new(name: &'static str, failures: u32, open_min: Duration, open_max: Duration) -> Self {
        let open_min = open_min.max(Duration::from_secs(1));
        let policy = consecutive_failures(failures, exponential(open_min, open_max.max(open_min)));
        Breaker {
            name,
            machine: Config::new().failure_policy(policy).build(),
        }
    }

    /// False while open: do not call.
    pub fn permits(&self) -> bool {
        let permitted = self.machine.is_call_permitted();
        metrics::gauge!("surge_circuit_open", "breaker" => self.name).set(if permitted { 0.0 } else { 1.0 });
        permitted
    }

    pub fn succeeded(&self) {
        self.machine.on_success();
    }

    pub fn failed(&self) {
        self.machine.on_error();
        metrics::counter!("surge_circuit_failures_total", "breaker" => self.name).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_closes_after_a_good_trial() {
        let b = Breaker::new("test", 3, Duration::from_secs(1), Duration::from_secs(2));
        b.failed();
        b.failed();
        assert!(b.permits(), "two failures are not enough");
        b.succeeded();
        for _ in 0..3 {
            b.failed();
        }
        assert!(!b.permits(), "open after three in a row");
        std::thread::sleep(Duration::from_millis(1100));
        assert!(b.permits(), "half-open: one trial");
        b.succeeded();
        assert!(b.permits());
    }
}
