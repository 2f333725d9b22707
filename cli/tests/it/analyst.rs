//! Analysts' export round-trips: a filtered NDJSON export imported into an empty store gives
//! back the same events, and CSV holds one row per event.

use crate::support;
use serde_json::json;
use surge_cli::export::{export, import, ExportConfig, Format, ImportConfig};
use surge_events::{EventEnvelope, ENVELOPE_COLUMNS};
use surge_testkit::TestEnv;

fn config(env: &TestEnv, format: Format, out: std::path::PathBuf) -> ExportConfig {
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

async fn events(env: &TestEnv, filter: &str) -> Vec<EventEnvelope> {
    let sql = format!("SELECT {ENVELOPE_COLUMNS} FROM events WHERE {filter} ORDER BY position");
    let rows = sqlx::query(&sql).fetch_all(&env.pool).await.unwrap();
    rows.iter().map(|r| EventEnvelope::from_row(r).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_export_round_trips_into_an_empty_store() {
    let source = TestEnv::new().await;
    let (cmd, command) = support::command_api(&source).await;
    let http = source.http();
    for sku in ["X-1", "X-2"] {
        support::add_item(&http, &cmd, sku, 100, 50).await;
    }
    for i in 0..12 {
        let sku = if i % 2 == 0 { "X-1" } else { "X-2" };
        let r = support::place_order(&http, &cmd, &format!("x{i}"), sku, 1).await;
        if i % 4 == 0 {
            let id = r["order_id"].as_str().unwrap();
            http.post(format!("{cmd}/v1/orders/{id}/cancel")).send().await.unwrap();
        }
    }
    command.stop().await;
    let dir = std::env::temp_dir().join(format!("surge-export-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();

    // Orders only, from the 5th event on.
    let mut filtered = config(&source, Format::Ndjson, dir.join("orders.ndjson"));
    filtered.stream_type = Some("order".into());
    filtered.from_position = Some(5);
    let n = export(&filtered).await.unwrap();
    let expected = events(&source, "stream_type = 'order' AND position >= 5").await;
    assert_eq!(n as usize, expected.len());
    assert!(n >= 12);

    let target = TestEnv::new().await;
    let imported = import(&ImportConfig {
        db: target.db.clone(),
        input: dir.join("orders.ndjson"),
    })
    .await
    .unwrap();
    assert_eq!(imported, n);
    assert_eq!(
        events(&target, "true").await,
        expected,
        "the same events, byte for byte"
    );
    // New events continue after the imported positions.
    let next: i64 = sqlx::query_scalar("SELECT nextval(pg_get_serial_sequence('events', 'position'))")
        .fetch_one(&target.pool)
        .await
        .unwrap();
    assert!(next > expected.last().unwrap().position);

    // CSV: a header and one row per event; only the asked-for event types.
    let mut csv = config(&source, Format::Csv, dir.join("cancelled.csv"));
    csv.event_types = vec!["OrderCancelled".into(), "ReservationReleased".into()];
    let n = export(&csv).await.unwrap();
    assert_eq!(n, 6, "3 cancellations, each with its release");
    let text = std::fs::read_to_string(dir.join("cancelled.csv")).unwrap();
    assert_eq!(text.lines().count(), 7);
    assert!(text.starts_with("position,event_id,stream_id"));

    // The event log's quick answers.
    let stats = surge_cli::stats::compute(&surge_cli::stats::StatsConfig {
        db: source.db.clone(),
        from_time: None,
        to_time: None,
        top: 5,
    })
    .await
    .unwrap();
    assert_eq!(stats.orders_per_minute.iter().map(|(_, n)| n).sum::<i64>(), 12);
    assert_eq!(
        (stats.reserved_orders, stats.paid_orders, stats.expired_or_released),
        (12, 0, 3)
    );
    assert!(stats.top_skus.is_empty(), "nothing was paid, so nothing sold");

    let mut bad = config(&source, Format::Ndjson, dir.join("bad.ndjson"));
    bad.stream_type = Some("invoices".into());
    assert!(export(&bad).await.is_err());

    std::fs::remove_dir_all(&dir).ok();
    source.cleanup().await;
    target.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_restored_into_a_new_database_rebuilds_identical_views() {
    use surge_projections::replay::{replay, ReplayConfig, Source};
    use surge_projections::{catalog, orders, Projection};
    let source = TestEnv::new().await;
    let (cmd, command) = support::command_api(&source).await;
    let relay = support::relay(&source).await;
    let projector = support::projector(&source, 100).await;
    let http = source.http();
    support::add_item(&http, &cmd, "B-1", 700, 40).await;
    for i in 0..15 {
        let r = support::place_order(&http, &cmd, &format!("b{i}"), "B-1", 2).await;
        let id = r["order_id"].as_str().unwrap().to_string();
        if i % 3 == 0 {
            http.post(format!("{cmd}/v1/orders/{id}/payment"))
                .json(&json!({"payment_token": "tok_visa_backup"}))
                .send()
                .await
                .unwrap();
        }
    }
    assert!(
        surge_testkit::count_reaches(
            &source.pool,
            "SELECT count(*) FROM pending_payments",
            0,
            std::time::Duration::from_secs(20)
        )
        .await,
        "payments settle"
    );
    surge_testkit::eventually(std::time::Duration::from_secs(30), || async {
        support::views_match_event_store(&source).await.then_some(())
    })
    .await
    .expect("live views catch up");

    // Backup: the event store as NDJSON. Restore: import into a new database, then replay.
    let file = std::env::temp_dir().join(format!("surge-backup-{}.ndjson", uuid::Uuid::new_v4().simple()));
    export(&config(&source, Format::Ndjson, file.clone())).await.unwrap();
    let restored = TestEnv::new().await;
    import(&ImportConfig {
        db: restored.db.clone(),
        input: file.clone(),
    })
    .await
    .unwrap();
    replay(&ReplayConfig {
        db: restored.db.clone(),
        projections: Projection::ALL.to_vec(),
        batch_size: 1000,
        max_rows_in_memory: ReplayConfig::DEFAULT_MAX_ROWS_IN_MEMORY,
        dry_run: false,
        source: Source::Store,
        kafka: restored.kafka.clone(),
        progress: None,
    })
    .await
    .unwrap();
    let (mut a, mut b) = (
        source.pool.acquire().await.unwrap(),
        restored.pool.acquire().await.unwrap(),
    );
    assert_eq!(
        catalog::load_all(&mut a, "catalog_items").await.unwrap(),
        catalog::load_all(&mut b, "catalog_items").await.unwrap()
    );
    assert_eq!(
        orders::load_all(&mut a, "orders").await.unwrap(),
        orders::load_all(&mut b, "orders").await.unwrap()
    );
    let sales = |pool: sqlx::PgPool| async move {
        sqlx::query_as::<_, (String, i64, i64)>(
            "SELECT sku, units, revenue_minor FROM sales_by_minute ORDER BY sku, minute",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    assert_eq!(sales(source.pool.clone()).await, sales(restored.pool.clone()).await);
    drop((a, b));
    std::fs::remove_file(&file).ok();
    projector.stop().await;
    relay.stop().await;
    command.stop().await;
    source.cleanup().await;
    restored.cleanup().await;
}
