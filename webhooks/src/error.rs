//! What the webhook workers fail with (the API answers problems instead: `crate::api`).

use surge_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}
