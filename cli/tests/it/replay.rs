//! A replay rebuilds the views into a new generation while commands keep coming and reads keep
//! being served; after the switch the views equal the fold of the event store and no read failed.

use crate::support::{self, views_match_event_store};
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use surge_projections::replay::{replay, ReplayConfig, Source};
use surge_projections::Projection;
use surge_testkit::{eventually, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_switches_generations_under_load_without_failed_reads() {
    let env = TestEnv::new().await;
    let (cmd, command) = support::command_api(&env).await;
    let (qry, query) = support::query_api(&env, false).await;
    let relay = support::relay(&env).await;
    let projector = support::projector(&env, 50).await;
    let http = env.http();
    for sku in ["RP-1", "RP-2", "RP-3"] {
        support::add_item(&http, &cmd, sku, 300, 500).await;
    }
    let order = |i: usize| {
        let sku = ["RP-1", "RP-2", "RP-3"][i % 3];
        json!({"customer_id": format!("r{}", i % 7), "lines": [{"sku": sku, "quantity": 1}]})
    };
    for i in 0..60 {
        http.post(format!("{cmd}/v1/orders"))
            .json(&order(i))
            .send()
            .await
            .unwrap();
    }
    eventually(Duration::from_secs(30), || async {
        views_match_event_store(&env).await.then_some(())
    })
    .await
    .expect("live views catch up");

    let stop = Arc::new(AtomicBool::new(false));
    let (reads, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let reader = tokio::spawn({
        let (http, qry, stop, reads, failed) = (http.clone(), qry.clone(), stop.clone(), reads.clone(), failed.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                for path in [
                    "/v1/catalog/items?limit=50",
                    "/v1/catalog/items/RP-1",
                    "/v1/customers/r1/orders",
                ] {
                    let ok = http
                        .get(format!("{qry}{path}"))
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success());
                    reads.fetch_add(1, Ordering::Relaxed);
                    if !ok {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    });
    let writer = tokio::spawn({
        let (http, cmd, stop) = (http.clone(), cmd.clone(), stop.clone());
        async move {
            let mut i = 60;
            while !stop.load(Ordering::Relaxed) {
                let r = http
                    .post(format!("{cmd}/v1/orders"))
                    .json(&order(i))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 202);
                i += 1;
            }
            i - 60
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let reports = replay(&ReplayConfig {
        db: support::db(&env),
        projections: Projection::ALL.to_vec(),
        batch_size: 40,
        max_rows_in_memory: ReplayConfig::DEFAULT_MAX_ROWS_IN_MEMORY,
        dry_run: false,
        source: Source::Store,
        kafka: env.kafka.clone(),
        progress: None,
    })
    .await
    .expect("replay succeeds");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let written_during = writer.await.unwrap();
    reader.await.unwrap();

    assert_eq!(reports.len(), 2);
    assert!(reports.iter().all(|r| r.events > 0));
    assert!(written_during > 0, "commands kept arriving during the replay");
    assert!(reads.load(Ordering::Relaxed) > 0);
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no read failed during the switch");
    eventually(Duration::from_secs(30), || async {
        views_match_event_store(&env).await.then_some(())
    })
    .await
    .expect("after the switch the views equal the fold of the event store");
    let generations: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' \
         AND (tablename LIKE '%\\_g1%' OR tablename LIKE '%\\_old')",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(generations, 0, "the old generation is dropped, no new one left behind");

    // The same from Kafka, from offset 0.
    let reports = replay(&ReplayConfig {
        db: support::db(&env),
        projections: Projection::ALL.to_vec(),
        batch_size: 100,
        max_rows_in_memory: ReplayConfig::DEFAULT_MAX_ROWS_IN_MEMORY,
        dry_run: false,
        source: Source::Kafka,
        kafka: env.kafka.clone(),
        progress: None,
    })
    .await
    .expect("replay from Kafka succeeds");
    assert!(reports.iter().all(|r| r.events > 0));
    eventually(Duration::from_secs(30), || async {
        views_match_event_store(&env).await.then_some(())
    })
    .await
    .expect("a replay from Kafka gives the same views");

    projector.stop().await;
    relay.stop().await;
    query.stop().await;
    command.stop().await;
    env.cleanup().await;
}
