//! Event-to-view latency from PostgreSQL's commit timestamps, on the real store and the real
//! projection apply path: the commit times the store reads are those of the events' commits,
//! and a view row committed later measures against the event at the version it shows.

use chrono::Utc;
use std::time::Duration;
use surge_events::order::{OrderLine, OrderPlaced, PaymentSubmitted};
use surge_events::{Currency, CustomerId, EventMetadata, Money, OrderEvent, OrderId, Sku, StreamId};
use surge_loadgen::audit::{measure_event_to_view, EVENT_TO_VIEW_P99_TARGET_MS};
use surge_projections::{BatchStats, Projection};
use surge_store::append::{self, StreamAppend};
use surge_store::commit_times::{commit_times_of, commit_times_tracked};
use surge_testkit::TestEnv;

fn placed(order: OrderId) -> OrderEvent {
    let eur = |minor| Money::new(minor, Currency::parse("EUR").unwrap()).unwrap();
    OrderEvent::OrderPlaced(OrderPlaced {
        order_id: order,
        customer_id: CustomerId::parse("c1").unwrap(),
        lines: vec![OrderLine {
            sku: Sku::parse("A").unwrap(),
            quantity: 1,
            unit_price: eur(1_000),
            bucket: 0,
        }],
        total: eur(1_000),
        reservation_expires_at: Utc::now(),
    })
}

/// Appends `event` at `expected + 1` through the store's write path, in a transaction of its own.
async fn append_one(env: &TestEnv, order: OrderId, expected: i64, event: OrderEvent) {
    let meta = EventMetadata::new("test");
    let mut tx = env.pool.begin().await.unwrap();
    let committed = append::append(
        &mut tx,
        &[StreamAppend::new(order.stream_id(), expected, &[event], &meta)],
    )
    .await
    .unwrap();
    append::commit(&env.pool, tx, &committed).await.unwrap();
}

/// Folds the order's events after `after` into the orders view, as the projector does, and
/// commits: the view row's commit.
async fn project(env: &TestEnv, order: OrderId, after: i64) {
    let orders = Projection::named("orders").expect("the orders view is registered");
    let mut tx = env.pool.begin().await.unwrap();
    let events = surge_store::read_stream(&mut tx, &order.stream_id(), after + 1, i64::MAX)
        .await
        .unwrap();
    let mut stats = BatchStats::default();
    let not_folded = orders
        .apply(&mut tx, &orders.live_tables(), events, &mut stats)
        .await
        .unwrap();
    assert!(not_folded.is_empty(), "{not_folded:?}");
    assert_eq!(stats.applied, 1);
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn event_to_view_is_the_view_rows_commit_after_its_events_commit() {
    let env = TestEnv::new().await;
    assert!(
        commit_times_tracked(&env.pool).await.unwrap(),
        "PostgreSQL's track_commit_timestamp is off: event-to-view latency cannot be measured. \
         `./dev test` (postgres_up) turns it on and restarts PostgreSQL once."
    );
    let order = OrderId::new();
    let before = Utc::now();
    append_one(&env, order, 0, placed(order)).await;
    let after = Utc::now();
    let stream = order.stream_id();
    let read = commit_times_of(
        &env.pool,
        &[stream.clone(), stream.clone(), StreamId("order-none".into())],
        &[1, 2, 1],
    )
    .await
    .unwrap();
    assert_eq!(read.len(), 1, "only the event that exists: {read:?}");
    let placed_at = read[0].committed_at.expect("a commit time for a committed event");
    // The server's clock is this machine's: the commit falls between the two readings.
    let slack = chrono::Duration::milliseconds(50);
    assert!(
        placed_at >= before - slack && placed_at <= after + slack,
        "{before} <= {placed_at} <= {after}"
    );
    assert_eq!((read[0].stream_id.clone(), read[0].version), (stream.clone(), 1));

    // The view row is committed 150 ms later: that is its latency.
    tokio::time::sleep(Duration::from_millis(150)).await;
    project(&env, order, 0).await;
    let measured = measure_event_to_view(&env.pool, &[order.0], before).await.unwrap();
    assert_eq!((measured.rows, measured.skipped), (1, 0), "{measured:?}");
    let first = measured.latency_ms.clone().expect("measured");
    assert!(first.p50 >= 150.0 && first.p50 < 5_000.0, "{measured:?}");
    assert_eq!(
        measured.p99_within_target,
        Some(first.p99 <= EVENT_TO_VIEW_P99_TARGET_MS)
    );
    assert_eq!(measured.per_second.iter().map(|s| s.rows).sum::<u64>(), 1);

    // Version 2 half a second later, its row 60 ms after it: measured against version 2's
    // commit (60 ms and a little), not against version 1's (over 700 ms).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let submitted = OrderEvent::PaymentSubmitted(PaymentSubmitted {
        order_id: order,
        token_fingerprint: "fp".into(),
    });
    append_one(&env, order, 1, submitted).await;
    tokio::time::sleep(Duration::from_millis(60)).await;
    project(&env, order, 1).await;
    let measured = measure_event_to_view(&env.pool, &[order.0, OrderId::new().0], before)
        .await
        .unwrap();
    assert_eq!(
        (measured.rows, measured.skipped),
        (1, 1),
        "an order without a row: {measured:?}"
    );
    let second = measured.latency_ms.expect("measured");
    assert!(second.p50 >= 60.0 && second.p50 < 600.0, "{second:?}");
    env.cleanup().await;
}
