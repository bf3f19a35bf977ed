//! The cluster's session directory: `clients/<client-id>` names the node
//! that owns a client's session (on that node's lease), and a node that
//! gets a CONNECT for a client owned elsewhere asks the owner over gRPC
//! (`TakeoverSession`) to hand the session over.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use prost::Message as _;
use starling_proto::v1::{AdoptRequest, ClientRecord, SessionSnapshot, TakeoverRequest};
use tracing::{debug, info, warn};

use super::forward::PeerForwarder;
use super::keys::Keys;
use super::lease::LeaseWatch;
use super::leased_keys::LeasedKeys;
use crate::session::directory::{Claim, MovedSession, SessionDirectory};

/// How many times a connect retries registering against concurrent
/// connects of the same client id on other nodes.
const CLAIM_ROUNDS: usize = 3;

/// How long a connect waits for etcd and for the owner node.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(6);

pub struct ClusterSessions {
    node: String,
    keys: Keys,
    client: Client,
    forwarder: Arc<PeerForwarder>,
    lease: LeaseWatch,
    pub registrations: Arc<LeasedKeys>,
}

impl ClusterSessions {
    pub fn new(
        node: &str,
        keys: Keys,
        client: Client,
        forwarder: Arc<PeerForwarder>,
        lease: LeaseWatch,
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
            lease,
            registrations: LeasedKeys::new(record.encode_to_vec(), true),
        })
    }

    /// The registered owner of `key` (if another node) and the key's
    /// modification revision (0 when absent); `None` when etcd cannot say.
    async fn lookup(&self, client_id: &str, key: &str) -> Option<(Option<String>, i64)> {
        let mut client = self.client.clone();
        let response = match tokio::time::timeout(LOOKUP_TIMEOUT, client.get(key, None)).await {
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
        let Some(kv) = response.kvs().first() else {
            return Some((None, 0));
        };
        let owner = ClientRecord::decode(kv.value())
            .ok()
            .map(|record| record.node)
            .filter(|node| *node != self.node);
        Some((owner, kv.mod_revision()))
    }

    /// Registers this node as the owner of `key` if nobody changed it since
    /// `revision`: `Some(Ok(written_at))`, or `Some(Err(()))` when somebody
    /// did. `None` when etcd cannot say (or there is no lease).
    async fn register_if_unchanged(&self, key: &str, revision: i64) -> Option<Result<i64, ()>> {
        let lease = (*self.lease.borrow())?;
        let txn = Txn::new()
            .when(vec![Compare::mod_revision(key, CompareOp::Equal, revision)])
            .and_then(vec![TxnOp::put(
                key,
                self.registrations.value().to_vec(),
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let mut client = self.client.clone();
        match tokio::time::timeout(LOOKUP_TIMEOUT, client.txn(txn)).await {
            Ok(Ok(response)) if response.succeeded() => {
                Some(Ok(response.header().map_or(0, |h| h.revision())))
            }
            Ok(Ok(_)) => Some(Err(())),
            _ => None,
        }
    }

    async fn take_from(
        &self,
        owner: &str,
        client_id: &str,
    ) -> Result<Option<MovedSession>, String> {
        let mut peer = self.forwarder.client_of(owner)?;
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
        let mut peer = self.forwarder.client_of(node)?;
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
    /// Looks the owner up, takes the session from it, and registers this
    /// node with a compare-and-swap on the key's revision. If another node
    /// registered meanwhile (the same client connecting there at the same
    /// moment), it is the newer owner: take over from it and try again. The
    /// last connect wins, and exactly one connection stays.
    fn claim<'a>(&'a self, client_id: &'a str) -> Claim<'a> {
        Box::pin(async move {
            let key = self.keys.client(client_id);
            let mut moved: Option<MovedSession> = None;
            for _ in 0..CLAIM_ROUNDS {
                let (owner, revision) = self.lookup(client_id, &key).await?;
                if let Some(owner) = owner {
                    match self.take_from(&owner, client_id).await {
                        Ok(Some(session)) => {
                            info!(client_id, from = %owner, "session taken over from another node");
                            // A second round takes the session a racing node
                            // made meanwhile: fold it into the first, which
                            // holds the client's history.
                            moved = Some(match moved {
                                Some(first) => first.absorb(session),
                                None => session,
                            });
                        }
                        Ok(None) => {
                            debug!(client_id, from = %owner, "previous owner had no session to hand over")
                        }
                        Err(error) => {
                            warn!(client_id, from = %owner, %error, "session takeover failed")
                        }
                    }
                }
                match self.register_if_unchanged(&key, revision).await {
                    Some(Ok(written_at)) => {
                        self.registrations.adopt(key, written_at);
                        return moved;
                    }
                    Some(Err(())) => debug!(
                        client_id,
                        "client registered elsewhere meanwhile; taking over again"
                    ),
                    // etcd is away: serve locally, register when it is back.
                    None => return moved,
                }
            }
            warn!(
                client_id,
                "client id contended across nodes; keeping this connection"
            );
            moved
        })
    }

    fn register(&self, client_id: &str) {
        // Usually already written by the claim; this covers etcd outages
        // and sessions resumed locally.
        self.registrations
            .insert_if_absent(self.keys.client(client_id));
    }

    fn unregister(&self, client_id: &str) {
        self.registrations.remove(self.keys.client(client_id));
    }
}
