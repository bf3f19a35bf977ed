//! Opening a client of another node's `Peer` service, with the shared
//! token in every request.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use starling_proto::v1::peer_client::PeerClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

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

fn endpoint(address: &str) -> Result<Endpoint, String> {
    Ok(Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5)))
}

fn client(channel: Channel, token: Option<&str>) -> Peer {
    let bearer = token.and_then(|t| MetadataValue::try_from(format!("Bearer {t}")).ok());
    PeerClient::with_interceptor(channel, Bearer(bearer))
        .max_decoding_message_size(super::peer_service::MAX_PEER_MESSAGE)
        .max_encoding_message_size(super::peer_service::MAX_PEER_MESSAGE)
}

/// Connects to the peer service at `address` (`host:port`) now: for a
/// long-lived stream that wants its own connection.
pub async fn connect(address: &str, token: Option<&str>) -> Result<Peer, String> {
    let channel = endpoint(address)?
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(client(channel, token))
}

/// Clients for the unary calls (takeover, adoption, route sync): one
/// channel per peer address, made on first use and kept, since a tonic
/// channel reconnects by itself and multiplexes concurrent calls.
pub struct PeerChannels {
    token: Option<String>,
    clients: Mutex<HashMap<String, Peer>>,
}

impl PeerChannels {
    pub fn new(token: Option<String>) -> PeerChannels {
        PeerChannels {
            token,
            clients: Mutex::default(),
        }
    }

    /// A client of the peer at `address`; connects on its first call.
    pub fn get(&self, address: &str) -> Result<Peer, String> {
        let mut clients = self.clients.lock();
        if let Some(peer) = clients.get(address) {
            return Ok(peer.clone());
        }
        let peer = client(endpoint(address)?.connect_lazy(), self.token.as_deref());
        clients.insert(address.to_string(), peer.clone());
        Ok(peer)
    }

    /// Drops the channels of addresses no member has any more.
    pub fn retain(&self, live: impl Fn(&str) -> bool) {
        self.clients.lock().retain(|address, _| live(address));
    }
}
