//! Surge's event store over the KurrentDB (EventStoreDB) gRPC client protocol, so that the
//! clients analysts already have (Rust `eventstore`/`kurrentdb`, Python, Go, .NET, Java, Node)
//! read Surge as they would read a KurrentDB node.
//!
//! Owns the gRPC service [`StreamApi`] (`surge stream-api`, default `127.0.0.1:2113`): build
//! (bind, connect, check the configuration), [`StreamApi::local_addr`], [`StreamApi::run`]
//! until a shutdown future resolves. Its modules, one job each:
//! - [`proto`]: the wire types generated from `proto/*.proto`, the contract written from the
//!   protocol's public definitions (only the messages served);
//! - [`service`]: `Streams` (reads and subscriptions; `Append`, `Delete`, `Tombstone`,
//!   `BatchAppend` refused with `PermissionDenied`), `ServerFeatures`, `Gossip` (one leader);
//! - [`request`]: a `Read` request checked into what to read; [`filter`]: the `$all` filters;
//! - [`read`]: reads with a count; [`subscribe`]: catch-up subscriptions, history and live
//!   through one read path; [`recorded`]: a Surge event as the protocol's `RecordedEvent`;
//! - [`access`]: Basic credentials checked against Surge's API keys (analyst or admin);
//! - [`config`]: the typed configuration; [`error`]: startup errors and read failures.
//!
//! It never writes the log (commands go through the command API) and never reads `events`
//! itself: every read goes through `surge-store`'s safe reads ([`surge_store::safe_position`],
//! [`surge_store::Subscription`]). It depends on `surge-store`, `surge-events` and
//! `surge-runtime` only.

pub mod access;
pub mod config;
pub mod error;
pub mod filter;
pub mod proto;
pub mod read;
pub mod recorded;
pub mod request;
pub mod service;
pub mod subscribe;

pub use config::StreamApiConfig;
pub use error::StreamApiError;

use access::Access;
use proto::gossip::gossip_server::GossipServer;
use proto::server_features::server_features_server::ServerFeaturesServer;
use proto::streams::streams_server::StreamsServer;
use service::{FeaturesService, GossipService, StreamsService};
use std::future::Future;
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};

/// The stream API as a value: bound, connected, ready to [`run`](StreamApi::run).
pub struct StreamApi {
    listener: TcpListener,
    streams: StreamsService,
    tls: Option<ServerTlsConfig>,
    advertised: (String, u16),
}

impl StreamApi {
    /// Checks the configuration (TLS unless on loopback, API keys), connects to Postgres and
    /// binds the address (port 0 picks a free one).
    pub async fn build(config: StreamApiConfig) -> Result<StreamApi, StreamApiError> {
        let tls = match config.tls_files()? {
            None => None,
            Some((cert, key)) => {
                let read = |path: &std::path::Path| {
                    std::fs::read(path).map_err(|source| StreamApiError::File {
                        path: path.display().to_string(),
                        source,
                    })
                };
                Some(ServerTlsConfig::new().identity(Identity::from_pem(read(&cert)?, read(&key)?)))
            }
        };
        if config.auth.api_keys.iter().all(|k| k.trim().is_empty()) {
            return Err(StreamApiError::Config(
                "no API keys: clients sign in with one (set SURGE_API_KEYS; \
                 `surge token --role analyst --sub NAME --connection-string` makes one)"
                    .into(),
            ));
        }
        let auth = config.auth.build().map_err(|e| StreamApiError::Config(e.to_string()))?;
        let pool = surge_runtime::db::connect(&config.db).await?;
        surge_runtime::db::report_pool_usage(pool.clone(), "stream");
        let listener = TcpListener::bind(config.addr)
            .await
            .map_err(|source| StreamApiError::Bind {
                addr: config.addr.to_string(),
                source,
            })?;
        let bound = listener.local_addr().map_err(|source| StreamApiError::Bind {
            addr: config.addr.to_string(),
            source,
        })?;
        let advertised = config.advertised(bound)?;
        Ok(StreamApi {
            advertised,
            listener,
            streams: StreamsService {
                pool,
                access: Access::new(auth),
                poll: config.poll(),
                scan_limit: config.scan_limit.max(1),
            },
            tls,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    /// Serves until `shutdown` resolves (open subscriptions end with it).
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), StreamApiError> {
        let addr = self.local_addr();
        tracing::info!(%addr, tls = self.tls.is_some(), "stream API listening");
        let mut server = Server::builder();
        if let Some(tls) = self.tls {
            server = server.tls_config(tls)?;
        }
        let gossip = GossipService {
            endpoint: self.advertised,
            instance_id: uuid::Uuid::new_v4(),
        };
        server
            .add_service(StreamsServer::new(self.streams))
            .add_service(ServerFeaturesServer::new(FeaturesService))
            .add_service(GossipServer::new(gossip))
            .serve_with_incoming_shutdown(TcpIncoming::from(self.listener), shutdown)
            .await?;
        Ok(())
    }
}
