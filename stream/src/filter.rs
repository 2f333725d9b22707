//! The server-side filter of `$all` reads and subscriptions: on the event type or on the stream
//! name, by prefixes or by a regular expression (matched anywhere in the name, as KurrentDB
//! does), and how often a filtered subscription reports how far it has looked (checkpoints).
//!
//! Clients write .NET regular expressions: the Python clients' default excludes system events
//! with a negative look-ahead, so expressions are compiled with `fancy-regex` (look-around,
//! backreferences), with its backtracking bounded: a name that exhausts the bound is not matched.
//! A page of events is matched off the async workers ([`EventFilter::select`]), so that an
//! expensive expression slows its own read only.

use crate::proto::streams::read_req::options::{filter_options, FilterOptions};
use fancy_regex::{Regex, RegexBuilder};
use std::sync::Arc;
use surge_events::EventEnvelope;
use tonic::Status;

/// KurrentDB's default search window when the client leaves it to the server.
const DEFAULT_WINDOW: u32 = 32;
/// Backtracking steps one name may take before it counts as not matched.
pub const BACKTRACK_LIMIT: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    EventType,
    StreamName,
}

#[derive(Debug, Clone)]
pub struct EventFilter {
    target: Target,
    prefixes: Vec<String>,
    regex: Option<Arc<Regex>>,
    /// A filtered subscription sends a checkpoint after looking at this many events.
    pub checkpoint_every: u64,
}

impl EventFilter {
    /// The filter a request asks for; a bad regular expression or a filter with neither a
    /// regex nor a prefix is `InvalidArgument`.
    pub fn parse(options: &FilterOptions) -> Result<EventFilter, Status> {
        let (target, expression) = match &options.filter {
            Some(filter_options::Filter::EventType(e)) => (Target::EventType, e),
            Some(filter_options::Filter::StreamIdentifier(e)) => (Target::StreamName, e),
            None => {
                return Err(Status::invalid_argument(
                    "a filter needs an event type or stream name expression",
                ))
            }
        };
        let regex = if expression.regex.is_empty() {
            None
        } else {
            let compiled = RegexBuilder::new(&expression.regex)
                .backtrack_limit(BACKTRACK_LIMIT)
                .delegate_size_limit(1 << 20)
                .build()
                .map_err(|e| Status::invalid_argument(format!("bad filter regex: {e}")))?;
            Some(Arc::new(compiled))
        };
        if regex.is_none() && expression.prefix.is_empty() {
            return Err(Status::invalid_argument(
                "a filter needs a regex or at least one prefix",
            ));
        }
        let window = match options.window {
            Some(filter_options::Window::Max(max)) if max > 0 => max,
            _ => DEFAULT_WINDOW,
        };
        let multiplier = options.checkpoint_interval_multiplier.max(1);
        Ok(EventFilter {
            target,
            prefixes: expression.prefix.clone(),
            regex,
            checkpoint_every: u64::from(window) * u64::from(multiplier),
        })
    }

    pub fn matches(&self, e: &EventEnvelope) -> bool {
        let subject = match self.target {
            Target::EventType => e.event_type.as_str(),
            Target::StreamName => e.stream_id.as_str(),
        };
        match &self.regex {
            Some(regex) => regex.is_match(subject).unwrap_or(false),
            None => self.prefixes.iter().any(|p| subject.starts_with(p.as_str())),
        }
    }

    /// Which events of a page pass (in order, one flag per event), with the page handed back.
    /// A regular expression is matched on the blocking pool, not on an async worker.
    pub async fn select(&self, events: Vec<EventEnvelope>) -> Result<(Vec<EventEnvelope>, Vec<bool>), tonic::Status> {
        if self.regex.is_none() {
            let passes = events.iter().map(|e| self.matches(e)).collect();
            return Ok((events, passes));
        }
        let filter = self.clone();
        tokio::task::spawn_blocking(move || {
            let passes = events.iter().map(|e| filter.matches(e)).collect();
            (events, passes)
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "stream API: filter task failed");
            tonic::Status::internal("the read failed")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::streams::read_req::options::filter_options::{Expression, Filter, Window};
    use surge_events::{EventMetadata, StreamId, StreamType};

    fn event(stream: &str, event_type: &str) -> EventEnvelope {
        EventEnvelope {
            event_id: uuid::Uuid::now_v7(),
            position: 1,
            stream_id: StreamId(stream.into()),
            stream_type: StreamType::Order,
            version: 1,
            event_type: event_type.into(),
            schema_version: 1,
            occurred_at: chrono::Utc::now(),
            metadata: EventMetadata::new("test"),
            payload: serde_json::json!({}),
        }
    }

    fn options(filter: Filter, window: Option<Window>, multiplier: u32) -> FilterOptions {
        FilterOptions {
            filter: Some(filter),
            window,
            checkpoint_interval_multiplier: multiplier,
        }
    }

    fn expression(regex: &str, prefixes: &[&str]) -> Expression {
        Expression {
            regex: regex.into(),
            prefix: prefixes.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn prefixes_on_stream_names() {
        let f = EventFilter::parse(&options(
            Filter::StreamIdentifier(expression("", &["inventory-", "x"])),
            None,
            1,
        ))
        .unwrap();
        assert!(f.matches(&event("inventory-A", "ItemAdded")));
        assert!(!f.matches(&event("order-1", "ItemAdded")));
        assert_eq!(f.checkpoint_every, 32);
    }

    #[test]
    fn a_regex_on_event_types_matches_anywhere() {
        let f = EventFilter::parse(&options(
            Filter::EventType(expression("^Order(Paid|Placed)$", &[])),
            Some(Window::Max(10)),
            3,
        ))
        .unwrap();
        assert!(f.matches(&event("order-1", "OrderPaid")));
        assert!(!f.matches(&event("order-1", "OrderShipped")));
        assert_eq!(f.checkpoint_every, 30);
        let no_system_events = EventFilter::parse(&options(
            Filter::EventType(expression(r"^(?!(\$.+$|PersistentConfig\d+$|Result$))", &[])),
            None,
            1,
        ))
        .unwrap();
        assert!(no_system_events.matches(&event("order-1", "OrderPaid")));
        assert!(!no_system_events.matches(&event("order-1", "$metadata")));
        let anywhere = EventFilter::parse(&options(Filter::EventType(expression("Paid", &[])), None, 1)).unwrap();
        assert!(anywhere.matches(&event("order-1", "OrderPaid")));
    }

    #[tokio::test]
    async fn a_catastrophic_regex_gives_up_quickly_and_matches_nothing() {
        let f = EventFilter::parse(&options(
            Filter::StreamIdentifier(expression("^((?=.)[-a-z0-9]|[-a-z0-9])+!", &[])),
            None,
            1,
        ))
        .unwrap();
        let page: Vec<_> = (0..50)
            .map(|n| event(&format!("order-{n}-0123456789abcdef0123456789abcdef"), "OrderPlaced"))
            .collect();
        let started = std::time::Instant::now();
        let (page, passes) = f.select(page).await.unwrap();
        assert_eq!(page.len(), 50);
        assert_eq!(passes, vec![false; 50]);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "50 names took {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn bad_filters_are_invalid_arguments() {
        for bad in [
            options(Filter::EventType(expression("(", &[])), None, 1),
            options(Filter::EventType(expression("", &[])), None, 1),
        ] {
            assert_eq!(
                EventFilter::parse(&bad).unwrap_err().code(),
                tonic::Code::InvalidArgument
            );
        }
    }
}
