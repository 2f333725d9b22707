//! Idempotency keys: a retried request with the same key gets the first answer again.
//!
//! The key is claimed in the same transaction as the command's events: of several concurrent
//! requests with one key, one commits and the others find the key taken (Postgres makes the
//! later `INSERT ... ON CONFLICT` wait for the first transaction) and answer what it stored.
//! The same key with a different body is refused.

use crate::commands::CommandError;
use serde::{de::DeserializeOwned, Serialize};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool, Row};

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

pub enum Claim {
    Claimed,
    Taken,
}

/// The stored answer for this key, if a request with it committed; a mismatch if the body differs.
pub async fn lookup<T: DeserializeOwned>(
    pool: &PgPool,
    key: &IdempotencyKey,
) -> Result<Option<Result<T, CommandError>>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT request_hash, response FROM idempotency_keys WHERE scope = $1 AND key = $2",
    )
    .bind(&key.scope)
    .bind(&key.key)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let hash: Vec<u8> = row.try_get("request_hash")?;
    if hash != key.request_hash {
        return Ok(Some(Err(CommandError::IdempotencyKeyReused)));
    }
    let response: serde_json::Value = row.try_get("response")?;
    Ok(Some(
        serde_json::from_value(response)
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))
            .map_err(CommandError::from),
    ))
}

/// Claims the key in the caller's transaction.
pub async fn claim(conn: &mut PgConnection, key: &IdempotencyKey) -> Result<Claim, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (scope, key, request_hash, status, response) \
         VALUES ($1, $2, $3, 0, 'null') ON CONFLICT DO NOTHING",
    )
    .bind(&key.scope)
    .bind(&key.key)
    .bind(&key.request_hash)
    .execute(conn)
    .await?;
    Ok(if inserted.rows_affected() == 1 {
        Claim::Claimed
    } else {
        Claim::Taken
    })
}

/// Stores the answer for a claimed key, in the same transaction.
pub async fn complete(
    conn: &mut PgConnection,
    key: &IdempotencyKey,
    status: u16,
    answer: &impl Serialize,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE idempotency_keys SET status = $3, response = $4 WHERE scope = $1 AND key = $2",
    )
    .bind(&key.scope)
    .bind(&key.key)
    .bind(status as i16)
    .bind(serde_json::to_value(answer).unwrap_or_default())
    .execute(conn)
    .await?;
    Ok(())
}
