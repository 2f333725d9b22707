//! What one filtered `$all` read may cost: it looks at a bounded number of events, and it ends
//! when its client has gone, even when its filter never matches (so it never sends anything); a
//! filtered subscription that matches nothing still checkpoints at least every scan limit.

use crate::support::{new_event, order_stream, serve, serve_with, stored, stream_append, write, Served};
use eventstore::{StreamPosition, SubscribeToAllOptions, SubscriptionEvent, SubscriptionFilter};
use std::time::{Duration, Instant};
use surge_events::{StreamId, StreamType};
use surge_stream::proto::shared::Empty;
use surge_stream::proto::streams::read_req::options::{
    all_options, filter_options, uuid_option, AllOptions, CountOption, FilterOption, FilterOptions, ReadDirection,
    StreamOption, UuidOption,
};
use surge_stream::proto::streams::read_req::Options;
use surge_stream::proto::streams::{read_resp, ReadReq};

/// A `$all` read from the start, forwards, of `count` events whose stream name passes `filter`.
fn filtered_read(served: &Served, filter: filter_options::Expression, count: u64) -> tonic::Request<ReadReq> {
    let mut request = tonic::Request::new(ReadReq {
        options: Some(Options {
            stream_option: Some(StreamOption::All(AllOptions {
                all_option: Some(all_options::AllOption::Start(Empty {})),
            })),
            read_direction: ReadDirection::Forwards as i32,
            resolve_links: false,
            count_option: Some(CountOption::Count(count)),
            filter_option: Some(FilterOption::Filter(FilterOptions {
                filter: Some(filter_options::Filter::StreamIdentifier(filter)),
                window: Some(filter_options::Window::Count(Empty {})),
                checkpoint_interval_multiplier: 1,
            })),
            uuid_option: Some(UuidOption {
                content: Some(uuid_option::Content::String(Empty {})),
            }),
            control_option: None,
        }),
    });
    request
        .metadata_mut()
        .insert("authorization", served.basic(&served.analyst));
    request
}

fn prefix(p: &str) -> filter_options::Expression {
    filter_options::Expression {
        regex: String::new(),
        prefix: vec![p.to_string()],
    }
}

/// `n` events of one order stream, then one event of `inventory-late`.
async fn orders_then_one_item(served: &Served, n: usize) {
    let orders = order_stream(0);
    let events = (0..n).map(|i| new_event("OrderPlaced", i)).collect();
    write(served.pool(), &[stream_append(&orders, StreamType::Order, 0, events)]).await;
    let item = StreamId("inventory-late".into());
    write(
        served.pool(),
        &[stream_append(
            &item,
            StreamType::Inventory,
            0,
            vec![new_event("ItemAdded", 0)],
        )],
    )
    .await;
}

/// The stream names a read sends, to its end.
async fn read_names(served: &Served, request: tonic::Request<ReadReq>) -> Vec<String> {
    let mut raw = served.raw().await;
    let mut read = raw.read(request).await.unwrap().into_inner();
    let mut names = Vec::new();
    while let Some(resp) = read.message().await.unwrap() {
        if let Some(read_resp::Content::Event(e)) = resp.content {
            names.push(String::from_utf8(e.event.unwrap().stream_identifier.unwrap().stream_name).unwrap());
        }
    }
    names
}

/// The value of the Prometheus counter line `name` of this process (0 when not yet counted).
fn counter(name: &str) -> f64 {
    surge_runtime::telemetry::prometheus()
        .render()
        .lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_filtered_read_that_never_matches_ends_at_the_scan_limit() {
    let limited = serve_with(|config| config.scan_limit = 700).await;
    orders_then_one_item(&limited, 1_500).await;
    let started = Instant::now();
    let names = tokio::time::timeout(
        Duration::from_secs(30),
        read_names(&limited, filtered_read(&limited, prefix("inventory-"), 1)),
    )
    .await
    .expect("the read ends");
    assert!(
        names.is_empty(),
        "the item is past the 700 events the read may look at: {names:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());

    // The same read on a server with the default limit looks far enough to find the item.
    let unlimited = serve().await;
    orders_then_one_item(&unlimited, 1_500).await;
    let names = read_names(&unlimited, filtered_read(&unlimited, prefix("inventory-"), 1)).await;
    assert_eq!(names, ["inventory-late"]);
}

#[tokio::test]
async fn a_filtered_read_stops_when_its_client_has_gone() {
    let cancelled = r#"surge_stream_reads_cancelled_total{source="all"}"#;
    let before = counter(cancelled);
    let served = serve().await;
    // Many events, none of which the expression matches, each costing it its backtracking bound:
    // the read sends nothing for a long while.
    orders_then_one_item(&served, 10_000).await;
    let slow = filter_options::Expression {
        regex: "^((?=.)[-a-z0-9]|[-a-z0-9])+!".into(),
        prefix: Vec::new(),
    };
    let mut raw = served.raw().await;
    let read = raw.read(filtered_read(&served, slow, 1)).await.unwrap().into_inner();
    drop(read);
    drop(raw);
    let deadline = Instant::now() + Duration::from_secs(20);
    while counter(cancelled) <= before {
        assert!(
            Instant::now() < deadline,
            "the read did not notice its client had gone: {cancelled} is still {before}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_filtered_subscription_that_never_matches_checkpoints_at_least_every_scan_limit() {
    let served = serve_with(|config| config.scan_limit = 300).await;
    orders_then_one_item(&served, 1_000).await;
    let positions: Vec<u64> = stored(served.pool()).await.iter().map(|e| e.position as u64).collect();
    assert_eq!(positions.len(), 1_001);
    // The client asks for a checkpoint every 100,000 events: the server's limit is lower.
    let filter = SubscriptionFilter::on_stream_name().add_prefix("nothing-").max(100_000);
    let mut sub = served
        .analyst_client()
        .subscribe_to_all(
            &SubscribeToAllOptions::default()
                .position(StreamPosition::Start)
                .filter(filter),
        )
        .await;
    let mut checkpoints = Vec::new();
    let caught_up = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match sub.next_subscription_event().await.unwrap() {
                SubscriptionEvent::EventAppeared(e) => {
                    panic!("nothing matches: {:?}", e.get_original_event().stream_id)
                }
                SubscriptionEvent::Checkpoint(p) => checkpoints.push(p.commit),
                SubscriptionEvent::CaughtUp => break,
                _ => {}
            }
        }
    })
    .await;
    assert!(caught_up.is_ok(), "the subscription catches up");
    assert_eq!(
        checkpoints,
        [positions[299], positions[599], positions[899], positions[1_000]],
        "one checkpoint every 300 events looked at, and one at the catch-up"
    );
}
