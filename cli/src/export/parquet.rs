//! The Parquet form of `surge export`: one typed column per envelope field, written row group by
//! row group as the export cursor is read, so memory stays bounded by one row group whatever the
//! size of the log. The file is written beside its destination under a temporary name and renamed
//! only once complete: an interrupted export never leaves a truncated file under the asked-for name
//! (a Parquet file without its footer is unreadable anyway).

use anyhow::Context;
use arrow_array::builder::{Int32Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use surge_events::EventEnvelope;

/// Rows per row group: large enough for column statistics and compression to pay off, small
/// enough that the row group being encoded stays a few megabytes.
pub const ROW_GROUP_ROWS: usize = 64 * 1024;
/// A row group is also cut at this many (estimated, encoded) bytes, for logs of large payloads.
const ROW_GROUP_BYTES: usize = 64 << 20;

/// The columns, in the order of the CSV export. Correlation, causation and actor are nullable so
/// that the schema can stay the same if the envelope ever makes them optional.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("position", DataType::Int64, false),
        Field::new("event_id", DataType::Utf8, false),
        Field::new("stream_id", DataType::Utf8, false),
        Field::new("stream_type", DataType::Utf8, false),
        Field::new("version", DataType::Int64, false),
        Field::new("event_type", DataType::Utf8, false),
        Field::new("schema_version", DataType::Int32, false),
        Field::new(
            "occurred_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("correlation_id", DataType::Utf8, true),
        Field::new("causation_id", DataType::Utf8, true),
        Field::new("actor", DataType::Utf8, true),
        // JSON text: DuckDB, Spark and pandas all parse it on demand (`payload->>'$.sku'`).
        Field::new("payload", DataType::Utf8, false),
    ]))
}

/// One batch of the export cursor as columns.
fn record_batch(schema: &SchemaRef, events: &[EventEnvelope]) -> anyhow::Result<RecordBatch> {
    let n = events.len();
    let mut position = Int64Builder::with_capacity(n);
    let mut event_id = StringBuilder::with_capacity(n, n * 36);
    let mut stream_id = StringBuilder::with_capacity(n, n * 48);
    let mut stream_type = StringBuilder::with_capacity(n, n * 9);
    let mut version = Int64Builder::with_capacity(n);
    let mut event_type = StringBuilder::with_capacity(n, n * 16);
    let mut schema_version = Int32Builder::with_capacity(n);
    let mut occurred_at = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut correlation_id = StringBuilder::with_capacity(n, n * 36);
    let mut causation_id = StringBuilder::with_capacity(n, n * 36);
    let mut actor = StringBuilder::with_capacity(n, n * 16);
    let mut payload = StringBuilder::with_capacity(n, n * 256);
    for e in events {
        position.append_value(e.position);
        event_id.append_value(e.event_id.to_string());
        stream_id.append_value(&e.stream_id.0);
        stream_type.append_value(e.stream_type.as_str());
        version.append_value(e.version);
        event_type.append_value(&e.event_type);
        schema_version.append_value(e.schema_version);
        occurred_at.append_value(e.occurred_at.timestamp_micros());
        correlation_id.append_value(e.metadata.correlation_id.to_string());
        causation_id.append_option(e.metadata.causation_id.map(|c| c.to_string()));
        actor.append_value(&e.metadata.actor);
        payload.append_value(e.payload.to_string());
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(position.finish()),
        Arc::new(event_id.finish()),
        Arc::new(stream_id.finish()),
        Arc::new(stream_type.finish()),
        Arc::new(version.finish()),
        Arc::new(event_type.finish()),
        Arc::new(schema_version.finish()),
        Arc::new(occurred_at.finish()),
        Arc::new(correlation_id.finish()),
        Arc::new(causation_id.finish()),
        Arc::new(actor.finish()),
        Arc::new(payload.finish()),
    ];
    RecordBatch::try_new(schema.clone(), columns).context("assembling a record batch")
}

/// What a finished file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub path: PathBuf,
    pub rows: u64,
    pub row_groups: usize,
    pub bytes: u64,
}

/// A Parquet file being written under a temporary name beside its destination.
pub struct ParquetFile {
    schema: SchemaRef,
    writer: ArrowWriter<File>,
    partial: Partial,
    dest: PathBuf,
    rows: u64,
}

/// The temporary file: removed when dropped unless it was renamed to its destination.
struct Partial {
    path: PathBuf,
    renamed: bool,
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.renamed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl ParquetFile {
    /// Starts `dest` (which appears only at [`ParquetFile::finish`]).
    pub fn create(dest: &Path) -> anyhow::Result<ParquetFile> {
        let name = dest
            .file_name()
            .with_context(|| format!("--out {} names no file", dest.display()))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{}.partial", std::process::id()));
        let path = dest.with_file_name(tmp_name);
        let file = File::create(&path)
            .with_context(|| format!("creating {} (named {} once complete)", path.display(), dest.display()))?;
        let partial = Partial { path, renamed: false };
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .set_max_row_group_bytes(Some(ROW_GROUP_BYTES))
            .set_created_by(format!("surge export {}", env!("CARGO_PKG_VERSION")))
            .build();
        let schema = schema();
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(props)).context("starting the Parquet writer")?;
        Ok(ParquetFile {
            schema,
            writer,
            partial,
            dest: dest.to_path_buf(),
            rows: 0,
        })
    }

    /// Appends one batch; a row group is flushed to the file each time one fills up.
    pub fn write(&mut self, events: &[EventEnvelope]) -> anyhow::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let batch = record_batch(&self.schema, events)?;
        self.writer.write(&batch).context("writing Parquet")?;
        self.rows += events.len() as u64;
        Ok(())
    }

    /// Writes the last row group and the footer, syncs, and renames the file to its destination.
    pub fn finish(mut self) -> anyhow::Result<Written> {
        let metadata = self.writer.finish().context("finishing the Parquet file")?;
        let file = self.writer.inner();
        file.sync_all().context("syncing the Parquet file")?;
        let bytes = file.metadata()?.len();
        std::fs::rename(&self.partial.path, &self.dest)
            .with_context(|| format!("renaming {} to {}", self.partial.path.display(), self.dest.display()))?;
        self.partial.renamed = true;
        Ok(Written {
            path: std::mem::take(&mut self.dest),
            rows: self.rows,
            row_groups: metadata.num_row_groups(),
            bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use surge_events::{EventMetadata, StreamId, StreamType};

    fn event(position: i64, causation: bool) -> EventEnvelope {
        let mut metadata = EventMetadata::new("tester");
        if causation {
            metadata.causation_id = Some(uuid::Uuid::now_v7());
        }
        EventEnvelope {
            event_id: uuid::Uuid::now_v7(),
            position,
            stream_id: StreamId(format!("inventory-S-{position}")),
            stream_type: StreamType::Inventory,
            version: 1,
            event_type: "ItemAdded".into(),
            schema_version: 2,
            occurred_at: chrono::DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            metadata,
            payload: serde_json::json!({"sku": format!("S-{position}")}),
        }
    }

    #[test]
    fn a_batch_has_one_typed_row_per_event_and_null_only_where_absent() {
        let events = [event(7, false), event(8, true)];
        let batch = record_batch(&schema(), &events).unwrap();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.schema(), schema());
        let positions = batch
            .column_by_name("position")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow_array::Int64Array>()
            .unwrap();
        assert_eq!(positions.values(), &[7, 8]);
        let at = batch
            .column_by_name("occurred_at")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow_array::TimestampMicrosecondArray>()
            .unwrap();
        assert_eq!(at.value(0), 1_700_000_000_123_456);
        let causation = batch.column_by_name("causation_id").unwrap();
        assert_eq!((causation.is_null(0), causation.is_null(1)), (true, false));
        let payload = batch
            .column_by_name("payload")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow_array::StringArray>()
            .unwrap();
        assert_eq!(payload.value(1), r#"{"sku":"S-8"}"#);
    }

    #[test]
    fn the_file_appears_under_its_name_only_when_finished() {
        let dir = std::env::temp_dir().join(format!("surge-parquet-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let dest = dir.join("events.parquet");
        let mut file = ParquetFile::create(&dest).unwrap();
        file.write(&[event(1, false), event(2, false)]).unwrap();
        assert!(!dest.exists(), "nothing under the destination name while writing");
        let written = file.finish().unwrap();
        assert_eq!(written.path, dest);
        assert_eq!((written.rows, written.row_groups), (2, 1));
        let bytes = std::fs::read(&dest).unwrap();
        assert_eq!(written.bytes, bytes.len() as u64);
        assert!(bytes.starts_with(b"PAR1") && bytes.ends_with(b"PAR1"));
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no partial file left");

        // Dropped before finishing (an error mid-export): neither file remains.
        let other = dir.join("other.parquet");
        let mut file = ParquetFile::create(&other).unwrap();
        file.write(&[event(3, false)]).unwrap();
        drop(file);
        assert!(!other.exists());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).ok();
    }
}
