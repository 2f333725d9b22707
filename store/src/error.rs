//! What can go wrong in the store, for readers and writers alike.

use std::time::Duration;
use surge_events::DecodeError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another writer appended to the stream since `expected` was read (SQLSTATE 23505 on
    /// `events_stream_version_key`): decide again on the newer state.
    #[error("stream {stream_id} changed concurrently: expected version {expected}")]
    Conflict { stream_id: String, expected: i64 },
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("stored event does not decode: {0}")]
    Decode(#[from] DecodeError),
    /// The connection failed during `COMMIT` and the store could not be asked in time
    /// whether the transaction took: it may have.
    #[error("the commit's outcome is unknown: {0}")]
    CommitOutcomeUnknown(sqlx::Error),
    #[error("writers held transactions open for more than {0:?}; the safe position could not be confirmed")]
    InFlightTooLong(Duration),
    #[error("the safe position was asked inside a transaction that already has an id (take advisory locks, not row locks, before asking)")]
    CallerHasTransactionId,
}

impl StoreError {
    /// A clash that deciding again on fresher state resolves: a version conflict, or a
    /// deadlock/serialization failure Postgres broke by aborting this transaction.
    pub fn is_conflict(&self) -> bool {
        match self {
            StoreError::Conflict { .. } => true,
            StoreError::Database(e) => is_transient(e),
            StoreError::Decode(_)
            | StoreError::CommitOutcomeUnknown(_)
            | StoreError::InFlightTooLong(_)
            | StoreError::CallerHasTransactionId => false,
        }
    }
}

/// Deadlock detected (40P01) or serialization failure (40001): safe to run the transaction again.
pub fn is_transient(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "40P01" || c == "40001")
}

/// For callers whose errors are sqlx's (the projector's batches, the query side's reads): a
/// database error stays itself, anything else of the store becomes a protocol error.
impl From<StoreError> for sqlx::Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Database(e) => e,
            other => sqlx::Error::Protocol(other.to_string()),
        }
    }
}
