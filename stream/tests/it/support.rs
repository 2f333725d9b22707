//! A served stream API and ways to write events the real way (the store's append and commit).

use eventstore::{Client, ClientSettings};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::net::SocketAddr;
use surge_events::{EventEnvelope, EventMetadata, StreamId, StreamType};
use surge_runtime::auth::new_api_key;
use surge_runtime::{AuthConfig, Role};
use surge_store::append::{self, NewEvent, StreamAppend};
use surge_stream::proto::streams::streams_client::StreamsClient;
use surge_stream::{StreamApi, StreamApiConfig};
use surge_testkit::TestEnv;
use tokio::sync::oneshot;

pub struct Served {
    pub env: TestEnv,
    pub addr: SocketAddr,
    /// (name, key) of an analyst, an admin and a service client.
    pub analyst: (String, String),
    pub admin: (String, String),
    pub service: (String, String),
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub async fn serve() -> Served {
    serve_with(|_| {}).await
}

/// A server whose configuration `configure` has changed first.
pub async fn serve_with(configure: impl FnOnce(&mut StreamApiConfig)) -> Served {
    let env = TestEnv::new().await;
    let (analyst_key, analyst) = new_api_key("ana", Role::Analyst);
    let (admin_key, admin) = new_api_key("ops", Role::Admin);
    let (service_key, service) = new_api_key("shop", Role::Service);
    let auth = AuthConfig {
        api_keys: vec![analyst, admin, service],
        ..AuthConfig::default()
    };
    let mut config = StreamApiConfig::new("127.0.0.1:0".parse().unwrap(), env.db.clone(), auth);
    configure(&mut config);
    let api = StreamApi::build(config).await.expect("the stream API starts");
    let addr = api.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(api.run(async {
        let _ = stopped.await;
    }));
    Served {
        env,
        addr,
        analyst: ("ana".into(), analyst_key),
        admin: ("ops".into(), admin_key),
        service: ("shop".into(), service_key),
        stop: Some(stop),
    }
}

impl Served {
    pub fn pool(&self) -> &PgPool {
        &self.env.pool
    }

    /// The connection string `surge token --connection-string` prints, for `user`.
    pub fn connection_string(&self, (name, key): &(String, String)) -> String {
        format!("esdb://{name}:{key}@{}?tls=false", self.addr)
    }

    pub fn client_as(&self, who: &(String, String)) -> Client {
        let settings: ClientSettings = self.connection_string(who).parse().expect("connection string parses");
        Client::new(settings).expect("client builds")
    }

    pub fn analyst_client(&self) -> Client {
        self.client_as(&self.analyst)
    }

    /// A client of the generated protocol (for what the `eventstore` crate cannot send).
    pub async fn raw(&self) -> StreamsClient<tonic::transport::Channel> {
        StreamsClient::connect(format!("http://{}", self.addr))
            .await
            .expect("raw client connects")
    }

    /// `authorization` metadata for `who`.
    pub fn basic(&self, (name, key): &(String, String)) -> tonic::metadata::MetadataValue<tonic::metadata::Ascii> {
        use base64::Engine;
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{name}:{key}"));
        format!("Basic {encoded}").parse().unwrap()
    }
}

pub fn order_stream(n: usize) -> StreamId {
    StreamId(format!("order-{n}-{}", uuid::Uuid::now_v7().simple()))
}

/// An event of `event_type` with a payload naming it and `n`.
pub fn new_event(event_type: &'static str, n: usize) -> NewEvent {
    NewEvent {
        event_type,
        schema_version: if event_type == "OrderPlaced" { 2 } else { 1 },
        payload: json!({ "n": n, "what": event_type }),
        metadata: EventMetadata::new("service:test"),
    }
}

pub fn stream_append(stream: &StreamId, stream_type: StreamType, after: i64, events: Vec<NewEvent>) -> StreamAppend {
    StreamAppend {
        stream_id: stream.clone(),
        stream_type,
        expected_version: after,
        events,
    }
}

/// Appends and commits, as the command side does.
pub async fn write(pool: &PgPool, appends: &[StreamAppend]) -> Vec<i64> {
    let mut tx = pool.begin().await.unwrap();
    let committed = append::append(&mut tx, appends).await.unwrap();
    append::commit(pool, tx, &committed).await.unwrap();
    committed.positions
}

/// Every stored event, in position order.
pub async fn stored(pool: &PgPool) -> Vec<EventEnvelope> {
    let mut conn = pool.acquire().await.unwrap();
    let up_to = surge_store::safe_position(&mut conn, std::time::Duration::from_secs(30))
        .await
        .unwrap();
    surge_store::read_all(
        &mut conn,
        &surge_store::ReadAll {
            after: 0,
            up_to,
            stream_type: None,
            limit: i64::MAX,
        },
    )
    .await
    .unwrap()
}

pub fn data(e: &eventstore::RecordedEvent) -> Value {
    serde_json::from_slice(&e.data).unwrap()
}
