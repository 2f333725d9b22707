//! The relay is killed mid-publish and started again: nothing is missing on Kafka, and a
//! duplicate is only ever the same event (same event id) again.

use crate::support::{read_topic, start_api, start_relay};
use futures::future::join_all;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use surge_events::StreamType;
use surge_testkit::TestEnv;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_killed_mid_publish_loses_nothing() {
    let env = TestEnv::new().await;
    let api = start_api(&env).await;
    for sku in ["R-1", "R-2", "R-3"] {
        api.add_item(sku, 1000).await;
    }
    let orders = (0..300).map(|i| {
        let api = &api;
        async move {
            let sku = ["R-1", "R-2", "R-3"][i % 3];
            api.post(
                "/v1/orders",
                json!({"customer_id": format!("c{i}"), "lines": [{"sku": sku, "quantity": 1}]}),
            )
            .await
        }
    });
    assert!(join_all(orders).await.iter().all(|(s, _)| *s == 202));
    let stored: Vec<(Uuid, String, i64)> =
        sqlx::query_as("SELECT event_id, stream_id, version FROM events ORDER BY position")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(stored.len(), 3 + 300 + 300);

    // Start a relay and kill it (abort, no graceful stop) as soon as it has published some.
    let (_, relay) = start_relay(&env).await;
    let pool = env.pool.clone();
    surge_testkit::eventually(Duration::from_secs(30), || {
        let pool = pool.clone();
        async move {
            let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
                .fetch_one(&pool)
                .await
                .ok()?;
            (left < 603).then_some(())
        }
    })
    .await
    .expect("the relay starts publishing");
    relay.abort();
    let _ = relay.await;

    // A new relay takes over (the killed one's lock went with its connection).
    let (stop, relay) = start_relay(&env).await;
    assert!(
        surge_testkit::count_reaches(&env.pool, "SELECT count(*) FROM outbox", 0, Duration::from_secs(60)).await,
        "the outbox drains"
    );

    let mut published = read_topic(&env, StreamType::Order, |s| s.len() >= 300).await;
    published.extend(read_topic(&env, StreamType::Inventory, |s| s.len() >= 303).await);
    let stored_ids: HashSet<Uuid> = stored.iter().map(|(id, _, _)| *id).collect();
    let published_ids: HashSet<Uuid> = published.iter().map(|e| e.event_id).collect();
    assert_eq!(published_ids, stored_ids, "every stored event is on Kafka");

    // A duplicate is the same event: same id, same stream and version.
    let by_id: HashMap<Uuid, (String, i64)> = stored.into_iter().map(|(id, s, v)| (id, (s, v))).collect();
    for e in &published {
        assert_eq!(by_id[&e.event_id], (e.stream_id.0.clone(), e.version));
    }
    // After dropping repeats, each stream arrives in version order.
    let mut first_seen = HashSet::new();
    let mut last_version: HashMap<String, i64> = HashMap::new();
    for e in &published {
        if first_seen.insert(e.event_id) {
            let last = last_version.entry(e.stream_id.0.clone()).or_insert(0);
            assert!(e.version > *last, "{} v{} after v{}", e.stream_id, e.version, last);
            *last = e.version;
        }
    }

    stop.cancel();
    relay.await.unwrap();
    api.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_two_relays_one_is_active_and_the_other_takes_over() {
    let env = TestEnv::new().await;
    let api = start_api(&env).await;
    api.add_item("L-1", 100).await;
    let holders = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND ((classid::bigint << 32) | objid::bigint) = $1",
        )
        .bind(surge_command::relay::RELAY_LOCK_KEY)
        .fetch_one(&env.pool)
        .await
        .unwrap()
    };
    // A first, so that it is the active one; B stands by.
    let (stop_a, a) = start_relay(&env).await;
    surge_testkit::eventually(Duration::from_secs(10), || async {
        (holders().await == 1).then_some(())
    })
    .await
    .expect("one relay holds the lock");
    let (stop_b, b) = start_relay(&env).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(holders().await, 1, "never two active relays");

    // Stop the active one: the standby takes over and publishes what comes next.
    stop_a.cancel();
    a.await.unwrap();
    for i in 0..20 {
        let (s, _) = api
            .post(
                "/v1/orders",
                json!({"customer_id": format!("l{i}"), "lines": [{"sku": "L-1", "quantity": 1}]}),
            )
            .await;
        assert_eq!(s, 202);
    }
    assert!(
        surge_testkit::count_reaches(&env.pool, "SELECT count(*) FROM outbox", 0, Duration::from_secs(30)).await,
        "the remaining relay drains the outbox"
    );
    assert_eq!(holders().await, 1);
    stop_b.cancel();
    b.await.unwrap();
    api.stop().await;
    env.cleanup().await;
}
