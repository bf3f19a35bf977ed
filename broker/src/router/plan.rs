//! Route planning for a message published here in a cluster: which other
//! nodes get it, and for which of their share groups.

use std::sync::Arc;

use crate::message::ShareKey;
use crate::node::NodeId;

/// Where a message published here goes in a cluster, besides the nodes
/// with a matching plain route.
#[derive(Default)]
pub(super) struct RoutePlan {
    /// Share groups whose message this node delivers itself.
    pub(super) local_groups: Vec<Arc<ShareKey>>,
    /// Share groups whose message another node delivers.
    pub(super) remote_groups: Vec<(NodeId, Arc<ShareKey>)>,
}

impl RoutePlan {
    /// Picks one node per matching share group among the nodes with members
    /// (this one included), spreading by the message's sequence number.
    pub(super) fn choose_group_nodes(
        &mut self,
        seq: u64,
        local: &[Arc<ShareKey>],
        remote: &[(Arc<ShareKey>, Vec<NodeId>)],
    ) {
        // Remote groups that have members here too, chosen among with them.
        let mut also_local = vec![false; remote.len()];
        for key in local {
            let others: &[NodeId] = match remote
                .iter()
                .enumerate()
                .position(|(i, (k, _))| !also_local[i] && k == key)
            {
                Some(i) => {
                    also_local[i] = true;
                    &remote[i].1
                }
                None => &[],
            };
            let pick = (seq % (others.len() as u64 + 1)) as usize;
            match others.get(pick) {
                Some(node) => self.remote_groups.push((node.clone(), key.clone())),
                None => self.local_groups.push(key.clone()),
            }
        }
        for ((key, nodes), also_local) in remote.iter().zip(also_local) {
            if !also_local && !nodes.is_empty() {
                let node = nodes[(seq % nodes.len() as u64) as usize].clone();
                self.remote_groups.push((node, key.clone()));
            }
        }
    }

    /// Each target node once, with whether its plain subscriptions want the
    /// message and which share groups it serves.
    pub(super) fn remote_targets(
        &self,
        plain_nodes: &[NodeId],
    ) -> Vec<(NodeId, bool, Vec<Arc<ShareKey>>)> {
        let mut targets: Vec<(NodeId, bool, Vec<Arc<ShareKey>>)> = plain_nodes
            .iter()
            .map(|n| (n.clone(), true, Vec::new()))
            .collect();
        for (node, key) in &self.remote_groups {
            match targets.iter_mut().find(|t| t.0 == *node) {
                Some(target) => target.2.push(key.clone()),
                None => targets.push((node.clone(), false, vec![key.clone()])),
            }
        }
        targets
    }
}
