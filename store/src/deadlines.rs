//! Reservation deadlines: when each unpaid order's hold on stock runs out, so the expiry
//! worker finds due ones without scanning streams.
//!
//! A deadline is written with the order's events and forgotten with the transition that ends
//! the hold (cancelled, expired, paid, failed, refunded). The payment worker's queue,
//! `pending_payments`, is read here only where a deadline must wait for it (an order whose
//! payment is being settled is never claimed) or go with it (a settled payment takes its
//! order's deadline along, in one statement).

use crate::error::StoreError;
use crate::idempotency::Answer;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use surge_events::OrderId;
use uuid::Uuid;

/// Writes the deadlines of newly placed orders and the answers of their idempotency keys, in
/// one statement (one round trip less per batch: a hot lane's batches are back to back).
pub async fn insert_with_answers(
    conn: &mut PgConnection,
    deadlines: &[(OrderId, DateTime<Utc>)],
    answers: &[Answer<'_>],
) -> Result<(), StoreError> {
    let ids: Vec<Uuid> = deadlines.iter().map(|(o, _)| o.0).collect();
    let expires: Vec<DateTime<Utc>> = deadlines.iter().map(|(_, at)| *at).collect();
    let scopes: Vec<&str> = answers.iter().map(|a| a.scope).collect();
    let names: Vec<&str> = answers.iter().map(|a| a.key).collect();
    let statuses: Vec<i16> = answers.iter().map(|a| a.status).collect();
    let bodies: Vec<&serde_json::Value> = answers.iter().map(|a| &a.response).collect();
    sqlx::query(
        "WITH deadlines AS (INSERT INTO reservation_deadlines (order_id, expires_at) \
             SELECT * FROM UNNEST($1::uuid[], $2::timestamptz[])) \
         UPDATE idempotency_keys i SET status = u.st, response = u.r \
         FROM UNNEST($3::text[], $4::text[], $5::smallint[], $6::jsonb[]) AS u(s, k, st, r) \
         WHERE i.scope = u.s AND i.key = u.k",
    )
    .bind(&ids)
    .bind(&expires)
    .bind(&scopes)
    .bind(&names)
    .bind(&statuses)
    .bind(&bodies)
    .execute(conn)
    .await?;
    Ok(())
}

/// The order's hold is over (cancelled or expired): forgets its deadline.
pub async fn forget(conn: &mut PgConnection, order_id: OrderId) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM reservation_deadlines WHERE order_id = $1")
        .bind(order_id.0)
        .execute(conn)
        .await?;
    Ok(())
}

/// The order's payment settled (paid, failed or refunded): forgets its `pending_payments` row
/// and its deadline, in one statement.
pub async fn forget_with_payment(conn: &mut PgConnection, order_id: OrderId) -> Result<(), StoreError> {
    sqlx::query(
        "WITH p AS (DELETE FROM pending_payments WHERE order_id = $1) \
         DELETE FROM reservation_deadlines WHERE order_id = $1",
    )
    .bind(order_id.0)
    .execute(conn)
    .await?;
    Ok(())
}

/// Claims up to `limit` due deadlines of orders with no payment pending, earliest first, and
/// pushes each `lease` ahead, so that other workers skip them meanwhile (`FOR UPDATE SKIP
/// LOCKED`: two claims never return one order).
pub async fn claim_due(pool: &PgPool, lease: std::time::Duration, limit: i64) -> Result<Vec<OrderId>, StoreError> {
    let due: Vec<Uuid> = sqlx::query_scalar(
        "UPDATE reservation_deadlines SET expires_at = now() + make_interval(secs => $1) \
         WHERE order_id IN (SELECT d.order_id FROM reservation_deadlines d WHERE d.expires_at <= now() \
                            AND NOT EXISTS (SELECT 1 FROM pending_payments p WHERE p.order_id = d.order_id) \
                            ORDER BY d.expires_at LIMIT $2 FOR UPDATE OF d SKIP LOCKED) \
         RETURNING order_id",
    )
    .bind(lease.as_secs_f64())
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(due.into_iter().map(OrderId).collect())
}
