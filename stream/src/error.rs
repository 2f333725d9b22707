//! What can go wrong: at startup ([`StreamApiError`]), and while serving a read ([`Stop`]), whose
//! store errors become gRPC statuses (logged once here, opaque to the client).

use crate::proto::streams::ReadResp;
use surge_store::StoreError;
use tokio::sync::mpsc;
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum StreamApiError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("binding {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("connecting to Postgres: {0}")]
    Database(#[from] sqlx::Error),
    #[error("reading {path}: {source}")]
    File { path: String, source: std::io::Error },
    #[error("serving: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Why a read stopped before its end.
#[derive(Debug)]
pub enum Stop {
    /// The client went away: nothing to tell anyone.
    Gone,
    /// The read failed: the client is told with this status.
    Failed(Status),
}

impl From<StoreError> for Stop {
    fn from(e: StoreError) -> Self {
        Stop::Failed(store_status(&e))
    }
}

impl From<sqlx::Error> for Stop {
    fn from(e: sqlx::Error) -> Self {
        Stop::from(StoreError::from(e))
    }
}

/// A store error as the client sees it: `Unavailable` when a retry may work, `Internal`
/// otherwise; the cause is logged here, once, and not sent.
pub fn store_status(e: &StoreError) -> Status {
    let unavailable = match e {
        StoreError::Database(db) => surge_runtime::db::is_unavailable(db) || surge_store::is_transient(db),
        StoreError::InFlightTooLong(_) => true,
        _ => false,
    };
    if unavailable {
        tracing::warn!(error = %e, "stream API: store unavailable");
        Status::unavailable("the event store is unavailable; retry")
    } else {
        tracing::error!(error = %e, "stream API: read failed");
        Status::internal("the read failed")
    }
}

/// Where a read sends its responses.
pub type Out = mpsc::Sender<Result<ReadResp, Status>>;

/// Sends one response; `Gone` when the client has gone.
pub async fn send(out: &Out, resp: ReadResp) -> Result<(), Stop> {
    out.send(Ok(resp)).await.map_err(|_| Stop::Gone)
}
