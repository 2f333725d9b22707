//! `projection_checkpoints`: where each projection is in each Kafka partition, of which
//! cluster and topic, written in the same transaction as the view rows it accounts for.

use crate::position::StoreError;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Row};

/// The projection and the topic incarnation a checkpoint belongs to.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub projection: &'a str,
    pub topic: &'a str,
    pub cluster_id: &'a str,
    pub topic_id: &'a str,
}

/// One partition's checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub partition: i32,
    /// The next offset to apply; `None` right after a heal (the next message continues).
    pub next_offset: Option<i64>,
    pub cluster_id: Option<String>,
    pub topic_id: Option<String>,
}

/// The checkpoints of `partitions`, created (at offset 0 of this cluster and topic) where
/// missing, and locked until the transaction ends.
pub async fn lock_partitions(
    tx: &mut PgConnection,
    src: Source<'_>,
    partitions: &[i32],
) -> Result<Vec<Checkpoint>, StoreError> {
    sqlx::query(
        "INSERT INTO projection_checkpoints (projection, topic, partition, next_offset, cluster_id, topic_id) \
         SELECT $1, $2, p, 0, $4, $5 FROM UNNEST($3::int[]) AS p ON CONFLICT DO NOTHING",
    )
    .bind(src.projection)
    .bind(src.topic)
    .bind(partitions)
    .bind(src.cluster_id)
    .bind(src.topic_id)
    .execute(&mut *tx)
    .await?;
    let rows = sqlx::query(
        "SELECT partition, next_offset, cluster_id, topic_id FROM projection_checkpoints \
         WHERE projection = $1 AND topic = $2 AND partition = ANY($3) FOR UPDATE",
    )
    .bind(src.projection)
    .bind(src.topic)
    .bind(partitions)
    .fetch_all(&mut *tx)
    .await?;
    let mut checkpoints = Vec::with_capacity(rows.len());
    for r in rows {
        checkpoints.push(Checkpoint {
            partition: r.try_get("partition")?,
            next_offset: r.try_get("next_offset")?,
            cluster_id: r.try_get("cluster_id")?,
            topic_id: r.try_get("topic_id")?,
        });
    }
    Ok(checkpoints)
}

/// Moves checkpoints past applied messages: `(partition, next offset, highest position)`.
pub async fn advance(tx: &mut PgConnection, src: Source<'_>, advanced: &[(i32, i64, i64)]) -> Result<(), StoreError> {
    let parts: Vec<i32> = advanced.iter().map(|a| a.0).collect();
    let offsets: Vec<i64> = advanced.iter().map(|a| a.1).collect();
    let positions: Vec<i64> = advanced.iter().map(|a| a.2).collect();
    sqlx::query(
        "UPDATE projection_checkpoints c SET next_offset = v.o, position = greatest(c.position, v.pos), \
                cluster_id = $6, topic_id = $7, updated_at = now() \
         FROM UNNEST($3::int[], $4::bigint[], $5::bigint[]) AS v(p, o, pos) \
         WHERE c.projection = $1 AND c.topic = $2 AND c.partition = v.p",
    )
    .bind(src.projection)
    .bind(src.topic)
    .bind(&parts)
    .bind(&offsets)
    .bind(&positions)
    .bind(src.cluster_id)
    .bind(src.topic_id)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// After a heal: the checkpoints of `partitions` (all of the topic's with `whole_topic`) name
/// this cluster and topic, and the next message of each continues.
pub async fn reset(
    tx: &mut PgConnection,
    src: Source<'_>,
    whole_topic: bool,
    partitions: &[i32],
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE projection_checkpoints SET next_offset = NULL, cluster_id = $3, topic_id = $4, updated_at = now() \
         WHERE projection = $1 AND topic = $2 AND ($5 OR partition = ANY($6))",
    )
    .bind(src.projection)
    .bind(src.topic)
    .bind(src.cluster_id)
    .bind(src.topic_id)
    .bind(whole_topic)
    .bind(partitions)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The next offset per partition a projection has reached in `topic` (partitions just healed,
/// whose next message continues, are left out).
pub async fn next_offsets(pool: &PgPool, projection: &str, topic: &str) -> Result<Vec<(i32, i64)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT partition, next_offset FROM projection_checkpoints \
         WHERE projection = $1 AND topic = $2 AND next_offset IS NOT NULL",
    )
    .bind(projection)
    .bind(topic)
    .fetch_all(pool)
    .await?)
}

/// What an operator sees of one projection.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Summary {
    pub projection: String,
    /// Highest event-store position applied.
    pub position: i64,
    /// Kafka messages consumed (next offsets summed over partitions).
    pub offsets: i64,
    pub updated_at: Option<DateTime<Utc>>,
    pub dead_letters: i64,
    pub last_error: Option<String>,
}

/// Each named projection's position, dead letters and last error.
pub async fn summaries(pool: &PgPool, projections: &[String]) -> Result<Vec<Summary>, StoreError> {
    Ok(sqlx::query_as::<_, Summary>(
        "SELECT p.name AS projection,
                COALESCE(max(c.position), 0)::BIGINT AS position,
                COALESCE(sum(c.next_offset), 0)::BIGINT AS offsets,
                max(c.updated_at) AS updated_at,
                (SELECT count(*) FROM dead_letters d WHERE d.projection = p.name) AS dead_letters,
                (SELECT d.error FROM dead_letters d WHERE d.projection = p.name ORDER BY d.id DESC LIMIT 1) AS last_error
         FROM unnest($1::text[]) AS p(name)
         LEFT JOIN projection_checkpoints c ON c.projection = p.name
         GROUP BY p.name ORDER BY p.name",
    )
    .bind(projections)
    .fetch_all(pool)
    .await?)
}
