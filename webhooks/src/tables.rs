//! The only SQL on the webhook tables (`webhook_endpoints`, `webhook_endpoint_pauses`,
//! `webhook_deliveries`, `webhook_fanout_cursor`, migration `0009_webhooks.sql`). The log
//! itself is read through `surge-store` only.

use crate::notification::{EventType, Notification};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool, Row};
use std::time::Duration;
use utoipa::ToSchema;
use uuid::Uuid;

/// Whether an endpoint is sent anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EndpointState {
    /// Owed every subscribed change from now on; sent what it is owed.
    Active,
    /// Owed nothing committed after the pause (changes while paused are never queued for it);
    /// what was committed before it is still queued and waits, with what was queued already,
    /// until it is resumed.
    Paused,
}

impl EndpointState {
    fn parse(s: &str) -> Self {
        if s == "paused" {
            EndpointState::Paused
        } else {
            EndpointState::Active
        }
    }
}

/// An endpoint as it is shown (never with its secret).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Endpoint {
    pub id: Uuid,
    pub url: String,
    pub event_types: Vec<EventType>,
    pub state: EndpointState,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
}

fn event_types(raw: Vec<String>) -> Vec<EventType> {
    raw.iter().filter_map(|t| EventType::parse(t)).collect()
}

fn endpoint(row: &sqlx::postgres::PgRow) -> Result<Endpoint, sqlx::Error> {
    Ok(Endpoint {
        id: row.try_get("id")?,
        url: row.try_get("url")?,
        event_types: event_types(row.try_get("event_types")?),
        state: EndpointState::parse(row.try_get("state")?),
        created_by: row.try_get("created_by")?,
        created_at: row.try_get("created_at")?,
    })
}

const ENDPOINT_COLUMNS: &str = "id, url, event_types, state, created_by, created_at";

/// A new endpoint's row.
pub struct NewEndpoint<'a> {
    pub url: &'a str,
    pub event_types: &'a [EventType],
    pub secret: &'a str,
    /// Events at or below this position are not owed to it.
    pub after_position: i64,
    pub created_by: &'a str,
}

pub async fn insert_endpoint(pool: &PgPool, new: &NewEndpoint<'_>) -> Result<Endpoint, sqlx::Error> {
    let types: Vec<&str> = new.event_types.iter().map(|t| t.as_str()).collect();
    let row = sqlx::query(&format!(
        "INSERT INTO webhook_endpoints (id, url, event_types, secret, after_position, created_by) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING {ENDPOINT_COLUMNS}"
    ))
    .bind(Uuid::new_v4())
    .bind(new.url)
    .bind(&types)
    .bind(new.secret)
    .bind(new.after_position)
    .bind(new.created_by)
    .fetch_one(pool)
    .await?;
    endpoint(&row)
}

pub async fn list_endpoints(pool: &PgPool) -> Result<Vec<Endpoint>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints ORDER BY created_at, id"
    ))
    .fetch_all(pool)
    .await?;
    rows.iter().map(endpoint).collect()
}

pub async fn get_endpoint(pool: &PgPool, id: Uuid) -> Result<Option<Endpoint>, sqlx::Error> {
    let row = sqlx::query(&format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(endpoint).transpose()
}

/// Pauses: events after `safe_position` (a safe position taken now) are not owed to it until
/// it is resumed; those up to it still are, whenever the fan-out reaches them. Pausing a paused
/// endpoint changes nothing. `None` when there is no such endpoint.
pub async fn pause(pool: &PgPool, id: Uuid, safe_position: i64) -> Result<Option<Endpoint>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let Some(state) = lock_state(&mut tx, id).await? else {
        return Ok(None);
    };
    if state == EndpointState::Active {
        sqlx::query("INSERT INTO webhook_endpoint_pauses (endpoint_id, paused_after) VALUES ($1, $2)")
            .bind(id)
            .bind(safe_position)
            .execute(&mut *tx)
            .await?;
    }
    let endpoint = write_state(&mut tx, id, "paused").await?;
    tx.commit().await?;
    Ok(Some(endpoint))
}

/// Resumes: events after `safe_position` (a safe position taken now) are owed to it again;
/// those committed while it was paused never are. Resuming an active endpoint changes nothing.
/// `None` when there is no such endpoint.
pub async fn resume(pool: &PgPool, id: Uuid, safe_position: i64) -> Result<Option<Endpoint>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let Some(state) = lock_state(&mut tx, id).await? else {
        return Ok(None);
    };
    if state == EndpointState::Paused {
        sqlx::query(
            "UPDATE webhook_endpoint_pauses SET resumed_after = greatest(paused_after, $2) \
             WHERE endpoint_id = $1 AND resumed_after IS NULL",
        )
        .bind(id)
        .bind(safe_position)
        .execute(&mut *tx)
        .await?;
    }
    let endpoint = write_state(&mut tx, id, "active").await?;
    tx.commit().await?;
    Ok(Some(endpoint))
}

/// The endpoint's state, its row locked until the transaction ends.
async fn lock_state(tx: &mut PgConnection, id: Uuid) -> Result<Option<EndpointState>, sqlx::Error> {
    let state: Option<String> = sqlx::query_scalar("SELECT state FROM webhook_endpoints WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(tx)
        .await?;
    Ok(state.as_deref().map(EndpointState::parse))
}

async fn write_state(tx: &mut PgConnection, id: Uuid, state: &str) -> Result<Endpoint, sqlx::Error> {
    let row = sqlx::query(&format!(
        "UPDATE webhook_endpoints SET state = $2 WHERE id = $1 RETURNING {ENDPOINT_COLUMNS}"
    ))
    .bind(id)
    .bind(state)
    .fetch_one(tx)
    .await?;
    endpoint(&row)
}

/// Deletes the endpoint and everything owed to it; false when there was no such endpoint.
pub async fn delete_endpoint(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() > 0)
}

// --- The fan-out.

/// Locks the fan-out's cursor for this transaction and returns it: one fan-out at a time moves
/// it, and deliveries are queued in the transaction that moves it past their events.
pub async fn lock_cursor(tx: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT position FROM webhook_fanout_cursor WHERE singleton FOR UPDATE")
        .fetch_one(tx)
        .await
}

pub async fn read_cursor(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT position FROM webhook_fanout_cursor WHERE singleton")
        .fetch_one(pool)
        .await
}

pub async fn advance_cursor(tx: &mut PgConnection, position: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE webhook_fanout_cursor SET position = $1 WHERE singleton AND position < $1")
        .bind(position)
        .execute(tx)
        .await?;
    Ok(())
}

/// An endpoint as the fan-out matches events to it, paused or not.
pub struct Subscriber {
    pub id: Uuid,
    pub event_types: Vec<EventType>,
    pub after_position: i64,
    /// Its pauses not yet behind the fan-out's cursor: events in `(paused_after,
    /// resumed_after]` are not owed (`None`: still paused).
    pub pauses: Vec<(i64, Option<i64>)>,
}

impl Subscriber {
    /// Whether the event at `position` is owed to it: after its registration, and not committed
    /// while it was paused. Decided by the event's position, not by the endpoint's state when
    /// the fan-out reaches the event (which may be long after).
    pub fn owed(&self, position: i64) -> bool {
        position > self.after_position
            && !self
                .pauses
                .iter()
                .any(|(paused, resumed)| position > *paused && resumed.is_none_or(|r| position <= r))
    }
}

/// Every endpoint, paused or not, with its pauses.
pub async fn subscribers(tx: &mut PgConnection) -> Result<Vec<Subscriber>, sqlx::Error> {
    let rows = sqlx::query("SELECT id, event_types, after_position FROM webhook_endpoints")
        .fetch_all(&mut *tx)
        .await?;
    let mut subscribers = rows
        .iter()
        .map(|r| {
            Ok(Subscriber {
                id: r.try_get("id")?,
                event_types: event_types(r.try_get("event_types")?),
                after_position: r.try_get("after_position")?,
                pauses: Vec::new(),
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let pauses: Vec<(Uuid, i64, Option<i64>)> =
        sqlx::query_as("SELECT endpoint_id, paused_after, resumed_after FROM webhook_endpoint_pauses")
            .fetch_all(&mut *tx)
            .await?;
    for (endpoint_id, paused, resumed) in pauses {
        if let Some(s) = subscribers.iter_mut().find(|s| s.id == endpoint_id) {
            s.pauses.push((paused, resumed));
        }
    }
    Ok(subscribers)
}

/// Forgets the pauses that ended at or below `cursor`: no event the fan-out has still to read
/// can fall in them.
pub async fn forget_pauses_before(tx: &mut PgConnection, cursor: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("DELETE FROM webhook_endpoint_pauses WHERE resumed_after <= $1")
        .bind(cursor)
        .execute(tx)
        .await?;
    Ok(done.rows_affected())
}

/// Queues one delivery of `notification` to each endpoint of `endpoints` (a delivery that
/// exists already is left as it is). Returns how many were queued.
pub async fn queue_deliveries(tx: &mut PgConnection, queued: &[(Uuid, &Notification)]) -> Result<u64, sqlx::Error> {
    if queued.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = queued.iter().map(|_| Uuid::now_v7()).collect();
    let endpoints: Vec<Uuid> = queued.iter().map(|(e, _)| *e).collect();
    let event_ids: Vec<Uuid> = queued.iter().map(|(_, n)| n.event_id).collect();
    let orders: Vec<Uuid> = queued.iter().map(|(_, n)| n.order_id.0).collect();
    let positions: Vec<i64> = queued.iter().map(|(_, n)| n.position).collect();
    let types: Vec<&str> = queued.iter().map(|(_, n)| n.event_type.as_str()).collect();
    let bodies: Vec<&str> = queued.iter().map(|(_, n)| n.body.as_str()).collect();
    let done = sqlx::query(
        "INSERT INTO webhook_deliveries (id, endpoint_id, event_id, order_id, position, event_type, body) \
         SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::bigint[], $6::text[], $7::text[]) \
         ON CONFLICT (endpoint_id, event_id) DO NOTHING",
    )
    .bind(&ids)
    .bind(&endpoints)
    .bind(&event_ids)
    .bind(&orders)
    .bind(&positions)
    .bind(&types)
    .bind(&bodies)
    .execute(tx)
    .await?;
    Ok(done.rows_affected())
}

// --- The deliverer.

/// A delivery claimed for one attempt.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: Uuid,
    pub endpoint_id: Uuid,
    pub url: String,
    pub secret: String,
    pub event_id: Uuid,
    pub body: String,
    /// Attempts so far, this one included.
    pub attempts: i32,
}

/// Claims up to `limit` due deliveries for one attempt each: counts the attempt and leases the
/// delivery until `lease` from now (a deliverer that dies mid-attempt leaves it to be tried
/// again then). A delivery is due when its endpoint is active and no earlier delivery of the
/// same (endpoint, order) is undelivered: pending (also in flight) or dead. So each
/// (endpoint, order) has at most one attempt in flight, and its changes arrive in order.
pub async fn claim_due(pool: &PgPool, limit: i64, lease: Duration) -> Result<Vec<Claimed>, sqlx::Error> {
    let rows = sqlx::query(
        "WITH due AS ( \
           SELECT d.id FROM webhook_deliveries d \
           JOIN webhook_endpoints e ON e.id = d.endpoint_id AND e.state = 'active' \
           WHERE d.state = 'pending' AND d.next_attempt_at <= now() \
             AND NOT EXISTS ( \
               SELECT 1 FROM webhook_deliveries p \
               WHERE p.endpoint_id = d.endpoint_id AND p.order_id = d.order_id \
                 AND p.position < d.position AND p.state <> 'delivered') \
           ORDER BY d.next_attempt_at, d.position \
           LIMIT $1 \
           FOR UPDATE OF d SKIP LOCKED) \
         UPDATE webhook_deliveries d \
            SET attempts = d.attempts + 1, next_attempt_at = now() + make_interval(secs => $2) \
           FROM due, webhook_endpoints e \
          WHERE d.id = due.id AND e.id = d.endpoint_id \
         RETURNING d.id, d.endpoint_id, e.url, e.secret, d.event_id, d.body, d.attempts",
    )
    .bind(limit)
    .bind(lease.as_secs_f64())
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Claimed {
                id: r.try_get("id")?,
                endpoint_id: r.try_get("endpoint_id")?,
                url: r.try_get("url")?,
                secret: r.try_get("secret")?,
                event_id: r.try_get("event_id")?,
                body: r.try_get("body")?,
                attempts: r.try_get("attempts")?,
            })
        })
        .collect()
}

/// What became of one attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptResult {
    Delivered {
        status: u16,
    },
    /// Failed; tried again `retry_in` from now.
    Retry {
        status: Option<u16>,
        error: String,
        retry_in: Duration,
    },
    /// Failed for the last time.
    Dead {
        status: Option<u16>,
        error: String,
    },
}

/// Records an attempt's outcome, unless the delivery has been claimed again meanwhile (its
/// lease ran out: then the later attempt records). Returns whether it recorded.
pub async fn record(pool: &PgPool, claimed: &Claimed, result: &AttemptResult) -> Result<bool, sqlx::Error> {
    let (state, status, error, retry_in) = match result {
        AttemptResult::Delivered { status } => ("delivered", Some(*status), None, 0.0),
        AttemptResult::Retry {
            status,
            error,
            retry_in,
        } => ("pending", *status, Some(error), retry_in.as_secs_f64()),
        AttemptResult::Dead { status, error } => ("dead", *status, Some(error), 0.0),
    };
    let done = sqlx::query(
        "UPDATE webhook_deliveries \
            SET state = $3, last_status = $4, last_error = $5, \
                next_attempt_at = now() + make_interval(secs => $6), \
                delivered_at = CASE WHEN $3 = 'delivered' THEN now() END \
          WHERE id = $1 AND attempts = $2 AND state = 'pending'",
    )
    .bind(claimed.id)
    .bind(claimed.attempts)
    .bind(state)
    .bind(status.map(i32::from))
    .bind(error)
    .bind(retry_in)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// The state of one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    Pending,
    Delivered,
    Dead,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Dead => "dead",
        }
    }
    fn parse(s: &str) -> Self {
        match s {
            "delivered" => DeliveryState::Delivered,
            "dead" => DeliveryState::Dead,
            _ => DeliveryState::Pending,
        }
    }
}

/// A delivery as it is shown.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Delivery {
    pub id: Uuid,
    pub endpoint_id: Uuid,
    /// The `id` of the body (and `Surge-Event-Id`).
    pub event_id: Uuid,
    pub order_id: Uuid,
    pub event_type: EventType,
    pub state: DeliveryState,
    pub attempts: i32,
    /// When it is tried next (pending only).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The HTTP status of the last attempt, if the receiver answered.
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

fn delivery(r: &sqlx::postgres::PgRow) -> Result<Delivery, sqlx::Error> {
    let state = DeliveryState::parse(r.try_get("state")?);
    let event_type: String = r.try_get("event_type")?;
    Ok(Delivery {
        id: r.try_get("id")?,
        endpoint_id: r.try_get("endpoint_id")?,
        event_id: r.try_get("event_id")?,
        order_id: r.try_get("order_id")?,
        event_type: EventType::parse(&event_type).ok_or_else(|| sqlx::Error::ColumnDecode {
            index: "event_type".into(),
            source: format!("unknown webhook event type {event_type}").into(),
        })?,
        state,
        attempts: r.try_get("attempts")?,
        next_attempt_at: if state == DeliveryState::Pending {
            Some(r.try_get("next_attempt_at")?)
        } else {
            None
        },
        last_status: r.try_get("last_status")?,
        last_error: r.try_get("last_error")?,
        created_at: r.try_get("created_at")?,
        delivered_at: r.try_get("delivered_at")?,
    })
}

const DELIVERY_COLUMNS: &str = "id, endpoint_id, event_id, order_id, event_type, state, attempts, next_attempt_at, \
     last_status, last_error, created_at, delivered_at";

/// A page of an endpoint's deliveries in id (creation) order, after `after`.
pub async fn list_deliveries(
    pool: &PgPool,
    endpoint_id: Uuid,
    state: Option<DeliveryState>,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Delivery>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries \
         WHERE endpoint_id = $1 AND ($2::text IS NULL OR state = $2) AND ($3::uuid IS NULL OR id > $3) \
         ORDER BY id LIMIT $4"
    ))
    .bind(endpoint_id)
    .bind(state.map(DeliveryState::as_str))
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter().map(delivery).collect()
}

/// What a redelivery found.
#[derive(Debug, Clone, PartialEq)]
pub enum Redelivery {
    /// Pending again, attempts reset, due now.
    Queued(Delivery),
    /// It is not dead (pending or delivered): nothing to do.
    NotDead(Delivery),
    NotFound,
}

/// Puts a dead delivery back to pending, with its attempts reset and due now.
pub async fn redeliver(pool: &PgPool, endpoint_id: Uuid, delivery_id: Uuid) -> Result<Redelivery, sqlx::Error> {
    let row = sqlx::query(&format!(
        "UPDATE webhook_deliveries SET state = 'pending', attempts = 0, next_attempt_at = now() \
         WHERE id = $1 AND endpoint_id = $2 AND state = 'dead' RETURNING {DELIVERY_COLUMNS}"
    ))
    .bind(delivery_id)
    .bind(endpoint_id)
    .fetch_optional(pool)
    .await?;
    if let Some(row) = row {
        return Ok(Redelivery::Queued(delivery(&row)?));
    }
    let row = sqlx::query(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = $1 AND endpoint_id = $2"
    ))
    .bind(delivery_id)
    .bind(endpoint_id)
    .fetch_optional(pool)
    .await?;
    Ok(match row {
        Some(row) => Redelivery::NotDead(delivery(&row)?),
        None => Redelivery::NotFound,
    })
}

/// Seconds since the oldest delivery still pending for an active endpoint was queued (0: none).
pub async fn oldest_pending_age(pool: &PgPool) -> Result<f64, sqlx::Error> {
    let age: Option<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM now() - min(d.created_at))::float8 FROM webhook_deliveries d \
         JOIN webhook_endpoints e ON e.id = d.endpoint_id AND e.state = 'active' \
         WHERE d.state = 'pending'",
    )
    .fetch_one(pool)
    .await?;
    Ok(age.unwrap_or(0.0).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_owed_after_registration_and_outside_the_pauses() {
        let s = Subscriber {
            id: Uuid::nil(),
            event_types: Vec::new(),
            after_position: 10,
            pauses: vec![(20, Some(30)), (40, None)],
        };
        let owed: Vec<i64> = (0..=50).filter(|p| s.owed(*p)).collect();
        let expected: Vec<i64> = (11..=20).chain(31..=40).collect();
        assert_eq!(owed, expected);
    }
}
