//! The cluster route store: this node's filters become
//! `routes/<node>/<filter>` keys under its lease, written in batched
//! transactions; other nodes' routes come from the mirrored index.
//!
//! Route changes are coalesced per filter in a pending map, so a burst of
//! subscribe/unsubscribe becomes one write per filter, and an etcd outage
//! only delays them: the writer keeps retrying and, when a new lease is
//! granted, writes every current route again under it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use etcd_client::{Client, PutOptions, Txn, TxnOp};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tracing::{debug, warn};

use super::keys::Keys;
use super::lease::LeaseWatch;
use super::mirror::Backoff;
use super::route_index::RouteIndex;
use crate::router::store::{NodeId, RouteStore};

/// etcd's default limit of operations per transaction.
const TXN_OPS: usize = 128;

#[derive(Default)]
struct Pending {
    /// Every filter this node has a local subscription of.
    local: HashSet<String>,
    /// Writes not yet in etcd: filter -> present.
    dirty: HashMap<String, bool>,
}

pub struct EtcdRouteStore {
    node: String,
    keys: Keys,
    index: Arc<RouteIndex>,
    pending: Mutex<Pending>,
    wake: Notify,
}

impl EtcdRouteStore {
    pub fn new(node: &str, keys: Keys, index: Arc<RouteIndex>) -> Arc<EtcdRouteStore> {
        Arc::new(EtcdRouteStore {
            node: node.to_string(),
            keys,
            index,
            pending: Mutex::new(Pending::default()),
            wake: Notify::new(),
        })
    }

    /// Routes not yet written to etcd.
    pub fn unwritten(&self) -> usize {
        self.pending.lock().dirty.len()
    }

    /// Writes pending route changes until the process ends.
    pub async fn run_writer(self: Arc<Self>, mut client: Client, mut lease: LeaseWatch) {
        let mut backoff = Backoff::default();
        let mut current_lease = None;
        loop {
            let lease_id = *lease.borrow_and_update();
            if lease_id != current_lease {
                current_lease = lease_id;
                if lease_id.is_some() {
                    // A new lease: every route must be written under it.
                    let mut guard = self.pending.lock();
                    let pending = &mut *guard;
                    for filter in &pending.local {
                        pending.dirty.insert(filter.clone(), true);
                    }
                }
            }
            let Some(lease_id) = current_lease else {
                let _ = lease.changed().await;
                continue;
            };
            let batch: Vec<(String, bool)> = {
                let mut pending = self.pending.lock();
                let n = pending.dirty.len().min(TXN_OPS * 8);
                let keys: Vec<String> = pending.dirty.keys().take(n).cloned().collect();
                keys.into_iter()
                    .filter_map(|k| pending.dirty.remove_entry(&k))
                    .collect()
            };
            if batch.is_empty() {
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = lease.changed() => {}
                }
                continue;
            }
            match self.write(&mut client, lease_id, &batch).await {
                Ok(()) => {
                    backoff.reset();
                    debug!(changes = batch.len(), "routes written");
                }
                Err(error) => {
                    warn!(%error, changes = batch.len(), "cannot write routes to etcd; will retry");
                    {
                        let mut pending = self.pending.lock();
                        for (filter, present) in batch {
                            // A newer change of the same filter wins.
                            pending.dirty.entry(filter).or_insert(present);
                        }
                    }
                    backoff.wait().await;
                }
            }
        }
    }

    async fn write(
        &self,
        client: &mut Client,
        lease: i64,
        batch: &[(String, bool)],
    ) -> Result<(), etcd_client::Error> {
        for chunk in batch.chunks(TXN_OPS) {
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|(filter, present)| {
                    let key = self.keys.route(&self.node, filter);
                    if *present {
                        TxnOp::put(key, Vec::new(), Some(PutOptions::new().with_lease(lease)))
                    } else {
                        TxnOp::delete(key, None)
                    }
                })
                .collect();
            client.txn(Txn::new().and_then(ops)).await?;
        }
        Ok(())
    }
}

impl RouteStore for EtcdRouteStore {
    fn add_route(&self, filter: &str) {
        let mut pending = self.pending.lock();
        pending.local.insert(filter.to_string());
        pending.dirty.insert(filter.to_string(), true);
        drop(pending);
        self.wake.notify_one();
    }

    fn remove_route(&self, filter: &str) {
        let mut pending = self.pending.lock();
        pending.local.remove(filter);
        pending.dirty.insert(filter.to_string(), false);
        drop(pending);
        self.wake.notify_one();
    }

    fn remote_nodes(&self, topic: &str, out: &mut Vec<NodeId>) {
        self.index.matching_nodes(topic, out);
    }

    fn local_route_count(&self) -> usize {
        self.pending.lock().local.len()
    }
}
