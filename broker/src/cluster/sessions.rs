//! The cluster's session directory: `clients/<client-id>` names the node
//! that owns a client's session (on that node's lease), and a node that
//! gets a CONNECT for a client owned elsewhere asks the owner over gRPC
//! (`TakeoverSession`) to hand the session over.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::Client;
use prost::Message as _;
use starling_proto::v1::{AdoptRequest, ClientRecord, SessionSnapshot, TakeoverRequest};
use tracing::{debug, info, warn};

use super::forward::PeerForwarder;
use super::keys::Keys;
use super::leased_keys::LeasedKeys;
use crate::session::directory::{Claim, MovedSession, SessionDirectory};

/// How long a connect waits for etcd and for the owner node.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(6);

pub struct ClusterSessions {
    node: String,
    keys: Keys,
    client: Client,
    forwarder: Arc<PeerForwarder>,
    token: Option<String>,
    pub registrations: Arc<LeasedKeys>,
}

impl ClusterSessions {
    pub fn new(
        node: &str,
        keys: Keys,
        client: Client,
        forwarder: Arc<PeerForwarder>,
        token: Option<String>,
    ) -> Arc<Self> {
        // One value for every registration of this node process: the node,
        // and its start time as the epoch (a restarted node is a new owner).
        let epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let record = ClientRecord {
            node: node.to_string(),
            epoch,
        };
        Arc::new(ClusterSessions {
            node: node.to_string(),
            keys,
            client,
            forwarder,
            token,
            registrations: LeasedKeys::new(record.encode_to_vec(), true),
        })
    }

    async fn owner_of(&self, client_id: &str) -> Option<String> {
        let key = self.keys.client(client_id);
        let response = match tokio::time::timeout(
            LOOKUP_TIMEOUT,
            self.client.clone().get(key, None),
        )
        .await
        {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => {
                warn!(%error, client_id, "cannot look the client up in etcd; serving it locally");
                return None;
            }
            Err(_) => {
                warn!(
                    client_id,
                    "etcd lookup timed out; serving the client locally"
                );
                return None;
            }
        };
        let record = ClientRecord::decode(response.kvs().first()?.value()).ok()?;
        (record.node != self.node).then_some(record.node)
    }

    async fn take_from(
        &self,
        owner: &str,
        client_id: &str,
    ) -> Result<Option<MovedSession>, String> {
        let endpoint = self
            .forwarder
            .endpoint_of(owner)
            .ok_or_else(|| format!("node {owner} is not a live member"))?;
        let mut peer = super::peer_client::connect(&endpoint, self.token.as_deref()).await?;
        let request = TakeoverRequest {
            client_id: client_id.to_string(),
            node: self.node.clone(),
        };
        let response = tokio::time::timeout(TAKEOVER_TIMEOUT, peer.takeover_session(request))
            .await
            .map_err(|_| "takeover timed out".to_string())?
            .map_err(|status| status.to_string())?;
        match response.into_inner().session {
            None => Ok(None),
            Some(snapshot) => MovedSession::decode(&snapshot.state)
                .map(Some)
                .map_err(|e| e.to_string()),
        }
    }
}

impl ClusterSessions {
    /// Gives a session to `node`, which adopts it (drain).
    pub async fn hand_to(&self, node: &str, moved: &MovedSession) -> Result<bool, String> {
        let endpoint = self
            .forwarder
            .endpoint_of(node)
            .ok_or_else(|| format!("node {node} is not a live member"))?;
        let mut peer = super::peer_client::connect(&endpoint, self.token.as_deref()).await?;
        let state = moved.encode().map_err(|e| e.to_string())?;
        let request = AdoptRequest {
            session: Some(SessionSnapshot {
                client_id: moved.state.client_id.to_string(),
                state,
            }),
        };
        let response = tokio::time::timeout(TAKEOVER_TIMEOUT, peer.adopt_session(request))
            .await
            .map_err(|_| "adoption timed out".to_string())?
            .map_err(|status| status.to_string())?;
        Ok(response.into_inner().adopted)
    }
}

impl SessionDirectory for ClusterSessions {
    fn claim<'a>(&'a self, client_id: &'a str) -> Claim<'a> {
        Box::pin(async move {
            let owner = self.owner_of(client_id).await?;
            match self.take_from(&owner, client_id).await {
                Ok(Some(moved)) => {
                    info!(client_id, from = %owner, "session taken over from another node");
                    Some(moved)
                }
                Ok(None) => {
                    debug!(client_id, from = %owner, "previous owner had no session to hand over");
                    None
                }
                Err(error) => {
                    warn!(client_id, from = %owner, %error, "session takeover failed; starting a new session");
                    None
                }
            }
        })
    }

    fn register(&self, client_id: &str) {
        self.registrations.insert(self.keys.client(client_id));
    }

    fn unregister(&self, client_id: &str) {
        self.registrations.remove(self.keys.client(client_id));
    }
}
