//! Opening a client of another node's `Peer` service, with the shared
//! token in every request.

use std::time::Duration;

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

/// Connects to the peer service at `endpoint` (`host:port`).
pub async fn connect(endpoint: &str, token: Option<&str>) -> Result<Peer, String> {
    let channel = Endpoint::from_shared(format!("http://{endpoint}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let bearer = token.and_then(|t| MetadataValue::try_from(format!("Bearer {t}")).ok());
    Ok(PeerClient::with_interceptor(channel, Bearer(bearer))
        .max_decoding_message_size(super::peer_service::MAX_PEER_MESSAGE)
        .max_encoding_message_size(super::peer_service::MAX_PEER_MESSAGE))
}
