//! The gRPC services: `Streams` (reads and subscriptions served, writes refused),
//! `ServerFeatures` and `Gossip` (what clients ask when they connect), one leader node.

use crate::access::Access;
use crate::error::{Out, Stop};
use crate::proto::gossip::{self, gossip_server::Gossip, ClusterInfo, MemberInfo};
use crate::proto::server_features::{server_features_server::ServerFeatures, SupportedMethod, SupportedMethods};
use crate::proto::shared::Empty;
use crate::proto::streams::streams_server::Streams;
use crate::proto::streams::{
    AppendReq, AppendResp, BatchAppendReq, BatchAppendResp, DeleteReq, DeleteResp, ReadReq, ReadResp, TombstoneReq,
    TombstoneResp,
};
use crate::request::{Direction, ReadRequest, Source};
use crate::{read, recorded, subscribe};
use futures::Stream;
use sqlx::PgPool;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// The protocol version Surge's stream API answers as (clients choose features by it).
pub const SERVER_VERSION: &str = "24.10.0";
/// Responses a read may have queued for a client that has not taken them yet.
const READ_QUEUE: usize = 1024;

const REFUSED_WRITE: &str =
    "Surge's event log is written only through its command API; this API reads (analyst or admin)";

#[derive(Clone)]
pub struct StreamsService {
    pub pool: PgPool,
    pub access: Access,
    pub poll: Duration,
    /// Most events one filtered `$all` read looks at ([`crate::config::StreamApiConfig::scan_limit`]).
    pub scan_limit: u64,
}

impl StreamsService {
    /// Runs one read to its end (or forever, for a subscription), telling the client why it
    /// stopped if it failed.
    async fn serve_read(self, request: ReadRequest, out: Out) {
        let pool = &self.pool;
        let form = request.uuid_form;
        let shape = |count| read::Shape {
            direction: request.direction,
            count,
            form,
            compatibility: request.compatibility,
        };
        let outcome = match (&request.source, request.count) {
            (Source::Stream { stream, from }, Some(count)) => {
                read::stream(pool, stream, *from, shape(count), &out).await
            }
            (Source::All { from, filter }, Some(count)) => {
                read::all(pool, *from, filter.as_ref(), shape(count), self.scan_limit, &out).await
            }
            (Source::Stream { stream, from }, None) => {
                subscribe::stream(pool, stream, *from, form, self.poll, &out).await
            }
            (Source::All { from, filter }, None) => {
                let pace = subscribe::Pace {
                    poll: self.poll,
                    scan_limit: self.scan_limit,
                };
                subscribe::all(pool, *from, filter.as_ref(), form, pace, &out).await
            }
        };
        match outcome {
            Err(Stop::Failed(status)) => {
                let _ = out.send(Err(status)).await;
            }
            // A read with a count whose client left before its end (a subscription always ends so).
            Err(Stop::Gone) if request.count.is_some() => {
                let source = match request.source {
                    Source::Stream { .. } => "stream",
                    Source::All { .. } => "all",
                };
                metrics::counter!("surge_stream_reads_cancelled_total", "source" => source).increment(1);
                tracing::debug!(source, "stream API: read ended, the client has gone");
            }
            Err(Stop::Gone) | Ok(()) => {}
        }
    }

    /// Writes are refused, once the caller is known (bad credentials are still `Unauthenticated`).
    fn refuse_write<T>(&self, request: &Request<T>, what: &str) -> Status {
        match self.access.authenticate(request.metadata()) {
            Err(status) => status,
            Ok(principal) => {
                tracing::info!(subject = %principal.subject, what, "stream API: write refused");
                Status::permission_denied(REFUSED_WRITE)
            }
        }
    }
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Streams for StreamsService {
    type ReadStream = ReceiverStream<Result<ReadResp, Status>>;
    type BatchAppendStream = ResponseStream<BatchAppendResp>;

    #[tracing::instrument(skip_all)]
    async fn read(&self, request: Request<ReadReq>) -> Result<Response<Self::ReadStream>, Status> {
        let principal = self.access.reader(request.metadata())?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| Status::invalid_argument("a read needs options"))?;
        let read = ReadRequest::parse(options)?;
        tracing::debug!(subject = %principal.subject, subscription = read.count.is_none(),
            backwards = read.direction == Direction::Backwards, "stream API: read");
        let (out, responses) = mpsc::channel(READ_QUEUE);
        tokio::spawn(self.clone().serve_read(read, out));
        Ok(Response::new(ReceiverStream::new(responses)))
    }

    async fn append(&self, request: Request<Streaming<AppendReq>>) -> Result<Response<AppendResp>, Status> {
        Err(self.refuse_write(&request, "append"))
    }

    async fn delete(&self, request: Request<DeleteReq>) -> Result<Response<DeleteResp>, Status> {
        Err(self.refuse_write(&request, "delete"))
    }

    async fn tombstone(&self, request: Request<TombstoneReq>) -> Result<Response<TombstoneResp>, Status> {
        Err(self.refuse_write(&request, "tombstone"))
    }

    async fn batch_append(
        &self,
        request: Request<Streaming<BatchAppendReq>>,
    ) -> Result<Response<Self::BatchAppendStream>, Status> {
        Err(self.refuse_write(&request, "batch append"))
    }
}

/// `ServerFeatures`: what Surge serves, so that clients pick the calls it answers (no batch
/// append, no persistent subscriptions). Anonymous, as on a KurrentDB node.
pub struct FeaturesService;

#[tonic::async_trait]
impl ServerFeatures for FeaturesService {
    async fn get_supported_methods(&self, _: Request<Empty>) -> Result<Response<SupportedMethods>, Status> {
        let streams = "event_store.client.streams.streams";
        let method = |name: &str, service: &str, features: &[&str]| SupportedMethod {
            method_name: name.into(),
            service_name: service.into(),
            features: features.iter().map(|f| f.to_string()).collect(),
        };
        Ok(Response::new(SupportedMethods {
            methods: vec![
                method("read", streams, &["position", "events"]),
                method("append", streams, &[]),
                method("delete", streams, &[]),
                method("tombstone", streams, &[]),
                method(
                    "getsupportedmethods",
                    "event_store.client.server_features.serverfeatures",
                    &[],
                ),
                method("read", "event_store.client.gossip.gossip", &[]),
            ],
            event_store_server_version: SERVER_VERSION.into(),
        }))
    }
}

/// `Gossip`: a cluster of one, the leader, at the address clients reached. Anonymous, as on a
/// KurrentDB node.
pub struct GossipService {
    /// The host and port clients are to connect to.
    pub endpoint: (String, u16),
    pub instance_id: uuid::Uuid,
}

#[tonic::async_trait]
impl Gossip for GossipService {
    async fn read(&self, _: Request<Empty>) -> Result<Response<ClusterInfo>, Status> {
        let now_ticks = chrono::Utc::now().timestamp_micros().max(0) * 10;
        Ok(Response::new(ClusterInfo {
            members: vec![MemberInfo {
                instance_id: Some(recorded::uuid(self.instance_id, recorded::UuidForm::Structured)),
                time_stamp: now_ticks,
                state: gossip::member_info::VNodeState::Leader as i32,
                is_alive: true,
                http_end_point: Some(gossip::EndPoint {
                    address: self.endpoint.0.clone(),
                    port: u32::from(self.endpoint.1),
                }),
            }],
        }))
    }
}
