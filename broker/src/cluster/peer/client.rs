//! Opening a client of another node's `Peer` service: over mutual TLS when
//! it is configured ([`crate::cluster::peer::tls`]), with the shared token in every
//! request when one is set.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use starling_proto::v1::ForwardAck;
use starling_proto::v1::peer_client::PeerClient;
use tokio_stream::Stream;
use tonic::client::Grpc;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder, Streaming};
use tonic::codegen::http::Uri;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::codegen::{Context, GrpcMethod, Poll, Service};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};
use tonic_prost::ProstDecoder;

use crate::cluster::peer::PeerCallError;
use crate::cluster::peer::tls::PeerTls;

/// How this node proves itself to its peers.
#[derive(Clone, Default)]
pub struct PeerCredentials {
    /// Sent as `authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Client certificate, and the CA a peer's certificate must chain to.
    pub tls: Option<Arc<PeerTls>>,
}

/// Adds `authorization: Bearer <token>` to each request.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub type Peer = PeerClient<InterceptedService<Channel, Bearer>>;

fn endpoint(address: &str) -> Result<Endpoint, PeerCallError> {
    Ok(Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| PeerCallError::unreachable(address, &e))?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5)))
}

/// Opens TCP to one peer address and makes the TLS handshake on it.
#[derive(Clone)]
struct TlsPeerConnector {
    address: Arc<str>,
    tls: Arc<PeerTls>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Service<Uri> for TlsPeerConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
    type Error = BoxError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, BoxError>> + Send>,
    >;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        // The channel is made for this one address, so the URI adds nothing.
        let address = self.address.clone();
        let tls = self.tls.clone();
        Box::pin(async move {
            let name = tls.server_name_for(&address)?;
            let tcp = tokio::net::TcpStream::connect(&*address).await?;
            tcp.set_nodelay(true)?;
            let stream = tls.connector().connect(name, tcp).await?;
            Ok(TokioIo::new(stream))
        })
    }
}

fn bearer(token: Option<&str>) -> Bearer {
    Bearer(token.and_then(|t| MetadataValue::try_from(format!("Bearer {t}")).ok()))
}

fn client(channel: Channel, token: Option<&str>) -> Peer {
    PeerClient::with_interceptor(channel, bearer(token))
        .max_decoding_message_size(crate::cluster::peer::MAX_PEER_MESSAGE)
        .max_encoding_message_size(crate::cluster::peer::MAX_PEER_MESSAGE)
}

/// Connects to the peer service at `address` (`host:port`) now, for the
/// `Forward` stream, which wants a connection of its own.
pub async fn connect_forward(
    address: &str,
    credentials: &PeerCredentials,
) -> Result<ForwardClient, PeerCallError> {
    let endpoint = endpoint(address)?;
    let channel = match &credentials.tls {
        Some(tls) => {
            let connector = TlsPeerConnector {
                address: Arc::from(address),
                tls: tls.clone(),
            };
            endpoint.connect_with_connector(connector).await
        }
        None => endpoint.connect().await,
    }
    .map_err(|e| PeerCallError::unreachable(address, &e))?;
    let service = InterceptedService::new(channel, bearer(credentials.token.as_deref()));
    Ok(ForwardClient(
        Grpc::new(service)
            .max_decoding_message_size(crate::cluster::peer::MAX_PEER_MESSAGE)
            .max_encoding_message_size(crate::cluster::peer::MAX_PEER_MESSAGE),
    ))
}

/// The calling end of `Peer.Forward`. Its batches come encoded already
/// (by the link's queue, `link_queue`), so instead of the
/// generated client, whose codec encodes a `ForwardBatch` struct, it uses
/// one that writes the bytes as they are. The receiver decodes them as the
/// `ForwardBatch` they are.
pub struct ForwardClient(Grpc<InterceptedService<Channel, Bearer>>);

impl ForwardClient {
    /// Opens the stream: `batches` go out, acks come back.
    pub async fn forward(
        &mut self,
        batches: impl Stream<Item = Bytes> + Send + 'static,
    ) -> Result<Streaming<ForwardAck>, Status> {
        self.0
            .ready()
            .await
            .map_err(|e| Status::unknown(format!("peer service not ready: {e}")))?;
        let mut request = Request::new(batches);
        request
            .extensions_mut()
            .insert(GrpcMethod::new("starling.cluster.v1.Peer", "Forward"));
        let path = PathAndQuery::from_static("/starling.cluster.v1.Peer/Forward");
        Ok(self
            .0
            .streaming(request, path, EncodedBatchCodec)
            .await?
            .into_inner())
    }
}

/// Sends encoded `ForwardBatch`es as they are; decodes `ForwardAck`s.
struct EncodedBatchCodec;

impl Codec for EncodedBatchCodec {
    type Encode = Bytes;
    type Decode = ForwardAck;
    type Encoder = EncodedBatches;
    type Decoder = ProstDecoder<ForwardAck>;

    fn encoder(&mut self) -> EncodedBatches {
        EncodedBatches
    }

    fn decoder(&mut self) -> ProstDecoder<ForwardAck> {
        ProstDecoder::new(BufferSettings::default())
    }
}

struct EncodedBatches;

impl Encoder for EncodedBatches {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, batch: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(batch);
        Ok(())
    }
}

/// Clients for the unary calls (takeover, adoption, route sync): one
/// channel per peer address, made on first use and kept, since a tonic
/// channel reconnects by itself and multiplexes concurrent calls.
pub struct PeerChannels {
    credentials: PeerCredentials,
    clients: Mutex<HashMap<String, Peer>>,
}

impl PeerChannels {
    pub fn new(credentials: PeerCredentials) -> PeerChannels {
        PeerChannels {
            credentials,
            clients: Mutex::default(),
        }
    }

    /// A client of the peer at `address`; connects on its first call.
    pub fn get(&self, address: &str) -> Result<Peer, PeerCallError> {
        let mut clients = self.clients.lock();
        if let Some(peer) = clients.get(address) {
            return Ok(peer.clone());
        }
        let endpoint = endpoint(address)?;
        let channel = match &self.credentials.tls {
            Some(tls) => endpoint.connect_with_connector_lazy(TlsPeerConnector {
                address: Arc::from(address),
                tls: tls.clone(),
            }),
            None => endpoint.connect_lazy(),
        };
        let peer = client(channel, self.credentials.token.as_deref());
        clients.insert(address.to_string(), peer.clone());
        Ok(peer)
    }

    /// Drops the channels of addresses no member has any more.
    pub fn retain(&self, live: impl Fn(&str) -> bool) {
        self.clients.lock().retain(|address, _| live(address));
    }
}
