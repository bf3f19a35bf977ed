//! Membership: this node's record under `nodes/<id>` (on its lease), and
//! the other nodes, mirrored from etcd into the peer links.

use std::collections::HashMap;
use std::sync::Arc;

use etcd_client::{Client, PutOptions};
use prost::Message as _;
use starling_proto::v1::NodeRecord;
use tokio::sync::watch;
use tracing::{info, warn};

use super::forward::{PeerForwarder, PeerInfo};
use super::keys::Keys;
use super::lease::LeaseWatch;
use super::mirror::{Backoff, MirrorSink};
use crate::router::store::NodeId;

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
        let current = record.borrow_and_update().clone();
        if let Some(lease_id) = lease_id {
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

/// Mirrors `nodes/` into the set of peer links.
pub struct PeersSink {
    pub own_node: String,
    pub keys: Keys,
    pub forwarder: Arc<PeerForwarder>,
    pub peers: HashMap<NodeId, PeerInfo>,
}

impl PeersSink {
    fn record(&self, key: &str, value: &[u8]) -> Option<(NodeId, PeerInfo)> {
        let node = self.keys.parse_node(key)?;
        if node == self.own_node {
            return None;
        }
        let record = NodeRecord::decode(value).ok()?;
        let info = PeerInfo {
            serving: record.state == "serving",
            endpoint: record.peer_endpoint,
        };
        Some((Arc::from(node), info))
    }
}

impl MirrorSink for PeersSink {
    fn reset(&mut self, entries: Vec<(String, Vec<u8>)>) {
        self.peers = entries
            .iter()
            .filter_map(|(k, v)| self.record(k, v))
            .collect();
        self.forwarder.set_peers(&self.peers);
    }

    fn put(&mut self, key: &str, value: &[u8]) {
        if let Some((node, info)) = self.record(key, value) {
            self.peers.insert(node, info);
            self.forwarder.set_peers(&self.peers);
        }
    }

    fn delete(&mut self, key: &str) {
        if let Some(node) = self.keys.parse_node(key) {
            info!(%node, "node left the cluster");
            self.peers.remove(node);
            self.forwarder.set_peers(&self.peers);
        }
    }
}
