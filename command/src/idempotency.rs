//! Idempotency keys: a retried request with the same key gets the first answer again.
//!
//! The key is claimed in the same transaction as the command's events: of several concurrent
//! requests with one key, one commits and the others find the key taken (Postgres makes the
//! later `INSERT ... ON CONFLICT` wait for the first transaction) and answer what it stored.
//! The same key with a different body is refused. The keys' SQL is `surge-store`'s
//! ([`surge_store::idempotency`]); what a request and its answer are is decided here.

use crate::answers::CommandError;
use serde::{de::DeserializeOwned, Serialize};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use surge_store::idempotency::Claim;
use surge_store::StoreError;

#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    /// Who the key belongs to and for which operation, e.g. `orders:<customer>`.
    pub scope: String,
    pub key: String,
    /// SHA-256 of the request's canonical form.
    pub request_hash: Vec<u8>,
}

impl IdempotencyKey {
    pub fn new(scope: impl Into<String>, key: impl Into<String>, request: &impl Serialize) -> Self {
        let canonical = serde_json::to_vec(request).unwrap_or_default();
        IdempotencyKey {
            scope: scope.into(),
            key: key.into(),
            request_hash: Sha256::digest(&canonical).to_vec(),
        }
    }
}

/// The stored answer for this key, if a request with it committed; a mismatch if the body differs.
pub async fn lookup<T: DeserializeOwned>(
    pool: &PgPool,
    key: &IdempotencyKey,
) -> Result<Option<Result<T, CommandError>>, StoreError> {
    let Some(stored) = surge_store::idempotency::lookup(pool, &key.scope, &key.key).await? else {
        return Ok(None);
    };
    if stored.request_hash != key.request_hash {
        return Ok(Some(Err(CommandError::IdempotencyKeyReused)));
    }
    Ok(Some(
        serde_json::from_value(stored.response)
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))
            .map_err(CommandError::from),
    ))
}

/// Claims several keys in one statement, in key order (so two transactions claiming
/// overlapping keys cannot deadlock). Returns which of `keys` this transaction now holds.
pub async fn claim_many(conn: &mut PgConnection, keys: &[&IdempotencyKey]) -> Result<Vec<bool>, StoreError> {
    let claims: Vec<Claim<'_>> = keys
        .iter()
        .map(|k| Claim {
            scope: &k.scope,
            key: &k.key,
            request_hash: &k.request_hash,
        })
        .collect();
    surge_store::idempotency::claim_many(conn, &claims).await
}

/// Gives back claims of requests that were refused, so a corrected retry can use the key.
pub async fn release_many(conn: &mut PgConnection, keys: &[&IdempotencyKey]) -> Result<(), StoreError> {
    let keys: Vec<(&str, &str)> = keys.iter().map(|k| (k.scope.as_str(), k.key.as_str())).collect();
    surge_store::idempotency::release_many(conn, &keys).await
}
