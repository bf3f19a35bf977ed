//! The `starling.cluster.v1.Peer` service this node offers other nodes:
//! membership, takeover and adoption of sessions, kicks, drains, route
//! barriers and the home directory's calls here; its `Forward` stream, the
//! batches of messages other nodes send, in `forward`.

mod forward;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use starling_codec::ReasonCode;
use starling_proto::v1::peer_server::{Peer, PeerServer};
use starling_proto::v1::{
    AdoptRequest, AdoptResponse, AwaitRoutesRequest, AwaitRoutesResponse, ClaimClientsRequest,
    ClaimClientsResponse, ClaimedClient, DirectoryStamp, DirectorySyncedRequest,
    DirectorySyncedResponse, DrainRequest, DrainResponse, ForwardAck, ForwardBatchEntries,
    KickRequest, KickResponse, LocateClientRequest, LocateClientResponse, RegisterClientsRequest,
    RegisterClientsResponse, ReleaseClientsRequest, ReleaseClientsResponse, SessionSnapshot,
    StatusRequest, StatusResponse, TakeoverRequest, TakeoverResponse,
};
use tokio_stream::Stream;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info};

use crate::broker::Broker;
use crate::cluster::directory::home::{ClaimAnswer, HomeDirectory};
use crate::cluster::directory::owner::{stamp_from_wire, stamp_to_wire};
use crate::cluster::peer::MAX_PEER_MESSAGE;
use crate::cluster::{Cluster, OnDrainRequest};
use crate::session::directory::MovedSession;
use crate::session::registry::{Kick, SessionRegistry};
use forward::PeerRoutes;

/// The DISCONNECT reason a `Kick` call asked for: 0 means Administrative
/// action; otherwise one a server may send (MQTT 5.0 §3.14.2.1).
fn kick_reason(requested: u32) -> Result<ReasonCode, Status> {
    const SERVER_DISCONNECT_CODES: [u8; 25] = [
        0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98,
        0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
    ];
    match u8::try_from(requested) {
        Ok(0) => Ok(ReasonCode::ADMINISTRATIVE_ACTION),
        Ok(code) if SERVER_DISCONNECT_CODES.contains(&code) => Ok(ReasonCode(code)),
        _ => Err(Status::invalid_argument(format!(
            "reason code {requested:#x} is not one a server may send in DISCONNECT"
        ))),
    }
}

pub struct PeerService {
    broker: Arc<Broker>,
    cluster: Arc<Cluster>,
    on_drain_request: OnDrainRequest,
}

/// Longest an `AwaitRoutes` call waits, whatever the caller asks.
const MAX_ROUTE_WAIT: Duration = Duration::from_secs(30);

/// The service wrapped in the shared-token check, which every method
/// passes first, `Forward` included.
pub fn server(
    broker: Arc<Broker>,
    cluster: Arc<Cluster>,
    on_drain_request: OnDrainRequest,
    token: Option<String>,
) -> InterceptedService<PeerRoutes, impl tonic::service::Interceptor + Clone> {
    let expected = token.map(|t| format!("Bearer {t}"));
    let generated = PeerServer::new(PeerService {
        broker: broker.clone(),
        cluster,
        on_drain_request,
    })
    .max_decoding_message_size(MAX_PEER_MESSAGE)
    .max_encoding_message_size(MAX_PEER_MESSAGE);
    let service = PeerRoutes::new(broker, generated);
    InterceptedService::new(service, move |request: Request<()>| {
        if let Some(expected) = &expected {
            let presented = request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            if presented != Some(expected.as_str()) {
                return Err(Status::unauthenticated("peer token missing or wrong"));
            }
        }
        Ok(request)
    })
}

type AckStream = Pin<Box<dyn Stream<Item = Result<ForwardAck, Status>> + Send>>;

impl PeerService {
    fn home(&self) -> Result<&HomeDirectory, Status> {
        self.cluster.home.as_deref().ok_or_else(|| {
            Status::failed_precondition(
                "this node keeps the client directory in etcd (client_directory = \"etcd\")",
            )
        })
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    type ForwardStream = AckStream;

    /// Never called: `PeerRoutes` serves `Forward` itself, with a codec
    /// that leaves each batch undecoded (see `service::forward`).
    async fn forward(
        &self,
        _: Request<Streaming<ForwardBatchEntries>>,
    ) -> Result<Response<AckStream>, Status> {
        Err(Status::internal("Forward is served by PeerRoutes"))
    }

    async fn takeover_session(
        &self,
        request: Request<TakeoverRequest>,
    ) -> Result<Response<TakeoverResponse>, Status> {
        let request = request.into_inner();
        debug!(client_id = %request.client_id, to = %request.node, "peer takes a session over");
        let to: Arc<str> = Arc::from(request.node.as_str());
        let moved = crate::lifecycle::surrender(&self.broker, &request.client_id, to).await;
        let session = match moved {
            None => None,
            Some(moved) => {
                let state = moved
                    .encode()
                    .map_err(|e| Status::internal(format!("cannot encode the session: {e}")))?;
                Some(SessionSnapshot {
                    client_id: request.client_id,
                    state,
                })
            }
        };
        Ok(Response::new(TakeoverResponse { session }))
    }

    async fn adopt_session(
        &self,
        request: Request<AdoptRequest>,
    ) -> Result<Response<AdoptResponse>, Status> {
        let snapshot = request
            .into_inner()
            .session
            .ok_or_else(|| Status::invalid_argument("no session"))?;
        let moved = MovedSession::decode(&snapshot.state)
            .map_err(|e| Status::invalid_argument(format!("undecodable session: {e}")))?;
        let adopted = crate::lifecycle::adopt(&self.broker, moved).await;
        debug!(client_id = %snapshot.client_id, adopted, "session offered by a draining node");
        Ok(Response::new(AdoptResponse { adopted }))
    }

    async fn kick(&self, request: Request<KickRequest>) -> Result<Response<KickResponse>, Status> {
        let request = request.into_inner();
        let code = kick_reason(request.reason_code)?;
        let found = self
            .broker
            .sessions
            .lookup(&request.client_id)
            .is_some_and(|slot| SessionRegistry::kick(&slot, Kick::Administrative(code)));
        info!(client_id = %request.client_id, code = code.0, found, "client kicked by a peer call");
        Ok(Response::new(KickResponse { found }))
    }

    async fn drain(
        &self,
        _request: Request<DrainRequest>,
    ) -> Result<Response<DrainResponse>, Status> {
        info!("drain requested by a peer call");
        (self.on_drain_request)();
        Ok(Response::new(DrainResponse {
            state: self.broker.state().as_str().to_string(),
        }))
    }

    async fn await_routes(
        &self,
        request: Request<AwaitRoutesRequest>,
    ) -> Result<Response<AwaitRoutesResponse>, Status> {
        let request = request.into_inner();
        let patience = Duration::from_millis(u64::from(request.timeout_ms)).min(MAX_ROUTE_WAIT);
        let progress = match request.mirror() {
            starling_proto::v1::Mirror::Routes => &self.cluster.routes_progress,
            starling_proto::v1::Mirror::Retained => &self.cluster.retained_progress,
        };
        let applied = progress.reach(request.revision, patience).await;
        debug!(
            revision = request.revision,
            applied,
            mirror = request.mirror,
            "AwaitRoutes answered"
        );
        Ok(Response::new(AwaitRoutesResponse {
            applied,
            mirror: request.mirror,
        }))
    }

    async fn claim_clients(
        &self,
        request: Request<ClaimClientsRequest>,
    ) -> Result<Response<ClaimClientsResponse>, Status> {
        let request = request.into_inner();
        let answer = self
            .home()?
            .claim(
                &request.node,
                request.lease,
                (request.view, request.label),
                &request.client_ids,
            )
            .await;
        Ok(Response::new(match answer {
            ClaimAnswer::Retry => ClaimClientsResponse {
                retry: true,
                claims: Vec::new(),
            },
            ClaimAnswer::Claimed(claimed) => ClaimClientsResponse {
                retry: false,
                claims: claimed
                    .into_iter()
                    .map(|c| ClaimedClient {
                        previous_owner: c.previous_owner.map(|o| o.to_string()).unwrap_or_default(),
                        stamp: Some(stamp_to_wire(c.stamp)),
                    })
                    .collect(),
            },
        }))
    }

    async fn register_clients(
        &self,
        request: Request<RegisterClientsRequest>,
    ) -> Result<Response<RegisterClientsResponse>, Status> {
        let request = request.into_inner();
        let registrations: Vec<_> = request
            .clients
            .into_iter()
            .map(|c| (c.client_id, c.stamp.as_ref().map(stamp_from_wire)))
            .collect();
        let stamps = self
            .home()?
            .register(&request.node, request.lease, &registrations)
            .await
            .into_iter()
            .map(|stamp| {
                stamp
                    .map(stamp_to_wire)
                    .unwrap_or(DirectoryStamp::default())
            })
            .collect();
        Ok(Response::new(RegisterClientsResponse { stamps }))
    }

    async fn release_clients(
        &self,
        request: Request<ReleaseClientsRequest>,
    ) -> Result<Response<ReleaseClientsResponse>, Status> {
        let request = request.into_inner();
        let releases: Vec<_> = request
            .clients
            .into_iter()
            .filter_map(|c| Some((c.client_id, stamp_from_wire(c.stamp.as_ref()?))))
            .collect();
        self.home()?.release(&request.node, &releases);
        Ok(Response::new(ReleaseClientsResponse {}))
    }

    async fn directory_synced(
        &self,
        request: Request<DirectorySyncedRequest>,
    ) -> Result<Response<DirectorySyncedResponse>, Status> {
        let request = request.into_inner();
        self.home()?.synced(&request.node, request.view);
        Ok(Response::new(DirectorySyncedResponse {}))
    }

    async fn locate_client(
        &self,
        request: Request<LocateClientRequest>,
    ) -> Result<Response<LocateClientResponse>, Status> {
        let client_id = request.into_inner().client_id;
        let node = self.home()?.owner_of(&client_id);
        Ok(Response::new(LocateClientResponse {
            node: node.map(|n| n.to_string()).unwrap_or_default(),
        }))
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let snapshot = self.broker.metrics.snapshot();
        Ok(Response::new(StatusResponse {
            node: self.broker.config.cluster.node_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            state: self.broker.state().as_str().to_string(),
            connections: snapshot.connections,
            sessions: snapshot.sessions,
            subscriptions: self.broker.router.filter_count() as u64,
        }))
    }
}
