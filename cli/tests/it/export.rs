//! The Parquet export, read back by an independent reader: DuckDB (its Python package) counts
//! and sums what `surge export --format parquet` wrote and finds the same numbers as SQL on the
//! store; every filter selects the same events as the NDJSON export; and a large export keeps the
//! memory of the process bounded.

use crate::support;
use arrow_array::{Array, StringArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use surge_cli::export::parquet::ROW_GROUP_ROWS;
use surge_cli::export::{export, ExportConfig, Format};
use surge_events::EventEnvelope;
use surge_testkit::TestEnv;

fn config(env: &TestEnv, format: Format, out: PathBuf) -> ExportConfig {
    ExportConfig {
        db: env.db.clone(),
        format,
        out: Some(out),
        stream_id: None,
        stream_type: None,
        event_types: vec![],
        from_time: None,
        to_time: None,
        from_position: None,
        to_position: None,
        visible_now: false,
    }
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("surge-parquet-it-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Orders of 1 to 3 units over three SKUs through the real command API, a quarter cancelled.
async fn seed_orders(env: &TestEnv, orders: usize) {
    let (cmd, command) = support::command_api(env).await;
    let http = env.http();
    for sku in ["PQ-1", "PQ-2", "PQ-3"] {
        support::add_item(&http, &cmd, sku, 250, 1000).await;
    }
    for i in 0..orders {
        let sku = ["PQ-1", "PQ-2", "PQ-3"][i % 3];
        let r = support::place_order(&http, &cmd, &format!("pq{i}"), sku, (i % 3 + 1) as i64).await;
        let id = r["order_id"].as_str().expect("the order is accepted");
        if i % 4 == 0 {
            let r = http.post(format!("{cmd}/v1/orders/{id}/cancel")).send().await.unwrap();
            assert!(r.status().is_success(), "cancelling {id}");
        }
    }
    command.stop().await;
}

/// Runs the real `surge export` binary against the test's database.
async fn surge_export(env: &TestEnv, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_surge"))
        .arg("export")
        .args(args)
        .env("SURGE_DATABASE_URL", env.db.expose_url())
        .env("SURGE_LOG_FORMAT", "json")
        .output()
        .await
        .expect("surge runs")
}

/// A Python that imports `duckdb`: `$SURGE_DUCKDB_PYTHON`, else the dev cache's venv. `None` (the
/// test then skips) unless `SURGE_REQUIRE_DUCKDB=1`, as `./dev test` sets it.
fn duckdb_python() -> Option<PathBuf> {
    let candidates = std::env::var_os("SURGE_DUCKDB_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain(std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/surge/venv/bin/python")));
    for python in candidates {
        let imports = std::process::Command::new(&python)
            .args(["-c", "import duckdb"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if imports {
            return Some(python);
        }
    }
    assert!(
        std::env::var("SURGE_REQUIRE_DUCKDB").as_deref() != Ok("1"),
        "SURGE_REQUIRE_DUCKDB=1 but no Python with duckdb: set SURGE_DUCKDB_PYTHON or run ./dev test (it installs \
         duckdb into ~/.cache/surge/venv)"
    );
    eprintln!(
        "skipped: no Python with the duckdb package (set SURGE_DUCKDB_PYTHON, or SURGE_REQUIRE_DUCKDB=1 to fail)"
    );
    None
}

/// What DuckDB finds in a Parquet file: its figures, per event type, and its column types.
const DUCKDB_SUMMARY: &str = r#"
import duckdb, json, sys
con = duckdb.connect()
f = sys.argv[1]
def one(sql):
    return con.execute(sql, [f]).fetchone()
count, sum_position, sum_version = one("SELECT count(*), sum(position), sum(version) FROM read_parquet(?)")
reserved = one("SELECT sum((payload->>'$.quantity')::BIGINT) FROM read_parquet(?) WHERE event_type = 'StockReserved'")[0]
placed_minor = one("SELECT sum((payload->'$.total'->>'$.minor')::BIGINT) FROM read_parquet(?) "
                   "WHERE event_type = 'OrderPlaced'")[0]
first_us, last_us = one("SELECT epoch_us(min(occurred_at)), epoch_us(max(occurred_at)) FROM read_parquet(?)")
causation_nulls = one("SELECT count(*) FILTER (WHERE causation_id IS NULL) FROM read_parquet(?)")[0]
per_type = dict(con.execute("SELECT event_type, count(*) FROM read_parquet(?) GROUP BY 1", [f]).fetchall())
types = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM read_parquet(?))", [f]).fetchall())
ids = [r[0] for r in con.execute("SELECT event_id FROM read_parquet(?) ORDER BY position", [f]).fetchall()]
print(json.dumps({
    "count": count, "sum_position": sum_position, "sum_version": sum_version,
    "reserved_quantity": reserved, "placed_total_minor": placed_minor,
    "first_us": first_us, "last_us": last_us, "causation_nulls": causation_nulls,
    "per_type": per_type, "types": types, "ids": ids,
}))
"#;

fn duckdb_summary(python: &Path, file: &Path) -> Value {
    let out = std::process::Command::new(python)
        .args(["-c", DUCKDB_SUMMARY])
        .arg(file)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "DuckDB reads {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the summary is JSON")
}

/// The same figures from the store, with SQL, over the events `filter` selects.
async fn store_summary(env: &TestEnv, filter: &str) -> Value {
    let (count, sum_position, sum_version, reserved, placed, first_us, last_us, causation_nulls): (
        i64,
        i64,
        i64,
        Option<i64>,
        Option<i64>,
        i64,
        i64,
        i64,
    ) = sqlx::query_as(&format!(
        "SELECT count(*), sum(position)::bigint, sum(version)::bigint, \
                sum((payload->>'quantity')::bigint) FILTER (WHERE event_type = 'StockReserved')::bigint, \
                sum((payload->'total'->>'minor')::bigint) FILTER (WHERE event_type = 'OrderPlaced')::bigint, \
                (extract(epoch FROM min(occurred_at)) * 1000000)::bigint, \
                (extract(epoch FROM max(occurred_at)) * 1000000)::bigint, \
                count(*) FILTER (WHERE causation_id IS NULL) \
         FROM events WHERE {filter}"
    ))
    .fetch_one(&env.pool)
    .await
    .unwrap();
    let per_type: Vec<(String, i64)> = sqlx::query_as(&format!(
        "SELECT event_type, count(*) FROM events WHERE {filter} GROUP BY 1"
    ))
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let ids: Vec<uuid::Uuid> =
        sqlx::query_scalar(&format!("SELECT event_id FROM events WHERE {filter} ORDER BY position"))
            .fetch_all(&env.pool)
            .await
            .unwrap();
    json!({
        "count": count, "sum_position": sum_position, "sum_version": sum_version,
        "reserved_quantity": reserved, "placed_total_minor": placed,
        "first_us": first_us, "last_us": last_us, "causation_nulls": causation_nulls,
        "per_type": per_type.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        "ids": ids.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
    })
}

fn typed_columns() -> Value {
    json!({
        "position": "BIGINT",
        "event_id": "VARCHAR",
        "stream_id": "VARCHAR",
        "stream_type": "VARCHAR",
        "version": "BIGINT",
        "event_type": "VARCHAR",
        "schema_version": "INTEGER",
        "occurred_at": "TIMESTAMP WITH TIME ZONE",
        "correlation_id": "VARCHAR",
        "causation_id": "VARCHAR",
        "actor": "VARCHAR",
        "payload": "VARCHAR",
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duckdb_reads_the_parquet_export_with_the_stores_counts_and_sums() {
    let env = TestEnv::new().await;
    seed_orders(&env, 24).await;
    let dir = temp_dir();

    // Parquet refuses standard output, with a message that says what to do; no file, no output.
    let refused = surge_export(&env, &["--format", "parquet"]).await;
    assert!(!refused.status.success());
    assert!(refused.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("pass --out FILE"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let all = dir.join("all.parquet");
    let run = surge_export(&env, &["--format", "parquet", "--out", all.to_str().unwrap()]).await;
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert!(
        stderr.contains(&format!("surge export: {total} events in 1 row group (")),
        "the summary names the rows and row groups: {stderr}"
    );
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        1,
        "only the finished file is left in its directory"
    );

    // The filtered run: inventory streams only, from the 10th position on.
    let filtered = dir.join("inventory.parquet");
    let run = surge_export(
        &env,
        &[
            "--format",
            "parquet",
            "--stream-type",
            "inventory",
            "--from-position",
            "10",
            "--out",
            filtered.to_str().unwrap(),
        ],
    )
    .await;
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));

    let Some(python) = duckdb_python() else {
        std::fs::remove_dir_all(&dir).ok();
        env.cleanup().await;
        return;
    };
    for (file, filter) in [
        (&all, "true"),
        (&filtered, "stream_type = 'inventory' AND position >= 10"),
    ] {
        let mut duck = duckdb_summary(&python, file);
        let types = duck.as_object_mut().unwrap().remove("types").unwrap();
        assert_eq!(types, typed_columns(), "typed columns in {}", file.display());
        let store = store_summary(&env, filter).await;
        assert_eq!(
            duck,
            store,
            "DuckDB on {} against the store's `{filter}`",
            file.display()
        );
    }
    // Not vacuous: 24 orders of 1, 2 and 3 units, 6 of them cancelled.
    let store = store_summary(&env, "true").await;
    assert_eq!(store["count"], total);
    assert_eq!(store["reserved_quantity"], 48);
    assert_eq!(store["placed_total_minor"], 48 * 250);
    assert_eq!(store["per_type"]["OrderCancelled"], 6);
    let inventory = store_summary(&env, "stream_type = 'inventory' AND position >= 10").await;
    assert!(inventory["count"].as_i64().unwrap() > 10);
    assert!(
        inventory["placed_total_minor"].is_null(),
        "no order event in the inventory export"
    );

    std::fs::remove_dir_all(&dir).ok();
    env.cleanup().await;
}

/// Event ids of a Parquet export, in file order, read with the parquet crate's own reader.
fn parquet_event_ids(file: &Path) -> Vec<String> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(file).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let mut ids = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let column = batch.column_by_name("event_id").unwrap();
        let column = column.as_any().downcast_ref::<StringArray>().unwrap();
        ids.extend((0..column.len()).map(|i| column.value(i).to_string()));
    }
    ids
}

fn ndjson_event_ids(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .map(|l| EventEnvelope::from_json(l.as_bytes()).unwrap().event_id.to_string())
        .collect()
}

/// Sets one filter of an export.
type Filter = Box<dyn Fn(&mut ExportConfig)>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_filter_selects_the_same_events_in_parquet_as_in_ndjson() {
    let env = TestEnv::new().await;
    seed_orders(&env, 12).await;
    let dir = temp_dir();
    let (order_stream, middle): (String, chrono::DateTime<chrono::Utc>) = sqlx::query_as(
        "SELECT stream_id, occurred_at FROM events WHERE stream_type = 'order' ORDER BY position OFFSET 5 LIMIT 1",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    let later: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT occurred_at FROM events ORDER BY position OFFSET 30 LIMIT 1")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    let filters: Vec<(&str, Filter)> = vec![
        ("everything", Box::new(|_| {})),
        (
            "one stream",
            Box::new(move |c| c.stream_id = Some(order_stream.clone())),
        ),
        (
            "order streams, two event types",
            Box::new(|c| {
                c.stream_type = Some("order".into());
                c.event_types = vec!["OrderPlaced".into(), "OrderCancelled".into()];
            }),
        ),
        (
            "a window of positions",
            Box::new(|c| {
                c.from_position = Some(7);
                c.to_position = Some(23);
            }),
        ),
        (
            "a window of time",
            Box::new(move |c| {
                c.from_time = Some(middle);
                c.to_time = Some(later);
            }),
        ),
        ("nothing", Box::new(|c| c.stream_id = Some("order-none".into()))),
    ];
    let mut seen = std::collections::BTreeSet::new();
    for (name, filter) in &filters {
        let mut ndjson = config(&env, Format::Ndjson, dir.join("f.ndjson"));
        let mut parquet = config(&env, Format::Parquet, dir.join("f.parquet"));
        filter(&mut ndjson);
        filter(&mut parquet);
        let n = export(&ndjson).await.unwrap();
        let p = export(&parquet).await.unwrap();
        let ids = parquet_event_ids(&dir.join("f.parquet"));
        assert_eq!(ids, ndjson_event_ids(&dir.join("f.ndjson")), "{name}");
        assert_eq!((n, p), (ids.len() as u64, ids.len() as u64), "{name}");
        assert_eq!(
            ids.is_empty(),
            *name == "nothing",
            "{name} selects {} events",
            ids.len()
        );
        assert!(seen.insert(ids), "{name} selects a set of its own");
    }
    std::fs::remove_dir_all(&dir).ok();
    env.cleanup().await;
}

/// Runs `surge export` and samples the child's peak resident memory (VmHWM, KiB) until it exits.
async fn export_peak_kib(env: &TestEnv, args: &[&str], stderr: &Path) -> u64 {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_surge"))
        .arg("export")
        .args(args)
        .env("SURGE_DATABASE_URL", env.db.expose_url())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(stderr).unwrap())
        .spawn()
        .expect("surge starts");
    let status = format!("/proc/{}/status", child.id().unwrap());
    let mut peak = 0;
    loop {
        if let Some(kib) = std::fs::read_to_string(&status).ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        }) {
            peak = peak.max(kib);
        }
        if let Some(exit) = child.try_wait().unwrap() {
            assert!(
                exit.success(),
                "{}",
                std::fs::read_to_string(stderr).unwrap_or_default()
            );
            return peak;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_parquet_export_streams_in_bounded_memory() {
    const EVENTS: u64 = 200_000;
    let env = TestEnv::new().await;
    surge_cli::seed::run(surge_cli::seed::SeedConfig {
        db: support::db(&env),
        events: EVENTS,
        skus: 50,
        batch: 5000,
        seed: 19,
    })
    .await
    .unwrap();
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    let dir = temp_dir();
    let (small, large) = (dir.join("small.parquet"), dir.join("large.parquet"));
    // The baseline: exactly one full row group, the most a streaming export holds at once.
    let one_group: i64 = sqlx::query_scalar("SELECT position FROM events ORDER BY position OFFSET $1 LIMIT 1")
        .bind(ROW_GROUP_ROWS as i64 - 1)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    let small_peak = export_peak_kib(
        &env,
        &[
            "--format",
            "parquet",
            "--to-position",
            &one_group.to_string(),
            "--out",
            small.to_str().unwrap(),
        ],
        &dir.join("small.log"),
    )
    .await;
    let large_peak = export_peak_kib(
        &env,
        &["--format", "parquet", "--out", large.to_str().unwrap()],
        &dir.join("large.log"),
    )
    .await;
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&large).unwrap()).unwrap();
    let metadata = reader.metadata().clone();
    let rows: i64 = metadata.row_groups().iter().map(|g| g.num_rows()).sum();
    assert!(total as u64 >= EVENTS - 10, "seeded {total}");
    assert_eq!(rows, total);
    assert_eq!(
        metadata.num_row_groups(),
        (total as usize).div_ceil(ROW_GROUP_ROWS),
        "row groups were cut as it streamed"
    );
    let extra_payload_kib: i64 =
        sqlx::query_scalar("SELECT (sum(length(payload::text)) / 1024)::bigint FROM events WHERE position > $1")
            .bind(one_group)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    let grew_kib = large_peak.saturating_sub(small_peak);
    eprintln!(
        "peak RSS: {small_peak} KiB for {ROW_GROUP_ROWS} events, {large_peak} KiB for {total} \
         ({extra_payload_kib} KiB more payload JSON)"
    );
    // A process that held the events past the first row group would grow by several times their
    // payload text alone; one that streams holds one row group at a time in either run.
    assert!(
        (grew_kib as i64) < extra_payload_kib / 2,
        "peak RSS grew by {grew_kib} KiB from one row group to {total} events ({small_peak} → {large_peak} KiB), \
         {extra_payload_kib} KiB more payload"
    );
    std::fs::remove_dir_all(&dir).ok();
    env.cleanup().await;
}
