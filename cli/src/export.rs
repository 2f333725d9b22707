//! `surge export` and `surge import`: events out of the store as NDJSON, CSV or Parquet
//! ([`parquet`]), filtered, in constant memory (a server-side cursor read in batches); and NDJSON
//! back into an empty store, every event as it was (ids, positions, versions, times, metadata).

pub mod parquet;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use clap::{Args, ValueEnum};
use sqlx::Connection;
use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;
use surge_events::{EventEnvelope, StreamType};
use surge_runtime::DatabaseConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One event envelope (JSON) per line.
    Ndjson,
    /// One event per row; the payload as a JSON string.
    Csv,
    /// Typed columns, one row group per 64k events as it streams; needs `--out`.
    Parquet,
}

#[derive(Debug, Clone, Args)]
pub struct ExportConfig {
    #[command(flatten)]
    pub db: DatabaseConfig,
    #[arg(long, value_enum, default_value_t = Format::Ndjson)]
    pub format: Format,
    /// File to write (default: standard output; Parquet needs a file).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Only this stream (e.g. `order-<uuid>`, `inventory-<sku>`).
    #[arg(long)]
    pub stream_id: Option<String>,
    /// Only this stream type: `order` or `inventory`.
    #[arg(long)]
    pub stream_type: Option<String>,
    /// Only these event types (comma-separated).
    #[arg(long = "event-type", value_delimiter = ',')]
    pub event_types: Vec<String>,
    /// Events at or after this time (RFC 3339).
    #[arg(long)]
    pub from_time: Option<DateTime<Utc>>,
    /// Events before this time (RFC 3339).
    #[arg(long)]
    pub to_time: Option<DateTime<Utc>>,
    /// Events at or after this global position.
    #[arg(long)]
    pub from_position: Option<i64>,
    /// Events at or before this global position.
    #[arg(long)]
    pub to_position: Option<i64>,
    /// Read everything visible now instead of stopping at the store's safe position: for a
    /// read-only replica or a one-off copy, where no export continues after this one (an
    /// export that stops at a position a late transaction had not committed yet would skip it).
    #[arg(long)]
    pub visible_now: bool,
}

const BATCH: usize = 5000;

enum Sink {
    Ndjson(BufWriter<Box<dyn Write + Send>>),
    Csv(Box<csv::Writer<Box<dyn Write + Send>>>),
    Parquet(Box<parquet::ParquetFile>),
}

impl Sink {
    fn write(&mut self, events: &[EventEnvelope]) -> anyhow::Result<()> {
        match self {
            Sink::Ndjson(w) => {
                for e in events {
                    w.write_all(&e.to_json())?;
                    w.write_all(b"\n")?;
                }
            }
            Sink::Csv(w) => {
                for e in events {
                    w.write_record([
                        e.position.to_string(),
                        e.event_id.to_string(),
                        e.stream_id.0.clone(),
                        e.stream_type.as_str().to_string(),
                        e.version.to_string(),
                        e.event_type.clone(),
                        e.schema_version.to_string(),
                        e.occurred_at.to_rfc3339(),
                        e.metadata.correlation_id.to_string(),
                        e.metadata.causation_id.map(|c| c.to_string()).unwrap_or_default(),
                        e.metadata.actor.clone(),
                        e.payload.to_string(),
                    ])?;
                }
            }
            Sink::Parquet(file) => file.write(events)?,
        }
        Ok(())
    }

    /// Flushes; a Parquet file gets its footer and its name, and says what it holds.
    fn finish(self) -> anyhow::Result<Option<parquet::Written>> {
        match self {
            Sink::Ndjson(mut w) => w.flush()?,
            Sink::Csv(mut w) => w.flush()?,
            Sink::Parquet(file) => return Ok(Some(file.finish()?)),
        }
        Ok(None)
    }
}

/// The file `--out` names, or standard output.
fn text_output(out: Option<&std::path::Path>) -> anyhow::Result<Box<dyn Write + Send>> {
    Ok(match out {
        Some(path) => Box::new(std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?),
        None => Box::new(std::io::stdout()),
    })
}

/// Writes the selected events; returns how many.
pub async fn export(config: &ExportConfig) -> anyhow::Result<u64> {
    if let Some(t) = &config.stream_type {
        if StreamType::parse(t).is_none() {
            bail!("--stream-type must be `order` or `inventory`, not `{t}`");
        }
    }
    let mut out = match config.format {
        Format::Ndjson => Sink::Ndjson(BufWriter::new(text_output(config.out.as_deref())?)),
        Format::Csv => Sink::Csv(Box::new(csv::Writer::from_writer(text_output(config.out.as_deref())?))),
        Format::Parquet => {
            // A Parquet reader starts at the footer, written last: a pipe cannot be read that way.
            let Some(path) = &config.out else {
                bail!("--format parquet writes a file, not standard output: pass --out FILE");
            };
            Sink::Parquet(Box::new(parquet::ParquetFile::create(path)?))
        }
    };
    if let Sink::Csv(w) = &mut out {
        w.write_record([
            "position",
            "event_id",
            "stream_id",
            "stream_type",
            "version",
            "event_type",
            "schema_version",
            "occurred_at",
            "correlation_id",
            "causation_id",
            "actor",
            "payload",
        ])?;
    }
    let mut conn = sqlx::PgConnection::connect_with(&config.db.connect_options()?).await?;
    // Never past the safe position: an export that a later one continues ("from the last
    // position + 1") must not miss a transaction that commits late.
    let safe = if config.visible_now {
        i64::MAX
    } else {
        surge_store::safe_position(&mut conn, std::time::Duration::from_secs(60))
            .await
            .context("finding the safe position (on a read-only replica, or for a one-off copy, pass --visible-now)")?
    };
    let up_to = config.to_position.map_or(safe, |to| to.min(safe));
    if config.to_position.is_some_and(|to| to > safe) {
        eprintln!("surge export: --to-position lowered to the safe position {safe}");
    }
    let filter = surge_store::log::ExportFilter {
        stream_id: config.stream_id.clone(),
        stream_type: config.stream_type.clone(),
        event_types: config.event_types.clone(),
        from_time: config.from_time,
        to_time: config.to_time,
        from_position: config.from_position,
        up_to,
    };
    let mut tx = conn.begin().await?;
    surge_store::log::open_export(&mut tx, &filter).await?;
    let mut count = 0u64;
    loop {
        let rows = surge_store::log::fetch_export(&mut tx, BATCH).await?;
        if rows.is_empty() {
            break;
        }
        out.write(&rows)?;
        count += rows.len() as u64;
    }
    tx.commit().await?;
    if let Some(written) = out.finish()? {
        eprintln!(
            "surge export: {} events in {} row group{} ({} bytes) written to {}",
            written.rows,
            written.row_groups,
            if written.row_groups == 1 { "" } else { "s" },
            written.bytes,
            written.path.display()
        );
    }
    if !config.visible_now {
        eprintln!(
            "surge export: {count} events at positions up to {up_to}, past which nothing can still appear below; \
             continue with --from-position {}",
            up_to + 1
        );
    }
    Ok(count)
}

#[derive(Debug, Clone, Args)]
pub struct ImportConfig {
    #[command(flatten)]
    pub db: DatabaseConfig,
    /// NDJSON file written by `surge export`.
    #[arg(long = "in")]
    pub input: PathBuf,
}

/// Inserts every event of an NDJSON export as it was; the store must not hold them yet.
/// Returns how many. Positions are kept, and the store's position counter moves past them.
pub async fn import(config: &ImportConfig) -> anyhow::Result<u64> {
    let file = std::fs::File::open(&config.input).with_context(|| format!("opening {}", config.input.display()))?;
    let pool = surge_runtime::db::connect(&config.db).await?;
    let mut tx = pool.begin().await?;
    let mut batch = Vec::with_capacity(1000);
    let mut count = 0u64;
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let e = EventEnvelope::from_json(line.as_bytes()).with_context(|| format!("line {}", n + 1))?;
        batch.push(e);
        if batch.len() == 1000 {
            count += surge_store::log::import(&mut tx, &std::mem::take(&mut batch)).await?;
        }
    }
    count += surge_store::log::import(&mut tx, &batch).await?;
    surge_store::log::reset_position_sequence(&mut tx).await?;
    tx.commit().await?;
    Ok(count)
}
