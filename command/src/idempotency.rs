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

/// The stored answer for this key, if a request with it committed; a mismatch if the body differs.
pub async fn lookup<T: DeserializeOwned>(
    pool: &PgPool,
    key: &IdempotencyKey,
) -> Result<Option<Result<T, CommandError>>, sqlx::Error> {
    let row = sqlx::query("SELECT request_hash, response FROM idempotency_keys WHERE scope = $1 AND key = $2")
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

/// Claims several keys in one statement, in key order (so two transactions claiming
/// overlapping keys cannot deadlock). Returns which of `keys` this transaction now holds.
pub async fn claim_many(conn: &mut PgConnection, keys: &[&IdempotencyKey]) -> Result<Vec<bool>, sqlx::Error> {
    if keys.is_empty() {
        return Ok(vec![]);
    }
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by(|&a, &b| (&keys[a].scope, &keys[a].key).cmp(&(&keys[b].scope, &keys[b].key)));
    let scopes: Vec<&str> = order.iter().map(|&i| keys[i].scope.as_str()).collect();
    let names: Vec<&str> = order.iter().map(|&i| keys[i].key.as_str()).collect();
    let hashes: Vec<&[u8]> = order.iter().map(|&i| keys[i].request_hash.as_slice()).collect();
    let claimed: Vec<(String, String)> = sqlx::query_as(
        "INSERT INTO idempotency_keys (scope, key, request_hash, status, response) \
         SELECT s, k, h, 0, 'null' FROM UNNEST($1::text[], $2::text[], $3::bytea[]) \
             WITH ORDINALITY AS u(s, k, h, ord) ORDER BY ord \
         ON CONFLICT DO NOTHING RETURNING scope, key",
    )
    .bind(&scopes)
    .bind(&names)
    .bind(&hashes)
    .fetch_all(conn)
    .await?;
    let claimed: std::collections::HashSet<(String, String)> = claimed.into_iter().collect();
    Ok(keys
        .iter()
        .map(|k| claimed.contains(&(k.scope.clone(), k.key.clone())))
        .collect())
}

/// Gives back claims of requests that were refused, so a corrected retry can use the key.
pub async fn release_many(conn: &mut PgConnection, keys: &[&IdempotencyKey]) -> Result<(), sqlx::Error> {
    if keys.is_empty() {
        return Ok(());
    }
    let scopes: Vec<&str> = keys.iter().map(|k| k.scope.as_str()).collect();
    let names: Vec<&str> = keys.iter().map(|k| k.key.as_str()).collect();
    sqlx::query(
        "DELETE FROM idempotency_keys i USING UNNEST($1::text[], $2::text[]) AS u(s, k) \
         WHERE i.scope = u.s AND i.key = u.k",
    )
    .bind(&scopes)
    .bind(&names)
    .execute(conn)
    .await?;
    Ok(())
}
