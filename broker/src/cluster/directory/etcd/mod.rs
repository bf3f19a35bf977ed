//! The cluster's session directory: `clients/<client-id>` names the node
//! that owns a client's session (on that node's lease), and a node that
//! gets a CONNECT for a client owned elsewhere asks the owner over gRPC
//! (`TakeoverSession`) to hand the session over. New client ids are
//! registered in batches (`fresh_claims`).

mod fresh_claims;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::{Client, Compare, CompareOp, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse};
use prost::Message as _;
use starling_proto::v1::ClientRecord;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::cluster::directory::moves;
use crate::cluster::etcd::keys::Keys;
use crate::cluster::etcd::lease::LeaseWatch;
use crate::cluster::etcd::leased_keys::LeasedKeys;
use crate::cluster::peer::links::PeerForwarder;
use crate::cluster::tasks::Tasks;
use crate::node::NodeId;
use crate::session::directory::{Claim, Located, MovedSession, SessionDirectory};
use fresh_claims::FreshClaim;

/// How many times a connect retries registering against concurrent
/// connects of the same client id on other nodes.
const CLAIM_ROUNDS: usize = 3;

/// How long a connect waits for etcd and for the owner node.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// etcd gave no answer in time.
#[derive(Debug, thiserror::Error)]
#[error("etcd did not answer within {0:?}")]
struct EtcdSilent(Duration);
/// Connects waiting to be registered in a batch.
const FRESH_QUEUE: usize = 4096;

/// What a registration attempt found.
enum Registration {
    /// This node owns the client id, registered at this revision.
    Ours(i64),
    /// Somebody else holds it (`owner`: another node, `None` for an older
    /// record of this node or an unreadable one), as of `revision`.
    Held {
        owner: Option<String>,
        revision: i64,
    },
}

pub struct ClusterSessions {
    node: NodeId,
    keys: Keys,
    client: Client,
    forwarder: Arc<PeerForwarder>,
    lease: LeaseWatch,
    pub registrations: Arc<LeasedKeys>,
    /// New client ids to register, batched (fresh_claims).
    fresh: mpsc::Sender<FreshClaim>,
}

impl ClusterSessions {
    pub fn new(
        node: &str,
        keys: Keys,
        client: Client,
        forwarder: Arc<PeerForwarder>,
        lease: LeaseWatch,
        tasks: &Tasks,
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
        let (fresh, claims) = mpsc::channel(FRESH_QUEUE);
        let sessions = Arc::new(ClusterSessions {
            node: NodeId::from(node),
            keys,
            client,
            forwarder,
            lease,
            registrations: LeasedKeys::new(record.encode_to_vec(), true),
            fresh,
        });
        tasks.spawn(fresh_claims::run(Arc::downgrade(&sessions), claims));
        sessions
    }

    fn current_lease(&self) -> Option<i64> {
        *self.lease.borrow()
    }

    fn etcd(&self) -> Client {
        self.client.clone()
    }

    /// Registers a client id expected to be new, batched with the connects
    /// of the same moment.
    async fn register_fresh(&self, client_id: &str, key: &str) -> Option<Registration> {
        let (reply, answer) = oneshot::channel();
        let claim = FreshClaim {
            client_id: client_id.to_string(),
            key: key.to_string(),
            reply,
        };
        if self.fresh.send(claim).await.is_err() {
            return None;
        }
        // Behind batches that wait for a slow etcd: give up like a lookup
        // would and serve the client locally (a late batch still registers
        // it for this node).
        match tokio::time::timeout(2 * LOOKUP_TIMEOUT, answer).await {
            Ok(answer) => answer.ok().flatten(),
            Err(_) => {
                warn!(
                    client_id,
                    "etcd registration queue too slow; serving the client locally"
                );
                None
            }
        }
    }

    /// The registered owner of `key` (if another node) and the key's
    /// modification revision (0 when absent); `None` when etcd cannot say.
    async fn lookup(&self, client_id: &str, key: &str) -> Option<(Option<String>, i64)> {
        let mut client = self.client.clone();
        match tokio::time::timeout(LOOKUP_TIMEOUT, client.get(key, None)).await {
            Ok(Ok(response)) => Some(self.holder(response.kvs().first())),
            Ok(Err(error)) => {
                warn!(%error, client_id, "cannot look the client up in etcd; serving it locally");
                None
            }
            Err(_) => {
                warn!(
                    client_id,
                    "etcd lookup timed out; serving the client locally"
                );
                None
            }
        }
    }

    /// Who a registration names (`None`: nobody, or this node) and its
    /// revision (0 when absent).
    fn holder(&self, kv: Option<&KeyValue>) -> (Option<String>, i64) {
        let Some(kv) = kv else {
            return (None, 0);
        };
        let owner = ClientRecord::decode(kv.value())
            .ok()
            .map(|record| record.node)
            .filter(|node| **node != *self.node);
        (owner, kv.mod_revision())
    }

    /// One round trip: registers this node as the owner of `key` if the key
    /// is unchanged since `revision` (0: absent, a new client id), and
    /// otherwise reads who holds it. `None` when etcd cannot say.
    async fn register_or_read(
        &self,
        client_id: &str,
        key: &str,
        revision: i64,
        lease: i64,
    ) -> Option<Registration> {
        let txn = Txn::new()
            .when(vec![Compare::mod_revision(key, CompareOp::Equal, revision)])
            .and_then(vec![TxnOp::put(
                key,
                self.registrations.value().to_vec(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else(vec![TxnOp::get(key, None)]);
        let mut client = self.client.clone();
        let response = match tokio::time::timeout(LOOKUP_TIMEOUT, client.txn(txn)).await {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => {
                warn!(%error, client_id, "cannot register the client in etcd; serving it locally");
                return None;
            }
            Err(_) => {
                warn!(
                    client_id,
                    "etcd registration timed out; serving the client locally"
                );
                return None;
            }
        };
        if response.succeeded() {
            return Some(Registration::Ours(
                response.header().map_or(0, |h| h.revision()),
            ));
        }
        let current = response.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(get) => Some(get),
            _ => None,
        });
        match current.as_ref().and_then(|get| get.kvs().first()) {
            Some(kv) => Some(self.registration_of(kv)),
            None => Some(Registration::Held {
                owner: None,
                revision: 0,
            }),
        }
    }

    /// What an existing registration means for a connect here.
    fn registration_of(&self, kv: &KeyValue) -> Registration {
        if kv.value() == self.registrations.value() {
            // This very process registered it already (a reconnect).
            return Registration::Ours(kv.mod_revision());
        }
        let (owner, revision) = self.holder(Some(kv));
        Registration::Held { owner, revision }
    }

    async fn take_into(
        &self,
        owner: &str,
        client_id: &str,
        moved: Option<MovedSession>,
    ) -> Option<MovedSession> {
        moves::take_into(&self.forwarder, &self.node, owner, client_id, moved).await
    }
}

impl SessionDirectory for ClusterSessions {
    /// Registers this node with a compare-and-swap that expects a new
    /// client id (one round trip, the common case); if somebody holds the
    /// id, takes the session from that node and swaps again against the
    /// revision it read. If another node registered meanwhile (the same
    /// client connecting there at the same moment), it is the newer owner:
    /// take over from it and try again. The last connect wins, and exactly
    /// one connection stays.
    fn claim<'a>(&'a self, client_id: &'a str) -> Claim<'a> {
        Box::pin(async move {
            let key = self.keys.client(client_id);
            let mut moved: Option<MovedSession> = None;
            let Some(lease) = *self.lease.borrow() else {
                // No lease (etcd away, or a new one being granted): take the
                // session if a node has it, register once the lease is back.
                if let (Some(owner), _) = self.lookup(client_id, &key).await? {
                    moved = self.take_into(&owner, client_id, moved).await;
                }
                return moved;
            };
            let mut expected = 0;
            // One more round than takeovers allowed: the first only learns
            // who holds the id.
            for round in 0..=CLAIM_ROUNDS {
                let found = if round == 0 {
                    self.register_fresh(client_id, &key).await
                } else {
                    self.register_or_read(client_id, &key, expected, lease)
                        .await
                };
                match found? {
                    Registration::Ours(written_at) => {
                        self.registrations.adopt(key, written_at);
                        return moved;
                    }
                    Registration::Held { owner, revision } => {
                        if expected != 0 {
                            debug!(
                                client_id,
                                "client registered elsewhere meanwhile; taking over again"
                            );
                        }
                        if let Some(owner) = owner {
                            moved = self.take_into(&owner, client_id, moved).await;
                        }
                        expected = revision;
                    }
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

    fn locate<'a>(&'a self, client_id: &'a str) -> Located<'a> {
        Box::pin(async move {
            let mut client = self.client.clone();
            let response = tokio::time::timeout(
                LOOKUP_TIMEOUT,
                client.get(self.keys.client(client_id), None),
            )
            .await
            .map_err(|_| EtcdSilent(LOOKUP_TIMEOUT))??;
            Ok(response
                .kvs()
                .first()
                .and_then(|kv| ClientRecord::decode(kv.value()).ok())
                .map(|record| record.node))
        })
    }
}
