//! Idempotency keys: the first answer to a keyed request, kept so that retries get it again.
//!
//! A key is claimed in the same transaction as the command's events: of several concurrent
//! claims of one key, one commits and the others find it taken (Postgres makes the later
//! `INSERT ... ON CONFLICT` wait for the first transaction). What a request is and how its
//! answer looks is the caller's: here a key is its scope, its name, the hash of the request
//! and the stored answer as JSON.

use crate::error::StoreError;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};

/// One key as a request claims it.
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    pub scope: &'a str,
    pub key: &'a str,
    pub request_hash: &'a [u8],
}

/// What a committed request stored under its key.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub request_hash: Vec<u8>,
    pub response: Value,
}

/// A key's answer, written once its request's decision is known.
#[derive(Debug, Clone)]
pub struct Answer<'a> {
    pub scope: &'a str,
    pub key: &'a str,
    /// The HTTP status the answer was given with.
    pub status: i16,
    pub response: Value,
}

/// What is stored under `scope`/`key`, if a request with it committed.
pub async fn lookup(pool: &PgPool, scope: &str, key: &str) -> Result<Option<Stored>, StoreError> {
    let row: Option<(Vec<u8>, Value)> =
        sqlx::query_as("SELECT request_hash, response FROM idempotency_keys WHERE scope = $1 AND key = $2")
            .bind(scope)
            .bind(key)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|(request_hash, response)| Stored { request_hash, response }))
}

/// Claims several keys in one statement, in key order (so two transactions claiming
/// overlapping keys cannot deadlock). Returns which of `claims` this transaction now holds.
pub async fn claim_many(conn: &mut PgConnection, claims: &[Claim<'_>]) -> Result<Vec<bool>, StoreError> {
    if claims.is_empty() {
        return Ok(vec![]);
    }
    let mut order: Vec<usize> = (0..claims.len()).collect();
    order.sort_by(|&a, &b| (claims[a].scope, claims[a].key).cmp(&(claims[b].scope, claims[b].key)));
    let scopes: Vec<&str> = order.iter().map(|&i| claims[i].scope).collect();
    let names: Vec<&str> = order.iter().map(|&i| claims[i].key).collect();
    let hashes: Vec<&[u8]> = order.iter().map(|&i| claims[i].request_hash).collect();
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
    Ok(claims
        .iter()
        .map(|c| claimed.contains(&(c.scope.to_owned(), c.key.to_owned())))
        .collect())
}

/// Gives back claims (`(scope, key)`) of requests that were refused, so a corrected retry can
/// use the key.
pub async fn release_many(conn: &mut PgConnection, keys: &[(&str, &str)]) -> Result<(), StoreError> {
    if keys.is_empty() {
        return Ok(());
    }
    let scopes: Vec<&str> = keys.iter().map(|(s, _)| *s).collect();
    let names: Vec<&str> = keys.iter().map(|(_, k)| *k).collect();
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
