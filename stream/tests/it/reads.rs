//! Reads with a count: one stream (forwards, backwards, from a revision) and `$all` (positions,
//! directions, the event type and stream name filters).

use crate::support::{data, new_event, order_stream, serve, stored, stream_append, write};
use eventstore::{
    Position, ReadAllOptions, ReadStreamOptions, StreamPosition, SubscribeToAllOptions, SubscriptionEvent,
    SubscriptionFilter,
};
use surge_events::{StreamId, StreamType};
use surge_stream::proto::shared::{Empty, StreamIdentifier};
use surge_stream::proto::streams::read_req::options::{
    all_options, filter_options, uuid_option, AllOptions, CountOption, FilterOption, FilterOptions, ReadDirection,
    StreamOption, UuidOption,
};
use surge_stream::proto::streams::read_req::Options;
use surge_stream::proto::streams::{read_resp, ReadReq};

const ORDER_LIFE: [&str; 5] = [
    "OrderPlaced",
    "PaymentSubmitted",
    "OrderPaid",
    "OrderShipped",
    "PaymentRefunded",
];

async fn revisions(client: &eventstore::Client, stream: &StreamId, options: ReadStreamOptions) -> Vec<u64> {
    let mut read = client.read_stream(stream.as_str(), &options).await.unwrap();
    let mut got = Vec::new();
    while let Some(e) = read.next().await.unwrap() {
        got.push(e.get_original_event().revision);
    }
    got
}

#[tokio::test]
async fn a_stream_reads_forwards_backwards_from_a_revision_with_a_count() {
    let served = serve().await;
    let order = order_stream(1);
    let events = ORDER_LIFE.iter().enumerate().map(|(i, t)| new_event(t, i)).collect();
    write(served.pool(), &[stream_append(&order, StreamType::Order, 0, events)]).await;
    let other = order_stream(2);
    write(
        served.pool(),
        &[stream_append(
            &other,
            StreamType::Order,
            0,
            vec![new_event("OrderPlaced", 9)],
        )],
    )
    .await;
    let client = served.analyst_client();

    // Everything, forwards: each event as Surge stored it.
    let mut read = client
        .read_stream(order.as_str(), &ReadStreamOptions::default())
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Some(e) = read.next().await.unwrap() {
        got.push(e);
    }
    let got: Vec<&eventstore::RecordedEvent> = got.iter().map(|e| e.get_original_event()).collect();
    let stored: Vec<_> = stored(served.pool())
        .await
        .into_iter()
        .filter(|e| e.stream_id == order)
        .collect();
    assert_eq!(got.len(), 5);
    for (g, s) in got.iter().zip(&stored) {
        assert_eq!(g.id, s.event_id);
        assert_eq!(g.stream_id, order.as_str());
        assert_eq!(g.revision as i64, s.version - 1, "revision = version - 1");
        assert_eq!(
            (g.position.commit as i64, g.position.prepare as i64),
            (s.position, s.position)
        );
        assert_eq!(g.event_type, s.event_type);
        assert!(g.is_json);
        assert_eq!(data(g), s.payload);
        assert_eq!(g.created.timestamp(), s.occurred_at.timestamp());
        let meta: serde_json::Value = serde_json::from_slice(&g.custom_metadata).unwrap();
        assert_eq!(meta["correlation_id"], s.metadata.correlation_id.to_string());
        assert_eq!(meta["$correlationId"], s.metadata.correlation_id.to_string());
        assert_eq!(meta["causation_id"], serde_json::Value::Null);
        assert_eq!(meta["schema_version"], s.schema_version);
        assert_eq!(meta["actor"], "service:test");
        assert_eq!(meta["occurred_at"], serde_json::to_value(s.occurred_at).unwrap());
    }
    assert_eq!(got[0].event_type, "OrderPlaced");

    let forwards = ReadStreamOptions::default().forwards();
    let backwards = ReadStreamOptions::default().backwards();
    assert_eq!(revisions(&client, &order, forwards.clone().max_count(2)).await, [0, 1]);
    assert_eq!(
        revisions(
            &client,
            &order,
            forwards.clone().position(StreamPosition::Position(2)).max_count(2)
        )
        .await,
        [2, 3]
    );
    assert_eq!(
        revisions(&client, &order, forwards.clone().position(StreamPosition::Position(3))).await,
        [3, 4]
    );
    assert!(
        revisions(&client, &order, forwards.clone().position(StreamPosition::Position(5)))
            .await
            .is_empty()
    );
    assert_eq!(
        revisions(&client, &order, backwards.clone().position(StreamPosition::End)).await,
        [4, 3, 2, 1, 0]
    );
    assert_eq!(
        revisions(
            &client,
            &order,
            backwards.clone().position(StreamPosition::End).max_count(2)
        )
        .await,
        [4, 3]
    );
    assert_eq!(
        revisions(&client, &order, backwards.clone().position(StreamPosition::Position(1))).await,
        [1, 0]
    );
    assert_eq!(
        revisions(
            &client,
            &order,
            backwards.position(StreamPosition::Position(3)).max_count(2)
        )
        .await,
        [3, 2]
    );

    // A stream without events is not found, as on KurrentDB.
    let missing = client
        .read_stream("order-nobody", &ReadStreamOptions::default())
        .await
        .unwrap()
        .next()
        .await;
    assert!(
        matches!(missing, Err(eventstore::Error::ResourceNotFound)),
        "{missing:?}"
    );
}

/// Writes orders and items, interleaved; returns the stored log.
async fn a_mixed_log(served: &crate::support::Served) -> Vec<surge_events::EventEnvelope> {
    for i in 0..6 {
        let order = order_stream(i);
        write(
            served.pool(),
            &[stream_append(
                &order,
                StreamType::Order,
                0,
                vec![new_event("OrderPlaced", i), new_event("OrderPaid", i)],
            )],
        )
        .await;
        let item = StreamId(format!("inventory-SKU{i}"));
        write(
            served.pool(),
            &[stream_append(
                &item,
                StreamType::Inventory,
                0,
                vec![new_event("ItemAdded", i)],
            )],
        )
        .await;
    }
    stored(served.pool()).await
}

#[tokio::test]
async fn all_reads_from_positions_both_ways() {
    let served = serve().await;
    let log = a_mixed_log(&served).await;
    assert_eq!(log.len(), 18);
    let client = served.analyst_client();
    let positions = |options: ReadAllOptions| {
        let client = client.clone();
        async move {
            let mut read = client.read_all(&options).await.unwrap();
            let mut got = Vec::new();
            while let Some(e) = read.next().await.unwrap() {
                got.push(e.get_original_event().position.commit as i64);
            }
            got
        }
    };
    let all: Vec<i64> = log.iter().map(|e| e.position).collect();
    assert_eq!(positions(ReadAllOptions::default()).await, all);
    let p5 = Position {
        commit: all[5] as u64,
        prepare: all[5] as u64,
    };
    assert_eq!(
        positions(
            ReadAllOptions::default()
                .position(StreamPosition::Position(p5))
                .max_count(3)
        )
        .await,
        all[5..8],
        "forwards from a position includes it"
    );
    let mut newest_first = all.clone();
    newest_first.reverse();
    assert_eq!(
        positions(ReadAllOptions::default().backwards().position(StreamPosition::End)).await,
        newest_first
    );
    assert_eq!(
        positions(
            ReadAllOptions::default()
                .backwards()
                .position(StreamPosition::Position(p5))
                .max_count(2)
        )
        .await,
        [all[4], all[3]],
        "backwards from a position starts below it"
    );
    let past_the_end = Position {
        commit: all[17] as u64 + 1,
        prepare: all[17] as u64 + 1,
    };
    assert!(
        positions(ReadAllOptions::default().position(StreamPosition::Position(past_the_end)))
            .await
            .is_empty()
    );
}

/// The history a filtered `$all` subscription delivers before it is caught up, and whether it
/// sent checkpoints.
async fn filtered_history(client: &eventstore::Client, filter: SubscriptionFilter) -> (Vec<(String, String)>, usize) {
    let mut sub = client
        .subscribe_to_all(
            &SubscribeToAllOptions::default()
                .position(StreamPosition::Start)
                .filter(filter),
        )
        .await;
    let (mut got, mut checkpoints) = (Vec::new(), 0);
    loop {
        match sub.next_subscription_event().await.unwrap() {
            SubscriptionEvent::EventAppeared(e) => {
                let e = e.get_original_event();
                got.push((e.stream_id.clone(), e.event_type.clone()));
            }
            SubscriptionEvent::Checkpoint(_) => checkpoints += 1,
            SubscriptionEvent::CaughtUp => return (got, checkpoints),
            _ => {}
        }
    }
}

#[tokio::test]
async fn all_filters_on_event_type_and_stream_name() {
    let served = serve().await;
    let log = a_mixed_log(&served).await;
    let client = served.analyst_client();
    let expect = |keep: &dyn Fn(&surge_events::EventEnvelope) -> bool| -> Vec<(String, String)> {
        log.iter()
            .filter(|e| keep(e))
            .map(|e| (e.stream_id.0.clone(), e.event_type.clone()))
            .collect()
    };

    let (paid, checkpoints) =
        filtered_history(&client, SubscriptionFilter::on_event_type().add_prefix("OrderPaid")).await;
    assert_eq!(paid, expect(&|e| e.event_type == "OrderPaid"));
    assert!(
        checkpoints >= 1,
        "a filtered subscription checkpoints at least when caught up"
    );
    let (by_regex, _) = filtered_history(
        &client,
        SubscriptionFilter::on_event_type().regex("^(ItemAdded|OrderPlaced)$"),
    )
    .await;
    assert_eq!(
        by_regex,
        expect(&|e| e.event_type == "ItemAdded" || e.event_type == "OrderPlaced")
    );
    let (items, _) = filtered_history(&client, SubscriptionFilter::on_stream_name().add_prefix("inventory-")).await;
    assert_eq!(items, expect(&|e| e.stream_id.0.starts_with("inventory-")));
    assert_eq!(items.len(), 6);
    let (few, _) = filtered_history(&client, SubscriptionFilter::on_stream_name().regex("SKU[0-2]$")).await;
    assert_eq!(few.len(), 3);

    // A read with a count and a filter: the `eventstore` crate's `read_all` sends none, other
    // clients do; the raw protocol shows the server applies it.
    let mut raw = served.raw().await;
    let filtered_read = |filter: filter_options::Filter, count: u64, direction: ReadDirection| {
        let mut request = tonic::Request::new(ReadReq {
            options: Some(Options {
                stream_option: Some(StreamOption::All(AllOptions {
                    all_option: Some(if direction == ReadDirection::Forwards {
                        all_options::AllOption::Start(Empty {})
                    } else {
                        all_options::AllOption::End(Empty {})
                    }),
                })),
                read_direction: direction as i32,
                resolve_links: false,
                count_option: Some(CountOption::Count(count)),
                filter_option: Some(FilterOption::Filter(FilterOptions {
                    filter: Some(filter),
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
    };
    let prefix = |p: &str| filter_options::Expression {
        regex: String::new(),
        prefix: vec![p.to_string()],
    };
    let mut types = Vec::new();
    let mut read = raw
        .read(filtered_read(
            filter_options::Filter::EventType(prefix("OrderPaid")),
            4,
            ReadDirection::Forwards,
        ))
        .await
        .unwrap()
        .into_inner();
    while let Some(resp) = read.message().await.unwrap() {
        if let Some(read_resp::Content::Event(e)) = resp.content {
            let e = e.event.unwrap();
            types.push(e.metadata["type"].clone());
            assert!(String::from_utf8(e.stream_identifier.unwrap().stream_name)
                .unwrap()
                .starts_with("order-"));
        }
    }
    assert_eq!(types, ["OrderPaid"; 4], "four of six, in order");
    let mut streams = Vec::new();
    let mut read = raw
        .read(filtered_read(
            filter_options::Filter::StreamIdentifier(prefix("inventory-")),
            2,
            ReadDirection::Backwards,
        ))
        .await
        .unwrap()
        .into_inner();
    while let Some(resp) = read.message().await.unwrap() {
        if let Some(read_resp::Content::Event(e)) = resp.content {
            streams.push(String::from_utf8(e.event.unwrap().stream_identifier.unwrap().stream_name).unwrap());
        }
    }
    assert_eq!(streams, ["inventory-SKU5", "inventory-SKU4"], "the newest two items");
    let _ = StreamIdentifier::default();
}
