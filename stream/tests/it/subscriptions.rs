//! Catch-up subscriptions: history, then live, each event exactly once and in position order,
//! across a burst of concurrent writers and a transaction held open while later ones commit.

use crate::support::{new_event, order_stream, serve, stored, stream_append, write};
use eventstore::{StreamPosition, SubscribeToAllOptions, SubscribeToStreamOptions, SubscriptionEvent};
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use surge_events::{StreamId, StreamType};
use surge_store::append;

const HISTORY: usize = 20;
const BURST: usize = 1_000;
const WRITERS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_all_subscription_gets_every_event_once_in_order_across_a_burst_and_a_late_commit() {
    let served = serve().await;
    let pool = served.pool().clone();
    for i in 0..HISTORY {
        write(
            &pool,
            &[stream_append(
                &order_stream(i),
                StreamType::Order,
                0,
                vec![new_event("OrderPlaced", i)],
            )],
        )
        .await;
    }
    let client = served.analyst_client();
    let mut sub = client
        .subscribe_to_all(&SubscribeToAllOptions::default().position(StreamPosition::Start))
        .await;
    let mut got: Vec<(u64, uuid::Uuid)> = Vec::new();
    loop {
        match sub.next_subscription_event().await.unwrap() {
            SubscriptionEvent::EventAppeared(e) => {
                let e = e.get_original_event();
                got.push((e.position.commit, e.id));
            }
            SubscriptionEvent::CaughtUp => break,
            _ => {}
        }
    }
    assert_eq!(got.len(), HISTORY, "the history, before CaughtUp");

    // From here on the subscription is live; a task takes what it delivers.
    let total = HISTORY + 1 + BURST;
    let received = Arc::new(AtomicUsize::new(got.len()));
    let counter = received.clone();
    let consumer = tokio::spawn(async move {
        while got.len() < total {
            if let SubscriptionEvent::EventAppeared(e) = sub.next_subscription_event().await.unwrap() {
                let e = e.get_original_event();
                got.push((e.position.commit, e.id));
                counter.fetch_add(1, Ordering::SeqCst);
            }
        }
        // Anything more would be a duplicate: nothing else is written.
        let extra = tokio::time::timeout(Duration::from_millis(500), async {
            loop {
                if let SubscriptionEvent::EventAppeared(e) = sub.next_subscription_event().await.unwrap() {
                    return e.get_original_event().id;
                }
            }
        })
        .await;
        (got, extra.ok())
    });

    // A writer takes its position first and holds its transaction open while the burst commits.
    let late_stream = StreamId("order-late".into());
    let mut held = pool.begin().await.unwrap();
    let late = append::append(
        &mut held,
        &[stream_append(
            &late_stream,
            StreamType::Order,
            0,
            vec![new_event("OrderPlaced", 0)],
        )],
    )
    .await
    .unwrap();
    let started = Instant::now();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let pool = pool.clone();
            tokio::spawn(async move {
                for i in (w..BURST).step_by(WRITERS) {
                    write(
                        &pool,
                        &[stream_append(
                            &order_stream(i),
                            StreamType::Order,
                            0,
                            vec![new_event("OrderPlaced", i)],
                        )],
                    )
                    .await;
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let burst_written = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        received.load(Ordering::SeqCst),
        HISTORY,
        "nothing after the open transaction's position is delivered while it is open"
    );
    append::commit(&pool, held, &late).await.unwrap();

    let (got, extra) = tokio::time::timeout(Duration::from_secs(60), consumer)
        .await
        .expect("every event arrives within a minute")
        .unwrap();
    let delivered = started.elapsed();
    assert_eq!(extra, None, "no event is delivered twice");
    let log = stored(&pool).await;
    assert_eq!(log.len(), total);
    let expected: Vec<(u64, uuid::Uuid)> = log.iter().map(|e| (e.position as u64, e.event_id)).collect();
    assert_eq!(got, expected, "every event once, in position order, none skipped");
    assert_eq!(got.iter().map(|(_, id)| *id).collect::<HashSet<_>>().len(), total);
    let late_at = got
        .iter()
        .position(|(p, _)| *p as i64 == late.last_position)
        .expect("the late event arrives");
    assert_eq!(
        late_at, HISTORY,
        "the late commit comes in its place: before the burst that committed earlier"
    );
    eprintln!("burst of {BURST} written in {burst_written:?}; all delivered {delivered:?} after the burst began");
}

#[tokio::test]
async fn a_stream_subscription_gets_its_history_then_its_new_events() {
    let served = serve().await;
    let pool = served.pool().clone();
    let order = order_stream(1);
    let other = order_stream(2);
    let events = ["OrderPlaced", "PaymentSubmitted", "OrderPaid"];
    write(
        &pool,
        &[stream_append(
            &order,
            StreamType::Order,
            0,
            events.iter().map(|t| new_event(t, 1)).collect(),
        )],
    )
    .await;
    write(
        &pool,
        &[stream_append(
            &other,
            StreamType::Order,
            0,
            vec![new_event("OrderPlaced", 2)],
        )],
    )
    .await;
    let client = served.analyst_client();

    let mut sub = client
        .subscribe_to_stream(
            order.as_str(),
            &SubscribeToStreamOptions::default().start_from(StreamPosition::Start),
        )
        .await;
    let mut from_one = client
        .subscribe_to_stream(
            order.as_str(),
            &SubscribeToStreamOptions::default().start_from(StreamPosition::Position(1)),
        )
        .await;
    let mut history = Vec::new();
    loop {
        match sub.next_subscription_event().await.unwrap() {
            SubscriptionEvent::EventAppeared(e) => {
                let e = e.get_original_event();
                assert_eq!(e.stream_id, order.as_str());
                history.push((e.revision, e.event_type.clone()));
            }
            SubscriptionEvent::CaughtUp => break,
            _ => {}
        }
    }
    assert_eq!(
        history,
        [
            (0, "OrderPlaced".to_string()),
            (1, "PaymentSubmitted".into()),
            (2, "OrderPaid".into())
        ]
    );

    write(
        &pool,
        &[stream_append(
            &other,
            StreamType::Order,
            1,
            vec![new_event("OrderPaid", 2)],
        )],
    )
    .await;
    write(
        &pool,
        &[stream_append(
            &order,
            StreamType::Order,
            3,
            vec![new_event("OrderShipped", 1)],
        )],
    )
    .await;
    write(
        &pool,
        &[stream_append(
            &order,
            StreamType::Order,
            4,
            vec![new_event("PaymentRefunded", 1)],
        )],
    )
    .await;
    let mut live = Vec::new();
    while live.len() < 2 {
        let e = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .unwrap()
            .unwrap();
        live.push((
            e.get_original_event().revision,
            e.get_original_event().event_type.clone(),
        ));
    }
    assert_eq!(live, [(3, "OrderShipped".to_string()), (4, "PaymentRefunded".into())]);
    let nothing_else = tokio::time::timeout(Duration::from_millis(300), sub.next()).await;
    assert!(nothing_else.is_err(), "no other stream's events, no duplicates");

    // From a revision: the events after it.
    let mut after_one = Vec::new();
    while after_one.len() < 3 {
        let e = tokio::time::timeout(Duration::from_secs(10), from_one.next())
            .await
            .unwrap()
            .unwrap();
        after_one.push(e.get_original_event().revision);
    }
    assert_eq!(after_one, [2, 3, 4]);
}
