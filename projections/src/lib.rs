//! Surge's read-model builders: consume events from Kafka, keep the Postgres views.
//!
//! Owns the views' shapes and their pure folds ([`catalog`]: `catalog_items` and
//! `sales_by_minute` from `inventory.events`; [`orders`]: `orders` from `orders.events`), and
//! the projector worker ([`worker`]) that applies each batch of messages in one transaction
//! together with its checkpoint (`projection_checkpoints`), dead-letters what it cannot decode,
//! skips what it already applied (by stream version) and heals a version gap by reading the
//! missing events from the event store; and the replay that rebuilds views from the event store
//! into a new generation and switches to it without read downtime ([`replay`]). It never writes
//! the event store.

pub mod catalog;
pub mod heal;
pub mod orders;
pub mod replay;
pub mod worker;

pub use worker::{Projection, Projector, ProjectorConfig};

/// What a fold made of one event for the row of its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The event continues the row: apply it.
    Apply,
    /// The row already reflects this event (re-delivery).
    Duplicate,
    /// Events between the row's version and this one are missing.
    Gap { missing_from: i64, missing_to: i64 },
}

/// Where an event of `version` stands against a row at `row_version` (0: no row yet).
pub fn step(row_version: i64, version: i64) -> Step {
    if version <= row_version {
        Step::Duplicate
    } else if version == row_version + 1 {
        Step::Apply
    } else {
        Step::Gap {
            missing_from: row_version + 1,
            missing_to: version - 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_continue_duplicate_or_gap() {
        assert_eq!(step(0, 1), Step::Apply);
        assert_eq!(step(3, 4), Step::Apply);
        assert_eq!(step(3, 3), Step::Duplicate);
        assert_eq!(step(3, 1), Step::Duplicate);
        assert_eq!(
            step(3, 6),
            Step::Gap {
                missing_from: 4,
                missing_to: 5
            }
        );
    }
}
