//! Membership: this node's record under `nodes/<id>` (on its lease), and
//! the other nodes, mirrored from etcd into the peer links.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use etcd_client::{Client, PutOptions};
use prost::Message as _;
use starling_proto::v1::NodeRecord;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::cluster::backoff::Backoff;
use crate::cluster::directory::view::{Member, SharedView, View};
use crate::cluster::etcd::keys::Keys;
use crate::cluster::etcd::lease::LeaseWatch;
use crate::cluster::etcd::mirror::MirrorSink;
use crate::cluster::peer::links::{PeerForwarder, PeerInfo};
use crate::cluster::routes::index::RouteIndex;
use crate::node::{NodeId, NodeState};

/// Writes this node's record whenever the lease or the record changes.
pub async fn publish_self(
    mut client: Client,
    keys: Keys,
    mut lease: LeaseWatch,
    mut record: watch::Receiver<NodeRecord>,
) {
    let mut backoff = Backoff::default();
    loop {
        let lease_id = *lease.borrow_and_update();
        let mut current = record.borrow_and_update().clone();
        if let Some(lease_id) = lease_id {
            current.lease = lease_id;
            let key = keys.node(&current.node);
            let put = client
                .put(
                    key,
                    current.encode_to_vec(),
                    Some(PutOptions::new().with_lease(lease_id)),
                )
                .await;
            if let Err(error) = put {
                warn!(%error, "cannot write this node's record to etcd; retrying");
                backoff.wait().await;
                continue;
            }
            backoff.reset();
            info!(node = %current.node, state = %current.state, "node record written");
        }
        tokio::select! {
            _ = lease.changed() => {}
            _ = record.changed() => {}
        }
    }
}

/// Mirrors `nodes/` into the set of peer links and the client directory's
/// membership view.
pub struct PeersSink {
    own_node: NodeId,
    keys: Keys,
    forwarder: Arc<PeerForwarder>,
    /// Every member, this node included once its record is written.
    members: BTreeMap<NodeId, (PeerInfo, Member)>,
    views: watch::Sender<SharedView>,
    /// The members changed since the last view was published.
    changed: bool,
    /// Told when a serving node's record vanishes (it lapsed) and when it
    /// comes back (`cluster::lapses`).
    index: Arc<RouteIndex>,
}

impl PeersSink {
    pub fn new(
        own_node: &str,
        keys: Keys,
        forwarder: Arc<PeerForwarder>,
        views: watch::Sender<SharedView>,
        index: Arc<RouteIndex>,
    ) -> PeersSink {
        PeersSink {
            own_node: NodeId::from(own_node),
            keys,
            forwarder,
            members: BTreeMap::new(),
            views,
            changed: false,
            index,
        }
    }

    /// A member's record is gone at `revision`: if it was serving, its
    /// lease ran out (a leaving node drains first), and it lapsed.
    fn gone(&self, node: &NodeId, revision: i64) {
        let serving = self.members.get(node).is_some_and(|(info, _)| info.serving);
        if serving && **node != *self.own_node {
            warn!(%node, revision, "node's lease ran out while it was serving: its routes are kept, and publishes for them fail until it is back");
            self.index.lapse(node, revision);
        }
    }

    fn record(&self, key: &str, value: &[u8]) -> Option<(NodeId, (PeerInfo, Member))> {
        let node: NodeId = Arc::from(self.keys.parse_node(key)?);
        let record = NodeRecord::decode(value).ok()?;
        let serving = NodeState::parse(&record.state) == Some(NodeState::Serving);
        let member = Member {
            node: node.clone(),
            lease: record.lease,
            serving,
        };
        let info = PeerInfo {
            serving,
            endpoint: record.peer_endpoint,
        };
        Some((node, (info, member)))
    }

    fn publish_peers(&mut self) {
        let peers: HashMap<NodeId, PeerInfo> = self
            .members
            .iter()
            .filter(|(node, _)| ***node != *self.own_node)
            .map(|(node, (info, _))| (node.clone(), info.clone()))
            .collect();
        self.forwarder.set_peers(&peers);
        self.changed = true;
    }
}

impl MirrorSink for PeersSink {
    fn reset(&mut self, entries: Vec<(String, Vec<u8>)>, revision: i64) {
        let members: BTreeMap<NodeId, (PeerInfo, Member)> = entries
            .iter()
            .filter_map(|(k, v)| self.record(k, v))
            .collect();
        for node in self.members.keys() {
            if !members.contains_key(node) {
                self.gone(node, revision);
            }
        }
        for node in members.keys() {
            self.index.returned(node);
        }
        self.members = members;
        self.publish_peers();
    }

    fn put(&mut self, key: &str, value: &[u8], _revision: i64) {
        if let Some((node, entry)) = self.record(key, value) {
            self.index.returned(&node);
            self.members.insert(node, entry);
            self.publish_peers();
        }
    }

    fn delete(&mut self, key: &str, revision: i64) {
        if let Some(node) = self.keys.parse_node(key) {
            info!(%node, "node left the cluster");
            let node: NodeId = Arc::from(node);
            self.gone(&node, revision);
            self.members.remove(&node);
            self.publish_peers();
        }
    }

    fn caught_up(&mut self, revision: i64) {
        if !std::mem::take(&mut self.changed) {
            return;
        }
        let view = View::new(
            revision,
            self.members.values().map(|(_, m)| m.clone()).collect(),
        );
        // A record rewritten with nothing that matters (same lease and
        // state) is not a new view.
        self.views.send_if_modified(|current| {
            let new = current.hash != view.hash;
            if new {
                *current = Arc::new(view);
            }
            new
        });
    }
}
