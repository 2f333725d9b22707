//! Who may do what: analysts and admins read; writes are refused with `PermissionDenied`; bad or
//! missing credentials are `Unauthenticated`; other roles `PermissionDenied`. And what clients
//! ask when they connect (server features, gossip).

use crate::support::{new_event, order_stream, serve, stored, stream_append, write};
use eventstore::{
    AppendToStreamOptions, DeleteStreamOptions, EventData, ReadStreamOptions, StreamPosition, SubscribeToAllOptions,
    TombstoneStreamOptions,
};
use surge_events::StreamType;
use surge_stream::proto::gossip::gossip_client::GossipClient;
use surge_stream::proto::gossip::member_info::VNodeState;
use surge_stream::proto::server_features::server_features_client::ServerFeaturesClient;
use surge_stream::proto::shared::{Empty, StreamIdentifier};
use surge_stream::proto::streams::{append_req, delete_req, tombstone_req, AppendReq, DeleteReq, TombstoneReq};
use tonic::Code;

fn denied<T: std::fmt::Debug>(result: &eventstore::Result<T>) -> bool {
    matches!(result, Err(eventstore::Error::AccessDenied))
}

#[tokio::test]
async fn append_delete_and_tombstone_are_refused_with_permission_denied() {
    let served = serve().await;
    let order = order_stream(1);
    write(
        served.pool(),
        &[stream_append(
            &order,
            StreamType::Order,
            0,
            vec![new_event("OrderPlaced", 1)],
        )],
    )
    .await;
    for who in [&served.analyst, &served.admin] {
        let client = served.client_as(who);
        let event = EventData::json("OrderPlaced", &serde_json::json!({"n": 2})).unwrap();
        let appended = client
            .append_to_stream(order.as_str(), &AppendToStreamOptions::default(), event)
            .await;
        assert!(denied(&appended), "{appended:?}");
        let deleted = client
            .delete_stream(order.as_str(), &DeleteStreamOptions::default())
            .await;
        assert!(denied(&deleted), "{deleted:?}");
        let tombstoned = client
            .tombstone_stream(order.as_str(), &TombstoneStreamOptions::default())
            .await;
        assert!(denied(&tombstoned), "{tombstoned:?}");
    }

    // The exact status, as KurrentDB answers a caller without the right.
    let mut raw = served.raw().await;
    let stream = || {
        Some(StreamIdentifier {
            stream_name: order.as_str().as_bytes().to_vec(),
        })
    };
    let mut delete = tonic::Request::new(DeleteReq {
        options: Some(delete_req::Options {
            stream_identifier: stream(),
            expected_stream_revision: Some(delete_req::options::ExpectedStreamRevision::Any(Empty {})),
        }),
    });
    delete
        .metadata_mut()
        .insert("authorization", served.basic(&served.analyst));
    assert_eq!(raw.delete(delete).await.unwrap_err().code(), Code::PermissionDenied);
    let mut tombstone = tonic::Request::new(TombstoneReq {
        options: Some(tombstone_req::Options {
            stream_identifier: stream(),
            expected_stream_revision: Some(tombstone_req::options::ExpectedStreamRevision::Any(Empty {})),
        }),
    });
    tombstone
        .metadata_mut()
        .insert("authorization", served.basic(&served.admin));
    assert_eq!(
        raw.tombstone(tombstone).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    let header = AppendReq {
        content: Some(append_req::Content::Options(append_req::Options {
            stream_identifier: stream(),
            expected_stream_revision: Some(append_req::options::ExpectedStreamRevision::Any(Empty {})),
        })),
    };
    let mut append = tonic::Request::new(tokio_stream::iter(vec![header]));
    append
        .metadata_mut()
        .insert("authorization", served.basic(&served.analyst));
    assert_eq!(raw.append(append).await.unwrap_err().code(), Code::PermissionDenied);

    let log = stored(served.pool()).await;
    assert_eq!(log.len(), 1, "nothing was written, deleted or tombstoned");
    let still = served
        .analyst_client()
        .read_stream(order.as_str(), &ReadStreamOptions::default())
        .await
        .unwrap()
        .next()
        .await;
    assert_eq!(still.unwrap().unwrap().get_original_event().revision, 0);
}

#[tokio::test]
async fn wrong_and_missing_credentials_are_refused() {
    let served = serve().await;
    let order = order_stream(1);
    write(
        served.pool(),
        &[stream_append(
            &order,
            StreamType::Order,
            0,
            vec![new_event("OrderPlaced", 1)],
        )],
    )
    .await;
    let (name, key) = served.analyst.clone();
    let wrong_password = (name.clone(), format!("surge_{name}_{}", "0".repeat(48)));
    let someone_elses_key = ("mallory".to_string(), key.clone());
    for who in [&wrong_password, &someone_elses_key] {
        let read = served
            .client_as(who)
            .read_stream(order.as_str(), &ReadStreamOptions::default())
            .await;
        assert!(denied(&read.map(|_| ())), "{who:?}");
        let mut sub = served
            .client_as(who)
            .subscribe_to_all(&SubscribeToAllOptions::default().position(StreamPosition::Start))
            .await;
        assert!(denied(&sub.next_subscription_event().await), "{who:?}");
    }
    let anonymous: eventstore::ClientSettings = format!("esdb://{}?tls=false", served.addr).parse().unwrap();
    let read = eventstore::Client::new(anonymous)
        .unwrap()
        .read_stream(order.as_str(), &ReadStreamOptions::default())
        .await;
    assert!(denied(&read.map(|_| ())));

    // On the wire: Unauthenticated, as KurrentDB answers.
    let mut raw = served.raw().await;
    let read = |auth: Option<&(String, String)>| {
        let mut request = tonic::Request::new(surge_stream::proto::streams::ReadReq {
            options: Some(surge_stream::proto::streams::read_req::Options {
                stream_option: Some(surge_stream::proto::streams::read_req::options::StreamOption::Stream(
                    surge_stream::proto::streams::read_req::options::StreamOptions {
                        stream_identifier: Some(StreamIdentifier {
                            stream_name: order.as_str().as_bytes().to_vec(),
                        }),
                        revision_option: Some(
                            surge_stream::proto::streams::read_req::options::stream_options::RevisionOption::Start(
                                Empty {},
                            ),
                        ),
                    },
                )),
                read_direction: 0,
                resolve_links: false,
                count_option: Some(surge_stream::proto::streams::read_req::options::CountOption::Count(10)),
                filter_option: None,
                uuid_option: None,
                control_option: None,
            }),
        });
        if let Some(who) = auth {
            request.metadata_mut().insert("authorization", served.basic(who));
        }
        request
    };
    assert_eq!(raw.read(read(None)).await.unwrap_err().code(), Code::Unauthenticated);
    assert_eq!(
        raw.read(read(Some(&wrong_password))).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert!(raw.read(read(Some(&served.analyst))).await.is_ok());
}

#[tokio::test]
async fn only_analysts_and_admins_read() {
    let served = serve().await;
    let order = order_stream(1);
    write(
        served.pool(),
        &[stream_append(
            &order,
            StreamType::Order,
            0,
            vec![new_event("OrderPlaced", 1)],
        )],
    )
    .await;
    let read = served
        .client_as(&served.service)
        .read_stream(order.as_str(), &ReadStreamOptions::default())
        .await;
    assert!(denied(&read.map(|_| ())));
    let mut sub = served
        .client_as(&served.service)
        .subscribe_to_all(&SubscribeToAllOptions::default())
        .await;
    assert!(denied(&sub.next_subscription_event().await));
    for who in [&served.analyst, &served.admin] {
        let mut read = served
            .client_as(who)
            .read_stream(order.as_str(), &ReadStreamOptions::default())
            .await
            .unwrap();
        assert_eq!(
            read.next().await.unwrap().unwrap().get_original_event().event_type,
            "OrderPlaced"
        );
    }
}

#[tokio::test]
async fn clients_connect_as_to_a_single_leader_node() {
    let served = serve().await;
    let info = served.analyst_client().server_info().await.unwrap();
    assert_eq!((info.version().major(), info.version().minor()), (24, 10));
    let url = format!("http://{}", served.addr);
    let features = ServerFeaturesClient::connect(url.clone())
        .await
        .unwrap()
        .get_supported_methods(Empty {})
        .await
        .unwrap()
        .into_inner();
    assert!(features
        .methods
        .iter()
        .any(|m| m.method_name == "read" && m.service_name == "event_store.client.streams.streams"));
    assert!(
        !features.methods.iter().any(|m| m.method_name == "batchappend"),
        "clients must use Append"
    );
    let cluster = GossipClient::connect(url)
        .await
        .unwrap()
        .read(Empty {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cluster.members.len(), 1);
    let me = &cluster.members[0];
    assert!(me.is_alive);
    assert_eq!(me.state, VNodeState::Leader as i32);
    assert_eq!(me.http_end_point.as_ref().unwrap().port, u32::from(served.addr.port()));
}
