//! Purchase allowances: how many units of an item with a purchase limit each customer holds
//! (reserved or bought, not released), kept beside the events in the writer's transaction.
//!
//! One row per counted order line (`purchase_allowances`). A writer that reserves lines of
//! limited items first takes each (sku, customer)'s transaction-scoped advisory lock
//! ([`lock`], after its stream locks and in one order: no deadlock with another writer), then
//! reads the customer's units ([`held`], a statement of its own so its snapshot sees what the
//! previous holder of the lock committed), decides, and records what it placed ([`record`]).
//! Concurrent orders of one customer, through any instance and any bucket, so take turns and
//! never pass the limit. Releasing deletes an order's rows ([`release`]) and needs no lock: it
//! only lowers a sum, so a writer that read the higher one decided conservatively.

use crate::error::StoreError;
use sqlx::{PgConnection, PgPool};
use surge_events::{CustomerId, OrderId, Sku};
use uuid::Uuid;

/// One order line counted against its item's limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    pub order_id: OrderId,
    pub sku: Sku,
    pub customer_id: CustomerId,
    pub units: i64,
}

/// Takes the advisory lock of every (sku, customer) in `keys` for this transaction, in one
/// order (the two-integer lock space: apart from the streams' locks).
pub async fn lock(conn: &mut PgConnection, keys: &[(Sku, CustomerId)]) -> Result<(), StoreError> {
    if keys.is_empty() {
        return Ok(());
    }
    let skus: Vec<&str> = keys.iter().map(|(s, _)| s.as_str()).collect();
    let customers: Vec<&str> = keys.iter().map(|(_, c)| c.as_str()).collect();
    sqlx::query(
        "SELECT pg_advisory_xact_lock(a, b) FROM \
         (SELECT DISTINCT hashtext(s) AS a, hashtext(c) AS b FROM unnest($1::text[], $2::text[]) AS u(s, c) \
          ORDER BY a, b) AS l",
    )
    .bind(&skus)
    .bind(&customers)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The units each (sku, customer) of `keys` holds, in the order of `keys` (after [`lock`]).
pub async fn held(conn: &mut PgConnection, keys: &[(Sku, CustomerId)]) -> Result<Vec<i64>, StoreError> {
    if keys.is_empty() {
        return Ok(vec![]);
    }
    let skus: Vec<&str> = keys.iter().map(|(s, _)| s.as_str()).collect();
    let customers: Vec<&str> = keys.iter().map(|(_, c)| c.as_str()).collect();
    let units: Vec<i64> = sqlx::query_scalar(
        "SELECT coalesce((SELECT sum(p.units) FROM purchase_allowances p \
                          WHERE p.sku = u.s AND p.customer_id = u.c), 0)::bigint \
         FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(s, c, n) ORDER BY u.n",
    )
    .bind(&skus)
    .bind(&customers)
    .fetch_all(&mut *conn)
    .await?;
    Ok(units)
}

/// Records the counted lines of newly placed orders.
pub async fn record(conn: &mut PgConnection, counted: &[Counted]) -> Result<(), StoreError> {
    if counted.is_empty() {
        return Ok(());
    }
    let orders: Vec<Uuid> = counted.iter().map(|c| c.order_id.0).collect();
    let skus: Vec<&str> = counted.iter().map(|c| c.sku.as_str()).collect();
    let customers: Vec<&str> = counted.iter().map(|c| c.customer_id.as_str()).collect();
    let units: Vec<i64> = counted.iter().map(|c| c.units).collect();
    sqlx::query(
        "INSERT INTO purchase_allowances (order_id, sku, customer_id, units) \
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bigint[])",
    )
    .bind(&orders)
    .bind(&skus)
    .bind(&customers)
    .bind(&units)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The order's hold was released or expired: its units no longer count.
pub async fn release(conn: &mut PgConnection, order_id: OrderId) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM purchase_allowances WHERE order_id = $1")
        .bind(order_id.0)
        .execute(conn)
        .await?;
    Ok(())
}

/// The units `customer` holds of `sku` now (operators, tests).
pub async fn held_by(pool: &PgPool, sku: &Sku, customer: &CustomerId) -> Result<i64, StoreError> {
    let units: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(units), 0)::bigint FROM purchase_allowances WHERE sku = $1 AND customer_id = $2",
    )
    .bind(sku.as_str())
    .bind(customer.as_str())
    .fetch_one(pool)
    .await?;
    Ok(units)
}
