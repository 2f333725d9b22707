//! `surge replay`: rebuilds projections from the event store into a new generation of their
//! tables, then switches the query side to it without read downtime.
//!
//! 1. `<view>_g<millis>` tables (a new generation) are made like the live ones and filled by folding every event of the
//!    projection's stream type from the event store (server-side cursor, in batches), with the
//!    same folds the live projector uses. Only views are written: no side effects run.
//! 2. Catch-up and switch happen in one transaction: it locks the projection's checkpoint rows,
//!    which pauses the live projector between batches (it locks them first in each batch), folds
//!    the events appended meanwhile, then renames the new generation to `<view>` and drops the old
//!    generation. Readers wait only for the renames (milliseconds), never see a half-built view.
//! 3. The live projector goes on with the new tables; events it brings that the replay already
//!    applied are duplicates by stream version and are skipped.

use crate::worker::{apply_catalog, apply_orders, BatchStats, Projection};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use sqlx::{Connection, PgConnection};
use std::time::Instant;
use surge_events::{EventEnvelope, ENVELOPE_COLUMNS};
use surge_runtime::DatabaseConfig;

#[derive(Debug, Clone, Args)]
pub struct ReplayConfig {
    #[command(flatten)]
    pub db: DatabaseConfig,
    /// Projections to rebuild (comma-separated).
    #[arg(long = "projection", value_enum, value_delimiter = ',', default_values_t = Projection::ALL)]
    pub projections: Vec<Projection>,
    /// Events folded per transaction while building.
    #[arg(long, default_value_t = 5000)]
    pub batch_size: i64,
    /// Print the plan and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// What a replay did for one projection.
#[derive(Debug, Clone)]
pub struct ReplayReport {
    pub projection: Projection,
    pub events: u64,
    pub caught_up: u64,
    pub seconds: f64,
}

fn tables(p: Projection) -> &'static [&'static str] {
    match p {
        Projection::Catalog => &["catalog_items", "sales_by_minute"],
        Projection::Orders => &["orders"],
    }
}

/// Folds `events` into generation `generation` of `p`'s tables.
async fn fold_into(
    conn: &mut PgConnection,
    p: Projection,
    generation: &str,
    events: Vec<EventEnvelope>,
) -> Result<usize, sqlx::Error> {
    let mut stats = BatchStats::default();
    let tagged: Vec<(i64, EventEnvelope)> = events.into_iter().map(|e| (e.position, e)).collect();
    let dead = match p {
        Projection::Catalog => {
            let (items, sales) = (
                format!("catalog_items_{generation}"),
                format!("sales_by_minute_{generation}"),
            );
            apply_catalog(conn, &items, &sales, tagged, &mut stats).await?
        }
        Projection::Orders => apply_orders(conn, &format!("orders_{generation}"), tagged, &mut stats).await?,
    };
    for (position, error) in &dead {
        tracing::warn!(position, error, "event skipped by the replay");
    }
    Ok(stats.applied)
}

/// Reads the events of `p`'s stream type after `after` (up to `batch` of them).
async fn read_after(
    conn: &mut PgConnection,
    p: Projection,
    after: i64,
    batch: i64,
) -> Result<Vec<EventEnvelope>, sqlx::Error> {
    let sql = format!(
        "SELECT {ENVELOPE_COLUMNS} FROM events WHERE stream_type = $1 AND position > $2 ORDER BY position LIMIT $3"
    );
    let rows = sqlx::query(&sql)
        .bind(p.stream_type().as_str())
        .bind(after)
        .bind(batch)
        .fetch_all(conn)
        .await?;
    rows.iter().map(EventEnvelope::from_row).collect()
}

pub async fn replay(config: &ReplayConfig) -> Result<Vec<ReplayReport>, sqlx::Error> {
    let mut conn = PgConnection::connect(&config.db.url).await?;
    let mut reports = Vec::new();
    for &p in &config.projections {
        let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE stream_type = $1")
            .bind(p.stream_type().as_str())
            .fetch_one(&mut conn)
            .await?;
        if config.dry_run {
            println!(
                "replay {}: fold {total} {} events into a new generation of {}, then switch under the checkpoint lock",
                p.name(),
                p.stream_type().as_str(),
                tables(p).join(", ")
            );
            continue;
        }
        let started = Instant::now();
        // A generation name of its own, so the copied indexes' names never clash with a
        // previous generation's (they keep their names through the rename).
        let generation = format!("g{}", chrono::Utc::now().timestamp_millis());
        for t in tables(p) {
            sqlx::query(&format!("CREATE TABLE {t}_{generation} (LIKE {t} INCLUDING ALL)"))
                .execute(&mut conn)
                .await?;
        }
        let bar = ProgressBar::new(total.max(0) as u64).with_style(
            ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} events {per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(p.name());
        let (mut after, mut events) = (0i64, 0u64);
        loop {
            let batch = read_after(&mut conn, p, after, config.batch_size.max(1)).await?;
            let Some(last) = batch.last() else { break };
            after = last.position;
            let n = batch.len() as u64;
            let mut tx = conn.begin().await?;
            fold_into(&mut tx, p, &generation, batch).await?;
            tx.commit().await?;
            events += n;
            bar.inc(n);
        }
        bar.finish_and_clear();

        // Catch up and switch with the live projector paused on its checkpoint rows.
        let mut tx = conn.begin().await?;
        sqlx::query("SELECT 1 FROM projection_checkpoints WHERE projection = $1 FOR UPDATE")
            .bind(p.name())
            .execute(&mut *tx)
            .await?;
        let mut caught_up = 0u64;
        loop {
            let batch = read_after(&mut tx, p, after, config.batch_size.max(1)).await?;
            let Some(last) = batch.last() else { break };
            after = last.position;
            caught_up += batch.len() as u64;
            fold_into(&mut tx, p, &generation, batch).await?;
        }
        for t in tables(p) {
            sqlx::query(&format!("ALTER TABLE {t} RENAME TO {t}_old"))
                .execute(&mut *tx)
                .await?;
            sqlx::query(&format!("ALTER TABLE {t}_{generation} RENAME TO {t}"))
                .execute(&mut *tx)
                .await?;
            sqlx::query(&format!("DROP TABLE {t}_old")).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        let report = ReplayReport {
            projection: p,
            events: events + caught_up,
            caught_up,
            seconds: started.elapsed().as_secs_f64(),
        };
        tracing::info!(
            projection = p.name(),
            events = report.events,
            caught_up,
            seconds = report.seconds,
            "replay switched"
        );
        reports.push(report);
    }
    Ok(reports)
}
